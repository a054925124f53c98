//! The sources routes come from.

use std::fmt;

/// Who stated a set of routes; the order is the priority (the file wins over Kubernetes, and
/// HyperShift's routes over the Gateway API's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SourceKind {
    /// The `routes:` of the config file.
    File,
    /// The Kubernetes source (HostedClusters, Routes, Services).
    Kubernetes,
    /// The Gateway API source (TLSRoutes attached to sniroute's Gateways).
    GatewayApi,
}

impl SourceKind {
    /// The name used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Kubernetes => "kubernetes",
            Self::GatewayApi => "gateway_api",
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a source is ready, as `/readyz` reports it (every Kubernetes source has one; the
/// file is ready once it loaded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Every kind listed once and published, and no kind refused to this identity.
    Ready,
    /// Not ready, and why.
    NotReady(String),
}

impl Readiness {
    /// Before every kind has been listed once.
    pub fn waiting() -> Self {
        Self::NotReady(
            "the kubernetes source has not listed HostedClusters, Routes, Services and \
             EndpointSlices yet"
                .into(),
        )
    }
}
