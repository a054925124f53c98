//! From the status [`graph::build`](super::graph::build) decided to the server-side apply
//! bodies that write it: pure, and `None` when the object already says exactly that, so an
//! unchanged world writes nothing.
//!
//! A condition's `lastTransitionTime` is kept from the object while its `status` is
//! unchanged, and is `now` when it flips or is new (`metav1.Condition`). Equality ignores
//! the time and compares type, status, reason, message and observedGeneration.
//!
//! `status.parents` of a TLSRoute is an atomic list (`x-kubernetes-list-type: atomic` in the
//! CRD), so an apply replaces it whole: the body carries the other controllers' entries as
//! read, then ours. Gateway `status.listeners` and every `conditions` are map lists, merged
//! by key, so those bodies carry only what sniroute owns.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::graph::{ClassStatus, Cond, GatewayStatus, Key, ParentStatus};
use super::objects::{
    Gateway, GatewayAddress, GatewayClass, ParentRef, RouteGroupKind, StatusCondition, TlsRoute,
    GROUP,
};

/// The `apiVersion` of GatewayClass, Gateway and TLSRoute.
const API_VERSION: &str = "gateway.networking.k8s.io/v1";

/// Whether `previous` holds exactly the `desired` conditions, times aside.
fn same_conditions(desired: &[Cond], previous: &[StatusCondition]) -> bool {
    desired.len() == previous.len()
        && desired.iter().all(|d| {
            previous.iter().any(|p| {
                p.kind.as_deref() == Some(d.kind)
                    && p.status.as_deref() == Some(status_str(d.status))
                    && p.reason.as_deref() == Some(d.reason)
                    && p.message.as_deref().unwrap_or_default() == d.message
                    && p.observed_generation.unwrap_or_default() == d.observed_generation
            })
        })
}

fn status_str(status: bool) -> &'static str {
    if status {
        "True"
    } else {
        "False"
    }
}

/// The conditions as JSON, each keeping its transition time from `previous` if its status
/// did not change.
fn conditions_json(desired: &[Cond], previous: &[StatusCondition], now: &Time) -> Value {
    Value::Array(
        desired
            .iter()
            .map(|d| {
                let kept = previous
                    .iter()
                    .find(|p| {
                        p.kind.as_deref() == Some(d.kind)
                            && p.status.as_deref() == Some(status_str(d.status))
                    })
                    .and_then(|p| p.last_transition_time.clone());
                json!({
                    "type": d.kind,
                    "status": status_str(d.status),
                    "reason": d.reason,
                    "message": d.message,
                    "observedGeneration": d.observed_generation,
                    "lastTransitionTime": kept.unwrap_or_else(|| now.clone()),
                })
            })
            .collect(),
    )
}

fn kinds_json(kinds: &[RouteGroupKind]) -> Value {
    kinds
        .iter()
        .map(|k| json!({"group": k.group.as_deref().unwrap_or(GROUP), "kind": k.kind}))
        .collect()
}

fn addresses_json(addresses: &[GatewayAddress]) -> Value {
    addresses
        .iter()
        .map(|a| json!({"type": a.kind.as_deref().unwrap_or("IPAddress"), "value": a.value}))
        .collect()
}

/// A parentRef as status records it: group and kind filled in (the CRD defaults them), so
/// what is read back compares equal.
fn parent_ref_json(parent: &ParentRef) -> Value {
    let mut map = Map::new();
    map.insert(
        "group".into(),
        parent.group.as_deref().unwrap_or(GROUP).into(),
    );
    map.insert(
        "kind".into(),
        parent.kind.as_deref().unwrap_or("Gateway").into(),
    );
    if let Some(namespace) = &parent.namespace {
        map.insert("namespace".into(), namespace.clone().into());
    }
    map.insert(
        "name".into(),
        parent.name.clone().unwrap_or_default().into(),
    );
    if let Some(section) = &parent.section_name {
        map.insert("sectionName".into(), section.clone().into());
    }
    if let Some(port) = parent.port {
        map.insert("port".into(), port.into());
    }
    Value::Object(map)
}

fn normalized(parent: &ParentRef) -> ParentRef {
    ParentRef {
        group: Some(parent.group.clone().unwrap_or_else(|| GROUP.to_owned())),
        kind: Some(parent.kind.clone().unwrap_or_else(|| "Gateway".to_owned())),
        ..parent.clone()
    }
}

fn body(kind: &str, name: &str, namespace: Option<&str>, status: Value) -> Value {
    let mut metadata = json!({ "name": name });
    if let Some(namespace) = namespace {
        metadata["namespace"] = namespace.into();
    }
    json!({"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "status": status})
}

/// The apply body for a GatewayClass's status, or `None` if it already says this.
pub fn class_apply(
    name: &str,
    want: &ClassStatus,
    have: &GatewayClass,
    now: &Time,
) -> Option<Value> {
    let previous = have
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    if same_conditions(&want.conditions, &previous) {
        return None;
    }
    let status = json!({ "conditions": conditions_json(&want.conditions, &previous, now) });
    Some(body("GatewayClass", name, None, status))
}

/// The apply body for a Gateway's status, or `None` if it already says this.
pub fn gateway_apply(key: &Key, want: &GatewayStatus, have: &Gateway, now: &Time) -> Option<Value> {
    let read = have.status.clone().unwrap_or_default();
    let previous = read.conditions.unwrap_or_default();
    let listeners_before = read.listeners.unwrap_or_default();
    let listener_before = |name: &str| {
        listeners_before
            .iter()
            .find(|l| l.name.as_deref() == Some(name))
    };
    let addresses_same = read
        .addresses
        .unwrap_or_default()
        .iter()
        .map(|a| (a.kind.as_deref().unwrap_or("IPAddress"), a.value.as_deref()))
        .eq(want
            .addresses
            .iter()
            .map(|a| (a.kind.as_deref().unwrap_or("IPAddress"), a.value.as_deref())));
    let listeners_same = listeners_before.len() == want.listeners.len()
        && want.listeners.iter().all(|l| {
            listener_before(&l.name).is_some_and(|b| {
                b.attached_routes == Some(l.attached_routes)
                    && b.supported_kinds
                        .as_deref()
                        .unwrap_or_default()
                        .iter()
                        .map(|k| (k.group.as_deref().unwrap_or(GROUP), k.kind.as_deref()))
                        .eq(l
                            .supported_kinds
                            .iter()
                            .map(|k| (k.group.as_deref().unwrap_or(GROUP), k.kind.as_deref())))
                    && same_conditions(&l.conditions, b.conditions.as_deref().unwrap_or_default())
            })
        });
    if addresses_same && listeners_same && same_conditions(&want.conditions, &previous) {
        return None;
    }
    let listeners: Vec<Value> = want
        .listeners
        .iter()
        .map(|l| {
            let before = listener_before(&l.name)
                .and_then(|b| b.conditions.clone())
                .unwrap_or_default();
            json!({
                "name": l.name,
                "supportedKinds": kinds_json(&l.supported_kinds),
                "attachedRoutes": l.attached_routes,
                "conditions": conditions_json(&l.conditions, &before, now),
            })
        })
        .collect();
    let status = json!({
        "addresses": addresses_json(&want.addresses),
        "conditions": conditions_json(&want.conditions, &previous, now),
        "listeners": listeners,
    });
    Some(body("Gateway", &key.name, Some(&key.namespace), status))
}

/// One `status.parents` entry as read.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ParentRead {
    #[serde(default)]
    parent_ref: ParentRef,
    #[serde(default)]
    conditions: Vec<StatusCondition>,
}

/// The apply body for a TLSRoute's `status.parents` (the other controllers' entries as they
/// are, then `want`, ours), or `None` if it already says this.
pub fn route_apply(
    key: &Key,
    controller: &str,
    want: &[ParentStatus],
    have: &TlsRoute,
    now: &Time,
) -> Option<Value> {
    let raw = have
        .status
        .as_ref()
        .and_then(|s| s.parents.clone())
        .unwrap_or_default();
    let (mine, others): (Vec<Value>, Vec<Value>) = raw
        .into_iter()
        .partition(|p| p.get("controllerName").and_then(Value::as_str) == Some(controller));
    let mine: Vec<ParentRead> = mine
        .into_iter()
        .filter_map(|p| serde_json::from_value(p).ok())
        .collect();
    let before = |parent: &ParentRef| {
        let parent = normalized(parent);
        mine.iter().find(|m| normalized(&m.parent_ref) == parent)
    };
    let same = mine.len() == want.len()
        && want.iter().all(|w| {
            before(&w.parent_ref).is_some_and(|m| same_conditions(&w.conditions, &m.conditions))
        });
    if same {
        return None;
    }
    let mut parents = others;
    for w in want {
        let previous = before(&w.parent_ref)
            .map(|m| m.conditions.clone())
            .unwrap_or_default();
        parents.push(json!({
            "parentRef": parent_ref_json(&w.parent_ref),
            "controllerName": controller,
            "conditions": conditions_json(&w.conditions, &previous, now),
        }));
    }
    Some(body(
        "TLSRoute",
        &key.name,
        Some(&key.namespace),
        json!({ "parents": parents }),
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::gateway::graph::Cond;

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap())
    }

    fn accepted(generation: i64) -> Cond {
        Cond {
            kind: "Accepted",
            status: true,
            reason: "Accepted",
            message: "route accepted".into(),
            observed_generation: generation,
        }
    }

    #[test]
    fn a_route_status_keeps_other_controllers_and_is_written_only_when_it_differs() {
        let want = vec![ParentStatus {
            parent_ref: ParentRef {
                name: Some("gw".into()),
                ..ParentRef::default()
            },
            conditions: vec![accepted(1)],
        }];
        let route: TlsRoute = serde_json::from_value(json!({
            "metadata": {"name": "r", "namespace": "n", "generation": 1},
            "status": {"parents": [{"controllerName": "other.example/c",
                                    "parentRef": {"name": "theirs"}, "conditions": []}]},
        }))
        .unwrap();
        let key = Key::new("n", "r");
        let body = route_apply(
            &key,
            "sniroute.dev/gateway-controller",
            &want,
            &route,
            &now(),
        )
        .unwrap();
        let parents = body["status"]["parents"].as_array().unwrap();
        assert_eq!(parents.len(), 2);
        assert_eq!(parents[0]["controllerName"], "other.example/c");
        assert_eq!(parents[1]["parentRef"]["kind"], "Gateway");
        assert_eq!(parents[1]["conditions"][0]["observedGeneration"], 1);

        // Read back as the API server stores it: the same status writes nothing ...
        let mut written = route.clone();
        written.status = serde_json::from_value(body["status"].clone()).unwrap();
        assert_eq!(
            route_apply(
                &key,
                "sniroute.dev/gateway-controller",
                &want,
                &written,
                &now()
            ),
            None
        );
        // ... a new generation writes, keeping the transition time of an unflipped condition.
        let later = Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_100).unwrap());
        let want2 = vec![ParentStatus {
            conditions: vec![accepted(2)],
            ..want[0].clone()
        }];
        let body = route_apply(
            &key,
            "sniroute.dev/gateway-controller",
            &want2,
            &written,
            &later,
        )
        .unwrap();
        assert_eq!(
            body["status"]["parents"][1]["conditions"][0]["lastTransitionTime"],
            json!(now())
        );
    }
}
