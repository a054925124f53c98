//! The config file as serde reads it: every value still text with its location.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_saphyr::Spanned;

/// The document as written: every value still text with its location, so that validation
/// can check each and report all problems, not only the first.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) listen: Option<Spanned<OneOrMany>>,
    pub(super) admin: Option<Spanned<String>>,
    pub(super) debug: Option<Spanned<String>>,
    pub(super) client_hello_timeout: Option<Spanned<String>>,
    pub(super) connect_timeout: Option<Spanned<String>>,
    pub(super) idle_timeout: Option<Spanned<String>>,
    pub(super) max_client_hello: Option<Spanned<String>>,
    pub(super) routes: Option<Vec<Spanned<RawRoute>>>,
    pub(super) kubernetes: Option<Spanned<RawKubernetes>>,
    pub(super) cluster_id_listen: Option<Spanned<String>>,
    pub(super) revoke_grace: Option<Spanned<String>>,
    pub(super) max_connections: Option<Spanned<String>>,
    pub(super) listen_backlog: Option<Spanned<String>>,
    pub(super) shutdown_delay: Option<Spanned<String>>,
    pub(super) drain_timeout: Option<Spanned<String>>,
    pub(super) log_format: Option<Spanned<String>>,
    pub(super) log_level: Option<Spanned<String>>,
    pub(super) log_connections: Option<Spanned<String>>,
    pub(super) outlier_detection: Option<Spanned<RawOutlier>>,
    pub(super) accept_proxy_protocol: Option<Spanned<String>>,
    pub(super) trusted_proxies: Option<Vec<Spanned<String>>>,
    pub(super) client_limits: Option<Spanned<RawClientLimits>>,
    pub(super) client_hello_memory: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClientLimits {
    pub(super) max_connections: Option<Spanned<String>>,
    pub(super) connection_rate: Option<Spanned<String>>,
    pub(super) burst: Option<Spanned<String>>,
    pub(super) ipv6_prefix: Option<Spanned<String>>,
    pub(super) exempt: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutlier {
    pub(super) consecutive_failures: Option<Spanned<String>>,
    pub(super) base_ejection_time: Option<Spanned<String>>,
    pub(super) max_ejection_time: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKubernetes {
    pub(super) debounce: Option<Spanned<String>>,
    pub(super) backends: Option<Spanned<String>>,
    pub(super) zone: Option<Spanned<String>>,
    pub(super) hypershift: Option<Spanned<String>>,
    pub(super) gateway_api: Option<Spanned<RawGatewayApi>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGatewayApi {
    pub(super) controller_name: Option<Spanned<String>>,
    pub(super) addresses: Option<Vec<Spanned<String>>>,
    pub(super) listener_ports: Option<Spanned<String>>,
    pub(super) service_type: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) name: Option<Spanned<String>>,
    pub(super) hostnames: Option<Vec<Spanned<String>>>,
    pub(super) backends: Option<Vec<Spanned<String>>>,
    pub(super) max_connections: Option<Spanned<String>>,
    pub(super) allowed_cidrs: Option<Vec<Spanned<String>>>,
    pub(super) proxy_protocol: Option<Spanned<String>>,
}

/// `key: value` or `key: [value, ...]`.
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<Spanned<String>>),
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OneOrManyVisitor;

        impl<'de> Visitor<'de> for OneOrManyVisitor {
            type Value = OneOrMany;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address or a list of addresses")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(v.to_owned()))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(OneOrMany::Many(items))
            }
        }

        deserializer.deserialize_any(OneOrManyVisitor)
    }
}
