//! Explaining what happened: an answer's status, headers and body, or a transport error,
//! turned into a verdict, a summary and advice.

use super::report::Verdict;
use super::run::host_port;
use crate::auth::credential::TokenInfo;
use crate::config::ApiStyle;
use http::{HeaderMap, StatusCode, header};
use std::fmt::Write as _;
use std::time::SystemTime;
use url::Url;

/// The role Azure OpenAI requires of an Entra identity to call inference APIs.
pub const OPENAI_USER_ROLE: &str = "Cognitive Services OpenAI User";
/// Models listed when the call succeeds.
const MODELS_SHOWN: usize = 5;
/// Longest quote of Azure's own error message.
const MAX_QUOTE: usize = 400;

/// What [`explain_status`] needs to know besides the answer.
pub(super) struct Context<'a> {
    pub(super) endpoint: &'a Url,
    pub(super) api: ApiStyle,
    pub(super) api_version: &'a str,
    pub(super) scope: &'a str,
    pub(super) token: &'a TokenInfo,
}

pub(super) struct Explained {
    pub(super) verdict: Verdict,
    pub(super) summary: String,
    pub(super) advice: Vec<String>,
    pub(super) azure_message: Option<String>,
    pub(super) models: Vec<String>,
}

/// Azure OpenAI's scopes, by cloud, with the audience their tokens carry.
const KNOWN_SCOPES: &[(&str, &str)] = &[
    (
        "https://cognitiveservices.azure.com/.default",
        "https://cognitiveservices.azure.com",
    ),
    ("https://ai.azure.com/.default", "https://ai.azure.com"),
    (
        "https://cognitiveservices.azure.us/.default",
        "https://cognitiveservices.azure.us",
    ),
    (
        "https://cognitiveservices.azure.cn/.default",
        "https://cognitiveservices.azure.cn",
    ),
];

/// The first-party app id of Cognitive Services, which some tokens carry as `aud`.
const COGNITIVE_SERVICES_APP_ID: &str = "7d312290-28c8-473c-a0ed-8e53749b6d6d";

pub(super) fn explain_status(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    cx: &Context<'_>,
) -> Explained {
    let azure_message = azure_message(body);
    let mut out = Explained {
        verdict: Verdict::UnexpectedStatus,
        summary: String::new(),
        advice: Vec::new(),
        azure_message: azure_message.clone(),
        models: Vec::new(),
    };
    let who = principal(cx.token);
    match status.as_u16() {
        200..=299 => {
            out.verdict = Verdict::Ok;
            out.summary = "Azure OpenAI accepted the token.".to_owned();
            out.azure_message = None;
            out.models = model_ids(body);
        }
        401 => {
            out.verdict = Verdict::TokenRejected;
            out.summary = "Azure OpenAI rejected the token (wrong scope, audience or tenant, or \
                           an expired token)."
                .to_owned();
            out.advice = advise_401(headers, cx);
        }
        403 => {
            let message = azure_message.as_deref().unwrap_or("").to_ascii_lowercase();
            let network = [
                "virtual network",
                "firewall",
                "private endpoint",
                "private link",
                "public access",
                "ip address",
                "not from an approved",
            ]
            .iter()
            .any(|k| message.contains(k));
            if network {
                out.verdict = Verdict::NetworkBlocked;
                out.summary =
                    "The resource's network rules refuse this machine (HTTP 403).".to_owned();
                out.advice.push(
                    "The resource accepts calls only from allowed networks. Add this machine's \
                     public IP address to its firewall (Networking > Firewalls and virtual \
                     networks), or reach it through its private endpoint (check that the host \
                     name resolves to the private IP address here)."
                        .to_owned(),
                );
            } else {
                out.verdict = Verdict::MissingRole;
                out.summary = format!(
                    "The token is valid, but {who} has no role assignment that allows calling \
                     Azure OpenAI on this resource: it needs \"{OPENAI_USER_ROLE}\"."
                );
                out.advice.push(advise_role(cx));
            }
        }
        404 => {
            out.verdict = Verdict::NotFound;
            out.summary = format!(
                "{} answered 404 Not Found: it is not an Azure OpenAI resource, or it does not \
                 serve this path style.",
                host_port(cx.endpoint)
            );
            out.advice = advise_404(cx);
        }
        429 => {
            out.verdict = Verdict::RateLimited;
            out.summary = "Azure OpenAI accepted the token but is rate limiting this resource \
                           right now (HTTP 429); keyless retries such answers."
                .to_owned();
        }
        400 => {
            out.summary = "Azure OpenAI refused the request as malformed (HTTP 400).".to_owned();
            if cx.api == ApiStyle::Deployments {
                out.advice.push(format!(
                    "The api-version {} may not exist for this resource: try \
                     --api-version 2024-10-21 or --api v1.",
                    cx.api_version
                ));
            }
        }
        500..=599 => {
            out.verdict = Verdict::ServerError;
            out.summary = format!(
                "Azure OpenAI answered HTTP {}: a problem on Azure's side (or on a gateway in \
                 between). The token may well be fine; try again later.",
                status.as_u16()
            );
        }
        300..=399 => {
            out.summary = format!(
                "The endpoint answered with a redirect (HTTP {}); Azure OpenAI never \
                 redirects, so this is not an Azure OpenAI endpoint (a sign-in page or portal?).",
                status.as_u16()
            );
            if let Some(location) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) {
                out.advice.push(format!("It redirects to {location}"));
            }
        }
        other => {
            out.summary =
                format!("Azure OpenAI answered HTTP {other}, which keyless did not expect.");
        }
    }
    out
}

/// "object id X (name)", or a description when the token does not say.
pub(super) fn principal(token: &TokenInfo) -> String {
    match (&token.object_id, &token.principal_name, &token.app_id) {
        (Some(oid), Some(name), _) => format!("the identity {name} (object id {oid})"),
        (Some(oid), None, Some(app)) => format!("the identity with object id {oid} (app id {app})"),
        (Some(oid), None, None) => format!("the identity with object id {oid}"),
        (None, _, _) => "the identity (object id unknown: the token is not a JWT)".to_owned(),
    }
}

fn advise_role(cx: &Context<'_>) -> String {
    let assignee = cx
        .token
        .object_id
        .clone()
        .unwrap_or_else(|| "<object id>".to_owned());
    let mut text = format!(
        "Grant the role (as an Owner or User Access Administrator of the resource):\n\n  \
         az role assignment create --assignee {assignee} \\\n    --role \"{OPENAI_USER_ROLE}\" \
         \\\n    --scope <resource id>\n\n"
    );
    // The endpoint does not reveal the subscription and resource group; the subdomain is
    // the resource's custom subdomain, which az can look up.
    match subdomain(cx.endpoint) {
        Some(name) => {
            let _ = write!(
                text,
                "keyless cannot tell the resource id from the endpoint; look it up with:\n\n  \
                 az cognitiveservices account list \\\n    --query \
                 \"[?properties.customSubDomainName=='{name}'].id\" -o tsv\n"
            );
        }
        None => text.push_str(
            "keyless cannot tell the resource id from the endpoint: copy it from the \
             resource's Properties page in the Azure portal \
             (/subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.CognitiveServices/\
             accounts/<name>).\n",
        ),
    }
    if cx.token.object_id.is_none() {
        text.push_str(
            "\nThe object id could not be read from the token. For a user: `az ad \
             signed-in-user show --query id -o tsv`; for an app or a managed identity: `az ad \
             sp show --id <client id> --query id -o tsv`.\n",
        );
    }
    text.push_str(
        "\nA new role assignment can take a few minutes to apply. Owner and Contributor alone \
         do not allow inference calls.",
    );
    text
}

/// The resource name in `https://<name>.openai.azure.com` (and the other Azure hosts).
fn subdomain(endpoint: &Url) -> Option<String> {
    let host = endpoint.host_str()?.to_ascii_lowercase();
    const SUFFIXES: &[&str] = &[
        ".openai.azure.com",
        ".cognitiveservices.azure.com",
        ".services.ai.azure.com",
        ".openai.azure.us",
        ".cognitiveservices.azure.us",
        ".openai.azure.cn",
        ".cognitiveservices.azure.cn",
    ];
    SUFFIXES
        .iter()
        .find_map(|suffix| host.strip_suffix(suffix))
        .filter(|name| !name.is_empty() && !name.contains('.'))
        .map(str::to_owned)
}

fn advise_401(headers: &HeaderMap, cx: &Context<'_>) -> Vec<String> {
    let mut advice = Vec::new();
    let audience = cx.token.audience.as_deref();
    let expected = KNOWN_SCOPES
        .iter()
        .find(|(scope, _)| scope.eq_ignore_ascii_case(cx.scope))
        .map(|(_, aud)| *aud);
    let shown = audience.unwrap_or("unknown (the token is not a JWT)");
    advice.push(format!(
        "The token was requested for scope {} and carries audience {shown}.",
        cx.scope
    ));
    match expected {
        None => advice.push(format!(
            "{} is not an Azure OpenAI scope: use --scope \
             https://cognitiveservices.azure.com/.default (Azure Government: \
             https://cognitiveservices.azure.us/.default; China: \
             https://cognitiveservices.azure.cn/.default).",
            cx.scope
        )),
        Some(expected) => {
            if let Some(aud) = audience {
                let matches = aud.split(' ').any(|a| {
                    a.trim_end_matches('/').eq_ignore_ascii_case(expected)
                        || a.eq_ignore_ascii_case(COGNITIVE_SERVICES_APP_ID)
                });
                if !matches {
                    advice.push(format!(
                        "The audience does not match the scope (expected {expected}): the \
                         credential handed out a token for another resource."
                    ));
                }
            }
        }
    }
    // A resource accepts tokens from its own tenant only. Its WWW-Authenticate header may
    // name that tenant.
    let resource_tenant = headers
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(tenant_in_challenge);
    match (&cx.token.tenant_id, resource_tenant) {
        (Some(ours), Some(theirs)) if !ours.eq_ignore_ascii_case(&theirs) => advice.push(format!(
            "Wrong tenant: the token was issued by tenant {ours}, but the resource belongs to \
             tenant {theirs}. Pass --tenant-id {theirs} (with the Azure CLI: az login --tenant \
             {theirs})."
        )),
        (Some(ours), _) => advice.push(format!(
            "The token was issued by tenant {ours}. A resource accepts tokens only from its own \
             tenant: if it lives in another one, pass --tenant-id <its tenant id> (with the \
             Azure CLI: az login --tenant <its tenant id>)."
        )),
        (None, Some(theirs)) => advice.push(format!(
            "The resource belongs to tenant {theirs}: make sure the credential signs in there \
             (--tenant-id {theirs})."
        )),
        (None, None) => advice.push(
            "The token's tenant is unknown (it is not a JWT). A resource accepts tokens only \
             from its own tenant: pass --tenant-id <its tenant id> if it lives in another one."
                .to_owned(),
        ),
    }
    if cx.token.expires_at < SystemTime::now() {
        advice.push(
            "The token has already expired by its own expiry time: check this machine's clock."
                .to_owned(),
        );
    }
    if cx
        .endpoint
        .host_str()
        .is_some_and(|h| h.ends_with(".api.cognitive.microsoft.com"))
    {
        advice.push(
            "Entra ID tokens need the resource's own endpoint \
             (https://<resource>.openai.azure.com), not a regional one."
                .to_owned(),
        );
    }
    advice
}

/// The tenant id in a `WWW-Authenticate: Bearer authorization_uri="https://login.../<tenant>"`.
fn tenant_in_challenge(challenge: &str) -> Option<String> {
    let start = challenge.find("authorization_uri=\"")? + "authorization_uri=\"".len();
    let rest = &challenge[start..];
    let uri = &rest[..rest.find('"')?];
    let url = Url::parse(uri).ok()?;
    let tenant = url.path_segments()?.find(|s| !s.is_empty())?;
    Some(tenant.to_owned())
}

fn advise_404(cx: &Context<'_>) -> Vec<String> {
    let mut advice = vec![format!(
        "Check the endpoint: it should be the resource's \"Endpoint\" from the Azure portal \
         (Keys and Endpoint), such as https://<resource>.openai.azure.com; {} was used.",
        cx.endpoint
    )];
    match cx.api {
        ApiStyle::V1 => advice.push(
            "keyless calls the v1 API (/openai/v1/...) by default; if this resource or a \
             gateway in front of it does not serve it, try --api deployments."
                .to_owned(),
        ),
        ApiStyle::Deployments => advice.push(format!(
            "With --api deployments keyless calls /openai/...?api-version={}; Azure answers 404 \
             for an api-version it does not know: try --api-version 2024-10-21, or --api v1.",
            cx.api_version
        )),
    }
    let path = cx.endpoint.path().trim_matches('/');
    if !path.is_empty() {
        advice.push(format!(
            "The endpoint has a path (/{path}): keyless appends /openai/... to it. Leave it out \
             unless a gateway needs it."
        ));
    }
    advice
}

/// Azure's `{"error":{"message":...}}` (or `{"message":...}`), on one line, capped.
pub(super) fn azure_message(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let message = value
        .pointer("/error/message")
        .or_else(|| value.get("message"))
        .and_then(|m| m.as_str())?;
    let mut line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.len() > MAX_QUOTE {
        let mut cut = MAX_QUOTE;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push_str("...");
    }
    (!line.is_empty()).then_some(line)
}

/// The first few `data[].id` of a models list, and how many more there are.
fn model_ids(body: &[u8]) -> Vec<String> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let Some(data) = value.get("data").and_then(|d| d.as_array()) else {
        return Vec::new();
    };
    let mut ids: Vec<String> = data
        .iter()
        .filter_map(|m| m.get("id").and_then(|id| id.as_str()))
        .take(MODELS_SHOWN)
        .map(str::to_owned)
        .collect();
    if data.len() > MODELS_SHOWN {
        ids.push(format!("and {} more", data.len() - MODELS_SHOWN));
    }
    ids
}

/// Names a transport failure: DNS, connect, TLS, or other, with the host.
pub(super) fn explain_transport(
    err: &(dyn std::error::Error + 'static),
    host: &str,
    endpoint: &Url,
) -> (Verdict, String, Vec<String>) {
    let chain = crate::error::causes(err);
    let text = chain.join(": ");
    if let Some(tls) = find_cause::<rustls::Error>(err) {
        let (why, advice) = explain_tls(tls, endpoint);
        return (
            Verdict::Tls,
            format!("TLS handshake with {host} failed: {why} ({tls})."),
            advice,
        );
    }
    if chain.iter().any(|c| c == "dns error") {
        let name = endpoint.host_str().unwrap_or(host);
        return (
            Verdict::Dns,
            format!("DNS: cannot resolve {name} ({text})."),
            vec![format!(
                "Check the resource name in the endpoint (https://<resource>.openai.azure.com). \
                 Behind a private endpoint, {name} must resolve through the private DNS zone \
                 (privatelink.openai.azure.com) from this machine."
            )],
        );
    }
    let io_kind = find_cause::<std::io::Error>(err).map(std::io::Error::kind);
    let (verdict, summary) = match io_kind {
        Some(std::io::ErrorKind::ConnectionRefused) => (
            Verdict::Connect,
            format!("Connection refused by {host}: nothing listens there ({text})."),
        ),
        Some(std::io::ErrorKind::TimedOut) => (
            Verdict::Connect,
            format!("Connecting to {host} timed out: a firewall may drop the traffic ({text})."),
        ),
        Some(
            std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::UnexpectedEof,
        ) => (
            Verdict::Connect,
            format!("{host} closed the connection ({text})."),
        ),
        Some(
            std::io::ErrorKind::HostUnreachable
            | std::io::ErrorKind::NetworkUnreachable
            | std::io::ErrorKind::AddrNotAvailable,
        ) => (
            Verdict::Connect,
            format!("{host} is unreachable from this machine ({text})."),
        ),
        _ if chain.iter().any(|c| c.contains("connect")) => (
            Verdict::Connect,
            format!("Cannot connect to {host} ({text})."),
        ),
        _ => (
            Verdict::Unreachable,
            format!("The request to {host} failed ({text})."),
        ),
    };
    (
        verdict,
        summary,
        vec![
            "Check the endpoint URL and that this machine can reach it (a proxy: keyless \
             connects directly; a firewall or private endpoint)."
                .to_owned(),
        ],
    )
}

fn explain_tls(err: &rustls::Error, endpoint: &Url) -> (&'static str, Vec<String>) {
    use rustls::CertificateError as C;
    let inspecting = "A TLS-inspecting proxy or firewall re-signs the traffic? Trust its CA \
                      certificate with --ca-file <PEM file> (or add it to the system trust \
                      store)."
        .to_owned();
    match err {
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => (
            "the server's certificate is not signed by a trusted CA",
            vec![inspecting],
        ),
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => (
            "the server's certificate is not valid for this host name",
            vec![format!(
                "The endpoint's host name ({}) does not match the certificate: use the \
                 resource's own endpoint, not an IP address or an alias.",
                endpoint.host_str().unwrap_or("?")
            )],
        ),
        rustls::Error::InvalidCertificate(
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. },
        ) => (
            "the server's certificate is expired or not yet valid",
            vec!["Check this machine's clock.".to_owned(), inspecting],
        ),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => (
            "the server does not speak TLS",
            vec!["Is the endpoint plain http? Azure OpenAI endpoints are https.".to_owned()],
        ),
        _ => ("see the error", vec![inspecting]),
    }
}

fn find_cause<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    if let Some(t) = err.downcast_ref::<T>() {
        return Some(t);
    }
    if let Some(io) = err.downcast_ref::<std::io::Error>()
        && let Some(inner) = io.get_ref()
        && let Some(t) = find_cause::<T>(inner)
    {
        return Some(t);
    }
    err.source().and_then(find_cause::<T>)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use std::time::UNIX_EPOCH;

    fn info(object_id: Option<&str>, tenant: Option<&str>, audience: Option<&str>) -> TokenInfo {
        TokenInfo {
            tenant_id: tenant.map(str::to_owned),
            object_id: object_id.map(str::to_owned),
            app_id: None,
            principal_name: None,
            audience: audience.map(str::to_owned),
            expires_at: SystemTime::now() + Duration::from_secs(3600),
        }
    }

    fn explain(status: u16, headers: &[(&str, &str)], body: &str, cx: &Context<'_>) -> Explained {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        explain_status(
            StatusCode::from_u16(status).unwrap(),
            &map,
            body.as_bytes(),
            cx,
        )
    }

    fn context<'a>(endpoint: &'a Url, token: &'a TokenInfo, scope: &'a str) -> Context<'a> {
        Context {
            endpoint,
            api: ApiStyle::V1,
            api_version: "2024-10-21",
            scope,
            token,
        }
    }

    const SCOPE: &str = "https://cognitiveservices.azure.com/.default";
    #[test]
    fn a_403_names_the_role_the_object_id_and_how_to_find_the_resource() {
        let endpoint = Url::parse("https://my-res.openai.azure.com/").unwrap();
        let token = info(
            Some("oid-1"),
            Some("tid-1"),
            Some("https://cognitiveservices.azure.com"),
        );
        let out = explain(
            403,
            &[],
            r#"{"error":{"code":"PermissionDenied","message":"The principal `oid-1` lacks the required data action"}}"#,
            &context(&endpoint, &token, SCOPE),
        );
        assert_eq!(out.verdict, Verdict::MissingRole);
        assert!(out.summary.contains(OPENAI_USER_ROLE), "{}", out.summary);
        assert!(out.summary.contains("oid-1"), "{}", out.summary);
        let advice = out.advice.join("\n");
        assert!(
            advice.contains("az role assignment create --assignee oid-1"),
            "{advice}"
        );
        assert!(advice.contains("customSubDomainName=='my-res'"), "{advice}");
        assert!(out.azure_message.unwrap().starts_with("The principal"));
    }

    #[test]
    fn a_403_from_network_rules_is_not_a_missing_role() {
        let endpoint = Url::parse("https://my-res.openai.azure.com/").unwrap();
        let token = info(Some("oid-1"), None, None);
        let out = explain(
            403,
            &[],
            r#"{"error":{"code":"403","message":"Access denied due to Virtual Network/Firewall rules."}}"#,
            &context(&endpoint, &token, SCOPE),
        );
        assert_eq!(out.verdict, Verdict::NetworkBlocked);
        assert!(!out.advice.join(" ").contains("role assignment"));
    }

    #[test]
    fn a_403_with_an_opaque_token_says_how_to_find_the_object_id() {
        let endpoint = Url::parse("https://gw.example.com/").unwrap();
        let token = info(None, None, None);
        let out = explain(403, &[], "", &context(&endpoint, &token, SCOPE));
        let advice = out.advice.join("\n");
        assert!(advice.contains("--assignee <object id>"), "{advice}");
        assert!(advice.contains("az ad signed-in-user show"), "{advice}");
        assert!(advice.contains("Properties page"), "{advice}");
    }

    #[test]
    fn a_401_with_a_foreign_scope_says_which_scope_to_use() {
        let endpoint = Url::parse("https://my-res.openai.azure.com/").unwrap();
        let token = info(None, Some("tid-1"), Some("https://management.azure.com"));
        let scope = "https://management.azure.com/.default";
        let out = explain(401, &[], "", &context(&endpoint, &token, scope));
        assert_eq!(out.verdict, Verdict::TokenRejected);
        let advice = out.advice.join("\n");
        assert!(advice.contains("is not an Azure OpenAI scope"), "{advice}");
        assert!(
            advice.contains("--scope https://cognitiveservices.azure.com/.default"),
            "{advice}"
        );
        assert!(advice.contains("issued by tenant tid-1"), "{advice}");
    }

    #[test]
    fn a_401_with_the_right_audience_blames_neither_scope_nor_audience() {
        let endpoint = Url::parse("https://my-res.openai.azure.com/").unwrap();
        for aud in [
            "https://cognitiveservices.azure.com",
            "https://cognitiveservices.azure.com/",
            COGNITIVE_SERVICES_APP_ID,
        ] {
            let token = info(None, Some("tid-1"), Some(aud));
            let out = explain(401, &[], "", &context(&endpoint, &token, SCOPE));
            let advice = out.advice.join("\n");
            assert!(!advice.contains("does not match"), "{aud}: {advice}");
            assert!(
                !advice.contains("not an Azure OpenAI scope"),
                "{aud}: {advice}"
            );
        }
    }

    #[test]
    fn a_401_reads_the_resource_tenant_from_the_challenge() {
        assert_eq!(
            tenant_in_challenge(
                r#"Bearer authorization_uri="https://login.microsoftonline.com/t-2/oauth2/authorize", error="invalid_token""#
            ),
            Some("t-2".to_owned())
        );
        assert_eq!(tenant_in_challenge("Bearer"), None);
        let endpoint = Url::parse("https://my-res.openai.azure.com/").unwrap();
        let mut token = info(None, Some("t-1"), None);
        token.expires_at = UNIX_EPOCH;
        let out = explain(
            401,
            &[(
                "www-authenticate",
                r#"Bearer authorization_uri="https://login.microsoftonline.com/t-2""#,
            )],
            "",
            &context(&endpoint, &token, SCOPE),
        );
        let advice = out.advice.join("\n");
        assert!(advice.contains("Wrong tenant"), "{advice}");
        assert!(advice.contains("--tenant-id t-2"), "{advice}");
        assert!(advice.contains("already expired"), "{advice}");
    }

    #[test]
    fn other_answers_are_explained() {
        let endpoint = Url::parse("https://my-res.openai.azure.com/").unwrap();
        let token = info(None, None, None);
        let cx = context(&endpoint, &token, SCOPE);
        let ok = explain(
            200,
            &[],
            r#"{"data":[{"id":"a"},{"id":"b"},{"id":"c"},{"id":"d"},{"id":"e"},{"id":"f"},{"id":"g"}]}"#,
            &cx,
        );
        assert_eq!(ok.verdict, Verdict::Ok);
        assert_eq!(ok.models, ["a", "b", "c", "d", "e", "and 2 more"]);
        assert_eq!(explain(429, &[], "", &cx).verdict, Verdict::RateLimited);
        assert!(Verdict::RateLimited.works());
        assert_eq!(explain(503, &[], "", &cx).verdict, Verdict::ServerError);
        let redirect = explain(302, &[("location", "https://login.example.com/")], "", &cx);
        assert!(redirect.advice[0].contains("https://login.example.com/"));
        assert!(!redirect.verdict.works());
        let not_found = explain(404, &[], "", &cx);
        assert!(not_found.advice.join(" ").contains("--api deployments"));
    }

    #[test]
    fn azure_messages_are_one_capped_line() {
        let long = "word ".repeat(200);
        let body = serde_json::json!({"error": {"message": format!("first\nsecond {long}")}});
        let message = azure_message(body.to_string().as_bytes()).unwrap();
        assert!(message.starts_with("first second word"));
        assert!(message.len() <= MAX_QUOTE + 3 && message.ends_with("..."));
        assert_eq!(azure_message(b"<html>"), None);
    }

    #[derive(Debug)]
    struct Wrapper(&'static str, Box<dyn std::error::Error + Send + Sync>);
    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&*self.1)
        }
    }

    #[test]
    fn transport_errors_are_named() {
        let endpoint = Url::parse("https://my-res.openai.azure.com/").unwrap();
        let host = "my-res.openai.azure.com:443";
        let dns = Wrapper(
            "client error (Connect)",
            Box::new(Wrapper(
                "dns error",
                Box::new(std::io::Error::other(
                    "failed to lookup address information",
                )),
            )),
        );
        let (verdict, summary, advice) = explain_transport(&dns, host, &endpoint);
        assert_eq!(verdict, Verdict::Dns);
        assert!(
            summary.contains("cannot resolve my-res.openai.azure.com"),
            "{summary}"
        );
        assert!(advice[0].contains("privatelink"), "{advice:?}");

        let refused = Wrapper(
            "tcp connect error",
            Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        );
        let (verdict, summary, _) = explain_transport(&refused, host, &endpoint);
        assert_eq!(verdict, Verdict::Connect);
        assert!(
            summary.starts_with("Connection refused by my-res.openai.azure.com:443"),
            "{summary}"
        );

        // hyper-rustls wraps rustls's error in an io::Error, itself in another.
        let tls = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName),
        ));
        let (verdict, summary, advice) = explain_transport(&tls, host, &endpoint);
        assert_eq!(verdict, Verdict::Tls);
        assert!(
            summary.contains("not valid for this host name"),
            "{summary}"
        );
        assert!(advice[0].contains("my-res.openai.azure.com"), "{advice:?}");
    }
}
