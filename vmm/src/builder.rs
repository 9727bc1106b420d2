//! Builds a VM from a [`VmConfig`] and runs it to its end: the one place that knows the order
//! in which the pieces are put together.
//!
//! Order: KVM VM (so host limits are known) → validate config → RAM layout and backing →
//! in-kernel irqchip and memory slots → kernel load → devices → vCPUs → event loop. Every
//! step owns what it created; an error on the way drops it all (fds closed, memory unmapped).

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use devices::{Bus, ExitEvent, ExitPort, FwCfg, Serial, SerialOutput, I8042};
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vm_memory::GuestAddress;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::x86_64::{self as arch, layout};
use crate::config::{ConfigError, HostLimits, SerialConfig, VmConfig, HUGE_PAGE_2M, KIB};
use crate::interrupts::kvm::{x86_legacy_routes, KvmRouting};
use crate::interrupts::InterruptManager;
use crate::loader::{self, BootConfig};
use crate::pci::create_pci_segment;
use crate::signals::{SignalsError, StopSignals};
use crate::vstate::memory::{create_guest_memory, MemoryError};
use crate::vstate::vcpu::{install_kick_handler, Vcpu, VcpuError, VcpuHandle};
use crate::vstate::vm::{Vm, VmError};
use devices::pci::PciWindows;

/// GSIs below this are the IOAPIC's pins; MSI vectors get GSIs from here on.
const FIRST_MSI_GSI: u32 = 24;
/// Routing table size we allow ourselves (KVM's limit is 4096).
const MAX_GSI: u32 = 1024;

/// xAPIC ids are 8 bits and 0xff is broadcast: the most vCPUs the boot protocols can name.
const MAX_XAPIC_VCPUS: u32 = 254;

/// Everything that can stop a VM from starting.
#[derive(Debug, thiserror::Error)]
pub enum BuilderError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// KVM VM setup.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Guest RAM placement.
    #[error(transparent)]
    Layout(#[from] layout::LayoutError),
    /// Guest RAM backing.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Kernel loading.
    #[error(transparent)]
    Loader(#[from] loader::LoaderError),
    /// Boot structures.
    #[error(transparent)]
    Regs(#[from] arch::regs::RegsError),
    /// MP tables.
    #[error(transparent)]
    Mptable(#[from] arch::mptable::MptableError),
    /// vCPU setup.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// PCI segment.
    #[error(transparent)]
    Pci(#[from] crate::pci::PciError),
    /// Signal setup.
    #[error(transparent)]
    Signals(#[from] SignalsError),
    /// Device setup.
    #[error("cannot set up devices: {0}")]
    Device(String),
    /// The event loop failed.
    #[error("event loop failed: {0}")]
    EventLoop(String),
}

fn dev_err(e: impl std::fmt::Display) -> BuilderError {
    BuilderError::Device(e.to_string())
}

/// What the host can give: KVM's vCPU limit and the RAM it has (hugetlb pages if asked).
fn host_limits(vm: &Vm, hugepages: bool) -> HostLimits {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    HostLimits {
        max_vcpus: vm.max_vcpus().min(MAX_XAPIC_VCPUS),
        max_memory: host_memory(&meminfo, hugepages),
    }
}

/// Bytes of RAM the host can give a guest, from /proc/meminfo text: MemTotal, or the free
/// 2 MiB huge pages. Unknown (unparsable) means no limit, so an odd /proc does not block boot.
pub fn host_memory(meminfo: &str, hugepages: bool) -> u64 {
    let field = |name: &str| -> Option<u64> {
        meminfo.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
    };
    if hugepages {
        let size_kib = field("Hugepagesize").unwrap_or(HUGE_PAGE_2M / KIB);
        field("HugePages_Free")
            .map(|n| n * size_kib * KIB)
            .unwrap_or(u64::MAX)
    } else {
        field("MemTotal").map(|k| k * KIB).unwrap_or(u64::MAX)
    }
}

/// Watches the exit event and SIGINT/SIGTERM on the main thread.
struct StopWatcher {
    exit: Arc<ExitEvent>,
    signals: StopSignals,
}

impl MutEventSubscriber for StopWatcher {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.signals.as_raw_fd() {
            while let Some(sig) = self.signals.read() {
                log::warn!("received signal {sig}; stopping the VM");
                self.exit.request(128 + sig);
            }
        } else {
            // Drain the counter; the status is read from ExitEvent.
            let _ = self.exit.eventfd().read();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for fd in [self.exit.as_raw_fd(), self.signals.as_raw_fd()] {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                log::error!("cannot watch fd {fd}: {e}");
            }
        }
    }
}

fn serial_output(s: &SerialConfig) -> SerialOutput {
    match s {
        SerialConfig::Stdio => SerialOutput::Stdout,
        SerialConfig::File(p) => SerialOutput::File(p.clone()),
        SerialConfig::Off => SerialOutput::Off,
    }
}

/// Port-I/O devices of a headless PC: serial, exit port, i8042 reset, fw_cfg.
fn create_pio_bus(vm: &Vm, config: &VmConfig, exit: &Arc<ExitEvent>) -> Result<Bus, BuilderError> {
    let mut bus = Bus::new();
    let irq = EventFd::new(EFD_NONBLOCK).map_err(dev_err)?;
    vm.fd()
        .register_irqfd(&irq, devices::SERIAL_IRQ)
        .map_err(|e| dev_err(format!("KVM_IRQFD for the serial port: {e}")))?;
    let serial = Serial::new(&serial_output(&config.serial), irq).map_err(dev_err)?;
    bus.insert(
        Arc::new(Mutex::new(serial)),
        devices::SERIAL_PORT_BASE,
        devices::SERIAL_PORT_LEN,
    )
    .map_err(dev_err)?;
    bus.insert(
        Arc::new(Mutex::new(ExitPort::new(exit.clone()))),
        devices::EXIT_PORT_BASE,
        devices::EXIT_PORT_LEN,
    )
    .map_err(dev_err)?;
    bus.insert(
        Arc::new(Mutex::new(I8042::new(exit.clone()))),
        devices::I8042_PORT_BASE,
        devices::I8042_PORT_LEN,
    )
    .map_err(dev_err)?;
    // vcpus is at most MAX_XAPIC_VCPUS after validation, so it fits in u16.
    let fw_cfg = FwCfg::new(config.memory, config.vcpus as u16);
    bus.insert(
        Arc::new(Mutex::new(fw_cfg)),
        devices::FW_CFG_PORT_BASE,
        devices::FW_CFG_PORT_LEN,
    )
    .map_err(dev_err)?;
    Ok(bus)
}

/// Builds the VM described by `config`, runs it until the guest or a signal ends it, and
/// returns the process exit status.
pub fn run_vm(config: &VmConfig) -> Result<i32, BuilderError> {
    // Before any thread exists, so every thread inherits the blocked mask.
    let signals = StopSignals::new()?;
    install_kick_handler()?;

    let vm = Vm::new()?;
    config.validate(&host_limits(&vm, config.hugepages))?;

    let ram = layout::ram_regions(config.memory)?;
    let ranges: Vec<(GuestAddress, usize)> =
        ram.iter().map(|r| (r.start, r.size as usize)).collect();
    let mem = create_guest_memory(&ranges, config.backend, config.hugepages)?;
    vm.setup_irqchip()?;
    vm.register_memory(&mem)?;

    let entry = loader::load_kernel(
        &mem,
        &BootConfig {
            kernel: &config.kernel,
            initrd: config.initrd.as_deref(),
            cmdline: &config.cmdline,
            ram: &ram,
        },
    )?;
    arch::regs::write_gdt_idt(&mem)?;
    arch::mptable::setup_mptable(&mem, config.vcpus)?;
    if matches!(entry, loader::BootEntry::Linux64 { .. }) {
        arch::regs::write_identity_page_tables(&mem)?;
    }

    let exit = Arc::new(ExitEvent::new().map_err(dev_err)?);
    let mut pio = create_pio_bus(&vm, config, &exit)?;
    let mut mmio = Bus::new();
    let irq = Arc::new(InterruptManager::new(
        Arc::new(KvmRouting { vm: vm.shared_fd() }),
        &x86_legacy_routes(),
        FIRST_MSI_GSI,
        MAX_GSI,
    ));
    let pci = create_pci_segment(
        vm.shared_fd(),
        &mem,
        &irq,
        &PciWindows {
            mmio32: layout::PCI_MMIO32_START.0
                ..layout::PCI_MMIO32_START.0 + layout::PCI_MMIO32_SIZE,
            mmio64: None,
            io: None,
        },
        layout::ECAM_START.0,
        &config.disks,
        config.rng,
        &mut pio,
        &mut mmio,
    )?;
    let pio = Arc::new(pio);
    let mmio = Arc::new(mmio);
    let stop = Arc::new(AtomicBool::new(false));

    let supported = vm
        .kvm()
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(|source| VmError::Ioctl {
            what: "KVM_GET_SUPPORTED_CPUID",
            source,
        })?;
    let mut vcpus = Vec::with_capacity(config.vcpus as usize);
    for id in 0..config.vcpus {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(id))
            .map_err(|source| VcpuError::Ioctl {
                id,
                what: "KVM_CREATE_VCPU",
                source,
            })?;
        let vcpu = Vcpu::new(
            id,
            fd,
            pio.clone(),
            mmio.clone(),
            exit.clone(),
            stop.clone(),
        );
        arch::configure_vcpu(&vcpu, &supported, config.vcpus, (id == 0).then_some(&entry))?;
        vcpus.push(vcpu);
    }

    let mut handles: Vec<VcpuHandle> = Vec::with_capacity(vcpus.len());
    let mut started = Ok(());
    for vcpu in vcpus {
        match vcpu.start() {
            Ok(h) => handles.push(h),
            Err(e) => {
                started = Err(e);
                break;
            }
        }
    }
    let result = started
        .map_err(BuilderError::from)
        .and_then(|_| event_loop(exit.clone(), signals));

    // Stop and join every vCPU before memory and the VM are dropped.
    stop.store(true, Ordering::Release);
    exit.request(0); // no-op if a status was already requested
    for h in handles {
        h.stop();
    }
    // Device workers stop and MSI routes go before the VM and memory.
    drop(pci);
    drop(mem);
    result
}

fn event_loop(exit: Arc<ExitEvent>, signals: StopSignals) -> Result<i32, BuilderError> {
    let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new()
        .map_err(|e| BuilderError::EventLoop(e.to_string()))?;
    em.add_subscriber(Arc::new(Mutex::new(StopWatcher {
        exit: exit.clone(),
        signals,
    })));
    loop {
        if let Some(status) = exit.status() {
            return Ok(status);
        }
        em.run()
            .map_err(|e| BuilderError::EventLoop(e.to_string()))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:       24590000 kB\nMemFree:        1000 kB\nHugePages_Total:      16\nHugePages_Free:        8\nHugepagesize:       2048 kB\n";

    #[test]
    fn host_memory_reads_meminfo() {
        assert_eq!(host_memory(MEMINFO, false), 24_590_000 * 1024);
        assert_eq!(host_memory(MEMINFO, true), 8 * 2 * 1024 * 1024);
        assert_eq!(host_memory("garbage", false), u64::MAX);
    }
}
