//! The batched-UDP relay backend: sessions' sockets are served by dedicated
//! forwarding threads with `recvmmsg`/`sendmmsg`, sockets bound with `SO_REUSEPORT`,
//! no allocation per packet and no lock waited on in the forwarding path (sessions are
//! added, updated and removed through a channel that each thread drains between
//! batches).
//!
//! None of the calls waits for a forwarding thread, so the SIP core that makes them
//! is never held up by media: new sessions take sockets a binder thread keeps bound
//! in advance, a session's counters are read from the cell its thread publishes them
//! to, and closing a session only queues the close (its ports return to the allocator
//! once the thread has closed the sockets).
//!
//! A node that takes over another node's calls (the cluster's virtual IP moved to it)
//! continues their media on the same ports with [`RelayHandle::adopt_session`]; with
//! [`RelayConfig::freebind`] every node's relay binds to the virtual IP before
//! holding it.
//!
//! ```no_run
//! # fn main() -> Result<(), media::udp::RelayError> {
//! use media::session::{PeerMedia, Side};
//! use media::udp::{Relay, RelayConfig};
//! let relay = Relay::start(RelayConfig::default())?;
//! let s = relay.create_session(PeerMedia::unknown(), PeerMedia::unknown())?;
//! // rewrite the offer toward s.a, the answer toward s.b, then:
//! relay.update(s.id, Side::B, PeerMedia::unknown())?;
//! let final_stats = relay.destroy(s.id)?;
//! # let _ = final_stats; Ok(()) }
//! ```

mod batch;
mod socket;
mod worker;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use batch::{MAX_DATAGRAM, RECV_BATCH};
pub use socket::{bind_udp, SocketOptions};

use crate::ports::{PortAllocator, PortError, PortPair, PortRange};
use crate::session::{
    PeerMedia, Session, SessionConfig, SessionEvent, SessionStats, Side, DEFAULT_RTP_TIMEOUT,
};
use worker::{Command, Counters, StatsCell, WorkerParts};

/// Identifies a relay session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "media-{}", self.0)
    }
}

/// An event of one session, for the owner of the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayEvent {
    /// The session.
    pub session: SessionId,
    /// What happened.
    pub event: SessionEvent,
}

/// Hands the due events of `session` to its owner; when the owner's queue is full (or
/// gone) they are counted in `lost` instead, since a forwarding thread never waits.
pub(crate) fn report_events(
    id: SessionId,
    session: &mut Session,
    now: Instant,
    events: &SyncSender<RelayEvent>,
    lost: &std::sync::atomic::AtomicU64,
) {
    while let Some(event) = session.poll_event(now) {
        if events.try_send(RelayEvent { session: id, event }).is_err() {
            lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Relay settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// Address the media sockets bind to and the SDP advertises.
    pub bind: IpAddr,
    /// Port range for RTP/RTCP pairs (default 10000–20000).
    pub ports: PortRange,
    /// Forwarding threads (default 1).
    pub threads: usize,
    /// RTP timeout (default 60 s).
    pub rtp_timeout: Duration,
    /// Most simultaneous sessions (each takes two port pairs).
    pub max_sessions: usize,
    /// Events waiting for the owner; beyond it they are counted as lost.
    pub event_queue: usize,
    /// Port pairs kept bound in advance, so that opening a session binds nothing.
    pub spare_pairs: usize,
    /// Set `SO_REUSEPORT` on media sockets.
    pub reuse_port: bool,
    /// Set `IP_FREEBIND` (`IPV6_FREEBIND`) on media sockets (default off), so that
    /// `bind` may be an address this node does not hold (yet): the cluster's virtual
    /// IP, which every node's relay binds to so that the node it moves to can
    /// continue the calls on their ports ([`RelayHandle::adopt_session`]).
    pub freebind: bool,
    /// The in-kernel fast path (default off): once a session has both sides latched
    /// and neither holds, its RTP streams are forwarded by a TC classifier and never
    /// reach the sockets (see [`crate::kernel`]). Needs root and `bind` a specific
    /// IPv4 address.
    pub kernel_forwarding: Option<crate::kernel::KernelForwarding>,
}

impl Default for RelayConfig {
    fn default() -> RelayConfig {
        RelayConfig {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            ports: PortRange::default(),
            threads: 1,
            rtp_timeout: DEFAULT_RTP_TIMEOUT,
            max_sessions: 2500,
            event_queue: 4096,
            spare_pairs: 64,
            reuse_port: true,
            freebind: false,
            kernel_forwarding: None,
        }
    }
}

/// Why a relay call failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A socket, epoll or thread could not be created.
    #[error("relay I/O: {0}")]
    Io(#[from] io::Error),
    /// The configured range cannot hold a pair.
    #[error("relay ports: {0}")]
    Ports(#[from] PortError),
    /// No free port pair could be bound.
    #[error("no free media port pair")]
    PortsExhausted,
    /// A pair to adopt is held by a live session of this relay (or by one whose
    /// close is still queued).
    #[error("media port {0} is in use by another session")]
    PortsInUse(u16),
    /// The pairs to adopt are not two distinct RTP/RTCP pairs (`rtcp == rtp + 1`).
    #[error("media ports {a:?} and {b:?} are not two distinct RTP/RTCP pairs")]
    NotPortPairs {
        /// Side A's pair as asked.
        a: PortPair,
        /// Side B's pair as asked.
        b: PortPair,
    },
    /// `max_sessions` reached.
    #[error("media session limit ({0}) reached")]
    TooManySessions(usize),
    /// A forwarding thread's bounded command queue is full (the DPDK backend's).
    #[error("media relay busy")]
    Busy,
    /// No such session.
    #[error("unknown media session {0}")]
    UnknownSession(SessionId),
    /// A forwarding thread did not answer.
    #[error("media forwarding thread not answering")]
    WorkerGone,
}

/// The relay's ports of a new session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionPorts {
    /// Session id.
    pub id: SessionId,
    /// Address to put in `c=`.
    pub addr: IpAddr,
    /// The pair side A sends to (goes in the SDP sent to A).
    pub a: PortPair,
    /// The pair side B sends to (goes in the SDP sent to B).
    pub b: PortPair,
}

/// Relay-wide counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RelayCounters {
    /// Sessions open.
    pub sessions: usize,
    /// Datagrams forwarded.
    pub forwarded: u64,
    /// Payload bytes of the datagrams in `forwarded`.
    pub bytes: u64,
    /// Datagrams dropped by session decisions or as truncated.
    pub dropped: u64,
    /// Datagrams the kernel refused to send.
    pub send_failed: u64,
    /// Datagrams longer than [`MAX_DATAGRAM`].
    pub truncated: u64,
    /// Events lost because the event queue was full.
    pub events_lost: u64,
    /// Datagrams the in-kernel fast path forwarded (as of the threads' last scan; not
    /// in `forwarded`).
    pub kernel_forwarded: u64,
    /// Payload bytes of the datagrams in `kernel_forwarded`.
    pub kernel_bytes: u64,
}

/// Checks that `a` and `b`, pairs to adopt, are two distinct RTP/RTCP pairs (whether
/// they belong to the range is the allocator's to say).
pub(crate) fn check_adopted_pairs(a: PortPair, b: PortPair) -> Result<(), RelayError> {
    let pair = |p: PortPair| p.rtp.checked_add(1) == Some(p.rtcp);
    if pair(a) && pair(b) && a.rtp != b.rtp {
        Ok(())
    } else {
        Err(RelayError::NotPortPairs { a, b })
    }
}

/// The relay's error for a refused [`PortAllocator::reserve`]: a pair in use is the
/// caller's conflict, not a broken range.
pub(crate) fn reserve_error(e: PortError) -> RelayError {
    match e {
        PortError::InUse(rtp) => RelayError::PortsInUse(rtp),
        e => RelayError::Ports(e),
    }
}

/// How many pairs to try when binding fails on ports held by other processes.
const BIND_ATTEMPTS: usize = 32;
/// How long the binder waits before trying again when no pair could be bound.
const BINDER_RETRY: Duration = Duration::from_millis(100);

/// A pair's RTP and RTCP sockets.
type UdpPair = [std::net::UdpSocket; 2];

struct Entry {
    worker: usize,
    published: Arc<StatsCell>,
}

struct Control {
    sessions: HashMap<SessionId, Entry>,
    next_id: u64,
    next_worker: usize,
}

/// Pairs bound in advance by the binder thread.
struct Spares {
    ready: Mutex<VecDeque<(PortPair, UdpPair)>>,
    /// Signalled when a pair was taken (or at stop).
    taken: Condvar,
    ports: Arc<Mutex<PortAllocator>>,
    bind: IpAddr,
    options: SocketOptions,
    target: usize,
}

impl Spares {
    fn ready(&self) -> MutexGuard<'_, VecDeque<(PortPair, UdpPair)>> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn allocator(&self) -> MutexGuard<'_, PortAllocator> {
        self.ports.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds the sockets of `pair`.
    fn bind(&self, pair: PortPair) -> io::Result<UdpPair> {
        let bind = |port| bind_udp(SocketAddr::new(self.bind, port), self.options);
        Ok([bind(pair.rtp)?, bind(pair.rtcp)?])
    }

    /// Binds a pair from the allocator, skipping pairs another process holds.
    fn bind_pair(&self) -> Result<(PortPair, UdpPair), RelayError> {
        let mut busy = Vec::new();
        let mut result = Err(RelayError::PortsExhausted);
        for _ in 0..BIND_ATTEMPTS {
            let Some(pair) = self.allocator().allocate() else {
                break;
            };
            match self.bind(pair) {
                Ok(sockets) => {
                    result = Ok((pair, sockets));
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => busy.push(pair),
                Err(e) => {
                    busy.push(pair);
                    result = Err(e.into());
                    break;
                }
            }
        }
        let mut ports = self.allocator();
        for p in busy {
            let _ = ports.release(p.rtp);
        }
        result
    }

    /// Wakes the binder if `ready` fell below half its target: it refills from half
    /// empty on, one wake-up per many sessions.
    fn refill(&self, ready: &VecDeque<(PortPair, UdpPair)>) {
        if ready.len() < self.target.div_ceil(2) {
            self.taken.notify_one();
        }
    }

    /// A bound pair: a spare if there is one, else bound now.
    fn take(&self) -> Result<(PortPair, UdpPair), RelayError> {
        let mut ready = self.ready();
        let spare = ready.pop_front();
        self.refill(&ready);
        match spare {
            Some(p) => Ok(p),
            // Still under the lock, so the binder cannot hold the last free pair.
            None => self.bind_pair(),
        }
    }

    /// The pair whose RTP port is `rtp`, bound: the spare if the binder holds it,
    /// else reserved in the allocator and bound now.
    fn take_exact(&self, rtp: u16) -> Result<(PortPair, UdpPair), RelayError> {
        let mut ready = self.ready();
        if let Some(spare) = ready
            .iter()
            .position(|(p, _)| p.rtp == rtp)
            .and_then(|at| ready.remove(at))
        {
            self.refill(&ready);
            return Ok(spare);
        }
        // Still under the spares' lock, which the binder holds from allocating a pair
        // until it is a spare: a pair the allocator has out now is a session's.
        let pair = self.allocator().reserve(rtp).map_err(reserve_error)?;
        match self.bind(pair) {
            Ok(sockets) => Ok((pair, sockets)),
            Err(e) => {
                let _ = self.allocator().release(pair.rtp);
                Err(e.into())
            }
        }
    }

    /// Closes the sockets of a pair that was never used and frees its ports.
    fn give_back(&self, pair: PortPair, sockets: UdpPair) {
        drop(sockets);
        let _ = self.allocator().release(pair.rtp);
    }

    /// The binder thread: keeps `target` pairs bound until `stop`. It binds while
    /// holding the spares' lock, so a pair is always either free in the allocator or
    /// ready (sessions wait at most one bind for it).
    fn run_binder(&self, stop: &AtomicBool) {
        let mut ready = self.ready();
        let mut filling = true;
        while !stop.load(Ordering::Relaxed) {
            if ready.len() >= self.target || (!filling && ready.len() >= self.target.div_ceil(2)) {
                filling = false;
                ready = self.taken.wait(ready).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            filling = true;
            match self.bind_pair() {
                Ok(p) => ready.push_back(p),
                // Ports run out under load or are held elsewhere: try again later,
                // meanwhile sessions bind (and report) on their own.
                Err(_) => {
                    ready = self
                        .taken
                        .wait_timeout(ready, BINDER_RETRY)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|e| e.into_inner().0);
                    continue;
                }
            }
            // Let a waiting session in between two binds.
            drop(ready);
            ready = self.ready();
        }
    }
}

struct WorkerHandle {
    commands: Sender<Command>,
    wake: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes to an eventfd from an 8-byte value.
        unsafe {
            libc::write(
                self.wake.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            )
        };
    }

    fn send(&self, cmd: Command) -> Result<(), RelayError> {
        self.commands
            .send(cmd)
            .map_err(|_| RelayError::WorkerGone)?;
        self.wake();
        Ok(())
    }
}

/// Entry point of the backend.
pub struct Relay;

impl Relay {
    /// Starts the forwarding threads and the binder.
    pub fn start(config: RelayConfig) -> Result<RelayHandle, RelayError> {
        let ports = Arc::new(Mutex::new(PortAllocator::new(config.ports)?));
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let (events_tx, events_rx) = sync_channel(config.event_queue.max(1));
        let scan_every =
            (config.rtp_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let threads = config.threads.max(1);
        let kernel = match &config.kernel_forwarding {
            None => None,
            Some(k) => {
                let IpAddr::V4(local) = config.bind else {
                    return Err(kernel_needs_v4());
                };
                if local.is_unspecified() {
                    return Err(kernel_needs_v4());
                }
                let program = Arc::new(k.attach()?);
                Some(Arc::new(worker::KernelPath {
                    ifindex: program.ifindex,
                    program,
                    local,
                }))
            }
        };
        let spares = Arc::new(Spares {
            ready: Mutex::new(VecDeque::new()),
            taken: Condvar::new(),
            ports: ports.clone(),
            bind: config.bind,
            options: SocketOptions {
                reuse_port: config.reuse_port,
                freebind: config.freebind,
            },
            target: config.spare_pairs,
        });
        // Built first: if a later thread fails to start, dropping it stops the others.
        let mut handle = RelayHandle {
            control: Mutex::new(Control {
                sessions: HashMap::new(),
                next_id: 1,
                next_worker: 0,
            }),
            workers: Vec::with_capacity(threads),
            binder: None,
            spares: spares.clone(),
            events: Mutex::new(events_rx),
            stop: stop.clone(),
            counters: counters.clone(),
            config,
            _kernel: kernel.clone(),
        };
        for i in 0..threads {
            // SAFETY: plain syscalls; results checked before use.
            let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
            if epfd < 0 {
                return Err(io::Error::last_os_error().into());
            }
            // SAFETY: a fresh descriptor nothing else owns.
            let epoll = unsafe { OwnedFd::from_raw_fd(epfd) };
            // SAFETY: as above.
            let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
            if efd < 0 {
                return Err(io::Error::last_os_error().into());
            }
            // SAFETY: a fresh descriptor nothing else owns.
            let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(efd) });
            let (tx, rx) = channel();
            let parts = WorkerParts {
                epoll,
                wake: wake.clone(),
                commands: rx,
                events: events_tx.clone(),
                stop: stop.clone(),
                counters: counters.clone(),
                ports: ports.clone(),
                scan_every,
                kernel: kernel.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("media-fwd-{i}"))
                .spawn(move || worker::run(parts))?;
            handle.workers.push(WorkerHandle {
                commands: tx,
                wake,
                thread: Some(thread),
            });
        }
        if handle.config.spare_pairs > 0 {
            handle.binder = Some(
                std::thread::Builder::new()
                    .name("media-ports".into())
                    .spawn(move || spares.run_binder(&stop))?,
            );
        }
        Ok(handle)
    }
}

/// A running relay: create, update and destroy sessions, read their events.
/// Dropping it stops the threads and closes every socket.
pub struct RelayHandle {
    control: Mutex<Control>,
    workers: Vec<WorkerHandle>,
    binder: Option<JoinHandle<()>>,
    spares: Arc<Spares>,
    events: Mutex<Receiver<RelayEvent>>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    config: RelayConfig,
    /// Detaches the classifier when the last forwarding thread has let go of it too.
    _kernel: Option<Arc<worker::KernelPath>>,
}

fn kernel_needs_v4() -> RelayError {
    RelayError::Io(io::Error::new(
        io::ErrorKind::InvalidInput,
        "kernel forwarding needs the relay bound to a specific IPv4 address",
    ))
}

impl RelayHandle {
    fn control(&self) -> MutexGuard<'_, Control> {
        // A panic while holding the lock leaves plain data behind: keep going.
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a session: two port pairs (one per side) bound and served by a
    /// forwarding thread. `a` and `b` describe the peers as far as known.
    pub fn create_session(&self, a: PeerMedia, b: PeerMedia) -> Result<SessionPorts, RelayError> {
        let mut c = self.control();
        if c.sessions.len() >= self.config.max_sessions {
            return Err(RelayError::TooManySessions(self.config.max_sessions));
        }
        let (pa, [a_rtp, a_rtcp]) = self.spares.take()?;
        let (pb, [b_rtp, b_rtcp]) = match self.spares.take() {
            Ok(x) => x,
            Err(e) => {
                self.spares.give_back(pa, [a_rtp, a_rtcp]);
                return Err(e);
            }
        };
        self.open(&mut c, a, b, [a_rtp, a_rtcp, b_rtp, b_rtcp], [pa, pb])
    }

    /// Opens a session on exactly the port pairs `a` (side A's) and `b` (side B's):
    /// for a node that continues the calls of another one, whose phones keep sending
    /// to these ports of the virtual IP. A pair may be free or held as a spare; one
    /// held by a live session of this relay is refused ([`RelayError::PortsInUse`]),
    /// as are pairs outside the range ([`RelayError::Ports`]). The session gets a new
    /// id of this relay; `a_peer` and `b_peer` are the peers as the call record
    /// knows them, and each side latches again on its next packets.
    pub fn adopt_session(
        &self,
        a: PortPair,
        b: PortPair,
        a_peer: PeerMedia,
        b_peer: PeerMedia,
    ) -> Result<SessionPorts, RelayError> {
        check_adopted_pairs(a, b)?;
        let mut c = self.control();
        if c.sessions.len() >= self.config.max_sessions {
            return Err(RelayError::TooManySessions(self.config.max_sessions));
        }
        let (pa, [a_rtp, a_rtcp]) = self.spares.take_exact(a.rtp)?;
        let (pb, [b_rtp, b_rtcp]) = match self.spares.take_exact(b.rtp) {
            Ok(x) => x,
            Err(e) => {
                self.spares.give_back(pa, [a_rtp, a_rtcp]);
                return Err(e);
            }
        };
        self.open(
            &mut c,
            a_peer,
            b_peer,
            [a_rtp, a_rtcp, b_rtp, b_rtcp],
            [pa, pb],
        )
    }

    /// Hands a session on its bound pairs to a forwarding thread; on failure the
    /// sockets close and the pairs go back to the allocator.
    fn open(
        &self,
        c: &mut Control,
        a: PeerMedia,
        b: PeerMedia,
        sockets: [std::net::UdpSocket; 4],
        [pa, pb]: [PortPair; 2],
    ) -> Result<SessionPorts, RelayError> {
        let id = SessionId(c.next_id);
        c.next_id += 1;
        let w = c.next_worker % self.workers.len();
        c.next_worker = c.next_worker.wrapping_add(1);
        let session = Session::new(
            SessionConfig {
                rtp_timeout: self.config.rtp_timeout,
            },
            a,
            b,
            Instant::now(),
        );
        let published = Arc::new(StatsCell::default());
        let cmd = Command::Add {
            id,
            session: Box::new(session),
            sockets,
            pairs: [pa, pb],
            published: published.clone(),
        };
        // A refused command comes back with its sockets, which then close here.
        if let Err(e) = self.workers[w].send(cmd) {
            let mut ports = self.spares.allocator();
            let _ = ports.release(pa.rtp);
            let _ = ports.release(pb.rtp);
            return Err(e);
        }
        c.sessions.insert(
            id,
            Entry {
                worker: w,
                published,
            },
        );
        Ok(SessionPorts {
            id,
            addr: self.config.bind,
            a: pa,
            b: pb,
        })
    }

    /// Applies a new SDP from `side`: its peer address, direction, rtcp-mux; the
    /// side latches again on its next packets.
    pub fn update(&self, id: SessionId, side: Side, peer: PeerMedia) -> Result<(), RelayError> {
        let c = self.control();
        let e = c.sessions.get(&id).ok_or(RelayError::UnknownSession(id))?;
        self.workers[e.worker].send(Command::Update { id, side, peer })
    }

    /// The session's counters as of its last forwarded batch.
    pub fn stats(&self, id: SessionId) -> Result<SessionStats, RelayError> {
        let c = self.control();
        let e = c.sessions.get(&id).ok_or(RelayError::UnknownSession(id))?;
        let stats = e
            .published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Ok(stats)
    }

    /// Closes the session and returns its final counters (as of its last forwarded
    /// batch). The close itself is queued: the ports go back to the allocator (to be
    /// reused after every other free pair) once the forwarding thread has closed the
    /// sockets.
    pub fn destroy(&self, id: SessionId) -> Result<SessionStats, RelayError> {
        let e = self
            .control()
            .sessions
            .remove(&id)
            .ok_or(RelayError::UnknownSession(id))?;
        let stats = e
            .published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.workers[e.worker].send(Command::Remove { id })?;
        Ok(stats)
    }

    /// The next session event, waiting up to `timeout`.
    pub fn next_event(&self, timeout: Duration) -> Option<RelayEvent> {
        let rx = self.events.lock().unwrap_or_else(|e| e.into_inner());
        rx.recv_timeout(timeout).ok()
    }

    /// Relay-wide counters.
    pub fn counters(&self) -> RelayCounters {
        let c = &self.counters;
        RelayCounters {
            sessions: self.control().sessions.len(),
            forwarded: c.forwarded.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            send_failed: c.send_failed.load(Ordering::Relaxed),
            truncated: c.truncated.load(Ordering::Relaxed),
            events_lost: c.events_lost.load(Ordering::Relaxed),
            kernel_forwarded: c.kernel_forwarded.load(Ordering::Relaxed),
            kernel_bytes: c.kernel_bytes.load(Ordering::Relaxed),
        }
    }

    /// Port pairs that sessions can take now: free in the allocator or bound spare.
    /// Closed sessions' pairs count once their forwarding thread has closed them.
    pub fn ports_available(&self) -> usize {
        // Lock order: spares, then allocator (as the binder does).
        let ready = self.spares.ready();
        ready.len() + self.spares.allocator().available()
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        {
            // Under the lock, so the binder cannot miss the wake-up between its
            // stop check and its wait.
            let _ready = self.spares.ready();
            self.spares.taken.notify_all();
        }
        if let Some(t) = self.binder.take() {
            let _ = t.join();
        }
        for w in &self.workers {
            w.wake();
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback_relay(min: u16, max: u16, spare_pairs: usize) -> RelayHandle {
        Relay::start(RelayConfig {
            bind: "127.0.0.1".parse().unwrap(),
            ports: PortRange { min, max },
            spare_pairs,
            ..RelayConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn sessions_take_spare_pairs_and_bind_themselves_when_none_are_left() {
        // 23400-23409: five pairs; two spares wanted, so the binder holds two bound.
        let relay = loopback_relay(23400, 23409, 2);
        let deadline = Instant::now() + Duration::from_secs(5);
        while relay.spares.ready().len() < 2 && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(relay.spares.ready().len(), 2);
        assert_eq!(relay.ports_available(), 5);
        let s1 = relay
            .create_session(PeerMedia::unknown(), PeerMedia::unknown())
            .unwrap();
        let s2 = relay
            .create_session(PeerMedia::unknown(), PeerMedia::unknown())
            .unwrap();
        let all: std::collections::BTreeSet<u16> = [s1.a.rtp, s1.b.rtp, s2.a.rtp, s2.b.rtp]
            .into_iter()
            .collect();
        assert_eq!(all.len(), 4, "every pair handed out once");
        // One pair left in all; a third session cannot get two.
        assert!(matches!(
            relay.create_session(PeerMedia::unknown(), PeerMedia::unknown()),
            Err(RelayError::PortsExhausted)
        ));
        relay.destroy(s1.id).unwrap();
        assert!(matches!(
            relay.destroy(s1.id),
            Err(RelayError::UnknownSession(_))
        ));
        let deadline = Instant::now() + Duration::from_secs(5);
        while relay.ports_available() < 3 && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(relay.ports_available(), 3);
        relay
            .create_session(PeerMedia::unknown(), PeerMedia::unknown())
            .unwrap();
    }

    #[test]
    fn without_spares_a_session_binds_its_own_pairs() {
        let relay = loopback_relay(23420, 23423, 0);
        let s = relay
            .create_session(PeerMedia::unknown(), PeerMedia::unknown())
            .unwrap();
        assert_ne!(s.a, s.b);
        assert_eq!(relay.ports_available(), 0);
        let stats = relay.destroy(s.id).unwrap();
        assert_eq!(stats, SessionStats::default());
    }

    #[test]
    fn the_handle_can_be_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<RelayHandle>();
        let relay = Arc::new(
            Relay::start(RelayConfig {
                bind: "127.0.0.1".parse().unwrap(),
                ports: PortRange {
                    min: 23300,
                    max: 23339,
                },
                threads: 2,
                ..RelayConfig::default()
            })
            .unwrap(),
        );
        let joins: Vec<_> = (0..4)
            .map(|_| {
                let r = relay.clone();
                std::thread::spawn(move || {
                    let s = r
                        .create_session(PeerMedia::unknown(), PeerMedia::unknown())
                        .unwrap();
                    r.destroy(s.id).unwrap();
                })
            })
            .collect();
        for j in joins {
            j.join().unwrap();
        }
        assert_eq!(relay.counters().sessions, 0);
        // Closing is queued: the ports come back once the threads closed the sockets.
        let deadline = Instant::now() + Duration::from_secs(5);
        while relay.ports_available() != 20 && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(relay.ports_available(), 20); // 23300-23339
    }

    #[test]
    fn adopting_a_spare_pair_takes_it_from_the_binder() {
        // 23440-23449: five pairs, two kept spare.
        let relay = loopback_relay(23440, 23449, 2);
        let deadline = Instant::now() + Duration::from_secs(5);
        while relay.spares.ready().len() < 2 && Instant::now() < deadline {
            std::thread::yield_now();
        }
        let spares: Vec<PortPair> = relay.spares.ready().iter().map(|(p, _)| *p).collect();
        assert_eq!(spares.len(), 2);
        let spare = spares[1];
        let pairs: Vec<PortPair> = (23440..23450)
            .step_by(2)
            .map(|rtp| PortPair { rtp, rtcp: rtp + 1 })
            .filter(|p| !spares.contains(p))
            .collect();
        let (free, other) = (pairs[0], pairs[1]);
        let none = PeerMedia::unknown;
        let s = relay.adopt_session(spare, free, none(), none()).unwrap();
        assert_eq!((s.a, s.b), (spare, free));
        assert!(
            relay.spares.ready().iter().all(|(p, _)| *p != spare),
            "the spare is the session's now"
        );
        // Two of five pairs are the session's, wherever the binder has the others.
        assert_eq!(relay.ports_available(), 3);
        assert!(matches!(
            relay.adopt_session(spare, other, none(), none()),
            Err(RelayError::PortsInUse(p)) if p == spare.rtp
        ));
        // Side A's pair was free: taken, then given back when B's was refused.
        assert!(matches!(
            relay.adopt_session(other, free, none(), none()),
            Err(RelayError::PortsInUse(p)) if p == free.rtp
        ));
        // The refusals gave back what they had taken.
        assert_eq!(relay.ports_available(), 3);
        // The rest still makes exactly one more session, and no pair is handed out twice.
        let s2 = relay.create_session(none(), none()).unwrap();
        let mut all = [s.a.rtp, s.b.rtp, s2.a.rtp, s2.b.rtp];
        all.sort_unstable();
        assert!(all.windows(2).all(|w| w[0] != w[1]), "{all:?}");
        relay.destroy(s.id).unwrap();
        relay.destroy(s2.id).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while relay.ports_available() < 5 && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(relay.ports_available(), 5);
        assert!(matches!(
            relay.adopt_session(spare, spare, none(), none()),
            Err(RelayError::NotPortPairs { .. })
        ));
        let odd = PortPair {
            rtp: spare.rtp,
            rtcp: spare.rtp + 3,
        };
        assert!(matches!(
            relay.adopt_session(odd, free, none(), none()),
            Err(RelayError::NotPortPairs { .. })
        ));
    }
}
