//! Starting a node: store, first-start seeding, transports and the SIP core.

use crate::config::NodeConfig;
use crate::core::{Core, InitialState, Local};
use crate::metrics::Metrics;
use crate::persist::LocalStore;
use crate::routing::PbxSeed;
use crate::sip::transport::{TransportConfig, Transports};
use crate::store::{Command, Store};
use anyhow::Context;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// File in the data directory holding the demo extensions' generated passwords.
pub const DEMO_CREDENTIALS: &str = "demo-credentials.txt";

/// Opens the store under `data_dir/store`, loading the PBX seed on first start.
pub fn open_store(cfg: &NodeConfig) -> anyhow::Result<Store> {
    let dir = &cfg.node.data_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let store = Store::open(&dir.join("store"))
        .with_context(|| format!("cannot open the store in {}", dir.display()))?;
    if !store.is_seeded()? {
        let seed = match &cfg.pbx.seed {
            Some(path) => PbxSeed::load(path)?,
            None => {
                let (seed, text) = PbxSeed::demo();
                write_private(&dir.join(DEMO_CREDENTIALS), &text)?;
                println!(
                    "First start: demo PBX created with extensions 1001-1010.\n\
                     Their passwords (also kept in {}):\n{}",
                    dir.join(DEMO_CREDENTIALS).display(),
                    text.lines().skip(1).collect::<Vec<_>>().join("\n")
                );
                seed
            }
        };
        let mut cmds: Vec<Command> = seed
            .extensions
            .into_iter()
            .map(Command::UpsertExtension)
            .collect();
        cmds.push(Command::MarkSeeded);
        store.apply_all(&cmds)?;
    }
    Ok(store)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Runs a node until the process is told to stop.
pub async fn run(cfg: NodeConfig) -> anyhow::Result<()> {
    let store = Arc::new(open_store(&cfg)?);
    let metrics = Arc::new(Metrics::default());
    let (tx, rx) = mpsc::channel(cfg.sip.queue_depth);
    let transports = Transports::start(
        TransportConfig {
            udp: cfg.sip.udp.clone(),
            tcp: cfg.sip.tcp.clone(),
            tcp_idle_timeout: Duration::from_secs(cfg.sip.tcp_idle_timeout_secs),
            tcp_max_per_ip: cfg.sip.tcp_max_connections_per_ip,
            tcp_max_total: cfg.sip.tcp_max_connections,
        },
        tx,
        metrics.clone(),
    )
    .await
    .context("cannot open the SIP listeners")?;
    tracing::info!(udp = ?transports.udp_addrs, tcp = ?transports.tcp_addrs, "SIP listening");
    let local = Local::new(
        &cfg.sip.advertised_host,
        &cfg.sip.user_agent,
        transports.udp_addrs.clone(),
        transports.tcp_addrs.clone(),
    );
    let udp = transports.udp_ingress();
    let state = InitialState {
        bindings: store.bindings()?,
        extensions: store.extensions()?,
    };
    let core = Core::new(
        &cfg,
        state,
        Box::new(LocalStore(store.clone())),
        local,
        Box::new(transports),
        metrics.clone(),
    );
    if cfg.admin.enabled {
        let state = Arc::new(crate::admin::AdminState {
            node_id: cfg.node.id,
            metrics: metrics.clone(),
            started: std::time::Instant::now(),
        });
        let addr = crate::admin::start(cfg.admin.listen, state)
            .await
            .with_context(|| format!("admin listener on {}", cfg.admin.listen))?;
        tracing::info!(%addr, "admin HTTP listening");
    }
    let stats = metrics.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        tick.tick().await;
        loop {
            tick.tick().await;
            let line: Vec<String> = stats
                .snapshot()
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            tracing::info!("counters {}", line.join(" "));
        }
    });
    tokio::select! {
        _ = core.run(rx, Some(udp), None) => {}
        _ = shutdown_signal() => tracing::info!("stopping"),
    }
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
