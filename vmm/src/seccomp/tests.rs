use std::collections::BTreeMap;

use kvm_bindings::*;
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

use super::*;

#[cfg(target_arch = "x86_64")]
const JSON: &str = include_str!("../../../resources/seccomp/x86_64.json");
#[cfg(target_arch = "aarch64")]
const JSON: &str = include_str!("../../../resources/seccomp/aarch64.json");

const KVMIO: u32 = 0xae;
const VFIO_TYPE: u32 = b';' as u32;
const VFIO_BASE: u32 = 100;
const IOMMUFD_TYPE: u32 = b';' as u32;
const IOMMUFD_BASE: u32 = 0x80;

ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_irqfd);
ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_ioeventfd);
ioctl_iow_nr!(KVM_SET_GSI_ROUTING, KVMIO, 0x6a, kvm_irq_routing);
ioctl_iow_nr!(
    KVM_SET_USER_MEMORY_REGION,
    KVMIO,
    0x46,
    kvm_userspace_memory_region
);
ioctl_iow_nr!(KVM_SET_DEVICE_ATTR, KVMIO, 0xe1, kvm_device_attr);
ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
#[cfg(target_arch = "x86_64")]
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
#[cfg(target_arch = "x86_64")]
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
#[cfg(target_arch = "x86_64")]
ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
#[cfg(target_arch = "x86_64")]
ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
#[cfg(target_arch = "aarch64")]
ioctl_iow_nr!(KVM_GET_ONE_REG, KVMIO, 0xab, kvm_one_reg);
ioctl_io_nr!(VFIO_DEVICE_SET_IRQS, VFIO_TYPE, VFIO_BASE + 10);
ioctl_io_nr!(VFIO_DEVICE_RESET, VFIO_TYPE, VFIO_BASE + 11);
ioctl_io_nr!(VFIO_DEVICE_DETACH_IOMMUFD_PT, VFIO_TYPE, VFIO_BASE + 20);
ioctl_io_nr!(IOMMU_DESTROY, IOMMUFD_TYPE, IOMMUFD_BASE);
ioctl_io_nr!(IOMMU_IOAS_ALLOW_IOVAS, IOMMUFD_TYPE, IOMMUFD_BASE + 2);
ioctl_io_nr!(IOMMU_IOAS_UNMAP, IOMMUFD_TYPE, IOMMUFD_BASE + 6);
ioctl_iowr_nr!(KVM_CREATE_DEVICE, KVMIO, 0xe0, kvm_create_device);
ioctl_io_nr!(VFIO_DEVICE_GET_INFO, VFIO_TYPE, VFIO_BASE + 7);
ioctl_io_nr!(VFIO_DEVICE_GET_REGION_INFO, VFIO_TYPE, VFIO_BASE + 8);
ioctl_io_nr!(VFIO_DEVICE_GET_IRQ_INFO, VFIO_TYPE, VFIO_BASE + 9);
ioctl_io_nr!(VFIO_DEVICE_BIND_IOMMUFD, VFIO_TYPE, VFIO_BASE + 18);
ioctl_io_nr!(VFIO_DEVICE_ATTACH_IOMMUFD_PT, VFIO_TYPE, VFIO_BASE + 19);
ioctl_io_nr!(IOMMU_IOAS_ALLOC, IOMMUFD_TYPE, IOMMUFD_BASE + 1);
ioctl_io_nr!(IOMMU_IOAS_IOVA_RANGES, IOMMUFD_TYPE, IOMMUFD_BASE + 4);
ioctl_io_nr!(IOMMU_IOAS_MAP, IOMMUFD_TYPE, IOMMUFD_BASE + 5);
ioctl_io_nr!(IOMMU_HWPT_ALLOC, IOMMUFD_TYPE, IOMMUFD_BASE + 9);
ioctl_io_nr!(IOMMU_GET_HW_INFO, IOMMUFD_TYPE, IOMMUFD_BASE + 0xa);
ioctl_io_nr!(IOMMU_HWPT_INVALIDATE, IOMMUFD_TYPE, IOMMUFD_BASE + 0xd);
ioctl_io_nr!(IOMMU_IOAS_MAP_FILE, IOMMUFD_TYPE, IOMMUFD_BASE + 0xf);
ioctl_io_nr!(IOMMU_VEVENTQ_ALLOC, IOMMUFD_TYPE, IOMMUFD_BASE + 0x13);

/// Every ioctl request a filter may name, computed from the uapi structs of this arch.
fn known_ioctls() -> BTreeMap<&'static str, u64> {
    let mut m: BTreeMap<&'static str, u64> = BTreeMap::new();
    // c_ulong is u64 on both 64-bit targets; the cast keeps this arch-neutral.
    #[allow(clippy::unnecessary_cast)]
    let mut add = |name, nr: libc::c_ulong| m.insert(name, nr as u64);
    add("KVM_RUN", KVM_RUN());
    add("KVM_IRQFD", KVM_IRQFD());
    add("KVM_IOEVENTFD", KVM_IOEVENTFD());
    add("KVM_SET_GSI_ROUTING", KVM_SET_GSI_ROUTING());
    add("KVM_SET_USER_MEMORY_REGION", KVM_SET_USER_MEMORY_REGION());
    add("KVM_SET_DEVICE_ATTR", KVM_SET_DEVICE_ATTR());
    add("KVM_GET_MP_STATE", KVM_GET_MP_STATE());
    #[cfg(target_arch = "x86_64")]
    {
        add("KVM_GET_REGS", KVM_GET_REGS());
        add("KVM_GET_SREGS", KVM_GET_SREGS());
        add("KVM_GET_LAPIC", KVM_GET_LAPIC());
        add("KVM_GET_MSRS", KVM_GET_MSRS());
    }
    #[cfg(target_arch = "aarch64")]
    add("KVM_GET_ONE_REG", KVM_GET_ONE_REG());
    add("VFIO_DEVICE_SET_IRQS", VFIO_DEVICE_SET_IRQS());
    add("VFIO_DEVICE_RESET", VFIO_DEVICE_RESET());
    add(
        "VFIO_DEVICE_DETACH_IOMMUFD_PT",
        VFIO_DEVICE_DETACH_IOMMUFD_PT(),
    );
    add("IOMMU_DESTROY", IOMMU_DESTROY());
    add("IOMMU_IOAS_ALLOW_IOVAS", IOMMU_IOAS_ALLOW_IOVAS());
    add("IOMMU_IOAS_UNMAP", IOMMU_IOAS_UNMAP());
    add("KVM_CREATE_DEVICE", KVM_CREATE_DEVICE());
    add("VFIO_DEVICE_GET_INFO", VFIO_DEVICE_GET_INFO());
    add("VFIO_DEVICE_GET_REGION_INFO", VFIO_DEVICE_GET_REGION_INFO());
    add("VFIO_DEVICE_GET_IRQ_INFO", VFIO_DEVICE_GET_IRQ_INFO());
    add("VFIO_DEVICE_BIND_IOMMUFD", VFIO_DEVICE_BIND_IOMMUFD());
    add(
        "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
        VFIO_DEVICE_ATTACH_IOMMUFD_PT(),
    );
    add("IOMMU_IOAS_ALLOC", IOMMU_IOAS_ALLOC());
    add("IOMMU_IOAS_IOVA_RANGES", IOMMU_IOAS_IOVA_RANGES());
    add("IOMMU_IOAS_MAP", IOMMU_IOAS_MAP());
    add("IOMMU_IOAS_MAP_FILE", IOMMU_IOAS_MAP_FILE());
    add("IOMMU_GET_HW_INFO", IOMMU_GET_HW_INFO());
    add("IOMMU_HWPT_ALLOC", IOMMU_HWPT_ALLOC());
    add("IOMMU_HWPT_INVALIDATE", IOMMU_HWPT_INVALIDATE());
    add("IOMMU_VEVENTQ_ALLOC", IOMMU_VEVENTQ_ALLOC());
    add("FIONBIO", libc::FIONBIO);
    m
}

/// (filter, ioctl name, request) for every ioctl rule of this arch's JSON file.
fn ioctl_rules() -> Vec<(String, String, u64)> {
    let json: serde_json::Value = serde_json::from_str(JSON).unwrap();
    let mut out = Vec::new();
    for (filter, f) in json.as_object().unwrap() {
        for rule in f["filter"].as_array().unwrap() {
            if rule["syscall"] != "ioctl" {
                continue;
            }
            let arg = &rule["args"][0];
            assert_eq!(arg["index"], 1, "{filter}: {rule}");
            assert_eq!(arg["op"], "eq", "{filter}: {rule}");
            out.push((
                filter.clone(),
                arg["comment"].as_str().unwrap_or("").to_string(),
                arg["val"].as_u64().unwrap(),
            ));
        }
    }
    out
}

#[test]
fn every_ioctl_rule_names_its_request_and_the_number_matches_the_uapi() {
    let known = known_ioctls();
    let rules = ioctl_rules();
    assert!(rules.len() > 10);
    for (filter, name, val) in rules {
        let expected = known
            .get(name.as_str())
            .unwrap_or_else(|| panic!("{filter}: ioctl rule {name:?}: not in known_ioctls()"));
        assert_eq!(
            val, *expected,
            "{filter}: {name} is {expected:#x}, not {val:#x}"
        );
    }
}

#[test]
fn the_generated_filters_are_the_json_ones() {
    let json: serde_json::Value = serde_json::from_str(JSON).unwrap();
    let mut names: Vec<&str> = filters::ALL.iter().map(|f| f.name).collect();
    names.sort();
    let mut in_json: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    in_json.sort();
    assert_eq!(names, in_json);
    for f in filters::ALL {
        let (trap, log) = (
            f.program(SeccompMode::On).unwrap(),
            f.program(SeccompMode::Log).unwrap(),
        );
        assert_eq!(trap.len(), log.len(), "{}", f.name);
        assert!(
            trap.iter().any(|i| i.k == libc::SECCOMP_RET_TRAP),
            "{}",
            f.name
        );
        assert!(
            log.iter().any(|i| i.k == libc::SECCOMP_RET_LOG),
            "{}",
            f.name
        );
        assert!(
            !log.iter().any(|i| i.k == libc::SECCOMP_RET_TRAP),
            "{}",
            f.name
        );
        assert!(f.program(SeccompMode::Off).is_none());
    }
}

#[test]
fn the_trap_line_names_thread_filter_and_syscall() {
    let mut out = [0u8; 400];
    let n = trap_line(
        b"vmm: error: seccomp: thread vcpu0 (filter vcpu) made syscall ",
        110,
        None,
        &mut out,
    );
    let line = std::str::from_utf8(&out[..n]).unwrap();
    assert!(
        line.starts_with("vmm: error: seccomp: thread vcpu0 (filter vcpu) made syscall 110, which"),
        "{line}"
    );
    assert!(line.ends_with("resources/seccomp/\n"), "{line}");
    assert_eq!(line.lines().count(), 1);
    // A line that does not fit is cut, never overrun.
    let mut small = [0u8; 20];
    assert_eq!(trap_line(&[b'x'; 30], 7, None, &mut small), 20);
    assert_eq!(trap_line(&[b'x'; 10], 16, Some(0x3b89), &mut small), 20);
    // An ioctl names its request number.
    let n = trap_line(b"made syscall ", 16, Some(0x3b89), &mut out);
    let line = std::str::from_utf8(&out[..n]).unwrap();
    assert!(
        line.starts_with("made syscall 16 (ioctl, request 0x3b89), which"),
        "{line}"
    );

    let mut buf = [0u8; 24];
    let n = push_decimal(&mut buf, 0, -2147483648);
    assert_eq!(&buf[..n], b"-2147483648");
    let n = push_decimal(&mut buf, 0, 0);
    assert_eq!(&buf[..n], b"0");
    let n = push_hex(&mut buf, 0, 0);
    assert_eq!(&buf[..n], b"0x0");
    let n = push_hex(&mut buf, 0, u64::MAX);
    assert_eq!(&buf[..n], b"0xffffffffffffffff");
}

/// Runs `body` in a forked child with `program` installed and returns its wait status.
fn in_child(program: &[sock_filter], body: fn() -> i32) -> i32 {
    // SAFETY: the child only installs the filter (prctl, seccomp: no allocation in
    // seccompiler's apply path for a borrowed program), runs `body` (raw syscalls only) and
    // _exits; the parent waits for it.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0);
        if pid == 0 {
            if seccompiler::apply_filter(program).is_err() {
                libc::_exit(100);
            }
            libc::_exit(body());
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        status
    }
}

fn allowed_syscalls() -> i32 {
    // SAFETY: write of a static empty buffer to stderr.
    let r = unsafe { libc::write(2, b"".as_ptr().cast(), 0) };
    if r == 0 {
        0
    } else {
        101
    }
}

fn forbidden_syscall() -> i32 {
    // SAFETY: getppid has no preconditions.
    unsafe { libc::syscall(TEST_TRIGGER_SYSCALL) };
    0
}

/// Whether this kernel runs our filters: under qemu-user (the aarch64 unit tests) the
/// emulator refuses the seccomp syscall, or would hand the host kernel a filter for another
/// arch. Probed in a child, so a wrong answer cannot end this test binary.
fn filters_run_here() -> bool {
    let s = in_child(
        filters::VCPU.program(SeccompMode::On).unwrap(),
        allowed_syscalls,
    );
    let works = libc::WIFEXITED(s) && libc::WEXITSTATUS(s) == 0;
    if !works {
        eprintln!(
            "SKIPPED: seccomp filters cannot be installed here (wait status {s:#x}; \
             qemu-user does not emulate seccomp)"
        );
    }
    works
}

#[test]
fn every_filter_allows_its_syscalls_traps_a_forbidden_one_and_logs_it_in_log_mode() {
    if !filters_run_here() {
        return;
    }
    for f in filters::ALL {
        let trap = f.program(SeccompMode::On).unwrap();
        let log = f.program(SeccompMode::Log).unwrap();
        let s = in_child(trap, allowed_syscalls);
        assert!(
            libc::WIFEXITED(s) && libc::WEXITSTATUS(s) == 0,
            "{}: {s:#x}",
            f.name
        );
        // No handler in the child: SIGSYS's default action ends it.
        let s = in_child(trap, forbidden_syscall);
        assert!(
            libc::WIFSIGNALED(s) && libc::WTERMSIG(s) == libc::SIGSYS,
            "{}: {s:#x}",
            f.name
        );
        let s = in_child(log, forbidden_syscall);
        assert!(
            libc::WIFEXITED(s) && libc::WEXITSTATUS(s) == 0,
            "{}: {s:#x}",
            f.name
        );
    }
}

#[test]
fn threads_with_a_thread_filter_start_stop_and_are_joined() {
    // A vCPU-filtered thread starts a worker, which installs its own filter on top (the
    // kernel then applies both); both allocate, end and are joined under their filters. A
    // syscall missing on that path raises SIGSYS, whose default action ends this test binary.
    if !filters_run_here() {
        return;
    }
    let vcpu = std::thread::Builder::new()
        .name("vcpu-test".into())
        .spawn(|| {
            seccompiler::apply_filter(filters::VCPU.program(SeccompMode::On).unwrap()).unwrap();
            let worker = std::thread::Builder::new()
                .name("worker-test".into())
                .spawn(|| {
                    seccompiler::apply_filter(
                        filters::DEVICE_WORKER.program(SeccompMode::On).unwrap(),
                    )
                    .unwrap();
                    vec![1u8; 4 << 20]
                        .iter()
                        .map(|&b| u64::from(b))
                        .sum::<u64>()
                })
                .unwrap();
            worker.join().unwrap()
        })
        .unwrap();
    assert_eq!(vcpu.join().unwrap(), 4 << 20);
}
