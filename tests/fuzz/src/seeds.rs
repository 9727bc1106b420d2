//! The seed corpus, built from what the unit and host-KVM tests use: well-formed virtio-blk
//! requests (direct and indirect), the PCI programming the tiny guest and the passthrough
//! tests do, the in-tree test kernels and a minimal bzImage, and planner requests like the
//! property tests'. `cargo test -p vmm-fuzz -- --ignored write_seeds` rewrites
//! `seeds/TARGET/`.

use std::path::Path;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// A guest RAM image under construction (the first 64 KiB).
struct Ram(Vec<u8>);

impl Ram {
    fn put(&mut self, at: usize, bytes: &[u8]) {
        if self.0.len() < at + bytes.len() {
            self.0.resize(at + bytes.len(), 0);
        }
        self.0[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn desc(&mut self, table: usize, i: usize, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = addr.to_le_bytes().to_vec();
        d.extend_from_slice(&len.to_le_bytes());
        d.extend_from_slice(&flags.to_le_bytes());
        d.extend_from_slice(&next.to_le_bytes());
        self.put(table + 16 * i, &d);
    }
}

const DESC: usize = 0x100;
const AVAIL: usize = 0x200;
const USED: usize = 0x300;
const QSIZE: u16 = 8;

fn blk_header(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = kind.to_le_bytes().to_vec();
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&sector.to_le_bytes());
    h
}

/// A virtqueue input: the queue registers, then RAM with `heads` published.
fn virtqueue_input(ram: Ram, heads: &[u16]) -> Vec<u8> {
    let mut ram = ram;
    let mut avail = vec![0u8, 0];
    avail.extend_from_slice(&(heads.len() as u16).to_le_bytes());
    for h in heads {
        avail.extend_from_slice(&h.to_le_bytes());
    }
    ram.put(AVAIL, &avail);
    ram.put(USED + 4 + 8 * usize::from(QSIZE) + 2, &[0]);
    let mut out = Vec::new();
    for v in [
        QSIZE,
        (DESC / 16) as u16,
        (AVAIL / 16) as u16,
        (USED / 16) as u16,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&ram.0);
    out
}

fn virtqueue_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    // IN (read sector 1), OUT (write sector 2), FLUSH, GET_ID: header, data, status.
    for (name, kind, data_len, data_writable) in [
        ("blk-in", 0u32, 512u32, true),
        ("blk-out", 1, 1024, false),
        ("blk-flush", 4, 0, false),
        ("blk-get-id", 8, 20, true),
    ] {
        let mut ram = Ram(Vec::new());
        ram.put(0x400, &blk_header(kind, 1 + u64::from(kind)));
        ram.put(0x600, &[0x5a; 1024]);
        ram.desc(DESC, 0, 0x400, 16, F_NEXT, 1);
        let status = if data_len > 0 {
            let flags = F_NEXT | if data_writable { F_WRITE } else { 0 };
            ram.desc(DESC, 1, 0x600, data_len, flags, 2);
            2
        } else {
            1
        };
        ram.desc(DESC, status, 0xc00, 1, F_WRITE, 0);
        seeds.push((name, virtqueue_input(ram, &[0])));
    }
    // The same IN request through an indirect table, and two chains at once.
    let mut ram = Ram(Vec::new());
    ram.put(0x400, &blk_header(0, 3));
    ram.desc(DESC, 0, 0x800, 48, F_INDIRECT, 0);
    ram.desc(0x800, 0, 0x400, 16, F_NEXT, 1);
    ram.desc(0x800, 1, 0x600, 512, F_NEXT | F_WRITE, 2);
    ram.desc(0x800, 2, 0xc00, 1, F_WRITE, 0);
    ram.put(0x440, &blk_header(4, 0));
    ram.desc(DESC, 1, 0x440, 16, F_NEXT, 2);
    ram.desc(DESC, 2, 0xc01, 1, F_WRITE, 0);
    seeds.push(("blk-indirect-and-flush", virtqueue_input(ram, &[0, 1])));
    // A data buffer in the second RAM region (across the hole is the fuzzer's job).
    let mut ram = Ram(Vec::new());
    ram.put(0x400, &blk_header(0, 0));
    ram.desc(DESC, 0, 0x400, 16, F_NEXT, 1);
    ram.desc(DESC, 1, 0x2_0000, 4096, F_NEXT | F_WRITE, 2);
    ram.desc(DESC, 2, 0xc00, 1, F_WRITE, 0);
    seeds.push(("blk-in-second-region", virtqueue_input(ram, &[0])));
    seeds
}

/// PCI operations (see `pci_config::run`).
struct Ops(Vec<u8>);

impl Ops {
    fn ecam_write(&mut self, devfn: u8, reg: u16, data: &[u8]) -> &mut Self {
        let size = match data.len() {
            1 => 0,
            2 => 1,
            4 => 2,
            _ => 3,
        };
        self.0.push(0);
        self.0.push(devfn);
        self.0.extend_from_slice(&reg.to_le_bytes());
        self.0.push(size);
        self.0.extend_from_slice(data);
        self
    }

    fn ecam_read(&mut self, devfn: u8, reg: u16) -> &mut Self {
        self.0.extend_from_slice(&[1, devfn]);
        self.0.extend_from_slice(&reg.to_le_bytes());
        self.0.push(2);
        self
    }

    fn bar_write(&mut self, slot: u8, bar: u8, offset: u16, data: &[u8]) -> &mut Self {
        let size = match data.len() {
            1 => 0,
            2 => 1,
            4 => 2,
            _ => 3,
        };
        self.0.extend_from_slice(&[2, slot, bar]);
        self.0.extend_from_slice(&offset.to_le_bytes());
        self.0.push(size);
        self.0.extend_from_slice(data);
        self
    }

    fn bar_read(&mut self, slot: u8, bar: u8, offset: u16) -> &mut Self {
        self.0.extend_from_slice(&[3, slot, bar]);
        self.0.extend_from_slice(&offset.to_le_bytes());
        self.0.push(2);
        self
    }

    fn cf8_read(&mut self, addr: u32, port: u8) -> &mut Self {
        self.0.push(5);
        self.0.extend_from_slice(&addr.to_le_bytes());
        self.0.extend_from_slice(&[port, 2]);
        self
    }
}

/// Offset of capability `id` in the config space `read` returns, walking the list.
fn find_cap(read: &dyn Fn(u16) -> u32, id: u8) -> Option<u16> {
    let mut at = (read(0x34) & 0xfc) as u16;
    for _ in 0..48 {
        if at == 0 {
            return None;
        }
        let head = read(at);
        if head as u8 == id {
            return Some(at);
        }
        at = ((head >> 8) & 0xfc) as u16;
    }
    None
}

fn pci_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    // Enumeration as the tiny guest does it, by ECAM and by 0xCF8.
    let mut o = Ops(Vec::new());
    for slot in 0..4u8 {
        o.ecam_read(slot << 3, 0).ecam_read(slot << 3, 8);
        o.cf8_read(0x8000_0000 | u32::from(slot) << 11, 0);
    }
    seeds.push(("enumerate", o.0));

    // Size, place and enable every BAR of slots 1 (VFIO) and 2 (virtio), then MSI-X on, the
    // first table entry programmed and unmasked: what a driver does first. The capability
    // offsets come from the devices themselves.
    let cfg_of = |slot: u8| {
        let m = crate::pci_config::test_machine();
        move |reg: u16| crate::pci_config::test_config_read(&m, slot, reg)
    };
    for (name, slot) in [("vfio-msix", 1u8), ("virtio-msix", 2u8)] {
        let read = cfg_of(slot);
        let mut o = Ops(Vec::new());
        let devfn = slot << 3;
        let mut addr32 = 0xc000_0000u32 + u32::from(slot) * 0x100_0000;
        for bar in 0..6u16 {
            o.ecam_write(devfn, 0x10 + 4 * bar, &u32::MAX.to_le_bytes());
            o.ecam_read(devfn, 0x10 + 4 * bar);
            o.ecam_write(devfn, 0x10 + 4 * bar, &addr32.to_le_bytes());
            addr32 += 0x10_0000;
        }
        o.ecam_write(devfn, 4, &0x0006u16.to_le_bytes());
        if let Some(cap) = find_cap(&read, 0x11) {
            o.ecam_write(devfn, cap + 3, &[0x80]);
            let table_bar = (read(cap + 4) & 7) as u8;
            let table = (read(cap + 4) & !7) as u16;
            o.bar_write(slot, table_bar, table, &0xfee0_0000u32.to_le_bytes());
            o.bar_write(slot, table_bar, table + 8, &0x41u32.to_le_bytes());
            o.bar_write(slot, table_bar, table + 12, &0u32.to_le_bytes());
            o.bar_read(slot, table_bar, table);
            o.ecam_write(devfn, cap + 3, &[0x00]);
        }
        o.bar_read(slot, 4, 0).bar_write(slot, 4, 0x14, &[0x0f]);
        o.ecam_write(devfn, 4, &0u16.to_le_bytes());
        seeds.push((name, o.0));
    }
    seeds
}

#[cfg(target_arch = "x86_64")]
fn loader_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let with = |flags: u8, image: Vec<u8>| {
        let mut v = vec![flags];
        v.extend(image);
        v
    };
    let read = |p: &str| std::fs::read(p).unwrap_or_else(|e| panic!("{p}: {e}"));
    // A minimal bzImage: one setup sector, protocol 2.15, loadable above 1 MiB, 64-bit
    // entry, a 4 KiB protected-mode part.
    let mut bz = vec![0u8; 2 * 512 + 4096];
    bz[0x1f1] = 1; // setup_sects
    bz[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    bz[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    bz[0x211] = 0x01; // loadflags: LOADED_HIGH
    bz[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes()); // kernel_alignment
    bz[0x234] = 1; // relocatable
    bz[0x236..0x238].copy_from_slice(&0x3u16.to_le_bytes()); // xloadflags: 64-bit entry
    bz[0x238..0x23c].copy_from_slice(&0x7ff_ffffu32.to_le_bytes()); // cmdline_size
    bz[0x260..0x264].copy_from_slice(&0x10_0000u32.to_le_bytes()); // init_size
    vec![
        (
            "tiny-guest-elf64",
            with(0, read(vmm_tests::TINY_GUEST_ELF64)),
        ),
        (
            "tiny-guest-elf32-initrd",
            with(1, read(vmm_tests::TINY_GUEST_ELF32)),
        ),
        (
            "plain-multiboot",
            with(0, read(vmm_tests::PLAIN_MULTIBOOT_ELF)),
        ),
        (
            "multiboot-hang",
            with(2, vmm_tests::multiboot_elf32(vmm_tests::CODE_HANG)),
        ),
        ("bzimage-minimal", with(1, bz)),
    ]
}

fn memory_map_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let range = |shifts: u8, start: u64, len: u64| {
        let mut v = vec![shifts];
        v.extend_from_slice(&start.to_le_bytes());
        v.extend_from_slice(&len.to_le_bytes());
        v
    };
    // 512 MiB under the x86 32-bit hole and an MSI window; 4 GiB around several devices.
    let mut small = vec![0u8];
    small.extend_from_slice(&(0x2_0000u32).to_le_bytes());
    small.extend_from_slice(&[0; 8]);
    small.extend_from_slice(&[16, 0, 1]);
    small.extend(range(0, 0xc000_0000, 0x4000_0000 << 8));
    small.extend_from_slice(&[1, 1]);
    small.extend(range(0, 0xfee0_0000, 0x10_0000 << 8));
    small.push(0);
    let mut big = vec![1u8];
    big.extend_from_slice(&(0x10_0000u32).to_le_bytes());
    big.extend_from_slice(&0x10_0000u64.to_le_bytes());
    big.extend_from_slice(&[16, 4, 2]);
    big.extend(range(0, 0xc000_0000, 0x4000_0000 << 8));
    big.extend(range(0, 0x1_0000_0000, 0x100_0000 << 8));
    big.push(3);
    for d in 0..3u64 {
        big.push(2);
        big.extend(range(0, 0x8000_0000 + d * 0x20_0000, 0x1000 << 8));
        big.extend(range(0, 0xfee0_0000, 0x10_0000 << 8));
        big.push(2);
        big.extend(range(0, 0, (1u64 << 39) << 8));
        big.extend(range(0, 1 << 40, 1 << 30 << 8));
    }
    vec![("x86-512m-msi", small), ("4g-three-devices", big)]
}

fn api_request_seeds() -> Vec<(&'static str, Vec<u8>)> {
    fn put(path: &str, body: &str) -> String {
        format!(
            "PUT /api/v1/{path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }
    let get = |path: &str| format!("GET /api/v1/{path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let add = put(
        "vm.add-device",
        r#"{"path":"/sys/bus/pci/devices/0000:00:03.0","id":"disk","iommu":false}"#,
    );
    let seeds = [
        ("ping", get("vmm.ping")),
        ("info", get("vm.info")),
        ("add", add.clone()),
        ("remove", put("vm.remove-device", r#"{"id":"disk"}"#)),
        (
            "pipelined",
            format!(
                "{}{}{}{}",
                get("vmm.ping"),
                put("vm.pause", ""),
                put("vm.resume", ""),
                add
            ),
        ),
        ("bad_json", put("vm.add-device", r#"{"path": 3,"#)),
        (
            "unknown_field",
            put("vm.remove-device", r#"{"id":"a","x":1}"#),
        ),
        (
            "too_big",
            "PUT /api/v1/vm.add-device HTTP/1.1\r\nContent-Length: 999999\r\n\r\n{".to_string(),
        ),
        (
            "wrong_method",
            "DELETE /api/v1/vm.info HTTP/1.1\r\n\r\n".to_string(),
        ),
        (
            "shutdown_close",
            put("vm.shutdown", "").replace("Host: localhost", "Connection: close"),
        ),
    ];
    seeds
        .into_iter()
        .flat_map(|(name, req)| {
            // Whole, and in 7-byte pieces (the first byte sets the piece size).
            let mut whole = vec![255u8];
            whole.extend_from_slice(req.as_bytes());
            let mut pieces = vec![6u8];
            pieces.extend_from_slice(req.as_bytes());
            [(name, whole), (name, pieces)]
        })
        .enumerate()
        .map(|(i, (name, data))| {
            (
                if i % 2 == 0 {
                    name
                } else {
                    leak(format!("{name}_pieces"))
                },
                data,
            )
        })
        .collect()
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// The SMMUv3 target's input ops (see crate::smmuv3).
struct SmmuOps(Vec<u8>);

impl SmmuOps {
    fn reg(&mut self, offset: u64, value: u64, wide: bool) -> &mut Self {
        self.0.push(0);
        self.0.extend_from_slice(&(offset as u32).to_le_bytes());
        self.0.extend_from_slice(&value.to_le_bytes());
        self.0.push(u8::from(wide));
        self
    }
    fn ram(&mut self, addr: u32, bytes: &[u8]) -> &mut Self {
        self.0.push(2);
        self.0.extend_from_slice(&addr.to_le_bytes());
        self.0.push(bytes.len() as u8);
        self.0.extend_from_slice(bytes);
        self
    }
    fn read(&mut self, offset: u64) -> &mut Self {
        self.0.push(1);
        self.0.extend_from_slice(&(offset as u32).to_le_bytes());
        self.0.push(2);
        self
    }
}

fn smmuv3_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use devices::smmuv3::regs::*;
    const STRTAB: u64 = 0x10_0000;
    const CMDQ: u64 = 0x20_0000;
    const EVENTQ: u64 = 0x30_0000;
    let words = |w: &[u64]| w.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    // The driver's bring-up: bypass off, tables, queues, interrupts, enable.
    let mut up = SmmuOps(Vec::new());
    up.read(IDR0)
        .read(IDR1)
        .reg(GBPA, u64::from(GBPA_UPDATE | GBPA_ABORT), false)
        .reg(STRTAB_BASE, STRTAB, true)
        .reg(STRTAB_BASE_CFG, 5, false)
        .reg(CMDQ_BASE, CMDQ | 8, true)
        .reg(EVENTQ_BASE, EVENTQ | 2, true)
        .reg(
            IRQ_CTRL,
            u64::from(IRQ_CTRL_GERROR_IRQEN | IRQ_CTRL_EVENTQ_IRQEN),
            false,
        )
        .reg(CR0, u64::from(CR0_CMDQEN | CR0_EVENTQEN), false)
        .reg(CR0, u64::from(CR0_IMPLEMENTED), false);
    let bring_up = up.0.clone();
    // Then a bypass STE for StreamID 8, CFGI_STE for it and a CMD_SYNC.
    let mut ste = up;
    ste.ram((STRTAB + 8 * 64) as u32, &words(&[1 | (4 << 1), 0]))
        .ram(CMDQ as u32, &words(&[0x03 | (8 << 32), 1, 0x46, 0]))
        .reg(CMDQ_PROD, 2, false)
        .read(CMDQ_CONS)
        .read(GERROR);
    // An illegal command: CERROR_ILL and GERROR.
    let mut bad = SmmuOps(bring_up.clone());
    bad.ram(CMDQ as u32, &words(&[0xff, 0]))
        .reg(CMDQ_PROD, 1, false)
        .read(GERROR)
        .read(CMDQ_CONS);
    // Host events while the event queue is on, then the guest consumes them.
    let mut events = SmmuOps(bring_up.clone());
    for i in 0..6u64 {
        events.0.push(3);
        events.0.push(0);
        events
            .0
            .extend_from_slice(&words(&[0x10 | (8 << 32), i, 0x1000 * i, 0]));
    }
    events.reg(EVENTQ_CONS, 3, false).read(EVENTQ_PROD);
    vec![
        ("bring_up", bring_up),
        ("bypass_ste", ste.0),
        ("illegal_command", bad.0),
        ("events", events.0),
    ]
}

#[test]
#[ignore = "rewrites the seed corpus; run by hand after changing a target's input format"]
fn write_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let mut all = vec![
        ("virtqueue", virtqueue_seeds()),
        ("pci_config", pci_seeds()),
        ("memory_map", memory_map_seeds()),
        ("api_request", api_request_seeds()),
        ("smmuv3", smmuv3_seeds()),
    ];
    #[cfg(target_arch = "x86_64")]
    all.push(("loaders", loader_seeds()));
    for (target, seeds) in all {
        let dir = root.join(target);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, data) in seeds {
            std::fs::write(dir.join(name), data).unwrap();
        }
    }
}

/// The seeds reach what they were made for (so the corpus does not silently rot when a
/// target's input format changes).
#[test]
fn seeds_reach_their_paths() {
    for (name, data) in virtqueue_seeds() {
        let used = crate::virtqueue::test_used_entries(&data);
        assert!(used >= 1, "{name}: {used} chains completed");
    }
    let plans = memory_map_seeds()
        .iter()
        .filter(|(_, d)| passthrough::plan(&crate::memory_map::request(d)).is_ok())
        .count();
    assert_eq!(plans, 2);
    let installs: Vec<(&str, usize)> = smmuv3_seeds()
        .iter()
        .map(|(name, d)| (*name, crate::smmuv3::test_installs(d)))
        .collect();
    assert!(
        installs
            .iter()
            .any(|&(name, n)| name == "bypass_ste" && n > 0),
        "{installs:?}"
    );
}
