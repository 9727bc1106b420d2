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
use std::sync::{Arc, Mutex};

use devices::pci::{BarReprogram, MsiInterruptGroup, PciBarKind, PciDevice};
use passthrough::faulty::{Faults, FaultyIommufd, FaultyKvm, FaultySlots, FaultyVfio};
use passthrough::hypervisor::FakeInterruptGroup;
use passthrough::iommufd::{DeviceHandle, MapSource};
use passthrough::passthrough_device::{PassthroughDevice, VfioOpener, VmPassthrough};
use passthrough::vfio_device::VfioDevice;
use passthrough::{
    probe_iova_ranges, DeviceSpec, FakeVfioDevice, FakeVfioHandle, GuestRam, GuestRamDma,
    HostVirtAddr, LocatedDevice, MemlockLimit, ModelDevice, ModelIommufd, PciFunctionOptions,
    PciPassthroughDevice, Sysfs, VmIoas,
};

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
        Ok((
            Box::new(FaultyVfio::new(dev, self.faults.clone())),
            DeviceHandle::Model(model),
        ))
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
    let faults = Faults::new(fail_at);
    let model = FaultyIommufd::shared(ModelIommufd::with_page_size(4096), &faults);
    let shared: passthrough::SharedIommufd = model.clone();
    let kvm = FaultyKvm::shared(&faults);
    let slots = FaultySlots::shared(&faults);
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
    let names = faults.names();
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
