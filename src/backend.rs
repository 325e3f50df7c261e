//! Backends: the (endpoint, deployment) pairs a model may be served by, each with its own
//! cool-down and limits, and the choice of one for each attempt; [`Router::resolve`], the
//! one place that answers which backends serve a request and how its upstream path is built.
//!
//! State is per (endpoint, scope, deployment) and shared by every model that names the
//! same pair, because Azure's quotas and throttling are per deployment.

use crate::auth::TokenCache;
use crate::config::{ApiStyle, BackendSpec, Config, DeploymentLimits, ModelRoute};
use crate::error::Error;
use crate::limit::Limiter;
use crate::route::{self, Target, UpstreamPath};
use arc_swap::ArcSwap;
use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};
use rand::Rng;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use url::Url;

/// An Azure OpenAI endpoint, split once at start-up so the hot path only joins parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    scheme: Scheme,
    authority: Authority,
    /// The endpoint's own path, e.g. `` or `/gateway` (never ending in `/`).
    pub base_path: String,
}

impl Endpoint {
    /// Splits `url` (already checked by the config).
    pub fn new(url: &Url) -> Result<Endpoint, String> {
        let uri: Uri = url
            .as_str()
            .parse()
            .map_err(|e| format!("endpoint {url} is not a valid URI: {e}"))?;
        let parts = uri.into_parts();
        Ok(Endpoint {
            scheme: parts.scheme.ok_or("endpoint has no scheme")?,
            authority: parts.authority.ok_or("endpoint has no host")?,
            base_path: url.path().trim_end_matches('/').to_owned(),
        })
    }

    /// The URI of `path_and_query` on this endpoint (its bytes are taken, not copied).
    pub fn uri(&self, path_and_query: String) -> Result<Uri, Error> {
        let pq = PathAndQuery::from_maybe_shared(bytes::Bytes::from(path_and_query))
            .map_err(|e| Error::BadRequest(format!("cannot build the upstream path: {e}")))?;
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|e| Error::BadRequest(format!("cannot build the upstream URI: {e}")))
    }

    /// The host, for names and logs.
    pub fn host(&self) -> &str {
        self.authority.host()
    }
}

/// An Azure OpenAI resource as keyless reaches it: its endpoint and the token cache for its
/// scope.
pub struct Resource {
    /// Where requests go.
    pub endpoint: Endpoint,
    /// Who signs them.
    pub tokens: TokenCache,
}

/// The shared state of one deployment on one resource.
pub struct Deployment {
    /// The resource serving it. (Named `upstream` still, for `app.rs`; "upstream" is
    /// otherwise the client towards Azure, `crate::upstream`.)
    pub upstream: Arc<Resource>,
    /// The deployment name; `None` for Azure-style pass-through requests, whose path
    /// already names what they want.
    pub name: Option<Arc<str>>,
    /// Its metric label: the name when it is configured or among the first learned,
    /// else [`OTHER`] (a bounded set whatever clients send).
    pub label: Arc<str>,
    /// Its limits, if any are configured.
    pub limiter: Option<Limiter>,
    /// Milliseconds after the router's epoch until which Azure asked to be left alone.
    throttled_until: AtomicU64,
    /// Whether that hold was cut short at `retry.max_wait` (Azure asked for longer):
    /// requests are then refused at once rather than held for it.
    capped: AtomicBool,
    /// Milliseconds after the router's epoch until which it is known to fail: other
    /// backends are preferred, but it still serves when it is the only one left.
    failing_until: AtomicU64,
    /// Failures since the last success, across requests: the backoff grows with them.
    failures: AtomicU32,
    epoch: Instant,
}

impl Deployment {
    fn new(
        upstream: Arc<Resource>,
        name: Option<&str>,
        label: Arc<str>,
        limits: Option<&DeploymentLimits>,
        epoch: Instant,
    ) -> Deployment {
        Deployment {
            upstream,
            limiter: limits.and_then(Limiter::new),
            name: name.map(Arc::from),
            label,
            throttled_until: AtomicU64::new(0),
            capped: AtomicBool::new(false),
            failing_until: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            epoch,
        }
    }

    /// Milliseconds since the epoch at `now + wait`, saturating: a wait read from a
    /// header can be anything.
    fn until(&self, wait: Duration) -> u64 {
        let now = Instant::now().saturating_duration_since(self.epoch);
        u64::try_from(now.saturating_add(wait).as_millis()).unwrap_or(u64::MAX)
    }

    /// Keeps every request away for `wait` (Azure's named wait, already capped at
    /// `retry.max_wait`; `capped` when Azure asked for longer).
    pub fn throttle(&self, wait: Duration, capped: bool) {
        let until = self.until(wait);
        if self.throttled_until.fetch_max(until, Ordering::Relaxed) <= until {
            self.capped.store(capped, Ordering::Relaxed);
        }
    }

    /// Whether the current hold was cut short at `retry.max_wait`.
    pub fn capped(&self) -> bool {
        self.capped.load(Ordering::Relaxed)
    }

    /// Counts a failure Azure named no wait for (a retryable status, unreachable, no
    /// head in time) and steers other requests elsewhere for `backoff`.
    pub fn fail(&self, backoff: Duration) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.failing_until
            .fetch_max(self.until(backoff), Ordering::Relaxed);
    }

    /// Counts a success: the failure streak is over.
    pub fn succeed(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
            self.failing_until.store(0, Ordering::Relaxed);
        }
    }

    /// Failures since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    fn left(&self, until: &AtomicU64, now: Instant) -> Option<Duration> {
        let until = until.load(Ordering::Relaxed);
        let now = u64::try_from(now.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX);
        (until > now).then(|| Duration::from_millis(until - now))
    }

    /// How long Azure still asks to be left alone, if it does.
    pub fn throttled_for(&self, now: Instant) -> Option<Duration> {
        self.left(&self.throttled_until, now)
    }

    /// Whether it failed recently (within its backoff).
    pub fn failing(&self, now: Instant) -> bool {
        self.left(&self.failing_until, now).is_some()
    }

    /// Neither throttled nor failing.
    pub fn healthy(&self, now: Instant) -> bool {
        self.throttled_for(now).is_none() && !self.failing(now)
    }
}

/// The metric label of everything outside the bounded set.
pub const OTHER: &str = "other";
/// Longest label value kept; Azure's deployment names are at most 64 characters.
const LABEL_LEN: usize = 64;

/// One way to serve a model: a deployment, with its place in the model's order.
#[derive(Clone)]
pub struct Backend {
    /// For logs and `x-keyless-backend`.
    pub name: Arc<str>,
    /// For metrics: from a bounded set (see [`Deployment::label`]).
    pub label: Arc<str>,
    /// The deployment's shared state.
    pub deployment: Arc<Deployment>,
    /// Lower is preferred.
    pub priority: u32,
    /// Share within a priority.
    pub weight: u32,
}

/// The outcome of choosing a backend for an attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Pick {
    /// Use this backend (an index into the list).
    Use(usize),
    /// Every backend still in play cools down; the soonest is free after this wait.
    Wait(Duration),
    /// Every backend still in play is held off for an ask longer than keyless waits:
    /// refuse at once, saying when Azure will be asked again.
    Refuse(Duration),
    /// No backend is left in play for this request.
    None,
}

/// Chooses the backend for an attempt: the lowest priority with a usable backend not
/// `excluded`, by weight within that priority. Usable means healthy when `healthy_only`,
/// else not throttled (a failing backend beats none). `backends` is sorted by priority.
pub fn pick(
    backends: &[Backend],
    excluded: u64,
    now: Instant,
    healthy_only: bool,
    rng: &mut impl Rng,
) -> Pick {
    let usable = |j: usize, b: &Backend| {
        let out = excluded & 1u64.checked_shl(j as u32).unwrap_or(0) != 0;
        !out && if healthy_only {
            b.deployment.healthy(now)
        } else {
            b.deployment.throttled_for(now).is_none()
        }
    };
    let mut soonest: Option<(Duration, bool)> = None;
    let mut i = 0;
    while i < backends.len() {
        let priority = backends[i].priority;
        let group_end = backends[i..]
            .iter()
            .position(|b| b.priority != priority)
            .map_or(backends.len(), |p| i + p);
        let mut total = 0u64;
        for (j, b) in backends.iter().enumerate().take(group_end).skip(i) {
            if usable(j, b) {
                total += u64::from(b.weight);
            } else if excluded & 1u64.checked_shl(j as u32).unwrap_or(0) == 0
                && let Some(wait) = b.deployment.throttled_for(now)
                && soonest.is_none_or(|(s, _)| wait < s)
            {
                soonest = Some((wait, b.deployment.capped()));
            }
        }
        if total > 0 {
            let mut ticket = rng.random_range(0..total);
            for (j, b) in backends.iter().enumerate().take(group_end).skip(i) {
                if !usable(j, b) {
                    continue;
                }
                if ticket < u64::from(b.weight) {
                    return Pick::Use(j);
                }
                ticket -= u64::from(b.weight);
            }
        }
        i = group_end;
    }
    match soonest {
        Some((wait, false)) if !healthy_only => Pick::Wait(wait),
        Some((wait, true)) if !healthy_only => Pick::Refuse(wait),
        _ => Pick::None,
    }
}

/// Whether a backend other than `index`, not `excluded`, is healthy now.
pub fn has_other(backends: &[Backend], index: usize, excluded: u64, now: Instant) -> bool {
    backends.iter().enumerate().any(|(i, b)| {
        i != index
            && excluded & 1u64.checked_shl(i as u32).unwrap_or(0) == 0
            && b.deployment.healthy(now)
    })
}

/// A label value for `name`: itself when short, cut at a character boundary otherwise.
fn label_for(name: &str) -> Arc<str> {
    let mut end = name.len().min(LABEL_LEN);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    Arc::from(&name[..end])
}

/// Most backends one model may list (a request tracks them in a 64-bit mask).
pub const MAX_BACKENDS: usize = 64;
/// Most deployments remembered for models sent without a mapping: a bound on what
/// clients sending arbitrary model names can make keyless hold.
const MAX_LEARNED: usize = 1024;
/// Most learned deployments named in metric labels: each name costs a series in every
/// family that carries it (the upstream-time histogram has 22 lines a series).
const MAX_LABELLED: usize = 64;

/// Where a request goes: what [`Router::resolve`] answers.
pub struct Route<'a> {
    /// The backends that may serve it, in the order [`pick`] reads them.
    pub backends: Arc<[Backend]>,
    /// How its upstream path is built for each backend.
    pub path: UpstreamPath<'a>,
    /// The OpenAI operation (`chat/completions`), also for Azure-style paths: the retry
    /// and usage rules go by it.
    pub op: &'a str,
}

/// Model -> backends, built once at start-up.
pub struct Router {
    default: Arc<Resource>,
    passthrough: Arc<[Backend]>,
    configured: HashMap<String, Arc<[Backend]>>,
    /// The configured deployments of the default endpoint, by deployment name.
    named: HashMap<String, Arc<[Backend]>>,
    /// Deployments on the default endpoint reached by unmapped models, learned as they
    /// come (copy-on-write: reads are a lock-free load).
    learned: ArcSwap<HashMap<String, Arc<[Backend]>>>,
    limits: HashMap<String, DeploymentLimits>,
    /// The upstream path style: whether a request without a model needs a deployment.
    api: ApiStyle,
    /// The deployment of unmapped models; `None`: the deployment named like the model.
    default_deployment: Option<String>,
    epoch: Instant,
}

impl Router {
    /// Builds the routes of `config`, whose default endpoint is `default`.
    /// `resource_for(endpoint, scope)` makes the resource of each pair of
    /// [`Config::resources`], once each, the default one first.
    pub fn new(
        config: &Config,
        default: &Url,
        mut resource_for: impl FnMut(&Url, &str) -> Result<Arc<Resource>, String>,
    ) -> Result<Router, String> {
        let epoch = Instant::now();
        let limits = config.limits.deployments.clone();
        let mut resources = Vec::new();
        for (url, scope) in config.resources(default) {
            let resource = resource_for(&url, &scope)?;
            resources.push((url, scope, resource));
        }
        let resource_of = |spec: &BackendSpec| {
            let url = spec.endpoint.as_ref().unwrap_or(default);
            let scope = spec.scope.as_deref().unwrap_or(&config.scope);
            resources
                .iter()
                .find(|(u, s, _)| u == url && s == scope)
                .map(|(_, _, resource)| resource.clone())
                .ok_or_else(|| format!("no resource for {url} with scope {scope}"))
        };
        let default = match resources.first() {
            Some((_, _, resource)) => resource.clone(),
            None => return Err("no default resource".to_owned()),
        };
        let mut states: HashMap<(usize, String), Arc<Deployment>> = HashMap::new();
        let mut configured = HashMap::new();
        for (model, route) in &config.models {
            let specs = match route {
                ModelRoute::Deployment(d) => vec![BackendSpec {
                    name: d.clone(),
                    endpoint: None,
                    deployment: d.clone(),
                    priority: 0,
                    weight: std::num::NonZeroU32::MIN,
                    scope: None,
                }],
                ModelRoute::Backends(specs) => specs.clone(),
            };
            let mut backends = Vec::with_capacity(specs.len());
            for spec in specs {
                let upstream = resource_of(&spec)?;
                let key = (Arc::as_ptr(&upstream) as usize, spec.deployment.clone());
                let state = states
                    .entry(key)
                    .or_insert_with(|| {
                        Arc::new(Deployment::new(
                            upstream.clone(),
                            Some(&spec.deployment),
                            label_for(&spec.deployment),
                            limits.get(&spec.deployment),
                            epoch,
                        ))
                    })
                    .clone();
                backends.push(Backend {
                    label: label_for(&spec.name),
                    name: spec.name.into(),
                    deployment: state,
                    priority: spec.priority,
                    weight: spec.weight.get(),
                });
            }
            configured.insert(model.clone(), backends.into());
        }
        // A deployment on the default endpoint that a model maps to is the same deployment
        // when a request names it directly (Azure-style, or an unmapped model of that
        // name): one cool-down and one limiter, as Azure has one quota.
        let default_key = Arc::as_ptr(&default) as usize;
        let named: HashMap<String, Arc<[Backend]>> = states
            .into_iter()
            .filter(|((upstream, _), _)| *upstream == default_key)
            .map(|((_, deployment), state)| {
                let backend = Backend {
                    name: deployment.as_str().into(),
                    label: state.label.clone(),
                    deployment: state,
                    priority: 0,
                    weight: 1,
                };
                (deployment, Arc::from(vec![backend]))
            })
            .collect();
        let host = default.endpoint.host();
        let passthrough = Arc::from(vec![Backend {
            name: host.into(),
            label: label_for(host),
            deployment: Arc::new(Deployment::new(
                default.clone(),
                None,
                Arc::from(""),
                None,
                epoch,
            )),
            priority: 0,
            weight: 1,
        }]);
        Ok(Router {
            default,
            passthrough,
            configured,
            named,
            learned: ArcSwap::from_pointee(HashMap::new()),
            limits,
            api: config.api,
            default_deployment: config.default_deployment.clone(),
            epoch,
        })
    }

    /// The default endpoint's resource.
    pub fn default_resource(&self) -> &Arc<Resource> {
        &self.default
    }

    /// Where a request for `target` goes. `model` is the model the request names outside
    /// its path: the body's for HTTP, the query's for a realtime session (`model=`, or
    /// `deployment=` on Azure's preview path).
    ///
    /// - An OpenAI-style operation or session with a model: the model's configured
    ///   backends, else on the default endpoint the deployment for unmapped models (the
    ///   `deployment` key), else the deployment named like the model.
    /// - Without a model: in the deployments style, an operation Azure scopes to a
    ///   deployment (and a session) goes to the default deployment, and is refused when
    ///   there is none; everything else passes through to the default endpoint.
    /// - An Azure-style path: the deployment its path names, else the model (which must
    ///   then be a deployment's name, as it reaches Azure unchanged), else pass-through.
    ///
    /// A model that is no name Azure could have is refused ([`route::check_name`]).
    pub fn resolve<'a>(
        &self,
        target: &Target<'a>,
        model: Option<&str>,
    ) -> Result<Route<'a>, Error> {
        Ok(match target {
            Target::OpenAi(op) => Route {
                backends: self.for_model(model, op.is_deployment_scoped())?,
                path: UpstreamPath::Op(*op),
                op: op.path,
            },
            Target::Session => Route {
                backends: self.for_model(model, true)?,
                path: UpstreamPath::Session,
                op: "realtime",
            },
            Target::Azure(azure) => {
                let backends = match (&azure.deployment, model) {
                    (Some(deployment), _) => self.on_default(deployment),
                    (None, Some(model)) => {
                        route::check_name("deployment", model)?;
                        self.on_default(model)
                    }
                    (None, None) => self.passthrough.clone(),
                };
                Route {
                    backends,
                    path: UpstreamPath::Verbatim(azure.path),
                    op: azure.op,
                }
            }
        })
    }

    /// The backends for an OpenAI-style request naming `model` (or none); `scoped`: the
    /// deployments style would put it under a deployment.
    fn for_model(&self, model: Option<&str>, scoped: bool) -> Result<Arc<[Backend]>, Error> {
        if let Some(model) = model {
            route::check_name("model", model)?;
            if let Some(backends) = self.configured.get(model) {
                return Ok(backends.clone());
            }
            return Ok(self.on_default(self.default_deployment.as_deref().unwrap_or(model)));
        }
        if self.api == ApiStyle::Deployments && scoped {
            return match &self.default_deployment {
                Some(d) => Ok(self.on_default(d)),
                None => Err(Error::BadRequest(
                    "you must provide a model parameter".into(),
                )),
            };
        }
        Ok(self.passthrough.clone())
    }

    /// The backend list for `deployment` on the default endpoint (an unmapped model, or
    /// a request without a model), learned on first use.
    fn on_default(&self, deployment: &str) -> Arc<[Backend]> {
        if let Some(found) = self.named.get(deployment) {
            return found.clone();
        }
        let learned = self.learned.load();
        if let Some(found) = learned.get(deployment) {
            return found.clone();
        }
        let full = learned.len() >= MAX_LEARNED;
        drop(learned);
        // Metric labels stay a bounded set whatever names clients send: the first
        // deployments learned (and those with configured limits) are named, the rest
        // are `other`.
        let named = |learned: usize| learned < MAX_LABELLED || self.limits.contains_key(deployment);
        let make = |named: bool| -> Arc<[Backend]> {
            let label = if named {
                label_for(deployment)
            } else {
                Arc::from(OTHER)
            };
            Arc::from(vec![Backend {
                name: deployment.into(),
                label: label.clone(),
                deployment: Arc::new(Deployment::new(
                    self.default.clone(),
                    Some(deployment),
                    label,
                    self.limits.get(deployment),
                    self.epoch,
                )),
                priority: 0,
                weight: 1,
            }])
        };
        if full {
            return make(self.limits.contains_key(deployment));
        }
        // Decided inside the update, on the map it replaces: requests racing on two
        // workers must not both take the last named place (the count was once read
        // before the update, and a burst of new names got 66 labels).
        let mut result = None;
        self.learned.rcu(|map| {
            let mut map = HashMap::clone(map);
            let entry = match map.get(deployment) {
                Some(found) => found.clone(),
                None => {
                    let made = make(named(map.len()));
                    map.insert(deployment.to_owned(), made.clone());
                    made
                }
            };
            result = Some(entry);
            map
        });
        result.unwrap_or_else(|| make(false))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::auth::{Acquire, AuthError, Token};
    use crate::route::{Azure, Op};
    use futures_util::future::BoxFuture;
    use std::borrow::Cow;

    struct NoIdentity;
    impl Acquire for NoIdentity {
        fn acquire<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Token, AuthError>> {
            Box::pin(std::future::pending())
        }
        fn name(&self) -> String {
            "none".into()
        }
    }

    fn resource() -> Arc<Resource> {
        resource_at(&default_url())
    }

    fn resource_at(url: &Url) -> Arc<Resource> {
        Arc::new(Resource {
            endpoint: Endpoint::new(url).unwrap(),
            tokens: TokenCache::start(
                Arc::new(NoIdentity),
                "s".into(),
                Duration::from_secs(1),
                tokio_util::sync::CancellationToken::new(),
                &tokio_util::task::TaskTracker::new(),
            ),
        })
    }

    fn default_url() -> Url {
        Url::parse("https://a.openai.azure.com").unwrap()
    }

    /// A router of `config`; no token is ever asked for. Inside a runtime.
    fn router(config: &Config) -> Router {
        Router::new(config, &default_url(), |url, _| Ok(resource_at(url))).unwrap()
    }

    /// The deployment `model` goes to first (an OpenAI-style chat request), as a router of
    /// `config` resolves it.
    pub(crate) fn deployment_of(config: &Config, model: &str) -> String {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _entered = runtime.enter();
        let chat = Target::OpenAi(Op {
            path: "chat/completions",
        });
        let route = router(config).resolve(&chat, Some(model)).unwrap();
        route.backends[0]
            .deployment
            .name
            .as_deref()
            .unwrap()
            .to_owned()
    }

    fn config(models: &[(&str, &str)], api: ApiStyle, default: Option<&str>) -> Config {
        let mut config = Config::load(&crate::config::Flags {
            simulate: true,
            models: models
                .iter()
                .map(|(m, d)| (m.to_string(), d.to_string()))
                .collect(),
            ..crate::config::Flags::default()
        })
        .unwrap();
        config.api = api;
        config.default_deployment = default.map(str::to_owned);
        config
    }

    /// The deployment names of a route's backends (`None`: pass-through).
    fn names(route: &Route<'_>) -> Vec<Option<String>> {
        route
            .backends
            .iter()
            .map(|b| b.deployment.name.as_deref().map(str::to_owned))
            .collect()
    }

    #[tokio::test]
    async fn openai_requests_go_by_model_then_by_style() {
        let chat = Target::OpenAi(Op {
            path: "chat/completions",
        });
        let files = Target::OpenAi(Op { path: "files" });
        let r = router(&config(&[("gpt", "prod")], ApiStyle::Deployments, None));
        let route = r.resolve(&chat, Some("gpt")).unwrap();
        assert_eq!(names(&route), [Some("prod".to_owned())]);
        assert_eq!(
            route.path,
            UpstreamPath::Op(Op {
                path: "chat/completions"
            })
        );
        assert_eq!(route.op, "chat/completions");
        assert_eq!(
            names(&r.resolve(&chat, Some("other")).unwrap()),
            [Some("other".to_owned())]
        );
        let refused = r.resolve(&chat, None).err().unwrap();
        assert!(
            refused.to_string().contains("you must provide a model"),
            "{refused}"
        );
        assert_eq!(names(&r.resolve(&files, None).unwrap()), [None]);
        assert!(matches!(
            r.resolve(&chat, Some("a/b")),
            Err(Error::InvalidName(_))
        ));
        let r = router(&config(&[], ApiStyle::Deployments, Some("fallback")));
        assert_eq!(
            names(&r.resolve(&chat, None).unwrap()),
            [Some("fallback".to_owned())]
        );
        assert_eq!(
            names(&r.resolve(&chat, Some("gpt")).unwrap()),
            [Some("fallback".to_owned())]
        );
        let r = router(&config(&[], ApiStyle::V1, None));
        assert_eq!(names(&r.resolve(&chat, None).unwrap()), [None]);
    }

    #[tokio::test]
    async fn a_session_without_a_model_needs_a_deployment_in_the_deployments_style() {
        let r = router(&config(&[], ApiStyle::V1, None));
        let route = r.resolve(&Target::Session, None).unwrap();
        assert_eq!(names(&route), [None]);
        assert_eq!(route.path, UpstreamPath::Session);
        assert_eq!(route.op, "realtime");
        let r = router(&config(&[], ApiStyle::Deployments, None));
        assert!(r.resolve(&Target::Session, None).is_err());
        assert_eq!(
            names(&r.resolve(&Target::Session, Some("rt")).unwrap()),
            [Some("rt".to_owned())]
        );
    }

    #[tokio::test]
    async fn azure_paths_go_by_their_deployment_then_the_model() {
        let r = router(&config(&[("gpt", "prod")], ApiStyle::V1, Some("fallback")));
        let named = Target::Azure(Azure {
            path: "/openai/deployments/prod/embeddings",
            op: "embeddings",
            deployment: Some(Cow::Borrowed("prod")),
        });
        let route = r.resolve(&named, Some("ignored")).unwrap();
        assert_eq!(names(&route), [Some("prod".to_owned())]);
        assert_eq!(
            route.path,
            UpstreamPath::Verbatim("/openai/deployments/prod/embeddings")
        );
        assert_eq!(route.op, "embeddings");
        // The same deployment state as the model that maps to it: one quota.
        let mapped = r
            .resolve(&Target::OpenAi(Op { path: "embeddings" }), Some("gpt"))
            .unwrap();
        assert!(Arc::ptr_eq(
            &route.backends[0].deployment,
            &mapped.backends[0].deployment
        ));
        let v1 = Target::Azure(Azure {
            path: "/openai/v1/responses",
            op: "responses",
            deployment: None,
        });
        // The body's model reaches Azure unchanged: it is the deployment, not mapped.
        assert_eq!(
            names(&r.resolve(&v1, Some("gpt")).unwrap()),
            [Some("gpt".to_owned())]
        );
        assert!(matches!(
            r.resolve(&v1, Some("ft:x")),
            Err(Error::InvalidName(_))
        ));
        assert_eq!(names(&r.resolve(&v1, None).unwrap()), [None]);
    }

    fn backend(up: &Arc<Resource>, name: &str, priority: u32, weight: u32) -> Backend {
        Backend {
            name: name.into(),
            label: name.into(),
            deployment: Arc::new(Deployment::new(
                up.clone(),
                Some(name),
                name.into(),
                None,
                Instant::now(),
            )),
            priority,
            weight,
        }
    }

    #[tokio::test]
    async fn lowest_priority_first_then_failover_when_throttled() {
        let up = resource();
        let list = vec![backend(&up, "ptu", 0, 1), backend(&up, "paygo", 1, 1)];
        let mut rng = rand::rng();
        let now = Instant::now();
        assert_eq!(pick(&list, 0, now, true, &mut rng), Pick::Use(0));
        list[0].deployment.throttle(Duration::from_secs(10), false);
        assert_eq!(pick(&list, 0, Instant::now(), true, &mut rng), Pick::Use(1));
        list[1].deployment.throttle(Duration::from_secs(3), false);
        assert_eq!(pick(&list, 0, Instant::now(), true, &mut rng), Pick::None);
        match pick(&list, 0, Instant::now(), false, &mut rng) {
            Pick::Wait(w) => assert!(w <= Duration::from_secs(3) && w > Duration::from_secs(2)),
            other => panic!("{other:?}"),
        }
        // With the paygo backend out of play, only the ptu's longer cool-down is left.
        match pick(&list, 0b10, Instant::now(), false, &mut rng) {
            Pick::Wait(w) => assert!(w > Duration::from_secs(9)),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_failing_backend_is_skipped_while_another_is_healthy_but_serves_when_alone() {
        let up = resource();
        let list = vec![backend(&up, "a", 0, 1), backend(&up, "b", 0, 1)];
        let mut rng = rand::rng();
        list[0].deployment.fail(Duration::from_secs(30));
        for _ in 0..50 {
            assert_eq!(pick(&list, 0, Instant::now(), true, &mut rng), Pick::Use(1));
        }
        let alone = vec![backend(&up, "c", 0, 1)];
        alone[0].deployment.fail(Duration::from_secs(30));
        assert_eq!(pick(&alone, 0, Instant::now(), true, &mut rng), Pick::None);
        assert_eq!(
            pick(&alone, 0, Instant::now(), false, &mut rng),
            Pick::Use(0),
            "a failure with no named wait holds no later request"
        );
        alone[0].deployment.succeed();
        assert!(alone[0].deployment.healthy(Instant::now()));
    }

    #[tokio::test]
    async fn absurd_waits_saturate() {
        let up = resource();
        let b = backend(&up, "a", 0, 1);
        b.deployment.throttle(Duration::MAX, true);
        b.deployment.fail(Duration::MAX);
        assert!(b.deployment.throttled_for(Instant::now()).is_some());
        assert!(b.deployment.failing(Instant::now()));
    }

    #[tokio::test]
    async fn excluded_backends_are_skipped_and_none_is_left() {
        let up = resource();
        let list = vec![backend(&up, "a", 0, 1), backend(&up, "b", 0, 1)];
        let mut rng = rand::rng();
        assert_eq!(
            pick(&list, 0b01, Instant::now(), true, &mut rng),
            Pick::Use(1)
        );
        assert_eq!(
            pick(&list, 0b11, Instant::now(), false, &mut rng),
            Pick::None
        );
    }

    #[tokio::test]
    async fn weights_share_traffic_within_a_priority() {
        let up = resource();
        let list = vec![
            backend(&up, "a", 0, 3),
            backend(&up, "b", 0, 1),
            backend(&up, "c", 1, 100),
        ];
        let mut rng = rand::rng();
        let mut counts = [0; 3];
        for _ in 0..4000 {
            if let Pick::Use(i) = pick(&list, 0, Instant::now(), true, &mut rng) {
                counts[i] += 1;
            }
        }
        assert_eq!(
            counts[2], 0,
            "a lower priority serves only when the first is out"
        );
        assert!((2700..3300).contains(&counts[0]), "{counts:?}");
    }

    #[tokio::test]
    async fn cool_down_ends() {
        let up = resource();
        let b = backend(&up, "a", 0, 1);
        b.deployment.throttle(Duration::from_millis(30), false);
        assert!(b.deployment.throttled_for(Instant::now()).is_some());
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(b.deployment.throttled_for(Instant::now()).is_none());
    }

    /// Names learned at the same moment on many threads still leave `MAX_LABELLED` named
    /// labels at most: the place is taken inside the update, not decided before it.
    #[test]
    fn racing_new_names_do_not_share_the_last_labels() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _entered = runtime.enter();
        let config = Config::load(&crate::config::Flags {
            simulate: true,
            ..crate::config::Flags::default()
        })
        .unwrap();
        let router = Router::new(&config, &default_url(), |_, _| Ok(resource())).unwrap();
        // One named place left.
        for n in 0..MAX_LABELLED - 1 {
            router.on_default(&format!("d{n}"));
        }
        let threads = 16;
        let barrier = std::sync::Barrier::new(threads);
        let labels: Vec<String> = std::thread::scope(|scope| {
            let racers: Vec<_> = (0..threads)
                .map(|t| {
                    let (router, barrier, handle) = (&router, &barrier, runtime.handle());
                    scope.spawn(move || {
                        let _entered = handle.enter();
                        barrier.wait();
                        router.on_default(&format!("racer{t}"))[0].label.to_string()
                    })
                })
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let named = labels.iter().filter(|l| *l != OTHER).count();
        assert_eq!(named, 1, "{labels:?}");
    }

    #[test]
    fn labels_are_bounded() {
        assert_eq!(&*label_for("gpt-4o"), "gpt-4o");
        assert_eq!(label_for(&"x".repeat(4096)).len(), LABEL_LEN);
        assert!(label_for(&"é".repeat(100)).len() <= LABEL_LEN);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Whatever names clients send, the label values are configured names, at most
        /// `MAX_LABELLED` learned ones (cut to `LABEL_LEN`), or `other`.
        #[test]
        fn label_values_come_from_a_bounded_set(
            names in proptest::collection::vec("[a-zA-Z0-9._:-]{1,200}|\\PC{1,80}", 1..300)
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let _entered = runtime.enter();
            let flags = crate::config::Flags {
                simulate: true,
                models: vec![("mapped".into(), "prod".into())],
                ..crate::config::Flags::default()
            };
            let config = Config::load(&flags).unwrap();
            let router = Router::new(&config, &default_url(), |_, _| Ok(resource())).unwrap();
            let mut labels = std::collections::HashSet::new();
            for name in names.iter().map(String::as_str).chain(["prod"]) {
                for b in router.on_default(name).iter() {
                    labels.insert(b.label.to_string());
                }
            }
            for label in &labels {
                proptest::prop_assert!(
                    label == OTHER
                        || label == "prod"
                        || (label.len() <= LABEL_LEN
                            && names.iter().any(|n| n.starts_with(label.as_str()))),
                    "{label:?}"
                );
            }
            let learned = labels.iter().filter(|l| *l != OTHER && *l != "prod").count();
            proptest::prop_assert!(learned <= MAX_LABELLED, "{learned} learned labels");
        }
    }
}
