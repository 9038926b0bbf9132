//! `recvmmsg`/`sendmmsg` with buffers allocated once: a batch of datagrams is read
//! into fixed slots and forwarded from those same slots, without copying them and
//! without allocating per packet or per call.

use crate::sockaddr::{read_sockaddr, write_sockaddr};
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// Datagrams read per `recvmmsg`.
pub const RECV_BATCH: usize = 32;
/// Largest datagram relayed; longer ones are truncated by the kernel and dropped.
pub const MAX_DATAGRAM: usize = 2048;

fn zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid (AF_UNSPEC) value.
    unsafe { std::mem::zeroed() }
}

fn zeroed_mmsghdr() -> libc::mmsghdr {
    // SAFETY: mmsghdr is plain data (integers and null pointers when zeroed).
    unsafe { std::mem::zeroed() }
}

/// Receive slots for one `recvmmsg` batch.
pub struct RecvBufs {
    data: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    lens: [usize; RECV_BATCH],
    truncated: [bool; RECV_BATCH],
    count: usize,
}

impl RecvBufs {
    /// Slots for [`RECV_BATCH`] datagrams of up to [`MAX_DATAGRAM`] bytes.
    pub fn new() -> Box<RecvBufs> {
        Box::new(RecvBufs {
            data: vec![0u8; RECV_BATCH * MAX_DATAGRAM],
            addrs: vec![zeroed_storage(); RECV_BATCH],
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                };
                RECV_BATCH
            ],
            hdrs: vec![zeroed_mmsghdr(); RECV_BATCH],
            lens: [0; RECV_BATCH],
            truncated: [false; RECV_BATCH],
            count: 0,
        })
    }

    /// Reads what the non-blocking socket `fd` has queued, up to [`RECV_BATCH`]
    /// datagrams; an empty queue is `WouldBlock`.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.count = 0;
        let base = self.data.as_mut_ptr();
        for i in 0..RECV_BATCH {
            self.iovs[i] = libc::iovec {
                // SAFETY: i * MAX_DATAGRAM + MAX_DATAGRAM <= data.len().
                iov_base: unsafe { base.add(i * MAX_DATAGRAM) } as *mut libc::c_void,
                iov_len: MAX_DATAGRAM,
            };
            let h = &mut self.hdrs[i];
            *h = zeroed_mmsghdr();
            h.msg_hdr.msg_name = &mut self.addrs[i] as *mut _ as *mut libc::c_void;
            h.msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iovs[i] as *mut libc::iovec;
            h.msg_hdr.msg_iovlen = 1;
        }
        let n = loop {
            // SAFETY: every pointer in `hdrs` points into buffers owned by `self`,
            // alive and unmoved until the call returns.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    self.hdrs.as_mut_ptr(),
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
                return Err(err);
            }
        };
        for i in 0..n {
            let h = &self.hdrs[i];
            self.truncated[i] = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.lens[i] = (h.msg_len as usize).min(MAX_DATAGRAM);
        }
        self.count = n;
        Ok(n)
    }

    /// The `i`-th datagram of the last batch and its sender; `None` past the batch,
    /// for a truncated datagram or an unknown address family.
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        if i >= self.count || self.truncated[i] {
            return None;
        }
        let from = read_sockaddr(&self.addrs[i])?;
        let at = i * MAX_DATAGRAM;
        Some((&self.data[at..at + self.lens[i]], from))
    }

    /// True when the `i`-th datagram was longer than [`MAX_DATAGRAM`].
    pub fn is_truncated(&self, i: usize) -> bool {
        i < self.count && self.truncated[i]
    }
}

/// What became of a flushed queue.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Datagrams the kernel accepted.
    pub ok: usize,
    /// Datagrams refused (bad address, full buffer): dropped, as UDP would.
    pub failed: usize,
}

/// Datagrams of a [`RecvBufs`] batch to send out of one socket.
pub struct SendQueue {
    addrs: Vec<libc::sockaddr_storage>,
    addr_lens: [libc::socklen_t; RECV_BATCH],
    slots: [usize; RECV_BATCH],
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    count: usize,
}

impl SendQueue {
    /// An empty queue for up to [`RECV_BATCH`] datagrams.
    pub fn new() -> Box<SendQueue> {
        Box::new(SendQueue {
            addrs: vec![zeroed_storage(); RECV_BATCH],
            addr_lens: [0; RECV_BATCH],
            slots: [0; RECV_BATCH],
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                };
                RECV_BATCH
            ],
            hdrs: vec![zeroed_mmsghdr(); RECV_BATCH],
            count: 0,
        })
    }

    /// Queues receive slot `slot` for `to`; false when the queue is full.
    pub fn push(&mut self, slot: usize, to: &SocketAddr) -> bool {
        if self.count == RECV_BATCH || slot >= RECV_BATCH {
            return false;
        }
        self.addr_lens[self.count] = write_sockaddr(to, &mut self.addrs[self.count]);
        self.slots[self.count] = slot;
        self.count += 1;
        true
    }

    /// Datagrams queued.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when nothing is queued.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Sends the queued slots of `bufs` out of the non-blocking socket `fd` and
    /// empties the queue.
    pub fn flush(&mut self, fd: RawFd, bufs: &RecvBufs) -> Sent {
        let n = self.count;
        self.count = 0;
        let mut sent = Sent::default();
        if n == 0 {
            return sent;
        }
        for i in 0..n {
            let slot = self.slots[i];
            let data = &bufs.data[slot * MAX_DATAGRAM..slot * MAX_DATAGRAM + bufs.lens[slot]];
            self.iovs[i] = libc::iovec {
                iov_base: data.as_ptr() as *mut libc::c_void,
                iov_len: data.len(),
            };
            let h = &mut self.hdrs[i];
            *h = zeroed_mmsghdr();
            h.msg_hdr.msg_name = &mut self.addrs[i] as *mut _ as *mut libc::c_void;
            h.msg_hdr.msg_namelen = self.addr_lens[i];
            h.msg_hdr.msg_iov = &mut self.iovs[i] as *mut libc::iovec;
            h.msg_hdr.msg_iovlen = 1;
        }
        let mut at = 0;
        while at < n {
            // SAFETY: the headers point into `self` and into `bufs`, both borrowed
            // and unmoved for the duration of the call; the kernel only reads them.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs[at..n].as_mut_ptr(),
                    (n - at) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r > 0 {
                sent.ok += r as usize;
                at += r as usize;
                continue;
            }
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // The first datagram failed: drop it, go on with the rest.
            sent.failed += 1;
            at += 1;
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_received_batch_is_sent_on_from_the_same_slots() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let fwd = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let dst = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        dst.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let src = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut bufs = RecvBufs::new();
        assert_eq!(
            bufs.recv(rx.as_raw_fd()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        for i in 0..40u8 {
            src.send_to(&[i; 100], rx.local_addr().unwrap()).unwrap();
        }
        src.send_to(&[7u8; MAX_DATAGRAM + 1], rx.local_addr().unwrap())
            .unwrap();
        let mut q = SendQueue::new();
        let to = dst.local_addr().unwrap();
        let mut got = 0;
        let mut truncated = 0;
        while got + truncated < 41 {
            let n = match bufs.recv(rx.as_raw_fd()) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("{e}"),
            };
            for i in 0..n {
                match bufs.get(i) {
                    Some((data, from)) => {
                        assert_eq!(from, src.local_addr().unwrap());
                        assert_eq!(data.len(), 100);
                        assert!(q.push(i, &to));
                        got += 1;
                    }
                    None => {
                        assert!(bufs.is_truncated(i));
                        truncated += 1;
                    }
                }
            }
            let queued = q.len();
            assert_eq!(
                q.flush(fwd.as_raw_fd(), &bufs),
                Sent {
                    ok: queued,
                    failed: 0
                }
            );
            assert!(q.is_empty());
        }
        assert_eq!((got, truncated), (40, 1));
        let mut buf = [0u8; 200];
        for i in 0..40u8 {
            let (n, from) = dst.recv_from(&mut buf).unwrap();
            assert_eq!(from, fwd.local_addr().unwrap());
            assert_eq!(&buf[..n], &[i; 100][..]);
        }
    }

    #[test]
    fn a_refused_datagram_is_counted_and_the_rest_go() {
        let fwd = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let dst = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        dst.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let src = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        src.send_to(b"one", rx.local_addr().unwrap()).unwrap();
        src.send_to(b"two", rx.local_addr().unwrap()).unwrap();
        let mut bufs = RecvBufs::new();
        // Loopback delivers synchronously: both are queued.
        assert_eq!(bufs.recv(rx.as_raw_fd()).unwrap(), 2);
        let mut q = SendQueue::new();
        let v6: SocketAddr = "[::1]:9".parse().unwrap(); // wrong family
        q.push(0, &v6);
        q.push(1, &dst.local_addr().unwrap());
        assert_eq!(q.flush(fwd.as_raw_fd(), &bufs), Sent { ok: 1, failed: 1 });
        let mut buf = [0u8; 8];
        let n = dst.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"two");
    }
}
