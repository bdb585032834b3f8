//! The walk over commands that need nothing but their length, with periodic prediction.
//!
//! A command's position depends on the previous command's length, so a plain walk is one chain of
//! dependent loads (load dword 0, mask the length, add, load the next): about 7 cycles per command
//! whatever the CPU's width. Real batches repeat themselves: a driver emits the same sequence of
//! state commands, with the same headers, for every draw or slice. When the header at the current
//! position was seen before in this scan, the walk expects the commands that followed it then to
//! follow again: their positions come from the remembered headers, not from the loads, so the loads
//! that verify them are independent and overlap. A remembered header was taken by the plain rule
//! before, so a dword equal to it is the same command with the same length; a mismatch ends the
//! prediction and the plain walk resumes there. The result is exactly the plain walk's
//! ([`walk_sequential`]); tests compare the two.

use super::table::FastTable;

/// What a fast walk found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Walked {
    /// Position (dword index) of the first command the fast walk does not take, or the buffer end.
    pub end: usize,
    /// Commands walked over, MI_NOOP excluded.
    pub commands: u64,
    /// MI_NOOP dwords walked over.
    pub noops: u64,
}

/// Which commands the fast walk takes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rule {
    /// The engine's fast table.
    pub ft: FastTable,
    /// Entry bits that must equal `want`.
    pub want_mask: u32,
    /// Their required value.
    pub want: u32,
}

impl Rule {
    /// Length of the command at `p` if the fast walk takes it: an MI_NOOP, or a command of the
    /// table's type whose entry says it needs no audit and follows the length rule, ending inside
    /// the buffer.
    #[inline(always)]
    fn step(&self, dw: &[u32], p: usize) -> Option<usize> {
        let dw0 = *dw.get(p)?;
        if dw0 == 0 {
            return Some(1);
        }
        let len = self.len_of(dw0);
        let e = self.ft.table.get(((dw0 >> self.ft.shift) & self.ft.key_mask) as usize).copied().unwrap_or(0);
        let end = p.checked_add(len)?;
        (dw0 >> 29 == self.ft.ty && e & self.want_mask == self.want && end <= dw.len()).then_some(len)
    }

    /// Length of a header this rule took before.
    #[inline(always)]
    fn len_of(&self, dw0: u32) -> usize {
        if dw0 == 0 {
            1
        } else {
            ((dw0 & self.ft.len_mask) + 2) as usize
        }
    }
}

fn tally(out: &mut Walked, head: u32) {
    if head == 0 {
        out.noops += 1;
    } else {
        out.commands += 1;
    }
}

/// The plain walk: the reference [`walk`] must agree with.
#[cfg(test)]
pub(crate) fn walk_sequential(rule: &Rule, dw: &[u32], start: usize) -> Walked {
    let mut out = Walked { end: start, ..Walked::default() };
    while let Some(len) = rule.step(dw, out.end) {
        let p = out.end;
        tally(&mut out, dw.get(p).copied().unwrap_or(0));
        out.end = p + len;
    }
    out
}

/// Longest remembered history; older headers are dropped in blocks.
const HISTORY: usize = 4096;
/// Entries a new history has room for.
const INITIAL: usize = 64;
/// Slots of the last-seen index.
const SLOTS: usize = 256;

/// Memory of the fast walks of one scan: the headers taken and their lengths, and where each header
/// was last seen.
pub(crate) struct History {
    /// (header, length) of each command taken.
    taken: Vec<(u32, u32)>,
    /// `noops[i]`: how many of `taken[..i]` are MI_NOOP; one entry more than `taken`.
    noops: Vec<u32>,
    last: [u32; SLOTS],
}

impl History {
    /// Empty history, with room for a typical repeated sequence (a draw's state commands); it
    /// grows further only as far as a scan's fast walks take commands.
    pub(crate) fn new() -> History {
        let mut noops = Vec::with_capacity(INITIAL + 1);
        noops.push(0);
        History { taken: Vec::with_capacity(INITIAL), noops, last: [0; SLOTS] }
    }

    fn clear(&mut self) {
        // `last` may keep stale indices: `seen` checks them against the current headers.
        self.taken.clear();
        self.noops.truncate(1);
    }

    fn slot(head: u32) -> usize {
        ((head ^ head >> 13 ^ head >> 24) as usize) % SLOTS
    }

    fn push(&mut self, head: u32, len: usize) {
        if self.taken.len() >= HISTORY {
            self.clear();
        }
        if let Some(s) = self.last.get_mut(Self::slot(head)) {
            *s = self.taken.len() as u32;
        }
        let zeros = self.noops.last().copied().unwrap_or(0) + u32::from(head == 0);
        self.taken.push((head, len as u32));
        self.noops.push(zeros);
    }

    /// An index where `head` was taken, if one is remembered.
    fn seen(&self, head: u32) -> Option<usize> {
        let i = *self.last.get(Self::slot(head))? as usize;
        (self.taken.get(i).map(|t| t.0) == Some(head)).then_some(i)
    }
}

/// Walks from `start` over every command the fast walk takes; same result as [`walk_sequential`].
///
/// `h` must only ever have been used with the same `rule`: a remembered header is one the rule
/// took, and its length under the rule. It may carry over between calls and buffers of one scan.
pub(crate) fn walk(rule: &Rule, dw: &[u32], start: usize, h: &mut History) -> Walked {
    let mut out = Walked { end: start, ..Walked::default() };
    let mut p = start;
    while let Some(&head) = dw.get(p) {
        if head == 0 {
            // A run of MI_NOOP (padding, zeroed pages): counted in one pass, kept out of the
            // history so it neither evicts the commands worth predicting nor costs a prediction
            // per dword.
            let run = dw.get(p..).map_or(0, |rest| rest.iter().position(|&d| d != 0).unwrap_or(rest.len()));
            out.noops += run as u64;
            p += run;
            continue;
        }
        if let Some(j) = h.seen(head) {
            // Expect the commands that followed `head` then to follow now: their positions come
            // from the remembered lengths; each is verified against the buffer. The history is
            // not extended, so the same stretch serves as the prediction again next time.
            let mut q = p;
            let mut n = 0;
            for &(e, len) in h.taken.get(j..).unwrap_or(&[]) {
                let end = q + len as usize;
                if end > dw.len() || dw.get(q) != Some(&e) {
                    break;
                }
                q = end;
                n += 1;
            }
            // taken[j..j + n] are the real commands at p..q; n >= 1 since taken[j] is `head`.
            if n > 0 {
                let zeros = |i: usize| u64::from(h.noops.get(i).copied().unwrap_or(0));
                let noops = zeros(j + n) - zeros(j);
                out.noops += noops;
                out.commands += n as u64 - noops;
                p = q;
                continue;
            }
        }
        let Some(len) = rule.step(dw, p) else { break };
        tally(&mut out, head);
        h.push(head, len);
        p += len;
    }
    out.end = p;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::table::{CommandTable, ENTRY_FAST};
    use crate::hw::{Engine, Gen};
    use proptest::prelude::*;

    fn rule(engine: Engine) -> Rule {
        let ft = CommandTable::for_gen(Gen::Gen9).fast_table(engine);
        Rule { ft, want_mask: ENTRY_FAST | ft.rule, want: ENTRY_FAST | ft.rule }
    }

    /// Repetitive streams of real commands with random payloads, variations in lengths and
    /// headers, MI_NOOP runs, and optionally one command the fast walk does not take.
    fn stream() -> impl Strategy<Value = Vec<u32>> {
        let piece = prop_oneof![
            8 => (0u32..4, any::<u32>()).prop_map(|(n, x)| {
                let mut v = vec![0x7808_0000 | n];
                v.resize(n as usize + 2, x);
                v
            }),
            3 => prop::collection::vec(any::<u32>(), 6).prop_map(|p| [vec![0x7b00_0005], p].concat()),
            1 => (1usize..4).prop_map(|n| vec![0; n]),
        ];
        let pattern = prop::collection::vec(piece, 1..30);
        let stopper = prop_oneof![Just(vec![0x7a00_0004, 0, 0, 0, 0, 0]), any::<u32>().prop_map(|x| vec![x | 1 << 31])];
        (
            pattern,
            0usize..60,
            prop::collection::vec((any::<prop::sample::Index>(), 0u32..4), 0..4),
            prop::option::of((any::<prop::sample::Index>(), stopper)),
        )
            .prop_map(|(pattern, reps, tweaks, stop)| {
                let mut pieces: Vec<Vec<u32>> = Vec::new();
                for _ in 0..reps {
                    pieces.extend(pattern.iter().cloned());
                }
                // Break the period here and there: a different length field in one command.
                for (at, n) in tweaks {
                    if !pieces.is_empty() {
                        let k = at.index(pieces.len());
                        pieces[k] = {
                            let mut v = vec![0x7808_0000 | n];
                            v.resize(n as usize + 2, 7);
                            v
                        };
                    }
                }
                if let Some((at, s)) = stop {
                    let k = at.index(pieces.len() + 1);
                    pieces.insert(k, s);
                }
                pieces.concat()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        #[test]
        fn predicted_walk_equals_sequential(dw in stream(), start in 0usize..16, cut in 0usize..64) {
            let r = rule(Engine::Rcs);
            let dw = &dw[..dw.len().saturating_sub(cut)];
            let start = start.min(dw.len());
            let mut h = History::new();
            prop_assert_eq!(walk(&r, dw, start, &mut h), walk_sequential(&r, dw, start));
            // Again with the history of the first walk, as the scanner keeps it between walks.
            let tail = (start + 7).min(dw.len());
            prop_assert_eq!(walk(&r, dw, tail, &mut h), walk_sequential(&r, dw, tail));
        }
    }

    #[test]
    fn periodic_stream_with_a_break() {
        let r = rule(Engine::Rcs);
        let mut dw = Vec::new();
        for i in 0..5000u32 {
            dw.extend([0x7b00_0005, i, i, i, i, i, i]);
            dw.extend([0x780a_0000, 0xffff_ffff]);
        }
        let mut h = History::new();
        let w = walk(&r, &dw, 0, &mut h);
        assert_eq!(w, walk_sequential(&r, &dw, 0));
        assert_eq!((w.end, w.commands), (dw.len(), 10_000));
        // Same header, different length field: the prediction must not carry over it.
        dw[9 * 2000 + 7] = 0x780a_0001;
        assert_eq!(walk(&r, &dw, 0, &mut h), walk_sequential(&r, &dw, 0));
        dw[9 * 2000 + 7] = 0x780a_0000;
        dw[9 * 3000] = 0x1100_0001;
        assert_eq!(walk(&r, &dw, 0, &mut h).end, 9 * 3000);
        assert_eq!(walk(&r, &dw, 0, &mut h), walk_sequential(&r, &dw, 0));
    }
}
