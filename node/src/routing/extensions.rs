//! Extensions and the YAML seed the PBX data is loaded from at first start.

use rand::Rng;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::Path;

/// A phone number owned by a user: credentials and per-extension limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extension {
    /// Dialled number and SIP user name (digits, 2 to 15 of them).
    pub number: String,
    /// Caller name shown to the called party.
    #[serde(default)]
    pub name: String,
    /// SIP digest password.
    pub password: String,
    /// Most registered contacts; unset = `registrar.max_contacts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_contacts: Option<usize>,
    /// Source addresses trusted without digest for calls from this extension
    /// (IP-authenticated endpoints such as a PBX or a test rig).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_ips: Vec<IpAddr>,
}

impl Extension {
    /// Checks the extension's own fields; the error names the field and the rule.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if !(2..=15).contains(&self.number.len())
            || !self.number.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(("number", "must be 2 to 15 digits"));
        }
        if self.password.len() < 4 {
            return Err(("password", "must be at least 4 characters"));
        }
        if self.max_contacts == Some(0) {
            return Err(("max_contacts", "must be positive"));
        }
        Ok(())
    }
}

/// The PBX data file (`pbx.seed`): `extensions:` and, in later issues, the rest of the PBX.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PbxSeed {
    /// Extensions to create.
    #[serde(default)]
    pub extensions: Vec<Extension>,
}

/// Why a seed file was refused; names the entry and field.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// Unreadable file.
    #[error("cannot read PBX seed {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// YAML syntax or unknown field.
    #[error("invalid PBX seed: {0}")]
    Parse(String),
    /// A value that breaks a rule.
    #[error("invalid PBX seed: extensions[{index}].{field}: {reason}")]
    Invalid {
        /// Position in the list.
        index: usize,
        /// Field name.
        field: &'static str,
        /// The rule broken.
        reason: String,
    },
}

impl PbxSeed {
    /// Reads and validates a YAML seed file.
    pub fn load(path: &Path) -> Result<PbxSeed, SeedError> {
        let text = std::fs::read_to_string(path).map_err(|source| SeedError::Read {
            path: path.display().to_string(),
            source,
        })?;
        PbxSeed::from_yaml(&text)
    }

    /// Parses and validates YAML text.
    pub fn from_yaml(text: &str) -> Result<PbxSeed, SeedError> {
        let seed: PbxSeed =
            serde_yaml::from_str(text).map_err(|e| SeedError::Parse(e.to_string()))?;
        seed.validate()?;
        Ok(seed)
    }

    /// Checks numbers, passwords and uniqueness.
    pub fn validate(&self) -> Result<(), SeedError> {
        let mut seen = std::collections::HashSet::new();
        for (index, e) in self.extensions.iter().enumerate() {
            let bad = |field, reason: &str| SeedError::Invalid {
                index,
                field,
                reason: reason.to_string(),
            };
            if let Err((field, reason)) = e.validate() {
                return Err(bad(field, reason));
            }
            if !seen.insert(e.number.as_str()) {
                return Err(bad("number", "duplicate extension number"));
            }
        }
        Ok(())
    }

    /// The demo PBX: extensions 1001-1010 with fresh random passwords; also returns
    /// the credentials as text for the operator.
    pub fn demo() -> (PbxSeed, String) {
        let mut rng = rand::thread_rng();
        let mut text = String::from("# demo extensions generated at first start\n");
        let extensions = (1001..=1010)
            .map(|n| {
                let password: String = (0..12)
                    .map(|_| {
                        const ALPHABET: &[u8] =
                            b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
                        ALPHABET[rng.gen_range(0..ALPHABET.len())] as char
                    })
                    .collect();
                text.push_str(&format!("{n} {password}\n"));
                Extension {
                    number: n.to_string(),
                    name: format!("Extension {n}"),
                    password,
                    max_contacts: None,
                    trusted_ips: vec![],
                }
            })
            .collect();
        (PbxSeed { extensions }, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_bad_fields() {
        let s = PbxSeed::from_yaml(
            "extensions:\n  - number: \"1001\"\n    password: secret1\n    trusted_ips: [\"127.0.0.1\"]\n",
        )
        .unwrap();
        assert_eq!(s.extensions[0].trusted_ips.len(), 1);
        let e = PbxSeed::from_yaml("extensions:\n  - number: \"10a\"\n    password: secret1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("extensions[0].number"), "{e}");
        let e = PbxSeed::from_yaml("extensions:\n  - number: \"1001\"\n    pasword: x\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("pasword"), "{e}");
        let e = PbxSeed::from_yaml(
            "extensions:\n  - {number: \"1001\", password: secret1}\n  - {number: \"1001\", password: secret2}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("duplicate"), "{e}");
    }

    #[test]
    fn demo_has_ten_distinct_passwords() {
        let (seed, text) = PbxSeed::demo();
        assert_eq!(seed.extensions.len(), 10);
        seed.validate().unwrap();
        assert_eq!(text.lines().count(), 11);
        let mut pw: Vec<_> = seed.extensions.iter().map(|e| &e.password).collect();
        pw.dedup();
        assert_eq!(pw.len(), 10);
    }
}
