//! The operator dashboard: three static files embedded in the binary (no build step, no
//! third-party requests), served at `/` on the bare domain and on `admin_listen`.
//!
//! Only the fixed paths below are served; any other path is None, so no request can reach a
//! file that is not one of these (no path traversal). The page itself holds no secret: it
//! asks for an API token and keeps it in the browser's localStorage.

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};

use tenement_proxy::management::{Body, Response};

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE_CSS: &str = include_str!("dashboard/style.css");

/// No inline scripts or styles, nothing from another origin.
pub const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; \
                       style-src 'self'; script-src 'self'; base-uri 'none'; form-action 'self'; \
                       frame-ancestors 'none'";

/// The embedded file for `path` (its content type and bytes), if it is one of ours.
fn lookup(path: &str) -> Option<(&'static str, &'static str)> {
    Some(match path {
        "/" | "/index.html" => ("text/html; charset=utf-8", INDEX_HTML),
        "/assets/app.js" => ("text/javascript; charset=utf-8", APP_JS),
        "/assets/style.css" => ("text/css; charset=utf-8", STYLE_CSS),
        _ => return None,
    })
}

/// The response for a dashboard path (`/`, `/index.html`, `/assets/app.js`,
/// `/assets/style.css`), or None for anything else.
pub fn asset(path: &str) -> Option<Response> {
    let (content_type, text) = lookup(path)?;
    let mut resp = http::Response::new(Body::Full(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(resp: Response) -> Bytes {
        match resp.into_body() {
            Body::Full(b) => b,
            Body::Stream(_) => panic!("a dashboard asset is never streamed"),
        }
    }

    #[test]
    fn every_asset_has_its_content_type_and_headers() {
        for (path, ct, needle) in [
            ("/", "text/html; charset=utf-8", "<!doctype html>"),
            ("/index.html", "text/html; charset=utf-8", "<!doctype html>"),
            (
                "/assets/app.js",
                "text/javascript; charset=utf-8",
                "EventSource",
            ),
            ("/assets/style.css", "text/css; charset=utf-8", "body"),
        ] {
            let resp = asset(path).unwrap_or_else(|| panic!("{path} not served"));
            assert_eq!(resp.status(), StatusCode::OK, "{path}");
            let h = resp.headers();
            assert_eq!(h[header::CONTENT_TYPE], ct, "{path}");
            assert_eq!(h[header::CACHE_CONTROL], "no-cache", "{path}");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
            let csp = h[header::CONTENT_SECURITY_POLICY].to_str().expect("ascii");
            assert!(
                csp.starts_with(
                    "default-src 'self'; connect-src 'self'; img-src 'self' data:; \
                     style-src 'self'; script-src 'self'"
                ),
                "{csp}"
            );
            let body = body_of(resp);
            let text = std::str::from_utf8(&body).expect("utf-8");
            assert!(
                text.to_ascii_lowercase()
                    .contains(&needle.to_ascii_lowercase()),
                "{path} lacks {needle:?}"
            );
        }
    }

    #[test]
    fn only_the_fixed_paths_are_served() {
        for path in [
            "/../Cargo.toml",
            "/assets/../../x",
            "/assets/unknown.js",
            "/assets/",
            "/assets",
            "/assets/app.js/",
            "/assets/./app.js",
            "/assets/%2e%2e/Cargo.toml",
            "/assets/app.js?x=1",
            "/index.htm",
            "//",
            "",
            "/api/instances",
            "/src/api/dashboard/app.js",
        ] {
            assert!(asset(path).is_none(), "{path:?} must not be served");
        }
    }

    /// The CSP forbids inline code: the page must not rely on any.
    #[test]
    fn the_page_has_no_inline_script_style_or_third_party_url() {
        let lower = INDEX_HTML.to_ascii_lowercase();
        assert!(!lower.contains("<style"), "inline <style> in index.html");
        assert!(!lower.contains(" style="), "style attribute in index.html");
        let handler = lower.split(" on").skip(1).any(|rest| {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase())
                .collect();
            !name.is_empty() && rest[name.len()..].trim_start().starts_with('=')
        });
        assert!(!handler, "inline event handler in index.html");
        for tag in lower.split("<script").skip(1) {
            let open = tag.split('>').next().unwrap_or("");
            assert!(open.contains("src="), "inline <script> in index.html");
        }
        for text in [INDEX_HTML, APP_JS, STYLE_CSS] {
            // The SVG namespace is a name, not a request.
            let text = text.replace("http://www.w3.org/2000/svg", "");
            assert!(!text.contains("http://"), "absolute http URL in an asset");
            assert!(!text.contains("https://"), "absolute https URL in an asset");
        }
    }
}
