//! Bad input of every kind gets one clear line on stderr and a non-zero status, never a panic.
#![cfg(target_arch = "x86_64")]

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use vmm_tests::{
    kvm_available, multiboot_elf32, scratch, CODE_HANG, CODE_I8042_RESET, CODE_TRIPLE_FAULT,
    TINY_GUEST_ELF64,
};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");

macro_rules! require_kvm {
    () => {
        if !kvm_available() {
            eprintln!("SKIPPED: /dev/kvm cannot be opened read-write on this host");
            return;
        }
    };
}

fn vmm(args: &[&str]) -> Output {
    Command::new(VMM)
        .args(args)
        .output()
        .expect("cannot run vmm")
}

/// Asserts a clean failure: status 2, a single `vmm: error:` line containing `needle`, and
/// no panic.
fn assert_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("vmm: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "stderr: {stderr}");
    assert!(
        errors[0].contains(needle),
        "expected '{needle}' in: {stderr}"
    );
}

fn write_temp(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = scratch(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn help_explains_usage() {
    let out = vmm(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for s in [
        "--kernel",
        "--initrd",
        "--cmdline",
        "--memory",
        "--vcpus",
        "--serial",
        "--log-level",
        "--api-socket",
        "vmm-remote",
        "--seccomp",
        "Exit status",
    ] {
        assert!(text.contains(s), "--help lacks {s}:\n{text}");
    }
}

#[test]
fn usage_errors_exit_2() {
    let out = vmm(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--kernel"));
    let out = vmm(&["--kernel", "k", "--vcpus", "many"]);
    assert_eq!(out.status.code(), Some(2));
    assert_error(
        &vmm(&["--kernel", "k", "--memory", "lots"]),
        "invalid size 'lots'",
    );
    assert_error(
        &vmm(&["--kernel", "k", "--serial", "tty"]),
        "invalid --serial",
    );
    let out = vmm(&["--kernel", "k", "--seccomp", "maybe"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--seccomp"));
}

#[test]
fn missing_kernel() {
    require_kvm!();
    assert_error(
        &vmm(&["--kernel", "/nonexistent/bzImage", "--memory", "64M"]),
        "/nonexistent/bzImage",
    );
    // Checked before anything is set up: a device that would fail its probe is not reached.
    let out = vmm(&[
        "--kernel",
        "/nonexistent/bzImage",
        "--device",
        "path=/nonexistent/0000:00:1f.0",
    ]);
    assert_error(&out, "--kernel /nonexistent/bzImage");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("0000:00:1f.0"));
}

#[test]
fn unreadable_kernel_is_a_directory() {
    require_kvm!();
    assert_error(&vmm(&["--kernel", "/tmp", "--memory", "64M"]), "/tmp");
}

#[test]
fn unknown_kernel_format() {
    require_kvm!();
    let p = write_temp("garbage", &[0x42; 4096]);
    let out = vmm(&["--kernel", p.to_str().unwrap(), "--memory", "64M"]);
    let _ = std::fs::remove_file(&p);
    assert_error(&out, "bzImage");
    let p = write_temp("empty", &[]);
    let out = vmm(&["--kernel", p.to_str().unwrap(), "--memory", "64M"]);
    let _ = std::fs::remove_file(&p);
    assert_error(&out, "bzImage");
}

#[test]
fn memory_zero_and_too_large() {
    require_kvm!();
    assert_error(
        &vmm(&["--kernel", TINY_GUEST_ELF64, "--memory", "0"]),
        "too small",
    );
    assert_error(
        &vmm(&["--kernel", TINY_GUEST_ELF64, "--memory", "64T"]),
        "more than the host can give",
    );
}

#[test]
fn vcpus_zero_and_above_limit() {
    require_kvm!();
    assert_error(
        &vmm(&["--kernel", TINY_GUEST_ELF64, "--vcpus", "0"]),
        "at least one vCPU",
    );
    assert_error(
        &vmm(&["--kernel", TINY_GUEST_ELF64, "--vcpus", "100000"]),
        "above the limit",
    );
}

#[test]
fn initrd_that_does_not_fit() {
    require_kvm!();
    // A sparse 128 MiB initrd for a 64 MiB guest.
    let p = scratch("big-initrd");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(128 << 20).unwrap();
    let out = vmm(&[
        "--kernel",
        TINY_GUEST_ELF64,
        "--initrd",
        p.to_str().unwrap(),
        "--memory",
        "64M",
    ]);
    let _ = std::fs::remove_file(&p);
    assert_error(&out, "does not fit");
    let out = vmm(&[
        "--kernel",
        TINY_GUEST_ELF64,
        "--initrd",
        "/nonexistent/initrd",
    ]);
    assert_error(&out, "/nonexistent/initrd");
}

#[test]
fn no_permission_on_dev_kvm() {
    require_kvm!();
    // Run as nobody: /dev/kvm is root-only here. Needs root and setpriv to drop privileges.
    let is_root = unsafe { libc::geteuid() } == 0;
    let setpriv = std::path::Path::new("/usr/bin/setpriv");
    if !is_root || !setpriv.exists() {
        eprintln!(
            "SKIPPED: needs root and /usr/bin/setpriv to run the VMM as an unprivileged user"
        );
        return;
    }
    let meta = std::fs::metadata("/dev/kvm").unwrap();
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o006 != 0 {
        eprintln!("SKIPPED: /dev/kvm is world-accessible on this host");
        return;
    }
    // The binary must be reachable by nobody: copy it to a world-readable temp file.
    let bin = scratch("vmm-bin");
    std::fs::copy(VMM, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    // And a kernel nobody can read (it is checked before /dev/kvm is opened).
    let kernel = scratch("vmm-kernel");
    std::fs::copy(TINY_GUEST_ELF64, &kernel).unwrap();
    std::fs::set_permissions(&kernel, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(setpriv)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&bin)
        .arg("--kernel")
        .arg(&kernel)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&bin);
    let _ = std::fs::remove_file(&kernel);
    assert_error(&out, "no permission to open /dev/kvm");
}

#[test]
fn triple_fault_is_a_failure() {
    require_kvm!();
    let p = write_temp("ud2.elf", &multiboot_elf32(CODE_TRIPLE_FAULT));
    let out = vmm(&["--kernel", p.to_str().unwrap(), "--memory", "16M"]);
    let _ = std::fs::remove_file(&p);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("triple-faulted"), "{stderr}");
}

#[test]
fn i8042_reset_exits_0() {
    require_kvm!();
    let p = write_temp("reset.elf", &multiboot_elf32(CODE_I8042_RESET));
    let out = vmm(&["--kernel", p.to_str().unwrap(), "--memory", "16M"]);
    let _ = std::fs::remove_file(&p);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn stop_with(signal: i32) -> Option<i32> {
    let p = write_temp("hang.elf", &multiboot_elf32(CODE_HANG));
    let mut child = Command::new(VMM)
        .args([
            "--kernel",
            p.to_str().unwrap(),
            "--memory",
            "16M",
            "--vcpus",
            "2",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Let the vCPUs reach their halt, then signal.
    std::thread::sleep(Duration::from_millis(300));
    unsafe { libc::kill(child.id() as i32, signal) };
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = std::fs::remove_file(&p);
    status
}

#[test]
fn sigterm_and_sigint_stop_the_vm() {
    require_kvm!();
    assert_eq!(stop_with(libc::SIGTERM), Some(128 + libc::SIGTERM));
    assert_eq!(stop_with(libc::SIGINT), Some(128 + libc::SIGINT));
}

/// SIGUSR1 makes every vCPU log its state, halted ones too, and the VM runs on until a
/// real stop signal.
#[test]
fn sigusr1_logs_every_vcpu_state_and_the_vm_runs_on() {
    require_kvm!();
    let p = write_temp("hang-dump.elf", &multiboot_elf32(CODE_HANG));
    let child = Command::new(VMM)
        .args(["--kernel", p.to_str().unwrap(), "--memory", "16M"])
        .args(["--vcpus", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) };
    std::thread::sleep(Duration::from_millis(300));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&p);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(128 + libc::SIGTERM), "{stderr}");
    // The boot vCPU sits in HLT (mp_state 3) after the guest's cli; hlt; the AP was never
    // started (mp_state 1, uninitialized).
    let line = |id: u32| {
        stderr
            .lines()
            .find(|l| l.contains(&format!("vCPU {id} state: ")))
            .unwrap_or_else(|| panic!("no state line for vCPU {id}:\n{stderr}"))
            .to_string()
    };
    let (v0, v1) = (line(0), line(1));
    assert!(v0.contains("rip=0x") && v0.contains("mp_state=3"), "{v0}");
    assert!(v0.contains("lvtt=") && v0.contains("tsc="), "{v0}");
    // KVM reading the guest TSC as 0 means a zero TSC scaling ratio: TSC-deadline timers
    // would fire late by the host's uptime (see arch::x86_64::configure_vcpu).
    assert!(!v0.contains("tsc=0x0 "), "{v0}");
    assert!(v1.contains("mp_state=1"), "{v1}");
}

#[test]
fn bad_disks() {
    require_kvm!();
    assert_error(
        &vmm(&[
            "--kernel",
            TINY_GUEST_ELF64,
            "--disk",
            "path=/nonexistent/disk.img",
        ]),
        "/nonexistent/disk.img",
    );
    let odd = write_temp("odd.img", &[0u8; 1000]);
    let out = vmm(&[
        "--kernel",
        TINY_GUEST_ELF64,
        "--disk",
        &format!("path={}", odd.display()),
    ]);
    let _ = std::fs::remove_file(&odd);
    assert_error(&out, "512");
    assert_error(
        &vmm(&["--kernel", TINY_GUEST_ELF64, "--disk", "file=/x"]),
        "invalid --disk",
    );
    assert_error(
        &vmm(&["--kernel", TINY_GUEST_ELF64, "--disk", "path=/tmp"]),
        "/tmp",
    );
}

#[test]
fn bad_passthrough_devices() {
    require_kvm!();
    let out = vmm(&[
        "--kernel",
        TINY_GUEST_ELF64,
        "--device",
        "path=/nonexistent/0000:00:1f.0",
    ]);
    assert_error(&out, "not a PCI device");
    let out = vmm(&["--kernel", TINY_GUEST_ELF64, "--device", "path=/tmp"]);
    assert_error(&out, "not a PCI device");
    // No vSMMU on x86_64: refused before anything else, naming the device.
    let out = vmm(&[
        "--kernel",
        TINY_GUEST_ELF64,
        "--device",
        "path=/nonexistent/0000:00:1f.0,id=nic,iommu=on",
    ]);
    assert_error(&out, "--device nic: iommu=on needs a guest-visible SMMUv3");
    let out = vmm(&[
        "--kernel",
        TINY_GUEST_ELF64,
        "--device",
        "path=/tmp,iommu=maybe",
    ]);
    assert_error(&out, "iommu=maybe is neither on nor off");
    let out = vmm(&[
        "--kernel",
        TINY_GUEST_ELF64,
        "--device",
        "/sys/bus/pci/devices/x",
    ]);
    assert_error(&out, "--device");
    // A real device of this host that is bound to some other driver (or none).
    let bound_elsewhere = std::fs::read_dir("/sys/bus/pci/devices")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            std::fs::read_link(p.join("driver"))
                .map(|d| !d.ends_with("vfio-pci"))
                .unwrap_or(true)
        });
    match bound_elsewhere {
        Some(p) => {
            let spec = format!("path={}", p.display());
            let out = vmm(&["--kernel", TINY_GUEST_ELF64, "--device", &spec]);
            assert_error(&out, "vfio-pci");
            let out = vmm(&[
                "--kernel",
                TINY_GUEST_ELF64,
                "--device",
                &spec,
                "--device",
                &spec,
            ]);
            assert_error(&out, "--device");
        }
        None => eprintln!("SKIPPED part: no PCI device bound to a non-vfio driver on this host"),
    }
}

#[test]
fn too_many_hotplug_slots() {
    require_kvm!();
    assert_error(
        &vmm(&[
            "--kernel",
            TINY_GUEST_ELF64,
            "--memory",
            "64M",
            "--hotplug-slots",
            "9",
        ]),
        "--hotplug-slots 9 is too many: at most 8",
    );
    let out = vmm(&["--kernel", "k", "--hotplug-slots", "-1"]);
    assert_eq!(out.status.code(), Some(2));
}
