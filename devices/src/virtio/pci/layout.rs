//! Where things are: the one BAR of a virtio-pci function and the vendor
//! capabilities (`struct virtio_pci_cap`) that point into it.
//!
//! BAR 0 (64-bit, non-prefetchable, [`BAR_SIZE`] bytes), one 4 KiB page per
//! area so each could be mapped or trapped on its own:
//!
//! | offset   | area                                     |
//! |----------|------------------------------------------|
//! | 0x0000   | common configuration (0x38 bytes)        |
//! | 0x1000   | ISR status (1 byte, read clears)         |
//! | 0x2000   | device configuration                     |
//! | 0x3000   | notify: queue `i` at `i * 4`             |
//! | 0x4000   | MSI-X table                              |
//! | 0x5000   | MSI-X PBA                                |
//!
//! What this module does not do: it holds no state; the transport does.

use crate::pci::MsixLayout;

/// The BAR holding every virtio area and the MSI-X table.
pub const VIRTIO_BAR: usize = 0;
/// Size of [`VIRTIO_BAR`].
pub const BAR_SIZE: u64 = 0x8000;

/// Offset of the common configuration.
pub const COMMON_OFFSET: u64 = 0x0000;
/// Length of the common configuration (virtio 1.1 layout, up to
/// `queue_device`).
pub const COMMON_LEN: u64 = 0x38;
/// Offset of the ISR status byte.
pub const ISR_OFFSET: u64 = 0x1000;
/// Length of the ISR area.
pub const ISR_LEN: u64 = 1;
/// Offset of the device configuration.
pub const DEVICE_OFFSET: u64 = 0x2000;
/// Largest device configuration.
pub const DEVICE_MAX_LEN: u64 = 0x1000;
/// Offset of the notify area.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes between the notify addresses of two queues.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
/// Offset of the MSI-X table.
pub const MSIX_TABLE_OFFSET: u32 = 0x4000;
/// Offset of the MSI-X PBA.
pub const MSIX_PBA_OFFSET: u32 = 0x5000;
/// Most queues a device may have: the notify page and the MSI-X table page
/// (one vector per queue plus the config vector) must not overflow.
pub const MAX_QUEUES: usize = 255;

/// Capability ID of vendor-specific capabilities.
pub const PCI_CAP_ID_VNDR: u8 = 0x09;
/// `cfg_type` of the common configuration.
pub const CAP_COMMON_CFG: u8 = 1;
/// `cfg_type` of the notify area.
pub const CAP_NOTIFY_CFG: u8 = 2;
/// `cfg_type` of the ISR status.
pub const CAP_ISR_CFG: u8 = 3;
/// `cfg_type` of the device configuration.
pub const CAP_DEVICE_CFG: u8 = 4;
/// `cfg_type` of the PCI configuration access window.
pub const CAP_PCI_CFG: u8 = 5;

/// Offset of `bar` in a `virtio_pci_cap`, from its ID byte.
pub const CAP_BAR: usize = 4;
/// Offset of `offset` in a `virtio_pci_cap`.
pub const CAP_OFFSET: usize = 8;
/// Offset of `length` in a `virtio_pci_cap`.
pub const CAP_LENGTH: usize = 12;
/// Offset of `pci_cfg_data` in a `virtio_pci_cfg_cap`.
pub const CAP_PCI_CFG_DATA: usize = 16;

/// The MSI-X layout for a device with `queues` queues: one vector per queue
/// and one for configuration changes.
pub fn msix_layout(queues: usize) -> MsixLayout {
    MsixLayout {
        vectors: queues.min(MAX_QUEUES) as u16 + 1,
        table_bar: VIRTIO_BAR as u8,
        table_offset: MSIX_TABLE_OFFSET,
        pba_bar: VIRTIO_BAR as u8,
        pba_offset: MSIX_PBA_OFFSET,
    }
}

/// The body (everything after `cap_vndr` and `cap_next`) of a
/// `virtio_pci_cap` of `cfg_type` for `[offset, offset + length)` of the
/// BAR, followed by `extra` (the notify multiplier or the PCI_CFG data).
pub fn cap_body(cfg_type: u8, offset: u64, length: u64, extra: &[u8]) -> Vec<u8> {
    let cap_len = 16 + extra.len();
    let mut body = Vec::with_capacity(cap_len - 2);
    body.push(cap_len as u8);
    body.push(cfg_type);
    body.push(VIRTIO_BAR as u8);
    // id, padding[2]
    body.extend_from_slice(&[0, 0, 0]);
    // Offsets and lengths are below BAR_SIZE, so they fit in 32 bits.
    body.extend_from_slice(&(offset as u32).to_le_bytes());
    body.extend_from_slice(&(length as u32).to_le_bytes());
    body.extend_from_slice(extra);
    body
}

/// The write mask of the PCI_CFG capability body: `bar`, `offset`,
/// `length` and `pci_cfg_data` are the driver's.
pub fn pci_cfg_writable() -> Vec<u8> {
    let mut mask = vec![0u8; CAP_PCI_CFG_DATA + 4 - 2];
    mask[CAP_BAR - 2] = 0xff;
    mask[CAP_OFFSET - 2..].fill(0xff);
    mask
}

/// Which area of the BAR an access of `len` bytes at `offset` falls in,
/// with the offset inside that area. `None` if it hits no area or
/// straddles an area's end.
pub fn area(offset: u64, len: usize, device_len: u64, queues: usize) -> Option<(Area, u64)> {
    let areas = [
        (Area::Common, COMMON_OFFSET, COMMON_LEN),
        (Area::Isr, ISR_OFFSET, ISR_LEN),
        (Area::Device, DEVICE_OFFSET, device_len),
        (
            Area::Notify,
            NOTIFY_OFFSET,
            queues as u64 * u64::from(NOTIFY_OFF_MULTIPLIER),
        ),
    ];
    let end = offset.checked_add(len as u64)?;
    areas.into_iter().find_map(|(area, start, area_len)| {
        (offset >= start && end <= start + area_len).then(|| (area, offset - start))
    })
}

/// An area of the virtio BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Area {
    /// Common configuration.
    Common,
    /// ISR status.
    Isr,
    /// Device configuration.
    Device,
    /// Queue notifications.
    Notify,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn areas_do_not_overlap_the_msix_table() {
        let layout = msix_layout(MAX_QUEUES + 10);
        assert_eq!(layout.vectors, 256);
        assert!(u64::from(MSIX_TABLE_OFFSET) + layout.table_len() <= u64::from(MSIX_PBA_OFFSET));
        assert!(u64::from(MSIX_PBA_OFFSET) + layout.pba_len() <= BAR_SIZE);
        let notify_end = NOTIFY_OFFSET + MAX_QUEUES as u64 * u64::from(NOTIFY_OFF_MULTIPLIER);
        assert!(notify_end <= u64::from(MSIX_TABLE_OFFSET));
        const { assert!(DEVICE_OFFSET + DEVICE_MAX_LEN <= NOTIFY_OFFSET) };
    }

    #[test]
    fn area_lookup() {
        assert_eq!(area(0x14, 1, 8, 2), Some((Area::Common, 0x14)));
        assert_eq!(area(0x34, 4, 8, 2), Some((Area::Common, 0x34)));
        assert_eq!(area(0x36, 4, 8, 2), None, "straddles the end");
        assert_eq!(area(0x1000, 1, 8, 2), Some((Area::Isr, 0)));
        assert_eq!(area(0x1000, 4, 8, 2), None);
        assert_eq!(area(0x2004, 4, 8, 2), Some((Area::Device, 4)));
        assert_eq!(area(0x2008, 1, 8, 2), None);
        assert_eq!(area(0x2000, 1, 0, 2), None, "no device config");
        assert_eq!(area(0x3004, 2, 8, 2), Some((Area::Notify, 4)));
        assert_eq!(area(0x3008, 2, 8, 2), None);
        assert_eq!(area(u64::MAX, 2, 8, 2), None);
    }

    #[test]
    fn capability_bodies() {
        let body = cap_body(CAP_NOTIFY_CFG, NOTIFY_OFFSET, 8, &4u32.to_le_bytes());
        assert_eq!(body.len(), 18);
        assert_eq!(body[0], 20, "cap_len counts the whole capability");
        assert_eq!(body[1], CAP_NOTIFY_CFG);
        assert_eq!(&body[6..10], &0x3000u32.to_le_bytes());
        assert_eq!(&body[14..18], &4u32.to_le_bytes());
        assert_eq!(pci_cfg_writable().len(), 18);
    }
}
