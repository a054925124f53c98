//! Hostname normalisation and table lookup.
//!
//! - Arbitrary bytes into `ServerName::parse`, arbitrary strings into `HostPattern::parse` and
//!   `Backend::parse`: no panic, and whatever parses is already normal (parsing its own text
//!   gives it back, whatever the case or a trailing dot).
//! - A table built from arbitrary valid patterns, over a small label alphabet so that names,
//!   exact patterns and wildcards collide often: `Table::new` refuses exactly the tables with a
//!   hostname claimed twice, and `lookup` agrees with a naive linear scan (exact first, then the
//!   longest wildcard suffix) for every query, whichever case or trailing dot the query uses.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use proxy::{Backend, HostPattern, Route, RouteSpec, ServerName, Table};

/// Labels names and patterns are made of: few, so that they collide, with case variants.
const LABELS: &[&str] = &[
    "a", "b", "api", "apps", "x-1", "_srv", "test", "example", "A", "Api", "APPS", "TEST",
];

#[derive(Arbitrary, Debug)]
struct Input {
    /// Fed to the parsers as they are.
    raw: Vec<u8>,
    raw_pattern: String,
    raw_backend: String,
    /// Each route's patterns.
    routes: Vec<Vec<Pattern>>,
    /// Names looked up in the table.
    queries: Vec<Query>,
}

#[derive(Arbitrary, Debug)]
struct Pattern {
    wildcard: bool,
    labels: Vec<u8>,
    trailing_dot: bool,
}

#[derive(Arbitrary, Debug)]
struct Query {
    labels: Vec<u8>,
    /// Bit i upper-cases label i in the second spelling of the query.
    case_flips: u32,
}

/// A dotted name from label indexes (at least one label, at most 6).
fn name(labels: &[u8]) -> String {
    let picked: Vec<&str> = labels
        .iter()
        .take(6)
        .map(|&i| LABELS[usize::from(i) % LABELS.len()])
        .collect();
    if picked.is_empty() {
        LABELS[0].to_owned()
    } else {
        picked.join(".")
    }
}

/// Checks the parsers on arbitrary input.
fn parsers(input: &Input) {
    if let Ok(name) = ServerName::parse(&input.raw) {
        let text = name.as_str();
        assert!(!text.is_empty() && text.len() <= 253, "{name:?}");
        assert!(!text.ends_with('.'), "{name:?}");
        assert_eq!(text, text.to_ascii_lowercase(), "not lowercased");
        assert_eq!(ServerName::parse(text.as_bytes()).as_ref(), Ok(&name));
        let upper_dot = format!("{}.", text.to_ascii_uppercase());
        assert_eq!(ServerName::parse(upper_dot.as_bytes()).as_ref(), Ok(&name));
        // The raw bytes in another case are the same name.
        assert_eq!(
            ServerName::parse(&input.raw.to_ascii_uppercase()).as_ref(),
            Ok(&name)
        );
    }
    if let Ok(pattern) = HostPattern::parse(&input.raw_pattern) {
        let text = pattern.to_string();
        assert_eq!(HostPattern::parse(&text).as_ref(), Ok(&pattern), "{text}");
        assert_eq!(
            HostPattern::parse(&text.to_ascii_uppercase()).as_ref(),
            Ok(&pattern)
        );
    }
    if let Ok(backend) = Backend::parse(&input.raw_backend) {
        // What it prints parses again, to itself from then on (`1.2.3.4:+1` is a name that
        // prints as the address `1.2.3.4:1`, which is fine: both reach the same place).
        let text = backend.to_string();
        let again = Backend::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(again.to_string(), text);
    }
}

/// The reference: a linear scan over every route's patterns.
fn naive<'a>(routes: &'a [(String, Vec<HostPattern>)], query: &ServerName) -> Option<&'a str> {
    let q = query.as_str();
    let exact = routes.iter().find(|(_, patterns)| {
        patterns
            .iter()
            .any(|p| matches!(p, HostPattern::Exact(n) if n.as_str() == q))
    });
    if let Some((route, _)) = exact {
        return Some(route);
    }
    let mut best: Option<(usize, &str)> = None;
    for (route, patterns) in routes {
        for p in patterns {
            if let HostPattern::Wildcard(suffix) = p {
                let s = suffix.as_str();
                let matches = q.len() > s.len() + 1
                    && q.ends_with(s)
                    && q.as_bytes()[q.len() - s.len() - 1] == b'.';
                if matches && best.is_none_or(|(len, _)| s.len() > len) {
                    best = Some((s.len(), route));
                }
            }
        }
    }
    best.map(|(_, route)| route)
}

fn lookups(input: &Input) {
    let mut routes: Vec<(String, Vec<HostPattern>)> = Vec::new();
    for (i, patterns) in input.routes.iter().take(16).enumerate() {
        let patterns: Vec<HostPattern> = patterns
            .iter()
            .take(4)
            .map(|p| {
                let mut text = name(&p.labels);
                if p.wildcard {
                    text = format!("*.{text}");
                }
                if p.trailing_dot {
                    text.push('.');
                }
                HostPattern::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"))
            })
            .collect();
        if !patterns.is_empty() {
            routes.push((format!("r{i}"), patterns));
        }
    }
    let table_routes: Vec<Route> = routes
        .iter()
        .map(|(name, patterns)| {
            Route::new(RouteSpec::new(
                name.as_str(),
                patterns.clone(),
                vec![Backend::parse("127.0.0.1:1").unwrap()],
                "fuzz",
            ))
            .unwrap()
        })
        .collect();
    let mut claimed = std::collections::HashSet::new();
    let duplicate = routes
        .iter()
        .flat_map(|(_, patterns)| patterns)
        .any(|p| !claimed.insert(p.clone()));
    let table = match Table::new(table_routes) {
        Ok(table) => {
            assert!(
                !duplicate,
                "a table with a hostname claimed twice was built"
            );
            table
        }
        Err(error) => {
            assert!(duplicate, "refused a table without duplicates: {error}");
            // Keep each pattern's first claim only, as a valid table would.
            let mut claimed = std::collections::HashSet::new();
            for (_, patterns) in &mut routes {
                patterns.retain(|p| claimed.insert(p.clone()));
            }
            routes.retain(|(_, patterns)| !patterns.is_empty());
            let rebuilt = routes
                .iter()
                .map(|(name, patterns)| {
                    Route::new(RouteSpec::new(
                        name.as_str(),
                        patterns.clone(),
                        vec![Backend::parse("127.0.0.1:1").unwrap()],
                        "fuzz",
                    ))
                    .unwrap()
                })
                .collect();
            Table::new(rebuilt).expect("a table without duplicates")
        }
    };
    assert_eq!(table.routes().len(), routes.len());

    for query in input.queries.iter().take(32) {
        let lower = name(&query.labels).to_ascii_lowercase();
        let spelled: String = lower
            .split('.')
            .enumerate()
            .map(|(i, label)| {
                if query.case_flips & (1 << (i % 32)) != 0 {
                    label.to_ascii_uppercase()
                } else {
                    label.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(".");
        let expected = ServerName::parse(lower.as_bytes()).expect("a valid name");
        let want = naive(&routes, &expected);
        for variant in [
            lower.clone(),
            format!("{lower}."),
            spelled.clone(),
            format!("{spelled}."),
            lower.to_ascii_uppercase(),
        ] {
            let name = ServerName::parse(variant.as_bytes()).expect("a valid name");
            assert_eq!(name, expected, "{variant} normalises differently");
            let got = table.lookup(&name).map(|r| r.name());
            assert_eq!(got, want, "lookup({variant})");
        }
        // Exact beats wildcard, whatever the reference says.
        if let Some((route, _)) = routes.iter().find(|(_, ps)| {
            ps.iter()
                .any(|p| matches!(p, HostPattern::Exact(n) if *n == expected))
        }) {
            assert_eq!(
                table.lookup(&expected).map(|r| r.name()),
                Some(route.as_str())
            );
        }
    }
}

fuzz_target!(|input: Input| {
    parsers(&input);
    lookups(&input);
});
