//! A backend-independent conformance suite for [`Filesystem`] implementations.
//!
//! Every check is a `pub async fn` taking `&dyn Filesystem` whose root starts empty; it
//! panics (with a message naming what went wrong) when the backend misbehaves. A backend's
//! tests call each check from its own `#[test]`, so a failure names the check:
//!
//! ```text
//! #[tokio::test]
//! async fn append() {
//!     let (_dir, fs) = fresh_fs();
//!     sftpgate_vfs::conformance::append(&fs).await;
//! }
//! ```
//!
//! Each check works only inside its own directory, `/<check name>`, which it creates first;
//! so [`run_all`] can run every check on one root, one after the other.
//!
//! Behaviour that not every backend can offer (symlinks, hard links, writes at arbitrary
//! offsets, …) is listed in [`Profile`]. The checks that need it say so in their docs;
//! [`run_profile`] skips them when the profile says the backend lacks it, and a backend's
//! own tests simply do not call them. The expected statuses are those of OpenSSH's
//! sftp-server on Linux, through the one map `StatusCode::from(&FsError)`.
//!
//! The suite depends on no async runtime: concurrency comes from polling several futures
//! at once, so the backend must make progress on whatever runtime the test runs on.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use sftpgate_proto::{FileAttributes, FileType, OpenFlags, StatusCode, Times, WriteData};

use crate::{File, Filesystem, FsError, ReadPart, RenameMode, VPath};

/// What a backend supports beyond the core every backend must offer (files, directories,
/// sequential writes, reads, RENAME, REMOVE, errors).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Profile {
    /// SYMLINK, READLINK, and `lstat` telling links apart from their targets.
    pub symlinks: bool,
    /// `hardlink@openssh.com`.
    pub hardlinks: bool,
    /// `posix-rename@openssh.com` ([`RenameMode::Replace`]).
    pub posix_rename: bool,
    /// Files opened with `APPEND` write at their end.
    pub append: bool,
    /// Writes at any offset of an existing file (overwriting in place, concurrent writes at
    /// several offsets of one handle) and changing the size with SETSTAT.
    pub random_writes: bool,
    /// SETSTAT of permissions, owner and times, reported back by STAT; permissions given at
    /// OPEN or MKDIR are honoured.
    pub set_attributes: bool,
    /// REALPATH resolves symlinks and fails with `NO_SUCH_FILE` when more than the last
    /// component is missing (OpenSSH's behaviour), rather than echoing the lexical path.
    pub resolving_realpath: bool,
}

impl Profile {
    /// Everything a POSIX filesystem offers: what the local backend must pass.
    pub fn posix() -> Profile {
        Profile {
            symlinks: true,
            hardlinks: true,
            posix_rename: true,
            append: true,
            random_writes: true,
            set_attributes: true,
            resolving_realpath: true,
        }
    }

    /// Only the core every backend must offer; enable fields one by one from here.
    pub fn core() -> Profile {
        Profile {
            symlinks: false,
            hardlinks: false,
            posix_rename: false,
            append: false,
            random_writes: false,
            set_attributes: false,
            resolving_realpath: false,
        }
    }
}

/// Runs every check with [`Profile::posix`].
pub async fn run_all(fs: &dyn Filesystem) {
    run_profile(fs, &Profile::posix()).await;
}

/// Runs every check the profile allows, one after the other, on one (initially empty) root.
pub async fn run_profile(fs: &dyn Filesystem, profile: &Profile) {
    create_read_write(fs).await;
    write_in_pieces(fs).await;
    exclusive_create(fs).await;
    truncate_on_open(fs).await;
    read_past_eof(fs).await;
    read_len_hint(fs).await;
    read_parts(fs).await;
    file_stat(fs).await;
    mkdir_rmdir(fs).await;
    remove(fs).await;
    rename_no_replace(fs).await;
    readdir_many(fs).await;
    error_status_codes(fs).await;
    open_directory_fails(fs).await;
    realpath(fs, profile).await;
    if profile.random_writes {
        overwrite_in_place(fs).await;
        truncate_via_setstat(fs).await;
        concurrent_handle_io(fs).await;
    }
    if profile.append {
        append(fs).await;
    }
    if profile.set_attributes {
        set_attributes(fs).await;
        create_mode(fs).await;
    }
    if profile.posix_rename {
        posix_rename_replaces(fs).await;
    }
    if profile.symlinks {
        symlink_readlink(fs).await;
        stat_vs_lstat(fs).await;
    }
    if profile.hardlinks {
        hardlink(fs).await;
    }
}

/// CREAT|WRITE|TRUNC a file, write it in several pieces, close; read it back whole.
pub async fn create_read_write(fs: &dyn Filesystem) {
    let dir = scratch(fs, "create_read_write").await;
    let path = name(&dir, "a.bin");
    let data = pattern(100_000, 7);
    let file = create(fs, &path).await;
    for (i, chunk) in data.chunks(32 * 1024).enumerate() {
        let offset = (i * 32 * 1024) as u64;
        file.write(offset, Bytes::copy_from_slice(chunk))
            .await
            .expect("write");
    }
    file.close().await.expect("close after write");
    assert_eq!(read_all(fs, &path).await, data, "content read back");
    let attrs = fs.stat(&path).await.expect("stat");
    assert_eq!(attrs.size, Some(data.len() as u64), "size after write");
    assert_eq!(attrs.file_type(), Some(FileType::Regular), "type of a file");
}

/// WRITEs whose data is in pieces (`File::write_data`, what the server calls): pieces of
/// odd sizes, and one WRITE in more pieces than one `pwritev(2)` takes; read back whole.
pub async fn write_in_pieces(fs: &dyn Filesystem) {
    let dir = scratch(fs, "write_in_pieces").await;
    let path = name(&dir, "p.bin");
    let data = pattern(70_000, 11);
    let file = create(fs, &path).await;
    let pieces = |bytes: &[u8], sizes: &mut dyn Iterator<Item = usize>| {
        let mut out = WriteData::default();
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
            out.push(Bytes::copy_from_slice(&rest[..n]));
            rest = &rest[n..];
        }
        out
    };
    // 40,000 bytes in pieces of 1, 7, 1000, 32768 and the rest.
    let first = pieces(&data[..40_000], &mut [1, 7, 1000, 32_768].into_iter());
    assert_eq!(first.chunk_count(), 5);
    file.write_data(0, first).await.expect("write in pieces");
    // 30,000 bytes in 3,000 pieces of 10.
    let second = pieces(&data[40_000..], &mut std::iter::repeat(10));
    assert_eq!(second.chunk_count(), 3_000);
    file.write_data(40_000, second)
        .await
        .expect("write in many pieces");
    file.close().await.expect("close after write");
    assert_eq!(read_all(fs, &path).await, data, "content read back");
}

/// CREAT|EXCL on an existing file fails with FAILURE (EEXIST) and leaves it alone.
pub async fn exclusive_create(fs: &dyn Filesystem) {
    let dir = scratch(fs, "exclusive_create").await;
    let path = name(&dir, "x");
    write_file(fs, &path, b"keep").await;
    let flags = OpenFlags::WRITE | OpenFlags::CREAT | OpenFlags::EXCL;
    let err = fs
        .open(&path, flags, &FileAttributes::new())
        .await
        .must_fail("CREAT|EXCL on an existing file must fail");
    assert_status(&err, StatusCode::Failure, "CREAT|EXCL on an existing file");
    assert_eq!(read_all(fs, &path).await, b"keep");
    // And on a new name it creates.
    let fresh = name(&dir, "y");
    let file = fs
        .open(&fresh, flags, &FileAttributes::new())
        .await
        .expect("CREAT|EXCL on a new name");
    file.close().await.expect("close");
    assert_eq!(fs.stat(&fresh).await.expect("stat").size, Some(0));
}

/// Opening an existing file with TRUNC empties it; without TRUNC it keeps its content.
pub async fn truncate_on_open(fs: &dyn Filesystem) {
    let dir = scratch(fs, "truncate_on_open").await;
    let path = name(&dir, "t");
    write_file(fs, &path, b"0123456789").await;
    let file = fs
        .open(&path, OpenFlags::WRITE, &FileAttributes::new())
        .await
        .expect("open for write without TRUNC");
    file.close().await.expect("close");
    assert_eq!(
        read_all(fs, &path).await,
        b"0123456789",
        "no TRUNC keeps data"
    );
    write_file(fs, &path, b"ab").await;
    assert_eq!(read_all(fs, &path).await, b"ab", "TRUNC empties first");
}

/// Writes in the middle of an existing file replace those bytes only; a write past the
/// end extends the file (the gap reads as zeros). Needs [`Profile::random_writes`].
pub async fn overwrite_in_place(fs: &dyn Filesystem) {
    let dir = scratch(fs, "overwrite_in_place").await;
    let path = name(&dir, "o");
    write_file(fs, &path, b"0123456789").await;
    let file = fs
        .open(
            &path,
            OpenFlags::READ | OpenFlags::WRITE,
            &FileAttributes::new(),
        )
        .await
        .expect("open read-write");
    file.write(3, Bytes::from_static(b"abc"))
        .await
        .expect("overwrite");
    file.write(12, Bytes::from_static(b"Z"))
        .await
        .expect("write past end");
    file.close().await.expect("close");
    assert_eq!(read_all(fs, &path).await, b"012abc6789\0\0Z");
}

/// APPEND writes go to the end whatever offset the client sends. Needs [`Profile::append`].
pub async fn append(fs: &dyn Filesystem) {
    let dir = scratch(fs, "append").await;
    let path = name(&dir, "log");
    write_file(fs, &path, b"one,").await;
    let file = fs
        .open(
            &path,
            OpenFlags::WRITE | OpenFlags::APPEND,
            &FileAttributes::new(),
        )
        .await
        .expect("open for append");
    file.write(0, Bytes::from_static(b"two,"))
        .await
        .expect("append write at 0");
    file.write(1, Bytes::from_static(b"three"))
        .await
        .expect("append write at 1");
    file.close().await.expect("close");
    assert_eq!(read_all(fs, &path).await, b"one,two,three");
}

/// SETSTAT with a size shrinks and grows a file, by path and by handle. Needs
/// [`Profile::random_writes`].
pub async fn truncate_via_setstat(fs: &dyn Filesystem) {
    let dir = scratch(fs, "truncate_via_setstat").await;
    let path = name(&dir, "s");
    write_file(fs, &path, b"0123456789").await;
    fs.setstat(&path, &size_attrs(4))
        .await
        .expect("setstat size 4");
    assert_eq!(read_all(fs, &path).await, b"0123");
    fs.setstat(&path, &size_attrs(6))
        .await
        .expect("setstat size 6");
    assert_eq!(read_all(fs, &path).await, b"0123\0\0");
    let file = fs
        .open(&path, OpenFlags::WRITE, &FileAttributes::new())
        .await
        .expect("open for fsetstat");
    file.setstat(&size_attrs(1)).await.expect("fsetstat size 1");
    assert_eq!(file.stat().await.expect("fstat").size, Some(1));
    file.close().await.expect("close");
    assert_eq!(read_all(fs, &path).await, b"0");
}

/// Reading at or past the end is EOF; a read across the end is short.
pub async fn read_past_eof(fs: &dyn Filesystem) {
    let dir = scratch(fs, "read_past_eof").await;
    let path = name(&dir, "e");
    write_file(fs, &path, b"hello").await;
    let file = open_read(fs, &path).await;
    let mut buf = BytesMut::new();
    let n = file.read(2, 100, &mut buf).await.expect("read across end");
    assert!(n <= 3 && n > 0, "read across the end returned {n} bytes");
    assert_eq!(&buf[..], &b"llo"[..n]);
    for offset in [5, 6, 1 << 40] {
        let mut buf = BytesMut::new();
        let err = file
            .read(offset, 10, &mut buf)
            .await
            .err()
            .unwrap_or_else(|| panic!("read at {offset} of a 5-byte file must be EOF"));
        assert_status(&err, StatusCode::Eof, "read past the end");
        assert!(buf.is_empty(), "EOF read appended bytes");
    }
    file.close().await.expect("close");
    // An empty file is EOF at once.
    let empty = name(&dir, "empty");
    write_file(fs, &empty, b"").await;
    let file = open_read(fs, &empty).await;
    let err = file
        .read(0, 10, &mut BytesMut::new())
        .await
        .must_fail("read of an empty file must be EOF");
    assert_status(&err, StatusCode::Eof, "read of an empty file");
    file.close().await.expect("close");
}

/// `File::read_len_hint`, where a backend gives one, bounds what a read of a file nobody
/// changes returns (a short read may return less), and is 0 exactly where the read is EOF.
pub async fn read_len_hint(fs: &dyn Filesystem) {
    let dir = scratch(fs, "read_len_hint").await;
    let path = name(&dir, "h");
    let data = pattern(10_000, 3);
    write_file(fs, &path, &data).await;
    let file = open_read(fs, &path).await;
    for (offset, len) in [
        (0, 261_120),
        (0, 4096),
        (9_000, 4096),
        (10_000, 100),
        (1 << 40, 10),
    ] {
        let Some(hint) = file.read_len_hint(offset, len) else {
            continue;
        };
        let mut buf = BytesMut::new();
        let got = match file.read(offset, len, &mut buf).await {
            Ok(n) => n,
            Err(e) => {
                assert_status(&e, StatusCode::Eof, "read for the hint");
                0
            }
        };
        assert!(
            got <= hint as usize && (got == 0) == (hint == 0),
            "read_len_hint({offset}, {len}) of a 10,000-byte file is {hint}, the read got {got}"
        );
    }
    file.close().await.expect("close");
}

/// `File::read_parts` fills its parts in turn with what one read would return, each part
/// full before the next gets a byte, keeping what the parts held; short at the end of the
/// file, EOF past it with nothing appended.
pub async fn read_parts(fs: &dyn Filesystem) {
    let dir = scratch(fs, "read_parts").await;
    let path = name(&dir, "p");
    let size = 300_000usize;
    let data = pattern(size, 5);
    write_file(fs, &path, &data).await;
    let file = open_read(fs, &path).await;
    let lens = [
        32_755u32, 32_768, 32_768, 32_768, 32_768, 32_768, 32_768, 31_757,
    ];
    for offset in [0u64, 1, 4_097, 100_000, 300_000 - 40_000, 300_000 - 7] {
        let mut parts: Vec<ReadPart> = lens
            .iter()
            .map(|&len| {
                let mut buf = BytesMut::with_capacity(len as usize + 8);
                buf.extend_from_slice(b"held");
                ReadPart::new(buf, len)
            })
            .collect();
        let n = file
            .read_parts(offset, &mut parts)
            .await
            .unwrap_or_else(|e| panic!("read_parts at {offset}: {e}"));
        let end = (offset as usize + 261_120).min(size);
        assert!(
            n > 0 && n <= end - offset as usize,
            "read_parts at {offset} returned {n}"
        );
        let mut got = Vec::new();
        let mut open = true;
        for (part, &len) in parts.iter().zip(&lens) {
            assert_eq!(
                &part.buf[..4],
                b"held",
                "at {offset}: a part lost what it held"
            );
            let appended = &part.buf[4..];
            assert!(
                appended.len() <= len as usize,
                "at {offset}: a part overfilled"
            );
            assert!(
                open || appended.is_empty(),
                "at {offset}: a part got bytes after one that was not full"
            );
            open = appended.len() == len as usize;
            got.extend_from_slice(appended);
        }
        assert_eq!(got.len(), n, "at {offset}: the count is what was appended");
        assert_eq!(
            got,
            &data[offset as usize..offset as usize + n],
            "at {offset}"
        );
    }
    for offset in [300_000u64, 1 << 40] {
        let mut parts: Vec<ReadPart> = (0..3)
            .map(|_| ReadPart::new(BytesMut::new(), 32_768))
            .collect();
        let err = file
            .read_parts(offset, &mut parts)
            .await
            .must_fail("read_parts past the end must be EOF");
        assert_status(&err, StatusCode::Eof, "read_parts past the end");
        assert!(
            parts.iter().all(|p| p.buf.is_empty()),
            "an EOF read_parts appended bytes"
        );
    }
    file.close().await.expect("close");
}

/// `read` appends to the buffer it is given, and FSTAT reports what was written.
pub async fn file_stat(fs: &dyn Filesystem) {
    let dir = scratch(fs, "file_stat").await;
    let path = name(&dir, "f");
    let file = create(fs, &path).await;
    file.write(0, Bytes::from_static(b"abcdef"))
        .await
        .expect("write");
    let attrs = file.stat().await.expect("fstat");
    assert_eq!(attrs.size, Some(6));
    assert_eq!(attrs.file_type(), Some(FileType::Regular));
    file.close().await.expect("close");
    let file = open_read(fs, &path).await;
    let mut buf = BytesMut::from(&b"prefix:"[..]);
    let n = file.read(0, 6, &mut buf).await.expect("read");
    assert_eq!(&buf[..7 + n], &b"prefix:abcdef"[..7 + n], "read appends");
    file.close().await.expect("close");
}

/// MKDIR creates a directory (twice fails), RMDIR removes an empty one, refuses a
/// non-empty one and a file.
pub async fn mkdir_rmdir(fs: &dyn Filesystem) {
    let dir = scratch(fs, "mkdir_rmdir").await;
    let sub = name(&dir, "sub");
    fs.mkdir(&sub, &FileAttributes::new()).await.expect("mkdir");
    assert!(fs.stat(&sub).await.expect("stat dir").is_dir());
    let err = fs
        .mkdir(&sub, &FileAttributes::new())
        .await
        .must_fail("mkdir of an existing directory must fail");
    assert_status(&err, StatusCode::Failure, "mkdir twice");

    let inner = name(&sub, "file");
    write_file(fs, &inner, b"x").await;
    let err = fs
        .rmdir(&sub)
        .await
        .must_fail("rmdir of a non-empty directory must fail");
    assert_status(&err, StatusCode::Failure, "rmdir non-empty");
    assert!(fs.stat(&inner).await.is_ok(), "rmdir removed content");

    let err = fs
        .rmdir(&inner)
        .await
        .must_fail("rmdir of a file must fail");
    assert_status(&err, StatusCode::Failure, "rmdir of a file");

    fs.remove(&inner).await.expect("remove inner file");
    fs.rmdir(&sub).await.expect("rmdir empty");
    let err = fs.stat(&sub).await.must_fail("directory is gone");
    assert_status(&err, StatusCode::NoSuchFile, "stat after rmdir");
}

/// REMOVE deletes a file, refuses a directory, and reports a missing name.
pub async fn remove(fs: &dyn Filesystem) {
    let dir = scratch(fs, "remove").await;
    let path = name(&dir, "r");
    write_file(fs, &path, b"bye").await;
    fs.remove(&path).await.expect("remove");
    let err = fs.stat(&path).await.must_fail("file is gone");
    assert_status(&err, StatusCode::NoSuchFile, "stat after remove");
    let err = fs.remove(&path).await.must_fail("second remove fails");
    assert_status(&err, StatusCode::NoSuchFile, "remove of a missing file");
    let sub = name(&dir, "d");
    fs.mkdir(&sub, &FileAttributes::new()).await.expect("mkdir");
    let err = fs
        .remove(&sub)
        .await
        .must_fail("remove of a directory must fail");
    assert!(
        matches!(
            StatusCode::from(&err),
            StatusCode::Failure | StatusCode::PermissionDenied
        ),
        "remove of a directory: {err:?}"
    );
    assert!(fs.stat(&sub).await.expect("still there").is_dir());
}

/// RENAME moves a file and a directory; with [`RenameMode::NoReplace`] an existing
/// destination makes it fail and both stay as they were.
pub async fn rename_no_replace(fs: &dyn Filesystem) {
    let dir = scratch(fs, "rename_no_replace").await;
    let a = name(&dir, "a");
    let b = name(&dir, "b");
    let c = name(&dir, "c");
    write_file(fs, &a, b"A").await;
    write_file(fs, &b, b"B").await;
    let err = fs
        .rename(&a, &b, RenameMode::NoReplace)
        .await
        .must_fail("rename onto an existing file must fail");
    assert_status(&err, StatusCode::Failure, "rename no-replace onto existing");
    assert_eq!(read_all(fs, &a).await, b"A");
    assert_eq!(read_all(fs, &b).await, b"B");

    fs.rename(&a, &c, RenameMode::NoReplace)
        .await
        .expect("rename to a new name");
    assert_eq!(read_all(fs, &c).await, b"A");
    let err = fs.stat(&a).await.must_fail("old name is gone");
    assert_status(&err, StatusCode::NoSuchFile, "stat of the old name");

    let sub = name(&dir, "sub");
    let moved = name(&dir, "moved");
    fs.mkdir(&sub, &FileAttributes::new()).await.expect("mkdir");
    write_file(fs, &name(&sub, "inner"), b"I").await;
    fs.rename(&sub, &moved, RenameMode::NoReplace)
        .await
        .expect("rename a directory");
    assert_eq!(read_all(fs, &name(&moved, "inner")).await, b"I");

    let err = fs
        .rename(
            &name(&dir, "missing"),
            &name(&dir, "z"),
            RenameMode::NoReplace,
        )
        .await
        .must_fail("rename of a missing file must fail");
    assert_status(&err, StatusCode::NoSuchFile, "rename of a missing file");
}

/// `posix-rename@openssh.com` replaces an existing destination. Needs
/// [`Profile::posix_rename`].
pub async fn posix_rename_replaces(fs: &dyn Filesystem) {
    let dir = scratch(fs, "posix_rename_replaces").await;
    let a = name(&dir, "a");
    let b = name(&dir, "b");
    write_file(fs, &a, b"new").await;
    write_file(fs, &b, b"old").await;
    fs.rename(&a, &b, RenameMode::Replace)
        .await
        .expect("posix rename onto an existing file");
    assert_eq!(read_all(fs, &b).await, b"new");
    let err = fs.stat(&a).await.must_fail("source is gone");
    assert_status(&err, StatusCode::NoSuchFile, "stat of the renamed source");
    let c = name(&dir, "c");
    fs.rename(&b, &c, RenameMode::Replace)
        .await
        .expect("posix rename to a new name");
    assert_eq!(read_all(fs, &c).await, b"new");
}

/// OPENDIR of a directory with 260 files and a subdirectory lists every name exactly once
/// across several batches (`.` and `..` may come too), with attributes, then an empty
/// batch.
pub async fn readdir_many(fs: &dyn Filesystem) {
    const COUNT: usize = 260;
    let dir = scratch(fs, "readdir_many").await;
    let mut expected = BTreeSet::new();
    for i in 0..COUNT {
        let file_name = format!("file-{i:04}");
        write_file(fs, &name(&dir, &file_name), &vec![b'x'; i % 7]).await;
        expected.insert(file_name.into_bytes());
    }
    fs.mkdir(&name(&dir, "subdir"), &FileAttributes::new())
        .await
        .expect("mkdir");
    expected.insert(b"subdir".to_vec());

    let mut listing = fs.opendir(&dir).await.expect("opendir");
    let mut seen = BTreeSet::new();
    let mut batches = 0;
    loop {
        let batch = listing.next_batch().await.expect("next_batch");
        if batch.is_empty() {
            break;
        }
        batches += 1;
        assert!(batches <= COUNT + 3, "listing never ends");
        for entry in batch {
            let entry_name = entry.name.to_vec();
            if entry_name == b"." || entry_name == b".." {
                assert!(entry.attrs.is_dir(), "{:?} is a directory", entry.name);
                continue;
            }
            assert!(
                seen.insert(entry_name.clone()),
                "{:?} listed twice",
                entry.name
            );
            if entry_name == b"subdir" {
                assert!(entry.attrs.is_dir(), "subdir is a directory");
            } else {
                let i: usize = std::str::from_utf8(&entry_name[5..])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("unexpected entry {:?}", entry.name));
                assert_eq!(entry.attrs.size, Some((i % 7) as u64), "size of {i}");
                assert_eq!(entry.attrs.file_type(), Some(FileType::Regular));
            }
        }
    }
    assert!(batches > 1, "{COUNT} entries came in one batch");
    assert_eq!(seen, expected, "listed names");
    assert!(
        listing
            .next_batch()
            .await
            .expect("after the end")
            .is_empty(),
        "a finished listing stays finished"
    );

    // An empty directory lists nothing but perhaps `.` and `..`.
    let empty = name(&dir, "subdir");
    let mut listing = fs.opendir(&empty).await.expect("opendir empty");
    loop {
        let batch = listing.next_batch().await.expect("next_batch");
        if batch.is_empty() {
            break;
        }
        for entry in batch {
            assert!(
                entry.name == "." || entry.name == "..",
                "unexpected {:?}",
                entry.name
            );
        }
    }
}

/// SYMLINK stores its target as given (relative, absolute, dangling); READLINK returns it
/// byte for byte; READLINK of a file fails. Needs [`Profile::symlinks`].
pub async fn symlink_readlink(fs: &dyn Filesystem) {
    let dir = scratch(fs, "symlink_readlink").await;
    let targets: [&[u8]; 4] = [
        b"target",
        b"../symlink_readlink/target",
        b"/absolute/nowhere",
        b"odd name \xff",
    ];
    for (i, target) in targets.iter().enumerate() {
        let link = name(&dir, &format!("link{i}"));
        fs.symlink(target, &link).await.expect("symlink");
        let got = fs.readlink(&link).await.expect("readlink");
        assert_eq!(&got[..], *target, "stored target of link{i}");
    }
    let err = fs
        .symlink(b"other", &name(&dir, "link0"))
        .await
        .must_fail("symlink onto an existing name must fail");
    assert_status(&err, StatusCode::Failure, "symlink onto existing");

    let file = name(&dir, "plain");
    write_file(fs, &file, b"p").await;
    let err = fs
        .readlink(&file)
        .await
        .must_fail("readlink of a file must fail");
    assert_status(&err, StatusCode::Failure, "readlink of a file");
    let err = fs
        .readlink(&name(&dir, "missing"))
        .await
        .must_fail("readlink of nothing must fail");
    assert_status(&err, StatusCode::NoSuchFile, "readlink of a missing name");
}

/// STAT follows a symlink, LSTAT does not; OPEN and OPENDIR go through symlinks; a
/// dangling link stats as NO_SUCH_FILE but lstats fine. Needs [`Profile::symlinks`].
pub async fn stat_vs_lstat(fs: &dyn Filesystem) {
    let dir = scratch(fs, "stat_vs_lstat").await;
    let file = name(&dir, "file");
    write_file(fs, &file, b"12345").await;
    let link = name(&dir, "link");
    fs.symlink(b"file", &link).await.expect("symlink");

    let stat = fs.stat(&link).await.expect("stat link");
    assert_eq!(stat.file_type(), Some(FileType::Regular), "stat follows");
    assert_eq!(stat.size, Some(5));
    let lstat = fs.lstat(&link).await.expect("lstat link");
    assert_eq!(lstat.file_type(), Some(FileType::Symlink), "lstat does not");
    assert_eq!(read_all(fs, &link).await, b"12345", "open follows");

    let sub = name(&dir, "sub");
    fs.mkdir(&sub, &FileAttributes::new()).await.expect("mkdir");
    write_file(fs, &name(&sub, "inner"), b"in").await;
    let dir_link = name(&dir, "dirlink");
    fs.symlink(b"sub", &dir_link).await.expect("symlink to dir");
    assert!(fs.stat(&dir_link).await.expect("stat").is_dir());
    assert_eq!(read_all(fs, &name(&dir_link, "inner")).await, b"in");
    let mut listing = fs.opendir(&dir_link).await.expect("opendir via link");
    let mut names = Vec::new();
    loop {
        let batch = listing.next_batch().await.expect("next_batch");
        if batch.is_empty() {
            break;
        }
        names.extend(batch.into_iter().map(|e| e.name));
    }
    assert!(names.iter().any(|n| n == "inner"), "listing via link");

    let dangling = name(&dir, "dangling");
    fs.symlink(b"nothing-here", &dangling)
        .await
        .expect("dangling symlink");
    let err = fs.stat(&dangling).await.must_fail("stat of dangling");
    assert_status(&err, StatusCode::NoSuchFile, "stat of a dangling link");
    assert_eq!(
        fs.lstat(&dangling)
            .await
            .expect("lstat dangling")
            .file_type(),
        Some(FileType::Symlink)
    );

    // REMOVE of a link removes the link, not its target.
    fs.remove(&link).await.expect("remove link");
    assert_eq!(read_all(fs, &file).await, b"12345");
}

/// `hardlink@openssh.com`: both names show the same data; an existing destination fails.
/// Needs [`Profile::hardlinks`].
pub async fn hardlink(fs: &dyn Filesystem) {
    let dir = scratch(fs, "hardlink").await;
    let a = name(&dir, "a");
    let b = name(&dir, "b");
    write_file(fs, &a, b"shared").await;
    fs.hardlink(&a, &b).await.expect("hardlink");
    assert_eq!(read_all(fs, &b).await, b"shared");
    let file = fs
        .open(&b, OpenFlags::WRITE, &FileAttributes::new())
        .await
        .expect("open b");
    file.write(0, Bytes::from_static(b"S"))
        .await
        .expect("write");
    file.close().await.expect("close");
    assert_eq!(read_all(fs, &a).await, b"Shared", "same file");
    let err = fs
        .hardlink(&a, &b)
        .await
        .must_fail("hardlink onto existing");
    assert_status(&err, StatusCode::Failure, "hardlink onto an existing name");
    let err = fs
        .hardlink(&name(&dir, "missing"), &name(&dir, "c"))
        .await
        .must_fail("hardlink of a missing file");
    assert_status(&err, StatusCode::NoSuchFile, "hardlink of a missing file");
}

/// The statuses clients see for the common mistakes (OpenSSH's `errno_to_portable`).
pub async fn error_status_codes(fs: &dyn Filesystem) {
    let dir = scratch(fs, "error_status_codes").await;
    let missing = name(&dir, "missing");
    let deep = name(&missing, "child");
    let file = name(&dir, "file");
    write_file(fs, &file, b"f").await;

    let none = FileAttributes::new();
    let checks: Vec<(&str, Result<(), FsError>, StatusCode)> = vec![
        (
            "stat missing",
            fs.stat(&missing).await.map(drop),
            StatusCode::NoSuchFile,
        ),
        (
            "lstat missing",
            fs.lstat(&missing).await.map(drop),
            StatusCode::NoSuchFile,
        ),
        (
            "open missing",
            fs.open(&missing, OpenFlags::READ, &none).await.map(drop),
            StatusCode::NoSuchFile,
        ),
        (
            "create in missing dir",
            fs.open(&deep, OpenFlags::WRITE | OpenFlags::CREAT, &none)
                .await
                .map(drop),
            StatusCode::NoSuchFile,
        ),
        (
            "opendir missing",
            fs.opendir(&missing).await.map(drop),
            StatusCode::NoSuchFile,
        ),
        (
            "remove missing",
            fs.remove(&missing).await,
            StatusCode::NoSuchFile,
        ),
        (
            "rmdir missing",
            fs.rmdir(&missing).await,
            StatusCode::NoSuchFile,
        ),
        (
            "mkdir in missing dir",
            fs.mkdir(&deep, &none).await,
            StatusCode::NoSuchFile,
        ),
        (
            "setstat missing",
            fs.setstat(&missing, &none).await,
            StatusCode::NoSuchFile,
        ),
        (
            "mkdir over a file",
            fs.mkdir(&file, &none).await,
            StatusCode::Failure,
        ),
        (
            "opendir of a file",
            fs.opendir(&file).await.map(drop),
            StatusCode::Failure,
        ),
        (
            "stat below a file",
            fs.stat(&name(&file, "x")).await.map(drop),
            StatusCode::Failure,
        ),
    ];
    for (what, result, code) in checks {
        match result {
            Ok(()) => panic!("{what}: succeeded, expected {code:?}"),
            Err(err) => assert_status(&err, code, what),
        }
    }
}

/// OPEN of a directory does not give a file handle: it fails with FAILURE.
pub async fn open_directory_fails(fs: &dyn Filesystem) {
    let dir = scratch(fs, "open_directory_fails").await;
    for flags in [
        OpenFlags::READ,
        OpenFlags::WRITE,
        OpenFlags::READ | OpenFlags::WRITE | OpenFlags::CREAT,
    ] {
        let err = fs
            .open(&dir, flags, &FileAttributes::new())
            .await
            .err()
            .unwrap_or_else(|| panic!("open of a directory with {flags:?} succeeded"));
        assert_status(&err, StatusCode::Failure, "open of a directory");
    }
    let err = fs
        .open(&VPath::root(), OpenFlags::READ, &FileAttributes::new())
        .await
        .must_fail("open of the root succeeded");
    assert_status(&err, StatusCode::Failure, "open of the root");
}

/// REALPATH of the root and of existing paths is the path itself; of a missing last
/// component, the parent's canonical path plus the name. With
/// [`Profile::resolving_realpath`] (and symlinks), links are resolved and a missing parent
/// is NO_SUCH_FILE.
pub async fn realpath(fs: &dyn Filesystem, profile: &Profile) {
    let dir = scratch(fs, "realpath").await;
    let root = VPath::root();
    assert_eq!(fs.realpath(&root).await.expect("realpath /"), root);
    assert_eq!(fs.realpath(&dir).await.expect("realpath dir"), dir);
    let missing = name(&dir, "missing");
    assert_eq!(
        fs.realpath(&missing).await.expect("realpath of a new name"),
        missing
    );
    if !profile.resolving_realpath {
        return;
    }
    let err = fs
        .realpath(&name(&missing, "deeper"))
        .await
        .must_fail("realpath with a missing parent must fail");
    assert_status(&err, StatusCode::NoSuchFile, "realpath, missing parent");
    if profile.symlinks {
        let sub = name(&dir, "sub");
        fs.mkdir(&sub, &FileAttributes::new()).await.expect("mkdir");
        let link = name(&dir, "link");
        fs.symlink(b"sub", &link).await.expect("symlink");
        assert_eq!(fs.realpath(&link).await.expect("realpath link"), sub);
        assert_eq!(
            fs.realpath(&name(&link, "new"))
                .await
                .expect("new below link"),
            name(&sub, "new")
        );
        let up = name(&dir, "up");
        fs.symlink(b"../..", &up).await.expect("symlink ../..");
        assert_eq!(
            fs.realpath(&up).await.expect("realpath of ../.."),
            root,
            "`..` stops at the root"
        );
    }
}

/// Permissions, times and owner set with SETSTAT (by path and by handle) come back from
/// STAT. Needs [`Profile::set_attributes`].
pub async fn set_attributes(fs: &dyn Filesystem) {
    let dir = scratch(fs, "set_attributes").await;
    let path = name(&dir, "f");
    write_file(fs, &path, b"data").await;

    let perms = FileAttributes {
        permissions: Some(0o640),
        ..FileAttributes::new()
    };
    fs.setstat(&path, &perms)
        .await
        .expect("setstat permissions");
    let got = fs.stat(&path).await.expect("stat");
    assert_eq!(got.permissions.map(|p| p & 0o7777), Some(0o640));
    assert_eq!(got.file_type(), Some(FileType::Regular), "type bits kept");

    let times = Times {
        atime: 1_000_000_000,
        mtime: 1_100_000_000,
    };
    fs.setstat(
        &path,
        &FileAttributes {
            times: Some(times),
            ..FileAttributes::new()
        },
    )
    .await
    .expect("setstat times");
    assert_eq!(fs.stat(&path).await.expect("stat").times, Some(times));

    // Setting the owner it already has works for any user.
    let owner = got.owner.expect("stat reports the owner");
    fs.setstat(
        &path,
        &FileAttributes {
            owner: Some(owner),
            ..FileAttributes::new()
        },
    )
    .await
    .expect("setstat owner");
    assert_eq!(fs.stat(&path).await.expect("stat").owner, Some(owner));

    // All at once by handle.
    let file = fs
        .open(
            &path,
            OpenFlags::READ | OpenFlags::WRITE,
            &FileAttributes::new(),
        )
        .await
        .expect("open");
    let later = Times {
        atime: 1_200_000_000,
        mtime: 1_300_000_000,
    };
    file.setstat(&FileAttributes {
        size: Some(2),
        owner: Some(owner),
        permissions: Some(0o600),
        times: Some(later),
        extended: Vec::new(),
    })
    .await
    .expect("fsetstat");
    let got = file.stat().await.expect("fstat");
    file.close().await.expect("close");
    assert_eq!(got.size, Some(2));
    assert_eq!(got.permissions.map(|p| p & 0o7777), Some(0o600));
    assert_eq!(got.times, Some(later));
    assert_eq!(got.owner, Some(owner));

    // A directory too.
    let sub = name(&dir, "sub");
    fs.mkdir(&sub, &FileAttributes::new()).await.expect("mkdir");
    fs.setstat(
        &sub,
        &FileAttributes {
            permissions: Some(0o750),
            times: Some(times),
            ..FileAttributes::new()
        },
    )
    .await
    .expect("setstat dir");
    let got = fs.stat(&sub).await.expect("stat dir");
    assert_eq!(got.permissions.map(|p| p & 0o7777), Some(0o750));
    assert_eq!(got.times, Some(times));
    assert!(got.is_dir());
}

/// Permissions given at OPEN with CREAT and at MKDIR are used (bits a umask of 022 keeps).
/// Needs [`Profile::set_attributes`].
pub async fn create_mode(fs: &dyn Filesystem) {
    let dir = scratch(fs, "create_mode").await;
    let path = name(&dir, "private");
    let attrs = FileAttributes {
        permissions: Some(0o600),
        ..FileAttributes::new()
    };
    let file = fs
        .open(&path, OpenFlags::WRITE | OpenFlags::CREAT, &attrs)
        .await
        .expect("create with mode");
    file.close().await.expect("close");
    let got = fs.stat(&path).await.expect("stat");
    assert_eq!(got.permissions.map(|p| p & 0o7777), Some(0o600));
    let sub = name(&dir, "sub");
    fs.mkdir(
        &sub,
        &FileAttributes {
            permissions: Some(0o700),
            ..FileAttributes::new()
        },
    )
    .await
    .expect("mkdir with mode");
    let got = fs.stat(&sub).await.expect("stat");
    assert_eq!(got.permissions.map(|p| p & 0o7777), Some(0o700));
}

/// Sixteen writes at different offsets of one handle run at once, then sixteen reads; the
/// file holds every block in its place. Needs [`Profile::random_writes`].
pub async fn concurrent_handle_io(fs: &dyn Filesystem) {
    const BLOCKS: usize = 16;
    const BLOCK: usize = 8192;
    let dir = scratch(fs, "concurrent_handle_io").await;
    let path = name(&dir, "c");
    let file = fs
        .open(
            &path,
            OpenFlags::READ | OpenFlags::WRITE | OpenFlags::CREAT | OpenFlags::TRUNC,
            &FileAttributes::new(),
        )
        .await
        .expect("open");
    let file: &dyn File = &*file;
    // Highest offsets first, so the writes do not happen to arrive in order.
    let writes = (0..BLOCKS)
        .rev()
        .map(|i| file.write((i * BLOCK) as u64, Bytes::from(pattern(BLOCK, i as u8))));
    for result in join_all(writes.collect()).await {
        result.expect("concurrent write");
    }
    let reads = (0..BLOCKS).map(|i| async move {
        let mut buf = BytesMut::with_capacity(BLOCK);
        let mut offset = (i * BLOCK) as u64;
        while buf.len() < BLOCK {
            let want = (BLOCK - buf.len()) as u32;
            let n = file.read(offset, want, &mut buf).await?;
            offset += n as u64;
        }
        Ok::<_, FsError>((i, buf))
    });
    for result in join_all(reads.collect()).await {
        let (i, buf) = result.expect("concurrent read");
        assert!(buf[..] == pattern(BLOCK, i as u8)[..], "block {i} content");
    }
    assert_eq!(
        file.stat().await.expect("fstat").size,
        Some((BLOCKS * BLOCK) as u64)
    );
    file.close().await.expect("close");
}

// ---- helpers ----

/// `expect_err` for results whose success type is not `Debug` (file handles).
trait MustFail {
    fn must_fail(self, what: &str) -> FsError;
}

impl<T> MustFail for Result<T, FsError> {
    fn must_fail(self, what: &str) -> FsError {
        match self {
            Ok(_) => panic!("{what}: succeeded"),
            Err(err) => err,
        }
    }
}

/// Creates `/<check>`, the check's own directory.
async fn scratch(fs: &dyn Filesystem, check: &str) -> VPath {
    let dir = name(&VPath::root(), check);
    fs.mkdir(&dir, &FileAttributes::new())
        .await
        .unwrap_or_else(|e| panic!("mkdir /{check}: {e:?} (is the root empty?)"));
    dir
}

fn name(dir: &VPath, file_name: &str) -> VPath {
    dir.join_name(file_name.as_bytes())
        .expect("test names are single components")
}

fn size_attrs(size: u64) -> FileAttributes {
    FileAttributes {
        size: Some(size),
        ..FileAttributes::new()
    }
}

/// `len` bytes that differ per `seed`, so misplaced blocks show.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn assert_status(err: &FsError, expected: StatusCode, what: &str) {
    assert_eq!(
        StatusCode::from(err),
        expected,
        "{what}: got {err:?} ({err})"
    );
}

async fn create(fs: &dyn Filesystem, path: &VPath) -> Box<dyn File> {
    fs.open(
        path,
        OpenFlags::WRITE | OpenFlags::CREAT | OpenFlags::TRUNC,
        &FileAttributes::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("create {path}: {e:?}"))
}

async fn open_read(fs: &dyn Filesystem, path: &VPath) -> Box<dyn File> {
    fs.open(path, OpenFlags::READ, &FileAttributes::new())
        .await
        .unwrap_or_else(|e| panic!("open {path} for reading: {e:?}"))
}

async fn write_file(fs: &dyn Filesystem, path: &VPath, data: &[u8]) {
    let file = create(fs, path).await;
    if !data.is_empty() {
        file.write(0, Bytes::copy_from_slice(data))
            .await
            .unwrap_or_else(|e| panic!("write {path}: {e:?}"));
    }
    file.close()
        .await
        .unwrap_or_else(|e| panic!("close {path}: {e:?}"));
}

async fn read_all(fs: &dyn Filesystem, path: &VPath) -> Vec<u8> {
    let file = open_read(fs, path).await;
    let mut buf = BytesMut::new();
    loop {
        let before = buf.len();
        match file.read(before as u64, 32 * 1024, &mut buf).await {
            Ok(n) => assert_eq!(buf.len(), before + n, "read's count matches"),
            Err(FsError::Eof) => break,
            Err(e) => panic!("read {path}: {e:?}"),
        }
    }
    file.close()
        .await
        .unwrap_or_else(|e| panic!("close {path}: {e:?}"));
    buf.to_vec()
}

/// Polls all futures at once until every one is done; outputs in input order. (A tiny
/// `join_all`, so the suite needs no runtime or futures crate.)
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pending: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all_done = true;
        for (future, output) in pending.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => all_done = false,
                }
            }
        }
        if all_done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}
