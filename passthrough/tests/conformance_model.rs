//! The conformance suite against the model backend, with each rig's device flavour and
//! without a device. The same cases run against the kernel in the rigs through the
//! `iommufd-conformance` binary.

use passthrough::conformance::{run, Fixture, ModelFixture, Outcome, CASES};
use passthrough::iova::IovaRange;
use passthrough::{DeviceHandle, HwInfoType, Iommufd, ModelDevice};

fn run_all(mut fixture: ModelFixture) -> (usize, usize) {
    let mut lines = Vec::new();
    let summary = run(&mut fixture, None, |case, outcome| {
        lines.push(match outcome {
            Outcome::Pass => format!("PASS {}", case.name),
            Outcome::Fail(why) => format!("FAIL {}: {why}", case.name),
            Outcome::Skip(why) => format!("SKIP {}: {why}", case.name),
        })
    });
    assert!(summary.ok(), "failures:\n{}", lines.join("\n"));
    (summary.passed, summary.skipped)
}

/// The cases about nested translation (they skip where the IOMMU cannot nest).
const NESTED_CASES: [&str; 5] = [
    "viommu_needs_nest_parent",
    "vdevice_twice",
    "nested_ste_validation",
    "invalidate_stops_at_unknown_vsid",
    "veventq_one_per_type",
];

#[test]
fn every_case_passes_on_the_model_with_the_x86_rig_device() {
    let (passed, skipped) = run_all(ModelFixture::new(Some(ModelDevice::x86_vtd())));
    assert_eq!(
        (passed, skipped),
        (CASES.len() - NESTED_CASES.len(), NESTED_CASES.len())
    );
}

#[test]
fn nested_cases_skip_on_an_smmu_without_a_coherent_stage_2() {
    // The aarch64 rig without its CANWBS patch: NEST_PARENT works, VIOMMU_ALLOC does not.
    let mut device = ModelDevice::arm_smmuv3();
    device.viommu = false;
    let mut skipped = Vec::new();
    let summary = run(
        &mut ModelFixture::new(Some(device)),
        None,
        |case, outcome| {
            if let Outcome::Skip(why) = outcome {
                assert!(why.contains("S2FWB/CANWBS"), "{why}");
                skipped.push(case.name);
            }
        },
    );
    assert!(summary.ok(), "{:?}", summary.failed);
    assert_eq!(skipped, NESTED_CASES);
}

#[test]
fn every_case_passes_on_the_model_with_the_aarch64_rig_device() {
    let (passed, skipped) = run_all(ModelFixture::new(Some(ModelDevice::arm_smmuv3())));
    assert_eq!((passed, skipped), (CASES.len(), 0));
}

#[test]
fn every_case_passes_on_a_64k_page_model() {
    let mut fixture = ModelFixture::new(Some(ModelDevice::arm_smmuv3()));
    fixture.page_size = 64 * 1024;
    let (passed, skipped) = run_all(fixture);
    assert_eq!((passed, skipped), (CASES.len(), 0));
}

#[test]
fn device_cases_skip_without_a_device_or_reserved_region() {
    let (passed, skipped) = run_all(ModelFixture::new(None));
    assert_eq!(passed + skipped, CASES.len());
    assert_eq!(skipped, CASES.iter().filter(|c| c.needs_device).count());

    // A device with a 32-bit aperture and no reserved region: the cases about reserved
    // regions and several ranges skip; the rest (the aperture's end serving as reserved
    // IOVA) pass.
    let mut fixture = ModelFixture::new(Some(ModelDevice::dma32("dma32")));
    let mut skipped = Vec::new();
    let summary = run(&mut fixture, None, |case, outcome| {
        if let Outcome::Skip(_) = outcome {
            skipped.push(case.name);
        }
    });
    assert!(summary.ok(), "{:?}", summary.failed);
    assert_eq!(
        skipped,
        [
            "iova_ranges_emsgsize_after_attach",
            "attach_refuses_mapped_reserved",
            "attach_refuses_allowed_reserved",
            "allow_over_reserved",
        ]
        .into_iter()
        .chain(NESTED_CASES)
        .collect::<Vec<_>>()
    );
}

/// A fixture that misreports the device's reserved regions.
struct Misreporting(ModelFixture, Vec<IovaRange>);

impl Fixture for Misreporting {
    fn open(&mut self) -> Result<Box<dyn Iommufd>, String> {
        self.0.open()
    }
    fn device(&mut self) -> Option<Result<DeviceHandle, String>> {
        self.0.device()
    }
    fn has_device(&self) -> bool {
        self.0.has_device()
    }
    fn device_reserved(&self) -> Vec<IovaRange> {
        self.1.clone()
    }
    fn expects_nesting(&self) -> Option<bool> {
        None
    }
    fn expected_hw_info(&self) -> Option<HwInfoType> {
        None
    }
}

#[test]
fn the_suite_catches_a_backend_that_ignores_a_reserved_region() {
    // The model device reserves one page at 0x1000, but the fixture (like sysfs would)
    // says the MSI window is reserved: the narrowing case must notice.
    let device = ModelDevice {
        reserved: vec![IovaRange::new(0x1000, 0x1fff).unwrap()],
        ..ModelDevice::x86_vtd()
    };
    let mut fixture = Misreporting(
        ModelFixture::new(Some(device)),
        vec![IovaRange::new(0xfee0_0000, 0xfeef_ffff).unwrap()],
    );
    let summary = run(&mut fixture, Some("attach_narrows_ranges"), |_, _| {});
    assert_eq!(summary.failed.len(), 1, "{summary:?}");
    assert!(
        summary.failed[0].1.contains("0xfee00000-0xfeefffff"),
        "{summary:?}"
    );
}
