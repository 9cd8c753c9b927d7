//! Per-request metrics at a cost fit for the request path: no allocation, no label building
//! and no shared lock per request.
//!
//! The `metrics` macros build a fresh label `Vec` whenever a label value is not a literal,
//! and every macro call looks the key up in the recorder (a shared lock and a reference
//! count). So `sftpgate_requests_total{op, status}` uses keys built once per process (one
//! per operation and status, [`REQUEST_KEYS`]), and each session keeps the handles it has
//! used ([`SessionMetrics`]): a request costs one atomic load and the counter's own atomic
//! add. The in-flight gauge and the byte counters are registered once per session.

use std::sync::{LazyLock, OnceLock};

use metrics::{Counter, Gauge, Key, Label, Level, Metadata};
use sftpgate_proto::{ExtendedRequest, Request, StatusCode};

/// Requests answered, by operation and reply status.
pub(crate) const REQUESTS_TOTAL: &str = "sftpgate_requests_total";
/// Requests received and not yet answered.
pub(crate) const REQUESTS_IN_FLIGHT: &str = "sftpgate_requests_in_flight";
/// File bytes written by clients.
pub(crate) const BYTES_IN: &str = "sftpgate_bytes_in_total";
/// File bytes read by clients.
pub(crate) const BYTES_OUT: &str = "sftpgate_bytes_out_total";

/// The `op` label of every request, as OpenSSH's sftp-server names them; unknown extensions
/// are `extended` (their names come from the client and would make the label unbounded).
const OPS: &[&str] = &[
    "open",
    "close",
    "read",
    "write",
    "lstat",
    "fstat",
    "setstat",
    "fsetstat",
    "opendir",
    "readdir",
    "remove",
    "mkdir",
    "rmdir",
    "realpath",
    "stat",
    "rename",
    "readlink",
    "symlink",
    "posix-rename",
    "statvfs",
    "fstatvfs",
    "hardlink",
    "fsync",
    "lsetstat",
    "limits",
    "expand-path",
    "copy-data",
    "home-directory",
    "users-groups-by-id",
    "extended",
    // INIT is answered by the session, never dispatched; kept so that every request has a
    // row.
    "init",
];

/// The `status` label: the reply's SFTP status (`ok` for data replies too).
const STATUSES: &[&str] = &[
    "ok",
    "eof",
    "no_such_file",
    "permission_denied",
    "failure",
    "bad_message",
    "no_connection",
    "connection_lost",
    "op_unsupported",
    "other",
];

static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, None);

/// `sftpgate_requests_total` keys, `OPS.len() * STATUSES.len()`, built on first use. Keys do
/// not depend on the recorder, so this works whenever the recorder is installed.
static REQUEST_KEYS: LazyLock<Vec<Key>> = LazyLock::new(|| {
    let mut keys = Vec::with_capacity(OPS.len() * STATUSES.len());
    for op in OPS {
        for status in STATUSES {
            keys.push(Key::from_parts(
                REQUESTS_TOTAL,
                vec![Label::new("op", *op), Label::new("status", *status)],
            ));
        }
    }
    keys
});

/// A request's operation, for the `op` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestOp(usize);

impl RequestOp {
    /// The operation of `request`.
    pub(crate) fn of(request: &Request) -> RequestOp {
        let index = match request {
            Request::Open { .. } => 0,
            Request::Close { .. } => 1,
            Request::Read { .. } => 2,
            Request::Write { .. } => 3,
            Request::Lstat { .. } => 4,
            Request::Fstat { .. } => 5,
            Request::Setstat { .. } => 6,
            Request::Fsetstat { .. } => 7,
            Request::Opendir { .. } => 8,
            Request::Readdir { .. } => 9,
            Request::Remove { .. } => 10,
            Request::Mkdir { .. } => 11,
            Request::Rmdir { .. } => 12,
            Request::Realpath { .. } => 13,
            Request::Stat { .. } => 14,
            Request::Rename { .. } => 15,
            Request::Readlink { .. } => 16,
            Request::Symlink { .. } => 17,
            Request::Extended { request, .. } => match request {
                ExtendedRequest::PosixRename { .. } => 18,
                ExtendedRequest::Statvfs { .. } => 19,
                ExtendedRequest::Fstatvfs { .. } => 20,
                ExtendedRequest::Hardlink { .. } => 21,
                ExtendedRequest::Fsync { .. } => 22,
                ExtendedRequest::Lsetstat { .. } => 23,
                ExtendedRequest::Limits => 24,
                ExtendedRequest::ExpandPath { .. } => 25,
                ExtendedRequest::CopyData { .. } => 26,
                ExtendedRequest::HomeDirectory { .. } => 27,
                ExtendedRequest::UsersGroupsById { .. } => 28,
                ExtendedRequest::Unknown { .. } => 29,
            },
            Request::Init { .. } => 30,
        };
        RequestOp(index)
    }

    /// The label value.
    #[cfg(test)]
    fn label(self) -> &'static str {
        OPS[self.0]
    }
}

fn status_index(status: StatusCode) -> usize {
    match status {
        StatusCode::Ok => 0,
        StatusCode::Eof => 1,
        StatusCode::NoSuchFile => 2,
        StatusCode::PermissionDenied => 3,
        StatusCode::Failure => 4,
        StatusCode::BadMessage => 5,
        StatusCode::NoConnection => 6,
        StatusCode::ConnectionLost => 7,
        StatusCode::OpUnsupported => 8,
        StatusCode::Other(_) => 9,
    }
}

/// One session's handles on the metrics it updates per request, registered with the
/// recorder installed when the session starts (`requests`: when a combination is first
/// used).
pub(crate) struct SessionMetrics {
    in_flight: Gauge,
    pub(crate) bytes_in: Counter,
    pub(crate) bytes_out: Counter,
    /// `sftpgate_requests_total` handles, indexed like [`REQUEST_KEYS`] (about 7 KiB).
    requests: Box<[OnceLock<Counter>]>,
}

impl SessionMetrics {
    pub(crate) fn register() -> SessionMetrics {
        SessionMetrics {
            in_flight: metrics::gauge!(REQUESTS_IN_FLIGHT),
            bytes_in: metrics::counter!(BYTES_IN),
            bytes_out: metrics::counter!(BYTES_OUT),
            requests: (0..OPS.len() * STATUSES.len())
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    /// Counts one answered request.
    pub(crate) fn count_request(&self, op: RequestOp, status: StatusCode) {
        let index = op.0 * STATUSES.len() + status_index(status);
        self.requests[index]
            .get_or_init(|| {
                metrics::with_recorder(|r| r.register_counter(&REQUEST_KEYS[index], &METADATA))
            })
            .increment(1);
    }

    /// Counts a request in flight until the returned guard is dropped (however its task
    /// ends, aborted included).
    pub(crate) fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.increment(1.0);
        InFlight(&self.in_flight)
    }
}

/// One request in flight; the gauge goes down when this is dropped.
#[must_use = "the request stops counting as in flight when this is dropped"]
pub(crate) struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn every_op_has_its_label() {
        let check =
            |request: Request, label: &str| assert_eq!(RequestOp::of(&request).label(), label);
        check(
            Request::Init {
                version: 3,
                extensions: Vec::new(),
            },
            "init",
        );
        check(
            Request::Read {
                id: 1,
                handle: Bytes::new(),
                offset: 0,
                len: 1,
            },
            "read",
        );
        check(
            Request::Symlink {
                id: 1,
                linkpath: Bytes::new(),
                targetpath: Bytes::new(),
            },
            "symlink",
        );
        check(
            Request::Extended {
                id: 1,
                request: ExtendedRequest::Limits,
            },
            "limits",
        );
        check(
            Request::Extended {
                id: 1,
                request: ExtendedRequest::UsersGroupsById {
                    uids: vec![],
                    gids: vec![],
                },
            },
            "users-groups-by-id",
        );
        check(
            Request::Extended {
                id: 1,
                request: ExtendedRequest::Unknown {
                    name: "x@example.com".into(),
                    data: Bytes::new(),
                },
            },
            "extended",
        );
    }

    #[test]
    fn known_extension_labels_are_their_names_without_the_domain() {
        // The labels of the known extensions follow the wire names, so that a dashboard reads
        // like the protocol.
        for (request, index) in [
            (
                ExtendedRequest::PosixRename {
                    oldpath: Bytes::new(),
                    newpath: Bytes::new(),
                },
                18,
            ),
            (
                ExtendedRequest::CopyData {
                    read_handle: Bytes::new(),
                    read_offset: 0,
                    read_length: 0,
                    write_handle: Bytes::new(),
                    write_offset: 0,
                },
                26,
            ),
        ] {
            let wire = request.name().to_owned();
            let op = RequestOp::of(&Request::Extended { id: 1, request });
            assert_eq!(op, RequestOp(index));
            assert!(wire.starts_with(op.label()), "{wire} vs {}", op.label());
        }
    }

    #[test]
    fn session_handles_count_into_the_recorder() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let session = SessionMetrics::register();
            let write = RequestOp::of(&Request::Write {
                id: 1,
                handle: Bytes::new(),
                offset: 0,
                data: Bytes::new().into(),
            });
            session.count_request(write, StatusCode::NoSuchFile);
            session.count_request(write, StatusCode::NoSuchFile);
            session.count_request(write, StatusCode::Ok);
            let first = session.in_flight();
            let second = session.in_flight();
            drop(first);
            let rendered = handle.render();
            assert!(
                rendered.contains("sftpgate_requests_in_flight 1\n"),
                "{rendered}"
            );
            drop(second);
            session.bytes_in.increment(10);
        });
        let rendered = handle.render();
        for line in [
            "sftpgate_requests_total{op=\"write\",status=\"no_such_file\"} 2\n",
            "sftpgate_requests_total{op=\"write\",status=\"ok\"} 1\n",
            "sftpgate_requests_in_flight 0\n",
            "sftpgate_bytes_in_total 10\n",
        ] {
            assert!(rendered.contains(line), "{line} in {rendered}");
        }
    }

    #[test]
    fn keys_cover_every_op_and_status() {
        assert_eq!(REQUEST_KEYS.len(), OPS.len() * STATUSES.len());
        assert_eq!(status_index(StatusCode::Other(42)), STATUSES.len() - 1);
        let key =
            &REQUEST_KEYS[RequestOp(3).0 * STATUSES.len() + status_index(StatusCode::NoSuchFile)];
        let labels: Vec<_> = key.labels().map(|l| (l.key(), l.value())).collect();
        assert_eq!(labels, [("op", "write"), ("status", "no_such_file")]);
    }
}
