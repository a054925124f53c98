//! The Gateway API source: sniroute as a TLS-passthrough Gateway implementation.

pub mod objects;
