//! The storage traits: a session's [`Filesystem`], its open [`File`]s and [`Dir`]s.

use bytes::{Bytes, BytesMut};
use sftpgate_proto::{FileAttributes, OpenFlags, StatvfsReply, UsersGroupsReply, WriteData};

use crate::error::FsError;
use crate::path::VPath;
use crate::read_parts::ReadPart;
use crate::session::EndReason;

/// How RENAME treats an existing destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenameMode {
    /// SSH_FXP_RENAME: fail with [`FsError::AlreadyExists`] if the destination exists, as
    /// OpenSSH's sftp-server does.
    NoReplace,
    /// `posix-rename@openssh.com`: replace the destination atomically.
    Replace,
}

/// One directory entry as READDIR returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The bare name.
    pub name: Bytes,
    /// Its attributes (as `lstat`: a symlink is reported as a link).
    pub attrs: FileAttributes,
    /// Number of hard links, for the `ls -l` longname.
    pub nlink: u64,
}

/// A session's storage. Created by the SFTP factory when a client opens the `sftp`
/// subsystem; every method may be called concurrently by the server's dispatcher.
///
/// Paths are [`VPath`]s: absolute and normalised, with `..` already resolved lexically. The
/// backend maps them into its own namespace and must keep every access inside it, including
/// through symlinks and the destinations of rename, link and symlink.
///
/// Methods must not block the calling thread on I/O: the server may run the first poll of
/// a small request on the session's reader, so a method that blocks there delays the
/// session's next requests too. Blocking system calls belong on a blocking pool
/// (`tokio::task::spawn_blocking`), unless they are known to return at once (a file in
/// memory, data already in the page cache).
#[async_trait::async_trait]
pub trait Filesystem: Send + Sync + 'static {
    /// Opens (and with `CREAT` creates) a file. `attrs` carries the permissions for a new
    /// file.
    async fn open(
        &self,
        path: &VPath,
        flags: OpenFlags,
        attrs: &FileAttributes,
    ) -> Result<Box<dyn File>, FsError>;

    /// Opens a directory for listing.
    async fn opendir(&self, path: &VPath) -> Result<Box<dyn Dir>, FsError>;

    /// Attributes, following a final symlink.
    async fn stat(&self, path: &VPath) -> Result<FileAttributes, FsError>;

    /// Attributes of the path itself, not following a final symlink.
    async fn lstat(&self, path: &VPath) -> Result<FileAttributes, FsError>;

    /// Changes size, permissions, owner or times, following a final symlink.
    async fn setstat(&self, path: &VPath, attrs: &FileAttributes) -> Result<(), FsError>;

    /// Like [`Filesystem::setstat`] without following a final symlink
    /// (`lsetstat@openssh.com`).
    async fn lsetstat(&self, path: &VPath, attrs: &FileAttributes) -> Result<(), FsError> {
        let _ = (path, attrs);
        Err(FsError::Unsupported("lsetstat".into()))
    }

    /// Removes a file (not a directory).
    async fn remove(&self, path: &VPath) -> Result<(), FsError>;

    /// Creates a directory.
    async fn mkdir(&self, path: &VPath, attrs: &FileAttributes) -> Result<(), FsError>;

    /// Removes an empty directory.
    async fn rmdir(&self, path: &VPath) -> Result<(), FsError>;

    /// Renames `from` to `to`.
    async fn rename(&self, from: &VPath, to: &VPath, mode: RenameMode) -> Result<(), FsError>;

    /// The target of a symlink, as stored.
    async fn readlink(&self, path: &VPath) -> Result<Bytes, FsError>;

    /// Creates a symlink at `link` whose target is `target`, stored as the client sent it.
    /// Following it never leaves the session's root.
    async fn symlink(&self, target: &[u8], link: &VPath) -> Result<(), FsError>;

    /// Creates a hard link `new` to the existing file `existing`.
    async fn hardlink(&self, existing: &VPath, new: &VPath) -> Result<(), FsError> {
        let _ = (existing, new);
        Err(FsError::Unsupported("hardlink".into()))
    }

    /// The canonical form of `path` for REALPATH: the backend may resolve symlinks (inside
    /// its root). The default is the lexical path itself.
    async fn realpath(&self, path: &VPath) -> Result<VPath, FsError> {
        Ok(path.clone())
    }

    /// Filesystem statistics for `statvfs@openssh.com`.
    async fn statvfs(&self, path: &VPath) -> Result<StatvfsReply, FsError> {
        let _ = path;
        Err(FsError::Unsupported("statvfs".into()))
    }

    /// Names for numeric user and group ids (`users-groups-by-id@openssh.com`); an empty
    /// name where one is unknown. The default knows none.
    async fn names_by_id(&self, uids: &[u32], gids: &[u32]) -> Result<UsersGroupsReply, FsError> {
        Ok(UsersGroupsReply {
            usernames: vec![Bytes::new(); uids.len()],
            groupnames: vec![Bytes::new(); gids.len()],
        })
    }

    /// The end of the session, awaited exactly once, after every open handle was closed,
    /// whatever ended the session. Release here what the factory set up. Runs under the
    /// server's exit timeout.
    async fn exit(&self, reason: &EndReason) {
        let _ = reason;
    }
}

/// An open file. Reads and writes carry their offset, so several may run at once; the server
/// never reorders overlapping requests on the same handle. Like [`Filesystem`]'s, its
/// methods must not block the calling thread on I/O.
#[async_trait::async_trait]
pub trait File: Send + Sync + 'static {
    /// Reads up to `len` bytes at `offset`, appending them to `buf`; returns how many were
    /// appended. Fewer than `len` is fine (a short read); `Err(FsError::Eof)` at or past the
    /// end of the file. The server reserves `len` bytes in `buf` first, so a backend can read
    /// straight into its spare capacity; on error or cancellation the bytes already in `buf`
    /// must stay as they were. Append in place, without moving what is in `buf`: the server
    /// places the buffer so that the copy of file data into it is fast.
    async fn read(&self, offset: u64, len: u32, buf: &mut BytesMut) -> Result<usize, FsError>;

    /// The most bytes a read of `len` at `offset` is expected to return (0: EOF), if the
    /// backend can tell without I/O (a local file: from the size its handle last saw); `None` if it
    /// cannot. Only a hint for where the server runs the read: one expected to move little
    /// is done in place by the session's reader instead of on a task of its own (OpenSSH's
    /// client asks for 255 KiB of every file, a 4 KiB one too, and once more at its end). A
    /// wrong hint costs only that choice: the reply is what [`File::read`] returns. Must not
    /// block.
    fn read_len_hint(&self, offset: u64, len: u32) -> Option<u32> {
        let _ = (offset, len);
        None
    }

    /// Whether this file's reads never wait for a device: its data is in memory (tmpfs,
    /// ramfs, the memory backend) and a read is a copy done at once. The server then reads
    /// it in large READs only a little ahead of what the client lets it send (the server's
    /// `Limits::max_pending_memory_read_bytes`): further ahead hides no latency, and leaves
    /// the data cold in the CPU's caches by the time it is sealed and sent; and the default
    /// [`File::read_parts`] reads such a file one packet at a time (one [`File::read`] per
    /// 32 KiB or so), each into the buffer that packet is sealed in. `false`, the default,
    /// keeps the deep read-ahead that hides a slow device's latency and one read per READ; a
    /// wrapper forwards it only if it adds no wait of its own. Must not block.
    fn reads_from_memory(&self) -> bool {
        false
    }

    /// Reads up to the total of the parts' `len`s at `offset` into the parts in turn, as
    /// one [`File::read`] of that total would, cut at the parts' ends: a part gets bytes only
    /// once every part before it is full. Returns how many bytes were appended in all;
    /// fewer than asked is fine (a short read); `Err(FsError::Eof)` at or past the end of
    /// the file, with nothing appended. The server calls this for a READ larger than one SSH
    /// packet, each part the buffer one packet is sealed in (the bytes already in a part stay
    /// where they are, and each part's data is placed as [`File::read`]'s is), so that a
    /// backend that reads into several buffers at once (`preadv(2)`) moves each byte once;
    /// read into one buffer, the SSH layer copies it into its packets.
    ///
    /// The default, for a backend that reads one buffer at a time: a file whose reads never
    /// wait ([`File::reads_from_memory`]) is read one part at a time
    /// ([`read_parts_in_turn`](crate::read_parts_in_turn): each a copy into its part),
    /// any other with one read into a buffer of its own that is then copied into the parts
    /// ([`read_parts_joined`](crate::read_parts_joined): one wait per READ, and the copy the
    /// SSH layer would have made). A wrapper forwards it to the file it wraps.
    async fn read_parts(&self, offset: u64, parts: &mut [ReadPart]) -> Result<usize, FsError> {
        if self.reads_from_memory() {
            crate::read_parts_in_turn(self, offset, parts).await
        } else {
            crate::read_parts_joined(self, offset, parts).await
        }
    }

    /// Writes all of `data` at `offset` (ignored for files opened with `APPEND`).
    async fn write(&self, offset: u64, data: Bytes) -> Result<(), FsError>;

    /// Writes all of `data`, which may be in several pieces, at `offset`, as
    /// [`File::write`]; the server calls this one. By default the pieces are joined into one
    /// buffer (a copy when there are several) for [`File::write`]. A backend that can write
    /// pieces as they are (`pwritev(2)`) overrides it, and so does a wrapper, forwarding to
    /// the file it wraps: a large WRITE arrives in the pieces of the SSH messages it came in
    /// (see `sftpgate_proto::RequestInput`), and joining them is a copy of every byte
    /// uploaded.
    async fn write_data(&self, offset: u64, data: WriteData) -> Result<(), FsError> {
        self.write(offset, data.into_bytes()).await
    }

    /// The open file's attributes.
    async fn stat(&self) -> Result<FileAttributes, FsError>;

    /// Changes the open file's attributes.
    async fn setstat(&self, attrs: &FileAttributes) -> Result<(), FsError>;

    /// Flushes the file to stable storage (`fsync@openssh.com`).
    async fn sync(&self) -> Result<(), FsError>;

    /// Statistics of the filesystem holding the file (`fstatvfs@openssh.com`).
    async fn statvfs(&self) -> Result<StatvfsReply, FsError> {
        Err(FsError::Unsupported("fstatvfs".into()))
    }

    /// Closes the file. Called exactly once, after every other call on it finished; an error
    /// here (a failed final flush, say) is reported to the client's CLOSE.
    async fn close(&self) -> Result<(), FsError>;

    /// Closes a file the client left open when its session ended, instead of
    /// [`File::close`]. A backend that only makes written data visible at close (an upload
    /// to object storage) discards it here: a session that ended without CLOSE must not
    /// publish a half-written file. The default is [`File::close`].
    async fn abandon(&self) -> Result<(), FsError> {
        self.close().await
    }
}

/// An open directory being listed.
#[async_trait::async_trait]
pub trait Dir: Send + 'static {
    /// The next batch of entries (including `.` and `..` where the backend has them);
    /// an empty batch means the listing is complete.
    async fn next_batch(&mut self) -> Result<Vec<DirEntry>, FsError>;
}
