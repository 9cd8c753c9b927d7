//! Golden vectors: packets captured from OpenSSH 9.2's `sftp` talking to its `sftp-server`
//! (see `tests/golden/README.md`). Each decodes to the expected typed value and re-encodes
//! to exactly the captured bytes.

use bytes::{Bytes, BytesMut};
use sftpgate_proto::extensions::names;
use sftpgate_proto::{
    longname, Decoder, ExtendedRequest, FileAttributes, LimitsReply, LongnameInfo, OpenFlags,
    Owner, Request, Response, StatusCode, StatvfsReply, Times, UsersGroupsReply,
};

const WORK: &str = "/tmp/sftpgate-golden/work";
const HELLO: &[u8] = b"hello, sftpgate\n";

#[test]
fn init() {
    let request = request(include_bytes!("golden/c2s-init.bin"));
    assert_eq!(
        request,
        Request::Init {
            version: 3,
            extensions: vec![]
        }
    );
}

#[test]
fn version_lists_openssh_extensions() {
    let Response::Version {
        version,
        extensions,
    } = response(include_bytes!("golden/s2c-version.bin"))
    else {
        panic!("not VERSION");
    };
    assert_eq!(version, 3);
    let listed: Vec<(&str, &[u8])> = extensions
        .iter()
        .map(|(name, data)| (name.as_str(), &data[..]))
        .collect();
    assert_eq!(
        listed,
        [
            (names::POSIX_RENAME, &b"1"[..]),
            (names::STATVFS, b"2"),
            (names::FSTATVFS, b"2"),
            (names::HARDLINK, b"1"),
            (names::FSYNC, b"1"),
            (names::LSETSTAT, b"1"),
            (names::LIMITS, b"1"),
            (names::EXPAND_PATH, b"1"),
            (names::COPY_DATA, b"1"),
            (names::HOME_DIRECTORY, b"1"),
            (names::USERS_GROUPS_BY_ID, b"1"),
        ]
    );
}

#[test]
fn limits() {
    let request = request(include_bytes!("golden/c2s-limits.bin"));
    assert_eq!(
        request,
        Request::Extended {
            id: 1,
            request: ExtendedRequest::Limits
        }
    );
    assert!(!request.mutates());

    let reply = extended_reply(include_bytes!("golden/s2c-limits-reply.bin"), 1);
    let limits = LimitsReply::decode(reply.clone()).expect("limits reply");
    assert_eq!(limits.max_packet_len, 256 * 1024);
    assert_eq!(limits.max_read_len, 256 * 1024 - 1024);
    assert_eq!(limits.max_write_len, 256 * 1024 - 1024);
    assert!(limits.max_open_handles > 0);
    assert_eq!(reencoded(|out| limits.encode(out)), reply);
}

#[test]
fn realpath_and_its_name_reply() {
    let request = request(include_bytes!("golden/c2s-realpath.bin"));
    assert_eq!(
        request,
        Request::Realpath {
            id: 2,
            path: ".".into()
        }
    );

    let Response::Name { id, entries } = response(include_bytes!("golden/s2c-realpath-name.bin"))
    else {
        panic!("not NAME");
    };
    assert_eq!(id, 2);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].filename, WORK.as_bytes());
    // OpenSSH repeats the path as the longname and sends no attributes.
    assert_eq!(entries[0].longname, WORK.as_bytes());
    assert_eq!(entries[0].attrs, FileAttributes::new());
}

#[test]
fn readdir_name_reply() {
    let Response::Name { entries, .. } = response(include_bytes!("golden/s2c-readdir-name.bin"))
    else {
        panic!("not NAME");
    };
    let names: Vec<&[u8]> = entries.iter().map(|e| &e.filename[..]).collect();
    assert_eq!(names, [&b"local.txt"[..], b".", b".."]);
    let file = &entries[0];
    assert_eq!(file.attrs.size, Some(HELLO.len() as u64));
    assert_eq!(file.attrs.permissions, Some(0o100644));
    assert_eq!(file.attrs.owner, Some(Owner { uid: 0, gid: 0 }));
    assert!(entries[1].attrs.is_dir());
}

#[test]
fn longname_matches_openssh() {
    // sftp-server formats these with `ls_file()` in the capturing machine's time zone, UTC.
    let Response::Name { entries, .. } = response(include_bytes!("golden/s2c-readdir-name.bin"))
    else {
        panic!("not NAME");
    };
    let nlinks = [1, 2, 3]; // local.txt, `.` (no subdirectories), `..` (holds `work`)
    for (entry, nlink) in entries.iter().zip(nlinks) {
        let mtime = entry.attrs.times.expect("times").mtime;
        let info = LongnameInfo {
            user: Some("root"),
            group: Some("root"),
            nlink,
            now: mtime.into(),
        };
        assert_eq!(
            String::from_utf8_lossy(&longname(&entry.filename, &entry.attrs, &info)),
            String::from_utf8_lossy(&entry.longname),
        );
    }
}

#[test]
fn users_groups_by_id() {
    let request = request(include_bytes!("golden/c2s-users-groups-by-id.bin"));
    assert_eq!(
        request,
        Request::Extended {
            id: 7,
            request: ExtendedRequest::UsersGroupsById {
                uids: vec![0],
                gids: vec![0]
            },
        }
    );
    let reply = extended_reply(include_bytes!("golden/s2c-users-groups-reply.bin"), 7);
    let names = UsersGroupsReply::decode(reply.clone()).expect("users-groups reply");
    assert_eq!(names.usernames, [Bytes::from("root")]);
    assert_eq!(names.groupnames, [Bytes::from("root")]);
    assert_eq!(reencoded(|out| names.encode(out)), reply);
}

#[test]
fn open_for_writing() {
    let request = request(include_bytes!("golden/c2s-open-write.bin"));
    assert_eq!(
        request,
        Request::Open {
            id: 9,
            filename: format!("{WORK}/upload.txt").into(),
            pflags: OpenFlags::WRITE | OpenFlags::CREAT | OpenFlags::TRUNC,
            attrs: FileAttributes {
                permissions: Some(0o644),
                ..FileAttributes::new()
            },
        }
    );
    assert!(request.mutates());

    let handle = response(include_bytes!("golden/s2c-handle.bin"));
    assert_eq!(
        handle,
        Response::Handle {
            id: 9,
            handle: Bytes::from_static(&[0, 0, 0, 0])
        }
    );
}

#[test]
fn write() {
    let request = request(include_bytes!("golden/c2s-write.bin"));
    assert_eq!(
        request,
        Request::Write {
            id: 11,
            handle: Bytes::from_static(&[0, 0, 0, 0]),
            offset: 0,
            data: Bytes::from_static(HELLO).into(),
        }
    );
}

#[test]
fn status_ok() {
    let status = response(include_bytes!("golden/s2c-status-ok.bin"));
    assert_eq!(status, Response::status(6, StatusCode::Ok));
    assert_eq!(
        status,
        Response::Status {
            id: 6,
            code: StatusCode::Ok,
            message: "Success".into(),
            language: "".into()
        }
    );
}

#[test]
fn read_reply_data() {
    let data = response(include_bytes!("golden/s2c-data.bin"));
    assert_eq!(
        data,
        Response::Data {
            id: 14,
            data: Bytes::from_static(HELLO)
        }
    );
}

#[test]
fn status_eof() {
    let status = response(include_bytes!("golden/s2c-status-eof.bin"));
    assert_eq!(status, Response::status(5, StatusCode::Eof));
}

#[test]
fn attrs_reply() {
    let Response::Attrs { id, attrs } = response(include_bytes!("golden/s2c-attrs.bin")) else {
        panic!("not ATTRS");
    };
    assert_eq!(id, 11);
    assert_eq!(attrs.size, Some(HELLO.len() as u64));
    assert_eq!(attrs.owner, Some(Owner { uid: 0, gid: 0 }));
    assert_eq!(attrs.permissions, Some(0o100644));
    let Some(Times { atime, mtime }) = attrs.times else {
        panic!("no times");
    };
    assert!(atime > 0 && mtime > 0);
    assert!(attrs.extended.is_empty());
}

#[test]
fn posix_rename() {
    let request = request(include_bytes!("golden/c2s-posix-rename.bin"));
    assert_eq!(
        request,
        Request::Extended {
            id: 17,
            request: ExtendedRequest::PosixRename {
                oldpath: format!("{WORK}/upload.txt").into(),
                newpath: format!("{WORK}/renamed.txt").into(),
            },
        }
    );
}

#[test]
fn mkdir() {
    let request = request(include_bytes!("golden/c2s-mkdir.bin"));
    assert_eq!(
        request,
        Request::Mkdir {
            id: 18,
            path: format!("{WORK}/newdir").into(),
            attrs: FileAttributes {
                permissions: Some(0o777),
                ..FileAttributes::new()
            },
        }
    );
}

#[test]
fn symlink_is_target_then_link_on_the_wire() {
    let bytes = include_bytes!("golden/c2s-symlink.bin");
    // `ln -s renamed.txt link.txt`: OpenSSH sends the target as typed, the link made absolute.
    assert_eq!(
        request(bytes),
        Request::Symlink {
            id: 20,
            linkpath: format!("{WORK}/link.txt").into(),
            targetpath: "renamed.txt".into(),
        }
    );
    assert_eq!(&bytes[9..13], &[0, 0, 0, 11]);
    assert_eq!(&bytes[13..24], b"renamed.txt");
}

#[test]
fn statvfs() {
    let request = request(include_bytes!("golden/c2s-statvfs.bin"));
    assert_eq!(
        request,
        Request::Extended {
            id: 26,
            request: ExtendedRequest::Statvfs { path: WORK.into() }
        }
    );
    let reply = extended_reply(include_bytes!("golden/s2c-statvfs-reply.bin"), 26);
    let statvfs = StatvfsReply::decode(reply.clone()).expect("statvfs reply");
    assert_eq!(statvfs.bsize, 4096);
    assert_eq!(statvfs.namemax, 255);
    assert!(statvfs.blocks >= statvfs.bfree && statvfs.bfree >= statvfs.bavail);
    assert_eq!(reencoded(|out| statvfs.encode(out)), reply);
}

/// The whole client-to-server stream, fed in odd-sized chunks: every packet decodes and the
/// re-encoded stream is byte-identical.
#[test]
fn whole_client_session() {
    let stream = include_bytes!("golden/c2s-session.bin");
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    let mut count = 0;
    for chunk in stream.chunks(7) {
        buf.extend_from_slice(chunk);
        while let Some(request) = decoder.decode_request(&mut buf).expect("valid request") {
            request.encode(&mut out);
            count += 1;
        }
    }
    assert!(buf.is_empty());
    assert!(count > 20, "{count} packets");
    assert_eq!(&out[..], &stream[..]);
}

/// The same for the server-to-client stream.
#[test]
fn whole_server_session() {
    let stream = include_bytes!("golden/s2c-session.bin");
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    let mut count = 0;
    for chunk in stream.chunks(5) {
        buf.extend_from_slice(chunk);
        while let Some(response) = decoder.decode_response(&mut buf).expect("valid response") {
            response.encode(&mut out);
            count += 1;
        }
    }
    assert!(buf.is_empty());
    assert!(count > 20, "{count} packets");
    assert_eq!(&out[..], &stream[..]);
}

// ---- helpers ------------------------------------------------------------------------------

/// Decodes one whole request and checks that it re-encodes to exactly `bytes`.
fn request(bytes: &[u8]) -> Request {
    let mut buf = BytesMut::from(bytes);
    let request = Decoder::new()
        .decode_request(&mut buf)
        .expect("valid request")
        .expect("a whole packet");
    assert!(buf.is_empty(), "a golden file holds one whole packet");
    assert_eq!(
        &reencoded(|out| request.encode(out))[..],
        bytes,
        "re-encoding {request:?}"
    );
    request
}

/// Decodes one whole response and checks that it re-encodes to exactly `bytes`.
fn response(bytes: &[u8]) -> Response {
    let mut buf = BytesMut::from(bytes);
    let response = Decoder::new()
        .decode_response(&mut buf)
        .expect("valid response")
        .expect("a whole packet");
    assert!(buf.is_empty(), "a golden file holds one whole packet");
    assert_eq!(
        &reencoded(|out| response.encode(out))[..],
        bytes,
        "re-encoding {response:?}"
    );
    response
}

/// The payload of an EXTENDED_REPLY answering `expected_id`.
fn extended_reply(bytes: &[u8], expected_id: u32) -> Bytes {
    match response(bytes) {
        Response::ExtendedReply { id, data } => {
            assert_eq!(id, expected_id);
            data
        }
        other => panic!("not EXTENDED_REPLY: {other:?}"),
    }
}

fn reencoded(encode: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut out = BytesMut::new();
    encode(&mut out);
    out.freeze()
}
