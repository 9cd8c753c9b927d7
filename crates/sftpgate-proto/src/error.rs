//! Decoding errors: what went wrong, and the request id whenever it could be read, so that a
//! server can answer a bad request with a STATUS instead of dropping the session.

/// Why a byte stream could not be turned into a packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The length field announces more than the configured maximum. Nothing was allocated,
    /// and the stream cannot be resynchronised: the session must end.
    #[error("packet of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced length.
        len: u32,
        /// The configured maximum.
        max: u32,
    },
    /// A frame with a length of zero has no type byte. The stream is still in sync.
    #[error("empty packet (length 0)")]
    Empty,
    /// The packet type is not one this direction of the protocol carries. The stream is
    /// still in sync.
    #[error("unknown packet type {packet_type}")]
    UnknownType {
        /// The type byte.
        packet_type: u8,
        /// The request id, when the frame was long enough to hold one.
        id: Option<u32>,
    },
    /// The frame was whole but its contents did not parse. The stream is still in sync.
    #[error("malformed packet of type {packet_type}: {reason}")]
    Malformed {
        /// The type byte.
        packet_type: u8,
        /// The request id, when it could be read.
        id: Option<u32>,
        /// What was wrong.
        reason: Malformed,
    },
}

impl DecodeError {
    /// The request id of the offending packet, when it could be read: the server answers it
    /// with SSH_FX_BAD_MESSAGE (or SSH_FX_OP_UNSUPPORTED for an unknown type).
    pub fn request_id(&self) -> Option<u32> {
        match self {
            DecodeError::UnknownType { id, .. } | DecodeError::Malformed { id, .. } => *id,
            DecodeError::TooLarge { .. } | DecodeError::Empty => None,
        }
    }

    /// Whether the byte stream is lost: the framer cannot find the next packet boundary, so
    /// the session has to end. Every other error concerns one whole frame that has already
    /// been consumed; decoding can go on with the next one.
    pub fn is_fatal(&self) -> bool {
        matches!(self, DecodeError::TooLarge { .. })
    }
}

/// What was wrong inside a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Malformed {
    /// The frame ended inside a fixed-size field.
    #[error("truncated in field `{field}`")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// A string's length runs past the end of the frame.
    #[error("string `{field}` of {len} bytes runs past the end of the packet ({remaining} left)")]
    StringTooLong {
        /// The field being read.
        field: &'static str,
        /// The announced length.
        len: usize,
        /// What the frame still held.
        remaining: usize,
    },
    /// A count announces more elements than the frame can hold.
    #[error("count `{field}` of {count} cannot fit in the packet")]
    CountTooLarge {
        /// The field being read.
        field: &'static str,
        /// The announced count.
        count: u32,
    },
}
