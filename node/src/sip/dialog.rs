//! SIP dialogs (RFC 3261 §12): state from the dialog-creating exchange, construction of
//! in-dialog requests (loose and strict routing), CSeq ordering and target refresh.
//!
//! Pure data: the dialog never sends anything; the caller passes requests it builds here to
//! the transaction layer.

use rand::Rng;

use super::message::{parse_uri, Method, NameAddr, SipMessage};

/// Dialog state (RFC 3261 §12.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DialogState {
    /// Created by a provisional response with a To tag.
    Early,
    /// Created or confirmed by a 2xx.
    Confirmed,
}

/// Dialog identifier (RFC 3261 §12): Call-ID and the two tags, from our point of view.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DialogId {
    /// Call-ID.
    pub call_id: String,
    /// Our tag.
    pub local_tag: String,
    /// The peer's tag.
    pub remote_tag: String,
}

/// Why an in-dialog request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialogError {
    /// CSeq not above the last one seen (RFC 3261 §12.2.2): answer 500.
    #[error("CSeq lower than or equal to the last one received")]
    CSeqOutOfOrder,
    /// The request has no usable CSeq: answer 400.
    #[error("missing or bad CSeq")]
    BadCSeq,
}

/// Dialog state of one UA side (RFC 3261 §12.1.1, §12.1.2).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Dialog {
    /// Call-ID.
    pub call_id: String,
    /// Our tag.
    pub local_tag: String,
    /// The peer's tag (empty for an RFC 2543 peer that sent none).
    pub remote_tag: String,
    /// Our From value for requests we send, as a name-addr without tag.
    pub local_uri: String,
    /// The peer's name-addr without tag (our To value).
    pub remote_uri: String,
    /// CSeq of the last request we sent in this dialog.
    pub local_seq: u32,
    /// Highest CSeq received from the peer, once one has been.
    pub remote_seq: Option<u32>,
    /// Where requests go (the peer's Contact URI).
    pub remote_target: String,
    /// Route set, in the order our requests carry it.
    pub route_set: Vec<String>,
    /// Early or confirmed.
    pub state: DialogState,
    /// Our Contact URI (or name-addr) for requests we send.
    pub local_contact: String,
}

/// A header value with its `tag` parameter removed, as a name-addr.
fn without_tag(value: &str) -> Option<String> {
    let mut na = NameAddr::parse(value)?;
    na.params.retain(|(k, _)| !k.eq_ignore_ascii_case("tag"));
    Some(na.to_header())
}

/// A name-addr value with a `tag` parameter added (none when `tag` is empty).
fn with_tag(value: &str, tag: &str) -> String {
    match NameAddr::parse(value) {
        Some(mut na) if !tag.is_empty() => {
            na.params.push(("tag".into(), Some(tag.to_string())));
            na.to_header()
        }
        _ => value.to_string(),
    }
}

/// First Contact URI of a message.
fn contact_uri(msg: &SipMessage) -> Option<String> {
    msg.contacts()
        .into_iter()
        .next()
        .map(|c| c.uri)
        .filter(|u| u != "*")
}

/// True when a route entry is a loose router (`;lr` in its URI).
fn is_loose(route: &str) -> bool {
    let Some(na) = NameAddr::parse(route) else {
        return false;
    };
    match parse_uri(&na.uri) {
        Some(u) => u.param("lr").is_some(),
        // Not a SIP URI rsip can read: look for the parameter textually.
        None => na
            .uri
            .split(';')
            .skip(1)
            .any(|p| p.trim().eq_ignore_ascii_case("lr") || p.starts_with("lr=")),
    }
}

/// Parameters RFC 3261 Table 1 forbids in a Request-URI, stripped for strict routing.
fn strip_forbidden_params(uri: &str) -> String {
    let (base, _) = uri.split_once('?').unwrap_or((uri, ""));
    let mut parts = base.split(';');
    let mut out = parts.next().unwrap_or_default().to_string();
    for p in parts {
        let name = p.split('=').next().unwrap_or_default().trim();
        if !(name.eq_ignore_ascii_case("method") || name.eq_ignore_ascii_case("ttl")) {
            out.push(';');
            out.push_str(p);
        }
    }
    out
}

impl Dialog {
    /// Dialog of the UAS side from the request and the 101-299 response we send with our
    /// To tag (RFC 3261 §12.1.1). Route set = Record-Route of the request, in order.
    /// None if the response is not dialog-creating or lacks a To tag.
    pub fn uas(request: &SipMessage, response: &SipMessage, local_contact: &str) -> Option<Dialog> {
        let code = response.status()?;
        if !(101..300).contains(&code) {
            return None;
        }
        let (cseq, _) = request.cseq()?;
        Some(Dialog {
            call_id: request.call_id()?.to_string(),
            local_tag: response.to_tag()?,
            remote_tag: request.from_tag().unwrap_or_default(),
            local_uri: without_tag(request.headers.get("To")?)?,
            remote_uri: without_tag(request.headers.get("From")?)?,
            // §12.1.1 leaves our sequence empty; our first request will use 1.
            local_seq: 0,
            remote_seq: Some(cseq),
            // A request without Contact cannot be reached directly; fall back to From.
            remote_target: contact_uri(request).or_else(|| Some(request.from_addr()?.uri))?,
            route_set: request
                .headers
                .get_all("Record-Route")
                .map(str::to_string)
                .collect(),
            state: if code < 200 {
                DialogState::Early
            } else {
                DialogState::Confirmed
            },
            local_contact: local_contact.to_string(),
        })
    }

    /// Dialog of the UAC side from our request and a 1xx with To tag or 2xx we received
    /// (RFC 3261 §12.1.2). Route set = Record-Route of the response, reversed.
    pub fn uac(request: &SipMessage, response: &SipMessage, local_contact: &str) -> Option<Dialog> {
        let code = response.status()?;
        if !(101..300).contains(&code) {
            return None;
        }
        let (cseq, _) = request.cseq()?;
        Some(Dialog {
            call_id: request.call_id()?.to_string(),
            local_tag: request.from_tag()?,
            remote_tag: response.to_tag()?,
            local_uri: without_tag(request.headers.get("From")?)?,
            remote_uri: without_tag(request.headers.get("To")?)?,
            local_seq: cseq,
            remote_seq: None,
            // No Contact in the response: keep sending where the request went.
            remote_target: contact_uri(response).or_else(|| request.uri().map(str::to_string))?,
            route_set: reversed_record_route(response),
            state: if code < 200 {
                DialogState::Early
            } else {
                DialogState::Confirmed
            },
            local_contact: local_contact.to_string(),
        })
    }

    /// The dialog identifier.
    pub fn id(&self) -> DialogId {
        DialogId {
            call_id: self.call_id.clone(),
            local_tag: self.local_tag.clone(),
            remote_tag: self.remote_tag.clone(),
        }
    }

    /// A new in-dialog request (RFC 3261 §12.2.1.1). CSeq is incremented except for ACK
    /// and CANCEL, which reuse the current one. `via` is the full Via value to put on top
    /// (with a fresh branch).
    pub fn request(&mut self, method: Method, via: &str) -> SipMessage {
        if !matches!(method, Method::Ack | Method::Cancel) {
            self.local_seq = self.local_seq.wrapping_add(1);
        }
        self.build(method, self.local_seq, via)
    }

    /// The ACK for a 2xx to the INVITE with CSeq `invite_cseq` (RFC 3261 §13.2.2.4).
    pub fn ack_for(&self, invite_cseq: u32, via: &str) -> SipMessage {
        self.build(Method::Ack, invite_cseq, via)
    }

    fn build(&self, method: Method, cseq: u32, via: &str) -> SipMessage {
        let (uri, routes) = self.routing();
        let mut m = SipMessage::request(method.clone(), uri);
        m.headers.push("Via", via);
        m.headers.push("Max-Forwards", "70");
        for r in routes {
            m.headers.push("Route", r);
        }
        m.headers
            .push("From", with_tag(&self.local_uri, &self.local_tag));
        m.headers
            .push("To", with_tag(&self.remote_uri, &self.remote_tag));
        m.headers.push("Call-ID", self.call_id.as_str());
        m.headers.push("CSeq", format!("{cseq} {method}"));
        // RFC 3261 Table 3: Contact is not applicable to BYE and CANCEL.
        if !matches!(method, Method::Bye | Method::Cancel) && !self.local_contact.is_empty() {
            let contact = if self.local_contact.contains('<') {
                self.local_contact.clone()
            } else {
                format!("<{}>", self.local_contact)
            };
            m.headers.push("Contact", contact);
        }
        m
    }

    /// Request-URI and Route values per §12.2.1.1.
    fn routing(&self) -> (String, Vec<String>) {
        let Some(first) = self.route_set.first() else {
            return (self.remote_target.clone(), Vec::new());
        };
        if is_loose(first) {
            return (self.remote_target.clone(), self.route_set.clone());
        }
        // Strict router: it gets the Request-URI; the remote target goes last in Route.
        let first_uri = NameAddr::parse(first)
            .map(|na| na.uri)
            .unwrap_or_else(|| first.trim_matches(|c| c == '<' || c == '>').to_string());
        let mut routes: Vec<String> = self.route_set[1..].to_vec();
        routes.push(format!("<{}>", self.remote_target));
        (strip_forbidden_params(&first_uri), routes)
    }

    /// Checks and records a request from the peer (RFC 3261 §12.2.2): the CSeq must grow
    /// (ACK and CANCEL reuse their INVITE's and are not checked); INVITE and UPDATE
    /// refresh the remote target from Contact.
    pub fn on_request(&mut self, req: &SipMessage) -> Result<(), DialogError> {
        let (cseq, method) = req.cseq().ok_or(DialogError::BadCSeq)?;
        if matches!(method, Method::Ack | Method::Cancel) {
            return Ok(());
        }
        if let Some(last) = self.remote_seq {
            if cseq <= last {
                return Err(DialogError::CSeqOutOfOrder);
            }
        }
        self.remote_seq = Some(cseq);
        if matches!(method, Method::Invite | Method::Update) {
            if let Some(target) = contact_uri(req) {
                self.remote_target = target;
            }
        }
        Ok(())
    }

    /// Records a response to a request we sent in this dialog: a 2xx to INVITE confirms an
    /// early dialog (recomputing the route set from the 2xx, §13.2.2.4), and a 2xx to
    /// INVITE or UPDATE refreshes the remote target (§12.2.1.2).
    pub fn on_response(&mut self, req_method: &Method, resp: &SipMessage) {
        let Some(code) = resp.status() else {
            return;
        };
        if !(200..300).contains(&code) || !matches!(req_method, Method::Invite | Method::Update) {
            return;
        }
        if *req_method == Method::Invite && self.state == DialogState::Early {
            // Only a UAC receives the 2xx that confirms an early dialog.
            self.state = DialogState::Confirmed;
            self.route_set = reversed_record_route(resp);
        }
        if let Some(target) = contact_uri(resp) {
            self.remote_target = target;
        }
    }
}

fn reversed_record_route(resp: &SipMessage) -> Vec<String> {
    let mut rr: Vec<String> = resp
        .headers
        .get_all("Record-Route")
        .map(str::to_string)
        .collect();
    rr.reverse();
    rr
}

/// A fresh From/To tag: 10 random alphanumerics.
pub fn new_tag() -> String {
    let mut rng = rand::thread_rng();
    (0..10)
        .map(|_| char::from(rng.sample(rand::distributions::Alphanumeric)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::parse;

    const INVITE: &str = "INVITE sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKinv\r\n\
Max-Forwards: 70\r\n\
Record-Route: <sip:p1.example.com;lr>\r\n\
Record-Route: <sip:p2.example.com;lr>\r\n\
From: \"Alice\" <sip:alice@example.com>;tag=atag\r\n\
To: <sip:bob@example.com>\r\n\
Call-ID: dlg-1\r\n\
CSeq: 10 INVITE\r\n\
Contact: <sip:alice@10.0.0.1:5060>\r\n\r\n";

    fn invite() -> SipMessage {
        parse(INVITE.as_bytes()).unwrap()
    }

    /// Response as Bob's UA sends it: To tag, Contact, Record-Route copied for 1xx/2xx.
    fn answer(code: u16) -> SipMessage {
        let mut r = invite().response(code, "OK");
        r.set_to_tag("btag");
        r.headers.push("Contact", "<sip:bob@10.0.0.2:5070>");
        r
    }

    #[test]
    fn uas_dialog_keeps_record_route_order() {
        let d = Dialog::uas(&invite(), &answer(200), "sip:bob@10.0.0.2:5070").unwrap();
        assert_eq!(d.id().call_id, "dlg-1");
        assert_eq!(
            (d.local_tag.as_str(), d.remote_tag.as_str()),
            ("btag", "atag")
        );
        assert_eq!(d.remote_target, "sip:alice@10.0.0.1:5060");
        assert_eq!(d.remote_seq, Some(10));
        assert_eq!(
            d.route_set,
            vec!["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
        );
        assert_eq!(d.remote_uri, "\"Alice\" <sip:alice@example.com>");
        assert_eq!(d.local_uri, "<sip:bob@example.com>");
        assert_eq!(d.state, DialogState::Confirmed);
        // A 1xx gives an early dialog; a 100 or a 4xx gives none.
        let early = Dialog::uas(&invite(), &answer(180), "sip:b@h").unwrap();
        assert_eq!(early.state, DialogState::Early);
        assert!(Dialog::uas(&invite(), &answer(486), "sip:b@h").is_none());
        assert!(Dialog::uas(&invite(), &invite().response(180, "R"), "sip:b@h").is_none());
    }

    #[test]
    fn uac_dialog_reverses_record_route_and_sends_bye() {
        let mut d = Dialog::uac(&invite(), &answer(200), "sip:alice@10.0.0.1:5060").unwrap();
        assert_eq!(
            (d.local_tag.as_str(), d.remote_tag.as_str()),
            ("atag", "btag")
        );
        assert_eq!(d.remote_target, "sip:bob@10.0.0.2:5070");
        assert_eq!(
            d.route_set,
            vec!["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]
        );
        assert_eq!(d.local_seq, 10);
        assert_eq!(d.remote_seq, None);
        let bye = d.request(Method::Bye, "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKbye");
        // Loose routing: Request-URI is the remote target, Route is the route set.
        assert_eq!(bye.uri(), Some("sip:bob@10.0.0.2:5070"));
        let routes: Vec<&str> = bye.headers.get_all("Route").collect();
        assert_eq!(
            routes,
            vec!["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]
        );
        assert_eq!(bye.cseq(), Some((11, Method::Bye)));
        assert_eq!(bye.from_tag().as_deref(), Some("atag"));
        assert_eq!(bye.to_tag().as_deref(), Some("btag"));
        assert_eq!(bye.from_addr().unwrap().display.as_deref(), Some("Alice"));
        assert_eq!(bye.headers.get("Max-Forwards"), Some("70"));
        assert!(bye.headers.get("Contact").is_none());
        assert_eq!(bye.branch().as_deref(), Some("z9hG4bKbye"));
        // The message is well formed for our own parser.
        let again = parse(&bye.to_bytes()).unwrap();
        assert_eq!(again.cseq(), bye.cseq());
        assert_eq!(again.headers.get_all("Route").count(), 2);
    }

    #[test]
    fn strict_router_gets_the_request_uri() {
        let mut d = Dialog::uac(&invite(), &answer(200), "sip:alice@10.0.0.1").unwrap();
        d.route_set = vec![
            "<sip:strict.example.com;maddr=10.9.9.9;method=INVITE>".into(),
            "<sip:p2.example.com;lr>".into(),
        ];
        let re = d.request(Method::Invite, "SIP/2.0/UDP h;branch=z9hG4bKre");
        assert_eq!(re.uri(), Some("sip:strict.example.com;maddr=10.9.9.9"));
        let routes: Vec<&str> = re.headers.get_all("Route").collect();
        assert_eq!(
            routes,
            vec!["<sip:p2.example.com;lr>", "<sip:bob@10.0.0.2:5070>"]
        );
        assert_eq!(re.headers.get("Contact"), Some("<sip:alice@10.0.0.1>"));
        // No route set: straight to the target.
        d.route_set.clear();
        let info = d.request(Method::Info, "SIP/2.0/UDP h;branch=z9hG4bKi");
        assert_eq!(info.uri(), Some("sip:bob@10.0.0.2:5070"));
        assert!(info.headers.get("Route").is_none());
    }

    #[test]
    fn cseq_increments_and_ack_cancel_reuse() {
        let mut d = Dialog::uac(&invite(), &answer(200), "sip:a@h").unwrap();
        let ack = d.ack_for(10, "SIP/2.0/UDP h;branch=z9hG4bKa");
        assert_eq!(ack.cseq(), Some((10, Method::Ack)));
        assert_eq!(ack.uri(), Some("sip:bob@10.0.0.2:5070"));
        assert_eq!(
            d.request(Method::Invite, "v").cseq(),
            Some((11, Method::Invite))
        );
        assert_eq!(d.request(Method::Ack, "v").cseq(), Some((11, Method::Ack)));
        assert_eq!(
            d.request(Method::Cancel, "v").cseq(),
            Some((11, Method::Cancel))
        );
        assert_eq!(d.request(Method::Bye, "v").cseq(), Some((12, Method::Bye)));
        // A UAS starts its own sequence at 1.
        let mut s = Dialog::uas(&invite(), &answer(200), "sip:b@h").unwrap();
        assert_eq!(s.request(Method::Bye, "v").cseq(), Some((1, Method::Bye)));
    }

    fn in_dialog(method: &str, cseq: u32, contact: Option<&str>) -> SipMessage {
        let mut s = format!(
            "{method} sip:bob@10.0.0.2:5070 SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK{cseq}\r\n\
From: <sip:alice@example.com>;tag=atag\r\n\
To: <sip:bob@example.com>;tag=btag\r\n\
Call-ID: dlg-1\r\n\
CSeq: {cseq} {method}\r\n"
        );
        if let Some(c) = contact {
            s.push_str(&format!("Contact: <{c}>\r\n"));
        }
        s.push_str("\r\n");
        parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn remote_cseq_must_increase() {
        let mut d = Dialog::uas(&invite(), &answer(200), "sip:b@h").unwrap();
        assert_eq!(
            d.on_request(&in_dialog("INFO", 10, None)),
            Err(DialogError::CSeqOutOfOrder)
        );
        assert_eq!(d.on_request(&in_dialog("ACK", 10, None)), Ok(()));
        assert_eq!(d.on_request(&in_dialog("INFO", 11, None)), Ok(()));
        assert_eq!(d.remote_seq, Some(11));
        assert!(d.on_request(&in_dialog("BYE", 5, None)).is_err());
        // A UAC dialog accepts whatever the peer starts with.
        let mut c = Dialog::uac(&invite(), &answer(200), "sip:a@h").unwrap();
        assert_eq!(c.on_request(&in_dialog("BYE", 1, None)), Ok(()));
        assert_eq!(c.remote_seq, Some(1));
    }

    #[test]
    fn target_refresh_on_invite_and_update_only() {
        let mut d = Dialog::uas(&invite(), &answer(200), "sip:b@h").unwrap();
        d.on_request(&in_dialog("INFO", 11, Some("sip:alice@10.0.0.99")))
            .unwrap();
        assert_eq!(d.remote_target, "sip:alice@10.0.0.1:5060");
        d.on_request(&in_dialog("INVITE", 12, Some("sip:alice@10.0.0.99")))
            .unwrap();
        assert_eq!(d.remote_target, "sip:alice@10.0.0.99");
        d.on_request(&in_dialog("UPDATE", 13, Some("sip:alice@10.0.0.77")))
            .unwrap();
        assert_eq!(d.remote_target, "sip:alice@10.0.0.77");
        // A 2xx to our re-INVITE refreshes it too; a 2xx to BYE does not.
        let mut ok = in_dialog("INVITE", 1, Some("sip:alice@10.0.0.55")).response(200, "OK");
        ok.headers.push("Contact", "<sip:alice@10.0.0.55>");
        d.on_response(&Method::Bye, &ok);
        assert_eq!(d.remote_target, "sip:alice@10.0.0.77");
        d.on_response(&Method::Invite, &ok);
        assert_eq!(d.remote_target, "sip:alice@10.0.0.55");
    }

    #[test]
    fn early_dialog_confirmed_by_2xx() {
        let mut r180 = answer(180);
        r180.headers.set("Contact", "<sip:bob@10.0.0.2:5071>");
        let mut d = Dialog::uac(&invite(), &r180, "sip:a@h").unwrap();
        assert_eq!(d.state, DialogState::Early);
        assert_eq!(d.remote_target, "sip:bob@10.0.0.2:5071");
        d.on_response(&Method::Invite, &answer(183));
        assert_eq!(d.state, DialogState::Early);
        // The 2xx fixes the route set (here: one proxy dropped out) and the target.
        let mut ok = answer(200);
        ok.headers.remove("Record-Route");
        ok.headers.push("Record-Route", "<sip:p1.example.com;lr>");
        d.on_response(&Method::Invite, &ok);
        assert_eq!(d.state, DialogState::Confirmed);
        assert_eq!(d.route_set, vec!["<sip:p1.example.com;lr>"]);
        assert_eq!(d.remote_target, "sip:bob@10.0.0.2:5070");
        assert_eq!(d.id().remote_tag, "btag");
    }

    #[test]
    fn tags_are_fresh() {
        let (a, b) = (new_tag(), new_tag());
        assert_eq!(a.len(), 10);
        assert_ne!(a, b);
    }
}
