//! sniroute's data plane: accept, read the ClientHello, route by SNI, forward bytes.
//!
//! This crate never learns where routes come from: sources publish a [`table::Table`] into a
//! [`table::SharedTable`] and connections read it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

pub mod client_hello;
pub mod connect;
pub mod connection;
pub mod error;
pub mod forward;
pub mod listener;
pub mod name;
#[cfg(target_os = "linux")]
mod splice;
pub mod table;

pub use connection::Outcome;
pub use error::{ConnectError, ListenError, NameError, TableError};
pub use name::{HostPattern, ServerName};
pub use table::{Backend, Route, SharedTable, Snapshot, Table};

/// The data plane's knobs, fixed for the life of a listener.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a client has to send a complete ClientHello.
    pub client_hello_timeout: Duration,
    /// How long each backend address has to accept a connection.
    pub connect_timeout: Duration,
    /// How long a forwarded pair may go without a byte either way before it is closed.
    pub idle_timeout: Duration,
    /// The largest ClientHello (all its records, in bytes) that is read before refusing.
    pub max_client_hello: usize,
}

/// Everything a connection task needs: the knobs and the current routing table.
#[derive(Debug)]
pub struct Proxy {
    settings: Settings,
    table: Arc<SharedTable>,
}

impl Proxy {
    /// A proxy routing by whatever table is published into `table`.
    pub fn new(settings: Settings, table: Arc<SharedTable>) -> Self {
        Self { settings, table }
    }
}
