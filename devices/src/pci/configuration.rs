//! The configuration space of one PCI function, as the guest sees it.
//!
//! [`PciConfiguration`] holds 4 KiB of registers (the 256-byte type 0 header
//! area plus the PCIe extended area reachable through ECAM) with, for every
//! bit, whether the guest may write it and whether writing 1 clears it. On
//! top of that it models:
//!
//! * the identity registers ([`PciIds`]), command and status;
//! * six BARs with sizing (write all-ones, read back the size mask) and
//!   relocation, reported as [`BarReprogram`] events;
//! * the capability list (pointer at 0x34) and the extended capability list
//!   (from 0x100).
//!
//! A BAR *decodes* (claims guest accesses) only while the matching enable bit
//! of the command register is set (memory space for memory BARs, I/O space
//! for I/O BARs) and the guest is not in the middle of sizing it (the last
//! value the guest wrote to one of its registers was 0xffff_ffff; a real
//! address never is, since bit 0 of a memory BAR is 0). Every
//! change of the decoded address, including turning decode on or off, is
//! returned from the write that caused it, so the owner can move the BAR on
//! the MMIO bus (and, for passthrough, move the KVM memory slot). Guests
//! clear the enable bit while they size BARs and while they rewrite a 64-bit
//! BAR half by half, so a half-written address is never reported.
//!
//! Every guest access is bounds-checked: an access past the 4 KiB or one that
//! straddles a dword is ignored (reads as all-ones). Nothing here panics on
//! guest input.
//!
//! What this module does not do: it does not dispatch BAR accesses, decide
//! where BARs go (see `bar_alloc`) or model type 1 (bridge) headers; the
//! expansion ROM BAR is not implemented (reads 0, so guests see no ROM).

/// Size of the conventional configuration space (type 0 header and
/// capabilities).
pub const PCI_CONFIG_SPACE_SIZE: usize = 256;
/// Size of the configuration space of a function reachable through ECAM.
pub const PCI_EXTENDED_CONFIG_SPACE_SIZE: usize = 4096;
/// Number of dword registers of a function.
pub const PCI_CONFIG_REGS: usize = PCI_EXTENDED_CONFIG_SPACE_SIZE / 4;
/// Number of BARs of a type 0 header.
pub const PCI_NUM_BARS: usize = 6;

/// Command register bit: the function decodes its I/O BARs.
pub const COMMAND_IO_SPACE: u16 = 1 << 0;
/// Command register bit: the function decodes its memory BARs.
pub const COMMAND_MEMORY_SPACE: u16 = 1 << 1;
/// Command register bit: the function may master DMA (and send MSIs).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command register bit: legacy INTx is disabled.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Status register bit: the capability list at 0x34 is valid.
pub const STATUS_CAPABILITIES_LIST: u16 = 1 << 4;
/// Status register bit: the function signaled a system error (RW1C).
pub const STATUS_SIGNALED_SYSTEM_ERROR: u16 = 1 << 14;

/// Byte offset of the command register.
pub const COMMAND_OFFSET: usize = 0x04;
/// Byte offset of the status register.
pub const STATUS_OFFSET: usize = 0x06;
/// Byte offset of BAR 0.
pub const BAR0_OFFSET: usize = 0x10;
/// Byte offset of the capabilities pointer.
pub const CAPABILITIES_POINTER_OFFSET: usize = 0x34;
/// Byte offset of the interrupt line register.
pub const INTERRUPT_LINE_OFFSET: usize = 0x3c;
/// Byte offset of the interrupt pin register.
pub const INTERRUPT_PIN_OFFSET: usize = 0x3d;

/// Dword index of the command/status register.
const COMMAND_REG: usize = COMMAND_OFFSET / 4;
/// Dword index of BAR 0.
const BAR0_REG: usize = BAR0_OFFSET / 4;
/// First byte the capability list may use.
const FIRST_CAPABILITY_OFFSET: usize = 0x40;
/// First byte of the extended capability list (fixed by the PCIe spec).
const FIRST_EXTENDED_CAPABILITY_OFFSET: usize = PCI_CONFIG_SPACE_SIZE;

/// Command bits the guest may change: I/O, memory, bus master, parity error
/// response, SERR# enable, INTx disable.
const COMMAND_WRITABLE: u16 = COMMAND_IO_SPACE
    | COMMAND_MEMORY_SPACE
    | COMMAND_BUS_MASTER
    | 1 << 6
    | 1 << 8
    | COMMAND_INTX_DISABLE;
/// Status bits the guest clears by writing 1: master data parity error,
/// signaled/received target abort, received master abort, signaled system
/// error, detected parity error.
const STATUS_WRITE_1_TO_CLEAR: u16 = 1 << 8 | 0xf800;

/// BAR register flag: I/O space BAR.
const BAR_IO: u32 = 1;
/// BAR register flag: 64-bit memory BAR (type field 0b10).
const BAR_MEM_64: u32 = 0b10 << 1;
/// BAR register flag: prefetchable memory.
const BAR_PREFETCHABLE: u32 = 1 << 3;
/// Address bits of a memory BAR's low dword.
const BAR_MEM_ADDR_MASK: u32 = 0xffff_fff0;
/// Address bits of an I/O BAR: 16-bit decode, the x86 I/O space.
const BAR_IO_ADDR_MASK: u32 = 0x0000_fffc;

/// Smallest memory BAR the spec allows.
const MIN_MEM_BAR_SIZE: u64 = 16;
/// Smallest I/O BAR the spec allows.
const MIN_IO_BAR_SIZE: u64 = 4;
/// Largest I/O BAR the spec allows.
const MAX_IO_BAR_SIZE: u64 = 256;
/// Largest 32-bit memory BAR (it must fit below 4 GiB, naturally aligned).
const MAX_MEM32_BAR_SIZE: u64 = 1 << 31;
/// Largest 64-bit memory BAR.
const MAX_MEM64_BAR_SIZE: u64 = 1 << 63;

/// Errors building a configuration space. All of them are device-model bugs
/// (the guest cannot cause them).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciConfigError {
    /// A BAR index past the sixth BAR (or a 64-bit BAR in the last slot).
    #[error(
        "BAR {index} does not exist: a type 0 header has BARs 0 to 5 and a 64-bit BAR needs \
         two slots, so it must start at 0 to 4; pick another BAR index"
    )]
    BarIndex {
        /// Requested index.
        index: usize,
    },
    /// The BAR (or the upper half of a 64-bit BAR) is already in use.
    #[error("BAR {index} is already in use (perhaps as the upper half of a 64-bit BAR); pick a free BAR")]
    BarInUse {
        /// Requested index.
        index: usize,
    },
    /// The BAR size is not a power of two or outside the range of its kind.
    #[error(
        "a {kind} BAR of {size:#x} bytes is not possible: the size must be a power of two \
         between {min:#x} and {max:#x}; round the region up or use another BAR kind"
    )]
    BarSize {
        /// Kind of BAR.
        kind: PciBarKind,
        /// Requested size.
        size: u64,
        /// Smallest size of that kind.
        min: u64,
        /// Largest size of that kind.
        max: u64,
    },
    /// The capability does not fit into the remaining space.
    #[error(
        "no room for capability {id:#x} of {len} bytes: only {free} bytes are left before \
         {limit:#x}; drop or shrink another capability"
    )]
    CapabilitySpace {
        /// Capability ID.
        id: u16,
        /// Bytes needed, header included.
        len: usize,
        /// Bytes left.
        free: usize,
        /// End of the area the capability must fit in.
        limit: usize,
    },
    /// The writable mask does not match the capability body.
    #[error(
        "the writable mask of capability {id:#x} has {mask_len} bytes but its body has \
         {body_len}: give one mask byte per body byte, or an empty mask for a read-only body"
    )]
    CapabilityMask {
        /// Capability ID.
        id: u16,
        /// Length of the body.
        body_len: usize,
        /// Length of the mask.
        mask_len: usize,
    },
    /// A raw device-side write touched the BARs or left the config space.
    #[error(
        "cannot set {len} bytes at config offset {offset:#x}: the range must lie inside the \
         4 KiB config space and not touch the BARs (0x10..0x28); use add_bar for BARs"
    )]
    SetRange {
        /// Byte offset.
        offset: usize,
        /// Number of bytes.
        len: usize,
    },
}

/// Identity of a function: the read-only registers a driver matches on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PciIds {
    /// Vendor ID (0x00).
    pub vendor_id: u16,
    /// Device ID (0x02).
    pub device_id: u16,
    /// Revision ID (0x08).
    pub revision_id: u8,
    /// Programming interface (0x09).
    pub prog_if: u8,
    /// Subclass (0x0a).
    pub subclass: u8,
    /// Base class (0x0b).
    pub class_code: u8,
    /// Subsystem vendor ID (0x2c).
    pub subsystem_vendor_id: u16,
    /// Subsystem ID (0x2e).
    pub subsystem_id: u16,
}

/// What a BAR maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PciBarKind {
    /// Port I/O (16-bit decode).
    Io,
    /// Memory below 4 GiB, one BAR slot.
    Memory32,
    /// Memory anywhere, two BAR slots (low dword first).
    Memory64,
}

impl PciBarKind {
    /// Whether the BAR maps memory (as opposed to port I/O).
    pub fn is_memory(self) -> bool {
        self != PciBarKind::Io
    }
}

impl std::fmt::Display for PciBarKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PciBarKind::Io => "I/O",
            PciBarKind::Memory32 => "32-bit memory",
            PciBarKind::Memory64 => "64-bit memory",
        })
    }
}

/// A BAR as a device declares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciBarConfig {
    /// BAR index, 0..6 (a 64-bit BAR also occupies `index + 1`).
    pub index: usize,
    /// What the BAR maps.
    pub kind: PciBarKind,
    /// Size in bytes, a power of two.
    pub size: u64,
    /// Whether the memory is prefetchable (ignored for I/O BARs).
    pub prefetchable: bool,
}

/// A BAR and where it currently is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciBar {
    /// The BAR's declaration.
    pub config: PciBarConfig,
    /// The address programmed in the BAR register(s).
    pub addr: u64,
    /// Where the BAR decodes guest accesses now: `None` while the command
    /// register disables its address space or while the guest sizes it.
    pub decoded: Option<u64>,
}

/// A change of where a BAR decodes, returned from the config write that
/// caused it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarReprogram {
    /// BAR index (the first slot of a 64-bit BAR).
    pub bar: usize,
    /// What the BAR maps.
    pub kind: PciBarKind,
    /// Size of the BAR in bytes.
    pub size: u64,
    /// Where the BAR decoded before the write; `None` if it did not.
    pub old: Option<u64>,
    /// Where the BAR decodes after the write; `None` if it no longer does.
    pub new: Option<u64>,
}

/// What sits in one of the six BAR slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BarSlot {
    /// Not implemented: the register reads 0 and ignores writes.
    Unused,
    /// A BAR, with the address last reported as decoded.
    Bar {
        config: PciBarConfig,
        decoded: Option<u64>,
    },
    /// The upper dword of the 64-bit BAR in the previous slot.
    Upper,
}

/// The configuration space of one PCI function.
///
/// Invariants: `regs`, `writable` and `write_1_to_clear` have
/// [`PCI_CONFIG_REGS`] entries; for a BAR slot, `writable` holds exactly its
/// address bits, so a register's value is always `flags | (addr & writable)`.
/// `next_capability` and `next_extended_capability` are dword aligned.
#[derive(Clone, Debug)]
pub struct PciConfiguration {
    regs: Box<[u32]>,
    writable: Box<[u32]>,
    write_1_to_clear: Box<[u32]>,
    bars: [BarSlot; PCI_NUM_BARS],
    /// What the guest last wrote to each BAR register, before masking.
    bar_written: [u32; PCI_NUM_BARS],
    last_capability: Option<usize>,
    next_capability: usize,
    last_extended_capability: Option<usize>,
    next_extended_capability: usize,
}

/// Returns the bit mask covering `len` bytes at byte `offset` of a dword, or
/// `None` unless `1 <= len <= 4` bytes at `offset` stay inside the dword.
fn byte_mask(offset: u64, len: usize) -> Option<(u32, u32)> {
    if !(1..=4).contains(&len) || offset >= 4 || offset as usize + len > 4 {
        return None;
    }
    let shift = (offset * 8) as u32;
    let width = (len * 8) as u32;
    let mask = if width == 32 {
        u32::MAX
    } else {
        ((1u32 << width) - 1) << shift
    };
    Some((mask, shift))
}

/// Extracts the bytes `data.len()` bytes at byte `offset` of `value`, the
/// read half of an access of 1, 2 or 4 bytes to a dword register. Accesses
/// that straddle the dword read as all-ones.
pub fn read_dword_bytes(value: u32, offset: u64, data: &mut [u8]) {
    match byte_mask(offset, data.len()) {
        Some(_) => {
            let start = offset as usize;
            data.copy_from_slice(&value.to_le_bytes()[start..start + data.len()]);
        }
        None => data.fill(0xff),
    }
}

impl PciConfiguration {
    /// Creates the config space of a type 0 function with identity `ids`,
    /// no BARs and no capabilities.
    pub fn new(ids: &PciIds) -> Self {
        let mut config = Self {
            regs: vec![0; PCI_CONFIG_REGS].into_boxed_slice(),
            writable: vec![0; PCI_CONFIG_REGS].into_boxed_slice(),
            write_1_to_clear: vec![0; PCI_CONFIG_REGS].into_boxed_slice(),
            bars: [BarSlot::Unused; PCI_NUM_BARS],
            bar_written: [0; PCI_NUM_BARS],
            last_capability: None,
            next_capability: FIRST_CAPABILITY_OFFSET,
            last_extended_capability: None,
            next_extended_capability: FIRST_EXTENDED_CAPABILITY_OFFSET,
        };
        config.regs[0] = u32::from(ids.device_id) << 16 | u32::from(ids.vendor_id);
        config.regs[2] = u32::from(ids.class_code) << 24
            | u32::from(ids.subclass) << 16
            | u32::from(ids.prog_if) << 8
            | u32::from(ids.revision_id);
        // 0x0c: cache line size (RW), latency timer, header type 0, BIST: 0.
        config.writable[3] = 0xff;
        config.regs[11] = u32::from(ids.subsystem_id) << 16 | u32::from(ids.subsystem_vendor_id);
        config.writable[COMMAND_REG] = u32::from(COMMAND_WRITABLE);
        config.write_1_to_clear[COMMAND_REG] = u32::from(STATUS_WRITE_1_TO_CLEAR) << 16;
        // 0x3c: interrupt line (RW scratch for the OS); pin, min_gnt, max_lat RO.
        config.writable[INTERRUPT_LINE_OFFSET / 4] = 0xff;
        config
    }

    /// Reads dword register `reg_idx` (0..1024); registers past the config
    /// space read as all-ones.
    pub fn read_reg(&self, reg_idx: usize) -> u32 {
        self.regs.get(reg_idx).copied().unwrap_or(u32::MAX)
    }

    /// Applies a guest write of `data` (1, 2 or 4 bytes) at byte `offset`
    /// (0..4) of dword register `reg_idx`, honouring read-only and
    /// write-1-to-clear bits. Returns the BARs whose decoded address changed.
    ///
    /// Writes past the config space or straddling the dword are ignored.
    pub fn write_reg(&mut self, reg_idx: usize, offset: u64, data: &[u8]) -> Vec<BarReprogram> {
        let Some((mask, shift)) = byte_mask(offset, data.len()) else {
            log::debug!(
                "ignoring a {}-byte config write at byte {offset} of register {reg_idx}: \
                 accesses must be 1, 2 or 4 bytes inside one dword",
                data.len()
            );
            return Vec::new();
        };
        let (Some(&old), Some(&writable), Some(&w1c)) = (
            self.regs.get(reg_idx),
            self.writable.get(reg_idx),
            self.write_1_to_clear.get(reg_idx),
        ) else {
            log::debug!("ignoring a config write to register {reg_idx}, past the config space");
            return Vec::new();
        };
        let mut bytes = [0u8; 4];
        bytes[..data.len()].copy_from_slice(data);
        let value = u32::from_le_bytes(bytes) << shift;
        let writable = writable & mask;
        let mut new = (old & !writable) | (value & writable);
        new &= !(value & w1c & mask);
        self.regs[reg_idx] = new;

        if let Some(written) = reg_idx
            .checked_sub(BAR0_REG)
            .and_then(|i| self.bar_written.get_mut(i))
        {
            *written = (*written & !mask) | (value & mask);
            return self.update_bar_decoding();
        }
        if reg_idx == COMMAND_REG {
            return self.update_bar_decoding();
        }
        Vec::new()
    }

    /// Applies a guest write of `data` at byte `offset` of the config space;
    /// see [`PciConfiguration::write_reg`].
    pub fn write(&mut self, offset: usize, data: &[u8]) -> Vec<BarReprogram> {
        self.write_reg(offset / 4, (offset % 4) as u64, data)
    }

    /// Reads `data.len()` bytes at byte `offset`, any length and alignment;
    /// bytes past the config space read as 0xff.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i)
                .and_then(|o| self.regs.get(o / 4).map(|r| r.to_le_bytes()[o % 4]))
                .unwrap_or(0xff);
        }
    }

    /// Reads the byte at `offset` (0xff past the config space).
    pub fn read_u8(&self, offset: usize) -> u8 {
        let mut b = [0u8; 1];
        self.read(offset, &mut b);
        b[0]
    }

    /// Reads the little-endian word at `offset`.
    pub fn read_u16(&self, offset: usize) -> u16 {
        let mut b = [0u8; 2];
        self.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    /// Reads the little-endian dword at `offset`.
    pub fn read_u32(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Sets bytes as the device (not the guest): write masks do not apply
    /// and nothing is reported. For registers the device owns, such as the
    /// interrupt pin or the values a passthrough function mirrors.
    ///
    /// Refuses ranges that leave the config space or touch a BAR register,
    /// whose value must stay consistent with the BAR's declaration.
    pub fn set_bytes(&mut self, offset: usize, data: &[u8]) -> Result<(), PciConfigError> {
        let bars = BAR0_OFFSET..BAR0_OFFSET + 4 * PCI_NUM_BARS;
        let fits = offset.checked_add(data.len()).is_some_and(|end| {
            end <= PCI_EXTENDED_CONFIG_SPACE_SIZE && (offset >= bars.end || end <= bars.start)
        });
        if !fits {
            return Err(PciConfigError::SetRange {
                offset,
                len: data.len(),
            });
        }
        for (i, &b) in data.iter().enumerate() {
            self.set_byte(offset + i, b);
        }
        Ok(())
    }

    /// Sets the interrupt pin register (0 none, 1 INTA# .. 4 INTD#).
    pub fn set_interrupt_pin(&mut self, pin: u8) {
        self.set_byte(INTERRUPT_PIN_OFFSET, pin);
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.read_u16(COMMAND_OFFSET)
    }

    /// The status register.
    pub fn status(&self) -> u16 {
        self.read_u16(STATUS_OFFSET)
    }

    /// Declares a BAR at address 0. It decodes once the guest (or the VMM
    /// acting as firmware) programs an address and enables its address
    /// space in the command register.
    pub fn add_bar(&mut self, bar: PciBarConfig) -> Result<(), PciConfigError> {
        let index = bar.index;
        let slots = if bar.kind == PciBarKind::Memory64 {
            2
        } else {
            1
        };
        if index + slots > PCI_NUM_BARS {
            return Err(PciConfigError::BarIndex { index });
        }
        if let Some(used) = (index..index + slots).find(|&i| self.bars[i] != BarSlot::Unused) {
            return Err(PciConfigError::BarInUse { index: used });
        }
        let (min, max) = match bar.kind {
            PciBarKind::Io => (MIN_IO_BAR_SIZE, MAX_IO_BAR_SIZE),
            PciBarKind::Memory32 => (MIN_MEM_BAR_SIZE, MAX_MEM32_BAR_SIZE),
            PciBarKind::Memory64 => (MIN_MEM_BAR_SIZE, MAX_MEM64_BAR_SIZE),
        };
        if !bar.size.is_power_of_two() || bar.size < min || bar.size > max {
            return Err(PciConfigError::BarSize {
                kind: bar.kind,
                size: bar.size,
                min,
                max,
            });
        }
        let size_mask = !(bar.size - 1);
        let reg = BAR0_REG + index;
        match bar.kind {
            PciBarKind::Io => {
                self.regs[reg] = BAR_IO;
                self.writable[reg] = size_mask as u32 & BAR_IO_ADDR_MASK;
            }
            PciBarKind::Memory32 | PciBarKind::Memory64 => {
                let mut flags = 0;
                if bar.kind == PciBarKind::Memory64 {
                    flags |= BAR_MEM_64;
                    self.regs[reg + 1] = 0;
                    self.writable[reg + 1] = (size_mask >> 32) as u32;
                    self.bars[index + 1] = BarSlot::Upper;
                }
                if bar.prefetchable {
                    flags |= BAR_PREFETCHABLE;
                }
                self.regs[reg] = flags;
                self.writable[reg] = size_mask as u32 & BAR_MEM_ADDR_MASK;
            }
        }
        self.bars[index] = BarSlot::Bar {
            config: bar,
            decoded: None,
        };
        Ok(())
    }

    /// The BAR starting at slot `index`, or `None` if there is none.
    pub fn bar(&self, index: usize) -> Option<PciBar> {
        match self.bars.get(index)? {
            BarSlot::Bar { config, .. } => Some(PciBar {
                config: *config,
                addr: self.bar_addr(index, config.kind),
                decoded: self.bar_decode(index, config.kind),
            }),
            BarSlot::Unused | BarSlot::Upper => None,
        }
    }

    /// All declared BARs, in index order.
    pub fn bars(&self) -> Vec<PciBar> {
        (0..PCI_NUM_BARS).filter_map(|i| self.bar(i)).collect()
    }

    /// Adds a capability with ID `id` and `body` (the bytes after the ID and
    /// next-pointer bytes) to the end of the capability list, and returns
    /// the offset of its ID byte. `writable` is one mask byte per body byte
    /// (set bits are guest-writable) or empty for a read-only body.
    pub fn add_capability(
        &mut self,
        id: u8,
        body: &[u8],
        writable: &[u8],
    ) -> Result<usize, PciConfigError> {
        let len = body.len() + 2;
        let offset = self.place_capability(
            u16::from(id),
            len,
            body,
            writable,
            self.next_capability,
            PCI_CONFIG_SPACE_SIZE,
        )?;
        self.set_byte(offset, id);
        self.set_byte(offset + 1, 0);
        match self.last_capability {
            Some(last) => self.set_byte(last + 1, offset as u8),
            None => {
                self.set_byte(CAPABILITIES_POINTER_OFFSET, offset as u8);
                let status = self.status() | STATUS_CAPABILITIES_LIST;
                self.set_u16(STATUS_OFFSET, status);
            }
        }
        self.last_capability = Some(offset);
        self.next_capability = (offset + len).next_multiple_of(4);
        Ok(offset)
    }

    /// Adds a PCIe extended capability (header: 16-bit `id`, 4-bit
    /// `version`, next pointer) after the last one, starting at 0x100, and
    /// returns its offset. `body` and `writable` are as for
    /// [`PciConfiguration::add_capability`], after the 4-byte header.
    pub fn add_extended_capability(
        &mut self,
        id: u16,
        version: u8,
        body: &[u8],
        writable: &[u8],
    ) -> Result<usize, PciConfigError> {
        let len = body.len() + 4;
        let offset = self.place_capability(
            id,
            len,
            body,
            writable,
            self.next_extended_capability,
            PCI_EXTENDED_CONFIG_SPACE_SIZE,
        )?;
        self.set_u32(offset, u32::from(version & 0xf) << 16 | u32::from(id));
        if let Some(last) = self.last_extended_capability {
            let header = self.read_u32(last) & 0x000f_ffff;
            self.set_u32(last, header | (offset as u32) << 20);
        }
        self.last_extended_capability = Some(offset);
        self.next_extended_capability = (offset + len).next_multiple_of(4);
        Ok(offset)
    }

    /// Checks that a capability of `len` bytes fits at `offset` below
    /// `limit`, writes its body and write mask after its `len - body.len()`
    /// header bytes, and returns `offset`.
    fn place_capability(
        &mut self,
        id: u16,
        len: usize,
        body: &[u8],
        writable: &[u8],
        offset: usize,
        limit: usize,
    ) -> Result<usize, PciConfigError> {
        if !writable.is_empty() && writable.len() != body.len() {
            return Err(PciConfigError::CapabilityMask {
                id,
                body_len: body.len(),
                mask_len: writable.len(),
            });
        }
        let free = limit.saturating_sub(offset);
        if len > free {
            return Err(PciConfigError::CapabilitySpace {
                id,
                len,
                free,
                limit,
            });
        }
        let body_start = offset + len - body.len();
        for (i, &b) in body.iter().enumerate() {
            self.set_byte(body_start + i, b);
        }
        for (i, &m) in writable.iter().enumerate() {
            self.set_writable_byte(body_start + i, m);
        }
        Ok(offset)
    }

    /// Offsets of the capabilities in list order, as a guest walks them
    /// (stops at a loop or a pointer into the header).
    pub fn capabilities(&self) -> Vec<(u8, usize)> {
        let mut found = Vec::new();
        let mut ptr = usize::from(self.read_u8(CAPABILITIES_POINTER_OFFSET) & !3);
        while ptr >= FIRST_CAPABILITY_OFFSET && found.len() < 48 {
            found.push((self.read_u8(ptr), ptr));
            ptr = usize::from(self.read_u8(ptr + 1) & !3);
        }
        found
    }

    /// Sets one byte without masks. `offset` must be inside the config
    /// space; callers in this module guarantee it.
    fn set_byte(&mut self, offset: usize, value: u8) {
        if let Some(reg) = self.regs.get_mut(offset / 4) {
            let mut bytes = reg.to_le_bytes();
            bytes[offset % 4] = value;
            *reg = u32::from_le_bytes(bytes);
        }
    }

    /// Sets the write mask of one byte.
    fn set_writable_byte(&mut self, offset: usize, mask: u8) {
        if let Some(reg) = self.writable.get_mut(offset / 4) {
            let mut bytes = reg.to_le_bytes();
            bytes[offset % 4] = mask;
            *reg = u32::from_le_bytes(bytes);
        }
    }

    fn set_u16(&mut self, offset: usize, value: u16) {
        for (i, b) in value.to_le_bytes().into_iter().enumerate() {
            self.set_byte(offset + i, b);
        }
    }

    fn set_u32(&mut self, offset: usize, value: u32) {
        for (i, b) in value.to_le_bytes().into_iter().enumerate() {
            self.set_byte(offset + i, b);
        }
    }

    /// The address programmed in BAR `index` of kind `kind`.
    fn bar_addr(&self, index: usize, kind: PciBarKind) -> u64 {
        let reg = BAR0_REG + index;
        let low = u64::from(self.regs[reg] & self.writable[reg]);
        if kind == PciBarKind::Memory64 {
            low | u64::from(self.regs[reg + 1] & self.writable[reg + 1]) << 32
        } else {
            low
        }
    }

    /// Whether the guest is sizing BAR register `reg`: it last wrote
    /// all-ones there.
    fn sizing(&self, reg: usize) -> bool {
        self.bar_written[reg - BAR0_REG] == u32::MAX
    }

    /// Where BAR `index` decodes now, if anywhere.
    fn bar_decode(&self, index: usize, kind: PciBarKind) -> Option<u64> {
        let enable = match kind {
            PciBarKind::Io => COMMAND_IO_SPACE,
            PciBarKind::Memory32 | PciBarKind::Memory64 => COMMAND_MEMORY_SPACE,
        };
        let reg = BAR0_REG + index;
        let sizing = self.sizing(reg) || (kind == PciBarKind::Memory64 && self.sizing(reg + 1));
        if self.command() & enable == 0 || sizing {
            return None;
        }
        Some(self.bar_addr(index, kind))
    }

    /// Recomputes where every BAR decodes and reports the differences.
    fn update_bar_decoding(&mut self) -> Vec<BarReprogram> {
        let mut changes = Vec::new();
        for index in 0..PCI_NUM_BARS {
            let BarSlot::Bar { config, decoded } = self.bars[index] else {
                continue;
            };
            let new = self.bar_decode(index, config.kind);
            if new != decoded {
                changes.push(BarReprogram {
                    bar: index,
                    kind: config.kind,
                    size: config.size,
                    old: decoded,
                    new,
                });
                self.bars[index] = BarSlot::Bar {
                    config,
                    decoded: new,
                };
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests;
