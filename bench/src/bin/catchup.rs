//! Catch-up of a new member on a large replicated state: three members in this process
//! (QUIC with mutual TLS on loopback, synced RocksDB logs, the node's own replicated
//! state) take 1 000 000 bindings in batched entries, snapshot and purge their logs;
//! then a fourth member is added as a learner and we measure how long it takes from the
//! add until its applied index reaches the leader's and it reads every binding.
//!
//! The new member serves Raft through a wrapper that timestamps the InstallSnapshot
//! chunks, and runs the node's state machine with a feed (as a real node does: the
//! install rebuilds the SIP core's in-memory view from the snapshot), so the time is
//! split into: waiting for the first chunk, transfer, install, the log tail after the
//! snapshot, and the final read.
//!
//! Env: CATCHUP_BINDINGS (1000000), CATCHUP_BATCH (128 bindings per entry, as the SIP
//! core commits), CATCHUP_SNAPSHOT_EVERY (1000 entries), CATCHUP_LOGS_KEPT (entries kept
//! after a snapshot, the node's default 1000; the log must be purged past the start, or
//! the learner would not need the snapshot), CATCHUP_CONCURRENCY (8).

use bench::{free_addr, start_cluster, start_member, ClusterMember};
use consensus::rpc::{PeerIdentity, RpcHandler, RpcKind};
use consensus::{Config, Member, RaftHandler, Status};
use node::cluster::{Applied, ReplicatedState};
use node::registrar::Binding;
use node::sip::{Peer, Transport};
use node::store::Command;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The goal for a new member catching up on 1 M bindings.
const GOAL: Duration = Duration::from_secs(10);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Binding `n` of the load: two contacts per extension (a desk phone and a softphone),
/// with the fields a real REGISTER fills (about 230 bytes of JSON plus a 50-byte key).
fn binding(n: u64) -> Command {
    let ext = 1_000_000 + n / 2;
    let host = format!("10.{}.{}.{}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
    let port = 5060 + (n % 2) as u16;
    Command::PutBinding {
        aor: ext.to_string(),
        binding: Binding {
            contact: format!("sip:{ext}@{host}:{port};rinstance={n:08x}"),
            expires_at: 4_000_000_000,
            q: 1.0,
            call_id: format!(
                "{:024x}@{host}",
                n.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 16
            ),
            cseq: 1,
            source: Peer {
                transport: Transport::Udp,
                addr: SocketAddr::new(
                    std::net::Ipv4Addr::new(10, (n >> 16) as u8, (n >> 8) as u8, n as u8).into(),
                    port,
                ),
            },
            user_agent: Some(if n.is_multiple_of(2) {
                "Yealink SIP-T46S 66.86.0.15".into()
            } else {
                "Linphone/5.2.5 (belle-sip/5.2.94)".into()
            }),
        },
    }
}

fn batch(first: u64, len: u64) -> Command {
    Command::Batch((first..first + len).map(binding).collect())
}

/// When the new member's InstallSnapshot chunks arrived and how long the last one took.
#[derive(Default)]
struct Probe {
    first_chunk: Mutex<Option<Instant>>,
    last_chunk_in: Mutex<Option<Instant>>,
    installed: Mutex<Option<Instant>>,
    chunks: AtomicU64,
    bytes: AtomicU64,
}

/// Serves Raft like [`RaftHandler`], timing snapshot chunks on the way.
struct TimedHandler {
    inner: RaftHandler,
    probe: Arc<Probe>,
}

/// True when the encoded InstallSnapshot chunk is the last one
/// (`u32 header_len | header JSON | data`, see the consensus crate's wire format).
fn is_last_chunk(payload: &[u8]) -> bool {
    let Some((len, rest)) = payload.split_first_chunk::<4>() else {
        return false;
    };
    let len = u32::from_be_bytes(*len) as usize;
    rest.get(..len)
        .and_then(|h| serde_json::from_slice::<serde_json::Value>(h).ok())
        .and_then(|v| v["done"].as_bool())
        .unwrap_or(false)
}

impl RpcHandler for TimedHandler {
    async fn handle(
        &self,
        peer: PeerIdentity,
        kind: RpcKind,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        if kind != RpcKind::InstallSnapshot {
            return self.inner.handle(peer, kind, payload).await;
        }
        let now = Instant::now();
        let last = is_last_chunk(&payload);
        self.probe.chunks.fetch_add(1, Ordering::Relaxed);
        self.probe
            .bytes
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
        if let Ok(mut f) = self.probe.first_chunk.lock() {
            f.get_or_insert(now);
        }
        if last {
            if let Ok(mut l) = self.probe.last_chunk_in.lock() {
                *l = Some(now);
            }
        }
        let reply = self.inner.handle(peer, kind, payload).await;
        if last {
            if let Ok(mut i) = self.probe.installed.lock() {
                *i = Some(Instant::now());
            }
        }
        reply
    }
}

/// Waits (bounded) until `cond` holds for `node`'s status.
async fn wait_status(
    node: &ClusterMember,
    what: &str,
    limit: Duration,
    cond: impl Fn(&Status) -> bool,
) -> anyhow::Result<()> {
    let mut w = node.watch();
    let res = tokio::time::timeout(limit, w.wait_for(|s| cond(s)))
        .await
        .map(|r| r.map(drop));
    match res {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => anyhow::bail!("node {} stopped while waiting for {what}", node.id()),
        Err(_) => anyhow::bail!(
            "node {}: no {what} within {limit:?} (status {:?})",
            node.id(),
            node.status()
        ),
    }
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// Bindings in a member's replicated state (keys counted, values not decoded), and one
/// value decoded to check it reads back.
fn count_bindings(db: &rocksdb::DB) -> anyhow::Result<u64> {
    let cf = db
        .cf_handle("bindings")
        .ok_or_else(|| anyhow::anyhow!("no bindings column family"))?;
    let mut n = 0u64;
    let mut it = db.raw_iterator_cf(cf);
    it.seek_to_first();
    if let Some(v) = it.value() {
        serde_json::from_slice::<Binding>(v)?;
    }
    while it.valid() {
        n += 1;
        it.next();
    }
    it.status()?;
    Ok(n)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let total = env_u64("CATCHUP_BINDINGS", 1_000_000);
    let per_entry = env_u64("CATCHUP_BATCH", 128).max(1);
    let snapshot_every = env_u64("CATCHUP_SNAPSHOT_EVERY", 1_000).max(1);
    let concurrency = env_u64("CATCHUP_CONCURRENCY", 8).max(1);
    let logs_kept = env_u64(
        "CATCHUP_LOGS_KEPT",
        Config::default().logs_kept_after_snapshot,
    );
    let config = Config {
        snapshot_every,
        logs_kept_after_snapshot: logs_kept,
        // The learner's catch-up is what we measure: let add_learner wait for it.
        admin_timeout: Duration::from_secs(600),
        ..Config::default()
    };
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let cluster = start_cluster(&dirs, config.clone()).await?;
    let leader = cluster.leader();
    let leader_dir = dirs[(leader.id() - 1) as usize].path().to_path_buf();

    // Record (time, applied, snapshot) on the leader, to time its snapshot builds.
    let trace: Arc<Mutex<Vec<(Instant, u64, u64)>>> = Arc::default();
    let tracer = {
        let (mut w, trace) = (leader.watch(), trace.clone());
        tokio::spawn(async move {
            loop {
                {
                    let s = w.borrow_and_update();
                    let row = (
                        Instant::now(),
                        s.applied.unwrap_or(0),
                        s.snapshot.unwrap_or(0),
                    );
                    if let Ok(mut t) = trace.lock() {
                        t.push(row);
                    }
                }
                if w.changed().await.is_err() {
                    break;
                }
            }
        })
    };

    // 1. Load: `total` bindings in entries of `per_entry`, `concurrency` proposers.
    let entries = total.div_ceil(per_entry);
    let next = Arc::new(AtomicU64::new(0));
    let t_load = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (leader, next) = (leader.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let e = next.fetch_add(1, Ordering::Relaxed);
                    if e >= entries {
                        return Ok::<(), anyhow::Error>(());
                    }
                    let first = e * per_entry;
                    let cmd = batch(first, per_entry.min(total - first));
                    let mut tries = 0;
                    while let Err(err) = leader.propose(cmd.clone()).await {
                        tries += 1;
                        anyhow::ensure!(tries < 5, "entry {e}: {err}");
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let load_s = t_load.elapsed().as_secs_f64();
    let record_bytes = {
        let Command::PutBinding { aor, binding } = binding(total / 2) else {
            anyhow::bail!("binding() makes a PutBinding")
        };
        aor.len() + 1 + binding.contact.len() + serde_json::to_vec(&binding)?.len()
    };
    println!(
        "catchup_load bindings={total} batch={per_entry} entries={entries} \
         bindings_per_s={:.0} record_bytes={record_bytes}",
        total as f64 / load_s
    );

    // 2. Let the last due snapshot finish (none is due once fewer than `snapshot_every`
    //    entries were applied since it) and the log be purged; followers in step.
    anyhow::ensure!(
        entries > snapshot_every + logs_kept,
        "{entries} entries: no log is purged with CATCHUP_SNAPSHOT_EVERY={snapshot_every} \
         and CATCHUP_LOGS_KEPT={logs_kept}"
    );
    wait_status(
        &leader,
        "snapshot and purge",
        Duration::from_secs(120),
        |s| {
            let (a, snap) = (s.applied.unwrap_or(0), s.snapshot.unwrap_or(0));
            s.snapshot.is_some() && s.purged.is_some() && snap + snapshot_every > a
        },
    )
    .await?;
    let target = leader.status().applied.unwrap_or(0);
    for n in &cluster.nodes {
        wait_status(n, "applied in step", Duration::from_secs(120), |s| {
            s.applied.unwrap_or(0) >= target
        })
        .await?;
    }
    let st = leader.status();
    let snap_index = st.snapshot.unwrap_or(0);
    let snap_bytes = std::fs::metadata(leader_dir.join("snapshots").join("current.snap"))
        .map(|m| m.len())
        .unwrap_or(0);
    tracer.abort();
    // The last build: from when the leader applied the snapshot's index to when the
    // snapshot showed up in its status.
    let build_ms = trace.lock().ok().and_then(|t| {
        let shown = t.iter().find(|r| r.2 == snap_index)?.0;
        let applied = t.iter().find(|r| r.1 >= snap_index)?.0;
        Some(ms(shown.saturating_duration_since(applied)))
    });
    println!(
        "catchup_snapshot index={snap_index} bytes={snap_bytes} mib={:.1} build_ms={} \
         log_after_snapshot={} purged_to={} leader_applied={}",
        snap_bytes as f64 / (1 << 20) as f64,
        build_ms.map_or("?".into(), |b| b.to_string()),
        st.last_log.unwrap_or(0).saturating_sub(snap_index),
        st.purged.unwrap_or(0),
        st.applied.unwrap_or(0),
    );

    // 3. A fourth member, as a learner. It runs the node's state machine with a feed,
    //    drained here as the SIP core would.
    let learner_dir = tempfile::tempdir()?;
    let (feed_tx, mut feed_rx) = tokio::sync::mpsc::unbounded_channel();
    let reset: Arc<Mutex<Option<(Instant, usize)>>> = Arc::default();
    let drain = {
        let reset = reset.clone();
        tokio::spawn(async move {
            while let Some(a) = feed_rx.recv().await {
                if let Applied::Reset(state) = a {
                    if let Ok(mut r) = reset.lock() {
                        *r = Some((Instant::now(), state.bindings.len()));
                    }
                }
            }
        })
    };
    let probe = Arc::new(Probe::default());
    let addr = free_addr()?;
    let (learner, server) = start_member(
        &cluster.ca,
        4,
        addr,
        learner_dir.path(),
        ReplicatedState::with_feed(feed_tx),
        config.clone(),
        |inner| TimedHandler {
            inner,
            probe: probe.clone(),
        },
    )
    .await?;
    let member = Member {
        raft_addr: addr,
        admin_addr: String::new(),
    };

    let t0 = Instant::now();
    leader.add_learner(4, member).await?;
    let t_added = t0.elapsed();
    let target = leader.status().applied.unwrap_or(0);
    wait_status(&learner, "catch-up", Duration::from_secs(600), |s| {
        s.applied.unwrap_or(0) >= target
    })
    .await?;
    let t_applied = t0.elapsed();
    let t_read0 = Instant::now();
    let count = learner.read(count_bindings)??;
    let t_read = t_read0.elapsed();
    let t_total = t0.elapsed();
    anyhow::ensure!(
        count == total,
        "the new member reads {count} bindings, not {total}"
    );

    let at = |m: &Mutex<Option<Instant>>| {
        m.lock()
            .ok()
            .and_then(|g| *g)
            .map(|t| t.saturating_duration_since(t0))
    };
    let (first, last_in, installed) = (
        at(&probe.first_chunk),
        at(&probe.last_chunk_in),
        at(&probe.installed),
    );
    let reset = reset.lock().ok().and_then(|g| *g);
    let fmt = |d: Option<Duration>| d.map_or("?".into(), |d| ms(d).to_string());
    let span = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    println!(
        "catchup_phases_ms first_chunk={} transfer={} install={} log_tail={} read={} \
         chunks={} wire_mib={:.1} core_reset_bindings={}",
        fmt(first),
        fmt(span(first, last_in)),
        fmt(span(last_in, installed)),
        fmt(span(installed, Some(t_applied))),
        ms(t_read),
        probe.chunks.load(Ordering::Relaxed),
        probe.bytes.load(Ordering::Relaxed) as f64 / (1 << 20) as f64,
        reset.map_or("?".into(), |(_, n)| n.to_string()),
    );
    println!(
        "catchup_s bindings={total} new_member={:.2} add_learner_returned={:.2} \
         applied={:.2} goal<={} met={}",
        t_total.as_secs_f64(),
        t_added.as_secs_f64(),
        t_applied.as_secs_f64(),
        GOAL.as_secs(),
        if t_total <= GOAL { "yes" } else { "NO" }
    );

    server.shutdown().await;
    if let Ok(l) = Arc::try_unwrap(learner) {
        let _ = l.shutdown().await;
    }
    drain.abort();
    drop(leader);
    cluster.shutdown().await;
    Ok(())
}
