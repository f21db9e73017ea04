//! The Kubernetes source: kube-rs reflectors on Nodes, Pods, Namespaces, Services,
//! EndpointSlices and NetworkPolicies, the desired state recomputed on every change, node
//! annotations, and the node's pod CIDR (from the Node, or a block of its own from a pool).
//!
//! Reconnects and `410 Gone` are the kube-runtime watcher's: on a 410 it lists again and the
//! reflector's store is replaced atomically; errors back off and retry.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::model::{annotation, node_pod_cidr, DesiredState, Objects};
use crate::spec::Ipv4NetExt;

/// Kinds watched.
pub const WATCHED_KINDS: usize = 6;

/// Errors of the Kubernetes source.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    /// The API call failed.
    #[error("{what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The kube error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The client could not be configured.
    #[error("Kubernetes client configuration: {0}")]
    Config(String),
    /// The node has no pod CIDR and no pool to take one from.
    #[error("node {node} has no spec.podCIDRs and clusterPoolCIDR is not configured")]
    NoPodCidr {
        /// The node.
        node: String,
    },
    /// The pool has no free block.
    #[error("clusterPoolCIDR {pool} has no free /{prefix} block")]
    PoolExhausted {
        /// The pool.
        pool: Ipv4Net,
        /// Block size.
        prefix: u8,
    },
}

fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> K8sError {
    let what = what.into();
    move |source| K8sError::Api {
        what,
        source: Box::new(source),
    }
}

/// A client from a kubeconfig file, or the default (`$KUBECONFIG`, then in-cluster).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, K8sError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| K8sError::Config(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| K8sError::Config(format!("{}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| K8sError::Config(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| K8sError::Config(e.to_string()))
}

/// The node's pod CIDR: from its Node (spec or the agent's annotation), else the first free
/// block of `pool`, claimed with an annotation (retried until the Node exists).
pub async fn pod_cidr(
    client: &Client,
    node_name: &str,
    prefix: &str,
    pool: Option<Ipv4Net>,
    block: u8,
    wait: Duration,
) -> Result<(Node, Ipv4Net), K8sError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + wait;
    let node = loop {
        match nodes.get(node_name).await {
            Ok(n) => break n,
            Err(e) if tokio::time::Instant::now() < deadline => {
                debug!("waiting for Node {node_name}: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(api_err(format!("reading Node {node_name}"))(e)),
        }
    };
    if let Some(c) = node_pod_cidr(&node, prefix) {
        return Ok((node, c));
    }
    let pool = pool.ok_or_else(|| K8sError::NoPodCidr {
        node: node_name.to_string(),
    })?;
    let all = nodes
        .list(&Default::default())
        .await
        .map_err(api_err("listing Nodes"))?;
    let used: Vec<Ipv4Net> = all
        .items
        .iter()
        .filter_map(|n| node_pod_cidr(n, prefix))
        .collect();
    // `subnets` refuses a block shorter than the pool (the config refuses it first): no block.
    let free = pool
        .subnets(block)
        .into_iter()
        .flatten()
        .find(|c| !used.iter().any(|u| u.overlaps(c)))
        .ok_or(K8sError::PoolExhausted {
            pool,
            prefix: block,
        })?;
    let patch = serde_json::json!({"metadata": {"annotations": {
        format!("{prefix}/{}", annotation::POD_CIDR): free.to_string()
    }}});
    let node = nodes
        .patch(node_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(api_err(format!("claiming {free} on Node {node_name}")))?;
    info!(node = node_name, block = %free, %pool, "took a pod CIDR block from the cluster pool");
    Ok((node, free))
}

/// Merges `annotations` (keys without the prefix) into the Node's annotations.
pub async fn publish_annotations(
    client: &Client,
    node_name: &str,
    prefix: &str,
    annotations: &BTreeMap<String, String>,
) -> Result<(), K8sError> {
    let map: serde_json::Map<String, serde_json::Value> = annotations
        .iter()
        .map(|(k, v)| {
            (
                format!("{prefix}/{k}"),
                serde_json::Value::String(v.clone()),
            )
        })
        .collect();
    let patch = serde_json::json!({"metadata": {"annotations": map}});
    Api::<Node>::all(client.clone())
        .patch(node_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(api_err(format!("annotating Node {node_name}")))?;
    Ok(())
}

/// The running watchers and what they produce.
pub struct K8sSource {
    nodes: Store<Node>,
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    policies: Store<NetworkPolicy>,
    /// The desired state, recomputed after every change (debounced).
    pub desired: watch::Receiver<Arc<DesiredState>>,
    /// True once every reflector has its initial list.
    pub synced: watch::Receiver<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for K8sSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("K8sSource").finish_non_exhaustive()
    }
}

fn spawn_reflector<K>(
    client: &Client,
    notify: Arc<Notify>,
    ready: Arc<AtomicUsize>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Store<K>
where
    K: kube::Resource<Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    spawn_reflector_api(Api::<K>::all(client.clone()), notify, ready, tasks)
}

fn spawn_namespaced<K>(
    client: &Client,
    notify: Arc<Notify>,
    ready: Arc<AtomicUsize>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Store<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    spawn_reflector_api(Api::<K>::all(client.clone()), notify, ready, tasks)
}

fn spawn_reflector_api<K>(
    api: Api<K>,
    notify: Arc<Notify>,
    ready: Arc<AtomicUsize>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Store<K>
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store::<K>();
    let kind = K::kind(&K::DynamicType::default()).to_string();
    let n = notify.clone();
    tasks.push(tokio::spawn(async move {
        let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff();
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Init) => debug!(kind = %kind, "listing"),
                Ok(_) => n.notify_one(),
                Err(e) => warn!(kind = %kind, "watch: {e} (retrying)"),
            }
        }
    }));
    let r = reader.clone();
    tasks.push(tokio::spawn(async move {
        if r.wait_until_ready().await.is_ok() {
            ready.fetch_add(1, Ordering::SeqCst);
            notify.notify_one();
        }
    }));
    reader
}

fn state<K>(s: &Store<K>) -> Vec<K>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    s.state().iter().map(|o| K::clone(o)).collect()
}

impl K8sSource {
    /// Starts the six reflectors and the desired-state task for node `node_name`.
    pub fn start(client: Client, node_name: &str, prefix: &str) -> K8sSource {
        let notify = Arc::new(Notify::new());
        let ready = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        let (n, r) = (notify.clone(), ready.clone());
        let nodes = spawn_reflector::<Node>(&client, n.clone(), r.clone(), &mut tasks);
        let namespaces = spawn_reflector::<Namespace>(&client, n.clone(), r.clone(), &mut tasks);
        let pods = spawn_namespaced::<Pod>(&client, n.clone(), r.clone(), &mut tasks);
        let services = spawn_namespaced::<Service>(&client, n.clone(), r.clone(), &mut tasks);
        let slices = spawn_namespaced::<EndpointSlice>(&client, n.clone(), r.clone(), &mut tasks);
        let policies = spawn_namespaced::<NetworkPolicy>(&client, n, r, &mut tasks);
        let (desired_tx, desired) = watch::channel(Arc::new(DesiredState::default()));
        let (synced_tx, synced) = watch::channel(false);
        let mut src = K8sSource {
            nodes,
            pods,
            namespaces,
            services,
            slices,
            policies,
            desired,
            synced,
            tasks,
        };
        let stores = src.clone_stores();
        let (me, prefix) = (node_name.to_string(), prefix.to_string());
        src.tasks.push(tokio::spawn(async move {
            loop {
                notify.notified().await;
                // Coalesce bursts (initial lists, relists).
                tokio::time::sleep(Duration::from_millis(20)).await;
                let all_ready = ready.load(Ordering::SeqCst) >= WATCHED_KINDS;
                if !all_ready {
                    continue;
                }
                let d = DesiredState::compute(&stores.objects(), &me, &prefix);
                debug!(
                    remote_nodes = d.remote_nodes.len(),
                    service_ports = d.services.len(),
                    pods = d.policy.pods().len(),
                    policies = d.policy.policy_count(),
                    "desired state recomputed"
                );
                // Synced first: whoever sees this desired state also sees `synced`.
                if !*synced_tx.borrow() {
                    let _ = synced_tx.send(true);
                }
                let _ = desired_tx.send(Arc::new(d));
            }
        }));
        src
    }

    fn clone_stores(&self) -> Stores {
        Stores {
            nodes: self.nodes.clone(),
            pods: self.pods.clone(),
            namespaces: self.namespaces.clone(),
            services: self.services.clone(),
            slices: self.slices.clone(),
            policies: self.policies.clone(),
        }
    }

    /// The objects the reflectors hold now.
    pub fn objects(&self) -> Objects {
        self.clone_stores().objects()
    }
}

impl Drop for K8sSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Stores {
    nodes: Store<Node>,
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    policies: Store<NetworkPolicy>,
}

impl Stores {
    fn objects(&self) -> Objects {
        Objects {
            nodes: state(&self.nodes),
            pods: state(&self.pods),
            namespaces: state(&self.namespaces),
            services: state(&self.services),
            endpoint_slices: state(&self.slices),
            network_policies: state(&self.policies),
        }
    }
}
