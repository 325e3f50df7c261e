//! A small generator of JSON values from a JSON Schema: the arguments of a simulated tool
//! call and the content of a structured-output answer.
//!
//! It covers what function-calling and structured-output schemas use in practice (OpenAI's
//! strict mode, Pydantic's `model_json_schema()`, zod-to-json-schema): `type` (one or a
//! list), `properties` with `required`, `additionalProperties`, `items` and `prefixItems`,
//! `minItems`/`maxItems`, `enum`, `const`, `anyOf`/`oneOf` (the first branch that is not
//! `null`), `allOf` (merged), `$ref` to `#/$defs/...` or `#/definitions/...`, string
//! `format`s and length bounds, number bounds and `multipleOf`, and `default`.
//!
//! Deterministic: the same schema always gives the same value, so apps can snapshot-test.
//! Every property is filled in, optional ones too, so an app sees its whole shape.
//! `pattern` is not honoured (a regex cannot be run backwards cheaply); an empty or
//! unknown schema gives `null` where that is allowed, else an empty object.

use serde_json::{Map, Value, json};

/// References followed, nested objects and arrays entered, before the generator stops
/// descending and fills what is left with the smallest valid value (recursive schemas
/// such as a tree of nodes would otherwise never end).
const MAX_DEPTH: usize = 12;

/// Values generated (objects, arrays and scalars alike) before the generator treats every
/// level as past [`MAX_DEPTH`]: nested arrays with large `minItems` would otherwise grow
/// exponentially from a small schema. Such a schema gets arrays shorter than it asks (an
/// invalid value, but a small one); no schema an app sends for a tool comes near this.
const MAX_VALUES: usize = 10_000;

/// A value valid against `schema`; `$ref`s resolve against `schema` itself.
pub(super) fn generate(schema: &Value) -> Value {
    Generator {
        root: schema,
        made: std::cell::Cell::new(0),
    }
    .value(schema, "value", 0)
}

struct Generator<'a> {
    root: &'a Value,
    /// Values made so far, against [`MAX_VALUES`].
    made: std::cell::Cell<usize>,
}

impl<'a> Generator<'a> {
    /// `name` is the property (or tool argument) being filled: strings are made from it,
    /// so `{"city": ...}` reads `"example city"`.
    fn value(&self, schema: &'a Value, name: &str, depth: usize) -> Value {
        self.made.set(self.made.get() + 1);
        let depth = if self.made.get() > MAX_VALUES {
            depth.max(MAX_DEPTH)
        } else {
            depth
        };
        let Some(fields) = schema.as_object() else {
            // `true` (anything goes), `false` (nothing does) or garbage: null is as good
            // as anything, and nothing satisfies `false`.
            return Value::Null;
        };
        if let Some(reference) = fields.get("$ref").and_then(Value::as_str) {
            // Objects and arrays stop growing at MAX_DEPTH; this bound only ends a cycle
            // of references that never reaches one (`A: {"$ref": "#/$defs/A"}`).
            return match self.resolve(reference) {
                Some(target) if depth < 4 * MAX_DEPTH => self.value(target, name, depth + 1),
                _ => Value::Null,
            };
        }
        if let Some(value) = fields.get("const") {
            return value.clone();
        }
        if let Some(first) = fields
            .get("enum")
            .and_then(Value::as_array)
            .and_then(|values| values.first())
        {
            return first.clone();
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(branches) = fields.get(key).and_then(Value::as_array) {
                // A nullable field (`Optional[X]` in Pydantic) is `anyOf: [X, {type: null}]`:
                // the non-null branch says more.
                // Past the depth limit the null branch, where there is one, ends a recursion.
                let is_null = |b: &&Value| b.get("type").and_then(Value::as_str) == Some("null");
                let branch = if depth >= MAX_DEPTH {
                    branches.iter().find(is_null)
                } else {
                    None
                }
                .or_else(|| branches.iter().find(|b| !is_null(b)))
                .or_else(|| branches.first());
                if let Some(branch) = branch {
                    return self.value(branch, name, depth + 1);
                }
            }
        }
        if let Some(parts) = fields.get("allOf").and_then(Value::as_array) {
            return self.value(&merge_all_of(fields, parts), name, depth + 1);
        }
        if let Some(default) = fields.get("default") {
            return default.clone();
        }
        match self.kind(fields) {
            Kind::Object => self.object(fields, depth),
            Kind::Array => self.array(fields, name, depth),
            Kind::String => string(fields, name),
            Kind::Integer => integer(fields),
            Kind::Number => number(fields),
            Kind::Boolean => Value::Bool(true),
            Kind::Null => Value::Null,
        }
    }

    /// The type to generate: the first non-null one named, else what the keywords imply.
    fn kind(&self, fields: &Map<String, Value>) -> Kind {
        let named = match fields.get("type") {
            Some(Value::String(kind)) => Kind::parse(kind),
            Some(Value::Array(kinds)) => kinds
                .iter()
                .filter_map(Value::as_str)
                .filter_map(Kind::parse)
                .find(|kind| *kind != Kind::Null)
                .or(Some(Kind::Null)),
            _ => None,
        };
        named.unwrap_or(
            if fields.contains_key("properties") || fields.contains_key("additionalProperties") {
                Kind::Object
            } else if fields.contains_key("items") || fields.contains_key("prefixItems") {
                Kind::Array
            } else {
                Kind::Null
            },
        )
    }

    fn object(&self, fields: &'a Map<String, Value>, depth: usize) -> Value {
        let mut out = Map::new();
        let required: Vec<&str> = fields
            .get("required")
            .and_then(Value::as_array)
            .map(|names| names.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(properties) = fields.get("properties").and_then(Value::as_object) {
            for (key, schema) in properties {
                // Past the depth limit only what must be there is filled, minimally, so a
                // recursive schema ends.
                if depth >= MAX_DEPTH {
                    if required.contains(&key.as_str()) {
                        out.insert(key.clone(), minimal(self.deref(schema)));
                    }
                    continue;
                }
                out.insert(key.clone(), self.value(schema, key, depth + 1));
            }
        }
        // A required name without a property schema (legal, if odd): anything will do.
        for key in required {
            if !out.contains_key(key) {
                let value = match fields.get("additionalProperties") {
                    Some(schema @ Value::Object(_)) if depth < MAX_DEPTH => {
                        self.value(schema, key, depth + 1)
                    }
                    _ => Value::Null,
                };
                out.insert(key.to_owned(), value);
            }
        }
        Value::Object(out)
    }

    fn array(&self, fields: &'a Map<String, Value>, name: &str, depth: usize) -> Value {
        let min = bound(fields, "minItems").unwrap_or(1);
        let max = bound(fields, "maxItems").unwrap_or(u64::MAX);
        // One item shows the shape; more only when the schema asks for more. Bounded so a
        // schema asking for a million items does not build them.
        let count = min.max(1).min(max).min(64) as usize;
        let prefix: &[Value] = fields
            .get("prefixItems")
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice);
        let items = fields.get("items").filter(|items| items.is_object());
        let mut out = Vec::with_capacity(count.max(prefix.len()));
        for (i, schema) in prefix.iter().enumerate() {
            out.push(self.value(schema, &format!("{name} {}", i + 1), depth + 1));
        }
        if depth >= MAX_DEPTH {
            return Value::Array(out);
        }
        if let Some(items) = items {
            let unique = fields.get("uniqueItems") == Some(&Value::Bool(true));
            while out.len() < count {
                let mut item = self.value(items, name, depth + 1);
                // Distinct items where they must be: vary strings and numbers by position.
                if unique && out.contains(&item) {
                    item = vary(item, out.len());
                }
                out.push(item);
            }
        }
        Value::Array(out)
    }

    fn resolve(&self, reference: &str) -> Option<&'a Value> {
        let pointer = reference.strip_prefix('#')?;
        if pointer.is_empty() {
            return Some(self.root);
        }
        self.root.pointer(pointer)
    }

    fn deref(&self, schema: &'a Value) -> &'a Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(reference) => self.resolve(reference).unwrap_or(schema),
            None => schema,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Object,
    Array,
    String,
    Integer,
    Number,
    Boolean,
    Null,
}

impl Kind {
    fn parse(kind: &str) -> Option<Kind> {
        Some(match kind {
            "object" => Kind::Object,
            "array" => Kind::Array,
            "string" => Kind::String,
            "integer" => Kind::Integer,
            "number" => Kind::Number,
            "boolean" => Kind::Boolean,
            "null" => Kind::Null,
            _ => return None,
        })
    }
}

/// The smallest value of a schema's type, for what lies past [`MAX_DEPTH`].
fn minimal(schema: &Value) -> Value {
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => json!({}),
        Some("array") => json!([]),
        Some("string") => json!(""),
        Some("integer" | "number") => json!(0),
        Some("boolean") => json!(false),
        _ => Value::Null,
    }
}

/// `allOf` as one schema: the parts' properties and required names together (Pydantic
/// emits `allOf: [{"$ref": ...}]` for a field with a description).
fn merge_all_of(fields: &Map<String, Value>, parts: &[Value]) -> Value {
    let mut merged = fields.clone();
    merged.remove("allOf");
    let mut properties = Map::new();
    let mut required = Vec::new();
    let mut single = None;
    for part in parts {
        match part.as_object() {
            Some(part) if part.contains_key("properties") || part.contains_key("required") => {
                if let Some(p) = part.get("properties").and_then(Value::as_object) {
                    properties.extend(p.clone());
                }
                if let Some(r) = part.get("required").and_then(Value::as_array) {
                    required.extend(r.iter().cloned());
                }
                for (key, value) in part {
                    if key != "properties" && key != "required" {
                        merged.entry(key.clone()).or_insert_with(|| value.clone());
                    }
                }
            }
            _ => single = single.or(Some(part)),
        }
    }
    if properties.is_empty() && required.is_empty() {
        // `allOf: [{"$ref": "#/$defs/Color"}]`: the one part is the schema.
        if let Some(part) = single.and_then(Value::as_object) {
            for (key, value) in part {
                merged.entry(key.clone()).or_insert_with(|| value.clone());
            }
        }
        return Value::Object(merged);
    }
    merged.insert("type".into(), json!("object"));
    merged.insert("properties".into(), Value::Object(properties));
    merged.insert("required".into(), Value::Array(required));
    Value::Object(merged)
}

fn bound(fields: &Map<String, Value>, key: &str) -> Option<u64> {
    fields.get(key).and_then(Value::as_u64)
}

fn string(fields: &Map<String, Value>, name: &str) -> Value {
    let formatted = match fields.get("format").and_then(Value::as_str) {
        Some("date-time") => Some("2024-05-13T12:00:00Z"),
        Some("date") => Some("2024-05-13"),
        Some("time") => Some("12:00:00Z"),
        Some("email") => Some("user@example.com"),
        Some("uri" | "url") => Some("https://example.com/"),
        Some("uuid") => Some("00000000-0000-4000-8000-000000000000"),
        Some("ipv4") => Some("192.0.2.1"),
        Some("ipv6") => Some("2001:db8::1"),
        Some("hostname") => Some("example.com"),
        Some("duration") => Some("P1D"),
        _ => None,
    };
    let mut text = formatted.map_or_else(|| format!("example {name}"), str::to_owned);
    let min = bound(fields, "minLength").unwrap_or(0).min(4096) as usize;
    let max = bound(fields, "maxLength").map_or(usize::MAX, |n| n as usize);
    // Lengths are in characters (code points), as JSON Schema counts them.
    if text.chars().count() > max {
        text = text.chars().take(max).collect();
    }
    while text.chars().count() < min {
        text.push('x');
    }
    Value::String(text)
}

fn integer(fields: &Map<String, Value>) -> Value {
    let number = |key| fields.get(key).and_then(Value::as_f64);
    let mut low = number("minimum").map(f64::ceil);
    if let Some(exclusive) = number("exclusiveMinimum") {
        let above = exclusive.floor() + 1.0;
        low = Some(low.map_or(above, |l| l.max(above)));
    }
    let mut high = number("maximum").map(f64::floor);
    if let Some(exclusive) = number("exclusiveMaximum") {
        let below = exclusive.ceil() - 1.0;
        high = Some(high.map_or(below, |h| h.min(below)));
    }
    let mut value = low.unwrap_or(1.0_f64.min(high.unwrap_or(1.0)));
    if let Some(step) = number("multipleOf").filter(|step| *step >= 1.0) {
        value = (value / step).ceil() * step;
    }
    if let Some(high) = high {
        value = value.min(high);
    }
    json!(value as i64)
}

fn number(fields: &Map<String, Value>) -> Value {
    let number = |key| fields.get(key).and_then(Value::as_f64);
    let low = number("minimum").or(number("exclusiveMinimum").map(|x| x + 0.5));
    let high = number("maximum").or(number("exclusiveMaximum").map(|x| x - 0.5));
    let mut value = match (low, high) {
        (Some(low), Some(high)) => (low + high) / 2.0,
        (Some(low), None) => low + 0.5,
        (None, Some(high)) => high - 0.5,
        (None, None) => 1.5,
    };
    if let Some(step) = number("multipleOf").filter(|step| *step > 0.0) {
        value = (value / step).ceil() * step;
        if high.is_some_and(|high| value > high) {
            value -= step;
        }
    }
    json!(value)
}

/// A variant of `value` for position `i`, for `uniqueItems`.
fn vary(value: Value, i: usize) -> Value {
    match value {
        // The same length, so length bounds still hold: the last characters become `i`.
        Value::String(s) => {
            let suffix = (i + 1).to_string();
            let keep = s.chars().count().saturating_sub(suffix.len());
            Value::String(s.chars().take(keep).chain(suffix.chars()).collect())
        }
        Value::Number(n) => n.as_i64().map_or_else(
            || json!(n.as_f64().unwrap_or(0.0) + i as f64),
            |n| json!(n + i as i64),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generates from `schema` and checks the value with an independent JSON Schema
    /// validator (the `jsonschema` crate).
    #[track_caller]
    fn valid(schema: Value) -> Value {
        let value = generate(&schema);
        let validator = jsonschema::validator_for(&schema)
            .unwrap_or_else(|e| panic!("test schema is not a valid schema: {e}\n{schema:#}"));
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "generated {value:#}\nagainst {schema:#}\nerrors: {errors:?}"
        );
        value
    }

    #[test]
    fn a_weather_tool_gets_its_required_arguments() {
        let value = valid(json!({
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "City and country"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
            },
            "required": ["location", "unit"],
        }));
        assert_eq!(value["location"], "example location");
        assert_eq!(value["unit"], "celsius");
        assert_eq!(value["days"], 1);
    }

    #[test]
    fn strict_mode_nested_objects_and_arrays() {
        // What OpenAI's strict mode asks: every property required, no extras, nullable
        // fields as a type list.
        valid(json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["name", "tags", "address", "score", "nickname"],
            "properties": {
                "name": {"type": "string", "minLength": 20},
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "minItems": 2, "uniqueItems": true},
                "address": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["street", "zip"],
                    "properties": {
                        "street": {"type": "string"},
                        "zip": {"type": "string", "maxLength": 5},
                    },
                },
                "score": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                "nickname": {"type": ["string", "null"]},
            },
        }));
    }

    #[test]
    fn pydantic_defs_refs_and_optionals() {
        // `model_json_schema()` of a Pydantic model with a nested model, an enum, a list
        // of models, an Optional field and a field with a description (allOf + $ref).
        let value = valid(json!({
            "$defs": {
                "Color": {"enum": ["red", "green"], "title": "Color", "type": "string"},
                "Step": {
                    "properties": {
                        "explanation": {"title": "Explanation", "type": "string"},
                        "output": {"title": "Output", "type": "string"},
                    },
                    "required": ["explanation", "output"],
                    "title": "Step",
                    "type": "object",
                    "additionalProperties": false,
                },
            },
            "properties": {
                "steps": {"items": {"$ref": "#/$defs/Step"}, "title": "Steps", "type": "array"},
                "final_answer": {"title": "Final Answer", "type": "string"},
                "color": {"allOf": [{"$ref": "#/$defs/Color"}], "description": "a colour"},
                "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": null},
                "count": {"anyOf": [{"type": "integer", "multipleOf": 5, "minimum": 7}, {"type": "null"}]},
            },
            "required": ["steps", "final_answer", "color"],
            "title": "MathReasoning",
            "type": "object",
            "additionalProperties": false,
        }));
        assert_eq!(value["steps"][0]["explanation"], "example explanation");
        assert_eq!(value["color"], "red");
        assert_eq!(value["count"], 10);
    }

    #[test]
    fn recursive_definitions_end() {
        valid(json!({
            "$defs": {
                "Node": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                    },
                    "required": ["name", "children"],
                    "additionalProperties": false,
                },
            },
            "$ref": "#/$defs/Node",
        }));
        // The older `definitions` spelling and a reference to the root.
        valid(json!({
            "type": "object",
            "properties": {
                "leaf": {"$ref": "#/definitions/Leaf"},
                "parent": {"anyOf": [{"$ref": "#"}, {"type": "null"}]},
            },
            "required": ["leaf", "parent"],
            "definitions": {"Leaf": {"type": "boolean"}},
        }));
    }

    #[test]
    fn scalars_formats_and_bounds() {
        for schema in [
            json!({"type": "string", "format": "date-time"}),
            json!({"type": "string", "format": "email", "maxLength": 40}),
            json!({"type": "string", "format": "uuid"}),
            json!({"type": "string", "minLength": 3, "maxLength": 3}),
            json!({"type": "integer", "exclusiveMinimum": 10}),
            json!({"type": "integer", "maximum": -5}),
            json!({"type": "integer", "minimum": 3, "maximum": 20, "multipleOf": 4}),
            json!({"type": "number", "minimum": 2.5, "maximum": 3.5}),
            json!({"type": "number", "multipleOf": 0.25, "minimum": 0.1}),
            json!({"type": "boolean"}),
            json!({"type": "null"}),
            json!({"const": "fixed"}),
            json!({"enum": [3, "three"]}),
            json!({"type": ["null", "integer"]}),
            json!({"oneOf": [{"type": "integer", "minimum": 100}, {"type": "string", "maxLength": 0}]}),
            json!({}),
        ] {
            valid(schema);
        }
    }

    #[test]
    fn arrays_honour_counts_and_tuples() {
        let value = valid(
            json!({"type": "array", "items": {"type": "integer"}, "minItems": 3, "maxItems": 3, "uniqueItems": true}),
        );
        assert_eq!(value, json!([1, 2, 3]));
        valid(
            json!({"type": "array", "prefixItems": [{"type": "string"}, {"type": "number"}], "items": false}),
        );
        valid(json!({"type": "array", "maxItems": 0, "items": {"type": "string"}}));
        valid(json!({"type": "array", "items": {"anyOf": [
            {"type": "object", "properties": {"kind": {"const": "a"}}, "required": ["kind"]},
            {"type": "object", "properties": {"kind": {"const": "b"}}, "required": ["kind"]},
        ]}}));
    }

    #[test]
    fn objects_with_only_additional_properties() {
        valid(
            json!({"type": "object", "additionalProperties": {"type": "integer"}, "required": ["x"]}),
        );
        valid(json!({"type": "object", "properties": {}, "additionalProperties": false}));
        valid(json!({"properties": {"implied": {"type": "object"}}, "required": ["implied"]}));
    }

    #[test]
    fn a_schema_asking_for_an_exponential_value_gets_a_bounded_one() {
        // 64^6 leaves if every level were filled.
        let mut schema = json!({"type": "string"});
        for _ in 0..6 {
            schema = json!({"type": "array", "items": schema, "minItems": 0, "maxItems": 64});
        }
        valid(schema.clone());
        let mut wide = json!({"type": "integer"});
        for _ in 0..6 {
            wide = json!({"type": "array", "items": wide, "minItems": 64});
        }
        let value = generate(&wide);
        assert!(value.to_string().len() < 1_000_000, "bounded");
    }

    #[test]
    fn the_same_schema_gives_the_same_value() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "array", "items": {"type": "string"}}}});
        assert_eq!(generate(&schema), generate(&schema));
    }
}
