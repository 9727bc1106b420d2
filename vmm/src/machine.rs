//! The per-architecture steps of building a VM, behind one set of names so that
//! [`crate::builder`] reads the same on x86_64 and aarch64.
//!
//! x86_64: in-kernel PIC/IOAPIC/PIT before any vCPU, legacy port devices (serial, exit port,
//! i8042, fw_cfg, PCI 0xCF8), MP table, multiboot/Linux loaders. aarch64: vGICv3 + vITS after
//! all vCPUs exist, an MMIO 16550, a device tree, arm64 Image loading.

use std::sync::Arc;

use devices::pci::PciWindows;
use devices::{Bus, ExitEvent};
use passthrough::memory_map::DeviceRanges;
use passthrough::MemoryMap;
use vm_memory::GuestMemoryMmap;

use crate::builder::BuilderError;
use crate::config::VmConfig;
use crate::interrupts::Route;
use crate::vsmmu::{VsmmuNode, VsmmuSlot};
use crate::vstate::vcpu::Vcpu;
use crate::vstate::vm::Vm;

#[cfg(target_arch = "aarch64")]
pub use aarch64::*;
#[cfg(target_arch = "x86_64")]
pub use x86_64::*;

/// Routing table size we allow ourselves (KVM's limit is 4096).
pub const MAX_GSI: u32 = 1024;

/// Guest RAM placement for this arch, through the passthrough planner.
pub fn plan_ram(
    mem_size: u64,
    devices: Vec<DeviceRanges>,
) -> Result<(Vec<(vm_memory::GuestAddress, u64)>, MemoryMap), BuilderError> {
    let (regions, map) = layout::plan_ram(mem_size, devices)?;
    Ok((regions.iter().map(|r| (r.start, r.size)).collect(), map))
}

#[cfg(target_arch = "x86_64")]
mod x86_64 {
    use super::*;
    use std::sync::Mutex;

    use devices::{ExitPort, FwCfg, Serial, I8042};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    pub use crate::arch::x86_64::layout;
    use crate::arch::x86_64::{configure_vcpu, mptable, regs};
    use crate::builder::serial_output;
    use crate::loader::{self, BootConfig, BootEntry};
    use crate::vstate::vm::VmError;

    /// xAPIC ids are 8 bits and 0xff is broadcast; the MP table names at most this many.
    pub const MAX_VCPUS: u32 = mptable::MAX_CPUS;
    /// GSIs below this are the IOAPIC's pins; MSI vectors get GSIs from here on.
    pub const FIRST_MSI_GSI: u32 = 24;
    /// Whether MSI routes carry a DeviceID (no: the LAPIC does not need one).
    pub const MSI_NEEDS_DEVID: bool = false;
    /// Bytes of each hotplug root port's memory and prefetchable window, both from the
    /// 32-bit PCI window (x86 has no 64-bit one yet).
    pub const HOTPLUG_PORT_WINDOWS: (u64, u64) = (8 << 20, 32 << 20);
    /// Size of the ECAM region.
    pub const ECAM_SIZE: u64 = layout::ECAM_SIZE;

    /// Nothing arch-specific survives setup on x86_64.
    pub struct ArchState;

    /// Steps needed before vCPUs exist: the in-kernel irqchip and PIT.
    pub fn before_vcpus(vm: &Vm) -> Result<(), BuilderError> {
        Ok(vm.setup_irqchip()?)
    }

    /// Steps needed once all vCPUs exist: none on x86_64.
    pub fn after_vcpus(_vm: &Vm, _vcpus: &[kvm_ioctls::VcpuFd]) -> Result<ArchState, BuilderError> {
        Ok(ArchState)
    }

    /// The routes KVM starts with, kept in every table the interrupt manager writes.
    pub fn legacy_routes() -> Vec<(u32, Route)> {
        crate::interrupts::kvm::x86_legacy_routes()
    }

    /// The PCI windows and ECAM base of the layout.
    pub fn pci_windows() -> (PciWindows, u64) {
        (
            PciWindows {
                mmio32: layout::PCI_MMIO32_START.0
                    ..layout::PCI_MMIO32_START.0 + layout::PCI_MMIO32_SIZE,
                mmio64: None,
                io: None,
            },
            layout::ECAM_START.0,
        )
    }

    /// The port-I/O and MMIO buses with the platform devices of a headless PC: serial
    /// (COM1, IRQ 4), exit port, i8042 reset, fw_cfg.
    pub fn create_buses(
        vm: &Vm,
        config: &VmConfig,
        exit: &Arc<ExitEvent>,
    ) -> Result<(Bus, Bus), BuilderError> {
        let dev = |e: &dyn std::fmt::Display| BuilderError::Device(e.to_string());
        let mut pio = Bus::new();
        let irq = EventFd::new(EFD_NONBLOCK).map_err(|e| dev(&e))?;
        vm.fd()
            .register_irqfd(&irq, devices::SERIAL_IRQ)
            .map_err(|e| dev(&format!("KVM_IRQFD for the serial port: {e}")))?;
        let serial = Serial::new(&serial_output(&config.serial), irq).map_err(|e| dev(&e))?;
        pio.insert(
            Arc::new(Mutex::new(serial)),
            devices::SERIAL_PORT_BASE,
            devices::SERIAL_PORT_LEN,
        )
        .map_err(|e| dev(&e))?;
        pio.insert(
            Arc::new(Mutex::new(ExitPort::new(exit.clone()))),
            devices::EXIT_PORT_BASE,
            devices::EXIT_PORT_LEN,
        )
        .map_err(|e| dev(&e))?;
        pio.insert(
            Arc::new(Mutex::new(I8042::new(exit.clone()))),
            devices::I8042_PORT_BASE,
            devices::I8042_PORT_LEN,
        )
        .map_err(|e| dev(&e))?;
        // vcpus <= MAX_VCPUS after validation, so it fits in u16.
        let fw_cfg = FwCfg::new(config.memory, config.vcpus as u16);
        pio.insert(
            Arc::new(Mutex::new(fw_cfg)),
            devices::FW_CFG_PORT_BASE,
            devices::FW_CFG_PORT_LEN,
        )
        .map_err(|e| dev(&e))?;
        Ok((pio, Bus::new()))
    }

    /// No guest-visible IOMMU on x86_64.
    pub fn vsmmu_slot() -> Option<VsmmuSlot> {
        None
    }

    /// Loads the kernel, writes the boot tables and sets every vCPU's boot state.
    pub fn boot(
        vm: &Vm,
        mem: &GuestMemoryMmap,
        ram: &[(vm_memory::GuestAddress, u64)],
        config: &VmConfig,
        vcpus: &[Vcpu],
        _vsmmu: Option<&VsmmuNode>,
    ) -> Result<(), BuilderError> {
        let ram: Vec<layout::RamRegion> = ram
            .iter()
            .map(|&(start, size)| layout::RamRegion { start, size })
            .collect();
        let entry = loader::load_kernel(
            mem,
            &BootConfig {
                kernel: &config.kernel,
                initrd: config.initrd.as_deref(),
                cmdline: &config.cmdline,
                ram: &ram,
            },
        )?;
        regs::write_gdt_idt(mem)?;
        mptable::setup_mptable(mem, config.vcpus)?;
        if matches!(entry, BootEntry::Linux64 { .. }) {
            regs::write_identity_page_tables(mem)?;
        }
        let supported = vm
            .kvm()
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(|source| VmError::Ioctl {
                what: "KVM_GET_SUPPORTED_CPUID",
                source,
            })?;
        let extras = crate::arch::x86_64::cpuid::CpuidExtras {
            tsc_deadline: vm.kvm().check_extension(kvm_ioctls::Cap::TscDeadlineTimer),
        };
        for v in vcpus {
            configure_vcpu(
                v,
                &supported,
                extras,
                config.vcpus,
                (v.id == 0).then_some(&entry),
            )?;
        }
        Ok(())
    }
}

#[cfg(target_arch = "aarch64")]
mod aarch64 {
    use super::*;

    pub use crate::arch::aarch64::layout;
    use crate::arch::aarch64::{gic, mmio, setup_boot, vcpu, BootConfig};
    use crate::builder::serial_output;

    /// vCPUs the GIC redistributor region has room for.
    pub const MAX_VCPUS: u32 = layout::MAX_VCPUS;
    /// SPIs are GSIs 0..224 (wired, e.g. the serial); MSI vectors get GSIs from here on.
    pub const FIRST_MSI_GSI: u32 = gic::FIRST_MSI_GSI;
    /// MSI routes carry the ITS DeviceID (KVM_MSI_VALID_DEVID).
    pub const MSI_NEEDS_DEVID: bool = true;
    /// Bytes of each hotplug root port's memory window (32-bit PCI window) and
    /// prefetchable window (64-bit PCI window, big enough for large device BARs).
    pub const HOTPLUG_PORT_WINDOWS: (u64, u64) = (8 << 20, 4 << 30);
    /// Size of the ECAM region.
    pub const ECAM_SIZE: u64 = layout::PCI_ECAM_SIZE;

    /// The GIC and ITS device fds, which must live as long as the VM.
    pub struct ArchState {
        _gic: gic::Gic,
    }

    /// Nothing is needed before vCPUs exist on aarch64.
    pub fn before_vcpus(_vm: &Vm) -> Result<(), BuilderError> {
        Ok(())
    }

    /// Initializes every vCPU (preferred target, PSCI 0.2) and then the vGICv3 + vITS,
    /// which KVM only accepts once all vCPUs exist.
    pub fn after_vcpus(vm: &Vm, vcpus: &[kvm_ioctls::VcpuFd]) -> Result<ArchState, BuilderError> {
        for (id, fd) in vcpus.iter().enumerate() {
            vcpu::init_vcpu(vm.fd(), fd, id as u32)
                .map_err(|e| BuilderError::Arch(e.to_string()))?;
        }
        let g = gic::Gic::new(vm.fd(), vcpus.len() as u32)
            .map_err(|e| BuilderError::Arch(e.to_string()))?;
        Ok(ArchState { _gic: g })
    }

    /// The routes KVM starts with: GSI n is SPI n.
    pub fn legacy_routes() -> Vec<(u32, Route)> {
        gic::default_spi_routes()
            .into_iter()
            .map(|(gsi, pin)| (gsi, Route::Irqchip { chip: 0, pin }))
            .collect()
    }

    /// The PCI windows and ECAM base of the layout.
    pub fn pci_windows() -> (PciWindows, u64) {
        (
            PciWindows {
                mmio32: layout::PCI_MMIO32_START.0
                    ..layout::PCI_MMIO32_START.0 + layout::PCI_MMIO32_SIZE,
                mmio64: Some(
                    layout::PCI_MMIO64_START.0
                        ..layout::PCI_MMIO64_START.0 + layout::PCI_MMIO64_SIZE,
                ),
                io: None,
            },
            layout::PCI_ECAM_START.0,
        )
    }

    /// No port I/O on aarch64; the MMIO bus starts with the 16550.
    pub fn create_buses(
        vm: &Vm,
        config: &VmConfig,
        _exit: &Arc<ExitEvent>,
    ) -> Result<(Bus, Bus), BuilderError> {
        let mmio = mmio::create_mmio_bus(vm.fd(), &serial_output(&config.serial))
            .map_err(|e| BuilderError::Device(e.to_string()))?;
        Ok((Bus::new(), mmio))
    }

    /// Where the guest-visible SMMUv3 goes (`--device ...,iommu=on`).
    pub fn vsmmu_slot() -> Option<VsmmuSlot> {
        Some(VsmmuSlot {
            base: layout::SMMU_START.0,
            size: layout::SMMU_SIZE,
            eventq_spi: layout::SMMU_EVENTQ_SPI,
            gerror_spi: layout::SMMU_GERROR_SPI,
            msi_doorbell: layout::GIC_ITS_TRANSLATER.0,
        })
    }

    /// Loads the Image and initrd, writes the device tree and points vCPU 0 at the kernel.
    pub fn boot(
        _vm: &Vm,
        mem: &GuestMemoryMmap,
        ram: &[(vm_memory::GuestAddress, u64)],
        config: &VmConfig,
        vcpus: &[Vcpu],
        vsmmu: Option<&VsmmuNode>,
    ) -> Result<(), BuilderError> {
        let ram: Vec<layout::RamRegion> = ram
            .iter()
            .map(|&(start, size)| layout::RamRegion { start, size })
            .collect();
        let fds: Vec<&kvm_ioctls::VcpuFd> = vcpus.iter().map(|v| &v.fd).collect();
        setup_boot(
            mem,
            &fds,
            &BootConfig {
                kernel: &config.kernel,
                initrd: config.initrd.as_deref(),
                cmdline: &config.cmdline,
                ram: &ram,
                pci: true,
                vsmmu,
            },
        )
        .map_err(|e| BuilderError::Arch(e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MAX_HOTPLUG_SLOTS;
    use devices::pci::{PciBdf, PciRoot};

    /// The most root ports the CLI allows get their windows, leave room below 4 GiB for the
    /// other devices' BARs, and their buses lie inside the ECAM the guest is told about.
    #[test]
    fn hotplug_ports_fit_the_layout() {
        let (windows, _) = pci_windows();
        let mut root = PciRoot::new(&windows).unwrap();
        for _ in 0..MAX_HOTPLUG_SLOTS {
            let mem = root.reserve_window(false, HOTPLUG_PORT_WINDOWS.0).unwrap();
            let pref = root.reserve_window(true, HOTPLUG_PORT_WINDOWS.1).unwrap();
            assert!(mem.end <= 1 << 32);
            assert_eq!(mem.start % (1 << 20), 0);
            assert_eq!(pref.start % (1 << 20), 0);
        }
        let left = root
            .reserve_window(false, 64 << 20)
            .expect("64 MiB of 32-bit BAR space left");
        assert!(left.end <= 1 << 32);
        let last = PciBdf::new(MAX_HOTPLUG_SLOTS, 0, 0).unwrap();
        assert!(
            u64::from(last.bus()) < ECAM_SIZE >> 20,
            "bus {last} outside ECAM"
        );
    }
}
