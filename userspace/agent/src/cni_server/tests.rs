use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use ferroplane_cni::proto::PROTO_VERSION;
use ferroplane_cni::{code, AgentRequest, AgentResponse, Command};
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;

use super::server::MAX_REQUEST;
use super::*;
use crate::ipam::Owner;
use ipnet::Ipv4Net;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A stand-in for the agent's main loop: DEL finds nothing, keys are empty, ADD fails
/// (no dataplane); every operation it receives is counted in `seen`.
fn stand_in_main_loop(seen: Arc<AtomicUsize>) -> mpsc::Sender<PodOp> {
    let (tx, mut rx) = mpsc::channel(4);
    tokio::spawn(async move {
        while let Some(op) = rx.recv().await {
            seen.fetch_add(1, Ordering::SeqCst);
            match op {
                PodOp::Del { reply, .. } => {
                    let _ = reply.send(Ok(false));
                }
                PodOp::Keys { reply } => {
                    let _ = reply.send(Vec::new());
                }
                PodOp::Get { reply, .. } => {
                    let _ = reply.send(None);
                }
                PodOp::Add { reply, .. } => {
                    let _ = reply.send(Err("no dataplane in this test".into()));
                }
            }
        }
    });
    tx
}

#[test]
fn attachment_keys_are_stable() {
    let ip: Ipv4Addr = "10.0.0.2".parse().unwrap();
    let a = attachment_pod("abc123", "eth0", "/var/run/netns/x", ip);
    assert_eq!(a.key(), "cni/abc123/eth0");
    let b = attachment_pod("abc123", "eth0", "", Ipv4Addr::UNSPECIFIED);
    // DEL without netns or address finds the same veth.
    assert_eq!(
        crate::netlink::host_ifname(&a.namespace, &a.name),
        crate::netlink::host_ifname(&b.namespace, &b.name)
    );
    assert_ne!(
        crate::netlink::host_ifname(&a.namespace, &a.name),
        crate::netlink::host_ifname("cni", "abc123/eth1")
    );
}

/// The socket under held, slow and oversized clients: a STATUS still answers at once,
/// at most `max` connections stay open, idle ones are closed after the read timeout.
#[tokio::test]
async fn socket_survives_held_slow_and_oversized_clients() {
    use tokio::io::AsyncWriteExt;
    let dir = std::env::temp_dir().join(format!("fp-cni-held-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let pool: Ipv4Net = "10.3.0.0/29".parse().unwrap();
    let ipam = Arc::new(Ipam::open(dir.join("ipam"), pool).unwrap());
    let (tx, mut rx) = mpsc::channel(4);
    tokio::spawn(async move {
        while let Some(op) = rx.recv().await {
            if let PodOp::Keys { reply } = op {
                let _ = reply.send(Vec::new());
            }
        }
    });
    let sock = dir.join("cni.sock");
    let server = CniServer::bind_with(
        &sock,
        CniContext {
            ipam,
            ops: tx,
            services: Default::default(),
        },
        8,
        Duration::from_millis(500),
    )
    .unwrap();
    let status = |sock: PathBuf| async move {
        let t0 = std::time::Instant::now();
        let mut s = UnixStream::connect(&sock).await.unwrap();
        let req = serde_json::to_string(&AgentRequest {
            proto: PROTO_VERSION,
            command: Command::Status,
            network: "fp".into(),
            container_id: String::new(),
            ifname: String::new(),
            netns: String::new(),
            pod_namespace: None,
            pod_name: None,
            dns: Default::default(),
            expect_ip: None,
            valid_attachments: Vec::new(),
            port_mappings: Vec::new(),
        })
        .unwrap();
        s.write_all(format!("{req}\n").as_bytes()).await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out))
            .await
            .unwrap()
            .unwrap();
        (out, t0.elapsed())
    };
    // 40 held connections (5 times the limit) and one that sent half a request.
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(UnixStream::connect(&sock).await.unwrap());
    }
    let mut slow = UnixStream::connect(&sock).await.unwrap();
    slow.write_all(b"{\"proto\":").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (out, took) = status(sock.clone()).await;
    assert!(out.contains("\"status\":\"ok\""), "{out}");
    assert!(took < Duration::from_millis(500), "{took:?}");
    // The oldest held connections were closed to make room.
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(1), held[0].read(&mut buf))
        .await
        .expect("closed at once")
        .unwrap();
    assert_eq!(n, 0);
    // An oversized request is answered with a decoding error, not read whole.
    let mut big = UnixStream::connect(&sock).await.unwrap();
    let chunk = vec![b'a'; 64 << 10];
    let mut sent = 0;
    while sent < 4 * MAX_REQUEST {
        match tokio::time::timeout(Duration::from_secs(1), big.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            _ => break,
        }
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), big.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("bad request"), "{out}");
    // An idle connection is closed after the read timeout.
    let t0 = std::time::Instant::now();
    let mut idle = UnixStream::connect(&sock).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(3), idle.read(&mut buf))
        .await
        .expect("closed after the read timeout")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        t0.elapsed() >= Duration::from_millis(450),
        "{:?}",
        t0.elapsed()
    );
    drop(server);
    let _ = fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn status_and_del_without_plumbing() {
    let dir = std::env::temp_dir().join(format!("fp-cni-srv-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let pool: Ipv4Net = "10.3.0.0/30".parse().unwrap();
    let ipam = Arc::new(Ipam::open(&dir, pool).unwrap());
    let tx = stand_in_main_loop(Arc::new(AtomicUsize::new(0)));
    let ctx = CniContext {
        ipam: ipam.clone(),
        ops: tx,
        services: Default::default(),
    };
    let req = |command, cid: &str| AgentRequest {
        proto: PROTO_VERSION,
        command,
        network: "fp".into(),
        container_id: cid.into(),
        ifname: "eth0".into(),
        netns: String::new(),
        pod_namespace: None,
        pod_name: None,
        dns: Default::default(),
        expect_ip: None,
        valid_attachments: Vec::new(),
        port_mappings: Vec::new(),
    };
    assert_eq!(
        handle(&ctx, req(Command::Status, "")).await,
        AgentResponse::Ok { result: None }
    );
    // DEL of an unknown container succeeds.
    assert_eq!(
        handle(&ctx, req(Command::Del, "nope")).await,
        AgentResponse::Ok { result: None }
    );
    // ADD into a namespace that does not exist: code 3.
    let mut add = req(Command::Add, "c1");
    add.netns = "/nonexistent/netns".into();
    match handle(&ctx, add).await {
        AgentResponse::Error(e) => assert_eq!(e.code, code::UNKNOWN_CONTAINER),
        other => panic!("{other:?}"),
    }
    let owner = Owner {
        network: "fp".into(),
        ..Owner::default()
    };
    ipam.reserve("a", "eth0", &owner).unwrap();
    ipam.reserve("b", "eth0", &owner).unwrap();
    match handle(&ctx, req(Command::Status, "")).await {
        AgentResponse::Error(e) => assert_eq!(e.code, code::LIMITED_IPAM),
        other => panic!("{other:?}"),
    }
    // GC with only "a" valid frees "b".
    let mut g = req(Command::Gc, "");
    g.valid_attachments = vec![ferroplane_cni::Attachment {
        container_id: "a".into(),
        ifname: "eth0".into(),
    }];
    assert_eq!(handle(&ctx, g).await, AgentResponse::Ok { result: None });
    assert_eq!(ipam.free().unwrap(), 1);
    assert!(ipam.get("a", "eth0").unwrap().is_some());
    let _ = fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn bad_netns_refused_before_anything_is_reserved() {
    let dir = std::env::temp_dir().join(format!("fp-cni-netns-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let pool: Ipv4Net = "10.3.0.0/29".parse().unwrap();
    let ipam = Arc::new(Ipam::open(dir.join("ipam"), pool).unwrap());
    let free = ipam.free().unwrap();
    let regular = dir.join("regular-file");
    fs::write(&regular, b"").unwrap();
    // Every operation that reaches the main loop is counted: none may.
    let ops = Arc::new(AtomicUsize::new(0));
    let tx = stand_in_main_loop(ops.clone());
    let ctx = CniContext {
        ipam: ipam.clone(),
        ops: tx,
        services: Default::default(),
    };
    let req = |command, netns: &str| AgentRequest {
        proto: PROTO_VERSION,
        command,
        network: "fp".into(),
        container_id: "c1".into(),
        ifname: "eth0".into(),
        netns: netns.into(),
        pod_namespace: None,
        pod_name: None,
        dns: Default::default(),
        expect_ip: Some("10.3.0.1".into()),
        valid_attachments: Vec::new(),
        port_mappings: Vec::new(),
    };
    let refused = |r: AgentResponse, needle: &str| match r {
        AgentResponse::Error(e) => {
            assert_eq!(e.code, code::INVALID_ENV, "{e:?}");
            assert!(e.msg.contains(needle), "{needle:?} not in {e:?}");
        }
        other => panic!("{other:?}"),
    };
    // The agent's own namespace (the node's), under two paths.
    let own = format!("/proc/{}/ns/net", std::process::id());
    for netns in ["/proc/self/ns/net", own.as_str()] {
        for cmd in [Command::Add, Command::Check, Command::Del] {
            refused(handle(&ctx, req(cmd, netns)).await, "own network namespace");
        }
    }
    // Not a network namespace: ADD and CHECK refused.
    let regular = regular.display().to_string();
    for netns in [regular.as_str(), "/proc/self/ns/mnt"] {
        for cmd in [Command::Add, Command::Check] {
            refused(
                handle(&ctx, req(cmd, netns)).await,
                "not a network namespace",
            );
        }
    }
    assert_eq!(ipam.free().unwrap(), free, "an address was reserved");
    assert!(ipam.records().unwrap().is_empty());
    assert_eq!(ops.load(Ordering::SeqCst), 0, "the main loop was asked");
    // DEL of a namespace that is no longer one cleans up the host side as usual.
    assert_eq!(
        handle(&ctx, req(Command::Del, &regular)).await,
        AgentResponse::Ok { result: None }
    );
    assert_eq!(ops.load(Ordering::SeqCst), 1);
    let _ = fs::remove_dir_all(&dir);
}
