//! The files a root daemon creates, replaces or locks, opened so that nothing planted at their
//! paths can redirect its writes: a symlink (to `/etc/shadow`, say) is refused instead of
//! followed, a file that is not the daemon's own regular file is refused instead of truncated,
//! and a directory that others may write to is refused before anything is created in it.
//!
//! Every replaced file goes through [`write_atomically`] (the state file, the metrics
//! selection); every lock through [`open_lock_file`].

use std::{
    ffi::OsString,
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

/// Why a path was refused.
#[derive(Debug, thiserror::Error)]
pub enum UnsafeFile {
    #[error("{path} is a symbolic link; shaper does not follow links where it writes (remove it)")]
    Symlink { path: PathBuf },
    #[error("{path} is {kind}, not a regular file shaper made; remove it")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error(
        "{path} is owned by uid {owner}, not by this daemon (uid {uid}); remove it or fix its owner"
    )]
    ForeignOwner { path: PathBuf, owner: u32, uid: u32 },
    #[error("{path} has {links} hard links: it may be another file under a second name; remove it")]
    HardLinked { path: PathBuf, links: u64 },
    #[error(
        "{path} is writable by {who} (mode {mode:04o}): anyone there could change what a root \
         daemon reads; `chmod go-w {path}`"
    )]
    WritableByOthers {
        path: PathBuf,
        who: &'static str,
        mode: u32,
    },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> UnsafeFile + '_ {
    move |source| UnsafeFile::Io {
        path: path.to_owned(),
        source,
    }
}

/// Replaces `path` with `contents` (mode 0600) so that a crash or a power loss leaves either the
/// old or the new file, and nothing planted beside it is written through: a temporary file with
/// an unpredictable name is created with `O_EXCL | O_NOFOLLOW` (it cannot exist, so it cannot
/// be a link), written, synced, renamed over `path` (rename(2) replaces a link at `path`, never
/// its target), and the directory is synced so the rename itself survives a power loss.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), UnsafeFile> {
    let dir = parent(path);
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let tmp = temporary_name(path);
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()
    })();
    if let Err(source) = written.and_then(|()| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(UnsafeFile::Io {
            path: path.to_owned(),
            source,
        });
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// Opens (creating, mode 0600) the lock file `path` for reading and writing, refusing a symlink
/// (`O_NOFOLLOW`), anything but a regular file, a file owned by another user and a file with a
/// second name: the caller truncates it once it holds the lock, which must never reach another
/// file.
pub fn open_lock_file(path: &Path) -> Result<File, UnsafeFile> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        // O_NONBLOCK: a FIFO planted at the path does not hang the open (it is refused below).
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| refusal_for(path, source))?;
    let meta = file.metadata().map_err(io_error(path))?;
    if !meta.file_type().is_file() {
        return Err(UnsafeFile::NotRegular {
            path: path.to_owned(),
            kind: kind_of(&meta),
        });
    }
    refuse_foreign_owner(path, &meta)?;
    if meta.nlink() > 1 {
        return Err(UnsafeFile::HardLinked {
            path: path.to_owned(),
            links: meta.nlink(),
        });
    }
    Ok(file)
}

/// Refuses `path` (a file the daemon reads its orders from, or a directory it writes in; `meta`
/// is its metadata) when users other than its owner may write to it. A directory with the sticky
/// bit (`/tmp`) is refused too: others cannot replace the daemon's files there, but they can take
/// their names first.
pub fn refuse_writable_by_others(path: &Path, meta: &fs::Metadata) -> Result<(), UnsafeFile> {
    let mode = meta.permissions().mode() & 0o7777;
    let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (_, true) => "everyone",
        (true, false) => "its group",
        (false, false) => return Ok(()),
    };
    Err(UnsafeFile::WritableByOthers {
        path: path.to_owned(),
        who,
        mode,
    })
}

/// Refuses the directory at `path` unless it is a directory (not a link to one) owned by this
/// process's uid that no one else may write to: what the daemon adopts from a directory (its
/// pins) must have been put there by root.
pub fn refuse_foreign_dir(path: &Path) -> Result<(), UnsafeFile> {
    let meta = fs::symlink_metadata(path).map_err(io_error(path))?;
    if meta.file_type().is_symlink() {
        return Err(UnsafeFile::Symlink {
            path: path.to_owned(),
        });
    }
    if !meta.is_dir() {
        return Err(UnsafeFile::NotRegular {
            path: path.to_owned(),
            kind: kind_of(&meta),
        });
    }
    refuse_foreign_owner(path, &meta)?;
    refuse_writable_by_others(path, &meta)
}

/// Refuses `path` (`meta` its metadata) unless this process's uid owns it.
fn refuse_foreign_owner(path: &Path, meta: &fs::Metadata) -> Result<(), UnsafeFile> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if meta.uid() == uid {
        return Ok(());
    }
    Err(UnsafeFile::ForeignOwner {
        path: path.to_owned(),
        owner: meta.uid(),
        uid,
    })
}

/// `O_NOFOLLOW` on a symlink fails with ELOOP; said in words, with the path.
fn refusal_for(path: &Path, source: io::Error) -> UnsafeFile {
    if source.raw_os_error() == Some(libc::ELOOP)
        && fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
    {
        UnsafeFile::Symlink {
            path: path.to_owned(),
        }
    } else {
        UnsafeFile::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// What a file that should be a regular file is instead, for a message.
pub(crate) fn kind_of(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    let kind = meta.file_type();
    if kind.is_dir() {
        "a directory"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_block_device() || kind.is_char_device() {
        "a device"
    } else {
        "a regular file"
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// `.NAME.PID.RANDOM.tmp` beside `path`: hidden, and not guessable ahead of time, so a link
/// cannot be planted at it (and `O_EXCL` would refuse one anyway).
fn temporary_name(path: &Path) -> PathBuf {
    let mut random = [0u8; 8];
    // SAFETY: getrandom writes at most `random.len()` bytes into the buffer it is given. A
    // short read leaves zeros, which O_EXCL still makes safe (the name is then only less
    // unpredictable).
    let _ = unsafe { libc::getrandom(random.as_mut_ptr().cast(), random.len(), 0) };
    let mut name = OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(
        ".{}.{:016x}.tmp",
        std::process::id(),
        u64::from_ne_bytes(random)
    ));
    parent(path).join(name)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("shaper-private-files-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn an_atomic_write_replaces_the_file_leaves_no_temporary_and_makes_it_private() {
        let dir = TempDir::new("write");
        let path = dir.0.join("state.json");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<_> = fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }

    #[test]
    fn an_atomic_write_replaces_a_symlink_and_never_writes_its_target() {
        let dir = TempDir::new("link");
        let target = dir.0.join("precious");
        fs::write(&target, b"keep").unwrap();
        let path = dir.0.join("state.json");
        symlink(&target, &path).unwrap();
        // The fixed temporary names of older versions, planted too.
        symlink(&target, dir.0.join("state.json.tmp")).unwrap();
        write_atomically(&path, b"new").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"keep");
        assert!(
            !fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(&path).unwrap(), b"new");
    }

    #[test]
    fn temporary_names_differ_and_hide_beside_the_file() {
        let a = temporary_name(Path::new("/var/lib/shaper/state.json"));
        let b = temporary_name(Path::new("/var/lib/shaper/state.json"));
        assert_ne!(a, b);
        assert_eq!(a.parent(), Some(Path::new("/var/lib/shaper")));
        let name = a.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(".state.json.") && name.ends_with(".tmp"),
            "{name}"
        );
        assert_eq!(
            temporary_name(Path::new("x")).parent(),
            Some(Path::new("."))
        );
    }

    #[test]
    fn a_lock_file_refuses_a_symlink_a_directory_and_a_second_name() {
        let dir = TempDir::new("lock");
        let target = dir.0.join("precious");
        fs::write(&target, b"keep").unwrap();
        let link = dir.0.join("a.lock");
        symlink(&target, &link).unwrap();
        let error = open_lock_file(&link).unwrap_err();
        assert!(matches!(error, UnsafeFile::Symlink { .. }), "{error}");
        assert!(error.to_string().contains("a.lock"), "{error}");

        let hard = dir.0.join("b.lock");
        fs::hard_link(&target, &hard).unwrap();
        let error = open_lock_file(&hard).unwrap_err();
        assert!(
            matches!(error, UnsafeFile::HardLinked { links: 2, .. }),
            "{error}"
        );

        let subdir = dir.0.join("c.lock");
        fs::create_dir(&subdir).unwrap();
        assert!(open_lock_file(&subdir).is_err());
        assert_eq!(fs::read(&target).unwrap(), b"keep");

        let fresh = dir.0.join("d.lock");
        open_lock_file(&fresh).unwrap();
        assert_eq!(
            fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn writable_by_group_or_everyone_is_refused_with_the_mode() {
        let dir = TempDir::new("mode");
        let file = dir.0.join("shaper.toml");
        fs::write(&file, b"").unwrap();
        for (mode, refused) in [(0o644, None), (0o600, None), (0o664, Some("its group"))] {
            fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
            let meta = fs::metadata(&file).unwrap();
            match (refuse_writable_by_others(&file, &meta), refused) {
                (Ok(()), None) => {}
                (Err(UnsafeFile::WritableByOthers { who, .. }), Some(expected)) => {
                    assert_eq!(who, expected)
                }
                (other, _) => panic!("mode {mode:o}: {other:?}"),
            }
        }
        fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o1777)).unwrap();
        let meta = fs::metadata(&dir.0).unwrap();
        let error = refuse_writable_by_others(&dir.0, &meta)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("everyone") && error.contains("1777"),
            "{error}"
        );
    }
}
