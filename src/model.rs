//! Reading and replacing the `model` of a request body, without re-encoding the body.
//!
//! JSON: serde_json validates the whole body but builds no tree: a visitor skips every
//! value with `IgnoredAny` and borrows the raw text of the top-level `model`, whose byte
//! span is then spliced. Every other byte (field order, unknown fields, number spelling)
//! is kept. Multipart: multer reads the `model` form field; the field's bytes are spliced
//! in place, so the upload itself is never re-encoded.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

/// The top-level `model` of a JSON body.
#[derive(Debug, PartialEq, Eq)]
pub struct JsonModel<'a> {
    /// The model name, unescaped.
    pub name: Cow<'a, str>,
    /// Byte range of the JSON string token (quotes included) in the body.
    pub span: Range<usize>,
}

/// What keyless reads of a JSON request body.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct JsonFields<'a> {
    /// The top-level string `model`.
    pub model: Option<JsonModel<'a>>,
    /// The completion budget: `max_tokens`, `max_completion_tokens` or
    /// `max_output_tokens` (the first present as a whole number).
    pub max_tokens: Option<u64>,
    /// The Responses API's `store` flag, when it is a boolean: `false` means Azure keeps
    /// no state for the request, so sending it twice repeats no side effect.
    pub store: Option<bool>,
    /// The top-level `stream` flag, when it is a boolean.
    pub stream: Option<bool>,
    /// Whether the body has a top-level `stream_options`.
    pub stream_options: bool,
    /// The Responses API's `previous_response_id`, when it is a string.
    pub previous_response_id: Option<String>,
}

/// Validates `body` as JSON and finds its top-level string `model`, if any.
///
/// A body that is valid JSON but not an object, or whose `model` is not a string, gives
/// `Ok(None)`: Azure will say what is wrong with it. Invalid JSON is an error.
pub fn find_json_model(body: &[u8]) -> Result<Option<JsonModel<'_>>, serde_json::Error> {
    read_json(body).map(|fields| fields.model)
}

/// Validates `body` as JSON and reads its `model` and completion budget in one pass.
pub fn read_json(body: &[u8]) -> Result<JsonFields<'_>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let found = TopLevel.deserialize(&mut de)?;
    de.end()?;
    Ok(JsonFields {
        model: model_span(body, found.model)?,
        max_tokens: found.max_tokens,
        store: found.store,
        stream: found.stream,
        stream_options: found.stream_options,
        previous_response_id: found
            .previous_response_id
            .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok()),
    })
}

fn model_span<'a>(
    body: &'a [u8],
    raw: Option<&'a RawValue>,
) -> Result<Option<JsonModel<'a>>, serde_json::Error> {
    let Some(raw) = raw else { return Ok(None) };
    let text = raw.get();
    if !text.starts_with('"') {
        return Ok(None);
    }
    // Borrowed unless the name has escapes (serde's own `Cow<str>` always copies).
    let name = serde_json::from_str::<Str<'_>>(text)?.0;
    // The raw value borrows from `body`, so its offset is a pointer difference.
    let start = text.as_ptr() as usize - body.as_ptr() as usize;
    Ok(Some(JsonModel {
        name,
        span: start..start + text.len(),
    }))
}

/// Returns `body` with the bytes in `span` replaced by the JSON string `value`.
pub fn splice_json_string(body: &[u8], span: Range<usize>, value: &str) -> Bytes {
    let encoded = serde_json::Value::from(value).to_string();
    splice(body, span, encoded.as_bytes())
}

fn splice(body: &[u8], span: Range<usize>, replacement: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() - span.len() + replacement.len());
    out.extend_from_slice(&body[..span.start]);
    out.extend_from_slice(replacement);
    out.extend_from_slice(&body[span.end..]);
    out.freeze()
}

/// Visits the top level: an object is scanned for `model`, anything else is skipped.
struct TopLevel;

/// The raw `model`, the completion budget, `store` and the stream fields.
#[derive(Default)]
struct Found<'de> {
    model: Option<&'de RawValue>,
    max_tokens: Option<u64>,
    store: Option<bool>,
    stream: Option<bool>,
    stream_options: bool,
    previous_response_id: Option<&'de RawValue>,
}

impl<'de> DeserializeSeed<'de> for TopLevel {
    type Value = Found<'de>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TopLevel {
    type Value = Found<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = Found::default();
        while let Some(key) = map.next_key::<Str<'de>>()? {
            match &*key.0 {
                "model" => {
                    if found.model.is_some() {
                        return Err(de::Error::custom("duplicate field `model`"));
                    }
                    found.model = Some(map.next_value::<&'de RawValue>()?);
                }
                "max_tokens" | "max_completion_tokens" | "max_output_tokens" => {
                    let raw = map.next_value::<&'de RawValue>()?;
                    found.max_tokens = found.max_tokens.or_else(|| raw.get().parse::<u64>().ok());
                }
                "store" => {
                    let raw = map.next_value::<&'de RawValue>()?;
                    found.store = raw.get().parse::<bool>().ok();
                }
                "stream" => {
                    let raw = map.next_value::<&'de RawValue>()?;
                    found.stream = raw.get().parse::<bool>().ok();
                }
                "stream_options" => {
                    map.next_value::<IgnoredAny>()?;
                    found.stream_options = true;
                }
                "previous_response_id" => {
                    found.previous_response_id = Some(map.next_value::<&'de RawValue>()?);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Found::default())
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Found::default())
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Found::default())
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Found::default())
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Found::default())
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Found::default())
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Found::default())
    }
}

/// A JSON string borrowed from the body when it has no escapes, owned otherwise: reading
/// the keys of a request costs no allocation.
struct Str<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_str(StrVisitor)
    }
}

struct StrVisitor;

impl<'de> Visitor<'de> for StrVisitor {
    type Value = Str<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Str(Cow::Owned(v)))
    }
}

/// The `model` form field of a multipart body.
#[derive(Debug, PartialEq, Eq)]
pub struct FormModel {
    /// The model name.
    pub name: String,
    /// Byte range of the field's content in the body.
    pub span: Range<usize>,
}

/// Reads the `model` field of a multipart/form-data body with multer, and locates its
/// content in `body` so it can be replaced without re-encoding the rest.
pub async fn find_form_model(body: &Bytes, boundary: &str) -> Result<Option<FormModel>, String> {
    let stream =
        futures_util::stream::once(std::future::ready(Ok::<_, std::io::Error>(body.clone())));
    let mut form = multer::Multipart::new(stream, boundary);
    let mut name = None;
    // Every field is looked at: keyless rewrites one `model`, and a second one would
    // reach Azure unrewritten (which of the two Azure reads is not documented).
    while let Some(field) = form.next_field().await.map_err(|e| e.to_string())? {
        if field.name() == Some("model") {
            if name.is_some() {
                return Err("the multipart body has more than one model field".into());
            }
            name = Some(field.text().await.map_err(|e| e.to_string())?);
        }
    }
    let Some(name) = name else { return Ok(None) };
    let span = locate_form_field(body, boundary, "model")
        .ok_or_else(|| "the multipart body's model field could not be located".to_owned())?;
    if body[span.clone()] != *name.as_bytes() {
        // A transfer-encoded field: keyless can read it but will not rewrite it.
        return Err("the multipart model field uses an encoding keyless cannot rewrite".into());
    }
    Ok(Some(FormModel { name, span }))
}

/// Returns `body` with the multipart field content at `span` replaced by `value`.
pub fn splice_form_field(body: &[u8], span: Range<usize>, value: &str) -> Bytes {
    splice(body, span, value.as_bytes())
}

/// Finds the content range of the first form field named `field` (RFC 7578 framing:
/// `--boundary CRLF headers CRLF CRLF content CRLF --boundary`).
fn locate_form_field(body: &[u8], boundary: &str, field: &str) -> Option<Range<usize>> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let mut at = find(body, delimiter, 0)?;
    loop {
        let headers_start = at + delimiter.len();
        if body.get(headers_start..headers_start + 2) == Some(b"--") {
            return None; // closing delimiter
        }
        let headers_end = find(body, b"\r\n\r\n", headers_start)?;
        let content_start = headers_end + 4;
        let mut next_delim = Vec::with_capacity(delimiter.len() + 2);
        next_delim.extend_from_slice(b"\r\n");
        next_delim.extend_from_slice(delimiter);
        let content_end = find(body, &next_delim, content_start)?;
        let headers = std::str::from_utf8(&body[headers_start..headers_end]).ok()?;
        if part_name(headers) == Some(field) {
            return Some(content_start..content_end);
        }
        at = content_end + 2;
    }
}

/// The `name` parameter of a part's `Content-Disposition: form-data` header.
fn part_name(headers: &str) -> Option<&str> {
    headers.split("\r\n").find_map(|line| {
        let (header, value) = line.split_once(':')?;
        if !header.trim().eq_ignore_ascii_case("content-disposition") {
            return None;
        }
        value.split(';').skip(1).find_map(|param| {
            let (key, val) = param.split_once('=')?;
            if key.trim().eq_ignore_ascii_case("name") {
                Some(val.trim().trim_matches('"'))
            } else {
                None
            }
        })
    })
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_model_and_keeps_every_other_byte() {
        let body = br#"{"z":1.0e2,"model":"gpt-4o-mini","messages":[{"role":"user","content":"model"}],"x":{"model":"inner"}}"#;
        let m = find_json_model(body).unwrap().unwrap();
        assert_eq!(m.name, "gpt-4o-mini");
        let out = splice_json_string(body, m.span, "prod-4o");
        assert_eq!(
            &out[..],
            br#"{"z":1.0e2,"model":"prod-4o","messages":[{"role":"user","content":"model"}],"x":{"model":"inner"}}"#
        );
    }

    #[test]
    fn escaped_model_is_unescaped_and_replacement_is_escaped() {
        let body = br#"{ "model" : "a\"b\u0041" }"#;
        let m = find_json_model(body).unwrap().unwrap();
        assert_eq!(m.name, "a\"bA");
        let out = splice_json_string(body, m.span, "q\"d");
        assert_eq!(&out[..], br#"{ "model" : "q\"d" }"#);
    }

    #[test]
    fn a_key_written_with_escapes_is_still_model_and_a_plain_name_is_borrowed() {
        let body = br#"{"mod\u0065l":"gpt-4o","max_tok\u0065ns":7}"#;
        let fields = read_json(body).unwrap();
        assert_eq!(fields.model.unwrap().name, "gpt-4o");
        assert_eq!(fields.max_tokens, Some(7));
        let plain = find_json_model(br#"{"model":"gpt-4o"}"#).unwrap().unwrap();
        assert!(matches!(plain.name, Cow::Borrowed("gpt-4o")));
    }

    #[test]
    fn invalid_json_is_an_error_anywhere_in_the_body() {
        assert!(find_json_model(br#"{"model":"a","messages":[1,}"#).is_err());
        assert!(find_json_model(br#"{"model":"a"} trailing"#).is_err());
        assert!(find_json_model(b"").is_err());
        assert!(find_json_model(br#"{"model":"a","model":"b"}"#).is_err());
    }

    #[test]
    fn reads_the_completion_budget() {
        let f = read_json(br#"{"model":"m","max_completion_tokens":500,"max_tokens":9}"#).unwrap();
        assert_eq!(f.max_tokens, Some(500));
        assert_eq!(f.model.unwrap().name, "m");
        let f = read_json(br#"{"input":"x","max_output_tokens":"lots"}"#).unwrap();
        assert_eq!(f.max_tokens, None);
        assert_eq!(f.model, None);
    }

    #[test]
    fn no_string_model_is_none() {
        assert_eq!(find_json_model(br#"{"input":"x"}"#).unwrap(), None);
        assert_eq!(find_json_model(br#"{"model":null}"#).unwrap(), None);
        assert_eq!(find_json_model(br#"[{"model":"a"}]"#).unwrap(), None);
        assert_eq!(find_json_model(br#""model""#).unwrap(), None);
    }

    fn form(boundary: &str) -> Vec<u8> {
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF\r\n--x"
        )
        .into_bytes();
        // Binary file content, including bytes that are not UTF-8.
        body.extend_from_slice(&[0x00, 0xff, 0xfe]);
        body.extend_from_slice(
            format!(
                "\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"language\"\r\n\r\nen\r\n--{boundary}--\r\n"
            )
            .as_bytes(),
        );
        body
    }

    #[tokio::test]
    async fn finds_and_replaces_form_model_without_touching_the_file() {
        let body = Bytes::from(form("XyZ"));
        let m = find_form_model(&body, "XyZ").await.unwrap().unwrap();
        assert_eq!(m.name, "whisper-1");
        let out = splice_form_field(&body, m.span, "prod-whisper");
        let at = body.windows(9).position(|w| w == b"whisper-1").unwrap();
        let mut expected = body[..at].to_vec();
        expected.extend_from_slice(b"prod-whisper");
        expected.extend_from_slice(&body[at + 9..]);
        assert_eq!(&out[..], &expected[..]);
        // and multer agrees on the result
        let again = find_form_model(&out, "XyZ").await.unwrap().unwrap();
        assert_eq!(again.name, "prod-whisper");
    }

    #[tokio::test]
    async fn form_without_model_is_none_and_garbage_is_an_error() {
        let body = Bytes::from_static(
            b"--b\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--b--\r\n",
        );
        assert_eq!(find_form_model(&body, "b").await.unwrap(), None);
        let garbage = Bytes::from_static(b"not multipart at all");
        assert!(find_form_model(&garbage, "b").await.is_err());
    }
}
