//! The audit log: append-only JSON lines, each carrying the SHA-256 of the line before it, so
//! that an edit, a deletion or a reordering breaks the chain (`ferrohsm audit verify`).
//!
//! Several processes may append to one log: each batch of records takes an exclusive lock on
//! the file, chains onto the last line (this process's own last line, kept in memory, unless
//! the file's length says another process wrote since), writes, and lets go of the lock. A
//! head file (`<log>.head`: the count and hash of the last line synced) lets `verify` notice a
//! cut tail too. What the chain cannot show is a log rewritten from scratch together with its
//! head file: that needs a copy kept elsewhere (ship the log, or record the head, off the host).
//!
//! # Durability ([`Durability`])
//!
//! - `Within(window)` (the configured default, `[audit] sync_ms = 10`): a call returns once its
//!   record is written to the log file — the kernel holds it, so the process may crash or be
//!   killed without losing it — and a flusher thread makes it durable (`fdatasync`, then the
//!   head file) within `window`. Only a crash of the machine itself can lose the records of
//!   the last `window`; `verify` then finds a head file behind the log, which it accepts.
//! - `EachCall` (`sync_ms = 0`, and [`AuditLog::open`]'s own default): a call returns only
//!   after its record is on disk and named by the head file.
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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::output::{self, WriteOptions};

/// How the log and its head file are written: mode 0600, in a directory only the owner (or
/// root) can write.
const LOG_OUTPUT: WriteOptions = WriteOptions::private()
    .shared_dir_remedy("keep the audit log in a directory that only its owner can write");

/// How often the writer looks at the log's path for another file (an archived log).
const PATH_CHECK: Duration = Duration::from_millis(10);

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

/// When an appended record is on disk (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// The call returns after its record is on disk and named by the head file.
    EachCall,
    /// The call returns once its record is in the log file; it is on disk within this time.
    Within(Duration),
}

impl Durability {
    /// `sync_ms` of the configuration: 0 is [`Durability::EachCall`].
    pub fn from_millis(ms: u64) -> Self {
        if ms == 0 {
            Self::EachCall
        } else {
            Self::Within(Duration::from_millis(ms))
        }
    }
}

/// An audit log file.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    /// The size the log may not grow past, in bytes.
    quota: Option<u64>,
    durability: Durability,
    /// The appenders of this path in this process (every `AuditLog` opened on it).
    group: Arc<Group>,
}

/// The records of one log waiting to be written, shared by every `AuditLog` of its path in the
/// process (group commit: see [`AuditLog::append`]).
#[derive(Debug, Default)]
struct Group {
    state: Mutex<Queue>,
    written: Condvar,
    /// The open log, used by the writer of the moment (and by the flusher, briefly).
    open: Mutex<Option<OpenLog>>,
    /// What the flusher has to do.
    flush: Mutex<Flush>,
    flush_wanted: Condvar,
}

/// The log as this process last wrote it.
#[derive(Debug)]
struct OpenLog {
    file: Arc<File>,
    /// The head file, rewritten in place (a fixed-length line).
    head: Arc<File>,
    /// The files' devices and inodes: other files at the paths (the log archived) are opened
    /// afresh.
    id: [(u64, u64); 2],
    /// When the paths were last checked for the files open.
    checked: std::time::Instant,
    /// The process that opened the files: a forked child opens its own (a descriptor shared
    /// with the parent would share its file lock, and two writers would chain onto one line).
    pid: u32,
    /// The head file's length as this process left it.
    head_len: u64,
    /// Where this process's last write ended, and what it ended with.
    end: u64,
    seq: u64,
    prev: String,
}

#[derive(Debug, Default)]
struct Flush {
    /// Records written but not yet synced, and the longest they may wait.
    pending: Option<Duration>,
    /// The process whose flusher thread runs (a forked child starts its own).
    flusher_pid: Option<u32>,
}

#[derive(Debug, Default)]
struct Queue {
    /// Records not yet taken by a writer: ticket, whether its caller waits for the disk, and
    /// the record without seq and prev.
    waiting: Vec<(u64, bool, String)>,
    next_ticket: u64,
    /// Every ticket up to this one has been written (or has failed).
    done: u64,
    /// A writer is at work.
    writing: bool,
    /// Callers waiting for a writer (woken only when there are some).
    waiters: usize,
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

/// The time now, as [`rfc3339`] writes it.
pub(crate) fn now_rfc3339() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    rfc3339(ms)
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
            durability: Durability::EachCall,
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

    /// When a call's record is on disk (default [`Durability::EachCall`]).
    #[must_use]
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
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

    /// Appends one record, chained onto the last line, and returns once it is in the log file
    /// (with [`Durability::EachCall`]: once it is on disk).
    ///
    /// Group commit: records appended at once by several threads (the daemon's connections
    /// share one log per tenant) are written together, under one file lock (and, for callers
    /// that wait for the disk, one `fdatasync`), by whichever caller finds no writer at work;
    /// the others wait for it.
    pub fn append(&self, entry: &Entry) -> Result<()> {
        // Serialized here, outside every lock: the writer only adds seq and prev.
        let record = Value::Object(Self::record(entry)).to_string();
        let mut q = self.queue();
        let ticket = q.next_ticket + 1;
        q.next_ticket = ticket;
        q.waiting
            .push((ticket, self.durability == Durability::EachCall, record));
        loop {
            if q.done >= ticket {
                return match q.failed.remove(&ticket) {
                    Some(why) => Err(Error::Config(why)),
                    None => Ok(()),
                };
            }
            if q.writing {
                q.waiters += 1;
                q = self
                    .group
                    .written
                    .wait(q)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                q.waiters -= 1;
                continue;
            }
            // This caller writes every record waiting, its own among them.
            let batch = std::mem::take(&mut q.waiting);
            let last = batch.last().map_or(q.done, |(t, _, _)| *t);
            q.writing = true;
            drop(q);
            // A panic must not leave the others waiting for a writer that is gone.
            let sync = batch.iter().any(|(_, each, _)| *each);
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.write_batch(batch.iter().map(|(_, _, r)| r), sync)
            }))
            .unwrap_or_else(|_| Err(Error::Config("audit log: the writer panicked".into())));
            q = self.queue();
            q.writing = false;
            q.done = q.done.max(last);
            if let Err(e) = outcome {
                let why = e.to_string();
                for (t, _, _) in &batch {
                    q.failed.insert(*t, why.clone());
                }
            }
            if q.waiters > 0 {
                self.group.written.notify_all();
            }
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
        let mut m = Map::new();
        m.insert("time".into(), json!(now_rfc3339()));
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
    /// chained onto the last line; with `sync`, syncs and writes the head file before
    /// returning, otherwise leaves that to the flusher (within the window).
    fn write_batch<'a>(&self, records: impl Iterator<Item = &'a String>, sync: bool) -> Result<()> {
        let mut open = self
            .group
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let log = self.reopen_if_moved(&mut open)?;
        let file = Arc::clone(&log.file);
        file.lock().map_err(|e| io(&self.path, "cannot lock", &e))?;
        // The lock is held by the descriptor, which stays open: it is let go on every path.
        let r = self.write_locked(log, records, sync);
        let _ = file.unlock();
        drop(open);
        r?;
        if !sync {
            self.flush_within();
        }
        Ok(())
    }

    /// The part of `write_batch` under the file's lock: returns the last line's number and
    /// hash.
    fn write_locked<'a>(
        &self,
        log: &mut OpenLog,
        records: impl Iterator<Item = &'a String>,
        sync: bool,
    ) -> Result<()> {
        let f = &*log.file;
        let meta = f
            .metadata()
            .map_err(|e| io(&self.path, "cannot read", &e))?;
        let len = meta.len();
        {
            use std::os::unix::fs::PermissionsExt;
            // A log made readable by others is narrowed again.
            if meta.permissions().mode() & 0o7777 != 0o600 {
                f.set_permissions(std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| io(&self.path, "cannot set its mode to 0600", &e))?;
            }
        }
        // Another process wrote since (or the file was changed): chain onto what is there.
        if len != log.end {
            (log.seq, log.prev) = last_line(f).map_err(|e| io(&self.path, "cannot read", &e))?;
            log.end = len;
        }
        let (mut seq, mut prev) = (log.seq, log.prev.clone());
        let mut bytes = Vec::new();
        for record in records {
            seq += 1;
            // seq first, prev last, as the chain has always been written: `{"seq":N,` + the
            // record's fields + `,"prev":"HASH"}` (the record is a JSON object, never empty).
            let fields = record
                .strip_prefix('{')
                .and_then(|r| r.strip_suffix('}'))
                .ok_or(Error::Internal("audit record"))?;
            let line = format!("{{\"seq\":{seq},{fields},\"prev\":\"{prev}\"}}");
            prev = hash_line(&line);
            bytes.extend_from_slice(line.as_bytes());
            bytes.push(b'\n');
        }
        if let Some(quota) = self.quota {
            let after = len.saturating_add(u64::try_from(bytes.len()).unwrap_or(u64::MAX));
            if after > quota {
                return Err(Error::Config(format!(
                    "audit log {}: full ({len} bytes of a quota of {quota}): archive it (move it and its .head file away) to go on",
                    self.path.display()
                )));
            }
        }
        let mut w = f;
        let written = w
            .write_all(&bytes)
            .and_then(|()| if sync { f.sync_data() } else { Ok(()) });
        if let Err(e) = written {
            // A record written in part (a full disk) would break every later chain: the log
            // goes back to its last whole line.
            let _ = f.set_len(len).and_then(|()| f.sync_data());
            log.end = u64::MAX;
            return Err(io(&self.path, "cannot append", &e));
        }
        log.end = len.saturating_add(u64::try_from(bytes.len()).unwrap_or(u64::MAX));
        // The head file names the new last line at once (in the kernel's cache: current for
        // every reader, on disk with the log's next sync).
        write_head(&log.head, &mut log.head_len, seq, &prev, sync)
            .map_err(|e| io(&self.head_path(), "cannot write", &e))?;
        (log.seq, log.prev) = (seq, prev);
        Ok(())
    }

    /// The open log, opened again when the paths name other files than the ones open (the log
    /// archived: moved away with its head file), or ones whose mode was loosened; the paths
    /// are looked at no more than once per `PATH_CHECK`, so a log moved away is let go within
    /// that time.
    fn reopen_if_moved<'o>(&self, open: &'o mut Option<OpenLog>) -> Result<&'o mut OpenLog> {
        use std::os::unix::fs::MetadataExt;
        let pid = std::process::id();
        if open.as_ref().is_some_and(|o| o.pid != pid) {
            *open = None;
        }
        if open
            .as_ref()
            .is_some_and(|o| o.checked.elapsed() < PATH_CHECK)
        {
            return open
                .as_mut()
                .ok_or(Error::Config("audit log: not open".into()));
        }
        let id = |p: &Path| {
            std::fs::symlink_metadata(p)
                .ok()
                .filter(|m| m.mode() & 0o7777 == 0o600)
                .map(|m| (m.dev(), m.ino()))
        };
        let current = [id(&self.path), id(&self.head_path())];
        if let Some(o) = open
            .as_mut()
            .filter(|o| current == [Some(o.id[0]), Some(o.id[1])])
        {
            o.checked = std::time::Instant::now();
        } else {
            let file = self.file()?;
            let head = output::open_in_place(&self.head_path(), &LOG_OUTPUT)
                .map_err(|e| Error::Config(format!("audit log head file: {e}")))?;
            let of = |f: &File| {
                f.metadata()
                    .map(|m| (m.dev(), m.ino()))
                    .map_err(|e| io(&self.path, "cannot read", &e))
            };
            *open = Some(OpenLog {
                id: [of(&file)?, of(&head)?],
                file: Arc::new(file),
                head: Arc::new(head),
                checked: std::time::Instant::now(),
                pid,
                head_len: u64::MAX,
                end: u64::MAX,
                seq: 0,
                prev: GENESIS.to_owned(),
            });
        }
        open.as_mut()
            .ok_or(Error::Config("audit log: not open".into()))
    }

    /// Records are written but not synced: the flusher (started if this process has none)
    /// syncs them within the window.
    fn flush_within(&self) {
        let Durability::Within(window) = self.durability else {
            return;
        };
        let mut f = self
            .group
            .flush
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let was_pending = f.pending.is_some();
        f.pending = Some(f.pending.map_or(window, |w| w.min(window)));
        if was_pending {
            // The flusher knows already.
            return;
        }
        let pid = std::process::id();
        if f.flusher_pid != Some(pid) {
            let group = Arc::downgrade(&self.group);
            let path = self.path.clone();
            let spawned = std::thread::Builder::new()
                .name("ferrohsm-audit-flush".into())
                .spawn(move || flusher(&group, &path));
            match spawned {
                Ok(_) => f.flusher_pid = Some(pid),
                // No thread: this writer syncs instead (the records are already written).
                Err(e) => {
                    log::warn!(
                        "audit log {}: no flusher thread ({e}): syncing now",
                        self.path.display()
                    );
                    f.pending = None;
                    drop(f);
                    let _ = self.sync_now();
                    return;
                }
            }
        }
        self.group.flush_wanted.notify_one();
    }

    /// Syncs what this process wrote and names it in the head file.
    fn sync_now(&self) -> Result<()> {
        sync_group(&self.group, &self.path)
    }
}

/// The flusher: waits for written records, lets them gather for the window, syncs them and
/// names the last one in the head file; ends when the log's last `AuditLog` is gone.
fn flusher(group: &Weak<Group>, path: &Path) {
    loop {
        let Some(g) = group.upgrade() else { return };
        let window = {
            let f = g
                .flush
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (f, _) = g
                .flush_wanted
                .wait_timeout_while(f, Duration::from_secs(1), |f| f.pending.is_none())
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f.pending
        };
        let Some(window) = window else { continue };
        drop(g);
        std::thread::sleep(window);
        let Some(g) = group.upgrade() else { return };
        if let Err(e) = sync_group(&g, path) {
            log::error!("{e}");
        }
    }
}

/// Syncs the group's open log and writes the head file naming its last line.
fn sync_group(group: &Group, path: &Path) -> Result<()> {
    group
        .flush
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .pending = None;
    let snapshot = group
        .open
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
        .map(|o| (Arc::clone(&o.file), Arc::clone(&o.head)));
    let Some((file, head)) = snapshot else {
        return Ok(());
    };
    // The log first: a head file on disk never names a line that is not.
    file.sync_data()
        .and_then(|()| head.sync_data())
        .map_err(|e| io(path, "cannot sync", &e))
}

/// Rewrites the head file in place: one fixed-length line, `seq hash`, written with one
/// `pwrite` (a reader never sees half of it); synced when `sync`.
fn write_head(
    head: &File,
    head_len: &mut u64,
    seq: u64,
    prev: &str,
    sync: bool,
) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let line = format!("{seq:020} {prev}\n");
    head.write_all_at(line.as_bytes(), 0)?;
    let len = u64::try_from(line.len()).unwrap_or(u64::MAX);
    if *head_len != len {
        head.set_len(len)?;
        *head_len = len;
    }
    if sync {
        head.sync_data()?;
    }
    Ok(())
}

impl Drop for AuditLog {
    /// What this log wrote and the flusher has not synced yet is synced now (`C_Finalize`, a
    /// daemon's connection ending).
    fn drop(&mut self) {
        let pending = self
            .group
            .flush
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pending
            .is_some();
        if pending {
            if let Err(e) = self.sync_now() {
                log::error!("{e}");
            }
        }
    }
}

/// The sequence number and hash of the last line of an open log (0 and the genesis hash when
/// it is empty).
fn last_line<F: Read + Seek>(mut f: F) -> std::io::Result<(u64, String)> {
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

/// Follows a log's chain one line at a time: what [`verify`] checks of each line, for a reader
/// that gets the lines in pieces (a page at a time, over the network) and keeps only where the
/// chain is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// The last line's sequence number (0 before the first).
    seq: u64,
    /// The last line's hash (the genesis hash before the first).
    prev: String,
}

impl Default for Chain {
    fn default() -> Self {
        Self::start()
    }
}

impl Chain {
    /// Before a log's first line.
    pub fn start() -> Self {
        Self::after(0, GENESIS.to_owned())
    }

    /// After line `seq`, whose hash is `prev`.
    pub fn after(seq: u64, prev: String) -> Self {
        Self { seq, prev }
    }

    /// The last line's sequence number (0 before the first).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The last line's hash.
    pub fn prev(&self) -> &str {
        &self.prev
    }

    /// Takes `line` (without its newline) as the next line: it must parse, carry the next
    /// sequence number and name the hash of the line before. `Err((line, reason))` as
    /// [`verify`] reports it (the line the chain breaks at).
    pub fn push(&mut self, line: &str) -> std::result::Result<(), (u64, String)> {
        let n = self.seq.saturating_add(1);
        let v: Value =
            serde_json::from_str(line).map_err(|e| (n, format!("not a JSON record: {e}")))?;
        let seq = v.get("seq").and_then(Value::as_u64);
        if seq != Some(n) {
            return Err((n, format!("sequence number {seq:?}, expected {n}")));
        }
        if v.get("prev").and_then(Value::as_str) != Some(self.prev.as_str()) {
            // The numbers still count up, so no line is missing here: the line before was
            // edited (or this line's link was).
            let before = n.saturating_sub(1).max(1);
            return Err((
                before,
                format!("edited: line {n} no longer chains onto line {before}"),
            ));
        }
        self.prev = hash_line(line);
        self.seq = n;
        Ok(())
    }
}

/// A log's head file as read: the sequence number and hash it names (`None`: unreadable).
type Head = (Option<u64>, Option<String>);

fn head_path_of(path: &Path) -> PathBuf {
    let mut head_path = path.to_path_buf().into_os_string();
    head_path.push(".head");
    PathBuf::from(head_path)
}

fn parse_head(text: &str) -> Head {
    let mut parts = text.split_whitespace();
    let seq = parts.next().and_then(|s| s.parse::<u64>().ok());
    (seq, parts.next().map(str::to_owned))
}

/// The head file's verdict on a log of `count` intact lines, `at_head` the hash of the line it
/// names (when that line was seen).
fn check_head(
    head: Option<&Head>,
    head_path: &Path,
    count: u64,
    at_head: Option<&str>,
) -> std::result::Result<(), (u64, String)> {
    match head {
        None if count == 0 => Ok(()),
        // The file's name only: the reason may travel to a remote auditor.
        None => Err((
            0,
            format!(
                "head file {}: missing",
                head_path.file_name().map_or_else(
                    || head_path.display().to_string(),
                    |n| n.to_string_lossy().into_owned()
                )
            ),
        )),
        // Nothing synced yet.
        Some((Some(0), _)) => Ok(()),
        Some((Some(seq), hash)) if *seq <= count => {
            if hash.as_deref() != at_head {
                return Err((
                    *seq,
                    format!("edited: entry {seq} does not match the head file"),
                ));
            }
            Ok(())
        }
        Some((seq, _)) => Err((
            count,
            format!(
                "the head file names entry {} but the log ends at entry {count} (lines cut from the end)",
                seq.map_or_else(|| "?".to_owned(), |s| s.to_string())
            ),
        )),
    }
}

/// Checks a log: every line parses, counts up from 1, and names the hash of the line before;
/// the head file, when present, names the last line or one before it (records written after
/// the last sync, see [`Durability::Within`]). `Ok(n)`: `n` intact entries.
/// `Err((line, reason))`: the first bad line (1-based; 0 for the head file).
pub fn verify(path: &Path) -> std::result::Result<usize, (usize, String)> {
    let wide = |(line, why): (u64, String)| (usize::try_from(line).unwrap_or(usize::MAX), why);
    let text = std::fs::read_to_string(path).map_err(|e| (0, format!("cannot read: {e}")))?;
    let head_path = head_path_of(path);
    let head = match std::fs::read_to_string(&head_path) {
        Ok(head) => Some(parse_head(&head)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err((0, format!("head file {}: {e}", head_path.display())));
        }
    };
    // The hash of the line the head file names, once seen.
    let mut at_head: Option<String> = None;
    let mut chain = Chain::start();
    if !text.is_empty() && !text.ends_with('\n') {
        return Err((
            text.lines().count(),
            "the last line is incomplete".to_owned(),
        ));
    }
    for line in text.lines() {
        chain.push(line).map_err(wide)?;
        if head
            .as_ref()
            .is_some_and(|(seq, _)| *seq == Some(chain.seq))
        {
            at_head = Some(chain.prev.clone());
        }
    }
    check_head(head.as_ref(), &head_path, chain.seq, at_head.as_deref()).map_err(wide)?;
    Ok(usize::try_from(chain.seq).unwrap_or(usize::MAX))
}

/// The longest line a paged reader accepts: a record is far shorter (a label and an id are
/// cut at 256 bytes each), so a longer one is not a record.
pub const MAX_LINE: usize = 64 * 1024;

/// Where a paged read of a log goes on ([`read_page`]): after the line `chain` names, at byte
/// `offset` of the file `file` (device and inode: a log archived meanwhile is another file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// Where the next line starts.
    pub offset: u64,
    /// The file's device and inode.
    pub file: (u64, u64),
    /// The last line read.
    pub chain: Chain,
    /// The daemon's seal over the rest (an HMAC under a key it keeps): a cursor is taken back
    /// only as the daemon made it, so no page starts where a reader chose (empty here; the
    /// daemon seals what it sends).
    pub seal: [u8; 32],
}

/// One page of a log: whole lines as they are in the file, and where the next page starts
/// (`None`: the page ends at the end of the log as it was when the page was read).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// The lines (without their newlines).
    pub lines: Vec<String>,
    /// Where to go on.
    pub next: Option<Cursor>,
}

/// Reads one page of at most `max_bytes` of lines (at least one line) of the log at `path`,
/// verified: from the start (`from` is `None`), the whole log is verified as [`verify`] does
/// (head file included) while the first page is gathered, in one pass that holds one line at
/// a time; from a cursor, the page's lines must continue the chain where the last page ended
/// (a log changed or archived since is an error, never a silent gap).
///
/// The log's length and head file are taken under a shared lock on the log (the writers hold
/// it exclusively while they append), so no half-written record is read; the lock is let go
/// before the lines are read. A log that does not exist yet is an empty page.
/// `Err((line, reason))`: the first bad line (0: the log as a whole).
pub fn read_page(
    path: &Path,
    from: Option<&Cursor>,
    max_bytes: usize,
) -> std::result::Result<Page, (u64, String)> {
    use rustix::fs::{Mode, OFlags};
    use std::io::BufRead as _;
    use std::os::unix::fs::MetadataExt as _;
    let cannot = |what: &str, e: &dyn std::fmt::Display| (0, format!("cannot {what}: {e}"));
    let moved = || {
        (
            0,
            "the log was archived or replaced while it was read: read it again".to_owned(),
        )
    };
    let open = |p: &Path| {
        rustix::fs::open(
            p,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map(File::from)
    };
    let file = match open(path) {
        Ok(f) => f,
        Err(rustix::io::Errno::NOENT) if from.is_none() => return Ok(Page::default()),
        Err(rustix::io::Errno::NOENT) => return Err(moved()),
        Err(e) => return Err(cannot("open the log", &e)),
    };
    let meta = file.metadata().map_err(|e| cannot("read the log", &e))?;
    let id = (meta.dev(), meta.ino());
    if from.is_some_and(|c| c.file != id) {
        return Err(moved());
    }
    // The length and the head file, as the writers left them.
    let head_path = head_path_of(path);
    file.lock_shared().map_err(|e| cannot("lock the log", &e))?;
    let snapshot = (|| {
        let len = file
            .metadata()
            .map_err(|e| cannot("read the log", &e))?
            .len();
        let head = match open(&head_path) {
            Ok(mut h) => {
                let mut text = String::new();
                (&mut h)
                    .take(256)
                    .read_to_string(&mut text)
                    .map_err(|e| cannot("read the head file", &e))?;
                Some(parse_head(&text))
            }
            Err(rustix::io::Errno::NOENT) => None,
            Err(e) => return Err(cannot("open the head file", &e)),
        };
        Ok((len, head))
    })();
    let _ = file.unlock();
    let (len, head) = snapshot?;
    let (start, mut chain) = match from {
        None => (0, Chain::start()),
        Some(c) => (c.offset, c.chain.clone()),
    };
    if start > len {
        return Err((
            chain.seq,
            "the log is shorter than what was read of it: lines were cut".to_owned(),
        ));
    }
    let mut f = &file;
    f.seek(SeekFrom::Start(start))
        .map_err(|e| cannot("read the log", &e))?;
    let mut reader = std::io::BufReader::new(f.take(len - start));
    let mut page = Page::default();
    let mut bytes = 0usize;
    let mut offset = start;
    let first_seq = chain.seq;
    // Whether the page is full: the lines after it are still verified (from the start: all of
    // them; from a cursor: the next one, which shows whether the page's last line was
    // changed), but not sent.
    let mut full = false;
    let mut at_head: Option<String> = None;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(u64::try_from(MAX_LINE).unwrap_or(u64::MAX) + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| cannot("read the log", &e))?;
        if n == 0 {
            break;
        }
        let next = chain.seq.saturating_add(1);
        if line.last() != Some(&b'\n') {
            return Err(if n > MAX_LINE {
                (next, format!("longer than {MAX_LINE} bytes: not a record"))
            } else {
                (next, "the last line is incomplete".to_owned())
            });
        }
        line.pop();
        let text = std::str::from_utf8(&line).map_err(|_| (next, "not UTF-8".to_owned()))?;
        chain.push(text)?;
        if head
            .as_ref()
            .is_some_and(|(seq, _)| *seq == Some(chain.seq))
        {
            at_head = Some(chain.prev.clone());
        }
        if full {
            if from.is_some() {
                break;
            }
            continue;
        }
        page.lines.push(text.to_owned());
        bytes = bytes.saturating_add(n);
        offset = offset.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
        if bytes >= max_bytes && offset < len {
            full = true;
            page.next = Some(Cursor {
                offset,
                file: id,
                chain: chain.clone(),
                seal: [0; 32],
            });
        }
    }
    match (from, head.as_ref()) {
        (None, _) => check_head(head.as_ref(), &head_path, chain.seq, at_head.as_deref())?,
        // From a cursor: the head file is checked against the lines this read saw, and names
        // none past the end when the read reached it.
        (Some(_), Some((Some(h), _))) if *h > first_seq => {
            if *h <= chain.seq || page.next.is_none() {
                check_head(head.as_ref(), &head_path, chain.seq, at_head.as_deref())?;
            }
        }
        (Some(_), _) => {}
    }
    Ok(page)
}

/// `text` as it may be shown on a terminal: control characters, and the Unicode format
/// characters that reorder or hide text (bidirectional overrides, zero-width characters), are
/// written as escapes. A log's labels and a daemon's reasons are a caller's text.
pub fn printable(text: &str) -> String {
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{feff}')
    };
    text.chars()
        .flat_map(|c| {
            if hidden(c) {
                c.escape_unicode().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
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
        assert_eq!(head_seq(&path), 400);
    }

    fn head_seq(path: &Path) -> u64 {
        let mut head = path.to_path_buf().into_os_string();
        head.push(".head");
        let head = std::fs::read_to_string(head).unwrap();
        head.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// With a sync window a call returns once its record is in the file, chained and named by
    /// the head file; the flusher syncs within the window; a head file behind the log (a
    /// machine crash within the window) is accepted only where it matches.
    #[test]
    fn a_sync_window_writes_at_once_and_syncs_soon() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path)
            .unwrap()
            .with_durability(Durability::from_millis(20));
        for i in 1..=50 {
            log.append(&entry("C_Sign")).unwrap();
            // Already in the file, and named by the head file.
            assert_eq!(verify(&path), Ok(i));
            assert_eq!(head_seq(&path), u64::try_from(i).unwrap());
        }
        // The flusher ran: nothing is pending any more.
        std::thread::sleep(Duration::from_millis(200));
        assert!(log.group.flush.lock().unwrap().pending.is_none());

        // A head file behind the log, naming a real line, is what a crash within the window
        // leaves: accepted. One naming a line that is not there, or another hash, is not.
        let text = std::fs::read_to_string(&path).unwrap();
        let line2 = text.lines().nth(1).unwrap();
        let head = log.head_path();
        std::fs::write(&head, format!("2 {}\n", hash_line(line2))).unwrap();
        assert_eq!(verify(&path), Ok(50));
        std::fs::write(&head, format!("2 {}\n", hash_line("forged"))).unwrap();
        assert_eq!(verify(&path).unwrap_err().0, 2);
        std::fs::write(&head, format!("51 {}\n", hash_line(line2))).unwrap();
        assert!(verify(&path).unwrap_err().1.contains("cut"));
        std::fs::remove_file(&head).unwrap();
        assert!(verify(&path).unwrap_err().1.contains("missing"));
    }

    /// An archived log (moved away with its head file) is not written to any more once the
    /// writer looked at the path again: the next record starts a new log there.
    #[test]
    fn an_archived_log_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path)
            .unwrap()
            .with_durability(Durability::from_millis(5));
        for _ in 0..3 {
            log.append(&entry("C_Sign")).unwrap();
        }
        let old = dir.path().join("old.log");
        std::fs::rename(&path, &old).unwrap();
        std::fs::rename(log.head_path(), dir.path().join("old.log.head")).unwrap();
        // Let go within PATH_CHECK.
        std::thread::sleep(PATH_CHECK * 3);
        log.append(&entry("C_Logout")).unwrap();
        assert_eq!(verify(&old), Ok(3));
        assert_eq!(verify(&path), Ok(1));
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

    /// Every page of `path`, `max` bytes each, from the start.
    fn pages(path: &Path, max: usize) -> std::result::Result<Vec<Page>, (u64, String)> {
        let mut all = vec![read_page(path, None, max)?];
        while let Some(next) = all.last().and_then(|p| p.next.clone()) {
            all.push(read_page(path, Some(&next), max)?);
        }
        Ok(all)
    }

    #[test]
    fn pages_carry_the_whole_chain_and_each_continues_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        // No log yet: nothing to read, nothing wrong.
        assert_eq!(read_page(&path, None, 100), Ok(Page::default()));
        let log = AuditLog::open(&path).unwrap();
        for _ in 0..40 {
            log.append(&entry("C_Sign")).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let line_len = text.lines().next().unwrap().len() + 1;
        // Pages of about three lines.
        let all = pages(&path, line_len * 3).unwrap();
        assert!(all.len() >= 13, "{} pages", all.len());
        let lines: Vec<String> = all.iter().flat_map(|p| p.lines.clone()).collect();
        assert_eq!(lines, text.lines().map(str::to_owned).collect::<Vec<_>>());
        // A client's own check: one chain across the pages.
        let mut chain = Chain::start();
        for l in &lines {
            chain.push(l).unwrap();
        }
        assert_eq!(chain.seq(), 40);
        assert_eq!(all.last().unwrap().next, None);
        // One page for the lot when it fits.
        assert_eq!(pages(&path, 1 << 20).unwrap().len(), 1);
    }

    #[test]
    fn a_paged_read_refuses_a_changed_log_and_never_skips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        for f in ["C_Login", "C_SignInit", "C_Sign", "C_Logout", "C_Finalize"] {
            log.append(&entry(f)).unwrap();
        }
        let good = std::fs::read_to_string(&path).unwrap();
        // Changed before the read: the first page already says where.
        std::fs::write(&path, good.replacen("C_Sign\"", "C_Sigm\"", 1)).unwrap();
        assert_eq!(read_page(&path, None, 1).unwrap_err().0, 3);
        assert_eq!(pages(&path, 1 << 20).unwrap_err().0, 3);
        // Changed during the read (after the first page): the next page that holds it fails.
        std::fs::write(&path, &good).unwrap();
        let first = read_page(&path, None, 1).unwrap();
        assert_eq!(first.lines.len(), 1);
        let next = first.next.clone().unwrap();
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        // Same length, one byte of line 4 changed (in place: the same file).
        let at = good.find("C_Logout").unwrap();
        f.seek(SeekFrom::Start(u64::try_from(at).unwrap())).unwrap();
        f.write_all(b"C_Lagout").unwrap();
        let second = read_page(&path, Some(&next), 1).unwrap();
        assert_eq!(second.lines.len(), 1);
        let third = read_page(&path, second.next.as_ref(), 1).unwrap();
        assert_eq!(read_page(&path, third.next.as_ref(), 1).unwrap_err().0, 4);
        // A cursor into a log cut short, or one archived meanwhile.
        std::fs::write(&path, &good).unwrap();
        let four: usize = good.lines().take(4).map(|l| l.len() + 1).sum();
        let far = read_page(&path, None, four).unwrap().next.unwrap();
        f.set_len(10).unwrap();
        assert!(
            read_page(&path, Some(&far), 1)
                .unwrap_err()
                .1
                .contains("cut")
        );
        std::fs::write(&path, &good).unwrap();
        std::fs::rename(&path, dir.path().join("old.log")).unwrap();
        std::fs::write(&path, &good).unwrap();
        assert!(
            read_page(&path, Some(&next), 1)
                .unwrap_err()
                .1
                .contains("archived")
        );
        // A line far longer than any record.
        std::fs::write(&path, format!("{}\n", "x".repeat(MAX_LINE + 10))).unwrap();
        assert!(
            read_page(&path, None, 1)
                .unwrap_err()
                .1
                .contains("longer than")
        );
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
