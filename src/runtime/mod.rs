//! (module under construction)
//!
//! [`dns`]: RFC 3263 resolution of backend names on its own thread.

pub mod dns;
