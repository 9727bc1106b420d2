//! Unit tests of the parent module.

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

fn program_queue(d: &mut VirtioPciDevice, index: u16, size: u16, desc: u64, avail: u64, used: u64) {
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
