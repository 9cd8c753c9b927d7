//! The `sftpgate` binary: the command line, logging, and the subcommands.

mod config;
mod host_key;
mod serve;
mod sftp_server;
mod users;

use std::path::PathBuf;

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
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on [config: listen] [default: 127.0.0.1:2222]
    #[arg(long, env = "SFTPGATE_LISTEN", value_name = "ADDR")]
    listen: Option<String>,
    /// Directory for state: host key, users, files [config: data_dir] [default: ./sftpgate-data]
    #[arg(long, env = "SFTPGATE_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Configuration file [default: ./sftpgate.toml if it exists]
    #[arg(long, env = "SFTPGATE_CONFIG", value_name = "FILE")]
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
    help.push_str("Users are [[users]] tables (name, password_hash, authorized_keys, root).\n");
    help
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Command::SftpServer(args) => init_logging(cli.log_format, sftp_server::log_filter(args)),
        Command::Serve(_) => init_logging(cli.log_format, Some("info,russh=warn".into())),
    }
    match cli.command {
        Command::Serve(args) => {
            let config = load_config(&args)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(
                    std::thread::available_parallelism()
                        .map_or(2, |n| n.get())
                        .max(2),
                )
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(serve::serve(config))
        }
        Command::SftpServer(args) => {
            let code = sftp_server::run(args)?;
            std::process::exit(code);
        }
    }
}

fn load_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let implicit = PathBuf::from("sftpgate.toml");
    let path = match &args.config {
        Some(path) => Some(path.clone()),
        None if implicit.exists() => Some(implicit),
        None => None,
    };
    let mut config = Config::load(path.as_deref(), std::env::vars())?;
    if let Some(listen) = &args.listen {
        config.listen.clone_from(listen);
    }
    if let Some(dir) = &args.data_dir {
        config.data_dir.clone_from(dir);
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
