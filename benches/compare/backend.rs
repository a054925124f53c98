//! The backends every proxy under test forwards to, run in a child process of the harness
//! (`compare --backend-child DIR`) so their CPU and file descriptors are neither the proxy's
//! nor the load generator's.
//!
//! - raw: reads one ClientHello record, then a 9-byte command: `U` + 8 ignored bytes (count
//!   every byte until EOF, then answer the count as a big-endian u64) or `D` + milliseconds
//!   (send zeros for that long, then shut down the write side).
//! - TLS (rustls, ring): after the handshake, answers lines: `P` -> `P` (a request/response),
//!   `I` -> `I` (then the connection idles until the client closes), `D <ms>` -> zeros for that
//!   long, then close_notify.
//!
//! The child prints `ports RAW TLS` on stdout and exits when its stdin closes.

use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, TcpListener as StdListener, TcpStream as StdStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// Chunk written and read by the raw endpoints: large enough that syscalls are not the limit.
pub const RAW_CHUNK: usize = 256 * 1024;
/// Plaintext per TLS write (rustls cuts it into 16 KiB records).
const TLS_CHUNK: usize = 64 * 1024;

/// Runs the backends until stdin closes. `dir` holds `leaf.der` and `leaf.key` (PKCS#8).
pub fn run(dir: &Path) -> io::Result<()> {
    let chain = vec![CertificateDer::from(std::fs::read(dir.join("leaf.der"))?)];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(std::fs::read(
        dir.join("leaf.key"),
    )?));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(io::Error::other)?;
    // Clients never resume: no tickets to make and send.
    config.send_tls13_tickets = 0;
    let acceptor = TlsAcceptor::from(Arc::new(config));

    let raw = StdListener::bind("127.0.0.1:0")?;
    let tls = StdListener::bind("127.0.0.1:0")?;
    tls.set_nonblocking(true)?;
    println!(
        "ports {} {}",
        raw.local_addr()?.port(),
        tls.local_addr()?.port()
    );
    io::stdout().flush()?;

    std::thread::spawn(move || {
        for stream in raw.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = serve_raw(stream);
            });
        }
    });
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("backend runtime");
        rt.block_on(async move {
            let listener = TcpListener::from_std(tls).expect("tls listener");
            loop {
                match listener.accept().await {
                    Ok((tcp, _)) => {
                        tokio::spawn(serve_tls(tcp, acceptor.clone()));
                    }
                    // EMFILE and the like: let connections close, then go on.
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        });
    });
    // The parent holds our stdin: when it goes (or dies), so do we.
    let mut line = String::new();
    while io::stdin().lock().read_line(&mut line)? > 0 {
        line.clear();
    }
    Ok(())
}

fn serve_raw(mut s: StdStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    let mut header = [0u8; 5];
    s.read_exact(&mut header)?;
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    let mut hello = vec![0u8; len];
    s.read_exact(&mut hello)?;
    let mut cmd = [0u8; 9];
    s.read_exact(&mut cmd)?;
    let arg = u64::from_be_bytes(cmd[1..].try_into().unwrap());
    let mut buf = vec![0u8; RAW_CHUNK];
    match cmd[0] {
        b'U' => {
            let mut total = 0u64;
            loop {
                match s.read(&mut buf)? {
                    0 => break,
                    n => total += n as u64,
                }
            }
            s.write_all(&total.to_be_bytes())?;
            s.shutdown(Shutdown::Write)?;
        }
        b'D' => {
            let until = Instant::now() + Duration::from_millis(arg);
            while Instant::now() < until {
                s.write_all(&buf)?;
            }
            s.shutdown(Shutdown::Write)?;
            // Wait for the client's close so our side is not the one reset.
            while s.read(&mut buf)? > 0 {}
        }
        _ => {}
    }
    Ok(())
}

async fn serve_tls(tcp: TcpStream, acceptor: TlsAcceptor) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    let mut tls = acceptor.accept(tcp).await?;
    let mut line = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    loop {
        let n = tls.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        line.extend_from_slice(&buf[..n]);
        while let Some(end) = line.iter().position(|&b| b == b'\n') {
            let cmd: Vec<u8> = line.drain(..=end).collect();
            match cmd.first() {
                Some(b'P') => tls.write_all(b"P\n").await?,
                Some(b'I') => tls.write_all(b"I\n").await?,
                Some(b'D') => {
                    let ms: u64 = std::str::from_utf8(&cmd[1..])
                        .ok()
                        .and_then(|s| s.trim().parse().ok())
                        .unwrap_or(0);
                    let zeros = vec![0u8; TLS_CHUNK];
                    let until = Instant::now() + Duration::from_millis(ms);
                    while Instant::now() < until {
                        tls.write_all(&zeros).await?;
                    }
                    tls.shutdown().await?;
                    return Ok(());
                }
                _ => return Ok(()),
            }
            tls.flush().await?;
        }
    }
    tls.shutdown().await
}
