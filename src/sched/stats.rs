//! Per-vGPU scheduling statistics.

use std::collections::BTreeMap;

use crate::cmd::regs::RegAccess;
use crate::cmd::DroppedAccess;

/// Distinct (register, direction) pairs of dropped accesses kept per vGPU; more are counted in
/// [`VgpuStats::dropped_total`] only.
const MAX_DROPPED_KINDS: usize = 256;

/// Latency samples kept per vGPU (the oldest are kept; later ones are counted but not sampled).
const MAX_SAMPLES: usize = 1 << 20;

/// What the scheduler measured for one vGPU.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VgpuStats {
    /// Workloads completed successfully.
    pub completed: u64,
    /// Workloads that hung or faulted on the engine.
    pub failed: u64,
    /// Why the last failed workload failed.
    pub last_failure: Option<String>,
    /// Queued workloads dropped because an earlier one failed or the queue was reset.
    pub cancelled: u64,
    /// Workloads refused before they were queued (scanner rejections, a hung queue), by reason.
    pub rejections: BTreeMap<String, u64>,
    /// Engine time used, ns, per engine index.
    pub engine_ns: [u64; 5],
    /// Bytes scanned (copied from guest memory and audited) for accepted workloads.
    pub scanned_bytes: u64,
    /// Wall time spent inside the host backend, ns (what "engine time excluded" subtracts): a
    /// job's run, without the mediation work the job reports in it
    /// ([`RunReport::mediation_ns`](crate::host::RunReport)).
    pub host_wall_ns: u64,
    /// Submission-to-completion latencies, ns (the first 2^20).
    pub latencies_ns: Vec<u64>,
    /// Submission-to-completion latencies in engine time (the engine's busy time that passed), ns
    /// (the first 2^20): what the vGPU waited for the engine, whatever the host's wall clock.
    pub engine_latencies_ns: Vec<u64>,
    /// Times a workload was preempted at the end of the vGPU's slice (and resumed later).
    pub preemptions: u64,
    /// Register accesses of non-privileged batches the copies dropped, as the hardware would
    /// have, by register and direction.
    pub dropped_accesses: BTreeMap<(u32, RegAccess), u64>,
    /// Every dropped access, including those of registers past the map's bound.
    pub dropped_total: u64,
    /// Commands of non-privileged batches the copies dropped as the hardware refuses them
    /// (privileged commands, global-GTT accesses).
    pub dropped_commands: u64,
}

impl VgpuStats {
    pub(crate) fn latency(&mut self, ns: u64) {
        if self.latencies_ns.len() < MAX_SAMPLES {
            self.latencies_ns.push(ns);
        }
    }

    pub(crate) fn engine_latency(&mut self, ns: u64) {
        if self.engine_latencies_ns.len() < MAX_SAMPLES {
            self.engine_latencies_ns.push(ns);
        }
    }

    /// Records what a workload's copy dropped: `total` register accesses (`listed` by kind) and
    /// `commands` whole commands.
    pub fn dropped(&mut self, listed: &[DroppedAccess], total: u64, commands: u64) {
        self.dropped_total = self.dropped_total.saturating_add(total);
        self.dropped_commands = self.dropped_commands.saturating_add(commands);
        for d in listed {
            let key = (d.reg, d.access);
            if let Some(n) = self.dropped_accesses.get_mut(&key) {
                *n = n.saturating_add(d.count);
            } else if self.dropped_accesses.len() < MAX_DROPPED_KINDS {
                self.dropped_accesses.insert(key, d.count);
            }
        }
    }

    /// Records a workload refused before queueing.
    pub fn reject(&mut self, reason: &str) {
        *self.rejections.entry(reason.to_string()).or_insert(0) += 1;
    }

    /// Engine time over every engine, ns.
    pub fn total_engine_ns(&self) -> u64 {
        self.engine_ns.iter().sum()
    }

    /// The `p`-th percentile latency (0..=100), ns.
    pub fn latency_percentile(&self, p: f64) -> Option<u64> {
        percentile(&self.latencies_ns, p)
    }

    /// The `p`-th percentile latency in engine time (0..=100), ns.
    pub fn engine_latency_percentile(&self, p: f64) -> Option<u64> {
        percentile(&self.engine_latencies_ns, p)
    }
}

fn percentile(samples: &[u64], p: f64) -> Option<u64> {
    let mut v = samples.to_vec();
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let i = ((p.clamp(0.0, 100.0) / 100.0) * (v.len() - 1) as f64).round() as usize;
    v.get(i).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut s = VgpuStats::default();
        assert_eq!(s.latency_percentile(50.0), None);
        for i in 1..=100 {
            s.latency(i);
        }
        assert_eq!(s.latency_percentile(50.0), Some(51));
        assert_eq!(s.latency_percentile(99.0), Some(99));
        assert_eq!(s.latency_percentile(0.0), Some(1));
        s.reject("scan");
        s.reject("scan");
        assert_eq!(s.rejections.get("scan"), Some(&2));
    }
}
