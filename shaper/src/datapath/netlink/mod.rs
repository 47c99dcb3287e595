//! The rtnetlink requests aya does not offer, one file per request family: [`link`] (an
//! interface's GSO/GRO limits), [`clsact`] (deleting the clsact qdisc shaper added, listing the
//! BPF programs under it), [`htb`] (the HTB root and classes of shape rules) with
//! [`class_queue`] (the queues under those classes), [`fq`] (the `fq` root of pace rules) and
//! [`ifb`] (the IFB device of ingress shape rules). They share one exchange ([`exchange`]: the request out,
//! the reply walked, over a [`socket`] of its own), one message builder ([`request`]), one
//! reader of what the kernel sends ([`attributes`]) and one set of [`constants`].
//!
//! Hand-written on libc, as aya's own netlink code is: netlink-packet-route would still need a
//! socket crate, rejects a whole message over one attribute it cannot decode (where this module
//! skips the attribute), and breaks its API every few 0.x releases; a handful of fixed requests
//! do not pay for that.

use std::io;

mod attributes;
pub mod class_queue;
pub mod clsact;
mod constants;
mod exchange;
pub mod fq;
pub mod htb;
pub mod ifb;
pub mod link;
mod replay;
mod request;
mod socket;
#[cfg(test)]
mod test_messages;

pub use clsact::{clsact_bpf_program_ids, delete_clsact};
pub use link::{AggregateLimits, link_aggregate_limits};
pub use replay::{Replayed, replay};

/// A reply (or a request) that is not what rtnetlink sends (or takes).
fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}
