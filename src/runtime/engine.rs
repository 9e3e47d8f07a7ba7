//! The proxy core as a shard drives it: one [`Core`] per shard, kept in step with pool reloads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::balance::{BackendId, BlockReason, Pool};
use crate::metrics::BackendMetrics;
use crate::proxy::{ConfigError, Core, Event, MessageInfo, ProxyConfig};
pub(crate) use crate::proxy::{Dest, FlowId, Inbound, Transmit, Verdict};
pub(crate) use crate::sip::Transport;

use super::shard::Shared;
use crate::shard::ShardId;

/// One shard's engine: the sans-IO core plus the pool epoch it was last given.
pub(crate) struct Engine {
    core: Core,
    epoch: u64,
    /// The pool and the backend metrics table (in pool order) as of `epoch`: the shard
    /// counts each forwarded request against them without loading either per message.
    pool: Arc<Pool>,
    backend_metrics: Arc<Vec<Arc<BackendMetrics>>>,
}

impl Engine {
    /// Builds shard `shard`'s core.
    pub(crate) fn new(
        config: ProxyConfig,
        shard: ShardId,
        shared: &Shared,
    ) -> Result<Self, ConfigError> {
        let epoch = shared.pool_epoch.load(Ordering::SeqCst);
        // The pool before the metrics table: a reload replaces the table first, so a table
        // loaded after a pool is at least as new as that pool.
        let pool = shared.pool.load_full();
        let backend_metrics = shared.metrics.backends();
        let core = Core::new(config, shard, shared.shards, Arc::clone(&pool))?;
        Ok(Self {
            core,
            epoch,
            pool,
            backend_metrics,
        })
    }

    /// Picks up a reloaded pool, if any.
    fn refresh(&mut self, shared: &Shared) {
        let epoch = shared.pool_epoch.load(Ordering::Relaxed);
        if epoch != self.epoch {
            self.epoch = epoch;
            // As in `new`: the pool first, then the table.
            self.pool = shared.pool.load_full();
            self.backend_metrics = shared.metrics.backends();
            self.core.set_pool(Arc::clone(&self.pool));
        }
    }

    /// The pool as of the last message, timer or transport error handled.
    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The metrics of the pool member `backend`, if it is still a member.
    pub(crate) fn backend_metrics(&self, backend: BackendId) -> Option<&BackendMetrics> {
        let i = self
            .pool
            .backends()
            .iter()
            .position(|b| b.id() == backend)?;
        self.backend_metrics.get(i).map(|m| &**m)
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

    /// The next message the core sends on its own (a retried INVITE or a 503), in `out`;
    /// `now` is the time of whatever the shard just handled (a message, a timer).
    pub(crate) fn poll_transmit(&mut self, now: Instant, out: &mut [u8]) -> Option<Transmit> {
        self.core.poll_transmit(now, out)
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
