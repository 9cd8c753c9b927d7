//! Harness for `sftpgate sftp-server`: the OpenSSH client with `-D` (no SSH in the way), the
//! binary driven by hand over pipes (for exit codes and signals), and a private `sshd` on a
//! loopback port with `Subsystem sftp` pointing at the built binary.
//!
//! The generic pieces (running a process with a timeout, comparing files and trees, quoting
//! for sftp's command line) come from `tests/common`.
#![allow(dead_code)] // not every helper is used by every test

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub use crate::common::{collect, Collected};
use crate::common::{quote, require, run, wait_timeout, Output, SSH_OPTIONS};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_sftpgate");
/// One `sftp` batch (the largest moves a few MiB a few times through a debug build).
pub const SFTP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an ending process gets to go away.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(5);
/// What sftpgate logs (with `-e`, at INFO and below) when a session's exit has run.
pub const EXIT_DONE: &str = "session exit done";

/// A temporary directory with `root/` (served as `/` with `--root`) and `local/` (the
/// client's working directory).
pub struct Fx {
    pub dir: TempDir,
}

impl Fx {
    /// A new fixture, or `None` (after a message; a failure under `CI=true`) when OpenSSH's
    /// `sftp` is missing.
    pub fn new() -> Option<Fx> {
        if !require(&["sftp"]) {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("sftpgate-stdio-")
            .tempdir()
            .expect("creating a temporary directory");
        for sub in ["root", "local"] {
            std::fs::create_dir(dir.path().join(sub)).expect("creating a fixture directory");
        }
        Some(Fx { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// What the server serves as `/` (with [`Fx::sftp`]).
    pub fn root(&self) -> PathBuf {
        self.path().join("root")
    }

    /// The client's working directory.
    pub fn local(&self) -> PathBuf {
        self.path().join("local")
    }

    /// `sftp -b` with `batch` against `sftpgate sftp-server --root <root> <server_args>`,
    /// in [`Fx::local`].
    pub fn sftp(&self, server_args: &[&str], batch: &str) -> Output {
        let mut args = vec!["--root".to_owned(), path_str(&self.root())];
        args.extend(server_args.iter().map(|a| (*a).to_owned()));
        self.sftp_with(&self.local(), &[], &server_command(&args), batch, |_| {})
    }

    /// [`Fx::sftp`] with options for the client (`-R 256`, `-B 1024`).
    pub fn sftp_client_opts(&self, client_args: &[&str], batch: &str) -> Output {
        let args = ["--root".to_owned(), path_str(&self.root())];
        self.sftp_with(
            &self.local(),
            client_args,
            &server_command(&args),
            batch,
            |_| {},
        )
    }

    /// `sftp -b` with any `-D` command line, in `cwd`; `env` may adjust the client's
    /// environment (which the server inherits).
    pub fn sftp_with(
        &self,
        cwd: &Path,
        client_args: &[&str],
        direct: &str,
        batch: &str,
        env: impl FnOnce(&mut Command),
    ) -> Output {
        let batch_file = self.path().join(format!("batch-{}", unique()));
        std::fs::write(&batch_file, batch).expect("writing a batch file");
        let mut cmd = sftp_command(cwd, direct);
        cmd.args(client_args).arg("-b").arg(&batch_file);
        env(&mut cmd);
        let out = run(&mut cmd, SFTP_TIMEOUT);
        let _ = std::fs::remove_file(&batch_file);
        out
    }
}

/// `sftp -D <direct>` in `cwd`, with no configuration and the test's logging variables
/// removed (so that the server logs only what its options ask for).
pub fn sftp_command(cwd: &Path, direct: &str) -> Command {
    let mut cmd = Command::new("sftp");
    cmd.current_dir(cwd)
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .args(["-F", "/dev/null", "-D", direct]);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SFTPGATE_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// The `-D` argument for `sftpgate sftp-server <args>`: OpenSSH splits it like a shell
/// (`argv_split`), so every word is double-quoted.
pub fn server_command(args: &[String]) -> String {
    let mut line = format!("{} sftp-server", quote(BIN));
    for arg in args {
        line.push(' ');
        line.push_str(&quote(arg));
    }
    line
}

/// `sftpgate sftp-server` with no arguments yet, its environment cleaned like
/// [`sftp_command`]'s.
pub fn sftp_server() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("sftp-server")
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SFTPGATE_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

pub fn path_str(path: &Path) -> String {
    path.to_str().expect("a UTF-8 temporary path").to_owned()
}

/// A POSIX shell word for `s` (single quotes).
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// How often `needle` occurs in `haystack`.
pub fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// `sftpgate sftp-server` on pipes, driven by hand: the test writes SFTP packets to its
/// stdin and sees its stdout end. Killed when dropped.
pub struct Piped {
    pub child: Child,
    stdin: Option<ChildStdin>,
    /// Every reply packet's type byte, in order, then `None` at EOF.
    packets: mpsc::Receiver<Option<u8>>,
    stderr: Collected,
    pub exited: Option<ExitStatus>,
}

impl Piped {
    /// Starts `sftpgate sftp-server <args>` in `cwd`.
    pub fn start(cwd: &Path, args: &[&str]) -> Piped {
        let mut child = sftp_server()
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting sftpgate sftp-server");
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let (tx, packets) = mpsc::channel();
        std::thread::spawn(move || loop {
            let mut len = [0u8; 4];
            if stdout.read_exact(&mut len).is_err() {
                let _ = tx.send(None);
                return;
            }
            let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
            if stdout.read_exact(&mut body).is_err() {
                let _ = tx.send(None);
                return;
            }
            let _ = tx.send(body.first().copied());
        });
        let stderr = collect(child.stderr.take().expect("stderr is piped"));
        Piped {
            stdin: child.stdin.take(),
            child,
            packets,
            stderr,
            exited: None,
        }
    }

    /// Sends SSH_FXP_INIT (version 3) and waits for SSH_FXP_VERSION.
    pub fn handshake(&mut self) {
        let init = [0, 0, 0, 5, 1, 0, 0, 0, 3];
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin.write_all(&init).expect("writing INIT");
        stdin.flush().expect("flushing INIT");
        match self.packets.recv_timeout(Duration::from_secs(20)) {
            Ok(Some(2)) => {}
            other => panic!(
                "expected SSH_FXP_VERSION, got {other:?}\n--- stderr ---\n{}",
                self.stderr()
            ),
        }
    }

    /// Closes its stdin (the client went away).
    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    /// Whether its stdout reaches EOF within `timeout` (after any pending packets).
    pub fn stdout_closes(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.packets.recv_timeout(left) {
                Ok(Some(_)) => continue,
                Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => return true,
                Err(mpsc::RecvTimeoutError::Timeout) => return false,
            }
        }
    }

    /// Waits up to `timeout` for the exit.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = wait_timeout(&mut self.child, timeout);
        }
        self.exited
    }

    /// Its log: all of it once it has exited, what arrived so far while it runs.
    pub fn stderr(&self) -> String {
        if self.exited.is_some() {
            self.stderr.complete(Duration::from_secs(5))
        } else {
            self.stderr.text()
        }
    }
}

impl Drop for Piped {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether process `pid` has ended (gone, or a zombie its parent has not reaped yet).
pub fn process_ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

/// The current user's name (`id -un`).
pub fn user_name() -> String {
    let out = run(Command::new("id").arg("-un"), Duration::from_secs(10));
    assert!(out.status.success(), "id -un failed\n{}", out.show());
    out.stdout.trim().to_owned()
}

/// A private OpenSSH `sshd` on `127.0.0.1:<port>`, logging in the current user with one key
/// and running `Subsystem sftp <subsystem>`. Stopped when dropped.
pub struct Sshd {
    child: Child,
    pub port: u16,
    /// The client's private key.
    pub key: PathBuf,
    stderr: Collected,
}

impl Sshd {
    /// Where `sshd` is, or `None` (after a message; a failure under `CI=true`).
    pub fn find() -> Option<PathBuf> {
        let found = ["/usr/sbin/sshd", "/usr/local/sbin/sshd"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| {
                p.metadata()
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            });
        if found.is_none() {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true and /usr/sbin/sshd not found: install openssh-server");
            }
            eprintln!("skipping: /usr/sbin/sshd not found (install openssh-server)");
        }
        found
    }

    /// Starts `sshd` with its own config, host key and client key in `dir` (needs
    /// `ssh-keygen`).
    pub fn start(sshd: &Path, dir: &Path, subsystem: &str) -> Sshd {
        let host_key = dir.join("host_ed25519");
        let key = dir.join("id_ed25519");
        for path in [&host_key, &key] {
            let out = run(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-C", "sftpgate-test", "-f"])
                    .arg(path),
                Duration::from_secs(30),
            );
            assert!(out.status.success(), "ssh-keygen failed\n{}", out.show());
        }
        let authorized = dir.join("authorized_keys");
        std::fs::copy(key.with_extension("pub"), &authorized).expect("authorized_keys");
        // As root, sshd wants its privilege-separation directory.
        if rustix::process::getuid().is_root() && !Path::new("/run/sshd").is_dir() {
            std::fs::create_dir_all("/run/sshd").expect("creating /run/sshd");
            std::fs::set_permissions("/run/sshd", std::fs::Permissions::from_mode(0o755))
                .expect("chmod /run/sshd");
        }
        let mut last_error = String::new();
        // A free port can be taken between probing and binding: try a few.
        for _ in 0..3 {
            let port = free_port();
            let conf = dir.join("sshd_config");
            std::fs::write(
                &conf,
                format!(
                    "Port {port}\n\
                     ListenAddress 127.0.0.1\n\
                     HostKey {}\n\
                     PidFile none\n\
                     AuthorizedKeysFile {}\n\
                     PubkeyAuthentication yes\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     PermitRootLogin prohibit-password\n\
                     UsePAM no\n\
                     StrictModes no\n\
                     UseDNS no\n\
                     X11Forwarding no\n\
                     PrintMotd no\n\
                     LogLevel ERROR\n\
                     Subsystem sftp {subsystem}\n",
                    host_key.display(),
                    authorized.display(),
                ),
            )
            .expect("writing sshd_config");
            let mut child = Command::new(sshd)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&conf)
                .env_remove("RUST_LOG")
                .env_remove("RUST_BACKTRACE")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", sshd.display()));
            let stderr = collect(child.stderr.take().expect("stderr is piped"));
            let mut server = Sshd {
                child,
                port,
                key: key.clone(),
                stderr,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_ok() {
                    return server;
                }
                if let Some(status) = server.child.try_wait().expect("polling sshd") {
                    last_error = format!("sshd exited with {status}: {}", server.stderr());
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if last_error.is_empty() {
                last_error = format!("sshd did not listen within 10 s: {}", server.stderr());
            }
        }
        panic!("could not start sshd: {last_error}");
    }

    /// `sftp -b` with `batch` as `user`, in `cwd`.
    pub fn sftp(&self, cwd: &Path, user: &str, batch: &str) -> Output {
        let batch_file = tempfile::NamedTempFile::new().expect("creating a batch file");
        std::fs::write(batch_file.path(), batch).expect("writing a batch file");
        let mut cmd = Command::new("sftp");
        cmd.current_dir(cwd)
            .env_remove("SSH_AUTH_SOCK")
            .args(SSH_OPTIONS)
            .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
            .args(["-o", "PreferredAuthentications=publickey", "-i"])
            .arg(&self.key)
            .arg("-P")
            .arg(self.port.to_string())
            .arg("-b")
            .arg(batch_file.path())
            .arg(format!("{user}@127.0.0.1"));
        run(&mut cmd, SFTP_TIMEOUT)
    }

    pub fn stderr(&self) -> String {
        self.stderr.text()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        crate::common::signal(&self.child, rustix::process::Signal::TERM);
        if wait_timeout(&mut self.child, EXIT_TIMEOUT).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- sshd stderr ---\n{}", self.stderr());
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("probing for a free port")
        .port()
}

/// Lines of `stdout` printed after the echoed batch line `sftp> <command>` and before the
/// next prompt.
pub fn section<'a>(stdout: &'a str, command: &str) -> Vec<&'a str> {
    let marker = format!("sftp> {command}\n");
    let Some(start) = stdout.find(&marker) else {
        panic!("`{command}` not found in\n{stdout}");
    };
    stdout[start + marker.len()..]
        .lines()
        .take_while(|l| !l.starts_with("sftp> "))
        .collect()
}
