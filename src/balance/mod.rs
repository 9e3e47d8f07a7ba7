//! Load balancing over the backend pool: selection, failure memory and dialog affinity.
//!
//! Everything here is sans-IO: time comes in as an `Instant` argument and nothing touches a
//! socket. The pieces and who calls them:
//!
//! - [`Pool`]: the backends ([`Backend`], built from [`BackendSpec`]s), shared read-only by all
//!   shards behind an `Arc` (swapped whole on reload, [`Pool::reload`] keeps ids and health).
//!   [`Pool::select`] picks the backend of a new call by weighted rendezvous hashing of its
//!   Call-ID within the most preferred priority group that has a usable member;
//!   [`Pool::candidates`] / [`Pool::select_excluding`] give the failover order.
//!   [`Pool::is_backend`] tells the proxy that a request comes from the pool (route it by
//!   Request-URI, do not hash it back in).
//! - [`Blacklist`]: one structure for all shards, lock-free for readers and writers. Transport
//!   errors, 503s and timeouts are [`Blacklist::report`]ed with a [`BlockReason`]; every shard's
//!   next [`Pool::select`] avoids the address until the weighted back-off expires.
//! - [`affinity_token`] / [`verify_affinity`]: an HMAC-keyed token naming the backend that owns
//!   a dialog, for the proxy's Record-Route URI, so in-dialog requests keep their backend even
//!   when the pool changes.
//! - [`Health`]: active OPTIONS probing ([`write_probe`], [`recognise_probe_response`]) and
//!   passive failure signals, marking members up and down in the pool and the blacklist.
//! - [`InviteFailover`]: the per-shard INVITE state that retries a refused or silent call on
//!   the next backend in hash order, and keeps CANCEL/ACK on the backend that has the INVITE.
//! - [`rfc3263`]: how a backend URI is resolved (NAPTR, SRV, A/AAAA) and how the answers become
//!   pool members; `runtime::dns` asks the questions.
//!
//! A shard's use per new request:
//! ```
//! use std::time::Instant;
//! use sipedge::balance::{Blacklist, BlockReason, Pool, BackendSpec};
//!
//! let pool = Pool::new(&[
//!     BackendSpec::from_uri("sip:127.0.0.1:5070").unwrap(),
//!     BackendSpec::from_uri("sip:127.0.0.1:5071").unwrap(),
//! ]).unwrap();
//! let blacklist = Blacklist::default();
//! let now = Instant::now();
//! let first = pool.select(b"a84b4c76e66710@pc33.atlanta.com", now, &blacklist).unwrap();
//! // The send failed: remember it, every shard now skips that address.
//! blacklist.report(first.addr(), BlockReason::IcmpUnreachable, now);
//! let next = pool.select(b"a84b4c76e66710@pc33.atlanta.com", now, &blacklist).unwrap();
//! assert_ne!(first.id(), next.id());
//! ```

mod affinity;
mod backend;
mod blacklist;
mod failover;
mod health;
mod pool;
mod probe;
pub mod rfc3263;

pub use affinity::{AFFINITY_TOKEN_LEN, AffinityKey, affinity_token, verify_affinity};
pub use backend::{
    Backend, BackendId, BackendSpec, BackendUri, SpecError, Transport, default_port,
};
pub use blacklist::{Blacklist, BlacklistConfig, BlacklistEntry, BlacklistView, BlockReason};
pub use failover::{
    AckError, FailoverConfig, FailoverEvent, InviteFailover, InviteRoute, MAX_ATTEMPTS, Origin,
    ResponseAction, TxKey, write_ack,
};
pub use health::{AliveCodes, Health, HealthConfig, HealthEvent, MemberHealth, StatusCodes};
pub use pool::{Candidates, Pool, PoolError};
pub use probe::{
    InsufficientSize, PROBE_CALL_ID_PREFIX, ProbeResponse, ProbeTarget, recognise_probe_response,
    write_probe,
};
pub use rfc3263::BackendEntry;
