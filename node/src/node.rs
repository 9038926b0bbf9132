//! Starting a node: its state (own store or cluster member), first-start seeding,
//! transports and the SIP core.

use crate::cluster::{ClusterPersist, ReplicatedState};
use crate::config::{MediaBackend, NodeConfig};
use crate::core::{Completion, Core, Feeds, InitialState, Local};
use crate::metrics::Metrics;
use crate::persist::{LocalStore, Persist};
use crate::routing::PbxSeed;
use crate::sip::transport::{TransportConfig, Transports};
use crate::store::{self, Command, Expect, Store};
use anyhow::Context;
use consensus::join::{init_cluster, open_member, JoinError, QuicConsensus, RunningNode};
use media::backend::MediaRelay;
use media::ports::PortRange;
use media::udp::{Relay, RelayConfig, RelayEvent};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// File in the data directory holding the demo extensions' generated passwords.
pub const DEMO_CREDENTIALS: &str = "demo-credentials.txt";

/// File in the data directory holding the first admin API token.
pub const ADMIN_TOKEN: &str = "admin-token";

/// Opens the store under `data_dir/store`, loading the PBX seed on first start.
pub fn open_store(cfg: &NodeConfig) -> anyhow::Result<Store> {
    let dir = &cfg.node.data_dir;
    create_data_dir(cfg)?;
    let store = Store::open(&dir.join("store"))
        .with_context(|| format!("cannot open the store in {}", dir.display()))?;
    if !store.is_seeded()? {
        store.apply_all(&seed_commands(cfg)?)?;
    }
    if store.read(store::tokens)?.is_empty() {
        store.apply(&admin_token_command(cfg)?)?;
    }
    Ok(store)
}

fn create_data_dir(cfg: &NodeConfig) -> anyhow::Result<()> {
    let dir = &cfg.node.data_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))
}

/// The commands that load the PBX seed (or the demo PBX, whose generated passwords
/// are printed once and kept in the data directory).
fn seed_commands(cfg: &NodeConfig) -> anyhow::Result<Vec<Command>> {
    let dir = &cfg.node.data_dir;
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
        .map(|extension| Command::PutExtension {
            extension,
            expect: Expect::Any,
        })
        .collect();
    cmds.push(Command::MarkSeeded);
    Ok(cmds)
}

/// A new `admin` API token for a state that has none (first start): written (mode
/// 0600) to the data dir before it is stored, so that a stored token is never lost.
fn admin_token_command(cfg: &NodeConfig) -> anyhow::Result<Command> {
    let path = cfg.node.data_dir.join(ADMIN_TOKEN);
    let (token, hash) = crate::admin::new_token();
    write_private(&path, &format!("{token}\n"))?;
    println!(
        "First start: admin API token created (role admin), kept in {}; \
         switchctl reads it with --token, SWITCHCTL_TOKEN or its config file.",
        path.display()
    );
    Ok(Command::PutApiToken {
        name: "admin".into(),
        role: store::Role::Admin,
        hash,
        created: crate::calls::cdr::rfc3339(std::time::SystemTime::now()),
    })
}

/// Where the node's state lives: its own store, or the cluster it is a member of.
enum Backing {
    Local(Arc<Store>),
    Cluster {
        member: Arc<QuicConsensus<ReplicatedState>>,
        server: consensus::net::QuicServer,
        /// Kept so that a node holding the CA key can admit new members.
        _enroller: Option<Arc<consensus::join::Enroller>>,
    },
}

impl Backing {
    fn initial_state(&self) -> anyhow::Result<InitialState> {
        let read = |db: &rocksdb::DB| -> Result<InitialState, crate::store::StoreError> {
            Ok(InitialState {
                bindings: store::bindings(db)?,
                extensions: store::extensions(db)?,
            })
        };
        Ok(match self {
            Backing::Local(s) => InitialState {
                bindings: s.bindings()?,
                extensions: s.extensions()?,
            },
            Backing::Cluster { member, .. } => member.read(read)??,
        })
    }

    /// What the core writes through, and where it hears of writes that finish later.
    fn persist(
        &self,
        metrics: &Arc<Metrics>,
    ) -> (
        Box<dyn Persist>,
        Option<mpsc::UnboundedReceiver<Completion>>,
    ) {
        match self {
            Backing::Local(s) => (Box::new(LocalStore(s.clone())), None),
            Backing::Cluster { member, .. } => {
                let (tx, rx) = mpsc::unbounded_channel();
                let persist = ClusterPersist::new(member.clone(), tx).with_metrics(metrics.clone());
                (Box::new(persist), Some(rx))
            }
        }
    }

    async fn shutdown(self) {
        if let Backing::Cluster { member, server, .. } = self {
            server.shutdown().await;
            // Proposals still in flight hold the member briefly; wait for them, bounded.
            let mut member = member;
            for _ in 0..200 {
                match Arc::try_unwrap(member) {
                    Ok(m) => {
                        if let Err(e) = m.shutdown().await {
                            tracing::warn!(error = %e, "cluster member did not stop cleanly");
                        }
                        return;
                    }
                    Err(still) => member = still,
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tracing::warn!("cluster member still in use at shutdown; its log is synced");
        }
    }
}

/// Starts this node's cluster member from its data dir: the member it already is, or
/// (with `cluster.bootstrap`) a new one-node cluster on first start.
async fn start_cluster(cfg: &NodeConfig, app: ReplicatedState) -> anyhow::Result<Backing> {
    create_data_dir(cfg)?;
    let dir = &cfg.node.data_dir;
    let c = &cfg.cluster;
    let config = consensus::Config {
        heartbeat: Duration::from_millis(c.heartbeat_ms),
        election_timeout_min: Duration::from_millis(c.election_timeout_min_ms),
        election_timeout_max: Duration::from_millis(c.election_timeout_max_ms),
        snapshot_every: c.snapshot_every,
        logs_kept_after_snapshot: c.logs_kept_after_snapshot,
        ..consensus::Config::default()
    };
    let running = match open_member(dir, app.clone(), config.clone()).await {
        Ok(r) => r,
        Err(JoinError::NotEnrolled(_)) if c.bootstrap => {
            let r = init_cluster(
                dir,
                cfg.node.id,
                c.raft_listen,
                cfg.admin.listen.to_string(),
                app,
                config,
            )
            .await
            .context("cannot create a one-node cluster")?;
            tracing::info!(node = cfg.node.id, raft = %c.raft_listen, "new cluster created");
            r
        }
        Err(JoinError::NotEnrolled(_)) => anyhow::bail!(
            "{} holds no cluster member and cluster.bootstrap is false: give this node an \
             existing member's data dir, or set cluster.bootstrap = true to start a new cluster",
            dir.display()
        ),
        Err(e) => return Err(e).context("cannot start the cluster member"),
    };
    let RunningNode {
        consensus: member,
        server,
        enroller,
    } = running;
    let member = Arc::new(member);
    seed_cluster(cfg, &member).await?;
    Ok(Backing::Cluster {
        member,
        server,
        _enroller: enroller,
    })
}

/// Loads the PBX seed and the first admin token into the replicated state once, from
/// the leader.
async fn seed_cluster(
    cfg: &NodeConfig,
    member: &QuicConsensus<ReplicatedState>,
) -> anyhow::Result<()> {
    let mut status = member.watch();
    let leader = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(l) = status.borrow().leader {
                return Some(l);
            }
            if status.changed().await.is_err() {
                return None;
            }
        }
    })
    .await
    .ok()
    .flatten();
    if leader != Some(member.id()) {
        return Ok(()); // the leader seeds; this node learns it through replication
    }
    if !member.read(store::is_seeded)?? {
        member
            .propose(Command::Batch(seed_commands(cfg)?))
            .await
            .context("cannot store the PBX seed in the cluster")?;
    }
    if member.read(store::tokens)??.is_empty() {
        member
            .propose(admin_token_command(cfg)?)
            .await
            .context("cannot store the first admin API token in the cluster")?;
    }
    Ok(())
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

/// Starts the media relay (with `[media] enabled`) on the configured backend and a
/// thread handing its session events to the SIP core.
fn start_relay(
    cfg: &NodeConfig,
) -> anyhow::Result<Option<(Arc<MediaRelay>, mpsc::Receiver<RelayEvent>)>> {
    let m = &cfg.media;
    if !m.enabled {
        return Ok(None);
    }
    let pairs = (usize::from(m.port_max) - usize::from(m.port_min)).div_ceil(2);
    // Each call takes two pairs, one per side.
    let max_sessions = (pairs / 2).max(1);
    let ports = PortRange {
        min: m.port_min,
        max: m.port_max,
    };
    let relay: MediaRelay = match m.backend {
        MediaBackend::Udp => Relay::start(RelayConfig {
            bind: m.listen,
            ports,
            threads: m.threads,
            rtp_timeout: Duration::from_secs(m.rtp_timeout_secs),
            max_sessions,
            // Without SO_REUSEPORT a port another process (another node on the same host)
            // holds is skipped, instead of that process getting half of the traffic.
            reuse_port: false,
            // Every member binds the VIP's ports; only the holder receives on them.
            freebind: cfg.vip.enabled(),
            kernel_forwarding: m
                .kernel_program
                .as_ref()
                .filter(|_| m.kernel_forwarding)
                .map(|program| media::kernel::KernelForwarding {
                    interface: m.kernel_interface.clone(),
                    program: program.clone(),
                }),
            ..RelayConfig::default()
        })
        .context("cannot start the media relay")?
        .into(),
        MediaBackend::Dpdk => start_dpdk(m, ports, max_sessions)?,
    };
    let relay = Arc::new(relay);
    tracing::info!(
        backend = relay.backend(),
        listen = %relay.sdp_address().unwrap_or(m.listen),
        ports = format!("{}-{}", m.port_min, m.port_max),
        "media relay started"
    );
    // The relay's event queue blocks; the core must not, so a thread carries events over.
    let (tx, rx) = mpsc::channel(1024);
    let events = relay.clone();
    std::thread::Builder::new()
        .name("media-events".into())
        .spawn(move || loop {
            match events.next_event(Duration::from_millis(500)) {
                Some(e) if tx.blocking_send(e).is_err() => return,
                None if tx.is_closed() => return,
                _ => {}
            }
        })
        .context("cannot start the media event thread")?;
    Ok(Some((relay, rx)))
}

/// Starts the DPDK backend from `[media.dpdk]` (validated by the configuration).
#[cfg(feature = "dpdk")]
fn start_dpdk(
    m: &crate::config::MediaSection,
    ports: PortRange,
    max_sessions: usize,
) -> anyhow::Result<MediaRelay> {
    use media::dpdk::{DpdkConfig, DpdkRelay};
    let d = &m.dpdk;
    let relay = DpdkRelay::start(DpdkConfig {
        eal_args: d.eal_args.clone(),
        port: d.port,
        address: d
            .address
            .context("field `media.dpdk.address` is required with the dpdk backend")?,
        prefix_len: d.prefix_len,
        gateway: d.gateway,
        mac: d.mac.as_deref().and_then(crate::config::parse_mac),
        ports,
        rtp_timeout: Duration::from_secs(m.rtp_timeout_secs),
        max_sessions,
        idle_sleep: Duration::from_micros(d.idle_sleep_us),
        cpu: d.cpu,
        ..DpdkConfig::default()
    })
    .context("cannot start the DPDK media relay")?;
    Ok(relay.into())
}

/// Without the `dpdk` feature the configuration refuses this backend before here.
#[cfg(not(feature = "dpdk"))]
fn start_dpdk(
    _m: &crate::config::MediaSection,
    _ports: PortRange,
    _max_sessions: usize,
) -> anyhow::Result<MediaRelay> {
    anyhow::bail!(
        "invalid configuration: field `media.backend`: \"dpdk\" needs a softswitch built with the `dpdk` feature"
    )
}

/// What the SIP core's thread starts from.
struct CoreStart {
    cfg: NodeConfig,
    state: InitialState,
    persist: Box<dyn Persist>,
    feeds: Feeds,
    relay: Option<Arc<MediaRelay>>,
    cluster: Option<tokio::sync::watch::Receiver<consensus::Status>>,
    metrics: Arc<Metrics>,
    /// Open while this node holds the VIP its listeners are bound to.
    send_gate: Option<Arc<AtomicBool>>,
}

/// Starts the SIP core on a thread of its own with a single-threaded runtime, which also
/// owns the SIP sockets: a datagram's readiness wakes the core directly instead of a
/// worker thread that then wakes it (two context switches per wake-up, the largest
/// item of a call's cost). Returns when the listeners are open (or failed to open) and
/// when the core has ended.
fn spawn_core(
    start: CoreStart,
) -> anyhow::Result<(
    tokio::sync::oneshot::Receiver<anyhow::Result<()>>,
    tokio::sync::oneshot::Receiver<()>,
)> {
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the SIP core's runtime")?;
    std::thread::Builder::new()
        .name("sip-core".into())
        .spawn(move || {
            rt.block_on(async move {
                match open_core(start).await {
                    Ok((core, rx, udp, feeds)) => {
                        let _ = started_tx.send(Ok(()));
                        core.run(rx, Some(udp), feeds).await;
                    }
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                    }
                }
            });
            let _ = ended_tx.send(());
        })
        .context("cannot start the SIP core's thread")?;
    Ok((started_rx, ended_rx))
}

/// Opens the SIP listeners (on the calling thread's runtime) and builds the core.
async fn open_core(
    start: CoreStart,
) -> anyhow::Result<(
    Core,
    mpsc::Receiver<crate::sip::transport::Inbound>,
    crate::sip::transport::UdpIngress,
    Feeds,
)> {
    let CoreStart {
        cfg,
        state,
        persist,
        feeds,
        relay,
        cluster,
        metrics,
        send_gate,
    } = start;
    let (tx, rx) = mpsc::channel(cfg.sip.queue_depth);
    let transports = Transports::start(
        TransportConfig {
            udp: cfg.sip.udp.clone(),
            tcp: cfg.sip.tcp.clone(),
            tcp_idle_timeout: Duration::from_secs(cfg.sip.tcp_idle_timeout_secs),
            tcp_max_per_ip: cfg.sip.tcp_max_connections_per_ip,
            tcp_max_total: cfg.sip.tcp_max_connections,
            freebind: cfg.vip.enabled(),
            send_gate: send_gate.clone(),
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
    let mut core = Core::new(&cfg, state, persist, local, Box::new(transports), metrics);
    if let Some(status) = cluster {
        core.follow_cluster(status);
    }
    if let Some(relay) = relay {
        core.anchor_media(relay);
    }
    Ok((core, rx, udp, feeds))
}

/// Runs a node until the process is told to stop.
pub async fn run(cfg: NodeConfig) -> anyhow::Result<()> {
    // Applied changes flow to the core from the moment the member starts: nothing
    // committed before the core runs is missed, it waits in the channel.
    let (applied_tx, applied_rx) = mpsc::unbounded_channel();
    let backing = if cfg.cluster.enabled {
        start_cluster(&cfg, ReplicatedState::with_feed(applied_tx.clone())).await?
    } else {
        Backing::Local(Arc::new(open_store(&cfg)?))
    };
    let metrics = Arc::new(Metrics::default());
    let state = backing.initial_state()?;
    let (persist, written) = backing.persist(&metrics);
    let (relay, media_events) = match start_relay(&cfg)? {
        Some((relay, events)) => (Some(relay), Some(events)),
        None => (None, None),
    };
    let (stop_core, stop) = tokio::sync::oneshot::channel();
    let (vip, vip_events, send_gate) = match prepare_vip(&cfg, &backing, &metrics)? {
        Some(p) => (Some(p.controller), Some(p.events), Some(p.gate)),
        None => (None, None, None),
    };
    // Bounded: an operator's requests are few; a full queue answers 503.
    let (admin_tx, admin_rx) = mpsc::channel(64);
    let feeds = Feeds {
        written,
        applied: Some(applied_rx),
        media: media_events,
        stop: Some(stop),
        vip: vip_events,
        admin: Some(admin_rx),
    };
    let relay_stats = relay.clone();
    let (core_started, core_ended) = spawn_core(CoreStart {
        cfg: cfg.clone(),
        state,
        persist,
        feeds,
        relay,
        cluster: match &backing {
            Backing::Cluster { member, .. } => Some(member.watch()),
            Backing::Local(_) => None,
        },
        metrics: metrics.clone(),
        send_gate,
    })?;
    core_started
        .await
        .map_err(|_| anyhow::anyhow!("the SIP core thread stopped while starting"))??;
    // Started once the core listens: its first act may be handing the core the calls.
    let vip_task = match (vip, &backing) {
        (Some(controller), Backing::Cluster { member, .. }) => {
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
            let task = tokio::spawn(controller.run(member.watch(), stop_rx));
            Some((stop_tx, task))
        }
        _ => None,
    };
    if cfg.admin.enabled {
        let state = Arc::new(crate::admin::AdminState {
            node_id: cfg.node.id,
            metrics: metrics.clone(),
            started: std::time::Instant::now(),
            relay: relay_stats.clone(),
            enroller: match &backing {
                Backing::Cluster { _enroller, .. } => _enroller.clone(),
                Backing::Local(_) => None,
            },
            data: match &backing {
                Backing::Cluster { member, .. } => {
                    crate::admin::Data::Cluster(Arc::downgrade(member))
                }
                Backing::Local(store) => crate::admin::Data::Local {
                    store: store.clone(),
                    feed: applied_tx,
                },
            },
            core: Some(admin_tx),
            vip: [cfg.vip.address, cfg.vip.address6]
                .into_iter()
                .flatten()
                .map(|a| a.to_string())
                .collect(),
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
            let mut line: Vec<String> = stats
                .snapshot()
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            if let Some(r) = &relay_stats {
                let c = r.counters();
                line.push(format!(
                    "media_sessions={} media_forwarded={} media_dropped={} media_send_failed={} \
                     media_truncated={} media_events_lost={} media_port_pairs_free={} \
                     media_kernel_forwarded={}",
                    c.sessions,
                    c.forwarded,
                    c.dropped,
                    c.send_failed,
                    c.truncated,
                    c.events_lost,
                    r.ports_available(),
                    c.kernel_forwarded
                ));
            }
            tracing::info!("counters {}", line.join(" "));
        }
    });
    let mut core_ended = core_ended;
    tokio::select! {
        _ = &mut core_ended => {}
        _ = shutdown_signal() => {
            tracing::info!("stopping");
            // The core starts the writes it was still coalescing (CDRs, call records).
            let _ = stop_core.send(());
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut core_ended).await;
        }
    }
    if let Some((stop, task)) = vip_task {
        // The address goes before the member stops, so no one finds it on a dead node.
        let _ = stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    backing.shutdown().await;
    Ok(())
}

/// The VIP controller and what the core needs to follow it.
struct VipParts {
    controller: crate::cluster::vip::Controller,
    events: mpsc::UnboundedReceiver<crate::cluster::vip::VipEvent>,
    gate: Arc<AtomicBool>,
}

/// Prepares the VIP controller when `[vip]` is configured (a cluster member's only).
fn prepare_vip(
    cfg: &NodeConfig,
    backing: &Backing,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Option<VipParts>> {
    use crate::cluster::vip::{Controller, Vip};
    if !cfg.vip.enabled() {
        return Ok(None);
    }
    let Backing::Cluster { member, .. } = backing else {
        anyhow::bail!("invalid configuration: field `vip.address`: needs cluster.enabled");
    };
    let vip = Vip::new(&cfg.vip).with_context(|| {
        format!(
            "invalid configuration: field `vip.interface`: cannot use {:?}",
            cfg.vip.interface
        )
    })?;
    let (core, events) = mpsc::unbounded_channel();
    let gate = Arc::new(AtomicBool::new(false));
    // Weak: the member must be free to stop while the controller lingers.
    let state = Arc::downgrade(member);
    let controller = Controller {
        vip,
        gate: gate.clone(),
        core,
        read_calls: Box::new(move || {
            let Some(m) = state.upgrade() else {
                return Vec::new();
            };
            let read = m
                .read(store::calls)
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            read.unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot read the replicated calls");
                Vec::new()
            })
        }),
        metrics: metrics.clone(),
        on_switchover: {
            let notifier = crate::notify::Notifier::new(&cfg.notify, metrics.clone());
            Box::new(move |ev| notifier.announce(ev))
        },
    };
    Ok(Some(VipParts {
        controller,
        events,
        gate,
    }))
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
