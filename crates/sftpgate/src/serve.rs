//! `sftpgate serve`: wires the configuration, the host key, the users, the storage (each
//! user's jailed root, or provisioned over NATS) and the NATS hooks and events into a
//! [`Server`], and runs it until SIGINT or SIGTERM.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use sftpgate_fs_local::LocalFs;
use sftpgate_nats::{AuthMetadata, Backend, BoxError, NatsFactory, NatsHooks};
use sftpgate_server::{
    Cleanup, ConnectionInfo, HookError, Hooks, Server, ServerConfig, SftpContext, SftpFactory,
};
use sftpgate_vfs::Filesystem;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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
    // NATS's background work (releases, events) outlives the server's own drain, so that
    // exits during shutdown can still send their releases.
    let background = CancellationToken::new();
    let nats = if config.nats.enabled {
        Some(start_nats(&config, &background).await?)
    } else {
        None
    };
    let local = LocalFactory {
        users: users.clone(),
    };
    let (hooks, factory, events) = match nats {
        None => (SessionHooks::None, SessionFactory::Local(local), None),
        Some(nats) => (
            SessionHooks::Nats(nats.hooks),
            match nats.factory {
                Some(factory) => SessionFactory::Nats(factory),
                None => SessionFactory::Local(local),
            },
            nats.events,
        ),
    };
    let mut server = Server::new(server_config, UsersAuthenticator(users), hooks, factory)?;
    if let Some(events) = events {
        server = server.with_events(events);
    }
    let stop = server.shutdown_handle();
    tokio::spawn(async move {
        signals.next().await;
        tracing::info!("signal received: shutting down (send it again to stop at once)");
        stop.shutdown();
        signals.next().await;
        tracing::warn!("second signal: stopping without waiting for sessions");
        std::process::exit(130);
    });
    let result = server.run(listener).await;
    background.cancel();
    result?;
    Ok(())
}

/// What NATS adds to the server.
struct Nats {
    hooks: NatsHooks,
    /// `None` when provisioning is off.
    factory: Option<NatsFactory>,
    events: Option<sftpgate_nats::NatsEvents>,
}

/// Connects, starts the release outbox and the event publisher (until `background` is
/// cancelled), and builds the hooks and the provisioning factory.
async fn start_nats(config: &Config, background: &CancellationToken) -> anyhow::Result<Nats> {
    let mut nats = config.nats.clone();
    nats.release.outbox_dir = config.data_dir.join(&nats.release.outbox_dir);
    let t = &config.timeouts;
    if nats.provision.enabled && nats.provision.timeout >= t.sftp_factory {
        anyhow::bail!(
            "nats.provision.timeout ({:?}) must be below timeouts.sftp_factory ({:?})",
            nats.provision.timeout,
            t.sftp_factory
        );
    }
    if nats.release.exit_wait >= t.exit {
        anyhow::bail!(
            "nats.release.exit_wait ({:?}) must be below timeouts.exit ({:?})",
            nats.release.exit_wait,
            t.exit
        );
    }
    let client = sftpgate_nats::connect(&nats)
        .await
        .context("connecting to NATS")?;
    let outbox = sftpgate_nats::ReleaseOutbox::open(client.clone(), &nats)
        .await
        .context("opening the NATS release outbox")?;
    tokio::spawn(outbox.run(background.clone()));
    let events = if nats.events.enabled {
        let (events, publisher) = sftpgate_nats::event_channel(client.clone(), &nats);
        if let Err(e) = publisher.ensure_stream().await {
            // The publisher retries; events wait in the buffer meanwhile.
            tracing::warn!(error = %e, "could not set up the events stream yet");
        }
        tokio::spawn(publisher.run(background.clone()));
        Some(events)
    } else {
        None
    };
    let hooks = NatsHooks::new(client.clone(), &nats);
    let factory = nats
        .provision
        .enabled
        .then(|| NatsFactory::new(client, &nats, outbox, build_backend));
    tracing::info!(servers = ?nats.servers, prefix = %nats.subject_prefix, provisioning = nats.provision.enabled, "NATS enabled");
    Ok(Nats {
        hooks,
        factory,
        events,
    })
}

/// Turns a provisioned backend into the session's filesystem.
async fn build_backend(backend: Backend) -> Result<Arc<dyn Filesystem>, BoxError> {
    match backend {
        Backend::Local { path } => {
            let fs = tokio::task::spawn_blocking(move || LocalFs::new(path)).await??;
            Ok(Arc::new(fs))
        }
        other => Err(format!("unsupported backend {other:?}").into()),
    }
}

/// Step 1 as configured: nothing, or the NATS auth request.
enum SessionHooks {
    None,
    Nats(NatsHooks),
}

impl Hooks for SessionHooks {
    type State = AuthMetadata;

    async fn auth_completed(&self, connection: &ConnectionInfo) -> Result<AuthMetadata, HookError> {
        match self {
            SessionHooks::None => Ok(AuthMetadata::default()),
            SessionHooks::Nats(hooks) => hooks.auth_completed(connection).await,
        }
    }
}

/// Step 2 as configured: each user's own root, or storage provisioned over NATS.
enum SessionFactory {
    Local(LocalFactory),
    Nats(NatsFactory),
}

impl SftpFactory<AuthMetadata> for SessionFactory {
    async fn open(
        &self,
        ctx: &SftpContext<AuthMetadata>,
        cleanup: &mut Cleanup,
    ) -> Result<Arc<dyn Filesystem>, HookError> {
        match self {
            SessionFactory::Local(local) => local.open(&ctx.connection.user).await,
            SessionFactory::Nats(nats) => nats.open(ctx, cleanup).await,
        }
    }
}

/// The SFTP factory of the binary: each user's own jailed directory.
struct LocalFactory {
    users: Arc<Users>,
}

impl LocalFactory {
    async fn open(&self, user: &str) -> Result<Arc<dyn Filesystem>, HookError> {
        let user = self
            .users
            .get(user)
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
