//! `keyless check`: would keyless work with this configuration, and if not, why not?
//!
//! Four steps, each explained in plain words; a step that fails stops only what depends on
//! it (no token for a scope: its endpoints are not called):
//! 1. load and validate the configuration (every problem listed; exit 2);
//! 2. build the credential and acquire one token per scope in use, bounded by the token
//!    timeout; show the credential and what the token says about the identity (tenant,
//!    object id, app id, audience, expiry: read from the JWT claims when the token is one,
//!    "unknown" when it is opaque). The token itself is never printed;
//! 3. call each endpoint in use with a cheap GET of the models list, through the same
//!    upstream client keyless uses (same TLS roots, same connect timeout);
//! 4. turn the outcome into advice: a missing role assignment on 403, a wrong scope,
//!    audience or tenant on 401, a wrong URL or path style on 404, and DNS, connect and TLS
//!    failures by name and host.
//!
//! Exit status: 0 when keyless would work, 2 for an invalid configuration, 1 otherwise.
//!
//! One idea a file: `run` (load, acquire, call), `report` (what was found, as text or
//! JSON), `explain` (an answer or a transport error -> a verdict and advice).

mod explain;
mod report;
mod run;

pub use explain::OPENAI_USER_ROLE;
pub use report::{EndpointCheck, Identity, Report, TargetSummary, TokenCheck, Verdict};
pub use run::{CheckArgs, check, check_with, models_url, run};
