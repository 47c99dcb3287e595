//! Who is on the other end of a control connection, as the kernel says (`SO_PEERCRED`: the
//! credentials of the process that connected, fixed at connect(2), so a client cannot claim
//! another identity), for the daemon's log line of every change it makes.

use std::fmt;

/// The connecting process: its uid and, when the kernel knows it, its pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub pid: Option<i32>,
}

impl Peer {
    /// The credentials of `stream`'s peer; `None` if the kernel gave none.
    pub fn of(stream: &tokio::net::UnixStream) -> Option<Self> {
        let cred = stream.peer_cred().ok()?;
        Some(Self {
            uid: cred.uid(),
            pid: cred.pid().filter(|&pid| pid > 0),
        })
    }

    /// The uid's login name from the password database, if it has one.
    pub fn user(&self) -> Option<String> {
        user_name(self.uid)
    }

    /// The process's command (`/proc/PID/comm`), while it runs.
    pub fn command(&self) -> Option<String> {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", self.pid?)).ok()?;
        Some(comm.trim_end().to_owned())
    }
}

/// `uid 0 (root), pid 4242 (shaper)`: the user's name from the password database and the
/// command from `/proc/PID/comm`, each left out when it cannot be found (a process that has
/// already exited, a uid without an entry).
impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid {}", self.uid)?;
        if let Some(name) = self.user() {
            write!(f, " ({name})")?;
        }
        if let Some(pid) = self.pid {
            write!(f, ", pid {pid}")?;
            if let Some(command) = self.command() {
                write!(f, " ({command})")?;
            }
        }
        Ok(())
    }
}

/// The login name of `uid`, from the password database (getpwuid_r: reentrant, so concurrent
/// connections cannot overwrite each other's answer).
fn user_name(uid: u32) -> Option<String> {
    let mut buffer = vec![0u8; 1024];
    // SAFETY: a zeroed passwd is a valid out-parameter for getpwuid_r.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer refers to memory owned here that outlives the call, with the
    // buffer's true length; getpwuid_r writes the entry's strings into `buffer` only.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut entry,
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() || entry.pw_name.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points to a NUL-terminated string inside `buffer`, alive here.
    let name = unsafe { std::ffi::CStr::from_ptr(entry.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_reads_as_its_user_and_command() {
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        let peer = Peer {
            uid,
            pid: Some(std::process::id() as i32),
        };
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        let text = peer.to_string();
        assert!(text.starts_with(&format!("uid {uid}")), "{text}");
        assert!(
            text.ends_with(&format!(
                ", pid {} ({})",
                std::process::id(),
                comm.trim_end()
            )),
            "{text}"
        );
        if uid == 0 {
            assert!(text.starts_with("uid 0 (root), "), "{text}");
        }
        let unknown = Peer {
            uid: 4_000_000_000,
            pid: None,
        };
        assert_eq!(unknown.to_string(), "uid 4000000000");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_kernel_names_the_connecting_process() {
        let (a, _b) = tokio::net::UnixStream::pair().unwrap();
        let peer = Peer::of(&a).unwrap();
        // SAFETY: getuid has no preconditions and cannot fail.
        assert_eq!(peer.uid, unsafe { libc::getuid() });
        assert_eq!(peer.pid, Some(std::process::id() as i32));
    }
}
