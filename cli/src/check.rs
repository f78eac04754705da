//! `ferrohsm check --trace FILE --target NAME`: replays a recorded trace (`docs/trace.md`)
//! against a personality (`bridge/personalities/`) and reports, per call site, what the target
//! HSM would do differently, with a one-line fix and the page the rule comes from.
//!
//! The rules are the personality's own ([`bridge::personality::Profile`]): the firmware
//! enforces the same ones on a slot configured with that personality, so a call the report
//! names fails there with the code the report gives, and no other call does.
//!
//! Only calls that succeeded in the recording are judged (a call that failed already is the
//! application's, not the migration's). Differences that need configuration only — a PIN
//! format, a token label, an attribute default, an administration step — are warnings; the
//! command exits 1 when any call would fail, 0 otherwise.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::Path;

use bridge::names;
use bridge::personality::{Finding, KeyShape, PinForm, Profile, init_kind};
use cryptoki_sys::*;
use serde_json::{Value, json};

/// One line of the report: a finding at one call site, and how often it was met.
struct Item {
    function: String,
    mechanism: Option<String>,
    first_seq: u64,
    pid: u64,
    times: u64,
    finding: Finding,
}

/// What the replay remembers of one process of the trace.
#[derive(Default)]
struct Process {
    /// Key shapes by handle: from `key` fields and from the templates of created keys.
    keys: HashMap<u64, KeyShape>,
    /// Open sessions.
    sessions: u64,
    /// The mechanism of each session's active operation, by kind (`encrypt`, `sign` ...).
    active: HashMap<(u64, &'static str), CK_MECHANISM_TYPE>,
    /// Keys made minus destroyed (key handles; session keys until their session closes).
    key_handles: u64,
    /// Objects made, by handle: whether it counts as a key handle.
    token_objects: HashMap<u64, bool>,
    /// The session keys made on each session (they end with it).
    session_keys: HashMap<u64, Vec<u64>>,
}

impl Process {
    /// A session ends: its session keys go, and their key handles with them.
    fn close_session(&mut self, session: u64) {
        for h in self.session_keys.remove(&session).unwrap_or_default() {
            if self.token_objects.remove(&h) == Some(true) {
                self.key_handles = self.key_handles.saturating_sub(1);
            }
        }
        self.active.retain(|(s, _), _| *s != session);
    }
}

/// The operation kind a multi-part call continues.
fn update_kind(function: &str) -> Option<&'static str> {
    Some(match function {
        "C_EncryptUpdate" => "encrypt",
        "C_DecryptUpdate" => "decrypt",
        "C_SignUpdate" => "sign",
        "C_VerifyUpdate" => "verify",
        "C_DigestUpdate" => "digest",
        _ => return None,
    })
}

/// A `key` object of the trace as a personality judges it.
fn shape_of(v: &Value) -> KeyShape {
    KeyShape {
        key_type: v
            .get("key_type")
            .and_then(Value::as_str)
            .and_then(key_type_number),
        bits: v.get("bits").and_then(Value::as_u64),
        curve: v.get("curve").and_then(Value::as_str).map(str::to_owned),
    }
}

fn key_type_number(name: &str) -> Option<CK_KEY_TYPE> {
    const TYPES: &[(&str, CK_KEY_TYPE)] = &[
        ("CKK_RSA", CKK_RSA),
        ("CKK_EC", CKK_EC),
        ("CKK_EC_EDWARDS", CKK_EC_EDWARDS),
        ("CKK_EC_MONTGOMERY", CKK_EC_MONTGOMERY),
        ("CKK_AES", CKK_AES),
        ("CKK_DES3", CKK_DES3),
        ("CKK_DES2", CKK_DES2),
        ("CKK_GENERIC_SECRET", CKK_GENERIC_SECRET),
        ("CKK_SHA_1_HMAC", CKK_SHA_1_HMAC),
        ("CKK_SHA256_HMAC", CKK_SHA256_HMAC),
        ("CKK_CHACHA20", CKK_CHACHA20),
    ];
    TYPES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// The value a template of the trace gives `ty` (`CKA_TOKEN` ...), if it gives one.
fn template_value<'a>(template: Option<&'a Value>, ty: &str) -> Option<&'a Value> {
    template?
        .as_array()?
        .iter()
        .find(|a| a.get("type").and_then(Value::as_str) == Some(ty))
        .and_then(|a| a.get("value"))
}

/// The shape of the key a generation call of the trace asks for.
fn generated_shape(mech: CK_MECHANISM_TYPE, template: Option<&Value>) -> KeyShape {
    let number = |ty| template_value(template, ty).and_then(Value::as_u64);
    let curve = template_value(template, "CKA_EC_PARAMS")
        .and_then(Value::as_str)
        .map(str::to_owned);
    KeyShape::generated(
        mech,
        number("CKA_MODULUS_BITS"),
        number("CKA_VALUE_LEN"),
        curve,
    )
}

/// The replay: every finding, by call site.
struct Replay<'p> {
    target: &'p Profile,
    from: &'p Profile,
    processes: HashMap<u64, Process>,
    items: BTreeMap<(String, Option<String>, String), Item>,
    calls: u64,
}

impl Replay<'_> {
    fn note(&mut self, rec: &Value, function: &str, mech: Option<CK_MECHANISM_TYPE>, f: Finding) {
        let seq = rec.get("seq").and_then(Value::as_u64).unwrap_or(0);
        let pid = rec.get("pid").and_then(Value::as_u64).unwrap_or(0);
        let mechanism =
            mech.map(|m| names::mechanism_name(m).map_or_else(|| format!("{m:#x}"), str::to_owned));
        let key = (function.to_owned(), mechanism.clone(), f.what.clone());
        self.items
            .entry(key)
            .and_modify(|i| i.times += 1)
            .or_insert(Item {
                function: function.to_owned(),
                mechanism,
                first_seq: seq,
                pid,
                times: 1,
                finding: f,
            });
    }

    fn judged(
        &mut self,
        rec: &Value,
        function: &str,
        mech: Option<CK_MECHANISM_TYPE>,
        j: bridge::personality::Judged,
    ) {
        if let Err(f) = j {
            self.note(rec, function, mech, *f);
        }
    }

    fn record(&mut self, rec: &Value) {
        let kind = rec.get("kind").and_then(Value::as_str).unwrap_or("call");
        let pid = rec.get("pid").and_then(Value::as_u64).unwrap_or(0);
        if kind == "start" {
            self.processes.insert(pid, Process::default());
            return;
        }
        if kind != "call" {
            return;
        }
        self.calls += 1;
        let Some(function) = rec.get("fn").and_then(Value::as_str).map(str::to_owned) else {
            return;
        };
        if rec.get("rv").and_then(Value::as_str) != Some("CKR_OK") {
            return;
        }
        let target = self.target;
        let session = rec.get("session").and_then(Value::as_u64).unwrap_or(0);
        let mech = rec
            .get("mechanism")
            .and_then(|m| m.get("type"))
            .and_then(Value::as_str)
            .and_then(names::parse_mechanism);

        self.judged(rec, &function, None, target.judge_function(&function));
        if let Some(f) = target.admin_only(&function) {
            self.note(rec, &function, None, f);
        }

        match function.as_str() {
            "C_OpenSession" => {
                let flags = rec.get("flags").and_then(Value::as_u64);
                let rw = rec
                    .get("rw")
                    .and_then(Value::as_bool)
                    .or_else(|| flags.map(|f| f & CKF_RW_SESSION != 0));
                if let Some(rw) = rw {
                    self.judged(rec, &function, None, target.judge_open_session(rw));
                }
                let open = self.processes.entry(pid).or_default().sessions;
                self.judged(rec, &function, None, target.judge_session_count(open));
                self.processes.entry(pid).or_default().sessions += 1;
            }
            "C_CloseSession" => {
                let p = self.processes.entry(pid).or_default();
                p.sessions = p.sessions.saturating_sub(1);
                p.close_session(session);
            }
            "C_CloseAllSessions" => {
                let p = self.processes.entry(pid).or_default();
                p.sessions = 0;
                let open: Vec<u64> = p.session_keys.keys().copied().collect();
                for s in open {
                    p.close_session(s);
                }
                p.active.clear();
            }
            "C_Login" => {
                let user = rec.get("user").and_then(Value::as_str).unwrap_or("");
                let form = rec.get("pin_form").and_then(Value::as_str).unwrap_or("");
                if let Some(rule) = &target.pin {
                    if user != "CKU_SO"
                        && rule.form == PinForm::UserPassword
                        && form != "user:password"
                    {
                        self.note(
                            rec,
                            &function,
                            None,
                            Finding {
                                code: Some(bridge::Error::PinInvalid),
                                warning: true,
                                what: format!(
                                    "{} logs in with CU_NAME:PASSWORD; this PIN has no user name",
                                    target.title
                                ),
                                hint: "configure the application's PIN as the crypto user's \
                                       name, a colon and the password"
                                    .into(),
                                source: rule.source.clone(),
                            },
                        );
                    }
                }
            }
            "C_InitToken" => {
                let label = rec.get("label").and_then(Value::as_str).unwrap_or("");
                if let Some(max) = target.label_max {
                    if label.trim_end().len() > max {
                        self.note(
                            rec,
                            &function,
                            None,
                            Finding {
                                code: None,
                                warning: true,
                                what: format!(
                                    "{} labels are at most {max} characters",
                                    target.title
                                ),
                                hint: "use a shorter label".into(),
                                source: String::new(),
                            },
                        );
                    }
                }
            }
            "C_DestroyObject" => {
                let object = rec.get("object").and_then(Value::as_u64).unwrap_or(0);
                let p = self.processes.entry(pid).or_default();
                if p.token_objects.remove(&object) == Some(true) {
                    p.key_handles = p.key_handles.saturating_sub(1);
                }
                p.keys.remove(&object);
            }
            _ => {}
        }

        if let Some((op, flag)) = init_kind(&function) {
            if let Some(m) = mech {
                self.judged(rec, &function, Some(m), target.judge_mechanism(m, flag));
                if function == "C_EncryptInit" {
                    let param = rec
                        .get("mechanism")
                        .and_then(|m| m.get("param"))
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    if param.starts_with("CK_GCM_PARAMS") {
                        let zero = param.contains("iv_zero=true");
                        self.judged(rec, &function, Some(m), target.judge_iv(m, zero));
                    }
                }
                self.processes
                    .entry(pid)
                    .or_default()
                    .active
                    .insert((session, op), m);
            }
            if let Some(key) = rec.get("key") {
                let shape = shape_of(key);
                self.judged(rec, &function, mech, target.judge_key(&shape));
                if let Some(h) = key.get("handle").and_then(Value::as_u64) {
                    self.processes.entry(pid).or_default().keys.insert(h, shape);
                }
            }
            if function == "C_WrapKey" {
                let class = rec
                    .get("target")
                    .and_then(|t| t.get("class"))
                    .and_then(Value::as_str);
                if class == Some("CKO_PRIVATE_KEY") {
                    self.judged(rec, &function, mech, target.judge_wrap(CKO_PRIVATE_KEY));
                }
            }
            if let (Some(m), true) = (mech, op == "generate") {
                let template = rec.get("public_template").or_else(|| rec.get("template"));
                let shape = generated_shape(m, template);
                self.judged(rec, &function, Some(m), target.judge_key(&shape));
                self.defaults(rec, &function, m);
            }
        }
        if let Some(op) = update_kind(&function) {
            let m = self
                .processes
                .get(&pid)
                .and_then(|p| p.active.get(&(session, op)).copied());
            if let Some(m) = m {
                self.judged(rec, &function, Some(m), target.judge_multi_part(m));
            }
        }
        if matches!(function.as_str(), "C_Encrypt" | "C_Decrypt") {
            let op = if function == "C_Encrypt" {
                "encrypt"
            } else {
                "decrypt"
            };
            let m = self
                .processes
                .get(&pid)
                .and_then(|p| p.active.get(&(session, op)).copied());
            let len = rec.get("in_len").and_then(Value::as_u64);
            if let (Some(m), Some(len)) = (m, len) {
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                self.judged(
                    rec,
                    &function,
                    Some(m),
                    target.judge_data_len(m, len, op == "decrypt"),
                );
            }
        }
        self.key_template(rec, &function, mech);
        self.count_new_objects(rec, &function);
    }

    /// What the target does with what a key-making template says of a private or secret key
    /// ([`Profile::template_differences`]).
    fn key_template(&mut self, rec: &Value, function: &str, mech: Option<CK_MECHANISM_TYPE>) {
        let template = match function {
            "C_GenerateKeyPair" => rec.get("private_template"),
            "C_GenerateKey" | "C_UnwrapKey" | "C_DeriveKey" => rec.get("template"),
            "C_CreateObject"
                if matches!(
                    template_value(rec.get("template"), "CKA_CLASS").and_then(Value::as_str),
                    Some("CKO_PRIVATE_KEY" | "CKO_SECRET_KEY")
                ) =>
            {
                rec.get("template")
            }
            _ => return,
        };
        let flag = |attr| template_value(template, attr).and_then(Value::as_bool);
        let findings =
            self.target
                .template_differences(self.from, flag("CKA_SENSITIVE"), flag("CKA_PRIVATE"));
        for f in findings {
            self.note(rec, function, mech, f);
        }
    }

    /// Attribute defaults that differ for a generated key whose template is silent.
    fn defaults(&mut self, rec: &Value, function: &str, mech: CK_MECHANISM_TYPE) {
        let template = rec.get("private_template").or_else(|| rec.get("template"));
        let class = if function == "C_GenerateKeyPair" {
            CKO_PRIVATE_KEY
        } else {
            CKO_SECRET_KEY
        };
        for (attr, from, to) in self.target.default_differences(self.from, class) {
            if template_value(template, attr).is_some() {
                continue;
            }
            let f = Finding {
                code: None,
                warning: true,
                what: format!(
                    "keys made without {attr} get {attr}={} on {} ({} on {})",
                    if to { "TRUE" } else { "FALSE" },
                    self.target.title,
                    if from { "TRUE" } else { "FALSE" },
                    self.from.title
                ),
                hint: format!("say {attr} explicitly in the template"),
                source: self.target.defaults_source().to_owned(),
            };
            self.note(rec, function, Some(mech), f);
        }
    }

    /// Key handles the recorded process left on its tokens.
    fn count_new_objects(&mut self, rec: &Value, function: &str) {
        let Some(new) = rec.get("new_objects").and_then(Value::as_array) else {
            return;
        };
        let is_token = |t: Option<&Value>| {
            template_value(t, "CKA_TOKEN")
                .and_then(Value::as_bool)
                .unwrap_or(false)
        };
        let pid = rec.get("pid").and_then(Value::as_u64).unwrap_or(0);
        let templates: Vec<Option<&Value>> = if function == "C_GenerateKeyPair" {
            vec![rec.get("public_template"), rec.get("private_template")]
        } else {
            vec![rec.get("template"); new.len()]
        };
        let keys_made = matches!(
            function,
            "C_GenerateKey" | "C_GenerateKeyPair" | "C_UnwrapKey" | "C_DeriveKey" | "C_CopyObject"
        ) || (function == "C_CreateObject"
            && matches!(
                template_value(rec.get("template"), "CKA_CLASS").and_then(Value::as_str),
                Some("CKO_PUBLIC_KEY" | "CKO_PRIVATE_KEY" | "CKO_SECRET_KEY")
            ));
        let session = rec.get("session").and_then(Value::as_u64).unwrap_or(0);
        let mut added = 0;
        {
            let p = self.processes.entry(pid).or_default();
            for (h, t) in new.iter().zip(templates) {
                let Some(h) = h.as_u64() else { continue };
                // Every key takes a key handle, as the firmware counts: token keys until
                // destroyed, session keys until then or their session's end.
                p.token_objects.insert(h, keys_made);
                if keys_made {
                    added += 1;
                    if !is_token(t) {
                        p.session_keys.entry(session).or_default().push(h);
                    }
                }
            }
        }
        if added == 0 {
            return;
        }
        let held = self.processes.get(&pid).map_or(0, |p| p.key_handles);
        let j = self.target.judge_key_handles(held, added);
        self.judged(rec, function, None, j);
        if let Some(p) = self.processes.get_mut(&pid) {
            p.key_handles = p.key_handles.saturating_add(added);
        }
    }
}

/// Runs the command; `Ok(true)` when nothing would break.
pub(crate) fn run(trace: &Path, target: &str, from: &str, json: bool) -> Result<bool, String> {
    let target = Profile::named(target).map_err(|e| e.to_string())?;
    let from = Profile::named(from).map_err(|e| e.to_string())?;
    let file = std::fs::File::open(trace)
        .map_err(|e| format!("cannot read the trace {}: {e}", trace.display()))?;
    let mut replay = Replay {
        target,
        from,
        processes: HashMap::new(),
        items: BTreeMap::new(),
        calls: 0,
    };
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| format!("reading {}: {e}", trace.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let rec: Value = serde_json::from_str(&line).map_err(|e| {
            format!(
                "{}:{}: not a trace record ({e}); record one with `ferrohsm trace --out FILE -- COMMAND`",
                trace.display(),
                n + 1
            )
        })?;
        replay.record(&rec);
    }
    let mut items: Vec<&Item> = replay.items.values().collect();
    items.sort_by_key(|i| (i.finding.warning, i.first_seq));
    let errors = items.iter().filter(|i| !i.finding.warning).count();
    let warnings = items.len() - errors;
    if json {
        let findings: Vec<Value> = items
            .iter()
            .map(|i| {
                json!({
                    "severity": if i.finding.warning { "warning" } else { "error" },
                    "function": i.function,
                    "mechanism": i.mechanism,
                    "code": i.finding.code.as_ref().map(bridge::Error::name),
                    "what": i.finding.what,
                    "fix": i.finding.hint,
                    "source": i.finding.source,
                    "first_seq": i.first_seq,
                    "pid": i.pid,
                    "times": i.times,
                })
            })
            .collect();
        let out = json!({
            "target": target.name,
            "from": from.name,
            "calls": replay.calls,
            "errors": errors,
            "warnings": warnings,
            "findings": findings,
        });
        println!("{out:#}");
    } else {
        println!(
            "{} calls checked against {} ({}): {errors} would fail, {warnings} warning{}",
            replay.calls,
            target.name,
            target.title,
            if warnings == 1 { "" } else { "s" }
        );
        for i in &items {
            let code = i
                .finding
                .code
                .as_ref()
                .map_or(String::new(), |c| format!(" → {}", c.name()));
            println!(
                "\n{} {}{}{code}  (first at seq {}, pid {}, {} time{})",
                if i.finding.warning {
                    "warning"
                } else {
                    "error  "
                },
                i.function,
                i.mechanism
                    .as_deref()
                    .map_or(String::new(), |m| format!(" {m}")),
                i.first_seq,
                i.pid,
                i.times,
                if i.times == 1 { "" } else { "s" }
            );
            println!("  {}", i.finding.what);
            println!("  fix: {}", i.finding.hint);
            if !i.finding.source.is_empty() {
                println!("  source: {}", i.finding.source);
            }
        }
        if !target.undocumented.is_empty() && errors + warnings > 0 {
            println!(
                "\nWhere {}'s documentation is silent, FerroHSM keeps its own behaviour:",
                target.title
            );
            for u in &target.undocumented {
                println!("  - {u}");
            }
        }
    }
    Ok(errors == 0)
}
