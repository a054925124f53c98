//! What the data plane would do with a connection for a name, from a client: the table's own
//! lookup and admission (the calls a connection makes), the backends in the order the next
//! connection tries them (the connect step's own [`order`]), and the limits as they stand.
//! For `sniroute explain`, and `/routes` for the backends.

use std::net::IpAddr;
use std::sync::Arc;

use crate::balance::{order, weight_of, Candidate, Standing};
use crate::name::ServerName;
use crate::outcome::Reason;
use crate::route_state::Endpoints;
use crate::table::{Allowed, Backend, BackendFacts, Denial, Route, RouteKey};
use crate::Proxy;

/// The answer for one name and (optionally) one client.
#[derive(Debug)]
pub struct Explanation {
    /// The table generation the answer comes from.
    pub generation: u64,
    /// The route the name matches, if any.
    pub route: Option<RouteFacts>,
    /// Admitted (and by what), or the refusal a connection would get.
    pub verdict: Result<Admitted, Reason>,
}

/// What a matched route is and holds now.
#[derive(Debug)]
pub struct RouteFacts {
    /// The route.
    pub route: Arc<Route>,
    /// `exact`, or the wildcard pattern that matched.
    pub matched: String,
    /// The backends in the order the next connection tries them, as [`order`] gives it.
    pub backends: Vec<BackendNow>,
    /// Forwarded connections open through the route now.
    pub open: usize,
}

/// A backend as its source describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    /// Where it is.
    pub backend: Backend,
    /// Its zone and condition.
    pub facts: BackendFacts,
}

/// A backend of a route as it stands now: described, ranked, ejected or not, its load.
/// A name (resolved only at connect time) is never ejected and has nothing open here.
pub type BackendNow = Candidate<Described>;

/// Why a client would be admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// The route has no allow list.
    Everyone,
    /// This entry of the route's `allowed_cidrs`.
    By(ipnet::IpNet),
    /// No client was given: the allow list is not judged.
    ClientNotGiven,
}

impl Proxy {
    /// Explains a connection for `name` from `client` against the table in use, on the
    /// Gateway listener bound on `port` (`None`: the `listen` listeners).
    pub fn explain(
        &self,
        name: &ServerName,
        client: Option<IpAddr>,
        port: Option<u16>,
    ) -> Explanation {
        let snapshot = self.table.load();
        let table = &snapshot.table;
        let route = table.matching_on(port, name).map(|(route, matched)| {
            let now = self.backends_now(route);
            let backends = order(&now, route.peek_turn())
                .into_iter()
                .map(|i| now[i].clone())
                .collect();
            RouteFacts {
                route: route.clone(),
                matched: matched.to_string(),
                backends,
                open: route.state().open(),
            }
        });
        let key = match port {
            None => RouteKey::Name(name.clone()),
            Some(port) => RouteKey::OnPort(port, name.clone()),
        };
        let admitted = match client {
            Some(client) => table
                .admit(&key, client)
                .map(|admission| match admission.allowed {
                    Some(Allowed::By(net)) => Admitted::By(*net),
                    Some(Allowed::Everyone) | None => Admitted::Everyone,
                })
                .map_err(Reason::Denied),
            None => match (&route, port) {
                (Some(_), _) => Ok(Admitted::ClientNotGiven),
                (None, None) => Err(Reason::Denied(Denial::UnknownName(name.clone()))),
                (None, Some(port)) => {
                    Err(Reason::Denied(Denial::UnknownOnPort(port, name.clone())))
                }
            },
        };
        let verdict = admitted.and_then(|admitted| {
            let facts = route.as_ref();
            let at_limit = facts.is_some_and(|facts| {
                let route = &facts.route;
                route.state().is_full(route.max_connections())
            });
            if let Some(facts) = facts {
                if let Some(why) = facts.route.spec().no_backend.clone() {
                    let route = facts.route.name().into();
                    return Err(Reason::NoBackend { route, why });
                }
            }
            if at_limit {
                let route = facts.map_or_else(Default::default, |f| f.route.name().into());
                return Err(Reason::RouteLimit { route });
            }
            if self.connections_open.is_full(self.settings.max_connections) {
                return Err(Reason::GlobalLimit);
            }
            Ok(admitted)
        });
        Explanation {
            generation: snapshot.generation,
            route,
            verdict,
        }
    }

    /// Each backend of `route` as it stands now, in the route's order.
    pub fn backends_now(&self, route: &Route) -> Vec<BackendNow> {
        let spec = route.spec();
        spec.backends
            .iter()
            .enumerate()
            .map(|(i, backend)| {
                let (ejected, open) = match (backend, &route.endpoints()[i]) {
                    (Backend::Addr(_), Endpoints::Addr(target)) => {
                        (target.endpoint.is_ejected(), target.endpoint.open())
                    }
                    _ => (false, 0),
                };
                Candidate {
                    at: Described {
                        backend: backend.clone(),
                        facts: spec.facts.get(i).cloned().unwrap_or_default(),
                    },
                    standing: Standing::of(spec, i),
                    ejected,
                    open,
                    weight: weight_of(spec, i),
                }
            })
            .collect()
    }
}
