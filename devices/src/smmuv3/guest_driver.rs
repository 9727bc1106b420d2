//! A minimal guest driver for the emulated SMMU, doing at probe what Linux's arm-smmu-v3
//! does (`arm_smmu_device_hw_probe` and `arm_smmu_device_reset`): read the ID registers,
//! disable, program the stream table and queues, enable the command queue with CR0ACK
//! polling, invalidate everything (CFGI_ALL, TLBI_NSNH_ALL, CMD_SYNC with MSI polling),
//! enable the event queue and interrupts, then the SMMU. Afterwards it installs STEs
//! (STE write, CFGI_STE, PREFETCH_CONFIG, CMD_SYNC), submits commands and handles a
//! command error as `arm_smmu_cmdq_skip_err` does. For tests and for reading along the
//! emulation; it talks to the device only through MMIO and guest memory.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::regs::*;
use crate::BusDevice;

/// Where the driver puts its tables in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriverLayout {
    /// The linear stream table (2^SIDSIZE STEs of 64 bytes).
    pub strtab: u64,
    /// The command queue.
    pub cmdq: u64,
    /// log2 of its entries.
    pub cmdq_log2: u32,
    /// The event queue.
    pub eventq: u64,
    /// log2 of its entries.
    pub eventq_log2: u32,
}

/// Why the driver gave up.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    /// The SMMU lacks something the driver needs.
    #[error("unsupported SMMU: {0}")]
    Unsupported(&'static str),
    /// A register did not take its value (an ACK that never came).
    #[error("register {reg:#x} did not acknowledge {want:#x} (reads {got:#x})")]
    NoAck {
        /// The ACK register.
        reg: u64,
        /// The expected value.
        want: u32,
        /// What it reads.
        got: u32,
    },
    /// The SMMU stopped at a command with a CERROR.
    #[error("command {index} of the batch stopped the queue with CERROR {cerror}")]
    Command {
        /// Its index in the submitted batch (the CMD_SYNC is the last).
        index: usize,
        /// CMDQ_CONS.ERR.
        cerror: u32,
    },
    /// The CMD_SYNC did not complete.
    #[error("CMD_SYNC did not complete (CONS {cons:#x}, PROD {prod:#x})")]
    SyncTimeout {
        /// CMDQ_CONS.
        cons: u32,
        /// CMDQ_PROD.
        prod: u32,
    },
    /// Guest memory could not be accessed.
    #[error("guest memory at {0:#x} is not accessible")]
    Memory(u64),
}

/// What was found in the ID registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// StreamID bits.
    pub sid_bits: u32,
    /// Whether CMD_SYNC may complete by MSI (Linux then polls memory).
    pub msi: bool,
    /// log2 of the most command queue entries.
    pub cmdq_max_log2: u32,
}

/// The driver's state after probe.
#[derive(Debug)]
pub struct GuestDriver {
    layout: DriverLayout,
    /// What the ID registers said.
    pub features: Features,
    cmdq_prod: u32,
    eventq_cons: u32,
}

fn rd(dev: &mut dyn BusDevice, reg: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.read(reg, &mut b);
    u32::from_le_bytes(b)
}

fn wr(dev: &mut dyn BusDevice, reg: u64, v: u32) {
    dev.write(reg, &v.to_le_bytes());
}

fn wr64(dev: &mut dyn BusDevice, reg: u64, v: u64) {
    dev.write(reg, &v.to_le_bytes());
}

/// `arm_smmu_write_reg_sync`: write, then poll the ACK register.
fn write_sync(dev: &mut dyn BusDevice, reg: u64, ack: u64, v: u32) -> Result<(), DriverError> {
    wr(dev, reg, v);
    for _ in 0..10 {
        if rd(dev, ack) == v {
            return Ok(());
        }
    }
    Err(DriverError::NoAck {
        reg: ack,
        want: v,
        got: rd(dev, ack),
    })
}

impl GuestDriver {
    /// Probes and resets the SMMU at `dev`, leaving it enabled with every STE of the
    /// (zeroed) stream table invalid.
    pub fn probe<M: GuestMemory>(
        dev: &mut dyn BusDevice,
        mem: &M,
        layout: DriverLayout,
    ) -> Result<GuestDriver, DriverError> {
        let idr0 = rd(dev, IDR0);
        let idr1 = rd(dev, IDR1);
        if idr0 & 2 == 0 {
            return Err(DriverError::Unsupported("no stage 1"));
        }
        if (idr0 >> 2) & 2 == 0 {
            return Err(DriverError::Unsupported("no AArch64 table format"));
        }
        if (idr1 >> 29) & 3 != 0 {
            return Err(DriverError::Unsupported("preset tables or queues"));
        }
        let features = Features {
            sid_bits: idr1 & 0x3f,
            msi: idr0 & (1 << 13) != 0,
            cmdq_max_log2: (idr1 >> 21) & 0x1f,
        };
        if layout.cmdq_log2 > features.cmdq_max_log2 {
            return Err(DriverError::Unsupported("command queue larger than CMDQS"));
        }
        let strtab_len = (64u64) << features.sid_bits;
        let zero = vec![0u8; strtab_len as usize];
        mem.write_slice(&zero, GuestAddress(layout.strtab))
            .map_err(|_| DriverError::Memory(layout.strtab))?;

        write_sync(dev, CR0, CR0ACK, 0)?;
        // Cacheable, inner shareable tables and queues; no E2H, RECINVSID.
        wr(
            dev,
            CR1,
            (1 << 10) | (1 << 8) | (1 << 6) | (3 << 4) | (1 << 2) | 1,
        );
        wr(dev, CR2, 1 << 1);
        wr64(dev, STRTAB_BASE, (1 << 62) | layout.strtab);
        wr(dev, STRTAB_BASE_CFG, features.sid_bits);
        wr64(
            dev,
            CMDQ_BASE,
            (1 << 62) | layout.cmdq | u64::from(layout.cmdq_log2),
        );
        wr(dev, CMDQ_PROD, 0);
        wr(dev, CMDQ_CONS, 0);
        let mut enables = CR0_CMDQEN;
        write_sync(dev, CR0, CR0ACK, enables)?;
        let mut driver = GuestDriver {
            layout,
            features,
            cmdq_prod: 0,
            eventq_cons: 0,
        };
        // CFGI_ALL, TLBI_NSNH_ALL, then CMD_SYNC.
        driver.submit(dev, mem, &[[0x04, 31], [0x30, 0]])?;
        wr64(
            dev,
            EVENTQ_BASE,
            (1 << 62) | layout.eventq | u64::from(layout.eventq_log2),
        );
        wr(dev, EVENTQ_PROD, 0);
        wr(dev, EVENTQ_CONS, 0);
        enables |= CR0_EVENTQEN;
        write_sync(dev, CR0, CR0ACK, enables)?;
        write_sync(dev, IRQ_CTRL, IRQ_CTRLACK, 0)?;
        let irqs = IRQ_CTRL_GERROR_IRQEN | IRQ_CTRL_EVENTQ_IRQEN;
        write_sync(dev, IRQ_CTRL, IRQ_CTRLACK, irqs)?;
        enables |= CR0_SMMUEN;
        write_sync(dev, CR0, CR0ACK, enables)?;
        Ok(driver)
    }

    fn cmdq_mask(&self) -> u32 {
        (2 << self.layout.cmdq_log2) - 1
    }

    fn cmd_addr(&self, prod: u32) -> u64 {
        self.layout.cmdq + u64::from(prod & ((1 << self.layout.cmdq_log2) - 1)) * 16
    }

    /// Writes `cmds` and a CMD_SYNC, rings PROD and waits for the sync, as
    /// `arm_smmu_cmdq_issue_cmdlist` with MSI polling (CS = SEV without MSI). On a
    /// CERROR it replaces the faulty command by a CMD_SYNC, acknowledges GERROR and
    /// reports which one failed (the queue then runs on).
    pub fn submit<M: GuestMemory>(
        &mut self,
        dev: &mut dyn BusDevice,
        mem: &M,
        cmds: &[[u64; 2]],
    ) -> Result<(), DriverError> {
        let start = self.cmdq_prod;
        let mut prod = start;
        let put = |prod: &mut u32, cmd: [u64; 2]| -> Result<(), DriverError> {
            let addr = self.cmd_addr(*prod);
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&cmd[0].to_le_bytes());
            b[8..].copy_from_slice(&cmd[1].to_le_bytes());
            mem.write_slice(&b, GuestAddress(addr))
                .map_err(|_| DriverError::Memory(addr))?;
            *prod = (*prod + 1) & self.cmdq_mask();
            Ok(())
        };
        for &c in cmds {
            put(&mut prod, c)?;
        }
        let sync_addr = self.cmd_addr(prod);
        let sync = if self.features.msi {
            // CS = IRQ, MSH = inner shareable, MSIATTR = OIWB; MSIDATA 0 at the entry.
            [0x46 | (1 << 12) | (3 << 22) | (0xf << 24), sync_addr]
        } else {
            [0x46 | (2 << 12), 0]
        };
        put(&mut prod, sync)?;
        self.cmdq_prod = prod;
        wr(dev, CMDQ_PROD, prod);

        // Each command error is handled as Linux's GERROR handler does, one at a time:
        // the queue resumes after each acknowledgement and may stop again.
        let mut first_error = None;
        for _ in 0..=self.cmdq_mask() {
            let gerror = rd(dev, GERROR) ^ rd(dev, GERRORN);
            if gerror & GERROR_CMDQ_ERR == 0 {
                break;
            }
            let cons = rd(dev, CMDQ_CONS);
            let cerror = (cons >> 24) & 0x7f;
            let mask = self.cmdq_mask();
            let index = ((cons & mask).wrapping_sub(start) & mask) as usize;
            first_error.get_or_insert(DriverError::Command { index, cerror });
            // arm_smmu_cmdq_skip_err: overwrite the bad entry with a CMD_SYNC, ack.
            let bad = self.cmd_addr(cons);
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&(0x46u64 | (2 << 12)).to_le_bytes());
            mem.write_slice(&b, GuestAddress(bad))
                .map_err(|_| DriverError::Memory(bad))?;
            let gerrorn = rd(dev, GERRORN) ^ GERROR_CMDQ_ERR;
            wr(dev, GERRORN, gerrorn);
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        let done = if self.features.msi {
            mem.read_obj::<u32>(GuestAddress(sync_addr))
                .map_err(|_| DriverError::Memory(sync_addr))?
                == 0
        } else {
            true
        };
        let cons = rd(dev, CMDQ_CONS);
        if !done || cons & self.cmdq_mask() != prod {
            return Err(DriverError::SyncTimeout { cons, prod });
        }
        Ok(())
    }

    /// Writes STE `sid` and makes the SMMU use it (`arm_smmu_write_ste`): the words after
    /// the first, CFGI_STE + SYNC, then word 0, CFGI_STE, PREFETCH_CONFIG, SYNC.
    pub fn write_ste<M: GuestMemory>(
        &mut self,
        dev: &mut dyn BusDevice,
        mem: &M,
        sid: u32,
        ste: [u64; 8],
    ) -> Result<(), DriverError> {
        let addr = self.layout.strtab + u64::from(sid) * 64;
        for (i, w) in ste.iter().enumerate().skip(1) {
            let a = addr + 8 * i as u64;
            mem.write_obj(w.to_le(), GuestAddress(a))
                .map_err(|_| DriverError::Memory(a))?;
        }
        let cfgi = [0x03 | (u64::from(sid) << 32), 1];
        self.submit(dev, mem, &[cfgi])?;
        mem.write_obj(ste[0].to_le(), GuestAddress(addr))
            .map_err(|_| DriverError::Memory(addr))?;
        self.submit(dev, mem, &[cfgi, [0x01 | (u64::from(sid) << 32), 0]])
    }

    /// Event records pending in the event queue (consumed), and whether EVENTQ_PROD
    /// flags an overflow (acknowledged).
    pub fn read_events<M: GuestMemory>(
        &mut self,
        dev: &mut dyn BusDevice,
        mem: &M,
    ) -> Result<(Vec<[u64; 4]>, bool), DriverError> {
        let mask = (2u32 << self.layout.eventq_log2) - 1;
        let prod = rd(dev, EVENTQ_PROD);
        let overflow = (prod ^ self.eventq_cons) & (1 << 31) != 0;
        let mut cons = self.eventq_cons & mask;
        let mut out = Vec::new();
        while cons != prod & mask {
            let idx = u64::from(cons & ((1 << self.layout.eventq_log2) - 1));
            let addr = self.layout.eventq + idx * 32;
            let mut r = [0u64; 4];
            for (i, w) in r.iter_mut().enumerate() {
                let a = addr + 8 * i as u64;
                *w = u64::from_le(
                    mem.read_obj(GuestAddress(a))
                        .map_err(|_| DriverError::Memory(a))?,
                );
            }
            out.push(r);
            cons = (cons + 1) & mask;
        }
        // OVACKFLG follows OVFLG.
        self.eventq_cons = cons | (prod & (1 << 31));
        wr(dev, EVENTQ_CONS, self.eventq_cons);
        Ok((out, overflow))
    }
}
