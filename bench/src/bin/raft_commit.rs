//! Commit latency and throughput of the cluster's replicated state: three members in
//! this process, talking QUIC with mutual TLS over loopback, each with its RocksDB log
//! (synced writes) in a temp dir, applying the node's own commands.
//!
//! Prints, one `key=value` line each: sequential commit latency p50/p99/max of one
//! binding per entry, committed entries per second with concurrent proposers, and
//! bindings per second when each entry carries a batch of 128 (as the SIP core does).

use bench::{start_cluster, ClusterMember};
use consensus::Config;
use node::registrar::Binding;
use node::sip::{Peer, Transport};
use node::store::Command;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn binding(n: u64) -> Command {
    Command::PutBinding {
        aor: format!("{}", 100_000 + n % 20_000),
        binding: Binding {
            contact: format!("sip:{}@10.0.0.1:5060", 100_000 + n % 20_000),
            expires_at: 4_000_000_000,
            q: 1.0,
            call_id: format!("bench-{n}"),
            cseq: 1,
            source: Peer {
                transport: Transport::Udp,
                addr: SocketAddr::from(([10, 0, 0, 1], 5060)),
            },
            user_agent: None,
        },
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs `tasks` proposers for `seconds`, proposer `k` sending `make(k, i)` for
/// i = 0, 1, ...; returns the committed units per second (`per_entry` per entry).
async fn concurrent(
    leader: &Arc<ClusterMember>,
    tasks: u64,
    seconds: u64,
    per_entry: u64,
    make: fn(u64, u64) -> Command,
) -> anyhow::Result<f64> {
    let committed = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let t0 = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|k| {
            let (leader, committed) = (leader.clone(), committed.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while Instant::now() < until {
                    if leader.propose(make(k, i)).await.is_ok() {
                        committed.fetch_add(per_entry, Ordering::Relaxed);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    for h in handles {
        h.await?;
    }
    Ok(committed.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::var("RAFT_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let cluster = start_cluster(&dirs, Config::default()).await?;
    let leader = cluster.leader();

    // 1. Sequential: one proposal at a time, each waits for its commit and apply.
    let mut lat = Vec::new();
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut n = 0u64;
    while Instant::now() < until {
        let t = Instant::now();
        leader.propose(binding(n)).await?;
        lat.push(t.elapsed());
        n += 1;
    }
    lat.sort();
    println!(
        "commit_latency_us p50={} p99={} max={} n={}",
        percentile(&lat, 0.50).as_micros(),
        percentile(&lat, 0.99).as_micros(),
        lat.last().map_or(0, |d| d.as_micros()),
        lat.len()
    );

    // 2. Concurrent proposers, one binding per entry.
    let entries = concurrent(&leader, 64, seconds, 1, |k, i| binding(k * 1_000_000 + i)).await?;
    println!("commits_per_s concurrent=64 entries={entries:.0}");

    // 3. Batches of 128 bindings per entry, as the SIP core commits REGISTERs.
    let bindings = concurrent(&leader, 8, seconds, 128, |k, i| {
        Command::Batch(
            (0..128)
                .map(|j| binding(k * 10_000_000 + i * 128 + j))
                .collect(),
        )
    })
    .await?;
    println!("bindings_per_s batch=128 concurrent=8 bindings={bindings:.0}");

    drop(leader);
    cluster.shutdown().await;
    Ok(())
}
