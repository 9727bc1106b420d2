//! Routing: one table of (method, path) and one parse file per resource that takes a body.
//! A request becomes an [`ApiRequest`] or an [`ApiError`] with its status: 404 unknown
//! path, 405 wrong method, 411 a body route without Content-Length, 400 a bad body.
//!
//! This module does not act: the VMM's event loop carries out an [`ApiRequest`].

mod vm_add_device;
mod vm_remove_device;

pub use vm_add_device::VmAddDevice;
pub use vm_remove_device::VmRemoveDevice;

use crate::http::Method;
use crate::response::ApiError;

/// Every route lives under this prefix.
pub const API_PREFIX: &str = "/api/v1";

/// What the API asks of the VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRequest {
    /// `GET /vmm.ping`.
    Ping,
    /// `GET /vm.info`.
    Info,
    /// `PUT /vm.pause`.
    Pause,
    /// `PUT /vm.resume`.
    Resume,
    /// `PUT /vm.shutdown`.
    Shutdown,
    /// `PUT /vm.add-device`.
    AddDevice(VmAddDevice),
    /// `PUT /vm.remove-device`.
    RemoveDevice(VmRemoveDevice),
}

/// Which body a route takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// None (an empty body or none at all).
    Empty,
    /// A JSON object; Content-Length is required.
    Json,
}

/// One route of the API.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// `GET` or `PUT`.
    pub method: &'static str,
    /// The path after [`API_PREFIX`].
    pub path: &'static str,
    /// Its body.
    pub body: BodyKind,
    parse: fn(&[u8]) -> Result<ApiRequest, ApiError>,
}

/// The routes; `api/openapi.yaml` describes exactly these (a test checks both ways).
pub const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        path: "/vmm.ping",
        body: BodyKind::Empty,
        parse: |_| Ok(ApiRequest::Ping),
    },
    Route {
        method: "GET",
        path: "/vm.info",
        body: BodyKind::Empty,
        parse: |_| Ok(ApiRequest::Info),
    },
    Route {
        method: "PUT",
        path: "/vm.pause",
        body: BodyKind::Empty,
        parse: |_| Ok(ApiRequest::Pause),
    },
    Route {
        method: "PUT",
        path: "/vm.resume",
        body: BodyKind::Empty,
        parse: |_| Ok(ApiRequest::Resume),
    },
    Route {
        method: "PUT",
        path: "/vm.shutdown",
        body: BodyKind::Empty,
        parse: |_| Ok(ApiRequest::Shutdown),
    },
    Route {
        method: "PUT",
        path: "/vm.add-device",
        body: BodyKind::Json,
        parse: |b| VmAddDevice::parse(b).map(ApiRequest::AddDevice),
    },
    Route {
        method: "PUT",
        path: "/vm.remove-device",
        body: BodyKind::Json,
        parse: |b| VmRemoveDevice::parse(b).map(ApiRequest::RemoveDevice),
    },
];

/// Routes one request: finds the route by path, then checks the method and the body.
pub fn route(
    method: &Method,
    path: &str,
    content_length: Option<usize>,
    body: &[u8],
) -> Result<ApiRequest, ApiError> {
    let not_found = || {
        ApiError::new(
            404,
            format!("no such route: {path} (the routes are under {API_PREFIX}, e.g. {API_PREFIX}/vmm.ping)"),
        )
    };
    let sub = path.strip_prefix(API_PREFIX).ok_or_else(not_found)?;
    let routes: Vec<&Route> = ROUTES.iter().filter(|r| r.path == sub).collect();
    if routes.is_empty() {
        return Err(not_found());
    }
    let Some(r) = routes.iter().find(|r| r.method == method.as_str()) else {
        let allowed: Vec<&str> = routes.iter().map(|r| r.method).collect();
        return Err(ApiError::new(
            405,
            format!(
                "{path} does not take {}: use {}",
                method.as_str(),
                allowed.join(" or ")
            ),
        ));
    };
    match r.body {
        BodyKind::Empty if !body.is_empty() => Err(ApiError::bad_request(format!(
            "{path} takes no body; send none"
        ))),
        BodyKind::Json if content_length.is_none() => Err(ApiError::new(
            411,
            format!("{path} needs a JSON body with a Content-Length header"),
        )),
        _ => (r.parse)(body),
    }
}

/// Decodes a JSON body into `T`, saying what was wrong on failure (unknown fields, wrong
/// types and missing fields come from serde's messages).
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(
    what: &str,
    body: &[u8],
) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("bad {what} body: {e}")))
}

/// Checks a device id: 1 to 64 characters of letters, digits, `-`, `_` and `.`.
pub(crate) fn check_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "bad device id {id:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(method: &str, path: &str, cl: Option<usize>, body: &[u8]) -> u16 {
        let m = match method {
            "GET" => Method::Get,
            "PUT" => Method::Put,
            o => Method::Other(o.into()),
        };
        route(&m, path, cl, body)
            .map(|_| 200)
            .unwrap_or_else(|e| e.status)
    }

    #[test]
    fn every_route_answers_its_method_only() {
        for r in ROUTES {
            let path = format!("{API_PREFIX}{}", r.path);
            let body: &[u8] = match r.body {
                BodyKind::Empty => b"",
                BodyKind::Json => b"{}",
            };
            let ok = status(r.method, &path, Some(body.len()), body);
            // {} is a bad add/remove body (a field is missing) but the route was found.
            assert!(ok == 200 || ok == 400, "{path}: {ok}");
            let other = if r.method == "GET" { "PUT" } else { "GET" };
            assert_eq!(status(other, &path, Some(0), b""), 405, "{path}");
            assert_eq!(status("DELETE", &path, Some(0), b""), 405, "{path}");
        }
    }

    #[test]
    fn routing_errors() {
        assert_eq!(status("GET", "/vmm.ping", None, b""), 404);
        assert_eq!(status("GET", "/api/v1/vmm.pong", None, b""), 404);
        assert_eq!(status("GET", "/api/v1/vmm.ping?x=1", None, b""), 404);
        assert_eq!(status("GET", "/api/v1/vmm.ping", Some(2), b"{}"), 400);
        assert_eq!(status("PUT", "/api/v1/vm.add-device", None, b""), 411);
        assert_eq!(status("PUT", "/api/v1/vm.pause", None, b""), 200);
    }

    #[test]
    fn ids() {
        assert!(check_id("nic0").is_ok());
        assert!(check_id("a.b-c_d").is_ok());
        for bad in ["", "a b", "x/y", "é", &"a".repeat(65)] {
            assert_eq!(check_id(bad).unwrap_err().status, 400, "{bad}");
        }
    }
}
