//! The reference provisioner as a program: answers `<prefix>.provision` and
//! `<prefix>.release` by creating and removing `<base-dir>/<allocation_id>`, the stand-in for
//! a container or volume, for walkthroughs and manual tests of a cluster set-up.
//!
//! Run:  cargo run -p sftpgate-nats --example provisioner -- --base-dir /tmp/volumes --delay 2s
//! Then start sftpgate with `[nats]` configured for the same server and prefix.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use sftpgate_nats::{connect, NatsConfig, ProvisionerConfig, ReferenceProvisioner};

/// A reference provisioner for sftpgate over NATS.
#[derive(Debug, Parser)]
struct Args {
    /// NATS server URL.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// Subject prefix, as the server's `nats.subject_prefix`.
    #[arg(long, default_value = "sftpgate")]
    prefix: String,
    /// Where allocation directories are created.
    #[arg(long, default_value = "sftpgate-volumes")]
    base_dir: PathBuf,
    /// How long setting up an allocation takes (`0s`: answer `ready` at once).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    delay: Duration,
    /// Refuse every provision request with this reason.
    #[arg(long)]
    refuse: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let config = NatsConfig {
        servers: vec![args.nats.clone()],
        subject_prefix: args.prefix.clone(),
        connection_name: "sftpgate-provisioner".into(),
        ..NatsConfig::default()
    };
    let client = connect(&config).await?;
    let base_dir = std::path::absolute(&args.base_dir)?;
    let provisioner = ReferenceProvisioner::start(
        client,
        ProvisionerConfig {
            subject_prefix: args.prefix.clone(),
            base_dir: base_dir.clone(),
            delay: args.delay,
            refuse: args.refuse,
            ..ProvisionerConfig::default()
        },
    )
    .await?;
    println!(
        "provisioning {}.provision → {} (delay {}); Ctrl-C stops",
        args.prefix,
        base_dir.display(),
        humantime::format_duration(args.delay)
    );
    tokio::signal::ctrl_c().await?;
    for (id, record) in provisioner.allocations() {
        println!(
            "{id}: user {} provisioned {}× released {}× ({})",
            record.user,
            record.provisions,
            record.releases,
            record.reason.as_deref().unwrap_or("not released")
        );
    }
    Ok(())
}
