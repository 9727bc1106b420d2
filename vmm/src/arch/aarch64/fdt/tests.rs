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
