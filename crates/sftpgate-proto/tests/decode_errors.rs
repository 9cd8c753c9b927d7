//! How the decoder handles bad and unusual input: one `check` helper, many short tests.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::{BufMut, Bytes, BytesMut};
use sftpgate_proto::{
    AttrFlags, DecodeError, Decoder, ExtendedRequest, FileAttributes, Malformed, OpenFlags,
    Request, Response, StatusCode, DEFAULT_MAX_PACKET,
};

// ---- framing ------------------------------------------------------------------------------

#[test]
fn too_large_is_fatal_and_allocates_nothing() {
    let mut buf = BytesMut::with_capacity(4);
    buf.put_u32(0xFFFF_FFFF);
    let (result, largest) = largest_allocation(|| Decoder::new().decode_request(&mut buf));
    assert_eq!(
        result,
        Err(DecodeError::TooLarge {
            len: u32::MAX,
            max: DEFAULT_MAX_PACKET
        })
    );
    assert!(result.unwrap_err().is_fatal());
    assert_eq!(largest, 0, "an allocation was made for a refused packet");
    assert!(buf.capacity() < 64, "capacity grew to {}", buf.capacity());
    assert_eq!(&buf[..], &[0xFF; 4], "the buffer was changed");
}

#[test]
fn too_large_by_one() {
    let mut buf = BytesMut::new();
    buf.put_u32(DEFAULT_MAX_PACKET + 1);
    assert_eq!(
        Decoder::new().decode_response(&mut buf),
        Err(DecodeError::TooLarge {
            len: DEFAULT_MAX_PACKET + 1,
            max: DEFAULT_MAX_PACKET
        })
    );
}

#[test]
fn custom_limit_is_the_largest_accepted_length() {
    let mut decoder = Decoder::with_max_packet(13);
    let mut buf = wire(|out| {
        Request::Stat {
            id: 1,
            path: "abcd".into(),
        }
        .encode(out)
    });
    assert_eq!(buf.len(), 4 + 13);
    assert!(decoder.decode_request(&mut buf).is_ok());
    let mut buf = wire(|out| {
        Request::Stat {
            id: 1,
            path: "abcde".into(),
        }
        .encode(out)
    });
    assert_eq!(
        decoder.decode_request(&mut buf),
        Err(DecodeError::TooLarge { len: 14, max: 13 })
    );
}

#[test]
fn partial_packet_within_limit_waits_and_reserves() {
    let mut buf = BytesMut::new();
    buf.put_u32(1000);
    buf.put_u8(17);
    assert_eq!(Decoder::new().decode_request(&mut buf), Ok(None));
    assert_eq!(buf.len(), 5, "nothing consumed");
    assert!(buf.capacity() >= 1004, "room for the frame was reserved");
}

#[test]
fn fewer_than_four_bytes_wait() {
    for len in 0..4 {
        let mut buf = BytesMut::from(&[0xFF, 0xFF, 0xFF][..len]);
        assert_eq!(Decoder::new().decode_request(&mut buf), Ok(None));
        assert_eq!(buf.len(), len);
    }
}

#[test]
fn empty_frame() {
    check(&[0, 0, 0, 0], Err(DecodeError::Empty));
    check_response(&[0, 0, 0, 0], Err(DecodeError::Empty));
    assert_eq!(DecodeError::Empty.request_id(), None);
    assert!(!DecodeError::Empty.is_fatal());
}

#[test]
fn decoding_continues_after_errors() {
    let mut buf = BytesMut::from(&[0, 0, 0, 0][..]); // empty frame
    buf.extend_from_slice(&frame(99, &[0, 0, 0, 1])); // unknown type
    buf.extend_from_slice(&frame(17, &[0, 0, 0, 2, 0, 0, 0, 9])); // STAT, path past the end
    Request::Stat {
        id: 3,
        path: "/".into(),
    }
    .encode(&mut buf);
    let mut decoder = Decoder::new();
    let mut results = Vec::new();
    while !buf.is_empty() {
        results.push(decoder.decode_request(&mut buf));
    }
    assert_eq!(
        results
            .iter()
            .map(|r| r.as_ref().map_err(|e| e.request_id()))
            .collect::<Vec<_>>(),
        [
            Err(None),
            Err(Some(1)),
            Err(Some(2)),
            Ok(&Some(Request::Stat {
                id: 3,
                path: "/".into()
            }))
        ]
    );
}

#[test]
fn trailing_bytes_after_a_packet_are_ignored() {
    let mut body = vec![0, 0, 0, 7, 0, 0, 0, 1, b'/'];
    body.extend_from_slice(b"future fields");
    check(
        &frame(17, &body),
        Ok(Request::Stat {
            id: 7,
            path: "/".into(),
        }),
    );
}

#[test]
fn trailing_bytes_do_not_leak_into_the_next_packet() {
    let mut buf = frame(17, &[0, 0, 0, 7, 0, 0, 0, 1, b'/', 0xAA, 0xBB]);
    Request::Close {
        id: 8,
        handle: "h".into(),
    }
    .encode(&mut buf);
    let mut decoder = Decoder::new();
    assert_eq!(
        decoder.decode_request(&mut buf),
        Ok(Some(Request::Stat {
            id: 7,
            path: "/".into()
        }))
    );
    assert_eq!(
        decoder.decode_request(&mut buf),
        Ok(Some(Request::Close {
            id: 8,
            handle: "h".into()
        }))
    );
    assert!(buf.is_empty());
}

// ---- unknown and truncated packets --------------------------------------------------------

#[test]
fn unknown_request_type_with_id() {
    check(&frame(99, &[0, 0, 0, 42]), unknown(99, Some(42)));
}

#[test]
fn unknown_request_type_without_id() {
    check(&frame(99, &[0, 0]), unknown(99, None));
}

#[test]
fn response_types_are_unknown_requests() {
    check(
        &frame(101, &[0, 0, 0, 5, 0, 0, 0, 0]),
        unknown(101, Some(5)),
    );
    check(&frame(2, &[0, 0, 0, 3]), unknown(2, Some(3)));
}

#[test]
fn request_types_are_unknown_responses() {
    check_response(&frame(17, &[0, 0, 0, 5, 0, 0, 0, 0]), unknown(17, Some(5)));
    check_response(&frame(1, &[0, 0, 0, 3]), unknown(1, Some(3)));
}

#[test]
fn truncated_id() {
    check(&frame(17, &[0, 0, 1]), malformed(17, None, truncated("id")));
}

#[test]
fn truncated_init_has_no_id() {
    check(&frame(1, &[0, 0]), malformed(1, None, truncated("version")));
}

#[test]
fn truncated_version_has_no_id() {
    check_response(
        &frame(2, &[0, 0, 0, 3, 0, 0]),
        malformed(2, None, truncated("extension-name")),
    );
}

#[test]
fn truncated_read() {
    let mut body = id_and(9, &[0, 0, 0, 1, b'h']);
    body.extend_from_slice(&[0; 8]); // offset, then no length
    check(&frame(5, &body), malformed(5, Some(9), truncated("len")));
}

#[test]
fn truncated_requests_carry_their_id() {
    // Every request kind, cut at every point after its id: the error names the id.
    for request in every_request(0x0102_0304) {
        let full = wire(|out| request.encode(out));
        for body_len in 5..full.len() - 4 {
            let cut = frame(full[4], &full[5..4 + body_len]);
            let result = Decoder::new().decode_request(&mut BytesMut::from(&cut[..]));
            match (&request, result) {
                // These end in a field that swallows the rest: cuts past the name decode.
                (
                    Request::Extended {
                        request: ExtendedRequest::Unknown { name, .. },
                        ..
                    },
                    Ok(Some(_)),
                ) if body_len >= 1 + 4 + 4 + name.len() => {}
                (_, Err(err)) => assert_eq!(
                    err.request_id(),
                    Some(0x0102_0304),
                    "{} cut to {body_len}: {err:?}",
                    request.name()
                ),
                (_, other) => panic!("{} cut to {body_len}: {other:?}", request.name()),
            }
        }
    }
}

#[test]
fn truncated_responses_carry_their_id() {
    for response in every_response(0x0A0B_0C0D) {
        let full = wire(|out| response.encode(out));
        for body_len in 5..full.len() - 4 {
            let cut = frame(full[4], &full[5..4 + body_len]);
            let result = Decoder::new().decode_response(&mut BytesMut::from(&cut[..]));
            match (&response, result) {
                (Response::ExtendedReply { .. }, Ok(Some(_))) => {}
                // A STATUS cut right after its code is the message-less v3 form, and one cut
                // right after its message lacks only the optional language tag.
                (Response::Status { message, .. }, Ok(Some(_)))
                    if body_len == 9 || body_len == 9 + 4 + message.len() => {}
                (_, Err(err)) => assert_eq!(err.request_id(), Some(0x0A0B_0C0D), "{err:?}"),
                (_, other) => panic!("{response:?} cut to {body_len}: {other:?}"),
            }
        }
    }
}

// ---- strings and counts -------------------------------------------------------------------

#[test]
fn string_length_past_end() {
    check(
        &frame(17, &id_and(4, &[0, 0, 0, 100, b'a', b'b', b'c'])),
        malformed(17, Some(4), string_too_long("path", 100, 3)),
    );
}

#[test]
fn string_length_u32_max() {
    check(
        &frame(4, &id_and(4, &[0xFF, 0xFF, 0xFF, 0xFF])),
        malformed(4, Some(4), string_too_long("handle", u32::MAX as usize, 0)),
    );
}

#[test]
fn attrs_extended_count_too_large() {
    let mut body = id_and(6, &[0, 0, 0, 1, b'p']);
    body.put_u32(AttrFlags::EXTENDED.bits());
    body.put_u32(0xFFFF_FFFF);
    body.extend_from_slice(&[0; 16]); // room for two empty pairs, no more
    let mut buf = BytesMut::from(&frame(9, &body)[..]);
    let (result, largest) = largest_allocation(|| Decoder::new().decode_request(&mut buf));
    assert_eq!(
        result,
        malformed(
            9,
            Some(6),
            Malformed::CountTooLarge {
                field: "attrs.extended_count",
                count: u32::MAX
            }
        )
        .map(Some)
    );
    assert!(largest < 1024, "allocated {largest} bytes");
}

#[test]
fn attrs_extended_count_that_fits_is_read() {
    let mut body = id_and(6, &[0, 0, 0, 1, b'p']);
    body.put_u32(AttrFlags::EXTENDED.bits());
    body.put_u32(2);
    body.extend_from_slice(&[0; 16]);
    let attrs = FileAttributes {
        extended: vec![(Bytes::new(), Bytes::new()), (Bytes::new(), Bytes::new())],
        ..FileAttributes::new()
    };
    check(
        &frame(9, &body),
        Ok(Request::Setstat {
            id: 6,
            path: "p".into(),
            attrs,
        }),
    );
}

#[test]
fn attrs_unknown_flag_bits_are_ignored() {
    let mut body = id_and(6, &[0, 0, 0, 1, b'p']);
    body.put_u32(0x7000_0000 | AttrFlags::PERMISSIONS.bits());
    body.put_u32(0o644);
    let attrs = FileAttributes {
        permissions: Some(0o644),
        ..FileAttributes::new()
    };
    check(
        &frame(14, &body),
        Ok(Request::Mkdir {
            id: 6,
            path: "p".into(),
            attrs,
        }),
    );
}

#[test]
fn name_count_too_large() {
    let mut body = id_and(3, &[]);
    body.put_u32(0xFFFF_FFFF);
    body.extend_from_slice(&[0; 24]); // two minimal entries' worth
    let mut buf = BytesMut::from(&frame(104, &body)[..]);
    let (result, largest) = largest_allocation(|| Decoder::new().decode_response(&mut buf));
    assert_eq!(
        result,
        malformed(
            104,
            Some(3),
            Malformed::CountTooLarge {
                field: "count",
                count: u32::MAX
            }
        )
        .map(Some)
    );
    assert!(largest < 1024, "allocated {largest} bytes");
}

#[test]
fn users_groups_id_list_not_a_multiple_of_four() {
    let mut body = id_and(5, &[]);
    body.put_u32(30);
    body.extend_from_slice(b"users-groups-by-id@openssh.com");
    body.extend_from_slice(&[0, 0, 0, 3, 0, 0, 0]);
    body.put_u32(0);
    check(
        &frame(200, &body),
        malformed(200, Some(5), truncated("uids")),
    );
}

#[test]
fn unknown_extension_keeps_its_payload() {
    let mut body = id_and(5, &[0, 0, 0, 3, b'x', b'@', b'y']);
    body.extend_from_slice(b"opaque");
    check(
        &frame(200, &body),
        Ok(Request::Extended {
            id: 5,
            request: ExtendedRequest::Unknown {
                name: "x@y".into(),
                data: "opaque".into(),
            },
        }),
    );
}

#[test]
fn known_extension_ignores_trailing_bytes() {
    let mut body = id_and(5, &[0, 0, 0, 18]);
    body.extend_from_slice(b"limits@openssh.com");
    body.extend_from_slice(b"junk");
    check(
        &frame(200, &body),
        Ok(Request::Extended {
            id: 5,
            request: ExtendedRequest::Limits,
        }),
    );
}

// ---- zero-copy and wire details -----------------------------------------------------------

#[test]
fn write_data_is_zero_copy() {
    let data = Bytes::from(vec![0x5A; 1000]);
    let mut buf = wire(|out| {
        Request::Write {
            id: 1,
            handle: "h".into(),
            offset: 0,
            data: data.clone().into(),
        }
        .encode(out)
    });
    let input = buf.as_ptr_range();
    let Ok(Some(Request::Write { data: decoded, .. })) = Decoder::new().decode_request(&mut buf)
    else {
        panic!("not a WRITE");
    };
    assert_eq!(decoded.chunk_count(), 1);
    let decoded = decoded.into_bytes();
    assert_eq!(decoded, data);
    let inside = decoded.as_ptr_range();
    assert!(
        input.start <= inside.start && inside.end <= input.end,
        "data at {inside:?} is not inside the input buffer at {input:?}"
    );
    assert_eq!(inside.end, input.end, "data is the last field of the frame");
}

#[test]
fn data_reply_is_zero_copy() {
    let mut buf = wire(|out| {
        Response::Data {
            id: 1,
            data: Bytes::from(vec![7; 512]),
        }
        .encode(out)
    });
    let input = buf.as_ptr_range();
    let Ok(Some(Response::Data { data, .. })) = Decoder::new().decode_response(&mut buf) else {
        panic!("not DATA");
    };
    let inside = data.as_ptr_range();
    assert!(input.start <= inside.start && inside.end <= input.end);
}

#[test]
fn symlink_wire_order_is_target_then_link() {
    let symlink = Request::Symlink {
        id: 1,
        linkpath: "link".into(),
        targetpath: "target".into(),
    };
    let mut expected = vec![0, 0, 0, 23, 20, 0, 0, 0, 1];
    expected.extend_from_slice(b"\0\0\0\x06target\0\0\0\x04link");
    assert_eq!(&wire(|out| symlink.encode(out))[..], &expected[..]);
    check(&expected, Ok(symlink));
}

#[test]
fn open_keeps_unknown_flag_bits() {
    let mut body = id_and(1, &[0, 0, 0, 1, b'f']);
    body.put_u32(0x0000_0140 | OpenFlags::READ.bits());
    body.put_u32(0);
    let Ok(Some(Request::Open { pflags, .. })) =
        Decoder::new().decode_request(&mut BytesMut::from(&frame(3, &body)[..]))
    else {
        panic!("not OPEN");
    };
    assert_eq!(pflags.bits(), 0x141);
}

#[test]
fn status_without_message_and_language() {
    check_response(
        &frame(101, &id_and(8, &[0, 0, 0, 1])),
        Ok(Response::Status {
            id: 8,
            code: StatusCode::Eof,
            message: String::new(),
            language: String::new(),
        }),
    );
}

#[test]
fn status_with_message_but_no_language() {
    check_response(
        &frame(101, &id_and(8, &[0, 0, 0, 4, 0, 0, 0, 1, b'x'])),
        Ok(Response::Status {
            id: 8,
            code: StatusCode::Failure,
            message: "x".into(),
            language: String::new(),
        }),
    );
}

#[test]
fn status_with_truncated_message_is_malformed() {
    check_response(
        &frame(101, &id_and(8, &[0, 0, 0, 4, 0, 0, 0, 5, b'x'])),
        malformed(
            101,
            Some(8),
            Malformed::StringTooLong {
                field: "message",
                len: 5,
                remaining: 1,
            },
        ),
    );
}

#[test]
fn status_code_beyond_v3() {
    check_response(
        &frame(101, &id_and(8, &[0, 0, 0, 31, 0, 0, 0, 0, 0, 0, 0, 0])),
        Ok(Response::Status {
            id: 8,
            code: StatusCode::Other(31),
            message: String::new(),
            language: String::new(),
        }),
    );
}

#[test]
fn other_with_a_known_code_is_not_canonical() {
    // `Other(2)` is representable but encodes as NO_SUCH_FILE: constructors should use the
    // named variant (or `StatusCode::from_code`).
    let mut buf = wire(|out| Response::status(1, StatusCode::Other(2)).encode(out));
    let Ok(Some(Response::Status { code, .. })) = Decoder::new().decode_response(&mut buf) else {
        panic!("not STATUS");
    };
    assert_eq!(code, StatusCode::NoSuchFile);
    assert_eq!(
        StatusCode::from_code(StatusCode::Other(2).code()),
        StatusCode::NoSuchFile
    );
}

#[test]
fn invalid_utf8_in_text_fields_is_replaced() {
    let body = id_and(8, &[0, 0, 0, 4, 0, 0, 0, 2, b'a', 0xFF, 0, 0, 0, 0]);
    check_response(
        &frame(101, &body),
        Ok(Response::Status {
            id: 8,
            code: StatusCode::Failure,
            message: "a\u{FFFD}".into(),
            language: String::new(),
        }),
    );
}

#[test]
fn invalid_utf8_in_paths_is_kept() {
    check(
        &frame(17, &id_and(1, &[0, 0, 0, 2, 0xC3, 0x28])),
        Ok(Request::Stat {
            id: 1,
            path: Bytes::from_static(&[0xC3, 0x28]),
        }),
    );
}

// ---- helpers ------------------------------------------------------------------------------

/// Decodes `input` as one request and compares with `expected`; the frame must be consumed
/// whole, whatever the result.
fn check(input: &[u8], expected: Result<Request, DecodeError>) {
    let mut buf = BytesMut::from(input);
    let result = Decoder::new().decode_request(&mut buf);
    assert_eq!(result, expected.map(Some), "input {input:02x?}");
    assert!(buf.is_empty(), "{} bytes left", buf.len());
}

/// [`check`] for responses.
fn check_response(input: &[u8], expected: Result<Response, DecodeError>) {
    let mut buf = BytesMut::from(input);
    let result = Decoder::new().decode_response(&mut buf);
    assert_eq!(result, expected.map(Some), "input {input:02x?}");
    assert!(buf.is_empty(), "{} bytes left", buf.len());
}

fn unknown<T>(packet_type: u8, id: Option<u32>) -> Result<T, DecodeError> {
    Err(DecodeError::UnknownType { packet_type, id })
}

fn malformed<T>(packet_type: u8, id: Option<u32>, reason: Malformed) -> Result<T, DecodeError> {
    Err(DecodeError::Malformed {
        packet_type,
        id,
        reason,
    })
}

fn truncated(field: &'static str) -> Malformed {
    Malformed::Truncated { field }
}

fn string_too_long(field: &'static str, len: usize, remaining: usize) -> Malformed {
    Malformed::StringTooLong {
        field,
        len,
        remaining,
    }
}

/// A frame: length field, type byte, body.
fn frame(packet_type: u8, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_u32(1 + body.len() as u32);
    out.put_u8(packet_type);
    out.put_slice(body);
    out
}

/// A body starting with a request id.
fn id_and(id: u32, rest: &[u8]) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    body.extend_from_slice(rest);
    body
}

fn wire(encode: impl FnOnce(&mut BytesMut)) -> BytesMut {
    let mut out = BytesMut::new();
    encode(&mut out);
    out
}

/// One of every request kind with id `id` (INIT excepted: it has none), each with a
/// non-empty last field so that every cut is detectable.
fn every_request(id: u32) -> Vec<Request> {
    let attrs = FileAttributes {
        size: Some(1),
        permissions: Some(0o644),
        extended: vec![("t".into(), "d".into())],
        ..FileAttributes::new()
    };
    let b = |s: &'static str| Bytes::from_static(s.as_bytes());
    let extended = [
        ExtendedRequest::PosixRename {
            oldpath: b("a"),
            newpath: b("b"),
        },
        ExtendedRequest::Statvfs { path: b("/") },
        ExtendedRequest::Fstatvfs { handle: b("h") },
        ExtendedRequest::Hardlink {
            oldpath: b("a"),
            newpath: b("b"),
        },
        ExtendedRequest::Fsync { handle: b("h") },
        ExtendedRequest::Lsetstat {
            path: b("p"),
            attrs: attrs.clone(),
        },
        ExtendedRequest::Limits,
        ExtendedRequest::ExpandPath { path: b("~/x") },
        ExtendedRequest::CopyData {
            read_handle: b("r"),
            read_offset: 1,
            read_length: 2,
            write_handle: b("w"),
            write_offset: 3,
        },
        ExtendedRequest::HomeDirectory {
            username: b("alice"),
        },
        ExtendedRequest::UsersGroupsById {
            uids: vec![0, 1],
            gids: vec![2],
        },
        ExtendedRequest::Unknown {
            name: "vendor@example.com".into(),
            data: b("xyz"),
        },
    ];
    let mut requests = vec![
        Request::Open {
            id,
            filename: b("f"),
            pflags: OpenFlags::READ,
            attrs: attrs.clone(),
        },
        Request::Close { id, handle: b("h") },
        Request::Read {
            id,
            handle: b("h"),
            offset: 1,
            len: 2,
        },
        Request::Write {
            id,
            handle: b("h"),
            offset: 1,
            data: b("data").into(),
        },
        Request::Lstat { id, path: b("p") },
        Request::Fstat { id, handle: b("h") },
        Request::Setstat {
            id,
            path: b("p"),
            attrs: attrs.clone(),
        },
        Request::Fsetstat {
            id,
            handle: b("h"),
            attrs: attrs.clone(),
        },
        Request::Opendir { id, path: b("p") },
        Request::Readdir { id, handle: b("h") },
        Request::Remove {
            id,
            filename: b("f"),
        },
        Request::Mkdir {
            id,
            path: b("p"),
            attrs,
        },
        Request::Rmdir { id, path: b("p") },
        Request::Realpath { id, path: b("p") },
        Request::Stat { id, path: b("p") },
        Request::Rename {
            id,
            oldpath: b("a"),
            newpath: b("b"),
        },
        Request::Readlink { id, path: b("p") },
        Request::Symlink {
            id,
            linkpath: b("l"),
            targetpath: b("t"),
        },
    ];
    requests.extend(
        extended
            .into_iter()
            .map(|request| Request::Extended { id, request }),
    );
    requests
}

/// One of every response kind with id `id` (VERSION excepted: it has none).
fn every_response(id: u32) -> Vec<Response> {
    let attrs = FileAttributes {
        size: Some(1),
        permissions: Some(0o644),
        extended: vec![("t".into(), "d".into())],
        ..FileAttributes::new()
    };
    vec![
        Response::Status {
            id,
            code: StatusCode::Failure,
            message: "m".into(),
            language: "en".into(),
        },
        Response::Handle {
            id,
            handle: "h".into(),
        },
        Response::Data {
            id,
            data: "d".into(),
        },
        Response::Name {
            id,
            entries: vec![sftpgate_proto::NameEntry {
                filename: "f".into(),
                longname: "l".into(),
                attrs: attrs.clone(),
            }],
        },
        Response::Attrs { id, attrs },
        Response::ExtendedReply {
            id,
            data: "x".into(),
        },
    ]
}

// ---- allocation tracking ------------------------------------------------------------------

// The test binary's allocator records the largest single allocation made on the current
// thread, so that a test can show a hostile count or length allocates nothing big. `unsafe`
// is unavoidable for a `GlobalAlloc`; it only forwards to `System`.
struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    /// Allocations and growing reallocations of at least `BIG_FROM` bytes (0: none counted).
    static BIG: Cell<usize> = const { Cell::new(0) };
    static BIG_FROM: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            record(new_size);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

fn record(size: usize) {
    // `try_with`: the slots may be gone while the thread shuts down.
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
    let from = BIG_FROM.try_with(Cell::get).unwrap_or(0);
    if from > 0 && size >= from {
        let _ = BIG.try_with(|big| big.set(big.get() + 1));
    }
}

#[test]
fn allocation_tracking_sees_allocations() {
    let (v, largest) = largest_allocation(|| vec![0u8; 10_000]);
    assert_eq!(v.len(), 10_000);
    assert!(largest >= 10_000, "largest {largest}");
}

/// Runs `f` and returns its result with the number of allocations and growing reallocations
/// of at least `from` bytes it made on this thread.
fn big_allocations<R>(from: usize, f: impl FnOnce() -> R) -> (R, usize) {
    BIG.with(|big| big.set(0));
    BIG_FROM.with(|slot| slot.set(from));
    let result = f();
    BIG_FROM.with(|slot| slot.set(0));
    (result, BIG.with(Cell::get))
}

/// Runs `f` and returns its result with the largest allocation it made on this thread.
fn largest_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|largest| largest.set(0));
    let result = f();
    (result, LARGEST.with(Cell::get))
}

#[test]
fn request_names_list_every_known_request() {
    let mut named: Vec<&str> = every_request(1)
        .iter()
        .filter(|r| !matches!(r, Request::Init { .. }))
        .filter(|r| {
            !matches!(
                r,
                Request::Extended {
                    request: ExtendedRequest::Unknown { .. },
                    ..
                }
            )
        })
        .map(|r| r.name().to_owned().leak() as &str)
        .collect();
    named.sort_unstable();
    named.dedup();
    let mut listed = sftpgate_proto::REQUEST_NAMES.to_vec();
    listed.sort_unstable();
    assert_eq!(named, listed);
}

/// A WRITE arriving in 32 KiB chunks whose last chunk also starts the next packet (how SSH
/// channel data splits a pipelined stream) is assembled in the buffer reserved for it: no
/// reallocation (which would copy the whole frame) once its length is known. Counted as
/// (re)allocations, not as the buffer's address changing: the allocator may grow a block
/// where it is, so a pointer that stays put proves nothing.
#[test]
fn reserving_ahead_keeps_a_chunked_frame_in_one_allocation() {
    const CHUNK: usize = 32 * 1024;
    let mut stream = BytesMut::new();
    for id in 0..2 {
        Request::Write {
            id,
            handle: Bytes::from_static(b"h"),
            offset: 0,
            data: Bytes::from(vec![id as u8; 255 * 1024]).into(),
        }
        .encode(&mut stream);
    }
    let stream = stream.freeze();
    for (ahead, grows) in [(CHUNK, false), (0, true)] {
        let mut decoder = Decoder::new().reserving_ahead(ahead);
        let mut buf = BytesMut::new();
        let mut reserved = false;
        let mut grown = false;
        let mut frames = 0;
        for chunk in stream.chunks(CHUNK) {
            let ((), big) = big_allocations(CHUNK + 1, || buf.extend_from_slice(chunk));
            grown |= reserved && big > 0;
            while let Some(request) = decoder.decode_request(&mut buf).expect("decodes") {
                assert!(matches!(request, Request::Write { id, .. } if id == frames));
                frames += 1;
                reserved = false;
            }
            if frames == 0 && buf.capacity() > CHUNK {
                reserved = true;
            }
        }
        assert_eq!(frames, 2);
        assert_eq!(grown, grows, "reserving {ahead} ahead");
    }
}

/// 32 KiB WRITEs arriving in 32 KiB chunks: every frame straddles two chunks, and once a
/// frame has been split off the buffer, growing it means a new allocation (and a copy of
/// the incomplete frame). `growing_by` makes that happen once per that many bytes instead
/// of once per frame.
#[test]
fn growing_by_reallocates_once_per_that_many_bytes_not_per_frame() {
    const CHUNK: usize = 32 * 1024;
    const FRAMES: u32 = 64;
    let mut stream = BytesMut::new();
    for id in 0..FRAMES {
        Request::Write {
            id,
            handle: Bytes::from_static(b"h"),
            offset: 0,
            data: Bytes::from(vec![id as u8; CHUNK]).into(),
        }
        .encode(&mut stream);
    }
    let stream = stream.freeze();
    for (grow, at_most) in [(0, None), (256 * 1024, Some(12))] {
        let mut decoder = Decoder::new().reserving_ahead(CHUNK).growing_by(grow);
        let mut buf = BytesMut::new();
        let mut kept: Vec<Bytes> = Vec::new(); // in use, as WRITEs waiting to be stored
        let mut frames = 0;
        for chunk in stream.chunks(CHUNK) {
            buf.extend_from_slice(chunk);
            while let Some(request) = decoder.decode_request(&mut buf).expect("decodes") {
                let Request::Write { id, data, .. } = request else {
                    panic!("not a WRITE")
                };
                assert_eq!(id, frames);
                let data = data.into_bytes();
                assert!(data.iter().all(|b| *b == id as u8));
                kept.push(data);
                frames += 1;
            }
        }
        // A frame whose data does not follow the previous one in memory (its header, 26
        // bytes, between them) was moved to a new allocation.
        let reallocations = kept
            .windows(2)
            .filter(|w| w[0].as_ptr_range().end.wrapping_add(26) != w[1].as_ptr())
            .count();
        assert_eq!(frames, FRAMES);
        match at_most {
            // Without it: a new allocation for nearly every frame.
            None => assert!(reallocations >= FRAMES as usize / 2, "{reallocations}"),
            Some(limit) => assert!(reallocations <= limit, "growing by {grow}: {reallocations}"),
        }
    }
}
