//! `sftpgate.toml`: every setting of the server, with defaults that run on a laptop as is.
//! Precedence, lowest first: defaults, the config file, `SFTPGATE_*` environment variables
//! (one per key, e.g. `SFTPGATE_TIMEOUTS_SFTP_FACTORY=10s`), command-line flags.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

/// Most `connection_threads`: a thread each, so a typo (an extra zero or three) must not
/// start tens of thousands.
const MAX_CONNECTION_THREADS: usize = 1024;

/// Most `idle_spin`: past a few round trips, sleeping costs less than polling.
const MAX_IDLE_SPIN: Duration = Duration::from_millis(10);

/// The whole configuration file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: String,
    /// Where state lives: host key, the default user store (`sftpgate.db`), users' files.
    pub data_dir: PathBuf,
    /// The user store: `postgres://USER@HOST:PORT/DB` (shared by several nodes) or
    /// `sqlite://PATH`; empty: the SQLite file `sftpgate.db` in `data_dir`. Not an
    /// `Option`, so that the key (and its variable) is derived from the defaults like every
    /// other.
    pub database_url: String,
    /// The host key file; relative paths are inside `data_dir`. Generated on first start.
    pub host_key: PathBuf,
    /// Threads that serve connections, each connection wholly on one of them (the one with
    /// the fewest connections when it arrives); 0: one per CPU. Storage operations that
    /// wait for a disk run on a blocking pool beside them, never on these threads.
    pub connection_threads: usize,
    /// After a connection thread has answered a small request, how long it keeps polling
    /// for work before it sleeps (`"200us"`; `"0s"`: never). Shortens each round trip of a
    /// small-file transfer (on a VM by about a third) for CPU the thread would have slept
    /// through; bulk transfers never spin, and spins that find nothing make the next ones
    /// skip. At most 10 ms.
    #[serde(with = "humantime_serde")]
    pub idle_spin: Duration,
    /// Which library seals and opens AES-GCM (aes128-gcm@openssh.com and
    /// aes256-gcm@openssh.com): `auto`, the faster one on this CPU; `aws-lc` or `ring`.
    pub aes_gcm: AesGcm,
    /// Authentication methods offered.
    pub auth: AuthConfig,
    /// Lifecycle and transport timeouts.
    pub timeouts: TimeoutsConfig,
    /// Limits.
    pub limits: LimitsConfig,
    /// NATS: provisioning on SFTP open, release on exit, events (see docs/nats.md).
    pub nats: sftpgate_nats::NatsConfig,
    /// The S3 server of users (and provisioned sessions) whose storage is `object_store`
    /// (see docs/object-storage.md).
    pub s3: S3Config,
    /// Log format of `serve`: `text` (human-readable) or `json` (one object per line).
    pub log_format: crate::logging::LogFormat,
    /// Prometheus metrics and the health endpoint.
    pub metrics: MetricsConfig,
}

/// `aes_gcm`: the library behind AES-GCM. Both compute the same standard AES-GCM; they differ
/// in speed by CPU (ring has VAES code for AVX2-only CPUs, aws-lc for AVX-512 ones). Forcing
/// one is for a site that wants one library on every machine, and for the tests, which run
/// both on every machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AesGcm {
    /// ring on x86-64 CPUs with VAES and AVX2 but no AVX-512, aws-lc everywhere else.
    #[default]
    Auto,
    /// aws-lc on every CPU.
    AwsLc,
    /// ring on every CPU.
    Ring,
}

impl AesGcm {
    /// The library this setting asks for; `None` for `auto`.
    pub fn library(self) -> Option<sftpgate_server::AesGcmLibrary> {
        match self {
            AesGcm::Auto => None,
            AesGcm::AwsLc => Some(sftpgate_server::AesGcmLibrary::AwsLc),
            AesGcm::Ring => Some(sftpgate_server::AesGcmLibrary::Ring),
        }
    }

    /// How the setting and the logs name `library`.
    pub fn name(library: sftpgate_server::AesGcmLibrary) -> &'static str {
        match library {
            sftpgate_server::AesGcmLibrary::AwsLc => "aws-lc",
            sftpgate_server::AesGcmLibrary::Ring => "ring",
        }
    }
}

/// `[metrics]`: `/metrics` (Prometheus text format) and `/health` on one HTTP listener, off
/// by default. Neither endpoint has authentication, so only loopback addresses are accepted
/// unless `allow_public` says otherwise.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the metrics and health listener, e.g. `127.0.0.1:9100`; empty: off.
    pub listen: String,
    /// Accept a `listen` address that is not loopback (the endpoints are unauthenticated:
    /// put them behind a firewall or a proxy).
    pub allow_public: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:2222".into(),
            data_dir: "sftpgate-data".into(),
            database_url: String::new(),
            host_key: "host_ed25519_key".into(),
            connection_threads: 0,
            idle_spin: sftpgate_server::DEFAULT_IDLE_SPIN,
            aes_gcm: AesGcm::Auto,
            auth: AuthConfig::default(),
            timeouts: TimeoutsConfig::default(),
            limits: LimitsConfig::default(),
            nats: sftpgate_nats::NatsConfig::default(),
            s3: S3Config::default(),
            log_format: crate::logging::LogFormat::Text,
            metrics: MetricsConfig::default(),
        }
    }
}

/// `[s3]`: where object storage lives; the bucket and key prefix come per user (the users
/// store) or per session (the NATS provisioning reply). Unset `access_key_id`: no S3.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// `http://127.0.0.1:3900` for Garage or MinIO; empty for AWS.
    pub endpoint: String,
    /// The region (Garage's default is `garage`).
    pub region: String,
    /// Access key id; empty: object storage is not configured.
    pub access_key_id: String,
    /// Secret access key (better set with `SFTPGATE_S3_SECRET_ACCESS_KEY`).
    pub secret_access_key: String,
    /// Retries of a transient failure, with exponential backoff.
    pub max_retries: usize,
    /// Bound on every store call, retries included.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Multipart part size in bytes (at least 5 MiB).
    pub part_size: usize,
    /// Parts uploading at once per session.
    pub parts_in_flight: usize,
    /// Bytes of one ranged GET of a sequential reader (positive).
    pub read_chunk: usize,
    /// Chunks fetched ahead of a sequential reader (0: none; raise it for a store far
    /// away, where each GET waits tens of milliseconds).
    pub read_ahead: usize,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("call_timeout", &self.call_timeout)
            .finish_non_exhaustive()
    }
}

impl Default for S3Config {
    fn default() -> Self {
        let o = sftpgate_fs_object::ObjectConfig::default();
        S3Config {
            endpoint: String::new(),
            region: "us-east-1".into(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            max_retries: 3,
            call_timeout: o.call_timeout,
            part_size: o.part_size,
            parts_in_flight: o.parts_in_flight,
            read_chunk: o.read_chunk,
            read_ahead: o.read_ahead,
        }
    }
}

impl S3Config {
    /// The connection settings for `bucket`, or `None` when `[s3]` is not configured.
    pub fn settings(&self, bucket: &str) -> Option<sftpgate_fs_object::S3Settings> {
        if self.access_key_id.is_empty() {
            return None;
        }
        let mut settings = sftpgate_fs_object::S3Settings::new(
            (!self.endpoint.is_empty()).then(|| self.endpoint.clone()),
            &self.region,
            bucket,
            &self.access_key_id,
            &self.secret_access_key,
        );
        settings.max_retries = self.max_retries;
        Some(settings)
    }

    /// The backend's tuning.
    pub fn object_config(&self) -> sftpgate_fs_object::ObjectConfig {
        sftpgate_fs_object::ObjectConfig {
            call_timeout: self.call_timeout,
            part_size: self.part_size,
            parts_in_flight: self.parts_in_flight,
            read_chunk: self.read_chunk,
            read_ahead: self.read_ahead,
            ..sftpgate_fs_object::ObjectConfig::default()
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Offer the `password` method.
    pub password: bool,
    /// Offer the `publickey` method.
    pub publickey: bool,
    /// Brute-force protection.
    pub ban: BanSettings,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            password: true,
            publickey: true,
            ban: BanSettings::default(),
        }
    }
}

/// `[auth.ban]`: failed logins (wrong passwords; never a declined key offer) are counted per
/// source address and per user name; `max_failures` of them within `window` refuse the
/// address (every method) and the user name (password methods) for `ban_time`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BanSettings {
    /// Failures within `window` that start a ban; 0 turns the protection off.
    pub max_failures: u32,
    /// How far back failures count.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How long a ban lasts.
    #[serde(with = "humantime_serde")]
    pub ban_time: Duration,
}

impl Default for BanSettings {
    fn default() -> Self {
        let b = sftpgate_auth::BanConfig::default();
        BanSettings {
            max_failures: b.max_failures,
            window: b.window,
            ban_time: b.ban_time,
        }
    }
}

/// `[timeouts]`: durations such as `"30s"`, `"2m"`, `"500ms"`; `"0s"` switches off the
/// optional ones (`request`, `idle`, `keepalive_interval`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// Step 1: the auth-completed hook.
    #[serde(with = "humantime_serde")]
    pub auth_completed: Duration,
    /// Step 2: the SFTP factory.
    #[serde(with = "humantime_serde")]
    pub sftp_factory: Duration,
    /// Step 3: the session's exit.
    #[serde(with = "humantime_serde")]
    pub exit: Duration,
    /// One storage operation (0: none).
    #[serde(with = "humantime_serde")]
    pub request: Duration,
    /// Unauthenticated connections are closed after this long.
    #[serde(with = "humantime_serde")]
    pub login_grace: Duration,
    /// Connections without any traffic are closed after this long (0: never).
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
    /// SSH keepalive interval (0: none).
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// Unanswered keepalives before the connection is closed.
    pub keepalive_max: usize,
    /// On shutdown, how long sessions get to end and run their exits.
    #[serde(with = "humantime_serde")]
    pub shutdown_drain: Duration,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        let t = sftpgate_server::Timeouts::default();
        TimeoutsConfig {
            auth_completed: t.auth_completed,
            sftp_factory: t.sftp_factory,
            exit: t.exit,
            request: t.request.unwrap_or(Duration::ZERO),
            login_grace: t.login_grace,
            idle: t.idle.unwrap_or(Duration::ZERO),
            keepalive_interval: t.keepalive_interval.unwrap_or(Duration::ZERO),
            keepalive_max: t.keepalive_max,
            shutdown_drain: t.shutdown_drain,
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Live connections in total.
    pub max_connections: usize,
    /// Live connections from one source address (IPv4, or an IPv6 /64).
    pub max_connections_per_address: usize,
    /// Connections not yet authenticated, in total (keep it below `max_connections`).
    pub max_unauthenticated: usize,
    /// Connections not yet authenticated from one source address.
    pub max_unauthenticated_per_address: usize,
    /// Authenticated connections of one user.
    pub max_connections_per_user: usize,
    /// SFTP sessions per connection.
    pub max_sessions_per_connection: usize,
    /// Storage operations running at once per session (1: one at a time, like OpenSSH).
    pub max_in_flight: usize,
    /// Requests received but not answered per session.
    pub max_outstanding: usize,
    /// Open handles per session.
    pub max_handles: usize,
    /// Largest READ answered at once, bytes.
    pub max_read: u32,
    /// Largest WRITE accepted, bytes.
    pub max_write: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let l = sftpgate_server::Limits::default();
        LimitsConfig {
            max_connections: l.max_connections,
            max_connections_per_address: l.max_connections_per_address,
            max_unauthenticated: l.max_unauthenticated,
            max_unauthenticated_per_address: l.max_unauthenticated_per_address,
            max_connections_per_user: l.max_connections_per_user,
            max_sessions_per_connection: l.max_sessions_per_connection,
            max_in_flight: l.max_in_flight,
            max_outstanding: l.max_outstanding,
            max_handles: l.max_handles,
            max_read: l.max_read,
            max_write: l.max_write,
        }
    }
}

impl Config {
    /// Reads `path` (when given), then applies `SFTPGATE_*` variables from `env`.
    pub fn load(
        path: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
    ) -> anyhow::Result<Config> {
        let mut value = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str::<toml::Table>(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut value, env)?;
        let config: Config = toml::Value::Table(value)
            .try_into()
            .with_context(|| match path {
                Some(p) => format!(
                    "invalid settings in {} or SFTPGATE_* variables",
                    p.display()
                ),
                None => "invalid settings in SFTPGATE_* variables".to_owned(),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.limits.max_in_flight == 0 {
            bail!("limits.max_in_flight must be at least 1");
        }
        let l = &self.limits;
        if l.max_connections_per_address == 0
            || l.max_unauthenticated == 0
            || l.max_unauthenticated_per_address == 0
            || l.max_connections_per_user == 0
        {
            bail!("limits.max_connections_per_address, max_unauthenticated, max_unauthenticated_per_address and max_connections_per_user must be at least 1 (0 would refuse every connection)");
        }
        if self.limits.max_read == 0 || self.limits.max_write == 0 {
            bail!("limits.max_read and limits.max_write must be positive");
        }
        if self.limits.max_read > 1 << 20 || self.limits.max_write > 1 << 20 {
            bail!("limits.max_read and limits.max_write can be at most 1 MiB");
        }
        if self.connection_threads > MAX_CONNECTION_THREADS {
            bail!("connection_threads can be at most {MAX_CONNECTION_THREADS} (0: one per CPU)");
        }
        if self.idle_spin > MAX_IDLE_SPIN {
            bail!("idle_spin can be at most 10ms (it is CPU time a thread spends waiting; \"0s\" turns it off)");
        }
        let ban = &self.auth.ban;
        if ban.max_failures > 0 && (ban.window.is_zero() || ban.ban_time.is_zero()) {
            bail!("auth.ban.window and auth.ban.ban_time must be positive (set auth.ban.max_failures = 0 to turn bans off)");
        }
        self.nats
            .validate()
            .map_err(|e| anyhow::anyhow!("[nats]: {e}"))?;
        self.s3
            .object_config()
            .validate()
            .map_err(|e| anyhow::anyhow!("[s3]: {e}"))?;
        Ok(())
    }

    /// The host key's path.
    pub fn host_key_path(&self) -> PathBuf {
        self.data_dir.join(&self.host_key)
    }

    /// The authenticator settings these stand for.
    pub fn auth_config(&self) -> sftpgate_auth::AuthConfig {
        let b = &self.auth.ban;
        let mut auth = sftpgate_auth::AuthConfig::default();
        auth.ban = sftpgate_auth::BanConfig::new(b.max_failures, b.window, b.ban_time);
        auth
    }

    /// The server settings these stand for.
    pub fn server_timeouts(&self) -> sftpgate_server::Timeouts {
        let t = &self.timeouts;
        let optional = |d: Duration| (!d.is_zero()).then_some(d);
        sftpgate_server::Timeouts {
            auth_completed: t.auth_completed,
            sftp_factory: t.sftp_factory,
            exit: t.exit,
            request: optional(t.request),
            login_grace: t.login_grace,
            idle: optional(t.idle),
            keepalive_interval: optional(t.keepalive_interval),
            keepalive_max: t.keepalive_max,
            shutdown_drain: t.shutdown_drain,
        }
    }

    /// How many connection threads to run: `connection_threads`, or one per CPU.
    pub fn connection_thread_count(&self) -> usize {
        match self.connection_threads {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        }
    }

    /// The server limits these stand for.
    pub fn server_limits(&self) -> sftpgate_server::Limits {
        let l = &self.limits;
        let max_packet = l.max_read.max(l.max_write) + 1024;
        sftpgate_server::Limits {
            max_connections: l.max_connections,
            max_connections_per_address: l.max_connections_per_address,
            max_unauthenticated: l.max_unauthenticated,
            max_unauthenticated_per_address: l.max_unauthenticated_per_address,
            max_connections_per_user: l.max_connections_per_user,
            max_sessions_per_connection: l.max_sessions_per_connection,
            max_in_flight: l.max_in_flight,
            max_outstanding: l.max_outstanding,
            max_handles: l.max_handles,
            max_read: l.max_read,
            max_write: l.max_write,
            max_packet,
            ..sftpgate_server::Limits::default()
        }
    }
}

/// Every key of the configuration as a dotted path, from the defaults (so that the list of
/// environment variables cannot drift from the struct). Lists are left out.
pub fn keys() -> Vec<String> {
    let defaults = toml::Table::try_from(Config::default()).expect("the defaults serialize");
    let mut keys = Vec::new();
    collect_keys(&defaults, "", &mut keys);
    keys
}

/// The environment variable that sets a dotted key: `timeouts.exit` → `SFTPGATE_TIMEOUTS_EXIT`.
pub fn env_var(key: &str) -> String {
    format!("SFTPGATE_{}", key.replace('.', "_").to_uppercase())
}

fn collect_keys(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => collect_keys(t, &path, out),
            toml::Value::Array(_) => {}
            _ => out.push(path),
        }
    }
}

fn apply_env(
    table: &mut toml::Table,
    env: impl Iterator<Item = (String, String)>,
) -> anyhow::Result<()> {
    let known: Vec<(String, String)> = keys().into_iter().map(|k| (env_var(&k), k)).collect();
    for (name, raw) in env {
        if !name.starts_with("SFTPGATE_") {
            continue;
        }
        let Some((_, key)) = known.iter().find(|(var, _)| *var == name) else {
            continue; // flags' own variables (SFTPGATE_CONFIG, …) and unknown ones
        };
        // A number or boolean where the default is one; a string otherwise.
        let value = match raw.parse::<i64>() {
            Ok(n) => toml::Value::Integer(n),
            Err(_) => match raw.as_str() {
                "true" => toml::Value::Boolean(true),
                "false" => toml::Value::Boolean(false),
                _ => toml::Value::String(raw.clone()),
            },
        };
        set(table, key, value);
    }
    Ok(())
}

fn set(table: &mut toml::Table, key: &str, value: toml::Value) {
    match key.split_once('.') {
        None => {
            table.insert(key.to_owned(), value);
        }
        Some((head, rest)) => {
            let child = table
                .entry(head.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(child) = child {
                set(child, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn defaults_without_file() {
        assert_eq!(Config::load(None, env(&[])).unwrap(), Config::default());
    }

    #[test]
    fn env_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sftpgate.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:1\"\n[timeouts]\nexit = \"5s\"\n",
        )
        .unwrap();
        let config = Config::load(
            Some(&path),
            env(&[
                ("SFTPGATE_TIMEOUTS_EXIT", "7s"),
                ("SFTPGATE_LIMITS_MAX_HANDLES", "9"),
            ]),
        )
        .unwrap();
        assert_eq!(config.listen, "127.0.0.1:1");
        assert_eq!(config.timeouts.exit, Duration::from_secs(7));
        assert_eq!(config.limits.max_handles, 9);
    }

    #[test]
    fn every_key_has_a_variable() {
        let keys = keys();
        assert!(keys.contains(&"timeouts.sftp_factory".to_owned()));
        assert!(keys.contains(&"listen".to_owned()));
        assert_eq!(
            env_var("timeouts.sftp_factory"),
            "SFTPGATE_TIMEOUTS_SFTP_FACTORY"
        );
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[timeouts]\nexitt = \"5s\"\n").unwrap();
        let err = format!("{:#}", Config::load(Some(&path), env(&[])).unwrap_err());
        assert!(err.contains("exitt"), "{err}");
    }

    #[test]
    fn bad_duration_is_an_error() {
        let err = format!(
            "{:#}",
            Config::load(None, env(&[("SFTPGATE_TIMEOUTS_EXIT", "soon")])).unwrap_err()
        );
        assert!(err.contains("exit") || err.contains("soon"), "{err}");
    }

    #[test]
    fn zero_switches_optional_timeouts_off() {
        let config = Config::load(None, env(&[("SFTPGATE_TIMEOUTS_IDLE", "0s")])).unwrap();
        assert_eq!(config.server_timeouts().idle, None);
        assert_eq!(config.server_timeouts().request, None);
    }

    #[test]
    fn database_url_and_ban_have_variables() {
        let keys = keys();
        for key in [
            "database_url",
            "auth.ban.max_failures",
            "auth.ban.window",
            "auth.ban.ban_time",
        ] {
            assert!(keys.contains(&key.to_owned()), "{key} in {keys:?}");
        }
        let config = Config::load(
            None,
            env(&[
                ("SFTPGATE_DATABASE_URL", "postgres://db/sftp"),
                ("SFTPGATE_AUTH_BAN_MAX_FAILURES", "3"),
                ("SFTPGATE_AUTH_BAN_BAN_TIME", "2s"),
            ]),
        )
        .unwrap();
        assert_eq!(config.database_url, "postgres://db/sftp");
        let auth = config.auth_config();
        assert_eq!(auth.ban.max_failures, 3);
        assert_eq!(auth.ban.ban_time, Duration::from_secs(2));
        assert_eq!(auth.ban.window, Duration::from_secs(300));
    }

    /// docs/configuration.md cannot drift from the struct: every key of the defaults has a
    /// row (with its variable), and its block of defaults is what the defaults serialize
    /// to. `SFTPGATE_BLESS=1` rewrites the block.
    #[test]
    fn docs_configuration_is_complete() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
        let doc = std::fs::read_to_string(&path).unwrap();
        let missing: Vec<String> = keys()
            .into_iter()
            .filter(|key| !doc.contains(&format!("| `{key}` | `{}` |", env_var(key))))
            .collect();
        assert!(
            missing.is_empty(),
            "docs/configuration.md lacks rows for {missing:?}"
        );
        let (begin, end) = ("<!-- defaults:begin -->\n", "<!-- defaults:end -->");
        let start = doc.find(begin).expect("defaults:begin marker") + begin.len();
        let stop = doc.find(end).expect("defaults:end marker");
        let defaults = toml::to_string(&Config::default()).unwrap();
        let expected = format!("```toml\n{defaults}```\n");
        if doc[start..stop] != expected {
            if std::env::var("SFTPGATE_BLESS").as_deref() == Ok("1") {
                let updated = format!("{}{expected}{}", &doc[..start], &doc[stop..]);
                std::fs::write(&path, updated).unwrap();
            } else {
                panic!(
                    "the defaults in docs/configuration.md are stale; run with SFTPGATE_BLESS=1 \
                     or paste:\n{expected}"
                );
            }
        }
    }

    #[test]
    fn metrics_and_log_format_have_variables() {
        let config = Config::load(
            None,
            env(&[
                ("SFTPGATE_METRICS_LISTEN", "127.0.0.1:9100"),
                ("SFTPGATE_METRICS_ALLOW_PUBLIC", "true"),
                ("SFTPGATE_LOG_FORMAT", "json"),
            ]),
        )
        .unwrap();
        assert_eq!(config.metrics.listen, "127.0.0.1:9100");
        assert!(config.metrics.allow_public);
        assert_eq!(config.log_format, crate::logging::LogFormat::Json);
    }

    #[test]
    fn connection_threads_from_a_variable_and_bounded() {
        let config = Config::load(None, env(&[("SFTPGATE_CONNECTION_THREADS", "3")])).unwrap();
        assert_eq!(config.connection_threads, 3);
        assert_eq!(config.connection_thread_count(), 3);
        let default = Config::load(None, env(&[])).unwrap();
        assert_eq!(
            default.connection_thread_count(),
            std::thread::available_parallelism().map_or(2, |n| n.get())
        );
        let err = Config::load(None, env(&[("SFTPGATE_CONNECTION_THREADS", "20000")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("connection_threads can be at most 1024"),
            "{err}"
        );
    }

    #[test]
    fn aes_gcm_from_a_variable_and_an_unknown_library_refused() {
        assert_eq!(Config::load(None, env(&[])).unwrap().aes_gcm, AesGcm::Auto);
        for (value, want) in [
            ("auto", AesGcm::Auto),
            ("aws-lc", AesGcm::AwsLc),
            ("ring", AesGcm::Ring),
        ] {
            let config = Config::load(None, env(&[("SFTPGATE_AES_GCM", value)])).unwrap();
            assert_eq!(config.aes_gcm, want, "{value}");
        }
        assert_eq!(
            AesGcm::Ring.library(),
            Some(sftpgate_server::AesGcmLibrary::Ring)
        );
        assert_eq!(
            AesGcm::AwsLc.library(),
            Some(sftpgate_server::AesGcmLibrary::AwsLc)
        );
        assert_eq!(AesGcm::Auto.library(), None);
        let err = format!(
            "{:#}",
            Config::load(None, env(&[("SFTPGATE_AES_GCM", "openssl")])).unwrap_err()
        );
        assert!(err.contains("aes_gcm") && err.contains("aws-lc"), "{err}");
    }

    #[test]
    fn idle_spin_from_a_variable_off_with_zero_and_bounded() {
        let default = Config::load(None, env(&[])).unwrap();
        assert_eq!(default.idle_spin, Duration::from_micros(200));
        let config = Config::load(None, env(&[("SFTPGATE_IDLE_SPIN", "50us")])).unwrap();
        assert_eq!(config.idle_spin, Duration::from_micros(50));
        let off = Config::load(None, env(&[("SFTPGATE_IDLE_SPIN", "0s")])).unwrap();
        assert!(off.idle_spin.is_zero());
        let err = Config::load(None, env(&[("SFTPGATE_IDLE_SPIN", "1s")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("idle_spin can be at most 10ms"), "{err}");
    }

    #[test]
    fn s3_section_from_variables() {
        let config = Config::load(
            None,
            env(&[
                ("SFTPGATE_S3_ENDPOINT", "http://127.0.0.1:3900"),
                ("SFTPGATE_S3_ACCESS_KEY_ID", "GK1"),
                ("SFTPGATE_S3_SECRET_ACCESS_KEY", "s3cret"),
                ("SFTPGATE_S3_PART_SIZE", "6291456"),
            ]),
        )
        .unwrap();
        let settings = config.s3.settings("b").expect("configured");
        assert_eq!(settings.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
        assert_eq!(settings.bucket, "b");
        assert_eq!(config.s3.object_config().part_size, 6 << 20);
        assert!(!format!("{config:?}").contains("s3cret"), "secret in Debug");
        assert!(Config::default().s3.settings("b").is_none());
        let err = Config::load(None, env(&[("SFTPGATE_S3_PART_SIZE", "1000")])).unwrap_err();
        assert!(format!("{err:#}").contains("part_size"), "{err:#}");
    }

    #[test]
    fn s3_read_chunk_and_read_ahead_from_variables() {
        let config = Config::load(
            None,
            env(&[
                ("SFTPGATE_S3_READ_CHUNK", "261120"),
                ("SFTPGATE_S3_READ_AHEAD", "0"),
            ]),
        )
        .unwrap();
        let object = config.s3.object_config();
        assert_eq!((object.read_chunk, object.read_ahead), (261_120, 0));
        let defaults = sftpgate_fs_object::ObjectConfig::default();
        let object = Config::default().s3.object_config();
        assert_eq!(
            (object.read_chunk, object.read_ahead),
            (defaults.read_chunk, defaults.read_ahead)
        );
        let err = Config::load(None, env(&[("SFTPGATE_S3_READ_CHUNK", "0")])).unwrap_err();
        assert!(format!("{err:#}").contains("read_chunk"), "{err:#}");
    }

    #[test]
    fn users_tables_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.toml");
        std::fs::write(&path, "[[users]]\nname = \"alice\"\n").unwrap();
        let err = format!("{:#}", Config::load(Some(&path), env(&[])).unwrap_err());
        assert!(err.contains("users"), "{err}");
    }
}
