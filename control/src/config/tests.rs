//! The config file's schema, defaults and every problem validation reports.

use super::*;
use proxy::{OutlierPolicy, ServerName};

const MINIMAL: &str = "listen: 0.0.0.0:8443\n";

fn problems(text: &str) -> Vec<String> {
    match Config::parse(text, "test.yaml") {
        Ok(config) => panic!("expected problems, got {config:?}"),
        Err(ConfigError::Invalid { file, problems }) => {
            assert_eq!(file, "test.yaml");
            problems.iter().map(|p| p.to_string()).collect()
        }
        Err(other) => panic!("expected Invalid, got {other}"),
    }
}

fn one_problem(text: &str) -> String {
    let mut all = problems(text);
    assert_eq!(all.len(), 1, "{all:#?}");
    all.remove(0)
}

#[test]
fn defaults() {
    let config = Config::parse(MINIMAL, "test.yaml").unwrap();
    assert_eq!(config.listen, ["0.0.0.0:8443".parse().unwrap()]);
    assert_eq!(config.admin, "127.0.0.1:9090".parse().unwrap());
    assert_eq!(config.debug, Some("127.0.0.1:9091".parse().unwrap()));
    assert_eq!(config.proxy.client_hello_timeout, Duration::from_secs(5));
    assert_eq!(config.proxy.connect_timeout, Duration::from_secs(10));
    assert_eq!(config.proxy.idle_timeout, Duration::from_secs(3600));
    assert_eq!(config.proxy.max_client_hello, 16384);
    assert!(config.routes.is_empty());
    assert_eq!(config.origin(), "test.yaml");
    assert!(config.table().unwrap().routes().is_empty());
}

#[test]
fn every_key_set() {
    let config = Config::parse(
        "listen: [\"0.0.0.0:8443\", \"[::]:8443\"]\n\
         admin: \"[::1]:9999\"\n\
         client_hello_timeout: 250ms\n\
         connect_timeout: 1m\n\
         idle_timeout: 1h30m\n\
         max_client_hello: 512\n\
         routes:\n\
         - name: a\n  hostnames: [API.a.test., \"*.apps.a.test\"]\n  backends: [\"10.0.0.1:6443\", kas.ns.svc:6443]\n\
         - hostnames: [b.test]\n  backends: [\"[::1]:6443\"]\n",
        "test.yaml",
    )
    .unwrap();
    assert_eq!(config.listen.len(), 2);
    assert_eq!(config.admin, "[::1]:9999".parse().unwrap());
    assert_eq!(
        config.proxy.client_hello_timeout,
        Duration::from_millis(250)
    );
    assert_eq!(config.proxy.connect_timeout, Duration::from_secs(60));
    assert_eq!(config.proxy.idle_timeout, Duration::from_secs(5400));
    assert_eq!(config.proxy.max_client_hello, 512);
    assert_eq!(&*config.routes[0].name, "a");
    assert_eq!(config.routes[0].hostnames[0].to_string(), "api.a.test");
    assert_eq!(config.routes[0].backends[1].to_string(), "kas.ns.svc:6443");
    assert_eq!(
        &*config.routes[1].name, "b.test",
        "defaults to the first hostname"
    );

    let table = config.table().unwrap();
    let lookup = |n: &str| {
        table
            .lookup(&ServerName::parse(n.as_bytes()).unwrap())
            .map(|r| (r.name().to_owned(), r.source().to_owned()))
    };
    assert_eq!(lookup("api.a.test"), Some(("a".into(), "file".into())));
    assert_eq!(lookup("x.apps.a.test"), Some(("a".into(), "file".into())));
    assert_eq!(lookup("b.test"), Some(("b.test".into(), "file".into())));
    assert_eq!(lookup("c.test"), None);
}

#[test]
fn routes_may_be_empty_or_null() {
    for text in ["routes: []\n", "routes:\n", "routes: ~\n"] {
        let config = Config::parse(&format!("{MINIMAL}{text}"), "t").unwrap();
        assert!(config.routes.is_empty(), "{text}");
    }
}

#[test]
fn listen_is_required_and_must_be_addresses() {
    assert_eq!(
        one_problem("routes: []\n"),
        "`listen` is required: the address(es) to accept TLS on, e.g. 0.0.0.0:8443"
    );
    assert_eq!(
        one_problem("listen: []\n"),
        "1:9: listen: give at least one address, e.g. 0.0.0.0:8443"
    );
    assert_eq!(
        one_problem("listen: localhost:8443\n"),
        "1:9: listen: \"localhost:8443\" is not an IP address and port \
         (e.g. 0.0.0.0:8443 or [::]:8443)"
    );
    assert_eq!(
        problems("listen:\n  - 0.0.0.0:1\n  - nope\n  - 0.0.0.0:1\n"),
        [
            "3:5: listen: \"nope\" is not an IP address and port \
             (e.g. 0.0.0.0:8443 or [::]:8443)",
            "4:5: listen: 0.0.0.0:1 is listed twice",
        ]
    );
    assert_eq!(
        one_problem("listen: 0.0.0.0:1\nadmin: 9090\n"),
        "2:8: admin: \"9090\" is not an IP address and port (e.g. 0.0.0.0:8443 or [::]:8443)"
    );
}

#[test]
fn durations_must_parse_and_be_positive() {
    assert_eq!(
        problems(&format!(
            "{MINIMAL}client_hello_timeout: 0s\nconnect_timeout: 10\nidle_timeout: soon\n"
        )),
        [
            "2:23: client_hello_timeout: must be more than zero",
            "3:18: connect_timeout: \"10\" is not a duration (time unit needed, \
             for example 10sec or 10ms); write e.g. 250ms, 5s, 1h30m",
            "4:15: idle_timeout: \"soon\" is not a duration (expected number at 0); \
             write e.g. 250ms, 5s, 1h30m",
        ]
    );
}

#[test]
fn max_client_hello_is_bounded() {
    assert_eq!(
        one_problem(&format!("{MINIMAL}max_client_hello: 511\n")),
        "2:19: max_client_hello: 511 bytes is below the minimum of 512"
    );
    assert_eq!(
        one_problem(&format!("{MINIMAL}max_client_hello: 1048577\n")),
        "2:19: max_client_hello: 1048577 bytes is above the maximum of 1048576 (1 MiB)"
    );
    assert_eq!(
        one_problem(&format!("{MINIMAL}max_client_hello: 16KiB\n")),
        "2:19: max_client_hello: \"16KiB\" is not a whole number of bytes"
    );
    let max = Config::parse(&format!("{MINIMAL}max_client_hello: 1048576\n"), "t");
    assert_eq!(max.unwrap().proxy.max_client_hello, 1 << 20);
}

#[test]
fn a_breached_parser_budget_names_the_limit() {
    use serde_saphyr::budget::BudgetBreach;
    assert!(budget_message(&BudgetBreach::Nodes { nodes: 4_000_001 })
        .starts_with("the file has more than 4000000 YAML nodes"));
    assert!(budget_message(&BudgetBreach::Events { events: 6_000_001 })
        .starts_with("the file has more than 6000000 YAML parser events"));
}

#[test]
fn port_zero_may_be_listed_twice() {
    let config = Config::parse("listen: [127.0.0.1:0, 127.0.0.1:0]\n", "t").unwrap();
    assert_eq!(config.listen.len(), 2);
}

#[test]
fn operations_keys_have_defaults_and_take_values() {
    let config = Config::parse(MINIMAL, "t").unwrap();
    assert_eq!(config.proxy.max_connections, None);
    assert_eq!(config.listen_backlog, DEFAULT_LISTEN_BACKLOG);
    assert_eq!(config.shutdown_delay, DEFAULT_SHUTDOWN_DELAY);
    assert_eq!(config.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
    assert_eq!(config.log_format, LogFormat::Text);
    assert_eq!(config.log_level, "info");
    assert!(!config.proxy.log_connections);
    assert_eq!(config.proxy.outlier_detection, OutlierPolicy::default());

    let config = Config::parse(
        &format!(
            "{MINIMAL}max_connections: 1000\nlisten_backlog: 128\nshutdown_delay: 0s\n\
             drain_timeout: 2m\nlog_format: json\nlog_level: debug,proxy=trace\n\
             log_connections: true\noutlier_detection:\n  consecutive_failures: 0\n\
             \x20 base_ejection_time: 1s\n  max_ejection_time: 1m\n\
             routes:\n  - hostnames: [a.test]\n    backends: [\"127.0.0.1:1\"]\n\
             \x20   max_connections: 5\n    allowed_cidrs: [10.0.0.0/8, \"2001:db8::/32\", 192.0.2.7]\n"
        ),
        "t",
    )
    .unwrap();
    assert_eq!(config.proxy.max_connections, Some(1000));
    assert_eq!(config.listen_backlog, 128);
    assert_eq!(config.shutdown_delay, Duration::ZERO);
    assert_eq!(config.drain_timeout, Duration::from_secs(120));
    assert_eq!(config.log_format, LogFormat::Json);
    assert_eq!(config.log_level, "debug,proxy=trace");
    assert!(config.proxy.log_connections);
    assert_eq!(config.proxy.outlier_detection.consecutive_failures, 0);
    assert_eq!(
        config.proxy.outlier_detection.max_ejection,
        Duration::from_secs(60)
    );
    let route = &config.routes[0];
    assert_eq!(route.max_connections, Some(5));
    let cidrs: Vec<String> = route
        .allowed_cidrs
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(cidrs, ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32"]);
    let table = config.table().unwrap();
    assert_eq!(table.routes()[0].max_connections(), Some(5));
    assert!(table.routes()[0]
        .allowing("10.1.2.3".parse().unwrap())
        .is_some());
    assert!(table.routes()[0]
        .allowing("11.1.2.3".parse().unwrap())
        .is_none());
}

#[test]
fn operations_keys_report_bad_values() {
    let found = problems(&format!(
        "{MINIMAL}max_connections: 0\nlog_format: xml\nlog_connections: maybe\n\
         outlier_detection:\n  base_ejection_time: 1m\n  max_ejection_time: 1s\n\
         routes:\n  - hostnames: [a.test]\n    backends: [\"127.0.0.1:1\"]\n\
         \x20   max_connections: -1\n    allowed_cidrs: [10.0.0.0/33]\n"
    ));
    let text = found.join("\n");
    for expected in [
        "max_connections: \"0\" is not a whole number of at least 1",
        "log_format: \"xml\" is not `text` or `json`",
        "log_connections: \"maybe\" is not true or false",
        "max_ejection_time is below base_ejection_time",
        "routes[0] (\"a.test\"): max_connections: \"-1\"",
        "allowed_cidrs: \"10.0.0.0/33\" is not an IPv4 or IPv6 network",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn unknown_keys_and_bad_yaml_give_file_line_and_column() {
    assert_eq!(
        one_problem(&format!("{MINIMAL}listne: 0.0.0.0:1\n")),
        "2:1: unknown field `listne`, expected one of listen, admin, debug, client_hello_timeout, \
         connect_timeout, idle_timeout, max_client_hello, routes, kubernetes, \
         cluster_id_listen, revoke_grace, max_connections, listen_backlog, shutdown_delay, \
         drain_timeout, log_format, log_level, log_connections, outlier_detection, \
         accept_proxy_protocol, trusted_proxies, client_limits, client_hello_memory"
    );
    assert_eq!(
        one_problem(&format!(
            "{MINIMAL}routes:\n  - hostnames: [a.test]\n    backend: [\"10.0.0.1:1\"]\n"
        )),
        "4:5: unknown field `backend`, expected one of name, hostnames, backends, max_connections, allowed_cidrs, proxy_protocol"
    );
    assert_eq!(
        one_problem(&format!("{MINIMAL}routes:\n  - hostnames: [a.test\n")),
        "3:16: unclosed bracket '['"
    );
    assert_eq!(
        one_problem(&format!("{MINIMAL}listen: 0.0.0.0:2\n")),
        "2:1: duplicate mapping key: listen, set DuplicateKeyPolicy in Options if acceptable"
    );
    assert_eq!(
        one_problem("# nothing yet\n"),
        "`listen` is required: the address(es) to accept TLS on, e.g. 0.0.0.0:8443"
    );
    assert_eq!(
        one_problem(""),
        "`listen` is required: the address(es) to accept TLS on, e.g. 0.0.0.0:8443"
    );
    let err = Config::from_bytes(b"listen: 0.0.0.0:1\nx: \xff\n", "t").unwrap_err();
    assert_eq!(
        err.to_string(),
        "config file t is invalid (1 problem):\n  t:2: not UTF-8 (invalid byte at offset 21)"
    );
}

#[test]
fn route_problems_name_the_route_and_line() {
    let text = format!(
        "{MINIMAL}routes:\n\
         - name: a\n  hostnames: []\n  backends: []\n\
         - name: b\n  hostnames: [\"bad host\", \"*.ok.test\", \"a.*.test\"]\n  backends: [\"10.0.0.1:6443\", nohost, \"x:0\"]\n\
         - hostnames: [c.test]\n\
         - name: \"\"\n  hostnames: [d.test]\n  backends: [\"10.0.0.1:1\"]\n"
    );
    assert_eq!(
        problems(&text),
        [
            "3:3: routes[0] (\"a\"): no hostnames: give at least one",
            "3:3: routes[0] (\"a\"): no backends: give at least one",
            "7:15: routes[1] (\"b\"): hostname \"bad host\": \
             byte 0x20 is not allowed in a hostname",
            "7:40: routes[1] (\"b\"): hostname \"a.*.test\": \
             byte 0x2a is not allowed in a hostname",
            "8:31: routes[1] (\"b\"): backend \"nohost\": missing :port",
            "8:39: routes[1] (\"b\"): backend \"x:0\": \
             port is not a number from 1 to 65535",
            "9:3: routes[2] (\"c.test\"): no backends: give at least one",
            "10:9: routes[3]: name is empty",
        ]
    );
}

#[test]
fn duplicates_name_both_routes() {
    let text = format!(
        "{MINIMAL}routes:\n\
         - name: a\n  hostnames: [x.test, \"*.w.test\"]\n  backends: [\"10.0.0.1:1\"]\n\
         - name: b\n  hostnames: [X.Test., y.test, y.test]\n  backends: [\"10.0.0.1:2\"]\n\
         - name: a\n  hostnames: [\"*.W.test\"]\n  backends: [\"10.0.0.1:3\"]\n\
         - hostnames: [b, z.test]\n  backends: [\"10.0.0.1:4\"]\n\
         - hostnames: [b]\n  backends: [\"10.0.0.1:4\"]\n"
    );
    assert_eq!(
        problems(&text),
        [
            "7:15: routes[1] (\"b\"): hostname x.test is also claimed by routes[0] (\"a\")",
            "7:32: routes[1] (\"b\"): hostname y.test is listed twice",
            "9:9: routes[2] (\"a\"): route name is also used by routes[0] (\"a\")",
            "10:15: routes[2] (\"a\"): hostname *.w.test is also claimed by routes[0] (\"a\")",
            "12:3: routes[3] (\"b\"): route name (the default: its first hostname) \
             is also used by routes[1] (\"b\")",
            "14:3: routes[4] (\"b\"): route name (the default: its first hostname) \
             is also used by routes[1] (\"b\")",
            "14:15: routes[4] (\"b\"): hostname b is also claimed by routes[3] (\"b\")",
        ]
    );
}

#[test]
fn error_text_names_file_line_and_route() {
    let err = Config::parse(
        "listen: 0.0.0.0:8443\nroutes:\n  - name: cluster-a\n    hostnames: [api.a.test]\n    backends: [\"10.0.0.1\"]\n",
        "/etc/sniroute/sniroute.yaml",
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "config file /etc/sniroute/sniroute.yaml is invalid (1 problem):\n  \
         /etc/sniroute/sniroute.yaml:5:16: routes[0] (\"cluster-a\"): \
         backend \"10.0.0.1\": missing :port"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = "admin: nope\nidle_timeout: 0s\nroutes:\n  - hostnames: [a.test]\n";
    assert_eq!(
        problems(text),
        [
            "`listen` is required: the address(es) to accept TLS on, e.g. 0.0.0.0:8443",
            "1:8: admin: \"nope\" is not an IP address and port \
             (e.g. 0.0.0.0:8443 or [::]:8443)",
            "2:15: idle_timeout: must be more than zero",
            "4:5: routes[0] (\"a.test\"): no backends: give at least one",
        ]
    );
}

#[test]
fn kubernetes_cluster_id_listen_and_revoke_grace() {
    let config = Config::parse(MINIMAL, "t").unwrap();
    assert_eq!(config.kubernetes, None);
    assert_eq!(config.cluster_id_listen, None);
    assert_eq!(config.proxy.revoke_grace, Some(DEFAULT_REVOKE_GRACE));

    let config = Config::parse(
        &format!(
            "{MINIMAL}kubernetes: {{}}\ncluster_id_listen: \"[::]:6443\"\nrevoke_grace: off\n"
        ),
        "t",
    )
    .unwrap();
    assert_eq!(config.kubernetes, Some(KubernetesConfig::default()));
    assert_eq!(config.kubernetes.unwrap().debounce, DEFAULT_DEBOUNCE);
    assert_eq!(config.cluster_id_listen, Some("[::]:6443".parse().unwrap()));
    assert_eq!(config.proxy.revoke_grace, None);

    let config = Config::parse(
        &format!("{MINIMAL}kubernetes:\n  debounce: 20ms\nrevoke_grace: 2m\n"),
        "t",
    )
    .unwrap();
    assert_eq!(
        config.kubernetes.unwrap().debounce,
        Duration::from_millis(20)
    );
    assert_eq!(config.proxy.revoke_grace, Some(Duration::from_secs(120)));

    let kubernetes = |text: &str| {
        Config::parse(&format!("{MINIMAL}{text}"), "t")
            .unwrap()
            .kubernetes
            .unwrap()
    };
    assert_eq!(
        kubernetes(
            "kubernetes: {}
"
        )
        .backends,
        BackendsMode::Endpoints
    );
    let k = kubernetes(
        "kubernetes: {backends: service, zone: eastus-1}
",
    );
    assert_eq!(k.backends, BackendsMode::Service);
    assert_eq!(k.zone.as_deref(), Some("eastus-1"));
}

#[test]
fn kubernetes_cluster_id_listen_and_revoke_grace_problems() {
    assert_eq!(
        problems(&format!(
            "{MINIMAL}kubernetes:\n  debounce: 11s\ncluster_id_listen: \"0.0.0.0:8443\"\n\
             revoke_grace: 0s\n"
        )),
        [
            "3:13: kubernetes.debounce: 11s is above the maximum of 10s",
            "4:20: cluster_id_listen: 0.0.0.0:8443 is already used by `listen`, `admin` or `debug`",
            "5:15: revoke_grace: must be more than zero",
        ]
    );
    // Port 0 is a fresh port each time, never one `listen` or `admin` already has.
    let text = "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\ncluster_id_listen: 127.0.0.1:0\n";
    let config = Config::parse(text, "test.yaml").expect("port 0 everywhere is valid");
    assert_eq!(
        config.cluster_id_listen,
        Some("127.0.0.1:0".parse().unwrap())
    );
    assert_eq!(
        one_problem(&format!("{MINIMAL}kubernetes: {{kubeconfig: x}}\n")),
        "2:14: unknown field `kubeconfig`, expected one of debounce, backends, zone, hypershift, gateway_api"
    );
    assert_eq!(
        one_problem(&format!(
            "{MINIMAL}kubernetes: {{backends: pods}}
"
        )),
        "2:24: kubernetes.backends: \"pods\" is neither `endpoints` nor `service`"
    );
    assert_eq!(
        one_problem(&format!("{MINIMAL}cluster_id_listen: 6443\n")),
        "2:20: cluster_id_listen: \"6443\" is not an IP address and port \
         (e.g. 0.0.0.0:8443 or [::]:8443)"
    );
    assert_eq!(
        one_problem(&format!("{MINIMAL}revoke_grace: never\n")),
        "2:15: revoke_grace: \"never\" is not a duration (expected number at 0); \
         write e.g. 250ms, 5s, 1h30m"
    );
    let a = Config::parse(MINIMAL, "t").unwrap();
    let b = Config::parse(
        &format!("{MINIMAL}kubernetes: {{}}\nrevoke_grace: off\n"),
        "t",
    )
    .unwrap();
    assert_eq!(
        a.restart_settings_changed(&b),
        ["kubernetes", "revoke_grace"]
    );
}

#[test]
fn route_specs_say_file() {
    let config = Config::parse(
        &format!(
            "{MINIMAL}routes: [{{name: a, hostnames: [a.test], backends: [\"10.0.0.1:1\"]}}]\n"
        ),
        "t",
    )
    .unwrap();
    let specs = config.route_specs();
    assert_eq!(specs.len(), 1);
    assert_eq!((&*specs[0].name, &*specs[0].source), ("a", "file"));
    assert!(specs[0].allowed_cidrs.is_empty() && specs[0].cluster_id.is_none());
}

#[test]
fn load_names_the_file() {
    let err = Config::load("/nonexistent/sniroute.yaml").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cannot read config file /nonexistent/sniroute.yaml: "),
        "{err}"
    );
}

#[test]
fn restart_settings() {
    let a = Config::parse(MINIMAL, "t").unwrap();
    let b = Config::parse(
        "listen: 0.0.0.0:8443\nidle_timeout: 2h\nroutes: [{hostnames: [a.test], backends: [\"10.0.0.1:1\"]}]\n",
        "t",
    )
    .unwrap();
    assert_eq!(a.restart_settings_changed(&b), ["idle_timeout"]);
    assert!(a.restart_settings_changed(&a).is_empty());
}

#[test]
fn the_example_config_parses() {
    let config = Config::parse(
        include_str!("../../../examples/sniroute.yaml"),
        "examples/sniroute.yaml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.listen.len(), 2);
    assert_eq!(config.admin, DEFAULT_ADMIN);
    assert_eq!(
        config.proxy.client_hello_timeout,
        DEFAULT_CLIENT_HELLO_TIMEOUT
    );
    assert_eq!(config.proxy.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    assert_eq!(config.proxy.idle_timeout, DEFAULT_IDLE_TIMEOUT);
    assert_eq!(config.proxy.max_client_hello, DEFAULT_MAX_CLIENT_HELLO);
    assert!(config.routes.len() >= 2);
    assert_eq!(config.proxy.revoke_grace, Some(DEFAULT_REVOKE_GRACE));
    config.table().unwrap();
}

#[test]
fn debug_is_an_address_or_off() {
    let config = Config::parse(&format!("{MINIMAL}debug: off\n"), "t").unwrap();
    assert_eq!(config.debug, None);
    let config = Config::parse(&format!("{MINIMAL}debug: \"[::1]:9999\"\n"), "t").unwrap();
    assert_eq!(config.debug, Some("[::1]:9999".parse().unwrap()));
    assert_eq!(
        one_problem(&format!("{MINIMAL}debug: \"127.0.0.1:9090\"\n")),
        "2:8: debug: 127.0.0.1:9090 is already used by `listen` or `admin`"
    );
    assert_eq!(
        one_problem(&format!("{MINIMAL}debug: nope\n")),
        "2:8: debug: \"nope\" is not an IP address and port (e.g. 0.0.0.0:8443 or [::]:8443)"
    );
    let a = Config::parse(MINIMAL, "t").unwrap();
    let b = Config::parse(&format!("{MINIMAL}debug: off\n"), "t").unwrap();
    assert_eq!(a.restart_settings_changed(&b), ["debug"]);
}

#[test]
fn client_limits_are_off_until_set_then_default_key_by_key() {
    assert_eq!(
        Config::parse(MINIMAL, "test.yaml")
            .unwrap()
            .proxy
            .client_limits,
        None
    );
    let text = format!("{MINIMAL}client_limits:\n  max_connections: 3\n  exempt: [10.0.0.0/8]\n");
    let limits = Config::parse(&text, "test.yaml")
        .unwrap()
        .proxy
        .client_limits
        .unwrap();
    assert_eq!(limits.max_connections, 3);
    assert_eq!(limits.burst, DEFAULT_CLIENT_BURST);
    assert_eq!(limits.ipv6_prefix, 64);
    assert_eq!(
        Some(limits.connection_rate),
        proxy::Rate::parse(DEFAULT_CLIENT_RATE)
    );
    assert_eq!(
        limits.exempt,
        ["10.0.0.0/8".parse::<ipnet::IpNet>().unwrap()]
    );
}

#[test]
fn ipv4_mapped_networks_are_read_as_ipv4_in_every_key() {
    let text = format!(
        "{MINIMAL}accept_proxy_protocol: v2\ntrusted_proxies: [\"::ffff:127.0.0.1/128\"]\n\
         client_limits:\n  exempt: [\"::ffff:127.0.0.6\"]\n\
         routes:\n  - hostnames: [a.test]\n    backends: [\"127.0.0.1:1\"]\n\
         \x20   allowed_cidrs: [\"::ffff:127.0.0.0/104\", \"::/0\"]\n"
    );
    let config = Config::parse(&text, "t").unwrap();
    let net = |s: &str| s.parse::<ipnet::IpNet>().unwrap();
    assert_eq!(config.proxy.trusted_proxies, [net("127.0.0.1/32")]);
    assert_eq!(
        config.proxy.client_limits.unwrap().exempt,
        [net("127.0.0.6/32")]
    );
    assert_eq!(
        config.routes[0].allowed_cidrs,
        [net("127.0.0.0/8"), net("::/0")]
    );
}

#[test]
fn client_limits_report_bad_values() {
    let all = problems(&format!(
        "{MINIMAL}client_limits:\n  connection_rate: fast\n  burst: 0\n  ipv6_prefix: 129\n  \
         exempt: [nonsense]\n  max_conns: 1\n"
    ));
    let text = all.join("\n");
    assert!(text.contains("max_conns"), "{text}");
    let all = problems(&format!(
        "{MINIMAL}client_limits:\n  connection_rate: fast\n  burst: 0\n  ipv6_prefix: 129\n  \
         exempt: [nonsense]\n"
    ));
    let text = all.join("\n");
    for needle in [
        "client_limits.connection_rate: \"fast\"",
        "client_limits.burst",
        "client_limits.ipv6_prefix: 129",
        "client_limits.exempt: \"nonsense\"",
    ] {
        assert!(text.contains(needle), "{needle} not in {text}");
    }
}

#[test]
fn client_hello_memory_is_a_size_with_room_for_one_hello() {
    let memory = |text: &str| {
        Config::parse(text, "t")
            .unwrap_or_else(|e| panic!("{e}"))
            .proxy
            .client_hello_memory
    };
    assert_eq!(memory(MINIMAL), DEFAULT_CLIENT_HELLO_MEMORY);
    assert_eq!(DEFAULT_CLIENT_HELLO_MEMORY, 64 << 20);
    for (written, bytes) in [
        ("512KiB", 512 << 10),
        ("64MiB", 64 << 20),
        ("1GiB", 1 << 30),
        ("20000", 20_000),
        ("16384B", 16384),
        ("\"2 MiB\"", 2 << 20),
    ] {
        assert_eq!(
            memory(&format!("{MINIMAL}client_hello_memory: {written}\n")),
            bytes,
            "{written}"
        );
    }
    for bad in [
        "64MB",
        "lots",
        "-1KiB",
        "0",
        "0MiB",
        "1.5MiB",
        "99999999999999999999GiB",
    ] {
        assert_eq!(
            one_problem(&format!("{MINIMAL}client_hello_memory: {bad}\n")),
            format!(
                "2:22: client_hello_memory: {bad:?} is not a size above zero \
                 (e.g. 65536, 512KiB, 64MiB, 1GiB)"
            ),
        );
    }
    assert_eq!(
        one_problem(&format!(
            "{MINIMAL}max_client_hello: 16384\nclient_hello_memory: 8KiB\n"
        )),
        "3:22: client_hello_memory: 8192 bytes is below max_client_hello (16384): \
         no ClientHello of that size could be read"
    );
    let a = Config::parse(MINIMAL, "t").unwrap();
    let b = Config::parse(&format!("{MINIMAL}client_hello_memory: 1MiB\n"), "t").unwrap();
    assert_eq!(a.restart_settings_changed(&b), ["client_hello_memory"]);
}

#[test]
fn max_connections_default_leaves_room_for_the_process_admin_debug_and_listeners() {
    let parse = |text: &str| Config::parse(text, "t").unwrap();
    let config = parse(MINIMAL);
    // One listener, admin and debug (the default): 64 + 2 x 33 + 1 reserved, 3 a connection.
    assert!(config.debug.is_some() && config.listen.len() == 1);
    assert_eq!(
        config.derived_max_connections(Some(256), 32),
        (256 - 131) / 3
    );
    assert_eq!(
        config.derived_max_connections(Some(1 << 20), 32),
        ((1 << 20) - 131) / 3
    );
    let no_debug = parse(&format!("{MINIMAL}debug: off\n"));
    assert_eq!(
        no_debug.derived_max_connections(Some(256), 32),
        (256 - 98) / 3
    );
    // Below the reserve there is still one; unlimited is unlimited.
    assert_eq!(config.derived_max_connections(Some(50), 32), 1);
    assert_eq!(config.derived_max_connections(None, 32), usize::MAX);
}

#[test]
fn kubernetes_hypershift_and_gateway_api() {
    let kubernetes = |text: &str| {
        Config::parse(&format!("{MINIMAL}{text}"), "t")
            .unwrap()
            .kubernetes
            .unwrap()
    };
    let k = kubernetes("kubernetes: {}\n");
    assert!(k.hypershift);
    assert_eq!(k.gateway_api, None);
    let k = kubernetes(
        "kubernetes:\n  hypershift: false\n  gateway_api:\n    controller_name: sniroute.dev/gateway-controller\n    addresses: [198.18.0.10, ingress.example.com]\n",
    );
    assert!(!k.hypershift);
    assert_eq!(
        k.gateway_api,
        Some(GatewayApiConfig {
            controller_name: "sniroute.dev/gateway-controller".into(),
            addresses: vec!["198.18.0.10".into(), "ingress.example.com".into()],
            listener_ports: None,
            service_type: "LoadBalancer".into(),
        })
    );
    let k = kubernetes(
        "kubernetes:\n  gateway_api:\n    controller_name: a.dev/c\n    listener_ports: 20000-20999\n    service_type: ClusterIP\n",
    );
    let gateway = k.gateway_api.unwrap();
    assert_eq!(gateway.listener_ports, Some(20000..=20999));
    assert_eq!(gateway.service_type, "ClusterIP");
}

#[test]
fn kubernetes_gateway_api_problems() {
    assert_eq!(
        one_problem(&format!("{MINIMAL}kubernetes: {{hypershift: no}}\n")),
        "2:26: kubernetes.hypershift: \"no\" is neither `true` nor `false`"
    );
    assert!(
        one_problem(&format!("{MINIMAL}kubernetes: {{hypershift: false}}\n")).ends_with(
            "kubernetes.hypershift: false with no kubernetes.gateway_api leaves nothing to watch"
        ),
    );
    assert!(
        one_problem(&format!("{MINIMAL}kubernetes: {{gateway_api: {{}}}}\n"))
            .contains("controller_name is required")
    );
    let bad = one_problem(&format!(
        "{MINIMAL}kubernetes: {{gateway_api: {{controller_name: no-slash}}}}\n"
    ));
    assert!(bad.contains("is not a domain followed by a path"), "{bad}");
    assert!(one_problem(&format!(
        "{MINIMAL}kubernetes: {{gateway_api: {{controller_name: a.dev/c, addresses: [\"not an address\"]}}}}\n"
    ))
    .contains("neither an IP address nor a hostname"));
    for range in ["20000", "2-1", "0-5", "1-65536", "a-b"] {
        let bad = one_problem(&format!(
            "{MINIMAL}kubernetes: {{gateway_api: {{controller_name: a.dev/c, listener_ports: {range}}}}}\n"
        ));
        assert!(
            bad.contains("listener_ports") && bad.contains("is not a port range"),
            "{range}: {bad}"
        );
    }
    let both = one_problem(&format!(
        "{MINIMAL}kubernetes: {{gateway_api: {{controller_name: a.dev/c, addresses: [198.18.0.1], listener_ports: 20000-20001}}}}\n"
    ));
    assert!(
        both.contains("addresses: not with listener_ports"),
        "{both}"
    );
    for (listener, key) in [
        ("listen: 0.0.0.0:20500\n", "listen"),
        ("listen: 0.0.0.0:8443\nadmin: 127.0.0.1:20000\n", "admin"),
        ("listen: 0.0.0.0:8443\ndebug: 127.0.0.1:20999\n", "debug"),
        (
            "listen: 0.0.0.0:8443\ncluster_id_listen: 0.0.0.0:20001\n",
            "cluster_id_listen",
        ),
    ] {
        let clash = one_problem(&format!(
            "{listener}kubernetes: {{gateway_api: {{controller_name: a.dev/c, listener_ports: 20000-20999}}}}\n"
        ));
        assert!(
            clash.contains("listener_ports: 20000-20999 holds") && clash.contains(key),
            "{key}: {clash}"
        );
    }
    let kind = one_problem(&format!(
        "{MINIMAL}kubernetes: {{gateway_api: {{controller_name: a.dev/c, service_type: NodePort}}}}\n"
    ));
    assert!(
        kind.contains("neither `LoadBalancer` nor `ClusterIP`"),
        "{kind}"
    );
}
