//! The NETLINK_ROUTE socket of one exchange: opened, bound to a port the kernel picks, with a
//! receive timeout, and read a whole datagram at a time.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use super::{
    constants::{AF_NETLINK, SOCKADDR_NL_LEN},
    invalid,
};

/// A NETLINK_ROUTE socket for one exchange, and the port id the kernel bound it to.
pub(super) struct Socket {
    fd: OwnedFd,
    pub(super) port: u32,
}

/// A sockaddr_nl for `port` (0 is the kernel).
fn netlink_address(port: u32) -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is integers only (and libc's private padding), for which all-zero
    // bytes are a valid value.
    let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    address.nl_family = AF_NETLINK;
    address.nl_pid = port;
    address
}

/// Runs a syscall that returns a length or -1 with errno, again if a signal interrupted it.
fn retry(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        if let Ok(len) = usize::try_from(call()) {
            return Ok(len);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

impl Socket {
    pub(super) fn open() -> io::Result<Self> {
        // SAFETY: socket(2) takes no pointers.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and nothing else owns it; OwnedFd closes it once.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // rtnetlink answers inside sendmsg(2), so a reply that has not come within this long
        // never will (a request the kernel answers nobody, say): an error, not a hang.
        let timeout = libc::timeval {
            tv_sec: 10,
            tv_usec: 0,
        };
        // SAFETY: `timeout` is a timeval of the length passed, read during the call only.
        let set = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if set < 0 {
            return Err(io::Error::last_os_error());
        }
        // Port 0 asks the kernel for a free one (net/netlink/af_netlink.c `netlink_bind` calls
        // `netlink_autobind`); getsockname says which, for telling our replies apart.
        let mut address = netlink_address(0);
        // SAFETY: `address` is a sockaddr_nl of the length passed, read during the call only.
        let bound =
            unsafe { libc::bind(fd.as_raw_fd(), (&raw const address).cast(), SOCKADDR_NL_LEN) };
        if bound < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut len = SOCKADDR_NL_LEN;
        // SAFETY: getsockname writes at most `len` bytes into `address`, which has that many,
        // and stores the address's real length in `len`; both outlive the call.
        let named =
            unsafe { libc::getsockname(fd.as_raw_fd(), (&raw mut address).cast(), &raw mut len) };
        if named < 0 {
            return Err(io::Error::last_os_error());
        }
        if len != SOCKADDR_NL_LEN || address.nl_family != AF_NETLINK {
            return Err(invalid("netlink socket with a foreign address"));
        }
        Ok(Self {
            fd,
            port: address.nl_pid,
        })
    }

    /// Sends one request, laid out as bytes (header and body).
    pub(super) fn send(&self, request: &[u8]) -> io::Result<()> {
        let kernel = netlink_address(0);
        let sent = retry(|| {
            // SAFETY: `request` is an initialised byte slice of the length passed; `kernel` is a
            // sockaddr_nl of the length passed. sendto reads both during the call only.
            unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    request.as_ptr().cast(),
                    request.len(),
                    0,
                    (&raw const kernel).cast(),
                    SOCKADDR_NL_LEN,
                )
            }
        })?;
        if sent != request.len() {
            return Err(invalid("netlink request sent in part"));
        }
        Ok(())
    }

    /// Receives one datagram whole, however large; `None` for one the kernel did not send
    /// (another process may write to our port), which is no part of the reply. With MSG_TRUNC
    /// a netlink recv returns the datagram's full length, not what was copied
    /// (net/netlink/af_netlink.c `netlink_recvmsg`), so a peek sizes the buffer: a fixed one
    /// would cut a longer reply and lose the messages at its end.
    pub(super) fn receive(&self) -> io::Result<Option<Vec<u8>>> {
        let fd = self.fd.as_raw_fd();
        let len = retry(|| {
            // SAFETY: with a zero length recv writes nothing into the (dangling but unused)
            // buffer.
            unsafe {
                libc::recv(
                    fd,
                    std::ptr::NonNull::<u8>::dangling().as_ptr().cast(),
                    0,
                    libc::MSG_PEEK | libc::MSG_TRUNC,
                )
            }
        })?;
        let mut datagram = vec![0u8; len];
        let mut sender = netlink_address(0);
        let mut sender_len = SOCKADDR_NL_LEN;
        let received = retry(|| {
            // SAFETY: recvfrom writes at most `datagram.len()` bytes into `datagram` and at
            // most `sender_len` bytes into `sender`, which has that many, then stores the
            // sender's real length in `sender_len`; all outlive the call.
            unsafe {
                libc::recvfrom(
                    fd,
                    datagram.as_mut_ptr().cast(),
                    datagram.len(),
                    libc::MSG_TRUNC,
                    (&raw mut sender).cast(),
                    &raw mut sender_len,
                )
            }
        })?;
        // Only this thread reads the socket, so the datagram is the one peeked; whatever did not
        // fit would be lost.
        if received > datagram.len() {
            return Err(invalid("truncated netlink reply"));
        }
        datagram.truncate(received);
        if sender_len != SOCKADDR_NL_LEN || sender.nl_pid != 0 {
            return Ok(None);
        }
        Ok(Some(datagram))
    }
}
