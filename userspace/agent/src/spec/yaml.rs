//! Reading YAML into a typed document, with errors that name the offending field.
//!
//! The parser is serde-saphyr (see the workspace Cargo.toml for why); serde_path_to_error
//! records where in the document deserialisation stopped (`node.podCIDR`, `pods[1].ip`).
//!
//! Unknown keys: the spec's own sections refuse them (`deny_unknown_fields`); the
//! Kubernetes objects of [`STRICT_LISTS`] are `k8s-openapi` types, which skip keys the API
//! does not have, so serde_ignored reports what they skipped and the first such key is
//! refused with its path (`services[0].spec.bogus: unknown field`), as a typo elsewhere
//! in the spec is.

use serde::de::DeserializeOwned;

use super::ConfigError;

/// The most YAML nodes (scalars, sequences, mappings) one document may hold: about
/// 200,000 Services with an EndpointSlice each.
pub const MAX_NODES: usize = 10_000_000;

/// The top-level lists that hold Kubernetes API objects (`k8s-openapi` types): a key
/// inside them that the API object does not have is refused.
pub const STRICT_LISTS: &[&str] = &["services", "endpointSlices", "networkPolicies"];

/// Parses one YAML document into `T`. On error, [`ConfigError::Yaml`] carries the path of
/// the offending field (`.` when the error is about the document as a whole, e.g. a syntax
/// error after the last field) and the parser's message with its line and column.
///
/// A document with nothing but blank lines and comments reads as an empty mapping, so
/// the error names the first required field that is missing (serde-saphyr itself only
/// says "unexpected end of input").
pub fn from_yaml_str<T: DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    let text = if is_blank(text) { "{}" } else { text };
    let mut path = None;
    let mut unknown: Option<String> = None;
    // One-line messages: the snippet of the source that serde-saphyr can add spans lines.
    // The budget keeps serde-saphyr's guards against alias bombs and deep nesting, but
    // sizes the document limits for a cluster's worth of Services and EndpointSlices
    // (the defaults, 250,000 nodes and 1,000,000 events, refuse a spec of 10,000 Services
    // with their slices; serde_yaml had no such limit).
    let options = serde_saphyr::options! {
        with_snippet: false,
        budget: serde_saphyr::budget! {
            max_nodes: MAX_NODES,
            max_events: 3 * MAX_NODES,
            max_total_scalar_bytes: 512 << 20,
        },
    };
    let value = serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        let mut skipped = |p: serde_ignored::Path| {
            if unknown.is_none() {
                let p = field_path(&p);
                let strict = STRICT_LISTS
                    .iter()
                    .any(|l| p.strip_prefix(l).is_some_and(|r| r.starts_with('[')));
                if strict {
                    unknown = Some(p);
                }
            }
        };
        let de = serde_ignored::Deserializer::new(de, &mut skipped);
        serde_path_to_error::deserialize(de).map_err(|e| {
            path = Some(e.path().to_string());
            e.into_inner()
        })
    })
    .map_err(|e| ConfigError::Yaml {
        path: path.unwrap_or_else(|| ".".to_string()),
        message: e.to_string(),
    })?;
    match unknown {
        Some(path) => Err(ConfigError::Yaml {
            path,
            message: "unknown field (the Kubernetes API object has no such key)".to_string(),
        }),
        None => Ok(value),
    }
}

/// A path as serde_path_to_error writes it: `services[0].spec.bogus`.
fn field_path(p: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match p {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => match field_path(parent) {
            s if s.is_empty() => key.clone(),
            s => format!("{s}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

/// Whether a document holds no node: only blank lines, comments and document markers.
fn is_blank(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#') || l == "---" || l == "...")
}

#[cfg(test)]
mod tests {
    use crate::spec::NodeSpec;

    /// A spec the size of a large cluster (20,000 Services, each with a slice) loads: the
    /// YAML parser's default budget (250,000 nodes) refused it.
    #[test]
    fn a_cluster_sized_spec_loads() {
        let mut y = String::from(
            "node:\n  name: n1\n  uplink: up0\n  address: 192.168.100.2/24\n  podCIDR: 10.244.1.0/24\nservices:\n",
        );
        let n = 20_000u32;
        for i in 0..n {
            let ip = std::net::Ipv4Addr::from(0x0a60_0000 + i + 10);
            y.push_str(&format!(
                "  - metadata: {{ name: s{i} }}\n    spec:\n      clusterIP: {ip}\n      ports: [ {{ name: http, protocol: TCP, port: 80, targetPort: 8080 }} ]\n"
            ));
        }
        y.push_str("endpointSlices:\n");
        for i in 0..n {
            y.push_str(&format!(
                "  - metadata: {{ name: s{i}-a, labels: {{ kubernetes.io/service-name: s{i} }} }}\n    ports: [ {{ name: http, protocol: TCP, port: 8080 }} ]\n    endpoints:\n      - addresses: [10.244.1.{}]\n",
                10 + i % 200
            ));
        }
        let spec = NodeSpec::from_yaml(&y).expect("a cluster-sized spec loads");
        assert_eq!(spec.services.len(), n as usize);
        assert_eq!(spec.endpoint_slices.len(), n as usize);
    }

    /// A key the Kubernetes API objects do not have is refused with its path, in every
    /// list of API objects; the spec's own sections refuse theirs through serde.
    #[test]
    fn unknown_keys_in_api_objects_are_refused() {
        let base = "node:\n  name: n1\n  uplink: up0\n  address: 192.168.100.2/24\n  podCIDR: 10.244.1.0/24\n";
        for (extra, path) in [
            (
                "services:\n  - metadata: { name: a, labels: { x: y } }\n    spec: { ports: [ { port: 80, tragetPort: 8080 } ] }\n",
                "services[0].spec.ports[0].tragetPort",
            ),
            (
                "services:\n  - metadata: { name: a }\n    spec: { ports: [ { port: 80 } ] }\n    stauts: {}\n",
                "services[0].stauts",
            ),
            (
                "services:\n  - metadata: { name: a }\n    spec: { ports: [ { port: 80 } ] }\nendpointSlices:\n  - metadata: { name: a-1, labels: { kubernetes.io/service-name: a } }\n    endpoints: [ { addresses: [10.244.1.5], conditions: { redy: true } } ]\n",
                "endpointSlices[0].endpoints[0].conditions.redy",
            ),
            (
                "networkPolicies:\n  - metadata: { name: p }\n    spec: { podSelector: {}, ingres: [] }\n",
                "networkPolicies[0].spec.ingres",
            ),
            ("nodes: []\n", "nodes"),
        ] {
            let e = NodeSpec::from_yaml(&format!("{base}{extra}")).unwrap_err();
            assert_eq!(e.field(), path, "{e}");
            assert!(e.to_string().contains("unknown field"), "{e}");
        }
        // Every key the API has is accepted, also those the dataplane does not use.
        let ok = "services:\n  - apiVersion: v1\n    kind: Service\n    metadata: { name: a, uid: u, resourceVersion: '1', annotations: { a: b } }\n    spec: { selector: { app: a }, ipFamilies: [IPv4], publishNotReadyAddresses: true, ports: [ { port: 80, appProtocol: http } ] }\n    status: { conditions: [] }\nendpointSlices:\n  - apiVersion: discovery.k8s.io/v1\n    kind: EndpointSlice\n    metadata: { name: a-1, labels: { kubernetes.io/service-name: a } }\n    endpoints: [ { addresses: [10.244.1.5], zone: z, hints: { forZones: [ { name: z } ] } } ]\n";
        NodeSpec::from_yaml(&format!("{base}{ok}")).unwrap();
    }

    /// An alias bomb is still refused by the budget (not expanded).
    #[test]
    fn alias_bombs_are_refused() {
        let mut y = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            y.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let r: Result<std::collections::BTreeMap<String, serde_json::Value>, _> =
            super::from_yaml_str(&y);
        assert!(r.is_err(), "10^12 expanded nodes must be refused");
    }
}
