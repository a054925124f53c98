//! Config YAML for the binary, built in code ([`Cfg`]) or written to a temp file.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The config file's name in every directory the harness writes one to.
pub(super) const CONFIG_NAME: &str = "sniroute.yaml";

/// Builds a config YAML: `listen` and `admin` on 127.0.0.1:0 unless set otherwise.
#[derive(Clone)]
pub struct Cfg {
    listen: Vec<String>,
    settings: Vec<(String, String)>,
    routes: Vec<String>,
}

impl Default for Cfg {
    fn default() -> Self {
        Self::new()
    }
}

impl Cfg {
    /// One proxy listener, the admin and the debug listener, all on 127.0.0.1:0.
    pub fn new() -> Self {
        Self {
            listen: vec!["127.0.0.1:0".into()],
            settings: vec![
                ("admin".into(), quote("127.0.0.1:0")),
                ("debug".into(), quote("127.0.0.1:0")),
            ],
            routes: Vec::new(),
        }
    }

    /// `listen:` as this list.
    pub fn listen(mut self, addrs: &[&str]) -> Self {
        self.listen = addrs.iter().map(|a| a.to_string()).collect();
        self
    }

    /// A top-level `key: value` (value written as is).
    pub fn set(mut self, key: &str, value: &str) -> Self {
        self.settings.retain(|(k, _)| k != key);
        self.settings.push((key.into(), value.into()));
        self
    }

    /// A route with a name.
    pub fn route(self, name: &str, hostnames: &[&str], backends: &[SocketAddr]) -> Self {
        let backends: Vec<String> = backends.iter().map(|b| b.to_string()).collect();
        self.route_raw(Some(name), hostnames, &backends)
    }

    /// A route with any (possibly invalid) hostnames and backends, the name optional.
    pub fn route_raw(
        mut self,
        name: Option<&str>,
        hostnames: &[&str],
        backends: &[String],
    ) -> Self {
        let mut r = String::new();
        let mut lead = "  - ";
        if let Some(name) = name {
            let _ = writeln!(r, "{lead}name: {}", quote(name));
            lead = "    ";
        }
        let _ = writeln!(r, "{lead}hostnames: {}", list(hostnames.iter().copied()));
        let _ = writeln!(
            r,
            "    backends: {}",
            list(backends.iter().map(String::as_str))
        );
        self.routes.push(r);
        self
    }

    /// A `key: value` (value written as is) on the route added last, e.g.
    /// `.route_key("max_connections", "1")`.
    pub fn route_key(mut self, key: &str, value: &str) -> Self {
        let route = self
            .routes
            .last_mut()
            .expect("route_key needs a route first");
        let _ = writeln!(route, "    {key}: {value}");
        self
    }

    /// The YAML text.
    pub fn yaml(&self) -> String {
        let mut y = String::new();
        if self.listen.len() == 1 {
            let _ = writeln!(y, "listen: {}", quote(&self.listen[0]));
        } else {
            let _ = writeln!(
                y,
                "listen: {}",
                list(self.listen.iter().map(String::as_str))
            );
        }
        for (k, v) in &self.settings {
            let _ = writeln!(y, "{k}: {v}");
        }
        y.push_str("routes:\n");
        for r in &self.routes {
            y.push_str(r);
        }
        y
    }
}

/// The config most tests start from: route `api` for `api.example.test` to `backend`.
pub fn one_route(backend: SocketAddr) -> Cfg {
    Cfg::new().route("api", &["api.example.test"], &[backend])
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
pub fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let items: Vec<String> = items.map(quote).collect();
    format!("[{}]", items.join(", "))
}

/// A config file in a fresh temp dir: (dir guard, path).
pub fn config_file(yaml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(CONFIG_NAME);
    std::fs::write(&path, yaml).unwrap();
    (dir, path)
}
