//! Aligned text tables of JSON values, for the people reading `switchctl`'s output.

use serde_json::Value;

/// A JSON value as a table cell: numbers and strings bare, absent as `-`, lists joined.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "-".into(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// One row per item, one column per key under its header, padded to line up.
pub fn columns(header: &[&str], keys: &[&str], items: &[Value]) -> String {
    let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    for item in items {
        rows.push(keys.iter().map(|k| cell(&item[*k])).collect());
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Prints `v` as pretty JSON, or as the table `table` renders of it.
pub fn print(
    output: crate::cluster::Output,
    v: &Value,
    table: impl FnOnce(&Value) -> String,
) -> anyhow::Result<()> {
    match output {
        crate::cluster::Output::Json => println!("{}", serde_json::to_string_pretty(v)?),
        crate::cluster::Output::Table => print!("{}", table(v)),
    }
    Ok(())
}
