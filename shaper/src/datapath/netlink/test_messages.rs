//! Messages as the kernel lays them out, for the unit tests of the reply walk and of each
//! request family's parser.

use super::{
    constants::{ATTRIBUTE_ALIGN, ATTRIBUTE_HEADER_LEN},
    exchange::Exchange,
};

/// One rtattr as the kernel lays it out: header, value, padding to 4 bytes.
pub(super) fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
    let len = (ATTRIBUTE_HEADER_LEN + value.len()) as u16;
    let mut bytes = [len.to_ne_bytes(), kind.to_ne_bytes()].concat();
    bytes.extend_from_slice(value);
    bytes.resize(bytes.len().next_multiple_of(ATTRIBUTE_ALIGN), 0);
    bytes
}

pub(super) fn u32_attribute(kind: u16, value: u32) -> Vec<u8> {
    attribute(kind, &value.to_ne_bytes())
}

/// The exchange the test messages answer: sequence 1, port 0.
pub(super) const TEST: Exchange = Exchange { seq: 1, port: 0 };

pub(super) fn message(kind: u16, payload: &[u8]) -> Vec<u8> {
    message_to(TEST, kind, payload)
}

pub(super) fn message_to(exchange: Exchange, kind: u16, payload: &[u8]) -> Vec<u8> {
    let len = (size_of::<libc::nlmsghdr>() + payload.len()) as u32;
    let mut bytes = [
        &len.to_ne_bytes()[..],
        &kind.to_ne_bytes(),
        &0u16.to_ne_bytes(),
        &exchange.seq.to_ne_bytes(),
        &exchange.port.to_ne_bytes(),
    ]
    .concat();
    bytes.extend_from_slice(payload);
    bytes
}

/// An NLMSG_ERROR with `errno` (0: an ack).
pub(super) fn error_message(errno: i32) -> Vec<u8> {
    message(libc::NLMSG_ERROR as u16, &errno.to_ne_bytes())
}

/// An NLMSG_DONE with `errno`.
pub(super) fn done(errno: i32) -> Vec<u8> {
    message(libc::NLMSG_DONE as u16, &errno.to_ne_bytes())
}
