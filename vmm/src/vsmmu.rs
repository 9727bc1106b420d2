//! The VM's guest-visible SMMUv3 (`--device ...,iommu=on`, aarch64): the devices behind
//! it move from the VM's IOAS onto a nesting parent (stage 2 = guest RAM at IOVA = GPA),
//! get a vDEVICE each with their requester ID as StreamID, and the emulated SMMU
//! (`devices::smmuv3`) goes on the MMIO bus with its two wired SPIs, backed by
//! `passthrough::nested::IommufdSmmu`. A thread moves host events (the vEVENTQ) into
//! the guest's event queue as its fd becomes readable (every 20 ms without an fd, as with
//! the model) and logs the SMMU's counters when they change.
//!
//! Teardown: [`VmVsmmu::release_host`] drops the host objects (devices back on the stage
//! 2, nested HWPTs, vDEVICEs, vEVENTQ, vIOMMU) before the devices are detached; dropping
//! the `VmVsmmu` then stops the thread and destroys the stage 2.
//!
//! KVM MSI routes of those functions keep targeting the vITS doorbell with the function's
//! RID as DeviceID: the guest programs an IOVA into their MSI-X tables (its stage-1
//! mapping of the doorbell), so their interrupt groups use [`VsmmuSlot::msi_doorbell`]
//! instead of the programmed address (`InterruptManager::msi_group_at`).
//!
//! Not here: the device tree nodes (`arch::aarch64::fdt` from [`VmVsmmu::node`]).

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::smmuv3::{HostSmmuInfo, Smmuv3, Smmuv3Irqs, Smmuv3Stats};
use devices::Bus;
use kvm_ioctls::VmFd;
use passthrough::nested::{IommufdSmmu, NestParent, NestedError};
use passthrough::ram_dma::SharedIommufd;
use passthrough::{DevId, IoasId};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// How often host events are collected without an fd to wait on, and the pause after a
/// wake-up that moved nothing (the guest's queue is full: the fd stays readable).
const EVENT_POLL: Duration = Duration::from_millis(20);
/// Longest wait on the vEVENTQ fd (to notice a stop).
const EVENT_WAIT_MS: i32 = 100;
/// How often changed counters are logged.
const STATS_EVERY: Duration = Duration::from_secs(10);

/// What the device tree says about the vSMMU.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VsmmuNode {
    /// MMIO base (two 64 KiB pages).
    pub base: u64,
    /// SPI of the event queue interrupt.
    pub eventq_spi: u32,
    /// SPI of the GERROR interrupt.
    pub gerror_spi: u32,
    /// Requester IDs (= StreamIDs) of the functions behind it, on bus 0.
    pub rids: Vec<u16>,
    /// The host's software MSI windows of those functions (`msi` in their IOMMU group's
    /// reserved_regions), as (start, size): the guest's stage 1 must map them 1:1.
    pub msi_windows: Vec<(u64, u64)>,
}

/// Where the arch layout puts the vSMMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VsmmuSlot {
    /// MMIO base.
    pub base: u64,
    /// Bytes of MMIO.
    pub size: u64,
    /// SPI = GSI of the event queue interrupt.
    pub eventq_spi: u32,
    /// SPI = GSI of the GERROR interrupt.
    pub gerror_spi: u32,
    /// The vITS doorbell (GITS_TRANSLATER): the address of every MSI route of a function
    /// behind the vSMMU (the guest programs an IOVA there).
    pub msi_doorbell: u64,
}

/// Where a vSMMU is built: its slot, the VM (for its interrupts' irqfds) and the MMIO bus
/// it goes on.
pub struct VsmmuSite<'a> {
    /// Where the arch layout puts it.
    pub slot: VsmmuSlot,
    /// The VM.
    pub vm: &'a VmFd,
    /// The VM's MMIO bus.
    pub mmio: &'a mut Bus,
}

/// A passed-through device to put behind the vSMMU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NestedDevice {
    /// How messages name it.
    pub name: String,
    /// Its iommufd device id.
    pub dev: DevId,
    /// Its guest requester ID (the vSID).
    pub rid: u16,
}

/// Errors setting up the vSMMU.
#[derive(Debug, thiserror::Error)]
pub enum VsmmuError {
    /// An iommufd object could not be made.
    #[error("--device {name} (iommu=on): {source}")]
    Nested {
        /// The device.
        name: String,
        /// What failed, with the kernel's errno.
        source: NestedError,
    },
    /// An interrupt eventfd could not be created.
    #[error(
        "cannot create the vSMMU {what} interrupt eventfd: {source}; raise the open-file limit"
    )]
    EventFd {
        /// Which interrupt.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// KVM_IRQFD failed.
    #[error("KVM_IRQFD for the vSMMU {what} interrupt (GSI {gsi}) failed: {source}")]
    Irqfd {
        /// Which interrupt.
        what: &'static str,
        /// The GSI.
        gsi: u32,
        /// Why.
        source: kvm_ioctls::Error,
    },
    /// The MMIO window is taken.
    #[error("vSMMU MMIO window: {0}")]
    Bus(#[from] devices::BusError),
    /// Nothing to put behind it.
    #[error("a vSMMU needs at least one --device with iommu=on")]
    NoDevices,
    /// The event thread could not start.
    #[error("cannot start the vSMMU event thread: {0}")]
    Thread(std::io::Error),
}

/// The running vSMMU. See the module docs.
pub struct VmVsmmu {
    smmu: Arc<Mutex<Smmuv3<GuestMemoryMmap>>>,
    node: VsmmuNode,
    stop: Arc<AtomicBool>,
    events: Option<JoinHandle<()>>,
    parent: Option<NestParent>,
}

fn irq(vm: &VmFd, what: &'static str, gsi: u32) -> Result<EventFd, VsmmuError> {
    let evt = EventFd::new(EFD_NONBLOCK).map_err(|source| VsmmuError::EventFd { what, source })?;
    vm.register_irqfd(&evt, gsi)
        .map_err(|source| VsmmuError::Irqfd { what, gsi, source })?;
    Ok(evt)
}

impl VmVsmmu {
    /// Puts `devices` (bound and attached to `ioas`, all behind one host SMMU described by
    /// `host`) behind a new vSMMU at `slot` on `mmio`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        iommufd: SharedIommufd,
        ioas: IoasId,
        devices: &[NestedDevice],
        host: &HostSmmuInfo,
        mem: GuestMemoryMmap,
        vm: &VmFd,
        slot: VsmmuSlot,
        msi_windows: Vec<(u64, u64)>,
        mmio: &mut Bus,
    ) -> Result<VmVsmmu, VsmmuError> {
        let (first, rest) = devices.split_first().ok_or(VsmmuError::NoDevices)?;
        let nested = |d: &NestedDevice| {
            let name = d.name.clone();
            move |source| VsmmuError::Nested { name, source }
        };
        let parent = NestParent::new(iommufd.clone(), ioas, first.dev).map_err(nested(first))?;
        for d in rest {
            parent.attach(d.dev).map_err(nested(d))?;
        }
        let mut backend =
            IommufdSmmu::new(iommufd.clone(), &parent, first.dev).map_err(nested(first))?;
        for d in devices {
            backend
                .add_device(d.dev, u32::from(d.rid))
                .map_err(nested(d))?;
        }
        let irqs = Smmuv3Irqs {
            eventq: Box::new(irq(vm, "event queue", slot.eventq_spi)?),
            gerror: Box::new(irq(vm, "GERROR", slot.gerror_spi)?),
        };
        let smmu = Arc::new(Mutex::new(Smmuv3::new(mem, host, Box::new(backend), irqs)));
        mmio.insert(smmu.clone(), slot.base, slot.size)?;
        let stop = Arc::new(AtomicBool::new(false));
        let events = {
            let (smmu, stop) = (smmu.clone(), stop.clone());
            std::thread::Builder::new()
                .name("vsmmu-events".into())
                .spawn(move || event_thread(&smmu, &stop))
                .map_err(VsmmuError::Thread)?
        };
        let node = VsmmuNode {
            base: slot.base,
            eventq_spi: slot.eventq_spi,
            gerror_spi: slot.gerror_spi,
            rids: devices.iter().map(|d| d.rid).collect(),
            msi_windows,
        };
        log::info!(
            "vSMMU at {:#x}: {} device(s) behind it (StreamIDs {:x?}), host MSI windows {:x?}",
            slot.base,
            devices.len(),
            node.rids,
            node.msi_windows
        );
        Ok(VmVsmmu {
            smmu,
            node,
            stop,
            events: Some(events),
            parent: Some(parent),
        })
    }

    /// What the device tree needs.
    pub fn node(&self) -> &VsmmuNode {
        &self.node
    }

    /// The SMMU's counters.
    pub fn stats(&self) -> Smmuv3Stats {
        self.smmu.lock().unwrap_or_else(|e| e.into_inner()).stats()
    }

    /// Drops the host objects behind the SMMU (call before detaching the devices). The
    /// event thread goes first: its copy of the vEVENTQ fd holds a kernel reference, and
    /// the vEVENTQ (and with it the vIOMMU, the stage 2 and the IOAS) cannot be destroyed
    /// while that is open (EBUSY, seen in the rig).
    pub fn release_host(&mut self) {
        self.stop_events();
        let backend = self
            .smmu
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_backend();
        drop(backend);
    }
}

impl VmVsmmu {
    fn stop_events(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.events.take() {
            let _ = h.join();
        }
    }
}

impl Drop for VmVsmmu {
    fn drop(&mut self) {
        self.release_host();
        log::info!("vSMMU: {}", self.stats());
        self.parent.take();
    }
}

fn event_thread(smmu: &Mutex<Smmuv3<GuestMemoryMmap>>, stop: &AtomicBool) {
    // Before the first host event: what it reads comes from the device, and so the guest.
    if let Err(e) = crate::seccomp::install(&crate::seccomp::filters::VSMMU_EVENTS) {
        log::error!("vSMMU: {e}; host events (faults) will not reach the guest");
        return;
    }
    let mut logged = Smmuv3Stats::default();
    let mut last_log = Instant::now();
    let epoll = Epoll::new()
        .map_err(|e| log::warn!("vSMMU: no epoll ({e}); polling host events"))
        .ok();
    // The vEVENTQ exists once the guest enables its event queue.
    let mut watched: Option<OwnedFd> = None;
    let mut before = Smmuv3Stats::default();
    while !stop.load(Ordering::Acquire) {
        if let (Some(ep), None) = (&epoll, &watched) {
            let fd = smmu.lock().unwrap_or_else(|e| e.into_inner()).event_fd();
            if let Some(fd) = fd {
                let ev = EpollEvent::new(EventSet::IN, 0);
                match ep.ctl(ControlOperation::Add, fd.as_raw_fd(), ev) {
                    Ok(()) => watched = Some(fd),
                    Err(e) => log::warn!("vSMMU: cannot watch the vEVENTQ ({e}); polling"),
                }
            }
        }
        match (&epoll, &watched) {
            (Some(ep), Some(_)) => {
                let mut events = [EpollEvent::default(); 1];
                if let Err(e) = ep.wait(EVENT_WAIT_MS, &mut events) {
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        log::warn!("vSMMU: epoll_wait: {e}");
                        std::thread::sleep(EVENT_POLL);
                    }
                }
            }
            _ => std::thread::sleep(EVENT_POLL),
        }
        let stats = {
            let mut s = smmu.lock().unwrap_or_else(|e| e.into_inner());
            s.service_events();
            s.stats()
        };
        if watched.is_some()
            && (stats.events, stats.events_lost) == (before.events, before.events_lost)
        {
            // Nothing moved: do not spin on a level-triggered fd the guest is not draining.
            std::thread::sleep(EVENT_POLL);
        }
        before = stats;
        if stats != logged && last_log.elapsed() >= STATS_EVERY {
            log::info!("vSMMU: {stats}");
            logged = stats;
            last_log = Instant::now();
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use devices::smmuv3::guest_driver::{DriverLayout, GuestDriver};
    use devices::BusDevice;
    use passthrough::model::{ModelDevice, ModelIommufd};
    use passthrough::{DeviceHandle, Iommufd};
    use vm_memory::GuestAddress;

    /// The SMMU as the guest reaches it: through the MMIO bus at its base.
    struct At<'a> {
        bus: &'a Bus,
        base: u64,
    }

    impl BusDevice for At<'_> {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            assert!(self.bus.read(self.base + offset, data));
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            assert!(self.bus.write(self.base + offset, data));
        }
    }

    const SLOT: VsmmuSlot = VsmmuSlot {
        base: 0x0900_0000,
        size: 0x2_0000,
        eventq_spi: 2,
        gerror_spi: 3,
        msi_doorbell: 0x0203_0040,
    };

    #[test]
    fn devices_go_behind_the_vsmmu_and_come_back_on_teardown() {
        let vm = match crate::vstate::vm::Vm::new() {
            Ok(vm) => vm,
            Err(e) => {
                eprintln!("SKIPPED: no usable /dev/kvm for the irqfds: {e}");
                return;
            }
        };
        vm.setup_irqchip().unwrap();
        let model = Arc::new(Mutex::new(ModelIommufd::with_page_size(4096)));
        let shared: SharedIommufd = model.clone();
        let (ioas, dev, host) = {
            let mut m = model.lock().unwrap();
            let ioas = m.alloc_ioas().unwrap();
            let dev = m
                .bind_device(DeviceHandle::Model(ModelDevice::arm_smmuv3()))
                .unwrap();
            m.attach_device(dev, ioas.into()).unwrap();
            let data = m.hw_info(dev).unwrap().data;
            (ioas, dev, HostSmmuInfo::from_hw_info_data(&data).unwrap())
        };
        let before = model.lock().unwrap().object_ids().len();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let mut bus = Bus::new();
        let nested = [NestedDevice {
            name: "disk".into(),
            dev,
            rid: 0x10,
        }];
        let window = vec![(0x0800_0000, 0x10_0000)];
        let mut vsmmu = VmVsmmu::new(
            shared,
            ioas,
            &nested,
            &host,
            mem.clone(),
            vm.fd(),
            SLOT,
            window.clone(),
            &mut bus,
        )
        .unwrap();
        assert_eq!(vsmmu.node().rids, [0x10]);
        assert_eq!(vsmmu.node().msi_windows, window);

        let mut smmu = At {
            bus: &bus,
            base: SLOT.base,
        };
        let layout = DriverLayout {
            strtab: 0x10_0000,
            cmdq: 0x20_0000,
            cmdq_log2: 8,
            eventq: 0x30_0000,
            eventq_log2: 4,
        };
        let mut d = GuestDriver::probe(&mut smmu, &mem, layout).unwrap();
        let ste = [1 | (5 << 1) | 0x12_3440, 0, 0, 0, 0, 0, 0, 0];
        d.write_ste(&mut smmu, &mem, 0x10, ste).unwrap();
        {
            let m = model.lock().unwrap();
            let hwpt = m.attached_hwpt(dev).unwrap();
            assert_eq!(m.nested_ste(hwpt), Some([ste[0], 0]));
        }
        // A device fault reaches the guest through the event thread.
        let phys = u64::from(ModelDevice::arm_smmuv3().stream_id);
        assert!(model
            .lock()
            .unwrap()
            .report_event(dev, [0x10 | (phys << 32), 0, 0, 0]));
        let deadline = Instant::now() + Duration::from_secs(5);
        while vsmmu.stats().events == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let (events, _) = d.read_events(&mut smmu, &mem).unwrap();
        assert_eq!(events, vec![[0x10 | (0x10 << 32), 0, 0, 0]]);
        assert!(vsmmu.stats().ste_installs >= 2);

        // Teardown as vfio::Passthrough does it: host objects, devices, stage 2.
        vsmmu.release_host();
        let parent_hwpt = model.lock().unwrap().attached_hwpt(dev).unwrap();
        assert_eq!(model.lock().unwrap().nested_ste(parent_hwpt), None);
        model.lock().unwrap().detach_device(dev).unwrap();
        drop(vsmmu);
        model
            .lock()
            .unwrap()
            .attach_device(dev, ioas.into())
            .unwrap();
        assert_eq!(model.lock().unwrap().object_ids().len(), before);
        // The guest still reaches a (detached) SMMU without harm.
        d.write_ste(&mut smmu, &mem, 0x10, ste).unwrap();
    }
}
