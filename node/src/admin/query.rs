//! A request's query string: decoded parameters, paging (`limit`, `offset`) and the
//! 400 that names a parameter that is not understood.

use super::reply::{field_error, Reply};

/// The most items one page holds, so a client cannot ask for the whole state at once.
pub const MAX_LIMIT: usize = 1000;
/// The page size when `limit` is left out.
pub const DEFAULT_LIMIT: usize = 100;

/// Decoded query parameters.
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Parses (and percent-decodes) a query string.
    pub fn parse(raw: Option<&str>) -> Query {
        Query(
            form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
                .into_owned()
                .collect(),
        )
    }

    /// The value of `name`, if given and not empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// 400 for a parameter other than `known`, so that a typo does not silently widen
    /// a query (or a deletion).
    pub fn only(&self, known: &[&str]) -> Result<(), Box<Reply>> {
        match self.0.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            Some((k, _)) => Err(Box::new(field_error(
                k,
                &format!("unknown parameter; known: {}", known.join(", ")),
            ))),
            None => Ok(()),
        }
    }

    /// A whole-number parameter.
    pub fn number(&self, name: &str) -> Result<Option<u64>, Box<Reply>> {
        self.get(name)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| Box::new(field_error(name, "must be a whole number")))
            })
            .transpose()
    }

    /// A yes/no parameter (`true`/`false`, `1`/`0`); absent is `default`.
    pub fn flag(&self, name: &str, default: bool) -> Result<bool, Box<Reply>> {
        match self.get(name) {
            None => Ok(default),
            Some("true" | "1" | "yes") => Ok(true),
            Some("false" | "0" | "no") => Ok(false),
            Some(_) => Err(Box::new(field_error(name, "must be true or false"))),
        }
    }

    /// `limit` (default [`DEFAULT_LIMIT`], 1 to [`MAX_LIMIT`]) and `offset` (default 0).
    pub fn page(&self) -> Result<Page, Box<Reply>> {
        let limit = self.number("limit")?.unwrap_or(DEFAULT_LIMIT as u64);
        if limit == 0 || limit > MAX_LIMIT as u64 {
            return Err(Box::new(field_error(
                "limit",
                &format!("must be 1 to {MAX_LIMIT}"),
            )));
        }
        let offset = self.number("offset")?.unwrap_or(0);
        Ok(Page {
            limit: limit as usize,
            offset: usize::try_from(offset).unwrap_or(usize::MAX),
        })
    }

    /// The query of a list filtered by extension: only `extension`, `limit` and
    /// `offset`, the page, and the extension (digits) if given.
    pub fn extension_page(&self) -> Result<(Page, Option<&str>), Box<Reply>> {
        self.only(&["extension", "limit", "offset"])?;
        let page = self.page()?;
        let extension = self.get("extension");
        if extension.is_some_and(|e| !e.bytes().all(|b| b.is_ascii_digit())) {
            return Err(Box::new(field_error(
                "extension",
                "must be an extension number (digits)",
            )));
        }
        Ok((page, extension))
    }
}

/// Which slice of a list to answer.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    /// At most this many items.
    pub limit: usize,
    /// After skipping this many.
    pub offset: usize,
}

impl Page {
    /// The page of `all`, and the JSON fields that describe it (`total`, `limit`,
    /// `offset`), to merge into the answer.
    pub fn apply<T>(&self, all: Vec<T>) -> (Vec<T>, serde_json::Value) {
        let total = all.len();
        let items: Vec<T> = all.into_iter().skip(self.offset).take(self.limit).collect();
        (
            items,
            serde_json::json!({ "total": total, "limit": self.limit, "offset": self.offset }),
        )
    }
}

/// A JSON answer `{ name: items, total, limit, offset }`.
pub fn paged(
    name: &str,
    items: Vec<serde_json::Value>,
    meta: serde_json::Value,
) -> serde_json::Value {
    let mut v = meta;
    if let Some(o) = v.as_object_mut() {
        o.insert(name.to_string(), serde_json::Value::Array(items));
    }
    v
}
