//! Memory figures of the process: RSS from /proc (no `process` feature of the
//! `prometheus` crate, which pulls in `procfs`), and jemalloc's own statistics.

/// Resident set size in bytes, from `/proc/self/statm` (Linux); `None` elsewhere.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// jemalloc's (allocated, resident) bytes, refreshed first (its statistics are cached
/// per epoch); `None` if the allocator will not say.
pub fn jemalloc_bytes() -> Option<(u64, u64)> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    let allocated = stats::allocated::read().ok()?;
    let resident = stats::resident::read().ok()?;
    Some((allocated as u64, resident as u64))
}
