//! The `etcd` and `kube-apiserver` binaries, built once by `tests/apiserver/build.sh`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::{repo, REQUIRE_ENV};

/// The built `etcd` and `kube-apiserver`.
#[derive(Debug)]
pub struct Binaries {
    /// `etcd`, from `go.etcd.io/etcd/server/v3`.
    pub etcd: PathBuf,
    /// `kube-apiserver`, from `k8s.io/kubernetes`.
    pub kube_apiserver: PathBuf,
}

/// The binaries, built on first use by `tests/apiserver/build.sh` (which reuses its cache and
/// serialises concurrent builds); `None`, after a loud line on stderr, where Go is missing.
pub fn binaries() -> Option<&'static Binaries> {
    static BINARIES: OnceLock<Option<Binaries>> = OnceLock::new();
    BINARIES.get_or_init(find_or_build).as_ref()
}

fn find_or_build() -> Option<Binaries> {
    let required = std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1");
    let script = repo().join("tests/apiserver/build.sh");
    let output = run_build(&script, &[]);
    if output.status.code() == Some(127) && !required {
        // Not captured by the test harness: this must be seen even when the test passes.
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: the real-API-server tests need Go (1.26 or newer, `go` on PATH) \
             to build kube-apiserver and etcd from tests/apiserver/; install Go 1.26+ \
             (your distribution's golang-go if it is that new, or go.dev) and run again ***\n"
        );
        return None;
    }
    assert!(
        output.status.success(),
        "{} failed ({}; 127 is no Go on PATH, which {REQUIRE_ENV}=1 makes a failure)",
        script.display(),
        output.status
    );
    let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let binaries = Binaries {
        etcd: dir.join("etcd"),
        kube_apiserver: dir.join("kube-apiserver"),
    };
    assert!(
        binaries.etcd.is_file() && binaries.kube_apiserver.is_file(),
        "build.sh printed {} without both binaries in it",
        dir.display()
    );
    Some(binaries)
}

/// Runs a build script (`bash SCRIPT`) to its end, its progress going straight to the
/// terminal (a cold build takes minutes); its output, stdout being the directory it printed.
pub(in crate::common) fn run_build(script: &Path, args: &[&str]) -> std::process::Output {
    Command::new("bash")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()))
}
