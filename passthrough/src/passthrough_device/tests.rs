//! Setup and teardown of [`PassthroughDevice`] on the model iommufd, a fake VFIO device and
//! fake KVM: every step failing in turn, and full rollback each time.

use std::error::Error;
use std::path::PathBuf;

use devices::pci::{BarReprogram, MsiInterruptGroup, PciBarKind, PciDevice};

use super::*;
use crate::device_spec::DeviceSpec;
use crate::fake_vfio::{FakeOp, FakeVfioHandle};
use crate::hypervisor::{FakeInterruptGroup, FakeKvmVfio, FakeMemslots};
use crate::iommufd::{MapSource, ObjectId};
use crate::iova::HostVirtAddr;
use crate::memlock::MemlockLimit;
use crate::model::ModelIommufd;
use crate::ram_dma::{GuestRam, GuestRamDma};
use crate::vfio_cdev::PciPassthroughDevice;

const BDF: &str = "0000:00:03.0";

struct Vm {
    model: Arc<Mutex<ModelIommufd>>,
    kvm: Arc<FakeKvmVfio>,
    slots: Arc<FakeMemslots>,
    vm: VmPassthrough,
}

impl Vm {
    fn new() -> Vm {
        let model = Arc::new(Mutex::new(ModelIommufd::with_page_size(4096)));
        let shared: SharedIommufd = model.clone();
        let ioas = lock(&shared).alloc_ioas().unwrap();
        let kvm = Arc::new(FakeKvmVfio::default());
        let slots = Arc::new(FakeMemslots::default());
        let mut vm = VmPassthrough::new(shared, ioas, kvm.clone(), slots.clone());
        vm.sysfs = Sysfs::new(std::env::temp_dir().join("no-such-sysfs"));
        vm.options = PciFunctionOptions {
            page_size: 4096,
            io_bars: true,
        };
        Vm {
            model,
            kvm,
            slots,
            vm,
        }
    }

    fn objects(&self) -> Vec<ObjectId> {
        self.model.lock().unwrap().object_ids()
    }

    /// Asserts nothing of any device is left: only the IOAS in the iommufd, no KVM file,
    /// no memory slot.
    fn assert_clean(&self, what: &str) {
        assert_eq!(
            self.objects(),
            vec![ObjectId(self.vm.ioas.0)],
            "{what}: iommufd objects"
        );
        assert!(self.kvm.files().is_empty(), "{what}: KVM files");
        assert!(self.slots.slots().is_empty(), "{what}: memory slots");
        assert!(
            self.vm.attached.lock().unwrap().is_empty(),
            "{what}: registry"
        );
    }
}

fn located(name: &str) -> LocatedDevice {
    LocatedDevice {
        name: name.to_string(),
        spec: DeviceSpec {
            path: PathBuf::from(format!("/sys/bus/pci/devices/{BDF}")),
            id: Some(name.to_string()),
            iommu: false,
        },
        pci: PciPassthroughDevice {
            bdf: BDF.to_string(),
            cdev: PathBuf::from("/dev/vfio/devices/vfio0"),
        },
    }
}

type Made = Arc<Mutex<Vec<Arc<FakeInterruptGroup>>>>;

fn attach(vm: &Vm, opener: &mut FakeOpener) -> (Result<PassthroughDevice, PassthroughError>, Made) {
    let made: Made = Arc::default();
    let made2 = made.clone();
    let mut groups =
        move |n: u16| -> Result<Arc<dyn MsiInterruptGroup>, Box<dyn Error + Send + Sync>> {
            let g = Arc::new(FakeInterruptGroup::new(n)?);
            made2.lock().unwrap().push(g.clone());
            Ok(g)
        };
    let r = PassthroughDevice::attach(&located("disk"), &vm.vm, opener, &mut groups);
    (r, made)
}

fn opener_with(dev: FakeVfioDevice) -> (FakeOpener, FakeVfioHandle) {
    let handle = dev.handle();
    let mut opener = FakeOpener::default();
    opener.push(dev, ModelDevice::x86_vtd());
    (opener, handle)
}

#[test]
fn full_setup_then_drop_leaves_nothing() {
    let vm = Vm::new();
    let (mut opener, h) = opener_with(FakeVfioDevice::virtio_blk());
    let (pt, groups) = attach(&vm, &mut opener);
    let pt = pt.unwrap();
    assert_eq!((pt.name(), pt.bdf()), ("disk", BDF));
    assert_eq!(vm.objects().len(), 3, "IOAS, automatic HWPT, device");
    assert_eq!(vm.kvm.files().len(), 1);
    assert_eq!(h.record().resets, 1, "reset at start");

    // Guest RAM is DMA-able with the device attached.
    let ram = [GuestRam {
        gpa: 0,
        size: 0x10_0000,
        source: MapSource::UserVa(HostVirtAddr(0x7000_0000)),
    }];
    let dma = GuestRamDma::map(
        vm.vm.iommufd.clone(),
        vm.vm.ioas,
        &ram,
        &MemlockLimit::UNLIMITED,
        "--device disk",
    )
    .unwrap();

    // The guest enables MSI-X and the VMM maps BAR 4.
    let f = pt.function().unwrap();
    {
        let mut f = f.lock().unwrap();
        let m = f
            .capabilities()
            .iter()
            .find(|c| c.id == 0x11)
            .unwrap()
            .offset;
        f.config_write(m / 4, 3, &[0x80]);
        f.bar_moved(&BarReprogram {
            bar: 4,
            kind: PciBarKind::Memory64,
            size: 0x4000,
            old: None,
            new: Some(0x1_0000_0000),
        });
    }
    let fds = groups.lock().unwrap()[0].notifier_fds();
    assert_eq!(h.record().set_irqs, vec![(2, 0, fds)]);
    assert_eq!(vm.slots.slots().len(), 1);
    assert_eq!(h.live_mappings(), 1);

    drop(dma);
    drop(pt);
    vm.assert_clean("after drop");
    assert!(!h.is_open());
    assert_eq!(h.live_mappings(), 0);
    let r = h.record();
    assert_eq!(r.resets, 2, "reset at teardown");
    assert_eq!(r.disabled, vec![2]);
    // The PCI root may still hold the function: it is inert.
    assert_eq!(f.lock().unwrap().config_read(0), u32::MAX);
    drop(f);
    // The interrupt group went with the function.
    assert_eq!(Arc::strong_count(&groups.lock().unwrap()[0]), 1);
}

#[test]
fn each_failing_step_is_named_and_rolled_back() {
    type Inject = fn(&Vm, &FakeVfioHandle);
    let cases: [(SetupStep, Inject); 6] = [
        (SetupStep::KvmAdd, |vm, _| {
            vm.kvm
                .fail_add
                .store(true, std::sync::atomic::Ordering::Relaxed)
        }),
        (SetupStep::Bind, |vm, _| {
            vm.model.lock().unwrap().fail_nth(1, libc::EINVAL)
        }),
        (SetupStep::Attach, |vm, _| {
            vm.model.lock().unwrap().fail_nth(2, libc::EINVAL)
        }),
        (SetupStep::Info, |_, h| h.fail_next(FakeOp::Info, libc::EIO)),
        (SetupStep::Reset, |_, h| {
            h.fail_next(FakeOp::Reset, libc::EIO)
        }),
        (SetupStep::Function, |_, h| {
            h.fail_next(FakeOp::IrqInfo, libc::EIO)
        }),
    ];
    for (step, inject) in cases {
        let vm = Vm::new();
        let (mut opener, h) = opener_with(FakeVfioDevice::virtio_blk());
        inject(&vm, &h);
        let err = attach(&vm, &mut opener).0.unwrap_err();
        assert_eq!(err.step(), step, "{err}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("--device disk ({BDF}): ")),
            "{text}"
        );
        vm.assert_clean(&format!("{step:?}"));
        assert!(!h.is_open(), "{step:?}: device closed");
        assert_eq!(h.live_mappings(), 0, "{step:?}: BAR mappings");
        // Reset at start only happens once the earlier steps passed; no reset at teardown
        // unless the start reset succeeded.
        let resets = h.record().resets;
        assert_eq!(
            resets,
            u32::from(step == SetupStep::Function) * 2,
            "{step:?}: resets"
        );
        // The device can be attached again afterwards.
        let (mut opener, _h) = opener_with(FakeVfioDevice::virtio_blk());
        drop(attach(&vm, &mut opener).0.unwrap());
        vm.assert_clean(&format!("{step:?} retried"));
    }

    // Opening fails (no such cdev).
    let vm = Vm::new();
    let err = attach(&vm, &mut FakeOpener::default()).0.unwrap_err();
    assert_eq!(err.step(), SetupStep::Open);
    assert!(err.to_string().contains("/dev/vfio/devices/vfio0"), "{err}");
    assert!(err.to_string().contains("devtmpfs"), "{err}");
    vm.assert_clean("open");

    // A device with neither MSI-X nor MSI.
    let dev = crate::fake_vfio::FakePciBuilder::new(1, 2, 0)
        .bar(0, crate::fake_vfio::FakeBarKind::Mem32, 0x1000, true)
        .build();
    let (mut opener, h) = opener_with(dev);
    let err = attach(&vm, &mut opener).0.unwrap_err();
    assert!(err.to_string().contains("neither MSI-X nor MSI"), "{err}");
    vm.assert_clean("no MSI");
    assert!(!h.is_open());
}

#[test]
fn the_same_device_twice_is_refused() {
    let vm = Vm::new();
    let (mut opener, _h) = opener_with(FakeVfioDevice::virtio_blk());
    opener.push(FakeVfioDevice::virtio_blk(), ModelDevice::x86_vtd());
    let first = attach(&vm, &mut opener).0.unwrap();
    let err = attach(&vm, &mut opener).0.unwrap_err();
    assert_eq!(err.step(), SetupStep::Unique);
    assert!(err.to_string().contains("give each device once"), "{err}");
    assert_eq!(vm.objects().len(), 3, "the first device is untouched");
    drop(first);
    vm.assert_clean("after the first is gone");
    assert!(attach(&vm, &mut opener).0.is_ok());
}

#[test]
fn reserved_regions_colliding_with_mapped_ram_are_explained() {
    // A fake sysfs with the device's IOMMU group and its MSI window.
    let root = std::env::temp_dir().join(format!("pt-collide-{}", std::process::id()));
    let dev = root.join("bus/pci/devices").join(BDF);
    let group = root.join("kernel/iommu_groups/7");
    std::fs::create_dir_all(&dev).unwrap();
    std::fs::create_dir_all(&group).unwrap();
    std::fs::write(
        group.join("reserved_regions"),
        "0x00000000fee00000 0x00000000feefffff msi\n",
    )
    .unwrap();
    let _ = std::fs::remove_file(dev.join("iommu_group"));
    std::os::unix::fs::symlink(&group, dev.join("iommu_group")).unwrap();

    let mut vm = Vm::new();
    vm.vm.sysfs = Sysfs::new(&root);
    // RAM placed without this device in mind covers the MSI window.
    let ram = [GuestRam {
        gpa: 0xfe00_0000,
        size: 0x200_0000,
        source: MapSource::UserVa(HostVirtAddr(0x7000_0000)),
    }];
    let dma = GuestRamDma::map(
        vm.vm.iommufd.clone(),
        vm.vm.ioas,
        &ram,
        &MemlockLimit::UNLIMITED,
        "t",
    )
    .unwrap();
    let (mut opener, h) = opener_with(FakeVfioDevice::virtio_blk());
    let err = attach(&vm, &mut opener).0.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, PassthroughError::ReservedCollision { .. }),
        "{text}"
    );
    assert!(text.contains("msi 0xfee00000-0xfeefffff"), "{text}");
    assert!(text.contains("--print-memory-map"), "{text}");
    assert!(!h.is_open());
    drop(dma);
    vm.assert_clean("collision");
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn devices_without_reset_are_not_reset() {
    let vm = Vm::new();
    let dev = crate::fake_vfio::FakePciBuilder::new(0x1234, 0x11e8, 0)
        .bar(0, crate::fake_vfio::FakeBarKind::Mem32, 0x10_0000, true)
        .msi(true, true)
        .no_reset()
        .build();
    let (mut opener, h) = opener_with(dev);
    let pt = attach(&vm, &mut opener).0.unwrap();
    drop(pt);
    assert_eq!(h.record().resets, 0);
    vm.assert_clean("no reset");
}

#[test]
fn kernel_opener_reports_a_missing_cdev() {
    let mut dev = located("x");
    dev.pci.cdev = PathBuf::from("/nonexistent/vfio0");
    let err = KernelOpener.open(&dev).err().unwrap();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
}

#[test]
fn no_iommufd_names_the_devices_and_the_missing_kernel_support() {
    let err = open_iommufd(
        std::path::Path::new("/nonexistent/iommu"),
        &[located("disk")],
    )
    .unwrap_err();
    assert_eq!(err.step(), SetupStep::Iommufd);
    let text = err.to_string();
    assert!(
        text.starts_with("--device disk (0000:00:03.0): device passthrough needs"),
        "{text}"
    );
    assert!(text.contains("CONFIG_IOMMUFD"), "{text}");
}

#[test]
fn types_fit_the_vmm() {
    fn send<T: Send>() {}
    send::<PassthroughDevice>();
    send::<VfioPciFunction>();
    // The kernel backend can be shared like the model.
    fn shared(k: crate::kernel::KernelIommufd) -> SharedIommufd {
        Arc::new(Mutex::new(k))
    }
    let _ = shared;
    // The function goes on the PCI root as a `dyn PciDevice`.
    let vm = Vm::new();
    let (mut opener, _h) = opener_with(FakeVfioDevice::edu());
    let pt = attach(&vm, &mut opener).0.unwrap();
    let on_root: Arc<Mutex<dyn PciDevice>> = pt.function().unwrap();
    assert_eq!(on_root.lock().unwrap().config_read(0), 0x11e8_1234);
}
