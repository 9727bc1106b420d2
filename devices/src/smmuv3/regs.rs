//! The SMMUv3 register file layout (SMMUv3 architecture, chapter 6) and the guest's ID
//! registers, derived from the host SMMU's (`IOMMU_GET_HW_INFO`) with only what a VMM
//! may pass on.
//!
//! The guest sees a stage-1-only SMMU with AArch64 translation tables, a linear stream
//! table, no ATS/PRI/stall and no HTTU or BTM (the host's stage 1 runs the guest's tables,
//! but we do not forward the broadcast TLB or hardware dirty-bit machinery).

/// Bytes of MMIO: two 64 KiB pages (page 1 holds the event queue's PROD/CONS).
pub const MMIO_SIZE: u64 = 0x2_0000;

/// ID register 0.
pub const IDR0: u64 = 0x00;
/// ID register 1.
pub const IDR1: u64 = 0x04;
/// ID register 2.
pub const IDR2: u64 = 0x08;
/// ID register 3.
pub const IDR3: u64 = 0x0c;
/// ID register 4.
pub const IDR4: u64 = 0x10;
/// ID register 5.
pub const IDR5: u64 = 0x14;
/// Implementation ID.
pub const IIDR: u64 = 0x18;
/// Architecture version.
pub const AIDR: u64 = 0x1c;
/// Global control 0 (enables).
pub const CR0: u64 = 0x20;
/// CR0 acknowledge.
pub const CR0ACK: u64 = 0x24;
/// Table and queue memory attributes.
pub const CR1: u64 = 0x28;
/// Miscellaneous control.
pub const CR2: u64 = 0x2c;
/// Status.
pub const STATUSR: u64 = 0x40;
/// Global bypass attributes.
pub const GBPA: u64 = 0x44;
/// Interrupt enables.
pub const IRQ_CTRL: u64 = 0x50;
/// IRQ_CTRL acknowledge.
pub const IRQ_CTRLACK: u64 = 0x54;
/// Global errors (active where it differs from GERRORN).
pub const GERROR: u64 = 0x60;
/// Global error acknowledge.
pub const GERRORN: u64 = 0x64;
/// GERROR MSI address (64-bit), data, attributes.
pub const GERROR_IRQ_CFG0: u64 = 0x68;
/// Stream table base (64-bit).
pub const STRTAB_BASE: u64 = 0x80;
/// Stream table format and size.
pub const STRTAB_BASE_CFG: u64 = 0x88;
/// Command queue base (64-bit).
pub const CMDQ_BASE: u64 = 0x90;
/// Command queue producer index.
pub const CMDQ_PROD: u64 = 0x98;
/// Command queue consumer index (and error).
pub const CMDQ_CONS: u64 = 0x9c;
/// Event queue base (64-bit).
pub const EVENTQ_BASE: u64 = 0xa0;
/// Event queue MSI address (64-bit), data, attributes.
pub const EVENTQ_IRQ_CFG0: u64 = 0xb0;
/// Event queue producer index, in page 1.
pub const EVENTQ_PROD: u64 = 0x1_00a8;
/// Event queue consumer index, in page 1.
pub const EVENTQ_CONS: u64 = 0x1_00ac;

/// CR0.SMMUEN.
pub const CR0_SMMUEN: u32 = 1 << 0;
/// CR0.EVENTQEN.
pub const CR0_EVENTQEN: u32 = 1 << 2;
/// CR0.CMDQEN.
pub const CR0_CMDQEN: u32 = 1 << 3;
/// CR0 bits this SMMU implements (no PRI queue, no ATS check, no VMW).
pub const CR0_IMPLEMENTED: u32 = CR0_SMMUEN | CR0_EVENTQEN | CR0_CMDQEN;

/// GBPA.UPDATE: set by software to apply a change; we clear it at once.
pub const GBPA_UPDATE: u32 = 1 << 31;
/// GBPA.ABORT: with the SMMU disabled, abort transactions instead of bypassing.
pub const GBPA_ABORT: u32 = 1 << 20;

/// IRQ_CTRL.GERROR_IRQEN.
pub const IRQ_CTRL_GERROR_IRQEN: u32 = 1 << 0;
/// IRQ_CTRL.EVENTQ_IRQEN.
pub const IRQ_CTRL_EVENTQ_IRQEN: u32 = 1 << 2;

/// GERROR.CMDQ_ERR.
pub const GERROR_CMDQ_ERR: u32 = 1 << 0;
/// GERROR.EVTQ_ABT_ERR: the event queue could not be written.
pub const GERROR_EVTQ_ABT_ERR: u32 = 1 << 2;
/// GERROR bits this SMMU raises.
pub const GERROR_IMPLEMENTED: u32 = GERROR_CMDQ_ERR | GERROR_EVTQ_ABT_ERR;

/// StreamID bits the guest gets: one PCI bus (RID = devfn).
pub const GUEST_SID_BITS: u32 = 8;
/// log2 of the command queue entries offered (IDR1.CMDQS).
pub const GUEST_CMDQS: u32 = 12;
/// log2 of the event queue entries offered (IDR1.EVENTQS).
pub const GUEST_EVENTQS: u32 = 12;

/// What `IOMMU_GET_HW_INFO` says about the host SMMU (`struct iommu_hw_info_arm_smmuv3`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostSmmuInfo {
    /// IDR0..IDR5.
    pub idr: [u32; 6],
    /// IIDR.
    pub iidr: u32,
    /// AIDR.
    pub aidr: u32,
}

impl HostSmmuInfo {
    /// Decodes the driver data of `IOMMU_GET_HW_INFO` (flags, reserved, idr[6], iidr,
    /// aidr, little-endian u32s); `None` if it is too short.
    pub fn from_hw_info_data(data: &[u8]) -> Option<HostSmmuInfo> {
        let word = |i: usize| -> Option<u32> {
            Some(u32::from_le_bytes(
                data.get(4 * i..4 * i + 4)?.try_into().ok()?,
            ))
        };
        let mut idr = [0; 6];
        for (i, r) in idr.iter_mut().enumerate() {
            *r = word(2 + i)?;
        }
        Some(HostSmmuInfo {
            idr,
            iidr: word(8)?,
            aidr: word(9)?,
        })
    }

    /// Why the host SMMU cannot back a guest's stage 1, if it cannot.
    pub fn unsuitable(&self) -> Option<&'static str> {
        let idr0 = self.idr[0];
        if idr0 & IDR0_S1P == 0 {
            return Some("the host SMMU has no stage 1 (IDR0.S1P = 0)");
        }
        if idr0 & IDR0_S2P == 0 {
            return Some("the host SMMU has no stage 2 (IDR0.S2P = 0)");
        }
        if field(idr0, 2, 2) & 2 == 0 {
            return Some("the host SMMU has no AArch64 table format (IDR0.TTF)");
        }
        None
    }
}

const IDR0_S2P: u32 = 1 << 0;
const IDR0_S1P: u32 = 1 << 1;
const IDR0_COHACC: u32 = 1 << 4;
const IDR0_ASID16: u32 = 1 << 12;
const IDR0_MSI: u32 = 1 << 13;
const IDR0_CD2L: u32 = 1 << 19;

fn field(v: u32, shift: u32, width: u32) -> u32 {
    (v >> shift) & ((1 << width) - 1)
}

/// The guest's IDR0..IDR5 from the host's.
///
/// IDR0: S1P, TTF = AArch64, COHACC, ASID16, CD2L and TTENDIAN from the host; MSI (we
/// complete CMD_SYNC by writing guest memory, which Linux polls); STALL_MODEL = no stall,
/// TERM_MODEL = abort, a linear stream table; no S2P, HYP, ATS, PRI, BTM, HTTU, VMID16.
/// IDR1: our own queue sizes and StreamID width, the host's SSIDSIZE. IDR3: the host's
/// RIL (range TLBIs are forwarded as they are). IDR5: the host's OAS, granules and VAX.
pub fn guest_idr(host: &HostSmmuInfo) -> [u32; 6] {
    let h0 = host.idr[0];
    let idr0 = IDR0_S1P
        | (2 << 2)
        | (h0 & (IDR0_COHACC | IDR0_ASID16 | IDR0_CD2L))
        | IDR0_MSI
        | (field(h0, 21, 2) << 21)
        | (1 << 24)
        | (1 << 26);
    let ssidsize = field(host.idr[1], 6, 5);
    let idr1 = GUEST_SID_BITS | (ssidsize << 6) | (GUEST_EVENTQS << 16) | (GUEST_CMDQS << 21);
    let idr3 = host.idr[3] & (1 << 10);
    let idr5 = host.idr[5] & (0x7 | (0x7 << 4) | (0x3 << 10));
    [idr0, idr1, 0, idr3, 0, idr5]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU's SMMU in the aarch64 rig (see passthrough's model device).
    const RIG: [u32; 6] = [0x0c6c_303f | (1 << 24), 0x0278_0410, 0, 0x400, 0, 0x55];

    #[test]
    fn guest_idr_passes_on_only_what_a_vm_may_see() {
        let host = HostSmmuInfo {
            idr: [u32::MAX, u32::MAX, u32::MAX, u32::MAX, u32::MAX, u32::MAX],
            iidr: 0,
            aidr: 1,
        };
        let g = guest_idr(&host);
        assert_eq!(g[0] & IDR0_S2P, 0, "stage 1 only");
        assert_eq!(field(g[0], 2, 2), 2, "AArch64 tables only");
        assert_eq!(field(g[0], 27, 2), 0, "linear stream table");
        assert_eq!(field(g[0], 9, 2), 0, "no HYP, no ATS");
        assert_eq!(field(g[0], 5, 3), 0, "no BTM, no HTTU");
        assert_eq!(field(g[0], 16, 3), 0, "no PRI, VMW, VMID16");
        assert_eq!(field(g[0], 24, 2), 1, "no stall");
        assert_ne!(g[0] & IDR0_MSI, 0);
        assert_eq!(field(g[1], 0, 6), GUEST_SID_BITS);
        assert_eq!(field(g[1], 21, 5), GUEST_CMDQS);
        assert_eq!(
            field(g[1], 26, 6),
            0,
            "no preset tables or queues, no ECMDQ"
        );
        assert_eq!(g[2], 0);
        assert_eq!(g[3], 1 << 10, "RIL only");
        assert_eq!(g[4], 0);
        assert_eq!(g[5], 0x7 | (0x7 << 4) | (0x3 << 10));
    }

    #[test]
    fn hw_info_decodes_and_judges_the_host() {
        let mut data = vec![0u8; 8];
        for w in RIG.iter().chain(&[0x43b, 0]) {
            data.extend_from_slice(&w.to_le_bytes());
        }
        let info = HostSmmuInfo::from_hw_info_data(&data).unwrap();
        assert_eq!(info.idr, RIG);
        assert_eq!(info.iidr, 0x43b);
        assert_eq!(info.unsuitable(), None);
        assert!(HostSmmuInfo::from_hw_info_data(&data[..39]).is_none());
        let s1_only = HostSmmuInfo {
            idr: [IDR0_S1P | (2 << 2), 0, 0, 0, 0, 0],
            ..info
        };
        assert!(s1_only.unsuitable().unwrap().contains("S2P"));
    }
}
