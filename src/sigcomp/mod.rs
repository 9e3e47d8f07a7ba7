//! SigComp: signaling compression for SIP (RFC 3320, 3321, 3485, 3486, 4077, 4896, 5049).
//!
//! - [`udvm`]: the Universal Decompressor Virtual Machine (RFC 3320 §8-9 with the
//!   RFC 4896 corrections), exact to the cycle; checked against every RFC 4465 torture test.
//! - [`message`]: the SigComp header (RFC 3320 §7); [`nack`]: RFC 4077 failure reasons
//!   and NACK messages.
//! - [`compartment`]: the state handler (RFC 3320 §6): stored states, compartments,
//!   retention priorities, state memory limits, idle expiry, a global memory bound.
//! - [`dictionary`]: the RFC 3485 SIP/SDP static dictionary, a locally available state.
//! - [`framing`]: RFC 3320 §4.2.2 record marking for stream transports (RFC 5049).

#![forbid(unsafe_code)]

pub mod compartment;
pub mod compressor;
pub mod dictionary;
pub mod endpoint;
pub mod framing;
pub mod message;
pub mod nack;
pub mod state;
pub mod udvm;

pub use compartment::{ApplyReport, StateStore, StoreLimits};
pub use endpoint::{CompressError, Received, SigcompConfig, SigcompEndpoint, Unconfirmed};
pub use nack::{DecompressionFailure, NackReason};
pub use state::{StateItem, StateLookup, StateRequest};
pub use udvm::{Decompressed, DecompressorParams, Transport, Udvm};
