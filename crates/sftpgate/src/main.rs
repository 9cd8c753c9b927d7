//! The `sftpgate` binary: the command line, logging, and the subcommands.

/// mimalloc instead of glibc's malloc: a server that allocates a reply buffer of up to
/// 255 KiB per READ made glibc grow and trim its heap (brk) around nearly every request and
/// fault the pages in again, about a fifth of `sftpgate sftp-server`'s CPU on small files.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod check_config;
mod cli_users;
mod config;
mod health;
mod host_key;
mod logging;
mod metrics;
mod object;
mod serve;
mod sftp_server;
mod store;
mod users;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::logging::LogFormat;

/// sftpgate: an SFTP server built around an async session lifecycle.
#[derive(Debug, Parser)]
#[command(name = "sftpgate", version, about, long_about = None)]
struct Cli {
    /// Log format [config: log_format] [default: text]
    #[arg(long, global = true, value_enum, env = "SFTPGATE_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
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
    /// Check a configuration file without starting anything: prints every error with its
    /// line and column; exit status 0 when it is valid, 1 otherwise.
    CheckConfig(check_config::CheckConfigArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on [config: listen] [default: 127.0.0.1:2222]
    #[arg(long, env = "SFTPGATE_LISTEN", value_name = "ADDR")]
    listen: Option<String>,
    /// Serve Prometheus metrics (/metrics) and health (/health) over HTTP on this address;
    /// port 0 picks one (the bound address is printed). Loopback only unless
    /// metrics.allow_public [config: metrics.listen] [default: off]
    #[arg(long, env = "SFTPGATE_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<String>,
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
    let log_format = cli.log_format.unwrap_or_default();
    match &cli.command {
        Command::SftpServer(args) => logging::init(log_format, sftp_server::log_filter(args)),
        // After its configuration is read: `log_format` may come from the file.
        Command::Serve(_) => {}
        // Their output is the answer; logs only when RUST_LOG asks.
        Command::User(_) | Command::Key(_) | Command::Perm(_) | Command::CheckConfig(_) => {
            logging::init(log_format, None);
        }
    }
    match cli.command {
        Command::Serve(args) => {
            let mut config = load_config(&args.store)?;
            if let Some(listen) = &args.listen {
                config.listen.clone_from(listen);
            }
            if let Some(listen) = &args.metrics_listen {
                config.metrics.listen.clone_from(listen);
            }
            if let Some(format) = cli.log_format {
                config.log_format = format;
            }
            logging::init(config.log_format, Some("info,russh=warn,sqlx=warn".into()));
            // The accept loop, metrics, NATS's background work: little, on two threads.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let connections = sftpgate_server::connection_runtimes(
                config.connection_thread_count(),
                "sftpgate-conn",
                config.idle_spin,
            )
            .context("starting the connection runtimes")?;
            let handles = connections.iter().map(|r| r.handle().clone()).collect();
            let served = runtime.block_on(serve::serve(config, handles));
            // Whatever is left on them ended with the drain: do not wait for it again.
            for connection_runtime in connections {
                connection_runtime.shutdown_background();
            }
            served?;
            Ok(ExitCode::SUCCESS)
        }
        Command::SftpServer(args) => {
            let code = sftp_server::run(args)?;
            std::process::exit(code);
        }
        Command::User(args) => Ok(cli_users::run(cli_users::Admin::User(args))),
        Command::Key(args) => Ok(cli_users::run(cli_users::Admin::Key(args))),
        Command::Perm(args) => Ok(cli_users::run(cli_users::Admin::Perm(args))),
        Command::CheckConfig(args) => Ok(check_config::run(&args)),
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
