//! Runs the iommufd conformance suite against the kernel: `/dev/iommu` and, for the
//! device cases, a VFIO cdev. Made for the rigs:
//!
//! ```text
//! iommufd-conformance --vfio-cdev /dev/vfio/devices/vfio0 [--iommufd /dev/iommu]
//!     [--sysfs /sys] [--expect-nesting yes|no] [--expect-iommu vtd|smmuv3|amd]
//!     [--filter NAME-PART] [--list]
//! ```
//!
//! Prints one line per case (`PASS name`, `FAIL name: why`, `SKIP name: why`) and ends
//! with exactly `N passed, N failed`. Exits 0 if nothing failed, 1 if something did, 2 on
//! bad arguments or setup errors.

use std::path::PathBuf;
use std::process::ExitCode;

use passthrough::conformance::{run, KernelFixture, Outcome, CASES};
use passthrough::{HwInfoType, Sysfs};

const USAGE: &str = "usage: iommufd-conformance [--vfio-cdev PATH] [--iommufd PATH] \
[--sysfs PATH] [--expect-nesting yes|no] [--expect-iommu vtd|smmuv3|amd] [--filter TEXT] [--list]";

struct Args {
    fixture: KernelFixture,
    sysfs: PathBuf,
    filter: Option<String>,
    list: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        fixture: KernelFixture {
            iommufd: PathBuf::from(passthrough::kernel::IOMMUFD_PATH),
            vfio_cdev: None,
            reserved: Vec::new(),
            nesting: None,
            hw_info: None,
        },
        sysfs: PathBuf::from("/sys"),
        filter: None,
        list: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--vfio-cdev" => args.fixture.vfio_cdev = Some(PathBuf::from(value()?)),
            "--iommufd" => args.fixture.iommufd = PathBuf::from(value()?),
            "--sysfs" => args.sysfs = PathBuf::from(value()?),
            "--filter" => args.filter = Some(value()?),
            "--expect-nesting" => {
                args.fixture.nesting = Some(match value()?.as_str() {
                    "yes" => true,
                    "no" => false,
                    other => {
                        return Err(format!("--expect-nesting takes yes or no, not {other:?}"))
                    }
                })
            }
            "--expect-iommu" => {
                args.fixture.hw_info = Some(match value()?.as_str() {
                    "vtd" => HwInfoType::INTEL_VTD,
                    "smmuv3" => HwInfoType::ARM_SMMUV3,
                    "amd" => HwInfoType::AMD,
                    other => {
                        return Err(format!(
                            "--expect-iommu takes vtd, smmuv3 or amd, not {other:?}"
                        ))
                    }
                })
            }
            "--list" => args.list = true,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let mut args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    if args.list {
        for case in CASES {
            let needs = if case.needs_device { " (device)" } else { "" };
            println!("{}{needs}", case.name);
        }
        return ExitCode::SUCCESS;
    }
    // One clear line instead of every case failing the same way.
    if let Err(e) = passthrough::KernelIommufd::open_path(&args.fixture.iommufd) {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    if let Some(cdev) = &args.fixture.vfio_cdev {
        let sysfs = Sysfs::new(&args.sysfs);
        let regions = sysfs
            .vfio_cdev_pci_address(cdev)
            .and_then(|bdf| sysfs.pci_reserved_regions(&bdf).map(|r| (bdf, r)));
        match regions {
            Ok((bdf, regions)) => {
                for r in &regions {
                    println!("# {bdf}: reserved {} {}", r.range, r.kind);
                }
                args.fixture.reserved = regions
                    .iter()
                    .filter(|r| r.kind.enforced_by_iommufd())
                    .map(|r| r.range)
                    .collect();
            }
            Err(e) => {
                eprintln!(
                    "cannot find the reserved regions of {}: {e}",
                    cdev.display()
                );
                return ExitCode::from(2);
            }
        }
    }
    let summary = run(
        &mut args.fixture,
        args.filter.as_deref(),
        |case, outcome| match outcome {
            Outcome::Pass => println!("PASS {}", case.name),
            Outcome::Fail(why) => println!("FAIL {}: {why}", case.name),
            Outcome::Skip(why) => println!("SKIP {}: {why}", case.name),
        },
    );
    if summary.skipped > 0 {
        println!("# {} skipped", summary.skipped);
    }
    println!("{} passed, {} failed", summary.passed, summary.failed.len());
    if summary.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
