//! The hop from the API thread to the VMM's event loop: a channel of requests, one of
//! answers, and an eventfd the event loop watches. The API thread sends one request, wakes
//! the event loop and waits for the answer, so at most one request is in flight.

use std::sync::mpsc::{channel, Receiver, Sender};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::connection::RequestHandler;
use crate::request::ApiRequest;
use crate::response::{ApiError, ApiResult};

/// The API thread's end: a [`RequestHandler`] that forwards to the event loop.
pub struct VmmLink {
    requests: Sender<ApiRequest>,
    answers: Receiver<ApiResult>,
    wake: EventFd,
}

/// The event loop's end.
pub struct ApiInbox {
    requests: Receiver<ApiRequest>,
    answers: Sender<ApiResult>,
    wake: EventFd,
}

/// A connected pair.
pub fn api_channel() -> std::io::Result<(VmmLink, ApiInbox)> {
    let wake = EventFd::new(EFD_NONBLOCK)?;
    let (req_tx, req_rx) = channel();
    let (ans_tx, ans_rx) = channel();
    Ok((
        VmmLink {
            requests: req_tx,
            answers: ans_rx,
            wake: wake.try_clone()?,
        },
        ApiInbox {
            requests: req_rx,
            answers: ans_tx,
            wake,
        },
    ))
}

fn gone() -> ApiError {
    ApiError::new(503, "the VM is shutting down")
}

impl RequestHandler for VmmLink {
    fn handle(&mut self, request: ApiRequest) -> ApiResult {
        self.requests.send(request).map_err(|_| gone())?;
        self.wake
            .write(1)
            .map_err(|e| ApiError::new(500, format!("cannot wake the event loop: {e}")))?;
        self.answers.recv().map_err(|_| gone())?
    }
}

impl ApiInbox {
    /// The eventfd that becomes readable when requests wait.
    pub fn eventfd(&self) -> &EventFd {
        &self.wake
    }

    /// Answers every waiting request with `handle`.
    pub fn serve(&self, mut handle: impl FnMut(ApiRequest) -> ApiResult) {
        // Reset the counter first: a request sent after this read wakes us again.
        let _ = self.wake.read();
        while let Ok(r) = self.requests.try_recv() {
            // The API thread is gone only when the VMM is stopping.
            let _ = self.answers.send(handle(r));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response::ApiReply;

    #[test]
    fn a_request_round_trips_and_a_dropped_inbox_is_503() {
        let (mut link, inbox) = api_channel().unwrap();
        let t = std::thread::spawn(move || {
            let mut served = 0;
            while served < 2 {
                // The event loop calls serve when the eventfd is readable; polling it here
                // does the same.
                inbox.serve(|r| {
                    served += 1;
                    match r {
                        ApiRequest::Ping => Ok(ApiReply::NoContent),
                        _ => Err(ApiError::conflict("no")),
                    }
                });
                std::thread::yield_now();
            }
        });
        assert_eq!(link.handle(ApiRequest::Ping), Ok(ApiReply::NoContent));
        assert_eq!(link.handle(ApiRequest::Pause).unwrap_err().status, 409);
        t.join().unwrap();
        assert_eq!(link.handle(ApiRequest::Ping).unwrap_err().status, 503);
    }
}
