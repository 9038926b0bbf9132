//! Dial plan: which destination a dialled number reaches.
//!
//! This issue routes to extensions only; groups, trunks, apps and time conditions
//! extend [`Destination`] in later issues.

pub mod extensions;
pub mod plan;

pub use extensions::{Extension, PbxSeed};

use std::collections::HashMap;

/// Where a dialled number goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination<'a> {
    /// A local extension.
    Extension(&'a Extension),
    /// Nothing answers to this number.
    NotFound,
}

/// In-memory view of the PBX data the routing needs, rebuilt from the store.
#[derive(Debug, Default, Clone)]
pub struct Directory {
    by_number: HashMap<String, Extension>,
}

impl Directory {
    /// Builds the directory from the stored extensions.
    pub fn new(extensions: impl IntoIterator<Item = Extension>) -> Directory {
        Directory {
            by_number: extensions
                .into_iter()
                .map(|e| (e.number.clone(), e))
                .collect(),
        }
    }

    /// Adds or replaces one extension.
    pub fn upsert(&mut self, ext: Extension) {
        self.by_number.insert(ext.number.clone(), ext);
    }

    /// Removes one extension.
    pub fn remove(&mut self, number: &str) {
        self.by_number.remove(number);
    }

    /// The extension with this number.
    pub fn extension(&self, number: &str) -> Option<&Extension> {
        self.by_number.get(number)
    }

    /// Number of extensions.
    pub fn len(&self) -> usize {
        self.by_number.len()
    }

    /// True when there are no extensions.
    pub fn is_empty(&self) -> bool {
        self.by_number.is_empty()
    }

    /// Routes a dialled number (the Request-URI user part, visual separators removed).
    pub fn route(&self, dialled: &str) -> Destination<'_> {
        let digits: String = dialled
            .chars()
            .filter(|c| !matches!(c, '-' | '.' | '(' | ')' | ' '))
            .collect();
        match self.by_number.get(&digits) {
            Some(e) => Destination::Extension(e),
            None => Destination::NotFound,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_extensions_and_rejects_others() {
        let d = Directory::new(PbxSeed::demo().0.extensions);
        assert!(matches!(d.route("1001"), Destination::Extension(e) if e.number == "1001"));
        assert!(matches!(d.route("10-10"), Destination::Extension(e) if e.number == "1010"));
        assert_eq!(d.route("1011"), Destination::NotFound);
        assert_eq!(d.route(""), Destination::NotFound);
    }
}
