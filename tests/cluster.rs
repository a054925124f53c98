//! End to end on a real one-node cluster (tests/common/cluster.rs): sniroute runs as pods
//! that the real kubelet starts from an image of the binary under test, with `deploy/base`
//! applied as shipped.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::apiserver::{hypershift, install_crds, parse_manifests, pem, Admin, NAMESPACE};
use common::cluster::{in_cidr, production_image, rendered_base, Cluster, POD_CIDR, SERVICE_CIDR};
use hyper::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Held by every test that rolls or scales a shared Deployment, so that one test's load
/// never runs through another's rollout.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a Deployment gets to become available (minReadySeconds is 15s).
const AVAILABLE_WITHIN: Duration = Duration::from_secs(240);

/// The pods matching `selector` in `namespace`.
async fn pods(admin: &Admin, namespace: &str, selector: &str) -> Vec<Value> {
    let uri = format!("/api/v1/namespaces/{namespace}/pods?labelSelector={selector}");
    let reply = admin
        .raw(Method::GET, &uri, None, "")
        .await
        .unwrap_or_else(|e| panic!("GET {uri}: {e}"));
    assert_eq!(reply.status, 200, "GET {uri}: {}", reply.body);
    reply.body["items"].as_array().cloned().unwrap_or_default()
}

/// Waits until Deployment `namespace/name` has all its replicas updated, ready and available.
async fn wait_available(cluster: &Cluster, admin: &Admin, namespace: &str, name: &str) -> Value {
    let deadline = tokio::time::Instant::now() + AVAILABLE_WITHIN;
    loop {
        let deployment = admin
            .get("apps/v1", "Deployment", Some(namespace), name)
            .await
            .unwrap_or_else(|| panic!("no Deployment {namespace}/{name}"));
        let want = &deployment["spec"]["replicas"];
        let status = &deployment["status"];
        if status["observedGeneration"] == deployment["metadata"]["generation"]
            && &status["updatedReplicas"] == want
            && &status["readyReplicas"] == want
            && &status["availableReplicas"] == want
            && status["replicas"] == *want
        {
            return deployment;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Deployment {namespace}/{name} not available within {AVAILABLE_WITHIN:?}: {status}\npods: {:#}\n{}",
            Value::Array(pods(admin, namespace, "").await.iter().map(|p| p["status"].clone()).collect()),
            cluster.diagnostics()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The container log the kubelet wrote for `pod`'s container `container` (CRI format).
fn container_log(cluster: &Cluster, pod: &Value, container: &str) -> String {
    let meta = &pod["metadata"];
    let dir = cluster.dir().join("pod-logs").join(format!(
        "{}_{}_{}",
        meta["namespace"].as_str().unwrap_or_default(),
        meta["name"].as_str().unwrap_or_default(),
        meta["uid"].as_str().unwrap_or_default()
    ));
    let path = dir.join(container).join("0.log");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `deploy/base`'s config.yaml and every object as kustomize renders it, applied as
/// shipped (after the CRDs its source watches), with the image of the binary under test
/// imported under the name the Deployment asks for.
async fn apply_base(cluster: &Cluster, admin: &Admin) -> Option<()> {
    let rendered = rendered_base()?;
    let objects = parse_manifests(&rendered);
    let deployment = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("a Deployment");
    let image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .expect("the container's image");
    cluster.import_sniroute(image, Path::new(env!("CARGO_BIN_EXE_sniroute")));
    install_crds(admin).await;
    for object in &objects {
        admin.apply(object).await;
    }
    Some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_base_runs_as_shipped_and_becomes_ready_on_the_in_cluster_config() {
    let Some((cluster, _serial, admin)) = on_base().await else {
        return;
    };
    let deployment = wait_available(cluster, &admin, NAMESPACE, "sniroute").await;
    assert_eq!(
        deployment["status"]["readyReplicas"], 2,
        "{}",
        deployment["status"]
    );

    let service = admin
        .get("v1", "Service", Some(NAMESPACE), "sniroute")
        .await
        .expect("Service sniroute");
    let cluster_ip: Ipv4Addr = service["spec"]["clusterIP"]
        .as_str()
        .and_then(|ip| ip.parse().ok())
        .expect("a ClusterIP");
    assert!(in_cidr(cluster_ip, SERVICE_CIDR), "{cluster_ip}");

    let pods = pods(&admin, NAMESPACE, "app.kubernetes.io/name=sniroute").await;
    assert_eq!(pods.len(), 2, "{pods:#?}");
    for pod in &pods {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let status = &pod["status"]["containerStatuses"][0];
        // Ready through its own readinessProbe (/readyz: bound, table loaded, every watch
        // listed), and never restarted by its livenessProbe.
        assert_eq!(status["ready"], true, "{name}: {status}");
        assert_eq!(status["restartCount"], 0, "{name}: {status}");
        let ip: Ipv4Addr = pod["status"]["podIP"]
            .as_str()
            .and_then(|ip| ip.parse().ok())
            .expect("a pod IP");
        assert!(in_cidr(ip, POD_CIDR), "{name}: {ip}");
        // The probes' endpoints answer from the host too, through the node's bridge.
        for path in ["/readyz", "/healthz"] {
            let (code, body) = common::http_get(SocketAddr::from((ip, 9090)), path)
                .unwrap_or_else(|e| panic!("{name}: GET {path}: {e}"));
            assert_eq!(code, 200, "{name}: GET {path}: {body}");
        }
        // No kubeconfig: the client is the in-cluster one, from the mounted token and the
        // `kubernetes` Service's address the kubelet put in the environment.
        let container = &pod["spec"]["containers"][0];
        assert!(
            !container.to_string().contains("KUBECONFIG"),
            "{name}: {container}"
        );
        let log = container_log(cluster, pod, "sniroute");
        for kind in ["HostedCluster", "Route", "Service", "EndpointSlice"] {
            let quoted = format!("\"{kind}\"");
            assert!(
                log.lines()
                    .any(|l| l.contains("initial list applied") && l.contains(&quoted)),
                "{name}: no initial list of {kind}:\n{log}"
            );
        }
    }
    // The kernel's view of the two containers' processes: the image's user, not root, and
    // a read-only root filesystem, as the Deployment asks.
    let production = production_image();
    let processes = common::procfs::processes_running(&production.binary_path);
    assert_eq!(processes.len(), 2, "{processes:?}");
    for pid in processes {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let uid = production.user.split(':').next().unwrap_or_default();
        assert!(
            status
                .lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().skip(1).all(|u| u == uid)),
            "pid {pid} is not user {uid}:\n{status}"
        );
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
        let root = mounts
            .lines()
            .find(|l| l.split_whitespace().nth(4) == Some("/"))
            .unwrap_or_else(|| panic!("pid {pid}: no root mount:\n{mounts}"));
        assert!(
            root.split_whitespace()
                .nth(5)
                .is_some_and(|o| o.split(',').any(|o| o == "ro")),
            "pid {pid}: root is not read-only: {root}"
        );
    }
}

/// `deploy/base` applied and available, once per test binary; `None` where the cluster or
/// a renderer is missing (the line is printed).
async fn base(cluster: &'static Cluster) -> Option<()> {
    static BASE: tokio::sync::OnceCell<Option<()>> = tokio::sync::OnceCell::const_new();
    *BASE
        .get_or_init(|| async {
            let admin = cluster.admin().await;
            apply_base(cluster, &admin).await?;
            wait_available(cluster, &admin, NAMESPACE, "sniroute").await;
            Some(())
        })
        .await
}

/// The shared cluster with `deploy/base` available, the serial lock held and an admin
/// client; `None` where the cluster or a renderer is missing (the line is printed).
async fn on_base() -> Option<(
    &'static Cluster,
    tokio::sync::MutexGuard<'static, ()>,
    Admin,
)> {
    let cluster = Cluster::shared().await?;
    base(cluster).await?;
    let serial = SERIAL.lock().await;
    Some((cluster, serial, cluster.admin().await))
}

/// The KAS stand-in's image (tests/cluster/kas-standin), imported once.
fn import_kas_standin(cluster: &Cluster) -> &'static str {
    static IMPORTED: std::sync::Once = std::sync::Once::new();
    const IMAGE: &str = "sniroute.test/kas-standin:1";
    IMPORTED.call_once(|| {
        let binary = cluster.built("kas-standin");
        cluster.import_image(
            IMAGE,
            "65532:65532",
            &["/kas-standin"],
            &[],
            &[(&binary, "/kas-standin")],
        );
    });
    IMAGE
}

/// The hosted cluster's kube-apiserver as HyperShift runs it: a Deployment of `replicas`
/// TLS servers (the stand-in, with a certificate for the cluster's API name from the tests'
/// CA) selected by the `kube-apiserver` Service, each ready when its port accepts.
async fn kas_deployment(cluster: &Cluster, admin: &Admin, hc: &hypershift::Cluster, replicas: u32) {
    let image = import_kas_standin(cluster);
    let (chain, key) = common::pki().leaf(&[&hc.api()]);
    let cert: String = chain.iter().map(|c| pem("CERTIFICATE", c)).collect();
    admin
        .apply(&json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "kas-serving", "namespace": hc.hcp},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": cert, "tls.key": pem("PRIVATE KEY", &key)}
        }))
        .await;
    admin
        .apply(&json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "kube-apiserver", "namespace": hc.hcp},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "kube-apiserver"}},
                "template": {
                    "metadata": {"labels": {"app": "kube-apiserver"}},
                    "spec": {
                        "terminationGracePeriodSeconds": 30,
                        "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                        "containers": [{
                            "name": "kas",
                            "image": image,
                            "imagePullPolicy": "Never",
                            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                            "ports": [{"name": "https", "containerPort": 6443}],
                            "readinessProbe": {"tcpSocket": {"port": 6443}, "periodSeconds": 1},
                            "securityContext": {
                                "allowPrivilegeEscalation": false,
                                "readOnlyRootFilesystem": true,
                                "capabilities": {"drop": ["ALL"]}
                            },
                            "volumeMounts": [{"name": "tls", "mountPath": "/tls", "readOnly": true}]
                        }],
                        "volumes": [{"name": "tls", "secret": {"secretName": "kas-serving"}}]
                    }
                }
            }
        }))
        .await;
    wait_available(cluster, admin, &hc.hcp, "kube-apiserver").await;
}

/// sniroute's Service as a client on the host reaches it: its ClusterIP, port 443.
async fn sniroute_service(admin: &Admin) -> SocketAddr {
    let service = admin
        .get("v1", "Service", Some(NAMESPACE), "sniroute")
        .await
        .expect("Service sniroute");
    hypershift::service_addr(&service)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosted_kube_apiserver_deployment_is_reached_through_sniroute_s_service_over_its_endpoint_slices(
) {
    let Some((cluster, _serial, admin)) = on_base().await else {
        return;
    };
    let hc = hypershift::create_cluster(&admin, "clusters", "standin", 1).await;
    kas_deployment(cluster, &admin, &hc, 3).await;
    let pods = pods(&admin, &hc.hcp, "app=kube-apiserver").await;
    let mut pod_ips: Vec<String> = pods
        .iter()
        .filter_map(|p| p["status"]["podIP"].as_str().map(str::to_owned))
        .collect();
    pod_ips.sort();
    let names: Vec<&str> = pods
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names.len(), 3, "{pods:#?}");

    // The EndpointSlice controller's slices list the three ready pods.
    let uri = format!(
        "/apis/discovery.k8s.io/v1/namespaces/{}/endpointslices?labelSelector=kubernetes.io/service-name=kube-apiserver",
        hc.hcp
    );
    let slices = common::eventually(
        AVAILABLE_WITHIN,
        "the controller's EndpointSlices",
        || async {
            let reply = admin.raw(Method::GET, &uri, None, "").await.ok()?;
            let items = reply.body["items"].as_array()?.clone();
            let mut ready: Vec<String> = items
                .iter()
                .filter(|s| {
                    s["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"]
                        == "endpointslice-controller.k8s.io"
                })
                .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
                .filter(|e| e["conditions"]["ready"] == true)
                .filter_map(|e| e["addresses"][0].as_str().map(str::to_owned))
                .collect();
            ready.sort();
            (ready == pod_ips).then_some(items)
        },
    )
    .await;
    assert!(!slices.is_empty());

    // A TLS client on the host: sniroute's ClusterIP (kube-proxy) -> a sniroute pod -> one
    // of the stand-in's pods (sniroute's own balancing over the slices).
    let addr = sniroute_service(&admin).await;
    let mut conn = common::eventually(
        AVAILABLE_WITHIN,
        "the hosted API through sniroute",
        || async { common::tls_connect(addr, &hc.api()).await.ok() },
    )
    .await;
    assert_eq!(conn.sni, hc.api());
    assert!(
        names.contains(&conn.backend.as_str()),
        "{} is none of {names:?}",
        conn.backend
    );
    conn.echo(b"GET /version\r\n").await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let conn = common::tls_connect(addr, &hc.api())
            .await
            .expect("through sniroute");
        assert!(
            names.contains(&conn.backend.as_str()),
            "{} is none of {names:?}",
            conn.backend
        );
        seen.insert(conn.backend);
    }
    // Every ready pod gets connections: sniroute balances over the slices' addresses, not
    // one ClusterIP.
    assert_eq!(seen.len(), 3, "{seen:?}");
}

/// What the looping clients saw: connections that completed a request/response, and every
/// failure with its error.
#[derive(Default)]
struct Load {
    ok: AtomicU64,
    failed: Mutex<Vec<String>>,
    /// Which backend pod each successful connection reached (stand-in pod names).
    backends: Mutex<BTreeMap<String, u64>>,
}

/// Two clients that never retry, each opening a new TLS connection to `addr` with `sni`
/// every ~20 ms and echoing one request through it, until `stop`.
fn start_load(
    addr: SocketAddr,
    sni: String,
    stop: watch::Receiver<bool>,
) -> (Arc<Load>, Vec<JoinHandle<()>>) {
    let load = Arc::new(Load::default());
    let clients = (0..2)
        .map(|client| {
            let (load, sni, mut stop) = (load.clone(), sni.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !*stop.borrow() {
                    n += 1;
                    let request = format!("client {client} request {n}\n");
                    let result = async {
                        let mut conn = common::tls_connect(addr, &sni).await?;
                        conn.stream.write_all(request.as_bytes()).await?;
                        let mut back = vec![0u8; request.len()];
                        tokio::time::timeout(common::STEP, conn.stream.read_exact(&mut back))
                            .await
                            .map_err(|_| {
                                std::io::Error::new(std::io::ErrorKind::TimedOut, "echo")
                            })??;
                        if back != request.as_bytes() {
                            return Err(std::io::Error::other("echo differs"));
                        }
                        Ok::<_, std::io::Error>(conn.backend)
                    }
                    .await;
                    match result {
                        Ok(backend) => {
                            load.ok.fetch_add(1, Ordering::Relaxed);
                            *load.backends.lock().unwrap().entry(backend).or_default() += 1;
                        }
                        Err(e) => load
                            .failed
                            .lock()
                            .unwrap()
                            .push(format!("client {client} #{n}: {e}")),
                    }
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(20)) => {}
                        _ = stop.changed() => {}
                    }
                }
            })
        })
        .collect();
    (load, clients)
}

/// Waits until Deployment `name`'s pods are exactly the ones of its current template
/// (the rollout done, every old pod gone).
async fn wait_rolled_out(
    cluster: &Cluster,
    admin: &Admin,
    namespace: &str,
    name: &str,
    selector: &str,
    old: &[String],
) {
    let deadline = tokio::time::Instant::now() + AVAILABLE_WITHIN * 2;
    loop {
        wait_available(cluster, admin, namespace, name).await;
        let names: Vec<String> = pods(admin, namespace, selector)
            .await
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
            .collect();
        if !names.iter().any(|n| old.contains(n)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "old pods {old:?} still there: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn pod_names(pods: &[Value]) -> Vec<String> {
    pods.iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
        .collect()
}

/// `kubectl rollout restart`: a new template annotation, so the Deployment replaces every pod.
async fn rollout_restart(admin: &Admin, namespace: &str, name: &str) {
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let annotations = json!({"kubectl.kubernetes.io/restartedAt": at.to_string()});
    patch_deployment(
        admin,
        namespace,
        name,
        json!({"spec": {"template": {"metadata": {"annotations": annotations}}}}),
    )
    .await;
}

/// A merge patch of Deployment `namespace/name`.
async fn patch_deployment(admin: &Admin, namespace: &str, name: &str, patch: Value) {
    admin
        .merge_patch("apps/v1", "Deployment", Some(namespace), name, &patch)
        .await;
}

/// Where the load tests start: `deploy/base` available, the serial lock held, and a hosted
/// cluster whose 3-replica stand-in answers through sniroute's Service.
struct Hosted {
    _serial: tokio::sync::MutexGuard<'static, ()>,
    admin: Admin,
    hc: hypershift::Cluster,
    /// sniroute's Service (ClusterIP:443).
    addr: SocketAddr,
}

async fn hosted(name: &str, index: usize) -> Option<(&'static Cluster, Hosted)> {
    let (cluster, serial, admin) = on_base().await?;
    let hc = hypershift::create_cluster(&admin, "clusters", name, index).await;
    kas_deployment(cluster, &admin, &hc, 3).await;
    let addr = sniroute_service(&admin).await;
    common::eventually(
        AVAILABLE_WITHIN,
        "the hosted API through sniroute",
        || async { common::tls_connect(addr, &hc.api()).await.ok() },
    )
    .await;
    Some((
        cluster,
        Hosted {
            _serial: serial,
            admin,
            hc,
            addr,
        },
    ))
}

impl Hosted {
    /// Runs the two looping clients from 2 s before a `rollout restart` of Deployment
    /// `namespace/name` until 2 s after only new pods are left, with `during` run right after
    /// the restart; what the clients saw and how long the rollout took.
    async fn restart_under_load(
        &self,
        cluster: &Cluster,
        namespace: &str,
        name: &str,
        selector: &str,
        during: impl std::future::Future<Output = ()>,
    ) -> (Arc<Load>, Duration) {
        let old = pod_names(&pods(&self.admin, namespace, selector).await);
        let (stop_tx, stop) = watch::channel(false);
        let (load, clients) = start_load(self.addr, self.hc.api(), stop);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let started = tokio::time::Instant::now();
        rollout_restart(&self.admin, namespace, name).await;
        during.await;
        wait_rolled_out(cluster, &self.admin, namespace, name, selector, &old).await;
        let rollout = started.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop_tx.send(true).expect("clients listening");
        for client in clients {
            client.await.expect("client task");
        }
        (load, rollout)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_restart_of_sniroute_under_load_fails_no_connection() {
    let Some((cluster, hosted)) = hosted("rollout", 2).await else {
        return;
    };
    // A connection opened before the rollout, on an old pod: it must go on working through
    // shutdown_delay and end only when its pod drains (closed, never reset mid-echo).
    let mut long_lived = common::tls_connect(hosted.addr, &hosted.hc.api())
        .await
        .expect("long-lived connection");
    let selector = "app.kubernetes.io/name=sniroute";
    let (load, rollout) = hosted
        .restart_under_load(cluster, NAMESPACE, "sniroute", selector, async {
            // Old pods go on serving what they carry while the rollout starts.
            tokio::time::sleep(Duration::from_secs(3)).await;
            long_lived.echo(b"still here\n").await;
        })
        .await;

    // The old pod closed it while draining (drain_timeout, or its listeners' end): a clean
    // end, not a reset.
    let mut rest = Vec::new();
    let end = tokio::time::timeout(common::STEP, long_lived.stream.read_to_end(&mut rest)).await;
    eprintln!(
        "long-lived connection through the rollout: {end:?}, {} bytes after",
        rest.len()
    );
    // Passthrough: sniroute ends the TCP connection (FIN), so the client sees the stream end
    // without a close_notify from the backend; a reset or a connection still open fails.
    match end {
        Ok(Ok(_)) => {}
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        other => panic!("the long-lived connection did not end cleanly: {other:?}"),
    }

    let ok = load.ok.load(Ordering::Relaxed);
    let failed = load.failed.lock().unwrap().clone();
    eprintln!(
        "rollout restart of sniroute under load: {rollout:?}; {ok} connections ok, {} failed; backends {:?}",
        failed.len(),
        load.backends.lock().unwrap()
    );
    assert!(
        failed.is_empty(),
        "{} failed connections: {failed:#?}",
        failed.len()
    );
    // ~2 clients x 1 per ~20 ms plus the handshake, over a rollout of tens of seconds.
    assert!(ok > 200, "only {ok} connections in {rollout:?}");
}

/// Sets Deployment `namespace/name`'s replicas.
async fn scale(admin: &Admin, namespace: &str, name: &str, replicas: u32) {
    patch_deployment(
        admin,
        namespace,
        name,
        json!({"spec": {"replicas": replicas}}),
    )
    .await;
}

/// Every sniroute pod's container log, joined.
async fn sniroute_logs(cluster: &Cluster, admin: &Admin) -> String {
    pods(admin, NAMESPACE, "app.kubernetes.io/name=sniroute")
        .await
        .iter()
        .map(|pod| container_log(cluster, pod, "sniroute"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_of_the_hosted_kube_apiserver_under_load_fails_no_new_connection_and_zero_replicas_refuse_cleanly(
) {
    let Some((cluster, hosted)) = hosted("kasroll", 3).await else {
        return;
    };
    let (admin, hc, addr) = (&hosted.admin, &hosted.hc, hosted.addr);
    let selector = "app=kube-apiserver";
    let old = pod_names(&pods(admin, &hc.hcp, selector).await);
    // Opened on an old stand-in pod: it keeps working while that pod terminates (the
    // stand-in, like a kube-apiserver, lets open connections finish).
    let mut long_lived = common::tls_connect(addr, &hc.api())
        .await
        .expect("long-lived connection");
    assert!(old.contains(&long_lived.backend), "{}", long_lived.backend);
    let mut echoes = 0;
    let (load, rollout) = hosted
        .restart_under_load(cluster, &hc.hcp, "kube-apiserver", selector, async {
            // Its pod is terminating (or about to be): what it carries still works, for
            // up to 10 s of the stand-in's 30 s drain.
            while pod_names(&pods(admin, &hc.hcp, selector).await).contains(&long_lived.backend)
                && echoes < 20
            {
                long_lived.echo(b"still here\n").await;
                echoes += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
        .await;
    let ok = load.ok.load(Ordering::Relaxed);
    let failed = load.failed.lock().unwrap().clone();
    let backends = load.backends.lock().unwrap().clone();
    eprintln!(
        "rollout of the KAS stand-in under load: {rollout:?}; {ok} connections ok, {} failed; \
         {echoes} echoes on a connection to a terminating pod; backends {backends:?}",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} failed connections: {failed:#?}",
        failed.len()
    );
    assert!(
        echoes > 0,
        "the long-lived connection's pod never terminated visibly"
    );
    let new = pod_names(&pods(admin, &hc.hcp, selector).await);
    assert!(
        new.iter().all(|n| backends.contains_key(n)),
        "the new pods {new:?} got no connection: {backends:?}"
    );

    // No replica: new connections are refused at once, with the reason in sniroute's log.
    scale(admin, &hc.hcp, "kube-apiserver", 0).await;
    let refused = common::eventually(AVAILABLE_WITHIN, "refusals with no replica", || async {
        common::tls_connect(addr, &hc.api()).await.err()
    })
    .await;
    assert_ne!(
        refused.kind(),
        std::io::ErrorKind::TimedOut,
        "a refusal must not hang: {refused}"
    );
    common::eventually(
        AVAILABLE_WITHIN,
        "a backend_unreachable log line",
        || async {
            let logs = sniroute_logs(cluster, admin).await;
            logs.lines()
                .any(|l| {
                    l.contains("connection refused")
                        && l.contains("\"reason\":\"backend_unreachable\"")
                })
                .then_some(())
        },
    )
    .await;
    // Scaled up again, it is reached again.
    scale(admin, &hc.hcp, "kube-apiserver", 3).await;
    wait_available(cluster, admin, &hc.hcp, "kube-apiserver").await;
    common::eventually(AVAILABLE_WITHIN, "the hosted API back", || async {
        common::tls_connect(addr, &hc.api()).await.ok()
    })
    .await;
}
