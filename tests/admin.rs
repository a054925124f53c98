//! End to end: the admin endpoints, `sniroute check`, and refusing a bad config before binding.

mod common;

use common::*;

#[tokio::test]
async fn health_readiness_and_routes() {
    let b1 = TlsBackend::start("b1");
    let b2 = TlsBackend::start("b2");
    let proxy = Sniroute::start(
        Cfg::new()
            .route("api", &["api.example.test"], &[b1.addr(), b2.addr()])
            .route_raw(None, &["*.example.test"], &[b2.addr().to_string()])
            .yaml(),
    );
    assert_eq!(proxy.get("/healthz").unwrap().0, 200);
    assert_eq!(proxy.get("/readyz").unwrap().0, 200);

    let routes = proxy.routes();
    assert!(
        routes["generation"].as_u64().is_some_and(|g| g >= 1),
        "{routes}"
    );
    assert!(
        routes["loaded_at"].as_str().is_some_and(|s| !s.is_empty()),
        "{routes}"
    );
    let list = routes["routes"].as_array().expect("routes array");
    assert_eq!(list.len(), 2, "{routes}");
    let api = list
        .iter()
        .find(|r| r["name"] == "api")
        .unwrap_or_else(|| panic!("no route named api: {routes}"));
    assert_eq!(api["hostnames"], serde_json::json!(["api.example.test"]));
    assert_eq!(
        api["backends"],
        serde_json::json!([b1.addr().to_string(), b2.addr().to_string()])
    );
    assert_eq!(api["source"], "file");
    let wild = list
        .iter()
        .find(|r| r["hostnames"] == serde_json::json!(["*.example.test"]))
        .unwrap_or_else(|| panic!("no wildcard route: {routes}"));
    assert!(
        wild["name"].as_str().is_some_and(|n| !n.is_empty()),
        "an unnamed route still gets a name: {routes}"
    );
    assert_eq!(wild["backends"], serde_json::json!([b2.addr().to_string()]));
    assert_eq!(wild["source"], "file");

    // The generation is stable while nothing changes.
    let generation = proxy.generation();
    assert_routes(proxy.proxy_addr(), "api.example.test", "b1").await;
    assert_eq!(proxy.generation(), generation);
}

#[test]
fn check_accepts_a_good_file() {
    let (_dir, path) = config_file(
        &Cfg::new()
            .set("client_hello_timeout", "5s")
            .set("connect_timeout", "10s")
            .set("idle_timeout", "1h")
            .set("max_client_hello", "16384")
            .route("api", &["api.example.test"], &[closed_port()])
            .route("wild", &["*.example.test"], &[closed_port()])
            .yaml(),
    );
    let run = run_binary(&["check".as_ref(), "--config".as_ref(), path.as_os_str()]);
    let status = run.exited.expect("check did not exit");
    assert!(status.success(), "check failed on a good file: {run:?}");
}

#[test]
fn check_lists_every_problem_with_the_file_name() {
    let (_dir, path) = config_file(
        &Cfg::new()
            .route("good", &["api.example.test"], &[closed_port()])
            .route_raw(
                Some("bad-backend"),
                &["b.example.test"],
                &["not a backend".to_owned()],
            )
            .route_raw(
                Some("bad-hostname"),
                &["bad name!.example.test"],
                &[closed_port().to_string()],
            )
            .yaml(),
    );
    let run = run_binary(&["check".as_ref(), "--config".as_ref(), path.as_os_str()]);
    let status = run.exited.expect("check did not exit");
    assert!(!status.success(), "check passed a bad file: {run:?}");
    let file_name = path.file_name().unwrap().to_str().unwrap();
    for needle in ["bad-backend", "bad-hostname", file_name] {
        assert!(
            run.stderr.contains(needle),
            "stderr does not mention {needle:?}:\n{}",
            run.stderr
        );
    }
    assert!(
        !run.stderr.contains("route \"good\"") && !run.stderr.contains("route `good`"),
        "the good route was blamed:\n{}",
        run.stderr
    );
}

#[test]
fn bad_config_exits_before_binding() {
    let port = closed_port();
    let yaml = Cfg::new()
        .listen(&[&port.to_string()])
        .route_raw(Some("broken"), &["api.example.test"], &[])
        .route_raw(Some("also-broken"), &["*."], &[closed_port().to_string()])
        .yaml();
    let (_dir, path) = config_file(&yaml);
    let run = run_binary(&["--config".as_ref(), path.as_os_str()]);
    let status = run
        .exited
        .expect("sniroute kept running on a bad config (killed at the deadline)");
    assert!(!status.success(), "exit status {status} on a bad config");
    assert!(
        !run.stderr.contains("listening"),
        "it bound listeners before rejecting the config:\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("broken") && run.stderr.contains("also-broken"),
        "stderr does not name both bad routes:\n{}",
        run.stderr
    );
}

#[test]
fn missing_config_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.yaml");
    let run = run_binary(&["--config".as_ref(), path.as_os_str()]);
    let status = run.exited.expect("still running without a config file");
    assert!(!status.success());
    assert!(run.stderr.contains("absent.yaml"), "{}", run.stderr);
    assert!(!run.stderr.contains("listening"));
}
