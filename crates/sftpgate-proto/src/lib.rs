//! Sans-IO core of the SFTP v3 protocol (draft-ietf-secsh-filexfer-02) as OpenSSH speaks it.
//!
//! Bytes in, typed packets out, and back: no sockets, no tasks, no clocks. The caller owns
//! the transport and feeds whatever chunks it receives into a [`Decoder`]; whole packets come
//! out as [`Request`] (client to server) or [`Response`] (server to client) values. Encoding
//! appends to a caller-owned [`bytes::BytesMut`], so a server reuses one buffer per session.
//!
//! WRITE and DATA payloads are zero-copy: they are [`bytes::Bytes`] slices of the received
//! frame ([`RequestInput`] gathers a large WRITE from the transport's messages as they came). Length fields are checked against the configured maximum before anything is
//! allocated, and every malformed input is a typed [`DecodeError`] (carrying the request id
//! whenever it could be read), never a panic.
//!
//! ```
//! use bytes::BytesMut;
//! use sftpgate_proto::{Decoder, Request};
//!
//! let mut wire = BytesMut::new();
//! Request::Stat { id: 7, path: "/etc".into() }.encode(&mut wire);
//! let mut decoder = Decoder::new();
//! let mut input = BytesMut::from(&wire[..3]); // a partial packet
//! assert!(decoder.decode_request(&mut input).unwrap().is_none());
//! input.extend_from_slice(&wire[3..]);
//! let request = decoder.decode_request(&mut input).unwrap().unwrap();
//! assert_eq!(request, Request::Stat { id: 7, path: "/etc".into() });
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod attrs;
mod codec;
mod error;
pub mod extensions;
#[doc(hidden)]
pub mod fuzzing;
mod input;
mod longname;
mod packet;
mod status;
mod wire;
mod write_data;

pub use attrs::{AttrFlags, FileAttributes, FileType, Owner, Times};
pub use codec::{append_message, Decoder, DEFAULT_MAX_PACKET, FRAME_HEADER_LEN};
pub use error::{DecodeError, Malformed};
pub use extensions::{ExtendedRequest, LimitsReply, StatvfsReply, UsersGroupsReply};
pub use input::RequestInput;
pub use longname::{longname, LongnameInfo};
pub use packet::{
    data_header, encode_data_header, encode_status, NameEntry, OpenFlags, PacketType, Request,
    Response, DATA_HEADER_LEN, REQUEST_NAMES, SFTP_VERSION,
};
pub use status::StatusCode;
pub use write_data::WriteData;
