//! The web UI, served beside `/metrics` on the master's HTTP address (`--http`).
//!
//! Signing in: `shardfs web MASTER` sends `WebLogin` for its user; the master answers a
//! one-time link (`/login?t=…`) whose session acts as that user, within what the credential
//! allows ([`auth`]). Then: directory listings with breadcrumbs and sorting, previews (text
//! highlighted by the bundled highlight.js; images, PDF, audio and video in the browser),
//! downloads (streamed, with range requests),
//! uploads by drag and drop, new folders, rename and delete, and a cluster page (nodes,
//! capacity, degraded blocks, repair). Every file operation goes through a client core
//! embedded in the master — the code a mount runs, so encryption, erasure coding and sealing
//! are the same — with the signed-in user as the caller of every request ([`files`]).
//!
//! Requests that change something (`PUT /raw/…`, `POST /api/…`) must carry the header
//! `X-ShardFS: 1`, which a page of another site cannot add without the master's consent, and
//! the session cookie is `SameSite=Strict`: no cross-site request forgery. Files are served
//! with `X-Content-Type-Options: nosniff`, and anything a browser would run (HTML, SVG,
//! scripts) as an opaque download type, so no stored file can run in the UI's origin.

mod assets;
pub mod auth;
mod files;
pub mod limit;
mod pages;
pub mod share;
mod zip;

use crate::Master;
use auth::WebUser;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use shardfs_client::core::{Core, CoreConfig};
use shardfs_common::proto::{Caller, FileKind};
use shardfs_common::{Error, ErrorCode};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tracing::{info, warn};

/// The web UI's part of the master.
#[derive(Default)]
pub struct Web {
    pub auth: auth::Auth,
    /// How often sign-in links and share passwords may be tried.
    pub limits: limit::Limits,
    /// The client core the UI's file operations go through (once it has connected).
    core: OnceLock<Arc<Core>>,
    /// Where the UI is served (for the links `shardfs web` prints).
    pub http: OnceLock<SocketAddr>,
}

impl Web {
    /// The UI's client core, once connected.
    pub fn core(&self) -> Option<Arc<Core>> {
        self.core.get().cloned()
    }

    /// A sign-in link for `caller`, made by credential `credential`: (url, expires).
    pub fn login_link(&self, caller: Caller, credential: String) -> Result<(String, u64), Error> {
        let Some(http) = self.http.get() else {
            return Err(Error::fs(
                ErrorCode::NotSupported,
                "this master serves no HTTP: start it with --http ADDR for the web UI",
            ));
        };
        let secret = self.auth.link(WebUser { caller, credential });
        let expires = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_add(auth::LINK_TTL)
            .as_secs();
        Ok((format!("http://{http}/login?t={secret}"), expires))
    }
}

/// Connect the UI's client core to this master at `quic` (retrying until it answers), with
/// the master's own web credential.
pub fn start_core(master: Arc<Master>, quic: SocketAddr) {
    tokio::spawn(async move {
        let credential = match master.auth.web_credential(&master.meta) {
            Ok(c) => Arc::new(c),
            Err(e) => return warn!("the web UI has no credential, so no files: {e}"),
        };
        let mut addr = quic;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let cfg = CoreConfig {
            master: addr,
            credential,
            merge_max_bytes: 4 << 20,
            journal_dir: None,
            journal_bytes: 0,
            timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            cache_bytes: 64 << 20,
            readahead_blocks: 2,
            upload_window: 4,
            dirty_limit: 64 << 20,
            inline_max: shardfs_common::proto::INLINE_MAX,
            hedge_delay: Duration::from_millis(500),
            shard_timeout: Duration::from_secs(10),
            attr_ttl: Duration::ZERO,
            shared: true,
        };
        loop {
            match Core::connect(cfg.clone()).await {
                Ok(core) => match core.start_session("web UI".into()).await {
                    Ok(()) => {
                        info!("web UI connected");
                        let _ = master.web.core.set(core);
                        return;
                    }
                    Err(e) => warn!("web UI session: {e}"),
                },
                Err(e) => warn!("web UI cannot reach the master yet: {e}"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

type S = Arc<Master>;

/// The UI's routes.
pub fn router(master: S) -> axum::Router {
    axum::Router::new()
        .route("/", get(|| async { Redirect::to("/files/") }))
        .route("/login", get(login))
        .route("/logout", get(logout))
        .route("/files", get(|| async { Redirect::to("/files/") }))
        .route("/files/", get(browse_root))
        .route("/files/{*path}", get(browse))
        .route("/raw/{*path}", get(download).put(upload))
        .route("/api/{op}", post(change))
        .route("/cluster", get(cluster))
        .route("/assets/highlight.js", get(assets::highlight_js))
        .route("/assets/highlight.css", get(assets::highlight_css))
        .route(
            "/s/{secret}",
            get(share::download).post(share::download_with_password),
        )
        .with_state(master)
}

/// An error as an HTTP answer.
struct Failed(StatusCode, String);

impl IntoResponse for Failed {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

impl From<Error> for Failed {
    fn from(e: Error) -> Failed {
        use ErrorCode as C;
        let status = match e.code() {
            C::NotFound => StatusCode::NOT_FOUND,
            C::Access | C::Permission => StatusCode::FORBIDDEN,
            C::Exists | C::NotEmpty => StatusCode::CONFLICT,
            C::NotDir | C::IsDir | C::Invalid | C::NameTooLong => StatusCode::BAD_REQUEST,
            C::Quota | C::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
            C::TooBig => StatusCode::PAYLOAD_TOO_LARGE,
            C::Unavailable | C::Timeout => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Failed(status, e.to_string())
    }
}

type Answer = Result<Response, Failed>;

fn cookie_of(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get(header::COOKIE)?.to_str().ok()?;
    raw.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == auth::COOKIE).then(|| v.to_string())
    })
}

fn signed_out() -> Failed {
    Failed(
        StatusCode::UNAUTHORIZED,
        "not signed in: open the link `shardfs web MASTER` prints".into(),
    )
}

/// The signed-in user of a request, and the core to act through.
fn session(m: &Master, headers: &HeaderMap) -> Result<(WebUser, Arc<Core>), Failed> {
    let user = cookie_of(headers)
        .and_then(|c| m.web.auth.user(&c, |id| m.auth.is_revoked(id)))
        .ok_or_else(signed_out)?;
    let core = m.web.core.get().cloned().ok_or_else(|| {
        Failed(
            StatusCode::SERVICE_UNAVAILABLE,
            "the web UI is still connecting to the cluster; try again".into(),
        )
    })?;
    Ok((user, core))
}

/// A request that changes something must say so with `X-ShardFS: 1` (see the module docs).
fn changing(headers: &HeaderMap) -> Result<(), Failed> {
    match headers.get("x-shardfs").and_then(|v| v.to_str().ok()) {
        Some("1") => Ok(()),
        _ => Err(Failed(
            StatusCode::FORBIDDEN,
            "a request that changes files needs the header X-ShardFS: 1".into(),
        )),
    }
}

fn who(u: &WebUser) -> String {
    format!("uid {} (via {})", u.caller.uid, u.credential)
}

/// A try refused for being one too many: `429` and when to come back.
fn too_many(t: limit::TooMany, what: &str) -> Response {
    let mut r = (
        StatusCode::TOO_MANY_REQUESTS,
        format!(
            "too many tries of {what}; try again in {} s\n",
            t.retry_after()
        ),
    )
        .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(t.retry_after()));
    r
}

fn html(s: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        s,
    )
        .into_response()
}

async fn login(
    State(m): State<S>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    if let Err(t) = m.web.limits.sign_in(from.ip()) {
        warn!(client = %from.ip(), "sign-in links tried too often");
        return Ok(too_many(t, "sign-in links"));
    }
    let cookie = q
        .get("t")
        .and_then(|t| m.web.auth.redeem(t))
        .ok_or_else(|| {
            Failed(
                StatusCode::UNAUTHORIZED,
                "this sign-in link is unknown, used or expired: make another with `shardfs web`"
                    .into(),
            )
        })?;
    let set = format!(
        "{}={cookie}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        auth::COOKIE,
        auth::SESSION_TTL.as_secs()
    );
    let mut r = Redirect::to("/files/").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&set).expect("cookie header"),
    );
    Ok(r)
}

async fn logout(State(m): State<S>, headers: HeaderMap) -> Response {
    if let Some(c) = cookie_of(&headers) {
        m.web.auth.end(&c);
    }
    let mut r = html(pages::page("Signed out", None, "/", "<p>Signed out.</p>"));
    let clear = format!(
        "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        auth::COOKIE
    );
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&clear).expect("cookie header"),
    );
    r
}

async fn browse_root(
    State(m): State<S>,
    headers: HeaderMap,
    q: Query<HashMap<String, String>>,
) -> Answer {
    browse(State(m), headers, Path(String::new()), q).await
}

/// A directory's listing, or a file's preview.
async fn browse(
    State(m): State<S>,
    headers: HeaderMap,
    Path(path): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let (user, core) = session(&m, &headers)?;
    let a = files::as_user(&user, files::resolve(&core, &path)).await?;
    let shown = format!("/{}", path.trim_matches('/'));
    if a.kind == FileKind::Dir {
        let dir = match shown.as_str() {
            "/" => "/".to_string(),
            s => format!("{s}/"),
        };
        let entries = files::as_user(&user, files::list(&core, a.ino, 100_000)).await?;
        let sort = pages::Sort::parse(q.get("sort").map(String::as_str));
        let desc = q.get("desc").is_some_and(|d| d == "1");
        let page = q
            .get("page")
            .and_then(|p| p.parse::<usize>().ok())
            .map_or(0, |p| p.saturating_sub(1));
        let body = pages::listing(&dir, entries, sort, desc, page);
        return Ok(html(pages::page(&dir, Some(&who(&user)), &dir, &body)));
    }
    let (_, kind) = pages::content_type(&shown);
    // The beginning of the file decides whether it shows as text.
    const HEAD: u64 = 256 << 10;
    let mut text = None;
    if kind == pages::Kind::Other && a.size > 0 {
        let end = a.size.min(HEAD);
        let stream = files::read_stream(core.clone(), user.clone(), a.ino, 0, end).await?;
        let chunks: Vec<_> = futures::StreamExt::collect(stream).await;
        let mut head = Vec::new();
        for c in chunks {
            head.extend_from_slice(&c.map_err(|e| Failed(StatusCode::BAD_GATEWAY, e.to_string()))?);
        }
        if pages::is_text(&head) {
            let t = String::from_utf8_lossy(&head).into_owned();
            text = Some((t, a.size > HEAD));
        }
    } else if kind == pages::Kind::Other {
        text = Some((String::new(), false));
    }
    let dir = shown
        .rsplit_once('/')
        .map_or("/".to_string(), |(d, _)| format!("{d}/"));
    let body = pages::preview(&shown, &a, kind, text);
    Ok(html(pages::page(&shown, Some(&who(&user)), &dir, &body)))
}

/// One `bytes=a-b` range of a file of `size` bytes: [start, end).
fn range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, Failed> {
    let Some(v) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let bad = || {
        Failed(
            StatusCode::RANGE_NOT_SATISFIABLE,
            format!("range {v:?} is not one satisfiable byte range of {size}"),
        )
    };
    let spec = v.strip_prefix("bytes=").ok_or_else(bad)?;
    if spec.contains(',') {
        return Err(bad());
    }
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| bad())?;
            (size.saturating_sub(n), size)
        }
        (a, "") => (a.parse().map_err(|_| bad())?, size),
        (a, b) => {
            let (a, b): (u64, u64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
            (a, b.saturating_add(1).min(size))
        }
    };
    if start >= end || start >= size {
        return Err(bad());
    }
    Ok(Some((start, end)))
}

/// A file's bytes, streamed, with range requests.
async fn download(
    State(m): State<S>,
    headers: HeaderMap,
    Path(path): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let (user, core) = session(&m, &headers)?;
    let a = files::as_user(&user, files::resolve(&core, &path)).await?;
    if a.kind != FileKind::File {
        return Err(Failed(StatusCode::BAD_REQUEST, "not a file".into()));
    }
    let part = range(&headers, a.size)?;
    let (start, end) = part.unwrap_or((0, a.size));
    let stream = files::read_stream(core, user, a.ino, start, end).await?;
    let (ctype, _) = pages::content_type(&path);
    let name = path.rsplit('/').next().unwrap_or("file");
    let attachment = q.get("download").is_some_and(|d| d == "1");
    let mut r = file_response(
        Body::from_stream(stream),
        Some(end - start),
        ctype,
        name,
        attachment,
    );
    r.headers_mut()
        .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let val = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""));
    if part.is_some() {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        r.headers_mut().insert(
            header::CONTENT_RANGE,
            val(&format!("bytes {start}-{}/{}", end - 1, a.size)),
        );
    }
    Ok(r)
}

/// A response streaming `len` bytes (if known) of file `name` as `ctype` (never sniffed,
/// never cached by others), as an attachment if asked.
fn file_response(
    body: Body,
    len: Option<u64>,
    ctype: &str,
    name: &str,
    attachment: bool,
) -> Response {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    let val = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""));
    h.insert(header::CONTENT_TYPE, val(ctype));
    if let Some(len) = len {
        h.insert(header::CONTENT_LENGTH, val(&len.to_string()));
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    if attachment {
        let ascii: String = name
            .chars()
            .map(|c| match c.is_ascii_graphic() && c != '"' && c != '\\' {
                true => c,
                false => '_',
            })
            .collect();
        h.insert(
            header::CONTENT_DISPOSITION,
            val(&format!("attachment; filename=\"{ascii}\"")),
        );
    }
    r
}

/// A file's new content (made, or replaced), streamed from the request body.
async fn upload(
    State(m): State<S>,
    headers: HeaderMap,
    Path(path): Path<String>,
    body: Body,
) -> Answer {
    changing(&headers)?;
    let (user, core) = session(&m, &headers)?;
    let stream = body.into_data_stream();
    let size = files::write_file(&core, &user, &path, stream).await?;
    Ok((StatusCode::CREATED, format!("stored {size} bytes\n")).into_response())
}

fn arg<'a>(q: &'a HashMap<String, String>, k: &str) -> Result<&'a str, Failed> {
    q.get(k)
        .map(String::as_str)
        .ok_or_else(|| Failed(StatusCode::BAD_REQUEST, format!("missing ?{k}=")))
}

/// `POST /api/mkdir?path=`, `/api/rename?from=&to=`, `/api/delete?path=` (a file or an
/// empty directory).
async fn change(
    State(m): State<S>,
    headers: HeaderMap,
    Path(op): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    changing(&headers)?;
    let (user, core) = session(&m, &headers)?;
    match op.as_str() {
        "mkdir" => files::mkdir(&core, &user, arg(&q, "path")?).await?,
        "rename" => files::rename(&core, &user, arg(&q, "from")?, arg(&q, "to")?).await?,
        "delete" => files::delete(&core, &user, arg(&q, "path")?).await?,
        _ => {
            return Err(Failed(
                StatusCode::NOT_FOUND,
                format!("no such change: {op}"),
            ))
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn cluster(State(m): State<S>, headers: HeaderMap) -> Answer {
    let (user, _) = session(&m, &headers)?;
    let nodes = m.nodes.list();
    let h = m.repair.health();
    let body = pages::cluster(&m.meta.cluster.ec.to_string(), &nodes, &h);
    Ok(html(pages::page("Cluster", Some(&who(&user)), "/", &body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_one_satisfiable_span() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
            range(&m, 1000).map_err(|f| f.0)
        };
        assert_eq!(h("bytes=0-99").unwrap(), Some((0, 100)));
        assert_eq!(h("bytes=900-").unwrap(), Some((900, 1000)));
        assert_eq!(h("bytes=-10").unwrap(), Some((990, 1000)));
        assert_eq!(h("bytes=990-5000").unwrap(), Some((990, 1000)));
        assert!(h("bytes=1000-").is_err());
        assert!(h("bytes=5-1").is_err());
        assert!(h("bytes=0-1,5-6").is_err());
        assert!(h("items=0-1").is_err());
        assert_eq!(range(&HeaderMap::new(), 10).map_err(|f| f.0).unwrap(), None);
    }
}
