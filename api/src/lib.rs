//! The VMM's HTTP API: HTTP/1.1 on a Unix socket, served by one thread, routes named like
//! Cloud Hypervisor's under `/api/v1`, errors as `{"fault_message": "..."}` as Firecracker
//! does. `api/openapi.yaml` describes every route and body.
//!
//! Read top-down: [`server`] owns the socket and the poll loop, [`connection`] turns bytes
//! into answers, [`http`] frames requests, [`request`] routes them and parses bodies (one
//! file per resource), [`response`] holds the answer types, [`channel`] carries requests to
//! the VMM's event loop, [`client`] is the other side (for `vmm-remote` and tests).
//!
//! This crate does not know the VM: the `vmm` crate carries out an
//! [`request::ApiRequest`] (vmm/src/control.rs).
#![deny(missing_docs)]

pub mod channel;
pub mod client;
pub mod connection;
pub mod http;
pub mod request;
pub mod response;
pub mod server;

pub use channel::{api_channel, ApiInbox, VmmLink};
pub use connection::RequestHandler;
pub use request::ApiRequest;
pub use response::{ApiError, ApiReply, ApiResult};
pub use server::{ApiServer, ApiServerError, ApiThread};
