//! Shared harness for the end-to-end tests in `tests/tests/`.
//!
//! * [`Node`] starts the real `softswitch` binary on free loopback ports with a generated
//!   TOML config and PBX seed in a temp dir, waits until it answers OPTIONS with 200 and
//!   stops it (TERM, then KILL) when dropped, also while a test panics.
//! * [`Sipp`] runs SIPp scenarios from `tests/sipp/` with bounded call counts and timeouts and
//!   returns the exit status plus the error and message logs.
//! * [`udp_exchange`] / [`tcp_exchange`] send raw bytes and collect whatever comes back.
//! * [`Node::cdrs`] reads the CDRs through `switchctl cdr list`.
//!
//! Nothing here waits without a bound. Set `E2E_KEEP=1` to keep the temp dirs (configs,
//! node log, SIPp logs) for inspection.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use serde_json::Value;

pub mod capture;
pub mod cluster;
pub mod netns;
pub mod phone;

/// Directory of this crate (`tests/`).
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A SIPp scenario shipped in `tests/sipp/`.
pub fn scenario(name: &str) -> PathBuf {
    crate_dir().join("sipp").join(name)
}

/// Path of the `softswitch` binary: `$SOFTSWITCH_BIN`, else `$CARGO_TARGET_DIR/release/softswitch`,
/// else `<workspace>/target/release/softswitch`, else `/work/main/target/release/softswitch`.
pub fn softswitch_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SOFTSWITCH_BIN") {
        return PathBuf::from(p);
    }
    let mut candidates = Vec::new();
    if let Ok(t) = std::env::var("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(t).join("release/softswitch"));
    }
    candidates.push(crate_dir().join("../target/release/softswitch"));
    candidates.push(PathBuf::from("/work/main/target/release/softswitch"));
    for c in &candidates {
        if c.exists() {
            return c.clone();
        }
    }
    candidates.remove(0)
}

/// `switchctl` lives next to `softswitch` (or `$SWITCHCTL_BIN`).
pub fn switchctl_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SWITCHCTL_BIN") {
        return PathBuf::from(p);
    }
    softswitch_bin().with_file_name("switchctl")
}

fn keep_dirs() -> bool {
    std::env::var("E2E_KEEP").map(|v| v == "1").unwrap_or(false)
}

// ---------------------------------------------------------------------------------------
// ports

static RESERVED: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback port that is free for both UDP and TCP right now and has not been handed out
/// before in this process.
pub fn free_port() -> u16 {
    for _ in 0..200 {
        let Ok(u) = UdpSocket::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = u.local_addr() else { continue };
        let port = addr.port();
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        let mut g = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
        let set = g.get_or_insert_with(HashSet::new);
        if set.insert(port) {
            return port;
        }
    }
    panic!("could not find a free loopback port");
}

// ---------------------------------------------------------------------------------------
// processes

/// Make `cmd`'s process die with the thread that spawns it (Linux PR_SET_PDEATHSIG), so
/// nothing outlives a test process that is killed outright (no Drop runs then).
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd
}

/// Wait for a child at most `limit`; kill it (KILL) when it overruns. Returns its status
/// (None when it had to be killed).
pub fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) => {}
            Err(_) => return None,
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// TERM the child, give it `grace`, then KILL. Only ever signals this child's own PID.
pub fn stop_child(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: kill(2) on the PID of a child we spawned and have not reaped yet (try_wait
    // above returned None), so the PID cannot have been recycled.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    if wait_bounded_nokill(child, grace).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn wait_bounded_nokill(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run a command with stdout/stderr to files, bounded. Returns (status, stdout, stderr).
pub fn run_bounded(
    cmd: &mut Command,
    dir: &Path,
    tag: &str,
    limit: Duration,
) -> Result<(Option<ExitStatus>, String, String)> {
    let out_p = dir.join(format!("{tag}.stdout"));
    let err_p = dir.join(format!("{tag}.stderr"));
    let out = std::fs::File::create(&out_p)?;
    let err = std::fs::File::create(&err_p)?;
    let mut child = die_with_parent(cmd)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    let st = wait_bounded(&mut child, limit);
    Ok((st, read_lossy(&out_p), read_lossy(&err_p)))
}

/// `switchctl --admin ADMIN ARGS` with the bearer `token`, HOME set to `work` (so no
/// user config file is read), bounded by 60 s: (exit code, or -1; stdout; stderr).
pub fn switchctl_as(
    admin: SocketAddr,
    token: &str,
    work: &Path,
    args: &[&str],
) -> (i32, String, String) {
    let mut c = Command::new(switchctl_bin());
    c.args(["--admin", &admin.to_string()])
        .args(args)
        .env("SWITCHCTL_TOKEN", token)
        .env("HOME", work);
    let (st, out, err) =
        run_bounded(&mut c, work, "switchctl", Duration::from_secs(60)).expect("switchctl runs");
    (st.and_then(|s| s.code()).unwrap_or(-1), out, err)
}

pub fn read_lossy(p: &Path) -> String {
    std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn head(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let mut out = lines[..lines.len().min(n)].join("\n");
    if lines.len() > n {
        out.push_str(&format!("\n... ({} more lines)", lines.len() - n));
    }
    out
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// node

/// One PBX extension in the generated seed.
#[derive(Clone, Debug)]
pub struct Ext {
    pub number: String,
    pub name: String,
    pub password: String,
    pub max_contacts: Option<u32>,
    pub trusted_ips: Vec<String>,
}

impl Ext {
    /// Extension `number` with password `pw<number>`.
    pub fn new(number: &str) -> Ext {
        Ext {
            number: number.to_string(),
            name: format!("User {number}"),
            password: format!("pw{number}"),
            max_contacts: None,
            trusted_ips: Vec::new(),
        }
    }
}

/// What the generated node config contains.
#[derive(Clone, Debug)]
pub struct NodeOpts {
    pub extensions: Vec<Ext>,
    /// Digest algorithms in challenge order. SIPp 3.6.1 only does MD5 and reads only the
    /// first WWW-/Proxy-Authenticate header, so MD5 must come first for SIPp-driven tests.
    pub algorithms: Vec<String>,
    pub min_expires: u32,
    pub max_expires: u32,
    pub default_expires: u32,
    pub max_contacts: u32,
    pub ring_timeout_secs: u32,
    /// `[calls] max_calls` (most simultaneous calls); None = the node's default.
    pub max_calls: Option<u32>,
    pub tcp: bool,
    pub log_level: String,
    /// Appended verbatim to the TOML (for tests of config handling).
    pub extra_toml: String,
    /// Run inside this lab host's namespace, listening on its address, port 5060;
    /// None = on loopback, on a free port.
    pub host: Option<netns::Host>,
    /// Use this data directory (e.g. one `switchctl cluster join` prepared) instead of a
    /// fresh one in the node's temp dir.
    pub data_dir: Option<PathBuf>,
    /// `[cluster] bootstrap`: create a one-node cluster on first start.
    pub bootstrap: bool,
    /// More lines for the `[cluster]` section (e.g. `snapshot_every = 500`).
    pub cluster_toml: String,
    /// A virtual IP (a /24 on the lab bridge, on the host's `eth0`): SIP listens on it,
    /// and the node is ready when its admin API is (only the holder answers SIP).
    pub vip: Option<std::net::Ipv4Addr>,
}

impl Default for NodeOpts {
    fn default() -> Self {
        NodeOpts {
            extensions: vec![Ext::new("1001"), Ext::new("1002"), Ext::new("1003")],
            algorithms: vec!["MD5".into(), "SHA-256".into()],
            min_expires: 60,
            max_expires: 7200,
            default_expires: 1800,
            max_contacts: 2,
            ring_timeout_secs: 30,
            max_calls: None,
            tcp: true,
            log_level: "info".into(),
            extra_toml: String::new(),
            host: None,
            data_dir: None,
            bootstrap: true,
            cluster_toml: String::new(),
            vip: None,
        }
    }
}

fn yaml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Render the PBX seed YAML for these extensions.
pub fn seed_yaml(exts: &[Ext]) -> String {
    let mut y = String::from("extensions:\n");
    for e in exts {
        let _ = writeln!(y, "  - number: {}", yaml_str(&e.number));
        let _ = writeln!(y, "    name: {}", yaml_str(&e.name));
        let _ = writeln!(y, "    password: {}", yaml_str(&e.password));
        if let Some(m) = e.max_contacts {
            let _ = writeln!(y, "    max_contacts: {m}");
        }
        if !e.trusted_ips.is_empty() {
            let ips: Vec<String> = e.trusted_ips.iter().map(|i| yaml_str(i)).collect();
            let _ = writeln!(y, "    trusted_ips: [{}]", ips.join(", "));
        }
    }
    y
}

/// A running softswitch. Stopped (TERM, then KILL after 5 s) on drop.
pub struct Node {
    child: Option<Child>,
    pub port: u16,
    pub addr: SocketAddr,
    /// The admin HTTP listener.
    pub admin: SocketAddr,
    pub data_dir: PathBuf,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    log_path: PathBuf,
    netns: Option<String>,
    /// Listens on a virtual IP it may not hold: ready is the admin API's word.
    vip: bool,
}

impl Node {
    pub fn start(opts: NodeOpts) -> Result<Node> {
        let bin = softswitch_bin();
        if !bin.exists() {
            bail!(
                "softswitch binary not found at {} (set SOFTSWITCH_BIN or build with `cargo build --release -p node`)",
                bin.display()
            );
        }
        let tmp = tempfile::Builder::new().prefix("e2e-node-").tempdir()?;
        let dir = tmp.path().to_path_buf();
        let (ip, port) = match (&opts.host, opts.vip) {
            (_, Some(vip)) => (vip.to_string(), 5060),
            (Some(h), None) => (h.ip.to_string(), 5060),
            (None, None) => ("127.0.0.1".to_string(), free_port()),
        };
        let vip_toml = match opts.vip {
            Some(vip) => format!(
                "[vip]\naddress = \"{vip}/24\"\naddress6 = \"{}\"\ninterface = \"{}\"\n\
                 announce_interval_ms = 100\n",
                netns::vip6(vip),
                netns::HOST_INTERFACE
            ),
            None => String::new(),
        };
        let netns = opts.host.as_ref().map(|h| h.netns.clone());
        let admin: SocketAddr = match &opts.host {
            Some(h) => SocketAddr::from((h.ip, 8060)),
            None => SocketAddr::from(([127, 0, 0, 1], free_port())),
        };
        let raft: SocketAddr = match &opts.host {
            Some(h) => SocketAddr::from((h.ip, 7000)),
            None => SocketAddr::from(([127, 0, 0, 1], free_port())),
        };
        let data_dir = opts.data_dir.clone().unwrap_or_else(|| dir.join("data"));
        let seed = dir.join("pbx.yaml");
        std::fs::write(&seed, seed_yaml(&opts.extensions))?;
        let algs: Vec<String> = opts.algorithms.iter().map(|a| format!("\"{a}\"")).collect();
        let tcp = if opts.tcp {
            format!("[\"{ip}:{port}\"]")
        } else {
            "[]".into()
        };
        let toml = format!(
            r#"[node]
data_dir = "{data}"

[sip]
udp = ["{ip}:{port}"]
tcp = {tcp}
advertised_host = "{ip}"

[registrar]
realm = "softswitch"
min_expires = {min}
max_expires = {max}
default_expires = {def}
max_contacts = {maxc}
nonce_ttl_secs = 30
algorithms = [{algs}]

[calls]
ring_timeout_secs = {ring}
{max_calls}
[pbx]
seed = "{seed}"

[admin]
listen = "{admin}"

[cluster]
raft_listen = "{raft}"
bootstrap = {bootstrap}
{cluster_toml}
{vip_toml}
[log]
level = "{level}"
{extra}"#,
            admin = admin,
            raft = raft,
            bootstrap = opts.bootstrap,
            cluster_toml = opts.cluster_toml,
            data = data_dir.display(),
            min = opts.min_expires,
            max = opts.max_expires,
            def = opts.default_expires,
            maxc = opts.max_contacts,
            algs = algs.join(", "),
            ring = opts.ring_timeout_secs,
            max_calls = opts
                .max_calls
                .map(|m| format!("max_calls = {m}\n"))
                .unwrap_or_default(),
            seed = seed.display(),
            level = opts.log_level,
            extra = opts.extra_toml,
        );
        let cfg = dir.join("node.toml");
        std::fs::write(&cfg, toml)?;
        let log_path = dir.join("node.log");
        let child = spawn_node(&bin, &cfg, &dir, &log_path, netns.as_deref())?;
        let addr: SocketAddr = format!("{ip}:{port}").parse()?;
        let (tmp, keep) = if keep_dirs() {
            (None, tmp.keep())
        } else {
            (Some(tmp), dir.clone())
        };
        if tmp.is_none() {
            eprintln!("[e2e] node dir kept: {}", keep.display());
        }
        let mut node = Node {
            child: Some(child),
            port,
            addr,
            admin,
            data_dir,
            dir,
            _tmp: tmp,
            log_path,
            netns,
            vip: opts.vip.is_some(),
        };
        node.wait_ready(Duration::from_secs(30))?;
        node.learn_admin_token();
        Ok(node)
    }

    /// The admin API token the node wrote on its first start (`<data_dir>/admin-token`);
    /// `None` for a member that joined a cluster (the first member's token works there).
    pub fn admin_token(&self) -> Option<String> {
        std::fs::read_to_string(self.data_dir.join("admin-token"))
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    }

    /// Remembers the node's admin token for [`http_get`] and `cluster::switchctl`.
    fn learn_admin_token(&self) {
        if let Some(t) = self.admin_token() {
            set_admin_token(self.admin, &t);
        }
    }

    /// Stop the node (TERM, KILL after 5 s) and start it again on the same config and data
    /// directory; waits until it answers OPTIONS again.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.start_again()
    }

    /// Stops the node (TERM, KILL after 5 s).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, Duration::from_secs(5));
        }
    }

    /// Starts a stopped node again on the same config and data directory; waits until
    /// it answers OPTIONS.
    pub fn start_again(&mut self) -> Result<()> {
        let cfg = self.dir.join("node.toml");
        self.child = Some(spawn_node(
            &softswitch_bin(),
            &cfg,
            &self.dir,
            &self.log_path,
            self.netns.as_deref(),
        )?);
        self.wait_ready(Duration::from_secs(30))?;
        self.learn_admin_token();
        Ok(())
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if !self.alive() {
                bail!(
                    "softswitch exited during startup; log:\n{}",
                    tail(&self.log(), 40)
                );
            }
            if self.vip {
                if let Ok((200, _)) = http_get(self.admin, "/readyz") {
                    return Ok(());
                }
            } else if self.options_ok(Duration::from_millis(300)) {
                return Ok(());
            }
            // not listening yet (ICMP port unreachable returns at once): do not spin
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "softswitch did not answer OPTIONS with 200 within {limit:?}; log:\n{}",
            tail(&self.log(), 40)
        )
    }

    /// Kills the node at once (SIGKILL: no clean shutdown, as when a host dies).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = wait_bounded(&mut c, Duration::from_secs(10));
        }
    }

    /// True while the process has not exited.
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends one OPTIONS over UDP from a fresh socket; true when a 200 comes back in time.
    pub fn options_ok(&self, wait: Duration) -> bool {
        let msg = options_request(self.addr, "udp", &[]);
        udp_exchange(self.addr, msg.as_bytes(), wait)
            .map(|rs| rs.iter().any(|r| status_code(r) == Some(200)))
            .unwrap_or(false)
    }

    /// The node's stdout+stderr so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    /// All CDRs, via `switchctl cdr list --data-dir DIR` (one JSON object per line).
    pub fn cdrs(&self) -> Result<Vec<Value>> {
        let ctl = switchctl_bin();
        let (st, out, err) = run_bounded(
            Command::new(&ctl)
                .args(["cdr", "list", "--data-dir"])
                .arg(&self.data_dir),
            &self.dir,
            "switchctl",
            Duration::from_secs(20),
        )?;
        match st {
            Some(s) if s.success() => {}
            other => bail!(
                "{} cdr list failed ({other:?}): {}",
                ctl.display(),
                err.trim()
            ),
        }
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).with_context(|| format!("CDR line is not JSON: {l}")))
            .collect()
    }

    /// Poll `cdrs()` until `pred` holds for the list (at most `limit`); returns the last list.
    pub fn wait_cdrs(
        &self,
        limit: Duration,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Result<Vec<Value>> {
        let deadline = Instant::now() + limit;
        let mut last = Err(anyhow!("no attempt"));
        while Instant::now() < deadline {
            last = self.cdrs();
            if let Ok(list) = &last {
                if pred(list) {
                    return last;
                }
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        last
    }
}

fn spawn_node(
    bin: &Path,
    cfg: &Path,
    dir: &Path,
    log_path: &Path,
    netns: Option<&str>,
) -> Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)?;
    let log2 = log.try_clone()?;
    // `ip netns exec` execs the program in place, so the child is the node itself and
    // signals reach it directly.
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    die_with_parent(&mut cmd)
        .arg("--config")
        .arg(cfg)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, Duration::from_secs(5));
        }
        if std::thread::panicking() {
            eprintln!(
                "[e2e] ---- softswitch log ({}) ----\n{}",
                self.log_path.display(),
                tail(&self.log(), 60)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// sipp

static SIPP_SEQ: AtomicU32 = AtomicU32::new(0);

/// A SIPp invocation. Always adds `-m`, `-timeout`, `-timeout_error`, `-trace_err`,
/// `-trace_msg` and `-nostdin`; the process is killed if it outlives its timeout by 10 s.
pub struct Sipp {
    name: String,
    scenario: PathBuf,
    remote: Option<String>,
    local_port: Option<u16>,
    local_ip: String,
    netns: Option<String>,
    calls: u32,
    timeout_s: u32,
    args: Vec<String>,
    /// Log every message (`-trace_msg`); off for loads too big to log.
    trace_messages: bool,
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

/// Outcome of a SIPp run.
#[derive(Debug, Clone)]
pub struct SippResult {
    pub name: String,
    /// Exit code (None = killed by the harness or by a signal).
    pub code: Option<i32>,
    pub errors: String,
    pub messages: String,
    pub output: String,
}

impl SippResult {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
    /// Human-readable summary for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "sipp {} exit={:?}\n--- error log ---\n{}\n--- last messages ---\n{}\n--- output ---\n{}",
            self.name,
            self.code,
            head(&self.errors, 40),
            tail(&self.messages, 60),
            tail(&self.output, 15)
        )
    }
    /// The SIP messages of the `-trace_msg` log (received and sent), in order.
    pub fn sip_messages(&self) -> Vec<String> {
        split_message_log(&self.messages)
    }
}

/// Split a SIPp `-trace_msg` log into the individual SIP messages.
pub fn split_message_log(log: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in log.lines() {
        let l = line.trim_end_matches('\r');
        if l.starts_with("----------------------------------------------- ")
            || l.starts_with("UDP message ")
            || l.starts_with("TCP message ")
        {
            if let Some(c) = cur.take() {
                if !c.trim().is_empty() {
                    out.push(c.trim().to_string());
                }
            }
            cur = Some(String::new());
            continue;
        }
        if let Some(c) = cur.as_mut() {
            c.push_str(l);
            c.push('\n');
        }
    }
    if let Some(c) = cur {
        if !c.trim().is_empty() {
            out.push(c.trim().to_string());
        }
    }
    out
}

impl Sipp {
    pub fn new(name: &str, scenario: impl AsRef<Path>) -> Sipp {
        let seq = SIPP_SEQ.fetch_add(1, Ordering::SeqCst);
        let tmp = tempfile::Builder::new()
            .prefix(&format!("e2e-sipp-{name}-"))
            .tempdir()
            .expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let tmp = if keep_dirs() {
            let p = tmp.keep();
            eprintln!("[e2e] sipp dir kept: {}", p.display());
            None
        } else {
            Some(tmp)
        };
        Sipp {
            name: format!("{name}-{seq}"),
            scenario: scenario.as_ref().to_path_buf(),
            remote: None,
            local_port: None,
            local_ip: "127.0.0.1".into(),
            netns: None,
            calls: 1,
            timeout_s: 20,
            args: Vec::new(),
            trace_messages: true,
            dir,
            _tmp: tmp,
        }
    }

    /// Logs errors only, not every message: for loads whose message log would be huge.
    pub fn quiet(mut self) -> Self {
        self.trace_messages = false;
        self
    }
    /// The remote party (`host:port`), e.g. the node.
    pub fn remote(mut self, addr: impl ToString) -> Self {
        self.remote = Some(addr.to_string());
        self
    }
    pub fn local_port(mut self, port: u16) -> Self {
        self.local_port = Some(port);
        self
    }
    /// Runs SIPp inside this network namespace (a lab host's).
    pub fn in_netns(mut self, netns: impl ToString) -> Self {
        self.netns = Some(netns.to_string());
        self
    }
    /// The address SIPp binds (default 127.0.0.1), e.g. a lab's bridge address.
    pub fn local_ip(mut self, ip: impl ToString) -> Self {
        self.local_ip = ip.to_string();
        self
    }
    pub fn calls(mut self, m: u32) -> Self {
        self.calls = m;
        self
    }
    pub fn timeout_s(mut self, s: u32) -> Self {
        self.timeout_s = s;
        self
    }
    pub fn arg(mut self, a: impl ToString) -> Self {
        self.args.push(a.to_string());
        self
    }
    pub fn args<I: IntoIterator<Item = S>, S: ToString>(mut self, a: I) -> Self {
        self.args.extend(a.into_iter().map(|s| s.to_string()));
        self
    }
    /// `-key NAME VALUE` (scenario keyword `[NAME]`).
    pub fn key(self, k: &str, v: &str) -> Self {
        self.args(["-key", k, v])
    }

    /// A REGISTER (register.xml) of extension `user` with its test password `pw<user>`
    /// (digest), for an hour.
    pub fn registering(self, user: &str) -> Self {
        self.args(["-s", user, "-au", user, "-ap"])
            .arg(format!("pw{user}"))
            .key("expires", "3600")
    }

    /// A call to `dialled` through `proxy` (also the remote address) as extension
    /// `caller` with its test password `pw<caller>` (digest), the scenario's `[caller]`
    /// keyword set.
    pub fn dialling(self, proxy: &str, dialled: &str, caller: &str) -> Self {
        self.remote(proxy)
            .args(["-rsa", proxy, "-s", dialled, "-au", caller, "-ap"])
            .arg(format!("pw{caller}"))
            .key("caller", caller)
    }

    fn command(&self) -> Command {
        let sipp = std::env::var("SIPP_BIN").unwrap_or_else(|_| "sipp".into());
        let mut c = match &self.netns {
            // `ip netns exec` execs SIPp in place: killing the child kills SIPp.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, &sipp]);
                c
            }
            None => Command::new(sipp),
        };
        c.arg("-sf").arg(&self.scenario);
        if let Some(r) = &self.remote {
            c.arg(r);
        }
        c.args(["-i", &self.local_ip]);
        if let Some(p) = self.local_port {
            c.args(["-p", &p.to_string()]);
        }
        c.args(["-m", &self.calls.to_string()]);
        c.args([
            "-timeout",
            &format!("{}s", self.timeout_s),
            "-timeout_error",
        ]);
        c.args(["-nostdin", "-trace_err"]);
        if self.trace_messages {
            c.arg("-trace_msg");
        }
        c.arg("-error_file").arg(self.dir.join("err.log"));
        c.arg("-message_file").arg(self.dir.join("msg.log"));
        c.args(&self.args);
        c.current_dir(&self.dir);
        c
    }

    /// Start in the background (e.g. a UAS); see [`SippProc::wait`].
    pub fn spawn(self) -> Result<SippProc> {
        let out = std::fs::File::create(self.dir.join("out.log"))?;
        let out2 = out.try_clone()?;
        let mut cmd = self.command();
        let child = die_with_parent(&mut cmd)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(out2)
            .spawn()
            .context("spawning sipp (Debian package sip-tester)")?;
        Ok(SippProc {
            child: Some(child),
            sipp: self,
        })
    }

    /// Run to completion (bounded by its timeout + 10 s).
    pub fn run(self) -> Result<SippResult> {
        Ok(self.spawn()?.wait())
    }
}

/// A running SIPp; killed on drop.
pub struct SippProc {
    child: Option<Child>,
    sipp: Sipp,
}

impl SippProc {
    /// Wait until SIPp ends by itself (bounded: its `-timeout` + 10 s, then killed).
    pub fn wait(mut self) -> SippResult {
        let limit = Duration::from_secs(self.sipp.timeout_s as u64 + 10);
        let code = self
            .child
            .as_mut()
            .and_then(|c| wait_bounded(c, limit))
            .and_then(|s| s.code());
        self.child = None;
        let d = &self.sipp.dir;
        SippResult {
            name: self.sipp.name.clone(),
            code,
            errors: read_lossy(&d.join("err.log")),
            messages: read_lossy(&d.join("msg.log")),
            output: read_lossy(&d.join("out.log")),
        }
    }

    /// Wait until SIPp has bound its UDP port (bounded).
    pub fn wait_bound(&mut self, port: u16, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if udp_port_bound(port) {
                return true;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    return false;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for SippProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, Duration::from_secs(2));
        }
    }
}

/// Registers extension `number` (password `pw<number>`) with SIPp's register.xml from
/// loopback port `port`, so that calls to it reach a SIPp agent later bound there.
pub fn sipp_register(node: &Node, number: &str, port: u16) {
    let r = Sipp::new(&format!("register-{number}"), scenario("register.xml"))
        .remote(node.addr)
        .local_port(port)
        .registering(number)
        .run()
        .expect("sipp");
    assert!(r.ok(), "registration of {number} failed\n{}", r.describe());
}

/// True when some UDP socket is bound to 127.0.0.1:`port` or 0.0.0.0:`port` (read from
/// /proc/net/udp, so probing never races the process that is about to bind it).
pub fn udp_port_bound(port: u16) -> bool {
    udp_bound_on(std::net::Ipv4Addr::LOCALHOST, port)
}

/// True when a UDP socket in this namespace is bound to `ip:port`, or to every address
/// on `port` (read from /proc/net/udp).
pub fn udp_bound_on(ip: std::net::Ipv4Addr, port: u16) -> bool {
    // /proc/net/udp spells the address as the 32-bit word in host (little-endian) order.
    let [a, b, c, d] = ip.octets();
    let wanted = [
        format!("{d:02X}{c:02X}{b:02X}{a:02X}:{port:04X}"),
        format!("00000000:{port:04X}"),
    ];
    std::fs::read_to_string("/proc/net/udp").is_ok_and(|t| {
        t.lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().nth(1))
            .any(|local| wanted.iter().any(|w| w == local))
    })
}

/// Polls `check` every 50 ms until it holds; fails naming `what` after `limit`.
pub fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------
// raw SIP

static SEQ: AtomicU32 = AtomicU32::new(1);

/// A unique token for branches, tags and Call-IDs.
pub fn token(prefix: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::SeqCst);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}{}x{n}x{}", std::process::id(), t % 1_000_000_007)
}

/// An OPTIONS request to `to` over `transport` ("udp"/"tcp"); `extra` lines are added
/// before Content-Length. The Via sent-by is a placeholder port (responses go back to the
/// source address, RFC 3581 rport is requested).
pub fn options_request(to: SocketAddr, transport: &str, extra: &[&str]) -> String {
    request("OPTIONS", &format!("sip:{to}"), to, transport, extra, "")
}

/// Build a request with fresh branch/tag/Call-ID.
pub fn request(
    method: &str,
    ruri: &str,
    to: SocketAddr,
    transport: &str,
    extra: &[&str],
    body: &str,
) -> String {
    let mut m = format!(
        "{method} {ruri} SIP/2.0\r\n\
         Via: SIP/2.0/{tp} 127.0.0.1:5999;branch=z9hG4bK{br};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:e2e@127.0.0.1>;tag={tag}\r\n\
         To: <sip:{to}>\r\n\
         Call-ID: {cid}\r\n\
         CSeq: 1 {method}\r\n",
        tp = transport.to_uppercase(),
        br = token("e2e"),
        tag = token("t"),
        cid = token("c"),
    );
    for e in extra {
        m.push_str(e);
        m.push_str("\r\n");
    }
    let _ = write!(m, "Content-Length: {}\r\n\r\n{body}", body.len());
    m
}

/// Status code of a SIP response (None for requests / garbage).
pub fn status_code(msg: &str) -> Option<u16> {
    let first = msg.lines().next()?;
    let mut it = first.split_whitespace();
    if it.next()? != "SIP/2.0" {
        return None;
    }
    it.next()?.parse().ok()
}

/// First value of header `name` (case-insensitive; also matches the compact form if given).
pub fn header<'a>(msg: &'a str, names: &[&str]) -> Option<&'a str> {
    headers(msg, names).into_iter().next()
}

/// All values of header `names` (case-insensitive), header section only.
pub fn headers<'a>(msg: &'a str, names: &[&str]) -> Vec<&'a str> {
    let mut v = Vec::new();
    for line in msg.split('\n').skip(1) {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            break;
        }
        if let Some((n, val)) = line.split_once(':') {
            if names.iter().any(|x| x.eq_ignore_ascii_case(n.trim())) {
                v.push(val.trim());
            }
        }
    }
    v
}

/// Send `msg` over UDP from a fresh socket and collect the responses that arrive within
/// `wait` (stops early after a final response, >= 200).
pub fn udp_exchange(to: SocketAddr, msg: &[u8], wait: Duration) -> Result<Vec<String>> {
    // From loopback to loopback; otherwise let the kernel pick the source (a node in a
    // lab namespace is reached over the bridge).
    let sock = if to.ip().is_loopback() {
        UdpSocket::bind("127.0.0.1:0")?
    } else {
        UdpSocket::bind("0.0.0.0:0")?
    };
    sock.send_to(msg, to)?;
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 70_000];
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        sock.set_read_timeout(Some(deadline - now))?;
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => {
                let s = String::from_utf8_lossy(&buf[..n]).into_owned();
                let fin = status_code(&s).map(|c| c >= 200).unwrap_or(false);
                out.push(s);
                if fin {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    Ok(out)
}

/// Send `msg` over a new TCP connection and collect what comes back within `wait`
/// (stops early after a complete final response, or when the peer closes).
pub fn tcp_exchange(to: SocketAddr, msg: &[u8], wait: Duration) -> Result<Vec<String>> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
    s.write_all(msg)?;
    let deadline = Instant::now() + wait;
    let mut acc = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        s.set_read_timeout(Some(deadline - now))?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                acc.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&acc);
                if let Some((head, _)) = text.split_once("\r\n\r\n") {
                    if status_code(head).map(|c| c >= 200).unwrap_or(false) {
                        break;
                    }
                }
            }
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&acc).into_owned();
    Ok(if text.is_empty() { vec![] } else { vec![text] })
}

// ---------------------------------------------------------------------------------------
// external clients

/// `python3` with the `pjsua2` module importable. Tries `pip install pjsua2-python` once
/// (bounded) when it is missing; Err(reason) when it cannot be had.
pub fn python_with_pjsua2() -> std::result::Result<String, String> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let py = std::env::var("E2E_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = |py: &str| {
        Command::new(py)
            .args(["-c", "import pjsua2"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if probe(&py) {
        return Ok(py);
    }
    eprintln!("[e2e] pjsua2 missing: trying `{py} -m pip install pjsua2-python`");
    let dir = std::env::temp_dir();
    let _ = run_bounded(
        Command::new(&py).args(["-m", "pip", "install", "--quiet", "pjsua2-python"]),
        &dir,
        "e2e-pip-pjsua2",
        Duration::from_secs(300),
    );
    if probe(&py) {
        Ok(py)
    } else {
        Err(format!(
            "{py} cannot import pjsua2 and `pip install pjsua2-python` did not fix it"
        ))
    }
}

// ---------------------------------------------------------------------------------------
// digest (RFC 7616 / RFC 8760) for the raw-socket clients

/// Parameters of a `Digest ...` challenge (keys lower-cased, quotes removed).
pub fn parse_challenge(value: &str) -> std::collections::HashMap<String, String> {
    let mut m = std::collections::HashMap::new();
    let v = value.trim();
    let v = v
        .strip_prefix("Digest")
        .or_else(|| v.strip_prefix("digest"))
        .unwrap_or(v);
    let mut rest = v.trim();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq]
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        rest = rest[eq + 1..].trim_start();
        let val;
        if let Some(r) = rest.strip_prefix('"') {
            let end = r.find('"').unwrap_or(r.len());
            val = r[..end].to_string();
            rest = r.get(end + 1..).unwrap_or("");
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            val = rest[..end].trim().to_string();
            rest = &rest[end..];
        }
        rest = rest.trim_start().trim_start_matches(',').trim_start();
        m.insert(key, val);
    }
    m
}

fn hash_hex(algo: &str, data: &str) -> String {
    use sha2::Digest;
    match algo.to_ascii_uppercase().as_str() {
        "SHA-256" => hex::encode(sha2::Sha256::digest(data.as_bytes())),
        _ => panic!("raw client only implements SHA-256 (SIPp covers MD5)"),
    }
}

/// `Authorization` value answering `challenge` (qop=auth) with the given algorithm.
pub fn digest_authorization(
    challenge: &str,
    algo: &str,
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
) -> String {
    let c = parse_challenge(challenge);
    let realm = c.get("realm").cloned().unwrap_or_default();
    let nonce = c.get("nonce").cloned().unwrap_or_default();
    let cnonce = token("cn");
    let nc = "00000001";
    let ha1 = hash_hex(algo, &format!("{user}:{realm}:{password}"));
    let ha2 = hash_hex(algo, &format!("{method}:{uri}"));
    let qop_auth = c
        .get("qop")
        .map(|q| q.split(',').any(|x| x.trim() == "auth"))
        .unwrap_or(false);
    let response = if qop_auth {
        hash_hex(algo, &format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"))
    } else {
        hash_hex(algo, &format!("{ha1}:{nonce}:{ha2}"))
    };
    let mut a = format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", algorithm={algo}"
    );
    if qop_auth {
        let _ = write!(a, ", qop=auth, nc={nc}, cnonce=\"{cnonce}\"");
    }
    if let Some(o) = c.get("opaque") {
        let _ = write!(a, ", opaque=\"{o}\"");
    }
    a
}

/// A raw REGISTER from `local` to `node`; `dialog` = (Call-ID, From tag), kept by the
/// caller across the challenge round trip.
pub fn register_request(
    node: SocketAddr,
    local: SocketAddr,
    user: &str,
    dialog: (&str, &str),
    cseq: u32,
    expires: u32,
    extra: &[String],
) -> String {
    let (call_id, tag) = dialog;
    let mut m = format!(
        "REGISTER sip:{node} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK{br};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@{node}>;tag={tag}\r\n\
         To: <sip:{user}@{node}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} REGISTER\r\n\
         Contact: <sip:{user}@{local}>\r\n\
         Expires: {expires}\r\n",
        br = token("reg"),
    );
    for e in extra {
        m.push_str(e);
        m.push_str("\r\n");
    }
    m.push_str("Content-Length: 0\r\n\r\n");
    m
}

/// Receive one SIP response on `sock` within `wait`, skipping 1xx.
pub fn recv_final(sock: &UdpSocket, wait: Duration) -> Option<String> {
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 70_000];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        sock.set_read_timeout(Some(deadline - now)).ok()?;
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        let s = String::from_utf8_lossy(&buf[..n]).into_owned();
        if status_code(&s).map(|c| c >= 200).unwrap_or(false) {
            return Some(s);
        }
    }
}

/// The admin API tokens known to this test process, by admin address.
static ADMIN_TOKENS: std::sync::Mutex<std::collections::BTreeMap<SocketAddr, String>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Makes [`http_get`] and `cluster::switchctl` send `token` to the admin API at `admin`
/// (a joined member takes the token of the member it joined through).
pub fn set_admin_token(admin: SocketAddr, token: &str) {
    let mut map = ADMIN_TOKENS.lock().unwrap_or_else(|p| p.into_inner());
    map.insert(admin, token.to_string());
}

/// The token [`set_admin_token`] registered for the admin API at `admin`.
pub fn admin_token_for(admin: SocketAddr) -> Option<String> {
    let map = ADMIN_TOKENS.lock().unwrap_or_else(|p| p.into_inner());
    map.get(&admin).cloned()
}

/// `GET path` over HTTP/1.1 (Connection: close), with the admin token known for `addr`;
/// returns the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let auth = admin_token_for(addr)
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    http_request(addr, "GET", path, &auth, "")
}

/// One HTTP/1.1 request (Connection: close) with extra header lines `headers` (each
/// ending in CRLF) and a JSON `body`; returns the status code and the body.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP response: {raw:?}"))?;
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, body.to_string()))
}

/// Waits (bounded) until the admin API at `admin` answers `/readyz` with 200: the node
/// is a cluster member with a known leader and has applied what it knows is committed.
pub fn wait_admin_ready(admin: SocketAddr, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok((200, _)) = http_get(admin, "/readyz") {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("node with admin API {admin} not ready within {limit:?}");
}
