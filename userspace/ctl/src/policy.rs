//! `show policies [--pod NS/NAME]`.

use ferroplane_api::{AclInfo, PoliciesReport};

use crate::table::{Align, Table};

/// One block per pod: the policies selecting it, then each direction's ACL rules with hits.
pub fn policies(r: &PoliciesReport) -> String {
    let mut out = format!(
        "generation {}  policies {}  distinct ACLs {}\n",
        r.generation, r.policies, r.acls
    );
    for p in &r.pods {
        out.push_str(&format!(
            "\n{}/{} ({})  policies: {}\n",
            p.namespace,
            p.name,
            p.ip,
            if p.policies.is_empty() {
                "-".to_string()
            } else {
                p.policies.join(", ")
            }
        ));
        out.push_str(&direction("ingress", "from", p.ingress.as_ref()));
        out.push_str(&direction("egress", "to", p.egress.as_ref()));
    }
    out
}

fn direction(name: &str, peer: &str, acl: Option<&AclInfo>) -> String {
    use Align::{Left, Right};
    let Some(acl) = acl else {
        return format!("  {name}: not isolated (all allowed)\n");
    };
    let mut out = format!(
        "  {name}: {} rule(s), ACL shared by {} pod(s), denied {}\n",
        acl.rules.len(),
        acl.shared_by,
        acl.denied
    );
    if acl.rules.is_empty() {
        out.push_str("    (no rule: everything denied)\n");
        return out;
    }
    let peer_col = format!("{}{}", peer[..1].to_uppercase(), &peer[1..]);
    let mut t = Table::new(&[
        ("    Policy", Left),
        ("Rule", Right),
        ("Ports", Left),
        (&peer_col, Left),
        ("Hits", Right),
    ]);
    for r in &acl.rules {
        t.row([
            format!("    {}", r.policy),
            r.index.to_string(),
            r.ports.join(","),
            if r.peers.is_empty() {
                "(none)".to_string()
            } else {
                r.peers.join(", ")
            },
            r.hits.to_string(),
        ]);
    }
    out.push_str(&t.render());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferroplane_api::{AclRuleInfo, PodPolicyInfo};

    #[test]
    fn renders_rules_hits_and_unisolated_directions() {
        let r = PoliciesReport {
            generation: 3,
            policies: 1,
            acls: 1,
            pods: vec![PodPolicyInfo {
                namespace: "x".into(),
                name: "a".into(),
                ip: "10.244.1.10".into(),
                policies: vec!["x/allow-b".into()],
                ingress: Some(AclInfo {
                    shared_by: 2,
                    denied: 7,
                    rules: vec![AclRuleInfo {
                        policy: "x/allow-b".into(),
                        index: 0,
                        ports: vec!["tcp/80".into()],
                        peers: vec!["10.244.1.11".into()],
                        hits: 42,
                    }],
                }),
                egress: None,
            }],
        };
        let s = policies(&r);
        assert!(s.contains("x/a (10.244.1.10)  policies: x/allow-b"), "{s}");
        assert!(s.contains("shared by 2 pod(s), denied 7"), "{s}");
        assert!(
            s.contains("tcp/80") && s.contains("42") && s.contains("From"),
            "{s}"
        );
        assert!(s.contains("egress: not isolated"), "{s}");
    }
}
