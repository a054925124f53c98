//! [`Sniroute`]: the binary as a child process; parses its `listening` log lines, keeps every
//! log line, rewrites its config file, talks to its admin port, kills it on drop. Also
//! [`run_binary`] for runs that are meant to exit.

use std::io::{self, BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::time::Instant;

use super::config::CONFIG_NAME;
use super::{http_get, POLL, STARTUP, STEP};

/// The `sniroute` binary under test: this package's build, or `SNIROUTE_BIN` if set (to run
/// the suite against a release build or an installed binary).
pub fn binary() -> PathBuf {
    std::env::var_os("SNIROUTE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sniroute")))
}

#[derive(Default)]
struct LogBuf {
    lines: Mutex<Vec<String>>,
    done: std::sync::atomic::AtomicBool,
}

/// How the config file sits on disk.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Layout {
    /// `conf/sniroute.yaml`, a regular file.
    Plain,
    /// Kubernetes ConfigMap volume style: `conf/sniroute.yaml -> ..data/sniroute.yaml`,
    /// `..data -> ..<version>/`; updates swap the `..data` link atomically.
    ConfigMap,
}

/// A running `sniroute --config FILE`, killed on drop.
pub struct Sniroute {
    child: Child,
    dir: tempfile::TempDir,
    config: PathBuf,
    layout: Layout,
    version: usize,
    logs: Arc<LogBuf>,
    proxy: Vec<SocketAddr>,
    admin: SocketAddr,
    reader: Option<JoinHandle<()>>,
}

/// How [`Sniroute::start_opts`] runs the binary.
#[derive(Clone, Debug)]
pub struct StartOpts {
    /// Proxy listeners expected in the `listening` log lines.
    pub listeners: usize,
    /// Extra environment for the child, applied after the harness's `RUST_LOG=info` and
    /// `NO_COLOR=1` (so `("RUST_LOG", "debug")` overrides the level).
    pub env: Vec<(String, String)>,
    /// Run the binary through this command line: `wrapper[0] wrapper[1..] BINARY --config
    /// FILE`. The wrapper must `exec` it, so the child's pid stays the proxy's (e.g.
    /// `sh -c 'ulimit -n 64 && exec "$0" "$@"'`).
    pub wrapper: Vec<String>,
    /// Wait for `/readyz` to answer 200 after the `listening` lines (the Kubernetes tests
    /// start without it: readiness is what they look at).
    pub ready: bool,
}

impl Default for StartOpts {
    fn default() -> Self {
        Self {
            listeners: 1,
            env: Vec::new(),
            wrapper: Vec::new(),
            ready: true,
        }
    }
}

impl Sniroute {
    /// Starts with a plain config file and waits until it is listening and ready.
    pub fn start(yaml: impl AsRef<str>) -> Self {
        Self::start_layout(yaml.as_ref(), Layout::Plain, &StartOpts::default())
    }

    /// Starts with `listeners` proxy listeners expected in the logs.
    pub fn start_expecting(yaml: impl AsRef<str>, listeners: usize) -> Self {
        let opts = StartOpts {
            listeners,
            ..StartOpts::default()
        };
        Self::start_layout(yaml.as_ref(), Layout::Plain, &opts)
    }

    /// Starts with a ConfigMap-style symlinked config.
    pub fn start_configmap(yaml: impl AsRef<str>) -> Self {
        Self::start_layout(yaml.as_ref(), Layout::ConfigMap, &StartOpts::default())
    }

    /// Starts with a plain config file, extra environment and/or a wrapper command.
    pub fn start_opts(yaml: impl AsRef<str>, opts: &StartOpts) -> Self {
        Self::start_layout(yaml.as_ref(), Layout::Plain, opts)
    }

    fn start_layout(yaml: &str, layout: Layout, opts: &StartOpts) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("conf");
        std::fs::create_dir(&conf).unwrap();
        std::fs::create_dir(dir.path().join("staging")).unwrap();
        let config = conf.join(CONFIG_NAME);
        match layout {
            Layout::Plain => std::fs::write(&config, yaml).unwrap(),
            Layout::ConfigMap => {
                let version = conf.join("..v0");
                std::fs::create_dir(&version).unwrap();
                std::fs::write(version.join(CONFIG_NAME), yaml).unwrap();
                std::os::unix::fs::symlink("..v0", conf.join("..data")).unwrap();
                std::os::unix::fs::symlink(format!("..data/{CONFIG_NAME}"), &config).unwrap();
            }
        }
        let mut command = match opts.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary());
                command
            }
            None => Command::new(binary()),
        };
        let mut child = command
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sniroute");
        let logs = Arc::new(LogBuf::default());
        let reader = spawn_log_reader(child.stderr.take().unwrap(), logs.clone());
        let mut me = Self {
            child,
            dir,
            config,
            layout,
            version: 0,
            logs,
            proxy: Vec::new(),
            admin: "0.0.0.0:0".parse().unwrap(),
            reader: Some(reader),
        };
        me.wait_listening(opts.listeners, opts.ready);
        me
    }

    fn wait_listening(&mut self, listeners: usize, ready: bool) {
        let deadline = Instant::now() + STARTUP;
        loop {
            let (proxy, admin) = listening_addrs(&self.logs());
            if let (true, Some(admin)) = (proxy.len() >= listeners, admin) {
                self.proxy = proxy;
                self.admin = admin;
                break;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.join_reader();
                panic!(
                    "sniroute exited with {status} before listening; logs:\n{}",
                    self.logs().join("\n")
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "sniroute did not print {listeners} proxy and one admin `listening` line \
                     within {STARTUP:?}; logs:\n{}",
                    self.logs().join("\n")
                );
            }
            std::thread::sleep(POLL);
        }
        if !ready {
            return;
        }
        // Listening lines come right after bind; readiness also needs the table.
        let deadline = Instant::now() + STARTUP;
        loop {
            if matches!(self.get("/readyz"), Ok((200, _))) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "/readyz not 200 within {STARTUP:?}: {:?}; logs:\n{}",
                    self.get("/readyz"),
                    self.logs().join("\n")
                );
            }
            std::thread::sleep(POLL);
        }
    }

    fn join_reader(&mut self) {
        // The child has exited, so stderr reaches EOF soon; don't wait forever regardless.
        let deadline = Instant::now() + STEP;
        while !self.logs.done.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
    }

    /// The first proxy listener.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy[0]
    }

    /// Every proxy listener, in log order.
    pub fn proxy_addrs(&self) -> &[SocketAddr] {
        &self.proxy
    }

    /// The admin listener.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The address of the `listening kind=<kind>` line (e.g. `cluster_id`), waiting (bounded
    /// by [`STARTUP`]) for it to be logged.
    pub fn listener_addr(&self, kind: &str) -> SocketAddr {
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Some(addr) = listening_addr_of(&self.logs(), kind) {
                return addr;
            }
            assert!(
                Instant::now() < deadline,
                "no `listening kind={kind}` line within {STARTUP:?}; logs:\n{}",
                self.logs().join("\n")
            );
            std::thread::sleep(POLL);
        }
    }

    /// The config file path passed with `--config`.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every stderr line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lines.lock().unwrap().clone()
    }

    /// How many lines have been logged so far (a mark for [`Self::wait_log_since`]).
    pub fn log_mark(&self) -> usize {
        self.logs.lines.lock().unwrap().len()
    }

    /// Lines after `mark` containing every one of `parts`.
    pub fn logs_since(&self, mark: usize, parts: &[&str]) -> Vec<String> {
        let lines = self.logs.lines.lock().unwrap();
        lines
            .iter()
            .skip(mark)
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .cloned()
            .collect()
    }

    /// Waits (bounded) for a line after `mark` containing every one of `parts`.
    pub fn wait_log_since(&self, mark: usize, parts: &[&str], within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(line) = self.logs_since(mark, parts).into_iter().next() {
                return line;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no log line containing {parts:?} within {within:?}; logs since mark:\n{}",
                    self.logs()[mark.min(self.log_mark())..].join("\n")
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits (bounded) for a line after `mark` logging a refused connection with `reason`
    /// (`reason=x` or `reason="x"`, as tracing prints a string field) and a `peer=`.
    pub fn wait_refusal_since(&self, mark: usize, reason: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let bare = format!("reason={reason}");
        let quoted = format!("reason=\"{reason}\"");
        loop {
            let found = self
                .logs_since(mark, &["connection refused", "peer="])
                .into_iter()
                .find(|l| l.split_whitespace().any(|f| f == bare || f == quoted));
            if let Some(line) = found {
                return line;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no `connection refused` line with peer= and {bare} within {within:?}; \
                     logs since mark:\n{}",
                    self.logs()[mark.min(self.log_mark())..].join("\n")
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits (bounded) for any log line containing every one of `parts`.
    pub fn wait_log(&self, parts: &[&str], within: Duration) -> String {
        self.wait_log_since(0, parts, within)
    }

    /// Rewrites the config file in place (truncate and write, as an editor might).
    pub fn write_config(&mut self, yaml: impl AsRef<str>) {
        assert_eq!(
            self.layout,
            Layout::Plain,
            "write_config needs a plain layout"
        );
        std::fs::write(&self.config, yaml.as_ref()).expect("write config");
    }

    /// Replaces the config atomically: written in a sibling directory, renamed over the file.
    /// (The staging file lives outside the watched directory so the watcher sees one event.)
    pub fn rename_config(&mut self, yaml: impl AsRef<str>) {
        assert_eq!(
            self.layout,
            Layout::Plain,
            "rename_config needs a plain layout"
        );
        self.version += 1;
        let staged = self
            .dir
            .path()
            .join("staging")
            .join(format!("{CONFIG_NAME}.{}", self.version));
        std::fs::write(&staged, yaml.as_ref()).expect("stage config");
        std::fs::rename(&staged, &self.config).expect("rename config over");
    }

    /// Swaps a ConfigMap-style config the way the kubelet does: new version directory, new
    /// `..data_tmp` link, renamed over `..data`, old version removed.
    pub fn swap_configmap(&mut self, yaml: impl AsRef<str>) {
        assert_eq!(self.layout, Layout::ConfigMap, "needs start_configmap");
        let conf = self.dir.path().join("conf");
        let old = format!("..v{}", self.version);
        self.version += 1;
        let new = format!("..v{}", self.version);
        std::fs::create_dir(conf.join(&new)).unwrap();
        std::fs::write(conf.join(&new).join(CONFIG_NAME), yaml.as_ref()).unwrap();
        std::os::unix::fs::symlink(&new, conf.join("..data_tmp")).unwrap();
        std::fs::rename(conf.join("..data_tmp"), conf.join("..data")).unwrap();
        std::fs::remove_dir_all(conf.join(old)).unwrap();
    }

    /// `GET path` on the admin listener.
    pub fn get(&self, path: &str) -> io::Result<(u16, String)> {
        http_get(self.admin, path)
    }

    /// `GET /routes` on the debug listener, as JSON (panics unless 200 and JSON).
    pub fn routes(&self) -> serde_json::Value {
        let (status, body) = http_get(self.listener_addr("debug"), "/routes").expect("GET /routes");
        assert_eq!(status, 200, "/routes status; body {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/routes not JSON ({e}): {body}"))
    }

    /// The table generation from `/routes`.
    pub fn generation(&self) -> u64 {
        let routes = self.routes();
        routes["generation"]
            .as_u64()
            .unwrap_or_else(|| panic!("/routes has no numeric generation: {routes}"))
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` (a name `kill -s` takes: `TERM`, `INT`, `HUP`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "kill -s {signal} {}: {status}",
            self.child.id()
        );
    }

    /// Waits (bounded by `within`) for the process to exit; then every log line it wrote is
    /// in [`Self::logs`]. `None` if it is still running at the deadline (it is not killed).
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.join_reader();
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Sniroute {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

fn spawn_log_reader(stderr: std::process::ChildStderr, logs: Arc<LogBuf>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let reader = BufReader::new(stderr);
        for line in reader.split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line).into_owned();
            // Shown by the test runner for failing tests only (output capture is inherited).
            eprintln!("[sniroute] {line}");
            logs.lines.lock().unwrap().push(line);
        }
        logs.done.store(true, Ordering::SeqCst);
    })
}

/// The proxy and admin addresses from `listening kind=... addr=...` lines.
pub fn listening_addrs(lines: &[String]) -> (Vec<SocketAddr>, Option<SocketAddr>) {
    let mut proxy = Vec::new();
    let mut admin = None;
    for line in lines {
        if !line.contains("listening") {
            continue;
        }
        // `log_format: json`: one object per line, the event's fields at the top level.
        if line.starts_with('{') {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let (Some(kind), Some(addr)) = (v["kind"].as_str(), v["addr"].as_str()) else {
                continue;
            };
            match (kind, addr.parse::<SocketAddr>()) {
                ("proxy", Ok(addr)) => proxy.push(addr),
                ("admin", Ok(addr)) => admin = Some(addr),
                _ => {}
            }
            continue;
        }
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(key))
                .map(|v| v.trim_matches('"').to_owned())
        };
        let (Some(kind), Some(addr)) = (field("kind="), field("addr=")) else {
            continue;
        };
        let Ok(addr) = addr.parse::<SocketAddr>() else {
            continue;
        };
        match kind.as_str() {
            "proxy" => proxy.push(addr),
            "admin" => admin = Some(addr),
            _ => {}
        }
    }
    (proxy, admin)
}

/// The address of the first `listening` line of `kind` (text or JSON logs).
pub fn listening_addr_of(lines: &[String], kind: &str) -> Option<SocketAddr> {
    lines
        .iter()
        .filter(|l| l.contains("listening"))
        .find_map(|line| {
            if line.starts_with('{') {
                let v: serde_json::Value = serde_json::from_str(line).ok()?;
                return (v["kind"].as_str()? == kind)
                    .then(|| v["addr"].as_str()?.parse().ok())
                    .flatten();
            }
            let field = |key: &str| {
                line.split_whitespace()
                    .find_map(|f| f.strip_prefix(key))
                    .map(|v| v.trim_matches('"'))
            };
            (field("kind=")? == kind)
                .then(|| field("addr=")?.parse().ok())
                .flatten()
        })
}

/// Runs `sniroute <args>` to completion (bounded by [`STARTUP`]); kills it if it doesn't exit.
pub fn run_binary<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Finished {
    let args: Vec<std::ffi::OsString> = args.iter().map(|a| a.as_ref().to_owned()).collect();
    let mut child = Command::new(binary())
        .args(&args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sniroute");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + STARTUP;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(POLL);
    };
    let output = Output {
        status: status.unwrap_or_else(|| child.wait().expect("wait")),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    let finished = Finished {
        exited: status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    eprintln!(
        "[sniroute {args:?}] exited {:?}\n--- stdout\n{}--- stderr\n{}",
        finished.exited, finished.stdout, finished.stderr
    );
    finished
}

/// A finished (or killed) run of the binary.
#[derive(Debug)]
pub struct Finished {
    /// The exit status; `None` if it was still running at the deadline (then killed).
    pub exited: Option<ExitStatus>,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
}
