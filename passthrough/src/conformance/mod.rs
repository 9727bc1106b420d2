//! The iommufd conformance suite: one list of cases, drawn from the kernel's selftest
//! (`tools/testing/selftests/iommu/iommufd.c`: map/unmap errors, IOVA ranges, allowed
//! IOVAs, automatic IOVA, attach narrowing), each asserting exact errnos, run against
//! any [`Iommufd`] through a [`Fixture`]:
//!
//! - [`ModelFixture`] runs it against [`crate::ModelIommufd`] on any host
//!   (`tests/conformance_model.rs`);
//! - [`KernelFixture`] runs it against `/dev/iommu` and a VFIO cdev inside the rigs
//!   (the `iommufd-conformance` binary).
//!
//! Every case starts from a fresh iommufd (a fresh model, or a new open of `/dev/iommu`)
//! and a fresh device handle, so cases do not depend on each other. Cases that need a
//! device are skipped without one; a case may also skip itself when the kernel lacks an
//! ioctl (`ENOTTY`), e.g. `IOMMU_IOAS_MAP_FILE` before Linux 6.13.

mod cases;
mod device_cases;
mod nested_cases;

use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use crate::iommufd::{errno_name, DeviceHandle, HwInfoType, Iommufd, IommufdError};
use crate::iova::IovaRange;
use crate::model::{ModelDevice, ModelIommufd};

pub use cases::CASES;

/// What the suite runs against.
pub trait Fixture {
    /// A fresh backend: a new iommufd context with no objects.
    fn open(&mut self) -> Result<Box<dyn Iommufd>, String>;

    /// A new handle to the device under test, or `None` without one.
    fn device(&mut self) -> Option<Result<DeviceHandle, String>>;

    /// Whether there is a device under test.
    fn has_device(&self) -> bool;

    /// The device's reserved regions that iommufd enforces (as sysfs reports them).
    fn device_reserved(&self) -> Vec<IovaRange>;

    /// Whether the device's IOMMU accepts `IOMMU_HWPT_ALLOC_NEST_PARENT`, if known.
    fn expects_nesting(&self) -> Option<bool>;

    /// The IOMMU type `IOMMU_GET_HW_INFO` should report, if known.
    fn expected_hw_info(&self) -> Option<HwInfoType>;

    /// The host page size (the kernel's `PAGE_SIZE`).
    fn page_size(&self) -> u64 {
        crate::sys::host_page_size()
    }

    /// The most alignment `iopt_alloc_iova` gives an automatic IOVA: HPAGE_SIZE (2 MiB) on a
    /// kernel with CONFIG_TRANSPARENT_HUGEPAGE (it has /sys/kernel/mm/transparent_hugepage),
    /// else PAGE_SIZE. Found in the x86_64 rig, whose kernel has no THP.
    fn max_auto_iova_alignment(&self) -> u64 {
        if std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            2 << 20
        } else {
            self.page_size()
        }
    }
}

/// Runs the suite against [`ModelIommufd`] with a simulated device.
#[derive(Clone, Debug)]
pub struct ModelFixture {
    /// The device the device cases bind (`None`: skip them).
    pub device: Option<ModelDevice>,
    /// The model's `PAGE_SIZE`.
    pub page_size: u64,
}

impl ModelFixture {
    /// A fixture with `device` and this host's page size.
    pub fn new(device: Option<ModelDevice>) -> ModelFixture {
        ModelFixture {
            device,
            page_size: crate::sys::host_page_size(),
        }
    }
}

impl Fixture for ModelFixture {
    /// The model behaves like a kernel with transparent huge pages.
    fn max_auto_iova_alignment(&self) -> u64 {
        2 << 20
    }

    fn open(&mut self) -> Result<Box<dyn Iommufd>, String> {
        Ok(Box::new(ModelIommufd::with_page_size(self.page_size)))
    }

    fn device(&mut self) -> Option<Result<DeviceHandle, String>> {
        self.device.clone().map(|d| Ok(DeviceHandle::Model(d)))
    }

    fn has_device(&self) -> bool {
        self.device.is_some()
    }

    fn device_reserved(&self) -> Vec<IovaRange> {
        self.device
            .as_ref()
            .map(|d| d.reserved.clone())
            .unwrap_or_default()
    }

    fn expects_nesting(&self) -> Option<bool> {
        self.device.as_ref().map(|d| d.nesting)
    }

    fn expected_hw_info(&self) -> Option<HwInfoType> {
        self.device.as_ref().map(|d| d.hw_info.kind)
    }

    fn page_size(&self) -> u64 {
        self.page_size
    }
}

/// Runs the suite against the kernel: `/dev/iommu` and optionally one VFIO cdev.
#[derive(Clone, Debug)]
pub struct KernelFixture {
    /// The iommufd node, usually `/dev/iommu`.
    pub iommufd: PathBuf,
    /// The VFIO cdev of the device under test, e.g. `/dev/vfio/devices/vfio0`.
    pub vfio_cdev: Option<PathBuf>,
    /// Its enforced reserved regions (see [`crate::Sysfs`]).
    pub reserved: Vec<IovaRange>,
    /// Whether its IOMMU supports nesting parents, if known.
    pub nesting: Option<bool>,
    /// Its IOMMU type, if known.
    pub hw_info: Option<HwInfoType>,
}

impl Fixture for KernelFixture {
    fn open(&mut self) -> Result<Box<dyn Iommufd>, String> {
        crate::KernelIommufd::open_path(&self.iommufd)
            .map(|k| Box::new(k) as Box<dyn Iommufd>)
            .map_err(|e| e.to_string())
    }

    fn device(&mut self) -> Option<Result<DeviceHandle, String>> {
        let path = self.vfio_cdev.as_ref()?;
        Some(
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map(|f| DeviceHandle::VfioCdev(OwnedFd::from(f)))
                .map_err(|e| format!("cannot open {}: {e}", path.display())),
        )
    }

    fn has_device(&self) -> bool {
        self.vfio_cdev.is_some()
    }

    fn device_reserved(&self) -> Vec<IovaRange> {
        self.reserved.clone()
    }

    fn expects_nesting(&self) -> Option<bool> {
        self.nesting
    }

    fn expected_hw_info(&self) -> Option<HwInfoType> {
        self.hw_info
    }
}

/// Why a case did not pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaseError {
    /// An expectation failed.
    Fail(String),
    /// The case does not apply here.
    Skip(String),
}

impl From<&str> for CaseError {
    fn from(s: &str) -> CaseError {
        CaseError::Fail(s.to_owned())
    }
}

impl From<String> for CaseError {
    fn from(s: String) -> CaseError {
        CaseError::Fail(s)
    }
}

/// What a case returns.
pub type CaseResult = Result<(), CaseError>;

/// One conformance case.
#[derive(Clone, Copy)]
pub struct Case {
    /// Short name, printed per case.
    pub name: &'static str,
    /// Whether it binds the device under test (skipped without one).
    pub needs_device: bool,
    /// The test.
    pub run: fn(&mut dyn Fixture) -> CaseResult,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case").field("name", &self.name).finish()
    }
}

/// How one case ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// All expectations held.
    Pass,
    /// Why it failed.
    Fail(String),
    /// Why it did not apply.
    Skip(String),
}

/// Totals of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Cases that passed.
    pub passed: usize,
    /// Cases that failed, with why.
    pub failed: Vec<(&'static str, String)>,
    /// Cases skipped.
    pub skipped: usize,
}

impl Summary {
    /// True if nothing failed.
    pub fn ok(&self) -> bool {
        self.failed.is_empty()
    }
}

/// Runs the cases whose name contains `filter` (all with `None`), calling `report` after
/// each.
pub fn run(
    fixture: &mut dyn Fixture,
    filter: Option<&str>,
    mut report: impl FnMut(&Case, &Outcome),
) -> Summary {
    let mut summary = Summary::default();
    for case in CASES
        .iter()
        .filter(|c| filter.is_none_or(|f| c.name.contains(f)))
    {
        let outcome = if case.needs_device && !fixture.has_device() {
            Outcome::Skip("no device under test".into())
        } else {
            match catch_unwind(AssertUnwindSafe(|| (case.run)(&mut *fixture))) {
                Ok(Ok(())) => Outcome::Pass,
                Ok(Err(CaseError::Fail(why))) => Outcome::Fail(why),
                Ok(Err(CaseError::Skip(why))) => Outcome::Skip(why),
                Err(_) => Outcome::Fail("the case panicked".into()),
            }
        };
        match &outcome {
            Outcome::Pass => summary.passed += 1,
            Outcome::Fail(why) => summary.failed.push((case.name, why.clone())),
            Outcome::Skip(_) => summary.skipped += 1,
        }
        report(case, &outcome);
    }
    summary
}

fn errno_str(errno: i32) -> String {
    errno_name(errno)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("errno {errno}"))
}

/// `r` must succeed.
pub(crate) fn ok<T>(r: Result<T, IommufdError>, what: &str) -> Result<T, CaseError> {
    r.map_err(|e| CaseError::Fail(format!("{what}: unexpected error: {e}")))
}

/// `r` must fail with `errno`.
pub(crate) fn expect_errno<T: std::fmt::Debug>(
    r: Result<T, IommufdError>,
    errno: i32,
    what: &str,
) -> CaseResult {
    match r {
        Ok(v) => Err(CaseError::Fail(format!(
            "{what}: succeeded with {v:?}, expected {}",
            errno_str(errno)
        ))),
        Err(e) if e.errno() == errno => Ok(()),
        Err(e) => Err(CaseError::Fail(format!(
            "{what}: got {} ({e}), expected {}",
            errno_str(e.errno()),
            errno_str(errno)
        ))),
    }
}

/// `cond` must hold.
pub(crate) fn check(cond: bool, what: impl FnOnce() -> String) -> CaseResult {
    if cond {
        Ok(())
    } else {
        Err(CaseError::Fail(what()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_names_are_unique() {
        let mut names: Vec<_> = CASES.iter().map(|c| c.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CASES.len());
    }

    #[test]
    fn no_device_skips_device_cases() {
        let mut fixture = ModelFixture::new(None);
        let s = run(&mut fixture, None, |_, _| {});
        assert!(s.ok(), "{:?}", s.failed);
        assert_eq!(s.skipped, CASES.iter().filter(|c| c.needs_device).count());
    }

    #[test]
    fn kernel_fixture_without_iommufd_fails_every_case() {
        let mut fixture = KernelFixture {
            iommufd: "/nonexistent/iommu".into(),
            vfio_cdev: None,
            reserved: Vec::new(),
            nesting: None,
            hw_info: None,
        };
        let s = run(&mut fixture, Some("destroy_unknown_id"), |_, _| {});
        assert_eq!(s.failed.len(), 1);
        assert!(s.failed[0].1.contains("CONFIG_IOMMUFD"), "{:?}", s.failed);
    }
}
