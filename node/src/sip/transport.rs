//! UDP and TCP transports (RFC 3261 §18): sockets, stream framing, connection reuse.
//!
//! UDP is read by the core itself through [`UdpIngress`], many datagrams per system
//! call: handing each datagram from a reader thread to the core cost more in thread
//! wake-ups than the parsing it spread. TCP connections parse on their own tasks and
//! hand whole messages to the core through one bounded queue; when that queue is full
//! a request is answered `503` with `Retry-After` right here.

use super::message::{self, frame_stream, ParseError, SipMessage, Transport, MAX_MESSAGE_SIZE};
use super::{udp_batch, Peer};
use crate::metrics::Metrics;
use bytes::{Buf, Bytes, BytesMut};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

/// What a transport hands to the core.
#[derive(Debug)]
pub struct Inbound {
    /// The parsed message.
    pub msg: SipMessage,
    /// Where it came from.
    pub from: Peer,
    /// When it was read off the socket (the core measures its queueing delay).
    pub received: std::time::Instant,
}

/// Limits and timeouts of the transports.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// UDP listen addresses.
    pub udp: Vec<SocketAddr>,
    /// TCP listen addresses.
    pub tcp: Vec<SocketAddr>,
    /// Idle time after which a TCP connection is closed.
    pub tcp_idle_timeout: Duration,
    /// Most TCP connections from one IP.
    pub tcp_max_per_ip: usize,
    /// Most TCP connections in all.
    pub tcp_max_total: usize,
    /// Bind with `IP_FREEBIND` (listeners on a virtual IP this node may not hold).
    pub freebind: bool,
    /// Sends go out only while this is open (set, on a VIP member, while it holds the
    /// VIP); `None`: always.
    pub send_gate: Option<Arc<AtomicBool>>,
}

type ConnMap = Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Bytes>>>>;

/// Handle for sending; cheap to clone.
#[derive(Clone)]
pub struct Transports {
    udp: Vec<Arc<UdpSocket>>,
    tcp_conns: ConnMap,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    inbound: mpsc::Sender<Inbound>,
    metrics: Arc<Metrics>,
    cfg: Arc<TransportConfig>,
    /// Bound UDP addresses (ports resolved).
    pub udp_addrs: Vec<SocketAddr>,
    /// Bound TCP addresses (ports resolved).
    pub tcp_addrs: Vec<SocketAddr>,
}

/// Depth of each TCP connection's outgoing queue.
const TCP_OUT_QUEUE: usize = 1024;

impl Transports {
    /// Binds every listener and starts the receive tasks.
    pub async fn start(
        cfg: TransportConfig,
        inbound: mpsc::Sender<Inbound>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Transports> {
        let mut udp = Vec::new();
        let mut udp_addrs = Vec::new();
        for addr in &cfg.udp {
            let sock = bind_udp(*addr, cfg.freebind)?;
            udp_addrs.push(sock.local_addr()?);
            udp.push(Arc::new(sock));
        }
        let mut listeners = Vec::new();
        let mut tcp_addrs = Vec::new();
        for addr in &cfg.tcp {
            let std_l = super::freebind::tcp_listener(*addr, cfg.freebind)?;
            std_l.set_nonblocking(true)?;
            let l = TcpListener::from_std(std_l)?;
            tcp_addrs.push(l.local_addr()?);
            listeners.push(l);
        }
        let t = Transports {
            udp,
            tcp_conns: Arc::default(),
            per_ip: Arc::default(),
            inbound,
            metrics,
            cfg: Arc::new(cfg),
            udp_addrs,
            tcp_addrs,
        };
        for l in listeners {
            tokio::spawn(t.clone().accept_loop(l));
        }
        Ok(t)
    }

    /// False while the send gate is closed: this member does not hold the VIP its
    /// sockets are bound to, and must not answer on it.
    fn may_send(&self) -> bool {
        let open = self
            .cfg
            .send_gate
            .as_ref()
            .is_none_or(|g| g.load(Ordering::Relaxed));
        if !open {
            self.metrics.inc(&self.metrics.vip_sends_dropped);
        }
        open
    }

    /// Sends bytes to a peer: UDP datagram, or the TCP connection to it (opened if needed).
    pub fn send(&self, to: Peer, bytes: Bytes) {
        if !self.may_send() {
            return;
        }
        match to.transport {
            Transport::Udp => match self.udp_index(to.addr).and_then(|i| self.udp.get(i)) {
                Some(s) => {
                    if s.try_send_to(&bytes, to.addr).is_err() {
                        self.metrics.inc(&self.metrics.udp_send_errors);
                    }
                }
                None => self.metrics.inc(&self.metrics.udp_send_errors),
            },
            Transport::Tcp => self.send_tcp(to.addr, bytes),
        }
    }

    /// Sends a batch and empties it: UDP datagrams leave many per system call, in order
    /// per socket; TCP messages go to their connections one by one.
    pub fn send_all(&self, batch: &mut Vec<(Peer, Bytes)>) {
        if !batch.is_empty() && !self.may_send() {
            batch.clear();
            return;
        }
        let mut udp: Vec<Vec<(SocketAddr, Bytes)>> = vec![Vec::new(); self.udp.len()];
        for (to, bytes) in batch.drain(..) {
            match (to.transport, self.udp_index(to.addr)) {
                (Transport::Udp, Some(i)) => udp[i].push((to.addr, bytes)),
                (Transport::Udp, None) => self.metrics.inc(&self.metrics.udp_send_errors),
                (Transport::Tcp, _) => self.send_tcp(to.addr, bytes),
            }
        }
        for (sock, msgs) in self.udp.iter().zip(udp) {
            if msgs.is_empty() {
                continue;
            }
            let slices: Vec<(SocketAddr, &[u8])> =
                msgs.iter().map(|(a, b)| (*a, b.as_ref())).collect();
            let fd = sock.as_raw_fd();
            let sent = sock
                .try_io(tokio::io::Interest::WRITABLE, || {
                    Ok(udp_batch::send_many(fd, &slices))
                })
                .unwrap_or(udp_batch::Sent {
                    ok: 0,
                    failed: slices.len(),
                });
            for _ in 0..sent.failed {
                self.metrics.inc(&self.metrics.udp_send_errors);
            }
        }
    }

    /// Which UDP socket sends to `to`: the first of its address family.
    fn udp_index(&self, to: SocketAddr) -> Option<usize> {
        // udp_addrs[i] is udp[i]'s bound address: no syscall per datagram.
        self.udp_addrs
            .iter()
            .position(|a| a.is_ipv6() == to.is_ipv6())
            .or((!self.udp.is_empty()).then_some(0))
    }

    fn send_tcp(&self, addr: SocketAddr, bytes: Bytes) {
        let existing = self
            .tcp_conns
            .lock()
            .ok()
            .and_then(|m| m.get(&addr).cloned());
        if let Some(tx) = existing {
            if tx.try_send(bytes).is_err() {
                self.metrics.inc(&self.metrics.tcp_send_errors);
            }
            return;
        }
        let t = self.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let tx = t.adopt(stream, addr);
                    if tx.try_send(bytes).is_err() {
                        t.metrics.inc(&t.metrics.tcp_send_errors);
                    }
                }
                _ => t.metrics.inc(&t.metrics.tcp_send_errors),
            }
        });
    }

    /// The reader of every UDP socket, for the core to poll.
    pub fn udp_ingress(&self) -> UdpIngress {
        UdpIngress {
            t: self.clone(),
            batch: udp_batch::RecvBatch::new(MAX_MESSAGE_SIZE + 1),
            next: 0,
        }
    }

    /// Counts a parsed message, or answers a malformed one (400/505/513 where it can
    /// be routed); the well-formed message goes on to the core.
    fn accept(
        &self,
        parsed: Result<SipMessage, ParseError>,
        from: Peer,
        received: std::time::Instant,
    ) -> Option<Inbound> {
        match parsed {
            Ok(msg) => {
                self.metrics.inc(&self.metrics.messages_in);
                Some(Inbound {
                    msg,
                    from,
                    received,
                })
            }
            Err(e) => {
                self.metrics.inc(&self.metrics.malformed);
                tracing::debug!(peer = %from.addr, reason = %e.reason, "malformed message");
                if let Some(reply) = e.reply() {
                    let to = e
                        .partial
                        .as_ref()
                        .map(|m| reply_target(m, from))
                        .unwrap_or(from);
                    self.send(to, reply.to_bytes());
                }
                None
            }
        }
    }

    /// Queues a message from a TCP connection for the core; a full queue answers a
    /// request 503 at once.
    fn deliver(&self, parsed: Result<SipMessage, ParseError>, from: Peer) {
        let Some(inbound) = self.accept(parsed, from, std::time::Instant::now()) else {
            return;
        };
        if let Err(e) = self.inbound.try_send(inbound) {
            self.metrics.inc(&self.metrics.dropped_overload);
            let Inbound { msg, from, .. } = e.into_inner();
            if msg.is_request() && msg.method() != Some(&message::Method::Ack) {
                let mut r = msg.response(503, "Service Unavailable");
                r.headers.push("Retry-After", "5");
                self.send(reply_target(&msg, from), r.to_bytes());
            }
        }
    }

    async fn accept_loop(self, listener: TcpListener) {
        loop {
            let (stream, addr) = match listener.accept().await {
                Ok(v) => v,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let total = self.tcp_conns.lock().map(|m| m.len()).unwrap_or(usize::MAX);
            let from_ip = self
                .per_ip
                .lock()
                .map(|m| m.get(&addr.ip()).copied().unwrap_or(0))
                .unwrap_or(usize::MAX);
            if total >= self.cfg.tcp_max_total || from_ip >= self.cfg.tcp_max_per_ip {
                self.metrics.inc(&self.metrics.tcp_refused);
                drop(stream);
                continue;
            }
            self.adopt(stream, addr);
        }
    }

    /// Registers a connection for reuse and starts its reader and writer.
    fn adopt(&self, stream: TcpStream, addr: SocketAddr) -> mpsc::Sender<Bytes> {
        let _ = stream.set_nodelay(true);
        let (tx, rx) = mpsc::channel::<Bytes>(TCP_OUT_QUEUE);
        if let Ok(mut m) = self.tcp_conns.lock() {
            m.insert(addr, tx.clone());
        }
        if let Ok(mut m) = self.per_ip.lock() {
            *m.entry(addr.ip()).or_default() += 1;
        }
        self.metrics
            .tcp_connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (reader, writer) = stream.into_split();
        tokio::spawn(write_loop(writer, rx));
        let t = self.clone();
        let pong = tx.clone();
        tokio::spawn(async move {
            t.read_loop(reader, addr, pong).await;
            t.forget(addr);
        });
        tx
    }

    fn forget(&self, addr: SocketAddr) {
        if let Ok(mut m) = self.tcp_conns.lock() {
            m.remove(&addr);
        }
        if let Ok(mut m) = self.per_ip.lock() {
            if let Some(n) = m.get_mut(&addr.ip()) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&addr.ip());
                }
            }
        }
        self.metrics
            .tcp_connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }

    async fn read_loop(
        &self,
        mut reader: tokio::net::tcp::OwnedReadHalf,
        addr: SocketAddr,
        out: mpsc::Sender<Bytes>,
    ) {
        let peer = Peer {
            transport: Transport::Tcp,
            addr,
        };
        let mut buf = BytesMut::with_capacity(8192);
        loop {
            // Frame everything already buffered before reading more.
            loop {
                // RFC 5626 §4.4.1: a double CRLF ping is answered with a single CRLF pong.
                if buf.starts_with(b"\r\n\r\n") {
                    buf.advance(4);
                    let _ = out.try_send(Bytes::from_static(b"\r\n"));
                    continue;
                }
                if buf.starts_with(b"\r\n") && buf.len() >= 2 && !buf[2..].starts_with(b"\r\n") {
                    buf.advance(2);
                    continue;
                }
                match frame_stream(&buf) {
                    Ok(Some(len)) => {
                        let frame = buf.split_to(len);
                        self.deliver(message::parse(&frame), peer);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        // A stream that cannot be framed cannot be resynchronised: answer if
                        // possible, then close.
                        self.metrics.inc(&self.metrics.malformed);
                        if let Err(pe) = message::parse(&buf[..buf.len().min(MAX_MESSAGE_SIZE)]) {
                            if let Some(r) = pe.reply() {
                                let _ = out.try_send(r.to_bytes());
                            }
                        } else if let Ok(m) =
                            message::parse(&buf[..buf.len().min(MAX_MESSAGE_SIZE)])
                        {
                            if m.is_request() {
                                let _ = out.try_send(m.response(e.status, &e.reason).to_bytes());
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        return;
                    }
                }
            }
            let read = tokio::time::timeout(self.cfg.tcp_idle_timeout, reader.read_buf(&mut buf));
            match read.await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => {}
                Err(_) => {
                    self.metrics.inc(&self.metrics.tcp_idle_closed);
                    return;
                }
            }
        }
    }
}

async fn write_loop(mut writer: tokio::net::tcp::OwnedWriteHalf, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(b) = rx.recv().await {
        if writer.write_all(&b).await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}

/// Socket buffer sizes for SIP over UDP: bursts of thousands of datagrams must wait in
/// the kernel while the core works through a batch, instead of being dropped.
const UDP_RCVBUF: libc::c_int = 16 << 20;
const UDP_SNDBUF: libc::c_int = 4 << 20;

/// Reads the UDP sockets for the core: batches of datagrams, parsed, with the time
/// each waited in the kernel queue folded into [`Inbound::received`].
pub struct UdpIngress {
    t: Transports,
    batch: udp_batch::RecvBatch,
    /// Socket to read first next time, so one busy socket cannot starve another.
    next: usize,
}

impl UdpIngress {
    /// Reads up to about `max` datagrams that are already queued (never waits) and
    /// appends the well-formed ones to `out`; returns how many datagrams were read.
    pub fn read_ready(&mut self, max: usize, out: &mut Vec<Inbound>) -> usize {
        let socks = self.t.udp.len();
        let mut read = 0;
        for k in 0..socks {
            let i = (self.next + k) % socks;
            let sock = self.t.udp[i].clone();
            let fd = sock.as_raw_fd();
            while read < max {
                let n = match sock.try_io(tokio::io::Interest::READABLE, || self.batch.recv(fd)) {
                    Ok(n) => n,
                    // WouldBlock (tokio now waits for the next readiness edge), or an
                    // ICMP error surfacing on Linux: neither is fatal.
                    Err(_) => break,
                };
                read += n;
                let now = std::time::Instant::now();
                for j in 0..n {
                    let Some(d) = self.batch.get(j) else { continue };
                    if d.data.iter().all(|b| *b == b'\r' || *b == b'\n') {
                        continue; // keep-alive
                    }
                    if d.truncated || d.data.len() > MAX_MESSAGE_SIZE {
                        self.t.metrics.inc(&self.t.metrics.dropped_oversize);
                        continue;
                    }
                    let peer = Peer {
                        transport: Transport::Udp,
                        addr: d.from,
                    };
                    let received = now.checked_sub(d.queued).unwrap_or(now);
                    out.extend(self.t.accept(message::parse(d.data), peer, received));
                }
                if n < udp_batch::RECV_BATCH {
                    break;
                }
            }
        }
        self.next = (self.next + 1) % socks.max(1);
        read
    }

    /// Waits until some UDP socket may have datagrams (forever when there is none).
    pub async fn readable(&self) {
        std::future::poll_fn(|cx| {
            for sock in &self.t.udp {
                if sock.poll_recv_ready(cx).is_ready() {
                    return std::task::Poll::Ready(());
                }
            }
            std::task::Poll::Pending
        })
        .await
    }
}

fn bind_udp(addr: SocketAddr, freebind: bool) -> std::io::Result<UdpSocket> {
    let std_sock = super::freebind::udp(addr, freebind)?;
    std_sock.set_nonblocking(true)?;
    if let Err(e) = udp_batch::enable_timestamps(std_sock.as_raw_fd()) {
        // Without stamps the queueing delay before the core reads is not seen.
        tracing::warn!(error = %e, "SO_TIMESTAMPNS unavailable");
    }
    set_buffer(&std_sock, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, UDP_RCVBUF);
    set_buffer(&std_sock, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, UDP_SNDBUF);
    UdpSocket::from_std(std_sock)
}

/// Sets a socket buffer size: the `FORCE` option passes `net.core.rmem_max` when the
/// process may (CAP_NET_ADMIN); otherwise the plain option gets what the limit allows.
fn set_buffer(
    sock: &std::net::UdpSocket,
    force: libc::c_int,
    plain: libc::c_int,
    size: libc::c_int,
) {
    use std::os::fd::AsRawFd;
    let fd = sock.as_raw_fd();
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let value = &size as *const libc::c_int as *const libc::c_void;
    // SAFETY: fd is a valid open socket for the duration of the call, and value points
    // to a c_int of the length given.
    let forced = unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, force, value, len) } == 0;
    if !forced {
        // SAFETY: as above.
        let _ = unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, plain, value, len) };
    }
}

/// Where a response to `req` goes (RFC 3261 §18.2.2, RFC 3581): back over the same
/// connection for streams; for UDP to the source IP, and to the source port when the
/// Via asked for `rport`, else to the Via port.
pub fn reply_target(req: &SipMessage, from: Peer) -> Peer {
    if from.is_reliable() {
        return from;
    }
    let Some(via) = req.top_via() else {
        return from;
    };
    if via.has_param("rport") {
        return from;
    }
    Peer {
        transport: from.transport,
        addr: SocketAddr::new(from.addr.ip(), via.port.unwrap_or(5060)),
    }
}

/// Records `received` and `rport` on the top Via of a request (RFC 3261 §18.2.1, RFC 3581).
pub fn stamp_via(req: &mut SipMessage, from: Peer) {
    let Some(mut via) = req.top_via() else { return };
    let ip = from.addr.ip().to_string();
    let mut changed = false;
    if via.host != ip {
        via.set_param("received", Some(ip));
        changed = true;
    }
    if via.has_param("rport") && via.param("rport").is_some_and(str::is_empty) {
        via.set_param("rport", Some(from.addr.port().to_string()));
        via.set_param("received", Some(from.addr.ip().to_string()));
        changed = true;
    }
    if changed {
        req.headers.set_first("Via", via.to_header());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(via: &str) -> SipMessage {
        let text = format!("OPTIONS sip:a@b SIP/2.0\r\nVia: {via}\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n");
        message::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn rport_and_received() {
        let from = Peer {
            transport: Transport::Udp,
            addr: "192.0.2.7:40000".parse().unwrap(),
        };
        let mut m = req("SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bK1;rport");
        stamp_via(&mut m, from);
        let v = m.top_via().unwrap();
        assert_eq!(v.param("received"), Some("192.0.2.7"));
        assert_eq!(v.param("rport"), Some("40000"));
        assert_eq!(reply_target(&m, from).addr, from.addr);

        let mut m = req("SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bK1");
        stamp_via(&mut m, from);
        assert_eq!(m.top_via().unwrap().param("received"), Some("192.0.2.7"));
        assert_eq!(
            reply_target(&m, from).addr,
            "192.0.2.7:5062".parse().unwrap()
        );

        let mut m = req("SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bK1");
        stamp_via(&mut m, from);
        assert_eq!(m.top_via().unwrap().param("received"), None);
    }
}
