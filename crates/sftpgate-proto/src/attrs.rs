//! File attributes (draft-ietf-secsh-filexfer-02 §5): every v3 flag, encoded and decoded.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::Malformed;
use crate::wire::{put_string, wire_len, Reader};

bitflags::bitflags! {
    /// The `flags` word of an attribute block: which fields follow.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct AttrFlags: u32 {
        /// SSH_FILEXFER_ATTR_SIZE
        const SIZE = 0x0000_0001;
        /// SSH_FILEXFER_ATTR_UIDGID
        const UIDGID = 0x0000_0002;
        /// SSH_FILEXFER_ATTR_PERMISSIONS
        const PERMISSIONS = 0x0000_0004;
        /// SSH_FILEXFER_ATTR_ACMODTIME
        const ACMODTIME = 0x0000_0008;
        /// SSH_FILEXFER_ATTR_EXTENDED
        const EXTENDED = 0x8000_0000;
    }
}

/// Numeric owner and group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Access and modification times, in seconds since the Unix epoch (v3 carries 32 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Times {
    /// Last access.
    pub atime: u32,
    /// Last modification.
    pub mtime: u32,
}

/// The kind of file, from the `S_IFMT` bits of the permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A named pipe.
    Fifo,
    /// A socket.
    Socket,
    /// Unknown or absent type bits.
    Unknown,
}

impl FileType {
    /// `S_IFMT`.
    pub const MASK: u32 = 0o170000;

    /// The type encoded in a `st_mode` value.
    pub fn from_mode(mode: u32) -> FileType {
        match mode & Self::MASK {
            0o100000 => FileType::Regular,
            0o040000 => FileType::Directory,
            0o120000 => FileType::Symlink,
            0o020000 => FileType::CharDevice,
            0o060000 => FileType::BlockDevice,
            0o010000 => FileType::Fifo,
            0o140000 => FileType::Socket,
            _ => FileType::Unknown,
        }
    }

    /// The `S_IFMT` bits of the type.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileType::Regular => 0o100000,
            FileType::Directory => 0o040000,
            FileType::Symlink => 0o120000,
            FileType::CharDevice => 0o020000,
            FileType::BlockDevice => 0o060000,
            FileType::Fifo => 0o010000,
            FileType::Socket => 0o140000,
            FileType::Unknown => 0,
        }
    }
}

/// An attribute block. Absent fields are `None`; the flags word is derived from which fields
/// are present, so the two can never disagree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FileAttributes {
    /// File size in bytes.
    pub size: Option<u64>,
    /// Numeric owner and group.
    pub owner: Option<Owner>,
    /// `st_mode`: type and permission bits.
    pub permissions: Option<u32>,
    /// Access and modification times.
    pub times: Option<Times>,
    /// Extended attribute pairs (type, data).
    pub extended: Vec<(Bytes, Bytes)>,
}

impl FileAttributes {
    /// Attributes with nothing set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The flags word these attributes encode with.
    pub fn flags(&self) -> AttrFlags {
        let mut flags = AttrFlags::empty();
        flags.set(AttrFlags::SIZE, self.size.is_some());
        flags.set(AttrFlags::UIDGID, self.owner.is_some());
        flags.set(AttrFlags::PERMISSIONS, self.permissions.is_some());
        flags.set(AttrFlags::ACMODTIME, self.times.is_some());
        flags.set(AttrFlags::EXTENDED, !self.extended.is_empty());
        flags
    }

    /// The file type, when permissions are present.
    pub fn file_type(&self) -> Option<FileType> {
        self.permissions.map(FileType::from_mode)
    }

    /// Whether the attributes say this is a directory.
    pub fn is_dir(&self) -> bool {
        self.file_type() == Some(FileType::Directory)
    }

    /// Appends the wire form.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u32(self.flags().bits());
        if let Some(size) = self.size {
            out.put_u64(size);
        }
        if let Some(owner) = self.owner {
            out.put_u32(owner.uid);
            out.put_u32(owner.gid);
        }
        if let Some(permissions) = self.permissions {
            out.put_u32(permissions);
        }
        if let Some(times) = self.times {
            out.put_u32(times.atime);
            out.put_u32(times.mtime);
        }
        if !self.extended.is_empty() {
            out.put_u32(wire_len(self.extended.len()));
            for (name, data) in &self.extended {
                put_string(out, name);
                put_string(out, data);
            }
        }
    }

    /// The length of the wire form, without encoding it.
    pub fn encoded_len(&self) -> usize {
        4 + self.size.map_or(0, |_| 8)
            + self.owner.map_or(0, |_| 8)
            + self.permissions.map_or(0, |_| 4)
            + self.times.map_or(0, |_| 8)
            + if self.extended.is_empty() {
                0
            } else {
                4 + self
                    .extended
                    .iter()
                    .map(|(n, d)| 8 + n.len() + d.len())
                    .sum::<usize>()
            }
    }

    /// Reads an attribute block. Unknown flag bits are ignored, as OpenSSH does.
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, Malformed> {
        let flags = AttrFlags::from_bits_retain(r.u32("attrs.flags")?);
        let mut attrs = FileAttributes::new();
        if flags.contains(AttrFlags::SIZE) {
            attrs.size = Some(r.u64("attrs.size")?);
        }
        if flags.contains(AttrFlags::UIDGID) {
            attrs.owner = Some(Owner {
                uid: r.u32("attrs.uid")?,
                gid: r.u32("attrs.gid")?,
            });
        }
        if flags.contains(AttrFlags::PERMISSIONS) {
            attrs.permissions = Some(r.u32("attrs.permissions")?);
        }
        if flags.contains(AttrFlags::ACMODTIME) {
            attrs.times = Some(Times {
                atime: r.u32("attrs.atime")?,
                mtime: r.u32("attrs.mtime")?,
            });
        }
        if flags.contains(AttrFlags::EXTENDED) {
            let count = r.u32("attrs.extended_count")?;
            // Each pair takes at least 8 bytes: refuse counts the frame cannot hold before
            // reserving room for them.
            if count as usize > r.remaining() / 8 {
                return Err(Malformed::CountTooLarge {
                    field: "attrs.extended_count",
                    count,
                });
            }
            attrs.extended.reserve(count as usize);
            for _ in 0..count {
                let name = r.string("attrs.extended_type")?;
                let data = r.string("attrs.extended_data")?;
                attrs.extended.push((name, data));
            }
        }
        Ok(attrs)
    }
}
