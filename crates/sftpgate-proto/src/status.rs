//! SSH_FXP_STATUS codes (draft-ietf-secsh-filexfer-02 §7).

/// The status code of an SSH_FXP_STATUS reply. Codes outside v3's range survive a round trip
/// as [`StatusCode::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusCode {
    /// SSH_FX_OK: the operation succeeded.
    Ok,
    /// SSH_FX_EOF: end of file, or no more directory entries.
    Eof,
    /// SSH_FX_NO_SUCH_FILE: a path or handle names nothing that exists.
    NoSuchFile,
    /// SSH_FX_PERMISSION_DENIED.
    PermissionDenied,
    /// SSH_FX_FAILURE: any other error; the message says which.
    Failure,
    /// SSH_FX_BAD_MESSAGE: the request was malformed.
    BadMessage,
    /// SSH_FX_NO_CONNECTION (client-side only).
    NoConnection,
    /// SSH_FX_CONNECTION_LOST (client-side only).
    ConnectionLost,
    /// SSH_FX_OP_UNSUPPORTED: the server does not implement the operation.
    OpUnsupported,
    /// A code beyond SFTP v3 (9 and up; [`StatusCode::from_code`] never builds it for the
    /// codes above).
    Other(u32),
}

impl StatusCode {
    /// The code as it goes on the wire.
    pub fn code(self) -> u32 {
        match self {
            StatusCode::Ok => 0,
            StatusCode::Eof => 1,
            StatusCode::NoSuchFile => 2,
            StatusCode::PermissionDenied => 3,
            StatusCode::Failure => 4,
            StatusCode::BadMessage => 5,
            StatusCode::NoConnection => 6,
            StatusCode::ConnectionLost => 7,
            StatusCode::OpUnsupported => 8,
            StatusCode::Other(code) => code,
        }
    }

    /// The code a wire value stands for.
    pub fn from_code(code: u32) -> StatusCode {
        match code {
            0 => StatusCode::Ok,
            1 => StatusCode::Eof,
            2 => StatusCode::NoSuchFile,
            3 => StatusCode::PermissionDenied,
            4 => StatusCode::Failure,
            5 => StatusCode::BadMessage,
            6 => StatusCode::NoConnection,
            7 => StatusCode::ConnectionLost,
            8 => StatusCode::OpUnsupported,
            other => StatusCode::Other(other),
        }
    }

    /// The default English message for the code, as OpenSSH's sftp-server sends it.
    pub fn default_message(self) -> &'static str {
        match self {
            StatusCode::Ok => "Success",
            StatusCode::Eof => "End of file",
            StatusCode::NoSuchFile => "No such file",
            StatusCode::PermissionDenied => "Permission denied",
            StatusCode::Failure => "Failure",
            StatusCode::BadMessage => "Bad message",
            StatusCode::NoConnection => "No connection",
            StatusCode::ConnectionLost => "Connection lost",
            StatusCode::OpUnsupported => "Operation unsupported",
            StatusCode::Other(_) => "Unknown error",
        }
    }
}
