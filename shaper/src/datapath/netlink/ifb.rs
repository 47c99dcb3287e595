//! The IFB device of an interface's ingress shape rules: the ingress program redirects their
//! packets to it, its HTB root queues them at the rules' rates, and it hands them back to the
//! interface's receive path (see shaper-ebpf's `shape` module for why they are counted once).
//! One per attached interface with ingress shape rules, named `shp-<ifindex>`, made and removed
//! over rtnetlink like the qdiscs of [`htb`](super::htb).

use std::io;

use super::{
    constants::{IFF_UP, NLM_F_CREATE, NLM_F_EXCL},
    exchange::ack,
    request::{Request, device_index},
};

// include/uapi/linux/if_link.h: IFLA_LINKINFO and, inside it, IFLA_INFO_KIND.
const IFLA_INFO_KIND: u16 = 1;

/// The IFB device of the interface with index `ifindex`: `shp-` and at most 10 digits, within
/// IFNAMSIZ (15 characters and the NUL).
pub fn name_for(ifindex: u32) -> String {
    format!("shp-{ifindex}")
}

/// Makes IFB device `name` and brings it up (`ip link add NAME up type ifb`); one that exists
/// already (an earlier daemon's) is kept.
pub fn create(name: &str) -> io::Result<()> {
    let mut request = Request::link(0, IFF_UP, IFF_UP);
    request
        .put_str(libc::IFLA_IFNAME, name)
        .nested(libc::IFLA_LINKINFO, |info| {
            info.put_str(IFLA_INFO_KIND, "ifb");
        });
    match ack(libc::RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &request) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

/// Removes the device with index `ifindex` (and its qdiscs with it).
pub fn delete(ifindex: u32) -> io::Result<()> {
    ack(
        libc::RTM_DELLINK,
        0,
        &Request::link(device_index(ifindex)?, 0, 0),
    )
}
