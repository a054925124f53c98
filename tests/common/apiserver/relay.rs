//! A TCP relay in front of the server whose connections a test can cut.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::common::BackendThread;

/// A TCP relay on 127.0.0.1 in front of `target`: a test cuts every connection through it
/// at once, and may refuse new ones for a while (a network break). It counts the
/// connections it accepts, so a test sees how often a client tried while `target` was down.
pub struct Relay {
    addr: SocketAddr,
    cut: watch::Sender<(u64, bool)>,
    accepted: Arc<AtomicU64>,
    _thread: BackendThread,
}

impl Relay {
    /// Starts relaying to `target`.
    pub fn start(target: SocketAddr) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind relay");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cuts) = watch::channel((0u64, false));
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = accepted.clone();
        let thread =
            BackendThread::spawn("relay", listener, move |listener: TcpListener| async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    let mut cuts = cuts.clone();
                    let (generation, refusing) = *cuts.borrow_and_update();
                    if refusing {
                        drop(client);
                        continue;
                    }
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(target).await else {
                            return;
                        };
                        let (mut client, mut server) = (client, server);
                        // A cut drops both sockets: each peer sees its connection end.
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cuts.wait_for(|(g, _)| *g != generation) => {}
                        }
                    });
                }
            });
        Self {
            addr,
            cut,
            accepted,
            _thread: thread,
        }
    }

    /// Connections accepted so far (each closed at once while `target` refuses them).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// `https://127.0.0.1:PORT` of the relay.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Cuts every open connection; with `refuse`, new ones are closed at once until
    /// [`Relay::heal`].
    pub fn cut(&self, refuse: bool) {
        self.cut.send_modify(|(generation, refusing)| {
            *generation += 1;
            *refusing = refuse;
        });
    }

    /// Accepts connections again.
    pub fn heal(&self) {
        self.cut.send_modify(|(_, refusing)| *refusing = false);
    }
}
