//! End to end: IP literals are not hostnames (RFC 6066 section 3), neither in a route nor in
//! a client's SNI.

use crate::common::*;
use tokio::io::AsyncWriteExt;

#[test]
fn a_route_hostname_that_is_an_ip_address_is_a_config_error() {
    for (hostname, shown) in [
        ("10.0.0.1", "\"10.0.0.1\""),
        ("*.0.1", "\"*.0.1\""),
        ("::1", "\"::1\""),
    ] {
        let (_dir, path) = config_file(
            &Cfg::new()
                .route_raw(Some("literal"), &[hostname], &[closed_port().to_string()])
                .yaml(),
        );
        let run = run_binary(&["check".as_ref(), "--config".as_ref(), path.as_os_str()]);
        assert_eq!(
            run.exited.and_then(|s| s.code()),
            Some(78),
            "{hostname}: {run:?}"
        );
        let expected = format!("hostname {shown}: is an IP address, not a hostname");
        assert!(
            run.stderr.contains(&expected) && run.stderr.contains("routes[0] (\"literal\")"),
            "{hostname}: no {expected:?} in:\n{}",
            run.stderr
        );
    }
}

#[tokio::test]
async fn an_ip_address_as_sni_is_refused_as_unknown_sni() {
    let raw = RawBackend::start();
    let proxy = Sniroute::start(
        Cfg::new()
            .route(
                "api",
                &["api.example.test", "*.example.test"],
                &[raw.addr()],
            )
            .yaml(),
    );
    for sni in [&b"192.0.2.1"[..], b"127.1", b"[::1]", b"2001:db8::1"] {
        let mark = proxy.log_mark();
        let mut tcp = raw_connect(proxy.proxy_addr()).await;
        tcp.write_all(&with_sni(&fixture("openssl-3.0.bin"), sni))
            .await
            .unwrap();
        let out = read_until_closed(&mut tcp, STEP).await;
        assert_eq!(
            out.bytes, UNRECOGNIZED_NAME_ALERT,
            "{sni:?}: bytes before close"
        );
        let line = proxy.wait_refusal_since(mark, "unknown_sni", STEP);
        assert!(
            line.contains("is an IP address, not a hostname"),
            "{sni:?}: refused for another reason: {line}"
        );
    }
    assert_eq!(raw.accepted(), 0, "an IP literal reached the backend");
}
