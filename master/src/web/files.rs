//! The web UI's file operations, through the client core embedded in the master (the code a
//! mount runs), each made as the signed-in user: the master checks that user's permissions on
//! every request exactly as for a mount's, and the core answers nothing from what it holds
//! for someone else (`CoreConfig::shared`).

use super::auth::WebUser;
use bytes::Bytes;
use futures::Stream;
use shardfs_client::core::{Core, ListEntry};
use shardfs_client::master::{Requester, CALLER};
use shardfs_common::proto::{Attr, FileKind, SetAttr, ACCESS_READ, ACCESS_WRITE};
use shardfs_common::{Error, ErrorCode, Result, ROOT_INO};
use std::future::Future;
use std::sync::Arc;

/// Run `f` as `user`.
pub async fn as_user<F: Future>(user: &WebUser, f: F) -> F::Output {
    let who = Requester {
        uid: user.caller.uid,
        gid: user.caller.gid,
        pid: 0,
    };
    CALLER.scope(who, f).await
}

/// The names of a path under the root, refusing empty, `.` and `..` components.
pub fn components(path: &str) -> Result<Vec<&str>> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts
        .iter()
        .any(|p| *p == "." || *p == ".." || p.len() > 255)
    {
        return Err(Error::fs(ErrorCode::Invalid, "not a plain path"));
    }
    Ok(parts)
}

/// The attributes of `path` (the root for an empty one).
pub async fn resolve(core: &Core, path: &str) -> Result<Attr> {
    let mut at = core.getattr(ROOT_INO).await?;
    for name in components(path)? {
        if at.kind != FileKind::Dir {
            return Err(Error::fs(ErrorCode::NotDir, "not a directory"));
        }
        at = core.lookup(at.ino, name.as_bytes()).await?;
    }
    Ok(at)
}

/// The parent directory's inode and the last name of `path`.
pub async fn parent_of<'a>(core: &Core, path: &'a str) -> Result<(Attr, &'a str)> {
    let parts = components(path)?;
    let Some((name, dirs)) = parts.split_last() else {
        return Err(Error::fs(ErrorCode::Invalid, "the root has no parent"));
    };
    let dir = resolve(core, &dirs.join("/")).await?;
    if dir.kind != FileKind::Dir {
        return Err(Error::fs(ErrorCode::NotDir, "not a directory"));
    }
    Ok((dir, name))
}

/// Every entry of directory `ino` but `.` and `..`, at most `max`.
pub async fn list(core: &Arc<Core>, ino: u64, max: usize) -> Result<Vec<ListEntry>> {
    let fh = core.opendir(ino).await?;
    let mut out = Vec::new();
    let mut offset = 0i64;
    let r = loop {
        let page = match core.readdir(fh, ino, offset, 512).await {
            Ok(p) => p,
            Err(e) => break Err(e),
        };
        let Some(last) = page.last() else {
            break Ok(());
        };
        offset = last.offset;
        out.extend(
            page.into_iter()
                .filter(|e| e.name != b"." && e.name != b".."),
        );
        if out.len() >= max {
            out.truncate(max);
            break Ok(());
        }
    };
    core.releasedir(fh);
    r.map(|()| out)
}

/// Bytes `[start, end)` of file `ino` as a stream of chunks, read as `user`; the file is
/// open (its permission checked) before the first chunk.
pub async fn read_stream(
    core: Arc<Core>,
    user: WebUser,
    ino: u64,
    start: u64,
    end: u64,
) -> Result<impl Stream<Item = std::result::Result<Bytes, std::io::Error>>> {
    let fh = as_user(&user, core.open(ino, ACCESS_READ)).await?;
    const CHUNK: u64 = 1 << 20;
    let state = (core, user, fh, start, false);
    Ok(futures::stream::unfold(
        state,
        move |(core, user, fh, at, done)| async move {
            if done {
                return None;
            }
            if at >= end {
                let _ = as_user(&user, core.release(fh)).await;
                return None;
            }
            let want = (end - at).min(CHUNK) as u32;
            match as_user(&user, core.read(fh, at, want)).await {
                Ok(d) if !d.is_empty() => {
                    let next = at + d.len() as u64;
                    Some((
                        Ok(Bytes::copy_from_slice(&d)),
                        (core, user, fh, next, false),
                    ))
                }
                // The file got shorter meanwhile: the response ends short.
                Ok(_) => {
                    let _ = as_user(&user, core.release(fh)).await;
                    None
                }
                Err(e) => {
                    let _ = as_user(&user, core.release(fh)).await;
                    let e = std::io::Error::other(e.to_string());
                    Some((Err(e), (core, user, fh, at, true)))
                }
            }
        },
    ))
}

/// Store the chunks of `body` as file `path` (made, or replaced in place), as `user`; the
/// new size.
pub async fn write_file<S>(core: &Core, user: &WebUser, path: &str, body: S) -> Result<u64>
where
    S: Stream<Item = std::result::Result<Bytes, axum::Error>> + Unpin,
{
    as_user(user, store(core, user, path, body)).await
}

async fn store<S>(core: &Core, user: &WebUser, path: &str, mut body: S) -> Result<u64>
where
    S: Stream<Item = std::result::Result<Bytes, axum::Error>> + Unpin,
{
    use futures::StreamExt;
    let (dir, name) = parent_of(core, path).await?;
    let fh = match core.lookup(dir.ino, name.as_bytes()).await {
        Ok(a) if a.kind == FileKind::File => {
            let fh = core.open(a.ino, ACCESS_WRITE).await?;
            let cut = SetAttr {
                size: Some(0),
                ..Default::default()
            };
            if let Err(e) = core.setattr(a.ino, Some(fh), cut).await {
                let _ = core.release(fh).await;
                return Err(e);
            }
            fh
        }
        Ok(_) => return Err(Error::fs(ErrorCode::IsDir, "a directory has that name")),
        Err(e) if e.code() == ErrorCode::NotFound => {
            let (uid, gid) = (user.caller.uid, user.caller.gid);
            core.create(dir.ino, name.as_bytes(), 0o644, uid, gid)
                .await?
                .1
        }
        Err(e) => return Err(e),
    };
    let mut at = 0u64;
    let written = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Error::fs(ErrorCode::Invalid, e.to_string()))?;
            let mut done = 0usize;
            while done < chunk.len() {
                let n = core.write(fh, at, &chunk[done..], 0).await?;
                done += n as usize;
                at += n as u64;
            }
        }
        Ok::<(), Error>(())
    }
    .await;
    // The close publishes what was written (or the error of storing it).
    let closed = core.release(fh).await;
    written.and(closed).map(|()| at)
}

/// A new directory `path`, as `user`.
pub async fn mkdir(core: &Core, user: &WebUser, path: &str) -> Result<()> {
    let (uid, gid) = (user.caller.uid, user.caller.gid);
    as_user(user, async {
        let (dir, name) = parent_of(core, path).await?;
        core.mknod(dir.ino, name.as_bytes(), FileKind::Dir, 0o755, uid, gid, 0)
            .await
            .map(|_| ())
    })
    .await
}

/// Rename `from` to `to` (replacing a file there), as `user`.
pub async fn rename(core: &Core, user: &WebUser, from: &str, to: &str) -> Result<()> {
    as_user(user, async {
        let (a, an) = parent_of(core, from).await?;
        let (b, bn) = parent_of(core, to).await?;
        core.rename(a.ino, an.as_bytes(), b.ino, bn.as_bytes(), 0)
            .await
    })
    .await
}

/// Delete `path` (a file, or an empty directory), as `user`.
pub async fn delete(core: &Core, user: &WebUser, path: &str) -> Result<()> {
    as_user(user, async {
        let (dir, name) = parent_of(core, path).await?;
        let a = core.lookup(dir.ino, name.as_bytes()).await?;
        match a.kind {
            FileKind::Dir => core.rmdir(dir.ino, name.as_bytes()).await,
            _ => core.unlink(dir.ino, name.as_bytes()).await,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_plain_names_under_the_root() {
        assert_eq!(components("/a//b/c/").unwrap(), vec!["a", "b", "c"]);
        assert!(components("").unwrap().is_empty());
        assert!(components("a/../b").is_err());
        assert!(components("./a").is_err());
        assert!(components(&"x".repeat(256)).is_err());
    }
}
