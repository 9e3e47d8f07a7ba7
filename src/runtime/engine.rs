//! The proxy core as a shard drives it: one [`Core`] per shard, kept in step with pool reloads.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::balance::BlockReason;
use crate::proxy::{ConfigError, Core, Event, MessageInfo, ProxyConfig};
pub(crate) use crate::proxy::{Dest, FlowId, Inbound, Transmit, Verdict};
pub(crate) use crate::sip::Transport;

use super::shard::Shared;
use crate::shard::ShardId;

/// One shard's engine: the sans-IO core plus the pool epoch it was last given.
pub(crate) struct Engine {
    core: Core,
    epoch: u64,
}

impl Engine {
    /// Builds shard `shard`'s core.
    pub(crate) fn new(
        config: ProxyConfig,
        shard: ShardId,
        shared: &Shared,
    ) -> Result<Self, ConfigError> {
        let epoch = shared.pool_epoch.load(Ordering::SeqCst);
        let core = Core::new(config, shard, shared.shards, shared.pool.load_full())?;
        Ok(Self { core, epoch })
    }

    /// Picks up a reloaded pool, if any.
    fn refresh(&mut self, shared: &Shared) {
        let epoch = shared.pool_epoch.load(Ordering::Relaxed);
        if epoch != self.epoch {
            self.epoch = epoch;
            self.core.set_pool(shared.pool.load_full());
        }
    }

    /// Runs one message through the core (after picking up a reloaded pool, if any).
    pub(crate) fn handle_inbound(
        &mut self,
        shared: &Shared,
        input: Inbound<'_>,
        out: &mut [u8],
    ) -> Verdict {
        self.refresh(shared);
        self.core.handle_inbound(input, &shared.blacklist, out)
    }

    /// The next instant [`Engine::handle_timeout`] is due (INVITE failover timers).
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.core.poll_timeout()
    }

    /// Runs the core's timers due at `now`; drain [`Engine::poll_transmit`] afterwards.
    pub(crate) fn handle_timeout(&mut self, shared: &Shared, now: Instant) {
        self.refresh(shared);
        self.core.handle_timeout(now, &shared.blacklist);
    }

    /// Sending to `addr` failed: INVITEs waiting on it move on (drain
    /// [`Engine::poll_transmit`] afterwards).
    pub(crate) fn handle_transport_error(
        &mut self,
        shared: &Shared,
        addr: SocketAddr,
        reason: BlockReason,
    ) {
        self.refresh(shared);
        self.core
            .handle_transport_error(Instant::now(), addr, reason, &shared.blacklist);
    }

    /// The next message the core sends on its own (a retried INVITE or a 503), in `out`.
    pub(crate) fn poll_transmit(&mut self, out: &mut [u8]) -> Option<Transmit> {
        self.core.poll_transmit(Instant::now(), out)
    }

    /// The summary of the last message handled (or produced by `poll_transmit`).
    pub(crate) fn last_message(&self) -> MessageInfo {
        self.core.last_message()
    }

    /// The next event the core has for the shell.
    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        self.core.poll_event()
    }
}
