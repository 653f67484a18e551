//! SPEC §14 and the security review (`../shared/reviews/security-review.md`), end to end: each
//! finding reproduced against a real `ten serve` and shown fixed. One file per area.

/// Slow and many clients: header_timeout, keepalive_timeout, max_connections, NOFILE,
/// upgraded connections and max_body, SSE streams at shutdown.
mod edge;

/// Password hashing under floods (API tokens, basic_auth), the control socket's peers, files.
mod auth;

/// Paths and inputs: normalised prefix matching, the CLI in pipes, control characters in logs.
mod parsers;

/// The supervisor under faults: failed boots retried, ten's own resource errors, the prober.
mod supervisor;

/// Logs bounded in bytes, the fleet's merge bounded.
mod logs;
