//! The control plane's errors: every one names the config file, and the route where there is one.

use std::fmt;
use std::io;

use thiserror::Error;

/// Why a config file could not be read, validated, turned into a table or watched.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {file}: {source}")]
    Read {
        /// The file, as given.
        file: String,
        /// What the OS said.
        source: io::Error,
    },
    /// The path names something other than a regular file (a device, a FIFO, a directory).
    #[error("config file {file} is {kind}, not a regular file")]
    NotRegular {
        /// The file, as given.
        file: String,
        /// What it is instead.
        kind: &'static str,
    },
    /// The file is larger than [`crate::config::MAX_CONFIG_BYTES`].
    #[error("config file {file} is larger than the limit of {limit} bytes ({} MiB)", limit / (1024 * 1024))]
    TooLarge {
        /// The file, as given.
        file: String,
        /// The limit, in bytes.
        limit: u64,
    },
    /// The file was read but is not a valid config; every problem found is listed.
    #[error("{}", InvalidDisplay { file, problems })]
    Invalid {
        /// The file, as given.
        file: String,
        /// Each problem, in file order.
        problems: Vec<Problem>,
    },
    /// The validated routes did not make a table (validation should have caught this).
    #[error("config file {file}: {source}")]
    Table {
        /// The file, as given.
        file: String,
        /// What the table refused.
        source: proxy::TableError,
    },
    /// The file's directory could not be watched for changes.
    #[error("cannot watch directory {dir} for changes to config file {file}: {source}")]
    Watch {
        /// The file, as given.
        file: String,
        /// The directory watched.
        dir: String,
        /// What the watcher said.
        source: notify::Error,
    },
    /// The SIGHUP handler could not be installed.
    #[error("cannot listen for SIGHUP to reload config file {file}: {source}")]
    Signal {
        /// The file, as given.
        file: String,
        /// What the OS said.
        source: io::Error,
    },
}

/// One thing wrong in a config file: where it is, which route, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, when known.
    pub line: Option<u64>,
    /// 1-based column, when known.
    pub column: Option<u64>,
    /// The route it is in, if it is in one.
    pub route: Option<RouteRef>,
    /// What is wrong.
    pub message: String,
}

/// A route as a problem names it: its position under `routes:` and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRef {
    /// 0-based position in the `routes` list.
    pub index: usize,
    /// The route's name (given, or defaulted to its first hostname), if it has one.
    pub name: Option<String>,
}

// === impl Problem ===

impl fmt::Display for Problem {
    /// `line:column: routes[i] (name): message`, leaving out what is unknown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(column)) => write!(f, "{line}:{column}: ")?,
            (Some(line), None) => write!(f, "{line}: ")?,
            _ => {}
        }
        if let Some(route) = &self.route {
            write!(f, "{route}: ")?;
        }
        f.write_str(&self.message)
    }
}

// === impl RouteRef ===

impl fmt::Display for RouteRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "routes[{}]", self.index)?;
        if let Some(name) = &self.name {
            write!(f, " ({name:?})")?;
        }
        Ok(())
    }
}

/// `config file F is invalid (N problems):` then one `F:line:column: ...` line per problem, so
/// editors and terminals can jump to each.
struct InvalidDisplay<'a> {
    file: &'a str,
    problems: &'a [Problem],
}

impl fmt::Display for InvalidDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        let plural = if n == 1 { "" } else { "s" };
        write!(
            f,
            "config file {} is invalid ({n} problem{plural}):",
            self.file
        )?;
        for problem in self.problems {
            let sep = if problem.line.is_some() { ":" } else { ": " };
            write!(f, "\n  {}{sep}{problem}", self.file)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_lists_one_problem_per_line_with_file_line_and_route() {
        let err = ConfigError::Invalid {
            file: "/etc/sniroute.yaml".into(),
            problems: vec![
                Problem {
                    line: None,
                    column: None,
                    route: None,
                    message: "`listen` is required".into(),
                },
                Problem {
                    line: Some(7),
                    column: Some(17),
                    route: Some(RouteRef {
                        index: 1,
                        name: Some("cluster-b".into()),
                    }),
                    message: "no backends".into(),
                },
            ],
        };
        assert_eq!(
            err.to_string(),
            "config file /etc/sniroute.yaml is invalid (2 problems):\n  \
             /etc/sniroute.yaml: `listen` is required\n  \
             /etc/sniroute.yaml:7:17: routes[1] (\"cluster-b\"): no backends"
        );
    }
}
