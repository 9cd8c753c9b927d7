//! Harness for the end-to-end tests: the real `sftpgate` binary as a child process on
//! `127.0.0.1:0`, and real OpenSSH clients (`sftp`, `ssh-keygen`, `sshpass`) talking to it.
//!
//! Every test gets a [`Fixture`]: a temporary directory holding a fresh ed25519 client key,
//! the server's data directory (`data/`), a local working directory for the client
//! (`local/`) and an empty `home/` that stands in for `$HOME`; users are added with the
//! binary's own CLI (`sftpgate user add`), on the SQLite store in `data/` or, with
//! [`Fixture::with_postgres`], on a fresh schema of the local PostgreSQL ([`postgres`]).
//! A missing client binary skips the test with a message, or fails it under `CI=true`
//! (ENGINEERING.md, e).
#![allow(dead_code)] // each test file uses a different part of the harness

pub mod postgres;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{BufRead as _, BufReader, Read as _};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a server gets to print its listening line (argon2 in a debug build is slow).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `sftp` batch may take (the largest moves 100 MiB twice).
pub const SFTP_TIMEOUT: Duration = Duration::from_secs(90);
/// How long one `sftpgate user|key|perm` command may take.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// The user name every test logs in as, unless it says otherwise.
pub const USER: &str = "alice";

/// The OpenSSH options of every client run: no user or system configuration, no host key
/// checks, no agent or default keys, never a prompt.
pub const SSH_OPTIONS: &[&str] = &[
    "-F",
    "/dev/null",
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "GlobalKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "ConnectTimeout=20",
];

/// Whether every program in `names` is on `PATH`. When one is missing: under `CI=true` the
/// test fails; otherwise it prints why it is skipped and the caller returns.
pub fn require(names: &[&str]) -> bool {
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| find_program(n).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!("{} not found on PATH", missing.join(", "));
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and {why}: install the OpenSSH client (and sshpass)");
    }
    eprintln!("skipping: {why}");
    false
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// What a finished process printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Both streams, for assertion messages.
    pub fn show(&self) -> String {
        format!(
            "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` with stdin closed, capturing its output; kills it and fails the test if it
/// runs longer than `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    run_with_input(cmd, None, timeout)
}

/// [`run`] with `input` written to its stdin (then closed), if given.
pub fn run_with_input(cmd: &mut Command, input: Option<&str>, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let stdout = drain(child.stdout.take().expect("stdout is piped"));
    let stderr = drain(child.stderr.take().expect("stderr is piped"));
    if let Some(input) = input {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // A command that exits without reading is not this function's failure. Dropping
        // `stdin` closes it.
        let _ = stdin.write_all(input.as_bytes());
    }
    let status = wait_timeout(&mut child, timeout);
    let Some(status) = status else {
        let _ = child.kill();
        let status = child.wait().expect("waiting for a killed child");
        let (stdout, stderr) = (join(stdout), join(stderr));
        panic!(
            "{cmd:?} did not finish within {timeout:?}\n{}",
            Output {
                status,
                stdout,
                stderr
            }
            .show()
        );
    };
    Output {
        status,
        stdout: join(stdout),
        stderr: join(stderr),
    }
}

fn drain(mut stream: impl std::io::Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stream.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn join(reader: JoinHandle<String>) -> String {
    reader.join().expect("output reader thread")
}

/// Polls `child` until it exits or `timeout` passes.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("polling a child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends `signal` to `child` (ignoring a child that is already gone).
pub fn signal(child: &Child, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_child(child);
    let _ = rustix::process::kill_process(pid, signal);
}

/// A temporary directory with a client key, the server's data directory and a local
/// working directory for the client.
pub struct Fixture {
    pub dir: TempDir,
    /// The client's private key (`<dir>/id_ed25519`).
    pub key: PathBuf,
    /// Its `authorized_keys` line.
    pub public_key: String,
    /// The PostgreSQL schema the server and the CLI share; `None`: the SQLite store in the
    /// data directory.
    pub postgres: Option<postgres::Schema>,
}

impl Fixture {
    /// A new fixture, or `None` (after a message) when OpenSSH's `sftp`, `ssh` or
    /// `ssh-keygen` is missing.
    pub fn new() -> Option<Fixture> {
        if !require(&["sftp", "ssh", "ssh-keygen"]) {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("sftpgate-e2e-")
            .tempdir()
            .expect("creating a temporary directory");
        let key = dir.path().join("id_ed25519");
        let out = run(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "sftpgate-test", "-f"])
                .arg(&key),
            Duration::from_secs(30),
        );
        assert!(out.status.success(), "ssh-keygen failed\n{}", out.show());
        let public_key = std::fs::read_to_string(key.with_extension("pub"))
            .expect("reading the public key")
            .trim()
            .to_owned();
        for sub in ["data", "local", "home"] {
            std::fs::create_dir(dir.path().join(sub)).expect("creating a fixture directory");
        }
        Some(Fixture {
            dir,
            key,
            public_key,
            postgres: None,
        })
    }

    /// A fixture whose store is a fresh schema of the local PostgreSQL, or `None` (after a
    /// message; a failure under `CI=true`) when that or a client binary is missing.
    pub fn with_postgres() -> Option<Fixture> {
        let mut fixture = Fixture::new()?;
        fixture.postgres = Some(postgres::Schema::create()?);
        Some(fixture)
    }

    /// Which store this fixture uses, for messages.
    pub fn backend(&self) -> &'static str {
        if self.postgres.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The server's `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.path().join("data")
    }

    /// The client's working directory: where `put` reads and `get` writes.
    pub fn local(&self) -> PathBuf {
        self.path().join("local")
    }

    /// The server's `$HOME`: empty, so that the first start finds no keys in `~/.ssh`.
    pub fn home(&self) -> PathBuf {
        self.path().join("home")
    }

    /// Where `user`'s files are on the host (the default root, `<data>/files/<user>`).
    pub fn user_root(&self, user: &str) -> PathBuf {
        self.data_dir().join("files").join(user)
    }

    /// The client's public key file.
    pub fn public_key_file(&self) -> PathBuf {
        self.key.with_extension("pub")
    }

    /// Writes `text` to `<dir>/<name>` and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, text).expect("writing a fixture file");
        path
    }

    /// `sftpgate` with no arguments yet, in the fixture directory, with every `SFTPGATE_*`
    /// variable of the test's environment removed, `$HOME` set to [`Fixture::home`] and
    /// `$USER` to `firstuser`; with PostgreSQL, `SFTPGATE_DATABASE_URL` names its schema.
    pub fn sftpgate(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sftpgate"));
        cmd.current_dir(self.path())
            .env("HOME", self.home())
            .env("USER", "firstuser")
            .env_remove("RUST_LOG")
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE");
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SFTPGATE_") {
                cmd.env_remove(name);
            }
        }
        if let Some(db) = &self.postgres {
            cmd.env("SFTPGATE_DATABASE_URL", db.url());
        }
        cmd
    }

    /// Runs `sftpgate ARGS --data-dir <data>` (a `user`, `key` or `perm` command on this
    /// fixture's store).
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_input(args, None)
    }

    /// [`Fixture::cli`] with `input` on its stdin.
    pub fn cli_with_input(&self, args: &[&str], input: Option<&str>) -> Output {
        let mut cmd = self.sftpgate();
        cmd.args(args).arg("--data-dir").arg(self.data_dir());
        run_with_input(&mut cmd, input, CLI_TIMEOUT)
    }

    /// [`Fixture::cli`] that must succeed; returns its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "sftpgate {args:?} failed\n{}",
            out.show()
        );
        out.stdout
    }

    /// Adds `user` with this fixture's key and the root [`Fixture::user_root`], through the
    /// CLI (`sftpgate user add USER --key-file … --root …`).
    pub fn add_user(&self, user: &str) {
        let (key_file, root) = (self.public_key_file(), self.user_root(user));
        self.cli_ok(&[
            "user",
            "add",
            user,
            "--key-file",
            key_file.to_str().expect("a UTF-8 path"),
            "--root",
            root.to_str().expect("a UTF-8 path"),
        ]);
    }

    /// `sftpgate serve --listen 127.0.0.1:0 --data-dir <data> [--config FILE]`.
    pub fn serve(&self, config: Option<&Path>) -> Command {
        let mut cmd = self.sftpgate();
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(self.data_dir());
        if let Some(config) = config {
            cmd.arg("--config").arg(config);
        }
        cmd
    }

    /// Adds `user` (key login with this fixture's key, [`Fixture::add_user`]) and starts a
    /// server.
    pub fn start(&self, user: &str) -> Server {
        self.add_user(user);
        self.start_server(None)
    }

    /// Starts a server on this fixture's store, with `config` if given.
    pub fn start_server(&self, config: Option<&Path>) -> Server {
        Server::start(self.serve(config))
            .unwrap_or_else(|out| panic!("the server did not start\n{}", out.show()))
    }

    /// Runs `sftp -b` with `batch` as `user` with this fixture's key, in [`Fixture::local`].
    pub fn sftp(&self, server: &Server, user: &str, batch: &str) -> Output {
        self.sftp_in(&self.local(), server, user, batch)
    }

    /// [`Fixture::sftp`] with another local working directory.
    pub fn sftp_in(&self, cwd: &Path, server: &Server, user: &str, batch: &str) -> Output {
        self.sftp_within(cwd, server, user, batch, SFTP_TIMEOUT)
    }

    /// [`Fixture::sftp_in`], killed after `limit` instead of [`SFTP_TIMEOUT`] (a guard
    /// against a hang, not a measure: for runs that are long by nature).
    pub fn sftp_within(
        &self,
        cwd: &Path,
        server: &Server,
        user: &str,
        batch: &str,
        limit: Duration,
    ) -> Output {
        self.sftp_with(cwd, server, user, batch, limit, &[])
    }

    /// [`Fixture::sftp_within`] with more `sftp` options (e.g. `-c CIPHER`).
    pub fn sftp_with(
        &self,
        cwd: &Path,
        server: &Server,
        user: &str,
        batch: &str,
        limit: Duration,
        options: &[&str],
    ) -> Output {
        let batch_file = tempfile::NamedTempFile::new().expect("creating a batch file");
        std::fs::write(batch_file.path(), batch).expect("writing a batch file");
        let mut cmd = Command::new("sftp");
        cmd.current_dir(cwd)
            .env_remove("SSH_AUTH_SOCK")
            .args(SSH_OPTIONS)
            .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
            .args(["-o", "PreferredAuthentications=publickey", "-i"])
            .arg(&self.key)
            .args(options)
            .arg("-P")
            .arg(server.port.to_string())
            .arg("-b")
            .arg(batch_file.path())
            .arg(format!("{user}@127.0.0.1"));
        run(&mut cmd, limit)
    }
}

impl Fixture {
    /// `sftp -b` logging in as `user` with `password` through `sshpass`; `None` (after a
    /// message, or a failure under `CI=true`) when sshpass is not installed.
    pub fn sftp_password(
        &self,
        server: &Server,
        user: &str,
        password: &str,
        batch: &str,
    ) -> Option<Output> {
        if !require(&["sshpass"]) {
            return None;
        }
        let batch_file = tempfile::NamedTempFile::new().expect("creating a batch file");
        std::fs::write(batch_file.path(), batch).expect("writing a batch file");
        let mut cmd = Command::new("sshpass");
        cmd.current_dir(self.local())
            .env_remove("SSH_AUTH_SOCK")
            .env("SSHPASS", password)
            .args(["-e", "sftp"])
            .args(SSH_OPTIONS)
            // Before -b, which adds BatchMode=yes (ssh keeps the first value): sshpass must
            // see the password prompt.
            .args(["-o", "BatchMode=no", "-o", "PubkeyAuthentication=no"])
            .args([
                "-o",
                "PreferredAuthentications=password",
                "-o",
                "NumberOfPasswordPrompts=1",
            ])
            .args(["-P", &server.port.to_string(), "-b"])
            .arg(batch_file.path())
            .arg(format!("{user}@127.0.0.1"));
        Some(run(&mut cmd, SFTP_TIMEOUT))
    }
}

/// A running `sftpgate serve`, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Server {
    child: Child,
    /// The port from its `sftpgate listening on 127.0.0.1:PORT` line.
    pub port: u16,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    /// Disconnects when both output readers have seen EOF.
    readers_done: Mutex<mpsc::Receiver<()>>,
    exited: Option<ExitStatus>,
}

impl Server {
    /// Spawns `cmd` and waits for its listening line. `Err`: it exited first, with what it
    /// printed. A server that neither listens nor exits within [`START_TIMEOUT`] fails the
    /// test.
    pub fn start(mut cmd: Command) -> Result<Server, Output> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (lines_tx, lines) = mpsc::channel();
        let (done_tx, readers_done) = mpsc::channel::<()>();
        let mut readers = Vec::new();
        {
            let reader = BufReader::new(child.stdout.take().expect("stdout is piped"));
            let stdout = stdout.clone();
            let done = done_tx.clone();
            readers.push(std::thread::spawn(move || {
                let _done = done;
                for line in reader.lines() {
                    let Ok(line) = line else { break };
                    stdout
                        .lock()
                        .expect("stdout buffer")
                        .push_str(&format!("{line}\n"));
                    let _ = lines_tx.send(line);
                }
            }));
        }
        {
            let mut reader = child.stderr.take().expect("stderr is piped");
            let stderr = stderr.clone();
            let done = done_tx;
            readers.push(std::thread::spawn(move || {
                let _done = done;
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = reader.read(&mut buf) {
                    stderr
                        .lock()
                        .expect("stderr buffer")
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }));
        }
        let mut server = Server {
            child,
            port: 0,
            stdout,
            stderr,
            readers_done: Mutex::new(readers_done),
            exited: None,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = listening_addr(&line) {
                        assert_eq!(addr.ip().to_string(), "127.0.0.1", "{line}");
                        assert_ne!(addr.port(), 0, "{line}");
                        server.port = addr.port();
                        return Ok(server);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed: the process is exiting.
                    let status = wait_timeout(&mut server.child, Duration::from_secs(10))
                        .expect("a server that closed stdout exits");
                    server.exited = Some(status);
                    for reader in readers {
                        reader.join().expect("output reader thread");
                    }
                    return Err(Output {
                        status,
                        stdout: server.stdout(),
                        stderr: server.stderr(),
                    });
                }
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "the server printed no listening line within {START_TIMEOUT:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    server.stdout(),
                    server.stderr()
                ),
            }
        }
    }

    /// Everything it printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.drained();
        self.stdout.lock().expect("stdout buffer").clone()
    }

    /// Everything it logged on stderr so far (all of it once it has exited).
    pub fn stderr(&self) -> String {
        self.drained();
        self.stderr.lock().expect("stderr buffer").clone()
    }

    /// Once the process has exited, waits (bounded) until the reader threads have taken in
    /// its last output: an exit does not mean they have caught up, and a test that checks
    /// the log right after the exit would otherwise race them.
    fn drained(&self) {
        if self.exited.is_some() {
            let done = self.readers_done.lock().expect("readers_done");
            let _ = done.recv_timeout(Duration::from_secs(5));
        }
    }

    /// SIGKILL: the server dies at once, with no chance to clean up (a crash).
    pub fn kill(&mut self) {
        if self.exited.is_none() {
            signal(&self.child, rustix::process::Signal::KILL);
            self.exited = wait_timeout(&mut self.child, Duration::from_secs(10));
            assert!(self.exited.is_some(), "the server survived SIGKILL");
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit: `None` if it is still running.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exited.is_none() {
            signal(&self.child, rustix::process::Signal::TERM);
            self.exited = wait_timeout(&mut self.child, timeout);
        }
        self.exited
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.terminate(Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- server stdout ---\n{}\n--- server stderr ---\n{}",
                self.stdout(),
                self.stderr()
            );
        }
    }
}

/// The address in `sftpgate listening on 127.0.0.1:PORT (…)`.
pub fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.strip_prefix("sftpgate listening on ")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// An interactive `sftp` (commands on a pipe that stays open) logged in with the fixture's
/// key; its output is collected as it comes.
pub struct Interactive {
    pub child: Child,
    stdin: Option<ChildStdin>,
    stdout: Collected,
    stderr: Collected,
}

impl Interactive {
    pub fn start(fixture: &Fixture, server: &Server, user: &str) -> Interactive {
        let mut child = Command::new("sftp")
            .current_dir(fixture.local())
            .env_remove("SSH_AUTH_SOCK")
            .args(SSH_OPTIONS)
            .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i"])
            .arg(&fixture.key)
            .arg("-P")
            .arg(server.port.to_string())
            .arg(format!("{user}@127.0.0.1"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting sftp");
        let stdout = collect(child.stdout.take().expect("stdout is piped"));
        let stderr = collect(child.stderr.take().expect("stderr is piped"));
        Interactive {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
        }
    }

    /// Sends one command line.
    pub fn send(&mut self, line: &str) -> std::io::Result<()> {
        use std::io::Write as _;
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin.write_all(format!("{line}\n").as_bytes())?;
        stdin.flush()
    }

    /// Waits up to `timeout` until stdout (`on_stdout`) or stderr contains `needle`.
    pub fn wait_for(&self, on_stdout: bool, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let buf = if on_stdout {
            &self.stdout
        } else {
            &self.stderr
        };
        while Instant::now() < deadline {
            if buf.contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    pub fn stdout(&self) -> String {
        self.stdout.text()
    }

    pub fn stderr(&self) -> String {
        self.stderr.text()
    }
}

impl Drop for Interactive {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if wait_timeout(&mut self.child, Duration::from_secs(5)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a child prints on one pipe, collected as it comes by a reader thread.
pub struct Collected {
    text: Arc<Mutex<String>>,
    /// Disconnects when the reader thread has seen EOF.
    eof: Mutex<mpsc::Receiver<()>>,
}

impl Collected {
    /// What has arrived so far.
    pub fn text(&self) -> String {
        self.text.lock().expect("output buffer").clone()
    }

    /// Whether what has arrived so far contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        self.text.lock().expect("output buffer").contains(needle)
    }

    /// Everything, once the pipe reached EOF (the writer exited); what arrived within
    /// `timeout` otherwise. A child's exit does not mean its last lines were read yet: the
    /// reader thread may still be behind, so a test that checks a log after the exit waits
    /// here instead of reading the buffer at once.
    pub fn complete(&self, timeout: Duration) -> String {
        let eof = self.eof.lock().expect("eof signal");
        let _ = eof.recv_timeout(timeout);
        self.text()
    }
}

/// Collects what `stream` prints, as it comes.
pub fn collect(mut stream: impl std::io::Read + Send + 'static) -> Collected {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    let (done, eof) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let _done = done;
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stream.read(&mut buf) {
            sink.lock()
                .expect("output buffer")
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    Collected {
        text,
        eof: Mutex::new(eof),
    }
}

/// What a directory tree looks like: every entry below `root` (not following symlinks)
/// with its type, size, mode, link count, inode and mtime, minus the subtrees in `skip`.
pub fn snapshot(root: &Path, skip: &[&Path]) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    walk(root, root, skip, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, skip: &[&Path], out: &mut BTreeMap<PathBuf, String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("listing a directory")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if skip.iter().any(|s| path.starts_with(s)) {
            continue;
        }
        let meta = std::fs::symlink_metadata(&path).expect("lstat");
        let link = if meta.file_type().is_symlink() {
            format!(" -> {:?}", std::fs::read_link(&path).expect("readlink"))
        } else {
            String::new()
        };
        let rel = path.strip_prefix(root).expect("below the root").to_owned();
        // A directory's mtime and size change with its entries, which are listed anyway.
        let (size, mtime) = if meta.is_dir() {
            (0, 0)
        } else {
            (meta.len(), meta.mtime_nsec() + meta.mtime() * 1_000_000_000)
        };
        out.insert(
            rel,
            format!(
                "{:?} size={size} mode={:o} nlink={} ino={} mtime={mtime}{link}",
                meta.file_type(),
                meta.mode(),
                meta.nlink(),
                meta.ino()
            ),
        );
        if meta.is_dir() {
            walk(root, &path, skip, out);
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), fast enough for 100 MiB in a debug build.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Compares two files in chunks, failing with the first differing offset (never printing
/// their contents).
pub fn assert_same_file(a: &Path, b: &Path) {
    let (ma, mb) = (
        std::fs::metadata(a).unwrap_or_else(|e| panic!("{}: {e}", a.display())),
        std::fs::metadata(b).unwrap_or_else(|e| panic!("{}: {e}", b.display())),
    );
    assert_eq!(
        ma.len(),
        mb.len(),
        "sizes of {} and {}",
        a.display(),
        b.display()
    );
    let (mut fa, mut fb) = (
        std::fs::File::open(a).expect("opening"),
        std::fs::File::open(b).expect("opening"),
    );
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut offset = 0u64;
    loop {
        let n = read_full(&mut fa, &mut ba);
        let m = read_full(&mut fb, &mut bb);
        assert_eq!(
            n,
            m,
            "{} and {} differ in length at {offset}",
            a.display(),
            b.display()
        );
        if n == 0 {
            return;
        }
        if ba[..n] != bb[..n] {
            let at = ba[..n]
                .iter()
                .zip(&bb[..n])
                .position(|(x, y)| x != y)
                .unwrap_or(0);
            panic!(
                "{} and {} differ at byte {}",
                a.display(),
                b.display(),
                offset + at as u64
            );
        }
        offset += n as u64;
    }
}

fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> usize {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]).expect("reading") {
            0 => break,
            n => filled += n,
        }
    }
    filled
}

/// `path` as an argument for an sftp batch line, in double quotes with `"` and `\` escaped.
pub fn quote(path: impl AsRef<OsStr>) -> String {
    let s = path.as_ref().to_str().expect("a UTF-8 path");
    let mut out = String::from("\"");
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}
