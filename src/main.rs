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
use control::kube::{KubeSource, Readiness};
use control::{Config, FileSource, Publisher, SourceKind};
use prometheus_client::registry::Registry;
use proxy::{listener, socket, ListenerKind, Proxy, SharedTable};
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
            debug,
        }) => {
            return match explain::ask(debug, &name, client) {
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
    let mut registry = Registry::default();
    let metrics = proxy::Metrics::register(&mut registry);
    if let Some(limit) = config.proxy.max_connections {
        proxy::Metrics::register_connection_limit(&mut registry, limit);
    }
    let table = Arc::new(SharedTable::default());
    let control_metrics = control::metrics::ControlMetrics::register(&mut registry);
    let publisher = Arc::new(Publisher::new(table.clone()).with_metrics(control_metrics));
    publisher.update(SourceKind::File, config.route_specs())?;
    // Ready once every source has loaded: the file just did; Kubernetes after its first
    // full list of every watched kind.
    let (sources_ready, sources_ready_rx) = tokio::sync::watch::channel(match config.kubernetes {
        None => Readiness::Ready,
        Some(_) => Readiness::waiting(),
    });
    let kube_source = match &config.kubernetes {
        Some(kube) => {
            // The Kubernetes client's TLS uses the process default: ring, as everywhere else.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let client = control::kube::default_client().await.context(
                "`kubernetes:` is set but no Kubernetes client configuration was found \
                 (KUBECONFIG, ~/.kube/config, or the in-cluster service account)",
            )?;
            let node = std::env::var(control::kube::zone::NODE_NAME_ENV).ok();
            Some(
                KubeSource::new(client, kube.clone(), publisher.clone(), sources_ready)
                    .on_node(node),
            )
        }
        None => None,
    };

    let admin_listener = socket::bind(config.admin, socket::DEFAULT_BACKLOG)?;
    log_listening("admin", &admin_listener);
    let debug_listener = match config.debug {
        Some(addr) => {
            let bound = socket::bind(addr, socket::DEFAULT_BACKLOG)?;
            log_listening("debug", &bound);
            Some(bound)
        }
        None => None,
    };
    let mut listeners = Vec::with_capacity(config.listen.len() + 1);
    for addr in &config.listen {
        let bound = socket::bind(*addr, config.listen_backlog)?;
        log_listening("proxy", &bound);
        listeners.push((bound, ListenerKind::Sni));
    }
    if let Some(addr) = config.cluster_id_listen {
        let bound = socket::bind(addr, config.listen_backlog)?;
        log_listening("cluster_id", &bound);
        listeners.push((bound, ListenerKind::ClusterId));
    }

    // Two tokens: listeners stop at the end of shutdown_delay, everything else at exit.
    let stop_accepting = CancellationToken::new();
    let shutdown = CancellationToken::new();
    let connections = TaskTracker::new();
    let proxy = Arc::new(Proxy::new(config.proxy.clone(), table.clone(), metrics));
    let ready = admin::ReadyState::new(table.clone(), sources_ready_rx);
    ready.register(&mut registry);
    let state = Arc::new(admin::State {
        table,
        ready: ready.clone(),
        registry,
        proxy: proxy.clone(),
    });
    // Every task but the connections' runs on `services` and ends with `shutdown`.
    let services = TaskTracker::new();
    services.spawn(admin::serve(
        admin_listener,
        admin::Surface::Admin,
        state.clone(),
        shutdown.clone(),
    ));
    if let Some(debug_listener) = debug_listener {
        tokio::spawn(admin::serve(
            debug_listener,
            admin::Surface::Debug,
            state.clone(),
            shutdown.clone(),
        ));
    }
    let file_source =
        FileSource::new(path, config.clone(), publisher.clone()).run(shutdown.clone());
    if let Some(kube_source) = kube_source {
        services.spawn(kube_source.run(shutdown.clone()));
    }
    services.spawn(
        proxy
            .clone()
            .follow_swaps(publisher.subscribe(), shutdown.clone()),
    );
    for (bound, kind) in listeners {
        services.spawn(listener::serve(
            bound,
            kind,
            proxy.clone(),
            stop_accepting.clone(),
            connections.clone(),
        ));
    }
    ready.listening.store(true, Ordering::Release);

    let mut signals = Signals::new()?;
    tokio::select! {
        signal = signals.next() => tracing::info!(signal, "draining: readiness off, still accepting for shutdown_delay"),
        // The watch only ends early if it cannot be set up: better to fail loudly now than
        // to serve a table that silently stops following its file.
        watched = file_source => watched.context("cannot watch the config file")?,
    }
    ready.draining.store(true, Ordering::Release);
    let outcome = drain(&config, &mut signals, &stop_accepting, &connections).await;
    shutdown.cancel();
    services.close();
    // Each service returns once it sees the token; a stuck one must not hold the exit, and
    // after a second signal nothing does.
    if outcome.is_ok()
        && tokio::time::timeout(SERVICES_STOP, services.wait())
            .await
            .is_err()
    {
        tracing::warn!(left = services.len(), "services still running at exit");
    }
    outcome
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

fn log_listening(kind: &str, listener: &tokio::net::TcpListener) {
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
