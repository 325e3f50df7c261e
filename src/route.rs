//! Inbound path -> what to do with it, and OpenAI operation -> Azure upstream path.
//! Pure functions: no I/O, no allocation beyond the upstream path string.

use crate::config::ApiStyle;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
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
    /// An OpenAI-style operation, e.g. `chat/completions` or `files/file-1/content`,
    /// as received (still percent-encoded), without leading `/v1/`.
    OpenAi(Op<'a>),
    /// An Azure-style path (`/openai/...`), forwarded as it is.
    Azure(&'a str),
    /// Nothing keyless serves.
    Unknown,
}

/// An OpenAI operation path and what keyless knows about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op<'a> {
    /// The path below `/v1/`, percent-encoded as received.
    pub path: &'a str,
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
pub fn classify(path: &str) -> Inbound<'_> {
    match path {
        "/healthz" => return Inbound::Health,
        "/readyz" => return Inbound::Ready,
        "/metrics" => return Inbound::Metrics,
        _ => {}
    }
    if path == "/openai" || path.starts_with("/openai/") {
        return if has_dot_segment(path) {
            Inbound::Unknown
        } else {
            Inbound::Azure(path)
        };
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
    if op.is_empty() || has_dot_segment(op) {
        return Inbound::Unknown;
    }
    Inbound::OpenAi(Op { path: op })
}

/// `.` and `..` segments would let a client climb out of `/openai/v1/` on the upstream.
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|s| {
        s == "."
            || s == ".."
            || s.eq_ignore_ascii_case("%2e")
            || s.eq_ignore_ascii_case("%2e%2e")
            || s.eq_ignore_ascii_case(".%2e")
            || s.eq_ignore_ascii_case("%2e.")
    })
}

/// A bounded label for metrics and logs: the operation without ids.
pub fn label(inbound: &Inbound<'_>) -> &'static str {
    match inbound {
        Inbound::Health => "healthz",
        Inbound::Ready => "readyz",
        Inbound::Metrics => "metrics",
        Inbound::Azure(_) => "azure",
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
/// The op path is already percent-encoded (it came from a valid request URI) and is copied
/// as it is; the deployment name comes from the request body and is encoded here.
pub fn upstream_path(
    base_path: &str,
    style: ApiStyle,
    op: Op<'_>,
    deployment: Option<&str>,
    api_version: &str,
    query: Option<&str>,
) -> String {
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
            Inbound::Azure("/openai/deployments/d/chat/completions")
        );
        assert_eq!(
            classify("/openai/v1/responses"),
            Inbound::Azure("/openai/v1/responses")
        );
        assert_eq!(classify("/healthz"), Inbound::Health);
        assert_eq!(classify("/readyz"), Inbound::Ready);
        assert_eq!(classify("/"), Inbound::Unknown);
        assert_eq!(classify("/v1/"), Inbound::Unknown);
        assert_eq!(classify("/admin"), Inbound::Unknown);
        assert_eq!(classify("/openaix"), Inbound::Unknown);
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

    #[test]
    fn dot_segments_are_refused() {
        assert_eq!(classify("/v1/../deployments/x"), Inbound::Unknown);
        assert_eq!(classify("/v1/%2E%2E/x"), Inbound::Unknown);
        assert_eq!(classify("/openai/v1/../../x"), Inbound::Unknown);
        assert_eq!(classify("/v1//chat"), Inbound::Unknown);
    }

    #[test]
    fn v1_style_keeps_op_and_query() {
        assert_eq!(
            upstream_path(
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
            upstream_path(
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
            upstream_path(
                "",
                ApiStyle::Deployments,
                op("chat/completions"),
                Some("prod 4o"),
                "2024-10-21",
                None
            ),
            "/openai/deployments/prod%204o/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            upstream_path(
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
            upstream_path(
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
            upstream_path(
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
    fn deployment_name_cannot_escape_its_segment() {
        let p = upstream_path(
            "",
            ApiStyle::Deployments,
            op("embeddings"),
            Some("../x?y#z"),
            "v",
            None,
        );
        assert_eq!(
            p,
            "/openai/deployments/..%2Fx%3Fy%23z/embeddings?api-version=v"
        );
    }

    #[test]
    fn clients_api_version_wins() {
        assert_eq!(
            upstream_path(
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
            upstream_path(
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
            upstream_path(
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
            upstream_path(
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
}
