//! What the host reserves in a device's IOVA space, from sysfs:
//! `/sys/kernel/iommu_groups/<N>/reserved_regions`, one region per line,
//! `"0x0000000008000000 0x00000000080fffff msi"` (start, inclusive end, type; the
//! format of `iommu_group_show_resv_regions` in `drivers/iommu/iommu.c`), and the way
//! from a PCI address or a VFIO cdev to its group.
//!
//! The sysfs root is injectable ([`Sysfs::new`]) so tests run on a fake tree. Nothing here
//! changes sysfs, and this module does not decide what to do with a region: the memory
//! map planner does (it keeps guest RAM out of all of them).

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::iova::IovaRange;

/// Errors reading reserved regions.
#[derive(Debug, thiserror::Error)]
pub enum ReservedRegionsError {
    /// A sysfs file or link could not be read.
    #[error("cannot read {}: {source}{}", .path.display(), io_hint(.source))]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A line of `reserved_regions` is not `<start> <end> <type>`.
    #[error(
        "{}: line {line} {text:?} is not \"<start> <end> <type>\" ({reason}); \
         is this a reserved_regions file?",
        .path.display()
    )]
    Parse {
        /// The file (or `<string>`).
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The device has no IOMMU group.
    #[error(
        "device {device} has no IOMMU group: enable the IOMMU (intel_iommu=on, \
         iommu.passthrough=0, an SMMU in the firmware tables) or pass another device"
    )]
    NoIommuGroup {
        /// The device.
        device: String,
    },
    /// A device name that cannot be a PCI address or VFIO cdev name.
    #[error(
        "{0:?} is not a PCI address like 0000:00:03.0 or a VFIO cdev like vfio0 \
         (/dev/vfio/devices/vfio0)"
    )]
    BadDeviceName(String),
}

fn io_hint(err: &io::Error) -> &'static str {
    match err.kind() {
        io::ErrorKind::NotFound => "; does the device exist, and is sysfs mounted?",
        io::ErrorKind::PermissionDenied => "; run as root",
        _ => "",
    }
}

/// The type of a reserved region (`enum iommu_resv_type`, as sysfs prints it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReservedKind {
    /// `direct`: identity-mapped for the device (e.g. an RMRR).
    Direct,
    /// `direct-relaxable`: identity-mapped, but may be given up for device assignment.
    /// iommufd does not reserve these; the planner still avoids them.
    DirectRelaxable,
    /// `reserved`: never translated.
    Reserved,
    /// `msi`: the MSI doorbell window (hardware on x86, the software window on ARM).
    Msi,
    /// A type this code does not know, treated as reserved.
    Unknown,
}

impl ReservedKind {
    fn parse(s: &str) -> ReservedKind {
        match s {
            "direct" => ReservedKind::Direct,
            "direct-relaxable" => ReservedKind::DirectRelaxable,
            "reserved" => ReservedKind::Reserved,
            "msi" => ReservedKind::Msi,
            _ => ReservedKind::Unknown,
        }
    }

    /// Whether iommufd reserves such a region in an IOAS when the device attaches
    /// (`iopt_table_enforce_dev_resv_regions` skips `direct-relaxable`).
    pub fn enforced_by_iommufd(self) -> bool {
        self != ReservedKind::DirectRelaxable
    }
}

impl fmt::Display for ReservedKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReservedKind::Direct => "direct",
            ReservedKind::DirectRelaxable => "direct-relaxable",
            ReservedKind::Reserved => "reserved",
            ReservedKind::Msi => "msi",
            ReservedKind::Unknown => "unknown",
        })
    }
}

/// One line of `reserved_regions`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReservedRegion {
    /// The IOVA range (sysfs prints the inclusive end).
    pub range: IovaRange,
    /// Its type.
    pub kind: ReservedKind,
}

fn parse_hex(s: &str) -> Option<u64> {
    let digits = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
    u64::from_str_radix(digits, 16).ok()
}

/// Parses the text of a `reserved_regions` file. `origin` names it in errors.
pub fn parse(text: &str, origin: &Path) -> Result<Vec<ReservedRegion>, ReservedRegionsError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason| ReservedRegionsError::Parse {
            path: origin.to_owned(),
            line: i + 1,
            text: line.to_owned(),
            reason,
        };
        let mut fields = line.split_whitespace();
        let (Some(start), Some(end), Some(kind), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(bad("expected three fields"));
        };
        let start = parse_hex(start).ok_or_else(|| bad("start is not a 0x hex number"))?;
        let end = parse_hex(end).ok_or_else(|| bad("end is not a 0x hex number"))?;
        let range = IovaRange::new(start, end).ok_or_else(|| bad("end is below start"))?;
        out.push(ReservedRegion {
            range,
            kind: ReservedKind::parse(kind),
        });
    }
    Ok(out)
}

/// Checks a PCI address `dddd:bb:dd.f` (hex digits), so it can go into a path.
fn check_pci_address(bdf: &str) -> Result<(), ReservedRegionsError> {
    let shape_ok = bdf.len() == 12
        && bdf.char_indices().all(|(i, c)| match i {
            4 | 7 => c == ':',
            10 => c == '.',
            _ => c.is_ascii_hexdigit(),
        });
    if shape_ok {
        Ok(())
    } else {
        Err(ReservedRegionsError::BadDeviceName(bdf.to_owned()))
    }
}

/// A sysfs tree: `/sys` on a host, a directory of fake files in tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sysfs {
    root: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Sysfs::host()
    }
}

impl Sysfs {
    /// The host's `/sys`.
    pub fn host() -> Sysfs {
        Sysfs::new("/sys")
    }

    /// A sysfs tree rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Sysfs {
        Sysfs { root: root.into() }
    }

    fn read_link_name(&self, link: &Path, device: &str) -> Result<String, ReservedRegionsError> {
        let target = fs::read_link(link).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound && link.parent().is_some_and(Path::exists) {
                ReservedRegionsError::NoIommuGroup {
                    device: device.to_owned(),
                }
            } else {
                ReservedRegionsError::Io {
                    path: link.to_owned(),
                    source,
                }
            }
        })?;
        target
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .ok_or_else(|| ReservedRegionsError::Io {
                path: link.to_owned(),
                source: io::Error::new(io::ErrorKind::InvalidData, "link has no final name"),
            })
    }

    /// The IOMMU group of a PCI device (`bus/pci/devices/<bdf>/iommu_group`).
    pub fn pci_iommu_group(&self, bdf: &str) -> Result<u32, ReservedRegionsError> {
        check_pci_address(bdf)?;
        let link = self
            .root
            .join("bus/pci/devices")
            .join(bdf)
            .join("iommu_group");
        let name = self.read_link_name(&link, bdf)?;
        name.parse().map_err(|_| ReservedRegionsError::Io {
            path: link,
            source: io::Error::new(io::ErrorKind::InvalidData, "group is not a number"),
        })
    }

    /// The reserved regions of IOMMU group `group`.
    pub fn group_reserved_regions(
        &self,
        group: u32,
    ) -> Result<Vec<ReservedRegion>, ReservedRegionsError> {
        let path = self
            .root
            .join("kernel/iommu_groups")
            .join(group.to_string())
            .join("reserved_regions");
        let text = fs::read_to_string(&path).map_err(|source| ReservedRegionsError::Io {
            path: path.clone(),
            source,
        })?;
        parse(&text, &path)
    }

    /// The reserved regions of the group of a PCI device.
    pub fn pci_reserved_regions(
        &self,
        bdf: &str,
    ) -> Result<Vec<ReservedRegion>, ReservedRegionsError> {
        self.group_reserved_regions(self.pci_iommu_group(bdf)?)
    }

    /// The PCI address behind a VFIO cdev, given its node (`/dev/vfio/devices/vfio0`) or
    /// name (`vfio0`), via `class/vfio-dev/<name>/device`.
    pub fn vfio_cdev_pci_address(&self, cdev: &Path) -> Result<String, ReservedRegionsError> {
        let shown = cdev.display().to_string();
        let name = cdev
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| {
                n.strip_prefix("vfio")
                    .is_some_and(|num| !num.is_empty() && num.bytes().all(|b| b.is_ascii_digit()))
            })
            .ok_or_else(|| ReservedRegionsError::BadDeviceName(shown.clone()))?;
        let link = self.root.join("class/vfio-dev").join(name).join("device");
        let bdf = self.read_link_name(&link, &shown)?;
        check_pci_address(&bdf)?;
        Ok(bdf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn r(start: u64, last: u64) -> IovaRange {
        IovaRange::new(start, last).unwrap()
    }

    #[test]
    fn parses_the_rig_files() {
        let arm = "0x0000000008000000 0x00000000080fffff msi\n";
        assert_eq!(
            parse(arm, Path::new("x")).unwrap(),
            vec![ReservedRegion {
                range: r(0x0800_0000, 0x080f_ffff),
                kind: ReservedKind::Msi
            }]
        );
        let x86 = "0x00000000000a0000 0x00000000000bffff direct-relaxable\n\
                   0x00000000fee00000 0x00000000feefffff msi\n\n";
        let v = parse(x86, Path::new("x")).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].kind, ReservedKind::DirectRelaxable);
        assert!(!v[0].kind.enforced_by_iommufd());
        assert_eq!(v[1].range, r(0xfee0_0000, 0xfeef_ffff));
        assert_eq!(parse("", Path::new("x")).unwrap(), vec![]);
        let odd = parse("0x0 0xfff something-new", Path::new("x")).unwrap();
        assert_eq!(odd[0].kind, ReservedKind::Unknown);
    }

    #[test]
    fn bad_lines_are_named() {
        let cases = [
            ("0x10 0x20", "three fields"),
            ("0x10 0x20 msi extra", "three fields"),
            ("10 0x20 msi", "start"),
            ("0x10 0xzz msi", "end is not"),
            ("0x20 0x10 msi", "below start"),
        ];
        for (line, want) in cases {
            let text = format!("0x0 0x1 msi\n{line}\n");
            let err = parse(&text, Path::new("/sys/f")).unwrap_err().to_string();
            assert!(err.contains("line 2"), "{err}");
            assert!(err.contains(want), "{err}");
        }
    }

    fn fake_sysfs() -> PathBuf {
        static N: AtomicU32 = AtomicU32::new(0);
        let root = std::env::temp_dir().join(format!(
            "passthrough-sysfs-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&root);
        let group = root.join("kernel/iommu_groups/7");
        fs::create_dir_all(&group).unwrap();
        fs::write(
            group.join("reserved_regions"),
            "0x00000000fee00000 0x00000000feefffff msi\n",
        )
        .unwrap();
        let dev = root.join("devices/pci0000:00/0000:00:03.0");
        fs::create_dir_all(&dev).unwrap();
        symlink("../../../kernel/iommu_groups/7", dev.join("iommu_group")).unwrap();
        fs::create_dir_all(root.join("bus/pci/devices")).unwrap();
        symlink(
            "../../../devices/pci0000:00/0000:00:03.0",
            root.join("bus/pci/devices/0000:00:03.0"),
        )
        .unwrap();
        let nogroup = root.join("devices/pci0000:00/0000:00:04.0");
        fs::create_dir_all(&nogroup).unwrap();
        symlink(
            "../../../devices/pci0000:00/0000:00:04.0",
            root.join("bus/pci/devices/0000:00:04.0"),
        )
        .unwrap();
        let cdev = root.join("class/vfio-dev/vfio0");
        fs::create_dir_all(&cdev).unwrap();
        symlink(
            "../../../devices/pci0000:00/0000:00:03.0",
            cdev.join("device"),
        )
        .unwrap();
        root
    }

    #[test]
    fn follows_pci_and_cdev_links() {
        let root = fake_sysfs();
        let sysfs = Sysfs::new(&root);
        assert_eq!(sysfs.pci_iommu_group("0000:00:03.0").unwrap(), 7);
        let regions = sysfs.pci_reserved_regions("0000:00:03.0").unwrap();
        assert_eq!(regions[0].range, r(0xfee0_0000, 0xfeef_ffff));
        let bdf = sysfs
            .vfio_cdev_pci_address(Path::new("/dev/vfio/devices/vfio0"))
            .unwrap();
        assert_eq!(bdf, "0000:00:03.0");
        let err = sysfs.pci_iommu_group("0000:00:04.0").unwrap_err();
        assert!(
            matches!(err, ReservedRegionsError::NoIommuGroup { .. }),
            "{err}"
        );
        let err = sysfs.pci_iommu_group("0000:00:05.0").unwrap_err();
        assert!(matches!(err, ReservedRegionsError::Io { .. }), "{err}");
        for bad in ["../../etc", "0000:00:03.0/..", "0000-00-03.0", ""] {
            let err = sysfs.pci_iommu_group(bad).unwrap_err();
            assert!(
                matches!(err, ReservedRegionsError::BadDeviceName(_)),
                "{bad}"
            );
        }
        let err = sysfs
            .vfio_cdev_pci_address(Path::new("/dev/null"))
            .unwrap_err();
        assert!(matches!(err, ReservedRegionsError::BadDeviceName(_)));
        fs::remove_dir_all(root).unwrap();
    }
}
