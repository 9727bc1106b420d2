//! The interrupt manager: GSI allocation, the KVM GSI routing table, and one irqfd per MSI
//! vector. Emulated PCI devices and passthrough functions get an [`MsiGroup`] (the devices
//! crate's `MsiInterruptGroup`) and never see KVM.
//!
//! KVM_SET_GSI_ROUTING replaces the whole table, so the manager keeps every route it has
//! installed, including the legacy irqchip routes KVM starts with (x86: PIC and IOAPIC pins;
//! aarch64: SPIs), and writes the full table on every change.
//!
//! Lock order: `InterruptManager::table` is the only lock; routing calls happen under it.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::{Arc, Mutex};

use devices::pci::{InterruptError, MsiInterruptGroup, MsiMessage};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// One GSI route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A pin of an in-kernel interrupt controller.
    Irqchip {
        /// KVM irqchip id (x86: 0 PIC master, 1 PIC slave, 2 IOAPIC; aarch64: 0).
        chip: u32,
        /// Pin on that chip.
        pin: u32,
    },
    /// An MSI write; `devid` is the ITS DeviceID on aarch64 (KVM_MSI_VALID_DEVID).
    Msi {
        /// Message address.
        address: u64,
        /// Message data.
        data: u32,
        /// Requester/Device ID, when the interrupt controller needs it.
        devid: Option<u32>,
    },
}

/// The hypervisor operations the manager needs: the boundary trait, implemented for KVM's
/// VmFd and by a recording fake in tests.
pub trait IrqRouting: Send + Sync {
    /// Replaces the whole GSI routing table (KVM_SET_GSI_ROUTING).
    fn set_routes(&self, routes: &[(u32, Route)]) -> io::Result<()>;
    /// Binds `fd` to `gsi` (KVM_IRQFD).
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> io::Result<()>;
    /// Unbinds `fd` from `gsi` (KVM_IRQFD with DEASSIGN).
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> io::Result<()>;
}

/// Errors of the interrupt manager.
#[derive(Debug, thiserror::Error)]
pub enum InterruptManagerError {
    /// No GSIs left.
    #[error("no free GSI for {0} more MSI vectors (KVM allows {1} routes); use fewer devices or vectors")]
    NoGsi(usize, u32),
    /// An eventfd could not be made.
    #[error("cannot create an eventfd for an MSI vector: {0}")]
    EventFd(io::Error),
    /// KVM refused an irqfd or the routing table.
    #[error("KVM refused the interrupt setup: {0}")]
    Kvm(io::Error),
}

struct Table {
    /// Irqchip routes KVM had by default; several may share a GSI (PIC and IOAPIC).
    legacy: Vec<(u32, Route)>,
    /// MSI routes, one per GSI.
    msi: BTreeMap<u32, Route>,
    next_gsi: u32,
    /// GSIs below `next_gsi` given back by dropped groups, reused lowest first (hotplug
    /// cycles must not grow the GSI space).
    free: BTreeSet<u32>,
}

/// Owns the GSI space and the routing table of one VM.
pub struct InterruptManager {
    hv: Arc<dyn IrqRouting>,
    table: Mutex<Table>,
    first_gsi: u32,
    max_gsi: u32,
}

impl InterruptManager {
    /// A manager whose first dynamically allocated GSI is `first_gsi`, with `legacy` routes
    /// (the irqchip pins KVM set up by default) kept in every table it writes.
    pub fn new(
        hv: Arc<dyn IrqRouting>,
        legacy: &[(u32, Route)],
        first_gsi: u32,
        max_gsi: u32,
    ) -> Self {
        InterruptManager {
            hv,
            table: Mutex::new(Table {
                legacy: legacy.to_vec(),
                msi: BTreeMap::new(),
                next_gsi: first_gsi,
                free: BTreeSet::new(),
            }),
            first_gsi,
            max_gsi,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn all_routes(t: &Table) -> Vec<(u32, Route)> {
        let mut v = t.legacy.clone();
        v.extend(t.msi.iter().map(|(g, r)| (*g, *r)));
        v
    }

    /// A group of `count` MSI vectors with their own GSIs and irqfds, all routes disabled.
    /// `devid` is the ITS DeviceID for every route of the group (aarch64), or None.
    pub fn msi_group(
        self: &Arc<Self>,
        count: u16,
        devid: Option<u32>,
    ) -> Result<MsiGroup, InterruptManagerError> {
        self.new_group(count, devid, None)
    }

    /// [`Self::msi_group`] whose routes always target `doorbell` (see
    /// [`MsiGroup`]): for functions behind the guest-visible SMMU.
    pub fn msi_group_at(
        self: &Arc<Self>,
        count: u16,
        devid: Option<u32>,
        doorbell: u64,
    ) -> Result<MsiGroup, InterruptManagerError> {
        self.new_group(count, devid, Some(doorbell))
    }

    fn new_group(
        self: &Arc<Self>,
        count: u16,
        devid: Option<u32>,
        doorbell: Option<u64>,
    ) -> Result<MsiGroup, InterruptManagerError> {
        let gsis = {
            let mut t = self.lock();
            let reused = t.free.len().min(usize::from(count));
            let fresh = u32::from(count) - reused as u32;
            let end = t
                .next_gsi
                .checked_add(fresh)
                .filter(|e| *e <= self.max_gsi)
                .ok_or(InterruptManagerError::NoGsi(count as usize, self.max_gsi))?;
            let mut gsis: Vec<u32> = (0..reused).filter_map(|_| t.free.pop_first()).collect();
            gsis.extend(t.next_gsi..end);
            t.next_gsi = end;
            gsis
        };
        // From here the group owns the GSIs: dropping it (also half built) gives them back.
        let mut group = MsiGroup {
            mgr: self.clone(),
            vectors: Vec::with_capacity(gsis.len()),
            devid,
            doorbell,
            // Popped from the back: irqfds are registered lowest GSI first.
            unregistered: gsis.into_iter().rev().collect(),
        };
        while let Some(gsi) = group.unregistered.pop() {
            let fd = match EventFd::new(EFD_NONBLOCK) {
                Ok(fd) => fd,
                Err(e) => {
                    group.unregistered.push(gsi);
                    return Err(InterruptManagerError::EventFd(e));
                }
            };
            // An irqfd on a GSI with no route injects nothing: that is "disabled".
            if let Err(e) = self.hv.register_irqfd(&fd, gsi) {
                group.unregistered.push(gsi);
                return Err(InterruptManagerError::Kvm(e));
            }
            group.vectors.push(Vector { gsi, fd });
        }
        Ok(group)
    }

    fn set_route(&self, gsi: u32, route: Option<Route>) -> io::Result<()> {
        let mut t = self.lock();
        let old = match route {
            Some(r) => t.msi.insert(gsi, r),
            None => t.msi.remove(&gsi),
        };
        if old == route {
            return Ok(());
        }
        let result = self.hv.set_routes(&Self::all_routes(&t));
        if result.is_err() {
            // Keep the table in step with what KVM has.
            match old {
                Some(o) => t.msi.insert(gsi, o),
                None => t.msi.remove(&gsi),
            };
        }
        result
    }

    /// GSIs handed out to groups now (for tests and diagnostics).
    pub fn gsis_in_use(&self) -> usize {
        let t = self.lock();
        (t.next_gsi - self.first_gsi()) as usize - t.free.len()
    }

    fn first_gsi(&self) -> u32 {
        self.first_gsi
    }

    fn give_back(&self, gsis: impl IntoIterator<Item = u32>) {
        self.lock().free.extend(gsis);
    }

    /// The routes currently installed (for tests and diagnostics).
    pub fn routes(&self) -> Vec<(u32, Route)> {
        Self::all_routes(&self.lock())
    }
}

struct Vector {
    gsi: u32,
    fd: EventFd,
}

/// The MSI vectors of one PCI function, routed by KVM. Dropping it removes the routes and
/// irqfds.
pub struct MsiGroup {
    mgr: Arc<InterruptManager>,
    vectors: Vec<Vector>,
    devid: Option<u32>,
    /// GSIs allocated but without an irqfd yet (only while the group is built).
    unregistered: Vec<u32>,
    /// The MSI target every route of this group uses, whatever address the guest wrote:
    /// a function behind the vSMMU gets an IOVA (its guest's stage-1 mapping of the vITS
    /// doorbell), which KVM cannot resolve, and the vITS is the only MSI target there is.
    doorbell: Option<u64>,
}

impl MsiGroup {
    fn vector(&self, index: u16) -> Result<&Vector, InterruptError> {
        self.vectors
            .get(index as usize)
            .ok_or(InterruptError::NoSuchVector {
                index,
                count: self.vectors.len() as u16,
            })
    }

    /// The GSI behind vector `index`.
    pub fn gsi(&self, index: u16) -> Option<u32> {
        self.vectors.get(index as usize).map(|v| v.gsi)
    }
}

impl MsiInterruptGroup for MsiGroup {
    fn update(&self, index: u16, msg: MsiMessage, masked: bool) -> Result<(), InterruptError> {
        let v = self.vector(index)?;
        let route = (!masked).then_some(Route::Msi {
            address: self.doorbell.unwrap_or(msg.address),
            data: msg.data,
            devid: self.devid,
        });
        self.mgr
            .set_route(v.gsi, route)
            .map_err(|source| InterruptError::Route { index, source })
    }

    fn trigger(&self, index: u16) -> Result<(), InterruptError> {
        self.vector(index)?
            .fd
            .write(1)
            .map_err(|source| InterruptError::Inject { index, source })
    }

    fn notifier(&self, index: u16) -> Option<&EventFd> {
        self.vectors.get(index as usize).map(|v| &v.fd)
    }
}

impl Drop for MsiGroup {
    fn drop(&mut self) {
        for v in &self.vectors {
            if let Err(e) = self.mgr.hv.unregister_irqfd(&v.fd, v.gsi) {
                log::warn!("cannot unregister the irqfd of GSI {}: {e}", v.gsi);
            }
            if let Err(e) = self.mgr.set_route(v.gsi, None) {
                log::warn!("cannot remove the route of GSI {}: {e}", v.gsi);
            }
        }
        self.mgr.give_back(
            self.vectors
                .iter()
                .map(|v| v.gsi)
                .chain(self.unregistered.drain(..)),
        );
    }
}

/// KVM's implementation of the routing boundary.
pub mod kvm {
    use super::*;
    use kvm_bindings::{
        kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
        KVM_MSI_VALID_DEVID,
    };
    use kvm_ioctls::VmFd;

    /// Routes through a KVM VM fd.
    pub struct KvmRouting {
        /// The VM.
        pub vm: Arc<VmFd>,
    }

    fn to_io(e: kvm_ioctls::Error) -> io::Error {
        io::Error::from_raw_os_error(e.errno())
    }

    /// Builds the KVM form of one route.
    pub fn entry(gsi: u32, r: &Route) -> kvm_irq_routing_entry {
        let mut e = kvm_irq_routing_entry {
            gsi,
            ..Default::default()
        };
        match *r {
            Route::Irqchip { chip, pin } => {
                e.type_ = KVM_IRQ_ROUTING_IRQCHIP;
                e.u.irqchip.irqchip = chip;
                e.u.irqchip.pin = pin;
            }
            Route::Msi {
                address,
                data,
                devid,
            } => {
                e.type_ = KVM_IRQ_ROUTING_MSI;
                e.u.msi.address_lo = address as u32;
                e.u.msi.address_hi = (address >> 32) as u32;
                e.u.msi.data = data;
                if let Some(id) = devid {
                    e.flags = KVM_MSI_VALID_DEVID;
                    e.u.msi.__bindgen_anon_1.devid = id;
                }
            }
        }
        e
    }

    impl IrqRouting for KvmRouting {
        fn set_routes(&self, routes: &[(u32, Route)]) -> io::Result<()> {
            let entries: Vec<kvm_irq_routing_entry> =
                routes.iter().map(|(g, r)| entry(*g, r)).collect();
            let table = KvmIrqRouting::from_entries(&entries)
                .map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
            self.vm.set_gsi_routing(&table).map_err(to_io)
        }

        fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> io::Result<()> {
            self.vm.register_irqfd(fd, gsi).map_err(to_io)
        }

        fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> io::Result<()> {
            self.vm.unregister_irqfd(fd, gsi).map_err(to_io)
        }
    }

    /// The irqchip routes KVM installs with KVM_CREATE_IRQCHIP on x86 (its default_routing):
    /// GSI n goes to IOAPIC pin n and, for n < 16, to PIC pin n % 8 (master below 8, slave
    /// above); the MP table describes the same wiring.
    #[cfg(target_arch = "x86_64")]
    pub fn x86_legacy_routes() -> Vec<(u32, Route)> {
        let mut v = Vec::new();
        for gsi in 0..24u32 {
            v.push((gsi, Route::Irqchip { chip: 2, pin: gsi }));
            if gsi < 16 {
                v.push((
                    gsi,
                    Route::Irqchip {
                        chip: gsi / 8,
                        pin: gsi % 8,
                    },
                ));
            }
        }
        v
    }
}

/// A recording [`IrqRouting`] for tests.
#[cfg(test)]
pub(crate) mod test_utils {
    use super::*;

    /// Records routing tables and irqfds.
    #[derive(Default)]
    pub struct FakeRouting {
        /// Every table set.
        pub tables: Mutex<Vec<Vec<(u32, Route)>>>,
        /// GSIs with an irqfd.
        pub irqfds: Mutex<Vec<u32>>,
        /// Fail set_routes.
        pub fail_routes: std::sync::atomic::AtomicBool,
        /// Refuse an irqfd on this GSI.
        pub fail_irqfd: Mutex<Option<u32>>,
    }

    impl IrqRouting for FakeRouting {
        fn set_routes(&self, routes: &[(u32, Route)]) -> io::Result<()> {
            if self.fail_routes.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            self.tables.lock().unwrap().push(routes.to_vec());
            Ok(())
        }
        fn register_irqfd(&self, _fd: &EventFd, gsi: u32) -> io::Result<()> {
            if *self.fail_irqfd.lock().unwrap() == Some(gsi) {
                return Err(io::Error::from_raw_os_error(libc::ENOMEM));
            }
            self.irqfds.lock().unwrap().push(gsi);
            Ok(())
        }
        fn unregister_irqfd(&self, _fd: &EventFd, gsi: u32) -> io::Result<()> {
            self.irqfds.lock().unwrap().retain(|g| *g != gsi);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_utils::FakeRouting as Fake;

    const LEGACY: [(u32, Route); 1] = [(4, Route::Irqchip { chip: 2, pin: 4 })];

    fn setup() -> (Arc<Fake>, Arc<InterruptManager>) {
        let fake = Arc::new(Fake::default());
        let mgr = Arc::new(InterruptManager::new(fake.clone(), &LEGACY, 24, 32));
        (fake, mgr)
    }

    fn msg(data: u32) -> MsiMessage {
        MsiMessage {
            address: 0xfee0_0000,
            data,
        }
    }

    #[test]
    fn groups_get_distinct_gsis_and_irqfds() {
        let (fake, mgr) = setup();
        let a = mgr.msi_group(3, None).unwrap();
        let b = mgr.msi_group(2, Some(0x18)).unwrap();
        assert_eq!(
            (a.gsi(0), a.gsi(2), b.gsi(0), b.gsi(1)),
            (Some(24), Some(26), Some(27), Some(28))
        );
        assert_eq!(*fake.irqfds.lock().unwrap(), vec![24, 25, 26, 27, 28]);
        // New groups route nothing.
        assert!(fake.tables.lock().unwrap().is_empty());
        assert!(matches!(
            mgr.msi_group(4, None),
            Err(InterruptManagerError::NoGsi(4, 32))
        ));
    }

    #[test]
    fn update_installs_reroutes_and_masks_keeping_legacy_routes() {
        let (fake, mgr) = setup();
        let g = mgr.msi_group(2, Some(7)).unwrap();
        g.update(1, msg(0x41), false).unwrap();
        let last = fake.tables.lock().unwrap().last().cloned().unwrap();
        assert_eq!(
            last,
            vec![
                LEGACY[0],
                (
                    25,
                    Route::Msi {
                        address: 0xfee0_0000,
                        data: 0x41,
                        devid: Some(7)
                    }
                )
            ]
        );
        g.update(1, msg(0x42), false).unwrap();
        g.update(1, msg(0x42), false).unwrap(); // unchanged: no new table
        assert_eq!(fake.tables.lock().unwrap().len(), 2);
        g.update(1, msg(0x42), true).unwrap();
        assert_eq!(
            fake.tables.lock().unwrap().last().unwrap(),
            &vec![LEGACY[0]]
        );
        assert!(matches!(
            g.update(2, msg(0), false),
            Err(InterruptError::NoSuchVector { index: 2, count: 2 })
        ));
    }

    #[test]
    fn a_fixed_doorbell_replaces_the_guest_iova() {
        let (fake, mgr) = setup();
        let g = mgr.msi_group_at(1, Some(0x10), 0x0203_0040).unwrap();
        // The guest behind its IOMMU programs an IOVA, not the doorbell's GPA.
        g.update(
            0,
            MsiMessage {
                address: 0xffff_f000,
                data: 5,
            },
            false,
        )
        .unwrap();
        let last = fake.tables.lock().unwrap().last().cloned().unwrap();
        assert_eq!(
            last[1].1,
            Route::Msi {
                address: 0x0203_0040,
                data: 5,
                devid: Some(0x10)
            }
        );
    }

    #[test]
    fn doorbell_groups_reuse_freed_gsis_and_a_half_built_one_gives_them_back() {
        let (fake, mgr) = setup();
        let a = mgr.msi_group(3, None).unwrap();
        let _b = mgr.msi_group(1, None).unwrap();
        drop(a);
        // 24..=26 are free again; the irqfd on 26 fails half way through the group.
        *fake.fail_irqfd.lock().unwrap() = Some(26);
        assert!(matches!(
            mgr.msi_group_at(4, Some(0x10), 0x0203_0040),
            Err(InterruptManagerError::Kvm(_))
        ));
        assert_eq!(mgr.gsis_in_use(), 1);
        assert_eq!(*fake.irqfds.lock().unwrap(), vec![27]);
        *fake.fail_irqfd.lock().unwrap() = None;
        let g = mgr.msi_group_at(4, Some(0x10), 0x0203_0040).unwrap();
        assert_eq!(
            (0..4).map(|i| g.gsi(i).unwrap()).collect::<Vec<_>>(),
            vec![24, 25, 26, 28]
        );
        g.update(3, msg(9), false).unwrap();
        let last = fake.tables.lock().unwrap().last().cloned().unwrap();
        assert_eq!(
            last[1],
            (
                28,
                Route::Msi {
                    address: 0x0203_0040,
                    data: 9,
                    devid: Some(0x10)
                }
            )
        );
        drop(g);
        assert_eq!(mgr.gsis_in_use(), 1);
    }

    #[test]
    fn failed_route_leaves_table_unchanged() {
        let (fake, mgr) = setup();
        let g = mgr.msi_group(1, None).unwrap();
        fake.fail_routes
            .store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(matches!(
            g.update(0, msg(1), false),
            Err(InterruptError::Route { index: 0, .. })
        ));
        assert_eq!(mgr.routes(), LEGACY.to_vec());
    }

    #[test]
    fn trigger_signals_the_vector_eventfd() {
        let (_fake, mgr) = setup();
        let g = mgr.msi_group(2, None).unwrap();
        g.trigger(1).unwrap();
        assert_eq!(g.notifier(1).unwrap().read().unwrap(), 1);
        assert!(g.notifier(0).unwrap().read().is_err()); // nothing pending (EAGAIN)
        assert!(g.trigger(5).is_err());
    }

    #[test]
    fn dropped_groups_give_their_gsis_back() {
        let (_fake, mgr) = setup();
        let a = mgr.msi_group(3, None).unwrap();
        let b = mgr.msi_group(2, None).unwrap();
        assert_eq!(mgr.gsis_in_use(), 5);
        drop(a);
        assert_eq!(mgr.gsis_in_use(), 2);
        // Reused lowest first, then fresh ones.
        let c = mgr.msi_group(4, None).unwrap();
        assert_eq!(
            (0..4).map(|i| c.gsi(i).unwrap()).collect::<Vec<_>>(),
            vec![24, 25, 26, 29]
        );
        drop((b, c));
        assert_eq!(mgr.gsis_in_use(), 0);
        // Cycles do not grow the space: 32 - 24 = 8 GSIs suffice forever.
        for _ in 0..20 {
            let g = mgr.msi_group(8, None).unwrap();
            assert!(mgr.msi_group(1, None).is_err());
            drop(g);
        }
    }

    #[test]
    fn drop_removes_routes_and_irqfds() {
        let (fake, mgr) = setup();
        let g = mgr.msi_group(2, None).unwrap();
        g.update(0, msg(1), false).unwrap();
        drop(g);
        assert!(fake.irqfds.lock().unwrap().is_empty());
        assert_eq!(mgr.routes(), LEGACY.to_vec());
    }

    #[test]
    fn kvm_entries_encode_devid() {
        let e = kvm::entry(
            30,
            &Route::Msi {
                address: 0x1_0808_0040,
                data: 5,
                devid: Some(0x10),
            },
        );
        assert_eq!(e.type_, kvm_bindings::KVM_IRQ_ROUTING_MSI);
        assert_eq!(e.flags, kvm_bindings::KVM_MSI_VALID_DEVID);
        // SAFETY: test reads the union member it just wrote.
        unsafe {
            assert_eq!(
                (e.u.msi.address_lo, e.u.msi.address_hi, e.u.msi.data),
                (0x0808_0040, 1, 5)
            );
            assert_eq!(e.u.msi.__bindgen_anon_1.devid, 0x10);
        }
        let e = kvm::entry(4, &Route::Irqchip { chip: 2, pin: 4 });
        assert_eq!(e.flags, 0);
        // SAFETY: as above.
        unsafe { assert_eq!((e.u.irqchip.irqchip, e.u.irqchip.pin), (2, 4)) };
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x86_legacy_routes_match_kvm_defaults() {
        let r = kvm::x86_legacy_routes();
        assert_eq!(r.len(), 24 + 16);
        assert!(r.contains(&(0, Route::Irqchip { chip: 0, pin: 0 })));
        assert!(r.contains(&(0, Route::Irqchip { chip: 2, pin: 0 })));
        assert!(r.contains(&(4, Route::Irqchip { chip: 2, pin: 4 })));
        assert!(r.contains(&(9, Route::Irqchip { chip: 1, pin: 1 })));
        assert!(r.contains(&(23, Route::Irqchip { chip: 2, pin: 23 })));
        assert!(!r.contains(&(20, Route::Irqchip { chip: 0, pin: 4 })));
    }
}
