//! `POST /api/upgrade` (`ten upgrade`): hand the sockets and the instances to a new `ten
//! serve` (`server::upgrade`). For trusted clients only, as `token-gen`: the control socket
//! (or loopback with `admin_loopback_trusted`), never a token: it runs a binary named in the
//! request. Answers `{"old_pid", "new_pid"}` (200) once the new process serves, or
//! `{"error"}` (500) when it did not take over (this one still serves). Audit-logged.

use http::StatusCode;
use serde_json::json;

use super::{parse_body, Api, ApiError, ApiResult};
use crate::wire::UpgradeArgs;

impl Api {
    pub(crate) async fn upgrade(&self, body: &[u8], trusted: bool) -> ApiResult {
        if !trusted {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                "ten upgrade works only over the control socket (it runs a binary): no token allows it".into(),
            ));
        }
        let args: UpgradeArgs = if body.iter().all(u8::is_ascii_whitespace) {
            UpgradeArgs::default()
        } else {
            parse_body(body)?
        };
        let Some(upgrader) = self.upgrader.get() else {
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "ten serve is still starting: upgrade again in a moment".into(),
            ));
        };
        let binary = args.binary.as_ref().map(|b| b.display().to_string());
        let what = binary.as_deref().unwrap_or("-");
        match upgrader.upgrade(args.binary.clone()).await {
            Ok((old, new)) => {
                self.audit
                    .record("upgrade", what, "-", &format!("ok: pid {old} -> {new}"));
                Ok((StatusCode::OK, json!({ "old_pid": old, "new_pid": new })))
            }
            Err(why) => {
                self.audit
                    .record("upgrade", what, "-", &format!("failed: {why}"));
                Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, why))
            }
        }
    }
}
