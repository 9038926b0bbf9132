//! `softswitch`: one member of the softswitch cluster.

use clap::Parser;
use node::config::NodeConfig;
use std::path::PathBuf;

// jemalloc (Debian's, linked statically) keeps allocation cheap and fragmentation low
// under the many small, short-lived SIP allocations.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Command line of the node.
#[derive(Parser, Debug)]
#[command(
    name = "softswitch",
    version,
    about = "Clustered SIP softswitch and IP PBX node"
)]
struct Cli {
    /// Node configuration (TOML). Without it the embedded defaults are used: SIP on
    /// UDP and TCP 5060 on all addresses, data in ./data, a demo PBX.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let cfg = match &cli.config {
        Some(p) => NodeConfig::load(p),
        None => Ok(NodeConfig::default()),
    };
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            eprintln!("softswitch: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if cli.check {
        println!("configuration OK");
        return std::process::ExitCode::SUCCESS;
    }
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| cfg.log.level.clone());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("softswitch")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("softswitch: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(node::node::run(cfg)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("softswitch: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
