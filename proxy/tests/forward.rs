//! `forward` over real loopback sockets: byte-exact both ways, half-close, idle timeout.

use std::time::Duration;

use proxy::internals::forward::forward;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A connected pair of loopback sockets.
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (a.unwrap(), b.unwrap().0)
}

/// Deterministic bytes that make a misplaced or lost chunk visible.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 13) as u8)
        .collect()
}

/// client_end <-> [proxy_client | forward | proxy_backend] <-> backend_end
async fn proxied(
    first: &[u8],
    idle: Duration,
) -> (
    TcpStream,
    TcpStream,
    tokio::task::JoinHandle<proxy::internals::forward::Totals>,
) {
    let (client_end, proxy_client) = pair().await;
    let (proxy_backend, backend_end) = pair().await;
    let first = first.to_vec();
    let task = tokio::spawn(async move {
        forward(
            proxy_client,
            proxy_backend,
            first,
            idle,
            &Default::default(),
        )
        .await
        .unwrap()
    });
    (client_end, backend_end, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_large_streams_byte_exact_both_ways_with_half_close() {
    let hello = pattern(517, 1);
    let up = pattern(8 << 20, 2);
    let down = pattern(12 << 20, 3);
    let (mut client, mut backend, task) = proxied(&hello, Duration::from_secs(30)).await;

    let (mut client_read, mut client_write) = client.split();
    let (mut backend_read, mut backend_write) = backend.split();
    let send_up = async {
        client_write.write_all(&up).await.unwrap();
        client_write.shutdown().await.unwrap();
    };
    let recv_up = async {
        let mut got = Vec::new();
        backend_read.read_to_end(&mut got).await.unwrap();
        got
    };
    // The backend keeps sending after the client's half-close reached it.
    let send_down = async {
        backend_write.write_all(&down).await.unwrap();
        backend_write.shutdown().await.unwrap();
    };
    let recv_down = async {
        let mut got = Vec::new();
        client_read.read_to_end(&mut got).await.unwrap();
        got
    };
    let ((), got_up, (), got_down) = tokio::join!(send_up, recv_up, send_down, recv_down);
    assert_eq!(got_up.len(), hello.len() + up.len());
    assert!(
        got_up[..hello.len()] == hello[..],
        "the buffered hello goes first"
    );
    assert!(
        got_up[hello.len()..] == up[..],
        "client bytes arrive unchanged"
    );
    assert!(got_down == down, "backend bytes arrive unchanged");

    let totals = task.await.unwrap();
    assert_eq!(totals.client_to_backend, (hello.len() + up.len()) as u64);
    assert_eq!(totals.backend_to_client, down.len() as u64);
    assert!(!totals.idle_timed_out);
}

#[tokio::test]
async fn half_closed_client_still_receives_the_answer() {
    let (mut client, mut backend, task) = proxied(b"hello", Duration::from_secs(30)).await;
    client.write_all(b" world").await.unwrap();
    client.shutdown().await.unwrap();
    let mut request = Vec::new();
    backend.read_to_end(&mut request).await.unwrap();
    assert_eq!(request, b"hello world");
    backend.write_all(b"answer after EOF").await.unwrap();
    drop(backend);
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"answer after EOF");
    task.await.unwrap();
}

#[tokio::test]
async fn idle_pairs_are_closed_and_active_ones_are_not() {
    let idle = Duration::from_millis(300);
    let (mut client, mut backend, task) = proxied(b"", idle).await;
    // Keep talking for longer than the idle limit: the pair must stay up.
    for _ in 0..8 {
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        backend.read_exact(&mut buf).await.unwrap();
        tokio::time::sleep(idle / 3).await;
    }
    assert!(!task.is_finished(), "an active pair was closed");
    let started = tokio::time::Instant::now();
    let totals = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    assert!(totals.idle_timed_out);
    assert!(started.elapsed() >= idle / 2);
    let mut buf = [0u8; 1];
    assert_eq!(
        client.read(&mut buf).await.unwrap(),
        0,
        "the client sees the close"
    );
}

/// Request/response rounds of every size from 1 byte to past the copy buffer (16 KiB) and far
/// past it, each waited for before the next: bursts start copied, move to a pipe once one
/// fills the buffer, and go back. A direction that missed its wakeup after a short read
/// would stall a round here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_response_rounds_of_every_size_arrive_whole() {
    let (mut client, mut backend, task) = proxied(b"", Duration::from_secs(30)).await;
    let sizes = [
        1,
        5,
        517,
        4096,
        16383,
        16384,
        16385,
        40_000,
        3,
        300_000,
        2,
        1 << 20,
        7,
    ];
    let (mut up_total, mut down_total) = (0, 0);
    for (round, &size) in sizes.iter().enumerate() {
        let request = pattern(size, round as u8);
        let response = pattern(sizes[sizes.len() - 1 - round], round as u8 ^ 0x5a);
        let round_trip = async {
            let send = async { client.write_all(&request).await.unwrap() };
            let mut got = vec![0; request.len()];
            let recv = async { backend.read_exact(&mut got).await.unwrap() };
            tokio::join!(send, recv);
            assert!(got == request, "round {round}: request of {size} bytes");
            let send = async { backend.write_all(&response).await.unwrap() };
            let mut got = vec![0; response.len()];
            let recv = async { client.read_exact(&mut got).await.unwrap() };
            tokio::join!(send, recv);
            assert!(
                got == response,
                "round {round}: response of {} bytes",
                response.len()
            );
        };
        tokio::time::timeout(Duration::from_secs(10), round_trip)
            .await
            .unwrap_or_else(|_| panic!("round {round} ({size} bytes up) stalled"));
        up_total += request.len() as u64;
        down_total += response.len() as u64;
    }
    drop(client);
    drop(backend);
    let totals = task.await.unwrap();
    assert_eq!(totals.client_to_backend, up_total);
    assert_eq!(totals.backend_to_client, down_total);
}
