//! The DPDK kernel-bypass relay backend (cargo feature `dpdk`): one DPDK port (a
//! NIC, or a virtual device such as `net_af_packet`, `net_af_xdp` or `net_ring`)
//! is served by a polling thread that answers ARP for the relay's IPv4 address and
//! relays the UDP datagrams sent to session ports, rewriting each frame in place
//! (MACs, addresses, ports, checksums) and sending in bursts; the kernel never sees
//! them. The session API is the batched-UDP backend's ([`crate::udp`]), with its
//! types.
//!
//! ```no_run
//! # fn main() -> Result<(), media::udp::RelayError> {
//! use media::dpdk::{DpdkConfig, DpdkRelay};
//! use media::session::PeerMedia;
//! let relay = DpdkRelay::start(DpdkConfig {
//!     eal_args: ["--no-huge", "--no-pci", "--no-shconf", "--vdev=net_af_packet0,iface=veth0"]
//!         .map(String::from)
//!         .to_vec(),
//!     address: "192.0.2.10".parse().unwrap(),
//!     ..DpdkConfig::default()
//! })?;
//! let s = relay.create_session(PeerMedia::unknown(), PeerMedia::unknown())?;
//! # let _ = s; Ok(()) }
//! ```

mod worker;

use std::collections::HashMap;
use std::ffi::{c_char, CStr, CString};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The raw FFI (for load generators and tests that drive DPDK devices themselves).
pub use dpdk_sys as sys;

use crate::arp::ArpConfig;
use crate::ports::{PortAllocator, PortPair, PortRange};
use crate::session::{PeerMedia, Session, SessionConfig, SessionStats, Side, DEFAULT_RTP_TIMEOUT};
use crate::udp::{
    check_adopted_pairs, reserve_error, RelayCounters, RelayError, RelayEvent, SessionId,
    SessionPorts,
};
use crate::wire::Mac;
use worker::{Command, Counters, Link, Pool, WorkerParts};

pub use worker::BURST;

/// How long a control call waits for the forwarding thread's answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// DPDK backend settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpdkConfig {
    /// EAL arguments (without the program name), e.g. `--no-huge --no-pci
    /// --no-shconf --vdev=net_af_packet0,iface=veth0`. EAL starts once per process:
    /// the first relay's arguments apply.
    pub eal_args: Vec<String>,
    /// DPDK port id of the device to serve (0: the first one).
    pub port: u16,
    /// The relay's IPv4 address: ARP is answered for it and the SDP names it.
    pub address: Ipv4Addr,
    /// Prefix length of the relay's subnet: destinations outside go to `gateway`.
    pub prefix_len: u8,
    /// Next hop for destinations outside the subnet; none = every destination is
    /// resolved directly (on one L2 segment, or learned from its own packets).
    pub gateway: Option<Ipv4Addr>,
    /// Source MAC; none = the device's own (set: the port goes promiscuous).
    /// `rx_descriptors`, `tx_descriptors` and `mbufs` apply when the port is first
    /// started in the process; a later relay on it takes it over as it runs.
    pub mac: Option<Mac>,
    /// Port range for RTP/RTCP pairs.
    pub ports: PortRange,
    /// RTP timeout.
    pub rtp_timeout: Duration,
    /// Most simultaneous sessions (each takes two port pairs).
    pub max_sessions: usize,
    /// Events waiting for the owner; beyond it they are counted as lost.
    pub event_queue: usize,
    /// Commands waiting for the forwarding thread; beyond it calls fail with
    /// [`RelayError::Busy`].
    pub command_queue: usize,
    /// Packet buffers in the pool (in flight in the device rings and the relay).
    pub mbufs: u32,
    /// Receive descriptors of the queue.
    pub rx_descriptors: u16,
    /// Transmit descriptors of the queue.
    pub tx_descriptors: u16,
    /// Sleep between polls after a while without traffic; zero = poll without pause
    /// (lowest latency, one core always busy).
    pub idle_sleep: Duration,
    /// CPU the polling thread is pinned to; none = wherever the scheduler puts it.
    pub cpu: Option<usize>,
    /// Neighbour table settings.
    pub arp: ArpConfig,
}

/// EAL arguments for virtual devices only: no hugepages, no PCI scan, no shared
/// configuration or telemetry, lcore 0, `memory_mb` of memory, warnings only. Add the
/// `--vdev=...` of the device to serve.
pub fn virtual_eal_args(memory_mb: u32) -> Vec<String> {
    [
        "--no-huge",
        "--no-pci",
        "--no-shconf",
        "--no-telemetry",
        "-l",
        "0",
        "-m",
    ]
    .map(String::from)
    .into_iter()
    .chain([memory_mb.to_string(), "--log-level=lib.eal:warning".into()])
    .collect()
}

impl Default for DpdkConfig {
    fn default() -> DpdkConfig {
        DpdkConfig {
            eal_args: Vec::new(),
            port: 0,
            address: Ipv4Addr::UNSPECIFIED,
            prefix_len: 24,
            gateway: None,
            mac: None,
            ports: PortRange::default(),
            rtp_timeout: DEFAULT_RTP_TIMEOUT,
            max_sessions: 2500,
            event_queue: 4096,
            command_queue: 1024,
            mbufs: 8191,
            rx_descriptors: 1024,
            tx_descriptors: 1024,
            idle_sleep: Duration::from_micros(50),
            cpu: None,
            arp: ArpConfig::default(),
        }
    }
}

/// The backend's counters, beyond the relay-wide ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DpdkCounters {
    /// Frames received on the port.
    pub received: u64,
    /// Datagrams relayed.
    pub forwarded: u64,
    /// UDP payload bytes of the datagrams relayed.
    pub bytes: u64,
    /// Datagrams for the relay address not relayed (session decision, no session
    /// on the port, next hop unresolved, jumbo frame).
    pub dropped: u64,
    /// Datagrams the device did not take.
    pub send_failed: u64,
    /// Of `dropped`: frames in more than one buffer (jumbo).
    pub truncated: u64,
    /// Events lost because the event queue was full.
    pub events_lost: u64,
    /// Frames not for the relay (other addresses, protocols, EtherTypes).
    pub ignored: u64,
    /// Of `dropped`: to a port of no session.
    pub no_session: u64,
    /// Of `dropped`: the next hop's MAC was not known yet (an ARP request went out).
    pub arp_pending: u64,
    /// ARP requests for the relay address answered.
    pub arp_replies: u64,
    /// ARP requests sent.
    pub arp_requests: u64,
    /// Neighbour entries learned or changed.
    pub arp_learned: u64,
    /// Receive polls of the port.
    pub polls: u64,
    /// Of `polls`: polls that found nothing (the rest of the time the core relays).
    pub idle_polls: u64,
    /// Nanoseconds spent on polls that found frames (parse, decide, rewrite, send):
    /// `forwarded / busy_nanos` is the core's relaying capacity.
    pub busy_nanos: u64,
}

fn dpdk_error(what: &str) -> RelayError {
    // SAFETY: rte_strerror returns a static or thread-local C string.
    let reason = unsafe {
        let e = sys::ss_errno();
        let s = sys::rte_strerror(e);
        if s.is_null() {
            format!("error {e}")
        } else {
            CStr::from_ptr(s).to_string_lossy().into_owned()
        }
    };
    RelayError::Io(io::Error::other(format!("{what}: {reason}")))
}

fn setup_error(what: &str, code: i32) -> RelayError {
    // SAFETY: as above.
    let reason = unsafe {
        let s = sys::rte_strerror(-code);
        if s.is_null() {
            format!("error {code}")
        } else {
            CStr::from_ptr(s).to_string_lossy().into_owned()
        }
    };
    RelayError::Io(io::Error::other(format!("{what}: {reason}")))
}

static EAL: OnceLock<Result<(), String>> = OnceLock::new();

/// Starts the DPDK environment abstraction layer with `args` (without the program
/// name), once per process; later calls return the first call's outcome.
///
/// EAL pins the thread that starts it to its main lcore, so it runs on a thread of
/// its own that then ends, leaving the caller's affinity alone.
pub fn init_eal(args: &[String]) -> Result<(), RelayError> {
    let r = EAL.get_or_init(|| {
        let args = args.to_vec();
        let t = std::thread::Builder::new().name("dpdk-eal".into()).spawn(
            move || -> Result<(), String> {
                let mut owned = Vec::with_capacity(args.len() + 1);
                for a in std::iter::once("softswitch".to_string()).chain(args) {
                    owned.push(
                        CString::new(a.clone())
                            .map_err(|_| format!("EAL argument {a:?} contains a NUL byte"))?,
                    );
                }
                // EAL may keep pointers into argv: it lives as long as the process.
                let argv: &'static mut [*mut c_char] = Box::leak(
                    owned
                        .into_iter()
                        .map(CString::into_raw)
                        .collect::<Vec<_>>()
                        .into_boxed_slice(),
                );
                // SAFETY: argc/argv describe NUL-terminated strings that are never freed.
                let rc = unsafe { sys::rte_eal_init(argv.len() as i32, argv.as_mut_ptr()) };
                if rc < 0 {
                    return Err(match dpdk_error("rte_eal_init") {
                        RelayError::Io(e) => e.to_string(),
                        other => other.to_string(),
                    });
                }
                Ok(())
            },
        );
        match t {
            Ok(t) => t
                .join()
                .unwrap_or_else(|_| Err("rte_eal_init panicked".into())),
            Err(e) => Err(format!("cannot start the EAL thread: {e}")),
        }
    });
    r.clone().map_err(|e| RelayError::Io(io::Error::other(e)))
}

/// Per-port state kept for the process: the pool (never freed, DPDK drivers may
/// still reference its buffers), whether the port was started and whether a relay
/// serves it now. A started port stays started when its relay stops: some virtual
/// devices (`net_af_packet`) close their sockets on stop and cannot start again.
struct PortState {
    pool: Arc<Pool>,
    started: bool,
    in_use: bool,
}

fn ports() -> MutexGuard<'static, HashMap<u16, PortState>> {
    static PORTS: OnceLock<Mutex<HashMap<u16, PortState>>> = OnceLock::new();
    PORTS
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Configures and starts `port` with one queue pair; returns its pool and MAC.
fn start_port(cfg: &DpdkConfig) -> Result<(Arc<Pool>, Mac), RelayError> {
    let port = cfg.port;
    // SAFETY: plain calls on a port id; every result is checked.
    unsafe {
        if sys::rte_eth_dev_is_valid_port(port) == 0 {
            return Err(RelayError::Io(io::Error::other(format!(
                "no DPDK port {port} ({} available; check the --vdev/-a EAL arguments)",
                sys::rte_eth_dev_count_avail()
            ))));
        }
    }
    let mut table = ports();
    if table.get(&port).is_some_and(|p| p.in_use) {
        return Err(RelayError::Io(io::Error::other(format!(
            "DPDK port {port} is already served by a relay"
        ))));
    }
    // SAFETY: valid port id.
    let socket = unsafe { sys::rte_eth_dev_socket_id(port) };
    if let Some(p) = table.get_mut(&port).filter(|p| p.started) {
        // Taken over as it runs; its queues keep the first relay's settings.
        p.in_use = true;
        let pool = p.pool.clone();
        drop(table);
        return match port_mac(cfg) {
            Ok(mac) => Ok((pool, mac)),
            Err(e) => {
                release_port(port);
                Err(e)
            }
        };
    }
    let pool = match table.get(&port) {
        Some(p) => p.pool.clone(),
        None => {
            let name = CString::new(format!("ss_mbufs_{port}"))
                .map_err(|e| RelayError::Io(io::Error::other(e)))?;
            // SAFETY: a NUL-terminated name; sizes within DPDK's limits.
            let mp = unsafe {
                sys::rte_pktmbuf_pool_create(
                    name.as_ptr(),
                    cfg.mbufs.max(1023),
                    256,
                    0,
                    sys::RTE_MBUF_DEFAULT_BUF_SIZE as u16,
                    socket,
                )
            };
            if mp.is_null() {
                return Err(dpdk_error("rte_pktmbuf_pool_create"));
            }
            Arc::new(Pool(mp))
        }
    };
    table.insert(
        port,
        PortState {
            pool: pool.clone(),
            started: false,
            in_use: false,
        },
    );
    let queue_socket = if socket < 0 { 0 } else { socket as u32 };
    // SAFETY: rte_eth_conf is plain data for which all-zero means the defaults;
    // the port was never started in this process.
    unsafe {
        let conf: sys::rte_eth_conf = std::mem::zeroed();
        let rc = sys::rte_eth_dev_configure(port, 1, 1, &conf);
        if rc < 0 {
            return Err(setup_error("rte_eth_dev_configure", rc));
        }
        let rc = sys::rte_eth_rx_queue_setup(
            port,
            0,
            cfg.rx_descriptors,
            queue_socket,
            std::ptr::null(),
            pool.0,
        );
        if rc < 0 {
            return Err(setup_error("rte_eth_rx_queue_setup", rc));
        }
        let rc = sys::rte_eth_tx_queue_setup(
            port,
            0,
            cfg.tx_descriptors,
            queue_socket,
            std::ptr::null(),
        );
        if rc < 0 {
            return Err(setup_error("rte_eth_tx_queue_setup", rc));
        }
        let rc = sys::rte_eth_dev_start(port);
        if rc < 0 {
            return Err(setup_error("rte_eth_dev_start", rc));
        }
    }
    if let Some(p) = table.get_mut(&port) {
        p.started = true;
        p.in_use = true;
    }
    drop(table);
    match port_mac(cfg) {
        Ok(mac) => Ok((pool, mac)),
        Err(e) => {
            release_port(port);
            Err(e)
        }
    }
}

/// The MAC the relay sends from: the configured one (the port then goes
/// promiscuous, or frames to it would not reach us) or the device's.
fn port_mac(cfg: &DpdkConfig) -> Result<Mac, RelayError> {
    let port = cfg.port;
    if let Some(mac) = cfg.mac {
        // SAFETY: a started, valid port.
        let rc = unsafe { sys::rte_eth_promiscuous_enable(port) };
        if rc < 0 {
            return Err(setup_error("rte_eth_promiscuous_enable", rc));
        }
        return Ok(mac);
    }
    let mut addr = sys::rte_ether_addr::default();
    // SAFETY: valid port, valid out-pointer.
    let rc = unsafe { sys::rte_eth_macaddr_get(port, &mut addr) };
    if rc < 0 {
        return Err(setup_error("rte_eth_macaddr_get", rc));
    }
    Ok(addr.addr_bytes)
}

/// Marks `port` free for another relay; it keeps running (see [`PortState`]).
fn release_port(port: u16) {
    if let Some(p) = ports().get_mut(&port) {
        p.in_use = false;
    }
}

struct Control {
    ports: PortAllocator,
    sessions: HashMap<SessionId, (PortPair, PortPair)>,
    next_id: u64,
}

/// A running DPDK relay: the same session calls as [`crate::udp::RelayHandle`].
/// Dropping it stops the forwarding thread; the port stays started for another
/// relay of the same process to take over.
pub struct DpdkRelay {
    control: Mutex<Control>,
    commands: SyncSender<Command>,
    events: Mutex<Receiver<RelayEvent>>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
    config: DpdkConfig,
    mac: Mac,
}

impl DpdkRelay {
    /// Starts EAL (first call in the process), the port and the forwarding thread.
    pub fn start(config: DpdkConfig) -> Result<DpdkRelay, RelayError> {
        if config.address.is_unspecified() {
            return Err(RelayError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the DPDK relay needs its own IPv4 address",
            )));
        }
        let allocator = PortAllocator::new(config.ports)?;
        init_eal(&config.eal_args)?;
        let (pool, mac) = start_port(&config)?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let (events_tx, events_rx) = sync_channel(config.event_queue.max(1));
        let (commands_tx, commands_rx) = sync_channel(config.command_queue.max(1));
        let mask = match config.prefix_len.min(32) {
            0 => 0,
            n => u32::MAX << (32 - u32::from(n)),
        };
        let parts = WorkerParts {
            link: Link {
                port: config.port,
                mac,
                ip: config.address,
                mask,
                gateway: config.gateway,
            },
            pool,
            arp: config.arp,
            commands: commands_rx,
            events: events_tx,
            stop: stop.clone(),
            counters: counters.clone(),
            scan_every: (config.rtp_timeout / 4)
                .clamp(Duration::from_millis(10), Duration::from_secs(1)),
            idle_sleep: config.idle_sleep,
            cpu: config.cpu,
        };
        let thread = std::thread::Builder::new()
            .name(format!("media-dpdk-{}", config.port))
            .spawn(move || worker::run(parts));
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                release_port(config.port);
                return Err(e.into());
            }
        };
        Ok(DpdkRelay {
            control: Mutex::new(Control {
                ports: allocator,
                sessions: HashMap::new(),
                next_id: 1,
            }),
            commands: commands_tx,
            events: Mutex::new(events_rx),
            stop,
            counters,
            thread: Some(thread),
            config,
            mac,
        })
    }

    fn control(&self) -> MutexGuard<'_, Control> {
        // A panic while holding the lock leaves plain data behind: keep going.
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, cmd: Command) -> Result<(), RelayError> {
        match self.commands.try_send(cmd) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(RelayError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(RelayError::WorkerGone),
        }
    }

    /// The MAC the relay sends from.
    pub fn mac(&self) -> Mac {
        self.mac
    }

    /// The relay's IPv4 address (what the SDP names).
    pub fn address(&self) -> Ipv4Addr {
        self.config.address
    }

    /// Opens a session: two port pairs of the relay address, one per side.
    pub fn create_session(&self, a: PeerMedia, b: PeerMedia) -> Result<SessionPorts, RelayError> {
        let mut c = self.control();
        if c.sessions.len() >= self.config.max_sessions {
            return Err(RelayError::TooManySessions(self.config.max_sessions));
        }
        let pa = c.ports.allocate().ok_or(RelayError::PortsExhausted)?;
        let Some(pb) = c.ports.allocate() else {
            let _ = c.ports.release(pa.rtp);
            return Err(RelayError::PortsExhausted);
        };
        self.open(&mut c, a, b, pa, pb)
    }

    /// Opens a session on exactly the port pairs `a` and `b`, for a relay that
    /// continues another one's calls (see [`crate::udp::RelayHandle::adopt_session`]):
    /// the ports are only entries of this relay's table, so any pair of the range
    /// that no session of this relay holds can be taken.
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
        let pa = c.ports.reserve(a.rtp).map_err(reserve_error)?;
        let pb = match c.ports.reserve(b.rtp) {
            Ok(p) => p,
            Err(e) => {
                let _ = c.ports.release(pa.rtp);
                return Err(reserve_error(e));
            }
        };
        self.open(&mut c, a_peer, b_peer, pa, pb)
    }

    /// Hands a session on its allocated pairs to the forwarding thread; on failure
    /// the pairs go back to the allocator.
    fn open(
        &self,
        c: &mut Control,
        a: PeerMedia,
        b: PeerMedia,
        pa: PortPair,
        pb: PortPair,
    ) -> Result<SessionPorts, RelayError> {
        let id = SessionId(c.next_id);
        c.next_id += 1;
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
            a: pa,
            b: pb,
        };
        if let Err(e) = self.send(cmd) {
            let _ = c.ports.release(pa.rtp);
            let _ = c.ports.release(pb.rtp);
            return Err(e);
        }
        c.sessions.insert(id, (pa, pb));
        Ok(SessionPorts {
            id,
            addr: IpAddr::V4(self.config.address),
            a: pa,
            b: pb,
        })
    }

    /// Applies a new SDP from `side`; the side latches again on its next packets.
    pub fn update(&self, id: SessionId, side: Side, peer: PeerMedia) -> Result<(), RelayError> {
        if !self.control().sessions.contains_key(&id) {
            return Err(RelayError::UnknownSession(id));
        }
        self.send(Command::Update { id, side, peer })
    }

    fn ask(
        &self,
        id: SessionId,
        make: impl FnOnce(SyncSender<Option<SessionStats>>) -> Command,
    ) -> Result<SessionStats, RelayError> {
        let (tx, rx) = sync_channel(1);
        self.send(make(tx))?;
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
        if !self.control().sessions.contains_key(&id) {
            return Err(RelayError::UnknownSession(id));
        }
        self.ask(id, |reply| Command::Stats { id, reply })
    }

    /// Closes the session and returns its final counters; its ports go back to
    /// the allocator.
    pub fn destroy(&self, id: SessionId) -> Result<SessionStats, RelayError> {
        let (a, b) = self
            .control()
            .sessions
            .remove(&id)
            .ok_or(RelayError::UnknownSession(id))?;
        let result = self.ask(id, |reply| Command::Remove { id, reply });
        let mut c = self.control();
        let _ = c.ports.release(a.rtp);
        let _ = c.ports.release(b.rtp);
        result
    }

    /// The next session event, waiting up to `timeout`.
    pub fn next_event(&self, timeout: Duration) -> Option<RelayEvent> {
        let rx = self.events.lock().unwrap_or_else(|e| e.into_inner());
        rx.recv_timeout(timeout).ok()
    }

    /// Relay-wide counters, as the UDP backend reports them.
    pub fn counters(&self) -> RelayCounters {
        let d = self.dpdk_counters();
        RelayCounters {
            sessions: self.control().sessions.len(),
            forwarded: d.forwarded,
            bytes: d.bytes,
            dropped: d.dropped,
            send_failed: d.send_failed,
            truncated: d.truncated,
            events_lost: d.events_lost,
            kernel_forwarded: 0,
            kernel_bytes: 0,
        }
    }

    /// Every counter of the backend.
    pub fn dpdk_counters(&self) -> DpdkCounters {
        let c = &self.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        DpdkCounters {
            received: get(&c.received),
            forwarded: get(&c.forwarded),
            bytes: get(&c.bytes),
            dropped: get(&c.dropped),
            send_failed: get(&c.send_failed),
            truncated: get(&c.truncated),
            events_lost: get(&c.events_lost),
            ignored: get(&c.ignored),
            no_session: get(&c.no_session),
            arp_pending: get(&c.arp_pending),
            arp_replies: get(&c.arp_replies),
            arp_requests: get(&c.arp_requests),
            arp_learned: get(&c.arp_learned),
            polls: get(&c.polls),
            idle_polls: get(&c.idle_polls),
            busy_nanos: get(&c.busy_nanos),
        }
    }

    /// Port pairs free now.
    pub fn ports_available(&self) -> usize {
        self.control().ports.available()
    }
}

impl Drop for DpdkRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        release_port(self.config.port);
    }
}
