//! The prefix-state cache: snapshots of a sequence's state keyed by the tokens that produced
//! them, so a prompt that starts with a cached prefix prefills only the rest.
//!
//! Two kinds of entries share one memory budget:
//! - pinned prefixes, registered by the daemon for prompts it knows in advance (the intent
//!   catalog's system prompt and tools); they are rebuilt when the configuration changes and
//!   are never evicted to make room for a conversation;
//! - conversation prefixes, stored as requests run (a chat's messages up to its last one), and
//!   evicted least recently used first.
//!
//! A lookup returns the longest cached prefix strictly shorter than the prompt (at least one
//! token must still be fed to get the next-token logits). Memory is counted as the snapshot's
//! state bytes plus its key. The cache is generic over what it stores so its policy is tested
//! without a model; the engine stores [`Snapshot`](super::backend::Snapshot)s.

/// Bytes a key token takes.
const TOKEN_BYTES: usize = std::mem::size_of::<u32>();

/// The prefix cache's counters and sizes (`status` reports them as `api::CacheReport`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups that found a cached prefix.
    pub hits: u64,
    /// Lookups that found none.
    pub misses: u64,
    /// Prompt tokens that were not prefilled thanks to a hit.
    pub reused_tokens: u64,
    /// Entries stored.
    pub insertions: u64,
    /// Entries dropped to stay inside the budget (or on pressure, or when shrunk).
    pub evictions: u64,
    /// Entries held now.
    pub entries: usize,
    /// Of which pinned.
    pub pinned: usize,
    /// Bytes held now.
    pub bytes: usize,
    /// The budget in bytes (0: the cache is off).
    pub max_bytes: usize,
}

/// Why an entry was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    /// The cache is off (`max_bytes` is 0).
    #[error("the prefix cache is disabled")]
    Disabled,
    /// The entry alone is larger than the budget (or than what pinned entries leave).
    #[error("a prefix of {tokens} tokens needs {bytes} bytes; the cache has room for {room}")]
    TooLarge {
        /// Key length.
        tokens: usize,
        /// Bytes it needs.
        bytes: usize,
        /// Bytes the budget leaves for it.
        room: usize,
    },
    /// Memory is under pressure; only pinned prefixes are kept.
    #[error("memory is under pressure; only pinned prefixes are stored")]
    Pressure,
}

struct Entry<S> {
    tokens: Vec<u32>,
    value: S,
    bytes: usize,
    pinned: bool,
    last_used: u64,
}

/// A least-recently-used map from token prefixes to stored states, bounded in bytes.
pub(crate) struct PrefixCache<S> {
    entries: Vec<Entry<S>>,
    max_bytes: usize,
    min_tokens: usize,
    pressure: bool,
    clock: u64,
    stats: CacheStats,
}

impl<S> std::fmt::Debug for PrefixCache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixCache").field("stats", &self.stats).finish_non_exhaustive()
    }
}

impl<S> Default for PrefixCache<S> {
    fn default() -> Self {
        Self::new(0, 1)
    }
}

impl<S> PrefixCache<S> {
    /// A cache holding at most `max_bytes` (0: off) that stores a conversation prefix only when
    /// it saves at least `min_tokens` tokens over the prefix a prompt already reused.
    pub(crate) fn new(max_bytes: usize, min_tokens: usize) -> Self {
        let stats = CacheStats { max_bytes, ..Default::default() };
        Self { entries: Vec::new(), max_bytes, min_tokens: min_tokens.max(1), pressure: false, clock: 0, stats }
    }

    /// Whether the cache stores anything at all.
    pub(crate) fn enabled(&self) -> bool {
        self.max_bytes > 0
    }

    /// Changes the limits, evicting what no longer fits.
    pub(crate) fn configure(&mut self, max_bytes: usize, min_tokens: usize) {
        self.max_bytes = max_bytes;
        self.min_tokens = min_tokens.max(1);
        self.stats.max_bytes = max_bytes;
        self.shrink(max_bytes);
    }

    /// Under memory pressure every conversation prefix is dropped and none is stored until it
    /// ends; pinned prefixes stay.
    pub(crate) fn set_pressure(&mut self, on: bool) {
        self.pressure = on;
        if on {
            self.drop_kind(false);
        }
    }

    /// The longest cached prefix of `prompt` shorter than `prompt`, with its length. Counts a
    /// hit or a miss and marks the entry as used.
    pub(crate) fn lookup(&mut self, prompt: &[u32]) -> Option<(usize, &S)> {
        let best = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.tokens.len() < prompt.len() && prompt.starts_with(&e.tokens))
            .max_by_key(|(_, e)| e.tokens.len())
            .map(|(i, _)| i);
        let Some(i) = best else {
            self.stats.misses += 1;
            return None;
        };
        self.clock += 1;
        let e = &mut self.entries[i];
        e.last_used = self.clock;
        self.stats.hits += 1;
        self.stats.reused_tokens += e.tokens.len() as u64;
        Some((e.tokens.len(), &e.value))
    }

    /// Whether a conversation prefix of `len` tokens is worth storing for a prompt that reused
    /// `reused` tokens.
    pub(crate) fn worth_storing(&self, len: usize, reused: usize) -> bool {
        self.enabled() && !self.pressure && len >= reused + self.min_tokens
    }

    /// Whether `tokens` is cached exactly (as a pinned entry when `pinned`).
    pub(crate) fn contains(&self, tokens: &[u32], pinned: bool) -> bool {
        self.entries.iter().any(|e| e.tokens == tokens && (e.pinned || !pinned))
    }

    /// Stores `value` (taking `value_bytes`) under `tokens`, evicting the least recently used
    /// conversation prefixes until it fits. An entry with the same key is replaced.
    pub(crate) fn insert(&mut self, tokens: Vec<u32>, value: S, value_bytes: usize, pinned: bool) -> Result<(), CacheError> {
        if !self.enabled() {
            return Err(CacheError::Disabled);
        }
        if self.pressure && !pinned {
            return Err(CacheError::Pressure);
        }
        let bytes = value_bytes + tokens.len() * TOKEN_BYTES;
        let pinned_bytes: usize = self.entries.iter().filter(|e| e.pinned && e.tokens != tokens).map(|e| e.bytes).sum();
        let room = self.max_bytes.saturating_sub(pinned_bytes);
        if bytes > room {
            return Err(CacheError::TooLarge { tokens: tokens.len(), bytes, room });
        }
        if let Some(i) = self.entries.iter().position(|e| e.tokens == tokens) {
            let old = self.entries.swap_remove(i);
            self.stats.bytes -= old.bytes;
        }
        let limit = self.max_bytes - bytes;
        while self.stats.bytes > limit {
            let Some(i) = self.oldest(false) else { break };
            self.remove(i);
            self.stats.evictions += 1;
        }
        self.clock += 1;
        self.entries.push(Entry { tokens, value, bytes, pinned, last_used: self.clock });
        self.stats.bytes += bytes;
        self.stats.insertions += 1;
        self.count();
        Ok(())
    }

    /// Evicts least recently used conversation prefixes, then pinned ones, until at most
    /// `max_bytes` are held.
    pub(crate) fn shrink(&mut self, max_bytes: usize) {
        for pinned in [false, true] {
            while self.stats.bytes > max_bytes {
                let Some(i) = self.oldest(pinned) else { break };
                self.remove(i);
                self.stats.evictions += 1;
            }
        }
        self.count();
    }

    /// Drops every pinned prefix (before registering the current ones again).
    pub(crate) fn unpin_all(&mut self) {
        self.drop_kind(true);
    }

    /// Drops every pinned prefix except `tokens` (when the pinned set is replaced).
    pub(crate) fn unpin_except(&mut self, tokens: &[u32]) {
        self.drop_where(|e| e.pinned && e.tokens != tokens);
    }

    /// Drops everything.
    pub(crate) fn clear(&mut self) {
        self.shrink(0);
    }

    /// The counters.
    pub(crate) fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Drops every pinned (or every unpinned) entry.
    fn drop_kind(&mut self, pinned: bool) {
        self.drop_where(|e| e.pinned == pinned);
    }

    fn drop_where(&mut self, drop: impl Fn(&Entry<S>) -> bool) {
        let before = self.entries.len();
        let mut freed = 0;
        self.entries.retain(|e| {
            if drop(e) {
                freed += e.bytes;
                return false;
            }
            true
        });
        self.stats.bytes -= freed;
        self.stats.evictions += (before - self.entries.len()) as u64;
        self.count();
    }

    fn oldest(&self, pinned: bool) -> Option<usize> {
        self.entries.iter().enumerate().filter(|(_, e)| e.pinned == pinned).min_by_key(|(_, e)| e.last_used).map(|(i, _)| i)
    }

    fn remove(&mut self, i: usize) {
        let e = self.entries.swap_remove(i);
        self.stats.bytes -= e.bytes;
    }

    fn count(&mut self) {
        self.stats.entries = self.entries.len();
        self.stats.pinned = self.entries.iter().filter(|e| e.pinned).count();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(max_bytes: usize) -> PrefixCache<&'static str> {
        PrefixCache::new(max_bytes, 4)
    }

    #[test]
    fn lookup_takes_the_longest_strict_prefix() {
        let mut c = cache(10_000);
        c.insert(vec![1, 2], "short", 100, false).unwrap();
        c.insert(vec![1, 2, 3, 4], "long", 100, false).unwrap();
        c.insert(vec![9], "other", 100, false).unwrap();
        assert_eq!(c.lookup(&[1, 2, 3, 4, 5]), Some((4, &"long")));
        assert_eq!(c.lookup(&[1, 2, 3, 4]), Some((2, &"short")), "an exact match leaves nothing to feed");
        assert_eq!(c.lookup(&[1, 3]), None);
        assert_eq!(c.lookup(&[2, 1, 2, 3]), None);
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.reused_tokens), (2, 2, 6));
    }

    #[test]
    fn least_recently_used_goes_first_and_bytes_stay_inside_the_budget() {
        let mut c = cache(1_000);
        c.insert(vec![1], "a", 292, false).unwrap();
        c.insert(vec![2], "b", 292, false).unwrap();
        c.insert(vec![3], "c", 292, false).unwrap();
        assert_eq!(c.stats().bytes, 888);
        assert!(c.lookup(&[1, 0]).is_some(), "touch a");
        c.insert(vec![4], "d", 292, false).unwrap();
        assert!(c.lookup(&[2, 0]).is_none(), "b was the least recently used");
        assert!(c.lookup(&[1, 0]).is_some() && c.lookup(&[3, 0]).is_some() && c.lookup(&[4, 0]).is_some());
        let s = c.stats();
        assert_eq!((s.entries, s.bytes, s.evictions, s.insertions), (3, 888, 1, 4));
        assert!(s.bytes <= s.max_bytes);
    }

    #[test]
    fn pinned_entries_survive_conversations_and_pressure() {
        let mut c = cache(1_000);
        c.insert(vec![7, 7], "catalog", 592, true).unwrap();
        c.insert(vec![1], "a", 196, false).unwrap();
        c.insert(vec![2], "b", 196, false).unwrap();
        assert!(c.lookup(&[1, 0]).is_some());
        c.insert(vec![3], "c", 196, false).unwrap();
        assert!(c.contains(&[1], false) && !c.contains(&[2], false), "b, not the pinned catalog, made room");
        assert_eq!(c.stats().evictions, 1);
        assert!(c.contains(&[7, 7], true));
        assert_eq!(c.insert(vec![3], "too big", 500, false), Err(CacheError::TooLarge { tokens: 1, bytes: 504, room: 400 }));
        c.set_pressure(true);
        assert_eq!(c.stats().entries, 1);
        assert!(c.contains(&[7, 7], true));
        assert_eq!(c.insert(vec![5], "x", 10, false), Err(CacheError::Pressure));
        assert!(!c.worth_storing(100, 0));
        c.set_pressure(false);
        c.insert(vec![5], "x", 10, false).unwrap();
        c.insert(vec![8], "other catalog", 10, true).unwrap();
        c.unpin_except(&[8]);
        assert!(!c.contains(&[7, 7], false) && c.contains(&[8], true));
        c.unpin_all();
        assert!(!c.contains(&[8], false));
        assert!(c.contains(&[5], false));
    }

    #[test]
    fn shrink_and_configure_evict_until_it_fits() {
        let mut c = cache(10_000);
        c.insert(vec![1], "p", 996, true).unwrap();
        for i in 2..7 {
            c.insert(vec![i], "c", 996, false).unwrap();
        }
        assert_eq!(c.stats().bytes, 6_000);
        c.shrink(2_500);
        assert_eq!((c.stats().entries, c.stats().bytes), (2, 2_000));
        assert!(c.contains(&[1], true) && c.contains(&[6], false), "the pinned and the newest stay");
        c.configure(500, 4);
        assert_eq!((c.stats().entries, c.stats().bytes, c.stats().max_bytes), (0, 0, 500));
        c.configure(0, 4);
        assert!(!c.enabled());
        assert_eq!(c.insert(vec![1], "p", 1, false), Err(CacheError::Disabled));
    }

    #[test]
    fn replacing_a_key_keeps_one_entry_and_min_tokens_gates_storing() {
        let mut c = cache(10_000);
        c.insert(vec![1, 2], "old", 100, false).unwrap();
        c.insert(vec![1, 2], "new", 200, false).unwrap();
        assert_eq!((c.stats().entries, c.stats().bytes), (1, 208));
        assert_eq!(c.lookup(&[1, 2, 3]), Some((2, &"new")));
        assert!(c.worth_storing(10, 6) && !c.worth_storing(9, 6));
        assert!(!PrefixCache::<()>::new(0, 1).worth_storing(100, 0));
    }
}
