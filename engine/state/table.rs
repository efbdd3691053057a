//! A projection map whose entries may still be in a snapshot file.
//!
//! [`Table`] reads like a hash map. Entries created or changed since the snapshot live in memory;
//! the others are decoded from the (mapped, already validated) snapshot the first time they are
//! asked for, one by one. So opening a long log costs what the command touches, not the size of
//! the history. An entry that is changed is first copied into memory, which then shadows it.

use std::fmt;
use std::ops::Index;
use std::sync::{Arc, OnceLock};

use rustc_hash::FxHashMap;

use super::Sym;

/// Where a table's snapshot entries come from: sorted by key, addressed by index.
pub(crate) trait Source<V>: Send + Sync {
    /// How many entries.
    fn len(&self) -> usize;
    /// The key of entry `i` (< `len`).
    fn key(&self, i: usize) -> &str;
    /// The index of `key`, if the snapshot has it.
    fn find(&self, key: &str) -> Option<usize>;
    /// Decodes entry `i`. `None` only if the snapshot is malformed, which validation at load rules
    /// out; the entry then reads as absent.
    fn load(&self, i: usize) -> Option<V>;
}

type Slot<V> = OnceLock<Option<Box<(Sym, V)>>>;

struct Disk<V> {
    src: Arc<dyn Source<V>>,
    /// Decoded entries, made on first use.
    slots: OnceLock<Box<[Slot<V>]>>,
    /// How many snapshot entries have been copied into memory (and are shadowed).
    shadowed: usize,
}

impl<V: Clone> Clone for Disk<V> {
    fn clone(&self) -> Self {
        Disk { src: self.src.clone(), slots: self.slots.clone(), shadowed: self.shadowed }
    }
}

impl<V> Disk<V> {
    fn slot(&self, i: usize) -> Option<&(Sym, V)> {
        let slots =
            self.slots.get_or_init(|| (0..self.src.len()).map(|_| OnceLock::new()).collect());
        slots
            .get(i)?
            .get_or_init(|| self.src.load(i).map(|v| Box::new((Sym::from(self.src.key(i)), v))))
            .as_deref()
    }

    /// Entry `i` by value, taking it out of its slot if it was decoded.
    fn take(&mut self, i: usize) -> Option<(Sym, V)> {
        let decoded = self.slots.get_mut().and_then(|s| s.get_mut(i)).and_then(OnceLock::take);
        match decoded {
            Some(pair) => pair.map(|b| *b),
            None => self.src.load(i).map(|v| (Sym::from(self.src.key(i)), v)),
        }
    }
}

/// A map from ids or refs to projection entries; see the module doc.
pub struct Table<V> {
    mem: FxHashMap<Sym, V>,
    disk: Option<Disk<V>>,
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Table { mem: FxHashMap::default(), disk: None }
    }
}

impl<V: Clone> Clone for Table<V> {
    fn clone(&self) -> Self {
        Table { mem: self.mem.clone(), disk: self.disk.clone() }
    }
}

impl<V> fmt::Debug for Table<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("in_memory", &self.mem.len())
            .field("in_snapshot", &self.disk.as_ref().map_or(0, |d| d.src.len()))
            .finish()
    }
}

impl<V> Table<V> {
    /// A table whose entries are those of `src`, until changed.
    pub(crate) fn from_source(src: Arc<dyn Source<V>>) -> Self {
        Table {
            mem: FxHashMap::default(),
            disk: Some(Disk { src, slots: OnceLock::new(), shadowed: 0 }),
        }
    }

    /// The entry for `key`.
    pub fn get<Q: AsRef<str> + ?Sized>(&self, key: &Q) -> Option<&V> {
        let key = key.as_ref();
        if let Some(v) = self.mem.get(key) {
            return Some(v);
        }
        let d = self.disk.as_ref()?;
        d.slot(d.src.find(key)?).map(|(_, v)| v)
    }

    /// Whether there is an entry for `key` (without decoding it).
    pub fn contains_key<Q: AsRef<str> + ?Sized>(&self, key: &Q) -> bool {
        let key = key.as_ref();
        self.mem.contains_key(key) || self.disk.as_ref().is_some_and(|d| d.src.find(key).is_some())
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.mem.len() + self.disk.as_ref().map_or(0, |d| d.src.len() - d.shadowed)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every entry, in no particular order (snapshot entries are decoded as they are met).
    pub fn iter(&self) -> impl Iterator<Item = (&Sym, &V)> + '_ {
        let disk = self.disk.iter().flat_map(move |d| {
            (0..d.src.len()).filter_map(move |i| {
                if !self.mem.is_empty() && self.mem.contains_key(d.src.key(i)) {
                    return None;
                }
                d.slot(i).map(|(k, v)| (k, v))
            })
        });
        self.mem.iter().chain(disk)
    }

    /// Every key, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &Sym> + '_ {
        self.iter().map(|(k, _)| k)
    }

    /// Every value, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.iter().map(|(_, v)| v)
    }

    /// The entries created or changed since the snapshot (all of them, if there was none).
    pub(crate) fn in_memory(&self) -> impl Iterator<Item = &V> + '_ {
        self.mem.values()
    }

    /// Whether `key` was created or changed since the snapshot.
    pub(crate) fn is_in_memory(&self, key: &str) -> bool {
        self.mem.contains_key(key)
    }

    /// Makes room for `n` more entries in memory.
    pub fn reserve(&mut self, n: usize) {
        self.mem.reserve(n);
    }

    /// Copies the snapshot's entry for `key` into memory; whether `key` now has one there.
    fn promote(&mut self, key: &str) -> bool {
        if self.mem.contains_key(key) {
            return true;
        }
        let Some(d) = self.disk.as_mut() else { return false };
        let Some(i) = d.src.find(key) else { return false };
        let Some((k, v)) = d.take(i) else { return false };
        d.shadowed += 1;
        self.mem.insert(k, v);
        true
    }

    /// The entry for `key`, to change.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        if self.promote(key) { self.mem.get_mut(key) } else { None }
    }

    /// Sets the entry for `key`.
    pub fn insert(&mut self, key: Sym, value: V) {
        if !self.mem.contains_key(&*key)
            && let Some(d) = self.disk.as_mut()
            && d.src.find(&key).is_some()
        {
            d.shadowed += 1;
        }
        self.mem.insert(key, value);
    }

    /// The entry for `key`, made with `V::default()` if there is none.
    pub fn or_default(&mut self, key: Sym) -> &mut V
    where
        V: Default,
    {
        self.promote(&key);
        self.mem.entry(key).or_default()
    }
}

impl<V: PartialEq> PartialEq for Table<V> {
    fn eq(&self, o: &Self) -> bool {
        self.len() == o.len() && self.iter().all(|(k, v)| o.get(k) == Some(v))
    }
}

impl<V: Eq> Eq for Table<V> {}

impl<V> Index<&str> for Table<V> {
    type Output = V;

    /// The entry for `key`; panics if there is none, like a map's index (for tests).
    fn index(&self, key: &str) -> &V {
        self.get(key).unwrap_or_else(|| panic!("no entry for {key}"))
    }
}
