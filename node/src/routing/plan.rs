//! What it takes to turn the running PBX into a declared one (`switchctl apply -f`):
//! the changes, each based on the version it was computed from, so applying them all
//! at once is refused if someone changed the PBX in between.

use super::{Extension, PbxSeed};
use crate::store::{Command, Expect};
use serde::Serialize;
use std::collections::BTreeMap;

/// One change of the plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum Change {
    /// An extension the PBX lacks.
    Create {
        /// Its number.
        number: String,
        /// The fields it sets (never their values: passwords stay out of plans).
        fields: Vec<&'static str>,
        /// What to write.
        #[serde(skip)]
        extension: Extension,
    },
    /// An extension that differs.
    Update {
        /// Its number.
        number: String,
        /// The version the change is based on.
        version: u64,
        /// The fields that change.
        fields: Vec<&'static str>,
        /// What to write.
        #[serde(skip)]
        extension: Extension,
    },
    /// An extension the description does not list.
    Remove {
        /// Its number.
        number: String,
        /// The version the removal is based on.
        version: u64,
    },
}

impl Change {
    /// The replicated command that makes this change, conditional on its version.
    pub fn command(&self) -> Command {
        match self {
            Change::Create { extension, .. } => Command::PutExtension {
                extension: extension.clone(),
                expect: Expect::Absent,
            },
            Change::Update {
                extension, version, ..
            } => Command::PutExtension {
                extension: extension.clone(),
                expect: Expect::Version(*version),
            },
            Change::Remove { number, version } => Command::RemoveExtension {
                number: number.clone(),
                expect: Expect::Version(*version),
            },
        }
    }
}

/// The fields in which `a` and `b` differ (all set fields when `a` is `None`).
fn differing(a: Option<&Extension>, b: &Extension) -> Vec<&'static str> {
    let empty = Extension {
        number: b.number.clone(),
        name: String::new(),
        password: String::new(),
        max_contacts: None,
        trusted_ips: Vec::new(),
    };
    let a = a.unwrap_or(&empty);
    let mut out = Vec::new();
    if a.name != b.name {
        out.push("name");
    }
    if a.password != b.password {
        out.push("password");
    }
    if a.max_contacts != b.max_contacts {
        out.push("max_contacts");
    }
    if a.trusted_ips != b.trusted_ips {
        out.push("trusted_ips");
    }
    out
}

/// The changes from `running` (extensions with their versions) to `wanted`, in number
/// order; with `prune`, extensions `wanted` does not list are removed.
pub fn plan(running: &[(Extension, u64)], wanted: &PbxSeed, prune: bool) -> Vec<Change> {
    let now: BTreeMap<&str, &(Extension, u64)> =
        running.iter().map(|r| (r.0.number.as_str(), r)).collect();
    let want: BTreeMap<&str, &Extension> = wanted
        .extensions
        .iter()
        .map(|e| (e.number.as_str(), e))
        .collect();
    let mut out = Vec::new();
    for (number, e) in &want {
        match now.get(number) {
            None => out.push(Change::Create {
                number: number.to_string(),
                fields: differing(None, e),
                extension: (*e).clone(),
            }),
            Some((current, version)) if current != *e => out.push(Change::Update {
                number: number.to_string(),
                version: *version,
                fields: differing(Some(current), e),
                extension: (*e).clone(),
            }),
            Some(_) => {}
        }
    }
    if prune {
        for (number, (_, version)) in &now {
            if !want.contains_key(number) {
                out.push(Change::Remove {
                    number: number.to_string(),
                    version: *version,
                });
            }
        }
        out.sort_by(|a, b| key(a).cmp(key(b)));
    }
    out
}

fn key(c: &Change) -> &str {
    match c {
        Change::Create { number, .. }
        | Change::Update { number, .. }
        | Change::Remove { number, .. } => number,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(number: &str, name: &str, password: &str) -> Extension {
        Extension {
            number: number.into(),
            name: name.into(),
            password: password.into(),
            max_contacts: None,
            trusted_ips: vec![],
        }
    }

    #[test]
    fn creates_updates_and_removes_in_number_order() {
        let running = vec![
            (ext("1001", "Ann", "secret1"), 3),
            (ext("1002", "Bob", "secret2"), 1),
            (ext("1003", "Cy", "secret3"), 7),
        ];
        let wanted = PbxSeed {
            extensions: vec![
                ext("1004", "Di", "secret4"),
                ext("1002", "Bob", "changed2"),
                ext("1001", "Ann", "secret1"),
            ],
        };
        let p = plan(&running, &wanted, true);
        let shown = serde_json::to_value(&p).unwrap();
        assert_eq!(
            shown,
            serde_json::json!([
                {"action": "update", "number": "1002", "version": 1, "fields": ["password"]},
                {"action": "remove", "number": "1003", "version": 7},
                {"action": "create", "number": "1004", "fields": ["name", "password"]},
            ])
        );
        assert!(
            !shown.to_string().contains("changed2"),
            "no password in a plan"
        );
        assert!(matches!(
            p[0].command(),
            Command::PutExtension { extension, expect: Expect::Version(1) }
                if extension == ext("1002", "Bob", "changed2")
        ));
        assert!(matches!(
            p[1].command(),
            Command::RemoveExtension { number, expect: Expect::Version(7) } if number == "1003"
        ));
        assert!(matches!(
            p[2].command(),
            Command::PutExtension {
                expect: Expect::Absent,
                ..
            }
        ));
        // Without prune the unlisted extension stays.
        let p = plan(&running, &wanted, false);
        assert!(p.iter().all(|c| !matches!(c, Change::Remove { .. })));
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn the_running_pbx_itself_plans_nothing() {
        let running = vec![(ext("1001", "Ann", "secret1"), 3)];
        let wanted = PbxSeed {
            extensions: vec![ext("1001", "Ann", "secret1")],
        };
        assert!(plan(&running, &wanted, true).is_empty());
    }
}
