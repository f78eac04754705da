//! PINs for the command line: a flag, an environment variable, a line of `--pin-stdin` or
//! `--pin-file`, or a prompt on a terminal (never echoed). PINs are zeroized when dropped and
//! never printed.

use std::io::{BufRead, IsTerminal};
use std::sync::Mutex;

use zeroize::Zeroizing;

/// A PIN.
pub(crate) struct Pin(Zeroizing<String>);

impl Pin {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl From<String> for Pin {
    fn from(s: String) -> Self {
        Self(Zeroizing::new(s))
    }
}

/// The PIN in `var`, if set and non-empty.
pub(crate) fn from_env(var: &str) -> Option<Pin> {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .map(Pin::from)
}

/// Where `--pin-stdin` / `--pin-file` PINs come from: one per line, in the order the command
/// asks for them.
static LINES: Mutex<Option<(String, Box<dyn BufRead + Send>)>> = Mutex::new(None);

/// PINs are read from standard input, one per line.
pub(crate) fn from_stdin() {
    *LINES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((
        "standard input".into(),
        Box::new(std::io::BufReader::new(std::io::stdin())),
    ));
}

/// PINs are read from `path`, one per line; refused if others may read it.
pub(crate) fn from_file(path: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    let f = std::fs::File::open(path).map_err(|e| format!("--pin-file {}: {e}", path.display()))?;
    let mode = f
        .metadata()
        .map_err(|e| format!("--pin-file {}: {e}", path.display()))?
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "--pin-file {}: others may read it (mode {:o}): chmod 600 it",
            path.display(),
            mode & 0o777
        ));
    }
    *LINES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((
        path.display().to_string(),
        Box::new(std::io::BufReader::new(f)),
    ));
    Ok(())
}

/// The next line of `--pin-stdin` / `--pin-file`, if one of them was given.
fn next_line(what: &str) -> Result<Option<Pin>, String> {
    let mut lines = LINES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some((name, source)) = lines.as_mut() else {
        return Ok(None);
    };
    let mut line = Zeroizing::new(String::new());
    let n = source
        .read_line(&mut line)
        .map_err(|e| format!("reading the {what} from {name}: {e}"))?;
    let pin = line.trim_end_matches(['\n', '\r']);
    if n == 0 || pin.is_empty() {
        return Err(format!(
            "no {what} on {name} (one PIN per line, in the order the command asks for them)"
        ));
    }
    Ok(Some(Pin::from(pin.to_owned())))
}

/// The PIN from the flag, else `var`, else the next line of `--pin-stdin` / `--pin-file`,
/// else a prompt (twice when `confirm`) on a terminal.
pub(crate) fn obtain(
    flag: Option<String>,
    var: &str,
    what: &str,
    confirm: bool,
) -> Result<Pin, String> {
    if let Some(p) = flag {
        return Ok(Pin::from(p));
    }
    if let Some(p) = from_env(var) {
        return Ok(p);
    }
    if let Some(p) = next_line(what)? {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        return Err(format!(
            "no {what}: give it with --pin-stdin (one per line), --pin-file, ${var} or a flag (no terminal to ask on)"
        ));
    }
    let first = Zeroizing::new(
        rpassword::prompt_password(format!("{what}: "))
            .map_err(|e| format!("reading the {what}: {e}"))?,
    );
    if confirm {
        let again = Zeroizing::new(
            rpassword::prompt_password(format!("{what} again: "))
                .map_err(|e| format!("reading the {what}: {e}"))?,
        );
        if *first != *again {
            return Err(format!("the two {what}s differ"));
        }
    }
    Ok(Pin::from(first.to_string()))
}
