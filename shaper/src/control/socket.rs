//! Both ends of the control socket: the client's one-shot [`request`], and the daemon's
//! [`ControlSocket`], which serves any number of connections without letting a slow, malformed
//! or oversized request stop it.

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream as StdUnixStream},
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _},
    net::{UnixListener, UnixStream},
};

use super::{MAX_REQUEST_BYTES, Peer, Request, Response, access::SocketGroup};
use crate::control::{ControlError, Result};

/// How long a client may take to send a request line before the daemon hangs up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a client may take to read a reply (a `limit ls` of 65,535 rules is about 40 MB)
/// before the daemon hangs up: a client that stops reading holds one task, not the daemon.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Who sent a request: the peer as the kernel named it, and the connection it came on (trace
/// sessions belong to their connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// `None`: the kernel gave no credentials.
    pub peer: Option<Peer>,
    /// Numbered from 1 in the order the daemon accepted them.
    pub connection: u64,
}

/// Sends one request to the daemon at `path` and waits for its response.
pub fn request(path: &Path, request: &Request) -> Result<Response> {
    let stream = send(path, request)?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply)?;
    match serde_json::from_str(&reply).map_err(ControlError::BadReply)? {
        Response::Error { message } => Err(ControlError::Refused(message)),
        response => Ok(response),
    }
}

/// Connects to the daemon at `path` and writes `request` as one line.
fn send(path: &Path, request: &Request) -> Result<StdUnixStream> {
    let stream = StdUnixStream::connect(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            ControlError::DaemonNotRunning {
                path: path.to_owned(),
            }
        }
        io::ErrorKind::PermissionDenied => ControlError::ControlPermission {
            path: path.to_owned(),
            admitted: super::access::admitted(path),
        },
        _ => ControlError::path(path)(e),
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = serde_json::to_string(request).map_err(io::Error::other)?;
    line.push('\n');
    (&stream).write_all(line.as_bytes())?;
    Ok(stream)
}

/// Sends one request to the daemon at `path` and returns its response with the connection,
/// still open: what a request whose effect lasts as long as the connection (a trace) needs.
pub fn request_held(path: &Path, request: &Request) -> Result<(Response, StdUnixStream)> {
    let stream = send(path, request)?;
    let mut reply = Vec::new();
    // Byte by byte, so nothing after the reply line is read into a buffer and lost.
    let mut byte = [0u8; 1];
    loop {
        use std::io::Read as _;
        if (&stream).read(&mut byte)? == 0 || byte[0] == b'\n' {
            break;
        }
        reply.push(byte[0]);
    }
    match serde_json::from_slice(&reply).map_err(ControlError::BadReply)? {
        Response::Error { message } => Err(ControlError::Refused(message)),
        response => Ok((response, stream)),
    }
}

/// A bound control socket; the file is removed on drop.
#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Binds `path` with mode 0600, or 0660 and `group` ([`SocketGroup::share`]), creating its
    /// directory (0755) if needed. A socket file that nobody listens on (left by a killed
    /// daemon) is replaced; a live one is an error, and so is anything else at the path (a
    /// symlink, a regular file): it is never removed.
    pub fn bind(path: &Path, group: Option<&SocketGroup>) -> Result<Self> {
        use std::os::unix::fs::FileTypeExt as _;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(ControlError::path(dir))?;
        }
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if meta.file_type().is_symlink() {
                return Err(crate::private_files::UnsafeFile::Symlink {
                    path: path.to_owned(),
                }
                .into());
            }
            if !meta.file_type().is_socket() {
                return Err(ControlError::NotASocket {
                    path: path.to_owned(),
                    kind: crate::private_files::kind_of(&meta),
                });
            }
            if StdUnixStream::connect(path).is_ok() {
                return Err(ControlError::SocketInUse {
                    path: path.to_owned(),
                });
            }
            std::fs::remove_file(path).map_err(ControlError::path(path))?;
        }
        let listener = UnixListener::bind(path).map_err(ControlError::path(path))?;
        let socket = Self {
            listener,
            path: path.to_owned(),
        };
        // Dropping `socket` on an error below removes the file again.
        match group {
            Some(group) => group.share(path)?,
            None => std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(ControlError::path(path))?,
        }
        Ok(socket)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts connections forever, answering each request with `handle`, which is told who
    /// sent it ([`Caller`]). `handle` runs on tokio's blocking pool, so a long request (a
    /// `limit ls` of tens of thousands of rules) never stalls the runtime's other tasks (the
    /// metrics endpoint, the config watcher). A failed accept
    /// (EMFILE or ENFILE when descriptors run out, ECONNABORTED) never ends the daemon, whose
    /// datapath and metrics go on: it is logged and retried after a pause, so a descriptor
    /// shortage does not spin the loop.
    pub async fn serve<H>(&self, handle: H) -> Result<()>
    where
        H: Fn(Request, Caller) -> Response + Clone + Send + Sync + 'static,
    {
        let mut connections = 0u64;
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    log::warn!(
                        "control socket {}: accept failed: {error}; retrying in 100 ms",
                        self.path.display()
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let handle = handle.clone();
            connections += 1;
            let caller = Caller {
                peer: Peer::of(&stream),
                connection: connections,
            };
            tokio::spawn(async move {
                if let Err(e) = serve_connection(stream, caller, handle).await {
                    log::debug!("control connection: {e}");
                }
            });
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Runs `handle` on the blocking pool; a panic in it becomes an error reply.
async fn answer<H>(handle: &H, request: Request, caller: Caller) -> Response
where
    H: Fn(Request, Caller) -> Response + Clone + Send + 'static,
{
    let handle = handle.clone();
    tokio::task::spawn_blocking(move || handle(request, caller))
        .await
        .unwrap_or_else(|join| Response::Error {
            message: format!("the daemon failed to answer: {join}"),
        })
}

async fn serve_connection<H>(stream: UnixStream, caller: Caller, handle: H) -> io::Result<()>
where
    H: Fn(Request, Caller) -> Response + Clone + Send + 'static,
{
    let (read, mut write) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read);
    loop {
        let mut line = Vec::new();
        let read = tokio::time::timeout(
            REQUEST_TIMEOUT,
            (&mut reader)
                .take(MAX_REQUEST_BYTES + 1)
                .read_until(b'\n', &mut line),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request timed out"))??;
        if read == 0 {
            return Ok(());
        }
        let too_long = line.len() as u64 > MAX_REQUEST_BYTES;
        let response = if too_long {
            Response::Error {
                message: format!("request longer than {MAX_REQUEST_BYTES} bytes"),
            }
        } else {
            match serde_json::from_slice::<Request>(&line) {
                Ok(request) => answer(&handle, request, caller).await,
                Err(e) => Response::Error {
                    message: format!("malformed request: {e}"),
                },
            }
        };
        let mut reply = serde_json::to_vec(&response).map_err(io::Error::other)?;
        reply.push(b'\n');
        let written = tokio::time::timeout(REPLY_TIMEOUT, write.write_all(&reply))
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "reply timed out")));
        if let Response::TraceOn { session, .. } = response {
            // A trace lives as long as this connection: wait for the client to close it (or
            // die, which closes it too), with no timeout, then end the trace.
            if written.is_ok() {
                let _ = tokio::io::copy(&mut reader, &mut tokio::io::sink()).await;
            }
            answer(&handle, Request::TraceOff { session }, caller).await;
            return written;
        }
        written?;
        if too_long {
            // The rest of the oversized line is still unread: drop the connection.
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_socket_says_the_daemon_is_not_running() {
        let err = request(Path::new("/nonexistent/shaper.sock"), &Request::Stats).unwrap_err();
        assert!(err.to_string().contains("daemon is not running"), "{err}");
        assert!(err.to_string().contains("shaper run"), "{err}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn malformed_and_oversized_requests_get_errors_and_the_daemon_keeps_serving() {
        let path =
            std::env::temp_dir().join(format!("shaper-control-test-{}.sock", std::process::id()));
        let socket = ControlSocket::bind(&path, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let server = tokio::spawn(async move {
            let _ = socket
                .serve(|_, _| Response::Error {
                    message: "no classifier in this test".into(),
                })
                .await;
        });
        let client_path = path.clone();
        tokio::task::spawn_blocking(move || {
            let talk = |payload: &[u8]| -> String {
                let stream = StdUnixStream::connect(&client_path).unwrap();
                (&stream).write_all(payload).unwrap();
                let mut reply = String::new();
                BufReader::new(&stream).read_line(&mut reply).unwrap();
                reply
            };
            assert!(talk(b"{not json}\n").contains("malformed request"));
            let mut huge = vec![b'x'; (MAX_REQUEST_BYTES + 10) as usize];
            huge.push(b'\n');
            assert!(talk(&huge).contains("longer than"));
            // Still serving after both.
            assert!(talk(b"{\"op\":\"stats\"}\n").contains("no classifier in this test"));
        })
        .await
        .unwrap();
        server.abort();
        let _ = std::fs::remove_file(&path);
    }
}
