//! The server's audit log: which requests sniroute's ServiceAccount made.

use serde_json::Value;

use super::ApiServer;

impl ApiServer {
    /// Audit events (stage ResponseComplete or ResponseStarted) of requests by `user`.
    pub fn audit(&self, user: &str) -> Vec<AuditEvent> {
        let text = std::fs::read_to_string(&self.audit_log).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|e| e["user"]["username"] == user)
            .map(|e| AuditEvent {
                verb: e["verb"].as_str().unwrap_or_default().to_owned(),
                uri: e["requestURI"].as_str().unwrap_or_default().to_owned(),
                resource: e["objectRef"]["resource"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                code: e["responseStatus"]["code"].as_u64().unwrap_or(0) as u16,
                stage: e["stage"].as_str().unwrap_or_default().to_owned(),
            })
            .collect()
    }
}

/// Requests of service accounts only: sniroute's, at Metadata level.
pub(super) const AUDIT_POLICY: &str = "\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    userGroups: [system:serviceaccounts]
  - level: None
";

/// One request, from the audit log.
#[derive(Clone, Debug)]
pub struct AuditEvent {
    /// `list`, `watch`, `get`, ...
    pub verb: String,
    /// Path and query as sent.
    pub uri: String,
    /// `services`, `routes`, `hostedclusters`, ...
    pub resource: String,
    /// The response code (watches: 200 when they start).
    pub code: u16,
    /// `ResponseStarted` (watches) or `ResponseComplete`.
    pub stage: String,
}

impl AuditEvent {
    /// The `resourceVersion` query parameter, if any.
    pub fn resource_version(&self) -> Option<u64> {
        self.uri
            .split(['?', '&'])
            .find_map(|kv| kv.strip_prefix("resourceVersion="))
            .and_then(|v| v.parse().ok())
    }
}
