//! API request rate: `GET /vmm.ping` and `GET /vm.info` against the real `vmm` running the
//! tiny guest, over one keep-alive connection and with a new connection per request. Each
//! request goes the whole way: socket, API thread, channel and eventfd, the event loop's
//! answer, back.
//!
//! Run: `cargo bench -p vmm --bench api_rate`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use api::client::ApiClient;
use vmm_tests::{kvm_available, scratch};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");

#[cfg(target_arch = "x86_64")]
const GUEST: &str = vmm_tests::TINY_GUEST_ELF64;
#[cfg(not(target_arch = "x86_64"))]
const GUEST: &str = "";

fn rate(n: usize, mut one: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        one();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    if !cfg!(target_arch = "x86_64") || !kvm_available() {
        println!("api_rate: SKIPPED (needs x86_64 and a usable /dev/kvm for the tiny guest)");
        return;
    }
    let socket = scratch("rate.sock");
    let mut child = Command::new(VMM)
        .args([
            "--kernel",
            GUEST,
            "--memory",
            "64M",
            "--cmdline",
            "tick=1000",
        ])
        .args(["--serial", "off", "--api-socket"])
        .arg(&socket)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cannot run vmm");
    let deadline = Instant::now() + Duration::from_secs(20);
    while ApiClient::connect(&socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "the VMM did not serve its socket"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let ok = |status: u16| assert_eq!(status, 200);

    // Rounds alternate the four measurements, so load from other work on the host spreads
    // over all of them; the median and the best round are printed.
    const ROUNDS: usize = 7;
    let mut c = ApiClient::connect(&socket).unwrap();
    rate(2_000, || {
        ok(c.call("GET", "/vmm.ping", None).unwrap().status)
    });
    let cases = [
        ("/vmm.ping", false, 10_000),
        ("/vm.info", false, 5_000),
        ("/vmm.ping", true, 3_000),
        ("/vm.info", true, 2_000),
    ];
    let mut rates = vec![Vec::new(); cases.len()];
    for _ in 0..ROUNDS {
        for (i, &(route, fresh, n)) in cases.iter().enumerate() {
            let r = if fresh {
                rate(n, || {
                    let mut c = ApiClient::connect(&socket).unwrap();
                    ok(c.call("GET", route, None).unwrap().status)
                })
            } else {
                rate(n, || ok(c.call("GET", route, None).unwrap().status))
            };
            rates[i].push(r);
        }
    }
    for ((route, fresh, n), mut r) in cases.into_iter().zip(rates) {
        r.sort_by(f64::total_cmp);
        let how = if fresh {
            "new connection per request"
        } else {
            "one connection"
        };
        println!(
            "api_rate: GET {route:<10} {how:<27} median {:>7.0} requests/s, best {:>7.0} ({ROUNDS} rounds of {n})",
            r[ROUNDS / 2],
            r[ROUNDS - 1]
        );
    }
    assert_eq!(c.call("PUT", "/vm.shutdown", None).unwrap().status, 204);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}
