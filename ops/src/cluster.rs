//! `switchctl cluster status|token|remove-node|leave|transfer-leader`: online commands
//! against a running node's admin API.

use crate::client::Admin;
use crate::table::{cell, columns};
use anyhow::anyhow;
use hyper::Method;
use serde_json::{json, Value};
use std::time::Duration;

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Human-readable.
    Table,
    /// The API's JSON.
    Json,
}

/// Prints the cluster's members and progress.
pub async fn status(admin: &Admin, output: Output) -> anyhow::Result<()> {
    let v = admin.call(Method::GET, "/v1/cluster", None).await?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        Output::Table => print!("{}", status_table(&v)),
    }
    Ok(())
}

/// Renders `GET /v1/cluster` as aligned columns followed by the node's progress.
pub fn status_table(v: &Value) -> String {
    let header = [
        "ID",
        "RAFT ADDRESS",
        "ADMIN ADDRESS",
        "ROLE",
        "MATCHED",
        "LAG",
    ];
    let keys = ["id", "raft_addr", "admin_addr", "role", "matched", "lag"];
    let members = v["members"].as_array().cloned().unwrap_or_default();
    let mut out = columns(&header, &keys, &members);
    out.push('\n');
    let leader = &v["leader"];
    let leader = if leader.is_null() {
        "none known".to_string()
    } else {
        format!(
            "{} (admin {})",
            cell(&leader["id"]),
            cell(&leader["admin_addr"])
        )
    };
    out.push_str(&format!(
        "this node: {} ({})\n",
        cell(&v["id"]),
        cell(&v["role"])
    ));
    out.push_str(&format!("term:      {}\n", cell(&v["term"])));
    out.push_str(&format!("leader:    {leader}\n"));
    out.push_str(&format!("commit:    {}\n", cell(&v["committed"])));
    out.push_str(&format!("applied:   {}\n", cell(&v["applied"])));
    out.push_str(&format!(
        "snapshot:  {} (log purged up to {})\n",
        cell(&v["snapshot"]),
        cell(&v["purged"])
    ));
    if let Some(e) = v["leader_view_error"].as_str() {
        out.push_str(&format!("(no replication progress: {e})\n"));
    }
    out
}

/// Asks the node for a join token and prints it.
pub async fn token(admin: &Admin, ttl: Duration, output: Output) -> anyhow::Result<()> {
    let body = json!({ "ttl_secs": ttl.as_secs() });
    let v = admin
        .call(Method::POST, "/v1/cluster/tokens", Some(body))
        .await?;
    let token = v["token"]
        .as_str()
        .ok_or_else(|| anyhow!("the node answered without a token: {v}"))?;
    match output {
        Output::Json => println!("{v}"),
        Output::Table => println!("{token}"),
    }
    Ok(())
}

/// Removes a member.
pub async fn remove(admin: &Admin, id: u64, output: Output) -> anyhow::Result<()> {
    let v = remove_member(admin, id).await?;
    match output {
        Output::Json => println!("{v}"),
        Output::Table => println!("node {id} removed from the cluster"),
    }
    Ok(())
}

/// Asks the node behind `admin` to remove member `id` (forwarded to the leader).
async fn remove_member(admin: &Admin, id: u64) -> anyhow::Result<Value> {
    admin
        .call(
            Method::POST,
            &format!("/v1/cluster/members/{id}/remove"),
            None,
        )
        .await
}

/// Takes the node behind `admin` out of the cluster.
pub async fn leave(admin: &Admin, output: Output) -> anyhow::Result<()> {
    let v = admin.call(Method::GET, "/v1/cluster", None).await?;
    let id = v["id"]
        .as_u64()
        .ok_or_else(|| anyhow!("the node did not say its id: {v}"))?;
    let r = remove_member(admin, id).await?;
    match output {
        Output::Json => println!("{r}"),
        Output::Table => println!(
            "node {id} left the cluster; stop it now (its data dir no longer belongs to the \
             cluster: join again with a new token and an empty data dir)"
        ),
    }
    Ok(())
}

/// Hands leadership to voter `to` (or the most caught-up one) and prints the new leader.
pub async fn transfer(admin: &Admin, to: Option<u64>, output: Output) -> anyhow::Result<()> {
    let body = to.map(|id| json!({ "to": id }));
    // The node's errors already say what to do next (retry, another voter, ...).
    let v = admin
        .call(Method::POST, "/v1/cluster/transfer-leader", body)
        .await?;
    match output {
        Output::Json => println!("{v}"),
        Output::Table => println!("{}", transfer_line(&v)),
    }
    Ok(())
}

/// The one line `transfer-leader` prints: who leads now, and where its admin API is.
fn transfer_line(v: &Value) -> String {
    let leader = &v["leader"];
    let id = cell(&leader["id"]);
    let moved = v["previous"] != leader["id"];
    let verb = if moved {
        "is now the leader"
    } else {
        "already was the leader"
    };
    format!("node {id} {verb} (admin {})", cell(&leader["admin_addr"]))
}

/// Parses a duration like `600`, `30s`, `10m`, `2h` or `1d` (bare numbers are seconds).
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration; use e.g. 600, 30s, 10m, 2h or 1d"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}; use s, m, h or d")),
    };
    n.checked_mul(mult)
        .filter(|secs| *secs > 0)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} must be a positive duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("600"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_ttl("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_ttl("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_ttl("0").is_err());
        assert!(parse_ttl("5y").is_err());
        assert!(parse_ttl("m").is_err());
    }

    #[test]
    fn transfer_names_the_new_leader() {
        let v = json!({ "leader": { "id": 2, "admin_addr": "10.0.0.2:8060" }, "previous": 1 });
        assert_eq!(
            transfer_line(&v),
            "node 2 is now the leader (admin 10.0.0.2:8060)"
        );
        let v = json!({ "leader": { "id": 2, "admin_addr": "" }, "previous": 2 });
        assert_eq!(transfer_line(&v), "node 2 already was the leader (admin -)");
    }

    #[test]
    fn table_lists_members_and_progress() {
        let v = json!({
            "id": 1, "role": "leader", "term": 2, "committed": 5, "applied": 5,
            "leader": { "id": 1, "admin_addr": "127.0.0.1:8060" },
            "members": [{ "id": 1, "raft_addr": "127.0.0.1:7000", "admin_addr": "127.0.0.1:8060",
                          "role": "voter", "matched": 5, "lag": 0 }],
        });
        let t = status_table(&v);
        assert!(t.contains("127.0.0.1:7000") && t.contains("voter"), "{t}");
        assert!(t.contains("leader:    1 (admin 127.0.0.1:8060)"), "{t}");
    }
}
