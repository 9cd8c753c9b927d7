//! `sftpgate user|key|perm`: the user store from the command line, the same store `serve`
//! uses (`--data-dir`, `--database-url`, `--config` and their variables). Scriptable:
//! passwords from stdin, keys from arguments or files, `--json` listings. Bad input exits 2
//! with a message and writes nothing (every change is one store transaction); a database or
//! IO failure exits 1.

use std::fmt;
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context as _;
use serde::Serialize;
use sftpgate_auth::password::random_password;
use sftpgate_auth::{
    AuthorizedKey, KeyRecord, KeySelector, NewUser, Password, PermissionRule, Permissions, Storage,
    Store, StoreError, UserDetails, UserRecord,
};

use crate::config::Config;
use crate::StoreArgs;

/// Shown after every `--help` of these commands.
const EXIT_CODES: &str = "\
Exit status: 0 on success; 2 for bad input (unknown user, malformed key line, empty \
password, duplicate name, unknown permission, …), in which case nothing was written; \
1 when the store or a file could not be read or written.

The store is the one `sftpgate serve` uses: --database-url (or SFTPGATE_DATABASE_URL, or \
database_url in the config file) if given, otherwise sftpgate.db in --data-dir. Relative \
paths (--data-dir, --root, --key-file) are taken relative to the current directory, and \
roots are stored absolute.";

/// Explains the permission names (the table of the auth crate, in short).
const PERMISSIONS_HELP: &str = "\
Permissions (comma-separated; `all` or `none` also work), on a virtual path prefix and \
everything below it; the longest matching prefix decides:
  list       list directories, see attributes (stat)
  download   read files
  upload     create new files
  overwrite  write to, truncate or replace existing files
  delete     remove files and directories
  rename     rename or move
  mkdir      create directories
  symlink    create symbolic and hard links
  chattr     change mode, owner, times (and size, with overwrite)
A user without any rule has full access to their root. The first rule ends that: from then \
on a path no rule matches allows nothing (set a rule for / as the default).

Changes apply to new sessions at once; running sessions keep the rules they started with.";

/// `sftpgate user …`
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXIT_CODES)]
pub struct UserArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(subcommand)]
    command: UserCommand,
}

#[derive(Debug, clap::Subcommand)]
enum UserCommand {
    /// Add a user: enabled, with full access to their root until a permission rule is set.
    #[command(after_long_help = PERMISSIONS_HELP)]
    Add(AddArgs),
    /// List every user.
    List(JsonArg),
    /// Show a user with their keys and permission rules.
    Show(ShowArgs),
    /// Remove a user with their keys and rules (their files stay where they are).
    Remove(NameArg),
    /// Set, generate or remove a user's password. Without an option, asks on the terminal.
    Passwd(PasswdArgs),
    /// Let a user log in again.
    Enable(NameArg),
    /// Refuse a user's new logins and sessions (running sessions go on).
    Disable(NameArg),
    /// Set when a user's account expires (or `never`).
    SetExpiry(SetExpiryArgs),
    /// Change a user's root directory (for new sessions; files are not moved).
    SetRoot(SetRootArgs),
    /// Put a user's files on object storage (`s3://BUCKET/PREFIX`, on the server's `[s3]`
    /// S3 server) or back on a local directory (for new sessions; files are not moved).
    SetStorage(SetStorageArgs),
}

/// `sftpgate key …`
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXIT_CODES)]
pub struct KeyArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(subcommand)]
    command: KeyCommand,
}

#[derive(Debug, clap::Subcommand)]
enum KeyCommand {
    /// Add public keys to a user: all of them, or none if one is malformed, weak or the
    /// user's already.
    Add(KeyAddArgs),
    /// List a user's keys: position, fingerprint, algorithm, comment.
    List(ShowArgs),
    /// Remove one of a user's keys.
    Remove(KeyRemoveArgs),
}

/// `sftpgate perm …`
#[derive(Debug, clap::Args)]
#[command(after_long_help = format!("{PERMISSIONS_HELP}\n\n{EXIT_CODES}"))]
pub struct PermArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(subcommand)]
    command: PermCommand,
}

#[derive(Debug, clap::Subcommand)]
enum PermCommand {
    /// Set a user's rule for a path prefix, replacing any rule for the same prefix.
    #[command(after_long_help = PERMISSIONS_HELP)]
    Set(PermSetArgs),
    /// List a user's rules, longest prefix first.
    List(ShowArgs),
    /// Remove a user's rule for a path prefix.
    Remove(PermRemoveArgs),
}

#[derive(Debug, clap::Args)]
struct AddArgs {
    /// Login name: 1 to 64 of A-Z a-z 0-9 . _ - @, not starting with -.
    name: String,
    #[command(flatten)]
    keys: KeySources,
    /// Read the password from standard input: its first line, without the line end.
    #[arg(long, conflicts_with = "generate_password")]
    password_stdin: bool,
    /// Generate a password and print it (shown once).
    #[arg(long)]
    generate_password: bool,
    /// Root directory of the user's files, made absolute relative to the current directory;
    /// created (0700) at the first login [default: <data_dir>/files/<NAME>]
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// When the account expires: RFC 3339 in UTC, e.g. 2030-01-31T12:00:00Z (or a date,
    /// 2030-01-31, meaning its midnight UTC).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    expires: Option<SystemTime>,
    /// Add the user disabled (`user enable` lets them in).
    #[arg(long)]
    disabled: bool,
    /// A permission rule, PREFIX=PERMISSIONS, e.g. `--perm /=list,download --perm
    /// /in=list,upload`. Repeatable; without any, the user has full access.
    #[arg(long = "perm", value_name = "PREFIX=PERMISSIONS")]
    perms: Vec<String>,
}

/// Where public keys come from.
#[derive(Debug, clap::Args)]
struct KeySources {
    /// A public key line in `authorized_keys` format, quoted:
    /// "ssh-ed25519 AAAA… comment" (ed25519, ecdsa, or rsa of at least 2048 bits; no
    /// options). Repeatable.
    #[arg(long = "key", value_name = "LINE")]
    keys: Vec<String>,
    /// A file of public key lines, such as ~/.ssh/id_ed25519.pub or an authorized_keys file
    /// (blank lines and # comments are skipped); `-` reads standard input. Repeatable.
    #[arg(long = "key-file", value_name = "FILE")]
    key_files: Vec<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct NameArg {
    /// The user's login name.
    name: String,
}

#[derive(Debug, clap::Args)]
struct JsonArg {
    /// Print JSON (timestamps in RFC 3339, UTC) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct ShowArgs {
    /// The user's login name.
    name: String,
    /// Print JSON (timestamps in RFC 3339, UTC) instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct PasswdArgs {
    /// The user's login name.
    name: String,
    /// Read the new password from standard input: its first line, without the line end.
    #[arg(long, conflicts_with_all = ["generate", "clear"])]
    password_stdin: bool,
    /// Generate a new password and print it (shown once).
    #[arg(long, conflicts_with = "clear")]
    generate: bool,
    /// Remove the password: from then on only the user's keys log them in.
    #[arg(long)]
    clear: bool,
}

#[derive(Debug, clap::Args)]
struct SetExpiryArgs {
    /// The user's login name.
    name: String,
    /// RFC 3339 in UTC (2030-01-31T12:00:00Z), a date (2030-01-31, midnight UTC), or
    /// `never`.
    #[arg(value_name = "TIME|never")]
    when: String,
}

#[derive(Debug, clap::Args)]
struct SetRootArgs {
    /// The user's login name.
    name: String,
    /// The new root directory, made absolute relative to the current directory.
    dir: PathBuf,
}

#[derive(Debug, clap::Args)]
struct SetStorageArgs {
    /// The user's login name.
    name: String,
    /// `s3://BUCKET/PREFIX` (the prefix is the user's root), or a directory, made absolute
    /// relative to the current directory.
    location: String,
}

#[derive(Debug, clap::Args)]
struct KeyAddArgs {
    /// The user's login name.
    name: String,
    #[command(flatten)]
    keys: KeySources,
}

#[derive(Debug, clap::Args)]
struct KeyRemoveArgs {
    /// The user's login name.
    name: String,
    /// Which key: its fingerprint (SHA256:…, as `key list` and `ssh-keygen -l` print it) or
    /// its position (1 or #1, as `key list` numbers them).
    key: String,
}

#[derive(Debug, clap::Args)]
struct PermSetArgs {
    /// The user's login name.
    name: String,
    /// A virtual path prefix, starting with / (the user's root is /).
    prefix: String,
    /// Comma-separated permissions: list, download, upload, overwrite, delete, rename,
    /// mkdir, symlink, chattr; or all, or none.
    permissions: String,
}

#[derive(Debug, clap::Args)]
struct PermRemoveArgs {
    /// The user's login name.
    name: String,
    /// The prefix of the rule to remove.
    prefix: String,
}

/// One of the three command groups.
pub enum Admin {
    /// `user …`
    User(UserArgs),
    /// `key …`
    Key(KeyArgs),
    /// `perm …`
    Perm(PermArgs),
}

/// Runs the command; prints errors (`Error: …`) and returns the exit status.
pub fn run(admin: Admin) -> ExitCode {
    match try_run(admin) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("Error: {err:#}");
            ExitCode::from(exit_code(&err))
        }
    }
}

/// Bad input that the store does not see (a missing key file, an option combination): the
/// command exits 2.
#[derive(Debug)]
struct InputError(String);

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InputError {}

fn input_error(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(InputError(message.into()))
}

/// 2 if the error is about the input, 1 otherwise (database, IO).
fn exit_code(err: &anyhow::Error) -> u8 {
    let input = err.chain().any(|cause| {
        cause.is::<InputError>()
            || cause
                .downcast_ref::<StoreError>()
                .is_some_and(StoreError::is_input_error)
    });
    if input {
        2
    } else {
        1
    }
}

fn try_run(admin: Admin) -> anyhow::Result<()> {
    let store_args = match &admin {
        Admin::User(a) => &a.store,
        Admin::Key(a) => &a.store,
        Admin::Perm(a) => &a.store,
    };
    let config = crate::load_config(store_args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let store = crate::store::open(&config).await?;
        let result = match admin {
            Admin::User(a) => user(&store, &config, a.command).await,
            Admin::Key(a) => key(&store, a.command).await,
            Admin::Perm(a) => perm(&store, a.command).await,
        };
        store.close().await;
        result
    })
}

async fn user(store: &Store, config: &Config, command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Add(args) => add_user(store, config, args).await,
        UserCommand::List(args) => {
            let users = store.users().await?;
            if args.json {
                let out: Vec<UserOut> = users.iter().map(UserOut::from).collect();
                print_json(&out)
            } else {
                print_user_table(&users);
                Ok(())
            }
        }
        UserCommand::Show(args) => {
            let details = store.user(&args.name).await?;
            if args.json {
                print_json(&UserDetailsOut::from(&details))
            } else {
                print_user(&details);
                Ok(())
            }
        }
        UserCommand::Remove(args) => {
            let record = store.user_record(&args.name).await?;
            store.remove_user(&args.name).await?;
            println!(
                "removed user {:?} (their files in {} were left in place)",
                args.name, record.root_dir
            );
            Ok(())
        }
        UserCommand::Passwd(args) => passwd(store, args).await,
        UserCommand::Enable(args) => {
            store.enable_user(&args.name).await?;
            println!("enabled user {:?}", args.name);
            Ok(())
        }
        UserCommand::Disable(args) => {
            store.disable_user(&args.name).await?;
            println!(
                "disabled user {:?}: new logins are refused (running sessions go on)",
                args.name
            );
            Ok(())
        }
        UserCommand::SetExpiry(args) => {
            let when = match args.when.as_str() {
                "never" | "none" => None,
                text => Some(parse_time(text).map_err(input_error)?),
            };
            store.set_expiry(&args.name, when).await?;
            match when {
                None => println!("user {:?} never expires", args.name),
                Some(at) => println!("user {:?} expires at {}", args.name, rfc3339(at)),
            }
            Ok(())
        }
        UserCommand::SetRoot(args) => {
            let root = absolute_utf8(&args.dir, "--root")?;
            store.set_root(&args.name, &root).await?;
            println!("user {:?}: root directory is now {root}", args.name);
            Ok(())
        }
        UserCommand::SetStorage(args) => {
            let (storage, root) = match args.location.strip_prefix("s3://") {
                Some(rest) => {
                    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                    let prefix = prefix.trim_matches('/');
                    if bucket.is_empty() || prefix.is_empty() {
                        return Err(input_error(
                            "object storage needs s3://BUCKET/PREFIX with a non-empty prefix",
                        ));
                    }
                    let bucket = bucket.to_owned();
                    (Storage::ObjectStore { bucket }, prefix.to_owned())
                }
                None => (
                    Storage::Local,
                    absolute_utf8(Path::new(&args.location), "location")?,
                ),
            };
            store.set_storage(&args.name, &storage, &root).await?;
            match &storage {
                Storage::ObjectStore { bucket } => println!(
                    "user {:?}: files are now in s3://{bucket}/{root}",
                    args.name
                ),
                _ => println!("user {:?}: root directory is now {root}", args.name),
            }
            Ok(())
        }
    }
}

async fn add_user(store: &Store, config: &Config, args: AddArgs) -> anyhow::Result<()> {
    let name = args.name;
    // The name first, so that a bad one is named before anything else is looked at.
    sftpgate_auth::check_name(&name)?;
    let root = match &args.root {
        Some(dir) => absolute_utf8(dir, "--root")?,
        None => absolute_utf8(&config.data_dir.join("files").join(&name), "--data-dir")?,
    };
    let keys = collect_keys(&name, &args.keys, args.password_stdin)?;
    let mut permissions = Vec::new();
    for rule in &args.perms {
        let (prefix, flags) = rule.split_once('=').ok_or_else(|| {
            input_error(format!(
                "--perm {rule:?}: expected PREFIX=PERMISSIONS, e.g. /in=list,upload"
            ))
        })?;
        let flags: Permissions = flags.parse().with_context(|| format!("--perm {rule:?}"))?;
        permissions.push((prefix.to_owned(), flags));
    }
    let (password, generated) = if args.password_stdin {
        (Some(read_password_line()?), None)
    } else if args.generate_password {
        let generated = random_password();
        (Some(generated.clone()), Some(generated))
    } else {
        (None, None)
    };
    let mut user = NewUser::new(name.clone(), root);
    user.password = password.map(Password::Plain);
    user.keys = keys;
    user.permissions = permissions;
    user.enabled = !args.disabled;
    user.expires_at = args.expires;
    let record = store
        .add_user(&user)
        .await
        .with_context(|| format!("adding user {name:?}"))?;
    println!(
        "added user {:?}: {} key{}, {}, {}; files in {}",
        record.name,
        record.key_count,
        if record.key_count == 1 { "" } else { "s" },
        if record.has_password {
            "password set"
        } else {
            "no password"
        },
        if record.rule_count == 0 {
            "full access".to_owned()
        } else {
            format!("{} permission rules", record.rule_count)
        },
        record.root_dir
    );
    if let Some(password) = generated {
        println!("password: {password}   (shown once)");
    }
    if !record.has_password && record.key_count == 0 {
        eprintln!(
            "warning: user {:?} has no password and no key, and cannot log in until given \
             one (`sftpgate key add` or `sftpgate user passwd`)",
            record.name
        );
    }
    Ok(())
}

async fn passwd(store: &Store, args: PasswdArgs) -> anyhow::Result<()> {
    // Fail on an unknown name before asking for a password.
    store.user_record(&args.name).await?;
    if args.clear {
        store.clear_password(&args.name).await?;
        println!(
            "removed the password of user {:?}: only their keys log them in",
            args.name
        );
        return Ok(());
    }
    let (password, generated) = if args.password_stdin {
        (read_password_line()?, false)
    } else if args.generate {
        (random_password(), true)
    } else if std::io::stdin().is_terminal() {
        (prompt_password()?, false)
    } else {
        return Err(input_error(
            "standard input is not a terminal: give --password-stdin, --generate or --clear",
        ));
    };
    store
        .set_password(&args.name, &Password::Plain(password.clone()))
        .await?;
    println!("set the password of user {:?}", args.name);
    if generated {
        println!("password: {password}   (shown once)");
    }
    Ok(())
}

async fn key(store: &Store, command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Add(args) => {
            if args.keys.keys.is_empty() && args.keys.key_files.is_empty() {
                return Err(input_error(
                    "give at least one --key LINE or --key-file FILE",
                ));
            }
            let lines = collect_keys(&args.name, &args.keys, false)?;
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            let added = store.add_keys(&args.name, &lines).await?;
            for key in &added {
                println!(
                    "added key {} {} {} to user {:?}",
                    key.fingerprint, key.algorithm, key.comment, args.name
                );
            }
            Ok(())
        }
        KeyCommand::List(args) => {
            let keys = store.keys(&args.name).await?;
            if args.json {
                let out: Vec<KeyOut> = keys.iter().map(KeyOut::from).collect();
                print_json(&out)
            } else {
                for key in &keys {
                    println!("{}", key_line(key));
                }
                Ok(())
            }
        }
        KeyCommand::Remove(args) => {
            let selector: KeySelector = args.key.parse()?;
            let removed = store.remove_key(&args.name, &selector).await?;
            println!(
                "removed key {} {} from user {:?}",
                removed.fingerprint, removed.comment, args.name
            );
            Ok(())
        }
    }
}

async fn perm(store: &Store, command: PermCommand) -> anyhow::Result<()> {
    match command {
        PermCommand::Set(args) => {
            let flags: Permissions = args.permissions.parse()?;
            let rule = store
                .set_permission(&args.name, &args.prefix, flags)
                .await?;
            println!("user {:?}: {} {}", args.name, rule.prefix, rule.permissions);
            Ok(())
        }
        PermCommand::List(args) => {
            let rules = store.permissions(&args.name).await?;
            if args.json {
                let out: Vec<RuleOut> = rules.iter().map(RuleOut::from).collect();
                print_json(&out)
            } else {
                if rules.is_empty() {
                    eprintln!("user {:?} has no rules: full access", args.name);
                }
                print_rules(&rules, "");
                Ok(())
            }
        }
        PermCommand::Remove(args) => {
            store.remove_permission(&args.name, &args.prefix).await?;
            println!("user {:?}: removed the rule for {}", args.name, args.prefix);
            Ok(())
        }
    }
}

/// The key lines of `--key` and `--key-file`, each checked on its own so that an error
/// names the key (`authorized key #2 (FILE line 3)`); the store checks them again when it
/// writes them, all in one transaction.
fn collect_keys(
    user: &str,
    sources: &KeySources,
    stdin_taken: bool,
) -> anyhow::Result<Vec<String>> {
    let mut found: Vec<(String, String)> = Vec::new();
    for line in &sources.keys {
        found.push((line.clone(), "--key".to_owned()));
    }
    let stdin_files = sources
        .key_files
        .iter()
        .filter(|f| f.as_os_str() == "-")
        .count();
    if stdin_files > 1 || (stdin_files == 1 && stdin_taken) {
        return Err(input_error(
            "standard input can be read once: for the password or one --key-file -",
        ));
    }
    for file in &sources.key_files {
        let (text, origin) = if file.as_os_str() == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("reading keys from standard input")?;
            (text, "standard input".to_owned())
        } else {
            let text = std::fs::read_to_string(file)
                .map_err(|e| input_error(format!("reading key file {}: {e}", file.display())))?;
            (text, file.display().to_string())
        };
        let before = found.len();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            found.push((line.to_owned(), format!("{origin} line {}", number + 1)));
        }
        if found.len() == before {
            return Err(input_error(format!("no key lines in {origin}")));
        }
    }
    for (index, (line, origin)) in found.iter().enumerate() {
        AuthorizedKey::parse(line)
            .with_context(|| format!("user {user:?}: authorized key #{} ({origin})", index + 1))?;
    }
    Ok(found.into_iter().map(|(line, _)| line).collect())
}

/// The first line of standard input, without its line end.
fn read_password_line() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let line = line.strip_suffix('\n').unwrap_or(&line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    Ok(line.to_owned())
}

/// Asks twice on the terminal, without echo.
fn prompt_password() -> anyhow::Result<String> {
    let first = prompt_hidden("New password: ")?;
    let second = prompt_hidden("Repeat it: ")?;
    if first != second {
        return Err(input_error("the passwords differ; nothing was changed"));
    }
    Ok(first)
}

fn prompt_hidden(prompt: &str) -> anyhow::Result<String> {
    use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin).context("reading the terminal settings")?;
    let mut silent = saved.clone();
    silent.local_modes.remove(LocalModes::ECHO);
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    tcsetattr(&stdin, OptionalActions::Now, &silent).context("turning echo off")?;
    let line = read_password_line();
    let restored = tcsetattr(&stdin, OptionalActions::Now, &saved);
    eprintln!();
    restored.context("restoring the terminal settings")?;
    line
}

/// `--expires` and `set-expiry`: RFC 3339 in UTC, or a date meaning its midnight UTC.
fn parse_time(text: &str) -> Result<SystemTime, String> {
    let full = if text.len() == "2030-01-31".len() {
        format!("{text}T00:00:00Z")
    } else {
        text.to_owned()
    };
    humantime::parse_rfc3339(&full).map_err(|e| {
        format!(
            "invalid time {text:?} ({e}): use RFC 3339 in UTC, e.g. 2030-01-31T12:00:00Z, or \
             a date, e.g. 2030-01-31"
        )
    })
}

/// `path` made absolute relative to the current directory, as UTF-8 text (what the store
/// keeps).
fn absolute_utf8(path: &Path, what: &str) -> anyhow::Result<String> {
    let absolute =
        std::path::absolute(path).with_context(|| format!("making {} absolute", path.display()))?;
    absolute
        .into_os_string()
        .into_string()
        .map_err(|p| input_error(format!("{what} {}: not UTF-8", Path::new(&p).display())))
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("encoding JSON")?;
    println!("{text}");
    Ok(())
}

/// `active`, `disabled` or `expired`.
fn status(user: &UserRecord) -> &'static str {
    if !user.enabled {
        "disabled"
    } else if user.is_expired_at(SystemTime::now()) {
        "expired"
    } else {
        "active"
    }
}

fn print_user_table(users: &[UserRecord]) {
    let rows: Vec<[String; 7]> = users
        .iter()
        .map(|u| {
            [
                u.name.clone(),
                status(u).to_owned(),
                u.expires_at.map_or_else(|| "never".to_owned(), rfc3339),
                if u.has_password { "yes" } else { "no" }.to_owned(),
                u.key_count.to_string(),
                if u.rule_count == 0 {
                    "all".to_owned()
                } else {
                    u.rule_count.to_string()
                },
                u.root_dir.clone(),
            ]
        })
        .collect();
    let header = [
        "NAME", "STATUS", "EXPIRES", "PASSWORD", "KEYS", "RULES", "ROOT",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: &[&str]| {
        let mut out = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  "));
            }
        }
        println!("{out}");
    };
    line(&header);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
}

fn print_user(details: &UserDetails) {
    let u = &details.user;
    println!("name:        {}", u.name);
    println!("status:      {}", status(u));
    println!(
        "expires:     {}",
        u.expires_at.map_or_else(|| "never".to_owned(), rfc3339)
    );
    println!(
        "password:    {}",
        if u.has_password { "set" } else { "none" }
    );
    println!("root:        {}", u.root_dir);
    println!("storage:     {}", u.storage.kind());
    println!("created:     {}", rfc3339(u.created_at));
    println!("updated:     {}", rfc3339(u.updated_at));
    if details.keys.is_empty() {
        println!("keys:        none");
    } else {
        println!("keys:");
        for key in &details.keys {
            println!("  {}", key_line(key));
        }
    }
    if details.permissions.is_empty() {
        println!("permissions: no rules (full access)");
    } else {
        println!("permissions:");
        print_rules(&details.permissions, "  ");
    }
}

/// One rule a line, prefixes aligned.
fn print_rules(rules: &[PermissionRule], indent: &str) {
    let prefixes: Vec<String> = rules.iter().map(|r| r.prefix.to_string()).collect();
    let width = prefixes.iter().map(String::len).max().unwrap_or(0);
    for (prefix, rule) in prefixes.iter().zip(rules) {
        println!("{indent}{prefix:<width$}  {}", rule.permissions);
    }
}

fn key_line(key: &KeyRecord) -> String {
    format!(
        "#{} {} {} {}",
        key.index, key.fingerprint, key.algorithm, key.comment
    )
    .trim_end()
    .to_owned()
}

/// A user in `user list --json` (and the top level of `user show --json`).
#[derive(Debug, Serialize)]
struct UserOut {
    name: String,
    /// `active`, `disabled` or `expired`.
    status: &'static str,
    enabled: bool,
    expired: bool,
    /// RFC 3339, or null: never.
    expires_at: Option<String>,
    has_password: bool,
    root_dir: String,
    storage: String,
    key_count: u64,
    /// 0: no rules, full access.
    rule_count: u64,
    created_at: String,
    updated_at: String,
}

impl From<&UserRecord> for UserOut {
    fn from(u: &UserRecord) -> Self {
        UserOut {
            name: u.name.clone(),
            status: status(u),
            enabled: u.enabled,
            expired: u.is_expired_at(SystemTime::now()),
            expires_at: u.expires_at.map(rfc3339),
            has_password: u.has_password,
            root_dir: u.root_dir.clone(),
            storage: u.storage.kind().to_owned(),
            key_count: u.key_count,
            rule_count: u.rule_count,
            created_at: rfc3339(u.created_at),
            updated_at: rfc3339(u.updated_at),
        }
    }
}

/// `user show --json`.
#[derive(Debug, Serialize)]
struct UserDetailsOut {
    #[serde(flatten)]
    user: UserOut,
    keys: Vec<KeyOut>,
    permissions: Vec<RuleOut>,
}

impl From<&UserDetails> for UserDetailsOut {
    fn from(d: &UserDetails) -> Self {
        UserDetailsOut {
            user: UserOut::from(&d.user),
            keys: d.keys.iter().map(KeyOut::from).collect(),
            permissions: d.permissions.iter().map(RuleOut::from).collect(),
        }
    }
}

/// A key in `key list --json` and `user show --json`.
#[derive(Debug, Serialize)]
struct KeyOut {
    index: usize,
    fingerprint: String,
    algorithm: String,
    comment: String,
    line: String,
    created_at: String,
}

impl From<&KeyRecord> for KeyOut {
    fn from(k: &KeyRecord) -> Self {
        KeyOut {
            index: k.index,
            fingerprint: k.fingerprint.clone(),
            algorithm: k.algorithm.clone(),
            comment: k.comment.clone(),
            line: k.line.clone(),
            created_at: rfc3339(k.created_at),
        }
    }
}

/// A rule in `perm list --json` and `user show --json`.
#[derive(Debug, Serialize)]
struct RuleOut {
    prefix: String,
    /// The names granted, in a fixed order; empty: nothing.
    permissions: Vec<&'static str>,
}

impl From<&PermissionRule> for RuleOut {
    fn from(r: &PermissionRule) -> Self {
        RuleOut {
            prefix: r.prefix.to_string(),
            permissions: r.permissions.iter().map(Permissions::name).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        let t = parse_time("2030-01-31T12:00:00Z").unwrap();
        assert_eq!(rfc3339(t), "2030-01-31T12:00:00Z");
        assert_eq!(
            rfc3339(parse_time("2030-01-31").unwrap()),
            "2030-01-31T00:00:00Z"
        );
        for bad in ["tomorrow", "2030-01-31T12:00:00+02:00", "31.01.2030", ""] {
            let err = parse_time(bad).unwrap_err();
            assert!(err.contains("RFC 3339"), "{bad}: {err}");
        }
    }

    #[test]
    fn exit_codes() {
        let unknown =
            anyhow::Error::new(StoreError::UnknownUser { name: "x".into() }).context("user show");
        assert_eq!(exit_code(&unknown), 2);
        assert_eq!(exit_code(&input_error("bad")), 2);
        let io = anyhow::Error::new(std::io::Error::other("disk")).context("writing");
        assert_eq!(exit_code(&io), 1);
        let corrupt = anyhow::Error::new(StoreError::Corrupt { what: "x".into() });
        assert_eq!(exit_code(&corrupt), 1);
    }

    #[test]
    fn key_sources_name_the_bad_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(
            &file,
            "# mine\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl a\n\nssh-ed25519 broken\n",
        )
        .unwrap();
        let sources = KeySources {
            keys: vec![],
            key_files: vec![file.clone()],
        };
        let err = collect_keys("alice", &sources, false).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("\"alice\": authorized key #2"), "{text}");
        assert!(text.contains("line 4"), "{text}");
        assert_eq!(exit_code(&err), 2);
        let missing = KeySources {
            keys: vec![],
            key_files: vec![dir.path().join("nope")],
        };
        assert_eq!(
            exit_code(&collect_keys("a", &missing, false).unwrap_err()),
            2
        );
    }
}
