//! azure_identity's errors as one readable line, secrets scrubbed.

use std::path::Path;

/// Turns an azure_identity error into one readable line: without the "X authentication
/// failed." prefix, with the HTTP status and the root cause azure_core keeps behind its
/// context messages, and with every string in `scrub` (secrets) replaced.
pub(super) fn explain(err: &azure_core::Error, scrub: &[&str]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut link = None;
    let mut status = None;
    // azure_core's Display shows only the outermost context message: walk the causes for
    // the HTTP status and the root cause (connection refused, timed out, ...) too.
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(core) = e.downcast_ref::<azure_core::Error>()
            && let azure_core::error::ErrorKind::HttpResponse { status: s, .. } = core.kind()
        {
            status.get_or_insert(*s);
        }
        let (text, troubleshoot) = strip_boilerplate(&e.to_string());
        link = link.or(troubleshoot);
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    let mut message = parts.join(": ");
    if let Some(status) = status {
        message = format!("identity endpoint answered HTTP {status}: {message}");
    }
    if let Some(link) = link {
        message.push_str(&format!(" (see {link})"));
    }
    redact(message, scrub)
}

/// Splits azure_identity's "`<Credential>` authentication failed. `<why>`\nTo troubleshoot,
/// visit `<link>`" into `<why>` (on one line) and the link.
fn strip_boilerplate(text: &str) -> (String, Option<String>) {
    const TROUBLESHOOT: &str = "To troubleshoot, visit ";
    let (body, link) = match text.split_once(TROUBLESHOOT) {
        Some((body, link)) => (body, Some(link.trim().to_owned())),
        None => (text, None),
    };
    let body = match body.split_once(" authentication failed.") {
        Some((prefix, rest)) if !prefix.trim().contains(' ') => rest,
        _ => body,
    };
    (one_line(body), link)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Replaces every occurrence of each secret (long enough to be one) with `<redacted>`.
fn redact(mut message: String, secrets: &[&str]) -> String {
    for secret in secrets {
        if secret.len() >= 8 && message.contains(secret) {
            message = message.replace(secret, "<redacted>");
        }
    }
    message
}

/// "cannot read PATH: why", for a certificate or token file.
pub(super) fn read_error(path: &Path, err: &std::io::Error) -> String {
    format!("cannot read {}: {err}", path.display())
}
