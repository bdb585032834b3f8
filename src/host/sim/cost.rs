//! The software GPU's cost model: engine time per command and per byte, so scheduling is measured
//! in engine time and every run is deterministic.

/// Engine time charged for each kind of work, in nanoseconds. The defaults are of the order of a
/// Gen9 GT2: a few tens of ns per MI command, ~10 GB/s for blits, microseconds for draws and
/// walkers, a few microseconds for a context restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CostModel {
    /// MI_NOOP.
    pub noop_ns: u64,
    /// Any other MI command, before its memory traffic.
    pub mi_ns: u64,
    /// Per byte a command reads or writes in memory (blits, copies, stores), in picoseconds.
    pub byte_ps: u64,
    /// Setting up a blit.
    pub blit_ns: u64,
    /// A 3D, media or video state command.
    pub state_ns: u64,
    /// 3DPRIMITIVE: fixed part.
    pub draw_ns: u64,
    /// 3DPRIMITIVE: per vertex.
    pub vertex_ns: u64,
    /// GPGPU_WALKER / MEDIA_OBJECT_WALKER and MEDIA_OBJECT: per dispatch.
    pub walker_ns: u64,
    /// A video codec or video-enhancement object command (MFD_*, MFC_*, VEB_DI_IECP, ...).
    pub video_object_ns: u64,
    /// Loading a context image (fixed part; each register load adds `mi_ns / 8`).
    pub context_restore_ns: u64,
    /// One poll of an unsatisfied MI_SEMAPHORE_WAIT.
    pub semaphore_poll_ns: u64,
    /// A batch fetched when the engine reaches it, fixed part: the engine waits while the host
    /// copies and scans it, as it would in a hardware trap.
    pub fetch_ns: u64,
    /// The same, per byte copied, in picoseconds (default: the memory rate of `byte_ps`). A
    /// higher rate would charge a guest more nearly what the host's scan costs, but it also makes
    /// a looping batch (IGT's spinner, refetched each pass) reach the hang timeout sooner in wall
    /// time: at 1 ns a byte IGT's `gem_wait@wait` spinner no longer lived its second.
    pub fetch_byte_ps: u64,
    /// A workload running longer than this is declared hung and stopped.
    pub hang_timeout_ns: u64,
}

impl Default for CostModel {
    fn default() -> Self {
        CostModel {
            noop_ns: 1,
            mi_ns: 20,
            byte_ps: 100,
            blit_ns: 200,
            state_ns: 10,
            draw_ns: 2_000,
            vertex_ns: 2,
            walker_ns: 5_000,
            video_object_ns: 20_000,
            context_restore_ns: 2_000,
            semaphore_poll_ns: 1_000,
            fetch_ns: 1_000,
            fetch_byte_ps: 100,
            hang_timeout_ns: 50_000_000,
        }
    }
}

impl CostModel {
    /// Engine time to move `bytes` bytes.
    pub fn bytes_ns(&self, bytes: u64) -> u64 {
        bytes.saturating_mul(self.byte_ps) / 1000
    }

    /// Engine time of a command the software GPU does not execute, by name (genxml naming).
    pub fn modelled_ns(&self, name: &str, cmd: &[u32]) -> u64 {
        if name == "3DPRIMITIVE" {
            // Vertex Count Per Instance × Instance Count.
            let verts = u64::from(cmd.get(2).copied().unwrap_or(0));
            let inst = u64::from(cmd.get(4).copied().unwrap_or(1).max(1));
            return self.draw_ns.saturating_add(self.vertex_ns.saturating_mul(verts.saturating_mul(inst)));
        }
        if name.ends_with("WALKER") || name == "MEDIA_OBJECT" {
            return self.walker_ns;
        }
        let codec_object = (name.starts_with("MFD_") || name.starts_with("MFC_")) && name.contains("OBJECT");
        if codec_object || name == "VEB_DI_IECP" {
            return self.video_object_ns;
        }
        self.state_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_scale_with_vertices_and_video_objects_are_expensive() {
        let c = CostModel::default();
        let small = c.modelled_ns("3DPRIMITIVE", &[0x7b00_0005, 0, 3, 0, 1, 0, 0]);
        let big = c.modelled_ns("3DPRIMITIVE", &[0x7b00_0005, 0, 3000, 0, 2, 0, 0]);
        assert_eq!(small, 2_006);
        assert_eq!(big, 2_000 + 2 * 6000);
        assert_eq!(c.modelled_ns("MFD_AVC_BSD_OBJECT", &[0]), 20_000);
        assert_eq!(c.modelled_ns("GPGPU_WALKER", &[0]), 5_000);
        assert_eq!(c.modelled_ns("3DSTATE_VS", &[0]), 10);
        assert_eq!(c.bytes_ns(10_000), 1_000);
    }
}
