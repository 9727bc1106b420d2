//! SIGINT, SIGTERM and SIGUSR1 as a file descriptor, so the event loop sees them like any
//! other event: the first two stop the VM through the same path as a guest-requested exit,
//! SIGUSR1 asks every vCPU to log its state (a stalled guest's registers, LAPIC timer and
//! TSC deadline, without stopping it).

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

/// Errors setting up signal handling.
#[derive(Debug, thiserror::Error)]
pub enum SignalsError {
    /// sigprocmask or signalfd failed.
    #[error("cannot set up SIGINT/SIGTERM handling: {0}")]
    Setup(std::io::Error),
}

/// A signalfd for SIGINT, SIGTERM and SIGUSR1. Create it before any other thread starts: the signals
/// are blocked in this thread's mask, which new threads inherit, so only the fd sees them.
pub struct StopSignals {
    file: File,
}

impl StopSignals {
    /// Blocks SIGINT/SIGTERM/SIGUSR1 and opens the signalfd.
    pub fn new() -> Result<Self, SignalsError> {
        // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialize it in place.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t owned by this frame; the calls only write to it,
        // and pthread_sigmask/signalfd read it. Return values are checked.
        let fd = unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(SignalsError::Setup(std::io::Error::last_os_error()));
            }
            libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK)
        };
        if fd < 0 {
            return Err(SignalsError::Setup(std::io::Error::last_os_error()));
        }
        // SAFETY: fd was just returned by signalfd and nothing else owns it.
        Ok(StopSignals {
            file: unsafe { File::from_raw_fd(fd) },
        })
    }

    /// Reads one pending signal number, if any.
    pub fn read(&mut self) -> Option<i32> {
        // signalfd_siginfo is 128 bytes; ssi_signo is its first u32.
        let mut buf = [0u8; 128];
        match self.file.read(&mut buf) {
            Ok(128) => Some(u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as i32),
            _ => None,
        }
    }
}

impl AsRawFd for StopSignals {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
