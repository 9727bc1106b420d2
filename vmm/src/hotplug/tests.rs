//! Hotplug orchestration on the iommufd model with fake VFIO devices, fake KVM and a
//! simulated guest that drives the root ports' slots through the PCI root's config space
//! as Linux's pciehp does.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use devices::pci::hotplug_slot::{
    SLTCTL_ABPE, SLTCTL_ATTN_IND_OFF, SLTCTL_CCIE, SLTCTL_DLLSCE, SLTCTL_HPIE, SLTCTL_PCC,
    SLTCTL_PIC, SLTCTL_PWR_IND_OFF, SLTCTL_PWR_IND_ON, SLTSTA_ABP, SLTSTA_PDS,
};
use devices::pci::{PciWindows, RootPortWindows};
use passthrough::fake_vfio::FakeVfioHandle;
use passthrough::iommufd::{DeviceHandle, ObjectId};
use passthrough::passthrough_device::VfioOpener;
use passthrough::ram_dma::SharedIommufd;
use passthrough::vfio_cdev::PciPassthroughDevice;
use passthrough::vfio_device::VfioDevice;
use passthrough::{FakeVfioDevice, ModelDevice, ModelIommufd, ReservedKind, ReservedRegion};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::interrupts::test_utils::FakeRouting;
use crate::interrupts::IrqRouting;
use crate::interrupts::Route;
use crate::vfio::{follow_bar_move, PassthroughFunctions};
use passthrough::faulty::{Faults, FaultyIommufd, FaultyKvm, FaultySlots, FaultyVfio};

const RAM: u64 = 0x20_0000;
/// Slot Control / Status of a root port (PCIe capability at 0x50).
const SLOT_REG: usize = (0x50 + 0x18) / 4;
const PAGE: u64 = 4096;

/// A host device the fake host offers.
#[derive(Clone)]
struct HostDev {
    bdf: String,
    reserved: Vec<IovaRange>,
    /// Behind a host SMMUv3 that can nest.
    smmu: bool,
}

/// Host devices on the iommufd model: `locate` finds them by path, `probe` attaches a model
/// device to a scratch IOAS as the kernel path does, `open` makes a fresh fake VFIO device.
struct ModelSource {
    iommufd: SharedIommufd,
    devices: Arc<Mutex<HashMap<PathBuf, HostDev>>>,
    opener: ModelOpener,
}

struct ModelOpener {
    devices: Arc<Mutex<HashMap<PathBuf, HostDev>>>,
    handles: Arc<Mutex<Vec<FakeVfioHandle>>>,
    faults: Arc<Faults>,
}

fn model_device(d: &HostDev) -> ModelDevice {
    if d.smmu {
        let mut m = ModelDevice::arm_smmuv3();
        m.name = d.bdf.clone();
        m.reserved = d.reserved.clone();
        return m;
    }
    ModelDevice::new(d.bdf.clone(), d.reserved.clone(), IovaRange::FULL)
}

impl VfioOpener for ModelOpener {
    fn open(
        &mut self,
        dev: &LocatedDevice,
    ) -> std::io::Result<(Box<dyn VfioDevice>, DeviceHandle)> {
        let host = lock(&self.devices)
            .get(&dev.spec.path)
            .cloned()
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOENT))?;
        if self.faults.hit("open the cdev") {
            return Err(std::io::Error::from_raw_os_error(libc::EMFILE));
        }
        let fake = FakeVfioDevice::virtio_blk();
        lock(&self.handles).push(fake.handle());
        Ok((
            Box::new(FaultyVfio::new(fake, self.faults.clone())),
            DeviceHandle::Model(model_device(&host)),
        ))
    }
}

impl DeviceSource for ModelSource {
    fn iommufd(&mut self, _devices: &[LocatedDevice]) -> Result<SharedIommufd, VfioError> {
        Ok(self.iommufd.clone())
    }

    fn locate(&mut self, spec: &DeviceSpec) -> Result<LocatedDevice, VfioError> {
        let host = lock(&self.devices)
            .get(&spec.path)
            .cloned()
            .ok_or_else(|| VfioError::NotFound(spec.name()))?;
        Ok(LocatedDevice {
            name: spec.name(),
            spec: spec.clone(),
            pci: PciPassthroughDevice {
                bdf: host.bdf,
                cdev: PathBuf::from("/dev/vfio/devices/vfio9"),
            },
        })
    }

    fn probe(
        &mut self,
        iommufd: &SharedIommufd,
        dev: &LocatedDevice,
    ) -> Result<DeviceRanges, VfioError> {
        let host = lock(&self.devices)
            .get(&dev.spec.path)
            .cloned()
            .ok_or_else(|| VfioError::NotFound(dev.name.clone()))?;
        // The kernel path's own probe, on a model device.
        let mut fd = passthrough::ram_dma::lock(iommufd);
        let ranges = passthrough::probe_iova_ranges(
            &mut *fd,
            &host.bdf,
            DeviceHandle::Model(model_device(&host)),
        )
        .map_err(|e| VfioError::Probe(dev.name.clone(), e))?;
        let ranges = Some(ranges);
        Ok(DeviceRanges {
            name: Arc::from(host.bdf.as_str()),
            iova_ranges: ranges,
            reserved: host
                .reserved
                .iter()
                .map(|&range| ReservedRegion {
                    range,
                    kind: ReservedKind::Msi,
                })
                .collect(),
        })
    }

    fn opener(&mut self) -> &mut dyn VfioOpener {
        &mut self.opener
    }
}

/// How the simulated guest treats its slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Guest {
    /// pciehp: powers on at a button press on an empty-powered slot, off on a powered one.
    Pciehp,
    /// Enables hotplug but never acts on a button.
    Deaf,
    /// Powers slots on but never lets a device go.
    Clingy,
    /// No port driver: hotplug never enabled.
    Absent,
    /// pciehp bound on every port but the first.
    NotOnFirst,
}

/// The fake routing, failing the call [`Faults`] picks (a failed call changes nothing).
struct FaultyRouting {
    routing: FakeRouting,
    faults: Arc<Faults>,
}

impl IrqRouting for FaultyRouting {
    fn set_routes(&self, routes: &[(u32, Route)]) -> std::io::Result<()> {
        if self.faults.hit("KVM_SET_GSI_ROUTING") {
            return Err(std::io::Error::from_raw_os_error(libc::ENOMEM));
        }
        self.routing.set_routes(routes)
    }
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> std::io::Result<()> {
        if self.faults.hit("KVM_IRQFD (assign)") {
            return Err(std::io::Error::from_raw_os_error(libc::ENOMEM));
        }
        self.routing.register_irqfd(fd, gsi)
    }
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> std::io::Result<()> {
        // Deassigning cannot fail for an fd KVM has; not a boundary call worth failing.
        self.routing.unregister_irqfd(fd, gsi)
    }
}

struct Rig {
    /// Every boundary call below (iommufd, VFIO, KVM-VFIO, memory slots, routing) is
    /// counted here; `faults.fail_after(n)` fails one.
    faults: Arc<Faults>,
    model: Arc<Mutex<FaultyIommufd>>,
    kvm: Arc<FaultyKvm>,
    slots: Arc<FaultySlots>,
    irq: Arc<InterruptManager>,
    root: Arc<Mutex<PciRoot>>,
    pt: Arc<Mutex<Passthrough>>,
    hosts: Arc<Mutex<HashMap<PathBuf, HostDev>>>,
    handles: Arc<Mutex<Vec<FakeVfioHandle>>>,
    mem: GuestMemoryMmap,
    hp: PciHotplug,
    stop: Arc<AtomicBool>,
    guest: Option<JoinHandle<()>>,
}

/// The VM's IOAS, its mappings and its allowed ranges.
type IoasState = (passthrough::IoasId, Vec<IovaRange>, Vec<IovaRange>);

/// What must come back after a device leaves.
#[derive(Debug, PartialEq)]
struct Snapshot {
    objects: Vec<ObjectId>,
    kvm_files: usize,
    memslots: usize,
    routes: Vec<(u32, Route)>,
    gsis: usize,
    devices: usize,
    present: Vec<bool>,
}

fn path(name: &str) -> PathBuf {
    PathBuf::from(format!("/sys/bus/pci/devices/{name}"))
}

impl Rig {
    fn new(ports: u8, guest: Guest) -> Rig {
        let faults = Faults::new(0);
        let model = FaultyIommufd::shared(ModelIommufd::with_page_size(PAGE), &faults);
        let shared: SharedIommufd = model.clone();
        let kvm = FaultyKvm::shared(&faults);
        let slots = FaultySlots::shared(&faults);
        let irq = Arc::new(InterruptManager::new(
            Arc::new(FaultyRouting {
                routing: FakeRouting::default(),
                faults: faults.clone(),
            }),
            &[],
            24,
            1024,
        ));
        let functions: PassthroughFunctions = Arc::default();
        let mut root = PciRoot::new(&PciWindows {
            mmio32: 0xc000_0000..0xe000_0000,
            mmio64: Some(0x40_0000_0000..0x80_0000_0000),
            io: None,
        })
        .unwrap();
        let f = functions.clone();
        root.set_bar_move_callback(Box::new(move |bdf, r| follow_bar_move(&f, bdf, r)));
        for i in 0..ports {
            let group = Arc::new(irq.msi_group(1, None).unwrap());
            let windows = RootPortWindows {
                mem: root.reserve_window(false, 1 << 20).unwrap(),
                pref: root.reserve_window(true, 1 << 24).unwrap(),
            };
            let port = RootPort::new(i + 1, i + 1, &windows, false, group).unwrap();
            root.add_root_port(Arc::new(Mutex::new(port))).unwrap();
        }
        let root = Arc::new(Mutex::new(root));
        let kvm2 = kvm.clone();
        let mut pt = Passthrough::new(
            Box::new(move || Ok(kvm2.clone() as Arc<dyn passthrough::KvmVfio>)),
            slots.clone(),
            false,
            functions,
        );
        pt.use_iommufd(shared.clone());
        let pt = Arc::new(Mutex::new(pt));
        let hosts: Arc<Mutex<HashMap<PathBuf, HostDev>>> = Arc::default();
        for (name, bdf) in [
            ("a", "0000:00:03.0"),
            ("b", "0000:00:04.0"),
            ("c", "0000:00:05.0"),
        ] {
            lock(&hosts).insert(
                path(name),
                HostDev {
                    bdf: bdf.to_string(),
                    reserved: vec![IovaRange::new(0xfee0_0000, 0xfeef_ffff).unwrap()],
                    smmu: false,
                },
            );
        }
        let handles: Arc<Mutex<Vec<FakeVfioHandle>>> = Arc::default();
        let source = ModelSource {
            iommufd: shared,
            devices: hosts.clone(),
            opener: ModelOpener {
                devices: hosts.clone(),
                handles: handles.clone(),
                faults: faults.clone(),
            },
        };
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
        let hp = PciHotplug::new(
            root.clone(),
            pt.clone(),
            irq.clone(),
            mem.clone(),
            Box::new(source),
            false,
            HotplugTimeouts {
                add: Duration::from_secs(5),
                remove: Duration::from_secs(5),
                poll: Duration::from_millis(1),
                settle: Duration::from_secs(1),
            },
        );
        let stop = Arc::new(AtomicBool::new(false));
        let (ready, set_up) = std::sync::mpsc::channel();
        let guest = Some(spawn_guest(root.clone(), ports, guest, stop.clone(), ready));
        // Let the guest's port driver set up before anything is asked (a fixed pause is
        // too short on a loaded machine).
        set_up.recv_timeout(Duration::from_secs(30)).unwrap();
        Rig {
            faults,
            model,
            kvm,
            slots,
            irq,
            root,
            pt,
            hosts,
            handles,
            mem,
            hp,
            stop,
            guest,
        }
    }

    fn snapshot(&self) -> Snapshot {
        let root = lock(&self.root);
        Snapshot {
            objects: lock(&self.model).model.object_ids(),
            kvm_files: self.kvm.kvm.files().len(),
            memslots: self.slots.slots.slots().len(),
            routes: self.irq.routes(),
            gsis: self.irq.gsis_in_use(),
            devices: lock(&self.pt).len(),
            present: (0..root.port_count())
                .map(|i| lock(&root.port(i).unwrap()).slot().present())
                .collect(),
        }
    }

    fn add(&mut self, name: &str) -> Result<DeviceInfo, HotplugFault> {
        self.hp.add_device(AddDevice {
            path: path(name),
            id: Some(name.to_string()),
            iommu: false,
        })
    }

    fn ioas_state(&self) -> Option<IoasState> {
        let ioas = lock(&self.pt).ioas()?;
        let m = &lock(&self.model).model;
        Some((ioas, m.mappings(ioas), m.allowed(ioas)))
    }

    /// Attaches host device `name` the way the VMM does at start: the shared attach path,
    /// a bus-0 slot, RAM mapped.
    fn cold_plug(&mut self, name: &str) {
        let spec = DeviceSpec {
            path: path(name),
            id: Some(name.to_string()),
            iommu: false,
        };
        let host = lock(&self.hosts).get(&spec.path).cloned().unwrap();
        let located = LocatedDevice {
            name: name.to_string(),
            spec: spec.clone(),
            pci: PciPassthroughDevice {
                bdf: host.bdf,
                cdev: PathBuf::from("/dev/vfio/devices/vfio0"),
            },
        };
        let mut opener = ModelOpener {
            devices: self.hosts.clone(),
            handles: self.handles.clone(),
            faults: self.faults.clone(),
        };
        let irq = self.irq.clone();
        let mut groups = |n: u16| {
            irq.msi_group(n, None)
                .map(|g| Arc::new(g) as Arc<dyn MsiInterruptGroup>)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        };
        let mut pt = lock(&self.pt);
        let (device, function) = pt.attach(&located, &mut opener, &mut groups).unwrap();
        let bdf = lock(&self.root).add_device(function.clone()).unwrap();
        pt.adopt(AttachedDevice {
            id: name.to_string(),
            path: spec.path,
            key: bdf,
            guest_bdf: bdf,
            port: None,
            iommu: false,
            device,
            function,
        });
        pt.map_ram(&self.mem, name).unwrap();
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(g) = self.guest.take() {
            let _ = g.join();
        }
    }
}

fn cfg_read(root: &Mutex<PciRoot>, bdf: PciBdf, reg: usize) -> u32 {
    lock(root).config_read(bdf, reg)
}

fn cfg_write(root: &Mutex<PciRoot>, bdf: PciBdf, reg: usize, offset: u64, data: &[u8]) {
    lock(root).config_write(bdf, reg, offset, data);
}

/// A guest: its port driver enables MSI and slot notification on every port (then says so
/// on `ready`), then it polls each slot's status as pciehp's interrupt thread would.
fn spawn_guest(
    root: Arc<Mutex<PciRoot>>,
    ports: u8,
    mode: Guest,
    stop: Arc<AtomicBool>,
    ready: std::sync::mpsc::Sender<()>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let skip = usize::from(mode == Guest::NotOnFirst);
        let port_bdfs: Vec<PciBdf> = (skip..usize::from(ports))
            .map(|i| lock(&root).port_bdf(i).unwrap())
            .collect();
        if mode == Guest::Absent {
            let _ = ready.send(());
            return;
        }
        for &p in &port_bdfs {
            cfg_write(&root, p, 0x44 / 4, 0, &0xfee0_0000u32.to_le_bytes());
            cfg_write(&root, p, 0x4c / 4, 0, &0x30u32.to_le_bytes());
            cfg_write(&root, p, 0x40 / 4, 2, &[1]);
            let ctl = SLTCTL_ABPE
                | SLTCTL_CCIE
                | SLTCTL_HPIE
                | SLTCTL_DLLSCE
                | SLTCTL_PCC
                | SLTCTL_PWR_IND_OFF
                | SLTCTL_ATTN_IND_OFF;
            cfg_write(&root, p, SLOT_REG, 0, &ctl.to_le_bytes());
        }
        let _ = ready.send(());
        while !stop.load(Ordering::Acquire) {
            for &p in &port_bdfs {
                let reg = cfg_read(&root, p, SLOT_REG);
                let (ctl, status) = (reg as u16, (reg >> 16) as u16);
                // Acknowledge every event.
                cfg_write(&root, p, SLOT_REG, 2, &status.to_le_bytes());
                if status & SLTSTA_ABP == 0 || mode == Guest::Deaf {
                    continue;
                }
                let powered = ctl & SLTCTL_PCC == 0;
                if !powered && status & SLTSTA_PDS != 0 {
                    let on = ctl & !SLTCTL_PCC;
                    cfg_write(&root, p, SLOT_REG, 0, &on.to_le_bytes());
                    // Enumerate: BAR 4 of the new function from the port's window, decode on.
                    let bus = (cfg_read(&root, p, 6) >> 8) as u8;
                    let child = PciBdf::new(bus, 0, 0).unwrap();
                    let pref = (u64::from(cfg_read(&root, p, 9) & 0xfff0) << 16)
                        | u64::from(cfg_read(&root, p, 10)) << 32;
                    cfg_write(&root, child, 8, 0, &(pref as u32).to_le_bytes());
                    cfg_write(&root, child, 9, 0, &((pref >> 32) as u32).to_le_bytes());
                    cfg_write(&root, child, 1, 0, &[0x06]);
                    let lit = (on & !SLTCTL_PIC) | SLTCTL_PWR_IND_ON;
                    cfg_write(&root, p, SLOT_REG, 0, &lit.to_le_bytes());
                } else if powered && matches!(mode, Guest::Pciehp | Guest::NotOnFirst) {
                    let off = ctl | SLTCTL_PCC;
                    cfg_write(&root, p, SLOT_REG, 0, &off.to_le_bytes());
                    let dark = (off & !SLTCTL_PIC) | SLTCTL_PWR_IND_OFF;
                    cfg_write(&root, p, SLOT_REG, 0, &dark.to_le_bytes());
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    })
}

#[test]
fn bad_requests_are_classified() {
    let mut rig = Rig::new(1, Guest::Pciehp);
    fn req(rig: &mut Rig, path: PathBuf, id: Option<&str>, iommu: bool) -> HotplugFault {
        rig.hp
            .add_device(AddDevice {
                path,
                id: id.map(str::to_string),
                iommu,
            })
            .unwrap_err()
    }
    let e = req(&mut rig, path("a"), None, true);
    assert_eq!(e.kind, HotplugFaultKind::BadRequest);
    assert!(e.message.contains("iommu"), "{e}");
    assert_eq!(
        req(&mut rig, path("a"), Some("a b"), false).kind,
        HotplugFaultKind::BadRequest
    );
    assert_eq!(
        req(&mut rig, path("a"), Some(""), false).kind,
        HotplugFaultKind::BadRequest
    );
    let e = req(&mut rig, path("nope"), Some("x"), false);
    assert_eq!(e.kind, HotplugFaultKind::BadRequest, "{e}");
    rig.add("a").unwrap();
    // Same id, same device, no slot left.
    let e = req(&mut rig, path("b"), Some("a"), false);
    assert_eq!(e.kind, HotplugFaultKind::Conflict, "{e}");
    let e = req(&mut rig, path("a"), Some("a2"), false);
    assert_eq!(e.kind, HotplugFaultKind::Conflict, "{e}");
    let e = req(&mut rig, path("b"), Some("b"), false);
    assert_eq!(e.kind, HotplugFaultKind::Conflict, "{e}");
    assert!(e.message.contains("no free hotplug slot"), "{e}");
    assert_eq!(
        rig.hp.remove_device("zz").unwrap_err().kind,
        HotplugFaultKind::NotFound
    );
    // Without an id, the device's address names it.
    rig.hp.remove_device("a").unwrap();
    let info = rig
        .hp
        .add_device(AddDevice {
            path: path("0000:00:04.0"),
            id: None,
            iommu: false,
        })
        .unwrap_err();
    assert_eq!(
        info.kind,
        HotplugFaultKind::BadRequest,
        "not offered by the host"
    );
}

#[test]
fn ram_conflicts_name_the_range() {
    let r = |a, b| IovaRange::new(a, b).unwrap();
    let ranges = DeviceRanges {
        name: Arc::from("d"),
        iova_ranges: Some(vec![r(0, 0xfedf_ffff), r(0xfef0_0000, u64::MAX)]),
        reserved: vec![ReservedRegion {
            range: r(0xfee0_0000, 0xfeef_ffff),
            kind: ReservedKind::Msi,
        }],
    };
    assert_eq!(ram_conflict(&ranges, &[(0, 0x8000_0000)]), None);
    let why = ram_conflict(&ranges, &[(0, 0x8000_0000), (0xfe00_0000, 0x200_0000)]).unwrap();
    assert!(why.contains("msi 0xfee00000-0xfeefffff"), "{why}");
    let mut relaxable = ranges.clone();
    relaxable.reserved[0].kind = ReservedKind::DirectRelaxable;
    let why = ram_conflict(&relaxable, &[(0xfe00_0000, 0x200_0000)]).unwrap();
    assert!(why.contains("outside the IOVA ranges"), "{why}");
    relaxable.iova_ranges = None;
    assert_eq!(ram_conflict(&relaxable, &[(0xfe00_0000, 0x200_0000)]), None);
}

#[test]
fn a_failed_attach_undoes_the_first_device_ioas_and_ram() {
    let mut rig = Rig::new(1, Guest::Pciehp);
    let before = rig.snapshot();
    rig.kvm.kvm.fail_add.store(true, Ordering::Relaxed);
    let err = rig.add("a").unwrap_err();
    assert_eq!(err.kind, HotplugFaultKind::Internal, "{err}");
    assert!(err.message.contains("KVM_DEV_VFIO_FILE_ADD"), "{err}");
    assert_eq!(rig.snapshot(), before);
    assert!(rig.ioas_state().is_none());
    // The slot is free and works once KVM accepts the device.
    rig.kvm.kvm.fail_add.store(false, Ordering::Relaxed);
    rig.add("a").unwrap();
    rig.hp.remove_device("a").unwrap();
    assert_eq!(rig.snapshot(), before);
}

#[test]
fn the_device_goes_to_a_slot_the_guest_listens_to() {
    let mut rig = Rig::new(2, Guest::NotOnFirst);
    let info = rig.add("a").unwrap();
    assert_eq!(info.bdf, "02:00.0", "behind the second port");
    assert_eq!(rig.snapshot().present, vec![false, true]);
    // The only slot the guest handles is taken now.
    let err = rig.add("b").unwrap_err();
    assert_eq!(err.kind, HotplugFaultKind::NotReady, "{err}");
    assert!(err.message.contains("slot 1"), "{err}");
    rig.hp.remove_device("a").unwrap();
}

/// Cold-plugged devices behind the vSMMU (built after them, as at start) and hot-added
/// devices share the Passthrough owner: a hot add and remove leave the vSMMU's devices where
/// they are, and dropping the owner tears down in order (the model refuses to destroy a
/// stage 2 that still has devices, so a wrong order leaves objects behind).
#[cfg(target_arch = "x86_64")]
#[test]
fn hot_adds_beside_the_vsmmu_leave_it_alone_and_teardown_is_ordered() {
    use crate::vsmmu::{NestedDevice, VmVsmmu, VsmmuSlot};
    use devices::smmuv3::HostSmmuInfo;
    use passthrough::Iommufd;

    let vm = match crate::vstate::vm::Vm::new() {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("SKIPPED: no usable /dev/kvm for the vSMMU's irqfds: {e}");
            return;
        }
    };
    vm.setup_irqchip().unwrap();
    let mut rig = Rig::new(1, Guest::Pciehp);
    lock(&rig.hosts).get_mut(&path("a")).unwrap().smmu = true;
    rig.cold_plug("a");
    let mut bus = devices::Bus::new();
    {
        let mut pt = lock(&rig.pt);
        let a = &pt.devices()[0];
        let dev = a.device.dev_id().unwrap();
        let rid = a.guest_bdf.requester_id();
        let data = lock(&rig.model).hw_info(dev).unwrap().data;
        let host = HostSmmuInfo::from_hw_info_data(&data).unwrap();
        let vsmmu = VmVsmmu::new(
            pt.iommufd().cloned().unwrap(),
            pt.ioas().unwrap(),
            &[NestedDevice {
                name: "a".into(),
                dev,
                rid,
            }],
            &host,
            rig.mem.clone(),
            vm.fd(),
            VsmmuSlot {
                base: 0x0900_0000,
                size: 0x2_0000,
                eventq_spi: 2,
                gerror_spi: 3,
                msi_doorbell: 0x0203_0040,
            },
            Vec::new(),
            &mut bus,
        )
        .unwrap();
        pt.set_vsmmu(vsmmu);
        assert_eq!(pt.vsmmu_node().unwrap().rids, [rid]);
    }
    let dev_a = lock(&rig.pt).devices()[0].device.dev_id().unwrap();
    let stage2 = lock(&rig.model).model.attached_hwpt(dev_a).unwrap();
    let before = rig.snapshot();

    rig.add("b").unwrap();
    assert_eq!(lock(&rig.model).model.attached_hwpt(dev_a), Some(stage2));
    rig.hp.remove_device("b").unwrap();
    assert_eq!(rig.snapshot(), before);
    assert_eq!(lock(&rig.model).model.attached_hwpt(dev_a), Some(stage2));
    assert!(lock(&rig.pt).vsmmu_node().is_some());
    let err = rig.hp.remove_device("a").unwrap_err();
    assert_eq!(err.kind, HotplugFaultKind::Conflict, "{err}");

    let model = rig.model.clone();
    drop(rig);
    assert_eq!(lock(&model).model.object_ids(), Vec::<ObjectId>::new());
}

mod fail_nth;
mod lifecycle;
