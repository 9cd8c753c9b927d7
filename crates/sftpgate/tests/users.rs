//! Users, keys and permissions in the store, end to end: `sftpgate user|key|perm` on the
//! command line, and OpenSSH's `sftp` against `sftpgate serve` on the same store. Every
//! test runs twice: on the SQLite file in the data directory and on a fresh schema of the
//! local PostgreSQL (skipped with the reason if that is not reachable, except under
//! `CI=true`). 200 concurrent logins run against PostgreSQL.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Fixture, Interactive, Output, Server, SFTP_TIMEOUT, SSH_OPTIONS};

/// Runs each listed `fn(&Fixture)` as one test on SQLite and one on PostgreSQL.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    let Some(fx) = crate::common::Fixture::new() else { return };
                    super::$name(&fx);
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $name() {
                    let Some(fx) = crate::common::Fixture::with_postgres() else { return };
                    super::$name(&fx);
                }
            )*
        }
    };
}

on_both_backends!(
    login_by_key_and_by_password,
    disabled_and_expired_users_are_refused,
    store_changes_apply_to_new_sessions,
    each_permission_denied_and_granted,
    brute_force_ban_and_its_expiry,
    cli_manages_users_keys_and_rules,
    bad_input_exits_2_and_writes_nothing,
);

/// A second key pair for tests that need one, made with `ssh-keygen` in the fixture.
fn second_key(fx: &Fixture) -> String {
    let path = fx.path().join("id_second");
    let out = common::run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "second", "-f"])
            .arg(&path),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", out.show());
    std::fs::read_to_string(path.with_extension("pub"))
        .unwrap()
        .trim()
        .to_owned()
}

/// A weak (1024-bit) RSA key: refused by the store.
const RSA_1024_KEY: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC8/TfLYznfikUb2J1W0+pC7Rx/XTkdPqqlWV/B8fJ7cptLXA9aVxT50BE49FjZ7ya0p+cUkxvkiHgnr5HOoJDo59SXNgfurWJIPrF2xVT5cALKdTAQM/zx355ELwI1m3dvl13To/bGoM0socbPZTaVqYeMz4LAw9a2eCXVq1jjHw== rsa-1024@test";

/// Whether OpenSSH refused the login (the session never started).
fn refused(out: &Output) -> bool {
    !out.status.success() && out.stderr.contains("Permission denied")
}

/// A CLI command with `input` on stdin that must succeed.
fn cli_input_ok(fx: &Fixture, args: &[&str], input: &str) {
    let out = fx.cli_with_input(args, Some(input));
    assert!(out.status.success(), "sftpgate {args:?}\n{}", out.show());
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

fn login_by_key_and_by_password(fx: &Fixture) {
    cli_input_ok(
        fx,
        &[
            "user",
            "add",
            "alice",
            "--password-stdin",
            "--key-file",
            fx.public_key_file().to_str().unwrap(),
        ],
        "correct horse battery\n",
    );
    let server = fx.start_server(None);
    assert!(
        server.stdout().contains("(1 user;"),
        "[{}] {}",
        fx.backend(),
        server.stdout()
    );
    std::fs::write(fx.local().join("by-key.txt"), "key\n").unwrap();
    let out = fx.sftp(&server, "alice", "put by-key.txt\nls -1\n");
    assert!(out.status.success(), "key login\n{}", out.show());
    let root = fx.user_root("alice");
    assert_eq!(
        std::fs::read_to_string(root.join("by-key.txt")).unwrap(),
        "key\n"
    );
    assert_eq!(
        std::fs::metadata(&root).unwrap().permissions().mode() & 0o777,
        0o700,
        "the root is created private"
    );

    std::fs::write(fx.local().join("by-password.txt"), "password\n").unwrap();
    let Some(out) = fx.sftp_password(
        &server,
        "alice",
        "correct horse battery",
        "put by-password.txt\n",
    ) else {
        return;
    };
    assert!(out.status.success(), "password login\n{}", out.show());
    assert_eq!(
        std::fs::read_to_string(root.join("by-password.txt")).unwrap(),
        "password\n"
    );
    let wrong = fx
        .sftp_password(&server, "alice", "correct horse", "pwd\n")
        .unwrap();
    assert!(refused(&wrong), "a wrong password\n{}", wrong.show());
    let unknown = fx
        .sftp_password(&server, "mallory", "correct horse battery", "pwd\n")
        .unwrap();
    assert!(refused(&unknown), "an unknown user\n{}", unknown.show());
    // Another user's key does not log in as alice.
    let other = second_key(fx);
    fx.cli_ok(&["user", "add", "bob", "--key", &other]);
    let out = fx.sftp(&server, "bob", "pwd\n");
    assert!(refused(&out), "alice's key for bob\n{}", out.show());
}

fn disabled_and_expired_users_are_refused(fx: &Fixture) {
    let key_file = fx.public_key_file();
    let key_file = key_file.to_str().unwrap();
    let add = |name: &str, extra: &[&str]| {
        let mut args = vec!["user", "add", name, "--key-file", key_file];
        args.extend_from_slice(extra);
        cli_input_ok(fx, &args, "pw-of-every-user\n");
    };
    add("off", &["--disabled", "--password-stdin"]);
    add(
        "old",
        &["--expires", "2000-01-01T00:00:00Z", "--password-stdin"],
    );
    add("later", &["--expires", "2100-01-01", "--password-stdin"]);
    let server = fx.start_server(None);

    for user in ["off", "old"] {
        let out = fx.sftp(&server, user, "pwd\n");
        assert!(refused(&out), "{user} by key\n{}", out.show());
        if let Some(out) = fx.sftp_password(&server, user, "pw-of-every-user", "pwd\n") {
            assert!(refused(&out), "{user} by password\n{}", out.show());
        }
    }
    let out = fx.sftp(&server, "later", "pwd\n");
    assert!(out.status.success(), "not yet expired\n{}", out.show());

    // Enabling one and moving the other's expiry lets them in, at once.
    fx.cli_ok(&["user", "enable", "off"]);
    fx.cli_ok(&["user", "set-expiry", "old", "never"]);
    for user in ["off", "old"] {
        let out = fx.sftp(&server, user, "pwd\n");
        assert!(out.status.success(), "{user}\n{}", out.show());
    }
    // And expiring a user now refuses them.
    fx.cli_ok(&["user", "set-expiry", "later", "2001-01-01"]);
    let out = fx.sftp(&server, "later", "pwd\n");
    assert!(refused(&out), "expired since\n{}", out.show());
}

/// Store changes reach the next login and the next session at once; a running session
/// keeps what it was given when it started (docs/users.md).
fn store_changes_apply_to_new_sessions(fx: &Fixture) {
    let server = fx.start("alice");
    let mut running = Interactive::start(fx, &server, "alice");
    running.send("pwd").unwrap();
    assert!(
        running.wait_for(true, "Remote working directory: /", SFTP_TIMEOUT),
        "the session did not open\n{}",
        running.stderr()
    );

    // Disabled: the next login is refused; the running session goes on.
    fx.cli_ok(&["user", "disable", "alice"]);
    let out = fx.sftp(&server, "alice", "pwd\n");
    assert!(refused(&out), "disabled user logged in\n{}", out.show());
    std::fs::write(fx.local().join("during.txt"), "during\n").unwrap();
    running.send("put during.txt").unwrap();
    assert!(
        wait_for_file(&fx.user_root("alice").join("during.txt"), "during\n"),
        "the running session stopped working\n{}\n{}",
        running.stdout(),
        running.stderr()
    );

    // A new rule applies to the next session, not to the running one.
    fx.cli_ok(&["user", "enable", "alice"]);
    fx.cli_ok(&["perm", "set", "alice", "/", "list,download"]);
    std::fs::write(fx.local().join("after.txt"), "after\n").unwrap();
    let out = fx.sftp(&server, "alice", "ls -1\n-put after.txt\n");
    assert!(out.status.success(), "{}", out.show());
    assert!(out.stdout.contains("during.txt"), "{}", out.show());
    assert!(out.stderr.contains("Permission denied"), "{}", out.show());
    assert!(!fx.user_root("alice").join("after.txt").exists());
    running.send("put after.txt running.txt").unwrap();
    assert!(
        wait_for_file(&fx.user_root("alice").join("running.txt"), "after\n"),
        "the running session lost its permissions\n{}\n{}",
        running.stdout(),
        running.stderr()
    );
    assert!(!running.stderr().contains("denied"), "{}", running.stderr());

    // A removed key logs in no more.
    fx.cli_ok(&["key", "remove", "alice", "1"]);
    let out = fx.sftp(&server, "alice", "pwd\n");
    assert!(refused(&out), "removed key\n{}", out.show());
}

/// Waits until `path` holds `content` (an upload is complete); false after
/// [`SFTP_TIMEOUT`].
fn wait_for_file(path: &Path, content: &str) -> bool {
    let deadline = Instant::now() + SFTP_TIMEOUT;
    while Instant::now() < deadline {
        if std::fs::read_to_string(path).is_ok_and(|c| c == content) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The permissions, each in a directory that lacks it (everything else granted) and in one
/// that grants it (with only `list` and `download` besides). One session runs every command
/// (`-`: going on after failures); its output is read per command.
fn each_permission_denied_and_granted(fx: &Fixture) {
    const PERMISSIONS: [&str; 9] = [
        "list",
        "download",
        "upload",
        "overwrite",
        "delete",
        "rename",
        "mkdir",
        "symlink",
        "chattr",
    ];
    let root = fx.user_root("alice");
    let mut add = vec![
        "user".to_owned(),
        "add".to_owned(),
        "alice".to_owned(),
        "--key-file".to_owned(),
        fx.public_key_file().to_str().unwrap().to_owned(),
        "--root".to_owned(),
        root.to_str().unwrap().to_owned(),
        "--perm".to_owned(),
        "/=list".to_owned(),
    ];
    for p in PERMISSIONS {
        let others: Vec<&str> = PERMISSIONS.into_iter().filter(|o| *o != p).collect();
        add.push("--perm".into());
        add.push(format!("/deny-{p}={}", others.join(",")));
        add.push("--perm".into());
        add.push(format!("/allow-{p}=list,download,{p}"));
        for dir in [format!("deny-{p}"), format!("allow-{p}")] {
            std::fs::create_dir_all(root.join(&dir)).unwrap();
            let file = root.join(&dir).join("existing.txt");
            std::fs::write(&file, "original\n").unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let args: Vec<&str> = add.iter().map(String::as_str).collect();
    fx.cli_ok(&args);
    let rules = json(&fx.cli_ok(&["perm", "list", "alice", "--json"]));
    assert_eq!(rules.as_array().unwrap().len(), 19, "{rules}");
    std::fs::write(fx.local().join("up.txt"), "uploaded\n").unwrap();
    let server = fx.start_server(None);

    let commands = |kind: &str, p: &str| -> String {
        let d = format!("/{kind}-{p}");
        match p {
            "list" => format!("ls -1 {d}"),
            "download" => format!("get {d}/existing.txt got-{kind}.txt"),
            "upload" => format!("put up.txt {d}/new.txt"),
            "overwrite" => format!("put up.txt {d}/existing.txt"),
            "delete" => format!("rm {d}/existing.txt"),
            "rename" => format!("rename {d}/existing.txt {d}/renamed.txt"),
            "mkdir" => format!("mkdir {d}/newdir"),
            "symlink" => format!("ln -s existing.txt {d}/link"),
            "chattr" => format!("chmod 600 {d}/existing.txt"),
            _ => unreachable!(),
        }
    };
    let mut batch = String::new();
    for p in PERMISSIONS {
        for kind in ["deny", "allow"] {
            batch += &format!("-{}\n", commands(kind, p));
        }
    }
    let out = sftp_merged(fx, &server, "alice", &batch);
    for p in PERMISSIONS {
        for kind in ["deny", "allow"] {
            let cmd = commands(kind, p);
            let said = section(&out, &format!("-{cmd}"));
            let denied = said.contains("Permission denied");
            assert_eq!(
                denied,
                kind == "deny",
                "[{}] `{cmd}` said:\n{said}\n--- whole session ---\n{out}",
                fx.backend()
            );
        }
    }

    // What happened on disk, permission by permission.
    let read = |path: &Path| std::fs::read_to_string(path).ok();
    let (deny, allow) = (
        |p: &str| root.join(format!("deny-{p}")),
        |p: &str| root.join(format!("allow-{p}")),
    );
    assert!(section(&out, "-ls -1 /allow-list").contains("existing.txt"));
    assert!(!section(&out, "-ls -1 /deny-list").contains("existing.txt"));
    assert_eq!(read(&fx.local().join("got-deny.txt")), None);
    assert_eq!(
        read(&fx.local().join("got-allow.txt")).as_deref(),
        Some("original\n")
    );
    assert!(!deny("upload").join("new.txt").exists());
    assert_eq!(
        read(&allow("upload").join("new.txt")).as_deref(),
        Some("uploaded\n")
    );
    assert_eq!(
        read(&deny("overwrite").join("existing.txt")).as_deref(),
        Some("original\n")
    );
    assert_eq!(
        read(&allow("overwrite").join("existing.txt")).as_deref(),
        Some("uploaded\n")
    );
    assert!(deny("delete").join("existing.txt").exists());
    assert!(!allow("delete").join("existing.txt").exists());
    assert!(deny("rename").join("existing.txt").exists());
    assert!(!deny("rename").join("renamed.txt").exists());
    assert!(!allow("rename").join("existing.txt").exists());
    assert!(allow("rename").join("renamed.txt").exists());
    assert!(!deny("mkdir").join("newdir").exists());
    assert!(allow("mkdir").join("newdir").is_dir());
    assert!(deny("symlink").join("link").symlink_metadata().is_err());
    assert_eq!(
        std::fs::read_link(allow("symlink").join("link")).unwrap(),
        Path::new("existing.txt")
    );
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&deny("chattr").join("existing.txt")), 0o644);
    assert_eq!(mode(&allow("chattr").join("existing.txt")), 0o600);
    // Nothing outside the permitted directories: `/` allows listing only.
    let out = fx.sftp(&server, "alice", "ls -1 /\n-put up.txt /top.txt\n");
    assert!(out.stdout.contains("allow-list"), "{}", out.show());
    assert!(out.stderr.contains("Permission denied"), "{}", out.show());
    assert!(!root.join("top.txt").exists());
}

/// Three wrong passwords within the window ban the address for 3 s: every method is
/// refused, even the right password and the right key; afterwards both work again. (3 s,
/// not less: each refusal costs about half a second of the SSH server's rejection delay, and
/// both refusals must fall inside the ban.)
fn brute_force_ban_and_its_expiry(fx: &Fixture) {
    const BAN: Duration = Duration::from_secs(3);
    if !common::require(&["sshpass"]) {
        return;
    }
    let config = fx.write(
        "ban.toml",
        "[auth.ban]\nmax_failures = 3\nwindow = \"1m\"\nban_time = \"3s\"\n",
    );
    cli_input_ok(
        fx,
        &[
            "user",
            "add",
            "alice",
            "--password-stdin",
            "--key-file",
            fx.public_key_file().to_str().unwrap(),
        ],
        "the-right-one\n",
    );
    let server = fx.start_server(Some(&config));
    for i in 1..=3 {
        let out = fx
            .sftp_password(&server, "alice", &format!("guess-{i}"), "pwd\n")
            .unwrap();
        assert!(refused(&out), "guess {i}\n{}", out.show());
    }
    let banned_at = Instant::now();
    let by_key = fx.sftp(&server, "alice", "pwd\n");
    let by_password = fx
        .sftp_password(&server, "alice", "the-right-one", "pwd\n")
        .unwrap();
    let checked = banned_at.elapsed();
    assert!(
        checked < BAN,
        "the machine is too slow for this test: two refused logins took {checked:?}"
    );
    assert!(refused(&by_key), "key during the ban\n{}", by_key.show());
    assert!(
        refused(&by_password),
        "password during the ban\n{}",
        by_password.show()
    );
    assert!(
        server
            .stderr()
            .contains("address banned after repeated failed logins"),
        "{}",
        server.stderr()
    );

    std::thread::sleep((BAN + Duration::from_millis(300)).saturating_sub(banned_at.elapsed()));
    let out = fx.sftp(&server, "alice", "pwd\n");
    assert!(out.status.success(), "key after the ban\n{}", out.show());
    let out = fx
        .sftp_password(&server, "alice", "the-right-one", "pwd\n")
        .unwrap();
    assert!(
        out.status.success(),
        "password after the ban\n{}",
        out.show()
    );
}

/// Every command of the CLI, its text and JSON output, on the store `serve` uses.
fn cli_manages_users_keys_and_rules(fx: &Fixture) {
    let key_file = fx.public_key_file();
    let key_file = key_file.to_str().unwrap();
    // A relative --root is made absolute against the current directory (the fixture's).
    let out = fx.cli_ok(&[
        "user",
        "add",
        "alice",
        "--key-file",
        key_file,
        "--root",
        "rel/alice",
        "--expires",
        "2099-12-31T23:59:59Z",
    ]);
    assert!(out.contains("added user \"alice\""), "{out}");
    let out = fx.cli_with_input(&["user", "add", "bob", "--password-stdin"], Some("pw\n"));
    assert!(out.status.success(), "{}", out.show());
    let out = fx.cli_ok(&["user", "add", "carol", "--generate-password", "--disabled"]);
    let generated = out
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no password line in\n{out}"));
    assert_eq!(generated.len(), 20, "{out}");

    let users = json(&fx.cli_ok(&["user", "list", "--json"]));
    let names: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "bob", "carol"]);
    let alice = &users[0];
    assert_eq!(
        alice["root_dir"].as_str().unwrap(),
        fx.path().join("rel/alice").to_str().unwrap()
    );
    assert_eq!(alice["expires_at"], "2099-12-31T23:59:59Z");
    assert_eq!(alice["status"], "active");
    assert_eq!(alice["has_password"], false);
    assert_eq!(alice["key_count"], 1);
    assert_eq!(users[1]["has_password"], true);
    assert_eq!(users[1]["expires_at"], serde_json::Value::Null);
    // bob's default root: <data_dir>/files/bob, absolute.
    assert_eq!(
        users[1]["root_dir"].as_str().unwrap(),
        fx.user_root("bob").to_str().unwrap()
    );
    assert_eq!(users[2]["status"], "disabled");
    for user in users.as_array().unwrap() {
        for field in ["created_at", "updated_at"] {
            let at = user[field].as_str().unwrap();
            humantime::parse_rfc3339(at).unwrap_or_else(|e| panic!("{field} {at}: {e}"));
        }
    }
    let table = fx.cli_ok(&["user", "list"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("disabled"), "{table}");

    // Keys: add from a line and from a file of two (one a comment), list, remove.
    let second = second_key(fx);
    let keys_file = fx.write(
        "keys",
        &format!("# bob's keys\n{}\n\n{second}\n", fx.public_key),
    );
    fx.cli_ok(&[
        "key",
        "add",
        "bob",
        "--key-file",
        keys_file.to_str().unwrap(),
    ]);
    let keys = json(&fx.cli_ok(&["key", "list", "bob", "--json"]));
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0]["index"], 1);
    assert_eq!(keys[1]["comment"], "second");
    assert_eq!(keys[1]["algorithm"], "ssh-ed25519");
    let fingerprint = keys[1]["fingerprint"].as_str().unwrap().to_owned();
    assert!(fingerprint.starts_with("SHA256:"), "{fingerprint}");
    let text = fx.cli_ok(&["key", "list", "bob"]);
    assert!(
        text.contains(&format!("#2 {fingerprint} ssh-ed25519 second")),
        "{text}"
    );
    fx.cli_ok(&["key", "remove", "bob", &fingerprint]);
    fx.cli_ok(&["key", "add", "bob", "--key", &second]);
    fx.cli_ok(&["key", "remove", "bob", "#1"]);
    let keys = json(&fx.cli_ok(&["key", "list", "bob", "--json"]));
    assert_eq!(keys.as_array().unwrap().len(), 1);
    assert_eq!(keys[0]["comment"], "second");

    // Rules: set, replace, list, remove.
    fx.cli_ok(&["perm", "set", "bob", "/", "list,download"]);
    fx.cli_ok(&["perm", "set", "bob", "/in/", "upload"]);
    fx.cli_ok(&["perm", "set", "bob", "/in", "list,upload,mkdir"]);
    let rules = json(&fx.cli_ok(&["perm", "list", "bob", "--json"]));
    assert_eq!(
        rules,
        json(
            r#"[{"prefix": "/in", "permissions": ["list", "upload", "mkdir"]},
                {"prefix": "/", "permissions": ["list", "download"]}]"#
        )
    );
    let text = fx.cli_ok(&["perm", "list", "bob"]);
    assert_eq!(text, "/in  list,upload,mkdir\n/    list,download\n");
    fx.cli_ok(&["perm", "remove", "bob", "/in"]);
    let bob = json(&fx.cli_ok(&["user", "show", "bob", "--json"]));
    assert_eq!(bob["rule_count"], 1);
    assert_eq!(
        bob["permissions"],
        json(r#"[{"prefix": "/", "permissions": ["list", "download"]}]"#)
    );
    assert_eq!(bob["keys"].as_array().unwrap().len(), 1);
    let text = fx.cli_ok(&["user", "show", "bob"]);
    assert!(text.contains("status:      active"), "{text}");
    assert!(text.contains("  /  list,download"), "{text}");

    // Passwords, status, expiry, root.
    fx.cli_ok(&["user", "passwd", "alice", "--generate"]);
    assert_eq!(
        json(&fx.cli_ok(&["user", "show", "alice", "--json"]))["has_password"],
        true
    );
    fx.cli_ok(&["user", "passwd", "alice", "--clear"]);
    let out = fx.cli_with_input(
        &["user", "passwd", "alice", "--password-stdin"],
        Some("new pw\r\n"),
    );
    assert!(out.status.success(), "{}", out.show());
    let out = fx.cli(&["user", "passwd", "alice"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "no terminal, no option\n{}",
        out.show()
    );
    assert!(out.stderr.contains("--password-stdin"), "{}", out.show());
    fx.cli_ok(&["user", "enable", "carol"]);
    fx.cli_ok(&["user", "disable", "bob"]);
    fx.cli_ok(&["user", "set-expiry", "alice", "never"]);
    fx.cli_ok(&["user", "set-root", "alice", "elsewhere"]);
    let alice = json(&fx.cli_ok(&["user", "show", "alice", "--json"]));
    assert_eq!(alice["has_password"], true);
    assert_eq!(alice["expires_at"], serde_json::Value::Null);
    assert_eq!(
        alice["root_dir"].as_str().unwrap(),
        fx.path().join("elsewhere").to_str().unwrap()
    );
    let users = json(&fx.cli_ok(&["user", "list", "--json"]));
    assert_eq!(users[1]["status"], "disabled");
    assert_eq!(users[2]["status"], "active");

    let out = fx.cli_ok(&["user", "remove", "carol"]);
    assert!(out.contains("left in place"), "{out}");
    let users = json(&fx.cli_ok(&["user", "list", "--json"]));
    assert_eq!(users.as_array().unwrap().len(), 2);

    // The --database-url flag names the same store as the variable (PostgreSQL), and
    // sftpgate.db in --data-dir is the default.
    if let Some(db) = &fx.postgres {
        let out = common::run(
            fx.sftpgate().env_remove("SFTPGATE_DATABASE_URL").args([
                "user",
                "list",
                "--database-url",
                db.url(),
            ]),
            common::CLI_TIMEOUT,
        );
        assert!(out.stdout.contains("alice"), "{}", out.show());
        assert!(!fx.data_dir().join("sftpgate.db").exists());
    } else {
        assert!(fx.data_dir().join("sftpgate.db").exists());
    }
}

/// Bad input: a message naming the problem on stderr, exit status 2, and nothing written
/// (the listing and each user's details are byte for byte what they were).
fn bad_input_exits_2_and_writes_nothing(fx: &Fixture) {
    let key_file = fx.public_key_file();
    let key_file = key_file.to_str().unwrap();
    fx.cli_ok(&[
        "user",
        "add",
        "alice",
        "--key-file",
        key_file,
        "--perm",
        "/=list",
    ]);
    let second = second_key(fx);
    let snapshot = || {
        (
            fx.cli_ok(&["user", "list", "--json"]),
            fx.cli_ok(&["user", "show", "alice", "--json"]),
        )
    };
    let before = snapshot();
    let missing = fx.path().join("missing.pub");
    let missing = missing.to_str().unwrap();
    let empty_file = fx.write("empty.pub", "# nothing here\n\n");
    let empty_file = empty_file.to_str().unwrap();

    let cases: &[(&[&str], Option<&str>, &str)] = &[
        // Unknown users, for every command that names one.
        (&["user", "show", "ghost"], None, "no user named \"ghost\""),
        (
            &["user", "remove", "ghost"],
            None,
            "no user named \"ghost\"",
        ),
        (
            &["user", "enable", "ghost"],
            None,
            "no user named \"ghost\"",
        ),
        (
            &["user", "disable", "ghost"],
            None,
            "no user named \"ghost\"",
        ),
        (
            &["user", "passwd", "ghost", "--generate"],
            None,
            "no user named \"ghost\"",
        ),
        (
            &["user", "passwd", "ghost", "--password-stdin"],
            Some("pw\n"),
            "no user named \"ghost\"",
        ),
        (
            &["user", "set-expiry", "ghost", "never"],
            None,
            "no user named \"ghost\"",
        ),
        (
            &["user", "set-root", "ghost", "/srv"],
            None,
            "no user named \"ghost\"",
        ),
        (
            &["key", "add", "ghost", "--key", &second],
            None,
            "no user named \"ghost\"",
        ),
        (&["key", "list", "ghost"], None, "no user named \"ghost\""),
        (
            &["key", "remove", "ghost", "1"],
            None,
            "no user named \"ghost\"",
        ),
        (
            &["perm", "set", "ghost", "/", "all"],
            None,
            "no user named \"ghost\"",
        ),
        (&["perm", "list", "ghost"], None, "no user named \"ghost\""),
        (
            &["perm", "remove", "ghost", "/"],
            None,
            "no user named \"ghost\"",
        ),
        // Malformed, weak or repeated keys: none of the command's keys is added.
        (
            &[
                "user",
                "add",
                "bob",
                "--key",
                &second,
                "--key",
                "ssh-ed25519 AAAA",
            ],
            None,
            "authorized key #2",
        ),
        (
            &[
                "key",
                "add",
                "alice",
                "--key",
                &second,
                "--key",
                "not a key",
            ],
            None,
            "authorized key #2",
        ),
        (
            &["key", "add", "alice", "--key", RSA_1024_KEY],
            None,
            "too weak",
        ),
        (
            &[
                "key",
                "add",
                "alice",
                "--key",
                &second,
                "--key",
                &fx.public_key,
            ],
            None,
            "has the key",
        ),
        (
            &["key", "add", "alice", "--key", &second, "--key", &second],
            None,
            "SHA256:",
        ),
        (
            &["key", "add", "alice", "--key-file", missing],
            None,
            "missing.pub",
        ),
        (
            &["key", "add", "alice", "--key-file", empty_file],
            None,
            "no key lines",
        ),
        (&["key", "add", "alice"], None, "--key"),
        (
            &["key", "remove", "alice", "SHA256:nosuchkey"],
            None,
            "has no key",
        ),
        (&["key", "remove", "alice", "2"], None, "has no key #2"),
        (&["key", "remove", "alice", "zero"], None, "names no key"),
        // Passwords.
        (
            &["user", "add", "bob", "--password-stdin", "--key", &second],
            Some("\n"),
            "password is empty",
        ),
        (
            &["user", "add", "bob", "--password-stdin"],
            Some(""),
            "password is empty",
        ),
        (
            &["user", "passwd", "alice", "--password-stdin"],
            Some("\n"),
            "password is empty",
        ),
        // Names.
        (
            &["user", "add", "alice", "--key", &second],
            None,
            "exists already",
        ),
        (&["user", "add", "bad name"], None, "invalid user name"),
        (&["user", "add", "a/b"], None, "invalid user name"),
        // Permissions and prefixes.
        (
            &["perm", "set", "alice", "/in", "list,frob"],
            None,
            "unknown permission \"frob\"",
        ),
        (
            &["perm", "set", "alice", "in", "list"],
            None,
            "must be an absolute virtual path",
        ),
        (
            &["perm", "remove", "alice", "/nothing"],
            None,
            "has no permission rule for /nothing",
        ),
        (
            &[
                "user",
                "add",
                "bob",
                "--key",
                &second,
                "--perm",
                "/=list,frob",
            ],
            None,
            "unknown permission \"frob\"",
        ),
        (
            &["user", "add", "bob", "--key", &second, "--perm", "/in"],
            None,
            "PREFIX=PERMISSIONS",
        ),
        // Times and option combinations.
        (
            &["user", "add", "bob", "--expires", "tomorrow"],
            None,
            "RFC 3339",
        ),
        (
            &["user", "set-expiry", "alice", "2030-13-01"],
            None,
            "RFC 3339",
        ),
        (
            &["user", "passwd", "alice", "--generate", "--clear"],
            None,
            "cannot be used with",
        ),
        (
            &["user", "add", "bob", "--password-stdin", "--key-file", "-"],
            Some("pw\n"),
            "standard input",
        ),
    ];
    for (args, input, message) in cases {
        let out = fx.cli_with_input(args, *input);
        assert_eq!(
            out.status.code(),
            Some(2),
            "[{}] {args:?}\n{}",
            fx.backend(),
            out.show()
        );
        assert!(
            out.stderr.contains(message),
            "[{}] {args:?}: expected {message:?}\n{}",
            fx.backend(),
            out.show()
        );
        assert!(out.stdout.is_empty(), "{args:?}\n{}", out.show());
    }
    assert_eq!(snapshot(), before, "a refused command changed the store");

    // The store itself failing is exit status 1.
    let not_a_dir = fx.write("not-a-dir", "");
    let out = common::run(
        fx.sftpgate()
            .env_remove("SFTPGATE_DATABASE_URL")
            .args(["user", "list", "--data-dir"])
            .arg(&not_a_dir),
        common::CLI_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.show());
    assert!(out.stderr.contains("not-a-dir"), "{}", out.show());
}

#[test]
fn help_explains_every_option() {
    let Some(fx) = Fixture::new() else { return };
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["user"],
            &[
                "add",
                "list",
                "show",
                "remove",
                "passwd",
                "enable",
                "disable",
                "set-expiry",
                "set-root",
                "--data-dir",
                "--database-url",
                "--config",
                "Exit status",
            ],
        ),
        (
            &["user", "add"],
            &[
                "--key <LINE>",
                "--key-file <FILE>",
                "--password-stdin",
                "--generate-password",
                "--root <DIR>",
                "current directory",
                "--expires <TIME>",
                "--disabled",
                "--perm <PREFIX=PERMISSIONS>",
                "--database-url",
                "overwrite",
                "chattr",
            ],
        ),
        (&["user", "list"], &["--json"]),
        (&["user", "show"], &["--json"]),
        (
            &["user", "passwd"],
            &["--password-stdin", "--generate", "--clear"],
        ),
        (&["user", "set-expiry"], &["never", "RFC 3339"]),
        (&["user", "set-root"], &["current directory"]),
        (&["key"], &["add", "list", "remove", "--data-dir"]),
        (
            &["key", "add"],
            &["--key <LINE>", "--key-file <FILE>", "standard input"],
        ),
        (&["key", "remove"], &["SHA256:", "#1"]),
        (
            &["perm"],
            &["set", "list", "remove", "longest matching prefix"],
        ),
        (
            &["perm", "set"],
            &[
                "<PREFIX>",
                "<PERMISSIONS>",
                "list, download, upload",
                "symlink",
            ],
        ),
    ];
    for (command, expected) in cases {
        let out = common::run(
            fx.sftpgate().args(*command).arg("--help"),
            common::CLI_TIMEOUT,
        );
        assert!(out.status.success(), "{command:?}\n{}", out.show());
        for text in *expected {
            assert!(
                out.stdout.contains(text),
                "`sftpgate {} --help` lacks {text:?}\n{}",
                command.join(" "),
                out.stdout
            );
        }
    }
}

/// 200 logins, at most 50 at a time, against one server on PostgreSQL: every one lists the
/// user's directory.
#[test]
fn two_hundred_concurrent_logins_on_postgres() {
    const LOGINS: usize = 200;
    const AT_ONCE: usize = 50;
    let Some(fx) = Fixture::with_postgres() else {
        return;
    };
    let server = fx.start("alice");
    std::fs::create_dir_all(fx.user_root("alice")).unwrap();
    std::fs::write(fx.user_root("alice").join("marker.txt"), "m").unwrap();
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..AT_ONCE {
            scope.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < LOGINS {
                    let out = fx.sftp(&server, "alice", "ls -1\n");
                    if !out.status.success() || !out.stdout.contains("marker.txt") {
                        failures.lock().unwrap().push(out.show());
                    }
                }
            });
        }
    });
    let took = started.elapsed();
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {LOGINS} logins failed; the first:\n{}\n--- server stderr ---\n{}",
        failures.len(),
        failures[0],
        server.stderr()
    );
    eprintln!("{LOGINS} logins, {AT_ONCE} at a time, took {took:?}");
}

/// `sftp -b` as `user` with the fixture's key, stdout and stderr into one pipe so that each
/// error follows the command that caused it.
fn sftp_merged(fx: &Fixture, server: &Server, user: &str, batch: &str) -> String {
    let batch_file = fx.write("merged-batch", batch);
    let (mut reader, writer) = std::io::pipe().unwrap();
    let mut cmd = Command::new("sftp");
    cmd.current_dir(fx.local())
        .env_remove("SSH_AUTH_SOCK")
        .args(SSH_OPTIONS)
        .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i"])
        .arg(&fx.key)
        .arg("-P")
        .arg(server.port.to_string())
        .arg("-b")
        .arg(&batch_file)
        .arg(format!("{user}@127.0.0.1"))
        .stdin(Stdio::null())
        .stdout(writer.try_clone().unwrap())
        .stderr(writer);
    let mut child = cmd.spawn().expect("starting sftp");
    drop(cmd); // our copies of the pipe's write end
    let output = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut reader, &mut text).unwrap();
        text
    });
    let status = common::wait_timeout(&mut child, SFTP_TIMEOUT).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("sftp did not finish within {SFTP_TIMEOUT:?}")
    });
    let text = output.join().unwrap();
    assert!(status.success(), "the session failed ({status})\n{text}");
    text
}

/// What the session printed for `command` (the lines after its `sftp> ` echo, up to the next
/// one).
fn section(output: &str, command: &str) -> String {
    let echo = format!("sftp> {command}");
    let mut lines = output.lines().skip_while(|l| *l != echo);
    assert!(lines.next().is_some(), "`{command}` did not run:\n{output}");
    lines
        .take_while(|l| !l.starts_with("sftp> "))
        .collect::<Vec<_>>()
        .join("\n")
}
