//! End to end: the real SSH server with the NATS hooks, factory and events, OpenSSH's `sftp`
//! as the client, the reference provisioner on the machine's NATS.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use futures_util::StreamExt as _;
use russh::keys::{Algorithm, PrivateKey, PublicKey};
use serde_json::json;
use sftpgate_nats::*;
use sftpgate_server::{Authenticator, Server, ServerConfig, ShutdownHandle};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

/// The path of `sftp`; `None` after a note when missing outside CI.
fn sftp_binary() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("sftp"))
            .find(|path| path.is_file())
    });
    if found.is_none() {
        assert!(!under_ci(), "OpenSSH `sftp` is needed under CI=true");
        eprintln!("skipping: OpenSSH `sftp` is not on PATH");
    }
    found
}

struct KeyAuth(PublicKey);

impl Authenticator for KeyAuth {
    async fn password(&self, _user: &str, _password: &str, _peer: SocketAddr) -> bool {
        false
    }
    async fn publickey(&self, _user: &str, key: &PublicKey, _peer: SocketAddr) -> bool {
        key.key_data() == self.0.key_data()
    }
}

struct Running {
    port: u16,
    key_path: PathBuf,
    stop: ShutdownHandle,
    server: tokio::task::JoinHandle<()>,
    background: CancellationToken,
}

/// The server as the binary will wire it, on 127.0.0.1:0.
async fn start_server(fx: &Fixture) -> Running {
    let client_key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
    let key_path = fx.dir.path().join("id_ed25519");
    let pem = client_key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .unwrap();
    std::fs::write(&key_path, pem.as_bytes()).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let config = ServerConfig {
        host_keys: vec![PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap()],
        ..ServerConfig::default()
    };
    let background = CancellationToken::new();
    let outbox = ReleaseOutbox::open(fx.client.clone(), &fx.config)
        .await
        .unwrap();
    tokio::spawn(outbox.run(background.clone()));
    let (events, publisher) = event_channel(fx.client.clone(), &fx.config);
    publisher.ensure_stream().await.unwrap();
    tokio::spawn(publisher.run(background.clone()));
    let hooks = NatsHooks::new(fx.client.clone(), &fx.config);
    let factory = NatsFactory::new(fx.client.clone(), &fx.config, outbox, local_builder);
    let server = Server::new(
        config,
        KeyAuth(client_key.public_key().clone()),
        hooks,
        factory,
    )
    .unwrap()
    .with_events(events);
    let stop = server.shutdown_handle();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move { server.run(listener).await.unwrap() });
    Running {
        port,
        key_path,
        stop,
        server,
        background,
    }
}

impl Running {
    async fn shutdown(self) {
        self.stop.shutdown();
        tokio::time::timeout(WAIT, self.server)
            .await
            .expect("server stops")
            .unwrap();
        self.background.cancel();
    }

    /// `sftp -b` with `commands`; bounded.
    async fn sftp(&self, sftp: &Path, scratch: &Path, commands: &str) -> std::process::Output {
        let batch = scratch.join("batch");
        std::fs::write(&batch, commands).unwrap();
        let child = tokio::process::Command::new(sftp)
            .args(["-F", "/dev/null", "-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"])
            .args(["-o", "IdentitiesOnly=yes", "-i"])
            .arg(&self.key_path)
            .args(["-P", &self.port.to_string(), "-b"])
            .arg(&batch)
            .arg("alice@127.0.0.1")
            .current_dir(scratch)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        tokio::time::timeout(WAIT, child.wait_with_output())
            .await
            .expect("sftp finishes")
            .unwrap()
    }
}

/// Accepts every connection with a tenant.
async fn auth_service(fx: &Fixture) {
    let mut requests = fx
        .client
        .subscribe(fx.config.subjects().auth())
        .await
        .unwrap();
    fx.client.flush().await.unwrap();
    let client = fx.client.clone();
    tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            let reply = json!({"status":"accepted","metadata":{"tenant":"acme"}});
            let _ = client
                .publish(message.reply.unwrap(), reply.to_string().into())
                .await;
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_lands_in_the_provisioned_directory_and_is_released_after_exit() {
    let Some(url) = shared_nats().await else {
        return;
    };
    let Some(sftp) = sftp_binary() else { return };
    let fx = Fixture::new(&url).await;
    let _stream = StreamGuard {
        url: url.clone(),
        stream: fx.config.events.stream.clone(),
    };
    auth_service(&fx).await;
    let provisioner = fx.provisioner(Duration::from_millis(200)).await;
    let server = start_server(&fx).await;
    let scratch = fx.dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    std::fs::write(scratch.join("local.txt"), b"over the bus\n").unwrap();

    // `!cp` runs locally while the session is still open: the upload is in the volume.
    let volumes = fx.volumes().display().to_string();
    let out = server
        .sftp(
            &sftp,
            &scratch,
            &format!("put local.txt up.txt\n!cp {volumes}/*/up.txt seen.txt\nls\n"),
        )
        .await;
    assert!(
        out.status.success(),
        "sftp failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(scratch.join("seen.txt")).unwrap(),
        b"over the bus\n"
    );

    // Released after the exit, exactly once.
    assert!(
        provisioner
            .wait_for(WAIT, |all| all.len() == 1
                && all.values().all(|r| r.releases == 1))
            .await
    );
    let (_, record) = provisioner.allocations().into_iter().next().unwrap();
    assert_eq!((record.provisions, record.releases), (1, 1));
    assert_eq!(record.user, "alice");
    assert_eq!(record.metadata["tenant"], json!("acme"));
    assert_eq!(record.stats.unwrap().bytes_in, 13);
    assert!(!record.dir.exists());

    // And the events say the same.
    let events = read_events(&fx.client, &fx.config.events.stream, 4, WAIT).await;
    let types: Vec<_> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "connection.login",
            "session.started",
            "file.upload",
            "session.ended"
        ]
    );
    assert_eq!(events[2]["path"], json!("/up.txt"));
    assert_eq!(events[2]["size"], json!(13));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_provisioner_gives_the_client_its_reason() {
    let Some(url) = shared_nats().await else {
        return;
    };
    let Some(sftp) = sftp_binary() else { return };
    let fx = Fixture::new(&url).await;
    let _stream = StreamGuard {
        url: url.clone(),
        stream: fx.config.events.stream.clone(),
    };
    auth_service(&fx).await;
    let provisioner = fx.provisioner(Duration::ZERO).await;
    provisioner.set_refuse(Some("tenant over quota".into()));
    let server = start_server(&fx).await;
    let scratch = fx.dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let out = server.sftp(&sftp, &scratch, "ls\n").await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("storage provisioning refused: tenant over quota"),
        "{stderr}"
    );
    server.shutdown().await;
}
