//! The CDRs' time index, so that a time-range query reads only the CDRs in its range.
//!
//! Column family [`CF_CDR_TIME`] holds one empty-valued key per CDR: its `start` as
//! stored (RFC 3339 UTC text), a `0` byte, then its 8-byte big-endian sequence number.
//! The `0` ends the text (RFC 3339 has none), so the keys sort exactly as
//! (`start` as text, sequence) and a bound `t ++ 0` separates starts below `t` from the
//! rest: the range `[from ++ 0, to ++ 0)` holds exactly the starts `from <= start < to`,
//! the comparison the admin API's filter makes.
//!
//! An entry is staged with its CDR, by the same [`super::stage`] on every replica, so
//! every replica has the same index (a member that applied some entries on an older
//! build indexes those CDRs later, by the backfill below, and answers the same
//! meanwhile). Stores written by an older build have CDRs without entries; meta key
//! [`KEY_INDEXED_FROM`] says which CDRs are indexed:
//!
//! - absent: none is (an older build's store, or a snapshot from one). Queries scan
//!   every CDR, as before the index.
//! - `n` (8 bytes, big-endian): every CDR numbered `n` or above has its entry and none
//!   below has one. Queries scan the CDRs below `n` and use the index above.
//!
//! The first write that appends a CDR sets it to that CDR's number, and every write
//! that appends CDRs also indexes up to [`BACKFILL_PER_WRITE`] of the older CDRs just
//! below it and lowers it, until it is 0: deterministic (it depends only on the
//! replicated state and the command), bounded per log entry, and in the same write
//! batch as what it covers, so a crash leaves it true. [`Store::open`](super::Store::open)
//! indexes a local store's older CDRs at once, in batches that each lower the key.
//!
//! A backup holds the index and the key with the CDRs, and a restore swaps all three in
//! together; a backup from an older build has neither, and is then read as above.

use super::{be_u64, decode, handle, Command, StoreError, CF_CDRS, CF_META};
use crate::calls::cdr::Cdr;
use rocksdb::{Direction, IteratorMode, WriteBatch, DB};

/// The column family of the CDRs' time index.
pub(super) const CF_CDR_TIME: &str = "cdr_time";
/// Meta key: the lowest CDR number from which every CDR is indexed (see above).
const KEY_INDEXED_FROM: &[u8] = b"cdr_index_from";
/// How many older CDRs each write that appends CDRs indexes, until all are: a few
/// milliseconds on every replica, and only until an upgraded store is caught up.
const BACKFILL_PER_WRITE: u64 = 1000;
/// How many older CDRs one write batch indexes when a local store opens.
const BACKFILL_ON_OPEN: u64 = 10_000;

/// The index key of CDR `seq` started at `start`.
fn key(start: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(start.len() + 9);
    k.extend_from_slice(start.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The first key whose start is not below `t`.
fn bound(t: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(t.len() + 1);
    k.extend_from_slice(t.as_bytes());
    k.push(0);
    k
}

/// The sequence number at the end of an index key.
fn seq_of_key(k: &[u8]) -> Option<u64> {
    let tail = k.len().checked_sub(8).map(|at| &k[at..])?;
    be_u64(tail)
}

/// The sequence number a CDR is stored under.
fn seq_of_cdr_key(k: &[u8]) -> Option<u64> {
    be_u64(k)
}

/// The stored [`KEY_INDEXED_FROM`]; `None` when absent (or not 8 bytes).
fn indexed_from(db: &DB) -> Result<Option<u64>, StoreError> {
    Ok(db
        .get_cf(handle(db, CF_META)?, KEY_INDEXED_FROM)?
        .and_then(|v| be_u64(&v)))
}

/// Stages the index entry of CDR `seq` (itself staged in the same batch).
pub(super) fn stage_entry(
    db: &DB,
    batch: &mut WriteBatch,
    seq: u64,
    cdr: &Cdr,
) -> Result<(), StoreError> {
    batch.put_cf(handle(db, CF_CDR_TIME)?, key(&cdr.start, seq), []);
    Ok(())
}

/// After staging `cmds`, whose CDRs were numbered from `first_new` (their entries staged
/// with them): records that they are indexed and indexes up to [`BACKFILL_PER_WRITE`]
/// older CDRs. Nothing for a write that restores a backup, which replaces the CDRs
/// with the backup's and brings the backup's index and [`KEY_INDEXED_FROM`] (none
/// from an older build's backup: then queries scan until the next CDR comes).
pub(super) fn stage_progress(
    db: &DB,
    batch: &mut WriteBatch,
    cmds: &[Command],
    first_new: u64,
) -> Result<(), StoreError> {
    if !appends_only(cmds) {
        return Ok(());
    }
    let from = match indexed_from(db)? {
        Some(0) => return Ok(()),
        Some(n) => n,
        None => first_new,
    };
    stage_backfill(db, batch, from, BACKFILL_PER_WRITE)?;
    Ok(())
}

/// True when `cmds` append CDRs and restore no backup (whose result the stored state
/// that the backfill reads does not show yet).
fn appends_only(cmds: &[Command]) -> bool {
    fn walk(cmds: &[Command], appends: &mut bool) -> bool {
        cmds.iter().all(|c| match c {
            Command::AppendCdr(_) => {
                *appends = true;
                true
            }
            Command::RestoreCommit { .. } => false,
            Command::Batch(inner) | Command::AllOrNothing(inner) => walk(inner, appends),
            _ => true,
        })
    }
    let mut appends = false;
    walk(cmds, &mut appends) && appends
}

/// Stages the entries of the CDRs numbered in `[from - budget, from)` (all older than
/// the indexed ones, `from`), and the lowered [`KEY_INDEXED_FROM`]; answers it.
fn stage_backfill(
    db: &DB,
    batch: &mut WriteBatch,
    from: u64,
    budget: u64,
) -> Result<u64, StoreError> {
    let lowest = from.saturating_sub(budget);
    let cdrs = handle(db, CF_CDRS)?;
    let index = handle(db, CF_CDR_TIME)?;
    let start_key = lowest.to_be_bytes();
    for item in db.iterator_cf(cdrs, IteratorMode::From(&start_key, Direction::Forward)) {
        let (k, v) = item?;
        let Some(seq) = seq_of_cdr_key(&k) else {
            continue;
        };
        if seq >= from {
            break;
        }
        match decode::<Start>(CF_CDRS, &v) {
            Ok(c) => batch.put_cf(index, key(&c.start, seq), []),
            // Left out of the index (every replica alike): a full scan fails on it too.
            Err(e) => tracing::warn!(seq, error = %e, "CDR not indexed"),
        }
    }
    batch.put_cf(handle(db, CF_META)?, KEY_INDEXED_FROM, lowest.to_be_bytes());
    Ok(lowest)
}

/// Just the start of a CDR, for indexing.
#[derive(serde::Deserialize)]
struct Start {
    start: String,
}

/// Indexes every CDR of a local store that is not yet, one batch of
/// [`BACKFILL_ON_OPEN`] at a time (each batch lowers [`KEY_INDEXED_FROM`] with the
/// entries it writes, so an interrupted run resumes where it stopped).
pub(super) fn index_older_cdrs(db: &DB) -> Result<(), StoreError> {
    let mut from = match indexed_from(db)? {
        Some(n) => n,
        None => super::next_cdr_number(db)?,
    };
    if from > 1 {
        tracing::info!(
            below = from,
            "indexing the CDRs an older build wrote by start time"
        );
    }
    while from > 0 {
        let mut batch = WriteBatch::default();
        from = stage_backfill(db, &mut batch, from, BACKFILL_ON_OPEN)?;
        db.write(batch)?;
    }
    Ok(())
}

/// The CDRs that started at or after `from` and before `to` (an open end when `None`;
/// times compare as text, as the CDRs spell them: RFC 3339 UTC with milliseconds), in
/// the order [`super::cdrs`] lists them (oldest first, by sequence number). Reads only
/// the CDRs in the range, but for the older ones not indexed yet (see above).
pub fn cdrs_between(db: &DB, from: Option<&str>, to: Option<&str>) -> Result<Vec<Cdr>, StoreError> {
    let in_range = |s: &str| from.is_none_or(|f| s >= f) && to.is_none_or(|t| s < t);
    // Read first: a backfill that lowers it meanwhile only adds entries below it, which
    // are skipped here and read by the scan instead, so none is read twice.
    let indexed = indexed_from(db)?;
    let cdrs = handle(db, CF_CDRS)?;
    let mut out = Vec::new();
    let unindexed_below = indexed.unwrap_or(u64::MAX);
    if unindexed_below > 0 {
        for item in db.iterator_cf(cdrs, IteratorMode::Start) {
            let (k, v) = item?;
            if seq_of_cdr_key(&k).is_some_and(|s| s >= unindexed_below) {
                break;
            }
            let c: Cdr = decode(CF_CDRS, &v)?;
            if in_range(&c.start) {
                out.push(c);
            }
        }
    }
    let Some(indexed) = indexed else {
        return Ok(out);
    };

    let lower = from.map(bound);
    let upper = to.map(bound);
    let mode = match &lower {
        Some(l) => IteratorMode::From(l, Direction::Forward),
        None => IteratorMode::Start,
    };
    let mut seqs = Vec::new();
    for item in db.iterator_cf(handle(db, CF_CDR_TIME)?, mode) {
        let (k, _) = item?;
        if upper.as_deref().is_some_and(|u| &*k >= u) {
            break;
        }
        if let Some(seq) = seq_of_key(&k).filter(|s| *s >= indexed) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    let keys = seqs.iter().map(|s| s.to_be_bytes());
    for v in db.batched_multi_get_cf(cdrs, keys, true) {
        // CDRs are never removed; an entry without its CDR is left out rather than failing.
        if let Some(v) = v? {
            out.push(decode(CF_CDRS, &v)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{cdrs, Store, CFS};

    fn cdr(id: &str, start: &str) -> Cdr {
        Cdr {
            start: start.into(),
            end: start.into(),
            ..crate::store::tests::cdr(id)
        }
    }

    /// Starts a minute apart from 10:00, `at(m)` is 10:mm.
    fn at(minute: u32) -> String {
        format!("2026-03-01T10:{minute:02}:00.000Z")
    }

    fn ids(v: Vec<Cdr>) -> Vec<String> {
        v.into_iter().map(|c| c.call_id).collect()
    }

    fn between(s: &Store, from: Option<&str>, to: Option<&str>) -> Vec<String> {
        ids(s.read(|db| cdrs_between(db, from, to)).unwrap())
    }

    /// What the full scan answers for the same range: the index must agree.
    fn scanned(s: &Store, from: Option<&str>, to: Option<&str>) -> Vec<String> {
        let all = s.read(cdrs).unwrap();
        ids(all
            .into_iter()
            .filter(|c| from.is_none_or(|f| c.start.as_str() >= f))
            .filter(|c| to.is_none_or(|t| c.start.as_str() < t))
            .collect())
    }

    fn index_keys(s: &Store) -> Vec<(String, u64)> {
        s.read(|db| {
            let cf = db.cf_handle(CF_CDR_TIME).unwrap();
            db.iterator_cf(cf, IteratorMode::Start)
                .map(|i| {
                    let (k, v) = i.unwrap();
                    assert!(v.is_empty());
                    let text = &k[..k.len() - 9];
                    assert_eq!(k[k.len() - 9], 0);
                    (
                        String::from_utf8(text.to_vec()).unwrap(),
                        seq_of_key(&k).unwrap(),
                    )
                })
                .collect()
        })
    }

    fn marker(s: &Store) -> Option<u64> {
        s.read(indexed_from).unwrap()
    }

    #[test]
    fn the_entry_is_written_with_the_cdr() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(marker(&s), Some(0), "a new store is wholly indexed");
        s.apply(&Command::AppendCdr(cdr("a", &at(5)))).unwrap();
        s.apply_all(&[
            Command::AppendCdr(cdr("b", &at(1))),
            Command::Batch(vec![Command::AppendCdr(cdr("c", &at(5)))]),
        ])
        .unwrap();
        assert_eq!(
            index_keys(&s),
            [(at(1), 2), (at(5), 1), (at(5), 3)],
            "by start, then number"
        );
        assert_eq!(marker(&s), Some(0));
    }

    #[test]
    fn a_range_holds_exactly_the_cdrs_in_it_in_number_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        // Appended as calls end: a long call that started first ends (is numbered) last.
        let starts = [
            ("a", 10),
            ("b", 20),
            ("c", 30),
            ("d", 40),
            ("e", 5),
            ("f", 30),
        ];
        for (id, m) in starts {
            s.apply(&Command::AppendCdr(cdr(id, &at(m)))).unwrap();
        }
        let (t10, t30, t40) = (at(10), at(30), at(40));
        // `from` includes a CDR that started exactly then, `to` excludes it.
        assert_eq!(between(&s, Some(&t10), Some(&t30)), ["a", "b"]);
        assert_eq!(between(&s, Some(&t30), Some(&t40)), ["c", "f"]);
        assert_eq!(between(&s, Some(&t30), None), ["c", "d", "f"]);
        assert_eq!(between(&s, None, Some(&t10)), ["e"]);
        assert_eq!(between(&s, None, None), ["a", "b", "c", "d", "e", "f"]);
        // A bound between two starts, one a millisecond after a start, an empty range.
        let just_after = "2026-03-01T10:30:00.001Z";
        assert_eq!(between(&s, Some(just_after), None), ["d"]);
        assert_eq!(
            between(&s, None, Some(just_after)),
            ["a", "b", "c", "e", "f"]
        );
        assert!(between(&s, Some(&t40), Some(&t30)).is_empty());
        assert!(between(&s, Some("2027-01-01T00:00:00.000Z"), None).is_empty());
        for (f, t) in [
            (Some(&t10), Some(&t40)),
            (None, Some(&t30)),
            (Some(&t40), None),
        ] {
            let (f, t) = (f.map(String::as_str), t.map(String::as_str));
            assert_eq!(between(&s, f, t), scanned(&s, f, t), "{f:?}..{t:?}");
        }
    }

    /// Writes `starts` as an older build did: CDRs and the counter, no index, no marker,
    /// in a database whose column families are those an older build knew.
    fn old_store(path: &std::path::Path, starts: &[(&str, u32)]) {
        let old_cfs: Vec<&str> = CFS.iter().copied().filter(|c| *c != CF_CDR_TIME).collect();
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = DB::open_cf(&opts, path, old_cfs).unwrap();
        let cf = db.cf_handle(CF_CDRS).unwrap();
        for (i, (id, m)) in starts.iter().enumerate() {
            let seq = i as u64 + 1;
            let v = serde_json::to_vec(&cdr(id, &at(*m))).unwrap();
            db.put_cf(cf, seq.to_be_bytes(), v).unwrap();
        }
        let meta = db.cf_handle(CF_META).unwrap();
        let next = starts.len() as u64 + 1;
        db.put_cf(meta, b"next_cdr", next.to_be_bytes()).unwrap();
    }

    #[test]
    fn a_store_without_the_index_still_answers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        old_store(&path, &[("a", 10), ("b", 30), ("c", 20)]);
        // Read as it was written (the replicated state of a member that has not applied
        // a CDR since the upgrade looks like this): a full scan.
        {
            let mut opts = rocksdb::Options::default();
            opts.create_missing_column_families(true);
            let db = DB::open_cf(&opts, &path, CFS).unwrap();
            assert_eq!(indexed_from(&db).unwrap(), None);
            let got = cdrs_between(&db, Some(&at(20)), Some(&at(40))).unwrap();
            assert_eq!(ids(got), ["b", "c"]);

            // The first CDR appended (the replicated path: `stage` on the raw database)
            // is indexed and starts indexing the older ones.
            let mut batch = WriteBatch::default();
            let mut next = super::super::next_cdr_number(&db).unwrap();
            let cmd = Command::AppendCdr(cdr("d", &at(25)));
            super::super::stage(&db, &mut batch, &[cmd], &mut next, None).unwrap();
            db.write(batch).unwrap();
            assert_eq!(indexed_from(&db).unwrap(), Some(0));
            let got = cdrs_between(&db, Some(&at(20)), Some(&at(40))).unwrap();
            assert_eq!(ids(got), ["b", "c", "d"]);
        }
        // A local store indexes everything when it opens.
        let path = dir.path().join("local");
        old_store(&path, &[("a", 10), ("b", 30), ("c", 20)]);
        let s = Store::open(&path).unwrap();
        assert_eq!(marker(&s), Some(0));
        assert_eq!(index_keys(&s), [(at(10), 1), (at(20), 3), (at(30), 2)]);
        assert_eq!(between(&s, Some(&at(20)), None), ["b", "c"]);
    }

    /// Restores `records` into `s` as the admin API does.
    fn restore(s: &Store, records: Vec<crate::store::backup::Record>, id: &str) {
        s.apply(&Command::RestoreBegin { id: id.into() }).unwrap();
        let n = records.len() as u64;
        s.apply(&Command::RestoreChunk {
            id: id.into(),
            records,
        })
        .unwrap();
        let commit = Command::RestoreCommit {
            id: id.into(),
            records: n,
        };
        assert_eq!(s.apply(&commit).unwrap(), crate::store::Outcome::Done);
    }

    #[test]
    fn a_restore_brings_the_backups_index_or_none() {
        use crate::store::backup;
        let dir = tempfile::tempdir().unwrap();
        let source = Store::open(&dir.path().join("source")).unwrap();
        for (id, m) in [("a", 10), ("b", 30), ("c", 20)] {
            source.apply(&Command::AppendCdr(cdr(id, &at(m)))).unwrap();
        }
        let file = source.read(|db| backup::write(db, 1, None, at(0))).unwrap();
        let records = backup::read(&file).unwrap().records;
        // An older build's backup: no index, no marker.
        let older: Vec<_> = records
            .iter()
            .filter(|r| r.cf != CF_CDR_TIME && r.key != KEY_INDEXED_FROM)
            .cloned()
            .collect();

        let target = Store::open(&dir.path().join("target")).unwrap();
        for (id, m) in [("x", 15), ("y", 25), ("z", 35), ("w", 16)] {
            target.apply(&Command::AppendCdr(cdr(id, &at(m)))).unwrap();
        }
        restore(&target, records, "r1");
        assert_eq!(marker(&target), Some(0));
        assert_eq!(index_keys(&target), index_keys(&source));
        assert_eq!(between(&target, Some(&at(15)), None), ["b", "c"]);

        restore(&target, older, "r2");
        assert_eq!(marker(&target), None, "the old index is gone with its CDRs");
        assert!(index_keys(&target).is_empty());
        assert_eq!(between(&target, Some(&at(15)), None), ["b", "c"]);
        target
            .apply(&Command::AppendCdr(cdr("d", &at(40))))
            .unwrap();
        assert_eq!(marker(&target), Some(0));
        assert_eq!(between(&target, Some(&at(15)), None), ["b", "c", "d"]);
        assert_eq!(index_keys(&target).len(), 4);
    }

    #[test]
    fn older_cdrs_are_indexed_a_bounded_number_per_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let n = BACKFILL_PER_WRITE as usize + 500;
        let starts: Vec<(&str, u32)> = (0..n).map(|i| ("old", (i % 60) as u32)).collect();
        old_store(&path, &starts);
        let mut opts = rocksdb::Options::default();
        opts.create_missing_column_families(true);
        let db = DB::open_cf(&opts, &path, CFS).unwrap();
        let append = |id: &str| {
            let mut batch = WriteBatch::default();
            let mut next = super::super::next_cdr_number(&db).unwrap();
            let cmd = Command::AppendCdr(cdr(id, &at(59)));
            super::super::stage(&db, &mut batch, &[cmd], &mut next, None).unwrap();
            db.write(batch).unwrap();
        };
        let count = |from: &str, to: &str| cdrs_between(&db, Some(from), Some(to)).unwrap();
        let expect = (0..n).filter(|i| i % 60 >= 58).count() + 1;

        append("new-1");
        // Half indexed: the rest is scanned, and each CDR is answered once.
        let half = n as u64 + 1 - BACKFILL_PER_WRITE;
        assert_eq!(indexed_from(&db).unwrap(), Some(half));
        assert_eq!(count(&at(58), &at(60)).len(), expect);
        append("new-2");
        assert_eq!(indexed_from(&db).unwrap(), Some(0));
        let got = count(&at(58), &at(60));
        assert_eq!(got.len(), expect + 1);
        let last: Vec<&str> = got[got.len() - 2..].iter().map(|c| &*c.call_id).collect();
        assert_eq!(last, ["new-1", "new-2"], "in number order");
        let cf = db.cf_handle(CF_CDR_TIME).unwrap();
        assert_eq!(db.iterator_cf(cf, IteratorMode::Start).count(), n + 2);
    }
}
