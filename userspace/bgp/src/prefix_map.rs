//! A map keyed by prefix ([`IpNet`]) for tables of a whole routing table's size: an
//! IPv4 prefix is one `u64` key (address and length), so an entry is the value plus 8
//! bytes (an `IpNet` key is 18 bytes, padded to 24 beside most values); IPv6 prefixes are
//! kept apart under their full key. Unordered; the memory of a table that empties is given
//! back as it empties.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};

/// An IPv4 prefix as one word: address in the high 32 bits, length in the low 8.
fn v4_key(p: &Ipv4Net) -> u64 {
    (u64::from(u32::from(p.addr())) << 8) | u64::from(p.prefix_len())
}

fn v4_prefix(k: u64) -> Option<IpNet> {
    let a = u32::try_from(k >> 8).ok()?;
    Ipv4Net::new(Ipv4Addr::from(a), (k & 0xff) as u8)
        .ok()
        .map(IpNet::V4)
}

/// Give memory back once a map is a quarter full: halves the capacity at most once per
/// removal of half the entries, so amortised O(1).
fn shrink<K: std::hash::Hash + Eq, V>(m: &mut HashMap<K, V>) {
    if m.capacity() > 1024 && m.len() < m.capacity() / 4 {
        m.shrink_to(m.len() * 2);
    }
}

/// Values by prefix (see the module documentation).
#[derive(Debug, Clone)]
pub struct PrefixMap<V> {
    v4: HashMap<u64, V>,
    v6: HashMap<IpNet, V>,
}

impl<V> Default for PrefixMap<V> {
    fn default() -> Self {
        PrefixMap {
            v4: HashMap::new(),
            v6: HashMap::new(),
        }
    }
}

impl<V: PartialEq> PartialEq for PrefixMap<V> {
    fn eq(&self, o: &Self) -> bool {
        self.v4 == o.v4 && self.v6 == o.v6
    }
}

impl<V> PrefixMap<V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value of `p`.
    pub fn get(&self, p: &IpNet) -> Option<&V> {
        match p {
            IpNet::V4(a) => self.v4.get(&v4_key(a)),
            IpNet::V6(_) => self.v6.get(p),
        }
    }

    /// The value of `p`, mutable.
    pub fn get_mut(&mut self, p: &IpNet) -> Option<&mut V> {
        match p {
            IpNet::V4(a) => self.v4.get_mut(&v4_key(a)),
            IpNet::V6(_) => self.v6.get_mut(p),
        }
    }

    /// True when `p` has a value.
    pub fn contains_key(&self, p: &IpNet) -> bool {
        self.get(p).is_some()
    }

    /// Set the value of `p`; returns the previous one.
    pub fn insert(&mut self, p: IpNet, v: V) -> Option<V> {
        match p {
            IpNet::V4(a) => self.v4.insert(v4_key(&a), v),
            IpNet::V6(_) => self.v6.insert(p, v),
        }
    }

    /// The value of `p`, inserted with `f` when absent.
    pub fn get_or_insert_with(&mut self, p: IpNet, f: impl FnOnce() -> V) -> &mut V {
        match p {
            IpNet::V4(a) => self.v4.entry(v4_key(&a)).or_insert_with(f),
            IpNet::V6(_) => self.v6.entry(p).or_insert_with(f),
        }
    }

    /// Remove `p`; returns its value.
    pub fn remove(&mut self, p: &IpNet) -> Option<V> {
        match p {
            IpNet::V4(a) => {
                let v = self.v4.remove(&v4_key(a));
                shrink(&mut self.v4);
                v
            }
            IpNet::V6(_) => {
                let v = self.v6.remove(p);
                shrink(&mut self.v6);
                v
            }
        }
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (IpNet, &V)> + '_ {
        self.v4
            .iter()
            .filter_map(|(k, v)| Some((v4_prefix(*k)?, v)))
            .chain(self.v6.iter().map(|(p, v)| (*p, v)))
    }

    /// Every entry, values mutable, in no particular order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (IpNet, &mut V)> + '_ {
        self.v4
            .iter_mut()
            .filter_map(|(k, v)| Some((v4_prefix(*k)?, v)))
            .chain(self.v6.iter_mut().map(|(p, v)| (*p, v)))
    }

    /// Every prefix, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.iter().map(|(p, _)| p)
    }

    /// Every value, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.v4.values().chain(self.v6.values())
    }

    /// Remove everything (and give the memory back).
    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

impl<V> FromIterator<(IpNet, V)> for PrefixMap<V> {
    fn from_iter<I: IntoIterator<Item = (IpNet, V)>>(it: I) -> Self {
        let mut m = PrefixMap::new();
        for (p, v) in it {
            m.insert(p, v);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_both_families() {
        let mut m = PrefixMap::new();
        let all = [
            "0.0.0.0/0",
            "10.244.1.0/24",
            "255.255.255.255/32",
            "128.0.0.0/1",
            "2001:db8::/32",
            "::/0",
        ];
        for (i, s) in all.iter().enumerate() {
            assert_eq!(m.insert(s.parse().unwrap(), i), None);
        }
        assert_eq!(m.len(), all.len());
        let mut got: Vec<String> = m.keys().map(|p| p.to_string()).collect();
        got.sort();
        let mut want: Vec<String> = all.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(got, want);
        let p: IpNet = "10.244.1.0/24".parse().unwrap();
        assert_eq!(m.get(&p), Some(&1));
        *m.get_or_insert_with(p, || 99) += 10;
        assert_eq!(m.remove(&p), Some(11));
        assert!(!m.contains_key(&p));
        let v6: IpNet = "2001:db8::/32".parse().unwrap();
        assert_eq!(m.get(&v6), Some(&4));
        assert_eq!(m.values().sum::<usize>(), 4 + 2 + 3 + 5);
    }

    #[test]
    fn an_emptied_map_gives_its_memory_back() {
        let mut m: PrefixMap<u64> = (0..100_000u32)
            .map(|i| (crate::prefix::v4(Ipv4Addr::from(i << 8), 24).unwrap(), 0))
            .collect();
        assert!(m.v4.capacity() >= 100_000);
        for i in 0..99_990u32 {
            m.remove(&crate::prefix::v4(Ipv4Addr::from(i << 8), 24).unwrap());
        }
        assert_eq!(m.len(), 10);
        assert!(m.v4.capacity() <= 2048, "{}", m.v4.capacity());
    }
}
