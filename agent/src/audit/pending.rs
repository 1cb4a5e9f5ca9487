//! The queue of violation changes waiting for the control plane (the audit's outbox).
//! Coalescing: one entry per (object, policy) holding its latest state, so a flapping
//! violation costs one entry however long the control plane is away. Entries leave in the order they last changed; an entry
//! is removed only when the control plane acknowledged the very version that was sent.
//!
//! Durable: every entry is also written to a sled tree of the agent's database (keyed by its
//! sequence number, checksummed, with its run), and removed from it when acknowledged. What a
//! stopped agent left there (`Leftovers`) is delivered under its own run before the new run's
//! resync, so a change made just before a restart (a violation resolved at 10:00) arrives
//! with its own time; if a later run superseded it meanwhile, the resync replaces it.

use std::collections::{BTreeMap, HashMap, VecDeque};

use prost::Message;
use tracing::{error, warn};

use portcullis_proto::v1::Violation;

use portcullis_runtime::record;

/// A violation's identity: kind, namespace, name, policy.
type Key = (String, String, String, String);

fn key_of(v: &Violation) -> Key {
    (
        v.kind.clone(),
        v.namespace.clone(),
        v.name.clone(),
        v.policy.clone(),
    )
}

#[derive(Debug)]
pub struct Pending {
    /// This audit run's id (a UUIDv7).
    pub run: String,
    next: u64,
    order: BTreeMap<u64, Key>,
    items: HashMap<Key, (u64, Violation)>,
    /// The next batch starts a resync.
    resync_start: bool,
    /// A resync is under way: the batch that empties the queue ends it.
    resync_open: bool,
    /// Counts resyncs begun, so the answer to an older batch cannot end a newer resync.
    resyncs: u64,
    /// Where entries are kept durably (None in tests of the queue alone).
    store: Option<sled::Tree>,
    /// Entries held at most outside a resync; past it the queue asks to be replaced by one.
    max: usize,
    overflowed: bool,
}

/// Entries the queue holds outside a resync before it asks for one: resolutions of objects
/// that come and go (unique Pod names) while the control plane is away would otherwise
/// accumulate one each.
pub const MAX_PENDING: usize = 100_000;

/// The name of the tree that holds the queue.
pub const TREE: &str = "audit_outbox";

/// What a stopped agent's runs left undelivered, oldest first.
#[derive(Debug, Default)]
pub struct Leftovers {
    pub entries: VecDeque<(u64, String, Violation)>,
    /// Entries that could not be read back (checksum or decoding), dropped and logged.
    pub unreadable: u64,
}

impl Leftovers {
    /// The oldest entries of one run, at most `max`: (run, sequence numbers, violations).
    pub fn batch(&self, max: usize) -> Option<(String, Vec<u64>, Vec<Violation>)> {
        let (_, run, _) = self.entries.front()?;
        let same: Vec<&(u64, String, Violation)> = self
            .entries
            .iter()
            .take_while(|(_, r, _)| r == run)
            .take(max.max(1))
            .collect();
        Some((
            run.clone(),
            same.iter().map(|(s, _, _)| *s).collect(),
            same.iter().map(|(_, _, v)| v.clone()).collect(),
        ))
    }

    /// Removes the entries `sequences` (delivered, or superseded) here and from `tree`.
    pub fn remove(&mut self, tree: Option<&sled::Tree>, sequences: &[u64]) {
        let gone: std::collections::HashSet<u64> = sequences.iter().copied().collect();
        self.entries.retain(|(s, _, _)| !gone.contains(s));
        if let Some(tree) = tree {
            for sequence in sequences {
                if let Err(e) = tree.remove(sequence.to_be_bytes()) {
                    error!(error = %e, "Cannot remove a delivered violation from the audit outbox");
                }
            }
        }
    }

    /// Every entry of `run`'s sequence numbers.
    pub fn of_run(&self, run: &str) -> Vec<u64> {
        self.entries
            .iter()
            .filter(|(_, r, _)| r == run)
            .map(|(s, _, _)| *s)
            .collect()
    }
}

/// An entry as stored: its run, a newline, the encoded violation.
fn encode(run: &str, violation: &Violation) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(run.len() + 1 + violation.encoded_len());
    bytes.extend_from_slice(run.as_bytes());
    bytes.push(b'\n');
    violation.encode(&mut bytes).unwrap_or_default();
    bytes
}

fn decode(bytes: &[u8]) -> Result<(String, Violation), String> {
    let at = bytes.iter().position(|b| *b == b'\n').ok_or("no run")?;
    let run = std::str::from_utf8(&bytes[..at]).map_err(|e| e.to_string())?;
    let violation = Violation::decode(&bytes[at + 1..]).map_err(|e| e.to_string())?;
    Ok((run.to_owned(), violation))
}

/// What the sender sends next.
#[derive(Debug, Default)]
pub struct Batch {
    pub run: String,
    pub resync_start: bool,
    pub resync_end: bool,
    /// Sequence numbers of the entries sent, for `acknowledge`.
    pub sequences: Vec<u64>,
    pub violations: Vec<Violation>,
    /// The resync it belongs to (`Pending::resyncs` when it was taken).
    resync: u64,
}

/// A new run's id.
pub fn new_run() -> String {
    uuid::Uuid::now_v7().to_string()
}

impl Pending {
    pub fn new(run: String) -> Self {
        Self {
            run,
            next: 0,
            order: BTreeMap::new(),
            items: HashMap::new(),
            resync_start: false,
            resync_open: false,
            resyncs: 0,
            store: None,
            max: MAX_PENDING,
            overflowed: false,
        }
    }

    /// The most entries held outside a resync (`MAX_PENDING` by default).
    pub fn with_max(mut self, max: usize) -> Self {
        self.max = max.max(1);
        self
    }

    /// Whether the queue grew past its bound outside a resync: the caller drops it
    /// (`clear`) and queues a resync, which replaces whatever it held (once).
    pub fn take_overflow(&mut self) -> bool {
        std::mem::take(&mut self.overflowed)
    }

    /// A queue for `run` kept in `tree`, and what earlier runs left there. Unreadable entries
    /// are removed and counted (the resync covers what they said).
    pub fn open(tree: sled::Tree, run: String) -> (Self, Leftovers) {
        let mut leftovers = Leftovers::default();
        let mut next = 0;
        for entry in tree.iter() {
            let (key, value) = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    error!(error = %e, "Cannot read the audit outbox");
                    break;
                }
            };
            let sequence = key
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .unwrap_or_default();
            next = next.max(sequence + 1);
            match record::open(&key, &value).and_then(decode) {
                Ok((run, violation)) => leftovers.entries.push_back((sequence, run, violation)),
                Err(reason) => {
                    warn!(%reason, "Dropping an unreadable audit outbox entry (the resync covers it)");
                    leftovers.unreadable += 1;
                    let _ = tree.remove(&key);
                }
            }
        }
        let mut pending = Self::new(run);
        pending.next = next;
        pending.store = Some(tree);
        (pending, leftovers)
    }

    /// The tree entries are kept in, if any.
    pub fn tree(&self) -> Option<&sled::Tree> {
        self.store.as_ref()
    }

    fn forget(&self, sequence: u64) {
        if let Some(tree) = &self.store
            && let Err(e) = tree.remove(sequence.to_be_bytes())
        {
            error!(error = %e, "Cannot remove an entry from the audit outbox");
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Changes queued since the run began (to tell whether anything was queued).
    pub fn pushed(&self) -> u64 {
        self.next
    }

    /// Whether a resync is under way (started or not yet ended).
    pub fn resyncing(&self) -> bool {
        self.resync_open
    }

    /// Queues `violation`'s latest state, replacing an older one of the same key.
    pub fn push(&mut self, violation: Violation) {
        let key = key_of(&violation);
        let sequence = self.next;
        self.next += 1;
        if let Some((old, _)) = self.items.get(&key) {
            let old = *old;
            self.order.remove(&old);
            self.forget(old);
        }
        if let Some(tree) = &self.store {
            let id = sequence.to_be_bytes();
            if let Err(e) = tree.insert(id, record::seal(&id, &encode(&self.run, &violation))) {
                // Still delivered from memory; only a restart before then would lose it, and
                // the next run's resync covers that.
                error!(error = %e, "Cannot write to the audit outbox");
            }
        }
        self.order.insert(sequence, key.clone());
        self.items.insert(key, (sequence, violation));
        if self.items.len() > self.max && !self.resync_open {
            self.overflowed = true;
        }
    }

    /// The next batches are a full resync: the caller queues every open violation next.
    pub fn begin_resync(&mut self) {
        self.resync_start = true;
        self.resync_open = true;
        self.resyncs += 1;
    }

    /// A new run (the old one was superseded): what is queued is dropped, so nothing of the
    /// old run is sent under the new one; the auditor then queues the new run's resync
    /// (`begin_resync` with every open violation, at once). Until it does, nothing is sent: an
    /// empty resync here would resolve every violation of the cluster.
    pub fn restart(&mut self, run: String) {
        self.clear();
        self.run = run;
        self.resync_start = false;
        self.resync_open = false;
        self.resyncs += 1;
    }

    /// Drops everything queued (a resync follows that replaces it).
    pub fn clear(&mut self) {
        let sequences: Vec<u64> = self.order.keys().copied().collect();
        for sequence in sequences {
            self.forget(sequence);
        }
        self.order.clear();
        self.items.clear();
    }

    /// The oldest entries, at most `max` and about `max_bytes` encoded (at least one), with
    /// the resync's flags; `None` when there is nothing to send.
    pub fn batch(&self, max: usize, max_bytes: usize) -> Option<Batch> {
        if self.items.is_empty() && !self.resync_open {
            return None;
        }
        let mut batch = Batch {
            run: self.run.clone(),
            resync_start: self.resync_start,
            resync: self.resyncs,
            ..Default::default()
        };
        let mut bytes = 0;
        for (sequence, key) in &self.order {
            let (_, violation) = &self.items[key];
            let size = prost::Message::encoded_len(violation) + 8;
            if !batch.violations.is_empty()
                && (batch.violations.len() >= max || bytes + size > max_bytes)
            {
                break;
            }
            bytes += size;
            batch.sequences.push(*sequence);
            batch.violations.push(violation.clone());
        }
        batch.resync_end = self.resync_open && batch.violations.len() == self.items.len();
        Some(batch)
    }

    /// A batch of nothing, to check the run is still known.
    pub fn empty_batch(&self) -> Batch {
        Batch {
            run: self.run.clone(),
            resync: self.resyncs,
            ..Default::default()
        }
    }

    /// The control plane stored `batch`: its entries leave unless they changed since.
    pub fn acknowledge(&mut self, batch: &Batch) {
        for sequence in &batch.sequences {
            if let Some(key) = self.order.remove(sequence) {
                self.items.remove(&key);
                self.forget(*sequence);
            }
        }
        if batch.resync != self.resyncs {
            // A newer resync began while this batch was on its way: it is still to come.
            return;
        }
        if batch.resync_start {
            self.resync_start = false;
        }
        if batch.resync_end {
            self.resync_open = false;
        }
    }

    /// Drops `batch`'s entries for good (the control plane refused them), unless they changed
    /// since; returns how many were dropped.
    pub fn refuse(&mut self, batch: &Batch) -> usize {
        let mut dropped = 0;
        for sequence in &batch.sequences {
            if let Some(key) = self.order.remove(sequence) {
                self.items.remove(&key);
                self.forget(*sequence);
                dropped += 1;
            }
        }
        dropped
    }
}
