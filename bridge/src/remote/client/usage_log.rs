//! Reading a tenant's usage log from the daemon (protocol version 3, a daemon request), as
//! the tenant's auditor: [`RemoteBackend::read_usage_log`].

use super::*;

/// Why [`RemoteBackend::read_usage_log`] read nothing, or stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogReadError {
    /// The daemon refused (`CKR_ACTION_PROHIBITED`: this identity is not the tenant's
    /// auditor, whatever the reason), or the connection failed (its log line says why).
    Refused(Error),
    /// The log does not verify: nothing of it is shown. `by_daemon`: the daemon found it
    /// before sending (else this client found the lines it received broken).
    Broken {
        /// The first bad line (0: the log as a whole).
        line: u64,
        /// Why.
        why: String,
        /// Who found it.
        by_daemon: bool,
    },
    /// Anything else, in words (a daemon too old, a malformed answer, a callback's error).
    Failed(String),
}

impl std::fmt::Display for LogReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(Error::ActionProhibited) => write!(
                f,
                "refused (CKR_ACTION_PROHIBITED): only an identity granted the auditor role in \
                 the tenant reads its usage log (`ferrohsm tenant grant --role auditor`)"
            ),
            Self::Refused(e) => write!(f, "failed ({}); see the lines above", e.name()),
            Self::Broken {
                line,
                why,
                by_daemon,
            } => {
                let who = if *by_daemon {
                    "the daemon"
                } else {
                    "this client"
                };
                write!(
                    f,
                    "line {line}: {}: the log was changed after it was written ({who} found \
                     it; nothing of the log is shown)",
                    crate::audit::printable(why)
                )
            }
            Self::Failed(why) => f.write_str(&crate::audit::printable(why)),
        }
    }
}

impl RemoteBackend {
    /// Reads tenant `tenant`'s usage log from the daemon (protocol version 3,
    /// [`DaemonRequest::AuditRead`]), page by page on a connection of its own (no application
    /// key: it joins no application), giving each page's lines to `page` as they arrive. The
    /// daemon verified the log before sending; every line is checked again here (sequence
    /// and chain from the log's first line, across pages), so a page that does not continue
    /// the last one stops the read. Returns the number of lines read.
    ///
    /// Over TLS the client must name exactly one endpoint: each node of a cluster keeps the
    /// log of the calls it served, so each is read on its own.
    pub fn read_usage_log(
        &self,
        tenant: &str,
        mut page: impl FnMut(&[String]) -> std::result::Result<(), String>,
    ) -> std::result::Result<u64, LogReadError> {
        let (mut stream, name) = self.daemon_connection()?;
        let name = name.as_str();
        let mut chain = crate::audit::Chain::start();
        let mut cursor = None;
        let failed = |why: &dyn std::fmt::Display| LogReadError::Failed(format!("{name}: {why}"));
        loop {
            let until = Instant::now() + self.timeout;
            let request = DaemonRequest::AuditRead {
                tenant: tenant.to_owned(),
                cursor: cursor.take(),
            };
            stream
                .send(&request.encode(), until)
                .map_err(|e| failed(&format!("cannot send: {e}")))?;
            let frame = stream
                .receive(MAX_FRAME, until)
                .map_err(|e| failed(&format!("no answer: {e}")))?
                .ok_or_else(|| failed(&"the daemon closed the connection"))?;
            let reply = decode_daemon_response(&frame)
                .map_err(|_| failed(&"a malformed answer"))?
                .map_err(LogReadError::Refused)?;
            let (lines, next) = match reply {
                DaemonReply::AuditPage { lines, next } => (lines, next),
                DaemonReply::AuditBroken { line, why } => {
                    return Err(LogReadError::Broken {
                        line,
                        why,
                        by_daemon: true,
                    });
                }
            };
            for line in &lines {
                chain
                    .push(line)
                    .map_err(|(line, why)| LogReadError::Broken {
                        line,
                        why,
                        by_daemon: false,
                    })?;
            }
            page(&lines).map_err(LogReadError::Failed)?;
            match next {
                None => return Ok(chain.seq()),
                Some(next) if next.chain == chain && !lines.is_empty() => cursor = Some(next),
                Some(_) => {
                    return Err(LogReadError::Broken {
                        line: chain.seq(),
                        why: "the daemon's next page does not start where its lines ended"
                            .to_owned(),
                        by_daemon: false,
                    });
                }
            }
        }
    }

    /// A connection for daemon requests: the hello says versions `MIN_VERSION..=VERSION`
    /// without an application key, and a daemon that chooses one below
    /// [`DAEMON_VERSION`] is too old for them (one line says so).
    fn daemon_connection(&self) -> std::result::Result<(Stream, String), LogReadError> {
        let refused = |e: Error| LogReadError::Refused(e);
        let (mut stream, name) = match &self.transport {
            Transport::Unix { path, daemon_uid } => {
                let stream = UnixStream::connect(path).map_err(|e| {
                    LogReadError::Failed(format!(
                        "the daemon at {} does not answer ({e}): is `ferrohsm serve --socket {}` running?",
                        path.display(),
                        path.display()
                    ))
                })?;
                check_daemon(path, &stream, *daemon_uid).map_err(refused)?;
                (Stream::Unix(stream), path.display().to_string())
            }
            Transport::Tls { endpoints, config } => {
                let [e] = endpoints.as_slice() else {
                    return Err(LogReadError::Failed(format!(
                        "{} endpoints: a usage log is read from one node at a time (each keeps \
                         the log of the calls it served)",
                        endpoints.len()
                    )));
                };
                let tls = e.connect(config, self.connect_timeout).map_err(|err| {
                    LogReadError::Failed(format!("{}: cannot connect: {err}", e.text))
                })?;
                (Stream::Tls(Box::new(tls)), e.text.clone())
            }
        };
        let until = Instant::now() + self.connect_timeout;
        let sent = stream.send(&Hello::versions(MIN_VERSION, VERSION).encode(), until);
        let answer = match stream.receive(HELLO_MAX, until) {
            Ok(Some(a)) => a,
            Ok(None) => {
                return Err(LogReadError::Failed(format!(
                    "{name}: the daemon closed the connection at the hello{}",
                    sent.err().map(|e| format!(" ({e})")).unwrap_or_default()
                )));
            }
            Err(e) => {
                return Err(LogReadError::Failed(format!(
                    "{name}: the daemon refused the connection or did not answer its hello ({e}): \
                     is this certificate issued by its --client-ca, and its identity allowed?"
                )));
            }
        };
        match Welcome::decode(&answer) {
            Ok(Welcome::Accepted { version, .. }) if version >= DAEMON_VERSION => {
                Ok((stream, name))
            }
            Ok(Welcome::Accepted { version, .. }) => Err(LogReadError::Failed(format!(
                "{name}: the daemon speaks protocol version {version}, and reading a usage log \
                 over the network needs version {DAEMON_VERSION}: upgrade the daemon, or run \
                 `ferrohsm audit show --home` on its host"
            ))),
            Ok(Welcome::Refused(rv)) => {
                log::error!(
                    "remote {name}: the daemon refused this client at its hello ({}): this \
                     identity holds no role in any tenant, or a limit; see its log",
                    crate::error::rv_name(rv)
                );
                Err(refused(Error::from_rv(rv)))
            }
            Err(_) => Err(LogReadError::Failed(format!(
                "{name}: a malformed answer to the hello"
            ))),
        }
    }
}
