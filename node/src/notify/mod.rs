//! Switchover notifications: whenever this node acquires or releases the virtual IP,
//! [`Notifier::announce`] tells the operators through the configured channels (a
//! webhook, an e-mail). The phone call to `notify.call` is placed by the SIP core;
//! this module only carries its configuration ([`Notifier::call_target`]).
//!
//! Announcing never blocks the caller (the cluster's VIP logic must not wait on a
//! mail server): each announcement is a tokio task, each channel has a timeout and
//! [`ATTEMPTS`] tries, and at most [`MAX_IN_FLIGHT`] announcements run at once; more
//! are dropped and counted, because a flapping VIP must not pile up tasks.

mod config;
mod email;
mod event;
mod webhook;

pub use config::{parse_smtp_server, NotifySection, DEFAULT_SMTP_PORT};
pub use email::Email;
pub use event::{Switchover, SwitchoverKind};
pub use webhook::Webhook;

use crate::metrics::Metrics;
use bytes::Bytes;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Most announcements being delivered at once; further ones are dropped.
pub const MAX_IN_FLIGHT: usize = 16;
/// Tries per channel and announcement.
pub const ATTEMPTS: usize = 3;
/// Pause before the second and the third try.
pub const BACKOFF: [Duration; ATTEMPTS - 1] = [Duration::from_millis(200), Duration::from_secs(1)];

/// Why one notification attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The section is unusable (normally caught by [`NotifySection::validate`]).
    #[error("bad configuration: {0}")]
    Config(String),
    /// TCP connect to the webhook failed.
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    /// HTTP protocol error talking to the webhook.
    #[error("http: {0}")]
    Http(hyper::Error),
    /// The webhook closed the connection without answering.
    #[error("connection closed before a response")]
    Closed,
    /// The webhook answered with a status other than 2xx.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The attempt took longer than the channel's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// SMTP transport error (connect, TLS, AUTH, a rejected command).
    #[error("smtp: {0}")]
    Smtp(lettre::transport::smtp::Error),
    /// The e-mail could not be built.
    #[error("e-mail: {0}")]
    Message(lettre::error::Error),
    /// The event could not be encoded as JSON.
    #[error("json: {0}")]
    Json(serde_json::Error),
}

/// Sends switchover announcements; cheap to clone (one shared state).
#[derive(Debug, Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    webhook: Option<Webhook>,
    webhook_timeout: Duration,
    email: Option<Email>,
    smtp_timeout: Duration,
    call: Option<String>,
    metrics: Arc<Metrics>,
    in_flight: Arc<Semaphore>,
}

impl Notifier {
    /// Channels from a validated section. A channel that cannot be set up anyway is
    /// left out with a warning, so that a bad notification setting never stops a node
    /// from taking over; [`Notifier::try_new`] refuses instead.
    pub fn new(cfg: &NotifySection, metrics: Arc<Metrics>) -> Notifier {
        let webhook = cfg.webhook.as_deref().and_then(|url| {
            Webhook::new(url)
                .inspect_err(|e| tracing::warn!(channel = "webhook", error = %e, "notification channel disabled"))
                .ok()
        });
        let email = Email::new(cfg)
            .inspect_err(
                |e| tracing::warn!(channel = "email", error = %e, "notification channel disabled"),
            )
            .ok()
            .flatten();
        Notifier::with(cfg, webhook, email, metrics)
    }

    /// Like [`Notifier::new`], but a channel that cannot be set up is an error.
    pub fn try_new(cfg: &NotifySection, metrics: Arc<Metrics>) -> Result<Notifier, NotifyError> {
        let webhook = cfg.webhook.as_deref().map(Webhook::new).transpose()?;
        let email = Email::new(cfg)?;
        Ok(Notifier::with(cfg, webhook, email, metrics))
    }

    fn with(
        cfg: &NotifySection,
        webhook: Option<Webhook>,
        email: Option<Email>,
        metrics: Arc<Metrics>,
    ) -> Notifier {
        Notifier {
            inner: Arc::new(Inner {
                webhook,
                webhook_timeout: Duration::from_millis(cfg.webhook_timeout_ms),
                email,
                smtp_timeout: Duration::from_millis(cfg.smtp_timeout_ms),
                call: cfg.call.clone(),
                metrics,
                in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            }),
        }
    }

    /// Number or extension the SIP core should call on a switchover.
    pub fn call_target(&self) -> Option<&str> {
        self.inner.call.as_deref()
    }

    /// Logs `ev` at info and sends it on every configured channel in a background
    /// task of the current tokio runtime; returns at once. Outcomes are logged and
    /// counted per channel (`notifications_sent`/`_failed`/`_dropped`).
    pub fn announce(&self, ev: Switchover) {
        tracing::info!(
            node = ev.node,
            vip = %ev.vip,
            event = %ev.event,
            reason = %ev.reason,
            term = ev.term,
            "VIP switchover"
        );
        let inner = &self.inner;
        let channels = u64::from(inner.webhook.is_some()) + u64::from(inner.email.is_some());
        if channels == 0 {
            return;
        }
        let dropped = |why: &str| {
            inner
                .metrics
                .notifications_dropped
                .fetch_add(channels, Ordering::Relaxed);
            tracing::warn!(node = ev.node, vip = %ev.vip, event = %ev.event, "switchover notification dropped: {why}");
        };
        let Ok(permit) = Arc::clone(&inner.in_flight).try_acquire_owned() else {
            dropped("too many in flight");
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            dropped("no tokio runtime");
            return;
        };
        let inner = Arc::clone(inner);
        runtime.spawn(async move {
            inner.deliver(&ev).await;
            drop(permit);
        });
    }

    /// Waits up to `within` for the announcements in flight to finish (for an orderly
    /// shutdown); true when none is left. Announcements made meanwhile may be dropped.
    pub async fn wait_idle(&self, within: Duration) -> bool {
        // MAX_IN_FLIGHT is a small constant; the cast cannot truncate.
        let all = self.inner.in_flight.acquire_many(MAX_IN_FLIGHT as u32);
        matches!(tokio::time::timeout(within, all).await, Ok(Ok(_)))
    }
}

impl Inner {
    /// Every channel at once, so a slow mail server does not delay the webhook.
    async fn deliver(&self, ev: &Switchover) {
        let webhook = async {
            let Some(w) = &self.webhook else { return };
            let target = w.uri().to_string();
            match ev.to_json() {
                Ok(body) => {
                    let body = Bytes::from(body);
                    self.try_channel("webhook", &target, self.webhook_timeout, || {
                        w.post(body.clone())
                    })
                    .await
                }
                Err(e) => self.failed("webhook", &target, 0, &NotifyError::Json(e)),
            }
        };
        let email = async {
            let Some(m) = &self.email else { return };
            match m.message(ev) {
                Ok(msg) => {
                    self.try_channel("email", m.server(), self.smtp_timeout, || {
                        m.send(msg.clone())
                    })
                    .await
                }
                Err(e) => self.failed("email", m.server(), 0, &e),
            }
        };
        tokio::join!(webhook, email);
    }

    /// Up to [`ATTEMPTS`] tries of `attempt`, each bounded by `timeout`, with
    /// [`BACKOFF`] between them.
    async fn try_channel<F, Fut>(
        &self,
        channel: &'static str,
        target: &str,
        timeout: Duration,
        mut attempt: F,
    ) where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), NotifyError>>,
    {
        for n in 1..=ATTEMPTS {
            let result = match tokio::time::timeout(timeout, attempt()).await {
                Ok(r) => r,
                Err(_) => Err(NotifyError::Timeout(timeout)),
            };
            match result {
                Ok(()) => {
                    self.metrics.inc(&self.metrics.notifications_sent);
                    tracing::info!(channel, target, attempt = n, "switchover notification sent");
                    return;
                }
                Err(e) => match BACKOFF.get(n - 1) {
                    Some(pause) if n < ATTEMPTS => {
                        tracing::warn!(channel, target, attempt = n, error = %e, "switchover notification failed; retrying in {pause:?}");
                        tokio::time::sleep(*pause).await;
                    }
                    _ => self.failed(channel, target, n, &e),
                },
            }
        }
    }

    fn failed(&self, channel: &'static str, target: &str, attempts: usize, e: &NotifyError) {
        self.metrics.inc(&self.metrics.notifications_failed);
        tracing::warn!(channel, target, attempts, error = %e, "switchover notification failed; giving up");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev() -> Switchover {
        Switchover::now(1, "10.0.0.100", SwitchoverKind::Released, "shutdown", 3)
    }

    #[test]
    fn outside_a_runtime_the_announcement_is_dropped_and_counted() {
        let metrics = Arc::new(Metrics::default());
        let cfg = NotifySection {
            webhook: Some("http://127.0.0.1:9/".into()),
            ..NotifySection::default()
        };
        let n = Notifier::new(&cfg, Arc::clone(&metrics));
        n.announce(ev());
        assert_eq!(metrics.notifications_dropped.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.notifications_failed.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn an_unusable_channel_is_left_out_or_refused() {
        let metrics = Arc::new(Metrics::default());
        let cfg = NotifySection {
            webhook: Some("https://hooks.example/".into()),
            call: Some("1001".into()),
            ..NotifySection::default()
        };
        assert!(matches!(
            Notifier::try_new(&cfg, Arc::clone(&metrics)),
            Err(NotifyError::Config(_))
        ));
        let n = Notifier::new(&cfg, Arc::clone(&metrics));
        assert_eq!(n.call_target(), Some("1001"));
        n.announce(ev());
        assert_eq!(metrics.notifications_dropped.load(Ordering::Relaxed), 0);
    }
}
