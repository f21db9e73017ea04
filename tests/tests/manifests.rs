//! Manifests suite: everything in `manifests/` passes `kubernetes-validate --strict` for
//! Kubernetes 1.30 (PyPI; `cargo xtask deps` installs it), and what the manifests hand to
//! ferroplane is accepted by ferroplane itself: the ConfigMap's agent config by the agent's
//! config parser, its conflist's first plugin by the CNI plugin's config parser, and every
//! agent flag the DaemonSet passes by `ferroplane-agent --help`.

use std::path::{Path, PathBuf};
use std::process::Command;

use ferroplane_e2e::{bin_dir, bin_path, workspace_root, TempDir};
use serde_json::Value;

const K8S_VERSION: &str = "1.30.0";

fn manifests() -> Vec<PathBuf> {
    let dir = workspace_root().join("manifests");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("manifests/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

fn validate(path: &Path) -> std::process::Output {
    Command::new("kubernetes-validate")
        .args(["--strict", "-k", K8S_VERSION])
        .arg(path)
        .output()
        .expect("kubernetes-validate not found: run `cargo xtask deps` (pip install kubernetes-validate)")
}

fn docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read");
    // serde-saphyr skips empty documents (`---` with nothing after it).
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

fn all_docs() -> Vec<Value> {
    manifests().iter().flat_map(|p| docs(p)).collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in manifests/"))
}

#[test]
fn manifests_pass_strict_validation() {
    let files = manifests();
    assert!(files.len() >= 4, "{files:?}");
    for f in &files {
        let out = validate(f);
        assert!(
            out.status.success(),
            "{} failed validation:\n{}{}",
            f.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The validator is strict: an unknown field fails.
    let tmp = TempDir::new("manifests").expect("tmp");
    let bad = tmp.path().join("bad.yaml");
    let text =
        std::fs::read_to_string(workspace_root().join("manifests/03-daemonset.yaml")).expect("ds");
    std::fs::write(
        &bad,
        text.replacen(
            "hostNetwork: true",
            "hostNetwork: true\n      hostNetworking: true",
            1,
        ),
    )
    .expect("write");
    assert!(
        !validate(&bad).status.success(),
        "an unknown field must fail --strict"
    );
}

#[test]
fn manifests_cover_what_the_agent_needs() {
    let docs = all_docs();
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "DaemonSet",
    ] {
        find(&docs, kind);
    }
    // Least privilege: list/watch what is watched, patch only nodes, nothing else.
    let role = find(&docs, "ClusterRole");
    let mut granted = Vec::new();
    for rule in role["rules"].as_array().expect("rules") {
        for res in rule["resources"].as_array().expect("resources") {
            let verbs: Vec<&str> = rule["verbs"]
                .as_array()
                .expect("verbs")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert!(
                verbs.contains(&"list") && verbs.contains(&"watch"),
                "{rule}"
            );
            let writes: Vec<&&str> = verbs
                .iter()
                .filter(|v| !["get", "list", "watch"].contains(v))
                .collect();
            if res == "nodes" {
                assert_eq!(writes, vec![&"patch"], "{rule}");
            } else {
                assert!(writes.is_empty(), "only nodes may be written: {rule}");
            }
            granted.push(res.as_str().expect("resource").to_string());
        }
    }
    granted.sort();
    assert_eq!(
        granted,
        [
            "endpointslices",
            "namespaces",
            "networkpolicies",
            "nodes",
            "pods",
            "services"
        ]
    );

    let ds = find(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(
        pod["tolerations"][0]["operator"], "Exists",
        "runs on every node"
    );
    let agent = &pod["containers"][0];
    assert_eq!(agent["securityContext"]["privileged"], true);
    assert!(agent["resources"]["requests"]["cpu"].is_string());
    assert_eq!(agent["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(agent["readinessProbe"]["httpGet"]["path"], "/readyz");
    let host_paths: Vec<&str> = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    for p in [
        "/sys/fs/bpf",
        "/var/run/netns",
        "/opt/cni/bin",
        "/etc/cni/net.d",
        "/var/lib/ferroplane",
    ] {
        assert!(
            host_paths.contains(&p),
            "missing hostPath {p}: {host_paths:?}"
        );
    }
    let init = &pod["initContainers"][0];
    let script = init["command"]
        .as_array()
        .expect("cmd")
        .iter()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        script.contains("ferroplane-cni") && script.contains("10-ferroplane.conflist"),
        "{script}"
    );

    // The agent accepts every flag the DaemonSet passes, and the probe port is the health one.
    let args: Vec<String> = agent["command"]
        .as_array()
        .expect("command")
        .iter()
        .skip(1)
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    let help = Command::new(bin_path(&bin_dir(), "ferroplane-agent").expect("agent built"))
        .arg("--help")
        .output()
        .expect("agent --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for a in &args {
        let flag = a.split('=').next().expect("flag");
        assert!(help.contains(flag), "ferroplane-agent does not know {flag}");
    }
    let port = agent["livenessProbe"]["httpGet"]["port"]
        .as_u64()
        .expect("port");
    assert!(
        args.iter()
            .any(|a| a == &format!("--health-addr=127.0.0.1:{port}")),
        "{args:?}"
    );

    // The ConfigMap's contents are accepted by the agent and the CNI plugin.
    let cm = find(&docs, "ConfigMap");
    let agent_yaml = cm["data"]["agent.yaml"].as_str().expect("agent.yaml");
    ferroplane_agent::k8s::AgentConfig::from_yaml(agent_yaml)
        .expect("the ConfigMap's agent.yaml is valid");
    let conflist: Value = serde_json::from_str(
        cm["data"]["10-ferroplane.conflist"]
            .as_str()
            .expect("conflist"),
    )
    .expect("conflist JSON");
    assert_eq!(conflist["cniVersion"], "1.1.0");
    // ferroplane-cni alone, serving hostPorts itself: no portmap (its iptables DNAT cannot
    // work with this dataplane).
    assert_eq!(
        conflist["plugins"].as_array().map(Vec::len),
        Some(1),
        "{conflist}"
    );
    let mut first = conflist["plugins"][0].clone();
    assert_eq!(first["type"], "ferroplane-cni");
    assert_eq!(first["capabilities"]["portMappings"], true, "{first}");
    // The runtime injects cniVersion and name into each plugin's configuration.
    first["cniVersion"] = conflist["cniVersion"].clone();
    first["name"] = conflist["name"].clone();
    let conf = ferroplane_cni::plugin::parse_conf(first.to_string().as_bytes())
        .expect("plugin config accepted");
    assert_eq!(conf.agent_socket, Path::new("/run/ferroplane/cni.sock"));
    assert!(
        args.iter()
            .any(|a| a == "--cni-socket=/run/ferroplane/cni.sock"),
        "agent and plugin agree on the socket"
    );
}
