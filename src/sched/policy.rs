//! The weighted time-slice policy of one engine, in engine time.
//!
//! As GVT-g's time-based scheduler: every balance period (100 ms of engine time) each vGPU is
//! allocated `period × weight / Σ weights`; its remaining time (`left`) carries credit and debt
//! from one period to the next, and every tenth period credit starts afresh (debt is carried). The vGPU with work that has
//! the most credit per unit of weight (least recently picked on ties) is picked and keeps the
//! engine for a time slice while it has work and credit. Unlike GVT-g it is per engine and
//! work-conserving: a vGPU with work runs even when nobody has credit left, instead of the engine
//! idling until the next balance (GVT-g picks among vGPUs with credit only).
//! Credit is capped at two allocations (an idle vGPU cannot hoard) and debt at as many
//! allocations as cover the longest run that cannot be preempted, at least two (a vGPU that ran
//! alone is not starved for long once others wake, and a run past the slice is charged in full).

use std::collections::VecDeque;

/// Identifies a vGPU to the scheduler.
pub type VgpuId = u32;

/// Least common multiple of the weights, so credit per unit of weight compares exactly.
const WEIGHT_LCM: i128 = 720_720;

/// Weights a vGPU may have.
pub const WEIGHTS: std::ops::RangeInclusive<u8> = 1..=16;

/// Policy parameters, in ns of engine time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Balance period.
    pub period_ns: u64,
    /// Periods per full reset of the carried credit and debt.
    pub stages: u32,
    /// Time slice: how long the picked vGPU keeps the engine while it has work and credit.
    pub slice_ns: u64,
    /// The longest a job may run in one go (the hang timeout): debt bounds are at least this
    /// plus a slice, so a run that could not be preempted is charged in full.
    pub max_run_ns: u64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig { period_ns: 100_000_000, stages: 10, slice_ns: 1_000_000, max_run_ns: 50_000_000 }
    }
}

#[derive(Clone, Copy, Debug)]
struct Share {
    id: VgpuId,
    weight: u8,
    left: i64,
    alloc: i64,
    /// How far into debt `left` may go.
    debt_bound: i64,
}

/// The policy state of one engine.
#[derive(Clone, Debug)]
pub struct Policy {
    cfg: PolicyConfig,
    /// In least-recently-picked order.
    lru: VecDeque<Share>,
    current: Option<VgpuId>,
    slice_used: u64,
    period_used: u64,
    stage: u32,
}

impl Policy {
    /// An empty policy.
    pub fn new(cfg: PolicyConfig) -> Self {
        Policy { cfg, lru: VecDeque::new(), current: None, slice_used: 0, period_used: 0, stage: 0 }
    }

    /// Adds a vGPU (weight clamped to 1..=16); allocations are recomputed.
    pub fn add(&mut self, id: VgpuId, weight: u8) {
        if self.lru.iter().all(|s| s.id != id) {
            let weight = weight.clamp(*WEIGHTS.start(), *WEIGHTS.end());
            self.lru.push_front(Share { id, weight, left: 0, alloc: 0, debt_bound: 0 });
            self.reallocate();
        }
    }

    /// Removes a vGPU.
    pub fn remove(&mut self, id: VgpuId) {
        self.lru.retain(|s| s.id != id);
        if self.current == Some(id) {
            self.current = None;
        }
        self.reallocate();
    }

    /// Changes a vGPU's weight.
    pub fn set_weight(&mut self, id: VgpuId, weight: u8) {
        if let Some(s) = self.lru.iter_mut().find(|s| s.id == id) {
            s.weight = weight.clamp(*WEIGHTS.start(), *WEIGHTS.end());
        }
        self.reallocate();
    }

    /// New allocations after a membership or weight change; credit and debt carry over.
    ///
    /// Debt is bounded at the same number of allocations for everyone (so vGPUs in debt together
    /// stay in proportion to their weights), at least two, and enough that the smallest bound
    /// still covers the longest run that cannot be preempted plus a slice: a bound below one run
    /// would forgive most of it at the next balance.
    fn reallocate(&mut self) {
        let total: i64 = self.lru.iter().map(|s| i64::from(s.weight)).sum();
        let period = i64::try_from(self.cfg.period_ns).unwrap_or(i64::MAX);
        for s in self.lru.iter_mut() {
            s.alloc = period / total.max(1) * i64::from(s.weight);
        }
        let run = self.cfg.max_run_ns.saturating_add(self.cfg.slice_ns);
        let run = i64::try_from(run).unwrap_or(i64::MAX);
        let smallest = self.lru.iter().map(|s| s.alloc).min().unwrap_or(1).max(1);
        let allocations = ((run + smallest - 1) / smallest).max(2);
        for s in self.lru.iter_mut() {
            s.debt_bound = s.alloc.saturating_mul(allocations);
        }
    }

    /// The vGPU that runs next among those `has_work` says have work.
    pub fn pick(&mut self, has_work: impl Fn(VgpuId) -> bool) -> Option<VgpuId> {
        if let Some(cur) = self.current {
            let keep = self.slice_used < self.cfg.slice_ns
                && has_work(cur)
                && self.lru.iter().any(|s| s.id == cur && s.left > 0);
            if keep {
                return Some(cur);
            }
        }
        // The most credit (least debt) per unit of weight, least recently picked first on ties.
        let pos = self
            .lru
            .iter()
            .enumerate()
            .filter(|(_, s)| has_work(s.id))
            .min_by_key(|(_, s)| -(i128::from(s.left) * WEIGHT_LCM / i128::from(s.weight)))
            .map(|(i, _)| i)?;
        let s = self.lru.remove(pos)?;
        self.lru.push_back(s);
        // Picked by credit: a new slice, also for the vGPU whose slice just ended if it still
        // has the most credit (else it would be preempted at its first preemption point).
        self.slice_used = 0;
        self.current = Some(s.id);
        Some(s.id)
    }

    /// Charges `ns` of engine time to `id`; balances at period ends.
    pub fn charge(&mut self, id: VgpuId, ns: u64) {
        let ns_i = i64::try_from(ns).unwrap_or(i64::MAX);
        if let Some(s) = self.lru.iter_mut().find(|s| s.id == id) {
            s.left = s.left.saturating_sub(ns_i);
        }
        self.slice_used = self.slice_used.saturating_add(ns);
        self.period_used = self.period_used.saturating_add(ns);
        let period = self.cfg.period_ns.max(1);
        let periods = self.period_used / period;
        self.period_used %= period;
        // Past a full cycle of stages the allocations start over: skip whole cycles (a job far
        // longer than a period must not make this loop long).
        let stages = u64::from(self.cfg.stages.max(1));
        let skip = periods.saturating_sub(stages) / stages * stages;
        for _ in skip..periods {
            self.balance();
        }
    }

    /// A period ended: each vGPU gets its allocation on top of what it has left, credit capped at
    /// two allocations and debt at the same number of allocations for everyone (bounds in
    /// proportion to the weight, so vGPUs in debt together, having used an idle one's time, stay
    /// in proportion to their weights; see [`Policy::reallocate`]).
    fn balance(&mut self) {
        self.stage = (self.stage + 1) % self.cfg.stages.max(1);
        for s in self.lru.iter_mut() {
            let credit = s.alloc.saturating_mul(2);
            // Every `stages` periods credit starts afresh; debt is carried (within its bound), or
            // a vGPU could run one long job per cycle on debt the cycle forgives.
            let carried = if self.stage == 0 { s.left.min(0) } else { s.left };
            s.left = carried.saturating_add(s.alloc).clamp(s.debt_bound.saturating_neg(), credit.max(0));
        }
    }

    /// Ends the current slice: the next pick chooses by credit again.
    pub fn end_slice(&mut self) {
        self.slice_used = self.cfg.slice_ns;
    }

    /// What is left of `id`'s time slice, ns: the rest of the current slice if `id` holds the
    /// engine, a whole slice otherwise.
    pub fn slice_left(&self, id: VgpuId) -> u64 {
        if self.current == Some(id) {
            self.cfg.slice_ns.saturating_sub(self.slice_used)
        } else {
            self.cfg.slice_ns
        }
    }

    /// The vGPU picked last.
    pub fn current(&self) -> Option<VgpuId> {
        self.current
    }

    /// `(id, weight, left)` of each vGPU, for statistics.
    pub fn shares(&self) -> Vec<(VgpuId, u8, i64)> {
        self.lru.iter().map(|s| (s.id, s.weight, s.left)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Runs saturated vGPUs with the given weights and workload sizes for `total` ns; returns
    /// each one's share of engine time.
    fn simulate(weights: &[u8], job_ns: &[u64], total: u64, busy: impl Fn(usize, u64) -> bool) -> Vec<f64> {
        simulate_with(PolicyConfig::default(), weights, job_ns, total, busy)
    }

    fn simulate_with(
        cfg: PolicyConfig,
        weights: &[u8],
        job_ns: &[u64],
        total: u64,
        busy: impl Fn(usize, u64) -> bool,
    ) -> Vec<f64> {
        let mut p = Policy::new(cfg);
        for (i, &w) in weights.iter().enumerate() {
            p.add(i as VgpuId, w);
        }
        let mut used = vec![0u64; weights.len()];
        let mut now = 0;
        while now < total {
            let Some(id) = p.pick(|id| busy(id as usize, now)) else {
                now += 1000;
                continue;
            };
            let ns = job_ns[id as usize];
            p.charge(id, ns);
            used[id as usize] += ns;
            now += ns;
        }
        let sum: u64 = used.iter().sum();
        used.iter().map(|&u| u as f64 / sum as f64).collect()
    }

    #[test]
    fn weights_1_2_4_8_become_shares() {
        let shares = simulate(&[1, 2, 4, 8], &[100_000, 130_000, 70_000, 250_000], 3_000_000_000, |_, _| true);
        for (s, w) in shares.iter().zip([1.0, 2.0, 4.0, 8.0]) {
            let target = w / 15.0;
            assert!((s - target).abs() / target < 0.02, "{shares:?}");
        }
    }

    #[test]
    fn one_busy_among_idle_keeps_the_engine() {
        let mut p = Policy::new(PolicyConfig::default());
        for i in 0..8 {
            p.add(i, 4);
        }
        for _ in 0..10_000 {
            assert_eq!(p.pick(|id| id == 3), Some(3));
            p.charge(3, 100_000);
        }
    }

    #[test]
    fn a_waking_vgpu_gets_its_share_soon() {
        // vGPU 1 idles for 2 s while 0 runs alone, then both are busy: 1 must not wait out 0's
        // debt for long, nor monopolise the engine with hoarded credit.
        let shares = simulate(&[1, 1], &[50_000, 50_000], 4_000_000_000, |id, now| id == 0 || now > 2_000_000_000);
        assert!(shares[1] > 0.4 * 0.5 && shares[1] < 0.5, "{shares:?}");
    }

    #[test]
    fn a_slice_that_ended_early_is_over_and_a_repick_gets_a_whole_one() {
        let mut p = Policy::new(PolicyConfig::default());
        p.add(1, 8);
        p.add(2, 1);
        // vGPU 2 ran 10 ms before: vGPU 1 has the most credit.
        p.charge(2, 10_000_000);
        assert_eq!(p.pick(|_| true), Some(1));
        p.charge(1, 100_000);
        // Preempted by the wall clock after 0.1 ms of engine time: the slice is over...
        p.end_slice();
        assert_eq!(p.slice_left(1), 0);
        // ...and vGPU 1, still with the most credit per weight, is picked with a new one.
        assert_eq!(p.pick(|_| true), Some(1));
        assert_eq!(p.slice_left(1), PolicyConfig::default().slice_ns);
    }

    #[test]
    fn an_idle_heavy_weights_time_is_shared_by_weight() {
        // vGPU 2 (weight 8 of 16) never has work: the busy ones share the engine 2:4:2, whatever
        // debt they ran up using its allocation.
        let shares = simulate(&[2, 4, 8, 2], &[60_000, 90_000, 50_000, 40_000], 4_000_000_000, |id, _| id != 2);
        for (s, target) in shares.iter().zip([0.25, 0.5, 0.0, 0.25]) {
            assert!((s - target).abs() < 0.01, "{shares:?}");
        }
    }

    #[test]
    fn runs_that_cannot_be_preempted_are_charged_in_full() {
        // A weight-1 vGPU whose jobs run 50 ms in one go (the hang timeout: arbitration held off,
        // a hang) beside a busy weight-16 one: its debt must cover a whole run, or each balance
        // forgives most of one and it gets several times its share.
        let cfg = PolicyConfig { max_run_ns: 50_000_000, ..PolicyConfig::default() };
        for others in [1usize, 3] {
            let mut weights = vec![1u8];
            weights.extend(std::iter::repeat_n(16, others));
            let mut jobs = vec![50_000_000u64];
            jobs.extend(std::iter::repeat_n(50_000, others));
            let shares = simulate_with(cfg, &weights, &jobs, 6_000_000_000, |_, _| true);
            let target = 1.0 / (1.0 + 16.0 * others as f64);
            assert!(shares[0] < target + 0.02, "{shares:?} (target {target:.3})");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Any weights and workload sizes up to a tenth of a slice: shares within 2% of the weights.
        #[test]
        fn shares_follow_weights(ws in proptest::collection::vec(1u8..=16, 2..6), seed in 1u64..1000) {
            let jobs: Vec<u64> = (0..ws.len()).map(|i| 20_000 + (seed * (i as u64 + 7) * 7919) % 80_000).collect();
            let shares = simulate(&ws, &jobs, 2_000_000_000, |_, _| true);
            let total: f64 = ws.iter().map(|&w| f64::from(w)).sum();
            for (s, &w) in shares.iter().zip(&ws) {
                let target = f64::from(w) / total;
                prop_assert!((s - target).abs() < 0.02 * target.max(0.05), "{:?} {:?}", ws, shares);
            }
        }
    }
}
