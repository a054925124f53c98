//! Retrying the watches: back off from a server that keeps failing, come back at once to one
//! that answers again.
//!
//! Each watch backs off after a failure as kube-runtime's watchers do by default (0.8 s,
//! doubling to 30 s, with up to as much again of jitter), so a server that keeps refusing or
//! failing requests is not stormed. Alone, that backoff grows through an outage: connection
//! refused while the server is down, then the restarted server's 429s and 503s, and the next
//! retry may come up to a minute after the server is ready again. So the first watch that
//! finds the server down or not ready arms one [`Recovery`] probe, which asks the server's
//! `/readyz` once a [`PROBE_EVERY`] (one refused connection, or one small answer, each time)
//! until it answers 200; then every watch's pending pause is cut short, each retries at once,
//! and its backoff starts again from [`FIRST_PAUSE_RECOVERED`]: what a just-ready server still
//! answers (429 while a resource's storage initializes, then 410 to a watch older than its new
//! watch cache, which sends the watch to relist) costs a fraction of a second, and a server
//! that keeps failing after that still meets a backoff growing to 30 s. A server whose
//! `/readyz` says ready while watches fail is left to the watches' own backoff: the probe
//! wakes them only after it has itself seen the server not ready.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ::kube::runtime::utils::ResetTimerBackoff;
use ::kube::runtime::watcher::{self, Event, ExponentialBackoff};
use ::kube::Client;
use futures::stream::{self, Stream, StreamExt};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::failure::Failure;

/// How often the probe asks `/readyz` while the server is out of reach or not ready: the
/// bound, after the server is ready again, on when the watches retry.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// How long one probe may take before it counts as no answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The first pause after a failure: client-go's reflector's, as kube-runtime's default.
const FIRST_PAUSE: Duration = Duration::from_millis(800);

/// The first pause after a failure once the server is ready again after an outage.
const FIRST_PAUSE_RECOVERED: Duration = Duration::from_millis(100);

/// The longest pause before jitter (which adds up to as much again).
const LONGEST_PAUSE: Duration = Duration::from_secs(30);

/// A failure this long after the previous one starts from the first pause again, as in
/// kube-runtime's default: the watch worked in between.
const FRESH_AFTER: Duration = Duration::from_secs(120);

/// What one probe of `/readyz` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// 200, or an answer that is not about readiness (`/readyz` forbidden to this identity):
    /// the server serves requests.
    Serving,
    /// No answer, or 429/5xx: down or not ready yet.
    NotReady,
}

/// The watches' shared knowledge of the server's outages.
pub(super) struct Recovery {
    /// Bumped each time the server is ready again after the probe found it not ready.
    recovered: watch::Sender<u64>,
    /// A watch found the server down or not ready.
    armed: Notify,
}

// === impl Recovery ===

impl Recovery {
    /// No outage seen yet.
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            recovered: watch::Sender::new(0),
            armed: Notify::new(),
        })
    }

    /// Probes `/readyz` through `client` whenever a watch finds the server out; never ends.
    pub(super) async fn probe(&self, client: &Client) {
        self.probe_with(|| readyz(client)).await;
    }

    /// [`Recovery::probe`] with `probe` asking the server.
    async fn probe_with<F, Fut>(&self, mut probe: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Answer>,
    {
        loop {
            self.armed.notified().await;
            let mut since = None;
            while probe().await == Answer::NotReady {
                since.get_or_insert_with(Instant::now);
                tokio::time::sleep(PROBE_EVERY).await;
            }
            if let Some(since) = since {
                tracing::info!(
                    after_s = since.elapsed().as_secs_f64(),
                    "kubernetes API server ready again; every watch retries now"
                );
                self.recovered.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }

    /// `watch`, retried after each failure with backoff that a recovery cuts short.
    pub(super) fn retrying<K, S>(
        self: &Arc<Self>,
        watch: S,
    ) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static
    where
        S: Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
        K: Send + 'static,
    {
        let retry = Retry {
            watch: Box::pin(watch),
            backoff: None,
            first: FIRST_PAUSE,
            recovered: self.recovered.subscribe(),
            recovery: self.clone(),
            pause: None,
        };
        stream::unfold(retry, Retry::next)
    }
}

/// Pauses from `first`, doubling to [`LONGEST_PAUSE`], each with up to as much again of
/// jitter.
fn backoff(first: Duration) -> ResetTimerBackoff<ExponentialBackoff> {
    let pauses = backon::ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(LONGEST_PAUSE)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    ResetTimerBackoff::new(pauses.into(), FRESH_AFTER)
}

/// One watch's retry state.
struct Retry<S> {
    watch: std::pin::Pin<Box<S>>,
    /// The pauses since the last answer or recovery (made at the first failure after it).
    backoff: Option<ResetTimerBackoff<ExponentialBackoff>>,
    /// The first of them.
    first: Duration,
    recovered: watch::Receiver<u64>,
    recovery: Arc<Recovery>,
    /// The pause before the next request, after a failure.
    pause: Option<Duration>,
}

impl<K, S> Retry<S>
where
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
{
    async fn next(mut self) -> Option<(Result<Event<K>, watcher::Error>, Self)> {
        if let Some(pause) = self.pause.take() {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                // Also a recovery while the failed request was under way: it was seen
                // before the request began.
                Ok(()) = self.recovered.changed() => {
                    self.backoff = None;
                    self.first = FIRST_PAUSE_RECOVERED;
                }
            }
        }
        self.recovered.borrow_and_update();
        let item = self.watch.next().await?;
        match &item {
            // The watcher's own mark that it starts to list, before it asks: no answer. (kube-
            // runtime's backoff resets on it, so a list that keeps failing is retried every
            // 0.8-1.6 s for ever.)
            Ok(Event::Init) => {}
            Ok(_) => {
                self.backoff = None;
                self.first = FIRST_PAUSE;
            }
            Err(error) => {
                if Failure::of(error).is_outage() {
                    self.recovery.armed.notify_one();
                }
                let first = self.first;
                let pause = self.backoff.get_or_insert_with(|| backoff(first)).next();
                // The pauses never end (no limit of retries); were they to, the longest.
                self.pause = Some(pause.unwrap_or(LONGEST_PAUSE));
            }
        }
        Some((item, self))
    }
}

/// `GET /readyz`, as the watches' identity and through their connection pool.
async fn readyz(client: &Client) -> Answer {
    let request = match ::http::Request::get("/readyz").body(Vec::new()) {
        Ok(request) => request,
        // A constant path: cannot fail; if it did, the watches' own backoff stays.
        Err(_) => return Answer::Serving,
    };
    match tokio::time::timeout(PROBE_TIMEOUT, client.request_text(request)).await {
        Ok(Ok(_)) => Answer::Serving,
        Ok(Err(error)) if !Failure::of_request(&error, "get").is_outage() => Answer::Serving,
        Ok(Err(_)) | Err(_) => Answer::NotReady,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::sync::Mutex;

    use tokio::sync::mpsc;

    use super::*;

    fn refused() -> watcher::Error {
        watcher::Error::WatchStartFailed(::kube::Error::Service(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        ))))
    }

    /// A watch fed by the test, retried through `recovery`.
    type Item = Result<Event<u32>, watcher::Error>;

    fn fed(recovery: &Arc<Recovery>) -> (mpsc::UnboundedSender<Item>, impl Stream<Item = Item>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let watch = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) });
        (tx, recovery.retrying(watch))
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_longer_each_time_and_an_answer_resets_it() {
        let recovery = Recovery::new();
        let (tx, watch) = fed(&recovery);
        let mut watch = Box::pin(watch);
        let mut gaps = Vec::new();
        for _ in 0..6 {
            let started = Instant::now();
            // Each relist begins with the watcher's Init, before it asks: no answer.
            tx.send(Ok(Event::Init)).unwrap();
            assert!(matches!(watch.next().await, Some(Ok(Event::Init))));
            tx.send(Err(refused())).unwrap();
            assert!(watch.next().await.unwrap().is_err());
            gaps.push(started.elapsed());
        }
        // The first failure is passed on at once; each later one waits out a longer pause:
        // 0.8 s doubling, each with up to as much again of jitter.
        assert_eq!(gaps[0], Duration::ZERO);
        for (i, gap) in gaps[1..].iter().enumerate() {
            let base = FIRST_PAUSE * 2u32.pow(i as u32);
            assert!(*gap >= base && *gap <= base * 2, "pause {i}: {gap:?}");
        }
        // An event resets it: the pause after the next failure is the first one again.
        tx.send(Ok(Event::Apply(1))).unwrap();
        let started = Instant::now();
        assert!(watch.next().await.unwrap().is_ok());
        assert!(started.elapsed() >= FIRST_PAUSE * 16);
        tx.send(Err(refused())).unwrap();
        assert!(watch.next().await.unwrap().is_err());
        tx.send(Err(refused())).unwrap();
        let started = Instant::now();
        assert!(watch.next().await.unwrap().is_err());
        assert!(started.elapsed() <= FIRST_PAUSE * 2);
    }

    /// A fed watch that has failed 7 times: deep into its backoff, as after a long outage.
    async fn deep_in_backoff() -> (
        Arc<Recovery>,
        mpsc::UnboundedSender<Item>,
        Pin<Box<impl Stream<Item = Item>>>,
    ) {
        let recovery = Recovery::new();
        let (tx, watch) = fed(&recovery);
        let mut watch = Box::pin(watch);
        for _ in 0..7 {
            tx.send(Err(refused())).unwrap();
            watch.next().await.unwrap().unwrap_err();
        }
        (recovery, tx, watch)
    }

    #[tokio::test(start_paused = true)]
    async fn a_recovery_cuts_every_pause_short() {
        let (recovery, tx, mut watch) = deep_in_backoff().await;
        let failed = Instant::now();
        let waker = recovery.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            waker.recovered.send_modify(|n| *n += 1);
        });
        tx.send(Err(refused())).unwrap();
        watch.next().await.unwrap().unwrap_err();
        assert_eq!(failed.elapsed(), Duration::from_secs(2));
        // And the backoff starts again from its short first pause: the just-ready server's
        // last 429 and the 410 that sends the watch to relist cost a fraction of a second.
        for pause in [FIRST_PAUSE_RECOVERED, FIRST_PAUSE_RECOVERED * 2] {
            tx.send(Err(refused())).unwrap();
            let started = Instant::now();
            watch.next().await.unwrap().unwrap_err();
            let gap = started.elapsed();
            assert!(gap >= pause && gap <= pause * 2, "{gap:?}");
        }
        // An answer brings back the usual first pause.
        tx.send(Ok(Event::Apply(1))).unwrap();
        assert!(matches!(watch.next().await, Some(Ok(Event::Apply(1)))));
        tx.send(Err(refused())).unwrap();
        watch.next().await.unwrap().unwrap_err();
        tx.send(Err(refused())).unwrap();
        let started = Instant::now();
        watch.next().await.unwrap().unwrap_err();
        assert!(started.elapsed() >= FIRST_PAUSE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_recovery_during_the_failed_request_is_not_missed() {
        let (recovery, tx, mut watch) = deep_in_backoff().await;
        // The next request is under way (polled) when the server is found ready again, and
        // its answer is the old failure.
        let pending = tokio::time::timeout(Duration::from_secs(120), watch.next()).await;
        assert!(pending.is_err(), "nothing was fed");
        recovery.recovered.send_modify(|n| *n += 1);
        tx.send(Err(refused())).unwrap();
        watch.next().await.unwrap().unwrap_err();
        let failed = Instant::now();
        tx.send(Ok(Event::Apply(2))).unwrap();
        assert!(matches!(watch.next().await, Some(Ok(Event::Apply(2)))));
        assert_eq!(failed.elapsed(), Duration::ZERO);
    }

    /// A probe answering from `answers` (then `Serving`), counting its calls.
    fn scripted(answers: &[Answer]) -> (Arc<Mutex<VecDeque<Answer>>>, Arc<Mutex<u32>>) {
        (
            Arc::new(Mutex::new(answers.iter().copied().collect())),
            Arc::new(Mutex::new(0)),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn the_probe_wakes_the_watches_once_the_server_is_ready_after_an_outage() {
        let recovery = Recovery::new();
        let (answers, calls) = scripted(&[Answer::NotReady; 30]);
        let prober = recovery.clone();
        let (a, c) = (answers.clone(), calls.clone());
        tokio::spawn(async move {
            prober
                .probe_with(move || {
                    *c.lock().unwrap() += 1;
                    let answer = a.lock().unwrap().pop_front().unwrap_or(Answer::Serving);
                    async move { answer }
                })
                .await;
        });
        let mut recovered = recovery.recovered.subscribe();
        // Not armed: no probe at all.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(*calls.lock().unwrap(), 0);

        let armed = Instant::now();
        recovery.armed.notify_one();
        recovered.changed().await.unwrap();
        // One probe a second through the outage, the 31st answers.
        assert_eq!(armed.elapsed(), PROBE_EVERY * 30);
        assert_eq!(*calls.lock().unwrap(), 31);

        // Armed while the server answers: one probe, and no wake-up.
        recovery.armed.notify_one();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(*calls.lock().unwrap(), 32);
        assert!(!recovered.has_changed().unwrap());
    }
}
