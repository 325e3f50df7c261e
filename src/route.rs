//! Inbound path -> what to do with it, and OpenAI operation -> Azure upstream path.
//! Pure functions: no I/O, no allocation beyond the upstream path string (and a decoded
//! copy of a path that has percent escapes, to check it is UTF-8, or of an Azure-style
//! path's deployment that has them).
//!
//! What is refused, and why: Azure sits behind front doors and gateways whose path rules
//! keyless does not know, so anything that some server could read as another path is
//! refused before a byte goes upstream: a backslash (Windows servers read it as `/`), an
//! encoded `/` or `\`, a `.` or `..` segment in any spelling, control characters, and
//! the double-encoded forms of all of these. Azure's front door decodes a path once; the
//! double-encoded forms are refused anyway because a second decoder anywhere behind it
//! (an APIM policy, a customer's gateway) would bring them back to life, and no OpenAI
//! path has a reason to carry them.

use crate::config::ApiStyle;
use crate::error::Error;
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use std::borrow::Cow;
use std::fmt::Write;

/// What an inbound request is for.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// `GET /healthz`.
    Health,
    /// `GET /readyz`.
    Ready,
    /// `GET /metrics`.
    Metrics,
    /// `/usage`: token usage by app and deployment.
    Usage,
    /// An OpenAI-style operation, e.g. `chat/completions` or `files/file-1/content`,
    /// as received (still percent-encoded), without leading `/v1/`.
    OpenAi(Op<'a>),
    /// An Azure-style path (`/openai/...`), forwarded as it is.
    Azure(Azure<'a>),
    /// A path keyless will not forward, whatever the route: the reason, for a 400.
    Refused(&'static str),
    /// Nothing keyless serves.
    Unknown,
}

/// An OpenAI operation path and what keyless knows about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op<'a> {
    /// The path below `/v1/`, percent-encoded as received.
    pub path: &'a str,
}

/// An Azure-style request path, forwarded as it is, and what it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Azure<'a> {
    /// The path as received (`/openai/deployments/d/chat/completions`, `/openai/v1/...`).
    pub path: &'a str,
    /// The OpenAI operation it is (`chat/completions`), for the retry and usage rules.
    pub op: &'a str,
    /// The deployment the path names (`/openai/deployments/{d}/...`), percent-decoded and
    /// already checked against Azure's name rule; borrowed unless it had escapes.
    pub deployment: Option<Cow<'a, str>>,
}

/// What a request asks Azure for: the part of an [`Inbound`] that is forwarded, as
/// `backend::Router::resolve` takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// An OpenAI-style operation; the model comes from the body.
    OpenAi(Op<'a>),
    /// An Azure-style path; its deployment is the one the path names, else the model the
    /// body (or a session's query) names.
    Azure(Azure<'a>),
    /// An OpenAI-style realtime session (a WebSocket upgrade of `/v1/realtime`): the model
    /// comes from its query, and its upstream path is built by `realtime.rs`.
    Session,
}

/// The upstream path of a request, one way a route has of building it per backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamPath<'a> {
    /// An OpenAI-style operation, turned into Azure's path for each backend
    /// ([`upstream_path`]).
    Op(Op<'a>),
    /// An Azure-style path, sent as it came ([`azure_path`]).
    Verbatim(&'a str),
    /// An OpenAI-style realtime session (`crate::realtime::upstream_path`).
    Session,
}

impl UpstreamPath<'_> {
    /// The path and query on an endpoint whose own path is `base_path`, for a backend
    /// serving `deployment` (`None`: a pass-through backend).
    pub fn build(
        self,
        base_path: &str,
        style: ApiStyle,
        deployment: Option<&str>,
        api_version: &str,
        query: Option<&str>,
    ) -> Result<String, Error> {
        match self {
            UpstreamPath::Op(op) => {
                upstream_path(base_path, style, op, deployment, api_version, query)
            }
            UpstreamPath::Verbatim(path) => Ok(azure_path(base_path, path, query)),
            UpstreamPath::Session => {
                crate::realtime::upstream_path(base_path, style, deployment, api_version, query)
            }
        }
    }
}

/// Operations that Azure's deployments style scopes to a deployment
/// (openai-python `lib/azure.py` `_deployments_endpoints`).
const DEPLOYMENT_SCOPED: &[&str] = &[
    "chat/completions",
    "completions",
    "embeddings",
    "audio/transcriptions",
    "audio/translations",
    "audio/speech",
    "images/generations",
    "images/edits",
];

/// First path segments of OpenAI operations, accepted without `/v1` for clients whose base
/// URL lacks it.
const KNOWN_ROOTS: &[&str] = &[
    "chat",
    "completions",
    "embeddings",
    "responses",
    "audio",
    "images",
    "models",
    "files",
    "batches",
    "uploads",
    "fine_tuning",
    "vector_stores",
    "assistants",
    "threads",
    "evals",
    "containers",
    "conversations",
    "moderations",
    "realtime",
];

impl<'a> Op<'a> {
    /// Whether the deployments style puts this operation under `/deployments/{d}/`.
    pub fn is_deployment_scoped(&self) -> bool {
        DEPLOYMENT_SCOPED.contains(&self.path)
    }

    /// Whether a multipart body of this operation carries a `model` form field worth
    /// reading (audio and image uploads; file uploads do not).
    pub fn has_multipart_model(&self) -> bool {
        self.path.starts_with("audio/") || self.path.starts_with("images/")
    }

    /// Whether this is the Responses API (which needs a newer api-version in the
    /// deployments style).
    pub fn is_responses(&self) -> bool {
        self.path == "responses" || self.path.starts_with("responses/")
    }
}

/// Classifies an inbound request path (no query).
///
/// Refusals come first and apply to every path style (`/v1/...`, the root-less known
/// roots, `/openai/...`, and paths keyless does not serve), so that no style is a way
/// around them.
pub fn classify(path: &str) -> Inbound<'_> {
    match path {
        "/healthz" => return Inbound::Health,
        "/readyz" => return Inbound::Ready,
        "/metrics" => return Inbound::Metrics,
        "/usage" => return Inbound::Usage,
        _ => {}
    }
    if let Some(why) = refusal(path) {
        return Inbound::Refused(why);
    }
    if path == "/openai" || path.starts_with("/openai/") {
        return azure(path);
    }
    if path.contains("//") {
        return Inbound::Unknown;
    }
    let op = match path.strip_prefix("/v1/") {
        Some(op) => op,
        None => {
            let op = path.trim_start_matches('/');
            let root = op.split('/').next().unwrap_or("");
            if !KNOWN_ROOTS.contains(&root) {
                return Inbound::Unknown;
            }
            op
        }
    };
    let op = op.trim_end_matches('/');
    if op.is_empty() {
        return Inbound::Unknown;
    }
    Inbound::OpenAi(Op { path: op })
}

/// An Azure-style path (`/openai` or below): its operation and the deployment it names.
///
/// `/openai/deployments/{d}/chat/completions` is (`chat/completions`, `{d}` decoded);
/// `/openai/v1/responses` and `/openai/responses` are (`responses`, none).
fn azure(path: &str) -> Inbound<'_> {
    let rest = path
        .strip_prefix("/openai/")
        .or_else(|| path.strip_prefix("/openai"))
        .unwrap_or("");
    let (op, deployment) = match rest.strip_prefix("deployments/") {
        None => (rest.strip_prefix("v1/").unwrap_or(rest), None),
        Some("") => ("", None),
        Some(scoped) => {
            // The deployment an Azure-style path names picks the limits that apply and is
            // forwarded as it is: it must be a name Azure could have, not a path trick.
            let (segment, op) = scoped.split_once('/').unwrap_or((scoped, ""));
            match percent_decode_str(segment).decode_utf8() {
                Ok(d) if name_ok(d.bytes(), DEPLOYMENT_NAME_MAX, false) => (op, Some(d)),
                _ => {
                    return Inbound::Refused(
                        "the deployment in /openai/deployments/{name}/ must be 1 to 64 letters, digits, '-', '_' or '.', and not '.' or '..'",
                    );
                }
            }
        }
    };
    Inbound::Azure(Azure {
        path,
        op,
        deployment,
    })
}

/// Why `path` must not be forwarded, if it must not.
///
/// One pass over the bytes; only a path with a `%` is decoded (to check the escapes
/// form UTF-8).
fn refusal(path: &str) -> Option<&'static str> {
    let bytes = path.as_bytes();
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\\' => return Some(BACKSLASH),
            0..=0x1f | 0x7f => return Some(CONTROL),
            b'%' => {
                escaped = true;
                match escape_at(bytes, i) {
                    Some(b'\\') => return Some(BACKSLASH),
                    Some(b'/') => return Some(ENCODED_SLASH),
                    Some(0..=0x1f | 0x7f) => return Some(CONTROL),
                    // `%25` is `%`: it and the two bytes after it are an escape after one
                    // more decode (`%252F` is `%2F`, then `/`).
                    Some(b'%') => {
                        if let Some(b'\\' | b'/' | 0..=0x1f | 0x7f) = hex_pair(bytes, i + 3) {
                            return Some(DOUBLE_ENCODED);
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    if path.split('/').any(is_dot_segment) {
        return Some(DOT_SEGMENT);
    }
    // Overlong UTF-8 (`%C0%AE` for `.`, `%C0%AF` for `/`) is how lenient decoders were
    // tricked into a dot segment or a separator; a strict decode refuses every such form.
    if escaped && percent_decode_str(path).decode_utf8().is_err() {
        return Some(NOT_UTF8);
    }
    None
}

const BACKSLASH: &str =
    "the path contains a backslash (raw or %5C), which some servers read as '/'";
const ENCODED_SLASH: &str =
    "the path contains an encoded '/' (%2F), which some servers decode into a separator";
const CONTROL: &str = "the path contains a control character (raw or encoded, such as %00)";
const DOUBLE_ENCODED: &str =
    "the path contains a double-encoded '/', '\\' or control character (such as %252F or %255C)";
const DOT_SEGMENT: &str = "the path contains a '.' or '..' segment (in some spelling: %2E, .%2e, %252E, ..;), which would climb out of the route upstream";
const NOT_UTF8: &str = "the path's percent escapes are not UTF-8 (overlong forms such as %C0%AE decode to '.' on some servers)";

/// The byte that the escape `%XY` at `bytes[i]` stands for.
fn escape_at(bytes: &[u8], i: usize) -> Option<u8> {
    match bytes.get(i)? {
        b'%' => hex_pair(bytes, i + 1),
        _ => None,
    }
}

/// The byte that the hex digits `XY` at `bytes[i]` spell.
fn hex_pair(bytes: &[u8], i: usize) -> Option<u8> {
    match bytes.get(i..i + 2)? {
        [hi, lo] => Some(hex(*hi)? << 4 | hex(*lo)?),
        _ => None,
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A segment some server could read as `.` or `..`: only dots (`.`, `%2E`, `%252E`), with
/// trailing spaces (`%20`: Windows drops trailing dots and spaces, so `...` and `..%20`
/// are `..` there) and after a `;` anything (`..;x` is `..` to servlet containers).
fn is_dot_segment(segment: &str) -> bool {
    let mut rest = segment.as_bytes();
    let mut dots = 0;
    loop {
        rest = match rest {
            [] | [b';', ..] => return dots > 0,
            [b'.', tail @ ..] => {
                dots += 1;
                tail
            }
            [b'%', b'2', b'e' | b'E', tail @ ..] => {
                dots += 1;
                tail
            }
            [b'%', b'2', b'5', b'2', b'e' | b'E', tail @ ..] => {
                dots += 1;
                tail
            }
            [b'%', b'2', b'0', tail @ ..] if dots > 0 => tail,
            [b'%', b'3', b'b' | b'B', ..] => return dots > 0,
            _ => return false,
        };
    }
}

/// Azure's limit on a deployment's name.
pub const DEPLOYMENT_NAME_MAX: usize = 64;

/// The limit on a client's model name: more than a deployment's (a name keyless maps,
/// never sent as it is), still bounded.
pub const MODEL_NAME_MAX: usize = 256;

/// Checks a model or deployment name against what Azure allows: letters, digits, `-`,
/// `_` and `.`, not `.` or `..`, not empty, at most [`DEPLOYMENT_NAME_MAX`] characters.
///
/// `kind` is `"model"` for a client's model name, which may be up to [`MODEL_NAME_MAX`]
/// characters and may hold `:` (fine-tuned ids, `ft:gpt-4o-mini:org::id`): the deployment
/// it maps to, the name that reaches Azure, is checked again as `"deployment"`. Any other
/// `kind` gets the deployment rule and names the name in the message.
pub fn check_name(kind: &str, name: &str) -> Result<(), Error> {
    let (max, colon) = if kind == "model" {
        (MODEL_NAME_MAX, true)
    } else {
        (DEPLOYMENT_NAME_MAX, false)
    };
    if name_ok(name.bytes(), max, colon) {
        return Ok(());
    }
    // The name is the client's: shown escaped (`{:?}`) and cut, never whole.
    let shown: String = name.chars().take(40).collect();
    let cut = if shown.len() < name.len() { "..." } else { "" };
    let colon = if colon { ", ':'" } else { "" };
    Err(Error::InvalidName(format!(
        "Invalid {kind} name {shown:?}{cut}: a {kind} name is 1 to {max} letters, digits, '-', '_', '.'{colon}, and not '.' or '..'"
    )))
}

/// Whether the bytes of a name are 1 to `max` of `[A-Za-z0-9._-]` (and `:` if `colon`),
/// and not only dots.
fn name_ok(bytes: impl Iterator<Item = u8>, max: usize, colon: bool) -> bool {
    let mut len = 0;
    let mut dots = 0;
    for b in bytes {
        len += 1;
        match b {
            b'.' => dots += 1,
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => {}
            b':' if colon => {}
            _ => return false,
        }
        if len > max {
            return false;
        }
    }
    // Only dots is `.`, `..`, or (to Windows) `..` again.
    len > 0 && dots < len
}

/// Whether keyless forwards requests of this method at all: the methods OpenAI's and
/// Azure's APIs use. Others (`CONNECT`, `TRACE`, made-up ones) get a 405 before routing.
pub fn method_allowed(method: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::POST,
        Method::DELETE,
        Method::PUT,
        Method::PATCH,
        Method::HEAD,
        Method::OPTIONS,
    ]
    .contains(method)
}

/// A bounded label for metrics and logs: the operation without ids.
pub fn label(inbound: &Inbound<'_>) -> &'static str {
    match inbound {
        Inbound::Health => "healthz",
        Inbound::Ready => "readyz",
        Inbound::Metrics => "metrics",
        Inbound::Usage => "usage",
        Inbound::Azure(_) => "azure",
        Inbound::Refused(_) => "refused",
        Inbound::Unknown => "unknown",
        Inbound::OpenAi(op) => {
            if let Some(known) = DEPLOYMENT_SCOPED.iter().find(|k| **k == op.path) {
                return known;
            }
            let root = op.path.split('/').next().unwrap_or("");
            KNOWN_ROOTS
                .iter()
                .find(|k| **k == root)
                .copied()
                .unwrap_or("other")
        }
    }
}

/// Characters to escape in a deployment name used as one path segment (RFC 3986 pchar).
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'?')
    .add(b'{')
    .add(b'}')
    .add(b'/')
    .add(b'%')
    .add(b'\\')
    .add(b'^')
    .add(b'|')
    .add(b'[')
    .add(b']');

/// Characters to escape in a query value.
const QUERY_VALUE: &AsciiSet = &SEGMENT.add(b'&').add(b'=').add(b'+');

/// The api-version the Responses API needs at least, in the deployments style.
const RESPONSES_API_VERSION: &str = "2025-04-01-preview";

/// Builds the upstream path and query for an OpenAI-style operation.
///
/// `base_path` is the endpoint's path (usually empty); `query` the client's query, if any.
/// The op path is already percent-encoded (it came from a valid request URI, and
/// [`classify`] refused every path trick) and is copied as it is; the deployment name
/// comes from the request body or the config, is checked with [`check_name`] when it goes
/// into the path (an [`Error::InvalidName`] otherwise), and is encoded here.
pub fn upstream_path(
    base_path: &str,
    style: ApiStyle,
    op: Op<'_>,
    deployment: Option<&str>,
    api_version: &str,
    query: Option<&str>,
) -> Result<String, Error> {
    let base = base_path.trim_end_matches('/');
    let mut out = String::with_capacity(base.len() + op.path.len() + 96);
    out.push_str(base);
    match style {
        ApiStyle::V1 => {
            out.push_str("/openai/v1/");
            out.push_str(op.path);
            if let Some(q) = query.filter(|q| !q.is_empty()) {
                out.push('?');
                out.push_str(q);
            }
        }
        ApiStyle::Deployments => {
            match deployment.filter(|_| op.is_deployment_scoped()) {
                Some(d) => {
                    check_name("deployment", d)?;
                    out.push_str("/openai/deployments/");
                    let _ = write!(out, "{}", utf8_percent_encode(d, SEGMENT));
                    out.push('/');
                }
                None => out.push_str("/openai/"),
            }
            out.push_str(op.path);
            out.push('?');
            let client_query = query.filter(|q| !q.is_empty());
            if let Some(q) = client_query {
                out.push_str(q);
            }
            // The client's own api-version wins; otherwise keyless adds its configured one.
            let has_version =
                client_query.is_some_and(|q| q.split('&').any(|kv| kv.starts_with("api-version=")));
            if !has_version {
                if client_query.is_some() {
                    out.push('&');
                }
                let version = if op.is_responses() && is_before(api_version, "2025-03-01-preview") {
                    // Responses exists only from 2025-03-01-preview on; the GA default
                    // (2024-10-21) would give a 404 there.
                    RESPONSES_API_VERSION
                } else {
                    api_version
                };
                out.push_str("api-version=");
                let _ = write!(out, "{}", utf8_percent_encode(version, QUERY_VALUE));
            }
        }
    }
    Ok(out)
}

/// Builds the upstream path and query for an Azure-style request: the endpoint's path,
/// then the client's path (which [`classify`] accepted as [`Inbound::Azure`]) and query,
/// as they came.
pub fn azure_path(base_path: &str, path: &str, query: Option<&str>) -> String {
    let base = base_path.trim_end_matches('/');
    let mut out = String::with_capacity(base.len() + path.len() + query.map_or(0, |q| q.len() + 1));
    out.push_str(base);
    out.push_str(path);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Whether dated api-version `a` is older than `b` (`YYYY-MM-DD[-preview]` compare by date).
fn is_before(a: &str, b: &str) -> bool {
    match (a.get(..10), b.get(..10)) {
        (Some(a), Some(b)) if a.as_bytes()[0].is_ascii_digit() => a < b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(path: &str) -> Op<'_> {
        Op { path }
    }

    /// [`upstream_path`] for names that pass [`check_name`].
    fn built(
        base: &str,
        style: ApiStyle,
        op: Op<'_>,
        deployment: Option<&str>,
        api_version: &str,
        query: Option<&str>,
    ) -> String {
        upstream_path(base, style, op, deployment, api_version, query).unwrap()
    }

    #[test]
    fn classifies_openai_paths_with_and_without_v1() {
        assert_eq!(
            classify("/v1/chat/completions"),
            Inbound::OpenAi(op("chat/completions"))
        );
        assert_eq!(
            classify("/chat/completions"),
            Inbound::OpenAi(op("chat/completions"))
        );
        assert_eq!(classify("/v1/models"), Inbound::OpenAi(op("models")));
        assert_eq!(
            classify("/models/gpt-4o"),
            Inbound::OpenAi(op("models/gpt-4o"))
        );
        assert_eq!(classify("/v1/responses/"), Inbound::OpenAi(op("responses")));
        assert_eq!(
            classify("/files/file-1/content"),
            Inbound::OpenAi(op("files/file-1/content"))
        );
    }

    #[test]
    fn classifies_azure_health_and_unknown() {
        assert_eq!(
            classify("/openai/deployments/d/chat/completions"),
            Inbound::Azure(Azure {
                path: "/openai/deployments/d/chat/completions",
                op: "chat/completions",
                deployment: Some("d".into()),
            })
        );
        assert_eq!(
            classify("/openai/v1/responses"),
            Inbound::Azure(Azure {
                path: "/openai/v1/responses",
                op: "responses",
                deployment: None,
            })
        );
        assert_eq!(classify("/healthz"), Inbound::Health);
        assert_eq!(classify("/readyz"), Inbound::Ready);
        assert_eq!(classify("/"), Inbound::Unknown);
        assert_eq!(classify("/v1/"), Inbound::Unknown);
        assert_eq!(classify("/admin"), Inbound::Unknown);
        assert_eq!(classify("/openaix"), Inbound::Unknown);
    }

    #[test]
    fn azure_paths_name_their_operation_and_deployment() {
        let named = |path| match classify(path) {
            Inbound::Azure(a) => (a.op, a.deployment),
            other => panic!("{path}: {other:?}"),
        };
        assert_eq!(
            named("/openai/deployments/gpt%2D4o/embeddings"),
            ("embeddings", Some(Cow::Owned("gpt-4o".to_owned())))
        );
        assert_eq!(
            named("/openai/deployments/gpt-4o"),
            ("", Some(Cow::Borrowed("gpt-4o")))
        );
        assert_eq!(named("/openai/responses"), ("responses", None));
        assert_eq!(named("/openai/deployments/"), ("", None));
        assert_eq!(named("/openai/deployments"), ("deployments", None));
        assert_eq!(named("/openai"), ("", None));
    }

    #[test]
    fn labels_are_bounded() {
        assert_eq!(label(&classify("/v1/chat/completions")), "chat/completions");
        assert_eq!(label(&classify("/v1/files/file-abc/content")), "files");
        assert_eq!(label(&classify("/v1/something-new")), "other");
        assert_eq!(
            label(&classify("/openai/deployments/x/embeddings")),
            "azure"
        );
        assert_eq!(label(&classify("/metrics")), "metrics");
    }

    fn refused(path: &str) -> bool {
        matches!(classify(path), Inbound::Refused(_))
    }

    #[test]
    fn dot_segments_are_refused() {
        for path in [
            "/v1/../deployments/x",
            "/v1/%2E%2E/x",
            "/v1/.%2e/x",
            "/v1/%2e./x",
            "/v1/files/.",
            "/v1/files/%2e",
            "/v1/files/%252e%252e/x",
            "/v1/files/.../x",
            "/v1/files/..%20/x",
            "/v1/files/..;x/y",
            "/v1/files/..%3bx/y",
            "/files/../x",
            "/openai/v1/../../x",
            "/openai/%2e%2e/x",
            "/admin/../openai",
        ] {
            assert!(refused(path), "{path}");
        }
        // Dots inside a segment are names, not segments.
        for path in [
            "/v1/files/a..b",
            "/v1/files/.a",
            "/v1/files/a.",
            "/openai/v1/x.y",
        ] {
            assert!(!refused(path), "{path}");
        }
        assert_eq!(classify("/v1//chat"), Inbound::Unknown);
    }

    #[test]
    fn backslashes_encoded_separators_and_controls_are_refused() {
        for path in [
            "/v1/files/..\\..\\x",
            "/openai/..\\..\\x",
            "/v1/files/a%5cb",
            "/v1/files/a%5Cb",
            "/v1/files/a%2fb",
            "/openai/v1/files/a%2Fb",
            "/chat/completions%2f..",
            "/v1/files/a%00",
            "/v1/files/a%1F",
            "/v1/files/a%7f",
            "/v1/files/a\u{1}",
            "/v1/files/a%252fb",
            "/v1/files/a%255Cb",
            "/v1/files/a%2500",
            "/v1/files/%c0%ae%c0%ae/x",
            "/v1/files/%c0%af",
            "/v1/files/%ff",
        ] {
            assert!(refused(path), "{path}");
        }
        for path in [
            "/v1/files/a%20b",
            "/v1/files/%C3%A9",
            "/v1/files/a%25b",
            "/v1/files/a%2",
        ] {
            assert!(!refused(path), "{path}");
        }
        assert_eq!(label(&classify("/v1/a%2fb")), "refused");
    }

    #[test]
    fn azure_deployment_segments_follow_the_name_rule() {
        for path in [
            "/openai/deployments//chat/completions",
            "/openai/deployments/a%20b/chat/completions",
            "/openai/deployments/a:b/embeddings",
            &format!("/openai/deployments/{}/embeddings", "d".repeat(65)),
        ] {
            assert!(refused(path), "{path}");
        }
        for path in [
            "/openai/deployments",
            "/openai/deployments/",
            "/openai/deployments/gpt-4o",
            "/openai/deployments/gpt-4o/chat/completions",
            "/openai/deployments/gpt%2D4o/chat/completions",
        ] {
            assert!(
                matches!(classify(path), Inbound::Azure(a) if a.path == path),
                "{path}"
            );
        }
    }

    #[test]
    fn v1_style_keeps_op_and_query() {
        assert_eq!(
            built(
                "",
                ApiStyle::V1,
                op("chat/completions"),
                Some("d"),
                "x",
                None
            ),
            "/openai/v1/chat/completions"
        );
        assert_eq!(
            built(
                "/pre",
                ApiStyle::V1,
                op("models"),
                None,
                "x",
                Some("limit=2")
            ),
            "/pre/openai/v1/models?limit=2"
        );
    }

    #[test]
    fn deployments_style_scopes_the_right_ops() {
        assert_eq!(
            built(
                "",
                ApiStyle::Deployments,
                op("chat/completions"),
                Some("prod-4o.v2_x"),
                "2024-10-21",
                None
            ),
            "/openai/deployments/prod-4o.v2_x/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            built(
                "",
                ApiStyle::Deployments,
                op("audio/transcriptions"),
                Some("whisper"),
                "2024-10-21",
                None
            ),
            "/openai/deployments/whisper/audio/transcriptions?api-version=2024-10-21"
        );
        assert_eq!(
            built(
                "",
                ApiStyle::Deployments,
                op("models"),
                Some("ignored"),
                "2024-10-21",
                None
            ),
            "/openai/models?api-version=2024-10-21"
        );
        assert_eq!(
            built(
                "",
                ApiStyle::Deployments,
                op("files"),
                None,
                "2024-10-21",
                Some("purpose=batch")
            ),
            "/openai/files?purpose=batch&api-version=2024-10-21"
        );
    }

    #[test]
    fn deployment_names_that_are_path_tricks_are_refused() {
        for bad in [
            "..", ".", "", "...", "../x?y#z", "a/b", "prod 4o", "a%2fb", "a\\b",
        ] {
            let err = upstream_path(
                "",
                ApiStyle::Deployments,
                op("embeddings"),
                Some(bad),
                "v",
                None,
            )
            .unwrap_err();
            assert!(matches!(err, Error::InvalidName(_)), "{bad}: {err}");
        }
        let long = "a".repeat(DEPLOYMENT_NAME_MAX + 1);
        assert!(check_name("deployment", &long).is_err());
        assert!(check_name("deployment", &long[1..]).is_ok());
        // Not in the path: the op is not deployment-scoped, the name is not used.
        assert!(
            upstream_path(
                "",
                ApiStyle::Deployments,
                op("files"),
                Some(".."),
                "v",
                None
            )
            .is_ok()
        );
    }

    #[test]
    fn names_follow_azures_rule() {
        for good in ["gpt-4o", "prod_4o.v2", "a", "a.", ".a", "A-1"] {
            assert!(check_name("deployment", good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "....", "a b", "a/b", "a:b", "é", "a\0"] {
            assert!(check_name("deployment", bad).is_err(), "{bad:?}");
        }
        assert!(check_name("model", "ft:gpt-4o-mini:org::abc").is_ok());
        assert!(check_name("model", &"m".repeat(MODEL_NAME_MAX)).is_ok());
        assert!(check_name("model", &"m".repeat(MODEL_NAME_MAX + 1)).is_err());
        for bad in ["", ".", "..", "a/b", "a?b"] {
            assert!(check_name("model", bad).is_err(), "{bad:?}");
        }
        let message = check_name("model", &format!("{}\n", "x".repeat(300)))
            .unwrap_err()
            .to_string();
        assert!(message.contains("Invalid model name"), "{message}");
        assert!(message.len() < 200, "the name is cut: {message}");
    }

    #[test]
    fn methods_outside_the_apis_are_not_allowed() {
        for ok in ["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"] {
            assert!(method_allowed(&ok.parse().unwrap()), "{ok}");
        }
        for no in ["CONNECT", "TRACE", "PROPFIND", "BREW"] {
            assert!(!method_allowed(&no.parse().unwrap()), "{no}");
        }
    }

    #[test]
    fn azure_paths_keep_path_and_query() {
        assert_eq!(
            azure_path("/pre", "/openai/v1/models", Some("a=1")),
            "/pre/openai/v1/models?a=1"
        );
        assert_eq!(azure_path("", "/openai/models", None), "/openai/models");
    }

    #[test]
    fn clients_api_version_wins() {
        assert_eq!(
            built(
                "",
                ApiStyle::Deployments,
                op("models"),
                None,
                "2024-10-21",
                Some("api-version=2025-01-01")
            ),
            "/openai/models?api-version=2025-01-01"
        );
    }

    #[test]
    fn responses_get_a_version_that_has_them() {
        assert_eq!(
            built(
                "",
                ApiStyle::Deployments,
                op("responses"),
                Some("d"),
                "2024-10-21",
                None
            ),
            "/openai/responses?api-version=2025-04-01-preview"
        );
        assert_eq!(
            built(
                "",
                ApiStyle::Deployments,
                op("responses"),
                Some("d"),
                "2025-05-01-preview",
                None
            ),
            "/openai/responses?api-version=2025-05-01-preview"
        );
        assert_eq!(
            built(
                "",
                ApiStyle::Deployments,
                op("responses"),
                None,
                "preview",
                None
            ),
            "/openai/responses?api-version=preview"
        );
    }

    /// Generated inputs: no inbound path, model or deployment, in either API style and
    /// with any client query, builds an upstream URL outside `{endpoint}/openai/` or
    /// adds a query parameter.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Pieces that path tricks are made of, and ordinary ones.
        fn piece() -> impl Strategy<Value = String> {
            prop_oneof![
                3 => "[a-zA-Z0-9_-]{1,6}",
                2 => Just("/".to_owned()),
                2 => Just(".".to_owned()),
                1 => Just("..".to_owned()),
                1 => prop::sample::select(vec![
                    "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "%25", "%252e", "%252f", "%00",
                    "%20", "%3b", ";", "%c0%ae", "%c0%af", "%e2%80%ae", "%3f", "%23", "%",
                    "\\", "?", "#", "&", "=", "é", "€", "\u{1}", "\u{7f}", " ", ":",
                ])
                .prop_map(str::to_owned),
                1 => any::<char>().prop_map(String::from),
            ]
        }

        /// A request target (path and query) as a client could send one.
        fn target() -> impl Strategy<Value = String> {
            let prefix = prop::sample::select(vec![
                "/v1/",
                "/",
                "/chat/",
                "/files/",
                "/v1/files/",
                "/openai/",
                "/openai/v1/",
                "/openai/deployments/",
                "",
            ]);
            (prefix, prop::collection::vec(piece(), 0..14), query()).prop_map(
                |(prefix, pieces, query)| match query {
                    Some(q) => format!("{prefix}{}?{q}", pieces.concat()),
                    None => format!("{prefix}{}", pieces.concat()),
                },
            )
        }

        /// A model or deployment name: tricks, Azure names, anything.
        fn name() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-zA-Z0-9._-]{1,70}",
                prop::collection::vec(piece(), 0..6).prop_map(|p| p.concat()),
                any::<String>(),
            ]
        }

        /// A client query (pieces may hold `?` and `#` too).
        fn query() -> impl Strategy<Value = Option<String>> {
            prop::option::of(prop::collection::vec(piece(), 0..8).prop_map(|p| p.concat()))
        }

        fn style() -> impl Strategy<Value = ApiStyle> {
            prop_oneof![Just(ApiStyle::V1), Just(ApiStyle::Deployments)]
        }

        fn base() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec!["", "/pre", "/a/b/"])
        }

        /// The parameters of a query: `&`-separated, empty ones left out.
        fn params(query: &str) -> Vec<&str> {
            query.split('&').filter(|p| !p.is_empty()).collect()
        }

        /// No segment of `path` is `.` or `..`, and no `\`, even after one or two decodes.
        fn no_climbing(path: &str) -> Result<(), TestCaseError> {
            let once = percent_decode_str(path).decode_utf8_lossy().into_owned();
            let twice = percent_decode_str(&once).decode_utf8_lossy().into_owned();
            for form in [path, once.as_str(), twice.as_str()] {
                prop_assert!(!form.contains('\\'), "{path} -> {form}");
                prop_assert!(
                    !form.split('/').any(|s| s == "." || s == ".."),
                    "{path} -> {form}"
                );
            }
            Ok(())
        }

        /// What keyless builds parses back as the same path and query (`Endpoint::uri`
        /// uses `PathAndQuery::from_maybe_shared`).
        fn parses_back(built: &str) -> Result<(), TestCaseError> {
            let pq =
                http::uri::PathAndQuery::from_maybe_shared(bytes::Bytes::from(built.to_owned()));
            prop_assert!(pq.is_ok(), "{built}: {pq:?}");
            let pq = pq.map_err(|e| TestCaseError::fail(e.to_string()))?;
            let (path, query) = match built.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (built, None),
            };
            prop_assert_eq!(pq.path(), path);
            prop_assert_eq!(pq.query(), query);
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]

            #[test]
            fn upstream_urls_stay_under_openai(
                target in target(),
                deployment in name(),
                style in style(),
                base in base(),
            ) {
                // Only what parses as a request target reaches `classify`.
                let Ok(pq) = http::uri::PathAndQuery::try_from(target.as_str()) else {
                    return Ok(());
                };
                let under = format!("{}/openai", base.trim_end_matches('/'));
                match classify(pq.path()) {
                    Inbound::OpenAi(op) => {
                        let Ok(built) = upstream_path(
                            base, style, op, Some(&deployment), "2024-10-21", pq.query(),
                        ) else {
                            // Refused only for a name Azure could not have, in the path.
                            prop_assert!(check_name("deployment", &deployment).is_err());
                            prop_assert_eq!(style, ApiStyle::Deployments);
                            return Ok(());
                        };
                        prop_assert!(built.starts_with(&format!("{under}/")), "{built}");
                        let (path, query) = built.split_once('?').unwrap_or((&built, ""));
                        no_climbing(path)?;
                        let mut expected = params(pq.query().unwrap_or(""));
                        let got = params(query);
                        if got.len() == expected.len() + 1 {
                            prop_assert!(got[got.len() - 1].starts_with("api-version="), "{built}");
                            expected.push(got[got.len() - 1]);
                        }
                        prop_assert_eq!(got, expected, "{}", built);
                        if style == ApiStyle::Deployments && op.is_deployment_scoped() {
                            let segment = path[under.len()..].split('/').nth(2).unwrap_or("");
                            prop_assert_eq!(segment, deployment.as_str());
                        }
                        parses_back(&built)?;
                    }
                    Inbound::Azure(Azure { path, .. }) => {
                        let built = azure_path(base, path, pq.query());
                        prop_assert!(
                            built == under || built.starts_with(&format!("{under}/")),
                            "{built}"
                        );
                        let (path, query) = built.split_once('?').unwrap_or((&built, ""));
                        no_climbing(path)?;
                        prop_assert_eq!(query, pq.query().unwrap_or(""));
                        if let Some(rest) = path[under.len()..].strip_prefix("/deployments/") {
                            let d = rest.split('/').next().unwrap_or("");
                            if !rest.is_empty() {
                                let d = percent_decode_str(d).decode_utf8_lossy();
                                prop_assert!(check_name("deployment", &d).is_ok(), "{built}");
                            }
                        }
                        parses_back(&built)?;
                    }
                    Inbound::Refused(_) | Inbound::Unknown => {}
                    other => prop_assert!(false, "{target}: {other:?}"),
                }
            }

            #[test]
            fn a_model_name_that_passes_is_safe_in_a_path(model in name()) {
                if check_name("model", &model).is_ok() {
                    prop_assert!(model.len() <= MODEL_NAME_MAX);
                    prop_assert!(model.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)));
                    prop_assert!(model.bytes().any(|b| b != b'.'));
                }
                if check_name("deployment", &model).is_ok() {
                    prop_assert!(check_name("model", &model).is_ok());
                    prop_assert!(model.len() <= DEPLOYMENT_NAME_MAX);
                    prop_assert!(!model.contains(':'));
                }
            }
        }
    }
}
