//! sniroute side by side with HAProxy (default, and with splice forced on) and nginx
//! (`stream` + `ssl_preread`), with a direct connection as the ceiling: the same TLS and raw
//! backends, the same SNI table, on loopback, measured in one run.
//!
//! ```sh
//! bash benches/install-compare-deps.sh         # haproxy, nginx, libnginx-mod-stream (Debian)
//! cargo bench --bench compare                   # the full run (about 5 minutes)
//! cargo bench --bench compare -- --quick        # or COMPARE_QUICK=1: what CI runs (< 2 min)
//! cargo bench --bench compare -- --only direct,sniroute   # a subset
//! ```
//!
//! Prints a table and writes `target/compare/results.json` and `results.md`. For each proxy:
//! 1. one raw stream each way after a captured ClientHello (Gbit/s, proxy CPU s per GB), and
//!    bulk TLS downloads (MB/s and proxy CPU s per GB);
//! 2. new TLS connections per second (full handshake + one small request/response) at 32 and
//!    256 concurrent clients, proxy CPU seconds per 10,000 connections, and the connect +
//!    handshake latency added versus direct (p50/p99, at 1 and at 32 clients);
//! 3. proxy RSS per idle established TLS connection, at 8,000 of them;
//! 4. time from a table change to the first connection routed by the new table (sniroute: the
//!    file rewritten; HAProxy: a `-sf` reload with the new file; nginx: SIGHUP).
//!
//! CPU and memory come from /proc/PID/{stat,status} of the proxy (and its worker processes).
//! The backends run in a child process of this harness (`--backend-child`), so their CPU is
//! neither the proxy's nor the load generator's.

// A benchmark measures wall-clock time; the ban on std's Instant is for paused-time tests.
#![allow(clippy::disallowed_methods)]

#[path = "compare/backend.rs"]
mod backend;
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

/// How long each part runs.
#[derive(Clone, Copy, Debug)]
struct Plan {
    quick: bool,
    raw: Duration,
    bulk: Duration,
    bulk_streams: usize,
    latency: Duration,
    rate: Duration,
    idle: usize,
    table_changes: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                raw: Duration::from_millis(1500),
                bulk: Duration::from_millis(1500),
                bulk_streams: 2,
                latency: Duration::from_millis(1000),
                rate: Duration::from_millis(2000),
                idle: 8000,
                table_changes: 3,
            }
        } else {
            Self {
                quick,
                raw: Duration::from_secs(5),
                bulk: Duration::from_secs(5),
                bulk_streams: 2,
                latency: Duration::from_secs(3),
                rate: Duration::from_secs(6),
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
    let kinds: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| {
            only.as_ref()
                .is_none_or(|o| o.iter().any(|n| n == k.name()))
        })
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
    let mut results = Results::new();
    let mut failed: Vec<&str> = Vec::new();
    for &kind in kinds {
        let t = Instant::now();
        // One proxy failing (to start, or mid-way) leaves its cells empty, not the table.
        let measured = Running::start(kind, backend.backends, &work.join(kind.name()), &sniroute)
            .and_then(|mut running| {
                let measured = measure(&plan, &rt, &connector, &mut running, &mut results);
                running.stop();
                measured
            });
        match measured {
            Ok(()) => eprintln!("compare: {} done in {:.0?}", kind.name(), t.elapsed()),
            Err(e) => {
                eprintln!(
                    "compare: {} FAILED after {:.0?}: {e}",
                    kind.name(),
                    t.elapsed()
                );
                failed.push(kind.name());
            }
        }
        // Let closes and TIME_WAITs of this proxy settle before the next one starts.
        std::thread::sleep(Duration::from_millis(500));
    }
    let elapsed = started.elapsed();
    let report = report::Report::new(plan.quick, machine, results, elapsed);
    println!("{}", report.markdown());
    std::fs::write(out.join("results.md"), report.markdown())?;
    std::fs::write(out.join("results.json"), report.json())?;
    eprintln!(
        "compare: wrote {} and results.json ({:.0?})",
        out.join("results.md").display(),
        elapsed
    );
    if failed.is_empty() {
        Ok(())
    } else {
        Err(io::Error::other(format!("failed: {}", failed.join(", "))))
    }
}

/// Runs every measurement against one proxy, recording into `results`.
fn measure(
    plan: &Plan,
    rt: &tokio::runtime::Runtime,
    connector: &TlsConnector,
    p: &mut Running,
    results: &mut Results,
) -> io::Result<()> {
    let name = p.kind.name();
    let mut put = |key: &'static str, value: f64| {
        results.entry(key).or_default().insert(name, value);
    };
    let proxied = p.kind != Kind::Direct;
    let settle = || std::thread::sleep(Duration::from_millis(200));

    // Warm-up: a few connections of each kind, so first-use allocations are not measured.
    rt.block_on(load::conn_rate(
        p.target(false),
        TLS_HOST,
        connector,
        4,
        Duration::from_millis(200),
    ));
    load::raw_stream(p.target(true), HELLO, false, Duration::from_millis(100))?;
    settle();

    // 1. Raw streams, each way, and bulk TLS downloads.
    let cpu0 = p.cpu_seconds();
    let (up_bytes, up_secs) = load::raw_stream(p.target(true), HELLO, true, plan.raw)?;
    settle();
    let (down_bytes, down_secs) = load::raw_stream(p.target(true), HELLO, false, plan.raw)?;
    let raw_cpu = p.cpu_seconds() - cpu0;
    put("raw_up_gbps", up_bytes as f64 * 8.0 / up_secs / 1e9);
    put("raw_down_gbps", down_bytes as f64 * 8.0 / down_secs / 1e9);
    if proxied {
        put(
            "raw_cpu_s_per_gb",
            raw_cpu / ((up_bytes + down_bytes) as f64 / 1e9),
        );
    }
    settle();
    let cpu0 = p.cpu_seconds();
    let (bytes, secs) = rt.block_on(load::tls_bulk(
        p.target(false),
        TLS_HOST,
        connector,
        plan.bulk_streams,
        plan.bulk,
    ))?;
    let bulk_cpu = p.cpu_seconds() - cpu0;
    put("tls_bulk_mbps", bytes as f64 / secs / 1e6);
    if proxied {
        put("tls_bulk_cpu_s_per_gb", bulk_cpu / (bytes as f64 / 1e9));
    }
    settle();

    // 2. Connection rates and handshake latency: unloaded (1 client), then 32 and 256.
    let one = rt.block_on(load::conn_rate(
        p.target(false),
        TLS_HOST,
        connector,
        1,
        plan.latency,
    ));
    put("hs_p50_ms_c1", one.percentile_ms(0.5));
    put("hs_p99_ms_c1", one.percentile_ms(0.99));
    settle();
    for (concurrency, cps, cpu_key, p50, p99, errs) in [
        (
            32,
            "cps_c32",
            "cpu_s_per_10k_c32",
            "hs_p50_ms_c32",
            "hs_p99_ms_c32",
            "errors_c32",
        ),
        (
            256,
            "cps_c256",
            "cpu_s_per_10k_c256",
            "hs_p50_ms_c256",
            "hs_p99_ms_c256",
            "errors_c256",
        ),
    ] {
        let cpu0 = p.cpu_seconds();
        let rate = rt.block_on(load::conn_rate(
            p.target(false),
            TLS_HOST,
            connector,
            concurrency,
            plan.rate,
        ));
        let cpu = p.cpu_seconds() - cpu0;
        put(cps, rate.per_second());
        if proxied {
            put(cpu_key, cpu / rate.connections as f64 * 10_000.0);
        }
        put(p50, rate.percentile_ms(0.5));
        put(p99, rate.percentile_ms(0.99));
        put(errs, rate.errors as f64);
        settle();
    }

    // 3. Memory per idle established connection.
    if proxied {
        std::thread::sleep(Duration::from_millis(500));
        let before = p.rss_kib();
        let t = Instant::now();
        let conns = rt.block_on(load::open_idle(
            p.target(false),
            TLS_HOST,
            connector,
            plan.idle,
        ))?;
        let opened = t.elapsed();
        std::thread::sleep(Duration::from_millis(1000));
        let after = p.rss_kib();
        put(
            "idle_kib_per_conn",
            (after as f64 - before as f64) / conns.len() as f64,
        );
        eprintln!(
            "compare: {name}: {} idle connections opened in {opened:.1?}, RSS {before} -> {after} KiB",
            conns.len()
        );
        drop(conns);
        std::thread::sleep(Duration::from_millis(500));
    }

    // 4. Table change to the first connection routed by the new table.
    if proxied {
        let mut times = Vec::new();
        for i in 0..plan.table_changes {
            let host = format!("new{i}.bench.test");
            let Some(start) = p.change_table(&host)? else {
                break;
            };
            let routed = rt.block_on(load::first_routed(
                p.target(false),
                &host,
                connector,
                Duration::from_millis(2),
                Duration::from_secs(10),
            ));
            match routed {
                Some(at) => times.push(at.duration_since(start).as_secs_f64() * 1000.0),
                None => eprintln!("compare: {name}: {host} was never routed within 10 s"),
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        if !times.is_empty() {
            times.sort_by(f64::total_cmp);
            put("table_change_ms", times[times.len() / 2]);
        }
    }
    Ok(())
}
