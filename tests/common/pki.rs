//! One test CA and a leaf it signed for every name the tests use (rcgen), with the rustls
//! server and client configs built on them.

use std::sync::{Arc, OnceLock};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Names the backends' leaf certificate is valid for. A wildcard SAN covers one label only,
/// so deeper names the tests connect to are listed one by one.
const LEAF_NAMES: &[&str] = &[
    "example.test",
    "*.example.test",
    "*.a.example.test",
    "*.b.example.test",
    "deep.er.example.test",
    "*.other.test",
    "localhost",
];

/// The test CA and one leaf signed by it, made once per test binary.
pub struct Pki {
    ca_der: CertificateDer<'static>,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    leaf_chain: Vec<CertificateDer<'static>>,
    leaf_key: Vec<u8>,
}

/// The shared test PKI.
pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(Pki::generate)
}

impl Pki {
    fn generate() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "sniroute test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let ca = params.self_signed(&key).expect("CA certificate");
        let issuer = Issuer::new(params, key);
        let mut pki = Self {
            ca_der: ca.der().clone(),
            ca_pem: ca.pem(),
            issuer,
            leaf_chain: Vec::new(),
            leaf_key: Vec::new(),
        };
        let (chain, key) = pki.leaf(LEAF_NAMES);
        pki.leaf_chain = chain;
        pki.leaf_key = key;
        pki
    }

    /// A new leaf for `names`, signed by the test CA: (chain, PKCS#8 key DER).
    pub fn leaf(&self, names: &[&str]) -> (Vec<CertificateDer<'static>>, Vec<u8>) {
        let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, "sniroute test backend");
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        (vec![cert.der().clone()], key.serialize_der())
    }

    /// The CA certificate in PEM (for `openssl s_client -CAfile`).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A server config presenting the shared leaf.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server_config_for(self.leaf_chain.clone(), self.leaf_key.clone())
    }

    /// A server config presenting `chain` and its PKCS#8 `key`.
    pub fn server_config_for(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: Vec<u8>,
    ) -> Arc<ServerConfig> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key));
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server cert");
        Arc::new(config)
    }

    /// A client config trusting only the test CA.
    pub fn client_config(&self, max_fragment_size: Option<usize>) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("CA into root store");
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.max_fragment_size = max_fragment_size;
        Arc::new(config)
    }
}

/// rustls is built with `ring` only: name the provider instead of relying on a process default.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
