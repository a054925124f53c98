//! What a failed watch request means, decided from the error alone: whether the server is
//! out of reach or restarting (then a probe of its `/readyz` tells when to retry), refuses
//! this identity, does not serve the kind, or expired the watch's resourceVersion.

use std::time::Duration;

use ::kube::runtime::watcher;
use tokio::time::Instant;

/// One failed watch request, classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Failure {
    /// No answer: the connection was refused, reset or timed out (a server down or restarting).
    Unreachable,
    /// An answer that the server cannot serve now: 429 (storage still initializing after a
    /// start), 500, 502, 503 or 504.
    Unavailable(u16),
    /// 403 to `verb` (`list` or `watch`): RBAC does not grant it, or a server that has just
    /// started has not synced its authorizer yet. The server's message.
    Forbidden {
        /// The refused verb.
        verb: &'static str,
        /// The server's message.
        message: String,
    },
    /// 404 to the list of the collection: the server does not serve the kind at all.
    NotServed(String),
    /// 410: the watch's resourceVersion is older than the server keeps (etcd compacted it, or
    /// a restarted server's watch cache starts after it); the watcher relists.
    Expired,
    /// Anything else (a bad answer, an undecodable event).
    Other,
}

impl Failure {
    /// Classifies a watcher's error.
    pub(super) fn of(error: &watcher::Error) -> Self {
        let (verb, failed) = match error {
            watcher::Error::InitialListFailed(failed) => ("list", failed),
            watcher::Error::WatchStartFailed(failed) | watcher::Error::WatchFailed(failed) => {
                ("watch", failed)
            }
            watcher::Error::WatchError(status) => return Self::of_status(status, "watch"),
            watcher::Error::NoResourceVersion => return Self::Other,
        };
        Self::of_request(failed, verb)
    }

    /// Classifies the client's error for a `verb` request.
    pub(super) fn of_request(error: &::kube::Error, verb: &'static str) -> Self {
        match error {
            ::kube::Error::Api(status) => Self::of_status(status, verb),
            // The transport: connect, TLS, reading the answer or the event stream.
            ::kube::Error::HyperError(_)
            | ::kube::Error::Service(_)
            | ::kube::Error::ReadEvents(_) => Self::Unreachable,
            _ => Self::Other,
        }
    }

    fn of_status(status: &::kube::core::Status, verb: &'static str) -> Self {
        match status.code {
            403 => Self::Forbidden {
                verb,
                message: status.message.clone(),
            },
            404 if verb == "list" => Self::NotServed(status.message.clone()),
            410 => Self::Expired,
            429 | 500 | 502 | 503 | 504 => Self::Unavailable(status.code),
            _ => Self::Other,
        }
    }

    /// The server is down or not ready yet: worth probing until it is.
    pub(super) fn is_outage(&self) -> bool {
        matches!(self, Self::Unreachable | Self::Unavailable(_))
    }
}

/// How long 403s to one kind must go on before they are taken for RBAC rather than for a
/// restarted server whose authorizer has not synced yet (a second or two, in practice). The
/// watch retries after 0.8, 1.6, 3.2, 6.4 s...: the fifth or sixth refusal is the error.
pub(super) const FORBIDDEN_GRACE: Duration = Duration::from_secs(10);

/// A gap between two 403s longer than this means a request succeeded between them: the
/// watch retries a persistent refusal at least every minute (30 s of backoff, up to twice that
/// with jitter), as kube-runtime's own backoff resets after two minutes without an error.
const FORBIDDEN_GAP: Duration = Duration::from_secs(120);

/// 403s to one kind since its last success: a streak that persists is RBAC.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Refusals {
    /// The streak's first and latest 403.
    streak: Option<(Instant, Instant)>,
}

impl Refusals {
    /// A 403 at `now`; true once the streak has lasted [`FORBIDDEN_GRACE`].
    pub(super) fn refused(&mut self, now: Instant) -> bool {
        let first = match self.streak {
            Some((first, latest)) if now.saturating_duration_since(latest) <= FORBIDDEN_GAP => {
                first
            }
            _ => now,
        };
        self.streak = Some((first, now));
        now.saturating_duration_since(first) >= FORBIDDEN_GRACE
    }

    /// An answer from the kind: the streak ends.
    pub(super) fn answered(&mut self) {
        self.streak = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, message: &str) -> Box<::kube::core::Status> {
        ::kube::core::Status::failure(message, "")
            .with_code(code)
            .boxed()
    }

    fn api(code: u16) -> ::kube::Error {
        ::kube::Error::Api(status(code, "why"))
    }

    #[test]
    fn transport_errors_are_unreachable_and_5xx_429_unavailable() {
        let refused = || {
            ::kube::Error::Service(Box::new(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused,
            )))
        };
        for error in [
            watcher::Error::InitialListFailed(refused()),
            watcher::Error::WatchStartFailed(refused()),
            watcher::Error::WatchFailed(::kube::Error::ReadEvents(std::io::Error::from(
                std::io::ErrorKind::ConnectionReset,
            ))),
        ] {
            assert_eq!(Failure::of(&error), Failure::Unreachable, "{error}");
            assert!(Failure::of(&error).is_outage());
        }
        for code in [429, 500, 502, 503, 504] {
            let failure = Failure::of(&watcher::Error::WatchStartFailed(api(code)));
            assert_eq!(failure, Failure::Unavailable(code));
            assert!(failure.is_outage());
        }
    }

    #[test]
    fn answers_that_are_no_outage() {
        let cases = [
            (
                watcher::Error::InitialListFailed(api(403)),
                Failure::Forbidden {
                    verb: "list",
                    message: "why".into(),
                },
            ),
            (
                watcher::Error::WatchError(status(403, "why")),
                Failure::Forbidden {
                    verb: "watch",
                    message: "why".into(),
                },
            ),
            (
                watcher::Error::InitialListFailed(api(404)),
                Failure::NotServed("why".into()),
            ),
            // A watch's 404 is no statement about the collection.
            (watcher::Error::WatchStartFailed(api(404)), Failure::Other),
            (
                watcher::Error::WatchError(status(410, "too old")),
                Failure::Expired,
            ),
            (watcher::Error::WatchStartFailed(api(410)), Failure::Expired),
            (watcher::Error::InitialListFailed(api(400)), Failure::Other),
            (watcher::Error::NoResourceVersion, Failure::Other),
            (
                watcher::Error::WatchFailed(::kube::Error::LinesCodecMaxLineLengthExceeded),
                Failure::Other,
            ),
        ];
        for (error, want) in cases {
            let failure = Failure::of(&error);
            assert!(!failure.is_outage(), "{error}");
            assert_eq!(failure, want, "{error}");
        }
    }

    #[test]
    fn a_403_is_rbac_once_its_streak_lasts_the_grace() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut refusals = Refusals::default();
        // A restarted server's authorizer syncing: a few 403s, then an answer.
        assert!(!refusals.refused(at(0)));
        assert!(!refusals.refused(at(2)));
        refusals.answered();
        // A new streak starts from its own first 403.
        assert!(!refusals.refused(at(20)));
        assert!(!refusals.refused(at(29)));
        assert!(refusals.refused(at(30)));
        assert!(refusals.refused(at(90)));
        // No 403 for longer than any retry takes: something succeeded between.
        assert!(!refusals.refused(at(300)));
        assert!(refusals.refused(at(300 + 10)));
    }
}
