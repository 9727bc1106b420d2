//! The emulated SMMU driven by the test guest driver and by hand, against a recording
//! backend (the passthrough crate runs the same driver against the iommufd model).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::guest_driver::{DriverError, DriverLayout, GuestDriver};
use super::*;
use crate::BusDevice;

type Mem = GuestMemoryMmap<()>;

#[derive(Clone, Default)]
struct Counter(Arc<AtomicU32>);

impl IrqLine for Counter {
    fn trigger(&self) -> io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl Counter {
    fn get(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A backend shared with the test, so it can look inside while the SMMU owns it.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<RecordingBackend>>);

impl Smmuv3Backend for Shared {
    fn stream_ids(&self) -> Vec<u32> {
        self.0.lock().unwrap().stream_ids()
    }
    fn install_ste(&mut self, sid: u32, ste: [u64; 2]) -> Result<(), BackendError> {
        self.0.lock().unwrap().install_ste(sid, ste)
    }
    fn invalidate(&mut self, cmds: &[[u64; 2]]) -> Result<(), InvalidateError> {
        self.0.lock().unwrap().invalidate(cmds)
    }
    fn enable_events(&mut self) -> Result<(), BackendError> {
        self.0.lock().unwrap().enable_events()
    }
    fn read_events(&mut self, max: usize) -> Vec<BackendEvent> {
        self.0.lock().unwrap().read_events(max)
    }
}

struct Rig {
    mem: Mem,
    smmu: Smmuv3<Mem>,
    backend: Shared,
    eventq_irq: Counter,
    gerror_irq: Counter,
}

const LAYOUT: DriverLayout = DriverLayout {
    strtab: 0x10_0000,
    cmdq: 0x20_0000,
    cmdq_log2: 8,
    eventq: 0x30_0000,
    eventq_log2: 2,
};

fn host() -> HostSmmuInfo {
    // QEMU's SMMU in the aarch64 rig, as passthrough's model device has it.
    HostSmmuInfo {
        idr: [0x0d0c_303f, 0x0278_0410, 0, 0x400, 0, 0x55],
        iidr: 0x43b,
        aidr: 1,
    }
}

fn rig(sids: &[u32]) -> Rig {
    let mem = Mem::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
    let backend = Shared::default();
    backend.0.lock().unwrap().sids = sids.to_vec();
    let (eventq_irq, gerror_irq) = (Counter::default(), Counter::default());
    let smmu = Smmuv3::new(
        mem.clone(),
        &host(),
        Box::new(backend.clone()),
        Smmuv3Irqs {
            eventq: Box::new(eventq_irq.clone()),
            gerror: Box::new(gerror_irq.clone()),
        },
    );
    Rig {
        mem,
        smmu,
        backend,
        eventq_irq,
        gerror_irq,
    }
}

impl Rig {
    fn probe(&mut self) -> GuestDriver {
        GuestDriver::probe(&mut self.smmu, &self.mem, LAYOUT).unwrap()
    }

    fn rd(&mut self, reg: u64) -> u32 {
        let mut b = [0u8; 4];
        self.smmu.read(reg, &mut b);
        u32::from_le_bytes(b)
    }

    fn installs(&self) -> Vec<(u32, [u64; 2])> {
        std::mem::take(&mut self.backend.0.lock().unwrap().installs)
    }
}

const BYPASS: [u64; 2] = [1 | (4 << 1), 0];
const ABORT: [u64; 2] = [1, 0];

#[test]
fn linux_probe_sequence_brings_the_smmu_up() {
    let mut r = rig(&[0x08, 0x10]);
    let d = r.probe();
    assert_eq!(d.features.sid_bits, regs::GUEST_SID_BITS);
    assert!(d.features.msi);
    assert_eq!(r.rd(regs::CR0ACK), regs::CR0_IMPLEMENTED);
    assert_eq!(
        r.rd(regs::IRQ_CTRLACK),
        regs::IRQ_CTRL_GERROR_IRQEN | regs::IRQ_CTRL_EVENTQ_IRQEN
    );
    assert!(r.backend.0.lock().unwrap().events_enabled);
    // CFGI_ALL ran while disabled (nothing installed); SMMUEN then installed every
    // stream from the zeroed table: V=0, i.e. abort.
    assert_eq!(r.installs(), vec![(0x08, [0, 0]), (0x10, [0, 0])]);
    // TLBI_NSNH_ALL went to the host in one batch, before the CMD_SYNC.
    assert_eq!(r.backend.0.lock().unwrap().batches, vec![vec![[0x30, 0]]]);
    let s = r.smmu.stats();
    assert_eq!((s.commands, s.syncs, s.command_errors), (3, 1, 0));
}

#[test]
fn ste_installs_are_masked_and_only_for_known_streams() {
    let mut r = rig(&[0x08]);
    let mut d = r.probe();
    r.installs();
    // Linux's bypass STE (SHCFG=incoming in word 1).
    let bypass = [BYPASS[0], 1 << 44, 0, 0, 0, 0, 0, 0];
    d.write_ste(&mut r.smmu, &r.mem, 0x08, bypass).unwrap();
    // Word 1 first (CFGI_STE sees V=0), then word 0.
    assert_eq!(r.installs(), vec![(0x08, [0, 0]), (0x08, BYPASS)]);
    let cd = 0x0012_3440u64;
    let s1 = [
        1 | (5 << 1) | (1 << 4) | cd,
        1 | (1 << 2) | (1 << 4) | (3 << 6) | (1 << 27) | (1 << 28) | (1 << 44),
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    d.write_ste(&mut r.smmu, &r.mem, 0x08, s1).unwrap();
    let last = r.installs().pop().unwrap();
    assert_eq!(
        last,
        (
            0x08,
            [s1[0], 1 | (1 << 2) | (1 << 4) | (3 << 6) | (1 << 27)]
        )
    );
    // A StreamID without a device: written, invalidated, nothing installed.
    d.write_ste(&mut r.smmu, &r.mem, 0x20, bypass).unwrap();
    assert!(r.installs().is_empty());
}

#[test]
fn illegal_ste_aborts_and_reports_c_bad_ste() {
    let mut r = rig(&[0x08]);
    let mut d = r.probe();
    r.installs();
    let s2 = [1 | (6 << 1), 0, 0, 0, 0, 0, 0, 0];
    d.write_ste(&mut r.smmu, &r.mem, 0x08, s2).unwrap();
    assert_eq!(r.installs().pop(), Some((0x08, ABORT)));
    let (events, overflow) = d.read_events(&mut r.smmu, &r.mem).unwrap();
    assert!(!overflow);
    assert_eq!(events.last().unwrap()[0], 0x04 | (0x08 << 32));
    assert!(r.eventq_irq.get() > 0);
}

#[test]
fn illegal_command_stops_the_queue_until_gerror_is_acked() {
    let mut r = rig(&[]);
    let mut d = r.probe();
    let gerr_before = r.gerror_irq.get();
    let tlbi = [0x11 | (3 << 48), 0];
    // TLBI_S12_VMALL: stage 2 is not the guest's.
    let err = d
        .submit(&mut r.smmu, &r.mem, &[tlbi, [0x28, 0], tlbi])
        .unwrap_err();
    assert_eq!(
        err,
        DriverError::Command {
            index: 1,
            cerror: 1
        }
    );
    assert_eq!(r.gerror_irq.get(), gerr_before + 1);
    // The driver replaced it with a CMD_SYNC and acked: the queue ran to the end.
    assert_eq!(r.rd(regs::GERROR), r.rd(regs::GERRORN));
    assert_eq!(r.rd(regs::CMDQ_CONS) & 0x1ff, r.rd(regs::CMDQ_PROD));
    let batches = r.backend.0.lock().unwrap().batches.clone();
    assert_eq!(
        batches[1..],
        [vec![tlbi], vec![tlbi]],
        "before and after the error"
    );
    d.submit(&mut r.smmu, &r.mem, &[tlbi]).unwrap();
    assert_eq!(r.smmu.stats().command_errors, 1);
}

#[test]
fn host_refusal_stops_at_the_refused_command() {
    let mut r = rig(&[]);
    let mut d = r.probe();
    r.backend.0.lock().unwrap().refuse_opcodes = vec![0x05];
    let tlbi = [0x11, 0];
    let cfgi_cd = [0x05 | (9 << 32), 0];
    let err = d
        .submit(&mut r.smmu, &r.mem, &[tlbi, tlbi, cfgi_cd, tlbi])
        .unwrap_err();
    assert_eq!(
        err,
        DriverError::Command {
            index: 2,
            cerror: 1
        }
    );
    // One batch up to the sync; the host took two before refusing.
    let s = r.smmu.stats();
    assert_eq!(
        s.invalidations,
        1 + 2 + 1,
        "NSNH_ALL at probe, 2, then the last TLBI"
    );
}

#[test]
fn invalidations_are_batched_up_to_the_sync() {
    let mut r = rig(&[]);
    let mut d = r.probe();
    let cmds: Vec<[u64; 2]> = (0..40).map(|i| [0x12 | (i << 48), 0x1000 * i]).collect();
    d.submit(&mut r.smmu, &r.mem, &cmds).unwrap();
    let b = r.backend.0.lock().unwrap();
    assert_eq!(b.batches.len(), 2);
    assert_eq!(b.batches[1], cmds);
}

#[test]
fn event_queue_overflow_is_flagged_and_recovers() {
    let mut r = rig(&[8]);
    let mut d = r.probe();
    {
        let mut b = r.backend.0.lock().unwrap();
        for i in 0..6u64 {
            b.events
                .push_back(BackendEvent::Record([0x10 | (8 << 32), i, 0, 0]));
        }
    }
    r.smmu.service_events();
    // Four entries: the queue is full with four, two are lost.
    let (events, overflow) = d.read_events(&mut r.smmu, &r.mem).unwrap();
    assert_eq!(
        events.iter().map(|e| e[1]).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    assert!(overflow);
    assert_eq!(r.smmu.stats().events_lost, 2);
    r.backend
        .0
        .lock()
        .unwrap()
        .events
        .push_back(BackendEvent::Lost);
    r.backend
        .0
        .lock()
        .unwrap()
        .events
        .push_back(BackendEvent::Record([0x10, 9, 0, 0]));
    r.smmu.service_events();
    let (events, overflow) = d.read_events(&mut r.smmu, &r.mem).unwrap();
    assert_eq!(events.len(), 1);
    assert!(
        overflow,
        "the host's loss toggles OVFLG again after the ack"
    );
    let (events, overflow) = d.read_events(&mut r.smmu, &r.mem).unwrap();
    assert!(events.is_empty() && !overflow);
}

#[test]
fn gerror_toggles_for_an_unwritable_event_queue() {
    let mut r = rig(&[8]);
    r.probe();
    // Point the event queue outside RAM (allowed while EVENTQEN is off).
    r.smmu.write(regs::CR0, &regs::CR0_SMMUEN.to_le_bytes());
    r.smmu
        .write(regs::EVENTQ_BASE, &(0x1_0000_0000u64 | 2).to_le_bytes());
    r.smmu.write(
        regs::CR0,
        &(regs::CR0_SMMUEN | regs::CR0_EVENTQEN).to_le_bytes(),
    );
    let before = r.gerror_irq.get();
    r.backend
        .0
        .lock()
        .unwrap()
        .events
        .push_back(BackendEvent::Record([0x10, 0, 0, 0]));
    r.smmu.service_events();
    let active = r.rd(regs::GERROR) ^ r.rd(regs::GERRORN);
    assert_eq!(active, regs::GERROR_EVTQ_ABT_ERR);
    assert_eq!(r.gerror_irq.get(), before + 1);
    // Acknowledge: inactive again.
    let n = r.rd(regs::GERRORN) ^ regs::GERROR_EVTQ_ABT_ERR;
    r.smmu.write(regs::GERRORN, &n.to_le_bytes());
    assert_eq!(r.rd(regs::GERROR), r.rd(regs::GERRORN));
}

#[test]
fn gbpa_decides_while_disabled_and_bases_are_locked_while_enabled() {
    let mut r = rig(&[8]);
    let gbpa = regs::GBPA_UPDATE | regs::GBPA_ABORT;
    r.smmu.write(regs::GBPA, &gbpa.to_le_bytes());
    assert_eq!(
        r.rd(regs::GBPA),
        regs::GBPA_ABORT,
        "UPDATE completes at once"
    );
    assert_eq!(r.installs(), vec![(8, ABORT)]);
    r.smmu.write(regs::GBPA, &regs::GBPA_UPDATE.to_le_bytes());
    assert_eq!(r.installs(), vec![(8, BYPASS)]);
    r.probe();
    let base = r.rd(regs::STRTAB_BASE);
    r.smmu.write(regs::STRTAB_BASE, &0x5000u32.to_le_bytes());
    assert_eq!(r.rd(regs::STRTAB_BASE), base);
    // Unaligned and odd-sized accesses are ignored and read 0.
    let mut b = [0xffu8; 2];
    r.smmu.read(regs::IDR0, &mut b);
    assert_eq!(b, [0, 0]);
    r.smmu.write(regs::CR0 + 1, &[0xff]);
    assert_eq!(r.rd(regs::CR0), regs::CR0_IMPLEMENTED);
}

#[test]
fn cmd_sync_msi_outside_ram_and_queue_outside_ram_are_survivable() {
    let mut r = rig(&[]);
    r.probe();
    // A CMD_SYNC whose MSI address is not RAM: completes, nothing written.
    let sync = [0x46u64 | (1 << 12), 0x1_0000_0000];
    let prod = r.rd(regs::CMDQ_PROD);
    let at = LAYOUT.cmdq + u64::from(prod & 0xff) * 16;
    r.mem.write_obj(sync, GuestAddress(at)).unwrap();
    r.smmu.write(regs::CMDQ_PROD, &(prod + 1).to_le_bytes());
    assert_eq!(r.rd(regs::CMDQ_CONS), prod + 1);
    // A queue whose base is outside RAM: CERROR_ABT.
    r.smmu.write(regs::CR0, &0u32.to_le_bytes());
    r.smmu
        .write(regs::CMDQ_BASE, &(0x1_0000_0000u64 | 4).to_le_bytes());
    r.smmu.write(regs::CMDQ_CONS, &0u32.to_le_bytes());
    r.smmu.write(regs::CR0, &regs::CR0_CMDQEN.to_le_bytes());
    r.smmu.write(regs::CMDQ_PROD, &1u32.to_le_bytes());
    assert_eq!(r.rd(regs::CMDQ_CONS) >> 24, cmdq::cerror::ABT);
}
