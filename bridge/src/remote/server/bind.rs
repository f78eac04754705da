//! Binding the listeners: the Unix socket under the rules every file the CLI writes follows,
//! and TCP sockets for TLS, each with a short queue.

use std::net::TcpListener;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use rustix::io::Errno;

use crate::error::{Error, Result};

use super::BACKLOG;

/// Creates the socket at `path`, mode 0600. A stale socket file (nobody listening) is replaced;
/// a live one is an error.
pub fn bind(path: &Path) -> Result<UnixListener> {
    bind_with_mode(path, 0o600)
}

/// [`bind`] with another file mode (e.g. 0660 for a group of clients; the peer uid check
/// applies all the same). Bits beyond 0o777 are ignored.
pub fn bind_with_mode(path: &Path, mode: u32) -> Result<UnixListener> {
    bind_socket(path, mode, false)
}

/// [`bind_with_mode`], under the rules every file the CLI writes follows (`crate::output`):
///
/// - the socket's directory is opened once, and must belong to the daemon's user (or root)
///   and be writable by nobody else — anyone who could write there could remove the socket and
///   put their own in its place, or swap a path between the checks and the bind. With
///   `allow_shared_dir` (the operator's explicit choice) a directory others can write is
///   accepted only if it is sticky (as `/tmp`: others may add names there, but not remove or
///   rename this one);
/// - the socket is bound in that directory through its descriptor (`/proc/self/fd/N/NAME`), so
///   the directory checked is the one bound in, even if a path component is replaced meanwhile;
/// - its mode is set by the umask while binding and never changed afterwards: a `chmod` by
///   path would follow a symbolic link planted between the bind and the change;
/// - a stale socket (nobody listening) is removed relative to the directory; anything else at
///   the path (a file, a symbolic link) is an error and left as it is.
pub fn bind_socket(path: &Path, mode: u32, allow_shared_dir: bool) -> Result<UnixListener> {
    use std::os::fd::AsRawFd as _;

    use rustix::fs::{AtFlags, FileType};

    let mode = mode & 0o777;
    let at_path = |what: &str| Error::Config(format!("{}: {what}", path.display()));
    let opts = crate::output::WriteOptions::private()
        .allow_shared_dir(allow_shared_dir)
        .shared_dir_remedy(
            "use a directory only the daemon's user can write, or a sticky one with \
             --allow-shared-dir",
        );
    let (dir, name) =
        crate::output::checked_dir(path, &opts).map_err(|e| Error::Config(e.to_string()))?;
    if allow_shared_dir {
        let st = rustix::fs::fstat(&dir)
            .map_err(|e| at_path(&format!("cannot stat its directory: {e}")))?;
        if st.st_mode & 0o022 != 0 && st.st_mode & 0o1000 == 0 {
            return Err(at_path(&format!(
                "its directory is writable by others and not sticky (mode {:o}): others could \
                 replace the socket",
                st.st_mode & 0o7777
            )));
        }
    }
    // The checked directory itself, through its descriptor (where /proc is mounted and the
    // address fits a socket address; else the path, in the directory just checked).
    let via_fd = Path::new("/proc/self/fd")
        .join(dir.as_raw_fd().to_string())
        .join(&name);
    let at = if via_fd.as_os_str().len() < 100 && Path::new("/proc/self/fd").is_dir() {
        via_fd
    } else {
        path.to_owned()
    };
    match rustix::fs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => {
            if FileType::from_raw_mode(st.st_mode) != FileType::Socket {
                return Err(at_path("exists and is not a socket"));
            }
            if UnixStream::connect(&at).is_ok() {
                return Err(at_path("another daemon is listening there"));
            }
            rustix::fs::unlinkat(&dir, &name, AtFlags::empty())
                .map_err(|e| at_path(&format!("cannot remove: {e}")))?;
        }
        Err(Errno::NOENT) => {}
        Err(e) => return Err(at_path(&format!("cannot stat: {e}"))),
    }
    // The socket is created with its mode: the umask takes away every other bit while binding.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o777 & !mode));
    let listener = listen(&at);
    rustix::process::umask(old);
    listener.map_err(|e| at_path(&format!("cannot listen: {e}")))
}

/// A listening socket at `path` with a short queue ([`BACKLOG`]).
///
/// `std` listens with the system's largest queue (4096 on current Linux): a peer connecting in
/// a loop could park thousands of connections there, and a client arriving behind them would
/// wait for every one to be accepted and dealt with. With a short queue the flood's connects
/// wait in the kernel instead, and a newcomer is at most a queue's length behind.
pub(super) fn listen(path: &Path) -> std::io::Result<UnixListener> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::bind(&fd, &SocketAddrUnix::new(path)?)?;
    rustix::net::listen(&fd, BACKLOG)?;
    Ok(UnixListener::from(fd))
}

/// A listening TCP socket at `addr` (`HOST:PORT`, an IPv6 address in brackets) with a short
/// queue ([`BACKLOG`]), for a [`Listener::Tls`].
pub fn bind_tcp(addr: &str) -> Result<TcpListener> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    use std::net::ToSocketAddrs as _;
    let bad = |e: &dyn std::fmt::Display| Error::Config(format!("--listen {addr}: {e}"));
    let mut last = None;
    for a in addr.to_socket_addrs().map_err(|e| bad(&e))? {
        let family = if a.is_ipv4() {
            AddressFamily::INET
        } else {
            AddressFamily::INET6
        };
        let bound = (|| -> std::io::Result<TcpListener> {
            let fd =
                rustix::net::socket_with(family, SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
            rustix::net::sockopt::set_socket_reuseaddr(&fd, true)?;
            rustix::net::bind(&fd, &a)?;
            rustix::net::listen(&fd, BACKLOG)?;
            Ok(TcpListener::from(fd))
        })();
        match bound {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => bad(&e),
        None => bad(&"names no address"),
    })
}
