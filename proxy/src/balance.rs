//! Which backend a new connection goes to: the one ordering that the connect step follows
//! and `explain` shows, pure so it is tested and benchmarked without sockets.

use smallvec::SmallVec;

use crate::health::{LoadGuard, Target};
use crate::table::{Condition, RouteSpec};

/// How a backend stands for new connections, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Standing {
    /// Ready, in the route's zone (or the route prefers no zone).
    Near,
    /// Ready, in another zone: taken when no near one is left.
    Far,
    /// Serving but terminating (a pod being rolled): a last resort.
    Terminating,
}

impl Standing {
    /// `near`, `far` or `terminating`, as `/routes` and `explain` show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Near => "near",
            Self::Far => "far",
            Self::Terminating => "terminating",
        }
    }

    /// How backend `index` of `spec` stands, from what the source knows of it.
    pub fn of(spec: &RouteSpec, index: usize) -> Self {
        match spec.facts.get(index) {
            None => Self::Near,
            Some(facts) => match facts.condition {
                Condition::Terminating => Self::Terminating,
                Condition::Ready if spec.zone.is_some() && facts.zone != spec.zone => Self::Far,
                Condition::Ready => Self::Near,
            },
        }
    }
}

/// Candidates' indices in the order they are tried: inline up to a route of eight backends,
/// so choosing allocates nothing for a hosted kube-apiserver's usual three.
pub type Order = SmallVec<[usize; 8]>;

/// The weight of backend `index` of `spec`: 1 unless the source says otherwise.
pub fn weight_of(spec: &RouteSpec, index: usize) -> u32 {
    spec.facts.get(index).map_or(1, |facts| facts.weight)
}

/// One place a new connection could go, as it stands now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<A> {
    /// The address (or, unresolved, the backend).
    pub at: A,
    /// Its zone and condition.
    pub standing: Standing,
    /// Whether passive health ejected it.
    pub ejected: bool,
    /// Forwarded connections open to it through this replica.
    pub open: usize,
    /// Its share of new connections (see [`BackendFacts::weight`](crate::BackendFacts)).
    pub weight: u32,
}

/// The order a new connection tries `candidates` in, as indices: those not ejected first
/// (a route whose endpoints are all ejected still tries them, last), then by standing, then
/// the fewest open per unit of weight (weighted least connections), then in turn among
/// equals: the turn walks the candidates' weights, so a backend of weight 3 comes first three
/// times as often as one of weight 1 (with equal weights, plain round robin from `turn`).
///
/// The one ordering: the connect step takes its first untried entry, `explain` shows it.
pub fn order<A>(candidates: &[Candidate<A>], turn: usize) -> Order {
    let n = candidates.len();
    let weight = |c: &Candidate<A>| u64::from(c.weight.max(1));
    let total: u64 = candidates.iter().map(weight).sum();
    let mut left = (turn as u64) % total.max(1);
    let start = candidates
        .iter()
        .position(|c| {
            let w = weight(c);
            if left < w {
                return true;
            }
            left -= w;
            false
        })
        .unwrap_or(0);
    // Rotated to start at the turn's candidate, then sorted stably: equals keep the rotation.
    let mut order: Order = (0..n).map(|k| (start + k) % n).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&candidates[a], &candidates[b]);
        // open / weight compared without division: open_x * w_y against open_y * w_x.
        let load =
            |c: &Candidate<A>, other: &Candidate<A>| c.open as u128 * u128::from(weight(other));
        (x.ejected, x.standing)
            .cmp(&(y.ejected, y.standing))
            .then_with(|| load(x, y).cmp(&load(y, x)))
    });
    order
}

/// Takes the first candidate of [`order`] that `untried` lets through, with open counts as
/// they stand, and counts a connection against it. Reading and counting are separate atomic
/// steps: connections choosing at the same instant may pick the same endpoint, which their
/// different round-robin turns make rare and the next choice corrects.
pub fn pick(
    candidates: &mut [Candidate<Target>],
    turn: usize,
    untried: impl Fn(usize) -> bool,
) -> Option<(usize, LoadGuard)> {
    for candidate in candidates.iter_mut() {
        candidate.open = candidate.at.endpoint.open();
    }
    let index = order(candidates, turn).into_iter().find(|&i| untried(i))?;
    Some((index, candidates[index].at.endpoint.take()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Backend;

    fn c(standing: Standing, ejected: bool, open: usize) -> Candidate<()> {
        Candidate {
            at: (),
            standing,
            ejected,
            open,
            weight: 1,
        }
    }

    #[test]
    fn weights_share_the_turns_and_the_load() {
        let w = |weight, open| Candidate {
            weight,
            ..c(Standing::Near, false, open)
        };
        // Equal load: the turns go 3:1.
        let all = [w(3, 0), w(1, 0)];
        let firsts: Vec<usize> = (0..8).map(|turn| order(&all, turn)[0]).collect();
        assert_eq!(firsts, [0, 0, 0, 1, 0, 0, 0, 1]);
        // Weighted least connections: 2 open of weight 3 is less loaded than 1 of weight 1.
        assert_eq!(order(&[w(3, 2), w(1, 1)], 3)[..], [0, 1]);
        assert_eq!(order(&[w(3, 4), w(1, 1)], 0)[..], [1, 0]);
        // A weight of 0 counts as 1, never a division by zero.
        assert_eq!(order(&[w(0, 1), w(1, 0)], 0)[..], [1, 0]);
    }

    #[test]
    fn orders_by_health_then_standing_then_load_then_turn() {
        use Standing::{Far, Near, Terminating};
        let all = [
            c(Near, true, 0),
            c(Terminating, false, 0),
            c(Far, false, 0),
            c(Near, false, 2),
            c(Near, false, 1),
            c(Near, false, 1),
        ];
        assert_eq!(order(&all, 0)[..], [4, 5, 3, 2, 1, 0]);
        assert_eq!(order(&all, 5)[..], [5, 4, 3, 2, 1, 0], "equals in turn");
        let equal = [c(Near, false, 0), c(Near, false, 0), c(Near, false, 0)];
        assert_eq!(order(&equal, 4)[..], [1, 2, 0]);
        assert!(order::<()>(&[], 3).is_empty());
    }

    #[test]
    fn standing_follows_the_facts_and_the_zone() {
        use crate::table::BackendFacts;
        let a = Backend::parse("10.0.0.1:1").unwrap();
        let mut spec = RouteSpec::new("r", Vec::new(), vec![a.clone(), a.clone(), a], "t");
        assert_eq!(Standing::of(&spec, 0), Standing::Near, "no facts: near");
        let fact = |zone: &str, condition| BackendFacts {
            zone: Some(zone.into()),
            condition,
            weight: 1,
        };
        spec.facts = vec![
            fact("a", Condition::Ready),
            fact("b", Condition::Ready),
            fact("a", Condition::Terminating),
        ];
        assert_eq!(Standing::of(&spec, 1), Standing::Near, "no zone preferred");
        spec.zone = Some("a".into());
        let got: Vec<_> = (0..3).map(|i| Standing::of(&spec, i)).collect();
        assert_eq!(got, [Standing::Near, Standing::Far, Standing::Terminating]);
    }

    #[test]
    fn picks_in_order_skipping_the_tried_and_counts_until_dropped() {
        use std::net::SocketAddr;
        use std::sync::Arc;
        let cand = |port, standing| Candidate {
            at: Target {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                endpoint: Arc::default(),
            },
            standing,
            ejected: false,
            open: 0,
            weight: 1,
        };
        let mut all = [
            cand(1, Standing::Near),
            cand(2, Standing::Near),
            cand(3, Standing::Terminating),
        ];
        let open = |all: &[Candidate<Target>]| {
            let n: Vec<usize> = all.iter().map(|c| c.at.endpoint.open()).collect();
            (n[0], n[1], n[2])
        };
        let (i, first) = pick(&mut all, 1, |_| true).unwrap();
        assert_eq!(i, 1, "equals in turn");
        let (i, second) = pick(&mut all, 1, |_| true).unwrap();
        assert_eq!(i, 0, "the least loaded");
        let (i, third) = pick(&mut all, 0, |_| true).unwrap();
        assert_eq!(i, 0, "a tie again, broken by the turn");
        assert_eq!(open(&all), (2, 1, 0));
        let (i, _fourth) = pick(&mut all, 0, |i| i != 1 && i != 0).unwrap();
        assert_eq!(i, 2, "the terminating one once the others are tried");
        drop((first, second, third));
        assert_eq!(open(&all), (0, 0, 1));
        assert!(pick(&mut [], 0, |_| true).is_none());
    }
}
