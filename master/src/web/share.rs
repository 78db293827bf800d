//! Share links: a public URL (`/s/SECRET`) that downloads one file, or a zip of one directory
//! tree, without credentials until it expires or is revoked (`shardfs share
//! create|list|revoke`).
//!
//! The secret is 256 random bits; the master keeps only its blake3 (`H` records, so links
//! survive restarts) with the file's inode, who made the link (uid, gid, credential) and when
//! it expires. A download reads the file as its maker, through the web UI's core: if the maker
//! may no longer read it, or their credential is revoked, the link gives nothing. A link
//! names the file, not the path: it follows renames and ends with the file. A link made with
//! a password (kept as an argon2id hash) answers a form, and the file only to a POST of the
//! right password.

use super::auth::WebUser;
use super::{files, Failed};
use crate::{Master, MasterError};
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use shardfs_common::proto::{Caller, FileKind, ShareAction, ShareInfo, ACCESS_READ};
use shardfs_common::{Error, ErrorCode};
use std::net::SocketAddr;
use std::sync::Arc;

const SHARES: u8 = b'H';
/// Longest a link may live: a year.
const MAX_TTL: u64 = 366 * 86_400;
/// Most live links per credential and uid.
const MAX_PER_USER: usize = 10_000;
/// Most live links in the whole cluster.
const MAX_TOTAL: usize = 100_000;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ShareRecord {
    ino: u64,
    path: String,
    caller: Caller,
    credential: String,
    created: u64,
    expires: u64,
    /// PHC string of the argon2id hash of the link's password, if it has one.
    #[serde(default)]
    password: Option<String>,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn key(secret: &str) -> [u8; 32] {
    *blake3::hash(secret.as_bytes()).as_bytes()
}

/// A link's id: the start of its secret's hash (what list and revoke name it by).
fn id_of(k: &[u8]) -> String {
    hex::encode(&k[..6])
}

fn info(k: &[u8], r: &ShareRecord, url: Option<String>) -> ShareInfo {
    ShareInfo {
        id: id_of(k),
        path: r.path.clone(),
        uid: r.caller.uid,
        credential: r.credential.clone(),
        created: r.created,
        expires: r.expires,
        password: r.password.is_some(),
        url,
    }
}

fn refused(msg: &str) -> MasterError {
    MasterError::Fs(Error::fs(ErrorCode::Permission, msg))
}

/// `MasterRequest::Share` from credential `credential` (an admin's if `admin`), for `caller`.
pub(crate) async fn serve(
    m: &Arc<Master>,
    action: ShareAction,
    caller: Caller,
    credential: String,
    admin: bool,
) -> Result<Vec<ShareInfo>, MasterError> {
    let all: Vec<(Vec<u8>, ShareRecord)> = m.meta.records(SHARES)?;
    let mine =
        |r: &ShareRecord| admin || (r.credential == credential && r.caller.uid == caller.uid);
    match action {
        ShareAction::List => Ok(all
            .iter()
            .filter(|(_, r)| mine(r) && r.expires > now())
            .map(|(k, r)| info(k, r, None))
            .collect()),
        ShareAction::Revoke { id } => {
            let Some((k, r)) = all.iter().find(|(k, _)| id_of(k) == id) else {
                return Err(Error::fs(ErrorCode::NotFound, format!("no share link {id}")).into());
            };
            if !mine(r) {
                return Err(refused(
                    "only its maker or an admin may revoke a share link",
                ));
            }
            m.meta.delete_record(SHARES, k)?;
            Ok(vec![info(k, r, None)])
        }
        ShareAction::Create {
            path,
            expires_secs,
            password,
        } => {
            let password = match password {
                Some(p) if p.is_empty() || p.len() > 1024 => {
                    return Err(Error::invalid("a link's password is 1 to 1024 bytes").into())
                }
                Some(p) => Some(hash_password(&p)?),
                None => None,
            };
            if expires_secs == 0 || expires_secs > MAX_TTL {
                return Err(Error::invalid(format!(
                    "a link lasts 1 s to {MAX_TTL} s, not {expires_secs}"
                ))
                .into());
            }
            let Some(http) = m.web.http.get().copied() else {
                return Err(Error::fs(
                    ErrorCode::NotSupported,
                    "this master serves no HTTP: start it with --http ADDR for share links",
                )
                .into());
            };
            let live = || all.iter().filter(|(_, r)| r.expires > now());
            if live()
                .filter(|(_, r)| r.credential == credential && r.caller.uid == caller.uid)
                .count()
                >= MAX_PER_USER
            {
                return Err(Error::fs(
                    ErrorCode::NoSpace,
                    format!("you have {MAX_PER_USER} live share links: revoke some first"),
                )
                .into());
            }
            if live().count() >= MAX_TOTAL {
                return Err(Error::fs(
                    ErrorCode::NoSpace,
                    format!("the cluster holds {MAX_TOTAL} live share links, the most it keeps"),
                )
                .into());
            }
            // Expired links go when new ones are made.
            for (k, r) in &all {
                if r.expires <= now() {
                    m.meta.delete_record(SHARES, k)?;
                }
            }
            let user = WebUser {
                caller: caller.clone(),
                credential: credential.clone(),
            };
            let core = m.web.core().ok_or_else(|| {
                Error::fs(ErrorCode::Unavailable, "the web UI is still connecting")
            })?;
            // The maker must be able to read it now.
            let a = files::as_user(&user, files::resolve(&core, &path)).await?;
            match a.kind {
                FileKind::File => {
                    let fh = files::as_user(&user, core.open(a.ino, ACCESS_READ)).await?;
                    let _ = files::as_user(&user, core.release(fh)).await;
                }
                FileKind::Dir => {
                    files::as_user(&user, files::list(&core, a.ino, 1)).await?;
                }
                _ => {
                    return Err(Error::fs(
                        ErrorCode::Invalid,
                        "only files and directories can be shared",
                    )
                    .into())
                }
            }
            let secret = hex::encode(shardfs_common::pki::random::<32>());
            let k = key(&secret);
            let rec = ShareRecord {
                ino: a.ino,
                path: format!("/{}", files::components(&path)?.join("/")),
                caller,
                credential,
                created: now(),
                expires: now() + expires_secs,
                password,
            };
            m.meta.put_record(SHARES, &k, &rec)?;
            Ok(vec![info(
                &k,
                &rec,
                Some(format!("http://{http}/s/{secret}")),
            )])
        }
    }
}

fn hash_password(p: &str) -> Result<String, MasterError> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(&shardfs_common::pki::random::<16>())
        .map_err(|e| MasterError::from(Error::invalid(e.to_string())))?;
    argon2::Argon2::default()
        .hash_password(p.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::invalid(format!("cannot hash the password: {e}")).into())
}

fn password_ok(phc: &str, given: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(phc).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(given.as_bytes(), &h)
            .is_ok()
    })
}

/// The form a password-protected link answers with.
fn ask_password(wrong: bool) -> Response {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>ShardFS share</title></head>\
         <body><form method=\"post\"><p>{}</p><label>Password <input type=\"password\" \
         name=\"password\" id=\"password\" autofocus></label> <button>Download</button></form></body></html>",
        if wrong { "Wrong password." } else { "This link needs a password." }
    );
    let status = match wrong {
        true => StatusCode::FORBIDDEN,
        false => StatusCode::UNAUTHORIZED,
    };
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// `GET /s/SECRET`: the shared file's bytes, as an attachment (or the password form).
pub(super) async fn download(
    State(m): State<Arc<Master>>,
    Path(secret): Path<String>,
) -> Result<Response, Failed> {
    serve_link(m, secret, None).await
}

/// `POST /s/SECRET` with `password=…`: the file of a password-protected link.
pub(super) async fn download_with_password(
    State(m): State<Arc<Master>>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Path(secret): Path<String>,
    axum::Form(form): axum::Form<std::collections::HashMap<String, String>>,
) -> Result<Response, Failed> {
    let given = form.get("password").cloned().unwrap_or_default();
    serve_link(m, secret, Some((given, from))).await
}

async fn serve_link(
    m: Arc<Master>,
    secret: String,
    given: Option<(String, SocketAddr)>,
) -> Result<Response, Failed> {
    let gone = || {
        Failed(
            StatusCode::NOT_FOUND,
            "no such share link (expired or revoked?)".into(),
        )
    };
    if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(gone());
    }
    let rec: ShareRecord = m
        .meta
        .get_record(SHARES, &key(&secret))
        .map_err(|e| Failed(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .ok_or_else(gone)?;
    if rec.expires <= now() || m.auth.is_revoked(&rec.credential) {
        return Err(gone());
    }
    if let Some(phc) = rec.password.clone() {
        let Some((given, from)) = given else {
            return Ok(ask_password(false));
        };
        let k = key(&secret);
        if let Err(t) = m.web.limits.password(from.ip(), &k) {
            tracing::warn!(client = %from.ip(), link = id_of(&k), "share password tried too often");
            return Ok(super::too_many(t, "this link's password"));
        }
        // argon2 is slow on purpose: not on the threads that serve requests.
        let ok = given.len() <= 1024
            && tokio::task::spawn_blocking(move || password_ok(&phc, &given))
                .await
                .unwrap_or(false);
        if !ok {
            return Ok(ask_password(true));
        }
    }
    let core = m.web.core().ok_or_else(|| {
        Failed(
            StatusCode::SERVICE_UNAVAILABLE,
            "still connecting; try again".into(),
        )
    })?;
    let user = WebUser {
        caller: rec.caller.clone(),
        credential: rec.credential.clone(),
    };
    let a = files::as_user(&user, core.getattr(rec.ino)).await?;
    let name = match rec.path.rsplit('/').next() {
        Some(n) if !n.is_empty() => n,
        _ => "shardfs",
    };
    match a.kind {
        FileKind::File if a.nlink > 0 => {
            let stream = files::read_stream(core, user, a.ino, 0, a.size).await?;
            Ok(super::file_response(
                Body::from_stream(stream),
                Some(a.size),
                "application/octet-stream",
                name,
                true,
            ))
        }
        FileKind::Dir if a.nlink > 0 => {
            // The directory must still be readable by its maker before anything is sent.
            files::as_user(&user, files::list(&core, a.ino, 1)).await?;
            let stream = super::zip::stream(core, user, a.ino);
            Ok(super::file_response(
                Body::from_stream(stream),
                None,
                "application/zip",
                &format!("{name}.zip"),
                true,
            ))
        }
        _ => Err(gone()),
    }
}
