//! The proxy core as a shard drives it: one [`Core`] per shard, kept in step with pool reloads.

use std::sync::atomic::Ordering;

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

    /// Runs one message through the core (after picking up a reloaded pool, if any).
    pub(crate) fn handle_inbound(
        &mut self,
        shared: &Shared,
        input: Inbound<'_>,
        out: &mut [u8],
    ) -> Verdict {
        let epoch = shared.pool_epoch.load(Ordering::Relaxed);
        if epoch != self.epoch {
            self.epoch = epoch;
            self.core.set_pool(shared.pool.load_full());
        }
        self.core.handle_inbound(input, &shared.blacklist, out)
    }

    /// The summary of the last message handled.
    pub(crate) fn last_message(&self) -> MessageInfo {
        self.core.last_message()
    }

    /// The next event the core has for the shell.
    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        self.core.poll_event()
    }
}
