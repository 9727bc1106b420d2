//! One client connection: bytes in, requests framed and routed, answers out. No I/O here
//! beyond what the caller hands in, so the whole request path runs in-process in tests.

use crate::http::{parse_request, write_response};
use crate::request::{route, ApiRequest};
use crate::response::{ApiError, ApiReply, ApiResult};

/// Carries out routed requests: the VMM's event loop (through [`crate::channel`]) or a test.
pub trait RequestHandler {
    /// Answers one request.
    fn handle(&mut self, request: ApiRequest) -> ApiResult;
}

/// Answers every complete request at the front of `input` (removing it) into `output`.
/// Returns true when the connection must close after `output` is sent: the client asked for
/// it, or a request could not be framed (the next one's start is unknown).
pub fn serve_buffer(
    input: &mut Vec<u8>,
    output: &mut Vec<u8>,
    handler: &mut dyn RequestHandler,
) -> bool {
    loop {
        match parse_request(input) {
            Ok(None) => return false,
            Ok(Some((req, used))) => {
                input.drain(..used);
                let result = route(&req.method, &req.path, req.content_length, &req.body)
                    .and_then(|r| handler.handle(r));
                write_result(output, &result, !req.keep_alive);
                if !req.keep_alive {
                    input.clear();
                    return true;
                }
            }
            Err(e) => {
                input.clear();
                write_result(output, &Err(ApiError::new(e.status, e.message)), true);
                return true;
            }
        }
    }
}

/// Writes a handler's result as an HTTP response.
pub fn write_result(output: &mut Vec<u8>, result: &ApiResult, close: bool) {
    match result {
        Ok(ApiReply::NoContent) => write_response(output, 204, None, close),
        Ok(ApiReply::Json(body)) => write_response(output, 200, Some(body), close),
        Err(e) => write_response(output, e.status, Some(&e.body()), close),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl RequestHandler for Echo {
        fn handle(&mut self, request: ApiRequest) -> ApiResult {
            match request {
                ApiRequest::Ping => ApiReply::json(&"pong"),
                ApiRequest::Pause => Err(ApiError::conflict("already paused")),
                _ => Ok(ApiReply::NoContent),
            }
        }
    }

    #[test]
    fn pipelined_requests_are_answered_in_order() {
        let mut input = b"GET /api/v1/vmm.ping HTTP/1.1\r\n\r\nPUT /api/v1/vm.pause HTTP/1.1\r\n\r\nPUT /api/v1/vm.resume HTTP/1.1\r\nContent-Length: 0\r\n\r\nGET /api/v1/vm".to_vec();
        let mut out = Vec::new();
        assert!(!serve_buffer(&mut input, &mut out, &mut Echo));
        let text = String::from_utf8(out).unwrap();
        let statuses: Vec<&str> = text
            .match_indices("HTTP/1.1 ")
            .map(|(i, _)| &text[i + 9..i + 12])
            .collect();
        assert_eq!(statuses, ["200", "409", "204"], "{text}");
        assert!(text.contains("\"pong\""));
        assert!(text.contains(r#"{"fault_message":"already paused"}"#));
        // The partial request stays for the next read.
        assert_eq!(input, b"GET /api/v1/vm");
    }

    #[test]
    fn a_framing_error_closes_after_the_fault() {
        let mut input =
            b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\nGET /api/v1/vmm.ping HTTP/1.1\r\n\r\n"
                .to_vec();
        let mut out = Vec::new();
        assert!(serve_buffer(&mut input, &mut out, &mut Echo));
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
        assert!(text.contains("Connection: close"), "{text}");
        assert!(text.contains("fault_message"), "{text}");
        assert_eq!(text.matches("HTTP/1.1").count(), 1);
    }
}
