//! `api/openapi.yaml` for tests: a reader for the YAML subset the file keeps to, the routes
//! it lists, and a checker of answers against its schemas.
//!
//! YAML subset: block mappings and sequences by indentation (two spaces), `key: value`,
//! `- item` (scalars or mappings), double-quoted or bare scalars (`true`, `false`, `null`,
//! integers, else strings), whole-line comments. No flow style, anchors or multi-line
//! scalars: the reader refuses what it does not know rather than guess.
//!
//! Schema subset: `$ref` (to `#/...`), `type` (object, array, string, integer, number,
//! boolean), `nullable`, `enum`, `required`, `properties`, `additionalProperties: false`,
//! `items`.

use serde_json::{Map, Value};

/// The path of the API description in the source tree.
pub const OPENAPI_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../api/openapi.yaml");

/// Reads `text` (the YAML subset) into a JSON value.
pub fn parse_yaml(text: &str) -> Result<Value, String> {
    let mut lines: Vec<(usize, String, usize)> = Vec::new();
    for (no, raw) in text.lines().enumerate() {
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if raw.contains('\t') {
            return Err(format!("line {}: tabs are not supported", no + 1));
        }
        lines.push((
            raw.len() - trimmed.len(),
            trimmed.trim_end().to_string(),
            no + 1,
        ));
    }
    let mut i = 0;
    let v = block(&mut lines, &mut i, 0)?;
    if i != lines.len() {
        return Err(format!("line {}: unexpected indentation", lines[i].2));
    }
    Ok(v)
}

fn block(
    lines: &mut [(usize, String, usize)],
    i: &mut usize,
    indent: usize,
) -> Result<Value, String> {
    if *i < lines.len() && lines[*i].1.starts_with("- ") {
        let mut items = Vec::new();
        while *i < lines.len() && lines[*i].0 == indent && lines[*i].1.starts_with("- ") {
            let content = lines[*i].1[2..].trim_start().to_string();
            if split_key(&content)?.is_some() {
                // "- key: value": a mapping whose first line is the rest of this one.
                lines[*i].0 = indent + 2;
                lines[*i].1 = content;
                items.push(block(lines, i, indent + 2)?);
            } else {
                items.push(scalar(&content)?);
                *i += 1;
            }
        }
        return Ok(Value::Array(items));
    }
    let mut map = Map::new();
    while *i < lines.len() && lines[*i].0 == indent && !lines[*i].1.starts_with("- ") {
        let (no, line) = (lines[*i].2, lines[*i].1.clone());
        let (key, rest) =
            split_key(&line)?.ok_or_else(|| format!("line {no}: expected `key: value`"))?;
        *i += 1;
        let value = if !rest.is_empty() {
            scalar(&rest)?
        } else if *i < lines.len()
            && (lines[*i].0 > indent || (lines[*i].0 == indent && lines[*i].1.starts_with("- ")))
        {
            let child = lines[*i].0;
            block(lines, i, child)?
        } else {
            Value::Null
        };
        if map.insert(key.clone(), value).is_some() {
            return Err(format!("line {no}: key {key} given twice"));
        }
    }
    Ok(Value::Object(map))
}

/// `key: rest` or `key:` (rest empty); None when the line is not a mapping entry.
fn split_key(line: &str) -> Result<Option<(String, String)>, String> {
    let (key, after) = if let Some(q) = line.strip_prefix('"') {
        let end = q
            .find('"')
            .ok_or_else(|| format!("unterminated key in {line}"))?;
        (q[..end].to_string(), &q[end + 1..])
    } else {
        match line
            .find(": ")
            .or_else(|| line.ends_with(':').then(|| line.len() - 1))
        {
            Some(p) => (line[..p].to_string(), &line[p..]),
            None => return Ok(None),
        }
    };
    match after.strip_prefix(':') {
        Some(rest) => Ok(Some((key, rest.trim().to_string()))),
        None => Ok(None),
    }
}

fn scalar(s: &str) -> Result<Value, String> {
    if let Some(q) = s.strip_prefix('"') {
        let inner = q
            .strip_suffix('"')
            .ok_or_else(|| format!("unterminated string {s}"))?;
        return serde_json::from_str(&format!("\"{inner}\"")).map_err(|e| format!("{s}: {e}"));
    }
    if s.starts_with(['[', '{', '&', '*', '|', '>', '\'']) {
        return Err(format!("unsupported YAML: {s}"));
    }
    Ok(match s {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        "null" | "~" => Value::Null,
        _ => match s.parse::<i64>() {
            Ok(n) => Value::from(n),
            Err(_) => Value::String(s.to_string()),
        },
    })
}

/// The API description, read.
pub struct OpenApi {
    /// The whole document.
    pub doc: Value,
}

impl OpenApi {
    /// Reads `api/openapi.yaml`.
    pub fn load() -> OpenApi {
        let text = std::fs::read_to_string(OPENAPI_PATH)
            .unwrap_or_else(|e| panic!("cannot read {OPENAPI_PATH}: {e}"));
        let doc = parse_yaml(&text).unwrap_or_else(|e| panic!("{OPENAPI_PATH}: {e}"));
        OpenApi { doc }
    }

    /// Every (METHOD, path) the file lists, paths relative to the server URL.
    pub fn routes(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (path, item) in self.doc["paths"].as_object().into_iter().flatten() {
            for method in item.as_object().into_iter().flatten().map(|(m, _)| m) {
                out.push((method.to_ascii_uppercase(), path.clone()));
            }
        }
        out.sort();
        out
    }

    fn resolve<'a>(&'a self, mut v: &'a Value) -> Result<&'a Value, String> {
        for _ in 0..16 {
            let Some(r) = v.get("$ref").and_then(Value::as_str) else {
                return Ok(v);
            };
            let pointer = r
                .strip_prefix('#')
                .ok_or_else(|| format!("only local $refs are supported: {r}"))?;
            v = self
                .doc
                .pointer(pointer)
                .ok_or_else(|| format!("dangling $ref {r}"))?;
        }
        Err("$ref chain too long".into())
    }

    /// Checks an answer (`status`, `body`) of `METHOD path` against the file: the status
    /// must be listed (or a default), the body must match its schema, or be empty where the
    /// file gives no content.
    pub fn check_answer(
        &self,
        method: &str,
        path: &str,
        status: u16,
        body: &[u8],
    ) -> Result<(), String> {
        let op = self.doc["paths"]
            .get(path)
            .and_then(|p| p.get(method.to_ascii_lowercase()))
            .ok_or_else(|| format!("{method} {path} is not in the API description"))?;
        let responses = &op["responses"];
        let resp = responses
            .get(status.to_string())
            .or_else(|| responses.get("default"))
            .ok_or_else(|| format!("{method} {path}: status {status} is not described"))?;
        let resp = self.resolve(resp)?;
        match resp.pointer("/content/application~1json/schema") {
            None if body.is_empty() => Ok(()),
            None => Err(format!(
                "{method} {path} {status}: the description has no body, the answer has {:?}",
                String::from_utf8_lossy(body)
            )),
            Some(schema) => {
                let v: Value = serde_json::from_slice(body).map_err(|e| {
                    format!(
                        "{method} {path} {status}: body is not JSON ({e}): {:?}",
                        String::from_utf8_lossy(body)
                    )
                })?;
                self.check(schema, &v, "$")
                    .map_err(|e| format!("{method} {path} {status}: {e}"))
            }
        }
    }

    /// Checks `value` against `schema`; `at` names the place in messages.
    pub fn check(&self, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
        let s = self.resolve(schema)?;
        if value.is_null() && s.get("nullable") == Some(&Value::Bool(true)) {
            return Ok(());
        }
        if let Some(options) = s.get("enum").and_then(Value::as_array) {
            if !options.contains(value) {
                return Err(format!("{at}: {value} is not one of {options:?}"));
            }
        }
        let ty = s.get("type").and_then(Value::as_str);
        let ok = match ty {
            None => true,
            Some("object") => value.is_object(),
            Some("array") => value.is_array(),
            Some("string") => value.is_string(),
            Some("integer") => value.is_i64() || value.is_u64(),
            Some("number") => value.is_number(),
            Some("boolean") => value.is_boolean(),
            Some(other) => return Err(format!("{at}: unsupported schema type {other}")),
        };
        if !ok {
            return Err(format!(
                "{at}: {value} is not of type {}",
                ty.unwrap_or("?")
            ));
        }
        if let Some(obj) = value.as_object() {
            let props = s.get("properties").and_then(Value::as_object);
            for req in s
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let name = req.as_str().unwrap_or_default();
                if !obj.contains_key(name) {
                    return Err(format!("{at}: required field {name} is missing"));
                }
            }
            for (k, v) in obj {
                match props.and_then(|p| p.get(k)) {
                    Some(ps) => self.check(ps, v, &format!("{at}.{k}"))?,
                    None if s.get("additionalProperties") == Some(&Value::Bool(false)) => {
                        return Err(format!("{at}: field {k} is not in the schema"));
                    }
                    None => {}
                }
            }
        }
        if let (Some(items), Some(arr)) = (s.get("items"), value.as_array()) {
            for (n, v) in arr.iter().enumerate() {
                self.check(items, v, &format!("{at}[{n}]"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_subset() {
        let v = parse_yaml(
            "a: 1\nb:\n  c: \"x: y\"\n  d:\n    - one\n    - k: true\n      l: null\n\"200\": ok\ne:\n- 2\n",
        )
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a": 1, "b": {"c": "x: y", "d": ["one", {"k": true, "l": null}]}, "200": "ok", "e": [2]})
        );
        assert!(parse_yaml("a: [1, 2]\n").is_err());
        assert!(parse_yaml("a: 1\na: 2\n").is_err());
        assert!(parse_yaml("a:\n  b: 1\n c: 2\n").is_err());
    }

    #[test]
    fn checks_schemas() {
        let api = OpenApi {
            doc: serde_json::json!({"components": {"schemas": {"P": {
                "type": "object", "additionalProperties": false, "required": ["n"],
                "properties": {"n": {"type": "integer"}, "s": {"type": "string", "nullable": true},
                               "e": {"type": "string", "enum": ["A", "B"]},
                               "l": {"type": "array", "items": {"type": "boolean"}}}}}}}),
        };
        let schema = serde_json::json!({"$ref": "#/components/schemas/P"});
        let ok = |v: Value| api.check(&schema, &v, "$");
        assert!(ok(serde_json::json!({"n": 1, "s": null, "e": "A", "l": [true]})).is_ok());
        assert!(ok(serde_json::json!({"s": "x"})).is_err());
        assert!(ok(serde_json::json!({"n": "1"})).is_err());
        assert!(ok(serde_json::json!({"n": 1, "x": 0})).is_err());
        assert!(ok(serde_json::json!({"n": 1, "e": "C"})).is_err());
        assert!(ok(serde_json::json!({"n": 1, "l": [1]})).is_err());
    }
}
