//! The virtual IP of a three-node cluster, each node in its own network namespace and
//! the phones in a fourth, all on one bridge. Phones know only the VIP. Kill -9 of the
//! holder loses no registration and no established call (RTP resumes on the same ports,
//! the BYE is answered by the new holder, one CDR with the whole duration); a holder cut
//! off from the others lets go of the address, so exactly one MAC answers ARP for it;
//! a graceful leadership transfer moves the VIP without losing the call.

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tests::cluster::{form_cluster, ok, status, switchctl};
use tests::netns::Lab;
use tests::phone::{answer, answer_bye, invite, media_of, rtp, sdp, with_body, Phone};
use tests::{
    eventually, header, run_bounded, scenario, status_code, token, Ext, Node, NodeOpts, Sipp,
};

/// The lab host the phones live on.
const CLIENT: usize = 3;
const CALLER: &str = "1001";
const CALLEE: &str = "1002";

struct VipCluster {
    lab: Lab,
    members: Vec<Node>,
    /// Members killed or cut off by the test.
    down: Vec<bool>,
    vip: SocketAddr,
    work: tempfile::TempDir,
}

impl VipCluster {
    fn start() -> VipCluster {
        VipCluster::start_with(|_| String::new())
    }

    /// A cluster whose members also get `extra(lab)` in their configuration.
    fn start_with(extra: impl FnOnce(&Lab) -> String) -> VipCluster {
        let lab = Lab::create(4).expect("lab");
        let vip = lab.spare_ip();
        let extra_toml = extra(&lab);
        let work = tempfile::tempdir().unwrap();
        let opts = NodeOpts {
            extensions: vec![
                Ext {
                    trusted_ips: vec![lab.ip(CLIENT).to_string()],
                    ..Ext::new(CALLER)
                },
                Ext::new(CALLEE),
                Ext::new("1003"),
            ],
            vip: Some(vip),
            extra_toml,
            ..NodeOpts::default()
        };
        let members = form_cluster(&lab, 3, work.path(), opts);
        let c = VipCluster {
            lab,
            down: vec![false; members.len()],
            members,
            vip: SocketAddr::from((vip, 5060)),
            work,
        };
        eventually(Duration::from_secs(15), "the VIP answers OPTIONS", || {
            c.options_ok()
        });
        c
    }

    fn dir(&self) -> &Path {
        self.work.path()
    }

    /// A socket in the phones' namespace.
    fn socket(&self, port: u16) -> UdpSocket {
        self.lab
            .udp_socket(CLIENT, port)
            .expect("socket in the client namespace")
    }

    /// An OPTIONS to the VIP from the phones' namespace is answered 200 within 300 ms.
    fn options_ok(&self) -> bool {
        let s = self.socket(0);
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let me = s.local_addr().unwrap();
        let msg = format!(
            "OPTIONS sip:{vip} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{b}\r\n\
             From: <sip:probe@{me}>;tag={t}\r\nTo: <sip:{vip}>\r\nCall-ID: {c}\r\n\
             CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            vip = self.vip,
            b = token("o"),
            t = token("t"),
            c = token("opt"),
        );
        if s.send_to(msg.as_bytes(), self.vip).is_err() {
            return false;
        }
        let mut buf = [0u8; 4096];
        matches!(s.recv_from(&mut buf), Ok((n, _)) if String::from_utf8_lossy(&buf[..n]).starts_with("SIP/2.0 200"))
    }

    fn up(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.members.len()).filter(|i| !self.down[*i])
    }

    /// Index of the leader the members still up agree on (it holds the VIP).
    fn holder(&self) -> usize {
        let mut found = None;
        eventually(Duration::from_secs(10), "a leader is known", || {
            let ids: Vec<(usize, u64, Option<u64>)> = self
                .up()
                .map(|i| {
                    let s = status(self.members[i].admin, self.dir());
                    (i, s["id"].as_u64().unwrap_or(0), s["leader"]["id"].as_u64())
                })
                .collect();
            found = ids.iter().find_map(|(_, _, leader)| {
                let l = (*leader)?;
                ids.iter().find(|(_, id, _)| *id == l).map(|(i, _, _)| *i)
            });
            found.is_some()
        });
        found.unwrap_or(0)
    }

    /// Registers `number` from the phones' namespace on `port` (SIPp, digest auth).
    fn register(&self, number: &str, port: u16) {
        let r = Sipp::new(&format!("reg-{number}"), scenario("register.xml"))
            .in_netns(&self.lab.hosts[CLIENT].netns)
            .local_ip(self.lab.ip(CLIENT))
            .local_port(port)
            .remote(self.vip)
            .registering(number)
            .run()
            .expect("sipp runs");
        assert!(
            r.ok(),
            "REGISTER {number} through the VIP\n{}",
            r.describe()
        );
    }

    fn phone(&self, sip_port: u16) -> Phone {
        Phone::of(self.socket(sip_port), self.socket(0))
    }

    /// The members' CDRs, read from a running member's store.
    fn cdrs(&self) -> Vec<Value> {
        let i = self.up().next().expect("a running member");
        self.members[i].cdrs().expect("CDRs")
    }
}

/// An established call through the VIP between two phones in the client namespace.
struct Call {
    caller: Phone,
    callee: Phone,
    invite: String,
    ok: String,
    /// The INVITE as the callee got it (its SDP names the callee's relay port).
    b_invite: String,
    callee_tag: String,
    vip: SocketAddr,
    started: Instant,
}

impl Call {
    fn establish(c: &VipCluster, callee_port: u16) -> Call {
        c.register(CALLEE, callee_port);
        let callee = c.phone(callee_port);
        let caller = c.phone(0);
        let client_ip = c.lab.ip(CLIENT).to_string();
        let invite = invite(
            &caller,
            CALLER,
            CALLEE,
            c.vip,
            "vipcall",
            &sdp(&client_ip, caller.rtp_port()),
        );
        let started = Instant::now();
        caller.send(c.vip, &invite);
        let (b_invite, from) = callee.expect(Duration::from_secs(5), "INVITE at the callee", |m| {
            m.starts_with("INVITE ")
        });
        assert_eq!(
            media_of(&b_invite).0,
            c.vip.ip().to_string(),
            "the relay answers on the VIP\n{b_invite}"
        );
        let callee_tag = token("b");
        let ok = answer(
            &b_invite,
            200,
            "OK",
            &callee_tag,
            callee.sip_addr(),
            &sdp(&client_ip, callee.rtp_port()),
        );
        callee.send(from, &ok);
        let (ok, _) = caller.expect(Duration::from_secs(5), "200 at the caller", |m| {
            status_code(m) == Some(200)
        });
        let call = Call {
            caller,
            callee,
            invite,
            ok,
            b_invite,
            callee_tag,
            vip: c.vip,
            started,
        };
        call.caller.send(c.vip, &call.caller_request("ACK", 1));
        call.callee
            .expect(Duration::from_secs(5), "ACK at the callee", |m| {
                m.starts_with("ACK ")
            });
        call
    }

    fn caller_request(&self, method: &str, cseq: u32) -> String {
        let head = format!(
            "{method} sip:{CALLEE}@{vip} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{br};rport\r\n\
             Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: {cseq} {method}\r\n\
             Contact: <sip:{CALLER}@{me}>\r\n",
            vip = self.vip,
            me = self.caller.sip_addr(),
            br = token(&method.to_ascii_lowercase()),
            from = header(&self.invite, &["From"]).unwrap_or_default(),
            to = header(&self.ok, &["To", "t"]).unwrap_or_default(),
            cid = header(&self.invite, &["Call-ID"]).unwrap_or_default(),
        );
        with_body(head, "")
    }

    /// The relay's ports on the VIP for the caller and for the callee.
    fn relay(&self) -> (SocketAddr, SocketAddr) {
        let ip = self.vip.ip();
        (
            SocketAddr::new(ip, media_of(&self.ok).1),
            SocketAddr::new(ip, media_of(&self.b_invite).1),
        )
    }

    /// Sends RTP both ways every 20 ms until each side got `want` packets from the
    /// other, or `limit` passes; returns what each side got (caller, callee).
    fn talk(
        &self,
        relay: (SocketAddr, SocketAddr),
        want: usize,
        limit: Duration,
    ) -> (usize, usize) {
        for s in [&self.caller.rtp, &self.callee.rtp] {
            s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
        }
        let (mut to_caller, mut to_callee) = (0, 0);
        let deadline = Instant::now() + limit;
        let mut seq: u16 = 0;
        let mut buf = [0u8; 2048];
        while (to_caller < want || to_callee < want) && Instant::now() < deadline {
            seq = seq.wrapping_add(1);
            let _ = self.caller.rtp.send_to(&rtp(seq, 0xa, 0x11), relay.0);
            let _ = self.callee.rtp.send_to(&rtp(seq, 0xb, 0x22), relay.1);
            let until = Instant::now() + Duration::from_millis(20);
            while Instant::now() < until {
                if let Ok((n, _)) = self.caller.rtp.recv_from(&mut buf) {
                    if n > 12 && buf[12] == 0x22 {
                        to_caller += 1;
                    }
                }
                if let Ok((n, _)) = self.callee.rtp.recv_from(&mut buf) {
                    if n > 12 && buf[12] == 0x11 {
                        to_callee += 1;
                    }
                }
            }
        }
        (to_caller, to_callee)
    }

    /// The caller hangs up; the callee answers the relayed BYE; the caller gets 200.
    fn hang_up(&self) {
        self.caller.send(self.vip, &self.caller_request("BYE", 2));
        answer_bye(&self.callee, &self.callee_tag);
        self.caller
            .expect(Duration::from_secs(5), "200 to the BYE", |m| {
                status_code(m) == Some(200) && m.contains("BYE")
            });
    }
}

/// An established call with RTP both ways, then `fault` moves the VIP; RTP resumes on
/// the same ports, the BYE is answered by the new holder, and one CDR has it all.
fn call_survives(fault: impl FnOnce(&mut VipCluster, usize)) {
    let mut c = VipCluster::start();
    let call = Call::establish(&c, 5072);
    let relay = call.relay();
    let (a, b) = call.talk(relay, 20, Duration::from_secs(5));
    assert!(
        a >= 20 && b >= 20,
        "RTP both ways before the fault: {a}/{b}"
    );
    let before = c.holder();
    fault(&mut c, before);
    eventually(Duration::from_secs(10), "the VIP answers again", || {
        c.options_ok()
    });
    let after = c.holder();
    assert_ne!(before, after, "another member holds the VIP");
    eventually(
        Duration::from_secs(10),
        "only the holder says (`cluster status`) it has the VIP",
        || {
            c.up().all(|i| {
                status(c.members[i].admin, c.dir())["vip"]["held_here"].as_bool()
                    == Some(i == after)
            })
        },
    );
    let (a, b) = call.talk(relay, 20, Duration::from_secs(5));
    assert!(a >= 20 && b >= 20, "RTP resumed both ways: {a}/{b}");
    std::thread::sleep(Duration::from_secs(1));
    call.hang_up();
    let held = call.started.elapsed().as_secs();
    let mut cdrs = Vec::new();
    eventually(Duration::from_secs(10), "the call's CDR", || {
        cdrs = c.cdrs();
        !cdrs.is_empty()
    });
    assert_eq!(cdrs.len(), 1, "one CDR: {cdrs:?}");
    let cdr = &cdrs[0];
    assert_eq!(cdr["disposition"], "ANSWERED", "{cdr}");
    assert_eq!(cdr["hangup_by"], "caller", "{cdr}");
    let duration = cdr["duration"].as_u64().unwrap_or(0);
    assert!(
        duration + 1 >= held,
        "the CDR covers the whole call ({duration} s of {held} s): {cdr}"
    );
}

#[test]
fn an_established_call_survives_kill_9_of_the_vip_holder() {
    call_survives(|c, holder| {
        c.members[holder].kill9();
        c.down[holder] = true;
    });
}

#[test]
fn a_leadership_transfer_moves_the_vip_without_losing_the_call() {
    call_survives(|c, holder| {
        let out = ok(
            &mut switchctl(c.members[holder].admin, &["cluster", "transfer-leader"]),
            c.dir(),
            "transfer",
        );
        assert!(!out.trim().is_empty(), "transfer-leader says what it did");
    });
}

/// An HTTP endpoint in the test's namespace (on the lab bridge) that answers 200 and
/// keeps every request body.
fn webhook_sink(lab: &Lab) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind((lab.gateway, 0)).expect("webhook listener");
    let addr = listener.local_addr().unwrap();
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let keep = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(32) {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            // The headers, then Content-Length bytes of body.
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        keep.lock().unwrap().push(body.to_string());
                        break;
                    }
                }
            }
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (addr, got)
}

#[test]
fn registrations_survive_kill_9_of_the_vip_holder() {
    let mut hook = None;
    let mut c = VipCluster::start_with(|lab| {
        let (addr, got) = webhook_sink(lab);
        hook = Some(got);
        format!("[notify]\nwebhook = \"http://{addr}/vip\"\ncall = \"1003\"\n")
    });
    let hook = hook.expect("webhook sink");
    let phones = [(CALLEE, 5072u16), ("1003", 5073u16)];
    for (number, port) in phones {
        c.register(number, port);
    }
    let alerted = c.phone(5073);
    let holder = c.holder();
    c.members[holder].kill9();
    c.down[holder] = true;
    eventually(Duration::from_secs(10), "the VIP answers again", || {
        c.options_ok()
    });
    // The switchover is announced: the webhook hears of it, and the alert number rings.
    let new_id = status(c.members[c.holder()].admin, c.dir())["id"].as_u64();
    eventually(
        Duration::from_secs(10),
        "the webhook hears of the switchover",
        || {
            hook.lock().unwrap().iter().any(|b| {
                serde_json::from_str::<Value>(b)
                    .is_ok_and(|v| v["event"] == "acquired" && v["node"].as_u64() == new_id)
            })
        },
    );
    let (alert, from) = alerted.expect(Duration::from_secs(10), "the alert call", |m| {
        m.starts_with("INVITE ") && m.contains("switchover@")
    });
    let busy = answer(
        &alert,
        486,
        "Busy Here",
        &token("x"),
        alerted.sip_addr(),
        "",
    );
    alerted.send(from, &busy);
    // Every extension can be called at once, without registering again: its phone
    // gets the INVITE (and turns it down as busy).
    drop(alerted);
    for (number, port) in phones {
        let callee = c.phone(port);
        let caller = c.phone(0);
        let offer = sdp(&c.lab.ip(CLIENT).to_string(), caller.rtp_port());
        caller.send(
            c.vip,
            &invite(&caller, CALLER, number, c.vip, "after", &offer),
        );
        let (got, from) = callee.expect(
            Duration::from_secs(5),
            "INVITE at the registered phone",
            |m| m.starts_with("INVITE ") && m.contains(&format!("sip:{CALLER}@")),
        );
        callee.send(
            from,
            &answer(&got, 486, "Busy Here", &token("b"), callee.sip_addr(), ""),
        );
        caller.expect(Duration::from_secs(5), "486 at the caller", |m| {
            status_code(m) == Some(486)
        });
    }
}

/// The distinct MACs answering an ARP request for `ip` from lab host `from` within 1 s.
fn arp_answers(lab: &Lab, from: usize, ip: std::net::Ipv4Addr) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let (st, out, err) = run_bounded(
        lab.command(from, "python3")
            .arg(tests::crate_dir().join("clients/arp_probe.py"))
            .arg(tests::netns::HOST_INTERFACE)
            .arg(lab.ip(from).to_string())
            .arg(ip.to_string()),
        dir.path(),
        "arp",
        Duration::from_secs(10),
    )
    .expect("python3 runs");
    assert!(st.is_some_and(|s| s.success()), "ARP probe failed: {err}");
    out.lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn a_holder_cut_off_from_the_others_drops_the_vip() {
    let mut c = VipCluster::start();
    let vip = c.lab.spare_ip();
    assert_eq!(
        arp_answers(&c.lab, CLIENT, vip).len(),
        1,
        "one holder at first"
    );
    let holder = c.holder();
    c.lab.link_down(holder).expect("link down");
    c.down[holder] = true;
    // The cut-off node lets go of the address on its own (its lease runs out) ...
    let netns = c.lab.hosts[holder].netns.clone();
    eventually(
        Duration::from_secs(5),
        "the cut-off holder removes the VIP",
        || {
            let out = std::process::Command::new("ip")
                .args(["-n", &netns, "-o", "addr", "show"])
                .output()
                .expect("ip");
            !String::from_utf8_lossy(&out.stdout).contains(&format!("{vip}/"))
        },
    );
    // ... and another member takes it, with the IPv6 VIP too.
    eventually(Duration::from_secs(10), "the VIP answers again", || {
        c.options_ok()
    });
    let v6 = tests::netns::vip6(vip);
    let holding_v6: Vec<usize> = (0..3)
        .filter(|i| {
            let out = std::process::Command::new("ip")
                .args(["-n", &c.lab.hosts[*i].netns, "-o", "addr", "show"])
                .output()
                .expect("ip");
            String::from_utf8_lossy(&out.stdout).contains(&v6)
        })
        .collect();
    assert_eq!(
        holding_v6,
        vec![c.holder()],
        "the IPv6 VIP is on the new holder only"
    );
    assert_eq!(
        arp_answers(&c.lab, CLIENT, vip).len(),
        1,
        "exactly one MAC after the cut"
    );
    // Back on the bridge, the old holder stays a follower without the address.
    c.lab.link_up(holder).expect("link up");
    c.down[holder] = false;
    std::thread::sleep(Duration::from_secs(2));
    let answers = arp_answers(&c.lab, CLIENT, vip);
    assert_eq!(
        answers.len(),
        1,
        "exactly one MAC once the link is back: {answers:?}"
    );
    assert!(c.options_ok(), "the VIP still answers");
    assert!(
        c.members[holder].log().contains("VIP released"),
        "the old holder logged the switchover"
    );
}
