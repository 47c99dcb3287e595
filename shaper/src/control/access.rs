//! Who may use the control socket: root, and with `--socket-group` the members of one group.
//!
//! The kernel enforces it: connect(2) on a Unix socket's path needs write permission on the
//! socket file (net/unix/af_unix.c `unix_find_bsd` -> `path_permission(MAY_WRITE)`), so the
//! daemon gives the file mode 0660 and the group, and a process outside the group is refused
//! before the daemon sees it. Every request a connection makes is then logged with the peer the
//! kernel names ([`super::Peer`]).

use std::{
    ffi::CString,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::Path,
};

use crate::control::{ControlError, Result};

/// The group that shares the control socket with root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketGroup {
    /// As the operator wrote it (a name, or a gid in digits).
    pub name: String,
    pub gid: u32,
}

impl SocketGroup {
    /// Looks up `name` (or a gid written in digits) in the group database.
    pub fn resolve(name: &str) -> Result<Self> {
        let unknown = || ControlError::UnknownGroup {
            name: name.to_owned(),
        };
        if let Ok(gid) = name.parse::<u32>() {
            return Ok(Self {
                name: group_name(gid).unwrap_or_else(|| name.to_owned()),
                gid,
            });
        }
        let c_name = CString::new(name).map_err(|_| unknown())?;
        let mut buffer = vec![0u8; 4096];
        // SAFETY: a zeroed group is a valid out-parameter for getgrnam_r.
        let mut entry: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer refers to memory owned here that outlives the call, with the
        // buffer's true length; getgrnam_r writes the entry's strings into `buffer` only.
        let rc = unsafe {
            libc::getgrnam_r(
                c_name.as_ptr(),
                &mut entry,
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                &mut found,
            )
        };
        if rc != 0 || found.is_null() {
            return Err(unknown());
        }
        Ok(Self {
            name: name.to_owned(),
            gid: entry.gr_gid,
        })
    }

    /// Gives the socket file at `path` to this group with mode 0660. The owner of a file may
    /// give it to a group it is a member of; any other group needs CAP_CHOWN (fs/attr.c
    /// `chgrp_ok`). The unit makes the daemon a member (SupplementaryGroups); root started by
    /// hand holds CAP_CHOWN until the capabilities are cut, which is after the socket is bound.
    pub fn share(&self, path: &Path) -> Result<()> {
        std::os::unix::fs::lchown(path, None, Some(self.gid)).map_err(|error| {
            ControlError::SocketGroup {
                path: path.to_owned(),
                group: self.name.clone(),
                error,
            }
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(ControlError::path(path))
    }
}

/// The name of group `gid`, if the group database has one.
pub fn group_name(gid: u32) -> Option<String> {
    let mut buffer = vec![0u8; 4096];
    // SAFETY: a zeroed group is a valid out-parameter for getgrgid_r.
    let mut entry: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as in `SocketGroup::resolve`.
    let rc = unsafe {
        libc::getgrgid_r(
            gid,
            &mut entry,
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() || entry.gr_name.is_null() {
        return None;
    }
    // SAFETY: on success gr_name points to a NUL-terminated string inside `buffer`, alive here.
    let name = unsafe { std::ffi::CStr::from_ptr(entry.gr_name) };
    Some(name.to_string_lossy().into_owned())
}

/// Who the socket at `path` admits, for the client's "permission denied": `root only`, or
/// `root and members of group shaper`.
pub fn admitted(path: &Path) -> String {
    match std::fs::metadata(path) {
        Ok(meta) if meta.mode() & 0o060 == 0o060 => {
            let group = group_name(meta.gid()).unwrap_or_else(|| format!("gid {}", meta.gid()));
            format!(
                "it admits root and members of group {group}; ask an administrator to add you \
                 (`adduser USER {group}`, then log in again), or run this as root"
            )
        }
        _ => "it is root-only; run this as root, or have the daemon started with \
              --socket-group GROUP (`socket_group` in the config)"
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_resolve_by_name_and_by_number() {
        let root = SocketGroup::resolve("root").unwrap();
        assert_eq!(root.gid, 0);
        let by_number = SocketGroup::resolve("0").unwrap();
        assert_eq!(
            by_number,
            SocketGroup {
                name: "root".into(),
                gid: 0
            }
        );
        // A gid nobody named is still a gid.
        assert_eq!(
            SocketGroup::resolve("3999999999").unwrap().gid,
            3_999_999_999
        );
        let err = SocketGroup::resolve("no-such-group-here")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no-such-group-here") && err.contains("addgroup"),
            "{err}"
        );
    }
}
