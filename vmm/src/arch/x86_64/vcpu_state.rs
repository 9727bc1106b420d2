//! One line describing a vCPU's state, for the SIGUSR1 dump: where it runs (RIP, mode), whether
//! it is halted, and what could wake it (LAPIC timer, pending and in-service interrupts, the
//! TSC against its deadline). Used to tell a guest waiting on a timer that never fired from
//! one spinning or one waiting on a device.

use kvm_ioctls::VcpuFd;

use super::lapic::get_reg;

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
const APIC_LVTT: usize = 0x320;
const APIC_TMICT: usize = 0x380;
const APIC_TMCCT: usize = 0x390;
const APIC_ISR: usize = 0x100;
const APIC_IRR: usize = 0x200;

/// The highest vector set in the 256-bit LAPIC bitmap at `base` (ISR or IRR), if any.
fn highest_vector(lapic: &kvm_bindings::kvm_lapic_state, base: usize) -> Option<u32> {
    (0..8).rev().find_map(|i| {
        let word = get_reg(lapic, base + i * 0x10);
        (word != 0).then(|| i as u32 * 32 + 31 - word.leading_zeros())
    })
}

/// Describes `fd`'s state in one line; each part that KVM refuses is left out.
pub fn describe(fd: &VcpuFd) -> String {
    let mut out = String::new();
    if let Ok(r) = fd.get_regs() {
        out += &format!("rip={:#x} rsp={:#x} rflags={:#x} ", r.rip, r.rsp, r.rflags);
    }
    if let Ok(s) = fd.get_sregs() {
        out += &format!("cr0={:#x} efer={:#x} ", s.cr0, s.efer);
    }
    if let Ok(m) = fd.get_mp_state() {
        // 0 runnable, 1 uninitialized, 2 INIT received, 3 halted, 4 SIPI received.
        out += &format!("mp_state={} ", m.mp_state);
    }
    if let Ok(l) = fd.get_lapic() {
        out += &format!(
            "lvtt={:#x} tmict={:#x} tmcct={:#x} isr={:?} irr={:?} ",
            get_reg(&l, APIC_LVTT),
            get_reg(&l, APIC_TMICT),
            get_reg(&l, APIC_TMCCT),
            highest_vector(&l, APIC_ISR),
            highest_vector(&l, APIC_IRR)
        );
    }
    let entries = [
        kvm_bindings::kvm_msr_entry {
            index: MSR_IA32_TSC,
            ..Default::default()
        },
        kvm_bindings::kvm_msr_entry {
            index: MSR_IA32_TSC_DEADLINE,
            ..Default::default()
        },
    ];
    if let Ok(mut msrs) = kvm_bindings::Msrs::from_entries(&entries) {
        if fd.get_msrs(&mut msrs) == Ok(2) {
            let m = msrs.as_slice();
            let (tsc, deadline) = (m[0].data, m[1].data);
            out += &format!("tsc={tsc:#x} tsc_deadline={deadline:#x}");
            if deadline != 0 {
                out += &format!(" (deadline-tsc={})", deadline as i128 - tsc as i128);
            }
        }
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_vector_reads_the_bitmap_from_the_top() {
        let mut l = kvm_bindings::kvm_lapic_state::default();
        assert_eq!(highest_vector(&l, APIC_IRR), None);
        l.regs[APIC_IRR + 0x10] = 0x01; // vector 32
        assert_eq!(highest_vector(&l, APIC_IRR), Some(32));
        l.regs[APIC_IRR + 0x70 + 3] = 0x80u8 as _; // vector 255
        assert_eq!(highest_vector(&l, APIC_IRR), Some(255));
        assert_eq!(highest_vector(&l, APIC_ISR), None);
    }
}
