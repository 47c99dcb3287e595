//! The CPUs this process may run on, for tests and benchmarks that pin threads to different
//! CPUs. Taken from the affinity mask, not from a count: a container or a cgroup cpuset can
//! allow CPUs 2 and 5 only, and a machine may have one CPU or sixteen.

use std::io;

/// The CPUs in this thread's affinity mask (sched_getaffinity(2)), in ascending order.
pub fn allowed() -> io::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is the empty set; sched_getaffinity(0) fills the set of the
    // calling thread and reads nothing else.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(io::Error::last_os_error());
        }
        set
    };
    // SAFETY: CPU_ISSET reads the set only, at an index below CPU_SETSIZE.
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Pins the calling thread to `cpu` (EINVAL for a CPU beyond CPU_SETSIZE, as the kernel answers
/// for one it does not have).
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // libc's CPU_SET indexes the set's words unchecked: it would panic beyond CPU_SETSIZE.
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes one bit of it (`cpu` is below
    // CPU_SETSIZE), and sched_setaffinity(0) reads the set for the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_thread_may_run_on_some_cpu_and_can_be_pinned_to_it() {
        let cpus = allowed().expect("sched_getaffinity");
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]));
        std::thread::spawn(move || {
            pin_current_thread(cpus[cpus.len() - 1]).expect("pin");
            assert_eq!(allowed().expect("affinity"), [cpus[cpus.len() - 1]]);
        })
        .join()
        .expect("pinned thread");
    }
}
