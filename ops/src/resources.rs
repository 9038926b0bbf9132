//! `switchctl registrations list|remove`, `calls hangup` and `cdr query|export`: the
//! live state and the call records through a node's admin API.

use crate::client::Admin;
use crate::cluster::Output;
use crate::table::{columns, print};
use crate::{path_segment, query_value};
use hyper::Method;
use serde_json::Value;

/// Paging and filters shared by the list commands.
#[derive(clap::Args, Debug, Default)]
pub struct Paging {
    /// At most this many rows (1 to 1000).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Skip this many rows first.
    #[arg(long, default_value_t = 0)]
    pub offset: u64,
}

/// CDR filters.
#[derive(clap::Args, Debug, Default)]
pub struct CdrFilter {
    /// Calls started at or after this time (RFC 3339, e.g. 2026-01-31T00:00:00Z).
    #[arg(long)]
    pub from: Option<String>,
    /// Calls started before this time (RFC 3339).
    #[arg(long)]
    pub to: Option<String>,
    /// Calls from or to this number.
    #[arg(long)]
    pub number: Option<String>,
    /// answered, no-answer, busy, failed or cancelled.
    #[arg(long)]
    pub disposition: Option<String>,
}

/// A query string of the given `(name, value)` pairs, left out when absent.
fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", query_value(v))))
        .collect();
    parts.join("&")
}

impl CdrFilter {
    fn pairs(&self) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("from", self.from.clone()),
            ("to", self.to.clone()),
            ("number", self.number.clone()),
            ("disposition", self.disposition.clone()),
        ]
    }
}

impl Paging {
    fn pairs(&self) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("limit", Some(self.limit.to_string())),
            ("offset", Some(self.offset.to_string())),
        ]
    }
}

fn rows<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v[key].as_array().map_or(&[], |a| a)
}

/// Lists registered contacts.
pub async fn registrations(
    admin: &Admin,
    extension: Option<String>,
    paging: &Paging,
    output: Output,
) -> anyhow::Result<()> {
    let mut pairs = vec![("extension", extension)];
    pairs.extend(paging.pairs());
    let v = admin
        .call(
            Method::GET,
            &format!("/v1/registrations?{}", query(&pairs)),
            None,
        )
        .await?;
    print(output, &v, |v| {
        columns(
            &["AOR", "CONTACT", "SOURCE", "EXPIRES IN", "USER AGENT"],
            &["aor", "contact", "source", "expires_in", "user_agent"],
            rows(v, "registrations"),
        )
    })
}

/// Unregisters an address of record (every contact, or one).
pub async fn unregister(
    admin: &Admin,
    aor: &str,
    contact: Option<String>,
    output: Output,
) -> anyhow::Result<()> {
    let mut path = format!("/v1/registrations/{}", path_segment(aor));
    let q = query(&[("contact", contact)]);
    if !q.is_empty() {
        path = format!("{path}?{q}");
    }
    let v = admin.call(Method::DELETE, &path, None).await?;
    print(output, &v, |v| {
        let removed: Vec<String> = rows(v, "removed")
            .iter()
            .filter_map(|c| c.as_str().map(str::to_owned))
            .collect();
        format!("{aor}: removed {}\n", removed.join(", "))
    })
}

/// Lists calls in progress.
pub async fn calls(admin: &Admin, paging: &Paging, output: Output) -> anyhow::Result<()> {
    let v = admin
        .call(
            Method::GET,
            &format!("/v1/calls?{}", query(&paging.pairs())),
            None,
        )
        .await?;
    print(output, &v, |v| {
        columns(
            &["CALL-ID", "CALLER", "CALLEE", "NODE", "START", "ANSWER"],
            &["call_id", "caller", "callee", "node", "start", "answer"],
            rows(v, "calls"),
        )
    })
}

/// Hangs a call up.
pub async fn hang_up(admin: &Admin, call_id: &str, output: Output) -> anyhow::Result<()> {
    let path = format!("/v1/calls/{}", path_segment(call_id));
    let v = admin.call(Method::DELETE, &path, None).await?;
    print(output, &v, |_| format!("call {call_id} hung up\n"))
}

/// Queries CDRs.
pub async fn cdrs(
    admin: &Admin,
    filter: &CdrFilter,
    paging: &Paging,
    output: Output,
) -> anyhow::Result<()> {
    let mut pairs = filter.pairs();
    pairs.extend(paging.pairs());
    let v = admin
        .call(Method::GET, &format!("/v1/cdrs?{}", query(&pairs)), None)
        .await?;
    print(output, &v, |v| {
        columns(
            &[
                "START",
                "CALLER",
                "CALLEE",
                "DISPOSITION",
                "DURATION",
                "BILLSEC",
                "CAUSE",
                "CALL-ID",
            ],
            &[
                "start",
                "caller",
                "callee",
                "disposition",
                "duration",
                "billsec",
                "hangup_cause",
                "call_id",
            ],
            rows(v, "cdrs"),
        )
    })
}

/// The format of `cdr export`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ExportFormat {
    /// RFC 4180 CSV with a header row.
    Csv,
    /// One JSON object per line.
    Json,
}

/// Exports every matching CDR (up to the node's export limit) to stdout.
pub async fn export(admin: &Admin, filter: &CdrFilter, format: ExportFormat) -> anyhow::Result<()> {
    use std::io::Write;
    let q = query(&filter.pairs());
    match format {
        ExportFormat::Csv => {
            let text = admin
                .call_raw(
                    Method::GET,
                    &format!("/v1/cdrs.csv?{q}"),
                    None,
                    crate::client::TIMEOUT,
                )
                .await?;
            std::io::stdout().write_all(&text)?;
        }
        ExportFormat::Json => {
            // Paged through the JSON API, the largest page at a time.
            let mut offset = 0u64;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            loop {
                let sep = if q.is_empty() { "" } else { "&" };
                let path = format!("/v1/cdrs?{q}{sep}limit=1000&offset={offset}");
                let v = admin.call(Method::GET, &path, None).await?;
                let page = rows(&v, "cdrs");
                for c in page {
                    serde_json::to_writer(&mut out, c)?;
                    out.write_all(b"\n")?;
                }
                offset += page.len() as u64;
                if page.is_empty() || offset >= v["total"].as_u64().unwrap_or(0) {
                    break;
                }
            }
        }
    }
    Ok(())
}
