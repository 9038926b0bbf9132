//! The node's durable state in RocksDB, changed only through typed [`Command`]s.
//!
//! Every change goes through [`Store::apply`], so the consensus issue can replicate the
//! same commands through Raft and apply them here on every member.

mod access;
pub mod backup;
mod cdr_index;
mod restore;
mod versions;

use crate::calls::cdr::Cdr;
use crate::calls::record::CallRecord;
use crate::registrar::bindings::Binding;
use crate::routing::Extension;
pub use access::{audit, token_by_hash, tokens, ApiToken, AuditEntry, Role, AUDIT_KEPT};
use access::{CF_AUDIT, CF_TOKENS};
pub use cdr_index::cdrs_between;
use cdr_index::CF_CDR_TIME;
use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, DB};
use std::path::Path;
use std::sync::Mutex;
pub use versions::{Expect, Outcome};
use versions::{Versions, CF_VERSIONS};

const CF_META: &str = "meta";
const CF_EXTENSIONS: &str = "extensions";
const CF_BINDINGS: &str = "bindings";
const CF_CDRS: &str = "cdrs";
const CF_CALLS: &str = "calls";
/// The column families of the node's state.
pub const CFS: [&str; 10] = [
    CF_META,
    CF_EXTENSIONS,
    CF_BINDINGS,
    CF_CDRS,
    CF_CALLS,
    CF_VERSIONS,
    CF_TOKENS,
    CF_AUDIT,
    restore::CF_RESTORE,
    // After the others: a restore stages records by their column family's position.
    CF_CDR_TIME,
];
const KEY_SEEDED: &[u8] = b"seeded";
const KEY_NEXT_CDR: &[u8] = b"next_cdr";

/// A change to the replicated state.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Command {
    /// Create or replace an extension, if it is as `expect` says.
    PutExtension {
        /// The extension's new content.
        extension: Extension,
        /// What the write was based on.
        expect: Expect,
    },
    /// Delete an extension, if it is as `expect` says.
    RemoveExtension {
        /// Its number.
        number: String,
        /// What the delete was based on.
        expect: Expect,
    },
    /// Add or refresh a registration binding of an address of record.
    PutBinding {
        /// Address of record (extension number).
        aor: String,
        /// The binding.
        binding: Binding,
    },
    /// Remove one binding.
    RemoveBinding {
        /// Address of record.
        aor: String,
        /// Contact URI of the binding.
        contact: String,
    },
    /// Append a call detail record.
    AppendCdr(Cdr),
    /// A call started ringing.
    StartCall(Box<CallRecord>),
    /// A call was answered: its record, now with the answer time and both dialogs.
    AnswerCall(Box<CallRecord>),
    /// A call ended (its CDR is appended by the same write).
    EndCall {
        /// Call-ID of the caller's leg.
        call_id: String,
    },
    /// Record that the PBX seed was loaded, so it is never loaded twice.
    MarkSeeded,
    /// Create an admin API token (refused, [`Outcome::Conflict`], if the name is taken).
    PutApiToken {
        /// Unique name.
        name: String,
        /// What it may do.
        role: Role,
        /// SHA-256 of the token, lowercase hex: the token itself is never stored.
        hash: String,
        /// When it was created (RFC 3339, UTC).
        created: String,
    },
    /// Revoke an admin API token ([`Outcome::Conflict`] if there is none by that name).
    RemoveApiToken {
        /// Its name.
        name: String,
    },
    /// Record a change made through the admin API.
    AppendAudit(Box<AuditEntry>),
    /// Several commands applied atomically: one replicated log entry for the binding
    /// changes of many REGISTERs.
    Batch(Vec<Command>),
    /// Configuration changes applied all together or, if any one's expectation fails,
    /// not at all (answering that one's conflict): `switchctl apply`.
    AllOrNothing(Vec<Command>),
    /// Start restoring a backup (see [`restore`]): drops what an unfinished restore staged.
    RestoreBegin {
        /// Names this restore; its chunks and commit must carry it.
        id: String,
    },
    /// Stage records of the backup being restored.
    RestoreChunk {
        /// The restore's id.
        id: String,
        /// Records of the backup.
        records: Vec<backup::Record>,
    },
    /// Replace the state with the staged backup, atomically.
    RestoreCommit {
        /// The restore's id.
        id: String,
        /// How many records were staged; the commit is refused if fewer arrived.
        records: u64,
    },
}

impl Command {
    /// The changes [`stage`] mirrored, as one command for the SIP core; `None` if there
    /// were none.
    pub fn from_mirror(mut mirror: Vec<Command>) -> Option<Command> {
        match mirror.len() {
            0 => None,
            1 => mirror.pop(),
            _ => Some(Command::Batch(mirror)),
        }
    }
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB failed.
    #[error("store: {0}")]
    Db(#[from] rocksdb::Error),
    /// A stored value could not be decoded.
    #[error("store: corrupt {cf} record: {reason}")]
    Corrupt {
        /// Column family.
        cf: &'static str,
        /// Decoder message.
        reason: String,
    },
    /// A column family is missing (a store written by something else).
    #[error("store: missing column family {0}")]
    MissingCf(&'static str),
}

/// The RocksDB store of one node.
pub struct Store {
    db: DB,
    /// The next CDR number; the lock also makes a version check and the write it
    /// allows one step, as applying one log entry at a time does in a cluster.
    next_cdr: Mutex<u64>,
}

fn binding_key(aor: &str, contact: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(aor.len() + contact.len() + 1);
    k.extend_from_slice(aor.as_bytes());
    k.push(0);
    k.extend_from_slice(contact.as_bytes());
    k
}

impl Store {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let mut opts = base_options();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = CFS
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(*n, base_options()));
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        // A local store indexes the CDRs an older build wrote before it answers queries.
        cdr_index::index_older_cdrs(&db)?;
        Store::with_db(db)
    }

    /// Opens a running node's store read-only as a RocksDB secondary (for `switchctl`).
    pub fn open_secondary(dir: &Path, scratch: &Path) -> Result<Store, StoreError> {
        let mut opts = base_options();
        opts.set_max_open_files(-1);
        let cfs = CFS
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(*n, base_options()));
        let db = DB::open_cf_descriptors_as_secondary(&opts, dir, scratch, cfs)?;
        db.try_catch_up_with_primary()?;
        Store::with_db(db)
    }

    fn with_db(db: DB) -> Result<Store, StoreError> {
        let next = next_cdr_number(&db)?;
        Ok(Store {
            db,
            next_cdr: Mutex::new(next),
        })
    }

    /// Applies one command and returns what it answered.
    pub fn apply(&self, cmd: &Command) -> Result<Outcome, StoreError> {
        self.apply_all(std::slice::from_ref(cmd))
    }

    /// Applies several commands atomically (one RocksDB write batch); answers what the
    /// last one did.
    pub fn apply_all(&self, cmds: &[Command]) -> Result<Outcome, StoreError> {
        self.apply_staged(cmds, None)
    }

    /// Applies one command and answers, besides what it did, the changes the SIP core
    /// mirrors in memory (see [`stage`]).
    pub fn apply_mirrored(&self, cmd: &Command) -> Result<(Outcome, Vec<Command>), StoreError> {
        let mut mirror = Vec::new();
        let outcome = self.apply_staged(std::slice::from_ref(cmd), Some(&mut mirror))?;
        Ok((outcome, mirror))
    }

    fn apply_staged(
        &self,
        cmds: &[Command],
        mirror: Option<&mut Vec<Command>>,
    ) -> Result<Outcome, StoreError> {
        let mut next_cdr = self.next_cdr.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = WriteBatch::default();
        let mut next = *next_cdr;
        let outcome = stage(&self.db, &mut batch, cmds, &mut next, mirror)?;
        self.db.write(batch)?;
        *next_cdr = next;
        Ok(outcome)
    }

    /// Runs `f` on the store's database (the free readers below take it).
    pub fn read<T>(&self, f: impl FnOnce(&DB) -> T) -> T {
        f(&self.db)
    }

    /// True once the PBX seed has been loaded.
    pub fn is_seeded(&self) -> Result<bool, StoreError> {
        is_seeded(&self.db)
    }

    /// Every extension.
    pub fn extensions(&self) -> Result<Vec<Extension>, StoreError> {
        extensions(&self.db)
    }

    /// Every binding with its address of record.
    pub fn bindings(&self) -> Result<Vec<(String, Binding)>, StoreError> {
        bindings(&self.db)
    }

    /// Every CDR, oldest first.
    pub fn cdrs(&self) -> Result<Vec<Cdr>, StoreError> {
        cdrs(&self.db)
    }
}

// Readers over any database holding the node's column families: this node's own
// store, or the replicated state machine's.

/// True once the PBX seed has been loaded.
pub fn is_seeded(db: &DB) -> Result<bool, StoreError> {
    let meta = handle(db, CF_META)?;
    Ok(db.get_cf(meta, KEY_SEEDED)?.is_some())
}

/// Every extension.
pub fn extensions(db: &DB) -> Result<Vec<Extension>, StoreError> {
    scan(db, CF_EXTENSIONS, |_, v| Ok(v))
}

/// Every extension with its version, in number order.
pub fn versioned_extensions(db: &DB) -> Result<Vec<(Extension, u64)>, StoreError> {
    extensions(db)?
        .into_iter()
        .map(|e| {
            let v = versions::version_of(db, CF_EXTENSIONS, &e.number)?.unwrap_or(0);
            Ok((e, v))
        })
        .collect()
}

/// One extension with its version.
pub fn extension(db: &DB, number: &str) -> Result<Option<(Extension, u64)>, StoreError> {
    let cf = handle(db, CF_EXTENSIONS)?;
    let Some(raw) = db.get_pinned_cf(cf, number)? else {
        return Ok(None);
    };
    let e = decode(CF_EXTENSIONS, &raw)?;
    let v = versions::version_of(db, CF_EXTENSIONS, number)?.unwrap_or(0);
    Ok(Some((e, v)))
}

/// Every call in progress in the cluster (or on this node, standalone).
pub fn calls(db: &DB) -> Result<Vec<CallRecord>, StoreError> {
    scan(db, CF_CALLS, |_, v| Ok(v))
}

/// Every binding with its address of record.
pub fn bindings(db: &DB) -> Result<Vec<(String, Binding)>, StoreError> {
    scan(db, CF_BINDINGS, |k, v| {
        let aor = k.split(|b| *b == 0).next().unwrap_or_default();
        Ok((String::from_utf8_lossy(aor).into_owned(), v))
    })
}

/// Every CDR, oldest first.
pub fn cdrs(db: &DB) -> Result<Vec<Cdr>, StoreError> {
    scan(db, CF_CDRS, |_, v| Ok(v))
}

fn scan<T: serde::de::DeserializeOwned, R>(
    db: &DB,
    cf: &'static str,
    f: impl Fn(&[u8], T) -> Result<R, StoreError>,
) -> Result<Vec<R>, StoreError> {
    let mut out = Vec::new();
    for item in db.iterator_cf(handle(db, cf)?, IteratorMode::Start) {
        let (k, v) = item?;
        out.push(f(&k, decode(cf, &v)?)?);
    }
    Ok(out)
}

fn decode<T: serde::de::DeserializeOwned>(cf: &'static str, raw: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(raw).map_err(|e| StoreError::Corrupt {
        cf,
        reason: e.to_string(),
    })
}

/// Stages `cmds` into `batch` against the column families of `db`: the one place that
/// knows how a command changes the stored state, for this node's own store and for the
/// replicated state machine alike. CDRs are numbered from `next_cdr` (advanced here), and
/// the next number is written with them so a replica that applies the same commands
/// numbers them the same way. Answers what the last command did; a configuration write
/// whose expectation fails is left out (and answered [`Outcome::Conflict`]).
///
/// With `mirror`, the staged binding and extension changes (what the SIP core keeps in
/// memory; refused ones not) are also copied there.
pub fn stage(
    db: &DB,
    batch: &mut WriteBatch,
    cmds: &[Command],
    next_cdr: &mut u64,
    mirror: Option<&mut Vec<Command>>,
) -> Result<Outcome, StoreError> {
    let cdrs_before = *next_cdr;
    let mut st = Staging {
        versions: Versions::default(),
        mirror,
        next_audit: None,
    };
    let outcome = stage_each(db, batch, cmds, next_cdr, &mut st)?;
    if *next_cdr != cdrs_before {
        let meta = handle(db, CF_META)?;
        batch.put_cf(meta, KEY_NEXT_CDR, next_cdr.to_be_bytes());
        cdr_index::stage_progress(db, batch, cmds, cdrs_before)?;
    }
    Ok(outcome)
}

/// What staging carries from one command to the next.
struct Staging<'a> {
    versions: Versions,
    mirror: Option<&'a mut Vec<Command>>,
    /// The next audit number once an earlier command of the write numbered one.
    next_audit: Option<u64>,
}

fn stage_each(
    db: &DB,
    batch: &mut WriteBatch,
    cmds: &[Command],
    next_cdr: &mut u64,
    st: &mut Staging<'_>,
) -> Result<Outcome, StoreError> {
    let cf = |name: &'static str| handle(db, name);
    let mut outcome = Outcome::Done;
    for cmd in cmds {
        outcome = Outcome::Done;
        let mut mirrored = false;
        match cmd {
            Command::PutExtension { extension, expect } => {
                let id = &extension.number;
                outcome = match st
                    .versions
                    .advance(db, batch, CF_EXTENSIONS, id, *expect, true)?
                {
                    Ok(v) => {
                        batch.put_cf(cf(CF_EXTENSIONS)?, id, encode(extension));
                        mirrored = true;
                        Outcome::Version(v)
                    }
                    Err(conflict) => conflict,
                };
            }
            Command::RemoveExtension { number, expect } => {
                outcome =
                    match st
                        .versions
                        .advance(db, batch, CF_EXTENSIONS, number, *expect, false)?
                    {
                        Ok(v) => {
                            batch.delete_cf(cf(CF_EXTENSIONS)?, number);
                            mirrored = true;
                            Outcome::Version(v)
                        }
                        Err(conflict) => conflict,
                    };
            }
            Command::PutBinding { aor, binding } => {
                batch.put_cf(
                    cf(CF_BINDINGS)?,
                    binding_key(aor, &binding.contact),
                    encode(binding),
                );
                mirrored = true;
            }
            Command::RemoveBinding { aor, contact } => {
                batch.delete_cf(cf(CF_BINDINGS)?, binding_key(aor, contact));
                mirrored = true;
            }
            Command::AppendCdr(c) => {
                batch.put_cf(cf(CF_CDRS)?, next_cdr.to_be_bytes(), encode(c));
                cdr_index::stage_entry(db, batch, *next_cdr, c)?;
                *next_cdr += 1;
            }
            // The answered record replaces the ringing one whole, so the two commands
            // need no read and may share a batch.
            Command::StartCall(r) | Command::AnswerCall(r) => {
                batch.put_cf(cf(CF_CALLS)?, &r.call_id, encode(r))
            }
            Command::EndCall { call_id } => batch.delete_cf(cf(CF_CALLS)?, call_id),
            Command::MarkSeeded => batch.put_cf(cf(CF_META)?, KEY_SEEDED, b"1"),
            Command::PutApiToken {
                name,
                role,
                hash,
                created,
            } => {
                let token = ApiToken {
                    name: name.clone(),
                    role: *role,
                    hash: hash.clone(),
                    created: created.clone(),
                };
                if !access::put_token(db, batch, &token)? {
                    outcome = Outcome::Conflict {
                        exists: true,
                        version: 0,
                    };
                }
            }
            Command::RemoveApiToken { name } => {
                if !access::remove_token(db, batch, name)? {
                    outcome = Outcome::Conflict {
                        exists: false,
                        version: 0,
                    };
                }
            }
            Command::AppendAudit(entry) => {
                access::append_audit(db, batch, entry, &mut st.next_audit)?
            }
            Command::Batch(inner) => {
                outcome = stage_each(db, batch, inner, next_cdr, st)?;
            }
            Command::AllOrNothing(inner) => {
                outcome = match first_conflict(db, inner, *next_cdr, st)? {
                    Some(conflict) => conflict,
                    None => stage_each(db, batch, inner, next_cdr, st)?,
                };
            }
            Command::RestoreBegin { id } => restore::begin(db, batch, id)?,
            Command::RestoreChunk { id, records } => {
                outcome = restore::chunk(db, batch, id, records)?
            }
            Command::RestoreCommit { id, records } => {
                outcome =
                    restore::commit(db, batch, id, *records, next_cdr, st.mirror.as_deref_mut())?;
                // Numbering restarts from the restored log.
                st.next_audit = None;
            }
        }
        if let (true, Some(m)) = (mirrored, st.mirror.as_deref_mut()) {
            m.push(cmd.clone());
        }
    }
    Ok(outcome)
}

/// The conflict the first of `cmds` to be refused answers, staged in a scratch batch
/// on a copy of the staging state (so nothing of the trial is kept).
fn first_conflict(
    db: &DB,
    cmds: &[Command],
    mut next_cdr: u64,
    st: &Staging<'_>,
) -> Result<Option<Outcome>, StoreError> {
    let mut trial = Staging {
        versions: st.versions.clone(),
        mirror: None,
        next_audit: st.next_audit,
    };
    let mut scratch = WriteBatch::default();
    for cmd in cmds {
        let o = stage_each(
            db,
            &mut scratch,
            std::slice::from_ref(cmd),
            &mut next_cdr,
            &mut trial,
        )?;
        if matches!(o, Outcome::Conflict { .. }) {
            return Ok(Some(o));
        }
    }
    Ok(None)
}

/// The number the next CDR gets in `db`: the stored counter, or for a store written
/// before the counter existed, one past the last CDR key.
pub fn next_cdr_number(db: &DB) -> Result<u64, StoreError> {
    let meta = handle(db, CF_META)?;
    if let Some(n) = db.get_cf(meta, KEY_NEXT_CDR)?.and_then(|v| be_u64(&v)) {
        return Ok(n);
    }
    let cdrs = handle(db, CF_CDRS)?;
    Ok(match db.iterator_cf(cdrs, IteratorMode::End).next() {
        Some(Ok((k, _))) => be_u64(&k).map_or(1, |n| n + 1),
        _ => 1,
    })
}

/// A column family of `db`, or the error naming it.
fn handle<'a>(db: &'a DB, cf: &'static str) -> Result<&'a rocksdb::ColumnFamily, StoreError> {
    db.cf_handle(cf).ok_or(StoreError::MissingCf(cf))
}

/// A big-endian u64 value or key (counters, versions, CDR numbers); `None` if it is not
/// 8 bytes.
fn be_u64(v: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(v).ok().map(u64::from_be_bytes)
}

/// Options shared by every open of the store. Debian's librocksdb is built without
/// Snappy (RocksDB's default), so compression is chosen explicitly; the records are
/// small JSON documents and LZ4 is in Debian's build.
fn base_options() -> Options {
    let mut o = Options::default();
    o.set_compression_type(rocksdb::DBCompressionType::Lz4);
    o
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    // Serialising plain structs of strings and numbers to JSON cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::cdr::{Cdr, Disposition};

    /// A failed call's CDR, for the store's tests.
    pub(super) fn cdr(id: &str) -> Cdr {
        Cdr {
            call_id: id.into(),
            caller: "1001".into(),
            callee: "1002".into(),
            start: "2026-01-01T00:00:00.000Z".into(),
            answer: None,
            end: "2026-01-01T00:00:01.000Z".into(),
            duration: 1,
            billsec: 0,
            disposition: Disposition::Failed,
            hangup_cause: "unallocated_number".into(),
            sip_status: 404,
            hangup_by: None,
            media: None,
        }
    }

    /// An extension, for the store's tests.
    pub(super) fn ext(number: &str, password: &str) -> crate::routing::Extension {
        crate::routing::Extension {
            number: number.into(),
            name: "A".into(),
            password: password.into(),
            max_contacts: None,
            trusted_ips: vec![],
        }
    }

    #[test]
    fn commands_survive_reopen_and_are_visible_to_a_secondary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        {
            let s = Store::open(&path).unwrap();
            assert!(!s.is_seeded().unwrap());
            s.apply_all(&[
                Command::PutExtension {
                    extension: ext("1001", "secret"),
                    expect: Expect::Any,
                },
                Command::AppendCdr(cdr("c1")),
                Command::MarkSeeded,
            ])
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert!(s.is_seeded().unwrap());
        s.apply(&Command::AppendCdr(cdr("c2"))).unwrap();
        let ids: Vec<String> = s.cdrs().unwrap().into_iter().map(|c| c.call_id).collect();
        assert_eq!(ids, ["c1", "c2"], "CDRs keep their order across restarts");

        // A secondary sees the live primary's writes, including unflushed ones.
        let scratch = tempfile::tempdir().unwrap();
        let sec = Store::open_secondary(&path, scratch.path()).unwrap();
        assert_eq!(sec.cdrs().unwrap().len(), 2);
        assert_eq!(sec.extensions().unwrap()[0].number, "1001");
        s.apply(&Command::RemoveExtension {
            number: "1001".into(),
            expect: Expect::Any,
        })
        .unwrap();
        assert!(s.extensions().unwrap().is_empty());

        // A batch applies its commands in order, nested CDRs numbered after the others.
        s.apply(&Command::Batch(vec![
            Command::AppendCdr(cdr("c3")),
            Command::Batch(vec![Command::AppendCdr(cdr("c4"))]),
        ]))
        .unwrap();
        let ids: Vec<String> = s.cdrs().unwrap().into_iter().map(|c| c.call_id).collect();
        assert_eq!(ids, ["c1", "c2", "c3", "c4"]);
        assert_eq!(next_cdr_number(&s.db).unwrap(), 5);
    }

    #[test]
    fn configuration_writes_conflict_instead_of_overwriting() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let put = |pw: &str, expect| Command::PutExtension {
            extension: ext("2001", pw),
            expect,
        };
        let remove = |expect| Command::RemoveExtension {
            number: "2001".into(),
            expect,
        };
        let conflict = |exists, version| Outcome::Conflict { exists, version };
        assert_eq!(
            s.apply(&remove(Expect::Version(0))).unwrap(),
            conflict(false, 0)
        );
        assert_eq!(
            s.apply(&put("pw-1", Expect::Version(0))).unwrap(),
            conflict(false, 0)
        );
        assert_eq!(
            s.apply(&put("pw-1", Expect::Absent)).unwrap(),
            Outcome::Version(1)
        );
        assert_eq!(
            s.apply(&put("pw-x", Expect::Absent)).unwrap(),
            conflict(true, 1)
        );
        assert_eq!(
            s.apply(&put("pw-2", Expect::Version(1))).unwrap(),
            Outcome::Version(2)
        );
        assert_eq!(
            s.apply(&put("pw-x", Expect::Version(1))).unwrap(),
            conflict(true, 2)
        );
        let current = s.read(|db| extension(db, "2001")).unwrap().unwrap();
        assert_eq!((current.0.password.as_str(), current.1), ("pw-2", 2));

        // A deletion keeps the version counting: an edit based on the object before
        // it was deleted still conflicts, and re-creating it continues from there.
        assert_eq!(
            s.apply(&remove(Expect::Version(2))).unwrap(),
            Outcome::Version(3)
        );
        assert!(s.read(|db| extension(db, "2001")).unwrap().is_none());
        assert_eq!(
            s.apply(&put("pw-x", Expect::Version(2))).unwrap(),
            conflict(false, 3)
        );
        assert_eq!(
            s.apply(&put("pw-4", Expect::Absent)).unwrap(),
            Outcome::Version(4)
        );

        // Within one batch a later command sees the earlier ones.
        let outcome = s
            .apply_all(&[
                put("pw-5", Expect::Version(4)),
                put("pw-6", Expect::Version(5)),
            ])
            .unwrap();
        assert_eq!(outcome, Outcome::Version(6));
        let all = s.read(versioned_extensions).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].0.password.as_str(), all[0].1), ("pw-6", 6));
    }

    #[test]
    fn call_records_live_from_start_to_end() {
        use crate::calls::record::CallRecord;
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let rec = |id: &str, answer: Option<&str>| {
            Box::new(CallRecord {
                call_id: id.into(),
                node: 1,
                caller: "1001".into(),
                callee: "1002".into(),
                start: "2026-11-23T10:00:00.000Z".into(),
                answer: answer.map(Into::into),
                legs: None,
                media: None,
                setup: None,
            })
        };
        s.apply_all(&[
            Command::StartCall(rec("a", None)),
            Command::StartCall(rec("b", None)),
        ])
        .unwrap();
        s.apply(&Command::AnswerCall(rec(
            "a",
            Some("2026-11-23T10:00:02.000Z"),
        )))
        .unwrap();
        let live = s.read(calls).unwrap();
        assert_eq!(live.len(), 2);
        assert_eq!(live[0].answer.as_deref(), Some("2026-11-23T10:00:02.000Z"));
        // A call that fails while ringing starts and ends in one write.
        s.apply_all(&[
            Command::StartCall(rec("c", None)),
            Command::EndCall {
                call_id: "c".into(),
            },
            Command::EndCall {
                call_id: "a".into(),
            },
            Command::AppendCdr(cdr("a")),
        ])
        .unwrap();
        let live: Vec<String> = s
            .read(calls)
            .unwrap()
            .into_iter()
            .map(|c| c.call_id)
            .collect();
        assert_eq!(live, ["b"]);
    }

    #[test]
    fn all_or_nothing_applies_every_change_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s")).unwrap();
        s.apply(&Command::PutExtension {
            extension: ext("1001", "one"),
            expect: Expect::Any,
        })
        .unwrap();
        // The second change is based on a version that is not there: neither lands.
        let stale = Command::AllOrNothing(vec![
            Command::PutExtension {
                extension: ext("1002", "two"),
                expect: Expect::Absent,
            },
            Command::RemoveExtension {
                number: "1001".into(),
                expect: Expect::Version(9),
            },
        ]);
        let (o, mirror) = s.apply_mirrored(&stale).unwrap();
        assert_eq!(
            o,
            Outcome::Conflict {
                exists: true,
                version: 1
            }
        );
        assert!(mirror.is_empty());
        let numbers = |s: &Store| -> Vec<String> {
            s.extensions()
                .unwrap()
                .into_iter()
                .map(|e| e.number)
                .collect()
        };
        assert_eq!(numbers(&s), ["1001"]);
        // Based on the right versions, both land (and the core is told of both).
        let fresh = Command::AllOrNothing(vec![
            Command::PutExtension {
                extension: ext("1002", "two"),
                expect: Expect::Absent,
            },
            Command::RemoveExtension {
                number: "1001".into(),
                expect: Expect::Version(1),
            },
        ]);
        let (o, mirror) = s.apply_mirrored(&fresh).unwrap();
        assert_eq!(o, Outcome::Version(2));
        assert_eq!(mirror.len(), 2);
        assert_eq!(numbers(&s), ["1002"]);
    }
}
