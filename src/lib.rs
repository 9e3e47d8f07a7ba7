//! sipedge: a thread-per-core SIP edge proxy and load balancer.
//!
//! The protocol layers (`sip`, `proxy`, `balance`, `sigcomp`, `shard`, `config`, `metrics`) are
//! sans-IO: they take bytes and time as arguments and write into caller-owned buffers. Only
//! [`runtime`] touches sockets, threads and clocks; nothing below it imports it.

pub mod balance;
pub mod config;
pub mod metrics;
pub mod proxy;
pub mod runtime;
pub mod shard;
pub mod sigcomp;
pub mod sip;
