//! End to end: `sniroute explain` and `/explain` say what real connections then get: the
//! route and pattern, the backend the next connection reaches, and the refusal (outcome and
//! rule) for names without a route, clients outside an allow list and routes at their limit.

use std::net::IpAddr;
use std::process::Command;

use crate::common::*;
use serde_json::Value;

/// Runs `sniroute explain` against `proxy` and returns its exit status and answer.
fn explain_cli(proxy: &Sniroute, name: &str, client: &str) -> (i32, Value) {
    let out = Command::new(binary())
        .args(["explain", name, "--client", client, "--debug"])
        .arg(proxy.listener_addr("debug").to_string())
        .output()
        .unwrap();
    let answer = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), answer)
}

/// What a real TLS connection for `name` from `client` gets: the backend's id, or the
/// refusal outcome logged for it.
async fn connect(proxy: &Sniroute, name: &str, client: &str) -> Result<String, String> {
    let mark = proxy.log_mark();
    let source: IpAddr = client.parse().unwrap();
    match tls_connect_with(proxy.proxy_addr(), &ClientOpts::sni(name).bound_to(source)).await {
        Ok(conn) => Ok(conn.backend.clone()),
        Err(_) => {
            let line = proxy.wait_log_since(mark, &["connection refused"], STEP);
            let reason = line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("reason="))
                .unwrap_or_default();
            Err(reason.to_owned())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_agrees_with_what_connections_get() {
    let (one, two, apps, busy) = (
        TlsBackend::start("one"),
        TlsBackend::start("two"),
        TlsBackend::start("apps"),
        TlsBackend::start("busy"),
    );
    let proxy = Sniroute::start(
        Cfg::new()
            .route("api", &["api.a.example.test"], &[one.addr(), two.addr()])
            .route("apps", &["*.b.example.test"], &[apps.addr()])
            .route_key("allowed_cidrs", "[\"127.0.0.2/32\"]")
            .route("busy", &["busy.example.test"], &[busy.addr()])
            .route_key("max_connections", "1")
            .yaml(),
    );

    // The round robin: explain names the backend the next connection reaches, each time.
    for _ in 0..3 {
        let (status, answer) = explain_cli(&proxy, "api.a.example.test", "127.0.0.1");
        assert_eq!(status, 0, "{answer}");
        assert_eq!(answer["route"]["name"], "api");
        assert_eq!(answer["route"]["matched"], "exact");
        assert_eq!(answer["route"]["source"], "file");
        let first = answer["route"]["backends"][0]["backend"].as_str().unwrap();
        let expected = if first == one.addr().to_string() {
            "one"
        } else {
            "two"
        };
        assert_eq!(
            connect(&proxy, "api.a.example.test", "127.0.0.1").await,
            Ok(expected.to_owned()),
            "explain said {first} next"
        );
    }

    // Each case: what explain says, then what a connection gets.
    let cases = [
        (
            "x.b.example.test",
            "127.0.0.2",
            Ok("apps"),
            "allowed_cidrs entry 127.0.0.2/32",
        ),
        (
            "x.b.example.test",
            "127.0.0.1",
            Err("denied"),
            "allowed_cidrs",
        ),
        (
            "nothing.example.test",
            "127.0.0.1",
            Err("unknown_sni"),
            "no route for",
        ),
    ];
    for (name, client, expected, rule) in cases {
        let (status, answer) = explain_cli(&proxy, name, client);
        let verdict = &answer["verdict"];
        match expected {
            Ok(backend) => {
                assert_eq!(
                    (status, verdict["admitted"].as_bool()),
                    (0, Some(true)),
                    "{answer}"
                );
                assert_eq!(answer["route"]["matched"], "*.b.example.test");
                assert!(verdict["rule"].as_str().unwrap().contains(rule), "{answer}");
                assert_eq!(connect(&proxy, name, client).await, Ok(backend.to_owned()));
            }
            Err(outcome) => {
                assert_eq!(
                    (status, verdict["admitted"].as_bool()),
                    (1, Some(false)),
                    "{answer}"
                );
                assert_eq!(verdict["outcome"], outcome, "{answer}");
                assert!(
                    verdict["reason"].as_str().unwrap().contains(rule),
                    "{answer}"
                );
                assert_eq!(connect(&proxy, name, client).await, Err(outcome.to_owned()));
            }
        }
    }

    // A route at its max_connections: explain says limited while one is held, as a second
    // connection finds; and admitted again once it closes.
    let held = tls_connect(proxy.proxy_addr(), "busy.example.test")
        .await
        .unwrap();
    let (_, answer) = explain_cli(&proxy, "busy.example.test", "127.0.0.1");
    assert_eq!(answer["verdict"]["outcome"], "limited", "{answer}");
    assert_eq!(answer["route"]["open_connections"], 1);
    assert_eq!(
        connect(&proxy, "busy.example.test", "127.0.0.1").await,
        Err("limited".to_owned())
    );
    drop(held);
    eventually(STEP, "the held connection closed", || async {
        let (status, _) = explain_cli(&proxy, "busy.example.test", "127.0.0.1");
        (status == 0).then_some(())
    })
    .await;

    // A bad question is a 400, not an answer.
    let debug = proxy.listener_addr("debug");
    let (status, body) = http_get(debug, "/explain?sni=not..a.name").unwrap();
    assert_eq!(status, 400, "{body}");
    // The admin listener, on the pod network, does not answer it.
    let (status, _) = proxy.get("/explain?sni=api.a.example.test").unwrap();
    assert_eq!(status, 404);
}
