//! A forwarding thread: an epoll loop over the sockets of its sessions. Sessions
//! arrive and leave through a command channel drained between batches, and their
//! counters go out through a per-session cell the thread only ever `try_lock`s, so
//! the forwarding path never waits on a lock, never answers a caller and allocates
//! nothing per packet.

use std::collections::HashMap;
use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::batch::{RecvBufs, SendQueue};
use super::{RelayEvent, SessionId};
use crate::kernel::{monotonic_ns, Stream, StreamCounters, TcProgram};
use crate::ports::{PortAllocator, PortPair};
use crate::session::{Channel, Decision, PeerMedia, Session, SessionStats, Side};

/// epoll token of the wake-up eventfd.
const WAKE: u64 = u64::MAX;
/// Batches read from one socket before turning to the others (fairness).
const ROUNDS_PER_WAKE: usize = 8;
/// epoll events handled per wait.
const EPOLL_EVENTS: usize = 64;

/// A session's latest counters, written by its forwarding thread after each batch
/// and read by the owner without a round trip to the thread.
pub type StatsCell = Mutex<SessionStats>;

/// Work for a forwarding thread.
pub enum Command {
    /// Start relaying a session on its four sockets (A RTP, A RTCP, B RTP, B RTCP).
    Add {
        /// Session id.
        id: SessionId,
        /// Its state.
        session: Box<Session>,
        /// Its sockets.
        sockets: [UdpSocket; 4],
        /// Its port pairs (A, B), given back to the allocator once the sockets close.
        pairs: [PortPair; 2],
        /// Where its counters are published.
        published: Arc<StatsCell>,
    },
    /// Apply a new SDP from one side.
    Update {
        /// Session id.
        id: SessionId,
        /// Side whose SDP changed.
        side: Side,
        /// The new peer description.
        peer: PeerMedia,
    },
    /// Stop relaying a session, close its sockets and free its ports.
    Remove {
        /// Session id.
        id: SessionId,
    },
}

/// Relay-wide counters, shared by the threads (relaxed atomics, added per batch).
#[derive(Debug, Default)]
pub struct Counters {
    pub forwarded: AtomicU64,
    /// Bytes of the datagrams handed to the send queues (user-space path).
    pub bytes: AtomicU64,
    pub dropped: AtomicU64,
    pub send_failed: AtomicU64,
    pub truncated: AtomicU64,
    pub events_lost: AtomicU64,
    pub register_failed: AtomicU64,
    pub kernel_forwarded: AtomicU64,
    /// Bytes of the datagrams in `kernel_forwarded`.
    pub kernel_bytes: AtomicU64,
    pub kernel_failed: AtomicU64,
}

/// The in-kernel fast path as the forwarding threads use it.
#[derive(Debug)]
pub struct KernelPath {
    pub program: Arc<TcProgram>,
    pub ifindex: u32,
    /// The relay's address: the streams' keys and forwarded datagrams' source.
    pub local: std::net::Ipv4Addr,
}

/// One side's RTP stream while the kernel forwards it.
struct KernelStream {
    relay_in: std::net::SocketAddrV4,
    /// The kernel's counters as already added to the session.
    seen: StreamCounters,
}

struct Slot {
    id: SessionId,
    session: Session,
    sockets: [UdpSocket; 4],
    pairs: [PortPair; 2],
    published: Arc<StatsCell>,
    /// Counters changed since the last successful publish.
    dirty: bool,
    /// Per side (A, B): its RTP stream while in the kernel.
    kernel: [Option<KernelStream>; 2],
    /// The kernel refused a stream: stay in user space until the next update.
    kernel_refused: bool,
}

impl Slot {
    /// Publishes the counters unless the owner is reading them right now, in which
    /// case the next batch or scan does.
    fn publish(&mut self) {
        match self.published.try_lock() {
            Ok(mut cell) => {
                self.session.write_stats(&mut cell);
                self.dirty = false;
            }
            Err(_) => self.dirty = true,
        }
    }
}

fn socket_index(side: Side, channel: Channel) -> usize {
    let s = match side {
        Side::A => 0,
        Side::B => 2,
    };
    s + match channel {
        Channel::Rtp => 0,
        Channel::Rtcp => 1,
    }
}

fn side_channel(k: usize) -> (Side, Channel) {
    let side = if k < 2 { Side::A } else { Side::B };
    let channel = if k & 1 == 0 {
        Channel::Rtp
    } else {
        Channel::Rtcp
    };
    (side, channel)
}

fn epoll_add(epfd: RawFd, fd: RawFd, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: token,
    };
    // SAFETY: both descriptors are open; ev is a valid epoll_event.
    if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What a thread needs, all of it `Send`; the buffers are made on the thread.
pub struct WorkerParts {
    pub epoll: OwnedFd,
    pub wake: Arc<OwnedFd>,
    pub commands: Receiver<Command>,
    pub events: SyncSender<RelayEvent>,
    pub stop: Arc<AtomicBool>,
    pub counters: Arc<Counters>,
    pub ports: Arc<Mutex<PortAllocator>>,
    pub scan_every: Duration,
    pub kernel: Option<Arc<KernelPath>>,
}

/// Runs the forwarding loop until `stop` is set.
pub fn run(parts: WorkerParts) {
    let mut w = Worker {
        recv: RecvBufs::new(),
        out: [SendQueue::new(), SendQueue::new()],
        slots: Vec::new(),
        free: Vec::new(),
        index: HashMap::new(),
        next_scan: Instant::now() + parts.scan_every,
        p: parts,
    };
    if epoll_add(w.p.epoll.as_raw_fd(), w.p.wake.as_raw_fd(), WAKE).is_err() {
        return;
    }
    // SAFETY: epoll_event is plain data.
    let mut events: [libc::epoll_event; EPOLL_EVENTS] = unsafe { std::mem::zeroed() };
    while !w.p.stop.load(Ordering::Relaxed) {
        let wait = w
            .next_scan
            .saturating_duration_since(Instant::now())
            .as_millis()
            .min(1000) as libc::c_int;
        // SAFETY: `events` has room for EPOLL_EVENTS entries.
        let n = unsafe {
            libc::epoll_wait(
                w.p.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                EPOLL_EVENTS as libc::c_int,
                wait,
            )
        };
        // Commands first: an update sent before a packet arrived applies to it.
        w.drain_commands();
        for ev in events.iter().take(n.max(0) as usize) {
            let token = ev.u64;
            if token == WAKE {
                let mut buf = [0u8; 8];
                // SAFETY: reading 8 bytes from the eventfd into an 8-byte buffer.
                unsafe {
                    libc::read(
                        w.p.wake.as_raw_fd(),
                        buf.as_mut_ptr() as *mut libc::c_void,
                        8,
                    )
                };
                continue;
            }
            w.forward((token >> 2) as usize, (token & 3) as usize);
        }
        let now = Instant::now();
        if now >= w.next_scan {
            w.scan(now);
            w.next_scan = now + w.p.scan_every;
        }
    }
}

struct Worker {
    p: WorkerParts,
    recv: Box<RecvBufs>,
    out: [Box<SendQueue>; 2],
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    index: HashMap<SessionId, usize>,
    next_scan: Instant,
}

impl Worker {
    fn drain_commands(&mut self) {
        while let Ok(cmd) = self.p.commands.try_recv() {
            match cmd {
                Command::Add {
                    id,
                    session,
                    sockets,
                    pairs,
                    published,
                } => self.add(
                    id,
                    Slot {
                        id,
                        session: *session,
                        sockets,
                        pairs,
                        published,
                        dirty: false,
                        kernel: [None, None],
                        kernel_refused: false,
                    },
                ),
                Command::Update { id, side, peer } => {
                    let (kernel, counters) = (self.p.kernel.clone(), self.p.counters.clone());
                    if let Some(s) = self.slot_mut(id) {
                        // Both streams: this side's source and the other's destination
                        // may change; they go back once both sides latched again.
                        if let Some(k) = &kernel {
                            kernel_remove(k, &counters, s);
                        }
                        s.session.update(side, peer, Instant::now());
                        s.publish();
                    }
                }
                Command::Remove { id } => {
                    let Some(i) = self.index.remove(&id) else {
                        continue;
                    };
                    self.free.push(i);
                    if let Some(mut slot) = self.slots[i].take() {
                        if let Some(k) = &self.p.kernel {
                            kernel_remove(k, &self.p.counters, &mut slot);
                        }
                        let pairs = slot.pairs;
                        // Dropping the slot closes its sockets (which leaves epoll)
                        // before the ports can be handed out again.
                        drop(slot);
                        let mut ports = self.p.ports.lock().unwrap_or_else(|e| e.into_inner());
                        for p in pairs {
                            let _ = ports.release(p.rtp);
                        }
                    }
                }
            }
        }
    }

    fn slot_mut(&mut self, id: SessionId) -> Option<&mut Slot> {
        let i = *self.index.get(&id)?;
        self.slots.get_mut(i)?.as_mut()
    }

    fn add(&mut self, id: SessionId, slot: Slot) {
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        let epfd = self.p.epoll.as_raw_fd();
        for (k, s) in slot.sockets.iter().enumerate() {
            if epoll_add(epfd, s.as_raw_fd(), ((i as u64) << 2) | k as u64).is_err() {
                // Not pollable: the session stays silent and will time out.
                self.p
                    .counters
                    .register_failed
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        self.slots[i] = Some(slot);
        self.index.insert(id, i);
    }

    /// Reads and forwards what socket `k` of slot `i` has queued.
    fn forward(&mut self, i: usize, k: usize) {
        let Some(Some(slot)) = self.slots.get_mut(i) else {
            return;
        };
        let (side, channel) = side_channel(k);
        let fd = slot.sockets[k].as_raw_fd();
        let out_fds = [
            slot.sockets[socket_index(side.other(), Channel::Rtp)].as_raw_fd(),
            slot.sockets[socket_index(side.other(), Channel::Rtcp)].as_raw_fd(),
        ];
        let (mut forwarded, mut dropped, mut failed, mut truncated) = (0u64, 0u64, 0u64, 0u64);
        let mut bytes = 0u64;
        for _ in 0..ROUNDS_PER_WAKE {
            let n = match self.recv.recv(fd) {
                Ok(n) if n > 0 => n,
                _ => break,
            };
            let now = Instant::now();
            for d in 0..n {
                let Some((data, from)) = self.recv.get(d) else {
                    truncated += u64::from(self.recv.is_truncated(d));
                    dropped += 1;
                    continue;
                };
                match slot.session.on_packet(side, channel, from, data, now) {
                    Decision::Forward { to, via } => {
                        bytes += data.len() as u64;
                        let q = match via {
                            Channel::Rtp => 0,
                            Channel::Rtcp => 1,
                        };
                        self.out[q].push(d, &to);
                    }
                    Decision::Drop(_) => dropped += 1,
                }
            }
            // Before sending: whoever sees a packet arrive sees it counted.
            slot.publish();
            for (q, out_fd) in self.out.iter_mut().zip(out_fds) {
                let sent = q.flush(out_fd, &self.recv);
                forwarded += sent.ok as u64;
                failed += sent.failed as u64;
            }
            if n < super::batch::RECV_BATCH {
                break;
            }
        }
        if let (Some(k), Channel::Rtp) = (&self.p.kernel, channel) {
            kernel_install(k, &self.p.counters, slot);
        }
        let c = &self.p.counters;
        c.forwarded.fetch_add(forwarded, Ordering::Relaxed);
        c.bytes.fetch_add(bytes, Ordering::Relaxed);
        c.dropped.fetch_add(dropped, Ordering::Relaxed);
        c.send_failed.fetch_add(failed, Ordering::Relaxed);
        c.truncated.fetch_add(truncated, Ordering::Relaxed);
    }

    /// Reports due session events.
    fn scan(&mut self, now: Instant) {
        for slot in self.slots.iter_mut().flatten() {
            if let Some(k) = &self.p.kernel {
                kernel_fold(k, &self.p.counters, slot, now);
            }
            if slot.dirty {
                slot.publish();
            }
            super::report_events(
                slot.id,
                &mut slot.session,
                now,
                &self.p.events,
                &self.p.counters.events_lost,
            );
        }
    }
}

fn side_index(side: Side) -> usize {
    match side {
        Side::A => 0,
        Side::B => 1,
    }
}

/// Hands the slot's RTP streams that can go to the kernel to it (after a batch from
/// one of its sides: that is when a side latches).
fn kernel_install(k: &KernelPath, counters: &Counters, slot: &mut Slot) {
    if slot.kernel_refused {
        return;
    }
    for side in [Side::A, Side::B] {
        let i = side_index(side);
        if slot.kernel[i].is_some() {
            continue;
        }
        let Some((source, dest)) = slot.session.kernel_route(side) else {
            continue;
        };
        let relay_in = std::net::SocketAddrV4::new(k.local, slot.pairs[i].rtp);
        let stream = Stream {
            relay_in,
            source,
            // It leaves from the other side's RTP port, as user space sends it.
            relay_out: std::net::SocketAddrV4::new(k.local, slot.pairs[1 - i].rtp),
            dest,
            ifindex: k.ifindex,
            neigh: !k.program.loopback,
        };
        match k.program.map.install(&stream) {
            Ok(()) => {
                slot.kernel[i] = Some(KernelStream {
                    relay_in,
                    seen: StreamCounters::default(),
                })
            }
            Err(_) => {
                counters.kernel_failed.fetch_add(1, Ordering::Relaxed);
                slot.kernel_refused = true;
                return;
            }
        }
    }
}

/// Adds what the kernel forwarded since the last fold to the session (at each scan, so
/// the RTP timeout sees the kernel's last-seen times).
fn kernel_fold(k: &KernelPath, counters: &Counters, slot: &mut Slot, now: Instant) {
    for side in [Side::A, Side::B] {
        let Some(ks) = &mut slot.kernel[side_index(side)] else {
            continue;
        };
        let Ok(Some(c)) = k.program.map.counters(ks.relay_in) else {
            continue;
        };
        slot.dirty |= fold_counters(counters, &mut slot.session, side, ks, c, now);
    }
}

fn fold_counters(
    counters: &Counters,
    session: &mut Session,
    side: Side,
    ks: &mut KernelStream,
    c: StreamCounters,
    now: Instant,
) -> bool {
    let packets = c.packets.saturating_sub(ks.seen.packets);
    if packets == 0 {
        return false;
    }
    let bytes = c.bytes.saturating_sub(ks.seen.bytes);
    let ago = Duration::from_nanos(monotonic_ns().saturating_sub(c.last_ns));
    let last = now.checked_sub(ago).unwrap_or(now);
    session.on_kernel_forwarded(side, packets, bytes, last);
    counters
        .kernel_forwarded
        .fetch_add(packets, Ordering::Relaxed);
    counters.kernel_bytes.fetch_add(bytes, Ordering::Relaxed);
    ks.seen = c;
    true
}

/// Takes the slot's streams out of the kernel, adding their last counts.
fn kernel_remove(k: &KernelPath, counters: &Counters, slot: &mut Slot) {
    let now = Instant::now();
    for side in [Side::A, Side::B] {
        let Some(mut ks) = slot.kernel[side_index(side)].take() else {
            continue;
        };
        if let Ok(Some(c)) = k.program.map.remove(ks.relay_in) {
            fold_counters(counters, &mut slot.session, side, &mut ks, c, now);
            slot.dirty = true;
        }
    }
    slot.kernel_refused = false;
}
