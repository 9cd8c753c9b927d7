//! The command line of `sftpgate`: help, bad flags, the first start (a user and a host key
//! are created and shown once, then reused), configuration and user errors, the precedence
//! of `--listen` over `SFTPGATE_LISTEN` over the file, and a host key others can read.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{run, Fixture, Output, Server, SFTP_TIMEOUT, SSH_OPTIONS};

/// Every configuration key: `sftpgate serve --help` must list each with its variable.
const KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "database_url",
    "host_key",
    "auth.password",
    "auth.publickey",
    "auth.ban.max_failures",
    "auth.ban.window",
    "auth.ban.ban_time",
    "timeouts.auth_completed",
    "timeouts.sftp_factory",
    "timeouts.exit",
    "timeouts.request",
    "timeouts.login_grace",
    "timeouts.idle",
    "timeouts.keepalive_interval",
    "timeouts.keepalive_max",
    "timeouts.shutdown_drain",
    "limits.max_connections",
    "limits.max_sessions_per_connection",
    "limits.max_in_flight",
    "limits.max_outstanding",
    "limits.max_handles",
    "limits.max_read",
    "limits.max_write",
];

/// Addresses with an out-of-range port: a server given one fails to start, naming it, without
/// binding anything or looking up a name (TEST-NET addresses can be this machine's own).
const UNBINDABLE: &str = "127.0.0.1:99999";
const UNBINDABLE_TOO: &str = "127.0.0.1:99998";

const TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn help_lists_the_subcommand_flags_and_every_setting() {
    let Some(fx) = Fixture::new() else { return };
    let top = run(fx.sftpgate().arg("--help"), TIMEOUT);
    assert!(top.status.success(), "{}", top.show());
    assert!(top.stdout.contains("serve"), "{}", top.show());
    assert!(top.stdout.contains("--log-format"), "{}", top.show());

    let serve = run(fx.sftpgate().args(["serve", "--help"]), TIMEOUT);
    assert!(serve.status.success(), "{}", serve.show());
    for flag in [
        "--listen",
        "--data-dir",
        "--database-url",
        "--config",
        "--log-format",
    ] {
        assert!(
            serve.stdout.contains(flag),
            "serve --help lacks {flag}\n{}",
            serve.show()
        );
    }
    for key in KEYS {
        let var = format!("SFTPGATE_{}", key.replace('.', "_").to_uppercase());
        assert!(
            serve.stdout.lines().any(|line| {
                let words: Vec<&str> = line.split_whitespace().collect();
                words == [*key, var.as_str()]
            }),
            "serve --help lacks the line `{key}  {var}`\n{}",
            serve.show()
        );
    }
    // Users are managed with the CLI, on the same store.
    assert!(serve.stdout.contains("sftpgate user"), "{}", serve.show());
}

#[test]
fn unknown_flag_is_refused() {
    let Some(fx) = Fixture::new() else { return };
    for args in [&["serve", "--bogus"][..], &["--bogus"], &["bogus"]] {
        let out = run(fx.sftpgate().args(args), TIMEOUT);
        assert_eq!(out.status.code(), Some(2), "{args:?}\n{}", out.show());
        assert!(out.stderr.contains("bogus"), "{args:?}\n{}", out.show());
        assert!(out.stderr.contains("Usage"), "{args:?}\n{}", out.show());
    }
    assert!(
        std::fs::read_dir(fx.data_dir()).unwrap().next().is_none(),
        "nothing is created"
    );
}

#[test]
fn first_start_creates_a_user_and_a_host_key_once() {
    let Some(fx) = Fixture::new() else { return };
    // The invoking user's public keys in ~/.ssh are authorised for the first user too.
    std::fs::create_dir(fx.home().join(".ssh")).unwrap();
    let pub_file = fx.home().join(".ssh/id_ed25519.pub");
    std::fs::write(&pub_file, format!("{}\n", fx.public_key)).unwrap();
    let host_key = fx.data_dir().join("host_ed25519_key");
    let users_file = fx.data_dir().join("sftpgate.db");

    let mut server = start_ok(fx.serve(None));
    let stdout = server.stdout();
    assert!(stdout.contains("created user \"firstuser\""), "{stdout}");
    let password = printed_password(&stdout);
    assert_eq!(password.len(), 20, "{stdout}");
    assert!(
        stdout.contains(&format!("sftp -P {} firstuser@127.0.0.1\n", server.port)),
        "the login line must carry the port actually listened on ({})\n{stdout}",
        server.port
    );
    assert!(stdout.contains(&pub_file.display().to_string()), "{stdout}");
    assert_eq!(mode(&host_key), 0o600, "host key mode");
    assert_eq!(mode(&users_file), 0o600, "user store mode");
    // The store's pages: the file and, while the server runs, its write-ahead log.
    let mut users = std::fs::read(&users_file).unwrap();
    let wal = fx.data_dir().join("sftpgate.db-wal");
    if wal.exists() {
        assert_eq!(mode(&wal), 0o600, "user store log mode");
        users.extend(std::fs::read(&wal).unwrap());
    }
    let contains = |needle: &str| users.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(contains("$argon2id$"), "no password hash in the store");
    assert!(!contains(&password), "the password is stored hashed only");

    // Log in with the printed password, and with the key found in ~/.ssh.
    std::fs::write(fx.local().join("up.txt"), "via password\n").unwrap();
    if let Some(out) = fx.sftp_password(&server, "firstuser", &password, "put up.txt\n") {
        assert!(
            out.status.success(),
            "password login failed\n{}",
            out.show()
        );
        let put = fx.user_root("firstuser").join("up.txt");
        assert_eq!(std::fs::read_to_string(put).unwrap(), "via password\n");
        let wrong = fx
            .sftp_password(&server, "firstuser", "not-the-password", "pwd\n")
            .expect("sshpass is there");
        assert!(
            !wrong.status.success(),
            "a wrong password must not log in\n{}",
            wrong.show()
        );
    }
    let out = fx.sftp(&server, "firstuser", "ls -1\n");
    assert!(out.status.success(), "key login failed\n{}", out.show());

    assert_eq!(server.terminate(TIMEOUT).and_then(|s| s.code()), Some(0));
    let key_bytes = std::fs::read(&host_key).unwrap();
    let users_before = fx.cli_ok(&["user", "show", "firstuser", "--json"]);
    assert_eq!(
        fx.cli_ok(&["user", "list"]).lines().count(),
        2,
        "a header and one user"
    );

    // Second start: same host key, same users, nothing created or shown.
    let mut again = start_ok(fx.serve(None));
    let stdout = again.stdout();
    assert!(!stdout.contains("created user"), "{stdout}");
    assert!(!stdout.contains("password"), "{stdout}");
    assert_eq!(
        std::fs::read(&host_key).unwrap(),
        key_bytes,
        "the host key was replaced"
    );
    assert_eq!(
        fx.cli_ok(&["user", "show", "firstuser", "--json"]),
        users_before,
        "the first user was changed"
    );
    assert_eq!(fx.cli_ok(&["user", "list"]).lines().count(), 2);
    // The client sees the same host key: it is accepted against a known_hosts entry
    // recorded from the first start's key file.
    let known_hosts = fx.path().join("known_hosts");
    let public = run(
        Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(&host_key),
        TIMEOUT,
    );
    assert!(public.status.success(), "{}", public.show());
    std::fs::write(
        &known_hosts,
        format!("[127.0.0.1]:{} {}", again.port, public.stdout),
    )
    .unwrap();
    let out = run(
        Command::new("sftp")
            .current_dir(fx.local())
            .env_remove("SSH_AUTH_SOCK")
            .args(["-F", "/dev/null", "-o", "StrictHostKeyChecking=yes", "-o"])
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .args(["-o", "IdentitiesOnly=yes", "-i"])
            .arg(&fx.key)
            .args([
                "-P",
                &again.port.to_string(),
                "-b",
                "/dev/null",
                "firstuser@127.0.0.1",
            ]),
        SFTP_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "host key changed between starts\n{}",
        out.show()
    );
    assert_eq!(again.terminate(TIMEOUT).and_then(|s| s.code()), Some(0));

    // A host key others can read: refused, saying why and what to do.
    std::fs::set_permissions(&host_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = start_err(fx.serve(None));
    assert!(out.stderr.contains("readable by others"), "{}", out.show());
    assert!(out.stderr.contains("chmod 600"), "{}", out.show());
    assert!(
        out.stderr.contains(&host_key.display().to_string()),
        "{}",
        out.show()
    );
}

#[test]
fn configuration_errors_name_the_culprit() {
    let Some(fx) = Fixture::new() else { return };
    let cases = [
        ("lisen = \"127.0.0.1:0\"\n".to_owned(), &["lisen"][..]),
        (
            "[timeouts]\nsftp_factoryy = \"5s\"\n".to_owned(),
            &["sftp_factoryy"],
        ),
        ("[limits]\nmax_handle = 5\n".to_owned(), &["max_handle"]),
        ("[auth]\npasswd = true\n".to_owned(), &["passwd"]),
        ("[auth.ban]\nmax_failure = 3\n".to_owned(), &["max_failure"]),
        // Users live in the store now: a `[[users]]` table is an unknown key.
        (
            format!(
                "[[users]]\nname = \"alice\"\nauthorized_keys = ['{}']\n",
                fx.public_key
            ),
            &["users"],
        ),
        (
            "[timeouts]\nsftp_factory = \"soon\"\n".to_owned(),
            &["sftp_factory", "soon"],
        ),
    ];
    for (i, (text, names)) in cases.iter().enumerate() {
        let config = fx.write(&format!("bad{i}.toml"), text);
        let out = start_err(fx.serve(Some(&config)));
        for name in *names {
            assert!(
                out.stderr.contains(name),
                "config:\n{text}\nthe error must name {name:?}\n{}",
                out.show()
            );
        }
    }
    // The same for a variable: the message names the setting.
    let mut cmd = fx.serve(None);
    cmd.env("SFTPGATE_TIMEOUTS_SFTP_FACTORY", "soon");
    let out = start_err(cmd);
    assert!(out.stderr.contains("sftp_factory"), "{}", out.show());

    // Bad users, given to the CLI: the error names the user and what is wrong, the exit
    // status is 2, and nothing is written.
    let bad_users: [(&[&str], Option<&str>, &[&str]); 3] = [
        (
            &["user", "add", "alice", "--key", "ssh-ed25519 notbase64 x"],
            None,
            &["alice", "authorized key #1"],
        ),
        (
            &[
                "user",
                "add",
                "bob",
                "--key",
                &fx.public_key,
                "--key",
                "ssh-ed25519",
            ],
            None,
            &["bob", "authorized key #2"],
        ),
        (
            &["user", "add", "carol", "--password-stdin"],
            Some("\n"),
            &["carol", "password"],
        ),
    ];
    for (args, input, names) in bad_users {
        let out = fx.cli_with_input(args, input);
        assert_eq!(out.status.code(), Some(2), "{args:?}\n{}", out.show());
        for name in names {
            assert!(
                out.stderr.contains(name),
                "{args:?}: the error must name {name:?}\n{}",
                out.show()
            );
        }
    }
    let list = fx.cli_ok(&["user", "list"]);
    assert_eq!(list.lines().count(), 1, "only the header:\n{list}");
}

#[test]
fn listen_flag_beats_variable_beats_file() {
    let Some(fx) = Fixture::new() else { return };
    fx.add_user("alice");
    let file = fx.write("listen.toml", &format!("listen = \"{UNBINDABLE}\"\n"));
    let with_listen = |flag: Option<&str>, var: Option<&str>| {
        let mut cmd = fx.sftpgate();
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(fx.data_dir())
            .arg("--config")
            .arg(&file);
        if let Some(addr) = flag {
            cmd.args(["--listen", addr]);
        }
        if let Some(addr) = var {
            cmd.env("SFTPGATE_LISTEN", addr);
        }
        cmd
    };
    // The file alone: its address is used (and cannot be bound).
    let out = start_err(with_listen(None, None));
    assert!(out.stderr.contains(UNBINDABLE), "{}", out.show());
    // The variable beats the file…
    // (The address is checked by the harness: 127.0.0.1 and a real port. Not the exit
    // code: see shutdown.rs, `sigterm_right_after_the_listening_line_is_graceful`.)
    drop(start_ok(with_listen(None, Some("127.0.0.1:0"))));
    // …and is used on its own…
    let out = start_err(with_listen(None, Some(UNBINDABLE_TOO)));
    assert!(out.stderr.contains(UNBINDABLE_TOO), "{}", out.show());
    // …and the flag beats the variable.
    drop(start_ok(with_listen(Some("127.0.0.1:0"), Some(UNBINDABLE))));
}

/// OpenSSH's sshd lets a client try its password again (`NumberOfPasswordPrompts`, 3 by
/// default); one typo must not end the login. The password comes from an SSH_ASKPASS
/// script that answers wrongly once, then rightly.
#[test]
fn a_mistyped_password_can_be_retried() {
    let Some(fx) = Fixture::new() else { return };
    let server = start_ok(fx.serve(None));
    let password = printed_password(&server.stdout());
    std::fs::write(fx.path().join("password"), format!("{password}\n")).unwrap();
    let askpass = fx.write(
        "askpass.sh",
        &format!(
            "#!/bin/sh\n\
             # First prompt: a typo. Later prompts: the password.\n\
             cd '{}' || exit 1\n\
             if [ -e asked ]; then cat password; else : > asked; echo wrong-password; fi\n",
            fx.path().display()
        ),
    );
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = run(
        Command::new("sftp")
            .current_dir(fx.local())
            .env_remove("SSH_AUTH_SOCK")
            .env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .args(SSH_OPTIONS)
            .args(["-o", "BatchMode=no", "-o", "PubkeyAuthentication=no"])
            .args([
                "-o",
                "PreferredAuthentications=password",
                "-o",
                "NumberOfPasswordPrompts=3",
            ])
            .args([
                "-P",
                &server.port.to_string(),
                "-b",
                "/dev/null",
                "firstuser@127.0.0.1",
            ]),
        SFTP_TIMEOUT,
    );
    assert!(
        fx.path().join("asked").exists(),
        "SSH_ASKPASS was not used\n{}",
        out.show()
    );
    assert!(
        out.status.success(),
        "after one wrong password the server no longer offers `password` (russh drops the \
         method on Auth::reject() without proceed_with_methods)\n{}",
        out.show()
    );
}

fn printed_password(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("password:"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no password line in\n{stdout}"))
        .to_owned()
}

fn start_ok(cmd: Command) -> Server {
    Server::start(cmd).unwrap_or_else(|out| panic!("the server did not start\n{}", out.show()))
}

/// Starts a server that must refuse to start: non-zero exit, a message on stderr.
fn start_err(cmd: Command) -> Output {
    match Server::start(cmd) {
        Ok(server) => panic!(
            "the server started (port {}) but must not have\n{}",
            server.port,
            server.stderr()
        ),
        Err(out) => {
            assert!(!out.status.success(), "{}", out.show());
            assert!(out.stderr.contains("Error"), "{}", out.show());
            out
        }
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}
