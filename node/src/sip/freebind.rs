//! Binding listeners to an address this host may not hold yet (`IP_FREEBIND`): every
//! cluster member opens its SIP sockets on the virtual IP at start, and only the member
//! holding the address receives on them.

use socket2::{Domain, Socket, Type};
use std::io;
use std::net::SocketAddr;

/// A socket of `kind` bound to `addr`, with `IP_FREEBIND` when `freebind`, and
/// `SO_REUSEADDR` for streams (a restarted node rebinds while old connections linger
/// in TIME_WAIT).
fn bind(addr: SocketAddr, kind: Type, freebind: bool) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), kind, None)?;
    if kind == Type::STREAM {
        s.set_reuse_address(true)?;
    }
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if freebind {
        match addr {
            SocketAddr::V4(_) => s.set_freebind_v4(true)?,
            SocketAddr::V6(_) => s.set_freebind_v6(true)?,
        }
    }
    s.bind(&addr.into())?;
    Ok(s)
}

/// A UDP socket on `addr`.
pub fn udp(addr: SocketAddr, freebind: bool) -> io::Result<std::net::UdpSocket> {
    bind(addr, Type::DGRAM, freebind).map(Into::into)
}

/// A TCP listener on `addr`.
pub fn tcp_listener(addr: SocketAddr, freebind: bool) -> io::Result<std::net::TcpListener> {
    let s = bind(addr, Type::STREAM, freebind)?;
    s.listen(1024)?;
    Ok(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_not_held_binds_only_with_freebind() {
        // TEST-NET-1: on no interface of a test machine.
        let absent: SocketAddr = "192.0.2.77:0".parse().unwrap();
        assert!(udp(absent, false).is_err());
        let s = udp(absent, true).unwrap();
        assert_eq!(s.local_addr().unwrap().ip(), absent.ip());
        let l = tcp_listener(absent, true).unwrap();
        assert_eq!(l.local_addr().unwrap().ip(), absent.ip());
        assert!(tcp_listener(absent, false).is_err());
        if udp("[::1]:0".parse().unwrap(), false).is_ok() {
            assert!(udp("[2001:db8::77]:0".parse().unwrap(), true).is_ok());
        }
    }

    #[test]
    fn ordinary_binds_work_and_ports_resolve() {
        let s = udp("127.0.0.1:0".parse().unwrap(), false).unwrap();
        assert_ne!(s.local_addr().unwrap().port(), 0);
        let l = tcp_listener("127.0.0.1:0".parse().unwrap(), false).unwrap();
        std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    }
}
