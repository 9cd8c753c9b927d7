//! `sftpgate-idle-sessions`: opens N SFTP sessions (one SSH connection each, publickey
//! login, `sftp` subsystem, INIT/VERSION done), prints `READY <n>` once all are open, and
//! holds them idle until stdin closes or `--hold` seconds pass. For measuring the server's
//! memory per idle session (bench/memory.sh); not a load generator.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::BytesMut;
use clap::Parser;
use russh::client;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::ChannelMsg;
use sftpgate_proto::{Decoder, Request, Response};
use tokio::io::AsyncReadExt as _;

#[derive(Debug, Parser)]
#[command(name = "sftpgate-idle-sessions")]
struct Args {
    /// Server port on 127.0.0.1.
    #[arg(long)]
    port: u16,
    /// User name.
    #[arg(long)]
    user: String,
    /// Private key file (OpenSSH format, no passphrase).
    #[arg(long)]
    key: PathBuf,
    /// Sessions to open.
    #[arg(long, short = 'n', default_value_t = 1000)]
    sessions: usize,
    /// Sessions being opened at once.
    #[arg(long, default_value_t = 32)]
    parallel: usize,
    /// Hold them at most this many seconds.
    #[arg(long, default_value_t = 600)]
    hold: u64,
}

struct Handler;

impl client::Handler for Handler {
    type Error = russh::Error;
    async fn check_server_key(&mut self, _: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// An open, idle session: everything the client must keep alive.
struct Idle {
    _ssh: client::Handle<Handler>,
    _channel: russh::Channel<client::Msg>,
}

async fn open(port: u16, user: &str, key: Arc<PrivateKey>) -> anyhow::Result<Idle> {
    let config = Arc::new(client::Config {
        // The server's keepalives would otherwise be the only traffic; answer them.
        inactivity_timeout: None,
        ..client::Config::default()
    });
    let mut ssh = client::connect(config, ("127.0.0.1", port), Handler).await?;
    if !ssh
        .authenticate_publickey(user, PrivateKeyWithHashAlg::new(key, None))
        .await?
        .success()
    {
        bail!("public key authentication failed for {user:?}");
    }
    let mut channel = ssh.channel_open_session().await?;
    channel.request_subsystem(true, "sftp").await?;
    let mut out = BytesMut::new();
    Request::Init {
        version: 3,
        extensions: Vec::new(),
    }
    .encode(&mut out);
    channel.data(&out[..]).await?;
    let mut decoder = Decoder::with_max_packet(1 << 20);
    let mut input = BytesMut::new();
    loop {
        if let Some(response) = decoder.decode_response(&mut input)? {
            match response {
                Response::Version { .. } => break,
                other => bail!("expected VERSION, got {other:?}"),
            }
        }
        match channel.wait().await {
            Some(ChannelMsg::Data { data }) => input.extend_from_slice(&data),
            Some(ChannelMsg::Success) | Some(ChannelMsg::WindowAdjusted { .. }) => {}
            other => bail!("channel ended before VERSION: {other:?}"),
        }
    }
    Ok(Idle {
        _ssh: ssh,
        _channel: channel,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let key = Arc::new(
        russh::keys::load_secret_key(&args.key, None)
            .with_context(|| format!("loading {}", args.key.display()))?,
    );
    let gate = Arc::new(tokio::sync::Semaphore::new(args.parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.sessions {
        let (key, user, gate) = (key.clone(), args.user.clone(), gate.clone());
        let port = args.port;
        tasks.spawn(async move {
            let _slot = gate.acquire_owned().await?;
            open(port, &user, key).await
        });
    }
    let mut held = Vec::with_capacity(args.sessions);
    while let Some(done) = tasks.join_next().await {
        held.push(done??);
    }
    println!("READY {}", held.len());
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(args.hold), async {
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    drop(held);
    Ok(())
}
