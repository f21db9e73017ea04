//! Fill and completion rings: how many frames each port's fill ring is topped up to
//! (idle fill, busy target, within the port's share of the pool and the floors kept for
//! ports still to come), refilling, and reaping completed TX frames.

use super::port::Port;
use super::{Owner, XskConfig, XskIo, XskPortStats, MIN_FILL_TARGET, MIN_PORT_CAP, TX_ROOM};
use crate::{BufIdx, IoError, PortId};

/// Completion descriptors read per pass.
const COMP_BATCH: u32 = 256;

impl XskIo {
    /// The most frames a port of weight 1 (a pod's) may hold in its rings (fill/RX plus
    /// TX/completion): three quarters of the pool shared among the open ports in
    /// proportion to their weights ([`XskIo::set_port_weight`]), at least
    /// [`MIN_PORT_CAP`]. A port's fill target stays within its cap less [`TX_ROOM`] (half
    /// of it when the cap is small), so TX keeps room. So ports whose devices vanished
    /// (they never receive nor complete) cannot take the pool: while every port gets at
    /// least [`MIN_PORT_CAP`], all of them together hold at most three quarters of it.
    /// Every port's fill ring holds [`XskConfig::idle_fill`] frames while its cap allows
    /// (with the defaults, 32768 frames: a cap of 1280 or more, i.e. up to 19 shares,
    /// e.g. an uplink of weight 4 and 15 pods); beyond that the idle fill shrinks with the
    /// share: size the UMEM to the number of ports.
    pub fn port_cap(&self) -> u32 {
        self.port_cap
    }

    /// Free frames kept now for the fill-ring floors ([`MIN_FILL_TARGET`] each) of the
    /// ports not open yet, up to [`XskConfig::max_ports`]: fill rings take frames above
    /// their floor only while this many stay free.
    pub fn floor_reserve(&self) -> usize {
        self.floor_reserve
    }

    /// The most frames `port` may hold now (its weight times [`XskIo::port_cap`]).
    pub fn port_cap_of(&self, port: PortId) -> Option<u32> {
        self.port(port).map(|p| p.cap)
    }

    /// Give `port` `weight` shares of the pool instead of one (for an uplink queue, which
    /// carries the traffic of every pod): its cap, fill target and idle fill grow with it,
    /// and every other port's share shrinks accordingly. `weight` is at least 1.
    pub fn set_port_weight(&mut self, port: PortId, weight: u32) -> Result<(), IoError> {
        let p = self
            .ports
            .get_mut(usize::from(port))
            .and_then(Option::as_mut)
            .ok_or_else(|| IoError::Config(format!("no port {port}")))?;
        p.weight = weight.max(1);
        self.update_port_cap();
        let fs = self.mem.frame_size as u64;
        let reserve = self.floor_reserve;
        if let Some(Some(p)) = self.ports.get_mut(usize::from(port)) {
            p.stats.fill_target = p.stats.fill_target.max(idle_fill(&self.cfg, p.cap));
            refill_port(port, p, &mut self.owner, &mut self.free, fs, reserve);
        }
        Ok(())
    }

    /// Recomputes every port's cap ([`XskIo::port_cap`]) after ports came or went or a
    /// weight changed. Fill targets follow at the next flush ([`fit_fill_target`]).
    pub(super) fn update_port_cap(&mut self) {
        let open = self.ports.iter().flatten().count() + self.closing.len();
        self.floor_reserve = floor_reserve(&self.cfg, open);
        let weights: u32 = self.ports.iter().flatten().map(|p| p.weight).sum();
        let share = share_of_pool(self.cfg.num_frames, weights);
        self.port_cap = share.max(MIN_PORT_CAP);
        for p in self.ports.iter_mut().flatten() {
            p.cap = share.saturating_mul(p.weight).max(MIN_PORT_CAP);
        }
    }
}

/// Frames kept free for the fill-ring floors of the ports not open yet when `open` are
/// (see [`XskConfig::max_ports`]).
pub(super) fn floor_reserve(cfg: &XskConfig, open: usize) -> usize {
    let floor = MIN_FILL_TARGET.min(cfg.idle_fill) as usize;
    (cfg.max_ports as usize).saturating_sub(open) * floor
}

/// One share of three quarters of a pool of `num_frames`, split into `weights` shares.
pub(super) fn share_of_pool(num_frames: u32, weights: u32) -> u32 {
    (num_frames - num_frames / 4) / weights.max(1)
}

/// The most a port with cap `cap` keeps in its fill ring: `fill_target`, leaving
/// [`TX_ROOM`] of the cap for TX (half of it when the cap is below twice that), and at
/// least [`MIN_FILL_TARGET`].
pub(super) fn most_fill(cfg: &XskConfig, cap: u32) -> u32 {
    let room = if cap >= 2 * TX_ROOM {
        cap - TX_ROOM
    } else {
        cap / 2
    };
    cfg.fill_target
        .min(room)
        .max(MIN_FILL_TARGET.min(cfg.fill_target))
}

/// The fill target of a new or idle port with cap `cap`: `idle_fill`, within [`most_fill`].
pub(super) fn idle_fill(cfg: &XskConfig, cap: u32) -> u32 {
    cfg.idle_fill.min(most_fill(cfg, cap))
}

/// Fit a port's fill target to its activity since its last refill, with `free` frames
/// in the pool (see [`XskConfig::fill_target`]), `cap` the most the port may hold
/// (see [`most_fill`]) and `floors` frames kept for ports not open yet
/// ([`XskIo::floor_reserve`]).
pub(super) fn fit_fill_target(
    s: &mut XskPortStats,
    free: usize,
    cfg: &XskConfig,
    cap: u32,
    floors: usize,
) {
    let most = most_fill(cfg, cap);
    let floor = idle_fill(cfg, cap);
    if s.fill_target > most {
        s.fill_target = most;
        return;
    }
    if s.fill_target < floor {
        // The cap grew (ports went away): the port gets its full idle fill back.
        s.fill_target = floor;
        return;
    }
    // A quarter of the pool stays free for frames in flight (vectors, TX rings), beyond
    // the floors kept for ports not open yet.
    let reserve = (cfg.num_frames / 4) as usize + floors;
    if free <= reserve {
        // Short of frames: a port using its fill ring gives some back as it receives.
        if s.fill_frames < s.fill_target {
            s.fill_target = (s.fill_target / 2).max(floor);
        }
    } else if s.fill_frames <= s.fill_target / 2 && s.fill_target < most {
        // Busy: half of the ring (or more) was used since the last refill. Straight to the
        // busy target: the rest of a burst into an idle port is on its way.
        s.fill_target = most;
        s.fill_grown += 1;
    }
}

/// Top the fill ring of port `id` up to its fill target from the free pool, holding at
/// most its cap in all its rings, and leaving `reserve` frames in the pool beyond the
/// port's [`MIN_FILL_TARGET`] (see [`XskConfig::max_ports`]).
pub(super) fn refill_port(
    id: PortId,
    p: &mut Port,
    owner: &mut [Owner],
    free: &mut Vec<BufIdx>,
    frame_size: u64,
    reserve: usize,
) {
    let cap = p.cap;
    let held = p.stats.fill_frames + p.stats.tx_in_flight;
    let want = p
        .stats
        .fill_target
        .saturating_sub(p.stats.fill_frames)
        .min(cap.saturating_sub(held));
    // Up to its floor from anywhere in the pool; above it, only what the floors of the
    // ports still to come leave.
    let floor = MIN_FILL_TARGET.saturating_sub(p.stats.fill_frames) as usize;
    let spare = free.len().saturating_sub(reserve).max(floor);
    let n = (want as usize).min(spare).min(free.len());
    if n == 0 {
        return;
    }
    let mut writer = p.fcq.fill(n as u32);
    // Take from the top of the stack so the inserted frames are its last `k`.
    let k = writer.insert(
        free.iter()
            .rev()
            .take(n)
            .map(|&b| u64::from(b) * frame_size),
    ) as usize;
    writer.commit();
    drop(writer);
    for &b in &free[free.len() - k..] {
        owner[b as usize] = Owner::Fill(id);
    }
    free.truncate(free.len() - k);
    p.stats.fill_frames += k as u32;
    if k > 0 && p.fcq.needs_wakeup() {
        p.fcq.wake();
    }
}

/// Move completed TX frames of port `id` back to the free pool.
pub(super) fn reap_completions(
    id: PortId,
    p: &mut Port,
    owner: &mut [Owner],
    free: &mut Vec<BufIdx>,
    fs: u64,
) {
    loop {
        let mut reader = p.fcq.complete(COMP_BATCH);
        let mut k = 0;
        while let Some(addr) = reader.read() {
            k += 1;
            let buf = addr / fs;
            match owner.get_mut(buf as usize) {
                Some(o) if *o == Owner::Tx(id) => {
                    *o = Owner::Free;
                    free.push(buf as BufIdx);
                    p.stats.tx_in_flight -= 1;
                }
                _ => p.stats.ring_invalid += 1,
            }
        }
        reader.release();
        if k == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_target_stays_within_the_port_cap() {
        let cfg = XskConfig {
            num_frames: 8192,
            fill_target: 512,
            idle_fill: 64,
            ..XskConfig::default()
        };
        let mut s = XskPortStats {
            fill_target: 512,
            fill_frames: 512,
            ..XskPortStats::default()
        };
        // Many ports: the cap shrinks the target of a busy port at once; a small cap
        // keeps half for TX.
        fit_fill_target(&mut s, 8000, &cfg, MIN_PORT_CAP, 0);
        assert_eq!(s.fill_target, MIN_PORT_CAP / 2);
        // Busy again: it grows no further than half the cap.
        s.fill_frames = 0;
        fit_fill_target(&mut s, 8000, &cfg, MIN_PORT_CAP, 0);
        assert_eq!(s.fill_target, MIN_PORT_CAP / 2);
        // A larger cap keeps TX_ROOM for TX.
        for _ in 0..10 {
            s.fill_frames = 0;
            fit_fill_target(&mut s, 8000, &cfg, 600, 0);
        }
        assert_eq!(s.fill_target, 600 - TX_ROOM);
        // Fewer ports: busy, it jumps to the configured target at once.
        s.fill_frames = 0;
        fit_fill_target(&mut s, 8000, &cfg, 4096, 0);
        assert_eq!(s.fill_target, 512);
        // Not while the pool is down to a quarter plus the floors of ports to come.
        let mut t = XskPortStats {
            fill_target: 64,
            ..XskPortStats::default()
        };
        fit_fill_target(&mut t, 2048 + 1000, &cfg, 4096, 1000);
        assert_eq!(t.fill_target, 64);
        fit_fill_target(&mut t, 2048 + 1001, &cfg, 4096, 1000);
        assert_eq!(t.fill_target, 512);
    }

    #[test]
    fn idle_ports_keep_their_idle_fill_and_come_back_to_it() {
        let cfg = XskConfig::default();
        let mut s = XskPortStats {
            fill_target: 2048,
            fill_frames: 0,
            ..XskPortStats::default()
        };
        // Short of frames: a busy port halves down to the idle fill, never below.
        for _ in 0..10 {
            fit_fill_target(&mut s, 0, &cfg, 8192, 0);
        }
        assert_eq!(s.fill_target, cfg.idle_fill);
        // A port squeezed by a small share gets its idle fill back when the share grows.
        s.fill_frames = s.fill_target;
        fit_fill_target(&mut s, 30_000, &cfg, 200, 0);
        assert_eq!(s.fill_target, 100);
        s.fill_frames = s.fill_target;
        fit_fill_target(&mut s, 30_000, &cfg, 4096, 0);
        assert_eq!(s.fill_target, cfg.idle_fill);
    }

    /// With the default pool (16384 frames), 50 pods (weight 1) and a 4-queue uplink of
    /// weight 4 per queue: every queue of the uplink keeps a full idle fill ring and room
    /// to grow, and the ports together hold at most three quarters of the pool.
    #[test]
    fn the_uplink_keeps_its_fill_with_many_pods() {
        let cfg = XskConfig::default();
        for queues in [1u32, 4] {
            let weights = 50 + 4 * queues;
            let share = share_of_pool(cfg.num_frames, weights).max(MIN_PORT_CAP);
            let uplink = share * 4;
            assert!(idle_fill(&cfg, uplink) >= cfg.idle_fill, "{queues} queues");
            assert!(most_fill(&cfg, uplink) > cfg.idle_fill, "{queues} queues");
            assert!(50 * share + queues * uplink <= cfg.num_frames * 3 / 4);
            // A pod still keeps a fill ring of more than half a vector.
            assert!(idle_fill(&cfg, share) >= 64, "{queues} queues: {share}");
        }
        // A dozen pods with a one-queue uplink: every port has its full idle fill.
        let share = share_of_pool(cfg.num_frames, 12 + 4);
        assert_eq!(idle_fill(&cfg, share), cfg.idle_fill);
    }

    /// The floors kept for ports to come: all of `max_ports` at the start, none once that
    /// many are open, and never above a quarter of the default pool.
    #[test]
    fn floors_are_kept_for_the_ports_to_come() {
        let cfg = XskConfig::default();
        assert_eq!(
            floor_reserve(&cfg, 0),
            (cfg.max_ports * MIN_FILL_TARGET) as usize
        );
        assert_eq!(floor_reserve(&cfg, 100), 28 * MIN_FILL_TARGET as usize);
        assert_eq!(floor_reserve(&cfg, 200), 0);
        assert!(floor_reserve(&cfg, 0) <= cfg.num_frames as usize / 4);
        // A smaller idle fill is the floor.
        let small = XskConfig {
            idle_fill: 8,
            ..XskConfig::default()
        };
        assert_eq!(floor_reserve(&small, 0), (small.max_ports * 8) as usize);
    }
}
