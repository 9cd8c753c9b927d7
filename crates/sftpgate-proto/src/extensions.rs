//! The OpenSSH extensions sftpgate offers (PROTOCOL in openssh-portable, §4), plus
//! `copy-data` and `home-directory` from the later filexfer drafts: request payloads and the
//! typed EXTENDED_REPLY payloads.

use bytes::{BufMut, Bytes, BytesMut};

use crate::attrs::FileAttributes;
use crate::error::Malformed;
use crate::wire::{put_string, wire_len, Reader};

/// Extension names, as they appear in SSH_FXP_EXTENDED and the VERSION packet.
pub mod names {
    #![allow(missing_docs)] // each constant is the extension of the same spelling
    pub const POSIX_RENAME: &str = "posix-rename@openssh.com";
    pub const STATVFS: &str = "statvfs@openssh.com";
    pub const FSTATVFS: &str = "fstatvfs@openssh.com";
    pub const HARDLINK: &str = "hardlink@openssh.com";
    pub const FSYNC: &str = "fsync@openssh.com";
    pub const LSETSTAT: &str = "lsetstat@openssh.com";
    pub const LIMITS: &str = "limits@openssh.com";
    pub const EXPAND_PATH: &str = "expand-path@openssh.com";
    pub const COPY_DATA: &str = "copy-data";
    pub const HOME_DIRECTORY: &str = "home-directory";
    pub const USERS_GROUPS_BY_ID: &str = "users-groups-by-id@openssh.com";
}

/// The payload of an SSH_FXP_EXTENDED request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // fields are named as in OpenSSH's PROTOCOL
pub enum ExtendedRequest {
    /// POSIX rename: replaces `newpath` if it exists.
    PosixRename {
        oldpath: Bytes,
        newpath: Bytes,
    },
    /// Reply: EXTENDED_REPLY with a [`StatvfsReply`].
    Statvfs {
        path: Bytes,
    },
    /// Reply: EXTENDED_REPLY with a [`StatvfsReply`].
    Fstatvfs {
        handle: Bytes,
    },
    /// Create hard link `newpath` to `oldpath`.
    Hardlink {
        oldpath: Bytes,
        newpath: Bytes,
    },
    Fsync {
        handle: Bytes,
    },
    /// SETSTAT that does not follow a final symlink.
    Lsetstat {
        path: Bytes,
        attrs: FileAttributes,
    },
    /// Reply: EXTENDED_REPLY with a [`LimitsReply`].
    Limits,
    /// Like REALPATH, but expands a leading `~` or `~user`. Reply: NAME.
    ExpandPath {
        path: Bytes,
    },
    /// Server-side copy between two open handles; a `read_length` of 0 copies to the end of
    /// the source. Reply: STATUS.
    CopyData {
        read_handle: Bytes,
        read_offset: u64,
        read_length: u64,
        write_handle: Bytes,
        write_offset: u64,
    },
    /// The home directory of `username` (empty: the session's user). Reply: NAME.
    HomeDirectory {
        username: Bytes,
    },
    /// Names for numeric ids. Reply: EXTENDED_REPLY with a [`UsersGroupsReply`].
    UsersGroupsById {
        uids: Vec<u32>,
        gids: Vec<u32>,
    },
    /// An extension this crate does not know; the server answers OP_UNSUPPORTED.
    Unknown {
        name: String,
        data: Bytes,
    },
}

impl ExtendedRequest {
    /// The extension's name as sent on the wire.
    pub fn name(&self) -> &str {
        match self {
            ExtendedRequest::PosixRename { .. } => names::POSIX_RENAME,
            ExtendedRequest::Statvfs { .. } => names::STATVFS,
            ExtendedRequest::Fstatvfs { .. } => names::FSTATVFS,
            ExtendedRequest::Hardlink { .. } => names::HARDLINK,
            ExtendedRequest::Fsync { .. } => names::FSYNC,
            ExtendedRequest::Lsetstat { .. } => names::LSETSTAT,
            ExtendedRequest::Limits => names::LIMITS,
            ExtendedRequest::ExpandPath { .. } => names::EXPAND_PATH,
            ExtendedRequest::CopyData { .. } => names::COPY_DATA,
            ExtendedRequest::HomeDirectory { .. } => names::HOME_DIRECTORY,
            ExtendedRequest::UsersGroupsById { .. } => names::USERS_GROUPS_BY_ID,
            ExtendedRequest::Unknown { name, .. } => name,
        }
    }

    /// Whether the request may change the filesystem (see [`crate::Request::mutates`]).
    /// Unknown extensions count as mutating, so a read-only policy refuses them.
    pub fn mutates(&self) -> bool {
        match self {
            ExtendedRequest::PosixRename { .. }
            | ExtendedRequest::Hardlink { .. }
            | ExtendedRequest::Fsync { .. }
            | ExtendedRequest::Lsetstat { .. }
            | ExtendedRequest::CopyData { .. }
            | ExtendedRequest::Unknown { .. } => true,
            ExtendedRequest::Statvfs { .. }
            | ExtendedRequest::Fstatvfs { .. }
            | ExtendedRequest::Limits
            | ExtendedRequest::ExpandPath { .. }
            | ExtendedRequest::HomeDirectory { .. }
            | ExtendedRequest::UsersGroupsById { .. } => false,
        }
    }

    /// Appends the request-specific data (after the extension name).
    pub(crate) fn encode_data(&self, out: &mut BytesMut) {
        match self {
            ExtendedRequest::PosixRename { oldpath, newpath }
            | ExtendedRequest::Hardlink { oldpath, newpath } => {
                put_string(out, oldpath);
                put_string(out, newpath);
            }
            ExtendedRequest::Statvfs { path } | ExtendedRequest::ExpandPath { path } => {
                put_string(out, path)
            }
            ExtendedRequest::Fstatvfs { handle } | ExtendedRequest::Fsync { handle } => {
                put_string(out, handle)
            }
            ExtendedRequest::Lsetstat { path, attrs } => {
                put_string(out, path);
                attrs.encode(out);
            }
            ExtendedRequest::Limits => {}
            ExtendedRequest::CopyData {
                read_handle,
                read_offset,
                read_length,
                write_handle,
                write_offset,
            } => {
                put_string(out, read_handle);
                out.put_u64(*read_offset);
                out.put_u64(*read_length);
                put_string(out, write_handle);
                out.put_u64(*write_offset);
            }
            ExtendedRequest::HomeDirectory { username } => put_string(out, username),
            ExtendedRequest::UsersGroupsById { uids, gids } => {
                put_id_list(out, uids);
                put_id_list(out, gids);
            }
            ExtendedRequest::Unknown { data, .. } => out.put_slice(data),
        }
    }

    pub(crate) fn decode(name: &[u8], r: &mut Reader) -> Result<ExtendedRequest, Malformed> {
        let request = match name {
            n if n == names::POSIX_RENAME.as_bytes() => ExtendedRequest::PosixRename {
                oldpath: r.string("oldpath")?,
                newpath: r.string("newpath")?,
            },
            n if n == names::STATVFS.as_bytes() => ExtendedRequest::Statvfs {
                path: r.string("path")?,
            },
            n if n == names::FSTATVFS.as_bytes() => ExtendedRequest::Fstatvfs {
                handle: r.string("handle")?,
            },
            n if n == names::HARDLINK.as_bytes() => ExtendedRequest::Hardlink {
                oldpath: r.string("oldpath")?,
                newpath: r.string("newpath")?,
            },
            n if n == names::FSYNC.as_bytes() => ExtendedRequest::Fsync {
                handle: r.string("handle")?,
            },
            n if n == names::LSETSTAT.as_bytes() => ExtendedRequest::Lsetstat {
                path: r.string("path")?,
                attrs: FileAttributes::decode(r)?,
            },
            n if n == names::LIMITS.as_bytes() => ExtendedRequest::Limits,
            n if n == names::EXPAND_PATH.as_bytes() => ExtendedRequest::ExpandPath {
                path: r.string("path")?,
            },
            n if n == names::COPY_DATA.as_bytes() => ExtendedRequest::CopyData {
                read_handle: r.string("read-from-handle")?,
                read_offset: r.u64("read-from-offset")?,
                read_length: r.u64("read-data-length")?,
                write_handle: r.string("write-to-handle")?,
                write_offset: r.u64("write-to-offset")?,
            },
            n if n == names::HOME_DIRECTORY.as_bytes() => ExtendedRequest::HomeDirectory {
                username: r.string("username")?,
            },
            n if n == names::USERS_GROUPS_BY_ID.as_bytes() => {
                let uids = read_id_list(r, "uids")?;
                let gids = read_id_list(r, "gids")?;
                ExtendedRequest::UsersGroupsById { uids, gids }
            }
            other => ExtendedRequest::Unknown {
                name: String::from_utf8_lossy(other).into_owned(),
                data: r.rest(),
            },
        };
        Ok(request)
    }
}

/// The reply to `statvfs@openssh.com` and `fstatvfs@openssh.com`: `struct statvfs` as eleven
/// u64 values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // fields mirror `struct statvfs`
pub struct StatvfsReply {
    pub bsize: u64,
    pub frsize: u64,
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub favail: u64,
    pub fsid: u64,
    pub flag: u64,
    pub namemax: u64,
}

impl StatvfsReply {
    /// `flag` bit: mounted read-only (SSH_FXE_STATVFS_ST_RDONLY).
    pub const FLAG_RDONLY: u64 = 0x1;
    /// `flag` bit: no set-uid (SSH_FXE_STATVFS_ST_NOSUID).
    pub const FLAG_NOSUID: u64 = 0x2;

    /// Appends the reply data (the payload of EXTENDED_REPLY after the id).
    pub fn encode(&self, out: &mut BytesMut) {
        for v in self.fields() {
            out.put_u64(v);
        }
    }

    /// Parses the payload of an EXTENDED_REPLY.
    pub fn decode(data: Bytes) -> Result<StatvfsReply, Malformed> {
        let mut r = Reader::new(data);
        Ok(StatvfsReply {
            bsize: r.u64("f_bsize")?,
            frsize: r.u64("f_frsize")?,
            blocks: r.u64("f_blocks")?,
            bfree: r.u64("f_bfree")?,
            bavail: r.u64("f_bavail")?,
            files: r.u64("f_files")?,
            ffree: r.u64("f_ffree")?,
            favail: r.u64("f_favail")?,
            fsid: r.u64("f_fsid")?,
            flag: r.u64("f_flag")?,
            namemax: r.u64("f_namemax")?,
        })
    }

    fn fields(&self) -> [u64; 11] {
        [
            self.bsize,
            self.frsize,
            self.blocks,
            self.bfree,
            self.bavail,
            self.files,
            self.ffree,
            self.favail,
            self.fsid,
            self.flag,
            self.namemax,
        ]
    }
}

/// The reply to `limits@openssh.com`. Clients size their requests from it, so a server must
/// report the limits it really enforces. Zero means "no limit" for `max_open_handles`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct LimitsReply {
    /// Largest packet, length field excluded, the server accepts.
    pub max_packet_len: u64,
    /// Largest READ length served in one DATA reply.
    pub max_read_len: u64,
    /// Largest WRITE payload accepted.
    pub max_write_len: u64,
    /// Most handles open at once per session.
    pub max_open_handles: u64,
}

impl LimitsReply {
    /// Appends the reply data (the payload of EXTENDED_REPLY after the id).
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u64(self.max_packet_len);
        out.put_u64(self.max_read_len);
        out.put_u64(self.max_write_len);
        out.put_u64(self.max_open_handles);
    }

    /// Parses the payload of an EXTENDED_REPLY.
    pub fn decode(data: Bytes) -> Result<LimitsReply, Malformed> {
        let mut r = Reader::new(data);
        Ok(LimitsReply {
            max_packet_len: r.u64("max-packet-length")?,
            max_read_len: r.u64("max-read-length")?,
            max_write_len: r.u64("max-write-length")?,
            max_open_handles: r.u64("max-open-handles")?,
        })
    }
}

/// The reply to `users-groups-by-id@openssh.com`: one name per requested id, in order, an
/// empty name where the id is unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct UsersGroupsReply {
    /// Names of the requested uids.
    pub usernames: Vec<Bytes>,
    /// Names of the requested gids.
    pub groupnames: Vec<Bytes>,
}

impl UsersGroupsReply {
    /// Appends the reply data: two strings, each holding a sequence of strings.
    pub fn encode(&self, out: &mut BytesMut) {
        for names in [&self.usernames, &self.groupnames] {
            let inner: usize = names.iter().map(|n| 4 + n.len()).sum();
            out.put_u32(wire_len(inner));
            for name in names {
                put_string(out, name);
            }
        }
    }

    /// Parses the payload of an EXTENDED_REPLY.
    pub fn decode(data: Bytes) -> Result<UsersGroupsReply, Malformed> {
        let mut r = Reader::new(data);
        let usernames = read_name_list(r.string("usernames")?)?;
        let groupnames = read_name_list(r.string("groupnames")?)?;
        Ok(UsersGroupsReply {
            usernames,
            groupnames,
        })
    }
}

fn put_id_list(out: &mut BytesMut, ids: &[u32]) {
    out.put_u32(wire_len(ids.len() * 4));
    for id in ids {
        out.put_u32(*id);
    }
}

fn read_id_list(r: &mut Reader, field: &'static str) -> Result<Vec<u32>, Malformed> {
    let list = r.string(field)?;
    if list.len() % 4 != 0 {
        return Err(Malformed::Truncated { field });
    }
    let mut inner = Reader::new(list);
    let mut ids = Vec::with_capacity(inner.remaining() / 4);
    while inner.remaining() > 0 {
        ids.push(inner.u32(field)?);
    }
    Ok(ids)
}

fn read_name_list(list: Bytes) -> Result<Vec<Bytes>, Malformed> {
    let mut inner = Reader::new(list);
    let mut names = Vec::new();
    while inner.remaining() > 0 {
        names.push(inner.string("name")?);
    }
    Ok(names)
}
