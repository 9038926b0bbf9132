//! SIP requests received by method and responses sent by method and code, as arrays of
//! atomics indexed by a method's position: counting is a match and one relaxed add, no
//! label lookup or allocation on the SIP core's thread.

use crate::sip::message::Method;
use std::sync::atomic::{AtomicU64, Ordering};

/// Method labels, in index order; methods the node does not know are "OTHER".
pub const METHODS: [&str; 15] = [
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "REGISTER",
    "OPTIONS",
    "INFO",
    "UPDATE",
    "PRACK",
    "SUBSCRIBE",
    "NOTIFY",
    "REFER",
    "MESSAGE",
    "PUBLISH",
    "OTHER",
];

/// Status codes 100..=699 each have a slot.
const CODES: usize = 600;

/// The position of a method's counters.
pub fn method_index(m: &Method) -> usize {
    match m {
        Method::Invite => 0,
        Method::Ack => 1,
        Method::Bye => 2,
        Method::Cancel => 3,
        Method::Register => 4,
        Method::Options => 5,
        Method::Info => 6,
        Method::Update => 7,
        Method::Prack => 8,
        Method::Subscribe => 9,
        Method::Notify => 10,
        Method::Refer => 11,
        Method::Message => 12,
        Method::Publish => 13,
        Method::Other(_) => 14,
    }
}

/// Per-method request and per-method-and-code response counters.
#[derive(Debug)]
pub struct SipCounters {
    requests: [AtomicU64; METHODS.len()],
    /// `METHODS.len() * CODES` slots, method-major.
    responses: Box<[AtomicU64]>,
}

impl Default for SipCounters {
    fn default() -> Self {
        SipCounters {
            requests: Default::default(),
            responses: (0..METHODS.len() * CODES)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }
}

impl SipCounters {
    /// A request arrived.
    pub fn request(&self, m: &Method) {
        self.requests[method_index(m)].fetch_add(1, Ordering::Relaxed);
    }

    /// A response to a `m` request was sent (codes outside 100..=699 are not counted:
    /// the parser refuses them, so only a bug could produce one).
    pub fn response(&self, m: &Method, code: u16) {
        self.response_at(method_index(m), code);
    }

    /// [`SipCounters::response`] for a method already turned into its index.
    pub fn response_at(&self, method: usize, code: u16) {
        let Some(c) = usize::from(code).checked_sub(100).filter(|c| *c < CODES) else {
            return;
        };
        if let Some(slot) = self.responses.get(method * CODES + c) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (method, count) for every method, zeros included (so rates start from 0).
    pub fn requests(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        METHODS
            .iter()
            .zip(self.requests.iter())
            .map(|(m, c)| (*m, c.load(Ordering::Relaxed)))
    }

    /// (method, code, count) for every pair seen at least once.
    pub fn responses(&self) -> impl Iterator<Item = (&'static str, u16, u64)> + '_ {
        self.responses.iter().enumerate().filter_map(|(i, c)| {
            let n = c.load(Ordering::Relaxed);
            let code = u16::try_from(i % CODES + 100).ok()?;
            (n > 0).then(|| (METHODS[i / CODES], code, n))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_method_and_code() {
        let s = SipCounters::default();
        s.request(&Method::Register);
        s.request(&Method::Other("FOO".into()));
        s.response(&Method::Register, 401);
        s.response(&Method::Register, 401);
        s.response(&Method::Invite, 699);
        s.response(&Method::Invite, 99); // ignored
        s.response(&Method::Invite, 700); // ignored
        let req: Vec<_> = s.requests().filter(|(_, n)| *n > 0).collect();
        assert_eq!(req, vec![("REGISTER", 1), ("OTHER", 1)]);
        assert_eq!(s.requests().count(), METHODS.len());
        let resp: Vec<_> = s.responses().collect();
        assert_eq!(resp, vec![("INVITE", 699, 1), ("REGISTER", 401, 2)]);
    }
}
