//! The proxy's `/metrics` as tests read it: one [`Scrape`], samples looked up by name and
//! exact labels.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::{http_get, Sniroute, POLL};

/// One `GET /metrics` answer (OpenMetrics text).
pub struct Scrape(String);

impl Scrape {
    /// Scrapes `proxy` now, asserting a 200.
    pub fn of(proxy: &Sniroute) -> Self {
        let (status, body) = proxy.get("/metrics").expect("GET /metrics");
        assert_eq!(status, 200, "/metrics status; body:\n{body}");
        Self(body)
    }

    /// A scrape already read: the text an in-process proxy's registry encodes.
    pub fn from_text(text: String) -> Self {
        Self(text)
    }

    /// Scrapes the admin listener at `admin` (a pod's port 9090), `Err` unless it answers 200.
    pub fn at(admin: SocketAddr) -> io::Result<Self> {
        match http_get(admin, "/metrics")? {
            (200, body) => Ok(Self(body)),
            (status, body) => Err(io::Error::other(format!("/metrics: {status} {body}"))),
        }
    }

    /// The value of the sample `name` whose labels are exactly `labels` (in any order).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .find_map(|line| {
                let (sample, mut got) = parse_sample(line)?;
                let mut want: Vec<(String, String)> = labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                got.sort();
                want.sort();
                (sample.0 == name && got == want).then_some(sample.1)
            })
    }

    /// Like [`Self::get`], panicking with the whole scrape if the sample is missing.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in /metrics:\n{}", self.0))
    }

    /// `sniroute_connections_total{outcome=...}`, panicking if it is missing.
    pub fn outcome(&self, outcome: &str) -> f64 {
        self.value("sniroute_connections_total", &[("outcome", outcome)])
    }
}

/// `name{k="v",...} value` (or `name value`) into ((name, value), labels).
#[allow(clippy::type_complexity)]
fn parse_sample(line: &str) -> Option<((String, f64), Vec<(String, String)>)> {
    let (name, labels, rest) = match line.find(['{', ' ']) {
        Some(i) if line.as_bytes()[i] == b'{' => {
            let close = line.rfind('}')?;
            (&line[..i], &line[i + 1..close], &line[close + 1..])
        }
        Some(i) => (&line[..i], "", &line[i..]),
        None => return None,
    };
    let value: f64 = rest.split_whitespace().next()?.parse().ok()?;
    let mut parsed = Vec::new();
    let mut s = labels;
    while !s.is_empty() {
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_owned();
        let after = s[eq + 1..].strip_prefix('"')?;
        let end = after.find('"')?;
        parsed.push((key, after[..end].to_owned()));
        s = after[end + 1..].trim_start_matches(',');
    }
    Some(((name.to_owned(), value), parsed))
}

/// Scrapes until `check` accepts the scrape (bounded by `within`); returns that scrape.
pub fn scrape_until(
    proxy: &Sniroute,
    within: Duration,
    what: &str,
    check: impl Fn(&Scrape) -> bool,
) -> Scrape {
    let deadline = Instant::now() + within;
    loop {
        let scrape = Scrape::of(proxy);
        if check(&scrape) {
            return scrape;
        }
        if Instant::now() >= deadline {
            panic!("{what}: not within {within:?}; last scrape:\n{}", scrape.0);
        }
        std::thread::sleep(POLL);
    }
}
