//! sniroute's data plane: accept, read the ClientHello, route by SNI, forward bytes.
//!
//! This crate never learns where routes come from: sources publish a [`table::Table`] into a
//! [`table::SharedTable`] and connections read it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod error;
pub mod name;
pub mod table;

pub use error::{ListenError, NameError, TableError};
pub use name::{HostPattern, ServerName};
pub use table::{Backend, Route, SharedTable, Snapshot, Table};
