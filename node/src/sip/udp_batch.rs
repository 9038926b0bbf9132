//! Many UDP datagrams per system call (Linux `sendmmsg`).
//!
//! The core answers in bursts (the REGISTER 200s released by one store write, the
//! challenges of one inbound batch); one `sendto` each made the syscall entry and exit a
//! visible share of the node's CPU at tens of thousands of messages per second.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// Most datagrams handed to the kernel in one call.
pub const SEND_BATCH: usize = 64;

/// `addr` as a C socket address.
fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid (unspecified) value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// What became of a batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Datagrams the kernel accepted.
    pub ok: usize,
    /// Datagrams refused (bad address, too large, buffer full): counted, not retried
    /// here, as with a single `sendto` (SIP retransmits over UDP).
    pub failed: usize,
}

/// Sends each `(to, bytes)` as one datagram on the non-blocking socket `fd`.
pub fn send_many(fd: RawFd, msgs: &[(SocketAddr, &[u8])]) -> Sent {
    let mut result = Sent::default();
    let mut rest = msgs;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(SEND_BATCH)];
        let mut addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)> =
            chunk.iter().map(|(a, _)| sockaddr(a)).collect();
        let mut iovs: Vec<libc::iovec> = chunk
            .iter()
            .map(|(_, b)| libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        let mut hdrs: Vec<libc::mmsghdr> = addrs
            .iter_mut()
            .zip(iovs.iter_mut())
            .map(|((ss, len), iov)| {
                // SAFETY: msghdr is plain data; the fields that matter are set below.
                let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
                h.msg_name = ss as *mut _ as *mut libc::c_void;
                h.msg_namelen = *len;
                h.msg_iov = iov as *mut libc::iovec;
                h.msg_iovlen = 1;
                libc::mmsghdr {
                    msg_hdr: h,
                    msg_len: 0,
                }
            })
            .collect();
        // SAFETY: every pointer in `hdrs` points into `addrs`, `iovs` or the caller's
        // byte slices, all alive and unmoved until the call returns.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                hdrs.as_mut_ptr(),
                hdrs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            result.ok += n as usize;
            rest = &rest[n as usize..];
            continue;
        }
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        // The first datagram of the chunk failed: count it and go on with the next.
        result.failed += 1;
        rest = &rest[1..];
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn sends_every_datagram_in_order_over_ipv4_and_ipv6() {
        for any in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(rx) = std::net::UdpSocket::bind(any) else {
                continue; // no IPv6 on this host
            };
            let tx = std::net::UdpSocket::bind(any).unwrap();
            tx.set_nonblocking(true).unwrap();
            let to = rx.local_addr().unwrap();
            let payloads: Vec<Vec<u8>> = (0..150).map(|i| format!("msg {i}").into()).collect();
            let msgs: Vec<(SocketAddr, &[u8])> =
                payloads.iter().map(|p| (to, p.as_slice())).collect();
            assert_eq!(
                send_many(tx.as_raw_fd(), &msgs),
                Sent { ok: 150, failed: 0 }
            );
            let mut buf = [0u8; 64];
            for p in &payloads {
                let (n, from) = rx.recv_from(&mut buf).unwrap();
                assert_eq!(&buf[..n], p.as_slice());
                assert_eq!(from, tx.local_addr().unwrap());
            }
        }
    }

    #[test]
    fn a_refused_datagram_is_counted_and_the_rest_still_go() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.set_nonblocking(true).unwrap();
        let to = rx.local_addr().unwrap();
        let v6: SocketAddr = "[::1]:9".parse().unwrap(); // wrong family for this socket
        let big = vec![0u8; 70_000]; // above the UDP maximum
        let msgs: Vec<(SocketAddr, &[u8])> = vec![(to, b"a"), (v6, b"x"), (to, &big), (to, b"b")];
        assert_eq!(send_many(tx.as_raw_fd(), &msgs), Sent { ok: 2, failed: 2 });
        let mut buf = [0u8; 8];
        for want in [b"a", b"b"] {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], want);
        }
    }
}
