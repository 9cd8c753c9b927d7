//! Property tests: every packet survives `decode(encode(p)) == p`, chunking never changes what
//! the decoder yields, and arbitrary bytes never make it panic or lose its footing.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use sftpgate_proto::extensions::names;
use sftpgate_proto::fuzzing::{check_decode_chunked, check_input};
use sftpgate_proto::{
    Decoder, ExtendedRequest, FileAttributes, LimitsReply, NameEntry, OpenFlags, Owner, Request,
    Response, StatusCode, StatvfsReply, Times, UsersGroupsReply, DEFAULT_MAX_PACKET,
};

proptest! {
    #[test]
    fn request_round_trips(request in request()) {
        let wire = encode_request(&request);
        prop_assert_eq!(decode_requests(&wire), vec![request]);
    }

    /// The twelve extensions share one arm of `request()`: give each of them more cases.
    #[test]
    fn extended_request_round_trips(id in any::<u32>(), request in extended_request()) {
        let request = Request::Extended { id, request };
        let wire = encode_request(&request);
        prop_assert_eq!(decode_requests(&wire), vec![request]);
    }

    #[test]
    fn response_round_trips(response in response()) {
        let wire = encode_response(&response);
        prop_assert_eq!(decode_responses(&wire), vec![response]);
    }

    #[test]
    fn statvfs_reply_round_trips(reply in statvfs_reply()) {
        let mut out = BytesMut::new();
        reply.encode(&mut out);
        prop_assert_eq!(out.len(), 11 * 8);
        prop_assert_eq!(StatvfsReply::decode(out.freeze()), Ok(reply));
    }

    #[test]
    fn limits_reply_round_trips(reply in limits_reply()) {
        let mut out = BytesMut::new();
        reply.encode(&mut out);
        prop_assert_eq!(out.len(), 4 * 8);
        prop_assert_eq!(LimitsReply::decode(out.freeze()), Ok(reply));
    }

    #[test]
    fn users_groups_reply_round_trips(reply in users_groups_reply()) {
        let mut out = BytesMut::new();
        reply.encode(&mut out);
        prop_assert_eq!(UsersGroupsReply::decode(out.freeze()), Ok(reply));
    }

    /// The typed replies also survive as the payload of an EXTENDED_REPLY packet.
    #[test]
    fn typed_replies_round_trip_inside_extended_reply(
        id in any::<u32>(),
        statvfs in statvfs_reply(),
        limits in limits_reply(),
        users in users_groups_reply(),
    ) {
        let mut statvfs_data = BytesMut::new();
        statvfs.encode(&mut statvfs_data);
        let mut limits_data = BytesMut::new();
        limits.encode(&mut limits_data);
        let mut users_data = BytesMut::new();
        users.encode(&mut users_data);
        let replies: Vec<Response> = [statvfs_data, limits_data, users_data]
            .into_iter()
            .map(|data| Response::ExtendedReply { id, data: data.freeze() })
            .collect();
        let decoded = decode_responses(&encode_responses(&replies));
        let data = |i: usize| match &decoded[i] {
            Response::ExtendedReply { data, .. } => data.clone(),
            other => panic!("not an EXTENDED_REPLY: {other:?}"),
        };
        prop_assert_eq!(StatvfsReply::decode(data(0)), Ok(statvfs));
        prop_assert_eq!(LimitsReply::decode(data(1)), Ok(limits));
        prop_assert_eq!(UsersGroupsReply::decode(data(2)), Ok(users));
    }

    #[test]
    fn request_stream_is_independent_of_chunking(
        requests in prop::collection::vec(request(), 1..8),
        chunks in chunk_sizes(),
    ) {
        let wire = requests.iter().fold(BytesMut::new(), |mut out, r| {
            r.encode(&mut out);
            out
        });
        let mut decoder = Decoder::new();
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for chunk in chunked(&wire, &chunks) {
            buf.extend_from_slice(chunk);
            while let Some(request) = decoder.decode_request(&mut buf).expect("valid stream") {
                decoded.push(request);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(&decoded, &decode_requests(&wire));
        prop_assert_eq!(decoded, requests);
    }

    /// Requests read from transport messages (`RequestInput`, gathering WRITEs from the
    /// messages' buffers) are exactly what the plain decoder reads, whatever the message
    /// sizes, for valid streams with WRITEs big and small and for damaged ones.
    #[test]
    fn request_input_matches_the_decoder_for_any_messages(
        requests in prop::collection::vec(request(), 1..8),
        big in prop::collection::vec((any::<u32>(), 0usize..3000), 0..4),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        chunks in chunk_sizes(),
        min_gather in 1usize..600,
        max in max_packet(),
    ) {
        let mut requests = requests;
        for (id, len) in big {
            requests.push(Request::Write {
                id,
                handle: Bytes::from_static(b"handle"),
                offset: u64::from(id),
                data: Bytes::from(vec![id as u8; len]).into(),
            });
        }
        let wire = requests.iter().fold(BytesMut::new(), |mut out, r| {
            r.encode(&mut out);
            out
        });
        check_input(&wire, &chunks, max, min_gather);
        let mut damaged = wire.to_vec();
        for (at, byte) in &edits {
            let i = at.index(damaged.len());
            damaged[i] = *byte;
        }
        check_input(&damaged, &chunks, max, min_gather);
    }

    #[test]
    fn response_stream_is_independent_of_chunking(
        responses in prop::collection::vec(response(), 1..8),
        chunks in chunk_sizes(),
    ) {
        let wire = encode_responses(&responses);
        let mut decoder = Decoder::new();
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for chunk in chunked(&wire, &chunks) {
            buf.extend_from_slice(chunk);
            while let Some(response) = decoder.decode_response(&mut buf).expect("valid stream") {
                decoded.push(response);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(&decoded, &decode_responses(&wire));
        prop_assert_eq!(decoded, responses);
    }

    /// Arbitrary bytes in arbitrary chunks: no panic, and every invariant of
    /// `sftpgate_proto::fuzzing` holds (a non-fatal error consumes exactly its frame and
    /// decoding goes on; `TooLarge` exactly when the length field exceeds the limit, with the
    /// buffer untouched; chunking does not change the outcome).
    #[test]
    fn decode_never_panics_on_arbitrary_bytes(
        data in prop::collection::vec(any::<u8>(), 0..600),
        chunks in chunk_sizes(),
        max in max_packet(),
    ) {
        let whole = check_decode_chunked(&data, &[], max);
        prop_assert_eq!(whole, check_decode_chunked(&data, &chunks, max));
    }

    /// The same on inputs close to valid ones: well-formed packets with a few bytes
    /// overwritten and the stream cut anywhere, which reach far deeper into the parsers than
    /// random bytes do.
    #[test]
    fn decode_never_panics_on_mutated_packets(
        requests in prop::collection::vec(request(), 0..4),
        responses in prop::collection::vec(response(), 0..4),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in any::<prop::sample::Index>(),
        chunks in chunk_sizes(),
        max in max_packet(),
    ) {
        let mut wire = requests.iter().fold(BytesMut::new(), |mut out, r| {
            r.encode(&mut out);
            out
        });
        wire.extend_from_slice(&encode_responses(&responses));
        let mut data = wire.to_vec();
        if !data.is_empty() {
            for (at, byte) in &edits {
                let i = at.index(data.len());
                data[i] = *byte;
            }
            data.truncate(cut.index(data.len() + 1));
        }
        let whole = check_decode_chunked(&data, &[], max);
        prop_assert_eq!(whole, check_decode_chunked(&data, &chunks, max));
    }
}

/// The strategies reach every variant: a new variant that they miss fails here (the
/// exhaustive matches in `*_variant` do not compile without it).
#[test]
fn strategies_cover_every_variant() {
    let mut runner = TestRunner::deterministic();
    let mut requests = [false; REQUEST_VARIANTS];
    let mut extended = [false; EXTENDED_VARIANTS];
    let mut responses = [false; RESPONSE_VARIANTS];
    for _ in 0..5_000 {
        let request = request().new_tree(&mut runner).expect("strategy").current();
        requests[request_variant(&request)] = true;
        if let Request::Extended { request: ext, .. } = &request {
            extended[extended_variant(ext)] = true;
        }
        let response = response()
            .new_tree(&mut runner)
            .expect("strategy")
            .current();
        responses[response_variant(&response)] = true;
    }
    assert_eq!(requests, [true; REQUEST_VARIANTS], "request variants");
    assert_eq!(extended, [true; EXTENDED_VARIANTS], "extended variants");
    assert_eq!(responses, [true; RESPONSE_VARIANTS], "response variants");
}

// ---- strategies ---------------------------------------------------------------------------

/// Byte strings as paths, handles and data: any bytes, non-UTF-8 included, empty included.
fn bytes() -> impl Strategy<Value = Bytes> + Clone {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..48),
        // Invalid UTF-8 for certain, surrounded by path-like text.
        ("[a-z/.]{0,8}", prop::collection::vec(0x80u8..=0xff, 1..4)).prop_map(|(s, bad)| {
            let mut v = s.into_bytes();
            v.extend_from_slice(&bad);
            v.extend_from_slice(b"/name");
            v
        }),
    ]
    .prop_map(Bytes::from)
}

/// Text fields (extension names, STATUS messages): any Unicode, as the codec keeps it as
/// `String`.
fn text() -> impl Strategy<Value = String> + Clone {
    "\\PC{0,16}"
}

fn attrs() -> impl Strategy<Value = FileAttributes> + Clone {
    (
        any::<Option<u64>>(),
        any::<Option<(u32, u32)>>(),
        any::<Option<u32>>(),
        any::<Option<(u32, u32)>>(),
        prop_oneof![
            Just(Vec::new()),
            prop::collection::vec((bytes(), bytes()), 1..4),
        ],
    )
        .prop_map(
            |(size, owner, permissions, times, extended)| FileAttributes {
                size,
                owner: owner.map(|(uid, gid)| Owner { uid, gid }),
                permissions,
                times: times.map(|(atime, mtime)| Times { atime, mtime }),
                extended,
            },
        )
}

fn extension_pairs() -> impl Strategy<Value = Vec<(String, Bytes)>> + Clone {
    prop::collection::vec((text(), bytes()), 0..5)
}

fn open_flags() -> impl Strategy<Value = OpenFlags> + Clone {
    // Unknown bits too: the codec keeps them.
    any::<u32>().prop_map(OpenFlags::from_bits_retain)
}

fn status_code() -> impl Strategy<Value = StatusCode> + Clone {
    prop_oneof![
        Just(StatusCode::Ok),
        Just(StatusCode::Eof),
        Just(StatusCode::NoSuchFile),
        Just(StatusCode::PermissionDenied),
        Just(StatusCode::Failure),
        Just(StatusCode::BadMessage),
        Just(StatusCode::NoConnection),
        Just(StatusCode::ConnectionLost),
        Just(StatusCode::OpUnsupported),
        // `Other` only for codes without a variant of their own: `Other(2)` encodes as 2,
        // which decodes as `NoSuchFile` (see `other_with_a_known_code_is_not_canonical`).
        (9u32..).prop_map(StatusCode::Other),
    ]
}

const KNOWN_EXTENSIONS: [&str; 11] = [
    names::POSIX_RENAME,
    names::STATVFS,
    names::FSTATVFS,
    names::HARDLINK,
    names::FSYNC,
    names::LSETSTAT,
    names::LIMITS,
    names::EXPAND_PATH,
    names::COPY_DATA,
    names::HOME_DIRECTORY,
    names::USERS_GROUPS_BY_ID,
];

fn extended_request() -> impl Strategy<Value = ExtendedRequest> + Clone {
    prop_oneof![
        (bytes(), bytes())
            .prop_map(|(oldpath, newpath)| ExtendedRequest::PosixRename { oldpath, newpath }),
        bytes().prop_map(|path| ExtendedRequest::Statvfs { path }),
        bytes().prop_map(|handle| ExtendedRequest::Fstatvfs { handle }),
        (bytes(), bytes())
            .prop_map(|(oldpath, newpath)| ExtendedRequest::Hardlink { oldpath, newpath }),
        bytes().prop_map(|handle| ExtendedRequest::Fsync { handle }),
        (bytes(), attrs()).prop_map(|(path, attrs)| ExtendedRequest::Lsetstat { path, attrs }),
        Just(ExtendedRequest::Limits),
        bytes().prop_map(|path| ExtendedRequest::ExpandPath { path }),
        (bytes(), any::<u64>(), any::<u64>(), bytes(), any::<u64>()).prop_map(
            |(read_handle, read_offset, read_length, write_handle, write_offset)| {
                ExtendedRequest::CopyData {
                    read_handle,
                    read_offset,
                    read_length,
                    write_handle,
                    write_offset,
                }
            }
        ),
        bytes().prop_map(|username| ExtendedRequest::HomeDirectory { username }),
        (
            prop::collection::vec(any::<u32>(), 0..6),
            prop::collection::vec(any::<u32>(), 0..6),
        )
            .prop_map(|(uids, gids)| ExtendedRequest::UsersGroupsById { uids, gids }),
        // An Unknown named like a known extension would decode as that one: not a round trip.
        (
            text().prop_filter("a known extension name", |n| {
                !KNOWN_EXTENSIONS.contains(&n.as_str())
            }),
            bytes(),
        )
            .prop_map(|(name, data)| ExtendedRequest::Unknown { name, data }),
    ]
}

fn request() -> impl Strategy<Value = Request> + Clone {
    let id = any::<u32>();
    prop_oneof![
        (any::<u32>(), extension_pairs()).prop_map(|(version, extensions)| Request::Init {
            version,
            extensions
        }),
        (id, bytes(), open_flags(), attrs()).prop_map(|(id, filename, pflags, attrs)| {
            Request::Open {
                id,
                filename,
                pflags,
                attrs,
            }
        }),
        (id, bytes()).prop_map(|(id, handle)| Request::Close { id, handle }),
        (id, bytes(), any::<u64>(), any::<u32>()).prop_map(|(id, handle, offset, len)| {
            Request::Read {
                id,
                handle,
                offset,
                len,
            }
        }),
        (id, bytes(), any::<u64>(), bytes()).prop_map(|(id, handle, offset, data)| {
            Request::Write {
                id,
                handle,
                offset,
                data: data.into(),
            }
        }),
        (id, bytes()).prop_map(|(id, path)| Request::Lstat { id, path }),
        (id, bytes()).prop_map(|(id, handle)| Request::Fstat { id, handle }),
        (id, bytes(), attrs()).prop_map(|(id, path, attrs)| Request::Setstat { id, path, attrs }),
        (id, bytes(), attrs()).prop_map(|(id, handle, attrs)| Request::Fsetstat {
            id,
            handle,
            attrs
        }),
        (id, bytes()).prop_map(|(id, path)| Request::Opendir { id, path }),
        (id, bytes()).prop_map(|(id, handle)| Request::Readdir { id, handle }),
        (id, bytes()).prop_map(|(id, filename)| Request::Remove { id, filename }),
        (id, bytes(), attrs()).prop_map(|(id, path, attrs)| Request::Mkdir { id, path, attrs }),
        (id, bytes()).prop_map(|(id, path)| Request::Rmdir { id, path }),
        (id, bytes()).prop_map(|(id, path)| Request::Realpath { id, path }),
        (id, bytes()).prop_map(|(id, path)| Request::Stat { id, path }),
        (id, bytes(), bytes()).prop_map(|(id, oldpath, newpath)| Request::Rename {
            id,
            oldpath,
            newpath
        }),
        (id, bytes()).prop_map(|(id, path)| Request::Readlink { id, path }),
        (id, bytes(), bytes()).prop_map(|(id, linkpath, targetpath)| {
            Request::Symlink {
                id,
                linkpath,
                targetpath,
            }
        }),
        (id, extended_request()).prop_map(|(id, request)| Request::Extended { id, request }),
    ]
}

fn name_entry() -> impl Strategy<Value = NameEntry> + Clone {
    (bytes(), bytes(), attrs()).prop_map(|(filename, longname, attrs)| NameEntry {
        filename,
        longname,
        attrs,
    })
}

fn response() -> impl Strategy<Value = Response> + Clone {
    let id = any::<u32>();
    prop_oneof![
        (any::<u32>(), extension_pairs()).prop_map(|(version, extensions)| Response::Version {
            version,
            extensions
        }),
        (id, status_code(), text(), text()).prop_map(|(id, code, message, language)| {
            Response::Status {
                id,
                code,
                message,
                language,
            }
        }),
        (id, bytes()).prop_map(|(id, handle)| Response::Handle { id, handle }),
        (id, bytes()).prop_map(|(id, data)| Response::Data { id, data }),
        (id, prop::collection::vec(name_entry(), 0..4))
            .prop_map(|(id, entries)| Response::Name { id, entries }),
        (id, attrs()).prop_map(|(id, attrs)| Response::Attrs { id, attrs }),
        (id, bytes()).prop_map(|(id, data)| Response::ExtendedReply { id, data }),
    ]
}

fn statvfs_reply() -> impl Strategy<Value = StatvfsReply> {
    any::<[u64; 11]>().prop_map(|f| StatvfsReply {
        bsize: f[0],
        frsize: f[1],
        blocks: f[2],
        bfree: f[3],
        bavail: f[4],
        files: f[5],
        ffree: f[6],
        favail: f[7],
        fsid: f[8],
        flag: f[9],
        namemax: f[10],
    })
}

fn limits_reply() -> impl Strategy<Value = LimitsReply> {
    any::<[u64; 4]>().prop_map(|f| LimitsReply {
        max_packet_len: f[0],
        max_read_len: f[1],
        max_write_len: f[2],
        max_open_handles: f[3],
    })
}

fn users_groups_reply() -> impl Strategy<Value = UsersGroupsReply> {
    (
        prop::collection::vec(bytes(), 0..5),
        prop::collection::vec(bytes(), 0..5),
    )
        .prop_map(|(usernames, groupnames)| UsersGroupsReply {
            usernames,
            groupnames,
        })
}

/// Chunk sizes, mostly small so that length fields and headers get split.
fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop_oneof![3 => 1usize..8, 1 => 1usize..512], 0..64)
}

/// The default limit, or a small one so that `TooLarge` happens often.
fn max_packet() -> impl Strategy<Value = u32> {
    prop_oneof![Just(DEFAULT_MAX_PACKET), 0u32..256]
}

// ---- helpers ------------------------------------------------------------------------------

const REQUEST_VARIANTS: usize = 20;
const EXTENDED_VARIANTS: usize = 12;
const RESPONSE_VARIANTS: usize = 7;

fn request_variant(request: &Request) -> usize {
    match request {
        Request::Init { .. } => 0,
        Request::Open { .. } => 1,
        Request::Close { .. } => 2,
        Request::Read { .. } => 3,
        Request::Write { .. } => 4,
        Request::Lstat { .. } => 5,
        Request::Fstat { .. } => 6,
        Request::Setstat { .. } => 7,
        Request::Fsetstat { .. } => 8,
        Request::Opendir { .. } => 9,
        Request::Readdir { .. } => 10,
        Request::Remove { .. } => 11,
        Request::Mkdir { .. } => 12,
        Request::Rmdir { .. } => 13,
        Request::Realpath { .. } => 14,
        Request::Stat { .. } => 15,
        Request::Rename { .. } => 16,
        Request::Readlink { .. } => 17,
        Request::Symlink { .. } => 18,
        Request::Extended { .. } => 19,
    }
}

fn extended_variant(request: &ExtendedRequest) -> usize {
    match request {
        ExtendedRequest::PosixRename { .. } => 0,
        ExtendedRequest::Statvfs { .. } => 1,
        ExtendedRequest::Fstatvfs { .. } => 2,
        ExtendedRequest::Hardlink { .. } => 3,
        ExtendedRequest::Fsync { .. } => 4,
        ExtendedRequest::Lsetstat { .. } => 5,
        ExtendedRequest::Limits => 6,
        ExtendedRequest::ExpandPath { .. } => 7,
        ExtendedRequest::CopyData { .. } => 8,
        ExtendedRequest::HomeDirectory { .. } => 9,
        ExtendedRequest::UsersGroupsById { .. } => 10,
        ExtendedRequest::Unknown { .. } => 11,
    }
}

fn response_variant(response: &Response) -> usize {
    match response {
        Response::Version { .. } => 0,
        Response::Status { .. } => 1,
        Response::Handle { .. } => 2,
        Response::Data { .. } => 3,
        Response::Name { .. } => 4,
        Response::Attrs { .. } => 5,
        Response::ExtendedReply { .. } => 6,
    }
}

fn encode_request(request: &Request) -> BytesMut {
    let mut out = BytesMut::new();
    request.encode(&mut out);
    out
}

fn encode_response(response: &Response) -> BytesMut {
    let mut out = BytesMut::new();
    response.encode(&mut out);
    out
}

fn encode_responses(responses: &[Response]) -> BytesMut {
    let mut out = BytesMut::new();
    for response in responses {
        response.encode(&mut out);
    }
    out
}

/// Decodes a whole buffer of valid requests, asserting it is consumed exactly.
fn decode_requests(wire: &[u8]) -> Vec<Request> {
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::from(wire);
    let mut out = Vec::new();
    while let Some(request) = decoder.decode_request(&mut buf).expect("valid request") {
        out.push(request);
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    out
}

/// Decodes a whole buffer of valid responses, asserting it is consumed exactly.
fn decode_responses(wire: &[u8]) -> Vec<Response> {
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::from(wire);
    let mut out = Vec::new();
    while let Some(response) = decoder.decode_response(&mut buf).expect("valid response") {
        out.push(response);
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    out
}

/// Splits `wire` by `sizes` (zeros read as one), the rest in one last piece.
fn chunked<'a>(wire: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut pieces = Vec::new();
    let mut rest = wire;
    for size in sizes {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at((*size).clamp(1, rest.len()));
        pieces.push(piece);
        rest = tail;
    }
    if !rest.is_empty() {
        pieces.push(rest);
    }
    pieces
}
