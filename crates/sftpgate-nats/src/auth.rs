//! [`NatsHooks`]: step 1 of the lifecycle over NATS — ask `<prefix>.auth` whether an
//! authenticated connection may go on, and keep the metadata the answer attaches.

use std::sync::Arc;

use async_nats::Client;
use sftpgate_server::{AuthMethod, ConnectionInfo, HookError, Hooks};

use crate::config::{AuthHookConfig, NatsConfig, OnUnavailable, Subjects};
use crate::request::request;
use crate::wire::{AuthReply, AuthRequest, Metadata, PROTOCOL_VERSION};

/// The [`Hooks`] of a NATS-provisioned server: when `[nats.auth]` is enabled, a request on
/// `<prefix>.auth` per connection; its reply refuses the connection (with the reason the
/// client sees) or accepts it with metadata, kept as the connection's state and sent with
/// every provision request. When disabled, every connection goes on with empty metadata.
#[derive(Debug, Clone)]
pub struct NatsHooks {
    client: Client,
    subject: String,
    config: AuthHookConfig,
}

impl NatsHooks {
    /// Hooks asking `config.auth` on `client`.
    pub fn new(client: Client, config: &NatsConfig) -> Self {
        NatsHooks {
            client,
            subject: Subjects::new(&config.subject_prefix).auth(),
            config: config.auth.clone(),
        }
    }
}

/// A connection's state: what the auth service attached (empty without the auth step).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuthMetadata(pub Metadata);

/// Connection state that carries metadata for provision requests. Implemented for
/// [`AuthMetadata`] ([`NatsHooks`]' state) and `()` (servers without the auth step, such as
/// with `NoHooks`).
pub trait MetadataSource: Send + Sync + 'static {
    /// The metadata; `None` for none.
    fn metadata(&self) -> Option<&Metadata>;
}

impl MetadataSource for AuthMetadata {
    fn metadata(&self) -> Option<&Metadata> {
        Some(&self.0)
    }
}

impl MetadataSource for () {
    fn metadata(&self) -> Option<&Metadata> {
        None
    }
}

impl<T: MetadataSource> MetadataSource for Arc<T> {
    fn metadata(&self) -> Option<&Metadata> {
        (**self).metadata()
    }
}

impl Hooks for NatsHooks {
    type State = AuthMetadata;

    async fn auth_completed(&self, connection: &ConnectionInfo) -> Result<AuthMetadata, HookError> {
        if !self.config.enabled {
            return Ok(AuthMetadata::default());
        }
        let body = AuthRequest {
            version: PROTOCOL_VERSION,
            connection_id: connection.id.to_string(),
            user: connection.user.clone(),
            peer: connection.peer.to_string(),
            method: connection.method.name().to_owned(),
            key_fingerprint: match &connection.method {
                AuthMethod::PublicKey { fingerprint } => Some(fingerprint.clone()),
                _ => None,
            },
        };
        match request::<_, AuthReply>(&self.client, &self.subject, &body, self.config.timeout).await
        {
            Ok(AuthReply::Accepted { metadata }) => {
                metrics::counter!("sftpgate_nats_auth_total", "outcome" => "accepted").increment(1);
                Ok(AuthMetadata(metadata))
            }
            Ok(AuthReply::Refused { reason }) => {
                metrics::counter!("sftpgate_nats_auth_total", "outcome" => "refused").increment(1);
                tracing::info!(%reason, "auth service refused the connection");
                Err(HookError::new(reason))
            }
            // Not connected, no responder, timeout, or an answer outside the schema: the
            // service could not be asked. `on_unavailable` decides.
            Err(error) => match self.config.on_unavailable {
                OnUnavailable::Refuse => {
                    metrics::counter!("sftpgate_nats_auth_total", "outcome" => "unavailable_refused")
                        .increment(1);
                    tracing::warn!(%error, "auth service unavailable; connection refused");
                    Err(HookError::with_source(
                        "authorisation service unavailable, try again later",
                        error,
                    ))
                }
                OnUnavailable::Continue => {
                    metrics::counter!("sftpgate_nats_auth_total", "outcome" => "unavailable_continued")
                        .increment(1);
                    tracing::warn!(%error, "auth service unavailable; connection continues without metadata");
                    Ok(AuthMetadata::default())
                }
            },
        }
    }
}
