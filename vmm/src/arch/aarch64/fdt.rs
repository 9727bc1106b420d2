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
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use vm_memory::GuestAddress;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    /// A parsed DTB: node path -> property name -> value.
    type Tree = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

    fn be32(b: &[u8], off: usize) -> u32 {
        u32::from_be_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn cstr(b: &[u8], off: usize) -> String {
        let end = off + b[off..].iter().position(|&c| c == 0).unwrap();
        String::from_utf8(b[off..end].to_vec()).unwrap()
    }

    /// A minimal FDT reader (version 17 blobs): checks the header and walks the structure
    /// block.
    fn parse(blob: &[u8]) -> Tree {
        assert_eq!(be32(blob, 0), 0xd00d_feed, "magic");
        assert_eq!(be32(blob, 4) as usize, blob.len(), "totalsize");
        assert_eq!(be32(blob, 20), 17, "version");
        let off_struct = be32(blob, 8) as usize;
        let off_strings = be32(blob, 12) as usize;
        let mut tree = Tree::new();
        let mut path: Vec<String> = Vec::new();
        let mut pos = off_struct;
        let full = |path: &[String]| {
            if path.len() <= 1 {
                "/".to_string()
            } else {
                path[1..].iter().map(|p| format!("/{p}")).collect()
            }
        };
        loop {
            let token = be32(blob, pos);
            pos += 4;
            match token {
                1 => {
                    let name = cstr(blob, pos);
                    pos += (name.len() + 1 + 3) & !3;
                    path.push(name);
                    tree.entry(full(&path)).or_default();
                }
                2 => {
                    path.pop().expect("balanced nodes");
                }
                3 => {
                    let len = be32(blob, pos) as usize;
                    let nameoff = be32(blob, pos + 4) as usize;
                    let value = blob[pos + 8..pos + 8 + len].to_vec();
                    pos += 8 + ((len + 3) & !3);
                    let name = cstr(blob, off_strings + nameoff);
                    tree.get_mut(&full(&path)).unwrap().insert(name, value);
                }
                4 => {}
                9 => break,
                t => panic!("bad token {t} at {pos}"),
            }
        }
        assert!(path.is_empty());
        tree
    }

    fn prop<'a>(tree: &'a Tree, node: &str, name: &str) -> &'a [u8] {
        tree.get(node)
            .unwrap_or_else(|| panic!("no node {node} in {:?}", tree.keys()))
            .get(name)
            .unwrap_or_else(|| panic!("no {node}:{name}"))
    }

    fn u32s(v: &[u8]) -> Vec<u32> {
        v.chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn u64s(v: &[u8]) -> Vec<u64> {
        v.chunks(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn string(v: &[u8]) -> &str {
        std::str::from_utf8(v.strip_suffix(&[0]).unwrap()).unwrap()
    }

    fn ram(start: u64, size: u64) -> RamRegion {
        RamRegion {
            start: GuestAddress(start),
            size,
        }
    }

    fn two_vcpu_config<'a>(ram: &'a [RamRegion], initrd: Option<InitrdRange>) -> FdtConfig<'a> {
        FdtConfig {
            ram,
            mpidrs: &[0x8000_0000, 0x8000_0001],
            cmdline: "console=ttyS0 earlycon",
            initrd,
            pci: false,
            vsmmu: None,
        }
    }

    #[test]
    fn describes_the_machine() {
        let ram_regions = layout::ram_regions(512 * MIB).unwrap();
        let initrd = InitrdRange {
            start: 0x5f00_0000,
            size: 0x12345,
        };
        let blob = create_fdt(&two_vcpu_config(&ram_regions, Some(initrd))).unwrap();
        let t = parse(&blob);

        assert_eq!(string(prop(&t, "/", "compatible")), "linux,dummy-virt");
        assert_eq!(u32s(prop(&t, "/", "#address-cells")), [2]);
        assert_eq!(u32s(prop(&t, "/", "interrupt-parent")), [GIC_PHANDLE]);

        assert_eq!(u64s(prop(&t, "/memory@40000000", "reg")), [GIB, 512 * MIB]);
        assert_eq!(
            string(prop(&t, "/memory@40000000", "device_type")),
            "memory"
        );

        assert_eq!(u32s(prop(&t, "/cpus/cpu@0", "reg")), [0, 0]);
        assert_eq!(u32s(prop(&t, "/cpus/cpu@1", "reg")), [0, 1]);
        assert_eq!(string(prop(&t, "/cpus/cpu@1", "enable-method")), "psci");
        assert_eq!(string(prop(&t, "/cpus/cpu@1", "compatible")), "arm,arm-v8");
        assert_eq!(string(prop(&t, "/psci", "compatible")), "arm,psci-0.2");
        assert_eq!(string(prop(&t, "/psci", "method")), "hvc");

        let gic = "/intc@2000000";
        assert_eq!(string(prop(&t, gic, "compatible")), "arm,gic-v3");
        assert!(prop(&t, gic, "interrupt-controller").is_empty());
        assert_eq!(u32s(prop(&t, gic, "#interrupt-cells")), [3]);
        assert_eq!(
            u64s(prop(&t, gic, "reg")),
            [0x0200_0000, 0x1_0000, 0x0400_0000, 2 * 0x2_0000]
        );
        assert_eq!(u32s(prop(&t, gic, "phandle")), [GIC_PHANDLE]);
        let its = "/intc@2000000/msi-controller@2020000";
        assert_eq!(string(prop(&t, its, "compatible")), "arm,gic-v3-its");
        assert!(prop(&t, its, "msi-controller").is_empty());
        assert_eq!(u32s(prop(&t, its, "#msi-cells")), [1]);
        assert_eq!(u64s(prop(&t, its, "reg")), [0x0202_0000, 0x2_0000]);
        assert_eq!(u32s(prop(&t, its, "phandle")), [ITS_PHANDLE]);

        assert_eq!(string(prop(&t, "/timer", "compatible")), "arm,armv8-timer");
        assert_eq!(
            u32s(prop(&t, "/timer", "interrupts")),
            [1, 13, 8, 1, 14, 8, 1, 11, 8, 1, 10, 8]
        );

        let serial = "/serial@1000000";
        assert_eq!(string(prop(&t, serial, "compatible")), "ns16550a");
        assert_eq!(u64s(prop(&t, serial, "reg")), [0x0100_0000, 0x1000]);
        assert_eq!(u32s(prop(&t, serial, "interrupts")), [0, 1, 1]);
        assert_eq!(u32s(prop(&t, serial, "clock-frequency")), [1_843_200]);

        assert_eq!(
            string(prop(&t, "/chosen", "bootargs")),
            "console=ttyS0 earlycon"
        );
        assert_eq!(string(prop(&t, "/chosen", "stdout-path")), serial);
        assert_eq!(
            u64s(prop(&t, "/chosen", "linux,initrd-start")),
            [0x5f00_0000]
        );
        assert_eq!(u64s(prop(&t, "/chosen", "linux,initrd-end")), [0x5f01_2345]);
    }

    #[test]
    fn no_initrd_no_initrd_properties() {
        let ram_regions = layout::ram_regions(64 * MIB).unwrap();
        let t = parse(&create_fdt(&two_vcpu_config(&ram_regions, None)).unwrap());
        assert!(!t["/chosen"].contains_key("linux,initrd-start"));
        assert!(!t["/chosen"].contains_key("linux,initrd-end"));
    }

    #[test]
    fn one_memory_node_per_ram_range() {
        let planned = [
            ram(4 * GIB, GIB),
            ram(GIB, 256 * MIB),
            ram(GIB + 256 * MIB, MIB),
        ];
        let t = parse(&create_fdt(&two_vcpu_config(&planned, None)).unwrap());
        assert_eq!(u64s(prop(&t, "/memory@40000000", "reg")), [GIB, 257 * MIB]);
        assert_eq!(u64s(prop(&t, "/memory@100000000", "reg")), [4 * GIB, GIB]);
        assert_eq!(t.keys().filter(|k| k.starts_with("/memory@")).count(), 2);
    }

    #[test]
    fn cpu_reg_is_the_affinity_with_aff3() {
        let ram_regions = layout::ram_regions(64 * MIB).unwrap();
        let cfg = FdtConfig {
            ram: &ram_regions,
            // vCPU 17 under KVM: Aff1 = 1, Aff0 = 1; plus one with Aff3 and the U bit.
            mpidrs: &[0x8000_0000, 0x8000_0101, 0x01_c000_0000],
            cmdline: "",
            initrd: None,
            pci: false,
            vsmmu: None,
        };
        let t = parse(&create_fdt(&cfg).unwrap());
        assert_eq!(u32s(prop(&t, "/cpus/cpu@101", "reg")), [0, 0x101]);
        assert_eq!(u32s(prop(&t, "/cpus/cpu@100000000", "reg")), [1, 0]);
        assert_eq!(
            u64s(prop(&t, "/intc@2000000", "reg"))[3],
            3 * layout::GIC_REDIST_SIZE_PER_VCPU
        );
    }

    #[test]
    fn bad_inputs_are_errors() {
        let ram_regions = layout::ram_regions(64 * MIB).unwrap();
        let mut cfg = two_vcpu_config(&ram_regions, None);
        cfg.cmdline = "a\0b";
        assert!(matches!(create_fdt(&cfg), Err(FdtError::CmdlineNul)));
        let long = "x".repeat(CMDLINE_MAX_LEN + 1);
        cfg.cmdline = &long;
        let e = create_fdt(&cfg).unwrap_err();
        assert!(e.to_string().contains("shorten it"), "{e}");
        cfg.cmdline = "";
        cfg.mpidrs = &[];
        assert!(matches!(create_fdt(&cfg), Err(FdtError::NoCpus)));
        cfg.mpidrs = &[0];
        cfg.ram = &[];
        assert!(matches!(create_fdt(&cfg), Err(FdtError::NoMemory)));
    }

    #[test]
    fn max_vcpus_fit_in_the_size_limit() {
        let ram_regions = layout::ram_regions(64 * MIB).unwrap();
        let mpidrs: Vec<u64> = (0..layout::MAX_VCPUS as u64)
            .map(|i| 0x8000_0000 | (i & 0xf) | ((i >> 4) << 8))
            .collect();
        let mut cfg = two_vcpu_config(&ram_regions, None);
        cfg.mpidrs = &mpidrs;
        let long = "y".repeat(CMDLINE_MAX_LEN);
        cfg.cmdline = &long;
        let blob = create_fdt(&cfg).unwrap();
        assert!(blob.len() as u64 <= FDT_MAX_SIZE);
        assert_eq!(
            parse(&blob)
                .keys()
                .filter(|k| k.starts_with("/cpus/cpu@"))
                .count(),
            512
        );
    }

    #[test]
    fn pci_host_bridge_when_asked() {
        let ram_regions = layout::ram_regions(64 * MIB).unwrap();
        let mut cfg = two_vcpu_config(&ram_regions, None);
        let t = parse(&create_fdt(&cfg).unwrap());
        assert!(!t.contains_key("/pcie@10000000"));
        cfg.pci = true;
        let t = parse(&create_fdt(&cfg).unwrap());
        let pci = "/pcie@10000000";
        assert_eq!(string(prop(&t, pci, "compatible")), "pci-host-ecam-generic");
        assert_eq!(string(prop(&t, pci, "device_type")), "pci");
        assert_eq!(u32s(prop(&t, pci, "bus-range")), [0, 255]);
        assert_eq!(u64s(prop(&t, pci, "reg")), [0x1000_0000, 0x1000_0000]);
        assert_eq!(
            u32s(prop(&t, pci, "ranges")),
            [
                0x0200_0000,
                0,
                0x2000_0000,
                0,
                0x2000_0000,
                0,
                0x2000_0000, //
                0x0300_0000,
                0x80,
                0,
                0x80,
                0,
                0x80,
                0
            ]
        );
        assert_eq!(
            u32s(prop(&t, pci, "msi-map")),
            [0, ITS_PHANDLE, 0, 0x1_0000]
        );
        assert!(prop(&t, pci, "dma-coherent").is_empty());
    }

    fn vsmmu() -> VsmmuNode {
        VsmmuNode {
            base: layout::SMMU_START.0,
            eventq_spi: layout::SMMU_EVENTQ_SPI,
            gerror_spi: layout::SMMU_GERROR_SPI,
            rids: vec![0x08, 0x11],
            msi_windows: vec![(0x0800_0000, 0x10_0000)],
        }
    }

    #[test]
    fn vsmmu_node_iommu_map_and_msi_window() {
        let ram_regions = layout::ram_regions(64 * MIB).unwrap();
        let v = vsmmu();
        let mut cfg = two_vcpu_config(&ram_regions, None);
        cfg.vsmmu = Some(&v);
        let t = parse(&create_fdt(&cfg).unwrap());
        assert!(!t.contains_key("/iommu@9000000"), "no SMMU without PCI");
        cfg.pci = true;
        let t = parse(&create_fdt(&cfg).unwrap());
        let smmu = "/iommu@9000000";
        assert_eq!(string(prop(&t, smmu, "compatible")), "arm,smmu-v3");
        assert_eq!(u64s(prop(&t, smmu, "reg")), [0x0900_0000, 0x2_0000]);
        assert_eq!(u32s(prop(&t, smmu, "interrupts")), [0, 2, 1, 0, 3, 1]);
        assert_eq!(prop(&t, smmu, "interrupt-names"), b"eventq\0gerror\0");
        assert_eq!(u32s(prop(&t, smmu, "#iommu-cells")), [1]);
        assert_eq!(u32s(prop(&t, smmu, "phandle")), [SMMU_PHANDLE]);
        let pci = "/pcie@10000000";
        assert_eq!(
            u32s(prop(&t, pci, "iommu-map")),
            [0x08, SMMU_PHANDLE, 0x08, 1, 0x11, SMMU_PHANDLE, 0x11, 1]
        );
        let f0 = "/pcie@10000000/pci@1,0";
        let f1 = "/pcie@10000000/pci@2,1";
        assert_eq!(u32s(prop(&t, f0, "reg")), [0x0800, 0, 0, 0, 0]);
        assert_eq!(u32s(prop(&t, f1, "reg")), [0x1100, 0, 0, 0, 0]);
        let region = "/reserved-memory/msi@8000000";
        let phandle = u32s(prop(&t, region, "phandle"))[0];
        assert_eq!(u32s(prop(&t, f0, "memory-region")), [phandle]);
        assert_eq!(u64s(prop(&t, region, "reg")), [0x0800_0000, 0x10_0000]);
        let fn_phandles = [f0, f1].map(|f| u32s(prop(&t, f, "phandle"))[0]);
        assert_eq!(
            u32s(prop(&t, region, "iommu-addresses")),
            [
                fn_phandles[0],
                0,
                0,
                0x0800_0000,
                0,
                0x10_0000,
                fn_phandles[1],
                0,
                0,
                0x0800_0000,
                0,
                0x10_0000
            ]
        );
        assert!(prop(&t, region, "no-map").is_empty());
        // Without an MSI window: no reserved memory, no memory-region.
        let v = VsmmuNode {
            msi_windows: Vec::new(),
            ..vsmmu()
        };
        cfg.vsmmu = Some(&v);
        let t = parse(&create_fdt(&cfg).unwrap());
        assert!(!t.contains_key("/reserved-memory"));
        assert!(!t[f0].contains_key("memory-region"));
    }

    /// Decompiles the blob with dtc, whose checks catch binding mistakes the reader above
    /// does not (unit addresses vs reg, phandles, interrupt specifiers).
    #[test]
    fn dtc_accepts_the_blob_without_warnings() {
        let ram_regions = layout::ram_regions(512 * MIB).unwrap();
        let initrd = InitrdRange {
            start: 0x5f00_0000,
            size: 0x1000,
        };
        let mut cfg = two_vcpu_config(&ram_regions, Some(initrd));
        cfg.pci = true;
        let v = vsmmu();
        cfg.vsmmu = Some(&v);
        let blob = create_fdt(&cfg).unwrap();
        let path = std::env::temp_dir().join(format!("vmm-fdt-test-{}.dtb", std::process::id()));
        std::fs::write(&path, &blob).unwrap();
        // Resolved here rather than by spawn: under qemu-user a missing program does not come
        // back as a spawn error but as a child that fails with nothing on stderr.
        let dtc = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|d| d.join("dtc"))
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!("dtc not found in PATH: install the Debian package device-tree-compiler (tests/aarch64-unit.sh does)")
            });
        let out = std::process::Command::new(&dtc)
            .args(["-I", "dtb", "-O", "dts", "-o", "-"])
            .arg(&path)
            .output();
        let _ = std::fs::remove_file(&path);
        let out = out.unwrap_or_else(|e| panic!("cannot run {}: {e}", dtc.display()));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let dts = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "dtc failed ({}): {stderr}",
            out.status
        );
        assert!(stderr.trim().is_empty(), "dtc warnings:\n{stderr}\n{dts}");
        assert!(dts.contains("compatible = \"arm,gic-v3-its\";"), "{dts}");
        assert!(dts.contains("stdout-path = \"/serial@1000000\";"), "{dts}");
        assert!(dts.contains("compatible = \"arm,smmu-v3\";"), "{dts}");
        assert!(dts.contains("pci@2,1 {"), "{dts}");
    }
}
