//! One request in, one reply out: the `match` that maps every SFTP operation onto the
//! session's [`Filesystem`], and every failure onto a STATUS with the right code and a
//! message a person can act on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use sftpgate_proto::extensions::names;
use sftpgate_proto::{
    data_header, encode_data_header, encode_status, longname, ExtendedRequest, FileAttributes,
    LimitsReply, LongnameInfo, NameEntry, OpenFlags, Request, Response, StatusCode,
    DATA_HEADER_LEN,
};
use sftpgate_vfs::{Filesystem, FsError, RenameMode, VPath};

use super::handles::{DirHandle, FileHandle, Handle, HandleTable};
use super::request_metrics::SessionMetrics;
use super::transport::PACKET_TAIL_ROOM;
use super::writer::REPLY_HEADROOM;
use crate::config::{Limits, RequestPolicy};
use crate::events::{Event, EventSink, FileOp};
use crate::hooks::{ConnectionInfo, SessionId};

/// The extensions announced in VERSION, with OpenSSH's version strings.
pub(crate) const EXTENSIONS: &[(&str, &str)] = &[
    (names::POSIX_RENAME, "1"),
    (names::STATVFS, "2"),
    (names::FSTATVFS, "2"),
    (names::HARDLINK, "1"),
    (names::FSYNC, "1"),
    (names::LSETSTAT, "1"),
    (names::LIMITS, "1"),
    (names::EXPAND_PATH, "1"),
    (names::COPY_DATA, "1"),
    (names::HOME_DIRECTORY, "1"),
    (names::USERS_GROUPS_BY_ID, "1"),
];

/// A buffer for a DATA reply of up to `len` bytes read at file offset `offset`, holding
/// `start` filler bytes (returned with it): [`REPLY_HEADROOM`] of room for the reply writer,
/// then what the reply's 13-byte header needs to put the data at an address congruent to
/// `offset` modulo 64. The reply starts at `start`; the filler stays in the buffer (the
/// writer may fill the room with the bytes that precede the reply, see `writer`), so a
/// backend that turns the buffer into a `Vec` to read into its spare capacity (fs-local,
/// which has no `unsafe`) moves no bytes and keeps the placement.
///
/// Why the placement: the kernel copies file data into the buffer with `rep movsb`, which is
/// three times slower when the destination sits 1 to 31 bytes past the source within a 4 KiB
/// page (the stores alias the loads ahead of them). mimalloc hands out 32 KiB blocks
/// page-aligned, so data behind a 13-byte header read from a page-aligned offset hit exactly
/// that: 0.39-0.45 s of `pread` per GiB from tmpfs against 0.12-0.16 s with the offsets
/// congruent (2 vCPU AMD EPYC; see docs/performance.md, "Seventh run"). russh's copy of the
/// reply into its packet buffer (14 bytes into a packet) got faster with it.
pub(super) fn data_reply_buffer(offset: u64, len: usize) -> (BytesMut, usize) {
    const ALIGN: usize = 64;
    // PACKET_TAIL_ROOM after the data: SSH's padding and MAC, sealed in place (`writer`).
    let mut out = BytesMut::with_capacity(
        REPLY_HEADROOM + ALIGN - 1 + DATA_HEADER_LEN + len + PACKET_TAIL_ROOM,
    );
    let data_at = out.as_ptr() as usize + REPLY_HEADROOM + DATA_HEADER_LEN;
    // Both below ALIGN, so the cast and the sum cannot overflow.
    let want = (offset % ALIGN as u64) as usize;
    let pad = (want + ALIGN - data_at % ALIGN) % ALIGN;
    out.resize(REPLY_HEADROOM + pad, 0);
    let start = out.len();
    (out, start)
}

/// Chunk size of server-side copies (`copy-data`).
const COPY_CHUNK: u32 = 64 * 1024;

/// Executes requests for one session.
pub(crate) struct Dispatcher {
    pub(crate) fs: Arc<dyn Filesystem>,
    pub(crate) handles: Arc<HandleTable>,
    /// Where relative paths start, and what `~` means.
    pub(crate) home: VPath,
    pub(crate) user: String,
    pub(crate) limits: Limits,
    pub(crate) policy: RequestPolicy,
    pub(crate) request_timeout: Option<Duration>,
    pub(crate) events: Arc<dyn EventSink>,
    pub(crate) connection: Arc<ConnectionInfo>,
    pub(crate) session: SessionId,
    pub(crate) stats: Stats,
    pub(crate) metrics: SessionMetrics,
}

/// File bytes moved by a session.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl Stats {
    /// (written by the client, read by the client)
    pub(crate) fn totals(&self) -> (u64, u64) {
        (
            self.bytes_in.load(Ordering::Relaxed),
            self.bytes_out.load(Ordering::Relaxed),
        )
    }
}

/// What [`Dispatcher::dispatch`] left in its buffer.
pub(crate) struct Dispatched {
    /// The reply's status (`Ok` for data replies).
    pub(crate) status: StatusCode,
    /// Where the reply starts; the bytes before it are room the writer may overwrite.
    pub(crate) start: usize,
}

impl Dispatched {
    fn whole(status: StatusCode) -> Self {
        Dispatched { status, start: 0 }
    }
}

impl Dispatcher {
    /// Runs `request` and puts its reply into `out` (empty on entry). Never fails: every
    /// error becomes a STATUS reply.
    pub(crate) async fn dispatch(&self, request: Request, out: &mut BytesMut) -> Dispatched {
        let Some(id) = request.id() else {
            // INIT is the session's business, not a request.
            return Dispatched::whole(StatusCode::Ok);
        };
        if let Some(refusal) = self.policy.refusal(&request) {
            let status = status_error(out, id, &FsError::Forbidden(refusal.into()));
            return Dispatched::whole(status);
        }
        let result = match self.request_timeout {
            None => self.run(id, request, out).await,
            Some(limit) => match tokio::time::timeout(limit, self.run(id, request, out)).await {
                Ok(result) => result,
                Err(_) => {
                    metrics::counter!("sftpgate_request_timeouts_total").increment(1);
                    Err(FsError::Other(format!(
                        "Operation timed out after {} s",
                        limit.as_secs_f64()
                    )))
                }
            },
        };
        match result {
            Ok(start) => Dispatched {
                status: StatusCode::Ok,
                start,
            },
            Err(e) => {
                out.clear();
                Dispatched::whole(status_error(out, id, &e))
            }
        }
    }

    /// Runs one request; returns where in `out` its reply starts.
    async fn run(&self, id: u32, request: Request, out: &mut BytesMut) -> Result<usize, FsError> {
        let served = match request {
            Request::Init { .. } => Ok(()),
            Request::Open {
                filename,
                pflags,
                attrs,
                ..
            } => {
                let path = self.path(&filename)?;
                let file = self.fs.open(&path, pflags, &attrs).await?;
                let handle = Handle::File(Arc::new(FileHandle {
                    file,
                    path,
                    flags: pflags,
                    written: AtomicU64::new(0),
                    read: AtomicU64::new(0),
                }));
                self.reply_handle(id, handle, out).await
            }
            Request::Opendir { path, .. } => {
                let path = self.path(&path)?;
                let dir = self.fs.opendir(&path).await?;
                let handle = Handle::Dir(Arc::new(DirHandle {
                    dir: tokio::sync::Mutex::new(dir),
                }));
                self.reply_handle(id, handle, out).await
            }
            Request::Close { handle, .. } => {
                match self.handles.remove(&handle)? {
                    Handle::File(f) => self.close_file(&f).await?,
                    Handle::Dir(_) => {}
                }
                ok(out, id);
                Ok(())
            }
            Request::Read {
                handle,
                offset,
                len,
                ..
            } => {
                let file = self.handles.file(&handle)?;
                let len = len.min(self.limits.max_read);
                // Room, and bytes that place the data (see `data_reply_buffer`).
                let (buffer, start) = data_reply_buffer(offset, len as usize);
                *out = buffer;
                let header_at = start;
                encode_data_header(out, id, 0);
                let data_at = out.len();
                out.reserve(len as usize);
                let n = file.file.read(offset, len, out).await?;
                if n == 0 && len > 0 {
                    return Err(FsError::Eof);
                }
                // The backend appended exactly n bytes: patch the lengths in the header.
                debug_assert_eq!(out.len() - data_at, n);
                file.read.fetch_add(n as u64, Ordering::Relaxed);
                self.stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                self.metrics.bytes_out.increment(n as u64);
                out[header_at..data_at].copy_from_slice(&data_header(id, n));
                return Ok(start);
            }
            Request::Write {
                handle,
                offset,
                data,
                ..
            } => {
                let file = self.handles.file(&handle)?;
                if data.len() > self.limits.max_write as usize {
                    metrics::counter!("sftpgate_limit_hits_total", "limit" => "write").increment(1);
                    tracing::info!(
                        len = data.len(),
                        limit = self.limits.max_write,
                        "WRITE over the size limit refused"
                    );
                    return Err(FsError::InvalidInput(
                        format!(
                            "WRITE of {} bytes exceeds the limit of {} bytes",
                            data.len(),
                            self.limits.max_write
                        )
                        .into(),
                    ));
                }
                let n = data.len() as u64;
                file.file.write_data(offset, data).await?;
                file.written.fetch_add(n, Ordering::Relaxed);
                self.stats.bytes_in.fetch_add(n, Ordering::Relaxed);
                self.metrics.bytes_in.increment(n);
                ok(out, id);
                Ok(())
            }
            Request::Lstat { path, .. } => {
                let attrs = self.fs.lstat(&self.path(&path)?).await?;
                attrs_reply(out, id, attrs);
                Ok(())
            }
            Request::Stat { path, .. } => {
                let attrs = self.fs.stat(&self.path(&path)?).await?;
                attrs_reply(out, id, attrs);
                Ok(())
            }
            Request::Fstat { handle, .. } => {
                let attrs = self.handles.file(&handle)?.file.stat().await?;
                attrs_reply(out, id, attrs);
                Ok(())
            }
            Request::Setstat { path, attrs, .. } => {
                let path = self.path(&path)?;
                self.fs.setstat(&path, &attrs).await?;
                self.emit(FileOp::Setstat { path });
                ok(out, id);
                Ok(())
            }
            Request::Fsetstat { handle, attrs, .. } => {
                let file = self.handles.file(&handle)?;
                file.file.setstat(&attrs).await?;
                self.emit(FileOp::Setstat {
                    path: file.path.clone(),
                });
                ok(out, id);
                Ok(())
            }
            Request::Readdir { handle, .. } => {
                let dir = self.handles.dir(&handle)?;
                let batch = dir.dir.lock().await.next_batch().await?;
                if batch.is_empty() {
                    return Err(FsError::Eof);
                }
                let now = unix_now();
                let entries = batch
                    .into_iter()
                    .map(|e| {
                        let info = LongnameInfo {
                            user: None,
                            group: None,
                            nlink: e.nlink,
                            now,
                        };
                        NameEntry {
                            longname: longname(&e.name, &e.attrs, &info).into(),
                            filename: e.name,
                            attrs: e.attrs,
                        }
                    })
                    .collect();
                Response::Name { id, entries }.encode(out);
                Ok(())
            }
            Request::Remove { filename, .. } => {
                let path = self.path(&filename)?;
                self.fs.remove(&path).await?;
                self.emit(FileOp::Remove { path });
                ok(out, id);
                Ok(())
            }
            Request::Mkdir { path, attrs, .. } => {
                let path = self.path(&path)?;
                self.fs.mkdir(&path, &attrs).await?;
                self.emit(FileOp::Mkdir { path });
                ok(out, id);
                Ok(())
            }
            Request::Rmdir { path, .. } => {
                let path = self.path(&path)?;
                self.fs.rmdir(&path).await?;
                self.emit(FileOp::Rmdir { path });
                ok(out, id);
                Ok(())
            }
            Request::Realpath { path, .. } => {
                let resolved = self.fs.realpath(&self.path(&path)?).await?;
                single_name(out, id, Bytes::copy_from_slice(resolved.as_bytes()));
                Ok(())
            }
            Request::Rename {
                oldpath, newpath, ..
            } => {
                let (from, to) = (self.path(&oldpath)?, self.path(&newpath)?);
                self.fs.rename(&from, &to, RenameMode::NoReplace).await?;
                self.emit(FileOp::Rename { from, to });
                ok(out, id);
                Ok(())
            }
            Request::Readlink { path, .. } => {
                let target = self.fs.readlink(&self.path(&path)?).await?;
                single_name(out, id, target);
                Ok(())
            }
            Request::Symlink {
                linkpath,
                targetpath,
                ..
            } => {
                // The codec reads OpenSSH's order (target first), which every deployed
                // client sends, except AsyncSSH: it sends the draft's order to servers whose
                // identification string does not say OpenSSH or paramiko.
                let (linkpath, targetpath) =
                    if self.connection.client_software.starts_with("AsyncSSH_") {
                        (targetpath, linkpath)
                    } else {
                        (linkpath, targetpath)
                    };
                if targetpath.contains(&0) {
                    return Err(FsError::InvalidInput(
                        "symlink target contains a NUL byte".into(),
                    ));
                }
                let link = self.path(&linkpath)?;
                self.fs.symlink(&targetpath, &link).await?;
                self.emit(FileOp::Symlink {
                    link,
                    target: String::from_utf8_lossy(&targetpath).into_owned(),
                });
                ok(out, id);
                Ok(())
            }
            Request::Extended { request, .. } => self.extended(id, request, out).await,
        };
        served.map(|()| 0)
    }

    async fn extended(
        &self,
        id: u32,
        request: ExtendedRequest,
        out: &mut BytesMut,
    ) -> Result<(), FsError> {
        match request {
            ExtendedRequest::PosixRename { oldpath, newpath } => {
                let (from, to) = (self.path(&oldpath)?, self.path(&newpath)?);
                self.fs.rename(&from, &to, RenameMode::Replace).await?;
                self.emit(FileOp::Rename { from, to });
                ok(out, id);
            }
            ExtendedRequest::Statvfs { path } => {
                let stats = self.fs.statvfs(&self.path(&path)?).await?;
                let mut data = BytesMut::with_capacity(88);
                stats.encode(&mut data);
                extended_reply(out, id, data);
            }
            ExtendedRequest::Fstatvfs { handle } => {
                let stats = self.handles.file(&handle)?.file.statvfs().await?;
                let mut data = BytesMut::with_capacity(88);
                stats.encode(&mut data);
                extended_reply(out, id, data);
            }
            ExtendedRequest::Hardlink { oldpath, newpath } => {
                let (existing, link) = (self.path(&oldpath)?, self.path(&newpath)?);
                self.fs.hardlink(&existing, &link).await?;
                self.emit(FileOp::Hardlink { existing, link });
                ok(out, id);
            }
            ExtendedRequest::Fsync { handle } => {
                self.handles.file(&handle)?.file.sync().await?;
                ok(out, id);
            }
            ExtendedRequest::Lsetstat { path, attrs } => {
                let path = self.path(&path)?;
                self.fs.lsetstat(&path, &attrs).await?;
                self.emit(FileOp::Setstat { path });
                ok(out, id);
            }
            ExtendedRequest::Limits => {
                let limits = LimitsReply {
                    max_packet_len: u64::from(self.limits.max_packet),
                    max_read_len: u64::from(self.limits.max_read),
                    max_write_len: u64::from(self.limits.max_write),
                    max_open_handles: self.limits.max_handles as u64,
                };
                let mut data = BytesMut::with_capacity(32);
                limits.encode(&mut data);
                extended_reply(out, id, data);
            }
            ExtendedRequest::ExpandPath { path } => {
                let expanded = self.expand_tilde(&path)?;
                let resolved = self.fs.realpath(&expanded).await?;
                single_name(out, id, Bytes::copy_from_slice(resolved.as_bytes()));
            }
            ExtendedRequest::HomeDirectory { username } => {
                if !username.is_empty() && username != self.user.as_bytes() {
                    return Err(FsError::NotFound);
                }
                single_name(out, id, Bytes::copy_from_slice(self.home.as_bytes()));
            }
            ExtendedRequest::CopyData {
                read_handle,
                read_offset,
                read_length,
                write_handle,
                write_offset,
            } => {
                self.copy_data(
                    &read_handle,
                    read_offset,
                    read_length,
                    &write_handle,
                    write_offset,
                )
                .await?;
                ok(out, id);
            }
            ExtendedRequest::UsersGroupsById { uids, gids } => {
                let names = self.fs.names_by_id(&uids, &gids).await?;
                let mut data = BytesMut::new();
                names.encode(&mut data);
                extended_reply(out, id, data);
            }
            ExtendedRequest::Unknown { name, .. } => {
                return Err(FsError::Unsupported(
                    format!("extension {name:?} is not supported").into(),
                ));
            }
        }
        Ok(())
    }

    /// `copy-data`: server-side copy between two open handles, as OpenSSH's sftp-server
    /// implements it (a length of 0 copies to the end of the source; overlapping ranges of
    /// one handle are refused).
    async fn copy_data(
        &self,
        read_handle: &[u8],
        read_offset: u64,
        read_length: u64,
        write_handle: &[u8],
        write_offset: u64,
    ) -> Result<(), FsError> {
        let source = self.handles.file(read_handle)?;
        let dest = self.handles.file(write_handle)?;
        if !source.flags.contains(OpenFlags::READ) {
            return Err(FsError::Forbidden(
                "source handle is not open for reading".into(),
            ));
        }
        if !dest.flags.contains(OpenFlags::WRITE) {
            return Err(FsError::Forbidden(
                "destination handle is not open for writing".into(),
            ));
        }
        let to_end = read_length == 0;
        if read_handle == write_handle {
            let len = if to_end { u64::MAX } else { read_length };
            let (read_end, write_end) = (
                read_offset.saturating_add(len),
                write_offset.saturating_add(len),
            );
            if read_offset < write_end && write_offset < read_end {
                return Err(FsError::InvalidInput(
                    "copy-data ranges overlap on one handle".into(),
                ));
            }
        }
        let mut copied = 0u64;
        let mut buf = BytesMut::with_capacity(COPY_CHUNK as usize);
        while to_end || copied < read_length {
            let want = if to_end {
                COPY_CHUNK
            } else {
                COPY_CHUNK.min(u32::try_from(read_length - copied).unwrap_or(u32::MAX))
            };
            buf.clear();
            let n = match source.file.read(read_offset + copied, want, &mut buf).await {
                Ok(n) => n,
                Err(FsError::Eof) => 0,
                Err(e) => return Err(e),
            };
            if n == 0 {
                break;
            }
            let chunk = buf.split().freeze();
            dest.file.write(write_offset + copied, chunk).await?;
            copied += n as u64;
        }
        if !to_end && copied < read_length {
            return Err(FsError::Eof);
        }
        Ok(())
    }

    /// Closes a file the client is done with and reports what it was used for.
    async fn close_file(&self, handle: &FileHandle) -> Result<(), FsError> {
        let written = handle.written.load(Ordering::Relaxed);
        let read = handle.read.load(Ordering::Relaxed);
        let wrote = handle
            .flags
            .intersects(OpenFlags::WRITE | OpenFlags::APPEND)
            && (written > 0 || handle.flags.intersects(OpenFlags::CREAT | OpenFlags::TRUNC));
        let events = self.events.wants_file_events();
        // The final size (which differs from the bytes written when the client overwrote
        // part of a file) costs a storage round trip: only when someone reads it.
        let size = if wrote && events {
            handle.file.stat().await.ok().and_then(|a| a.size)
        } else {
            None
        };
        handle.file.close().await?;
        if !events {
            return Ok(());
        }
        if wrote {
            self.emit(FileOp::Upload {
                path: handle.path.clone(),
                size: size.unwrap_or(written),
                bytes: written,
            });
        } else if read > 0 {
            self.emit(FileOp::Download {
                path: handle.path.clone(),
                bytes: read,
            });
        }
        Ok(())
    }

    fn emit(&self, op: FileOp) {
        self.events.emit(Event::File {
            connection: self.connection.clone(),
            session: self.session,
            op,
        });
    }

    async fn reply_handle(
        &self,
        id: u32,
        handle: Handle,
        out: &mut BytesMut,
    ) -> Result<(), FsError> {
        match self.handles.insert(handle) {
            Ok(wire) => {
                Response::Handle { id, handle: wire }.encode(out);
                Ok(())
            }
            Err((handle, e)) => {
                if let Handle::File(f) = handle {
                    let _ = f.file.close().await;
                }
                Err(e)
            }
        }
    }

    fn path(&self, raw: &[u8]) -> Result<VPath, FsError> {
        Ok(VPath::resolve(&self.home, raw)?)
    }

    /// `~` and `~/x` are the home directory; `~name` only for the session's own user.
    fn expand_tilde(&self, raw: &[u8]) -> Result<VPath, FsError> {
        let Some(rest) = raw.strip_prefix(b"~") else {
            return self.path(raw);
        };
        let (name, tail) = match rest.iter().position(|b| *b == b'/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &b""[..]),
        };
        if !name.is_empty() && name != self.user.as_bytes() {
            return Err(FsError::NotFound);
        }
        Ok(VPath::resolve(&self.home, tail)?)
    }
}

/// Appends the STATUS reply for an error; returns its code.
pub(crate) fn status_error(out: &mut BytesMut, id: u32, error: &FsError) -> StatusCode {
    let code = StatusCode::from(error);
    // A message built per error is fine: errors are not the hot path.
    encode_status(out, id, code, &error.to_string());
    code
}

fn ok(out: &mut BytesMut, id: u32) {
    encode_status(out, id, StatusCode::Ok, "Success");
}

fn attrs_reply(out: &mut BytesMut, id: u32, attrs: FileAttributes) {
    Response::Attrs { id, attrs }.encode(out);
}

fn single_name(out: &mut BytesMut, id: u32, name: Bytes) {
    Response::Name {
        id,
        entries: vec![NameEntry {
            filename: name.clone(),
            longname: name,
            attrs: FileAttributes::new(),
        }],
    }
    .encode(out);
}

fn extended_reply(out: &mut BytesMut, id: u32, data: BytesMut) {
    Response::ExtendedReply {
        id,
        data: data.freeze(),
    }
    .encode(out);
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_reply_buffers_put_the_data_congruent_to_the_file_offset() {
        for offset in [0u64, 1, 13, 63, 64, 4096, 32_768, 1 << 40, u64::MAX] {
            for len in [0usize, 1, 32_768, 261_120] {
                let (mut out, pad) = data_reply_buffer(offset, len);
                assert_eq!(out.len(), pad);
                assert!((REPLY_HEADROOM..REPLY_HEADROOM + 64).contains(&pad));
                let start = out.as_ptr();
                encode_data_header(&mut out, 1, len);
                out.extend_from_slice(&vec![7; len]);
                // Written in place: the data went where the buffer said it would.
                assert_eq!(
                    out.as_ptr(),
                    start,
                    "offset {offset}, len {len}: buffer moved"
                );
                let data_at = out[pad + DATA_HEADER_LEN..].as_ptr() as usize;
                assert_eq!(
                    data_at % 64,
                    (offset % 64) as usize,
                    "offset {offset}, len {len}"
                );
                // And SSH can seal its packet behind the data without moving it.
                assert!(
                    out.capacity() - out.len() >= PACKET_TAIL_ROOM,
                    "offset {offset}, len {len}: {} spare",
                    out.capacity() - out.len()
                );
            }
        }
    }
}
