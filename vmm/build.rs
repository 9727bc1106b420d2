//! Compiles the seccomp filters in `resources/seccomp/{x86_64,aarch64}.json` into BPF and
//! writes them as Rust constants (`$OUT_DIR/seccomp_filters.rs`, included by
//! `src/seccomp.rs`), so the binary carries its filters and needs no file at run time.
//!
//! Each filter is emitted twice: as written (mismatch action `trap`, for `--seccomp on`) and
//! with the mismatch action `log` (for `--seccomp log`). Both arches' files are compiled on
//! every build, so a syscall name that does not exist on the other arch fails here, not in a
//! cross build. The checks below keep the files to the conventions `src/seccomp.rs` relies on.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use seccompiler::{compile_from_json, BpfMap, TargetArch};
use serde_json::Value;

/// Syscalls of the SIGSYS handler: every filter must allow them unconditionally.
const HANDLER_SYSCALLS: &[&str] = &["write", "exit_group"];

/// Threads started by a thread of another kind inherit its filter, and the kernel applies
/// both: each syscall rule of the child must also be in the parent. (child, parent)
const STARTED_FROM: &[(&str, &str)] = &[("device_worker", "vcpu")];

const ARCHES: &[(&str, TargetArch)] = &[
    ("x86_64", TargetArch::x86_64),
    ("aarch64", TargetArch::aarch64),
];

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/seccomp");
    let target = std::env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets CARGO_CFG_TARGET_ARCH");
    let mut names_by_arch = Vec::new();
    let mut out = None;
    for &(arch, target_arch) in ARCHES {
        let path = dir.join(format!("{arch}.json"));
        println!("cargo:rerun-if-changed={}", path.display());
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let json: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
        check(&path, &json);
        let trap = compile(&path, &text, target_arch);
        let log = compile(&path, &with_log_mismatch(&json), target_arch);
        names_by_arch.push((arch, trap.keys().cloned().collect::<Vec<_>>()));
        if arch == target {
            out = Some(emit(arch, &trap, &log));
        }
    }
    let (first, first_names) = &names_by_arch[0];
    for (arch, names) in &names_by_arch[1..] {
        assert_eq!(
            sorted(first_names),
            sorted(names),
            "resources/seccomp/{first}.json and {arch}.json must define the same thread kinds"
        );
    }
    // Other arches build without filters (seccomp::install then reports that).
    let out = out.unwrap_or_else(|| emit(&target, &BpfMap::new(), &BpfMap::new()));
    let dest = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("seccomp_filters.rs");
    std::fs::write(&dest, out).unwrap_or_else(|e| panic!("cannot write {}: {e}", dest.display()));
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}

fn compile(path: &Path, json: &str, arch: TargetArch) -> BpfMap {
    compile_from_json(json.as_bytes(), arch)
        .unwrap_or_else(|e| panic!("{}: seccompiler refused it: {e}", path.display()))
}

/// The rules of one filter, without comments, as comparable strings.
fn rules(filter: &Value) -> Vec<String> {
    filter["filter"]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    strip_comments(&mut r);
                    r.to_string()
                })
                .collect()
        })
        .unwrap_or_default()
}

fn strip_comments(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("comment");
            m.values_mut().for_each(strip_comments);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_comments),
        _ => {}
    }
}

/// The conventions: every filter traps on mismatch and allows on match, allows the SIGSYS
/// handler's syscalls, and a thread kind started from another allows nothing more than it.
fn check(path: &Path, json: &Value) {
    let p = path.display();
    let filters = json
        .as_object()
        .unwrap_or_else(|| panic!("{p}: the top level must be an object of filters"));
    for (name, f) in filters {
        assert_eq!(
            f["mismatch_action"], "trap",
            "{p}: filter {name}: mismatch_action must be \"trap\" (--seccomp log derives the log variant)"
        );
        assert_eq!(
            f["filter_action"], "allow",
            "{p}: filter {name}: filter_action must be \"allow\""
        );
        let rules = rules(f);
        for s in HANDLER_SYSCALLS {
            let plain = serde_json::json!({ "syscall": s }).to_string();
            assert!(
                rules.contains(&plain),
                "{p}: filter {name} must allow {s} without conditions (the SIGSYS handler uses it)"
            );
        }
        let mut seen = std::collections::HashSet::new();
        for r in &rules {
            assert!(
                seen.insert(r),
                "{p}: filter {name} has a duplicate rule {r}"
            );
        }
    }
    for (child, parent) in STARTED_FROM {
        let (Some(c), Some(pa)) = (filters.get(*child), filters.get(*parent)) else {
            panic!("{p}: filters {child} and {parent} must both exist");
        };
        let parent_rules = rules(pa);
        for r in rules(c) {
            assert!(
                parent_rules.contains(&r),
                "{p}: {child} threads are started from {parent} threads and inherit their \
                 filter, so {parent} must also allow {r}"
            );
        }
    }
}

fn with_log_mismatch(json: &Value) -> String {
    let mut json = json.clone();
    if let Some(filters) = json.as_object_mut() {
        for f in filters.values_mut() {
            f["mismatch_action"] = Value::from("log");
        }
    }
    json.to_string()
}

fn const_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn program(bpf: &[seccompiler::sock_filter]) -> String {
    let mut s = String::from("&[");
    for i in bpf {
        let _ = write!(s, "op({:#x}, {}, {}, {:#x}),", i.code, i.jt, i.jf, i.k);
    }
    s.push(']');
    s
}

fn emit(arch: &str, trap: &BpfMap, log: &BpfMap) -> String {
    let mut out = format!("// Generated by vmm/build.rs from resources/seccomp/{arch}.json.\n");
    let sorted: BTreeMap<_, _> = trap.iter().collect();
    for (name, bpf) in &sorted {
        let _ = writeln!(
            out,
            "/// The `{name}` filter of resources/seccomp/{arch}.json.\n\
             pub static {}: Filter = Filter {{ name: {name:?}, trap: {}, log: {} }};",
            const_name(name),
            program(bpf),
            program(&log[*name]),
        );
    }
    let _ = writeln!(
        out,
        "/// Every filter, by name.\npub static ALL: &[&Filter] = &[{}];",
        sorted
            .keys()
            .map(|n| format!("&{}", const_name(n)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    out
}
