//! x86_64 VM setup.
pub mod cpuid;
pub mod lapic;
pub mod layout;
pub mod mptable;
pub mod msrs;
pub mod regs;
pub mod vcpu_state;

use kvm_bindings::CpuId;

use crate::loader::BootEntry;
use crate::vstate::vcpu::{Vcpu, VcpuError};

/// Sets up vCPU `vcpu.id` of `count`: CPUID, MSRs, LAPIC LINTs, FPU, and for the boot vCPU
/// (`entry` given) the registers of the kernel's entry point.
pub fn configure_vcpu(
    vcpu: &Vcpu,
    supported_cpuid: &CpuId,
    extras: cpuid::CpuidExtras,
    count: u32,
    entry: Option<&BootEntry>,
) -> Result<(), VcpuError> {
    let mut cpuid = supported_cpuid.clone();
    cpuid::patch_cpuid(&mut cpuid, vcpu.id, count, extras);
    vcpu.ioctl("KVM_SET_CPUID2", vcpu.fd.set_cpuid2(&cpuid))?;
    let boot_msrs = msrs::boot_msrs().map_err(|e| VcpuError::Msrs(vcpu.id, e))?;
    let set = vcpu.ioctl("KVM_SET_MSRS", vcpu.fd.set_msrs(&boot_msrs))?;
    if set != boot_msrs.as_slice().len() {
        // KVM stops at the first MSR it rejects; name it so the failure is actionable.
        let bad = boot_msrs.as_slice().get(set).map_or(0, |e| e.index);
        return Err(VcpuError::MsrRejected(vcpu.id, bad));
    }
    let mut lapic_state = vcpu.ioctl("KVM_GET_LAPIC", vcpu.fd.get_lapic())?;
    lapic::set_lint(&mut lapic_state);
    vcpu.ioctl("KVM_SET_LAPIC", vcpu.fd.set_lapic(&lapic_state))?;
    vcpu.ioctl("KVM_SET_FPU", vcpu.fd.set_fpu(&regs::boot_fpu()))?;
    if let Some(entry) = entry {
        let sregs = vcpu.ioctl("KVM_GET_SREGS", vcpu.fd.get_sregs())?;
        vcpu.ioctl(
            "KVM_SET_SREGS",
            vcpu.fd.set_sregs(&regs::boot_sregs(sregs, entry)),
        )?;
        vcpu.ioctl("KVM_SET_REGS", vcpu.fd.set_regs(&regs::boot_regs(entry)))?;
    }
    Ok(())
}
