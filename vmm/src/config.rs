//! What the user asked for: the VM's configuration, validated before anything is built.
//!
//! This module does not touch KVM or the host; limits that depend on the host (how many vCPUs
//! KVM allows, how much RAM the host has) are checked in [`crate::builder`] through
//! [`HostLimits`], so that every check here is a pure function and unit-tested.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use thiserror::Error;

/// Bytes in a KiB, MiB, GiB, TiB.
pub const KIB: u64 = 1 << 10;
/// Bytes in a MiB.
pub const MIB: u64 = 1 << 20;
/// Bytes in a GiB.
pub const GIB: u64 = 1 << 30;
/// Bytes in a TiB.
pub const TIB: u64 = 1 << 40;

/// The smallest guest RAM we accept: room for the boot structures below 1 MiB and a kernel.
pub const MIN_MEMORY: u64 = 8 * MIB;
/// 2 MiB: the huge page size RAM sizes are rounded to when hugepages are asked for.
pub const HUGE_PAGE_2M: u64 = 2 * MIB;

/// Errors in the configuration.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// More hotplug slots than the layout reserves windows for.
    #[error("--hotplug-slots {0} is too many: at most {max} (each slot is a PCIe root port with its own bus and a slice of the PCI windows)", max = MAX_HOTPLUG_SLOTS)]
    TooManyHotplugSlots(u8),
    /// A size string that is not a number with an optional K/M/G/T suffix.
    #[error("invalid size '{0}': use a number with an optional K, M, G or T suffix (e.g. 512M, 2G); a bare number means MiB")]
    InvalidSize(String),
    /// Zero or too little guest RAM.
    #[error("--memory {0} is too small: the guest needs at least {min} MiB", min = MIN_MEMORY / MIB)]
    MemoryTooSmall(Size),
    /// RAM size not a multiple of the page size in use.
    #[error(
        "--memory {size} is not a multiple of the {page} page size; round it (e.g. to a whole MiB)"
    )]
    MemoryNotAligned {
        /// Requested size.
        size: Size,
        /// Page size it must be a multiple of.
        page: Size,
    },
    /// More RAM than the host has.
    #[error("--memory {asked} is more than the host can give ({host} available); ask for less")]
    MemoryTooLarge {
        /// Requested size.
        asked: Size,
        /// What the host has.
        host: Size,
    },
    /// Zero vCPUs.
    #[error("--vcpus 0: a VM needs at least one vCPU")]
    NoVcpus,
    /// More vCPUs than KVM or the boot protocols allow.
    #[error("--vcpus {asked} is above the limit of {limit} on this host; ask for at most {limit}")]
    TooManyVcpus {
        /// Requested count.
        asked: u32,
        /// The effective limit.
        limit: u32,
    },
    /// A --disk spec that does not parse.
    #[error("invalid --disk: {0}")]
    InvalidDisk(String),
    /// A serial spec that is not stdio, off or file=PATH.
    #[error("invalid --serial '{0}': use stdio, off or file=PATH")]
    InvalidSerial(String),
    /// The kernel or initrd cannot be read.
    #[error("{flag} {path}: {why}; give the path of a readable file")]
    BootFile {
        /// The option that named it.
        flag: &'static str,
        /// The path as given.
        path: String,
        /// What is wrong with it.
        why: String,
    },
}

/// A byte count that prints in the largest whole binary unit (512M, 2G, 1536M).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, suffix) in [(TIB, "T"), (GIB, "G"), (MIB, "M"), (KIB, "K")] {
            if b >= unit && b.is_multiple_of(unit) {
                return write!(f, "{}{}", b / unit, suffix);
            }
        }
        write!(f, "{}B", b)
    }
}

impl FromStr for Size {
    type Err = ConfigError;

    /// Parses `512M`, `2G`, `1536m`, `64K`, `1T`, `4096B`; a bare number is MiB (as QEMU's -m).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ConfigError::InvalidSize(s.to_string());
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, suffix) = t.split_at(split);
        if num.is_empty() {
            return Err(bad());
        }
        let n: u64 = num.parse().map_err(|_| bad())?;
        let unit = match suffix.to_ascii_uppercase().as_str() {
            "" | "M" | "MB" | "MIB" => MIB,
            "B" => 1,
            "K" | "KB" | "KIB" => KIB,
            "G" | "GB" | "GIB" => GIB,
            "T" | "TB" | "TIB" => TIB,
            _ => return Err(bad()),
        };
        n.checked_mul(unit).map(Size).ok_or_else(bad)
    }
}

/// Where the guest's 16550 serial port output goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SerialConfig {
    /// The VMM's standard output.
    #[default]
    Stdio,
    /// A file, created or truncated.
    File(PathBuf),
    /// Discarded (the port still exists so the guest does not hang on it).
    Off,
}

impl FromStr for SerialConfig {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdio" => Ok(SerialConfig::Stdio),
            "off" => Ok(SerialConfig::Off),
            _ => match s.strip_prefix("file=") {
                Some(p) if !p.is_empty() => Ok(SerialConfig::File(PathBuf::from(p))),
                _ => Err(ConfigError::InvalidSerial(s.to_string())),
            },
        }
    }
}

/// How guest RAM is backed on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemoryBackend {
    /// Private anonymous memory (transparent huge pages advised).
    Anonymous,
    /// A memfd, so the RAM can be mapped by file (iommufd MAP_FILE) and shared.
    Memfd,
    /// Decided at start: a memfd when the VM may pass devices through (`--device` or hotplug
    /// slots) and the kernel pins files (`IOMMU_IOAS_MAP_FILE`, Linux 6.13+), else anonymous.
    /// Pinning a memfd by address is slower than anonymous memory (x86 rig, 6.12: 3854 vs
    /// 2832 ms for 512 MiB), and only anonymous memory gets transparent huge pages by default.
    #[default]
    Auto,
}

/// Whether guest RAM uses 2 MiB hugetlb pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum HugePages {
    /// Always (the host must have enough reserved).
    On,
    /// Never.
    Off,
    /// When the host's free 2 MiB pages cover all of guest RAM.
    #[default]
    Auto,
}

impl HugePages {
    /// Whether RAM of `memory` bytes gets huge pages on a host whose /proc/meminfo reads
    /// `meminfo`. Auto wants the default huge page size to be 2 MiB (what MAP_HUGETLB and
    /// MFD_HUGE_2MB give), RAM a whole number of them, and enough free ones for all of it: a
    /// guest half on huge pages would fail at its first fault past the pool, not at start.
    pub fn wanted(self, memory: u64, meminfo: &str) -> bool {
        match self {
            HugePages::On => true,
            HugePages::Off => false,
            HugePages::Auto => {
                let field = |name: &str| -> Option<u64> {
                    meminfo.lines().find_map(|l| {
                        let rest = l.strip_prefix(name)?.strip_prefix(':')?;
                        rest.split_whitespace().next()?.parse().ok()
                    })
                };
                field("Hugepagesize") == Some(HUGE_PAGE_2M / 1024)
                    && memory > 0
                    && memory.is_multiple_of(HUGE_PAGE_2M)
                    && field("HugePages_Free")
                        .is_some_and(|free| free.saturating_mul(HUGE_PAGE_2M) >= memory)
            }
        }
    }
}

/// Everything needed to build and run a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Kernel image: bzImage, ELF vmlinux or a multiboot ELF.
    pub kernel: PathBuf,
    /// Optional initrd (a multiboot module for multiboot kernels).
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Serial output.
    pub serial: SerialConfig,
    /// RAM backing.
    pub backend: MemoryBackend,
    /// 2 MiB hugetlb pages for RAM (Auto is settled by [`VmConfig::resolved`] at start).
    pub hugepages: HugePages,
    /// virtio-blk disks.
    pub disks: Vec<devices::DiskConfig>,
    /// A virtio-rng device.
    pub rng: bool,
    /// PCI devices to pass through (`path=/sys/bus/pci/devices/BDF[,id=NAME]`), parsed and
    /// checked by the passthrough crate.
    pub devices: Vec<String>,
    /// Where to serve the HTTP API (`--api-socket`), if anywhere.
    pub api_socket: Option<PathBuf>,
    /// PCIe root ports with a hot-plug slot each (0: no hotplug).
    pub hotplug_slots: u8,
}

/// Most hotplug slots (root ports) a VM may have.
pub const MAX_HOTPLUG_SLOTS: u8 = 8;
/// Hotplug slots when the VM has an API socket and `--hotplug-slots` is not given.
pub const DEFAULT_HOTPLUG_SLOTS_WITH_API: u8 = 4;

/// Host facts that bound a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    /// Most vCPUs a VM may have (KVM's limit, capped by what the boot protocols address).
    pub max_vcpus: u32,
    /// RAM the host can give a guest, in bytes.
    pub max_memory: u64,
}

impl VmConfig {
    /// This configuration with what the host decides settled: [`HugePages::Auto`] becomes
    /// On or Off from `meminfo` (the text of /proc/meminfo).
    pub fn resolved(&self, meminfo: &str) -> VmConfig {
        let mut c = self.clone();
        c.hugepages = if self.hugepages.wanted(self.memory, meminfo) {
            HugePages::On
        } else {
            HugePages::Off
        };
        c
    }

    /// Checks that the kernel and the initrd can be opened and are regular files (what is in
    /// them is the loader's to judge). Called
    /// before anything is set up, so a wrong path costs nothing (with passthrough, the DMA
    /// map of guest RAM would come first otherwise).
    pub fn check_boot_files(&self) -> Result<(), ConfigError> {
        let files = [
            ("--kernel", Some(&self.kernel)),
            ("--initrd", self.initrd.as_ref()),
        ];
        for (flag, path) in files {
            let Some(path) = path else { continue };
            let err = |why: String| ConfigError::BootFile {
                flag,
                path: path.display().to_string(),
                why,
            };
            let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
            let meta = file.metadata().map_err(|e| err(e.to_string()))?;
            if !meta.is_file() {
                return Err(err("not a regular file".to_string()));
            }
        }
        Ok(())
    }

    /// Checks the configuration against itself and the host's limits.
    pub fn validate(&self, host: &HostLimits) -> Result<(), ConfigError> {
        if self.hotplug_slots > MAX_HOTPLUG_SLOTS {
            return Err(ConfigError::TooManyHotplugSlots(self.hotplug_slots));
        }
        if self.vcpus == 0 {
            return Err(ConfigError::NoVcpus);
        }
        if self.vcpus > host.max_vcpus {
            return Err(ConfigError::TooManyVcpus {
                asked: self.vcpus,
                limit: host.max_vcpus,
            });
        }
        if self.memory < MIN_MEMORY {
            return Err(ConfigError::MemoryTooSmall(Size(self.memory)));
        }
        let page = if self.hugepages == HugePages::On {
            HUGE_PAGE_2M
        } else {
            4 * KIB
        };
        if !self.memory.is_multiple_of(page) {
            return Err(ConfigError::MemoryNotAligned {
                size: Size(self.memory),
                page: Size(page),
            });
        }
        if self.memory > host.max_memory {
            return Err(ConfigError::MemoryTooLarge {
                asked: Size(self.memory),
                host: Size(host.max_memory),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> VmConfig {
        VmConfig {
            kernel: PathBuf::from("k"),
            initrd: None,
            cmdline: String::new(),
            memory: 512 * MIB,
            vcpus: 2,
            serial: SerialConfig::Stdio,
            backend: MemoryBackend::Anonymous,
            hugepages: HugePages::Off,
            disks: Vec::new(),
            rng: false,
            devices: Vec::new(),
            api_socket: None,
            hotplug_slots: 0,
        }
    }

    #[test]
    fn huge_pages_auto_takes_them_only_when_they_cover_all_of_ram() {
        let meminfo = |free: u64, size_kb: u64| {
            format!("MemTotal: 8000000 kB\nHugePages_Total: {free}\nHugePages_Free: {free}\nHugepagesize: {size_kb} kB\n")
        };
        let auto = HugePages::Auto;
        assert!(auto.wanted(512 * MIB, &meminfo(256, 2048)));
        assert!(!auto.wanted(512 * MIB, &meminfo(255, 2048)));
        assert!(!auto.wanted(512 * MIB, &meminfo(0, 2048)));
        // 1 GiB default pages: not what MAP_HUGETLB / MFD_HUGE_2MB would give.
        assert!(!auto.wanted(512 * MIB, &meminfo(4, 1048576)));
        // RAM not a whole number of 2 MiB pages.
        assert!(!auto.wanted(513 * MIB, &meminfo(512, 2048)));
        assert!(!auto.wanted(512 * MIB, ""));
        assert!(HugePages::On.wanted(512 * MIB, ""));
        assert!(!HugePages::Off.wanted(512 * MIB, &meminfo(1024, 2048)));
        let mut c = cfg();
        c.hugepages = auto;
        assert_eq!(c.resolved(&meminfo(256, 2048)).hugepages, HugePages::On);
        assert_eq!(c.resolved(&meminfo(1, 2048)).hugepages, HugePages::Off);
    }

    const HOST: HostLimits = HostLimits {
        max_vcpus: 8,
        max_memory: 4 * GIB,
    };

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!("512M".parse::<Size>(), Ok(Size(512 * MIB)));
        assert_eq!("512".parse::<Size>(), Ok(Size(512 * MIB)));
        assert_eq!("2g".parse::<Size>(), Ok(Size(2 * GIB)));
        assert_eq!("64K".parse::<Size>(), Ok(Size(64 * KIB)));
        assert_eq!("1T".parse::<Size>(), Ok(Size(TIB)));
        assert_eq!("4096B".parse::<Size>(), Ok(Size(4096)));
        assert_eq!("1GiB".parse::<Size>(), Ok(Size(GIB)));
    }

    #[test]
    fn bad_sizes_are_rejected() {
        for s in [
            "",
            "M",
            "12X",
            "-5M",
            "1.5G",
            "99999999999999999999T",
            "18446744073709551615G",
        ] {
            assert!(
                matches!(s.parse::<Size>(), Err(ConfigError::InvalidSize(_))),
                "{s}"
            );
        }
    }

    #[test]
    fn size_display_uses_largest_unit() {
        assert_eq!(Size(512 * MIB).to_string(), "512M");
        assert_eq!(Size(1536 * MIB).to_string(), "1536M");
        assert_eq!(Size(2 * GIB).to_string(), "2G");
        assert_eq!(Size(1000).to_string(), "1000B");
    }

    #[test]
    fn serial_specs() {
        assert_eq!("stdio".parse(), Ok(SerialConfig::Stdio));
        assert_eq!("off".parse(), Ok(SerialConfig::Off));
        assert_eq!(
            "file=/tmp/x".parse(),
            Ok(SerialConfig::File(PathBuf::from("/tmp/x")))
        );
        assert!("file=".parse::<SerialConfig>().is_err());
        assert!("tty".parse::<SerialConfig>().is_err());
    }

    #[test]
    fn boot_files_must_be_readable_nonempty_regular_files() {
        let dir = std::env::temp_dir().join(format!("vmm-bootfiles-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kernel = dir.join("kernel");
        std::fs::write(&kernel, b"\x7fELF").unwrap();
        let empty = dir.join("empty");
        std::fs::write(&empty, b"").unwrap();
        let mut c = cfg();
        c.kernel = kernel.clone();
        c.initrd = None;
        assert_eq!(c.check_boot_files(), Ok(()));
        c.kernel = dir.join("missing");
        let e = c.check_boot_files().unwrap_err();
        assert!(
            matches!(&e, ConfigError::BootFile { flag: "--kernel", why, .. } if why.contains("No such file")),
            "{e}"
        );
        assert!(e.to_string().contains("readable file"), "{e}");
        c.kernel = dir.clone();
        assert!(
            matches!(c.check_boot_files(), Err(ConfigError::BootFile { why, .. }) if why.contains("not a regular file"))
        );
        c.kernel = kernel;
        c.initrd = Some(empty);
        assert_eq!(
            c.check_boot_files(),
            Ok(()),
            "an empty initrd is the loader's to judge"
        );
        c.initrd = Some(dir.join("missing-initrd"));
        assert!(matches!(
            c.check_boot_files(),
            Err(ConfigError::BootFile {
                flag: "--initrd",
                ..
            })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn validate_accepts_sane_config() {
        assert_eq!(cfg().validate(&HOST), Ok(()));
    }

    #[test]
    fn validate_rejects_bad_vcpus() {
        let mut c = cfg();
        c.vcpus = 0;
        assert_eq!(c.validate(&HOST), Err(ConfigError::NoVcpus));
        c.vcpus = 9;
        assert_eq!(
            c.validate(&HOST),
            Err(ConfigError::TooManyVcpus { asked: 9, limit: 8 })
        );
    }

    #[test]
    fn validate_rejects_bad_memory() {
        let mut c = cfg();
        c.memory = 0;
        assert!(matches!(
            c.validate(&HOST),
            Err(ConfigError::MemoryTooSmall(_))
        ));
        c.memory = 8 * GIB;
        assert!(matches!(
            c.validate(&HOST),
            Err(ConfigError::MemoryTooLarge { .. })
        ));
        c.memory = 64 * MIB + 1;
        assert!(matches!(
            c.validate(&HOST),
            Err(ConfigError::MemoryNotAligned { .. })
        ));
        c.memory = 65 * MIB;
        c.hugepages = HugePages::On;
        assert!(matches!(
            c.validate(&HOST),
            Err(ConfigError::MemoryNotAligned { .. })
        ));
        c.memory = 64 * MIB;
        assert_eq!(c.validate(&HOST), Ok(()));
    }
}
