//! Host-KVM tests of the API: the real `vmm` binary runs the tiny guest (ticking forever)
//! with `--api-socket`, and the tests drive it through the socket and `vmm-remote`. Every
//! answer is checked against api/openapi.yaml.
#![cfg(target_arch = "x86_64")]

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use api::client::{Answer, ApiClient};
use vmm_tests::openapi::OpenApi;
use vmm_tests::{kvm_available, scratch, TINY_GUEST_ELF64};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");
const VMM_REMOTE: &str = env!("CARGO_BIN_EXE_vmm-remote");

macro_rules! require_kvm {
    () => {
        if !kvm_available() {
            eprintln!("SKIPPED: /dev/kvm cannot be opened read-write on this host");
            return;
        }
    };
}

/// A VMM running the tiny guest in tick mode with an API socket.
struct RunningVmm {
    child: Child,
    socket: PathBuf,
    serial: PathBuf,
}

impl RunningVmm {
    fn start(vcpus: u32) -> RunningVmm {
        Self::start_at(scratch("api.sock"), vcpus)
    }

    fn start_at(socket: PathBuf, vcpus: u32) -> RunningVmm {
        let serial = scratch("serial.log");
        let child = Command::new(VMM)
            .args(["--kernel", TINY_GUEST_ELF64, "--memory", "64M"])
            .args(["--vcpus", &vcpus.to_string(), "--cmdline", "tick=5"])
            .arg(format!("--serial=file={}", serial.display()))
            .arg("--api-socket")
            .arg(&socket)
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run vmm");
        let mut vmm = RunningVmm {
            child,
            socket,
            serial,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while ApiClient::connect(&vmm.socket).is_err() || vmm.ticks() < 2 {
            if let Ok(Some(status)) = vmm.child.try_wait() {
                panic!("the VMM exited early with {status}: {}", vmm.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "the VMM did not serve its API socket and tick in time"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        vmm
    }

    fn client(&self) -> ApiClient {
        ApiClient::connect(&self.socket).expect("cannot connect to the API socket")
    }

    fn call(&self, method: &str, route: &str, body: Option<&str>) -> Answer {
        self.client()
            .call(method, route, body.map(str::as_bytes))
            .expect("API call failed")
    }

    /// Bytes of guest serial output so far.
    fn serial_len(&self) -> u64 {
        std::fs::metadata(&self.serial)
            .map(|m| m.len())
            .unwrap_or(0)
    }

    fn ticks(&self) -> usize {
        std::fs::read_to_string(&self.serial)
            .unwrap_or_default()
            .matches("tiny-guest: tick")
            .count()
    }

    fn remote(&self, args: &[&str]) -> Output {
        Command::new(VMM_REMOTE)
            .arg("--api-socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("cannot run vmm-remote")
    }

    fn stderr(&mut self) -> String {
        use std::io::Read;
        let mut s = String::new();
        if let Some(e) = self.child.stderr.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }

    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "the VMM did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RunningVmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.serial);
    }
}

fn json(a: &Answer) -> serde_json::Value {
    serde_json::from_slice(&a.body).unwrap_or_else(|e| panic!("{e}: {}", a.text()))
}

/// Checks `a` against the API description and returns it.
fn described(api: &OpenApi, method: &str, route: &str, a: Answer) -> Answer {
    api.check_answer(method, route, a.status, &a.body)
        .unwrap_or_else(|e| panic!("{e}"));
    a
}

#[test]
fn every_route_answers_and_pause_really_stops_the_guest() {
    require_kvm!();
    let api = OpenApi::load();
    let mut vmm = RunningVmm::start(2);
    let call = |m: &str, r: &str, b: Option<&str>| described(&api, m, r, vmm.call(m, r, b));

    let ping = call("GET", "/vmm.ping", None);
    assert_eq!(ping.status, 200);
    assert_eq!(json(&ping)["pid"], vmm.child.id());

    let info = call("GET", "/vm.info", None);
    assert_eq!(info.status, 200, "{}", info.text());
    let v = json(&info);
    assert_eq!(v["state"], "Running");
    assert_eq!(v["config"]["vcpus"], 2);
    assert_eq!(v["config"]["memory"], 64 << 20);
    assert_eq!(v["config"]["cmdline"], "tick=5");
    assert_eq!(v["memory_map"]["coverage"]["total"], 64 << 20);
    assert_eq!(v["devices"], serde_json::json!([]));

    // Pause: once it answers, the guest prints nothing more.
    assert_eq!(call("PUT", "/vm.pause", None).status, 204);
    assert_eq!(json(&call("GET", "/vm.info", None))["state"], "Paused");
    let paused_at = vmm.serial_len();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(vmm.serial_len(), paused_at, "the guest ran while paused");
    assert_eq!(call("PUT", "/vm.resume", None).status, 204);
    let deadline = Instant::now() + Duration::from_secs(10);
    while vmm.serial_len() == paused_at {
        assert!(Instant::now() < deadline, "the guest did not resume");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(json(&call("GET", "/vm.info", None))["state"], "Running");

    // With --api-socket the VM has hotplug slots: a device this host has not bound to
    // vfio-pci is a bad request that says how to bind it, and nothing is added.
    let add = call(
        "PUT",
        "/vm.add-device",
        Some(r#"{"path": "/sys/bus/pci/devices/0000:00:03.0", "id": "nic"}"#),
    );
    assert_eq!(add.status, 400, "{}", add.text());
    assert!(add.text().contains("vfio-pci"), "{}", add.text());
    assert_eq!(
        json(&call("GET", "/vm.info", None))["devices"],
        serde_json::json!([])
    );
    let remove = call("PUT", "/vm.remove-device", Some(r#"{"id": "nic"}"#));
    assert_eq!(remove.status, 404, "{}", remove.text());

    // vmm-remote: JSON answers on stdout, exit 0; a refusal exits 1 with the message.
    let out = vmm.remote(&["ping"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["pid"], vmm.child.id());
    let out = vmm.remote(&["info"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "Running");
    assert!(vmm.remote(&["pause"]).status.success());
    let out = vmm.remote(&["pause"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already paused"));
    assert!(vmm.remote(&["resume"]).status.success());
    let out = vmm.remote(&["remove-device", "ghost"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ghost"),
        "{out:?}"
    );
    let out = vmm.remote(&["add-device", "id=x"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    // Shutdown: 204, the VMM exits 0 and removes its socket.
    let out = vmm.remote(&["shutdown"]);
    assert!(out.status.success(), "{out:?}");
    let status = vmm.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", vmm.stderr());
    assert!(!vmm.socket.exists(), "the socket file was left behind");
    let out = vmm.remote(&["ping"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}

/// Shutdown while paused must still end the VMM (the paused vCPUs are let go).
#[test]
fn shutdown_while_paused_exits_0() {
    require_kvm!();
    let mut vmm = RunningVmm::start(2);
    assert_eq!(vmm.call("PUT", "/vm.pause", None).status, 204);
    assert_eq!(vmm.call("PUT", "/vm.shutdown", None).status, 204);
    assert_eq!(vmm.wait(Duration::from_secs(10)).code(), Some(0));
}

/// (what, raw request or a routed request, expected status)
enum Bad {
    Raw(&'static str, Vec<u8>, u16),
    Call(
        &'static str,
        &'static str,
        &'static str,
        Option<&'static str>,
        u16,
    ),
}

fn bad_requests() -> Vec<Bad> {
    use Bad::*;
    let long_header = format!(
        "GET /api/v1/vmm.ping HTTP/1.1\r\nX-Long: {}\r\n\r\n",
        "a".repeat(9000)
    );
    let many_headers = format!(
        "GET /api/v1/vmm.ping HTTP/1.1\r\n{}\r\n",
        (0..40).map(|i| format!("X-{i}: y\r\n")).collect::<String>()
    );
    let mut huge = b"PUT /api/v1/vm.add-device HTTP/1.1\r\nContent-Length: 70000\r\n\r\n".to_vec();
    huge.extend(std::iter::repeat_n(b' ', 70000));
    vec![
        Raw("not HTTP", b"hello there\r\n\r\n".to_vec(), 400),
        Raw("bad version", b"GET /api/v1/vmm.ping HTTP/9.9\r\n\r\n".to_vec(), 400),
        Raw("header without colon", b"GET /api/v1/vmm.ping HTTP/1.1\r\nBroken\r\n\r\n".to_vec(), 400),
        Raw("NUL in the path", b"GET /api/v1/vmm\0ping HTTP/1.1\r\n\r\n".to_vec(), 400),
        Raw("too many headers", many_headers.into_bytes(), 400),
        Raw("head over 8 KiB", long_header.into_bytes(), 400),
        Raw("body over 64 KiB", huge, 413),
        Raw("announced body over 64 KiB", b"PUT /api/v1/vm.add-device HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n".to_vec(), 413),
        Raw("body without Content-Length", b"PUT /api/v1/vm.add-device HTTP/1.1\r\n\r\n".to_vec(), 411),
        Raw("chunked body", b"PUT /api/v1/vm.add-device HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{}\r\n0\r\n\r\n".to_vec(), 411),
        Raw("bad Content-Length", b"PUT /api/v1/vm.add-device HTTP/1.1\r\nContent-Length: ten\r\n\r\n".to_vec(), 400),
        Raw("two Content-Lengths", b"PUT /api/v1/vm.remove-device HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}".to_vec(), 400),
        Raw("Expect: 100-continue", b"PUT /api/v1/vm.remove-device HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n".to_vec(), 417),
        Call("bad JSON", "PUT", "/vm.add-device", Some(r#"{"path": "#), 400),
        Call("not an object", "PUT", "/vm.add-device", Some("[1, 2]"), 400),
        Call("unknown field", "PUT", "/vm.add-device", Some(r#"{"path": "/sys/x", "speed": 9}"#), 400),
        Call("path of the wrong type", "PUT", "/vm.add-device", Some(r#"{"path": 5}"#), 400),
        Call("iommu of the wrong type", "PUT", "/vm.add-device", Some(r#"{"path": "/sys/x", "iommu": "yes"}"#), 400),
        Call("missing path", "PUT", "/vm.add-device", Some(r#"{"id": "nic"}"#), 400),
        Call("relative path", "PUT", "/vm.add-device", Some(r#"{"path": "sys/bus/pci"}"#), 400),
        Call("bad id", "PUT", "/vm.add-device", Some(r#"{"path": "/sys/x", "id": "a b"}"#), 400),
        Call("id of the wrong type", "PUT", "/vm.remove-device", Some(r#"{"id": 3}"#), 400),
        Call("unknown field on remove", "PUT", "/vm.remove-device", Some(r#"{"id": "a", "force": true}"#), 400),
        Call("empty body on remove", "PUT", "/vm.remove-device", Some(""), 400),
        Call("body on a bodyless route", "GET", "/vm.info", Some("{}"), 400),
        Call("unknown route", "GET", "/vm.explode", None, 404),
        Call("unknown version prefix", "GET", "/../v2/vm.info", None, 404),
        Call("POST", "POST", "/vm.pause", None, 405),
        Call("GET on a PUT route", "GET", "/vm.shutdown", None, 405),
        Call("PUT on a GET route", "PUT", "/vmm.ping", None, 405),
        Call("DELETE", "DELETE", "/vm.info", None, 405),
        Call("resume while running", "PUT", "/vm.resume", None, 409),
        Call("remove an unknown id", "PUT", "/vm.remove-device", Some(r#"{"id": "ghost"}"#), 404),
        // Refused by the hotplug side (the VM has slots): a path that is not a PCI device, a
        // device not bound to vfio-pci, and iommu=on (nesting is not hot-pluggable yet).
        Call("not a PCI device", "PUT", "/vm.add-device", Some(r#"{"path": "/tmp"}"#), 400),
        Call("not bound to vfio-pci", "PUT", "/vm.add-device", Some(r#"{"path": "/sys/bus/pci/devices/0000:00:03.0", "id": "dup"}"#), 400),
        Call("iommu on hot-add", "PUT", "/vm.add-device", Some(r#"{"path": "/sys/bus/pci/devices/0000:00:03.0", "iommu": true}"#), 400),
    ]
}

#[test]
fn bad_requests_get_a_4xx_fault_and_the_vm_runs_on() {
    require_kvm!();
    let api = OpenApi::load();
    let vmm = RunningVmm::start(1);
    let cases = bad_requests();
    assert!(cases.len() >= 25);
    for case in cases {
        let (what, answer, want, route) = match case {
            Bad::Raw(what, bytes, want) => {
                let mut c = vmm.client();
                c.send_raw(&bytes).unwrap();
                (what, c.read_answer().unwrap(), want, None)
            }
            Bad::Call(what, method, route, body, want) => (
                what,
                vmm.call(method, route, body),
                want,
                Some((method, route)),
            ),
        };
        assert_eq!(answer.status, want, "{what}: {}", answer.text());
        let fault: api::response::Fault = serde_json::from_slice(&answer.body)
            .unwrap_or_else(|e| panic!("{what}: not a fault ({e}): {}", answer.text()));
        assert!(!fault.fault_message.is_empty(), "{what}");
        if let Some((method, route)) = route {
            if api
                .routes()
                .contains(&(method.to_string(), route.to_string()))
            {
                described(&api, method, route, answer);
            }
        }
        let ping = vmm.call("GET", "/vmm.ping", None);
        assert_eq!(ping.status, 200, "ping after {what}");
    }
    // Pause twice: the second is a conflict and the VM stays paused, then resumes.
    assert_eq!(vmm.call("PUT", "/vm.pause", None).status, 204);
    assert_eq!(vmm.call("PUT", "/vm.pause", None).status, 409);
    assert_eq!(vmm.call("PUT", "/vm.resume", None).status, 204);
    // The guest still runs.
    let before = vmm.ticks();
    let deadline = Instant::now() + Duration::from_secs(10);
    while vmm.ticks() == before {
        assert!(Instant::now() < deadline, "the guest stopped ticking");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(json(&vmm.call("GET", "/vm.info", None))["state"], "Running");
}

/// One keep-alive connection takes many requests, pipelined too.
#[test]
fn one_connection_serves_many_and_pipelined_requests() {
    require_kvm!();
    let vmm = RunningVmm::start(1);
    let mut c = vmm.client();
    for _ in 0..100 {
        assert_eq!(c.call("GET", "/vmm.ping", None).unwrap().status, 200);
    }
    let one = b"GET /api/v1/vmm.ping HTTP/1.1\r\n\r\n";
    c.send_raw(&one.repeat(10)).unwrap();
    for _ in 0..10 {
        assert_eq!(c.read_answer().unwrap().status, 200);
    }
    // More connections than the cap: the extra ones are told 503, the rest still work.
    drop(c);
    std::thread::sleep(Duration::from_millis(50));
    let held: Vec<ApiClient> = (0..api::server::MAX_CONNECTIONS)
        .map(|_| vmm.client())
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut extra = vmm.client();
    let a = extra.read_answer().unwrap();
    assert_eq!(a.status, 503, "{}", a.text());
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let a = vmm.call("GET", "/vmm.ping", None);
        if a.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "{}", a.text());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn vmm_exit(socket: &Path) -> Output {
    Command::new(VMM)
        .args([
            "--kernel",
            TINY_GUEST_ELF64,
            "--memory",
            "64M",
            "--cmdline",
            "tick=5",
        ])
        .args(["--serial", "off", "--api-socket"])
        .arg(socket)
        .output()
        .expect("cannot run vmm")
}

#[test]
fn a_live_socket_is_refused_and_a_stale_one_replaced() {
    require_kvm!();
    let first = RunningVmm::start(1);
    let out = vmm_exit(&first.socket);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another VMM is serving"), "{err}");
    assert!(err.contains(&format!("pid {}", first.child.id())), "{err}");
    assert_eq!(first.call("GET", "/vmm.ping", None).status, 200);

    // A socket file nobody serves (its VMM died) is replaced.
    let stale = scratch("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let second = RunningVmm::start_at(stale.clone(), 1);
    assert_eq!(second.call("GET", "/vmm.ping", None).status, 200);

    // Something that is not a socket is left alone.
    let file = scratch("not-a-socket");
    std::fs::write(&file, b"keep me").unwrap();
    let out = vmm_exit(&file);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}
