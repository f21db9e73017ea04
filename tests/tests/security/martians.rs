//! Martian destinations: what a pod sends to limited broadcast, 0.0.0.0/8, loopback or
//! multicast never leaves the uplink (tcpdump on the router's side of it) and is counted:
//! `martian-destination` when sent to the gateway's MAC (a forged frame), `l2-multicast`
//! when sent to the broadcast or multicast MAC a kernel would use.
//!
//! UDP ports of this module: 47650-47659.

use std::net::Ipv4Addr;
use std::time::Duration;

use ferroplane_e2e::require_root;
use ferroplane_e2e::topology::Topology;

use super::spoofing::{
    error_count, gateway_mac, node_with, received, send_forged, udp_receiver, Capture, Forged,
};

#[test]
fn martian_destinations_from_a_pod_never_leave_the_uplink() {
    if !require_root() {
        return;
    }
    let (topo, agent) = node_with(1, None);
    let pod0 = &topo.pods[0];
    let port = 47650;
    let gw = gateway_mac(&agent, "pod0");
    let own_mac = pod0.ns.mac(Topology::POD_IF).expect("pod0 mac");
    let at_router = udp_receiver(&topo.router, Ipv4Addr::UNSPECIFIED, port);
    let pcap = topo.dir().join("router.pcap");
    let cap = Capture::start(
        &topo.router,
        Topology::ROUTER_IF,
        &format!("udp and dst port {port}"),
        &pcap,
    );
    let frame = |dst_mac: &str, dst: Ipv4Addr, payload: &str| Forged {
        src_mac: own_mac.clone(),
        dst_mac: dst_mac.to_string(),
        src: pod0.ip,
        dst,
        dport: port,
        payload: payload.to_string(),
    };
    // The capture and the path work: a datagram to the router leaves.
    send_forged(
        &pod0.ns,
        Topology::POD_IF,
        &[frame(&gw, Topology::ROUTER_IP, "legit")],
    );
    let quiet = Duration::from_millis(500);
    assert_eq!(received(&at_router, quiet).len(), 1, "legit datagram");

    let martians = [
        Ipv4Addr::BROADCAST,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::LOCALHOST,
        Ipv4Addr::new(224, 0, 0, 1),
        Ipv4Addr::new(239, 1, 1, 1),
    ];
    let martian_before = error_count(&agent, "ip4-input", "martian-destination");
    let l2_before = error_count(&agent, "ethernet-input", "l2-multicast");
    // To the gateway's MAC: routed by a dataplane that does not check destinations.
    let forged: Vec<Forged> = martians
        .iter()
        .map(|dst| frame(&gw, *dst, &format!("to-{dst}")))
        .collect();
    // As a kernel sends them: to the broadcast / multicast MAC.
    let l2 = [
        frame("ff:ff:ff:ff:ff:ff", Ipv4Addr::BROADCAST, "bcast-mac"),
        frame(
            "01:00:5e:00:00:01",
            Ipv4Addr::new(224, 0, 0, 1),
            "mcast-mac-1",
        ),
        frame(
            "01:00:5e:01:01:01",
            Ipv4Addr::new(239, 1, 1, 1),
            "mcast-mac-2",
        ),
    ];
    send_forged(&pod0.ns, Topology::POD_IF, &forged);
    send_forged(&pod0.ns, Topology::POD_IF, &l2);
    let got = received(&at_router, quiet);
    assert!(got.is_empty(), "the router received: {got:?}");
    let wire = cap.finish(&topo.router);
    assert_eq!(
        wire.len(),
        1,
        "only the legit datagram on the router's wire: {wire:#?}"
    );
    assert!(
        wire[0].contains(&format!("> {}.{port}", Topology::ROUTER_IP)),
        "{wire:#?}"
    );
    assert_eq!(
        error_count(&agent, "ip4-input", "martian-destination") - martian_before,
        martians.len() as u64
    );
    assert_eq!(
        error_count(&agent, "ethernet-input", "l2-multicast") - l2_before,
        l2.len() as u64
    );
}
