//! The guest's linear stream table: STRTAB_BASE and STRTAB_BASE_CFG say where it is and
//! how many STEs it has; the STE of a StreamID is read from guest memory.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::eventq;
use super::ste::{Ste, STE_SIZE};

/// STRTAB_BASE.ADDR (bits 51:6).
const BASE_ADDR_MASK: u64 = ((1 << 52) - 1) & !0x3f;

/// Why an STE could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum StreamTableError {
    /// The StreamID is beyond the table (C_BAD_STREAMID).
    #[error("StreamID {sid:#x} is beyond the stream table's {entries} entries")]
    BeyondTable {
        /// The StreamID.
        sid: u32,
        /// The table's size.
        entries: u64,
    },
    /// The guest asked for a 2-level table, which this SMMU does not offer.
    #[error("the stream table is 2-level (STRTAB_BASE_CFG.FMT = 1) but IDR0 offers linear only")]
    TwoLevel,
    /// The STE is not in guest RAM (F_STE_FETCH).
    #[error("the STE at {addr:#x} is outside guest RAM")]
    Fetch {
        /// Its address.
        addr: u64,
    },
}

impl StreamTableError {
    /// The event record the SMMU reports for it.
    pub fn event(&self, sid: u32) -> [u64; 4] {
        match self {
            StreamTableError::BeyondTable { .. } => eventq::record(eventq::C_BAD_STREAMID, sid),
            StreamTableError::TwoLevel => eventq::record(eventq::C_BAD_STE, sid),
            StreamTableError::Fetch { addr } => eventq::ste_fetch(sid, *addr),
        }
    }
}

/// Where the table is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamTable {
    /// Guest physical address of STE 0.
    pub base: u64,
    /// log2 of the entries (STRTAB_BASE_CFG.LOG2SIZE, at most the guest's SIDSIZE).
    pub log2size: u32,
    /// STRTAB_BASE_CFG.FMT is 2-level.
    pub two_level: bool,
}

impl StreamTable {
    /// From the register values.
    pub fn from_regs(base: u64, cfg: u32) -> StreamTable {
        StreamTable {
            base: base & BASE_ADDR_MASK,
            log2size: (cfg & 0x3f).min(super::regs::GUEST_SID_BITS),
            two_level: (cfg >> 16) & 3 == 1,
        }
    }

    /// The STE of `sid`.
    pub fn read<M: GuestMemory>(&self, mem: &M, sid: u32) -> Result<Ste, StreamTableError> {
        if self.two_level {
            return Err(StreamTableError::TwoLevel);
        }
        let entries = 1u64 << self.log2size;
        if u64::from(sid) >= entries {
            return Err(StreamTableError::BeyondTable { sid, entries });
        }
        let addr = self.base + u64::from(sid) * STE_SIZE;
        let mut bytes = [0u8; 64];
        mem.read_slice(&mut bytes, GuestAddress(addr))
            .map_err(|_| StreamTableError::Fetch { addr })?;
        Ok(Ste::from_bytes(&bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn reads_by_streamid_and_refuses_outside() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0x1000), 0x10000)]).unwrap();
        mem.write_obj(0x0bu64, GuestAddress(0x2000 + 3 * 64))
            .unwrap();
        let t = StreamTable::from_regs(0x2000 | (1 << 62), 4);
        assert_eq!(t.read(&mem, 3).unwrap().0[0], 0x0b);
        assert_eq!(
            t.read(&mem, 16),
            Err(StreamTableError::BeyondTable {
                sid: 16,
                entries: 16
            })
        );
        let far = StreamTable::from_regs(0x10_0000, 4);
        let err = far.read(&mem, 1).unwrap_err();
        assert_eq!(err, StreamTableError::Fetch { addr: 0x10_0040 });
        assert_eq!(err.event(1)[0] & 0xff, u64::from(eventq::F_STE_FETCH));
        let two = StreamTable::from_regs(0x2000, 4 | (1 << 16));
        assert_eq!(two.read(&mem, 0), Err(StreamTableError::TwoLevel));
        assert_eq!(
            StreamTable::from_regs(0, 40).log2size,
            8,
            "clamped to SIDSIZE"
        );
    }
}
