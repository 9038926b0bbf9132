//! `/v1/cdrs` and `/v1/cdrs.csv`: call detail records filtered by time, number and
//! disposition, paged, as JSON or CSV (for spreadsheets and billing imports).

use super::data::Data;
use super::query::{paged, Page, Query};
use super::reply::{field_error, json, Reply};
use crate::calls::cdr::{Cdr, Disposition};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_DISPOSITION, CONTENT_TYPE};
use hyper::{Response, StatusCode};

/// The most rows one CSV export holds.
const MAX_EXPORT: usize = 100_000;
const PARAMS: [&str; 6] = ["from", "to", "number", "disposition", "limit", "offset"];
const CSV_COLUMNS: [&str; 12] = [
    "call_id",
    "caller",
    "callee",
    "start",
    "answer",
    "end",
    "duration",
    "billsec",
    "disposition",
    "hangup_cause",
    "sip_status",
    "hangup_by",
];

/// What a query keeps.
struct Filter {
    from: Option<String>,
    to: Option<String>,
    number: Option<String>,
    disposition: Option<Disposition>,
}

impl Filter {
    fn keeps(&self, c: &Cdr) -> bool {
        self.from.as_deref().is_none_or(|f| c.start.as_str() >= f)
            && self.to.as_deref().is_none_or(|t| c.start.as_str() < t)
            && self
                .number
                .as_deref()
                .is_none_or(|n| c.caller == n || c.callee == n)
            && self.disposition.is_none_or(|d| c.disposition == d)
    }
}

/// A time parameter as the CDRs spell times (RFC 3339 UTC, milliseconds), so that it
/// compares as text.
fn time(q: &Query, name: &str) -> Result<Option<String>, Box<Reply>> {
    q.get(name)
        .map(|v| {
            chrono::DateTime::parse_from_rfc3339(v)
                .map(|t| {
                    t.with_timezone(&chrono::Utc)
                        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                        .to_string()
                })
                .map_err(|_| {
                    Box::new(field_error(
                        name,
                        "must be an RFC 3339 time, e.g. 2026-01-31T08:00:00Z",
                    ))
                })
        })
        .transpose()
}

fn disposition(v: &str) -> Option<Disposition> {
    let v = v.to_ascii_uppercase().replace(['-', '_'], " ");
    [
        Disposition::Answered,
        Disposition::NoAnswer,
        Disposition::Busy,
        Disposition::Failed,
        Disposition::Cancelled,
    ]
    .into_iter()
    .find(|d| {
        serde_json::to_value(d)
            .ok()
            .and_then(|s| s.as_str().map(|s| s == v))
            == Some(true)
    })
}

fn filter(q: &Query) -> Result<Filter, Box<Reply>> {
    q.only(&PARAMS)?;
    let disposition = match q.get("disposition") {
        Some(d) => Some(disposition(d).ok_or_else(|| {
            Box::new(field_error(
                "disposition",
                "must be answered, no-answer, busy, failed or cancelled",
            ))
        })?),
        None => None,
    };
    Ok(Filter {
        from: time(q, "from")?,
        to: time(q, "to")?,
        number: q.get("number").map(str::to_owned),
        disposition,
    })
}

fn matching(data: &Data, f: &Filter) -> Result<Vec<Cdr>, Box<Reply>> {
    let all = data.read(crate::store::cdrs)?;
    Ok(all.into_iter().filter(|c| f.keeps(c)).collect())
}

/// `GET /v1/cdrs?from=&to=&number=&disposition=&limit=&offset=`: oldest first.
pub fn list(data: &Data, query: Option<&str>) -> Reply {
    let q = Query::parse(query);
    let (f, page) = match filter(&q).and_then(|f| Ok((f, q.page()?))) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    match matching(data, &f) {
        Ok(rows) => {
            let rows = rows
                .into_iter()
                .map(|c| serde_json::to_value(c).unwrap_or_default())
                .collect();
            let (items, meta) = page.apply(rows);
            json(StatusCode::OK, paged("cdrs", items, meta))
        }
        Err(r) => *r,
    }
}

/// `GET /v1/cdrs.csv`: the same query as CSV with a header row; without `limit`, up to
/// [`MAX_EXPORT`] rows.
pub fn csv(data: &Data, query: Option<&str>) -> Reply {
    let q = Query::parse(query);
    let f = match filter(&q) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let page = match q.number("limit") {
        Ok(Some(l)) if l == 0 || l > MAX_EXPORT as u64 => {
            return field_error("limit", &format!("must be 1 to {MAX_EXPORT}"))
        }
        Ok(limit) => match q.number("offset") {
            Ok(offset) => Page {
                limit: limit.map_or(MAX_EXPORT, |l| l as usize),
                offset: offset.map_or(0, |o| usize::try_from(o).unwrap_or(usize::MAX)),
            },
            Err(r) => return *r,
        },
        Err(r) => return *r,
    };
    let rows = match matching(data, &f) {
        Ok(rows) => page.apply(rows).0,
        Err(r) => return *r,
    };
    let mut out = CSV_COLUMNS.join(",");
    out.push_str("\r\n");
    for c in &rows {
        let v = serde_json::to_value(c).unwrap_or_default();
        let cells: Vec<String> = CSV_COLUMNS
            .iter()
            .map(|k| match &v[*k] {
                serde_json::Value::Null => String::new(),
                serde_json::Value::String(s) => csv_field(s),
                other => csv_field(&other.to_string()),
            })
            .collect();
        out.push_str(&cells.join(","));
        out.push_str("\r\n");
    }
    let mut r = Response::new(Full::new(Bytes::from(out)));
    *r.status_mut() = StatusCode::OK;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    r.headers_mut().insert(
        CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"cdrs.csv\""),
    );
    r
}

/// One CSV field (RFC 4180): quoted when it holds a comma, quote or line break; a
/// leading `=`, `+`, `-` or `@` is prefixed with `'` so a spreadsheet does not run it.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_and_dispositions() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=cmd()"), "'=cmd()");
        assert_eq!(csv_field("1001"), "1001");
        assert_eq!(disposition("no-answer"), Some(Disposition::NoAnswer));
        assert_eq!(disposition("ANSWERED"), Some(Disposition::Answered));
        assert_eq!(disposition("maybe"), None);
    }
}
