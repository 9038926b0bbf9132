//! Switchover notifications against real servers: a hyper HTTP server for the webhook
//! and Python's `smtpd` for the e-mail.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use node::metrics::Metrics;
use node::notify::{Notifier, NotifySection, Switchover, SwitchoverKind, MAX_IN_FLIGHT};
use std::io::BufRead;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Longest any single wait in these tests may take.
const WAIT: Duration = Duration::from_secs(15);

/// One request as the webhook server saw it.
#[derive(Debug)]
struct Seen {
    method: String,
    target: String,
    content_type: String,
    body: serde_json::Value,
}

/// An HTTP server answering every request with `status`; reports each request.
async fn webhook_server(status: StatusCode) -> (u16, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let method = req.method().to_string();
                            let target = req.uri().to_string();
                            let content_type = req
                                .headers()
                                .get(hyper::header::CONTENT_TYPE)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string();
                            let body = req.into_body().collect().await?.to_bytes();
                            let body = serde_json::from_slice(&body).unwrap_or_else(|_| {
                                serde_json::Value::String(String::from_utf8_lossy(&body).into())
                            });
                            let _ = tx.send(Seen {
                                method,
                                target,
                                content_type,
                                body,
                            });
                            Ok::<_, hyper::Error>(
                                Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (port, rx)
}

/// A listener that accepts connections, counts them and never answers.
async fn black_hole() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    (port, accepted)
}

/// A port nothing listens on.
async fn refused_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// Kills the child process however the test ends.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Python's SMTP server; prints each message it accepts as one JSON line.
const SMTP_SINK: &str = r#"
import asyncore, json, smtpd
class Sink(smtpd.SMTPServer):
    def process_message(self, peer, mailfrom, rcpttos, data, **kw):
        if isinstance(data, bytes):
            data = data.decode("utf-8", "replace")
        print(json.dumps({"from": mailfrom, "rcpt": rcpttos, "data": data}), flush=True)
s = Sink(("127.0.0.1", 0), None, decode_data=False)
print("PORT", s.socket.getsockname()[1], flush=True)
asyncore.loop()
"#;

/// Starts the SMTP server; returns it, its port and its accepted messages.
async fn smtp_server() -> (Reaped, u16, mpsc::UnboundedReceiver<serde_json::Value>) {
    let mut child = std::process::Command::new("python3")
        .args(["-W", "ignore", "-c", SMTP_SINK])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("python3 (3.11 or older, with the smtpd module) is needed for this test");
    let stdout = child.stdout.take().unwrap();
    let child = Reaped(child);
    let (port_tx, port_rx) = tokio::sync::oneshot::channel();
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let _ = port_tx.send(first);
        for line in lines.map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let first = tokio::time::timeout(WAIT, port_rx)
        .await
        .expect("smtpd did not start")
        .unwrap();
    let port = first
        .strip_prefix("PORT ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("smtpd said {first:?}, not its port"));
    (child, port, rx)
}

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>, what: &str) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"))
        .unwrap_or_else(|| panic!("{what} channel closed"))
}

/// Waits until `cond` holds, at most [`WAIT`].
async fn until(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < WAIT, "still not {what} after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_reaches_the_webhook_and_the_mailboxes() {
    let (web_port, mut hooks) = webhook_server(StatusCode::NO_CONTENT).await;
    let (_smtpd, smtp_port, mut mails) = smtp_server().await;
    let cfg = NotifySection {
        webhook: Some(format!("http://127.0.0.1:{web_port}/hooks/vip?src=test")),
        smtp_server: Some(format!("127.0.0.1:{smtp_port}")),
        email_from: Some("Softswitch <softswitch@example.com>".into()),
        email_to: vec!["oncall@example.com".into(), "NOC <noc@example.org>".into()],
        call: Some("1001".into()),
        ..NotifySection::default()
    };
    cfg.validate().unwrap();
    let metrics = Arc::new(Metrics::default());
    let notifier = Notifier::try_new(&cfg, Arc::clone(&metrics)).unwrap();
    assert_eq!(notifier.call_target(), Some("1001"));

    notifier.announce(Switchover::now(
        2,
        "10.0.0.100",
        SwitchoverKind::Acquired,
        "elected leader",
        7,
    ));

    let hook = next(&mut hooks, "webhook request").await;
    assert_eq!(hook.method, "POST");
    assert_eq!(hook.target, "/hooks/vip?src=test");
    assert_eq!(hook.content_type, "application/json");
    assert_eq!(hook.body["node"], 2, "{:?}", hook.body);
    assert_eq!(hook.body["vip"], "10.0.0.100");
    assert_eq!(hook.body["event"], "acquired");
    assert_eq!(hook.body["reason"], "elected leader");
    assert_eq!(hook.body["term"], 7);
    assert!(hook.body["at"].as_str().is_some_and(|t| t.ends_with('Z')));

    let mail = next(&mut mails, "e-mail").await;
    assert_eq!(mail["from"], "softswitch@example.com");
    let mut rcpt: Vec<&str> = mail["rcpt"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    rcpt.sort_unstable();
    assert_eq!(rcpt, ["noc@example.org", "oncall@example.com"]);
    let data = mail["data"].as_str().unwrap();
    // smtpd hands the data over with its line ends as `\n`.
    assert!(
        data.lines()
            .any(|l| l == "Subject: softswitch: node 2 acquired VIP 10.0.0.100"),
        "{data}"
    );
    let to = data
        .lines()
        .find(|l| l.starts_with("To: "))
        .unwrap_or_else(|| panic!("no To: in {data}"));
    assert!(
        to.contains("oncall@example.com") && to.contains("noc@example.org"),
        "{to}"
    );
    assert!(data.contains("Reason: elected leader"), "{data}");

    until("both counted as sent", || {
        count(&metrics.notifications_sent) == 2
    })
    .await;
    assert!(notifier.wait_idle(WAIT).await);
    assert_eq!(count(&metrics.notifications_failed), 0);
    assert_eq!(count(&metrics.notifications_dropped), 0);
    let snapshot = metrics.snapshot();
    assert!(
        snapshot.contains(&("notifications_sent", 2)),
        "{snapshot:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_channels_are_retried_then_counted_without_blocking() {
    let (error_port, mut hooks) = webhook_server(StatusCode::INTERNAL_SERVER_ERROR).await;
    let (silent_port, accepted) = black_hole().await;
    let refused = refused_port().await;
    let metrics = Arc::new(Metrics::default());
    let notifier = |cfg: NotifySection| {
        cfg.validate().unwrap();
        Notifier::try_new(&cfg, Arc::clone(&metrics)).unwrap()
    };
    // A webhook answering 500, one that never answers, and nothing listening at all
    // (both for the webhook and the SMTP relay).
    let erroring = notifier(NotifySection {
        webhook: Some(format!("http://127.0.0.1:{error_port}/")),
        ..NotifySection::default()
    });
    let silent = notifier(NotifySection {
        webhook: Some(format!("http://127.0.0.1:{silent_port}/")),
        webhook_timeout_ms: 100,
        ..NotifySection::default()
    });
    let unreachable = notifier(NotifySection {
        webhook: Some(format!("http://127.0.0.1:{refused}/")),
        smtp_server: Some(format!("127.0.0.1:{refused}")),
        smtp_timeout_ms: 500,
        email_from: Some("softswitch@example.com".into()),
        email_to: vec!["oncall@example.com".into()],
        ..NotifySection::default()
    });

    let start = Instant::now();
    for n in [&erroring, &silent, &unreachable] {
        n.announce(Switchover::now(
            3,
            "10.0.0.100",
            SwitchoverKind::Released,
            "lost leadership",
            8,
        ));
    }
    // Announcing returned before any channel could have given up (that takes the
    // 200 ms + 1 s of backoff at least).
    assert_eq!(count(&metrics.notifications_failed), 0);
    assert_eq!(count(&metrics.notifications_sent), 0);

    until("all four counted as failed", || {
        count(&metrics.notifications_failed) == 4
    })
    .await;
    assert!(start.elapsed() >= Duration::from_millis(1200), "no backoff");
    for n in [&erroring, &silent, &unreachable] {
        assert!(n.wait_idle(WAIT).await);
    }
    assert_eq!(count(&metrics.notifications_failed), 4);
    assert_eq!(count(&metrics.notifications_sent), 0);
    assert_eq!(count(&metrics.notifications_dropped), 0);
    // Three tries each, no more.
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    for _ in 0..3 {
        let hook = next(&mut hooks, "retried webhook request").await;
        assert_eq!(hook.body["event"], "released");
    }
    assert!(hooks.try_recv().is_err(), "more than three tries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_beyond_the_limit_are_dropped() {
    let (silent_port, _accepted) = black_hole().await;
    let metrics = Arc::new(Metrics::default());
    let cfg = NotifySection {
        webhook: Some(format!("http://127.0.0.1:{silent_port}/")),
        webhook_timeout_ms: 5000,
        ..NotifySection::default()
    };
    let notifier = Notifier::try_new(&cfg, Arc::clone(&metrics)).unwrap();
    for term in 0..(MAX_IN_FLIGHT as u64 + 4) {
        notifier.announce(Switchover::now(
            1,
            "10.0.0.100",
            SwitchoverKind::Acquired,
            "flap",
            term,
        ));
    }
    assert_eq!(count(&metrics.notifications_dropped), 4);
    assert!(!notifier.wait_idle(Duration::from_millis(50)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_starttls_is_not_downgraded() {
    // smtpd offers no STARTTLS: the mail must not go out in the clear.
    let (_smtpd, smtp_port, mut mails) = smtp_server().await;
    let metrics = Arc::new(Metrics::default());
    let cfg = NotifySection {
        smtp_server: Some(format!("127.0.0.1:{smtp_port}")),
        smtp_starttls: true,
        email_from: Some("softswitch@example.com".into()),
        email_to: vec!["oncall@example.com".into()],
        ..NotifySection::default()
    };
    cfg.validate().unwrap();
    let notifier = Notifier::try_new(&cfg, Arc::clone(&metrics)).unwrap();
    notifier.announce(Switchover::now(
        1,
        "10.0.0.100",
        SwitchoverKind::Acquired,
        "elected leader",
        2,
    ));
    until("counted as failed", || {
        count(&metrics.notifications_failed) == 1
    })
    .await;
    assert_eq!(count(&metrics.notifications_sent), 0);
    assert!(mails.try_recv().is_err(), "mail sent without TLS");
}
