//! The SIP core: one task that owns the transactions, the registrar and the calls.
//!
//! Transports parse in parallel and queue whole messages here; everything that changes
//! state happens on this one task, so no locks are needed around SIP state. The core
//! applies the RFC 3261 §8.2 checks (loop, Max-Forwards, Require, method) and dispatches
//! REGISTER to the registrar and INVITE and in-dialog requests to the calls.

use crate::calls::{Calls, CallsConfig};
use crate::config::NodeConfig;
use crate::metrics::Metrics;
use crate::persist::{Persist, WriteId, WriteResult, Written};
use crate::registrar::Binding;
use crate::registrar::{
    Algorithm, DigestConfig, ExtensionLookup, Limits, Registrar, RegistrarConfig, Verdict,
};
use crate::routing::Directory;
use crate::routing::Extension;
use crate::sip::message::{Method, SipMessage};
use crate::sip::transaction::{Action, TimerConfig, TransactionLayer, TuEvent, TxKey};
use crate::sip::transport::{reply_target, stamp_via, Inbound, Transports, UdpIngress};
use crate::sip::{Peer, Transport};
use crate::store::Command;
use bytes::Bytes;
use rand::Rng;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};

/// Messages handled before timers get a turn: large enough that responses already
/// queued are seen before a retransmission timer fires for them.
const MAX_BATCH: usize = 2048;

/// Datagrams read from the sockets before they are handled: small enough that the
/// first answers leave soon, large enough to fill a few `recvmmsg` calls.
const READ_CHUNK: usize = 64;

/// Held REGISTER answers are released after this many messages at the latest: one
/// store write still covers many registrations, and the answers leave in small bursts
/// that the phones' (or a load generator's) socket buffers absorb.
const COMMIT_EVERY: usize = 128;

/// Writes nobody waits for (call records, CDRs, expiry sweeps) are held back this long,
/// so that the calls of a busy moment share one log entry (one sync, one replication
/// round) instead of taking one each; a waiting REGISTER answer sends them at once.
const WRITE_COALESCE: Duration = Duration::from_millis(5);

/// ... or until this many commands wait.
const WRITE_COALESCE_MAX: usize = 512;

/// A batch or timer pass slower than this is logged: it delays every message behind it.
const SLOW_BATCH: Duration = Duration::from_millis(50);

/// Methods this node implements (the Allow header).
pub const ALLOW: &str =
    "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, INFO, UPDATE, MESSAGE, NOTIFY";
/// Option tags this node supports (none yet; an empty Supported is valid, RFC 3261 §20.37).
pub const SUPPORTED: &str = "";

/// Local addressing: what the node writes into Via, Contact and Call-IDs.
pub struct Local {
    advertised: Option<String>,
    udp_addrs: Vec<SocketAddr>,
    tcp_addrs: Vec<SocketAddr>,
    route_cache: HashMap<IpAddr, IpAddr>,
    /// Every branch this node generates starts with this, so a request that comes back
    /// to us carrying one of our branches is a loop (482).
    pub branch_prefix: String,
    counter: u64,
    /// Server / User-Agent header value.
    pub user_agent: String,
}

impl Local {
    /// Addressing for a node listening on these bound addresses.
    pub fn new(
        advertised_host: &str,
        user_agent: &str,
        udp_addrs: Vec<SocketAddr>,
        tcp_addrs: Vec<SocketAddr>,
    ) -> Local {
        let token: String = rand::thread_rng()
            .sample_iter(&rand::distributions::Alphanumeric)
            .take(8)
            .map(char::from)
            .collect();
        Local {
            advertised: (!advertised_host.is_empty()).then(|| advertised_host.to_string()),
            udp_addrs,
            tcp_addrs,
            route_cache: HashMap::new(),
            branch_prefix: format!("z9hG4bK{token}."),
            counter: 0,
            user_agent: user_agent.to_string(),
        }
    }

    fn addrs(&self, transport: Transport) -> &[SocketAddr] {
        match transport {
            Transport::Udp => &self.udp_addrs,
            Transport::Tcp => &self.tcp_addrs,
        }
    }

    /// The listening IP for this transport and family, if it is a specific one.
    fn bound_ip(&self, transport: Transport, v6: bool) -> Option<IpAddr> {
        self.addrs(transport)
            .iter()
            .find(|a| a.is_ipv6() == v6)
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified())
    }

    /// A fresh unique token (branches, tags, Call-IDs).
    pub fn unique(&mut self) -> String {
        self.counter += 1;
        format!("{:x}{:08x}", self.counter, rand::random::<u32>())
    }

    /// A fresh branch carrying this node's loop-detection prefix.
    pub fn branch(&mut self) -> String {
        let u = self.unique();
        format!("{}{u}", self.branch_prefix)
    }

    /// The host this node is reached at from `peer`.
    pub fn host_for(&mut self, peer: Peer) -> String {
        if let Some(h) = &self.advertised {
            return h.clone();
        }
        let ip = self.source_ip(peer);
        crate::sip::message::format_host(&ip.to_string())
    }

    /// The address `peer` sends media to on this node: the advertised host when it is
    /// an IP address (SDP needs one), else the address `peer` reaches us at.
    pub fn media_ip(&mut self, peer: Peer) -> IpAddr {
        let advertised = self
            .advertised
            .as_deref()
            .and_then(|h| h.trim_matches(['[', ']']).parse().ok());
        advertised.unwrap_or_else(|| self.source_ip(peer))
    }

    /// The listening IP `peer` reaches, or the one the kernel sends from toward it.
    fn source_ip(&mut self, peer: Peer) -> IpAddr {
        match self.bound_ip(peer.transport, peer.addr.is_ipv6()) {
            Some(ip) => ip,
            None => {
                let remote = peer.addr.ip();
                *self
                    .route_cache
                    .entry(remote)
                    .or_insert_with(|| route_source(peer.addr).unwrap_or(remote))
            }
        }
    }

    fn port_for(&self, peer: Peer) -> u16 {
        let v6 = peer.addr.is_ipv6();
        self.addrs(peer.transport)
            .iter()
            .find(|a| a.is_ipv6() == v6)
            .or(self.addrs(peer.transport).first())
            .or(self.udp_addrs.first())
            .map(|a| a.port())
            .unwrap_or(5060)
    }

    /// A Via value for a request to `peer` with this branch.
    pub fn via(&mut self, peer: Peer, branch: &str) -> String {
        let host = self.host_for(peer);
        format!(
            "SIP/2.0/{} {}:{};branch={};rport",
            peer.transport.as_str(),
            host,
            self.port_for(peer),
            branch
        )
    }

    /// A Via value with a fresh branch, for a request to `peer`.
    pub fn new_via(&mut self, peer: Peer) -> String {
        let branch = self.branch();
        self.via(peer, &branch)
    }

    /// Our Contact URI (in `<>`) for a dialog with `peer`, with `user` as its user part.
    pub fn contact(&mut self, user: &str, peer: Peer) -> String {
        let host = self.host_for(peer);
        let port = self.port_for(peer);
        match peer.transport {
            Transport::Udp => format!("<sip:{user}@{host}:{port}>"),
            Transport::Tcp => format!("<sip:{user}@{host}:{port};transport=tcp>"),
        }
    }

    /// Our host for URIs in From/To of requests to `peer`.
    pub fn domain(&mut self, peer: Peer) -> String {
        self.host_for(peer)
    }
}

/// The local address the kernel would send from toward `to`.
fn route_source(to: std::net::SocketAddr) -> Option<IpAddr> {
    let bind: std::net::SocketAddr = if to.is_ipv6() {
        "[::]:0".parse().ok()?
    } else {
        "0.0.0.0:0".parse().ok()?
    };
    let s = std::net::UdpSocket::bind(bind).ok()?;
    s.connect(to).ok()?;
    Some(s.local_addr().ok()?.ip())
}

/// What the calls (and other transaction users) use to act on the SIP side.
pub struct SipCtx<'a> {
    /// The transaction table.
    pub txn: &'a mut TransactionLayer,
    /// Actions produced, executed by the core after the handler returns.
    pub out: &'a mut Vec<Action>,
    /// Local addressing.
    pub local: &'a mut Local,
    /// Changes for the next batched write (CDRs, call records).
    pub writes: &'a mut Vec<Command>,
    /// Counters.
    pub metrics: &'a Metrics,
    /// The time of the event being handled.
    pub now: Instant,
}

impl SipCtx<'_> {
    /// Sends a response on a server transaction.
    pub fn respond(&mut self, key: &TxKey, mut msg: SipMessage) {
        if let (TxKey::Server { method, .. }, Some(code)) = (key, msg.status()) {
            self.metrics.sip.response(method, code);
        }
        msg.headers.push("Server", self.local.user_agent.clone());
        let a = self.txn.respond(key, msg, self.now);
        self.out.extend(a);
    }

    /// Starts a client transaction.
    pub fn request(&mut self, mut msg: SipMessage, to: Peer) -> TxKey {
        msg.headers
            .push("User-Agent", self.local.user_agent.clone());
        let (key, a) = self.txn.request(msg, to, self.now);
        self.out.extend(a);
        key
    }

    /// Sends a message outside any transaction (ACK for a 2xx); returns its wire form.
    pub fn send_raw(&mut self, msg: &SipMessage, to: Peer) -> Bytes {
        let bytes = msg.to_bytes();
        self.out.push(Action::Send {
            bytes: bytes.clone(),
            to,
        });
        bytes
    }

    /// Re-sends bytes already built.
    pub fn resend(&mut self, bytes: Bytes, to: Peer) {
        self.out.push(Action::Send { bytes, to });
    }

    /// Cancels a client INVITE transaction.
    pub fn cancel(&mut self, invite: &TxKey) {
        if let Some((_, a)) = self.txn.cancel(invite, self.now) {
            self.out.extend(a);
        }
    }

    /// Queues a change for the write that ends the current batch of messages (a
    /// failure is counted and logged, never fatal to a call).
    pub fn write(&mut self, cmd: Command) {
        // Every CDR goes through here: the one place to count how calls end.
        if let Command::AppendCdr(cdr) = &cmd {
            self.metrics.on_cdr(cdr);
        }
        self.writes.push(cmd);
    }
}

/// Digest credentials check for requests other than REGISTER (INVITE: 407).
pub enum Identity {
    /// The caller is this extension.
    Extension(String),
    /// Send this challenge response.
    Challenge(SipMessage),
}

impl ExtensionLookup for Directory {
    fn password(&self, user: &str) -> Option<String> {
        self.extension(user).map(|e| e.password.clone())
    }
    fn max_contacts(&self, user: &str) -> Option<usize> {
        self.extension(user).and_then(|e| e.max_contacts)
    }
}

/// Borrows the parts of a [`Core`] a transaction user needs, leaving `calls` free.
macro_rules! ctx {
    ($core:ident, $now:expr) => {
        SipCtx {
            txn: &mut $core.txn,
            out: &mut $core.out,
            local: &mut $core.local,
            writes: &mut $core.pending_writes,
            metrics: &$core.metrics,
            now: $now,
        }
    };
}

/// Where the core puts bytes on the wire: the transports, or a recorder in tests.
pub trait Wire: Send {
    /// Sends bytes to a peer (never blocks; failures are counted by the implementation).
    fn send(&self, to: Peer, bytes: Bytes);

    /// Sends a batch in order and empties it.
    fn send_all(&self, batch: &mut Vec<(Peer, Bytes)>) {
        for (to, bytes) in batch.drain(..) {
            self.send(to, bytes);
        }
    }
}

impl Wire for Transports {
    fn send(&self, to: Peer, bytes: Bytes) {
        Transports::send(self, to, bytes)
    }

    fn send_all(&self, batch: &mut Vec<(Peer, Bytes)>) {
        Transports::send_all(self, batch)
    }
}

/// The SIP core task state.
pub struct Core {
    txn: TransactionLayer,
    registrar: Registrar,
    directory: Directory,
    calls: Calls,
    persist: Box<dyn Persist>,
    /// The last write id handed out.
    next_write: WriteId,
    /// REGISTER answers waiting for a write that has not finished yet.
    waiting: crate::FastMap<WriteId, Vec<Held>>,
    wire: Box<dyn Wire>,
    /// Bytes to send, handed to the wire as one batch by [`Core::commit`] and after
    /// timers fire.
    outbox: Vec<(Peer, Bytes)>,
    metrics: Arc<Metrics>,
    local: Local,
    out: Vec<Action>,
    next_sweep: Option<Instant>,
    /// Changes (bindings, call records, CDRs) waiting for the next batched store write.
    pending_writes: Vec<Command>,
    /// When the oldest of `pending_writes` was queued while nothing waited for it.
    writes_since: Option<Instant>,
    /// REGISTER responses waiting for that write.
    held: Vec<Held>,
    /// New INVITEs and REGISTERs queued longer than this are refused with 503.
    max_queue_delay: Duration,
    /// The cluster this node is a member of, as Raft reports it; None when standalone.
    cluster: Option<watch::Receiver<consensus::Status>>,
    /// The number rung when this node takes the VIP over (`notify.call`).
    alert_number: Option<String>,
    /// The VIP went to another node: this one's calls fire no timers and write nothing.
    suspended: bool,
}

/// What the core hears besides SIP: writes that finished (a cluster member's), and
/// every change applied to the state by others (cluster members, the admin API) that
/// it mirrors in memory.
#[derive(Default)]
pub struct Feeds {
    /// Outcomes of [`Written::Pending`] writes.
    pub written: Option<mpsc::UnboundedReceiver<Completion>>,
    /// Applied binding and extension changes, in log order, and snapshot installs.
    pub applied: Option<mpsc::UnboundedReceiver<crate::cluster::Applied>>,
    /// Events of the media relay's sessions (RTP timeouts).
    pub media: Option<mpsc::Receiver<media::udp::RelayEvent>>,
    /// Fires when the node stops: the core starts its last writes and returns.
    pub stop: Option<tokio::sync::oneshot::Receiver<()>>,
    /// The virtual IP coming to this node (take the calls over) and going.
    pub vip: Option<mpsc::UnboundedReceiver<crate::cluster::vip::VipEvent>>,
    /// What operators ask through the admin API (hang a call up).
    pub admin: Option<mpsc::Receiver<AdminRequest>>,
}

/// A request of the admin API to the SIP core, which alone owns the calls.
#[derive(Debug)]
pub enum AdminRequest {
    /// End the call whose caller's leg has this Call-ID; answers whether this node
    /// had it live.
    HangUp {
        /// Call-ID of the caller's leg.
        call_id: String,
        /// Where the answer goes.
        done: tokio::sync::oneshot::Sender<bool>,
    },
}

/// A REGISTER answer held until its binding is written: the transaction, the 200, and
/// the 500 sent instead if the write fails.
type Held = (TxKey, SipMessage, SipMessage);

/// What the core starts from: the stored (or replicated) state.
#[derive(Debug, Default)]
pub struct InitialState {
    /// Registration bindings with their address of record.
    pub bindings: Vec<(String, Binding)>,
    /// Extensions.
    pub extensions: Vec<Extension>,
}

/// A finished write reported on the completion channel of [`Core::run`].
pub type Completion = (WriteId, WriteResult);

fn binding_command(change: crate::registrar::Change) -> Command {
    match change {
        crate::registrar::Change::Upsert { aor, binding } => Command::PutBinding { aor, binding },
        crate::registrar::Change::Remove { aor, contact } => {
            Command::RemoveBinding { aor, contact }
        }
    }
}

fn unix_now(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Core {
    /// Builds the core from the configuration and the state it starts from; changes
    /// go to `persist`, `local` describes the bound listeners and `wire` sends.
    pub fn new(
        cfg: &NodeConfig,
        state: InitialState,
        persist: Box<dyn Persist>,
        local: Local,
        wire: Box<dyn Wire>,
        metrics: Arc<Metrics>,
    ) -> Core {
        let timers = TimerConfig {
            t1: Duration::from_millis(cfg.sip.t1_ms),
            t2: Duration::from_millis(cfg.sip.t2_ms),
            t4: Duration::from_millis(cfg.sip.t4_ms),
        };
        let algorithms = cfg
            .registrar
            .algorithms
            .iter()
            .filter_map(|a| Algorithm::parse(a))
            .collect();
        let mut registrar = Registrar::new(RegistrarConfig {
            limits: Limits {
                min_expires: cfg.registrar.min_expires,
                max_expires: cfg.registrar.max_expires,
                default_expires: cfg.registrar.default_expires,
            },
            max_contacts: cfg.registrar.max_contacts,
            digest: DigestConfig {
                realm: cfg.registrar.realm.clone(),
                nonce_ttl: Duration::from_secs(cfg.registrar.nonce_ttl_secs),
                algorithms,
                ..DigestConfig::default()
            },
        });
        for (aor, b) in state.bindings {
            registrar.bindings.restore(&aor, b);
        }
        let directory = Directory::new(state.extensions);
        Core {
            txn: TransactionLayer::with_limit(timers, cfg.sip.max_transactions),
            registrar,
            directory,
            calls: Calls::new(CallsConfig {
                ring_timeout: Duration::from_secs(cfg.calls.ring_timeout_secs),
                max_calls: cfg.calls.max_calls,
                node: cfg.node.id,
            }),
            persist,
            next_write: 0,
            waiting: crate::FastMap::default(),
            local,
            wire,
            outbox: Vec::new(),
            metrics,
            out: Vec::new(),
            next_sweep: None,
            pending_writes: Vec::new(),
            writes_since: None,
            held: Vec::new(),
            max_queue_delay: Duration::from_millis(cfg.sip.max_queue_delay_ms),
            cluster: None,
            alert_number: cfg.notify.call.clone(),
            suspended: false,
        }
    }

    /// Makes this core a cluster member's: new work is refused while no leader is known
    /// (including on a leader that lost its lease: cut off from the majority, it cannot
    /// commit), and only the leader holding its lease writes expiry sweeps.
    pub fn follow_cluster(&mut self, status: watch::Receiver<consensus::Status>) {
        self.cluster = Some(status);
    }

    /// True when a change this node proposes can be committed now, as far as it knows:
    /// standalone, or a leader is known (a leader without a valid lease reports none).
    fn can_commit(&self) -> bool {
        self.cluster
            .as_ref()
            .is_none_or(|s| s.borrow().leader.is_some())
    }

    /// True when this node performs the cluster-wide side effects (standalone, or leader).
    fn owns_side_effects(&self) -> bool {
        self.cluster
            .as_ref()
            .is_none_or(|s| s.borrow().holds_lease())
    }

    /// Anchors the media of every new call on `relay`.
    pub fn anchor_media(&mut self, relay: std::sync::Arc<media::backend::MediaRelay>) {
        self.calls.anchor_media(relay);
    }

    /// An event of a call's relay session (an RTP timeout ends the call).
    pub fn on_media_event(&mut self, event: media::udp::RelayEvent, now: Instant) {
        if self.suspended {
            return;
        }
        let mut ctx = ctx!(self, now);
        self.calls.on_media_event(&mut ctx, event);
        self.commit(now);
    }

    /// The virtual IP arrives (continue the cluster's calls here) or leaves (they are
    /// another node's now).
    pub fn on_vip(&mut self, event: crate::cluster::vip::VipEvent, now: Instant) {
        match event {
            crate::cluster::vip::VipEvent::Acquired { calls, ack } => {
                self.suspended = false;
                let mut ctx = ctx!(self, now);
                let done = self.calls.take_over(&mut ctx, calls);
                tracing::info!(
                    continued = done.continued,
                    ended = done.ended,
                    kept = done.kept,
                    dropped = done.dropped,
                    "calls taken over with the VIP"
                );
                self.flush(now);
                self.commit(now);
                let _ = ack.send(());
            }
            crate::cluster::vip::VipEvent::Holding { node, term } => {
                if let Some(number) = self.alert_number.clone() {
                    let contacts = self
                        .registrar
                        .bindings
                        .lookup(&number, unix_now(SystemTime::now()));
                    let what = format!("Switchover: node {node} holds the VIP (term {term})");
                    let mut ctx = ctx!(self, now);
                    self.calls.alerts.ring(&mut ctx, &number, &contacts, &what);
                    self.flush(now);
                    self.commit(now);
                }
            }
            crate::cluster::vip::VipEvent::Released => {
                // Suspended, not forgotten: a lease lost for an instant (a membership
                // change, a stalled host) comes back to the same calls; when another
                // node took them meanwhile, the records tell on the next takeover.
                self.suspended = true;
                self.outbox.clear();
                tracing::info!(
                    calls = self.calls.len(),
                    "VIP gone: calls suspended, left to the new holder"
                );
            }
        }
    }

    /// An operator's request through the admin API.
    pub fn on_admin(&mut self, request: AdminRequest, now: Instant) {
        match request {
            AdminRequest::HangUp { call_id, done } => {
                // A suspended node's calls are the VIP holder's now.
                let found = !self.suspended && {
                    let mut ctx = ctx!(self, now);
                    self.calls.hang_up(&mut ctx, &call_id)
                };
                self.flush(now);
                self.commit(now);
                let _ = done.send(found);
            }
        }
    }

    /// What the replicated state reports: one change, or a whole new state.
    pub fn on_replicated(&mut self, change: crate::cluster::Applied) {
        match change {
            crate::cluster::Applied::Change(cmd) => self.on_applied(cmd),
            crate::cluster::Applied::Reset(state) => self.on_reset(state),
        }
    }

    /// A snapshot replaced the replicated state: rebuild the bindings and the directory.
    pub fn on_reset(&mut self, state: InitialState) {
        self.registrar.bindings = crate::registrar::BindingTable::new();
        for (aor, b) in state.bindings {
            self.registrar.bindings.restore(&aor, b);
        }
        self.directory = Directory::new(state.extensions);
        tracing::info!(
            bindings = self.registrar.bindings.len(),
            extensions = self.directory.len(),
            "state replaced by a snapshot"
        );
    }

    /// A change applied to the replicated state: mirror it in memory. The change may be
    /// this node's own (already in memory: applying it again is harmless) or another
    /// member's.
    pub fn on_applied(&mut self, cmd: Command) {
        match cmd {
            Command::PutBinding { aor, binding } => self.registrar.bindings.restore(&aor, binding),
            Command::RemoveBinding { aor, contact } => {
                self.registrar.bindings.remove(&aor, &contact);
            }
            Command::PutExtension { extension, .. } => self.directory.upsert(extension),
            Command::RemoveExtension { number, .. } => self.directory.remove(&number),
            Command::Batch(inner) | Command::AllOrNothing(inner) => {
                inner.into_iter().for_each(|c| self.on_applied(c))
            }
            Command::AppendCdr(_)
            | Command::MarkSeeded
            | Command::StartCall(_)
            | Command::AnswerCall(_)
            | Command::EndCall { .. }
            | Command::PutApiToken { .. }
            | Command::RemoveApiToken { .. }
            | Command::AppendAudit(_)
            | Command::RestoreBegin { .. }
            | Command::RestoreChunk { .. }
            | Command::RestoreCommit { .. } => {}
        }
    }

    /// Runs until the TCP inbound queue closes: reads the UDP sockets itself through
    /// `udp`, takes TCP messages from `rx`, learns of finished writes from `written`
    /// (when its [`Persist`] answers later), and fires timers. Everything already queued
    /// is handled, a chunk at a time, before timers get a turn and before it sleeps.
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<Inbound>,
        mut udp: Option<UdpIngress>,
        feeds: Feeds,
    ) {
        let Feeds {
            mut written,
            mut applied,
            mut media,
            stop,
            mut vip,
            mut admin,
        } = feeds;
        let mut stop = stop;
        let mut chunk: Vec<Inbound> = Vec::with_capacity(2 * READ_CHUNK);
        loop {
            self.publish_gauges();
            if let Some(a) = applied.as_mut() {
                while let Ok(change) = a.try_recv() {
                    self.on_replicated(change);
                }
            }
            if let Some(w) = written.as_mut() {
                while let Ok((id, result)) = w.try_recv() {
                    self.on_written(id, result, Instant::now());
                }
            }
            if let Some(v) = vip.as_mut() {
                while let Ok(event) = v.try_recv() {
                    self.on_vip(event, Instant::now());
                }
            }
            let started = Instant::now();
            let mut handled = 0;
            let mut uncommitted = 0;
            while handled < MAX_BATCH {
                if let Some(u) = udp.as_mut() {
                    u.read_ready(READ_CHUNK, &mut chunk);
                }
                while chunk.len() < 2 * READ_CHUNK {
                    match rx.try_recv() {
                        Ok(m) => chunk.push(m),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            self.commit_all();
                            return;
                        }
                    }
                }
                if chunk.is_empty() {
                    break;
                }
                let now = Instant::now();
                for m in chunk.drain(..) {
                    self.on_inbound(m, now);
                    handled += 1;
                    uncommitted += 1;
                    if uncommitted >= COMMIT_EVERY {
                        self.commit(now);
                        uncommitted = 0;
                    }
                }
            }
            self.commit(Instant::now());
            let took = started.elapsed();
            if took > SLOW_BATCH {
                tracing::warn!(
                    messages = handled,
                    ms = took.as_millis() as u64,
                    "slow message batch"
                );
            }
            let now = Instant::now();
            if self.next_deadline(now) <= now {
                self.on_timer(now);
                let took = now.elapsed();
                if took > SLOW_BATCH {
                    tracing::warn!(
                        ms = took.as_millis() as u64,
                        transactions = self.txn.len(),
                        "slow timer pass"
                    );
                }
            }
            if handled > 0 {
                // More may have arrived meanwhile: look again before sleeping, but let
                // the tasks sharing this thread (TCP connections, cluster writes) run
                // first, or a steady load would starve them.
                tokio::task::yield_now().await;
                continue;
            }
            let deadline = self.next_deadline(Instant::now());
            let udp_ready = async {
                match &udp {
                    Some(u) => u.readable().await,
                    None => std::future::pending().await,
                }
            };
            let completion = async {
                match written.as_mut() {
                    Some(w) => w.recv().await,
                    None => std::future::pending().await,
                }
            };
            let change = async {
                match applied.as_mut() {
                    Some(a) => a.recv().await,
                    None => std::future::pending().await,
                }
            };
            let media_event = async {
                match media.as_mut() {
                    Some(m) => m.recv().await,
                    None => std::future::pending().await,
                }
            };
            let vip_event = async {
                match vip.as_mut() {
                    Some(v) => v.recv().await,
                    None => std::future::pending().await,
                }
            };
            let admin_request = async {
                match admin.as_mut() {
                    Some(a) => a.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => chunk.push(m),
                    None => {
                        self.commit_all();
                        return;
                    }
                },
                c = change => match c {
                    Some(change) => self.on_replicated(change),
                    None => applied = None,
                },
                v = vip_event => match v {
                    Some(event) => self.on_vip(event, Instant::now()),
                    None => vip = None,
                },
                a = admin_request => match a {
                    Some(request) => self.on_admin(request, Instant::now()),
                    None => admin = None,
                },
                e = media_event => match e {
                    Some(event) => self.on_media_event(event, Instant::now()),
                    None => media = None,
                },
                c = completion => match c {
                    Some((id, result)) => self.on_written(id, result, Instant::now()),
                    // Every sender is gone: nothing more will complete.
                    None => written = None,
                },
                _ = async {
                    match stop.as_mut() {
                        Some(s) => {
                            let _ = s.await;
                        }
                        None => std::future::pending().await,
                    }
                } => {
                    self.commit_all();
                    return;
                }
                _ = udp_ready => {}
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {}
            }
        }
    }

    /// Stores the sizes only this thread can read where `/metrics` reads them: a few
    /// relaxed stores per pass of the loop, not per message.
    pub fn publish_gauges(&self) {
        let m = &self.metrics;
        m.set(&m.transactions, self.txn.len());
        m.retransmissions.store(
            self.txn.stats().retransmissions,
            std::sync::atomic::Ordering::Relaxed,
        );
        m.set(&m.registered_contacts, self.registrar.bindings.len());
        m.set(&m.registered_extensions, self.registrar.bindings.aors());
        m.set(&m.extensions, self.directory.len());
        m.set(&m.calls_active, self.calls.len());
    }

    /// When [`Core::on_timer`] next has work.
    pub fn next_deadline(&mut self, now: Instant) -> Instant {
        let sweep = *self.next_sweep.get_or_insert(now + Duration::from_secs(1));
        let coalesced = self.writes_since.map(|t| t + WRITE_COALESCE);
        [
            self.txn.next_deadline(),
            self.calls.next_deadline().filter(|_| !self.suspended),
            coalesced,
        ]
        .into_iter()
        .flatten()
        .fold(sweep, Instant::min)
    }

    /// Fires due transaction and call timers and sweeps expired bindings.
    pub fn on_timer(&mut self, now: Instant) {
        if self.txn.next_deadline().is_some_and(|d| d <= now) {
            let a = self.txn.on_timer(now);
            self.execute(a, now);
        }
        if !self.suspended && self.calls.next_deadline().is_some_and(|d| d <= now) {
            let mut ctx = ctx!(self, now);
            self.calls.on_timer(&mut ctx);
            self.flush(now);
        }
        if self.next_sweep.is_none_or(|t| now >= t) {
            self.next_sweep = Some(now + Duration::from_secs(1));
            let changes = self.registrar.bindings.sweep(unix_now(SystemTime::now()));
            // Every member forgets expired bindings; only one writes their removal.
            if self.owns_side_effects() {
                self.pending_writes
                    .extend(changes.into_iter().map(binding_command));
            }
        }
        self.commit(now);
    }

    fn ctx(&mut self, now: Instant) -> SipCtx<'_> {
        ctx!(self, now)
    }

    /// A REGISTER, or an INVITE outside a dialog: work that the node may refuse with 503
    /// when it waited in the queue longer than `sip.max_queue_delay_ms` (the node is
    /// behind, and answering at once sheds load before retransmissions multiply it) or
    /// when the node is cut off from its cluster. Responses and in-dialog requests are
    /// always processed, so calls in progress finish.
    fn starts_new_work(&self, msg: &SipMessage) -> bool {
        matches!(msg.method(), Some(Method::Invite | Method::Register)) && msg.to_tag().is_none()
    }

    /// Handles one message from a transport; REGISTER answers that promise a stored
    /// binding go out at the next [`Core::commit`].
    pub fn on_inbound(&mut self, inbound: Inbound, now: Instant) {
        let Inbound {
            mut msg,
            from,
            received,
        } = inbound;
        if let Some(m) = msg.method().filter(|_| msg.is_request()) {
            self.metrics.sip.request(m);
        }
        // New work is refused at once while it cannot be promised (cut off from the
        // cluster majority) or has waited too long (overload); the To tag is parsed once.
        if self.starts_new_work(&msg) {
            let refused = if !self.can_commit() {
                Some(&self.metrics.no_quorum_rejects)
            } else if now.saturating_duration_since(received) > self.max_queue_delay {
                Some(&self.metrics.overload_rejects)
            } else {
                None
            };
            if let Some(counter) = refused {
                self.metrics.inc(counter);
                if let Some(m) = msg.method() {
                    self.metrics.sip.response(m, 503);
                }
                let mut r = msg.response(503, "Service Unavailable");
                r.headers.push("Retry-After", "5");
                self.outbox.push((reply_target(&msg, from), r.to_bytes()));
                return;
            }
        }
        let actions = if msg.is_request() {
            stamp_via(&mut msg, from);
            let to = reply_target(&msg, from);
            if let Some(r) = self.stateless_challenge(&msg) {
                self.metrics.sip.response(&Method::Register, 401);
                return self.outbox.push((to, r.to_bytes()));
            }
            // The layer answers 503 itself when its table is full: count that answer.
            let full = self.txn.stats().rejected_full;
            let method = msg.method().map(crate::metrics::sip::method_index);
            let actions = self.txn.on_request(msg, to, now);
            if let (Some(m), true) = (method, self.txn.stats().rejected_full > full) {
                self.metrics.sip.response_at(m, 503);
            }
            actions
        } else {
            self.txn.on_response(msg, from, now)
        };
        self.execute(actions, now);
    }

    /// The 401 for a REGISTER without credentials, sent with no transaction (see
    /// [`Registrar::stateless_challenge`]). Requests that the §8.2 checks of
    /// [`Core::on_request`] would refuse (loop, Max-Forwards, Require) take the stateful
    /// path so that they get those answers.
    fn stateless_challenge(&mut self, msg: &SipMessage) -> Option<SipMessage> {
        if msg.method() != Some(&Method::Register)
            || msg.max_forwards() == Some(0)
            || msg.headers.get("Require").is_some()
            || msg
                .headers
                .get_all("Via")
                .any(|v| v.contains(&self.local.branch_prefix))
        {
            return None;
        }
        let mut r = self.registrar.stateless_challenge(msg, SystemTime::now())?;
        r.headers.push("Server", self.local.user_agent.clone());
        self.metrics.inc(&self.metrics.registrations_challenged);
        Some(r)
    }

    fn execute(&mut self, actions: Vec<Action>, now: Instant) {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(a) = queue.pop_front() {
            match a {
                Action::Send { bytes, to } => self.outbox.push((to, bytes)),
                Action::Deliver(ev) => {
                    self.on_tu_event(ev, now);
                    queue.extend(self.out.drain(..));
                }
            }
        }
    }

    fn flush(&mut self, now: Instant) {
        let out = std::mem::take(&mut self.out);
        self.execute(out, now);
    }

    fn on_tu_event(&mut self, ev: TuEvent, now: Instant) {
        match ev {
            TuEvent::Request { key, msg, from } => {
                // A new INVITE server transaction has just sent its 100 Trying.
                if let TxKey::Server {
                    method: Method::Invite,
                    ..
                } = &key
                {
                    self.metrics.sip.response(&Method::Invite, 100);
                }
                self.on_request(key, msg, from, now)
            }
            TuEvent::Cancel {
                key,
                msg,
                from: _,
                invite,
            } => {
                let mut ctx = ctx!(self, now);
                self.calls.on_cancel(&mut ctx, &key, &msg, invite.as_ref());
            }
            TuEvent::Ack {
                msg,
                from: _,
                invite,
            } => {
                let mut ctx = ctx!(self, now);
                self.calls.on_ack(&mut ctx, &msg, invite.as_ref());
            }
            TuEvent::Response { key, msg, from: _ } => {
                let mut ctx = ctx!(self, now);
                self.calls.on_response(&mut ctx, &key, &msg);
            }
            TuEvent::StrayResponse { msg, from } => {
                let mut ctx = ctx!(self, now);
                self.calls.on_stray_response(&mut ctx, &msg, from);
            }
            // A suspended node's calls are another's now: no BYE, no CDR from here.
            TuEvent::Timeout { .. } if self.suspended => {}
            TuEvent::Timeout { key } => {
                let mut ctx = ctx!(self, now);
                self.calls.on_timeout(&mut ctx, &key);
            }
            TuEvent::Terminated { key } => self.calls.on_terminated(&key),
        }
    }

    /// A final response of our own to `req`, with a fresh To tag (RFC 3261 §8.2.6.2).
    fn tagged(&mut self, req: &SipMessage, code: u16, reason: &str) -> SipMessage {
        let mut r = req.response(code, reason);
        r.set_to_tag(&self.local.unique());
        r
    }

    fn reply(&mut self, key: &TxKey, req: &SipMessage, code: u16, reason: &str, now: Instant) {
        let r = self.tagged(req, code, reason);
        self.ctx(now).respond(key, r);
    }

    fn on_request(&mut self, key: TxKey, msg: SipMessage, from: Peer, now: Instant) {
        let Some(method) = msg.method().cloned() else {
            return;
        };
        // RFC 3261 §8.2.2.2 / §16.3: a request carrying one of our own branches has looped.
        if msg
            .headers
            .get_all("Via")
            .any(|v| v.contains(&self.local.branch_prefix))
        {
            return self.reply(&key, &msg, 482, "Loop Detected", now);
        }
        if msg.max_forwards() == Some(0) {
            return self.reply(&key, &msg, 483, "Too Many Hops", now);
        }
        if method != Method::Cancel {
            let required = msg.option_tags("Require");
            let unsupported: Vec<&String> = required
                .iter()
                .filter(|t| {
                    !SUPPORTED
                        .split(',')
                        .any(|s| s.trim().eq_ignore_ascii_case(t))
                })
                .collect();
            if !unsupported.is_empty() {
                let mut r = self.tagged(&msg, 420, "Bad Extension");
                r.headers.push(
                    "Unsupported",
                    unsupported
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                );
                let mut ctx = self.ctx(now);
                return ctx.respond(&key, r);
            }
        }
        let in_dialog = msg.to_tag().is_some();
        match method {
            Method::Register => self.on_register(key, msg, from, now),
            Method::Options if !in_dialog => {
                let mut r = self.tagged(&msg, 200, "OK");
                r.headers.push("Allow", ALLOW);
                r.headers.push("Accept", "application/sdp");
                r.headers.push("Accept-Encoding", "identity");
                r.headers.push("Accept-Language", "en");
                r.headers.push("Supported", SUPPORTED);
                let mut ctx = self.ctx(now);
                ctx.respond(&key, r);
            }
            Method::Invite if !in_dialog => match self.identify(&msg, from) {
                Identity::Challenge(r) => {
                    let mut ctx = self.ctx(now);
                    ctx.respond(&key, r);
                }
                Identity::Extension(caller) => {
                    let mut ctx = ctx!(self, now);
                    let bindings = &self.registrar.bindings;
                    self.calls.on_invite(
                        &mut ctx,
                        key,
                        msg,
                        from,
                        caller,
                        &self.directory,
                        |aor| bindings.lookup(aor, unix_now(SystemTime::now())),
                    );
                }
            },
            Method::Other(_) => self.reply(&key, &msg, 501, "Not Implemented", now),
            _ if in_dialog => {
                let mut ctx = ctx!(self, now);
                self.calls.on_in_dialog(&mut ctx, key, msg, from);
            }
            Method::Bye | Method::Info | Method::Update | Method::Prack => {
                self.reply(&key, &msg, 481, "Call/Transaction Does Not Exist", now)
            }
            _ => {
                let mut r = self.tagged(&msg, 405, "Method Not Allowed");
                r.headers.push("Allow", ALLOW);
                let mut ctx = self.ctx(now);
                ctx.respond(&key, r);
            }
        }
    }

    fn on_register(&mut self, key: TxKey, msg: SipMessage, from: Peer, now: Instant) {
        let outcome = self
            .registrar
            .handle(&msg, from, &self.directory, SystemTime::now());
        let ok = outcome.response.status() == Some(200);
        if ok {
            self.metrics.inc(&self.metrics.registrations_ok);
        } else if msg.headers.get("Authorization").is_some() {
            self.metrics.inc(&self.metrics.registrations_failed);
        }
        if outcome.changes.is_empty() {
            let mut ctx = self.ctx(now);
            return ctx.respond(&key, outcome.response);
        }
        // The 200 promises that the binding is stored: hold it until the batched write
        // in `commit` succeeds, and answer 500 if it fails.
        self.pending_writes
            .extend(outcome.changes.into_iter().map(binding_command));
        let mut refusal = msg.response(503, "Service Unavailable");
        refusal.headers.push("Retry-After", "5");
        self.held.push((key, outcome.response, refusal));
    }

    /// Starts one write for the changes of the messages (and timers) handled since the
    /// last commit, releases the responses that promised them as soon as it is done, and sends
    /// everything queued since the last commit.
    pub fn commit(&mut self, now: Instant) {
        self.commit_if(now, false);
    }

    /// Writes whatever is pending, whether or not its coalescing window has passed
    /// (when the node stops).
    pub fn commit_all(&mut self) {
        self.commit_if(Instant::now(), true);
    }

    /// True when the pending changes should be written now: an answer waits for them,
    /// or they waited [`WRITE_COALESCE`], or there are many.
    fn write_due(&mut self, now: Instant) -> bool {
        if !self.held.is_empty() {
            return true;
        }
        if self.pending_writes.is_empty() {
            self.writes_since = None;
            return false;
        }
        let since = *self.writes_since.get_or_insert(now);
        self.pending_writes.len() >= WRITE_COALESCE_MAX || now >= since + WRITE_COALESCE
    }

    fn commit_if(&mut self, now: Instant, force: bool) {
        let due = self.write_due(now) || (force && !self.pending_writes.is_empty());
        if due {
            self.writes_since = None;
            let cmds = std::mem::take(&mut self.pending_writes);
            let held = std::mem::take(&mut self.held);
            self.next_write += 1;
            let id = self.next_write;
            match self.persist.write(id, cmds) {
                Written::Done(result) => self.release(held, result, now),
                Written::Pending => {
                    self.waiting.insert(id, held);
                }
            }
        }
        self.wire.send_all(&mut self.outbox);
    }

    /// A write that was [`Written::Pending`] finished.
    pub fn on_written(&mut self, id: WriteId, result: WriteResult, now: Instant) {
        match self.waiting.remove(&id) {
            Some(held) => self.release(held, result, now),
            None => {
                if let Err(e) = result {
                    self.metrics.inc(&self.metrics.store_errors);
                    tracing::error!(error = %e, "write failed");
                }
            }
        }
        self.wire.send_all(&mut self.outbox);
    }

    /// Sends the held REGISTER answers: the 200s if their write succeeded, else 500.
    fn release(&mut self, held: Vec<Held>, result: WriteResult, now: Instant) {
        let ok = result.is_ok();
        if let Err(e) = result {
            self.metrics.inc(&self.metrics.store_errors);
            tracing::error!(error = %e, "binding write failed");
        }
        let mut ctx = ctx!(self, now);
        for (key, response, refusal) in held {
            ctx.respond(&key, if ok { response } else { refusal });
        }
        self.flush(now);
    }

    /// Who is calling: an extension trusted by source IP, or one proven by digest (407).
    fn identify(&mut self, msg: &SipMessage, from: Peer) -> Identity {
        let caller = msg
            .from_addr()
            .and_then(|f| crate::sip::message::uri_user(&f.uri))
            .unwrap_or_default();
        if let Some(ext) = self.directory.extension(&caller) {
            if ext.trusted_ips.contains(&from.addr.ip()) {
                return Identity::Extension(caller);
            }
        }
        let realm = format!("realm=\"{}\"", self.registrar.config().digest.realm);
        let creds = msg
            .headers
            .get_all("Proxy-Authorization")
            .find(|v| v.contains(&realm))
            .or_else(|| msg.headers.get("Proxy-Authorization"));
        let wall = SystemTime::now();
        let verdict = match creds {
            None => Verdict::Missing,
            Some(c) => {
                let dir = &self.directory;
                self.registrar.auth.verify(
                    "INVITE",
                    c,
                    |u| dir.extension(u).map(|e| e.password.clone()),
                    wall,
                )
            }
        };
        match verdict {
            Verdict::Ok { username } if username == caller => Identity::Extension(caller),
            Verdict::Ok { .. } => Identity::Challenge(self.tagged(msg, 403, "Forbidden")),
            v => {
                let mut r = self.tagged(msg, 407, "Proxy Authentication Required");
                for c in self.registrar.auth.challenge(wall, v == Verdict::Stale) {
                    r.headers.push("Proxy-Authenticate", c);
                }
                Identity::Challenge(r)
            }
        }
    }
}

#[cfg(test)]
mod tests;
