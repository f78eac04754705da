//! `ferrohsm`: token administration for FerroHSM.
//!
//! It builds the same slots as the PKCS#11 module (the same `FERROHSM_CONF` /
//! `FERROHSM_HOME` contract, the same composition code) and talks to them through the same
//! `Backend` API, in process.

// A command-line tool prints and exits; the workspace denies both for library code.
#![allow(clippy::print_stdout, clippy::print_stderr, clippy::exit)]

mod byok;
mod check;
mod cluster;
mod diag;
mod domain;
mod import_softhsm;
mod migrate;
mod pin;
mod serve;
mod tenant;
mod tls;
mod trace;

use bridge::BackendExt as _;
use std::process::ExitCode;

use bridge::config::Config;
use bridge::output::OutputFile;
use bridge::{
    AttrAnswer, AttrValue, Error, ObjectHandle, Router, SessionHandle, SlotId, Template, ULONG_SIZE,
};
use clap::{Parser, Subcommand};
use cryptoki_sys::*;

/// FerroHSM token administration.
#[derive(Parser)]
#[command(name = "ferrohsm", version, about, long_about = None)]
struct Cli {
    /// Configuration file (default: $FERROHSM_CONF, else the default home).
    #[arg(long, global = true, value_name = "PATH")]
    conf: Option<std::path::PathBuf>,
    /// Read the PINs the command asks for from standard input, one per line (in the order it
    /// asks: the SO PIN before the user PIN, the old before the new).
    #[arg(long, global = true, conflicts_with = "pin_file")]
    pin_stdin: bool,
    /// Read them from this file (mode 0600), one per line.
    #[arg(long, global = true, value_name = "PATH")]
    pin_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process and matched at once: the size of its largest variant (`serve`'s
// flags) costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// List the slots and their tokens (with each token's pkcs11: URI).
    Slots {
        /// Print JSON: a list of slots, each with its `slot` id, description and token.
        #[arg(long)]
        json: bool,
    },
    /// Initialize (or re-initialize) a token: set its label and SO PIN, and optionally the
    /// user PIN.
    InitToken {
        /// The slot (default: the first slot with an uninitialized token).
        #[arg(long)]
        slot: Option<CK_SLOT_ID>,
        /// The token label (at most 32 bytes).
        #[arg(long)]
        label: String,
        /// The SO PIN (else $FERROHSM_SO_PIN, else a prompt).
        #[arg(long, value_name = "PIN")]
        so_pin: Option<String>,
        /// Also set the user PIN to this (else $FERROHSM_PIN if set; else the user PIN stays
        /// unset).
        #[arg(long, value_name = "PIN")]
        pin: Option<String>,
        /// Re-initialize a token that is initialized already (wiping its keys and PINs).
        #[arg(long)]
        force: bool,
    },
    /// Set the user PIN as the SO (a token initialized without one).
    InitPin {
        #[command(flatten)]
        admin: SoPinArgs,
    },
    /// Unlock a user PIN locked by wrong tries: the SO sets a new one (the lockout is reset).
    Unlock {
        #[command(flatten)]
        admin: SoPinArgs,
    },
    /// Change a PIN, knowing the old one (the user's, or with --so the SO's).
    SetPin {
        /// The slot (default: the first initialized token).
        #[arg(long, conflicts_with = "token")]
        slot: Option<CK_SLOT_ID>,
        /// The token, by label.
        #[arg(long)]
        token: Option<String>,
        /// Change the SO PIN instead of the user PIN.
        #[arg(long)]
        so: bool,
        /// The current PIN (else $FERROHSM_PIN, or $FERROHSM_SO_PIN with --so, else a prompt).
        #[arg(long, value_name = "PIN")]
        old_pin: Option<String>,
        /// The new PIN (else $FERROHSM_NEW_PIN, else a prompt, twice).
        #[arg(long, value_name = "PIN")]
        new_pin: Option<String>,
    },
    /// List the objects of a token: labels, ids, classes, key types and flags, never values.
    Objects {
        /// The slot (default: the first initialized token).
        #[arg(long, conflicts_with = "token")]
        slot: Option<CK_SLOT_ID>,
        /// The token, by label.
        #[arg(long)]
        token: Option<String>,
        /// Log in as the user to see private objects (PIN from --pin, $FERROHSM_PIN or a
        /// prompt).
        #[arg(long)]
        login: bool,
        /// The user PIN (implies --login).
        #[arg(long, value_name = "PIN")]
        pin: Option<String>,
        /// Print JSON: the token and its objects, each with its pkcs11: URI.
        #[arg(long)]
        json: bool,
    },
    /// Copy the token objects of one slot into another: extractable keys wrapped under a fresh
    /// transport key, with every protection and usage attribute; public keys, certificates and
    /// data objects by value. Lists the keys that are not extractable (re-create them) and
    /// every attribute not carried exactly.
    Migrate {
        /// The source slot.
        #[arg(long)]
        from: CK_SLOT_ID,
        /// The destination slot (an initialized token).
        #[arg(long)]
        to: CK_SLOT_ID,
        /// Only keys with this label.
        #[arg(long)]
        label: Option<String>,
        /// The source's user PIN (else $FERROHSM_FROM_PIN, else a prompt).
        #[arg(long, value_name = "PIN")]
        from_pin: Option<String>,
        /// The destination's user PIN (else $FERROHSM_TO_PIN, else a prompt).
        #[arg(long, value_name = "PIN")]
        to_pin: Option<String>,
        /// Accept the listed losses: copy objects whose restrictions the source will not
        /// report or the destination refuses (without them), and exit 0 when attributes were
        /// not carried exactly.
        #[arg(long)]
        allow_loss: bool,
    },
    /// Replay a trace recorded with `ferrohsm trace` against a target HSM's personality and
    /// list, per call site, what the target would do differently, with a fix for each. Exits
    /// 1 when a call would fail there (warnings alone: 0).
    Check {
        /// The trace (JSON lines, docs/trace.md).
        #[arg(long, value_name = "FILE")]
        trace: std::path::PathBuf,
        /// The personality of the target: aws-cloudhsm, azure-cloudhsm, luna, softhsm, strict
        /// or default (`ferrohsm personalities` lists them).
        #[arg(long, value_name = "NAME")]
        target: String,
        /// The personality the trace was recorded under.
        #[arg(long, value_name = "NAME", default_value = "default")]
        from: String,
        /// Print JSON (for CI): the counts and every finding.
        #[arg(long)]
        json: bool,
    },
    /// List the personalities a slot can take (`personality = "..."`), or show one: what it
    /// models, its rules' sources and what its vendor does not document.
    Personalities {
        /// Show this one in full.
        name: Option<String>,
    },
    /// Make a new token from a SoftHSMv2 token: its file object store read and decrypted with
    /// the user PIN, every object created with its attributes (non-extractable keys stay so;
    /// CKA_LOCAL false), the same label and user PIN, a new SO PIN. Nothing is written unless
    /// every object is made.
    ImportSofthsm(import_softhsm::ImportArgs),
    /// Bring your own key: key exchange keys, `.byok` import and export.
    Byok {
        #[command(subcommand)]
        command: ByokCommand,
    },
    /// Run the simulated firmware as a daemon on a Unix socket and/or TLS network listeners
    /// (`[[slot]] kind = "remote"` reaches it): key bytes stay in this process. SIGTERM or
    /// SIGINT stops it cleanly.
    Serve(serve::ServeArgs),
    /// A cluster of nodes sharing their tokens through etcd.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// The security domain: the home's domain master key, split among key holders.
    Domain {
        #[command(subcommand)]
        command: DomainCommand,
    },
    /// Encrypted backups of every token of a home, and their restore with the domain.
    Backup {
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// Tenants of a daemon: their own tokens, reached by the identities granted roles there.
    Tenant {
        #[command(subcommand)]
        command: tenant::TenantCommand,
    },
    /// Audit logs.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Certificates for the daemon's network listener: a CA, server and client certificates.
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
    /// Run an application with the module recording every call (function, mechanism and
    /// parameter shape, key size, templates without secrets, return code, time) into a trace
    /// file (JSON lines, docs/trace.md), then say how many records it wrote. Exits with the
    /// application's code. The application must load the module itself (e.g. `pkcs11-tool
    /// --module …/libferrohsm_pkcs11.so`); --conf is passed on to it as FERROHSM_CONF.
    Trace {
        /// The trace file (created mode 0600 if missing; records are appended).
        #[arg(long, value_name = "FILE")]
        out: std::path::PathBuf,
        /// The command to run and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<std::ffi::OsString>,
    },
}

#[derive(Subcommand)]
enum TlsCommand {
    /// Make a certificate authority: DIR/ca.pem (for --client-ca and the module's `ca`) and
    /// DIR/ca.key (mode 0600; keep it private).
    InitCa {
        /// The directory to write to (made 0700 if missing).
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
        /// Allow --out in a directory that others can write.
        #[arg(long)]
        allow_shared_dir: bool,
    },
    /// Issue a certificate from the CA in --ca: DIR/NAME.pem and DIR/NAME.key (0600). A client
    /// certificate whose identity is NAME, or with --server a daemon's certificate.
    Issue {
        /// The CA's directory (ca.pem, ca.key; from `tls init-ca`).
        #[arg(long, value_name = "DIR")]
        ca: std::path::PathBuf,
        /// The identity (letters, digits, '.', '_', '-'): the certificate's common name and a
        /// SAN, what the daemon logs and authorizes; also the files' names.
        #[arg(long)]
        name: String,
        /// A server certificate for these host names and IP addresses (comma-separated): the
        /// ones the module's endpoints use.
        #[arg(long, value_name = "HOST,IP...", value_delimiter = ',')]
        server: Option<Vec<String>>,
        /// The directory to write to (made 0700 if missing).
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
        /// Allow --out in a directory that others can write.
        #[arg(long)]
        allow_shared_dir: bool,
    },
}

#[derive(Subcommand)]
enum ByokCommand {
    /// Generate an RSA key exchange key (unwrap only, never extractable) and write its public
    /// key as PEM.
    CreateKek {
        /// The token, by label.
        #[arg(long)]
        token: String,
        /// The KEK's label (the `kid` .byok files name).
        #[arg(long)]
        label: String,
        /// RSA modulus size.
        #[arg(long, default_value_t = 2048)]
        size: CK_ULONG,
        /// Where to write the public key (PEM, SubjectPublicKeyInfo; mode 0600 unless
        /// --world-readable).
        #[arg(long)]
        out: std::path::PathBuf,
        /// Write the public key mode 0644 (it is public material).
        #[arg(long)]
        world_readable: bool,
        /// Allow --out in a directory that others can write.
        #[arg(long)]
        allow_shared_dir: bool,
        /// The user PIN (else $FERROHSM_PIN, else a prompt).
        #[arg(long, value_name = "PIN")]
        pin: Option<String>,
    },
    /// Import a `.byok` file: the key is unwrapped inside the token.
    Import {
        /// The token, by label.
        #[arg(long)]
        token: String,
        /// The key exchange key's label.
        #[arg(long)]
        kek: String,
        /// The `.byok` file.
        #[arg(long)]
        file: std::path::PathBuf,
        /// The new key's label.
        #[arg(long)]
        label: String,
        /// rsa, ec:p256, ec:p384, ec:p521 or aes.
        #[arg(long)]
        key_type: String,
        /// Comma-separated usages (sign, decrypt, encrypt, verify, wrap, unwrap, derive).
        #[arg(long, value_delimiter = ',')]
        usage: Vec<String>,
        /// The user PIN (else $FERROHSM_PIN, else a prompt).
        #[arg(long, value_name = "PIN")]
        pin: Option<String>,
    },
    /// Wrap an extractable key for another HSM's key exchange key, as a `.byok` file.
    Export {
        /// The token, by label.
        #[arg(long)]
        token: String,
        /// The key's label.
        #[arg(long)]
        key: String,
        /// The other HSM's KEK public key (PEM).
        #[arg(long)]
        kek_pem: std::path::PathBuf,
        /// The `kid` to write (default: the PEM file's name).
        #[arg(long)]
        kid: Option<String>,
        /// The `.byok` file to write (mode 0600).
        #[arg(long)]
        out: std::path::PathBuf,
        /// Allow --out in a directory that others can write.
        #[arg(long)]
        allow_shared_dir: bool,
        /// The user PIN (else $FERROHSM_PIN, else a prompt).
        #[arg(long, value_name = "PIN")]
        pin: Option<String>,
    },
}

#[derive(Subcommand)]
enum DomainCommand {
    /// Create the home's domain master key (or adopt the existing one), split it M-of-N and
    /// seal each share to a holder's RSA public key.
    Init {
        /// The holders' RSA public keys (PEM, SubjectPublicKeyInfo), comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            required = true,
            value_name = "PEM,PEM,..."
        )]
        holders: Vec<std::path::PathBuf>,
        /// How many holders are needed to restore (M).
        #[arg(long)]
        threshold: usize,
        /// The domain file to write (no secret in clear; keep copies with the backups). It
        /// must not exist; mode 0600 unless --world-readable.
        #[arg(long)]
        out: std::path::PathBuf,
        /// Write the domain file mode 0644 (it holds no secret in clear).
        #[arg(long)]
        world_readable: bool,
        /// Allow --out in a directory that others can write.
        #[arg(long)]
        allow_shared_dir: bool,
        /// The home (default: $FERROHSM_HOME, else the default data directory).
        #[arg(long, value_name = "DIR")]
        home: Option<std::path::PathBuf>,
    },
    /// Bring the domain master key to a new node's home with M holders' private keys (a node
    /// of a cluster unseals nothing without it).
    Join {
        #[command(flatten)]
        quorum: domain::Quorum,
        /// The node's home (default: $FERROHSM_HOME, else the default data directory).
        #[arg(long, value_name = "DIR")]
        home: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Create a cluster in etcd from a home with a security domain (`domain init` done),
    /// importing the home's tokens.
    Init {
        /// The cluster's name (letters, digits, '-', '_', '.').
        #[arg(long)]
        name: String,
        /// The etcd members' client URLs, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            required = true,
            value_name = "URL,URL,..."
        )]
        etcd: Vec<String>,
        /// The home whose domain and tokens make the cluster (default: $FERROHSM_HOME, else
        /// the default data directory).
        #[arg(long, value_name = "DIR")]
        home: Option<std::path::PathBuf>,
    },
    /// Show the etcd members, the nodes (the revision each has applied) and the tokens.
    Status {
        /// The cluster's name.
        #[arg(long)]
        name: String,
        /// The etcd members' client URLs, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            required = true,
            value_name = "URL,URL,..."
        )]
        etcd: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Write an encrypted, authenticated backup of every token of the home (no PIN needed:
    /// the sealed rows are encrypted once more under the domain).
    Create {
        /// The backup file (mode 0600; an existing regular file is replaced).
        #[arg(long)]
        out: std::path::PathBuf,
        /// Allow --out in a directory that others can write.
        #[arg(long)]
        allow_shared_dir: bool,
        /// The home (default: $FERROHSM_HOME, else the default data directory).
        #[arg(long, value_name = "DIR")]
        home: Option<std::path::PathBuf>,
    },
    /// Restore a backup with M holders' private keys (into an empty home, or over an older
    /// state of the same tokens).
    Restore {
        /// The backup file.
        #[arg(long = "in", value_name = "FILE")]
        input: std::path::PathBuf,
        #[command(flatten)]
        quorum: domain::Quorum,
        /// The home (default: $FERROHSM_HOME, else the default data directory).
        #[arg(long, value_name = "DIR")]
        home: Option<std::path::PathBuf>,
    },
}

// Parsed once per process: the size of `show`'s connection flags costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum AuditCommand {
    /// A tenant's usage log (every use of its keys, by whom), checked, then listed: read from
    /// the daemon as the tenant's auditor (--socket, or --endpoint with --ca, --cert and
    /// --tls-key, or every node of --cluster with those, or the remote slots of --conf), or
    /// from the daemon's home on its host (--home).
    Show {
        /// Read the log files in the daemon's home (on its host) instead of asking the daemon.
        #[arg(long, value_name = "DIR", conflicts_with_all = ["socket", "endpoint", "ca", "cert", "tls_key", "cluster"])]
        home: Option<std::path::PathBuf>,
        #[command(flatten)]
        daemon: tenant::DaemonArgs,
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// Only the uses of the key (or object) with this label.
        #[arg(long, value_name = "LABEL")]
        key: Option<String>,
        /// Only records at or after this UTC time (RFC 3339, e.g. 2026-12-07 or
        /// 2026-12-07T16:00:00Z; a prefix of the log's own time format).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Print JSON (the log's records as they are).
        #[arg(long)]
        json: bool,
    },
    /// Check a log's hash chain: exits 0 when intact, non-zero naming the first bad line.
    Verify {
        /// The log (`audit_log` of a slot).
        path: std::path::PathBuf,
    },
}

/// The token and the PINs of `init-pin` and `unlock`.
#[derive(clap::Args)]
struct SoPinArgs {
    /// The slot (default: the first initialized token).
    #[arg(long, conflicts_with = "token")]
    slot: Option<CK_SLOT_ID>,
    /// The token, by label.
    #[arg(long)]
    token: Option<String>,
    /// The SO PIN (else $FERROHSM_SO_PIN, else a prompt).
    #[arg(long, value_name = "PIN")]
    so_pin: Option<String>,
    /// The new user PIN (else $FERROHSM_PIN, else a prompt, twice).
    #[arg(long, value_name = "PIN")]
    pin: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Trace { out, command } = &cli.command {
        return match trace::run(out, cli.conf.as_deref(), command) {
            Ok(code) => code,
            Err(msg) => {
                eprintln!("ferrohsm: {msg}");
                ExitCode::FAILURE
            }
        };
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("ferrohsm: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// An error for the operator: what failed, in words, with the PKCS#11 code.
pub(crate) fn explain(what: &str, e: &Error) -> String {
    let hint = match e {
        Error::PinIncorrect => "wrong PIN",
        Error::PinLocked => {
            "the PIN is locked (too many wrong attempts); the SO can set a new user PIN with `ferrohsm unlock`"
        }
        Error::PinLenRange => "a PIN must be 4 to 64 characters",
        Error::TokenNotRecognized => "the token is not initialized (run `ferrohsm init-token`)",
        Error::UserPinNotInitialized => {
            "the user PIN is not set (use `ferrohsm init-token --pin` or C_InitPIN)"
        }
        Error::SessionExists => "the token has open sessions",
        Error::SlotIdInvalid => "no such slot (see `ferrohsm slots`)",
        _ => "",
    };
    // What the layers below logged about it (a daemon that does not answer, a refused peer).
    let why = diag::first().map(|w| format!("{w}; ")).unwrap_or_default();
    if hint.is_empty() {
        format!("{what}: {why}{}", e.name())
    } else {
        format!("{what}: {why}{hint} ({})", e.name())
    }
}

fn open(conf: Option<&std::path::Path>) -> Result<Router, String> {
    let config = match conf {
        Some(p) => Config::load(p),
        None => Config::from_env(),
    }
    .map_err(|e| e.to_string())?;
    ferrohsm_pkcs11::wiring::build_router(&config).map_err(|e| e.to_string())
}

fn run(cli: Cli) -> Result<(), String> {
    if cli.pin_stdin {
        pin::from_stdin();
    }
    if let Some(path) = &cli.pin_file {
        pin::from_file(path)?;
    }
    if let Command::Audit {
        command: AuditCommand::Verify { path },
    } = &cli.command
    {
        return audit_verify(path);
    }
    if let Command::Audit {
        command:
            AuditCommand::Show {
                home,
                daemon,
                tenant,
                key,
                since,
                json,
            },
    } = &cli.command
    {
        return tenant::audit_show(
            cli.conf.as_deref(),
            home.as_deref(),
            daemon,
            tenant,
            key.as_deref(),
            since.as_deref(),
            *json,
        );
    }
    if let Command::Check {
        trace,
        target,
        from,
        json,
    } = &cli.command
    {
        return match check::run(trace, target, from, *json)? {
            true => Ok(()),
            false => Err(format!(
                "some calls would fail on {target} (listed above); fix them, or rehearse with \
                 `personality = \"{target}\"` on a slot"
            )),
        };
    }
    if let Command::Personalities { name } = &cli.command {
        return personalities(name.as_deref());
    }
    if let Command::ImportSofthsm(args) = cli.command {
        return import_softhsm::import(cli.conf.as_deref(), args);
    }
    if let Command::Tenant { command } = cli.command {
        return tenant::run(command);
    }
    if let Command::Serve(args) = &cli.command {
        return serve::serve(cli.conf.as_deref(), args);
    }
    if let Command::Tls { command } = &cli.command {
        return match command {
            TlsCommand::InitCa {
                out,
                allow_shared_dir,
            } => tls::init_ca(out, *allow_shared_dir),
            TlsCommand::Issue {
                ca,
                name,
                server,
                out,
                days,
                allow_shared_dir,
            } => tls::issue(ca, name, server.as_deref(), out, *days, *allow_shared_dir),
        };
    }
    match cli.command {
        Command::Cluster { command } => {
            return match command {
                ClusterCommand::Init { name, etcd, home } => {
                    cluster::init(&domain::home(home)?, &etcd, &name)
                }
                ClusterCommand::Status { name, etcd, json } => cluster::status(&etcd, &name, json),
            };
        }
        Command::Domain {
            command: DomainCommand::Join { quorum, home },
        } => {
            return domain::join(&domain::home(home)?, &quorum);
        }
        Command::Domain {
            command:
                DomainCommand::Init {
                    holders,
                    threshold,
                    out,
                    world_readable,
                    allow_shared_dir,
                    home,
                },
        } => {
            let opts = domain::out_options(world_readable, allow_shared_dir).no_replace();
            let out = OutputFile::new(out, opts);
            return domain::init(&domain::home(home)?, &holders, threshold, &out);
        }
        Command::Backup {
            command:
                BackupCommand::Create {
                    out,
                    allow_shared_dir,
                    home,
                },
        } => {
            let out = OutputFile::new(out, domain::out_options(false, allow_shared_dir));
            return domain::create(&domain::home(home)?, &out);
        }
        Command::Backup {
            command:
                BackupCommand::Restore {
                    input,
                    quorum,
                    home,
                },
        } => {
            return domain::restore(&domain::home(home)?, &input, &quorum);
        }
        _ => {}
    }
    diag::install(None);
    let router = open(cli.conf.as_deref())?;
    match cli.command {
        Command::Slots { json } => slots(&router, json),
        Command::InitToken {
            slot,
            label,
            so_pin,
            pin,
            force,
        } => init_token(&router, slot, &label, so_pin, pin, force),
        Command::InitPin { admin } => so_sets_user_pin(&router, admin, "set"),
        Command::Unlock { admin } => so_sets_user_pin(&router, admin, "unlocked"),
        Command::SetPin {
            slot,
            token,
            so,
            old_pin,
            new_pin,
        } => set_pin(&router, slot, token.as_deref(), so, old_pin, new_pin),
        Command::Objects {
            slot,
            token,
            login,
            pin,
            json,
        } => objects(
            &router,
            slot,
            token.as_deref(),
            login || pin.is_some(),
            pin,
            json,
        ),
        Command::Migrate {
            from,
            to,
            label,
            from_pin,
            to_pin,
            allow_loss,
        } => {
            let from_pin = pin::obtain(from_pin, "FERROHSM_FROM_PIN", "Source user PIN", false)?;
            let to_pin = pin::obtain(to_pin, "FERROHSM_TO_PIN", "Destination user PIN", false)?;
            migrate::migrate(
                &router,
                SlotId(from),
                SlotId(to),
                label.as_deref(),
                from_pin.as_bytes(),
                to_pin.as_bytes(),
                allow_loss,
            )
        }
        Command::Byok { command } => byok_command(&router, command),
        Command::Audit { .. }
        | Command::Check { .. }
        | Command::Personalities { .. }
        | Command::ImportSofthsm(_)
        | Command::Serve(_)
        | Command::Tenant { .. }
        | Command::Cluster { .. }
        | Command::Tls { .. }
        | Command::Domain { .. }
        | Command::Backup { .. }
        | Command::Trace { .. } => Ok(()),
    }
}

/// `ferrohsm personalities [NAME]`.
fn personalities(name: Option<&str>) -> Result<(), String> {
    use bridge::personality::Profile;
    let Some(name) = name else {
        for p in Profile::all() {
            println!("{:<16} {}", p.name, p.title);
        }
        return Ok(());
    };
    let p = Profile::named(name).map_err(|e| e.to_string())?;
    println!("{} — {}\n\n{}\n", p.name, p.title, p.about.trim());
    if let Some(m) = &p.mechanisms {
        let names: Vec<String> = m
            .keys()
            .map(|t| {
                bridge::names::mechanism_name(*t).map_or_else(|| format!("{t:#x}"), str::to_owned)
            })
            .collect();
        println!("mechanisms ({}): {}\n", names.len(), names.join(" "));
    } else {
        println!("mechanisms: every one FerroHSM implements\n");
    }
    if !p.sources.is_empty() {
        println!("sources:");
        for (topic, url) in &p.sources {
            println!("  {topic}: {url}");
        }
    }
    if !p.undocumented.is_empty() {
        println!("not documented by the vendor (FerroHSM keeps its own behaviour):");
        for u in &p.undocumented {
            println!("  - {u}");
        }
    }
    Ok(())
}

fn byok_command(router: &Router, command: ByokCommand) -> Result<(), String> {
    let open = |token: &str, pin: Option<String>| -> Result<byok::Token<'_>, String> {
        let slot = find_slot(router, None, Some(token), true)?;
        let pin = pin::obtain(pin, "FERROHSM_PIN", "User PIN", false)?;
        byok::Token::open(router, slot, pin.as_bytes())
    };
    match command {
        ByokCommand::CreateKek {
            token,
            label,
            size,
            out,
            world_readable,
            allow_shared_dir,
            pin,
        } => {
            if ![2048, 3072, 4096].contains(&size) {
                return Err(format!("--size {size}: use 2048, 3072 or 4096"));
            }
            // Checked before the key is generated, so a refused --out leaves no key behind.
            let out = OutputFile::new(out, domain::out_options(world_readable, allow_shared_dir));
            out.check().map_err(|e| e.to_string())?;
            byok::create_kek(&open(&token, pin)?, &label, size, &out)
        }
        ByokCommand::Import {
            token,
            kek,
            file,
            label,
            key_type,
            usage,
            pin,
        } => {
            let kind = byok::parse_key_type(&key_type)?;
            byok::import(&open(&token, pin)?, &kek, &file, &label, kind, &usage)
        }
        ByokCommand::Export {
            token,
            key,
            kek_pem,
            kid,
            out,
            allow_shared_dir,
            pin,
        } => {
            let out = OutputFile::new(out, domain::out_options(false, allow_shared_dir));
            out.check().map_err(|e| e.to_string())?;
            byok::export(&open(&token, pin)?, &key, &kek_pem, kid.as_deref(), &out)
        }
    }
}

fn audit_verify(path: &std::path::Path) -> Result<(), String> {
    match bridge::audit::verify(path) {
        Ok(n) => {
            println!("{}: {n} entries, chain intact", path.display());
            Ok(())
        }
        Err((0, why)) => Err(format!("{}: {why}", path.display())),
        Err((line, why)) => Err(format!("{}: line {line}: {why}", path.display())),
    }
}

fn slots(r: &Router, json: bool) -> Result<(), String> {
    let list = r
        .slot_list(false)
        .map_err(|e| explain("listing slots", &e))?;
    let mut rows = Vec::new();
    for slot in list {
        let info = r
            .slot_info(slot)
            .map_err(|e| explain("reading slot info", &e))?;
        let token = match r.token_info(slot) {
            Ok(t) if t.flags & CKF_TOKEN_INITIALIZED != 0 => serde_json::json!({
                "initialized": true,
                "label": t.label.trim_end(),
                "serial": t.serial_number.trim_end(),
                "manufacturer": t.manufacturer.trim_end(),
                "model": t.model.trim_end(),
                "flags": token_flag_names(t.flags),
                "uri": token_uri(&t),
            }),
            Ok(_) => serde_json::json!({ "initialized": false }),
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        };
        rows.push(serde_json::json!({
            "slot": slot.0,
            "description": info.description.trim_end(),
            "token": token,
        }));
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    let text = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    for row in &rows {
        println!("Slot {}: {}", row["slot"], text(row, "description"));
        let t = &row["token"];
        if t["initialized"] == true {
            println!(
                "  token:   {} (serial {})",
                text(t, "label"),
                text(t, "serial")
            );
            println!(
                "  model:   {} / {}",
                text(t, "manufacturer"),
                text(t, "model")
            );
            println!("  flags:   {}", token_flags(t));
            println!("  uri:     {}", text(t, "uri"));
        } else if let Some(e) = t["error"].as_str() {
            println!("  token:   unusable: {e}");
        } else {
            println!("  token:   uninitialized");
        }
    }
    // Slots that could not be listed (a daemon that does not answer) are not silently left
    // out: the listing fails, saying why.
    let missed = diag::take();
    if !missed.is_empty() {
        return Err(format!(
            "some slots could not be listed: {}",
            missed.join("; ")
        ));
    }
    Ok(())
}

/// RFC 7512 path attribute value: everything but unreserved characters percent-encoded.
fn uri_value(v: &[u8]) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::percent_encode(v, KEEP).to_string()
}

/// The token's `pkcs11:` URI (RFC 7512): token, manufacturer, serial and model.
fn token_uri(t: &bridge::TokenInfo) -> String {
    format!(
        "pkcs11:token={};manufacturer={};serial={};model={}",
        uri_value(t.label.trim_end().as_bytes()),
        uri_value(t.manufacturer.trim_end().as_bytes()),
        uri_value(t.serial_number.trim_end().as_bytes()),
        uri_value(t.model.trim_end().as_bytes()),
    )
}

fn token_flag_names(f: CK_FLAGS) -> Vec<&'static str> {
    let names = [
        (CKF_TOKEN_INITIALIZED, "initialized"),
        (CKF_USER_PIN_INITIALIZED, "user-pin-set"),
        (CKF_LOGIN_REQUIRED, "login-required"),
        (CKF_USER_PIN_COUNT_LOW, "user-pin-count-low"),
        (CKF_USER_PIN_FINAL_TRY, "user-pin-final-try"),
        (CKF_USER_PIN_LOCKED, "user-pin-locked"),
        (CKF_SO_PIN_COUNT_LOW, "so-pin-count-low"),
        (CKF_SO_PIN_FINAL_TRY, "so-pin-final-try"),
        (CKF_SO_PIN_LOCKED, "so-pin-locked"),
    ];
    names
        .iter()
        .filter(|(b, _)| f & b != 0)
        .map(|(_, n)| *n)
        .collect()
}

fn token_flags(t: &serde_json::Value) -> String {
    t["flags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(serde_json::Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn find_slot(
    r: &Router,
    slot: Option<CK_SLOT_ID>,
    token: Option<&str>,
    initialized: bool,
) -> Result<SlotId, String> {
    if let Some(s) = slot {
        return Ok(SlotId(s));
    }
    let list = r
        .slot_list(true)
        .map_err(|e| explain("listing slots", &e))?;
    for s in list {
        let Ok(t) = r.token_info(s) else { continue };
        let is_init = t.flags & CKF_TOKEN_INITIALIZED != 0;
        match token {
            Some(label) if is_init && t.label == label => return Ok(s),
            Some(_) => {}
            None if is_init == initialized => return Ok(s),
            None => {}
        }
    }
    Err(match token {
        Some(l) => format!("no token labelled {l:?} (see `ferrohsm slots`)"),
        None if initialized => "no initialized token (run `ferrohsm init-token`)".into(),
        None => "no slot with an uninitialized token (give --slot to re-initialize one)".into(),
    })
}

fn init_token(
    r: &Router,
    slot: Option<CK_SLOT_ID>,
    label: &str,
    so_pin: Option<String>,
    pin: Option<String>,
    force: bool,
) -> Result<(), String> {
    // Everything is checked before anything is changed.
    if label.len() > 32 {
        return Err(format!(
            "the label is {} bytes; a token label holds at most 32",
            label.len()
        ));
    }
    let slot = find_slot(r, slot, None, false)?;
    let info = r
        .token_info(slot)
        .map_err(|e| explain(&format!("reading the token of slot {}", slot.0), &e))?;
    if info.flags & CKF_TOKEN_INITIALIZED != 0 && !force {
        return Err(format!(
            "slot {} holds token {:?}, initialized: re-initializing wipes its keys and PINs; add --force to do it (nothing was changed)",
            slot.0,
            info.label.trim_end()
        ));
    }
    let so_pin = pin::obtain(so_pin, "FERROHSM_SO_PIN", "SO PIN", true)?;
    let user_pin = match pin {
        Some(p) => Some(pin::Pin::from(p)),
        None => pin::from_env("FERROHSM_PIN"),
    };
    check_pin_length(&info, "SO PIN", so_pin.as_bytes())?;
    if let Some(p) = &user_pin {
        check_pin_length(&info, "user PIN", p.as_bytes())?;
    }
    r.init_token(slot, so_pin.as_bytes(), &padded_label(label))
        .map_err(|e| explain("initializing the token", &e))?;
    if let Some(user_pin) = user_pin {
        as_so(r, slot, so_pin.as_bytes(), |s| {
            r.init_pin(s, user_pin.as_bytes())
        })
        .map_err(|e| explain("setting the user PIN", &e))?;
    }
    println!("Token {label:?} initialized in slot {}.", slot.0);
    Ok(())
}

/// Refuses a PIN the token would refuse, before anything is changed.
fn check_pin_length(info: &bridge::TokenInfo, what: &str, pin: &[u8]) -> Result<(), String> {
    let len = u64::try_from(pin.len()).unwrap_or(u64::MAX);
    if len < info.min_pin_len || len > info.max_pin_len {
        return Err(format!(
            "the {what} is {len} characters; this token takes {} to {} (nothing was changed) (CKR_PIN_LEN_RANGE)",
            info.min_pin_len, info.max_pin_len
        ));
    }
    Ok(())
}

/// A token label as `C_InitToken` takes it: 32 bytes, space-padded (a longer one is cut).
fn padded_label(label: &str) -> [u8; 32] {
    let mut padded = [b' '; 32];
    for (d, s) in padded.iter_mut().zip(label.bytes()) {
        *d = s;
    }
    padded
}

/// Runs `f` in a read-write session logged in as the SO.
fn as_so(
    r: &(impl bridge::Backend + ?Sized),
    slot: SlotId,
    so_pin: &[u8],
    f: impl FnOnce(SessionHandle) -> bridge::Result<()>,
) -> bridge::Result<()> {
    let s = r.open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)?;
    let result = r.login(s, CKU_SO, Some(so_pin)).and_then(|()| f(s));
    let _ = r.close_session(s);
    result
}

/// `init-pin` and `unlock`: the SO sets the user PIN.
fn so_sets_user_pin(r: &Router, a: SoPinArgs, done: &str) -> Result<(), String> {
    let slot = find_slot(r, a.slot, a.token.as_deref(), true)?;
    let info = r
        .token_info(slot)
        .map_err(|e| explain(&format!("reading the token of slot {}", slot.0), &e))?;
    let so_pin = pin::obtain(a.so_pin, "FERROHSM_SO_PIN", "SO PIN", false)?;
    let user_pin = pin::obtain(a.pin, "FERROHSM_PIN", "new user PIN", true)?;
    check_pin_length(&info, "user PIN", user_pin.as_bytes())?;
    as_so(r, slot, so_pin.as_bytes(), |s| {
        r.init_pin(s, user_pin.as_bytes())
    })
    .map_err(|e| explain("setting the user PIN as the SO", &e))?;
    println!(
        "The user PIN of token {:?} (slot {}) is {done}.",
        info.label.trim_end(),
        slot.0
    );
    Ok(())
}

/// `set-pin`: C_SetPIN in a session of the user (or, with `so`, logged in as the SO).
fn set_pin(
    r: &Router,
    slot: Option<CK_SLOT_ID>,
    token: Option<&str>,
    so: bool,
    old_pin: Option<String>,
    new_pin: Option<String>,
) -> Result<(), String> {
    let slot = find_slot(r, slot, token, true)?;
    let info = r
        .token_info(slot)
        .map_err(|e| explain(&format!("reading the token of slot {}", slot.0), &e))?;
    let (var, what) = if so {
        ("FERROHSM_SO_PIN", "current SO PIN")
    } else {
        ("FERROHSM_PIN", "current user PIN")
    };
    let old = pin::obtain(old_pin, var, what, false)?;
    let new = pin::obtain(new_pin, "FERROHSM_NEW_PIN", "new PIN", true)?;
    check_pin_length(&info, "new PIN", new.as_bytes())?;
    let s = r
        .open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .map_err(|e| explain("opening a session", &e))?;
    let result = (if so {
        r.login(s, CKU_SO, Some(old.as_bytes()))
    } else {
        Ok(())
    })
    .and_then(|()| r.set_pin(s, old.as_bytes(), new.as_bytes()))
    .map_err(|e| explain("changing the PIN", &e));
    let _ = r.close_session(s);
    result?;
    println!(
        "The {} PIN of token {:?} (slot {}) is changed.",
        if so { "SO" } else { "user" },
        info.label.trim_end(),
        slot.0
    );
    Ok(())
}

fn objects(
    r: &Router,
    slot: Option<CK_SLOT_ID>,
    token: Option<&str>,
    login: bool,
    pin: Option<String>,
    json: bool,
) -> Result<(), String> {
    let slot = find_slot(r, slot, token, true)?;
    let info = r
        .token_info(slot)
        .map_err(|e| explain(&format!("reading the token of slot {}", slot.0), &e))?;
    let s = r
        .open_session(slot, CKF_SERIAL_SESSION)
        .map_err(|e| explain("opening a session", &e))?;
    let result = (|| {
        if login {
            let pin = pin::obtain(pin, "FERROHSM_PIN", "User PIN", false)?;
            r.login(s, CKU_USER, Some(pin.as_bytes()))
                .map_err(|e| explain("logging in", &e))?;
        }
        r.find_objects_init(s, &Template::new())
            .map_err(|e| explain("searching", &e))?;
        let handles = r
            .find_objects(s, usize::MAX)
            .map_err(|e| explain("searching", &e));
        let _ = r.find_objects_final(s);
        let handles = handles?;
        let token_uri = token_uri(&info);
        let rows = handles
            .iter()
            .map(|h| describe(r, s, *h, &token_uri))
            .collect::<Result<Vec<_>, _>>()?;
        if json {
            let doc = serde_json::json!({
                "slot": slot.0,
                "token": info.label.trim_end(),
                "uri": token_uri,
                "logged_in": login,
                "objects": rows,
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?
            );
            return Ok(());
        }
        println!(
            "{:<10} {:<12} {:<14} {:<24} {:<18} flags",
            "handle", "class", "type", "label", "id"
        );
        let text = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
        for row in &rows {
            let flags: Vec<&str> = row["flags"]
                .as_array()
                .map(|a| a.iter().filter_map(serde_json::Value::as_str).collect())
                .unwrap_or_default();
            println!(
                "{:<10} {:<12} {:<14} {:<24} {:<18} {}",
                row["handle"],
                text(row, "class"),
                text(row, "type"),
                text(row, "label"),
                text(row, "id"),
                flags.join(",")
            );
            println!("           {}", text(row, "uri"));
        }
        println!(
            "{} object(s){}",
            handles.len(),
            if login {
                ""
            } else {
                " (public only; --login for private ones)"
            }
        );
        Ok(())
    })();
    let _ = r.close_session(s);
    result
}

/// One object's description (never a value) and its `pkcs11:` URI under `token_uri`.
fn describe(
    r: &Router,
    s: SessionHandle,
    h: ObjectHandle,
    token_uri: &str,
) -> Result<serde_json::Value, String> {
    // Never key values: only descriptive attributes are asked for.
    let types = [
        CKA_CLASS,
        CKA_KEY_TYPE,
        CKA_LABEL,
        CKA_ID,
        CKA_TOKEN,
        CKA_PRIVATE,
        CKA_SENSITIVE,
        CKA_EXTRACTABLE,
        CKA_CERTIFICATE_TYPE,
    ];
    let answers = r
        .get_attribute_value(s, h, &types)
        .map_err(|e| explain("reading attributes", &e))?;
    let get = |i: usize| match answers.get(i) {
        Some(AttrAnswer::Value(AttrValue::Bytes(b))) => Some(b.clone()),
        _ => None,
    };
    let ulong = |i: usize| {
        get(i)
            .and_then(|b| <[u8; ULONG_SIZE]>::try_from(b.as_slice()).ok())
            .map(CK_ULONG::from_ne_bytes)
    };
    let flag = |i: usize| get(i).is_some_and(|b| b.first().is_some_and(|x| *x != 0));
    let class = ulong(0).map_or("?", class_name);
    let kind = match ulong(0) {
        Some(CKO_CERTIFICATE) => ulong(8).map_or("?".into(), |c| {
            if c == CKC_X_509 {
                "X.509".into()
            } else {
                format!("0x{c:x}")
            }
        }),
        Some(CKO_DATA) => "-".into(),
        _ => ulong(1).map_or("-".into(), key_type_name),
    };
    let label_bytes = get(2).unwrap_or_default();
    let id_bytes = get(3).unwrap_or_default();
    let mut flags = Vec::new();
    for (i, name) in [
        (4, "token"),
        (5, "private"),
        (6, "sensitive"),
        (7, "extractable"),
    ] {
        if flag(i) {
            flags.push(name);
        }
    }
    // RFC 7512's type names.
    let uri_type = match ulong(0) {
        Some(CKO_CERTIFICATE) => Some("cert"),
        Some(CKO_DATA) => Some("data"),
        Some(CKO_PUBLIC_KEY) => Some("public"),
        Some(CKO_PRIVATE_KEY) => Some("private"),
        Some(CKO_SECRET_KEY) => Some("secret-key"),
        _ => None,
    };
    let mut uri = token_uri.to_owned();
    if !label_bytes.is_empty() {
        uri.push_str(&format!(";object={}", uri_value(&label_bytes)));
    }
    if !id_bytes.is_empty() {
        let pct: String = id_bytes.iter().map(|b| format!("%{b:02x}")).collect();
        uri.push_str(&format!(";id={pct}"));
    }
    if let Some(t) = uri_type {
        uri.push_str(&format!(";type={t}"));
    }
    Ok(serde_json::json!({
        "handle": h.0,
        "class": class,
        "type": kind,
        "label": String::from_utf8_lossy(&label_bytes),
        "id": base16ct::lower::encode_string(&id_bytes),
        "flags": flags,
        "uri": uri,
    }))
}

/// The report's name of an object (never a value): its kind, its key type if given, its label
/// (cut short) and its id (`?` when unknown).
fn object_name(
    class: CK_OBJECT_CLASS,
    key_type: Option<CK_KEY_TYPE>,
    label: Option<&[u8]>,
    id: Option<&[u8]>,
) -> String {
    let kind = match class {
        CKO_SECRET_KEY => "secret key",
        CKO_PRIVATE_KEY => "private key",
        CKO_PUBLIC_KEY => "public key",
        CKO_CERTIFICATE => "certificate",
        CKO_DATA => "data object",
        _ => "object",
    };
    let kind = match key_type {
        Some(t) if matches!(class, CKO_SECRET_KEY | CKO_PRIVATE_KEY | CKO_PUBLIC_KEY) => {
            format!("{kind} {}", key_type_name(t))
        }
        _ => kind.to_owned(),
    };
    let label: String = label
        .map(|b| String::from_utf8_lossy(b).chars().take(64).collect())
        .unwrap_or_default();
    let id: String = id
        .map(|b| base16ct::lower::encode_string(b.get(..32).unwrap_or(b)))
        .unwrap_or_else(|| "?".to_owned());
    format!("{kind} {label:?} (id {id})")
}

fn class_name(c: CK_OBJECT_CLASS) -> &'static str {
    match c {
        CKO_DATA => "data",
        CKO_CERTIFICATE => "certificate",
        CKO_PUBLIC_KEY => "public-key",
        CKO_PRIVATE_KEY => "private-key",
        CKO_SECRET_KEY => "secret-key",
        _ => "other",
    }
}

fn key_type_name(k: CK_KEY_TYPE) -> String {
    match k {
        CKK_RSA => "RSA".into(),
        CKK_EC => "EC".into(),
        CKK_EC_EDWARDS => "EdDSA".into(),
        CKK_AES => "AES".into(),
        CKK_CHACHA20 => "ChaCha20".into(),
        CKK_DES2 => "DES2".into(),
        CKK_DES3 => "DES3".into(),
        CKK_GENERIC_SECRET => "generic".into(),
        CKK_SHA_1_HMAC | CKK_SHA224_HMAC | CKK_SHA256_HMAC | CKK_SHA384_HMAC | CKK_SHA512_HMAC
        | CKK_SHA512_224_HMAC | CKK_SHA512_256_HMAC | CKK_SHA3_224_HMAC | CKK_SHA3_256_HMAC
        | CKK_SHA3_384_HMAC | CKK_SHA3_512_HMAC => "HMAC".into(),
        CKK_MD5_HMAC => "HMAC-MD5".into(),
        CKK_HKDF => "HKDF".into(),
        other => format!("0x{other:x}"),
    }
}
