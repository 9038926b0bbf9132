//! The forwarding thread of the DPDK backend: polls one port's queue, answers ARP
//! for the relay address, relays UDP to session ports through their sessions with
//! the frame rewritten in place, and sends in bursts. Sessions arrive and leave
//! through a bounded command channel drained between bursts, so the forwarding path
//! takes no lock and allocates nothing per packet.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dpdk_sys as sys;

use crate::arp::{ArpConfig, ArpTable};
use crate::ports::PortPair;
use crate::session::{Channel, Decision, PeerMedia, Session, SessionStats, Side};
use crate::udp::{RelayEvent, SessionId};
use crate::wire::{self, Inbound, Mac, Rewrite};

/// Frames asked of the port per poll.
pub const BURST: usize = 32;
/// Room for the relayed frames of one burst (ARP goes out on its own).
const TX_ROOM: usize = BURST;
/// Empty polls in a row before the thread starts sleeping between polls.
const IDLE_POLLS: u32 = 1024;
/// Polls between two looks at the clock for the event scan while busy.
const SCAN_CHECK_EVERY: u32 = 256;

/// Work for the forwarding thread.
pub enum Command {
    /// Start relaying a session on its two port pairs.
    Add {
        /// Session id.
        id: SessionId,
        /// Its state.
        session: Box<Session>,
        /// The pair side A sends to.
        a: PortPair,
        /// The pair side B sends to.
        b: PortPair,
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
    /// Report a session's counters.
    Stats {
        /// Session id.
        id: SessionId,
        /// Where to answer.
        reply: SyncSender<Option<SessionStats>>,
    },
    /// Stop relaying a session and report its final counters.
    Remove {
        /// Session id.
        id: SessionId,
        /// Where to answer.
        reply: SyncSender<Option<SessionStats>>,
    },
}

/// Counters shared with the handle (relaxed atomics, added once per burst).
#[derive(Debug, Default)]
pub struct Counters {
    pub received: AtomicU64,
    pub forwarded: AtomicU64,
    /// UDP payload bytes of the datagrams in `forwarded`.
    pub bytes: AtomicU64,
    pub dropped: AtomicU64,
    pub send_failed: AtomicU64,
    pub truncated: AtomicU64,
    pub events_lost: AtomicU64,
    pub ignored: AtomicU64,
    pub no_session: AtomicU64,
    pub arp_pending: AtomicU64,
    pub arp_replies: AtomicU64,
    pub arp_requests: AtomicU64,
    pub arp_learned: AtomicU64,
    pub polls: AtomicU64,
    pub idle_polls: AtomicU64,
    pub busy_nanos: AtomicU64,
}

/// Per-burst tallies, added to the shared counters once per burst.
#[derive(Default)]
struct Tally {
    received: u64,
    forwarded: u64,
    bytes: u64,
    dropped: u64,
    send_failed: u64,
    truncated: u64,
    ignored: u64,
    no_session: u64,
    arp_pending: u64,
    arp_replies: u64,
    arp_requests: u64,
    arp_learned: u64,
    polls: u64,
    idle_polls: u64,
    busy_nanos: u64,
}

impl Tally {
    fn flush(&mut self, c: &Counters) {
        let pairs = [
            (&c.received, self.received),
            (&c.forwarded, self.forwarded),
            (&c.bytes, self.bytes),
            (&c.dropped, self.dropped),
            (&c.send_failed, self.send_failed),
            (&c.truncated, self.truncated),
            (&c.ignored, self.ignored),
            (&c.no_session, self.no_session),
            (&c.arp_pending, self.arp_pending),
            (&c.arp_replies, self.arp_replies),
            (&c.arp_requests, self.arp_requests),
            (&c.arp_learned, self.arp_learned),
            (&c.polls, self.polls),
            (&c.idle_polls, self.idle_polls),
            (&c.busy_nanos, self.busy_nanos),
        ];
        for (counter, n) in pairs {
            if n != 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
        *self = Tally::default();
    }
}

/// The relay's own addresses on the port.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    /// DPDK port id.
    pub port: u16,
    /// Source MAC of everything the relay sends.
    pub mac: Mac,
    /// The relay address.
    pub ip: Ipv4Addr,
    /// Netmask of the relay's subnet (on-link destinations are resolved directly).
    pub mask: u32,
    /// Next hop for destinations off the subnet.
    pub gateway: Option<Ipv4Addr>,
}

impl Link {
    /// The address to resolve for a datagram to `dst`.
    fn next_hop(&self, dst: Ipv4Addr) -> Ipv4Addr {
        let on_link = (u32::from(dst) ^ u32::from(self.ip)) & self.mask == 0;
        match self.gateway {
            Some(gw) if !on_link => gw,
            _ => dst,
        }
    }
}

/// A mempool pointer handed to the forwarding thread.
pub struct Pool(pub *mut sys::rte_mempool);
// SAFETY: DPDK mempools are multi-thread safe; the pointer stays valid for the
// process (pools are never freed).
unsafe impl Send for Pool {}
// SAFETY: as above.
unsafe impl Sync for Pool {}

/// What the thread needs, all of it `Send`.
pub struct WorkerParts {
    pub link: Link,
    pub pool: Arc<Pool>,
    pub arp: ArpConfig,
    pub commands: Receiver<Command>,
    pub events: SyncSender<RelayEvent>,
    pub stop: Arc<AtomicBool>,
    pub counters: Arc<Counters>,
    pub scan_every: Duration,
    pub idle_sleep: Duration,
    pub cpu: Option<usize>,
}

struct Slot {
    id: SessionId,
    session: Session,
    pairs: [PortPair; 2],
}

/// Session-port lookup entry: `(slot << 2 | side << 1 | channel) + 1`, 0 = none.
fn port_entry(slot: usize, side: Side, channel: Channel) -> u32 {
    let s = match side {
        Side::A => 0,
        Side::B => 2,
    };
    let c = match channel {
        Channel::Rtp => 0,
        Channel::Rtcp => 1,
    };
    ((slot as u32) << 2 | s | c) + 1
}

fn decode_entry(e: u32) -> (usize, Side, Channel) {
    let v = e - 1;
    let side = if v & 2 == 0 { Side::A } else { Side::B };
    let channel = if v & 1 == 0 {
        Channel::Rtp
    } else {
        Channel::Rtcp
    };
    ((v >> 2) as usize, side, channel)
}

fn pair_of(pairs: &[PortPair; 2], side: Side) -> PortPair {
    match side {
        Side::A => pairs[0],
        Side::B => pairs[1],
    }
}

struct Worker {
    p: WorkerParts,
    arp: ArpTable,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    index: HashMap<SessionId, usize>,
    /// Session lookup by UDP destination port.
    by_port: Vec<u32>,
    tx: [*mut sys::rte_mbuf; TX_ROOM],
    /// The UDP payload length of each queued datagram, counted once the device took it.
    tx_bytes: [u32; TX_ROOM],
    tx_len: usize,
    drop: [*mut sys::rte_mbuf; BURST],
    drop_len: usize,
    tally: Tally,
}

/// Runs the forwarding loop until `stop` is set.
pub fn run(parts: WorkerParts) {
    if let Some(cpu) = parts.cpu {
        pin_to(cpu);
    }
    // An lcore id gives this thread the mempool's per-lcore cache; without one it
    // still works, through the shared ring.
    // SAFETY: plain call; EAL is initialised before the thread starts.
    let registered = unsafe { sys::rte_thread_register() } == 0;
    let mut w = Worker {
        arp: ArpTable::new(parts.arp),
        p: parts,
        slots: Vec::new(),
        free: Vec::new(),
        index: HashMap::new(),
        by_port: vec![0; 65_536],
        tx: [std::ptr::null_mut(); TX_ROOM],
        tx_bytes: [0; TX_ROOM],
        tx_len: 0,
        drop: [std::ptr::null_mut(); BURST],
        drop_len: 0,
        tally: Tally::default(),
    };
    let mut rx: [*mut sys::rte_mbuf; BURST] = [std::ptr::null_mut(); BURST];
    let mut next_scan = Instant::now() + w.p.scan_every;
    let (mut idle, mut polls) = (0u32, 0u32);
    while !w.p.stop.load(Ordering::Relaxed) {
        // Commands first: an update sent before a packet arrived applies to it.
        w.drain_commands();
        // SAFETY: `rx` has room for BURST pointers; the port is started.
        let n = unsafe { sys::ss_rx_burst(w.p.link.port, 0, rx.as_mut_ptr(), BURST as u16) };
        polls = polls.wrapping_add(1);
        w.tally.polls += 1;
        if n == 0 {
            w.tally.idle_polls += 1;
            idle = idle.saturating_add(1);
            if idle >= IDLE_POLLS {
                w.tally.flush(&w.p.counters);
                if !w.p.idle_sleep.is_zero() {
                    std::thread::sleep(w.p.idle_sleep);
                }
                let now = Instant::now();
                if now >= next_scan {
                    w.scan(now);
                    next_scan = now + w.p.scan_every;
                }
            }
            continue;
        }
        idle = 0;
        let now = Instant::now();
        for &m in &rx[..usize::from(n)] {
            w.handle(m, now);
        }
        // Busy time makes the per-core capacity measurable even when the offered load
        // is below it (idle polls are cheap, so their count says little).
        w.tally.busy_nanos += now.elapsed().as_nanos() as u64;
        w.flush();
        if polls % SCAN_CHECK_EVERY == 0 && now >= next_scan {
            w.scan(now);
            next_scan = now + w.p.scan_every;
        }
    }
    if registered {
        // SAFETY: this thread registered itself above.
        unsafe { sys::rte_thread_unregister() };
    }
}

/// Pins the calling thread to `cpu` (best effort: an invalid CPU leaves it free).
fn pin_to(cpu: usize) {
    // SAFETY: cpu_set_t is plain data, CPU_SET bounds-checks, the call affects this
    // thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

impl Worker {
    fn drain_commands(&mut self) {
        while let Ok(cmd) = self.p.commands.try_recv() {
            match cmd {
                Command::Add { id, session, a, b } => self.add(id, *session, [a, b]),
                Command::Update { id, side, peer } => {
                    if let Some(s) = self.slot_mut(id) {
                        s.session.update(side, peer, Instant::now());
                    }
                }
                Command::Stats { id, reply } => {
                    let stats = self.slot_mut(id).map(|s| s.session.stats());
                    let _ = reply.try_send(stats);
                }
                Command::Remove { id, reply } => {
                    let stats = self.remove(id);
                    let _ = reply.try_send(stats);
                }
            }
        }
    }

    fn slot_mut(&mut self, id: SessionId) -> Option<&mut Slot> {
        let i = *self.index.get(&id)?;
        self.slots.get_mut(i)?.as_mut()
    }

    fn add(&mut self, id: SessionId, session: Session, pairs: [PortPair; 2]) {
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        for (side, pair) in [(Side::A, pairs[0]), (Side::B, pairs[1])] {
            self.by_port[usize::from(pair.rtp)] = port_entry(i, side, Channel::Rtp);
            self.by_port[usize::from(pair.rtcp)] = port_entry(i, side, Channel::Rtcp);
        }
        self.slots[i] = Some(Slot { id, session, pairs });
        self.index.insert(id, i);
    }

    fn remove(&mut self, id: SessionId) -> Option<SessionStats> {
        let i = self.index.remove(&id)?;
        let slot = self.slots.get_mut(i)?.take()?;
        for pair in slot.pairs {
            self.by_port[usize::from(pair.rtp)] = 0;
            self.by_port[usize::from(pair.rtcp)] = 0;
        }
        self.free.push(i);
        Some(slot.session.stats())
    }

    fn queue_tx(&mut self, m: *mut sys::rte_mbuf, payload_len: usize) {
        if self.tx_len < TX_ROOM {
            self.tx[self.tx_len] = m;
            self.tx_bytes[self.tx_len] = u32::try_from(payload_len).unwrap_or(u32::MAX);
            self.tx_len += 1;
        } else {
            // SAFETY: `m` is an mbuf this thread owns.
            unsafe { sys::ss_pktmbuf_free(m) };
            self.tally.send_failed += 1;
        }
    }

    fn queue_drop(&mut self, m: *mut sys::rte_mbuf) {
        if self.drop_len == BURST {
            // SAFETY: the pointers are mbufs this thread owns.
            unsafe { sys::ss_pktmbuf_free_bulk(self.drop.as_mut_ptr(), BURST as u32) };
            self.drop_len = 0;
        }
        self.drop[self.drop_len] = m;
        self.drop_len += 1;
    }

    /// Sends what the burst produced, frees what it dropped, publishes the tallies.
    fn flush(&mut self) {
        if self.tx_len > 0 {
            // SAFETY: the first `tx_len` entries are mbufs this thread owns; the
            // driver takes those it accepts.
            let sent = usize::from(unsafe {
                sys::ss_tx_burst(
                    self.p.link.port,
                    0,
                    self.tx.as_mut_ptr(),
                    self.tx_len as u16,
                )
            });
            if sent < self.tx_len {
                let rest = self.tx_len - sent;
                // SAFETY: the rejected ones are still ours.
                unsafe { sys::ss_pktmbuf_free_bulk(self.tx[sent..].as_mut_ptr(), rest as u32) };
                self.tally.send_failed += rest as u64;
            }
            self.tally.forwarded += sent as u64;
            self.tally.bytes += self.tx_bytes[..sent]
                .iter()
                .map(|b| u64::from(*b))
                .sum::<u64>();
            self.tx_len = 0;
        }
        if self.drop_len > 0 {
            // SAFETY: the first `drop_len` entries are mbufs this thread owns.
            unsafe { sys::ss_pktmbuf_free_bulk(self.drop.as_mut_ptr(), self.drop_len as u32) };
            self.drop_len = 0;
        }
        self.tally.flush(&self.p.counters);
    }

    /// Handles one received frame: it ends up queued for sending or for freeing.
    fn handle(&mut self, m: *mut sys::rte_mbuf, now: Instant) {
        self.tally.received += 1;
        let mut len = 0u16;
        // SAFETY: `m` is a received mbuf; `len` is a valid out-pointer.
        let data = unsafe { sys::ss_mbuf_data(m, &mut len) };
        if data.is_null() {
            // Multi-segment frames are jumbo frames: not RTP.
            self.tally.truncated += 1;
            self.tally.dropped += 1;
            return self.queue_drop(m);
        }
        // SAFETY: the mbuf's first segment holds `len` bytes at `data`, owned by us
        // until it is sent or freed.
        let frame = unsafe { std::slice::from_raw_parts_mut(data, usize::from(len)) };
        match wire::parse(frame) {
            Inbound::Arp(a) => self.on_arp(m, a, now),
            Inbound::Udp(u) if *u.dst.ip() == self.p.link.ip => self.on_udp(m, frame, u, now),
            Inbound::Udp(_) | Inbound::Other(_) => {
                self.tally.ignored += 1;
                self.queue_drop(m)
            }
        }
    }

    fn on_arp(&mut self, m: *mut sys::rte_mbuf, a: wire::Arp, now: Instant) {
        let link = self.p.link;
        let for_us = a.target_ip == link.ip;
        if (for_us || a.op == wire::ARP_REPLY) && self.arp.learn(a.sender_ip, a.sender_mac, now) {
            self.tally.arp_learned += 1;
        }
        if !(for_us && a.op == wire::ARP_REQUEST) {
            self.tally.ignored += 1;
            return self.queue_drop(m);
        }
        // The reply is written over the request: no allocation.
        let reply = wire::arp_reply(&a, link.mac);
        let mut len = 0u16;
        // SAFETY: `m` is ours; the reply fits any mbuf (2 KiB data room).
        let written = unsafe {
            if sys::ss_mbuf_set_len(m, wire::MIN_FRAME_LEN as u16) != 0 {
                None
            } else {
                let data = sys::ss_mbuf_data(m, &mut len);
                if data.is_null() {
                    None
                } else {
                    let buf = std::slice::from_raw_parts_mut(data, usize::from(len));
                    wire::write_arp(buf, a.sender_mac, link.mac, &reply)
                }
            }
        };
        match written {
            Some(_) => {
                self.tally.arp_replies += 1;
                self.send_control(m);
            }
            None => {
                self.tally.dropped += 1;
                self.queue_drop(m);
            }
        }
    }

    fn on_udp(&mut self, m: *mut sys::rte_mbuf, frame: &mut [u8], u: wire::UdpFrame, now: Instant) {
        if self.arp.learn(*u.src.ip(), u.src_mac, now) {
            self.tally.arp_learned += 1;
        }
        let entry = self.by_port[usize::from(u.dst.port())];
        if entry == 0 {
            self.tally.no_session += 1;
            self.tally.dropped += 1;
            return self.queue_drop(m);
        }
        let (i, side, channel) = decode_entry(entry);
        let Some(Some(slot)) = self.slots.get_mut(i) else {
            self.tally.no_session += 1;
            self.tally.dropped += 1;
            return self.queue_drop(m);
        };
        let payload = &frame[u.payload_at()..u.payload_at() + u.payload_len];
        let decision = slot
            .session
            .on_packet(side, channel, SocketAddr::V4(u.src), payload, now);
        let (to, via) = match decision {
            Decision::Forward {
                to: SocketAddr::V4(to),
                via,
            } => (to, via),
            Decision::Forward { .. } | Decision::Drop(_) => {
                self.tally.dropped += 1;
                return self.queue_drop(m);
            }
        };
        let out = pair_of(&slot.pairs, side.other());
        let src_port = match via {
            Channel::Rtp => out.rtp,
            Channel::Rtcp => out.rtcp,
        };
        let hop = self.p.link.next_hop(*to.ip());
        let r = self.arp.resolve(hop, now);
        if r.ask {
            self.send_arp_request(hop);
        }
        let Some(dst_mac) = r.mac else {
            self.tally.arp_pending += 1;
            self.tally.dropped += 1;
            return self.queue_drop(m);
        };
        wire::rewrite_udp(
            frame,
            &u,
            &Rewrite {
                src_mac: self.p.link.mac,
                dst_mac,
                src: SocketAddrV4::new(self.p.link.ip, src_port),
                dst: to,
            },
        );
        self.queue_tx(m, u.payload_len);
    }

    fn send_arp_request(&mut self, target: Ipv4Addr) {
        let link = self.p.link;
        // SAFETY: the pool outlives the thread.
        let m = unsafe { sys::ss_pktmbuf_alloc(self.p.pool.0) };
        if m.is_null() {
            return;
        }
        let req = wire::arp_request(link.mac, link.ip, target);
        let mut len = 0u16;
        // SAFETY: a fresh single-segment mbuf with 2 KiB of room.
        let ok = unsafe {
            sys::ss_mbuf_set_len(m, wire::MIN_FRAME_LEN as u16) == 0 && {
                let data = sys::ss_mbuf_data(m, &mut len);
                !data.is_null()
                    && wire::write_arp(
                        std::slice::from_raw_parts_mut(data, usize::from(len)),
                        wire::BROADCAST,
                        link.mac,
                        &req,
                    )
                    .is_some()
            }
        };
        if ok {
            self.tally.arp_requests += 1;
            self.send_control(m);
        } else {
            // SAFETY: ours, never queued.
            unsafe { sys::ss_pktmbuf_free(m) };
        }
    }

    /// Sends an ARP frame at once, outside the burst of relayed datagrams (which is
    /// what `forwarded` counts).
    fn send_control(&mut self, m: *mut sys::rte_mbuf) {
        let mut one = [m];
        // SAFETY: `m` is ours; the driver takes it or we free it.
        let sent = unsafe { sys::ss_tx_burst(self.p.link.port, 0, one.as_mut_ptr(), 1) };
        if sent == 0 {
            // SAFETY: rejected, still ours.
            unsafe { sys::ss_pktmbuf_free(m) };
        }
    }

    /// Reports due session events.
    fn scan(&mut self, now: Instant) {
        for slot in self.slots.iter_mut().flatten() {
            crate::udp::report_events(
                slot.id,
                &mut slot.session,
                now,
                &self.p.events,
                &self.p.counters.events_lost,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_entries_round_trip() {
        for slot in [0usize, 1, 77, 1 << 20] {
            for side in [Side::A, Side::B] {
                for ch in [Channel::Rtp, Channel::Rtcp] {
                    let e = port_entry(slot, side, ch);
                    assert_ne!(e, 0);
                    assert_eq!(decode_entry(e), (slot, side, ch));
                }
            }
        }
    }

    #[test]
    fn off_link_destinations_go_to_the_gateway() {
        let link = Link {
            port: 0,
            mac: [2, 0, 0, 0, 0, 1],
            ip: "10.0.0.1".parse().unwrap(),
            mask: 0xffff_ff00,
            gateway: Some("10.0.0.254".parse().unwrap()),
        };
        assert_eq!(
            link.next_hop("10.0.0.7".parse().unwrap()),
            "10.0.0.7".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(
            link.next_hop("8.8.8.8".parse().unwrap()),
            "10.0.0.254".parse::<Ipv4Addr>().unwrap()
        );
        let no_gw = Link {
            gateway: None,
            ..link
        };
        assert_eq!(
            no_gw.next_hop("8.8.8.8".parse().unwrap()),
            "8.8.8.8".parse::<Ipv4Addr>().unwrap()
        );
    }
}
