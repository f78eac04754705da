//! The server side: any `Backend` served to the clients of a Unix socket.
//!
//! One thread per connection. The sessions a connection opens belong to it: other connections
//! cannot use them (`CKR_SESSION_HANDLE_INVALID`), `C_CloseAllSessions` closes only its own, and
//! they are closed when the connection ends. Peers are checked with `SO_PEERCRED` against an
//! allow-list of uids (default: the server's own uid).

use std::collections::HashMap;
use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use cryptoki_sys::*;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::types::*;

use super::proto::{
    Hello, MAX_FRAME, Reply, Request, Response, VERSION, Welcome, encode_response, read_frame,
};
use super::wire::Bytes;

/// How long a new connection has to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the accept loop looks at the shutdown flag.
const POLL: Duration = Duration::from_millis(50);
/// The largest output buffer the server allocates for one call (the reply must fit a frame).
const MAX_OUT: usize = MAX_FRAME - 1024;

/// Creates the socket at `path`, mode 0600. A stale socket file (nobody listening) is replaced;
/// a live one is an error.
pub fn bind(path: &Path) -> Result<UnixListener> {
    bind_with_mode(path, 0o600)
}

/// [`bind`] with another file mode (e.g. 0660 for a group of clients; the peer uid check
/// applies all the same). Bits beyond 0o777 are ignored.
pub fn bind_with_mode(path: &Path, mode: u32) -> Result<UnixListener> {
    let mode = mode & 0o777;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(Error::Config(format!(
                "{}: exists and is not a socket",
                path.display()
            )));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(Error::Config(format!(
                "{}: another daemon is listening there",
                path.display()
            )));
        }
        std::fs::remove_file(path)
            .map_err(|e| Error::Config(format!("{}: cannot remove: {e}", path.display())))?;
    }
    // The socket is created 0600 (umask 0177 while binding), then given its mode.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let listener = UnixListener::bind(path);
    rustix::process::umask(old);
    let listener =
        listener.map_err(|e| Error::Config(format!("{}: cannot listen: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::Config(format!("{}: cannot chmod: {e}", path.display())))?;
    Ok(listener)
}

/// Serves `backend` on `listener` until the process ends, to peers with the server's own uid.
pub fn serve(backend: Arc<dyn Backend>, listener: UnixListener) -> Result<()> {
    Server::new(backend).serve(listener)
}

/// Opens the backend of one connection.
pub type BackendFactory = dyn Fn() -> Result<Arc<dyn Backend>> + Send + Sync;

enum Source {
    /// One backend for every connection (a loaded real HSM: its own login semantics).
    Shared(Arc<dyn Backend>),
    /// A backend per connection: each connection is one PKCS#11 application, with its own
    /// login state and sessions, as a process is in the embedded placement.
    PerConnection(Arc<BackendFactory>),
}

/// A configurable server.
pub struct Server {
    source: Source,
    allow_uids: Vec<u32>,
    shutdown: Arc<AtomicBool>,
}

impl Server {
    /// A server of `backend`, shared by every connection, that allows the server's own uid.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Self::with_source(Source::Shared(backend))
    }

    /// A server that opens a backend per connection with `factory` (the simulated firmware:
    /// a `Device` per connection over the shared store, so that each client is an application
    /// of its own, with its own login state).
    pub fn per_connection(
        factory: impl Fn() -> Result<Arc<dyn Backend>> + Send + Sync + 'static,
    ) -> Self {
        Self::with_source(Source::PerConnection(Arc::new(factory)))
    }

    fn with_source(source: Source) -> Self {
        Self {
            source,
            allow_uids: vec![rustix::process::getuid().as_raw()],
            shutdown: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Allows exactly these uids (replacing the default).
    pub fn allow_uids(mut self, uids: impl IntoIterator<Item = u32>) -> Self {
        self.allow_uids = uids.into_iter().collect();
        self
    }

    /// The flag that stops [`Server::serve`]: set it (from a signal handler, another thread)
    /// and the server stops accepting, lets in-flight requests finish, closes every
    /// connection's sessions and returns.
    pub fn shutdown_flag(&self) -> Arc<AtomicBool> {
        self.shutdown.clone()
    }

    /// Accepts connections until the shutdown flag is set.
    pub fn serve(&self, listener: UnixListener) -> Result<()> {
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::Config(format!("socket: {e}")))?;
        let mut workers: Vec<(JoinHandle<()>, Option<UnixStream>)> = Vec::new();
        while !self.shutdown.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((stream, _)) => {
                    if let Some(worker) = self.start(stream) {
                        workers.push(worker);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("remote server: accept: {e}");
                    std::thread::sleep(POLL);
                }
            }
            workers.retain(|(h, _)| !h.is_finished());
        }
        log::info!(
            "remote server: shutting down ({} connections)",
            workers.len()
        );
        // Wake the readers: a connection waiting for its next request sees the end of its
        // stream; one in the middle of a request finishes it and answers first.
        for (_, stream) in &workers {
            if let Some(s) = stream {
                let _ = s.shutdown(std::net::Shutdown::Read);
            }
        }
        for (h, _) in workers {
            let _ = h.join();
        }
        Ok(())
    }

    fn start(&self, stream: UnixStream) -> Option<(JoinHandle<()>, Option<UnixStream>)> {
        if let Err(e) = stream.set_nonblocking(false) {
            log::warn!("remote server: {e}");
            return None;
        }
        let uid = rustix::net::sockopt::socket_peercred(&stream)
            .map(|c| c.uid.as_raw())
            .ok();
        let allowed = uid.is_some_and(|u| self.allow_uids.contains(&u));
        if !allowed {
            log::warn!("remote server: refused a peer with uid {uid:?} (not in the allow-list)");
        }
        let waker = stream.try_clone().ok();
        let source = match &self.source {
            Source::Shared(b) => Source::Shared(b.clone()),
            Source::PerConnection(f) => Source::PerConnection(f.clone()),
        };
        let spawned = std::thread::Builder::new()
            .name("ferrohsm-conn".into())
            .spawn(move || {
                let backend = match source {
                    Source::Shared(b) => Ok(b),
                    Source::PerConnection(f) => f(),
                };
                match backend {
                    Ok(b) => Connection::new(b).run(stream, allowed),
                    Err(e) => {
                        log::error!("remote server: cannot open the backend: {e}");
                        let _ = send_all(&stream, &Welcome::Refused(e.rv()).encode());
                    }
                }
            });
        match spawned {
            Ok(h) => Some((h, waker)),
            Err(e) => {
                log::error!("remote server: cannot start a connection thread: {e}");
                None
            }
        }
    }
}

/// Sends all of `bytes` without raising `SIGPIPE` on a closed peer.
pub(super) fn send_all(stream: &UnixStream, payload: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|_| payload.len() <= MAX_FRAME)
        .ok_or(ErrorKind::InvalidInput)?;
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    let mut rest = frame.as_slice();
    while !rest.is_empty() {
        match rustix::net::send(stream, rest, rustix::net::SendFlags::NOSIGNAL) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => rest = rest.get(n..).unwrap_or_default(),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// One client connection and the sessions it owns (session → slot).
struct Connection {
    backend: Arc<dyn Backend>,
    sessions: HashMap<SessionHandle, SlotId>,
}

impl Connection {
    fn new(backend: Arc<dyn Backend>) -> Self {
        Self {
            backend,
            sessions: HashMap::new(),
        }
    }

    fn run(mut self, mut stream: UnixStream, allowed: bool) {
        if let Err(e) = self.serve(&mut stream, allowed) {
            log::info!("remote server: connection closed: {e}");
        }
        for (s, _) in std::mem::take(&mut self.sessions) {
            let _ = self.backend.close_session(s);
        }
    }

    fn serve(&mut self, stream: &mut UnixStream, allowed: bool) -> std::io::Result<()> {
        if !allowed {
            return send_all(stream, &Welcome::Refused(CKR_FUNCTION_REJECTED).encode());
        }
        stream.set_read_timeout(Some(HELLO_TIMEOUT))?;
        let Some(hello) = read_frame(stream)? else {
            return Ok(());
        };
        let hello = Hello::decode(&hello).map_err(|_| ErrorKind::InvalidData)?;
        if hello.min > VERSION || hello.max < VERSION {
            send_all(stream, &Welcome::Refused(CKR_DEVICE_ERROR).encode())?;
            return Err(std::io::Error::new(
                ErrorKind::InvalidData,
                format!("client speaks versions {}..={}", hello.min, hello.max),
            ));
        }
        send_all(stream, &Welcome::Accepted(VERSION).encode())?;
        stream.set_read_timeout(None)?;
        while let Some(frame) = read_frame(stream)? {
            let request = Request::decode(&frame)
                .map_err(|_| std::io::Error::new(ErrorKind::InvalidData, "malformed request"))?;
            let response = self.handle(request);
            send_all(stream, &encode_response(&response))?;
        }
        Ok(())
    }

    /// Checks ownership, runs the request, keeps the session table.
    fn handle(&mut self, mut request: Request) -> Response {
        if let Some(s) = request.session_mut() {
            if !self.sessions.contains_key(s) {
                return Err(Error::SessionHandleInvalid);
            }
        }
        match request {
            Request::OpenSession { slot, flags } => {
                let s = self.backend.open_session(slot, flags)?;
                self.sessions.insert(s, slot);
                Ok(Reply::Session(s))
            }
            Request::CloseSession { session } => {
                let r = self.backend.close_session(session);
                if matches!(
                    r,
                    Ok(()) | Err(Error::SessionHandleInvalid | Error::SessionClosed)
                ) {
                    self.sessions.remove(&session);
                }
                r.map(|()| Reply::Unit)
            }
            Request::CloseAllSessions { slot } => {
                // This connection's sessions only: other clients are other applications.
                if !self.backend.slot_list(false)?.contains(&slot) {
                    return Err(Error::SlotIdInvalid);
                }
                let mine: Vec<SessionHandle> = self
                    .sessions
                    .iter()
                    .filter(|(_, s)| **s == slot)
                    .map(|(h, _)| *h)
                    .collect();
                for s in mine {
                    let _ = self.backend.close_session(s);
                    self.sessions.remove(&s);
                }
                Ok(Reply::Unit)
            }
            mut other => {
                let session = other.session_mut().copied();
                let r = dispatch(self.backend.as_ref(), other);
                if let (Some(s), Err(Error::SessionHandleInvalid | Error::SessionClosed)) =
                    (session, &r)
                {
                    self.sessions.remove(&s);
                }
                r
            }
        }
    }
}

/// One request frame in, one response frame out, as a connection runs it (without the
/// per-connection session table): decodes, calls `backend`, encodes. A malformed frame is an
/// error (the server closes the connection on it). For fuzzing and for embedding the protocol
/// in other transports.
pub fn respond(backend: &dyn Backend, frame: &[u8]) -> Result<Vec<u8>> {
    let request = Request::decode(frame)?;
    Ok(encode_response(&dispatch(backend, request)))
}

/// Runs an output call with a buffer of the caller's length (`None`: a length query).
fn out(len: Option<usize>, f: impl FnOnce(Option<&mut [u8]>) -> Result<usize>) -> Response {
    match len {
        None => f(None).map(Reply::Len),
        Some(n) => {
            let mut buf = vec![0u8; n.min(MAX_OUT)];
            let got = f(Some(&mut buf))?;
            if got > buf.len() {
                return Err(Error::Internal("backend produced more than the buffer"));
            }
            buf.truncate(got);
            Ok(Reply::Out(Bytes(buf)))
        }
    }
}

/// A message call's reply: the updated parameters with the call's own reply.
fn message(params: MechanismParams, r: Response) -> Response {
    r.map(|inner| Reply::Message(params, Box::new(inner)))
}

fn unit(r: Result<()>) -> Response {
    r.map(|()| Reply::Unit)
}

/// Calls the backend method a request names.
pub(crate) fn dispatch(b: &dyn Backend, request: Request) -> Response {
    use Request as R;
    match request {
        R::SlotList { token_present } => b.slot_list(token_present).map(Reply::Slots),
        R::SlotInfo { slot } => b.slot_info(slot).map(Reply::SlotInfo),
        R::TokenInfo { slot } => b.token_info(slot).map(Reply::TokenInfo),
        R::MechanismList { slot } => b.mechanism_list(slot).map(Reply::Mechanisms),
        R::MechanismInfo { slot, ty } => b.mechanism_info(slot, ty).map(Reply::MechanismInfo),
        R::InitToken {
            slot,
            so_pin,
            label,
        } => unit(b.init_token(slot, &so_pin.0, &label)),
        R::WaitForSlotEvent { flags } => b.wait_for_slot_event(flags).map(Reply::Slot),
        R::OpenSession { slot, flags } => b.open_session(slot, flags).map(Reply::Session),
        R::CloseSession { session } => unit(b.close_session(session)),
        R::CloseAllSessions { slot } => unit(b.close_all_sessions(slot)),
        R::SessionInfo { session } => b.session_info(session).map(Reply::SessionInfo),
        R::SessionCancel { session, flags } => unit(b.session_cancel(session, flags)),
        R::OperationState { session, out: o } => out(o, |o| b.operation_state(session, o)),
        R::SetOperationState {
            session,
            state,
            encryption_key,
            authentication_key,
        } => unit(b.set_operation_state(session, &state.0, encryption_key, authentication_key)),
        R::InitPin { session, pin } => unit(b.init_pin(session, &pin.0)),
        R::SetPin {
            session,
            old_pin,
            new_pin,
        } => unit(b.set_pin(session, &old_pin.0, &new_pin.0)),
        R::Login { session, user, pin } => {
            unit(b.login(session, user, pin.as_ref().map(|p| p.0.as_slice())))
        }
        R::LoginUser {
            session,
            user,
            pin,
            username,
        } => unit(b.login_user(
            session,
            user,
            pin.as_ref().map(|p| p.0.as_slice()),
            &username.0,
        )),
        R::Logout { session } => unit(b.logout(session)),
        R::CreateObject { session, template } => {
            b.create_object(session, &template).map(Reply::Object)
        }
        R::CopyObject {
            session,
            object,
            template,
        } => b.copy_object(session, object, &template).map(Reply::Object),
        R::DestroyObject { session, object } => unit(b.destroy_object(session, object)),
        R::ObjectSize { session, object } => b.object_size(session, object).map(Reply::Ulong),
        R::GetAttributeValue {
            session,
            object,
            types,
        } => b
            .get_attribute_value(session, object, &types)
            .map(Reply::Answers),
        R::SetAttributeValue {
            session,
            object,
            template,
        } => unit(b.set_attribute_value(session, object, &template)),
        R::FindObjectsInit { session, template } => unit(b.find_objects_init(session, &template)),
        R::FindObjects { session, max } => b.find_objects(session, max).map(Reply::Objects),
        R::FindObjectsFinal { session } => unit(b.find_objects_final(session)),
        R::EncryptInit { session, mech, key } => unit(b.encrypt_init(session, &mech, key)),
        R::Encrypt {
            session,
            data,
            out: o,
        } => out(o, |o| b.encrypt(session, &data.0, o)),
        R::EncryptUpdate {
            session,
            data,
            out: o,
        } => out(o, |o| b.encrypt_update(session, &data.0, o)),
        R::EncryptFinal { session, out: o } => out(o, |o| b.encrypt_final(session, o)),
        R::DecryptInit { session, mech, key } => unit(b.decrypt_init(session, &mech, key)),
        R::Decrypt {
            session,
            data,
            out: o,
        } => out(o, |o| b.decrypt(session, &data.0, o)),
        R::DecryptUpdate {
            session,
            data,
            out: o,
        } => out(o, |o| b.decrypt_update(session, &data.0, o)),
        R::DecryptFinal { session, out: o } => out(o, |o| b.decrypt_final(session, o)),
        R::DigestInit { session, mech } => unit(b.digest_init(session, &mech)),
        R::Digest {
            session,
            data,
            out: o,
        } => out(o, |o| b.digest(session, &data.0, o)),
        R::DigestUpdate { session, data } => unit(b.digest_update(session, &data.0)),
        R::DigestKey { session, key } => unit(b.digest_key(session, key)),
        R::DigestFinal { session, out: o } => out(o, |o| b.digest_final(session, o)),
        R::SignInit { session, mech, key } => unit(b.sign_init(session, &mech, key)),
        R::Sign {
            session,
            data,
            out: o,
        } => out(o, |o| b.sign(session, &data.0, o)),
        R::SignUpdate { session, data } => unit(b.sign_update(session, &data.0)),
        R::SignFinal { session, out: o } => out(o, |o| b.sign_final(session, o)),
        R::SignRecoverInit { session, mech, key } => unit(b.sign_recover_init(session, &mech, key)),
        R::SignRecover {
            session,
            data,
            out: o,
        } => out(o, |o| b.sign_recover(session, &data.0, o)),
        R::VerifyInit { session, mech, key } => unit(b.verify_init(session, &mech, key)),
        R::Verify {
            session,
            data,
            signature,
        } => unit(b.verify(session, &data.0, &signature.0)),
        R::VerifyUpdate { session, data } => unit(b.verify_update(session, &data.0)),
        R::VerifyFinal { session, signature } => unit(b.verify_final(session, &signature.0)),
        R::VerifyRecoverInit { session, mech, key } => {
            unit(b.verify_recover_init(session, &mech, key))
        }
        R::VerifyRecover {
            session,
            signature,
            out: o,
        } => out(o, |o| b.verify_recover(session, &signature.0, o)),
        R::DigestEncryptUpdate {
            session,
            data,
            out: o,
        } => out(o, |o| b.digest_encrypt_update(session, &data.0, o)),
        R::DecryptDigestUpdate {
            session,
            data,
            out: o,
        } => out(o, |o| b.decrypt_digest_update(session, &data.0, o)),
        R::SignEncryptUpdate {
            session,
            data,
            out: o,
        } => out(o, |o| b.sign_encrypt_update(session, &data.0, o)),
        R::DecryptVerifyUpdate {
            session,
            data,
            out: o,
        } => out(o, |o| b.decrypt_verify_update(session, &data.0, o)),
        R::GenerateKey {
            session,
            mech,
            template,
        } => b.generate_key(session, &mech, &template).map(Reply::Object),
        R::GenerateKeyPair {
            session,
            mech,
            public_template,
            private_template,
        } => b
            .generate_key_pair(session, &mech, &public_template, &private_template)
            .map(|(p, k)| Reply::KeyPair(p, k)),
        R::WrapKey {
            session,
            mech,
            wrapping_key,
            key,
            out: o,
        } => out(o, |o| b.wrap_key(session, &mech, wrapping_key, key, o)),
        R::UnwrapKey {
            session,
            mech,
            unwrapping_key,
            wrapped,
            template,
        } => b
            .unwrap_key(session, &mech, unwrapping_key, &wrapped.0, &template)
            .map(Reply::Object),
        R::DeriveKey {
            session,
            mech,
            base_key,
            template,
        } => b
            .derive_key(session, &mech, base_key, &template)
            .map(Reply::Object),
        R::SeedRandom { session, seed } => unit(b.seed_random(session, &seed.0)),
        R::GenerateRandom { session, len } => {
            if len > MAX_OUT {
                return Err(Error::DataLenRange);
            }
            let mut buf = vec![0u8; len];
            b.generate_random(session, &mut buf)
                .map(|()| Reply::Random(Bytes(buf)))
        }
        R::MessageEncryptInit { session, mech, key } => {
            unit(b.message_encrypt_init(session, &mech, key))
        }
        R::EncryptMessage {
            session,
            mut params,
            aad,
            data,
            out: o,
        } => {
            let r = out(o, |o| {
                b.encrypt_message(session, &mut params, &aad.0, &data.0, o)
            });
            message(params, r)
        }
        R::EncryptMessageBegin {
            session,
            mut params,
            aad,
        } => {
            let r = unit(b.encrypt_message_begin(session, &mut params, &aad.0));
            message(params, r)
        }
        R::EncryptMessageNext {
            session,
            mut params,
            data,
            out: o,
            last,
        } => {
            let r = out(o, |o| {
                b.encrypt_message_next(session, &mut params, &data.0, o, last)
            });
            message(params, r)
        }
        R::MessageEncryptFinal { session } => unit(b.message_encrypt_final(session)),
        R::MessageDecryptInit { session, mech, key } => {
            unit(b.message_decrypt_init(session, &mech, key))
        }
        R::DecryptMessage {
            session,
            mut params,
            aad,
            data,
            out: o,
        } => {
            let r = out(o, |o| {
                b.decrypt_message(session, &mut params, &aad.0, &data.0, o)
            });
            message(params, r)
        }
        R::DecryptMessageBegin {
            session,
            mut params,
            aad,
        } => {
            let r = unit(b.decrypt_message_begin(session, &mut params, &aad.0));
            message(params, r)
        }
        R::DecryptMessageNext {
            session,
            mut params,
            data,
            out: o,
            last,
        } => {
            let r = out(o, |o| {
                b.decrypt_message_next(session, &mut params, &data.0, o, last)
            });
            message(params, r)
        }
        R::MessageDecryptFinal { session } => unit(b.message_decrypt_final(session)),
        R::MessageSignInit { session, mech, key } => unit(b.message_sign_init(session, &mech, key)),
        R::SignMessage {
            session,
            mut params,
            data,
            out: o,
        } => {
            let r = out(o, |o| b.sign_message(session, &mut params, &data.0, o));
            message(params, r)
        }
        R::SignMessageBegin {
            session,
            mut params,
        } => {
            let r = unit(b.sign_message_begin(session, &mut params));
            message(params, r)
        }
        R::SignMessageNext {
            session,
            mut params,
            data,
            last,
            out: o,
        } => {
            let r = out(o, |o| {
                b.sign_message_next(session, &mut params, &data.0, last, o)
            });
            message(params, r)
        }
        R::MessageSignFinal { session } => unit(b.message_sign_final(session)),
        R::MessageVerifyInit { session, mech, key } => {
            unit(b.message_verify_init(session, &mech, key))
        }
        R::VerifyMessage {
            session,
            mut params,
            data,
            signature,
        } => {
            let r = unit(b.verify_message(session, &mut params, &data.0, &signature.0));
            message(params, r)
        }
        R::VerifyMessageBegin {
            session,
            mut params,
        } => {
            let r = unit(b.verify_message_begin(session, &mut params));
            message(params, r)
        }
        R::VerifyMessageNext {
            session,
            mut params,
            data,
            signature,
        } => {
            let r = unit(b.verify_message_next(
                session,
                &mut params,
                &data.0,
                signature.as_ref().map(|s| s.0.as_slice()),
            ));
            message(params, r)
        }
        R::MessageVerifyFinal { session } => unit(b.message_verify_final(session)),
    }
}
