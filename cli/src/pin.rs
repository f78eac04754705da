//! PINs for the command line: a flag, an environment variable, or a prompt on a terminal
//! (never echoed). PINs are zeroized when dropped and never printed.

use std::io::IsTerminal;

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

/// The PIN from the flag, else `var`, else a prompt (twice when `confirm`) on a terminal.
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
    if !std::io::stdin().is_terminal() {
        return Err(format!(
            "no {what}: give it with a flag or ${var} (no terminal to ask on)"
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
