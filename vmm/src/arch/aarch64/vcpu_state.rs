//! One line describing a vCPU's state, for the SIGUSR1 dump: its PC and PSTATE and whether
//! it is powered off or waiting (mp_state).

use kvm_ioctls::VcpuFd;

use super::vcpu::{PC_ID, PSTATE_ID};

/// Describes `fd`'s state in one line; each part that KVM refuses is left out.
pub fn describe(fd: &VcpuFd) -> String {
    let mut out = String::new();
    for (name, id) in [("pc", PC_ID), ("pstate", PSTATE_ID)] {
        let mut buf = [0u8; 8];
        if fd.get_one_reg(id, &mut buf).is_ok() {
            out += &format!("{name}={:#x} ", u64::from_le_bytes(buf));
        }
    }
    if let Ok(m) = fd.get_mp_state() {
        // 0 runnable, 1 stopped (PSCI off), 2 suspended.
        out += &format!("mp_state={}", m.mp_state);
    }
    out.trim_end().to_string()
}
