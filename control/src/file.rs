//! The file source: reloads the config file's routes when the file changes or on SIGHUP.
//!
//! The binary loads the file once at startup (and exits before binding anything if it is
//! bad), publishes its table, then hands the file to [`FileSource`], which only watches.
//!
//! The file's *directory* is watched, not the file: editors replace files by writing a
//! temporary file and renaming it over, and Kubernetes updates a mounted ConfigMap by flipping
//! the `..data` symlink the file points through. Watching the file's inode would miss both.
//! Every event in the directory (after a short debounce) leads to a read, and only bytes that
//! differ from the last read are parsed, so unrelated churn in the directory costs one small
//! read and logs nothing. Writes to a file still open for writing are not such events: the
//! close after them is (`may_change_the_file`), so a file written in place is read whole.
//!
//! Limitation: only the directory holding the path as given is watched. If that path is a
//! symlink into another directory (other than the ConfigMap layout, where the links live in
//! the same directory), edits made there are picked up on the next SIGHUP or directory event.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::Notify;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::error::ConfigError;
use crate::publish::Publisher;
use crate::source::SourceKind;

/// How long the directory must be quiet before the file is read: editors and the ConfigMap
/// updater make several changes in a burst, and reading mid-burst only logs a spurious error.
const QUIET: Duration = Duration::from_millis(75);
/// The longest a burst may delay a reload, so a directory that never goes quiet still reloads
/// well within a second of the change.
const MAX_DELAY: Duration = Duration::from_millis(400);

/// Watches a config file and publishes its routes whenever its content changes.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    publisher: Arc<Publisher>,
    /// The config the process started with: its non-route settings are the ones in force.
    running: Config,
}

/// What the last reads of the file found.
#[derive(Default)]
struct State {
    /// The bytes whose table is published, once known.
    applied: Option<Vec<u8>>,
    /// The bytes last read, valid or not; `None` after a failed read.
    seen: Option<Vec<u8>>,
    /// Whether the last attempt failed (so its recovery is worth a line).
    failing: bool,
}

/// The error on one line (problems separated by `; `), so one event stays one log line.
fn one_line(error: &ConfigError) -> String {
    error.to_string().replace('\n', "; ")
}

// === impl FileSource ===

impl FileSource {
    /// A source for the file at `path`, which the process loaded at startup as `running` and
    /// whose table it has already published through `publisher`.
    pub fn new(path: impl Into<PathBuf>, running: Config, publisher: Arc<Publisher>) -> Self {
        Self {
            path: path.into(),
            publisher,
            running,
        }
    }

    /// Watches until `shutdown` is cancelled; fails only if the watch or the SIGHUP handler
    /// cannot be set up. Bad files are logged and leave the last good table in place.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ConfigError> {
        let hangup = signal(SignalKind::hangup()).map_err(|source| ConfigError::Signal {
            file: self.path.display().to_string(),
            source,
        })?;
        self.run_with(shutdown, Hangup::Signal(hangup)).await
    }

    /// [`FileSource::run`], with reload requests from `hangup`.
    async fn run_with(
        self,
        shutdown: CancellationToken,
        mut hangup: Hangup,
    ) -> Result<(), ConfigError> {
        let file = self.path.display().to_string();
        let changed = Arc::new(Notify::new());
        // Dropping the watcher stops it, so it lives as long as this function.
        let _watcher = watch_dir(&self.path, changed.clone())?;

        // The file may have changed between the startup load and the watch starting.
        let mut state = State::default();
        self.reload(&mut state, false).await;
        // Info, not debug: from this line on every change to the file is seen (tests wait on it).
        tracing::info!(file, "watching config file");
        loop {
            let forced = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = changed.notified() => false,
                Some(()) = hangup.recv() => true,
            };
            if forced {
                tracing::info!(file, "SIGHUP: reloading config file");
            } else if !settle(&changed, &shutdown).await {
                return Ok(());
            }
            self.reload(&mut state, forced).await;
        }
    }

    /// Reads the file and, if its content is new (or `forced`), validates it and publishes.
    async fn reload(&self, state: &mut State, forced: bool) {
        let file = self.path.display().to_string();
        let path = self.path.clone();
        let read = tokio::task::spawn_blocking(move || config::read_file(&path))
            .await
            .unwrap_or_else(|join| {
                Err(ConfigError::Read {
                    file: file.clone(),
                    source: std::io::Error::other(join),
                })
            });
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(error) => {
                if !state.failing || forced {
                    tracing::warn!(error = %one_line(&error), "config reload failed");
                    self.publisher.source_failed(SourceKind::File, 1);
                }
                state.failing = true;
                state.seen = None;
                return;
            }
        };
        if !forced && state.seen.as_ref() == Some(&bytes) {
            return;
        }
        state.seen = Some(bytes.clone());
        if state.applied.as_ref() == Some(&bytes) {
            if state.failing || forced {
                tracing::info!(file, "config file unchanged from the table in use");
            }
            state.failing = false;
            return;
        }
        let built = Config::from_bytes(&bytes, &file)
            .and_then(|config| config.table().map(|table| (config, table)));
        let (config, table) = match built {
            Ok(built) => built,
            Err(error) => {
                tracing::warn!(error = %one_line(&error), "config reload failed");
                self.publisher.source_failed(SourceKind::File, 1);
                state.failing = true;
                return;
            }
        };
        let recovered = std::mem::replace(&mut state.failing, false);
        if state.applied.is_none() && config == self.running {
            // The file as the process started with it: nothing to publish.
            if recovered || forced {
                tracing::info!(file, "config file unchanged from the table in use");
            }
            state.applied = Some(bytes);
            return;
        }
        let settings = self.running.restart_settings_changed(&config);
        if !settings.is_empty() {
            tracing::warn!(
                file,
                settings = %settings.join(", "),
                "config settings changed that only take effect after a restart; \
                 the routes were applied"
            );
        }
        // The table was built above only to validate; the publisher merges the routes with
        // the other sources' and builds the table in use.
        drop(table);
        if self
            .publisher
            .update(SourceKind::File, config.route_specs())
            .is_err()
        {
            state.failing = true;
            return;
        }
        state.applied = Some(bytes);
    }
}

/// Where reload requests come from: SIGHUP, or a test.
enum Hangup {
    Signal(Signal),
    #[cfg(test)]
    Channel(tokio::sync::mpsc::Receiver<()>),
}

impl Hangup {
    /// The next request; `None` once no more can come.
    async fn recv(&mut self) -> Option<()> {
        match self {
            Self::Signal(signal) => signal.recv().await,
            #[cfg(test)]
            Self::Channel(rx) => rx.recv().await,
        }
    }
}

/// Starts watching the directory holding `path`; each event that may mean a change to the
/// file wakes `changed`.
fn watch_dir(path: &Path, changed: Arc<Notify>) -> Result<notify::RecommendedWatcher, ConfigError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let watch_error = |source| ConfigError::Watch {
        file: path.display().to_string(),
        dir: dir.display().to_string(),
        source,
    };
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) if !may_change_the_file(event.kind) => {}
            Ok(_) => changed.notify_one(),
            Err(error) => {
                // Events may have been lost: read the file to be sure.
                tracing::warn!(error = %error, "config file watch error");
                changed.notify_one();
            }
        })
        .map_err(watch_error)?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(watch_error)?;
    Ok(watcher)
}

/// Whether an event in the directory may mean the file now reads differently.
///
/// Opens and reads (ours included) change nothing. A write to a file still open for writing
/// does not count either where the close after writing is reported (Linux): a writer that
/// pauses mid-file would otherwise have its valid prefix published once the directory went
/// quiet. The close, renames, creations and removals are what announce a complete file.
fn may_change_the_file(kind: EventKind) -> bool {
    match kind {
        EventKind::Access(kind) => kind == AccessKind::Close(AccessMode::Write),
        EventKind::Modify(ModifyKind::Data(_)) => !cfg!(target_os = "linux"),
        _ => true,
    }
}

/// Waits for the directory to go quiet for [`QUIET`], or [`MAX_DELAY`] at most; false if
/// `shutdown` came first.
async fn settle(changed: &Notify, shutdown: &CancellationToken) -> bool {
    let deadline = Instant::now() + MAX_DELAY;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = sleep_until(deadline) => return true,
            () = sleep(QUIET) => return true,
            () = changed.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use proxy::{ServerName, SharedTable};
    use tempfile::TempDir;
    use tokio::sync::mpsc;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::publish::tests::Logs;

    /// How long a test waits for a reload before failing.
    const PATIENCE: Duration = Duration::from_secs(3);

    fn yaml(route: &str, host: &str) -> String {
        format!(
            "listen: 127.0.0.1:0\nroutes:\n  - name: {route}\n    hostnames: [{host}]\n    \
             backends: [\"127.0.0.1:1\"]\n"
        )
    }

    struct Running {
        dir: TempDir,
        shared: Arc<SharedTable>,
        shutdown: CancellationToken,
        task: JoinHandle<Result<(), ConfigError>>,
        hangup: mpsc::Sender<()>,
        logs: Logs,
        _guard: tracing::subscriber::DefaultGuard,
    }

    impl Running {
        /// Does what the binary does: load `path`, publish, then watch; returns once the
        /// watch is armed, so later changes can only be seen through it.
        async fn start(dir: TempDir, path: PathBuf) -> Self {
            Self::start_with(dir, path, |_| {}).await
        }

        /// As [`Running::start`], calling `between` after the load and before the watch.
        async fn start_with(dir: TempDir, path: PathBuf, between: impl FnOnce(&Path)) -> Self {
            // Tests run on the current-thread runtime, so this also sees the source's logs.
            let logs = Logs::default();
            let guard = logs.capture();
            let config = Config::load(&path).unwrap();
            between(&path);
            let publisher = Arc::new(Publisher::new(Arc::default()));
            publisher
                .update(SourceKind::File, config.route_specs())
                .unwrap();
            let shared = publisher.shared().clone();
            let shutdown = CancellationToken::new();
            let source = FileSource::new(path, config, publisher);
            let (hangup, requests) = mpsc::channel(1);
            let task = tokio::spawn(source.run_with(shutdown.clone(), Hangup::Channel(requests)));
            wait_for_log(&logs, "watching config file").await;
            Self {
                dir,
                shared,
                shutdown,
                task,
                hangup,
                logs,
                _guard: guard,
            }
        }

        /// A plain file `sniroute.yaml` in a new directory.
        async fn plain(initial: &str) -> Self {
            let dir = TempDir::new().unwrap();
            let path = dir.path().join("sniroute.yaml");
            fs::write(&path, initial).unwrap();
            Self::start(dir, path).await
        }

        fn path(&self) -> PathBuf {
            self.dir.path().join("sniroute.yaml")
        }

        /// Replaces the file atomically (write a temporary file, rename it over).
        fn replace(&self, text: &str) {
            let tmp = self.dir.path().join(".sniroute.yaml.tmp");
            fs::write(&tmp, text).unwrap();
            fs::rename(&tmp, self.path()).unwrap();
        }

        fn route_for(&self, host: &str) -> Option<String> {
            let name = ServerName::parse(host.as_bytes()).unwrap();
            let snapshot = self.shared.load();
            snapshot.table.lookup(&name).map(|r| r.name().to_owned())
        }

        fn generation(&self) -> u64 {
            self.shared.load().generation
        }

        /// Polls until `host` routes to `route`, failing after [`PATIENCE`].
        async fn wait_for_route(&self, host: &str, route: &str) {
            let deadline = Instant::now() + PATIENCE;
            while self.route_for(host).as_deref() != Some(route) {
                assert!(
                    Instant::now() < deadline,
                    "{host} still routes to {:?}, not {route}, after {PATIENCE:?}",
                    self.route_for(host)
                );
                sleep(Duration::from_millis(10)).await;
            }
        }

        async fn stop(self) {
            self.shutdown.cancel();
            let result = tokio::time::timeout(PATIENCE, self.task).await;
            result.expect("stops on shutdown").unwrap().unwrap();
        }
    }

    async fn wait_for_log(logs: &Logs, needle: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !logs.text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} logged after {PATIENCE:?}; logs:\n{}",
                logs.text()
            );
            sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn in_place_write_reloads() {
        let src = Running::plain(&yaml("one", "a.test")).await;
        assert_eq!(src.route_for("a.test").as_deref(), Some("one"));
        // An unrelated file in the same directory must not cause a publish.
        fs::write(src.dir.path().join("unrelated"), "x").unwrap();
        fs::write(src.path(), yaml("two", "a.test")).unwrap();
        src.wait_for_route("a.test", "two").await;
        assert_eq!(src.generation(), 2, "one publish for one change");
        src.stop().await;
    }

    #[tokio::test]
    async fn rename_over_reloads() {
        let src = Running::plain(&yaml("one", "a.test")).await;
        let tmp = src.dir.path().join(".sniroute.yaml.swp");
        fs::write(&tmp, yaml("two", "b.test")).unwrap();
        fs::rename(&tmp, src.path()).unwrap();
        src.wait_for_route("b.test", "two").await;
        assert_eq!(src.route_for("a.test"), None);
        src.stop().await;
    }

    #[tokio::test]
    async fn configmap_symlink_swap_reloads() {
        // The layout the kubelet makes: file -> ..data/file, ..data -> ..<timestamp>.
        let dir = TempDir::new().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("..2026_01")).unwrap();
        fs::write(root.join("..2026_01/sniroute.yaml"), yaml("one", "a.test")).unwrap();
        symlink("..2026_01", root.join("..data")).unwrap();
        symlink("..data/sniroute.yaml", root.join("sniroute.yaml")).unwrap();
        let path = root.join("sniroute.yaml");
        let src = Running::start(dir, path).await;
        assert_eq!(src.route_for("a.test").as_deref(), Some("one"));

        // The update: a new timestamped dir, a new link renamed over ..data, the old dir gone.
        let root = src.dir.path();
        fs::create_dir(root.join("..2026_02")).unwrap();
        fs::write(root.join("..2026_02/sniroute.yaml"), yaml("two", "a.test")).unwrap();
        symlink("..2026_02", root.join("..data_tmp")).unwrap();
        fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        fs::remove_dir_all(root.join("..2026_01")).unwrap();
        src.wait_for_route("a.test", "two").await;
        src.stop().await;
    }

    #[tokio::test]
    async fn broken_file_keeps_the_last_good_table_until_fixed() {
        let src = Running::plain(&yaml("one", "a.test")).await;
        let logs = &src.logs;

        src.replace("listen: 127.0.0.1:0\nroutes:\n  - hostnames: [b.test]\n");
        wait_for_log(logs, "config reload failed").await;
        assert_eq!(src.generation(), 1, "nothing published");
        assert_eq!(src.route_for("a.test").as_deref(), Some("one"));
        let text = logs.text();
        assert!(
            text.contains("sniroute.yaml:3:5: routes[0] (\"b.test\"): no backends"),
            "{text}"
        );
        assert_eq!(text.matches("config reload failed").count(), 1, "{text}");

        fs::write(src.path(), yaml("two", "b.test")).unwrap();
        src.wait_for_route("b.test", "two").await;
        assert_eq!(src.generation(), 2);
        assert_eq!(src.route_for("a.test"), None);
        src.stop().await;
    }

    #[tokio::test]
    async fn sighup_rereads_and_reports_even_when_unchanged() {
        let src = Running::plain(&yaml("one", "a.test")).await;
        let logs = &src.logs;
        src.hangup.send(()).await.unwrap();
        wait_for_log(logs, "config file unchanged from the table in use").await;
        assert_eq!(
            src.generation(),
            1,
            "an unchanged file is not published again"
        );

        src.replace("listen: 127.0.0.1:0\nroutes: [{}]\n");
        wait_for_log(logs, "config reload failed").await;
        src.hangup.send(()).await.unwrap();
        let deadline = Instant::now() + PATIENCE;
        while logs.text().matches("config reload failed").count() < 2 {
            assert!(
                Instant::now() < deadline,
                "SIGHUP did not re-report the bad file"
            );
            sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(src.route_for("a.test").as_deref(), Some("one"));
        assert_eq!(src.generation(), 1);
        src.stop().await;
    }

    #[tokio::test]
    async fn settings_that_need_a_restart_are_warned_about_and_routes_still_apply() {
        let src = Running::plain(&yaml("one", "a.test")).await;
        let logs = &src.logs;
        fs::write(
            src.path(),
            format!(
                "idle_timeout: 2h\nadmin: 127.0.0.1:0\n{}",
                yaml("two", "a.test")
            ),
        )
        .unwrap();
        src.wait_for_route("a.test", "two").await;
        let text = logs.text();
        assert!(
            text.contains("only take effect after a restart")
                && text.contains("settings=admin, idle_timeout"),
            "{text}"
        );
        src.stop().await;
    }

    #[tokio::test]
    async fn a_change_before_the_watch_started_is_applied() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("sniroute.yaml");
        fs::write(&path, yaml("one", "a.test")).unwrap();
        let src = Running::start_with(dir, path, |path| {
            fs::write(path, yaml("two", "a.test")).unwrap();
        })
        .await;
        src.wait_for_route("a.test", "two").await;
        src.stop().await;
    }

    #[tokio::test]
    async fn a_missing_directory_is_an_error() {
        let config = Config::parse(&yaml("one", "a.test"), "t").unwrap();
        let publisher = Arc::new(Publisher::new(Arc::default()));
        let err = FileSource::new("/nonexistent/dir/sniroute.yaml", config, publisher)
            .run(CancellationToken::new())
            .await
            .unwrap_err();
        assert!(
            err.to_string().starts_with(
                "cannot watch directory /nonexistent/dir for changes to config file \
                 /nonexistent/dir/sniroute.yaml: "
            ),
            "{err}"
        );
    }
}
