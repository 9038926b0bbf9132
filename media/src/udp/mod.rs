//! The batched-UDP relay backend: sessions' sockets are served by dedicated
//! forwarding threads with `recvmmsg`/`sendmmsg`, sockets bound with `SO_REUSEPORT`,
//! no allocation per packet and no lock on the forwarding path (sessions are added,
//! updated and removed through a bounded channel that each thread drains between
//! batches).
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

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use batch::{MAX_DATAGRAM, RECV_BATCH};
pub use socket::bind_udp;

use crate::ports::{PortAllocator, PortError, PortPair, PortRange};
use crate::session::{
    PeerMedia, Session, SessionConfig, SessionEvent, SessionStats, Side, DEFAULT_RTP_TIMEOUT,
};
use worker::{Command, Counters, WorkerParts};

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
    /// Commands waiting per thread; beyond it calls fail with [`RelayError::Busy`].
    pub command_queue: usize,
    /// Set `SO_REUSEPORT` on media sockets.
    pub reuse_port: bool,
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
            command_queue: 1024,
            reuse_port: true,
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
    /// `max_sessions` reached.
    #[error("media session limit ({0}) reached")]
    TooManySessions(usize),
    /// No such session.
    #[error("unknown media session {0}")]
    UnknownSession(SessionId),
    /// A forwarding thread's command queue is full.
    #[error("media relay busy")]
    Busy,
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
    /// Datagrams dropped by session decisions or as truncated.
    pub dropped: u64,
    /// Datagrams the kernel refused to send.
    pub send_failed: u64,
    /// Datagrams longer than [`MAX_DATAGRAM`].
    pub truncated: u64,
    /// Events lost because the event queue was full.
    pub events_lost: u64,
}

/// How many pairs to try when binding fails on ports held by other processes.
const BIND_ATTEMPTS: usize = 32;
/// How long a control call waits for a forwarding thread's answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

struct Entry {
    worker: usize,
    a: PortPair,
    b: PortPair,
}

struct Control {
    ports: PortAllocator,
    sessions: HashMap<SessionId, Entry>,
    next_id: u64,
    next_worker: usize,
}

struct WorkerHandle {
    commands: SyncSender<Command>,
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
        match self.commands.try_send(cmd) {
            Ok(()) => {
                self.wake();
                Ok(())
            }
            Err(TrySendError::Full(_)) => Err(RelayError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(RelayError::WorkerGone),
        }
    }
}

/// Entry point of the backend.
pub struct Relay;

impl Relay {
    /// Starts the forwarding threads.
    pub fn start(config: RelayConfig) -> Result<RelayHandle, RelayError> {
        let ports = PortAllocator::new(config.ports)?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let (events_tx, events_rx) = sync_channel(config.event_queue.max(1));
        let scan_every =
            (config.rtp_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let threads = config.threads.max(1);
        // Built first: if a later thread fails to start, dropping it stops the others.
        let mut handle = RelayHandle {
            control: Mutex::new(Control {
                ports,
                sessions: HashMap::new(),
                next_id: 1,
                next_worker: 0,
            }),
            workers: Vec::with_capacity(threads),
            events: Mutex::new(events_rx),
            stop: stop.clone(),
            counters: counters.clone(),
            config,
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
            let (tx, rx) = sync_channel(handle.config.command_queue.max(1));
            let parts = WorkerParts {
                epoll,
                wake: wake.clone(),
                commands: rx,
                events: events_tx.clone(),
                stop: stop.clone(),
                counters: counters.clone(),
                scan_every,
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
        Ok(handle)
    }
}

/// A running relay: create, update and destroy sessions, read their events.
/// Dropping it stops the threads and closes every socket.
pub struct RelayHandle {
    control: Mutex<Control>,
    workers: Vec<WorkerHandle>,
    events: Mutex<Receiver<RelayEvent>>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    config: RelayConfig,
}

impl RelayHandle {
    fn control(&self) -> MutexGuard<'_, Control> {
        // A panic while holding the lock leaves plain data behind: keep going.
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds a pair from the allocator, skipping pairs another process holds.
    fn bind_pair(&self, c: &mut Control) -> Result<(PortPair, UdpPair), RelayError> {
        let mut busy = Vec::new();
        let mut result = Err(RelayError::PortsExhausted);
        for _ in 0..BIND_ATTEMPTS {
            let Some(pair) = c.ports.allocate() else {
                break;
            };
            let bind = |port| {
                bind_udp(
                    SocketAddr::new(self.config.bind, port),
                    self.config.reuse_port,
                )
            };
            match (bind(pair.rtp), bind(pair.rtcp)) {
                (Ok(rtp), Ok(rtcp)) => {
                    result = Ok((pair, [rtp, rtcp]));
                    break;
                }
                (Err(e), _) | (_, Err(e)) if e.kind() == io::ErrorKind::AddrInUse => {
                    busy.push(pair)
                }
                (Err(e), _) | (_, Err(e)) => {
                    busy.push(pair);
                    result = Err(e.into());
                    break;
                }
            }
        }
        for p in busy {
            let _ = c.ports.release(p.rtp);
        }
        result
    }

    /// Opens a session: two port pairs (one per side) bound and served by a
    /// forwarding thread. `a` and `b` describe the peers as far as known.
    pub fn create_session(&self, a: PeerMedia, b: PeerMedia) -> Result<SessionPorts, RelayError> {
        let mut c = self.control();
        if c.sessions.len() >= self.config.max_sessions {
            return Err(RelayError::TooManySessions(self.config.max_sessions));
        }
        let (pa, [a_rtp, a_rtcp]) = self.bind_pair(&mut c)?;
        let (pb, [b_rtp, b_rtcp]) = match self.bind_pair(&mut c) {
            Ok(x) => x,
            Err(e) => {
                let _ = c.ports.release(pa.rtp);
                return Err(e);
            }
        };
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
        let cmd = Command::Add {
            id,
            session: Box::new(session),
            sockets: [a_rtp, a_rtcp, b_rtp, b_rtcp],
        };
        if let Err(e) = self.workers[w].send(cmd) {
            let _ = c.ports.release(pa.rtp);
            let _ = c.ports.release(pb.rtp);
            return Err(e);
        }
        c.sessions.insert(
            id,
            Entry {
                worker: w,
                a: pa,
                b: pb,
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

    fn ask(
        &self,
        worker: usize,
        id: SessionId,
        make: impl FnOnce(SyncSender<Option<SessionStats>>) -> Command,
    ) -> Result<SessionStats, RelayError> {
        let (tx, rx) = sync_channel(1);
        self.workers[worker].send(make(tx))?;
        match rx.recv_timeout(REPLY_TIMEOUT) {
            Ok(Some(s)) => Ok(s),
            Ok(None) => Err(RelayError::UnknownSession(id)),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                Err(RelayError::WorkerGone)
            }
        }
    }

    /// The session's counters now.
    pub fn stats(&self, id: SessionId) -> Result<SessionStats, RelayError> {
        let w = {
            let c = self.control();
            c.sessions
                .get(&id)
                .ok_or(RelayError::UnknownSession(id))?
                .worker
        };
        self.ask(w, id, |reply| Command::Stats { id, reply })
    }

    /// Closes the session and returns its final counters; its ports go back to
    /// the allocator (to be reused after every other free pair).
    pub fn destroy(&self, id: SessionId) -> Result<SessionStats, RelayError> {
        let e = {
            let mut c = self.control();
            c.sessions
                .remove(&id)
                .ok_or(RelayError::UnknownSession(id))?
        };
        let result = self.ask(e.worker, id, |reply| Command::Remove { id, reply });
        let mut c = self.control();
        let _ = c.ports.release(e.a.rtp);
        let _ = c.ports.release(e.b.rtp);
        result
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
            dropped: c.dropped.load(Ordering::Relaxed),
            send_failed: c.send_failed.load(Ordering::Relaxed),
            truncated: c.truncated.load(Ordering::Relaxed),
            events_lost: c.events_lost.load(Ordering::Relaxed),
        }
    }

    /// Port pairs free now.
    pub fn ports_available(&self) -> usize {
        self.control().ports.available()
    }
}

type UdpPair = [std::net::UdpSocket; 2];

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
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
        assert_eq!(relay.ports_available(), 20); // 23300-23339
        assert_eq!(relay.counters().sessions, 0);
    }
}
