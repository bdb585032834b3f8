//! Command mixes shaped like what real user-mode drivers emit, for benchmarks, the demo and tests:
//! a Mesa iris-like 3D draw sequence, a blitter mix and a media (AVC decode) mix. Every command is
//! taken from the Gen9 table by name, so the mixes stay valid as the table evolves.

use super::emit::{CmdBuf, PostSync};
use super::image::{GmImage, ImageError};
use super::memory::AddrSpace;
use super::scan::{RingSpec, ScanLimits, ScanParams};
use super::table::{CommandTable, Length};
use crate::cmd::{GmRange, GmWindows};
use crate::hw::{Engine, Gen};

/// Appends the command `name` with `len` total dwords (its usual length when `None`), filling the
/// payload with a recognisable pattern. Unknown names are skipped.
pub fn command(buf: &mut CmdBuf, name: &str, len: Option<u32>) {
    let Some(d) = CommandTable::for_gen(Gen::Gen9).by_name(name) else { return };
    let (dw0, total) = match (d.length, len) {
        (Length::Fixed(n), _) => (d.header_value, u32::from(n)),
        (Length::Field { mask, bias }, want) => {
            let total = want.unwrap_or(u32::from(d.nominal)).max(bias);
            (d.header_value | ((total - bias) & mask), ((total - bias) & mask) + bias)
        }
    };
    buf.dwords.push(dw0);
    let start = buf.dwords.len() as u32;
    buf.dwords.extend((start..start + total - 1).map(|i| i.wrapping_mul(0x9e37_79b9) & 0xffff_fff0));
}

/// One draw call's worth of state and a 3DPRIMITIVE of 1,536 vertices, as Mesa's iris emits on
/// Gen9.
pub fn draw(buf: &mut CmdBuf) {
    draw_of(buf, 1536);
}

/// [`draw`] with a triangle list of `vertices` vertices.
pub fn draw_of(buf: &mut CmdBuf, vertices: u32) {
    for (name, len) in [
        ("3DSTATE_VERTEX_BUFFERS", Some(1 + 4 * 3)),
        ("3DSTATE_VERTEX_ELEMENTS", Some(1 + 2 * 3)),
        ("3DSTATE_VF", None),
        ("3DSTATE_VF_TOPOLOGY", None),
        ("3DSTATE_INDEX_BUFFER", None),
        ("3DSTATE_CONSTANT_VS", None),
        ("3DSTATE_CONSTANT_PS", None),
        ("3DSTATE_BINDING_TABLE_POINTERS_VS", None),
        ("3DSTATE_BINDING_TABLE_POINTERS_PS", None),
        ("3DSTATE_SAMPLER_STATE_POINTERS_PS", None),
        ("3DSTATE_VS", None),
        ("3DSTATE_PS", None),
        ("3DSTATE_PS_EXTRA", None),
        ("3DSTATE_PS_BLEND", None),
        ("3DSTATE_WM", None),
        ("3DSTATE_BLEND_STATE_POINTERS", None),
        ("3DSTATE_CC_STATE_POINTERS", None),
        ("3DSTATE_VIEWPORT_STATE_POINTERS_CC", None),
        ("3DSTATE_SCISSOR_STATE_POINTERS", None),
        ("3DSTATE_SBE", None),
        ("3DSTATE_SF", None),
        ("3DSTATE_RASTER", None),
        ("3DSTATE_CLIP", None),
        ("3DSTATE_STREAMOUT", None),
    ] {
        command(buf, name, len);
    }
    // 3DPRIMITIVE: a triangle list, one instance.
    command(buf, "3DPRIMITIVE", None);
    let n = buf.dwords.len();
    if let Some(p) = buf.dwords.get_mut(n.saturating_sub(6)..) {
        p.copy_from_slice(&[0x4, vertices, 0, 1, 0, 0]);
    }
}

/// A render batch: STATE_BASE_ADDRESS, `draws` draw calls with a PIPE_CONTROL every 16, a final
/// PPGTT post-sync write and MI_BATCH_BUFFER_END.
pub fn render_batch(draws: usize) -> CmdBuf {
    render_batch_to(draws, 0x7fff_0000)
}

/// [`render_batch`] with its final post-sync write to PPGTT address `done`.
pub fn render_batch_to(draws: usize, done: u64) -> CmdBuf {
    render_batch_with(draws, 1536, done)
}

/// [`render_batch_to`] with draws of `vertices` vertices each: heavy draws make a long batch (on
/// the software GPU each vertex costs `CostModel::vertex_ns`).
pub fn render_batch_with(draws: usize, vertices: u32, done: u64) -> CmdBuf {
    let mut b = CmdBuf::new();
    b.pipe_control(1 << 20, PostSync::None, AddrSpace::Ppgtt, 0, 0, false);
    command(&mut b, "STATE_BASE_ADDRESS", None);
    command(&mut b, "3DSTATE_DEPTH_BUFFER", None);
    for i in 0..draws {
        draw_of(&mut b, vertices);
        if i % 16 == 15 {
            b.pipe_control(1 << 12 | 1 << 20, PostSync::None, AddrSpace::Ppgtt, 0, 0, false);
        }
    }
    b.pipe_control(1 << 20, PostSync::WriteImmediate, AddrSpace::Ppgtt, done, 1, false);
    b.bb_end();
    b
}

/// A blitter batch of `n` copy/fill groups on PPGTT surfaces starting at `base`.
pub fn blit_batch(n: usize, base: u64) -> CmdBuf {
    let mut b = CmdBuf::new();
    for i in 0..n as u64 {
        let dst = base + (i % 64) * 0x1_0000;
        b.xy_src_copy(dst, 1024, dst + 0x40_0000, 1024, 256, 64);
        b.xy_color(dst + 0x8000, 1024, 256, 16, 0xff00_00ff);
        b.xy_fast_copy(dst + 0x80_0000, 1024, dst, 1024, 256, 64);
        b.flush_dw(PostSync::WriteImmediate, AddrSpace::Ppgtt, base + 0x100_0000, i, false, false);
    }
    b.bb_end();
    b
}

/// A video batch of `n` AVC slice decodes with their picture state, as a media driver emits on VCS.
pub fn media_batch(n: usize) -> CmdBuf {
    media_batch_to(n, 0x7fff_0000)
}

/// [`media_batch`] with its final flush's post-sync write to PPGTT address `done`.
pub fn media_batch_to(n: usize, done: u64) -> CmdBuf {
    let mut b = CmdBuf::new();
    for (name, len) in [
        ("MFX_PIPE_MODE_SELECT", None),
        ("MFX_SURFACE_STATE", None),
        ("MFX_PIPE_BUF_ADDR_STATE", None),
        ("MFX_IND_OBJ_BASE_ADDR_STATE", None),
        ("MFX_BSP_BUF_BASE_ADDR_STATE", None),
        ("MFX_AVC_IMG_STATE", None),
        ("MFX_QM_STATE", None),
    ] {
        command(&mut b, name, len);
    }
    for _ in 0..n {
        for name in ["MFX_AVC_REF_IDX_STATE", "MFX_AVC_WEIGHTOFFSET_STATE", "MFX_AVC_SLICE_STATE", "MFD_AVC_BSD_OBJECT"]
        {
            command(&mut b, name, None);
        }
    }
    b.flush_dw(PostSync::WriteImmediate, AddrSpace::Ppgtt, done, 1, false, false);
    b.bb_end();
    b
}

/// GGTT address of the ring [`single_batch`] builds.
pub const RING_GMA: u64 = 0x10_0000;
/// PPGTT address of the batch [`single_batch`] places.
pub const BATCH_GMA: u64 = 0x1_0000_0000;

/// A guest image whose ring starts one PPGTT batch, `batch`, as a user-mode driver's submission
/// does, with the scan parameters for `engine` (Gen9, 16 MiB aperture window, PPGTT surfaces).
pub fn single_batch(engine: Engine, batch: &CmdBuf) -> Result<(GmImage, ScanParams), ImageError> {
    let mut ring = CmdBuf::new();
    ring.bb_start(AddrSpace::Ppgtt, BATCH_GMA, false).align_qword();
    let img = GmImage::builder()
        .place_dwords(AddrSpace::Ggtt, RING_GMA, &ring.dwords)
        .place_dwords(AddrSpace::Ppgtt, BATCH_GMA, &batch.dwords)
        .build()?;
    let params = ScanParams {
        gen: Gen::Gen9,
        engine,
        windows: GmWindows { aperture: GmRange::new(RING_GMA, 0x100_0000), hidden: GmRange::default() },
        ring: RingSpec { start: RING_GMA, size: 4096, head: 0, tail: ring.len_bytes() as u32 },
        surfaces: AddrSpace::Ppgtt,
        hwsp: None,
        limits: ScanLimits::default(),
    };
    Ok((img, params))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::scan_ring;

    fn accepted(engine: Engine, batch: &CmdBuf) -> crate::cmd::ScannedWorkload {
        let (img, p) = single_batch(engine, batch).unwrap();
        scan_ring(&img.mem, &img.xlate, &p, &mut ()).unwrap()
    }

    #[test]
    fn mixes_are_accepted_and_complete() {
        let r = accepted(Engine::Rcs, &render_batch(32));
        assert_eq!(r.batches[0].dwords.len(), render_batch(32).dwords.len());
        assert!(r.stats.commands > 32 * 25);
        let b = accepted(Engine::Bcs, &blit_batch(8, 0x2_0000_0000));
        assert_eq!(b.stats.commands, 1 + 8 * 4 + 1);
        let m = accepted(Engine::Vcs, &media_batch(4));
        assert_eq!(m.stats.commands, 1 + 7 + 4 * 4 + 2);
        let heavy = render_batch_with(4, 240_000, 0x2_0000_0000);
        assert_eq!(
            accepted(Engine::Rcs, &heavy).stats.commands,
            accepted(Engine::Rcs, &render_batch(4)).stats.commands
        );
        let draws: Vec<u32> = heavy.dwords.windows(3).filter(|w| w[0] == 0x7b00_0005).map(|w| w[2]).collect();
        assert_eq!(draws, [240_000; 4]);
    }
}
