//! The blitter: XY_SRC_COPY_BLT, XY_COLOR_BLT and XY_FAST_COPY_BLT on linear surfaces, through the
//! context's address space (the PPGTT when the context has one, as for every execlist context).
//! Tiled surfaces are not modelled: such a blit costs its engine time and writes nothing, and is
//! counted in the report. Raster operations other than copy are executed as copy.

use super::exec::{Exec, Stop};
use super::memory::MemView;
use crate::cmd::table::BlitKind;
use crate::cmd::AddrSpace;

/// A rectangle transfer: destination and optional source, in bytes.
struct Rect {
    dst: u64,
    dst_pitch: i64,
    src: Option<(u64, i64)>,
    /// Bytes per row and rows.
    row: u64,
    rows: u64,
    cpp: u64,
}

fn addr(lo: u32, hi: u32) -> u64 {
    (u64::from(lo) | u64::from(hi) << 32) & 0x0000_ffff_ffff_ffff
}

/// Bytes per pixel of the BR13 colour depth of the XY_ commands.
fn xy_cpp(br13: u32) -> u64 {
    match (br13 >> 24) & 3 {
        0 => 1,
        3 => 4,
        _ => 2,
    }
}

/// Bytes per pixel of XY_FAST_COPY_BLT's colour depth field.
fn fast_cpp(dw1: u32) -> Option<u64> {
    match (dw1 >> 24) & 7 {
        0 => Some(1),
        1 => Some(2),
        3 => Some(4),
        4 => Some(8),
        5 => Some(16),
        _ => None,
    }
}

/// (x1, y1, x2, y2) → (width, height) in pixels, 0 when empty.
fn extent(tl: u32, br: u32) -> (u64, u64) {
    let (x1, y1) = (tl & 0xffff, tl >> 16);
    let (x2, y2) = (br & 0xffff, br >> 16);
    (u64::from(x2.saturating_sub(x1)), u64::from(y2.saturating_sub(y1)))
}

fn origin(base: u64, xy: u32, pitch: i64, cpp: u64) -> u64 {
    let (x, y) = (u64::from(xy & 0xffff), i64::from((xy >> 16) as u16));
    base.wrapping_add((y.wrapping_mul(pitch)) as u64).wrapping_add(x * cpp)
}

impl<'a> Exec<'a> {
    pub(super) fn blit(&mut self, view: &mut MemView<'a>, kind: BlitKind, cmd: &[u32]) -> Result<(), Stop> {
        let d = |i: usize| cmd.get(i).copied().unwrap_or(0);
        self.charge(self.cost.blit_ns, "blit")?;
        let dw0 = d(0);
        let (rect, tiled) = match kind {
            BlitKind::SrcCopy => {
                let cpp = xy_cpp(d(1));
                let (w, h) = extent(d(2), d(3));
                let pitch = i64::from(d(1) as u16 as i16);
                let spitch = i64::from(d(7) as u16 as i16);
                let dst = origin(addr(d(4), d(5)), d(2), pitch, cpp);
                let src = origin(addr(d(8), d(9)), d(6), spitch, cpp);
                let tiled = dw0 & (1 << 11 | 1 << 15) != 0;
                (Rect { dst, dst_pitch: pitch, src: Some((src, spitch)), row: w * cpp, rows: h, cpp }, tiled)
            }
            BlitKind::ColorFill => {
                let cpp = xy_cpp(d(1));
                let (w, h) = extent(d(2), d(3));
                let pitch = i64::from(d(1) as u16 as i16);
                let dst = origin(addr(d(4), d(5)), d(2), pitch, cpp);
                (Rect { dst, dst_pitch: pitch, src: None, row: w * cpp, rows: h, cpp }, dw0 & (1 << 11) != 0)
            }
            BlitKind::FastCopy => {
                let Some(cpp) = fast_cpp(d(1)) else {
                    return Err(Stop::Fault(format!("XY_FAST_COPY_BLT colour depth {} is reserved", (d(1) >> 24) & 7)));
                };
                let (w, h) = extent(d(2), d(3));
                let pitch = i64::from(d(1) as u16 as i16);
                let spitch = i64::from(d(7) as u16 as i16);
                let dst = origin(addr(d(4), d(5)), d(2), pitch, cpp);
                let src = origin(addr(d(8), d(9)), d(6), spitch, cpp);
                let tiled = dw0 & (3 << 20) != 0 || d(1) & (3 << 30) != 0;
                (Rect { dst, dst_pitch: pitch, src: Some((src, spitch)), row: w * cpp, rows: h, cpp }, tiled)
            }
            BlitKind::Opaque => {
                self.report.skipped_blits += 1;
                return Ok(());
            }
        };
        let bytes = rect.row.saturating_mul(rect.rows).saturating_mul(if rect.src.is_some() { 2 } else { 1 });
        if tiled {
            self.report.skipped_blits += 1;
            return self.charge(self.cost.bytes_ns(bytes), "tiled blit");
        }
        // Charge first: a huge rectangle hangs the engine instead of running for long.
        self.charge_bytes(bytes)?;
        let space = if self.ppgtt.is_some() { AddrSpace::Ppgtt } else { AddrSpace::Ggtt };
        let fill = d(6).to_le_bytes();
        let mut line = vec![0u8; rect.row as usize];
        for y in 0..rect.rows {
            let dst = rect.dst.wrapping_add((y as i64).wrapping_mul(rect.dst_pitch) as u64);
            match rect.src {
                Some((src, spitch)) => {
                    view.read(space, src.wrapping_add((y as i64).wrapping_mul(spitch) as u64), &mut line)?;
                }
                None => {
                    for (i, b) in line.iter_mut().enumerate() {
                        *b = fill.get(i % rect.cpp.min(4) as usize).copied().unwrap_or(0);
                    }
                }
            }
            view.write(space, dst, &line)?;
        }
        Ok(())
    }
}
