//! CPUID for each vCPU: what KVM supports, with the per-CPU topology fields filled in.

use kvm_bindings::CpuId;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
/// CPUID.1:ECX bit 31: "running under a hypervisor".
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:EDX bit 28: the logical-processor count in EBX[23:16] is valid.
const EDX_HTT: u32 = 1 << 28;
/// CPUID.1:ECX bit 24: the LAPIC timer has TSC-deadline mode. KVM emulates it in its LAPIC
/// but leaves the bit to the VMM (KVM_CAP_TSC_DEADLINE_TIMER). With it Linux skips
/// calibrating the LAPIC timer against the PIT, which fails under load in nested guests
/// ("lapic is not functional", seen in the x86 rig) and leaves the guest crawling.
const ECX_TSC_DEADLINE: u32 = 1 << 24;

/// What the host KVM can offer beyond KVM_GET_SUPPORTED_CPUID.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidExtras {
    /// KVM_CAP_TSC_DEADLINE_TIMER.
    pub tsc_deadline: bool,
}

/// Patches `cpuid` (from KVM_GET_SUPPORTED_CPUID) for vCPU `id` of `count`: the APIC IDs
/// the guest reads must match the vCPU ids KVM gave the LAPICs, or SIPIs go nowhere.
pub fn patch_cpuid(cpuid: &mut CpuId, id: u32, count: u32, extras: CpuidExtras) {
    for e in cpuid.as_mut_slice() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff) | (id << 24) | ((count.min(255)) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if extras.tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    e.edx |= EDX_HTT;
                }
            }
            LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
                // EDX is the x2APIC id of the CPU executing CPUID, at every sub-leaf.
                e.edx = id;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn topology_fields_follow_vcpu_id() {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xffff_0800,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                edx: 77,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 7,
                ebx: 0x1234,
                ..Default::default()
            },
        ];
        let mut c = CpuId::from_entries(&entries).unwrap();
        patch_cpuid(&mut c, 3, 4, CpuidExtras::default());
        let s = c.as_slice();
        assert_eq!(s[0].ebx >> 24, 3);
        assert_eq!((s[0].ebx >> 16) & 0xff, 4);
        assert_eq!(s[0].ebx & 0xffff, 0x0800);
        assert_ne!(s[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(s[0].edx & EDX_HTT, 0);
        assert_eq!(s[1].edx, 3);
        assert_eq!(s[2].ebx, 0x1234);
        assert_eq!(s[0].ecx & ECX_TSC_DEADLINE, 0);
        patch_cpuid(&mut c, 0, 1, CpuidExtras { tsc_deadline: true });
        assert_ne!(c.as_slice()[0].ecx & ECX_TSC_DEADLINE, 0);
    }
}
