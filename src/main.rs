//! The sniroute binary: parses the command line, loads the config, and wires the data plane,
//! the routing-table sources and the admin server together under one shutdown token.

mod admin;
mod demo;
mod explain;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use control::config::LogFormat;
use control::gateway::GatewaySource;
use control::kube::KubeSource;
use control::Readiness;
use control::{Config, FileSource, Publisher, SourceKind};
use prometheus_client::registry::Registry;
use proxy::{ListenerKind, Proxy, SharedTable};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Exit status for a configuration that does not validate (sysexits.h EX_CONFIG).
const EXIT_BAD_CONFIG: u8 = 78;

/// How long the admin server, the sources and the listeners get to stop at exit.
const SERVICES_STOP: Duration = Duration::from_secs(2);

/// SNI-routing TLS passthrough ingress for hosted Kubernetes control planes.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The YAML configuration file.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the configuration and build its routing table, then exit.
    Check,
    /// Start two local TLS backends and route to them from a generated config (try it with curl).
    Demo {
        /// Where the demo proxy listens.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// Where the demo admin server listens.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: SocketAddr,
    },
    /// Ask a running sniroute what it would do with a connection for NAME (and a client).
    Explain {
        /// The SNI name.
        name: String,
        /// The client address the allow lists are judged for.
        #[arg(long)]
        client: Option<std::net::IpAddr>,
        /// The Gateway listener's pod port the connection arrives on (its Service's
        /// targetPort); without it, the `listen` listeners.
        #[arg(long)]
        port: Option<u16>,
        /// sniroute's debug listener, which serves /explain.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9091")]
        debug: SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Check) => {
            init_logging(LogFormat::Text, "info");
            return check(cli.config.as_deref());
        }
        Some(Command::Explain {
            name,
            client,
            port,
            debug,
        }) => {
            return match explain::ask(debug, &name, client, port) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(error) => {
                    eprintln!("{error:#}");
                    ExitCode::from(2)
                }
            };
        }
        Some(Command::Demo { listen, admin }) => {
            init_logging(LogFormat::Text, "info");
            runtime().and_then(|rt| rt.block_on(demo::run(listen, admin)))
        }
        None => match cli.config {
            Some(path) => match load(&path) {
                Ok(config) => {
                    init_logging(config.log_format, &config.log_level);
                    runtime().and_then(|rt| rt.block_on(run(path, config)))
                }
                Err(code) => return code,
            },
            None => Err(anyhow::anyhow!(
                "--config FILE is required (or try `sniroute demo`)"
            )),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

/// kube-client's request tracing, which logs every failed request at ERROR: a refused
/// connection, a 5xx. Through an API server outage that is a line per watch retry and per
/// readiness probe, each of which the Kubernetes source logs itself with what it means; off
/// unless `RUST_LOG` names it (its directives come after, and win).
const KUBE_CLIENT_TRACE_OFF: &str = "kube_client::client::builder=off";

/// Logs to stderr: JSON lines for collectors, or text for terminals. `RUST_LOG` overrides
/// the configured level.
fn init_logging(format: LogFormat, level: &str) {
    let with = |directives: &str| {
        tracing_subscriber::EnvFilter::try_new(format!("{KUBE_CLIENT_TRACE_OFF},{directives}"))
    };
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|env| with(&env).ok())
        .or_else(|| with(level).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Loads and validates the configuration; on failure prints every problem and says how to exit.
fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|error| {
        eprintln!("{error}");
        ExitCode::from(EXIT_BAD_CONFIG)
    })
}

fn check(path: Option<&Path>) -> ExitCode {
    let Some(path) = path else {
        eprintln!("check needs --config FILE");
        return ExitCode::from(EXIT_BAD_CONFIG);
    };
    match load(path).and_then(|config| {
        config.table().map_err(|error| {
            eprintln!("{error}");
            ExitCode::from(EXIT_BAD_CONFIG)
        })
    }) {
        Ok(table) => {
            println!("{}: ok, {} routes", path.display(), table.routes().len());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// Runs the proxy on `config` (loaded from `path`, which is then watched) until SIGTERM/SIGINT
/// and the drain that follows.
pub(crate) async fn run(path: PathBuf, config: Config) -> anyhow::Result<()> {
    // Into the proxy's settings only: `config` is what a reload of the file is compared with.
    let max_connections = connection_limit(&config);
    let mut registry = Registry::default();
    let metrics = proxy::Metrics::register(&mut registry);
    proxy::Metrics::register_connection_limit(&mut registry, max_connections);
    let table = Arc::new(SharedTable::default());
    proxy::RouteMetrics::register(&mut registry, table.clone());
    let control_metrics = control::metrics::ControlMetrics::register(&mut registry);
    let publisher = Arc::new(Publisher::new(table.clone()).with_metrics(control_metrics));
    publisher.update(SourceKind::File, config.route_specs())?;
    // Ready once every source has loaded: the file just did; Kubernetes after its first
    // full list of every watched kind.
    let (sources_ready, sources_ready_rx) = tokio::sync::watch::channel(match config.kubernetes {
        None => Readiness::Ready,
        Some(_) => Readiness::waiting(),
    });
    let tasks = Tasks::default();
    let (kube_source, gateway_source, sources_ready_rx) =
        kube_sources(&config, &publisher, sources_ready, sources_ready_rx, &tasks).await?;
    let bound = Bound::bind(&config)?;

    let settings = proxy::Settings {
        max_connections: Some(max_connections),
        ..config.proxy.clone()
    };
    let proxy = Arc::new(Proxy::new(settings, table.clone(), metrics));
    let ready = admin::ReadyState::new(table.clone(), sources_ready_rx);
    ready.register(&mut registry);
    let state = Arc::new(admin::State {
        table,
        ready: ready.clone(),
        registry,
        proxy: proxy.clone(),
    });
    // Every listener is bound (listening, its backlog taking connections) before the admin
    // server answers its first /readyz.
    ready.listening.store(true, Ordering::Release);
    bound.spawn(&tasks, &state, &proxy);
    if let Some(kube_source) = kube_source {
        tasks
            .services
            .spawn(kube_source.run(tasks.shutdown.clone()));
    }
    if let Some(gateway_source) = gateway_source {
        tasks
            .services
            .spawn(gateway_source.run(tasks.shutdown.clone()));
    }
    tasks.services.spawn(
        proxy
            .clone()
            .follow_swaps(publisher.subscribe(), tasks.shutdown.clone()),
    );
    if config
        .kubernetes
        .as_ref()
        .and_then(|k| k.gateway_api.as_ref())
        .is_some_and(|g| g.listener_ports.is_some())
    {
        // Each Gateway listener on the addresses of the `listen` listeners, at its own port.
        let mut ips: Vec<std::net::IpAddr> = config.listen.iter().map(|a| a.ip()).collect();
        ips.sort_unstable();
        ips.dedup();
        tasks.services.spawn(proxy::follow_gateway_listeners(
            proxy.clone(),
            publisher.subscribe(),
            ips,
            config.listen_backlog,
            tasks.stop_accepting.clone(),
            tasks.services.clone(),
            tasks.connections.clone(),
        ));
    }

    let file_source =
        FileSource::new(path, config.clone(), publisher.clone()).run(tasks.shutdown.clone());
    let mut signals = Signals::new()?;
    tokio::select! {
        signal = signals.next() => tracing::info!(signal, "draining: readiness off, still accepting for shutdown_delay"),
        // The watch only ends early if it cannot be set up: better to fail loudly now than
        // to serve a table that silently stops following its file.
        watched = file_source => watched.context("cannot watch the config file")?,
    }
    ready.draining.store(true, Ordering::Release);
    let outcome = drain(
        &config,
        &mut signals,
        &tasks.stop_accepting,
        &tasks.connections,
    )
    .await;
    tasks.stop(outcome.is_ok()).await;
    outcome
}

/// The Kubernetes sources the config asks for (HyperShift's, the Gateway API's), on the
/// client configuration found the standard way, and the readiness of all of them together
/// (joined by a service on `tasks` when both run).
async fn kube_sources(
    config: &Config,
    publisher: &Arc<Publisher>,
    sources_ready: tokio::sync::watch::Sender<Readiness>,
    sources_ready_rx: tokio::sync::watch::Receiver<Readiness>,
    tasks: &Tasks,
) -> anyhow::Result<(
    Option<KubeSource>,
    Option<GatewaySource>,
    tokio::sync::watch::Receiver<Readiness>,
)> {
    let Some(kube) = &config.kubernetes else {
        return Ok((None, None, sources_ready_rx));
    };
    // The Kubernetes client's TLS uses the process default: ring, as everywhere else.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = control::kube::default_client().await.context(
        "`kubernetes:` is set but no Kubernetes client configuration was found \
         (KUBECONFIG, ~/.kube/config, or the in-cluster service account)",
    )?;
    let node = std::env::var(control::kube::zone::NODE_NAME_ENV).ok();
    // HyperShift's readiness, or none when only the Gateway API is watched.
    let mut readiness = Vec::new();
    let kube_source = kube.hypershift.then(|| {
        readiness.push(sources_ready_rx.clone());
        KubeSource::new(
            client.clone(),
            kube.clone(),
            publisher.clone(),
            sources_ready,
        )
        .on_node(node)
    });
    let gateway_source = kube.gateway_api.clone().map(|gateway| {
        let (ready, ready_rx) = tokio::sync::watch::channel(Readiness::waiting());
        readiness.push(ready_rx);
        // The pod's name (the downward API's metadata.name) names it in the Lease.
        let identity = std::env::var(control::gateway::source::POD_NAME_ENV)
            .unwrap_or_else(|_| format!("sniroute-{}", std::process::id()));
        GatewaySource::new(
            client,
            kube.clone(),
            gateway,
            publisher.clone(),
            ready,
            identity,
        )
    });
    let (ready, follow) = control::gateway::source::joined(readiness, tasks.shutdown.clone());
    if let Some(follow) = follow {
        tasks.services.spawn(follow);
    }
    Ok((kube_source, gateway_source, ready))
}

/// Every listener the config names, bound before any task starts: a bad address fails the
/// start, not a task.
struct Bound {
    admin: TcpListener,
    debug: Option<TcpListener>,
    proxy: Vec<(TcpListener, ListenerKind)>,
}

impl Bound {
    fn bind(config: &Config) -> anyhow::Result<Self> {
        let bind = |kind: &str, addr, backlog| -> anyhow::Result<TcpListener> {
            let bound = proxy::bind(addr, backlog)?;
            log_listening(kind, &bound);
            Ok(bound)
        };
        let admin = bind("admin", config.admin, proxy::DEFAULT_BACKLOG)?;
        let debug = config
            .debug
            .map(|addr| bind("debug", addr, proxy::DEFAULT_BACKLOG))
            .transpose()?;
        let mut proxy = Vec::with_capacity(config.listen.len() + 1);
        for addr in &config.listen {
            proxy.push((
                bind("proxy", *addr, config.listen_backlog)?,
                ListenerKind::Sni,
            ));
        }
        if let Some(addr) = config.cluster_id_listen {
            let bound = bind("cluster_id", addr, config.listen_backlog)?;
            proxy.push((bound, ListenerKind::ClusterId));
        }
        Ok(Self {
            admin,
            debug,
            proxy,
        })
    }

    /// Serves every listener: the admin and debug servers as services, the proxy listeners
    /// until `stop_accepting`, their connections on `connections`.
    fn spawn(self, tasks: &Tasks, state: &Arc<admin::State>, proxy: &Arc<Proxy>) {
        let servers = [
            (Some(self.admin), admin::Surface::Admin),
            (self.debug, admin::Surface::Debug),
        ];
        for (listener, surface) in servers {
            if let Some(listener) = listener {
                tasks.services.spawn(admin::serve(
                    listener,
                    surface,
                    state.clone(),
                    tasks.shutdown.clone(),
                    tasks.services.clone(),
                ));
            }
        }
        for (bound, kind) in self.proxy {
            tasks.services.spawn(proxy::serve(
                bound,
                kind,
                proxy.clone(),
                tasks.stop_accepting.clone(),
                tasks.connections.clone(),
            ));
        }
    }
}

/// The process's tasks and the two tokens that end them: listeners stop at the end of
/// `shutdown_delay`, everything else at exit.
#[derive(Default)]
struct Tasks {
    stop_accepting: CancellationToken,
    shutdown: CancellationToken,
    /// Forwarded connections: what the drain waits for.
    connections: TaskTracker,
    /// Every other task: the admin and debug servers, listeners, sources, swap following.
    services: TaskTracker,
}

impl Tasks {
    /// Ends every service; waits for them (briefly) unless the drain was cut short.
    async fn stop(self, wait: bool) {
        self.shutdown.cancel();
        self.services.close();
        // Each service returns once it sees the token; a stuck one must not hold the exit,
        // and after a second signal nothing does.
        if wait
            && tokio::time::timeout(SERVICES_STOP, self.services.wait())
                .await
                .is_err()
        {
            tracing::warn!(left = self.services.len(), "services still running at exit");
        }
    }
}

/// Raises the open-files limit and settles `max_connections`: the file's, or what the limit
/// serves without an accepted connection failing for want of a descriptor. Logged either way;
/// a configured value past what the limit serves is a warning.
fn connection_limit(config: &Config) -> usize {
    let limit = match proxy::raise_open_files_limit() {
        Ok(limit) => limit,
        Err((error, limit)) => {
            tracing::warn!(%error, soft = limit.soft, hard = limit.hard, "cannot raise the open-files limit to its hard limit");
            limit
        }
    };
    let fits = config.derived_max_connections(limit.soft, admin::MAX_CONNECTIONS);
    let max_connections = config.proxy.max_connections.unwrap_or(fits);
    let derived = config.proxy.max_connections.is_none();
    tracing::info!(
        open_files = limit.soft,
        raised_from = limit.raised_from,
        max_connections,
        derived,
        "connection limit"
    );
    if max_connections > fits {
        tracing::warn!(
            max_connections,
            open_files = limit.soft,
            fits,
            "max_connections is more than the open-files limit serves: past it, accepted \
             connections fail for want of a descriptor"
        );
    }
    max_connections
}

/// The drain after the first signal: keep accepting for `shutdown_delay` (the load balancer
/// is still sending while it notices readiness is off), stop accepting, then let established
/// connections finish for up to `drain_timeout`. A second signal ends it at once.
async fn drain(
    config: &Config,
    signals: &mut Signals,
    stop_accepting: &CancellationToken,
    connections: &TaskTracker,
) -> anyhow::Result<()> {
    tokio::select! {
        () = tokio::time::sleep(config.shutdown_delay) => {}
        signal = signals.next() => anyhow::bail!("{signal} again during the shutdown delay: exiting now"),
    }
    stop_accepting.cancel();
    connections.close();
    tracing::info!(
        active = connections.len(),
        drain_timeout = ?config.drain_timeout,
        "listeners closed; waiting for established connections"
    );
    tokio::select! {
        () = connections.wait() => {
            tracing::info!("drained: every connection finished");
            Ok(())
        }
        () = tokio::time::sleep(config.drain_timeout) => {
            tracing::warn!(cut = connections.len(), "drain_timeout reached; closing the rest");
            Ok(())
        }
        signal = signals.next() => anyhow::bail!("{signal} again while draining: exiting now, cutting {} connections", connections.len()),
    }
}

fn log_listening(kind: &str, listener: &TcpListener) {
    match listener.local_addr() {
        Ok(addr) => tracing::info!(%kind, %addr, "listening"),
        Err(error) => tracing::warn!(%kind, %error, "listening on an unknown address"),
    }
}

/// SIGTERM and SIGINT, as one stream.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
        })
    }

    /// Waits for the next signal and names it.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
