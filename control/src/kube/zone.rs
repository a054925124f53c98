//! This replica's zone, for same-zone-first balancing: `kubernetes.zone` when set, else the
//! `topology.kubernetes.io/zone` label of the node it runs on, named by the downward API's
//! `spec.nodeName` in [`NODE_NAME_ENV`].
//!
//! The node's label, not the pod's: the kubelet sets topology labels on its Node, and only
//! some clusters copy them onto pods. One `get` at start (a node's zone does not change while
//! a pod runs on it); when it fails, balancing prefers no zone, which is what it did before.

use std::collections::BTreeMap;
use std::time::Duration;

use ::kube::{Api, Client};
use k8s_openapi::api::core::v1::Node;

/// The environment variable the Deployment sets from `spec.nodeName`.
pub const NODE_NAME_ENV: &str = "NODE_NAME";
/// The well-known label the kubelet sets on its Node (and EndpointSlices copy as `zone`).
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// How long the lookup may hold up the first list.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The zone in a node's `labels`, if it names one.
pub fn zone_label(labels: Option<&BTreeMap<String, String>>) -> Option<&str> {
    labels?
        .get(ZONE_LABEL)
        .map(|zone| zone.trim())
        .filter(|zone| !zone.is_empty())
}

/// The zone to prefer: `configured` if set, else node `node`'s label (logged either way).
pub async fn zone(
    client: &Client,
    configured: Option<String>,
    node: Option<&str>,
) -> Option<String> {
    if let Some(zone) = configured {
        tracing::info!(zone, "preferring endpoints in kubernetes.zone");
        return Some(zone);
    }
    let Some(node) = node.filter(|n| !n.is_empty()) else {
        tracing::info!(
            "neither kubernetes.zone nor {NODE_NAME_ENV} is set: endpoints of every zone are equal"
        );
        return None;
    };
    let nodes = Api::<Node>::all(client.clone());
    match tokio::time::timeout(LOOKUP_TIMEOUT, nodes.get_metadata(node)).await {
        Ok(Ok(found)) => match zone_label(found.metadata.labels.as_ref()) {
            Some(zone) => {
                tracing::info!(zone, node, "preferring endpoints in the zone of this node");
                Some(zone.to_owned())
            }
            None => {
                tracing::info!(
                    node,
                    "node has no {ZONE_LABEL} label: endpoints of every zone are equal"
                );
                None
            }
        },
        Ok(Err(error)) => {
            let hint = match &error {
                ::kube::Error::Api(status) if status.code == 403 => {
                    " (grant `get` on nodes, as deploy/base/rbac.yaml does)"
                }
                _ => "",
            };
            tracing::warn!(
                node,
                %error,
                "cannot read this node's {ZONE_LABEL} label{hint}: endpoints of every zone \
                 are equal"
            );
            None
        }
        Err(_) => {
            tracing::warn!(
                node,
                timeout = ?LOOKUP_TIMEOUT,
                "reading this node's {ZONE_LABEL} label timed out: endpoints of every zone \
                 are equal"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_zone_label_is_read_and_an_empty_one_is_none() {
        let labels = |zone: &str| BTreeMap::from([(ZONE_LABEL.to_owned(), zone.to_owned())]);
        assert_eq!(zone_label(Some(&labels("eu-west-1a"))), Some("eu-west-1a"));
        assert_eq!(zone_label(Some(&labels(" "))), None);
        assert_eq!(zone_label(Some(&BTreeMap::new())), None);
        assert_eq!(zone_label(None), None);
    }
}
