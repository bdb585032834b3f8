//! Device-model tests through the frontend: register semantics, PVINFO, the PV contract,
//! interrupts delivered as MSI, resets, fences, GTT and aperture.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::hw::pvinfo::{off as pv, PVINFO_BASE, VGT_MAGIC};
use crate::hw::reg::{self, ring};
use crate::hw::Platform;
use crate::mdev::{GpuManager, IrqTrigger, MdevDevice, IRQ_MSI, REGION_BAR0, REGION_BAR2, REGION_BAR4};
use crate::vgpu::irq::MASTER_IRQ_CONTROL;
use crate::vgpu::{DeviceError, Failsafe};

type Mem = Arc<GuestMemoryMmap<()>>;

fn setup(platform: Platform) -> (GpuManager, MdevDevice<Mem>, Mem) {
    let m = GpuManager::software(platform).unwrap();
    let mem = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap());
    let d = m.create("GVTg_V5_8", mem.clone()).or_else(|_| m.create("GVTg_V4_8", mem.clone())).unwrap();
    (m, d, mem)
}

fn r32(d: &MdevDevice<Mem>, off: u32) -> u32 {
    let mut b = [0u8; 4];
    d.read(REGION_BAR0, u64::from(off), &mut b).unwrap();
    u32::from_le_bytes(b)
}

fn w32(d: &MdevDevice<Mem>, off: u32, v: u32) -> Result<(), crate::mdev::MdevError> {
    d.write(REGION_BAR0, u64::from(off), &v.to_le_bytes())
}

fn masked(bits: u32) -> u32 {
    bits << 16 | bits
}

#[test]
fn forcewake_acks_mirror_requests_per_domain() {
    let (_m, d, _) = setup(Platform::Skylake);
    for (req, ack) in [
        (reg::FORCEWAKE_RENDER, reg::FORCEWAKE_ACK_RENDER),
        (reg::FORCEWAKE_MEDIA, reg::FORCEWAKE_ACK_MEDIA),
        (reg::FORCEWAKE_MT, reg::FORCEWAKE_ACK_GT),
    ] {
        assert_eq!(r32(&d, ack), 0);
        w32(&d, req, masked(1)).unwrap();
        assert_eq!(r32(&d, ack), 1);
        w32(&d, req, masked(1 << 15)).unwrap();
        assert_eq!(r32(&d, ack), 0x8001, "masked merge keeps bit 0");
        w32(&d, req, 1 << 16).unwrap();
        assert_eq!(r32(&d, ack), 0x8000);
        w32(&d, ack, 0xffff).unwrap();
        assert_eq!(r32(&d, ack), 0x8000, "acks are read only");
    }
    assert!(d.vgpu().unknown_registers().is_empty(), "{:?}", d.vgpu().unknown_registers());
}

#[test]
fn engine_handshakes_and_status() {
    let (_m, d, _) = setup(Platform::CoffeeLake);
    let bcs = 0x22000;
    w32(&d, bcs + ring::RESET_CTL, masked(ring::REQUEST_RESET)).unwrap();
    assert_eq!(r32(&d, bcs + ring::RESET_CTL), ring::REQUEST_RESET | ring::READY_TO_RESET);
    w32(&d, bcs + ring::RESET_CTL, ring::REQUEST_RESET << 16).unwrap();
    assert_eq!(r32(&d, bcs + ring::RESET_CTL), 0);
    w32(&d, bcs + ring::MI_MODE, masked(ring::STOP_RING)).unwrap();
    assert_ne!(r32(&d, bcs + ring::MI_MODE) & ring::MODE_IDLE, 0);
    w32(&d, bcs + ring::MI_MODE, ring::STOP_RING << 16).unwrap();
    assert_eq!(r32(&d, bcs + ring::MI_MODE) & ring::MODE_IDLE, 0);
    assert_eq!(r32(&d, reg::GT_THREAD_STATUS), 0);
    assert_eq!(r32(&d, reg::GUC_STATUS), reg::GUC_MIA_IN_RESET);
    assert_eq!(r32(&d, reg::GUC_STATUS), 0, "reported once");
    // GDRST completes at once; the GuC bit puts it back in reset.
    w32(&d, reg::GDRST, reg::GRDOM_GUC | Engine::Bcs.gdrst_bit()).unwrap();
    assert_eq!(r32(&d, reg::GDRST), 0);
    assert_eq!(r32(&d, reg::GUC_STATUS), reg::GUC_MIA_IN_RESET);
    // Timestamps advance.
    let t0 = r32(&d, bcs + ring::TIMESTAMP);
    std::thread::sleep(std::time::Duration::from_millis(2));
    assert!(r32(&d, bcs + ring::TIMESTAMP).wrapping_sub(t0) >= 12_000, "12 MHz");
}

use crate::hw::Engine;

#[test]
fn pcode_mailbox_answers() {
    let (_m, d, _) = setup(Platform::Skylake);
    for (data, want) in [(0, 0x1e1a_1100), (1, 0x6151_4b3d)] {
        w32(&d, reg::PCODE_DATA, data).unwrap();
        w32(&d, reg::PCODE_MAILBOX, reg::PCODE_READY | reg::PCODE_READ_MEM_LATENCY).unwrap();
        assert_eq!(r32(&d, reg::PCODE_MAILBOX) & (reg::PCODE_READY | reg::PCODE_ERROR_MASK), 0);
        assert_eq!(r32(&d, reg::PCODE_DATA), want);
    }
    w32(&d, reg::PCODE_MAILBOX, reg::PCODE_READY | reg::PCODE_CDCLK_CONTROL).unwrap();
    assert_eq!(r32(&d, reg::PCODE_DATA), 1);
    // i915 disables SAGV and waits for the "disabled" reply bit.
    w32(&d, reg::PCODE_DATA, 0).unwrap();
    w32(&d, reg::PCODE_MAILBOX, reg::PCODE_READY | reg::PCODE_SAGV_CONTROL).unwrap();
    assert_eq!(r32(&d, reg::PCODE_DATA) & 1, 1);
}

/// What a real i915 found on its first boot (issue 7's untracked-register list): AUX channels
/// that never finish and a PSR interrupt register that does not clear.
#[test]
fn empty_display_answers_at_once() {
    let (_m, d, _) = setup(Platform::CoffeeLake);
    for port in 0..4 {
        let ctl = reg::DP_AUX_CH_CTL_A + 0x100 * port;
        // i915 starts a transaction, clearing stale status with the same write.
        let start = reg::AUX_SEND_BUSY | reg::AUX_DONE | reg::AUX_TIME_OUT_ERROR | reg::AUX_RECEIVE_ERROR | 0x3f;
        w32(&d, ctl, start).unwrap();
        let v = r32(&d, ctl);
        assert_eq!(v & reg::AUX_SEND_BUSY, 0, "port {port}: still busy");
        assert_eq!(v & (reg::AUX_DONE | reg::AUX_TIME_OUT_ERROR), reg::AUX_DONE | reg::AUX_TIME_OUT_ERROR);
        assert_eq!(v & reg::AUX_RECEIVE_ERROR, 0);
        assert_eq!(v & 0x3f, 0x3f, "other fields are kept");
        // Writing the status bits back clears them.
        w32(&d, ctl, reg::AUX_DONE | reg::AUX_TIME_OUT_ERROR).unwrap();
        assert_eq!(r32(&d, ctl) & (reg::AUX_DONE | reg::AUX_TIME_OUT_ERROR), 0);
    }
    // DPLL0 unlocks when i915 disables it and locks again when enabled.
    assert_eq!(r32(&d, reg::LCPLL1_CTL), 0xc000_0000);
    w32(&d, reg::LCPLL1_CTL, 1 << 30).unwrap();
    assert_eq!(r32(&d, reg::LCPLL1_CTL), 0, "disabled and unlocked");
    w32(&d, reg::LCPLL1_CTL, 1 << 31).unwrap();
    assert_eq!(r32(&d, reg::LCPLL1_CTL), 0xc000_0000, "enabled and locked");
    // Broadwell's sideband: a command completes at once, successfully.
    w32(&d, reg::SBI_CTL_STAT - 8, 0x0208_0000).unwrap();
    w32(&d, reg::SBI_CTL_STAT, 0x0600 | reg::SBI_BUSY).unwrap();
    assert_eq!(r32(&d, reg::SBI_CTL_STAT) & (reg::SBI_BUSY | reg::SBI_RESPONSE_FAIL), 0);
    assert_eq!(r32(&d, reg::SBI_CTL_STAT - 8), 0x0208_0000);
    assert_eq!(r32(&d, reg::EDP_PSR_IMR), u32::MAX, "PSR interrupts masked at reset");
    w32(&d, reg::EDP_PSR_IIR, u32::MAX).unwrap();
    assert_eq!(r32(&d, reg::EDP_PSR_IIR), 0, "i915 clears the IIR and checks it reads zero");
    assert!(d.vgpu().unknown_registers().is_empty());
}

#[test]
fn pvinfo_describes_the_vgpu() {
    let (_m, d, _) = setup(Platform::Skylake);
    let p = d.vgpu().params().clone();
    let lo = r32(&d, PVINFO_BASE + pv::MAGIC);
    let hi = r32(&d, PVINFO_BASE + pv::MAGIC + 4);
    assert_eq!(u64::from(hi) << 32 | u64::from(lo), VGT_MAGIC);
    let mut q = [0u8; 8];
    d.read(REGION_BAR0, u64::from(PVINFO_BASE), &mut q).unwrap();
    assert_eq!(u64::from_le_bytes(q), VGT_MAGIC, "8-byte read");
    assert_eq!(r32(&d, PVINFO_BASE + pv::VERSION) & 0xffff, 1);
    assert_eq!(r32(&d, PVINFO_BASE + pv::VGT_ID), p.id);
    assert_eq!(r32(&d, PVINFO_BASE + pv::CAPS), 0x1c);
    assert_eq!(u64::from(r32(&d, PVINFO_BASE + pv::AVAIL_RS)), p.gm.windows.aperture.base);
    assert_eq!(u64::from(r32(&d, PVINFO_BASE + pv::AVAIL_RS + 4)), p.gm.windows.aperture.size);
    assert_eq!(u64::from(r32(&d, PVINFO_BASE + pv::AVAIL_RS + 8)), p.gm.windows.hidden.base);
    assert_eq!(u64::from(r32(&d, PVINFO_BASE + pv::AVAIL_RS + 12)), p.gm.windows.hidden.size);
    assert_eq!(r32(&d, PVINFO_BASE + pv::FENCE_NUM), 4);
    w32(&d, PVINFO_BASE + pv::VGT_ID, 99).unwrap();
    assert_eq!(r32(&d, PVINFO_BASE + pv::VGT_ID), p.id, "device fields are read only");
    // Having read PVINFO, the guest may enable execlists.
    w32(&d, 0x2000 + ring::RING_MODE, masked(ring::GFX_RUN_LIST_ENABLE)).unwrap();
    assert_eq!(d.vgpu().failsafe(), None);
    assert_eq!(r32(&d, 0x2000 + ring::RING_MODE), ring::GFX_RUN_LIST_ENABLE);
}

#[test]
fn pv_contract_breaches_enter_failsafe_until_reset() {
    let (_m, d, _) = setup(Platform::Skylake);
    let e = w32(&d, 0x2000 + ring::RING_MODE, masked(ring::GFX_RUN_LIST_ENABLE)).unwrap_err();
    assert!(matches!(e, crate::mdev::MdevError::Device(DeviceError::Failsafe(Failsafe::UnsupportedGuest(_)))));
    // In failsafe, an ELSP write is storage: nothing is submitted, nothing fails.
    for _ in 0..4 {
        w32(&d, 0x2230, 0xdead_0000).unwrap();
    }
    assert_eq!(d.vgpu().engines().stats().map(|s| s.rejections.len()), Some(0));
    d.reset().unwrap();
    assert_eq!(d.vgpu().failsafe(), None);
    r32(&d, PVINFO_BASE);
    let e = w32(&d, PVINFO_BASE + pv::RSV5, 1).unwrap_err();
    assert!(matches!(e, crate::mdev::MdevError::Device(DeviceError::Failsafe(Failsafe::InsufficientResource))));
}

#[test]
fn interrupt_tree_delivers_msi_and_acknowledges() {
    let (_m, d, _) = setup(Platform::Skylake);
    let fired = Arc::new(AtomicU32::new(0));
    let f = fired.clone();
    d.set_irq(
        IRQ_MSI,
        Some(IrqTrigger::Callback(Arc::new(move || {
            f.fetch_add(1, Ordering::SeqCst);
        }))),
    )
    .unwrap();
    let gt0 = reg::GT_ISR0;
    w32(&d, gt0 + 4, !(1 << 8)).unwrap(); // IMR: RCS context switch
    w32(&d, gt0 + 0xc, 1 << 8).unwrap(); // IER
    w32(&d, reg::MASTER_IRQ, MASTER_IRQ_CONTROL).unwrap();
    d.vgpu().irq.engine_irq_for_test(Engine::Rcs);
    assert_eq!(fired.load(Ordering::SeqCst), 1);
    w32(&d, reg::MASTER_IRQ, 0).unwrap();
    assert_eq!(r32(&d, reg::MASTER_IRQ), 1, "GT0 render half");
    assert_eq!(r32(&d, gt0 + 8), 1 << 8);
    w32(&d, gt0 + 8, 1 << 8).unwrap();
    w32(&d, reg::MASTER_IRQ, MASTER_IRQ_CONTROL).unwrap();
    assert_eq!(fired.load(Ordering::SeqCst), 1, "acknowledged: nothing pending");
    d.set_irq(IRQ_MSI, None).unwrap();
    d.vgpu().irq.engine_irq_for_test(Engine::Rcs);
    assert_eq!(fired.load(Ordering::SeqCst), 1, "unwired");
}

#[test]
fn fences_gtt_and_access_checks() {
    let (_m, d, mem) = setup(Platform::Skylake);
    w32(&d, reg::FENCE0 + 8 * 3, 0x1234_5000).unwrap();
    assert_eq!(r32(&d, reg::FENCE0 + 8 * 3), 0x1234_5000);
    assert!(w32(&d, reg::FENCE0 + 8 * 4, 1).is_err(), "fence 4 is not owned");
    assert_eq!(r32(&d, reg::FENCE0 + 8 * 4), 0);
    // A GTT entry for the first aperture page of the vGPU, written as one 8-byte access.
    let ap = d.vgpu().params().gm.windows.aperture;
    let gtt = crate::hw::bar0::GTT_OFFSET + ap.base / 4096 * 8;
    d.write(REGION_BAR0, gtt, &(0x20_0000u64 | 1).to_le_bytes()).unwrap();
    let mut q = [0u8; 8];
    d.read(REGION_BAR0, gtt, &mut q).unwrap();
    assert_eq!(u64::from_le_bytes(q) & !0xfff, 0x20_0000);
    // The aperture reaches that guest page.
    mem.write_obj(0xfeed_beefu32, GuestAddress(0x20_0010)).unwrap();
    let mut b = [0u8; 4];
    d.read(REGION_BAR2, ap.base + 0x10, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), 0xfeed_beef);
    d.write(REGION_BAR2, ap.base + 0x20, &7u32.to_le_bytes()).unwrap();
    assert_eq!(mem.read_obj::<u32>(GuestAddress(0x20_0020)).unwrap(), 7);
    assert!(d.read(REGION_BAR2, ap.base + 0x1000, &mut b).is_err(), "unmapped page");
    assert_eq!(b, [0xff; 4]);
    assert!(d.read(REGION_BAR2, 0, &mut b).is_err(), "the host's part of the aperture");
    // BAR4 index/data reaches registers.
    d.write(REGION_BAR4, 0, &reg::GT_THREAD_STATUS.to_le_bytes()).unwrap();
    d.read(REGION_BAR4, 4, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), 0);
    // Bad accesses are typed errors.
    assert!(d.vgpu().mmio_read(0x2002, &mut b).is_err(), "the device takes aligned accesses");
    assert!(d.vgpu().mmio_write(0x2000, &[0; 3]).is_err());
    d.read(REGION_BAR0, 0x2002, &mut b).unwrap(); // the frontend splits it into two aligned halves
    assert!(d.read(REGION_BAR0, 16 << 20, &mut b).is_err());
    assert!(d.write(crate::mdev::REGION_OPREGION, 0, &b).is_err());
}

#[test]
fn reset_returns_registers_and_irqs_to_defaults() {
    let (_m, d, _) = setup(Platform::Broadwell);
    w32(&d, reg::FORCEWAKE_MT, masked(1)).unwrap();
    w32(&d, reg::MASTER_IRQ, MASTER_IRQ_CONTROL).unwrap();
    w32(&d, 0x12_3450, 5).unwrap();
    assert_eq!(d.vgpu().unknown_registers().len(), 1);
    d.reset().unwrap();
    assert_eq!(r32(&d, reg::FORCEWAKE_ACK_GT), 0);
    assert_eq!(r32(&d, reg::MASTER_IRQ), 0);
    assert_eq!(r32(&d, 0x12_3450), 0);
    assert_eq!(d.vgpu().unknown_registers().len(), 1, "the evidence survives resets");
}
