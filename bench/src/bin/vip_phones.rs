//! Registered phones in established calls with RTP flowing both ways through a virtual
//! IP, across the crash of the node that holds it (`bench/failover.sh`).
//!
//! `vip_phones --server VIP:PORT --local IP --calls N --first-ext E --control DIR
//!             [--password-prefix pw] [--sip-port-base 21000] [--rtp-port-base 22000]
//!             [--after-s 4] [--max-wait-s 60] [--tx-timeout-s 8] [--post-calls 1]
//!             [--max-s 180]`
//!
//! Phones `E .. E+2N-1` (password `<prefix><number>`), each with its own SIP socket
//! (`IP:sip-port-base+k`) and RTP socket (`IP:rtp-port-base+2k`), all talking to
//! `--server` only, like phones registered to the VIP:
//!
//! 1. every phone registers (REGISTER, 401, REGISTER with digest credentials, 200);
//! 2. phone `E+2i` calls phone `E+2i+1` (INVITE with SDP, 407 answered with credentials,
//!    200 ACKed; the callee answers the node's INVITE with 200 and its SDP); each side
//!    then sends 50 PCMU packets per second to the address the other SDP gave (the
//!    node's relay) and records when packets arrive;
//! 3. once every call is up and its audio flows both ways, writes `DIR/ready`; waits
//!    (at most `--max-wait-s`) for the driver to write the crash time into `DIR/killed`
//!    (wall-clock seconds), lets the calls run `--after-s` more seconds, then
//! 4. every caller hangs up (BYE through the VIP, retransmitted until a final answer or
//!    `--tx-timeout-s`), and
//! 5. with `--post-calls 1`, every caller calls its callee once more (INVITE, 200, ACK,
//!    BYE): the callee's registration must still route a call after the failover.
//!
//! Per call, per direction: the audio gap (the longest time without a received packet,
//! from half a second before the crash until the hang-up) and whether audio resumed
//! (a packet received in the last second before the hang-up, after the crash). A call
//! keeps audio when it resumed both ways; it is lost when it does not, when the node
//! hung it up, or when its BYE is not answered 200.
//!
//! Output: `registered EXT` per phone the registrar acknowledged, one `call ...` line per
//! call, then
//! `summary phones=.. registered=.. calls=N established=E kept=K lost=L bye_ok=B
//!  remote_bye=R post_ok=P/Q gap_median_ms=G gap_max_ms=H`.
//! Bounded: every phase has a deadline, the whole run `--max-s`.

use anyhow::{bail, Context};
use bench::rtp::{write_packet, PACKET_LEN};
use bench::sipua::{
    branch, challenge_of, contact_uri, credentials, response, route_set, sdp, sdp_audio_target,
    token, uri_target, wall_now, Request,
};
use node::sip::message::{Method, SipMessage};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// SIP timer T1.
const T1: Duration = Duration::from_millis(500);
/// SIP timer T2 (cap of non-INVITE retransmission intervals).
const T2: Duration = Duration::from_secs(4);
/// RTP packet interval (50 packets per second).
const PTIME: Duration = Duration::from_millis(20);
/// Most arrival times kept per phone (200 s of audio).
const MAX_RX: usize = 10_000;

struct Args {
    server: SocketAddr,
    local: IpAddr,
    calls: usize,
    first_ext: u64,
    prefix: String,
    sip_base: u16,
    rtp_base: u16,
    control: PathBuf,
    after_s: f64,
    max_wait_s: f64,
    tx_timeout: Duration,
    post_calls: bool,
    max_s: f64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        server: "127.0.0.1:5060".parse()?,
        local: "127.0.0.1".parse()?,
        calls: 10,
        first_ext: 2000,
        prefix: "pw".into(),
        sip_base: 21000,
        rtp_base: 22000,
        control: PathBuf::new(),
        after_s: 4.0,
        max_wait_s: 60.0,
        tx_timeout: Duration::from_secs(8),
        post_calls: true,
        max_s: 180.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--server" => a.server = v()?.parse()?,
            "--local" => a.local = v()?.parse()?,
            "--calls" => a.calls = v()?.parse()?,
            "--first-ext" => a.first_ext = v()?.parse()?,
            "--password-prefix" => a.prefix = v()?,
            "--sip-port-base" => a.sip_base = v()?.parse()?,
            "--rtp-port-base" => a.rtp_base = v()?.parse()?,
            "--control" => a.control = PathBuf::from(v()?),
            "--after-s" => a.after_s = v()?.parse()?,
            "--max-wait-s" => a.max_wait_s = v()?.parse()?,
            "--tx-timeout-s" => a.tx_timeout = Duration::from_secs_f64(v()?.parse()?),
            "--post-calls" => a.post_calls = v()? != "0",
            "--max-s" => a.max_s = v()?.parse()?,
            _ => bail!("unknown argument {k}"),
        }
    }
    anyhow::ensure!((1..=500).contains(&a.calls), "--calls: 1..=500");
    anyhow::ensure!(
        a.control.is_dir(),
        "--control must be an existing directory"
    );
    anyhow::ensure!(a.max_s > 0.0 && a.max_s <= 900.0, "--max-s: (0, 900]");
    anyhow::ensure!(
        (1.0..=60.0).contains(&a.after_s),
        "--after-s: 1..=60 (audio must be able to resume)"
    );
    let top = a.calls * 2;
    anyhow::ensure!(
        a.sip_base as usize + top < 65536 && a.rtp_base as usize + 2 * top < 65536,
        "port bases too high for {top} phones"
    );
    Ok(a)
}

struct Phone {
    ext: String,
    sip: UdpSocket,
    sip_addr: SocketAddr,
    rtp: UdpSocket,
    rtp_addr: SocketAddr,
    /// Where this phone sends its RTP (the node's relay), once known.
    rtp_remote: Option<SocketAddr>,
    rtp_on: bool,
    seq: u16,
    ts: u32,
    ssrc: u32,
    /// Arrival times (wall clock) of RTP packets.
    rx: Vec<f64>,
    reg_call_id: String,
    reg_tag: String,
    reg_cseq: u32,
    registered: bool,
    reg_done: bool,
    /// The call this phone, as callee, answers next.
    expect: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallState {
    Idle,
    Inviting,
    Up,
    Failed(u16),
    Ending,
    Ended,
}

struct Call {
    caller: usize,
    callee: usize,
    /// A main call (audio measured) or a post-failover check call.
    post: bool,
    state: CallState,
    call_id: String,
    from_tag: String,
    to_tag: Option<String>,
    cseq: u32,
    auth_tries: u32,
    /// Remote target and route set of the caller's dialog.
    remote_uri: Option<String>,
    routes: Vec<String>,
    /// The ACK of the 2xx (re-sent when the 2xx is retransmitted).
    ack: Option<(Vec<u8>, SocketAddr)>,
    /// Call-ID of the node's INVITE to the callee (its own dialog).
    b_call_id: Option<String>,
    remote_bye: bool,
    bye_code: Option<u16>,
    bye_at: Option<f64>,
}

#[derive(Debug, Clone, Copy)]
enum Purpose {
    Register(usize),
    Invite(usize),
    Bye(usize),
}

struct ClientTx {
    phone: usize,
    bytes: Vec<u8>,
    dest: SocketAddr,
    next: Instant,
    interval: Duration,
    deadline: Instant,
    invite: bool,
    provisional: bool,
    purpose: Purpose,
    branch: String,
}

/// The node's INVITE as a callee phone answered it (200 re-sent until ACKed).
struct ServerInvite {
    call: usize,
    cseq: u32,
    reply: Vec<u8>,
    dest: SocketAddr,
    phone: usize,
    acked: bool,
    next: Instant,
    interval: Duration,
    deadline: Instant,
}

struct Ua {
    a: Args,
    phones: Vec<Phone>,
    calls: Vec<Call>,
    /// (Call-ID, CSeq number) -> client transaction.
    txs: HashMap<(String, u32), ClientTx>,
    /// Call-ID -> the callee side of a call.
    uas: HashMap<String, ServerInvite>,
    /// Call-ID -> call whose caller dialog it is.
    by_call_id: HashMap<String, usize>,
    hard_end: Instant,
}

fn host(addr: SocketAddr) -> String {
    addr.ip().to_string()
}

impl Ua {
    fn new(a: Args) -> anyhow::Result<Ua> {
        let mut phones = Vec::new();
        for k in 0..a.calls * 2 {
            let sip_addr = SocketAddr::new(a.local, a.sip_base + k as u16);
            let rtp_addr = SocketAddr::new(a.local, a.rtp_base + 2 * k as u16);
            let sip = UdpSocket::bind(sip_addr).with_context(|| format!("bind {sip_addr}"))?;
            let rtp = UdpSocket::bind(rtp_addr).with_context(|| format!("bind {rtp_addr}"))?;
            sip.set_nonblocking(true)?;
            rtp.set_nonblocking(true)?;
            phones.push(Phone {
                ext: (a.first_ext + k as u64).to_string(),
                sip,
                sip_addr,
                rtp,
                rtp_addr,
                rtp_remote: None,
                rtp_on: false,
                seq: (k as u16).wrapping_mul(1000),
                ts: 0,
                ssrc: 0x5650_0000 + k as u32,
                rx: Vec::new(),
                reg_call_id: format!("reg-{}", token()),
                reg_tag: token(),
                reg_cseq: 0,
                registered: false,
                reg_done: false,
                expect: None,
            });
        }
        let hard_end = Instant::now() + Duration::from_secs_f64(a.max_s);
        Ok(Ua {
            a,
            phones,
            calls: Vec::new(),
            txs: HashMap::new(),
            uas: HashMap::new(),
            by_call_id: HashMap::new(),
            hard_end,
        })
    }

    fn server_uri(&self) -> String {
        format!("sip:{}", self.a.server)
    }

    fn send(&self, phone: usize, bytes: &[u8], dest: SocketAddr) {
        // a send may fail while the VIP has no holder: the retransmission covers it
        let _ = self.phones[phone].sip.send_to(bytes, dest);
    }

    fn start_tx(&mut self, key: (String, u32), tx: ClientTx) {
        self.send(tx.phone, &tx.bytes, tx.dest);
        self.txs.insert(key, tx);
    }

    fn new_tx(
        &self,
        phone: usize,
        bytes: Vec<u8>,
        dest: SocketAddr,
        purpose: Purpose,
        invite: bool,
        branch: String,
    ) -> ClientTx {
        let now = Instant::now();
        ClientTx {
            phone,
            bytes,
            dest,
            next: now + T1,
            interval: T1,
            deadline: now + self.a.tx_timeout,
            invite,
            provisional: false,
            purpose,
            branch,
        }
    }

    // ---- registration ---------------------------------------------------------------

    fn register(&mut self, p: usize, auth: Option<String>) {
        let uri = self.server_uri();
        let server = self.a.server;
        let ph = &mut self.phones[p];
        ph.reg_cseq += 1;
        let b = branch();
        let aor = format!("<sip:{}@{}>", ph.ext, host(server));
        let from = format!("{aor};tag={}", ph.reg_tag);
        let mut extra = vec!["Expires: 3600".to_string()];
        if let Some(c) = auth {
            extra.push(format!("Authorization: {c}"));
        }
        let bytes = Request {
            method: "REGISTER",
            uri: &uri,
            local: ph.sip_addr,
            branch: &b,
            from: &from,
            to: &aor,
            call_id: &ph.reg_call_id,
            cseq: ph.reg_cseq,
            contact_user: Some(&ph.ext),
            extra: &extra,
            sdp: None,
        }
        .to_bytes();
        let key = (ph.reg_call_id.clone(), ph.reg_cseq);
        let tx = self.new_tx(p, bytes, server, Purpose::Register(p), false, b);
        self.start_tx(key, tx);
    }

    // ---- calls -----------------------------------------------------------------------

    fn invite(&mut self, c: usize, auth: Option<String>) {
        let server = self.a.server;
        let call = &mut self.calls[c];
        call.cseq += 1;
        call.state = CallState::Inviting;
        let (caller, callee) = (call.caller, call.callee);
        let ruri = format!("sip:{}@{}", self.phones[callee].ext, server);
        let from = format!(
            "<sip:{}@{}>;tag={}",
            self.phones[caller].ext,
            host(server),
            call.from_tag
        );
        let to = format!("<sip:{}@{}>", self.phones[callee].ext, host(server));
        let body = sdp(self.phones[caller].rtp_addr, c as u64 + 1);
        let b = branch();
        let mut extra = Vec::new();
        if let Some(cr) = auth {
            extra.push(format!("Proxy-Authorization: {cr}"));
        }
        let bytes = Request {
            method: "INVITE",
            uri: &ruri,
            local: self.phones[caller].sip_addr,
            branch: &b,
            from: &from,
            to: &to,
            call_id: &call.call_id,
            cseq: call.cseq,
            contact_user: Some(&self.phones[caller].ext),
            extra: &extra,
            sdp: Some(&body),
        }
        .to_bytes();
        let key = (call.call_id.clone(), call.cseq);
        self.phones[callee].expect = Some(c);
        let tx = self.new_tx(caller, bytes, server, Purpose::Invite(c), true, b);
        self.start_tx(key, tx);
    }

    fn new_call(&mut self, caller: usize, callee: usize, post: bool) -> usize {
        let c = self.calls.len();
        let call_id = format!("call-{}", token());
        self.by_call_id.insert(call_id.clone(), c);
        self.calls.push(Call {
            caller,
            callee,
            post,
            state: CallState::Idle,
            call_id,
            from_tag: token(),
            to_tag: None,
            cseq: 0,
            auth_tries: 0,
            remote_uri: None,
            routes: Vec::new(),
            ack: None,
            b_call_id: None,
            remote_bye: false,
            bye_code: None,
            bye_at: None,
        });
        c
    }

    /// An in-dialog request of the caller (ACK or BYE): (bytes, destination).
    fn in_dialog(&self, c: usize, method: &str, cseq: u32, b: &str) -> (Vec<u8>, SocketAddr) {
        let call = &self.calls[c];
        let server = self.a.server;
        let (caller, callee) = (call.caller, call.callee);
        let ruri = call
            .remote_uri
            .clone()
            .unwrap_or_else(|| format!("sip:{}@{}", self.phones[callee].ext, server));
        let from = format!(
            "<sip:{}@{}>;tag={}",
            self.phones[caller].ext,
            host(server),
            call.from_tag
        );
        let mut to = format!("<sip:{}@{}>", self.phones[callee].ext, host(server));
        if let Some(t) = &call.to_tag {
            to = format!("{to};tag={t}");
        }
        let extra: Vec<String> = call.routes.iter().map(|r| format!("Route: {r}")).collect();
        // loose routing: the first route if any, else the remote target
        let dest = call
            .routes
            .first()
            .and_then(|r| node::sip::message::NameAddr::parse(r))
            .and_then(|n| uri_target(&n.uri))
            .or_else(|| uri_target(&ruri))
            .unwrap_or(server);
        let bytes = Request {
            method,
            uri: &ruri,
            local: self.phones[caller].sip_addr,
            branch: b,
            from: &from,
            to: &to,
            call_id: &call.call_id,
            cseq,
            contact_user: Some(&self.phones[caller].ext),
            extra: &extra,
            sdp: None,
        }
        .to_bytes();
        (bytes, dest)
    }

    fn bye(&mut self, c: usize) {
        self.calls[c].cseq += 1;
        let cseq = self.calls[c].cseq;
        let b = branch();
        let (bytes, dest) = self.in_dialog(c, "BYE", cseq, &b);
        let caller = self.calls[c].caller;
        let call = &mut self.calls[c];
        call.state = CallState::Ending;
        call.bye_at = Some(wall_now());
        let key = (call.call_id.clone(), cseq);
        self.phones[caller].rtp_on = false;
        self.phones[call.callee].rtp_on = false;
        let tx = self.new_tx(caller, bytes, dest, Purpose::Bye(c), false, b);
        self.start_tx(key, tx);
    }

    /// ACK for a non-2xx final answer to an INVITE (same branch, hop by hop).
    fn ack_failure(&self, tx: &ClientTx, resp: &SipMessage) {
        let Purpose::Invite(c) = tx.purpose else {
            return;
        };
        let call = &self.calls[c];
        let server = self.a.server;
        let ruri = format!("sip:{}@{}", self.phones[call.callee].ext, server);
        let from = format!(
            "<sip:{}@{}>;tag={}",
            self.phones[call.caller].ext,
            host(server),
            call.from_tag
        );
        let to = resp
            .headers
            .get("To")
            .map(str::to_string)
            .unwrap_or_default();
        let bytes = Request {
            method: "ACK",
            uri: &ruri,
            local: self.phones[call.caller].sip_addr,
            branch: &tx.branch,
            from: &from,
            to: &to,
            call_id: &call.call_id,
            cseq: call.cseq,
            contact_user: None,
            extra: &[],
            sdp: None,
        }
        .to_bytes();
        self.send(call.caller, &bytes, tx.dest);
    }

    // ---- incoming --------------------------------------------------------------------

    fn on_response(&mut self, msg: SipMessage) {
        let (Some(code), Some(cid), Some((cseq, method))) =
            (msg.status(), msg.call_id(), msg.cseq())
        else {
            return;
        };
        let key = (cid.to_string(), cseq);
        if (200..300).contains(&code) && method == Method::Invite && !self.txs.contains_key(&key) {
            // a retransmitted 2xx: ACK again
            if let Some(&c) = self.by_call_id.get(cid) {
                if let Some((bytes, dest)) = &self.calls[c].ack {
                    self.send(self.calls[c].caller, bytes, *dest);
                }
            }
            return;
        }
        let Some(tx) = self.txs.get_mut(&key) else {
            return;
        };
        if code < 200 {
            if tx.invite {
                tx.provisional = true;
            }
            return;
        }
        let Some(tx) = self.txs.remove(&key) else {
            return;
        };
        match tx.purpose {
            Purpose::Register(p) => {
                if (code == 401 || code == 407) && self.phones[p].reg_cseq < 3 {
                    let hdr = if code == 401 {
                        "WWW-Authenticate"
                    } else {
                        "Proxy-Authenticate"
                    };
                    if let Some(ch) = challenge_of(&msg, hdr) {
                        let ph = &self.phones[p];
                        let cr = credentials(
                            &ch,
                            &ph.ext,
                            &format!("{}{}", self.a.prefix, ph.ext),
                            "REGISTER",
                            &self.server_uri(),
                        );
                        self.register(p, Some(cr));
                        return;
                    }
                }
                self.phones[p].registered = code == 200;
                self.phones[p].reg_done = true;
                if code != 200 {
                    eprintln!("phone {} REGISTER answered {code}", self.phones[p].ext);
                }
            }
            Purpose::Invite(c) => {
                if code >= 300 {
                    self.ack_failure(&tx, &msg);
                    if (code == 401 || code == 407) && self.calls[c].auth_tries < 2 {
                        let hdr = if code == 401 {
                            "WWW-Authenticate"
                        } else {
                            "Proxy-Authenticate"
                        };
                        if let Some(ch) = challenge_of(&msg, hdr) {
                            self.calls[c].auth_tries += 1;
                            let caller = &self.phones[self.calls[c].caller];
                            let ruri = format!(
                                "sip:{}@{}",
                                self.phones[self.calls[c].callee].ext, self.a.server
                            );
                            let cr = credentials(
                                &ch,
                                &caller.ext,
                                &format!("{}{}", self.a.prefix, caller.ext),
                                "INVITE",
                                &ruri,
                            );
                            self.invite(c, Some(cr));
                            return;
                        }
                    }
                    self.calls[c].state = CallState::Failed(code);
                    eprintln!("call {c} INVITE answered {code}");
                    return;
                }
                // 2xx: the dialog is up
                let call = &mut self.calls[c];
                call.to_tag = msg.to_tag();
                call.remote_uri = contact_uri(&msg);
                call.routes = route_set(&msg);
                let caller = call.caller;
                let post = call.post;
                call.state = CallState::Up;
                let b = branch();
                let ack = self.in_dialog(c, "ACK", cseq, &b);
                self.send(caller, &ack.0, ack.1);
                self.calls[c].ack = Some(ack);
                if !post {
                    if let Some(t) = sdp_audio_target(&msg.body) {
                        self.phones[caller].rtp_remote = Some(t);
                        self.phones[caller].rtp_on = true;
                    }
                }
            }
            Purpose::Bye(c) => {
                self.calls[c].bye_code = Some(code);
                self.calls[c].state = CallState::Ended;
            }
        }
    }

    fn on_request(&mut self, p: usize, msg: SipMessage, src: SocketAddr) {
        let Some(method) = msg.method().cloned() else {
            return;
        };
        let cid = msg.call_id().unwrap_or_default().to_string();
        let cseq = msg.cseq().map(|c| c.0).unwrap_or(0);
        let ph = &self.phones[p];
        let contact = Some(format!("<sip:{}@{}>", ph.ext, ph.sip_addr));
        match method {
            Method::Invite => {
                if let Some(s) = self.uas.get_mut(&cid) {
                    if cseq <= s.cseq {
                        let (reply, dest) = (s.reply.clone(), s.dest);
                        self.send(p, &reply, dest);
                        return;
                    }
                }
                // a new INVITE (or a re-INVITE on the callee's dialog): answer 200 with
                // this phone's SDP and aim its RTP where the offer says
                let existing = self.uas.get(&cid).map(|s| s.call);
                let caller_dialog = self.by_call_id.get(&cid).copied();
                let call = existing.or(caller_dialog).or(self.phones[p].expect.take());
                let Some(c) = call else {
                    let r = response(
                        &msg,
                        480,
                        "Temporarily Unavailable",
                        Some(&token()),
                        None,
                        None,
                    );
                    self.send(p, &r, src);
                    return;
                };
                let body = sdp(self.phones[p].rtp_addr, 1000 + c as u64);
                let tag = msg.to_tag().unwrap_or_else(token);
                let r = response(&msg, 200, "OK", Some(&tag), contact, Some(&body));
                self.send(p, &r, src);
                if caller_dialog.is_none() {
                    let now = Instant::now();
                    self.uas.insert(
                        cid.clone(),
                        ServerInvite {
                            call: c,
                            cseq,
                            reply: r,
                            dest: src,
                            phone: p,
                            acked: false,
                            next: now + T1,
                            interval: T1,
                            deadline: now + self.a.tx_timeout,
                        },
                    );
                    self.calls[c].b_call_id = Some(cid);
                }
                if !self.calls[c].post {
                    if let Some(t) = sdp_audio_target(&msg.body) {
                        self.phones[p].rtp_remote = Some(t);
                        self.phones[p].rtp_on = true;
                    }
                }
            }
            Method::Ack => {
                if let Some(s) = self.uas.get_mut(&cid) {
                    s.acked = true;
                }
            }
            Method::Bye => {
                let r = response(&msg, 200, "OK", None, None, None);
                self.send(p, &r, src);
                let c = self
                    .uas
                    .get(&cid)
                    .map(|s| s.call)
                    .or_else(|| self.by_call_id.get(&cid).copied());
                if let Some(c) = c {
                    let call = &mut self.calls[c];
                    // the node hanging up a call we did not end is a lost call
                    if call.state == CallState::Up {
                        call.remote_bye = true;
                        eprintln!("call {c}: BYE from the node before ours");
                    }
                }
            }
            _ => {
                let r = response(&msg, 200, "OK", None, None, None);
                self.send(p, &r, src);
            }
        }
    }

    // ---- the loop ----------------------------------------------------------------------

    /// Runs the event loop until `done` says so or `until` passes (or the hard end).
    fn run_until(&mut self, until: Instant, mut done: impl FnMut(&Ua) -> bool) -> bool {
        let n = self.phones.len();
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(2 * n);
        for ph in &self.phones {
            fds.push(libc::pollfd {
                fd: ph.sip.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            fds.push(libc::pollfd {
                fd: ph.rtp.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let mut next_rtp = Instant::now();
        let mut buf = vec![0u8; 65536];
        let mut pkt = [0u8; PACKET_LEN];
        loop {
            if done(self) {
                return true;
            }
            let now = Instant::now();
            if now >= until || now >= self.hard_end {
                return false;
            }
            // RTP: one packet per sending phone per 20 ms, never a burst to catch up
            if now >= next_rtp {
                for ph in &mut self.phones {
                    if let (true, Some(to)) = (ph.rtp_on, ph.rtp_remote) {
                        ph.seq = ph.seq.wrapping_add(1);
                        ph.ts = ph.ts.wrapping_add(160);
                        write_packet(&mut pkt, ph.seq, ph.ts, ph.ssrc);
                        let _ = ph.rtp.send_to(&pkt, to);
                    }
                }
                next_rtp += PTIME;
                if next_rtp < now {
                    next_rtp = now + PTIME;
                }
            }
            self.timers(now);
            let wait = next_rtp
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(5));
            for f in fds.iter_mut() {
                f.revents = 0;
            }
            // SAFETY: fds is a valid array of pollfd for its length.
            let r = unsafe {
                libc::poll(
                    fds.as_mut_ptr(),
                    fds.len() as libc::nfds_t,
                    wait.as_millis() as i32,
                )
            };
            if r <= 0 {
                continue;
            }
            let w = wall_now();
            let ready: Vec<usize> = (0..fds.len()).filter(|&i| fds[i].revents != 0).collect();
            for i in ready {
                let p = i / 2;
                if i % 2 == 1 {
                    while let Ok((len, _)) = self.phones[p].rtp.recv_from(&mut buf) {
                        let ph = &mut self.phones[p];
                        if len >= 12 && buf[0] >> 6 == 2 && ph.rx.len() < MAX_RX && ph.rtp_on {
                            ph.rx.push(w);
                        }
                    }
                    continue;
                }
                while let Ok((len, src)) = self.phones[p].sip.recv_from(&mut buf) {
                    let Ok(msg) = node::sip::message::parse(&buf[..len]) else {
                        continue;
                    };
                    if msg.is_request() {
                        self.on_request(p, msg, src);
                    } else {
                        self.on_response(msg);
                    }
                }
            }
        }
    }

    fn timers(&mut self, now: Instant) {
        let mut expired = Vec::new();
        let mut resend = Vec::new();
        for (k, tx) in self.txs.iter_mut() {
            if now >= tx.deadline {
                expired.push(k.clone());
            } else if now >= tx.next && !(tx.invite && tx.provisional) {
                resend.push((tx.phone, tx.bytes.clone(), tx.dest));
                tx.interval = if tx.invite {
                    tx.interval * 2
                } else {
                    (tx.interval * 2).min(T2)
                };
                tx.next = now + tx.interval;
            }
        }
        for (p, b, d) in resend {
            self.send(p, &b, d);
        }
        for k in expired {
            if let Some(tx) = self.txs.remove(&k) {
                match tx.purpose {
                    Purpose::Register(p) => {
                        self.phones[p].reg_done = true;
                        eprintln!("phone {}: REGISTER timed out", self.phones[p].ext);
                    }
                    Purpose::Invite(c) => {
                        self.calls[c].state = CallState::Failed(408);
                        eprintln!("call {c}: INVITE timed out");
                    }
                    Purpose::Bye(c) => {
                        self.calls[c].bye_code = Some(408);
                        self.calls[c].state = CallState::Ended;
                    }
                }
            }
        }
        let mut again = Vec::new();
        for s in self.uas.values_mut() {
            if !s.acked && now < s.deadline && now >= s.next {
                again.push((s.phone, s.reply.clone(), s.dest));
                s.interval = (s.interval * 2).min(T2);
                s.next = now + s.interval;
            }
        }
        for (p, b, d) in again {
            self.send(p, &b, d);
        }
    }
}

/// Longest silence of `rx` within [from, to] (edges included) and whether a packet
/// arrived in [resume_from, to].
fn gap_of(rx: &[f64], from: f64, to: f64, resume_from: f64) -> (f64, bool) {
    let mut last = from;
    let mut gap: f64 = 0.0;
    let mut resumed = false;
    for &t in rx.iter().filter(|t| **t >= from && **t <= to) {
        gap = gap.max(t - last);
        last = t;
        if t >= resume_from {
            resumed = true;
        }
    }
    (gap.max(to - last), resumed)
}

fn main() -> anyhow::Result<()> {
    let a = parse_args()?;
    bench::rtp::raise_nofile();
    let mut ua = Ua::new(a)?;
    let n = ua.a.calls;
    let t0 = Instant::now();

    // 1. registrations
    for p in 0..ua.phones.len() {
        ua.register(p, None);
    }
    let phase = Instant::now() + Duration::from_secs(20);
    ua.run_until(phase, |u| u.phones.iter().all(|p| p.reg_done));
    let registered = ua.phones.iter().filter(|p| p.registered).count();
    for p in ua.phones.iter().filter(|p| p.registered) {
        println!("registered {}", p.ext);
    }
    eprintln!(
        "vip_phones: {registered}/{} phones registered in {:.1} s",
        ua.phones.len(),
        t0.elapsed().as_secs_f64()
    );

    // 2. calls (main)
    for i in 0..n {
        let c = ua.new_call(2 * i, 2 * i + 1, false);
        if ua.phones[2 * i].registered && ua.phones[2 * i + 1].registered {
            ua.invite(c, None);
        } else {
            ua.calls[c].state = CallState::Failed(0);
        }
    }
    let phase = Instant::now() + Duration::from_secs(20);
    ua.run_until(phase, |u| {
        u.calls
            .iter()
            .all(|c| !matches!(c.state, CallState::Idle | CallState::Inviting))
    });
    let established: Vec<usize> = (0..n)
        .filter(|&c| ua.calls[c].state == CallState::Up)
        .collect();
    // audio must flow both ways in every established call before the crash
    let settle = Instant::now() + Duration::from_secs(5);
    let since = wall_now() + 0.5;
    ua.run_until(settle, |u| {
        let w = wall_now();
        w > since
            && established.iter().all(|&c| {
                let (a, b) = (u.calls[c].caller, u.calls[c].callee);
                u.phones[a].rx.last().is_some_and(|t| *t > since)
                    && u.phones[b].rx.last().is_some_and(|t| *t > since)
            })
    });
    let flowing = established
        .iter()
        .filter(|&&c| {
            let (a, b) = (ua.calls[c].caller, ua.calls[c].callee);
            ua.phones[a].rx.last().is_some_and(|t| *t > since)
                && ua.phones[b].rx.last().is_some_and(|t| *t > since)
        })
        .count();
    let media_start = wall_now();
    std::fs::write(
        ua.a.control.join("ready"),
        format!(
            "registered={registered} established={} flowing={flowing}\n",
            established.len()
        ),
    )?;
    println!(
        "ready registered={registered}/{} established={}/{n} flowing={flowing}",
        ua.phones.len(),
        established.len()
    );

    // 3. wait for the crash, then let the calls run on
    let killed_file = ua.a.control.join("killed");
    let mut crash: Option<f64> = None;
    let wait_end = Instant::now() + Duration::from_secs_f64(ua.a.max_wait_s);
    let mut check = Instant::now();
    ua.run_until(wait_end, |_| {
        if Instant::now() >= check {
            check = Instant::now() + Duration::from_millis(20);
            crash = std::fs::read_to_string(&killed_file)
                .ok()
                .and_then(|s| s.trim().parse().ok());
        }
        crash.is_some()
    });
    if crash.is_none() {
        eprintln!("vip_phones: no crash time in {}", killed_file.display());
    }
    let after = Instant::now() + Duration::from_secs_f64(ua.a.after_s);
    ua.run_until(after, |_| false);

    // 4. hang up
    for &c in &established {
        if !ua.calls[c].remote_bye {
            ua.bye(c);
        } else {
            ua.calls[c].bye_at = Some(wall_now());
        }
    }
    let phase = Instant::now() + ua.a.tx_timeout + Duration::from_secs(1);
    ua.run_until(phase, |u| {
        established
            .iter()
            .all(|&c| u.calls[c].state != CallState::Ending)
    });

    // 5. each callee must still be reachable
    let mut post = Vec::new();
    if ua.a.post_calls {
        for i in 0..n {
            if ua.phones[2 * i].registered && ua.phones[2 * i + 1].registered {
                let c = ua.new_call(2 * i, 2 * i + 1, true);
                ua.invite(c, None);
                post.push(c);
            }
        }
        let phase = Instant::now() + Duration::from_secs(15);
        let mut byed = std::collections::HashSet::new();
        loop {
            let done = ua.run_until(phase, |u| {
                post.iter()
                    .all(|&c| matches!(u.calls[c].state, CallState::Failed(_) | CallState::Ended))
                    || post
                        .iter()
                        .any(|&c| u.calls[c].state == CallState::Up && !byed.contains(&c))
            });
            let up: Vec<usize> = post
                .iter()
                .copied()
                .filter(|&c| ua.calls[c].state == CallState::Up && !byed.contains(&c))
                .collect();
            for c in up {
                byed.insert(c);
                ua.bye(c);
            }
            if !done
                || post
                    .iter()
                    .all(|&c| matches!(ua.calls[c].state, CallState::Failed(_) | CallState::Ended))
            {
                break;
            }
        }
    }

    // report
    let resume_window = 1.0;
    let (mut kept, mut lost, mut bye_ok, mut remote_bye) = (0, 0, 0, 0);
    let mut gaps: Vec<f64> = Vec::new();
    for c in 0..n {
        let call = &ua.calls[c];
        let (a, b) = (call.caller, call.callee);
        if let CallState::Failed(code) = call.state {
            println!(
                "call {c} a={} b={} established=0 invite_code={code}",
                ua.phones[a].ext, ua.phones[b].ext
            );
            continue;
        }
        let end = call.bye_at.unwrap_or_else(wall_now);
        let from = crash.map(|k| k - 0.5).unwrap_or(media_start);
        let resume_from = crash.unwrap_or(media_start).max(end - resume_window);
        let (gap_ab, res_ab) = gap_of(&ua.phones[b].rx, from, end, resume_from);
        let (gap_ba, res_ba) = gap_of(&ua.phones[a].rx, from, end, resume_from);
        let keeps = res_ab && res_ba && !call.remote_bye;
        let bye = call.bye_code.unwrap_or(0);
        if keeps {
            kept += 1;
        }
        if bye == 200 {
            bye_ok += 1;
        }
        if call.remote_bye {
            remote_bye += 1;
        }
        if !keeps || bye != 200 {
            lost += 1;
        }
        let g = gap_ab.max(gap_ba) * 1000.0;
        gaps.push(g);
        println!(
            "call {c} a={} b={} established=1 gap_ab_ms={:.0} gap_ba_ms={:.0} resumed_ab={} resumed_ba={} remote_bye={} bye={bye} kept={}",
            ua.phones[a].ext,
            ua.phones[b].ext,
            gap_ab * 1000.0,
            gap_ba * 1000.0,
            res_ab as u8,
            res_ba as u8,
            call.remote_bye as u8,
            keeps as u8,
        );
    }
    let post_ok = post
        .iter()
        .filter(|&&c| ua.calls[c].bye_code == Some(200))
        .count();
    for &c in &post {
        let call = &ua.calls[c];
        if call.bye_code != Some(200) {
            println!(
                "post_call a={} b={} state={:?} bye={:?}",
                ua.phones[call.caller].ext, ua.phones[call.callee].ext, call.state, call.bye_code
            );
        }
    }
    gaps.sort_by(|x, y| x.total_cmp(y));
    let median = if gaps.is_empty() {
        0.0
    } else if gaps.len() % 2 == 1 {
        gaps[gaps.len() / 2]
    } else {
        (gaps[gaps.len() / 2 - 1] + gaps[gaps.len() / 2]) / 2.0
    };
    let max = gaps.last().copied().unwrap_or(0.0);
    println!(
        "summary phones={} registered={registered} calls={n} established={} kept={kept} lost={lost} bye_ok={bye_ok} remote_bye={remote_bye} post_ok={post_ok}/{} gap_median_ms={median:.0} gap_max_ms={max:.0} crash_seen={}",
        ua.phones.len(),
        established.len(),
        post.len(),
        crash.is_some() as u8
    );
    Ok(())
}
