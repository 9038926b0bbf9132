//! `switchctl apply -f pbx.yaml`: a declarative PBX description compared with the
//! running PBX; the difference is shown, then applied all at once (or, with
//! `--dry-run`, only shown). A second run with the same file changes nothing and
//! says so.

use crate::client::Admin;
use crate::cluster::Output;
use anyhow::Context;
use hyper::Method;
use node::routing::PbxSeed;
use serde_json::Value;
use std::path::Path;

/// How `apply` runs.
#[derive(clap::Args, Debug)]
pub struct ApplyArgs {
    /// The PBX description (YAML, the seed format: `extensions:`); '-' for standard input.
    #[arg(short = 'f', long = "file")]
    pub file: std::path::PathBuf,
    /// Only show what would change.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep extensions the file does not list (by default they are removed).
    #[arg(long)]
    pub keep_unlisted: bool,
}

fn read(file: &Path) -> anyhow::Result<PbxSeed> {
    let text = if file == Path::new("-") {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    PbxSeed::from_yaml(&text)
        .with_context(|| format!("{} is not a valid PBX description", file.display()))
}

/// One line of the plan, `+ 1004  create  name, password`.
fn line(change: &Value) -> String {
    let action = change["action"].as_str().unwrap_or("?");
    let sign = match action {
        "create" => '+',
        "remove" => '-',
        _ => '~',
    };
    let fields: Vec<&str> = change["fields"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let number = change["number"].as_str().unwrap_or("?");
    format!(
        "{sign} extension {number:<15} {action:<7} {}",
        fields.join(", ")
    )
    .trim_end()
    .to_string()
}

/// Plans, shows and (unless a dry run) applies `args.file`.
pub async fn apply(admin: &Admin, args: &ApplyArgs, output: Output) -> anyhow::Result<()> {
    let wanted = read(&args.file)?;
    let path = format!(
        "/v1/pbx?dry_run={}&prune={}",
        args.dry_run, !args.keep_unlisted
    );
    let body = serde_json::to_value(&wanted)?;
    let answer = admin.call(Method::POST, &path, Some(body)).await?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    let changes = answer["changes"].as_array().cloned().unwrap_or_default();
    let name = args.file.display();
    if changes.is_empty() {
        println!("No changes: the running PBX matches {name}.");
        return Ok(());
    }
    for c in &changes {
        println!("{}", line(c));
    }
    let count = |a: &str| changes.iter().filter(|c| c["action"] == a).count();
    let summary = format!(
        "{} to create, {} to update, {} to remove",
        count("create"),
        count("update"),
        count("remove")
    );
    if answer["applied"].as_bool() == Some(true) {
        println!("Applied {name}: {summary}.");
    } else {
        println!("Dry run, nothing applied: {summary}.");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_pbx_file_is_valid() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pbx.yaml");
        let pbx = read(&example).unwrap();
        assert!(pbx.extensions.len() >= 3);
    }

    #[test]
    fn plan_lines_say_what_happens_to_which_extension() {
        let v = serde_json::json!({"action": "create", "number": "1004", "fields": ["name", "password"]});
        assert_eq!(
            line(&v),
            "+ extension 1004            create  name, password"
        );
        let v = serde_json::json!({"action": "remove", "number": "1003", "version": 2});
        assert_eq!(line(&v), "- extension 1003            remove");
    }
}
