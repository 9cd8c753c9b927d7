//! Every SFTP v3 packet as a typed value, both directions, with its wire encoding.

use bytes::{BufMut, Bytes, BytesMut};

use crate::attrs::FileAttributes;
use crate::error::{DecodeError, Malformed};
use crate::extensions::ExtendedRequest;
use crate::status::StatusCode;
use crate::wire::{finish_packet, put_string, start_packet, wire_len, Reader};
use crate::write_data::WriteData;

/// The protocol version this crate speaks.
pub const SFTP_VERSION: u32 = 3;

/// Packet type numbers (draft-ietf-secsh-filexfer-02 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[allow(missing_docs)] // each variant is the SSH_FXP_ name of the same spelling
pub enum PacketType {
    Init = 1,
    Version = 2,
    Open = 3,
    Close = 4,
    Read = 5,
    Write = 6,
    Lstat = 7,
    Fstat = 8,
    Setstat = 9,
    Fsetstat = 10,
    Opendir = 11,
    Readdir = 12,
    Remove = 13,
    Mkdir = 14,
    Rmdir = 15,
    Realpath = 16,
    Stat = 17,
    Rename = 18,
    Readlink = 19,
    Symlink = 20,
    Status = 101,
    Handle = 102,
    Data = 103,
    Name = 104,
    Attrs = 105,
    Extended = 200,
    ExtendedReply = 201,
}

bitflags::bitflags! {
    /// The `pflags` of SSH_FXP_OPEN.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct OpenFlags: u32 {
        /// SSH_FXF_READ
        const READ = 0x01;
        /// SSH_FXF_WRITE
        const WRITE = 0x02;
        /// SSH_FXF_APPEND
        const APPEND = 0x04;
        /// SSH_FXF_CREAT
        const CREAT = 0x08;
        /// SSH_FXF_TRUNC
        const TRUNC = 0x10;
        /// SSH_FXF_EXCL
        const EXCL = 0x20;
    }
}

/// A packet from client to server.
///
/// Paths, handles and file data are byte strings ([`Bytes`] slices of the received frame):
/// SFTP names are bytes, not text, and must survive byte-exact.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // fields are named as in the draft
pub enum Request {
    /// SSH_FXP_INIT: the client's version and any extension pairs.
    Init {
        version: u32,
        extensions: Vec<(String, Bytes)>,
    },
    Open {
        id: u32,
        filename: Bytes,
        pflags: OpenFlags,
        attrs: FileAttributes,
    },
    Close {
        id: u32,
        handle: Bytes,
    },
    Read {
        id: u32,
        handle: Bytes,
        offset: u64,
        len: u32,
    },
    /// SSH_FXP_WRITE. `data` is a zero-copy slice of the received frame.
    Write {
        id: u32,
        handle: Bytes,
        offset: u64,
        data: WriteData,
    },
    Lstat {
        id: u32,
        path: Bytes,
    },
    Fstat {
        id: u32,
        handle: Bytes,
    },
    Setstat {
        id: u32,
        path: Bytes,
        attrs: FileAttributes,
    },
    Fsetstat {
        id: u32,
        handle: Bytes,
        attrs: FileAttributes,
    },
    Opendir {
        id: u32,
        path: Bytes,
    },
    Readdir {
        id: u32,
        handle: Bytes,
    },
    Remove {
        id: u32,
        filename: Bytes,
    },
    Mkdir {
        id: u32,
        path: Bytes,
        attrs: FileAttributes,
    },
    Rmdir {
        id: u32,
        path: Bytes,
    },
    /// SSH_FXP_REALPATH (v3 carries only the path).
    Realpath {
        id: u32,
        path: Bytes,
    },
    Stat {
        id: u32,
        path: Bytes,
    },
    Rename {
        id: u32,
        oldpath: Bytes,
        newpath: Bytes,
    },
    Readlink {
        id: u32,
        path: Bytes,
    },
    /// SSH_FXP_SYMLINK: create `linkpath` pointing at `targetpath`.
    ///
    /// On the wire OpenSSH sends the two paths in the reverse of the draft's order — target
    /// first, then the link — and every deployed client follows OpenSSH, so this codec does
    /// too (see PROTOCOL in openssh-portable, "SSH_FXP_SYMLINK").
    Symlink {
        id: u32,
        linkpath: Bytes,
        targetpath: Bytes,
    },
    /// SSH_FXP_EXTENDED: an extension request, typed when it is one this crate knows.
    Extended {
        id: u32,
        request: ExtendedRequest,
    },
}

/// A packet from server to client.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // fields are named as in the draft
pub enum Response {
    /// SSH_FXP_VERSION: the negotiated version and the server's extension pairs.
    Version {
        version: u32,
        extensions: Vec<(String, Bytes)>,
    },
    Status {
        id: u32,
        code: StatusCode,
        message: String,
        language: String,
    },
    Handle {
        id: u32,
        handle: Bytes,
    },
    /// SSH_FXP_DATA. `data` is a zero-copy slice of the received frame when decoded.
    Data {
        id: u32,
        data: Bytes,
    },
    Name {
        id: u32,
        entries: Vec<NameEntry>,
    },
    Attrs {
        id: u32,
        attrs: FileAttributes,
    },
    /// SSH_FXP_EXTENDED_REPLY: the reply's payload after the id; its layout depends on the
    /// request it answers (see [`crate::extensions`] for the typed ones).
    ExtendedReply {
        id: u32,
        data: Bytes,
    },
}

/// One entry of an SSH_FXP_NAME reply.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NameEntry {
    /// The name: a bare file name in READDIR replies, a full path in REALPATH replies.
    pub filename: Bytes,
    /// The `ls -l` style line that clients print (see [`crate::longname`]).
    pub longname: Bytes,
    /// The entry's attributes.
    pub attrs: FileAttributes,
}

/// The names of every request this crate knows, as [`Request::name`] spells them: what
/// OpenSSH's `sftp-server -Q requests` lists.
pub const REQUEST_NAMES: &[&str] = &[
    "open",
    "close",
    "read",
    "write",
    "lstat",
    "fstat",
    "setstat",
    "fsetstat",
    "opendir",
    "readdir",
    "remove",
    "mkdir",
    "rmdir",
    "realpath",
    "stat",
    "rename",
    "readlink",
    "symlink",
    crate::extensions::names::POSIX_RENAME,
    crate::extensions::names::STATVFS,
    crate::extensions::names::FSTATVFS,
    crate::extensions::names::HARDLINK,
    crate::extensions::names::FSYNC,
    crate::extensions::names::LSETSTAT,
    crate::extensions::names::LIMITS,
    crate::extensions::names::EXPAND_PATH,
    crate::extensions::names::COPY_DATA,
    crate::extensions::names::HOME_DIRECTORY,
    crate::extensions::names::USERS_GROUPS_BY_ID,
];

impl Request {
    /// The request id; `None` for INIT, which has none.
    pub fn id(&self) -> Option<u32> {
        match self {
            Request::Init { .. } => None,
            Request::Open { id, .. }
            | Request::Close { id, .. }
            | Request::Read { id, .. }
            | Request::Write { id, .. }
            | Request::Lstat { id, .. }
            | Request::Fstat { id, .. }
            | Request::Setstat { id, .. }
            | Request::Fsetstat { id, .. }
            | Request::Opendir { id, .. }
            | Request::Readdir { id, .. }
            | Request::Remove { id, .. }
            | Request::Mkdir { id, .. }
            | Request::Rmdir { id, .. }
            | Request::Realpath { id, .. }
            | Request::Stat { id, .. }
            | Request::Rename { id, .. }
            | Request::Readlink { id, .. }
            | Request::Symlink { id, .. }
            | Request::Extended { id, .. } => Some(*id),
        }
    }

    /// The packet type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Request::Init { .. } => PacketType::Init,
            Request::Open { .. } => PacketType::Open,
            Request::Close { .. } => PacketType::Close,
            Request::Read { .. } => PacketType::Read,
            Request::Write { .. } => PacketType::Write,
            Request::Lstat { .. } => PacketType::Lstat,
            Request::Fstat { .. } => PacketType::Fstat,
            Request::Setstat { .. } => PacketType::Setstat,
            Request::Fsetstat { .. } => PacketType::Fsetstat,
            Request::Opendir { .. } => PacketType::Opendir,
            Request::Readdir { .. } => PacketType::Readdir,
            Request::Remove { .. } => PacketType::Remove,
            Request::Mkdir { .. } => PacketType::Mkdir,
            Request::Rmdir { .. } => PacketType::Rmdir,
            Request::Realpath { .. } => PacketType::Realpath,
            Request::Stat { .. } => PacketType::Stat,
            Request::Rename { .. } => PacketType::Rename,
            Request::Readlink { .. } => PacketType::Readlink,
            Request::Symlink { .. } => PacketType::Symlink,
            Request::Extended { .. } => PacketType::Extended,
        }
    }

    /// The request's name as OpenSSH's sftp-server spells it for `-P`/`-p`/`-Q` (extensions
    /// by their full name), for deny lists, logs and metrics.
    pub fn name(&self) -> &str {
        match self {
            Request::Init { .. } => "init",
            Request::Open { .. } => "open",
            Request::Close { .. } => "close",
            Request::Read { .. } => "read",
            Request::Write { .. } => "write",
            Request::Lstat { .. } => "lstat",
            Request::Fstat { .. } => "fstat",
            Request::Setstat { .. } => "setstat",
            Request::Fsetstat { .. } => "fsetstat",
            Request::Opendir { .. } => "opendir",
            Request::Readdir { .. } => "readdir",
            Request::Remove { .. } => "remove",
            Request::Mkdir { .. } => "mkdir",
            Request::Rmdir { .. } => "rmdir",
            Request::Realpath { .. } => "realpath",
            Request::Stat { .. } => "stat",
            Request::Rename { .. } => "rename",
            Request::Readlink { .. } => "readlink",
            Request::Symlink { .. } => "symlink",
            Request::Extended { request, .. } => request.name(),
        }
    }

    /// Whether the request may change the filesystem: the single place read-only policy is
    /// decided (like `does_write` in OpenSSH's sftp-server). OPEN counts as writing when it
    /// asks for write access, creation, truncation or appending.
    pub fn mutates(&self) -> bool {
        match self {
            Request::Open { pflags, .. } => pflags.intersects(
                OpenFlags::WRITE | OpenFlags::APPEND | OpenFlags::CREAT | OpenFlags::TRUNC,
            ),
            Request::Write { .. }
            | Request::Setstat { .. }
            | Request::Fsetstat { .. }
            | Request::Remove { .. }
            | Request::Mkdir { .. }
            | Request::Rmdir { .. }
            | Request::Rename { .. }
            | Request::Symlink { .. } => true,
            Request::Extended { request, .. } => request.mutates(),
            Request::Init { .. }
            | Request::Close { .. }
            | Request::Read { .. }
            | Request::Lstat { .. }
            | Request::Fstat { .. }
            | Request::Opendir { .. }
            | Request::Readdir { .. }
            | Request::Realpath { .. }
            | Request::Stat { .. }
            | Request::Readlink { .. } => false,
        }
    }

    /// Appends the whole packet, length field included.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = start_packet(out, self.packet_type() as u8);
        match self {
            Request::Init {
                version,
                extensions,
            } => {
                out.put_u32(*version);
                put_extension_pairs(out, extensions);
            }
            Request::Open {
                id,
                filename,
                pflags,
                attrs,
            } => {
                out.put_u32(*id);
                put_string(out, filename);
                out.put_u32(pflags.bits());
                attrs.encode(out);
            }
            Request::Close { id, handle }
            | Request::Fstat { id, handle }
            | Request::Readdir { id, handle } => {
                out.put_u32(*id);
                put_string(out, handle);
            }
            Request::Read {
                id,
                handle,
                offset,
                len,
            } => {
                out.put_u32(*id);
                put_string(out, handle);
                out.put_u64(*offset);
                out.put_u32(*len);
            }
            Request::Write {
                id,
                handle,
                offset,
                data,
            } => {
                out.put_u32(*id);
                put_string(out, handle);
                out.put_u64(*offset);
                out.put_u32(wire_len(data.len()));
                data.put_into(out);
            }
            Request::Lstat { id, path }
            | Request::Opendir { id, path }
            | Request::Rmdir { id, path }
            | Request::Realpath { id, path }
            | Request::Stat { id, path }
            | Request::Readlink { id, path }
            | Request::Remove { id, filename: path } => {
                out.put_u32(*id);
                put_string(out, path);
            }
            Request::Setstat { id, path, attrs } | Request::Mkdir { id, path, attrs } => {
                out.put_u32(*id);
                put_string(out, path);
                attrs.encode(out);
            }
            Request::Fsetstat { id, handle, attrs } => {
                out.put_u32(*id);
                put_string(out, handle);
                attrs.encode(out);
            }
            Request::Rename {
                id,
                oldpath,
                newpath,
            } => {
                out.put_u32(*id);
                put_string(out, oldpath);
                put_string(out, newpath);
            }
            Request::Symlink {
                id,
                linkpath,
                targetpath,
            } => {
                // OpenSSH order: target first (see the variant's docs).
                out.put_u32(*id);
                put_string(out, targetpath);
                put_string(out, linkpath);
            }
            Request::Extended { id, request } => {
                out.put_u32(*id);
                put_string(out, request.name().as_bytes());
                request.encode_data(out);
            }
        }
        finish_packet(out, start);
    }

    /// Parses one frame (type byte onwards, without the length field). Bytes after the last
    /// field are ignored, as OpenSSH's sftp-server does, so later-version clients that append
    /// fields still work.
    pub fn decode(frame: Bytes) -> Result<Request, DecodeError> {
        let mut r = Reader::new(frame);
        let packet_type = r.u8("type").map_err(|_| DecodeError::Empty)?;
        if packet_type == PacketType::Init as u8 {
            return decode_init(&mut r).map_err(|reason| DecodeError::Malformed {
                packet_type,
                id: None,
                reason,
            });
        }
        let id = r.u32("id").ok();
        let Some(id) = id else {
            return Err(if is_request_type(packet_type) {
                DecodeError::Malformed {
                    packet_type,
                    id: None,
                    reason: Malformed::Truncated { field: "id" },
                }
            } else {
                DecodeError::UnknownType {
                    packet_type,
                    id: None,
                }
            });
        };
        decode_request_body(packet_type, id, &mut r).map_err(|reason| match reason {
            BodyError::UnknownType => DecodeError::UnknownType {
                packet_type,
                id: Some(id),
            },
            BodyError::Malformed(reason) => DecodeError::Malformed {
                packet_type,
                id: Some(id),
                reason,
            },
        })
    }
}

impl Response {
    /// A STATUS reply with the code's default message.
    pub fn status(id: u32, code: StatusCode) -> Response {
        Response::Status {
            id,
            code,
            message: code.default_message().to_owned(),
            language: String::new(),
        }
    }

    /// The request id this reply answers; `None` for VERSION.
    pub fn id(&self) -> Option<u32> {
        match self {
            Response::Version { .. } => None,
            Response::Status { id, .. }
            | Response::Handle { id, .. }
            | Response::Data { id, .. }
            | Response::Name { id, .. }
            | Response::Attrs { id, .. }
            | Response::ExtendedReply { id, .. } => Some(*id),
        }
    }

    /// The packet type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Response::Version { .. } => PacketType::Version,
            Response::Status { .. } => PacketType::Status,
            Response::Handle { .. } => PacketType::Handle,
            Response::Data { .. } => PacketType::Data,
            Response::Name { .. } => PacketType::Name,
            Response::Attrs { .. } => PacketType::Attrs,
            Response::ExtendedReply { .. } => PacketType::ExtendedReply,
        }
    }

    /// Appends the whole packet, length field included.
    pub fn encode(&self, out: &mut BytesMut) {
        if let Response::Data { id, data } = self {
            encode_data_header(out, *id, data.len());
            out.put_slice(data);
            return;
        }
        let start = start_packet(out, self.packet_type() as u8);
        match self {
            Response::Version {
                version,
                extensions,
            } => {
                out.put_u32(*version);
                put_extension_pairs(out, extensions);
            }
            Response::Status {
                id,
                code,
                message,
                language,
            } => {
                out.put_u32(*id);
                out.put_u32(code.code());
                put_string(out, message.as_bytes());
                put_string(out, language.as_bytes());
            }
            Response::Handle { id, handle } => {
                out.put_u32(*id);
                put_string(out, handle);
            }
            Response::Data { .. } => unreachable!("DATA is encoded above"),
            Response::Name { id, entries } => {
                out.put_u32(*id);
                out.put_u32(wire_len(entries.len()));
                for entry in entries {
                    put_string(out, &entry.filename);
                    put_string(out, &entry.longname);
                    entry.attrs.encode(out);
                }
            }
            Response::Attrs { id, attrs } => {
                out.put_u32(*id);
                attrs.encode(out);
            }
            Response::ExtendedReply { id, data } => {
                out.put_u32(*id);
                out.put_slice(data);
            }
        }
        finish_packet(out, start);
    }

    /// Parses one frame (type byte onwards, without the length field). STATUS replies from
    /// v3 servers that omit the message and language tag (allowed by the draft's errata and
    /// sent by some old servers), or only the language tag, decode with empty strings.
    pub fn decode(frame: Bytes) -> Result<Response, DecodeError> {
        let mut r = Reader::new(frame);
        let packet_type = r.u8("type").map_err(|_| DecodeError::Empty)?;
        let malformed = |id, reason| DecodeError::Malformed {
            packet_type,
            id,
            reason,
        };
        if packet_type == PacketType::Version as u8 {
            let version = r.u32("version").map_err(|e| malformed(None, e))?;
            let extensions = read_extension_pairs(&mut r).map_err(|e| malformed(None, e))?;
            return Ok(Response::Version {
                version,
                extensions,
            });
        }
        let id = r.u32("id").ok();
        let known = matches!(packet_type, 101..=105 | 201);
        let Some(id) = id else {
            return Err(if known {
                malformed(None, Malformed::Truncated { field: "id" })
            } else {
                DecodeError::UnknownType {
                    packet_type,
                    id: None,
                }
            });
        };
        let response = match packet_type {
            101 => {
                let code =
                    StatusCode::from_code(r.u32("code").map_err(|e| malformed(Some(id), e))?);
                // Each trailing string is optional: old servers omit both, some omit the
                // language tag only.
                let mut optional_text = |field| {
                    if r.remaining() == 0 {
                        Ok(String::new())
                    } else {
                        r.text(field).map_err(|e| malformed(Some(id), e))
                    }
                };
                let message = optional_text("message")?;
                let language = optional_text("language")?;
                Response::Status {
                    id,
                    code,
                    message,
                    language,
                }
            }
            102 => Response::Handle {
                id,
                handle: r.string("handle").map_err(|e| malformed(Some(id), e))?,
            },
            103 => Response::Data {
                id,
                data: r.string("data").map_err(|e| malformed(Some(id), e))?,
            },
            104 => {
                let entries = read_name_entries(&mut r).map_err(|e| malformed(Some(id), e))?;
                Response::Name { id, entries }
            }
            105 => Response::Attrs {
                id,
                attrs: FileAttributes::decode(&mut r).map_err(|e| malformed(Some(id), e))?,
            },
            201 => Response::ExtendedReply { id, data: r.rest() },
            _ => {
                return Err(DecodeError::UnknownType {
                    packet_type,
                    id: Some(id),
                })
            }
        };
        Ok(response)
    }
}

/// Appends an SSH_FXP_STATUS reply from borrowed strings: what a server sends for every
/// WRITE, without building a [`Response`] (and its owned message) first.
pub fn encode_status(out: &mut BytesMut, id: u32, code: StatusCode, message: &str) {
    let start = start_packet(out, PacketType::Status as u8);
    out.put_u32(id);
    out.put_u32(code.code());
    put_string(out, message.as_bytes());
    put_string(out, b"");
    finish_packet(out, start);
}

/// Appends the header of an SSH_FXP_DATA reply carrying `len` bytes of data; the caller
/// appends exactly `len` bytes after it. Lets a server read file data straight into its
/// output buffer behind the header instead of copying it there.
pub fn encode_data_header(out: &mut BytesMut, id: u32, len: usize) {
    out.put_slice(&data_header(id, len));
}

/// Bytes of an SSH_FXP_DATA header: length (4), type (1), id (4), data length (4).
pub const DATA_HEADER_LEN: usize = 13;

/// The header of an SSH_FXP_DATA reply carrying `len` bytes of data, as
/// [`encode_data_header`] appends it: for patching a header written before the data's
/// length was known.
pub fn data_header(id: u32, len: usize) -> [u8; DATA_HEADER_LEN] {
    let mut header = [0; DATA_HEADER_LEN];
    // length field covers: type (1) + id (4) + data length (4) + data
    header[..4].copy_from_slice(&wire_len(9 + len).to_be_bytes());
    header[4] = PacketType::Data as u8;
    header[5..9].copy_from_slice(&id.to_be_bytes());
    header[9..].copy_from_slice(&wire_len(len).to_be_bytes());
    header
}

enum BodyError {
    UnknownType,
    Malformed(Malformed),
}

impl From<Malformed> for BodyError {
    fn from(m: Malformed) -> Self {
        BodyError::Malformed(m)
    }
}

fn is_request_type(packet_type: u8) -> bool {
    matches!(packet_type, 3..=20 | 200)
}

fn decode_init(r: &mut Reader) -> Result<Request, Malformed> {
    let version = r.u32("version")?;
    let extensions = read_extension_pairs(r)?;
    Ok(Request::Init {
        version,
        extensions,
    })
}

fn decode_request_body(packet_type: u8, id: u32, r: &mut Reader) -> Result<Request, BodyError> {
    let request = match packet_type {
        3 => Request::Open {
            id,
            filename: r.string("filename")?,
            pflags: OpenFlags::from_bits_retain(r.u32("pflags")?),
            attrs: FileAttributes::decode(r)?,
        },
        4 => Request::Close {
            id,
            handle: r.string("handle")?,
        },
        5 => Request::Read {
            id,
            handle: r.string("handle")?,
            offset: r.u64("offset")?,
            len: r.u32("len")?,
        },
        6 => Request::Write {
            id,
            handle: r.string("handle")?,
            offset: r.u64("offset")?,
            data: r.string("data")?.into(),
        },
        7 => Request::Lstat {
            id,
            path: r.string("path")?,
        },
        8 => Request::Fstat {
            id,
            handle: r.string("handle")?,
        },
        9 => Request::Setstat {
            id,
            path: r.string("path")?,
            attrs: FileAttributes::decode(r)?,
        },
        10 => Request::Fsetstat {
            id,
            handle: r.string("handle")?,
            attrs: FileAttributes::decode(r)?,
        },
        11 => Request::Opendir {
            id,
            path: r.string("path")?,
        },
        12 => Request::Readdir {
            id,
            handle: r.string("handle")?,
        },
        13 => Request::Remove {
            id,
            filename: r.string("filename")?,
        },
        14 => Request::Mkdir {
            id,
            path: r.string("path")?,
            attrs: FileAttributes::decode(r)?,
        },
        15 => Request::Rmdir {
            id,
            path: r.string("path")?,
        },
        16 => Request::Realpath {
            id,
            path: r.string("path")?,
        },
        17 => Request::Stat {
            id,
            path: r.string("path")?,
        },
        18 => Request::Rename {
            id,
            oldpath: r.string("oldpath")?,
            newpath: r.string("newpath")?,
        },
        19 => Request::Readlink {
            id,
            path: r.string("path")?,
        },
        20 => {
            // OpenSSH order: target first (see `Request::Symlink`).
            let targetpath = r.string("targetpath")?;
            let linkpath = r.string("linkpath")?;
            Request::Symlink {
                id,
                linkpath,
                targetpath,
            }
        }
        200 => {
            let name = r.string("extended-request")?;
            Request::Extended {
                id,
                request: ExtendedRequest::decode(&name, r)?,
            }
        }
        _ => return Err(BodyError::UnknownType),
    };
    Ok(request)
}

fn put_extension_pairs(out: &mut BytesMut, pairs: &[(String, Bytes)]) {
    for (name, data) in pairs {
        put_string(out, name.as_bytes());
        put_string(out, data);
    }
}

fn read_extension_pairs(r: &mut Reader) -> Result<Vec<(String, Bytes)>, Malformed> {
    let mut pairs = Vec::new();
    while r.remaining() > 0 {
        let name = r.text("extension-name")?;
        let data = r.string("extension-data")?;
        pairs.push((name, data));
    }
    Ok(pairs)
}

fn read_name_entries(r: &mut Reader) -> Result<Vec<NameEntry>, Malformed> {
    let count = r.u32("count")?;
    // An entry takes at least 12 bytes (two empty strings and a flags word).
    if count as usize > r.remaining() / 12 {
        return Err(Malformed::CountTooLarge {
            field: "count",
            count,
        });
    }
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        entries.push(NameEntry {
            filename: r.string("filename")?,
            longname: r.string("longname")?,
            attrs: FileAttributes::decode(r)?,
        });
    }
    Ok(entries)
}
