//! Harness for the interop matrix: the same client scenario runs against `sftpgate serve`
//! and against OpenSSH's own `sftp-server` (behind a private `sshd` on a loopback port), and
//! the two [`Outcome`]s must be equal.
//!
//! Both servers start the client in a directory it may use as it likes: sftpgate's user root
//! (`/`), and for OpenSSH a temporary directory given to `sftp-server -d`. Scenarios use
//! paths relative to that start directory, so the same commands mean the same thing on both.
//! What legitimately differs is normalised before it is recorded: the start directory's
//! absolute path (`/` against sftpgate, `/tmp/…` against OpenSSH), ports, owners and
//! timestamps the scenario did not set. Everything else — exit codes, listings, hashes of
//! what was downloaded, the final tree on disk, error classes — is compared as is.
#![allow(dead_code)] // each client test uses a different part of the harness

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::common::{pseudo_random, require, run, Fixture, Output, Server, SSH_OPTIONS, USER};
use crate::sftp_server_common::{user_name, Sshd};

/// OpenSSH's sftp-server, the reference (Debian's openssh-sftp-server).
pub const OPENSSH_SFTP_SERVER: &str = "/usr/lib/openssh/sftp-server";
/// How long one client command may take (a few MiB through a debug build's SSH crypto).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
/// The size of the main test file: large enough for several requests in flight, small
/// enough for a debug build.
pub const DATA_LEN: usize = 3 * 1024 * 1024 + 4321;
/// Where an interrupted transfer stops (the resume tests start from here).
pub const PARTIAL_LEN: usize = 1024 * 1024 + 17;
/// A modification time a scenario sets and expects back (2001-09-09T01:46:40Z).
pub const STAMP: i64 = 1_000_000_000;

/// Whether CI=true (then a missing client fails instead of skipping).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skips (or under CI fails) with `why`; returns false for `let … else { return }`.
pub fn skip(why: &str) -> bool {
    if under_ci() {
        panic!("CI=true and {why}");
    }
    eprintln!("skipping: {why}");
    false
}

/// Whether every program in `names` is on `PATH`; when one is missing, skips (or under
/// CI=true fails) naming the Debian `packages` to install.
pub fn require_client(names: &[&str], packages: &str) -> bool {
    let on_path = |name: &str| {
        std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir| {
                dir.join(name)
                    .metadata()
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
        })
    };
    let missing: Vec<&str> = names.iter().copied().filter(|n| !on_path(n)).collect();
    missing.is_empty()
        || skip(&format!(
            "{} not found on PATH (apt-get install {packages}; .ci/run does)",
            missing.join(", ")
        ))
}

/// Whether `python3` can import `module` (skips or fails like [`require`] otherwise).
pub fn require_python(module: &str) -> bool {
    if !require(&["python3"]) {
        return false;
    }
    let out = run(
        Command::new("python3").args(["-c", &format!("import {module}")]),
        Duration::from_secs(30),
    );
    out.status.success()
        || skip(&format!(
            "python3 cannot import {module} (python3 -m pip install {module}): {}",
            out.stderr.trim()
        ))
}

/// One server the scenario runs against.
pub struct Target {
    /// `sftpgate` or `openssh`, for messages.
    pub label: &'static str,
    pub port: u16,
    pub user: String,
    /// The client's private key (`<key>.pub` is its public half).
    pub key: PathBuf,
    /// The host directory the client starts in.
    pub root: PathBuf,
    /// What the server calls that directory (`/`, or its absolute host path): removed from
    /// what clients print.
    pub home: String,
    /// A local working directory for this target's client, with the [`seed_local`] files.
    pub local: PathBuf,
    /// A directory for anything else the scenario needs (mount points, config files).
    pub scratch: PathBuf,
}

impl Target {
    /// The OpenSSH client options for this target (`-o` form, no port: `ssh` wants `-p`,
    /// `sftp` and `scp` want `-P`).
    pub fn ssh_options(&self) -> Vec<String> {
        let mut out: Vec<String> = SSH_OPTIONS.iter().map(|s| (*s).to_owned()).collect();
        for opt in [
            "BatchMode=yes".to_owned(),
            "IdentitiesOnly=yes".to_owned(),
            "PreferredAuthentications=publickey".to_owned(),
            format!("IdentityFile={}", self.key.display()),
            format!("User={}", self.user),
        ] {
            out.push("-o".to_owned());
            out.push(opt);
        }
        out
    }

    /// Replaces what legitimately differs between the servers in `text`: the start
    /// directory's absolute path (written as `/`, what sftpgate calls it), the port.
    pub fn normalise(&self, text: &str) -> String {
        let mut text = text.to_owned();
        // sftpgate's start directory is `/`: both now print `/x` for the same file.
        if self.home != "/" {
            text = text.replace(&format!("{}/", self.home), "/");
            text = text.replace(&self.home, "/");
        }
        text = text.replace(&format!(":{}", self.port), ":PORT");
        text = text.replace(&format!("port {}", self.port), "port PORT");
        text
    }

    /// A path below the start directory as this server names it (absolute).
    pub fn remote_abs(&self, rel: &str) -> String {
        if self.home == "/" {
            format!("/{rel}")
        } else {
            format!("{}/{rel}", self.home)
        }
    }
}

/// `sftpgate serve` and a private OpenSSH `sshd` side by side, each with a fresh start
/// directory and local directory, stopped when dropped.
pub struct Pair {
    pub fx: Fixture,
    pub gate: Server,
    pub sshd: Sshd,
    pub targets: [Target; 2],
}

impl Pair {
    /// Both servers, or `None` (after a message; a failure under CI=true) when OpenSSH's
    /// client, `sshd` or `sftp-server` is missing.
    pub fn start() -> Option<Pair> {
        let fx = Fixture::new()?;
        let sshd_bin = Sshd::find()?;
        if !Path::new(OPENSSH_SFTP_SERVER).is_file() {
            skip(&format!(
                "{OPENSSH_SFTP_SERVER} not found (install openssh-sftp-server)"
            ));
            return None;
        }
        let gate = fx.start(USER);
        let gate_root = fx.user_root(USER);
        std::fs::create_dir_all(&gate_root).expect("creating the user's root");

        let sshd_dir = fx.path().join("sshd");
        let openssh_root = fx.path().join("openssh-root");
        for dir in [&sshd_dir, &openssh_root] {
            std::fs::create_dir(dir).expect("creating a fixture directory");
        }
        // `-d`: start in the temporary directory instead of the user's home (root's, here);
        // `-u 022`: the umask sftpgate's test process has, so new files get the same modes.
        let subsystem = format!("{OPENSSH_SFTP_SERVER} -u 022 -d {}", openssh_root.display());
        let sshd = Sshd::start(&sshd_bin, &sshd_dir, &subsystem);

        let mk = |label: &'static str,
                  port: u16,
                  user: String,
                  key: PathBuf,
                  root: PathBuf,
                  home: String| {
            let local = fx.path().join(format!("local-{label}"));
            let scratch = fx.path().join(format!("scratch-{label}"));
            for dir in [&local, &scratch] {
                std::fs::create_dir(dir).expect("creating a fixture directory");
            }
            seed_local(&local);
            Target {
                label,
                port,
                user,
                key,
                root,
                home,
                local,
                scratch,
            }
        };
        let targets = [
            mk(
                "sftpgate",
                gate.port,
                USER.to_owned(),
                fx.key.clone(),
                gate_root,
                "/".to_owned(),
            ),
            mk(
                "openssh",
                sshd.port,
                user_name(),
                sshd.key.clone(),
                openssh_root.clone(),
                openssh_root.display().to_string(),
            ),
        ];
        Some(Pair {
            fx,
            gate,
            sshd,
            targets,
        })
    }

    /// Runs `scenario` against both servers (sftpgate first) and fails on any difference.
    pub fn compare(&self, client: &str, scenario: impl Fn(&Target) -> Outcome) -> [Outcome; 2] {
        self.compare_known(client, &[], scenario)
    }

    /// [`Pair::compare`], except for `known` differences: outcome lines written as in the
    /// failure message, `- line` seen against sftpgate only, `+ line` against OpenSSH only
    /// (docs/interop.md says why). Each must occur, so that a fixed difference fails the
    /// test until the list and the docs are updated.
    pub fn compare_known(
        &self,
        client: &str,
        known: &[&str],
        scenario: impl Fn(&Target) -> Outcome,
    ) -> [Outcome; 2] {
        let gate = scenario(&self.targets[0]);
        let openssh = scenario(&self.targets[1]);
        let (mut gate_rest, mut openssh_rest) = (gate.clone(), openssh.clone());
        for line in known {
            let (side, rest, label) = match line.split_at(2) {
                ("- ", l) => (&mut gate_rest, l, "sftpgate"),
                ("+ ", l) => (&mut openssh_rest, l, "OpenSSH"),
                _ => panic!("a known difference starts with `- ` or `+ `: {line:?}"),
            };
            let Some(at) = side.lines.iter().position(|l| l == rest) else {
                panic!(
                    "{client}: the known difference {line:?} is gone (against {label}); \
                     update the test and docs/interop.md\n--- sftpgate ---\n{gate}\n--- OpenSSH ---\n{openssh}"
                );
            };
            side.lines.remove(at);
        }
        assert_same(client, &gate_rest, &openssh_rest);
        [gate, openssh]
    }
}

/// The files every local directory starts with: `data.bin` ([`DATA_LEN`] pseudo-random
/// bytes), `small.txt`, `other.txt`, `partial.bin` (the first [`PARTIAL_LEN`] bytes of
/// `data.bin`: a download that was interrupted) and a small tree `tree/`.
pub fn seed_local(dir: &Path) {
    let data = pseudo_random(DATA_LEN, 0x1f2e_3d4c_5b6a_7988);
    std::fs::write(dir.join("data.bin"), &data).expect("seeding");
    std::fs::write(dir.join("partial.bin"), &data[..PARTIAL_LEN]).expect("seeding");
    std::fs::write(dir.join("small.txt"), "small\n").expect("seeding");
    std::fs::write(dir.join("other.txt"), "other text\n").expect("seeding");
    for (name, len, seed) in [
        ("tree/a.bin", 70_000, 1),
        ("tree/sub/b.bin", 200_000, 2),
        ("tree/sub/deeper/c.txt", 12, 3),
        ("tree/sub/deeper/empty", 0, 4),
        ("tree/with space.txt", 33, 5),
    ] {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("seeding");
        std::fs::write(&path, pseudo_random(len, seed)).expect("seeding");
    }
}

/// Writes the first [`PARTIAL_LEN`] bytes of `data.bin` to `<root>/<rel>` on the server's
/// side: an upload that was interrupted.
pub fn seed_partial_remote(target: &Target, rel: &str) {
    let data = std::fs::read(target.local.join("data.bin")).expect("reading data.bin");
    std::fs::write(target.root.join(rel), &data[..PARTIAL_LEN]).expect("seeding");
}

/// What one client saw, step by step, in order: `step: observation` lines.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub lines: Vec<String>,
}

impl Outcome {
    pub fn new() -> Outcome {
        Outcome::default()
    }

    /// Records `observation` (any number of lines) for `step`.
    pub fn step(&mut self, step: &str, observation: impl std::fmt::Display) {
        let text = observation.to_string();
        if text.contains('\n') {
            self.lines.push(format!("{step}:"));
            for line in text.lines() {
                self.lines.push(format!("    {line}"));
            }
        } else {
            self.lines.push(format!("{step}: {text}"));
        }
    }

    /// Records a finished command: its exit code and (normalised) stderr.
    pub fn command(&mut self, step: &str, target: &Target, out: &Output) {
        self.step(
            &format!("{step} exit"),
            out.status
                .code()
                .map_or("signal".to_owned(), |c| c.to_string()),
        );
        let err = target.normalise(out.stderr.trim_end());
        if !err.is_empty() {
            self.step(&format!("{step} stderr"), err);
        }
    }

    /// Records the hash of a local file (or that it is missing).
    pub fn hash(&mut self, step: &str, path: &Path) {
        self.step(step, file_hash(path));
    }

    /// Records the server's tree as it is on disk.
    pub fn tree(&mut self, step: &str, target: &Target) {
        self.step(step, tree(&target.root).trim_end());
    }

    /// The observation recorded for `step` (its first line), for the sanity checks.
    pub fn get(&self, step: &str) -> Option<&str> {
        let prefix = format!("{step}: ");
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
    }

    /// Whether some line contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        self.lines.iter().any(|l| l.contains(needle))
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for line in &self.lines {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

/// Fails, showing where, unless the two outcomes are equal.
pub fn assert_same(client: &str, gate: &Outcome, openssh: &Outcome) {
    if gate == openssh {
        eprintln!(
            "{client}: {} observations identical against sftpgate and OpenSSH",
            gate.lines.len()
        );
        // INTEROP_SHOW=1: print them (what docs/interop.md summarises).
        if std::env::var_os("INTEROP_SHOW").is_some() {
            eprintln!("{gate}");
        }
        return;
    }
    let mut diff = String::new();
    let n = gate.lines.len().max(openssh.lines.len());
    for i in 0..n {
        let (a, b) = (gate.lines.get(i), openssh.lines.get(i));
        if a == b {
            let _ = writeln!(diff, "  {}", a.map_or("", String::as_str));
        } else {
            if let Some(a) = a {
                let _ = writeln!(diff, "- {a}");
            }
            if let Some(b) = b {
                let _ = writeln!(diff, "+ {b}");
            }
        }
    }
    panic!(
        "{client} sees sftpgate differently from OpenSSH's sftp-server \
         (- sftpgate, + OpenSSH):\n{diff}"
    );
}

/// `sha256:<hex> (<len> bytes)`, or `missing` / `not a file`.
pub fn file_hash(path: &Path) -> String {
    match std::fs::symlink_metadata(path) {
        Err(_) => "missing".to_owned(),
        Ok(m) if !m.is_file() => "not a file".to_owned(),
        Ok(m) => {
            let bytes = std::fs::read(path).expect("reading a file to hash");
            let digest = Sha256::digest(&bytes);
            let mut hex = String::with_capacity(64);
            for b in digest {
                let _ = write!(hex, "{b:02x}");
            }
            format!("sha256:{} ({} bytes)", &hex[..16], m.len())
        }
    }
}

/// One line per entry below `root` (sorted, not following symlinks): type, permission bits,
/// size and hash of files, symlink targets. Timestamps are left out (see [`mtime`]).
pub fn tree(root: &Path) -> String {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out.into_iter()
        .map(|(path, line)| format!("{path} {line}\n"))
        .collect()
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        let meta = std::fs::symlink_metadata(&path).expect("lstat");
        let rel = path
            .strip_prefix(root)
            .expect("below the root")
            .display()
            .to_string();
        let mode = meta.permissions().mode() & 0o7777;
        let line = if meta.file_type().is_symlink() {
            format!(
                "link -> {}",
                std::fs::read_link(&path).expect("readlink").display()
            )
        } else if meta.is_dir() {
            format!("dir {mode:o}")
        } else {
            format!("file {mode:o} {}", file_hash(&path))
        };
        out.insert(rel, line);
        if meta.is_dir() {
            walk(root, &path, out);
        }
    }
}

/// The modification time (seconds) of `path`, not following a symlink; `None` if missing.
pub fn mtime(path: &Path) -> Option<i64> {
    std::fs::symlink_metadata(path).ok().map(|m| m.mtime())
}

/// Sets `path`'s modification (and access) time to [`STAMP`].
pub fn stamp(path: &Path) {
    let file = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("opening a file to stamp");
    let t = std::time::UNIX_EPOCH + Duration::from_secs(STAMP as u64);
    file.set_times(std::fs::FileTimes::new().set_accessed(t).set_modified(t))
        .expect("setting times");
}

/// Sorted names in a local directory (`missing` if it is not there).
pub fn local_names(dir: &Path) -> String {
    match std::fs::read_dir(dir) {
        Err(_) => "missing".to_owned(),
        Ok(entries) => {
            let mut names: Vec<String> = entries
                .map(|e| {
                    e.expect("an entry")
                        .file_name()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            names.sort();
            names.join(" ")
        }
    }
}

/// The first line of `program --version`-like output, for the version table.
pub fn version(cmd: &mut Command) -> String {
    let out = run(cmd, Duration::from_secs(30));
    let text = if out.stdout.trim().is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    text.lines().next().unwrap_or("").trim().to_owned()
}
