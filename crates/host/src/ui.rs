//! The web UI, served at `/` from the same origin as the WebSocket so the
//! Origin check lets its pages in. The files are `ui/dist` (built by
//! `make ui`): embedded in release builds, read from disk in debug builds.
//! A path that names no file gets `index.html` (the UI routes on the
//! client); when the UI was not built, a page says how to build it.

use axum::http::{header, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "../../ui/dist"]
#[allow_missing = true]
struct Assets;

/// The page's policy: scripts, styles and connections only from this host
/// (xterm and Svelte set inline styles), never inside another site's frame.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src 'self' data:; connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'";

const NOT_BUILT: &str = "<!doctype html><meta charset=utf-8><title>Ensemble: UI not built</title>\
<body style=\"font-family:system-ui;max-width:40em;margin:4em auto\">\
<h1>The web UI was not built</h1>\
<p>This host was compiled without <code>ui/dist</code>. Run <code>make ui</code> \
(or <code>npm ci &amp;&amp; npm run build</code> in <code>ui/</code>), then rebuild the host.</p>\
<p>The WebSocket endpoint <code>/v1/ws</code> works without it.</p></body>";

/// Answers any GET that no other route takes.
pub async fn serve(uri: Uri) -> Response {
    let path = uri.path().trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    if let Some(file) = Assets::get(path) {
        return file_response(path, file);
    }
    // Hashed bundles that are gone are real misses; anything else is a route
    // of the single-page app.
    if path.starts_with("assets/") {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    }
    match Assets::get("index.html") {
        Some(file) => file_response("index.html", file),
        None => (StatusCode::INTERNAL_SERVER_ERROR, Html(NOT_BUILT)).into_response(),
    }
}

fn file_response(path: &str, file: rust_embed::EmbeddedFile) -> Response {
    // Vite names bundles by content hash, so they never change; index.html
    // must be revalidated to pick up a new build.
    let cache = if path.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    (
        [
            (header::CONTENT_TYPE, file.metadata.mimetype().to_owned()),
            (header::CACHE_CONTROL, cache.to_owned()),
            (header::CONTENT_SECURITY_POLICY, CSP.to_owned()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
        ],
        file.data,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(path: &str) -> (StatusCode, String, String) {
        let response = serve(path.parse().expect("a valid path")).await;
        let status = response.status();
        let ctype = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("a body");
        (status, ctype, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn routes_get_the_app_or_say_how_to_build_it() {
        let (root, root_type, root_body) = get("/").await;
        let (route, _, route_body) = get("/some/client/route").await;
        assert!(root_type.starts_with("text/html"), "{root_type}");
        assert_eq!(root, route, "an app route answers like /");
        assert_eq!(root_body, route_body);
        if Assets::get("index.html").is_some() {
            assert_eq!(root, StatusCode::OK);
            assert!(root_body.contains("<div id=\"app\">"), "{root_body}");
        } else {
            assert_eq!(root, StatusCode::INTERNAL_SERVER_ERROR);
            assert!(root_body.contains("make ui"), "{root_body}");
        }
    }

    #[tokio::test]
    async fn a_missing_bundle_is_not_found() {
        let (status, _, _) = get("/assets/gone-1234.js").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
