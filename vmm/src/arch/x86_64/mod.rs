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
    // KVM gives a new vCPU the host TSC frequency it measured when it loaded. If the kernel
    // refined its calibration afterwards by more than KVM's tolerance (250 ppm) and the CPU
    // cannot scale the TSC, KVM refuses that frequency ("user requested TSC rate below
    // hardware speed") and leaves the vCPU's TSC scaling ratio at zero: KVM then reads the
    // guest TSC as 0 and arms TSC-deadline timers that late by the host's whole TSC uptime.
    // The guest's timers stall (seen in the x86 rig: L2 "timer wakeup didn't happen"; QEMU
    // as L1's VMM hid it). KVM_SET_TSC_KHZ(0) asks for the host's current frequency, which
    // is always within tolerance. It must precede the TSC write below, so the vCPUs' TSCs
    // are synchronized at the right rate.
    if let Err(e) = vcpu.fd.set_tsc_khz(0) {
        log::warn!(
            "vCPU {}: KVM_SET_TSC_KHZ to the host's TSC frequency failed ({e}); guest timers \
             may run late if KVM's idea of the TSC frequency is stale",
            vcpu.id
        );
    }
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
