//! The lifecycle end to end: when a client opens SFTP, allocate a volume and await its
//! readiness; serve the session from it; release it when the session ends, however it ends.
//!
//! Run:     cargo run -p sftpgate-server --example provisioning -- 127.0.0.1:2223
//! Log in:  sftp -P 2223 demo@127.0.0.1        (password: demo)

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sftpgate_fs_local::LocalFs;
use sftpgate_server::keys::{Algorithm, PrivateKey, PublicKey};
use sftpgate_server::{
    Authenticator, Cleanup, HookError, NoHooks, Server, ServerConfig, SftpContext, SftpFactory,
};
use sftpgate_vfs::{Filesystem, WithExit};

/// Stands in for a volume service you would reach over a message bus.
struct Volumes(PathBuf);

impl Volumes {
    async fn allocate(&self, name: &str) -> std::io::Result<PathBuf> {
        let dir = self.0.join(name);
        tokio::fs::create_dir_all(&dir).await?;
        Ok(dir)
    }
    async fn wait_ready(&self, _dir: &Path) {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    async fn release(dir: PathBuf) {
        let _ = tokio::fs::remove_dir_all(&dir).await;
        println!("released {}", dir.display());
    }
}

struct Factory(Volumes);

impl SftpFactory<()> for Factory {
    async fn open(
        &self,
        ctx: &SftpContext<()>,
        cleanup: &mut Cleanup,
    ) -> Result<Arc<dyn Filesystem>, HookError> {
        let name = format!("{}-{}", ctx.connection.user, ctx.session);
        let dir = (self.0.allocate(&name).await)
            .map_err(|e| HookError::with_source("no volume available", e))?;
        // Runs only if this factory does not finish (client gone, timeout, error below).
        cleanup.register(Volumes::release(dir.clone()));
        self.0.wait_ready(&dir).await;
        let fs = LocalFs::new(&dir).map_err(|e| HookError::with_source("volume unusable", e))?;
        // From here on the session's exit owns the release.
        Ok(Arc::new(WithExit::new(Arc::new(fs), move |reason| {
            println!("session ended: {reason}");
            Volumes::release(dir.clone())
        })))
    }
}

struct DemoAuth;

impl Authenticator for DemoAuth {
    async fn password(&self, _user: &str, password: &str, _peer: SocketAddr) -> bool {
        password == "demo"
    }
    async fn publickey(&self, _user: &str, _key: &PublicKey, _peer: SocketAddr) -> bool {
        false
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:2223".into());
    let config = ServerConfig {
        host_keys: vec![PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)?],
        ..ServerConfig::default()
    };
    let volumes = Volumes(std::env::temp_dir().join("sftpgate-volumes"));
    let server = Server::new(config, DemoAuth, NoHooks, Factory(volumes))?;
    let stop = server.shutdown_handle();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.shutdown(); // ends every session; run() returns once their exits are done
    });
    server
        .run(tokio::net::TcpListener::bind(addr).await?)
        .await?;
    Ok(())
}
