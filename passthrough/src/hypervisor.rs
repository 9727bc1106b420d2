//! The two hypervisor operations passthrough needs, as boundary traits the VMM implements:
//!
//! - [`KvmVfio`]: telling KVM about a VFIO device file (`KVM_DEV_VFIO_FILE_ADD` / `_DEL` on
//!   the VM's `KVM_DEV_TYPE_VFIO` device), so KVM can let the guest use the device's
//!   coherency and, on some platforms, its interrupt bypass. [`KernelKvmVfio`] implements it
//!   over kvm-ioctls.
//! - [`GuestMemslots`]: mapping host memory (an mmapped BAR) into the guest physical address
//!   space (`KVM_SET_USER_MEMORY_REGION`). The VMM implements it, since it owns the slot
//!   numbers; the fake here records slots.
//!
//! Both are called with passthrough locks held (a PCI function's lock, under the PCI root's
//! lock for BAR moves): implementations must not call back into the PCI root or devices.
//!
//! Not here: interrupt routing (the devices crate's `MsiInterruptGroup`, implemented by the
//! VMM's interrupt manager; [`FakeInterruptGroup`] stands in for it in tests).

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use devices::pci::{InterruptError, MsiInterruptGroup, MsiMessage};
use kvm_bindings::{
    kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_VFIO, KVM_DEV_VFIO_FILE,
    KVM_DEV_VFIO_FILE_ADD, KVM_DEV_VFIO_FILE_DEL,
};
use kvm_ioctls::{DeviceFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::iova::HostVirtAddr;

/// KVM's view of the VFIO devices of a VM (the `KVM_DEV_TYPE_VFIO` device; a VM has one).
pub trait KvmVfio: Send + Sync {
    /// `KVM_DEV_VFIO_FILE_ADD`: KVM keeps a reference to the file until removed.
    fn add_file(&self, fd: BorrowedFd<'_>) -> io::Result<()>;
    /// `KVM_DEV_VFIO_FILE_DEL`.
    fn remove_file(&self, fd: BorrowedFd<'_>) -> io::Result<()>;
}

/// A guest memory slot made by [`GuestMemslots::map`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemslotId(pub u32);

/// Mapping host memory into guest physical memory.
pub trait GuestMemslots: Send + Sync {
    /// Maps `len` bytes at host address `host` at guest physical address `gpa` (all page
    /// aligned), read-write; returns the slot.
    fn map(&self, gpa: u64, len: u64, host: HostVirtAddr) -> io::Result<MemslotId>;
    /// Removes a slot made by [`GuestMemslots::map`].
    fn unmap(&self, slot: MemslotId) -> io::Result<()>;
    /// Slots mapped now, where the implementation counts them (for leak checks).
    fn in_use(&self) -> Option<usize> {
        None
    }
}

/// [`KvmVfio`] on a KVM VM: the VM's `KVM_DEV_TYPE_VFIO` device.
#[derive(Debug)]
pub struct KernelKvmVfio {
    device: DeviceFd,
}

impl KernelKvmVfio {
    /// Creates the VM's KVM-VFIO device (`KVM_CREATE_DEVICE`). KVM allows one per VM: make
    /// one and share it (`Arc`) between all passthrough devices.
    pub fn new(vm: &VmFd) -> io::Result<KernelKvmVfio> {
        let mut create = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
            fd: 0,
            flags: 0,
        };
        let device = vm.create_device(&mut create).map_err(|e| {
            let err = io::Error::from_raw_os_error(e.errno());
            io::Error::new(
                err.kind(),
                format!(
                    "cannot create the KVM-VFIO device (KVM_CREATE_DEVICE of \
                     KVM_DEV_TYPE_VFIO): {err}; the host kernel needs CONFIG_KVM_VFIO, and a \
                     VM has only one"
                ),
            )
        })?;
        Ok(KernelKvmVfio { device })
    }

    fn file_attr(&self, fd: BorrowedFd<'_>, attr: u32) -> io::Result<()> {
        let raw: i32 = fd.as_raw_fd();
        let attr = kvm_device_attr {
            flags: 0,
            group: KVM_DEV_VFIO_FILE,
            attr: u64::from(attr),
            // The kernel reads one __s32 fd from `addr` during the call; `raw` outlives it.
            addr: &raw as *const i32 as u64,
        };
        self.device
            .set_device_attr(&attr)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

impl KvmVfio for KernelKvmVfio {
    fn add_file(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.file_attr(fd, KVM_DEV_VFIO_FILE_ADD)
    }

    fn remove_file(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.file_attr(fd, KVM_DEV_VFIO_FILE_DEL)
    }
}

/// A recording [`KvmVfio`] with failure injection, for tests.
///
/// Like KVM, it holds on to the *file*, not the fd number: a file it still holds (say, after
/// a failed `remove_file`) stays in [`FakeKvmVfio::files`] after its fd is closed, and a new
/// file that reuses the number is a different one.
#[derive(Debug, Default)]
pub struct FakeKvmVfio {
    /// (fd number when added, file identity).
    files: Mutex<Vec<(RawFd, FileId)>>,
    /// When set, the next `add_file` fails with `EINVAL` (and clears the flag).
    pub fail_add: AtomicBool,
}

/// What tells two open files apart: the (device, inode) of the file behind an fd.
type FileId = (u64, u64);

fn file_id(fd: BorrowedFd<'_>) -> io::Result<FileId> {
    let file = std::fs::File::from(fd.try_clone_to_owned()?);
    let meta = file.metadata()?;
    use std::os::unix::fs::MetadataExt;
    Ok((meta.dev(), meta.ino()))
}

impl FakeKvmVfio {
    /// The fds (numbers at the time) of the files added and not removed.
    pub fn files(&self) -> Vec<RawFd> {
        let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        files.iter().map(|&(fd, _)| fd).collect()
    }
}

impl KvmVfio for FakeKvmVfio {
    fn add_file(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        if self.fail_add.swap(false, Ordering::Relaxed) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let id = file_id(fd)?;
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if files.iter().any(|&(_, f)| f == id) {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        files.push((fd.as_raw_fd(), id));
        Ok(())
    }

    fn remove_file(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let id = file_id(fd)?;
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let before = files.len();
        files.retain(|&(_, f)| f != id);
        if files.len() == before {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        Ok(())
    }
}

/// One slot of a [`FakeMemslots`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FakeSlot {
    /// Guest physical address.
    pub gpa: u64,
    /// Bytes.
    pub len: u64,
    /// Host address.
    pub host: HostVirtAddr,
}

/// A recording [`GuestMemslots`] that refuses overlapping slots, like KVM (`EEXIST`).
#[derive(Debug, Default)]
pub struct FakeMemslots {
    slots: Mutex<(u32, BTreeMap<MemslotId, FakeSlot>)>,
    /// When set, every `map` fails with `ENOSPC`.
    pub fail_map: AtomicBool,
}

impl FakeMemslots {
    /// The live slots, in slot order.
    pub fn slots(&self) -> Vec<FakeSlot> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.1.values().copied().collect()
    }
}

impl GuestMemslots for FakeMemslots {
    fn map(&self, gpa: u64, len: u64, host: HostVirtAddr) -> io::Result<MemslotId> {
        if self.fail_map.load(Ordering::Relaxed) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let end = gpa
            .checked_add(len)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        if len == 0 || gpa % 4096 != 0 || len % 4096 != 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        if slots.1.values().any(|s| gpa < s.gpa + s.len && s.gpa < end) {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        let id = MemslotId(slots.0);
        slots.0 += 1;
        slots.1.insert(id, FakeSlot { gpa, len, host });
        Ok(id)
    }

    fn unmap(&self, slot: MemslotId) -> io::Result<()> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .1
            .remove(&slot)
            .map(|_| ())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
    }
}

/// A recording [`MsiInterruptGroup`] standing in for the VMM's interrupt manager: one
/// eventfd per vector, every `update` recorded.
pub struct FakeInterruptGroup {
    notifiers: Vec<EventFd>,
    updates: Mutex<Vec<(u16, MsiMessage, bool)>>,
}

impl std::fmt::Debug for FakeInterruptGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeInterruptGroup")
            .field("vectors", &self.notifiers.len())
            .finish_non_exhaustive()
    }
}

impl FakeInterruptGroup {
    /// A group of `vectors` vectors.
    pub fn new(vectors: u16) -> io::Result<FakeInterruptGroup> {
        Ok(FakeInterruptGroup {
            notifiers: (0..vectors)
                .map(|_| EventFd::new(libc::EFD_NONBLOCK))
                .collect::<io::Result<_>>()?,
            updates: Mutex::new(Vec::new()),
        })
    }

    /// Returns and forgets the recorded updates: (vector, message, masked).
    pub fn take_updates(&self) -> Vec<(u16, MsiMessage, bool)> {
        std::mem::take(&mut *self.updates.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The raw fds of the notifiers, in vector order.
    pub fn notifier_fds(&self) -> Vec<RawFd> {
        self.notifiers.iter().map(|e| e.as_raw_fd()).collect()
    }
}

impl MsiInterruptGroup for FakeInterruptGroup {
    fn update(&self, index: u16, msg: MsiMessage, masked: bool) -> Result<(), InterruptError> {
        if usize::from(index) >= self.notifiers.len() {
            return Err(InterruptError::NoSuchVector {
                index,
                count: self.notifiers.len() as u16,
            });
        }
        self.updates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((index, msg, masked));
        Ok(())
    }

    fn trigger(&self, index: u16) -> Result<(), InterruptError> {
        self.notifiers
            .get(usize::from(index))
            .ok_or(InterruptError::NoSuchVector {
                index,
                count: self.notifiers.len() as u16,
            })?
            .write(1)
            .map_err(|source| InterruptError::Inject { index, source })
    }

    fn notifier(&self, index: u16) -> Option<&EventFd> {
        self.notifiers.get(usize::from(index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::AsFd;

    #[test]
    fn fakes_record_and_refuse_like_kvm() {
        let kvm = FakeKvmVfio::default();
        let f = File::open("/dev/null").unwrap();
        kvm.add_file(f.as_fd()).unwrap();
        assert_eq!(
            kvm.add_file(f.as_fd()).unwrap_err().raw_os_error(),
            Some(libc::EEXIST)
        );
        assert_eq!(kvm.files(), vec![f.as_raw_fd()]);
        kvm.remove_file(f.as_fd()).unwrap();
        assert!(kvm.remove_file(f.as_fd()).is_err());
        kvm.fail_add.store(true, Ordering::Relaxed);
        assert!(kvm.add_file(f.as_fd()).is_err());
        assert!(kvm.files().is_empty());

        let slots = FakeMemslots::default();
        let a = slots
            .map(0x1000, 0x2000, HostVirtAddr(0x7000_0000))
            .unwrap();
        assert_eq!(
            slots
                .map(0x2000, 0x1000, HostVirtAddr(0))
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EEXIST)
        );
        assert!(
            slots.map(0x1800, 0x1000, HostVirtAddr(0)).is_err(),
            "unaligned"
        );
        slots.unmap(a).unwrap();
        assert!(slots.unmap(a).is_err());
        assert!(slots.slots().is_empty());
    }

    // Runs only where /dev/kvm works; KVM refuses a file that is no VFIO device.
    #[test]
    fn kernel_kvm_vfio_refuses_non_vfio_files() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            return;
        };
        let Ok(vm) = kvm.create_vm() else { return };
        let Ok(dev) = KernelKvmVfio::new(&vm) else {
            return;
        };
        let f = File::open("/dev/null").unwrap();
        assert!(dev.add_file(f.as_fd()).is_err());
        assert!(dev.remove_file(f.as_fd()).is_err());
    }
}
