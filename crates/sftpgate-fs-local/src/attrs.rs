//! Linux `stat`/`statvfs` as SFTP attributes, and SETSTAT applied to one descriptor.

use std::os::fd::BorrowedFd;

use rustix::fs::{AtFlags, FileType as OsFileType, Gid, Mode, Stat, StatVfs, StatVfsMountFlags};
use rustix::fs::{Timespec, Timestamps, Uid};
use rustix::io::Errno;
use sftpgate_proto::{FileAttributes, Owner, StatvfsReply, Times};
use sftpgate_vfs::FsError;

use crate::error::{from_errno, retry_eintr};
use crate::procfs;

/// The attributes STAT reports: size, owner, the full `st_mode` (type and permission bits)
/// and access/modification times (whole seconds, clamped to v3's 32 bits).
pub(crate) fn from_stat(st: &Stat) -> FileAttributes {
    FileAttributes {
        size: Some(u64::try_from(st.st_size).unwrap_or(0)),
        owner: Some(Owner {
            uid: st.st_uid,
            gid: st.st_gid,
        }),
        permissions: Some(st.st_mode),
        times: Some(Times {
            atime: clamp_time(st.st_atime),
            mtime: clamp_time(st.st_mtime),
        }),
        extended: Vec::new(),
    }
}

/// The link count of a `stat` (its width differs between architectures).
pub(crate) fn nlink(st: &Stat) -> u64 {
    #[allow(clippy::unnecessary_cast)] // u64 on x86_64, u32 on aarch64
    let nlink = st.st_nlink as u64;
    nlink
}

/// `statvfs@openssh.com`'s reply, with the two flag bits OpenSSH reports.
pub(crate) fn statvfs_reply(v: &StatVfs) -> StatvfsReply {
    let mut flag = 0;
    if v.f_flag.contains(StatVfsMountFlags::RDONLY) {
        flag |= StatvfsReply::FLAG_RDONLY;
    }
    if v.f_flag.contains(StatVfsMountFlags::NOSUID) {
        flag |= StatvfsReply::FLAG_NOSUID;
    }
    StatvfsReply {
        bsize: v.f_bsize,
        frsize: v.f_frsize,
        blocks: v.f_blocks,
        bfree: v.f_bfree,
        bavail: v.f_bavail,
        files: v.f_files,
        ffree: v.f_ffree,
        favail: v.f_favail,
        fsid: v.f_fsid,
        flag,
        namemax: v.f_namemax,
    }
}

/// The descriptor SETSTAT works on.
#[derive(Clone, Copy)]
pub(crate) enum Target<'a> {
    /// Opened for I/O (an open handle, or a file reopened for a size change): every `f*`
    /// call works on it.
    Open(BorrowedFd<'a>),
    /// An `O_PATH` descriptor of the object itself (for SETSTAT by path: the followed
    /// target; for LSETSTAT: perhaps a symlink). No size change through it.
    Path(BorrowedFd<'a>),
}

/// Applies `attrs` in OpenSSH's order: size, permissions, times, owner (a chown last, so a
/// chmod cannot re-add set-id bits the chown cleared). Extended attributes are ignored, as
/// OpenSSH does.
pub(crate) fn apply(target: Target<'_>, attrs: &FileAttributes) -> Result<(), FsError> {
    if let Some(size) = attrs.size {
        match target {
            Target::Open(fd) => {
                retry_eintr(|| rustix::fs::ftruncate(fd, size)).map_err(from_errno)?;
            }
            Target::Path(_) => {
                return Err(FsError::InvalidInput(
                    "a size cannot be set without following symlinks".into(),
                ))
            }
        }
    }
    if let Some(permissions) = attrs.permissions {
        let mode = Mode::from_raw_mode(permissions & 0o7777);
        match target {
            Target::Open(fd) => rustix::fs::fchmod(fd, mode).map_err(from_errno)?,
            Target::Path(fd) => {
                refuse_symlink(fd, "changing the permissions of a symlink")?;
                procfs::chmod(fd, mode)?;
            }
        }
    }
    if let Some(times) = attrs.times {
        let times = Timestamps {
            last_access: seconds(times.atime),
            last_modification: seconds(times.mtime),
        };
        match target {
            Target::Open(fd) => rustix::fs::futimens(fd, &times).map_err(from_errno)?,
            Target::Path(fd) => {
                // AT_EMPTY_PATH: the object `fd` holds, a symlink itself included. Linux
                // before 5.8 lacks that flag here (EINVAL): go through procfs instead.
                match rustix::fs::utimensat(fd, c"", &times, AtFlags::EMPTY_PATH) {
                    Ok(()) => {}
                    Err(Errno::INVAL) => {
                        refuse_symlink(fd, "setting the times of a symlink on this kernel")?;
                        procfs::utimes(fd, &times)?;
                    }
                    Err(e) => return Err(from_errno(e)),
                }
            }
        }
    }
    if let Some(owner) = attrs.owner {
        // v3 always carries both ids; u32::MAX (-1) means "leave as is", as for chown(2).
        let uid = (owner.uid != u32::MAX).then(|| Uid::from_raw(owner.uid));
        let gid = (owner.gid != u32::MAX).then(|| Gid::from_raw(owner.gid));
        match target {
            Target::Open(fd) => rustix::fs::fchown(fd, uid, gid).map_err(from_errno)?,
            // fchownat(AT_EMPTY_PATH) accepts O_PATH descriptors and changes the object
            // itself (lchown for a symlink).
            Target::Path(fd) => {
                rustix::fs::chownat(fd, c"", uid, gid, AtFlags::EMPTY_PATH).map_err(from_errno)?
            }
        }
    }
    Ok(())
}

/// Linux cannot change a symlink's own mode (and a procfs detour would act on its target).
fn refuse_symlink(fd: BorrowedFd<'_>, what: &str) -> Result<(), FsError> {
    let st = rustix::fs::fstat(fd).map_err(from_errno)?;
    if OsFileType::from_raw_mode(st.st_mode) == OsFileType::Symlink {
        return Err(FsError::Unsupported(
            format!("{what} is not supported on Linux").into(),
        ));
    }
    Ok(())
}

fn seconds(secs: u32) -> Timespec {
    Timespec {
        tv_sec: secs.into(),
        tv_nsec: 0,
    }
}

fn clamp_time(secs: i64) -> u32 {
    u32::try_from(secs.max(0)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_clamp_to_v3_range() {
        assert_eq!(clamp_time(-5), 0);
        assert_eq!(clamp_time(1_700_000_000), 1_700_000_000);
        assert_eq!(clamp_time(1 << 40), u32::MAX);
    }
}
