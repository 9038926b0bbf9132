//! Packet captures for tests that must see what really crossed the wire: tcpdump
//! (Debian's `tcpdump`) writing a pcap file, and a reader of the UDP datagrams in a
//! pcap file (tcpdump's own captures and SIPp's audio files alike).

use anyhow::{bail, Context, Result};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{die_with_parent, stop_child};

/// One UDP datagram of a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// Source address.
    pub src: SocketAddr,
    /// Destination address.
    pub dst: SocketAddr,
    /// UDP payload.
    pub payload: Vec<u8>,
}

/// Link types this reader understands (pcap LINKTYPE_* values) and their header length.
fn link_header(linktype: u32) -> Result<usize> {
    Ok(match linktype {
        1 => 14,   // Ethernet (tcpdump on lo, most files)
        101 => 0,  // raw IP
        113 => 16, // Linux cooked (SLL)
        276 => 20, // Linux cooked v2 (SLL2)
        other => bail!("pcap link type {other} not supported"),
    })
}

/// The IPv4/UDP datagrams of a classic pcap file, in capture order; other packets are
/// skipped.
pub fn udp_datagrams(path: &Path) -> Result<Vec<Datagram>> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if data.len() < 24 {
        bail!("{}: not a pcap file", path.display());
    }
    let magic = [data[0], data[1], data[2], data[3]];
    let little = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => bail!("{}: not a pcap file (magic {magic:02x?})", path.display()),
    };
    let u32_at = |at: usize| {
        let b = [data[at], data[at + 1], data[at + 2], data[at + 3]];
        if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let skip = link_header(u32_at(20))?;
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let caplen = u32_at(at + 8) as usize;
        let start = at + 16;
        let end = (start + caplen).min(data.len());
        at = start + caplen;
        if let Some(d) = parse_ipv4_udp(data.get(start + skip..end).unwrap_or_default()) {
            out.push(d);
        }
    }
    Ok(out)
}

fn parse_ipv4_udp(ip: &[u8]) -> Option<Datagram> {
    if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 17 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    let udp = ip.get(ihl..total)?;
    if udp.len() < 8 {
        return None;
    }
    let addr = |o: usize, p: usize| {
        SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::new(ip[o], ip[o + 1], ip[o + 2], ip[o + 3]),
            u16::from_be_bytes([udp[p], udp[p + 1]]),
        ))
    };
    let len = usize::from(u16::from_be_bytes([udp[4], udp[5]])).clamp(8, udp.len());
    Some(Datagram {
        src: addr(12, 0),
        dst: addr(16, 2),
        payload: udp[8..len].to_vec(),
    })
}

/// A running tcpdump writing to a file; stopped (and its file read) by [`Capture::stop`],
/// killed on drop.
pub struct Capture {
    child: Option<Child>,
    file: PathBuf,
}

impl Capture {
    /// Starts tcpdump on `iface` with the capture `filter`, writing `dir/name.pcap`, and
    /// returns once it is listening (at most 10 s).
    pub fn start(iface: &str, filter: &str, dir: &Path, name: &str) -> Result<Capture> {
        let file = dir.join(format!("{name}.pcap"));
        let log = dir.join(format!("{name}.tcpdump.log"));
        let err = std::fs::File::create(&log)?;
        let mut cmd = Command::new("tcpdump");
        // -U: every packet reaches the file at once; -Z root: keep writing to a
        // root-owned temp dir after tcpdump drops its privileges.
        cmd.args(["-i", iface, "-n", "-U", "-Z", "root", "-s", "0", "-w"])
            .arg(&file)
            .arg(filter);
        let child = die_with_parent(&mut cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .context("spawning tcpdump (Debian package tcpdump)")?;
        let mut cap = Capture {
            child: Some(child),
            file,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            if said.contains("listening on") {
                return Ok(cap);
            }
            if let Some(c) = cap.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    bail!("tcpdump exited ({st}): {said}");
                }
            }
            if Instant::now() >= deadline {
                bail!("tcpdump not listening after 10 s: {said}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops tcpdump and returns the UDP datagrams it captured.
    pub fn stop(mut self) -> Result<Vec<Datagram>> {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, Duration::from_secs(5));
        }
        udp_datagrams(&self.file)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, Duration::from_secs(2));
        }
    }
}
