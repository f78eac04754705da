//! The SQLite store: one database per token directory, in WAL mode.
//!
//! Multi-process safe (SQLite's locking), crash safe (every change is one transaction), and
//! incremental: every transaction bumps a change counter and stamps the rows it writes with it,
//! and deletions leave a tombstone, so another process catches up by reading only what changed
//! since the counter it last saw.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bridge::{Error, Result};
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::*;

/// The format tag written at initialization.
const FORMAT: &str = "ferrohsm-token-1";

fn db_err(path: &Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| Error::Store(format!("{}: {e}", path.display()))
}

/// One token's database.
pub(crate) struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Opened as a tenant's store (`sealed.rs`), whose device key and PIN wraps are sealed.
    sealed: bool,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SqliteStore({})", self.path.display())
    }
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
    CREATE TABLE IF NOT EXISTS objects (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        rev INTEGER NOT NULL,
        record BLOB NOT NULL
    );
    CREATE INDEX IF NOT EXISTS objects_rev ON objects(rev);
    CREATE TABLE IF NOT EXISTS tombstones (id INTEGER PRIMARY KEY, rev INTEGER NOT NULL);
    CREATE INDEX IF NOT EXISTS tombstones_rev ON tombstones(rev);
    CREATE TABLE IF NOT EXISTS pin_tries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        counter TEXT NOT NULL,
        started INTEGER NOT NULL
    );
";

fn read_counter(tx: &rusqlite::Transaction<'_>, path: &Path, counter: Counter) -> Result<i64> {
    tx.query_row(
        "SELECT value FROM meta WHERE key = ?1",
        [counter.key()],
        |r| r.get::<_, i64>(0),
    )
    .optional()
    .map_err(db_err(path))
    .map(|v| v.unwrap_or(0).max(0))
}

fn write_counter(
    tx: &rusqlite::Transaction<'_>,
    path: &Path,
    counter: Counter,
    value: i64,
) -> Result<()> {
    tx.execute(
        "INSERT OR REPLACE INTO meta(key, value) VALUES(?1, ?2)",
        params![counter.key(), value.max(0)],
    )
    .map(|_| ())
    .map_err(db_err(path))
}

impl SqliteStore {
    /// Opens the database of the token directory `dir`, if it exists.
    pub(crate) fn open(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(DB_FILE);
        if !path.exists() {
            return Ok(None);
        }
        Self::connect(&path, false).map(Some)
    }

    /// This store as a tenant's (see `sealed.rs`): its sealed values are expected.
    pub(crate) fn for_tenant(mut self) -> Self {
        self.sealed = true;
        self
    }

    /// Creates (or opens) the database of the token directory `dir`.
    pub(crate) fn create(dir: &Path) -> Result<Self> {
        create_private_dir(dir)
            .map_err(|e| Error::Store(format!("{}: cannot create: {e}", dir.display())))?;
        restrict_permissions(dir, 0o700);
        if let Some(parent) = dir
            .parent()
            .filter(|p| p.file_name() == Some("tokens".as_ref()))
        {
            restrict_permissions(parent, 0o700);
        }
        // The file exists, owner-only, before SQLite opens it: SQLite gives its WAL and
        // shared-memory files the database file's mode.
        let path = dir.join(DB_FILE);
        create_private_file(&path)
            .map_err(|e| Error::Store(format!("{}: cannot create: {e}", path.display())))?;
        Self::connect(&path, true)
    }

    fn connect(path: &Path, create: bool) -> Result<Self> {
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let err = db_err(path);
        let conn = Connection::open_with_flags(path, flags).map_err(&err)?;
        restrict_permissions(path, 0o600);
        conn.busy_timeout(Duration::from_secs(30)).map_err(&err)?;
        // A foreign or corrupt file fails here, with SQLite's own words ("file is not a
        // database"), never later with a panic.
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(&err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Store(format!(
                "{}: cannot use WAL mode ({mode})",
                path.display()
            )));
        }
        // secure_delete: freed pages (destroyed objects, replaced PIN wraps) are overwritten
        // with zeros; journal_size_limit: a checkpointed WAL shrinks to nothing instead of
        // keeping old frames (see `scrub`).
        conn.execute_batch(
            "PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF; PRAGMA secure_delete=ON; \
             PRAGMA journal_size_limit=0;",
        )
        .map_err(&err)?;
        conn.execute_batch(SCHEMA).map_err(&err)?;
        for suffix in ["-wal", "-shm"] {
            let mut side = path.as_os_str().to_owned();
            side.push(suffix);
            restrict_permissions(Path::new(&side), 0o600);
        }
        let store = Self {
            path: path.to_owned(),
            conn: Mutex::new(conn),
            sealed: false,
        };
        if let Some(format) = store.meta_text("format")? {
            if format != FORMAT {
                return Err(Error::Store(format!(
                    "{}: unknown store format {format:?} (this build reads {FORMAT:?})",
                    path.display()
                )));
            }
        }
        Ok(store)
    }

    /// The database file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn meta_text(&self, key: &str) -> Result<Option<String>> {
        let conn = self.conn.lock();
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
            r.get::<_, String>(0)
        })
        .optional()
        .map_err(db_err(&self.path))
    }

    /// Whether the token was initialized (a complete meta row set exists).
    #[allow(dead_code)] // not used yet
    pub(crate) fn is_initialized(&self) -> Result<bool> {
        Ok(self.meta_text("format")?.is_some())
    }

    /// Runs `f` in an immediate (write) transaction and commits; the counter is bumped once
    /// and passed to `f` to stamp what it writes.
    fn write<T>(&self, f: impl FnOnce(&rusqlite::Transaction<'_>, u64) -> Result<T>) -> Result<T> {
        let mut conn = self.conn.lock();
        let err = db_err(&self.path);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        let counter: i64 = tx
            .query_row("SELECT value FROM meta WHERE key = 'counter'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(&err)?
            .unwrap_or(0);
        let next = counter
            .checked_add(1)
            .ok_or(Error::Internal("counter overflow"))?;
        tx.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES('counter', ?1)",
            [next],
        )
        .map_err(&err)?;
        let out = f(&tx, u64::try_from(next).unwrap_or(0))?;
        tx.commit().map_err(&err)?;
        Ok(out)
    }
}

impl Store for SqliteStore {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    /// Best effort: moves everything from the WAL into the database and truncates the WAL,
    /// so that what a deletion or a PIN change replaced (zeroed in the database by
    /// `secure_delete`) leaves no old copy in the WAL either. Another process's open read
    /// transaction can keep old frames until the next checkpoint.
    fn scrub(&self) {
        let conn = self.conn.lock();
        let r = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            r.get::<_, i64>(0)
        });
        match r {
            Ok(0) => {}
            Ok(_) => log::debug!("{}: checkpoint deferred by a reader", self.path.display()),
            Err(e) => log::warn!("{}: checkpoint: {e}", self.path.display()),
        }
    }

    /// SQLite's per-connection counter of commits made by other connections.
    fn data_version(&self) -> Result<i64> {
        let conn = self.conn.lock();
        // Asked before every object lookup (so that another process's changes show at once):
        // a cached statement spares parsing the pragma each time, which profiling showed as a
        // large part of this call's cost.
        conn.prepare_cached("PRAGMA data_version")
            .and_then(|mut stmt| stmt.query_row([], |r| r.get(0)))
            .map_err(db_err(&self.path))
    }

    /// Reads the meta table (`None` if the token was never initialized).
    fn load_meta(&self) -> Result<Option<(Meta, u64)>> {
        let conn = self.conn.lock();
        let err = db_err(&self.path);
        let mut stmt = conn
            .prepare_cached("SELECT key, value FROM meta")
            .map_err(&err)?;
        let mut rows = stmt.query([]).map_err(&err)?;
        let mut meta = Meta::default();
        let mut counter = 0u64;
        let mut seen_format = false;
        while let Some(row) = rows.next().map_err(&err)? {
            let key: String = row.get(0).map_err(&err)?;
            let v = row.get_ref(1).map_err(&err)?;
            let blob = || {
                v.as_bytes()
                    .map(<[u8]>::to_vec)
                    .map_err(|_| corrupt_meta(&self.path, &key))
            };
            let int = || v.as_i64().map_err(|_| corrupt_meta(&self.path, &key));
            match key.as_str() {
                "format" => seen_format = true,
                "uuid" => meta.uuid = blob()?,
                "label" => meta.label = blob()?,
                "serial" => meta.serial = String::from_utf8_lossy(&blob()?).into_owned(),
                "kdf_iterations" => meta.kdf_iterations = to_u32(int()?),
                "so_wrap" => meta.so_wrap = blob()?,
                "user_wrap" => meta.user_wrap = Some(blob()?),
                "device_key" => meta.device_key = blob()?,
                "so_failures" => meta.so_failures = to_u32(int()?),
                "user_failures" => meta.user_failures = to_u32(int()?),
                "user_pin_to_be_changed" => meta.user_pin_to_be_changed = int()? != 0,
                "counter" => counter = u64::try_from(int()?).unwrap_or(0),
                _ => {}
            }
        }
        if !seen_format {
            return Ok(None);
        }
        // A tenant's device key is sealed (`sealed.rs` checks it once opened).
        let sealed = sealed::is_sealed(&meta.device_key);
        if sealed && !self.sealed {
            return Err(Error::Store(format!(
                "{}: sealed under a tenant's key: it opens only as that tenant's token, \
                 through `ferrohsm serve` on its home",
                self.path.display()
            )));
        }
        if meta.uuid.len() != 16
            || (meta.device_key.len() != 32 && !sealed)
            || meta.so_wrap.is_empty()
        {
            return Err(corrupt_meta(&self.path, "token"));
        }
        Ok(Some((meta, counter)))
    }

    /// Initializes (or re-initializes) the token in one transaction: every object goes, the
    /// meta table is replaced.
    fn initialize(&self, meta: &Meta) -> Result<u64> {
        let path = self.path.clone();
        self.write(|tx, rev| {
            let err = db_err(&path);
            tx.execute("DELETE FROM objects", []).map_err(&err)?;
            tx.execute("DELETE FROM tombstones", []).map_err(&err)?;
            tx.execute("DELETE FROM pin_tries", []).map_err(&err)?;
            tx.execute("DELETE FROM meta WHERE key <> 'counter'", [])
                .map_err(&err)?;
            put_meta(tx, &path, meta)?;
            tx.execute(
                "INSERT INTO meta(key, value) VALUES('format', ?1)",
                [FORMAT],
            )
            .map_err(&err)?;
            Ok(rev)
        })
    }

    /// Replaces one PIN's wrap of the token key, in one transaction, and nothing else: a
    /// change of the other PIN by another process at the same time is never undone. A new user
    /// PIN (`reset`, `C_InitPIN`) also clears the user's failure counter and the tries in
    /// progress; `to_be_changed` sets `CKF_USER_PIN_TO_BE_CHANGED`. The counters are otherwise
    /// written only by `begin_try` / `end_try`, in the transactions that read them.
    fn update_wrap(
        &self,
        pin: Counter,
        based_on: Option<&[u8]>,
        wrap: &[u8],
        to_be_changed: Option<bool>,
        reset: bool,
    ) -> Result<u64> {
        let path = self.path.clone();
        self.write(|tx, rev| {
            let err = db_err(&path);
            let key = match pin {
                Counter::So => "so_wrap",
                Counter::User => "user_wrap",
            };
            if let Some(based_on) = based_on {
                let now: Option<Vec<u8>> = tx
                    .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                    .optional()
                    .map_err(&err)?;
                if now.as_deref() != Some(based_on) {
                    log::warn!(
                        "{}: the PIN was changed by another process meanwhile; this change is refused",
                        path.display()
                    );
                    return Err(Error::DeviceError);
                }
            }
            tx.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES(?1, ?2)",
                params![key, wrap],
            )
            .map_err(&err)?;
            if let Some(v) = to_be_changed {
                tx.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES('user_pin_to_be_changed', ?1)",
                    [i64::from(v)],
                )
                .map_err(&err)?;
            }
            if reset {
                write_counter(tx, &path, pin, 0)?;
                tx.execute("DELETE FROM pin_tries WHERE counter = ?1", [pin.key()])
                    .map_err(&err)?;
            }
            Ok(rev)
        })
    }

    /// Begins a PIN try under a limit of `limit` failures, in one write transaction: tries that
    /// went stale (their process died) become failures; then the try is refused if the
    /// failures reach the limit, asked to wait if failures and tries in progress fill it,
    /// and otherwise recorded as in progress — before its PIN derivation runs, so that no
    /// number of parallel callers can try more PINs than the limit allows.
    fn begin_try(&self, counter: Counter, limit: u32) -> Result<TryStart> {
        let path = self.path.clone();
        self.write(|tx, _| {
            let err = db_err(&path);
            let now = unix_now();
            let stale = tx
                .execute(
                    "DELETE FROM pin_tries WHERE counter = ?1 AND started < ?2",
                    params![counter.key(), now - STALE_TRY_SECS],
                )
                .map_err(&err)?;
            let mut failures = read_counter(tx, &path, counter)?;
            if stale > 0 {
                failures = failures.saturating_add(i64::try_from(stale).unwrap_or(i64::MAX));
                write_counter(tx, &path, counter, failures)?;
            }
            let pending: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM pin_tries WHERE counter = ?1",
                    [counter.key()],
                    |r| r.get(0),
                )
                .map_err(&err)?;
            let limit = i64::from(limit);
            if failures >= limit {
                return Ok(TryStart::Locked);
            }
            if failures + pending >= limit {
                return Ok(TryStart::Busy);
            }
            tx.execute(
                "INSERT INTO pin_tries(counter, started) VALUES(?1, ?2)",
                params![counter.key(), now],
            )
            .map_err(&err)?;
            Ok(TryStart::Go(Try {
                id: tx.last_insert_rowid(),
                counter,
                seen: failures,
            }))
        })
    }

    /// Ends a PIN try: a failure stays counted; a success refunds its own count and clears the
    /// failures it saw when it began. Returns the failures now recorded.
    fn end_try(&self, t: Try, success: bool) -> Result<u32> {
        let path = self.path.clone();
        self.write(|tx, _| {
            let err = db_err(&path);
            let removed = tx
                .execute("DELETE FROM pin_tries WHERE id = ?1", [t.id])
                .map_err(&err)?;
            let mut failures = read_counter(tx, &path, t.counter)?;
            if success {
                // A try that went stale was turned into a failure meanwhile: refund it too.
                let own = i64::from(removed == 0);
                failures = failures.saturating_sub(t.seen.saturating_add(own)).max(0);
            } else if removed == 1 {
                failures = failures.saturating_add(1);
            }
            write_counter(tx, &path, t.counter, failures)?;
            Ok(u32::try_from(failures).unwrap_or(u32::MAX))
        })
    }

    /// Inserts an object; `encode(id)` produces its record once the id is known (the id is
    /// bound into the sealed part). Returns (id, rev).
    fn insert(&self, encode: &mut dyn FnMut(i64) -> Result<Vec<u8>>) -> Result<(i64, u64)> {
        let path = self.path.clone();
        self.write(|tx, rev| {
            let err = db_err(&path);
            tx.execute(
                "INSERT INTO objects(rev, record) VALUES(?1, x'')",
                [to_i64(rev)],
            )
            .map_err(&err)?;
            let id = tx.last_insert_rowid();
            let record = encode(id)?;
            tx.execute(
                "UPDATE objects SET record = ?1 WHERE id = ?2",
                params![record, id],
            )
            .map_err(&err)?;
            Ok((id, rev))
        })
    }

    /// Replaces an object's record if it is still at rev `based_on`. Returns the new rev.
    fn update(&self, id: i64, based_on: u64, record: &[u8]) -> Result<Option<u64>> {
        let path = self.path.clone();
        self.write(|tx, rev| {
            let err = db_err(&path);
            let now: Option<i64> = tx
                .query_row("SELECT rev FROM objects WHERE id = ?1", [id], |r| r.get(0))
                .optional()
                .map_err(&err)?;
            match now {
                None => Err(Error::ObjectHandleInvalid),
                Some(r) if r != to_i64(based_on) => Ok(None),
                Some(_) => {
                    tx.execute(
                        "UPDATE objects SET record = ?1, rev = ?2 WHERE id = ?3",
                        params![record, to_i64(rev), id],
                    )
                    .map_err(&err)?;
                    Ok(Some(rev))
                }
            }
        })
    }

    /// Deletes an object, leaving a tombstone for other processes.
    fn delete(&self, id: i64) -> Result<u64> {
        let path = self.path.clone();
        self.write(|tx, rev| {
            let err = db_err(&path);
            let n = tx
                .execute("DELETE FROM objects WHERE id = ?1", [id])
                .map_err(&err)?;
            if n == 0 {
                return Err(Error::ObjectHandleInvalid);
            }
            tx.execute(
                "INSERT OR REPLACE INTO tombstones(id, rev) VALUES(?1, ?2)",
                params![id, to_i64(rev)],
            )
            .map_err(&err)?;
            Ok(rev)
        })
    }

    /// Everything that changed after `since` (all rows for `since == 0`).
    fn changes_since(&self, since: u64) -> Result<Delta> {
        let conn = self.conn.lock();
        let err = db_err(&self.path);
        // One read transaction, so the counter and the rows agree.
        conn.execute_batch("BEGIN").map_err(&err)?;
        let result = (|| {
            let counter: i64 = conn
                .query_row("SELECT value FROM meta WHERE key = 'counter'", [], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(&err)?
                .unwrap_or(0);
            let mut stmt = conn
                .prepare_cached("SELECT id, rev, record FROM objects WHERE rev > ?1 ORDER BY id")
                .map_err(&err)?;
            let rows = stmt
                .query_map([to_i64(since)], |r| {
                    Ok(Changed {
                        id: r.get(0)?,
                        rev: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                        record: r.get(2)?,
                    })
                })
                .map_err(&err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(&err)?;
            let deleted = if since == 0 {
                Vec::new()
            } else {
                let mut stmt = conn
                    .prepare_cached("SELECT id FROM tombstones WHERE rev > ?1")
                    .map_err(&err)?;
                stmt.query_map([to_i64(since)], |r| r.get(0))
                    .map_err(&err)?
                    .collect::<rusqlite::Result<Vec<i64>>>()
                    .map_err(&err)?
            };
            Ok(Delta {
                counter: u64::try_from(counter).unwrap_or(0),
                rows,
                deleted,
            })
        })();
        conn.execute_batch("COMMIT").map_err(&err)?;
        result
    }
}

/// A value of the meta table, as SQLite holds it.
pub(crate) enum MetaValue {
    Int(i64),
    Blob(Vec<u8>),
    Text(String),
}

/// A whole token database, row for row, for a backup: meta (PIN-wrapped token key, device key,
/// counters, flags) and the object records (whose secrets are sealed under the token or device
/// key). Holds the device key in clear, so it is zeroized on drop and prints nothing.
#[derive(Default)]
pub(crate) struct Dump {
    pub(crate) meta: Vec<(String, MetaValue)>,
    /// (id, rev, record)
    pub(crate) objects: Vec<(i64, i64, Vec<u8>)>,
    /// The AUTOINCREMENT high-water mark of object ids (ids are never reused).
    pub(crate) id_seq: i64,
}

impl Dump {
    /// The change counter recorded in the meta table (0 if none).
    pub(crate) fn counter(&self) -> u64 {
        self.meta
            .iter()
            .find_map(|(k, v)| match (k.as_str(), v) {
                ("counter", MetaValue::Int(c)) => u64::try_from(*c).ok(),
                _ => None,
            })
            .unwrap_or(0)
    }

    /// A blob of the meta table.
    pub(crate) fn meta_blob(&self, key: &str) -> Option<&[u8]> {
        self.meta.iter().find_map(|(k, v)| match v {
            MetaValue::Blob(b) if k == key => Some(b.as_slice()),
            _ => None,
        })
    }

    /// Whether the dump is of an initialized token.
    pub(crate) fn is_initialized(&self) -> bool {
        self.meta.iter().any(|(k, _)| k == "format")
    }
}

impl Drop for Dump {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        for (_, v) in &mut self.meta {
            match v {
                MetaValue::Blob(b) => b.zeroize(),
                MetaValue::Text(t) => t.zeroize(),
                MetaValue::Int(i) => i.zeroize(),
            }
        }
        for (_, _, r) in &mut self.objects {
            r.zeroize();
        }
    }
}

impl std::fmt::Debug for Dump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dump({} objects)", self.objects.len())
    }
}

impl SqliteStore {
    /// Reads the whole database in one read transaction (a consistent state even while other
    /// processes write).
    pub(crate) fn dump(&self) -> Result<Dump> {
        let conn = self.conn.lock();
        let err = db_err(&self.path);
        conn.execute_batch("BEGIN").map_err(&err)?;
        let result = (|| {
            let mut dump = Dump::default();
            let mut stmt = conn
                .prepare("SELECT key, value FROM meta ORDER BY key")
                .map_err(&err)?;
            let mut rows = stmt.query([]).map_err(&err)?;
            while let Some(row) = rows.next().map_err(&err)? {
                let key: String = row.get(0).map_err(&err)?;
                let value = match row.get_ref(1).map_err(&err)? {
                    rusqlite::types::ValueRef::Integer(i) => MetaValue::Int(i),
                    rusqlite::types::ValueRef::Blob(b) => MetaValue::Blob(b.to_vec()),
                    rusqlite::types::ValueRef::Text(t) => {
                        MetaValue::Text(String::from_utf8_lossy(t).into_owned())
                    }
                    _ => return Err(corrupt_meta(&self.path, &key)),
                };
                dump.meta.push((key, value));
            }
            let mut stmt = conn
                .prepare("SELECT id, rev, record FROM objects ORDER BY id")
                .map_err(&err)?;
            dump.objects = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(&err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(&err)?;
            dump.id_seq = conn
                .query_row(
                    "SELECT seq FROM sqlite_sequence WHERE name = 'objects'",
                    [],
                    |r| r.get(0),
                )
                .optional()
                .map_err(&err)?
                .unwrap_or(0);
            Ok(dump)
        })();
        conn.execute_batch("COMMIT").map_err(&err)?;
        result
    }

    /// Creates the database of the token directory `dir` (which must not hold one) from a
    /// dump, in one transaction: the same rows, ids, counter and id sequence.
    pub(crate) fn create_from_dump(dir: &Path, dump: &Dump) -> Result<Self> {
        if dir.join(DB_FILE).exists() {
            return Err(Error::Store(format!(
                "{}: a token database exists already",
                dir.display()
            )));
        }
        let store = Self::create(dir)?;
        {
            let mut conn = store.conn.lock();
            let err = db_err(&store.path);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(&err)?;
            for (key, value) in &dump.meta {
                let v = match value {
                    MetaValue::Int(i) => rusqlite::types::Value::Integer(*i),
                    MetaValue::Blob(b) => rusqlite::types::Value::Blob(b.clone()),
                    MetaValue::Text(t) => rusqlite::types::Value::Text(t.clone()),
                };
                tx.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES(?1, ?2)",
                    params![key, v],
                )
                .map_err(&err)?;
            }
            for (id, rev, record) in &dump.objects {
                tx.execute(
                    "INSERT INTO objects(id, rev, record) VALUES(?1, ?2, ?3)",
                    params![id, rev, record],
                )
                .map_err(&err)?;
            }
            if dump.id_seq > 0 {
                tx.execute("DELETE FROM sqlite_sequence WHERE name = 'objects'", [])
                    .map_err(&err)?;
                tx.execute(
                    "INSERT INTO sqlite_sequence(name, seq) VALUES('objects', ?1)",
                    [dump.id_seq],
                )
                .map_err(&err)?;
            }
            tx.commit().map_err(&err)?;
        }
        // The format check of a fresh connection, so a dump of a foreign format fails here.
        drop(store);
        Self::connect(&dir.join(DB_FILE), false)
    }
}

/// Writes a whole meta table (`C_InitToken`).
fn put_meta(tx: &rusqlite::Transaction<'_>, path: &Path, m: &Meta) -> Result<()> {
    let err = db_err(path);
    let put = |k: &str, v: rusqlite::types::Value| {
        tx.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES(?1, ?2)",
            params![k, v],
        )
        .map(|_| ())
        .map_err(&err)
    };
    use rusqlite::types::Value::{Blob, Integer};
    put("uuid", Blob(m.uuid.clone()))?;
    put("label", Blob(m.label.clone()))?;
    put("serial", Blob(m.serial.as_bytes().to_vec()))?;
    put("kdf_iterations", Integer(i64::from(m.kdf_iterations)))?;
    put("device_key", Blob(m.device_key.clone()))?;
    put("so_wrap", Blob(m.so_wrap.clone()))?;
    match &m.user_wrap {
        Some(w) => put("user_wrap", Blob(w.clone()))?,
        None => {
            tx.execute("DELETE FROM meta WHERE key = 'user_wrap'", [])
                .map_err(&err)?;
        }
    }
    put("so_failures", Integer(i64::from(m.so_failures)))?;
    put("user_failures", Integer(i64::from(m.user_failures)))?;
    put(
        "user_pin_to_be_changed",
        Integer(i64::from(m.user_pin_to_be_changed)),
    )?;
    Ok(())
}

fn corrupt_meta(path: &Path, key: &str) -> Error {
    Error::Store(format!(
        "{}: corrupt token metadata ({key})",
        path.display()
    ))
}

fn to_u32(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            uuid: vec![7; 16],
            serial: "1".into(),
            kdf_iterations: 1,
            so_wrap: b"so-0".to_vec(),
            user_wrap: Some(b"user-0".to_vec()),
            device_key: vec![1; 32],
            ..Meta::default()
        }
    }

    /// A PIN change is made from the wrap its PIN check opened: if another process changed
    /// that PIN in between, the change is refused rather than silently replacing the other.
    #[test]
    fn a_pin_change_based_on_a_replaced_wrap_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::create(dir.path()).unwrap();
        store.initialize(&meta()).unwrap();
        // Another process: user-0 → user-1.
        store
            .update_wrap(
                Counter::User,
                Some(b"user-0"),
                b"user-1",
                Some(false),
                false,
            )
            .unwrap();
        // This one checked the PIN against user-0 before that change.
        assert!(matches!(
            store.update_wrap(
                Counter::User,
                Some(b"user-0"),
                b"user-2",
                Some(false),
                false
            ),
            Err(Error::DeviceError)
        ));
        let (m, _) = store.load_meta().unwrap().unwrap();
        assert_eq!(m.user_wrap.as_deref(), Some(&b"user-1"[..]));
        // The SO's C_InitPIN replaces whatever is there.
        store
            .update_wrap(Counter::User, None, b"user-3", None, true)
            .unwrap();
        let (m, _) = store.load_meta().unwrap().unwrap();
        assert_eq!(m.user_wrap.as_deref(), Some(&b"user-3"[..]));
    }
}
