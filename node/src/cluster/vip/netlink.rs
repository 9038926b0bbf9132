//! Adding and removing an interface address through rtnetlink (what `ip addr add|del`
//! does), with one request and its acknowledgement on a fresh socket: no child process,
//! so a takeover costs microseconds, not the fork and exec of `ip`.

use crate::config::Cidr;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NLMSG_HDRLEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
/// No duplicate address detection: an IPv6 VIP is usable at once (the previous holder
/// is gone, or DAD would keep the address tentative for a second).
const IFA_F_NODAD: u32 = 0x02;

/// The index of interface `name`.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name with NUL"))?;
    // SAFETY: a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface named {name}"),
        ));
    }
    Ok(i)
}

/// Adds `addr` to interface `index` (already present is fine).
pub fn add(index: u32, addr: Cidr) -> io::Result<()> {
    request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, index, addr)
}

/// Removes `addr` from interface `index` (already absent is fine).
pub fn remove(index: u32, addr: Cidr) -> io::Result<()> {
    match request(RTM_DELADDR, 0, index, addr) {
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(()),
        other => other,
    }
}

fn attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// The request message: header, `ifaddrmsg`, address attributes.
fn message(kind: u16, flags: u16, index: u32, addr: Cidr) -> Vec<u8> {
    let (family, bytes): (u8, Vec<u8>) = match addr.ip {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    };
    let mut buf = vec![0u8; NLMSG_HDRLEN];
    buf.extend_from_slice(&[family, addr.prefix, 0, 0]); // flags, scope universe
    buf.extend_from_slice(&index.to_ne_bytes());
    debug_assert_eq!(buf.len(), NLMSG_HDRLEN + IFADDRMSG_LEN);
    attr(&mut buf, IFA_LOCAL, &bytes);
    attr(&mut buf, IFA_ADDRESS, &bytes);
    if addr.ip.is_ipv6() {
        attr(&mut buf, IFA_FLAGS, &IFA_F_NODAD.to_ne_bytes());
    }
    let len = buf.len() as u32;
    buf[0..4].copy_from_slice(&len.to_ne_bytes());
    buf[4..6].copy_from_slice(&kind.to_ne_bytes());
    buf[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | flags).to_ne_bytes());
    buf[8..12].copy_from_slice(&1u32.to_ne_bytes()); // sequence
    buf
}

fn request(kind: u16, flags: u16, index: u32, addr: Cidr) -> io::Result<()> {
    // SAFETY: plain syscall; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: a valid timeval of the declared size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &timeout as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    let msg = message(kind, flags, index, addr);
    // SAFETY: zeroed sockaddr_nl addressed to the kernel (pid 0).
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: buffer and address valid for the given lengths.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            msg.as_ptr() as *const libc::c_void,
            msg.len(),
            0,
            &kernel as *const libc::sockaddr_nl as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 1024];
    // SAFETY: a writable buffer of the given length.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            0,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    ack(&buf[..n as usize])
}

/// Reads the kernel's acknowledgement: an `NLMSG_ERROR` whose code is 0 on success.
fn ack(reply: &[u8]) -> io::Result<()> {
    if reply.len() < NLMSG_HDRLEN + 4 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short netlink reply",
        ));
    }
    let kind = u16::from_ne_bytes([reply[4], reply[5]]);
    if kind != NLMSG_ERROR {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected netlink reply type {kind}"),
        ));
    }
    let code = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
    match code {
        0 => Ok(()),
        c if c == -libc::EEXIST => Ok(()),
        c => Err(io::Error::from_raw_os_error(-c)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout() {
        let m = message(RTM_NEWADDR, NLM_F_CREATE, 7, "10.1.2.3/24".parse().unwrap());
        assert_eq!(m.len(), 16 + 8 + 8 + 8);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 40);
        assert_eq!(m[16], libc::AF_INET as u8);
        assert_eq!(m[17], 24);
        assert_eq!(u32::from_ne_bytes(m[20..24].try_into().unwrap()), 7);
        assert_eq!(&m[28..32], &[10, 1, 2, 3]);
        let m6 = message(RTM_DELADDR, 0, 3, "fd00::5/64".parse().unwrap());
        // two 20-byte address attributes and the flags attribute
        assert_eq!(m6.len(), 16 + 8 + 20 + 20 + 8);
    }

    #[test]
    fn acknowledgements() {
        let mut r = vec![0u8; 36];
        r[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert!(ack(&r).is_ok());
        r[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert_eq!(ack(&r).unwrap_err().raw_os_error(), Some(libc::EPERM));
        r[16..20].copy_from_slice(&(-libc::EEXIST).to_ne_bytes());
        assert!(ack(&r).is_ok());
        assert!(ack(&r[..10]).is_err());
    }

    /// In a network namespace of the test's own (one thread unshares it), so the
    /// machine's addresses are never touched; `ip`, forked from that thread, shows the
    /// kernel's view.
    #[test]
    fn adds_and_removes_an_address_when_root() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        std::thread::spawn(|| {
            // SAFETY: moves only this thread into a new network namespace.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            let lo = ifindex("lo").unwrap();
            let a: Cidr = "192.0.2.231/32".parse().unwrap();
            let bind = || {
                let out = std::process::Command::new("ip")
                    .args(["-o", "addr", "show", "dev", "lo"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).contains("192.0.2.231/32")
            };
            remove(lo, a).unwrap();
            assert!(!bind());
            add(lo, a).unwrap();
            add(lo, a).unwrap();
            assert!(bind());
            remove(lo, a).unwrap();
            remove(lo, a).unwrap();
            assert!(!bind());
            assert!(ifindex("no-such-if0").is_err());
        })
        .join()
        .unwrap();
    }
}
