//! XDP attach/detach on devices inside a network namespace this test creates
//! (root only). The namespace is deleted on drop, also when a check panics.

mod common;

use common::*;
use ferroplane_bpf::{
    xdp_action, AttachMode, AttachedMode, Dataplane, Error, FpDropReason, FpIface, FpSteerKind,
    XdpProg,
};
use std::net::Ipv4Addr;

/// `ip -j link show dev <dev>` in `ns`: (ifindex, XDP mode and program name if any).
/// iproute2 reports mode 1 for native (driver) and 2 for skb (generic).
fn link_xdp(ns: &Netns, dev: &str) -> (u32, Option<(u64, String)>) {
    let out = ns.ip(&["-j", "link", "show", "dev", dev]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let link = &v[0];
    let ifindex = u32::try_from(link["ifindex"].as_u64().unwrap()).unwrap();
    let xdp = link.get("xdp").map(|x| {
        (
            x["mode"].as_u64().unwrap(),
            x["prog"]["name"].as_str().unwrap().to_string(),
        )
    });
    (ifindex, xdp)
}

const NATIVE: u64 = 1;
const SKB: u64 = 2;

#[test]
fn attach_native_skb_auto_and_detach() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("attach");
    ns.ip(&[
        "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
    ]);
    ns.ip(&["tuntap", "add", "mode", "tun", "name", "tun0"]);
    for dev in ["veth0", "veth1", "tun0"] {
        ns.ip(&["link", "set", dev, "up"]);
    }

    ns.enter(|| {
        let mut dp = Dataplane::load(None).unwrap();
        assert_eq!(link_xdp(&ns, "veth0").1, None);

        // Native on veth0, skb on veth1.
        assert_eq!(
            dp.attach(XdpProg::Uplink, "veth0", AttachMode::Native)
                .unwrap(),
            AttachedMode::Native
        );
        assert_eq!(
            link_xdp(&ns, "veth0").1,
            Some((NATIVE, "xdp_uplink".to_string()))
        );
        assert_eq!(
            dp.attach(XdpProg::Pod, "veth1", AttachMode::Skb).unwrap(),
            AttachedMode::Skb
        );
        assert_eq!(link_xdp(&ns, "veth1").1, Some((SKB, "xdp_pod".to_string())));
        assert_eq!(
            dp.attached(),
            vec![
                ("veth0".to_string(), XdpProg::Uplink, AttachedMode::Native),
                ("veth1".to_string(), XdpProg::Pod, AttachedMode::Skb),
            ]
        );
        assert!(matches!(
            dp.attach(XdpProg::Pod, "veth0", AttachMode::Auto),
            Err(Error::AlreadyAttached(name)) if name == "veth0"
        ));

        // Detach removes the program from the device.
        dp.detach("veth0").unwrap();
        assert_eq!(link_xdp(&ns, "veth0").1, None);
        assert_eq!(link_xdp(&ns, "veth1").1, Some((SKB, "xdp_pod".to_string())));
        dp.detach("veth1").unwrap();
        assert_eq!(link_xdp(&ns, "veth1").1, None);
        assert!(matches!(dp.detach("veth1"), Err(Error::NotAttached(_))));

        // Auto: native where the driver supports it (veth), skb otherwise (tun).
        assert_eq!(
            dp.attach(XdpProg::Pod, "veth0", AttachMode::Auto).unwrap(),
            AttachedMode::Native
        );
        assert_eq!(
            link_xdp(&ns, "veth0").1,
            Some((NATIVE, "xdp_pod".to_string()))
        );
        assert!(matches!(
            dp.attach(XdpProg::Uplink, "tun0", AttachMode::Native),
            Err(Error::Attach {
                mode: AttachedMode::Native,
                ..
            })
        ));
        assert_eq!(
            dp.attach(XdpProg::Uplink, "tun0", AttachMode::Auto)
                .unwrap(),
            AttachedMode::Skb
        );
        assert_eq!(
            link_xdp(&ns, "tun0").1,
            Some((SKB, "xdp_uplink".to_string()))
        );

        assert!(dp
            .attach(XdpProg::Uplink, "nosuchdev0", AttachMode::Auto)
            .is_err());

        // Dropping the Dataplane releases the links.
        drop(dp);
        assert_eq!(link_xdp(&ns, "veth0").1, None);
        assert_eq!(link_xdp(&ns, "tun0").1, None);
    });
}

/// The programs redirect to `ifaces[ifindex].xsk_slot + rx_queue_index`:
/// checked with test runs "received" on queue 3 of a 4-queue veth.
#[test]
fn redirect_slot_is_base_plus_rx_queue() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("queues");
    ns.ip(&[
        "link",
        "add",
        "veth0",
        "numrxqueues",
        "4",
        "numtxqueues",
        "4",
        "type",
        "veth",
        "peer",
        "name",
        "veth1",
    ]);
    let (ifindex, _) = link_xdp(&ns, "veth0");
    let frame = ipv4_frame(
        Ipv4Addr::new(192, 168, 100, 7),
        Ipv4Addr::new(10, 244, 1, 10),
    );

    ns.enter(|| {
        let mut dp = Dataplane::load(None).unwrap();
        dp.add_steer4(Ipv4Addr::new(10, 244, 1, 0), 24, FpSteerKind::PodCidr)
            .unwrap();
        let sock = XskSocket::new().unwrap();
        dp.set_xsk(13, sock.raw_fd()).unwrap();
        let run = |dp: &Dataplane, queue| {
            dp.prog_test_run_on(XdpProg::Uplink, &frame, ifindex, queue)
                .unwrap()
                .0
        };

        // Base 10, 4 queues: queue 3 -> slot 13 (socket), queue 2 -> slot 12 (none).
        dp.set_iface(ifindex, FpIface::uplink(10).with_queues(4))
            .unwrap();
        assert_eq!(run(&dp, 3), xdp_action::REDIRECT);
        let before = dp.stats().unwrap();
        assert_eq!(run(&dp, 2), xdp_action::DROP, "engine away: fail closed");
        assert_eq!(
            dp.stats()
                .unwrap()
                .since(&before)
                .reason(FpDropReason::NoXsk),
            1
        );

        // Base 10, 3 queues: queue 3 would be slot 13, another interface's: dropped.
        dp.set_iface(ifindex, FpIface::uplink(10).with_queues(3))
            .unwrap();
        let before = dp.stats().unwrap();
        assert_eq!(run(&dp, 3), xdp_action::DROP, "never a neighbour's slot");
        let d = dp.stats().unwrap().since(&before);
        assert_eq!(d.reason(FpDropReason::XskQueueRange), 1);
        assert_eq!(run(&dp, 2), xdp_action::DROP, "slot 12 has no socket");

        // Base 253: queue 3 -> slot 256, outside the map.
        dp.set_iface(ifindex, FpIface::uplink(253).with_queues(4))
            .unwrap();
        let before = dp.stats().unwrap();
        assert_eq!(run(&dp, 3), xdp_action::DROP);
        let d = dp.stats().unwrap().since(&before);
        assert_eq!(d.reason(FpDropReason::XskSlotRange), 1);

        // A queue the device does not have is refused by the kernel.
        assert!(dp
            .prog_test_run_on(XdpProg::Uplink, &frame, ifindex, 4)
            .is_err());
    });
}

/// `--on-exit keep`: with `keep_attached` the programs stay on their interfaces after the
/// `Dataplane` is gone (the agent exited or died); the next load adopts them in place (the
/// interface never runs without a program); `detach` still removes them and their pins.
#[test]
fn kept_attachments_survive_the_loader_and_are_adopted() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("keep");
    ns.ip(&[
        "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
    ]);
    for dev in ["veth0", "veth1"] {
        ns.ip(&["link", "set", dev, "up"]);
    }
    let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/fp-bpf-keep-{}", std::process::id()));
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for d in [self.0.join(ferroplane_bpf::LINKS_DIR), self.0.clone()] {
                if let Ok(rd) = std::fs::read_dir(&d) {
                    for e in rd.flatten() {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
                let _ = std::fs::remove_dir(&d);
            }
        }
    }
    let _cleanup = Cleanup(dir.clone());
    let links = dir.join(ferroplane_bpf::LINKS_DIR);

    ns.enter(|| {
        // Attached before and after keep_attached: both are kept.
        let mut dp = Dataplane::load(Some(&dir)).unwrap();
        dp.attach(XdpProg::Uplink, "veth0", AttachMode::Native)
            .unwrap();
        dp.keep_attached().unwrap();
        dp.attach(XdpProg::Pod, "veth1", AttachMode::Skb).unwrap();
        let (i0, _) = link_xdp(&ns, "veth0");
        let (i1, _) = link_xdp(&ns, "veth1");
        assert!(links.join(format!("{i0}_native")).exists());
        assert!(links.join(format!("{i1}_skb")).exists());
        drop(dp);
        assert_eq!(
            link_xdp(&ns, "veth0").1,
            Some((NATIVE, "xdp_uplink".to_string())),
            "kept after the loader is gone"
        );
        assert_eq!(link_xdp(&ns, "veth1").1, Some((SKB, "xdp_pod".to_string())));

        // The next loader adopts them (Auto would otherwise pick native for veth1).
        let mut dp = Dataplane::load(Some(&dir)).unwrap();
        assert_eq!(
            dp.attach(XdpProg::Uplink, "veth0", AttachMode::Auto)
                .unwrap(),
            AttachedMode::Native
        );
        assert_eq!(
            dp.attach(XdpProg::Pod, "veth1", AttachMode::Auto).unwrap(),
            AttachedMode::Skb
        );
        assert!(
            !links.join(format!("{i0}_native")).exists(),
            "adopted, not kept"
        );
        // Not kept this time: gone with the loader, except what detach already removed.
        dp.detach("veth1").unwrap();
        assert_eq!(link_xdp(&ns, "veth1").1, None);
        drop(dp);
        assert_eq!(link_xdp(&ns, "veth0").1, None);

        // A pin of an interface that went away is released.
        let mut dp = Dataplane::load(Some(&dir)).unwrap();
        dp.keep_attached().unwrap();
        dp.attach(XdpProg::Pod, "veth1", AttachMode::Skb).unwrap();
        drop(dp);
        ns.ip(&["link", "del", "veth0"]);
        let dp = Dataplane::load(Some(&dir)).unwrap();
        assert_eq!(dp.release_stale_links(), 1);
        assert_eq!(std::fs::read_dir(&links).unwrap().count(), 0);
    });
}
