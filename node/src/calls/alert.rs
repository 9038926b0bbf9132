//! The phone call that announces a switchover (`notify.call`), as the reference PBX
//! appliances do: the node that took the virtual IP rings the number's phones and, once
//! one answers, plays a tone pattern (three beeps) and hangs up. A number nobody
//! answers, or that is not registered, is logged.

use crate::core::SipCtx;
use crate::registrar::Binding;
use crate::sip::dialog::Dialog;
use crate::sip::message::{Method, SipMessage};
use crate::sip::transaction::TxKey;
use crate::sip::Peer;
use crate::FastMap;
use bytes::Bytes;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// How long the tone pattern lasts before the call is hung up.
const PLAY_FOR: Duration = Duration::from_secs(3);
/// An alert nobody answered is given up after this.
const RING_FOR: Duration = Duration::from_secs(30);

/// One alert call in progress.
struct Alert {
    invite: SipMessage,
    peer: Peer,
    rtp: UdpSocket,
    /// Once answered: the dialog and when to hang up.
    dialog: Option<(Dialog, Instant)>,
    give_up: Instant,
}

/// Alert calls in progress, by their INVITE's client transaction.
#[derive(Default)]
pub struct Alerts {
    calls: FastMap<TxKey, Alert>,
}

/// An SDP offer of G.711 µ-law at `ip:port`, send-only: the alert only talks.
fn offer(ip: IpAddr, port: u16) -> String {
    let family = if ip.is_ipv6() { "IP6" } else { "IP4" };
    format!(
        "v=0\r\no=softswitch 1 1 IN {family} {ip}\r\ns=switchover\r\nc=IN {family} {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=sendonly\r\n"
    )
}

/// Where an SDP answer wants its RTP.
fn answer_address(msg: &SipMessage) -> Option<SocketAddr> {
    let text = std::str::from_utf8(&msg.body).ok()?;
    let sdp = media::sdp::parse(text).ok()?;
    let m = sdp
        .media
        .iter()
        .find(|m| m.kind == "audio" && m.port != 0)?;
    let ip = m.connection.or(sdp.connection)?;
    Some(SocketAddr::new(ip, m.port))
}

/// 20 ms frames of three 440 Hz beeps (400 ms on, 200 ms off), µ-law encoded.
fn beeps() -> Vec<[u8; 160]> {
    let mut frames = Vec::new();
    let mut n: usize = 0;
    for _ in 0..3 {
        for (frames_of, on) in [(20, true), (10, false)] {
            for _ in 0..frames_of {
                let mut f = [0u8; 160];
                for b in f.iter_mut() {
                    let t = n as f64 / 8000.0;
                    let s = if on {
                        (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16
                    } else {
                        0
                    };
                    *b = media::codec::ulaw_encode(s);
                    n += 1;
                }
                frames.push(f);
            }
        }
    }
    frames
}

/// Plays the beeps to `to` from `socket` on a thread of its own.
fn play(socket: UdpSocket, to: SocketAddr) {
    let spawned = std::thread::Builder::new()
        .name("alert-rtp".into())
        .spawn(move || {
            let ssrc: u32 = rand::random();
            let start = Instant::now();
            for (i, frame) in beeps().iter().enumerate() {
                let mut p = Vec::with_capacity(172);
                p.extend_from_slice(&[0x80, if i == 0 { 0x80 } else { 0 }]);
                p.extend_from_slice(&(i as u16).to_be_bytes());
                p.extend_from_slice(&((i as u32) * 160).to_be_bytes());
                p.extend_from_slice(&ssrc.to_be_bytes());
                p.extend_from_slice(frame);
                let _ = socket.send_to(&p, to);
                let due = start + Duration::from_millis(20 * (i as u64 + 1));
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "switchover alert: no thread to play the tone");
    }
}

impl Alerts {
    /// Rings `number` at each of its `contacts` to announce `what`.
    pub fn ring(&mut self, ctx: &mut SipCtx<'_>, number: &str, contacts: &[Binding], what: &str) {
        if contacts.is_empty() {
            tracing::warn!(
                number,
                "switchover alert: the number has no registered phone"
            );
            return;
        }
        for b in contacts {
            let peer = b.source;
            let ip = ctx.local.media_ip(peer);
            let rtp = match crate::sip::freebind::udp(SocketAddr::new(ip, 0), true) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "switchover alert: no RTP socket");
                    continue;
                }
            };
            let port = rtp.local_addr().map(|a| a.port()).unwrap_or(0);
            let domain = ctx.local.domain(peer);
            let tag = ctx.local.unique();
            let mut req = SipMessage::request(Method::Invite, b.contact.clone());
            req.headers.push("Via", ctx.local.new_via(peer));
            req.headers.push("Max-Forwards", "70");
            req.headers.push(
                "From",
                format!(
                    "\"{}\" <sip:switchover@{domain}>;tag={tag}",
                    what.replace('"', "")
                ),
            );
            req.headers.push("To", format!("<sip:{number}@{domain}>"));
            req.headers
                .push("Call-ID", format!("{}@switchover", ctx.local.unique()));
            req.headers.push("CSeq", "1 INVITE");
            req.headers
                .push("Contact", ctx.local.contact("switchover", peer));
            req.headers.push("Alert-Info", "<urn:alert:service:normal>");
            req.set_body(
                Some("application/sdp"),
                Bytes::from(offer(ip, port).into_bytes()),
            );
            let key = ctx.request(req.clone(), peer);
            self.calls.insert(
                key,
                Alert {
                    invite: req,
                    peer,
                    rtp,
                    dialog: None,
                    give_up: ctx.now + RING_FOR,
                },
            );
        }
    }

    /// True when `key` is an alert call's INVITE.
    pub fn owns(&self, key: &TxKey) -> bool {
        self.calls.contains_key(key)
    }

    /// A response to an alert's INVITE: a 2xx is ACKed and the tone starts (other
    /// phones of the number stop ringing); a failure ends that alert.
    pub fn on_response(&mut self, ctx: &mut SipCtx<'_>, key: &TxKey, msg: &SipMessage) {
        let Some(code) = msg.status() else { return };
        if code < 200 {
            return;
        }
        if code >= 300 {
            if let Some(a) = self.calls.remove(key) {
                tracing::warn!(code, to = %a.peer.addr, "switchover alert call not answered");
            }
            return;
        }
        let Some(a) = self.calls.get_mut(key) else {
            return;
        };
        if a.dialog.is_some() {
            return;
        }
        let contact = ctx.local.contact("switchover", a.peer);
        let Some(d) = Dialog::uac(&a.invite, msg, &contact) else {
            return;
        };
        let via = ctx.local.new_via(a.peer);
        ctx.send_raw(&d.ack_for(1, &via), a.peer);
        match (answer_address(msg), a.rtp.try_clone()) {
            (Some(to), Ok(sock)) => play(sock, to),
            _ => tracing::warn!("switchover alert answered without a usable SDP"),
        }
        tracing::info!(to = %a.peer.addr, "switchover alert call answered");
        a.dialog = Some((d, ctx.now + PLAY_FOR));
        let others: Vec<TxKey> = self
            .calls
            .iter()
            .filter(|(k, a)| *k != key && a.dialog.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        for k in others {
            ctx.cancel(&k);
            self.calls.remove(&k);
        }
    }

    /// Hangs up played alerts and gives up unanswered ones.
    pub fn on_timer(&mut self, ctx: &mut SipCtx<'_>) {
        let due: Vec<TxKey> = self
            .calls
            .iter()
            .filter(|(_, a)| match &a.dialog {
                Some((_, hang_up)) => *hang_up <= ctx.now,
                None => a.give_up <= ctx.now,
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            let Some(a) = self.calls.remove(&k) else {
                continue;
            };
            match a.dialog {
                Some((mut d, _)) => {
                    let via = ctx.local.new_via(a.peer);
                    let bye = d.request(Method::Bye, &via);
                    ctx.request(bye, a.peer);
                }
                None => ctx.cancel(&k),
            }
        }
    }

    /// The next hang-up or give-up.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.calls
            .values()
            .map(|a| a.dialog.as_ref().map(|(_, t)| *t).unwrap_or(a.give_up))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beeps_are_three_tones_with_silence_between() {
        let f = beeps();
        assert_eq!(f.len(), 90, "1.8 s of 20 ms frames");
        let silent = media::codec::ulaw_encode(0);
        assert!(f[0].iter().any(|b| *b != silent), "a tone first");
        assert!(f[25].iter().all(|b| *b == silent), "then silence");
        assert!(f[30].iter().any(|b| *b != silent), "then a tone again");
    }

    #[test]
    fn the_offer_is_send_only_pcmu_at_the_given_address() {
        let o = offer("10.0.0.100".parse().unwrap(), 4000);
        assert!(o.contains("c=IN IP4 10.0.0.100\r\n"));
        assert!(o.contains("m=audio 4000 RTP/AVP 0\r\n"));
        assert!(o.contains("a=sendonly"));
        let parsed = media::sdp::parse(&o).unwrap();
        assert_eq!(parsed.media[0].port, 4000);
    }
}
