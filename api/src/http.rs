//! HTTP/1.1 framing: one request out of a byte buffer (parsed with httparse), one response
//! into bytes. Only what the API needs: `Content-Length` bodies (no chunked encoding),
//! keep-alive, and hard limits on the head and body so a client cannot make the API thread
//! hold more than [`MAX_HEAD`] + [`MAX_BODY`] bytes per connection.
//!
//! This module does not route or look into bodies: that is [`crate::request`].

/// Longest request head (request line and headers) we accept.
pub const MAX_HEAD: usize = 8 * 1024;
/// Largest request body we accept; larger ones get 413.
pub const MAX_BODY: usize = 64 * 1024;
/// Most headers in one request.
pub const MAX_HEADERS: usize = 32;

/// The request methods the API knows; anything else is kept by name for the 405 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// PUT.
    Put,
    /// Any other method.
    Other(String),
}

impl Method {
    fn parse(s: &str) -> Method {
        match s {
            "GET" => Method::Get,
            "PUT" => Method::Put,
            other => Method::Other(other.to_string()),
        }
    }

    /// The method as it appears on the request line.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Other(s) => s,
        }
    }
}

/// One complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// The method.
    pub method: Method,
    /// The request target, as sent.
    pub path: String,
    /// The Content-Length header, if there was one.
    pub content_length: Option<usize>,
    /// The body (empty without Content-Length).
    pub body: Vec<u8>,
    /// Whether the connection stays open after the answer.
    pub keep_alive: bool,
}

/// A request that cannot be framed; the connection is closed after the answer because the
/// start of the next request is unknown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HttpError {
    /// The status to answer with.
    pub status: u16,
    /// Why, for the fault message.
    pub message: String,
}

impl HttpError {
    fn new(status: u16, message: impl Into<String>) -> Self {
        HttpError {
            status,
            message: message.into(),
        }
    }
}

/// Parses one request from the front of `buf`: `Ok(None)` while more bytes are needed,
/// otherwise the request and how many bytes of `buf` it took.
pub fn parse_request(buf: &[u8]) -> Result<Option<(HttpRequest, usize)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Complete(_)) => return Err(head_too_long()),
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(head_too_long()),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::new(
                400,
                format!("too many headers: at most {MAX_HEADERS} are accepted"),
            ))
        }
        Err(e) => return Err(HttpError::new(400, format!("malformed HTTP request: {e}"))),
    };
    // httparse returns Complete only with method, path and version set.
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HttpError::new(400, "malformed HTTP request line"));
    };
    let mut content_length: Option<usize> = None;
    let mut keep_alive = version == 1;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| {
                    HttpError::new(400, "Content-Length is not a non-negative decimal number")
                })?;
            if content_length.is_some_and(|c| c != n) {
                return Err(HttpError::new(400, "two different Content-Length headers"));
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::new(
                411,
                "Transfer-Encoding is not supported: send the body with a Content-Length header",
            ));
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            if v.split(',').any(|t| t.trim() == "close") {
                keep_alive = false;
            } else if v.split(',').any(|t| t.trim() == "keep-alive") {
                keep_alive = true;
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            // A client waiting for 100 Continue would stall; we never send it.
            return Err(HttpError::new(
                417,
                "Expect is not supported: send the body at once",
            ));
        }
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > MAX_BODY {
        return Err(HttpError::new(
            413,
            format!("request body of {body_len} bytes is larger than the limit of {MAX_BODY}"),
        ));
    }
    if buf.len() < head_len + body_len {
        return Ok(None);
    }
    Ok(Some((
        HttpRequest {
            method: Method::parse(method),
            path: path.to_string(),
            content_length,
            body: buf[head_len..head_len + body_len].to_vec(),
            keep_alive,
        },
        head_len + body_len,
    )))
}

fn head_too_long() -> HttpError {
    HttpError::new(
        400,
        format!("request head longer than {MAX_HEAD} bytes or not HTTP"),
    )
}

/// The reason phrase of the status codes the API uses.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Writes a response: a JSON body with its length, or none for 204 (which must not carry
/// Content-Length).
pub fn write_response(out: &mut Vec<u8>, status: u16, body: Option<&[u8]>, close: bool) {
    use std::io::Write;
    // Writes into a Vec cannot fail.
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", reason(status));
    if let Some(b) = body {
        let _ = write!(
            out,
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        );
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if let Some(b) = body {
        out.extend_from_slice(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> HttpRequest {
        let (r, used) = parse_request(buf).unwrap().unwrap();
        assert_eq!(used, buf.len());
        r
    }

    #[test]
    fn parses_get_and_put_with_body() {
        let r = complete(b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path, "/api/v1/vmm.ping");
        assert_eq!(r.content_length, None);
        assert!(r.keep_alive);
        let r =
            complete(b"PUT /a HTTP/1.1\r\nContent-Length: 4\r\nConnection: close\r\n\r\n{\"\"}");
        assert_eq!(r.body, b"{\"\"}");
        assert_eq!(r.content_length, Some(4));
        assert!(!r.keep_alive);
        let r = complete(b"GET /a HTTP/1.0\r\n\r\n");
        assert!(!r.keep_alive);
    }

    #[test]
    fn waits_for_the_whole_head_and_body() {
        assert_eq!(parse_request(b"GET /a HTTP/1.1\r\n").unwrap(), None);
        assert_eq!(
            parse_request(b"PUT /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nabc").unwrap(),
            None
        );
        // Pipelined: only the first request is taken.
        let two = b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
        let (r, used) = parse_request(two).unwrap().unwrap();
        assert_eq!(r.path, "/a");
        assert_eq!(&two[used..], b"GET /b HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn limits_and_framing_errors() {
        let status = |b: &[u8]| parse_request(b).unwrap_err().status;
        assert_eq!(status(b"GET\x01 / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(
            status(b"PUT /a HTTP/1.1\r\nContent-Length: 70000\r\n\r\n"),
            413
        );
        assert_eq!(
            status(b"PUT /a HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            400
        );
        assert_eq!(
            status(b"PUT /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            400
        );
        assert_eq!(
            status(b"PUT /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            411
        );
        assert_eq!(status(&[b'A'; MAX_HEAD + 1]), 400);
        let many: String = (0..40).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(
            status(format!("GET /a HTTP/1.1\r\n{many}\r\n").as_bytes()),
            400
        );
    }

    #[test]
    fn responses_carry_length_except_204() {
        let mut out = Vec::new();
        write_response(&mut out, 200, Some(b"{}"), false);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        );
        out.clear();
        write_response(&mut out, 204, None, true);
        assert_eq!(out, b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
    }
}
