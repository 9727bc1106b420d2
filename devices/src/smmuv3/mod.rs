//! An emulated ARM SMMUv3 that Linux's arm-smmu-v3 driver probes and uses, whose
//! stage 1 the host runs for real through nested translation.
//!
//! The guest programs a stage-1-only SMMU ([`regs::guest_idr`]): a linear stream table
//! in its RAM, a command queue and an event queue. The emulation does the VMM's part and
//! asks a [`Smmuv3Backend`] for the host's:
//!
//! - a write of `CMDQ_PROD` runs the command queue at once ([`cmdq`]): CFGI_STE,
//!   CFGI_STE_RANGE and CFGI_ALL read the STEs from guest memory ([`stream_table`]),
//!   mask them to what the host kernel accepts ([`ste`]) and install them through the
//!   backend; invalidations of the guest's stage 1 (CFGI_CD(_ALL), TLBI_NH_*,
//!   TLBI_NSNH_ALL) are forwarded as one batch per CMD_SYNC; CMD_SYNC completes with the
//!   MSI write Linux polls for; anything else stops the queue with CERROR_ILL in
//!   `CMDQ_CONS` and GERROR.CMDQ_ERR, until the guest acknowledges in GERRORN;
//! - [`Smmuv3::service_events`] moves the backend's events (the host's vEVENTQ, vSIDs
//!   already in place) and the SMMU's own (C_BAD_STE...) into the guest's event queue,
//!   flags an overflow in `EVENTQ_PROD.OVFLG`, and raises the event queue's wired
//!   interrupt; GERROR has its own.
//! - `CR0.SMMUEN` and `GBPA` decide what every stream gets while the SMMU is off: all
//!   streams are installed again on each change (bypass or abort, then the STEs).
//!
//! Register accesses of 4 and 8 bytes are handled (the 64-bit registers in either
//! size); others read zero and are ignored.
//!
//! Not here: a 2-level stream table, ATS, PRI, stalls, stage 2 for the guest, MSIs for
//! the event queue and GERROR (wired SPIs only), the device tree node (the VMM's).

pub mod backend;
pub mod cmdq;
pub mod eventq;
pub mod guest_driver;
pub mod queue;
pub mod regs;
pub mod ste;
pub mod stream_table;

#[cfg(test)]
mod tests;

use std::io;

use vm_memory::{Bytes, GuestAddress, GuestMemory};
use vmm_sys_util::eventfd::EventFd;

pub use backend::{BackendError, BackendEvent, InvalidateError, RecordingBackend, Smmuv3Backend};
pub use regs::HostSmmuInfo;

use cmdq::{cerror, Command, SyncCompletion, CMD_SIZE};
use eventq::{LocalEvents, EVENT_SIZE};
use queue::Queue;
use regs::*;
use ste::SteConfig;
use stream_table::StreamTable;

/// An interrupt line the SMMU raises (a wired SPI, edge: the VMM gives an irqfd).
pub trait IrqLine: Send {
    /// Raise it once.
    fn trigger(&self) -> io::Result<()>;
}

impl IrqLine for EventFd {
    fn trigger(&self) -> io::Result<()> {
        self.write(1)
    }
}

/// The SMMU's interrupt lines.
pub struct Smmuv3Irqs {
    /// The event queue has new records.
    pub eventq: Box<dyn IrqLine>,
    /// A global error became active.
    pub gerror: Box<dyn IrqLine>,
}

/// Counters for the VMM's log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Smmuv3Stats {
    /// Commands consumed from the guest's queue.
    pub commands: u64,
    /// STEs installed through the backend (nested HWPTs, abort or bypass).
    pub ste_installs: u64,
    /// STE installs that failed (the stream was aborted, C_BAD_STE reported).
    pub ste_install_failures: u64,
    /// Invalidation commands forwarded to the host.
    pub invalidations: u64,
    /// Batches they went in (host calls).
    pub invalidation_batches: u64,
    /// CMD_SYNCs completed.
    pub syncs: u64,
    /// Commands that stopped the queue with a CERROR.
    pub command_errors: u64,
    /// Events written to the guest's event queue.
    pub events: u64,
    /// Events lost (queue full or host overflow).
    pub events_lost: u64,
}

impl std::fmt::Display for Smmuv3Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} commands, {} STE installs ({} failed), {} invalidations forwarded in {} \
             batches, {} syncs, {} command errors, {} events ({} lost)",
            self.commands,
            self.ste_installs,
            self.ste_install_failures,
            self.invalidations,
            self.invalidation_batches,
            self.syncs,
            self.command_errors,
            self.events,
            self.events_lost
        )
    }
}

/// What serves the SMMU after [`Smmuv3::take_backend`]: no streams, nothing to forward.
struct Detached;

impl Smmuv3Backend for Detached {
    fn stream_ids(&self) -> Vec<u32> {
        Vec::new()
    }
    fn install_ste(&mut self, _: u32, _: [u64; 2]) -> Result<(), BackendError> {
        Ok(())
    }
    fn invalidate(&mut self, _: &[[u64; 2]]) -> Result<(), InvalidateError> {
        Ok(())
    }
    fn enable_events(&mut self) -> Result<(), BackendError> {
        Ok(())
    }
    fn read_events(&mut self, _: usize) -> Vec<BackendEvent> {
        Vec::new()
    }
}

/// Invalidations forwarded at most per host call (a long queue without CMD_SYNC).
const BATCH_MAX: usize = 128;
/// Events moved into the guest queue per [`Smmuv3::service_events`] call at most.
const EVENTS_PER_SERVICE: usize = 64;

/// The emulated SMMUv3. See the module docs.
pub struct Smmuv3<M: GuestMemory> {
    mem: M,
    backend: Box<dyn Smmuv3Backend>,
    irqs: Smmuv3Irqs,
    idr: [u32; 6],
    iidr: u32,
    aidr: u32,
    cr0: u32,
    cr1: u32,
    cr2: u32,
    gbpa: u32,
    irq_ctrl: u32,
    gerror: u32,
    gerrorn: u32,
    gerror_irq_cfg: [u32; 4],
    eventq_irq_cfg: [u32; 4],
    strtab_base: u64,
    strtab_base_cfg: u32,
    cmdq_base: u64,
    cmdq_prod: u32,
    /// Index and wrap, plus CERROR in bits 30:24.
    cmdq_cons: u32,
    eventq_base: u64,
    /// Index and wrap, plus OVFLG in bit 31.
    eventq_prod: u32,
    eventq_cons: u32,
    local_events: LocalEvents,
    stats: Smmuv3Stats,
}

impl<M: GuestMemory> std::fmt::Debug for Smmuv3<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Smmuv3")
            .field("cr0", &self.cr0)
            .field("gerror", &self.gerror)
            .field("stats", &self.stats)
            .finish()
    }
}

fn read_u32(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = data.len().min(4);
    b[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(b)
}

fn read_u64(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

/// Replaces the 32-bit half at `offset & 4` of `reg` (or all of it for an 8-byte write).
fn merge64(reg: u64, offset: u64, data: &[u8]) -> u64 {
    if data.len() == 8 {
        return read_u64(data);
    }
    let v = u64::from(read_u32(data));
    if offset & 4 == 0 {
        (reg & !0xffff_ffff) | v
    } else {
        (reg & 0xffff_ffff) | (v << 32)
    }
}

impl<M: GuestMemory> Smmuv3<M> {
    /// An SMMU in its reset state (disabled, GBPA bypass) whose ID registers derive from
    /// the host's.
    pub fn new(
        mem: M,
        host: &HostSmmuInfo,
        backend: Box<dyn Smmuv3Backend>,
        irqs: Smmuv3Irqs,
    ) -> Smmuv3<M> {
        Smmuv3 {
            mem,
            backend,
            irqs,
            idr: guest_idr(host),
            iidr: 0,
            aidr: host.aidr & 0xff,
            cr0: 0,
            cr1: 0,
            cr2: 0,
            gbpa: 0,
            irq_ctrl: 0,
            gerror: 0,
            gerrorn: 0,
            gerror_irq_cfg: [0; 4],
            eventq_irq_cfg: [0; 4],
            strtab_base: 0,
            strtab_base_cfg: 0,
            cmdq_base: 0,
            cmdq_prod: 0,
            cmdq_cons: 0,
            eventq_base: 0,
            eventq_prod: 0,
            eventq_cons: 0,
            local_events: LocalEvents::default(),
            stats: Smmuv3Stats::default(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> Smmuv3Stats {
        self.stats
    }

    /// The guest's ID registers.
    pub fn idr(&self) -> [u32; 6] {
        self.idr
    }

    /// An fd readable while the backend has events for [`Self::service_events`], if it
    /// has one.
    pub fn event_fd(&self) -> Option<std::os::fd::OwnedFd> {
        self.backend.event_fd()
    }

    /// Takes the backend out, leaving one that serves no stream: the VMM drops the
    /// returned backend (its host objects) before it detaches the devices it served.
    pub fn take_backend(&mut self) -> Box<dyn Smmuv3Backend> {
        std::mem::replace(&mut self.backend, Box::new(Detached))
    }

    /// Replaces guest memory (after a hotplug or on restore).
    pub fn set_memory(&mut self, mem: M) {
        self.mem = mem;
    }

    fn cmdq(&self) -> Queue {
        Queue::from_base(self.cmdq_base, GUEST_CMDQS, CMD_SIZE)
    }

    fn eventq(&self) -> Queue {
        Queue::from_base(self.eventq_base, GUEST_EVENTQS, EVENT_SIZE)
    }

    fn enabled(&self) -> bool {
        self.cr0 & CR0_SMMUEN != 0
    }

    fn gerror_active(&self, bit: u32) -> bool {
        (self.gerror ^ self.gerrorn) & bit != 0
    }

    /// Makes `bit` active (if it is not) and raises the GERROR interrupt.
    fn raise_gerror(&mut self, bit: u32) {
        if self.gerror_active(bit) {
            return;
        }
        self.gerror ^= bit;
        if self.irq_ctrl & IRQ_CTRL_GERROR_IRQEN != 0 {
            if let Err(e) = self.irqs.gerror.trigger() {
                log::warn!("SMMUv3: cannot raise the GERROR interrupt: {e}");
            }
        }
    }

    fn read_reg(&mut self, offset: u64, len: usize) -> u64 {
        let lo = |v: u64| if offset & 4 == 0 { v } else { v >> 32 };
        let r64 = |v: u64| if len == 8 { v } else { lo(v) & 0xffff_ffff };
        match offset & !3 {
            IDR0..=IDR5 if len == 4 => u64::from(self.idr[((offset - IDR0) / 4) as usize]),
            IIDR => u64::from(self.iidr),
            AIDR => u64::from(self.aidr),
            CR0 => u64::from(self.cr0),
            CR0ACK => u64::from(self.cr0),
            CR1 => u64::from(self.cr1),
            CR2 => u64::from(self.cr2),
            STATUSR => 0,
            GBPA => u64::from(self.gbpa),
            IRQ_CTRL | IRQ_CTRLACK => u64::from(self.irq_ctrl),
            GERROR => u64::from(self.gerror),
            GERRORN => u64::from(self.gerrorn),
            0x68..=0x77 => {
                let i = ((offset - GERROR_IRQ_CFG0) / 4) as usize;
                let v = u64::from(self.gerror_irq_cfg[i]);
                if len == 8 {
                    v | u64::from(self.gerror_irq_cfg[(i + 1) % 4]) << 32
                } else {
                    v
                }
            }
            0x80 | 0x84 => r64(self.strtab_base),
            STRTAB_BASE_CFG => u64::from(self.strtab_base_cfg),
            0x90 | 0x94 => r64(self.cmdq_base),
            CMDQ_PROD => u64::from(self.cmdq_prod),
            CMDQ_CONS => u64::from(self.cmdq_cons),
            0xa0 | 0xa4 => r64(self.eventq_base),
            0xb0..=0xbf => {
                let i = ((offset - EVENTQ_IRQ_CFG0) / 4) as usize;
                let v = u64::from(self.eventq_irq_cfg[i]);
                if len == 8 {
                    v | u64::from(self.eventq_irq_cfg[(i + 1) % 4]) << 32
                } else {
                    v
                }
            }
            EVENTQ_PROD => {
                self.service_events();
                u64::from(self.eventq_prod)
            }
            EVENTQ_CONS => u64::from(self.eventq_cons),
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, data: &[u8]) {
        let v = read_u32(data);
        match offset & !3 {
            CR0 => self.write_cr0(v),
            CR1 => self.cr1 = v,
            CR2 => self.cr2 = v & 0x7,
            GBPA => {
                let old = self.gbpa;
                // The update completes at once: UPDATE reads back clear.
                self.gbpa = v & !GBPA_UPDATE;
                if v & GBPA_UPDATE != 0 && old != self.gbpa && !self.enabled() {
                    self.install_all();
                }
            }
            IRQ_CTRL => self.irq_ctrl = v & (IRQ_CTRL_GERROR_IRQEN | IRQ_CTRL_EVENTQ_IRQEN),
            GERRORN => {
                self.gerrorn = v & GERROR_IMPLEMENTED;
                // An acknowledged command error lets the queue run again.
                if !self.gerror_active(GERROR_CMDQ_ERR) {
                    self.process_commands();
                }
            }
            0x68..=0x77 => {
                let i = ((offset - GERROR_IRQ_CFG0) / 4) as usize;
                self.gerror_irq_cfg[i] = v;
                if data.len() == 8 {
                    self.gerror_irq_cfg[(i + 1) % 4] = (read_u64(data) >> 32) as u32;
                }
            }
            0xb0..=0xbf => {
                let i = ((offset - EVENTQ_IRQ_CFG0) / 4) as usize;
                self.eventq_irq_cfg[i] = v;
                if data.len() == 8 {
                    self.eventq_irq_cfg[(i + 1) % 4] = (read_u64(data) >> 32) as u32;
                }
            }
            // Base and size registers may only change while their unit is off.
            0x80 | 0x84 if !self.enabled() => {
                self.strtab_base = merge64(self.strtab_base, offset, data);
            }
            STRTAB_BASE_CFG if !self.enabled() => self.strtab_base_cfg = v & 0x3_07ff,
            0x90 | 0x94 if self.cr0 & CR0_CMDQEN == 0 => {
                self.cmdq_base = merge64(self.cmdq_base, offset, data);
            }
            CMDQ_PROD => {
                self.cmdq_prod = v & self.cmdq().mask();
                self.process_commands();
            }
            CMDQ_CONS if self.cr0 & CR0_CMDQEN == 0 => {
                self.cmdq_cons = v & self.cmdq().mask();
            }
            0xa0 | 0xa4 if self.cr0 & CR0_EVENTQEN == 0 => {
                self.eventq_base = merge64(self.eventq_base, offset, data);
            }
            EVENTQ_PROD if self.cr0 & CR0_EVENTQEN == 0 => {
                self.eventq_prod = v & (self.eventq().mask() | 1 << 31);
            }
            EVENTQ_CONS => {
                self.eventq_cons = v & (self.eventq().mask() | 1 << 31);
                self.service_events();
            }
            other => log::debug!("SMMUv3: ignored write of {v:#x} to {other:#x}"),
        }
    }

    fn write_cr0(&mut self, v: u32) {
        let old = self.cr0;
        self.cr0 = v & CR0_IMPLEMENTED;
        let new = self.cr0;
        let turned_on = |bit: u32| old & bit == 0 && new & bit != 0;
        if turned_on(CR0_EVENTQEN) {
            if let Err(e) = self.backend.enable_events() {
                log::warn!("SMMUv3: host events unavailable, the guest sees only ours: {e}");
            }
        }
        if (old ^ self.cr0) & CR0_SMMUEN != 0 {
            self.install_all();
        }
        if turned_on(CR0_CMDQEN) {
            self.process_commands();
        }
        if turned_on(CR0_EVENTQEN) {
            self.service_events();
        }
    }

    /// Installs what every stream of the backend should have now.
    fn install_all(&mut self) {
        for sid in self.backend.stream_ids() {
            self.install_stream(sid);
        }
    }

    /// Installs stream `sid`'s translation: GBPA's while the SMMU is off, else its STE.
    /// An STE that cannot be read or is illegal aborts the stream and raises an event.
    fn install_stream(&mut self, sid: u32) {
        let words: Result<[u64; 2], [u64; 4]> = if !self.enabled() {
            let abort = self.gbpa & GBPA_ABORT != 0;
            Ok(if abort { [1, 0] } else { [1 | (4 << 1), 0] })
        } else {
            let table = StreamTable::from_regs(self.strtab_base, self.strtab_base_cfg);
            match table.read(&self.mem, sid) {
                Ok(ste) => ste.nested_words().ok_or_else(|| {
                    if let SteConfig::Illegal(cfg) = ste.config() {
                        log::debug!("SMMUv3: StreamID {sid:#x}: illegal STE Config {cfg}");
                    }
                    eventq::record(eventq::C_BAD_STE, sid)
                }),
                Err(e) => {
                    log::debug!("SMMUv3: StreamID {sid:#x}: {e}");
                    Err(e.event(sid))
                }
            }
        };
        let result = match words {
            Ok(w) => self.backend.install_ste(sid, w),
            Err(event) => {
                self.local_events.push(event);
                self.backend.install_ste(sid, [1, 0])
            }
        };
        match result {
            Ok(()) => self.stats.ste_installs += 1,
            Err(e) => {
                self.stats.ste_install_failures += 1;
                log::warn!("SMMUv3: StreamID {sid:#x}: the host refused the STE: {e}");
                self.local_events
                    .push(eventq::record(eventq::C_BAD_STE, sid));
                if let Err(e) = self.backend.install_ste(sid, [1, 0]) {
                    log::warn!("SMMUv3: StreamID {sid:#x}: cannot abort the stream: {e}");
                }
            }
        }
    }

    /// Stops the command queue at the entry `cons` points at with CERROR `code`.
    fn command_error(&mut self, cons: u32, code: u32) {
        self.stats.command_errors += 1;
        self.cmdq_cons = (cons & self.cmdq().mask()) | (code << 24);
        self.raise_gerror(GERROR_CMDQ_ERR);
    }

    /// Forwards `batch` (commands and their queue positions). On a failure the queue
    /// stops at the failing command; returns false then.
    fn flush(&mut self, batch: &mut Vec<(u32, [u64; 2])>) -> bool {
        if batch.is_empty() {
            return true;
        }
        let cmds: Vec<[u64; 2]> = batch.iter().map(|&(_, c)| c).collect();
        self.stats.invalidation_batches += 1;
        let result = self.backend.invalidate(&cmds);
        let ok = match result {
            Ok(()) => {
                self.stats.invalidations += cmds.len() as u64;
                true
            }
            Err(e) => {
                let at = e.done.min(batch.len() - 1);
                self.stats.invalidations += at as u64;
                log::debug!("SMMUv3: forwarded invalidation refused: {e}");
                self.command_error(batch[at].0, cerror::ILL);
                false
            }
        };
        batch.clear();
        ok
    }

    /// Runs the command queue from CONS to PROD (see the module docs).
    fn process_commands(&mut self) {
        if self.cr0 & CR0_CMDQEN == 0 || self.gerror_active(GERROR_CMDQ_ERR) {
            return;
        }
        let q = self.cmdq();
        let mut cons = self.cmdq_cons & q.mask();
        self.cmdq_cons = cons;
        let mut batch: Vec<(u32, [u64; 2])> = Vec::new();
        while !q.is_empty(self.cmdq_prod, cons) {
            let mut raw = [0u8; 16];
            if self
                .mem
                .read_slice(&mut raw, GuestAddress(q.entry_addr(cons)))
                .is_err()
            {
                if self.flush(&mut batch) {
                    self.command_error(cons, cerror::ABT);
                }
                return;
            }
            let cmd = [
                u64::from_le_bytes(raw[..8].try_into().unwrap_or_default()),
                u64::from_le_bytes(raw[8..].try_into().unwrap_or_default()),
            ];
            self.stats.commands += 1;
            match cmdq::decode(cmd) {
                Command::Forward(c) => {
                    batch.push((cons, c));
                    if batch.len() >= BATCH_MAX && !self.flush(&mut batch) {
                        return;
                    }
                }
                Command::Prefetch => {}
                Command::CfgiSte { first, last } => {
                    if !self.flush(&mut batch) {
                        return;
                    }
                    if self.enabled() {
                        for sid in self.backend.stream_ids() {
                            if (first..=last).contains(&sid) {
                                self.install_stream(sid);
                            }
                        }
                    }
                }
                Command::Sync(completion) => {
                    if !self.flush(&mut batch) {
                        return;
                    }
                    self.stats.syncs += 1;
                    if let SyncCompletion::Msi { addr, data } = completion {
                        if self
                            .mem
                            .write_obj(data.to_le(), GuestAddress(addr))
                            .is_err()
                        {
                            log::debug!("SMMUv3: CMD_SYNC MSI to {addr:#x} is outside RAM");
                        }
                    }
                }
                Command::Illegal => {
                    if self.flush(&mut batch) {
                        self.command_error(cons, cerror::ILL);
                    }
                    return;
                }
            }
            cons = q.next(cons);
            self.cmdq_cons = cons;
        }
        self.flush(&mut batch);
        self.service_events();
    }

    /// Moves pending events (the SMMU's own, then the host's) into the guest's event
    /// queue and raises its interrupt if any went in. The VMM calls this when the host's
    /// event source is readable; register accesses to the event queue call it too.
    pub fn service_events(&mut self) {
        if self.cr0 & CR0_EVENTQEN == 0 {
            return;
        }
        let mut written = 0;
        let mut lost = u64::from(std::mem::take(&mut self.local_events.lost));
        while let Some(r) = self.local_events.pop() {
            match self.put_event(r) {
                Ok(true) => written += 1,
                Ok(false) => {
                    self.local_events.unpop(r);
                    break;
                }
                Err(()) => return,
            }
        }
        let room = EVENTS_PER_SERVICE.saturating_sub(written);
        if room > 0 {
            for ev in self.backend.read_events(room) {
                match ev {
                    BackendEvent::Lost => lost += 1,
                    BackendEvent::Record(r) => match self.put_event(r) {
                        Ok(true) => written += 1,
                        Ok(false) => lost += 1,
                        Err(()) => return,
                    },
                }
            }
        }
        if lost > 0 {
            self.stats.events_lost += lost;
            // OVFLG toggles to differ from the guest's OVACKFLG, once per overflow.
            if (self.eventq_prod ^ self.eventq_cons) & (1 << 31) == 0 {
                self.eventq_prod ^= 1 << 31;
            }
        }
        if written > 0 && self.irq_ctrl & IRQ_CTRL_EVENTQ_IRQEN != 0 {
            if let Err(e) = self.irqs.eventq.trigger() {
                log::warn!("SMMUv3: cannot raise the event queue interrupt: {e}");
            }
        }
    }

    /// Writes one record at PROD: `Ok(false)` if the queue is full, `Err` if guest
    /// memory refused it (GERROR.EVTQ_ABT_ERR raised).
    fn put_event(&mut self, r: [u64; 4]) -> Result<bool, ()> {
        let q = self.eventq();
        let prod = self.eventq_prod & q.mask();
        if q.is_full(prod, self.eventq_cons) {
            return Ok(false);
        }
        let mut bytes = [0u8; 32];
        for (i, w) in r.iter().enumerate() {
            bytes[8 * i..8 * i + 8].copy_from_slice(&w.to_le_bytes());
        }
        if self
            .mem
            .write_slice(&bytes, GuestAddress(q.entry_addr(prod)))
            .is_err()
        {
            self.raise_gerror(GERROR_EVTQ_ABT_ERR);
            return Err(());
        }
        self.stats.events += 1;
        self.eventq_prod = (self.eventq_prod & (1 << 31)) | q.next(prod);
        Ok(true)
    }
}

/// A naturally aligned access of 4 or 8 bytes.
fn sized(offset: u64, len: usize) -> bool {
    (len == 4 || len == 8) && offset & (len as u64 - 1) == 0
}

impl<M: GuestMemory + Send> crate::BusDevice for Smmuv3<M> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = if sized(offset, data.len()) {
            self.read_reg(offset, data.len())
        } else {
            0
        };
        let bytes = v.to_le_bytes();
        let n = data.len().min(8);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if sized(offset, data.len()) {
            self.write_reg(offset, data);
        }
    }
}
