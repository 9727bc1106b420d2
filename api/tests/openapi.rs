//! The router and `api/openapi.yaml` agree both ways: every route the router has is in the
//! file with the same method and body, every route in the file is routed, other methods get
//! 405, and request bodies accept exactly the fields the file describes.

use api::http::Method;
use api::request::{route, BodyKind, API_PREFIX, ROUTES};
use serde_json::{json, Map, Value};
use vmm_tests::openapi::OpenApi;

const METHODS: &[&str] = &["GET", "PUT", "POST", "DELETE", "PATCH", "HEAD"];

fn method(m: &str) -> Method {
    match m {
        "GET" => Method::Get,
        "PUT" => Method::Put,
        o => Method::Other(o.to_string()),
    }
}

#[test]
fn router_and_file_list_the_same_routes() {
    let api = OpenApi::load();
    let file = api.routes();
    let mut router: Vec<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    router.sort();
    assert_eq!(
        router, file,
        "router (left) and api/openapi.yaml (right) differ"
    );
    assert_eq!(
        api.doc["servers"][0]["url"],
        format!("http://localhost{API_PREFIX}")
    );

    // Probe the router itself (not only its table) with every method on every path.
    let paths: Vec<&String> = file.iter().map(|(_, p)| p).collect();
    for path in paths {
        for m in METHODS {
            let listed = file.contains(&(m.to_string(), path.clone()));
            let r = route(&method(m), &format!("{API_PREFIX}{path}"), Some(0), b"");
            let status = r.as_ref().map(|_| 200).unwrap_or_else(|e| e.status);
            if listed {
                assert!(status != 404 && status != 405, "{m} {path}: {status}");
            } else {
                assert_eq!(status, 405, "{m} {path}");
            }
        }
    }
}

/// A value of the schema's type.
fn sample(api: &OpenApi, schema: &Value) -> Value {
    let s = match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => api.doc.pointer(&r[1..]).unwrap(),
        None => schema,
    };
    match s["type"].as_str() {
        Some("string") => json!("/sys/bus/pci/devices/0000:00:03.0"),
        Some("boolean") => json!(true),
        Some("integer") => json!(1),
        other => panic!("no sample for {other:?}"),
    }
}

#[test]
fn request_bodies_match_the_file() {
    let api = OpenApi::load();
    for r in ROUTES {
        let op = &api.doc["paths"][r.path][r.method.to_ascii_lowercase()];
        let body_schema = op.pointer("/requestBody/content/application~1json/schema");
        assert_eq!(
            body_schema.is_some(),
            r.body == BodyKind::Json,
            "{} {}: body in the file vs the router",
            r.method,
            r.path
        );
        let Some(schema) = body_schema else { continue };
        let schema = api
            .doc
            .pointer(&schema["$ref"].as_str().unwrap()[1..])
            .unwrap();
        let props = schema["properties"].as_object().unwrap();
        let required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let path = format!("{API_PREFIX}{}", r.path);
        let send = |body: &Value| {
            let b = serde_json::to_vec(body).unwrap();
            route(&Method::Put, &path, Some(b.len()), &b).map_err(|e| e.status)
        };
        let mut full = Map::new();
        for (k, v) in props {
            // Ids must be ids.
            let value = if k == "id" {
                json!("dev0")
            } else {
                sample(&api, v)
            };
            full.insert(k.clone(), value);
        }
        assert!(
            send(&Value::Object(full.clone())).is_ok(),
            "{path}: every field"
        );
        for k in props.keys() {
            let mut less = full.clone();
            less.remove(k);
            let expect_ok = !required.contains(&k.as_str());
            assert_eq!(
                send(&Value::Object(less)).is_ok(),
                expect_ok,
                "{path} without {k}"
            );
        }
        let mut more = full.clone();
        more.insert("unknown_field".into(), json!(1));
        assert_eq!(
            send(&Value::Object(more)),
            Err(400),
            "{path}: unknown field"
        );
    }
}

#[test]
fn fault_schema_matches_the_error_body() {
    let api = OpenApi::load();
    let e = api::ApiError::new(404, "no such route");
    api.check_answer("GET", "/vmm.ping", 404, &e.body())
        .unwrap();
    assert!(api
        .check_answer("GET", "/vmm.ping", 404, b"{\"message\":\"x\"}")
        .is_err());
    assert!(api.check_answer("PUT", "/vm.pause", 204, b"").is_ok());
    assert!(api.check_answer("PUT", "/vm.pause", 204, b"{}").is_err());
    assert!(api.check_answer("GET", "/vm.nothing", 200, b"").is_err());
}
