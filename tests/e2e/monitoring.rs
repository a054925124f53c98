//! End to end with a real Prometheus (Debian's): two real sniroute replicas are scraped every
//! second while real traffic flows through them (routed, refused, a route whose only endpoint
//! is dead and ejected, an endpoint ejected on a route that still routes, a reload that
//! revokes connections and makes the replicas' tables differ, a broken config); the rules of
//! deploy/components/monitoring are evaluated every second. Every recording and alert
//! expression and every dashboard query must parse and return data through `/api/v1/query`,
//! every alert must become active and render its annotations from labels that exist, and the
//! replica alerts must fire once the replicas drain (not ready, still scraped) and then are
//! killed. So no alert or panel can refer to a metric or label that sniroute does not expose.
//!
//! Beside it, without Prometheus: `sniroute_ready` says what `/readyz` says, before the
//! Kubernetes source's first list, after it, and while draining.
//!
//! Without Prometheus installed the test prints a loud line and returns; CI sets
//! `SNIROUTE_REQUIRE_PROMETHEUS`, which makes that a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::fake_kube::{FakeKube, Kind};
use crate::common::prometheus::{self, Prometheus, Target};
use crate::common::*;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

const NAMESPACE: &str = "hypershift-sharedingress";
/// The job the rules select: the ServiceMonitor names it after the metrics Service.
const JOB: &str = "sniroute-metrics";
const RULES: &str = include_str!("../../deploy/components/monitoring/prometheusrule.yaml");
const DASHBOARD: &str = include_str!("../../deploy/components/monitoring/dashboard.json");
/// How long the rules get to see each condition: a few scrapes and evaluations.
const SETTLE: Duration = Duration::from_secs(30);
/// Refusal outcomes SnirouteRefusalSpike watches that this test's traffic does not drive (they
/// need client_limits and a full hello budget; tests/e2e/client_limits.rs and robustness.rs drive
/// them): their series must still exist, at zero, so the rule's selectors match real labels.
const UNDRIVEN_OUTCOMES: [&str; 2] = ["client_limited", "overloaded"];
/// The alerts on replicas: quiet while the replicas serve, raised at the end by draining
/// them (the readiness two) and then killing them (the scrape two).
const REPLICA_ALERTS: [&str; 4] = [
    "SnirouteReplicaNotReady",
    "SnirouteNoReadyReplica",
    "SnirouteReplicaDown",
    "SnirouteAllReplicasDown",
];

// === The rules and the dashboard, as shipped ===

/// The PrometheusRule's groups, with the thresholds an overlay would set for a test that
/// lasts seconds: every rate and count threshold 0 (any refusal, error or revocation counts),
/// the jump factor 1, and half of max_connections.
fn rule_groups() -> Value {
    let rule: Value = serde_saphyr::from_str(RULES).expect("prometheusrule.yaml parses");
    let mut groups = rule["spec"]["groups"].clone();
    let mut patched = 0;
    for group in groups.as_array_mut().expect("spec.groups") {
        for rule in group["rules"].as_array_mut().expect("rules") {
            let Some(record) = rule["record"].as_str() else {
                continue;
            };
            let value = match record {
                "sniroute:threshold:active_connections_ratio" => "vector(0.5)",
                "sniroute:threshold:refusals_jump_factor" => "vector(1)",
                r if r.starts_with("sniroute:threshold:") => "vector(0)",
                _ => continue,
            };
            rule["expr"] = value.into();
            patched += 1;
        }
    }
    assert!(patched >= 10, "only {patched} thresholds found to patch");
    groups
}

/// Every rule of `groups`: (name, expr, annotations).
fn rules_of(groups: &Value) -> Vec<(String, String, Value)> {
    groups
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .map(|r| {
            let name = r["alert"].as_str().or(r["record"].as_str()).unwrap();
            let expr = match &r["expr"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (name.to_owned(), expr, r["annotations"].clone())
        })
        .collect()
}

/// The dashboard's queries with its variables set as Grafana would for this namespace and
/// every replica: (panel title, expr, legend format).
fn dashboard_queries() -> Vec<(String, String, String)> {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("dashboard.json parses");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or("?").to_owned();
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"]
                .as_str()
                .expect("target expr")
                .replace("$namespace", NAMESPACE)
                .replace("$pod", ".*")
                .replace("$__rate_interval", "1m");
            assert!(!expr.contains('$'), "{title}: unset variable in {expr}");
            let legend = target["legendFormat"].as_str().unwrap_or("").to_owned();
            queries.push((title.clone(), expr, legend));
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            queries.push((
                format!("variable {}", variable["name"]),
                query.replace("$namespace", NAMESPACE),
                String::new(),
            ));
        }
    }
    queries
}

/// `{{label}}` and `$labels.label` names in a template.
fn template_labels(template: &str) -> BTreeSet<String> {
    let word = |s: &str| {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect::<String>()
    };
    let mut labels = BTreeSet::new();
    for part in template.split("$labels.").skip(1) {
        labels.insert(word(part));
    }
    if !template.contains("$labels") {
        for part in template.split("{{").skip(1) {
            let name = word(part.trim_start());
            if !name.is_empty() {
                labels.insert(name);
            }
        }
    }
    labels
}

// === Traffic ===

fn hello_for(name: &str) -> Vec<u8> {
    with_sni(&fixture("openssl-3.0.bin"), name.as_bytes())
}

/// Writes `bytes` and waits for the proxy to close the connection.
async fn refused(addr: SocketAddr, bytes: &[u8]) {
    let mut tcp = raw_connect(addr).await;
    let _ = tcp.write_all(bytes).await;
    let out = read_until_closed(&mut tcp, STEP).await;
    assert!(out.end.closed(), "a refused connection stayed open");
}

/// Until `stop`: on every replica, a routed connection, and one refused as `unknown_sni`,
/// `backend_unreachable` and `client_hello_timeout`; so the rates the rules look at are
/// steady while the test checks them. Returns how many rounds ran.
async fn keep_traffic_flowing(replicas: Vec<SocketAddr>, stop: Arc<AtomicBool>) -> usize {
    let unknown = hello_for("nobody.other.test");
    let down = hello_for("down.example.test");
    let mut rounds = 0;
    while !stop.load(Ordering::SeqCst) {
        for &addr in &replicas {
            assert_routes(addr, "api.example.test", "good")
                .await
                .echo(b"ping")
                .await;
            refused(addr, &unknown).await;
            refused(addr, &down).await;
            // A hello that never ends: closed at client_hello_timeout.
            refused(addr, &[0x16, 0x03, 0x01]).await;
        }
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rounds
}

fn config(good: SocketAddr, dead: SocketAddr, down: SocketAddr, with_gone: bool) -> String {
    let mut cfg = Cfg::new()
        .set("max_connections", "10")
        // Draining replicas stay up (and scraped) for the rest of the test.
        .set("shutdown_delay", "5m")
        .set("client_hello_timeout", "200ms")
        .set("revoke_grace", "100ms")
        .set(
            "outlier_detection",
            "{consecutive_failures: 1, base_ejection_time: 5m, max_ejection_time: 5m}",
        )
        .route("api", &["api.example.test"], &[good])
        .route("flaky", &["flaky.example.test"], &[dead, good])
        .route("down", &["down.example.test"], &[down]);
    if with_gone {
        cfg = cfg.route("gone", &["gone.example.test"], &[good]);
    }
    cfg.yaml()
}

/// Blocking Prometheus API calls, off the runtime's worker.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

// === The test ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_alert_rule_and_panel_holds_on_a_real_prometheus() {
    let Some(binary) = prometheus::binary() else {
        return;
    };
    let started = Instant::now();
    let groups = rule_groups();
    let rules = rules_of(&groups);
    let queries = dashboard_queries();

    let good = TlsBackend::start("good");
    let (dead, down) = (closed_port(), closed_port());
    let mut a = Sniroute::start(config(good.addr(), dead, down, true));
    let mut b = Sniroute::start(config(good.addr(), dead, down, true));
    let targets: Vec<Target> = [("sniroute-a", &a), ("sniroute-b", &b)]
        .iter()
        .map(|(pod, replica)| Target {
            addr: replica.admin_addr(),
            labels: vec![
                ("namespace".into(), NAMESPACE.into()),
                ("pod".into(), (*pod).into()),
            ],
        })
        .collect();
    let prom = blocking(|| Prometheus::start(&binary, JOB, &targets, &groups));

    // A few quiet evaluations first: the day's average the refusal jump is measured against.
    blocking(|| {
        prom.wait_query(&format!("up{{job=\"{JOB}\"}} == 1"), SETTLE, |r| {
            r.len() == 2
        });
        prom.wait_query(
            "count_over_time(sniroute:connections:rate5m[1m])",
            SETTLE,
            |r| r.iter().any(|s| value(s) >= 3.0),
        );
        // Two processes on one config serve one table: the same hash, nothing diverged.
        let diverged = prom.wait_query("sniroute:table_diverged", SETTLE, |r| r.len() == 2);
        assert!(diverged.iter().all(|s| value(s) == 0.0), "{diverged:?}");
        let hashes = prom.query("count(count_values(\"hash\", sniroute_table_hash))");
        assert_eq!(hashes.as_ref().map(|r| value(&r[0])), Ok(1.0), "{hashes:?}");
    });
    let quiet_at = started.elapsed();

    // Connections held open: 6 of b's max_connections 10, and two on a route that a's
    // reload removes (revoked after revoke_grace).
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(assert_routes(b.proxy_addr(), "api.example.test", "good").await);
    }
    let mut doomed = Vec::new();
    for _ in 0..2 {
        doomed.push(assert_routes(a.proxy_addr(), "gone.example.test", "good").await);
    }
    // Round robin makes one of two connections to flaky try its dead endpoint first: one
    // failure ejects it (the connection still routes to the good one).
    for replica in [&a, &b] {
        for _ in 0..2 {
            assert_routes(replica.proxy_addr(), "flaky.example.test", "good")
                .await
                .echo(b"x")
                .await;
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn(keep_traffic_flowing(
        vec![a.proxy_addr(), b.proxy_addr()],
        stop.clone(),
    ));

    // a reloads without `gone` (its table differs from b's from now on); b gets a broken
    // config and keeps its table (a file source error).
    let mark = a.log_mark();
    a.rename_config(config(good.addr(), dead, down, false));
    a.wait_log_since(mark, &["table published"], STEP);
    let mark = b.log_mark();
    b.rename_config("listen: [\n");
    b.wait_log_since(mark, &["config reload failed"], STEP);
    a.wait_log_since(0, &["connection revoked"], STEP);

    // Every alert but the replica ones becomes active (pending or firing), with its
    // annotations rendered from labels that exist.
    let expected: BTreeSet<&str> = rules
        .iter()
        .filter(|(name, _, annotations)| {
            annotations.is_object() && !REPLICA_ALERTS.contains(&name.as_str())
        })
        .map(|(name, _, _)| name.as_str())
        .collect();
    let mut active: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let deadline = Instant::now() + SETTLE;
    loop {
        for rule in blocking(|| prom.rules()) {
            let name = rule["name"].as_str().unwrap_or_default().to_owned();
            assert_ne!(rule["health"], "err", "{name}: {}", rule["lastError"]);
            if rule["type"] == "alerting" && rule["state"] != "inactive" {
                active.insert(name, rule["alerts"].as_array().cloned().unwrap_or_default());
            }
        }
        let spikes: BTreeSet<&str> = active
            .get("SnirouteRefusalSpike")
            .into_iter()
            .flatten()
            .filter_map(|alert| alert["labels"]["outcome"].as_str())
            .collect();
        let missing: Vec<&&str> = expected
            .iter()
            .filter(|name| !active.contains_key(**name))
            .collect();
        let spikes_missing: Vec<&str> = ["unknown_sni", "client_hello_timeout"]
            .into_iter()
            .filter(|o| !spikes.contains(o))
            .collect();
        if missing.is_empty() && spikes_missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not active within {SETTLE:?}: {missing:?}, refusal spikes {spikes_missing:?}; \
             active: {active:#?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let alerts_at = started.elapsed();
    for (name, _, annotations) in &rules {
        if let Some(instances) = active.get(name) {
            assert_annotations(name, annotations, instances);
        }
    }
    // Per route: the route whose every endpoint fails is named, not the one whose ejected
    // endpoint left it a good one.
    let backends_down: BTreeSet<&str> = active["SnirouteRouteBackendsDown"]
        .iter()
        .filter_map(|alert| alert["labels"]["route"].as_str())
        .collect();
    assert_eq!(backends_down, BTreeSet::from(["down"]), "{active:#?}");

    // Every expression parses and returns data: the alerts' (their conditions hold now),
    // the recording rules', every dashboard query; legends name labels the series carry.
    blocking(|| {
        for (name, expr, _) in &rules {
            if REPLICA_ALERTS.contains(&name.as_str()) {
                prom.query(expr)
                    .unwrap_or_else(|e| panic!("{name}: {expr}: {e}"));
                continue;
            }
            prom.wait_query(expr, SETTLE, |r| !r.is_empty());
            if !name.starts_with("Sniroute") {
                prom.wait_query(name, SETTLE, |r| !r.is_empty());
            }
        }
        for (title, expr, legend) in &queries {
            let expr = match expr.strip_prefix("label_values(") {
                // Grafana's label_values(SELECTOR, LABEL): every series of SELECTOR has LABEL.
                Some(args) => {
                    let (selector, label) = args.trim_end_matches(')').rsplit_once(',').unwrap();
                    let result = prom.wait_query(selector, SETTLE, |r| !r.is_empty());
                    let label = label.trim();
                    assert!(
                        result.iter().all(|s| s["metric"][label].is_string()),
                        "{title}: series of {selector} without {label}: {result:?}"
                    );
                    continue;
                }
                None => expr,
            };
            let result = prom.wait_query(expr, SETTLE, |r| !r.is_empty());
            for label in template_labels(legend) {
                assert!(
                    result.iter().any(|s| s["metric"][&label].is_string()),
                    "{title}: legend names {label}, which no series of {expr} carries: \
                     {result:?}"
                );
            }
        }
    });
    let queries_at = started.elapsed();
    let exposed = blocking(|| prom.query("sniroute_connections_total").unwrap());
    for outcome in UNDRIVEN_OUTCOMES {
        assert!(
            exposed.iter().any(|s| s["metric"]["outcome"] == outcome),
            "outcome {outcome} is not exposed: {exposed:?}"
        );
    }

    stop.store(true, Ordering::SeqCst);
    let rounds = traffic.await.expect("traffic task");
    drop(held);
    drop(doomed);

    // b drains: still scraped, no longer ready. a still is, so no replica-wide alert.
    b.signal("TERM");
    blocking(|| {
        let not_ready = prom.wait_query(&expr_of(&rules, "SnirouteReplicaNotReady"), SETTLE, |r| {
            !r.is_empty()
        });
        assert_eq!(pods(&not_ready), ["sniroute-b"], "{not_ready:?}");
        let alerts = prom.wait_active(&rules, "SnirouteReplicaNotReady", SETTLE);
        assert_eq!(pods(&alerts), ["sniroute-b"], "{alerts:?}");
        let none_ready = prom.query(&expr_of(&rules, "SnirouteNoReadyReplica"));
        assert_eq!(none_ready, Ok(Vec::new()), "a is ready");
    });
    // a drains too: both scraped, neither ready.
    a.signal("TERM");
    blocking(|| {
        prom.wait_query(&expr_of(&rules, "SnirouteNoReadyReplica"), SETTLE, |r| {
            r.len() == 1
        });
        prom.wait_active(&rules, "SnirouteNoReadyReplica", SETTLE);
        let not_ready = prom.wait_query(&expr_of(&rules, "SnirouteReplicaNotReady"), SETTLE, |r| {
            r.len() == 2
        });
        assert_eq!(
            pods(&not_ready),
            ["sniroute-a", "sniroute-b"],
            "{not_ready:?}"
        );
        let all_down = prom.query(&expr_of(&rules, "SnirouteAllReplicasDown"));
        assert_eq!(all_down, Ok(Vec::new()), "both are scraped");
    });
    let drained_at = started.elapsed();

    // Replica b dies: its scrape fails. Then a: no replica is left.
    drop(b);
    blocking(|| {
        let down = prom.wait_query(r#"up{job="sniroute-metrics"} == 0"#, SETTLE, |r| {
            !r.is_empty()
        });
        assert_eq!(down[0]["metric"]["pod"], "sniroute-b", "{down:?}");
        let result = prom.wait_query(&expr_of(&rules, "SnirouteReplicaDown"), SETTLE, |r| {
            !r.is_empty()
        });
        assert_eq!(pods(&result), ["sniroute-b"], "{result:?}");
    });
    drop(a);
    blocking(|| {
        prom.wait_query(&expr_of(&rules, "SnirouteAllReplicasDown"), SETTLE, |r| {
            r.len() == 1
        });
        prom.wait_active(&rules, "SnirouteAllReplicasDown", SETTLE);
        // With nothing scraped, no readiness series is left: the scrape alert pages alone.
        let none_ready = prom.query(&expr_of(&rules, "SnirouteNoReadyReplica"));
        assert_eq!(none_ready, Ok(Vec::new()));
    });
    eprintln!(
        "monitoring e2e: {} rules, {} dashboard queries, {rounds} traffic rounds; quiet \
         baseline at {quiet_at:?}, every alert active at {alerts_at:?}, every query \
         answered at {queries_at:?}, both replicas drained at {drained_at:?}, all done in \
         {:?}",
        rules.len(),
        queries.len(),
        started.elapsed()
    );
}

/// The sample value of one result entry.
fn value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The expression of the rule `name`.
fn expr_of(rules: &[(String, String, Value)], name: &str) -> String {
    rules
        .iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, expr, _)| expr.clone())
        .unwrap_or_else(|| panic!("no rule {name}"))
}

/// The `pod` labels of query results or alerts, sorted.
fn pods(results: &[Value]) -> Vec<String> {
    let mut pods: Vec<String> = results
        .iter()
        .map(|r| {
            let labels = if r["metric"].is_object() {
                &r["metric"]
            } else {
                &r["labels"]
            };
            labels["pod"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    pods.sort();
    pods
}

/// Every annotation of each active instance of the alert `name` rendered, from labels the
/// instance carries.
fn assert_annotations(name: &str, annotations: &Value, instances: &[Value]) {
    for instance in instances {
        for (key, template) in annotations.as_object().unwrap() {
            let rendered = instance["annotations"][key].as_str().unwrap_or_default();
            assert!(
                !rendered.is_empty() && !rendered.contains("<no value>"),
                "{name}: annotation {key} rendered {rendered:?} from {template}"
            );
            for label in template_labels(template.as_str().unwrap()) {
                let got = instance["labels"][&label].as_str().unwrap_or_default();
                assert!(
                    !got.is_empty(),
                    "{name}: annotation {key} names label {label}, which the alert lacks: \
                     {instance}"
                );
            }
        }
    }
}

trait WaitActive {
    /// Waits until the alert `name` is pending or firing; checks its annotations and returns
    /// its instances.
    fn wait_active(
        &self,
        rules: &[(String, String, Value)],
        name: &str,
        within: Duration,
    ) -> Vec<Value>;
}

impl WaitActive for Prometheus {
    fn wait_active(
        &self,
        rules: &[(String, String, Value)],
        name: &str,
        within: Duration,
    ) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let active = self
                .rules()
                .into_iter()
                .find(|r| r["name"] == name && r["state"] != "inactive");
            if let Some(rule) = active {
                let instances = rule["alerts"].as_array().cloned().unwrap_or_default();
                let (_, _, annotations) = rules.iter().find(|(n, _, _)| n == name).unwrap();
                assert_annotations(name, annotations, &instances);
                return instances;
            }
            assert!(
                Instant::now() < deadline,
                "{name} not active within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// `sniroute_ready` and `/readyz` answer from one state: they agree while the Kubernetes
/// source's first list is held back, once it is in, and while draining. (The fake API
/// server, because a real one cannot hold back one list while answering the others.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ready_gauge_says_what_readyz_says() {
    let fake = FakeKube::start();
    fake.hold_lists(Kind::Service);
    let dir = tempfile::tempdir().unwrap();
    let cfg = Cfg::new()
        .set("kubernetes", "{}")
        .set("shutdown_delay", "1m");
    let proxy = Sniroute::start_kube(cfg.yaml(), &fake.kubeconfig(dir.path()));
    // /readyz is asked before and after the scrape: when the two differ, readiness changed
    // in between and the round is tried again.
    let agree = |status: u16, why: &str| {
        let deadline = Instant::now() + STARTUP;
        loop {
            let (before, body) = proxy.get("/readyz").unwrap();
            let gauge = Scrape::of(&proxy).value("sniroute_ready", &[]);
            let (after, _) = proxy.get("/readyz").unwrap();
            if before == status && after == status {
                assert!(body.contains(why), "{body}");
                assert_eq!(
                    gauge,
                    f64::from(u8::from(status == 200)),
                    "/readyz {status} {body}"
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz not {status} within {STARTUP:?}: {body}"
            );
            std::thread::sleep(POLL);
        }
    };
    eventually(STARTUP, "a Service list request", || async {
        (fake.count_requests(&["GET /api/v1/services?"]) > 0).then_some(())
    })
    .await;
    agree(503, "kubernetes source");
    fake.release();
    agree(200, "ready");
    proxy.signal("TERM");
    agree(503, "draining");
}
