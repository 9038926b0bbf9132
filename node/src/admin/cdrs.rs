//! `/v1/cdrs` and `/v1/cdrs.csv`: call detail records filtered by time, number and
//! disposition, paged, as JSON or CSV (for spreadsheets and billing imports).

use super::data::Data;
use super::query::{paged, Page, Query};
use super::reply::{attachment, field_error, json, Reply};
use crate::calls::cdr::{Cdr, Disposition};
use hyper::StatusCode;

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

/// The CDRs `f` keeps, oldest first. With `from` or `to`, only the CDRs started in that
/// range are read (through the store's time index); the other filters apply on top.
fn matching(data: &Data, f: &Filter) -> Result<Vec<Cdr>, Box<Reply>> {
    let candidates = if f.from.is_some() || f.to.is_some() {
        let (from, to) = (f.from.as_deref(), f.to.as_deref());
        data.read(|db| crate::store::cdrs_between(db, from, to))?
    } else {
        data.read(crate::store::cdrs)?
    };
    Ok(candidates.into_iter().filter(|c| f.keeps(c)).collect())
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
    attachment(out.into_bytes(), "text/csv; charset=utf-8", "cdrs.csv")
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
    use crate::store::{Command, Store};
    use http_body_util::BodyExt;
    use std::sync::Arc;

    async fn body(r: Reply) -> (StatusCode, String) {
        let status = r.status();
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    async fn ids(data: &Data, query: &str) -> (u64, Vec<String>) {
        let (status, text) = body(list(data, Some(query))).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let ids = v["cdrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["call_id"].as_str().unwrap().to_string())
            .collect();
        (v["total"].as_u64().unwrap(), ids)
    }

    #[tokio::test]
    async fn time_ranges_page_and_combine_with_the_other_filters() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        // (call id, start minute, callee, disposition), appended in this order.
        let rows = [
            ("a", 10, "1002", Disposition::Answered),
            ("b", 20, "1003", Disposition::Busy),
            ("c", 30, "1002", Disposition::Answered),
            ("d", 5, "1002", Disposition::Answered),
            ("e", 20, "1002", Disposition::Failed),
            ("f", 40, "1002", Disposition::Answered),
        ];
        for (id, minute, callee, disposition) in rows {
            let start = format!("2026-03-01T10:{minute:02}:00.000Z");
            store
                .apply(&Command::AppendCdr(Cdr {
                    call_id: id.into(),
                    caller: "1001".into(),
                    callee: callee.into(),
                    start: start.clone(),
                    answer: None,
                    end: start,
                    duration: 0,
                    billsec: 0,
                    disposition,
                    hangup_cause: "normal_clearing".into(),
                    sip_status: 200,
                    hangup_by: None,
                    media: None,
                }))
                .unwrap();
        }
        let (feed, _applied) = tokio::sync::mpsc::unbounded_channel();
        let data = Data::Local { store, feed };

        // `from` inclusive, `to` exclusive, in any RFC 3339 spelling; oldest first.
        let range = "from=2026-03-01T10:10:00Z&to=2026-03-01T11:30:00%2B01:00";
        assert_eq!(
            ids(&data, range).await,
            (3, vec!["a".into(), "b".into(), "e".into()])
        );
        let q = format!("{range}&number=1002&disposition=answered");
        assert_eq!(ids(&data, &q).await, (1, vec!["a".into()]));
        // Paging counts every match and answers the page.
        let q = "from=2026-03-01T10:10:00Z&limit=2&offset=1";
        assert_eq!(ids(&data, q).await, (5, vec!["b".into(), "c".into()]));
        let q = "to=2026-03-01T10:20:00.000Z";
        assert_eq!(ids(&data, q).await, (2, vec!["a".into(), "d".into()]));
        // An open range answers what no range does.
        let all = ids(&data, "").await;
        assert_eq!(all.0, 6);
        assert_eq!(ids(&data, "from=2000-01-01T00:00:00Z").await, all);

        let (status, text) = body(csv(&data, Some("from=2026-03-01T10:30:00Z"))).await;
        assert_eq!(status, StatusCode::OK);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[1].starts_with("c,") && lines[2].starts_with("f,"),
            "{text}"
        );
    }

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
