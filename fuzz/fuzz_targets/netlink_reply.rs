//! rtnetlink replies, as the daemon reads them (`datapath/netlink/`): the message walker and
//! the attribute walker under each request's handler (an ack, RTM_GETLINK's GSO/GRO sizes, a
//! clsact filter dump).
//!
//! Input: one byte of flags (bit 0: the dump is of the ingress hook), then datagrams, each a
//! little-endian u16 length and that many bytes (the last one takes what is left). Every reply is
//! an answer, unfinished, or an error that is either the kernel's errno or `InvalidData`; a dump
//! lists at most one program per message.

#![no_main]

use std::io;

use libfuzzer_sys::fuzz_target;
use shaper::fuzz::netlink_replies;

/// nlmsghdr + tcmsg + TCA_KIND "bpf" + TCA_OPTIONS holding TCA_BPF_ID: the smallest message
/// that lists a program.
const SMALLEST_LISTING: usize = 16 + 20 + 8 + 4 + 8;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let mut datagrams = Vec::new();
    while let Some((len, tail)) = rest.split_first_chunk::<2>() {
        let len = usize::from(u16::from_le_bytes(*len)).min(tail.len());
        let (datagram, tail) = tail.split_at(len);
        datagrams.push(datagram);
        rest = tail;
    }
    let replies = netlink_replies(&datagrams, flags & 1 == 1);
    let total: usize = datagrams.iter().map(|d| d.len()).sum();
    check(&replies.ack);
    check(&replies.link);
    check(&replies.filter_ids);
    if let Ok(Some(ids)) = &replies.filter_ids {
        assert!(
            ids.len() * SMALLEST_LISTING <= total,
            "{ids:?} from {total} bytes"
        );
    }
});

fn check<T>(reply: &io::Result<T>) {
    if let Err(error) = reply {
        match error.raw_os_error() {
            Some(errno) => assert!(errno > 0, "{error}"),
            None => assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}"),
        }
        assert!(!error.to_string().is_empty());
    }
}
