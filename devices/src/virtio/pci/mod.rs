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
mod tests {
    use virtio_queue::QueueT;
    use vm_memory::{Address, Bytes, GuestAddress};

    use super::interrupt::NO_VECTOR;
    use super::*;
    use crate::pci::interrupt::test_utils::RecordingInterruptGroup;
    use crate::virtio::rng::Rng;
    use crate::virtio::test_utils::{guest_memory, wait_for, TestQueue, MEM_SIZE};
    use crate::virtio::{STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, TYPE_RNG};

    const DEVICE_FEATURE_SELECT: u64 = 0x00;
    const DEVICE_FEATURE: u64 = 0x04;
    const DRIVER_FEATURE_SELECT: u64 = 0x08;
    const DRIVER_FEATURE: u64 = 0x0c;
    const CONFIG_MSIX_VECTOR: u64 = 0x10;
    const NUM_QUEUES: u64 = 0x12;
    const DEVICE_STATUS: u64 = 0x14;
    const QUEUE_SELECT: u64 = 0x16;
    const QUEUE_SIZE: u64 = 0x18;
    const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    const QUEUE_ENABLE: u64 = 0x1c;
    const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    const QUEUE_DESC: u64 = 0x20;
    const QUEUE_DRIVER: u64 = 0x28;
    const QUEUE_DEVICE: u64 = 0x30;

    /// What the fake device saw.
    #[derive(Default)]
    struct FakeLog {
        acked: Option<u64>,
        /// Per activation: (index, size, descriptor table) of each queue.
        activations: Vec<Vec<(u16, u16, u64)>>,
        resets: usize,
        config_writes: Vec<(u64, Vec<u8>)>,
        refuse: bool,
    }

    struct FakeDevice {
        sizes: Vec<u16>,
        log: Arc<Mutex<FakeLog>>,
    }

    impl VirtioDevice for FakeDevice {
        fn device_type(&self) -> u32 {
            TYPE_BLOCK
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.sizes
        }
        fn features(&self) -> u64 {
            0b110
        }
        fn ack_features(&mut self, features: u64) {
            self.log.lock().unwrap().acked = Some(features);
        }
        fn config_len(&self) -> usize {
            8
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            crate::virtio::block::device::read_config_bytes(
                &0x1122_3344_5566_7788u64.to_le_bytes(),
                offset,
                data,
            );
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            self.log
                .lock()
                .unwrap()
                .config_writes
                .push((offset, data.to_vec()));
        }
        fn activate(
            &mut self,
            _mem: GuestMemoryMmap,
            queues: Vec<DeviceQueue>,
            _interrupt: Arc<dyn VirtioInterrupt>,
        ) -> Result<(), ActivateError> {
            let mut log = self.log.lock().unwrap();
            if log.refuse {
                return Err(ActivateError::MissingQueue {
                    device: "fake",
                    index: 1,
                });
            }
            log.activations.push(
                queues
                    .iter()
                    .map(|q| (q.index, q.queue.size(), q.queue.desc_table()))
                    .collect(),
            );
            Ok(())
        }
        fn reset(&mut self) {
            self.log.lock().unwrap().resets += 1;
        }
    }

    struct Fixture {
        dev: VirtioPciDevice,
        group: Arc<RecordingInterruptGroup>,
        log: Arc<Mutex<FakeLog>>,
    }

    fn fixture(queues: usize) -> Fixture {
        let log = Arc::new(Mutex::new(FakeLog::default()));
        let fake = FakeDevice {
            sizes: vec![64; queues],
            log: log.clone(),
        };
        let vectors = VirtioPciDevice::msix_vector_count(&fake);
        assert_eq!(usize::from(vectors), queues + 1);
        let group = Arc::new(RecordingInterruptGroup::new(vectors));
        let dev = VirtioPciDevice::new(Box::new(fake), guest_memory(), group.clone()).unwrap();
        Fixture { dev, group, log }
    }

    fn write(d: &mut VirtioPciDevice, offset: u64, len: usize, value: u64) {
        d.bar_write(VIRTIO_BAR, offset, &value.to_le_bytes()[..len]);
    }

    fn read(d: &mut VirtioPciDevice, offset: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        d.bar_read(VIRTIO_BAR, offset, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    fn status(d: &mut VirtioPciDevice) -> u8 {
        read(d, DEVICE_STATUS, 1) as u8
    }

    /// ACKNOWLEDGE, DRIVER, accept VERSION_1 and `low`, FEATURES_OK.
    fn negotiate(d: &mut VirtioPciDevice, low: u32) {
        write(
            d,
            DEVICE_STATUS,
            1,
            u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER),
        );
        write(d, DRIVER_FEATURE_SELECT, 4, 0);
        write(d, DRIVER_FEATURE, 4, u64::from(low));
        write(d, DRIVER_FEATURE_SELECT, 4, 1);
        write(d, DRIVER_FEATURE, 4, 1);
        write(
            d,
            DEVICE_STATUS,
            1,
            u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK),
        );
    }

    fn program_queue(
        d: &mut VirtioPciDevice,
        index: u16,
        size: u16,
        desc: u64,
        avail: u64,
        used: u64,
    ) {
        write(d, QUEUE_SELECT, 2, u64::from(index));
        write(d, QUEUE_SIZE, 2, u64::from(size));
        write(d, QUEUE_DESC, 8, desc);
        write(d, QUEUE_DRIVER, 4, avail);
        write(d, QUEUE_DRIVER + 4, 4, avail >> 32);
        write(d, QUEUE_DEVICE, 8, used);
        write(d, QUEUE_ENABLE, 2, 1);
    }

    fn driver_ok(d: &mut VirtioPciDevice) {
        let s = status(d) & !STATUS_DEVICE_NEEDS_RESET;
        write(d, DEVICE_STATUS, 1, u64::from(s | STATUS_DRIVER_OK));
    }

    /// Enables MSI-X and unmasks every vector.
    fn enable_msix(f: &mut Fixture) {
        let cap = f.dev.msix.lock().unwrap().capability_offset().unwrap();
        f.dev.config_write(cap / 4, 2, &0x8000u16.to_le_bytes());
        for v in 0..u64::from(VirtioPciDevice::msix_vector_count(f.dev.device.as_ref())) {
            write(
                &mut f.dev,
                u64::from(MSIX_TABLE_OFFSET) + v * 16,
                4,
                0xfee0_0000,
            );
            write(&mut f.dev, u64::from(MSIX_TABLE_OFFSET) + v * 16 + 12, 4, 0);
        }
        f.group.take_updates();
    }

    /// The vendor capabilities: (offset, cfg_type).
    fn vendor_caps(d: &mut VirtioPciDevice) -> Vec<(usize, u8)> {
        d.config
            .capabilities()
            .into_iter()
            .filter(|&(id, _)| id == PCI_CAP_ID_VNDR)
            .map(|(_, offset)| (offset, d.config.read_u8(offset + 3)))
            .collect()
    }

    #[test]
    fn identity_bar_and_capabilities() {
        let mut f = fixture(2);
        let d = &mut f.dev;
        assert_eq!(d.config_read(0), 0x1042_1af4);
        assert_eq!(d.config_read(2), 0x0100_0001, "mass storage, revision 1");
        assert_eq!(d.config_read(11), 0x1100_1af4);
        assert_eq!(d.config_read(15) >> 8 & 0xff, 0, "no INTx pin");
        let bars = d.bars();
        assert_eq!(bars.len(), 1);
        assert_eq!(bars[0].config.kind, PciBarKind::Memory64);
        assert_eq!(bars[0].config.size, BAR_SIZE);
        assert!(!bars[0].config.prefetchable);

        let caps = vendor_caps(d);
        let types: Vec<u8> = caps.iter().map(|c| c.1).collect();
        assert_eq!(types, vec![1, 2, 3, 4, 5]);
        let field = |d: &VirtioPciDevice, cap: usize, at: usize| d.config.read_u32(cap + at);
        let notify = caps[1].0;
        assert_eq!(d.config.read_u8(notify + 2), 20, "cap_len");
        assert_eq!(field(d, notify, CAP_OFFSET), NOTIFY_OFFSET as u32);
        assert_eq!(field(d, notify, CAP_LENGTH), 8);
        assert_eq!(field(d, notify, 16), NOTIFY_OFF_MULTIPLIER);
        assert_eq!(field(d, caps[0].0, CAP_LENGTH), COMMON_LEN as u32);
        assert_eq!(field(d, caps[2].0, CAP_OFFSET), ISR_OFFSET as u32);
        assert_eq!(field(d, caps[3].0, CAP_LENGTH), 8);
        assert!(d.config.capabilities().iter().any(|c| c.0 == 0x11), "MSI-X");
        assert_eq!(read(d, NUM_QUEUES, 2), 2);
        assert_eq!(read(d, DEVICE_OFFSET, 8), 0x1122_3344_5566_7788);

        // rng has no device config capability and class "other".
        let rng = Rng::new().unwrap();
        let group = Arc::new(RecordingInterruptGroup::new(2));
        let mut r = VirtioPciDevice::new(Box::new(rng), guest_memory(), group).unwrap();
        assert_eq!(r.config_read(0), 0x1044_1af4);
        assert_eq!(r.config_read(2) >> 24, 0xff);
        let types: Vec<u8> = vendor_caps(&mut r).iter().map(|c| c.1).collect();
        assert_eq!(types, vec![1, 2, 3, 5]);
        assert_eq!(type_name(TYPE_RNG), "virtio-rng");
    }

    #[test]
    fn construction_errors() {
        let log = Arc::new(Mutex::new(FakeLog::default()));
        let small = Arc::new(RecordingInterruptGroup::new(1));
        let fake = FakeDevice {
            sizes: vec![64],
            log: log.clone(),
        };
        let err = VirtioPciDevice::new(Box::new(fake), guest_memory(), small.clone()).unwrap_err();
        assert!(err.to_string().contains("msix_vector_count"), "{err}");
        let none = FakeDevice {
            sizes: Vec::new(),
            log,
        };
        let err = VirtioPciDevice::new(Box::new(none), guest_memory(), small).unwrap_err();
        assert!(matches!(err, VirtioPciError::QueueCount { queues: 0, .. }));
    }

    #[test]
    fn feature_negotiation() {
        let mut f = fixture(1);
        let d = &mut f.dev;
        assert_eq!(read(d, DEVICE_FEATURE, 4), 0b110);
        write(d, DEVICE_FEATURE_SELECT, 4, 1);
        assert_eq!(
            read(d, DEVICE_FEATURE, 4),
            0b11,
            "VERSION_1 and ACCESS_PLATFORM"
        );

        // A legacy driver (no VERSION_1) does not get FEATURES_OK.
        write(d, DEVICE_STATUS, 1, 3);
        write(d, DRIVER_FEATURE, 4, 0b10);
        write(d, DEVICE_STATUS, 1, u64::from(3 | STATUS_FEATURES_OK));
        assert_eq!(status(d), 3);
        assert_eq!(f.log.lock().unwrap().acked, None);
        // Nor does one accepting what was not offered.
        write(d, DEVICE_STATUS, 1, 0);
        negotiate(d, 0b1);
        assert_eq!(status(d), 3);
        // A good one does, and the device learns the features.
        write(d, DEVICE_STATUS, 1, 0);
        negotiate(d, 0b100);
        assert_eq!(status(d), 3 | STATUS_FEATURES_OK);
        assert_eq!(
            f.log.lock().unwrap().acked,
            Some(0b100 | feature(VIRTIO_F_VERSION_1))
        );
        // DRIVER_OK without FEATURES_OK needs a reset.
        write(d, DEVICE_STATUS, 1, 0);
        write(d, DEVICE_STATUS, 1, u64::from(3 | STATUS_DRIVER_OK));
        assert_ne!(status(d) & STATUS_DEVICE_NEEDS_RESET, 0);
        assert!(!d.is_active());
    }

    #[test]
    fn activation_hands_over_enabled_queues_and_reset_clears() {
        let mut f = fixture(3);
        enable_msix(&mut f);
        let d = &mut f.dev;
        negotiate(d, 0);
        write(d, CONFIG_MSIX_VECTOR, 2, 3);
        program_queue(d, 0, 32, 0x1000, 0x2000, 0x3000);
        write(d, QUEUE_MSIX_VECTOR, 2, 0);
        assert_eq!(read(d, QUEUE_MSIX_VECTOR, 2), 0);
        write(d, QUEUE_SELECT, 2, 1);
        write(d, QUEUE_MSIX_VECTOR, 2, 9);
        assert_eq!(
            read(d, QUEUE_MSIX_VECTOR, 2),
            u64::from(NO_VECTOR),
            "no such vector"
        );
        assert_eq!(read(d, QUEUE_NOTIFY_OFF, 2), 1);
        program_queue(d, 2, 64, 0x4000, 0x5000, 0x6000);
        driver_ok(d);
        assert!(d.is_active());
        assert_eq!(
            f.log.lock().unwrap().activations,
            vec![vec![(0, 32, 0x1000), (2, 64, 0x4000)]]
        );
        assert_eq!(status(d), 3 | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        // Setting DRIVER_OK again does not activate twice.
        driver_ok(d);
        assert_eq!(f.log.lock().unwrap().activations.len(), 1);

        write(d, DEVICE_STATUS, 1, 0);
        assert_eq!(f.log.lock().unwrap().resets, 1);
        assert!(!d.is_active());
        assert_eq!(status(d), 0);
        assert_eq!(read(d, CONFIG_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
        write(d, QUEUE_SELECT, 2, 0);
        assert_eq!(read(d, QUEUE_ENABLE, 2), 0);
        assert_eq!(read(d, QUEUE_SIZE, 2), 64);
        assert_eq!(read(d, QUEUE_DESC, 8), 0);
        assert_eq!(read(d, QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
        assert!(f.group.take_triggers().is_empty());
    }

    #[test]
    fn bad_queues_need_reset_and_interrupt() {
        let cases = [
            (64, MEM_SIZE, 0x2000, 0x3000),
            (64, 0x1000, 0x2000, MEM_SIZE - 8),
            (64, 0x1008, 0x2000, 0x3000),
            (48, 0x1000, 0x2000, 0x3000),
            (128, 0x1000, 0x2000, 0x3000),
            (64, 0x1000, u64::MAX - 1, 0x3000),
        ];
        for (size, desc, avail, used) in cases {
            let mut f = fixture(1);
            enable_msix(&mut f);
            let d = &mut f.dev;
            negotiate(d, 0);
            write(d, CONFIG_MSIX_VECTOR, 2, 1);
            program_queue(d, 0, size, desc, avail, used);
            driver_ok(d);
            assert!(!d.is_active(), "{size} {desc:#x} {avail:#x} {used:#x}");
            assert!(f.log.lock().unwrap().activations.is_empty());
            assert_ne!(status(d) & STATUS_DEVICE_NEEDS_RESET, 0);
            assert_eq!(f.group.take_triggers(), vec![1], "config change interrupt");
            // A reset brings the device back.
            write(d, DEVICE_STATUS, 1, 0);
            assert_eq!(status(d), 0);
            negotiate(d, 0);
            program_queue(d, 0, 64, 0x1000, 0x2000, 0x3000);
            driver_ok(d);
            assert!(d.is_active());
        }
        // A device that refuses to start also needs a reset.
        let mut f = fixture(1);
        f.log.lock().unwrap().refuse = true;
        negotiate(&mut f.dev, 0);
        driver_ok(&mut f.dev);
        assert!(!f.dev.is_active());
        assert_ne!(status(&mut f.dev) & STATUS_DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn notify_writes_and_ioeventfd_addresses() {
        let mut f = fixture(2);
        let d = &mut f.dev;
        let events = d.notify_addresses(0xc000_0000).unwrap();
        assert_eq!(
            events.iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![0xc000_3000, 0xc000_3004]
        );
        write(d, NOTIFY_OFFSET + 4, 2, 1);
        assert_eq!(events[1].1.read().unwrap(), 1);
        assert!(events[0].1.read().is_err(), "queue 0 not notified");
        // Any width, and writes past the last queue are ignored.
        write(d, NOTIFY_OFFSET, 4, 0);
        write(d, NOTIFY_OFFSET + 8, 2, 2);
        assert_eq!(events[0].1.read().unwrap(), 1);
        assert!(events[1].1.read().is_err());
        assert_eq!(read(d, NOTIFY_OFFSET, 2), 0);
    }

    #[test]
    fn isr_and_device_config() {
        let mut f = fixture(1);
        let d = &mut f.dev;
        d.interrupt.signal_used_queue(0);
        assert_eq!(read(d, ISR_OFFSET, 1), 1);
        assert_eq!(read(d, ISR_OFFSET, 1), 0, "read clears");
        assert_eq!(read(d, DEVICE_OFFSET + 4, 4), 0x1122_3344);
        write(d, DEVICE_OFFSET + 2, 2, 0xabcd);
        assert_eq!(
            f.log.lock().unwrap().config_writes,
            vec![(2, vec![0xcd, 0xab])]
        );
        // Past the device config: nothing.
        write(d, DEVICE_OFFSET + 8, 1, 1);
        assert_eq!(read(d, DEVICE_OFFSET + 8, 1), 0);
        assert_eq!(f.log.lock().unwrap().config_writes.len(), 1);
    }

    #[test]
    fn pci_cfg_window_reaches_the_bar() {
        let mut f = fixture(3);
        let d = &mut f.dev;
        let cap = vendor_caps(d)
            .iter()
            .find(|c| c.1 == CAP_PCI_CFG)
            .unwrap()
            .0;
        let set = |d: &mut VirtioPciDevice, at: usize, value: u32| {
            d.config_write((cap + at) / 4, 0, &value.to_le_bytes());
        };
        set(d, CAP_BAR, 0); // the whole dword: cap_vndr..bar, only bar is writable
        set(d, CAP_OFFSET, NUM_QUEUES as u32);
        set(d, CAP_LENGTH, 2);
        assert_eq!(d.config_read((cap + CAP_PCI_CFG_DATA) / 4) & 0xffff, 3);
        // Write device_status through the window.
        set(d, CAP_OFFSET, DEVICE_STATUS as u32);
        set(d, CAP_LENGTH, 1);
        set(d, CAP_PCI_CFG_DATA, 1);
        assert_eq!(status(d), 1);
        // Misaligned or oversized windows do nothing.
        set(d, CAP_OFFSET, 0x13);
        set(d, CAP_LENGTH, 2);
        set(d, CAP_PCI_CFG_DATA, 0);
        set(d, CAP_LENGTH, 8);
        set(d, CAP_PCI_CFG_DATA, 0);
        assert_eq!(status(d), 1);
        assert_eq!(
            d.config.read_u8(cap + 3),
            CAP_PCI_CFG,
            "cfg_type is read-only"
        );
    }

    #[test]
    fn end_to_end_rng_through_the_transport() {
        let mem = guest_memory();
        let rng = Rng::new().unwrap();
        let vectors = VirtioPciDevice::msix_vector_count(&rng);
        let group = Arc::new(RecordingInterruptGroup::new(vectors));
        let mut f = Fixture {
            dev: VirtioPciDevice::new(Box::new(rng), mem.clone(), group.clone()).unwrap(),
            group,
            log: Arc::default(),
        };
        enable_msix(&mut f);
        let d = &mut f.dev;
        let mut tq = TestQueue::new(&mem, 16);
        negotiate(d, 0);
        program_queue(
            d,
            0,
            16,
            tq.desc_addr().0,
            tq.avail_addr().0,
            tq.used_addr().0,
        );
        write(d, QUEUE_MSIX_VECTOR, 2, 1);
        driver_ok(d);
        assert!(d.is_active());
        tq.add_chain(&mem, &[(0x1000, 32, true)]);
        // No ioeventfd: the notify write reaches the BAR.
        write(d, NOTIFY_OFFSET, 2, 0);
        assert!(wait_for(|| tq.used(&mem) == vec![(0, 32)]));
        assert!(wait_for(|| f.group.take_triggers() == vec![1]));
        let mut bytes = [0u8; 32];
        mem.read_slice(&mut bytes, GuestAddress(0x1000)).unwrap();
        assert_ne!(bytes, [0; 32]);
        // Reset joins the thread; a later notify is not served.
        write(d, DEVICE_STATUS, 1, 0);
        tq.add_chain(&mem, &[(0x2000, 32, true)]);
        write(d, NOTIFY_OFFSET, 2, 0);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(tq.used(&mem).len(), 1);
    }

    #[test]
    fn corrupt_ring_sets_needs_reset_from_the_worker() {
        let mem = guest_memory();
        let rng = Rng::new().unwrap();
        let group = Arc::new(RecordingInterruptGroup::new(2));
        let mut f = Fixture {
            dev: VirtioPciDevice::new(Box::new(rng), mem.clone(), group.clone()).unwrap(),
            group,
            log: Arc::default(),
        };
        enable_msix(&mut f);
        let d = &mut f.dev;
        let tq = TestQueue::new(&mem, 16);
        negotiate(d, 0);
        write(d, CONFIG_MSIX_VECTOR, 2, 0);
        program_queue(
            d,
            0,
            16,
            tq.desc_addr().0,
            tq.avail_addr().0,
            tq.used_addr().0,
        );
        driver_ok(d);
        // avail idx 100 ahead of a 16-entry queue.
        mem.write_obj(100u16, tq.avail_addr().unchecked_add(2))
            .unwrap();
        write(d, NOTIFY_OFFSET, 2, 0);
        let status_of = |d: &mut VirtioPciDevice| status(d);
        assert!(wait_for(|| status_of(d) & STATUS_DEVICE_NEEDS_RESET != 0));
        assert!(wait_for(|| f.group.take_triggers() == vec![0]));
        assert!(tq.used(&mem).is_empty());
    }

    #[test]
    fn garbage_accesses_never_panic() {
        let mut f = fixture(2);
        enable_msix(&mut f);
        let d = &mut f.dev;
        let mut x: u16 = 0x1234;
        let mut next = || {
            // xorshift16
            x ^= x << 7;
            x ^= x >> 9;
            x ^= x << 8;
            u64::from(x)
        };
        for _ in 0..20_000 {
            let offset = match next() % 4 {
                0 => next() % BAR_SIZE,
                1 => next() % 0x40,
                2 => u64::MAX - next() % 8,
                _ => NOTIFY_OFFSET + next() % 16,
            };
            let len = [1usize, 2, 3, 4, 8, 16][(next() % 6) as usize];
            let value = (next() << 48) | (next() << 32) | (next() << 16) | next();
            let mut bytes = value.to_le_bytes().repeat(2);
            bytes.truncate(len);
            if next() % 2 == 0 {
                d.bar_write(VIRTIO_BAR, offset, &bytes);
            } else {
                d.bar_read(VIRTIO_BAR, offset, &mut bytes);
            }
            let reg = (next() % 1100) as usize;
            d.config_write(reg, next() % 5, &bytes[..len.min(4)]);
            d.config_read(reg);
            d.bar_read(3, offset, &mut bytes);
            d.bar_write(1, offset, &bytes);
        }
        // Whatever happened, a reset brings the device to a known state.
        write(d, DEVICE_STATUS, 1, 0);
        assert_eq!(status(d), 0);
    }
}
