//! Interfaces: names to indexes, the default-route interface, and the network namespace.

use std::{ffi::CString, os::unix::fs::MetadataExt as _};

use crate::datapath::{DatapathError, Result};

/// The kernel's index of interface `name` in this network namespace.
pub fn index(name: &str) -> Result<u32> {
    let c_name =
        CString::new(name).map_err(|_| DatapathError::InterfaceNotFound(name.to_owned()))?;
    // SAFETY: if_nametoindex reads a NUL-terminated string and touches nothing else.
    match unsafe { libc::if_nametoindex(c_name.as_ptr()) } {
        0 => Err(DatapathError::InterfaceNotFound(name.to_owned())),
        index => Ok(index),
    }
}

/// The name of interface `index` in this network namespace, if one has it.
pub fn name(index: u32) -> Option<String> {
    let mut buffer = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes, NUL included, into `buffer`,
    // which is that large; it returns NULL (and writes nothing useful) for an unknown index.
    let found = unsafe { libc::if_indextoname(index, buffer.as_mut_ptr()) };
    if found.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buffer.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// What every kernel allows at least: GSO_LEGACY_MAX_SIZE (include/linux/netdevice.h), the
/// GSO_MAX_SIZE of kernels before BIG TCP and the default of every gso/gro max size since.
const GSO_LEGACY_MAX_SIZE: u32 = 65536;

/// The largest aggregate (GSO or GRO skb) the tc hooks of `name` can see, in bytes: the largest of the
/// interface's gso/gro max sizes, and never less than 64 KiB (GSO_LEGACY_MAX_SIZE, 65536 — what kernels before the
/// attributes existed allowed).
///
/// A gso_max_size below 64 KiB (a driver with a small TSO limit) does not lower the floor: a
/// forwarded skb reaches the egress hook as GRO built it on the ingress interface, and
/// net/core/dev.c `validate_xmit_skb`, which segments what the device cannot take, runs after the
/// hook. The sizes bound the skb from its network header on; the wire bytes of an aggregate add
/// the L2 header and the headers of every further segment.
pub fn max_aggregate_bytes(name: &str) -> Result<u32> {
    let ifindex = index(name)?;
    let limits = crate::datapath::netlink::link_aggregate_limits(ifindex).map_err(|e| {
        if e.raw_os_error() == Some(libc::ENODEV) {
            // Removed between the name lookup and the request.
            DatapathError::InterfaceNotFound(name.to_owned())
        } else {
            DatapathError::Io(std::io::Error::new(
                e.kind(),
                format!("reading the GSO/GRO size limits of {name} (RTM_GETLINK): {e}"),
            ))
        }
    })?;
    Ok(limits.largest().unwrap_or(0).max(GSO_LEGACY_MAX_SIZE))
}

/// The interface of the default route: IPv4 first, then IPv6; the lowest metric wins.
pub fn default_route_interface() -> Result<String> {
    let v4 = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let v6 = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    default_route_v4(&v4)
        .or_else(|| default_route_v6(&v6))
        .ok_or(DatapathError::NoDefaultRoute)
}

const RTF_UP: u32 = 0x1;

/// Parses `/proc/net/route` (net/ipv4/fib_trie.c `fib_route_seq_show`): a header line, then
/// `Iface Destination Gateway Flags RefCnt Use Metric Mask ...` in hex, addresses in host order.
pub fn default_route_v4(table: &str) -> Option<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (iface, dest, flags, metric, mask) = (
                fields.first()?,
                fields.get(1)?,
                fields.get(3)?,
                fields.get(6)?,
                fields.get(7)?,
            );
            let flags = u32::from_str_radix(flags, 16).ok()?;
            let is_default = u32::from_str_radix(dest, 16).ok()? == 0
                && u32::from_str_radix(mask, 16).ok()? == 0
                && flags & RTF_UP != 0;
            is_default.then(|| (metric.parse::<u32>().unwrap_or(u32::MAX), iface.to_string()))
        })
        .min()
        .map(|(_, iface)| iface)
}

/// Parses `/proc/net/ipv6_route` (net/ipv6/route.c `ipv6_route_native_seq_show`):
/// `dest plen src plen nexthop metric refcnt use flags iface`, all hex but the name.
pub fn default_route_v6(table: &str) -> Option<String> {
    table
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 10 {
                return None;
            }
            let flags = u32::from_str_radix(fields[8], 16).ok()?;
            let is_default = fields[0].bytes().all(|b| b == b'0')
                && fields[1] == "00"
                && flags & RTF_UP != 0
                && fields[9] != "lo";
            let metric = u32::from_str_radix(fields[5], 16).unwrap_or(u32::MAX);
            is_default.then(|| (metric, fields[9].to_owned()))
        })
        .min()
        .map(|(_, iface)| iface)
}

/// The inode of this process's network namespace: interface names are only unique within one.
pub fn netns_inode() -> Result<u64> {
    let path = "/proc/self/ns/net";
    Ok(std::fs::metadata(path)
        .map_err(DatapathError::path(path))?
        .ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
wlan0\t00000000\t0102A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0
eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
";

    #[test]
    fn v4_default_route_with_lowest_metric_wins() {
        assert_eq!(default_route_v4(ROUTE).as_deref(), Some("eth0"));
    }

    #[test]
    fn v4_table_without_default_route_has_none() {
        let table = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
                     eth0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\n";
        assert_eq!(default_route_v4(table), None);
        assert_eq!(default_route_v4(""), None);
    }

    #[test]
    fn v4_route_that_is_down_is_ignored() {
        let table = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
                     eth9\t00000000\t0101A8C0\t0002\t0\t0\t1\t00000000\n";
        assert_eq!(default_route_v4(table), None);
    }

    #[test]
    fn v6_default_route_skips_loopback_unreachable_entry() {
        let table = "\
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     ens3
20010db8000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     ens3
";
        assert_eq!(default_route_v6(table).as_deref(), Some("ens3"));
    }

    #[test]
    fn loopback_aggregates_are_at_least_64_kib() {
        // Unprivileged: RTM_GETLINK needs no capability.
        let bytes = max_aggregate_bytes("lo").unwrap();
        assert!(bytes >= GSO_LEGACY_MAX_SIZE, "{bytes}");
    }

    #[test]
    fn max_aggregate_of_unknown_interface_is_a_clear_error() {
        let err = max_aggregate_bytes("shaper-no-such-if0").unwrap_err();
        assert!(matches!(err, DatapathError::InterfaceNotFound(_)), "{err}");
    }

    #[test]
    fn unknown_interface_is_a_clear_error() {
        let err = index("shaper-no-such-if0").unwrap_err();
        assert!(
            err.to_string()
                .contains("'shaper-no-such-if0' does not exist"),
            "{err}"
        );
    }
}
