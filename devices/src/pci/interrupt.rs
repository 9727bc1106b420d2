//! The boundary between a PCI function's MSI/MSI-X vectors and the
//! hypervisor's interrupt routing.
//!
//! A device model (emulated, or a passthrough function's virtualized MSI-X
//! capability) owns one [`MsiInterruptGroup`] with one entry per vector. The
//! VMM implements it on KVM: one GSI, one MSI route and one irqfd per vector
//! (on aarch64 the route carries `KVM_MSI_VALID_DEVID` and the ITS DeviceID
//! that the host bridge's `msi-map` gives the function's requester ID).
//!
//! Contract: a new group has every vector's route disabled. The device model
//! calls [`MsiInterruptGroup::update`] when what the guest programmed for a
//! vector changes in a way that matters (see `msix`), and
//! [`MsiInterruptGroup::trigger`] to inject.
//!
//! What this module does not do: it does not allocate GSIs or touch KVM;
//! that is the VMM's interrupt manager, which implements the trait.

use std::io;

use vmm_sys_util::eventfd::EventFd;

/// An MSI message as the guest programmed it: a write of `data` to
/// `address`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MsiMessage {
    /// Message address (on x86 the LAPIC destination, 0xfeeX_XXXX; on
    /// aarch64 the ITS doorbell, GITS_TRANSLATER).
    pub address: u64,
    /// Message data (on x86 vector and delivery mode; on aarch64 the
    /// EventID).
    pub data: u32,
}

/// Errors of an interrupt backend.
#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    /// The vector index is past the group's end.
    #[error(
        "MSI vector {index} does not exist: the group has {count} vectors; this is a device \
         model bug, it must not use vectors past its MSI-X table size"
    )]
    NoSuchVector {
        /// Requested vector.
        index: u16,
        /// Vectors in the group.
        count: u16,
    },
    /// The hypervisor refused the new route.
    #[error(
        "cannot route MSI vector {index}: {source}; the vector stays on its previous route, \
         check the GSI routing table size and the message the guest programmed"
    )]
    Route {
        /// Vector whose route was being updated.
        index: u16,
        /// The hypervisor's error.
        #[source]
        source: io::Error,
    },
    /// Signalling the vector's eventfd failed.
    #[error(
        "cannot inject MSI vector {index}: {source}; the guest misses this interrupt, check \
         that the irqfd is still registered"
    )]
    Inject {
        /// Vector being injected.
        index: u16,
        /// Why signalling failed.
        #[source]
        source: io::Error,
    },
}

/// The MSI vectors of one PCI function, as the hypervisor routes them.
///
/// Implemented by the VMM's KVM interrupt manager; methods take `&self` so
/// a group can be shared (`Arc`) between the device model and the threads
/// that inject, so implementations lock internally.
pub trait MsiInterruptGroup: Send + Sync {
    /// Routes vector `index` to `msg`, or disables its route if `masked`
    /// (then `msg` is what the guest programmed, for information only).
    fn update(&self, index: u16, msg: MsiMessage, masked: bool) -> Result<(), InterruptError>;

    /// Injects vector `index` now. Used by emulated devices; the caller has
    /// checked that the vector is enabled and unmasked.
    fn trigger(&self, index: u16) -> Result<(), InterruptError>;

    /// The eventfd that injects vector `index` when written (the irqfd), to
    /// hand to `VFIO_DEVICE_SET_IRQS` or to an ioeventfd-driven backend.
    /// `None` if the vector does not exist.
    fn notifier(&self, index: u16) -> Option<&EventFd>;
}

/// A recording [`MsiInterruptGroup`] for tests.
#[cfg(test)]
pub mod test_utils {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    use super::*;

    /// Records every call; `trigger` also writes the vector's eventfd.
    pub struct RecordingInterruptGroup {
        notifiers: Vec<EventFd>,
        /// Every `update` call, in order: (vector, message, masked).
        pub updates: Mutex<Vec<(u16, MsiMessage, bool)>>,
        /// Every `trigger` call, in order.
        pub triggers: Mutex<Vec<u16>>,
        /// When set, `update` and `trigger` fail.
        pub fail: AtomicBool,
    }

    impl RecordingInterruptGroup {
        /// A group of `count` vectors.
        pub fn new(count: u16) -> Self {
            Self {
                notifiers: (0..count)
                    .map(|_| EventFd::new(libc::EFD_NONBLOCK).expect("eventfd for a test"))
                    .collect(),
                updates: Mutex::new(Vec::new()),
                triggers: Mutex::new(Vec::new()),
                fail: AtomicBool::new(false),
            }
        }

        /// Returns and forgets the recorded updates.
        pub fn take_updates(&self) -> Vec<(u16, MsiMessage, bool)> {
            std::mem::take(&mut *self.updates.lock().unwrap())
        }

        /// Returns and forgets the recorded triggers.
        pub fn take_triggers(&self) -> Vec<u16> {
            std::mem::take(&mut *self.triggers.lock().unwrap())
        }

        fn check(&self, index: u16) -> Result<(), InterruptError> {
            if usize::from(index) >= self.notifiers.len() {
                return Err(InterruptError::NoSuchVector {
                    index,
                    count: self.notifiers.len() as u16,
                });
            }
            if self.fail.load(Ordering::Relaxed) {
                return Err(InterruptError::Route {
                    index,
                    source: io::Error::from_raw_os_error(libc::ENOSPC),
                });
            }
            Ok(())
        }
    }

    impl MsiInterruptGroup for RecordingInterruptGroup {
        fn update(&self, index: u16, msg: MsiMessage, masked: bool) -> Result<(), InterruptError> {
            self.check(index)?;
            self.updates.lock().unwrap().push((index, msg, masked));
            Ok(())
        }

        fn trigger(&self, index: u16) -> Result<(), InterruptError> {
            self.check(index)?;
            self.triggers.lock().unwrap().push(index);
            self.notifiers[usize::from(index)]
                .write(1)
                .map_err(|source| InterruptError::Inject { index, source })
        }

        fn notifier(&self, index: u16) -> Option<&EventFd> {
            self.notifiers.get(usize::from(index))
        }
    }

    #[test]
    fn recording_group_records_and_checks_bounds() {
        let group = RecordingInterruptGroup::new(2);
        group.update(1, MsiMessage::default(), true).unwrap();
        group.trigger(0).unwrap();
        assert_eq!(group.notifier(0).unwrap().read().unwrap(), 1);
        assert!(group.notifier(2).is_none());
        assert!(matches!(
            group.trigger(2),
            Err(InterruptError::NoSuchVector { index: 2, count: 2 })
        ));
        assert_eq!(group.take_updates(), vec![(1, MsiMessage::default(), true)]);
        assert_eq!(group.take_triggers(), vec![0]);
        group.fail.store(true, Ordering::Relaxed);
        let err = group.update(0, MsiMessage::default(), false).unwrap_err();
        assert!(err.to_string().contains("cannot route MSI vector 0"));
    }
}
