//! Builds a VM from a [`VmConfig`] and runs it to its end: the one place that knows the order
//! in which the pieces are put together.
//!
//! Order: KVM VM (so host limits are known) → validate config → RAM placement (the
//! passthrough planner) and backing → arch steps before vCPUs (x86 irqchip) → memory slots →
//! vCPU fds → arch steps after vCPUs (aarch64 GIC/ITS) → platform devices → interrupt
//! manager → PCI segment → kernel load and boot state → vCPU threads → API thread → event
//! loop (the API socket is taken first of all, so a busy one fails before any work). The
//! per-arch steps live in [`crate::machine`]. Every step owns what it created; an error on
//! the way drops it all (fds closed, memory unmapped).

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use devices::{ExitEvent, SerialOutput};
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vm_memory::GuestAddress;
use vmm_sys_util::epoll::EventSet;

use crate::config::{
    ConfigError, HostLimits, HugePages, MemoryBackend, SerialConfig, VmConfig, HUGE_PAGE_2M, KIB,
};
use crate::control::{ApiEvents, VmControl};
use crate::device_hotplug::NoHotplug;
use crate::interrupts::kvm::KvmRouting;
use crate::interrupts::InterruptManager;
use crate::machine;
use crate::pci::{create_pci_segment, PciSegmentConfig};
use crate::signals::{SignalsError, StopSignals};
use crate::vfio::PassthroughPlan;
use crate::vstate::memory::{create_guest_memory, MemoryError};
use crate::vstate::pause::PauseGate;
use crate::vstate::vcpu::{install_kick_handler, kick, Vcpu, VcpuError, VcpuHandle};
use crate::vstate::vm::{Vm, VmError};

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
    Layout(#[from] machine::layout::LayoutError),
    /// Architecture-specific setup (aarch64: vCPU init, GIC, boot).
    #[error("{0}")]
    Arch(String),
    /// Guest RAM backing.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Kernel loading.
    #[cfg(target_arch = "x86_64")]
    #[error(transparent)]
    Loader(#[from] crate::loader::LoaderError),
    /// Boot structures.
    #[cfg(target_arch = "x86_64")]
    #[error(transparent)]
    Regs(#[from] crate::arch::x86_64::regs::RegsError),
    /// MP tables.
    #[cfg(target_arch = "x86_64")]
    #[error(transparent)]
    Mptable(#[from] crate::arch::x86_64::mptable::MptableError),
    /// vCPU setup.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// PCI segment (boxed, as it may carry a passthrough error).
    #[error(transparent)]
    Pci(Box<crate::pci::PciError>),
    /// Passthrough setup (boxed: its errors carry paths and device names).
    #[error(transparent)]
    Vfio(Box<crate::vfio::VfioError>),
    /// Signal setup.
    #[error(transparent)]
    Signals(#[from] SignalsError),
    /// The API socket or thread.
    #[error(transparent)]
    Api(#[from] api::ApiServerError),
    /// Seccomp filter setup.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// Device setup.
    #[error("cannot set up devices: {0}")]
    Device(String),
    /// The event loop failed.
    #[error("event loop failed: {0}")]
    EventLoop(String),
}

impl From<crate::vfio::VfioError> for BuilderError {
    fn from(e: crate::vfio::VfioError) -> Self {
        BuilderError::Vfio(Box::new(e))
    }
}

impl From<crate::pci::PciError> for BuilderError {
    fn from(e: crate::pci::PciError) -> Self {
        BuilderError::Pci(Box::new(e))
    }
}

fn dev_err(e: impl std::fmt::Display) -> BuilderError {
    BuilderError::Device(e.to_string())
}

/// What the host can give: KVM's vCPU limit and the RAM it has (hugetlb pages if asked).
fn host_limits(meminfo: &str, vm: &Vm, hugepages: bool) -> HostLimits {
    HostLimits {
        max_vcpus: vm.max_vcpus().min(machine::MAX_VCPUS),
        max_memory: host_memory(meminfo, hugepages),
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

/// What `--memory-backing auto` means on this host: a memfd when the VM may pass devices
/// through and the kernel pins files (`IOMMU_IOAS_MAP_FILE`), else anonymous memory; but
/// anonymous memory where only it gets transparent huge pages (see [`choose_backend`]).
fn auto_backend(may_pass_through: bool, hugetlb: bool) -> MemoryBackend {
    let thp = Thp::of_host();
    let map_file = || {
        passthrough::KernelIommufd::open()
            .map(|mut fd| fd.has_map_file())
            .unwrap_or(false)
    };
    let backend = choose_backend(may_pass_through, hugetlb, thp, map_file);
    // Said when THP decided it (choose_backend's first rule), not when MAP_FILE is missing.
    if may_pass_through && !hugetlb && thp.anon && !thp.shmem {
        log::info!(
            "guest RAM: anonymous memory, whose transparent huge pages pin and map faster than \
             a memfd's small pages (shmem_enabled is off on this host)"
        );
    }
    backend
}

/// The host's transparent huge pages, from /sys/kernel/mm/transparent_hugepage: for
/// anonymous memory (`enabled` always or madvise: guest RAM is madvised) and for a memfd
/// (`shmem_enabled` always, within_size or advise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Thp {
    anon: bool,
    shmem: bool,
}

impl Thp {
    fn of_host() -> Thp {
        let read = |f: &str| {
            std::fs::read_to_string(format!("/sys/kernel/mm/transparent_hugepage/{f}"))
                .unwrap_or_default()
        };
        Thp::from_sysfs(&read("enabled"), &read("shmem_enabled"))
    }

    /// The files hold every choice with the selected one in brackets ("always [madvise]
    /// never"); a missing file (no THP in the kernel) reads as empty.
    fn from_sysfs(enabled: &str, shmem_enabled: &str) -> Thp {
        let selected = |s: &str| {
            s.split_whitespace()
                .find(|w| w.starts_with('[') && w.ends_with(']'))
                .map(|w| w.trim_matches(|c| c == '[' || c == ']').to_string())
                .unwrap_or_default()
        };
        Thp {
            anon: matches!(selected(enabled).as_str(), "always" | "madvise"),
            shmem: matches!(
                selected(shmem_enabled).as_str(),
                "always" | "within_size" | "advise" | "force"
            ),
        }
    }
}

/// The auto backing, decided: a memfd pinned by file (IOMMU_IOAS_MAP_FILE) pins faster than
/// anonymous memory by address when both have the same page size (aarch64 rig, 512 MiB:
/// 2150 vs 3102 ms, docs/passthrough.md), so it is the choice for a VM that may pass devices
/// through and a kernel that has MAP_FILE; hugetlb pages come to a memfd as well
/// (MFD_HUGETLB). But where transparent huge pages are on for anonymous memory and off for
/// shmem, anonymous RAM gets 2 MiB folios (fewer faults and pins, 2 MiB IOMMU and stage-2
/// mappings) and a memfd would not: anonymous memory then. `map_file` is asked only when
/// it matters (it opens /dev/iommu).
fn choose_backend(
    may_pass_through: bool,
    hugetlb: bool,
    thp: Thp,
    map_file: impl FnOnce() -> bool,
) -> MemoryBackend {
    if !may_pass_through || (!hugetlb && thp.anon && !thp.shmem) {
        return MemoryBackend::Anonymous;
    }
    if map_file() {
        MemoryBackend::Memfd
    } else {
        MemoryBackend::Anonymous
    }
}

/// Wall time of each start-up step, logged as one info line so that a slow start says where
/// its time went (issue 13's "measure each step").
struct StartupSteps {
    last: std::time::Instant,
    done: Vec<(&'static str, f64)>,
}

impl StartupSteps {
    fn new() -> StartupSteps {
        StartupSteps {
            last: std::time::Instant::now(),
            done: Vec::new(),
        }
    }

    /// Ends the step `name` now.
    fn done(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        self.done
            .push((name, (now - self.last).as_secs_f64() * 1e3));
        self.last = now;
    }

    fn log(&self) {
        // (The time before main is in the "vCPUs start" line: /proc's start time has 10 ms
        // resolution, too coarse to subtract these from.)
        let steps: Vec<String> = self
            .done
            .iter()
            .map(|(name, ms)| format!("{name} {ms:.1} ms"))
            .collect();
        log::info!("start-up steps: {}", steps.join("; "));
    }
}

/// Milliseconds since this process started (from /proc/self/stat's start time), for the
/// start-up figures logged at info level.
fn process_age_ms() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Field 22 (starttime, in clock ticks since boot) comes after the ")" of the comm field.
    let start_ticks: f64 = stat
        .rsplit(')')
        .next()?
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (hz > 0.0).then(|| (uptime - start_ticks / hz) * 1e3)
}

/// Watches the exit event and SIGINT/SIGTERM/SIGUSR1 on the main thread.
struct StopWatcher {
    exit: Arc<ExitEvent>,
    signals: StopSignals,
    /// Bumped on SIGUSR1; the vCPUs compare it with the last value they logged.
    dump: Arc<AtomicU64>,
    /// The running vCPU threads, kicked so halted ones log too. Valid while the event loop
    /// runs: run_vm joins them only after it returns.
    vcpu_threads: Vec<libc::pthread_t>,
}

impl MutEventSubscriber for StopWatcher {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.signals.as_raw_fd() {
            while let Some(sig) = self.signals.read() {
                if sig == libc::SIGUSR1 {
                    log::warn!("SIGUSR1: every vCPU logs its state");
                    self.dump.fetch_add(1, Ordering::AcqRel);
                    for &t in &self.vcpu_threads {
                        kick(t);
                    }
                    continue;
                }
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

/// The devices crate's name for the serial configuration.
pub fn serial_output(s: &SerialConfig) -> SerialOutput {
    match s {
        SerialConfig::Stdio => SerialOutput::Stdout,
        SerialConfig::File(p) => SerialOutput::File(p.clone()),
        SerialConfig::Off => SerialOutput::Off,
    }
}

/// Builds the VM described by `config`, runs it until the guest or a signal ends it, and
/// returns the process exit status.
pub fn run_vm(config: &VmConfig) -> Result<i32, BuilderError> {
    let mut steps = StartupSteps::new();
    config.check_boot_files()?;
    // Before any thread exists, so every thread inherits the blocked mask.
    let signals = StopSignals::new()?;
    install_kick_handler()?;
    let api_server = config
        .api_socket
        .as_deref()
        .map(api::ApiServer::bind)
        .transpose()?;
    devices::virtio::worker::set_start_hook(|| {
        crate::seccomp::install(&crate::seccomp::filters::DEVICE_WORKER).map_err(|e| e.to_string())
    });

    steps.done("signals and API socket");
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mut resolved = config.resolved(&meminfo);
    if resolved.backend == MemoryBackend::Auto {
        resolved.backend = auto_backend(
            !resolved.devices.is_empty() || resolved.hotplug_slots > 0,
            resolved.hugepages == HugePages::On,
        );
    }
    let config = &resolved;
    let hugepages = config.hugepages == HugePages::On;
    let vm = Vm::new()?;
    config.validate(&host_limits(&meminfo, &vm, hugepages))?;
    steps.done("KVM VM");

    // Passthrough devices are found and their host ranges read before RAM is placed, so the
    // plan keeps RAM off every reserved/MSI range.
    let passthrough = PassthroughPlan::prepare(&config.devices)?;
    steps.done("device probe");
    let host_ranges = passthrough.as_ref().map(|p| p.ranges()).unwrap_or_default();
    let (ram, memory_map) = machine::plan_ram(config.memory, host_ranges)?;
    let ranges: Vec<(GuestAddress, usize)> = ram.iter().map(|&(a, s)| (a, s as usize)).collect();
    let mem = create_guest_memory(&ranges, config.backend, hugepages)?;
    steps.done("RAM plan and mapping");
    log::info!(
        "guest RAM: {} MiB, {}, {}",
        config.memory >> 20,
        match config.backend {
            MemoryBackend::Memfd => "memfd",
            MemoryBackend::Anonymous | MemoryBackend::Auto => "anonymous",
        },
        if hugepages {
            "2 MiB hugetlb pages"
        } else {
            "small pages (transparent huge pages advised)"
        }
    );
    machine::before_vcpus(&vm)?;
    vm.register_memory(&mem)?;

    let mut fds = Vec::with_capacity(config.vcpus as usize);
    for id in 0..config.vcpus {
        fds.push(
            vm.fd()
                .create_vcpu(u64::from(id))
                .map_err(|source| VcpuError::Ioctl {
                    id,
                    what: "KVM_CREATE_VCPU",
                    source,
                })?,
        );
    }
    let _arch = machine::after_vcpus(&vm, &fds)?;
    steps.done("memslots, irqchip, vCPUs");

    let exit = Arc::new(ExitEvent::new().map_err(dev_err)?);
    let (mut pio, mut mmio) = machine::create_buses(&vm, config, &exit)?;
    let irq = Arc::new(InterruptManager::new(
        Arc::new(KvmRouting { vm: vm.shared_fd() }),
        &machine::legacy_routes(),
        machine::FIRST_MSI_GSI,
        machine::MAX_GSI,
    ));
    let (windows, ecam) = machine::pci_windows();
    let pci = create_pci_segment(
        vm.shared_fd(),
        &mem,
        &irq,
        PciSegmentConfig {
            windows: &windows,
            ecam: (ecam, machine::ECAM_SIZE),
            msi_devid: machine::MSI_NEEDS_DEVID,
            passthrough,
            disks: &config.disks,
            rng: config.rng,
            hotplug_slots: config.hotplug_slots,
            port_windows: machine::HOTPLUG_PORT_WINDOWS,
            vsmmu: machine::vsmmu_slot(),
        },
        &mut pio,
        &mut mmio,
    )?;
    steps.done("buses, PCI, passthrough and DMA map");
    // The API's event loop drives hotplug through this; it goes before the PCI segment.
    let mut hotplug = Some(pci.hotplug(&mem, &irq, machine::MSI_NEEDS_DEVID));
    let pio = Arc::new(pio);
    let mmio = Arc::new(mmio);
    let stop = Arc::new(AtomicBool::new(false));
    let dump = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(PauseGate::new());
    let vcpus: Vec<Vcpu> = fds
        .into_iter()
        .enumerate()
        .map(|(id, fd)| {
            Vcpu::new(
                id as u32,
                fd,
                pio.clone(),
                mmio.clone(),
                exit.clone(),
                stop.clone(),
                dump.clone(),
            )
            .with_pause_gate(gate.clone())
        })
        .collect();
    machine::boot(&vm, &mem, &ram, config, &vcpus, pci.vsmmu_node().as_ref())?;
    steps.done("kernel load and boot state");
    steps.log();

    log::info!(
        "vCPUs start {:.1} ms after the VMM started",
        process_age_ms().unwrap_or(f64::NAN)
    );
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
    let mut api_thread = None;
    let result = started.map_err(BuilderError::from).and_then(|_| {
        let threads: Vec<libc::pthread_t> = handles.iter().map(VcpuHandle::pthread).collect();
        let api_events = match api_server {
            Some(server) => {
                let (link, inbox) = api::api_channel()
                    .map_err(|e| BuilderError::Api(api::ApiServerError::Thread(e)))?;
                let control = VmControl::new(
                    hotplug
                        .take()
                        .unwrap_or_else(|| Box::new(NoHotplug::default())),
                    gate.clone(),
                    threads.clone(),
                    exit.clone(),
                    config,
                    &memory_map,
                );
                api_thread = Some(server.spawn_with(link, || {
                    crate::seccomp::install(&crate::seccomp::filters::API)
                        .map_err(|e| e.to_string())
                })?);
                Some(ApiEvents::new(inbox, control))
            }
            None => None,
        };
        // After the vCPU and API threads started, before the event loop: from here on this
        // thread serves API requests, hotplug included, under its filter.
        crate::seccomp::install(&crate::seccomp::filters::VMM)?;
        event_loop(exit.clone(), signals, dump, threads, api_events)
    });

    // The API thread first (it answers the request in hand, then removes the socket), then
    // every vCPU, before devices, memory and the VM are dropped. A paused VM is let go.
    if let Some(t) = api_thread {
        t.stop();
    }
    stop.store(true, Ordering::Release);
    exit.request(0); // no-op if a status was already requested
    gate.release();
    for h in handles {
        h.stop();
    }
    drop(hotplug);
    drop(pci);
    drop(mem);
    result
}

fn event_loop(
    exit: Arc<ExitEvent>,
    signals: StopSignals,
    dump: Arc<AtomicU64>,
    vcpu_threads: Vec<libc::pthread_t>,
    api: Option<ApiEvents>,
) -> Result<i32, BuilderError> {
    let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new()
        .map_err(|e| BuilderError::EventLoop(e.to_string()))?;
    em.add_subscriber(Arc::new(Mutex::new(StopWatcher {
        exit: exit.clone(),
        signals,
        dump,
        vcpu_threads,
    })));
    if let Some(api) = api {
        em.add_subscriber(Arc::new(Mutex::new(api)));
    }
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

    #[test]
    fn thp_reads_the_bracketed_choice() {
        let t = Thp::from_sysfs(
            "always [madvise] never\n",
            "always within_size advise [never] deny force\n",
        );
        assert_eq!(
            t,
            Thp {
                anon: true,
                shmem: false
            }
        );
        let t = Thp::from_sysfs(
            "[always] madvise never",
            "always within_size [advise] never deny force",
        );
        assert_eq!(
            t,
            Thp {
                anon: true,
                shmem: true
            }
        );
        let t = Thp::from_sysfs("always madvise [never]", "[deny]");
        assert_eq!(
            t,
            Thp {
                anon: false,
                shmem: false
            }
        );
        // No THP in the kernel: no files.
        assert_eq!(
            Thp::from_sysfs("", ""),
            Thp {
                anon: false,
                shmem: false
            }
        );
    }

    #[test]
    fn auto_backing_choice() {
        let none = Thp {
            anon: false,
            shmem: false,
        };
        let anon_only = Thp {
            anon: true,
            shmem: false,
        };
        let both = Thp {
            anon: true,
            shmem: true,
        };
        let asked = std::cell::Cell::new(0);
        let yes = || {
            asked.set(asked.get() + 1);
            true
        };
        // No device can come: anonymous, and /dev/iommu is not asked.
        assert_eq!(
            choose_backend(false, false, none, yes),
            MemoryBackend::Anonymous
        );
        assert_eq!(asked.get(), 0);
        // MAP_FILE and the same page size either way: memfd.
        assert_eq!(choose_backend(true, false, none, yes), MemoryBackend::Memfd);
        assert_eq!(choose_backend(true, false, both, yes), MemoryBackend::Memfd);
        assert_eq!(asked.get(), 2);
        // No MAP_FILE: anonymous.
        assert_eq!(
            choose_backend(true, false, none, || false),
            MemoryBackend::Anonymous
        );
        // Only anonymous memory gets THP: anonymous, not asked.
        assert_eq!(
            choose_backend(true, false, anon_only, yes),
            MemoryBackend::Anonymous
        );
        assert_eq!(asked.get(), 2);
        // Hugetlb pages come to a memfd whatever THP does.
        assert_eq!(
            choose_backend(true, true, anon_only, yes),
            MemoryBackend::Memfd
        );
    }
}
