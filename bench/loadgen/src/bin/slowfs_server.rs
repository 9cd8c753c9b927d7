//! `sftpgate-slowfs-server`: sftpgate's [`Server`] on a [`LocalFs`] whose file reads and
//! writes each take a fixed extra latency (`tokio::time::sleep`), standing in for network or
//! object storage. With `--max-in-flight 1` it serves one request at a time, as OpenSSH,
//! AsyncSSH and russh-sftp do; the default is `Limits::default().max_in_flight`.
//!
//! Only for benchmarks: one user, public-key login with the keys of one authorized_keys
//! file, loopback only. Runs until SIGINT or SIGTERM. With `--delay-us 0` it is sftpgate's
//! engine on plain `LocalFs` (as `sftpgate serve`, minus its user store and NATS), which
//! makes it a test bed for server settings (`--nodelay`, `--max-in-flight`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::{Bytes, BytesMut};
use clap::Parser;
use sftpgate_fs_local::LocalFs;
use sftpgate_proto::{FileAttributes, OpenFlags, StatvfsReply, UsersGroupsReply, WriteData};
use sftpgate_server::keys::PublicKey;
use sftpgate_server::{
    Authenticator, Cleanup, HookError, Limits, NoHooks, Server, ServerConfig, SftpContext,
    SftpFactory,
};
use sftpgate_vfs::{Dir, EndReason, File, Filesystem, FsError, ReadPart, RenameMode, VPath};

/// The allocator `sftpgate serve` runs with (crates/sftpgate/src/main.rs), so that this
/// stand-in for it allocates as it does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// sftpgate on a local directory with a fixed latency added to every file read and write.
#[derive(Debug, Parser)]
#[command(name = "sftpgate-slowfs-server", version)]
struct Args {
    /// Address to listen on (loopback).
    #[arg(long, default_value = "127.0.0.1:2206")]
    listen: SocketAddr,
    /// Directory served as the session's `/`.
    #[arg(long)]
    root: PathBuf,
    /// Host key (OpenSSH private key file).
    #[arg(long)]
    host_key: PathBuf,
    /// authorized_keys file of the one user.
    #[arg(long)]
    authorized_keys: PathBuf,
    /// The one user's name.
    #[arg(long, env = "USER", default_value = "root")]
    user: String,
    /// Added to every File::read and File::write, in microseconds.
    #[arg(long, default_value_t = 1000)]
    delay_us: u64,
    /// Storage operations running at once per session (default: the server's default).
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// Connection threads (default: one per CPU, as `sftpgate serve`): each connection runs
    /// on one of them, beside a runtime of two workers for the accept loop.
    #[arg(long)]
    threads: Option<usize>,
    /// How long a connection thread polls for the next request after a small answer, in
    /// microseconds (as `sftpgate serve`'s `idle_spin`; 0: never).
    #[arg(long, default_value_t = sftpgate_server::DEFAULT_IDLE_SPIN.as_micros() as u64)]
    idle_spin_us: u64,
    /// Set TCP_NODELAY on the listening socket (Linux copies it to accepted sockets).
    /// `Server::run` sets it on every accepted socket itself now; kept so that older
    /// command lines still run.
    #[arg(long)]
    nodelay: bool,
    /// How file reads and writes reach the disk: `local` (LocalFs: page-cache reads
    /// inline, the rest on the file's lane of a few pool threads), `spawn` (one
    /// `spawn_blocking` per request, as LocalFs did before its lanes) or `inline`
    /// (pread/pwrite on the runtime worker itself; fine on tmpfs and in the page cache,
    /// blocks the worker on a slow disk). `spawn` and `inline` use a second descriptor of
    /// the file, opened without the jail: experiments for choosing the I/O path.
    #[arg(long, value_enum, default_value = "local")]
    io: Io,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Io {
    Local,
    Spawn,
    Inline,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.listen.ip().is_loopback() {
        bail!("--listen must be a loopback address");
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    // As `sftpgate serve` (crates/sftpgate/src/main.rs).
    let connections = sftpgate_server::connection_runtimes(
        threads,
        "slowfs-conn",
        std::time::Duration::from_micros(args.idle_spin_us),
    )
    .context("starting the connection runtimes")?;
    let handles = connections.iter().map(|r| r.handle().clone()).collect();
    let served = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(serve(args, handles));
    for runtime in connections {
        runtime.shutdown_background();
    }
    served
}

async fn serve(args: Args, connection_runtimes: Vec<tokio::runtime::Handle>) -> anyhow::Result<()> {
    let host_key = sftpgate_server::keys::load_secret_key(&args.host_key, None)
        .with_context(|| format!("loading host key {}", args.host_key.display()))?;
    let text = std::fs::read_to_string(&args.authorized_keys)
        .with_context(|| format!("reading {}", args.authorized_keys.display()))?;
    let keys: Vec<PublicKey> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(PublicKey::from_openssh)
        .collect::<Result<_, _>>()
        .context("parsing authorized_keys")?;
    if keys.is_empty() {
        bail!("no keys in {}", args.authorized_keys.display());
    }
    // Fails early on a missing root or a kernel without openat2.
    LocalFs::new(&args.root).with_context(|| format!("opening {}", args.root.display()))?;
    let mut limits = Limits::default();
    if let Some(n) = args.max_in_flight {
        limits.max_in_flight = n.max(1);
    }
    let in_flight = limits.max_in_flight;
    let config = ServerConfig {
        host_keys: vec![host_key],
        limits,
        password_auth: false,
        ..ServerConfig::default()
    };
    let auth = KeyAuth {
        user: args.user.clone(),
        keys,
    };
    let delay = Duration::from_micros(args.delay_us);
    let factory = SlowFactory {
        root: args.root.clone(),
        delay,
        io: args.io,
    };
    let server =
        Server::new(config, auth, NoHooks, factory)?.with_connection_runtimes(connection_runtimes);
    let stop = server.shutdown_handle();
    let socket = if args.listen.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if args.nodelay {
        socket.set_nodelay(true)?;
    }
    socket
        .bind(args.listen)
        .with_context(|| format!("listening on {}", args.listen))?;
    let listener = socket.listen(1024)?;
    println!(
        "sftpgate-slowfs-server listening on {} (root {}, +{delay:?} per read/write, max_in_flight {in_flight}, nodelay {}, io {:?})",
        listener.local_addr()?,
        args.root.display(),
        args.nodelay,
        args.io
    );
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        stop.shutdown();
    });
    server.run(listener).await?;
    Ok(())
}

struct KeyAuth {
    user: String,
    keys: Vec<PublicKey>,
}

impl Authenticator for KeyAuth {
    async fn password(&self, _user: &str, _password: &str, _peer: SocketAddr) -> bool {
        false
    }

    async fn publickey(&self, user: &str, key: &PublicKey, _peer: SocketAddr) -> bool {
        user == self.user && self.keys.iter().any(|k| k.key_data() == key.key_data())
    }
}

struct SlowFactory {
    root: PathBuf,
    delay: Duration,
    io: Io,
}

impl SftpFactory<()> for SlowFactory {
    async fn open(
        &self,
        _ctx: &SftpContext<()>,
        _cleanup: &mut Cleanup,
    ) -> Result<Arc<dyn Filesystem>, HookError> {
        let root = self.root.clone();
        let inner = tokio::task::spawn_blocking(move || LocalFs::new(root))
            .await
            .map_err(|e| HookError::with_source("storage setup failed", e))?
            .map_err(|e| HookError::with_source("storage unavailable", e))?;
        Ok(Arc::new(SlowFs {
            inner,
            delay: self.delay,
            plain: (self.io != Io::Local).then(|| (self.root.clone(), self.io == Io::Spawn)),
        }))
    }
}

/// [`LocalFs`] whose files' reads and writes each sleep `delay` first.
struct SlowFs {
    inner: LocalFs,
    delay: Duration,
    /// `--io spawn|inline`: the root, to open a second, plain descriptor of each file, and
    /// whether its operations go to `spawn_blocking`.
    plain: Option<(PathBuf, bool)>,
}

#[async_trait::async_trait]
impl Filesystem for SlowFs {
    async fn open(
        &self,
        path: &VPath,
        flags: OpenFlags,
        attrs: &FileAttributes,
    ) -> Result<Box<dyn File>, FsError> {
        let inner = self.inner.open(path, flags, attrs).await?;
        let plain = match &self.plain {
            // The jailed open above created or truncated the file and checked the path;
            // this one only gives a descriptor for pread/pwrite on the worker thread.
            Some((root, spawn)) if !flags.contains(OpenFlags::APPEND) => {
                use std::os::unix::ffi::OsStrExt as _;
                let host = root.join(std::ffi::OsStr::from_bytes(path.relative()));
                let file = std::fs::OpenOptions::new()
                    .read(flags.contains(OpenFlags::READ))
                    .write(flags.contains(OpenFlags::WRITE))
                    .open(host)
                    .map_err(|e| FsError::Other(format!("inline open: {e}")))?;
                Some((Arc::new(file), *spawn))
            }
            _ => None,
        };
        Ok(Box::new(SlowFile {
            inner,
            delay: self.delay,
            plain,
        }))
    }
    async fn opendir(&self, path: &VPath) -> Result<Box<dyn Dir>, FsError> {
        self.inner.opendir(path).await
    }
    async fn stat(&self, path: &VPath) -> Result<FileAttributes, FsError> {
        self.inner.stat(path).await
    }
    async fn lstat(&self, path: &VPath) -> Result<FileAttributes, FsError> {
        self.inner.lstat(path).await
    }
    async fn setstat(&self, path: &VPath, attrs: &FileAttributes) -> Result<(), FsError> {
        self.inner.setstat(path, attrs).await
    }
    async fn lsetstat(&self, path: &VPath, attrs: &FileAttributes) -> Result<(), FsError> {
        self.inner.lsetstat(path, attrs).await
    }
    async fn remove(&self, path: &VPath) -> Result<(), FsError> {
        self.inner.remove(path).await
    }
    async fn mkdir(&self, path: &VPath, attrs: &FileAttributes) -> Result<(), FsError> {
        self.inner.mkdir(path, attrs).await
    }
    async fn rmdir(&self, path: &VPath) -> Result<(), FsError> {
        self.inner.rmdir(path).await
    }
    async fn rename(&self, from: &VPath, to: &VPath, mode: RenameMode) -> Result<(), FsError> {
        self.inner.rename(from, to, mode).await
    }
    async fn readlink(&self, path: &VPath) -> Result<Bytes, FsError> {
        self.inner.readlink(path).await
    }
    async fn symlink(&self, target: &[u8], link: &VPath) -> Result<(), FsError> {
        self.inner.symlink(target, link).await
    }
    async fn hardlink(&self, existing: &VPath, new: &VPath) -> Result<(), FsError> {
        self.inner.hardlink(existing, new).await
    }
    async fn realpath(&self, path: &VPath) -> Result<VPath, FsError> {
        self.inner.realpath(path).await
    }
    async fn statvfs(&self, path: &VPath) -> Result<StatvfsReply, FsError> {
        self.inner.statvfs(path).await
    }
    async fn names_by_id(&self, uids: &[u32], gids: &[u32]) -> Result<UsersGroupsReply, FsError> {
        self.inner.names_by_id(uids, gids).await
    }
    async fn exit(&self, reason: &EndReason) {
        self.inner.exit(reason).await;
    }
}

struct SlowFile {
    inner: Box<dyn File>,
    delay: Duration,
    /// `--io spawn|inline`: reads and writes go here, on `spawn_blocking` or the calling
    /// thread.
    plain: Option<(Arc<std::fs::File>, bool)>,
}

#[async_trait::async_trait]
impl File for SlowFile {
    async fn read(&self, offset: u64, len: u32, buf: &mut BytesMut) -> Result<usize, FsError> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if let Some((file, true)) = &self.plain {
            use std::os::unix::fs::FileExt as _;
            let file = file.clone();
            let mut chunk = buf.split_off(buf.len());
            let chunk = tokio::task::spawn_blocking(move || {
                chunk.resize(len as usize, 0);
                let n = file.read_at(&mut chunk[..], offset)?;
                chunk.truncate(n);
                Ok::<_, std::io::Error>(chunk)
            })
            .await
            .map_err(|e| FsError::Other(format!("spawn read: {e}")))?
            .map_err(|e| FsError::Other(format!("spawn read: {e}")))?;
            let n = chunk.len();
            buf.unsplit(chunk);
            return if n == 0 && len > 0 {
                Err(FsError::Eof)
            } else {
                Ok(n)
            };
        }
        if let Some((file, false)) = &self.plain {
            use std::os::unix::fs::FileExt as _;
            let start = buf.len();
            buf.resize(start + len as usize, 0);
            let n = file
                .read_at(&mut buf[start..], offset)
                .map_err(|e| FsError::Other(format!("inline read: {e}")));
            buf.truncate(start + *n.as_ref().unwrap_or(&0));
            return match n? {
                0 if len > 0 => Err(FsError::Eof),
                n => Ok(n),
            };
        }
        self.inner.read(offset, len, buf).await
    }
    async fn write(&self, offset: u64, data: Bytes) -> Result<(), FsError> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if let Some((file, true)) = &self.plain {
            use std::os::unix::fs::FileExt as _;
            let file = file.clone();
            return tokio::task::spawn_blocking(move || file.write_all_at(&data, offset))
                .await
                .map_err(|e| FsError::Other(format!("spawn write: {e}")))?
                .map_err(|e| FsError::Other(format!("spawn write: {e}")));
        }
        if let Some((file, false)) = &self.plain {
            use std::os::unix::fs::FileExt as _;
            return file
                .write_all_at(&data, offset)
                .map_err(|e| FsError::Other(format!("inline write: {e}")));
        }
        self.inner.write(offset, data).await
    }
    /// A WRITE comes in the pieces of the SSH messages it arrived in; LocalFs writes them
    /// as they are (`pwritev`), as `sftpgate serve` does. (`plain` writes one buffer.)
    async fn write_data(&self, offset: u64, data: WriteData) -> Result<(), FsError> {
        if self.plain.is_some() {
            return self.write(offset, data.into_bytes()).await;
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.inner.write_data(offset, data).await
    }
    /// One sleep per READ, then its packets' buffers to LocalFs, which reads into them as
    /// `sftpgate serve` does. (`plain` reads one buffer, copied into them.)
    async fn read_parts(&self, offset: u64, parts: &mut [ReadPart]) -> Result<usize, FsError> {
        if self.plain.is_some() {
            return sftpgate_vfs::read_parts_joined(self, offset, parts).await;
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.inner.read_parts(offset, parts).await
    }
    /// The read hints only without a delay (then this is LocalFs as `sftpgate serve` runs
    /// it): with one, every read waits, which is what a hint must not promise.
    fn read_len_hint(&self, offset: u64, len: u32) -> Option<u32> {
        if self.delay.is_zero() && self.plain.is_none() {
            self.inner.read_len_hint(offset, len)
        } else {
            None
        }
    }
    fn reads_from_memory(&self) -> bool {
        self.delay.is_zero() && self.plain.is_none() && self.inner.reads_from_memory()
    }
    async fn stat(&self) -> Result<FileAttributes, FsError> {
        self.inner.stat().await
    }
    async fn setstat(&self, attrs: &FileAttributes) -> Result<(), FsError> {
        self.inner.setstat(attrs).await
    }
    async fn sync(&self) -> Result<(), FsError> {
        self.inner.sync().await
    }
    async fn statvfs(&self) -> Result<StatvfsReply, FsError> {
        self.inner.statvfs().await
    }
    async fn close(&self) -> Result<(), FsError> {
        self.inner.close().await
    }
}
