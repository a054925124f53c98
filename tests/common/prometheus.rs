//! A real Prometheus (Debian's `prometheus` binary) as a child process on loopback: it scrapes
//! the given targets every second, evaluates the given rule groups every second, and answers
//! its HTTP API (`/api/v1/query`, `/api/v1/rules`, `/api/v1/alerts`).
//!
//! Where the binary is missing, [`binary`] prints a loud line naming the package and returns
//! `None`, so a test can return early on a developer's machine; with
//! `SNIROUTE_REQUIRE_PROMETHEUS` set (CI installs the package and sets it) it panics instead.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::{closed_port, http_get, POLL, STARTUP};

/// The environment variable that turns a missing Prometheus into a failure.
pub const REQUIRE_ENV: &str = "SNIROUTE_REQUIRE_PROMETHEUS";

/// The `prometheus` binary: `PROMETHEUS_BIN`, else the one on PATH; `None` (after a loud
/// line on stderr) when there is none and [`REQUIRE_ENV`] is unset.
pub fn binary() -> Option<PathBuf> {
    let path = std::env::var_os("PROMETHEUS_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join("prometheus"))
                    .find(|candidate| candidate.is_file())
            })
        });
    if path.is_none() {
        let why = "prometheus is not installed: install Debian's `prometheus` package \
                   (bash deploy/components/monitoring/install-prometheus.sh)";
        if std::env::var_os(REQUIRE_ENV).is_some() {
            panic!("{why}; {REQUIRE_ENV} is set, so this is a failure");
        }
        // Straight to stderr, past the test harness's capture, so a passing run shows it.
        let _ = writeln!(
            std::io::stderr(),
            "\n!!!!! SKIPPED: {why}; the real-Prometheus test did not run !!!!!\n"
        );
    }
    path
}

/// One scrape target: an admin address and the target labels a ServiceMonitor would add.
pub struct Target {
    /// The `host:port` serving `/metrics`.
    pub addr: SocketAddr,
    /// Extra labels on every series of the target, e.g. `namespace` and `pod`.
    pub labels: Vec<(String, String)>,
}

/// A running Prometheus, killed on drop.
pub struct Prometheus {
    child: Child,
    _dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl Prometheus {
    /// Starts `binary` scraping `targets` as job `job` every second and evaluating `groups`
    /// (the `groups` list of a rule file, as JSON) every second; waits until it is ready.
    pub fn start(binary: &Path, job: &str, targets: &[Target], groups: &Value) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        // JSON is YAML: both files are written as JSON.
        let rules = dir.path().join("rules.json");
        std::fs::write(&rules, json!({ "groups": groups }).to_string()).unwrap();
        let static_configs: Vec<Value> = targets
            .iter()
            .map(|t| {
                let labels: serde_json::Map<String, Value> = t
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                    .collect();
                json!({ "targets": [t.addr.to_string()], "labels": labels })
            })
            .collect();
        let config = json!({
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "900ms",
                "evaluation_interval": "1s",
            },
            "rule_files": [rules],
            "scrape_configs": [{ "job_name": job, "static_configs": static_configs }],
        });
        let config_path = dir.path().join("prometheus.json");
        std::fs::write(&config_path, config.to_string()).unwrap();

        // The port is picked here, bound and released: another process may take it in
        // between, so a start that exits early is tried again on a new one.
        for _ in 0..3 {
            let addr = closed_port();
            let mut child = Command::new(binary)
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn prometheus");
            let deadline = Instant::now() + STARTUP;
            loop {
                if let Ok((200, _)) = http_get(addr, "/-/ready") {
                    return Self {
                        child,
                        _dir: dir,
                        addr,
                    };
                }
                if let Ok(Some(status)) = child.try_wait() {
                    eprintln!("prometheus on {addr} exited with {status}; trying another port");
                    break;
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    panic!("prometheus on {addr} not ready within {STARTUP:?}");
                }
                std::thread::sleep(POLL);
            }
        }
        panic!("prometheus did not start on three ports in a row");
    }

    /// `GET /api/v1/PATH?QUERY`: the `data` of a `success` answer, or the error text.
    pub fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{k}={}", percent_encode(v)))
            .collect();
        let url = format!("/api/v1/{path}?{}", query.join("&"));
        let (status, body) = http_get(self.addr, &url).map_err(|e| format!("GET {url}: {e}"))?;
        let answer: Value = serde_json::from_str(&body)
            .map_err(|e| format!("GET {url}: {status}, not JSON ({e}): {body}"))?;
        if answer["status"] != "success" {
            return Err(format!(
                "{} ({}): {}",
                answer["errorType"], status, answer["error"]
            ));
        }
        Ok(answer["data"].clone())
    }

    /// An instant query: the result vector (each `{metric, value}`), or the error text.
    pub fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let data = self.api("query", &[("query", expr)])?;
        match data["resultType"].as_str() {
            Some("vector") => Ok(data["result"].as_array().cloned().unwrap_or_default()),
            Some("scalar") => Ok(vec![json!({ "metric": {}, "value": data["result"] })]),
            other => Err(format!("{expr}: result type {other:?}")),
        }
    }

    /// Every rule of every group, as `/api/v1/rules` reports it (health, lastError, state).
    pub fn rules(&self) -> Vec<Value> {
        let data = self.api("rules", &[]).expect("GET /api/v1/rules");
        data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Polls `query(expr)` until `accept` takes the result; panics with the last one after
    /// `within`.
    pub fn wait_query(
        &self,
        expr: &str,
        within: Duration,
        accept: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.query(expr);
            if let Ok(result) = &got {
                if accept(result) {
                    return result.clone();
                }
            }
            if Instant::now() >= deadline {
                panic!("{expr}: not as expected within {within:?}; last: {got:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `value` with everything but RFC 3986's unreserved characters percent-encoded.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
