//! Exercises the passthrough stack against real VFIO devices, through the public API a VMM
//! uses: `--device` parsing and duplicates, iommufd, KVM-VFIO, `PassthroughDevice` setup
//! and teardown, guest RAM DMA, the virtualized config space, MSI and MSI-X wiring.
//! Made for the rigs (QEMU's edu and virtio-blk bound to vfio-pci):
//!
//! ```text
//! vfio-pci-probe --edu /sys/bus/pci/devices/BDF [--virtio BDF-PATH]
//! ```
//!
//! Guest memory slots are the fake's (no vCPU runs). Prints `PROBE name: OK|FAIL ...` per
//! check and exits 0 only if every check passed.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::pci::{BarReprogram, MsiInterruptGroup, PciBarKind, PciDevice};
use passthrough::{
    locate_all, open_iommufd, DeviceSpec, FakeInterruptGroup, FakeKvmVfio, FakeMemslots, GuestRam,
    GuestRamDma, KernelKvmVfio, KernelOpener, KvmVfio, LocatedDevice, MapSource, MemlockLimit,
    MmapArea, PassthroughDevice, PassthroughError, SharedIommufd, VfioPciFunction, VmIoas,
    VmPassthrough,
};

type Groups = Arc<Mutex<Vec<Arc<FakeInterruptGroup>>>>;

struct Probe {
    failed: u32,
}

impl Probe {
    fn check(&mut self, name: &str, ok: bool, detail: impl std::fmt::Display) {
        if ok {
            println!("PROBE {name}: OK {detail}");
        } else {
            println!("PROBE {name}: FAIL {detail}");
            self.failed += 1;
        }
    }
}

fn attach(
    dev: &LocatedDevice,
    vm: &VmPassthrough,
) -> (Result<PassthroughDevice, PassthroughError>, Groups) {
    let made: Groups = Arc::default();
    let m = made.clone();
    let mut groups =
        move |n: u16| -> Result<Arc<dyn MsiInterruptGroup>, Box<dyn Error + Send + Sync>> {
            let g = Arc::new(FakeInterruptGroup::new(n)?);
            m.lock().unwrap_or_else(|e| e.into_inner()).push(g.clone());
            Ok(g)
        };
    (
        PassthroughDevice::attach(dev, vm, &mut KernelOpener, &mut groups),
        made,
    )
}

fn cfg_write(f: &mut VfioPciFunction, off: usize, data: &[u8]) {
    f.config_write(off / 4, (off % 4) as u64, data);
}

fn bar_read32(f: &mut VfioPciFunction, bar: usize, off: u64) -> u32 {
    let mut b = [0u8; 4];
    f.bar_read(bar, off, &mut b);
    u32::from_le_bytes(b)
}

fn bar_write64(f: &mut VfioPciFunction, bar: usize, off: u64, v: u64) {
    f.bar_write(bar, off, &v.to_le_bytes());
}

fn wait_eventfd(g: &FakeInterruptGroup, vector: u16) -> u64 {
    let Some(fd) = g.notifier(vector) else {
        return 0;
    };
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        if let Ok(n) = fd.read() {
            return n;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    0
}

fn edu_checks(p: &mut Probe, f: &mut VfioPciFunction, group: &FakeInterruptGroup, ram: &mut [u8]) {
    let id = f.config_read(0);
    p.check("edu config identity", id == 0x11e8_1234, format!("{id:#x}"));
    let msi = f
        .capabilities()
        .iter()
        .find(|c| c.id == 0x05)
        .map(|c| c.offset);
    p.check(
        "edu MSI capability emulated",
        msi.is_some(),
        format!("{msi:x?}"),
    );
    let Some(msi) = msi else { return };
    // Memory decode and bus mastering, forwarded to the device.
    cfg_write(f, 0x04, &0x0006u16.to_le_bytes());
    f.bar_moved(&BarReprogram {
        bar: 0,
        kind: PciBarKind::Memory32,
        size: 0x10_0000,
        old: None,
        new: Some(0xc000_0000),
    });
    p.check(
        "edu BAR 0 in a memory slot",
        f.memslot_count() == 1,
        f.memslot_count(),
    );
    let reg0 = bar_read32(f, 0, 0);
    p.check(
        "edu identification register",
        reg0 >> 16 == 0x0100 && reg0 & 0xff == 0xed,
        format!("{reg0:#x}"),
    );
    f.bar_write(0, 4, &0x1234_5678u32.to_le_bytes());
    let live = bar_read32(f, 0, 4);
    p.check(
        "edu liveness (trapped BAR access)",
        live == !0x1234_5678u32,
        format!("{live:#x}"),
    );
    // The guest programs and enables MSI; the device's vector is bound to the eventfd.
    let is64 = f.config_read(msi / 4) >> 16 & 0x80 != 0;
    cfg_write(f, msi + 4, &0xfee0_0000u32.to_le_bytes());
    let data_at = if is64 { msi + 12 } else { msi + 8 };
    if is64 {
        cfg_write(f, msi + 8, &0u32.to_le_bytes());
    }
    cfg_write(f, data_at, &0x41u16.to_le_bytes());
    cfg_write(f, msi + 2, &1u16.to_le_bytes());
    p.check(
        "edu MSI bound (VFIO_DEVICE_SET_IRQS)",
        f.interrupts_bound(),
        "",
    );
    let updates = group.take_updates();
    p.check(
        "edu MSI route update",
        updates.len() == 1 && !updates[0].2,
        format!("{updates:?}"),
    );
    f.bar_write(0, 0x60, &1u32.to_le_bytes());
    let n = wait_eventfd(group, 0);
    p.check("edu MSI -> VFIO -> eventfd", n >= 1, format!("count {n}"));
    f.bar_write(0, 0x64, &1u32.to_le_bytes());
    // DMA through the IOAS at IOVA = GPA 0x100000: RAM -> edu buffer -> RAM + 4 KiB.
    let pattern: Vec<u8> = (0..256u32).map(|i| (i * 7 + 3) as u8).collect();
    ram[..256].copy_from_slice(&pattern);
    for (from, to, cmd) in [(0x10_0000u64, 0x40000u64, 1u64), (0x40000, 0x10_1000, 3)] {
        bar_write64(f, 0, 0x80, from);
        bar_write64(f, 0, 0x88, to);
        bar_write64(f, 0, 0x90, 256);
        bar_write64(f, 0, 0x98, cmd);
        let end = Instant::now() + Duration::from_secs(3);
        while bar_read32(f, 0, 0x98) & 1 != 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let copied = ram[0x1000..0x1100].to_vec();
    p.check(
        "edu DMA through guest RAM mapped in the IOAS",
        copied == pattern,
        "",
    );
    // Disabling MSI unbinds; memory decode off removes the slot.
    cfg_write(f, msi + 2, &0u16.to_le_bytes());
    p.check("edu MSI unbound", !f.interrupts_bound(), "");
    cfg_write(f, 0x04, &0u16.to_le_bytes());
    p.check(
        "edu slot removed with memory decode",
        f.memslot_count() == 0,
        "",
    );
}

fn virtio_checks(p: &mut Probe, f: &mut VfioPciFunction) {
    let caps: Vec<(u8, u32)> = f
        .capabilities()
        .iter()
        .map(|c| (c.id, c.offset as u32))
        .collect();
    let mut seen = Vec::new();
    let mut ptr = (f.config_read(0x34 / 4) & 0xfc) as usize;
    while ptr != 0 && seen.len() < 48 {
        let head = f.config_read(ptr / 4);
        seen.push((head & 0xff) as u8);
        ptr = ((head >> 8) & 0xfc) as usize;
    }
    let vendor = seen.iter().filter(|&&id| id == 0x09).count();
    p.check(
        "virtio caps visible (vendor-specific)",
        vendor >= 4,
        format!("{seen:x?} of {caps:x?}"),
    );
    p.check("virtio MSI-X emulated", seen.contains(&0x11), "");
    let ext = f.config_read(0x100 / 4);
    p.check(
        "extended capabilities hidden",
        ext == 0,
        format!("{ext:#x}"),
    );
    let Some(m) = f
        .capabilities()
        .iter()
        .find(|c| c.id == 0x11)
        .map(|c| c.offset)
    else {
        return;
    };
    cfg_write(f, 0x04, &0x0006u16.to_le_bytes());
    cfg_write(f, m + 3, &[0xc0]); // enable + function mask
    p.check(
        "virtio MSI-X bound (VFIO_DEVICE_SET_IRQS)",
        f.interrupts_bound(),
        "",
    );
    cfg_write(f, m + 3, &[0]);
    p.check("virtio MSI-X unbound", !f.interrupts_bound(), "");
    let bars: Vec<(usize, usize)> = (0..6)
        .map(|b| (b, f.mmap_areas(b).len()))
        .filter(|b| b.1 > 0)
        .collect();
    p.check(
        "virtio BAR parts mmapped",
        !bars.is_empty(),
        format!("{bars:?}"),
    );
    cfg_write(f, 0x04, &0u16.to_le_bytes());
}

fn run(edu: &Path, virtio: Option<&Path>) -> Result<u32, Box<dyn Error>> {
    let mut p = Probe { failed: 0 };
    let mut specs = vec![DeviceSpec {
        path: edu.to_path_buf(),
        id: Some("edu".into()),
        iommu: false,
    }];
    if let Some(v) = virtio {
        specs.push(DeviceSpec {
            path: v.to_path_buf(),
            id: Some("blk".into()),
            iommu: false,
        });
    }
    let dev_root = Path::new("/dev/vfio/devices");
    let dup = locate_all(
        &[
            specs[0].clone(),
            DeviceSpec {
                path: edu.to_path_buf(),
                id: None,
                iommu: false,
            },
        ],
        dev_root,
    );
    p.check(
        "same device twice refused",
        dup.is_err(),
        dup.err().map(|e| e.to_string()).unwrap_or_default(),
    );
    let located = locate_all(&specs, dev_root)?;
    let limit = MemlockLimit::current()?;
    println!("memlock: {limit:?}");

    let iommufd: SharedIommufd =
        Arc::new(Mutex::new(open_iommufd(Path::new("/dev/iommu"), &located)?));
    let ioas = VmIoas::new(iommufd.clone())?;
    let kvm_vm = kvm_ioctls::Kvm::new().and_then(|k| k.create_vm());
    let kvm: Arc<dyn KvmVfio> = match kvm_vm.as_ref().map(KernelKvmVfio::new) {
        Ok(Ok(k)) => Arc::new(k),
        other => {
            println!(
                "note: no KVM-VFIO device ({:?}), using the fake",
                other.err()
            );
            Arc::new(FakeKvmVfio::default())
        }
    };
    let slots = Arc::new(FakeMemslots::default());
    let vm = VmPassthrough::new(iommufd.clone(), ioas.id(), kvm, slots.clone());

    // Guest RAM: 2 MiB, page aligned, at GPA 0x100000 (edu's DMA mask is 28 bits).
    let mut backing = vec![0u8; 0x20_0000 + 0x1000];
    let skew = (0x1000 - backing.as_ptr() as usize % 0x1000) % 0x1000;
    let ram = &mut backing[skew..skew + 0x20_0000];
    {
        let (edu_dev, groups) = attach(&located[0], &vm);
        let edu_dev = edu_dev?;
        let again = attach(&located[0], &vm).0;
        p.check(
            "same device attached twice refused",
            matches!(again, Err(PassthroughError::Duplicate { .. })),
            "",
        );
        let dma = GuestRamDma::map(
            iommufd.clone(),
            ioas.id(),
            &[GuestRam {
                gpa: 0x10_0000,
                size: ram.len() as u64,
                source: MapSource::UserVa(passthrough::HostVirtAddr::of(ram)),
            }],
            &limit,
            "--device edu",
        )?;
        let f = edu_dev.function().ok_or("edu has no function")?;
        let group = groups
            .lock()
            .map_err(|_| "poisoned")?
            .first()
            .cloned()
            .ok_or("no group")?;
        let mut guard = f.lock().map_err(|_| "poisoned")?;
        edu_checks(&mut p, &mut guard, &group, ram);
        drop(guard);
        if let Some(v) = located.get(1) {
            let (blk, _g) = attach(v, &vm);
            match blk {
                Ok(blk) => {
                    let f = blk.function().ok_or("virtio has no function")?;
                    let mut guard = f.lock().map_err(|_| "poisoned")?;
                    virtio_checks(&mut p, &mut guard);
                }
                Err(e) => p.check("virtio attach", false, e),
            }
        }
        drop(dma);
        drop(edu_dev);
        p.check("slots gone after teardown", slots.slots().is_empty(), "");
    }
    // Everything was released: the device binds and attaches again.
    let again = attach(&located[0], &vm).0;
    p.check(
        "edu attaches again after teardown",
        again.is_ok(),
        again
            .as_ref()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default(),
    );
    drop(again);

    // Guest RAM over the host MSI window, then the device: a clear collision error.
    let ioas2 = VmIoas::new(iommufd.clone())?;
    let vm2 = VmPassthrough::new(
        iommufd.clone(),
        ioas2.id(),
        Arc::new(FakeKvmVfio::default()),
        slots.clone(),
    );
    let msi = std::fs::read_to_string(format!(
        "/sys/kernel/iommu_groups/{}/reserved_regions",
        group_of(&located[0].pci.bdf)?
    ))?
    .lines()
    .find(|l| l.ends_with(" msi"))
    .and_then(|l| {
        l.split_whitespace()
            .next()
            .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
    })
    .ok_or("no msi reserved region")?;
    let window = MmapArea::anonymous(0x20_0000)?;
    let dma2 = GuestRamDma::map(
        iommufd.clone(),
        ioas2.id(),
        &[GuestRam {
            gpa: msi & !0x1f_ffff,
            size: window.len(),
            source: MapSource::UserVa(passthrough::HostVirtAddr(window.addr())),
        }],
        &MemlockLimit::UNLIMITED,
        "probe",
    )?;
    let collide = attach(&located[0], &vm2).0;
    let text = collide
        .as_ref()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    p.check(
        "reserved region collision explained",
        matches!(collide, Err(PassthroughError::ReservedCollision { .. })),
        &text,
    );
    drop(collide);
    drop(dma2);
    drop(ioas2);
    drop(ioas);
    Ok(p.failed)
}

fn group_of(bdf: &str) -> Result<String, Box<dyn Error>> {
    let link = std::fs::read_link(format!("/sys/bus/pci/devices/{bdf}/iommu_group"))?;
    Ok(link
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or("no group")?)
}

fn main() -> ExitCode {
    let mut edu = None;
    let mut virtio = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--edu" => edu = args.next().map(PathBuf::from),
            "--virtio" => virtio = args.next().map(PathBuf::from),
            _ => {
                eprintln!("usage: vfio-pci-probe --edu SYSFS-PATH [--virtio SYSFS-PATH]");
                return ExitCode::from(2);
            }
        }
    }
    let Some(edu) = edu else {
        eprintln!("usage: vfio-pci-probe --edu SYSFS-PATH [--virtio SYSFS-PATH]");
        return ExitCode::from(2);
    };
    match run(&edu, virtio.as_deref()) {
        Ok(0) => {
            println!("PROBE done: all passed");
            ExitCode::SUCCESS
        }
        Ok(n) => {
            println!("PROBE done: {n} failed");
            ExitCode::from(1)
        }
        Err(e) => {
            println!("PROBE error: {e}");
            ExitCode::from(1)
        }
    }
}
