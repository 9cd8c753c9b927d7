//! `sftpgate serve`: wires the configuration, the host key, the user store (logins through
//! its authenticator, each session's profile read by the SFTP factory), the storage (each
//! user's jailed root, or provisioned over NATS, behind the user's permissions) and the NATS
//! hooks and events into a [`Server`], and runs it until SIGINT or SIGTERM.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use sftpgate_auth::{PermissionFs, Storage, Store, StoreAuthenticator, StoreError, UserProfile};
use sftpgate_fs_local::LocalFs;
use sftpgate_nats::{AuthMetadata, Backend, BoxError, NatsFactory, NatsHooks};
use sftpgate_server::{
    Cleanup, ConnectionInfo, HookError, Hooks, Server, ServerConfig, SftpContext, SftpFactory,
};
use sftpgate_vfs::Filesystem;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::host_key;
use crate::object::ObjectStores;
use crate::users::FirstUser;

/// Fixes the process's AES-GCM library as `setting` asks, before any connection, and logs
/// which one runs.
fn choose_aes_gcm(setting: crate::config::AesGcm) -> anyhow::Result<()> {
    use crate::config::AesGcm;
    if let Some(library) = setting.library() {
        sftpgate_server::set_aes_gcm_library(library).map_err(|in_use| {
            anyhow::anyhow!(
                "aes_gcm = {:?}: this process already runs AES-GCM on {}",
                AesGcm::name(library),
                AesGcm::name(in_use)
            )
        })?;
    }
    let library = AesGcm::name(sftpgate_server::aes_gcm_library());
    match setting {
        AesGcm::Auto => tracing::info!("AES-GCM through {library} (the faster one on this CPU)"),
        _ => tracing::info!("AES-GCM through {library} (aes_gcm setting)"),
    }
    Ok(())
}

/// Runs the server with `config` until a signal stops it, each connection on one of
/// `connection_runtimes`.
pub async fn serve(
    config: Config,
    connection_runtimes: Vec<tokio::runtime::Handle>,
) -> anyhow::Result<()> {
    // Before anything emits: metric handles registered earlier would stay no-ops.
    let prometheus = if config.metrics.listen.is_empty() {
        None
    } else {
        Some(crate::metrics::install_recorder()?)
    };
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.data_dir)
            .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    }
    choose_aes_gcm(config.aes_gcm)?;
    let host_key = host_key::load_or_generate(&config.host_key_path())?;
    let store = crate::store::open(&config).await?;
    let first = crate::users::create_first_user(&store, &config.data_dir).await?;
    let user_count = store.user_count().await.context("counting users")?;
    let authenticator = StoreAuthenticator::new(store.clone(), config.auth_config())
        .await
        .context("setting up authentication")?;
    let listener = sftpgate_server::bind(config.listen.as_str())
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let local = listener.local_addr()?;
    let metrics_listener = crate::metrics::bind(&config.metrics).await?;
    // Handlers first: a signal sent as soon as the listening line is out must already mean
    // "shut down gracefully", not the default "die".
    let mut signals = Signals::new()?;
    if let Some(first) = &first {
        print_first_user(first, &crate::store::describe(&config), local.port());
    }
    if let Some(metrics) = &metrics_listener {
        // Before the listening line, which tells whoever waits that everything is up.
        println!(
            "sftpgate metrics on http://{}/metrics (health: /health)",
            metrics.local_addr()?
        );
    }
    println!(
        "sftpgate listening on {local} ({user_count} user{}; data in {}; users in {})",
        if user_count == 1 { "" } else { "s" },
        config.data_dir.display(),
        crate::store::describe(&config),
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
    let objects = Arc::new(ObjectStores::new(config.s3.clone()));
    let nats = if config.nats.enabled {
        Some(start_nats(&config, &background, objects.clone()).await?)
    } else {
        None
    };
    if let (Some(listener), Some(prometheus)) = (metrics_listener, prometheus) {
        let health = crate::health::Health::new(
            store.clone(),
            crate::store::describe(&config),
            nats.as_ref().map(|n| n.client.clone()),
        );
        crate::metrics::spawn(listener, prometheus, health, background.clone());
    }
    let profiles = Profiles(store.clone(), objects.clone());
    let (hooks, factory, events) = match nats {
        None => (SessionHooks::None, SessionFactory::Local(profiles), None),
        Some(nats) => (
            SessionHooks::Nats(nats.hooks),
            match nats.factory {
                Some(factory) => SessionFactory::Nats(profiles, factory),
                None => SessionFactory::Local(profiles),
            },
            nats.events,
        ),
    };
    let mut server = Server::new(server_config, authenticator, hooks, factory)?
        .with_connection_runtimes(connection_runtimes);
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
    store.close().await;
    result?;
    Ok(())
}

/// What NATS adds to the server.
struct Nats {
    /// For the health check.
    client: sftpgate_nats::async_nats::Client,
    hooks: NatsHooks,
    /// `None` when provisioning is off.
    factory: Option<NatsFactory>,
    events: Option<sftpgate_nats::NatsEvents>,
}

/// Connects, starts the release outbox and the event publisher (until `background` is
/// cancelled), and builds the hooks and the provisioning factory.
async fn start_nats(
    config: &Config,
    background: &CancellationToken,
    objects: Arc<ObjectStores>,
) -> anyhow::Result<Nats> {
    check_nats_timeouts(config)?;
    let mut nats = config.nats.clone();
    nats.release.outbox_dir = config.data_dir.join(&nats.release.outbox_dir);
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
    let factory = nats.provision.enabled.then(|| {
        NatsFactory::new(client.clone(), &nats, outbox, move |backend| {
            build_backend(backend, objects.clone())
        })
    });
    tracing::info!(servers = ?nats.servers, prefix = %nats.subject_prefix, provisioning = nats.provision.enabled, "NATS enabled");
    Ok(Nats {
        client,
        hooks,
        factory,
        events,
    })
}

/// The NATS steps must end within the lifecycle steps that contain them (also checked by
/// `sftpgate check-config`).
pub fn check_nats_timeouts(config: &Config) -> anyhow::Result<()> {
    let (nats, t) = (&config.nats, &config.timeouts);
    if !nats.enabled {
        return Ok(());
    }
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
    Ok(())
}

/// Turns a provisioned backend into the session's filesystem.
async fn build_backend(
    backend: Backend,
    objects: Arc<ObjectStores>,
) -> Result<Arc<dyn Filesystem>, BoxError> {
    match backend {
        Backend::Local { path } => {
            let fs = tokio::task::spawn_blocking(move || LocalFs::new(path)).await??;
            Ok(Arc::new(fs))
        }
        Backend::ObjectStore { bucket, prefix } => Ok(objects.open(&bucket, &prefix)?),
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

/// Step 2 as configured: each user's own root, or storage provisioned over NATS; either way
/// behind the user's permissions, read from the store when the session starts.
enum SessionFactory {
    Local(Profiles),
    Nats(Profiles, NatsFactory),
}

impl SftpFactory<AuthMetadata> for SessionFactory {
    async fn open(
        &self,
        ctx: &SftpContext<AuthMetadata>,
        cleanup: &mut Cleanup,
    ) -> Result<Arc<dyn Filesystem>, HookError> {
        let (profile, storage) = match self {
            SessionFactory::Local(profiles) => {
                let profile = profiles.read(&ctx.connection.user).await?;
                let storage = open_storage(&profile, &profiles.1).await?;
                (profile, storage)
            }
            SessionFactory::Nats(profiles, nats) => {
                // The profile first: a disabled user gets nothing provisioned.
                let profile = profiles.read(&ctx.connection.user).await?;
                (profile, nats.open(ctx, cleanup).await?)
            }
        };
        Ok(Arc::new(PermissionFs::new(storage, profile.permissions)))
    }
}

/// Reads a session's [`UserProfile`] (a snapshot: the session keeps it to its end).
struct Profiles(Store, Arc<ObjectStores>);

impl Profiles {
    async fn read(&self, user: &str) -> Result<UserProfile, HookError> {
        self.0.session_profile(user).await.map_err(|e| match e {
            StoreError::UnknownUser { .. } => HookError::new("this user no longer exists"),
            StoreError::UserDisabled { .. } => HookError::new("this account is disabled"),
            StoreError::UserExpired { .. } => HookError::new("this account has expired"),
            other => {
                HookError::with_source("the user store is unavailable; try again later", other)
            }
        })
    }
}

/// The user's own storage: their root directory, created (0700) if missing; or their key
/// prefix on the object store.
async fn open_storage(
    profile: &UserProfile,
    objects: &ObjectStores,
) -> Result<Arc<dyn Filesystem>, HookError> {
    match &profile.storage {
        // The user's root is the key prefix in the bucket.
        Storage::ObjectStore { bucket } => objects
            .open(bucket, &profile.root_dir)
            .map_err(HookError::new),
        Storage::Local => {
            let root = profile.root_dir.clone();
            let fs = tokio::task::spawn_blocking(move || open_root(Path::new(&root)))
                .await
                .map_err(|e| HookError::with_source("storage setup failed", e))??;
            Ok(Arc::new(fs))
        }
        other => Err(HookError::new(format!(
            "this server cannot serve storage of kind {:?}",
            other.kind()
        ))),
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

fn print_first_user(first: &FirstUser, store: &str, port: u16) {
    println!("sftpgate: first start: created user {:?}", first.name);
    println!(
        "  password:   {}   (shown once; stored hashed in {store})",
        first.password,
    );
    if first.key_files.is_empty() {
        println!(
            "  public keys: none found in ~/.ssh (add one with `sftpgate key add {} --key-file FILE`)",
            first.name
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
