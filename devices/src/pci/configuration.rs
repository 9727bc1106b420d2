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
mod tests {
    use super::*;

    fn ids() -> PciIds {
        PciIds {
            vendor_id: 0x1af4,
            device_id: 0x1041,
            revision_id: 1,
            prog_if: 0x02,
            subclass: 0x80,
            class_code: 0x02,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x1100,
        }
    }

    fn write32(c: &mut PciConfiguration, offset: usize, v: u32) -> Vec<BarReprogram> {
        c.write(offset, &v.to_le_bytes())
    }

    fn bar(index: usize, kind: PciBarKind, size: u64) -> PciBarConfig {
        PciBarConfig {
            index,
            kind,
            size,
            prefetchable: false,
        }
    }

    fn enable_memory(c: &mut PciConfiguration) -> Vec<BarReprogram> {
        c.write(COMMAND_OFFSET, &COMMAND_MEMORY_SPACE.to_le_bytes())
    }

    #[test]
    fn identity_registers() {
        let c = PciConfiguration::new(&ids());
        assert_eq!(c.read_reg(0), 0x1041_1af4);
        assert_eq!(c.read_reg(2), 0x0280_0201);
        assert_eq!(c.read_reg(3), 0, "header type 0, single function");
        assert_eq!(c.read_reg(11), 0x1100_1af4);
        assert_eq!(c.read_reg(PCI_CONFIG_REGS), u32::MAX);
        assert_eq!(c.read_reg(usize::MAX), u32::MAX);
    }

    #[test]
    fn read_only_registers_keep_their_value() {
        let mut c = PciConfiguration::new(&ids());
        for offset in [0x00, 0x08, 0x2c, 0x34] {
            let before = c.read_u32(offset);
            assert!(write32(&mut c, offset, 0xdead_beef).is_empty());
            assert_eq!(c.read_u32(offset), before, "offset {offset:#x}");
        }
        // Header type / BIST are read-only, cache line size is not.
        write32(&mut c, 0x0c, u32::MAX);
        assert_eq!(c.read_u32(0x0c), 0xff);
        // Interrupt line is writable, pin is not.
        c.set_interrupt_pin(1);
        write32(&mut c, INTERRUPT_LINE_OFFSET, 0xffff_ff0a);
        assert_eq!(c.read_u32(INTERRUPT_LINE_OFFSET), 0x010a);
    }

    #[test]
    fn command_mask_and_status_write_one_to_clear() {
        let mut c = PciConfiguration::new(&ids());
        write32(&mut c, COMMAND_OFFSET, 0xffff_ffff);
        assert_eq!(c.command(), COMMAND_WRITABLE);
        // Status bits are not guest-settable ...
        assert_eq!(c.status(), 0);
        // ... but the device sets them and the guest clears them with 1s.
        c.set_bytes(
            STATUS_OFFSET,
            &(0xf900u16 | STATUS_CAPABILITIES_LIST).to_le_bytes(),
        )
        .unwrap();
        c.write(STATUS_OFFSET, &STATUS_SIGNALED_SYSTEM_ERROR.to_le_bytes());
        assert_eq!(c.status(), 0xb900 | STATUS_CAPABILITIES_LIST);
        // A command-only write does not clear status bits.
        c.write(COMMAND_OFFSET, &0xffffu16.to_le_bytes());
        assert_eq!(c.status(), 0xb900 | STATUS_CAPABILITIES_LIST);
        // Writing all-ones clears them, except the read-only capability bit.
        write32(&mut c, COMMAND_OFFSET, u32::MAX);
        assert_eq!(c.status(), STATUS_CAPABILITIES_LIST);
    }

    #[test]
    fn sub_dword_writes_merge() {
        let mut c = PciConfiguration::new(&ids());
        c.write(INTERRUPT_LINE_OFFSET, &[0x0b]);
        c.write_reg(3, 0, &[0x10]);
        assert_eq!(c.read_u8(0x0c), 0x10);
        c.write_reg(1, 1, &[0x04]);
        assert_eq!(c.command(), COMMAND_INTX_DISABLE);
        c.write_reg(1, 0, &0x0006u16.to_le_bytes());
        assert_eq!(c.command(), 0x0006, "word write replaces both bytes");
        assert_eq!(c.read_u8(INTERRUPT_LINE_OFFSET), 0x0b);
    }

    #[test]
    fn bad_accesses_are_ignored() {
        let mut c = PciConfiguration::new(&ids());
        let before: Vec<u32> = (0..PCI_CONFIG_REGS).map(|i| c.read_reg(i)).collect();
        for (reg, offset, len) in [(1, 3, 2), (1, 2, 4), (1, 4, 1), (1, 0, 0), (1, 0, 8)] {
            assert!(c.write_reg(reg, offset, &vec![0xff; len]).is_empty());
        }
        assert!(c.write_reg(PCI_CONFIG_REGS, 0, &[0xff; 4]).is_empty());
        assert!(c.write_reg(usize::MAX, u64::MAX, &[0xff; 4]).is_empty());
        assert!(c.write(usize::MAX, &[0xff]).is_empty());
        let after: Vec<u32> = (0..PCI_CONFIG_REGS).map(|i| c.read_reg(i)).collect();
        assert_eq!(before, after);
        let mut b = [0u8; 4];
        c.read(PCI_EXTENDED_CONFIG_SPACE_SIZE - 2, &mut b);
        assert_eq!(b, [0, 0, 0xff, 0xff]);
        c.read(usize::MAX, &mut b);
        assert_eq!(b, [0xff; 4]);
        let mut b = [0u8; 2];
        read_dword_bytes(0x1234_5678, 3, &mut b);
        assert_eq!(b, [0xff, 0xff]);
        read_dword_bytes(0x1234_5678, 1, &mut b);
        assert_eq!(b, [0x56, 0x34]);
    }

    #[test]
    fn extended_space_reads_zero_without_capabilities() {
        let c = PciConfiguration::new(&ids());
        assert_eq!(c.read_u32(0x100), 0);
        assert_eq!(c.read_reg(PCI_CONFIG_REGS - 1), 0);
    }

    #[test]
    fn bar32_sizing_and_relocation() {
        let mut c = PciConfiguration::new(&ids());
        c.add_bar(PciBarConfig {
            prefetchable: true,
            ..bar(0, PciBarKind::Memory32, 0x4000)
        })
        .unwrap();
        assert_eq!(c.read_u32(BAR0_OFFSET), BAR_PREFETCHABLE);
        // Sizing: all-ones reads back the size mask and the flags.
        assert!(write32(&mut c, BAR0_OFFSET, u32::MAX).is_empty());
        assert_eq!(c.read_u32(BAR0_OFFSET), 0xffff_c008);
        // Program an address; low bits are read-only.
        assert!(write32(&mut c, BAR0_OFFSET, 0xc000_4fff).is_empty());
        assert_eq!(c.read_u32(BAR0_OFFSET), 0xc000_4008);
        assert_eq!(c.bar(0).unwrap().addr, 0xc000_4000);
        assert_eq!(c.bar(0).unwrap().decoded, None);
        // Enabling memory decode reports the BAR ...
        let changes = enable_memory(&mut c);
        assert_eq!(
            changes,
            vec![BarReprogram {
                bar: 0,
                kind: PciBarKind::Memory32,
                size: 0x4000,
                old: None,
                new: Some(0xc000_4000),
            }]
        );
        // ... relocating while decoding reports the move ...
        let changes = write32(&mut c, BAR0_OFFSET, 0xc001_0000);
        assert_eq!(changes[0].old, Some(0xc000_4000));
        assert_eq!(changes[0].new, Some(0xc001_0000));
        // ... writing the same address reports nothing ...
        assert!(write32(&mut c, BAR0_OFFSET, 0xc001_0000).is_empty());
        // ... sizing with decode on stops decoding, restoring resumes it.
        let changes = write32(&mut c, BAR0_OFFSET, u32::MAX);
        assert_eq!((changes[0].old, changes[0].new), (Some(0xc001_0000), None));
        let changes = write32(&mut c, BAR0_OFFSET, 0xc001_0000);
        assert_eq!((changes[0].old, changes[0].new), (None, Some(0xc001_0000)));
        // Disabling decode reports the BAR gone.
        let changes = c.write(COMMAND_OFFSET, &[0, 0]);
        assert_eq!((changes[0].old, changes[0].new), (Some(0xc001_0000), None));
    }

    #[test]
    fn bar64_sizing_and_relocation() {
        let mut c = PciConfiguration::new(&ids());
        c.add_bar(bar(2, PciBarKind::Memory64, 0x10_0000)).unwrap();
        assert_eq!(c.read_u32(0x18), BAR_MEM_64);
        write32(&mut c, 0x18, u32::MAX);
        write32(&mut c, 0x1c, u32::MAX);
        assert_eq!(c.read_u32(0x18), 0xfff0_0004);
        assert_eq!(c.read_u32(0x1c), 0xffff_ffff);
        // Linux restores low then high with decode on: no half address escapes.
        enable_memory(&mut c);
        assert!(write32(&mut c, 0x18, 0x0010_0000).is_empty());
        let changes = write32(&mut c, 0x1c, 0x40);
        assert_eq!(
            changes,
            vec![BarReprogram {
                bar: 2,
                kind: PciBarKind::Memory64,
                size: 0x10_0000,
                old: None,
                new: Some(0x40_0010_0000),
            }]
        );
        assert_eq!(c.bars().len(), 1);
        assert_eq!(c.bar(3), None, "upper half is not a BAR of its own");
        // A BAR larger than 4 GiB has a read-only low address field.
        let mut c = PciConfiguration::new(&ids());
        c.add_bar(bar(0, PciBarKind::Memory64, 1 << 33)).unwrap();
        write32(&mut c, BAR0_OFFSET, u32::MAX);
        write32(&mut c, 0x14, u32::MAX);
        assert_eq!(c.read_u32(BAR0_OFFSET), BAR_MEM_64);
        assert_eq!(c.read_u32(0x14), 0xffff_fffe);
        write32(&mut c, 0x14, 0x2);
        let changes = enable_memory(&mut c);
        assert_eq!(changes, vec![], "low dword still being sized");
        let changes = write32(&mut c, BAR0_OFFSET, 0);
        assert_eq!(changes[0].new, Some(1 << 33));
    }

    #[test]
    fn bar64_with_low_address_bits_all_set_is_not_sizing() {
        let mut c = PciConfiguration::new(&ids());
        c.add_bar(bar(0, PciBarKind::Memory64, 0x4000)).unwrap();
        enable_memory(&mut c);
        write32(&mut c, 0x14, 0x7f);
        let changes = write32(&mut c, BAR0_OFFSET, 0xffff_c004);
        assert_eq!(changes[0].new, Some(0x7f_ffff_c000));
        // Sizing word by word counts once every byte was written all-ones.
        c.write(BAR0_OFFSET, &[0xff, 0xff]);
        c.write(BAR0_OFFSET + 2, &[0xff, 0xff]);
        assert_eq!(c.bar(0).unwrap().decoded, None);
        assert_eq!(c.read_u32(BAR0_OFFSET), 0xffff_c004);
    }

    #[test]
    fn io_bar_sizing_and_decode() {
        let mut c = PciConfiguration::new(&ids());
        c.add_bar(bar(5, PciBarKind::Io, 0x20)).unwrap();
        write32(&mut c, 0x24, u32::MAX);
        assert_eq!(c.read_u32(0x24), 0x0000_ffe1);
        write32(&mut c, 0x24, 0xc040);
        assert!(
            enable_memory(&mut c).is_empty(),
            "memory enable does not decode I/O"
        );
        let changes = c.write(COMMAND_OFFSET, &[COMMAND_IO_SPACE as u8]);
        assert_eq!(changes[0].new, Some(0xc040));
    }

    #[test]
    fn unimplemented_bars_read_zero() {
        let mut c = PciConfiguration::new(&ids());
        for offset in (BAR0_OFFSET..BAR0_OFFSET + 24).step_by(4).chain([0x30]) {
            write32(&mut c, offset, u32::MAX);
            assert_eq!(c.read_u32(offset), 0, "offset {offset:#x}");
        }
    }

    #[test]
    fn add_bar_rejects_bad_declarations() {
        let mut c = PciConfiguration::new(&ids());
        assert_eq!(
            c.add_bar(bar(6, PciBarKind::Memory32, 0x1000)),
            Err(PciConfigError::BarIndex { index: 6 })
        );
        assert_eq!(
            c.add_bar(bar(5, PciBarKind::Memory64, 0x1000)),
            Err(PciConfigError::BarIndex { index: 5 })
        );
        for (kind, size) in [
            (PciBarKind::Memory32, 0x3000),
            (PciBarKind::Memory32, 8),
            (PciBarKind::Memory32, 1 << 32),
            (PciBarKind::Io, 0x200),
            (PciBarKind::Io, 2),
            (PciBarKind::Memory64, 0),
        ] {
            let err = c.add_bar(bar(0, kind, size)).unwrap_err();
            assert!(
                matches!(err, PciConfigError::BarSize { .. }),
                "{kind} {size}"
            );
            assert!(err.to_string().contains("power of two"));
        }
        c.add_bar(bar(1, PciBarKind::Memory64, 0x1000)).unwrap();
        assert_eq!(
            c.add_bar(bar(2, PciBarKind::Memory32, 0x1000)),
            Err(PciConfigError::BarInUse { index: 2 })
        );
        assert_eq!(
            c.add_bar(bar(0, PciBarKind::Memory64, 0x1000)),
            Err(PciConfigError::BarInUse { index: 1 })
        );
    }

    #[test]
    fn capability_list_walk() {
        let mut c = PciConfiguration::new(&ids());
        assert_eq!(c.status() & STATUS_CAPABILITIES_LIST, 0);
        assert!(c.capabilities().is_empty());
        let a = c.add_capability(0x09, &[1, 2, 3], &[]).unwrap();
        let b = c.add_capability(0x11, &[0; 10], &[0; 10]).unwrap();
        let d = c.add_capability(0x05, &[0; 12], &[]).unwrap();
        assert_eq!((a, b, d), (0x40, 0x48, 0x54));
        assert_ne!(c.status() & STATUS_CAPABILITIES_LIST, 0);
        assert_eq!(c.read_u8(CAPABILITIES_POINTER_OFFSET), 0x40);
        assert_eq!(c.read_u32(0x40), 0x0201_4809);
        assert_eq!(c.read_u16(0x54), 0x0005, "last capability ends the list");
        assert_eq!(
            c.capabilities(),
            vec![(0x09, 0x40), (0x11, 0x48), (0x05, 0x54)]
        );
    }

    #[test]
    fn capability_writable_bits() {
        let mut c = PciConfiguration::new(&ids());
        let cap = c
            .add_capability(0x11, &[0x07, 0x00, 0xaa], &[0x00, 0xc0, 0x00])
            .unwrap();
        write32(&mut c, cap, u32::MAX);
        assert_eq!(
            c.read_u32(cap),
            0xc007_0011,
            "ID, next and body RO bits stay"
        );
        assert_eq!(c.read_u8(cap + 4), 0xaa);
    }

    #[test]
    fn capability_space_runs_out() {
        let mut c = PciConfiguration::new(&ids());
        c.add_capability(0x09, &[0; 172], &[]).unwrap();
        let err = c.add_capability(0x09, &[0; 20], &[]).unwrap_err();
        assert_eq!(
            err,
            PciConfigError::CapabilitySpace {
                id: 9,
                len: 22,
                free: 16,
                limit: 0x100
            }
        );
        assert!(err.to_string().contains("only 16 bytes are left"));
        assert!(matches!(
            c.add_capability(0x09, &[0; 4], &[0; 3]),
            Err(PciConfigError::CapabilityMask { .. })
        ));
        c.add_capability(0x09, &[0; 14], &[]).unwrap();
    }

    #[test]
    fn extended_capability_list() {
        let mut c = PciConfiguration::new(&ids());
        let a = c.add_extended_capability(0x0001, 2, &[0; 8], &[]).unwrap();
        let b = c
            .add_extended_capability(0x000b, 1, &[0x55; 6], &[0xff; 6])
            .unwrap();
        assert_eq!((a, b), (0x100, 0x10c));
        assert_eq!(c.read_u32(0x100), 0x10c2_0001);
        assert_eq!(c.read_u32(0x10c), 0x0001_000b);
        write32(&mut c, 0x110, 0x1234_5678);
        assert_eq!(c.read_u32(0x110), 0x1234_5678);
        assert!(matches!(
            c.add_extended_capability(0x1, 1, &[0; 4000], &[]),
            Err(PciConfigError::CapabilitySpace { .. })
        ));
    }

    #[test]
    fn set_bytes_refuses_bars_and_out_of_range() {
        let mut c = PciConfiguration::new(&ids());
        assert!(c.set_bytes(0x0e, &[0x80, 0, 0]).is_err(), "touches BAR 0");
        assert!(c.set_bytes(0x27, &[0, 0]).is_err(), "touches BAR 5");
        assert!(c.set_bytes(0xfff, &[0, 0]).is_err());
        assert!(c.set_bytes(usize::MAX, &[0]).is_err());
        c.set_bytes(0x28, &[1, 2, 3, 4]).unwrap();
        assert_eq!(c.read_u32(0x28), 0x0403_0201);
    }
}
