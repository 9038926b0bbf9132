//! A small network for multi-node tests: one network namespace per host, each joined
//! by a veth pair to a bridge, and the bridge addressed from the test process so the
//! test can reach every host directly.
//!
//! ```text
//!  test process (root namespace) 10.X.Y.1 ── bridge ──┬── veth ── host 0: 10.X.Y.10
//!                                                     ├── veth ── host 1: 10.X.Y.11
//!                                                     └── ...
//! ```
//!
//! Faults are real: [`Lab::link_down`] takes a host's bridge port down, which partitions
//! that host from everyone. Traffic stays on the bridge and in the namespaces this lab
//! created. Everything is deleted on drop,
//! also while a test panics. Needs root and `ip` (iproute2).

use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The name of every host's interface on the bridge, inside its namespace.
pub const HOST_INTERFACE: &str = "eth0";

/// Labs created by this process, to give each its own names and subnet.
static LABS: AtomicU32 = AtomicU32::new(0);

/// One emulated host.
#[derive(Debug, Clone)]
pub struct Host {
    /// Network namespace name.
    pub netns: String,
    /// The host's address on the bridge.
    pub ip: Ipv4Addr,
    /// The bridge side of its veth pair (the "switch port").
    port: String,
}

/// A bridge and its hosts; deleted on drop.
#[derive(Debug)]
pub struct Lab {
    bridge: String,
    /// The test process's address on the bridge.
    pub gateway: Ipv4Addr,
    /// The hosts, in creation order.
    pub hosts: Vec<Host>,
}

/// Runs `ip` with these arguments; an error names the command and what it printed.
fn ip(args: &[&str]) -> Result<Output> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// True when this process may create namespaces (root, `ip` present).
pub fn available() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Lab {
    /// A bridge with `n` hosts, each in its own namespace with loopback up.
    pub fn create(n: usize) -> Result<Lab> {
        if !available() {
            bail!("network-namespace tests need root and iproute2 (`ip`)");
        }
        if n > 200 {
            bail!("at most 200 hosts per lab");
        }
        let serial = LABS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Interface names have at most 15 bytes; pid and serial keep parallel tests and
        // parallel test binaries apart.
        let tag = format!("{:x}{:x}", pid % 0x10000, serial % 0x100);
        // 10.(100 + pid % 100).(serial).0/24: distinct per lab of one process.
        let subnet = (100 + pid % 100) as u8;
        let third = (serial % 250) as u8 + 1;
        let mut lab = Lab {
            bridge: format!("ssb{tag}"),
            gateway: Ipv4Addr::new(10, subnet, third, 1),
            hosts: Vec::new(),
        };
        ip(&["link", "add", &lab.bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", lab.gateway),
            "dev",
            &lab.bridge,
        ])?;
        ip(&["link", "set", &lab.bridge, "up"])?;
        for i in 0..n {
            let host = Host {
                netns: format!("ss{tag}h{i}"),
                ip: Ipv4Addr::new(10, subnet, third, 10 + i as u8),
                port: format!("ss{tag}p{i}"),
            };
            let inner = format!("ss{tag}i{i}");
            ip(&["netns", "add", &host.netns])?;
            // Pushed before the rest so that drop removes what exists if a step fails.
            lab.hosts.push(host.clone());
            ip(&[
                "link", "add", &host.port, "type", "veth", "peer", "name", &inner,
            ])?;
            ip(&["link", "set", &inner, "netns", &host.netns])?;
            ip(&[
                "-n",
                &host.netns,
                "link",
                "set",
                &inner,
                "name",
                HOST_INTERFACE,
            ])?;
            let inner = HOST_INTERFACE.to_string();
            ip(&["link", "set", &host.port, "master", &lab.bridge])?;
            ip(&["link", "set", &host.port, "up"])?;
            let ns = host.netns.as_str();
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", host.ip),
                "dev",
                &inner,
            ])?;
            ip(&["-n", ns, "link", "set", &inner, "up"])?;
            ip(&[
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                &lab.gateway.to_string(),
            ])?;
        }
        Ok(lab)
    }

    /// A command that runs `program` inside host `i`'s namespace.
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.hosts[i].netns]).arg(program);
        c
    }

    /// Takes host `i`'s bridge port down: it can reach nobody and nobody reaches it.
    pub fn link_down(&self, i: usize) -> Result<()> {
        ip(&["link", "set", &self.hosts[i].port, "down"]).map(drop)
    }

    /// Brings host `i`'s bridge port back up.
    pub fn link_up(&self, i: usize) -> Result<()> {
        ip(&["link", "set", &self.hosts[i].port, "up"]).map(drop)
    }

    /// Host `i`'s address.
    pub fn ip(&self, i: usize) -> Ipv4Addr {
        self.hosts[i].ip
    }

    /// An address on the bridge's subnet that no host has, for a virtual IP.
    pub fn spare_ip(&self) -> Ipv4Addr {
        let [a, b, c, _] = self.gateway.octets();
        Ipv4Addr::new(a, b, c, 100)
    }

    /// A UDP socket bound to `port` (0: any) on host `i`'s address, inside its
    /// namespace: the test process then talks from that host as a phone would.
    pub fn udp_socket(&self, i: usize, port: u16) -> Result<std::net::UdpSocket> {
        let path = format!("/var/run/netns/{}", self.hosts[i].netns);
        let addr = std::net::SocketAddr::from((self.hosts[i].ip, port));
        // setns moves only the calling thread: a thread of its own enters, binds, ends.
        std::thread::spawn(move || -> Result<std::net::UdpSocket> {
            let ns = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
            use std::os::fd::AsRawFd;
            // SAFETY: a namespace file descriptor; affects this thread only.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns {path}: {}", std::io::Error::last_os_error());
            }
            std::net::UdpSocket::bind(addr).with_context(|| format!("bind {addr}"))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth inside it, and with it the bridge port.
        for h in &self.hosts {
            let _ = ip(&["netns", "del", &h.netns]);
            let _ = ip(&["link", "del", &h.port]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}
