//! The results table: values per proxy, sniroute's ratios to HAProxy (default and spliced) and
//! to direct, and issue 8's targets, as Markdown and JSON; the ratios to HAProxy and nginx as
//! an SVG chart.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::chart::{self, Better, Row};
use crate::Results;

/// Where it ran.
pub struct Machine {
    pub nproc: usize,
    pub cpu: String,
    pub kernel: String,
    pub haproxy: String,
    pub nginx: String,
}

impl Machine {
    pub fn probe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or("unknown".to_owned(), |(_, m)| m.trim().to_owned());
        let version = |tool: &str| {
            Command::new(tool)
                .arg("-v")
                .output()
                .ok()
                .map(|o| {
                    let text = [o.stdout, o.stderr].concat();
                    String::from_utf8_lossy(&text)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_owned()
                })
                .unwrap_or_else(|| "not installed".to_owned())
        };
        Self {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            haproxy: version("haproxy"),
            nginx: version("nginx"),
        }
    }
}

/// What a target asks of sniroute's value on one metric.
#[derive(Clone, Copy)]
enum Target {
    /// At least this many times HAProxy default's value, and at least `splice` times the
    /// spliced HAProxy's.
    AtLeast { haproxy: f64, splice: f64 },
    /// At most this many times each HAProxy's value.
    AtMost(f64),
    /// At most this absolute value.
    Below(f64),
    /// Shown, no target.
    None,
}

struct Metric {
    key: &'static str,
    label: &'static str,
    unit: &'static str,
    target: Target,
}

const METRICS: &[Metric] = &[
    Metric {
        key: "raw_up_gbps",
        label: "raw stream client->backend",
        unit: "Gbit/s",
        target: Target::AtLeast {
            haproxy: 1.5,
            splice: 1.0,
        },
    },
    Metric {
        key: "raw_down_gbps",
        label: "raw stream backend->client",
        unit: "Gbit/s",
        target: Target::AtLeast {
            haproxy: 1.5,
            splice: 1.0,
        },
    },
    Metric {
        key: "raw_up_cpu_s_per_gb",
        label: "raw stream client->backend, proxy CPU",
        unit: "CPU s/GB",
        target: Target::None,
    },
    Metric {
        key: "raw_down_cpu_s_per_gb",
        label: "raw stream backend->client, proxy CPU",
        unit: "CPU s/GB",
        target: Target::None,
    },
    Metric {
        key: "tls_bulk_mbps",
        label: "bulk TLS download (2 streams)",
        unit: "MB/s",
        target: Target::AtLeast {
            haproxy: 1.0,
            splice: 1.0,
        },
    },
    Metric {
        key: "tls_bulk_cpu_s_per_gb",
        label: "bulk TLS download, proxy CPU",
        unit: "CPU s/GB",
        target: Target::AtMost(0.67),
    },
    Metric {
        key: "cps_c32",
        label: "new TLS connections, 32 clients",
        unit: "conn/s",
        target: Target::None,
    },
    Metric {
        key: "cpu_s_per_10k_c32",
        label: "proxy CPU per 10k connections, 32 clients",
        unit: "CPU s",
        target: Target::AtMost(0.8),
    },
    Metric {
        key: "cps_c256",
        label: "new TLS connections, 256 clients",
        unit: "conn/s",
        target: Target::None,
    },
    Metric {
        key: "cpu_s_per_10k_c256",
        label: "proxy CPU per 10k connections, 256 clients",
        unit: "CPU s",
        target: Target::AtMost(0.8),
    },
    Metric {
        key: "added_p50_ms_c1",
        label: "added connect+handshake p50, 1 client",
        unit: "ms",
        target: Target::None,
    },
    Metric {
        key: "added_p99_ms_c1",
        label: "added connect+handshake p99, 1 client",
        unit: "ms",
        target: Target::None,
    },
    Metric {
        key: "added_p50_ms_c32",
        label: "added connect+handshake p50, 32 clients",
        unit: "ms",
        target: Target::None,
    },
    Metric {
        key: "added_p99_ms_c32",
        label: "added connect+handshake p99, 32 clients",
        unit: "ms",
        target: Target::AtMost(1.0),
    },
    Metric {
        key: "idle_kib_per_conn",
        label: "RSS per idle TLS connection",
        unit: "KiB",
        target: Target::Below(2.0),
    },
    Metric {
        key: "table_change_ms",
        label: "table change to first routed connection",
        unit: "ms",
        target: Target::Below(100.0),
    },
];

const COLUMNS: [&str; 5] = ["direct", "sniroute", "haproxy", "haproxy-splice", "nginx"];
/// sniroute run otherwise: reported against sniroute, below the main table.
const VARIANTS: [&str; 2] = ["sniroute-limits", "sniroute-base"];

pub struct Report {
    quick: bool,
    machine: Machine,
    results: Results,
    elapsed: Duration,
}

impl Report {
    pub fn new(quick: bool, machine: Machine, mut results: Results, elapsed: Duration) -> Self {
        // Latency added versus direct, from the absolute percentiles.
        for (abs, added) in [
            ("hs_p50_ms_c1", "added_p50_ms_c1"),
            ("hs_p99_ms_c1", "added_p99_ms_c1"),
            ("hs_p50_ms_c32", "added_p50_ms_c32"),
            ("hs_p99_ms_c32", "added_p99_ms_c32"),
        ] {
            let Some(values) = results.get(abs).cloned() else {
                continue;
            };
            let Some(&direct) = values.get("direct") else {
                continue;
            };
            let entry = results.entry(added).or_default();
            for (name, value) in values {
                entry.insert(name, value - direct);
            }
        }
        Self {
            quick,
            machine,
            results,
            elapsed,
        }
    }

    fn get(&self, key: &str, name: &str) -> Option<f64> {
        self.results.get(key)?.get(name).copied()
    }

    fn ratio(&self, key: &str, of: &str) -> Option<f64> {
        let base = self.get(key, of)?;
        let value = self.get(key, "sniroute")?;
        (base != 0.0 && key != "table_change_ms" && !key.starts_with("added_"))
            .then(|| value / base)
    }

    /// "met" / "missed" / "" (no target or no data), with what it was measured against.
    fn verdict(&self, metric: &Metric) -> (String, Option<bool>) {
        let s = self.get(metric.key, "sniroute");
        let h = self.get(metric.key, "haproxy");
        let hs = self.get(metric.key, "haproxy-splice");
        let compared = h.is_some() || hs.is_some() || matches!(metric.target, Target::Below(_));
        match (metric.target, s) {
            (Target::None, _) | (_, None) => (String::new(), None),
            _ if !compared => (String::new(), None),
            (Target::AtLeast { haproxy, splice }, Some(s)) => {
                let text = format!("≥{haproxy}× haproxy, ≥{splice}× spliced");
                let ok = h.is_none_or(|h| s >= haproxy * h) && hs.is_none_or(|hs| s >= splice * hs);
                (text, Some(ok))
            }
            (Target::AtMost(f), Some(s)) => {
                let text = format!("≤{f}× haproxy (both)");
                // Latency added can be negative (noise); compare values, not ratios.
                let ok = [h, hs]
                    .into_iter()
                    .flatten()
                    .all(|b| s <= f * b.max(0.0) + 1e-9);
                (text, Some(ok))
            }
            (Target::Below(limit), Some(s)) => {
                (format!("<{limit} {}", metric.unit), Some(s < limit))
            }
        }
    }

    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "sniroute vs HAProxy / nginx on loopback ({} mode, {:.0} s): {} cores, {}, kernel {}; {}; {}\n",
            if self.quick { "quick" } else { "full" },
            self.elapsed.as_secs_f64(),
            m.nproc,
            m.cpu,
            m.kernel,
            m.haproxy,
            m.nginx,
        );
        out += "| metric | unit | direct | sniroute | haproxy | haproxy-splice | nginx | ÷haproxy | ÷haproxy-splice | ÷direct | target | |\n";
        out += "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n";
        for metric in METRICS {
            if !self.results.contains_key(metric.key) {
                continue;
            }
            let mut row = format!("| {} | {} |", metric.label, metric.unit);
            for name in COLUMNS {
                let _ = write!(row, " {} |", fmt(self.get(metric.key, name)));
            }
            for of in ["haproxy", "haproxy-splice", "direct"] {
                match self.ratio(metric.key, of) {
                    Some(r) => {
                        let _ = write!(row, " {r:.2}× |");
                    }
                    None => row += " |",
                }
            }
            let (text, ok) = self.verdict(metric);
            let mark = match ok {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "",
            };
            let _ = writeln!(row, " {text} | {mark} |");
            out += &row;
        }
        out += &self.variants();
        out
    }

    /// sniroute's variants against sniroute, on what they were measured on.
    fn variants(&self) -> String {
        let mut out = String::new();
        for variant in VARIANTS {
            let rows: Vec<String> = METRICS
                .iter()
                .filter_map(|metric| {
                    let v = self.get(metric.key, variant)?;
                    let s = self.get(metric.key, "sniroute");
                    let ratio = s
                        .filter(|&s| s != 0.0 && !metric.key.starts_with("added_"))
                        .map_or(String::new(), |s| format!("{:.3}×", v / s));
                    Some(format!(
                        "| {} | {} | {} | {} | {ratio} |\n",
                        metric.label,
                        metric.unit,
                        fmt(s),
                        fmt(Some(v))
                    ))
                })
                .collect();
            if rows.is_empty() {
                continue;
            }
            let _ = write!(
                out,
                "\n| metric | unit | sniroute | {variant} | ÷sniroute |\n|---|---|---:|---:|---:|\n"
            );
            out.extend(rows);
        }
        out
    }

    /// sniroute's ratios to HAProxy (both) and nginx, one group of bars per metric that has
    /// any, as an SVG.
    pub fn chart(&self) -> String {
        let rows: Vec<Row> = METRICS
            .iter()
            .filter_map(|metric| {
                let ratios: Vec<Option<f64>> = chart::SERIES
                    .iter()
                    .map(|(of, _)| self.ratio(metric.key, of))
                    .collect();
                ratios.iter().any(Option::is_some).then(|| Row {
                    label: metric.label.to_owned(),
                    better: better(metric.unit),
                    ratios,
                })
            })
            .collect();
        let m = &self.machine;
        let title = format!(
            "sniroute vs HAProxy and nginx on loopback ({} run, {} cores, kernel {})",
            if self.quick { "quick" } else { "full" },
            m.nproc,
            m.kernel,
        );
        chart::svg(&title, &rows)
    }

    pub fn json(&self) -> String {
        let mut metrics = serde_json::Map::new();
        for (key, values) in &self.results {
            let mut entry = serde_json::Map::new();
            for (name, value) in values {
                entry.insert((*name).to_owned(), num(*value));
            }
            let meta = METRICS.iter().find(|m| m.key == *key);
            let mut ratios = serde_json::Map::new();
            for of in ["haproxy", "haproxy-splice", "direct"] {
                if let Some(r) = self.ratio(key, of) {
                    ratios.insert(of.to_owned(), num(r));
                }
            }
            let (target, met) = meta.map_or((String::new(), None), |m| self.verdict(m));
            metrics.insert(
                (*key).to_owned(),
                json!({
                    "label": meta.map(|m| m.label),
                    "unit": meta.map(|m| m.unit),
                    "values": entry,
                    "sniroute_ratio_to": ratios,
                    "target": target,
                    "met": met,
                }),
            );
        }
        let m = &self.machine;
        let doc = json!({
            "mode": if self.quick { "quick" } else { "full" },
            "seconds": self.elapsed.as_secs_f64(),
            "machine": {
                "nproc": m.nproc,
                "cpu": m.cpu,
                "kernel": m.kernel,
                "haproxy": m.haproxy,
                "nginx": m.nginx,
            },
            "metrics": metrics,
        });
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    }
}

/// Throughput and rates improve upwards; CPU, memory and time downwards.
fn better(unit: &str) -> Better {
    match unit {
        "Gbit/s" | "MB/s" | "conn/s" => Better::Higher,
        _ => Better::Lower,
    }
}

fn num(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

fn fmt(v: Option<f64>) -> String {
    match v {
        None => String::new(),
        Some(v) if v.is_nan() => "n/a".to_owned(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}
