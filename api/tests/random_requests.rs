//! A million generated requests through the whole in-process request path (framing,
//! routing, bodies, answers): no panic, every answer a well-formed HTTP response, every
//! error a fault with a message, and answers to described routes match api/openapi.yaml.

use api::connection::{serve_buffer, RequestHandler};
use api::request::ApiRequest;
use api::response::{
    ApiReply, ApiResult, CoverageInfo, DeviceAdded, MemoryMapInfo, VmConfigInfo, VmInfo, VmState,
    VmmPing,
};
use api::ApiError;
use vmm_tests::openapi::OpenApi;

/// xorshift64*: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

/// Answers like a VMM would, with every kind of answer.
struct FakeVmm(u64);

impl RequestHandler for FakeVmm {
    fn handle(&mut self, request: ApiRequest) -> ApiResult {
        self.0 += 1;
        match request {
            ApiRequest::Ping => ApiReply::json(&VmmPing {
                version: "0".into(),
                pid: 1,
                features: vec![],
            }),
            ApiRequest::Info => ApiReply::json(&VmInfo {
                state: VmState::Running,
                config: VmConfigInfo {
                    kernel: "k".into(),
                    initrd: None,
                    cmdline: String::new(),
                    memory: 1 << 26,
                    vcpus: 1,
                    memory_backend: "anonymous".into(),
                    hugepages: false,
                    disks: vec![],
                    rng: false,
                    hotplug_slots: 0,
                },
                devices: vec![],
                memory_map: MemoryMapInfo {
                    page_size: 4096,
                    regions: vec![],
                    excluded: vec![],
                    coverage: CoverageInfo {
                        total: 0,
                        bytes_2m: 0,
                        bytes_1g: 0,
                    },
                },
            }),
            ApiRequest::AddDevice(d) => ApiReply::json(&DeviceAdded {
                id: d.id.unwrap_or_else(|| "dev0".into()),
                bdf: "01:00.0".into(),
            }),
            ApiRequest::Pause if self.0.is_multiple_of(2) => {
                Err(ApiError::conflict("already paused"))
            }
            _ => Ok(ApiReply::NoContent),
        }
    }
}

const METHODS: &[&str] = &["GET", "PUT", "POST", "DELETE", "G\0T", "", "PUT PUT", "get"];
const PATHS: &[&str] = &[
    "/api/v1/vmm.ping",
    "/api/v1/vm.info",
    "/api/v1/vm.pause",
    "/api/v1/vm.resume",
    "/api/v1/vm.add-device",
    "/api/v1/vm.remove-device",
    "/api/v1/",
    "/",
    "*",
    "/api/v1/vm.add-device/../vmm.ping",
    "/api/v1/vmm.ping?x=%00",
    "/api/v2/vm.info",
    "",
];
const VERSIONS: &[&str] = &[
    "HTTP/1.1",
    "HTTP/1.0",
    "HTTP/2.0",
    "HTTP/1.1 x",
    "http/1.1",
    "",
];
const BODIES: &[&str] = &[
    "",
    "{}",
    "{\"path\": \"/sys/bus/pci/devices/0000:00:03.0\"}",
    "{\"path\": \"/sys/x\", \"id\": \"nic\", \"iommu\": true}",
    "{\"id\": \"nic\"}",
    "{\"id\": 7}",
    "{\"path\": \"/x\", \"iommu\": \"on\"}",
    "{\"path\": \"/x\", \"bogus\": 1}",
    "[",
    "null",
    "{\"id\": \"\\ud800\"}",
    "{\"path\": \"/x\", \"id\": \"a\\u0000b\"}",
    "\u{ff}\u{fe}",
];
const HEADERS: &[&str] = &[
    "Host: localhost",
    "Connection: close",
    "Connection: keep-alive",
    "Content-Type: application/json",
    "Transfer-Encoding: chunked",
    "Expect: 100-continue",
    "Content-Length: 99999999999999999999999",
    "Content-Length: 70000",
    "Content-Length: -3",
    "Bad Header",
    "X: \u{1}",
];

fn generate(rng: &mut Rng, out: &mut Vec<u8>) {
    let body = rng.pick(BODIES).as_bytes().to_vec();
    // Mostly well-formed request lines, so the routes and bodies get exercised too.
    let method = if rng.below(4) == 0 {
        rng.pick(METHODS)
    } else {
        rng.pick(&METHODS[..2])
    };
    let version = if rng.below(4) == 0 {
        rng.pick(VERSIONS)
    } else {
        VERSIONS[0]
    };
    let mut req = format!("{method} {} {version}\r\n", rng.pick(PATHS)).into_bytes();
    for _ in 0..rng.below(4).saturating_sub(1) {
        req.extend_from_slice(rng.pick(HEADERS).as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    // Usually a right Content-Length, sometimes a wrong one or none.
    match rng.below(4) {
        0 => {}
        1 => req.extend_from_slice(format!("Content-Length: {}\r\n", rng.below(40)).as_bytes()),
        _ => req.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes()),
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(&body);
    // Mutate a few bytes of one request in eight.
    if rng.below(8) == 0 {
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(req.len());
            req[i] = rng.next() as u8;
        }
    }
    // Cut one in sixteen short.
    if rng.below(16) == 0 {
        let keep = rng.below(req.len() + 1);
        req.truncate(keep);
    }
    out.extend_from_slice(&req);
}

/// Splits the answers in `out`, checking each is framed and carries a fault on errors.
fn answers(out: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut res = Vec::new();
    let mut rest = out;
    while !rest.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Response::new(&mut headers);
        let head = match r.parse(rest) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!("bad answer {other:?}: {:?}", String::from_utf8_lossy(rest)),
        };
        let len = r
            .headers
            .iter()
            .find(|h| h.name == "Content-Length")
            .map(|h| {
                std::str::from_utf8(h.value)
                    .unwrap()
                    .parse::<usize>()
                    .unwrap()
            })
            .unwrap_or(0);
        let status = r.code.unwrap();
        res.push((status, rest[head..head + len].to_vec()));
        rest = &rest[head + len..];
    }
    res
}

#[test]
fn a_million_random_requests_never_panic() {
    const N: usize = 1_000_000;
    const CHECKED: usize = 20_000;
    let api = OpenApi::load();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut vmm = FakeVmm(0);
    let mut counts = std::collections::BTreeMap::new();
    let mut input = Vec::new();
    let mut out = Vec::new();
    for n in 0..N {
        input.clear();
        out.clear();
        generate(&mut rng, &mut input);
        let sent = String::from_utf8_lossy(&input).into_owned();
        let sent_len = input.len();
        let closed = serve_buffer(&mut input, &mut out, &mut vmm);
        let got = answers(&out);
        for (status, body) in &got {
            *counts.entry(*status).or_insert(0u64) += 1;
            if *status >= 400 {
                let f: api::response::Fault = serde_json::from_slice(body).unwrap_or_else(|e| {
                    panic!("{e}: {sent:?} -> {:?}", String::from_utf8_lossy(body))
                });
                assert!(!f.fault_message.is_empty());
            }
        }
        // A request with no answer must be incomplete: kept whole, waiting for more.
        if got.is_empty() {
            assert!(!closed && input.len() == sent_len, "{sent:?}");
        }
        // The first answers to described routes are checked against the file.
        if n < CHECKED && got.len() == 1 {
            let first = sent.split("\r\n").next().unwrap_or("");
            let mut words = first.split(' ');
            let (m, p) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            if let Some(route) = p.strip_prefix("/api/v1") {
                if api.routes().contains(&(m.to_string(), route.to_string())) {
                    let (status, body) = &got[0];
                    api.check_answer(m, route, *status, body)
                        .unwrap_or_else(|e| panic!("{e}\nrequest: {sent:?}"));
                }
            }
        }
    }
    eprintln!("status counts over {N} requests: {counts:?}");
    for status in [200, 204, 400, 404, 405, 409, 411, 413] {
        assert!(counts.contains_key(&status), "no {status} seen: {counts:?}");
    }
}
