//! Timer and matching scenarios with an injected clock: no sleeping, no sockets.

use super::*;
use crate::sip::message::{parse, Transport};

fn udp() -> Peer {
    Peer {
        transport: Transport::Udp,
        addr: "10.0.0.2:5060".parse().unwrap(),
    }
}

fn tcp() -> Peer {
    Peer {
        transport: Transport::Tcp,
        addr: "10.0.0.2:5060".parse().unwrap(),
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A request as a UA at 10.0.0.2 would send it.
fn req(method: &str, branch: &str) -> SipMessage {
    req_cseq(method, branch, 1)
}

fn req_cseq(method: &str, branch: &str, cseq: u32) -> SipMessage {
    let text = format!(
        "{method} sip:bob@example.com SIP/2.0\r\n\
         Via: SIP/2.0/UDP 10.0.0.2:5060;branch={branch}\r\n\
         Via: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bKlower\r\n\
         Max-Forwards: 70\r\n\
         Route: <sip:p1.example.com;lr>\r\n\
         Route: <sip:p2.example.com;lr>\r\n\
         From: \"Alice\" <sip:alice@example.com>;tag=ft\r\n\
         To: <sip:bob@example.com>\r\n\
         Call-ID: call-1@10.0.0.2\r\n\
         CSeq: {cseq} {method}\r\n\
         Contact: <sip:alice@10.0.0.2:5060>\r\n\r\n"
    );
    parse(text.as_bytes()).unwrap()
}

/// ACK for a 2xx: new branch, To tag of the 2xx (what a dialog would send).
fn ack_2xx(branch: &str) -> SipMessage {
    let mut m = req("ACK", branch);
    m.set_to_tag("tt");
    m
}

fn resp(r: &SipMessage, code: u16) -> SipMessage {
    let mut m = r.response(code, "Reason");
    if code > 100 {
        m.set_to_tag("tt");
    }
    m
}

fn sent(acts: &[Action]) -> Vec<SipMessage> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Send { bytes, .. } => Some(parse(bytes).unwrap()),
            Action::Deliver(_) => None,
        })
        .collect()
}

fn events(acts: &[Action]) -> Vec<&TuEvent> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Deliver(e) => Some(e),
            Action::Send { .. } => None,
        })
        .collect()
}

fn is_terminated(acts: &[Action]) -> bool {
    events(acts)
        .iter()
        .any(|e| matches!(e, TuEvent::Terminated { .. }))
}

fn is_timeout(acts: &[Action]) -> bool {
    events(acts)
        .iter()
        .any(|e| matches!(e, TuEvent::Timeout { .. }))
}

/// Runs the timers at each deadline up to `until`, returning (fire time in ms, actions).
fn run_until(l: &mut TransactionLayer, t0: Instant, until: u64) -> Vec<(u64, Vec<Action>)> {
    let mut out = Vec::new();
    while let Some(d) = l.next_deadline() {
        if d > t0 + ms(until) {
            break;
        }
        let acts = l.on_timer(d);
        out.push(((d - t0).as_millis() as u64, acts));
    }
    out
}

fn server_key_of(acts: &[Action]) -> TxKey {
    events(acts)
        .iter()
        .find_map(|e| match e {
            TuEvent::Request { key, .. } => Some(key.clone()),
            _ => None,
        })
        .unwrap()
}

#[test]
fn client_invite_timer_a_doubles_uncapped_then_timer_b() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(TimerConfig::default());
    let (key, acts) = l.request(req("INVITE", "z9hG4bKa"), udp(), t0);
    assert_eq!(sent(&acts).len(), 1);
    assert_eq!(l.state(&key), Some(TxState::Calling));
    assert!(l.on_timer(t0 + ms(499)).is_empty());
    // Intervals 500, 1000, 2000, 4000, 8000, 16000: past T2, since Timer A is not capped.
    let fired = run_until(&mut l, t0, 31_999);
    let times: Vec<u64> = fired.iter().map(|(t, _)| *t).collect();
    assert_eq!(times, vec![500, 1500, 3500, 7500, 15500, 31500]);
    for (_, acts) in &fired {
        let s = sent(acts);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].method(), Some(&Method::Invite));
    }
    assert_eq!(l.next_deadline(), Some(t0 + ms(32_000)));
    let acts = l.on_timer(t0 + ms(32_000));
    assert!(matches!(events(&acts)[0], TuEvent::Timeout { key: k } if *k == key));
    assert!(is_terminated(&acts));
    assert!(l.is_empty());
    assert_eq!(l.next_deadline(), None);
}

#[test]
fn client_invite_reliable_has_no_timer_a() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(TimerConfig::default());
    let (_, acts) = l.request(req("INVITE", "z9hG4bKa"), tcp(), t0);
    assert_eq!(sent(&acts).len(), 1);
    assert_eq!(l.next_deadline(), Some(t0 + ms(32_000)));
    let acts = l.on_timer(t0 + ms(32_000));
    assert!(sent(&acts).is_empty());
    assert!(is_timeout(&acts) && is_terminated(&acts));
}

#[test]
fn client_invite_non_2xx_builds_ack_and_timer_d() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(TimerConfig::default());
    let invite = req("INVITE", "z9hG4bKa");
    let (key, _) = l.request(invite.clone(), udp(), t0);
    let acts = l.on_response(resp(&invite, 180), udp(), t0 + ms(100));
    assert_eq!(events(&acts).len(), 1);
    assert_eq!(l.state(&key), Some(TxState::Proceeding));
    // Timer A stopped: nothing goes out at 500 ms.
    assert!(sent(&l.on_timer(t0 + ms(500))).is_empty());

    let acts = l.on_response(resp(&invite, 486), udp(), t0 + ms(200));
    let ev = events(&acts);
    assert!(matches!(ev[0], TuEvent::Response { msg, .. } if msg.status() == Some(486)));
    let s = sent(&acts);
    assert_eq!(s.len(), 1);
    let ack = &s[0];
    assert_eq!(ack.method(), Some(&Method::Ack));
    assert_eq!(ack.uri(), invite.uri());
    assert_eq!(ack.branch().as_deref(), Some("z9hG4bKa"));
    assert_eq!(ack.headers.get_all("Via").count(), 1, "only the top Via");
    assert_eq!(ack.to_tag().as_deref(), Some("tt"));
    assert_eq!(ack.from_tag().as_deref(), Some("ft"));
    assert_eq!(ack.call_id(), invite.call_id());
    assert_eq!(ack.cseq(), Some((1, Method::Ack)));
    let routes: Vec<&str> = ack.headers.get_all("Route").collect();
    assert_eq!(
        routes,
        vec!["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    );
    assert_eq!(l.state(&key), Some(TxState::Completed));

    // Retransmitted final: ACK again, the TU hears nothing.
    let acts = l.on_response(resp(&invite, 486), udp(), t0 + ms(300));
    assert!(events(&acts).is_empty());
    assert_eq!(sent(&acts)[0].method(), Some(&Method::Ack));

    // Timer D: 32 s.
    assert_eq!(l.next_deadline(), Some(t0 + ms(200) + ms(32_000)));
    let acts = l.on_timer(t0 + ms(32_200));
    assert!(is_terminated(&acts) && !is_timeout(&acts));
    assert!(l.is_empty());
}

#[test]
fn client_invite_reliable_timer_d_is_zero() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(TimerConfig::default());
    let invite = req("INVITE", "z9hG4bKa");
    l.request(invite.clone(), tcp(), t0);
    let acts = l.on_response(resp(&invite, 603), tcp(), t0 + ms(10));
    assert_eq!(sent(&acts)[0].method(), Some(&Method::Ack));
    assert!(is_terminated(&acts));
    assert!(l.is_empty());
}

#[test]
fn client_invite_2xx_accepted_delivers_retransmissions_and_forks_until_timer_m() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(TimerConfig::default());
    let invite = req("INVITE", "z9hG4bKa");
    let (key, _) = l.request(invite.clone(), udp(), t0);
    let ok = resp(&invite, 200);
    let acts = l.on_response(ok.clone(), udp(), t0 + ms(100));
    assert_eq!(events(&acts).len(), 1);
    assert!(
        sent(&acts).is_empty(),
        "the TU ACKs a 2xx, not the transaction"
    );
    assert_eq!(l.state(&key), Some(TxState::Accepted));
    // Retransmission and another fork's 2xx both reach the TU.
    assert_eq!(
        events(&l.on_response(ok.clone(), udp(), t0 + ms(600))).len(),
        1
    );
    let mut fork = invite.response(200, "OK");
    fork.set_to_tag("other");
    assert_eq!(events(&l.on_response(fork, udp(), t0 + ms(700))).len(), 1);
    // Timer M = 64*T1 from the first 2xx; no Timeout.
    assert_eq!(l.next_deadline(), Some(t0 + ms(100) + ms(32_000)));
    let acts = l.on_timer(t0 + ms(32_100));
    assert!(is_terminated(&acts) && !is_timeout(&acts));
    // Later 2xx retransmissions are stray; the TU may still ACK them.
    let acts = l.on_response(ok, udp(), t0 + ms(33_000));
    assert!(matches!(events(&acts)[0], TuEvent::StrayResponse { .. }));
    assert_eq!(l.stats().stray_responses, 1);
}

#[test]
fn client_non_invite_timer_e_capped_at_t2_then_timer_f() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(TimerConfig::default());
    let (key, _) = l.request(req("OPTIONS", "z9hG4bKo"), udp(), t0);
    let fired = run_until(&mut l, t0, 31_999);
    let times: Vec<u64> = fired.iter().map(|(t, _)| *t).collect();
    assert_eq!(
        times,
        vec![500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
    );
    assert!(fired.iter().all(|(_, a)| sent(a).len() == 1));
    let acts = l.on_timer(t0 + ms(32_000));
    assert!(matches!(events(&acts)[0], TuEvent::Timeout { key: k } if *k == key));
    assert!(is_terminated(&acts));
}

#[test]
fn client_non_invite_timer_e_is_t2_in_proceeding() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(TimerConfig::default());
    let bye = req("BYE", "z9hG4bKb");
    let (key, _) = l.request(bye.clone(), udp(), t0);
    assert_eq!(sent(&l.on_timer(t0 + ms(500))).len(), 1); // next at 1500
    let acts = l.on_response(resp(&bye, 100), udp(), t0 + ms(600));
    assert_eq!(events(&acts).len(), 1);
    assert_eq!(l.state(&key), Some(TxState::Proceeding));
    let fired = run_until(&mut l, t0, 14_000);
    let times: Vec<u64> = fired.iter().map(|(t, _)| *t).collect();
    assert_eq!(times, vec![1500, 5500, 9500, 13500]);
}

#[test]
fn client_non_invite_final_then_timer_k() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(TimerConfig::default());
    let bye = req("BYE", "z9hG4bKb");
    let (key, _) = l.request(bye.clone(), udp(), t0);
    let acts = l.on_response(resp(&bye, 200), udp(), t0 + ms(100));
    assert_eq!(events(&acts).len(), 1);
    assert_eq!(l.state(&key), Some(TxState::Completed));
    // Retransmitted final absorbed; no more request retransmissions.
    assert!(l
        .on_response(resp(&bye, 200), udp(), t0 + ms(200))
        .is_empty());
    assert_eq!(l.next_deadline(), Some(t0 + ms(5_100)));
    let acts = l.on_timer(t0 + ms(5_100));
    assert!(sent(&acts).is_empty());
    assert!(is_terminated(&acts));
}

#[test]
fn client_non_invite_reliable_no_e_and_zero_k() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(TimerConfig::default());
    let bye = req("BYE", "z9hG4bKb");
    l.request(bye.clone(), tcp(), t0);
    assert_eq!(l.next_deadline(), Some(t0 + ms(32_000)), "only Timer F");
    let acts = l.on_response(resp(&bye, 200), tcp(), t0 + ms(100));
    assert!(is_terminated(&acts));
    assert!(l.is_empty());
}

#[test]
fn server_invite_sends_100_at_once_and_absorbs_retransmissions() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(TimerConfig::default());
    let invite = req("INVITE", "z9hG4bKs");
    let acts = l.on_request(invite.clone(), udp(), t0);
    assert!(matches!(&acts[0], Action::Send { .. }), "100 Trying first");
    assert_eq!(sent(&acts)[0].status(), Some(100));
    assert_eq!(sent(&acts)[0].to_tag(), None);
    let key = server_key_of(&acts);
    assert_eq!(
        key,
        TxKey::Server {
            branch: "z9hG4bKs".into(),
            method: Method::Invite,
            sent_by: "10.0.0.2:5060".into()
        }
    );
    // Retransmission: 100 again, no second delivery.
    let acts = l.on_request(invite.clone(), udp(), t0 + ms(500));
    assert!(events(&acts).is_empty());
    assert_eq!(sent(&acts)[0].status(), Some(100));
    // After a 180, retransmissions get the 180.
    let acts = l.respond(&key, resp(&invite, 180), t0 + ms(600));
    assert_eq!(sent(&acts)[0].status(), Some(180));
    let acts = l.on_request(invite, udp(), t0 + ms(1500));
    assert!(events(&acts).is_empty());
    assert_eq!(sent(&acts)[0].status(), Some(180));
    assert_eq!(l.state(&key), Some(TxState::Proceeding));
}

#[test]
fn server_invite_non_2xx_timer_g_capped_then_timer_h() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(TimerConfig::default());
    let invite = req("INVITE", "z9hG4bKs");
    let acts = l.on_request(invite.clone(), udp(), t0);
    let key = server_key_of(&acts);
    let acts = l.respond(&key, resp(&invite, 486), t0);
    assert_eq!(sent(&acts)[0].status(), Some(486));
    assert_eq!(l.state(&key), Some(TxState::Completed));
    let fired = run_until(&mut l, t0, 31_999);
    let times: Vec<u64> = fired.iter().map(|(t, _)| *t).collect();
    assert_eq!(
        times,
        vec![500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
    );
    assert!(fired
        .iter()
        .all(|(_, a)| sent(a).len() == 1 && sent(a)[0].status() == Some(486)));
    // Retransmitted INVITE in Completed: the final again.
    let acts = l.on_request(invite, udp(), t0 + ms(31_600));
    assert_eq!(sent(&acts)[0].status(), Some(486));
    assert!(events(&acts).is_empty());
    let acts = l.on_timer(t0 + ms(32_000));
    assert!(is_timeout(&acts) && is_terminated(&acts));
    assert!(l.is_empty());
}

#[test]
fn server_invite_ack_confirms_then_timer_i() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(TimerConfig::default());
    let invite = req("INVITE", "z9hG4bKs");
    let acts = l.on_request(invite.clone(), udp(), t0);
    let key = server_key_of(&acts);
    l.respond(&key, resp(&invite, 486), t0);
    // ACK for a non-2xx: same branch, absorbed.
    let mut ack = req("ACK", "z9hG4bKs");
    ack.set_to_tag("tt");
    assert!(l.on_request(ack.clone(), udp(), t0 + ms(100)).is_empty());
    assert_eq!(l.state(&key), Some(TxState::Confirmed));
    // Retransmissions of INVITE and ACK absorbed; Timer G stopped.
    assert!(l.on_request(ack, udp(), t0 + ms(200)).is_empty());
    assert!(l.on_request(invite, udp(), t0 + ms(300)).is_empty());
    assert_eq!(l.next_deadline(), Some(t0 + ms(5_100)), "Timer I = T4");
    let acts = l.on_timer(t0 + ms(5_100));
    assert!(is_terminated(&acts) && !is_timeout(&acts));
}

#[test]
fn server_invite_reliable_no_g_and_zero_i() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(TimerConfig::default());
    let invite = req("INVITE", "z9hG4bKs");
    let acts = l.on_request(invite.clone(), tcp(), t0);
    let key = server_key_of(&acts);
    l.respond(&key, resp(&invite, 486), t0);
    assert_eq!(l.next_deadline(), Some(t0 + ms(32_000)), "only Timer H");
    let mut ack = req("ACK", "z9hG4bKs");
    ack.set_to_tag("tt");
    let acts = l.on_request(ack, tcp(), t0 + ms(100));
    assert!(is_terminated(&acts));
    assert!(l.is_empty());
}

#[test]
fn server_invite_2xx_retransmitted_until_ack_then_timer_l() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(TimerConfig::default());
    let invite = req("INVITE", "z9hG4bKs");
    let acts = l.on_request(invite.clone(), udp(), t0);
    let key = server_key_of(&acts);
    let acts = l.respond(&key, resp(&invite, 200), t0);
    assert_eq!(sent(&acts)[0].status(), Some(200));
    assert_eq!(l.state(&key), Some(TxState::Accepted));
    let fired = run_until(&mut l, t0, 4_000);
    let times: Vec<u64> = fired.iter().map(|(t, _)| *t).collect();
    assert_eq!(times, vec![500, 1500, 3500]);
    assert!(fired.iter().all(|(_, a)| sent(a)[0].status() == Some(200)));
    // Retransmitted INVITE in Accepted: absorbed, nothing sent or delivered.
    assert!(l.on_request(invite, udp(), t0 + ms(3_600)).is_empty());
    // The ACK (new branch) matches by Call-ID/CSeq/From tag and stops retransmission.
    let acts = l.on_request(ack_2xx("z9hG4bKack"), udp(), t0 + ms(4_000));
    assert!(matches!(
        events(&acts)[0],
        TuEvent::Ack { invite: Some(k), .. } if *k == key
    ));
    assert_eq!(
        l.next_deadline(),
        Some(t0 + ms(32_000)),
        "only Timer L left"
    );
    let acts = l.on_timer(t0 + ms(32_000));
    assert!(
        is_terminated(&acts) && !is_timeout(&acts),
        "ACK seen: no Timeout"
    );
    assert!(l.is_empty());
}

#[test]
fn server_invite_timer_l_without_ack_times_out() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(TimerConfig::default());
    let invite = req("INVITE", "z9hG4bKs");
    let acts = l.on_request(invite.clone(), udp(), t0);
    let key = server_key_of(&acts);
    l.respond(&key, resp(&invite, 200), t0);
    let fired = run_until(&mut l, t0, 31_999);
    let times: Vec<u64> = fired.iter().map(|(t, _)| *t).collect();
    assert_eq!(
        times,
        vec![500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500],
        "2xx retransmission capped at T2"
    );
    let acts = l.on_timer(t0 + ms(32_000));
    let ev = events(&acts);
    assert!(matches!(ev[0], TuEvent::Timeout { key: k } if *k == key));
    assert!(matches!(ev[1], TuEvent::Terminated { .. }));
}

#[test]
fn server_invite_2xx_retransmitted_on_reliable_transport_too() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(TimerConfig::default());
    let invite = req("INVITE", "z9hG4bKs");
    let acts = l.on_request(invite.clone(), tcp(), t0);
    let key = server_key_of(&acts);
    l.respond(&key, resp(&invite, 200), t0);
    assert_eq!(sent(&l.on_timer(t0 + ms(500)))[0].status(), Some(200));
    l.on_request(ack_2xx("z9hG4bKack"), tcp(), t0 + ms(600));
    assert!(sent(&l.on_timer(t0 + ms(1_500))).is_empty());
}

#[test]
fn server_non_invite_retransmissions_and_timer_j() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(TimerConfig::default());
    let opt = req("OPTIONS", "z9hG4bKn");
    let acts = l.on_request(opt.clone(), udp(), t0);
    assert!(sent(&acts).is_empty(), "no automatic 100 for non-INVITE");
    let key = server_key_of(&acts);
    assert_eq!(l.state(&key), Some(TxState::Trying));
    // Retransmission in Trying: nothing to resend, nothing delivered.
    assert!(l.on_request(opt.clone(), udp(), t0 + ms(500)).is_empty());
    l.respond(&key, resp(&opt, 100), t0 + ms(600));
    assert_eq!(l.state(&key), Some(TxState::Proceeding));
    let acts = l.on_request(opt.clone(), udp(), t0 + ms(700));
    assert_eq!(sent(&acts)[0].status(), Some(100));
    l.respond(&key, resp(&opt, 200), t0 + ms(800));
    assert_eq!(l.state(&key), Some(TxState::Completed));
    let acts = l.on_request(opt, udp(), t0 + ms(900));
    assert_eq!(sent(&acts)[0].status(), Some(200));
    assert!(events(&acts).is_empty());
    // A late second final is ignored.
    assert!(l
        .respond(&key, resp(&req("OPTIONS", "z9hG4bKn"), 500), t0 + ms(950))
        .is_empty());
    assert_eq!(l.next_deadline(), Some(t0 + ms(32_800)), "Timer J = 64*T1");
    let acts = l.on_timer(t0 + ms(32_800));
    assert!(is_terminated(&acts) && !is_timeout(&acts));
    // Responding on a gone transaction is a no-op.
    assert!(l
        .respond(
            &key,
            resp(&req("OPTIONS", "z9hG4bKn"), 200),
            t0 + ms(33_000)
        )
        .is_empty());
}

#[test]
fn server_non_invite_reliable_timer_j_is_zero() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(TimerConfig::default());
    let opt = req("OPTIONS", "z9hG4bKn");
    let acts = l.on_request(opt.clone(), tcp(), t0);
    let key = server_key_of(&acts);
    let acts = l.respond(&key, resp(&opt, 200), t0);
    assert_eq!(sent(&acts)[0].status(), Some(200));
    assert!(is_terminated(&acts));
    assert!(l.is_empty());
}

#[test]
fn cancel_matches_invite_server_transaction() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(TimerConfig::default());
    let invite = req("INVITE", "z9hG4bKs");
    let acts = l.on_request(invite.clone(), udp(), t0);
    let ikey = server_key_of(&acts);
    let acts = l.on_request(req("CANCEL", "z9hG4bKs"), udp(), t0 + ms(100));
    let (ckey, matched) = match events(&acts)[0] {
        TuEvent::Cancel { key, invite, .. } => (key.clone(), invite.clone()),
        other => panic!("{other:?}"),
    };
    assert_eq!(matched, Some(ikey.clone()));
    assert_eq!(ckey.method(), &Method::Cancel);
    assert_ne!(ckey, ikey);
    assert_eq!(
        sent(&l.respond(&ckey, resp(&invite, 200), t0))[0].status(),
        Some(200)
    );
    assert_eq!(
        sent(&l.respond(&ikey, resp(&invite, 487), t0))[0].status(),
        Some(487)
    );
    // A CANCEL for an unknown branch names no INVITE.
    let acts = l.on_request(req("CANCEL", "z9hG4bKzz"), udp(), t0);
    assert!(matches!(
        events(&acts)[0],
        TuEvent::Cancel { invite: None, .. }
    ));
}

#[test]
fn cancel_waits_for_a_provisional() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(TimerConfig::default());
    let invite = req("INVITE", "z9hG4bKa");
    let (ikey, _) = l.request(invite.clone(), udp(), t0);
    let (ckey, acts) = l.cancel(&ikey, t0 + ms(10)).unwrap();
    assert!(acts.is_empty(), "no provisional yet: CANCEL deferred");
    assert!(l.cancel(&ikey, t0 + ms(20)).is_none(), "already cancelling");
    assert_eq!(l.state(&ckey), None);
    let acts = l.on_response(resp(&invite, 180), udp(), t0 + ms(100));
    assert_eq!(events(&acts).len(), 1);
    let s = sent(&acts);
    assert_eq!(s.len(), 1);
    let c = &s[0];
    assert_eq!(c.method(), Some(&Method::Cancel));
    assert_eq!(c.uri(), invite.uri());
    assert_eq!(c.branch().as_deref(), Some("z9hG4bKa"));
    assert_eq!(c.cseq(), Some((1, Method::Cancel)));
    assert_eq!(c.to_tag(), None);
    assert_eq!(c.headers.get_all("Route").count(), 2);
    assert_eq!(c.call_id(), invite.call_id());
    assert_eq!(l.state(&ckey), Some(TxState::Trying));
    // 200 for the CANCEL matches the CANCEL transaction, not the INVITE.
    let acts = l.on_response(resp(c, 200), udp(), t0 + ms(150));
    assert!(matches!(events(&acts)[0], TuEvent::Response { key, .. } if *key == ckey));
    // The 487 completes the INVITE and is ACKed.
    let acts = l.on_response(resp(&invite, 487), udp(), t0 + ms(200));
    assert_eq!(sent(&acts)[0].method(), Some(&Method::Ack));
    assert!(l.cancel(&ikey, t0 + ms(300)).is_none(), "final received");
}

#[test]
fn cancel_in_proceeding_goes_out_at_once_and_bounds_the_invite() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(TimerConfig::default());
    let invite = req("INVITE", "z9hG4bKa");
    let (ikey, _) = l.request(invite.clone(), tcp(), t0);
    l.on_response(resp(&invite, 183), tcp(), t0 + ms(100));
    let (_, acts) = l.cancel(&ikey, t0 + ms(1_000)).unwrap();
    assert_eq!(sent(&acts)[0].method(), Some(&Method::Cancel));
    // §9.1: no final 64*T1 after the CANCEL -> the INVITE is given up.
    let fired = run_until(&mut l, t0, 33_000);
    let invite_timeout = fired.iter().any(|(t, a)| {
        *t == 33_000
            && events(a)
                .iter()
                .any(|e| matches!(e, TuEvent::Timeout { key } if *key == ikey))
    });
    assert!(invite_timeout);
    assert!(l.is_empty());
}

#[test]
fn pending_cancel_dropped_when_final_arrives_first() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(TimerConfig::default());
    let invite = req("INVITE", "z9hG4bKa");
    let (ikey, _) = l.request(invite.clone(), udp(), t0);
    l.cancel(&ikey, t0).unwrap();
    let acts = l.on_response(resp(&invite, 200), udp(), t0 + ms(100));
    assert!(sent(&acts).is_empty());
    assert_eq!(l.len(), 1);
}

#[test]
fn full_table_answers_503_with_retry_after() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::with_limit(TimerConfig::default(), 1);
    let invite = req("INVITE", "z9hG4bKs");
    let acts = l.on_request(invite.clone(), udp(), t0);
    let key = server_key_of(&acts);
    let acts = l.on_request(req("OPTIONS", "z9hG4bKo"), udp(), t0);
    assert!(events(&acts).is_empty());
    let s = sent(&acts);
    assert_eq!(s[0].status(), Some(503));
    assert_eq!(s[0].headers.get("Retry-After"), Some("5"));
    assert_eq!(l.len(), 1);
    assert_eq!(l.stats().rejected_full, 1);
    // Retransmissions of the live one still work; ACK never gets a 503.
    assert_eq!(
        sent(&l.on_request(invite, udp(), t0))[0].status(),
        Some(100)
    );
    let acts = l.on_request(ack_2xx("z9hG4bKx"), udp(), t0);
    assert!(sent(&acts).is_empty());
    assert!(matches!(
        events(&acts)[0],
        TuEvent::Ack { invite: None, .. }
    ));
    // Once the transaction is gone there is room again.
    l.respond(&key, resp(&req("INVITE", "z9hG4bKs"), 486), t0);
    l.on_timer(t0 + ms(32_000));
    assert!(l.is_empty());
    let acts = l.on_request(req("OPTIONS", "z9hG4bKo"), udp(), t0 + ms(32_001));
    assert_eq!(events(&acts).len(), 1);
}

#[test]
fn rfc2543_requests_match_without_branch() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(TimerConfig::default());
    let text = "INVITE sip:bob@example.com SIP/2.0\r\n\
                Via: SIP/2.0/UDP 10.0.0.2\r\n\
                From: <sip:alice@example.com>;tag=ft\r\n\
                To: <sip:bob@example.com>\r\n\
                Call-ID: old-1\r\n\
                CSeq: 7 INVITE\r\n\r\n";
    let invite = parse(text.as_bytes()).unwrap();
    let acts = l.on_request(invite.clone(), udp(), t0);
    let key = server_key_of(&acts);
    assert!(events(&l.on_request(invite.clone(), udp(), t0)).is_empty());
    l.respond(&key, resp(&invite, 404), t0);
    let ack = text
        .replace("INVITE sip", "ACK sip")
        .replace("7 INVITE", "7 ACK");
    let mut ack = parse(ack.as_bytes()).unwrap();
    ack.set_to_tag("tt");
    assert!(l.on_request(ack, udp(), t0).is_empty(), "ACK absorbed");
    assert_eq!(l.state(&key), Some(TxState::Confirmed));
}

#[test]
fn proceeding_guard_bounds_unanswered_transactions() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(TimerConfig::default());
    l.set_proceeding_limit(Duration::from_secs(60));
    let invite = req("INVITE", "z9hG4bKs");
    let acts = l.on_request(invite, udp(), t0);
    let key = server_key_of(&acts);
    let acts = l.on_timer(t0 + Duration::from_secs(60));
    assert!(matches!(events(&acts)[0], TuEvent::Timeout { key: k } if *k == key));
    assert!(l.is_empty());
}

#[test]
fn heap_stays_bounded_under_load() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(TimerConfig::default());
    for i in 0..20_000 {
        let branch = format!("z9hG4bK{i}");
        let opt = req("OPTIONS", &branch);
        let acts = l.on_request(opt.clone(), tcp(), t0);
        let key = server_key_of(&acts);
        l.respond(&key, resp(&opt, 200), t0);
    }
    assert!(l.is_empty());
    assert!(l.timers.queue.len() <= 1024 + 1);
    assert_eq!(l.stats().created, 20_000);
    assert_eq!(l.stats().terminated, 20_000);
    assert_eq!(l.next_deadline(), None);
}

#[test]
fn branches_are_fresh_and_marked() {
    let (a, b) = (new_branch(), new_branch());
    assert!(a.starts_with(MAGIC_COOKIE) && a.len() == MAGIC_COOKIE.len() + 16);
    assert_ne!(a, b);
}

#[test]
fn request_without_branch_gets_one() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(TimerConfig::default());
    let mut m = req("OPTIONS", "x");
    m.headers.remove_first("Via");
    m.headers.push_front("Via", "SIP/2.0/UDP 10.0.0.1:5060");
    let (key, acts) = l.request(m, udp(), t0);
    assert!(key.branch().starts_with(MAGIC_COOKIE));
    assert_eq!(sent(&acts)[0].branch().as_deref(), Some(key.branch()));
}

#[test]
fn proceeding_guard_cancels_a_ringing_client_invite() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(TimerConfig::default());
    l.set_proceeding_limit(Duration::from_secs(120));
    let invite = req("INVITE", "z9hG4bKa");
    let (ikey, _) = l.request(invite.clone(), udp(), t0);
    l.on_response(resp(&invite, 180), udp(), t0 + ms(100));
    let acts = l.on_timer(t0 + ms(120_100));
    assert!(matches!(events(&acts)[0], TuEvent::Timeout { key } if *key == ikey));
    assert_eq!(sent(&acts)[0].method(), Some(&Method::Cancel));
    assert_eq!(l.len(), 2, "INVITE kept to ACK the 487, plus the CANCEL");
    let acts = l.on_response(resp(&invite, 487), udp(), t0 + ms(120_200));
    assert_eq!(sent(&acts)[0].method(), Some(&Method::Ack));
    // No second Timeout for the same INVITE later.
    let later = run_until(&mut l, t0, 300_000);
    let again = later
        .iter()
        .flat_map(|(_, a)| events(a))
        .filter(|e| matches!(e, TuEvent::Timeout { key } if *key == ikey))
        .count();
    assert_eq!(again, 0);
    assert!(l.is_empty());
}

#[test]
fn zero_t1_does_not_spin() {
    let t0 = Instant::now();
    let cfg = TimerConfig {
        t1: Duration::ZERO,
        t2: Duration::ZERO,
        t4: Duration::ZERO,
    };
    let mut l = TransactionLayer::new(cfg);
    l.request(req("OPTIONS", "z9hG4bKo"), udp(), t0);
    let acts = l.on_timer(t0);
    assert!(is_terminated(&acts));
}
