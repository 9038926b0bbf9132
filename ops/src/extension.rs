//! `switchctl extension list|show|add|set|remove` and `switchctl calls list`: the PBX's
//! extensions and live calls through a node's admin API. Changes name the version they
//! were based on, so a concurrent edit by someone else is refused (409), not overwritten.

use crate::client::Admin;
use crate::cluster::Output;
use crate::table::{columns, print};
use hyper::Method;
use serde_json::{json, Map, Value};
use std::net::IpAddr;

/// Fields of an extension given on the command line (absent: unchanged, or default).
#[derive(clap::Args, Debug, Default)]
pub struct Fields {
    /// Caller name shown to the called party.
    #[arg(long)]
    pub name: Option<String>,
    /// SIP digest password (at least 4 characters).
    #[arg(long)]
    pub password: Option<String>,
    /// Most registered contacts.
    #[arg(long)]
    pub max_contacts: Option<usize>,
    /// A source address trusted without digest for calls (repeat for several).
    #[arg(long = "trusted-ip")]
    pub trusted_ips: Vec<IpAddr>,
}

impl Fields {
    fn into_json(self) -> Map<String, Value> {
        let mut m = Map::new();
        if let Some(v) = self.name {
            m.insert("name".into(), v.into());
        }
        if let Some(v) = self.password {
            m.insert("password".into(), v.into());
        }
        if let Some(v) = self.max_contacts {
            m.insert("max_contacts".into(), v.into());
        }
        if !self.trusted_ips.is_empty() {
            m.insert("trusted_ips".into(), json!(self.trusted_ips));
        }
        m
    }
}

fn extension_rows(items: &[Value]) -> String {
    columns(
        &["NUMBER", "NAME", "MAX CONTACTS", "TRUSTED IPS", "VERSION"],
        &["number", "name", "max_contacts", "trusted_ips", "version"],
        items,
    )
}

/// Which extensions `extension list` shows.
#[derive(clap::Args, Debug, Default)]
pub struct ListFilter {
    /// Only numbers starting with these digits.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Only names containing this text (any case).
    #[arg(long)]
    pub name: Option<String>,
}

/// Lists the extensions matching `filter`, a page at a time.
pub async fn list(
    admin: &Admin,
    filter: &ListFilter,
    paging: &crate::resources::Paging,
    output: Output,
) -> anyhow::Result<()> {
    let mut q = format!("limit={}&offset={}", paging.limit, paging.offset);
    for (k, v) in [("prefix", &filter.prefix), ("name", &filter.name)] {
        if let Some(v) = v {
            q.push_str(&format!("&{k}={}", crate::query_value(v)));
        }
    }
    let v = admin
        .call(Method::GET, &format!("/v1/extensions?{q}"), None)
        .await?;
    print(output, &v, |v| {
        extension_rows(v["extensions"].as_array().map_or(&[], |a| a))
    })
}

/// Shows one extension.
pub async fn show(admin: &Admin, number: &str, output: Output) -> anyhow::Result<()> {
    let v = admin
        .call(Method::GET, &format!("/v1/extensions/{number}"), None)
        .await?;
    print(output, &v, |v| extension_rows(std::slice::from_ref(v)))
}

/// Creates an extension.
pub async fn add(
    admin: &Admin,
    number: &str,
    fields: Fields,
    output: Output,
) -> anyhow::Result<()> {
    let mut body = fields.into_json();
    body.insert("number".into(), number.into());
    let v = admin
        .call(Method::POST, "/v1/extensions", Some(Value::Object(body)))
        .await?;
    print(output, &v, |v| {
        format!("extension {number} created (version {})\n", v["version"])
    })
}

/// Changes the given fields of an extension: of `version` when given, else of the
/// version read just before.
pub async fn set(
    admin: &Admin,
    number: &str,
    version: Option<u64>,
    fields: Fields,
    output: Output,
) -> anyhow::Result<()> {
    let version = match version {
        Some(v) => v,
        None => current_version(admin, number).await?,
    };
    let mut body = fields.into_json();
    body.insert("version".into(), version.into());
    let v = admin
        .call(
            Method::PATCH,
            &format!("/v1/extensions/{number}"),
            Some(Value::Object(body)),
        )
        .await?;
    print(output, &v, |v| {
        format!("extension {number} changed (version {})\n", v["version"])
    })
}

/// Deletes an extension (of `version` when given).
pub async fn remove(
    admin: &Admin,
    number: &str,
    version: Option<u64>,
    output: Output,
) -> anyhow::Result<()> {
    let path = match version {
        Some(v) => format!("/v1/extensions/{number}?version={v}"),
        None => format!("/v1/extensions/{number}"),
    };
    let v = admin.call(Method::DELETE, &path, None).await?;
    print(output, &v, |_| format!("extension {number} removed\n"))
}

async fn current_version(admin: &Admin, number: &str) -> anyhow::Result<u64> {
    let v = admin
        .call(Method::GET, &format!("/v1/extensions/{number}"), None)
        .await?;
    v["version"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("the node did not say the extension's version: {v}"))
}
