//! vCPUs: creation, boot state, and the run loop that dispatches exits to the I/O buses.
//!
//! Each vCPU runs on its own thread. It stops when the VM's exit event has been requested and
//! the thread is kicked out of KVM_RUN by [`KICK_SIGNAL`]; the kick is repeated until the
//! thread is gone, so a kick that lands just before KVM_RUN is not lost.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use devices::{Bus, ExitEvent};

#[cfg(target_arch = "aarch64")]
use crate::arch::aarch64::vcpu_state;
#[cfg(target_arch = "x86_64")]
use crate::arch::x86_64::vcpu_state;
use crate::vstate::pause::PauseGate;
use kvm_ioctls::{VcpuExit, VcpuFd};

/// Status the VMM exits with when the guest crashed or a vCPU failed.
pub const STATUS_FAILURE: i32 = 2;

/// Errors creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM vCPU ioctl failed.
    #[error("vCPU {id}: KVM {what} failed: {source}")]
    Ioctl {
        /// vCPU index.
        id: u32,
        /// Which ioctl.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// The boot MSR list could not be built.
    #[error("vCPU {0}: cannot build the boot MSR list: {1:?}")]
    Msrs(u32, vmm_sys_util::fam::Error),
    /// KVM refused one of the boot MSRs.
    #[error("vCPU {0}: KVM refused to set MSR {1:#x}")]
    MsrRejected(u32, u32),
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
    /// The thread could not be spawned.
    #[error("cannot start the thread of vCPU {0}: {1}")]
    Spawn(u32, std::io::Error),
}

/// A vCPU and what it needs to serve exits.
pub struct Vcpu {
    /// Index (and APIC id).
    pub id: u32,
    /// The KVM vCPU.
    pub fd: VcpuFd,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    exit: Arc<ExitEvent>,
    stop: Arc<AtomicBool>,
    /// Bumped by the event loop on SIGUSR1: each vCPU logs its state once per new value.
    dump: Arc<AtomicU64>,
    /// Where the vCPU waits while the VM is paused.
    gate: Arc<PauseGate>,
}

/// The signal that kicks a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick handler; it exists only so the signal interrupts KVM_RUN.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), noop_handler)
        .map_err(VcpuError::Signal)
}

impl Vcpu {
    /// Wraps a created vCPU.
    pub fn new(
        id: u32,
        fd: VcpuFd,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        exit: Arc<ExitEvent>,
        stop: Arc<AtomicBool>,
        dump: Arc<AtomicU64>,
    ) -> Self {
        Vcpu {
            id,
            fd,
            pio,
            mmio,
            exit,
            stop,
            dump,
            gate: Arc::new(PauseGate::new()),
        }
    }

    /// Makes the vCPU wait at `gate` while the VM is paused.
    pub fn with_pause_gate(mut self, gate: Arc<PauseGate>) -> Self {
        self.gate = gate;
        self
    }

    /// Names the failing ioctl.
    pub fn ioctl<T>(
        &self,
        what: &'static str,
        r: Result<T, kvm_ioctls::Error>,
    ) -> Result<T, VcpuError> {
        r.map_err(|source| VcpuError::Ioctl {
            id: self.id,
            what,
            source,
        })
    }

    /// Starts the run loop on its own thread.
    pub fn start(self) -> Result<VcpuHandle, VcpuError> {
        let id = self.id;
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                // Before the first KVM_RUN: everything after it is guest-driven.
                if let Err(e) = crate::seccomp::install(&crate::seccomp::filters::VCPU) {
                    fail(id, &self.exit, format_args!("{e}"));
                    return;
                }
                self.run_loop()
            })
            .map_err(|e| VcpuError::Spawn(id, e))?;
        Ok(VcpuHandle { thread })
    }

    fn run_loop(mut self) {
        let mut dumped = self.dump.load(Ordering::Acquire);
        while !self.stop.load(Ordering::Acquire) {
            // A pause kicks us out of KVM_RUN to here.
            self.gate.pass();
            if self.stop.load(Ordering::Acquire) || self.exit.status().is_some() {
                break;
            }
            let wanted = self.dump.load(Ordering::Acquire);
            if wanted != dumped {
                dumped = wanted;
                log::warn!("vCPU {} state: {}", self.id, vcpu_state::describe(&self.fd));
            }
            match self.fd.run() {
                Ok(exit) => match exit {
                    VcpuExit::IoIn(port, data) => {
                        if !self.pio.read(u64::from(port), data) {
                            log::debug!("unhandled port read {port:#x}");
                            data.fill(0xff);
                        }
                    }
                    VcpuExit::IoOut(port, data) => {
                        if !self.pio.write(u64::from(port), data) {
                            log::debug!("unhandled port write {port:#x}");
                        }
                    }
                    VcpuExit::MmioRead(addr, data) => {
                        if !self.mmio.read(addr, data) {
                            log::debug!("unhandled MMIO read {addr:#x}");
                            data.fill(0xff);
                        }
                    }
                    VcpuExit::MmioWrite(addr, data) => {
                        if !self.mmio.write(addr, data) {
                            log::debug!("unhandled MMIO write {addr:#x}");
                        }
                    }
                    VcpuExit::Hlt => {
                        // Only without an in-kernel LAPIC; nothing will wake us.
                        fail(
                            self.id,
                            &self.exit,
                            format_args!("halted with no interrupt source"),
                        );
                    }
                    VcpuExit::Shutdown => {
                        fail(self.id, &self.exit, format_args!(
                            "the guest triple-faulted (KVM_EXIT_SHUTDOWN): it crashed, or reset without the i8042"
                        ));
                    }
                    VcpuExit::SystemEvent(kind, _) => {
                        log::info!("vCPU {}: system event {kind}", self.id);
                        self.exit.request(0);
                    }
                    VcpuExit::FailEntry(reason, cpu) => fail(
                        self.id,
                        &self.exit,
                        format_args!(
                        "KVM could not enter the guest (hardware reason {reason:#x}, cpu {cpu})"
                    ),
                    ),
                    VcpuExit::InternalError => fail(
                        self.id,
                        &self.exit,
                        format_args!(
                            "KVM internal error: the guest ran an instruction KVM cannot emulate"
                        ),
                    ),
                    other => fail(
                        self.id,
                        &self.exit,
                        format_args!("unexpected exit {other:?}"),
                    ),
                },
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => fail(self.id, &self.exit, format_args!("KVM_RUN failed: {e}")),
            }
            if self.exit.status().is_some() {
                break;
            }
        }
    }
}

/// Kicks a running vCPU thread out of KVM_RUN once (it re-enters unless told to stop).
///
/// `pthread` must belong to a vCPU thread that has not been joined yet.
pub fn kick(pthread: libc::pthread_t) {
    // SAFETY: the caller guarantees the thread has not been joined, so the pthread_t is
    // valid; the signal has a handler installed by install_kick_handler.
    unsafe { libc::pthread_kill(pthread, kick_signal()) };
}

/// Ends the VM with the failure status, saying why on stderr.
fn fail(id: u32, exit: &ExitEvent, msg: std::fmt::Arguments) {
    log::error!("vCPU {id}: {msg}");
    exit.request(STATUS_FAILURE);
}

/// A running vCPU thread.
pub struct VcpuHandle {
    thread: JoinHandle<()>,
}

impl VcpuHandle {
    /// The thread's pthread id, for [`kick`] while the thread runs.
    pub fn pthread(&self) -> libc::pthread_t {
        use std::os::unix::thread::JoinHandleExt;
        self.thread.as_pthread_t()
    }

    /// Kicks the thread out of KVM_RUN until it has ended, then joins it. The caller has
    /// already set the stop flag or requested exit.
    pub fn stop(self) {
        use std::os::unix::thread::JoinHandleExt;
        let pthread = self.thread.as_pthread_t();
        while !self.thread.is_finished() {
            // SAFETY: the thread has not been joined, so its pthread_t is valid; the signal
            // has a handler installed by install_kick_handler.
            unsafe { libc::pthread_kill(pthread, kick_signal()) };
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.thread.join().is_err() {
            log::error!("a vCPU thread panicked");
        }
    }
}
