//! Which interface a packet is counted for: the program finds the interface's slot by the
//! packet's ifindex, in an array for an ifindex below `DIRECT_IFINDEXES` and in a hash above it.
//! Both paths are driven here under BPF_PROG_TEST_RUN, whose `__sk_buff.ifindex` in the context
//! names the device the test packet arrives on (net/bpf/test_run.c `bpf_prog_test_run_skb`: any
//! ifindex above 1 is looked up in the caller's namespace).

mod common;

use aya::maps::{Array, Map, MapData};
use common::netns::{InNamespace as _, namespace_named};
use common::packet::*;
use common::test_run;
use shaper::{Classifier, Direction, datapath::pins::PinDir};
use shaper_common::{DIRECT_IFINDEXES, PROTO_UDP, maps};

/// Above `DIRECT_IFINDEXES`: the interface the hash serves.
const LARGE_IFINDEX: u32 = 5000;
const _: () = assert!(LARGE_IFINDEX >= DIRECT_IFINDEXES);
const PORT: u16 = 7400;

/// `struct __sk_buff` up to and including `ifindex` (offset 40, include/uapi/linux/bpf.h); the
/// kernel takes a shorter context and zeroes the rest.
fn context_on(ifindex: u32) -> Vec<u8> {
    let mut ctx = vec![0u8; 44];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

fn counted(classifier: &Classifier, slot: u32) -> u64 {
    classifier
        .port_counter(slot, Direction::Ingress, PROTO_UDP, PORT)
        .packets
}

#[test]
fn a_packet_is_counted_for_its_interface_whether_its_ifindex_is_small_or_large() {
    common::root_or_skip!();
    let ns = namespace_named("iface_slots");
    // veth rather than dummy: the build machine's kernel has no dummy driver. The peers stay in
    // the namespace and go with it.
    ns.ip_ok(&[
        "link",
        "add",
        "small",
        "type",
        "veth",
        "peer",
        "name",
        "small-peer",
    ]);
    let large = LARGE_IFINDEX.to_string();
    ns.ip_ok(&[
        "link",
        "add",
        "large",
        "index",
        &large,
        "type",
        "veth",
        "peer",
        "name",
        "large-peer",
    ]);
    ns.within(|| {
        let small = shaper::datapath::interfaces::index("small").expect("index of small");
        assert!(small < DIRECT_IFINDEXES, "a new namespace numbers from 1");
        let mut classifier = Classifier::load(2).expect("load and verify the classifier");
        let small_slot = classifier.register("small").expect("register small");
        let large_slot = classifier.register("large").expect("register large");
        let frame = ethernet(
            &[],
            ETH_P_IP,
            &ipv4(IPPROTO_UDP, &udp(40000, PORT, &[0; 18])),
        );
        let mut send = |ifindex: u32, times: usize| {
            for _ in 0..times {
                let ctx = context_on(ifindex);
                let verdict =
                    test_run::run(&mut classifier, Direction::Ingress, &frame, Some(&ctx));
                assert_eq!(verdict, test_run::PASS);
            }
        };
        send(small, 3);
        send(LARGE_IFINDEX, 5);
        // Loopback (ifindex 1) was never registered: its packets pass uncounted.
        send(1, 7);
        assert_eq!(
            (
                counted(&classifier, small_slot),
                counted(&classifier, large_slot)
            ),
            (3, 5),
            "each interface's packets land in its own slot, and loopback's in none"
        );
    });
}

/// Removes a test's pins, and this process's directory above them, when it ends, passed or
/// failed.
struct RemovePins(PinDir);

impl Drop for RemovePins {
    fn drop(&mut self) {
        let _ = self.0.remove();
        if let Some(base) = self.0.root().parent() {
            let _ = std::fs::remove_dir(base);
        }
    }
}

#[test]
fn an_adopting_classifier_rewrites_the_direct_slots_from_the_pinned_hash() {
    common::root_or_skip!();
    let ns = namespace_named("iface_slots_adopt");
    ns.ip_ok(&[
        "link", "add", "kept", "type", "veth", "peer", "name", "stale",
    ]);
    ns.within(|| {
        let pins = RemovePins(
            PinDir::for_current_netns(&common::daemon::pin_base()).expect("the pin directory"),
        );
        let kept = shaper::datapath::interfaces::index("kept").expect("index of kept");
        let stale = shaper::datapath::interfaces::index("stale").expect("index of stale");
        {
            let mut first = Classifier::load_pinned(2, &pins.0).expect("load with pins");
            first.register("kept").expect("register kept");
            // Dropped in service, it leaves its pins as a killed daemon would.
            first.mark_serving();
        }
        // What a daemon without the array leaves behind, at worst: the hash holds `kept`, the
        // array does not, and holds an interface the hash no longer has.
        let pinned = MapData::from_pin(pins.0.map(maps::IFACE_SLOT_BY_IFINDEX))
            .expect("open the pinned array");
        let mut direct: Array<MapData, u32> =
            Array::try_from(Map::Array(pinned)).expect("an array of u32");
        direct.set(kept, 0, 0).expect("clear kept");
        direct.set(stale, 2, 0).expect("write a stale entry");

        let mut adopting = Classifier::load_pinned(2, &pins.0).expect("adopt the pins");
        assert_eq!(
            direct.get(&kept, 0).expect("read kept"),
            1,
            "slot 0, written back"
        );
        assert_eq!(direct.get(&stale, 0).expect("read stale"), 0, "cleared");
        let frame = ethernet(
            &[],
            ETH_P_IP,
            &ipv4(IPPROTO_UDP, &udp(40000, PORT, &[0; 18])),
        );
        for ifindex in [kept, stale] {
            let ctx = context_on(ifindex);
            let verdict = test_run::run(&mut adopting, Direction::Ingress, &frame, Some(&ctx));
            assert_eq!(verdict, test_run::PASS);
        }
        assert_eq!(
            (counted(&adopting, 0), counted(&adopting, 1)),
            (1, 0),
            "the adopted interface is counted in its slot, the stale one nowhere"
        );
    });
}
