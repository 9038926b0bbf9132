//! The e-mail channel: a plain-text message through an SMTP relay, with lettre.

use super::{NotifyError, NotifySection, Switchover};
use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::time::Duration;

/// An SMTP relay and who writes to whom.
#[derive(Clone)]
pub struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    server: String,
    from: Mailbox,
    to: Vec<Mailbox>,
}

impl std::fmt::Debug for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Email")
            .field("server", &self.server)
            .field("from", &self.from)
            .field("to", &self.to)
            .finish_non_exhaustive()
    }
}

impl Email {
    /// `Ok(None)` when the section sends no e-mail (no recipients).
    pub fn new(cfg: &NotifySection) -> Result<Option<Email>, NotifyError> {
        if cfg.email_to.is_empty() {
            return Ok(None);
        }
        let missing = |f: &str| NotifyError::Config(format!("notify.{f} is required"));
        let server = cfg
            .smtp_server
            .as_deref()
            .ok_or_else(|| missing("smtp_server"))?;
        let (host, port) = super::config::parse_smtp_server(server)
            .ok_or_else(|| NotifyError::Config(format!("bad notify.smtp_server {server:?}")))?;
        let from = cfg
            .email_from
            .as_deref()
            .ok_or_else(|| missing("email_from"))?
            .parse::<Mailbox>()
            .map_err(|e| NotifyError::Config(format!("notify.email_from: {e}")))?;
        let to = cfg
            .email_to
            .iter()
            .map(|t| t.parse::<Mailbox>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| NotifyError::Config(format!("notify.email_to: {e}")))?;
        let tls = if cfg.smtp_starttls {
            Tls::Required(TlsParameters::new(host.clone()).map_err(NotifyError::Smtp)?)
        } else {
            Tls::None
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .tls(tls)
            .timeout(Some(Duration::from_millis(cfg.smtp_timeout_ms)));
        if let (Some(user), Some(pass)) = (&cfg.smtp_username, &cfg.smtp_password) {
            builder = builder.credentials(Credentials::new(user.clone(), pass.clone()));
        }
        Ok(Some(Email {
            transport: builder.build(),
            server: server.to_string(),
            from,
            to,
        }))
    }

    /// The relay, for log lines.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The message announcing `ev` to every recipient.
    pub fn message(&self, ev: &Switchover) -> Result<Message, NotifyError> {
        let mut b = Message::builder()
            .from(self.from.clone())
            .subject(ev.email_subject())
            .header(ContentType::TEXT_PLAIN);
        for t in &self.to {
            b = b.to(t.clone());
        }
        b.body(ev.email_body()).map_err(NotifyError::Message)
    }

    /// One attempt: a whole SMTP dialogue on a new connection.
    pub async fn send(&self, message: Message) -> Result<(), NotifyError> {
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(NotifyError::Smtp)
    }
}
