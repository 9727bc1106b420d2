//! Builds the in-tree tiny test guest (tests/guest/x86_64) from source with the
//! system gcc and binutils: an ELF64 image and an ELF32 copy of it (QEMU's
//! `-kernel` takes only ELF32 Multiboot images; the VMM's loader takes both).
//!
//! The host KVM runs guest CPL0 code in an instruction emulator that rejects
//! SSE/AVX/x87 and several newer integer instructions, so the build
//! disassembles the result and fails if any such instruction shows up.
//!
//! Tools can be overridden with TINY_GUEST_CC, TINY_GUEST_LD,
//! TINY_GUEST_OBJCOPY and TINY_GUEST_OBJDUMP.

use std::env;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

const GUEST_DIR: &str = "guest/x86_64";
const SOURCES: &[&str] = &[
    "entry.S",
    "guest.c",
    "layout.h",
    "link.ld",
    "plain-multiboot.S",
];

const CFLAGS: &[&str] = &[
    "-m64",
    "-march=x86-64",
    "-mtune=generic",
    "-std=gnu11",
    "-O2",
    "-Wall",
    "-Wextra",
    "-ffreestanding",
    "-fno-builtin",
    "-fno-pic",
    "-fno-pie",
    "-nostdlib",
    "-static",
    "-mgeneral-regs-only",
    "-mno-red-zone",
    "-mno-sse",
    "-mno-mmx",
    "-mno-80387",
    "-fno-stack-protector",
    "-fno-stack-clash-protection",
    // endbr64 and friends: not worth finding out whether the emulator knows them.
    "-fcf-protection=none",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    // Keep the compiler from turning our loops into memcpy/memset calls.
    "-fno-tree-loop-distribute-patterns",
    // Multiboot info may legitimately sit at low addresses.
    "-fno-delete-null-pointer-checks",
];

/// Mnemonics (or mnemonic prefixes ending in '*') the host emulator rejects.
const FORBIDDEN: &[&str] = &[
    "cmpxchg16b",
    "popcnt",
    "lzcnt",
    "tzcnt",
    "andn",
    "bextr",
    "blsi",
    "blsmsk",
    "blsr",
    "bzhi",
    "mulx",
    "pdep",
    "pext",
    "rorx",
    "sarx",
    "shlx",
    "shrx",
    "adcx",
    "adox",
    "movbe",
    "crc32",
    "rdtscp",
    "stac",
    "clac",
    "xgetbv",
    "xsetbv",
    "xsave*",
    "xrstor*",
    "ldmxcsr",
    "stmxcsr",
    "verw",
    "verr",
    "int3",
    "endbr32",
    "endbr64",
    "aes*",
    "pclmul*",
    "clwb",
    "invpcid",
    "v*", // all VEX/EVEX (AVX) forms
    "f*", // x87
    "(bad)",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for var in [
        "TINY_GUEST_CC",
        "TINY_GUEST_LD",
        "TINY_GUEST_OBJCOPY",
        "TINY_GUEST_OBJDUMP",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("x86_64") {
        return;
    }

    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let src = manifest_dir.join(GUEST_DIR);
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    for f in SOURCES {
        println!("cargo:rerun-if-changed={}", src.join(f).display());
    }

    let cc = tool("TINY_GUEST_CC", "gcc");
    let ld = tool("TINY_GUEST_LD", "ld");
    let objcopy = tool("TINY_GUEST_OBJCOPY", "objcopy");
    let objdump = tool("TINY_GUEST_OBJDUMP", "objdump");

    let entry_o = out.join("tiny-guest-entry.o");
    let guest_o = out.join("tiny-guest-guest.o");
    let elf64 = out.join("tiny-guest-x86_64.elf");
    let elf32 = out.join("tiny-guest-x86_64-elf32.elf");

    for (source, object) in [("entry.S", &entry_o), ("guest.c", &guest_o)] {
        run(Command::new(&cc)
            .args(CFLAGS)
            .arg("-I")
            .arg(&src)
            .arg("-c")
            .arg(src.join(source))
            .arg("-o")
            .arg(object));
    }
    run(Command::new(&ld)
        .args([
            "-nostdlib",
            "-static",
            "-z",
            "max-page-size=0x1000",
            "-z",
            "noexecstack",
        ])
        .arg("-T")
        .arg(src.join("link.ld"))
        .arg("-o")
        .arg(&elf64)
        .arg(&entry_o)
        .arg(&guest_o));
    run(Command::new(&objcopy)
        .args(["-O", "elf32-i386"])
        .arg(&elf64)
        .arg(&elf32));

    // Each section in the CPU mode it runs in.
    let mut bad = Vec::new();
    for (section, mode, all) in [
        (".text", "x86-64", false),
        (".text32", "i386", false),
        (".tramp16", "i8086", true),
    ] {
        let listing = capture(
            Command::new(&objdump)
                .arg(if all { "-D" } else { "-d" })
                .args(["-M", mode, "-j", section, "--no-show-raw-insn"])
                .arg(&elf64),
        );
        bad.extend(
            forbidden_lines(&listing)
                .into_iter()
                .map(|l| format!("{section}: {l}")),
        );
    }
    if !bad.is_empty() {
        panic!(
            "tiny guest: instructions the host KVM emulator rejects were generated:\n{}",
            bad.join("\n")
        );
    }

    for image in [&elf64, &elf32] {
        check_multiboot_header(image);
    }

    // The plain-linked multiboot kernel (legacy-area segment below 1 MiB).
    let plain_o = out.join("plain-multiboot.o");
    let plain = out.join("plain-multiboot.elf");
    run(Command::new(&cc)
        .args(["-m32", "-c"])
        .arg(src.join("plain-multiboot.S"))
        .arg("-o")
        .arg(&plain_o));
    run(Command::new(&ld)
        .args(["-m", "elf_i386", "-Ttext", "0x100000", "-o"])
        .arg(&plain)
        .arg(&plain_o));
    check_multiboot_header(&plain);
    println!("cargo:rustc-env=PLAIN_MULTIBOOT_ELF={}", plain.display());

    println!("cargo:rustc-env=TINY_GUEST_ELF64={}", elf64.display());
    println!("cargo:rustc-env=TINY_GUEST_ELF32={}", elf32.display());
}

fn tool(var: &str, default: &str) -> String {
    env::var(var).unwrap_or_else(|_| default.to_string())
}

fn spawn_output(cmd: &mut Command) -> std::process::Output {
    let program = cmd.get_program().to_string_lossy().into_owned();
    match cmd.output() {
        Ok(o) => o,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "tiny guest: `{program}` not found. Building the x86_64 test guest needs gcc and \
             binutils (Debian: apt-get install gcc binutils), or set TINY_GUEST_CC / \
             TINY_GUEST_LD / TINY_GUEST_OBJCOPY / TINY_GUEST_OBJDUMP."
        ),
        Err(e) => panic!("tiny guest: cannot run `{program}`: {e}"),
    }
}

fn run(cmd: &mut Command) {
    let o = spawn_output(cmd);
    // Compiler warnings are worth seeing even on success.
    let stderr = String::from_utf8_lossy(&o.stderr);
    if !o.status.success() {
        panic!("tiny guest: {cmd:?} failed ({}):\n{stderr}", o.status);
    }
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        println!("cargo:warning=tiny guest: {line}");
    }
}

fn capture(cmd: &mut Command) -> String {
    let o = spawn_output(cmd);
    if !o.status.success() {
        panic!(
            "tiny guest: {cmd:?} failed ({}):\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
    }
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Instruction lines of an objdump listing whose mnemonic or operands the
/// emulator rejects. Lines look like "  100040:\tmov    %eax,%cr4".
fn forbidden_lines(listing: &str) -> Vec<String> {
    let mut bad = Vec::new();
    for line in listing.lines() {
        let Some((addr, insn)) = line.split_once(":\t") else {
            continue;
        };
        if addr.trim().is_empty() || !addr.trim().chars().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        let insn = insn.trim();
        let mut words = insn.split_whitespace();
        // Skip prefixes to reach the mnemonic.
        let mnemonic = words
            .find(|w| {
                !matches!(
                    *w,
                    "lock"
                        | "rep"
                        | "repz"
                        | "repnz"
                        | "repe"
                        | "repne"
                        | "data16"
                        | "data32"
                        | "addr16"
                        | "addr32"
                        | "cs"
                        | "ds"
                        | "es"
                        | "ss"
                        | "fs"
                        | "gs"
                        | "notrack"
                )
            })
            .unwrap_or("");
        let by_name = FORBIDDEN.iter().any(|f| match f.strip_suffix('*') {
            Some(prefix) => mnemonic.starts_with(prefix),
            None => mnemonic == *f,
        });
        let by_operand = ["%xmm", "%ymm", "%zmm", "%mm", "%st"]
            .iter()
            .any(|r| insn.contains(r));
        if by_name || by_operand {
            bad.push(format!("{}: {insn}", addr.trim()));
        }
    }
    bad
}

/// Multiboot v1: header 4-byte aligned within the first 8 KiB, checksum 0.
fn check_multiboot_header(image: &Path) {
    let bytes =
        fs::read(image).unwrap_or_else(|e| panic!("tiny guest: read {}: {e}", image.display()));
    let word = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
    let found = (0..bytes.len().min(8192).saturating_sub(11))
        .step_by(4)
        .any(|i| {
            word(i) == 0x1BAD_B002
                && word(i).wrapping_add(word(i + 4)).wrapping_add(word(i + 8)) == 0
        });
    if !found {
        panic!(
            "tiny guest: no valid Multiboot header in the first 8 KiB of {}",
            image.display()
        );
    }
}
