//! Types and constants shared by the eBPF classifier and userspace.
//!
//! Everything here is `#[repr(C)]` with explicit layout and no implicit padding, so the kernel
//! and userspace read the same bytes; sizes are pinned at compile time.
#![no_std]

use core::mem::size_of;

/// Map names, as userspace finds them in the loaded object.
pub mod maps {
    /// `ARRAY` of [`PortCounter`](crate::PortCounter), indexed by [`port_counter_index`](crate::port_counter_index).
    pub const PORT_COUNTERS: &str = "PORT_COUNTERS";
    /// `PERCPU_ARRAY` of [`Counter`](crate::Counter), indexed by [`unclassified_index`](crate::unclassified_index).
    pub const UNCLASSIFIED: &str = "UNCLASSIFIED";
    /// `HASH` from ifindex (`u32`) to interface slot (`u32`): every registered interface.
    pub const IFACE_SLOTS: &str = "IFACE_SLOTS";
    /// `ARRAY` of `u32` by ifindex, for each ifindex below
    /// [`DIRECT_IFINDEXES`](crate::DIRECT_IFINDEXES): the interface's slot + 1, 0 for none. A
    /// copy of `IFACE_SLOTS` the programs read without hashing; `IFACE_SLOTS` stays the record.
    pub const IFACE_SLOT_BY_IFINDEX: &str = "IFACE_SLOT_BY_IFINDEX";
    /// `ARRAY` of [`PortVerdicts`](crate::PortVerdicts), indexed like `PORT_COUNTERS`.
    pub const PORT_VERDICTS: &str = "PORT_VERDICTS";
    /// `ARRAY` of [`RuleIndexRow`](crate::RuleIndexRow), indexed by [`rule_index_row`](crate::rule_index_row).
    pub const RULE_INDEX: &str = "RULE_INDEX";
    /// `ARRAY` of [`RuleConfig`](crate::RuleConfig), indexed by rule id.
    pub const RULES: &str = "RULES";
    /// `ARRAY` of [`BucketState`](crate::BucketState), indexed by [`bucket_index`](crate::bucket_index).
    pub const BUCKETS: &str = "BUCKETS";
    /// `ARRAY` of [`RuleCounters`](crate::RuleCounters), indexed by [`bucket_index`](crate::bucket_index).
    pub const RULE_COUNTERS: &str = "RULE_COUNTERS";
    /// `ARRAY` of [`TcpEvents`](crate::TcpEvents), indexed by [`tcp_events_index`](crate::tcp_events_index).
    pub const TCP_EVENTS: &str = "TCP_EVENTS";
    /// `LRU_HASH` from [`HandshakeKey`](crate::HandshakeKey) to [`Handshake`](crate::Handshake).
    pub const HANDSHAKES: &str = "HANDSHAKES";
    /// `ARRAY` of [`RttHistogram`](crate::RttHistogram), indexed by [`rtt_index`](crate::rtt_index).
    pub const HANDSHAKE_RTT: &str = "HANDSHAKE_RTT";
    /// `ARRAY` of one [`HandshakeStats`](crate::HandshakeStats).
    pub const HANDSHAKE_STATS: &str = "HANDSHAKE_STATS";
    /// `LRU_HASH` from [`RemoteKey`](crate::RemoteKey) to the last handshake's time (`u64`).
    pub const REMOTES: &str = "REMOTES";
    /// `ARRAY` of [`WatchRow`](crate::WatchRow), indexed by [`watch_row`](crate::watch_row).
    pub const WATCHED: &str = "WATCHED";
    /// `LRU_HASH` from [`TalkerKey`](crate::TalkerKey) to [`TalkerCounters`](crate::TalkerCounters).
    pub const TALKERS: &str = "TALKERS";
    /// `PERCPU_ARRAY` of one `u64`: keys the programs inserted into `TALKERS`.
    pub const TALKER_INSERTS: &str = "TALKER_INSERTS";
    /// `RINGBUF` of [`TraceEvent`](crate::TraceEvent)s of traced ports.
    pub const TRACE_EVENTS: &str = "TRACE_EVENTS";
    /// `ARRAY` of one [`TraceConfig`](crate::TraceConfig).
    pub const TRACE_CONFIG: &str = "TRACE_CONFIG";
    /// `PERCPU_ARRAY` of one [`TraceBudget`](crate::TraceBudget).
    pub const TRACE_BUDGET: &str = "TRACE_BUDGET";
    /// `PERCPU_ARRAY` of `u64`, indexed by [`trace_lost`](crate::trace_lost).
    pub const TRACE_LOST: &str = "TRACE_LOST";
    /// `ARRAY` of one `u32`: the [`log_level`](crate::log_level) of the program's rare paths.
    pub const LOG_LEVEL: &str = "LOG_LEVEL";
    /// `ARRAY` of ifindex (`u32`) by interface slot: the IFB device of ingress shape rules.
    pub const SHAPE_IFB: &str = "SHAPE_IFB";
    /// `LRU_HASH` from [`FragmentKey`](crate::FragmentKey) to [`FragmentPorts`](crate::FragmentPorts).
    pub const FRAGMENTS: &str = "FRAGMENTS";
    /// `PERCPU_ARRAY` of `u64`, indexed by [`fragment_stat`](crate::fragment_stat).
    pub const FRAGMENT_STATS: &str = "FRAGMENT_STATS";

    /// `ARRAY` of rule ids (`u32`) by [`unplaced_index`](crate::unplaced_index): the
    /// `unplaced` rule of each interface slot and direction, 0 for none.
    pub const UNPLACED_RULES: &str = "UNPLACED_RULES";
    /// `LRU_HASH` from [`RemoteBucketKey`](crate::RemoteBucketKey) to
    /// [`BucketState`](crate::BucketState): the buckets of `--per-remote` rules.
    pub const REMOTE_BUCKETS: &str = "REMOTE_BUCKETS";
    /// `PERCPU_ARRAY` of `u64`, indexed by [`remote_bucket_stat`](crate::remote_bucket_stat).
    pub const REMOTE_BUCKET_STATS: &str = "REMOTE_BUCKET_STATS";

    /// Every map of the classifier: all of them are pinned, so the datapath outlives a daemon.
    pub const ALL: [&str; 28] = [
        PORT_COUNTERS,
        UNCLASSIFIED,
        IFACE_SLOTS,
        IFACE_SLOT_BY_IFINDEX,
        PORT_VERDICTS,
        RULE_INDEX,
        RULES,
        BUCKETS,
        RULE_COUNTERS,
        TCP_EVENTS,
        HANDSHAKES,
        HANDSHAKE_RTT,
        HANDSHAKE_STATS,
        REMOTES,
        WATCHED,
        TALKERS,
        TALKER_INSERTS,
        TRACE_EVENTS,
        TRACE_CONFIG,
        TRACE_BUDGET,
        TRACE_LOST,
        LOG_LEVEL,
        SHAPE_IFB,
        FRAGMENTS,
        FRAGMENT_STATS,
        UNPLACED_RULES,
        REMOTE_BUCKETS,
        REMOTE_BUCKET_STATS,
    ];
}

/// Program names (the `#[classifier]` functions), one per hook direction.
pub mod programs {
    pub const INGRESS: &str = "shaper_ingress";
    pub const EGRESS: &str = "shaper_egress";
}

/// Hook direction. The local port is the destination port on ingress and the source port on
/// egress: the port of the service on this host.
pub const DIR_INGRESS: u32 = 0;
pub const DIR_EGRESS: u32 = 1;
pub const DIRECTIONS: u32 = 2;

/// L4 protocols that have ports and therefore per-port counters.
pub const PROTO_TCP: u32 = 0;
pub const PROTO_UDP: u32 = 1;
pub const PROTOS: u32 = 2;

pub const PORTS: u32 = 1 << 16;

/// Port counters one attached interface owns: every port, both protocols, both directions.
pub const PORT_COUNTERS_PER_IFACE: u32 = DIRECTIONS * PROTOS * PORTS;

/// Upper bound on interfaces one daemon attaches to (slots in `IFACE_SLOTS`). The counter map is
/// sized at load time for the interfaces actually attached, so this costs nothing until used.
pub const MAX_IFACES: u32 = 64;

/// Interfaces whose ifindex is below this find their slot in `IFACE_SLOT_BY_IFINDEX` (an array
/// read, 16 KiB); the others in the `IFACE_SLOTS` hash. Indexes are handed out in order of
/// creation per namespace (`dev_new_index()`, net/core/dev.c) and rarely pass a few thousand,
/// except on hosts that create and delete interfaces by the thousand (a container per veth).
pub const DIRECT_IFINDEXES: u32 = 4096;

/// Why a packet has no port. Every packet the classifier sees is counted exactly once: under a
/// port or under one of these reasons.
pub mod reason {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...), after up to two VLAN tags.
    pub const NON_IP: u32 = 0;
    /// The packet ends inside a header the classifier needs, as that header's length field
    /// declares it (IPv4 IHL, an IPv6 extension header's length, the TCP data offset).
    pub const TRUNCATED: u32 = 1;
    /// A header is inconsistent: IP version mismatch, a length field below its header's fixed
    /// size (IPv4 IHL < 5, TCP data offset < 5, UDP length < 8 but for 0 over IPv6, AH Payload
    /// Len 0), a Hop-by-Hop header that is not first.
    pub const MALFORMED: u32 = 2;
    /// A non-first fragment whose first fragment the classifier has not seen (it was lost,
    /// reordered behind this one, evicted from `FRAGMENTS`, or never sent): it carries no L4
    /// header, so it has no ports. A follower of a first fragment that was seen counts under
    /// that fragment's port instead.
    pub const FRAGMENT: u32 = 3;
    /// ICMP or ICMPv6.
    pub const ICMP: u32 = 4;
    /// Any other L4 protocol (SCTP, GRE, ESP, IPv6 "no next header", ...).
    pub const OTHER_L4: u32 = 5;
    /// More IPv6 extension headers than the classifier walks (a bounded loop).
    pub const IPV6_EXT_LIMIT: u32 = 6;
    pub const COUNT: u32 = 7;

    /// Stable names, used in `shaper stats` output and metrics labels.
    pub const NAMES: [&str; COUNT as usize] = [
        "non_ip",
        "truncated",
        "malformed",
        "fragment",
        "icmp",
        "other_l4",
        "ipv6_ext_limit",
    ];
}

/// IPv6 extension headers walked before giving up with [`reason::IPV6_EXT_LIMIT`].
pub const MAX_IPV6_EXT_HEADERS: u32 = 8;

/// In-packet VLAN tags (802.1Q, 802.1ad) walked; behind a third the EtherType is a VLAN TPID
/// and the packet counts as [`reason::NON_IP`].
pub const MAX_VLAN_TAGS: u32 = 2;

/// Packets and bytes. Bytes are wire bytes including the L2 header (no preamble or FCS); a GSO
/// aggregate counts as its segments, each with its own copy of the headers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(size_of::<Counter>() == 16);

/// Per-port counter; the same layout as [`Counter`], named for the map it lives in.
pub type PortCounter = Counter;

// SAFETY: repr(C) of two u64, no padding (size asserted above), every bit pattern a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Counter {}

/// Index of the counter of (interface slot, direction, protocol, local port) in `PORT_COUNTERS`.
#[inline(always)]
pub const fn port_counter_index(slot: u32, direction: u32, proto: u32, port: u16) -> u32 {
    ((slot * DIRECTIONS + direction) * PROTOS + proto) * PORTS + port as u32
}

/// Index of the counter of (interface slot, direction, reason) in `UNCLASSIFIED`.
#[inline(always)]
pub const fn unclassified_index(slot: u32, direction: u32, reason: u32) -> u32 {
    (slot * DIRECTIONS + direction) * reason::COUNT + reason
}

/// Entries `UNCLASSIFIED` needs for `MAX_IFACES` interfaces.
pub const UNCLASSIFIED_ENTRIES: u32 = MAX_IFACES * DIRECTIONS * reason::COUNT;

/// Which port of a packet a rule matches: the local one (the service on this host) or, with
/// `--remote`, the remote one.
pub const SIDE_LOCAL: u32 = 0;
pub const SIDE_REMOTE: u32 = 1;
pub const SIDES: u32 = 2;

/// Rule ids are `1..MAX_RULES`; id 0 in the rule index means "no rule". 65,536 is every id a
/// `u16` cell of the rule index can name: enough for one rule on every port but one, and the
/// rule maps it sizes take 12 MiB (see docs/src/contributing/architecture.md, *Design and
/// memory*).
pub const MAX_RULES: u32 = 1 << 16;
const _: () = assert!(MAX_RULES - 1 <= u16::MAX as u32, "rule ids are u16 cells");
pub const NO_RULE: u16 = 0;

/// For one (interface slot, direction, protocol, side): the id of the rule that governs each
/// port. One 128 KiB map value per row rather than one entry per port, because array elements
/// are rounded up to 8 bytes (kernel/bpf/arraymap.c `array_map_alloc`) and a `u16` per port
/// would take four times the memory.
pub type RuleIndexRow = [u16; PORTS as usize];

/// Rows of the rule index one attached interface owns.
pub const RULE_INDEX_ROWS_PER_IFACE: u32 = DIRECTIONS * PROTOS * SIDES;

#[inline(always)]
pub const fn rule_index_row(slot: u32, direction: u32, proto: u32, side: u32) -> u32 {
    ((slot * DIRECTIONS + direction) * PROTOS + proto) * SIDES + side
}

/// Each rule has one bucket (and one set of counters) per direction: a rate is a per-direction
/// rate, like a link's. The ports of a range, the protocols and the interfaces of a rule share it.
#[inline(always)]
pub const fn bucket_index(rule: u32, direction: u32) -> u32 {
    rule * DIRECTIONS + direction
}

/// Index of (interface slot, direction) in `UNPLACED_RULES`.
#[inline(always)]
pub const fn unplaced_index(slot: u32, direction: u32) -> u32 {
    slot * DIRECTIONS + direction
}

/// What happens to a packet the bucket has no tokens for.
pub const ACTION_DROP: u32 = 1;
/// Pass it, and count it as a would-drop: a dry run of the same rule.
pub const ACTION_OBSERVE: u32 = 2;
/// Queue it: the egress program puts every packet of the rule into the rule's HTB class (see
/// [`shape_class_id`]); the class, not the bucket, holds the rate.
pub const ACTION_SHAPE: u32 = 3;

/// Pace it (egress): the program gives every packet of the rule a departure time in
/// `skb->tstamp`, spaced at the rule's rate, and the `fq` qdisc userspace installed as the
/// interface's root holds the packet until then (Earliest Departure Time; see [`pace`]). Only a
/// packet that would wait longer than the rule's horizon is dropped.
pub const ACTION_PACE: u32 = 4;

/// [`RuleConfig::flags`] bit of a `drop` rule with `--ecn`: while its bucket holds less than
/// half the burst ([`ecn_threshold`]), an ECN-capable packet is marked CE instead of passing
/// silently; only a packet the bucket has no tokens for is dropped.
pub const RULE_FLAG_ECN: u32 = 1;

/// [`TraceEvent::bucket_bytes`] of a packet whose rule keeps a bucket per remote: not read.
pub const NO_BUCKET_BYTES: u64 = u64::MAX;

/// [`RuleConfig::flags`] bit of a `drop` or `observe` rule with `--per-remote`: every remote
/// address gets a bucket of its own (rate and burst as the rule's), kept in `REMOTE_BUCKETS`, so
/// one sender cannot drain the bucket the others share. The rule's counters stay one set.
pub const RULE_FLAG_PER_REMOTE: u32 = 2;

/// [`RuleConfig::flags`] bit of a rule whose buckets tell time by the kernel's tick
/// (`bpf_ktime_get_coarse_ns`, the timekeeper's last update) rather than by the precise clock
/// (`bpf_ktime_get_ns`). Set by userspace when the rule's fill time spans at least
/// [`bucket::COARSE_CLOCK_MIN_TICKS`] ticks ([`bucket::coarse_clock_suffices`]); see there for
/// what it saves and what it costs.
pub const RULE_FLAG_COARSE_CLOCK: u32 = 4;

/// Tokens (nanobits) below which an `--ecn` rule marks: half the burst.
#[inline(always)]
pub const fn ecn_threshold(burst_nanobits: u64) -> u64 {
    burst_nanobits / 2
}

/// The major number (handle `5348:`) of the HTB root qdisc shaper installs for shape rules.
/// Arbitrary but fixed, so a restarted daemon recognises its own root.
pub const SHAPE_HTB_MAJOR: u32 = 0x5348;

/// The major number (handle `5350:`) of the root qdisc shaper installs for pace rules: an `fq`,
/// or an `mq` with an `fq` per transmit queue.
pub const PACE_ROOT_MAJOR: u32 = 0x5350;

/// The HTB class of shape rule `rule`: `5348:<rule id>`, as TC_H_MAKE (include/uapi/linux/
/// pkt_sched.h) builds it. The egress program writes it to `skb->priority`, which HTB's
/// `htb_classify` (net/sched/sch_htb.c) takes as the class when it names one of its leaves.
#[inline(always)]
pub const fn shape_class_id(rule: u32) -> u32 {
    (SHAPE_HTB_MAJOR << 16) | (rule & 0xFFFF)
}

/// A rule's limit as the classifier reads it. Written by userspace as a whole; the program
/// passes the packets of a rule whose `rate_bps` is 0 uncharged (a removed rule), and passes
/// without dropping or counting a would-drop when the action is unknown.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleConfig {
    /// Bits per second.
    pub rate_bps: u64,
    /// Bucket depth in nanobits ([`bucket::NANOBITS_PER_BYTE`] per byte).
    pub burst_nanobits: u64,
    /// Nanoseconds to refill an empty bucket, [`bucket::fill_ns`]: the cap on the elapsed time
    /// one refill credits, computed once by userspace so the program never divides. For an
    /// [`ACTION_PACE`] rule, which has no bucket (and a zero burst), its horizon
    /// ([`pace::horizon_ns`]): the longest a packet may be scheduled to wait.
    pub fill_ns: u64,
    /// [`ACTION_DROP`], [`ACTION_OBSERVE`], [`ACTION_SHAPE`] or [`ACTION_PACE`].
    pub action: u32,
    /// [`RULE_FLAG_ECN`], [`RULE_FLAG_PER_REMOTE`] and [`RULE_FLAG_COARSE_CLOCK`] bits.
    pub flags: u32,
}
const _: () = assert!(size_of::<RuleConfig>() == 32);

/// A bucket's state, updated by the classifier (with atomics: every CPU shares it) after
/// userspace wrote it [`full`](Self::full) when the rule was installed.
///
/// All zero is *not* a full bucket: it is an empty one stamped at boot, which the first packet
/// fills only if the machine has been up for longer than the rule's fill time (burst / rate:
/// 2.3 hours for 1 MiB at 1 kbit/s).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketState {
    /// Tokens in nanobits. Credits are added unclamped, so this may exceed the burst by the
    /// credits of packets in flight; every take (and every refused one) clamps it back.
    pub tokens: u64,
    /// The `bpf_ktime_get_ns()` up to which time has been credited.
    pub stamp_ns: u64,
}
const _: () = assert!(size_of::<BucketState>() == 16);

impl BucketState {
    /// A bucket holding its whole burst at `now_ns` (`bpf_ktime_get_ns()`'s clock, which is
    /// CLOCK_MONOTONIC): time before `now_ns` credits nothing, so it is full whatever the uptime.
    pub const fn full(burst_nanobits: u64, now_ns: u64) -> Self {
        Self {
            tokens: burst_nanobits,
            stamp_ns: now_ns,
        }
    }
}

/// Verdict counters of one rule in one direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleCounters {
    pub passed: Counter,
    pub dropped: Counter,
    /// Packets an `observe` rule passed that `drop` would have dropped.
    pub would_drop: Counter,
    /// Packets an `--ecn` rule marked CE (and passed; they are in `passed` too).
    pub marked: Counter,
}
const _: () = assert!(size_of::<RuleCounters>() == 64);

/// Verdict counters of one port (indexed like `PORT_COUNTERS`); passed is seen minus dropped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortVerdicts {
    pub dropped: Counter,
    pub would_drop: Counter,
}
const _: () = assert!(size_of::<PortVerdicts>() == 32);

// SAFETY: repr(C) of three u64 then two u32 (`action`, and `flags` filling the tail), so no
// implicit padding (size asserted above); every bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for RuleConfig {}
// SAFETY: repr(C) of two u64, no padding (size asserted above), every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for BucketState {}
// SAFETY: repr(C) of four `Counter`s (two u64 each), no padding (size asserted above), every
// bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for RuleCounters {}
// SAFETY: repr(C) of two `Counter`s (two u64 each), no padding (size asserted above), every bit
// pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PortVerdicts {}

pub mod tcp;
pub use tcp::*;
/// For one (interface slot, direction, protocol): a byte of switches per local port, painted by
/// userspace through mmap like the rule index. One 64 KiB value per row, as array elements are
/// rounded up to 8 bytes (kernel/bpf/arraymap.c `array_map_alloc`).
pub type WatchRow = [u8; PORTS as usize];

/// Rows of `WATCHED` one attached interface owns.
pub const WATCH_ROWS_PER_IFACE: u32 = DIRECTIONS * PROTOS;

/// The `WATCHED` row of (interface slot, direction, protocol): the port counters' row, so a
/// packet's row is its counter index divided by [`PORTS`].
#[inline(always)]
pub const fn watch_row(slot: u32, direction: u32, proto: u32) -> u32 {
    (slot * DIRECTIONS + direction) * PROTOS + proto
}

/// A `WATCHED` cell bit: account this port's packets per remote address in `TALKERS`.
pub const WATCH_TALKERS: u8 = 1;

/// Remote addresses `TALKERS` holds before the least recently used are evicted. An entry takes
/// about 170 bytes of kernel memory (24 B key + 48 B value + the LRU hash element's own header,
/// kernel/bpf/hashtab.c `struct htab_elem`, rounded), so 16,384 entries take about 2.7 MiB.
pub const MAX_TALKERS: u32 = 16_384;

/// A remote address of a watched local port. IPv4 addresses are stored IPv4-mapped
/// (`::ffff:a.b.c.d`, RFC 4291 section 2.5.5.2), so one key type serves both families.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TalkerKey {
    /// The remote address, network byte order.
    pub addr: [u8; 16],
    pub port: u16,
    pub slot: u8,
    pub direction: u8,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<TalkerKey>() == 24);
const _: () = assert!(MAX_IFACES <= u8::MAX as u32 + 1, "slots fit the key's u8");

/// What one remote address sent to (ingress) or received from (egress) a watched port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TalkerCounters {
    pub seen: Counter,
    pub dropped: Counter,
    pub would_drop: Counter,
}
const _: () = assert!(size_of::<TalkerCounters>() == 48);

// SAFETY: repr(C) of a byte array, a u16 and bytes filling the tail (size asserted above), no
// implicit padding; every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for TalkerKey {}
// SAFETY: repr(C) of three `Counter`s (two u64 each), no padding (size asserted above), every
// bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for TalkerCounters {}

/// Datagrams whose first fragment `FRAGMENTS` remembers before the least recently used are
/// evicted. An entry takes about 150 bytes of kernel memory (40 B key + 8 B value + the LRU hash
/// element's header, kernel/bpf/hashtab.c `struct htab_elem`, rounded): 8,192 entries, 1.2 MiB.
/// The kernel's own reassembly holds at most `ipfrag_high_thresh` (4 MiB by default) of
/// fragments per namespace and family, about 3,000 datagrams of 1,400 bytes; this is more.
pub const MAX_FRAGMENTED_DATAGRAMS: u32 = 8_192;

/// One fragmented datagram, as the kernel's reassembly tells datagrams apart: source,
/// destination, identification and, for IPv4, the protocol (`ip4_frag_match()`,
/// net/ipv4/ip_fragment.c; `ip6frag_key`, include/net/ipv6_frag.h). IPv4 addresses are stored
/// IPv4-mapped, like [`TalkerKey`]'s.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// IPv4's 16-bit Identification, or IPv6's 32-bit one (the Fragment header's).
    pub id: u32,
    /// The IPv4 Protocol field; 0 for IPv6.
    pub ip_proto: u8,
    /// 4 or 6.
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<FragmentKey>() == 40);

/// The ports of a fragmented datagram, from its first fragment, as they appear in the packet
/// (source and destination, not local and remote: a datagram's fragments all go one way).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragmentPorts {
    pub src_port: u16,
    pub dst_port: u16,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub proto: u32,
}
const _: () = assert!(size_of::<FragmentPorts>() == 8);

// SAFETY: repr(C) of byte arrays, a u32 and bytes filling the tail (size asserted above), no
// implicit padding; every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FragmentKey {}
// SAFETY: repr(C) of two u16 and a u32, no padding (size asserted above); every bit pattern
// valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FragmentPorts {}

/// Remote addresses `--per-remote` rules keep a bucket for, all rules and directions together,
/// before the least recently used is evicted (and starts full again when its remote comes back).
/// An entry takes about 100 bytes of kernel memory (20 B key + 16 B value + the LRU hash
/// element's header, kernel/bpf/hashtab.c `struct htab_elem`, rounded to 8): 3.2 MiB.
pub const MAX_REMOTE_BUCKETS: u32 = 32_768;

/// The bucket of one remote address under one `--per-remote` rule in one direction. IPv4
/// addresses are stored IPv4-mapped, like [`TalkerKey`]'s.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RemoteBucketKey {
    /// The remote address (source on ingress, destination on egress), network byte order.
    pub addr: [u8; 16],
    pub rule: u16,
    pub direction: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<RemoteBucketKey>() == 20);

// SAFETY: repr(C) of a byte array, a u16 and two bytes (size asserted above), no implicit
// padding; every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for RemoteBucketKey {}

/// Entries of `REMOTE_BUCKET_STATS`, per CPU.
pub mod remote_bucket_stat {
    /// Buckets the programs inserted, one per new (rule, direction, remote).
    pub const INSERTED: u32 = 0;
    /// Buckets userspace deleted because their rule was removed or lost `--per-remote`. Written
    /// by userspace into CPU 0's copy, so it outlives the daemon with the pins. Evicted =
    /// inserted − forgotten − live.
    pub const FORGOTTEN: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// Entries of `FRAGMENT_STATS`, per CPU.
pub mod fragment_stat {
    /// First fragments whose datagram was new to `FRAGMENTS`: evicted = inserted − live, as for
    /// `TALKER_INSERTS` (userspace never deletes an entry).
    pub const INSERTED: u32 = 0;
    /// Later fragments that found their first fragment and counted under its port.
    pub const PLACED: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// A `WATCHED` cell bit: send an event per packet of this port to `TRACE_EVENTS`.
pub const WATCH_TRACE: u8 = 2;

/// Bytes of the trace ring buffer: a power of two, a multiple of the page size
/// (kernel/bpf/ringbuf.c `ringbuf_map_alloc`): about 7,000 events of 64 bytes, each behind the
/// kernel's 8-byte record header.
pub const TRACE_RING_BYTES: u32 = 1 << 19;

/// Verdicts as a trace event names them, and as bits of [`TraceConfig::verdicts`].
pub const VERDICT_PASS: u8 = 0;
pub const VERDICT_DROP: u8 = 1;
pub const VERDICT_WOULD_DROP: u8 = 2;

/// What a trace asks of the program, written by the daemon when a trace starts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceConfig {
    /// Bit `1 << VERDICT_*` set for each verdict to trace.
    pub verdicts: u32,
    /// At most this many events per CPU per second; the rest are counted as lost.
    pub per_cpu_per_second: u32,
}
const _: () = assert!(size_of::<TraceConfig>() == 8);

/// One CPU's events of the current one-second window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceBudget {
    /// `bpf_ktime_get_ns()` at the start of the window.
    pub window_ns: u64,
    pub sent: u64,
}
const _: () = assert!(size_of::<TraceBudget>() == 16);

/// Why a trace event was lost: over the per-second cap, or the ring buffer full (userspace
/// behind).
pub mod trace_lost {
    pub const OVER_RATE: u32 = 0;
    pub const RING_FULL: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// One packet of a traced port, as the hook saw it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub time_ns: u64,
    /// Wire bytes, every segment with its headers.
    pub bytes: u64,
    /// Bytes the rule's bucket holds after the packet (0 without a rule;
    /// [`NO_BUCKET_BYTES`] for a `--per-remote` rule, whose buckets the trace does not read).
    pub bucket_bytes: u64,
    /// The remote address, IPv4-mapped for IPv4 (as in [`TalkerKey`]).
    pub remote: [u8; 16],
    /// The interface slot (the daemon names the slots).
    pub slot: u32,
    pub segments: u32,
    pub local_port: u16,
    pub remote_port: u16,
    /// The rule that governs the packet, [`NO_RULE`] if none.
    pub rule: u16,
    pub direction: u8,
    pub proto: u8,
    /// `VERDICT_*`.
    pub verdict: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(size_of::<TraceEvent>() == 64);

// SAFETY: repr(C) of two u32 (size asserted above), no padding; every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for TraceConfig {}
// SAFETY: repr(C) of two u64 (size asserted above), no padding; every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for TraceBudget {}
// SAFETY: repr(C) of u64s, a byte array, u32s, u16s and bytes with `_pad` filling the tail
// (size asserted above): no implicit padding; every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for TraceEvent {}

/// The level of the program's aya-log lines, in `LOG_LEVEL`: a line is formatted and sent only
/// when its level is at most this. The order of the `log` crate's `LevelFilter`.
pub mod log_level {
    pub const OFF: u32 = 0;
    pub const ERROR: u32 = 1;
    pub const WARN: u32 = 2;
    pub const INFO: u32 = 3;
    pub const DEBUG: u32 = 4;
    pub const TRACE: u32 = 5;
}

/// Token-bucket arithmetic, shared by the classifier (which adds the atomics) and userspace
/// (which computes `fill_ns` and tests the arithmetic on the host).
///
/// Tokens are counted in nanobits: a rate in bits per second times elapsed nanoseconds is a
/// whole number of nanobits, so a refill is one multiplication with no remainder to lose, and no
/// fraction of a byte is lost per packet at any rate.
/// The arithmetic of the pace action ([`ACTION_PACE`]), shared by the program and the host
/// tests.
///
/// A pace rule keeps one clock per direction, in its [`BucketState::stamp_ns`] (the tokens are
/// unused): the time at which the link the rule stands for is free again, on the clock of
/// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC, which `fq` also reads: net/sched/sch_fq.c
/// `fq_enqueue` compares `skb->tstamp` with `ktime_get_ns()`). A packet departs when that link
/// is free, or now if it already is, and occupies it for its transmission time at the rate: the
/// clock moves to departure + transmission. So the departures of a rule's packets are spaced
/// exactly at its rate, whichever CPU sends them, and an idle rule sends its next packet at
/// once: pacing has no burst.
pub mod pace {
    use crate::bucket;

    /// The longest horizon a pace rule may have: `fq`'s own default horizon (10 s,
    /// net/sched/sch_fq.c `fq_init`), beyond which `fq` drops a packet itself.
    pub const MAX_HORIZON_NS: u64 = 10_000_000_000;

    /// Nanoseconds `bytes` occupy a link of `rate_bps` (rounded down: a rule's packets leave up
    /// to 1 ns early each, under 0.1% of the rate while a packet takes at least a microsecond).
    /// `rate_bps` is never 0 here: the program passes a rule without a rate before pacing.
    #[inline(always)]
    pub const fn transmit_ns(bytes: u64, rate_bps: u64) -> u64 {
        if rate_bps == 0 {
            return 0;
        }
        bucket::cost(bytes) / rate_bps
    }

    /// The horizon of a pace rule whose queue is `queue_bytes` at `rate_bps`: the time the queue
    /// takes to drain at the rate, at most [`MAX_HORIZON_NS`].
    pub const fn horizon_ns(queue_bytes: u64, rate_bps: u64) -> u64 {
        if rate_bps == 0 {
            return 0;
        }
        let ns = (queue_bytes as u128 * bucket::NANOBITS_PER_BYTE as u128) / rate_bps as u128;
        if ns < MAX_HORIZON_NS as u128 {
            ns as u64
        } else {
            MAX_HORIZON_NS
        }
    }

    /// A packet's departure on a rule whose clock reads `clock` at `now`: `Some((departure,
    /// next clock))`, or `None` when it would wait beyond `horizon_ns` (and is dropped, leaving
    /// the clock as it was).
    #[inline(always)]
    pub const fn schedule(
        clock: u64,
        now: u64,
        horizon_ns: u64,
        transmit_ns: u64,
    ) -> Option<(u64, u64)> {
        let departure = if clock > now { clock } else { now };
        if departure - now > horizon_ns {
            return None;
        }
        Some((departure, departure + transmit_ns))
    }

    /// The bytes scheduled but not yet departed on a rule whose clock reads `clock` at `now`:
    /// the wait ahead of a new packet, at the rate.
    pub const fn backlog_bytes(clock: u64, now: u64, rate_bps: u64) -> u64 {
        if clock <= now {
            return 0;
        }
        ((clock - now) as u128 * rate_bps as u128 / bucket::NANOBITS_PER_BYTE as u128) as u64
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn departures_are_spaced_at_the_rate_and_an_idle_rule_sends_at_once() {
            // 1,250 bytes at 10 Mbit/s take 1 ms.
            let transmit = transmit_ns(1_250, 10_000_000);
            assert_eq!(transmit, 1_000_000);
            let (first, clock) = schedule(0, 5_000, 10_000_000, transmit).unwrap();
            assert_eq!((first, clock), (5_000, 1_005_000));
            let (second, clock) = schedule(clock, 5_100, 10_000_000, transmit).unwrap();
            assert_eq!((second, clock), (1_005_000, 2_005_000));
            // Idle past the clock: the next departs now, no credit for the idle time.
            assert_eq!(
                schedule(clock, 9_000_000, 10_000_000, transmit),
                Some((9_000_000, 10_000_000))
            );
        }

        #[test]
        fn a_packet_beyond_the_horizon_is_refused_and_the_clock_stays() {
            let horizon = 3_000_000;
            assert_eq!(
                schedule(3_000_000, 0, horizon, 1),
                Some((3_000_000, 3_000_001))
            );
            assert_eq!(schedule(3_000_001, 0, horizon, 1), None);
        }

        #[test]
        fn the_horizon_is_the_queue_drained_at_the_rate_and_at_most_fq_s() {
            assert_eq!(horizon_ns(125_000, 10_000_000), 100_000_000);
            assert_eq!(horizon_ns(1 << 30, 1_000), MAX_HORIZON_NS);
            assert_eq!(backlog_bytes(100_000_000, 0, 10_000_000), 125_000);
            assert_eq!(backlog_bytes(5, 9, 10_000_000), 0);
        }
    }
}

pub mod bucket {
    pub const NANOBITS_PER_BYTE: u64 = 8_000_000_000;

    /// The largest burst a rule may have. Tokens briefly exceed the burst by the credits of the
    /// packets in flight (see [`BucketState::tokens`](crate::BucketState::tokens)); elapsed time
    /// is credited once, so those add up to about one more burst, and 2 × 1 GiB × 8e9 = 1.7e19
    /// nanobits still fits a `u64` (1.8e19).
    pub const MAX_BURST_BYTES: u64 = 1 << 30;
    /// The largest rate a rule may have, 1 Tbit/s: refills stay far below `u64::MAX`.
    pub const MAX_RATE_BPS: u64 = 1_000_000_000_000;

    /// Packets are charged at most this many bytes: more than any burst, so a capped packet still
    /// never conforms, and small enough that its cost fits a `u64`.
    pub const COST_CAP_BYTES: u64 = 2 * MAX_BURST_BYTES;

    /// The nanobits a packet of `bytes` wire bytes costs. (Capped rather than `saturating_mul`:
    /// that lowers to a 128-bit multiply, which the BPF backend cannot return.)
    #[inline(always)]
    pub const fn cost(bytes: u64) -> u64 {
        let bytes = if bytes < COST_CAP_BYTES {
            bytes
        } else {
            COST_CAP_BYTES
        };
        bytes * NANOBITS_PER_BYTE
    }

    /// Nanoseconds for `rate_bps` to fill `burst_nanobits`, rounded up; 0 for a zero rate.
    pub const fn fill_ns(burst_nanobits: u64, rate_bps: u64) -> u64 {
        if rate_bps == 0 {
            return 0;
        }
        burst_nanobits.div_ceil(rate_bps)
    }

    /// The fewest kernel ticks a rule's fill time (burst / rate) must span for its buckets to
    /// use the coarse clock. See [`coarse_clock_suffices`].
    pub const COARSE_CLOCK_MIN_TICKS: u64 = 20;

    /// Whether a bucket that fills in `fill_ns` may read the coarse clock, on a kernel whose
    /// tick (`clock_getres(CLOCK_MONOTONIC_COARSE)`) is `tick_ns` (0: unknown, so no).
    ///
    /// What it saves: `bpf_ktime_get_ns()` reads the TSC behind a sequence count (about 30 ns a
    /// packet on the build machine, a quarter of a limited packet's cost), and since the precise
    /// clock has moved at every packet, every packet also claims a refill (a compare-and-swap
    /// and an atomic add on the shared bucket). The coarse clock is the last tick's time, read
    /// without the TSC, and it moves once a tick, so only the first packet of a tick refills.
    ///
    /// What it costs: the coarse clock lags the precise one by less than a tick and never runs
    /// ahead of it, so a bucket is credited the same time, up to a tick later: never more than
    /// `rate × time + burst` passes, and at most a tick's worth of rate arrives late. With the
    /// fill time at least 20 ticks, that is at most 5% of the burst (the default burst, 300 ms
    /// of the rate, is 75 ticks at Debian's 250 Hz, 30 at 100 Hz). A rule with a shorter fill
    /// time (a high rate with a small `--burst`) keeps the precise clock: a tick's worth of
    /// rate would be a large part of its bucket, or more than it holds.
    #[inline(always)]
    pub const fn coarse_clock_suffices(fill_ns: u64, tick_ns: u64) -> bool {
        tick_ns > 0 && fill_ns / COARSE_CLOCK_MIN_TICKS >= tick_ns
    }

    /// Nanobits credited for `elapsed_ns`. Elapsed time beyond `fill_ns` is worth no more than a
    /// full bucket, so it is clamped first: after a long idle time (or a first packet, whose
    /// stamp is 0) the product is at most `burst + rate` (as `fill_ns` comes from [`fill_ns`]),
    /// far from overflowing for any burst and rate within the maxima above.
    #[inline(always)]
    pub const fn refill(elapsed_ns: u64, fill_ns: u64, rate_bps: u64) -> u64 {
        let elapsed = if elapsed_ns < fill_ns {
            elapsed_ns
        } else {
            fill_ns
        };
        elapsed * rate_bps
    }

    /// Takes `cost` from a bucket holding `tokens` (clamped to `burst` first): the tokens left,
    /// or `None` when the packet does not conform and must not be charged.
    #[inline(always)]
    pub const fn take(tokens: u64, burst: u64, cost: u64) -> Option<u64> {
        let available = if tokens < burst { tokens } else { burst };
        if available >= cost {
            Some(available - cost)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_counter_indices_are_dense_and_disjoint() {
        assert_eq!(port_counter_index(0, DIR_INGRESS, PROTO_TCP, 0), 0);
        assert_eq!(
            port_counter_index(0, DIR_EGRESS, PROTO_UDP, u16::MAX),
            PORT_COUNTERS_PER_IFACE - 1
        );
        assert_eq!(
            port_counter_index(1, DIR_INGRESS, PROTO_TCP, 0),
            PORT_COUNTERS_PER_IFACE
        );
        assert_eq!(
            port_counter_index(MAX_IFACES - 1, DIR_EGRESS, PROTO_UDP, u16::MAX),
            MAX_IFACES * PORT_COUNTERS_PER_IFACE - 1
        );
    }

    #[test]
    fn rule_index_rows_and_buckets_are_dense() {
        assert_eq!(rule_index_row(0, DIR_INGRESS, PROTO_TCP, SIDE_LOCAL), 0);
        assert_eq!(
            rule_index_row(0, DIR_EGRESS, PROTO_UDP, SIDE_REMOTE),
            RULE_INDEX_ROWS_PER_IFACE - 1
        );
        assert_eq!(
            rule_index_row(1, DIR_INGRESS, PROTO_TCP, SIDE_LOCAL),
            RULE_INDEX_ROWS_PER_IFACE
        );
        assert_eq!(
            bucket_index(MAX_RULES - 1, DIR_EGRESS),
            MAX_RULES * DIRECTIONS - 1
        );
    }

    mod bucket_arithmetic {
        use crate::bucket::*;

        const RATE: u64 = 10_000_000; // 10 Mbit/s
        const BURST: u64 = 128 * 1024 * NANOBITS_PER_BYTE;

        #[test]
        fn refill_is_exact_to_the_nanobit() {
            // 1 ns at 10 Mbit/s is 10_000_000 nanobits = 1.25 millibytes: nothing is rounded.
            assert_eq!(refill(1, fill_ns(BURST, RATE), RATE), 10_000_000);
            // A thousand 1 ns refills equal one 1 µs refill.
            let fill = fill_ns(BURST, RATE);
            assert_eq!(
                (0..1000).map(|_| refill(1, fill, RATE)).sum::<u64>(),
                refill(1000, fill, RATE)
            );
        }

        #[test]
        fn refill_after_long_idle_is_clamped_to_one_bucket() {
            let fill = fill_ns(BURST, RATE);
            // 128 KiB at 10 Mbit/s takes 104.8576 ms.
            assert_eq!(fill, 104_857_600);
            assert_eq!(refill(u64::MAX, fill, RATE), fill * RATE);
            assert!(refill(u64::MAX, fill, RATE) >= BURST);
            assert!(refill(u64::MAX, fill, RATE) < BURST + RATE);
        }

        #[test]
        fn the_coarse_clock_needs_a_fill_time_of_twenty_ticks() {
            const TICK_250_HZ: u64 = 4_000_000;
            // The default burst, 300 ms of the rate: 75 ticks at 250 Hz, 30 at 100 Hz.
            assert!(coarse_clock_suffices(300_000_000, TICK_250_HZ));
            assert!(coarse_clock_suffices(300_000_000, 10_000_000));
            // Exactly 20 ticks, and a nanosecond less.
            assert!(coarse_clock_suffices(80_000_000, TICK_250_HZ));
            assert!(!coarse_clock_suffices(79_999_999, TICK_250_HZ));
            // The smallest burst (192 KiB) at 10 Gbit/s fills in 157 µs: the precise clock.
            let fill = fill_ns(192 * 1024 * NANOBITS_PER_BYTE, 10_000_000_000);
            assert!(!coarse_clock_suffices(fill, TICK_250_HZ));
            // An unknown tick never selects it.
            assert!(!coarse_clock_suffices(u64::MAX, 0));
        }

        #[test]
        fn fill_time_rounds_up_and_guards_zero_rate() {
            assert_eq!(fill_ns(10, 3), 4);
            assert_eq!(fill_ns(BURST, 0), 0);
        }

        #[test]
        fn largest_burst_and_rate_do_not_overflow() {
            let burst = MAX_BURST_BYTES * NANOBITS_PER_BYTE;
            let fill = fill_ns(burst, MAX_RATE_BPS);
            let most_tokens = burst.checked_add(refill(u64::MAX, fill, MAX_RATE_BPS));
            assert!(most_tokens.is_some());
            let slowest = fill_ns(burst, 1);
            assert!(refill(u64::MAX, slowest, 1) < u64::MAX);
        }

        #[test]
        fn take_charges_conforming_packets_and_leaves_others_uncharged() {
            let full = BURST;
            let packet = cost(1500);
            assert_eq!(take(full, BURST, packet), Some(BURST - packet));
            assert_eq!(take(packet - 1, BURST, packet), None);
            assert_eq!(take(packet, BURST, packet), Some(0));
        }

        #[test]
        fn oversized_packets_cost_more_than_any_burst_without_overflow() {
            assert_eq!(cost(u64::MAX), COST_CAP_BYTES * NANOBITS_PER_BYTE);
            let burst = MAX_BURST_BYTES * NANOBITS_PER_BYTE;
            assert_eq!(take(2 * burst, burst, cost(u64::MAX)), None);
        }

        #[test]
        fn take_clamps_an_overfull_bucket_to_the_burst() {
            assert_eq!(take(2 * BURST, BURST, 0), Some(BURST));
            assert_eq!(take(2 * BURST, BURST, BURST + 1), None);
        }

        #[test]
        fn burst_then_refill_passes_the_configured_rate() {
            // Offered 1500-byte packets back to back every 100 µs (120 Mbit/s) for one second
            // against 10 Mbit/s: what passes is one burst plus one second of rate, to a packet.
            let fill = fill_ns(BURST, RATE);
            let (mut tokens, mut passed) = (refill(u64::MAX, fill, RATE), 0u64);
            for _ in 0..10_000 {
                tokens += refill(100_000, fill, RATE);
                if let Some(left) = take(tokens, BURST, cost(1500)) {
                    tokens = left;
                    passed += 1500;
                }
            }
            let expected = 128 * 1024 + RATE / 8;
            assert!(passed.abs_diff(expected) <= 1500, "{passed} vs {expected}");
        }
    }

    #[test]
    fn unclassified_indices_cover_the_map_exactly() {
        assert_eq!(unclassified_index(0, DIR_INGRESS, 0), 0);
        assert_eq!(
            unclassified_index(MAX_IFACES - 1, DIR_EGRESS, reason::COUNT - 1),
            UNCLASSIFIED_ENTRIES - 1
        );
    }
}
