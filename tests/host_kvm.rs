//! Host-KVM tests: the real `vmm` binary boots the in-tree tiny guest on /dev/kvm.
//!
//! This host's KVM runs only small freestanding guests (see RIG.md §1), which is what the tiny
//! guest is. Each test says why it skips when /dev/kvm cannot be opened.
#![cfg(target_arch = "x86_64")]

use std::process::{Command, Output};

use vmm_tests::{kvm_available, scratch, PLAIN_MULTIBOOT_ELF, TINY_GUEST_ELF32, TINY_GUEST_ELF64};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");

/// The race test measures whether two vCPU threads run at the same time; the other tests of
/// this binary run beside it on the test harness's threads and would take its CPUs. They share
/// this lock; the race test holds it alone.
static HOST_CPUS: std::sync::RwLock<()> = std::sync::RwLock::new(());

macro_rules! require_kvm {
    () => {
        require_kvm!(read)
    };
    ($mode:ident) => {
        if !kvm_available() {
            eprintln!("SKIPPED: /dev/kvm cannot be opened read-write on this host");
            return;
        }
        // A panicking test poisons the lock; the others still run.
        let _host_cpus = HOST_CPUS.$mode().unwrap_or_else(|e| e.into_inner());
    };
}

fn boot(kernel: &str, vcpus: u32, memory: &str, cmdline: &str) -> Output {
    Command::new(VMM)
        .args(["--kernel", kernel, "--memory", memory, "--cmdline", cmdline])
        .args(["--vcpus", &vcpus.to_string()])
        .output()
        .expect("cannot run the vmm binary")
}

/// The value after `key=` on the guest line starting with `prefix`.
fn field<'a>(out: &'a str, prefix: &str, key: &str) -> Option<&'a str> {
    let line = out.lines().find(|l| l.starts_with(prefix))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

fn check_guest(out: &Output, vcpus: u32, mem_mib: u64, code: i32) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ctx = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("tiny-guest: hello"), "{ctx}");
    assert!(stdout.contains("tiny-guest: long mode ok"), "{ctx}");
    assert_eq!(
        field(&stdout, "tiny-guest: fw_cfg", "ram"),
        Some(format!("{mem_mib}M").as_str()),
        "{ctx}"
    );
    assert_eq!(
        field(&stdout, "tiny-guest: fw_cfg", "cpus"),
        Some(vcpus.to_string().as_str()),
        "{ctx}"
    );
    assert_eq!(
        field(&stdout, "tiny-guest: cpus", "online"),
        Some(vcpus.to_string().as_str()),
        "{ctx}"
    );
    // The multiboot memory map must describe all RAM but the 640K-1M hole (rounded down).
    let mmap: u64 = field(&stdout, "tiny-guest: mmap", "ram")
        .and_then(|v| v.strip_suffix('M'))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no mmap line\n{ctx}"));
    assert_eq!(mmap, mem_mib - 1, "{ctx}");
    let upper = field(&stdout, "tiny-guest: multiboot", "mem_upper");
    let expect_upper = format!("{}K", (mem_mib.min(3 * 1024) - 1) * 1024);
    assert_eq!(upper, Some(expect_upper.as_str()), "{ctx}");
    assert_eq!(out.status.code(), Some((code << 1) | 1), "{ctx}");
}

#[test]
fn boots_tiny_guest_1_vcpu_64m() {
    require_kvm!();
    let out = boot(TINY_GUEST_ELF64, 1, "64M", "exit=3");
    check_guest(&out, 1, 64, 3);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("tiny-guest: cmdline=exit=3"), "{stdout}");
}

#[test]
fn boots_tiny_guest_2_vcpus_256m() {
    require_kvm!();
    let out = boot(TINY_GUEST_ELF64, 2, "256M", "exit=5");
    check_guest(&out, 2, 256, 5);
}

#[test]
fn boots_tiny_guest_2_vcpus_64m_elf32() {
    require_kvm!();
    let out = boot(TINY_GUEST_ELF32, 2, "64M", "exit=9");
    check_guest(&out, 2, 64, 9);
}

/// (tickets, interleaved) from the tiny guest's race line.
fn race_result(out: &Output) -> (u64, u64) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let get = |k| {
        field(&stdout, "tiny-guest: race", k)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no race {k} in the guest output:\n{stdout}"))
    };
    assert_eq!(get("finished"), 2, "{stdout}");
    (get("tickets"), get("interleaved"))
}

/// The one x86 place where a guest's two vCPUs run truly in parallel (the x86 rig gives L1 a
/// single vCPU, see docs/rig-reliability.md): two vCPU threads on this host's cores take
/// tickets from one counter with lock xadd. Parallel CPUs interleave on a good share of
/// tickets; the same guest with the VMM pinned to one host CPU, its vCPUs time-sliced,
/// interleaves only at slice switches. Both runs must show exactly 2 x N tickets.
#[test]
fn two_vcpus_run_in_parallel_and_lock_xadd_stays_atomic() {
    require_kvm!(write);
    const ITERS: u64 = 100_000;
    let cmdline = format!("race={ITERS}");
    let parallel = boot(TINY_GUEST_ELF64, 2, "64M", &cmdline);
    check_guest(&parallel, 2, 64, 0);
    let (tickets, interleaved) = race_result(&parallel);
    assert_eq!(tickets, 2 * ITERS);

    let pinned = Command::new("taskset")
        .args([
            "-c",
            "0",
            VMM,
            "--kernel",
            TINY_GUEST_ELF64,
            "--memory",
            "64M",
        ])
        .args(["--vcpus", "2", "--cmdline", &cmdline])
        .output()
        .expect("taskset (util-linux) must be installed");
    check_guest(&pinned, 2, 64, 0);
    let (pinned_tickets, pinned_interleaved) = race_result(&pinned);
    assert_eq!(pinned_tickets, 2 * ITERS);
    eprintln!(
        "race: {interleaved} of {} tickets interleaved on 2 host CPUs, \
         {pinned_interleaved} pinned to one",
        2 * ITERS
    );
    assert!(
        interleaved > ITERS / 100 && interleaved > 4 * pinned_interleaved,
        "the vCPUs did not run in parallel: {interleaved} interleaved tickets on 2 host CPUs, \
         {pinned_interleaved} pinned to one"
    );
}

/// A multiboot kernel linked the plain way has its ELF headers in a LOAD segment at 0xff000
/// (binutils 2.40); QEMU boots it and so must we.
#[test]
fn boots_a_plain_linked_multiboot_kernel_with_a_segment_below_1m() {
    require_kvm!();
    let out = boot(PLAIN_MULTIBOOT_ELF, 1, "64M", "");
    assert_eq!(
        out.status.code(),
        Some((21 << 1) | 1),
        "stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn boots_tiny_guest_1_vcpu_256m_each_memory_backing() {
    require_kvm!();
    // --memfd is the old spelling of --memory-backing memfd.
    for backing in [&["--memory-backing", "anon"][..], &["--memfd"][..], &[][..]] {
        let out = Command::new(VMM)
            .args(["--kernel", TINY_GUEST_ELF64, "--memory", "256M"])
            .args(["--cmdline", "exit=4", "--log-level", "info"])
            .args(backing)
            .output()
            .unwrap();
        check_guest(&out, 1, 256, 4);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // The default (auto) is anonymous with no device to pass through.
        let want = if backing.contains(&"--memfd") {
            "guest RAM: 256 MiB, memfd"
        } else {
            "guest RAM: 256 MiB, anonymous"
        };
        assert!(stderr.contains(want), "{backing:?}: {stderr}");
    }
}

#[test]
fn serial_to_file_and_off() {
    require_kvm!();
    let log = scratch("serial.log");
    let out = Command::new(VMM)
        .args(["--kernel", TINY_GUEST_ELF64, "--memory", "64M"])
        .args(["--serial", &format!("file={}", log.display())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(text.contains("tiny-guest: exit code=0"), "{text}");

    let out = Command::new(VMM)
        .args([
            "--kernel",
            TINY_GUEST_ELF64,
            "--memory",
            "64M",
            "--serial",
            "off",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
}

fn free_hugepages() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn boots_tiny_guest_on_hugepages() {
    require_kvm!();
    if free_hugepages() < 32 {
        eprintln!("SKIPPED: fewer than 32 free 2 MiB huge pages (set /proc/sys/vm/nr_hugepages)");
        return;
    }
    for backend in [&["--memory-backing", "anon"][..], &[][..]] {
        let out = Command::new(VMM)
            .args([
                "--kernel",
                TINY_GUEST_ELF64,
                "--memory",
                "64M",
                "--hugepages",
            ])
            .args(["--cmdline", "exit=6"])
            .args(backend)
            .output()
            .unwrap();
        check_guest(&out, 1, 64, 6);
    }
}

#[test]
fn hugepages_beyond_what_is_reserved_is_a_clear_error() {
    require_kvm!();
    let free_mib = free_hugepages() * 2;
    let ask = format!("{}M", free_mib + 64);
    let out = Command::new(VMM)
        .args([
            "--kernel",
            TINY_GUEST_ELF64,
            "--memory",
            &ask,
            "--hugepages",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("more than the host can give"), "{stderr}");
}

#[test]
fn guest_enumerates_pci_and_receives_msix_through_irqfd() {
    require_kvm!();
    let disk = scratch("msix.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    for vcpus in [1u32, 2] {
        let out = Command::new(VMM)
            .args(["--kernel", TINY_GUEST_ELF64, "--memory", "64M", "--rng"])
            .args(["--disk", &format!("path={}", disk.display())])
            .args(["--vcpus", &vcpus.to_string()])
            .args(["--cmdline", "exit=3 rng_loops=10"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let ctx = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("tiny-guest: pci devices=3"), "{ctx}");
        assert!(
            stdout.contains("tiny-guest: pci 00:00.0 8086:0d57"),
            "{ctx}"
        );
        assert!(
            stdout.contains("tiny-guest: pci 00:01.0 1af4:1042"),
            "{ctx}"
        );
        assert!(
            stdout.contains("tiny-guest: pci 00:02.0 1af4:1044"),
            "{ctx}"
        );
        assert!(
            stdout.contains("tiny-guest: virtio-rng msix irq=1 used_len=64 nonzero=1"),
            "{ctx}"
        );
        assert!(
            stdout.contains("tiny-guest: virtio-rng loops=10 irqs=10 "),
            "{ctx}"
        );
        assert!(stdout.contains("tiny-guest: msix mask ok"), "{ctx}");
        assert_eq!(out.status.code(), Some(7), "{ctx}");
    }
    let _ = std::fs::remove_file(&disk);
}

#[test]
fn guest_sees_hotplug_root_ports_and_their_command_completed_msi() {
    require_kvm!();
    let out = Command::new(VMM)
        .args(["--kernel", TINY_GUEST_ELF64, "--memory", "64M", "--rng"])
        .args(["--hotplug-slots", "2", "--cmdline", "exit=3"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ctx = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // Host bridge, virtio-rng, then the two root ports on buses 1 and 2.
    assert!(stdout.contains("tiny-guest: pci devices=4"), "{ctx}");
    for (dev, bus) in [(2, 1), (3, 2)] {
        assert!(
            stdout.contains(&format!("tiny-guest: pci 00:0{dev}.0 1b36:000c")),
            "{ctx}"
        );
        assert!(
            stdout.contains(&format!(
                "tiny-guest: hotplug port 00:0{dev}.0 bus={bus} slot={bus} cc=1 cleared=1 msi=1"
            )),
            "{ctx}"
        );
    }
    // The virtio-rng MSI-X still works next to the ports.
    assert!(
        stdout.contains("tiny-guest: virtio-rng msix irq=1"),
        "{ctx}"
    );
    assert_eq!(out.status.code(), Some(7), "{ctx}");
}

/// Starts the tiny guest with a virtio-rng and `hold=1` (it stays running) and waits for its
/// `holding` line; the caller stops it.
fn start_held(extra: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    use std::io::BufRead;
    let mut child = Command::new(VMM)
        .args([
            "--kernel",
            TINY_GUEST_ELF64,
            "--memory",
            "64M",
            "--vcpus",
            "2",
        ])
        .args(["--rng", "--cmdline", "exit=3 hold=1"])
        .args(extra)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cannot run the vmm binary");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains("tiny-guest: holding") {
                let _ = tx.send(());
            }
        }
    });
    let _ = rx.recv_timeout(std::time::Duration::from_secs(20));
    child
}

/// (thread name, Seccomp mode) of every thread of `pid`.
fn seccomp_of_threads(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(status) = std::fs::read_to_string(task.unwrap().path().join("status")) else {
            continue; // the thread ended meanwhile
        };
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        out.push((field("Name:"), field("Seccomp:")));
    }
    out
}

fn stop(mut child: std::process::Child) -> Output {
    // SAFETY: kill has no memory-safety preconditions; the child has not been reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.stdout.take();
    child.wait_with_output().unwrap()
}

/// A fresh API socket path for one VMM of a test (the directory is left for the OS).
fn api_socket(tag: &str) -> String {
    let dir = std::env::temp_dir().join(format!("vmm-seccomp-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("api.sock").to_string_lossy().into_owned()
}

/// Every thread of a running VM (main, vCPUs, the virtio-rng worker, the API thread) runs
/// under a seccomp filter (mode 2), and none with --seccomp off; on is the default.
#[test]
fn every_thread_runs_under_its_seccomp_filter() {
    require_kvm!();
    for (mode, expected) in [("on", "2"), ("log", "2"), ("off", "0"), ("default", "2")] {
        let sock = api_socket(mode);
        let mut args = vec!["--api-socket", sock.as_str()];
        if mode != "default" {
            args.extend(["--seccomp", mode]);
        }
        let child = start_held(&args, &[]);
        let threads = seccomp_of_threads(child.id());
        let out = stop(child);
        let ctx = format!(
            "--seccomp {mode}: {threads:?}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for name in ["vmm", "vcpu0", "vcpu1", "virtio-rng", "vmm_api"] {
            assert!(
                threads.iter().any(|(n, _)| n == name),
                "no thread {name}: {ctx}"
            );
        }
        assert!(threads.iter().all(|(_, s)| s == expected), "{ctx}");
        assert_eq!(out.status.code(), Some(128 + libc::SIGTERM), "{ctx}");
    }
}

/// A thread that makes a syscall its filter forbids ends the VMM with status 159 and one
/// line naming the thread, its filter and the syscall (the trigger is compiled only into
/// the test build of the binary).
#[test]
fn a_forbidden_syscall_ends_the_vmm_with_one_line_and_status_159() {
    require_kvm!();
    for (filter, thread) in [
        ("vmm", "main"),
        ("vcpu", "vcpu"),
        ("device_worker", "virtio-rng"),
        ("api", "vmm_api"),
    ] {
        let sock = api_socket(filter);
        let child = start_held(
            &["--seccomp", "on", "--api-socket", &sock],
            &[("VMM_SECCOMP_TEST_TRIGGER", filter)],
        );
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(159), "{filter}: {stderr}");
        let line = stderr
            .lines()
            .find(|l| l.contains("seccomp"))
            .unwrap_or_else(|| panic!("{filter}: no seccomp line: {stderr}"));
        assert!(
            line.starts_with(&format!("vmm: error: seccomp: thread {thread}")),
            "{line}"
        );
        assert!(
            line.contains(&format!(
                "(filter {filter}) made syscall {},",
                libc::SYS_getppid
            )),
            "{line}"
        );
    }
}
