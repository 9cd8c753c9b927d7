//! The object storage backend of sftpgate: [`ObjectFs`] serves a session from a key prefix
//! of a bucket, through the `object_store` crate (S3 now; GCS, Azure and others are the
//! same trait with another builder).
//!
//! How SFTP maps onto objects (docs/object-storage.md has the whole list, with what differs
//! from a POSIX disk):
//! - a path is the key `<prefix>/<path>` (keys.rs: `Path::parse`, byte-exact, jailed);
//! - directories are key prefixes; MKDIR leaves an empty marker object
//!   ([`DIR_MARKER`]) that RMDIR removes; RMDIR of a non-empty directory fails;
//! - reads are ranged GETs, chunked and fetched ahead for sequential readers (reader.rs);
//! - writes stream into a multipart upload through a bounded reorder window (writer.rs,
//!   reorder.rs); the object appears at CLOSE or fsync, and an upload whose session ends
//!   first is aborted, never completed;
//! - RENAME is copy then delete (not atomic); SYMLINK, hard links, and SETSTAT of
//!   permissions, owner or times answer `OP_UNSUPPORTED`.
//!
//! Every store call runs under a timeout (call.rs); transient failures are retried with
//! backoff by the store's HTTP client; every failure reaches the client as a status with a
//! message that names no key, bucket or endpoint.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod call;
mod config;
mod dir;
mod fs;
mod keys;
mod reader;
mod reorder;
mod writer;

pub use config::{ObjectConfig, S3Settings, MIN_PART_SIZE};
pub use fs::ObjectFs;
pub use keys::DIR_MARKER;
pub use object_store;
