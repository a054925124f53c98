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

use common::apiserver::{
    condition_true, hypershift, install_crds, parse_manifests, pem, render, render_base, Admin,
    NAMESPACE,
};
use common::cluster::{
    in_cidr, production_image, rendered_base, Cluster, NODE, POD_CIDR, SERVICE_CIDR,
};
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
        let ip = pod_ip(pod);
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

/// A pod's IP, which must be in the pod range.
fn pod_ip(pod: &Value) -> Ipv4Addr {
    let ip: Ipv4Addr = pod["status"]["podIP"]
        .as_str()
        .and_then(|ip| ip.parse().ok())
        .unwrap_or_else(|| panic!("no pod IP: {}", pod["status"]));
    assert!(in_cidr(ip, POD_CIDR), "{ip}");
    ip
}

/// `sniroute_table_hash` on a sniroute pod's admin port.
fn table_hash(ip: Ipv4Addr) -> f64 {
    common::Scrape::at(SocketAddr::from((ip, 9090)))
        .unwrap_or_else(|e| panic!("{ip}: {e}"))
        .value("sniroute_table_hash", &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_one_of_two_sniroute_pods_leaves_the_other_s_connections_and_the_replacement_gets_the_same_table(
) {
    let Some((cluster, hosted)) = hosted("podloss", 4).await else {
        return;
    };
    let (admin, api) = (&hosted.admin, hosted.hc.api());
    let selector = "app.kubernetes.io/name=sniroute";
    let before = pods(admin, NAMESPACE, selector).await;
    assert_eq!(before.len(), 2, "{before:#?}");
    let (victim, survivor) = (&before[0], &before[1]);
    let name = |pod: &Value| {
        pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let (victim_name, survivor_name) = (name(victim), name(survivor));
    let (victim_ip, survivor_ip) = (pod_ip(victim), pod_ip(survivor));
    // Straight to each pod's SNI port, not through the ClusterIP, so that which pod carries
    // which connection is known.
    let sni_port = |ip| SocketAddr::from((ip, 8443));
    let mut kept = Vec::new();
    for n in 0..3 {
        let mut conn = common::tls_connect(sni_port(survivor_ip), &api)
            .await
            .unwrap_or_else(|e| panic!("through {survivor_name}: {e}"));
        conn.echo(format!("survivor {n}\n").as_bytes()).await;
        kept.push(conn);
    }
    let mut on_victim = common::tls_connect(sni_port(victim_ip), &api)
        .await
        .unwrap_or_else(|e| panic!("through {victim_name}: {e}"));
    on_victim.echo(b"victim\n").await;
    let survivor_hash = table_hash(survivor_ip);
    assert_eq!(table_hash(victim_ip), survivor_hash, "two pods, two tables");

    let deleted = tokio::time::Instant::now();
    assert!(
        admin
            .delete("v1", "Pod", Some(NAMESPACE), &victim_name)
            .await
    );
    // While the victim terminates (preStop, shutdown_delay, drain), and after it is gone.
    for n in 0..5 {
        for conn in &mut kept {
            conn.echo(format!("survivor, {n} s after the deletion\n").as_bytes())
                .await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    wait_rolled_out(
        cluster,
        admin,
        NAMESPACE,
        "sniroute",
        selector,
        std::slice::from_ref(&victim_name),
    )
    .await;
    let replaced = deleted.elapsed();
    let after = pods(admin, NAMESPACE, selector).await;
    let replacement = after
        .iter()
        .find(|p| name(p) != survivor_name)
        .unwrap_or_else(|| panic!("no replacement: {after:#?}"));
    let still = after
        .iter()
        .find(|p| name(p) == survivor_name)
        .unwrap_or_else(|| panic!("the survivor {survivor_name} is gone: {after:#?}"));
    // The same pod, never restarted: nothing touched it.
    assert_eq!(still["metadata"]["uid"], survivor["metadata"]["uid"]);
    assert_eq!(
        still["status"]["containerStatuses"][0]["restartCount"], 0,
        "{}",
        still["status"]
    );
    for (n, conn) in kept.iter_mut().enumerate() {
        conn.echo(format!("survivor {n}, after the replacement\n").as_bytes())
            .await;
    }
    let replacement_ip = pod_ip(replacement);
    // Ready means its table is loaded from every watch's first list; equal once it has
    // applied the same events (bounded: no object changes while the serial lock is held).
    let replacement_hash = common::eventually(
        Duration::from_secs(30),
        "the replacement's table hash equal to the survivor's",
        || async {
            let (theirs, ours) = (table_hash(replacement_ip), table_hash(survivor_ip));
            (theirs == ours).then_some(theirs)
        },
    )
    .await;
    assert_eq!(
        table_hash(survivor_ip),
        survivor_hash,
        "the survivor's table moved"
    );

    // The victim's connection: closed when its pod drained (a clean end, as in a rollout).
    let mut rest = Vec::new();
    let end = tokio::time::timeout(common::STEP, on_victim.stream.read_to_end(&mut rest)).await;
    eprintln!(
        "deleted {victim_name}: replaced by {} (Ready, available) in {replaced:?}; 3 connections \
         on {survivor_name} echoed throughout; table hash {replacement_hash} on both \
         (was {survivor_hash}); the victim's connection ended {end:?}",
        name(replacement)
    );
    // New connections through the Service reach the hosted API on the two pods.
    for _ in 0..10 {
        common::tls_connect(hosted.addr, &api)
            .await
            .expect("through sniroute's Service after the replacement");
    }
}

/// metrics-server (`tests/cluster/build.sh metrics-server`) deployed with upstream's own
/// manifests from the same module (`manifests/base`: RBAC, the APIService, the Service and
/// Deployment), its image replaced by a local one, and `--kubelet-insecure-tls` (the
/// kubelet's serving certificate is self-signed here); once the metrics API serves the
/// sniroute pods. Once per test binary.
async fn metrics_server(cluster: &'static Cluster, admin: &Admin) {
    static DEPLOYED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    DEPLOYED
        .get_or_init(|| async {
            let started = tokio::time::Instant::now();
            let built = tokio::task::spawn_blocking(|| cluster.metrics_server_build())
                .await
                .expect("metrics-server build");
            let image = "sniroute.test/metrics-server:1";
            let binary = built.join("metrics-server");
            cluster.import_image(
                image,
                "1000:1000",
                &["/metrics-server"],
                &[],
                &[(&binary, "/metrics-server")],
            );
            // kustomize takes no absolute resource path: upstream's base goes beside the overlay.
            let overlay = cluster.dir().join("metrics-server");
            let upstream = overlay.join("upstream");
            std::fs::create_dir_all(&upstream).expect("metrics-server overlay");
            let base = built.join("manifests/base");
            for file in std::fs::read_dir(&base).expect("upstream's manifests/base") {
                let file = file.expect("manifests/base entry").path();
                let name = file.file_name().expect("a file name");
                std::fs::copy(&file, upstream.join(name)).expect("copy manifests/base");
            }
            let (name, tag) = image.rsplit_once(':').expect("a tag");
            let kustomization = json!({
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": ["upstream"],
                "images": [{
                    "name": "gcr.io/k8s-staging-metrics-server/metrics-server",
                    "newName": name,
                    "newTag": tag
                }],
                "patches": [{
                    "target": {"kind": "Deployment", "name": "metrics-server"},
                    "patch": json!([{
                        "op": "add",
                        "path": "/spec/template/spec/containers/0/args/-",
                        "value": "--kubelet-insecure-tls"
                    }]).to_string()
                }]
            });
            // JSON is YAML.
            std::fs::write(
                overlay.join("kustomization.yaml"),
                kustomization.to_string(),
            )
            .expect("kustomization.yaml");
            let rendered = render(&overlay).expect("a kustomize renderer (deploy/base rendered)");
            for object in parse_manifests(&rendered) {
                admin.apply(&object).await;
            }
            admin
                .wait_for(
                    "apiregistration.k8s.io/v1",
                    "APIService",
                    None,
                    "v1beta1.metrics.k8s.io",
                    AVAILABLE_WITHIN,
                    |s| condition_true(s, "Available"),
                )
                .await;
            let uri = format!("/apis/metrics.k8s.io/v1beta1/namespaces/{NAMESPACE}/pods");
            common::eventually(AVAILABLE_WITHIN, "sniroute's pod metrics", || async {
                let reply = admin.raw(Method::GET, &uri, None, "").await.ok()?;
                (reply.body["items"].as_array()?.len() >= 2).then_some(())
            })
            .await;
            eprintln!(
                "metrics-server built, deployed and serving pod metrics in {:?}",
                started.elapsed()
            );
        })
        .await;
}

/// The zone label the autoscaling test gives the node: the component's zone spread
/// (DoNotSchedule) places no pod on a node without one.
const ZONE: &str = "topology.kubernetes.io/zone";

async fn label_zone(admin: &Admin, zone: Option<&str>) {
    admin
        .merge_patch(
            "v1",
            "Node",
            None,
            NODE,
            &json!({"metadata": {"labels": {ZONE: zone}}}),
        )
        .await;
}

/// The HPA, polled every second until `check` holds on its status (bounded by `within`);
/// each new status is printed, the HPA's own account of its decisions.
async fn wait_hpa(
    admin: &Admin,
    within: Duration,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    let mut last = Value::Null;
    loop {
        let hpa = admin
            .get(
                "autoscaling/v2",
                "HorizontalPodAutoscaler",
                Some(NAMESPACE),
                "sniroute",
            )
            .await
            .expect("the HPA");
        let status = &hpa["status"];
        if check(status) {
            return hpa;
        }
        if *status != last {
            eprintln!("waiting for {what}: {status}");
            last = status.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}: {hpa:#}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Clients that keep sniroute's CPU busy: each opens a connection to `addr`, sends a
/// ClientHello for a name no route has, and reads until sniroute closes it (the cheapest
/// connection for the client, a whole accept, parse, route miss and log line for
/// sniroute); the number they completed.
fn cpu_load(
    addr: SocketAddr,
    clients: usize,
    stop: watch::Receiver<bool>,
) -> (Arc<AtomicU64>, Vec<JoinHandle<()>>) {
    let hello = common::with_sni(
        &common::fixture(common::FIXTURES_WITH_SNI[0]),
        b"load.autoscaling.invalid",
    );
    let done = Arc::new(AtomicU64::new(0));
    let tasks = (0..clients)
        .map(|_| {
            let (hello, done, stop) = (hello.clone(), done.clone(), stop.clone());
            tokio::spawn(async move {
                while !*stop.borrow() {
                    let attempt = async {
                        let mut conn = tokio::net::TcpStream::connect(addr).await?;
                        conn.write_all(&hello).await?;
                        let mut rest = Vec::new();
                        conn.read_to_end(&mut rest).await
                    };
                    if let Ok(Ok(_)) = tokio::time::timeout(common::STEP, attempt).await {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    (done, tasks)
}

/// The HPA's current average CPU utilization (percent of requests), if it has one.
fn utilization(status: &Value) -> Option<u64> {
    status["currentMetrics"][0]["resource"]["current"]["averageUtilization"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_autoscaling_component_scales_sniroute_from_2_to_3_under_cpu_load_and_back() {
    let Some((cluster, _serial, admin)) = on_base().await else {
        return;
    };
    // Whatever happens, the shared Deployment goes back to deploy/base for the other tests.
    let outcome = tokio::spawn(autoscale(cluster, admin.clone())).await;
    admin
        .delete(
            "autoscaling/v2",
            "HorizontalPodAutoscaler",
            Some(NAMESPACE),
            "sniroute",
        )
        .await;
    // Unlabelled first: with a zone, the base's required anti-affinity allows one pod.
    label_zone(&admin, None).await;
    let base = parse_manifests(&render_base().expect("rendered before"));
    for object in base
        .iter()
        .filter(|o| o["kind"] == "Deployment" || o["kind"] == "PodDisruptionBudget")
    {
        admin.apply(object).await;
    }
    wait_available(cluster, &admin, NAMESPACE, "sniroute").await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn autoscale(cluster: &'static Cluster, admin: Admin) {
    metrics_server(cluster, &admin).await;
    let selector = "app.kubernetes.io/name=sniroute";
    // Hand the replica count over to the HPA without a dip: another field manager takes
    // `replicas` first, so that applying a Deployment without it keeps the value rather
    // than resetting it to 1 (Kubernetes' documented migration to an HPA).
    let handover = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "sniroute", "namespace": NAMESPACE},
        "spec": {"replicas": 2}
    });
    admin
        .try_apply_as(&handover, "handover-to-hpa")
        .await
        .unwrap_or_else(|e| panic!("handover: {e}"));
    // One zone here: the base's pods' required zone anti-affinity would keep every new pod
    // out of the only zone once it is labelled, so they go first (unlabelled, no spread
    // yet). With the base's own requirement of replicas + 1 zones, the move to the spread
    // completes in one rollout: each new pod goes to a zone its old pods have left.
    let old = pod_names(&pods(&admin, NAMESPACE, selector).await);
    patch_deployment(
        &admin,
        NAMESPACE,
        "sniroute",
        json!({"spec": {"template": {"spec": {"affinity": null}}}}),
    )
    .await;
    wait_rolled_out(cluster, &admin, NAMESPACE, "sniroute", selector, &old).await;
    label_zone(&admin, Some("sniroute-test-a")).await;
    let old = pod_names(&pods(&admin, NAMESPACE, selector).await);

    let overlay = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/overlays/autoscaled");
    let mut objects = parse_manifests(&render(&overlay).expect("rendered"));
    let hpa = objects
        .iter_mut()
        .find(|o| o["kind"] == "HorizontalPodAutoscaler")
        .expect("the component's HPA");
    // The test's tuning of the shipped HPA: 2 to 3 (one zone here), a target that the load
    // one shared 2-core machine can make crosses, and a scale-down in seconds, not 10 min.
    let spec = &mut hpa["spec"];
    spec["minReplicas"] = json!(2);
    spec["maxReplicas"] = json!(3);
    spec["metrics"][0]["resource"]["target"]["averageUtilization"] = json!(20);
    spec["behavior"]["scaleDown"] = json!({
        "stabilizationWindowSeconds": 30,
        "policies": [{"type": "Pods", "value": 1, "periodSeconds": 15}]
    });
    for object in &objects {
        admin.apply(object).await;
    }
    // The spread replaces the anti-affinity: a rollout, never below 2 replicas.
    wait_rolled_out(cluster, &admin, NAMESPACE, "sniroute", selector, &old).await;
    let deployment = wait_available(cluster, &admin, NAMESPACE, "sniroute").await;
    assert_eq!(deployment["spec"]["replicas"], 2, "{}", deployment["spec"]);
    let idle = wait_hpa(&admin, AVAILABLE_WITHIN, "a CPU reading", |s| {
        utilization(s).is_some()
    })
    .await;
    let idle = utilization(&idle["status"]);

    let (stop_tx, stop) = watch::channel(false);
    let (done, clients) = cpu_load(sniroute_service(&admin).await, 24, stop);
    let loaded = tokio::time::Instant::now();
    let up = wait_hpa(&admin, AVAILABLE_WITHIN, "3 replicas desired", |s| {
        s["desiredReplicas"] == 3
    })
    .await;
    let decided_up = loaded.elapsed();
    let busy = utilization(&up["status"]);
    let deployment = wait_available(cluster, &admin, NAMESPACE, "sniroute").await;
    assert_eq!(
        deployment["status"]["readyReplicas"], 3,
        "{}",
        deployment["status"]
    );
    let scaled_up = loaded.elapsed();
    stop_tx.send(true).expect("clients listening");
    for client in clients {
        client.await.expect("load client");
    }
    let connections = done.load(Ordering::Relaxed);
    let stopped = tokio::time::Instant::now();
    wait_hpa(&admin, AVAILABLE_WITHIN * 2, "2 replicas desired", |s| {
        s["desiredReplicas"] == 2
    })
    .await;
    let decided_down = stopped.elapsed();
    let deployment = wait_available(cluster, &admin, NAMESPACE, "sniroute").await;
    assert_eq!(deployment["spec"]["replicas"], 2, "{}", deployment["spec"]);
    let scaled_down = stopped.elapsed();
    eprintln!(
        "HPA (CPU target 20% of 250m): idle {idle:?}%; under load {busy:?}% ({connections} \
         refused-SNI connections by 24 clients in {scaled_up:?}); 3 desired {decided_up:?} \
         after the load started, 3 available {scaled_up:?}; load stopped: 2 desired after \
         {decided_down:?}, 2 replicas after {scaled_down:?}"
    );
}
