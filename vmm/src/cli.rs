//! The command-line launcher's arguments, turned into a [`VmConfig`].

use std::path::PathBuf;

use clap::Parser;

use crate::config::{ConfigError, HugePages, MemoryBackend, SerialConfig, Size, VmConfig};
use crate::seccomp::SeccompMode;

const AFTER_HELP: &str = "\
Examples:
  Boot a Linux kernel with an initramfs, 2 vCPUs and 512 MiB of RAM:
    vmm --kernel bzImage --initrd initramfs.cpio.gz --cmdline 'console=ttyS0' --vcpus 2 --memory 512M

  Boot a multiboot test kernel and keep its serial output in a file:
    vmm --kernel tiny-guest.elf --serial file=/tmp/guest.log

Kernel formats: Linux bzImage, ELF vmlinux (64-bit boot protocol), and multiboot v1 ELF32/ELF64
images (the initrd becomes multiboot module 0).

Exit status: 0 when the guest powers off or resets (i8042 reset); (code << 1) | 1 when the guest
writes a 32-bit code to the exit port 0xf4 (the test-kernel convention); 128+N when stopped by
signal N (SIGINT, SIGTERM); 2 when the VMM could not start or the guest crashed (the reason is
printed on stderr).

Control a running VM over its API socket (vmm-remote prints JSON answers):
    vmm --kernel bzImage --api-socket /tmp/vmm.sock &
    vmm-remote --api-socket /tmp/vmm.sock info
    vmm-remote --api-socket /tmp/vmm.sock pause

Debugging a stalled guest: `kill -USR1 <pid>` makes every vCPU log one line of state on stderr
(registers, halted or not, LAPIC timer and TSC deadline on x86_64) and the VM runs on.";

/// A small VMM whose heart is device passthrough on iommufd.
#[derive(Debug, Parser)]
#[command(name = "vmm", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// Kernel image to boot (bzImage, ELF vmlinux, or multiboot ELF).
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present = "print_memory_map"
    )]
    pub kernel: Option<PathBuf>,

    /// Initial ramdisk (Linux) or first module (multiboot).
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// Kernel command line.
    #[arg(long, value_name = "STR", default_value = "")]
    pub cmdline: String,

    /// Guest RAM: a number with K, M, G or T suffix; a bare number is MiB.
    #[arg(long, value_name = "SIZE", default_value = "512M")]
    pub memory: String,

    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub vcpus: u32,

    /// Where the guest's serial port (COM1) goes: stdio, off, or file=PATH.
    #[arg(long, value_name = "stdio|file=PATH|off", default_value = "stdio")]
    pub serial: String,

    /// What backs guest RAM: memfd (shared file memory: passthrough pins it with
    /// IOMMU_IOAS_MAP_FILE where the kernel has it, by address elsewhere), anon (private
    /// anonymous memory, transparent huge pages advised), or auto: memfd when the VM may pass
    /// devices through (--device, hotplug slots) and the kernel has IOMMU_IOAS_MAP_FILE, else
    /// anon.
    #[arg(long, value_enum, value_name = "auto|memfd|anon", default_value_t = MemoryBacking::Auto)]
    pub memory_backing: MemoryBacking,

    /// Same as --memory-backing memfd (kept for old command lines).
    #[arg(long, hide = true)]
    pub memfd: bool,

    /// 2 MiB hugetlb pages for guest RAM: on (the host must have enough reserved, see
    /// /proc/sys/vm/nr_hugepages), off, or auto: on when the free ones cover all of guest
    /// RAM. A bare --hugepages means on.
    #[arg(
        long,
        value_enum,
        value_name = "on|off|auto",
        num_args = 0..=1,
        default_value_t = HugePages::Auto,
        default_missing_value = "on"
    )]
    pub hugepages: HugePages,

    /// A virtio-blk disk over a raw image file (size a multiple of 512); repeatable.
    #[arg(long, value_name = "path=FILE[,readonly=on]")]
    pub disk: Vec<String>,

    /// A virtio-rng device fed from the host's /dev/urandom.
    #[arg(long)]
    pub rng: bool,

    /// A PCI device to pass through, by sysfs path; repeatable. It must be bound to vfio-pci
    /// and the host needs /dev/iommu (iommufd) and VFIO cdevs. iommu=on (aarch64) puts it
    /// behind a guest-visible SMMUv3 whose stage 1 the host IOMMU runs (nested translation).
    #[arg(
        long,
        value_name = "path=/sys/bus/pci/devices/DDDD:BB:DD.F[,id=NAME][,iommu=on]"
    )]
    pub device: Vec<String>,

    /// PCIe root ports with a hot-plug slot each, for devices added later through the API
    /// (0 to 8; default 0, or 4 with an API socket).
    #[arg(long, value_name = "N")]
    pub hotplug_slots: Option<u8>,

    /// Print where guest RAM would go (avoiding the host's reserved and MSI ranges of every
    /// --device, read from the kernel through /dev/iommu) and exit without booting.
    #[arg(long)]
    pub print_memory_map: bool,

    /// Serve the HTTP API on this Unix socket (drive it with vmm-remote). A stale socket
    /// file is replaced unless another VMM holds PATH.lock.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,

    /// Seccomp filters per thread kind (main, vCPU, device worker, API, vSMMU events): on
    /// (a forbidden syscall ends the VMM with status 159 and one line naming the thread, the
    /// syscall and an ioctl's request), log (the kernel logs it, if it has audit, and lets
    /// it run), off.
    #[arg(long, value_enum, value_name = "on|off|log", default_value_t = SeccompMode::On)]
    pub seccomp: SeccompMode,

    /// Log level on stderr: error, warn, info, debug or trace.
    #[arg(long, value_name = "LEVEL", default_value = "warn", value_parser = parse_level)]
    pub log_level: log::LevelFilter,
}

/// `--memory-backing` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MemoryBacking {
    /// Decided at start (see the option's help).
    Auto,
    /// A memfd (shared file memory).
    Memfd,
    /// Private anonymous memory.
    Anon,
}

fn parse_level(s: &str) -> Result<log::LevelFilter, String> {
    s.parse().map_err(|_| {
        format!("'{s}' is not a log level: use off, error, warn, info, debug or trace")
    })
}

impl Cli {
    /// Turns parsed arguments into a configuration (host limits are checked later).
    pub fn into_config(self) -> Result<VmConfig, ConfigError> {
        let memory: Size = self.memory.parse()?;
        let serial: SerialConfig = self.serial.parse()?;
        Ok(VmConfig {
            kernel: self.kernel.unwrap_or_default(),
            initrd: self.initrd,
            cmdline: self.cmdline,
            memory: memory.0,
            vcpus: self.vcpus,
            serial,
            backend: match (self.memory_backing, self.memfd) {
                (_, true) | (MemoryBacking::Memfd, _) => MemoryBackend::Memfd,
                (MemoryBacking::Anon, false) => MemoryBackend::Anonymous,
                (MemoryBacking::Auto, false) => MemoryBackend::Auto,
            },
            hugepages: self.hugepages,
            disks: self
                .disk
                .iter()
                .map(|d| {
                    devices::parse_disk(d).map_err(|e| ConfigError::InvalidDisk(e.to_string()))
                })
                .collect::<Result<_, _>>()?,
            rng: self.rng,
            devices: self.device,
            api_socket: self.api_socket.clone(),
            hotplug_slots: self.hotplug_slots.unwrap_or(if self.api_socket.is_some() {
                crate::config::DEFAULT_HOTPLUG_SLOTS_WITH_API
            } else {
                0
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MIB;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("vmm").chain(args.iter().copied()))
    }

    #[test]
    fn defaults() {
        let c = parse(&["--kernel", "k"]).unwrap().into_config().unwrap();
        assert_eq!(c.kernel, PathBuf::from("k"));
        assert_eq!(c.memory, 512 * MIB);
        assert_eq!(c.vcpus, 1);
        assert_eq!(c.serial, SerialConfig::Stdio);
        assert_eq!(c.backend, MemoryBackend::Auto);
        assert_eq!(c.hugepages, HugePages::Auto);
        assert_eq!(c.cmdline, "");
        assert_eq!(c.initrd, None);
    }

    #[test]
    fn all_options() {
        let c = parse(&[
            "--kernel",
            "k",
            "--initrd",
            "i",
            "--cmdline",
            "console=ttyS0 exit=3",
            "--memory",
            "64M",
            "--vcpus",
            "2",
            "--serial",
            "file=/tmp/s",
            "--memfd",
            "--hugepages",
            "--log-level",
            "debug",
            "--disk",
            "path=/tmp/a.img",
            "--disk",
            "path=/tmp/b.img,readonly=on",
            "--rng",
            "--api-socket",
            "/tmp/api.sock",
        ])
        .unwrap();
        assert_eq!(c.log_level, log::LevelFilter::Debug);
        let c = c.into_config().unwrap();
        assert_eq!(c.initrd, Some(PathBuf::from("i")));
        assert_eq!(c.cmdline, "console=ttyS0 exit=3");
        assert_eq!(c.memory, 64 * MIB);
        assert_eq!(c.vcpus, 2);
        assert_eq!(c.serial, SerialConfig::File(PathBuf::from("/tmp/s")));
        assert_eq!(c.backend, MemoryBackend::Memfd);
        assert_eq!(c.hugepages, HugePages::On);
        assert_eq!(c.disks.len(), 2);
        assert!(c.disks[1].readonly && !c.disks[0].readonly);
        assert!(c.rng);
        assert_eq!(c.api_socket, Some(PathBuf::from("/tmp/api.sock")));
    }

    #[test]
    fn memory_backing_and_huge_pages() {
        let backing = |args: &[&str]| {
            let mut all = vec!["--kernel", "k"];
            all.extend_from_slice(args);
            let c = parse(&all).unwrap().into_config().unwrap();
            (c.backend, c.hugepages)
        };
        assert_eq!(
            backing(&["--memory-backing", "anon"]),
            (MemoryBackend::Anonymous, HugePages::Auto)
        );
        assert_eq!(
            backing(&["--memory-backing", "memfd", "--hugepages", "off"]),
            (MemoryBackend::Memfd, HugePages::Off)
        );
        // The old flag still means memfd, even beside an explicit anon.
        assert_eq!(
            backing(&["--memfd", "--memory-backing", "anon"]).0,
            MemoryBackend::Memfd
        );
        assert_eq!(backing(&["--hugepages"]).1, HugePages::On);
        assert_eq!(backing(&[]).0, MemoryBackend::Auto);
        assert_eq!(
            backing(&["--memory-backing", "auto", "--memfd"]).0,
            MemoryBackend::Memfd
        );
        assert_eq!(backing(&["--hugepages", "auto"]).1, HugePages::Auto);
        assert!(parse(&["--kernel", "k", "--memory-backing", "file"]).is_err());
        assert!(parse(&["--kernel", "k", "--hugepages", "1G"]).is_err());
    }

    #[test]
    fn kernel_is_required_unless_printing_the_memory_map() {
        assert!(parse(&[]).is_err());
        let c = parse(&["--print-memory-map", "--memory", "4G"]).unwrap();
        assert!(c.print_memory_map);
        let c = parse(&[
            "--kernel",
            "k",
            "--device",
            "path=/x/0000:00:01.0",
            "--device",
            "path=/x/0000:00:02.0,id=b",
        ])
        .unwrap();
        assert_eq!(c.into_config().unwrap().devices.len(), 2);
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(parse(&["--kernel", "k", "--vcpus", "-1"]).is_err());
        assert!(parse(&["--kernel", "k", "--vcpus", "two"]).is_err());
        assert!(parse(&["--kernel", "k", "--log-level", "loud"]).is_err());
        let c = parse(&["--kernel", "k", "--memory", "lots"]).unwrap();
        assert!(matches!(c.into_config(), Err(ConfigError::InvalidSize(_))));
        let c = parse(&["--kernel", "k", "--disk", "file=/x"]).unwrap();
        assert!(matches!(c.into_config(), Err(ConfigError::InvalidDisk(_))));
        let c = parse(&["--kernel", "k", "--serial", "tty"]).unwrap();
        assert!(matches!(
            c.into_config(),
            Err(ConfigError::InvalidSerial(_))
        ));
    }
}
