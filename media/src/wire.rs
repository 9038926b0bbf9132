//! Ethernet, ARP, IPv4 and UDP as the kernel-bypass relay sees them: parsing a
//! received frame, rewriting a relayed datagram in place (addresses, ports,
//! checksums), building ARP replies and requests. Pure functions over byte slices,
//! no DPDK, so they are tested in every build.

use std::net::{Ipv4Addr, SocketAddrV4};

/// A MAC address.
pub type Mac = [u8; 6];

/// The Ethernet broadcast address.
pub const BROADCAST: Mac = [0xff; 6];
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// Ethernet header length (no VLAN tag).
pub const ETH_LEN: usize = 14;
/// Minimum IPv4 header length.
pub const IPV4_LEN: usize = 20;
/// UDP header length.
pub const UDP_LEN: usize = 8;
/// An Ethernet/IPv4 ARP packet without padding.
pub const ARP_FRAME_LEN: usize = ETH_LEN + 28;
/// Shortest Ethernet frame without its FCS; shorter frames are padded to it.
pub const MIN_FRAME_LEN: usize = 60;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// TTL of relayed datagrams: the relay is their new source.
pub const RELAY_TTL: u8 = 64;

/// ARP operation: request.
pub const ARP_REQUEST: u16 = 1;
/// ARP operation: reply.
pub const ARP_REPLY: u16 = 2;

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn mac_at(b: &[u8], at: usize) -> Mac {
    let mut m = [0u8; 6];
    m.copy_from_slice(&b[at..at + 6]);
    m
}

fn ip_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

/// True for a unicast (individual) MAC address other than all zeros.
pub fn is_unicast(mac: &Mac) -> bool {
    mac[0] & 1 == 0 && *mac != [0; 6]
}

/// An Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    /// [`ARP_REQUEST`] or [`ARP_REPLY`].
    pub op: u16,
    /// Sender hardware address.
    pub sender_mac: Mac,
    /// Sender protocol address.
    pub sender_ip: Ipv4Addr,
    /// Target hardware address (zero in requests).
    pub target_mac: Mac,
    /// Target protocol address.
    pub target_ip: Ipv4Addr,
}

/// A UDP datagram in an IPv4 frame, located by offsets into the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpFrame {
    /// Ethernet source (the previous hop).
    pub src_mac: Mac,
    /// IP source and UDP source port.
    pub src: SocketAddrV4,
    /// IP destination and UDP destination port.
    pub dst: SocketAddrV4,
    /// Offset of the UDP header (after the IP header and its options).
    pub udp_at: usize,
    /// UDP payload length (from the UDP header; Ethernet padding excluded).
    pub payload_len: usize,
}

impl UdpFrame {
    /// Offset of the UDP payload.
    pub fn payload_at(&self) -> usize {
        self.udp_at + UDP_LEN
    }
}

/// Why a frame is not a relayable UDP datagram or an ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// Another EtherType (IPv6, VLAN-tagged, LLDP, ...).
    EtherType,
    /// Another IP protocol (ICMP, TCP, ...).
    Protocol,
    /// A fragment: RTP fits in one packet, reassembly is not worth an attack surface.
    Fragment,
    /// Lengths or header fields that do not add up.
    Malformed,
}

/// What a received frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// An Ethernet/IPv4 ARP packet.
    Arp(Arp),
    /// An unfragmented IPv4 UDP datagram.
    Udp(UdpFrame),
    /// Anything else.
    Other(Ignored),
}

/// Classifies a received Ethernet frame.
pub fn parse(frame: &[u8]) -> Inbound {
    if frame.len() < ETH_LEN {
        return Inbound::Other(Ignored::Malformed);
    }
    match be16(frame, 12) {
        ETHERTYPE_ARP => parse_arp(frame)
            .map(Inbound::Arp)
            .unwrap_or(Inbound::Other(Ignored::Malformed)),
        ETHERTYPE_IPV4 => parse_udp(frame),
        _ => Inbound::Other(Ignored::EtherType),
    }
}

fn parse_arp(frame: &[u8]) -> Option<Arp> {
    let a = frame.get(ETH_LEN..ARP_FRAME_LEN)?;
    // Ethernet (1), IPv4 (0x0800), 6-byte and 4-byte addresses.
    if be16(a, 0) != 1 || be16(a, 2) != ETHERTYPE_IPV4 || a[4] != 6 || a[5] != 4 {
        return None;
    }
    Some(Arp {
        op: be16(a, 6),
        sender_mac: mac_at(a, 8),
        sender_ip: ip_at(a, 14),
        target_mac: mac_at(a, 18),
        target_ip: ip_at(a, 24),
    })
}

fn parse_udp(frame: &[u8]) -> Inbound {
    let malformed = Inbound::Other(Ignored::Malformed);
    let Some(ip) = frame.get(ETH_LEN..) else {
        return malformed;
    };
    if ip.len() < IPV4_LEN || ip[0] >> 4 != 4 {
        return malformed;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(be16(ip, 2));
    if ihl < IPV4_LEN || total < ihl || total > ip.len() {
        return malformed;
    }
    // More-fragments flag or a fragment offset.
    if be16(ip, 6) & 0x3fff != 0 {
        return Inbound::Other(Ignored::Fragment);
    }
    if ip[9] != PROTO_UDP {
        return Inbound::Other(Ignored::Protocol);
    }
    if total < ihl + UDP_LEN {
        return malformed;
    }
    let udp = &ip[ihl..total];
    let udp_len = usize::from(be16(udp, 4));
    if udp_len < UDP_LEN || udp_len > udp.len() {
        return malformed;
    }
    Inbound::Udp(UdpFrame {
        src_mac: mac_at(frame, 6),
        src: SocketAddrV4::new(ip_at(ip, 12), be16(udp, 0)),
        dst: SocketAddrV4::new(ip_at(ip, 16), be16(udp, 2)),
        udp_at: ETH_LEN + ihl,
        payload_len: udp_len - UDP_LEN,
    })
}

/// Where a relayed datagram goes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewrite {
    /// The relay's MAC.
    pub src_mac: Mac,
    /// The next hop's MAC.
    pub dst_mac: Mac,
    /// The relay's address and its port on the other side.
    pub src: SocketAddrV4,
    /// The destination the session chose.
    pub dst: SocketAddrV4,
}

/// One's-complement sum of 16-bit big-endian words (odd trailing byte padded).
fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The IPv4 header checksum of `header` (its checksum field taken as zero).
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut acc = sum16(header, 0);
    if header.len() >= 12 {
        // Remove whatever the checksum field holds.
        acc += u32::from(!be16(header, 10));
    }
    !fold(acc)
}

/// The UDP checksum of `segment` (header and payload, its checksum field taken as
/// zero) between `src` and `dst`; 0xffff stands for a computed zero (RFC 768).
pub fn udp_checksum(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> u16 {
    let mut acc = sum16(&src.octets(), 0);
    acc = sum16(&dst.octets(), acc);
    acc += u32::from(PROTO_UDP) + segment.len() as u32;
    acc = sum16(segment, acc);
    if segment.len() >= 8 {
        acc += u32::from(!be16(segment, 6));
    }
    match !fold(acc) {
        0 => 0xffff,
        c => c,
    }
}

/// Updates checksum `sum` for 16-bit words changing from `old` to `new`
/// (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
fn adjust(sum: u16, old: &[u16], new: &[u16]) -> u16 {
    let mut acc = u32::from(!sum);
    for w in old {
        acc += u32::from(!*w);
    }
    for w in new {
        acc += u32::from(*w);
    }
    !fold(acc)
}

fn words(a: SocketAddrV4) -> [u16; 3] {
    let o = a.ip().octets();
    [
        u16::from_be_bytes([o[0], o[1]]),
        u16::from_be_bytes([o[2], o[3]]),
        a.port(),
    ]
}

/// Rewrites the datagram `f` of `frame` in place toward `r`: MACs, IP addresses,
/// TTL, UDP ports; the IP checksum is recomputed and the UDP checksum updated
/// incrementally (a zero, "no checksum", stays zero).
pub fn rewrite_udp(frame: &mut [u8], f: &UdpFrame, r: &Rewrite) {
    frame[0..6].copy_from_slice(&r.dst_mac);
    frame[6..12].copy_from_slice(&r.src_mac);
    let ip = ETH_LEN;
    frame[ip + 8] = RELAY_TTL;
    frame[ip + 12..ip + 16].copy_from_slice(&r.src.ip().octets());
    frame[ip + 16..ip + 20].copy_from_slice(&r.dst.ip().octets());
    let sum = ipv4_checksum(&frame[ip..f.udp_at]);
    frame[ip + 10..ip + 12].copy_from_slice(&sum.to_be_bytes());
    let u = f.udp_at;
    frame[u..u + 2].copy_from_slice(&r.src.port().to_be_bytes());
    frame[u + 2..u + 4].copy_from_slice(&r.dst.port().to_be_bytes());
    let old = be16(frame, u + 6);
    if old != 0 {
        let (s0, d0) = (words(f.src), words(f.dst));
        let (s1, d1) = (words(r.src), words(r.dst));
        let old_words = [s0[0], s0[1], d0[0], d0[1], s0[2], d0[2]];
        let new_words = [s1[0], s1[1], d1[0], d1[1], s1[2], d1[2]];
        let c = match adjust(old, &old_words, &new_words) {
            0 => 0xffff,
            c => c,
        };
        frame[u + 6..u + 8].copy_from_slice(&c.to_be_bytes());
    }
}

/// Writes an Ethernet/IPv4 ARP frame into `buf` (at least [`MIN_FRAME_LEN`] bytes),
/// padded to the minimum frame length; returns that length, or `None` if `buf`
/// is too short.
pub fn write_arp(buf: &mut [u8], eth_dst: Mac, eth_src: Mac, arp: &Arp) -> Option<usize> {
    let b = buf.get_mut(..MIN_FRAME_LEN)?;
    b[0..6].copy_from_slice(&eth_dst);
    b[6..12].copy_from_slice(&eth_src);
    b[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    b[14..16].copy_from_slice(&1u16.to_be_bytes());
    b[16..18].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    b[18] = 6;
    b[19] = 4;
    b[20..22].copy_from_slice(&arp.op.to_be_bytes());
    b[22..28].copy_from_slice(&arp.sender_mac);
    b[28..32].copy_from_slice(&arp.sender_ip.octets());
    b[32..38].copy_from_slice(&arp.target_mac);
    b[38..42].copy_from_slice(&arp.target_ip.octets());
    b[ARP_FRAME_LEN..].fill(0);
    Some(MIN_FRAME_LEN)
}

/// The reply to an ARP `request` for `our_ip`, from `our_mac`.
pub fn arp_reply(request: &Arp, our_mac: Mac) -> Arp {
    Arp {
        op: ARP_REPLY,
        sender_mac: our_mac,
        sender_ip: request.target_ip,
        target_mac: request.sender_mac,
        target_ip: request.sender_ip,
    }
}

/// An ARP request from `our_mac`/`our_ip` for `target`.
pub fn arp_request(our_mac: Mac, our_ip: Ipv4Addr, target: Ipv4Addr) -> Arp {
    Arp {
        op: ARP_REQUEST,
        sender_mac: our_mac,
        sender_ip: our_ip,
        target_mac: [0; 6],
        target_ip: target,
    }
}

/// Writes a complete Ethernet/IPv4/UDP frame carrying `payload` (checksums filled
/// in, padded to the minimum frame length); returns its length, or `None` if `buf`
/// is too short. Used by load generators and tests.
pub fn write_udp(
    buf: &mut [u8],
    eth_dst: Mac,
    eth_src: Mac,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: &[u8],
) -> Option<usize> {
    let udp_len = UDP_LEN + payload.len();
    let ip_len = IPV4_LEN + udp_len;
    let len = (ETH_LEN + ip_len).max(MIN_FRAME_LEN);
    let ip_len16 = u16::try_from(ip_len).ok()?;
    let b = buf.get_mut(..len)?;
    b[0..6].copy_from_slice(&eth_dst);
    b[6..12].copy_from_slice(&eth_src);
    b[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let ip = &mut b[ETH_LEN..ETH_LEN + IPV4_LEN];
    ip[0] = 0x45;
    ip[1] = 0xb8; // DSCP EF, as phones mark voice
    ip[2..4].copy_from_slice(&ip_len16.to_be_bytes());
    ip[4..8].copy_from_slice(&[0, 0, 0x40, 0]); // id 0, don't fragment
    ip[8] = RELAY_TTL;
    ip[9] = PROTO_UDP;
    ip[10..12].fill(0);
    ip[12..16].copy_from_slice(&src.ip().octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let sum = ipv4_checksum(ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let u = ETH_LEN + IPV4_LEN;
    b[u..u + 2].copy_from_slice(&src.port().to_be_bytes());
    b[u + 2..u + 4].copy_from_slice(&dst.port().to_be_bytes());
    b[u + 4..u + 6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    b[u + 6..u + 8].fill(0);
    b[u + 8..u + udp_len].copy_from_slice(payload);
    b[u + udp_len..].fill(0);
    let c = udp_checksum(*src.ip(), *dst.ip(), &b[u..u + udp_len]);
    b[u + 6..u + 8].copy_from_slice(&c.to_be_bytes());
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A_MAC: Mac = [0x02, 0, 0, 0, 0, 0x0a];
    const R_MAC: Mac = [0x02, 0, 0, 0, 0, 0x01];
    const B_MAC: Mac = [0x02, 0, 0, 0, 0, 0x0b];

    fn sa(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; 1514];
        let n = write_udp(
            &mut buf,
            R_MAC,
            A_MAC,
            sa("10.0.0.2:4000"),
            sa("10.0.0.1:10000"),
            payload,
        )
        .unwrap();
        buf.truncate(n);
        buf
    }

    fn checksums_valid(frame: &[u8], f: &UdpFrame) -> bool {
        let ip = &frame[ETH_LEN..f.udp_at];
        let udp = &frame[f.udp_at..f.payload_at() + f.payload_len];
        // A header with its checksum sums to 0xffff.
        let ip_ok = fold(sum16(ip, 0)) == 0xffff;
        let stored = be16(udp, 6);
        let udp_ok = stored == 0 || udp_checksum(*f.src.ip(), *f.dst.ip(), udp) == stored;
        ip_ok && udp_ok
    }

    #[test]
    fn a_built_datagram_parses_back_with_valid_checksums() {
        let f = frame(b"hello rtp");
        assert!(f.len() == MIN_FRAME_LEN, "short payloads are padded");
        let Inbound::Udp(u) = parse(&f) else {
            panic!("not udp: {:?}", parse(&f))
        };
        assert_eq!(u.src, sa("10.0.0.2:4000"));
        assert_eq!(u.dst, sa("10.0.0.1:10000"));
        assert_eq!(u.src_mac, A_MAC);
        assert_eq!(u.payload_len, 9);
        assert_eq!(&f[u.payload_at()..u.payload_at() + 9], b"hello rtp");
        assert!(checksums_valid(&f, &u));
    }

    #[test]
    fn the_ipv4_checksum_matches_a_known_header() {
        // The classic example header (checksum 0xb861).
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_checksum(&h), 0xb861);
    }

    /// The rewrite that relays a datagram out of the relay's B port toward `dst`.
    fn to_b(dst: SocketAddrV4) -> Rewrite {
        Rewrite {
            src_mac: R_MAC,
            dst_mac: B_MAC,
            src: sa("10.0.0.1:10002"),
            dst,
        }
    }

    #[test]
    fn rewriting_moves_addresses_and_keeps_checksums_valid() {
        for len in [0usize, 1, 160, 171, 1000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut f = frame(&payload);
            let Inbound::Udp(u) = parse(&f) else { panic!() };
            let r = to_b(sa("192.168.7.9:6000"));
            rewrite_udp(&mut f, &u, &r);
            let Inbound::Udp(v) = parse(&f) else { panic!() };
            assert_eq!((v.src, v.dst), (r.src, r.dst));
            assert_eq!(&f[0..6], &B_MAC);
            assert_eq!(&f[6..12], &R_MAC);
            assert_eq!(&f[v.payload_at()..v.payload_at() + len], &payload[..]);
            assert!(checksums_valid(&f, &v), "len {len}");
            // The incremental update equals a full recomputation.
            let udp = &f[v.udp_at..v.payload_at() + len];
            assert_eq!(be16(udp, 6), udp_checksum(*v.dst.ip(), *v.src.ip(), udp));
        }
    }

    #[test]
    fn a_zero_udp_checksum_stays_zero() {
        let mut f = frame(b"x");
        let Inbound::Udp(u) = parse(&f) else { panic!() };
        f[u.udp_at + 6..u.udp_at + 8].fill(0);
        let r = to_b(sa("10.0.0.3:5000"));
        rewrite_udp(&mut f, &u, &r);
        assert_eq!(be16(&f, u.udp_at + 6), 0);
    }

    #[test]
    fn fragments_other_protocols_and_garbage_are_not_udp() {
        let mut f = frame(b"abc");
        f[ETH_LEN + 6] = 0x20; // more fragments
        assert_eq!(parse(&f), Inbound::Other(Ignored::Fragment));
        let mut f = frame(b"abc");
        f[ETH_LEN + 9] = 1; // ICMP
        assert_eq!(parse(&f), Inbound::Other(Ignored::Protocol));
        let mut f = frame(b"abc");
        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        assert_eq!(parse(&f), Inbound::Other(Ignored::EtherType));
        let mut f = frame(b"abc");
        f[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&2000u16.to_be_bytes());
        assert_eq!(parse(&f), Inbound::Other(Ignored::Malformed));
        let mut f = frame(b"abc");
        f[ETH_LEN + 24..ETH_LEN + 26].copy_from_slice(&500u16.to_be_bytes()); // UDP length
        assert_eq!(parse(&f), Inbound::Other(Ignored::Malformed));
        assert_eq!(parse(&f[..10]), Inbound::Other(Ignored::Malformed));
        assert_eq!(parse(&f[..20]), Inbound::Other(Ignored::Malformed));
    }

    #[test]
    fn padding_after_the_ip_packet_is_not_payload() {
        let f = frame(b"ab");
        let Inbound::Udp(u) = parse(&f) else { panic!() };
        assert_eq!(u.payload_len, 2);
        assert!(f.len() > u.payload_at() + 2);
    }

    #[test]
    fn ip_options_move_the_udp_header() {
        let base = frame(b"payload");
        let mut f = base[..ETH_LEN + IPV4_LEN].to_vec();
        f.extend_from_slice(&[1, 1, 1, 0]); // NOP NOP NOP EOL
        f.extend_from_slice(&base[ETH_LEN + IPV4_LEN..]);
        f[ETH_LEN] = 0x46;
        let total = be16(&f, ETH_LEN + 2) + 4;
        f[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&total.to_be_bytes());
        let sum = ipv4_checksum(&f[ETH_LEN..ETH_LEN + 24]);
        f[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&sum.to_be_bytes());
        let Inbound::Udp(u) = parse(&f) else { panic!() };
        assert_eq!(u.udp_at, ETH_LEN + 24);
        assert_eq!(&f[u.payload_at()..u.payload_at() + 7], b"payload");
        let r = to_b(sa("10.0.0.3:5000"));
        rewrite_udp(&mut f, &u, &r);
        let Inbound::Udp(v) = parse(&f) else { panic!() };
        assert!(checksums_valid(&f, &v));
    }

    #[test]
    fn arp_request_and_reply_round_trip() {
        let mut buf = [0u8; 64];
        let req = arp_request(
            A_MAC,
            "10.0.0.2".parse().unwrap(),
            "10.0.0.1".parse().unwrap(),
        );
        let n = write_arp(&mut buf, BROADCAST, A_MAC, &req).unwrap();
        assert_eq!(n, MIN_FRAME_LEN);
        let Inbound::Arp(got) = parse(&buf[..n]) else {
            panic!()
        };
        assert_eq!(got, req);
        let rep = arp_reply(&got, R_MAC);
        assert_eq!(rep.op, ARP_REPLY);
        assert_eq!(rep.sender_ip, got.target_ip);
        assert_eq!(rep.target_mac, A_MAC);
        assert_eq!(rep.target_ip, got.sender_ip);
        assert!(write_arp(&mut buf[..40], A_MAC, R_MAC, &rep).is_none());
        // Not Ethernet/IPv4 ARP.
        buf[ETH_LEN + 5] = 16;
        assert_eq!(parse(&buf[..n]), Inbound::Other(Ignored::Malformed));
    }

    #[test]
    fn unicast_macs() {
        assert!(is_unicast(&A_MAC));
        assert!(!is_unicast(&BROADCAST));
        assert!(!is_unicast(&[0x01, 0, 0x5e, 0, 0, 1]));
        assert!(!is_unicast(&[0; 6]));
    }
}
