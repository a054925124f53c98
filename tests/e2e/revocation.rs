//! End to end: revocation. When a new table would refuse an established connection (its route
//! removed, or its client no longer in the allow list), the proxy closes it once
//! `revoke_grace` has passed, if the table in force then still refuses it; `off` keeps it.
//!
//! Here, on the wall clock, what only the binary shows: a rewritten file reloaded, the swap's
//! and the revocation's log lines, `/metrics`. The grace itself (its exact end, an allow list
//! narrowed, a route restored within it, `off`) is tested on paused time in timeouts.rs.

use std::time::Duration;

use crate::common::*;
use tokio::time::Instant;

const A: &str = "a.example.test";
const B: &str = "b.example.test";
/// The log line a swap that dooms established connections writes.
const DOOMED: &str = "no longer admitted";

/// `sniroute_revoked_connections_total` from `/metrics`.
fn revoked(proxy: &Sniroute) -> u64 {
    Scrape::of(proxy).value("sniroute_revoked_connections_total", &[]) as u64
}

async fn wait_revoked(proxy: &Sniroute, want: u64) {
    eventually(STEP, "sniroute_revoked_connections_total", || async {
        (revoked(proxy) == want).then_some(())
    })
    .await;
}

/// Waits until the connection is closed by the proxy, at least `grace` after `changed` (when
/// the config was rewritten, so before the swap) and at most `late` after `seen` (when the
/// swap was seen in the logs).
async fn assert_revoked(
    conn: &mut TlsConn,
    changed: Instant,
    seen: Instant,
    grace: Duration,
    late: Duration,
) {
    let out = read_until_closed(&mut conn.stream, grace + late).await;
    assert!(
        out.end.closed(),
        "not revoked {:?} after the swap",
        out.at - seen
    );
    assert_eq!(out.bytes, b"", "data after the revocation");
    let after = out.at - changed;
    assert!(
        after + Duration::from_millis(20) >= grace,
        "closed {after:?} after the change, before the {grace:?} grace"
    );
    assert!(
        out.at - seen <= grace + late,
        "closed only {:?} after the swap",
        out.at - seen
    );
}

/// Rewrites the config and waits for the swap that dooms established connections: (when the
/// file was written, when the swap was seen).
fn change_dooming(proxy: &mut Sniroute, yaml: String) -> (Instant, Instant) {
    let mark = proxy.log_mark();
    let changed = Instant::now();
    proxy.write_config(yaml);
    proxy.wait_log_since(mark, &[DOOMED, "connections=1"], STEP);
    (changed, Instant::now())
}

#[tokio::test]
async fn a_removed_route_loses_its_streams_after_the_grace() {
    let grace = Duration::from_secs(1);
    let (a, b) = (TlsBackend::start("a"), TlsBackend::start("b"));
    let only_b = Cfg::new()
        .set("revoke_grace", "1s")
        .route("b", &[B], &[b.addr()]);
    let both = only_b.clone().route("a", &[A], &[a.addr()]);
    let mut proxy = Sniroute::start(both.yaml());
    let addr = proxy.proxy_addr();
    let mut on_a = assert_routes(addr, A, "a").await;
    let mut on_b = assert_routes(addr, B, "b").await;
    on_a.echo(b"before").await;
    on_b.echo(b"before").await;
    assert_eq!(revoked(&proxy), 0);

    let mark = proxy.log_mark();
    let (changed, seen) = change_dooming(&mut proxy, only_b.yaml());
    // Inside the grace the stream still works; new connections to A are refused.
    on_a.echo(b"during the grace").await;
    let refused = tls_connect(addr, A).await.err().expect("A still routed");
    assert_eq!(
        received_alert(&refused),
        Some(rustls::AlertDescription::UnrecognisedName)
    );
    assert_revoked(&mut on_a, changed, seen, grace, Duration::from_secs(2)).await;
    proxy.wait_log_since(mark, &["connection revoked", A], STEP);
    wait_revoked(&proxy, 1).await;
    eventually(
        STEP,
        "backend a sees the revoked connection end",
        || async { (a.active() == 0).then_some(()) },
    )
    .await;

    // The route that stayed is untouched.
    on_b.echo(b"after the revocation").await;
    assert_eq!(b.active(), 1);
    assert!(proxy
        .logs_since(mark, &["connection revoked", B])
        .is_empty());
    assert_eq!(revoked(&proxy), 1);
}
