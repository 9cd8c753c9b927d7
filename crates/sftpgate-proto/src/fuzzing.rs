//! Invariant checks for the decoder, shared by the `decode` fuzz target (`fuzz/`) and the
//! tests that replay its corpus and run it under proptest. Not part of the API: it panics on
//! purpose, at the first broken invariant.
//!
//! The invariants, for both directions and any chunking of the input:
//! - chunking does not matter: feeding the bytes whole, byte by byte or in any pieces yields
//!   the same packets and errors, in the same order;
//! - a decoded packet consumed exactly one frame, has the frame's type byte and id, and
//!   re-encodes to bytes that decode to an equal packet (and re-encode to the same bytes);
//! - a non-fatal error consumed exactly one frame, names the frame's type byte and id, and
//!   decoding goes on with the next frame;
//! - `TooLarge` is returned exactly when the length field exceeds the limit, and leaves the
//!   buffer untouched; `Ok(None)` consumes nothing and only happens when the frame is not
//!   whole yet.

use std::fmt::Debug;

use bytes::{Bytes, BytesMut};

use crate::codec::{Decoder, DEFAULT_MAX_PACKET, FRAME_HEADER_LEN};
use crate::error::DecodeError;
use crate::extensions::{LimitsReply, StatvfsReply, UsersGroupsReply};
use crate::input::RequestInput;
use crate::packet::{Request, Response};

/// Runs [`check_decode_chunked`] on `data` as requests and as responses, with the default
/// packet limit and a small one taken from the input's last byte, fed whole, byte by byte
/// (small inputs) and in pieces whose sizes are derived from the input.
pub fn check_decode(data: &[u8]) {
    let small_max = data.last().map_or(0, |b| u32::from(*b));
    let derived = derived_chunks(data);
    let bytewise = vec![1; if data.len() <= 4096 { data.len() } else { 0 }];
    for max_packet in [DEFAULT_MAX_PACKET, small_max] {
        let whole = check_decode_chunked(data, &[], max_packet);
        for min_gather in [1, 16] {
            check_input(data, &derived, max_packet, min_gather);
            if !bytewise.is_empty() {
                check_input(data, &bytewise, max_packet, min_gather);
            }
        }
        assert_eq!(
            whole,
            check_decode_chunked(data, &derived, max_packet),
            "chunking changed the outcome"
        );
        if !bytewise.is_empty() {
            assert_eq!(
                whole,
                check_decode_chunked(data, &bytewise, max_packet),
                "byte-by-byte feeding changed the outcome"
            );
        }
    }
}

/// Feeds `data` into a [`Decoder`] limited to `max_packet`, in pieces of the sizes in
/// `chunks` (zero sizes are read as one; whatever the sizes leave over is fed last, so an
/// empty `chunks` feeds everything at once), once as requests and once as responses. Checks
/// every invariant listed in the module docs along the way and returns a summary of what was
/// decoded, for comparing chunkings.
pub fn check_decode_chunked(data: &[u8], chunks: &[usize], max_packet: u32) -> Outcome {
    Outcome {
        requests: feed::<Requests>(data, chunks, max_packet),
        responses: feed::<Responses>(data, chunks, max_packet),
    }
}

/// What one feeding of an input produced, in both directions.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Decoding the input as client packets.
    pub requests: DirectionOutcome<Request>,
    /// Decoding the input as server packets.
    pub responses: DirectionOutcome<Response>,
}

/// What one feeding of an input produced in one direction.
#[derive(Debug, PartialEq, Eq)]
pub struct DirectionOutcome<P> {
    /// Every packet and non-fatal error, in order.
    pub events: Vec<Result<P, DecodeError>>,
    /// The fatal error that ended decoding, if any.
    pub fatal: Option<DecodeError>,
    /// Bytes the decoder consumed: everything up to the incomplete frame at the end, or up
    /// to the frame that was too large.
    pub consumed: usize,
}

/// One direction of the protocol, so that the checks are written once.
trait Direction {
    type Packet: Debug + PartialEq;
    fn decode(
        decoder: &mut Decoder,
        buf: &mut BytesMut,
    ) -> Result<Option<Self::Packet>, DecodeError>;
    fn decode_frame(frame: Bytes) -> Result<Self::Packet, DecodeError>;
    fn encode(packet: &Self::Packet, out: &mut BytesMut);
    fn packet_type(packet: &Self::Packet) -> u8;
    fn id(packet: &Self::Packet) -> Option<u32>;
    /// Whether the type byte is one this direction decodes (else: `UnknownType`).
    fn is_known_type(packet_type: u8) -> bool;
    /// The packet type that carries no request id.
    const ID_LESS_TYPE: u8;
    /// Extra per-packet checks.
    fn check_more(packet: &Self::Packet);
}

struct Requests;
struct Responses;

impl Direction for Requests {
    type Packet = Request;
    const ID_LESS_TYPE: u8 = 1;

    fn decode(decoder: &mut Decoder, buf: &mut BytesMut) -> Result<Option<Request>, DecodeError> {
        decoder.decode_request(buf)
    }
    fn decode_frame(frame: Bytes) -> Result<Request, DecodeError> {
        Request::decode(frame)
    }
    fn encode(packet: &Request, out: &mut BytesMut) {
        packet.encode(out)
    }
    fn packet_type(packet: &Request) -> u8 {
        packet.packet_type() as u8
    }
    fn id(packet: &Request) -> Option<u32> {
        packet.id()
    }
    fn is_known_type(packet_type: u8) -> bool {
        matches!(packet_type, 1 | 3..=20 | 200)
    }
    fn check_more(packet: &Request) {
        // Must not panic, whatever the packet.
        let _ = (packet.mutates(), packet.name());
    }
}

impl Direction for Responses {
    type Packet = Response;
    const ID_LESS_TYPE: u8 = 2;

    fn decode(decoder: &mut Decoder, buf: &mut BytesMut) -> Result<Option<Response>, DecodeError> {
        decoder.decode_response(buf)
    }
    fn decode_frame(frame: Bytes) -> Result<Response, DecodeError> {
        Response::decode(frame)
    }
    fn encode(packet: &Response, out: &mut BytesMut) {
        packet.encode(out)
    }
    fn packet_type(packet: &Response) -> u8 {
        packet.packet_type() as u8
    }
    fn id(packet: &Response) -> Option<u32> {
        packet.id()
    }
    fn is_known_type(packet_type: u8) -> bool {
        matches!(packet_type, 2 | 101..=105 | 201)
    }
    fn check_more(packet: &Response) {
        // An EXTENDED_REPLY's payload is typed by the request it answers, which the decoder
        // does not know: try every typed reply on it.
        if let Response::ExtendedReply { data, .. } = packet {
            if let Ok(reply) = StatvfsReply::decode(data.clone()) {
                let mut out = BytesMut::new();
                reply.encode(&mut out);
                assert_eq!(StatvfsReply::decode(out.freeze()), Ok(reply));
            }
            if let Ok(reply) = LimitsReply::decode(data.clone()) {
                let mut out = BytesMut::new();
                reply.encode(&mut out);
                assert_eq!(LimitsReply::decode(out.freeze()), Ok(reply));
            }
            if let Ok(reply) = UsersGroupsReply::decode(data.clone()) {
                let mut out = BytesMut::new();
                reply.encode(&mut out);
                assert_eq!(UsersGroupsReply::decode(out.freeze()), Ok(reply));
            }
        }
    }
}

fn feed<D: Direction>(
    data: &[u8],
    chunks: &[usize],
    max_packet: u32,
) -> DirectionOutcome<D::Packet> {
    let mut decoder = Decoder::with_max_packet(max_packet);
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    let mut rest = data;
    let mut sizes = chunks.iter().copied();
    let mut fed = 0;
    while !rest.is_empty() {
        let size = sizes.next().map_or(rest.len(), |s| s.clamp(1, rest.len()));
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        fed += chunk.len();
        buf.extend_from_slice(chunk);
        if let Err(fatal) = drain::<D>(&mut decoder, &mut buf, max_packet, &mut events) {
            return DirectionOutcome {
                events,
                fatal: Some(fatal),
                consumed: fed - buf.len(),
            };
        }
    }
    // Whatever is left cannot be a whole frame: the decoder would have taken it.
    if buf.len() >= FRAME_HEADER_LEN {
        let len = length_field(&buf);
        assert!(
            buf.len() < FRAME_HEADER_LEN + len as usize,
            "a whole frame was left in the buffer"
        );
    }
    DirectionOutcome {
        events,
        fatal: None,
        consumed: fed - buf.len(),
    }
}

/// Feeds `data` to a [`RequestInput`] in messages of the sizes in `chunks` (as
/// [`check_decode_chunked`] reads them), gathering WRITEs of at least `min_gather` bytes,
/// and checks that it yields exactly the requests and errors the plain decoder yields for
/// the whole input, in order, and stops at the same fatal error.
pub fn check_input(data: &[u8], chunks: &[usize], max_packet: u32, min_gather: usize) {
    let mut plain = Vec::new();
    let mut decoder = Decoder::with_max_packet(max_packet);
    let mut buf = BytesMut::from(data);
    take_requests(|| decoder.decode_request(&mut buf), &mut plain);
    let mut input = RequestInput::new(Decoder::with_max_packet(max_packet), min_gather);
    let mut got = Vec::new();
    let mut rest = data;
    let mut sizes = chunks.iter().map(|n| (*n).max(1));
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).min(rest.len());
        let (message, after) = rest.split_at(n);
        rest = after;
        input.push(Bytes::copy_from_slice(message));
        if take_requests(|| input.next_request(), &mut got) {
            break;
        }
    }
    assert_eq!(got, plain, "RequestInput differs from the plain decoder");
    if !matches!(got.last(), Some(Err(e)) if e.is_fatal()) {
        assert_eq!(input.buffered(), buf.len(), "bytes left over");
    }
}

/// Takes requests and errors from `next` into `out` until it needs more input (`false`) or
/// returns a fatal error (`true`).
fn take_requests(
    mut next: impl FnMut() -> Result<Option<Request>, DecodeError>,
    out: &mut Vec<Result<Request, DecodeError>>,
) -> bool {
    loop {
        match next() {
            Ok(None) => return false,
            Ok(Some(request)) => out.push(Ok(request)),
            Err(error) => {
                let fatal = error.is_fatal();
                out.push(Err(error));
                if fatal {
                    return true;
                }
            }
        }
    }
}

/// Decodes until the decoder needs more bytes; `Err` carries a fatal error.
fn drain<D: Direction>(
    decoder: &mut Decoder,
    buf: &mut BytesMut,
    max_packet: u32,
    events: &mut Vec<Result<D::Packet, DecodeError>>,
) -> Result<(), DecodeError> {
    loop {
        let before = buf.len();
        let field = (before >= FRAME_HEADER_LEN).then(|| length_field(buf));
        // A copy of the frame the decoder is about to take, if it is whole and allowed.
        let frame = field
            .filter(|len| *len <= max_packet && before >= FRAME_HEADER_LEN + *len as usize)
            .map(|len| Bytes::copy_from_slice(&buf[FRAME_HEADER_LEN..][..len as usize]));
        match D::decode(decoder, buf) {
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                assert!(frame.is_none(), "Ok(None) although a whole frame was there");
                assert!(
                    field.is_none_or(|len| len <= max_packet),
                    "a length field over the limit was not refused"
                );
                return Ok(());
            }
            Ok(Some(packet)) => {
                let frame = frame.expect("a packet comes from a whole frame");
                assert_eq!(
                    before - buf.len(),
                    FRAME_HEADER_LEN + frame.len(),
                    "consumed"
                );
                check_packet::<D>(&packet, &frame);
                events.push(Ok(packet));
            }
            Err(error) if error.is_fatal() => {
                let DecodeError::TooLarge { len, max } = error else {
                    panic!("fatal error other than TooLarge: {error:?}");
                };
                assert_eq!(Some(len), field, "TooLarge names the length field");
                assert_eq!(max, max_packet, "TooLarge names the limit");
                assert!(len > max_packet, "TooLarge for a length within the limit");
                assert_eq!(buf.len(), before, "TooLarge consumed bytes");
                return Err(error);
            }
            Err(error) => {
                let frame = frame.expect("a non-fatal error comes from a whole frame");
                assert_eq!(
                    before - buf.len(),
                    FRAME_HEADER_LEN + frame.len(),
                    "consumed"
                );
                check_error::<D>(&error, &frame);
                events.push(Err(error));
            }
        }
    }
}

fn check_packet<D: Direction>(packet: &D::Packet, frame: &[u8]) {
    assert_eq!(D::packet_type(packet), frame[0], "type byte");
    assert_eq!(D::id(packet), frame_id::<D>(frame), "request id");
    D::check_more(packet);

    let mut encoded = BytesMut::new();
    D::encode(packet, &mut encoded);
    assert_eq!(
        length_field(&encoded) as usize,
        encoded.len() - FRAME_HEADER_LEN,
        "encoded length field"
    );
    let body = encoded.clone().split_off(FRAME_HEADER_LEN).freeze();
    let again = D::decode_frame(body).expect("a re-encoded packet decodes");
    assert_eq!(
        &again, packet,
        "re-encoded packet decodes to a different value"
    );
    let mut encoded_again = BytesMut::new();
    D::encode(&again, &mut encoded_again);
    assert_eq!(encoded_again, encoded, "encoding is not a fixpoint");
}

fn check_error<D: Direction>(error: &DecodeError, frame: &[u8]) {
    match error {
        DecodeError::Empty => assert!(frame.is_empty(), "Empty for a non-empty frame"),
        DecodeError::UnknownType { packet_type, id } => {
            assert_eq!(*packet_type, frame[0], "type byte");
            assert!(
                !D::is_known_type(*packet_type),
                "UnknownType for a known type"
            );
            assert_eq!(*id, frame_id::<D>(frame), "UnknownType id");
        }
        DecodeError::Malformed {
            packet_type, id, ..
        } => {
            assert_eq!(*packet_type, frame[0], "type byte");
            assert!(
                D::is_known_type(*packet_type),
                "Malformed for an unknown type"
            );
            assert_eq!(*id, frame_id::<D>(frame), "Malformed id");
        }
        other => panic!("unexpected non-fatal error {other:?}"),
    }
    assert!(
        !frame.is_empty() || *error == DecodeError::Empty,
        "empty frame"
    );
    assert_eq!(error.request_id(), frame_id::<D>(frame), "request_id()");
}

/// The id a frame carries, by its type byte: none for INIT/VERSION or a frame too short.
fn frame_id<D: Direction>(frame: &[u8]) -> Option<u32> {
    match frame.first() {
        Some(t) if *t == D::ID_LESS_TYPE => None,
        _ => frame_u32(frame, 1),
    }
}

fn frame_u32(frame: &[u8], at: usize) -> Option<u32> {
    let b = frame.get(at..at + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn length_field(buf: &[u8]) -> u32 {
    u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]])
}

/// Chunk sizes from a small PRNG seeded with a hash of the input: a deterministic but
/// input-dependent mix of tiny pieces (splitting headers and fields) and large ones.
fn derived_chunks(data: &[u8]) -> Vec<usize> {
    // FNV-1a, then xorshift64.
    let mut state = data.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    }) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut sizes = Vec::new();
    let mut covered = 0;
    while covered < data.len() {
        let r = next();
        let size = 1 + match r % 3 {
            0 => (r >> 8) % 7,
            1 => (r >> 8) % 64,
            _ => (r >> 8) % (data.len() as u64),
        } as usize;
        sizes.push(size);
        covered += size;
    }
    sizes
}
