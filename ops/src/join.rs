//! `switchctl cluster join|init`: offline steps that give a node that is not running
//! yet its cluster identity in its data dir; `softswitch` then reopens it.

use anyhow::Context;
use consensus::join::{init_cluster, join_cluster, JoinToken};
use node::cluster::ReplicatedState;
use node::config::NodeConfig;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the new member lives and how it is reached.
pub struct Placement {
    /// The node's data directory (`node.data_dir`).
    pub data_dir: PathBuf,
    /// Its Raft address as peers dial it (`cluster.raft_listen`).
    pub raft_addr: SocketAddr,
    /// Its admin API address (`admin.listen`).
    pub admin_addr: String,
    /// The node's config file, for the Raft timings; defaults otherwise.
    pub config: Option<PathBuf>,
}

/// The Raft settings the node itself will run with, so the join behaves alike.
fn consensus_config(path: Option<&Path>) -> anyhow::Result<consensus::Config> {
    let cfg = match path {
        Some(p) => NodeConfig::load(p).with_context(|| format!("cannot load {}", p.display()))?,
        None => NodeConfig::default(),
    };
    let c = &cfg.cluster;
    Ok(consensus::Config {
        heartbeat: Duration::from_millis(c.heartbeat_ms),
        election_timeout_min: Duration::from_millis(c.election_timeout_min_ms),
        election_timeout_max: Duration::from_millis(c.election_timeout_max_ms),
        snapshot_every: c.snapshot_every,
        ..consensus::Config::default()
    })
}

fn next_steps(p: &Placement) -> String {
    format!(
        "Start softswitch with node.data_dir = \"{}\", cluster.raft_listen = \"{}\" and \
         admin.listen = \"{}\"; it reopens this member.",
        p.data_dir.display(),
        p.raft_addr,
        p.admin_addr
    )
}

/// Joins the cluster that issued `token`, waits until this node is a voter, then stops.
pub async fn join(token: &str, node_id: Option<u64>, p: &Placement) -> anyhow::Result<()> {
    show_progress();
    let token: JoinToken = token
        .trim()
        .parse()
        .context("that is not a join token; get one with `switchctl cluster token` on a member")?;
    let config = consensus_config(p.config.as_deref())?;
    std::fs::create_dir_all(&p.data_dir)
        .with_context(|| format!("cannot create {}", p.data_dir.display()))?;
    let node = join_cluster(
        &token,
        p.raft_addr,
        p.admin_addr.clone(),
        &p.data_dir,
        ReplicatedState::default(),
        config,
        node_id,
    )
    .await
    .context("joining the cluster failed")?;
    let id = node.id();
    node.shutdown()
        .await
        .context("joined, but the member did not stop cleanly; start softswitch anyway")?;
    println!("Joined as node {id} (a voter).\n{}", next_steps(p));
    Ok(())
}

/// Creates a new one-node cluster in the data dir, then stops.
pub async fn init(node_id: u64, p: &Placement) -> anyhow::Result<()> {
    show_progress();
    let config = consensus_config(p.config.as_deref())?;
    std::fs::create_dir_all(&p.data_dir)
        .with_context(|| format!("cannot create {}", p.data_dir.display()))?;
    let node = init_cluster(
        &p.data_dir,
        node_id,
        p.raft_addr,
        p.admin_addr.clone(),
        ReplicatedState::default(),
        config,
    )
    .await
    .context("creating the cluster failed")?;
    node.shutdown()
        .await
        .context("created, but the member did not stop cleanly; start softswitch anyway")?;
    println!(
        "Created a one-node cluster with node {node_id}. (softswitch also does this itself on \
         first start when cluster.bootstrap = true.)\n{}",
        next_steps(p)
    );
    Ok(())
}

/// Prints the member's progress on stderr while it enrols and catches up (a join of a
/// large cluster state takes a while: the operator sees the snapshot arrive).
fn show_progress() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,consensus=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .try_init();
}
