//! aarch64 VM setup: vCPU init with in-kernel PSCI, the vGICv3 + vITS, the guest memory map,
//! the arm64 `Image` loader and the device tree.
//!
//! The order the builder follows (each step's module says why):
//! 1. create the VM (default IPA size: the [`layout`] fits in 40 bits) and back the RAM of
//!    [`layout::ram_regions`] (or of the memory planner), register it with KVM;
//! 2. create every vCPU fd and call [`vcpu::init_vcpu`] on each (vCPU 0 boots, the others
//!    start powered off and are started by the guest through PSCI `CPU_ON`);
//! 3. [`gic::Gic::new`] with the vCPU count (after all vCPUs exist; creates the vGICv3 and
//!    the vITS and initialises both);
//! 4. [`mmio::create_mmio_bus`] (the UART's irqfd needs the initialised vGIC); a PCI segment
//!    goes on the same MMIO bus with its ECAM at [`layout::PCI_ECAM_START`], its interrupt
//!    manager keeping [`gic::default_spi_routes`] and allocating MSI GSIs from
//!    [`gic::FIRST_MSI_GSI`] (MSI routes carry DeviceID = the function's BDF);
//! 5. [`setup_boot`]: loads the Image and initrd, reads the vCPUs' MPIDRs, writes the DTB and
//!    sets vCPU 0's boot registers;
//! 6. run the vCPUs. PSCI `SYSTEM_OFF` and `SYSTEM_RESET` arrive as `KVM_EXIT_SYSTEM_EVENT`
//!    and end the VM (status 0, like the i8042 reset on x86_64: there is no reboot).
//!
//! What this module does not do: it does not emulate the PCI host bridge (it only describes
//! it in the DTB when asked), no PMU, no EFI boot, no ACPI.

pub mod fdt;
pub mod gic;
pub mod layout;
pub mod loader;
pub mod mmio;
pub mod vcpu;
pub mod vcpu_state;

use std::path::Path;

use kvm_ioctls::VcpuFd;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use self::fdt::{FdtConfig, FdtError};
use self::layout::{LayoutError, RamRegion};
use self::loader::ImageLoaderError;
use self::vcpu::VcpuSetupError;

/// Errors preparing the boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The RAM regions do not fit the memory map.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// Loading the kernel or initrd failed.
    #[error(transparent)]
    Loader(#[from] ImageLoaderError),
    /// Building the device tree failed.
    #[error(transparent)]
    Fdt(#[from] FdtError),
    /// Reading MPIDRs or setting the boot registers failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuSetupError),
    /// No vCPU was given.
    #[error("no vCPUs to boot; create at least one vCPU before setting up the boot")]
    NoVcpus,
}

/// What to boot.
#[derive(Clone, Copy, Debug)]
pub struct BootConfig<'a> {
    /// The arm64 `Image` (uncompressed).
    pub kernel: &'a Path,
    /// Optional initramfs.
    pub initrd: Option<&'a Path>,
    /// Kernel command line.
    pub cmdline: &'a str,
    /// Guest RAM, already backed in `mem`.
    pub ram: &'a [RamRegion],
    /// Whether a PCI segment (ECAM at [`layout::PCI_ECAM_START`]) is present.
    pub pci: bool,
    /// The guest-visible SMMUv3, if any device sits behind one.
    pub vsmmu: Option<&'a fdt::VsmmuNode>,
}

/// Where things went, for logging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootInfo {
    /// Kernel, initrd and DTB placement.
    pub plan: loader::BootPlan,
    /// Bytes of the DTB.
    pub dtb_size: usize,
}

impl BootInfo {
    /// The boot vCPU's entry point (PC).
    pub fn entry(&self) -> GuestAddress {
        self.plan.kernel
    }
}

/// Loads the kernel and initrd of `cfg` into `mem`, writes the device tree for `vcpus`
/// (already initialised with [`vcpu::init_vcpu`], in index order) and points vCPU 0 at the
/// kernel with X0 = the DTB.
pub fn setup_boot(
    mem: &GuestMemoryMmap,
    vcpus: &[&VcpuFd],
    cfg: &BootConfig,
) -> Result<BootInfo, BootError> {
    let boot_vcpu = vcpus.first().ok_or(BootError::NoVcpus)?;
    layout::check_ram_regions(cfg.ram)?;
    let plan = loader::load(mem, cfg.ram, cfg.kernel, cfg.initrd)?;
    let mpidrs = vcpus
        .iter()
        .enumerate()
        .map(|(id, fd)| vcpu::read_mpidr(fd, id as u32))
        .collect::<Result<Vec<u64>, _>>()?;
    let blob = fdt::create_fdt(&FdtConfig {
        ram: cfg.ram,
        mpidrs: &mpidrs,
        cmdline: cfg.cmdline,
        initrd: plan.initrd,
        pci: cfg.pci,
        vsmmu: cfg.vsmmu,
    })?;
    loader::write_dtb(mem, plan.dtb, &blob)?;
    vcpu::set_boot_regs(boot_vcpu, plan.kernel, plan.dtb)?;
    log::debug!(
        "aarch64 boot: Image at {:#x} (to {:#x}), initrd {:?}, DTB {} bytes at {:#x}",
        plan.kernel.0,
        plan.kernel_end,
        plan.initrd,
        blob.len(),
        plan.dtb.0
    );
    Ok(BootInfo {
        plan,
        dtb_size: blob.len(),
    })
}
