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
use std::time::Duration;

use common::{run, Output};
use interop_support::{
    file_hash, local_names, mtime, require_client, seed_partial_remote, stamp, version, Outcome,
    Pair, Target, CLIENT_TIMEOUT, DATA_LEN, STAMP,
};

// ---------------------------------------------------------------------------------------
// OpenSSH sftp (batch mode)

#[test]
fn openssh_sftp_batch() {
    if !require_client(&["sftp"], "openssh-client") {
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

/// The hash of the `data.bin` every local directory starts with (what each download and
/// resumed transfer must come back as), computed once.
fn file_hash_of_data() -> String {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        interop_support::seed_local(dir.path());
        let hash = file_hash(&dir.path().join("data.bin"));
        assert!(hash.contains(&format!("({DATA_LEN} bytes)")));
        hash
    })
    .clone()
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
    if !require_client(&["scp"], "openssh-client") {
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
/// string: OpenSSH's reversed order only when it says `OpenSSH` or `paramiko`, the draft's
/// otherwise. sftpgate reads the client's version string and takes the draft's order from
/// AsyncSSH, so the link comes out the same as against OpenSSH.
#[test]
fn asyncssh() {
    python_client("asyncssh", &[]);
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

// ---------------------------------------------------------------------------------------
// rclone (sftp backend, configured on the command line; no config file in $HOME)

#[test]
fn rclone() {
    if !require_client(&["rclone"], "rclone") {
        return;
    }
    let Some(pair) = Pair::start() else { return };
    eprintln!("client: {}", version(Command::new("rclone").arg("version")));
    let [gate, openssh] = pair.compare("rclone", rclone_scenario);
    for o in [&gate, &openssh] {
        assert_eq!(o.get("copy tree exit"), Some("0"), "{o}");
        assert_eq!(o.get("check --download exit"), Some("0"), "{o}");
        assert_eq!(o.get("copy back"), Some("same as local (7 entries)"), "{o}");
        assert_eq!(o.get("got.bin"), Some(file_hash_of_data().as_str()), "{o}");
        assert_ne!(o.get("cat missing exit"), Some("0"), "{o}");
    }
}

fn rclone_scenario(t: &Target) -> Outcome {
    // A changed copy of the tree for `sync`: one file gone, one changed, one new.
    let tree2 = t.local.join("tree2");
    copy_dir(&t.local.join("tree"), &tree2);
    std::fs::remove_file(tree2.join("a.bin")).expect("editing tree2");
    std::fs::write(tree2.join("sub/deeper/c.txt"), "changed\n").expect("editing tree2");
    std::fs::write(tree2.join("new.txt"), "new\n").expect("editing tree2");
    // An empty config file of its own: nothing from $HOME, no "config not found" notice.
    let config = t.scratch.join("rclone.conf");
    std::fs::write(&config, "").expect("writing rclone.conf");
    // shell_type=none: no commands over `exec` (sftpgate serves only the sftp subsystem;
    // OpenSSH would run md5sum), so both are plain SFTP.
    let remote = |path: &str| {
        format!(
            ":sftp,host=127.0.0.1,port={},user={},key_file='{}',shell_type=none:{path}",
            t.port,
            t.user,
            t.key.display()
        )
    };
    let mut o = Outcome::new();
    let rclone = |o: &mut Outcome, step: &str, args: &[&str]| -> Output {
        let mut cmd = Command::new("rclone");
        cmd.current_dir(&t.local)
            .env("RCLONE_CONFIG", &config)
            .env_remove("SSH_AUTH_SOCK")
            .args(["--retries", "1", "--low-level-retries", "1"])
            .args(args);
        let out = run(&mut cmd, CLIENT_TIMEOUT);
        // Only the exit code (rclone's error class): its messages quote each server's own
        // wording of the status.
        o.step(
            &format!("{step} exit"),
            out.status
                .code()
                .map_or("signal".to_owned(), |c| c.to_string()),
        );
        out
    };
    rclone(
        &mut o,
        "copy tree",
        &["copy", "tree", &remote("tree"), "--transfers", "8"],
    );
    rclone(
        &mut o,
        "copyto data.bin",
        &["copyto", "data.bin", &remote("data.bin")],
    );
    rclone(
        &mut o,
        "copy small files",
        &["copy", ".", &remote(""), "--include", "/*.txt"],
    );
    rclone(
        &mut o,
        "check --download",
        &["check", "tree", &remote("tree"), "--download"],
    );
    let out = rclone(
        &mut o,
        "lsf -R",
        &["lsf", "-R", "--format", "ps", &remote("")],
    );
    o.step("lsf -R", sorted_lines(&out.stdout));
    rclone(
        &mut o,
        "copy back",
        &["copy", &remote("tree"), "back", "--transfers", "8"],
    );
    o.step(
        "copy back",
        common_tree(&t.local.join("tree"), &t.local.join("back")),
    );
    rclone(
        &mut o,
        "copyto back",
        &["copyto", &remote("data.bin"), "got.bin"],
    );
    o.hash("got.bin", &t.local.join("got.bin"));
    rclone(
        &mut o,
        "sync",
        &["sync", "tree2", &remote("tree"), "--transfers", "8"],
    );
    rclone(
        &mut o,
        "check after sync",
        &["check", "tree2", &remote("tree"), "--download"],
    );
    rclone(&mut o, "mkdir", &["mkdir", &remote("dir")]);
    rclone(
        &mut o,
        "moveto new name",
        &["moveto", &remote("data.bin"), &remote("dir/moved.bin")],
    );
    rclone(
        &mut o,
        "moveto over existing",
        &["moveto", &remote("other.txt"), &remote("small.txt")],
    );
    rclone(&mut o, "mkdir empty", &["mkdir", &remote("empty")]);
    rclone(&mut o, "rmdir empty", &["rmdir", &remote("empty")]);
    rclone(&mut o, "rmdir non-empty", &["rmdir", &remote("dir")]);
    rclone(&mut o, "deletefile", &["deletefile", &remote("small.txt")]);
    rclone(
        &mut o,
        "deletefile again",
        &["deletefile", &remote("small.txt")],
    );
    rclone(
        &mut o,
        "touch -t",
        &["touch", "-t", "2001-09-09T01:46:40", &remote("touched.txt")],
    );
    o.step(
        "touched mtime",
        mtime(&t.root.join("touched.txt")).map_or("missing".to_owned(), |m| m.to_string()),
    );
    rclone(&mut o, "cat missing", &["cat", &remote("missing.txt")]);
    rclone(&mut o, "purge", &["purge", &remote("dir")]);
    o.tree("remote tree", t);
    o
}

fn sorted_lines(text: &str) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    lines.join("\n")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("creating a directory");
    for entry in std::fs::read_dir(from).expect("listing a directory") {
        let entry = entry.expect("an entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copying a file");
        }
    }
}

// ---------------------------------------------------------------------------------------
// lftp (sftp:// through OpenSSH's ssh; mirror both ways, in parallel)

#[test]
fn lftp() {
    if !require_client(&["lftp", "ssh"], "lftp openssh-client") {
        return;
    }
    let Some(pair) = Pair::start() else { return };
    eprintln!("client: {}", version(Command::new("lftp").arg("--version")));
    let [gate, openssh] = pair.compare("lftp", lftp_scenario);
    for o in [&gate, &openssh] {
        assert_eq!(o.get("exit"), Some("0"), "{o}");
        assert!(o.contains("OK mirror -R"), "{o}");
        assert_eq!(
            o.get("mirror back"),
            Some("same as local (7 entries)"),
            "{o}"
        );
        assert_eq!(o.get("got.bin"), Some(file_hash_of_data().as_str()), "{o}");
        assert_eq!(
            o.get("partial.bin"),
            Some(file_hash_of_data().as_str()),
            "{o}"
        );
    }
}

fn lftp_scenario(t: &Target) -> Outcome {
    seed_partial_remote(t, "resumed.bin");
    let tree2 = t.local.join("tree2");
    copy_dir(&t.local.join("tree"), &tree2);
    std::fs::remove_file(tree2.join("a.bin")).expect("editing tree2");
    std::fs::write(tree2.join("new.txt"), "new\n").expect("editing tree2");
    // lftp runs `ssh` itself: the same options as every other OpenSSH client here.
    let ssh = format!("ssh -a -x {}", t.ssh_options().join(" "));
    let steps = [
        ("mirror -R", "mirror -R --parallel=4 tree tree"),
        ("mirror back", "mirror --parallel=4 tree back"),
        (
            "mirror -R --delete",
            "mirror -R --delete --parallel=4 tree2 tree",
        ),
        ("put", "put data.bin"),
        ("put small", "put small.txt"),
        ("put other", "put other.txt"),
        ("get", "get data.bin -o got.bin"),
        ("put -c (resume)", "put -c data.bin -o resumed.bin"),
        ("get -c (resume)", "get -c data.bin -o partial.bin"),
        ("mkdir", "mkdir dir"),
        ("mkdir again", "mkdir dir"),
        ("mv new name", "mv data.bin dir/moved.bin"),
        ("mv over existing", "mv other.txt small.txt"),
        ("mkdir empty", "mkdir empty"),
        ("rmdir empty", "rmdir empty"),
        ("rmdir non-empty", "rmdir dir"),
        ("ln -s", "ln -s small.txt sym"),
        ("chmod", "chmod 600 small.txt"),
        ("put doomed", "put small.txt -o doomed.txt"),
        ("rm", "rm doomed.txt"),
        ("rm again", "rm doomed.txt"),
        ("get missing", "get missing.txt -o missing.txt"),
        ("cls", "cls -1 --sort=name"),
        ("cls dir", "cls -1 --sort=name dir/"),
    ];
    let mut script = format!(
        "set cmd:fail-exit no\n\
         set net:max-retries 1\n\
         set net:reconnect-interval-base 1\n\
         set xfer:clobber on\n\
         set sftp:connect-program \"{ssh}\"\n\
         open -u {}, -p {} sftp://127.0.0.1\n",
        t.user, t.port
    );
    for (name, cmd) in steps {
        // lftp's `&&`/`||`: one marker line per step on stdout, whatever it printed.
        script.push_str(&format!(
            "echo \"== {name}\"; {cmd} && echo \"OK {name}\" || echo \"FAIL {name}\"\n"
        ));
    }
    let file = t.scratch.join("lftp-script");
    std::fs::write(&file, script).expect("writing the lftp script");
    let mut cmd = Command::new("lftp");
    cmd.current_dir(&t.local)
        .env("HOME", &t.scratch)
        .env_remove("SSH_AUTH_SOCK")
        .arg("-f")
        .arg(&file);
    let out = run(&mut cmd, CLIENT_TIMEOUT);
    let mut o = Outcome::new();
    o.step(
        "exit",
        out.status
            .code()
            .map_or("signal".to_owned(), |c| c.to_string()),
    );
    // stdout: the markers and the listings. stderr (lftp's messages, quoting each server's
    // wording) only on failure, through the markers.
    o.step("stdout", t.normalise(out.stdout.trim_end()));
    o.step(
        "mirror back",
        common_tree(&t.local.join("tree"), &t.local.join("back")),
    );
    o.hash("got.bin", &t.local.join("got.bin"));
    o.hash("partial.bin", &t.local.join("partial.bin"));
    o.tree("remote tree", t);
    o
}

// ---------------------------------------------------------------------------------------
// curl sftp:// (libssh2)

#[test]
fn curl() {
    if !require_client(&["curl"], "curl") {
        return;
    }
    let protocols = run(Command::new("curl").arg("-V"), Duration::from_secs(10)).stdout;
    if !protocols
        .lines()
        .any(|l| l.starts_with("Protocols:") && l.split_whitespace().any(|p| p == "sftp"))
    {
        // Not a missing client: this curl was built without libssh2 (skipped under CI too).
        eprintln!("skipping: the installed curl has no sftp protocol (curl -V)");
        return;
    }
    let Some(pair) = Pair::start() else { return };
    eprintln!("client: {}", version(Command::new("curl").arg("-V")));
    let [gate, openssh] = pair.compare("curl", curl_scenario);
    for o in [&gate, &openssh] {
        assert_eq!(o.get("upload exit"), Some("0"), "{o}");
        assert_eq!(o.get("got.bin"), Some(file_hash_of_data().as_str()), "{o}");
        assert_eq!(
            o.get("partial.bin"),
            Some(file_hash_of_data().as_str()),
            "{o}"
        );
        assert_eq!(o.get("download missing exit"), Some("78"), "{o}");
    }
}

fn curl_scenario(t: &Target) -> Outcome {
    seed_partial_remote(t, "resumed.bin");
    let url = |rel: &str| format!("sftp://127.0.0.1:{}/~/{rel}", t.port);
    let abs = |rel: &str| t.remote_abs(rel);
    let pubkey = t.key.with_extension("pub");
    let mut o = Outcome::new();
    let curl = |o: &mut Outcome, step: &str, args: &[&str]| -> Output {
        let mut cmd = Command::new("curl");
        cmd.current_dir(&t.local)
            // No known_hosts of its own: -k (curl skips the host key check for SFTP).
            .env("HOME", &t.scratch)
            .env_remove("SSH_AUTH_SOCK")
            .args(["-sS", "-k", "--key"])
            .arg(&t.key)
            .arg("--pubkey")
            .arg(&pubkey)
            .args(["-u", &format!("{}:", t.user)])
            .args(args);
        let out = run(&mut cmd, CLIENT_TIMEOUT);
        o.command(step, t, &out);
        out
    };
    curl(&mut o, "upload", &["-T", "data.bin", &url("data.bin")]);
    curl(
        &mut o,
        "upload small",
        &["-T", "small.txt", &url("small.txt")],
    );
    curl(
        &mut o,
        "upload other",
        &["-T", "other.txt", &url("other.txt")],
    );
    curl(&mut o, "download", &["-o", "got.bin", &url("data.bin")]);
    o.hash("got.bin", &t.local.join("got.bin"));
    curl(
        &mut o,
        "resume upload",
        &["-C", "-", "-T", "data.bin", &url("resumed.bin")],
    );
    curl(
        &mut o,
        "resume download",
        &["-C", "-", "-o", "partial.bin", &url("data.bin")],
    );
    o.hash("partial.bin", &t.local.join("partial.bin"));
    let out = curl(&mut o, "list-only", &["-l", &url("")]);
    o.step("list-only", sorted_lines(&out.stdout));
    curl(
        &mut o,
        "upload --ftp-create-dirs",
        &[
            "--ftp-create-dirs",
            "-T",
            "small.txt",
            &url("made/sub/x.txt"),
        ],
    );
    let quote = |o: &mut Outcome, step: &str, command: String| {
        curl(o, step, &["-Q", &command, "-o", "/dev/null", &url("")]);
    };
    quote(&mut o, "mkdir", format!("mkdir {}", abs("dir")));
    quote(&mut o, "mkdir again", format!("mkdir {}", abs("dir")));
    quote(
        &mut o,
        "rename new name",
        format!("rename {} {}", abs("data.bin"), abs("dir/moved.bin")),
    );
    quote(
        &mut o,
        "rename over existing",
        format!("rename {} {}", abs("other.txt"), abs("small.txt")),
    );
    quote(&mut o, "rmdir non-empty", format!("rmdir {}", abs("dir")));
    quote(
        &mut o,
        "symlink",
        format!("symlink {} {}", "small.txt", abs("sym")),
    );
    quote(&mut o, "chmod", format!("chmod 600 {}", abs("small.txt")));
    quote(&mut o, "rm", format!("rm {}", abs("other.txt")));
    quote(&mut o, "rm again", format!("rm {}", abs("other.txt")));
    curl(
        &mut o,
        "download missing",
        &["-o", "missing.txt", &url("missing.txt")],
    );
    o.tree("remote tree", t);
    o
}

// ---------------------------------------------------------------------------------------
// sshfs (FUSE)

#[test]
fn sshfs() {
    if !require_client(&["sshfs", "fusermount3"], "sshfs fuse3") {
        return;
    }
    if !Path::new("/dev/fuse").exists() {
        // The environment, not a missing client (skipped under CI too).
        eprintln!("skipping: /dev/fuse does not exist here (no FUSE)");
        return;
    }
    let Some(pair) = Pair::start() else { return };
    eprintln!(
        "client: {}",
        version(Command::new("sshfs").arg("--version"))
    );
    let Some(mounted) = sshfs_mount(&pair.targets[0]) else {
        return;
    };
    drop(mounted);
    let [gate, openssh] = pair.compare("sshfs", sshfs_scenario);
    for o in [&gate, &openssh] {
        assert_eq!(o.get("copy in"), Some("ok"), "{o}");
        assert_eq!(
            o.get("read back"),
            Some(file_hash_of_data().as_str()),
            "{o}"
        );
        assert_eq!(
            o.get("mtime after touch"),
            Some(STAMP.to_string().as_str()),
            "{o}"
        );
    }
}

/// A mounted sshfs, unmounted when dropped.
struct Mounted {
    dir: std::path::PathBuf,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = run(
            Command::new("fusermount3").arg("-u").arg(&self.dir),
            Duration::from_secs(20),
        );
    }
}

/// Mounts `t`'s start directory, or `None` after a skip message when FUSE mounts are not
/// allowed here (a container without the capability): that is the environment, not a
/// client that .ci/run failed to install.
fn sshfs_mount(t: &Target) -> Option<Mounted> {
    let dir = t.scratch.join("mnt");
    let _ = std::fs::create_dir(&dir);
    let opts = format!(
        "IdentityFile={},IdentitiesOnly=yes,StrictHostKeyChecking=no,\
         UserKnownHostsFile=/dev/null,BatchMode=yes,LogLevel=ERROR",
        t.key.display()
    );
    let out = run(
        Command::new("sshfs")
            .env_remove("SSH_AUTH_SOCK")
            .args(["-F", "/dev/null", "-p", &t.port.to_string(), "-o", &opts])
            .arg(format!("{}@127.0.0.1:", t.user))
            .arg(&dir),
        CLIENT_TIMEOUT,
    );
    if !out.status.success() {
        let why = out.stderr.trim();
        if why.contains("fuse") || why.contains("fusermount") {
            eprintln!("skipping: sshfs cannot mount here (FUSE not usable): {why}");
            return None;
        }
        panic!("sshfs failed against {}\n{}", t.label, out.show());
    }
    Some(Mounted { dir })
}

fn sshfs_scenario(t: &Target) -> Outcome {
    let mounted = sshfs_mount(t).expect("mounted once already");
    let m = mounted.dir.clone();
    let mut o = Outcome::new();
    let mut step = |name: &str, result: std::io::Result<String>| {
        o.step(
            name,
            match result {
                Ok(v) => v,
                Err(e) => format!("error {:?}", e.kind()),
            },
        );
    };
    let ok = |r: std::io::Result<()>| r.map(|()| "ok".to_owned());
    step(
        "copy in",
        std::fs::copy(t.local.join("data.bin"), m.join("data.bin")).map(|_| "ok".to_owned()),
    );
    step("read back", Ok(file_hash(&m.join("data.bin"))));
    step(
        "write small",
        ok(std::fs::write(m.join("small.txt"), "small\n")),
    );
    step(
        "write other",
        ok(std::fs::write(m.join("other.txt"), "other text\n")),
    );
    step("mkdir", ok(std::fs::create_dir(m.join("dir"))));
    step("mkdir again", ok(std::fs::create_dir(m.join("dir"))));
    step(
        "rename new name",
        ok(std::fs::rename(m.join("data.bin"), m.join("dir/moved.bin"))),
    );
    step(
        "rename over existing",
        ok(std::fs::rename(m.join("other.txt"), m.join("small.txt"))),
    );
    step("read renamed", std::fs::read_to_string(m.join("small.txt")));
    step("rmdir non-empty", ok(std::fs::remove_dir(m.join("dir"))));
    step(
        "symlink",
        ok(std::os::unix::fs::symlink("small.txt", m.join("sym"))),
    );
    step(
        "readlink",
        std::fs::read_link(m.join("sym")).map(|p| p.display().to_string()),
    );
    step(
        "chmod",
        ok(std::fs::set_permissions(
            m.join("small.txt"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )),
    );
    step(
        "touch",
        std::fs::File::options()
            .write(true)
            .open(m.join("small.txt"))
            .and_then(|f| {
                let at = std::time::UNIX_EPOCH + Duration::from_secs(STAMP as u64);
                f.set_times(std::fs::FileTimes::new().set_modified(at).set_accessed(at))
            })
            .map(|()| "ok".to_owned()),
    );
    step(
        "mtime after touch",
        std::fs::metadata(m.join("small.txt")).map(|meta| {
            use std::os::unix::fs::MetadataExt as _;
            meta.mtime().to_string()
        }),
    );
    step(
        "append (resume)",
        std::fs::File::options()
            .append(true)
            .open(m.join("small.txt"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"more\n"))
            .map(|()| "ok".to_owned()),
    );
    step("remove", ok(std::fs::remove_file(m.join("small.txt"))));
    step(
        "remove again",
        ok(std::fs::remove_file(m.join("small.txt"))),
    );
    step("read missing", std::fs::read_to_string(m.join("missing")));
    step("listing", Ok(local_names(&m)));
    step("listing dir", Ok(local_names(&m.join("dir"))));
    drop(mounted);
    o.tree("remote tree", t);
    o
}
