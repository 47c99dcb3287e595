//! The program's aya-log lines (see `shaper-ebpf/src/rare_log.rs`): the run-time level in the
//! pinned `LOG_LEVEL` map, and the reader of the object's `AYA_LOGS` ring buffer.
//!
//! `AYA_LOGS` is not pinned: each loaded object has its own, and the reader takes it from the
//! loaded object (`EbpfLogger::init_with_logger`, which `take_map`s it). A daemon that adopts a
//! pinned datapath swaps its own programs in, which write to its own `AYA_LOGS`, so it reads
//! every line they log. While no daemon runs (after `run --persist`), the programs left attached
//! log into a ring buffer nobody reads: once it is full the lines are dropped in the kernel,
//! which costs nothing more. The level is pinned with the other maps, so each daemon sets it
//! when it starts (`--bpf-log`, default off).

use aya::maps::{Array, MapData};
use aya_log::EbpfLogger;
use shaper_common::{log_level, maps};

use crate::{
    datapath::classifier::{Classifier, object_map_mut},
    datapath::{DatapathError, Result},
};

/// A level as `--bpf-log` and `shaper log-level` spell it, as the program's `LOG_LEVEL` value.
pub fn parse_level(text: &str) -> Result<u32> {
    Ok(match text {
        "off" => log_level::OFF,
        "error" => log_level::ERROR,
        "warn" => log_level::WARN,
        "info" => log_level::INFO,
        "debug" => log_level::DEBUG,
        "trace" => log_level::TRACE,
        _ => return Err(DatapathError::LogLevel(text.to_owned())),
    })
}

/// Sets the level of the program's log lines; the next packet on a rare path reads it.
pub fn set_level(classifier: &mut Classifier, level: u32) -> Result<()> {
    let map = object_map_mut(classifier.ebpf_mut(), maps::LOG_LEVEL)?;
    let mut array: Array<&mut MapData, u32> = Array::try_from(map)?;
    array.set(0, level.min(log_level::TRACE), 0)?;
    Ok(())
}

/// Starts reading the program's log lines into `logger`: the reader's fd becomes readable when
/// lines wait, and [`EbpfLogger::flush`] hands them over. Once per loaded classifier.
pub fn reader<T: log::Log>(classifier: &mut Classifier, logger: T) -> Result<EbpfLogger<T>> {
    Ok(EbpfLogger::init_with_logger(classifier.ebpf_mut(), logger)?)
}

/// Hands the program's lines to the daemon's log whatever `RUST_LOG` filters: they are only
/// sent when an operator asked for them with `--bpf-log` or `shaper log-level`, so they are
/// re-logged at `info`, with their own level in the text, under the target `shaper::bpf`.
#[derive(Debug, Clone, Copy)]
pub struct DaemonLog;

impl log::Log for DaemonLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        log::logger().log(
            &log::Record::builder()
                .level(log::Level::Info)
                .target("shaper::bpf")
                .args(format_args!("{} {}", record.level(), record.args()))
                .build(),
        );
    }

    fn flush(&self) {
        log::logger().flush();
    }
}

/// The task that hands the program's lines to `reader`'s logger as they arrive, for as long as
/// the runtime it is spawned on runs. Must be called within a tokio runtime.
pub fn follow<T: log::Log + Send + 'static>(
    reader: EbpfLogger<T>,
) -> Result<impl std::future::Future<Output = ()> + Send + 'static> {
    // SAFETY: the reader owns the ring buffer's fd, which stays open and the same until the
    // reader is dropped; the `AsyncFd` owns the reader, so the fd outlives its registration.
    let mut reader = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(reader, tokio::io::Interest::READABLE)
    }
    .map_err(|e| DatapathError::Io(e.into_parts().1))?;
    Ok(async move {
        while let Ok(mut guard) = reader.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    })
}
