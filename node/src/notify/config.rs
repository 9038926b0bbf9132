//! `[notify]`: where switchover announcements go, and the checks that refuse a
//! configuration which would silently announce nothing.

use crate::config::ConfigError;
use lettre::message::Mailbox;
use serde::Deserialize;
use std::fmt;

/// Port used when `smtp_server` names no port (plain SMTP relay).
pub const DEFAULT_SMTP_PORT: u16 = 25;

/// `[notify]`
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifySection {
    /// `http://` URL that receives a JSON POST per switchover (default none).
    pub webhook: Option<String>,
    /// Time one webhook attempt may take, connect to response (default 2000 ms).
    pub webhook_timeout_ms: u64,
    /// SMTP relay, `host:port` or `host` for port 25 (default none).
    pub smtp_server: Option<String>,
    /// SMTP AUTH user; AUTH is used when both it and `smtp_password` are set.
    pub smtp_username: Option<String>,
    /// SMTP AUTH password.
    pub smtp_password: Option<String>,
    /// Require STARTTLS (certificate checked against the webpki roots) before
    /// anything else is sent (default false: plain SMTP).
    pub smtp_starttls: bool,
    /// Time one e-mail attempt may take, connect to the end of the SMTP
    /// dialogue (default 10000 ms).
    pub smtp_timeout_ms: u64,
    /// Sender, `ops@example.com` or `Softswitch <ops@example.com>`.
    pub email_from: Option<String>,
    /// Recipients; non-empty needs `smtp_server` and `email_from`.
    pub email_to: Vec<String>,
    /// Number or extension the SIP core calls on a switchover (default none).
    pub call: Option<String>,
}

impl Default for NotifySection {
    fn default() -> Self {
        NotifySection {
            webhook: None,
            webhook_timeout_ms: 2000,
            smtp_server: None,
            smtp_username: None,
            smtp_password: None,
            smtp_starttls: false,
            smtp_timeout_ms: 10_000,
            email_from: None,
            email_to: Vec::new(),
            call: None,
        }
    }
}

// By hand so that the SMTP password never reaches a log line that prints the config.
impl fmt::Debug for NotifySection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotifySection")
            .field("webhook", &self.webhook)
            .field("webhook_timeout_ms", &self.webhook_timeout_ms)
            .field("smtp_server", &self.smtp_server)
            .field("smtp_username", &self.smtp_username)
            .field("smtp_password", &self.smtp_password.as_ref().map(|_| "***"))
            .field("smtp_starttls", &self.smtp_starttls)
            .field("smtp_timeout_ms", &self.smtp_timeout_ms)
            .field("email_from", &self.email_from)
            .field("email_to", &self.email_to)
            .field("call", &self.call)
            .finish()
    }
}

/// Splits `host:port`, `host`, `[v6]:port` or a bare IPv6 address into host and port.
pub fn parse_smtp_server(text: &str) -> Option<(String, u16)> {
    let text = text.trim();
    if let Ok(sa) = text.parse::<std::net::SocketAddr>() {
        return Some((sa.ip().to_string(), sa.port()));
    }
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Some((ip.to_string(), DEFAULT_SMTP_PORT));
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().ok().filter(|p| *p != 0)?),
        None => (text, DEFAULT_SMTP_PORT),
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_');
    host_ok.then(|| (host.to_string(), port))
}

/// Parses the webhook URL: `http://host[:port][/path]`.
pub fn parse_webhook(text: &str) -> Result<hyper::Uri, String> {
    let uri: hyper::Uri = text
        .parse()
        .map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err("https is not supported; use an http:// URL".into()),
        _ => return Err(format!("{text:?} must start with http://")),
    }
    match uri.host() {
        Some(h) if !h.is_empty() => Ok(uri),
        _ => Err(format!("{text:?} names no host")),
    }
}

impl NotifySection {
    /// Checks values and cross-field rules; the error names the `notify.*` field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, reason: String| Err(ConfigError::Invalid { field, reason });
        if let Some(w) = &self.webhook {
            if let Err(reason) = parse_webhook(w) {
                return bad("notify.webhook", reason);
            }
        }
        if self.webhook_timeout_ms == 0 || self.webhook_timeout_ms > 60_000 {
            return bad("notify.webhook_timeout_ms", "must be 1..=60000".into());
        }
        if self.smtp_timeout_ms == 0 || self.smtp_timeout_ms > 300_000 {
            return bad("notify.smtp_timeout_ms", "must be 1..=300000".into());
        }
        if let Some(s) = &self.smtp_server {
            if parse_smtp_server(s).is_none() {
                return bad(
                    "notify.smtp_server",
                    format!("{s:?} must be host:port or host, e.g. mail.example.com:25"),
                );
            }
        }
        match (&self.smtp_username, &self.smtp_password) {
            (Some(_), None) => {
                return bad(
                    "notify.smtp_password",
                    "required with notify.smtp_username".into(),
                )
            }
            (None, Some(_)) => {
                return bad(
                    "notify.smtp_username",
                    "required with notify.smtp_password".into(),
                )
            }
            _ => {}
        }
        if let Some(f) = &self.email_from {
            if let Err(e) = f.parse::<Mailbox>() {
                return bad("notify.email_from", format!("{f:?} is not an address: {e}"));
            }
        }
        for t in &self.email_to {
            if let Err(e) = t.parse::<Mailbox>() {
                return bad("notify.email_to", format!("{t:?} is not an address: {e}"));
            }
        }
        if !self.email_to.is_empty() {
            if self.smtp_server.is_none() {
                return bad(
                    "notify.smtp_server",
                    "required when notify.email_to lists recipients".into(),
                );
            }
            if self.email_from.is_none() {
                return bad(
                    "notify.email_from",
                    "required when notify.email_to lists recipients".into(),
                );
            }
        } else if self.smtp_server.is_some() {
            // An SMTP relay with nobody to write to is a forgotten line, not a choice.
            return bad(
                "notify.email_to",
                "empty while notify.smtp_server is set; list at least one recipient".into(),
            );
        }
        if let Some(c) = &self.call {
            if c.is_empty() || c.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
                return bad(
                    "notify.call",
                    format!("{c:?} must be a number or extension without spaces"),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(section: &NotifySection) -> String {
        match section.validate() {
            Ok(()) => panic!("accepted {section:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn mail() -> NotifySection {
        NotifySection {
            smtp_server: Some("mail.example.com".into()),
            email_from: Some("Softswitch <ops@example.com>".into()),
            email_to: vec!["oncall@example.com".into()],
            ..NotifySection::default()
        }
    }

    #[test]
    fn defaults_announce_nothing_and_are_valid() {
        let s = NotifySection::default();
        s.validate().unwrap();
        assert_eq!(s.webhook_timeout_ms, 2000);
        assert!(s.webhook.is_none() && s.smtp_server.is_none() && s.call.is_none());
        assert!(!s.smtp_starttls);
    }

    #[test]
    fn full_section_is_accepted() {
        let s = NotifySection {
            webhook: Some("http://hooks.example:8080/vip?x=1".into()),
            smtp_username: Some("u".into()),
            smtp_password: Some("p".into()),
            smtp_starttls: true,
            call: Some("+4930123456".into()),
            ..mail()
        };
        s.validate().unwrap();
    }

    #[test]
    fn bad_webhooks_name_the_field() {
        for w in [
            "hooks.example/vip",
            "https://hooks.example/",
            "ftp://x/",
            "http://",
            "",
        ] {
            let s = NotifySection {
                webhook: Some(w.into()),
                ..NotifySection::default()
            };
            let e = err(&s);
            assert!(
                e.starts_with("invalid configuration: field `notify.webhook`: "),
                "{w:?}: {e}"
            );
        }
        let s = NotifySection {
            webhook_timeout_ms: 0,
            ..NotifySection::default()
        };
        assert!(err(&s).contains("`notify.webhook_timeout_ms`"));
    }

    #[test]
    fn email_rules_name_the_field() {
        let e = err(&NotifySection {
            smtp_server: None,
            ..mail()
        });
        assert!(e.contains("`notify.smtp_server`"), "{e}");
        let e = err(&NotifySection {
            email_from: None,
            ..mail()
        });
        assert!(e.contains("`notify.email_from`"), "{e}");
        let e = err(&NotifySection {
            email_to: vec!["oncall@example.com".into(), "not an address".into()],
            ..mail()
        });
        assert!(
            e.contains("`notify.email_to`") && e.contains("not an address"),
            "{e}"
        );
        let e = err(&NotifySection {
            email_from: Some("ops.example.com".into()),
            ..mail()
        });
        assert!(e.contains("`notify.email_from`"), "{e}");
        let e = err(&NotifySection {
            email_to: Vec::new(),
            ..mail()
        });
        assert!(e.contains("`notify.email_to`"), "{e}");
        let e = err(&NotifySection {
            smtp_server: Some("mail.example.com:smtp".into()),
            ..mail()
        });
        assert!(e.contains("`notify.smtp_server`"), "{e}");
        let e = err(&NotifySection {
            smtp_username: Some("u".into()),
            ..mail()
        });
        assert!(e.contains("`notify.smtp_password`"), "{e}");
        let e = err(&NotifySection {
            call: Some("10 01".into()),
            ..NotifySection::default()
        });
        assert!(e.contains("`notify.call`"), "{e}");
    }

    #[test]
    fn smtp_servers_parse_with_port_25_by_default() {
        let p = |s: &str| parse_smtp_server(s);
        assert_eq!(p("mail.example.com"), Some(("mail.example.com".into(), 25)));
        assert_eq!(
            p("mail.example.com:587"),
            Some(("mail.example.com".into(), 587))
        );
        assert_eq!(p("127.0.0.1:2525"), Some(("127.0.0.1".into(), 2525)));
        assert_eq!(p("[::1]:2525"), Some(("::1".into(), 2525)));
        assert_eq!(p("::1"), Some(("::1".into(), 25)));
        assert_eq!(p("mail:0"), None);
        assert_eq!(p(":25"), None);
        assert_eq!(p("mail example:25"), None);
    }

    #[test]
    fn password_is_not_printed() {
        let s = NotifySection {
            smtp_password: Some("hunter2".into()),
            ..NotifySection::default()
        };
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn node_config_reads_and_checks_the_section() {
        use crate::config::NodeConfig;
        let c = NodeConfig::from_toml(
            "[notify]\nwebhook = \"http://127.0.0.1:9000/vip\"\ncall = \"1001\"\n\
             smtp_server = \"127.0.0.1:2525\"\nemail_from = \"ops@example.com\"\n\
             email_to = [\"a@example.com\", \"B <b@example.com>\"]\n",
        )
        .unwrap();
        assert_eq!(c.notify.email_to.len(), 2);
        assert_eq!(c.notify.call.as_deref(), Some("1001"));
        let e = NodeConfig::from_toml("[notify]\nwebhook = \"https://x.example/\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`notify.webhook`"), "{e}");
        let e = NodeConfig::from_toml("[notify]\nemail = \"x@example.com\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("email"), "{e}");
    }
}
