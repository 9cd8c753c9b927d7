//! `sftpgate sftp-server`: sftpgate's SFTP engine on stdin/stdout, where OpenSSH's
//! `sftp-server` runs (`Subsystem sftp /usr/local/bin/sftpgate sftp-server` in sshd_config,
//! or `sftp -D "sftpgate sftp-server"`). It runs as the invoking user on that user's
//! filesystem, or jailed in `--root`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use sftpgate_fs_local::LocalFs;
use sftpgate_server::{
    AuthMethod, Cleanup, ConnectionId, ConnectionInfo, Error, HookError, NoHooks, RequestPolicy,
    ServerConfig, SftpContext, SftpFactory, StreamSession,
};
use sftpgate_vfs::{Filesystem, VPath};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::Config;

/// Options, as OpenSSH's sftp-server spells them where they make sense.
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = false)]
pub struct SftpServerArgs {
    /// Start directory; `%d` is the user's home, `%u` the user name, `%%` a `%`.
    #[arg(short = 'd', value_name = "START_DIR")]
    start_dir: Option<String>,
    /// Read-only: refuse every request that would change the filesystem.
    #[arg(short = 'R')]
    read_only: bool,
    /// File creation mask, in octal (e.g. 022).
    #[arg(short = 'u', value_name = "UMASK")]
    umask: Option<String>,
    /// Comma-separated requests to refuse (names as `-Q requests` lists them).
    #[arg(short = 'P', value_name = "DENIED")]
    denied: Option<String>,
    /// Comma-separated requests to allow; all others are refused.
    #[arg(short = 'p', value_name = "ALLOWED")]
    allowed: Option<String>,
    /// Print the supported `requests` and exit.
    #[arg(short = 'Q', value_name = "QUERY")]
    query: Option<String>,
    /// Log level: QUIET, FATAL, ERROR, INFO, VERBOSE, DEBUG, DEBUG1, DEBUG2, DEBUG3.
    #[arg(short = 'l', value_name = "LEVEL")]
    log_level: Option<String>,
    /// Log to stderr. sshd discards a subsystem's stderr: to keep the log there, redirect it
    /// in the `Subsystem` line (`... sftp-server -e 2>>FILE`).
    #[arg(short = 'e')]
    log_stderr: bool,
    /// Syslog facility; accepted for compatibility, logs go to stderr with -e.
    #[arg(short = 'f', value_name = "FACILITY")]
    facility: Option<String>,
    /// Serve DIR as `/`, with the same jail as the server.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// sftpgate configuration file (timeouts, limits).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// The log filter these options ask for, if any (`None`: no logging at all).
pub fn log_filter(args: &SftpServerArgs) -> Option<String> {
    if !args.log_stderr {
        return None;
    }
    let level = match args
        .log_level
        .as_deref()
        .unwrap_or("ERROR")
        .to_ascii_uppercase()
        .as_str()
    {
        "QUIET" => "off",
        "FATAL" | "ERROR" => "error",
        "INFO" => "info",
        "VERBOSE" => "info",
        "DEBUG" | "DEBUG1" => "debug",
        _ => "trace",
    };
    Some(format!("{level},russh=warn"))
}

/// Runs the session; returns the process exit code.
pub fn run(args: SftpServerArgs) -> anyhow::Result<i32> {
    if let Some(query) = &args.query {
        return query_answer(query);
    }
    if let Some(level) = &args.log_level {
        let known = [
            "QUIET", "FATAL", "ERROR", "INFO", "VERBOSE", "DEBUG", "DEBUG1", "DEBUG2", "DEBUG3",
        ];
        if !known.contains(&level.to_ascii_uppercase().as_str()) {
            bail!("invalid log level {level:?} (one of {})", known.join(", "));
        }
    }
    if let Some(mask) = &args.umask {
        let mask = u32::from_str_radix(mask, 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .with_context(|| format!("invalid umask {mask:?} (octal, e.g. 022)"))?;
        rustix::process::umask(rustix::fs::Mode::from_bits_truncate(mask));
    }
    let config = Config::load(args.config.as_deref(), std::env::vars())?;
    let user = crate::users::invoking_user_name().unwrap_or_else(|| "unknown".into());
    let home = std::env::var("HOME").unwrap_or_else(|_| "/".into());
    let (root, start) = match &args.root {
        Some(root) => (root.clone(), "/".to_owned()),
        None => {
            let cwd = std::env::current_dir().map(|d| d.to_string_lossy().into_owned());
            (PathBuf::from("/"), cwd.unwrap_or_else(|_| home.clone()))
        }
    };
    let start = match &args.start_dir {
        Some(dir) => expand(dir, &home, &user)?,
        None => start,
    };
    let start_dir = VPath::parse(start.as_bytes()).context("invalid start directory")?;
    let policy = RequestPolicy {
        read_only: args.read_only,
        denied: request_names(args.denied.as_deref())?,
        allowed: args
            .allowed
            .as_deref()
            .map(|a| request_names(Some(a)))
            .transpose()?,
    };
    let server_config = ServerConfig {
        timeouts: config.server_timeouts(),
        limits: config.server_limits(),
        policy,
        ..ServerConfig::default()
    };
    let connection = ConnectionInfo {
        id: ConnectionId(std::process::id().into()),
        peer: ssh_client_address(),
        user,
        method: AuthMethod::External,
        client_software: String::new(),
    };
    // One session per process, like OpenSSH's sftp-server: a single thread does it all (the
    // local backend then runs its system calls inline instead of hopping to a pool).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let code = runtime.block_on(async move {
        let session = StreamSession::new(server_config, NoHooks, RootFactory { root })
            .with_start_dir(start_dir);
        let stop = session.shutdown_handle();
        let mut signals = Signals::new()?;
        tokio::spawn(async move {
            signals.next().await;
            stop.shutdown();
        });
        match session
            .run(connection, stdin_reader(), stdout_writer())
            .await
        {
            Ok(reason) => {
                tracing::info!(reason = %reason, "session ended");
                Ok(0)
            }
            Err(Error::Refused(message)) => {
                eprintln!("sftpgate: {message}");
                Ok(1)
            }
            Err(e) => Err(e.into()),
        }
    });
    // tokio reads stdin with a blocking read on a runtime thread that cannot be cancelled,
    // and dropping the runtime waits for it: after SIGTERM/SIGHUP (stdin still open) the
    // process would stay until the client wrote or closed the pipe. The session and its exit
    // are done; don't wait for that read.
    runtime.shutdown_background();
    code
}

/// stdin for the session: polled by the reactor when it is a pipe or a socket (what `sftp -D`
/// and sshd give), so that reading costs no thread hand-off; Tokio's blocking reader for
/// anything else (a file).
fn stdin_reader() -> Box<dyn AsyncRead + Unpin + Send> {
    use std::os::fd::AsFd as _;
    match duplicate(std::io::stdin().as_fd()) {
        Some(Pollable::Pipe(file)) => match tokio::net::unix::pipe::Receiver::from_file(file) {
            Ok(pipe) => return Box::new(pipe),
            Err(e) => tracing::debug!(error = %e, "stdin pipe not pollable"),
        },
        Some(Pollable::Socket(socket)) => match nonblocking_socket(socket) {
            Ok(socket) => return Box::new(socket),
            Err(e) => tracing::debug!(error = %e, "stdin socket not pollable"),
        },
        None => {}
    }
    Box::new(tokio::io::stdin())
}

/// Kernel buffer asked for stdout: a few 255 KiB DATA replies, so that sending them waits
/// less often for the client to read (the defaults are 64 KiB for a pipe and about 208 KiB
/// for a socket, less than one large reply).
const REPLY_BUFFER: usize = 1 << 20;

/// stdout for the session, as [`stdin_reader`].
fn stdout_writer() -> Box<dyn AsyncWrite + Unpin + Send> {
    use std::os::fd::AsFd as _;
    match duplicate(std::io::stdout().as_fd()) {
        Some(Pollable::Pipe(file)) => match tokio::net::unix::pipe::Sender::from_file(file) {
            Ok(pipe) => {
                // Room for several large replies: fewer waits for the client to drain.
                let _ = rustix::pipe::fcntl_setpipe_size(&pipe, REPLY_BUFFER);
                return Box::new(pipe);
            }
            Err(e) => tracing::debug!(error = %e, "stdout pipe not pollable"),
        },
        Some(Pollable::Socket(socket)) => match nonblocking_socket(socket) {
            Ok(socket) => {
                // As for a pipe; the kernel caps it at net.core.wmem_max.
                let _ = rustix::net::sockopt::set_socket_send_buffer_size(&socket, REPLY_BUFFER);
                return Box::new(socket);
            }
            Err(e) => tracing::debug!(error = %e, "stdout socket not pollable"),
        },
        None => {}
    }
    Box::new(tokio::io::stdout())
}

enum Pollable {
    Pipe(std::fs::File),
    Socket(std::os::unix::net::UnixStream),
}

/// A duplicate of `fd` when it is a pipe or a socket.
fn duplicate(fd: std::os::fd::BorrowedFd<'_>) -> Option<Pollable> {
    let stat = rustix::fs::fstat(fd).ok()?;
    let kind = rustix::fs::FileType::from_raw_mode(stat.st_mode);
    let owned = fd.try_clone_to_owned().ok()?;
    match kind {
        rustix::fs::FileType::Fifo => Some(Pollable::Pipe(std::fs::File::from(owned))),
        rustix::fs::FileType::Socket => Some(Pollable::Socket(owned.into())),
        _ => None,
    }
}

fn nonblocking_socket(
    socket: std::os::unix::net::UnixStream,
) -> std::io::Result<tokio::net::UnixStream> {
    socket.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(socket)
}

/// `-Q requests`: one name per line.
fn query_answer(query: &str) -> anyhow::Result<i32> {
    match query {
        "requests" => {
            for name in sftpgate_proto::REQUEST_NAMES {
                println!("{name}");
            }
            Ok(0)
        }
        other => bail!("unsupported query {other:?} (supported: requests)"),
    }
}

/// The session's storage: the jail root (the whole filesystem without `--root`).
struct RootFactory {
    root: PathBuf,
}

impl SftpFactory<()> for RootFactory {
    async fn open(
        &self,
        _ctx: &SftpContext<()>,
        _cleanup: &mut Cleanup,
    ) -> Result<Arc<dyn Filesystem>, HookError> {
        let fs = LocalFs::new(&self.root).map_err(|e| {
            let message = format!("cannot serve {}: {e}", self.root.display());
            HookError::with_source(message, e)
        })?;
        Ok(Arc::new(fs))
    }
}

/// A comma-separated list of request names, each as `-Q requests` lists it or as OpenSSH's
/// sftp-server spells it (`hardlink` for `hardlink@openssh.com`), so that an existing
/// `Subsystem` line keeps working.
fn request_names(value: Option<&str>) -> anyhow::Result<Vec<String>> {
    list(value)
        .into_iter()
        .map(|name| {
            sftpgate_proto::REQUEST_NAMES
                .iter()
                .find(|known| {
                    **known == name || known.strip_suffix("@openssh.com") == Some(name.as_str())
                })
                .map(|known| (*known).to_owned())
                .with_context(|| format!("unknown request {name:?} (see -Q requests)"))
        })
        .collect()
}

fn list(value: Option<&str>) -> Vec<String> {
    value
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// `%d`, `%u` and `%%` as in OpenSSH's `-d`.
fn expand(template: &str, home: &str, user: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(home),
            Some('u') => out.push_str(user),
            Some('%') => out.push('%'),
            other => bail!(
                "invalid escape %{} in start directory",
                other.map(String::from).unwrap_or_default()
            ),
        }
    }
    Ok(out)
}

/// The client's address from `SSH_CONNECTION` (set by sshd), else unspecified.
fn ssh_client_address() -> SocketAddr {
    std::env::var("SSH_CONNECTION")
        .ok()
        .and_then(|v| {
            let mut parts = v.split_whitespace();
            let ip = parts.next()?.parse().ok()?;
            let port = parts.next()?.parse().ok()?;
            Some(SocketAddr::new(ip, port))
        })
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// SIGTERM and SIGHUP (sshd sends either when the client goes away).
struct Signals {
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            hangup: signal(SignalKind::hangup()).context("listening for SIGHUP")?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.hangup.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_like_openssh() {
        assert_eq!(expand("%d/in", "/home/a", "a").unwrap(), "/home/a/in");
        assert_eq!(expand("/srv/%u", "/home/a", "a").unwrap(), "/srv/a");
        assert_eq!(expand("100%%", "/h", "u").unwrap(), "100%");
        assert!(expand("%x", "/h", "u").is_err());
    }

    #[test]
    fn request_names_accept_openssh_spellings() {
        let names = request_names(Some("write,hardlink,posix-rename@openssh.com,copy-data"));
        assert_eq!(
            names.unwrap(),
            [
                "write",
                "hardlink@openssh.com",
                "posix-rename@openssh.com",
                "copy-data"
            ]
        );
        assert!(request_names(Some("open,bogus")).is_err());
        assert!(request_names(Some("copy-data@openssh.com")).is_err());
    }

    #[test]
    fn lists_split_on_commas() {
        assert_eq!(
            list(Some("open, write,,remove")),
            vec!["open", "write", "remove"]
        );
        assert!(list(None).is_empty());
    }
}
