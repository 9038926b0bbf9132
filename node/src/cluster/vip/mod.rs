//! The virtual IP: held by the Raft leader while it holds its lease, and by no one else.
//!
//! The controller follows the member's [`consensus::Status`]. When this node starts
//! holding the lease it first hands the replicated calls to the SIP core (which opens
//! their relay sessions on the same ports and takes their dialogs over), then adds the
//! address, opens the send gate and announces the move. The moment the lease is gone it
//! removes the address and closes the gate before anything else: a leader cut off from
//! the majority loses its lease before any other member can be elected (followers vote
//! for no one within the lease), so two nodes never answer on the VIP together.

pub mod announce;
pub mod netlink;

use crate::calls::record::CallRecord;
use crate::config::{Cidr, VipSection};
use crate::metrics::Metrics;
use crate::notify::{Switchover, SwitchoverKind};
use announce::Announcer;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// What the SIP core hears of the VIP.
#[derive(Debug)]
pub enum VipEvent {
    /// This node is about to hold the VIP: take over these calls (answered ones keep
    /// going, ringing ones are ended cleanly), then answer on `ack`.
    Acquired {
        /// The replicated records of every live call.
        calls: Vec<CallRecord>,
        /// Answered when the calls are taken over.
        ack: oneshot::Sender<()>,
    },
    /// The address is on this node and its sends go out: announce the switchover
    /// (the `notify.call` alert).
    Holding {
        /// This member's id.
        node: u64,
        /// The Raft term it holds the VIP in.
        term: u64,
    },
    /// This node no longer holds the VIP: another owns the calls now; forget them
    /// without a word on the wire or in the store.
    Released,
}

/// Where the controller reads the replicated calls from.
pub type ReadCalls = Box<dyn Fn() -> Vec<CallRecord> + Send + Sync>;

/// Something told of every switchover (the notifications).
pub type OnSwitchover = Box<dyn Fn(Switchover) + Send + Sync>;

/// The address(es) and how to announce them.
pub struct Vip {
    addrs: Vec<Cidr>,
    /// The addresses as logs and announcements name them.
    label: String,
    ifindex: u32,
    announcer: Arc<Announcer>,
    count: u32,
    interval: Duration,
}

impl Vip {
    /// Looks up the configured interface; fails when it does not exist.
    pub fn new(cfg: &VipSection) -> std::io::Result<Vip> {
        let ifindex = netlink::ifindex(&cfg.interface)?;
        let addrs: Vec<Cidr> = cfg.address.into_iter().chain(cfg.address6).collect();
        let label = addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        Ok(Vip {
            addrs,
            label,
            ifindex,
            announcer: Arc::new(Announcer::new(&cfg.interface, ifindex)?),
            count: cfg.announce_count,
            interval: Duration::from_millis(cfg.announce_interval_ms),
        })
    }

    fn add(&self) -> std::io::Result<()> {
        self.addrs
            .iter()
            .try_for_each(|a| netlink::add(self.ifindex, *a))
    }

    /// Removes every VIP address (also what a restarted node does first: a process
    /// killed while holding it left it behind).
    pub fn remove(&self) {
        for a in &self.addrs {
            if let Err(e) = netlink::remove(self.ifindex, *a) {
                tracing::error!(vip = %a, error = %e, "cannot remove the VIP address");
            }
        }
    }

    /// Announces every address `count` times, `interval` apart; the first at once.
    fn announce(&self) -> tokio::task::JoinHandle<()> {
        let announcer = self.announcer.clone();
        let ips: Vec<_> = self.addrs.iter().map(|a| a.ip).collect();
        let (count, interval) = (self.count, self.interval);
        tokio::spawn(async move {
            for i in 0..count {
                if i > 0 {
                    tokio::time::sleep(interval).await;
                }
                for ip in &ips {
                    if let Err(e) = announcer.announce(*ip) {
                        tracing::warn!(vip = %ip, error = %e, "VIP announcement not sent");
                    }
                }
            }
        })
    }
}

/// What the controller drives.
pub struct Controller {
    /// The address.
    pub vip: Vip,
    /// Open while this node may send from the VIP (the SIP transports check it).
    pub gate: Arc<AtomicBool>,
    /// The SIP core.
    pub core: mpsc::UnboundedSender<VipEvent>,
    /// The replicated calls.
    pub read_calls: ReadCalls,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Told of every switchover.
    pub on_switchover: OnSwitchover,
}

/// Longest wait for this node to apply the log it committed as new leader, and for the
/// core to take the calls over, before the VIP is taken anyway.
const CATCH_UP_LIMIT: Duration = Duration::from_millis(500);
const TAKEOVER_LIMIT: Duration = Duration::from_secs(2);

impl Controller {
    /// Follows `status` until `stop` fires (or the member stops), then lets go of the VIP.
    pub async fn run(
        self,
        mut status: watch::Receiver<consensus::Status>,
        mut stop: oneshot::Receiver<()>,
    ) {
        self.vip.remove();
        self.gate.store(false, Ordering::SeqCst);
        let mut announcing: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            let (want, term, node) = {
                let s = status.borrow_and_update();
                (s.holds_lease(), s.term, s.id)
            };
            let holding = announcing.is_some();
            if want && !holding {
                announcing = self.acquire(&mut status).await;
            } else if !want && holding {
                self.release(announcing.take(), "leadership or lease lost", node, term);
            }
            tokio::select! {
                changed = status.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = &mut stop => break,
            }
        }
        if announcing.is_some() {
            let (node, term) = {
                let s = status.borrow();
                (s.id, s.term)
            };
            self.release(announcing, "node stopping", node, term);
        }
    }

    /// Takes the VIP over; `None` when the lease went away meanwhile.
    async fn acquire(
        &self,
        status: &mut watch::Receiver<consensus::Status>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let started = Instant::now();
        // Everything committed before this term must be applied here before the calls
        // are read: the last answered calls may be in entries this node only now
        // learns are committed.
        let target = status.borrow().last_log;
        let caught_up = tokio::time::timeout(CATCH_UP_LIMIT, async {
            loop {
                let applied = status.borrow_and_update().applied;
                if applied >= target {
                    return;
                }
                if status.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        if caught_up.is_err() {
            tracing::warn!(
                ?target,
                "VIP taken before the log was applied; late calls may be missed"
            );
        }
        let calls = (self.read_calls)();
        let (ack, done) = oneshot::channel();
        let count = calls.len();
        if self.core.send(VipEvent::Acquired { calls, ack }).is_ok() {
            let _ = tokio::time::timeout(TAKEOVER_LIMIT, done).await;
        }
        let (node, term) = {
            let s = status.borrow();
            if !s.holds_lease() {
                drop(s);
                let _ = self.core.send(VipEvent::Released);
                return None;
            }
            (s.id, s.term)
        };
        self.gate.store(true, Ordering::SeqCst);
        if let Err(e) = self.vip.add() {
            tracing::error!(error = %e, vip = %self.vip.label, "cannot add the VIP address");
        }
        let announcing = self.vip.announce();
        let _ = self.core.send(VipEvent::Holding { node, term });
        self.metrics.inc(&self.metrics.vip_acquired);
        self.metrics.vip_held.store(1, Ordering::Relaxed);
        tracing::info!(
            vip = %self.vip.label,
            term,
            calls_taken_over = count,
            ms = started.elapsed().as_millis() as u64,
            "VIP acquired"
        );
        (self.on_switchover)(Switchover::now(
            node,
            &self.vip.label,
            SwitchoverKind::Acquired,
            "leader holding its lease",
            term,
        ));
        Some(announcing)
    }

    fn release(
        &self,
        announcing: Option<tokio::task::JoinHandle<()>>,
        reason: &str,
        node: u64,
        term: u64,
    ) {
        // The address first: from here on nothing reaches this node on the VIP.
        self.vip.remove();
        self.gate.store(false, Ordering::SeqCst);
        if let Some(a) = announcing {
            a.abort();
        }
        let _ = self.core.send(VipEvent::Released);
        self.metrics.inc(&self.metrics.vip_released);
        self.metrics.vip_held.store(0, Ordering::Relaxed);
        tracing::warn!(vip = %self.vip.label, term, reason, "VIP released");
        (self.on_switchover)(Switchover::now(
            node,
            &self.vip.label,
            SwitchoverKind::Released,
            reason,
            term,
        ));
    }
}
