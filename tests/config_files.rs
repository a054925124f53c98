//! End to end: what the config path may be and how much it may hold. A 100,000-route file of
//! a realistic shape validates; devices, FIFOs and oversized files are refused at once, at
//! start and on reload, and the last good table keeps serving.

mod common;

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use tokio::time::Instant;

/// How long a refusal of a bad path may take: it must not read the path's content.
const FAIL_FAST: Duration = Duration::from_secs(2);

/// A config of `n` routes shaped like a hosted control plane's: three hostnames, two
/// backends, two allowed CIDRs.
fn realistic(n: usize) -> String {
    let mut y = String::from("listen: 127.0.0.1:0\nroutes:\n");
    for i in 0..n {
        let _ = write!(
            y,
            "  - name: hc-{i:06}\n    hostnames: [api.hc-{i:06}.example.test, \
             \"*.apps.hc-{i:06}.example.test\", oauth.hc-{i:06}.example.test]\n    \
             backends: [\"10.{}.{}.{}:6443\", \"kas.hc-{i:06}.svc:6443\"]\n    \
             allowed_cidrs: [10.0.0.0/8, \"2001:db8::/32\"]\n",
            i >> 16,
            (i >> 8) & 0xff,
            i & 0xff
        );
    }
    y
}

/// `sniroute check --config path`, bounded by `within` (a debug build is slow on big files).
fn check(path: &Path, within: Duration) -> (Option<i32>, String, String, Duration) {
    let start = Instant::now();
    let mut child = Command::new(binary())
        .args(["check", "--config"])
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sniroute check");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > within {
            let _ = child.kill();
            panic!("sniroute check on {} ran past {within:?}", path.display());
        }
        std::thread::sleep(POLL);
    };
    let took = start.elapsed();
    let out = child.wait_with_output().unwrap();
    (
        status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        took,
    )
}

#[test]
fn a_hundred_thousand_realistic_routes_pass_check() {
    let yaml = realistic(100_000);
    eprintln!("100,000 routes: {} bytes", yaml.len());
    let (_dir, path) = config_file(&yaml);
    let (code, stdout, stderr, took) = check(&path, Duration::from_secs(300));
    eprintln!("check took {took:?}");
    assert_eq!(code, Some(0), "stderr:\n{stderr}");
    assert!(stdout.contains("ok, 100000 routes"), "{stdout}");
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(status.success());
}

#[test]
fn devices_fifos_and_oversized_files_fail_fast() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.yaml");
    mkfifo(&fifo);
    let zero_link = dir.path().join("zero.yaml");
    std::os::unix::fs::symlink("/dev/zero", &zero_link).unwrap();
    let huge = dir.path().join("huge.yaml");
    let file = std::fs::File::create(&huge).unwrap();
    file.set_len(33 * 1024 * 1024).unwrap();
    for (path, expected) in [
        (
            Path::new("/dev/zero"),
            "is a character device, not a regular file",
        ),
        (&zero_link, "is a character device, not a regular file"),
        (&fifo, "is a FIFO, not a regular file"),
        (dir.path(), "is a directory, not a regular file"),
        (&huge, "is larger than the limit of 33554432 bytes (32 MiB)"),
    ] {
        let (code, _, stderr, took) = check(path, STARTUP);
        eprintln!("{}: refused in {took:?}", path.display());
        assert_eq!(code, Some(78), "{}: {stderr}", path.display());
        assert!(stderr.contains(expected), "{}: {stderr}", path.display());
        assert!(took < FAIL_FAST, "{}: took {took:?}", path.display());
        // Running, not only checking, refuses it the same way before binding anything.
        let run = run_binary(&["--config".as_ref(), path.as_os_str()]);
        assert_eq!(run.exited.and_then(|s| s.code()), Some(78), "{run:?}");
        assert!(run.stderr.contains(expected) && !run.stderr.contains("listening"));
    }
}

#[tokio::test]
async fn a_fifo_or_device_renamed_over_the_config_is_refused_and_reloads_go_on() {
    let b1 = TlsBackend::start("b1");
    let b2 = TlsBackend::start("b2");
    let route = |b: &TlsBackend| {
        Cfg::new()
            .route("api", &["api.example.test"], &[b.addr()])
            .yaml()
    };
    let mut proxy = Sniroute::start(route(&b1));
    let staging = proxy
        .config_path()
        .parent()
        .unwrap()
        .join("..")
        .join("staging");
    let fifo = staging.join("fifo");
    mkfifo(&fifo);
    let zero = staging.join("zero");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    for (bad, expected) in [(&fifo, "is a FIFO"), (&zero, "is a character device")] {
        let mark = proxy.log_mark();
        let start = Instant::now();
        std::fs::rename(bad, proxy.config_path()).unwrap();
        proxy.wait_log_since(mark, &["config reload failed", expected], STEP);
        eprintln!(
            "{expected}: reload refused {:?} after the rename",
            start.elapsed()
        );
        assert!(start.elapsed() < FAIL_FAST + Duration::from_secs(1));
        assert_routes(proxy.proxy_addr(), "api.example.test", "b1").await;
        // Back to the good file, so the next failure is a new one (a failing file logs once).
        let mark = proxy.log_mark();
        proxy.rename_config(route(&b1));
        proxy.wait_log_since(mark, &["config file unchanged from the table in use"], STEP);
    }
    // The watch did not hang on either: a good file is still picked up.
    proxy.rename_config(route(&b2));
    let deadline = Instant::now() + STEP;
    loop {
        if let Ok(conn) = tls_connect(proxy.proxy_addr(), "api.example.test").await {
            if conn.backend == "b2" {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the good file was not applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
