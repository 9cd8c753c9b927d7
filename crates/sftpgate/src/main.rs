//! The `sftpgate` binary: the command line, logging, and the subcommands.

mod cli_users;
mod config;
mod host_key;
mod object;
mod serve;
mod sftp_server;
mod store;
mod users;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;

/// sftpgate: an SFTP server built around an async session lifecycle.
#[derive(Debug, Parser)]
#[command(name = "sftpgate", version, about, long_about = None)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "SFTPGATE_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server. With no options it listens on 127.0.0.1:2222, keeps its state in
    /// ./sftpgate-data, and on first start creates a user and prints how to log in.
    #[command(after_long_help = config_help())]
    Serve(ServeArgs),
    /// Speak SFTP on stdin/stdout, as OpenSSH's sftp-server does: for `Subsystem sftp` in
    /// sshd_config or `sftp -D`. Runs as the invoking user, on that user's files or jailed
    /// in --root.
    SftpServer(sftp_server::SftpServerArgs),
    /// Manage users in the store: add, list, show, remove, passwd, enable, disable,
    /// set-expiry, set-root.
    User(cli_users::UserArgs),
    /// Manage users' public keys: add, list, remove.
    Key(cli_users::KeyArgs),
    /// Manage users' permissions per path prefix: set, list, remove.
    Perm(cli_users::PermArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on [config: listen] [default: 127.0.0.1:2222]
    #[arg(long, env = "SFTPGATE_LISTEN", value_name = "ADDR")]
    listen: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
}

/// Where the configuration and the user store are: shared by `serve` and the `user`, `key`
/// and `perm` commands, so that they work on the same store.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Configuration and store")]
pub struct StoreArgs {
    /// Directory for state: host key, the default user store (sftpgate.db), users' files
    /// [config: data_dir] [default: ./sftpgate-data]
    #[arg(long, global = true, env = "SFTPGATE_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The user store: postgres://USER@HOST:PORT/DB (shared by several servers) or
    /// sqlite://PATH [config: database_url] [default: sftpgate.db in the data directory]
    #[arg(
        long,
        global = true,
        env = "SFTPGATE_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
    /// Configuration file [default: ./sftpgate.toml if it exists]
    #[arg(long, global = true, env = "SFTPGATE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

fn config_help() -> String {
    let mut help = String::from(
        "Configuration: every setting can be given in the TOML file, overridden by its \
         environment variable, overridden by a flag. Settings and their variables:\n",
    );
    for key in config::keys() {
        help.push_str(&format!("  {key:<40} {}\n", config::env_var(&key)));
    }
    help.push_str(
        "Users, their keys and permissions live in the user store (database_url; by default \
         sftpgate.db in data_dir), managed with `sftpgate user`, `sftpgate key` and \
         `sftpgate perm` (see their --help).\n",
    );
    help
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match &cli.command {
        Command::SftpServer(args) => init_logging(cli.log_format, sftp_server::log_filter(args)),
        Command::Serve(_) => {
            init_logging(cli.log_format, Some("info,russh=warn,sqlx=warn".into()));
        }
        // Their output is the answer; logs only when RUST_LOG asks.
        Command::User(_) | Command::Key(_) | Command::Perm(_) => {
            init_logging(cli.log_format, None);
        }
    }
    match cli.command {
        Command::Serve(args) => {
            let mut config = load_config(&args.store)?;
            if let Some(listen) = &args.listen {
                config.listen.clone_from(listen);
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(
                    std::thread::available_parallelism()
                        .map_or(2, |n| n.get())
                        .max(2),
                )
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(serve::serve(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::SftpServer(args) => {
            let code = sftp_server::run(args)?;
            std::process::exit(code);
        }
        Command::User(args) => Ok(cli_users::run(cli_users::Admin::User(args))),
        Command::Key(args) => Ok(cli_users::run(cli_users::Admin::Key(args))),
        Command::Perm(args) => Ok(cli_users::run(cli_users::Admin::Perm(args))),
    }
}

/// The configuration: the file (`--config`, or `./sftpgate.toml` if it exists), then the
/// `SFTPGATE_*` variables, then the flags.
fn load_config(args: &StoreArgs) -> anyhow::Result<Config> {
    let implicit = PathBuf::from("sftpgate.toml");
    let path = match &args.config {
        Some(path) => Some(path.clone()),
        None if implicit.exists() => Some(implicit),
        None => None,
    };
    let mut config = Config::load(path.as_deref(), std::env::vars())?;
    if let Some(dir) = &args.data_dir {
        config.data_dir.clone_from(dir);
    }
    if let Some(url) = &args.database_url {
        config.database_url.clone_from(url);
    }
    Ok(config)
}

/// Logs to stderr; `default` is the filter when RUST_LOG is not set (`None`: no logs).
fn init_logging(format: LogFormat, default: Option<String>) {
    use tracing_subscriber::EnvFilter;
    let filter = match (EnvFilter::try_from_default_env(), default) {
        (Ok(filter), _) => filter,
        (Err(_), Some(default)) => EnvFilter::new(default),
        (Err(_), None) => return,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
