//! The audit log: append-only JSON lines, each carrying the SHA-256 of the line before it, so
//! that an edit, a deletion or a reordering breaks the chain (`ferrohsm audit verify`).
//!
//! Several processes may append to one log: each append takes an exclusive lock on the file,
//! reads the last line to chain onto it, writes, syncs, and updates a head file
//! (`<log>.head`: the count and hash of the last line), which lets `verify` notice a cut tail
//! too. What the chain cannot show is a log rewritten from scratch together with its head
//! file: that needs a copy kept elsewhere (ship the log, or record the head, off the host).
//!
//! The log and its head file are mode 0600 and are never written through a symbolic link or
//! into a directory that others can write (see [`crate::output`]).
//!
//! A line records when, which process, session, user type, function, mechanism, object (handle,
//! label, id) and result code — never data, PINs, attribute values or key bytes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::output::{self, WriteOptions};

/// How the log and its head file are written: mode 0600, in a directory only the owner (or
/// root) can write.
const LOG_OUTPUT: WriteOptions = WriteOptions::private()
    .shared_dir_remedy("keep the audit log in a directory that only its owner can write");

/// The hash a first line chains onto.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One record, before the log adds time, process, sequence and chain.
#[derive(Debug, Default, Clone)]
pub struct Entry {
    /// `C_*` function name.
    pub function: &'static str,
    /// The session (the application's handle as the backend saw it).
    pub session: Option<u64>,
    /// `so`, `user`, `public` or `context`.
    pub user: Option<&'static str>,
    /// The mechanism.
    pub mechanism: Option<u64>,
    /// The object or key handle.
    pub object: Option<u64>,
    /// The object's `CKA_LABEL`, when it could be read.
    pub label: Option<String>,
    /// The object's `CKA_ID` (hex), when it could be read.
    pub id: Option<String>,
    /// The result, as a `CKR_*` name.
    pub rv: String,
    /// The authenticated caller, when a daemon records it (a certificate identity or
    /// `uid:N`).
    pub who: Option<String>,
}

/// An audit log file.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    /// The size the log may not grow past, in bytes.
    quota: Option<u64>,
    /// The appenders of this path in this process (every `AuditLog` opened on it).
    group: Arc<Group>,
}

/// The records of one log waiting to be written, shared by every `AuditLog` of its path in the
/// process (group commit: see [`AuditLog::append`]).
#[derive(Debug, Default)]
struct Group {
    state: Mutex<Queue>,
    written: Condvar,
}

#[derive(Debug, Default)]
struct Queue {
    /// Records not yet taken by a writer: ticket and the record without seq and prev.
    waiting: Vec<(u64, Map<String, Value>)>,
    next_ticket: u64,
    /// Every ticket up to this one has been written (or has failed).
    done: u64,
    /// A writer is at work.
    writing: bool,
    /// The tickets whose batch failed, with why (taken by their callers).
    failed: BTreeMap<u64, String>,
}

/// The group of each log path in this process.
fn group_of(path: &Path) -> Arc<Group> {
    static GROUPS: Mutex<BTreeMap<PathBuf, Weak<Group>>> = Mutex::new(BTreeMap::new());
    let mut groups = GROUPS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    groups.retain(|_, g| g.strong_count() > 0);
    if let Some(g) = groups.get(path).and_then(Weak::upgrade) {
        return g;
    }
    let g = Arc::new(Group::default());
    groups.insert(path.to_path_buf(), Arc::downgrade(&g));
    g
}

fn io(path: &Path, what: &str, e: &std::io::Error) -> Error {
    Error::Config(format!("audit log {}: {what}: {e}", path.display()))
}

fn hash_line(line: &str) -> String {
    base16ct::lower::encode_string(&Sha256::digest(line.as_bytes()))
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for a Unix time in milliseconds.
fn rfc3339(ms: u128) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        ms % 1000
    )
}

impl AuditLog {
    /// A log at `path`; the file is created (0600) on first use. Fails now if the directory
    /// cannot hold it, so that a misconfigured log stops `C_Initialize` rather than losing
    /// records later.
    pub fn open(path: &Path) -> Result<Self> {
        let log = Self {
            path: path.to_path_buf(),
            quota: None,
            group: group_of(path),
        };
        log.file()?;
        Ok(log)
    }

    /// Refuses records that would make the log longer than `bytes` (a tenant's share of the
    /// disk).
    #[must_use]
    pub fn with_quota(mut self, bytes: Option<u64>) -> Self {
        self.quota = bytes;
        self
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn head_path(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(".head");
        PathBuf::from(p)
    }

    /// The log, opened for reading and appending through [`crate::output::open_append`]: never
    /// through a symbolic link, never another user's file, never in a directory others can
    /// write, and always mode 0600.
    fn file(&self) -> Result<File> {
        output::open_append(&self.path, &LOG_OUTPUT)
            .map_err(|e| Error::Config(format!("audit log: {e}")))
    }

    /// Appends one record, chained onto the last line, and returns once it is on disk.
    ///
    /// Group commit: records appended at once by several threads (the daemon's connections
    /// share one log per tenant) are written together, under one file lock and one
    /// `fdatasync`, by whichever caller finds no writer at work; the others wait for it. The
    /// durability rule is unchanged: no call returns before its own record has been synced.
    pub fn append(&self, entry: &Entry) -> Result<()> {
        let record = Self::record(entry);
        let mut q = self.queue();
        let ticket = q.next_ticket + 1;
        q.next_ticket = ticket;
        q.waiting.push((ticket, record));
        loop {
            if q.done >= ticket {
                return match q.failed.remove(&ticket) {
                    Some(why) => Err(Error::Config(why)),
                    None => Ok(()),
                };
            }
            if q.writing {
                q = self
                    .group
                    .written
                    .wait(q)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                continue;
            }
            // This caller writes every record waiting, its own among them.
            let batch = std::mem::take(&mut q.waiting);
            let last = batch.last().map_or(q.done, |(t, _)| *t);
            q.writing = true;
            drop(q);
            // A panic must not leave the others waiting for a writer that is gone.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.write_batch(batch.iter().map(|(_, r)| r))
            }))
            .unwrap_or_else(|_| Err(Error::Config("audit log: the writer panicked".into())));
            q = self.queue();
            q.writing = false;
            q.done = q.done.max(last);
            if let Err(e) = outcome {
                let why = e.to_string();
                for (t, _) in &batch {
                    q.failed.insert(*t, why.clone());
                }
            }
            self.group.written.notify_all();
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.group
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One record's fields, before the writer adds its sequence number and chain.
    fn record(entry: &Entry) -> Map<String, Value> {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let mut m = Map::new();
        m.insert("time".into(), json!(rfc3339(ms)));
        m.insert("pid".into(), json!(std::process::id()));
        m.insert("function".into(), json!(entry.function));
        let mut opt = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                m.insert(k.into(), v);
            }
        };
        opt("who", entry.who.as_ref().map(|w| json!(w)));
        opt("session", entry.session.map(|s| json!(s)));
        opt("user", entry.user.map(|u| json!(u)));
        opt(
            "mechanism",
            entry.mechanism.map(|t| {
                json!(
                    crate::names::mechanism_name(t)
                        .map_or_else(|| format!("0x{t:x}"), str::to_owned)
                )
            }),
        );
        opt("object", entry.object.map(|o| json!(o)));
        opt("label", entry.label.as_ref().map(|l| json!(l)));
        opt("id", entry.id.as_ref().map(|i| json!(i)));
        m.insert("rv".into(), json!(entry.rv));
        m
    }

    /// Writes `records` in order under the file's lock (other processes may append too),
    /// chained onto the last line, with one sync, then the head file.
    fn write_batch<'a>(&self, records: impl Iterator<Item = &'a Map<String, Value>>) -> Result<()> {
        let mut f = self.file()?;
        f.lock().map_err(|e| io(&self.path, "cannot lock", &e))?;
        let (mut seq, mut prev) =
            last_line(&mut f).map_err(|e| io(&self.path, "cannot read", &e))?;
        let mut bytes = Vec::new();
        for record in records {
            seq += 1;
            // seq first, prev last, as the chain has always been written.
            let mut m = Map::new();
            m.insert("seq".into(), json!(seq));
            m.extend(record.clone());
            m.insert("prev".into(), json!(prev));
            let line = Value::Object(m).to_string();
            prev = hash_line(&line);
            bytes.extend_from_slice(line.as_bytes());
            bytes.push(b'\n');
        }
        let len = f
            .metadata()
            .map_err(|e| io(&self.path, "cannot read", &e))?
            .len();
        if let Some(quota) = self.quota {
            let after = len.saturating_add(u64::try_from(bytes.len()).unwrap_or(u64::MAX));
            if after > quota {
                return Err(Error::Config(format!(
                    "audit log {}: full ({len} bytes of a quota of {quota}): archive it (move it and its .head file away) to go on",
                    self.path.display()
                )));
            }
        }
        if let Err(e) = f.write_all(&bytes).and_then(|()| f.sync_data()) {
            // A record written in part (a full disk) would break every later chain: the log
            // goes back to its last whole line.
            let _ = f.set_len(len).and_then(|()| f.sync_data());
            return Err(io(&self.path, "cannot append", &e));
        }
        let head = format!("{seq} {prev}\n");
        output::write_file(&self.head_path(), head.as_bytes(), &LOG_OUTPUT)
            .map_err(|e| Error::Config(format!("audit log head file: {e}")))?;
        // The lock goes with the file.
        Ok(())
    }
}

/// The sequence number and hash of the last line of an open log (0 and the genesis hash when
/// it is empty).
fn last_line(f: &mut File) -> std::io::Result<(u64, String)> {
    let len = f.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok((0, GENESIS.to_owned()));
    }
    // Lines are short; read back far enough to hold the last one whole.
    let mut back = 4096u64;
    loop {
        let start = len.saturating_sub(back);
        f.seek(SeekFrom::Start(start))?;
        let mut tail = Vec::new();
        f.read_to_end(&mut tail)?;
        let text = String::from_utf8_lossy(&tail);
        let body = text.strip_suffix('\n').unwrap_or(&text);
        if let Some(i) = body.rfind('\n').or((start == 0).then_some(usize::MAX)) {
            let last = if i == usize::MAX {
                body
            } else {
                body.get(i + 1..).unwrap_or("")
            };
            let seq = serde_json::from_str::<Value>(last)
                .ok()
                .and_then(|v| v.get("seq").and_then(Value::as_u64))
                .unwrap_or(0);
            return Ok((seq, hash_line(last)));
        }
        back = back.saturating_mul(4);
    }
}

/// Checks a log: every line parses, counts up from 1, and names the hash of the line before;
/// the head file, when present, names the last line. `Ok(n)`: `n` intact entries.
/// `Err((line, reason))`: the first bad line (1-based; 0 for the head file).
pub fn verify(path: &Path) -> std::result::Result<usize, (usize, String)> {
    let text = std::fs::read_to_string(path).map_err(|e| (0, format!("cannot read: {e}")))?;
    let mut prev = GENESIS.to_owned();
    let mut count = 0usize;
    if !text.is_empty() && !text.ends_with('\n') {
        return Err((
            text.lines().count(),
            "the last line is incomplete".to_owned(),
        ));
    }
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let v: Value =
            serde_json::from_str(line).map_err(|e| (n, format!("not a JSON record: {e}")))?;
        let seq = v.get("seq").and_then(Value::as_u64);
        if seq != u64::try_from(n).ok() {
            return Err((n, format!("sequence number {seq:?}, expected {n}")));
        }
        if v.get("prev").and_then(Value::as_str) != Some(prev.as_str()) {
            // The numbers still count up, so no line is missing here: the line before was
            // edited (or this line's link was).
            let before = n.saturating_sub(1).max(1);
            return Err((
                before,
                format!("edited: line {n} no longer chains onto line {before}"),
            ));
        }
        prev = hash_line(line);
        count = n;
    }
    let mut head_path = path.to_path_buf().into_os_string();
    head_path.push(".head");
    match std::fs::read_to_string(&head_path) {
        Ok(head) => {
            let mut parts = head.split_whitespace();
            let seq = parts.next().and_then(|s| s.parse::<usize>().ok());
            let hash = parts.next();
            if seq == Some(count) && count > 0 && hash != Some(prev.as_str()) {
                return Err((
                    count,
                    "edited: the last line does not match the head file".to_owned(),
                ));
            }
            if seq != Some(count) {
                return Err((
                    count,
                    format!(
                        "the head file names entry {} but the log ends at entry {count} (lines cut from or added to the end)",
                        seq.map_or_else(|| "?".to_owned(), |s| s.to_string())
                    ),
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && count == 0 => {}
        Err(e) => {
            return Err((
                0,
                format!("head file {}: {e}", Path::new(&head_path).display()),
            ));
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: &'static str) -> Entry {
        Entry {
            function,
            session: Some(1),
            rv: "CKR_OK".to_owned(),
            ..Entry::default()
        }
    }

    #[test]
    fn a_full_quota_refuses_records_and_leaves_the_chain_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap().with_quota(Some(600));
        let mut written = 0;
        let mut refused = 0;
        for _ in 0..10 {
            match log.append(&entry("C_Sign")) {
                Ok(()) => written += 1,
                Err(e) => {
                    assert!(e.to_string().contains("archive it"), "{e}");
                    refused += 1;
                }
            }
        }
        assert!(written > 0 && refused > 0, "{written} {refused}");
        assert_eq!(verify(&path), Ok(written));
        assert!(std::fs::metadata(&path).unwrap().len() <= 600);
    }

    #[test]
    fn concurrent_appends_share_syncs_and_keep_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        std::thread::scope(|scope| {
            for _ in 0..8 {
                let path = path.clone();
                scope.spawn(move || {
                    // Each thread its own AuditLog, as each daemon connection has.
                    let log = AuditLog::open(&path).unwrap();
                    for _ in 0..50 {
                        log.append(&entry("C_Sign")).unwrap();
                    }
                });
            }
        });
        assert_eq!(verify(&path), Ok(400));
        let head = std::fs::read_to_string(dir.path().join("audit.log.head")).unwrap();
        assert!(head.starts_with("400 "), "{head}");
    }

    #[test]
    fn chain_verifies_and_breaks_on_edit_delete_reorder_and_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        for f in ["C_Login", "C_SignInit", "C_Sign", "C_Logout"] {
            log.append(&entry(f)).unwrap();
        }
        assert_eq!(verify(&path), Ok(4));
        let good = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = good.lines().collect();

        // One byte changed.
        let edited = good.replacen("C_Sign\"", "C_Sigm\"", 1);
        std::fs::write(&path, &edited).unwrap();
        assert_eq!(verify(&path).unwrap_err().0, 3);

        // A line removed from the middle.
        let removed = format!("{}\n{}\n{}\n", lines[0], lines[2], lines[3]);
        std::fs::write(&path, removed).unwrap();
        assert_eq!(verify(&path).unwrap_err().0, 2);

        // Two lines swapped.
        let swapped = format!("{}\n{}\n{}\n{}\n", lines[0], lines[2], lines[1], lines[3]);
        std::fs::write(&path, swapped).unwrap();
        assert_eq!(verify(&path).unwrap_err().0, 2);

        // The last line cut.
        let cut = format!("{}\n{}\n{}\n", lines[0], lines[1], lines[2]);
        std::fs::write(&path, cut).unwrap();
        assert!(verify(&path).unwrap_err().1.contains("head file"));

        // Restored, and appending goes on from the right place.
        std::fs::write(&path, &good).unwrap();
        log.append(&entry("C_Finalize")).unwrap();
        assert_eq!(verify(&path), Ok(5));
    }

    #[test]
    fn log_and_head_are_private_and_never_redirected() {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        log.append(&entry("C_Login")).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&log.head_path()), 0o600);
        // A log made readable by others is narrowed again at the next append.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        log.append(&entry("C_Logout")).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(verify(&path), Ok(2));

        // A planted link, as the log or as its head file, is refused and its target untouched.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let linked = dir.path().join("linked.log");
        symlink(&victim, &linked).unwrap();
        assert!(AuditLog::open(&linked).is_err());
        let head_linked = AuditLog::open(&dir.path().join("other.log")).unwrap();
        symlink(&victim, head_linked.head_path()).unwrap();
        assert!(head_linked.append(&entry("C_Login")).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_796_169_600_123), "2026-12-02T00:00:00.123Z");
    }
}
