//! The one message builder: a request's fixed header (struct ifinfomsg or struct tcmsg) and the
//! attributes after it, laid out as rtnetlink reads them, then the nlmsghdr in front when it is
//! sent. Bytes rather than `#[repr(C)]` structs, so no request needs `unsafe` to be sent and a
//! request's attributes can be as many and as nested as it needs.

use std::io;

use super::{
    constants::{AF_UNSPEC, ATTRIBUTE_ALIGN, ATTRIBUTE_HEADER_LEN, HEADER_LEN, NLA_F_NESTED},
    invalid,
};

/// `ifindex` as the kernel's int. net/core/dev.c `dev_index_reserve` hands out indexes in
/// 1..=INT_MAX. Outside it no device exists and a request would mislead (tcm_ifindex -1 is
/// TCM_IFINDEX_MAGIC_BLOCK, and RTM_GETLINK takes index 0 as "look up by name" and answers
/// EINVAL), so such an index is ENODEV without asking, as it is for a free one.
pub(super) fn device_index(ifindex: u32) -> io::Result<i32> {
    i32::try_from(ifindex)
        .ok()
        .filter(|&index| index > 0)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV))
}

/// What follows the nlmsghdr of one request: a fixed header, then attributes (struct nlattr,
/// each padded to NLA_ALIGNTO).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Request {
    pub(super) bytes: Vec<u8>,
}

impl Request {
    /// A request starting with a struct ifinfomsg (include/uapi/linux/rtnetlink.h): family,
    /// padding, device type (0: any), index, flags and the mask of flags to change.
    pub(super) fn link(index: i32, flags: u32, change: u32) -> Self {
        let mut bytes = vec![AF_UNSPEC, 0, 0, 0];
        bytes.extend_from_slice(&index.to_ne_bytes());
        bytes.extend_from_slice(&flags.to_ne_bytes());
        bytes.extend_from_slice(&change.to_ne_bytes());
        Self { bytes }
    }

    /// A request starting with a struct tcmsg (include/uapi/linux/rtnetlink.h): family, padding,
    /// ifindex, handle, parent, and info 0 (for a filter dump: every priority and protocol).
    pub(super) fn tc(ifindex: i32, handle: u32, parent: u32) -> Self {
        let mut bytes = vec![AF_UNSPEC, 0, 0, 0];
        bytes.extend_from_slice(&ifindex.to_ne_bytes());
        bytes.extend_from_slice(&handle.to_ne_bytes());
        bytes.extend_from_slice(&parent.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        Self { bytes }
    }

    /// Appends attribute `kind` with `value`. nla_len counts the header and the value, not the
    /// padding after it (include/uapi/linux/netlink.h). A value too long for nla_len's u16 is
    /// a bug of this module's requests, none of which comes near.
    pub(super) fn put(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        let len = u16::try_from(ATTRIBUTE_HEADER_LEN + value.len()).unwrap_or(u16::MAX);
        self.bytes.extend_from_slice(&len.to_ne_bytes());
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes.extend_from_slice(value);
        let padded = self.bytes.len().next_multiple_of(ATTRIBUTE_ALIGN);
        self.bytes.resize(padded, 0);
        self
    }

    /// A string attribute with its NUL, as nla_put_string puts it.
    pub(super) fn put_str(&mut self, kind: u16, value: &str) -> &mut Self {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.put(kind, &bytes)
    }

    /// A nested attribute holding what `inner` puts.
    pub(super) fn nested(&mut self, kind: u16, inner: impl FnOnce(&mut Request)) -> &mut Self {
        let mut nested = Request::default();
        inner(&mut nested);
        self.put(kind | NLA_F_NESTED, &nested.bytes)
    }

    /// The request as sent: struct nlmsghdr (len, type, flags, seq, pid 0: the kernel fills in
    /// the sender's port), then these bytes.
    pub(super) fn with_header(&self, kind: u16, flags: u16, seq: u32) -> io::Result<Vec<u8>> {
        let len = u32::try_from(HEADER_LEN + self.bytes.len())
            .map_err(|_| invalid("netlink request too long"))?;
        let mut request = Vec::with_capacity(HEADER_LEN + self.bytes.len());
        request.extend_from_slice(&len.to_ne_bytes());
        request.extend_from_slice(&kind.to_ne_bytes());
        request.extend_from_slice(&flags.to_ne_bytes());
        request.extend_from_slice(&seq.to_ne_bytes());
        request.extend_from_slice(&0u32.to_ne_bytes());
        request.extend_from_slice(&self.bytes);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::netlink::attributes::{read_u16, read_u32, walk_attributes};

    #[test]
    fn attributes_are_padded_but_their_length_is_not() {
        let mut request = Request::default();
        request.put(1, &[0xAA; 5]).put_str(2, "htb");
        // 4 + 5 = 9, padded to 12; then 4 + "htb\0" = 8.
        assert_eq!(request.bytes.len(), 12 + 8);
        assert_eq!(read_u16(&request.bytes, 0), Some(9));
        assert_eq!(&request.bytes[9..12], &[0, 0, 0]);
        let read: Vec<(u16, &[u8])> = walk_attributes(&request.bytes).collect();
        assert_eq!(read, [(1, &[0xAA; 5][..]), (2, &b"htb\0"[..])]);
    }

    #[test]
    fn a_nested_attribute_carries_the_flag_and_its_inner_attributes() {
        let mut request = Request::default();
        request.nested(3, |inner| {
            inner.put(4, &7u32.to_ne_bytes());
        });
        assert_eq!(read_u16(&request.bytes, 2), Some(3 | NLA_F_NESTED));
        // walk_attributes drops the flag bits; the value is the inner attribute whole.
        let (kind, value) = walk_attributes(&request.bytes).next().unwrap();
        assert_eq!(kind, 3);
        let inner: Vec<(u16, &[u8])> = walk_attributes(value).collect();
        assert_eq!(inner, [(4, &7u32.to_ne_bytes()[..])]);
    }

    #[test]
    fn the_header_counts_itself_and_the_body() {
        let request = Request::tc(5, 0x5348_0000, 0xFFFF_FFFF);
        assert_eq!(request.bytes.len(), 20);
        let sent = request.with_header(36, 0x0305, 42).unwrap();
        assert_eq!(sent.len(), HEADER_LEN + 20);
        // struct nlmsghdr: len, type, flags, seq, pid.
        assert_eq!(read_u32(&sent, 0), Some(36));
        assert_eq!(read_u16(&sent, 4), Some(36));
        assert_eq!(read_u16(&sent, 6), Some(0x0305));
        assert_eq!(read_u32(&sent, 8), Some(42));
        assert_eq!(read_u32(&sent, 12), Some(0));
        // struct tcmsg: family and padding, ifindex, handle, parent, info.
        assert_eq!(read_u32(&sent, 20), Some(5));
        assert_eq!(read_u32(&sent, 24), Some(0x5348_0000));
        assert_eq!(read_u32(&sent, 28), Some(0xFFFF_FFFF));
        assert_eq!(read_u32(&sent, 32), Some(0));
        assert_eq!(Request::link(1, 1, 1).bytes.len(), 16);
    }
}
