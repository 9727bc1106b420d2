//! The flattened device tree handed to an arm64 Linux guest in X0.
//!
//! It describes exactly what [`layout`](super::layout) places: RAM (one `memory` node per
//! RAM range, so planner-split RAM works), the vCPUs by MPIDR with PSCI as their enable
//! method, the GICv3 with its ITS child, the architected timer, the 16550A UART, and
//! `/chosen` with the command line, the console and the initrd.
//!
//! Interrupt specifiers use the GICv3 binding: `<type number flags>` with type 0 = SPI
//! (number = INTID - 32) and 1 = PPI (number = INTID - 16).
//!
//! With [`FdtConfig::pci`] it also describes the PCIe host bridge of the layout (generic
//! ECAM, both MMIO windows, `msi-map` to the ITS with DeviceID = requester ID). The bridge
//! has no `interrupt-map`: functions interrupt through MSI/MSI-X only.
//!
//! With [`FdtConfig::vsmmu`] it describes the guest-visible SMMUv3 ([`VsmmuNode`]): an
//! `arm,smmu-v3` node with wired event queue and GERROR SPIs, an `iommu-map` on the host
//! bridge for exactly the functions behind it (the others bypass it), and, for their MSIs
//! under nesting, the host's software MSI window as a `/reserved-memory` region whose
//! `iommu-addresses` name each of those functions (a `pci@slot,fn` child of the bridge
//! holding `memory-region`): Linux (`of_iommu_get_resv_regions`) then makes it a direct
//! region, so the guest's stage 1 maps the window 1:1 and the device's MSI writes, which
//! the host programmed with an address in that window, reach the ITS through stage 2.
//!
//! What this module does not do: no PMU node, no `rng-seed`. The UART needs no clock node:
//! the 8250 OF driver takes the `clock-frequency` property (a `apb_pclk` fixed clock is only
//! needed by AMBA devices such as a PL011).

use vm_fdt::FdtWriter;

use super::layout::{self, RamRegion};
use super::vcpu::MPIDR_AFFINITY_MASK;
pub use crate::vsmmu::VsmmuNode;

/// The arm64 boot protocol's limit on the DTB size.
pub const FDT_MAX_SIZE: u64 = 2 << 20;
/// Most bytes of the kernel command line, without the NUL (arm64 `COMMAND_LINE_SIZE` - 1).
pub const CMDLINE_MAX_LEN: usize = 2047;
/// phandle of the GICv3 node, the root's `interrupt-parent`.
pub const GIC_PHANDLE: u32 = 1;
/// phandle of the ITS node, for `msi-parent` / `msi-map` of future PCI nodes.
pub const ITS_PHANDLE: u32 = 2;
/// phandle of the SMMUv3 node.
pub const SMMU_PHANDLE: u32 = 3;
/// phandle of the first `/reserved-memory` MSI region (one per window, counting up).
const MSI_REGION_PHANDLE: u32 = 0x10;
/// phandle of the first PCI function node behind the SMMU (one per function, counting up).
const PCI_FUNCTION_PHANDLE: u32 = 0x100;

/// GICv3 binding: interrupt type SPI.
const GIC_FDT_IRQ_TYPE_SPI: u32 = 0;
/// GICv3 binding: interrupt type PPI.
const GIC_FDT_IRQ_TYPE_PPI: u32 = 1;
/// `IRQ_TYPE_EDGE_RISING` from dt-bindings/interrupt-controller/irq.h.
const IRQ_TYPE_EDGE_RISING: u32 = 1;
/// `IRQ_TYPE_LEVEL_LOW` from dt-bindings/interrupt-controller/irq.h.
const IRQ_TYPE_LEVEL_LOW: u32 = 8;

/// Architected timer PPIs in the order the "arm,armv8-timer" binding lists them: secure
/// physical (INTID 29), non-secure physical (30), virtual (27), hypervisor (26). KVM wires
/// the guest's virtual and physical timers to INTIDs 27 and 30 by default.
const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];

/// Path of the UART node, also `/chosen/stdout-path`.
fn serial_node_name() -> String {
    format!("serial@{:x}", layout::SERIAL_START.0)
}

/// Errors building the device tree.
#[derive(Debug, thiserror::Error)]
pub enum FdtError {
    /// vm-fdt rejected a node or property.
    #[error("cannot build the device tree: {0}")]
    Writer(#[from] vm_fdt::Error),
    /// The command line contains a NUL byte.
    #[error("the kernel command line contains a NUL byte; remove it")]
    CmdlineNul,
    /// The command line is longer than arm64 Linux accepts.
    #[error("kernel command line is {len} bytes but arm64 Linux takes at most {max}; shorten it")]
    CmdlineTooLong {
        /// Bytes given.
        len: usize,
        /// Most bytes accepted.
        max: usize,
    },
    /// No vCPU MPIDRs were given.
    #[error("the device tree needs at least one vCPU; read the vCPUs' MPIDRs first")]
    NoCpus,
    /// No RAM regions were given.
    #[error("the device tree needs guest RAM; give the VM memory")]
    NoMemory,
    /// The blob exceeds the boot protocol's 2 MiB.
    #[error(
        "the device tree is {size} bytes, more than the {max} the arm64 boot protocol allows; \
         use fewer vCPUs or RAM regions"
    )]
    TooBig {
        /// Blob bytes.
        size: usize,
        /// Limit.
        max: u64,
    },
}

/// Where the initrd was loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdRange {
    /// First guest physical address.
    pub start: u64,
    /// Bytes.
    pub size: u64,
}

/// What the device tree describes.
#[derive(Clone, Copy, Debug)]
pub struct FdtConfig<'a> {
    /// Guest RAM.
    pub ram: &'a [RamRegion],
    /// MPIDR_EL1 of each vCPU, in vCPU index order (vCPU 0 boots).
    pub mpidrs: &'a [u64],
    /// Kernel command line (`/chosen/bootargs`).
    pub cmdline: &'a str,
    /// The loaded initrd, if any.
    pub initrd: Option<InitrdRange>,
    /// Describe the PCIe host bridge (ECAM at [`layout::PCI_ECAM_START`]).
    pub pci: bool,
    /// Describe a guest-visible SMMUv3 (needs `pci`).
    pub vsmmu: Option<&'a VsmmuNode>,
}

/// Splits a 64-bit value into two big-endian-ordered cells (high, low).
fn cells(v: u64) -> [u32; 2] {
    [(v >> 32) as u32, v as u32]
}

/// A `reg` value of `(address, size)` pairs with two address and two size cells.
fn reg(ranges: &[(u64, u64)]) -> Vec<u64> {
    ranges.iter().flat_map(|&(a, s)| [a, s]).collect()
}

/// Builds the DTB for `cfg`.
pub fn create_fdt(cfg: &FdtConfig) -> Result<Vec<u8>, FdtError> {
    if cfg.cmdline.contains('\0') {
        return Err(FdtError::CmdlineNul);
    }
    if cfg.cmdline.len() > CMDLINE_MAX_LEN {
        return Err(FdtError::CmdlineTooLong {
            len: cfg.cmdline.len(),
            max: CMDLINE_MAX_LEN,
        });
    }
    if cfg.mpidrs.is_empty() {
        return Err(FdtError::NoCpus);
    }
    let memory = layout::memory_regions(cfg.ram);
    if memory.is_empty() {
        return Err(FdtError::NoMemory);
    }

    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_string("compatible", "linux,dummy-virt")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("interrupt-parent", GIC_PHANDLE)?;

    for &(addr, size) in &memory {
        let node = fdt.begin_node(&format!("memory@{addr:x}"))?;
        fdt.property_string("device_type", "memory")?;
        fdt.property_array_u64("reg", &[addr, size])?;
        fdt.end_node(node)?;
    }

    write_cpus(&mut fdt, cfg.mpidrs)?;

    let psci = fdt.begin_node("psci")?;
    fdt.property_string("compatible", "arm,psci-0.2")?;
    fdt.property_string("method", "hvc")?;
    fdt.end_node(psci)?;

    write_gic(&mut fdt, cfg.mpidrs.len() as u32)?;

    let timer = fdt.begin_node("timer")?;
    fdt.property_string("compatible", "arm,armv8-timer")?;
    let irqs: Vec<u32> = TIMER_PPIS
        .iter()
        .flat_map(|&ppi| [GIC_FDT_IRQ_TYPE_PPI, ppi, IRQ_TYPE_LEVEL_LOW])
        .collect();
    fdt.property_array_u32("interrupts", &irqs)?;
    fdt.property_null("always-on")?;
    fdt.end_node(timer)?;

    let serial = fdt.begin_node(&serial_node_name())?;
    fdt.property_string("compatible", "ns16550a")?;
    fdt.property_array_u64("reg", &[layout::SERIAL_START.0, layout::SERIAL_SIZE])?;
    // The UART's irqfd pulses the line, so the SPI must be edge-triggered: as a level
    // interrupt KVM would drop it again before the guest saw it.
    fdt.property_array_u32(
        "interrupts",
        &[
            GIC_FDT_IRQ_TYPE_SPI,
            layout::SERIAL_SPI,
            IRQ_TYPE_EDGE_RISING,
        ],
    )?;
    fdt.property_u32("clock-frequency", layout::SERIAL_CLOCK_HZ)?;
    fdt.end_node(serial)?;

    if let Some(v) = cfg.vsmmu.filter(|_| cfg.pci) {
        write_smmu(&mut fdt, v)?;
        write_msi_regions(&mut fdt, v)?;
    }
    if cfg.pci {
        write_pci(&mut fdt, cfg.vsmmu)?;
    }

    let chosen = fdt.begin_node("chosen")?;
    fdt.property_string("bootargs", cfg.cmdline)?;
    fdt.property_string("stdout-path", &format!("/{}", serial_node_name()))?;
    if let Some(initrd) = cfg.initrd {
        fdt.property_u64("linux,initrd-start", initrd.start)?;
        fdt.property_u64("linux,initrd-end", initrd.start + initrd.size)?;
    }
    fdt.end_node(chosen)?;

    fdt.end_node(root)?;
    let blob = fdt.finish()?;
    if blob.len() as u64 > FDT_MAX_SIZE {
        return Err(FdtError::TooBig {
            size: blob.len(),
            max: FDT_MAX_SIZE,
        });
    }
    Ok(blob)
}

/// `/cpus`: one `cpu` node per vCPU, `reg` = its MPIDR affinity (two cells, for Aff3).
fn write_cpus(fdt: &mut FdtWriter, mpidrs: &[u64]) -> Result<(), FdtError> {
    let cpus = fdt.begin_node("cpus")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 0)?;
    for &mpidr in mpidrs {
        let aff = mpidr & MPIDR_AFFINITY_MASK;
        let cpu = fdt.begin_node(&format!("cpu@{aff:x}"))?;
        fdt.property_string("device_type", "cpu")?;
        fdt.property_string("compatible", "arm,arm-v8")?;
        fdt.property_string("enable-method", "psci")?;
        fdt.property_array_u32("reg", &cells(aff))?;
        fdt.end_node(cpu)?;
    }
    fdt.end_node(cpus)?;
    Ok(())
}

/// The GICv3 (distributor + one redistributor region sized for `vcpus`) and its ITS child.
fn write_gic(fdt: &mut FdtWriter, vcpus: u32) -> Result<(), FdtError> {
    let gic = fdt.begin_node(&format!("intc@{:x}", layout::GIC_DIST_START.0))?;
    fdt.property_string("compatible", "arm,gic-v3")?;
    fdt.property_u32("#interrupt-cells", 3)?;
    fdt.property_null("interrupt-controller")?;
    fdt.property_array_u64(
        "reg",
        &reg(&[
            (layout::GIC_DIST_START.0, layout::GIC_DIST_SIZE),
            (layout::GIC_REDIST_START.0, layout::gic_redist_size(vcpus)),
        ]),
    )?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_null("ranges")?;
    fdt.property_phandle(GIC_PHANDLE)?;

    let its = fdt.begin_node(&format!("msi-controller@{:x}", layout::GIC_ITS_START.0))?;
    fdt.property_string("compatible", "arm,gic-v3-its")?;
    fdt.property_null("msi-controller")?;
    fdt.property_u32("#msi-cells", 1)?;
    fdt.property_array_u64("reg", &[layout::GIC_ITS_START.0, layout::GIC_ITS_SIZE])?;
    fdt.property_phandle(ITS_PHANDLE)?;
    fdt.end_node(its)?;

    fdt.end_node(gic)?;
    Ok(())
}

/// PCI address space codes of a `ranges` entry's first cell (IEEE 1275 PCI binding).
const PCI_SPACE_MMIO32: u32 = 0x0200_0000;
/// 64-bit memory space.
const PCI_SPACE_MMIO64: u32 = 0x0300_0000;

/// One PCI `ranges` entry mapping `size` bytes at `addr` 1:1 (PCI address = CPU address).
fn pci_range(space: u32, addr: u64, size: u64) -> [u32; 7] {
    let [ah, al] = cells(addr);
    let [sh, sl] = cells(size);
    [space, ah, al, ah, al, sh, sl]
}

/// The `arm,smmu-v3` node: registers, wired event queue and GERROR SPIs (edge: irqfds),
/// one cell per master (its StreamID), coherent table walks.
fn write_smmu(fdt: &mut FdtWriter, v: &VsmmuNode) -> Result<(), FdtError> {
    let smmu = fdt.begin_node(&format!("iommu@{:x}", v.base))?;
    fdt.property_string("compatible", "arm,smmu-v3")?;
    fdt.property_array_u64("reg", &[v.base, layout::SMMU_SIZE])?;
    fdt.property_array_u32(
        "interrupts",
        &[
            GIC_FDT_IRQ_TYPE_SPI,
            v.eventq_spi,
            IRQ_TYPE_EDGE_RISING,
            GIC_FDT_IRQ_TYPE_SPI,
            v.gerror_spi,
            IRQ_TYPE_EDGE_RISING,
        ],
    )?;
    fdt.property_string_list("interrupt-names", vec!["eventq".into(), "gerror".into()])?;
    fdt.property_u32("#iommu-cells", 1)?;
    fdt.property_null("dma-coherent")?;
    fdt.property_phandle(SMMU_PHANDLE)?;
    fdt.end_node(smmu)?;
    Ok(())
}

/// `/reserved-memory`: one `no-map` region per host MSI window, `reg` = `iommu-addresses`
/// (same address: a direct mapping) for every function behind the SMMU. The function
/// nodes' address is three PCI cells (their bus has no `dma-ranges`: 1:1).
fn write_msi_regions(fdt: &mut FdtWriter, v: &VsmmuNode) -> Result<(), FdtError> {
    if v.msi_windows.is_empty() {
        return Ok(());
    }
    let rm = fdt.begin_node("reserved-memory")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_null("ranges")?;
    for (i, &(start, size)) in v.msi_windows.iter().enumerate() {
        let node = fdt.begin_node(&format!("msi@{start:x}"))?;
        fdt.property_array_u64("reg", &[start, size])?;
        let [ah, al] = cells(start);
        let [sh, sl] = cells(size);
        let maps: Vec<u32> = (0..v.rids.len() as u32)
            .flat_map(|f| [PCI_FUNCTION_PHANDLE + f, 0, ah, al, sh, sl])
            .collect();
        fdt.property_array_u32("iommu-addresses", &maps)?;
        fdt.property_null("no-map")?;
        fdt.property_phandle(MSI_REGION_PHANDLE + i as u32)?;
        fdt.end_node(node)?;
    }
    fdt.end_node(rm)?;
    Ok(())
}

/// The generic ECAM host bridge: buses 0-255, the 32- and 64-bit MMIO windows, MSIs through
/// the ITS with DeviceID = requester ID (BDF), DMA cache-coherent; with a vSMMU, the
/// functions behind it in `iommu-map` and as child nodes.
fn write_pci(fdt: &mut FdtWriter, vsmmu: Option<&VsmmuNode>) -> Result<(), FdtError> {
    let pci = fdt.begin_node(&format!("pcie@{:x}", layout::PCI_ECAM_START.0))?;
    fdt.property_string("compatible", "pci-host-ecam-generic")?;
    fdt.property_string("device_type", "pci")?;
    fdt.property_u32("#address-cells", 3)?;
    fdt.property_u32("#size-cells", 2)?;
    let last_bus = (layout::PCI_ECAM_SIZE >> 20).saturating_sub(1) as u32;
    fdt.property_array_u32("bus-range", &[0, last_bus])?;
    fdt.property_array_u64("reg", &[layout::PCI_ECAM_START.0, layout::PCI_ECAM_SIZE])?;
    let ranges: Vec<u32> = pci_range(
        PCI_SPACE_MMIO32,
        layout::PCI_MMIO32_START.0,
        layout::PCI_MMIO32_SIZE,
    )
    .into_iter()
    .chain(pci_range(
        PCI_SPACE_MMIO64,
        layout::PCI_MMIO64_START.0,
        layout::PCI_MMIO64_SIZE,
    ))
    .collect();
    fdt.property_array_u32("ranges", &ranges)?;
    // <rid-base msi-controller msi-base length>: every requester ID to the same DeviceID.
    fdt.property_array_u32("msi-map", &[0, ITS_PHANDLE, 0, 0x1_0000])?;
    fdt.property_null("dma-coherent")?;
    if let Some(v) = vsmmu {
        // <rid-base iommu sid-base length>: StreamID = requester ID, one function each;
        // requester IDs not listed bypass the SMMU.
        let map: Vec<u32> = v
            .rids
            .iter()
            .flat_map(|&rid| [u32::from(rid), SMMU_PHANDLE, u32::from(rid), 1])
            .collect();
        fdt.property_array_u32("iommu-map", &map)?;
        let regions: Vec<u32> = (0..v.msi_windows.len() as u32)
            .map(|i| MSI_REGION_PHANDLE + i)
            .collect();
        for (i, &rid) in v.rids.iter().enumerate() {
            let (slot, func) = ((rid >> 3) & 0x1f, rid & 7);
            let node = fdt.begin_node(&format!("pci@{slot:x},{func:x}"))?;
            // phys.hi of the function's config space: bus 0, devfn; no size.
            fdt.property_array_u32("reg", &[u32::from(rid) << 8, 0, 0, 0, 0])?;
            if !regions.is_empty() {
                fdt.property_array_u32("memory-region", &regions)?;
            }
            fdt.property_phandle(PCI_FUNCTION_PHANDLE + i as u32)?;
            fdt.end_node(node)?;
        }
    }
    fdt.end_node(pci)?;
    Ok(())
}

#[cfg(test)]
mod tests;
