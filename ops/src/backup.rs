//! `switchctl backup FILE` and `switchctl restore FILE`: the cluster's replicated state
//! to a file and back, through the admin API (admin role). The file is checked (its
//! SHA-256, its format) here before anything is written or sent.

use crate::client::Admin;
use crate::cluster::Output;
use anyhow::Context;
use bytes::Bytes;
use hyper::Method;
use node::store::backup::{self, BackupHeader};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// A backup or restore of a large state may take this long.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(600);

fn counts(h: &BackupHeader) -> String {
    h.counts
        .iter()
        .map(|(cf, n)| format!("{cf}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn print(
    output: Output,
    verb: &str,
    file: &Path,
    bytes: usize,
    h: &BackupHeader,
) -> anyhow::Result<()> {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "file": file.display().to_string(),
                "bytes": bytes,
                "backup": h,
            }))?
        ),
        Output::Table => println!(
            "{verb} {} ({bytes} bytes): taken {} by node {} (softswitch {}, applied index {}); {}",
            file.display(),
            h.created,
            h.node_id,
            h.version,
            h.applied_index.map_or("-".into(), |i| i.to_string()),
            counts(h)
        ),
    }
    Ok(())
}

/// Writes a backup of the cluster's state to `file` (`-`: standard output). The file is
/// written beside its final name and renamed, owner-only: it holds every password.
pub async fn backup(admin: &Admin, file: &Path, output: Output) -> anyhow::Result<()> {
    let bytes = admin
        .call_raw(Method::GET, "/v1/backup", None, TRANSFER_TIMEOUT)
        .await?;
    let checked = backup::read(&bytes).context("the node sent a backup that does not check")?;
    if file == Path::new("-") {
        std::io::stdout().write_all(&bytes)?;
        return Ok(());
    }
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".switchctl-backup")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    tmp.write_all(&bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(file)
        .with_context(|| format!("cannot write {}", file.display()))?;
    print(output, "wrote", file, bytes.len(), &checked.header)
}

/// Replaces the cluster's state with the backup in `file` (`-`: standard input).
pub async fn restore(admin: &Admin, file: &Path, output: Output) -> anyhow::Result<()> {
    let bytes = if file == Path::new("-") {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
        b
    } else {
        std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    let checked =
        backup::read(&bytes).with_context(|| format!("{} cannot be restored", file.display()))?;
    let len = bytes.len();
    let payload = Some((Bytes::from(bytes), "application/octet-stream"));
    admin
        .call_raw(Method::POST, "/v1/restore", payload, TRANSFER_TIMEOUT)
        .await?;
    print(output, "restored", file, len, &checked.header)
}
