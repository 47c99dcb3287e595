//! The datapath's pins under bpffs: the maps and the attachments that keep shaping and counting
//! while no daemon runs (a crash, an upgrade, a service restart), and that the next daemon
//! adopts.
//!
//! One directory per network namespace, named by the namespace's cookie (`SO_NETNS_COOKIE`,
//! Linux >= 5.14, net/core/net_namespace.c `net_alloc`): unlike the namespace's inode number,
//! a cookie is never reused while the machine is up, so a namespace created later can never
//! adopt the leftovers of a deleted one. bpffs is not namespaced; the cookie keeps daemons in
//! different namespaces apart.
//!
//! ```text
//! <base>/<netns cookie>/
//!   maps/<MAP>                      every map of the classifier
//!   ifaces/<iface>/tcx-ingress      pinned tcx links (tcx mode)
//!   ifaces/<iface>/tcx-egress
//!   ifaces/<iface>/clsact/          a directory: attached as cls_bpf filters at shaper's priority
//!   ifaces/<iface>/clsact/qdisc-added/   shaper added the clsact qdisc, so `down` removes it
//! ```
//! bpffs holds only BPF objects and directories, so the two facts that are not objects are
//! directories.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::maps::MapInfo;
use log::info;

use crate::{
    datapath::attach::Direction,
    datapath::{DatapathError, Result},
};

/// Where bpffs is mounted on every current distribution, and where shaper pins by default.
pub const BPFFS: &str = "/sys/fs/bpf";
/// The default base directory of every namespace's pins (`--pin-dir`).
pub const DEFAULT_BASE: &str = "/sys/fs/bpf/shaper";

/// `BPF_FS_MAGIC` (include/uapi/linux/magic.h): the `f_type` statfs(2) reports for bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// One network namespace's pin directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    /// The pin directory of the calling thread's network namespace under `base`.
    pub fn for_current_netns(base: &Path) -> Result<Self> {
        Ok(Self {
            root: base.join(netns_cookie()?.to_string()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether anything is pinned here: an earlier daemon's datapath to adopt.
    pub fn exists(&self) -> bool {
        self.root.exists()
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    fn iface(&self, iface: &str) -> PathBuf {
        self.root.join("ifaces").join(iface)
    }

    /// Where the tcx link of `iface`'s `direction` hook is pinned.
    pub fn tcx_link(&self, iface: &str, direction: Direction) -> PathBuf {
        self.iface(iface).join(format!("tcx-{}", direction.name()))
    }

    /// Present while `iface` is attached with clsact filters.
    pub fn clsact(&self, iface: &str) -> PathBuf {
        self.iface(iface).join("clsact")
    }

    /// Present when shaper added `iface`'s clsact qdisc (and so removes it when it detaches).
    pub fn clsact_qdisc_added(&self, iface: &str) -> PathBuf {
        self.clsact(iface).join("qdisc-added")
    }

    /// Creates the directories maps and links are pinned into, mounting bpffs at
    /// [`BPFFS`] first if nothing is mounted there. The pin directory, this namespace's
    /// directory and the two below it must be directories of this uid that nobody else may
    /// write: the daemon adopts whatever maps and links it finds there, so a directory another
    /// user could have filled is refused, not trusted.
    pub fn create(&self) -> Result<()> {
        ensure_bpffs(&self.root)?;
        let base = self.root.parent().unwrap_or(&self.root);
        let (maps, ifaces) = (self.root.join("maps"), self.root.join("ifaces"));
        // Each checked before anything is made below it.
        for dir in [base, self.root.as_path(), &maps, &ifaces] {
            create_dirs(dir)?;
            crate::private_files::refuse_foreign_dir(dir)?;
        }
        Ok(())
    }

    /// Creates `iface`'s directory.
    pub fn create_iface(&self, iface: &str) -> Result<()> {
        create_dirs(&self.iface(iface))
    }

    /// The interfaces that have pins, by name.
    pub fn ifaces(&self) -> Result<Vec<String>> {
        let dir = self.root.join("ifaces");
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(DatapathError::path(&dir)(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(DatapathError::path(&dir))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    /// Removes `iface`'s pins (what they hold must have been detached first).
    pub fn remove_iface(&self, iface: &str) -> Result<()> {
        remove_tree(&self.iface(iface))
    }

    /// Removes every pin and directory. A pinned map is freed when its last user (a program, an
    /// open fd) goes.
    pub fn remove(&self) -> Result<()> {
        remove_tree(&self.root)?;
        info!("removed the pins under {}", self.root.display());
        Ok(())
    }
}

/// Creates `dir` and its missing parents with mode 0755 (less what the umask takes), so a
/// permissive umask cannot make them writable by others.
fn create_dirs(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(DatapathError::path(dir))
}

/// Removes `path` and everything below it; a path that is already gone is fine. bpffs unlinks
/// pins and removes empty directories with the ordinary calls (fs/bpf/inode.c).
fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DatapathError::path(path)(e)),
    }
}

/// The network namespace cookie of the calling thread: a socket's `SO_NETNS_COOKIE`.
pub fn netns_cookie() -> Result<u64> {
    // SAFETY: socket(2) with constant arguments; the result is checked before use and owned by
    // the OwnedFd, which closes it.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error().into());
    }
    // SAFETY: `fd` is a socket this function just opened and nothing else owns.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, which is that large, and
    // `len`; the socket is open for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error().into());
    }
    Ok(cookie)
}

/// Makes sure `path` will be on bpffs: its deepest existing ancestor must be, which is also
/// what a container given only its pin directory (a bind of the host's `/sys/fs/bpf/shaper`)
/// sees. Below [`BPFFS`] with nothing mounted there, mounts bpffs at [`BPFFS`].
fn ensure_bpffs(path: &Path) -> Result<()> {
    let mount_point = Path::new(BPFFS);
    let existing = path
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if is_bpffs(existing)? {
        return Ok(());
    }
    // Something else mounted below a bpffs, or a place outside /sys/fs/bpf: pins cannot live
    // there, and mounting over it would hide what it holds.
    if !path.starts_with(mount_point) || existing != mount_point {
        return Err(DatapathError::NotBpffs {
            path: existing.to_owned(),
        });
    }
    // SAFETY: mount(2) with NUL-terminated constant strings and no data.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c"/sys/fs/bpf".as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(DatapathError::BpffsMount {
            error: io::Error::last_os_error(),
        });
    }
    info!("mounted bpffs at {BPFFS}");
    if !in_initial_mount_namespace() {
        log::warn!(
            "this process has a mount namespace of its own (`ip netns exec` makes one and \
             remounts /sys): the bpffs just mounted, and the pins in it, go when the daemon \
             exits, so nothing survives a crash or restart; mount bpffs where it outlives the \
             daemon and point --pin-dir there"
        );
    }
    Ok(())
}

/// Whether this process shares the mount namespace of pid 1 (the host's, usually).
fn in_initial_mount_namespace() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (
        fs::metadata("/proc/self/ns/mnt"),
        fs::metadata("/proc/1/ns/mnt"),
    ) {
        (Ok(ours), Ok(init)) => ours.ino() == init.ino(),
        // Unknown: say nothing rather than something wrong.
        _ => true,
    }
}

fn is_bpffs(path: &Path) -> Result<bool> {
    use std::os::unix::ffi::OsStrExt as _;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| DatapathError::path(path)(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    // SAFETY: a zeroed statfs is a valid out-parameter; statfs(2) fills it for the
    // NUL-terminated path.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `stat` outlives the call.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(DatapathError::path(path)(io::Error::last_os_error()));
    }
    // `f_type` is a `__fsword_t`: i64 on x86_64, narrower on some other targets.
    Ok(stat.f_type as i64 == BPF_FS_MAGIC)
}

/// What a map must look like for the programs of this build: the definition in the object,
/// with the sizes chosen at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapLayout {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl MapLayout {
    /// The first field in which `pinned` differs from `self`, as (name, pinned, expected).
    pub fn difference(&self, pinned: &Self) -> Option<(&'static str, u32, u32)> {
        [
            ("type", pinned.map_type, self.map_type),
            ("key size", pinned.key_size, self.key_size),
            ("value size", pinned.value_size, self.value_size),
            ("max entries", pinned.max_entries, self.max_entries),
            ("flags", pinned.flags, self.flags),
        ]
        .into_iter()
        .find(|(_, pinned, expected)| pinned != expected)
    }

    /// The layout of the map pinned at `path`, if one is.
    pub fn of_pin(path: &Path) -> Result<Option<Self>> {
        if !path.exists() {
            return Ok(None);
        }
        let info = MapInfo::from_pin(path)?;
        Ok(Some(Self {
            map_type: info.map_type().map(|t| t as u32).unwrap_or(u32::MAX),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_differing_field_is_named() {
        let expected = MapLayout {
            map_type: 2,
            key_size: 4,
            value_size: 16,
            max_entries: 1024,
            flags: 0x400,
        };
        assert_eq!(expected.difference(&expected), None);
        let pinned = MapLayout {
            value_size: 24,
            ..expected
        };
        assert_eq!(expected.difference(&pinned), Some(("value size", 24, 16)));
        let pinned = MapLayout {
            flags: 0,
            ..expected
        };
        assert_eq!(expected.difference(&pinned), Some(("flags", 0, 0x400)));
    }

    #[test]
    fn each_namespace_has_its_own_cookie_and_layout() {
        let cookie = netns_cookie().expect("SO_NETNS_COOKIE");
        assert_ne!(cookie, 0);
        assert_eq!(netns_cookie().expect("again"), cookie);
        let dir = PinDir::for_current_netns(Path::new("/sys/fs/bpf/shaper")).expect("dir");
        assert_eq!(
            dir.root(),
            Path::new(&format!("/sys/fs/bpf/shaper/{cookie}"))
        );
        assert_eq!(
            dir.tcx_link("eth0", Direction::Egress),
            dir.root().join("ifaces/eth0/tcx-egress")
        );
        assert_eq!(
            dir.clsact_qdisc_added("eth0"),
            dir.root().join("ifaces/eth0/clsact/qdisc-added")
        );
    }
}
