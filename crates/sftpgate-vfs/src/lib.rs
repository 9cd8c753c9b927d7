//! Storage traits for sftpgate: what a backend implements to serve SFTP sessions.
//!
//! A session's storage is one [`Filesystem`], created by the server's SFTP factory when a
//! client opens the `sftp` subsystem, and ended by exactly one awaited call to
//! [`Filesystem::exit`] with the [`EndReason`]. Open files and directories are [`File`] and
//! [`Dir`] trait objects. Paths arrive as [`VPath`]: absolute, normalised virtual paths that
//! the backend maps into its own namespace (a jailed directory, a bucket prefix, …).
//!
//! Errors are [`FsError`]; `StatusCode::from(&FsError)` is the one reviewed map from storage
//! errors to SFTP status codes.
//!
//! This crate holds no backend code and knows nothing of SSH.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "conformance")]
pub mod conformance;
mod error;
mod fs;
#[cfg(feature = "memory")]
pub mod memory;
mod path;
mod read_parts;
mod session;
mod with_exit;

pub use error::FsError;
pub use fs::{Dir, DirEntry, File, Filesystem, RenameMode};
pub use path::{PathError, VPath};
pub use read_parts::{parts_len, read_parts_in_turn, read_parts_joined, PartsFill, ReadPart};
pub use session::EndReason;
pub use with_exit::WithExit;
