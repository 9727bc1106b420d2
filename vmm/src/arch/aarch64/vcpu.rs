//! aarch64 vCPU setup: `KVM_ARM_VCPU_INIT` with in-kernel PSCI, the boot registers, and the
//! MPIDR the device tree names each vCPU by.
//!
//! vCPU 0 starts at the kernel entry; the others start powered off and are started by the
//! guest through PSCI `CPU_ON`, which KVM handles in the kernel (feature `PSCI_0_2`, which
//! gives the newest PSCI version KVM implements). PSCI `SYSTEM_OFF` / `SYSTEM_RESET` leave
//! `KVM_RUN` as `KVM_EXIT_SYSTEM_EVENT`, which the generic vCPU loop turns into the VM's end.
//!
//! What this module does not do: no PMU, SVE or pointer-authentication features are asked
//! for; the guest sees them absent.

use kvm_bindings::{
    kvm_regs, kvm_vcpu_init, user_pt_regs, PSR_MODE_EL1h, KVM_ARM_VCPU_POWER_OFF,
    KVM_ARM_VCPU_PSCI_0_2, KVM_REG_ARM64, KVM_REG_ARM64_SYSREG, KVM_REG_ARM_CORE, KVM_REG_SIZE_U64,
    PSR_A_BIT, PSR_D_BIT, PSR_F_BIT, PSR_I_BIT,
};
use kvm_ioctls::{VcpuFd, VmFd};
use vm_memory::GuestAddress;

/// Errors setting up an aarch64 vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuSetupError {
    /// KVM has no preferred vCPU target for this host CPU.
    #[error(
        "KVM_ARM_PREFERRED_TARGET failed: {0}; the host KVM cannot tell which CPU model to \
         emulate (is /dev/kvm an arm64 KVM?)"
    )]
    PreferredTarget(kvm_ioctls::Error),
    /// A vCPU ioctl failed.
    #[error("vCPU {id}: KVM {what} failed: {source}{hint}")]
    Ioctl {
        /// vCPU index.
        id: u32,
        /// Which ioctl (and register).
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
        /// What to check.
        hint: &'static str,
    },
}

/// Bits of MPIDR_EL1 that form the affinity (Aff3 at 39:32, Aff2..Aff0 at 23:0): what a
/// device tree `cpu` node's `reg` holds.
pub const MPIDR_AFFINITY_MASK: u64 = 0xff_00ff_ffff;

/// Boot PSTATE: EL1 using SP_EL1 (EL1h) with debug, SError, IRQ and FIQ masked, as the arm64
/// boot protocol requires.
pub const BOOT_PSTATE: u64 = (PSR_MODE_EL1h | PSR_D_BIT | PSR_A_BIT | PSR_I_BIT | PSR_F_BIT) as u64;

/// ONE_REG id of a 64-bit core register: `KVM_REG_ARM64 | KVM_REG_SIZE_U64 |
/// KVM_REG_ARM_CORE | offset`, where the offset counts 32-bit words into `struct kvm_regs`
/// (the kernel's `KVM_REG_ARM_CORE_REG(name)`).
pub const fn core_reg_id(byte_offset_in_kvm_regs: usize) -> u64 {
    KVM_REG_ARM64
        | KVM_REG_SIZE_U64
        | KVM_REG_ARM_CORE as u64
        | (byte_offset_in_kvm_regs / std::mem::size_of::<u32>()) as u64
}

/// ONE_REG id of a 64-bit system register by its encoding: the kernel's
/// `ARM64_SYS_REG(op0, op1, crn, crm, op2)`.
pub const fn sys_reg_id(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64) -> u64 {
    KVM_REG_ARM64
        | KVM_REG_SIZE_U64
        | KVM_REG_ARM64_SYSREG as u64
        | (op0 << 14)
        | (op1 << 11)
        | (crn << 7)
        | (crm << 3)
        | op2
}

/// `regs.regs[n]` of `struct kvm_regs`.
pub const fn xreg_id(n: usize) -> u64 {
    core_reg_id(std::mem::offset_of!(kvm_regs, regs) + n * std::mem::size_of::<u64>())
}

/// `regs.pc` of `struct kvm_regs`.
pub const PC_ID: u64 =
    core_reg_id(std::mem::offset_of!(kvm_regs, regs) + std::mem::offset_of!(user_pt_regs, pc));

/// `regs.pstate` of `struct kvm_regs`.
pub const PSTATE_ID: u64 =
    core_reg_id(std::mem::offset_of!(kvm_regs, regs) + std::mem::offset_of!(user_pt_regs, pstate));

/// MPIDR_EL1: op0 3, op1 0, CRn 0, CRm 0, op2 5.
pub const MPIDR_EL1_ID: u64 = sys_reg_id(3, 0, 0, 0, 5);

/// The `kvm_vcpu_init` for vCPU `id` from KVM's preferred target: PSCI 0.2+ always, and
/// secondaries powered off until the guest starts them with PSCI `CPU_ON`.
pub fn vcpu_init_for(preferred: &kvm_vcpu_init, id: u32) -> kvm_vcpu_init {
    let mut kvi = *preferred;
    kvi.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
    if id > 0 {
        kvi.features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF;
    }
    kvi
}

/// Initialises vCPU `id` (`KVM_ARM_PREFERRED_TARGET`, then `KVM_ARM_VCPU_INIT`). Must run
/// once per vCPU, before the GIC is initialised and before any register access.
pub fn init_vcpu(vm: &VmFd, vcpu: &VcpuFd, id: u32) -> Result<(), VcpuSetupError> {
    let mut preferred = kvm_vcpu_init::default();
    vm.get_preferred_target(&mut preferred)
        .map_err(VcpuSetupError::PreferredTarget)?;
    vcpu.vcpu_init(&vcpu_init_for(&preferred, id))
        .map_err(|source| VcpuSetupError::Ioctl {
            id,
            what: "KVM_ARM_VCPU_INIT",
            source,
            hint: " (is the host CPU supported by KVM, and was this vCPU initialised already?)",
        })
}

fn set_reg(
    vcpu: &VcpuFd,
    id: u32,
    what: &'static str,
    reg: u64,
    value: u64,
) -> Result<(), VcpuSetupError> {
    vcpu.set_one_reg(reg, &value.to_le_bytes())
        .map(|_| ())
        .map_err(|source| VcpuSetupError::Ioctl {
            id,
            what,
            source,
            hint: "",
        })
}

/// Sets the boot vCPU's registers for the arm64 Linux boot protocol: PSTATE = EL1h with
/// DAIF masked, PC = `entry` (the start of the Image), X0 = `dtb`. X1..X3 are zero after
/// `KVM_ARM_VCPU_INIT` already. Only for vCPU 0; the others are started by PSCI `CPU_ON`.
pub fn set_boot_regs(
    vcpu: &VcpuFd,
    entry: GuestAddress,
    dtb: GuestAddress,
) -> Result<(), VcpuSetupError> {
    let id = 0;
    set_reg(vcpu, id, "KVM_SET_ONE_REG(PSTATE)", PSTATE_ID, BOOT_PSTATE)?;
    set_reg(vcpu, id, "KVM_SET_ONE_REG(PC)", PC_ID, entry.0)?;
    set_reg(vcpu, id, "KVM_SET_ONE_REG(X0)", xreg_id(0), dtb.0)
}

/// Reads MPIDR_EL1 of an initialised vCPU (KVM derives it from the vCPU index).
pub fn read_mpidr(vcpu: &VcpuFd, id: u32) -> Result<u64, VcpuSetupError> {
    let mut buf = [0u8; 8];
    vcpu.get_one_reg(MPIDR_EL1_ID, &mut buf)
        .map_err(|source| VcpuSetupError::Ioctl {
            id,
            what: "KVM_GET_ONE_REG(MPIDR_EL1)",
            source,
            hint: " (was KVM_ARM_VCPU_INIT done first?)",
        })?;
    Ok(u64::from_le_bytes(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_ids_match_the_kernel_encoding() {
        // Values as QEMU/kvmtool/selftests print them.
        assert_eq!(xreg_id(0), 0x6030_0000_0010_0000);
        assert_eq!(xreg_id(1), 0x6030_0000_0010_0002);
        assert_eq!(xreg_id(30), 0x6030_0000_0010_003c);
        assert_eq!(PC_ID, 0x6030_0000_0010_0040);
        assert_eq!(PSTATE_ID, 0x6030_0000_0010_0042);
        assert_eq!(MPIDR_EL1_ID, 0x6030_0000_0013_c005);
    }

    #[test]
    fn boot_pstate_is_el1h_with_daif_masked() {
        assert_eq!(BOOT_PSTATE, 0x3c5);
    }

    #[test]
    fn secondaries_start_powered_off() {
        let preferred = kvm_vcpu_init {
            target: 5,
            features: [0x10, 0, 0, 0, 0, 0, 0],
        };
        let boot = vcpu_init_for(&preferred, 0);
        assert_eq!(boot.target, 5);
        assert_eq!(boot.features[0], 0x10 | 0b100);
        let second = vcpu_init_for(&preferred, 1);
        assert_eq!(second.features[0], 0x10 | 0b101);
    }

    #[test]
    fn affinity_mask_keeps_aff3_to_aff0() {
        // Bit 31 (RES1) and the U/MT bits are not part of a cpu node's reg.
        assert_eq!(0x8000_0000u64 & MPIDR_AFFINITY_MASK, 0);
        assert_eq!(0x1_0000_0123u64 & MPIDR_AFFINITY_MASK, 0x1_0000_0123);
        assert_eq!(0xff_c1ff_ffffu64 & MPIDR_AFFINITY_MASK, 0xff_00ff_ffff);
    }
}
