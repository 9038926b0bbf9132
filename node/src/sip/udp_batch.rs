//! Many UDP datagrams per system call (Linux `sendmmsg` / `recvmmsg`).
//!
//! The core answers in bursts (the REGISTER 200s released by one store write, the
//! challenges of one inbound batch) and reads whatever the kernel has queued; one
//! syscall per datagram made the entry and exit a visible share of the node's CPU at
//! tens of thousands of messages per second. Received datagrams carry the kernel's
//! arrival time (`SO_TIMESTAMPNS`), so the core knows how long each one queued.

use media::sockaddr::{read_sockaddr, write_sockaddr};
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Most datagrams handed to the kernel in one call.
pub const SEND_BATCH: usize = 64;

/// `addr` as a C socket address.
fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid (unspecified) value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = write_sockaddr(addr, &mut ss);
    (ss, len)
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

/// Datagrams read per `recvmmsg` call.
pub const RECV_BATCH: usize = 32;

/// Room for one `SCM_TIMESTAMPNS` control message (a timespec), generously aligned.
const CMSG_SPACE: usize = 64;

/// Asks the kernel to stamp every datagram received on `fd` with its arrival time.
pub fn enable_timestamps(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: fd is an open socket; the value is a c_int of the given length.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reusable buffers for [`RecvBatch::recv`]: no allocation per datagram.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    addrs: Vec<libc::sockaddr_storage>,
    cmsgs: Vec<[u64; CMSG_SPACE / 8]>,
    lens: Vec<usize>,
    count: usize,
}

/// One datagram of a batch.
pub struct Datagram<'a> {
    /// The bytes, cut to `capacity` (longer datagrams are truncated, see `truncated`).
    pub data: &'a [u8],
    /// True when the datagram was longer than the buffer.
    pub truncated: bool,
    /// Sender.
    pub from: SocketAddr,
    /// How long it waited in the socket queue (zero when the kernel gave no stamp).
    pub queued: Duration,
}

impl RecvBatch {
    /// Buffers for [`RECV_BATCH`] datagrams of up to `capacity` bytes each.
    pub fn new(capacity: usize) -> RecvBatch {
        RecvBatch {
            bufs: (0..RECV_BATCH).map(|_| vec![0u8; capacity]).collect(),
            // SAFETY: plain data; all-zero is valid.
            addrs: vec![unsafe { std::mem::zeroed() }; RECV_BATCH],
            cmsgs: vec![[0u64; CMSG_SPACE / 8]; RECV_BATCH],
            lens: vec![0; RECV_BATCH],
            count: 0,
        }
    }

    /// Reads what `fd` (non-blocking) has queued, up to [`RECV_BATCH`] datagrams.
    /// `Ok(0)` never happens: an empty queue is `WouldBlock`.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let mut iovs: Vec<libc::iovec> = self
            .bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        let mut hdrs: Vec<libc::mmsghdr> = (0..RECV_BATCH)
            .map(|i| {
                // SAFETY: msghdr is plain data; the fields that matter are set below.
                let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
                h.msg_name = &mut self.addrs[i] as *mut _ as *mut libc::c_void;
                h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                h.msg_iov = &mut iovs[i] as *mut libc::iovec;
                h.msg_iovlen = 1;
                h.msg_control = self.cmsgs[i].as_mut_ptr() as *mut libc::c_void;
                h.msg_controllen = CMSG_SPACE as _;
                libc::mmsghdr {
                    msg_hdr: h,
                    msg_len: 0,
                }
            })
            .collect();
        let n = loop {
            // SAFETY: every pointer in `hdrs` points into buffers owned by `self` or
            // into `iovs`, all alive and unmoved until the call returns.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    hdrs.as_mut_ptr(),
                    RECV_BATCH as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n >= 0 {
                break n as usize;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                self.count = 0;
                return Err(err);
            }
        };
        let now = SystemTime::now();
        for (i, h) in hdrs.iter().enumerate().take(n) {
            let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.lens[i] = if truncated {
                usize::MAX
            } else {
                h.msg_len as usize
            };
            // Keep the arrival time in the control buffer's place: read it now, while
            // the header still describes it.
            let queued = arrival(&h.msg_hdr)
                .and_then(|t| now.duration_since(t).ok())
                .unwrap_or_default();
            self.cmsgs[i][0] = queued.as_nanos().min(u64::MAX as u128) as u64;
        }
        self.count = n;
        Ok(n)
    }

    /// The `i`-th datagram of the last [`Self::recv`].
    pub fn get(&self, i: usize) -> Option<Datagram<'_>> {
        if i >= self.count {
            return None;
        }
        let from = read_sockaddr(&self.addrs[i])?;
        let (len, truncated) = match self.lens[i] {
            usize::MAX => (self.bufs[i].len(), true),
            n => (n, false),
        };
        Some(Datagram {
            data: &self.bufs[i][..len],
            truncated,
            from,
            queued: Duration::from_nanos(self.cmsgs[i][0]),
        })
    }
}

/// The `SCM_TIMESTAMPNS` arrival time in a received header, if present.
fn arrival(h: &libc::msghdr) -> Option<SystemTime> {
    // SAFETY: the header and its control buffer were filled by recvmmsg; the CMSG
    // macros walk only within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::timespec);
                return Some(UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
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

    #[test]
    fn receives_a_batch_with_senders_and_queue_times() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        enable_timestamps(rx.as_raw_fd()).unwrap();
        // The kernel switches receive stamping on asynchronously; until then it stamps
        // at read time. A node enables it at start, long before traffic.
        std::thread::sleep(Duration::from_millis(100));
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let mut batch = RecvBatch::new(16);
        let e = batch.recv(rx.as_raw_fd()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        for i in 0..(RECV_BATCH + 3) {
            tx.send_to(format!("d{i}").as_bytes(), to).unwrap();
        }
        tx.send_to(&[b'x'; 40], to).unwrap(); // longer than the 16-byte buffers
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(batch.recv(rx.as_raw_fd()).unwrap(), RECV_BATCH);
        for i in 0..RECV_BATCH {
            let d = batch.get(i).unwrap();
            assert_eq!(d.data, format!("d{i}").as_bytes());
            assert_eq!(d.from, tx.local_addr().unwrap());
            assert!(!d.truncated);
            assert!(d.queued >= Duration::from_millis(20), "{:?}", d.queued);
        }
        assert!(batch.get(RECV_BATCH).is_none());
        assert_eq!(batch.recv(rx.as_raw_fd()).unwrap(), 4);
        assert_eq!(
            batch.get(2).unwrap().data,
            format!("d{}", RECV_BATCH + 2).as_bytes()
        );
        let long = batch.get(3).unwrap();
        assert!(long.truncated);
        assert_eq!(long.data.len(), 16);
    }
}
