//! Telling the LAN that the virtual IP moved: gratuitous ARP for IPv4 (a broadcast ARP
//! request for the address itself, from its new MAC, RFC 5227 §3 "ARP Announcement")
//! and an unsolicited neighbour advertisement with the Override flag to all nodes for
//! IPv6 (RFC 4861 §7.2.6). Switches relearn the port, neighbours replace their entry.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// An Ethernet MAC address.
pub type Mac = [u8; 6];

const ETH_P_ARP: u16 = 0x0806;
const SIOCGIFHWADDR: libc::c_ulong = 0x8927;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn socket(domain: libc::c_int, kind: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall, checked.
    let fd = check(unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, proto) })?;
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The hardware address of interface `name`.
pub fn interface_mac(name: &str) -> io::Result<Mac> {
    let s = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    // struct ifreq: 16 bytes of name, then a sockaddr whose data holds the MAC.
    let mut req = [0u8; 40];
    let n = name.as_bytes();
    if n.is_empty() || n.len() > 15 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    req[..n.len()].copy_from_slice(n);
    // SAFETY: a buffer as large as struct ifreq.
    check(unsafe { libc::ioctl(s.as_raw_fd(), SIOCGIFHWADDR, req.as_mut_ptr()) })?;
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&req[18..24]);
    Ok(mac)
}

/// A gratuitous ARP request frame announcing that `ip` is at `mac`.
pub fn garp_frame(mac: Mac, ip: Ipv4Addr) -> [u8; 60] {
    let mut f = [0u8; 60]; // padded to the Ethernet minimum
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    // target hardware address stays zero; target protocol address is the VIP itself
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// An unsolicited neighbour advertisement (ICMPv6 body; the kernel adds the checksum)
/// for `target` at `mac`, with the Override flag.
pub fn na_message(mac: Mac, target: Ipv6Addr) -> [u8; 32] {
    let mut m = [0u8; 32];
    m[0] = 136; // neighbour advertisement
    m[4] = 0x20; // Override; not a router, not solicited
    m[8..24].copy_from_slice(&target.octets());
    m[24] = 2; // option: target link-layer address
    m[25] = 1; // in units of 8 bytes
    m[26..32].copy_from_slice(&mac);
    m
}

/// Sends announcements of the VIP on one interface.
pub struct Announcer {
    ifindex: u32,
    mac: Mac,
}

impl Announcer {
    /// For interface `name` (its index and MAC are read once).
    pub fn new(name: &str, ifindex: u32) -> io::Result<Announcer> {
        Ok(Announcer {
            ifindex,
            mac: interface_mac(name)?,
        })
    }

    /// Announces `ip` once.
    pub fn announce(&self, ip: IpAddr) -> io::Result<()> {
        match ip {
            IpAddr::V4(a) => self.garp(a),
            IpAddr::V6(a) => self.unsolicited_na(a),
        }
    }

    fn garp(&self, ip: Ipv4Addr) -> io::Result<()> {
        let s = socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            i32::from(ETH_P_ARP.to_be()),
        )?;
        let frame = garp_frame(self.mac, ip);
        // SAFETY: zeroed sockaddr_ll then filled.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_protocol = ETH_P_ARP.to_be();
        to.sll_ifindex = self.ifindex as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        // SAFETY: frame and address valid for the given lengths.
        let sent = unsafe {
            libc::sendto(
                s.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
                &to as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        check(sent as libc::c_int).map(drop)
    }

    fn unsolicited_na(&self, ip: Ipv6Addr) -> io::Result<()> {
        let s = socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6)?;
        let hops: libc::c_int = 255; // RFC 4861: receivers drop anything else
        let index = self.ifindex as libc::c_int;
        for (opt, value) in [
            (libc::IPV6_MULTICAST_HOPS, hops),
            (libc::IPV6_MULTICAST_IF, index),
        ] {
            // SAFETY: an int option of the declared size.
            check(unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::IPPROTO_IPV6,
                    opt,
                    &value as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            })?;
        }
        let sockaddr = |ip: Ipv6Addr, scope: u32| {
            // SAFETY: zeroed sockaddr_in6 then filled.
            let mut a: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            a.sin6_family = libc::AF_INET6 as u16;
            a.sin6_addr.s6_addr = ip.octets();
            a.sin6_scope_id = scope;
            a
        };
        let from = sockaddr(ip, 0);
        // SAFETY: a valid sockaddr_in6.
        check(unsafe {
            libc::bind(
                s.as_raw_fd(),
                &from as *const libc::sockaddr_in6 as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        })?;
        let to = sockaddr(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), self.ifindex);
        let msg = na_message(self.mac, ip);
        // SAFETY: message and address valid for the given lengths.
        let sent = unsafe {
            libc::sendto(
                s.as_raw_fd(),
                msg.as_ptr() as *const libc::c_void,
                msg.len(),
                0,
                &to as *const libc::sockaddr_in6 as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        };
        check(sent as libc::c_int).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = [2, 0, 0, 0, 0, 9];

    #[test]
    fn gratuitous_arp_names_the_vip_as_sender_and_target() {
        let f = garp_frame(MAC, Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &MAC);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1]);
        assert_eq!(&f[22..28], &MAC);
        assert_eq!(&f[28..32], &[10, 0, 0, 100]);
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[38..42], &[10, 0, 0, 100]);
    }

    #[test]
    fn neighbour_advertisement_overrides_with_the_link_address() {
        let m = na_message(MAC, "fd00::100".parse().unwrap());
        assert_eq!(m[0], 136);
        assert_eq!(m[4], 0x20);
        assert_eq!(
            &m[8..24],
            &"fd00::100".parse::<Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(&m[24..26], &[2, 1]);
        assert_eq!(&m[26..32], &MAC);
    }
}
