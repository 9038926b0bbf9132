//! The webhook channel: one HTTP/1.1 POST of the switchover's JSON per attempt, on a
//! fresh connection (announcements are rare; a kept-alive connection would mostly be
//! a stale one).

use super::NotifyError;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Where and how to POST.
#[derive(Debug, Clone)]
pub struct Webhook {
    uri: Uri,
    host: String,
    port: u16,
    /// `Host:` header value: the authority as written in the URL.
    authority: String,
    /// Request target: path and query, `/` when the URL has none.
    target: String,
}

impl Webhook {
    /// From a URL already checked by [`super::NotifySection::validate`]; checked again
    /// here so that a caller skipping validation gets an error, not a panic.
    pub fn new(url: &str) -> Result<Webhook, NotifyError> {
        let uri = super::config::parse_webhook(url).map_err(NotifyError::Config)?;
        let host = uri
            .host()
            .ok_or_else(|| NotifyError::Config(format!("{url:?} names no host")))?
            // `[::1]` in a URL, `::1` for connect().
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(80);
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_else(|| host.clone());
        let target = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".into());
        Ok(Webhook {
            uri,
            host,
            port,
            authority,
            target,
        })
    }

    /// The URL, for log lines.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// One attempt: connect, POST `body`, succeed on a 2xx status. The caller bounds
    /// its duration; dropping the future closes the connection.
    pub async fn post(&self, body: Bytes) -> Result<(), NotifyError> {
        let stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(NotifyError::Connect)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(NotifyError::Http)?;
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.target.as_str())
            .header(header::HOST, self.authority.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("softswitch/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body))
            .map_err(|e| NotifyError::Config(e.to_string()))?;
        // The connection future does the I/O; drive it in this task rather than a
        // spawned one so that a timeout cancels both together.
        let mut conn = std::pin::pin!(conn);
        let mut send = std::pin::pin!(sender.send_request(request));
        let response = tokio::select! {
            r = &mut send => r.map_err(NotifyError::Http)?,
            c = &mut conn => {
                c.map_err(NotifyError::Http)?;
                // A server that answers and closes (`Connection: close`) ends the
                // connection as the response arrives: the response is there to take.
                send.await.map_err(|_| NotifyError::Closed)?
            }
        };
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(NotifyError::Status(status.as_u16()))
        }
    }
}
