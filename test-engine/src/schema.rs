//! A JSON value generator driven by a JSON schema (for `response_format: json_schema` and tool arguments),
//! plus the Python-`json.dumps`-style writer used for generated JSON text.

use serde_json::{Map, Value};

use crate::gen::{bare_word, SplitMix64, WORDS};

/// Below this depth optional parts are left out (null branches, only required properties, minItems),
/// so recursive Pydantic models terminate.
const SOFT_DEPTH: usize = 6;
/// Hard limits: a schema beyond them is rejected rather than exhausting the stack or memory.
const MAX_DEPTH: usize = 64;
const MAX_NODES: usize = 20_000;
const MAX_ITEMS: u64 = 64;
const MAX_STRING: u64 = 4_096;

/// Generate a value that validates against `schema` (within the supported subset).
pub fn generate(schema: &Value, rng: &mut SplitMix64) -> Result<Value, String> {
    let mut g = Gen {
        root: schema,
        rng,
        nodes: 0,
    };
    g.value(schema, 0)
}

/// Serialise like Python's `json.dumps` (`", "` and `": "`), so generated JSON has countable words.
pub fn to_spaced_json(v: &Value) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, Spaced);
    if serde::Serialize::serialize(v, &mut ser).is_err() {
        return "null".into();
    }
    String::from_utf8(out).unwrap_or_else(|_| "null".into())
}

struct Spaced;

impl serde_json::ser::Formatter for Spaced {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

struct Gen<'a, 'r> {
    root: &'a Value,
    rng: &'r mut SplitMix64,
    nodes: usize,
}

fn is_null_schema(s: &Value) -> bool {
    s.get("type").and_then(Value::as_str) == Some("null")
}

impl<'a> Gen<'a, '_> {
    fn value(&mut self, schema: &Value, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err("schema is too deep for the test engine".into());
        }
        self.charge(1)?;
        let obj = match schema {
            Value::Bool(true) => return Ok(Value::String(self.word().into())),
            Value::Object(o) => o,
            _ => return Ok(Value::Null), // `false` or junk: nothing valid exists, null is as good as anything
        };
        if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
            let target = self.resolve(r)?;
            return self.value(target, depth + 1);
        }
        if let Some(c) = obj.get("const") {
            self.charge(weight(c, MAX_NODES + 1))?;
            return Ok(c.clone());
        }
        if let Some(Value::Array(e)) = obj.get("enum") {
            if let Some(v) = e.get(self.rng.below(e.len() as u64) as usize) {
                self.charge(weight(v, MAX_NODES + 1))?;
                return Ok(v.clone());
            }
        }
        if let Some(Value::Array(all)) = obj.get("allOf") {
            let merged = self.merge_all_of(obj, all, depth)?;
            // Merging cloned the parts: charge them to the budget.
            self.charge(weight(&merged, MAX_NODES + 1))?;
            return self.value(&merged, depth + 1);
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(Value::Array(branches)) = obj.get(key) {
                if let Some(b) = self.pick_branch(branches, depth) {
                    return self.value(b, depth + 1);
                }
            }
        }
        let ty = self.pick_type(obj, depth);
        match ty {
            "object" => self.object(obj, depth),
            "array" => self.array(obj, depth),
            "string" => Ok(Value::String(self.string(obj))),
            "integer" => Ok(self.integer(obj)),
            "number" => Ok(self.number(obj)),
            "boolean" => Ok(Value::Bool(self.rng.below(2) == 1)),
            "null" => Ok(Value::Null),
            _ => Ok(Value::String(self.word().into())),
        }
    }

    /// Count work against the budget, so no schema can make the output (or the time) explode.
    fn charge(&mut self, n: usize) -> Result<(), String> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            Err("schema produces too large a value for the test engine".into())
        } else {
            Ok(())
        }
    }

    fn resolve(&self, r: &str) -> Result<&'a Value, String> {
        let pointer = r
            .strip_prefix('#')
            .ok_or_else(|| format!("unsupported $ref {r:?}: only local refs"))?;
        self.root
            .pointer(pointer)
            .ok_or_else(|| format!("unresolvable $ref {r:?}"))
    }

    fn merge_all_of(
        &self,
        obj: &Map<String, Value>,
        all: &[Value],
        depth: usize,
    ) -> Result<Value, String> {
        let mut merged = Map::new();
        let mut props = Map::new();
        let mut required: Vec<Value> = Vec::new();
        let mut parts: Vec<&Value> = Vec::with_capacity(all.len() + 1);
        let mut base = obj.clone();
        base.remove("allOf");
        let base = Value::Object(base);
        parts.push(&base);
        for s in all {
            let mut s = s;
            let mut hops = 0;
            while let Some(r) = s.get("$ref").and_then(Value::as_str) {
                s = self.resolve(r)?;
                hops += 1;
                if hops > MAX_DEPTH || depth + hops > MAX_DEPTH {
                    return Err("$ref cycle in allOf".into());
                }
            }
            parts.push(s);
        }
        for p in parts {
            let Some(o) = p.as_object() else { continue };
            for (k, v) in o {
                match k.as_str() {
                    "properties" => {
                        if let Some(po) = v.as_object() {
                            for (pk, pv) in po {
                                props.insert(pk.clone(), pv.clone());
                            }
                        }
                    }
                    "required" => {
                        if let Some(a) = v.as_array() {
                            required.extend(a.iter().cloned());
                        }
                    }
                    "allOf" => {}
                    _ => {
                        merged.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        if !props.is_empty() {
            merged.insert("properties".into(), Value::Object(props));
            merged
                .entry("type")
                .or_insert_with(|| Value::String("object".into()));
        }
        if !required.is_empty() {
            merged.insert("required".into(), Value::Array(required));
        }
        Ok(Value::Object(merged))
    }

    fn pick_branch<'s>(&self, branches: &'s [Value], depth: usize) -> Option<&'s Value> {
        if depth >= SOFT_DEPTH {
            if let Some(n) = branches.iter().find(|b| is_null_schema(b)) {
                return Some(n);
            }
        }
        branches
            .iter()
            .find(|b| !is_null_schema(b))
            .or_else(|| branches.first())
    }

    fn pick_type(&self, obj: &Map<String, Value>, depth: usize) -> &'static str {
        match obj.get("type") {
            Some(Value::String(t)) => type_name(t),
            Some(Value::Array(ts)) => {
                let names: Vec<&str> = ts.iter().filter_map(Value::as_str).collect();
                if depth >= SOFT_DEPTH && names.contains(&"null") {
                    return "null";
                }
                names
                    .iter()
                    .find(|t| **t != "null")
                    .or(names.first())
                    .map_or("any", |t| type_name(t))
            }
            _ if obj.contains_key("properties") || obj.contains_key("required") => "object",
            _ if obj.contains_key("items") || obj.contains_key("prefixItems") => "array",
            _ => "any",
        }
    }

    fn object(&mut self, obj: &Map<String, Value>, depth: usize) -> Result<Value, String> {
        let required: Vec<&str> = obj
            .get("required")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut out = Map::new();
        if let Some(Value::Object(props)) = obj.get("properties") {
            for (k, s) in props {
                if depth >= SOFT_DEPTH && !required.contains(&k.as_str()) {
                    continue;
                }
                let v = self.value(s, depth + 1)?;
                out.insert(k.clone(), v);
            }
        }
        for r in required {
            if !out.contains_key(r) {
                self.charge(1)?;
                out.insert(r.to_string(), Value::String(self.word().into()));
            }
        }
        Ok(Value::Object(out))
    }

    fn array(&mut self, obj: &Map<String, Value>, depth: usize) -> Result<Value, String> {
        let min = obj
            .get("minItems")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .min(MAX_ITEMS);
        let max = obj
            .get("maxItems")
            .and_then(Value::as_u64)
            .unwrap_or(u64::MAX);
        let wanted = if depth >= SOFT_DEPTH { min } else { min.max(1) };
        let count = wanted.min(max).max(min) as usize;
        let prefix = obj.get("prefixItems").and_then(Value::as_array);
        let items = obj.get("items");
        let mut out = Vec::with_capacity(count);
        for i in 0..count {
            let s = match (prefix.and_then(|p| p.get(i)), items) {
                (Some(p), _) => p,
                (None, Some(it @ (Value::Object(_) | Value::Bool(_)))) => it,
                (None, Some(Value::Array(tuple))) => tuple.get(i).unwrap_or(&Value::Bool(true)),
                _ => &Value::Bool(true),
            };
            out.push(self.value(s, depth + 1)?);
        }
        Ok(Value::Array(out))
    }

    fn word(&mut self) -> &'static str {
        bare_word(self.rng.below(WORDS.len() as u64) as usize)
    }

    fn string(&mut self, obj: &Map<String, Value>) -> String {
        let mut s = match obj.get("format").and_then(Value::as_str) {
            Some("date-time") => format!(
                "2024-0{}-1{}T12:34:56Z",
                1 + self.rng.below(9),
                self.rng.below(10)
            ),
            Some("date") => format!("2024-0{}-1{}", 1 + self.rng.below(9), self.rng.below(10)),
            Some("time") => format!("12:3{}:56Z", self.rng.below(10)),
            Some("email") => format!("{}@example.com", self.word()),
            Some("uri" | "url" | "uri-reference" | "iri") => {
                format!("https://example.com/{}", self.word())
            }
            Some("hostname") => format!("{}.example.com", self.word()),
            Some("ipv4") => format!("192.0.2.{}", 1 + self.rng.below(254)),
            Some("ipv6") => "2001:db8::1".to_string(),
            Some("uuid") => self.uuid(),
            _ => self.word().to_string(),
        };
        let min = obj
            .get("minLength")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .min(MAX_STRING) as usize;
        while s.chars().count() < min {
            s.push(' ');
            s.push_str(self.word());
        }
        if let Some(max) = obj.get("maxLength").and_then(Value::as_u64) {
            let max = usize::try_from(max).unwrap_or(usize::MAX).max(min);
            if let Some((i, _)) = s.char_indices().nth(max) {
                s.truncate(i);
            }
        }
        // Long strings count against the node budget, bounding the generated text as a whole.
        self.nodes = self.nodes.saturating_add(s.len() / 8);
        s
    }

    fn uuid(&mut self) -> String {
        let a = self.rng.next_u64();
        let b = self.rng.next_u64();
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0x0fff,
            0x8000 | ((b >> 48) & 0x3fff),
            b & 0xffff_ffff_ffff
        )
    }

    /// Inclusive bounds from minimum/maximum/exclusive* (both draft-4 booleans and numeric forms).
    fn bounds(obj: &Map<String, Value>) -> (Option<f64>, bool, Option<f64>, bool) {
        let finite = |v: &Value| v.as_f64().filter(|x| x.is_finite());
        let mut lo = obj.get("minimum").and_then(finite);
        let mut hi = obj.get("maximum").and_then(finite);
        let mut lo_ex = obj
            .get("exclusiveMinimum")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mut hi_ex = obj
            .get("exclusiveMaximum")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if let Some(x) = obj.get("exclusiveMinimum").and_then(finite) {
            if lo.is_none_or(|l| x >= l) {
                lo = Some(x);
                lo_ex = true;
            }
        }
        if let Some(x) = obj.get("exclusiveMaximum").and_then(finite) {
            if hi.is_none_or(|h| x <= h) {
                hi = Some(x);
                hi_ex = true;
            }
        }
        (lo, lo_ex, hi, hi_ex)
    }

    fn integer(&mut self, obj: &Map<String, Value>) -> Value {
        const LIMIT: f64 = 9_007_199_254_740_991.0; // 2^53 - 1: exact in f64 and in every JSON parser
        let (lo, lo_ex, hi, hi_ex) = Self::bounds(obj);
        let lo = lo.map(|l| if lo_ex { l.floor() + 1.0 } else { l.ceil() });
        let hi = hi.map(|h| if hi_ex { h.ceil() - 1.0 } else { h.floor() });
        let (lo, hi) = match (lo, hi) {
            (Some(l), Some(h)) => (l, h),
            (Some(l), None) => (l, l + 100.0),
            (None, Some(h)) => (h - 100.0, h),
            (None, None) => (0.0, 100.0),
        };
        let lo = lo.clamp(-LIMIT, LIMIT);
        let hi = hi.clamp(lo, LIMIT);
        let span = (hi - lo) as u64;
        let v = lo as i64 + self.rng.below(span.saturating_add(1)) as i64;
        let v = match obj.get("multipleOf").and_then(Value::as_i64) {
            Some(m) if m > 0 => {
                let up = v.div_euclid(m).saturating_add(1).saturating_mul(m);
                let down = v.div_euclid(m).saturating_mul(m);
                if (down as f64) >= lo {
                    down
                } else if (up as f64) <= hi {
                    up
                } else {
                    v
                }
            }
            _ => v,
        };
        Value::from(v)
    }

    fn number(&mut self, obj: &Map<String, Value>) -> Value {
        let (lo, lo_ex, hi, hi_ex) = Self::bounds(obj);
        let (l, h) = match (lo, hi) {
            (Some(l), Some(h)) => (l, h),
            (Some(l), None) => (l, l + 100.0),
            (None, Some(h)) => (h - 100.0, h),
            (None, None) => (0.0, 100.0),
        };
        let ok = |x: f64| {
            x.is_finite()
                && lo.is_none_or(|l| if lo_ex { x > l } else { x >= l })
                && hi.is_none_or(|h| if hi_ex { x < h } else { x <= h })
        };
        let candidate = ((l + self.rng.next_f64() * (h - l)) * 100.0).round() / 100.0;
        let v = [candidate, (l + h) / 2.0, l, h]
            .into_iter()
            .find(|x| ok(*x))
            .unwrap_or(0.0);
        serde_json::Number::from_f64(v).map_or(Value::from(0), Value::Number)
    }
}

/// Size of a value (nodes, plus string bytes / 8), counted up to `cap`.
fn weight(v: &Value, cap: usize) -> usize {
    fn go(v: &Value, cap: usize, acc: &mut usize) {
        if *acc > cap {
            return;
        }
        *acc += 1;
        match v {
            Value::String(s) => *acc += s.len() / 8,
            Value::Array(a) => a.iter().for_each(|x| go(x, cap, acc)),
            Value::Object(o) => o.iter().for_each(|(k, x)| {
                *acc += k.len() / 8;
                go(x, cap, acc)
            }),
            _ => {}
        }
    }
    let mut acc = 0;
    go(v, cap, &mut acc);
    acc
}

fn type_name(t: &str) -> &'static str {
    match t {
        "object" => "object",
        "array" => "array",
        "string" => "string",
        "integer" => "integer",
        "number" => "number",
        "boolean" => "boolean",
        "null" => "null",
        _ => "any",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gen(schema: &Value) -> Value {
        generate(schema, &mut SplitMix64::new(3)).unwrap()
    }

    #[test]
    fn pydantic_style() {
        let schema = json!({
            "$defs": {
                "Address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string", "minLength": 5, "maxLength": 5}}, "required": ["city", "zip"]},
                "Node": {"type": "object", "properties": {"name": {"type": "string"}, "child": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]}}, "required": ["name", "child"]}
            },
            "type": "object",
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "when": {"type": "string", "format": "date-time"},
                "email": {"type": "string", "format": "email"},
                "age": {"type": "integer", "minimum": 18, "maximum": 20},
                "score": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                "kind": {"enum": ["a", "b"]},
                "fixed": {"const": 7},
                "nick": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": null},
                "address": {"$ref": "#/$defs/Address"},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
                "tree": {"$ref": "#/$defs/Node"},
                "both": {"allOf": [{"$ref": "#/$defs/Address"}, {"properties": {"extra": {"type": "boolean"}}, "required": ["extra"]}]},
                "multi": {"type": ["null", "integer"]}
            },
            "required": ["id", "age"]
        });
        let v = gen(&schema);
        assert_eq!(v["id"].as_str().unwrap().len(), 36);
        assert!(v["when"].as_str().unwrap().ends_with('Z'));
        assert!(v["email"].as_str().unwrap().contains('@'));
        assert!((18..=20).contains(&v["age"].as_i64().unwrap()));
        let s = v["score"].as_f64().unwrap();
        assert!(s > 0.0 && s < 1.0);
        assert!(v["kind"] == "a" || v["kind"] == "b");
        assert_eq!(v["fixed"], 7);
        assert!(v["nick"].is_string());
        assert_eq!(v["address"]["zip"].as_str().unwrap().chars().count(), 5);
        assert_eq!(v["tags"].as_array().unwrap().len(), 2);
        assert!(v["tree"]["child"]["name"].is_string());
        assert!(v["both"]["extra"].is_boolean() && v["both"]["city"].is_string());
        assert!(v["multi"].is_i64());
        // Recursion terminates through the null branch.
        let mut depth = 0;
        let mut n = &v["tree"];
        while n.is_object() {
            n = &n["child"];
            depth += 1;
        }
        assert!(depth < 10);
    }

    #[test]
    fn hostile_schemas_do_not_hang_or_panic() {
        let cyc = json!({"$defs": {"A": {"$ref": "#/$defs/A"}}, "$ref": "#/$defs/A"});
        assert!(generate(&cyc, &mut SplitMix64::new(1)).is_err());
        let req = json!({"$defs": {"A": {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}, "b": {"$ref": "#/$defs/A"}}, "required": ["a", "b"]}}, "$ref": "#/$defs/A"});
        assert!(generate(&req, &mut SplitMix64::new(1)).is_err());
        assert!(generate(&json!({"$ref": "http://x/y"}), &mut SplitMix64::new(1)).is_err());
        assert!(generate(&json!({"$ref": "#/nope"}), &mut SplitMix64::new(1)).is_err());
        let big = json!({"type": "array", "minItems": 1_000_000_000u64, "items": {"type": "string", "minLength": 1_000_000_000u64}});
        assert!(generate(&big, &mut SplitMix64::new(1)).is_err());
        let many =
            json!({"type": "array", "minItems": 1_000_000_000u64, "items": {"type": "integer"}});
        assert_eq!(gen(&many).as_array().unwrap().len(), MAX_ITEMS as usize);
        let long = json!({"type": "string", "minLength": 1_000_000_000u64});
        assert!(gen(&long).as_str().unwrap().len() >= MAX_STRING as usize);
        for s in [
            json!(null),
            json!(false),
            json!(true),
            json!([]),
            json!({"type": 5}),
            json!({"type": "integer", "minimum": 1e300}),
            json!({"type": "integer", "minimum": 5, "maximum": 1}),
            json!({"type": "number", "minimum": f64::MAX, "maximum": f64::MAX}),
            json!({"type": "integer", "multipleOf": 7, "minimum": 1, "maximum": 6}),
            json!({"enum": []}),
            json!({"anyOf": []}),
            json!({"allOf": [5, {"$ref": "#"}]}),
        ] {
            let _ = generate(&s, &mut SplitMix64::new(1));
        }
    }

    #[test]
    fn spaced_json() {
        let v = json!({"a": [1, 2], "b": {"c": "x y"}});
        assert_eq!(to_spaced_json(&v), r#"{"a": [1, 2], "b": {"c": "x y"}}"#);
        let back: Value = serde_json::from_str(&to_spaced_json(&v)).unwrap();
        assert_eq!(back, v);
    }
}
