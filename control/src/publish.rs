//! The one publish step: every source hands its complete table here, never to the `ArcSwap`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use proxy::{Route, SharedTable, Table};

/// Swaps complete tables into the shared table, one at a time, and logs what each changed.
#[derive(Debug)]
pub struct Publisher {
    shared: Arc<SharedTable>,
    /// Held from reading the previous table to storing the next, so two publishers never
    /// diff against the same previous table or reuse a generation.
    order: Mutex<()>,
}

/// What one publish did, as logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The generation of the table now in use.
    pub generation: u64,
    /// Routes in the new table.
    pub routes: usize,
    /// Route names in the new table and not the previous one.
    pub added: usize,
    /// Route names in the previous table and not the new one.
    pub removed: usize,
    /// Route names in both whose hostnames or backends differ.
    pub changed: usize,
}

// === impl Publisher ===

impl Publisher {
    /// A publisher into `shared`, which connections read.
    pub fn new(shared: Arc<SharedTable>) -> Self {
        Self {
            shared,
            order: Mutex::new(()),
        }
    }

    /// The table connections read.
    pub fn shared(&self) -> &Arc<SharedTable> {
        &self.shared
    }

    /// Makes `table` the one connections route by; `source` says who built it (e.g. `file`).
    pub fn publish(&self, table: Table, source: &str) -> Published {
        // The guard orders publishes and protects no data, so a poisoned lock is still usable.
        let _order = self
            .order
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let previous = self.shared.load();
        let (added, removed, changed) = diff(&previous.table, &table);
        let routes = table.routes().len();
        let generation = self.shared.publish(table).generation;
        tracing::info!(
            generation,
            routes,
            added,
            removed,
            changed,
            source,
            "table published"
        );
        Published {
            generation,
            routes,
            added,
            removed,
            changed,
        }
    }
}

/// Counts route names added, removed, and kept with different hostnames or backends.
fn diff(old: &Table, new: &Table) -> (usize, usize, usize) {
    let old: HashMap<&str, &Route> = old.routes().iter().map(|r| (r.name(), &**r)).collect();
    let (mut added, mut changed) = (0, 0);
    for route in new.routes() {
        match old.get(route.name()) {
            None => added += 1,
            Some(before) if !same_targets(before, route) => changed += 1,
            Some(_) => {}
        }
    }
    let kept = new.routes().len() - added;
    (added, old.len() - kept, changed)
}

/// Whether two routes answer the same hostnames and forward to the same backends, ignoring
/// the order they were written in.
fn same_targets(a: &Route, b: &Route) -> bool {
    fn sorted<T: ToString>(items: &[T]) -> Vec<String> {
        let mut v: Vec<String> = items.iter().map(T::to_string).collect();
        v.sort_unstable();
        v
    }
    sorted(a.hostnames()) == sorted(b.hostnames()) && sorted(a.backends()) == sorted(b.backends())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io;

    use proxy::{Backend, HostPattern};

    use super::*;

    fn route(name: &str, hosts: &[&str], backends: &[&str]) -> Route {
        Route::new(
            name,
            hosts
                .iter()
                .map(|h| HostPattern::parse(h).unwrap())
                .collect(),
            backends
                .iter()
                .map(|b| Backend::parse(b).unwrap())
                .collect(),
            "test",
        )
        .unwrap()
    }

    /// Captures this thread's log lines, for asserting on them.
    #[derive(Clone, Default)]
    pub(crate) struct Logs(Arc<Mutex<Vec<u8>>>);

    impl Logs {
        /// Sends this thread's events here until the guard drops.
        pub(crate) fn capture(&self) -> tracing::subscriber::DefaultGuard {
            let logs = self.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_ansi(false)
                .without_time()
                .with_max_level(tracing::Level::DEBUG)
                .with_writer(move || logs.clone())
                .finish();
            tracing::subscriber::set_default(subscriber)
        }

        pub(crate) fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    impl io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn counts_added_removed_changed_and_logs_one_line() {
        let logs = Logs::default();
        let _guard = logs.capture();
        let publisher = Publisher::new(Arc::default());
        let first = publisher.publish(
            Table::new(vec![
                route("a", &["a.test"], &["10.0.0.1:1"]),
                route("b", &["b.test", "*.b.test"], &["10.0.0.1:2", "10.0.0.2:2"]),
                route("c", &["c.test"], &["10.0.0.1:3"]),
            ])
            .unwrap(),
            "file",
        );
        assert_eq!(
            first,
            Published {
                generation: 1,
                routes: 3,
                added: 3,
                removed: 0,
                changed: 0
            }
        );

        let second = publisher.publish(
            Table::new(vec![
                // Same targets written in another order: not a change.
                route("b", &["*.b.test", "b.test"], &["10.0.0.2:2", "10.0.0.1:2"]),
                route("c", &["c.test"], &["10.0.0.9:3"]),
                route("d", &["d.test"], &["10.0.0.1:4"]),
                route("e", &["e.test"], &["10.0.0.1:5"]),
            ])
            .unwrap(),
            "file",
        );
        assert_eq!(
            second,
            Published {
                generation: 2,
                routes: 4,
                added: 2,
                removed: 1,
                changed: 1
            }
        );
        assert_eq!(publisher.shared().load().generation, 2);

        let logs = logs.text();
        let lines: Vec<&str> = logs.lines().collect();
        assert_eq!(
            lines,
            [
                " INFO control::publish: table published generation=1 routes=3 \
                 added=3 removed=0 changed=0 source=\"file\"",
                " INFO control::publish: table published generation=2 routes=4 \
                 added=2 removed=1 changed=1 source=\"file\"",
            ]
        );
    }

    #[test]
    fn hostname_change_is_a_change() {
        let publisher = Publisher::new(Arc::default());
        publisher.publish(
            Table::new(vec![route("a", &["a.test"], &["10.0.0.1:1"])]).unwrap(),
            "t",
        );
        let p = publisher.publish(
            Table::new(vec![route("a", &["a.test", "a2.test"], &["10.0.0.1:1"])]).unwrap(),
            "t",
        );
        assert_eq!((p.added, p.removed, p.changed), (0, 0, 1));
        let p = publisher.publish(Table::default(), "t");
        assert_eq!((p.routes, p.added, p.removed, p.changed), (0, 0, 1, 0));
    }
}
