//! sniroute's identity on the server: `deploy/base`'s ServiceAccount and RBAC, TokenRequest
//! tokens, kubeconfigs, and the binary started with them.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::{read_manifests, repo, ApiServer, NAMESPACE};
use crate::common::{Cfg, Sniroute};

impl ApiServer {
    /// Installs `deploy/base`'s Namespace, ServiceAccount and RBAC (read from the files, so
    /// the test proves exactly what ships), mints a token through the TokenRequest API and
    /// writes a kubeconfig for `server` into `dir`.
    pub async fn sniroute_kubeconfig(&self, dir: &Path, server: &str) -> PathBuf {
        let admin = self.admin().await;
        for file in ["namespace.yaml", "serviceaccount.yaml", "rbac.yaml"] {
            for object in read_manifests(&repo().join("deploy/base").join(file)) {
                admin.apply(&object).await;
            }
        }
        let token = admin.token(NAMESPACE, "sniroute").await;
        self.write_kubeconfig(dir, server, "sniroute", &token)
    }

    /// The real binary with `kubernetes: {}` (and the rest of `cfg`) as `deploy/base`'s
    /// ServiceAccount, talking to `server` (this server's URL, or a [`Relay`]'s); not yet
    /// waited for (see [`wait_ready`]). The directory holds its kubeconfig.
    pub async fn start_sniroute(&self, server: &str, cfg: Cfg) -> (Sniroute, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = self.sniroute_kubeconfig(dir.path(), server).await;
        let proxy = Sniroute::start_kube(cfg.set("kubernetes", "{}").yaml(), &kubeconfig);
        (proxy, dir)
    }

    /// A ServiceAccount `name` in [`NAMESPACE`] bound to a ClusterRole `name` with `rules`,
    /// and a kubeconfig for it in `dir`.
    pub async fn kubeconfig_with_rules(&self, dir: &Path, name: &str, rules: &Value) -> PathBuf {
        let admin = self.admin().await;
        for object in read_manifests(&repo().join("deploy/base/namespace.yaml")) {
            admin.apply(&object).await;
        }
        admin
            .apply(&json!({
                "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": name, "namespace": NAMESPACE}
            }))
            .await;
        admin
            .apply(&json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": name}, "rules": rules
            }))
            .await;
        admin
            .apply(&json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]
            }))
            .await;
        let token = admin.token(NAMESPACE, name).await;
        self.write_kubeconfig(dir, &self.url(), name, &token)
    }
}
