//! The guest's view of a passed-through function's config space.
//!
//! - **Header (0x00..0x40)**: a [`PciConfiguration`] shadow built from the device's
//!   identity registers and BAR sizes. BAR sizing and placement, the status register and
//!   the scratch registers are answered from it; guest writes never reach the device's BAR
//!   registers. The function is presented as single-function (header type 0), with no
//!   interrupt pin (INTx is not supported) and no expansion ROM (reads 0).
//! - **Capabilities (0x40..0x100)**: the device's list, filtered. Each capability stays at
//!   its device offset and the next pointers are rewritten to skip hidden ones:
//!   - MSI-X (0x11) is emulated (see `msix`), and MSI (0x05) too when the device has no
//!     MSI-X (see `msi`); with MSI-X present MSI is hidden;
//!   - vendor-specific (0x09), power management (0x01) and PCI Express (0x10) are passed:
//!     reads come live from the device (a virtio driver in the guest needs the virtio
//!     capabilities' cfg_type/bar/offset/length, and the PCI-cfg access window is live
//!     device state), writes are forwarded except to the ID and next bytes; for PCIe only
//!     Device Control and Device Control 2 are writable. The kernel's vfio-pci applies its
//!     own per-field write permissions on top (e.g. an FLR request becomes a VFIO reset);
//!   - everything else is hidden: unlinked, and its bytes read 0.
//! - **Extended space (0x100..0x1000)**: hidden, reads 0 (so the guest sees no extended
//!   capabilities: no AER, ACS, SR-IOV, ...).
//!
//! Not here: what the emulated capabilities do (the `msix` and `msi` glue), BAR contents.

use std::ops::Range;

use devices::pci::{BarReprogram, PciBarConfig, PciConfigError, PciConfiguration, PciIds};

/// Capability ID of power management.
pub const CAP_ID_PM: u8 = 0x01;
/// Capability ID of MSI.
pub const CAP_ID_MSI: u8 = 0x05;
/// Capability ID of vendor-specific capabilities (virtio uses them).
pub const CAP_ID_VENDOR: u8 = 0x09;
/// Capability ID of PCI Express.
pub const CAP_ID_EXP: u8 = 0x10;
/// Capability ID of MSI-X.
pub const CAP_ID_MSIX: u8 = 0x11;

const CONFIG_SPACE: usize = 256;
const FIRST_CAP: usize = 0x40;
const CAP_POINTER: usize = 0x34;
const STATUS_CAP_LIST: u16 = 1 << 4;
/// Read-only status bits worth mirroring: capability list, 66 MHz, fast back-to-back,
/// DEVSEL timing.
const STATUS_MIRRORED: u16 = STATUS_CAP_LIST | 1 << 5 | 1 << 7 | 3 << 9;

/// What the guest gets of a device capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapHandling {
    /// Read live from the device; writes forwarded where allowed.
    Passed,
    /// Emulated by the VMM (MSI-X, or MSI without MSI-X).
    Emulated,
    /// Unlinked from the list; reads 0.
    Hidden,
}

/// A capability of the device and what the guest gets of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceCapability {
    /// Capability ID.
    pub id: u8,
    /// Offset in config space (the same for the guest).
    pub offset: usize,
    /// Bytes, header included.
    pub len: usize,
    /// What the guest gets.
    pub handling: CapHandling,
}

impl DeviceCapability {
    /// Byte ranges (relative to the capability) a guest write may change on the device.
    fn writable(&self) -> Vec<Range<usize>> {
        match (self.handling, self.id) {
            (CapHandling::Passed, CAP_ID_EXP) => vec![0x08..0x0a, 0x28..0x2a],
            (CapHandling::Passed, _) => std::iter::once(2..self.len).collect(),
            _ => Vec::new(),
        }
    }
}

/// The capabilities of a conventional config space, in list order: (id, offset).
/// Stops at a pointer into the header, past the space, or a loop.
fn walk(config: &[u8]) -> Vec<(u8, usize)> {
    let mut found: Vec<(u8, usize)> = Vec::new();
    let mut ptr = usize::from(config.get(CAP_POINTER).copied().unwrap_or(0) & !3);
    while (FIRST_CAP..CONFIG_SPACE - 1).contains(&ptr) && !found.iter().any(|c| c.1 == ptr) {
        found.push((config[ptr], ptr));
        ptr = usize::from(config[ptr + 1] & !3);
    }
    found
}

/// Bytes of the capability `id` at `offset` (clamped to the config space).
fn cap_len(config: &[u8], id: u8, offset: usize) -> usize {
    let byte = |o: usize| config.get(offset + o).copied().unwrap_or(0);
    let len = match id {
        CAP_ID_PM => 8,
        CAP_ID_MSI => {
            let control = u16::from_le_bytes([byte(2), byte(3)]);
            10 + if control & 1 << 7 != 0 { 4 } else { 0 }
                + if control & 1 << 8 != 0 { 10 } else { 0 }
        }
        CAP_ID_VENDOR => usize::from(byte(2)).max(3),
        CAP_ID_EXP => {
            if byte(2) & 0xf == 1 {
                0x14
            } else {
                0x3c
            }
        }
        CAP_ID_MSIX => 12,
        _ => 2,
    };
    len.min(CONFIG_SPACE - offset)
}

/// The device's capabilities and what the guest gets of each (see the module docs).
pub fn classify(config: &[u8]) -> Vec<DeviceCapability> {
    let list = walk(config);
    let has_msix = list.iter().any(|c| c.0 == CAP_ID_MSIX);
    list.into_iter()
        .map(|(id, offset)| DeviceCapability {
            id,
            offset,
            len: cap_len(config, id, offset),
            handling: match id {
                CAP_ID_MSIX => CapHandling::Emulated,
                CAP_ID_MSI if !has_msix => CapHandling::Emulated,
                CAP_ID_PM | CAP_ID_VENDOR | CAP_ID_EXP => CapHandling::Passed,
                _ => CapHandling::Hidden,
            },
        })
        .collect()
}

/// Who answers a byte of the capability area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteOwner {
    /// Nobody: reads 0, writes dropped.
    None,
    /// The header byte (ID or next pointer) of kept capability `cap`: virtual.
    Header {
        /// Index into [`VirtualConfig::capabilities`].
        cap: usize,
        /// The byte's value.
        value: u8,
    },
    /// The body of capability `cap`, at `rel` bytes from its start.
    Body {
        /// Index into [`VirtualConfig::capabilities`].
        cap: usize,
        /// Offset from the capability's start.
        rel: usize,
    },
}

/// The virtualized config space (see the module docs).
///
/// Invariant: `owner` has 256 entries; a byte is owned by at most one kept capability (the
/// first in list order, should the device's capabilities overlap).
#[derive(Debug)]
pub struct VirtualConfig {
    shadow: PciConfiguration,
    caps: Vec<DeviceCapability>,
    owner: Vec<ByteOwner>,
}

impl VirtualConfig {
    /// Builds the guest's view from the device's first 256 config bytes and the BARs to
    /// expose.
    pub fn new(device: &[u8], bars: &[PciBarConfig]) -> Result<VirtualConfig, PciConfigError> {
        let mut d = [0u8; CONFIG_SPACE];
        let n = device.len().min(CONFIG_SPACE);
        d[..n].copy_from_slice(&device[..n]);
        let u16_at = |o: usize| u16::from_le_bytes([d[o], d[o + 1]]);
        let mut shadow = PciConfiguration::new(&PciIds {
            vendor_id: u16_at(0),
            device_id: u16_at(2),
            revision_id: d[8],
            prog_if: d[9],
            subclass: d[10],
            class_code: d[11],
            subsystem_vendor_id: u16_at(0x2c),
            subsystem_id: u16_at(0x2e),
        });
        for bar in bars {
            shadow.add_bar(*bar)?;
        }
        let caps = classify(&d);
        let kept: Vec<usize> = (0..caps.len())
            .filter(|&i| caps[i].handling != CapHandling::Hidden)
            .collect();
        let mut owner = vec![ByteOwner::None; CONFIG_SPACE];
        for (k, &i) in kept.iter().enumerate() {
            let c = caps[i];
            let next = kept.get(k + 1).map_or(0, |&n| caps[n].offset as u8);
            for rel in 0..c.len {
                let slot = &mut owner[c.offset + rel];
                if *slot != ByteOwner::None {
                    continue;
                }
                *slot = match rel {
                    0 => ByteOwner::Header {
                        cap: i,
                        value: c.id,
                    },
                    1 => ByteOwner::Header {
                        cap: i,
                        value: next,
                    },
                    _ => ByteOwner::Body { cap: i, rel },
                };
            }
        }
        let first = kept.first().map_or(0, |&i| caps[i].offset as u8);
        shadow.set_bytes(CAP_POINTER, &[first])?;
        let mut status = u16_at(6) & STATUS_MIRRORED & !STATUS_CAP_LIST;
        if first != 0 {
            status |= STATUS_CAP_LIST;
        }
        shadow.set_bytes(6, &status.to_le_bytes())?;
        Ok(VirtualConfig {
            shadow,
            caps,
            owner,
        })
    }

    /// The device's capabilities and their handling.
    pub fn capabilities(&self) -> &[DeviceCapability] {
        &self.caps
    }

    /// The first capability with `id` that is emulated.
    pub fn emulated(&self, id: u8) -> Option<DeviceCapability> {
        self.caps
            .iter()
            .copied()
            .find(|c| c.id == id && c.handling == CapHandling::Emulated)
    }

    /// Who answers byte `offset` (< 256) of the capability area.
    pub fn owner(&self, offset: usize) -> ByteOwner {
        self.owner.get(offset).copied().unwrap_or(ByteOwner::None)
    }

    /// The header shadow (BARs, command, status).
    pub fn shadow(&self) -> &PciConfiguration {
        &self.shadow
    }

    /// Applies a guest write to the header (registers 0..16) and returns the BAR changes.
    pub fn write_header(&mut self, reg: usize, offset: u64, data: &[u8]) -> Vec<BarReprogram> {
        self.shadow.write_reg(reg, offset, data)
    }

    /// The byte ranges (absolute offsets) of `offset..offset+len` that a guest write may
    /// forward to the device, given capability `cap` owns them.
    pub fn device_writable(&self, cap: usize, range: Range<usize>) -> Vec<Range<usize>> {
        let Some(c) = self.caps.get(cap) else {
            return Vec::new();
        };
        c.writable()
            .into_iter()
            .filter_map(|w| {
                let start = range.start.max(c.offset + w.start);
                let end = range.end.min(c.offset + w.end);
                (start < end).then_some(start..end)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_vfio::FakeVfioDevice;
    use crate::vfio_device::{VfioDevice, VFIO_PCI_CONFIG_REGION_INDEX};
    use devices::pci::PciBarKind;

    fn config_of(d: &FakeVfioDevice) -> Vec<u8> {
        let mut b = vec![0u8; 256];
        d.read(VFIO_PCI_CONFIG_REGION_INDEX, 0, &mut b).unwrap();
        b
    }

    #[test]
    fn virtio_caps_are_kept_and_others_hidden() {
        let caps = classify(&config_of(&FakeVfioDevice::virtio_blk()));
        let summary: Vec<(u8, CapHandling)> = caps.iter().map(|c| (c.id, c.handling)).collect();
        use CapHandling::*;
        assert_eq!(
            summary,
            vec![
                (CAP_ID_MSIX, Emulated),
                (9, Passed),
                (9, Passed),
                (9, Passed),
                (9, Passed),
                (9, Passed),
                (CAP_ID_PM, Passed),
                (CAP_ID_EXP, Passed),
                (0x13, Hidden)
            ]
        );
        assert_eq!(caps[4].len, 20, "notify cap carries its multiplier");
        assert_eq!(caps[7].len, 0x3c);
        let edu = classify(&config_of(&FakeVfioDevice::edu()));
        assert_eq!(edu.len(), 1);
        assert_eq!(
            (edu[0].id, edu[0].len, edu[0].handling),
            (CAP_ID_MSI, 14, Emulated)
        );
    }

    #[test]
    fn msi_is_hidden_next_to_msix_and_lists_are_relinked() {
        let mut c = vec![0u8; 256];
        c[CAP_POINTER] = 0x40;
        c[0x40..0x42].copy_from_slice(&[CAP_ID_MSI, 0x50]);
        c[0x50..0x52].copy_from_slice(&[0x13, 0x60]);
        c[0x60..0x62].copy_from_slice(&[CAP_ID_MSIX, 0x70]);
        c[0x70..0x72].copy_from_slice(&[CAP_ID_VENDOR, 0x40]); // loops back
        c[0x72] = 8;
        let v = VirtualConfig::new(&c, &[]).unwrap();
        let handling: Vec<CapHandling> = v.capabilities().iter().map(|c| c.handling).collect();
        assert_eq!(
            handling,
            vec![
                CapHandling::Hidden,
                CapHandling::Hidden,
                CapHandling::Emulated,
                CapHandling::Passed
            ]
        );
        assert_eq!(v.shadow().read_u8(CAP_POINTER), 0x60);
        assert_eq!(
            v.owner(0x61),
            ByteOwner::Header {
                cap: 2,
                value: 0x70
            }
        );
        assert_eq!(v.owner(0x71), ByteOwner::Header { cap: 3, value: 0 });
        assert_eq!(v.owner(0x41), ByteOwner::None);
        assert_eq!(v.owner(0x74), ByteOwner::Body { cap: 3, rel: 4 });
        assert_eq!(
            v.owner(0x78),
            ByteOwner::None,
            "past the vendor cap's length"
        );
        assert_eq!(v.device_writable(3, 0x70..0x78), vec![0x72..0x78]);
        assert!(
            v.device_writable(2, 0x60..0x6c).is_empty(),
            "emulated: not forwarded"
        );
    }

    #[test]
    fn pcie_writes_limited_to_device_control() {
        let v = VirtualConfig::new(&config_of(&FakeVfioDevice::virtio_blk()), &[]).unwrap();
        let (i, exp) = v
            .capabilities()
            .iter()
            .enumerate()
            .find(|(_, c)| c.id == CAP_ID_EXP)
            .unwrap();
        let o = exp.offset;
        assert_eq!(
            v.device_writable(i, o..o + 0x3c),
            vec![o + 8..o + 10, o + 0x28..o + 0x2a]
        );
        assert_eq!(v.device_writable(i, o + 4..o + 8), vec![]);
    }

    #[test]
    fn header_identity_bars_and_no_interrupt_pin() {
        let d = config_of(&FakeVfioDevice::virtio_blk());
        let bar = PciBarConfig {
            index: 4,
            kind: PciBarKind::Memory64,
            size: 0x4000,
            prefetchable: true,
        };
        let v = VirtualConfig::new(&d, &[bar]).unwrap();
        let s = v.shadow();
        assert_eq!(s.read_reg(0), 0x1042_1af4);
        assert_eq!(s.read_u8(0x0b), 0x01, "class");
        assert_eq!(s.read_u8(0x3d), 0, "no INTx pin");
        assert_eq!(s.read_u8(0x0e), 0, "single function");
        assert_ne!(s.status() & STATUS_CAP_LIST, 0);
        assert_eq!(s.read_u32(0x20), 0b1100, "64-bit prefetchable BAR 4");
        // Garbage devices do not panic: no list, odd pointers.
        let mut junk = vec![0xffu8; 256];
        junk[CAP_POINTER] = 0xff;
        let v = VirtualConfig::new(&junk, &[]).unwrap();
        assert_eq!(v.capabilities().len(), 1);
        let v = VirtualConfig::new(&[], &[]).unwrap();
        assert!(v.capabilities().is_empty());
        assert_eq!(v.shadow().status() & STATUS_CAP_LIST, 0);
    }
}
