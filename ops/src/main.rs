//! `switchctl`: operator CLI for the softswitch.
//!
//! This issue gives it read access to a node's store (CDRs, extensions, registrations),
//! which works while the node runs; cluster commands arrive with the consensus issue.

use anyhow::Context;
use clap::{Parser, Subcommand};
use node::store::Store;
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(name = "switchctl", version, about = "Operate a softswitch node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Call detail records.
    Cdr {
        #[command(subcommand)]
        action: ListAction,
    },
    /// Extensions of the PBX.
    Extensions {
        #[command(subcommand)]
        action: ListAction,
    },
    /// Registered contacts.
    Registrations {
        #[command(subcommand)]
        action: ListAction,
    },
}

#[derive(Subcommand, Debug)]
enum ListAction {
    /// Print one JSON object per line.
    List {
        /// The node's data directory (`node.data_dir`).
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
    },
}

fn open(data_dir: &Path) -> anyhow::Result<(Store, tempfile::TempDir)> {
    // A cluster member keeps its state in the replicated state machine's database; a
    // standalone node (`cluster.enabled = false`) in its own store.
    let store_dir = [data_dir.join("raft").join("db"), data_dir.join("store")]
        .into_iter()
        .find(|d| d.join("CURRENT").exists())
        .ok_or_else(|| {
            anyhow::anyhow!("no store in {} (is --data-dir right?)", data_dir.display())
        })?;
    // A secondary instance reads a live primary without taking its lock.
    let scratch = tempfile::tempdir().context("cannot create a scratch directory")?;
    let store = Store::open_secondary(&store_dir, scratch.path())
        .with_context(|| format!("cannot read the store in {}", store_dir.display()))?;
    Ok((store, scratch))
}

fn print_lines<T: serde::Serialize>(items: &[T]) -> anyhow::Result<()> {
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for i in items {
        serde_json::to_writer(&mut out, i)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Cdr {
            action: ListAction::List { data_dir },
        } => open(&data_dir).and_then(|(s, _t)| print_lines(&s.cdrs()?)),
        Command::Extensions {
            action: ListAction::List { data_dir },
        } => open(&data_dir).and_then(|(s, _t)| print_lines(&s.extensions()?)),
        Command::Registrations {
            action: ListAction::List { data_dir },
        } => open(&data_dir).and_then(|(s, _t)| {
            let rows: Vec<serde_json::Value> = s
                .bindings()?
                .into_iter()
                .map(|(aor, b)| serde_json::json!({ "aor": aor, "binding": b }))
                .collect();
            print_lines(&rows)
        }),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
