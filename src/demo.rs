//! `sniroute demo`: a self-contained tour. Two local TLS backends, a generated config that
//! routes to them, and the real proxy running on that config (edit it to see a reload).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The biggest request head a demo backend reads before answering.
const MAX_REQUEST_HEAD: usize = 8192;

/// Starts the backends, writes the config, prints how to try it, and runs the proxy.
pub async fn run(listen: SocketAddr, admin: SocketAddr) -> anyhow::Result<()> {
    // The backends' tasks end with the proxy: nothing is left running outside the tracker.
    let backends = TaskTracker::new();
    let stop = CancellationToken::new();
    let a = start_backend("backend-a", &backends, &stop).await?;
    let b = start_backend("backend-b", &backends, &stop).await?;
    let dir = std::env::temp_dir().join(format!("sniroute-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("sniroute.yaml");
    let yaml = format!(
        "# sniroute demo config: edit and save, and new connections follow within a second.\n\
         listen: {listen}\n\
         admin: {admin}\n\
         routes:\n\
         \x20 - name: cluster-a\n\
         \x20   hostnames: [api.a.demo.test]\n\
         \x20   backends: [\"{a}\"]\n\
         \x20 - name: cluster-b\n\
         \x20   hostnames: [\"*.b.demo.test\"]\n\
         \x20   backends: [\"{b}\"]\n"
    );
    std::fs::write(&path, yaml).with_context(|| format!("cannot write {}", path.display()))?;
    let port = listen.port();
    let host = listen.ip();
    println!(
        "sniroute demo: backend-a on {a}, backend-b on {b}, config in {path}\n\
         Try (in another terminal):\n\
         \x20 curl -sk --resolve api.a.demo.test:{port}:{host} https://api.a.demo.test:{port}/\n\
         \x20 curl -sk --resolve api.b.demo.test:{port}:{host} https://api.b.demo.test:{port}/\n\
         \x20 curl -sk --resolve nope.demo.test:{port}:{host} https://nope.demo.test:{port}/   # refused: unrecognized_name\n\
         \x20 curl -s http://{debug}/routes\n\
         Edit {path} (swap the two backends) and run the curls again. Ctrl-C stops.",
        path = path.display(),
        debug = control::config::DEFAULT_DEBUG,
    );
    let config = control::Config::load(&path)?;
    let outcome = crate::run(path, config).await;
    stop.cancel();
    backends.close();
    backends.wait().await;
    outcome
}

/// A TLS server on an ephemeral loopback port answering every HTTP request with its name
/// and the SNI it was reached by.
async fn start_backend(
    name: &'static str,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let cert =
        rcgen::generate_simple_self_signed(vec!["*.a.demo.test".into(), "*.b.demo.test".into()])
            .context("cannot make a demo certificate")?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("no TLS versions")?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .context("demo certificate refused")?;
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (connections, stop) = (tasks.clone(), stop.clone());
    tasks.spawn(async move {
        loop {
            let stream = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => return,
                },
            };
            let acceptor = acceptor.clone();
            let stop = stop.clone();
            connections.spawn(stop.run_until_cancelled_owned(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().unwrap_or("(none)").to_owned();
                let mut head = Vec::new();
                let mut chunk = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_HEAD {
                    match tls.read(&mut chunk).await {
                        Ok(n @ 1..) => head.extend_from_slice(&chunk[..n]),
                        _ => return,
                    }
                }
                let body = format!("hello from {name} (SNI {sni})\n");
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            }));
        }
    });
    Ok(addr)
}
