//! Phones and RTP packets shared by the relay's integration tests.

use media::rtp::RtpHeader;
use std::net::UdpSocket;
use std::time::Duration;

/// A phone's RTP socket on loopback, reads bounded to 2 s.
pub fn phone() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

/// A 172-byte PCMU packet: sequence `seq`, SSRC `ssrc`, payload derived from `seq`.
pub fn rtp(seq: u16, ssrc: u32) -> Vec<u8> {
    let payload: Vec<u8> = (0..160).map(|i| (i as u16 + seq) as u8).collect();
    let mut buf = vec![0u8; 172];
    RtpHeader {
        marker: seq == 0,
        payload_type: 0,
        sequence: seq,
        timestamp: u32::from(seq) * 160,
        ssrc,
    }
    .write(&payload, &mut buf)
    .unwrap();
    buf
}
