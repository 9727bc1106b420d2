//! Stream table entries: decoding the guest's 64-byte STE and turning it into what the
//! host kernel accepts for a nested HWPT.
//!
//! The kernel (`arm_smmu_validate_vste`) refuses with `EIO` any STE that sets a field
//! outside V, Config, S1Fmt, S1ContextPtr, S1CDMax (word 0) and S1DSS, S1CIR, S1COR,
//! S1CSH, S1STALLD, EATS (word 1). Linux guests set others (SHCFG in bypass STEs, STRW,
//! MEV...) that mean nothing for a guest's stage 1, so they are masked off here; EATS
//! is dropped too as the guest SMMU has no ATS.

/// Word-0 fields a guest may set: V, Config, S1Fmt, S1ContextPtr (51:6), S1CDMax.
pub const STE0_NESTING_ALLOWED: u64 =
    1 | (0x7 << 1) | (0x3 << 4) | (((1u64 << 46) - 1) << 6) | (0x1f << 59);
/// Word-1 fields a guest may set, less EATS: S1DSS, S1CIR, S1COR, S1CSH, S1STALLD.
pub const STE1_NESTING_ALLOWED: u64 = 0x3 | (0x3 << 2) | (0x3 << 4) | (0x3 << 6) | (1 << 27);

/// Bytes of one STE.
pub const STE_SIZE: u64 = 64;

/// What an STE asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SteConfig {
    /// V = 0: transactions abort (and would raise C_BAD_STE).
    Invalid,
    /// Config = 0b100 with V = 1 set as abort (0b000).
    Abort,
    /// Config = 0b100: stage 1 bypassed.
    Bypass,
    /// Config = 0b101: stage-1 translation through the guest's CD table.
    S1Translate,
    /// Any other Config (stage 2 or reserved values): this SMMU has no stage 2 for the
    /// guest, so it is an illegal STE.
    Illegal(u8),
}

/// A guest STE (eight 64-bit words, CPU order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ste(pub [u64; 8]);

impl Ste {
    /// Decodes 64 little-endian bytes.
    pub fn from_bytes(b: &[u8; 64]) -> Ste {
        let mut w = [0u64; 8];
        for (i, word) in w.iter_mut().enumerate() {
            let mut le = [0u8; 8];
            le.copy_from_slice(&b[8 * i..8 * i + 8]);
            *word = u64::from_le_bytes(le);
        }
        Ste(w)
    }

    /// Its Config, as far as it matters here.
    pub fn config(&self) -> SteConfig {
        if self.0[0] & 1 == 0 {
            return SteConfig::Invalid;
        }
        match (self.0[0] >> 1) & 7 {
            0 => SteConfig::Abort,
            4 => SteConfig::Bypass,
            5 => SteConfig::S1Translate,
            other => SteConfig::Illegal(other as u8),
        }
    }

    /// The two words for `IOMMU_HWPT_DATA_ARM_SMMUV3`, with only the fields the kernel
    /// accepts; `None` for an illegal STE (the caller aborts the stream and reports
    /// C_BAD_STE). An invalid STE gives zeroes.
    pub fn nested_words(&self) -> Option<[u64; 2]> {
        match self.config() {
            SteConfig::Invalid => Some([0, 0]),
            SteConfig::Illegal(_) => None,
            SteConfig::Abort | SteConfig::Bypass => Some([self.0[0] & 0xf, 0]),
            SteConfig::S1Translate => Some([
                self.0[0] & STE0_NESTING_ALLOWED,
                self.0[1] & STE1_NESTING_ALLOWED,
            ]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_bypass_ste_loses_shcfg() {
        // arm_smmu_make_bypass_ste: V | Config=bypass, SHCFG=incoming in word 1.
        let ste = Ste([1 | (4 << 1), 1 << 44, 0, 0, 0, 0, 0, 0]);
        assert_eq!(ste.config(), SteConfig::Bypass);
        assert_eq!(ste.nested_words(), Some([9, 0]));
    }

    #[test]
    fn s1_ste_keeps_the_allowed_fields_only() {
        let cd_table = 0x4321_0000u64;
        let w0 = 1 | (5 << 1) | (1 << 4) | cd_table | (3 << 59) | (1 << 52);
        let w1 = 1 | (1 << 2) | (1 << 4) | (3 << 6) | (1 << 27) | (1 << 28) | (2 << 30) | (1 << 44);
        let ste = Ste([w0, w1, 0xdead, 0, 0, 0, 0, 0]);
        assert_eq!(ste.config(), SteConfig::S1Translate);
        let [n0, n1] = ste.nested_words().unwrap();
        assert_eq!(n0, w0 & !(1 << 52), "bit 52 is above S1ContextPtr");
        assert_eq!(
            n1,
            1 | (1 << 2) | (1 << 4) | (3 << 6) | (1 << 27),
            "EATS, STRW, SHCFG go"
        );
    }

    #[test]
    fn invalid_and_illegal() {
        assert_eq!(
            Ste([0xffff_fff0, 7, 0, 0, 0, 0, 0, 0]).nested_words(),
            Some([0, 0])
        );
        let s2 = Ste([1 | (6 << 1), 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(s2.config(), SteConfig::Illegal(6));
        assert_eq!(s2.nested_words(), None);
        let mut bytes = [0u8; 64];
        bytes[0] = 0x0b;
        bytes[8] = 0x01;
        assert_eq!(Ste::from_bytes(&bytes).0[..2], [0x0b, 1]);
    }
}
