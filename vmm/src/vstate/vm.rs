//! The KVM VM: /dev/kvm, the VM fd, the in-kernel interrupt controllers and memory slots.

use kvm_bindings::kvm_userspace_memory_region;
#[cfg(target_arch = "x86_64")]
use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use std::sync::Arc;

use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

/// Errors creating or setting up the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm is missing.
    #[error("/dev/kvm does not exist: this host has no KVM (load kvm_intel/kvm_amd, or enable nested virtualization)")]
    NoKvm,
    /// No permission on /dev/kvm.
    #[error("no permission to open /dev/kvm: run as root or add your user to the group that owns /dev/kvm")]
    KvmPermission,
    /// Other /dev/kvm errors.
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(kvm_ioctls::Error),
    /// A KVM ioctl on the VM failed.
    #[error("KVM {what} failed: {source}")]
    Ioctl {
        /// Which ioctl.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// More memory regions than KVM slots.
    #[error("guest RAM has {0} regions, more than KVM's {1} memory slots")]
    TooManySlots(usize, usize),
}

fn ioctl<T>(what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, VmError> {
    r.map_err(|source| VmError::Ioctl { what, source })
}

/// A KVM virtual machine.
pub struct Vm {
    kvm: Kvm,
    fd: Arc<VmFd>,
}

impl Vm {
    /// Opens /dev/kvm and creates a VM.
    pub fn new() -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(|e| match e.errno() {
            libc::ENOENT => VmError::NoKvm,
            libc::EACCES | libc::EPERM => VmError::KvmPermission,
            _ => VmError::OpenKvm(e),
        })?;
        let fd = ioctl("KVM_CREATE_VM", kvm.create_vm())?;
        Ok(Vm {
            kvm,
            fd: Arc::new(fd),
        })
    }

    /// The system fd.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// The VM fd.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The VM fd, shared (for the interrupt manager and device callbacks).
    pub fn shared_fd(&self) -> Arc<VmFd> {
        self.fd.clone()
    }

    /// The most vCPUs this VM may have.
    pub fn max_vcpus(&self) -> u32 {
        self.kvm.get_max_vcpus() as u32
    }

    /// Creates the in-kernel IOAPIC/PIC/LAPICs and the PIT (x86_64).
    #[cfg(target_arch = "x86_64")]
    pub fn setup_irqchip(&self) -> Result<(), VmError> {
        use crate::arch::x86_64::layout::{KVM_IDENTITY_MAP_START, KVM_TSS_START};
        // KVM's private pages for real-mode emulation on VMX; the E820 map reserves them.
        ioctl(
            "KVM_SET_IDENTITY_MAP_ADDR",
            self.fd.set_identity_map_address(KVM_IDENTITY_MAP_START.0),
        )?;
        ioctl(
            "KVM_SET_TSS_ADDR",
            self.fd.set_tss_address(KVM_TSS_START.0 as usize),
        )?;
        ioctl("KVM_CREATE_IRQCHIP", self.fd.create_irq_chip())?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        ioctl("KVM_CREATE_PIT2", self.fd.create_pit2(pit))
    }

    /// Registers every region of `mem` as a KVM memory slot, slot number = region index.
    pub fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        let max = self.kvm.get_nr_memslots();
        if mem.num_regions() > max {
            return Err(VmError::TooManySlots(mem.num_regions(), max));
        }
        for (slot, region) in mem.iter().enumerate() {
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|_| VmError::TooManySlots(mem.num_regions(), max))?;
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the host range [host, host + len) is a live mapping owned by `mem`,
            // which the caller keeps alive for as long as the VM runs (Vmm holds both).
            ioctl("KVM_SET_USER_MEMORY_REGION", unsafe {
                self.fd.set_user_memory_region(r)
            })?;
        }
        Ok(())
    }
}
