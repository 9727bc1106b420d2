//! The HTTP/JSON API's request path as the API thread runs it: bytes arrive on a connection
//! in pieces, `api::connection::serve_buffer` frames them with httparse, routes and parses
//! each request's JSON body, hands it to the handler (here a stand-in for the VMM that
//! answers every kind of request, errors included) and writes the answers.
//!
//! Input: the first byte gives the size of the pieces the bytes arrive in (1..=256); the rest
//! is the byte stream of the connection.
//!
//! Checked: no panic; every answer is a well-formed HTTP/1.1 response with a known status,
//! an error's body is JSON with a `fault_message`; the connection's buffered input never
//! holds more than a request head and body can be, and no more answers come than requests
//! could fit in the bytes.

use api::connection::{serve_buffer, RequestHandler};
use api::http::{MAX_BODY, MAX_HEAD};
use api::{ApiError, ApiReply, ApiRequest, ApiResult};

use crate::Input;

/// Answers like the VMM would, cycling through success and each error kind.
struct Vmm {
    n: usize,
}

impl RequestHandler for Vmm {
    fn handle(&mut self, request: ApiRequest) -> ApiResult {
        self.n += 1;
        if self.n.is_multiple_of(5) {
            return Err(ApiError::new(409, "conflict \"quoted\" \\ and\nnewline"));
        }
        match request {
            ApiRequest::Ping | ApiRequest::Info => Ok(ApiReply::Json(br#"{"ok":true}"#.to_vec())),
            ApiRequest::AddDevice(_) => {
                Ok(ApiReply::Json(br#"{"id":"x","bdf":"01:00.0"}"#.to_vec()))
            }
            ApiRequest::RemoveDevice(_) if self.n.is_multiple_of(3) => {
                Err(ApiError::new(404, "no device"))
            }
            _ => Ok(ApiReply::NoContent),
        }
    }
}

/// Statuses the API may answer with.
const STATUSES: &[u16] = &[200, 204, 400, 404, 405, 409, 411, 413, 500, 503];

/// Checks `out` is a sequence of well-formed responses; returns how many.
fn check_responses(mut out: &[u8]) -> usize {
    let mut n = 0;
    while !out.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let head = match resp.parse(out) {
            Ok(httparse::Status::Complete(len)) => len,
            other => panic!(
                "not a complete HTTP response: {other:?}: {:?}",
                String::from_utf8_lossy(out)
            ),
        };
        let status = resp.code.expect("a status code");
        assert!(STATUSES.contains(&status), "unexpected status {status}");
        let len: usize = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| {
                std::str::from_utf8(h.value)
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap()
            })
            .unwrap_or(0);
        let body = &out[head..head + len];
        if status >= 400 {
            let v: serde_json::Value = serde_json::from_slice(body).expect("an error body is JSON");
            assert!(v["fault_message"].is_string(), "no fault_message: {v}");
        }
        out = &out[head + len..];
        n += 1;
    }
    n
}

/// The fuzz target.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let piece = usize::from(input.u8()) + 1;
    let stream = input.rest();
    let mut vmm = Vmm { n: 0 };
    let mut buffered = Vec::new();
    let mut out = Vec::new();
    for chunk in stream.chunks(piece) {
        buffered.extend_from_slice(chunk);
        let close = serve_buffer(&mut buffered, &mut out, &mut vmm);
        // The server reads at most a head and a body ahead before it answers or refuses.
        assert!(
            buffered.len() <= MAX_HEAD + MAX_BODY + piece,
            "{} bytes buffered",
            buffered.len()
        );
        if close {
            break;
        }
    }
    let answers = check_responses(&out);
    // Every answer is for a request of at least a request line's worth of bytes.
    assert!(
        answers <= stream.len() / 14 + 1,
        "{answers} answers to {} bytes",
        stream.len()
    );
}
