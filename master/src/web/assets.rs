//! Files the web UI's pages load, bundled into the master: highlight.js for text previews
//! (`assets/highlight/`, see its README for where it comes from and how to update it).

use axum::http::header;
use axum::response::IntoResponse;

const HIGHLIGHT_JS: &str = include_str!("../../assets/highlight/highlight.min.js");
const HIGHLIGHT_CSS: &str = include_str!("../../assets/highlight/highlight.min.css");

fn asset(ctype: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, ctype),
            (header::CACHE_CONTROL, "public, max-age=86400"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}

/// `GET /assets/highlight.js`.
pub(super) async fn highlight_js() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", HIGHLIGHT_JS)
}

/// `GET /assets/highlight.css`.
pub(super) async fn highlight_css() -> impl IntoResponse {
    asset("text/css; charset=utf-8", HIGHLIGHT_CSS)
}
