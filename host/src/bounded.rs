//! Caches bounded in entries and in bytes: every entry counts once per KiB it holds (at least
//! once), so a capacity of N bounds a cache to N entries of up to a KiB each, and a caller with
//! large claims or many scopes cannot grow one past N KiB. A leaf module: `authority` and
//! `policy` both use it and know nothing of each other.

/// A concurrent cache whose capacity is in KiB (see the module docs).
pub(crate) type Cache<K, V> = quick_cache::sync::Cache<K, Weighed<V>, PerKib>;

/// A cached value and its weight in KiB.
#[derive(Clone, Debug)]
pub(crate) struct Weighed<V> {
    /// The value.
    pub value: V,
    /// What it holds, in KiB rounded up, at least 1.
    pub kib: u64,
}

impl<V> Weighed<V> {
    /// `value`, weighing `bytes`.
    pub fn new(value: V, bytes: usize) -> Self {
        Weighed { value, kib: (bytes as u64).div_ceil(1024).max(1) }
    }
}

/// Weighs an entry by its [`Weighed::kib`].
#[derive(Clone, Debug)]
pub(crate) struct PerKib;

impl<K, V> quick_cache::Weighter<K, Weighed<V>> for PerKib {
    fn weight(&self, _key: &K, value: &Weighed<V>) -> u64 {
        value.kib
    }
}

/// A cache of `capacity` KiB, or none for a capacity of 0 (caching off).
pub(crate) fn cache<K, V>(capacity: usize) -> Option<Cache<K, V>>
where
    K: Eq + std::hash::Hash,
    V: Clone,
{
    (capacity > 0).then(|| quick_cache::sync::Cache::with_weighter(capacity, capacity as u64, PerKib))
}
