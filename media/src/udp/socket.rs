//! Relay sockets: non-blocking UDP bound with `SO_REUSEPORT`, and with `IP_FREEBIND`
//! where the relay address is a virtual IP this node may not hold yet.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd};

/// Options set on a relay socket before it is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SocketOptions {
    /// `SO_REUSEPORT`: a process taking over sessions (a restarted or standby relay
    /// of the same user) can bind their ports while the old sockets still exist; two
    /// live holders would share the traffic, so the allocator, not the kernel, keeps
    /// ports unique within a relay.
    pub reuse_port: bool,
    /// `IP_FREEBIND` / `IPV6_FREEBIND`: the bind succeeds for an address no interface
    /// holds. Every node binds its relay to the cluster's virtual IP, so that the
    /// node the VIP moves to already has (or can open) sockets on the ports the phones
    /// keep sending to; they receive once the address arrives.
    pub freebind: bool,
}

/// Binds a non-blocking, close-on-exec UDP socket to `addr`, with `options` set
/// first.
pub fn bind_udp(addr: SocketAddr, options: SocketOptions) -> io::Result<UdpSocket> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a freshly created socket that nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    if options.reuse_port {
        set_flag(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT)?;
    }
    if options.freebind {
        match addr {
            SocketAddr::V4(_) => set_flag(fd, libc::IPPROTO_IP, libc::IP_FREEBIND)?,
            SocketAddr::V6(_) => set_flag(fd, libc::IPPROTO_IPV6, libc::IPV6_FREEBIND)?,
        }
    }
    let mut ss: libc::sockaddr_storage =
        // SAFETY: plain data; all-zero is valid.
        unsafe { std::mem::zeroed() };
    let len = crate::sockaddr::write_sockaddr(&addr, &mut ss);
    // SAFETY: ss holds a socket address of `len` bytes matching the socket family.
    let r = unsafe { libc::bind(fd, &ss as *const _ as *const libc::sockaddr, len) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UdpSocket::from(owned))
}

/// Turns on the boolean socket option `name` of `level`.
fn set_flag(fd: libc::c_int, level: libc::c_int, name: libc::c_int) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: fd is open; the option value is a c_int of the given size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REUSE: SocketOptions = SocketOptions {
        reuse_port: true,
        freebind: false,
    };
    const FREEBIND: SocketOptions = SocketOptions {
        reuse_port: true,
        freebind: true,
    };

    #[test]
    fn reuse_port_lets_a_second_socket_bind_and_without_it_bind_fails() {
        let a = bind_udp("127.0.0.1:0".parse().unwrap(), REUSE).unwrap();
        let at = a.local_addr().unwrap();
        let b = bind_udp(at, REUSE).unwrap();
        assert_eq!(b.local_addr().unwrap(), at);
        let e = bind_udp(at, SocketOptions::default()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        let plain = UdpSocket::bind("127.0.0.1:0").unwrap();
        let e = bind_udp(plain.local_addr().unwrap(), REUSE).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn freebind_binds_an_address_no_interface_holds() {
        // TEST-NET-1 and the IPv6 documentation prefix are on no interface here.
        for ip in ["192.0.2.77", "2001:db8::77"] {
            let addr = SocketAddr::new(ip.parse().unwrap(), 0);
            let e = bind_udp(addr, REUSE).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::AddrNotAvailable, "{ip}: {e}");
            let s = bind_udp(addr, FREEBIND).unwrap();
            let got = s.local_addr().unwrap();
            assert_eq!(got.ip(), addr.ip());
            assert_ne!(got.port(), 0);
        }
    }
}
