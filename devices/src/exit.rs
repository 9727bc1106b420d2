//! A one-shot request, shared by devices and the VMM, to end the VM.
//!
//! Devices ([`ExitPort`](crate::ExitPort), [`I8042`](crate::I8042)) call
//! [`ExitEvent::request`] from a vCPU thread; the VMM's event loop waits on
//! the eventfd and then reads [`ExitEvent::status`]. The first request wins:
//! later requests neither change the status nor matter to the VMM.
//!
//! What this module does not do: it does not stop vCPUs or exit the process.
//! That is the VMM's job once it sees the eventfd become readable.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Mutex, PoisonError};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Errors from [`ExitEvent`].
#[derive(Debug, thiserror::Error)]
pub enum ExitError {
    /// The eventfd could not be created.
    #[error(
        "cannot create the VM exit eventfd: {0}; the process may have run out of file \
         descriptors, raise the limit with `ulimit -n`"
    )]
    EventFd(#[source] std::io::Error),
}

/// The VM exit request: an eventfd to wake the event loop and the status.
#[derive(Debug)]
pub struct ExitEvent {
    /// Written with 1 on every request; non-blocking.
    evt: EventFd,
    /// The status of the first request; `None` until then. Only held for a
    /// compare-and-set, never across another lock.
    status: Mutex<Option<i32>>,
}

impl ExitEvent {
    /// Creates an exit event with a non-blocking eventfd and no status.
    pub fn new() -> Result<Self, ExitError> {
        Ok(Self {
            evt: EventFd::new(EFD_NONBLOCK).map_err(ExitError::EventFd)?,
            status: Mutex::new(None),
        })
    }

    /// Asks the VMM to end the VM with `status`.
    ///
    /// Only the first request sets the status; the eventfd is signalled
    /// every time, which is harmless because the VMM only needs one wakeup.
    pub fn request(&self, status: i32) {
        {
            let mut current = self.status.lock().unwrap_or_else(PoisonError::into_inner);
            match *current {
                None => *current = Some(status),
                Some(first) => {
                    log::debug!("ignoring VM exit request {status}: already exiting with {first}")
                }
            }
        }
        if let Err(e) = self.evt.write(1) {
            // Only fails if the counter would overflow, which means the
            // event is already pending: the VMM will still wake up.
            log::warn!("cannot signal the VM exit eventfd: {e}");
        }
    }

    /// Returns the exit status if an exit was requested.
    pub fn status(&self) -> Option<i32> {
        *self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns the eventfd the VMM's event loop waits on.
    ///
    /// The VMM should read it (to clear it) after it wakes up.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

impl AsRawFd for ExitEvent {
    fn as_raw_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_without_status_and_eventfd_empty() {
        let exit = ExitEvent::new().unwrap();
        assert_eq!(exit.status(), None);
        // Non-blocking: reading an unsignalled eventfd fails with EAGAIN.
        let err = exit.eventfd().read().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
        assert!(exit.as_raw_fd() >= 0);
    }

    #[test]
    fn first_request_wins_and_signals() {
        let exit = ExitEvent::new().unwrap();
        exit.request(3);
        exit.request(0);
        assert_eq!(exit.status(), Some(3));
        assert_eq!(exit.eventfd().read().unwrap(), 2);
    }

    #[test]
    fn concurrent_requests_leave_one_status() {
        let exit = std::sync::Arc::new(ExitEvent::new().unwrap());
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let exit = exit.clone();
                std::thread::spawn(move || exit.request(i))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(matches!(exit.status(), Some(0..=7)));
        assert_eq!(exit.eventfd().read().unwrap(), 8);
    }
}
