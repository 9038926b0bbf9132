//! Node configuration: one TOML file, every field optional with a documented default.
//!
//! Unknown fields are rejected (`deny_unknown_fields`) and every value is checked by
//! [`NodeConfig::validate`], so a typo or a bad value stops the node with the field named.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File that failed.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// TOML syntax error, unknown field or wrong type (toml names the field).
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// A value out of range; names the field.
    #[error("invalid configuration: field `{field}`: {reason}")]
    Invalid {
        /// Dotted field name, e.g. `registrar.min_expires`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// The whole node configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// `[node]`: identity and storage.
    pub node: NodeSection,
    /// `[sip]`: listeners, timers and limits.
    pub sip: SipSection,
    /// `[registrar]`: registration policy and digest authentication.
    pub registrar: RegistrarSection,
    /// `[calls]`: B2BUA policy.
    pub calls: CallsSection,
    /// `[pbx]`: where the PBX data comes from at first start.
    pub pbx: PbxSection,
    /// `[admin]`: the HTTP listener for operators and `switchctl`.
    pub admin: AdminSection,
    /// `[cluster]`: Raft replication between nodes.
    pub cluster: ClusterSection,
    /// `[media]`: the RTP relay calls' media is anchored on.
    pub media: MediaSection,
    /// `[vip]`: the virtual IP phones and trunks use, held by the Raft leader.
    pub vip: VipSection,
    /// `[log]`: logging.
    pub log: LogSection,
    /// `[notify]`: who is told about VIP switchovers, and how.
    pub notify: crate::notify::NotifySection,
}

/// `[node]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSection {
    /// Node id within the cluster (default 1).
    pub id: u64,
    /// Directory of the RocksDB store and generated files (default `./data`).
    pub data_dir: PathBuf,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            id: 1,
            data_dir: PathBuf::from("./data"),
        }
    }
}

/// `[sip]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipSection {
    /// UDP listen addresses (default `["0.0.0.0:5060"]`).
    pub udp: Vec<SocketAddr>,
    /// TCP listen addresses (default `["0.0.0.0:5060"]`; empty disables TCP).
    pub tcp: Vec<SocketAddr>,
    /// Host written into Via, Contact and Record-Route; empty = the local address the
    /// kernel routes toward each peer.
    pub advertised_host: String,
    /// Value of the User-Agent and Server headers.
    pub user_agent: String,
    /// RFC 3261 T1 in milliseconds (default 500).
    pub t1_ms: u64,
    /// RFC 3261 T2 in milliseconds (default 4000).
    pub t2_ms: u64,
    /// RFC 3261 T4 in milliseconds (default 5000).
    pub t4_ms: u64,
    /// Most open transactions; beyond it new requests get 503 (default 1000000).
    pub max_transactions: usize,
    /// Close a TCP connection idle this long, in seconds (default 300).
    pub tcp_idle_timeout_secs: u64,
    /// Most TCP connections from one IP address (default 64).
    pub tcp_max_connections_per_ip: usize,
    /// Most TCP connections in all (default 10000).
    pub tcp_max_connections: usize,
    /// Depth of the queue between the transports and the SIP core; a full queue answers 503 (default 50000).
    pub queue_depth: usize,
    /// New INVITEs and REGISTERs that waited longer than this in that queue are answered
    /// 503 with Retry-After instead of being processed late (default 1000 ms: by then the
    /// client has retransmitted twice, and the node is behind rather than hiccuping).
    pub max_queue_delay_ms: u64,
}

impl Default for SipSection {
    fn default() -> Self {
        let any: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 5060));
        SipSection {
            udp: vec![any],
            tcp: vec![any],
            advertised_host: String::new(),
            user_agent: format!("softswitch/{}", env!("CARGO_PKG_VERSION")),
            t1_ms: 500,
            t2_ms: 4000,
            t4_ms: 5000,
            max_transactions: 1_000_000,
            tcp_idle_timeout_secs: 300,
            tcp_max_connections_per_ip: 64,
            tcp_max_connections: 10_000,
            queue_depth: 50_000,
            max_queue_delay_ms: 1000,
        }
    }
}

/// `[registrar]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrarSection {
    /// Digest realm (default `softswitch`).
    pub realm: String,
    /// Shortest registration accepted, seconds; shorter gets 423 (default 60).
    pub min_expires: u32,
    /// Longest registration granted, seconds; longer is cut to this (default 7200).
    pub max_expires: u32,
    /// Registration length when the phone asks for none, seconds (default 1800).
    pub default_expires: u32,
    /// Contacts per extension unless the extension says otherwise (default 2).
    pub max_contacts: usize,
    /// Lifetime of a digest nonce, seconds; older ones get `stale=true` (default 30).
    pub nonce_ttl_secs: u64,
    /// Digest algorithms offered, in preference order (default `["SHA-256", "MD5"]`).
    pub algorithms: Vec<String>,
}

impl Default for RegistrarSection {
    fn default() -> Self {
        RegistrarSection {
            realm: "softswitch".into(),
            min_expires: 60,
            max_expires: 7200,
            default_expires: 1800,
            max_contacts: 2,
            nonce_ttl_secs: 30,
            algorithms: vec!["SHA-256".into(), "MD5".into()],
        }
    }
}

/// `[calls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallsSection {
    /// Seconds a call may ring before it is given up with 480 (default 30).
    pub ring_timeout_secs: u64,
    /// Most simultaneous calls; beyond it INVITEs get 503 (default 20000).
    pub max_calls: usize,
}

impl Default for CallsSection {
    fn default() -> Self {
        CallsSection {
            ring_timeout_secs: 30,
            max_calls: 20_000,
        }
    }
}

/// `[pbx]`
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PbxSection {
    /// YAML file loaded into the store at first start; empty = a demo PBX with
    /// extensions 1001-1010 and generated passwords.
    pub seed: Option<PathBuf>,
}

/// `[media]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaSection {
    /// Relay every call's RTP through this node (default true). False: SDP passes
    /// unchanged and media flows between the phones directly.
    pub enabled: bool,
    /// Address the relay's sockets bind to (default `0.0.0.0`: every address; the SDP
    /// names the address each phone reaches this node at).
    pub listen: std::net::IpAddr,
    /// Lowest RTP port (default 10000).
    pub port_min: u16,
    /// Highest port (default 20000); each call takes two RTP/RTCP pairs.
    pub port_max: u16,
    /// A side that sends no RTP this long ends the call (default 60 s).
    pub rtp_timeout_secs: u64,
    /// Forwarding threads (default 1; the `udp` backend).
    pub threads: usize,
    /// Packet I/O backend: `udp` (kernel sockets, default) or `dpdk` (kernel
    /// bypass; needs a build with the `dpdk` feature and `[media.dpdk]`).
    pub backend: MediaBackend,
    /// `[media.dpdk]`: the DPDK backend's device and address.
    pub dpdk: DpdkSection,
    /// Forward latched, sendrecv RTP in the kernel (TC classifier, `media::kernel`;
    /// default false). The `udp` backend only; needs root, `listen` a specific IPv4
    /// address and `kernel_program`.
    pub kernel_forwarding: bool,
    /// Interface the classifier is attached to and forwards out of (default `lo`).
    pub kernel_interface: String,
    /// The classifier: a BPF object, or `media/bpf/relay_tc.c` itself (compiled with
    /// clang at start); relative to the TOML file.
    pub kernel_program: Option<PathBuf>,
}

/// `media.backend`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MediaBackend {
    /// Batched kernel UDP sockets.
    #[default]
    Udp,
    /// DPDK kernel bypass.
    Dpdk,
}

/// `[media.dpdk]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DpdkSection {
    /// EAL arguments, e.g. `["--no-huge", "--no-pci", "--vdev=net_af_packet0,iface=eth1"]`.
    pub eal_args: Vec<String>,
    /// DPDK port id of the device (default 0, the first).
    pub port: u16,
    /// The relay's IPv4 address on that device (required): ARP is answered for it and
    /// SDP names it. No kernel interface may hold it.
    pub address: Option<std::net::Ipv4Addr>,
    /// Prefix length of its subnet (default 24).
    pub prefix_len: u8,
    /// Next hop for peers outside the subnet (default none: peers are resolved
    /// directly or learned from their own packets).
    pub gateway: Option<std::net::Ipv4Addr>,
    /// Source MAC, `aa:bb:cc:dd:ee:ff` (default: the device's own).
    pub mac: Option<String>,
    /// Microseconds the polling thread sleeps when idle (default 50; 0 = always poll).
    pub idle_sleep_us: u64,
    /// CPU the polling thread is pinned to (default none).
    pub cpu: Option<usize>,
}

impl Default for DpdkSection {
    fn default() -> Self {
        DpdkSection {
            eal_args: Vec::new(),
            port: 0,
            address: None,
            prefix_len: 24,
            gateway: None,
            mac: None,
            idle_sleep_us: 50,
            cpu: None,
        }
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

impl Default for MediaSection {
    fn default() -> Self {
        MediaSection {
            enabled: true,
            listen: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            port_min: 10_000,
            port_max: 20_000,
            rtp_timeout_secs: 60,
            threads: 1,
            backend: MediaBackend::Udp,
            dpdk: DpdkSection::default(),
            kernel_forwarding: false,
            kernel_interface: "lo".into(),
            kernel_program: None,
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Serve the admin HTTP API (default true).
    pub enabled: bool,
    /// Its listen address (default `127.0.0.1:8060`: operators reach it locally or
    /// through a tunnel until the API has authentication).
    pub listen: SocketAddr,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 8060)),
        }
    }
}

/// `[cluster]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// Replicate through Raft (default true). When false the node keeps its state in
    /// its own store only, as a standalone PBX.
    pub enabled: bool,
    /// Start a new one-node cluster on first start when this node has not joined one
    /// (default true, what `make run` does). Nodes meant to join an existing cluster
    /// set it to false and wait for `switchctl cluster join`.
    pub bootstrap: bool,
    /// QUIC listen address for Raft between nodes (default `127.0.0.1:7000`; a cluster
    /// across hosts listens on an address the other members reach).
    pub raft_listen: SocketAddr,
    /// Leader heartbeat interval (default 30 ms).
    pub heartbeat_ms: u64,
    /// Election timeout, lower bound (default 100 ms).
    pub election_timeout_min_ms: u64,
    /// Election timeout, upper bound (default 200 ms). It is also the leader lease: a
    /// follower that heard from its leader within it votes for no one, and campaigns
    /// only once this plus its randomized election timeout have passed in silence, so
    /// a dead leader is replaced 300–400 ms after its last heartbeat by default.
    pub election_timeout_max_ms: u64,
    /// Applied entries between snapshots (default 10000).
    pub snapshot_every: u64,
    /// Log entries kept after a snapshot, so that a briefly lagging follower catches
    /// up from the log rather than by a whole snapshot (default 1000).
    pub logs_kept_after_snapshot: u64,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            enabled: true,
            bootstrap: true,
            raft_listen: SocketAddr::from(([127, 0, 0, 1], 7000)),
            heartbeat_ms: 30,
            election_timeout_min_ms: 100,
            election_timeout_max_ms: 200,
            snapshot_every: 10_000,
            logs_kept_after_snapshot: 1_000,
        }
    }
}

/// An address with its prefix length, written `10.0.0.100/24` or `fd00::100/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The address.
    pub ip: std::net::IpAddr,
    /// Its prefix length.
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (ip, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not address/prefix (e.g. 10.0.0.100/24)"))?;
        let ip: std::net::IpAddr = ip
            .parse()
            .map_err(|_| format!("{ip:?} is not an IP address"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("prefix {prefix:?} is not 0..={max}"))?;
        Ok(Cidr { ip, prefix })
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix)
    }
}

/// `[vip]`: the cluster's virtual IP. Only the Raft leader holding its lease holds it:
/// it adds the address to `interface`, announces it (gratuitous ARP, unsolicited
/// neighbour advertisements), and answers SIP and RTP on it; it removes it the moment it
/// loses leadership, its lease or the majority.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VipSection {
    /// The IPv4 virtual IP with its prefix, e.g. `10.0.0.100/24` (default none: no VIP).
    pub address: Option<Cidr>,
    /// An IPv6 virtual IP with its prefix, held together with `address` (optional).
    pub address6: Option<Cidr>,
    /// The interface the holder adds the address(es) to, e.g. `eth0` (required with a VIP).
    pub interface: String,
    /// Gratuitous ARPs / unsolicited neighbour advertisements sent on takeover
    /// (default 5).
    pub announce_count: u32,
    /// Time between two announcements (default 200 ms).
    pub announce_interval_ms: u64,
}

impl Default for VipSection {
    fn default() -> Self {
        VipSection {
            address: None,
            address6: None,
            interface: String::new(),
            announce_count: 5,
            announce_interval_ms: 200,
        }
    }
}

impl VipSection {
    /// True when a virtual IP is configured.
    pub fn enabled(&self) -> bool {
        self.address.is_some() || self.address6.is_some()
    }

    /// The VIP of this family, if configured.
    pub fn ip(&self, v6: bool) -> Option<std::net::IpAddr> {
        if v6 { self.address6 } else { self.address }.map(|c| c.ip)
    }
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// tracing filter, e.g. `info` or `node=debug` (default `info,openraft=warn`;
    /// `RUST_LOG` overrides).
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            // openraft narrates every election and membership step at info.
            level: "info,openraft=warn".into(),
        }
    }
}

impl NodeConfig {
    /// Reads and validates a TOML file; relative paths inside it are relative to the file.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg = NodeConfig::from_toml(&text)?;
        if let Some(dir) = path.parent() {
            if let Some(seed) = &cfg.pbx.seed {
                if seed.is_relative() {
                    cfg.pbx.seed = Some(dir.join(seed));
                }
            }
            if let Some(p) = &cfg.media.kernel_program {
                if p.is_relative() {
                    cfg.media.kernel_program = Some(dir.join(p));
                }
            }
        }
        Ok(cfg)
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<NodeConfig, ConfigError> {
        let mut cfg: NodeConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        cfg.validate()?;
        cfg.bind_to_vip();
        Ok(cfg)
    }

    /// With a virtual IP, listeners on the unspecified address (the defaults) bind to
    /// the VIP of their family instead: answers must leave from the address phones sent
    /// to, and only the holder may answer.
    fn bind_to_vip(&mut self) {
        let vip = &self.vip;
        if !vip.enabled() {
            return;
        }
        let rebind = |a: &mut SocketAddr| {
            if a.ip().is_unspecified() {
                if let Some(ip) = vip.ip(a.is_ipv6()) {
                    a.set_ip(ip);
                }
            }
        };
        self.sip.udp.iter_mut().for_each(rebind);
        self.sip.tcp.iter_mut().for_each(rebind);
        if self.media.listen.is_unspecified() {
            if let Some(ip) = vip.ip(self.media.listen.is_ipv6()) {
                self.media.listen = ip;
            }
        }
    }

    /// Checks ranges and cross-field rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.to_string(),
            })
        };
        let m = &self.media;
        if m.port_max < m.port_min.saturating_add(3) {
            return bad(
                "media.port_max",
                "must leave room above media.port_min for at least two RTP/RTCP pairs",
            );
        }
        if m.rtp_timeout_secs == 0 {
            return bad("media.rtp_timeout_secs", "must be positive");
        }
        if m.threads == 0 || m.threads > 64 {
            return bad("media.threads", "must be 1..=64");
        }
        if m.kernel_forwarding && m.enabled {
            if m.backend != MediaBackend::Udp {
                return bad("media.kernel_forwarding", "needs media.backend = \"udp\"");
            }
            match m.listen {
                std::net::IpAddr::V4(a) if !a.is_unspecified() => {}
                _ => {
                    return bad(
                        "media.listen",
                        "media.kernel_forwarding needs a specific IPv4 address",
                    )
                }
            }
            if m.kernel_program.is_none() {
                return bad(
                    "media.kernel_program",
                    "required with media.kernel_forwarding (a BPF object or relay_tc.c)",
                );
            }
        }
        if m.backend == MediaBackend::Dpdk && m.enabled {
            if !cfg!(feature = "dpdk") {
                return bad(
                    "media.backend",
                    "\"dpdk\" needs a softswitch built with the `dpdk` feature \
                     (cargo build --release -p node --features dpdk); use \"udp\"",
                );
            }
            let d = &m.dpdk;
            match d.address {
                None => {
                    return bad(
                        "media.dpdk.address",
                        "required with media.backend = \"dpdk\"",
                    )
                }
                Some(a) if a.is_unspecified() || a.is_multicast() || a.is_broadcast() => {
                    return bad("media.dpdk.address", "must be a unicast IPv4 address")
                }
                Some(_) => {}
            }
            if d.prefix_len > 32 {
                return bad("media.dpdk.prefix_len", "must be 0..=32");
            }
            if d.mac.as_deref().is_some_and(|t| parse_mac(t).is_none()) {
                return bad("media.dpdk.mac", "must look like 02:00:00:00:00:01");
            }
            if d.idle_sleep_us > 10_000 {
                return bad("media.dpdk.idle_sleep_us", "must be 0..=10000");
            }
        }
        let c = &self.cluster;
        if c.heartbeat_ms == 0 {
            return bad("cluster.heartbeat_ms", "must be positive");
        }
        if c.election_timeout_min_ms <= c.heartbeat_ms {
            return bad(
                "cluster.election_timeout_min_ms",
                "must be above cluster.heartbeat_ms, or followers time out between heartbeats",
            );
        }
        if c.election_timeout_max_ms <= c.election_timeout_min_ms {
            return bad(
                "cluster.election_timeout_max_ms",
                "must be above cluster.election_timeout_min_ms",
            );
        }
        if c.snapshot_every == 0 {
            return bad("cluster.snapshot_every", "must be positive");
        }
        if self.sip.udp.is_empty() && self.sip.tcp.is_empty() {
            return bad("sip.udp", "no UDP or TCP listener configured");
        }
        if self.sip.t1_ms == 0 || self.sip.t1_ms > 10_000 {
            return bad("sip.t1_ms", "must be 1..=10000");
        }
        if self.sip.t2_ms < self.sip.t1_ms {
            return bad("sip.t2_ms", "must be at least sip.t1_ms");
        }
        if self.sip.t4_ms == 0 {
            return bad("sip.t4_ms", "must be positive");
        }
        if self.sip.max_transactions == 0 {
            return bad("sip.max_transactions", "must be positive");
        }
        if self.sip.max_queue_delay_ms == 0 {
            return bad("sip.max_queue_delay_ms", "must be positive");
        }
        if self.sip.queue_depth == 0 {
            return bad("sip.queue_depth", "must be positive");
        }
        if self.sip.tcp_max_connections_per_ip == 0 {
            return bad("sip.tcp_max_connections_per_ip", "must be positive");
        }
        if self.sip.tcp_idle_timeout_secs == 0 {
            return bad("sip.tcp_idle_timeout_secs", "must be positive");
        }
        if self.sip.advertised_host.contains(char::is_whitespace) {
            return bad("sip.advertised_host", "must be a host name or IP address");
        }
        let r = &self.registrar;
        if r.realm.is_empty() || r.realm.contains('"') {
            return bad("registrar.realm", "must be non-empty and without quotes");
        }
        if r.min_expires == 0 {
            return bad("registrar.min_expires", "must be positive");
        }
        if r.max_expires < r.min_expires {
            return bad(
                "registrar.max_expires",
                "must be at least registrar.min_expires",
            );
        }
        if r.default_expires < r.min_expires || r.default_expires > r.max_expires {
            return bad(
                "registrar.default_expires",
                "must lie between registrar.min_expires and registrar.max_expires",
            );
        }
        if r.max_contacts == 0 {
            return bad("registrar.max_contacts", "must be positive");
        }
        if r.nonce_ttl_secs == 0 {
            return bad("registrar.nonce_ttl_secs", "must be positive");
        }
        if r.algorithms.is_empty() {
            return bad("registrar.algorithms", "must name at least one algorithm");
        }
        for a in &r.algorithms {
            if !a.eq_ignore_ascii_case("MD5") && !a.eq_ignore_ascii_case("SHA-256") {
                return bad(
                    "registrar.algorithms",
                    &format!("unknown algorithm {a:?} (MD5, SHA-256)"),
                );
            }
        }
        if self.calls.ring_timeout_secs == 0 {
            return bad("calls.ring_timeout_secs", "must be positive");
        }
        if self.calls.max_calls == 0 {
            return bad("calls.max_calls", "must be positive");
        }
        let v = &self.vip;
        if v.enabled() {
            if v.address.is_some_and(|c| !c.ip.is_ipv4()) {
                return bad(
                    "vip.address",
                    "must be an IPv4 address (IPv6 goes in vip.address6)",
                );
            }
            if v.address6.is_some_and(|c| !c.ip.is_ipv6()) {
                return bad("vip.address6", "must be an IPv6 address");
            }
            if let Some(c) = v
                .address
                .or(v.address6)
                .filter(|c| c.ip.is_unspecified() || c.ip.is_multicast() || c.ip.is_loopback())
            {
                return bad("vip.address", &format!("{} is not a unicast address", c.ip));
            }
            if v.interface.is_empty() || v.interface.len() > 15 || v.interface.contains('/') {
                return bad(
                    "vip.interface",
                    "required with a VIP: an interface name such as eth0",
                );
            }
            if !self.cluster.enabled {
                return bad(
                    "vip.address",
                    "needs cluster.enabled: the Raft leader holds the VIP",
                );
            }
            if v.announce_count == 0 || v.announce_count > 100 {
                return bad("vip.announce_count", "must be 1..=100");
            }
            if v.announce_interval_ms == 0 || v.announce_interval_ms > 10_000 {
                return bad("vip.announce_interval_ms", "must be 1..=10000");
            }
        }
        self.notify.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = NodeConfig::from_toml("").unwrap();
        assert_eq!(c.sip.udp, vec!["0.0.0.0:5060".parse().unwrap()]);
        assert_eq!(c.registrar.default_expires, 1800);
        assert_eq!(c.registrar.max_contacts, 2);
        assert_eq!(c.calls.ring_timeout_secs, 30);
    }

    #[test]
    fn unknown_field_is_named() {
        let e = NodeConfig::from_toml("[sip]\nudpp = []\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("udpp"), "{e}");
        let e = NodeConfig::from_toml("[nodes]\n").unwrap_err().to_string();
        assert!(e.contains("nodes"), "{e}");
    }

    #[test]
    fn invalid_value_is_named() {
        let e = NodeConfig::from_toml("[registrar]\nmin_expires = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("registrar.min_expires"), "{e}");
        let e = NodeConfig::from_toml("[sip]\nudp = [\"nonsense\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("udp"), "{e}");
        let e = NodeConfig::from_toml("[registrar]\nalgorithms = [\"SHA-512\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("registrar.algorithms"), "{e}");
        let e = NodeConfig::from_toml("[cluster]\nelection_timeout_min_ms = 20\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cluster.election_timeout_min_ms"), "{e}");
        let e = NodeConfig::from_toml("[cluster]\nraft_listen = \"here\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("raft_listen"), "{e}");
        let e = NodeConfig::from_toml("[admin]\nlisten = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen"), "{e}");
    }

    #[test]
    fn media_backend_is_checked_with_its_fields_named() {
        let c = NodeConfig::from_toml("").unwrap();
        assert_eq!(c.media.backend, MediaBackend::Udp);
        let e = NodeConfig::from_toml("[media]\nbackend = \"netmap\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("backend"), "{e}");
        let dpdk = "[media]\nbackend = \"dpdk\"\n";
        let e = NodeConfig::from_toml(dpdk).unwrap_err().to_string();
        if cfg!(feature = "dpdk") {
            assert!(e.contains("media.dpdk.address"), "{e}");
            let ok = format!(
                "{dpdk}[media.dpdk]\naddress = \"192.0.2.10\"\nmac = \"02:00:00:00:00:01\"\n\
                 eal_args = [\"--no-huge\"]\n"
            );
            let c = NodeConfig::from_toml(&ok).unwrap();
            assert_eq!(c.media.dpdk.address, Some("192.0.2.10".parse().unwrap()));
            let e = NodeConfig::from_toml(&format!("{ok}prefix_len = 33\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("media.dpdk.prefix_len"), "{e}");
            let bad_mac = ok.replace("02:00:00:00:00:01", "02:00:00:00:01");
            let e = NodeConfig::from_toml(&bad_mac).unwrap_err().to_string();
            assert!(e.contains("media.dpdk.mac"), "{e}");
        } else {
            assert!(e.contains("media.backend") && e.contains("feature"), "{e}");
        }
        // A disabled relay does not care which backend is named.
        NodeConfig::from_toml("[media]\nenabled = false\nbackend = \"dpdk\"\n").unwrap();
    }

    #[test]
    fn kernel_forwarding_needs_an_ipv4_listen_address_and_a_program() {
        let c = NodeConfig::from_toml("").unwrap();
        assert!(!c.media.kernel_forwarding);
        assert_eq!(c.media.kernel_interface, "lo");
        let e = NodeConfig::from_toml("[media]\nkernel_forwarding = true\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("media.listen"), "{e}");
        let e =
            NodeConfig::from_toml("[media]\nkernel_forwarding = true\nlisten = \"127.0.0.1\"\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("media.kernel_program"), "{e}");
        let c = NodeConfig::from_toml(
            "[media]\nkernel_forwarding = true\nlisten = \"127.0.0.1\"\n\
             kernel_program = \"/usr/lib/softswitch/relay_tc.o\"\nkernel_interface = \"eth0\"\n",
        )
        .unwrap();
        assert_eq!(c.media.kernel_interface, "eth0");
    }

    #[test]
    fn vip_is_checked_and_rebinds_the_default_listeners() {
        let c = NodeConfig::from_toml("").unwrap();
        assert!(!c.vip.enabled());
        let vip = "[vip]\naddress = \"10.1.2.100/24\"\ninterface = \"eth0\"\n";
        let c = NodeConfig::from_toml(vip).unwrap();
        assert_eq!(c.sip.udp, vec!["10.1.2.100:5060".parse().unwrap()]);
        assert_eq!(
            c.media.listen,
            "10.1.2.100".parse::<std::net::IpAddr>().unwrap()
        );
        assert_eq!(c.vip.address.unwrap().prefix, 24);
        assert_eq!((c.vip.announce_count, c.vip.announce_interval_ms), (5, 200));
        let explicit = format!("{vip}[sip]\nudp = [\"127.0.0.1:5070\"]\n");
        let c = NodeConfig::from_toml(&explicit).unwrap();
        assert_eq!(c.sip.udp, vec!["127.0.0.1:5070".parse().unwrap()]);
        for (text, field) in [
            (
                "[vip]\naddress = \"10.1.2.100\"\ninterface = \"eth0\"\n",
                "address",
            ),
            (
                "[vip]\naddress = \"10.1.2.100/33\"\ninterface = \"eth0\"\n",
                "address",
            ),
            ("[vip]\naddress = \"10.1.2.100/24\"\n", "vip.interface"),
            (
                "[vip]\naddress = \"fd00::1/64\"\ninterface = \"eth0\"\n",
                "vip.address",
            ),
            (
                "[vip]\naddress6 = \"10.0.0.1/24\"\ninterface = \"eth0\"\n",
                "vip.address6",
            ),
            (&format!("{vip}announce_count = 0\n"), "vip.announce_count"),
            (&format!("{vip}[cluster]\nenabled = false\n"), "vip.address"),
        ] {
            let e = NodeConfig::from_toml(text).unwrap_err().to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
    }

    #[test]
    fn macs_parse() {
        assert_eq!(parse_mac("02:0a:FF:00:00:01"), Some([2, 10, 255, 0, 0, 1]));
        assert_eq!(parse_mac("02:0a:ff:00:00"), None);
        assert_eq!(parse_mac("02:0a:ff:00:00:01:02"), None);
        assert_eq!(parse_mac("2:0a:ff:00:00:01"), None);
        assert_eq!(parse_mac("zz:0a:ff:00:00:01"), None);
    }

    #[test]
    fn cluster_and_admin_defaults() {
        let c = NodeConfig::from_toml("").unwrap();
        assert!(c.cluster.enabled && c.cluster.bootstrap);
        assert_eq!(c.cluster.raft_listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(
            (
                c.cluster.heartbeat_ms,
                c.cluster.election_timeout_min_ms,
                c.cluster.election_timeout_max_ms
            ),
            (30, 100, 200)
        );
        assert_eq!(c.admin.listen, "127.0.0.1:8060".parse().unwrap());
    }
}
