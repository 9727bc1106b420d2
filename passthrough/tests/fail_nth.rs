//! Failure injection over the whole passthrough life cycle, as `vmm/src/vfio.rs` drives it:
//! probe each device's IOVA ranges, allocate the VM's IOAS, attach two devices (open, KVM,
//! bind, attach, reset, PCI function with its interrupt groups), map guest RAM for DMA, let
//! the guest enable MSI-X/MSI and map the BARs, then tear everything down in the VMM's order.
//!
//! Every call across the hardware boundary (iommufd on the model backend, VFIO on fake
//! devices, the KVM-VFIO device, memory slots, interrupt groups) is counted; the sweep makes
//! the N-th of them fail, for N from 1 to the last call of a clean run. Each run must end in
//! at most one error that names the device or step, and leave nothing behind: no iommufd
//! object, KVM file, memory slot, interrupt group, BAR mapping or open file descriptor.
//!
//! Runs as its own test binary (one test) so that counting /proc/self/fd is exact.

use std::collections::VecDeque;
use std::error::Error;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use devices::pci::{BarReprogram, MsiInterruptGroup, PciBarKind, PciDevice};
use passthrough::hypervisor::{
    FakeInterruptGroup, FakeKvmVfio, FakeMemslots, GuestMemslots, KvmVfio, MemslotId,
};
use passthrough::iommufd::{
    DevId, DeviceHandle, HwInfo, HwptFlags, HwptId, IoasId, Iommufd, MapSource, ObjectId, Prot,
    RangesReply, Result as IommufdResult, SmmuCmd, VEvent, VSte, VdeviceId, VeventqId, ViommuId,
};
use passthrough::passthrough_device::{PassthroughDevice, VfioOpener, VmPassthrough};
use passthrough::vfio_device::{DeviceInfo, IrqInfo, RegionInfo, Result as VfioResult, VfioDevice};
use passthrough::{
    probe_iova_ranges, DeviceSpec, FakeOp, FakeVfioDevice, FakeVfioHandle, GuestRam, GuestRamDma,
    HostVirtAddr, Iova, IovaRange, LocatedDevice, MemlockLimit, MmapArea, ModelDevice,
    ModelIommufd, PciFunctionOptions, PciPassthroughDevice, Sysfs, VmIoas,
};
use vmm_sys_util::eventfd::EventFd;

/// Counts boundary calls and fails the one numbered `fail_at` (0: none).
#[derive(Default)]
struct Faults {
    calls: AtomicU64,
    fail_at: AtomicU64,
    names: Mutex<Vec<&'static str>>,
}

impl Faults {
    /// Counts a call of `what`; true if it is the one to fail.
    fn hit(&self, what: &'static str) -> bool {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        self.names.lock().unwrap().push(what);
        n == self.fail_at.load(Ordering::Relaxed)
    }
}

/// The model iommufd, failing a call through its own `fail_nth` (so the failure changes
/// nothing, with the kernel's errno).
struct FaultyIommufd {
    model: ModelIommufd,
    faults: Arc<Faults>,
}

impl FaultyIommufd {
    fn at(&mut self, what: &'static str) -> &mut ModelIommufd {
        if self.faults.hit(what) {
            self.model.fail_nth(1, libc::ENOMEM);
        }
        &mut self.model
    }
}

impl Iommufd for FaultyIommufd {
    fn alloc_ioas(&mut self) -> IommufdResult<IoasId> {
        self.at("IOMMU_IOAS_ALLOC").alloc_ioas()
    }
    fn iova_ranges_into(
        &mut self,
        ioas: IoasId,
        out: &mut [IovaRange],
    ) -> IommufdResult<RangesReply> {
        self.at("IOMMU_IOAS_IOVA_RANGES")
            .iova_ranges_into(ioas, out)
    }
    fn allow_iovas(&mut self, ioas: IoasId, ranges: &[IovaRange]) -> IommufdResult<()> {
        self.at("IOMMU_IOAS_ALLOW_IOVAS").allow_iovas(ioas, ranges)
    }
    fn map(
        &mut self,
        ioas: IoasId,
        source: MapSource<'_>,
        length: u64,
        iova: Option<Iova>,
        prot: Prot,
    ) -> IommufdResult<Iova> {
        self.at("IOMMU_IOAS_MAP")
            .map(ioas, source, length, iova, prot)
    }
    fn unmap(&mut self, ioas: IoasId, iova: Iova, length: u64) -> IommufdResult<u64> {
        self.at("IOMMU_IOAS_UNMAP").unmap(ioas, iova, length)
    }
    fn alloc_hwpt(&mut self, dev: DevId, pt: ObjectId, flags: HwptFlags) -> IommufdResult<HwptId> {
        self.at("IOMMU_HWPT_ALLOC").alloc_hwpt(dev, pt, flags)
    }
    fn hw_info(&mut self, dev: DevId) -> IommufdResult<HwInfo> {
        self.at("IOMMU_GET_HW_INFO").hw_info(dev)
    }
    fn destroy(&mut self, id: ObjectId) -> IommufdResult<()> {
        self.at("IOMMU_DESTROY").destroy(id)
    }
    fn bind_device(&mut self, device: DeviceHandle) -> IommufdResult<DevId> {
        self.at("VFIO_DEVICE_BIND_IOMMUFD").bind_device(device)
    }
    fn attach_device(&mut self, dev: DevId, pt: ObjectId) -> IommufdResult<HwptId> {
        self.at("VFIO_DEVICE_ATTACH_IOMMUFD_PT")
            .attach_device(dev, pt)
    }
    fn detach_device(&mut self, dev: DevId) -> IommufdResult<()> {
        self.at("VFIO_DEVICE_DETACH_IOMMUFD_PT").detach_device(dev)
    }
    // The nested calls: this sweep's start-up path has no vSMMU (iommu=off), so they are
    // passed through uncounted.
    fn alloc_viommu(&mut self, dev: DevId, parent: HwptId) -> IommufdResult<ViommuId> {
        self.model.alloc_viommu(dev, parent)
    }
    fn alloc_vdevice(
        &mut self,
        viommu: ViommuId,
        dev: DevId,
        virt_id: u64,
    ) -> IommufdResult<VdeviceId> {
        self.model.alloc_vdevice(viommu, dev, virt_id)
    }
    fn alloc_nested_hwpt(
        &mut self,
        dev: DevId,
        viommu: ViommuId,
        ste: VSte,
    ) -> IommufdResult<HwptId> {
        self.model.alloc_nested_hwpt(dev, viommu, ste)
    }
    fn invalidate_viommu(&mut self, viommu: ViommuId, cmds: &[SmmuCmd]) -> IommufdResult<()> {
        self.model.invalidate_viommu(viommu, cmds)
    }
    fn alloc_veventq(&mut self, viommu: ViommuId, depth: u32) -> IommufdResult<VeventqId> {
        self.model.alloc_veventq(viommu, depth)
    }
    fn read_vevents(&mut self, veventq: VeventqId, max: usize) -> IommufdResult<Vec<VEvent>> {
        self.model.read_vevents(veventq, max)
    }
    // Not a boundary call: the kernel backend unbinds by closing the cdev, which cannot fail
    // to release it.
    fn unbind_device(&mut self, dev: DevId) -> IommufdResult<()> {
        self.model.unbind_device(dev)
    }
}

/// A fake VFIO device failing a call through the fake's own `fail_next`.
struct FaultyVfio {
    dev: FakeVfioDevice,
    handle: FakeVfioHandle,
    faults: Arc<Faults>,
}

impl FaultyVfio {
    fn at(&self, what: &'static str, op: FakeOp) -> &FakeVfioDevice {
        if self.faults.hit(what) {
            self.handle.fail_next(op, libc::EIO);
        }
        &self.dev
    }
}

impl VfioDevice for FaultyVfio {
    fn info(&self) -> VfioResult<DeviceInfo> {
        self.at("VFIO_DEVICE_GET_INFO", FakeOp::Info).info()
    }
    fn region_info(&self, index: u32) -> VfioResult<RegionInfo> {
        self.at("VFIO_DEVICE_GET_REGION_INFO", FakeOp::RegionInfo)
            .region_info(index)
    }
    fn read(&self, index: u32, offset: u64, data: &mut [u8]) -> VfioResult<()> {
        self.at("pread (VFIO region)", FakeOp::Read)
            .read(index, offset, data)
    }
    fn write(&self, index: u32, offset: u64, data: &[u8]) -> VfioResult<()> {
        self.at("pwrite (VFIO region)", FakeOp::Write)
            .write(index, offset, data)
    }
    fn mmap(&self, index: u32, offset: u64, len: u64) -> VfioResult<MmapArea> {
        self.at("mmap (VFIO region)", FakeOp::Mmap)
            .mmap(index, offset, len)
    }
    fn irq_info(&self, index: u32) -> VfioResult<IrqInfo> {
        self.at("VFIO_DEVICE_GET_IRQ_INFO", FakeOp::IrqInfo)
            .irq_info(index)
    }
    fn set_irq_eventfds(&self, index: u32, start: u32, fds: &[&EventFd]) -> VfioResult<()> {
        self.at("VFIO_DEVICE_SET_IRQS (enable)", FakeOp::SetIrqs)
            .set_irq_eventfds(index, start, fds)
    }
    fn disable_irqs(&self, index: u32) -> VfioResult<()> {
        self.at("VFIO_DEVICE_SET_IRQS (disable)", FakeOp::DisableIrqs)
            .disable_irqs(index)
    }
    fn reset(&self) -> VfioResult<()> {
        self.at("VFIO_DEVICE_RESET", FakeOp::Reset).reset()
    }
    fn fd(&self) -> BorrowedFd<'_> {
        self.dev.fd()
    }
}

/// Hands out the fake devices wrapped in [`FaultyVfio`]; opening counts as a call.
struct FaultyOpener {
    devices: VecDeque<(FakeVfioDevice, ModelDevice)>,
    faults: Arc<Faults>,
}

impl VfioOpener for FaultyOpener {
    fn open(&mut self, _dev: &LocatedDevice) -> io::Result<(Box<dyn VfioDevice>, DeviceHandle)> {
        if self.faults.hit("open the cdev") {
            return Err(io::Error::from_raw_os_error(libc::EMFILE));
        }
        let (dev, model) = self
            .devices
            .pop_front()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        let handle = dev.handle();
        let faults = self.faults.clone();
        Ok((
            Box::new(FaultyVfio {
                dev,
                handle,
                faults,
            }),
            DeviceHandle::Model(model),
        ))
    }
}

/// The fake KVM-VFIO device; a failed call changes nothing, as in KVM.
struct FaultyKvm {
    kvm: FakeKvmVfio,
    faults: Arc<Faults>,
}

impl KvmVfio for FaultyKvm {
    fn add_file(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        if self.faults.hit("KVM_DEV_VFIO_FILE_ADD") {
            return Err(io::Error::from_raw_os_error(libc::ENOMEM));
        }
        self.kvm.add_file(fd)
    }
    fn remove_file(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        if self.faults.hit("KVM_DEV_VFIO_FILE_DEL") {
            return Err(io::Error::from_raw_os_error(libc::ENOMEM));
        }
        self.kvm.remove_file(fd)
    }
}

/// Fake memory slots; a failed call changes nothing, as in KVM.
struct FaultySlots {
    slots: FakeMemslots,
    faults: Arc<Faults>,
}

impl GuestMemslots for FaultySlots {
    fn map(&self, gpa: u64, len: u64, host: HostVirtAddr) -> io::Result<MemslotId> {
        if self.faults.hit("KVM_SET_USER_MEMORY_REGION (add)") {
            return Err(io::Error::from_raw_os_error(libc::ENOMEM));
        }
        self.slots.map(gpa, len, host)
    }
    fn unmap(&self, slot: MemslotId) -> io::Result<()> {
        if self.faults.hit("KVM_SET_USER_MEMORY_REGION (delete)") {
            return Err(io::Error::from_raw_os_error(libc::ENOMEM));
        }
        self.slots.unmap(slot)
    }
}

const DEVICES: [(&str, &str); 2] = [("disk", "0000:00:03.0"), ("edu", "0000:00:04.0")];

fn located(name: &str, bdf: &str) -> LocatedDevice {
    LocatedDevice {
        name: name.to_string(),
        spec: DeviceSpec {
            path: PathBuf::from(format!("/sys/bus/pci/devices/{bdf}")),
            id: Some(name.to_string()),
            iommu: false,
        },
        pci: PciPassthroughDevice {
            bdf: bdf.to_string(),
            cdev: PathBuf::from("/dev/vfio/devices/vfio0"),
        },
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// What a run can leave behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    IommufdObject,
    KvmFile,
    Memslot,
    InterruptGroup,
    EnabledIrqs,
    OpenDevice,
    BarMapping,
    Fd,
}

/// What one run left behind, and how it ended.
#[derive(Debug, Default)]
struct Outcome {
    error: Option<String>,
    leaks: Vec<(Kind, String)>,
}

/// The calls that release something, and what stays behind when one fails: the kernel
/// object the call could not release, which goes when its fd (the iommufd, the VM, the
/// device) is closed. A failed acquire must leave nothing.
fn released_by(call: &str) -> Option<Kind> {
    match call {
        "IOMMU_DESTROY" | "IOMMU_IOAS_UNMAP" | "VFIO_DEVICE_DETACH_IOMMUFD_PT" => {
            Some(Kind::IommufdObject)
        }
        "KVM_DEV_VFIO_FILE_DEL" => Some(Kind::KvmFile),
        "KVM_SET_USER_MEMORY_REGION (delete)" => Some(Kind::Memslot),
        "VFIO_DEVICE_SET_IRQS (disable)" => Some(Kind::EnabledIrqs),
        _ => None,
    }
}

/// One life cycle with the `fail_at`-th boundary call failing (0: none). Returns the
/// outcome and the names of the calls made.
fn run(fail_at: u64, memfd: Option<BorrowedFd<'_>>) -> (Outcome, Vec<&'static str>) {
    let fds_before = open_fds();
    let faults = Arc::new(Faults::default());
    faults.fail_at.store(fail_at, Ordering::Relaxed);
    let model = Arc::new(Mutex::new(FaultyIommufd {
        model: ModelIommufd::with_page_size(4096),
        faults: faults.clone(),
    }));
    let shared: passthrough::SharedIommufd = model.clone();
    let kvm = Arc::new(FaultyKvm {
        kvm: FakeKvmVfio::default(),
        faults: faults.clone(),
    });
    let slots = Arc::new(FaultySlots {
        slots: FakeMemslots::default(),
        faults: faults.clone(),
    });
    let fakes = [FakeVfioDevice::virtio_blk(), FakeVfioDevice::edu()];
    let handles: Vec<FakeVfioHandle> = fakes.iter().map(|d| d.handle()).collect();
    let mut opener = FaultyOpener {
        devices: fakes
            .into_iter()
            .map(|d| (d, ModelDevice::x86_vtd()))
            .collect(),
        faults: faults.clone(),
    };
    let groups: Arc<Mutex<Vec<Arc<FakeInterruptGroup>>>> = Arc::default();

    let mut outcome = Outcome::default();
    let result = start(&shared, &kvm, &slots, &mut opener, &groups, &faults, memfd);
    match result {
        Err(e) => outcome.error = Some(e),
        Ok((ioas, devices, dma)) => {
            guest_runs(&devices);
            // AttachedPassthrough's order: DMA mappings, devices, IOAS.
            drop(dma);
            drop(devices);
            drop(ioas);
        }
    }

    // What an error or teardown must have released. The fakes not handed out yet go first.
    drop(opener);
    let m = model.lock().unwrap();
    for id in m.model.object_ids() {
        outcome
            .leaks
            .push((Kind::IommufdObject, format!("iommufd object {id:?}")));
    }
    drop(m);
    for f in kvm.kvm.files() {
        outcome
            .leaks
            .push((Kind::KvmFile, format!("KVM-VFIO file {f}")));
    }
    for slot in slots.slots.slots() {
        outcome
            .leaks
            .push((Kind::Memslot, format!("memory slot {slot:?}")));
    }
    for (i, g) in groups.lock().unwrap().iter().enumerate() {
        if Arc::strong_count(g) != 1 {
            outcome.leaks.push((
                Kind::InterruptGroup,
                format!("interrupt group {i} still held"),
            ));
        }
    }
    for (h, (name, _)) in handles.iter().zip(DEVICES) {
        if h.is_open() {
            outcome
                .leaks
                .push((Kind::OpenDevice, format!("{name}: device still open")));
        }
        if h.live_mappings() != 0 {
            outcome
                .leaks
                .push((Kind::BarMapping, format!("{name}: BAR mappings")));
        }
        let r = h.record();
        if r.set_irqs.len() > r.disabled.len() {
            outcome.leaks.push((
                Kind::EnabledIrqs,
                format!("{name}: interrupts enabled, never disabled"),
            ));
        }
    }
    drop(groups);
    drop(shared);
    drop(model);
    drop(kvm);
    drop(slots);
    let fds_after = open_fds();
    if fds_after != fds_before {
        outcome.leaks.push((
            Kind::Fd,
            format!("fds: {fds_before} before, {fds_after} after"),
        ));
    }
    let names = faults.names.lock().unwrap().clone();
    (outcome, names)
}

type Started = (VmIoas, Vec<PassthroughDevice>, GuestRamDma);

/// The start-up steps of `vmm/src/vfio.rs` (PassthroughPlan::prepare, then attach).
fn start(
    shared: &passthrough::SharedIommufd,
    kvm: &Arc<FaultyKvm>,
    slots: &Arc<FaultySlots>,
    opener: &mut FaultyOpener,
    groups: &Arc<Mutex<Vec<Arc<FakeInterruptGroup>>>>,
    faults: &Arc<Faults>,
    memfd: Option<BorrowedFd<'_>>,
) -> Result<Started, String> {
    for (_, bdf) in DEVICES {
        let mut fd = shared.lock().unwrap();
        probe_iova_ranges(&mut *fd, bdf, DeviceHandle::Model(ModelDevice::x86_vtd()))
            .map_err(|e| e.to_string())?;
    }
    let ioas = VmIoas::new(shared.clone()).map_err(|e| e.to_string())?;
    let mut ctx = VmPassthrough::new(shared.clone(), ioas.id(), kvm.clone(), slots.clone());
    ctx.sysfs = Sysfs::new(std::env::temp_dir().join("no-such-sysfs"));
    ctx.options = PciFunctionOptions {
        page_size: 4096,
        io_bars: true,
    };
    let mut devices = Vec::new();
    for (name, bdf) in DEVICES {
        let groups = groups.clone();
        let faults = faults.clone();
        let mut factory =
            move |n: u16| -> Result<Arc<dyn MsiInterruptGroup>, Box<dyn Error + Send + Sync>> {
                if faults.hit("MSI interrupt group (GSIs, irqfds)") {
                    return Err("no GSI left".into());
                }
                let g = Arc::new(FakeInterruptGroup::new(n)?);
                groups.lock().unwrap().push(g.clone());
                Ok(g)
            };
        let pt = PassthroughDevice::attach(&located(name, bdf), &ctx, opener, &mut factory)
            .map_err(|e| e.to_string())?;
        devices.push(pt);
    }
    let ram = [
        GuestRam {
            gpa: 0,
            size: 0x8_0000,
            source: match memfd {
                Some(fd) => MapSource::File { fd, offset: 0 },
                None => MapSource::UserVa(HostVirtAddr(0x7000_0000)),
            },
        },
        GuestRam {
            gpa: 0x10_0000,
            size: 0x10_0000,
            source: match memfd {
                Some(fd) => MapSource::File {
                    fd,
                    offset: 0x8_0000,
                },
                None => MapSource::UserVa(HostVirtAddr(0x7010_0000)),
            },
        },
    ];
    let dma = GuestRamDma::map(
        shared.clone(),
        ioas.id(),
        &ram,
        &MemlockLimit::UNLIMITED,
        "--device disk, --device edu",
    )
    .map_err(|e| e.to_string())?;
    Ok((ioas, devices, dma))
}

/// What a guest does first on vCPU threads: enable MSI-X (disk) and MSI (edu), and assign
/// BARs, which maps them into memory slots. Failures here are logged, not returned.
fn guest_runs(devices: &[PassthroughDevice]) {
    for (pt, (bar, kind, size, at, cap_id, enable)) in devices.iter().zip([
        (
            4,
            PciBarKind::Memory64,
            0x4000u64,
            0x1_0000_0000u64,
            0x11u8,
            (3u64, 0x80u8),
        ),
        (
            0,
            PciBarKind::Memory32,
            0x10_0000,
            0xc000_0000,
            0x05,
            (2, 0x01),
        ),
    ]) {
        let Some(f) = pt.function() else { continue };
        let mut f = f.lock().unwrap();
        let Some(cap) = f
            .capabilities()
            .iter()
            .find(|c| c.id == cap_id)
            .map(|c| c.offset)
        else {
            continue;
        };
        f.config_write(cap / 4, enable.0, &[enable.1]);
        f.bar_moved(&BarReprogram {
            bar,
            kind,
            size,
            old: None,
            new: Some(at),
        });
    }
}

#[test]
fn every_nth_boundary_call_failing_gives_one_error_and_leaves_nothing() {
    // Guest RAM by address (IOMMU_IOAS_MAP), then from a memfd (IOMMU_IOAS_MAP_FILE).
    let memfd = memfd();
    for backing in [None, Some(memfd.as_fd())] {
        sweep(backing);
    }
}

fn memfd() -> std::fs::File {
    // SAFETY: memfd_create with a valid C string; the fd is owned by the File.
    let fd = unsafe { libc::memfd_create(c"fail-nth-ram".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
    // SAFETY: fd was just created and nothing else owns it.
    let f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    f.set_len(0x20_0000).unwrap();
    f
}

fn sweep(memfd: Option<BorrowedFd<'_>>) {
    let (clean, calls) = run(0, memfd);
    assert!(clean.error.is_none(), "clean run failed: {:?}", clean.error);
    assert!(
        clean.leaks.is_empty(),
        "clean run leaked: {:?}",
        clean.leaks
    );
    let total = calls.len() as u64;
    assert!(total > 40, "only {total} calls: {calls:?}");
    let (mut errors, mut left_to_close, mut leaky) = (0, 0, Vec::new());
    for n in 1..=total {
        let (o, _) = run(n, memfd);
        let what = calls[n as usize - 1];
        if let Some(e) = &o.error {
            errors += 1;
            // A device step names the device; the VM-wide steps name what they were for.
            assert!(
                ["--device", "0000:00:0", "address space", "guest RAM"]
                    .iter()
                    .any(|s| e.contains(s)),
                "call {n} ({what}): the error names neither a device nor a VM step: {e}"
            );
            assert_eq!(e.lines().count(), 1, "call {n} ({what}): {e}");
            if std::env::var_os("FAIL_NTH_VERBOSE").is_some() {
                eprintln!("call {n} ({what}): {e}");
            }
        }
        // A failed release leaves exactly the one thing it could not release, of its kind.
        let allowed = released_by(what);
        let (expected, real): (Vec<_>, Vec<_>) =
            o.leaks.iter().partition(|(k, _)| Some(*k) == allowed);
        if expected.len() == 1 {
            left_to_close += 1;
        }
        if !real.is_empty() || expected.len() > 1 {
            leaky.push(format!("call {n} ({what}): {:?}", o.leaks));
        }
    }
    eprintln!(
        "fail-nth ({}): {total} boundary calls in a clean run; {total} paths tried: {errors} ended \
         in one start-up error, {left_to_close} failed releases left their object to the \
         closing fd, {} leaked",
        if memfd.is_some() { "memfd RAM" } else { "anonymous RAM" },
        leaky.len()
    );
    assert!(errors > 20, "{errors}");
    assert!(leaky.is_empty(), "leaks:\n{}", leaky.join("\n"));
}
