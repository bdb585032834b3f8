//! Test support: running hand-made command streams (no guest, no scan) on a backend.

use crate::cmd::emit::CmdBuf;
use crate::cmd::ScannedWorkload;
use crate::context::image::idx;
use crate::context::ShadowContext;
use crate::host::EngineLayout;

/// Points `ctx`'s ring registers at `layout`'s shadow ring holding `ring` (padded to a qword) from
/// offset 0, as populate does, and returns the workload whose ring that is.
pub(crate) fn ring_workload(ctx: &mut ShadowContext, layout: &EngineLayout, ring: &CmdBuf) -> ScannedWorkload {
    let mut ring = ring.clone();
    ring.align_qword();
    for (i, v) in [
        (idx::RING_START, layout.ring_start as u32),
        (idx::RING_HEAD, 0),
        (idx::RING_TAIL, ring.len_bytes() as u32),
        (idx::RING_CTL, ((layout.ring_size / 4096 - 1) << 12) | 1),
    ] {
        if let Some(d) = ctx.image_dword_mut(1024 + i) {
            *d = v;
        }
    }
    ScannedWorkload::host_ring(ring.dwords)
}
