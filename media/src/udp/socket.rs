//! Relay sockets: non-blocking UDP bound with `SO_REUSEPORT`.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd};

/// Binds a non-blocking, close-on-exec UDP socket to `addr`. With `reuse_port`,
/// `SO_REUSEPORT` is set first, so that a process taking over sessions (a restarted
/// or standby relay of the same user) can bind their ports while the old sockets
/// still exist; two live holders would share the traffic, so the allocator, not the
/// kernel, keeps ports unique within a relay.
pub fn bind_udp(addr: SocketAddr, reuse_port: bool) -> io::Result<UdpSocket> {
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
    if reuse_port {
        let on: libc::c_int = 1;
        // SAFETY: fd is open; the option value is a c_int of the given size.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEPORT,
                &on as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuse_port_lets_a_second_socket_bind_and_without_it_bind_fails() {
        let a = bind_udp("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let at = a.local_addr().unwrap();
        let b = bind_udp(at, true).unwrap();
        assert_eq!(b.local_addr().unwrap(), at);
        let e = bind_udp(at, false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        let plain = UdpSocket::bind("127.0.0.1:0").unwrap();
        let e = bind_udp(plain.local_addr().unwrap(), true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    }
}
