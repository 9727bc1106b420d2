//! The nested objects and the emulated SMMUv3 ([`devices::smmuv3`]) with its test guest
//! driver, against the iommufd model: what a guest does ends up as the kernel objects
//! and calls it should, with the kernel's errnos.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use devices::smmuv3::guest_driver::{DriverError, DriverLayout, GuestDriver};
use devices::smmuv3::{HostSmmuInfo, IrqLine, Smmuv3, Smmuv3Irqs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::iommufd::{DevId, DeviceHandle, IoasId, Iommufd, ObjectId, ViommuId};
use crate::model::{ModelDevice, ModelIommufd};
use crate::ram_dma::SharedIommufd;

type Mem = GuestMemoryMmap<()>;

struct NoIrq;

impl IrqLine for NoIrq {
    fn trigger(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The guest StreamID of the model's aarch64 device (00:02.0).
const VSID: u32 = 0x10;

struct World {
    model: Arc<Mutex<ModelIommufd>>,
    shared: SharedIommufd,
    ioas: IoasId,
    dev: DevId,
}

fn world() -> World {
    let model = Arc::new(Mutex::new(ModelIommufd::with_page_size(4096)));
    let shared: SharedIommufd = model.clone();
    let (ioas, dev) = {
        let mut m = model.lock().unwrap();
        let ioas = m.alloc_ioas().unwrap();
        let dev = m
            .bind_device(DeviceHandle::Model(ModelDevice::arm_smmuv3()))
            .unwrap();
        m.attach_device(dev, ioas.into()).unwrap();
        (ioas, dev)
    };
    World {
        model,
        shared,
        ioas,
        dev,
    }
}

impl World {
    fn objects(&self) -> Vec<ObjectId> {
        self.model.lock().unwrap().object_ids()
    }

    fn host_info(&self) -> HostSmmuInfo {
        let info = self.model.lock().unwrap().hw_info(self.dev).unwrap();
        HostSmmuInfo::from_hw_info_data(&info.data).unwrap()
    }
}

const LAYOUT: DriverLayout = DriverLayout {
    strtab: 0x10_0000,
    cmdq: 0x20_0000,
    cmdq_log2: 8,
    eventq: 0x30_0000,
    eventq_log2: 4,
};

#[test]
fn objects_roll_back_when_a_later_step_fails() {
    let w = world();
    let before = w.objects();
    // The bypass HWPT (3rd call: VIOMMU_ALLOC, abort, bypass) fails: nothing stays.
    let parent = NestParent::new(w.shared.clone(), w.ioas, w.dev).unwrap();
    let with_parent = w.objects();
    w.model.lock().unwrap().fail_nth(3, libc::ENOMEM);
    let err = Viommu::new(w.shared.clone(), &parent, w.dev).unwrap_err();
    assert_eq!(
        (err.step, err.errno()),
        (NestedStep::FixedHwpt, libc::ENOMEM)
    );
    assert_eq!(w.objects(), with_parent);
    // The device leaves the parent before it goes.
    w.model
        .lock()
        .unwrap()
        .attach_device(w.dev, w.ioas.into())
        .unwrap();
    drop(parent);
    assert_eq!(w.objects(), before);

    // An IOMMU without nesting: the parent step says EOPNOTSUPP, the text says why.
    let x86 = world();
    let vtd = x86
        .model
        .lock()
        .unwrap()
        .bind_device(DeviceHandle::Model(ModelDevice::x86_vtd()))
        .unwrap();
    let err = NestParent::new(x86.shared.clone(), x86.ioas, vtd).unwrap_err();
    assert_eq!(err.step, NestedStep::NestParent);
    assert_eq!(err.errno(), libc::EOPNOTSUPP);
    assert!(err.to_string().contains("NEST_PARENT") || err.to_string().contains("nest"));
}

struct Guest {
    w: World,
    mem: Mem,
    smmu: Smmuv3<Mem>,
    parent: Option<NestParent>,
    viommu: ViommuId,
}

fn guest() -> Guest {
    let w = world();
    let parent = NestParent::new(w.shared.clone(), w.ioas, w.dev).unwrap();
    let mut backend = IommufdSmmu::new(w.shared.clone(), &parent, w.dev).unwrap();
    backend.add_device(w.dev, VSID).unwrap();
    let viommu = backend.viommu_id();
    let mem = Mem::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
    let smmu = Smmuv3::new(
        mem.clone(),
        &w.host_info(),
        Box::new(backend),
        Smmuv3Irqs {
            eventq: Box::new(NoIrq),
            gerror: Box::new(NoIrq),
        },
    );
    Guest {
        w,
        mem,
        smmu,
        parent: Some(parent),
        viommu,
    }
}

#[test]
fn guest_driver_drives_nested_hwpts_invalidations_and_events() {
    let mut g = guest();
    let mut d = GuestDriver::probe(&mut g.smmu, &g.mem, LAYOUT).unwrap();
    assert!(
        g.smmu.event_fd().is_none(),
        "the model's vEVENTQ has no fd: polled"
    );
    let viommu = g.viommu;
    {
        let m = g.w.model.lock().unwrap();
        // After probe the SMMU is on with a zeroed table: the device aborts.
        let hwpt = m.attached_hwpt(g.w.dev).unwrap();
        assert_eq!(m.nested_ste(hwpt), Some([1, 0]), "the vIOMMU's abort HWPT");
        // Reset's TLBI_NSNH_ALL went out as NH_ALL.
        assert_eq!(m.invalidations(viommu), vec![[0x10, 0]]);
    }
    // Linux's S1 STE: CD table at 0x12_3440... with SHCFG and EATS the kernel refuses.
    let cd = 0x0012_3440u64;
    let w0 = 1 | (5 << 1) | (1 << 4) | cd;
    let w1 = 1 | (1 << 2) | (1 << 4) | (3 << 6) | (1 << 27) | (1 << 28) | (1 << 44);
    d.write_ste(&mut g.smmu, &g.mem, VSID, [w0, w1, 0, 0, 0, 0, 0, 0])
        .unwrap();
    {
        let m = g.w.model.lock().unwrap();
        let hwpt = m.attached_hwpt(g.w.dev).unwrap();
        assert_eq!(
            m.nested_ste(hwpt),
            Some([w0, 1 | (1 << 2) | (1 << 4) | (3 << 6) | (1 << 27)])
        );
    }
    // Invalidations reach the host with the physical StreamID.
    let cfgi_cd = [0x05 | (u64::from(VSID) << 32), 1];
    let tlbi = [0x11 | (7 << 48), 0];
    d.submit(&mut g.smmu, &g.mem, &[cfgi_cd, tlbi]).unwrap();
    let phys = u64::from(ModelDevice::arm_smmuv3().stream_id);
    let sent = g.w.model.lock().unwrap().invalidations(viommu);
    assert_eq!(sent[sent.len() - 2..], [[0x05 | (phys << 32), 1], tlbi]);
    // A StreamID without a vDEVICE: the kernel says EIO, the guest sees CERROR_ILL.
    let err = d
        .submit(&mut g.smmu, &g.mem, &[tlbi, [0x05 | (0x18 << 32), 0]])
        .unwrap_err();
    assert_eq!(
        err,
        DriverError::Command {
            index: 1,
            cerror: 1
        }
    );
    // A fault on the device reaches the guest's event queue with the vSID.
    let fault = [0x10 | (phys << 32), 0, 0x1234_5000, 0];
    assert!(g.w.model.lock().unwrap().report_event(g.w.dev, fault));
    g.smmu.service_events();
    let (events, overflow) = d.read_events(&mut g.smmu, &g.mem).unwrap();
    assert!(!overflow);
    assert_eq!(
        events,
        vec![[0x10 | (u64::from(VSID) << 32), 0, 0x1234_5000, 0]]
    );
    // Bypass, then disable: GBPA (bypass) applies.
    d.write_ste(&mut g.smmu, &g.mem, VSID, [9, 0, 0, 0, 0, 0, 0, 0])
        .unwrap();
    let s = g.smmu.stats();
    assert!(s.ste_installs >= 4 && s.ste_install_failures == 0, "{s}");
    assert_eq!(s.command_errors, 1);
    assert_eq!(s.events, 1);

    // Teardown: the SMMU (and its backend) first, the device back on the stage 2, then
    // the parent after the device leaves it.
    let Guest {
        w, smmu, parent, ..
    } = g;
    drop(smmu);
    let parent = parent.unwrap();
    assert_eq!(
        w.model.lock().unwrap().attached_hwpt(w.dev),
        Some(parent.id())
    );
    w.model
        .lock()
        .unwrap()
        .attach_device(w.dev, w.ioas.into())
        .unwrap();
    drop(parent);
    let left = w.objects();
    assert_eq!(left.len(), 3, "IOAS, device, automatic HWPT: {left:?}");
}

/// xorshift64*: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A random command, mostly ones Linux sends, some with bad StreamIDs, some illegal.
fn random_command(rng: &mut Rng) -> [u64; 2] {
    let sid = match rng.below(4) {
        0 => u64::from(VSID),
        1 => rng.below(1 << 8),
        2 => rng.next() >> 32,
        _ => u64::from(VSID),
    };
    let opcode = match rng.below(20) {
        0..=3 => 0x11,
        4..=5 => 0x12,
        6 => 0x13,
        7 => 0x10,
        8 => 0x30,
        9..=10 => 0x05,
        11 => 0x06,
        12..=13 => 0x03,
        14 => 0x04,
        15 => 0x01,
        16 => {
            // A CMD_SYNC with a random completion, its MSI into a scratch page.
            return [
                0x46 | (rng.below(4) << 12),
                0x38_0000 + (rng.below(0x1000) & !3),
            ];
        }
        _ => rng.below(256),
    };
    [
        opcode | (sid << 32) | (rng.next() & 0xffff_ff00),
        rng.next(),
    ]
}

#[test]
fn a_million_random_commands_do_not_panic() {
    let mut g = guest();
    let mut d = GuestDriver::probe(&mut g.smmu, &g.mem, LAYOUT).unwrap();
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let start = Instant::now();
    let target = 1_000_000u64;
    let mut errors = 0u64;
    while g.smmu.stats().commands < target {
        // Now and then the guest rewrites an STE, or the device faults.
        match rng.below(16) {
            0 => {
                let sid = if rng.below(2) == 0 {
                    VSID
                } else {
                    rng.below(256) as u32
                };
                let ste = [rng.next(), rng.next(), 0, 0, 0, 0, 0, 0];
                let addr = LAYOUT.strtab + u64::from(sid) * 64;
                for (i, w) in ste.iter().enumerate() {
                    g.mem
                        .write_obj(*w, GuestAddress(addr + 8 * i as u64))
                        .unwrap();
                }
            }
            1 => {
                let ev = [rng.next(), rng.next(), rng.next(), rng.next()];
                g.w.model.lock().unwrap().report_event(g.w.dev, ev);
                g.smmu.service_events();
                d.read_events(&mut g.smmu, &g.mem).unwrap();
            }
            _ => {}
        }
        let n = 1 + rng.below(48) as usize;
        let cmds: Vec<[u64; 2]> = (0..n).map(|_| random_command(&mut rng)).collect();
        match d.submit(&mut g.smmu, &g.mem, &cmds) {
            Ok(()) => {}
            Err(DriverError::Command { .. }) => errors += 1,
            Err(e) => panic!("the queue got stuck: {e}"),
        }
    }
    let s = g.smmu.stats();
    eprintln!(
        "random commands: {} in {:.2?} ({errors} CERRORs): {s}",
        s.commands,
        start.elapsed()
    );
    assert!(s.commands >= target);
    assert!(errors > 0 && s.invalidations > 0 && s.ste_installs > 0);
    // The queue still works.
    d.submit(&mut g.smmu, &g.mem, &[[0x11, 0]]).unwrap();
    // And the objects are all accounted for: every nested HWPT but the installed one
    // was destroyed.
    let nested = {
        let m = g.w.model.lock().unwrap();
        m.object_ids()
            .into_iter()
            .filter(|id| m.nested_ste(crate::HwptId(id.0)).is_some())
            .count()
    };
    assert!(
        nested <= 3,
        "abort, bypass and at most one guest STE: {nested}"
    );
}
