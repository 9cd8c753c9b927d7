//! Storage errors, and the one reviewed map from them to SFTP status codes.

use std::borrow::Cow;
use std::io;

use sftpgate_proto::StatusCode;

use crate::path::PathError;

/// What went wrong in a storage operation.
///
/// The `Display` text goes to the client in the STATUS message, so it never names a host
/// path: only what a person on the client side can act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsError {
    /// The path or handle names nothing that exists.
    #[error("No such file or directory")]
    NotFound,
    /// The backend or the operating system refused the operation.
    #[error("Permission denied")]
    PermissionDenied,
    /// The server's policy (the user's permissions, a read-only session) refused it.
    #[error("Permission denied: {0}")]
    Forbidden(Cow<'static, str>),
    /// The path leads outside the session's root (through `..` in a symlink target, an
    /// absolute symlink, a rename or link destination, …).
    #[error("Permission denied: path leads outside the session's root")]
    OutsideRoot,
    /// The target exists already.
    #[error("File exists")]
    AlreadyExists,
    /// A directory was expected.
    #[error("Not a directory")]
    NotADirectory,
    /// A file was expected.
    #[error("Is a directory")]
    IsADirectory,
    /// RMDIR of a directory that still has entries.
    #[error("Directory not empty")]
    DirectoryNotEmpty,
    /// The backend does not implement this operation.
    #[error("Operation unsupported: {0}")]
    Unsupported(Cow<'static, str>),
    /// Reading at or beyond the end of a file, or past the last directory entry.
    #[error("End of file")]
    Eof,
    /// The request made no sense (for example a path with a NUL byte).
    #[error("Invalid argument: {0}")]
    InvalidInput(Cow<'static, str>),
    /// The device or the user's quota is full.
    #[error("No space left on device")]
    NoSpace,
    /// The storage is read-only.
    #[error("Read-only file system")]
    ReadOnly,
    /// Too many levels of symbolic links.
    #[error("Too many levels of symbolic links")]
    SymlinkLoop,
    /// A name is longer than the backend allows.
    #[error("File name too long")]
    NameTooLong,
    /// The backend did not answer in time.
    #[error("Storage operation timed out")]
    TimedOut,
    /// Any other I/O error. The message is the operating system's description of the error
    /// code, which never contains a path.
    #[error("{}", describe_io(.0))]
    Io(#[source] io::Error),
    /// A backend-specific failure with a message meant for the client.
    #[error("{0}")]
    Other(String),
}

impl From<&FsError> for StatusCode {
    /// Not found → NO_SUCH_FILE; denied, forbidden or outside the root → PERMISSION_DENIED;
    /// unsupported → OP_UNSUPPORTED; end → EOF; invalid → BAD_MESSAGE; everything else →
    /// FAILURE with the message. Compare `errno_to_portable` in OpenSSH's sftp-server.
    fn from(e: &FsError) -> StatusCode {
        match e {
            FsError::NotFound => StatusCode::NoSuchFile,
            FsError::PermissionDenied
            | FsError::Forbidden(_)
            | FsError::OutsideRoot
            | FsError::ReadOnly => StatusCode::PermissionDenied,
            FsError::Unsupported(_) => StatusCode::OpUnsupported,
            FsError::Eof => StatusCode::Eof,
            FsError::InvalidInput(_) => StatusCode::BadMessage,
            FsError::Io(err) => match err.kind() {
                io::ErrorKind::NotFound => StatusCode::NoSuchFile,
                io::ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
                io::ErrorKind::Unsupported => StatusCode::OpUnsupported,
                _ => StatusCode::Failure,
            },
            FsError::AlreadyExists
            | FsError::NotADirectory
            | FsError::IsADirectory
            | FsError::DirectoryNotEmpty
            | FsError::NoSpace
            | FsError::SymlinkLoop
            | FsError::NameTooLong
            | FsError::TimedOut
            | FsError::Other(_) => StatusCode::Failure,
        }
    }
}

impl From<io::Error> for FsError {
    /// Classifies an operating-system error by its kind; anything unclassified stays
    /// [`FsError::Io`].
    fn from(err: io::Error) -> FsError {
        use io::ErrorKind as K;
        // ELOOP has no stable ErrorKind yet.
        const ELOOP: i32 = 40;
        if err.raw_os_error() == Some(ELOOP) {
            return FsError::SymlinkLoop;
        }
        match err.kind() {
            K::NotFound => FsError::NotFound,
            K::PermissionDenied => FsError::PermissionDenied,
            K::AlreadyExists => FsError::AlreadyExists,
            K::NotADirectory => FsError::NotADirectory,
            K::IsADirectory => FsError::IsADirectory,
            K::DirectoryNotEmpty => FsError::DirectoryNotEmpty,
            K::StorageFull | K::QuotaExceeded => FsError::NoSpace,
            K::ReadOnlyFilesystem => FsError::ReadOnly,
            K::InvalidFilename => FsError::NameTooLong,
            K::TimedOut => FsError::TimedOut,
            K::Unsupported => FsError::Unsupported("not supported by the storage".into()),
            _ => FsError::Io(err),
        }
    }
}

impl From<PathError> for FsError {
    fn from(e: PathError) -> FsError {
        FsError::InvalidInput(e.to_string().into())
    }
}

/// `io::Error`'s own `Display` may carry a custom payload (which could name a path); keep
/// only the OS description of the code when there is one.
fn describe_io(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(code) => {
            let full = io::Error::from_raw_os_error(code).to_string();
            // "Invalid argument (os error 22)" → "Invalid argument"
            match full.rfind(" (os error") {
                Some(cut) => full[..cut].to_owned(),
                None => full,
            }
        }
        None => "Failure".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(e: FsError, code: StatusCode) {
        assert_eq!(StatusCode::from(&e), code, "{e:?}");
    }

    #[test]
    fn not_found() {
        check(FsError::NotFound, StatusCode::NoSuchFile);
    }
    #[test]
    fn denied() {
        check(FsError::PermissionDenied, StatusCode::PermissionDenied);
    }
    #[test]
    fn forbidden() {
        check(
            FsError::Forbidden("upload".into()),
            StatusCode::PermissionDenied,
        );
    }
    #[test]
    fn outside_root() {
        check(FsError::OutsideRoot, StatusCode::PermissionDenied);
    }
    #[test]
    fn read_only() {
        check(FsError::ReadOnly, StatusCode::PermissionDenied);
    }
    #[test]
    fn unsupported() {
        check(FsError::Unsupported("x".into()), StatusCode::OpUnsupported);
    }
    #[test]
    fn eof() {
        check(FsError::Eof, StatusCode::Eof);
    }
    #[test]
    fn invalid() {
        check(FsError::InvalidInput("x".into()), StatusCode::BadMessage);
    }
    #[test]
    fn exists() {
        check(FsError::AlreadyExists, StatusCode::Failure);
    }
    #[test]
    fn not_empty() {
        check(FsError::DirectoryNotEmpty, StatusCode::Failure);
    }
    #[test]
    fn timed_out() {
        check(FsError::TimedOut, StatusCode::Failure);
    }
    #[test]
    fn io_kinds() {
        check(
            io::Error::from_raw_os_error(2).into(),
            StatusCode::NoSuchFile,
        );
        check(
            io::Error::from_raw_os_error(13).into(),
            StatusCode::PermissionDenied,
        );
        check(io::Error::from_raw_os_error(5).into(), StatusCode::Failure);
    }
    #[test]
    fn io_message_has_no_path() {
        let e = FsError::Io(io::Error::other("failed on /etc/shadow"));
        assert_eq!(e.to_string(), "Failure");
        let e = FsError::Io(io::Error::from_raw_os_error(5));
        assert_eq!(e.to_string(), "Input/output error");
    }
}
