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
use sftpgate_vfs::{Filesystem, FsError, ReadPart, RenameMode, VPath};

use super::handles::{DirHandle, FileHandle, Handle, HandleTable};
use super::request_metrics::SessionMetrics;
use super::transport::{PACKET_HEAD_ROOM, PACKET_TAIL_ROOM};
use super::writer::{Frame, REPLY_HEADROOM};
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
    placed_buffer(offset, REPLY_HEADROOM, DATA_HEADER_LEN, len)
}

/// A buffer for `len` bytes of a large READ's data read at `offset` that SSH sends as a
/// packet of its own after the reply's first (see [`Dispatcher::read`]): the
/// packet's header room in front, the data placed as in [`data_reply_buffer`], room for
/// the packet's padding and MAC behind. The data starts at the returned `start`.
pub(super) fn data_packet_buffer(offset: u64, len: usize) -> (BytesMut, usize) {
    placed_buffer(offset, PACKET_HEAD_ROOM, 0, len)
}

/// `room` bytes, then filler so that data after a `header` of that many bytes sits at an
/// address congruent to `offset` modulo 64; capacity for `len` bytes of data and the SSH
/// packet's tail after them. Returns the buffer (holding room and filler) and its length.
fn placed_buffer(offset: u64, room: usize, header: usize, len: usize) -> (BytesMut, usize) {
    const ALIGN: usize = 64;
    // PACKET_TAIL_ROOM after the data: SSH's padding and MAC, sealed in place (`writer`).
    let mut out = BytesMut::with_capacity(room + ALIGN - 1 + header + len + PACKET_TAIL_ROOM);
    let data_at = out.as_ptr() as usize + room + header;
    // Both below ALIGN, so the cast and the sum cannot overflow.
    let want = (offset % ALIGN as u64) as usize;
    let pad = (want + ALIGN - data_at % ALIGN) % ALIGN;
    out.resize(room + pad, 0);
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
    /// The client's largest SSH packet, where replies go out in packets (an SSH channel;
    /// `None` on a byte stream): large READs are then read into one buffer per packet
    /// ([`Dispatcher::read`]).
    pub(crate) packet: Option<usize>,
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
    /// The rest of the reply, after the buffer's, one SSH packet each: a large READ's data
    /// read into its packets ([`Dispatcher::read`]); empty for other replies.
    pub(crate) more: Vec<Frame>,
}

impl Dispatched {
    fn whole(status: StatusCode) -> Self {
        Dispatched {
            status,
            start: 0,
            more: Vec::new(),
        }
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
        let mut more = Vec::new();
        let run = self.run(id, request, out, &mut more);
        let result = match self.request_timeout {
            None => run.await,
            Some(limit) => match tokio::time::timeout(limit, run).await {
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
                more,
            },
            Err(e) => {
                out.clear();
                Dispatched::whole(status_error(out, id, &e))
            }
        }
    }

    /// Runs one request; returns where in `out` its reply starts. A reply that goes on past
    /// `out` goes on in `more`.
    async fn run(
        &self,
        id: u32,
        request: Request,
        out: &mut BytesMut,
        more: &mut Vec<Frame>,
    ) -> Result<usize, FsError> {
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
                // A large READ is read into its packets, unless the writer sends its reply
                // in place anyway: one packet and a tail small enough to ride in front of
                // the next reply (a 32 KiB READ's).
                let into_packets = self.packet.and_then(|packet| {
                    let expected = file.file.read_len_hint(offset, len).unwrap_or(len);
                    let spans = expected as usize + DATA_HEADER_LEN
                        > packet + REPLY_HEADROOM - PACKET_HEAD_ROOM;
                    spans.then_some((expected, packet))
                });
                let (len, packet) =
                    into_packets.map_or((len, None), |(expected, packet)| (expected, Some(packet)));
                return self.read(&file, id, offset, len, packet, out, more).await;
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

    /// A READ of `len` bytes (the file decides: fewer is a short read) into a DATA reply:
    /// into `out`, behind the reply's header, placed as [`data_reply_buffer`] says.
    ///
    /// With `packet`, the SSH packet size, the READ spans several packets and is read into
    /// them ([`File::read_parts`]): the first part is `out` (one whole packet with the
    /// header), each further one a buffer of its own with room for its packet around it
    /// (`more`), so that SSH seals every packet where the file's data was put. Read into
    /// one buffer, the reply would be copied by SSH into its packets: with OpenSSH's client
    /// (255 KiB READs, eight packets each) that copy was 8-13 % of a download's server CPU,
    /// and reading files in memory into their packets took 5-7 % off it
    /// (docs/performance.md, "Twentieth run"); the backend decides how (LocalFs: one
    /// `pread` per packet of a file in memory, one `preadv` into all of them otherwise).
    /// A short read ends the reply where it stopped, as one read coming back short would.
    ///
    /// [`File::read_parts`]: sftpgate_vfs::File::read_parts
    #[allow(clippy::too_many_arguments)]
    async fn read(
        &self,
        file: &FileHandle,
        id: u32,
        offset: u64,
        len: u32,
        packet: Option<usize>,
        out: &mut BytesMut,
        more: &mut Vec<Frame>,
    ) -> Result<usize, FsError> {
        let first = packet.map_or(len, |packet| len.min((packet - DATA_HEADER_LEN) as u32));
        let (buffer, start) = data_reply_buffer(offset, first as usize);
        *out = buffer;
        encode_data_header(out, id, 0);
        let data_at = out.len();
        let n = match packet {
            Some(packet) if first < len => {
                let mut parts = vec![ReadPart::new(std::mem::take(out), first)];
                let mut starts = vec![data_at];
                let mut at = u64::from(first);
                while at < u64::from(len) {
                    let want = (u64::from(len) - at).min(packet as u64) as u32;
                    let (buf, piece_start) = data_packet_buffer(offset + at, want as usize);
                    parts.push(ReadPart::new(buf, want));
                    starts.push(piece_start);
                    at += u64::from(want);
                }
                let read = file.file.read_parts(offset, &mut parts).await;
                let mut parts = parts.into_iter().zip(starts);
                if let Some((part, _)) = parts.next() {
                    *out = part.buf;
                }
                let n = read?;
                more.extend(
                    parts
                        .map(|(part, start)| Frame {
                            buf: part.buf,
                            start,
                        })
                        .filter(|frame| frame.len() > 0),
                );
                n
            }
            _ => file.file.read(offset, first, out).await?,
        };
        if n == 0 && len > 0 {
            return Err(FsError::Eof);
        }
        // The backend appended exactly n bytes: patch the lengths in the header.
        debug_assert_eq!(
            out.len() - data_at + more.iter().map(Frame::len).sum::<usize>(),
            n
        );
        file.read.fetch_add(n as u64, Ordering::Relaxed);
        self.stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        self.metrics.bytes_out.increment(n as u64);
        out[start..data_at].copy_from_slice(&data_header(id, n));
        Ok(start)
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
    use sftpgate_vfs::memory::MemoryFs;
    use sftpgate_vfs::File;

    use super::*;
    use crate::events::NoEvents;
    use crate::hooks::{AuthMethod, ConnectionId};

    const PACKET: usize = 32_768;

    /// A file of a memory filesystem that says its reads may wait for a device (the
    /// default `File::reads_from_memory`), as a disk or object store's: its large READs are
    /// read with one `File::read` each (counted), copied into their packets.
    struct OnDevice {
        inner: Box<dyn File>,
        reads: Arc<std::sync::atomic::AtomicUsize>,
    }

    #[async_trait::async_trait]
    impl File for OnDevice {
        async fn read(&self, offset: u64, len: u32, buf: &mut BytesMut) -> Result<usize, FsError> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            self.inner.read(offset, len, buf).await
        }
        fn read_len_hint(&self, offset: u64, len: u32) -> Option<u32> {
            self.inner.read_len_hint(offset, len)
        }
        async fn write(&self, offset: u64, data: Bytes) -> Result<(), FsError> {
            self.inner.write(offset, data).await
        }
        async fn stat(&self) -> Result<FileAttributes, FsError> {
            self.inner.stat().await
        }
        async fn setstat(&self, attrs: &FileAttributes) -> Result<(), FsError> {
            self.inner.setstat(attrs).await
        }
        async fn sync(&self) -> Result<(), FsError> {
            self.inner.sync().await
        }
        async fn close(&self) -> Result<(), FsError> {
            self.inner.close().await
        }
    }

    /// A dispatcher over a memory filesystem holding `/f` with `data`, sending replies in
    /// packets of `packet` bytes; and `/f` opened, as a file in memory or, with `reads`,
    /// as one whose reads may wait ([`OnDevice`], counting its reads there).
    async fn dispatcher_with(
        data: &[u8],
        packet: Option<usize>,
        reads: Option<Arc<std::sync::atomic::AtomicUsize>>,
    ) -> (Dispatcher, Bytes) {
        let fs = MemoryFs::default();
        let path = VPath::parse(b"/f").unwrap();
        let file = fs
            .open(
                &path,
                OpenFlags::WRITE | OpenFlags::CREAT,
                &FileAttributes::new(),
            )
            .await
            .unwrap();
        file.write(0, Bytes::copy_from_slice(data)).await.unwrap();
        file.close().await.unwrap();
        let mut file = fs
            .open(&path, OpenFlags::READ, &FileAttributes::new())
            .await
            .unwrap();
        if let Some(reads) = reads {
            file = Box::new(OnDevice { inner: file, reads });
        }
        let dispatcher = Dispatcher {
            fs: Arc::new(fs),
            handles: Arc::new(HandleTable::new(16)),
            home: VPath::root(),
            user: "reader".into(),
            limits: Limits::default(),
            policy: RequestPolicy::default(),
            request_timeout: None,
            events: Arc::new(NoEvents),
            connection: Arc::new(ConnectionInfo {
                id: ConnectionId(1),
                peer: "127.0.0.1:22".parse().unwrap(),
                user: "reader".into(),
                method: AuthMethod::External,
                client_software: String::new(),
            }),
            session: SessionId(1),
            stats: Stats::default(),
            metrics: SessionMetrics::register(),
            packet,
        };
        let handle = dispatcher
            .handles
            .insert(Handle::File(Arc::new(FileHandle {
                file,
                path,
                flags: OpenFlags::READ,
                written: AtomicU64::new(0),
                read: AtomicU64::new(0),
            })))
            .map_err(|(_, e)| e)
            .expect("a handle");
        (dispatcher, handle)
    }

    /// A READ's reply: the bytes of each buffer (the first with the DATA header), checked
    /// to have the room SSH needs to seal each packet where it lies.
    async fn read(d: &Dispatcher, handle: &Bytes, offset: u64, len: u32) -> Vec<Bytes> {
        let request = Request::Read {
            id: 9,
            handle: handle.clone(),
            offset,
            len,
        };
        let mut out = BytesMut::new();
        let done = d.dispatch(request, &mut out).await;
        let mut parts = vec![out.freeze().slice(done.start..)];
        let mut at = offset + (parts[0].len() - DATA_HEADER_LEN) as u64;
        for frame in done.more {
            assert!(frame.start >= PACKET_HEAD_ROOM, "{} in front", frame.start);
            let spare = frame.buf.capacity() - frame.buf.len();
            assert!(spare >= PACKET_TAIL_ROOM, "{spare} behind");
            let data_at = frame.buf[frame.start..].as_ptr() as usize;
            assert_eq!(data_at % 64, (at % 64) as usize, "placed as the first");
            at += frame.len() as u64;
            parts.push(frame.buf.freeze().slice(frame.start..));
        }
        parts
    }

    /// The data of a DATA reply in `parts`.
    fn data_of(parts: &[Bytes]) -> Vec<u8> {
        let whole: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        match Response::decode(Bytes::from(whole).slice(4..)).unwrap() {
            Response::Data { id: 9, data } => data.to_vec(),
            other => panic!("not DATA: {other:?}"),
        }
    }

    /// Large READs come cut into whole packets, each placed for SSH to seal it where it
    /// lies, whether the file reads from memory (one read per packet) or may wait for a
    /// device (one read per READ: `reads` counts them); short at the end of the file, EOF
    /// past it; small READs and READs without packets in one buffer.
    async fn large_reads_come_cut_into_whole_packets(
        reads: Option<Arc<std::sync::atomic::AtomicUsize>>,
    ) {
        let count = || reads.as_ref().map(|r| r.load(Ordering::Relaxed));
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let (d, handle) = dispatcher_with(&data, Some(PACKET), reads.clone()).await;
        // OpenSSH's 255 KiB READ: the header and 32,755 bytes, six whole packets, the rest.
        let before = count();
        let parts = read(&d, &handle, 0, 261_120).await;
        let lens: Vec<usize> = parts.iter().map(Bytes::len).collect();
        assert_eq!(lens, [vec![PACKET; 7], vec![31_757]].concat());
        assert_eq!(data_of(&parts), &data[..261_120]);
        if let (Some(before), Some(after)) = (before, count()) {
            assert_eq!(after - before, 1, "a READ that may wait is one read");
        }
        // At an odd offset, and short at the end of the file.
        for offset in [1u64, 4097, 600_000 - 40_000, 600_000 - 32_755, 600_000 - 7] {
            let parts = read(&d, &handle, offset, 261_120).await;
            let end = (offset as usize + 261_120).min(data.len());
            assert_eq!(data_of(&parts), &data[offset as usize..end], "at {offset}");
            for part in &parts[..parts.len() - 1] {
                assert_eq!(part.len(), PACKET, "at {offset}: a packet not whole");
            }
        }
        // Past the end: EOF, as ever.
        let parts = read(&d, &handle, 600_000, 261_120).await;
        assert_eq!(parts.len(), 1);
        let reply = Response::decode(parts[0].slice(4..)).unwrap();
        assert!(
            matches!(
                reply,
                Response::Status {
                    code: StatusCode::Eof,
                    ..
                }
            ),
            "{reply:?}"
        );
        // Small READs, a 32 KiB one too (its 13 bytes over a packet ride with the next
        // reply, see `writer`), and any READ without packets, come in one buffer.
        for len in [1_000, 32_755, 32_768] {
            let parts = read(&d, &handle, 10, len).await;
            assert_eq!(parts.len(), 1, "READ of {len}");
            assert_eq!(data_of(&parts), &data[10..10 + len as usize]);
        }
        let parts = read(&d, &handle, 10, 40_000).await;
        assert_eq!(parts.len(), 2);
        assert_eq!(data_of(&parts), &data[10..40_010]);
        let (d, handle) = dispatcher_with(&data, None, reads.clone()).await;
        let parts = read(&d, &handle, 0, 261_120).await;
        assert_eq!(parts.len(), 1);
        assert_eq!(data_of(&parts), &data[..261_120]);
    }

    #[tokio::test]
    async fn large_reads_of_files_in_memory_come_cut_into_whole_packets() {
        large_reads_come_cut_into_whole_packets(None).await;
    }

    #[tokio::test]
    async fn large_reads_of_files_on_a_device_come_cut_into_whole_packets() {
        large_reads_come_cut_into_whole_packets(Some(Default::default())).await;
    }

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
