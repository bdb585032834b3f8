//! The manager of one physical GPU's vGPUs: which types it offers and how many of each still fit,
//! creation with resource accounting (graphics-memory windows, fences, ids), listing, and release
//! when a vGPU is dropped.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use vm_memory::GuestAddressSpace;

use super::device::MdevDevice;
use super::types::VgpuType;
use crate::cmd::{GmWindows, ScanLimits};
use crate::host::sim::{SimConfig, SimGpu};
use crate::host::HostGpu;
use crate::hw::{Device, Platform};
use crate::mm::{GmAllocation, GmAllocator, GmLayout, GmRequest, HostReserve, PartitionError};
use crate::sched::{SchedConfig, Scheduler, VgpuId};
use crate::vgpu::{Vgpu, VgpuError, VgpuParams};

/// Most vGPUs on one physical GPU.
pub const MAX_VGPUS: u32 = 32;

/// Errors of the manager.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// No type of that name.
    #[error("no vGPU type `{0}` on this GPU (see the type list)")]
    UnknownType(String),
    /// A type of that name exists already.
    #[error("a vGPU type `{0}` exists already")]
    DuplicateType(String),
    /// Graphics memory or fences ran out.
    #[error("cannot create a `{ty}` vGPU: {why}")]
    Exhausted {
        /// Type name.
        ty: String,
        /// What ran out.
        why: PartitionError,
    },
    /// Every vGPU id is in use.
    #[error("cannot create a vGPU: all {0} vGPU slots are in use")]
    TooMany(u32),
    /// The GPU's layout cannot be partitioned.
    #[error("graphics memory layout: {0}")]
    Layout(PartitionError),
    /// The vGPU could not be set up.
    #[error(transparent)]
    Vgpu(#[from] VgpuError),
}

/// The physical GPU as the manager sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuInfo {
    /// The device vGPUs present (the physical one's id).
    pub device: Device,
    /// PCI revision.
    pub revision: u8,
    /// Its graphics memory.
    pub layout: GmLayout,
    /// What the host keeps.
    pub reserve: HostReserve,
}

/// A type and how many more vGPUs of it fit now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeAvailability {
    /// The type.
    pub ty: VgpuType,
    /// Instances that can still be created.
    pub available: u32,
}

/// One live vGPU, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VgpuSummary {
    /// Id.
    pub id: VgpuId,
    /// Type name.
    pub ty: String,
    /// Its windows.
    pub windows: GmWindows,
    /// Host fence registers.
    pub fences: Vec<u8>,
}

struct State {
    gm: GmAllocator,
    types: Vec<VgpuType>,
    live: BTreeMap<VgpuId, (String, GmAllocation)>,
}

pub(crate) struct Shared {
    sched: Arc<Scheduler>,
    info: GpuInfo,
    limits: ScanLimits,
    state: Mutex<State>,
}

impl Shared {
    /// Returns a destroyed vGPU's resources.
    pub(crate) fn release(&self, id: VgpuId) {
        let mut st = self.state.lock();
        if let Some((_, a)) = st.live.remove(&id) {
            let _ = st.gm.release(&a);
        }
    }
}

/// The vGPUs of one physical GPU.
///
/// ```
/// use std::sync::Arc;
/// use shadowgpu::hw::Platform;
/// use shadowgpu::mdev::GpuManager;
/// use vm_memory::{GuestAddress, GuestMemoryMmap};
///
/// let gpu = GpuManager::software(Platform::Skylake).unwrap();
/// let mem = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap());
/// let dev = gpu.create("GVTg_V5_8", mem).unwrap();
/// assert_eq!(gpu.list().len(), 1);
/// let mut id = [0u8; 4];
/// dev.read(shadowgpu::mdev::REGION_CONFIG, 0, &mut id).unwrap();
/// assert_eq!(u32::from_le_bytes(id), 0x1912_8086);
/// drop(dev);
/// assert!(gpu.list().is_empty());
/// ```
pub struct GpuManager {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for GpuManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuManager").field("info", &self.shared.info).finish()
    }
}

impl GpuManager {
    /// A manager for the GPU the scheduler drives. It offers the GVT-g types that fit the
    /// aperture left after the host's reserve (as GVT-g registers them).
    pub fn new(sched: Arc<Scheduler>, info: GpuInfo) -> Result<Self, ManagerError> {
        let gm = GmAllocator::new(info.layout, info.reserve).map_err(ManagerError::Layout)?;
        let room = info.layout.aperture.saturating_sub(info.reserve.aperture);
        let types = VgpuType::gvt(info.device.platform.gen()).into_iter().filter(|t| room / t.aperture > 0).collect();
        let state = Mutex::new(State { gm, types, live: BTreeMap::new() });
        Ok(GpuManager { shared: Arc::new(Shared { sched, info, limits: ScanLimits::default(), state }) })
    }

    /// A manager on a new software GPU presenting `platform`'s default device (desktop layout).
    pub fn software(platform: Platform) -> Result<Self, ManagerError> {
        GpuManager::software_with_layout(platform, GmLayout::DESKTOP)
    }

    /// A manager on a new software GPU with graphics memory `layout` (a larger aperture fits more
    /// vGPUs).
    pub fn software_with_layout(platform: Platform, layout: GmLayout) -> Result<Self, ManagerError> {
        GpuManager::software_with(platform, layout, SchedConfig::default())
    }

    /// A manager on a new software GPU with graphics memory `layout` and scheduler settings
    /// `sched` (time slice, hang timeout).
    pub fn software_with(platform: Platform, layout: GmLayout, sched: SchedConfig) -> Result<Self, ManagerError> {
        GpuManager::software_sim(platform, SimConfig { layout, ..SimConfig::default() }, sched)
    }

    /// A manager on a new software GPU configured by `sim` (graphics memory layout, cost model,
    /// real-time pacing; generation and engines come from `platform`) with scheduler settings
    /// `sched`.
    pub fn software_sim(platform: Platform, sim: SimConfig, sched: SchedConfig) -> Result<Self, ManagerError> {
        let device = platform.default_device();
        let cfg = SimConfig { gen: platform.gen(), engines: device.engines(), ..sim };
        let gpu: Arc<dyn HostGpu> = Arc::new(SimGpu::new(cfg));
        let sched = Arc::new(Scheduler::new(gpu, sched));
        GpuManager::new(sched, GpuInfo { device, revision: 0x07, layout: cfg.layout, reserve: cfg.reserve })
    }

    /// The GPU.
    pub fn info(&self) -> &GpuInfo {
        &self.shared.info
    }

    /// The scheduler sharing the GPU's engines.
    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.shared.sched
    }

    /// Adds a custom type.
    pub fn add_type(&self, ty: VgpuType) -> Result<(), ManagerError> {
        let mut st = self.shared.state.lock();
        if st.types.iter().any(|t| t.name == ty.name) {
            return Err(ManagerError::DuplicateType(ty.name));
        }
        st.types.push(ty);
        Ok(())
    }

    /// The types offered and how many of each still fit.
    pub fn types(&self) -> Vec<TypeAvailability> {
        let st = self.shared.state.lock();
        let (ap, hid, fences) = st.gm.free();
        let slots = MAX_VGPUS.saturating_sub(st.live.len() as u32);
        st.types
            .iter()
            .map(|t| {
                let by = |free: u64, need: u64| free.checked_div(need).unwrap_or(u64::MAX);
                let n = by(ap, t.aperture).min(by(hid, t.hidden)).min(by(u64::from(fences), u64::from(t.fences)));
                TypeAvailability { ty: t.clone(), available: n.min(u64::from(slots)) as u32 }
            })
            .collect()
    }

    /// Creates a vGPU of type `ty` over guest memory `mem`; its resources return to the GPU when
    /// the device is dropped.
    pub fn create<A>(&self, ty: &str, mem: A) -> Result<MdevDevice<A>, ManagerError>
    where
        A: GuestAddressSpace + Send + Sync + 'static,
        A::M: Send + Sync,
    {
        let sh = &self.shared;
        let (id, alloc, t) = {
            let mut st = sh.state.lock();
            let t =
                st.types.iter().find(|t| t.name == ty).cloned().ok_or_else(|| ManagerError::UnknownType(ty.into()))?;
            let id = (1..=MAX_VGPUS).find(|i| !st.live.contains_key(i)).ok_or(ManagerError::TooMany(MAX_VGPUS))?;
            let req = GmRequest { aperture: t.aperture, hidden: t.hidden, fences: t.fences };
            let alloc = st.gm.allocate(req).map_err(|why| ManagerError::Exhausted { ty: ty.into(), why })?;
            st.live.insert(id, (t.name.clone(), alloc.clone()));
            (id, alloc, t)
        };
        let params = VgpuParams {
            id,
            device: sh.info.device,
            revision: sh.info.revision,
            gm: alloc,
            aperture_size: sh.info.layout.aperture,
            ggtt_size: sh.info.layout.total,
            weight: t.weight,
            limits: sh.limits,
        };
        match Vgpu::new(params, mem, sh.sched.clone()) {
            Ok(v) => Ok(MdevDevice::new(v, Some(sh.clone()))),
            Err(e) => {
                sh.release(id);
                Err(e.into())
            }
        }
    }

    /// The live vGPUs.
    pub fn list(&self) -> Vec<VgpuSummary> {
        let st = self.shared.state.lock();
        st.live
            .iter()
            .map(|(&id, (ty, a))| VgpuSummary { id, ty: ty.clone(), windows: a.windows, fences: a.fences.clone() })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    fn mem() -> Arc<GuestMemoryMmap<()>> {
        Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap())
    }

    #[test]
    fn types_fit_the_aperture_like_gvt_g() {
        let m = GpuManager::software(Platform::Skylake).unwrap();
        // 256 MiB aperture, 128 MiB reserved: _8 (2 instances) and _4 (1 instance).
        let t = m.types();
        let names: Vec<_> = t.iter().map(|a| (a.ty.name.as_str(), a.available)).collect();
        assert_eq!(names, vec![("GVTg_V5_8", 2), ("GVTg_V5_4", 1)]);
    }

    #[test]
    fn accounting_and_clear_errors() {
        let m = GpuManager::software(Platform::KabyLake).unwrap();
        let a = m.create("GVTg_V5_4", mem()).unwrap();
        assert_eq!(m.types().iter().map(|a| a.available).collect::<Vec<_>>(), vec![0, 0]);
        let e = m.create("GVTg_V5_8", mem()).unwrap_err();
        assert_eq!(e.to_string(), "cannot create a `GVTg_V5_8` vGPU: aperture exhausted: 64 MiB asked, 0 bytes free");
        assert!(matches!(m.create("GVTg_V5_1", mem()), Err(ManagerError::UnknownType(_))));
        let l = m.list();
        assert_eq!((l.len(), l[0].id, l[0].ty.as_str(), l[0].fences.len()), (1, 1, "GVTg_V5_4", 4));
        drop(a);
        assert!(m.list().is_empty());
        let b = m.create("GVTg_V5_8", mem()).unwrap();
        let c = m.create("GVTg_V5_8", mem()).unwrap();
        assert_ne!(b.vgpu().params().gm.windows, c.vgpu().params().gm.windows);
        m.add_type(VgpuType::custom("tiny", 1 << 20, 0, 0, 1).unwrap()).unwrap();
        assert!(matches!(
            m.add_type(VgpuType::custom("tiny", 1 << 20, 0, 0, 1).unwrap()),
            Err(ManagerError::DuplicateType(_))
        ));
    }
}
