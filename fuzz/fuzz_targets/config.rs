//! Arbitrary bytes into the YAML config loader (`control::Config::parse`).
//!
//! Never a panic: a bad file is an error listing its problems. A file that validates builds its
//! table (validation refuses everything the table would), merges without conflicts (validation
//! refuses duplicates), and has no zero duration where zero is refused.
#![no_main]

use control::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;

/// Inputs past this are mostly repetition; the YAML parser's cost grows with them.
const MAX_INPUT: usize = 16 * 1024;

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_INPUT {
        return;
    }
    // Bytes that are not UTF-8 are refused before parsing (`Config::load`); lossy decoding
    // still gets the rest of such inputs into the parser.
    let text = String::from_utf8_lossy(data);
    match Config::parse(&text, "fuzz.yaml") {
        Ok(config) => valid(&config),
        Err(error) => {
            match &error {
                ConfigError::Invalid { file, problems } => {
                    assert_eq!(file, "fuzz.yaml");
                    assert!(!problems.is_empty(), "an Invalid error without problems");
                }
                other => panic!("parse gave a non-validation error: {other}"),
            }
            // Printing the error (what `sniroute check` does) must not panic either.
            let shown = error.to_string();
            assert!(shown.contains("fuzz.yaml"), "{shown}");
        }
    }
});

fn valid(config: &Config) {
    assert!(!config.listen.is_empty(), "valid without a listen address");
    let table = config
        .table()
        .unwrap_or_else(|e| panic!("validated config does not build its table: {e}"));
    assert_eq!(table.routes().len(), config.routes.len());
    let specs = config.route_specs();
    let (merged, conflicts) = control::publish::merge([specs.as_slice()]);
    assert!(
        conflicts.is_empty(),
        "validated routes conflict: {conflicts:?}"
    );
    let merged = merged.expect("merged routes");
    proxy::Table::new(merged).expect("merged routes make a table");

    // "Zero is refused" for every duration but shutdown_delay. (Huge ones validate, up to
    // humantime's u64 seconds: the data plane saturates them instead of adding to a clock.)
    let mut durations = vec![
        ("client_hello_timeout", config.proxy.client_hello_timeout),
        ("connect_timeout", config.proxy.connect_timeout),
        ("idle_timeout", config.proxy.idle_timeout),
        ("drain_timeout", config.drain_timeout),
        (
            "base_ejection_time",
            config.proxy.outlier_detection.base_ejection,
        ),
        (
            "max_ejection_time",
            config.proxy.outlier_detection.max_ejection,
        ),
    ];
    if let Some(kube) = &config.kubernetes {
        durations.push(("kubernetes.debounce", kube.debounce));
    }
    if let Some(grace) = config.proxy.revoke_grace {
        durations.push(("revoke_grace", grace));
    }
    for (key, d) in durations {
        assert!(!d.is_zero(), "{key}: zero validated");
    }
    assert!(
        config.proxy.outlier_detection.base_ejection <= config.proxy.outlier_detection.max_ejection,
        "{:?}",
        config.proxy.outlier_detection
    );
}
