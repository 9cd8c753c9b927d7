//! Every call to the store goes through [`call`]: under a timeout, with its error mapped to
//! an [`FsError`] a client can read (no key, no bucket, no endpoint in the message).
//!
//! Transient failures (connection errors, 5xx, 429) are retried with exponential backoff by
//! `object_store`'s own HTTP client, configured from [`crate::ObjectConfig`]; the timeout
//! here bounds the whole call, retries included, so a store that stops answering costs a
//! request at most `call_timeout`, never the session.

use std::future::Future;
use std::time::Duration;

use sftpgate_vfs::FsError;

/// Runs one store operation under `timeout`; `what` names it in logs and messages.
pub(crate) async fn call<T, F>(timeout: Duration, what: &'static str, op: F) -> Result<T, FsError>
where
    F: Future<Output = object_store::Result<T>>,
{
    match tokio::time::timeout(timeout, op).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(map_error(what, e)),
        Err(_) => {
            tracing::warn!(operation = what, ?timeout, "object storage call timed out");
            Err(FsError::TimedOut)
        }
    }
}

/// The one map from store errors to storage errors. The store's own message names keys
/// and endpoints, so it goes to the log; the client reads what it can act on.
pub(crate) fn map_error(what: &'static str, e: object_store::Error) -> FsError {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => FsError::NotFound,
        E::AlreadyExists { .. } => FsError::AlreadyExists,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
            tracing::warn!(operation = what, error = %e, "object storage refused access");
            FsError::PermissionDenied
        }
        E::NotSupported { .. } | E::NotImplemented { .. } => {
            FsError::Unsupported(format!("{what} on this object storage").into())
        }
        other => {
            tracing::warn!(operation = what, error = %other, "object storage call failed");
            FsError::Other(format!("object storage {what} failed; try again later"))
        }
    }
}

/// A copy of an error for a second waiter on the same shared fetch (FsError is not `Clone`:
/// its `Io` variant holds an `io::Error`).
pub(crate) fn duplicate(e: &FsError) -> FsError {
    match e {
        FsError::NotFound => FsError::NotFound,
        FsError::PermissionDenied => FsError::PermissionDenied,
        FsError::TimedOut => FsError::TimedOut,
        FsError::Eof => FsError::Eof,
        FsError::Unsupported(m) => FsError::Unsupported(m.clone()),
        FsError::InvalidInput(m) => FsError::InvalidInput(m.clone()),
        other => FsError::Other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sftpgate_proto::StatusCode;

    fn check(e: object_store::Error, code: StatusCode) {
        let mapped = map_error("test", e);
        assert_eq!(StatusCode::from(&mapped), code, "{mapped:?}");
        assert!(
            !mapped.to_string().contains("secret/key"),
            "message names the key: {mapped}"
        );
    }

    fn source() -> Box<dyn std::error::Error + Send + Sync> {
        "at secret/key".into()
    }

    #[test]
    fn not_found() {
        check(
            object_store::Error::NotFound {
                path: "secret/key".into(),
                source: source(),
            },
            StatusCode::NoSuchFile,
        );
    }
    #[test]
    fn denied() {
        check(
            object_store::Error::PermissionDenied {
                path: "secret/key".into(),
                source: source(),
            },
            StatusCode::PermissionDenied,
        );
    }
    #[test]
    fn unsupported() {
        check(
            object_store::Error::NotSupported { source: source() },
            StatusCode::OpUnsupported,
        );
    }
    #[test]
    fn generic_is_failure_without_the_key() {
        check(
            object_store::Error::Generic {
                store: "S3",
                source: source(),
            },
            StatusCode::Failure,
        );
    }
    #[tokio::test(start_paused = true)]
    async fn timeout_is_timed_out() {
        let never = std::future::pending::<object_store::Result<()>>();
        let err = call(Duration::from_secs(5), "head", never)
            .await
            .unwrap_err();
        assert!(matches!(err, FsError::TimedOut));
        assert_eq!(StatusCode::from(&err), StatusCode::Failure);
    }
}
