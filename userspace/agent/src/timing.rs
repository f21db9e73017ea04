//! Timing spans for the pod plumbing path (CNI ADD): where an ADD's time goes.
//!
//! A [`Phases`] collects named durations as work proceeds; the agent logs them with each
//! CNI request (`phases="ipam=0.41 veth=1.20 ..."`, milliseconds) and `cargo xtask bench cni`
//! sums them up per phase.

use std::fmt;
use std::time::{Duration, Instant};

/// Named durations, in the order they were taken.
#[derive(Debug, Clone)]
pub struct Phases {
    last: Instant,
    items: Vec<(&'static str, Duration)>,
}

impl Default for Phases {
    fn default() -> Self {
        Phases::new()
    }
}

impl PartialEq for Phases {
    /// Timings never make two results differ.
    fn eq(&self, _: &Phases) -> bool {
        true
    }
}

impl Eq for Phases {}

impl Phases {
    /// Starts timing now.
    pub fn new() -> Phases {
        Phases {
            last: Instant::now(),
            items: Vec::new(),
        }
    }

    /// Records the time since the previous mark (or the start) as `name`.
    pub fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.push(name, now - self.last);
        self.last = now;
    }

    /// Records a duration measured elsewhere (adds to an existing phase of that name).
    pub fn push(&mut self, name: &'static str, d: Duration) {
        match self.items.iter_mut().find(|(n, _)| *n == name) {
            Some((_, total)) => *total += d,
            None => self.items.push((name, d)),
        }
    }

    /// Time since the previous mark (or the start), without recording it.
    pub fn since_mark(&self) -> Duration {
        self.last.elapsed()
    }

    /// Restarts the clock without recording (time spent elsewhere is not attributed).
    pub fn skip(&mut self) {
        self.last = Instant::now();
    }

    /// Appends the phases of `other` (same names add up).
    pub fn extend(&mut self, other: &Phases) {
        for (n, d) in &other.items {
            self.push(n, *d);
        }
    }

    /// The phases recorded so far.
    pub fn items(&self) -> &[(&'static str, Duration)] {
        &self.items
    }

    /// Sum of the phases.
    pub fn total(&self) -> Duration {
        self.items.iter().map(|(_, d)| *d).sum()
    }
}

impl fmt::Display for Phases {
    /// `name=ms name=ms ...` with two decimals.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (n, d)) in self.items.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{n}={:.2}", d.as_secs_f64() * 1e3)?;
        }
        Ok(())
    }
}

/// Parses what [`Phases`]' `Display` prints back into (name, milliseconds) pairs; malformed
/// items are skipped.
pub fn parse_phases(s: &str) -> Vec<(String, f64)> {
    s.split_whitespace()
        .filter_map(|item| {
            let (n, v) = item.split_once('=')?;
            Some((n.to_string(), v.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_add_up_and_round_trip() {
        let mut p = Phases::new();
        p.push("a", Duration::from_micros(1500));
        p.push("b", Duration::from_millis(2));
        p.push("a", Duration::from_micros(500));
        assert_eq!(p.items().len(), 2);
        assert_eq!(p.total(), Duration::from_millis(4));
        assert_eq!(p.to_string(), "a=2.00 b=2.00");
        let back = parse_phases(&p.to_string());
        assert_eq!(back, vec![("a".to_string(), 2.0), ("b".to_string(), 2.0)]);
        assert!(parse_phases("x=bad y=1.5 z").len() == 1);
        let mut q = Phases::new();
        q.mark("m");
        assert_eq!(q.items()[0].0, "m");
    }
}
