//! The proxies under test as child processes on loopback ephemeral ports, each with the same
//! SNI table, and what /proc says about them (CPU seconds, RSS).

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The name of the raw-stream route: the SNI in the captured hello the raw tests send.
pub const RAW_HOST: &str = "api.example.test";
/// The name of the TLS route.
pub const TLS_HOST: &str = "tls.bench.test";

/// Where the `sniroute-base` variant's binary is named: another build of sniroute (main,
/// say), so a change is measured against it in one run.
pub const BASELINE_ENV: &str = "COMPARE_BASELINE_BIN";

/// One proxy (or none) in front of the backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Direct,
    Sniroute,
    Haproxy,
    HaproxySplice,
    Nginx,
    /// sniroute with `client_limits` set (generous enough never to refuse the load, exempting
    /// nobody): what the limits cost per connection.
    SnirouteLimits,
    /// The sniroute binary at [`BASELINE_ENV`], with the default config; only when it is set.
    SnirouteBaseline,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Direct,
        Kind::Sniroute,
        Kind::Haproxy,
        Kind::HaproxySplice,
        Kind::Nginx,
        Kind::SnirouteLimits,
        Kind::SnirouteBaseline,
    ];

    /// The column name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Sniroute => "sniroute",
            Kind::Haproxy => "haproxy",
            Kind::HaproxySplice => "haproxy-splice",
            Kind::Nginx => "nginx",
            Kind::SnirouteLimits => "sniroute-limits",
            Kind::SnirouteBaseline => "sniroute-base",
        }
    }

    /// A sniroute variant: compared with sniroute on new connections only (rate, CPU per
    /// connection, handshake latency), not in the main table.
    pub fn variant(self) -> bool {
        matches!(self, Kind::SnirouteLimits | Kind::SnirouteBaseline)
    }
}

/// Where the backends listen.
#[derive(Clone, Copy, Debug)]
pub struct Backends {
    pub raw: SocketAddr,
    pub tls: SocketAddr,
}

/// A running proxy (or the direct path): where to connect for each route.
pub struct Running {
    pub kind: Kind,
    /// The proxy's listener; unused for `Direct`.
    pub addr: SocketAddr,
    backends: Backends,
    dir: PathBuf,
    child: Option<Child>,
    /// A process from a reload (HAProxy `-sf`), now the one serving.
    reloaded: Vec<Child>,
    /// Names added by `change_table`, one route each, to the TLS backend.
    extra: Vec<String>,
}

/// A free port on 127.0.0.1 (bound then released: a tiny race nobody else on loopback runs).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Running {
    /// Starts `kind` with its config in `dir` and waits until it accepts connections.
    pub fn start(kind: Kind, backends: Backends, dir: &Path, sniroute: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let addr: SocketAddr = match kind {
            Kind::Direct => backends.tls,
            _ => SocketAddr::from(([127, 0, 0, 1], free_port()?)),
        };
        let mut me = Self {
            kind,
            addr,
            backends,
            dir: dir.to_owned(),
            child: None,
            reloaded: Vec::new(),
            extra: Vec::new(),
        };
        let log = || std::fs::File::create(dir.join("proxy.log"));
        let child = match kind {
            Kind::Direct => return Ok(me),
            Kind::Sniroute | Kind::SnirouteLimits | Kind::SnirouteBaseline => {
                let (cfg, _) = me.write_config()?;
                let binary = match kind {
                    Kind::SnirouteBaseline => std::env::var_os(BASELINE_ENV)
                        .map(PathBuf::from)
                        .ok_or_else(|| io::Error::other(format!("{BASELINE_ENV} is not set")))?,
                    _ => sniroute.to_owned(),
                };
                Command::new(binary)
                    .arg("--config")
                    .arg(cfg)
                    .env_remove("RUST_LOG")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log()?)
                    .spawn()?
            }
            Kind::Haproxy | Kind::HaproxySplice => {
                let (cfg, _) = me.write_config()?;
                Command::new("haproxy")
                    .arg("-db")
                    .arg("-f")
                    .arg(cfg)
                    .stdin(Stdio::null())
                    .stdout(log()?)
                    .stderr(log()?)
                    .spawn()?
            }
            Kind::Nginx => {
                let (cfg, _) = me.write_config()?;
                Command::new("nginx")
                    .arg("-p")
                    .arg(dir)
                    .arg("-c")
                    .arg(cfg)
                    .arg("-e")
                    .arg(dir.join("error.log"))
                    .stdin(Stdio::null())
                    .stdout(log()?)
                    .stderr(log()?)
                    .spawn()?
            }
        };
        me.child = Some(child);
        me.wait_accepting()?;
        Ok(me)
    }

    /// Where a client connects for `route` (the backend itself when direct).
    pub fn target(&self, raw: bool) -> SocketAddr {
        match (self.kind, raw) {
            (Kind::Direct, true) => self.backends.raw,
            (Kind::Direct, false) => self.backends.tls,
            _ => self.addr,
        }
    }

    fn wait_accepting(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = &mut self.child {
                if let Some(status) = child.try_wait()? {
                    return Err(io::Error::other(format!(
                        "{} exited at start ({status}); see {}",
                        self.kind.name(),
                        self.dir.join("proxy.log").display()
                    )));
                }
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                // Let every worker/thread finish starting before anything is measured.
                std::thread::sleep(Duration::from_millis(200));
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "{} not accepting on {} after 10 s",
                    self.kind.name(),
                    self.addr
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process whose CPU and memory are the proxy's (nginx: its master; workers are
    /// found as its children).
    fn root_pid(&self) -> Option<u32> {
        self.reloaded
            .last()
            .or(self.child.as_ref())
            .map(|child| child.id())
    }

    /// CPU seconds (user + system) used so far by the proxy and its child processes.
    pub fn cpu_seconds(&self) -> f64 {
        let Some(root) = self.root_pid() else {
            return 0.0;
        };
        tree(root).iter().map(|&pid| cpu_of(pid)).sum()
    }

    /// Resident memory of the proxy and its child processes, KiB.
    pub fn rss_kib(&self) -> u64 {
        let Some(root) = self.root_pid() else {
            return 0;
        };
        tree(root).iter().map(|&pid| rss_of(pid)).sum()
    }

    /// Writes the config and returns its path and the moment it took effect on disk (the
    /// rename). It is written in the parent directory and renamed into `conf/`, as editors
    /// and ConfigMap updates do, so a watcher of `conf/` sees one complete change.
    fn write_config(&self) -> io::Result<(PathBuf, Instant)> {
        let (name, text) = match self.kind {
            Kind::Direct => return Ok((PathBuf::new(), Instant::now())),
            Kind::Sniroute | Kind::SnirouteLimits | Kind::SnirouteBaseline => {
                ("sniroute.yaml", self.sniroute_yaml())
            }
            Kind::Haproxy | Kind::HaproxySplice => ("haproxy.cfg", self.haproxy_cfg()),
            Kind::Nginx => ("nginx.conf", self.nginx_conf()),
        };
        let conf = self.dir.join("conf");
        std::fs::create_dir_all(&conf)?;
        let path = conf.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        let at = Instant::now();
        std::fs::rename(&tmp, &path)?;
        Ok((path, at))
    }

    /// Every (hostname, backend) pair of the table.
    fn routes(&self) -> Vec<(String, SocketAddr)> {
        let mut routes = vec![
            (RAW_HOST.to_owned(), self.backends.raw),
            (TLS_HOST.to_owned(), self.backends.tls),
        ];
        routes.extend(self.extra.iter().map(|h| (h.clone(), self.backends.tls)));
        routes
    }

    fn sniroute_yaml(&self) -> String {
        let mut y = format!(
            // max_connections as HAProxy's maxconn: the derived default (6,623 under the
            // 20,000 open-files limit, a third per connection for splice pipes) is under the
            // 8,000 idle connections the memory measurement opens.
            "listen: {}\nadmin: 127.0.0.1:0\ndebug: off\nidle_timeout: 1h\nshutdown_delay: 0s\n\
             max_connections: 8500\nroutes:\n",
            self.addr
        );
        for (host, backend) in self.routes() {
            y += &format!("  - hostnames: [\"{host}\"]\n    backends: [\"{backend}\"]\n");
        }
        if self.kind == Kind::SnirouteLimits {
            // Every connection is judged (the load all comes from 127.0.0.1, exempt is
            // empty) and counted open, but none is refused: the cost, not the effect.
            y += "client_limits:\n  max_connections: 1000000\n  connection_rate: 1000000/s\n  \
                  burst: 1000000\n";
        }
        y
    }

    fn haproxy_cfg(&self) -> String {
        // maxconn (and maxpipes when splicing) keep HAProxy's own fd estimate, which it
        // insists on, under the 20,000 open-files limit with 8,000 idle connections open.
        let (pipes, splice) = if self.kind == Kind::HaproxySplice {
            (
                "  maxpipes 1000\n",
                "  option splice-request\n  option splice-response\n",
            )
        } else {
            ("", "")
        };
        let mut c = format!(
            "global\n  nbthread 2\n  maxconn 8500\n{pipes}  pidfile {dir}/haproxy.pid\n\n\
             defaults\n  mode tcp\n  timeout connect 10s\n  timeout client 1h\n  \
             timeout server 1h\n{splice}\n\
             frontend sni\n  bind {addr}\n  tcp-request inspect-delay 5s\n  \
             tcp-request content accept if {{ req.ssl_hello_type 1 }}\n",
            dir = self.dir.display(),
            addr = self.addr,
        );
        let routes = self.routes();
        for (i, (host, _)) in routes.iter().enumerate() {
            c += &format!("  use_backend b{i} if {{ req.ssl_sni -i {host} }}\n");
        }
        for (i, (_, backend)) in routes.iter().enumerate() {
            c += &format!("\nbackend b{i}\n  server s{i} {backend}\n");
        }
        c
    }

    fn nginx_conf(&self) -> String {
        let mut c = format!(
            "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
             daemon off;\nworker_processes 2;\nworker_rlimit_nofile 20000;\n\
             pid {dir}/nginx.pid;\nerror_log {dir}/error.log;\n\
             events {{ worker_connections 16384; }}\n\
             stream {{\n  map $ssl_preread_server_name $upstream {{\n    default 127.0.0.1:1;\n",
            dir = self.dir.display(),
        );
        for (host, backend) in self.routes() {
            c += &format!("    {host} {backend};\n");
        }
        c += &format!(
            "  }}\n  server {{\n    listen {};\n    ssl_preread on;\n    preread_timeout 5s;\n    \
             proxy_connect_timeout 10s;\n    proxy_timeout 1h;\n    proxy_half_close on;\n    proxy_pass $upstream;\n  }}\n}}\n",
            self.addr
        );
        c
    }

    /// Adds a route for `host` to the TLS backend the way each proxy takes a table change,
    /// and returns when the change has been handed over (file renamed, reload started).
    /// `None` when the proxy cannot change its table (direct).
    pub fn change_table(&mut self, host: &str) -> io::Result<Option<Instant>> {
        self.extra.push(host.to_owned());
        match self.kind {
            Kind::Direct => Ok(None),
            Kind::Sniroute | Kind::SnirouteLimits | Kind::SnirouteBaseline => {
                Ok(Some(self.write_config()?.1))
            }
            Kind::Haproxy | Kind::HaproxySplice => {
                // A hitless reload: a new process with the new file takes over the listener
                // (SO_REUSEPORT) and tells the old one (-sf) to finish its connections.
                let old = self.root_pid().expect("haproxy runs");
                let (cfg, start) = self.write_config()?;
                let log = std::fs::OpenOptions::new()
                    .append(true)
                    .open(self.dir.join("proxy.log"))?;
                let child = Command::new("haproxy")
                    .arg("-db")
                    .arg("-f")
                    .arg(cfg)
                    .arg("-sf")
                    .arg(old.to_string())
                    .stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .spawn()?;
                self.reloaded.push(child);
                Ok(Some(start))
            }
            Kind::Nginx => {
                let (_, start) = self.write_config()?;
                signal(self.child.as_ref().expect("nginx runs").id(), "HUP")?;
                Ok(Some(start))
            }
        }
    }

    /// Stops the proxy: TERM, then KILL if it lingers.
    pub fn stop(&mut self) {
        let mut children: Vec<Child> = self.reloaded.drain(..).collect();
        children.extend(self.child.take());
        for child in &children {
            let _ = signal(child.id(), "TERM");
        }
        for mut child in children {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal(pid: u32, name: &str) -> io::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("kill -{name} {pid}: {status}")))
    }
}

/// Fields after the `(comm)` of /proc/PID/stat: index 0 is field 3 (state).
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// Clock ticks per second for /proc times (USER_HZ, 100 on every Linux ABI in use).
const TICKS: f64 = 100.0;

fn cpu_of(pid: u32) -> f64 {
    // utime and stime are fields 14 and 15.
    stat_fields(pid).map_or(0.0, |f| (f[11] + f[12]) as f64 / TICKS)
}

fn rss_of(pid: u32) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `root` and its descendants.
fn tree(root: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Some(f) = stat_fields(pid) {
                // ppid is field 4.
                parents.push((pid, f[1] as u32));
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}
