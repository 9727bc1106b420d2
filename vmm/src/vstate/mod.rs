//! The state KVM holds for the VM: memory, the VM and its vCPUs.
pub mod memory;
pub mod pause;
pub mod vcpu;
pub mod vm;
