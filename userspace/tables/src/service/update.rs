//! Changing some services of a [`ServiceTable`] without building the others again.
//!
//! [`ServiceTable::update`] copies the table (its ports are `Arc`s and its maps hold small
//! `Copy` entries, so the copy is cheap next to a build), takes the ports of the replaced
//! services out, puts their new ports in, and builds Maglev tables only for those ports
//! (sharing a replaced port's selection when its backends did not change). The result
//! answers every lookup as [`ServiceTable::build`] over all the definitions would
//! ([`ServiceTable::equivalent`]; the agent's property test checks it); only the port
//! indices differ, which mean nothing outside one table.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::*;

impl ServiceTable {
    /// This table with the ports of the services named in `replaced` (`namespace/name`)
    /// taken out and `defs` put in: the new ports of those services (a replaced service
    /// without new ports is removed). Only the new ports' selections are computed; a
    /// replaced port with the same service, port name and protocol lends its selection
    /// when its eligible backends are the same, and its Maglev size as a lower bound.
    ///
    /// Errors as [`ServiceTable::build`] does (a frontend or NodePort claimed twice, too
    /// many backends); `self` is unchanged then.
    pub fn update(
        &self,
        replaced: &BTreeSet<String>,
        defs: Vec<ServicePortDef>,
    ) -> Result<ServiceTable, ServiceError> {
        let mut t = self.clone();
        // The places of the ports that go, ascending.
        let holes: Vec<u32> = if replaced.is_empty() {
            Vec::new()
        } else {
            t.ports
                .iter()
                .enumerate()
                .filter(|(_, p)| replaced.contains(&p.def.service))
                .map(|(i, _)| i as u32)
                .collect()
        };
        let old: Vec<Arc<ServicePort>> = holes
            .iter()
            .filter_map(|&i| t.ports.get(i as usize).cloned())
            .collect();
        for (&i, p) in holes.iter().zip(&old) {
            t.unclaim(i, &p.def);
        }
        let old_ports: HashMap<(&str, &str, u8), &ServicePort> =
            old.iter().map(|p| (port_id(&p.def), &**p)).collect();
        let mut maker = PortMaker::new(t.max_table_size);
        let mut free = holes.iter().copied();
        for def in defs {
            let old = old_ports.get(&port_id(&def)).copied();
            let port = Arc::new(maker.port(def, old)?);
            match free.next() {
                Some(i) => {
                    t.claim(i, &port.def)?;
                    t.ports[i as usize] = port;
                }
                None => {
                    t.claim(t.ports.len() as u32, &port.def)?;
                    t.ports.push(port);
                }
            }
        }
        // Places left empty take the last ports, so the ports stay one dense vector.
        let mut left: BTreeSet<u32> = free.collect();
        while let Some(&hole) = left.first() {
            let Some(last) = t.ports.len().checked_sub(1) else {
                break;
            };
            let last = last as u32;
            if left.remove(&last) {
                t.ports.pop();
                continue;
            }
            left.remove(&hole);
            if let Some(p) = t.ports.pop() {
                t.repoint(&p.def, last, hole);
                t.ports[hole as usize] = p;
            }
        }
        Ok(t)
    }

    /// Takes out the frontends and the NodePort of `def`, the port at `idx`.
    fn unclaim(&mut self, idx: u32, def: &ServicePortDef) {
        for addr in frontend_addrs(def) {
            let key = FrontendKey {
                addr,
                proto: def.proto,
                port: def.port,
            };
            if self.frontends.get(&key).is_some_and(|f| f.port == idx) {
                self.frontends.remove(&key);
            }
        }
        if let Some(np) = def.node_port {
            if self.node_ports.get(&(def.proto, np)) == Some(&idx) {
                self.node_ports.remove(&(def.proto, np));
            }
        }
    }

    /// The port `def` moved from `from` to `to`: its frontends and NodePort follow.
    fn repoint(&mut self, def: &ServicePortDef, from: u32, to: u32) {
        for addr in frontend_addrs(def) {
            let key = FrontendKey {
                addr,
                proto: def.proto,
                port: def.port,
            };
            if let Some(f) = self.frontends.get_mut(&key).filter(|f| f.port == from) {
                f.port = to;
            }
        }
        if let Some(np) = def.node_port {
            if let Some(p) = self
                .node_ports
                .get_mut(&(def.proto, np))
                .filter(|p| **p == from)
            {
                *p = to;
            }
        }
    }

    /// Whether both tables answer every lookup the same: the same frontends and NodePorts
    /// leading to equal service ports (definition, selections, endpoint counts), the same
    /// ports, node addresses and largest Maglev size, whatever the ports' indices.
    pub fn equivalent(&self, other: &ServiceTable) -> bool {
        let by_id = |t: &ServiceTable| -> BTreeMap<(String, String, u8), Vec<ServicePort>> {
            let mut m: BTreeMap<_, Vec<ServicePort>> = BTreeMap::new();
            for p in &t.ports {
                m.entry((p.def.service.clone(), p.def.port_name.clone(), p.def.proto))
                    .or_default()
                    .push((**p).clone());
            }
            m
        };
        let frontends_match = self.frontends.len() == other.frontends.len()
            && self.frontends.iter().all(|(k, f)| {
                other
                    .frontends
                    .get(k)
                    .is_some_and(|g| f.kind == g.kind && self.port(f.port) == other.port(g.port))
            });
        let node_ports_match = self.node_ports.len() == other.node_ports.len()
            && self.node_ports.iter().all(|(k, &i)| {
                other
                    .node_ports
                    .get(k)
                    .is_some_and(|&j| self.port(i) == other.port(j))
            });
        frontends_match
            && node_ports_match
            && self.node_addrs == other.node_addrs
            && self.max_table_size == other.max_table_size
            && by_id(self) == by_id(other)
    }
}

/// The addresses `def` is reached on (cluster, external, load-balancer IPs).
fn frontend_addrs(def: &ServicePortDef) -> impl Iterator<Item = Ipv4Addr> + '_ {
    def.cluster_ips
        .iter()
        .chain(&def.external_ips)
        .chain(&def.lb_ips)
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(service: &str, vip: [u8; 4], node_port: Option<u16>, backends: &[u8]) -> ServicePortDef {
        ServicePortDef {
            service: service.into(),
            port_name: "p".into(),
            proto: PROTO_TCP,
            port: 80,
            node_port,
            cluster_ips: vec![Ipv4Addr::from(vip)],
            external_ips: vec![],
            lb_ips: vec![],
            backends: backends
                .iter()
                .map(|&b| Backend {
                    addr: Ipv4Addr::new(10, 244, 1, b),
                    port: 8080,
                    local: b % 2 == 0,
                    state: EndpointState::Ready,
                    weight: 1,
                    node: String::new(),
                    target: String::new(),
                })
                .collect(),
            internal_local: false,
            external_local: true,
            affinity_secs: None,
            health_check_node_port: None,
        }
    }

    const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 2);

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn update_matches_a_build_and_fills_holes() {
        let defs: Vec<ServicePortDef> = (0..6u8)
            .map(|i| {
                def(
                    &format!("ns/s{i}"),
                    [10, 96, 0, i],
                    Some(30000 + i as u16),
                    &[i, i + 1],
                )
            })
            .collect();
        let t = ServiceTable::build(defs.clone(), vec![NODE], 251, None).unwrap();
        // s1 and s3 go, s4 changes backends, s9 is new.
        let s4 = def("ns/s4", [10, 96, 0, 4], Some(30004), &[40, 41, 42]);
        let s9 = def("ns/s9", [10, 96, 0, 9], None, &[9]);
        let u = t
            .update(
                &set(&["ns/s1", "ns/s3", "ns/s4", "ns/s9"]),
                vec![s4.clone(), s9.clone()],
            )
            .unwrap();
        let want = vec![defs[0].clone(), defs[2].clone(), s4, defs[5].clone(), s9];
        let full = ServiceTable::build(want, vec![NODE], 251, None).unwrap();
        assert!(u.equivalent(&full));
        assert_eq!(u.len(), 5);
        for (k, f) in u.frontends() {
            let p = u.port(f.port).unwrap();
            assert!(
                p.def.cluster_ips.contains(&k.addr),
                "{k:?} leads to its port"
            );
        }
        assert_eq!(
            u.lookup(NODE, PROTO_TCP, 30005)
                .map(|(i, _)| &u.port(i).unwrap().def.service),
            Some(&"ns/s5".to_string()),
            "the moved port keeps its node port"
        );
        assert_eq!(u.lookup(Ipv4Addr::new(10, 96, 0, 1), PROTO_TCP, 80), None);
        // Unchanged services share their ports, an unchanged selection is reused.
        assert!(Arc::ptr_eq(&t.ports()[0], &u.ports()[0]));
        let s0 = def("ns/s0", [10, 96, 0, 0], Some(30000), &[0, 1]);
        let v = u.update(&set(&["ns/s0"]), vec![s0]).unwrap();
        let p = |t: &ServiceTable| {
            let (i, _) = t
                .lookup(Ipv4Addr::new(10, 96, 0, 0), PROTO_TCP, 80)
                .unwrap();
            t.port(i).unwrap().internal.clone()
        };
        assert!(Arc::ptr_eq(&p(&u), &p(&v)));
    }

    #[test]
    fn update_errors_leave_the_table() {
        let t = ServiceTable::build(
            vec![def("ns/a", [10, 96, 0, 1], Some(30001), &[1])],
            vec![NODE],
            251,
            None,
        )
        .unwrap();
        let clash = def("ns/b", [10, 96, 0, 1], None, &[2]);
        let e = t.update(&set(&["ns/b"]), vec![clash.clone()]).unwrap_err();
        assert!(matches!(e, ServiceError::DuplicateFrontend { .. }), "{e}");
        let np = def("ns/c", [10, 96, 0, 3], Some(30001), &[2]);
        let e = t.update(&set(&["ns/c"]), vec![np]).unwrap_err();
        assert!(e.to_string().contains("node port 30001/tcp"), "{e}");
        // Replacing the owner in the same update frees its frontend.
        let u = t.update(&set(&["ns/a", "ns/b"]), vec![clash]).unwrap();
        assert_eq!(u.len(), 1);
        assert_eq!(u.node_ports().count(), 0);
    }
}
