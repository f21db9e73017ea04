//! A small Kubernetes API server for tests: real list/watch JSON over HTTP/1.1 with
//! `resourceVersion`, watch bookmarks and `410 Gone`, so kube-rs clients and reflectors can
//! be driven without a cluster.
//!
//! What it serves (cluster-wide collections plus a few per-object verbs):
//! - `GET {collection}`: a `…List` with `metadata.resourceVersion`.
//! - `GET {collection}?watch=true&resourceVersion=RV`: a chunked stream of watch events
//!   (`ADDED`/`MODIFIED`/`DELETED`, `BOOKMARK` every [`ApiServer::BOOKMARK_EVERY`] when
//!   `allowWatchBookmarks=true`), or an `ERROR` event with a 410 `Status` when `RV` is older
//!   than the compacted history ([`ApiServer::compact`]).
//! - `GET/PATCH {collection}/{name}` (cluster-scoped) and
//!   `GET/PATCH /api/v1/namespaces/{ns}/{resource}/{name}` (namespaced): PATCH is a JSON merge
//!   patch (RFC 7386), the content types kube-rs uses for merge and strategic patches alike.
//!
//! Objects are put in with [`ApiServer::apply`] (create or replace) and removed with
//! [`ApiServer::delete`]; each change gets the next resource version and is sent to watchers.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{Error, Netns, Result};

/// A kind the server knows: where its collection lives and how its objects look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// `kind` of an object.
    pub kind: &'static str,
    /// `apiVersion` of an object.
    pub api_version: &'static str,
    /// Path of the cluster-wide collection.
    pub collection: &'static str,
    /// Resource name in namespaced paths (`pods`).
    pub resource: &'static str,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
}

/// The kinds served.
pub const KINDS: &[Kind] = &[
    Kind {
        kind: "Node",
        api_version: "v1",
        collection: "/api/v1/nodes",
        resource: "nodes",
        namespaced: false,
    },
    Kind {
        kind: "Namespace",
        api_version: "v1",
        collection: "/api/v1/namespaces",
        resource: "namespaces",
        namespaced: false,
    },
    Kind {
        kind: "Pod",
        api_version: "v1",
        collection: "/api/v1/pods",
        resource: "pods",
        namespaced: true,
    },
    Kind {
        kind: "Service",
        api_version: "v1",
        collection: "/api/v1/services",
        resource: "services",
        namespaced: true,
    },
    Kind {
        kind: "EndpointSlice",
        api_version: "discovery.k8s.io/v1",
        collection: "/apis/discovery.k8s.io/v1/endpointslices",
        resource: "endpointslices",
        namespaced: true,
    },
    Kind {
        kind: "NetworkPolicy",
        api_version: "networking.k8s.io/v1",
        collection: "/apis/networking.k8s.io/v1/networkpolicies",
        resource: "networkpolicies",
        namespaced: true,
    },
];

fn kind_of(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.kind == name)
}

type Key = (&'static str, String, String);

#[derive(Debug)]
struct Event {
    rv: u64,
    kind: &'static str,
    kind_type: &'static str,
    object: Value,
}

#[derive(Debug, Default)]
struct State {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    events: Vec<Event>,
    /// Watches from resource versions below this get 410 Gone.
    oldest: u64,
    /// Bumped by [`ApiServer::compact`] to end every open watch.
    epoch: u64,
}

#[derive(Debug, Default)]
struct Stats {
    lists: Mutex<BTreeMap<String, u64>>,
    watches: AtomicU64,
    gone: AtomicU64,
    bookmarks: AtomicU64,
    patches: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
    stats: Stats,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running server; dropping it stops it.
#[derive(Debug)]
pub struct ApiServer {
    inner: Arc<Inner>,
    addr: SocketAddr,
}

impl ApiServer {
    /// Bookmark period on watches that allow them.
    pub const BOOKMARK_EVERY: Duration = Duration::from_millis(500);

    /// Listens on 127.0.0.1 (random port) of the calling thread's network namespace.
    pub fn start() -> Result<ApiServer> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| Error::io("binding the test API server", e))?;
        Self::serve(listener)
    }

    /// Listens on 127.0.0.1 inside `ns` (so an agent running there reaches it).
    pub fn start_in(ns: &Netns) -> Result<ApiServer> {
        let listener = ns
            .run(|| TcpListener::bind("127.0.0.1:0"))?
            .map_err(|e| Error::io("binding the test API server", e))?;
        Self::serve(listener)
    }

    fn serve(listener: TcpListener) -> Result<ApiServer> {
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("test API server address", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("test API server", e))?;
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            stats: Stats::default(),
        });
        let srv = inner.clone();
        std::thread::spawn(move || {
            while !srv.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let srv = srv.clone();
                        std::thread::spawn(move || {
                            let _ = handle(&srv, stream);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(ApiServer { inner, addr })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig pointing at this server (no credentials).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: default\ncurrent-context: test\nusers:\n- name: test\n  user: {{}}\n",
            self.url()
        )
    }

    /// Creates or replaces an object (its `kind` picks the collection); returns its new
    /// resource version.
    pub fn apply(&self, mut obj: Value) -> u64 {
        let kind = obj["kind"]
            .as_str()
            .and_then(kind_of)
            .unwrap_or_else(|| panic!("unknown kind in {obj}"));
        obj["apiVersion"] = kind.api_version.into();
        let ns = if kind.namespaced {
            obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string()
        } else {
            String::new()
        };
        obj["metadata"]["namespace"] = if kind.namespaced {
            ns.clone().into()
        } else {
            Value::Null
        };
        if !kind.namespaced {
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("namespace");
            }
        }
        let name = obj["metadata"]["name"]
            .as_str()
            .expect("metadata.name")
            .to_string();
        let mut st = self.inner.lock();
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = rv.to_string().into();
        if obj["metadata"]["uid"].is_null() {
            obj["metadata"]["uid"] = format!("uid-{}-{ns}-{name}", kind.kind.to_lowercase()).into();
        }
        let key = (kind.kind, ns, name);
        let kind_type = if st.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        st.objects.insert(key, obj.clone());
        st.events.push(Event {
            rv,
            kind: kind.kind,
            kind_type,
            object: obj,
        });
        drop(st);
        self.inner.changed.notify_all();
        rv
    }

    /// Deletes an object; `false` if it did not exist.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> bool {
        let Some(k) = kind_of(kind) else { return false };
        let ns = if k.namespaced {
            namespace.to_string()
        } else {
            String::new()
        };
        let mut st = self.inner.lock();
        let Some(mut obj) = st.objects.remove(&(k.kind, ns, name.to_string())) else {
            return false;
        };
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = rv.to_string().into();
        st.events.push(Event {
            rv,
            kind: k.kind,
            kind_type: "DELETED",
            object: obj,
        });
        drop(st);
        self.inner.changed.notify_all();
        true
    }

    /// The stored object, if any.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let k = kind_of(kind)?;
        let ns = if k.namespaced {
            namespace.to_string()
        } else {
            String::new()
        };
        self.inner
            .lock()
            .objects
            .get(&(k.kind, ns, name.to_string()))
            .cloned()
    }

    /// Forgets the event history and ends every open watch: clients resuming from an older
    /// resource version get `410 Gone` and must list again.
    pub fn compact(&self) {
        let mut st = self.inner.lock();
        // A change nobody was sent happens and the history up to it is dropped, as when
        // etcd compacts while a client is disconnected: resuming needs events that are gone.
        st.rv += 1;
        st.oldest = st.rv + 1;
        st.events.clear();
        st.epoch += 1;
        drop(st);
        self.inner.changed.notify_all();
    }

    /// Lists served per collection path.
    pub fn lists(&self, collection: &str) -> u64 {
        self.inner
            .stats
            .lists
            .lock()
            .map(|l| l.get(collection).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// `410 Gone` answers sent so far.
    pub fn gone_sent(&self) -> u64 {
        self.inner.stats.gone.load(Ordering::Relaxed)
    }

    /// Bookmarks sent so far.
    pub fn bookmarks_sent(&self) -> u64 {
        self.inner.stats.bookmarks.load(Ordering::Relaxed)
    }

    /// Watches opened so far.
    pub fn watches_opened(&self) -> u64 {
        self.inner.stats.watches.load(Ordering::Relaxed)
    }

    /// PATCH requests served so far.
    pub fn patches(&self) -> u64 {
        self.inner.stats.patches.load(Ordering::Relaxed)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        self.inner.changed.notify_all();
    }
}

struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    body: Vec<u8>,
}

fn read_request(stream: &TcpStream) -> std::io::Result<Option<Request>> {
    let mut rd = BufReader::new(stream);
    let mut line = String::new();
    if rd.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("/").to_string();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if rd.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; len];
    rd.read_exact(&mut body)?;
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Ok(Some(Request {
        method,
        path: path.to_string(),
        query,
        body,
    }))
}

fn respond(mut stream: &TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let text = body.to_string();
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        _ => "Bad Request",
    };
    write!(
        stream,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )?;
    stream.flush()
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn handle(srv: &Inner, stream: TcpStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    let Some(req) = read_request(&stream)? else {
        return Ok(());
    };
    // Collection paths.
    if let Some(kind) = KINDS.iter().find(|k| k.collection == req.path) {
        if req.method != "GET" {
            return respond(
                &stream,
                405,
                &status(405, "MethodNotAllowed", "only GET on collections"),
            );
        }
        if req
            .query
            .get("watch")
            .is_some_and(|w| w == "true" || w == "1")
        {
            return watch(srv, &stream, kind, &req);
        }
        return list(srv, &stream, kind);
    }
    // Single objects: /api/v1/nodes/NAME, /api/v1/namespaces/NS/RES/NAME, /apis/G/V/namespaces/NS/RES/NAME.
    let Some((kind, ns, name)) = object_path(&req.path) else {
        return respond(
            &stream,
            404,
            &status(404, "NotFound", &format!("no route {}", req.path)),
        );
    };
    let key = (kind.kind, ns.clone(), name.clone());
    match req.method.as_str() {
        "GET" => match srv.lock().objects.get(&key) {
            Some(o) => respond(&stream, 200, o),
            None => respond(
                &stream,
                404,
                &status(
                    404,
                    "NotFound",
                    &format!("{} {name} not found", kind.resource),
                ),
            ),
        },
        "PATCH" => {
            let Ok(patch) = serde_json::from_slice::<Value>(&req.body) else {
                return respond(
                    &stream,
                    400,
                    &status(400, "BadRequest", "patch is not JSON"),
                );
            };
            let mut st = srv.lock();
            let Some(mut obj) = st.objects.get(&key).cloned() else {
                drop(st);
                return respond(
                    &stream,
                    404,
                    &status(404, "NotFound", &format!("{name} not found")),
                );
            };
            merge_patch(&mut obj, &patch);
            st.rv += 1;
            let rv = st.rv;
            obj["metadata"]["resourceVersion"] = rv.to_string().into();
            st.objects.insert(key, obj.clone());
            st.events.push(Event {
                rv,
                kind: kind.kind,
                kind_type: "MODIFIED",
                object: obj.clone(),
            });
            drop(st);
            srv.stats.patches.fetch_add(1, Ordering::Relaxed);
            srv.changed.notify_all();
            respond(&stream, 200, &obj)
        }
        _ => respond(
            &stream,
            405,
            &status(405, "MethodNotAllowed", "GET or PATCH"),
        ),
    }
}

fn object_path(path: &str) -> Option<(&'static Kind, String, String)> {
    for k in KINDS {
        if !k.namespaced {
            if let Some(name) = path
                .strip_prefix(k.collection)
                .and_then(|r| r.strip_prefix('/'))
            {
                if !name.is_empty() && !name.contains('/') {
                    return Some((k, String::new(), name.to_string()));
                }
            }
            continue;
        }
        let Some(base) = k.collection.strip_suffix(k.resource) else {
            continue;
        };
        let Some(rest) = path
            .strip_prefix(base)
            .and_then(|r| r.strip_prefix("namespaces/"))
        else {
            continue;
        };
        let mut parts = rest.split('/');
        if let (Some(ns), Some(res), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            if res == k.resource {
                return Some((k, ns.to_string(), name.to_string()));
            }
        }
    }
    None
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Some(t) = target.as_object_mut() {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn list(srv: &Inner, stream: &TcpStream, kind: &Kind) -> std::io::Result<()> {
    let st = srv.lock();
    let items: Vec<Value> = st
        .objects
        .iter()
        .filter(|((k, _, _), _)| *k == kind.kind)
        .map(|(_, o)| o.clone())
        .collect();
    let rv = st.rv;
    drop(st);
    if let Ok(mut l) = srv.stats.lists.lock() {
        *l.entry(kind.collection.to_string()).or_default() += 1;
    }
    respond(
        stream,
        200,
        &json!({"kind": format!("{}List", kind.kind), "apiVersion": kind.api_version,
                "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
    )
}

fn chunk(mut stream: &TcpStream, v: &Value) -> std::io::Result<()> {
    let line = format!("{v}\n");
    write!(stream, "{:x}\r\n{line}\r\n", line.len())?;
    stream.flush()
}

fn watch(srv: &Inner, stream: &TcpStream, kind: &Kind, req: &Request) -> std::io::Result<()> {
    srv.stats.watches.fetch_add(1, Ordering::Relaxed);
    let from: u64 = req
        .query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = req
        .query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let timeout = req
        .query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(300), Duration::from_secs);
    let mut s = stream;
    write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )?;
    let (mut sent, epoch) = {
        let st = srv.lock();
        if from != 0 && from + 1 < st.oldest {
            drop(st);
            srv.stats.gone.fetch_add(1, Ordering::Relaxed);
            let gone = status(410, "Expired", &format!("too old resource version: {from}"));
            chunk(stream, &json!({"type": "ERROR", "object": gone}))?;
            return s.write_all(b"0\r\n\r\n");
        }
        (if from == 0 { st.rv } else { from }, st.epoch)
    };
    let started = Instant::now();
    let mut last_bookmark = Instant::now();
    loop {
        let mut st = srv.lock();
        let pending: Vec<Value> = st
            .events
            .iter()
            .filter(|e| e.rv > sent && e.kind == kind.kind)
            .map(|e| json!({"type": e.kind_type, "object": e.object}))
            .collect();
        let newest = st.rv;
        if pending.is_empty() {
            let (g, _) = srv
                .changed
                .wait_timeout(st, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner());
            st = g;
        }
        let ended = st.epoch != epoch || srv.stop.load(Ordering::Relaxed);
        drop(st);
        for ev in &pending {
            chunk(stream, ev)?;
        }
        if !pending.is_empty() {
            sent = newest;
        }
        if ended || started.elapsed() >= timeout {
            return s.write_all(b"0\r\n\r\n");
        }
        if bookmarks && last_bookmark.elapsed() >= ApiServer::BOOKMARK_EVERY {
            sent = sent.max(newest.min(srv.lock().rv));
            let bm = json!({"type": "BOOKMARK", "object": {"kind": kind.kind, "apiVersion": kind.api_version,
                            "metadata": {"resourceVersion": sent.to_string()}}});
            chunk(stream, &bm)?;
            srv.stats.bookmarks.fetch_add(1, Ordering::Relaxed);
            last_bookmark = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_rfc7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
    }

    #[test]
    fn paths() {
        let (k, ns, n) = object_path("/api/v1/nodes/n1").unwrap();
        assert_eq!((k.kind, ns.as_str(), n.as_str()), ("Node", "", "n1"));
        let (k, ns, n) = object_path("/api/v1/namespaces/default/pods/p").unwrap();
        assert_eq!((k.kind, ns.as_str(), n.as_str()), ("Pod", "default", "p"));
        let (k, _, _) =
            object_path("/apis/discovery.k8s.io/v1/namespaces/x/endpointslices/s").unwrap();
        assert_eq!(k.kind, "EndpointSlice");
        assert!(object_path("/api/v1/foo").is_none());
    }

    fn http(addr: &str, req: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn list_watch_and_gone() {
        let srv = ApiServer::start().unwrap();
        let addr = srv.url().trim_start_matches("http://").to_string();
        srv.apply(json!({"kind": "Node", "metadata": {"name": "n1"}}));
        let out = http(&addr, "GET /api/v1/nodes HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(out.contains("\"NodeList\""), "{out}");
        assert!(out.contains("\"resourceVersion\":\"1\""), "{out}");
        srv.apply(json!({"kind": "Node", "metadata": {"name": "n2"}}));
        let out = http(&addr, "GET /api/v1/nodes?watch=true&resourceVersion=1&timeoutSeconds=1&allowWatchBookmarks=true HTTP/1.1\r\n\r\n");
        assert!(out.contains("\"ADDED\"") && out.contains("n2"), "{out}");
        assert!(out.contains("BOOKMARK"), "{out}");
        srv.compact();
        let out = http(
            &addr,
            "GET /api/v1/nodes?watch=true&resourceVersion=1 HTTP/1.1\r\n\r\n",
        );
        assert!(out.contains("\"code\":410"), "{out}");
        assert_eq!(srv.gone_sent(), 1);
        let body = r#"{"metadata":{"annotations":{"a":"b"}}}"#;
        let out = http(
            &addr,
            &format!(
                "PATCH /api/v1/nodes/n1 HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        );
        assert!(out.contains("\"annotations\":{\"a\":\"b\"}"), "{out}");
        assert_eq!(
            srv.get("Node", "", "n1").unwrap()["metadata"]["annotations"]["a"],
            "b"
        );
    }
}
