//! The load generators: blocking threads for the raw streams, tokio + rustls for TLS.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream as StdStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::{client::TlsStream, TlsConnector};

use crate::backend::RAW_CHUNK;

/// Bound for one connect + handshake (+ request) in the TLS loads.
const STEP: Duration = Duration::from_secs(10);

/// One raw stream after `hello`: upload (`up`) or download for `duration`.
/// Returns (bytes the receiving end counted, seconds from the first byte to the end).
pub fn raw_stream(
    addr: SocketAddr,
    hello: &[u8],
    up: bool,
    duration: Duration,
) -> io::Result<(u64, f64)> {
    let mut s = StdStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(duration + STEP))?;
    s.set_write_timeout(Some(duration + STEP))?;
    let mut cmd = [0u8; 9];
    cmd[0] = if up { b'U' } else { b'D' };
    cmd[1..].copy_from_slice(&(duration.as_millis() as u64).to_be_bytes());
    s.write_all(hello)?;
    s.write_all(&cmd)?;
    let mut buf = vec![0u8; RAW_CHUNK];
    let start = Instant::now();
    if up {
        let until = start + duration;
        while Instant::now() < until {
            s.write_all(&buf)?;
        }
        s.shutdown(Shutdown::Write)?;
        let mut count = [0u8; 8];
        s.read_exact(&mut count)?;
        Ok((u64::from_be_bytes(count), start.elapsed().as_secs_f64()))
    } else {
        let mut total = 0u64;
        let mut first = None;
        loop {
            match s.read(&mut buf)? {
                0 => break,
                n => {
                    first.get_or_insert_with(Instant::now);
                    total += n as u64;
                }
            }
        }
        let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
        Ok((total, secs))
    }
}

/// Connects and completes a full TLS handshake (the client config never resumes).
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    connector: &TlsConnector,
) -> io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(sni.to_owned())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    connector.connect(name, tcp).await
}

/// Sends `line` and reads the one-line answer.
async fn ask(tls: &mut TlsStream<TcpStream>, line: &[u8]) -> io::Result<()> {
    tls.write_all(line).await?;
    tls.flush().await?;
    let mut answer = [0u8; 2];
    tls.read_exact(&mut answer).await?;
    if answer[0] != line[0] {
        return Err(io::Error::other("unexpected answer"));
    }
    Ok(())
}

/// `streams` TLS downloads at once for `duration`; (bytes, seconds).
pub async fn tls_bulk(
    addr: SocketAddr,
    sni: &str,
    connector: &TlsConnector,
    streams: usize,
    duration: Duration,
) -> io::Result<(u64, f64)> {
    let mut conns = Vec::new();
    for _ in 0..streams {
        conns.push(timeout(STEP, tls_connect(addr, sni, connector)).await??);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for mut tls in conns {
        let cmd = format!("D {}\n", duration.as_millis());
        tasks.push(tokio::spawn(async move {
            tls.write_all(cmd.as_bytes()).await?;
            tls.flush().await?;
            let mut buf = vec![0u8; 256 * 1024];
            let mut total = 0u64;
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    // The backend closes right after close_notify.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e),
                }
            }
            io::Result::Ok(total)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.map_err(io::Error::other)??;
    }
    Ok((total, start.elapsed().as_secs_f64()))
}

/// What a connection-rate run saw.
pub struct Rate {
    pub connections: u64,
    pub errors: u64,
    pub seconds: f64,
    /// Connect + handshake, microseconds, sorted.
    pub handshake_us: Vec<u32>,
}

impl Rate {
    pub fn per_second(&self) -> f64 {
        self.connections as f64 / self.seconds
    }

    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.handshake_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.handshake_us.len() - 1) as f64 * p).round() as usize;
        f64::from(self.handshake_us[i]) / 1000.0
    }
}

/// `concurrency` clients, each in a loop for `duration`: connect, full handshake, one small
/// request/response, close.
pub async fn conn_rate(
    addr: SocketAddr,
    sni: &'static str,
    connector: &TlsConnector,
    concurrency: usize,
    duration: Duration,
) -> Rate {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (stop, count, errors, samples) =
            (stop.clone(), count.clone(), errors.clone(), samples.clone());
        let connector = connector.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::with_capacity(4096);
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let one = async {
                    let mut tls = tls_connect(addr, sni, &connector).await?;
                    let handshake = t0.elapsed();
                    ask(&mut tls, b"P\n").await?;
                    io::Result::Ok(handshake)
                };
                match timeout(STEP, one).await {
                    Ok(Ok(handshake)) => {
                        count.fetch_add(1, Ordering::Relaxed);
                        mine.push(handshake.as_micros().min(u128::from(u32::MAX)) as u32);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            samples.lock().unwrap().extend(mine);
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    // Connections finish within STEP; count what completed by then.
    let connections = count.load(Ordering::Relaxed);
    let seconds = start.elapsed().as_secs_f64();
    for task in tasks {
        let _ = task.await;
    }
    let mut handshake_us = std::mem::take(&mut *samples.lock().unwrap());
    handshake_us.sort_unstable();
    Rate {
        connections,
        errors: errors.load(Ordering::Relaxed),
        seconds,
        handshake_us,
    }
}

/// Opens `n` TLS connections (64 clients at a time), each answered once (`I`), and keeps them.
pub async fn open_idle(
    addr: SocketAddr,
    sni: &'static str,
    connector: &TlsConnector,
    n: usize,
) -> io::Result<Vec<TlsStream<TcpStream>>> {
    const CLIENTS: usize = 64;
    let mut tasks = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let mine = n / CLIENTS + usize::from(i < n % CLIENTS);
        let connector = connector.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(mine);
            for _ in 0..mine {
                let tls = timeout(STEP, async {
                    let mut tls = tls_connect(addr, sni, &connector).await?;
                    ask(&mut tls, b"I\n").await?;
                    io::Result::Ok(tls)
                })
                .await
                .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))?;
                out.push(tls);
            }
            io::Result::Ok(out)
        }));
    }
    let mut out = Vec::with_capacity(n);
    for task in tasks {
        out.extend(task.await.map_err(io::Error::other)??);
    }
    Ok(out)
}

/// Tries a routed TLS connection to `sni` every `every` until one completes a handshake and
/// an answer, for at most `within`; returns when that connection completed.
pub async fn first_routed(
    addr: SocketAddr,
    sni: &str,
    connector: &TlsConnector,
    every: Duration,
    within: Duration,
) -> Option<Instant> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let attempt = timeout(STEP, async {
            let mut tls = tls_connect(addr, sni, connector).await?;
            ask(&mut tls, b"P\n").await
        })
        .await;
        if let Ok(Ok(())) = attempt {
            return Some(Instant::now());
        }
        tokio::time::sleep(every).await;
    }
    None
}
