//! Where `switchctl` finds the admin API and its token: the command line, the
//! environment, a config file (`~/.config/switchctl/config.toml` or `--config`), and
//! last a local node's data dir (`<data_dir>/admin-token`, written on its first start).

use anyhow::Context;
use std::path::{Path, PathBuf};

/// The admin API when nothing else names one.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:8060";

/// The config file's content (every key optional).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// The admin API, `host:port`.
    pub admin: Option<String>,
    /// The bearer token.
    pub token: Option<String>,
    /// A file holding the token (e.g. a node's `admin-token`).
    pub token_file: Option<PathBuf>,
}

/// The default config file: `$XDG_CONFIG_HOME/switchctl/config.toml`, else
/// `~/.config/switchctl/config.toml`.
fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("switchctl").join("config.toml"))
}

/// Reads the config file: `explicit` must exist; the default one may be missing.
pub fn load(explicit: Option<&Path>) -> anyhow::Result<File> {
    let (path, required) = match explicit {
        Some(p) => (p.to_path_buf(), true),
        None => match default_path() {
            Some(p) => (p, false),
            None => return Ok(File::default()),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(File::default())
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

fn read_token(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// The token to send: `given` (`--token` or `SWITCHCTL_TOKEN`), else the config file's,
/// else the `admin-token` of `data_dir` (default `./data`, a node's default data dir).
pub fn token(given: Option<String>, file: &File, data_dir: Option<&Path>) -> Option<String> {
    given
        .filter(|t| !t.trim().is_empty())
        .map(|t| t.trim().to_string())
        .or_else(|| file.token.clone())
        .or_else(|| file.token_file.as_deref().and_then(read_token))
        .or_else(|| read_token(&data_dir.unwrap_or(Path::new("./data")).join("admin-token")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_sources_in_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("admin-token"), "from-dir\n").unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, "token = \"from-file\"\nadmin = \"10.0.0.1:8060\"\n").unwrap();
        let file = load(Some(&cfg)).unwrap();
        assert_eq!(file.admin.as_deref(), Some("10.0.0.1:8060"));
        let d = Some(dir.path());
        assert_eq!(token(Some("cli".into()), &file, d).as_deref(), Some("cli"));
        assert_eq!(token(None, &file, d).as_deref(), Some("from-file"));
        assert_eq!(
            token(None, &File::default(), d).as_deref(),
            Some("from-dir")
        );
        assert!(load(Some(&dir.path().join("missing.toml"))).is_err());
        std::fs::write(&cfg, "tokn = 1\n").unwrap();
        assert!(load(Some(&cfg)).is_err(), "unknown keys are refused");
    }
}
