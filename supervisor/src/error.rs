//! The supervisor's errors, each naming the instance and what to do.

use crate::state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown process \"{0}\" (not in the config)")]
    UnknownProcess(String),
    #[error("unknown instance {0}")]
    UnknownInstance(String),
    #[error("process \"{0}\" is external (upstreams): ten does not spawn or stop it")]
    External(String),
    #[error("instance {0} already exists")]
    AlreadyRunning(String),
    #[error("{0}")]
    Spawn(String),
    /// ten itself is out of file descriptors, memory or processes (SPEC §14): never the app's
    /// failure; the start is retried.
    #[error("ten is out of resources: {0}")]
    Resources(String),
    #[error("instance {name} did not become healthy: {reason}{}", tail_text(.tail))]
    StartupFailed {
        name: String,
        reason: String,
        tail: Vec<String>,
    },
    #[error("instance {0} could not be woken: {1}")]
    Wake(String, String),
    #[error("ten is shutting down")]
    ShuttingDown,
    #[error("ten is being upgraded (ten upgrade): try again once it is done")]
    Upgrading,
    #[error(transparent)]
    State(#[from] StateError),
}

fn tail_text(tail: &[String]) -> String {
    if tail.is_empty() {
        " (it printed nothing)".into()
    } else {
        format!("\nlast lines of its output:\n  {}", tail.join("\n  "))
    }
}
