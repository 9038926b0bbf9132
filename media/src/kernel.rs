//! The in-kernel fast path of the `udp` backend: a TC ingress classifier
//! (`media/bpf/relay_tc.c`) forwards latched streams without entering a socket, driven
//! by the pinned BPF hash map `relay_streams`.
//!
//! This module needs no BPF library: the program is compiled with clang
//! ([`compile_program`]) and attached with iproute2's `tc` ([`TcProgram::attach`]), which
//! pins the map; the map is then opened and updated with plain `bpf(2)` calls
//! ([`StreamMap`]). Everything needs root (`CAP_BPF` + `CAP_NET_ADMIN`).

use std::ffi::CString;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where iproute2 pins maps declared with `LIBBPF_PIN_BY_NAME`.
pub const PINNED_MAP: &str = "/sys/fs/bpf/tc/globals/relay_streams";
/// The classifier's source, relative to the workspace root.
pub const PROGRAM_SOURCE: &str = "media/bpf/relay_tc.c";
/// The `tc` filter priority the fast path uses, so that it removes only its own filter.
const TC_PREF: &str = "4917";

// bpf(2) commands (linux/bpf.h).
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;

/// Key of the map: the relay's address and port a stream arrives at (network order).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Key {
    addr: u32,
    port: u16,
    pad: u16,
}

/// Value of the map; the layout of `struct stream_val` in `relay_tc.c`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Value {
    src_addr: u32,
    src_port: u16,
    flags: u16,
    out_saddr: u32,
    out_sport: u16,
    pad1: u16,
    out_daddr: u32,
    out_dport: u16,
    pad2: u16,
    ifindex: u32,
    pad3: u32,
    packets: u64,
    bytes: u64,
    last_ns: u64,
}

fn key_of(at: SocketAddrV4) -> Key {
    Key {
        addr: u32::from_ne_bytes(at.ip().octets()),
        port: at.port().to_be(),
        pad: 0,
    }
}

/// One direction of a relayed stream, as the kernel forwards it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream {
    /// The relay's address and port the stream arrives at.
    pub relay_in: SocketAddrV4,
    /// The latched source: datagrams from anywhere else go to user space.
    pub source: SocketAddrV4,
    /// The relay's address and port on the other side: the forwarded datagram's source.
    pub relay_out: SocketAddrV4,
    /// The other side's peer: the forwarded datagram's destination.
    pub dest: SocketAddrV4,
    /// Interface index to send from (on `lo`, the datagram loops back).
    pub ifindex: u32,
    /// Route it (`bpf_fib_lookup`) and rebuild its Ethernet header for the next hop
    /// (`bpf_redirect_neigh`): on any interface but a loopback one.
    pub neigh: bool,
}

/// `FLAG_NEIGH` of `relay_tc.c`.
const FLAG_NEIGH: u16 = 1;

/// What the kernel forwarded of one stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamCounters {
    /// Datagrams forwarded.
    pub packets: u64,
    /// UDP payload bytes forwarded.
    pub bytes: u64,
    /// `CLOCK_MONOTONIC` nanoseconds of the last one (0: none yet); compare with
    /// [`monotonic_ns`].
    pub last_ns: u64,
}

/// `CLOCK_MONOTONIC` now, in nanoseconds: the clock of [`StreamCounters::last_ns`].
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The index of interface `name`.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c = CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(i)
    }
}

/// The `bpf(2)` attribute for the element commands (`union bpf_attr`'s first members).
#[repr(C, align(8))]
struct ElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: attr is a live, correctly laid out `union bpf_attr` prefix of the given size;
    // the kernel zero-extends the rest.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The pinned stream map.
#[derive(Debug)]
pub struct StreamMap {
    fd: OwnedFd,
}

impl StreamMap {
    /// Opens the map pinned at `path` (normally [`PINNED_MAP`]).
    pub fn open(path: &Path) -> io::Result<StreamMap> {
        #[repr(C, align(8))]
        struct ObjAttr {
            pathname: u64,
            bpf_fd: u32,
            file_flags: u32,
        }
        let c = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut attr = ObjAttr {
            pathname: c.as_ptr() as u64,
            bpf_fd: 0,
            file_flags: 0,
        };
        let fd = sys_bpf(BPF_OBJ_GET, &mut attr)?;
        // SAFETY: a fresh descriptor the kernel just handed to us.
        Ok(StreamMap {
            fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        })
    }

    fn elem(&self, cmd: libc::c_long, key: &Key, value: u64, flags: u64) -> io::Result<()> {
        let mut attr = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            pad: 0,
            key: key as *const Key as u64,
            value,
            flags,
        };
        sys_bpf(cmd, &mut attr).map(|_| ())
    }

    /// Installs (or replaces) a stream; its counters start at zero.
    pub fn install(&self, s: &Stream) -> io::Result<()> {
        let v = Value {
            src_addr: u32::from_ne_bytes(s.source.ip().octets()),
            src_port: s.source.port().to_be(),
            out_saddr: u32::from_ne_bytes(s.relay_out.ip().octets()),
            out_sport: s.relay_out.port().to_be(),
            out_daddr: u32::from_ne_bytes(s.dest.ip().octets()),
            out_dport: s.dest.port().to_be(),
            ifindex: s.ifindex,
            flags: if s.neigh { FLAG_NEIGH } else { 0 },
            ..Value::default()
        };
        // flags 0 = BPF_ANY: create or replace
        self.elem(
            BPF_MAP_UPDATE_ELEM,
            &key_of(s.relay_in),
            &v as *const Value as u64,
            0,
        )
    }

    /// The counters of the stream arriving at `relay_in`, if installed.
    pub fn counters(&self, relay_in: SocketAddrV4) -> io::Result<Option<StreamCounters>> {
        self.read(BPF_MAP_LOOKUP_ELEM, relay_in)
    }

    /// Removes the stream arriving at `relay_in`; its last counters, if it was installed
    /// (read and deleted in one call, so nothing forwarded in between goes uncounted).
    pub fn remove(&self, relay_in: SocketAddrV4) -> io::Result<Option<StreamCounters>> {
        self.read(BPF_MAP_LOOKUP_AND_DELETE_ELEM, relay_in)
    }

    /// Runs the lookup command `cmd` on the stream arriving at `relay_in`.
    fn read(&self, cmd: i64, relay_in: SocketAddrV4) -> io::Result<Option<StreamCounters>> {
        let mut v = Value::default();
        match self.elem(cmd, &key_of(relay_in), &mut v as *mut Value as u64, 0) {
            Ok(()) => Ok(Some(StreamCounters {
                packets: v.packets,
                bytes: v.bytes,
                last_ns: v.last_ns,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every installed stream's `relay_in` (for cleaning up after a crashed relay).
    pub fn keys(&self) -> io::Result<Vec<SocketAddrV4>> {
        let mut out = Vec::new();
        let mut prev: Option<Key> = None;
        loop {
            let mut next = Key::default();
            let prev_ptr = prev.as_ref().map_or(0, |k| k as *const Key as u64);
            let mut attr = ElemAttr {
                map_fd: self.fd.as_raw_fd() as u32,
                pad: 0,
                key: prev_ptr,
                value: &mut next as *mut Key as u64,
                flags: 0,
            };
            match sys_bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
                Err(e) => return Err(e),
            }
            out.push(SocketAddrV4::new(
                Ipv4Addr::from(next.addr.to_ne_bytes()),
                u16::from_be(next.port),
            ));
            prev = Some(next);
        }
    }
}

/// Where the relay's fast path runs (`RelayConfig::kernel_forwarding`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelForwarding {
    /// Interface whose ingress the classifier is attached to and that forwarded
    /// datagrams leave from (`lo` for peers on this host).
    pub interface: String,
    /// The classifier: a BPF object, or its C source (`.c`, compiled with clang at start).
    pub program: PathBuf,
}

impl KernelForwarding {
    /// Attaches the program (compiling it first when given as C source).
    pub fn attach(&self) -> io::Result<TcProgram> {
        if self.program.extension().is_some_and(|e| e == "c") {
            let obj = std::env::temp_dir().join(format!("relay_tc-{}.o", std::process::id()));
            compile_program(&self.program, &obj)?;
            let attached = TcProgram::attach(&self.interface, &obj);
            let _ = std::fs::remove_file(&obj);
            attached
        } else {
            TcProgram::attach(&self.interface, &self.program)
        }
    }
}

/// Compiles the classifier `source` to the BPF object `out` with clang (needed at run
/// time only where the fast path is used, so that building the crate never needs clang).
pub fn compile_program(source: &Path, out: &Path) -> io::Result<()> {
    let arch_include = format!("/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    let status = Command::new("clang")
        .args(["-O2", "-g", "-target", "bpf", "-I", &arch_include, "-c"])
        .arg(source)
        .arg("-o")
        .arg(out)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("clang failed ({status})")))
    }
}

fn tc(args: &[&str]) -> io::Result<()> {
    let out = Command::new("tc").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "tc {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The classifier attached to an interface's ingress; detached (and its map unpinned)
/// when dropped.
#[derive(Debug)]
pub struct TcProgram {
    dev: String,
    /// The interface's index.
    pub ifindex: u32,
    /// It is a loopback interface: forwarded datagrams need no next hop.
    pub loopback: bool,
    added_qdisc: bool,
    /// The pinned map the program uses.
    pub map: StreamMap,
}

impl TcProgram {
    /// Attaches the BPF object `object` to `dev`'s ingress with a fresh, empty map.
    pub fn attach(dev: &str, object: &Path) -> io::Result<TcProgram> {
        // bpffs where iproute2 pins; mounting twice is harmless to skip
        if !Path::new("/sys/fs/bpf/tc").exists() {
            let _ = Command::new("mount")
                .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
                .status();
        }
        // A map left pinned by an earlier run would keep its stale streams.
        let _ = std::fs::remove_file(PINNED_MAP);
        let shown = Command::new("tc")
            .args(["qdisc", "show", "dev", dev])
            .output()?;
        let had_clsact = String::from_utf8_lossy(&shown.stdout).contains("clsact");
        if !had_clsact {
            tc(&["qdisc", "add", "dev", dev, "clsact"])?;
        }
        let obj = object.to_string_lossy();
        let detach_on_error = |e: io::Error| {
            if !had_clsact {
                let _ = tc(&["qdisc", "del", "dev", dev, "clsact"]);
            }
            e
        };
        tc(&[
            "filter", "replace", "dev", dev, "ingress", "pref", TC_PREF, "handle", "1", "bpf",
            "da", "obj", &obj, "sec", "tc",
        ])
        .map_err(detach_on_error)?;
        let map = StreamMap::open(&PathBuf::from(PINNED_MAP)).map_err(detach_on_error)?;
        Ok(TcProgram {
            dev: dev.to_owned(),
            ifindex: ifindex(dev)?,
            loopback: std::fs::read_to_string(format!("/sys/class/net/{dev}/type"))
                .is_ok_and(|t| t.trim() == "772"), // ARPHRD_LOOPBACK
            added_qdisc: !had_clsact,
            map,
        })
    }
}

impl Drop for TcProgram {
    fn drop(&mut self) {
        let _ = tc(&[
            "filter", "del", "dev", &self.dev, "ingress", "pref", TC_PREF,
        ]);
        if self.added_qdisc {
            let _ = tc(&["qdisc", "del", "dev", &self.dev, "clsact"]);
        }
        let _ = std::fs::remove_file(PINNED_MAP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_c_structs() {
        assert_eq!(std::mem::size_of::<Key>(), 8);
        assert_eq!(std::mem::size_of::<Value>(), 56);
        assert_eq!(std::mem::offset_of!(Value, ifindex), 24);
        assert_eq!(std::mem::offset_of!(Value, packets), 32);
    }

    #[test]
    fn keys_are_in_network_order() {
        let k = key_of("127.0.0.1:258".parse().unwrap());
        assert_eq!(k.addr.to_ne_bytes(), [127, 0, 0, 1]);
        assert_eq!(k.port.to_ne_bytes(), [1, 2]);
    }
}
