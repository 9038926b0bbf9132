//! Helpers of the media relay benchmark (`bench/rtp.sh`): the G.711 RTP packets the
//! blaster sends and checks, the sessions file shared by the relay hosts and the blaster,
//! a minimal client of rtpengine's ng control protocol (bencode over UDP) and CPU time
//! read from `/proc`.

use anyhow::{anyhow, bail, Context};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

/// RTP header bytes (no CSRC, no extension).
pub const RTP_HEADER: usize = 12;
/// PCMU payload of one 20 ms packet at 8000 Hz.
pub const G711_PAYLOAD: usize = 160;
/// UDP payload of one G.711 packet: header + 160 samples.
pub const PACKET_LEN: usize = RTP_HEADER + G711_PAYLOAD;
/// SSRC of stream 0; stream `j` uses `SSRC_BASE + j`.
pub const SSRC_BASE: u32 = 0x5354_0000;

/// Payload bytes of the packet with sequence number `seq`: bytes `seq, seq+1, ...`
/// (mod 256), so that a relayed packet can be checked byte for byte without state.
pub fn payload_byte(seq: u16, i: usize) -> u8 {
    (seq as usize).wrapping_add(i) as u8
}

/// A 512-byte table `0, 1, ..., 255, 0, 1, ...`: the payload of sequence number `seq`
/// is `PATTERN[seq % 256..][..160]`.
pub static PATTERN: [u8; 512] = {
    let mut t = [0u8; 512];
    let mut i = 0;
    while i < 512 {
        t[i] = i as u8;
        i += 1;
    }
    t
};

/// Writes a PCMU RTP packet (version 2, PT 0) of stream `ssrc` into `buf`.
pub fn write_packet(buf: &mut [u8; PACKET_LEN], seq: u16, ts: u32, ssrc: u32) {
    buf[0] = 0x80;
    buf[1] = 0x00;
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&ts.to_be_bytes());
    buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
    let at = seq as usize & 0xff;
    buf[RTP_HEADER..].copy_from_slice(&PATTERN[at..at + G711_PAYLOAD]);
}

/// Checks a received datagram against what [`write_packet`] sends: returns its SSRC
/// when the length, RTP header and payload are intact.
pub fn check_packet(data: &[u8]) -> Option<u32> {
    if data.len() != PACKET_LEN || data[0] != 0x80 || data[1] & 0x7f != 0 {
        return None;
    }
    let seq = u16::from_be_bytes([data[2], data[3]]);
    let at = seq as usize & 0xff;
    if data[RTP_HEADER..] != PATTERN[at..at + G711_PAYLOAD] {
        return None;
    }
    Some(u32::from_be_bytes([data[8], data[9], data[10], data[11]]))
}

/// One relay session as the blaster drives it: the caller (A) and callee (B) endpoints
/// and the relay's ports each of them sends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLine {
    /// Caller endpoint.
    pub a: SocketAddr,
    /// Callee endpoint.
    pub b: SocketAddr,
    /// Relay address A sends to (relayed to B).
    pub relay_for_a: SocketAddr,
    /// Relay address B sends to (relayed to A).
    pub relay_for_b: SocketAddr,
}

impl SessionLine {
    /// One line of the sessions file: `a b relay_for_a relay_for_b` (socket addresses).
    pub fn to_line(&self) -> String {
        format!(
            "{} {} {} {}",
            self.a, self.b, self.relay_for_a, self.relay_for_b
        )
    }

    /// Parses [`Self::to_line`]'s format.
    pub fn parse(line: &str) -> anyhow::Result<SessionLine> {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 4 {
            bail!("sessions file line {line:?}: want 4 addresses");
        }
        let p = |s: &str| -> anyhow::Result<SocketAddr> {
            s.parse().with_context(|| format!("bad address {s:?}"))
        };
        Ok(SessionLine {
            a: p(f[0])?,
            b: p(f[1])?,
            relay_for_a: p(f[2])?,
            relay_for_b: p(f[3])?,
        })
    }
}

/// Writes a sessions file (one [`SessionLine`] per line), atomically (temp + rename),
/// so that a script waiting for the file never reads half of it.
pub fn write_sessions(path: &Path, lines: &[SessionLine]) -> anyhow::Result<()> {
    let mut text = String::with_capacity(lines.len() * 64);
    for l in lines {
        text.push_str(&l.to_line());
        text.push('\n');
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Reads the first `n` sessions of a sessions file.
pub fn read_sessions(path: &Path, n: usize) -> anyhow::Result<Vec<SessionLine>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let lines = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(n)
        .map(SessionLine::parse)
        .collect::<anyhow::Result<Vec<_>>>()?;
    if lines.len() < n {
        bail!(
            "{} holds {} sessions, {n} wanted",
            path.display(),
            lines.len()
        );
    }
    Ok(lines)
}

/// The peer endpoints of session `i`: caller `a_ip`, callee `b_ip`, port
/// `base_port + 2 * (i % per_side)` on each side. `per_side` = the number of sessions
/// gives every session its own endpoints; a small `per_side` makes sessions share them
/// (the relay still sees one session per port pair of its own).
pub fn endpoints(
    i: usize,
    a_ip: IpAddr,
    b_ip: IpAddr,
    base_port: u16,
    per_side: usize,
) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let k = i % per_side.max(1);
    let port = u16::try_from(base_port as usize + 2 * k)
        .map_err(|_| anyhow!("endpoint port beyond 65535 (base {base_port}, index {k})"))?;
    Ok((SocketAddr::new(a_ip, port), SocketAddr::new(b_ip, port)))
}

/// Raises the open-files limit to its hard limit (4 sockets per relay session).
pub fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

// ---------------------------------------------------------------------------------
// CPU time from /proc

/// Clock ticks per second of `/proc/*/stat` times.
pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// `(comm, utime + stime in ticks)` of a `/proc/.../stat` file.
fn stat_ticks(path: &Path) -> Option<(String, u64)> {
    let s = std::fs::read_to_string(path).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?.to_owned();
    // Fields after ") ": state is field 3, utime 14, stime 15.
    let f: Vec<&str> = s.get(close + 2..)?.split_whitespace().collect();
    let ut: u64 = f.get(11)?.parse().ok()?;
    let st: u64 = f.get(12)?.parse().ok()?;
    Some((comm, ut + st))
}

/// CPU seconds used so far by process `pid` (all its threads, utime + stime).
pub fn process_cpu_s(pid: u32) -> Option<f64> {
    stat_ticks(Path::new(&format!("/proc/{pid}/stat"))).map(|(_, t)| t as f64 / clk_tck())
}

/// CPU seconds used so far by those threads of `pid` whose name starts with `prefix`.
pub fn threads_cpu_s(pid: u32, prefix: &str) -> Option<f64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut ticks = 0u64;
    for e in dir.flatten() {
        if let Some((comm, t)) = stat_ticks(&e.path().join("stat")) {
            if comm.starts_with(prefix) {
                ticks += t;
            }
        }
    }
    Some(ticks as f64 / clk_tck())
}

/// One CPU's times so far from `/proc/stat`, in seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTimes {
    /// Idle + iowait. Measured at every idle entry and exit on a tickless kernel, so
    /// exact, interrupts and softirqs excluded (unlike the other columns, which are
    /// sampled at ticks and miss the short softirq bursts of a mostly idle CPU).
    pub idle: f64,
    /// Processes at nice > 0 (other sessions' builds; relays and blaster run at <= 0).
    pub nice: f64,
    /// Softirq (tick-sampled: only a hint of where the network work ran).
    pub softirq: f64,
}

impl CpuTimes {
    /// Busy seconds over a window of `wall` seconds from `self` to `later`: the wall
    /// time minus idle and nice > 0 (whoever the work was for: the in-kernel fast path
    /// runs in softirqs).
    pub fn busy_s(&self, later: &CpuTimes, wall: f64) -> f64 {
        (wall - (later.idle - self.idle) - (later.nice - self.nice)).max(0.0)
    }
}

/// Every CPU's [`CpuTimes`], CPU 0 first.
pub fn cpu_times() -> Vec<CpuTimes> {
    let Ok(s) = std::fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    let tck = clk_tck();
    s.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            // cpuN user nice system idle iowait irq softirq ...
            let f: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .take(7)
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            let at = |i: usize| f.get(i).copied().unwrap_or(0) as f64 / tck;
            CpuTimes {
                idle: at(3) + at(4),
                nice: at(1),
                softirq: at(6),
            }
        })
        .collect()
}

/// CPU seconds used so far by this process.
pub fn self_cpu_s() -> f64 {
    // SAFETY: getrusage fills the zeroed struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

// ---------------------------------------------------------------------------------
// rtpengine ng protocol: "<cookie> <bencoded dict>" over UDP

/// A bencode value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bencode {
    /// Integer.
    Int(i64),
    /// Byte string.
    Bytes(Vec<u8>),
    /// List.
    List(Vec<Bencode>),
    /// Dictionary (keys sorted, as bencode wants).
    Dict(BTreeMap<Vec<u8>, Bencode>),
}

impl Bencode {
    /// A byte string from text.
    pub fn str(s: &str) -> Bencode {
        Bencode::Bytes(s.as_bytes().to_vec())
    }

    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Bencode::Int(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
            Bencode::Bytes(b) => {
                out.extend_from_slice(format!("{}:", b.len()).as_bytes());
                out.extend_from_slice(b);
            }
            Bencode::List(l) => {
                out.push(b'l');
                l.iter().for_each(|v| v.encode(out));
                out.push(b'e');
            }
            Bencode::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    Bencode::Bytes(k.clone()).encode(out);
                    v.encode(out);
                }
                out.push(b'e');
            }
        }
    }

    /// Decodes one value at the start of `b`; returns it and the bytes consumed.
    pub fn decode(b: &[u8]) -> anyhow::Result<(Bencode, usize)> {
        let first = *b.first().ok_or_else(|| anyhow!("bencode: truncated"))?;
        match first {
            b'i' => {
                let end = find(b, b'e')?;
                let n = std::str::from_utf8(&b[1..end])?.parse()?;
                Ok((Bencode::Int(n), end + 1))
            }
            b'l' | b'd' => {
                let mut at = 1;
                let mut items = Vec::new();
                while *b.get(at).ok_or_else(|| anyhow!("bencode: truncated"))? != b'e' {
                    let (v, used) = Bencode::decode(&b[at..])?;
                    items.push(v);
                    at += used;
                }
                if first == b'l' {
                    return Ok((Bencode::List(items), at + 1));
                }
                let mut d = BTreeMap::new();
                let mut it = items.into_iter();
                while let Some(k) = it.next() {
                    let Bencode::Bytes(k) = k else {
                        bail!("bencode: dictionary key is not a string");
                    };
                    let v = it
                        .next()
                        .ok_or_else(|| anyhow!("bencode: key without value"))?;
                    d.insert(k, v);
                }
                Ok((Bencode::Dict(d), at + 1))
            }
            b'0'..=b'9' => {
                let colon = find(b, b':')?;
                let n: usize = std::str::from_utf8(&b[..colon])?.parse()?;
                let start = colon + 1;
                let s = b
                    .get(start..start + n)
                    .ok_or_else(|| anyhow!("bencode: string runs past the end"))?;
                Ok((Bencode::Bytes(s.to_vec()), start + n))
            }
            c => bail!("bencode: unexpected byte {c:#x}"),
        }
    }

    /// The value of `key` in a dictionary.
    pub fn get(&self, key: &str) -> Option<&Bencode> {
        match self {
            Bencode::Dict(d) => d.get(key.as_bytes()),
            _ => None,
        }
    }

    /// The value as text, for a byte string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Bencode::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
}

fn find(b: &[u8], c: u8) -> anyhow::Result<usize> {
    b.iter()
        .position(|&x| x == c)
        .ok_or_else(|| anyhow!("bencode: missing {:?}", c as char))
}

/// A dictionary from `(key, value)` pairs.
pub fn dict(pairs: Vec<(&str, Bencode)>) -> Bencode {
    Bencode::Dict(
        pairs
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v))
            .collect(),
    )
}

/// A client of rtpengine's ng control protocol.
pub struct NgClient {
    sock: UdpSocket,
    server: SocketAddr,
    seq: u64,
}

impl NgClient {
    /// A client of the ng server at `server`, waiting `timeout` per try.
    pub fn new(server: SocketAddr, timeout: Duration) -> anyhow::Result<NgClient> {
        let local: SocketAddr = match server {
            SocketAddr::V4(_) => "127.0.0.1:0",
            SocketAddr::V6(_) => "[::1]:0",
        }
        .parse()?;
        let sock = UdpSocket::bind(local)?;
        sock.set_read_timeout(Some(timeout))?;
        Ok(NgClient {
            sock,
            server,
            seq: 0,
        })
    }

    /// Sends `msg` (a dictionary with a `command`) and returns the answer's dictionary,
    /// trying `tries` times.
    pub fn call(&mut self, msg: &Bencode, tries: usize) -> anyhow::Result<Bencode> {
        self.seq += 1;
        let cookie = format!("{}_{}", std::process::id(), self.seq);
        let mut out = cookie.clone().into_bytes();
        out.push(b' ');
        msg.encode(&mut out);
        let mut buf = vec![0u8; 65536];
        for _ in 0..tries.max(1) {
            self.sock.send_to(&out, self.server)?;
            loop {
                let n = match self.sock.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut =>
                    {
                        break
                    }
                    Err(e) => return Err(e.into()),
                };
                let data = &buf[..n];
                let Some(sp) = data.iter().position(|&c| c == b' ') else {
                    continue;
                };
                if &data[..sp] != cookie.as_bytes() {
                    continue; // an answer to an earlier try
                }
                let (v, _) = Bencode::decode(&data[sp + 1..])?;
                return Ok(v);
            }
        }
        bail!("no ng answer from {} after {} tries", self.server, tries)
    }

    /// True when the server answers `ping` with `pong`.
    pub fn ping(&mut self) -> bool {
        self.call(&dict(vec![("command", Bencode::str("ping"))]), 1)
            .map(|r| r.get("result").and_then(Bencode::as_str) == Some("pong"))
            .unwrap_or(false)
    }

    /// Creates call `call_id` with `offer` (caller's SDP for `a`) and `answer` (callee's
    /// SDP for `b`); returns the relay addresses `(for_a, for_b)`: where A must send (the
    /// answer's rewritten `c=`/`m=`) and where B must send (the offer's).
    pub fn offer_answer(
        &mut self,
        call_id: &str,
        a: SocketAddr,
        b: SocketAddr,
    ) -> anyhow::Result<(SocketAddr, SocketAddr)> {
        let common = |cmd: &str, sdp_text: String, to_tag: bool| {
            let mut p = vec![
                ("command", Bencode::str(cmd)),
                ("call-id", Bencode::str(call_id)),
                ("from-tag", Bencode::str("ft")),
                ("sdp", Bencode::str(&sdp_text)),
                (
                    "replace",
                    Bencode::List(vec![
                        Bencode::str("origin"),
                        Bencode::str("session-connection"),
                    ]),
                ),
            ];
            if to_tag {
                p.push(("to-tag", Bencode::str("tt")));
            }
            dict(p)
        };
        let r = self.call(&common("offer", sdp(a), false), 3)?;
        let for_b = answer_addr(&r).context("offer")?;
        let r = self.call(&common("answer", sdp(b), true), 3)?;
        let for_a = answer_addr(&r).context("answer")?;
        Ok((for_a, for_b))
    }
}

/// A G.711 audio SDP for a peer at `at`.
pub fn sdp(at: SocketAddr) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n",
        ip = at.ip(),
        port = at.port()
    )
}

/// The media address of an ng answer's rewritten SDP.
fn answer_addr(r: &Bencode) -> anyhow::Result<SocketAddr> {
    if r.get("result").and_then(Bencode::as_str) != Some("ok") {
        bail!("rtpengine refused: {r:?}");
    }
    let text = r
        .get("sdp")
        .and_then(Bencode::as_str)
        .ok_or_else(|| anyhow!("no sdp in {r:?}"))?;
    let mut ip = None;
    let mut port = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("c=IN IP4 ") {
            ip = rest.trim().parse::<IpAddr>().ok();
        } else if let Some(rest) = line.strip_prefix("m=audio ") {
            port = rest.split_whitespace().next().and_then(|p| p.parse().ok());
        }
    }
    match (ip, port) {
        (Some(ip), Some(port)) => Ok(SocketAddr::new(ip, port)),
        _ => bail!("no c=/m=audio in rtpengine's SDP:\n{text}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_packet_checks_and_a_damaged_one_does_not() {
        let mut p = [0u8; PACKET_LEN];
        write_packet(&mut p, 65535, 7, SSRC_BASE + 3);
        assert_eq!(check_packet(&p), Some(SSRC_BASE + 3));
        assert_eq!(p[RTP_HEADER + 1], payload_byte(65535, 1));
        p[100] ^= 1;
        assert_eq!(check_packet(&p), None);
        assert_eq!(check_packet(&p[..100]), None);
    }

    #[test]
    fn bencode_round_trips() {
        let v = dict(vec![
            ("command", Bencode::str("offer")),
            ("n", Bencode::Int(-3)),
            (
                "l",
                Bencode::List(vec![Bencode::str("a b"), Bencode::Int(0)]),
            ),
        ]);
        let mut out = Vec::new();
        v.encode(&mut out);
        assert_eq!(out, b"d7:command5:offer1:ll3:a bi0ee1:ni-3ee".to_vec());
        let (back, used) = Bencode::decode(&out).unwrap();
        assert_eq!((back, used), (v, out.len()));
    }

    #[test]
    fn sessions_lines_round_trip() {
        let (a, b) = endpoints(
            5,
            "127.0.0.2".parse().unwrap(),
            "127.0.0.3".parse().unwrap(),
            20000,
            4,
        )
        .unwrap();
        assert_eq!((a.port(), b.port()), (20002, 20002));
        let l = SessionLine {
            a,
            b,
            relay_for_a: "127.0.0.1:30000".parse().unwrap(),
            relay_for_b: "127.0.0.1:30002".parse().unwrap(),
        };
        assert_eq!(SessionLine::parse(&l.to_line()).unwrap(), l);
    }
}
