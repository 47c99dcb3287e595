//! The floor program (crate `shaper-bench-ebpf`): a tc classifier that returns at once.

use anyhow::Context as _;
use aya::{Ebpf, programs::SchedClassifier};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/floor"));
const PROGRAM: &str = "bench_floor";

pub struct Floor {
    ebpf: Ebpf,
}

impl Floor {
    pub fn load() -> anyhow::Result<Self> {
        let mut ebpf = Ebpf::load(OBJECT).context("loading the floor object")?;
        let program: &mut SchedClassifier = ebpf
            .program_mut(PROGRAM)
            .context("the floor object has no bench_floor program")?
            .try_into()?;
        program.load().context("loading bench_floor")?;
        Ok(Self { ebpf })
    }

    pub fn program(&self) -> anyhow::Result<&SchedClassifier> {
        Ok(self
            .ebpf
            .program(PROGRAM)
            .context("bench_floor")?
            .try_into()?)
    }
}
