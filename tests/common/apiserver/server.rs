//! A running etcd and kube-apiserver: a test's own or the binary's shared one, restarts,
//! a second replica, and etcd's own API (revision, compaction).

use std::fmt;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hyper::Method;
use serde_json::{json, Value};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::audit::AUDIT_POLICY;
use super::build::{binaries, Binaries};
use super::certs::{kubeconfig_yaml, ServerPki};
use super::process::{free_port, Proc};
use super::{install_crds, nanos, Admin, READY_WITHIN};
use crate::common::Sniroute;

/// How a server of a test's own runs.
#[derive(Clone, Debug, Default)]
pub struct Opts {
    /// `--watch-cache=false`: every watch is etcd's own, so a watch resumed from a compacted
    /// revision gets 410 Gone from etcd rather than from the watch cache's window.
    pub no_watch_cache: bool,
}

/// A running etcd and kube-apiserver; both are killed on drop.
pub struct ApiServer {
    dir: tempfile::TempDir,
    binaries: &'static Binaries,
    opts: Opts,
    pki: ServerPki,
    etcd: Mutex<Proc>,
    etcd_port: u16,
    kube_apiserver: Mutex<Option<Proc>>,
    port: u16,
    service_cidr: String,
    pub(super) audit_log: PathBuf,
    /// Startup times: etcd healthy, kube-apiserver ready, CRDs established.
    pub startup: Startup,
}

/// How long each part of starting took.
#[derive(Clone, Copy, Debug, Default)]
pub struct Startup {
    /// Spawn to etcd's `/health` answering true.
    pub etcd: Duration,
    /// Spawn to the kube-apiserver's `/readyz` answering 200.
    pub kube_apiserver: Duration,
    /// Applying both CRDs until they are Established and served.
    pub crds: Duration,
}

impl fmt::Display for Startup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "etcd {:.2}s, kube-apiserver {:.2}s, CRDs {:.2}s",
            self.etcd.as_secs_f64(),
            self.kube_apiserver.as_secs_f64(),
            self.crds.as_secs_f64()
        )
    }
}

/// The shared server, reachable from the exit hook that kills it.
static SHARED: OnceCell<Option<ApiServer>> = OnceCell::const_new();

extern "C" fn kill_shared_at_exit() {
    if let Some(Some(server)) = SHARED.get() {
        server.kill_now();
        let _ = std::fs::remove_dir_all(server.dir.path());
    }
}

impl ApiServer {
    /// The test binary's shared server, started on first use.
    pub async fn shared() -> Option<&'static ApiServer> {
        SHARED
            .get_or_init(|| async {
                let server = Self::start(Opts::default()).await?;
                // SAFETY: registering a plain extern "C" function.
                unsafe { libc::atexit(kill_shared_at_exit) };
                Some(server)
            })
            .await
            .as_ref()
    }

    /// A server of the caller's own; `None` where Go is missing (the line is printed).
    pub async fn start(opts: Opts) -> Option<ApiServer> {
        let binaries = tokio::task::spawn_blocking(binaries)
            .await
            .expect("binaries")?;
        let dir = tempfile::Builder::new()
            .prefix("sniroute-apiserver-")
            .tempdir()
            .expect("tempdir");
        let pki = ServerPki::write(dir.path());
        let etcd_port = free_port();
        let started = Instant::now();
        let etcd = start_etcd(binaries, dir.path(), etcd_port);
        let etcd = Mutex::new(etcd);
        wait_etcd(&etcd, etcd_port);
        let etcd_ready = started.elapsed();

        let audit_log = dir.path().join("audit.log");
        std::fs::write(dir.path().join("audit-policy.yaml"), AUDIT_POLICY).unwrap();
        let mut server = ApiServer {
            service_cidr: service_cidr(),
            port: free_port(),
            kube_apiserver: Mutex::new(None),
            etcd,
            etcd_port,
            pki,
            opts,
            binaries,
            audit_log,
            dir,
            startup: Startup::default(),
        };
        let started = Instant::now();
        server.start_kube_apiserver().await;
        let kube_ready = started.elapsed();
        let started = Instant::now();
        server.install_crds().await;
        server.startup = Startup {
            etcd: etcd_ready,
            kube_apiserver: kube_ready,
            crds: started.elapsed(),
        };
        // Not captured: the numbers the README quotes.
        let _ = writeln!(
            std::io::stderr(),
            "apiserver harness: started in {} (service CIDR {})",
            server.startup,
            server.service_cidr
        );
        Some(server)
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The kube-apiserver's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `--service-cluster-ip-range`, inside 127.0.0.0/8.
    pub fn service_cidr(&self) -> &str {
        &self.service_cidr
    }

    fn kube_apiserver_args(&self, port: u16) -> Vec<String> {
        let d = self.dir.path();
        let p = |name: &str| d.join(name).display().to_string();
        let mut args = vec![
            format!("--etcd-servers=http://127.0.0.1:{}", self.etcd_port),
            "--bind-address=127.0.0.1".to_owned(),
            format!("--secure-port={port}"),
            format!("--cert-dir={}", p("certs")),
            format!("--tls-cert-file={}", self.pki.cert.display()),
            format!("--tls-private-key-file={}", self.pki.key.display()),
            format!("--token-auth-file={}", self.pki.tokens.display()),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_owned(),
            format!("--service-account-key-file={}", self.pki.sa_pub.display()),
            format!(
                "--service-account-signing-key-file={}",
                self.pki.sa_key.display()
            ),
            "--authorization-mode=Node,RBAC".to_owned(),
            // On by default since 1.25; named so that a change of defaults cannot drop it.
            "--enable-admission-plugins=PodSecurity".to_owned(),
            // As on a management cluster (AKS): privileged pods exist, PodSecurity gates them.
            "--allow-privileged=true".to_owned(),
            format!("--service-cluster-ip-range={}", self.service_cidr),
            // The only compaction is the one a test asks etcd for.
            "--etcd-compaction-interval=0".to_owned(),
            format!("--audit-policy-file={}", p("audit-policy.yaml")),
            format!("--audit-log-path={}", self.audit_log.display()),
            "--audit-log-format=json".to_owned(),
            "--profiling=false".to_owned(),
            "--v=1".to_owned(),
        ];
        if self.opts.no_watch_cache {
            args.push("--watch-cache=false".to_owned());
        }
        args
    }

    /// Starts the kube-apiserver (again, after [`ApiServer::stop_kube_apiserver`]) on the
    /// same port and etcd, and waits for `/readyz`.
    pub async fn start_kube_apiserver(&self) {
        let args = self.kube_apiserver_args(self.port);
        let log = self.dir.path().join("kube-apiserver.log");
        // Keep the first run's log: a restart appends to a new file.
        let log = if log.exists() {
            self.dir
                .path()
                .join(format!("kube-apiserver.{}.log", nanos()))
        } else {
            log
        };
        let proc = Proc::start("kube-apiserver", &self.binaries.kube_apiserver, &args, log);
        *self.kube_apiserver.lock().unwrap() = Some(proc);
        self.wait_ready().await;
    }

    /// Stops the kube-apiserver (SIGTERM, as a rollout does); etcd keeps running.
    pub fn stop_kube_apiserver(&self) {
        if let Some(mut proc) = self.kube_apiserver.lock().unwrap().take() {
            proc.stop(Duration::from_secs(10));
        }
    }

    /// A second kube-apiserver on the same etcd, as another replica of the control plane
    /// would be; stopped on drop.
    pub async fn second_kube_apiserver(&self) -> SecondApiServer {
        let port = free_port();
        let proc = Proc::start(
            "kube-apiserver (second)",
            &self.binaries.kube_apiserver,
            &self.kube_apiserver_args(port),
            self.dir.path().join(format!("kube-apiserver-{port}.log")),
        );
        let second = SecondApiServer {
            proc,
            url: format!("https://127.0.0.1:{port}"),
            ca_pem: self.pki.ca_pem.clone(),
            admin_token: self.pki.admin_token.clone(),
        };
        wait_readyz(&second.admin().await, READY_WITHIN, || second.proc.tail()).await;
        second
    }

    async fn wait_ready(&self) {
        let admin = self.admin().await;
        wait_readyz(&admin, READY_WITHIN, || {
            self.kube_apiserver
                .lock()
                .unwrap()
                .as_ref()
                .map(Proc::tail)
                .unwrap_or_default()
        })
        .await;
    }

    fn kill_now(&self) {
        if let Ok(mut kas) = self.kube_apiserver.try_lock() {
            if let Some(proc) = kas.as_mut() {
                proc.stop(Duration::ZERO);
            }
        }
        if let Ok(mut etcd) = self.etcd.try_lock() {
            etcd.stop(Duration::ZERO);
        }
    }

    /// An admin client (`system:masters`, by token).
    pub async fn admin(&self) -> Admin {
        Admin::connect(&kubeconfig_yaml(
            &self.url(),
            &self.pki.ca_pem,
            "admin",
            &self.pki.admin_token,
        ))
        .await
    }

    /// A kubeconfig for `user` with `token`, pointing at `server` (the API server itself, or
    /// a [`Relay`] in front of it), written into `dir`.
    pub fn write_kubeconfig(&self, dir: &Path, server: &str, user: &str, token: &str) -> PathBuf {
        let path = dir.join(format!("kubeconfig-{user}"));
        std::fs::write(
            &path,
            kubeconfig_yaml(server, &self.pki.ca_pem, user, token),
        )
        .unwrap();
        path
    }

    async fn install_crds(&self) {
        install_crds(&self.admin().await).await;
    }

    // --- etcd ---

    /// etcd's client URL.
    pub fn etcd_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd_port)
    }

    /// etcd's current revision (its gRPC gateway, `/v3/kv/range`).
    pub fn etcd_revision(&self) -> i64 {
        // Any key: the header carries the store's revision.
        let reply = etcd_post(self.etcd_port, "/v3/kv/range", &json!({"key": "Lw=="}));
        reply["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no revision in {reply}"))
    }

    /// Compacts etcd's history up to its current revision, through etcd's own API; returns
    /// the revision. Any read or watch from an older revision then fails (410 Gone).
    pub fn compact_etcd(&self) -> i64 {
        let revision = self.etcd_revision();
        let reply = etcd_post(
            self.etcd_port,
            "/v3/kv/compaction",
            &json!({"revision": revision.to_string(), "physical": true}),
        );
        assert!(reply.get("header").is_some(), "compaction failed: {reply}");
        revision
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// Waits for sniroute's `/readyz` 200: its first full list of the real server (whose CRD
/// objects are large) takes longer than the fake's.
pub async fn wait_ready(proxy: &Sniroute) {
    crate::common::eventually(crate::common::STARTUP * 3, "/readyz 200", || async {
        (proxy.readyz() == 200).then_some(())
    })
    .await;
}

/// Another kube-apiserver on the same etcd; stopped on drop.
pub struct SecondApiServer {
    proc: Proc,
    url: String,
    ca_pem: String,
    admin_token: String,
}

impl SecondApiServer {
    /// An admin client of this replica.
    pub async fn admin(&self) -> Admin {
        Admin::connect(&kubeconfig_yaml(
            &self.url,
            &self.ca_pem,
            "admin",
            &self.admin_token,
        ))
        .await
    }
}

fn service_cidr() -> String {
    // A /16 of its own per server, away from 127.0.0.1, so that servers started at once
    // (test binaries, other worktrees) rarely allocate the same ClusterIP.
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let counter = u64::from(COUNTER.fetch_add(1, Ordering::Relaxed));
    let seed = nanos() ^ (u64::from(std::process::id()) << 20) ^ (counter * 0x9e37_79b9);
    format!("127.{}.0.0/16", 16 + seed % 224)
}

fn start_etcd(binaries: &Binaries, dir: &Path, port: u16) -> Proc {
    let peer = free_port();
    let args = vec![
        "--name=etcd".to_owned(),
        format!("--data-dir={}", dir.join("etcd").display()),
        format!("--listen-client-urls=http://127.0.0.1:{port}"),
        format!("--advertise-client-urls=http://127.0.0.1:{port}"),
        format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-cluster=etcd=http://127.0.0.1:{peer}"),
        // Test data: durability is not the point, and fsync on a shared disk is slow.
        "--unsafe-no-fsync".to_owned(),
        "--log-level=warn".to_owned(),
    ];
    Proc::start("etcd", &binaries.etcd, &args, dir.join("etcd.log"))
}

fn wait_etcd(etcd: &Mutex<Proc>, port: u16) {
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        if let Ok((200, body)) = crate::common::http_get(addr, "/health") {
            if body.contains("\"true\"") {
                return;
            }
        }
        let mut etcd = etcd.lock().unwrap();
        if let Some(status) = etcd.exited() {
            panic!("{} exited ({status}):\n{}", etcd.name, etcd.tail());
        }
        assert!(
            Instant::now() < deadline,
            "etcd not healthy within {READY_WITHIN:?}:\n{}",
            etcd.tail()
        );
        drop(etcd);
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn wait_readyz(admin: &Admin, within: Duration, log: impl Fn() -> String) {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(reply) = admin.raw(Method::GET, "/readyz", None, "").await {
            if reply.status == 200 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "kube-apiserver not ready within {within:?}:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A POST to etcd's gRPC gateway (JSON over HTTP/1.1), its JSON answer.
fn etcd_post(port: u16, path: &str, body: &Value) -> Value {
    let body = body.to_string();
    let mut tcp = StdTcpStream::connect(("127.0.0.1", port)).expect("connect etcd");
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        tcp,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    tcp.read_to_string(&mut reply).expect("etcd reply");
    let (head, payload) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    assert!(head.starts_with("HTTP/1.1 200"), "etcd {path}: {reply}");
    // The gateway may answer chunked: the JSON object is the one line that starts with `{`.
    let json = payload
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or(payload);
    serde_json::from_str(json).unwrap_or_else(|e| panic!("etcd {path}: {e}: {reply}"))
}
