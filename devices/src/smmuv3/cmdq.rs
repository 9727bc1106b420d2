//! Command queue entries: decoding the guest's 16-byte commands into what the emulated
//! SMMU does with them.
//!
//! Handled here (the VMM's business): CMD_SYNC, PREFETCH_CONFIG/ADDR (nothing to do),
//! CFGI_STE, CFGI_STE_RANGE and CFGI_ALL (re-read STEs from guest memory, install them
//! through the backend). Forwarded to the host (batched up to the next CMD_SYNC):
//! CFGI_CD, CFGI_CD_ALL, TLBI_NH_ALL/ASID/VA/VAA, TLBI_NSNH_ALL. Everything else (stage 2,
//! EL2/EL3 TLBIs, ATS, PRI, stall) is illegal on this SMMU: CERROR_ILL.

/// Bytes of one command.
pub const CMD_SIZE: u64 = 16;

/// CMDQ_CONS.ERR values.
pub mod cerror {
    /// No error.
    pub const NONE: u32 = 0;
    /// Illegal or unsupported command.
    pub const ILL: u32 = 1;
    /// The command could not be fetched.
    pub const ABT: u32 = 2;
}

/// Opcodes (CMD[7:0]).
pub mod op {
    /// PREFETCH_CONFIG.
    pub const PREFETCH_CONFIG: u8 = 0x01;
    /// PREFETCH_ADDR.
    pub const PREFETCH_ADDR: u8 = 0x02;
    /// CFGI_STE.
    pub const CFGI_STE: u8 = 0x03;
    /// CFGI_STE_RANGE (CFGI_ALL is RANGE = 31).
    pub const CFGI_STE_RANGE: u8 = 0x04;
    /// CFGI_CD.
    pub const CFGI_CD: u8 = 0x05;
    /// CFGI_CD_ALL.
    pub const CFGI_CD_ALL: u8 = 0x06;
    /// TLBI_NH_ALL.
    pub const TLBI_NH_ALL: u8 = 0x10;
    /// TLBI_NH_ASID.
    pub const TLBI_NH_ASID: u8 = 0x11;
    /// TLBI_NH_VA.
    pub const TLBI_NH_VA: u8 = 0x12;
    /// TLBI_NH_VAA.
    pub const TLBI_NH_VAA: u8 = 0x13;
    /// TLBI_NSNH_ALL.
    pub const TLBI_NSNH_ALL: u8 = 0x30;
    /// CMD_SYNC.
    pub const SYNC: u8 = 0x46;
}

/// How a CMD_SYNC signals completion (CS field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncCompletion {
    /// CS = 0: the guest polls CMDQ_CONS.
    None,
    /// CS = 1: write MSIDATA (32 bits) to MSIADDR; Linux points it at the CMD_SYNC entry
    /// itself and polls for its first word to become MSIDATA.
    Msi {
        /// Guest physical address.
        addr: u64,
        /// The 32-bit value.
        data: u32,
    },
    /// CS = 2: send an event (WFE wake-up); nothing to emulate.
    Sev,
}

/// A decoded command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// PREFETCH_*: a hint, nothing to do.
    Prefetch,
    /// Re-read the STEs of StreamIDs `first..=last`.
    CfgiSte {
        /// First StreamID.
        first: u32,
        /// Last StreamID.
        last: u32,
    },
    /// Forward to the host as it is.
    Forward([u64; 2]),
    /// CMD_SYNC.
    Sync(SyncCompletion),
    /// Not a command this SMMU knows (CERROR_ILL).
    Illegal,
}

/// Decodes one command.
pub fn decode(cmd: [u64; 2]) -> Command {
    let opcode = (cmd[0] & 0xff) as u8;
    let sid = (cmd[0] >> 32) as u32;
    match opcode {
        op::PREFETCH_CONFIG | op::PREFETCH_ADDR => Command::Prefetch,
        op::CFGI_STE => Command::CfgiSte {
            first: sid,
            last: sid,
        },
        op::CFGI_STE_RANGE => {
            // 2^(RANGE+1) StreamIDs from SID aligned down to that size; 31 is all.
            let range = (cmd[1] & 0x1f) as u32;
            if range >= 31 {
                Command::CfgiSte {
                    first: 0,
                    last: u32::MAX,
                }
            } else {
                let span = 2u64 << range;
                let first = u64::from(sid) & !(span - 1);
                let last = (first + span - 1).min(u64::from(u32::MAX));
                Command::CfgiSte {
                    first: first as u32,
                    last: last as u32,
                }
            }
        }
        op::CFGI_CD
        | op::CFGI_CD_ALL
        | op::TLBI_NH_ALL
        | op::TLBI_NH_ASID
        | op::TLBI_NH_VA
        | op::TLBI_NH_VAA
        | op::TLBI_NSNH_ALL => Command::Forward(cmd),
        op::SYNC => Command::Sync(match (cmd[0] >> 12) & 3 {
            1 => SyncCompletion::Msi {
                addr: cmd[1] & (((1 << 52) - 1) & !3),
                data: (cmd[0] >> 32) as u32,
            },
            2 => SyncCompletion::Sev,
            _ => SyncCompletion::None,
        }),
        _ => Command::Illegal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_linux_sends() {
        // arm_smmu_cmdq_build_sync_cmd with MSI polling: CS=IRQ, MSH, MSIATTR, the
        // entry's own address, data 0.
        let sync = [0x46 | (1 << 12) | (3 << 22) | (0xf << 24), 0x4000_0120];
        assert_eq!(
            decode(sync),
            Command::Sync(SyncCompletion::Msi {
                addr: 0x4000_0120,
                data: 0
            })
        );
        assert_eq!(
            decode([0x46 | (2 << 12), 0]),
            Command::Sync(SyncCompletion::Sev)
        );
        assert_eq!(
            decode([0x03 | (0x18 << 32), 1]),
            Command::CfgiSte {
                first: 0x18,
                last: 0x18
            }
        );
        // CFGI_ALL.
        assert_eq!(
            decode([0x04, 31]),
            Command::CfgiSte {
                first: 0,
                last: u32::MAX
            }
        );
        assert_eq!(
            decode([0x04 | (0x13 << 32), 1]),
            Command::CfgiSte {
                first: 0x10,
                last: 0x13
            }
        );
        let tlbi = [0x11 | (5 << 48), 0];
        assert_eq!(decode(tlbi), Command::Forward(tlbi));
        assert_eq!(decode([0x01, 0]), Command::Prefetch);
        for illegal in [0x28u64, 0x2a, 0x20, 0x40, 0x41, 0x44, 0x00, 0xff] {
            assert_eq!(decode([illegal, 0]), Command::Illegal, "{illegal:#x}");
        }
    }
}
