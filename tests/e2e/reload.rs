//! End to end: the config file is watched. Edits, rename-over and ConfigMap symlink swaps move
//! new connections within a second; established streams stay where they are; a broken file
//! keeps the last good table.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::*;
use tokio::time::Instant;

/// The contract says a change applies within a second; allow a little for a loaded machine.
const RELOAD_WITHIN: Duration = Duration::from_millis(1500);

fn to(backend: SocketAddr) -> String {
    one_route(backend).yaml()
}

/// Connects until a new connection lands on `backend`; panics after [`RELOAD_WITHIN`] from
/// `since`. Returns how long it took.
async fn lands_on(proxy: &Sniroute, backend: &str, since: Instant) -> Duration {
    loop {
        if let Ok(conn) = tls_connect(proxy.proxy_addr(), "api.example.test").await {
            if conn.backend == backend {
                return since.elapsed();
            }
        }
        if since.elapsed() > RELOAD_WITHIN {
            panic!(
                "new connections still not on {backend} {RELOAD_WITHIN:?} after the change; \
                 logs:\n{}",
                proxy.logs().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn assert_moves(proxy: &mut Sniroute, change: impl FnOnce(&mut Sniroute), b1: &TlsBackend) {
    let before = proxy.generation();
    let mut a = assert_routes(proxy.proxy_addr(), "api.example.test", "b1").await;
    a.echo(b"before").await;
    let mark = proxy.log_mark();
    let start = Instant::now();
    change(proxy);
    lands_on(proxy, "b2", start).await;
    // Once moved, every new connection goes to b2.
    for _ in 0..3 {
        assert_routes(proxy.proxy_addr(), "api.example.test", "b2").await;
    }
    // The established stream stays on b1 and keeps working.
    a.echo(b"after the reload, still on b1").await;
    assert_eq!(a.backend, "b1");
    assert!(b1.active() >= 1, "b1 lost its established connection");
    assert!(proxy.generation() > before, "generation did not move");
    proxy.wait_log_since(mark, &["table published", "generation="], STEP);
    let routes = proxy.routes();
    let backends = &routes["routes"][0]["backends"];
    assert_eq!(backends.as_array().map(Vec::len), Some(1), "{routes}");
}

#[tokio::test]
async fn edit_in_place_moves_new_connections_and_keeps_old_streams() {
    let b1 = TlsBackend::start("b1");
    let b2 = TlsBackend::start("b2");
    let mut proxy = Sniroute::start(to(b1.addr()));
    let yaml = to(b2.addr());
    assert_moves(&mut proxy, |p| p.write_config(&yaml), &b1).await;
    assert_eq!(
        proxy.routes()["routes"][0]["backends"][0],
        b2.addr().to_string()
    );
}

#[tokio::test]
async fn rename_over_reloads() {
    let b1 = TlsBackend::start("b1");
    let b2 = TlsBackend::start("b2");
    let mut proxy = Sniroute::start(to(b1.addr()));
    let yaml = to(b2.addr());
    assert_moves(&mut proxy, |p| p.rename_config(&yaml), &b1).await;
    // And a second one: the watch must follow the name, not the first file's inode.
    let b3 = TlsBackend::start("b3");
    let start = Instant::now();
    proxy.rename_config(to(b3.addr()));
    lands_on(&proxy, "b3", start).await;
}

#[tokio::test]
async fn configmap_symlink_swap_reloads() {
    let b1 = TlsBackend::start("b1");
    let b2 = TlsBackend::start("b2");
    let mut proxy = Sniroute::start_configmap(to(b1.addr()));
    let yaml = to(b2.addr());
    assert_moves(&mut proxy, |p| p.swap_configmap(&yaml), &b1).await;
    // And a second swap (the watch survives the first one).
    let b3 = TlsBackend::start("b3");
    let start = Instant::now();
    proxy.swap_configmap(to(b3.addr()));
    lands_on(&proxy, "b3", start).await;
}

#[tokio::test]
async fn broken_reload_keeps_the_old_table() {
    let b1 = TlsBackend::start("b1");
    let b2 = TlsBackend::start("b2");
    let mut proxy = Sniroute::start(to(b1.addr()));
    let generation = proxy.generation();
    let mut a = assert_routes(proxy.proxy_addr(), "api.example.test", "b1").await;

    let duplicate = Cfg::new()
        .route("one", &["api.example.test"], &[b2.addr()])
        .route("two", &["API.example.test."], &[b2.addr()])
        .yaml();
    let broken = ["listen: [127.0.0.1:0\nroutes: {{{\n".to_owned(), duplicate];
    for yaml in broken {
        let mark = proxy.log_mark();
        proxy.rename_config(&yaml);
        proxy.wait_log_since(mark, &["config reload failed"], Duration::from_secs(3));
        if yaml.contains("\"two\"") {
            // Refused for the duplicate (after normalising), not for something else.
            proxy.wait_log_since(mark, &["api.example.test", "\"two\""], STEP);
        }
        for _ in 0..3 {
            assert_routes(proxy.proxy_addr(), "api.example.test", "b1").await;
        }
        a.echo(b"still fine").await;
        assert_eq!(
            proxy.generation(),
            generation,
            "a broken file changed the table generation:\n{yaml}"
        );
        assert!(
            proxy.logs_since(mark, &["table published"]).is_empty(),
            "a broken file published a table:\n{yaml}"
        );
        assert_eq!(b2.accepted(), 0);
    }
    // The watch is still alive after the failures.
    let start = Instant::now();
    proxy.rename_config(to(b2.addr()));
    lands_on(&proxy, "b2", start).await;
    assert!(proxy.generation() > generation);
}

#[tokio::test]
async fn a_file_written_in_place_with_a_pause_is_read_once_its_writer_closes_it() {
    use std::io::Write;
    let b1 = TlsBackend::start("b1");
    let b2 = TlsBackend::start("b2");
    let both = |b: &TlsBackend| {
        Cfg::new()
            .route("api", &["api.example.test"], &[b.addr()])
            .route("other", &["other.example.test"], &[b.addr()])
            .yaml()
    };
    let proxy = Sniroute::start(both(&b1));
    // The watcher reads the file once when it starts (it may have changed since the startup
    // load): a half-written file read then would be published, so write only after it.
    proxy.wait_log(&["watching config file"], Duration::from_secs(10));
    let generation = proxy.generation();
    let new = both(&b2);
    // The first route alone is a valid file: publishing it would drop `other`.
    let cut = new.find("  - name: \"other\"").expect("second route");
    let mut file = std::fs::File::create(proxy.config_path()).unwrap();
    file.write_all(&new.as_bytes()[..cut]).unwrap();
    file.flush().unwrap();
    // Longer than the watcher's debounce and its longest delay.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        proxy.generation(),
        generation,
        "half a file was published; logs:\n{}",
        proxy.logs().join("\n")
    );
    assert_routes(proxy.proxy_addr(), "other.example.test", "b1").await;
    file.write_all(&new.as_bytes()[cut..]).unwrap();
    let start = Instant::now();
    drop(file);
    lands_on(&proxy, "b2", start).await;
    assert_routes(proxy.proxy_addr(), "other.example.test", "b2").await;
}
