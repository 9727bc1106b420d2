//! Start-up benchmark: time from process start to the guest's first serial line, and the VMM's
//! resident memory excluding guest RAM, for our VMM and, side by side, QEMU booting the same
//! multiboot guest (when qemu-system-x86_64 is installed).
//!
//! Run: `cargo bench -p vmm --bench boot`. Guest RAM is memfd-backed in both VMMs so it can
//! be told apart in /proc/PID/smaps and left out of the RSS figure.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmm_tests::{multiboot_elf32, scratch, CODE_HANG, TINY_GUEST_ELF32, TINY_GUEST_ELF64};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");
const RUNS: usize = 15;
const QEMU: &str = "qemu-system-x86_64";

fn ours(kernel: &str, memory: &str) -> Command {
    let mut c = Command::new(VMM);
    c.args(["--kernel", kernel, "--memory", memory, "--memfd"]);
    c
}

fn qemu(kernel: &str, memory: &str, accel: &str) -> Command {
    let mut c = Command::new(QEMU);
    c.args([
        "-accel", accel, "-M", "q35", "-m", memory, "-kernel", kernel,
    ])
    .args([
        "-object",
        &format!("memory-backend-memfd,id=ram,size={memory}"),
    ])
    .args(["-machine", "memory-backend=ram"])
    .args([
        "-display", "none", "-serial", "stdio", "-monitor", "none", "-nic", "none",
    ])
    .args([
        "-no-reboot",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=4",
    ]);
    c
}

/// Milliseconds from spawn to the first byte on the guest's serial (stdout), median of RUNS.
fn first_byte_ms(mut make: impl FnMut() -> Command) -> Option<f64> {
    let mut samples = Vec::new();
    for _ in 0..RUNS {
        let start = Instant::now();
        let mut child = make()
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut out = child.stdout.take()?;
        let mut b = [0u8; 1];
        let got = out.read(&mut b).ok()? == 1;
        let t = start.elapsed();
        let _ = child.kill();
        let _ = child.wait();
        if !got {
            return None;
        }
        samples.push(t.as_secs_f64() * 1e3);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    Some(samples[samples.len() / 2])
}

/// KiB resident in `pid`, excluding memfd mappings (guest RAM).
fn rss_excluding_guest_kib(pid: u32) -> Option<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut total = 0;
    let mut guest = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().next().is_some_and(|c| c.is_ascii_hexdigit()) {
            guest = line.contains("/memfd:");
        } else if let Some(v) = line.strip_prefix("Rss:") {
            if !guest {
                total += v
                    .trim()
                    .trim_end_matches(" kB")
                    .trim()
                    .parse::<u64>()
                    .ok()?;
            }
        }
    }
    Some(total)
}

fn settled_rss(mut child: Child) -> Option<u64> {
    std::thread::sleep(Duration::from_millis(700));
    let r = rss_excluding_guest_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    r
}

fn row(name: &str, ours: Option<f64>, peer: Option<f64>, unit: &str) {
    let f = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.2} {unit}"));
    let ratio = match (ours, peer) {
        (Some(a), Some(b)) if a > 0.0 => format!("{:.2}x", b / a),
        _ => "n/a".to_string(),
    };
    println!("{name:<40} {:>14} {:>14} {:>10}", f(ours), f(peer), ratio);
}

fn main() {
    let have_qemu = Command::new(QEMU).arg("--version").output().is_ok();
    let hang = scratch("hang.elf");
    if std::fs::write(&hang, multiboot_elf32(CODE_HANG)).is_err() {
        eprintln!("cannot write {}", hang.display());
        return;
    }
    let hang_s = hang.to_str().unwrap_or_default();
    println!(
        "{:<40} {:>14} {:>14} {:>10}",
        "metric", "ours", "qemu", "qemu/ours"
    );

    let ours_ms = first_byte_ms(|| ours(TINY_GUEST_ELF64, "64M"));
    let qemu_kvm_ms = have_qemu
        .then(|| first_byte_ms(|| qemu(TINY_GUEST_ELF32, "64M", "kvm")))
        .flatten();
    let qemu_tcg_ms = have_qemu
        .then(|| first_byte_ms(|| qemu(TINY_GUEST_ELF32, "64M", "tcg")))
        .flatten();
    row(
        "start to first serial byte (kvm)",
        ours_ms,
        qemu_kvm_ms,
        "ms",
    );
    row(
        "start to first serial byte (qemu tcg)",
        ours_ms,
        qemu_tcg_ms,
        "ms",
    );

    let ours_rss = ours(hang_s, "64M")
        .stdout(Stdio::null())
        .spawn()
        .ok()
        .and_then(settled_rss);
    let qemu_rss = have_qemu
        .then(|| {
            qemu(hang_s, "64M", "kvm")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()
                .and_then(settled_rss)
        })
        .flatten();
    row(
        "RSS excluding guest RAM, 1 vCPU 64M",
        ours_rss.map(|k| k as f64 / 1024.0),
        qemu_rss.map(|k| k as f64 / 1024.0),
        "MiB",
    );
    println!("(Firecracker's published bar for VMM overhead: 5 MiB)");
    irq_rate();
    if !have_qemu {
        println!("qemu-system-x86_64 not installed: peer columns are n/a");
    }
    let _ = std::fs::remove_file(&hang);
}

/// MSI-X interrupts per second through one irqfd route: the tiny guest posts virtio-rng
/// requests one at a time and waits for each completion interrupt (device -> MsixConfig ->
/// irqfd -> KVM route -> LAPIC), reporting TSC ticks per round trip.
fn irq_rate() {
    const LOOPS: u32 = 2000;
    let out = match ours(TINY_GUEST_ELF64, "64M")
        .args(["--rng", "--cmdline", &format!("rng_loops={LOOPS}")])
        .output()
    {
        Ok(o) => o,
        Err(e) => return println!("irq rate: cannot run vmm: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ticks: Option<f64> = stdout
        .lines()
        .find(|l| l.contains("virtio-rng loops="))
        .and_then(|l| l.split("tsc_per_irq=").nth(1))
        .and_then(|v| v.trim().parse().ok());
    let mhz: Option<f64> = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| {
        c.lines()
            .find(|l| l.starts_with("cpu MHz"))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.trim().parse().ok())
    });
    match (ticks, mhz) {
        (Some(t), Some(m)) => println!(
            "{:<40} {:>14}",
            format!("MSI-X irqs/s via one irqfd ({LOOPS} reqs)"),
            format!("{:.0}/s", m * 1e6 / t)
        ),
        _ => println!("irq rate: guest did not report (stdout: {stdout})"),
    }
}
