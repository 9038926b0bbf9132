//! Restoring a backup through the replicated log: the records arrive in chunks (a
//! backup can be far larger than one log entry should be), are staged in their own
//! column family, and one final command swaps them in atomically on every member. A
//! restore cut off halfway (the admin node died) leaves the live state untouched; the
//! next restore's first chunk clears what it staged.
//!
//! What a restore keeps of the cluster it lands in: the calls in progress (a backup
//! has none), and its API tokens (a backup's tokens are added where the name is
//! free), so the operator restoring keeps access. Versions of configuration objects
//! move past both the cluster's and the backup's, so an edit based on what was there
//! before the restore conflicts instead of overwriting restored data.

use super::backup::Record;
use super::{
    be_u64, decode, handle, StoreError, CFS, CF_BINDINGS, CF_CALLS, CF_CDRS, CF_EXTENSIONS,
    CF_META, CF_TOKENS, CF_VERSIONS, KEY_NEXT_CDR,
};
use super::{Command, Expect, Outcome};
use rocksdb::{IteratorMode, WriteBatch, DB};

/// The staging column family.
pub(super) const CF_RESTORE: &str = "restore";
/// Staged records are keyed by their column family's position in [`CFS`], below this.
const BOOKKEEPING: u8 = 0xff;
const KEY_ID: &[u8] = &[BOOKKEEPING, b'i'];
const KEY_COUNT: &[u8] = &[BOOKKEEPING, b'n'];
/// Above every staged key and the bookkeeping: the end of a whole-range delete.
const END: &[u8] = &[BOOKKEEPING, BOOKKEEPING];

/// The refusal of a chunk or commit that belongs to another (or no) restore.
fn not_this_restore() -> Outcome {
    Outcome::Conflict {
        exists: false,
        version: 0,
    }
}

/// Starts restore `id`: whatever an earlier, unfinished restore staged is dropped.
pub(super) fn begin(db: &DB, batch: &mut WriteBatch, id: &str) -> Result<(), StoreError> {
    let cf = handle(db, CF_RESTORE)?;
    batch.delete_range_cf(cf, [0u8].as_slice(), END);
    batch.put_cf(cf, KEY_ID, id);
    batch.put_cf(cf, KEY_COUNT, 0u64.to_be_bytes());
    Ok(())
}

/// The restore in progress and how many records it staged.
fn progress(db: &DB) -> Result<Option<(String, u64)>, StoreError> {
    let cf = handle(db, CF_RESTORE)?;
    let Some(id) = db.get_cf(cf, KEY_ID)? else {
        return Ok(None);
    };
    let count = db
        .get_cf(cf, KEY_COUNT)?
        .and_then(|v| be_u64(&v))
        .unwrap_or(0);
    Ok(Some((String::from_utf8_lossy(&id).into_owned(), count)))
}

/// Where a record of column family `cf` is staged; `None` for one a restore never
/// writes (calls in progress, or a name this build does not know).
fn staged_key(cf: &str, key: &[u8]) -> Option<Vec<u8>> {
    let index = CFS
        .iter()
        .position(|c| *c == cf && *c != CF_CALLS && *c != CF_RESTORE)?;
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(u8::try_from(index).ok()?);
    k.extend_from_slice(key);
    Some(k)
}

/// Stages `records` for restore `id`; refused (conflict) if `id` is not the restore
/// in progress.
pub(super) fn chunk(
    db: &DB,
    batch: &mut WriteBatch,
    id: &str,
    records: &[Record],
) -> Result<Outcome, StoreError> {
    let Some((current, count)) = progress(db)? else {
        return Ok(not_this_restore());
    };
    if current != id {
        return Ok(not_this_restore());
    }
    let cf = handle(db, CF_RESTORE)?;
    let mut staged = 0u64;
    for r in records {
        // The admin API refuses such records before proposing; skipping keeps every
        // replica's apply the same if one got through.
        if let Some(k) = staged_key(&r.cf, &r.key) {
            batch.put_cf(cf, k, &r.value);
            staged += 1;
        }
    }
    batch.put_cf(cf, KEY_COUNT, (count + staged).to_be_bytes());
    Ok(Outcome::Done)
}

/// Swaps the staged records of restore `id` in, if all `records` of it were staged.
/// `next_cdr` becomes the restored counter; `mirror` gets the extension and binding
/// changes the SIP core keeps in memory.
pub(super) fn commit(
    db: &DB,
    batch: &mut WriteBatch,
    id: &str,
    records: u64,
    next_cdr: &mut u64,
    mut mirror: Option<&mut Vec<Command>>,
) -> Result<Outcome, StoreError> {
    match progress(db)? {
        Some((current, count)) if current == id && count == records => {}
        _ => return Ok(not_this_restore()),
    }
    let mut mirrored = |c: Command| {
        if let Some(m) = mirror.as_deref_mut() {
            m.push(c);
        }
    };
    // Out with the replaced state (tokens and versions are merged below instead).
    let mut old_versions = std::collections::HashMap::new();
    for name in CFS {
        if matches!(name, CF_CALLS | CF_TOKENS | CF_RESTORE) {
            continue;
        }
        let cf = handle(db, name)?;
        for item in db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item?;
            match name {
                CF_EXTENSIONS => mirrored(Command::RemoveExtension {
                    number: String::from_utf8_lossy(&k).into_owned(),
                    expect: Expect::Any,
                }),
                CF_BINDINGS => {
                    let mut parts = k.splitn(2, |b| *b == 0);
                    let aor = String::from_utf8_lossy(parts.next().unwrap_or_default());
                    let contact = String::from_utf8_lossy(parts.next().unwrap_or_default());
                    mirrored(Command::RemoveBinding {
                        aor: aor.into_owned(),
                        contact: contact.into_owned(),
                    });
                }
                CF_VERSIONS => {
                    old_versions.insert(k.to_vec(), version(&v));
                }
                _ => {}
            }
            batch.delete_cf(cf, k);
        }
    }
    // In with the staged records.
    let staging = handle(db, CF_RESTORE)?;
    let mut restored_next_cdr = None;
    let mut last_cdr = 0u64;
    for item in db.iterator_cf(staging, IteratorMode::Start) {
        let (k, v) = item?;
        let Some((&index, key)) = k.split_first() else {
            continue;
        };
        let Some(&name) = CFS.get(usize::from(index)) else {
            continue;
        };
        let cf = handle(db, name)?;
        match name {
            CF_TOKENS if db.get_cf(cf, key)?.is_some() => continue,
            CF_VERSIONS => {
                let merged = old_versions.remove(key).unwrap_or(0).max(version(&v)) + 1;
                batch.put_cf(cf, key, merged.to_be_bytes());
                continue;
            }
            CF_EXTENSIONS => mirrored(Command::PutExtension {
                extension: decode(CF_EXTENSIONS, &v)?,
                expect: Expect::Any,
            }),
            CF_BINDINGS => {
                let binding: crate::registrar::bindings::Binding = decode(CF_BINDINGS, &v)?;
                let aor = key.split(|b| *b == 0).next().unwrap_or_default();
                let aor = String::from_utf8_lossy(aor).into_owned();
                mirrored(Command::PutBinding { aor, binding });
            }
            CF_META if key == KEY_NEXT_CDR => restored_next_cdr = Some(version(&v)),
            CF_CDRS => last_cdr = last_cdr.max(version(key)),
            _ => {}
        }
        batch.put_cf(cf, key, &v);
    }
    // Objects only the replaced state had keep a version past their last one.
    for (k, v) in old_versions {
        batch.put_cf(handle(db, CF_VERSIONS)?, k, (v + 1).to_be_bytes());
    }
    *next_cdr = restored_next_cdr.unwrap_or(last_cdr + 1).max(last_cdr + 1);
    batch.delete_range_cf(staging, [0u8].as_slice(), END);
    Ok(Outcome::Done)
}

/// A big-endian u64 (versions, CDR numbers, counters); 0 if it is not one.
fn version(v: &[u8]) -> u64 {
    be_u64(v).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registrar::bindings::Binding;
    use crate::sip::{Peer, Transport};
    use crate::store::{backup, Role, Store};

    fn ext(number: &str, name: &str) -> crate::routing::Extension {
        crate::routing::Extension {
            name: name.into(),
            ..crate::store::tests::ext(number, "secret1")
        }
    }

    use crate::store::tests::cdr;

    fn put(number: &str, name: &str) -> Command {
        Command::PutExtension {
            extension: ext(number, name),
            expect: Expect::Any,
        }
    }

    fn token(name: &str, hash: &str) -> Command {
        Command::PutApiToken {
            name: name.into(),
            role: Role::Admin,
            hash: hash.into(),
            created: "2026-01-01T00:00:00.000Z".into(),
        }
    }

    fn binding(contact: &str) -> Command {
        Command::PutBinding {
            aor: "2001".into(),
            binding: Binding {
                contact: contact.into(),
                expires_at: 4_000_000_000,
                q: 1.0,
                call_id: "reg".into(),
                cseq: 1,
                source: Peer {
                    transport: Transport::Udp,
                    addr: "192.0.2.1:5060".parse().unwrap(),
                },
                user_agent: None,
            },
        }
    }

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s")).unwrap();
        (dir, s)
    }

    /// Restores `file` into `s` as the admin API does: begin, chunks of two, commit;
    /// answers what the commit said and the mirror it produced.
    fn restore(s: &Store, file: &[u8], id: &str) -> (Outcome, Vec<Command>) {
        let b = backup::read(file).unwrap();
        s.apply(&Command::RestoreBegin { id: id.into() }).unwrap();
        for chunk in b.records.chunks(2) {
            let o = s
                .apply(&Command::RestoreChunk {
                    id: id.into(),
                    records: chunk.to_vec(),
                })
                .unwrap();
            assert_eq!(o, Outcome::Done);
        }
        commit_with_mirror(s, id, b.records.len() as u64)
    }

    fn commit_with_mirror(s: &Store, id: &str, records: u64) -> (Outcome, Vec<Command>) {
        s.apply_mirrored(&Command::RestoreCommit {
            id: id.into(),
            records,
        })
        .unwrap()
    }

    fn backup_of(s: &Store) -> Vec<u8> {
        s.read(|db| backup::write(db, 1, None, "2026-12-03T00:00:00.000Z".into()))
            .unwrap()
    }

    #[test]
    fn a_restore_replaces_the_state_and_keeps_the_clusters_tokens() {
        let (_a, source) = open();
        source
            .apply_all(&[
                put("2001", "Ann"),
                put("2002", "Bob"),
                binding("sip:2001@192.0.2.1"),
                Command::AppendCdr(cdr("c1")),
                Command::AppendCdr(cdr("c2")),
                token("bootstrap", "aaaa"),
                token("billing", "bbbb"),
                Command::MarkSeeded,
            ])
            .unwrap();
        let file = backup_of(&source);

        let (_b, target) = open();
        target
            .apply_all(&[
                put("3001", "Old"),
                put("3001", "Older"),
                binding("sip:3001@192.0.2.9"),
                Command::AppendCdr(cdr("old")),
                token("bootstrap", "cccc"),
            ])
            .unwrap();
        let (outcome, mirror) = restore(&target, &file, "r1");
        assert_eq!(outcome, Outcome::Done);

        assert_eq!(target.extensions().unwrap(), source.extensions().unwrap());
        assert_eq!(target.cdrs().unwrap(), source.cdrs().unwrap());
        assert_eq!(target.bindings().unwrap(), source.bindings().unwrap());
        assert!(target.is_seeded().unwrap());
        // The target's bootstrap token stays; the backup's other token is added.
        let tokens = target.read(crate::store::tokens).unwrap();
        let names: Vec<(&str, &str)> = tokens
            .iter()
            .map(|t| (t.name.as_str(), t.hash.as_str()))
            .collect();
        assert_eq!(names, [("billing", "bbbb"), ("bootstrap", "cccc")]);
        // Versions move past both: an edit based on either side's version conflicts.
        let v = |n: &str| {
            target
                .read(|db| crate::store::extension(db, n))
                .unwrap()
                .map(|(_, v)| v)
        };
        assert_eq!(v("2001"), Some(2));
        let edit = target
            .apply(&Command::PutExtension {
                extension: ext("3001", "x"),
                expect: Expect::Version(2),
            })
            .unwrap();
        assert!(matches!(
            edit,
            Outcome::Conflict {
                exists: false,
                version: 3
            }
        ));
        // The SIP core is told to drop the old and take the restored.
        assert!(mirror
            .iter()
            .any(|c| matches!(c, Command::RemoveExtension { number, .. } if number == "3001")));
        assert!(mirror.iter().any(|c| matches!(c, Command::RemoveBinding { contact, .. } if contact == "sip:3001@192.0.2.9")));
        assert!(mirror.iter().any(
            |c| matches!(c, Command::PutExtension { extension, .. } if extension.number == "2002")
        ));
        assert!(mirror
            .iter()
            .any(|c| matches!(c, Command::PutBinding { aor, .. } if aor == "2001")));
        // CDR numbering goes on after the restored ones.
        target.apply(&Command::AppendCdr(cdr("c3"))).unwrap();
        let after: Vec<String> = target
            .cdrs()
            .unwrap()
            .into_iter()
            .map(|c| c.call_id)
            .collect();
        assert_eq!(after, ["c1", "c2", "c3"]);
        // And the staging is empty again.
        let staged = target.read(|db| {
            db.iterator_cf(db.cf_handle(CF_RESTORE).unwrap(), IteratorMode::Start)
                .count()
        });
        assert_eq!(staged, 0);
    }

    #[test]
    fn an_incomplete_or_superseded_restore_changes_nothing() {
        let (_a, source) = open();
        source
            .apply_all(&[put("2001", "Ann"), Command::AppendCdr(cdr("c1"))])
            .unwrap();
        let file = backup_of(&source);
        let b = backup::read(&file).unwrap();
        let (_b, target) = open();
        target.apply(&put("3001", "Old")).unwrap();
        let before = target.extensions().unwrap();

        // A chunk or commit without a begin is refused.
        let chunk = Command::RestoreChunk {
            id: "r1".into(),
            records: b.records.clone(),
        };
        assert!(matches!(
            target.apply(&chunk).unwrap(),
            Outcome::Conflict { .. }
        ));
        // Records missing: the commit is refused and the state untouched.
        target
            .apply(&Command::RestoreBegin { id: "r1".into() })
            .unwrap();
        target
            .apply(&Command::RestoreChunk {
                id: "r1".into(),
                records: b.records[..1].to_vec(),
            })
            .unwrap();
        let (o, mirror) = commit_with_mirror(&target, "r1", b.records.len() as u64);
        assert!(matches!(o, Outcome::Conflict { .. }));
        assert!(mirror.is_empty());
        assert_eq!(target.extensions().unwrap(), before);
        // A newer restore supersedes: the old one's chunks and commit are refused.
        target
            .apply(&Command::RestoreBegin { id: "r2".into() })
            .unwrap();
        assert!(matches!(
            target.apply(&chunk).unwrap(),
            Outcome::Conflict { .. }
        ));
        let (o, _) = commit_with_mirror(&target, "r1", 0);
        assert!(matches!(o, Outcome::Conflict { .. }));
        assert_eq!(target.extensions().unwrap(), before);
        // ...and the newer one, complete, lands.
        let (o, _) = restore(&target, &file, "r3");
        assert_eq!(o, Outcome::Done);
        assert_eq!(target.extensions().unwrap(), source.extensions().unwrap());
    }
}
