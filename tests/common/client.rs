//! The clients the tests drive the proxy with: a rustls client trusting the test CA
//! ([`tls_connect`] / [`ClientOpts`]), raw TCP ([`raw_connect`], [`read_until_closed`]),
//! `openssl s_client`, and a minimal HTTP `GET` for admin ports.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::AlertDescription;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout, Instant};
use tokio_rustls::{client, TlsConnector};

use super::{pki, STEP};

/// The TLS alert record a refusal must send: fatal (2) unrecognized_name (112).
pub const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

/// How [`tls_connect_with`] connects.
#[derive(Clone, Debug)]
pub struct ClientOpts {
    /// The name sent as SNI (and verified against the backend's certificate).
    pub sni: String,
    /// rustls `max_fragment_size`: small values split the ClientHello over several records.
    pub max_fragment_size: Option<usize>,
    /// Connect from this loopback address (e.g. 127.0.0.2, to test allow lists) instead of
    /// the one the kernel picks.
    pub source: Option<IpAddr>,
}

impl ClientOpts {
    /// Default options for `sni`.
    pub fn sni(sni: &str) -> Self {
        Self {
            sni: sni.to_owned(),
            max_fragment_size: None,
            source: None,
        }
    }

    /// The same options, connecting from `source`.
    pub fn bound_to(self, source: IpAddr) -> Self {
        Self {
            source: Some(source),
            ..self
        }
    }
}

/// A TLS client connection through the proxy to a [`TlsBackend`], after its identity line.
pub struct TlsConn {
    /// The stream, positioned after the identity line.
    pub stream: client::TlsStream<TcpStream>,
    /// The backend's id from its identity line.
    pub backend: String,
    /// The SNI the backend saw (`-` for none).
    pub sni: String,
}

impl TlsConn {
    /// Writes `data` and reads the same bytes back (bounded); panics otherwise.
    pub async fn echo(&mut self, data: &[u8]) {
        self.stream.write_all(data).await.expect("echo write");
        self.stream.flush().await.expect("echo flush");
        let mut back = vec![0u8; data.len()];
        timeout(STEP, self.stream.read_exact(&mut back))
            .await
            .expect("echo read timed out")
            .expect("echo read");
        assert_eq!(back, data, "echo through backend {}", self.backend);
    }
}

/// Connects with default options for `sni`.
pub async fn tls_connect(addr: SocketAddr, sni: &str) -> io::Result<TlsConn> {
    tls_connect_with(addr, &ClientOpts::sni(sni)).await
}

/// Connects, completes the handshake and reads the backend's identity line, all under [`STEP`].
pub async fn tls_connect_with(addr: SocketAddr, opts: &ClientOpts) -> io::Result<TlsConn> {
    let attempt = async {
        let tcp = tcp_connect(addr, opts.source).await?;
        let connector = TlsConnector::from(pki().client_config(opts.max_fragment_size));
        let name = ServerName::try_from(opts.sni.clone())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut stream = connector.connect(name, tcp).await?;
        let line = read_line(&mut stream).await?;
        let (backend, sni) = parse_identity(&line).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not an identity line: {line:?}"),
            )
        })?;
        Ok(TlsConn {
            stream,
            backend,
            sni,
        })
    };
    timeout(STEP, attempt)
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "tls_connect")))
}

/// Reads one `\n`-terminated line byte by byte (so nothing after it is consumed).
async fn read_line<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> io::Result<String> {
    let mut line = Vec::new();
    loop {
        let byte = stream.read_u8().await?;
        if byte == b'\n' {
            return String::from_utf8(line)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
        }
        line.push(byte);
        if line.len() > 1024 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
        }
    }
}

/// `backend=<id> sni=<sni>` into (id, sni).
pub fn parse_identity(line: &str) -> Option<(String, String)> {
    let mut backend = None;
    let mut sni = None;
    for field in line.split_whitespace() {
        if let Some(v) = field.strip_prefix("backend=") {
            backend = Some(v.to_owned());
        } else if let Some(v) = field.strip_prefix("sni=") {
            sni = Some(v.to_owned());
        }
    }
    Some((backend?, sni?))
}

/// The alert a rustls client received, if that is what `err` is.
pub fn received_alert(err: &io::Error) -> Option<AlertDescription> {
    match err.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(alert) => Some(*alert),
        _ => None,
    }
}

/// Connects through the proxy and asserts the connection reaches `backend` with `sni` seen.
pub async fn assert_routes(addr: SocketAddr, sni: &str, backend: &str) -> TlsConn {
    let conn = tls_connect(addr, sni)
        .await
        .unwrap_or_else(|e| panic!("{sni}: expected to reach backend {backend}, got error {e}"));
    assert_eq!(conn.backend, backend, "{sni} reached the wrong backend");
    conn
}

// === Raw client ===

/// How a raw read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Orderly EOF.
    Eof,
    /// The peer reset the connection (counts as closed).
    Reset,
    /// Still open when the time ran out.
    TimedOut,
}

impl End {
    /// Closed by the peer, one way or the other.
    pub fn closed(self) -> bool {
        self != End::TimedOut
    }
}

/// Everything read until the peer closed or `within` ran out.
#[derive(Debug)]
pub struct ReadOutcome {
    /// The bytes read.
    pub bytes: Vec<u8>,
    /// How it ended.
    pub end: End,
    /// When it ended.
    pub at: Instant,
}

/// Reads until EOF, reset or `within` (then [`End::TimedOut`]).
pub async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    within: Duration,
) -> ReadOutcome {
    let deadline = Instant::now() + within;
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => {
                return ReadOutcome {
                    bytes,
                    end: End::TimedOut,
                    at: Instant::now(),
                }
            }
            Ok(Ok(0)) => {
                return ReadOutcome {
                    bytes,
                    end: End::Eof,
                    at: Instant::now(),
                }
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => {
                return ReadOutcome {
                    bytes,
                    end: End::Reset,
                    at: Instant::now(),
                }
            }
        }
    }
}

/// A TCP connection to `addr` with TCP_NODELAY, bounded by [`STEP`].
pub async fn raw_connect(addr: SocketAddr) -> TcpStream {
    connected(tcp_connect(addr, None)).await
}

/// Like [`raw_connect`], from `source` (port 0).
pub async fn raw_connect_from(source: IpAddr, addr: SocketAddr) -> TcpStream {
    connected(tcp_connect(addr, Some(source))).await
}

async fn connected(connect: impl std::future::Future<Output = io::Result<TcpStream>>) -> TcpStream {
    timeout(STEP, connect)
        .await
        .expect("connect timed out")
        .expect("connect")
}

/// A TCP connection to `addr` with TCP_NODELAY, from a socket bound to `source` if given.
async fn tcp_connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let tcp = match source {
        None => TcpStream::connect(addr).await?,
        Some(source) => {
            let socket = match source {
                IpAddr::V4(_) => TcpSocket::new_v4()?,
                IpAddr::V6(_) => TcpSocket::new_v6()?,
            };
            socket.bind(SocketAddr::new(source, 0))?;
            socket.connect(addr).await?
        }
    };
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

// === Admin HTTP ===

/// A minimal HTTP/1.1 `GET` (Connection: close): (status, body). Handles chunked bodies.
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut tcp = std::net::TcpStream::connect_timeout(&addr, STEP)?;
    tcp.set_read_timeout(Some(STEP))?;
    tcp.set_write_timeout(Some(STEP))?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw)?;
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_owned());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n")?;
        let size_str = std::str::from_utf8(&data[..eol]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        data = &data[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// Whether `openssl` is on PATH.
pub fn have_openssl() -> bool {
    Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs `openssl s_client` against `addr` with `servername`, `-max_send_frag` and `alpn_names`
/// made-up ALPN names (to make the hello big), verifying the test CA and `api.example.test`.
/// Returns the first two stdout lines: the identity line, then the echo of a line it sends.
pub fn openssl_s_client(
    addr: SocketAddr,
    servername: &str,
    max_send_frag: usize,
    alpn_names: usize,
) -> Result<Vec<String>, String> {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pki().ca_pem()).unwrap();
    let alpn: Vec<String> = (0..alpn_names)
        .map(|i| format!("proto-{i:02}-xxxxxxxx"))
        .collect();
    let mut command = Command::new("openssl");
    command
        .args(["s_client", "-quiet", "-verify_return_error"])
        .arg("-connect")
        .arg(addr.to_string())
        .args(["-servername", servername])
        .args(["-max_send_frag", &max_send_frag.to_string()])
        .args(["-verify_hostname", "api.example.test"])
        .arg("-CAfile")
        .arg(&ca);
    if !alpn.is_empty() {
        command.arg("-alpn").arg(alpn.join(","));
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn openssl: {e}"))?;
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    if let Ok(line) = rx.recv_timeout(STEP) {
        lines.push(line);
        let _ = stdin.write_all(b"ping from openssl\n");
        let _ = stdin.flush();
        if let Ok(line) = rx.recv_timeout(STEP) {
            lines.push(line);
        }
    }
    let _ = child.kill();
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    if lines.len() == 2 {
        Ok(lines)
    } else {
        Err(format!(
            "openssl s_client gave {lines:?}; stderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}
