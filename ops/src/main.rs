//! `switchctl`: operator CLI for the softswitch.
//!
//! It reads a node's store offline (CDRs, extensions, registrations; works while the
//! node runs), and operates its cluster over the node's admin HTTP API
//! (`cluster status|token|remove-node|leave|transfer-leader`) or offline before it starts (`cluster join|init`).

mod access;
mod apply;
mod backup;
mod client;
mod cluster;
mod config;
mod extension;
mod join;
mod resources;
mod table;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cluster::Output;
use node::store::Store;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "switchctl", version, about = "Operate a softswitch node")]
struct Cli {
    /// The node's admin API (`[admin] listen`; default: the config file's, else
    /// 127.0.0.1:8060).
    #[arg(long, global = true, env = "SWITCHCTL_ADMIN")]
    admin: Option<String>,
    /// The admin API bearer token (default: the config file's, else
    /// ./data/admin-token, the file a node writes on its first start).
    #[arg(long, global = true, env = "SWITCHCTL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The config file (`admin`, `token`, `token_file`); default
    /// ~/.config/switchctl/config.toml when it exists.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// How to print results.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Call detail records.
    Cdr {
        #[command(subcommand)]
        action: CdrAction,
    },
    /// Extensions of the PBX.
    Extensions {
        #[command(subcommand)]
        action: ListAction,
    },
    /// Registered contacts.
    Registrations {
        #[command(subcommand)]
        action: RegistrationsAction,
    },
    /// The node's Raft cluster.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// Manage extensions through the admin API (`--admin`).
    Extension {
        #[command(subcommand)]
        action: ExtensionAction,
    },
    /// Calls in progress, through the admin API.
    Calls {
        #[command(subcommand)]
        action: CallsAction,
    },
    /// The admin API's bearer tokens (admin role).
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Make the PBX what a description file says: the difference is shown, then
    /// applied all at once (operator role).
    Apply(apply::ApplyArgs),
    /// Write a consistent copy of the cluster's state (extensions, registrations,
    /// CDRs, tokens, audit log) to FILE ('-': standard output); admin role.
    Backup {
        /// Where to write it (owner-only: it holds every extension's password).
        file: PathBuf,
    },
    /// Replace the cluster's state with a backup from FILE ('-': standard input); the
    /// cluster's own tokens and calls in progress stay; admin role.
    Restore {
        /// The backup, as `switchctl backup` wrote it.
        file: PathBuf,
    },
    /// Prints a shell completion script: `switchctl completions bash >
    /// /etc/bash_completion.d/switchctl` (also zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Changes made through the admin API, oldest first (admin role).
    Audit {
        /// From this time (RFC 3339) or entry id on.
        #[arg(long)]
        since: Option<String>,
        /// At most this many entries (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Subcommand, Debug)]
enum TokenAction {
    /// Every token's name, role and creation time.
    List,
    /// Create a token; it is printed once, only now.
    Add {
        /// A unique name (letters, digits, '.', '_', '-').
        name: String,
        /// What it may do: read-only (GET), operator (also calls, registrations,
        /// extensions), admin (also tokens and the cluster).
        #[arg(long, value_parser = ["admin", "operator", "read-only"])]
        role: String,
    },
    /// Revoke a token (every member refuses it at once).
    Remove {
        /// Its name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum ExtensionAction {
    /// Extensions with their versions, in number order (passwords are never shown).
    List {
        #[command(flatten)]
        filter: extension::ListFilter,
        #[command(flatten)]
        paging: resources::Paging,
    },
    /// One extension.
    Show {
        /// Its number.
        number: String,
    },
    /// Create an extension.
    Add {
        /// Its number (2 to 15 digits).
        number: String,
        #[command(flatten)]
        fields: extension::Fields,
    },
    /// Change some fields of an extension; the others keep their values.
    Set {
        /// Its number.
        number: String,
        /// The version the change is based on (as `show` printed it); refused if the
        /// extension changed since. Default: the version current now.
        #[arg(long)]
        version: Option<u64>,
        #[command(flatten)]
        fields: extension::Fields,
    },
    /// Delete an extension.
    Remove {
        /// Its number.
        number: String,
        /// Refuse if the extension is no longer at this version.
        #[arg(long)]
        version: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
enum CallsAction {
    /// Calls in progress in the cluster.
    List {
        #[command(flatten)]
        paging: resources::Paging,
    },
    /// Hang a call up (BYE to both sides; the CDR says admin_hangup).
    Hangup {
        /// The caller's Call-ID (as `calls list` shows it).
        call_id: String,
    },
}

#[derive(Subcommand, Debug)]
enum CdrAction {
    /// Offline: every CDR in a node's data dir, one JSON object per line.
    List {
        /// The node's data directory (`node.data_dir`).
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
    },
    /// CDRs matching the filters, through the admin API.
    Query {
        #[command(flatten)]
        filter: resources::CdrFilter,
        #[command(flatten)]
        paging: resources::Paging,
    },
    /// Every matching CDR, as CSV or JSON lines, through the admin API.
    Export {
        /// csv or json.
        #[arg(long, value_enum, default_value_t = resources::ExportFormat::Csv)]
        format: resources::ExportFormat,
        #[command(flatten)]
        filter: resources::CdrFilter,
    },
}

#[derive(Subcommand, Debug)]
enum RegistrationsAction {
    /// Registered contacts: through the admin API, or with --data-dir offline from a
    /// node's data dir (one JSON object per line).
    List {
        /// Read this data directory offline instead of asking the admin API.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Only this extension's contacts.
        #[arg(long)]
        extension: Option<String>,
        #[command(flatten)]
        paging: resources::Paging,
    },
    /// Unregister an extension: every contact, or the one given.
    Remove {
        /// The address of record (extension number).
        aor: String,
        /// Only this contact URI.
        #[arg(long)]
        contact: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterAction {
    /// Members, their roles and replication lag, and the node's progress.
    Status,
    /// Issue a one-time join token (any member; the new node joins through this one).
    Token {
        /// How long the token stays valid: 600, 30s, 10m, 2h, 1d.
        #[arg(long, default_value = "10m", value_parser = cluster::parse_ttl)]
        ttl: Duration,
    },
    /// Take the node that `--admin` names out of the cluster (then stop it; its data
    /// dir no longer belongs to the cluster).
    Leave,
    /// Hand leadership to another voter (then print the new leader).
    TransferLeader {
        /// The voter to lead (as `cluster status` lists it); default: the most caught-up.
        #[arg(long)]
        to: Option<u64>,
    },
    /// Remove a node from the cluster.
    RemoveNode {
        /// The node's id (as `cluster status` lists it).
        id: u64,
    },
    /// Offline: join a node that is not running yet, using a token; then start it.
    Join {
        /// The token from `switchctl cluster token`.
        token: String,
        #[command(flatten)]
        placement: PlacementArgs,
        /// Ask for this node id (the issuer picks one otherwise).
        #[arg(long)]
        node_id: Option<u64>,
    },
    /// Offline: create a new one-node cluster in a data dir (softswitch also does this on
    /// first start when cluster.bootstrap = true).
    Init {
        #[command(flatten)]
        placement: PlacementArgs,
        /// This node's id.
        #[arg(long, default_value_t = 1)]
        node_id: u64,
    },
}

/// Where an offline-enrolled node lives.
#[derive(clap::Args, Debug)]
struct PlacementArgs {
    /// The node's data directory (`node.data_dir`); must be empty.
    #[arg(long)]
    data_dir: PathBuf,
    /// The Raft address peers reach the node at (`cluster.raft_listen`).
    #[arg(long)]
    raft_addr: SocketAddr,
    /// The node's admin API address (`admin.listen`).
    #[arg(long)]
    admin_addr: String,
    /// The node's config file (node.toml), for its Raft timings. Not `--config`: that
    /// names switchctl's own config file, for every subcommand.
    #[arg(long = "node-config")]
    node_config: Option<PathBuf>,
}

impl PlacementArgs {
    fn placement(self) -> join::Placement {
        join::Placement {
            data_dir: self.data_dir,
            raft_addr: self.raft_addr,
            admin_addr: self.admin_addr,
            config: self.node_config,
        }
    }
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

/// Where the admin API is and how to authenticate to it.
struct Target {
    admin: String,
    token: Option<String>,
}

/// Runs one online command against the admin API.
fn online<F: std::future::Future<Output = anyhow::Result<()>>>(
    target: &Target,
    command: impl FnOnce(client::Admin) -> F,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(command(client::Admin::new(
        &target.admin,
        target.token.clone(),
    )))
}

/// `s` percent-encoded for one path segment.
pub fn path_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// `s` encoded as a query value.
pub fn query_value(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The exit code for a failure: 3 not found, 4 conflict, 5 authentication or
/// permission, 1 anything else (clap exits 2 on usage errors itself).
fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<client::ApiError>().map(|a| a.status) {
        Some(404) => 3,
        Some(409) => 4,
        Some(401 | 403) => 5,
        _ => 1,
    }
}

fn run_extension(admin: &Target, output: Output, action: ExtensionAction) -> anyhow::Result<()> {
    online(admin, |admin| async move {
        match action {
            ExtensionAction::List { filter, paging } => {
                extension::list(&admin, &filter, &paging, output).await
            }
            ExtensionAction::Show { number } => extension::show(&admin, &number, output).await,
            ExtensionAction::Add { number, fields } => {
                extension::add(&admin, &number, fields, output).await
            }
            ExtensionAction::Set {
                number,
                version,
                fields,
            } => extension::set(&admin, &number, version, fields, output).await,
            ExtensionAction::Remove { number, version } => {
                extension::remove(&admin, &number, version, output).await
            }
        }
    })
}

fn run_cluster(admin: &Target, output: Output, action: ClusterAction) -> anyhow::Result<()> {
    online(admin, |admin| async move {
        match action {
            ClusterAction::Status => cluster::status(&admin, output).await,
            ClusterAction::Token { ttl } => cluster::token(&admin, ttl, output).await,
            ClusterAction::RemoveNode { id } => cluster::remove(&admin, id, output).await,
            ClusterAction::Leave => cluster::leave(&admin, output).await,
            ClusterAction::TransferLeader { to } => cluster::transfer(&admin, to, output).await,
            ClusterAction::Join {
                token,
                placement,
                node_id,
            } => join::join(&token, node_id, &placement.placement()).await,
            ClusterAction::Init { placement, node_id } => {
                join::init(node_id, &placement.placement()).await
            }
        }
    })
}

fn run_token(admin: &Target, output: Output, action: TokenAction) -> anyhow::Result<()> {
    online(admin, |admin| async move {
        match action {
            TokenAction::List => access::list(&admin, output).await,
            TokenAction::Add { name, role } => access::add(&admin, &name, &role, output).await,
            TokenAction::Remove { name } => access::remove(&admin, &name, output).await,
        }
    })
}

/// Writes the completion script of `shell` for every subcommand and flag.
fn print_completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    use clap::CommandFactory;
    clap_complete::generate(shell, &mut Cli::command(), "switchctl", out);
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        print_completions(shell, &mut std::io::stdout());
        return std::process::ExitCode::SUCCESS;
    }
    let file = match config::load(cli.config.as_deref()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("switchctl: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let target = Target {
        admin: cli
            .admin
            .clone()
            .or_else(|| file.admin.clone())
            .unwrap_or_else(|| config::DEFAULT_ADMIN.to_string()),
        token: config::token(cli.token.clone(), &file, None),
    };
    let output = cli.output;
    let result = match cli.command {
        Command::Cdr {
            action: CdrAction::List { data_dir },
        } => open(&data_dir).and_then(|(s, _t)| print_lines(&s.cdrs()?)),
        Command::Cdr {
            action: CdrAction::Query { filter, paging },
        } => online(&target, |admin| async move {
            resources::cdrs(&admin, &filter, &paging, output).await
        }),
        Command::Cdr {
            action: CdrAction::Export { format, filter },
        } => online(&target, |admin| async move {
            resources::export(&admin, &filter, format).await
        }),
        Command::Extensions {
            action: ListAction::List { data_dir },
        } => open(&data_dir).and_then(|(s, _t)| print_lines(&s.extensions()?)),
        Command::Registrations {
            action:
                RegistrationsAction::List {
                    data_dir: None,
                    extension,
                    paging,
                },
        } => online(&target, |admin| async move {
            resources::registrations(&admin, extension, &paging, output).await
        }),
        Command::Registrations {
            action: RegistrationsAction::Remove { aor, contact },
        } => online(&target, |admin| async move {
            resources::unregister(&admin, &aor, contact, output).await
        }),
        Command::Registrations {
            action:
                RegistrationsAction::List {
                    data_dir: Some(data_dir),
                    ..
                },
        } => open(&data_dir).and_then(|(s, _t)| {
            let rows: Vec<serde_json::Value> = s
                .bindings()?
                .into_iter()
                .map(|(aor, b)| serde_json::json!({ "aor": aor, "binding": b }))
                .collect();
            print_lines(&rows)
        }),
        Command::Cluster { action } => run_cluster(&target, cli.output, action),
        Command::Extension { action } => run_extension(&target, cli.output, action),
        Command::Calls {
            action: CallsAction::List { paging },
        } => online(&target, |admin| async move {
            resources::calls(&admin, &paging, output).await
        }),
        Command::Calls {
            action: CallsAction::Hangup { call_id },
        } => online(&target, |admin| async move {
            resources::hang_up(&admin, &call_id, output).await
        }),
        Command::Token { action } => run_token(&target, cli.output, action),
        Command::Audit { since, limit } => online(&target, |admin| async move {
            access::audit(&admin, since.as_deref(), limit, cli.output).await
        }),
        Command::Apply(args) => online(&target, |admin| async move {
            apply::apply(&admin, &args, output).await
        }),
        Command::Backup { file } => online(&target, |admin| async move {
            backup::backup(&admin, &file, output).await
        }),
        Command::Restore { file } => online(&target, |admin| async move {
            backup::restore(&admin, &file, output).await
        }),
        // Answered before the configuration is read.
        Command::Completions { .. } => Ok(()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchctl: {e:#}");
            std::process::ExitCode::from(exit_code(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_takes_the_nodes_config_apart_from_switchctls_own() {
        let cli = Cli::try_parse_from([
            "switchctl",
            "--config",
            "ctl.toml",
            "cluster",
            "join",
            "TOKEN",
            "--data-dir",
            "d",
            "--raft-addr",
            "127.0.0.1:7000",
            "--admin-addr",
            "127.0.0.1:8060",
            "--node-config",
            "node.toml",
        ])
        .unwrap();
        assert_eq!(cli.config, Some(PathBuf::from("ctl.toml")));
        let Command::Cluster {
            action: ClusterAction::Join { placement, .. },
        } = cli.command
        else {
            panic!("not a join: {:?}", cli.command);
        };
        assert_eq!(placement.node_config, Some(PathBuf::from("node.toml")));
    }

    #[test]
    fn completion_scripts_name_the_subcommands() {
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh] {
            let mut out = Vec::new();
            print_completions(shell, &mut out);
            let text = String::from_utf8(out).unwrap();
            for word in ["switchctl", "transfer-leader", "registrations", "--output"] {
                assert!(text.contains(word), "{shell}: {word} missing");
            }
        }
    }
}
