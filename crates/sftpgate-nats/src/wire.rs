//! The JSON payloads on the request subjects, version 1 (docs/nats.md describes each with
//! examples). Requests carry `"version": 1`; replies are tagged by `"status"`. Unknown fields
//! are ignored both ways, so either side may add optional fields without a new version.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The version every request carries.
pub const PROTOCOL_VERSION: u32 = 1;

/// Metadata the auth service attached to a connection: any JSON object.
pub type Metadata = Map<String, Value>;

/// `<prefix>.auth` request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthRequest {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The connection, e.g. `c17` (unique for the life of the server process).
    pub connection_id: String,
    /// The authenticated user name.
    pub user: String,
    /// The client's address, `ip:port`.
    pub peer: String,
    /// `password`, `publickey` or `keyboard-interactive`.
    pub method: String,
    /// `SHA256:…` fingerprint of the key, for `publickey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
}

/// `<prefix>.auth` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum AuthReply {
    /// Let the connection in; `metadata` is kept for the connection and sent with every
    /// provision request.
    Accepted {
        /// Any JSON object.
        #[serde(default)]
        metadata: Metadata,
    },
    /// Close the connection; `reason` is shown to the client.
    Refused {
        /// Why, for the client.
        reason: String,
    },
}

/// `<prefix>.provision` request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProvisionRequest {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Chosen by the server, unique: `[0-9a-f]{32}`. The readiness message goes to
    /// `ready_subject`, on which the server subscribed before sending this.
    pub allocation_id: String,
    /// `<prefix>.ready.<allocation_id>`.
    pub ready_subject: String,
    /// The connection, e.g. `c17`.
    pub connection_id: String,
    /// The SFTP session, e.g. `s42`.
    pub session_id: String,
    /// The user name.
    pub user: String,
    /// The client's address.
    pub peer: String,
    /// The SSH channel number of the `sftp` subsystem channel.
    pub channel: u32,
    /// What the auth reply attached to the connection (`{}` without the auth step).
    #[serde(default)]
    pub metadata: Metadata,
}

/// `<prefix>.provision` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ProvisionReply {
    /// The storage is ready now.
    Ready {
        /// Where the session's files live.
        backend: Backend,
    },
    /// Being set up: a [`ReadyMessage`] follows on the ready subject.
    Accepted {
        /// Must be the request's `allocation_id`.
        allocation_id: String,
    },
    /// Nothing was allocated; `reason` is shown to the client. No release follows.
    Refused {
        /// Why, for the client.
        reason: String,
    },
}

/// The message on `<prefix>.ready.<allocation_id>` after an `accepted` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ReadyMessage {
    /// The storage is ready.
    Ready {
        /// Where the session's files live.
        backend: Backend,
    },
    /// Setting it up failed; `reason` is shown to the client. The allocation is still
    /// released.
    Failed {
        /// Why, for the client.
        reason: String,
    },
}

/// Where a session's files live, tagged by `"kind"`.
///
/// `local` (a directory) and `object_store` (a bucket prefix). The kind `sftp` (an upstream
/// SFTP server) is reserved for a backend that comes next; a reply with any kind this server
/// does not know is refused with a clear error rather than misread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Backend {
    /// A directory on this server's host (a mounted volume, say) that becomes the session's
    /// root.
    Local {
        /// Absolute path of the directory.
        path: PathBuf,
    },
    /// A key prefix of a bucket on the server's configured object store (its `[s3]`
    /// section): the session's files are the keys `<prefix>/…` (docs/object-storage.md).
    ObjectStore {
        /// The bucket.
        bucket: String,
        /// The key prefix, e.g. `sessions/<allocation_id>`; not empty.
        prefix: String,
    },
}

impl Backend {
    /// The kinds this version understands.
    pub const KINDS: &'static [&'static str] = &["local", "object_store"];

    /// The kind's name as the JSON spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            Backend::Local { .. } => "local",
            Backend::ObjectStore { .. } => "object_store",
        }
    }
}

/// The derived form of [`Backend`], read once the kind is known to be supported.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum BackendRepr {
    Local { path: PathBuf },
    ObjectStore { bucket: String, prefix: String },
}

impl<'de> Deserialize<'de> for Backend {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let value = Value::deserialize(deserializer)?;
        let kind = match value.get("kind") {
            Some(Value::String(kind)) => kind.as_str(),
            Some(_) => return Err(D::Error::custom("backend \"kind\" is not a string")),
            None => return Err(D::Error::custom("backend has no \"kind\"")),
        };
        if !Backend::KINDS.contains(&kind) {
            return Err(D::Error::custom(format!(
                "unsupported backend kind {kind:?} (this server supports: {})",
                Backend::KINDS.join(", ")
            )));
        }
        let repr = BackendRepr::deserialize(value).map_err(D::Error::custom)?;
        Ok(match repr {
            BackendRepr::Local { path } => Backend::Local { path },
            BackendRepr::ObjectStore { bucket, prefix } => Backend::ObjectStore { bucket, prefix },
        })
    }
}

/// `<prefix>.release` request. Sent at least once per allocation; the receiver must treat a
/// repeated `idempotency_key` as already done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRequest {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The allocation.
    pub allocation_id: String,
    /// The same on every retry of this release: `<allocation_id>.release`.
    pub idempotency_key: String,
    /// A stable label: an SFTP end reason (`client_eof`, `client_closed`,
    /// `connection_lost`, `idle_timeout`, `keepalive_timeout`, `protocol_error`, `shutdown`,
    /// `aborted`) or, for a session that never started, `provision_timeout`,
    /// `provision_failed`, `provision_cancelled`; `server_restart` for an allocation found in
    /// the outbox of a server that stopped before the session ended.
    pub reason: String,
    /// Human-readable detail of the reason.
    #[serde(default)]
    pub reason_detail: String,
    /// The connection, e.g. `c17`.
    pub connection_id: String,
    /// The SFTP session, e.g. `s42`.
    pub session_id: String,
    /// The user name.
    pub user: String,
    /// Statistics of the session, when it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<SessionStats>,
    /// When the release was decided, RFC 3339.
    pub time: String,
}

/// What a session did, sent with its release.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStats {
    /// File bytes the client wrote.
    pub bytes_in: u64,
    /// File bytes the client read.
    pub bytes_out: u64,
    /// From the start of serving to the exit, milliseconds.
    pub duration_ms: u64,
}

/// `<prefix>.release` reply. `released` and `already_released` acknowledge the release;
/// `error` (or no reply) makes the server retry later with the same idempotency key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ReleaseReply {
    /// Released now (also for an allocation the receiver never saw).
    Released,
    /// This idempotency key was released before.
    AlreadyReleased,
    /// Not released; retried later.
    Error {
        /// Why.
        reason: String,
    },
}

/// The current time as RFC 3339 with milliseconds, UTC.
pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check_provision_reply(value: Value, expected: Result<ProvisionReply, &str>) {
        let got = serde_json::from_value::<ProvisionReply>(value);
        match (got, expected) {
            (Ok(got), Ok(expected)) => assert_eq!(got, expected),
            (Err(e), Err(fragment)) => assert!(e.to_string().contains(fragment), "{e}"),
            (got, expected) => panic!("got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn ready_local() {
        check_provision_reply(
            json!({"status":"ready","backend":{"kind":"local","path":"/v/1"}}),
            Ok(ProvisionReply::Ready {
                backend: Backend::Local {
                    path: "/v/1".into(),
                },
            }),
        );
    }

    #[test]
    fn accepted() {
        check_provision_reply(
            json!({"status":"accepted","allocation_id":"ab"}),
            Ok(ProvisionReply::Accepted {
                allocation_id: "ab".into(),
            }),
        );
    }

    #[test]
    fn refused() {
        check_provision_reply(
            json!({"status":"refused","reason":"quota exceeded"}),
            Ok(ProvisionReply::Refused {
                reason: "quota exceeded".into(),
            }),
        );
    }

    #[test]
    fn unknown_kind_is_a_clear_error() {
        check_provision_reply(
            json!({"status":"ready","backend":{"kind":"s3","bucket":"b"}}),
            Err("unsupported backend kind \"s3\" (this server supports: local, object_store)"),
        );
    }

    #[test]
    fn backend_without_kind() {
        check_provision_reply(
            json!({"status":"ready","backend":{"path":"/x"}}),
            Err("backend has no \"kind\""),
        );
    }

    #[test]
    fn local_without_path() {
        check_provision_reply(
            json!({"status":"ready","backend":{"kind":"local"}}),
            Err("missing field `path`"),
        );
    }

    #[test]
    fn unknown_status() {
        check_provision_reply(json!({"status":"maybe"}), Err("unknown variant `maybe`"));
    }

    #[test]
    fn extra_fields_are_ignored() {
        check_provision_reply(
            json!({"status":"refused","reason":"no","retry_after":5}),
            Ok(ProvisionReply::Refused {
                reason: "no".into(),
            }),
        );
    }

    #[test]
    fn object_store_backend_round_trips() {
        let backend = Backend::ObjectStore {
            bucket: "b".into(),
            prefix: "sessions/a1".into(),
        };
        let value = serde_json::to_value(&backend).unwrap();
        assert_eq!(
            value,
            json!({"kind":"object_store","bucket":"b","prefix":"sessions/a1"})
        );
        assert_eq!(serde_json::from_value::<Backend>(value).unwrap(), backend);
        assert_eq!(backend.kind(), "object_store");
    }

    #[test]
    fn backend_serialises_with_its_kind() {
        let backend = Backend::Local {
            path: "/v/1".into(),
        };
        assert_eq!(
            serde_json::to_value(&backend).unwrap(),
            json!({"kind":"local","path":"/v/1"})
        );
        assert_eq!(backend.kind(), "local");
    }

    #[test]
    fn release_replies() {
        let ack: ReleaseReply = serde_json::from_value(json!({"status":"released"})).unwrap();
        assert_eq!(ack, ReleaseReply::Released);
        let dup: ReleaseReply =
            serde_json::from_value(json!({"status":"already_released"})).unwrap();
        assert_eq!(dup, ReleaseReply::AlreadyReleased);
    }

    #[test]
    fn auth_accept_without_metadata() {
        let reply: AuthReply = serde_json::from_value(json!({"status":"accepted"})).unwrap();
        assert_eq!(
            reply,
            AuthReply::Accepted {
                metadata: Metadata::new()
            }
        );
    }
}
