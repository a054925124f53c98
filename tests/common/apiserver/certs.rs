//! The server's certificates, service-account key and tokens, and kubeconfigs that trust it.

use std::path::{Path, PathBuf};

use base64::prelude::{Engine as _, BASE64_STANDARD};
use rcgen::KeyPair;

use super::{nanos, NAMESPACE};

/// The server's serving certificate (signed by the tests' CA), a service-account signing key
/// and the admin token, written into the server's directory.
pub(super) struct ServerPki {
    pub(super) ca_pem: String,
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
    pub(super) sa_key: PathBuf,
    pub(super) sa_pub: PathBuf,
    pub(super) tokens: PathBuf,
    pub(super) admin_token: String,
}

impl ServerPki {
    pub(super) fn write(dir: &Path) -> Self {
        // The tests' own CA signs the serving certificate too.
        let (chain, key) =
            crate::common::pki().leaf(&["127.0.0.1", "localhost", "kubernetes.default.svc"]);
        let cert_pem = pem("CERTIFICATE", &chain[0]);
        let key_pem = pem("PRIVATE KEY", &key);

        // Service-account tokens are signed with this key (ES256) and verified with its
        // public half, as --service-account-signing-key-file / --service-account-key-file.
        let sa = KeyPair::generate().expect("service account key");
        let admin_token = format!("admin-{:016x}", std::process::id() as u64 ^ nanos());

        let pki = Self {
            ca_pem: crate::common::pki().ca_pem().to_owned(),
            cert: dir.join("apiserver.crt"),
            key: dir.join("apiserver.key"),
            sa_key: dir.join("sa.key"),
            sa_pub: dir.join("sa.pub"),
            tokens: dir.join("tokens.csv"),
            admin_token,
        };
        std::fs::write(&pki.cert, cert_pem).unwrap();
        std::fs::write(&pki.key, key_pem).unwrap();
        std::fs::write(&pki.sa_key, sa.serialize_pem()).unwrap();
        std::fs::write(&pki.sa_pub, sa.public_key_pem()).unwrap();
        std::fs::write(
            &pki.tokens,
            format!("{},admin,admin-uid,system:masters\n", pki.admin_token),
        )
        .unwrap();
        pki
    }
}

/// DER as PEM.
pub fn pem(label: &str, der: &[u8]) -> String {
    let body = BASE64_STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// The context's namespace is sniroute's, as a pod's in-cluster config has it: where its
/// Gateway API status Lease lives.
pub(super) fn kubeconfig_yaml(server: &str, ca_pem: &str, user: &str, token: &str) -> String {
    let ca = BASE64_STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\n\
         clusters:\n- name: envtest\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
         users:\n- name: {user}\n  user:\n    token: {token}\n\
         contexts:\n- name: {user}\n  context:\n    cluster: envtest\n    user: {user}\n    namespace: {NAMESPACE}\n\
         current-context: {user}\n"
    )
}
