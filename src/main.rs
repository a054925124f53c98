//! The sniroute binary: parses the command line, loads the config, and wires the data plane,
//! the routing-table sources and the admin server together under one shutdown token.

mod admin;
mod demo;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use control::{Config, FileSource, Publisher};
use proxy::{listener, Proxy, Settings, SharedTable};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Exit status for a configuration that does not validate (sysexits.h EX_CONFIG).
const EXIT_BAD_CONFIG: u8 = 78;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Some(Command::Check) => return check(cli.config.as_deref()),
        Some(Command::Demo { listen, admin }) => {
            runtime().and_then(|rt| rt.block_on(demo::run(listen, admin)))
        }
        None => match cli.config {
            Some(path) => match load(&path) {
                Ok(config) => runtime().and_then(|rt| rt.block_on(run(path, config))),
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

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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

/// Runs the proxy on `config` (loaded from `path`, which is then watched) until SIGTERM/SIGINT.
pub(crate) async fn run(path: PathBuf, config: Config) -> anyhow::Result<()> {
    let table = Arc::new(SharedTable::default());
    let publisher = Arc::new(Publisher::new(table.clone()));
    publisher.publish(config.table()?, "file");

    let admin_listener = listener::bind(config.admin, listener::DEFAULT_BACKLOG)?;
    log_listening("admin", &admin_listener);
    let mut listeners = Vec::with_capacity(config.listen.len());
    for addr in &config.listen {
        let bound = listener::bind(*addr, listener::DEFAULT_BACKLOG)?;
        log_listening("proxy", &bound);
        listeners.push(bound);
    }

    let shutdown = CancellationToken::new();
    let connections = TaskTracker::new();
    let state = Arc::new(admin::State {
        table: table.clone(),
        listening: Default::default(),
    });
    tokio::spawn(admin::serve(
        admin_listener,
        state.clone(),
        shutdown.clone(),
    ));
    let file_source = FileSource::new(path, config.clone(), publisher).run(shutdown.clone());
    let proxy = Arc::new(Proxy::new(settings(&config), table));
    for bound in listeners {
        tokio::spawn(listener::serve(
            bound,
            proxy.clone(),
            shutdown.clone(),
            connections.clone(),
        ));
    }
    state.listening.store(true, Ordering::Release);

    tokio::select! {
        signalled = wait_for_signal() => signalled?,
        // The watch only ends early if it cannot be set up: better to fail loudly now than
        // to serve a table that silently stops following its file.
        watched = file_source => watched.context("cannot watch the config file")?,
    }
    tracing::info!("shutting down");
    shutdown.cancel();
    Ok(())
}

fn settings(config: &Config) -> Settings {
    Settings {
        client_hello_timeout: config.client_hello_timeout,
        connect_timeout: config.connect_timeout,
        idle_timeout: config.idle_timeout,
        max_client_hello: config.max_client_hello,
    }
}

fn log_listening(kind: &str, listener: &tokio::net::TcpListener) {
    match listener.local_addr() {
        Ok(addr) => tracing::info!(%kind, %addr, "listening"),
        Err(error) => tracing::warn!(%kind, %error, "listening on an unknown address"),
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
