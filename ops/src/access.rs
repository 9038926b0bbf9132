//! `switchctl token list|add|remove` and `switchctl audit`: who may use the admin API,
//! and what was changed through it.

use crate::client::Admin;
use crate::cluster::Output;
use crate::table::{columns, print};
use hyper::Method;
use serde_json::{json, Value};

fn list_of(v: &Value, key: &str) -> Vec<Value> {
    v[key].as_array().cloned().unwrap_or_default()
}

/// Lists the tokens (names and roles; the tokens themselves are not kept).
pub async fn list(admin: &Admin, output: Output) -> anyhow::Result<()> {
    let v = admin
        .call(Method::GET, "/v1/tokens?limit=1000", None)
        .await?;
    print(output, &v, |v| {
        columns(
            &["NAME", "ROLE", "CREATED"],
            &["name", "role", "created"],
            &list_of(v, "tokens"),
        )
    })
}

/// Creates a token and prints it (shown this once).
pub async fn add(admin: &Admin, name: &str, role: &str, output: Output) -> anyhow::Result<()> {
    let v = admin
        .call(
            Method::POST,
            "/v1/tokens",
            Some(json!({ "name": name, "role": role })),
        )
        .await?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        Output::Table => {
            println!("{}", v["token"].as_str().unwrap_or_default());
            eprintln!("token {name:?} (role {role}) created; it is shown only now, keep it");
        }
    }
    Ok(())
}

/// Revokes a token.
pub async fn remove(admin: &Admin, name: &str, output: Output) -> anyhow::Result<()> {
    let path = format!("/v1/tokens/{}", crate::path_segment(name));
    let v = admin.call(Method::DELETE, &path, None).await?;
    print(output, &v, |_| format!("token {name:?} removed\n"))
}

/// Prints audit entries (oldest first).
pub async fn audit(
    admin: &Admin,
    since: Option<&str>,
    limit: u32,
    output: Output,
) -> anyhow::Result<()> {
    let mut path = format!("/v1/audit?limit={limit}");
    if let Some(s) = since {
        path.push_str("&since=");
        path.push_str(&crate::query_value(s));
    }
    let v = admin.call(Method::GET, &path, None).await?;
    print(output, &v, |v| {
        columns(
            &[
                "ID", "AT", "TOKEN", "ROLE", "METHOD", "PATH", "STATUS", "FROM", "SUMMARY",
            ],
            &[
                "id", "at", "token", "role", "method", "path", "status", "remote", "summary",
            ],
            &list_of(v, "entries"),
        )
    })
}
