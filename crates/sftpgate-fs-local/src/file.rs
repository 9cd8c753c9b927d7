//! An open regular file: positional reads and writes on one descriptor, which several
//! requests may use at once.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use rustix::buffer::spare_capacity;
use rustix::io::{Errno, IoSlice, IoSliceMut, ReadWriteFlags};
use sftpgate_proto::{FileAttributes, StatvfsReply, WriteData};
use sftpgate_vfs::{parts_len, read_parts_in_turn, read_parts_joined, File, FsError, ReadPart};

use crate::attrs::{self, Target};
use crate::blocking::{Lane, INLINE_READ_MAX, INLINE_WRITE_IDLE_MAX, INLINE_WRITE_MAX};
use crate::error::{from_errno, retry_eintr};

/// A file opened by [`crate::LocalFs`]. Every call clones the descriptor's `Arc` for its
/// blocking task, so a cancelled request cannot close the descriptor under another.
pub(crate) struct LocalFile {
    fd: Mutex<Option<Arc<OwnedFd>>>,
    /// Whether `preadv2(RWF_NOWAIT)` may work here; cleared when the filesystem says it
    /// does not support it (tmpfs, for one).
    nowait_reads: AtomicBool,
    /// Where this file's blocking operations run, but its writes.
    lane: Arc<Lane>,
    /// Where its writes run: one at a time (see [`Lane::one_at_a_time`]). Apart from the
    /// other operations, which the server orders against writes where that matters (the
    /// sequencer: a stat, fsync or close waits for the writes before it).
    write_lane: Arc<Lane>,
    /// The file's size as this handle last saw it (at open, after its writes, from fstat):
    /// what a read sizes its buffer by (see [`LocalFile::read_len`]).
    known_size: AtomicU64,
    /// The file lives in memory (see [`crate::blocking::in_memory`]).
    in_memory: bool,
}

/// Buffer of a read past the known size, when fstat says the file has not grown: the
/// expected EOF, or a file whose size says nothing (`/proc`), read in short reads.
const PROBE_READ: usize = 8 * 1024;

impl LocalFile {
    /// `size` is the file's size when it was opened; `in_memory` whether it lives in memory
    /// (see [`crate::blocking::in_memory`]): then its small operations run inline.
    pub(crate) fn new(fd: OwnedFd, size: u64, in_memory: bool) -> LocalFile {
        let lane = || {
            if in_memory {
                Lane::inline()
            } else {
                Lane::default()
            }
        };
        LocalFile {
            fd: Mutex::new(Some(Arc::new(fd))),
            // In memory there is nothing RWF_NOWAIT could skip waiting for (and the kernel
            // refuses it): the inline lane reads.
            nowait_reads: AtomicBool::new(!in_memory),
            lane: Arc::new(lane()),
            write_lane: Arc::new(lane().one_at_a_time()),
            known_size: AtomicU64::new(size),
            in_memory,
        }
    }

    /// How many bytes a read of `len` at `offset` asks the kernel for. The buffer is
    /// zero-filled before the read (this crate has no `unsafe`), so a client asking 255 KiB
    /// of a 4 KiB file (what OpenSSH's client does, then once more for the EOF) would zero
    /// and fault in 255 KiB for nothing: that made `get -r` of small files cost 5x OpenSSH's
    /// CPU. So a read stops at the size this handle knows; past it, one fstat tells whether
    /// the file grew. A file that grew since is read short (allowed: the client asks for the
    /// rest), never wrongly: the kernel's answer is what is sent.
    async fn read_len(&self, fd: &Arc<OwnedFd>, offset: u64, len: usize) -> usize {
        let within = |size: u64| usize::try_from(size.saturating_sub(offset)).unwrap_or(usize::MAX);
        let known = self.known_size.load(Ordering::Relaxed);
        if offset < known {
            return len.min(within(known));
        }
        let fd = fd.clone();
        let size = self
            .lane
            .run(move || rustix::fs::fstat(&*fd).map_err(from_errno))
            .await
            .map(|st| u64::try_from(st.st_size).unwrap_or(0));
        match size {
            Ok(size) if size > offset => {
                self.known_size.fetch_max(size, Ordering::Relaxed);
                len.min(within(size))
            }
            _ => len.min(PROBE_READ),
        }
    }

    pub(crate) fn fd(&self) -> Result<Arc<OwnedFd>, FsError> {
        self.fd
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
            .ok_or_else(closed)
    }
}

#[async_trait::async_trait]
impl File for LocalFile {
    /// Data already in the page cache is copied inline with `preadv2(RWF_NOWAIT)`, which
    /// never waits for the device: for a cached 32 KiB read the hop to the blocking pool and
    /// back costs more than the copy. What the cache cannot give at once is read on the pool.
    /// The bytes already in `buf` stay there whatever happens, even if this future is
    /// dropped midway.
    async fn read(&self, offset: u64, len: u32, buf: &mut BytesMut) -> Result<usize, FsError> {
        let fd = self.fd()?;
        if self.lane.runs_inline(len as usize, INLINE_READ_MAX) {
            return read_in_place(&fd, offset, len as usize, buf);
        }
        let len = self.read_len(&fd, offset, len as usize).await;
        if self.nowait_reads.load(Ordering::Relaxed) {
            match read_cached(&fd, offset, len, buf) {
                Ok(Some(0)) => return Err(FsError::Eof),
                Ok(Some(n)) if n == len => return Ok(n),
                Ok(Some(n)) => {
                    // Part of it was cached. The rest comes from the pool; if that fails
                    // the client gets a short read and asks again (then sees the error).
                    let rest = read_pooled(&self.lane, fd, offset + n as u64, len - n, buf).await;
                    return Ok(n + rest.unwrap_or(0));
                }
                Ok(None) => {}
                Err(Errno::OPNOTSUPP) => self.nowait_reads.store(false, Ordering::Relaxed),
                Err(e) => return Err(from_errno(e)),
            }
        }
        read_pooled(&self.lane, fd, offset, len, buf).await
    }

    /// A file in memory (or any file on a current-thread runtime, where `read` runs inline
    /// too): one `pread` per part, each straight into its part's room (`read`, without
    /// zero-filling). Any other: one `preadv(2)` into the room of every part, from the page
    /// cache inline (`RWF_NOWAIT`) where it can, else on the file's lane, as `read` does
    /// with one buffer; the SSH layer then sends the parts as they are, where one buffer
    /// would be copied into its packets (a copy of every byte downloaded).
    async fn read_parts(&self, offset: u64, parts: &mut [ReadPart]) -> Result<usize, FsError> {
        let total = parts_len(parts) as usize;
        let inline = self.lane.runs_inline(total, INLINE_READ_MAX);
        if self.in_memory || inline || parts.len() < 2 {
            return read_parts_in_turn(self, offset, parts).await;
        }
        if parts.len() > MAX_IOVECS {
            return read_parts_joined(self, offset, parts).await;
        }
        let fd = self.fd()?;
        let len = self.read_len(&fd, offset, total).await;
        let mut n = 0;
        if self.nowait_reads.load(Ordering::Relaxed) {
            let mut rooms = take_rooms(parts, len, 0);
            let read = preadv_rooms(&fd, offset, &mut rooms, ReadWriteFlags::NOWAIT);
            give_back(parts, rooms);
            match read {
                Ok(0) => return Err(FsError::Eof),
                Ok(got) if got == len => return Ok(got),
                // Part of it was cached; the rest comes from the pool.
                Ok(got) => n = got,
                Err(Errno::AGAIN) => {}
                Err(Errno::OPNOTSUPP) => self.nowait_reads.store(false, Ordering::Relaxed),
                Err(e) => return Err(from_errno(e)),
            }
        }
        let mut rooms = take_rooms(parts, len, n);
        let at = offset + n as u64;
        let pooled = self
            .lane
            .run_sized(len - n, INLINE_READ_MAX, move || {
                let got = preadv_rooms(&fd, at, &mut rooms, ReadWriteFlags::empty())
                    .map_err(from_errno)?;
                Ok((got, rooms))
            })
            .await;
        match pooled {
            Ok((got, rooms)) => {
                give_back(parts, rooms);
                match n + got {
                    0 => Err(FsError::Eof),
                    n => Ok(n),
                }
            }
            Err(e) if n == 0 => Err(e),
            // The cached part is read: the client gets a short read and asks again (then
            // sees the error), as with `read`.
            Err(_) => Ok(n),
        }
    }

    /// What is left of the size this handle last saw (at open, after its writes, from a
    /// read's fstat): what [`LocalFile::read_len`] would ask the kernel for, short of a file
    /// that grew since (then 0 at its old end, and the read finds out).
    fn read_len_hint(&self, offset: u64, len: u32) -> Option<u32> {
        let known = self.known_size.load(Ordering::Relaxed);
        Some(u32::try_from(known.saturating_sub(offset)).map_or(len, |left| len.min(left)))
    }

    /// A file on tmpfs or ramfs: its reads are copies made inline (see `read`).
    fn reads_from_memory(&self) -> bool {
        self.in_memory
    }

    /// `pwrite(2)` until every byte is written. On a file opened with APPEND, Linux's
    /// pwrite appends whatever the offset, as the trait asks.
    async fn write(&self, offset: u64, data: Bytes) -> Result<(), FsError> {
        self.write_data(offset, data.into()).await
    }

    /// The pieces as they are, with `pwritev(2)` (one `pwrite` for one piece), until every
    /// byte is written.
    async fn write_data(&self, offset: u64, data: WriteData) -> Result<(), FsError> {
        let fd = self.fd()?;
        // Past the kernel's iovec limit (no WRITE the server gathers comes near it) the
        // pieces are joined first.
        let data = if data.chunk_count() > MAX_IOVECS {
            data.into_bytes().into()
        } else {
            data
        };
        self.write_lane
            .run_sized_or_when_idle(
                data.len(),
                INLINE_WRITE_MAX,
                INLINE_WRITE_IDLE_MAX,
                move || write_all_at(&fd, offset, &data),
            )
            .await
            .map(|written| {
                self.known_size
                    .fetch_max(offset.saturating_add(written), Ordering::Relaxed);
            })
    }

    async fn stat(&self) -> Result<FileAttributes, FsError> {
        let fd = self.fd()?;
        self.lane
            .run(move || rustix::fs::fstat(&*fd).map_err(from_errno))
            .await
            .map(|st| {
                self.known_size
                    .store(u64::try_from(st.st_size).unwrap_or(0), Ordering::Relaxed);
                attrs::from_stat(&st)
            })
    }

    async fn setstat(&self, attrs: &FileAttributes) -> Result<(), FsError> {
        let fd = self.fd()?;
        let attrs = attrs.clone();
        self.lane
            .run(move || attrs::apply(Target::Open(fd.as_fd()), &attrs))
            .await
    }

    async fn sync(&self) -> Result<(), FsError> {
        let fd = self.fd()?;
        self.lane
            .run(move || retry_eintr(|| rustix::fs::fsync(&*fd)).map_err(from_errno))
            .await
    }

    async fn statvfs(&self) -> Result<StatvfsReply, FsError> {
        let fd = self.fd()?;
        self.lane
            .run(move || {
                let v = rustix::fs::fstatvfs(&*fd).map_err(from_errno)?;
                Ok(attrs::statvfs_reply(&v))
            })
            .await
    }

    /// Drops the descriptor on the blocking pool (closing may flush, on NFS say). Linux
    /// reports nothing useful from close(2) that rustix would let us see without `unsafe`,
    /// so this does not fail once the handle was open; clients wanting durability send
    /// `fsync@openssh.com`, as with OpenSSH.
    async fn close(&self) -> Result<(), FsError> {
        let fd = self
            .fd
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
            .ok_or_else(closed)?;
        self.lane
            .run(move || {
                drop(fd);
                Ok(())
            })
            .await
    }
}

/// One `preadv2(RWF_NOWAIT)` into `buf`'s spare capacity: `Some(n)` bytes appended
/// (0 at the end of the file), `None` when none were cached (`EAGAIN`).
fn read_cached(
    fd: &OwnedFd,
    offset: u64,
    len: usize,
    buf: &mut BytesMut,
) -> Result<Option<usize>, Errno> {
    let start = buf.len();
    // Zero-filled first: filling uninitialised memory would need `unsafe`.
    buf.resize(start + len, 0);
    let read = retry_eintr(|| {
        rustix::io::preadv2(
            fd,
            &mut [IoSliceMut::new(&mut buf[start..])],
            offset,
            ReadWriteFlags::NOWAIT,
        )
    });
    buf.truncate(start + *read.as_ref().unwrap_or(&0));
    match read {
        Ok(n) => Ok(Some(n)),
        Err(Errno::AGAIN) => Ok(None),
        Err(e) => Err(e),
    }
}

/// One `pread(2)` on this thread straight into `buf`'s spare capacity, without zero-filling
/// it first: for a read that runs inline anyway (a file in memory, a current-thread
/// runtime). Nothing is zero-filled, so the read need not be sized by the file
/// ([`LocalFile::read_len`]): the kernel stops at the end of the file, and the fstat at the
/// end of every file is saved. rustix fills a `Vec`'s spare capacity safely, a `BytesMut`'s
/// it cannot, so `buf` becomes the `Vec` it wraps and back, which moves no bytes (it is
/// unique: the server's reply buffer).
fn read_in_place(
    fd: &OwnedFd,
    offset: u64,
    len: usize,
    buf: &mut BytesMut,
) -> Result<usize, FsError> {
    if len == 0 {
        // As a zero-length pread: nothing there to send.
        return Err(FsError::Eof);
    }
    let mut vec: Vec<u8> = std::mem::take(buf).into();
    let start = vec.len();
    vec.reserve(len);
    let read = retry_eintr(|| rustix::io::pread(fd, spare_capacity(&mut vec), offset));
    // The spare capacity may be more than was asked for: keep `len` at most.
    vec.truncate(start + len);
    // Both conversions take the allocation over (the buffer is unique), no copy.
    *buf = BytesMut::from(Bytes::from(vec));
    match read.map_err(from_errno)? {
        0 => Err(FsError::Eof),
        _ => Ok(buf.len() - start),
    }
}

/// One `pread(2)` (retried on EINTR) on the file's lane into `buf`'s spare capacity:
/// reserve `len` bytes in `buf` beforehand and no byte is copied.
async fn read_pooled(
    lane: &Arc<Lane>,
    fd: Arc<OwnedFd>,
    offset: u64,
    len: usize,
    buf: &mut BytesMut,
) -> Result<usize, FsError> {
    // The spare capacity moves to the blocking task and back; `unsplit` rejoins it without
    // copying when it did not have to grow.
    let mut chunk = buf.split_off(buf.len());
    let chunk = lane
        .run_sized(len, INLINE_READ_MAX, move || {
            // Zero-filled first: filling uninitialised memory would need `unsafe`.
            chunk.resize(len, 0);
            let n = retry_eintr(|| rustix::io::pread(&*fd, &mut chunk[..], offset))
                .map_err(from_errno)?;
            if n == 0 {
                return Err(FsError::Eof);
            }
            chunk.truncate(n);
            Ok(chunk)
        })
        .await?;
    let n = chunk.len();
    buf.unsplit(chunk);
    Ok(n)
}

/// The room behind each part (by index) for what it still takes of a read of `len` bytes
/// into the parts (each full before the next) that has `done` of them so far: split off the
/// part's buffer (no copy; [`give_back`] rejoins it) and zero-filled, since filling
/// uninitialised memory would need `unsafe`. Parts that are full or take nothing get no room.
fn take_rooms(parts: &mut [ReadPart], len: usize, done: usize) -> Vec<(usize, BytesMut)> {
    let mut before = 0;
    let mut rooms = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter_mut().enumerate() {
        let cap = (len - before).min(part.len as usize);
        let filled = done.saturating_sub(before).min(cap);
        before += cap;
        if filled < cap {
            let mut room = part.buf.split_off(part.buf.len());
            room.resize(cap - filled, 0);
            rooms.push((i, room));
        }
    }
    rooms
}

/// One `preadv2(2)` (retried on EINTR) at `offset` into the rooms in turn; each room is
/// then cut to what it got. Returns the bytes read.
fn preadv_rooms(
    fd: &OwnedFd,
    offset: u64,
    rooms: &mut [(usize, BytesMut)],
    flags: ReadWriteFlags,
) -> Result<usize, Errno> {
    let mut iov: Vec<IoSliceMut<'_>> = rooms
        .iter_mut()
        .map(|(_, room)| IoSliceMut::new(&mut room[..]))
        .collect();
    let read = retry_eintr(|| rustix::io::preadv2(fd, &mut iov, offset, flags));
    drop(iov);
    let mut left = *read.as_ref().unwrap_or(&0);
    for (_, room) in rooms.iter_mut() {
        let keep = left.min(room.len());
        room.truncate(keep);
        left -= keep;
    }
    read
}

/// Rejoins each room with its part's buffer (no copy: they were one buffer).
fn give_back(parts: &mut [ReadPart], rooms: Vec<(usize, BytesMut)>) {
    for (i, room) in rooms {
        parts[i].buf.unsplit(room);
    }
}

/// Most pieces one `pwritev(2)` or `preadv(2)` takes here (Linux's `IOV_MAX` is 1024).
const MAX_IOVECS: usize = 256;

/// Writes every byte of `data` at `offset`: `pwritev(2)` of what is left until done.
fn write_all_at(fd: &OwnedFd, offset: u64, data: &WriteData) -> Result<u64, FsError> {
    let total = data.len();
    let mut written = 0;
    let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity(data.chunk_count());
    while written < total {
        let at = offset
            .checked_add(written as u64)
            .ok_or_else(|| FsError::InvalidInput("write offset overflows".into()))?;
        // The pieces from `written` on.
        iov.clear();
        let mut skip = written;
        for piece in data.chunks() {
            if skip >= piece.len() {
                skip -= piece.len();
                continue;
            }
            iov.push(IoSlice::new(&piece[skip..]));
            skip = 0;
        }
        let n = match &iov[..] {
            [one] => retry_eintr(|| rustix::io::pwrite(fd, one, at)),
            _ => retry_eintr(|| rustix::io::pwritev(fd, &iov, at)),
        }
        .map_err(from_errno)?;
        if n == 0 {
            return Err(FsError::Other("the file accepted no more data".into()));
        }
        written += n;
    }
    Ok(written as u64)
}

fn closed() -> FsError {
    FsError::Other("the handle is closed".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `size` pattern bytes in `dir`, opened as a [`LocalFile`] whose reads may
    /// wait (`in_memory` false, whatever the filesystem): its `read_parts` is one `preadv`.
    fn on_device(dir: &std::path::Path, size: usize) -> (LocalFile, Vec<u8>) {
        let data: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
        let path = dir.join("f");
        std::fs::write(&path, &data).expect("write");
        let fd = OwnedFd::from(std::fs::File::open(&path).expect("open"));
        (LocalFile::new(fd, size as u64, false), data)
    }

    /// Parts of the sizes a 255 KiB READ is cut into, each holding a few bytes already.
    fn fresh_parts() -> Vec<ReadPart> {
        [
            32_755u32, 32_768, 32_768, 32_768, 32_768, 32_768, 32_768, 31_757,
        ]
        .into_iter()
        .map(|len| {
            let mut buf = BytesMut::with_capacity(len as usize + 3);
            buf.extend_from_slice(b"hdr");
            ReadPart::new(buf, len)
        })
        .collect()
    }

    async fn reads_into_parts_with_one_preadv(dir: &std::path::Path) {
        let (file, data) = on_device(dir, 600_000);
        for offset in [0u64, 3, 600_000 - 100_000, 600_000 - 5] {
            let mut parts = fresh_parts();
            let n = file
                .read_parts(offset, &mut parts)
                .await
                .expect("read_parts");
            let end = (offset as usize + 261_120).min(data.len());
            assert_eq!(n, end - offset as usize, "at {offset}");
            let mut got = Vec::new();
            for part in &parts {
                assert_eq!(&part.buf[..3], b"hdr");
                got.extend_from_slice(&part.buf[3..]);
            }
            assert_eq!(got, &data[offset as usize..end], "at {offset}");
        }
        let mut parts = fresh_parts();
        let err = file.read_parts(600_000, &mut parts).await.unwrap_err();
        assert!(matches!(err, FsError::Eof), "{err:?}");
        assert!(parts.iter().all(|p| &p.buf[..] == b"hdr"));
        // The file grew behind the handle's back: the read sees it (after an fstat).
        let path = dir.join("f");
        let mut grown = data.clone();
        grown.extend_from_slice(&[9; 70_000]);
        std::fs::write(&path, &grown).expect("grow");
        let mut parts = fresh_parts();
        let n = file.read_parts(600_000, &mut parts).await.expect("grown");
        assert_eq!(n, 70_000);
        let got: Vec<u8> = parts.iter().flat_map(|p| p.buf[3..].to_vec()).collect();
        assert_eq!(got, vec![9; 70_000]);
    }

    // Multi-threaded runtimes: on a current-thread one every read runs inline (`pread`s).

    /// On a disk filesystem the cached data comes with `RWF_NOWAIT` inline.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_parts_of_a_file_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        reads_into_parts_with_one_preadv(dir.path()).await;
    }

    /// tmpfs refuses `RWF_NOWAIT`: a file there that is not taken for one in memory is read
    /// on its lane.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_parts_on_the_pool_where_nowait_is_refused() {
        let shm = std::path::Path::new("/dev/shm");
        if !shm.is_dir() {
            eprintln!("skipping: no /dev/shm here");
            return;
        }
        let dir = tempfile::tempdir_in(shm).expect("tempdir in /dev/shm");
        reads_into_parts_with_one_preadv(dir.path()).await;
    }
}
