//! The trace's switches: the `WATCHED` trace bit of the traced ports and `TRACE_CONFIG`, set
//! for one trace at a time (`shaper trace`), and what userspace needs to read its events.

use std::sync::atomic::Ordering;

use aya::maps::{Array, MapData, PerCpuArray};
use shaper_common::{
    DIRECTIONS, PORTS, PROTOS, TraceConfig, WATCH_TRACE, maps, trace_lost, watch_row,
};

use crate::{
    datapath::Result,
    datapath::classifier::{Classifier, object_map_mut},
    types::{keywords::DirSel, ports::PortRange},
};

/// Sets the trace bit on `ports` in `dir` on every interface (both protocols) and nothing
/// else, with `config` for the program; or clears every trace bit (`None`). Returns the cells
/// written.
pub fn set(
    classifier: &mut Classifier,
    traced: Option<(PortRange, DirSel)>,
    config: TraceConfig,
) -> Result<usize> {
    if traced.is_some() {
        // The configuration first, so no event is sent under an older one.
        let map = object_map_mut(classifier.ebpf_mut(), maps::TRACE_CONFIG)?;
        let mut array: Array<&mut MapData, TraceConfig> = Array::try_from(map)?;
        array.set(0, config, 0)?;
    }
    let slots = classifier.interface_names().len() as u32;
    let cells = classifier.watched_cells();
    let mut written = 0;
    for slot in 0..slots {
        for direction in 0..DIRECTIONS {
            for proto in 0..PROTOS {
                let row = watch_row(slot, direction, proto) as usize * PORTS as usize;
                for port in 0..PORTS {
                    let wanted = traced.is_some_and(|(ports, dir)| {
                        ports.contains(port as u16) && dir.directions().contains(&direction)
                    });
                    let Some(cell) = cells.get(row + port as usize) else {
                        continue;
                    };
                    let old = cell.load(Ordering::Relaxed);
                    let new = if wanted {
                        old | WATCH_TRACE
                    } else {
                        old & !WATCH_TRACE
                    };
                    if new != old {
                        cell.store(new, Ordering::Relaxed);
                        written += 1;
                    }
                }
            }
        }
    }
    Ok(written)
}

/// Events lost so far, summed over CPUs: (over the rate cap, ring buffer full).
pub fn lost<T: std::borrow::Borrow<MapData>>(array: &PerCpuArray<T, u64>) -> Result<(u64, u64)> {
    let sum = |index| -> Result<u64> { Ok(array.get(&index, 0)?.iter().sum()) };
    Ok((sum(trace_lost::OVER_RATE)?, sum(trace_lost::RING_FULL)?))
}
