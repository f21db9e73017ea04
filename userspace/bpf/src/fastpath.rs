//! The fast path's maps: the agent's switches (`config`), per-interface fast-path counters
//! (`fastif`) and single `flow4` entries (removal, lookup), for the agent's flow-cache
//! writer.

use crate::{map_err, removed, Dataplane, FpConfig, FpFlow4, FpFlow4Key, FpIfCount, Result};

/// A `flow4` entry not used or refreshed for this long (ns) is ignored by the programs
/// (`FP_FLOW4_IDLE_NS` in ferroplane.h, which the generator does not carry: a 64-bit literal).
pub const FLOW4_IDLE_NS: u64 = 120_000_000_000;

impl Dataplane {
    /// The switches the XDP programs read (`config[0]`).
    pub fn config(&self) -> Result<FpConfig> {
        self.config.get(&0, 0).map_err(map_err("config"))
    }

    /// Sets the switches the XDP programs read (`config[0]`): [`FpConfig::FAST_PATH`] makes
    /// them forward established flows from `flow4` while the engine runs,
    /// [`FpConfig::TRACE`] sends every packet to the engine meanwhile.
    pub fn set_config(&mut self, config: FpConfig) -> Result<()> {
        self.config.set(0, config, 0).map_err(map_err("config"))
    }

    /// The `flow4` entry of `key`, if any.
    pub fn flow4_get(&self, key: &FpFlow4Key) -> Result<Option<FpFlow4>> {
        match self.flow4.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(None)
            }
            Err(e) => Err(map_err("flow4")(e)),
        }
    }

    /// Removes the `flow4` entry of `key`; `Ok(false)` if there was none.
    pub fn remove_flow4(&mut self, key: &FpFlow4Key) -> Result<bool> {
        removed("flow4", self.flow4.remove(key))
    }

    /// Fast-path counters per kernel ifindex, summed over CPUs (interfaces the fast path
    /// never used are absent).
    pub fn fastif(&self) -> Result<Vec<(u32, FpIfCount)>> {
        let mut out = Vec::new();
        for entry in self.fastif.iter() {
            let (ifindex, values) = entry.map_err(map_err("fastif"))?;
            let mut sum = FpIfCount::default();
            for v in values.iter() {
                sum.rx_packets = sum.rx_packets.wrapping_add(v.rx_packets);
                sum.rx_bytes = sum.rx_bytes.wrapping_add(v.rx_bytes);
                sum.tx_packets = sum.tx_packets.wrapping_add(v.tx_packets);
                sum.tx_bytes = sum.tx_bytes.wrapping_add(v.tx_bytes);
            }
            out.push((ifindex, sum));
        }
        Ok(out)
    }

    /// Forgets the fast-path counters of `ifindex` (an interface that went away).
    pub fn remove_fastif(&mut self, ifindex: u32) -> Result<bool> {
        removed("fastif", self.fastif.remove(&ifindex))
    }

    /// Empties `fastif`.
    pub(crate) fn clear_fastif(&mut self) -> Result<()> {
        let keys = self
            .fastif
            .keys()
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(map_err("fastif"))?;
        for k in keys {
            removed("fastif", self.fastif.remove(&k))?;
        }
        Ok(())
    }
}
