//! The MSI-X capability of a PCI function: message control, the vector
//! table and the pending bit array (PBA), with the spec's masking rules.
//!
//! [`MsixConfig`] is the state machine; it reports to an
//! [`MsiInterruptGroup`] whenever the route of a vector must change, and
//! injects through it:
//!
//! * A vector is *masked* if MSI-X is disabled, the function mask is set or
//!   the vector's own mask bit is set. The group is told `(message, masked)`
//!   whenever the masked state flips, and whenever the message of an
//!   unmasked vector changes. Messages written while a vector is masked are
//!   reported when it is unmasked, so the usual "mask, rewrite, unmask"
//!   sequence costs one route update.
//! * [`MsixConfig::trigger`] delivers only if MSI-X is enabled and the vector
//!   is not masked; if it is masked its pending bit is set instead, and
//!   unmasking (vector or function) delivers it and clears the bit. With
//!   MSI-X disabled the event is dropped, as the function may not use MSI-X.
//! * The PBA is read-only to the guest. Table and PBA take aligned dword and
//!   qword accesses (PCI 3.0 §6.8.2); anything else reads as all-ones and is
//!   ignored on write, whatever the offset.
//!
//! The same type serves emulated devices and passthrough functions (whose
//! table and PBA the VMM traps). It does no locking; a device that triggers
//! from another thread wraps it in a `Mutex`.
//!
//! What this module does not do: plain MSI (capability 0x05) and INTx.

use std::sync::Arc;

use super::configuration::{PciConfigError, PciConfiguration};
use super::interrupt::{InterruptError, MsiInterruptGroup, MsiMessage};

/// Capability ID of MSI-X.
pub const PCI_CAP_ID_MSIX: u8 = 0x11;
/// Bytes per MSI-X table entry.
pub const MSIX_TABLE_ENTRY_SIZE: u64 = 16;
/// Largest number of vectors a function can have.
pub const MSIX_MAX_VECTORS: u16 = 2048;
/// Length of the capability body (after the ID and next-pointer bytes).
pub const MSIX_CAPABILITY_BODY_LEN: usize = 10;

/// Message control: MSI-X enable.
const CONTROL_ENABLE: u16 = 1 << 15;
/// Message control: function mask.
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control: the vector is masked.
const VECTOR_MASKED: u32 = 1;
/// Highest BAR indicator (BIR) a type 0 function has.
const MAX_BIR: u8 = 5;

/// Errors of the MSI-X model.
#[derive(Debug, thiserror::Error)]
pub enum MsixError {
    /// Zero vectors or more than the spec allows.
    #[error("an MSI-X table of {vectors} vectors is not possible: use 1 to 2048 vectors")]
    VectorCount {
        /// Requested vectors.
        vectors: u16,
    },
    /// A BAR indicator past BAR 5.
    #[error("the MSI-X {what} is in BAR {bir}, which does not exist: use BAR 0 to 5")]
    Bir {
        /// "table" or "PBA".
        what: &'static str,
        /// Requested BAR.
        bir: u8,
    },
    /// An offset that is not 8-byte aligned (its low bits hold the BIR).
    #[error(
        "the MSI-X {what} offset {offset:#x} is not 8-byte aligned: the low 3 bits of the \
         offset register hold the BAR indicator, align the {what}"
    )]
    Alignment {
        /// "table" or "PBA".
        what: &'static str,
        /// Requested offset.
        offset: u32,
    },
    /// Table and PBA overlap in the same BAR.
    #[error(
        "the MSI-X table [{table_offset:#x}, +{table_len:#x}) and PBA [{pba_offset:#x}, \
         +{pba_len:#x}) overlap in BAR {bar}: move the PBA after the table"
    )]
    Overlap {
        /// The BAR holding both.
        bar: u8,
        /// Table offset.
        table_offset: u32,
        /// Table length.
        table_len: u64,
        /// PBA offset.
        pba_offset: u32,
        /// PBA length.
        pba_len: u64,
    },
    /// The device triggered a vector past its table.
    #[error(
        "MSI-X vector {vector} does not exist: the table has {count} vectors; this is a \
         device model bug"
    )]
    NoSuchVector {
        /// Requested vector.
        vector: u16,
        /// Table size.
        count: u16,
    },
    /// The interrupt backend failed.
    #[error(transparent)]
    Interrupt(#[from] InterruptError),
}

/// Where a function's MSI-X table and PBA live, and how many vectors it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixLayout {
    /// Number of vectors (table entries), 1..=2048.
    pub vectors: u16,
    /// BAR holding the table.
    pub table_bar: u8,
    /// Offset of the table in its BAR, 8-byte aligned.
    pub table_offset: u32,
    /// BAR holding the PBA.
    pub pba_bar: u8,
    /// Offset of the PBA in its BAR, 8-byte aligned.
    pub pba_offset: u32,
}

impl MsixLayout {
    /// Bytes of the table.
    pub fn table_len(&self) -> u64 {
        u64::from(self.vectors) * MSIX_TABLE_ENTRY_SIZE
    }

    /// Bytes of the PBA: one bit per vector, in whole qwords.
    pub fn pba_len(&self) -> u64 {
        u64::from(self.vectors).div_ceil(64) * 8
    }
}

/// What [`MsixConfig::trigger`] did with an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsixDelivery {
    /// Injected now.
    Delivered,
    /// The vector (or function) is masked: its pending bit is set.
    Pending,
    /// MSI-X is disabled: the event was dropped.
    Disabled,
}

/// One table entry, as the guest wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MsixEntry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    control: u32,
}

impl Default for MsixEntry {
    /// Every vector is masked at reset (PCI 3.0 §6.8.2.9).
    fn default() -> Self {
        Self {
            addr_lo: 0,
            addr_hi: 0,
            data: 0,
            control: VECTOR_MASKED,
        }
    }
}

impl MsixEntry {
    fn message(&self) -> MsiMessage {
        MsiMessage {
            address: u64::from(self.addr_hi) << 32 | u64::from(self.addr_lo),
            data: self.data,
        }
    }

    fn masked(&self) -> bool {
        self.control & VECTOR_MASKED != 0
    }
}

/// The MSI-X state of one function.
///
/// Invariants: `table` and `reported` have `layout.vectors` entries, `pba`
/// has one bit per vector; `reported[i]` is the last `(message, masked)`
/// the group accepted for vector `i` (initially masked, as the group's
/// contract says).
pub struct MsixConfig {
    layout: MsixLayout,
    table: Vec<MsixEntry>,
    pba: Vec<u64>,
    enabled: bool,
    function_masked: bool,
    reported: Vec<(MsiMessage, bool)>,
    capability_offset: Option<usize>,
    interrupt: Arc<dyn MsiInterruptGroup>,
}

impl std::fmt::Debug for MsixConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsixConfig")
            .field("layout", &self.layout)
            .field("enabled", &self.enabled)
            .field("function_masked", &self.function_masked)
            .finish_non_exhaustive()
    }
}

impl MsixConfig {
    /// Creates the MSI-X state for `layout`, all vectors masked and MSI-X
    /// disabled, routing through `interrupt`.
    pub fn new(
        layout: MsixLayout,
        interrupt: Arc<dyn MsiInterruptGroup>,
    ) -> Result<Self, MsixError> {
        if layout.vectors == 0 || layout.vectors > MSIX_MAX_VECTORS {
            return Err(MsixError::VectorCount {
                vectors: layout.vectors,
            });
        }
        for (what, bir, offset) in [
            ("table", layout.table_bar, layout.table_offset),
            ("PBA", layout.pba_bar, layout.pba_offset),
        ] {
            if bir > MAX_BIR {
                return Err(MsixError::Bir { what, bir });
            }
            if offset % 8 != 0 {
                return Err(MsixError::Alignment { what, offset });
            }
        }
        let table =
            u64::from(layout.table_offset)..u64::from(layout.table_offset) + layout.table_len();
        let pba = u64::from(layout.pba_offset)..u64::from(layout.pba_offset) + layout.pba_len();
        if layout.table_bar == layout.pba_bar && table.start < pba.end && pba.start < table.end {
            return Err(MsixError::Overlap {
                bar: layout.table_bar,
                table_offset: layout.table_offset,
                table_len: layout.table_len(),
                pba_offset: layout.pba_offset,
                pba_len: layout.pba_len(),
            });
        }
        let vectors = usize::from(layout.vectors);
        Ok(Self {
            layout,
            table: vec![MsixEntry::default(); vectors],
            pba: vec![0; vectors.div_ceil(64)],
            enabled: false,
            function_masked: false,
            reported: vec![(MsiMessage::default(), true); vectors],
            capability_offset: None,
            interrupt,
        })
    }

    /// Where the table and PBA are.
    pub fn layout(&self) -> MsixLayout {
        self.layout
    }

    /// The interrupt group the vectors route through.
    pub fn interrupt(&self) -> &Arc<dyn MsiInterruptGroup> {
        &self.interrupt
    }

    /// The capability body: message control, table offset/BIR, PBA
    /// offset/BIR.
    pub fn capability_body(&self) -> [u8; MSIX_CAPABILITY_BODY_LEN] {
        let mut body = [0u8; MSIX_CAPABILITY_BODY_LEN];
        body[0..2].copy_from_slice(&self.message_control().to_le_bytes());
        let table = self.layout.table_offset | u32::from(self.layout.table_bar);
        let pba = self.layout.pba_offset | u32::from(self.layout.pba_bar);
        body[2..6].copy_from_slice(&table.to_le_bytes());
        body[6..10].copy_from_slice(&pba.to_le_bytes());
        body
    }

    /// Which capability bits the guest may write: enable and function mask.
    pub fn capability_writable() -> [u8; MSIX_CAPABILITY_BODY_LEN] {
        let mut mask = [0u8; MSIX_CAPABILITY_BODY_LEN];
        mask[0..2].copy_from_slice(&(CONTROL_ENABLE | CONTROL_FUNCTION_MASK).to_le_bytes());
        mask
    }

    /// Appends the capability to `config`'s list and remembers where, for
    /// [`MsixConfig::config_written`]. Returns the capability offset.
    pub fn add_capability(
        &mut self,
        config: &mut PciConfiguration,
    ) -> Result<usize, PciConfigError> {
        let offset = config.add_capability(
            PCI_CAP_ID_MSIX,
            &self.capability_body(),
            &Self::capability_writable(),
        )?;
        self.capability_offset = Some(offset);
        Ok(offset)
    }

    /// Offset of the capability in config space, once added.
    pub fn capability_offset(&self) -> Option<usize> {
        self.capability_offset
    }

    /// Call after every guest write to `config` (dword `reg_idx`): if it hit
    /// message control, applies the new enable and function-mask bits.
    pub fn config_written(&mut self, config: &PciConfiguration, reg_idx: usize) {
        if let Some(offset) = self.capability_offset {
            // Capabilities are dword aligned: message control is the upper
            // half of the capability's first dword.
            if reg_idx == offset / 4 {
                self.set_message_control(config.read_u16(offset + 2));
            }
        }
    }

    /// The message control register: table size, function mask, enable.
    pub fn message_control(&self) -> u16 {
        let mut control = self.layout.vectors - 1;
        if self.function_masked {
            control |= CONTROL_FUNCTION_MASK;
        }
        if self.enabled {
            control |= CONTROL_ENABLE;
        }
        control
    }

    /// Applies the enable and function-mask bits of `control` (other bits
    /// are read-only and ignored): updates routes whose masked state flips
    /// and delivers pending vectors that become unmasked.
    pub fn set_message_control(&mut self, control: u16) {
        let enabled = control & CONTROL_ENABLE != 0;
        let function_masked = control & CONTROL_FUNCTION_MASK != 0;
        if (enabled, function_masked) == (self.enabled, self.function_masked) {
            return;
        }
        self.enabled = enabled;
        self.function_masked = function_masked;
        for index in 0..self.table.len() {
            self.vector_changed(index);
        }
    }

    /// Whether MSI-X is enabled.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether the function mask is set.
    pub fn function_masked(&self) -> bool {
        self.function_masked
    }

    /// Whether `vector` cannot be delivered now (MSI-X disabled, function
    /// or vector masked); `true` for vectors past the table.
    pub fn masked(&self, vector: u16) -> bool {
        self.table
            .get(usize::from(vector))
            .is_none_or(|e| !self.enabled || self.function_masked || e.masked())
    }

    /// The message programmed for `vector`.
    pub fn message(&self, vector: u16) -> Option<MsiMessage> {
        self.table.get(usize::from(vector)).map(MsixEntry::message)
    }

    /// Whether `vector`'s pending bit is set.
    pub fn pending(&self, vector: u16) -> bool {
        let index = usize::from(vector);
        self.pba
            .get(index / 64)
            .is_some_and(|q| q & (1 << (index % 64)) != 0)
    }

    /// Signals `vector`: delivers it, or sets its pending bit if it is
    /// masked, or drops it if MSI-X is disabled. A passthrough function
    /// calls this when the host signals a vector the guest has masked.
    pub fn trigger(&mut self, vector: u16) -> Result<MsixDelivery, MsixError> {
        let index = usize::from(vector);
        if index >= self.table.len() {
            return Err(MsixError::NoSuchVector {
                vector,
                count: self.layout.vectors,
            });
        }
        if !self.enabled {
            return Ok(MsixDelivery::Disabled);
        }
        if self.masked(vector) {
            self.pba[index / 64] |= 1 << (index % 64);
            return Ok(MsixDelivery::Pending);
        }
        self.interrupt.trigger(vector)?;
        Ok(MsixDelivery::Delivered)
    }

    /// Handles a guest read at `offset` of BAR `bar` if it falls in the
    /// table or the PBA, and returns whether it did.
    pub fn bar_read(&self, bar: usize, offset: u64, data: &mut [u8]) -> bool {
        if let Some(rel) = self.table_offset_in(bar, offset) {
            self.table_read(rel, data);
        } else if let Some(rel) = self.pba_offset_in(bar, offset) {
            self.pba_read(rel, data);
        } else {
            return false;
        }
        true
    }

    /// Handles a guest write at `offset` of BAR `bar` if it falls in the
    /// table or the PBA, and returns whether it did.
    pub fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) -> bool {
        if let Some(rel) = self.table_offset_in(bar, offset) {
            self.table_write(rel, data);
        } else if let Some(rel) = self.pba_offset_in(bar, offset) {
            self.pba_write(rel, data);
        } else {
            return false;
        }
        true
    }

    /// Offset into the table of BAR offset `offset`, if it is inside it.
    fn table_offset_in(&self, bar: usize, offset: u64) -> Option<u64> {
        let rel = offset.checked_sub(u64::from(self.layout.table_offset))?;
        (bar == usize::from(self.layout.table_bar) && rel < self.layout.table_len()).then_some(rel)
    }

    /// Offset into the PBA of BAR offset `offset`, if it is inside it.
    fn pba_offset_in(&self, bar: usize, offset: u64) -> Option<u64> {
        let rel = offset.checked_sub(u64::from(self.layout.pba_offset))?;
        (bar == usize::from(self.layout.pba_bar) && rel < self.layout.pba_len()).then_some(rel)
    }

    /// Reads the table at `offset` from its start.
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        if !aligned_dword_or_qword(offset, data.len()) {
            log::debug!(
                "MSI-X table read of {} bytes at {offset:#x} is not an aligned dword or qword: \
                 reading all-ones",
                data.len()
            );
            data.fill(0xff);
            return;
        }
        for (i, chunk) in data.chunks_exact_mut(4).enumerate() {
            let value = self.table_dword(offset + 4 * i as u64);
            chunk.copy_from_slice(&value.to_le_bytes());
        }
    }

    /// Writes the table at `offset` from its start, and updates the route
    /// of the vector written (once, for a qword).
    pub fn table_write(&mut self, offset: u64, data: &[u8]) {
        let index = usize::try_from(offset / MSIX_TABLE_ENTRY_SIZE).unwrap_or(usize::MAX);
        if !aligned_dword_or_qword(offset, data.len()) || index >= self.table.len() {
            log::debug!(
                "ignoring MSI-X table write of {} bytes at {offset:#x}: only aligned dwords and \
                 qwords inside the {}-entry table are allowed",
                data.len(),
                self.table.len()
            );
            return;
        }
        let entry = &mut self.table[index];
        for (i, chunk) in data.chunks_exact(4).enumerate() {
            let mut bytes = [0u8; 4];
            bytes.copy_from_slice(chunk);
            let value = u32::from_le_bytes(bytes);
            match (offset + 4 * i as u64) % MSIX_TABLE_ENTRY_SIZE {
                // The two low address bits are reserved: dword-aligned messages.
                0 => entry.addr_lo = value & !0x3,
                4 => entry.addr_hi = value,
                8 => entry.data = value,
                _ => entry.control = value & VECTOR_MASKED,
            }
        }
        self.vector_changed(index);
    }

    /// Reads the PBA at `offset` from its start.
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        if !aligned_dword_or_qword(offset, data.len()) {
            log::debug!(
                "MSI-X PBA read of {} bytes at {offset:#x} is not an aligned dword or qword: \
                 reading all-ones",
                data.len()
            );
            data.fill(0xff);
            return;
        }
        for (i, chunk) in data.chunks_exact_mut(4).enumerate() {
            let dword = offset / 4 + i as u64;
            let value = usize::try_from(dword / 2)
                .ok()
                .and_then(|q| self.pba.get(q))
                .map_or(u32::MAX, |q| (q >> (32 * (dword % 2))) as u32);
            chunk.copy_from_slice(&value.to_le_bytes());
        }
    }

    /// Guest writes to the PBA are ignored: it is read-only.
    pub fn pba_write(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "ignoring a {}-byte guest write at {offset:#x} of the MSI-X PBA: the PBA is read-only",
            data.len()
        );
    }

    /// The table dword at `offset`, all-ones past the table.
    fn table_dword(&self, offset: u64) -> u32 {
        let index = usize::try_from(offset / MSIX_TABLE_ENTRY_SIZE).unwrap_or(usize::MAX);
        let Some(entry) = self.table.get(index) else {
            return u32::MAX;
        };
        match offset % MSIX_TABLE_ENTRY_SIZE {
            0 => entry.addr_lo,
            4 => entry.addr_hi,
            8 => entry.data,
            _ => entry.control,
        }
    }

    /// Brings the group and the pending bit of vector `index` up to date
    /// after its entry, the enable bit or the function mask changed.
    fn vector_changed(&mut self, index: usize) {
        let vector = index as u16;
        let msg = self.table[index].message();
        let masked = self.masked(vector);
        let (last_msg, last_masked) = self.reported[index];
        if masked != last_masked || (!masked && msg != last_msg) {
            match self.interrupt.update(vector, msg, masked) {
                Ok(()) => self.reported[index] = (msg, masked),
                // Not recorded as reported: the next change retries.
                Err(e) => log::warn!("MSI-X vector {vector}: {e}"),
            }
        }
        if !masked && self.pending(vector) {
            self.pba[index / 64] &= !(1 << (index % 64));
            if let Err(e) = self.interrupt.trigger(vector) {
                log::warn!("MSI-X vector {vector} was pending and is now unmasked: {e}");
            }
        }
    }
}

/// Whether an access of `len` bytes at `offset` is an aligned dword or
/// qword, the only accesses the spec defines for the table and the PBA.
fn aligned_dword_or_qword(offset: u64, len: usize) -> bool {
    matches!(len, 4 | 8) && offset & (len as u64 - 1) == 0
}

#[cfg(test)]
mod tests;
