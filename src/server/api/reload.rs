//! `POST /api/reload` (`ten reload`, the dashboard) and SIGHUP: re-read the config file and
//! apply it (`server::reload`), audit-logged like other writes. Answers
//! `{"changes": [...], "errors": [...], "dry_run": bool}`: 200 when applied (or nothing to
//! do), 400 when refused (an invalid file, a key that cannot change: nothing changed), 500
//! when part of it failed (a replacement that never got healthy: the rest is applied).

use http::StatusCode;
use serde_json::json;

use super::{parse_body, Api, ApiError, ApiResult};
use crate::server::reload::Outcome;
use crate::wire::ReloadArgs;

impl Api {
    pub(crate) async fn reload(&self, body: &[u8]) -> ApiResult {
        let args: ReloadArgs = if body.iter().all(u8::is_ascii_whitespace) {
            ReloadArgs::default()
        } else {
            parse_body(body)?
        };
        let outcome = self.reload_outcome(args.dry_run).await?;
        let status = match (&outcome.errors[..], outcome.refused) {
            ([], _) => StatusCode::OK,
            (_, true) => StatusCode::BAD_REQUEST,
            (_, false) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Ok((status, json!(outcome)))
    }

    /// Reload and write the audit row (not for a dry run: it writes nothing).
    async fn reload_outcome(&self, dry_run: bool) -> Result<Outcome, ApiError> {
        let Some(reloader) = self.reloader.get() else {
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "ten serve is still starting: reload again in a moment".into(),
            ));
        };
        let outcome = reloader.reload(dry_run).await;
        if !dry_run {
            let result = match (&outcome.errors[..], outcome.refused) {
                ([], _) => format!("ok: {} change(s)", outcome.changes.len()),
                (e, true) => format!("refused: {}", e.join("; ")),
                (e, false) => format!(
                    "failed: {} (of {} change(s))",
                    e.join("; "),
                    outcome.changes.len()
                ),
            };
            self.audit.record("reload", "-", "-", &result);
        }
        Ok(outcome)
    }

    /// A reload asked by a signal: its result goes to the log.
    pub async fn reload_logged(&self, why: &str) {
        match self.reload_outcome(false).await {
            Err(e) => tracing::warn!("{why}: reload not done: {}", e.1),
            Ok(o) => {
                for c in &o.changes {
                    tracing::info!("{why}: reload: {c}");
                }
                for e in &o.errors {
                    tracing::error!("{why}: reload: {e}");
                }
                if o.changes.is_empty() && o.errors.is_empty() {
                    tracing::info!("{why}: reload: no change");
                }
            }
        }
    }
}
