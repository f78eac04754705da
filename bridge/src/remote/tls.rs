//! The network transport: the remote protocol inside TLS 1.3 with mutual authentication
//! (rustls over aws-lc-rs; docs/architecture.md §8).
//!
//! - [`server_config`]: what `ferrohsm serve --listen` presents and accepts. TLS 1.3 only; the
//!   client must present a certificate chaining to the client CA, for client authentication
//!   (webpki's verifier), whose identity ([`identity`]) is well formed and, when an allow-list
//!   is given, on it. Anything else fails the handshake: the peer never reaches the protocol.
//!   No session tickets or resumption: every connection proves its certificate again.
//! - [`client_config`]: what the module presents and accepts: TLS 1.3 only, the daemon's
//!   certificate verified against the slot's `ca` and the endpoint's host name or IP address,
//!   the slot's client certificate.
//! - [`identity`]: a client certificate's identity, the subject's common name (the NAME given to
//!   `ferrohsm tls issue --name`), limited to [`valid_identity`]'s characters so that it can be
//!   logged and compared as it is.
//! - [`TlsStream`]: a rustls connection over a `TcpStream`, driven by hand so that every read
//!   and write ends by a deadline (a peer trickling bytes cannot stretch it) and no write raises
//!   `SIGPIPE` in the application that loaded the module.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, ClientConnection, Connection, DigitallySignedStruct,
    DistinguishedName, OtherError, RootCertStore, ServerConfig, ServerConnection, SignatureScheme,
};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// The longest identity (a certificate's common name) the daemon accepts.
pub const MAX_IDENTITY: usize = 64;

/// Whether `name` may be a peer identity: 1 to [`MAX_IDENTITY`] ASCII letters, digits, `.`,
/// `_` and `-`, starting with a letter or digit (so that it is a valid DNS-style SAN too and
/// can be logged as it is).
pub fn valid_identity(name: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    !name.is_empty()
        && name.len() <= MAX_IDENTITY
        && name.chars().all(ok)
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
}

/// The subject's common name of a DER certificate, if it has exactly one and it is a string.
pub fn common_name(cert: &[u8]) -> Option<String> {
    cn(cert).ok()
}

fn cn(cert: &[u8]) -> core::result::Result<String, &'static str> {
    use x509_cert::der::Decode as _;
    use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef};
    // id-at-commonName (X.520).
    const CN: x509_cert::der::oid::ObjectIdentifier =
        x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.4.3");
    let cert =
        x509_cert::Certificate::from_der(cert).map_err(|_| "a certificate that does not parse")?;
    let mut names = cert
        .tbs_certificate
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .filter(|atv| atv.oid == CN);
    let atv = names.next().ok_or("a certificate without a common name")?;
    if names.next().is_some() {
        return Err("a certificate with several common names");
    }
    let value = &atv.value;
    value
        .decode_as::<Utf8StringRef<'_>>()
        .map(|s| s.as_str().to_owned())
        .or_else(|_| {
            value
                .decode_as::<PrintableStringRef<'_>>()
                .map(|s| s.as_str().to_owned())
        })
        .or_else(|_| {
            value
                .decode_as::<Ia5StringRef<'_>>()
                .map(|s| s.as_str().to_owned())
        })
        .map_err(|_| "a common name that is not a string")
}

/// The identity a client certificate carries: its subject's common name, if it has exactly
/// one, it is a [`valid_identity`], and the certificate's subject alternative names include
/// it as a DNS name (`ferrohsm tls issue --name NAME` writes NAME in both; a CA that certifies
/// one name in the SAN and another in the subject has not said which one the peer is). The
/// error says what is wrong without echoing bytes a peer chose.
pub fn identity(cert: &[u8]) -> core::result::Result<String, &'static str> {
    let text = cn(cert)?;
    if !valid_identity(&text) {
        return Err(
            "a common name with characters other than letters, digits, '.', '_' and '-' (or longer than 64)",
        );
    }
    if !san_dns_names(cert)?.contains(&text) {
        return Err(
            "a certificate whose subject alternative names do not include its common name as a DNS name",
        );
    }
    Ok(text)
}

/// The DNS names of a DER certificate's subject alternative name extension (none without it).
fn san_dns_names(cert: &[u8]) -> core::result::Result<Vec<String>, &'static str> {
    use x509_cert::der::Decode as _;
    use x509_cert::ext::pkix::SubjectAltName;
    use x509_cert::ext::pkix::name::GeneralName;
    let cert =
        x509_cert::Certificate::from_der(cert).map_err(|_| "a certificate that does not parse")?;
    let san = cert
        .tbs_certificate
        .get::<SubjectAltName>()
        .map_err(|_| "a subject alternative name extension that does not parse")?;
    Ok(san
        .map(|(_, san)| {
            san.0
                .into_iter()
                .filter_map(|n| match n {
                    GeneralName::DnsName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let bad = |e: String| Error::Config(format!("{what} {}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(pem_error(&e)))?
        .collect::<core::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(pem_error(&e)))?;
    if certs.is_empty() {
        return Err(bad(
            "no CERTIFICATE in it (a PEM file, e.g. from `ferrohsm tls`)".into(),
        ));
    }
    Ok(certs)
}

fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => format!("cannot read: {io}"),
        _ => "not a PEM file we can read".into(),
    }
}

/// Reads a private key (PEM: PKCS#8, SEC1 or PKCS#1); the file's bytes are wiped after use
/// and the error never contains them.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let bad = |e: &str| Error::Config(format!("key {}: {e}", path.display()));
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt as _;
        if meta.permissions().mode() & 0o077 != 0 {
            log::warn!(
                "key {}: readable by others than its owner (mode {:o}); chmod 600 it",
                path.display(),
                meta.permissions().mode() & 0o777
            );
        }
    }
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| bad(&format!("cannot read: {e}")))?);
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|_| bad("no PRIVATE KEY in it (a PEM file, e.g. from `ferrohsm tls issue`)"))
}

fn roots(path: &Path, what: &str) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    for cert in certificates(path, what)? {
        store
            .add(cert)
            .map_err(|e| Error::Config(format!("{what} {}: {e}", path.display())))?;
    }
    Ok(store)
}

fn tls_error(what: &str) -> impl Fn(rustls::Error) -> Error + '_ {
    move |e| Error::Config(format!("{what}: {e}"))
}

/// The daemon's TLS configuration: its certificate chain and key, the CA its clients'
/// certificates must chain to, and the identities allowed (`None`: every identity that CA
/// certifies).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
    allow: Option<Vec<String>>,
) -> Result<Arc<ServerConfig>> {
    if let Some(bad) = allow.iter().flatten().find(|n| !valid_identity(n)) {
        return Err(Error::Config(format!(
            "allowed identity {bad:?}: use 1 to {MAX_IDENTITY} letters, digits, '.', '_' or '-'"
        )));
    }
    let provider = provider();
    let inner = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(client_ca, "client CA")?),
        provider.clone(),
    )
    .build()
    .map_err(|e| Error::Config(format!("client CA {}: {e}", client_ca.display())))?;
    let verifier = Arc::new(IdentityVerifier { inner, allow });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error("TLS"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certificates(cert, "certificate")?, private_key(key)?)
        .map_err(|e| {
            Error::Config(format!(
                "certificate {} and key {}: {e}",
                cert.display(),
                key.display()
            ))
        })?;
    // Every connection authenticates in full: no tickets, no resumption, no early data.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.max_early_data_size = 0;
    Ok(Arc::new(config))
}

/// The module's TLS configuration: the CA the daemons' certificates chain to, and this
/// client's certificate chain and key.
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ClientConfig>> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error("TLS"))?
        .with_root_certificates(roots(ca, "ca")?)
        .with_client_auth_cert(certificates(cert, "cert")?, private_key(key)?)
        .map_err(|e| {
            Error::Config(format!(
                "cert {} and key {}: {e}",
                cert.display(),
                key.display()
            ))
        })?;
    config.resumption = rustls::client::Resumption::disabled();
    config.enable_early_data = false;
    Ok(Arc::new(config))
}

/// webpki's client verifier, then the identity rule: a certificate that chains to the client
/// CA but whose identity is malformed or not allowed fails the handshake too.
#[derive(Debug)]
struct IdentityVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allow: Option<Vec<String>>,
}

/// Why a verified certificate is refused (shown in the daemon's log through rustls' error).
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

fn refused(why: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Refused(why)))))
}

impl ClientCertVerifier for IdentityVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        true
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> core::result::Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let name = identity(end_entity).map_err(|why| refused(why.to_owned()))?;
        if let Some(allow) = &self.allow {
            if !allow.contains(&name) {
                return Err(refused(format!(
                    "identity {name} is not in the allow-list (--allow-identity)"
                )));
            }
        }
        Ok(verified)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> core::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> core::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A daemon's network endpoint, `tls://HOST:PORT` (an IPv6 address in brackets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// As configured (for logs).
    pub text: String,
    host: String,
    port: u16,
}

impl Endpoint {
    /// Parses `tls://HOST:PORT`.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::Config(format!(
                "endpoint {text:?}: {why} (write tls://HOST:PORT, e.g. tls://10.0.0.5:7401)"
            ))
        };
        let rest = text
            .strip_prefix("tls://")
            .ok_or_else(|| bad("not tls://"))?;
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let port: u16 = port.parse().map_err(|_| bad("bad port"))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() || port == 0 {
            return Err(bad("no host or port 0"));
        }
        ServerName::try_from(host.to_owned()).map_err(|_| bad("not a host name or IP address"))?;
        Ok(Self {
            text: text.to_owned(),
            host: host.to_owned(),
            port,
        })
    }

    /// The name the daemon's certificate must carry (a DNS name or an IP address SAN).
    fn server_name(&self) -> Result<ServerName<'static>> {
        ServerName::try_from(self.host.clone()).map_err(|_| Error::DeviceError)
    }

    fn addresses(&self) -> std::io::Result<Vec<SocketAddr>> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        Ok((self.host.as_str(), self.port).to_socket_addrs()?.collect())
    }

    /// Connects and completes the TLS handshake, all within `timeout`.
    pub(super) fn connect(
        &self,
        config: &Arc<ClientConfig>,
        timeout: Duration,
    ) -> std::io::Result<TlsStream> {
        let until = Instant::now() + timeout;
        let mut last = std::io::Error::from(ErrorKind::NotFound);
        for addr in self.addresses()? {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ErrorKind::TimedOut.into());
            }
            let tcp = match TcpStream::connect_timeout(&addr, left) {
                Ok(tcp) => tcp,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let name = self
                .server_name()
                .map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))?;
            let conn = ClientConnection::new(config.clone(), name)
                .map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))?;
            let mut stream = TlsStream {
                conn: conn.into(),
                tcp,
            };
            stream.handshake(until)?;
            return Ok(stream);
        }
        Err(last)
    }
}

/// A TCP stream whose reads and writes end by a deadline and whose writes never raise
/// `SIGPIPE` (`MSG_NOSIGNAL`): the module lives in applications that do not ignore it.
struct Sock<'a> {
    tcp: &'a TcpStream,
    until: Option<Instant>,
}

impl Sock<'_> {
    fn left(&self) -> std::io::Result<Option<Duration>> {
        match self.until {
            None => Ok(None),
            Some(until) => {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    Err(ErrorKind::TimedOut.into())
                } else {
                    Ok(Some(left))
                }
            }
        }
    }
}

impl Read for Sock<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.left()?;
        self.tcp.set_read_timeout(left)?;
        let mut tcp = self.tcp;
        tcp.read(buf)
    }
}

impl Write for Sock<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let left = self.left()?;
        self.tcp.set_write_timeout(left)?;
        loop {
            match rustix::net::send(self.tcp, buf, rustix::net::SendFlags::NOSIGNAL) {
                Ok(n) => return Ok(n),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A TLS connection (either side) over TCP, every operation bounded by a deadline.
pub struct TlsStream {
    conn: Connection,
    tcp: TcpStream,
}

impl TlsStream {
    /// The server side of a new connection (the handshake is still to run).
    pub(super) fn accept(config: &Arc<ServerConfig>, tcp: TcpStream) -> std::io::Result<Self> {
        let conn = ServerConnection::new(config.clone())
            .map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))?;
        let _ = tcp.set_nodelay(true);
        Ok(Self {
            conn: conn.into(),
            tcp,
        })
    }

    /// The TCP stream (to shut it down from another thread, to peek at it).
    pub(super) fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Runs the handshake to its end, by `until`. A refusal (a certificate not accepted, a
    /// protocol version) is `InvalidData`, with rustls' reason; the alert is sent.
    pub(super) fn handshake(&mut self, until: Instant) -> std::io::Result<()> {
        let mut sock = Sock {
            tcp: &self.tcp,
            until: Some(until),
        };
        while self.conn.is_handshaking() {
            let (read, wrote) = self.conn.complete_io(&mut sock)?;
            if read == 0 && wrote == 0 && self.conn.is_handshaking() {
                return Err(ErrorKind::UnexpectedEof.into());
            }
        }
        // The last flight (a client's Finished) may still be queued.
        self.flush(Some(until))
    }

    /// After a refusal (the alert sent): ends the sending side and reads what the peer still
    /// sends, until it closes or `until` (at most 64 KiB), so that the close does not reset the
    /// connection before the peer has read the alert (a reset discards it on the way).
    pub(super) fn linger(&mut self, until: Instant) {
        let _ = self.flush(Some(until));
        let _ = self.tcp.shutdown(std::net::Shutdown::Write);
        let mut sock = Sock {
            tcp: &self.tcp,
            until: Some(until),
        };
        let mut buf = [0u8; 4096];
        for _ in 0..16 {
            match sock.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// The verified identity of the peer's certificate (server side, after the handshake).
    pub(super) fn peer_identity(&self) -> core::result::Result<String, &'static str> {
        let cert = self
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or("no client certificate")?;
        identity(cert)
    }

    fn flush(&mut self, until: Option<Instant>) -> std::io::Result<()> {
        let mut sock = Sock {
            tcp: &self.tcp,
            until,
        };
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut sock)? == 0 {
                return Err(ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }

    /// Whether decrypted bytes are waiting to be read.
    pub(super) fn buffered(&mut self) -> bool {
        self.conn
            .process_new_packets()
            .is_ok_and(|s| s.plaintext_bytes_to_read() > 0)
    }

    /// Whether the peer has closed this idle connection (or sent data unasked), found without
    /// blocking: records that arrived meanwhile (a key update) are taken in, an alert, the end
    /// of the stream or any plaintext means it is gone.
    pub(super) fn peer_gone(&mut self) -> bool {
        let mut byte = [0u8; 1];
        for _ in 0..8 {
            if self.buffered() {
                return true;
            }
            match rustix::net::recv(
                &self.tcp,
                &mut byte,
                rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT,
            ) {
                Err(rustix::io::Errno::AGAIN) => return false,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) | Ok((0, _)) => return true,
                Ok(_) => {}
            }
            // Bytes are there: a record, read without waiting for more than a moment.
            let mut sock = Sock {
                tcp: &self.tcp,
                until: Some(Instant::now() + Duration::from_millis(50)),
            };
            match self.conn.read_tls(&mut sock) {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
            match self.conn.process_new_packets() {
                Ok(state) if state.peer_has_closed() => return true,
                Ok(_) => {}
                Err(_) => return true,
            }
            let _ = self.flush(Some(Instant::now() + Duration::from_millis(50)));
        }
        true
    }

    /// Reads decrypted bytes, waiting until `until` at most (`None`: for ever). `Ok(0)`: the
    /// peer closed (cleanly or not: a truncation cannot hurt a framed protocol, it is a
    /// short frame).
    pub(super) fn read_until(
        &mut self,
        buf: &mut [u8],
        until: Option<Instant>,
    ) -> std::io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            let mut sock = Sock {
                tcp: &self.tcp,
                until,
            };
            let n = match self.conn.read_tls(&mut sock) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let processed = self.conn.process_new_packets();
            // An alert rustls wants to send about what it just read: best effort.
            let _ = self.flush(until);
            if let Err(e) = processed {
                return Err(std::io::Error::new(ErrorKind::InvalidData, e));
            }
            if n == 0 {
                // The end of the TCP stream: the reader now says so (or hands out the rest).
                match self.conn.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(0),
                    Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(0),
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// Writes all of `data` (one frame) by `until`.
    pub(super) fn write_until(
        &mut self,
        data: &[u8],
        until: Option<Instant>,
    ) -> std::io::Result<()> {
        // rustls buffers at most 64 KiB of plaintext: write a piece, send it, go on.
        let mut rest = data;
        while !rest.is_empty() {
            let n = self.conn.writer().write(rest)?;
            rest = rest.get(n..).unwrap_or_default();
            self.flush(until)?;
            if n == 0 && !rest.is_empty() {
                return Err(ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }
}

/// What went wrong in a handshake, in words: rustls' error, with the identity rule's own
/// reason as it is.
pub(super) fn describe(e: &std::io::Error) -> String {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return e.to_string();
    };
    match tls {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(why))) => {
            why.to_string()
        }
        other => other.to_string(),
    }
}

/// `input` read through a [`TlsStream`], every read ending by one deadline.
pub(super) struct TlsReader<'a> {
    pub(super) stream: &'a mut TlsStream,
    pub(super) until: Option<Instant>,
}

impl Read for TlsReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stream.read_until(buf, self.until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_plain_names() {
        for ok in ["app", "app-1", "signer.prod", "A_b-9", &"x".repeat(64)] {
            assert!(valid_identity(ok), "{ok}");
        }
        for bad in [
            "",
            "-app",
            ".app",
            "a b",
            "a\nb",
            "é",
            "a/b",
            &"x".repeat(65),
        ] {
            assert!(!valid_identity(bad), "{bad:?}");
        }
    }

    #[test]
    fn endpoints_parse_with_their_names() {
        let e = Endpoint::parse("tls://127.0.0.1:7401").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("127.0.0.1", 7401));
        let e = Endpoint::parse("tls://[::1]:7401").unwrap();
        assert_eq!(e.host, "::1");
        assert!(e.server_name().is_ok());
        let e = Endpoint::parse("tls://hsm-a.example:7401").unwrap();
        assert_eq!(e.host, "hsm-a.example");
        for bad in [
            "127.0.0.1:7401",
            "tcp://127.0.0.1:7401",
            "tls://127.0.0.1",
            "tls://127.0.0.1:0",
            "tls://:7401",
            "tls://127.0.0.1:99999",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
