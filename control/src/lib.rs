//! sniroute's control plane: where routing tables come from.
//!
//! Sources turn what operators wrote into a complete [`proxy::Table`] and hand it to the one
//! [`Publisher`], which swaps it into the [`proxy::SharedTable`] that connections read and logs
//! what changed. Today there is one source, the YAML file:
//!
//! - [`Config`] is the file's schema; [`Config::load`] reads and validates it, reporting every
//!   problem with file, line and route, and [`Config::table`] builds its routes. The binary
//!   does both before binding anything (`sniroute check` is exactly that).
//! - [`FileSource`] then watches the file and publishes each valid change; a bad change is
//!   logged and the last good table stays.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod error;
pub mod file;
pub mod publish;

pub use config::{Config, RouteConfig};
pub use error::{ConfigError, Problem, RouteRef};
pub use file::FileSource;
pub use publish::{Published, Publisher};
