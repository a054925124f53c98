//! The upstream Gateway API conformance suite (`conformance/`: `sigs.k8s.io/gateway-api/
//! conformance` v1.6.1, the GATEWAY-TLS profile) against sniroute deployed from `deploy/base`
//! on the real one-node cluster (tests/common/cluster.rs), its backends the suite's own
//! echo-basic built from the same module. sniroute runs with `listener_ports`: each Gateway
//! gets its own Service (of type ClusterIP, no load balancer here) and reports its ClusterIP;
//! the suite connects from the host to it, and kube-proxy sends it to that Gateway's pod port.
//!
//! It passes when no test fails but the known failures ([`KNOWN_FAILURES`], each with its
//! reason; skipped unless `SNIROUTE_CONFORMANCE_ALL=1`) and at least [`PASSING`] pass. The
//! run's report is `target/tmp/conformance/report.yaml`, `go test`'s verdicts
//! `target/tmp/conformance/results.txt` and its log `target/tmp/conformance/suite.log`.
//! Skipped like the other cluster tests (one loud line) without root, Go or the node's
//! packages; `SNIROUTE_REQUIRE_CLUSTER=1` makes that a failure.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use common::apiserver::{apply_crds, condition_true, install_crds, parse_manifests};
use common::cluster::{build, rendered_base, Cluster};
use serde_json::json;

/// The GatewayClass the suite runs on (`run.sh`'s `--gateway-class`).
const CLASS: &str = "sniroute";
/// sniroute's `kubernetes.gateway_api.controller_name` in this test.
const CONTROLLER: &str = "sniroute.dev/gateway-controller";
/// The Gateway listeners' pod ports: deploy/base's NetworkPolicy admits this range.
const LISTENER_PORTS: &str = "20000-20999";
/// Set to `1` to run every test of the profile, the known failures too (about 25 minutes
/// more, mostly their timeouts): how `conformance/report.yaml` was made.
const ALL_ENV: &str = "SNIROUTE_CONFORMANCE_ALL";
/// The profile's tests that fail on sniroute today, and why (conformance/README.md has the
/// details). Skipped (`--skip-tests`) unless `SNIROUTE_CONFORMANCE_ALL=1`.
const KNOWN_FAILURES: &[(&str, &str)] = &[
    (
        "GatewayInvalidRouteKind",
        "expects HTTPRoute in an HTTP listener's supportedKinds",
    ),
    (
        "GatewayInvalidTLSConfiguration",
        "HTTPS listeners (TLS termination)",
    ),
    (
        "GatewayListenerUnsupportedProtocol",
        "expects an HTTP listener Accepted",
    ),
    (
        "GatewayModifyListeners",
        "adds HTTP and HTTPS listeners and expects them Accepted",
    ),
    (
        "GatewayObservedGenerationBump",
        "its Gateway's only listener is HTTP",
    ),
    (
        "GatewaySecretInvalidReferenceGrant",
        "HTTPS listeners (certificateRefs)",
    ),
    (
        "GatewaySecretMissingReferenceGrant",
        "HTTPS listeners (certificateRefs)",
    ),
    (
        "GatewaySecretReferenceGrantAllInNamespace",
        "HTTPS listeners (certificateRefs)",
    ),
    (
        "GatewaySecretReferenceGrantSpecific",
        "HTTPS listeners (certificateRefs)",
    ),
    (
        "TLSRouteInvalidNoMatchingListener",
        "waits for HTTP-only and HTTPS-only Gateways to be Accepted",
    ),
];
/// How many of the profile's tests pass (with the known failures skipped or not).
const PASSING: usize = 10;
/// How long sniroute gets to accept the GatewayClass after the objects are applied.
const ACCEPTED_WITHIN: Duration = Duration::from_secs(240);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The suite's tests (`TestConformance/NAME`) that `go test -v` reports as passed, failed and
/// skipped. The truth, where the report is not: the suite writes its report before the tests
/// marked parallel have run (they start when `TestConformance`'s body returns), so those count
/// as passed in it whatever they do.
#[derive(Debug, Default)]
struct Outcome {
    passed: BTreeSet<String>,
    failed: BTreeSet<String>,
    skipped: BTreeSet<String>,
}

fn outcome(log: &str) -> Outcome {
    let mut outcome = Outcome::default();
    for line in log.lines() {
        // `    --- FAIL: TestConformance/NAME (12.34s)`: a test, not one of its subtests.
        let Some(rest) = line.strip_prefix("    --- ") else {
            continue;
        };
        let Some((result, rest)) = rest.split_once(": TestConformance/") else {
            continue;
        };
        let name = rest.split_whitespace().next().unwrap_or_default();
        if name.contains('/') {
            continue;
        }
        let set = match result {
            "PASS" => &mut outcome.passed,
            "FAIL" => &mut outcome.failed,
            "SKIP" => &mut outcome.skipped,
            _ => continue,
        };
        set.insert(name.to_owned());
    }
    outcome
}

/// `deploy/base` as shipped, but for the Gateway API config (controller name, a Service per
/// Gateway from [`LISTENER_PORTS`]); with the GatewayClass.
async fn deploy(cluster: &Cluster) -> Option<()> {
    let rendered = rendered_base()?;
    let mut objects = parse_manifests(&rendered);
    for object in &mut objects {
        match object["kind"].as_str() {
            Some("ConfigMap") if object["metadata"]["name"] == "sniroute" => {
                let config = object["data"]["config.yaml"].as_str().expect("config.yaml");
                let gateway_api = format!(
                    "kubernetes:\n  gateway_api:\n    controller_name: {CONTROLLER}\n    \
                     listener_ports: {LISTENER_PORTS}\n    service_type: ClusterIP\n"
                );
                assert!(config.contains("\nkubernetes: {}\n"), "{config}");
                object["data"]["config.yaml"] =
                    json!(config.replace("\nkubernetes: {}\n", &format!("\n{gateway_api}")));
            }
            Some("Deployment") => {
                let image = object["spec"]["template"]["spec"]["containers"][0]["image"]
                    .as_str()
                    .expect("the container's image");
                cluster.import_sniroute(image, Path::new(env!("CARGO_BIN_EXE_sniroute")));
            }
            _ => {}
        }
    }
    let admin = cluster.admin().await;
    install_crds(&admin).await;
    // The suite's tests for the other route kinds are not run, but some Gateway tests apply
    // an HTTPRoute: every CRD of the standard channel is installed, as a cluster would have.
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("tests/crds/gateway-api"))
        .expect("tests/crds/gateway-api")
        .map(|entry| entry.expect("a CRD file").path())
        .filter(|path| !path.to_string_lossy().contains("_vap_"))
        .collect();
    files.sort();
    apply_crds(&admin, &files).await;
    for object in &objects {
        admin.apply(object).await;
    }
    admin
        .apply(&json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GatewayClass",
            "metadata": {"name": CLASS},
            "spec": {"controllerName": CONTROLLER}
        }))
        .await;
    // Accepted once a replica holds the Lease and has written status: sniroute is running.
    admin
        .wait_for(
            "gateway.networking.k8s.io/v1",
            "GatewayClass",
            None,
            CLASS,
            ACCEPTED_WITHIN,
            |class| condition_true(class, "Accepted"),
        )
        .await;
    Some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_tls_profile_passes_what_a_passthrough_implementation_serves() {
    let Some(cluster) = Cluster::shared().await else {
        return;
    };
    let started = Instant::now();
    let suite: PathBuf = tokio::task::spawn_blocking(|| build("conformance/build.sh", &[]))
        .await
        .expect("build");
    let images = std::fs::read_to_string(suite.join("echo-basic.images")).expect("images");
    let echo = suite.join("echo-basic");
    for image in images.lines().filter(|l| !l.is_empty()) {
        // The suite's pods run as the image's default user.
        cluster.import_image(
            image,
            "65532:65532",
            &["/echo-basic"],
            &[],
            &[(&echo, "/echo-basic")],
        );
    }
    if deploy(cluster).await.is_none() {
        return;
    }
    let ready = started.elapsed();

    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("conformance");
    std::fs::create_dir_all(&out).expect("output directory");
    let report = out.join("report.yaml");
    let _ = std::fs::remove_file(&report);
    let log = std::fs::File::create(out.join("suite.log")).expect("suite.log");
    let mut command = Command::new("bash");
    command
        .arg(repo().join("conformance/run.sh"))
        .arg(cluster.kubeconfig())
        .arg(&report);
    if !std::env::var(ALL_ENV).is_ok_and(|v| v == "1") {
        let names: Vec<&str> = KNOWN_FAILURES.iter().map(|(name, _)| *name).collect();
        command.arg(format!("--skip-tests={}", names.join(",")));
    }
    eprintln!("conformance: {command:?}");
    let status = tokio::task::spawn_blocking(move || {
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("suite.log"))
            .stderr(log)
            .status()
            .expect("run conformance/run.sh")
    })
    .await
    .expect("suite");
    let took = started.elapsed() - ready;
    // The suite exits non-zero when any test fails; the report says which.
    assert!(
        report.is_file(),
        "the suite wrote no report ({status}); see {}",
        out.join("suite.log").display()
    );
    let written = std::fs::read_to_string(&report).expect("the report");
    assert!(written.contains("name: GATEWAY-TLS"), "{written}");
    let log = std::fs::read_to_string(out.join("suite.log")).expect("suite.log");
    let run = outcome(&log);
    // The verdicts beside the report, as `go test -v` gives them.
    let verdicts: String = log
        .lines()
        .filter(|l| l.starts_with("    --- ") && !l.contains("SKIP"))
        .filter(|l| {
            l.split_whitespace()
                .nth(2)
                .is_some_and(|n| n.matches('/').count() == 1)
        })
        .map(|l| format!("{}\n", l.trim()))
        .collect();
    std::fs::write(out.join("results.txt"), verdicts).expect("results.txt");
    let known: BTreeMap<&str, &str> = KNOWN_FAILURES.iter().copied().collect();
    eprintln!(
        "conformance GATEWAY-TLS: {} passed {:?}, {} failed {:?}, {} skipped; setup {:.0}s, suite {:.0}s ({status})",
        run.passed.len(),
        run.passed,
        run.failed.len(),
        run.failed,
        run.skipped.len(),
        ready.as_secs_f64(),
        took.as_secs_f64()
    );
    for (name, why) in known.iter().filter(|(name, _)| run.failed.contains(**name)) {
        eprintln!("conformance: {name} fails, as known: {why}");
    }
    for name in known.keys().filter(|name| run.passed.contains(**name)) {
        eprintln!("conformance: {name} passes now: take it out of KNOWN_FAILURES and conformance/README.md");
    }
    let unexpected: Vec<&String> = run
        .failed
        .iter()
        .filter(|name| !known.contains_key(name.as_str()))
        .collect();
    assert!(
        unexpected.is_empty() && run.passed.len() >= PASSING,
        "failing, and not known to: {unexpected:?}; {} passed (at least {PASSING} should); see {}",
        run.passed.len(),
        out.join("suite.log").display()
    );
}
