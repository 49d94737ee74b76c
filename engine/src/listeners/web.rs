//! Static files built into the binary: the chat page on the client listener and the console
//! on the admin listener. They load nothing from elsewhere, and the policy they are served
//! with says so: a script injected into a page could not run or send data off.

use axum::http::header;
use axum::response::{IntoResponse, Response};

pub const HTML: &str = "text/html; charset=utf-8";
pub const JS: &str = "text/javascript; charset=utf-8";
pub const CSS: &str = "text/css; charset=utf-8";
pub const JSON: &str = "application/json";

/// What the pages may load: their own files, and connections to their own origin (the chat
/// page's WebSocket is same-origin, which `'self'` covers).
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                      connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One file and the path it is served at.
pub struct Asset {
    pub path: &'static str,
    pub kind: &'static str,
    pub body: &'static str,
}

/// The answer serving `file`.
pub fn serve(file: &'static Asset) -> Response {
    (
        [
            (header::CONTENT_TYPE, file.kind),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            // The files change with the binary: revalidate rather than run an old script
            // against a new server.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        file.body,
    )
        .into_response()
}

/// A router serving `files`, for any router state.
pub fn routes<S: Clone + Send + Sync + 'static>(files: &'static [Asset]) -> axum::Router<S> {
    files.iter().fold(axum::Router::new(), |router, file| {
        router.route(file.path, axum::routing::get(move || std::future::ready(serve(file))))
    })
}
