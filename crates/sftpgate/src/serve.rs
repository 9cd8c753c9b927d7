//! `sftpgate serve`: wires the configuration, the host key, the users and the jailed local
//! storage into a [`Server`], and runs it until SIGINT or SIGTERM.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use sftpgate_fs_local::LocalFs;
use sftpgate_server::{
    Cleanup, HookError, NoHooks, Server, ServerConfig, SftpContext, SftpFactory,
};
use sftpgate_vfs::Filesystem;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::host_key;
use crate::users::{FirstUser, Users, UsersAuthenticator};

/// Runs the server with `config` until a signal stops it.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let host_key = host_key::load_or_generate(&config.host_key_path())?;
    let (users, first) = Users::load_or_create(&config)?;
    let users = Arc::new(users);
    let listener = TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let local = listener.local_addr()?;
    // Handlers first: a signal sent as soon as the listening line is out must already mean
    // "shut down gracefully", not the default "die".
    let mut signals = Signals::new()?;
    if let Some(first) = &first {
        print_first_user(first, local.port());
    }
    println!(
        "sftpgate listening on {local} ({} user{}; data in {})",
        users.len(),
        if users.len() == 1 { "" } else { "s" },
        config.data_dir.display()
    );

    let server_config = ServerConfig {
        host_keys: vec![host_key],
        timeouts: config.server_timeouts(),
        limits: config.server_limits(),
        password_auth: config.auth.password,
        publickey_auth: config.auth.publickey,
        ..ServerConfig::default()
    };
    let server = Server::new(
        server_config,
        UsersAuthenticator(users.clone()),
        NoHooks,
        LocalFactory { users },
    )?;
    let stop = server.shutdown_handle();
    tokio::spawn(async move {
        signals.next().await;
        tracing::info!("signal received: shutting down (send it again to stop at once)");
        stop.shutdown();
        signals.next().await;
        tracing::warn!("second signal: stopping without waiting for sessions");
        std::process::exit(130);
    });
    server.run(listener).await?;
    Ok(())
}

/// The SFTP factory of the binary: each user's own jailed directory.
struct LocalFactory {
    users: Arc<Users>,
}

impl SftpFactory<()> for LocalFactory {
    async fn open(
        &self,
        ctx: &SftpContext<()>,
        _cleanup: &mut Cleanup,
    ) -> Result<Arc<dyn Filesystem>, HookError> {
        let user = self
            .users
            .get(&ctx.connection.user)
            .ok_or_else(|| HookError::new("this user no longer exists"))?;
        let root = user.root.clone();
        let fs = tokio::task::spawn_blocking(move || open_root(&root))
            .await
            .map_err(|e| HookError::with_source("storage setup failed", e))??;
        Ok(Arc::new(fs))
    }
}

fn open_root(root: &Path) -> Result<LocalFs, HookError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(|e| HookError::with_source("the user's storage could not be created", e))?;
    LocalFs::new(root)
        .map_err(|e| HookError::with_source("the user's storage could not be opened", e))
}

fn print_first_user(first: &FirstUser, port: u16) {
    println!("sftpgate: first start: created user {:?}", first.name);
    println!(
        "  password:   {}   (shown once; stored hashed in {})",
        first.password,
        first.users_file.display()
    );
    if first.key_files.is_empty() {
        println!(
            "  public keys: none found in ~/.ssh (add keys to {})",
            first.users_file.display()
        );
    } else {
        for file in &first.key_files {
            println!("  public key: {}", file.display());
        }
    }
    println!("  files:      {}", first.root.display());
    println!("Log in with:");
    println!("  sftp -P {port} {}@127.0.0.1", first.name);
}

/// SIGINT and SIGTERM, listened for from creation on.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
