//! The virtio-pci transport, modern interface only (virtio 1.x).
//!
//! [`VirtioPciDevice`] wraps a [`VirtioDevice`] into a [`PciDevice`]:
//!
//! * Identity: vendor 0x1af4, device 0x1040 + virtio type, revision 1,
//!   subsystem 0x1af4:0x1100, a class code per device type, no INTx pin.
//! * One 64-bit memory BAR (see [`layout`]) with the common configuration,
//!   ISR, device configuration and notify areas, and the MSI-X table and
//!   PBA; vendor capabilities 1 to 4 point at the areas, capability 5 is the
//!   PCI configuration access window, then comes MSI-X.
//! * Features: the device's, plus `VIRTIO_F_VERSION_1` (which the driver
//!   must accept: there is no legacy interface) and
//!   `VIRTIO_F_ACCESS_PLATFORM`. `FEATURES_OK` is refused (not set) if the
//!   driver accepted anything else.
//! * `DRIVER_OK` activates the device: every enabled queue is checked
//!   (size, alignment, entirely in guest RAM) and handed to the device with
//!   its notification eventfd. A queue that fails the check, or a device
//!   that refuses to start, leaves the device inactive with
//!   `DEVICE_NEEDS_RESET` set, a configuration change interrupt and an
//!   error log line.
//! * Writing 0 to `device_status` resets: the device stops (its thread is
//!   joined), every register returns to its reset value.
//! * Notifications: each queue has an [`EventFd`] made here, for the life
//!   of the device. The VMM registers it as a KVM ioeventfd at the queue's
//!   notify address ([`VirtioPciDevice::notify_addresses`]); a notify write
//!   that reaches [`PciDevice::bar_write`] instead (no ioeventfd) signals the
//!   same eventfd, so both paths look the same to the device.
//! * Interrupts: MSI-X only, through [`MsixConfig`] and the function's
//!   [`MsiInterruptGroup`], one vector per queue plus one for configuration
//!   changes ([`VirtioPciDevice::msix_vector_count`]).
//!
//! Lock order: this device (the `PciDevice` mutex) -> its `MsixConfig`.
//! The device's worker thread takes only the `MsixConfig`; a reset joins
//! that thread while holding the device lock but not the `MsixConfig`.
//!
//! What this module does not do: the legacy and transitional interfaces,
//! INTx, honouring the bus master enable bit, shared memory regions
//! (capability 8), and moving the ioeventfds when the guest moves the BAR
//! (the VMM does that from the root's `BarMoveCallback`).

pub mod common_config;
pub mod interrupt;
pub mod layout;

use std::sync::{Arc, Mutex, PoisonError};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use self::common_config::{CommonConfig, Negotiation};
use self::interrupt::{InterruptState, VirtioPciInterrupt};
pub use self::layout::VIRTIO_BAR;
use self::layout::*;
use crate::pci::{
    BarReprogram, MsiInterruptGroup, MsixConfig, MsixError, PciBar, PciBarConfig, PciBarKind,
    PciConfigError, PciConfiguration, PciDevice, PciIds,
};
use crate::virtio::device::{ActivateError, DeviceQueue, VirtioDevice, VirtioInterrupt};
use crate::virtio::queue::QueueError;
use crate::virtio::{
    feature, type_name, STATUS_DRIVER_OK, STATUS_FEATURES_OK, TYPE_BLOCK, TYPE_NET,
    VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_VERSION_1,
};

/// PCI vendor ID of virtio devices.
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// PCI device ID of a modern virtio device of type 0; add the type.
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// PCI subsystem ID of modern virtio devices (as QEMU uses).
pub const VIRTIO_PCI_SUBSYSTEM_ID: u16 = 0x1100;

/// Errors of the virtio-pci transport.
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    /// The device has no queues or too many.
    #[error(
        "{device} declares {queues} queues: a virtio-pci device here has 1 to {MAX_QUEUES}; \
         this is a device model bug"
    )]
    QueueCount {
        /// Device name.
        device: &'static str,
        /// Declared queues.
        queues: usize,
    },
    /// The device configuration does not fit its BAR area.
    #[error(
        "{device} has a configuration space of {len} bytes, more than the {DEVICE_MAX_LEN} \
         bytes the BAR has room for; this is a device model bug"
    )]
    ConfigTooLarge {
        /// Device name.
        device: &'static str,
        /// Declared length.
        len: usize,
    },
    /// The interrupt group has fewer vectors than the device needs.
    #[error(
        "the MSI-X interrupt group of {device} has no vector {missing}: create it with \
         VirtioPciDevice::msix_vector_count() vectors"
    )]
    InterruptGroup {
        /// Device name.
        device: &'static str,
        /// The first vector missing.
        missing: u16,
    },
    /// Building the config space failed.
    #[error("cannot build the PCI config space of {device}: {source}")]
    Config {
        /// Device name.
        device: &'static str,
        /// Why.
        #[source]
        source: PciConfigError,
    },
    /// Building the MSI-X capability failed.
    #[error("cannot set up MSI-X for {device}: {source}")]
    Msix {
        /// Device name.
        device: &'static str,
        /// Why.
        #[source]
        source: MsixError,
    },
    /// An eventfd could not be created or duplicated.
    #[error(
        "cannot create a queue notification eventfd for {device}: {source}; check the \
         process's open file limit (ulimit -n)"
    )]
    EventFd {
        /// Device name.
        device: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The driver accepted features the device did not offer.
    #[error(
        "the {device} driver accepted feature bits {features:#x} that the device did not \
         offer; FEATURES_OK stays clear, so the driver must fail or renegotiate"
    )]
    UnofferedFeatures {
        /// Device name.
        device: &'static str,
        /// The offending bits.
        features: u64,
    },
    /// The driver did not accept `VIRTIO_F_VERSION_1`.
    #[error(
        "the {device} driver did not accept VIRTIO_F_VERSION_1: this device has only the \
         modern (virtio 1.0+) interface; FEATURES_OK stays clear; use a guest kernel with \
         virtio 1.0 support"
    )]
    LegacyDriver {
        /// Device name.
        device: &'static str,
    },
    /// `DRIVER_OK` without `FEATURES_OK`.
    #[error("the {device} driver set DRIVER_OK without FEATURES_OK; the device needs a reset")]
    NoFeaturesOk {
        /// Device name.
        device: &'static str,
    },
    /// A queue the driver enabled is unusable.
    #[error("cannot activate {device}: {source}")]
    Queue {
        /// Device name.
        device: &'static str,
        /// Why.
        #[source]
        source: QueueError,
    },
    /// The device refused to start.
    #[error("cannot activate {device}: {source}")]
    Activate {
        /// Device name.
        device: &'static str,
        /// Why.
        #[source]
        source: ActivateError,
    },
}

/// A virtio device on the PCI transport.
pub struct VirtioPciDevice {
    name: &'static str,
    config: PciConfiguration,
    msix: Arc<Mutex<MsixConfig>>,
    common: CommonConfig,
    state: Arc<InterruptState>,
    interrupt: Arc<VirtioPciInterrupt>,
    device: Box<dyn VirtioDevice>,
    /// One per queue, for the life of the device.
    queue_events: Vec<EventFd>,
    mem: GuestMemoryMmap,
    /// Whether `device` is activated.
    active: bool,
    /// Offset of the PCI_CFG capability in config space.
    pci_cfg_cap: usize,
}

impl std::fmt::Debug for VirtioPciDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPciDevice")
            .field("name", &self.name)
            .field("status", &self.common.status())
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

/// PCI class and subclass for a virtio device type.
fn class_of(device_type: u32) -> (u8, u8) {
    match device_type {
        TYPE_NET => (0x02, 0x00),
        TYPE_BLOCK => (0x01, 0x00),
        _ => (0xff, 0x00),
    }
}

impl VirtioPciDevice {
    /// MSI-X vectors a transport for `device` uses (one per queue plus the
    /// configuration vector): create its [`MsiInterruptGroup`] with as many.
    pub fn msix_vector_count(device: &dyn VirtioDevice) -> u16 {
        msix_layout(device.queue_max_sizes().len()).vectors
    }

    /// Wraps `device`, whose queues live in `mem`, interrupting through
    /// `msi` (with at least [`VirtioPciDevice::msix_vector_count`] vectors).
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        msi: Arc<dyn MsiInterruptGroup>,
    ) -> Result<Self, VirtioPciError> {
        let device_type = device.device_type();
        let name = type_name(device_type);
        let queues = device.queue_max_sizes().len();
        if queues == 0 || queues > MAX_QUEUES {
            return Err(VirtioPciError::QueueCount {
                device: name,
                queues,
            });
        }
        let config_len = device.config_len();
        if config_len as u64 > DEVICE_MAX_LEN {
            return Err(VirtioPciError::ConfigTooLarge {
                device: name,
                len: config_len,
            });
        }
        let msix_layout = msix_layout(queues);
        if let Some(missing) = (0..msix_layout.vectors).find(|&v| msi.notifier(v).is_none()) {
            return Err(VirtioPciError::InterruptGroup {
                device: name,
                missing,
            });
        }
        let (class_code, subclass) = class_of(device_type);
        // Types are small numbers; an out-of-range one gets a wrong ID
        // rather than a panic.
        let device_id = VIRTIO_PCI_DEVICE_ID_BASE.wrapping_add(device_type as u16);
        let mut config = PciConfiguration::new(&PciIds {
            vendor_id: VIRTIO_PCI_VENDOR_ID,
            device_id,
            revision_id: 1,
            prog_if: 0,
            subclass,
            class_code,
            subsystem_vendor_id: VIRTIO_PCI_VENDOR_ID,
            subsystem_id: VIRTIO_PCI_SUBSYSTEM_ID,
        });
        let config_err = |source| VirtioPciError::Config {
            device: name,
            source,
        };
        config
            .add_bar(PciBarConfig {
                index: VIRTIO_BAR,
                kind: PciBarKind::Memory64,
                size: BAR_SIZE,
                prefetchable: false,
            })
            .map_err(config_err)?;
        let notify_len = queues as u64 * u64::from(NOTIFY_OFF_MULTIPLIER);
        let mut caps = vec![
            (
                cap_body(CAP_COMMON_CFG, COMMON_OFFSET, COMMON_LEN, &[]),
                Vec::new(),
            ),
            (
                cap_body(
                    CAP_NOTIFY_CFG,
                    NOTIFY_OFFSET,
                    notify_len,
                    &NOTIFY_OFF_MULTIPLIER.to_le_bytes(),
                ),
                Vec::new(),
            ),
            (cap_body(CAP_ISR_CFG, ISR_OFFSET, ISR_LEN, &[]), Vec::new()),
        ];
        if config_len > 0 {
            caps.push((
                cap_body(CAP_DEVICE_CFG, DEVICE_OFFSET, config_len as u64, &[]),
                Vec::new(),
            ));
        }
        for (body, writable) in caps {
            config
                .add_capability(PCI_CAP_ID_VNDR, &body, &writable)
                .map_err(config_err)?;
        }
        let pci_cfg_cap = config
            .add_capability(
                PCI_CAP_ID_VNDR,
                &cap_body(CAP_PCI_CFG, 0, 0, &[0; 4]),
                &pci_cfg_writable(),
            )
            .map_err(config_err)?;
        let mut msix =
            MsixConfig::new(msix_layout, msi).map_err(|source| VirtioPciError::Msix {
                device: name,
                source,
            })?;
        msix.add_capability(&mut config).map_err(config_err)?;
        let msix = Arc::new(Mutex::new(msix));

        let queue_events = (0..queues)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| VirtioPciError::EventFd {
                device: name,
                source,
            })?;
        let state = Arc::new(InterruptState::new(queues));
        let offered =
            device.features() | feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_F_ACCESS_PLATFORM);
        let common = CommonConfig::new(
            offered,
            device.queue_max_sizes(),
            msix_layout.vectors,
            state.clone(),
        );
        let interrupt = Arc::new(VirtioPciInterrupt::new(name, state.clone(), msix.clone()));
        Ok(Self {
            name,
            config,
            msix,
            common,
            state,
            interrupt,
            device,
            queue_events,
            mem,
            active: false,
            pci_cfg_cap,
        })
    }

    /// The programmed (firmware- or guest-assigned) address of the virtio
    /// BAR; valid once the device is on a [`PciRoot`](crate::PciRoot).
    pub fn bar_address(&self) -> u64 {
        self.config.bar(VIRTIO_BAR).map_or(0, |b| b.addr)
    }

    /// The notify address of every queue when the virtio BAR is at
    /// `bar_base`, each with a handle to that queue's eventfd. Register
    /// each as a KVM ioeventfd (any length, no datamatch); after the guest
    /// moves BAR [`VIRTIO_BAR`] (the root's `BarMoveCallback`), unregister
    /// at the old base and register at the new one.
    pub fn notify_addresses(&self, bar_base: u64) -> Result<Vec<(u64, EventFd)>, VirtioPciError> {
        self.queue_events
            .iter()
            .enumerate()
            .map(|(i, event)| {
                let addr = bar_base
                    .wrapping_add(NOTIFY_OFFSET)
                    .wrapping_add(i as u64 * u64::from(NOTIFY_OFF_MULTIPLIER));
                event
                    .try_clone()
                    .map(|e| (addr, e))
                    .map_err(|source| VirtioPciError::EventFd {
                        device: self.name,
                        source,
                    })
            })
            .collect()
    }

    /// Whether the device is activated (the driver set `DRIVER_OK` and the
    /// queues were good).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The `device_status` the driver reads.
    pub fn device_status(&self) -> u8 {
        let mut status = [0u8];
        self.common.read(0x14, &mut status);
        status[0]
    }

    /// Handles a driver write to `device_status`.
    fn write_status(&mut self, value: u8) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.common.status();
        let added = value & !old;
        let mut status = value;
        if added & STATUS_FEATURES_OK != 0 {
            match self.common.negotiate() {
                Ok(features) => self.device.ack_features(features),
                Err(e) => {
                    let err = match e {
                        Negotiation::Unoffered(features) => VirtioPciError::UnofferedFeatures {
                            device: self.name,
                            features,
                        },
                        Negotiation::NoVersion1 => {
                            VirtioPciError::LegacyDriver { device: self.name }
                        }
                    };
                    log::warn!("{err}");
                    status &= !STATUS_FEATURES_OK;
                }
            }
        }
        self.common.set_status(status);
        if added & STATUS_DRIVER_OK != 0 && !self.active {
            match self.activate(status) {
                Ok(()) => {
                    self.active = true;
                    log::debug!("{}: activated", self.name);
                }
                Err(e) => {
                    log::error!("{e}");
                    self.interrupt.set_needs_reset();
                }
            }
        }
    }

    /// Checks the enabled queues and starts the device.
    fn activate(&mut self, status: u8) -> Result<(), VirtioPciError> {
        let device = self.name;
        if status & STATUS_FEATURES_OK == 0 {
            return Err(VirtioPciError::NoFeaturesOk { device });
        }
        let mut queues = Vec::new();
        for (i, qc) in self.common.queues().iter().enumerate() {
            if !qc.ready {
                continue;
            }
            let index = i as u16;
            let queue = qc
                .build(index, &self.mem)
                .map_err(|source| VirtioPciError::Queue { device, source })?;
            let event = self.queue_events[i]
                .try_clone()
                .map_err(|source| VirtioPciError::EventFd { device, source })?;
            queues.push(DeviceQueue {
                index,
                queue,
                event,
            });
        }
        let interrupt: Arc<dyn VirtioInterrupt> = self.interrupt.clone();
        self.device
            .activate(self.mem.clone(), queues, interrupt)
            .map_err(|source| VirtioPciError::Activate { device, source })
    }

    /// Device reset: stops the device and clears every register.
    fn reset(&mut self) {
        self.device.reset();
        self.active = false;
        self.common.reset();
        self.state.reset();
        log::debug!("{}: reset", self.name);
    }

    /// The PCI_CFG window: (bar, offset, length) as the driver set them.
    fn pci_cfg_window(&self) -> (u8, u64, usize) {
        let c = self.pci_cfg_cap;
        (
            self.config.read_u8(c + CAP_BAR),
            u64::from(self.config.read_u32(c + CAP_OFFSET)),
            self.config.read_u32(c + CAP_LENGTH) as usize,
        )
    }

    /// The PCI_CFG window if it names a valid access to the virtio BAR.
    fn pci_cfg_access(&self) -> Option<(u64, usize)> {
        let (bar, offset, len) = self.pci_cfg_window();
        let valid = usize::from(bar) == VIRTIO_BAR
            && matches!(len, 1 | 2 | 4)
            && offset.is_multiple_of(len as u64)
            && offset + len as u64 <= BAR_SIZE;
        if !valid {
            log::debug!(
                "{}: ignoring a PCI_CFG access to BAR {bar} offset {offset:#x} length {len}",
                self.name
            );
        }
        valid.then_some((offset, len))
    }

    fn bar_access_read(&mut self, offset: u64, data: &mut [u8]) {
        let handled = self
            .msix
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bar_read(VIRTIO_BAR, offset, data);
        if handled {
            return;
        }
        data.fill(0);
        let device_len = self.device.config_len() as u64;
        match area(offset, data.len(), device_len, self.queue_events.len()) {
            Some((Area::Common, rel)) => self.common.read(rel, data),
            Some((Area::Isr, _)) => data[0] = self.state.take_isr(),
            Some((Area::Device, rel)) => self.device.read_config(rel, data),
            Some((Area::Notify, _)) | None => {}
        }
    }

    fn bar_access_write(&mut self, offset: u64, data: &[u8]) {
        let handled = self
            .msix
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bar_write(VIRTIO_BAR, offset, data);
        if handled {
            return;
        }
        let device_len = self.device.config_len() as u64;
        match area(offset, data.len(), device_len, self.queue_events.len()) {
            Some((Area::Common, rel)) => {
                if let Some(status) = self.common.write(rel, data) {
                    self.write_status(status);
                }
            }
            Some((Area::Device, rel)) => self.device.write_config(rel, data),
            Some((Area::Notify, rel)) => {
                let queue = rel / u64::from(NOTIFY_OFF_MULTIPLIER);
                if let Some(event) = usize::try_from(queue)
                    .ok()
                    .and_then(|q| self.queue_events.get(q))
                {
                    if let Err(e) = event.write(1) {
                        log::warn!("{}: cannot signal queue {queue}: {e}", self.name);
                    }
                }
            }
            Some((Area::Isr, _)) | None => log::debug!(
                "{}: ignoring a {}-byte write at BAR offset {offset:#x}",
                self.name,
                data.len()
            ),
        }
    }
}

impl PciDevice for VirtioPciDevice {
    fn config_read(&mut self, reg_idx: usize) -> u32 {
        let data_offset = self.pci_cfg_cap + CAP_PCI_CFG_DATA;
        if reg_idx == data_offset / 4 {
            if let Some((offset, len)) = self.pci_cfg_access() {
                let mut data = [0u8; 4];
                self.bar_access_read(offset, &mut data[..len]);
                // Inside the capability, away from the BARs: cannot fail.
                let _ = self.config.set_bytes(data_offset, &data);
            }
        }
        self.config.read_reg(reg_idx)
    }

    fn config_write(&mut self, reg_idx: usize, offset: u64, data: &[u8]) -> Vec<BarReprogram> {
        let changes = self.config.write_reg(reg_idx, offset, data);
        self.msix
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .config_written(&self.config, reg_idx);
        let data_offset = self.pci_cfg_cap + CAP_PCI_CFG_DATA;
        if reg_idx == data_offset / 4 {
            if let Some((offset, len)) = self.pci_cfg_access() {
                let value = self.config.read_u32(data_offset).to_le_bytes();
                self.bar_access_write(offset, &value[..len]);
            }
        }
        changes
    }

    fn bars(&self) -> Vec<PciBar> {
        self.config.bars()
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if bar == VIRTIO_BAR {
            self.bar_access_read(offset, data);
        } else {
            data.fill(0xff);
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar == VIRTIO_BAR {
            self.bar_access_write(offset, data);
        }
    }
}

#[cfg(test)]
mod tests;
