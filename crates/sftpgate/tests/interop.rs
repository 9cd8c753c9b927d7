//! Interop matrix: real clients do a full round trip against `sftpgate serve`, and the same
//! scenario against OpenSSH's `sftp-server` (a private `sshd` on a loopback port) must give
//! the same outcome: exit codes, listings, hashes of what came back, the tree left on disk,
//! the class of every error. See `tests/interop_support` for what is normalised, and
//! docs/interop.md for the table of clients and versions.
//!
//! Every client missing here is a skip with a reason, or a failure under CI=true (`.ci/run`
//! installs them all).

mod common;
mod interop_support;
mod sftp_server_common;

use std::path::Path;
use std::process::Command;

use common::{require, run, Output};
use interop_support::{
    file_hash, local_names, mtime, seed_partial_remote, stamp, version, Outcome, Pair, Target,
    CLIENT_TIMEOUT, DATA_LEN, STAMP,
};

// ---------------------------------------------------------------------------------------
// OpenSSH sftp (batch mode)

#[test]
fn openssh_sftp_batch() {
    if !require(&["sftp"]) {
        return;
    }
    let Some(pair) = Pair::start() else { return };
    eprintln!("client: {}", version(Command::new("ssh").arg("-V")));
    let [gate, openssh] = pair.compare("sftp -b", sftp_scenario);
    // Sanity on both (so that the comparison cannot pass on two equally broken runs).
    for o in [&gate, &openssh] {
        assert_eq!(o.get("batch exit"), Some("0"), "{o}");
        assert_eq!(
            o.get("get data.bin"),
            Some(file_hash_of_data().as_str()),
            "{o}"
        );
        assert_eq!(o.get("reget"), Some(file_hash_of_data().as_str()), "{o}");
        assert_eq!(
            o.get("put -p mtime"),
            Some(STAMP.to_string().as_str()),
            "{o}"
        );
    }
}

fn sftp_scenario(t: &Target) -> Outcome {
    seed_partial_remote(t, "resumed.bin");
    stamp(&t.local.join("small.txt"));
    let batch = "put data.bin\n\
                 put -p small.txt stamped.txt\n\
                 put other.txt\n\
                 put small.txt\n\
                 ls -1\n\
                 ls -l\n\
                 get data.bin got.bin\n\
                 reget data.bin partial.bin\n\
                 reput data.bin resumed.bin\n\
                 mkdir dir\n\
                 -mkdir dir\n\
                 put small.txt dir/inner.txt\n\
                 rename data.bin dir/moved.bin\n\
                 -rename -l other.txt small.txt\n\
                 rename other.txt small.txt\n\
                 mkdir empty\n\
                 rmdir empty\n\
                 -rmdir dir\n\
                 ln -s small.txt sym\n\
                 get sym via-sym.txt\n\
                 chmod 600 small.txt\n\
                 put small.txt doomed.txt\n\
                 rm doomed.txt\n\
                 -rm doomed.txt\n\
                 -get doomed.txt\n\
                 -ls missing\n\
                 put -r tree\n\
                 get -r tree back\n\
                 ls -l\n\
                 ls -l dir\n";
    let out = sftp_batch(t, batch);
    let mut o = Outcome::new();
    o.command("batch", t, &out);
    o.step("stdout", normalise_sftp_stdout(&t.normalise(&out.stdout)));
    o.hash("get data.bin", &t.local.join("got.bin"));
    o.hash("reget", &t.local.join("partial.bin"));
    o.hash("via symlink", &t.local.join("via-sym.txt"));
    o.step(
        "get -r",
        common_tree(&t.local.join("tree"), &t.local.join("back")),
    );
    o.step(
        "put -p mtime",
        mtime(&t.root.join("stamped.txt")).map_or("missing".to_owned(), |m| m.to_string()),
    );
    o.tree("remote tree", t);
    o
}

/// `sftp -b` with `batch` against `t`, in its local directory.
fn sftp_batch(t: &Target, batch: &str) -> Output {
    let file = t.scratch.join("batch");
    std::fs::write(&file, batch).expect("writing a batch file");
    let mut cmd = Command::new("sftp");
    cmd.current_dir(&t.local)
        .env_remove("SSH_AUTH_SOCK")
        .args(t.ssh_options())
        .args(["-P", &t.port.to_string(), "-b"])
        .arg(&file)
        .arg("127.0.0.1");
    run(&mut cmd, CLIENT_TIMEOUT)
}

/// `ls -l` lines reduced to type and mode, size and name: owners (names against OpenSSH,
/// numbers against sftpgate, which has no user database), link counts and dates are the
/// servers' own business.
fn normalise_sftp_stdout(stdout: &str) -> String {
    stdout
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let is_long = fields.len() >= 9
                && fields[0].len() == 10
                && fields[0].starts_with(['-', 'd', 'l']);
            if is_long {
                format!("{} {} {}", fields[0], fields[4], fields[8..].join(" "))
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn file_hash_of_data() -> String {
    let dir = tempfile::tempdir().expect("a temporary directory");
    interop_support::seed_local(dir.path());
    let hash = file_hash(&dir.path().join("data.bin"));
    assert!(hash.contains(&format!("({DATA_LEN} bytes)")));
    hash
}

/// Whether `copy` holds the same files as `original` (names and hashes), as one line.
fn common_tree(original: &Path, copy: &Path) -> String {
    let (a, b) = (interop_support::tree(original), interop_support::tree(copy));
    if a == b {
        format!("same as local ({} entries)", a.lines().count())
    } else {
        format!("differs from local:\n{b}")
    }
}

// ---------------------------------------------------------------------------------------
// OpenSSH scp (SFTP protocol by default since OpenSSH 9)

#[test]
fn openssh_scp() {
    if !require(&["scp"]) {
        return;
    }
    let Some(pair) = Pair::start() else { return };
    let [gate, openssh] = pair.compare("scp", scp_scenario);
    for o in [&gate, &openssh] {
        assert_eq!(o.get("upload exit"), Some("0"), "{o}");
        assert_eq!(o.get("download"), Some(file_hash_of_data().as_str()), "{o}");
        assert_eq!(o.get("missing exit"), Some("1"), "{o}");
        assert_eq!(o.get("-p mtime"), Some(STAMP.to_string().as_str()), "{o}");
    }
}

fn scp_scenario(t: &Target) -> Outcome {
    stamp(&t.local.join("small.txt"));
    let mut o = Outcome::new();
    let remote = |path: &str| format!("127.0.0.1:{path}");
    let scp = |args: &[&str]| {
        let mut cmd = Command::new("scp");
        cmd.current_dir(&t.local)
            .env_remove("SSH_AUTH_SOCK")
            .args(t.ssh_options())
            .args(["-P", &t.port.to_string()])
            .args(args);
        run(&mut cmd, CLIENT_TIMEOUT)
    };
    o.command("upload", t, &scp(&["data.bin", "other.txt", &remote("")]));
    o.command("-p upload", t, &scp(&["-p", "small.txt", &remote("")]));
    o.step(
        "-p mtime",
        mtime(&t.root.join("small.txt")).map_or("missing".to_owned(), |m| m.to_string()),
    );
    o.command(
        "rename-like upload",
        t,
        &scp(&["small.txt", &remote("copy.txt")]),
    );
    o.command("overwrite", t, &scp(&["other.txt", &remote("copy.txt")]));
    o.command("-r upload", t, &scp(&["-r", "tree", &remote("")]));
    o.command("download", t, &scp(&[&remote("data.bin"), "got.bin"]));
    o.hash("download", &t.local.join("got.bin"));
    o.command("-r download", t, &scp(&["-r", &remote("tree"), "back"]));
    o.step(
        "-r download",
        common_tree(&t.local.join("tree"), &t.local.join("back")),
    );
    o.command("missing", t, &scp(&[&remote("missing.txt"), "x"]));
    o.command(
        "into missing dir",
        t,
        &scp(&["small.txt", &remote("nodir/x")]),
    );
    o.command(
        "remote to remote",
        t,
        &scp(&[&remote("copy.txt"), &remote("copy2.txt")]),
    );
    o.step("local", local_names(&t.local));
    o.tree("remote tree", t);
    o
}

// ---------------------------------------------------------------------------------------
// paramiko and asyncssh (tests/interop/pyclient.py)

const PYCLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/pyclient.py");

#[test]
fn paramiko() {
    python_client("paramiko", &[]);
}

/// asyncssh picks the order of SSH_FXP_SYMLINK's arguments from the server's SSH version
/// string: OpenSSH's reversed order (which sftpgate, like OpenSSH's sftp-server, serves)
/// only when it says `OpenSSH` or `paramiko`. Against sftpgate it sends the draft's order, so
/// the link is refused (the "target" exists) and everything about it differs.
const ASYNCSSH_SYMLINK: &[&str] = &[
    "- symlink: error SFTPError(code 4)",
    "+ symlink: ok",
    "- readlink: error SFTPError(code 2)",
    "+ readlink: small.txt",
    "- islink: False",
    "+ islink: True",
    "- stat sym: error SFTPError(code 2)",
    "+ stat sym: file 644 11",
    "+     sym link -> small.txt",
];

#[test]
fn asyncssh() {
    python_client("asyncssh", ASYNCSSH_SYMLINK);
}

fn python_client(lib: &'static str, known: &[&str]) {
    if !interop_support::require_python(lib) {
        return;
    }
    let Some(pair) = Pair::start() else { return };
    let [gate, openssh] = pair.compare_known(lib, known, |t| python_scenario(lib, t));
    eprintln!("client: {}", gate.get("version").unwrap_or("?"));
    for o in [&gate, &openssh] {
        assert_eq!(o.get("python exit"), Some("0"), "{o}");
        assert_eq!(o.get("got.bin"), Some(file_hash_of_data().as_str()), "{o}");
        assert_eq!(
            o.get("partial.bin"),
            Some(file_hash_of_data().as_str()),
            "{o}"
        );
        assert_eq!(o.get("mtime"), Some(STAMP.to_string().as_str()), "{o}");
    }
}

fn python_scenario(lib: &str, t: &Target) -> Outcome {
    seed_partial_remote(t, "resumed.bin");
    let mut cmd = Command::new("python3");
    cmd.current_dir(&t.local)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .arg(PYCLIENT)
        .arg(lib)
        .arg("127.0.0.1")
        .arg(t.port.to_string())
        .arg(&t.user)
        .arg(&t.key);
    let out = run(&mut cmd, CLIENT_TIMEOUT);
    let mut o = Outcome::new();
    o.command("python", t, &out);
    // Every line the script printed is one observation already.
    for line in t.normalise(&out.stdout).lines() {
        o.lines.push(line.to_owned());
    }
    o.hash("got.bin", &t.local.join("got.bin"));
    o.hash("partial.bin", &t.local.join("partial.bin"));
    o.tree("remote tree", t);
    o
}
