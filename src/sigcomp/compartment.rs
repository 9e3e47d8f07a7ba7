//! The state handler: stored states, compartments and memory limits (RFC 3320 §6).
//!
//! One [`StateStore`] lives on each shard. It keeps every state item once (physically),
//! however many compartments created it, and for each compartment the list of items that
//! compartment created, with their retention priorities and creation order (RFC 3320 §6.2,
//! RFC 4896 §5.2). Locally available states (the RFC 3485 dictionary) are held apart: they
//! belong to no compartment and cost no compartment memory (RFC 4896 §10.3.2).
//!
//! A UDVM run only *requests* state changes; [`StateStore::apply`] performs them once the
//! application has accepted the decompressed message (RFC 3320 §6.2 step 1: no
//! compartment identifier, no state). A failed message therefore never touches state.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::ops::Bound;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::state::{LookupError, StateItem, StateLookup, StateRequest};

/// Limits for the state handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// state_memory_size offered to each compartment (RFC 3320 §3.3.1), in bytes.
    pub state_memory_size: usize,
    /// Upper bound on the memory of all compartments of this store together, counted as
    /// the RFC counts it (state_length + 64 per item).
    pub total_memory: usize,
    /// A compartment unused for this long is closed by [`StateStore::handle_timeout`].
    pub idle_timeout: Duration,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            state_memory_size: 8192,
            total_memory: 64 << 20,
            idle_timeout: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    id: [u8; 20],
    priority: u16,
    /// Creation order inside the compartment (ties in priority free the oldest first).
    created: u64,
    cost: usize,
}

#[derive(Debug)]
struct Compartment {
    entries: Vec<Entry>,
    used: usize,
    state_memory_size: usize,
    last_used: Instant,
}

/// Outcome counts of [`StateStore::apply`] (for metrics and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// State items created (or refreshed) in the compartment.
    pub created: usize,
    /// Creation requests refused (SMS 0, identifier clash, global memory exhausted).
    pub refused: usize,
    /// Items freed on request.
    pub freed: usize,
    /// Items freed to make room.
    pub evicted: usize,
}

/// Stored states and compartments of one shard, keyed by a compartment key `K` chosen by
/// the application (sipedge uses the peer's transport address, see the module docs of
/// [`super`]).
#[derive(Debug)]
pub struct StateStore<K> {
    limits: StoreLimits,
    /// Physical items with the number of compartments that hold them.
    items: BTreeMap<[u8; 20], (Rc<StateItem>, u32)>,
    locals: Vec<Rc<StateItem>>,
    compartments: HashMap<K, Compartment>,
    total_used: usize,
    next_seq: u64,
}

impl<K: Hash + Eq + Clone> StateStore<K> {
    /// An empty store with `limits`.
    pub fn new(limits: StoreLimits) -> Self {
        Self {
            limits,
            items: BTreeMap::new(),
            locals: Vec::new(),
            compartments: HashMap::new(),
            total_used: 0,
            next_seq: 0,
        }
    }

    /// The configured limits.
    pub fn limits(&self) -> &StoreLimits {
        &self.limits
    }

    /// Adds a locally available state item (RFC 3320 §3.3.3), e.g. the RFC 3485 dictionary.
    pub fn add_local(&mut self, item: Rc<StateItem>) {
        if !self.locals.iter().any(|l| l.id == item.id) {
            self.locals.push(item);
        }
    }

    /// Opens `key`'s compartment if needed and marks it used at `now`.
    pub fn touch(&mut self, key: &K, now: Instant) {
        let sms = self.limits.state_memory_size;
        self.compartments
            .entry(key.clone())
            .or_insert_with(|| Compartment {
                entries: Vec::new(),
                used: 0,
                state_memory_size: sms,
                last_used: now,
            })
            .last_used = now;
    }

    /// Sets the state_memory_size of `key`'s compartment (e.g. 0 after an S-bit,
    /// RFC 3320 §9.4.9); items beyond the new size are freed by priority.
    pub fn set_state_memory_size(&mut self, key: &K, now: Instant, sms: usize) {
        self.touch(key, now);
        let mut freed = Vec::new();
        if let Some(c) = self.compartments.get_mut(key) {
            c.state_memory_size = sms;
            while c.used > sms {
                match evict_one(c) {
                    Some(e) => freed.push(e),
                    None => break,
                }
            }
        }
        for e in freed {
            self.release(&e);
        }
    }

    /// Applies the state requests of a confirmed message to `key`'s compartment, in order
    /// (RFC 3320 §6.2 and §9.4.9, RFC 4896 §5-6).
    pub fn apply(&mut self, key: &K, now: Instant, requests: &[StateRequest]) -> ApplyReport {
        self.touch(key, now);
        let mut report = ApplyReport::default();
        for request in requests {
            match request {
                StateRequest::Create { item, priority } => {
                    if self.create(key, now, item, *priority, &mut report) {
                        report.created += 1;
                    } else {
                        report.refused += 1;
                    }
                }
                StateRequest::Free { partial_id } => {
                    if self.free(key, partial_id) {
                        report.freed += 1;
                    }
                }
            }
        }
        report
    }

    fn create(
        &mut self,
        key: &K,
        now: Instant,
        requested: &StateItem,
        priority: u16,
        report: &mut ApplyReport,
    ) -> bool {
        let Some(sms) = self.compartments.get(key).map(|c| c.state_memory_size) else {
            return false;
        };
        // Step 1: a compartment with no state memory stores nothing.
        if sms == 0 {
            return false;
        }
        // Step 2: cut an item larger than the compartment to (SMS - 64) bytes.
        let item = if requested.cost() > sms {
            let keep = sms.saturating_sub(64);
            Rc::new(StateItem::new(
                requested.value[..keep.min(requested.value.len())].to_vec(),
                requested.address,
                requested.instruction,
                requested.minimum_access_length,
            ))
        } else {
            Rc::new(requested.clone())
        };
        // Step 3: an existing identifier must name an identical item.
        if let Some((existing, _)) = self.items.get(&item.id)
            && **existing != *item
        {
            return false;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let Some(c) = self.compartments.get_mut(key) else {
            return false;
        };
        // RFC 4896 §5.2, §6: re-creating an item updates its priority and age, once.
        if let Some(e) = c.entries.iter_mut().find(|e| e.id == item.id) {
            e.priority = priority;
            e.created = seq;
            return true;
        }
        // Steps 4-5: free this compartment's items, lowest priority and oldest first.
        let cost = item.cost();
        let mut freed = Vec::new();
        while c.used + cost > sms {
            match evict_one(c) {
                Some(e) => freed.push(e),
                None => break,
            }
        }
        report.evicted += freed.len();
        for e in &freed {
            self.release(e);
        }
        // Global bound: close idle compartments (least recently used first) to make room.
        while self.total_used + cost > self.limits.total_memory {
            let victim = self
                .compartments
                .iter()
                .filter(|(k, c)| *k != key && !c.entries.is_empty())
                .min_by_key(|(_, c)| c.last_used)
                .map(|(k, _)| k.clone());
            match victim {
                Some(v) => self.close(&v),
                None => return false,
            }
        }
        let Some(c) = self.compartments.get_mut(key) else {
            return false;
        };
        c.entries.push(Entry {
            id: item.id,
            priority,
            created: seq,
            cost,
        });
        c.used += cost;
        c.last_used = now;
        self.total_used += cost;
        self.items
            .entry(item.id)
            .or_insert_with(|| (item.clone(), 0))
            .1 += 1;
        true
    }

    /// RFC 3320 §9.4.9: free the single item of this compartment matching `partial_id`;
    /// no match or several matches: ignored.
    fn free(&mut self, key: &K, partial_id: &[u8]) -> bool {
        let Some(c) = self.compartments.get_mut(key) else {
            return false;
        };
        let mut matches = c
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.id.starts_with(partial_id));
        let (Some((index, _)), None) = (matches.next(), matches.next()) else {
            return false;
        };
        let e = c.entries.remove(index);
        c.used -= e.cost;
        self.release(&e);
        true
    }

    /// Drops one compartment reference to an item (the item goes when no one holds it).
    fn release(&mut self, e: &Entry) {
        self.total_used -= e.cost;
        if let Some(slot) = self.items.get_mut(&e.id) {
            slot.1 -= 1;
            if slot.1 == 0 {
                self.items.remove(&e.id);
            }
        }
    }

    /// Closes `key`'s compartment and reclaims its state (RFC 3320 §6.2, last paragraph).
    pub fn close(&mut self, key: &K) {
        if let Some(c) = self.compartments.remove(key) {
            for e in &c.entries {
                self.release(e);
            }
        }
    }

    /// Closes every compartment idle for longer than the idle timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        let timeout = self.limits.idle_timeout;
        let expired: Vec<K> = self
            .compartments
            .iter()
            .filter(|(_, c)| now.saturating_duration_since(c.last_used) >= timeout)
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            self.close(&k);
        }
    }

    /// When the next compartment expires, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.compartments
            .values()
            .map(|c| c.last_used + self.limits.idle_timeout)
            .min()
    }

    /// Number of state items `key`'s compartment holds.
    pub fn compartment_len(&self, key: &K) -> usize {
        self.compartments.get(key).map_or(0, |c| c.entries.len())
    }

    /// Memory used by `key`'s compartment (RFC 3320 §6.2 accounting).
    pub fn compartment_used(&self, key: &K) -> usize {
        self.compartments.get(key).map_or(0, |c| c.used)
    }

    /// Number of open compartments.
    pub fn compartment_count(&self) -> usize {
        self.compartments.len()
    }

    /// Memory used by all compartments together.
    pub fn total_used(&self) -> usize {
        self.total_used
    }
}

/// Removes the entry to free first: lowest retention priority, then oldest.
fn evict_one(c: &mut Compartment) -> Option<Entry> {
    let index = c
        .entries
        .iter()
        .enumerate()
        .min_by_key(|(_, e)| (e.priority, e.created))
        .map(|(i, _)| i)?;
    let e = c.entries.remove(index);
    c.used -= e.cost;
    Some(e)
}

impl<K> StateLookup for StateStore<K> {
    /// RFC 3320 §7.2: the partial identifier is compared with every stored item (all
    /// compartments of this store) and the locally available ones.
    fn lookup(&self, partial_id: &[u8]) -> Result<Rc<StateItem>, LookupError> {
        let mut low = [0u8; 20];
        let n = partial_id.len().min(20);
        low[..n].copy_from_slice(&partial_id[..n]);
        let mut found: Option<Rc<StateItem>> = None;
        for (id, (item, _)) in self.items.range((Bound::Included(low), Bound::Unbounded)) {
            if !id.starts_with(partial_id) {
                break;
            }
            if found.is_some() {
                return Err(LookupError::NotUnique);
            }
            found = Some(item.clone());
        }
        for item in &self.locals {
            if item.id.starts_with(partial_id) {
                if found.as_ref().is_some_and(|f| f.id != item.id) {
                    return Err(LookupError::NotUnique);
                }
                found = Some(item.clone());
            }
        }
        found.ok_or(LookupError::NotFound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(value: &[u8], priority: u16) -> StateRequest {
        StateRequest::Create {
            item: StateItem::new(value.to_vec(), 0, 0, 6),
            priority,
        }
    }

    #[test]
    fn evicts_by_priority_then_age() {
        let limits = StoreLimits {
            state_memory_size: 300,
            ..StoreLimits::default()
        };
        let mut store = StateStore::new(limits);
        let now = Instant::now();
        store.apply(
            &1u8,
            now,
            &[
                create(&[1; 36], 5),
                create(&[2; 36], 1),
                create(&[3; 36], 5),
            ],
        );
        assert_eq!(store.compartment_len(&1), 3);
        let report = store.apply(&1u8, now, &[create(&[4; 36], 9)]);
        assert_eq!(report.evicted, 1);
        let id2 = StateItem::new(vec![2; 36], 0, 0, 6).id;
        assert_eq!(store.lookup(&id2[..6]).err(), Some(LookupError::NotFound));
        assert_eq!(store.compartment_used(&1), 300);
    }

    #[test]
    fn shared_items_live_until_every_compartment_frees_them() {
        let mut store = StateStore::new(StoreLimits::default());
        let now = Instant::now();
        let req = create(b"shared", 1);
        store.apply(&1u8, now, std::slice::from_ref(&req));
        store.apply(&2u8, now, std::slice::from_ref(&req));
        let StateRequest::Create { item, .. } = &req else {
            unreachable!()
        };
        store.close(&1);
        assert!(store.lookup(&item.id[..6]).is_ok());
        store.apply(
            &2u8,
            now,
            &[StateRequest::Free {
                partial_id: item.id[..6].to_vec(),
            }],
        );
        assert!(store.lookup(&item.id[..6]).is_err());
        assert_eq!(store.total_used(), 0);
    }

    #[test]
    fn idle_compartments_expire_and_global_bound_holds() {
        let limits = StoreLimits {
            state_memory_size: 1000,
            total_memory: 500,
            idle_timeout: Duration::from_secs(10),
        };
        let mut store = StateStore::new(limits);
        let t0 = Instant::now();
        store.apply(&1u8, t0, &[create(&[1; 300], 1)]);
        store.apply(&2u8, t0 + Duration::from_secs(5), &[create(&[2; 300], 1)]);
        // Compartment 1 was closed to stay within 500 bytes in total.
        assert_eq!(store.compartment_len(&1), 0);
        assert!(store.total_used() <= 500);
        assert_eq!(store.poll_timeout(), Some(t0 + Duration::from_secs(15)));
        store.handle_timeout(t0 + Duration::from_secs(16));
        assert_eq!(store.compartment_count(), 0);
        assert_eq!(store.total_used(), 0);
    }
}
