//! A directory as a zip archive, streamed while it is read: what a share link of a directory
//! downloads.
//!
//! The tree is walked as the link's maker, by name, so it holds exactly what they could read
//! through paths: a file they may not read, or anything in a directory they may not search,
//! is left out, as are symlinks and special files. Entries are
//! stored uncompressed (the archive is built as fast as the files are read) with zip64 sizes,
//! so files past 4 GiB are fine. If reading fails halfway, the response is cut off with an
//! error rather than ended cleanly, so no one mistakes a broken archive for a whole one.

use super::auth::WebUser;
use super::files::{self, as_user};
use async_zip::{Compression, ZipDateTimeBuilder, ZipEntryBuilder};
use bytes::Bytes;
use futures::{AsyncWriteExt, Stream, StreamExt};
use shardfs_client::core::Core;
use shardfs_common::proto::{FileKind, Timespec, ACCESS_READ};
use shardfs_common::{Error, ErrorCode, Result};
use std::sync::Arc;
use tracing::debug;

/// Most entries (files and directories) one archive holds.
const MAX_ENTRIES: usize = 100_000;
/// Deepest directory nesting an archive follows.
const MAX_DEPTH: usize = 64;
/// How much of the archive may be made ahead of the client reading it.
const PIPE: usize = 1 << 20;

/// The zip of directory `ino` as a stream of chunks, read as `user`.
pub fn stream(
    core: Arc<Core>,
    user: WebUser,
    ino: u64,
) -> impl Stream<Item = std::result::Result<Bytes, std::io::Error>> {
    let (w, r) = tokio::io::duplex(PIPE);
    let task = tokio::spawn(async move { as_user(&user, write(core, ino, w)).await });
    let tail = futures::stream::once(async move {
        match task.await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(Err(std::io::Error::other(e.to_string()))),
            Err(e) => Some(Err(std::io::Error::other(e.to_string()))),
        }
    })
    .filter_map(futures::future::ready);
    tokio_util::io::ReaderStream::new(r).chain(tail)
}

fn zip_err(e: async_zip::error::ZipError) -> Error {
    Error::fs(ErrorCode::Io, format!("making the archive: {e}"))
}

fn io_err(e: std::io::Error) -> Error {
    Error::fs(ErrorCode::Io, format!("sending the archive: {e}"))
}

/// A file's time as a zip's (UTC; zip cannot say before 1980).
fn date(t: Timespec) -> async_zip::ZipDateTime {
    let d = time::OffsetDateTime::from_unix_timestamp(t.secs.max(315_532_800))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    ZipDateTimeBuilder::new()
        .year(d.year())
        .month(u8::from(d.month()).into())
        .day(d.day().into())
        .hour(d.hour().into())
        .minute(d.minute().into())
        .second(d.second().into())
        .build()
}

async fn write(core: Arc<Core>, root: u64, out: tokio::io::DuplexStream) -> Result<()> {
    let mut zip = async_zip::tokio::write::ZipFileWriter::with_tokio(out);
    let mut stack = vec![(root, String::new(), 0usize)];
    let mut entries = 0usize;
    while let Some((dir, prefix, depth)) = stack.pop() {
        let listed = match files::list(&core, dir, MAX_ENTRIES).await {
            Ok(l) => l,
            // Not the maker's to read: left out.
            Err(e) if dir != root => {
                debug!("left out of an archive: {prefix}: {e}");
                continue;
            }
            Err(e) => return Err(e),
        };
        for e in listed {
            entries += 1;
            if entries > MAX_ENTRIES {
                return Err(Error::fs(
                    ErrorCode::TooBig,
                    format!("a shared directory archives at most {MAX_ENTRIES} entries"),
                ));
            }
            let name = format!("{prefix}{}", String::from_utf8_lossy(&e.name));
            // Reached by name, as a path would be: the master checks the maker may search
            // the directory, not only read its names.
            let a = match core.lookup(dir, &e.name).await {
                Ok(a) => a,
                Err(err) => {
                    debug!("left out of an archive: {name}: {err}");
                    continue;
                }
            };
            match a.kind {
                FileKind::Dir if depth < MAX_DEPTH => {
                    let entry =
                        ZipEntryBuilder::new(format!("{name}/").into(), Compression::Stored)
                            .last_modification_date(date(a.mtime))
                            .unix_permissions(0o040000 | a.perm);
                    zip.write_entry_whole(entry, &[]).await.map_err(zip_err)?;
                    stack.push((a.ino, format!("{name}/"), depth + 1));
                }
                FileKind::File => {
                    let fh = match core.open(a.ino, ACCESS_READ).await {
                        Ok(fh) => fh,
                        Err(e) => {
                            debug!("left out of an archive: {name}: {e}");
                            continue;
                        }
                    };
                    let r = copy_file(&core, fh, a.size, &mut zip, &name, &a).await;
                    let _ = core.release(fh).await;
                    r?;
                }
                _ => {
                    debug!("left out of an archive: {name} (not a file or directory, or too deep)")
                }
            }
        }
    }
    let mut out = zip.close().await.map_err(zip_err)?;
    futures::AsyncWriteExt::close(&mut out)
        .await
        .map_err(io_err)
}

async fn copy_file(
    core: &Core,
    fh: u64,
    size: u64,
    zip: &mut async_zip::tokio::write::ZipFileWriter<tokio::io::DuplexStream>,
    name: &str,
    a: &shardfs_common::proto::Attr,
) -> Result<()> {
    let entry = ZipEntryBuilder::new(name.to_string().into(), Compression::Stored)
        .last_modification_date(date(a.mtime))
        .unix_permissions(0o100000 | a.perm);
    let mut w = zip.write_entry_stream(entry).await.map_err(zip_err)?;
    let mut at = 0u64;
    while at < size {
        let want = (size - at).min(1 << 20) as u32;
        let d = core.read(fh, at, want).await?;
        if d.is_empty() {
            break;
        }
        w.write_all(&d).await.map_err(io_err)?;
        at += d.len() as u64;
    }
    w.close().await.map_err(zip_err)
}
