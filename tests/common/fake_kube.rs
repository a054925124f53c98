//! An in-process fake Kubernetes API server that speaks the real protocol, for the
//! Kubernetes source's end-to-end tests, and a way to run the binary against it.
//!
//! It serves HostedClusters, Routes and Services (cluster-wide paths, as the source asks):
//! - list: `resourceVersion` in the list metadata, `limit` and `continue` paging,
//!   `labelSelector` (existence and equality);
//! - watch (`?watch=true`): a chunked stream of JSON events, one per line: `ADDED`,
//!   `MODIFIED`, `DELETED` from `resourceVersion` on, `BOOKMARK`s when
//!   `allowWatchBookmarks=true`;
//! - failures on demand that a real server cannot be made to have: an outage (every request
//!   answered 503 and every open watch connection cut mid-stream), holding one kind's lists.
//!   (410 Gone after compaction is the real etcd's, in `tests/e2e/kube_faults.rs`.)
//!
//! Objects are JSON values (see `control::kube::fixtures`); the fake assigns each change the
//! next `resourceVersion`, as etcd does.
//!
//! [`Sniroute::start_kube`] runs the real binary with `KUBECONFIG` pointing at the fake.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, Notify};
use tokio::time::Instant;

use super::*;

/// How often an idle watch gets a bookmark.
const BOOKMARK_EVERY: Duration = Duration::from_millis(500);

/// The kinds served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// hypershift.openshift.io/v1beta1 HostedCluster.
    HostedCluster,
    /// route.openshift.io/v1 Route.
    Route,
    /// v1 Service.
    Service,
}

impl Kind {
    fn from_path(path: &str) -> Option<Self> {
        match path {
            "/apis/hypershift.openshift.io/v1beta1/hostedclusters" => Some(Self::HostedCluster),
            "/apis/route.openshift.io/v1/routes" => Some(Self::Route),
            "/api/v1/services" => Some(Self::Service),
            _ => None,
        }
    }

    fn of(object: &Value) -> Self {
        match object["kind"].as_str() {
            Some("HostedCluster") => Self::HostedCluster,
            Some("Route") => Self::Route,
            Some("Service") => Self::Service,
            other => panic!("fake kube serves no kind {other:?}"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::HostedCluster => "HostedCluster",
            Self::Route => "Route",
            Self::Service => "Service",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Self::HostedCluster => "hypershift.openshift.io/v1beta1",
            Self::Route => "route.openshift.io/v1",
            Self::Service => "v1",
        }
    }
}

/// One change, as watches replay and broadcast it.
#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    kind: Kind,
    kind_of_event: &'static str,
    object: Value,
}

type ObjKey = (Kind, String, String);

struct Inner {
    rv: u64,
    objects: BTreeMap<ObjKey, Value>,
    history: Vec<Change>,
    outage: bool,
    held: HashSet<Kind>,
    requests: Vec<String>,
}

struct Shared {
    inner: Mutex<Inner>,
    changes: broadcast::Sender<Change>,
    /// Bumped to cut every open watch connection.
    cut: tokio::sync::watch::Sender<u64>,
    released: Notify,
}

/// The fake API server; stops when dropped.
pub struct FakeKube {
    shared: Arc<Shared>,
    addr: SocketAddr,
    _thread: BackendThread,
}

impl FakeKube {
    /// Starts an empty fake on 127.0.0.1:0.
    pub fn start() -> Self {
        let (changes, _) = broadcast::channel(64 * 1024);
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                rv: 100,
                objects: BTreeMap::new(),
                history: Vec::new(),
                outage: false,
                held: HashSet::new(),
                requests: Vec::new(),
            }),
            changes,
            cut: tokio::sync::watch::Sender::new(0),
            released: Notify::new(),
        });
        let (listener, addr) = bind_loopback();
        let serving = shared.clone();
        let thread = BackendThread::spawn("fake-kube", listener, move |listener| async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let shared = serving.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Self {
            shared,
            addr,
            _thread: thread,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig for it, written into `dir`.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\n\
             clusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             users:\n- name: fake\n  user: {{}}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
             current-context: fake\n",
            self.addr
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.inner.lock().unwrap()
    }

    /// Creates or replaces an object (ADDED or MODIFIED); returns its new resourceVersion.
    pub fn apply(&self, object: Value) -> u64 {
        let kind = Kind::of(&object);
        self.record(kind, object, false)
    }

    /// Edits a stored object in place (a MODIFIED event).
    pub fn modify(&self, kind: Kind, namespace: &str, name: &str, edit: impl FnOnce(&mut Value)) {
        let mut object = self
            .lock()
            .objects
            .get(&(kind, namespace.to_owned(), name.to_owned()))
            .cloned()
            .unwrap_or_else(|| panic!("no {kind:?} {namespace}/{name} to modify"));
        edit(&mut object);
        self.apply(object);
    }

    fn record(&self, kind: Kind, mut object: Value, delete: bool) -> u64 {
        let mut inner = self.lock();
        inner.rv += 1;
        let rv = inner.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = (
            kind,
            object["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        let kind_of_event = if delete {
            inner.objects.remove(&key);
            "DELETED"
        } else if inner.objects.insert(key, object.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let change = Change {
            rv,
            kind,
            kind_of_event,
            object,
        };
        inner.history.push(change.clone());
        // No receiver (no watch open) is fine.
        let _ = self.shared.changes.send(change);
        rv
    }

    /// Starts an outage: every request gets 503 and open watch connections are cut.
    pub fn outage(&self) {
        self.lock().outage = true;
        self.shared.cut.send_modify(|epoch| *epoch += 1);
    }

    /// Ends the outage.
    pub fn recover(&self) {
        self.lock().outage = false;
    }

    /// Holds list requests of `kind` until [`FakeKube::release`].
    pub fn hold_lists(&self, kind: Kind) {
        self.lock().held.insert(kind);
    }

    /// Lets held lists through.
    pub fn release(&self) {
        self.lock().held.clear();
        self.shared.released.notify_waiters();
    }

    /// Every request so far, as `GET /path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// Requests so far that contain every one of `parts`.
    pub fn count_requests(&self, parts: &[&str]) -> usize {
        self.requests()
            .iter()
            .filter(|r| parts.iter().all(|p| r.contains(p)))
            .count()
    }
}

// === serving ===

type Reply = Response<ReplyBody>;

/// A whole body, or a stream of chunks that may end in an error (a cut connection).
pub struct ReplyBody {
    whole: Option<Bytes>,
    chunks: Option<mpsc::Receiver<Result<Bytes, io::Error>>>,
}

impl Body for ReplyBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if let Some(whole) = self.whole.take() {
            return Poll::Ready(Some(Ok(Frame::data(whole))));
        }
        match &mut self.chunks {
            None => Poll::Ready(None),
            Some(rx) => rx
                .poll_recv(cx)
                .map(|item| item.map(|chunk| chunk.map(Frame::data))),
        }
    }
}

fn reply(status: StatusCode, body: &Value) -> Reply {
    let mut response = Response::new(ReplyBody {
        whole: Some(Bytes::from(serde_json::to_vec(body).unwrap())),
        chunks: None,
    });
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

async fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Reply {
    let path = req.uri().path().to_owned();
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect();
    {
        let mut inner = shared.inner.lock().unwrap();
        inner
            .requests
            .push(format!("{} {}", req.method(), req.uri()));
        if inner.outage {
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                &status(503, "ServiceUnavailable", "the fake API server is down"),
            );
        }
    }
    if path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews" {
        // RBAC is the real server's business (tests/e2e/kube.rs): the fake grants everything.
        return reply(
            StatusCode::CREATED,
            &json!({
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {},
                "status": {"allowed": true}
            }),
        );
    }
    let Some(kind) = Kind::from_path(&path) else {
        return reply(
            StatusCode::NOT_FOUND,
            &status(404, "NotFound", &format!("no resource at {path}")),
        );
    };
    let selector = query.get("labelSelector").cloned().unwrap_or_default();
    if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) {
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .map_or(Duration::from_secs(290), Duration::from_secs);
        return watch(shared.clone(), kind, from, selector, bookmarks, timeout);
    }
    loop {
        let wait = shared.released.notified();
        if !shared.inner.lock().unwrap().held.contains(&kind) {
            break;
        }
        wait.await;
    }
    let limit: usize = query
        .get("limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(usize::MAX);
    let offset: usize = query
        .get("continue")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let inner = shared.inner.lock().unwrap();
    let matching: Vec<&Value> = inner
        .objects
        .iter()
        .filter(|((k, _, _), o)| *k == kind && selects(&selector, o))
        .map(|(_, o)| o)
        .collect();
    let page: Vec<Value> = matching
        .iter()
        .skip(offset)
        .take(limit)
        .map(|o| {
            let mut o = (*o).clone();
            // Items of a list carry no kind or apiVersion.
            if let Some(map) = o.as_object_mut() {
                map.remove("kind");
                map.remove("apiVersion");
            }
            o
        })
        .collect();
    let next = offset + page.len();
    let cont = if next < matching.len() {
        next.to_string()
    } else {
        String::new()
    };
    reply(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", kind.name()),
            "apiVersion": kind.api_version(),
            "metadata": {"resourceVersion": inner.rv.to_string(), "continue": cont},
            "items": page,
        }),
    )
}

fn watch(
    shared: Arc<Shared>,
    kind: Kind,
    from: u64,
    selector: String,
    bookmarks: bool,
    timeout: Duration,
) -> Reply {
    let (tx, rx) = mpsc::channel::<Result<Bytes, io::Error>>(4096);
    // `type` first, then `object`, as the API server writes them (serde_json's map would
    // sort the keys the other way round).
    let event_line = |kind_of_event: &str, object: &Value| -> Result<Bytes, io::Error> {
        Ok(Bytes::from(format!(
            "{{\"type\":{},\"object\":{}}}\n",
            json!(kind_of_event),
            object
        )))
    };
    let line =
        move |value: Value| event_line(value["type"].as_str().unwrap_or("ERROR"), &value["object"]);
    let event = |c: &Change| json!({"type": c.kind_of_event, "object": c.object});
    let mut cut = shared.cut.subscribe();
    cut.mark_unchanged();
    let (mut changes, replay, mut last_rv) = {
        let inner = shared.inner.lock().unwrap();
        let changes = shared.changes.subscribe();
        let replay: Vec<Change> = inner
            .history
            .iter()
            .filter(|c| c.rv > from && c.kind == kind && selects(&selector, &c.object))
            .cloned()
            .collect();
        (changes, replay, inner.rv)
    };
    tokio::spawn(async move {
        for change in &replay {
            if tx.send(line(event(change))).await.is_err() {
                return;
            }
        }
        let deadline = Instant::now() + timeout;
        let mut tick = tokio::time::interval(BOOKMARK_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return,
                _ = cut.changed() => {
                    let _ = tx.send(Err(io::Error::other("connection cut"))).await;
                    return;
                }
                change = changes.recv() => match change {
                    Ok(change) => {
                        last_rv = change.rv;
                        if change.rv > from && change.kind == kind && selects(&selector, &change.object)
                            && tx.send(line(event(&change))).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                },
                _ = tick.tick(), if bookmarks => {
                    let bookmark = json!({"type": "BOOKMARK", "object": {
                        "kind": kind.name(), "apiVersion": kind.api_version(),
                        "metadata": {"resourceVersion": last_rv.max(from).to_string()}}});
                    if tx.send(line(bookmark)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut response = Response::new(ReplyBody {
        whole: None,
        chunks: Some(rx),
    });
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
}

/// Whether `object` matches a label selector of `key` / `key=value` terms.
fn selects(selector: &str, object: &Value) -> bool {
    let labels = &object["metadata"]["labels"];
    selector
        .split(',')
        .filter(|t| !t.is_empty())
        .all(|term| match term.split_once('=') {
            Some((k, v)) => labels[k.trim_end_matches('=')].as_str() == Some(v),
            None => !labels[term].is_null(),
        })
}

/// Percent-decoding of a query component.
fn decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// === the binary, against the fake ===

impl Sniroute {
    /// Starts the binary with `KUBECONFIG` set to `kubeconfig`, and waits until it listens
    /// (not until it is ready: that is what the Kubernetes tests look at).
    pub fn start_kube(yaml: impl AsRef<str>, kubeconfig: &Path) -> Self {
        let kubeconfig = kubeconfig.to_str().expect("a UTF-8 kubeconfig path");
        let opts = StartOpts {
            env: vec![
                ("KUBECONFIG".into(), kubeconfig.into()),
                ("RUST_LOG".into(), "info,control=debug".into()),
            ],
            ready: false,
            ..StartOpts::default()
        };
        Self::start_opts(yaml, &opts)
    }

    /// `/readyz`'s status code.
    pub fn readyz(&self) -> u16 {
        self.get("/readyz").map_or(0, |(status, _)| status)
    }
}

/// Polls until `sni` reaches `backend` through `addr`; returns how long that took.
pub async fn wait_routed(addr: SocketAddr, sni: &str, backend: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if let Ok(conn) = tls_connect(addr, sni).await {
            if conn.backend == backend {
                return started.elapsed();
            }
        }
        assert!(
            started.elapsed() < within,
            "{sni} did not reach backend {backend} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls until a connection for `sni` is closed before any TLS answer, with no alert (an EOF
/// or a reset during the handshake): how a route with no valid backend refuses, as the
/// Gateway API conformance suite checks it. Returns how long that took.
pub async fn wait_rejected(addr: SocketAddr, sni: &str, within: Duration) -> Duration {
    wait_refused(addr, sni, within, "closed without an alert", |e| {
        received_alert(e).is_none()
            && matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            )
    })
    .await
}

/// Polls until `sni` is refused with `unrecognized_name`; returns how long that took.
pub async fn wait_unrouted(addr: SocketAddr, sni: &str, within: Duration) -> Duration {
    wait_refused(addr, sni, within, "refused with unrecognized_name", |e| {
        received_alert(e) == Some(rustls::AlertDescription::UnrecognisedName)
    })
    .await
}

/// Polls until a connection for `sni` fails as `refused` says (`how`, for the panic).
async fn wait_refused(
    addr: SocketAddr,
    sni: &str,
    within: Duration,
    how: &str,
    refused: impl Fn(&std::io::Error) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        if tls_connect(addr, sni).await.is_err_and(|e| refused(&e)) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{sni} not {how} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
