//! A blocking API client over one connection: what `vmm-remote`, the tests and the rate
//! benchmark use.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Errors talking to the API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to the API socket {0}: {1}; is the VMM running with --api-socket?")]
    Connect(String, std::io::Error),
    /// Sending or receiving failed.
    #[error("API connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The answer is not HTTP we understand.
    #[error("bad answer from the API: {0}")]
    BadResponse(String),
}

/// An answer: the status and the body (empty for 204).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One connection to the API.
pub struct ApiClient {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl ApiClient {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<ApiClient, ClientError> {
        let stream = UnixStream::connect(path)
            .map_err(|e| ClientError::Connect(path.display().to_string(), e))?;
        Ok(ApiClient {
            stream,
            buf: Vec::new(),
        })
    }

    /// Sends `method` on `/api/v1{route}` with an optional JSON body and reads the answer.
    pub fn call(
        &mut self,
        method: &str,
        route: &str,
        body: Option<&[u8]>,
    ) -> Result<Answer, ClientError> {
        let mut req = format!("{method} /api/v1{route} HTTP/1.1\r\nHost: localhost\r\n");
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body.unwrap_or_default());
        self.send_raw(&bytes)?;
        self.read_answer()
    }

    /// Sends raw bytes (for tests of malformed requests).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Reads one answer.
    pub fn read_answer(&mut self) -> Result<Answer, ClientError> {
        let mut chunk = [0u8; 16 * 1024];
        let mut eof = false;
        loop {
            if let Some((answer, used)) = parse_answer(&self.buf, eof)? {
                self.buf.drain(..used);
                return Ok(answer);
            }
            if eof {
                return Err(ClientError::BadResponse(
                    "the connection closed before a full answer".into(),
                ));
            }
            let n = self.stream.read(&mut chunk)?;
            eof = n == 0;
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// One answer from the front of `buf`, if complete. Without Content-Length the body runs to
/// the end of the connection (`eof`).
fn parse_answer(buf: &[u8], eof: bool) -> Result<Option<(Answer, usize)>, ClientError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ClientError::BadResponse(e.to_string())),
    };
    let status = resp.code.unwrap_or(0);
    let length = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| {
            std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| ClientError::BadResponse("bad Content-Length".into()))
        })
        .transpose()?;
    let length = match length {
        Some(n) => n,
        None if status == 204 || status == 304 || status < 200 => 0,
        None if eof => buf.len() - head,
        None => return Ok(None),
    };
    if buf.len() < head + length {
        return Ok(None);
    }
    Ok(Some((
        Answer {
            status,
            body: buf[head..head + length].to_vec(),
        },
        head + length,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_with_and_without_length() {
        let two = b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        let (a, used) = parse_answer(two, false).unwrap().unwrap();
        assert_eq!((a.status, a.body.len()), (204, 0));
        let (b, _) = parse_answer(&two[used..], false).unwrap().unwrap();
        assert_eq!((b.status, b.text().as_str()), (200, "{}"));
        assert_eq!(
            parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}", false).unwrap(),
            None
        );
        assert!(parse_answer(b"garbage\r\n\r\n", false).is_err());
    }
}
