//! Reading what the kernel sends: native-endian integers at an offset and the attributes
//! (struct nlattr) packed after a message's fixed header. Every reader returns `None` or ends
//! its walk rather than panicking on a short or lying message.

use super::constants::{ATTRIBUTE_ALIGN, ATTRIBUTE_HEADER_LEN, ATTRIBUTE_TYPE_MASK};

/// The attributes (struct nlattr, which rtattr shares) packed in `bytes`, as their type without
/// the flag bits and their value. Never panics: the walk ends at the first attribute whose length
/// is impossible, as nla_ok (include/net/netlink.h) would.
pub(super) fn walk_attributes(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let (len, kind) = (usize::from(read_u16(bytes, 0)?), read_u16(bytes, 2)?);
        let Some(value) = bytes.get(ATTRIBUTE_HEADER_LEN..len) else {
            bytes = &[];
            return None;
        };
        // The last attribute may lack its alignment padding: nla_ok checks only the unpadded
        // length against what remains.
        bytes = bytes
            .get(len.next_multiple_of(ATTRIBUTE_ALIGN)..)
            .unwrap_or_default();
        Some((kind & ATTRIBUTE_TYPE_MASK, value))
    })
}

/// A string attribute's value without its terminating NUL (nla_put_string), as TCA_KIND is.
pub(super) fn string_value(value: &[u8]) -> &[u8] {
    value.strip_suffix(b"\0").unwrap_or(value)
}

/// An attribute value that is exactly a u32 (nla_put_u32), `None` for any other length.
pub(super) fn u32_value(value: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(value).ok().map(u32::from_ne_bytes)
}

pub(super) fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    let bytes = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_ne_bytes(bytes.try_into().ok()?))
}

pub(super) fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let bytes = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes(bytes.try_into().ok()?))
}

pub(super) fn read_i32(bytes: &[u8], at: usize) -> Option<i32> {
    let bytes = bytes.get(at..at.checked_add(4)?)?;
    Some(i32::from_ne_bytes(bytes.try_into().ok()?))
}
