//! Settings, as the binary reads them from `[nats]` in `sftpgate.toml` (every field has a
//! default), the subjects they imply, and [`connect`].

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// `[nats]`: the connection and the four parts built on it.
///
/// ```toml
/// [nats]
/// servers = ["nats://127.0.0.1:4222"]
/// subject_prefix = "sftpgate"
///
/// [nats.auth]
/// enabled = true
/// on_unavailable = "refuse"
///
/// [nats.provision]
/// timeout = "30s"
///
/// [nats.release]
/// outbox_dir = "nats-outbox"
///
/// [nats.events]
/// stream = "SFTPGATE_EVENTS"
/// ```
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Whether the server uses NATS at all (`sftpgate serve`'s switch; the library types
    /// work whatever it says).
    pub enabled: bool,
    /// Server URLs (`nats://host:port`); the client picks one and fails over to the others.
    pub servers: Vec<String>,
    /// First token(s) of every subject: `<prefix>.auth`, `<prefix>.provision`, …
    pub subject_prefix: String,
    /// The client's connection name, shown by the NATS server; also the `server` field of
    /// every event.
    pub connection_name: String,
    /// A `.creds` file (JWT and NKey seed).
    pub credentials_file: Option<PathBuf>,
    /// A token.
    pub token: Option<String>,
    /// User name (with `password`).
    pub user: Option<String>,
    /// Password (with `user`).
    pub password: Option<String>,
    /// How long [`connect`] waits for the first connection before it returns anyway (the
    /// client keeps connecting in the background).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The longest pause between two reconnect attempts.
    #[serde(with = "humantime_serde")]
    pub reconnect_delay_max: Duration,
    /// `[nats.auth]`
    pub auth: AuthHookConfig,
    /// `[nats.provision]`
    pub provision: ProvisionConfig,
    /// `[nats.release]`
    pub release: ReleaseConfig,
    /// `[nats.events]`
    pub events: EventsConfig,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            enabled: false,
            servers: vec!["nats://127.0.0.1:4222".into()],
            subject_prefix: "sftpgate".into(),
            connection_name: "sftpgate".into(),
            credentials_file: None,
            token: None,
            user: None,
            password: None,
            connect_timeout: Duration::from_secs(5),
            reconnect_delay_max: Duration::from_secs(2),
            auth: AuthHookConfig::default(),
            provision: ProvisionConfig::default(),
            release: ReleaseConfig::default(),
            events: EventsConfig::default(),
        }
    }
}

impl NatsConfig {
    /// The subjects under [`NatsConfig::subject_prefix`].
    pub fn subjects(&self) -> Subjects {
        Subjects::new(&self.subject_prefix)
    }

    /// Checks what serde cannot: a usable prefix and stream name, non-zero timeouts.
    pub fn validate(&self) -> Result<(), Error> {
        if self.servers.is_empty() {
            return Err(Error::Config("`servers` is empty".into()));
        }
        let prefix = &self.subject_prefix;
        if prefix.is_empty()
            || prefix.starts_with('.')
            || prefix.ends_with('.')
            || prefix.contains("..")
            || prefix
                .chars()
                .any(|c| c.is_whitespace() || c == '*' || c == '>')
        {
            return Err(Error::Config(format!(
                "`subject_prefix` {prefix:?} is not a NATS subject (no spaces, `*`, `>` or empty tokens)"
            )));
        }
        let stream = &self.events.stream;
        if stream.is_empty()
            || stream
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
        {
            return Err(Error::Config(format!(
                "`events.stream` {stream:?} is not a JetStream stream name (no spaces, `.`, `*`, `>`, `/`)"
            )));
        }
        for (name, value) in [
            ("auth.timeout", self.auth.timeout),
            ("provision.request_timeout", self.provision.request_timeout),
            ("provision.timeout", self.provision.timeout),
            ("release.request_timeout", self.release.request_timeout),
            ("release.backoff_initial", self.release.backoff_initial),
            ("release.backoff_max", self.release.backoff_max),
        ] {
            if value.is_zero() {
                return Err(Error::Config(format!("`{name}` must not be 0")));
            }
        }
        if self.events.buffer == 0 {
            return Err(Error::Config("`events.buffer` must not be 0".into()));
        }
        Ok(())
    }
}

/// `[nats.auth]`: the optional request on `<prefix>.auth` once a connection authenticated.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthHookConfig {
    /// Ask `<prefix>.auth` at all. When off, [`crate::NatsHooks`] accepts every connection
    /// with empty metadata and sends nothing.
    pub enabled: bool,
    /// How long to wait for the reply.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// What to do when no reply comes (not connected, no responder, timeout, or a reply
    /// that is not valid JSON of the schema).
    pub on_unavailable: OnUnavailable,
}

impl Default for AuthHookConfig {
    fn default() -> Self {
        AuthHookConfig {
            enabled: false,
            timeout: Duration::from_secs(5),
            on_unavailable: OnUnavailable::Refuse,
        }
    }
}

/// What the auth hook does when the auth service cannot be asked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// Close the connection (the default: a missing policy service lets nobody in).
    #[default]
    Refuse,
    /// Let the connection in with empty metadata.
    Continue,
}

/// `[nats.provision]`: the request on `<prefix>.provision` when a client opens SFTP.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProvisionConfig {
    /// Whether SFTP sessions get their storage from the provisioner (otherwise each user's
    /// own root, with NATS used for the other steps only).
    pub enabled: bool,
    /// How long to wait for the reply to the provision request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long provisioning may take in all, the request and the wait for readiness
    /// included. Keep it below the server's `timeouts.sftp_factory`, so that the client sees
    /// this step's message rather than the generic one.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for ProvisionConfig {
    fn default() -> Self {
        ProvisionConfig {
            enabled: true,
            request_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
        }
    }
}

/// `[nats.release]`: the request on `<prefix>.release` and the outbox behind it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ReleaseConfig {
    /// Where releases wait until they are acknowledged (one JSON file per allocation). The
    /// binary resolves a relative path against its data directory. One directory per server
    /// process.
    pub outbox_dir: PathBuf,
    /// How long to wait for one release request's reply.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The first pause between attempts; doubled after each failure.
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// The longest pause between attempts.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// How long a session's exit keeps trying itself before it leaves the release to the
    /// background [`crate::ReleaseOutbox::run`]. Keep it below `timeouts.exit`.
    #[serde(with = "humantime_serde")]
    pub exit_wait: Duration,
}

impl Default for ReleaseConfig {
    fn default() -> Self {
        ReleaseConfig {
            outbox_dir: "nats-outbox".into(),
            request_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            exit_wait: Duration::from_secs(10),
        }
    }
}

/// `[nats.events]`: the JetStream stream events are published to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Publish events at all. The library does not look at it: the binary hands the server
    /// a [`crate::NatsEvents`] only when it is set.
    pub enabled: bool,
    /// The stream's name. It is created (file storage, subjects `<prefix>.events.>`) if it
    /// does not exist; an existing one is used as it is.
    pub stream: String,
    /// Events buffered between the server and the publisher; past it they are dropped and
    /// counted (`sftpgate_nats_events_dropped_total`).
    pub buffer: usize,
    /// How long the stream keeps events when this server creates it; `0s`: forever.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// How long to wait for one publish acknowledgement.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            enabled: true,
            stream: "SFTPGATE_EVENTS".into(),
            buffer: 4096,
            max_age: Duration::from_secs(7 * 24 * 3600),
            ack_timeout: Duration::from_secs(5),
        }
    }
}

/// The subjects of one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// The subjects under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Subjects {
            prefix: prefix.to_owned(),
        }
    }

    /// `<prefix>.auth`
    pub fn auth(&self) -> String {
        format!("{}.auth", self.prefix)
    }

    /// `<prefix>.provision`
    pub fn provision(&self) -> String {
        format!("{}.provision", self.prefix)
    }

    /// `<prefix>.ready.<allocation_id>`
    pub fn ready(&self, allocation_id: &str) -> String {
        format!("{}.ready.{allocation_id}", self.prefix)
    }

    /// `<prefix>.release`
    pub fn release(&self) -> String {
        format!("{}.release", self.prefix)
    }

    /// `<prefix>.events.<event type>`, e.g. `sftpgate.events.file.upload`.
    pub fn event(&self, event_type: &str) -> String {
        format!("{}.events.{event_type}", self.prefix)
    }

    /// `<prefix>.events.>`: every event.
    pub fn all_events(&self) -> String {
        format!("{}.events.>", self.prefix)
    }
}

/// Connects to NATS with `config`'s servers and credentials. The client reconnects forever
/// (at most [`NatsConfig::reconnect_delay_max`] apart) and keeps subscriptions across
/// reconnects. When no server answers within [`NatsConfig::connect_timeout`] it still
/// returns the client, which goes on connecting in the background: requests fail as "not
/// connected" until then, and releases wait in the outbox.
pub async fn connect(config: &NatsConfig) -> Result<async_nats::Client, Error> {
    config.validate()?;
    let mut options = async_nats::ConnectOptions::new()
        .name(&config.connection_name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(config.connect_timeout)
        .reconnect_delay_callback({
            let max = config.reconnect_delay_max;
            move |attempts| backoff(Duration::from_millis(50), max, attempts as u32)
        })
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("connected to NATS"),
                async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS"),
                other => tracing::debug!(event = %other, "NATS client event"),
            }
        });
    if let Some(path) = &config.credentials_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| Error::Connect(format!("credentials file {}: {e}", path.display())))?;
    }
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    match (&config.user, &config.password) {
        (Some(user), Some(password)) => {
            options = options.user_and_password(user.clone(), password.clone());
        }
        (None, None) => {}
        _ => return Err(Error::Config("`user` and `password` go together".into())),
    }
    let mut addrs = Vec::new();
    for server in &config.servers {
        addrs.push(
            server
                .parse::<async_nats::ServerAddr>()
                .map_err(|e| Error::Config(format!("server {server:?}: {e}")))?,
        );
    }
    let client = options
        .connect(addrs)
        .await
        .map_err(|e| Error::Connect(e.to_string()))?;
    if !wait_connected(&client, config.connect_timeout).await {
        tracing::warn!(
            servers = ?config.servers,
            "NATS not reachable yet; connecting in the background"
        );
    }
    Ok(client)
}

/// Waits up to `timeout` for `client` to be connected; whether it is.
pub async fn wait_connected(client: &async_nats::Client, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if client.connection_state() == async_nats::connection::State::Connected {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        // The client has no public state watch; a short poll bounded by the deadline.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `initial * 2^attempt`, capped at `max`.
pub(crate) fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    initial
        .checked_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_toml_like_json() {
        let config = NatsConfig::default();
        let text = serde_json::to_string(&config).unwrap();
        let back: NatsConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(back, config);
        config.validate().unwrap();
    }

    #[test]
    fn empty_section_is_the_defaults() {
        let config: NatsConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(config, NatsConfig::default());
        let auth: AuthHookConfig =
            serde_json::from_str(r#"{"on_unavailable":"continue","timeout":"250ms"}"#).unwrap();
        assert_eq!(auth.on_unavailable, OnUnavailable::Continue);
        assert_eq!(auth.timeout, Duration::from_millis(250));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = serde_json::from_str::<NatsConfig>(r#"{"prefix":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `prefix`"), "{err}");
    }

    fn check_prefix(prefix: &str, ok: bool) {
        let config = NatsConfig {
            subject_prefix: prefix.into(),
            ..NatsConfig::default()
        };
        assert_eq!(config.validate().is_ok(), ok, "{prefix:?}");
    }

    #[test]
    fn prefixes() {
        check_prefix("sftpgate", true);
        check_prefix("acme.sftp", true);
        check_prefix("", false);
        check_prefix("a..b", false);
        check_prefix("a.*", false);
        check_prefix("a b", false);
        check_prefix(".a", false);
    }

    #[test]
    fn stream_names() {
        let mut config = NatsConfig::default();
        config.events.stream = "a.b".into();
        assert!(config.validate().is_err());
    }

    #[test]
    fn subjects() {
        let s = Subjects::new("acme");
        assert_eq!(s.auth(), "acme.auth");
        assert_eq!(s.provision(), "acme.provision");
        assert_eq!(s.ready("a1"), "acme.ready.a1");
        assert_eq!(s.release(), "acme.release");
        assert_eq!(s.event("file.upload"), "acme.events.file.upload");
        assert_eq!(s.all_events(), "acme.events.>");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let ms = Duration::from_millis;
        assert_eq!(backoff(ms(100), ms(1000), 0), ms(100));
        assert_eq!(backoff(ms(100), ms(1000), 1), ms(200));
        assert_eq!(backoff(ms(100), ms(1000), 3), ms(800));
        assert_eq!(backoff(ms(100), ms(1000), 4), ms(1000));
        assert_eq!(backoff(ms(100), ms(1000), 1000), ms(1000));
    }
}
