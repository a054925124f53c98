//! sniroute side by side with HAProxy (default, and with splice forced on) and nginx
//! (`stream` + `ssl_preread`), with a direct connection as the ceiling: the same TLS and raw
//! backends, the same SNI table, on loopback, measured in one run.
//!
//! ```sh
//! bash benches/install-compare-deps.sh         # haproxy, nginx, libnginx-mod-stream (Debian)
//! cargo bench --bench compare                   # the full run (about 3.5 minutes)
//! cargo bench --bench compare -- --quick        # or COMPARE_QUICK=1: what CI runs (~90 s)
//! cargo bench --bench compare -- --only direct,sniroute   # a subset
//! COMPARE_BASELINE_BIN=/tmp/sniroute-main cargo bench --bench compare -- --quick
//! ```
//!
//! Prints a table and writes `target/compare/results.json`, `results.md` and `results.svg`
//! (the ratios to HAProxy and nginx as a bar chart). For each proxy:
//! 1. one raw stream each way after a captured ClientHello (Gbit/s, proxy CPU s per GB), and
//!    bulk TLS downloads (MB/s and proxy CPU s per GB);
//! 2. new TLS connections per second (full handshake + one small request/response) at 32 and
//!    256 concurrent clients, proxy CPU seconds per 10,000 connections, and the connect +
//!    handshake latency added versus direct (p50/p99, at 1 and at 32 clients);
//! 3. proxy RSS per idle established TLS connection, at 8,000 of them;
//! 4. time from a table change to the first connection routed by the new table (sniroute: the
//!    file rewritten; HAProxy: a `-sf` reload with the new file; nginx: SIGHUP).
//!
//! sniroute's variants are measured with it on new connections only (part 2) and reported
//! as ratios to it: `sniroute-limits` (`client_limits` set, refusing nobody: their cost per
//! connection) and, when `COMPARE_BASELINE_BIN` names another sniroute build, `sniroute-base`
//! (a change against, say, main, in the same run).
//!
//! Every proxy runs for the whole run; each measurement is split into rounds that visit every
//! proxy in turn, so drifting background load falls on all alike. Hidden modes for profiling
//! by hand: `--stream ADDR up|down MS` and `--rate DIR ADDR CONCURRENCY MS` (DIR: a previous
//! run's `target/compare/run`, for its CA).
//!
//! CPU and memory come from /proc/PID/{stat,status} of the proxy (and its worker processes).
//! The backends run in a child process of this harness (`--backend-child`), so their CPU is
//! neither the proxy's nor the load generator's.

// A benchmark measures wall-clock time; the ban on std's Instant is for paused-time tests.
#![allow(clippy::disallowed_methods)]

#[path = "compare/backend.rs"]
mod backend;
#[path = "compare/chart.rs"]
mod chart;
#[path = "compare/load.rs"]
mod load;
#[path = "compare/proxies.rs"]
mod proxies;
#[path = "compare/report.rs"]
mod report;

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::Resumption;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use proxies::{Backends, Kind, Running, TLS_HOST};

/// A real captured ClientHello (curl 7.88, SNI `api.example.test`, 517 bytes, one record).
const HELLO: &[u8] = include_bytes!("../tests/fixtures/clienthellos/curl-7.88.bin");

/// How long each part runs. Throughput and rate measurements are split into `rounds`, and
/// each round visits every proxy in turn, so a change in the machine's background load (other
/// builds on a shared 2-core machine) falls on all of them alike, not on whichever ran then.
#[derive(Clone, Copy, Debug)]
struct Plan {
    quick: bool,
    rounds: u32,
    /// Per round, per proxy, each way.
    raw: Duration,
    /// Per round, per proxy.
    bulk: Duration,
    bulk_streams: usize,
    latency: Duration,
    /// Per round, per proxy, per concurrency.
    rate: Duration,
    idle: usize,
    table_changes: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                rounds: 2,
                raw: Duration::from_millis(750),
                bulk: Duration::from_millis(750),
                bulk_streams: 2,
                latency: Duration::from_millis(1000),
                rate: Duration::from_millis(1000),
                idle: 8000,
                table_changes: 3,
            }
        } else {
            Self {
                quick,
                rounds: 4,
                raw: Duration::from_millis(1250),
                bulk: Duration::from_millis(1250),
                bulk_streams: 2,
                latency: Duration::from_secs(3),
                rate: Duration::from_millis(1500),
                idle: 8000,
                table_changes: 5,
            }
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--backend-child") {
        let dir = PathBuf::from(&args[i + 1]);
        return match backend::run(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("backend: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // For profiling by hand: one raw stream through ADDR, `up` or `down`, for MS milliseconds.
    if let Some(i) = args.iter().position(|a| a == "--stream") {
        let (Some(addr), Some(way), Some(ms)) = (
            args.get(i + 1).and_then(|a| a.parse().ok()),
            args.get(i + 2),
            args.get(i + 3).and_then(|a| a.parse().ok()),
        ) else {
            eprintln!("usage: --stream ADDR up|down MS");
            return ExitCode::FAILURE;
        };
        let up = way == "up";
        return match load::raw_stream(addr, HELLO, up, Duration::from_millis(ms)) {
            Ok((bytes, secs)) => {
                println!("{way}: {:.2} Gbit/s", bytes as f64 * 8.0 / secs / 1e9);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("stream: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // For profiling by hand: new TLS connections through ADDR from CONC clients for MS
    // milliseconds, trusting the CA a previous run left in DIR (target/compare/run).
    if let Some(i) = args.iter().position(|a| a == "--rate") {
        let parsed = (|| {
            let dir = PathBuf::from(args.get(i + 1)?);
            let addr: SocketAddr = args.get(i + 2)?.parse().ok()?;
            let conc: usize = args.get(i + 3)?.parse().ok()?;
            let ms: u64 = args.get(i + 4)?.parse().ok()?;
            Some((dir, addr, conc, ms))
        })();
        let Some((dir, addr, conc, ms)) = parsed else {
            eprintln!("usage: --rate DIR ADDR CONCURRENCY MS");
            return ExitCode::FAILURE;
        };
        let rate = std::fs::read(dir.join("ca.der"))
            .map(CertificateDer::from)
            .and_then(connector)
            .and_then(|connector| {
                let rt = tokio::runtime::Runtime::new()?;
                let dur = Duration::from_millis(ms);
                Ok(rt.block_on(load::conn_rate(addr, TLS_HOST, &connector, conc, dur)))
            });
        return match rate {
            Ok(rate) => {
                println!(
                    "{:.0} conn/s, {} errors, p50 {:.2} ms, p99 {:.2} ms",
                    rate.per_second(),
                    rate.errors,
                    rate.percentile_ms(0.5),
                    rate.percentile_ms(0.99)
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("rate: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let quick = args.iter().any(|a| a == "--quick")
        || std::env::var("COMPARE_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .or(std::env::var("COMPARE_ONLY").ok().as_ref())
        .map(|s| s.split(',').map(str::to_owned).collect());
    let baseline = std::env::var_os(proxies::BASELINE_ENV).is_some();
    let kinds: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| {
            only.as_ref()
                .is_none_or(|o| o.iter().any(|n| n == k.name()))
        })
        .filter(|&k| k != Kind::SnirouteBaseline || baseline)
        .collect();
    match run(Plan::new(quick), &kinds) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compare: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `target/` (or `CARGO_TARGET_DIR`).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// The sniroute binary: `SNIROUTE_BIN`, or the release build cargo made for this bench.
fn sniroute_binary() -> PathBuf {
    std::env::var_os("SNIROUTE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sniroute")))
}

/// Says what is missing and how to install it.
fn check_tools(kinds: &[Kind], sniroute: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let has = |tool: &str| {
        Command::new(tool)
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    if kinds
        .iter()
        .any(|k| matches!(k, Kind::Haproxy | Kind::HaproxySplice))
        && !has("haproxy")
    {
        missing.push("haproxy");
    }
    if kinds.contains(&Kind::Nginx) {
        if !has("nginx") {
            missing.push("nginx");
        }
        if !Path::new("/usr/lib/nginx/modules/ngx_stream_module.so").exists() {
            missing.push("libnginx-mod-stream");
        }
    }
    if !missing.is_empty() {
        return Err(io::Error::other(format!(
            "missing {}: install with `sudo bash benches/install-compare-deps.sh` \
             (or run a subset: --only direct,sniroute)",
            missing.join(", ")
        )));
    }
    if kinds.contains(&Kind::Sniroute) && !sniroute.exists() {
        return Err(io::Error::other(format!(
            "{} not found: `cargo build --release` (or set SNIROUTE_BIN)",
            sniroute.display()
        )));
    }
    Ok(())
}

/// The CA (for the clients) and a leaf for every bench name, written for the backend child.
fn make_pki(dir: &Path) -> io::Result<CertificateDer<'static>> {
    let bad = |e: rcgen::Error| io::Error::other(e.to_string());
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(bad)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "sniroute bench CA");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().map_err(bad)?;
    let ca = params.self_signed(&ca_key).map_err(bad)?;
    let issuer = Issuer::new(params, ca_key);
    let names = vec![
        "*.bench.test".to_owned(),
        proxies::RAW_HOST.to_owned(),
        "localhost".to_owned(),
    ];
    let mut leaf = CertificateParams::new(names).map_err(bad)?;
    leaf.use_authority_key_identifier_extension = true;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().map_err(bad)?;
    let cert = leaf.signed_by(&key, &issuer).map_err(bad)?;
    std::fs::write(dir.join("leaf.der"), cert.der())?;
    std::fs::write(dir.join("leaf.key"), key.serialize_der())?;
    std::fs::write(dir.join("ca.der"), ca.der())?;
    Ok(ca.der().clone())
}

/// A client that trusts the bench CA and never resumes: every connection is a full handshake.
fn connector(ca: CertificateDer<'static>) -> io::Result<TlsConnector> {
    let mut roots = RootCertStore::empty();
    roots.add(ca).map_err(io::Error::other)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The backend child process; killed on drop (it also exits when our end of its stdin closes).
struct BackendChild {
    child: Child,
    backends: Backends,
}

impl BackendChild {
    fn start(dir: &Path) -> io::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--backend-child")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        let ports: Vec<u16> = line
            .strip_prefix("ports ")
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        let [raw, tls] = ports[..] else {
            let _ = child.kill();
            return Err(io::Error::other(format!("backend child said {line:?}")));
        };
        Ok(Self {
            child,
            backends: Backends {
                raw: SocketAddr::from(([127, 0, 0, 1], raw)),
                tls: SocketAddr::from(([127, 0, 0, 1], tls)),
            },
        })
    }
}

impl Drop for BackendChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Results: metric key -> proxy name -> value.
pub type Results = BTreeMap<&'static str, BTreeMap<&'static str, f64>>;

fn run(plan: Plan, kinds: &[Kind]) -> io::Result<()> {
    let sniroute = sniroute_binary();
    check_tools(kinds, &sniroute)?;
    let out = target_dir().join("compare");
    let work = out.join("run");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let ca = make_pki(&work)?;
    let connector = connector(ca)?;
    let backend = BackendChild::start(&work)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let machine = report::Machine::probe();
    eprintln!(
        "compare: {} mode, {} cores ({}), kernel {}; backends raw {} tls {}",
        if plan.quick { "quick" } else { "full" },
        machine.nproc,
        machine.cpu,
        machine.kernel,
        backend.backends.raw,
        backend.backends.tls
    );
    let started = Instant::now();
    // Every proxy runs for the whole run (an idle one uses no CPU); each measurement reads
    // only the CPU of the proxy it loads.
    let mut bench = Bench {
        plan,
        rt,
        connector,
        proxies: Vec::new(),
        failed: Vec::new(),
        results: Results::new(),
    };
    for &kind in kinds {
        match Running::start(kind, backend.backends, &work.join(kind.name()), &sniroute) {
            Ok(running) => bench.proxies.push(running),
            Err(e) => bench.fail(kind, "start", &e),
        }
    }
    bench.measure_all();
    for proxy in &mut bench.proxies {
        proxy.stop();
    }
    let elapsed = started.elapsed();
    let report = report::Report::new(plan.quick, machine, bench.results, elapsed);
    println!("{}", report.markdown());
    std::fs::write(out.join("results.md"), report.markdown())?;
    std::fs::write(out.join("results.json"), report.json())?;
    std::fs::write(out.join("results.svg"), report.chart())?;
    eprintln!(
        "compare: wrote {}, results.json and results.svg ({:.0?})",
        out.join("results.md").display(),
        elapsed
    );
    if bench.failed.is_empty() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "failed: {}",
            bench.failed.join(", ")
        )))
    }
}

/// Sums over the rounds of one measurement, per proxy.
#[derive(Default)]
struct Sum {
    bytes: u64,
    secs: f64,
    cpu: f64,
    connections: u64,
    errors: u64,
    /// Connect + handshake, microseconds.
    handshake_us: Vec<u32>,
}

impl Sum {
    fn add(&mut self, other: Sum) {
        self.bytes += other.bytes;
        self.secs += other.secs;
        self.cpu += other.cpu;
        self.connections += other.connections;
        self.errors += other.errors;
        self.handshake_us.extend(other.handshake_us);
    }

    fn from_rate(rate: load::Rate, cpu: f64) -> Self {
        Self {
            secs: rate.seconds,
            cpu,
            connections: rate.connections,
            errors: rate.errors,
            handshake_us: rate.handshake_us,
            ..Self::default()
        }
    }

    /// The `p` quantile of the handshake times, ms.
    fn percentile_ms(&mut self, p: f64) -> f64 {
        if self.handshake_us.is_empty() {
            return f64::NAN;
        }
        self.handshake_us.sort_unstable();
        let i = ((self.handshake_us.len() - 1) as f64 * p).round() as usize;
        f64::from(self.handshake_us[i]) / 1000.0
    }
}

struct Bench {
    plan: Plan,
    rt: tokio::runtime::Runtime,
    connector: TlsConnector,
    proxies: Vec<Running>,
    failed: Vec<&'static str>,
    results: Results,
}

impl Bench {
    fn put(&mut self, key: &'static str, kind: Kind, value: f64) {
        self.results
            .entry(key)
            .or_default()
            .insert(kind.name(), value);
    }

    fn fail(&mut self, kind: Kind, what: &str, error: &dyn std::fmt::Display) {
        eprintln!("compare: {} FAILED at {what}: {error}", kind.name());
        self.failed.push(kind.name());
        self.proxies.retain(|p| p.kind != kind);
    }

    /// Runs `one` against every proxy still standing, `rounds` times over, summing per proxy.
    /// A proxy whose run fails is reported and left out from then on. sniroute's variants
    /// take part only in the new-connection measurements.
    fn rounds(
        &mut self,
        what: &str,
        rounds: u32,
        one: impl Fn(&Self, &Running) -> io::Result<Sum>,
    ) -> Vec<(Kind, Sum)> {
        let new_connections = matches!(what, "warm-up" | "latency" | "cps_c32" | "cps_c256");
        let mut sums: Vec<(Kind, Sum)> = self
            .proxies
            .iter()
            .filter(|p| new_connections || !p.kind.variant())
            .map(|p| (p.kind, Sum::default()))
            .collect();
        for _ in 0..rounds {
            for (kind, sum) in &mut sums {
                let Some(i) = self.proxies.iter().position(|p| p.kind == *kind) else {
                    continue;
                };
                match one(self, &self.proxies[i]) {
                    Ok(got) => sum.add(got),
                    Err(e) => {
                        let kind = *kind;
                        self.fail(kind, what, &e);
                    }
                }
                // Let closes and TIME_WAITs settle before the next proxy is loaded.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let standing: Vec<Kind> = self.proxies.iter().map(|p| p.kind).collect();
        sums.retain(|(kind, _)| standing.contains(kind));
        sums
    }

    fn measure_all(&mut self) {
        let plan = self.plan;
        // Warm-up: a few connections of each kind, so first-use allocations are not measured.
        self.rounds("warm-up", 1, |b, p| {
            b.rt.block_on(load::conn_rate(
                p.target(false),
                TLS_HOST,
                &b.connector,
                4,
                Duration::from_millis(200),
            ));
            load::raw_stream(p.target(true), HELLO, false, Duration::from_millis(100))?;
            Ok(Sum::default())
        });

        // 1. Raw streams, each way, and bulk TLS downloads.
        for (up, key, cpu_key) in [
            (true, "raw_up_gbps", "raw_up_cpu_s_per_gb"),
            (false, "raw_down_gbps", "raw_down_cpu_s_per_gb"),
        ] {
            let sums = self.rounds(key, plan.rounds, |_, p| {
                let cpu0 = p.cpu_seconds();
                let (bytes, secs) = load::raw_stream(p.target(true), HELLO, up, plan.raw)?;
                let cpu = p.cpu_seconds() - cpu0;
                Ok(Sum {
                    bytes,
                    secs,
                    cpu,
                    ..Sum::default()
                })
            });
            for (kind, sum) in sums {
                self.put(key, kind, sum.bytes as f64 * 8.0 / sum.secs / 1e9);
                if kind != Kind::Direct {
                    self.put(cpu_key, kind, sum.cpu / (sum.bytes as f64 / 1e9));
                }
            }
        }
        let sums = self.rounds("tls bulk", plan.rounds, |b, p| {
            let cpu0 = p.cpu_seconds();
            let (bytes, secs) = b.rt.block_on(load::tls_bulk(
                p.target(false),
                TLS_HOST,
                &b.connector,
                plan.bulk_streams,
                plan.bulk,
            ))?;
            let cpu = p.cpu_seconds() - cpu0;
            Ok(Sum {
                bytes,
                secs,
                cpu,
                ..Sum::default()
            })
        });
        for (kind, sum) in sums {
            self.put("tls_bulk_mbps", kind, sum.bytes as f64 / sum.secs / 1e6);
            if kind != Kind::Direct {
                let per_gb = sum.cpu / (sum.bytes as f64 / 1e9);
                self.put("tls_bulk_cpu_s_per_gb", kind, per_gb);
            }
        }

        // 2. Handshake latency unloaded (1 client), then connection rates at 32 and 256.
        let sums = self.rounds("latency", plan.rounds, |b, p| {
            let rate = b.rt.block_on(load::conn_rate(
                p.target(false),
                TLS_HOST,
                &b.connector,
                1,
                plan.latency / plan.rounds,
            ));
            Ok(Sum::from_rate(rate, 0.0))
        });
        for (kind, mut sum) in sums {
            self.put("hs_p50_ms_c1", kind, sum.percentile_ms(0.5));
            self.put("hs_p99_ms_c1", kind, sum.percentile_ms(0.99));
        }
        for (concurrency, [cps, cpu, p50, p99, errors]) in [
            (
                32,
                [
                    "cps_c32",
                    "cpu_s_per_10k_c32",
                    "hs_p50_ms_c32",
                    "hs_p99_ms_c32",
                    "errors_c32",
                ],
            ),
            (
                256,
                [
                    "cps_c256",
                    "cpu_s_per_10k_c256",
                    "hs_p50_ms_c256",
                    "hs_p99_ms_c256",
                    "errors_c256",
                ],
            ),
        ] {
            let sums = self.rounds(cps, plan.rounds, |b, p| {
                let cpu0 = p.cpu_seconds();
                let rate = b.rt.block_on(load::conn_rate(
                    p.target(false),
                    TLS_HOST,
                    &b.connector,
                    concurrency,
                    plan.rate,
                ));
                Ok(Sum::from_rate(rate, p.cpu_seconds() - cpu0))
            });
            for (kind, mut sum) in sums {
                self.put(cps, kind, sum.connections as f64 / sum.secs);
                if kind != Kind::Direct {
                    self.put(cpu, kind, sum.cpu / sum.connections as f64 * 10_000.0);
                }
                self.put(p50, kind, sum.percentile_ms(0.5));
                self.put(p99, kind, sum.percentile_ms(0.99));
                self.put(errors, kind, sum.errors as f64);
            }
        }

        // 3. Memory per idle established connection, one proxy at a time.
        let sums = self.rounds("idle", 1, |b, p| {
            if p.kind == Kind::Direct {
                return Ok(Sum::default());
            }
            std::thread::sleep(Duration::from_millis(500));
            let before = p.rss_kib();
            let t = Instant::now();
            let conns = b.rt.block_on(load::open_idle(
                p.target(false),
                TLS_HOST,
                &b.connector,
                plan.idle,
            ))?;
            let opened = t.elapsed();
            std::thread::sleep(Duration::from_millis(1000));
            let after = p.rss_kib();
            eprintln!(
                "compare: {}: {} idle connections opened in {opened:.1?}, RSS {before} -> {after} KiB",
                p.kind.name(),
                conns.len()
            );
            drop(conns);
            std::thread::sleep(Duration::from_millis(500));
            // RSS delta in bytes, over the count: carried in `bytes` and `connections`.
            Ok(Sum {
                bytes: (after.saturating_sub(before)) * 1024,
                connections: plan.idle as u64,
                ..Sum::default()
            })
        });
        for (kind, sum) in sums {
            if kind != Kind::Direct {
                let kib = sum.bytes as f64 / 1024.0 / sum.connections as f64;
                self.put("idle_kib_per_conn", kind, kib);
            }
        }

        // 4. Table change to the first connection routed by the new table. Last: an HAProxy
        // reload replaces its process.
        for i in 0..self.proxies.len() {
            if self.proxies[i].kind == Kind::Direct || self.proxies[i].kind.variant() {
                continue;
            }
            let mut times = Vec::new();
            for n in 0..plan.table_changes {
                let host = format!("new{n}.bench.test");
                let kind = self.proxies[i].kind;
                let start = match self.proxies[i].change_table(&host) {
                    Ok(Some(start)) => start,
                    Ok(None) => break,
                    Err(e) => {
                        eprintln!("compare: {}: table change failed: {e}", kind.name());
                        break;
                    }
                };
                let routed = self.rt.block_on(load::first_routed(
                    self.proxies[i].target(false),
                    &host,
                    &self.connector,
                    Duration::from_millis(2),
                    Duration::from_secs(10),
                ));
                match routed {
                    Some(at) => times.push(at.duration_since(start).as_secs_f64() * 1000.0),
                    None => eprintln!(
                        "compare: {}: {host} was never routed within 10 s",
                        kind.name()
                    ),
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            if !times.is_empty() {
                times.sort_by(f64::total_cmp);
                let median = times[times.len() / 2];
                let kind = self.proxies[i].kind;
                self.put("table_change_ms", kind, median);
            }
        }
    }
}
