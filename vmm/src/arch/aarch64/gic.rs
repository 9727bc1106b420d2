//! The in-kernel interrupt controller: a KVM-emulated GICv3 with an ITS.
//!
//! Order (KVM's rules): create every vCPU (and `KVM_ARM_VCPU_INIT` it) first, then
//! [`Gic::new`], which creates the vGICv3 and the vITS, places their frames at the
//! [`layout`](super::layout) addresses, sets the number of interrupts and finally sends
//! `KVM_DEV_ARM_VGIC_CTRL_INIT` to both. After that no vCPU may be added, and only then does
//! KVM accept irqfds (`KVM_IRQFD` fails with EAGAIN before the vGIC is initialised).
//!
//! After init KVM routes GSI n to SPI n (INTID 32 + n) for every SPI; a later
//! `KVM_SET_GSI_ROUTING` replaces that whole table, so it must repeat those entries for the
//! SPIs still in use (the UART's).
//!
//! What this module does not do: it does not describe the GIC to the guest (see
//! [`fdt`](super::fdt)), nor set up MSI routes.

use kvm_bindings::{
    kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_ITS,
    kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3, KVM_DEV_ARM_VGIC_CTRL_INIT,
    KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
    KVM_VGIC_ITS_ADDR_TYPE, KVM_VGIC_V3_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_REDIST,
};
use kvm_ioctls::{DeviceFd, VmFd};

use super::layout;

/// Errors creating the vGIC.
#[derive(Debug, thiserror::Error)]
pub enum GicError {
    /// KVM cannot emulate a GICv3.
    #[error(
        "the host KVM cannot emulate a GICv3 (KVM_CREATE_DEVICE ARM_VGIC_V3: {0}); this VMM \
         needs a host with a GICv3 interrupt controller and an arm64 KVM that supports it"
    )]
    NoGicV3(kvm_ioctls::Error),
    /// KVM has no ITS emulation.
    #[error(
        "the host KVM has no GICv3 ITS emulation (KVM_CREATE_DEVICE ARM_VGIC_ITS: {0}); use a \
         host kernel whose KVM provides the vITS (needed for MSIs of passthrough devices)"
    )]
    NoIts(kvm_ioctls::Error),
    /// KVM_CREATE_DEVICE failed for another reason.
    #[error("KVM_CREATE_DEVICE {what} failed: {source}")]
    Create {
        /// Which device.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// More vCPUs than the redistributor area holds.
    #[error(
        "{0} vCPUs do not fit in the GICv3 redistributor area (at most {max}); use fewer vCPUs",
        max = layout::MAX_VCPUS
    )]
    TooManyVcpus(u32),
    /// No vCPU at all.
    #[error("the GICv3 needs at least one vCPU; create the vCPUs before the GIC")]
    NoVcpus,
    /// A device attribute was refused.
    #[error("KVM_SET_DEVICE_ATTR {what} failed: {source}{hint}")]
    Attr {
        /// Which attribute.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
        /// What to check.
        hint: &'static str,
    },
}

/// First GSI free for MSI routes: GSIs below it are the SPIs of KVM's default routing.
pub const FIRST_MSI_GSI: u32 = layout::GIC_NR_SPIS;

/// The routes KVM installs at `CTRL_INIT`, as `(gsi, pin)` of irqchip 0: GSI n to SPI n for
/// every SPI. A full `KVM_SET_GSI_ROUTING` table must repeat them (at least the UART's,
/// [`layout::SERIAL_SPI`]) or their irqfds stop working.
pub fn default_spi_routes() -> Vec<(u32, u32)> {
    (0..layout::GIC_NR_SPIS).map(|n| (n, n)).collect()
}

/// The vGICv3 and its ITS; the device fds are kept for later state access (the devices live
/// as long as the VM either way).
#[derive(Debug)]
pub struct Gic {
    gic: DeviceFd,
    its: DeviceFd,
    vcpus: u32,
}

/// What to check when a step fails.
const HINT_INIT: &str = " (all vCPUs must be created and initialised before the GIC, and \
                         none may have run)";

fn set_attr(
    dev: &DeviceFd,
    what: &'static str,
    group: u32,
    attr: u32,
    addr: u64,
    hint: &'static str,
) -> Result<(), GicError> {
    let a = kvm_device_attr {
        group,
        attr: u64::from(attr),
        addr,
        flags: 0,
    };
    dev.set_device_attr(&a)
        .map_err(|source| GicError::Attr { what, source, hint })
}

/// Sets a device attribute whose value KVM reads from memory (`addr` points at `value`).
fn set_attr_value<T>(
    dev: &DeviceFd,
    what: &'static str,
    group: u32,
    attr: u32,
    value: &T,
) -> Result<(), GicError> {
    // The pointer is only read by KVM during the ioctl, while `value` is borrowed.
    set_attr(dev, what, group, attr, value as *const T as u64, "")
}

/// Creates a KVM device; ENODEV (device type not registered) becomes `missing`.
fn create(
    vm: &VmFd,
    type_: u32,
    what: &'static str,
    missing: fn(kvm_ioctls::Error) -> GicError,
) -> Result<DeviceFd, GicError> {
    let mut dev = kvm_create_device {
        type_,
        fd: 0,
        flags: 0,
    };
    vm.create_device(&mut dev).map_err(|source| {
        if source.errno() == libc::ENODEV {
            missing(source)
        } else {
            GicError::Create { what, source }
        }
    })
}

impl Gic {
    /// Creates, places and initialises the vGICv3 and the vITS for `vcpus` vCPUs, which must
    /// all exist already.
    pub fn new(vm: &VmFd, vcpus: u32) -> Result<Self, GicError> {
        if vcpus == 0 {
            return Err(GicError::NoVcpus);
        }
        if vcpus > layout::MAX_VCPUS {
            return Err(GicError::TooManyVcpus(vcpus));
        }
        let gic = create(
            vm,
            kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
            "ARM_VGIC_V3",
            GicError::NoGicV3,
        )?;
        set_attr_value(
            &gic,
            "GICv3 distributor address",
            KVM_DEV_ARM_VGIC_GRP_ADDR,
            KVM_VGIC_V3_ADDR_TYPE_DIST,
            &layout::GIC_DIST_START.0,
        )?;
        set_attr_value(
            &gic,
            "GICv3 redistributor address",
            KVM_DEV_ARM_VGIC_GRP_ADDR,
            KVM_VGIC_V3_ADDR_TYPE_REDIST,
            &layout::GIC_REDIST_START.0,
        )?;
        set_attr_value(
            &gic,
            "GICv3 number of interrupts",
            KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
            0,
            &layout::GIC_NR_IRQS,
        )?;

        let its = create(
            vm,
            kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_ITS,
            "ARM_VGIC_ITS",
            GicError::NoIts,
        )?;
        set_attr_value(
            &its,
            "GICv3 ITS address",
            KVM_DEV_ARM_VGIC_GRP_ADDR,
            KVM_VGIC_ITS_ADDR_TYPE,
            &layout::GIC_ITS_START.0,
        )?;

        set_attr(
            &gic,
            "GICv3 CTRL_INIT",
            KVM_DEV_ARM_VGIC_GRP_CTRL,
            KVM_DEV_ARM_VGIC_CTRL_INIT,
            0,
            HINT_INIT,
        )?;
        set_attr(
            &its,
            "GICv3 ITS CTRL_INIT",
            KVM_DEV_ARM_VGIC_GRP_CTRL,
            KVM_DEV_ARM_VGIC_CTRL_INIT,
            0,
            "",
        )?;
        Ok(Gic { gic, its, vcpus })
    }

    /// The vGICv3 device.
    pub fn gic_fd(&self) -> &DeviceFd {
        &self.gic
    }

    /// The vITS device.
    pub fn its_fd(&self) -> &DeviceFd {
        &self.its
    }

    /// How many vCPUs (redistributors) the GIC was sized for.
    pub fn vcpus(&self) -> u32 {
        self.vcpus
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_what_to_do() {
        let e = GicError::NoIts(kvm_ioctls::Error::new(libc::ENODEV));
        assert!(e.to_string().contains("no GICv3 ITS emulation"), "{e}");
        let e = GicError::TooManyVcpus(600);
        assert!(e.to_string().contains("at most 512"), "{e}");
        let e = GicError::Attr {
            what: "GICv3 CTRL_INIT",
            source: kvm_ioctls::Error::new(libc::EBUSY),
            hint: HINT_INIT,
        };
        assert!(e.to_string().contains("before the GIC"), "{e}");
    }

    #[test]
    fn default_routes_cover_every_spi_below_the_msi_gsis() {
        let routes = default_spi_routes();
        assert_eq!(routes.len() as u32, FIRST_MSI_GSI);
        assert!(routes.iter().all(|&(gsi, pin)| gsi == pin));
        assert!(routes.contains(&(layout::SERIAL_SPI, layout::SERIAL_SPI)));
    }

    #[test]
    fn kvm_uapi_numbers() {
        // arch/arm64/include/uapi/asm/kvm.h and include/uapi/linux/kvm.h.
        assert_eq!(KVM_VGIC_V3_ADDR_TYPE_DIST, 2);
        assert_eq!(KVM_VGIC_V3_ADDR_TYPE_REDIST, 3);
        assert_eq!(KVM_VGIC_ITS_ADDR_TYPE, 4);
        assert_eq!(KVM_DEV_ARM_VGIC_GRP_NR_IRQS, 3);
        assert_eq!(KVM_DEV_ARM_VGIC_GRP_CTRL, 4);
        assert_eq!(kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3, 7);
        assert_eq!(kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_ITS, 8);
    }
}
