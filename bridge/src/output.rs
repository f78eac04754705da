//! Safe file output: every file the CLI writes (backups, domain files, KEK public keys, `.byok`
//! files, the home's domain key) and the audit log with its head file go through here.
//!
//! A whole file ([`write_file`]) is written to a temporary file with a random name in the
//! target's own directory, created with `O_CREAT | O_EXCL | O_NOFOLLOW` and mode 0600 (0644
//! only when the caller asks for it, for public material), synced, and renamed onto the target;
//! the directory is then synced. An append-only log ([`open_append`]) is opened with
//! `O_NOFOLLOW`, must be a regular file of the effective user with one link, and is set to 0600.
//!
//! Refused, before anything is created:
//! - a target that is a symbolic link (dangling or not), or exists and is not a regular file;
//! - a directory that users other than its owner can write (group- or world-writable, sticky
//!   or not), or that belongs to a user other than the effective user or root, unless the
//!   caller allows it ([`WriteOptions::allow_shared_dir`]): anyone who can write there can
//!   swap or redirect the file between its creation and its use.
//!
//! The directory is opened once and every later step (the check, the temporary file, the
//! rename) is relative to that descriptor, so the directory checked is the directory written,
//! even if a path component is replaced meanwhile. A symbolic link that replaces the target
//! between the check and the rename is itself replaced: a rename never writes through a link.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

/// Owner read and write.
const PRIVATE_MODE: u32 = 0o600;
/// Owner read and write, everyone read: public material only.
const PUBLIC_MODE: u32 = 0o644;
/// Attempts at a fresh temporary name before giving up (each collision is 2^-128 by chance,
/// so more than one means someone plants names).
const TEMP_ATTEMPTS: usize = 4;

/// How a file is written. Start from [`WriteOptions::private`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteOptions {
    mode: u32,
    allow_shared_dir: bool,
    replace: bool,
    remedy: &'static str,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self::private()
    }
}

impl WriteOptions {
    /// Mode 0600, an existing regular file is replaced, the directory must be private.
    pub const fn private() -> Self {
        Self {
            mode: PRIVATE_MODE,
            allow_shared_dir: false,
            replace: true,
            remedy: "use a directory that only you can write",
        }
    }

    /// Mode 0644 when `yes` (public material only, and only when the operator asks).
    #[must_use]
    pub const fn world_readable(mut self, yes: bool) -> Self {
        self.mode = if yes { PUBLIC_MODE } else { PRIVATE_MODE };
        self
    }

    /// Accept a directory that others can write, when `yes` (the operator's explicit choice).
    #[must_use]
    pub const fn allow_shared_dir(mut self, yes: bool) -> Self {
        self.allow_shared_dir = yes;
        self
    }

    /// Refuse a target that exists (even as a dangling link) instead of replacing it.
    #[must_use]
    pub const fn no_replace(mut self) -> Self {
        self.replace = false;
        self
    }

    /// What the refusal of a shared directory tells the operator to do (e.g. name the flag that
    /// allows it).
    #[must_use]
    pub const fn shared_dir_remedy(mut self, remedy: &'static str) -> Self {
        self.remedy = remedy;
        self
    }

    /// The file mode this writes.
    pub const fn mode(&self) -> u32 {
        self.mode
    }
}

/// Why a file was not written: one line naming the file, the reason and what to do.
#[derive(Debug)]
pub struct OutputError {
    path: PathBuf,
    why: Why,
}

#[derive(Debug)]
enum Why {
    NotAFileName,
    Symlink,
    NotRegular,
    Exists,
    SharedDir {
        dir: PathBuf,
        detail: String,
        remedy: &'static str,
    },
    NotOwned,
    Linked,
    TempNames,
    Swapped,
    Io {
        what: &'static str,
        err: std::io::Error,
    },
}

impl OutputError {
    fn new(path: &Path, why: Why) -> Self {
        Self {
            path: path.to_owned(),
            why,
        }
    }

    fn io(path: &Path, what: &'static str, err: impl Into<std::io::Error>) -> Self {
        Self::new(
            path,
            Why::Io {
                what,
                err: err.into(),
            },
        )
    }

    /// True when the target exists and the caller asked not to replace it.
    pub fn is_exists(&self) -> bool {
        matches!(self.why, Why::Exists)
    }
}

impl fmt::Display for OutputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.path.display();
        match &self.why {
            Why::NotAFileName => write!(f, "cannot write {p}: not a file name"),
            Why::Symlink => write!(
                f,
                "cannot write {p}: it is a symbolic link, and output never goes through one \
                 (remove the link or choose another path)"
            ),
            Why::NotRegular => write!(
                f,
                "cannot write {p}: it exists and is not a regular file (choose another path)"
            ),
            Why::Exists => write!(
                f,
                "cannot write {p}: it exists already and is left as it is (choose another file)"
            ),
            Why::SharedDir {
                dir,
                detail,
                remedy,
            } => write!(
                f,
                "cannot write {p}: its directory {} {detail}, so others could swap or redirect \
                 the file ({remedy})",
                dir.display()
            ),
            Why::NotOwned => write!(
                f,
                "cannot write {p}: it belongs to another user (remove it or choose another path)"
            ),
            Why::Linked => write!(
                f,
                "cannot write {p}: it has other hard links (remove it or choose another path)"
            ),
            Why::TempNames => write!(
                f,
                "cannot write {p}: no fresh temporary file could be created in its directory \
                 (someone is planting names there; use a directory that only you can write)"
            ),
            Why::Swapped => write!(
                f,
                "cannot write {p}: the file that arrived there is not the one written (someone \
                 swapped the temporary file in the shared directory); do not use it, and write \
                 into a directory that only you can write"
            ),
            Why::Io { what, err } => write!(f, "cannot write {p}: {what}: {err}"),
        }
    }
}

impl std::error::Error for OutputError {}

/// A file a command writes (its `--out`), with how to write it.
#[derive(Clone, Debug)]
pub struct OutputFile {
    path: PathBuf,
    options: WriteOptions,
}

impl OutputFile {
    /// `path`, written with `options`.
    pub fn new(path: impl Into<PathBuf>, options: WriteOptions) -> Self {
        Self {
            path: path.into(),
            options,
        }
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How it is written.
    pub fn options(&self) -> &WriteOptions {
        &self.options
    }

    /// The path, for messages.
    pub fn display(&self) -> std::path::Display<'_> {
        self.path.display()
    }

    /// [`check`]: refuses now what [`OutputFile::write`] would refuse later.
    pub fn check(&self) -> Result<(), OutputError> {
        check(&self.path, &self.options)
    }

    /// [`write_file`].
    pub fn write(&self, bytes: &[u8]) -> Result<(), OutputError> {
        write_file(&self.path, bytes, &self.options)
    }
}

/// The directory and the final name of `path` ("." for a bare name).
fn split(path: &Path) -> Result<(&Path, &OsStr), OutputError> {
    let name = path
        .file_name()
        .ok_or_else(|| OutputError::new(path, Why::NotAFileName))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Ok((dir, name))
}

/// Opens `dir` and refuses it if others can write it (unless allowed).
fn open_dir(path: &Path, dir: &Path, opts: &WriteOptions) -> Result<OwnedFd, OutputError> {
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| OutputError::io(path, "cannot open its directory", e))?;
    if opts.allow_shared_dir {
        return Ok(fd);
    }
    let st = rustix::fs::fstat(&fd)
        .map_err(|e| OutputError::io(path, "cannot stat its directory", e))?;
    let euid = rustix::process::geteuid().as_raw();
    let detail = if st.st_uid != euid && st.st_uid != 0 {
        Some(format!("belongs to another user (uid {})", st.st_uid))
    } else if st.st_mode & 0o002 != 0 {
        Some(format!(
            "is writable by everyone (mode {:o})",
            st.st_mode & 0o7777
        ))
    } else if st.st_mode & 0o020 != 0 {
        Some(format!(
            "is writable by its group (mode {:o})",
            st.st_mode & 0o7777
        ))
    } else {
        None
    };
    match detail {
        None => Ok(fd),
        Some(detail) => Err(OutputError::new(
            path,
            Why::SharedDir {
                dir: dir.to_owned(),
                detail,
                remedy: opts.remedy,
            },
        )),
    }
}

/// Refuses a target that is a link or not a regular file, or that exists when it may not.
fn check_target(
    dirfd: &OwnedFd,
    path: &Path,
    name: &OsStr,
    opts: &WriteOptions,
) -> Result<(), OutputError> {
    match rustix::fs::statat(dirfd, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => match FileType::from_raw_mode(st.st_mode) {
            FileType::Symlink => Err(OutputError::new(path, Why::Symlink)),
            FileType::RegularFile if opts.replace => Ok(()),
            FileType::RegularFile => Err(OutputError::new(path, Why::Exists)),
            _ => Err(OutputError::new(path, Why::NotRegular)),
        },
        Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(OutputError::io(path, "cannot stat it", e)),
    }
}

/// Checks that `path` could be written with `opts` (directory and target), without writing
/// anything: for callers that must refuse before they change anything else.
pub fn check(path: &Path, opts: &WriteOptions) -> Result<(), OutputError> {
    let (dir, name) = split(path)?;
    let dirfd = open_dir(path, dir, opts)?;
    check_target(&dirfd, path, name, opts)
}

/// The directory `path` goes into, opened and checked as [`write_file`] checks it, and the
/// final name: for a caller that creates the file itself (a Unix socket), relative to the
/// returned descriptor, so that the directory checked is the directory written.
pub fn checked_dir(path: &Path, opts: &WriteOptions) -> Result<(OwnedFd, OsString), OutputError> {
    let (dir, name) = split(path)?;
    let dirfd = open_dir(path, dir, opts)?;
    Ok((dirfd, name.to_owned()))
}

fn random_hex() -> Result<String, Errno> {
    let mut buf = [0u8; 16];
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..).filter(|r| !r.is_empty()) {
        match rustix::rand::getrandom(rest, rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(base16ct::lower::encode_string(&buf))
}

/// Creates a fresh temporary file in `dirfd` (`O_EXCL | O_NOFOLLOW`, `mode`).
fn create_temp(dirfd: &OwnedFd, path: &Path, mode: u32) -> Result<(OsString, File), OutputError> {
    for _ in 0..TEMP_ATTEMPTS {
        let tmp = OsString::from(format!(
            ".ferrohsm-{}.tmp",
            random_hex().map_err(|e| OutputError::io(path, "no randomness", e))?
        ));
        match open_exclusive(dirfd, &tmp, mode) {
            Ok(f) => return Ok((tmp, f)),
            Err(Errno::EXIST) => {}
            Err(e) => return Err(OutputError::io(path, "cannot create a temporary file", e)),
        }
    }
    Err(OutputError::new(path, Why::TempNames))
}

/// `openat(dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)`, then the
/// exact mode (the umask does not narrow a mode the caller asked for).
fn open_exclusive(dirfd: &OwnedFd, name: &OsStr, mode: u32) -> Result<File, Errno> {
    let fd = rustix::fs::openat(
        dirfd,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )?;
    let f = File::from(fd);
    if let Err(e) = rustix::fs::fchmod(&f, Mode::from_raw_mode(mode)) {
        let _ = rustix::fs::unlinkat(dirfd, name, AtFlags::empty());
        return Err(e);
    }
    Ok(f)
}

/// Moves the temporary file onto the target: a rename, or, when it must not replace anything,
/// a rename that fails if the target exists (a hard link where the file system lacks it).
fn place(dirfd: &OwnedFd, tmp: &OsStr, name: &OsStr, replace: bool) -> Result<(), Errno> {
    if replace {
        return rustix::fs::renameat(dirfd, tmp, dirfd, name);
    }
    match rustix::fs::renameat_with(dirfd, tmp, dirfd, name, RenameFlags::NOREPLACE) {
        Err(Errno::INVAL | Errno::NOSYS) => {
            rustix::fs::linkat(dirfd, tmp, dirfd, name, AtFlags::empty())?;
            rustix::fs::unlinkat(dirfd, tmp, AtFlags::empty())
        }
        other => other,
    }
}

/// Writes `bytes` to `path` as described in the module docs.
pub fn write_file(path: &Path, bytes: &[u8], opts: &WriteOptions) -> Result<(), OutputError> {
    write_file_with(path, bytes, opts, |_, _| {})
}

/// [`write_file`], with `before_place(dirfd, temporary name)` run just before the rename (the
/// tests play the other user in a shared directory there).
fn write_file_with(
    path: &Path,
    bytes: &[u8],
    opts: &WriteOptions,
    before_place: impl FnOnce(&OwnedFd, &OsStr),
) -> Result<(), OutputError> {
    let (dir, name) = split(path)?;
    let dirfd = open_dir(path, dir, opts)?;
    check_target(&dirfd, path, name, opts)?;
    let (tmp, mut f) = create_temp(&dirfd, path, opts.mode)?;
    let written = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| OutputError::io(path, "writing the temporary file", e))
        .and_then(|()| {
            rustix::fs::fstat(&f).map_err(|e| OutputError::io(path, "cannot stat it", e))
        });
    let placed = written.and_then(|ours| {
        before_place(&dirfd, &tmp);
        place(&dirfd, &tmp, name, opts.replace)
            .map_err(|e| match e {
                Errno::EXIST => OutputError::new(path, Why::Exists),
                e => OutputError::io(path, "cannot move the temporary file into place", e),
            })
            .map(|()| ours)
    });
    let ours = match placed {
        Ok(ours) => ours,
        Err(e) => {
            let _ = rustix::fs::unlinkat(&dirfd, &tmp, AtFlags::empty());
            return Err(e);
        }
    };
    // Renames work on names: in a directory others can write (allowed), the temporary file
    // could have been swapped for another one under the same name. Our file is still open, so
    // its inode cannot have been reused: the target must be it.
    let arrived = rustix::fs::statat(&dirfd, name, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| OutputError::io(path, "cannot stat it", e))?;
    if (arrived.st_dev, arrived.st_ino) != (ours.st_dev, ours.st_ino) {
        return Err(OutputError::new(path, Why::Swapped));
    }
    drop(f);
    // The rename is durable once the directory is synced (best effort: some file systems
    // refuse to sync a directory).
    let _ = rustix::fs::fsync(&dirfd);
    Ok(())
}

/// Opens (creating it, mode 0600) an append-only file such as a log, for reading and
/// appending. Refused: a link, anything but a regular file, a file of another user or with
/// other hard links, a shared directory (unless allowed). A looser mode is narrowed to 0600.
pub fn open_append(path: &Path, opts: &WriteOptions) -> Result<File, OutputError> {
    open_private(path, opts, OFlags::APPEND)
}

/// [`open_append`] without `O_APPEND`: a small file rewritten in place (a log's head file),
/// with the same refusals.
pub fn open_in_place(path: &Path, opts: &WriteOptions) -> Result<File, OutputError> {
    open_private(path, opts, OFlags::empty())
}

fn open_private(path: &Path, opts: &WriteOptions, append: OFlags) -> Result<File, OutputError> {
    let (dir, name) = split(path)?;
    let dirfd = open_dir(path, dir, opts)?;
    let fd = rustix::fs::openat(
        &dirfd,
        name,
        OFlags::RDWR
            | append
            | OFlags::CREATE
            | OFlags::NOFOLLOW
            | OFlags::CLOEXEC
            | OFlags::NONBLOCK,
        Mode::from_raw_mode(PRIVATE_MODE),
    )
    .map_err(|e| match e {
        Errno::LOOP => OutputError::new(path, Why::Symlink),
        e => OutputError::io(path, "cannot open it", e),
    })?;
    let st = rustix::fs::fstat(&fd).map_err(|e| OutputError::io(path, "cannot stat it", e))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(OutputError::new(path, Why::NotRegular));
    }
    if st.st_uid != rustix::process::geteuid().as_raw() {
        return Err(OutputError::new(path, Why::NotOwned));
    }
    if st.st_nlink > 1 {
        return Err(OutputError::new(path, Why::Linked));
    }
    if st.st_mode & 0o7777 != PRIVATE_MODE {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(PRIVATE_MODE))
            .map_err(|e| OutputError::io(path, "cannot set its mode to 0600", e))?;
    }
    // Blocking again for the writes (O_NONBLOCK only kept a FIFO from stalling the open).
    rustix::fs::fcntl_setfl(&fd, append).map_err(|e| OutputError::io(path, "cannot open it", e))?;
    Ok(File::from(fd))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn private_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        d
    }

    #[test]
    fn writes_private_files_and_replaces_regular_ones() {
        let d = private_dir();
        let p = d.path().join("out");
        write_file(&p, b"one", &WriteOptions::private()).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        assert_eq!(mode(&p), 0o600);
        write_file(&p, b"two", &WriteOptions::private()).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let public = d.path().join("pub");
        write_file(&public, b"k", &WriteOptions::private().world_readable(true)).unwrap();
        assert_eq!(mode(&public), 0o644);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn refuses_links_and_other_files_and_leaves_them_alone() {
        let d = private_dir();
        let elsewhere = d.path().join("victim");
        std::fs::write(&elsewhere, b"precious").unwrap();
        let link = d.path().join("link");
        symlink(&elsewhere, &link).unwrap();
        let dangling = d.path().join("dangling");
        symlink(d.path().join("nowhere"), &dangling).unwrap();
        for p in [&link, &dangling] {
            let e = write_file(p, b"x", &WriteOptions::private()).unwrap_err();
            assert!(e.to_string().contains("symbolic link"), "{e}");
            let e = check(p, &WriteOptions::private()).unwrap_err();
            assert!(e.to_string().contains("symbolic link"), "{e}");
            let e = open_append(p, &WriteOptions::private()).unwrap_err();
            assert!(e.to_string().contains("symbolic link"), "{e}");
            assert!(
                std::fs::symlink_metadata(p)
                    .unwrap()
                    .file_type()
                    .is_symlink()
            );
        }
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"precious");
        assert!(!d.path().join("nowhere").exists());
        let sub = d.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let e = write_file(&sub, b"x", &WriteOptions::private()).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        // no_replace: an existing file stays.
        let e = write_file(&elsewhere, b"x", &WriteOptions::private().no_replace()).unwrap_err();
        assert!(e.is_exists(), "{e}");
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"precious");
    }

    #[test]
    fn a_planted_temporary_name_is_never_written_through() {
        let d = private_dir();
        let dirfd = rustix::fs::open(
            d.path(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        symlink(&victim, d.path().join(".planted.tmp")).unwrap();
        symlink(d.path().join("nowhere"), d.path().join(".dangling.tmp")).unwrap();
        for name in [".planted.tmp", ".dangling.tmp"] {
            assert_eq!(
                open_exclusive(&dirfd, OsStr::new(name), PRIVATE_MODE).unwrap_err(),
                Errno::EXIST
            );
        }
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!d.path().join("nowhere").exists());
    }

    #[test]
    fn refuses_a_directory_others_can_write_unless_allowed() {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let p = d.path().join("out");
        let e = write_file(&p, b"x", &WriteOptions::private()).unwrap_err();
        assert!(e.to_string().contains("writable by everyone"), "{e}");
        assert!(!p.exists());
        let e = open_append(&p, &WriteOptions::private()).unwrap_err();
        assert!(e.to_string().contains("writable by everyone"), "{e}");
        assert!(!p.exists());
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o770)).unwrap();
        let opts = WriteOptions::private().shared_dir_remedy("or pass --allow-shared-dir");
        let e = write_file(&p, b"x", &opts).unwrap_err();
        assert!(e.to_string().contains("its group"), "{e}");
        assert!(e.to_string().contains("--allow-shared-dir"), "{e}");
        write_file(&p, b"x", &WriteOptions::private().allow_shared_dir(true)).unwrap();
        assert_eq!(mode(&p), 0o600);
    }

    #[test]
    fn a_temporary_file_swapped_in_a_shared_directory_is_detected() {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let p = d.path().join("out");
        let opts = WriteOptions::private().allow_shared_dir(true);
        // Another user renames our temporary file away and puts their own under its name.
        let e = write_file_with(&p, b"ours", &opts, |dirfd, tmp| {
            rustix::fs::renameat(dirfd, tmp, dirfd, "moved-away").unwrap();
            let theirs = rustix::fs::openat(
                dirfd,
                tmp,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
                Mode::from_raw_mode(0o644),
            )
            .unwrap();
            File::from(theirs).write_all(b"theirs").unwrap();
        })
        .unwrap_err();
        assert!(e.to_string().contains("not the one written"), "{e}");
    }

    #[test]
    fn append_narrows_the_mode_and_refuses_hard_links() {
        let d = private_dir();
        let p = d.path().join("log");
        std::fs::write(&p, b"line\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut f = open_append(&p, &WriteOptions::private()).unwrap();
        f.write_all(b"more\n").unwrap();
        assert_eq!(mode(&p), 0o600);
        assert_eq!(std::fs::read(&p).unwrap(), b"line\nmore\n");
        std::fs::hard_link(&p, d.path().join("other")).unwrap();
        let e = open_append(&p, &WriteOptions::private()).unwrap_err();
        assert!(e.to_string().contains("hard links"), "{e}");
    }
}
