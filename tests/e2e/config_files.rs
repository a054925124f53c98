//! End to end: what the config path may be and how much it may hold. A 100,000-route file of
//! a realistic shape validates; devices, FIFOs and oversized files are refused at once, at
//! start and on reload, and the last good table keeps serving.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
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

/// One fenced ```yaml block of the README or docs/: where it starts and what it holds.
struct DocYaml {
    at: String,
    text: String,
}

/// Every ```yaml block of README.md and docs/*.md, so none of them can drift from what the
/// binary and deploy/ accept.
fn doc_yaml_blocks() -> Vec<DocYaml> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![repo.join("README.md")];
    let mut docs: Vec<_> = std::fs::read_dir(repo.join("docs"))
        .expect("docs/")
        .map(|entry| entry.expect("docs/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut blocks = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read doc");
        let rel = file.strip_prefix(repo).unwrap().display().to_string();
        let mut open: Option<(usize, String)> = None;
        for (n, line) in text.lines().enumerate() {
            match &mut open {
                None if line.trim_start().starts_with("```yaml") => {
                    open = Some((n + 1, String::new()))
                }
                Some((start, body)) if line.trim_start().starts_with("```") => {
                    blocks.push(DocYaml {
                        at: format!("{rel}:{start}"),
                        text: dedent(&std::mem::take(body)),
                    });
                    open = None;
                }
                Some((_, body)) => {
                    body.push_str(line);
                    body.push('\n');
                }
                None => {}
            }
        }
        assert!(open.is_none(), "{rel}: a ```yaml block is never closed");
    }
    blocks
}

/// `text` without the indentation all its lines share (a block inside a list item).
fn dedent(text: &str) -> String {
    let indent = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| line.len() - line.trim_start().len())
        .min()
        .unwrap_or(0);
    text.lines()
        .map(|line| line.get(indent..).unwrap_or(""))
        .fold(String::new(), |out, line| out + line + "\n")
}

/// The top-level keys of a YAML block.
fn top_keys(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|line| !line.starts_with([' ', '#', '-']) && !line.is_empty())
        .filter_map(|line| line.split_once(':').map(|(key, _)| key.trim()))
        .collect()
}

/// The objects of every manifest under deploy/base and examples/: what a Kubernetes object
/// shown in the docs must be one of.
fn shipped_objects() -> Vec<serde_json::Value> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["deploy/base", "examples", "examples/gateway-api"] {
        for entry in std::fs::read_dir(repo.join(dir)).expect("a manifest directory") {
            let path = entry.expect("a directory entry").path();
            if path.extension().is_some_and(|ext| ext == "yaml") {
                files.push(path);
            }
        }
    }
    let mut objects = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("read manifest");
        for doc in text.split("\n---\n") {
            if let Ok(value) = serde_saphyr::from_str::<serde_json::Value>(doc) {
                if value.get("kind").is_some() {
                    objects.push(value);
                }
            }
        }
    }
    objects
}

#[test]
fn every_yaml_example_in_the_readme_and_docs_is_what_the_binary_and_deploy_accept() {
    let blocks = doc_yaml_blocks();
    assert!(
        blocks.len() >= 5,
        "found only {} YAML examples",
        blocks.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let shipped = shipped_objects();
    let mut checked = (0, 0, 0);
    for (i, block) in blocks.iter().enumerate() {
        let keys = top_keys(&block.text);
        if keys.contains(&"apiVersion") && keys.contains(&"kind") {
            // A Kubernetes object shown in the docs is one deploy/base or examples/ ships.
            let shown: serde_json::Value = serde_saphyr::from_str(&block.text)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", block.at));
            let same = shipped.iter().find(|o| {
                o["kind"] == shown["kind"]
                    && o["metadata"]["name"] == shown["metadata"]["name"]
                    && o["metadata"]["namespace"] == shown["metadata"]["namespace"]
            });
            let same = same.unwrap_or_else(|| {
                panic!(
                    "{}: {} {} is not in deploy/base or examples/",
                    block.at, shown["kind"], shown["metadata"]["name"]
                )
            });
            for key in ["rules", "spec", "data"] {
                if shown.get(key).is_some() {
                    assert_eq!(
                        shown[key], same[key],
                        "{}: `{key}` differs from the shipped one",
                        block.at
                    );
                }
            }
            checked.1 += 1;
        } else if keys
            .iter()
            .any(|k| ["resources", "components", "patches"].contains(k))
        {
            // A kustomization: every path it names (below a placeholder prefix) exists.
            let shown: serde_json::Value = serde_saphyr::from_str(&block.text)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", block.at));
            for key in ["resources", "components"] {
                for path in shown[key].as_array().into_iter().flatten() {
                    let path = path.as_str().expect("a path");
                    let path = path.strip_prefix("path/to/").unwrap_or(path);
                    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
                    assert!(
                        repo.join(path).exists(),
                        "{}: {key} {path} does not exist",
                        block.at
                    );
                }
            }
            checked.2 += 1;
        } else {
            // A sniroute config or a part of one: what `sniroute check` accepts.
            let mut yaml = block.text.clone();
            if !keys.contains(&"listen") {
                yaml.insert_str(0, "listen: 127.0.0.1:0\n");
            }
            let path = dir.path().join(format!("example-{i}.yaml"));
            std::fs::write(&path, &yaml).unwrap();
            let (code, _, stderr, _) = check(&path, Duration::from_secs(30));
            assert_eq!(
                code,
                Some(0),
                "{}: sniroute check refused it:\n{stderr}\n{yaml}",
                block.at
            );
            checked.0 += 1;
        }
    }
    eprintln!(
        "{} config examples passed sniroute check, {} manifests match deploy/base or examples/, {} kustomizations name real paths",
        checked.0, checked.1, checked.2
    );
}
