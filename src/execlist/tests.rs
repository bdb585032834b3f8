//! Tests of the virtual execlist.

use super::*;
use crate::cmd::{GmRange, LinearTranslation};
use vm_memory::{GuestAddress, GuestMemoryMmap};

const CTX_SIZE: u64 = 22 * 4096;

fn windows() -> GmWindows {
    GmWindows { aperture: GmRange::new(0x10_0000, 0x10_0000), hidden: GmRange::new(0x100_0000, 0x10_0000) }
}

/// A valid, privileged, 4-level descriptor for context `id` at `lrca`.
fn desc(id: u32, lrca: u64) -> ContextDescriptor {
    ContextDescriptor(u64::from(id) << 32 | lrca | 1 << 8 | 3 << 3 | 1)
}

fn elsp(
    el: &mut VirtualExeclist,
    e1: ContextDescriptor,
    e0: ContextDescriptor,
) -> Result<Option<Submission>, ExeclistError> {
    let w = windows();
    for v in [(e1.0 >> 32) as u32, e1.0 as u32, (e0.0 >> 32) as u32] {
        assert_eq!(el.write_elsp(v, &w), Ok(None));
    }
    el.write_elsp(e0.0 as u32, &w)
}

#[test]
fn fourth_write_submits_in_port_order() {
    let mut el = VirtualExeclist::new(CTX_SIZE);
    let (a, b) = (desc(7, 0x10_0000), desc(9, 0x12_0000));
    let sub = elsp(&mut el, b, a).unwrap().unwrap();
    assert_eq!(sub.elements, [Some(a), Some(b)]);
    let sub = elsp(&mut el, ContextDescriptor(0), a).unwrap().unwrap();
    assert_eq!(sub.elements, [Some(a), None]);
}

#[test]
fn descriptor_validation() {
    let mut el = VirtualExeclist::new(CTX_SIZE);
    let a = desc(1, 0x10_0000);
    assert_eq!(elsp(&mut el, ContextDescriptor(0), ContextDescriptor(0)), Err(ExeclistError::NoElement0));
    let unpriv = ContextDescriptor(a.0 & !(1 << 8));
    assert!(matches!(
        elsp(&mut el, ContextDescriptor(0), unpriv),
        Err(ExeclistError::Descriptor { element: 0, why: DescriptorError::NotPrivileged })
    ));
    let adv = ContextDescriptor(a.0 & !(3 << 3));
    assert!(matches!(elsp(&mut el, ContextDescriptor(0), adv), Err(ExeclistError::Descriptor { .. })));
    // The image must fit the windows entirely: 22 pages from the last page of the aperture do not.
    let tail = desc(1, 0x1f_f000);
    assert!(matches!(
        elsp(&mut el, ContextDescriptor(0), tail),
        Err(ExeclistError::Descriptor { why: DescriptorError::OutsideWindows { .. }, .. })
    ));
    assert!(matches!(elsp(&mut el, desc(2, 0x1000), a), Err(ExeclistError::Descriptor { element: 1, .. })));
    // 3-level contexts are fine.
    let l3 = ContextDescriptor((a.0 & !(3 << 3)) | 1 << 3);
    assert!(elsp(&mut el, ContextDescriptor(0), l3).is_ok());
}

fn statuses(s: &Switch) -> Vec<CsbStatus> {
    s.events.iter().map(|e| e.status).collect()
}

#[test]
fn two_elements_run_switch_and_idle() {
    let mut el = VirtualExeclist::new(CTX_SIZE);
    let (a, b) = (desc(7, 0x10_0000), desc(9, 0x12_0000));
    let sub = elsp(&mut el, b, a).unwrap().unwrap();
    let s = el.schedule_in(&sub).unwrap();
    assert_eq!(statuses(&s), vec![CsbStatus::IDLE_TO_ACTIVE]);
    assert!(s.interrupt);
    assert_eq!(el.read(reg::STATUS_HI), Some(7));
    let s = el.schedule_out().unwrap();
    assert_eq!(
        s.events,
        vec![CsbEvent { status: CsbStatus::ELEMENT_SWITCH | CsbStatus::CONTEXT_COMPLETE, context_id: 7 }]
    );
    assert_eq!(el.read(reg::STATUS_HI), Some(9));
    let s = el.schedule_out().unwrap();
    assert_eq!(
        s.events,
        vec![CsbEvent { status: CsbStatus::ACTIVE_TO_IDLE | CsbStatus::CONTEXT_COMPLETE, context_id: 9 }]
    );
    assert_eq!(el.schedule_out(), Err(ExeclistError::NothingRunning));
    // Three entries written: the pointer is at entry 2, and the entries read back.
    assert_eq!(el.read(reg::CSB_PTR).map(|v| v & 7), Some(2));
    assert_eq!(el.read(reg::CSB), Some(CsbStatus::IDLE_TO_ACTIVE.bits()));
    assert_eq!(el.read(reg::CSB + 8 + 4), Some(7));
}

#[test]
fn resubmitting_the_running_context_is_a_lite_restore() {
    let mut el = VirtualExeclist::new(CTX_SIZE);
    let a = desc(7, 0x10_0000);
    let sub = elsp(&mut el, ContextDescriptor(0), a).unwrap().unwrap();
    el.schedule_in(&sub).unwrap();
    let s = el.schedule_in(&sub).unwrap();
    assert_eq!(statuses(&s), vec![CsbStatus::LITE_RESTORE | CsbStatus::PREEMPTED]);
    // A different context queues behind the running one and starts when it completes.
    let other = elsp(&mut el, ContextDescriptor(0), desc(8, 0x14_0000)).unwrap().unwrap();
    let s = el.schedule_in(&other).unwrap();
    assert!(s.events.is_empty() && !s.interrupt);
    assert_ne!(el.read(reg::STATUS_LO).unwrap_or(0) & 1 << 2, 0, "queue full");
    assert_eq!(el.schedule_in(&other), Err(ExeclistError::QueueFull));
    let s = el.schedule_out().unwrap();
    assert_eq!(statuses(&s), vec![CsbStatus::ACTIVE_TO_IDLE | CsbStatus::CONTEXT_COMPLETE, CsbStatus::IDLE_TO_ACTIVE]);
    assert_eq!(el.read(reg::STATUS_HI), Some(8));
}

#[test]
fn csb_pointer_wraps_and_is_mirrored_into_the_guest_status_page() {
    let mut el = VirtualExeclist::new(CTX_SIZE);
    let a = desc(7, 0x10_0000);
    let sub = elsp(&mut el, ContextDescriptor(0), a).unwrap().unwrap();
    for _ in 0..4 {
        el.schedule_in(&sub).unwrap();
        el.schedule_out().unwrap();
    }
    // 8 entries written: the write pointer wrapped to entry 1.
    assert_eq!(el.read(reg::CSB_PTR).map(|v| v & 7), Some(1));
    // The guest consumed them: its read pointer sticks, the write pointer is the hardware's.
    el.write_csb_ptr(0x0700_0000 | 1 << 8 | 3);
    assert_eq!(el.read(reg::CSB_PTR), Some(1 << 8 | 1));
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
    let mut gtt = LinearTranslation::new();
    gtt.map(AddrSpace::Ggtt, GmRange::new(0x10_0000, 0x1_0000), GuestAddress(0));
    el.mirror_to_hwsp(&mem, &gtt, 0x10_2000, &windows());
    let wp: u32 = mem.read_obj(GuestAddress(0x2000 + 0x1f * 4)).unwrap();
    assert_eq!(wp, 1);
    let e1: u64 = mem.read_obj(GuestAddress(0x2000 + 0x12 * 4)).unwrap();
    assert_eq!(Some(e1 as u32), el.read(reg::CSB + 8));
    // A status page outside the windows is never written.
    el.mirror_to_hwsp(&mem, &gtt, 0x1000, &windows());
    // Reset returns the pointers to 7.
    el.reset();
    assert_eq!(el.read(reg::CSB_PTR), Some(7 << 8 | 7));
}
