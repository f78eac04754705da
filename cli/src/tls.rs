//! `ferrohsm tls`: a certificate authority for the daemon's network listener, for people with
//! no PKI at hand (rcgen over aws-lc-rs; ECDSA P-256).
//!
//! - `init-ca --out DIR`: `DIR/ca.pem` (the CA certificate: give it to the daemons as
//!   `--client-ca` and to the module as `ca`) and `DIR/ca.key` (mode 0600; keep it offline).
//! - `issue --ca DIR --name NAME [--server HOST,IP...] --out DIR`: `DIR/NAME.pem` and
//!   `DIR/NAME.key` (0600). With `--server`, a server certificate for those names (a daemon's
//!   `--tls-cert`; the module checks the endpoint's host name or IP against them); without,
//!   a client certificate whose identity is NAME (its common name and a DNS SAN), what the
//!   daemon logs, limits and authorizes by.
//!
//! Every file goes through `bridge::output` (no symbolic links, no shared directories, fsync,
//! rename); nothing is replaced: an existing key or certificate is an error.

use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use bridge::output::{OutputFile, WriteOptions};
use bridge::remote::tls::{MAX_IDENTITY, valid_identity};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use x509_cert::der::{Decode as _, Encode as _};

/// Validity of a CA made by `init-ca`.
const CA_DAYS: i64 = 3650;

fn out_options(public: bool, allow_shared_dir: bool) -> WriteOptions {
    WriteOptions::private()
        .world_readable(public)
        .allow_shared_dir(allow_shared_dir)
        .no_replace()
        .shared_dir_remedy(
            "use a directory that only you can write, or pass --allow-shared-dir if you trust \
             everyone who can write there",
        )
}

/// Makes `dir` (0700) if it does not exist.
fn out_dir(dir: &Path) -> Result<(), String> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("{}: cannot create the directory: {e}", dir.display()))
}

/// The certificate (public, 0644) and its key (0600), both checked before either is written.
fn write_pair(
    cert: &Path,
    cert_pem: &str,
    key: &Path,
    key_pem: &str,
    allow_shared_dir: bool,
) -> Result<(), String> {
    let cert = OutputFile::new(cert, out_options(true, allow_shared_dir));
    let key = OutputFile::new(key, out_options(false, allow_shared_dir));
    let exists = |f: &OutputFile| {
        format!(
            "{} already exists; nothing written (choose another --out or --name, or remove the old files)",
            f.display()
        )
    };
    for f in [&cert, &key] {
        if f.path().exists() || f.path().is_symlink() {
            return Err(exists(f));
        }
        f.check().map_err(|e| e.to_string())?;
    }
    key.write(key_pem.as_bytes()).map_err(|e| e.to_string())?;
    cert.write(cert_pem.as_bytes()).map_err(|e| e.to_string())?;
    Ok(())
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // An hour back, for clocks a little behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

fn rcgen_error(what: &str) -> impl Fn(rcgen::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// `ferrohsm tls init-ca`.
pub(crate) fn init_ca(out: &Path, allow_shared_dir: bool) -> Result<(), String> {
    out_dir(out)?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(rcgen_error("generating the CA key"))?;
    let mut params = CertificateParams::default();
    // A name of its own, so that two CAs made here are told apart.
    let id = params.key_identifier(&key);
    let tag = base16ct::lower::encode_string(id.get(..4).unwrap_or(&id));
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        DnValue::Utf8String(format!("FerroHSM CA {tag}")),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, CA_DAYS);
    let cert = params
        .self_signed(&key)
        .map_err(rcgen_error("making the CA certificate"))?;
    let key_pem = zeroize::Zeroizing::new(key.serialize_pem());
    write_pair(
        &out.join("ca.pem"),
        &cert.pem(),
        &out.join("ca.key"),
        &key_pem,
        allow_shared_dir,
    )?;
    println!(
        "wrote {} (give it to the daemons as --client-ca and to the module as `ca`) and {} (keep it private)",
        out.join("ca.pem").display(),
        out.join("ca.key").display()
    );
    Ok(())
}

/// The issuer in `ca_dir`: its key, and its name as its certificate spells it.
fn load_ca(ca_dir: &Path) -> Result<(Issuer<'static, KeyPair>, Vec<u8>), String> {
    let cert_path = ca_dir.join("ca.pem");
    let key_path = ca_dir.join("ca.key");
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).map_err(|e| {
            format!(
                "{}: cannot read: {e} (make a CA with `ferrohsm tls init-ca --out {}`)",
                p.display(),
                ca_dir.display()
            )
        })
    };
    let cert_pem = read(&cert_path)?;
    let key_pem = zeroize::Zeroizing::new(read(&key_path)?);
    let key = KeyPair::from_pem(&key_pem)
        .map_err(|_| format!("{}: not a private key in PEM", key_path.display()))?;
    let (label, der) = pem_rfc7468::decode_vec(cert_pem.as_bytes())
        .map_err(|_| format!("{}: not a certificate in PEM", cert_path.display()))?;
    if label != "CERTIFICATE" {
        return Err(format!("{}: not a certificate in PEM", cert_path.display()));
    }
    let cert = x509_cert::Certificate::from_der(&der)
        .map_err(|_| format!("{}: a certificate that does not parse", cert_path.display()))?;
    let subject = cert
        .tbs_certificate
        .subject
        .to_der()
        .map_err(|e| format!("{}: {e}", cert_path.display()))?;
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| format!("{}: {e}", cert_path.display()))?;
    if spki != rcgen::PublicKeyData::subject_public_key_info(&key) {
        return Err(format!(
            "{} and {} do not belong together (the key is not the certificate's)",
            cert_path.display(),
            key_path.display()
        ));
    }
    // The CA's name, rebuilt: `init-ca` writes one UTF-8 common name. The certificate issued
    // is checked to name its issuer exactly as the CA certificate names itself.
    let cn = bridge::remote::tls::common_name(&der).ok_or_else(|| {
        format!(
            "{}: a CA not made by `ferrohsm tls init-ca` (issue with your own PKI instead)",
            cert_path.display()
        )
    })?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, DnValue::Utf8String(cn));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok((Issuer::new(params, key), subject))
}

/// `ferrohsm tls issue`.
pub(crate) fn issue(
    ca_dir: &Path,
    name: &str,
    server: Option<&[String]>,
    out: &Path,
    days: u32,
    allow_shared_dir: bool,
) -> Result<(), String> {
    if !valid_identity(name) {
        return Err(format!(
            "--name {name:?}: use 1 to {MAX_IDENTITY} letters, digits, '.', '_' or '-', starting with a letter or digit"
        ));
    }
    let (issuer, ca_subject) = load_ca(ca_dir)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, DnValue::Utf8String(name.to_owned()));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    match server {
        Some(names) => {
            if names.is_empty() {
                return Err("--server needs the daemon's host names or IP addresses".into());
            }
            let mut sans = Vec::new();
            for n in names {
                let n = n.trim();
                sans.push(match n.parse::<IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => {
                        SanType::DnsName(n.to_owned().try_into().map_err(|_| {
                            format!("--server {n:?}: not a host name or IP address")
                        })?)
                    }
                });
            }
            params.subject_alt_names = sans;
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        }
        None => {
            params.subject_alt_names =
                vec![SanType::DnsName(name.to_owned().try_into().map_err(
                    |_| format!("--name {name:?}: not usable as a name"),
                )?)];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
    }
    validity(&mut params, i64::from(days));
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(rcgen_error("generating the key"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(rcgen_error("issuing the certificate"))?;
    let issued = x509_cert::Certificate::from_der(cert.der())
        .and_then(|c| c.tbs_certificate.issuer.to_der())
        .map_err(|e| format!("the certificate issued does not parse: {e}"))?;
    if issued != ca_subject {
        return Err(format!(
            "{}: a CA not made by `ferrohsm tls init-ca` (its name cannot be reproduced; issue with your own PKI instead)",
            ca_dir.join("ca.pem").display()
        ));
    }
    out_dir(out)?;
    let key_pem = zeroize::Zeroizing::new(key.serialize_pem());
    let cert_path = out.join(format!("{name}.pem"));
    let key_path = out.join(format!("{name}.key"));
    write_pair(
        &cert_path,
        &cert.pem(),
        &key_path,
        &key_pem,
        allow_shared_dir,
    )?;
    match server {
        Some(names) => println!(
            "wrote {} and {}: a server certificate for {} (the daemon's --tls-cert and --tls-key)",
            cert_path.display(),
            key_path.display(),
            names.join(", ")
        ),
        None => println!(
            "wrote {} and {}: a client certificate for the identity {name} (the module's `cert` and `key`)",
            cert_path.display(),
            key_path.display()
        ),
    }
    Ok(())
}
