//! Server settings: lifecycle timeouts, per-session limits and the SSH transport's tuning.

use std::time::Duration;

use russh::keys::PrivateKey;
use sftpgate_proto::DEFAULT_MAX_PACKET;

/// Largest SSH channel data packet the server accepts (russh's `maximum_packet_size`): the
/// most one channel data message brings of a session's input.
pub(crate) const CHANNEL_MAX_PACKET: u32 = 32768;

/// How far ahead of a client's grants a channel sends (russh's `send_ahead`, sftpgate's
/// patch): no more unacknowledged than 1 GB/s needs over the round trip measured when the
/// channel opens, and 512 KiB at least (twice the largest SFTP reply, 255 KiB of data), for
/// clients that grant window as they consume. OpenSSH's client opens a 2 MiB window and
/// grants every ~96 KiB it passes on to `sftp`; a server faster than `sftp` writes its
/// files fills all 2 MiB, which `ssh` then holds in a buffer it grows 32 KiB at a time,
/// each time into fresh memory with a copy of everything in it: a third of `ssh`'s CPU in
/// a 256 MiB download on loopback, whose speed `ssh` sets (docs/performance.md,
/// "Twenty-eighth run"). The round trip is a keepalive answered by the client, wake-ups
/// included (0.2-0.45 ms on a loopback VM, 11.3 ms through a 10 ms delay): 1 GB/s is more
/// than one SSH channel moves, and from ~0.5 ms on the limit is the whole window, so
/// nothing changes. Clients that grant only at half their window (PuTTY, AsyncSSH, russh)
/// are never held back.
pub const SEND_AHEAD: russh::SendAhead = russh::SendAhead {
    min: 512 * 1024,
    bytes_per_second: 1_000_000_000,
};

/// Everything the server needs besides its hooks. `Default` gives production-safe values;
/// only `host_keys` must be filled in.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Host keys offered to clients (at least one).
    pub host_keys: Vec<PrivateKey>,
    /// The SSH identification string's software part (`SSH-2.0-<this>`).
    pub server_id: String,
    /// Lifecycle timeouts.
    pub timeouts: Timeouts,
    /// Limits per connection and per session.
    pub limits: Limits,
    /// Whether the `password` method is offered (and `keyboard-interactive` with a single
    /// password prompt, for clients that only speak that).
    pub password_auth: bool,
    /// Whether the `publickey` method is offered.
    pub publickey_auth: bool,
    /// Which requests are served at all.
    pub policy: RequestPolicy,
    /// How far ahead of a client's window grants each channel sends: by default
    /// [`SEND_AHEAD`]; `None` uses every client's whole window.
    pub send_ahead: Option<russh::SendAhead>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host_keys: Vec::new(),
            server_id: concat!("sftpgate_", env!("CARGO_PKG_VERSION")).to_owned(),
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            password_auth: true,
            publickey_auth: true,
            policy: RequestPolicy::default(),
            send_ahead: Some(SEND_AHEAD),
        }
    }
}

/// Which requests a server serves, by name as OpenSSH's sftp-server spells them
/// (`open`, `write`, `posix-rename@openssh.com`, …; see `Request::name`). A refused request
/// gets PERMISSION_DENIED with a message saying so.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestPolicy {
    /// Refuse every request that may change the filesystem (OpenSSH's `-R`).
    pub read_only: bool,
    /// Requests refused (OpenSSH's `-P`).
    pub denied: Vec<String>,
    /// When set, only these requests are served (OpenSSH's `-p`).
    pub allowed: Option<Vec<String>>,
}

impl RequestPolicy {
    /// Why `request` is refused, if it is.
    pub fn refusal(&self, request: &sftpgate_proto::Request) -> Option<String> {
        let name = request.name();
        if self.read_only && request.mutates() {
            return Some(format!("{name}: the server is read-only"));
        }
        if self.denied.iter().any(|d| d == name) {
            return Some(format!("{name}: request denied by the server's policy"));
        }
        if let Some(allowed) = &self.allowed {
            if !allowed.iter().any(|a| a == name) {
                return Some(format!(
                    "{name}: request not allowed by the server's policy"
                ));
            }
        }
        None
    }
}

/// Timeouts of the lifecycle's steps and of the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// Step 1: [`crate::Hooks::auth_completed`].
    pub auth_completed: Duration,
    /// Step 2: [`crate::SftpFactory::open`].
    pub sftp_factory: Duration,
    /// Step 3: [`sftpgate_vfs::Filesystem::exit`] (and the factory's cleanups). An exit past
    /// it is abandoned with an error log, so shutdown never hangs.
    pub exit: Duration,
    /// One storage operation of a request; `None`: no limit.
    pub request: Option<Duration>,
    /// Unauthenticated connections are closed after this long.
    pub login_grace: Duration,
    /// A connection with no traffic at all for this long is closed; `None`: never.
    pub idle: Option<Duration>,
    /// Interval of SSH keepalives when the client is silent; `None`: none are sent.
    pub keepalive_interval: Option<Duration>,
    /// Unanswered keepalives after which the connection is closed.
    pub keepalive_max: usize,
    /// On shutdown, how long live sessions get to end and run their exits. Each session
    /// gives its requests in flight a quarter of it (at most 5 s) to finish, then closes its
    /// handles and runs its exit (each bounded by `exit`): keep it above twice `exit`.
    pub shutdown_drain: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            auth_completed: Duration::from_secs(30),
            sftp_factory: Duration::from_secs(60),
            exit: Duration::from_secs(20),
            request: None,
            login_grace: Duration::from_secs(120),
            idle: Some(Duration::from_secs(600)),
            keepalive_interval: Some(Duration::from_secs(60)),
            keepalive_max: 3,
            shutdown_drain: Duration::from_secs(45),
        }
    }
}

/// Limits per server, connection and session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Live connections in total; further ones are refused with a disconnect message.
    pub max_connections: usize,
    /// Live connections from one source address (IPv4, or an IPv6 /64), authenticated or
    /// not.
    pub max_connections_per_address: usize,
    /// Connections that have not authenticated yet, in total. Kept below `max_connections`
    /// so that clients that never log in cannot take the slots of those that did.
    pub max_unauthenticated: usize,
    /// Connections that have not authenticated yet from one source address: what keeps a
    /// single address that opens connections and sends nothing (slowloris) from filling
    /// `max_unauthenticated`.
    pub max_unauthenticated_per_address: usize,
    /// Authenticated connections of one user; checked when authentication succeeds, before
    /// the auth-completed hook runs.
    pub max_connections_per_user: usize,
    /// SFTP sessions (channels) per connection.
    pub max_sessions_per_connection: usize,
    /// Storage operations running at once per session. 1 serves one request at a time, as
    /// OpenSSH does.
    pub max_in_flight: usize,
    /// Requests received but not yet answered per session; past it the server stops reading
    /// from the client (backpressure through SSH flow control).
    pub max_outstanding: usize,
    /// Bytes of WRITE data received but not yet written to storage, per session.
    pub max_pending_write_bytes: usize,
    /// Bytes of READ replies being produced or waiting to be sent, per session.
    pub max_pending_read_bytes: usize,
    /// The same for READs of more than 64 KiB of files whose reads never wait for a device
    /// (files in memory, [`sftpgate_vfs::File::reads_from_memory`]), counted apart:
    /// reading those further ahead of what the client's window lets the server send hides
    /// no latency and leaves the data cold in the CPU's caches by the time it is sealed and
    /// sent. 512 KiB: two of OpenSSH's 255 KiB READs; at least one `max_read` is always
    /// allowed, and never more than `max_pending_read_bytes`. Smaller READs keep the large
    /// budget: they are answered in the reader's own poll while it is at hand. Why:
    /// docs/performance.md, "Nineteenth run".
    pub max_pending_memory_read_bytes: usize,
    /// Open file and directory handles per session.
    pub max_handles: usize,
    /// Largest SFTP packet accepted (length field).
    pub max_packet: u32,
    /// Largest READ served in one reply (longer requests get a short read).
    pub max_read: u32,
    /// Largest WRITE payload accepted.
    pub max_write: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_connections_per_address: 256,
            max_unauthenticated: 256,
            max_unauthenticated_per_address: 64,
            max_connections_per_user: 128,
            max_sessions_per_connection: 8,
            max_in_flight: 64,
            max_outstanding: 1024,
            max_pending_write_bytes: 16 << 20,
            max_pending_read_bytes: 8 << 20,
            max_pending_memory_read_bytes: 512 << 10,
            max_handles: 256,
            max_packet: DEFAULT_MAX_PACKET,
            max_read: 256 * 1024,
            max_write: 256 * 1024,
        }
    }
}

impl ServerConfig {
    /// The russh configuration for these settings, with the tuning that matters for SFTP:
    /// `aes128-gcm@openssh.com` offered (russh leaves it out by default), no delay on
    /// rejecting the probing `none` method (else every OpenSSH login waits a second),
    /// `TCP_NODELAY`, a 2 MiB window (larger made loopback uploads slower).
    /// The authentication methods offered, at the start and again after every rejection
    /// (so that a mistyped password can be retried and a second key tried).
    pub(crate) fn methods(&self) -> russh::MethodSet {
        use russh::MethodKind;
        let mut methods = Vec::new();
        if self.publickey_auth {
            methods.push(MethodKind::PublicKey);
        }
        if self.password_auth {
            methods.push(MethodKind::Password);
            methods.push(MethodKind::KeyboardInteractive);
        }
        russh::MethodSet::from(&methods[..])
    }

    pub(crate) fn russh_config(&self) -> russh::server::Config {
        use russh::cipher;

        let mut ciphers = vec![
            cipher::AES_128_GCM,
            cipher::CHACHA20_POLY1305,
            cipher::AES_256_GCM,
            cipher::AES_256_CTR,
            cipher::AES_192_CTR,
            cipher::AES_128_CTR,
        ];
        // chacha20-poly1305 is sealed with the system's libcrypto (vendor/README.md); one
        // that lacks it (FIPS mode) must not have it offered, or each session asking for
        // it would fail at key exchange.
        if let Err(e) = sftpgate_chacha::check() {
            tracing::warn!(error = %e, "not offering chacha20-poly1305@openssh.com");
            ciphers.retain(|c| *c != cipher::CHACHA20_POLY1305);
        }
        let preferred = russh::Preferred {
            cipher: std::borrow::Cow::Owned(ciphers),
            ..russh::Preferred::default()
        };
        russh::server::Config {
            server_id: russh::SshId::Standard(std::borrow::Cow::Owned(format!(
                "SSH-2.0-{}",
                self.server_id
            ))),
            methods: self.methods(),
            auth_rejection_time: Duration::from_millis(500),
            auth_rejection_time_initial: Some(Duration::ZERO),
            keys: self.host_keys.clone(),
            window_size: 2 * 1024 * 1024,
            maximum_packet_size: CHANNEL_MAX_PACKET,
            send_ahead: self.send_ahead,
            inactivity_timeout: self.timeouts.idle,
            keepalive_interval: self.timeouts.keepalive_interval,
            keepalive_max: self.timeouts.keepalive_max,
            nodelay: true,
            preferred,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_aes128_gcm_and_chacha20_poly1305_first() {
        // aes128-gcm@openssh.com only when listed (russh's default leaves it out), and
        // chacha20-poly1305@openssh.com whenever libcrypto provides it (it does here).
        let config = ServerConfig::default().russh_config();
        assert_eq!(
            config.preferred.cipher[..2],
            [russh::cipher::AES_128_GCM, russh::cipher::CHACHA20_POLY1305]
        );
    }

    // The send-ahead rule (russh's own tests do not run here: vendor/russh is no
    // workspace member).
    const W: u32 = 2 * 1024 * 1024;
    const P: u32 = 32 * 1024;
    const AHEAD: russh::SendAhead = SEND_AHEAD;

    fn limited() -> russh::SendAheadState {
        let mut s = russh::SendAheadState::new(W);
        s.set_limit(AHEAD.limit(std::time::Duration::from_micros(50)));
        s
    }

    #[test]
    fn the_limit_covers_the_round_trip_at_the_rate_and_never_falls_below_min() {
        assert_eq!(
            AHEAD.limit(std::time::Duration::from_micros(50)),
            512 * 1024
        );
        assert_eq!(AHEAD.limit(std::time::Duration::from_millis(1)), 1_000_000);
        assert_eq!(AHEAD.limit(std::time::Duration::from_secs(10)), u32::MAX);
    }

    #[test]
    fn nothing_is_held_back_before_the_round_trip_and_an_early_grant_are_known() {
        let mut s = russh::SendAheadState::new(W);
        assert_eq!(s.usable(W, P), W);
        s.note_grant(W - 100 * 1024, 96 * 1024);
        assert_eq!(s.usable(W, P), W, "no round trip measured yet");
        let mut s = russh::SendAheadState::new(W);
        s.set_limit(512 * 1024);
        assert_eq!(s.usable(W, P), W, "no grant seen yet");
    }

    #[test]
    fn a_peer_that_grants_early_gets_the_limit_in_flight() {
        let mut s = limited();
        // OpenSSH: a grant once 96 KiB and more are unacknowledged.
        s.note_grant(W - 100 * 1024, 96 * 1024);
        assert_eq!(s.usable(W, P), 512 * 1024);
        assert_eq!(s.usable(W - 400 * 1024, P), 112 * 1024);
        assert_eq!(s.usable(W - 512 * 1024, P), 0);
        assert_eq!(s.usable(W - 600 * 1024, P), 0);
    }

    #[test]
    fn the_limit_stays_above_what_the_peer_waited_for_before_granting() {
        let mut s = limited();
        // A peer that grants only once 400 KiB are unacknowledged (a quarter of the
        // window at most): the limit must let 400 KiB and more be unacknowledged.
        s.note_grant(W - 400 * 1024, 400 * 1024);
        assert_eq!(s.usable(W, P), 800 * 1024);
        // Tiny grants (a peer granting every message it reads) and large packets.
        let mut s = limited();
        s.note_grant(W - 10, 10);
        assert_eq!(s.usable(W, 256 * 1024), 1024 * 1024);
    }

    #[test]
    fn a_peer_that_grants_at_half_its_window_gets_the_whole_window() {
        let mut s = limited();
        s.note_grant(W / 2, W / 2);
        assert_eq!(s.usable(W, P), W);
        assert_eq!(s.usable(W / 2, P), W / 2);
        // A later, earlier grant (it consumed fast once) engages the limit.
        s.note_grant(W - 64 * 1024, 64 * 1024);
        assert_eq!(s.usable(W, P), 512 * 1024);
    }

    #[test]
    fn a_peer_that_enlarges_its_window_is_measured_against_the_larger_one() {
        let mut s = limited();
        // 2.5 MiB from the start, granted at half of it: the enlarging grant, with
        // nothing unacknowledged, is no early grant.
        s.note_grant(W, W / 4);
        assert_eq!(s.usable(W + W / 4, P), W + W / 4);
        s.note_grant(W / 2, W / 2 + W / 4);
        assert_eq!(s.usable(W + W / 4, P), W + W / 4);
        // Early grants against the larger window: the limit counts from it.
        s.note_grant(W + W / 4 - 100 * 1024, 100 * 1024);
        assert_eq!(s.usable(W + W / 4, P), 512 * 1024);
        // A zero grant says nothing.
        let mut s = limited();
        s.note_grant(W - 600 * 1024, 0);
        assert_eq!(s.usable(W, P), W);
    }

    #[test]
    fn a_limit_at_or_above_the_window_holds_nothing_back() {
        let mut s = russh::SendAheadState::new(W);
        s.set_limit(AHEAD.limit(std::time::Duration::from_millis(20)));
        s.note_grant(W - 100 * 1024, 96 * 1024);
        assert_eq!(s.usable(W, P), W);
        assert_eq!(s.usable(1000, P), 1000);
    }
}
