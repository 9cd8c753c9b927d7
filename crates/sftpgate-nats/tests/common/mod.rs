//! Shared test fixtures: the machine's NATS (or a skip), a private `nats-server -js` that can
//! be stopped and restarted, configurations with short timeouts, fake session contexts.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use sftpgate_fs_local::LocalFs;
use sftpgate_nats::async_nats::{self, connection::State};
use sftpgate_nats::*;
use sftpgate_server::{AuthMethod, ConnectionId, ConnectionInfo, SessionId, SftpContext};
use sftpgate_vfs::Filesystem;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

pub const SHARED_NATS: &str = "127.0.0.1:4222";

pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The machine's NATS URL; `None` (after saying why) when it is not reachable outside CI.
pub async fn shared_nats() -> Option<String> {
    let err =
        match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(SHARED_NATS)).await {
            Ok(Ok(_)) => return Some(format!("nats://{SHARED_NATS}")),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "connect timed out".to_owned(),
        };
    assert!(
        !under_ci(),
        "NATS at {SHARED_NATS} must be reachable under CI=true: {err}"
    );
    eprintln!("skipping: NATS at {SHARED_NATS} not reachable: {err}");
    None
}

/// `sftpgate-test-<random>`: subjects no other test (or run) shares.
pub fn unique_prefix() -> String {
    format!("sftpgate-test-{:016x}", rand::random::<u64>())
}

/// A configuration for tests: short timeouts, quick retries, a unique stream name.
pub fn test_config(url: &str, prefix: &str, outbox_dir: &Path) -> NatsConfig {
    let mut config = NatsConfig {
        servers: vec![url.to_owned()],
        subject_prefix: prefix.to_owned(),
        connection_name: "sftpgate-test".into(),
        connect_timeout: Duration::from_secs(5),
        reconnect_delay_max: Duration::from_millis(100),
        ..NatsConfig::default()
    };
    config.auth = AuthHookConfig {
        enabled: true,
        timeout: Duration::from_millis(500),
        on_unavailable: OnUnavailable::Refuse,
    };
    config.provision = ProvisionConfig {
        enabled: true,
        request_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(5),
    };
    config.release = ReleaseConfig {
        outbox_dir: outbox_dir.to_owned(),
        request_timeout: Duration::from_secs(1),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(300),
        exit_wait: Duration::from_secs(2),
    };
    config.events.stream = format!("SFTPGATE_TEST_{:016X}", rand::random::<u64>());
    config.events.max_age = Duration::from_secs(3600);
    config.events.ack_timeout = Duration::from_secs(2);
    config
}

/// Everything one library-level test needs.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub config: NatsConfig,
    pub client: async_nats::Client,
}

impl Fixture {
    /// A fixture on `url` with a fresh prefix and outbox.
    pub async fn new(url: &str) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = test_config(url, &unique_prefix(), &dir.path().join("outbox"));
        let client = connect(&config).await.expect("client");
        Fixture {
            dir,
            config,
            client,
        }
    }

    pub fn volumes(&self) -> PathBuf {
        self.dir.path().join("volumes")
    }

    /// A reference provisioner with its own connection.
    pub async fn provisioner(&self, delay: Duration) -> ReferenceProvisioner {
        let client = connect(&NatsConfig {
            connection_name: "provisioner".into(),
            ..self.config.clone()
        })
        .await
        .expect("provisioner client");
        assert!(wait_connected(&client, Duration::from_secs(5)).await);
        ReferenceProvisioner::start(
            client,
            ProvisionerConfig {
                subject_prefix: self.config.subject_prefix.clone(),
                base_dir: self.volumes(),
                delay,
                ..ProvisionerConfig::default()
            },
        )
        .await
        .expect("provisioner")
    }

    pub async fn outbox(&self) -> ReleaseOutbox {
        ReleaseOutbox::open(self.client.clone(), &self.config)
            .await
            .expect("outbox")
    }

    pub async fn factory(&self) -> (NatsFactory, ReleaseOutbox) {
        let outbox = self.outbox().await;
        let factory = NatsFactory::new(
            self.client.clone(),
            &self.config,
            outbox.clone(),
            local_builder,
        );
        (factory, outbox)
    }
}

/// The builder the binary will pass: a `LocalFs` for `local`.
pub async fn local_builder(backend: Backend) -> Result<Arc<dyn Filesystem>, BoxError> {
    match backend {
        Backend::Local { path } => Ok(Arc::new(LocalFs::new(&path)?) as Arc<dyn Filesystem>),
        other => Err(format!("unsupported backend {}", other.kind()).into()),
    }
}

pub fn connection(id: u64, user: &str) -> ConnectionInfo {
    ConnectionInfo {
        id: ConnectionId(id),
        peer: "127.0.0.1:40000".parse().expect("an address"),
        user: user.to_owned(),
        method: AuthMethod::Password,
        client_software: String::new(),
    }
}

/// What the server hands the factory for session `session` of user `user`.
pub fn context<S>(state: S, user: &str, session: u64) -> SftpContext<S> {
    SftpContext {
        connection: Arc::new(connection(session, user)),
        session: SessionId(session),
        channel: 0,
        state: Arc::new(state),
    }
}

/// Waits (bounded) until `client`'s connection state is `want`.
pub async fn wait_state(client: &async_nats::Client, want: State, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    while client.connection_state() != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "client not {want:?} within {timeout:?} (is {:?})",
            client.connection_state()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until the outbox holds no pending release.
pub async fn wait_outbox_empty(outbox: &ReleaseOutbox, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let pending = outbox.pending().await.expect("outbox readable");
        if pending.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "outbox still holds {pending:?} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A private `nats-server -js` on a free loopback port with its own store, for tests that
/// stop and restart NATS.
pub struct NatsProcess {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    binary: PathBuf,
}

impl NatsProcess {
    /// Starts one; `None` (after saying why) when the binary is missing outside CI.
    pub async fn start() -> Option<NatsProcess> {
        let binary = std::env::var_os("NATS_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"));
        if !binary.exists() {
            assert!(!under_ci(), "{} is needed under CI=true", binary.display());
            eprintln!("skipping: {} not found", binary.display());
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut process = NatsProcess {
            child: None,
            port,
            store: tempfile::tempdir().expect("tempdir"),
            binary,
        };
        process.restart().await;
        Some(process)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills it (as a crash would) and waits until it is gone.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill nats-server");
        }
    }

    /// Starts it again on the same port with the same store, and waits until it listens.
    pub async fn restart(&mut self) {
        self.stop().await;
        let child = Command::new(&self.binary)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server did not listen on {} within 10 s",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Reads `count` events from `stream` with an ephemeral JetStream pull consumer, waiting at
/// most `timeout`.
pub async fn read_events(
    client: &async_nats::Client,
    stream: &str,
    count: usize,
    timeout: Duration,
) -> Vec<serde_json::Value> {
    use futures_util::StreamExt as _;
    use sftpgate_nats::async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};

    let jetstream = async_nats::jetstream::new(client.clone());
    let stream = jetstream
        .get_stream(stream)
        .await
        .expect("the event stream");
    let consumer = stream
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("a consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut out = Vec::new();
    let read = tokio::time::timeout(timeout, async {
        while out.len() < count {
            let message = messages
                .next()
                .await
                .expect("consumer open")
                .expect("a message");
            out.push(serde_json::from_slice(&message.payload).expect("JSON event"));
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "only {} of {count} events within {timeout:?}: {out:?}",
        out.len()
    );
    out
}

/// Deletes a stream of the shared NATS when dropped, even when the test failed.
pub struct StreamGuard {
    pub url: String,
    pub stream: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let url = self.url.clone();
        let stream = self.stream.clone();
        // Drop cannot await; a short-lived runtime on its own thread does the deletion.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                let connect = async_nats::connect(url.as_str());
                if let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(5), connect).await
                {
                    let jetstream = async_nats::jetstream::new(client);
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        jetstream.delete_stream(&stream),
                    )
                    .await;
                }
            });
        })
        .join();
    }
}
