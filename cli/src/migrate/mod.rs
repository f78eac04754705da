//! `ferrohsm migrate`: copies the token objects of one slot into another — keys by wrapping
//! them under a fresh transport key, public keys, certificates and data objects by value — with
//! every protection and usage attribute they have, and names what cannot move.
//!
//! The transport key: the destination makes an RSA-2048 key pair (session objects); its public
//! half is copied into the source, which makes a fresh AES-256 key and hands it over wrapped
//! with RSA-OAEP (SHA-1: the one hash every token's OAEP has). Then each key is wrapped in the
//! source under that AES key and unwrapped in the destination: secret keys whose length is a
//! multiple of 8 with `CKM_AES_KEY_WRAP` (RFC 3394, the same everywhere), the others — private
//! keys as PKCS#8 — with RFC 5649: `CKM_AES_KEY_WRAP_KWP` on a token that lists it, else
//! `CKM_AES_KEY_WRAP_PAD` (the number SoftHSMv2 and older tokens gave RFC 5649). Keys that are
//! not extractable cannot leave (the limit every real HSM migration runs into): they are named,
//! to be re-created in the destination. The session objects are gone when the command ends.
//!
//! # What the copy keeps
//!
//! [`RULES`](rules::RULES) (`rules.rs`) lists every attribute carried, per class, and what the
//! destination gets when the source does not answer for it (`CKR_ATTRIBUTE_TYPE_INVALID`,
//! `CK_UNAVAILABLE_INFORMATION`, `CKR_ATTRIBUTE_SENSITIVE`, a failed call, or a value of the
//! wrong shape): never the less protected value; `plan.rs` makes each object's template from
//! it.
//!
//! | attribute | source silent → destination |
//! |---|---|
//! | `CKA_PRIVATE`, `CKA_SENSITIVE`, `CKA_ALWAYS_AUTHENTICATE`, `CKA_WRAP_WITH_TRUSTED` | TRUE |
//! | `CKA_EXTRACTABLE`, `CKA_MODIFIABLE`, `CKA_COPYABLE`, `CKA_DESTROYABLE`, `CKA_TRUSTED` | FALSE |
//! | usage: `CKA_ENCRYPT`, `DECRYPT`, `SIGN`, `SIGN_RECOVER`, `VERIFY`, `VERIFY_RECOVER`, `WRAP`, `UNWRAP`, `DERIVE` | FALSE |
//! | `CKA_ALLOWED_MECHANISMS` | held back (absent means every mechanism) unless `--allow-loss` |
//! | `CKA_WRAP_TEMPLATE` / `UNWRAP_TEMPLATE` / `DERIVE_TEMPLATE` | held back while `CKA_WRAP` / `UNWRAP` / `DERIVE` is on, unless `--allow-loss`; `CKR_ATTRIBUTE_TYPE_INVALID` says the object has none (no default exists), and the copy has none |
//! | `CKA_LABEL`, `CKA_ID`, `CKA_SUBJECT`, dates, certificate and data descriptors | left empty |
//!
//! Every attribute not carried exactly is reported, one line each, and makes the command fail
//! unless `--allow-loss`. The provenance attributes (`CKA_LOCAL`, `CKA_ALWAYS_SENSITIVE`,
//! `CKA_NEVER_EXTRACTABLE`, `CKA_KEY_GEN_MECHANISM`) are the destination's own. Templates
//! never repeat an attribute type, and a sensitive, unextractable or always-authenticate key is
//! made private (a stricter value, reported) because the firmware requires it. After the
//! copy is made, every attribute given is read back from the destination: one it weakened
//! (a flag less protected, a mechanism list or template not kept) destroys the copy.

use bridge::BackendExt as _;
use std::collections::BTreeSet;

use bridge::{
    AttrAnswer, AttrValue, Attribute, Error, Mechanism, MechanismParams, OaepParams, ObjectHandle,
    Router, SessionHandle, SlotId, Template, ULONG_SIZE,
};
use cryptoki_sys::*;

use crate::explain;

/// The most objects one search may return: a source that never ends a search is broken.
const MAX_OBJECTS: usize = 100_000;

/// The largest wrapped key accepted from the source's length query (a PKCS#8 RSA-16384 key is
/// about 10 KiB); a larger one is a broken source, and allocating it could abort.
const MAX_WRAPPED: usize = 1 << 20;

mod plan;
mod rules;

use plan::{Mark, Note, Plan, Provenance, plan, put, same, without};
use rules::{
    Array, Bool, Date, Mechanisms, Omit, Set, Shape, Ulong, element_shape, name, rule_of, rules_for,
};

// ---- reading the source -------------------------------------------------------------------

/// One attribute as a side answered for it.
#[derive(Clone, Debug)]
enum Answer {
    Known(AttrValue),
    /// The object has no such attribute (`CKR_ATTRIBUTE_TYPE_INVALID`, or
    /// `CK_UNAVAILABLE_INFORMATION` alone), in these words.
    Absent(String),
    /// Why there is no usable value (sensitive, a failed call).
    Silent(String),
}

impl Answer {
    fn bytes(&self) -> Option<&[u8]> {
        match self {
            Self::Known(AttrValue::Bytes(b)) => Some(b),
            _ => None,
        }
    }

    fn ulong(&self) -> Option<CK_ULONG> {
        self.bytes()
            .and_then(|b| <[u8; ULONG_SIZE]>::try_from(b).ok())
            .map(CK_ULONG::from_ne_bytes)
    }
}

/// A checked value: `Err` says why it cannot be used.
fn checked(shape: Shape, value: &AttrValue) -> Result<AttrValue, String> {
    let malformed = |what: String| Err(format!("malformed value ({what})"));
    match (shape, value) {
        (Array, AttrValue::Template(t)) => check_template(t).map(|()| value.clone()),
        // An empty attribute array comes back as no bytes from some back ends.
        (Array, AttrValue::Bytes(b)) if b.is_empty() => Ok(AttrValue::Template(Template::new())),
        (_, AttrValue::Template(_)) | (Array, AttrValue::Bytes(_)) => {
            malformed("an attribute array where a value belongs, or the reverse".to_owned())
        }
        (Bool, AttrValue::Bytes(b)) => match b.as_slice() {
            [0 | 1] => Ok(value.clone()),
            [x] => malformed(format!("0x{x:02x} for a CK_BBOOL")),
            _ => malformed(format!("{} bytes for a CK_BBOOL", b.len())),
        },
        (Ulong, AttrValue::Bytes(b)) if b.len() != ULONG_SIZE => {
            malformed(format!("{} bytes for a CK_ULONG", b.len()))
        }
        (Mechanisms, AttrValue::Bytes(b)) if b.len() % ULONG_SIZE != 0 => {
            malformed(format!("{} bytes for a list of CK_MECHANISM_TYPE", b.len()))
        }
        (Date, AttrValue::Bytes(b))
            if !(b.is_empty() || (b.len() == 8 && b.iter().all(u8::is_ascii_digit))) =>
        {
            malformed("not a CK_DATE".to_owned())
        }
        _ => Ok(value.clone()),
    }
}

/// An attribute template must name each type once, hold no nested template and give flags and
/// numbers their sizes: anything else could mean something other than it seems.
fn check_template(t: &Template) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for a in t {
        if !seen.insert(a.ty) {
            return Err(format!("the template names {} twice", name(a.ty)));
        }
        if element_shape(a.ty) == Array {
            return Err("a template nested in a template".to_owned());
        }
        checked(element_shape(a.ty), &a.value)
            .map_err(|why| format!("{} in the template: {why}", name(a.ty)))?;
    }
    Ok(())
}

/// One logged-in R/W session.
struct Side<'a> {
    r: &'a Router,
    s: SessionHandle,
    mechanisms: Vec<CK_MECHANISM_TYPE>,
    what: &'static str,
}

impl Drop for Side<'_> {
    fn drop(&mut self) {
        let _ = self.r.close_session(self.s);
    }
}

impl<'a> Side<'a> {
    fn open(r: &'a Router, slot: SlotId, pin: &[u8], what: &'static str) -> Result<Self, String> {
        let s = r
            .open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)
            .map_err(|e| explain(&format!("opening a session on the {what} slot"), &e))?;
        let side = Self {
            r,
            s,
            mechanisms: r.mechanism_list(slot).unwrap_or_default(),
            what,
        };
        match r.login(s, CKU_USER, Some(pin)) {
            Ok(()) | Err(Error::UserAlreadyLoggedIn) => {}
            Err(e) => return Err(explain(&format!("logging in to the {what} slot"), &e)),
        }
        Ok(side)
    }

    fn has(&self, m: CK_MECHANISM_TYPE) -> bool {
        self.mechanisms.contains(&m)
    }

    /// The objects matching `template`, each once; at most [`MAX_OBJECTS`].
    fn find(&self, template: &Template) -> Result<Vec<ObjectHandle>, String> {
        let what = format!("searching the {} slot", self.what);
        self.r
            .find_objects_init(self.s, template)
            .map_err(|e| explain(&what, &e))?;
        let found = self.r.find_objects(self.s, MAX_OBJECTS);
        let _ = self.r.find_objects_final(self.s);
        let found = found.map_err(|e| explain(&what, &e))?;
        if found.len() >= MAX_OBJECTS {
            return Err(format!(
                "{what}: more than {MAX_OBJECTS} objects; narrow the run with --label"
            ));
        }
        let mut seen = BTreeSet::new();
        Ok(found.into_iter().filter(|h| seen.insert(h.0)).collect())
    }

    /// The answers for `types`, in order. A call that fails as a whole is retried one
    /// attribute at a time, so that one bad answer silences only its own attribute.
    fn read(&self, o: ObjectHandle, types: &[CK_ATTRIBUTE_TYPE]) -> Vec<Answer> {
        if let Ok(answers) = self.r.get_attribute_value(self.s, o, types) {
            if answers.len() == types.len() {
                return answers.iter().map(|a| self.answer(a)).collect();
            }
        }
        types
            .iter()
            .map(|ty| match self.r.get_attribute_value(self.s, o, &[*ty]) {
                Ok(a) => match a.as_slice() {
                    [one] => self.answer(one),
                    _ => Answer::Silent(format!("the {}'s answer has the wrong shape", self.what)),
                },
                Err(e) => Answer::Silent(format!(
                    "the {} failed to return it ({})",
                    self.what,
                    e.name()
                )),
            })
            .collect()
    }

    fn answer(&self, a: &AttrAnswer) -> Answer {
        match a {
            AttrAnswer::Value(v) => Answer::Known(v.clone()),
            AttrAnswer::Sensitive => {
                Answer::Silent(format!("the {} calls it sensitive", self.what))
            }
            AttrAnswer::Invalid => Answer::Absent(format!("the {} does not return it", self.what)),
        }
    }
}

fn oaep_sha1() -> Mechanism {
    Mechanism::with(
        CKM_RSA_PKCS_OAEP,
        MechanismParams::RsaPkcsOaep(OaepParams {
            hash_alg: CKM_SHA_1,
            mgf: CKG_MGF1_SHA1,
            source: CKZ_DATA_SPECIFIED,
            source_data: Vec::new(),
        }),
    )
}

// ---- the run ------------------------------------------------------------------------------

/// How one object ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Migrated,
    Present,
    Stuck,
    Held,
    Failed,
    /// Of a class migrate does not copy (domain parameters, OTP keys, trust objects, ...).
    Unsupported,
    /// Defined by the token itself (hardware features, profiles, mechanisms): the
    /// destination has its own.
    TokenDefined,
}

/// The classes the token defines for itself: never copied, nothing left behind.
fn token_defined(class: CK_OBJECT_CLASS) -> bool {
    matches!(
        class,
        CKO_HW_FEATURE | CKO_PROFILE | CKO_MECHANISM | CKO_VALIDATION
    )
}

/// The classes migrate copies, in the order it copies them.
const CLASSES: [CK_OBJECT_CLASS; 5] = [
    CKO_SECRET_KEY,
    CKO_PRIVATE_KEY,
    CKO_PUBLIC_KEY,
    CKO_CERTIFICATE,
    CKO_DATA,
];

/// The migration in progress.
struct Run<'a> {
    src: Side<'a>,
    dst: Side<'a>,
    /// (source AES key, destination AES key).
    transport: Option<(ObjectHandle, ObjectHandle)>,
    loss: bool,
    /// Source objects already handled (a private key's public half).
    done: BTreeSet<CK_OBJECT_HANDLE>,
    /// Objects per [`Status`], and per class of [`CLASSES`] (the last: other classes).
    counts: [[usize; 6]; 7],
    /// Attributes not carried exactly, over all objects copied.
    notes: usize,
}

/// Runs the migration; prints one line per object and per attribute not carried exactly.
/// Fails if an object failed or was held back, or (without `allow_loss`) if an attribute was
/// not carried exactly.
pub(crate) fn migrate(
    r: &Router,
    from: SlotId,
    to: SlotId,
    label: Option<&str>,
    from_pin: &[u8],
    to_pin: &[u8],
    allow_loss: bool,
) -> Result<(), String> {
    if from == to {
        return Err("--from and --to name the same slot; name two different slots".to_owned());
    }
    let mut run = Run {
        src: Side::open(r, from, from_pin, "source")?,
        dst: Side::open(r, to, to_pin, "destination")?,
        transport: None,
        loss: allow_loss,
        done: BTreeSet::new(),
        counts: [[0; 6]; 7],
        notes: 0,
    };
    let search = |class: Option<CK_OBJECT_CLASS>| {
        let mut t = Template::new();
        if let Some(c) = class {
            t = t.with(Attribute::ulong(CKA_CLASS, c));
        }
        t = t.with(Attribute::bool(CKA_TOKEN, true));
        if let Some(l) = label {
            t = t.with(Attribute::bytes(CKA_LABEL, l.as_bytes().to_vec()));
        }
        t
    };
    let mut found = Vec::new();
    for class in CLASSES {
        found.extend(
            run.src
                .find(&search(Some(class)))?
                .into_iter()
                .map(|h| (class, h)),
        );
    }
    // Every other token object is named too: nothing is left behind silently.
    let known: BTreeSet<CK_OBJECT_HANDLE> = found.iter().map(|(_, h)| h.0).collect();
    let mut others = Vec::new();
    for h in run.src.find(&search(None))? {
        if !known.contains(&h.0) {
            let class = run
                .src
                .read(h, &[CKA_CLASS])
                .first()
                .and_then(Answer::ulong);
            others.push((class, h));
        }
    }
    if found.is_empty() && others.is_empty() {
        println!("Nothing to migrate.");
        return Ok(());
    }
    if found
        .iter()
        .any(|(c, _)| matches!(*c, CKO_SECRET_KEY | CKO_PRIVATE_KEY))
    {
        run.transport = Some(transport_key(&run.src, &run.dst)?);
    }
    for (class, h) in found {
        if run.done.contains(&h.0) {
            continue;
        }
        run.object(class, h);
    }
    for (class, h) in others {
        run.other(class, h);
    }
    // The transport keys are session objects: they end with the sessions. Nothing in the
    // source is ever destroyed (a lying source could name a token key as the new one).
    if let Some((_, d)) = run.transport {
        let _ = run.dst.r.destroy_object(run.dst.s, d);
    }

    let total = |st: Status| run.counts.get(st as usize).map_or(0, |c| c.iter().sum());
    println!(
        "{} migrated ({}), {} already there ({}), {} not extractable (re-create), {} held \
         back, {} failed, {} of a class migrate does not copy, {} defined by the token; {} \
         attributes not carried exactly",
        total(Status::Migrated),
        by_class(&run.counts, Status::Migrated),
        total(Status::Present),
        by_class(&run.counts, Status::Present),
        total(Status::Stuck),
        total(Status::Held),
        total(Status::Failed),
        total(Status::Unsupported),
        total(Status::TokenDefined),
        run.notes
    );
    let left: Vec<String> = [
        (Status::Failed, "failed"),
        (Status::Held, "held back"),
        (Status::Stuck, "not extractable"),
        (Status::Unsupported, "of a class migrate does not copy"),
    ]
    .iter()
    .filter(|(st, _)| total(*st) > 0)
    .map(|(st, what)| format!("{} {what}", total(*st)))
    .collect();
    if !left.is_empty() {
        Err(format!(
            "objects were left behind in the source ({}; see the lines above): fix the cause \
             named there, re-create the keys that are not extractable in the destination, or \
             re-run with --allow-loss to copy held-back objects without the restrictions \
             listed",
            left.join(", ")
        ))
    } else if run.notes > 0 && !allow_loss {
        Err(format!(
            "{} attributes were not carried exactly (see the lines above); check them, then \
             re-run with --allow-loss to accept them (copies already made are skipped)",
            run.notes
        ))
    } else {
        Ok(())
    }
}

/// The index of `class` in [`CLASSES`]; other classes count last.
fn class_index(class: CK_OBJECT_CLASS) -> usize {
    CLASSES
        .iter()
        .position(|c| *c == class)
        .unwrap_or(CLASSES.len())
}

/// Objects of one status by class, in words (`2 keys, 1 certificate`).
fn by_class(counts: &[[usize; 6]; 7], status: Status) -> String {
    let Some(c) = counts.get(status as usize) else {
        return String::new();
    };
    let keys: usize = c.iter().take(3).sum();
    let n = |i: usize| c.get(i).copied().unwrap_or(0);
    format!("{keys} keys, {} certificates, {} data objects", n(3), n(4))
}

/// The report's name of an object: kind, label (escaped, cut short) and id.
fn describe(class: CK_OBJECT_CLASS, label: &Answer, id: &Answer) -> String {
    crate::object_name(class, None, label.bytes(), id.bytes())
}

impl Run<'_> {
    fn report(
        &mut self,
        status: Status,
        class: CK_OBJECT_CLASS,
        who: &str,
        detail: &str,
        notes: &[Note],
    ) {
        let head = match status {
            Status::Migrated => "migrated",
            Status::Present => "skipped",
            Status::Stuck => "NOT MOVED",
            Status::Held => "HELD BACK",
            Status::Failed => "FAILED",
            Status::Unsupported => "NOT MOVED",
            Status::TokenDefined => "skipped",
        };
        if detail.is_empty() {
            println!("{head:<10} {who}");
        } else {
            println!("{head:<10} {who}: {detail}");
        }
        for n in notes {
            let mark = match n.mark {
                Mark::Stricter => "stricter",
                Mark::Lost => "lost",
            };
            println!("  {mark:<8} {}: {}", name(n.ty), n.text);
        }
        if let Some(c) = self
            .counts
            .get_mut(status as usize)
            .and_then(|c| c.get_mut(class_index(class)))
        {
            *c += 1;
        }
        if status == Status::Migrated {
            self.notes += notes.len();
        }
    }

    /// Names a token object of a class migrate does not copy.
    fn other(&mut self, class: Option<CK_OBJECT_CLASS>, h: ObjectHandle) {
        let v = self.src.read(h, &[CKA_LABEL, CKA_ID]);
        let silent = Answer::Silent(String::new());
        let name = describe(
            class.unwrap_or(CK_UNAVAILABLE_INFORMATION),
            v.first().unwrap_or(&silent),
            v.get(1).unwrap_or(&silent),
        );
        let class_text = class.map_or_else(|| "unknown".to_owned(), |c| format!("0x{c:x}"));
        match class {
            Some(c) if token_defined(c) => self.report(
                Status::TokenDefined,
                c,
                &format!("{name} of class {class_text}"),
                "defined by the token itself; the destination has its own",
                &[],
            ),
            _ => self.report(
                Status::Unsupported,
                class.unwrap_or(CK_UNAVAILABLE_INFORMATION),
                &format!("{name} of class {class_text}"),
                "migrate copies keys, certificates and data objects only; re-create it in the \
                 destination",
                &[],
            ),
        }
    }

    /// Migrates one object of `class` (and a private key's public half).
    fn object(&mut self, class: CK_OBJECT_CLASS, h: ObjectHandle) {
        self.done.insert(h.0);
        let rules = rules_for(class);
        let mut types: Vec<CK_ATTRIBUTE_TYPE> = rules.iter().map(|r| r.ty).collect();
        let fixed = [
            CKA_CLASS,
            CKA_KEY_TYPE,
            CKA_VALUE_LEN,
            CKA_CERTIFICATE_TYPE,
            CKA_ALWAYS_SENSITIVE,
            CKA_NEVER_EXTRACTABLE,
            CKA_ALWAYS_AUTHENTICATE,
        ];
        types.extend_from_slice(&fixed);
        let answers = self.src.read(h, &types);
        let (carried, extra) = answers.split_at(rules.len().min(answers.len()));
        let get = |ty| {
            rules
                .iter()
                .position(|r| r.ty == ty)
                .and_then(|i| carried.get(i))
                .cloned()
                .unwrap_or(Answer::Silent(String::new()))
        };
        let (label, id) = (get(CKA_LABEL), get(CKA_ID));
        let name = describe(class, &label, &id);
        let fixed_answer = |i: usize| {
            extra
                .get(i)
                .cloned()
                .unwrap_or(Answer::Silent(String::new()))
        };

        // The source must agree with itself about what the object is.
        let said = fixed_answer(0).ulong();
        if said != Some(class) {
            return self.report(
                Status::Failed,
                class,
                &name,
                "the source found it as this class but does not say so when asked (a broken \
                 or lying module); check the source",
                &[],
            );
        }
        // The certificate's or key's type (its place among the fixed answers, and what to do
        // when it cannot be read); a data object has none.
        let typed = match class {
            CKO_DATA => None,
            CKO_CERTIFICATE => Some((
                3,
                "its CKA_CERTIFICATE_TYPE cannot be read; copy it by hand",
            )),
            _ => Some((
                1,
                "its CKA_KEY_TYPE cannot be read; re-create it in the destination",
            )),
        };
        let subtype = match typed.map(|(i, why)| (fixed_answer(i).ulong(), why)) {
            None => None,
            Some((Some(t), _)) => Some(t),
            Some((None, why)) => return self.report(Status::Failed, class, &name, why, &[]),
        };

        if self.present(class, &label, &id, &get(CKA_APPLICATION)) {
            return self.report(
                Status::Present,
                class,
                &name,
                "the destination already has it (same class, label and id)",
                &[],
            );
        }
        let flag = |i| match fixed_answer(i).bytes() {
            Some([0]) => Some(false),
            Some([1]) => Some(true),
            _ => None,
        };
        let provenance = Provenance {
            always_sensitive: flag(4),
            never_extractable: flag(5),
        };
        let mut p = plan(class, &rules, carried, provenance, self.loss);
        // The standard defines CKA_ALWAYS_AUTHENTICATE for private keys only; a source that
        // sets it on a secret key gets it carried (a destination refusing it fails the key,
        // or with --allow-loss leaves it out and says so). Silence means the usual: none.
        if class == CKO_SECRET_KEY && flag(6) == Some(true) {
            put(
                &mut p.template,
                Attribute::bool(CKA_ALWAYS_AUTHENTICATE, true),
            );
        }
        let is_key = matches!(class, CKO_SECRET_KEY | CKO_PRIVATE_KEY);
        if is_key && p.extractable == Some(false) {
            return self.report(
                Status::Stuck,
                class,
                &name,
                "not extractable; re-create it in the destination",
                &[],
            );
        }
        if p.hold && !self.loss {
            return self.report(
                Status::Held,
                class,
                &name,
                "a restriction it has in the source cannot be read (below); not copied",
                &p.notes,
            );
        }
        let made = if is_key {
            let whole_blocks = class == CKO_SECRET_KEY
                && fixed_answer(2)
                    .ulong()
                    .is_some_and(|n| n % 8 == 0 && n >= 16);
            self.key(class, subtype.unwrap_or_default(), h, whole_blocks, p)
        } else {
            self.by_value(class, subtype, h, p)
                .map_err(|why| (Status::Failed, why))
        };
        match made {
            Ok(notes) => self.report(Status::Migrated, class, &name, "", &notes),
            Err((status, why)) => return self.report(status, class, &name, &why, &[]),
        }
        if class == CKO_PRIVATE_KEY {
            if let Some(public) = self.public_half(h, subtype.unwrap_or_default(), &id) {
                self.object(CKO_PUBLIC_KEY, public);
            }
        }
    }

    /// Whether the destination has an object of `class` with the same label and id (data:
    /// label and application). Unknown when the source would not say either.
    fn present(&self, class: CK_OBJECT_CLASS, label: &Answer, id: &Answer, app: &Answer) -> bool {
        let mut t = Template::new().with(Attribute::ulong(CKA_CLASS, class));
        let mut known = 0;
        let second = if class == CKO_DATA {
            (CKA_APPLICATION, app)
        } else {
            (CKA_ID, id)
        };
        for (ty, a) in [(CKA_LABEL, label), second] {
            if let Some(b) = a.bytes() {
                t = t.with(Attribute::bytes(ty, b.to_vec()));
                known += 1;
            }
        }
        known > 0 && self.dst.find(&t).is_ok_and(|found| !found.is_empty())
    }

    /// Wraps a key in the source and unwraps it in the destination under `p`.
    fn key(
        &self,
        class: CK_OBJECT_CLASS,
        key_type: CK_KEY_TYPE,
        h: ObjectHandle,
        whole_blocks: bool,
        mut p: Plan,
    ) -> Result<Vec<Note>, (Status, String)> {
        let Some((src_aes, dst_aes)) = self.transport else {
            return Err((Status::Failed, "no transport key".to_owned()));
        };
        let (wrap_mech, unwrap_mech) = if whole_blocks {
            (CKM_AES_KEY_WRAP, CKM_AES_KEY_WRAP)
        } else {
            (rfc5649(&self.src), rfc5649(&self.dst))
        };
        let wrapped = match wrap(&self.src, &Mechanism::new(wrap_mech), src_aes, h) {
            Ok(w) => w,
            Err(Error::KeyUnextractable) if p.extractable.is_none() => {
                return Err((
                    Status::Stuck,
                    "not extractable (the source refuses to wrap it); re-create it in the \
                     destination"
                        .to_owned(),
                ));
            }
            Err(Error::KeyNotWrappable) => {
                return Err((
                    Status::Stuck,
                    "the source lets it leave only under a trusted key (CKA_WRAP_WITH_TRUSTED or \
                     its policy); re-create it in the destination"
                        .to_owned(),
                ));
            }
            Err(e) => {
                return Err((Status::Failed, explain("wrapping it in the source", &e)));
            }
        };
        let base = Template::new()
            .with(Attribute::ulong(CKA_CLASS, class))
            .with(Attribute::ulong(CKA_KEY_TYPE, key_type))
            .with(Attribute::bool(CKA_TOKEN, true));
        let made = self.create(&base, &mut p, |t| {
            self.dst.r.unwrap_key(
                self.dst.s,
                &Mechanism::new(unwrap_mech),
                dst_aes,
                &wrapped,
                t,
            )
        });
        let copy = made.map_err(|why| (Status::Failed, why))?;
        self.verify(copy, &mut p)
            .map(|()| p.notes)
            .map_err(|why| (Status::Failed, why))
    }

    /// Copies a public key, certificate or data object: its material and `p`.
    fn by_value(
        &self,
        class: CK_OBJECT_CLASS,
        subtype: Option<CK_ULONG>,
        h: ObjectHandle,
        mut p: Plan,
    ) -> Result<Vec<Note>, String> {
        let mut base = Template::new()
            .with(Attribute::ulong(CKA_CLASS, class))
            .with(Attribute::bool(CKA_TOKEN, true));
        let material: &[CK_ATTRIBUTE_TYPE] = match (class, subtype) {
            (CKO_PUBLIC_KEY, Some(CKK_RSA)) => &[CKA_MODULUS, CKA_PUBLIC_EXPONENT],
            (CKO_PUBLIC_KEY, _) => &[CKA_EC_PARAMS, CKA_EC_POINT],
            (CKO_CERTIFICATE, Some(CKC_X_509)) => &[CKA_VALUE, CKA_SUBJECT],
            _ => &[CKA_VALUE],
        };
        match (class, subtype) {
            (CKO_PUBLIC_KEY, Some(t)) => put(&mut base, Attribute::ulong(CKA_KEY_TYPE, t)),
            (CKO_CERTIFICATE, Some(t)) => put(&mut base, Attribute::ulong(CKA_CERTIFICATE_TYPE, t)),
            _ => {}
        }
        for (ty, a) in material.iter().zip(self.src.read(h, material)) {
            match a.bytes() {
                Some(b) => put(&mut base, Attribute::bytes(*ty, b.to_vec())),
                None => {
                    return Err(format!(
                        "its {} cannot be read; copy it by hand",
                        bridge::attr_name(*ty)
                    ));
                }
            }
        }
        let copy = self.create(&base, &mut p, |t| self.dst.r.create_object(self.dst.s, t))?;
        self.verify(copy, &mut p)?;
        Ok(p.notes)
    }

    /// Makes the copy with `make(base + p.template)`. When the destination refuses the
    /// template and `--allow-loss` was given, tries again without each attribute it may drop,
    /// then without all of them, and reports what was left out.
    fn create(
        &self,
        base: &Template,
        p: &mut Plan,
        make: impl Fn(&Template) -> Result<ObjectHandle, Error>,
    ) -> Result<ObjectHandle, String> {
        let full = {
            let mut t = base.clone();
            for a in &p.template {
                put(&mut t, a.clone());
            }
            t
        };
        let e = match make(&full) {
            Ok(h) => return Ok(h),
            Err(e) => e,
        };
        let refused = matches!(
            e,
            Error::AttributeTypeInvalid
                | Error::AttributeValueInvalid
                | Error::AttributeReadOnly
                | Error::TemplateInconsistent
        );
        if !refused {
            return Err(explain("creating the copy in the destination", &e));
        }
        if !self.loss {
            return Err(format!(
                "the destination refused the template ({}); if it lacks one of the attributes \
                 carried, --allow-loss lets migrate leave it out and list it",
                e.name()
            ));
        }
        let droppable: Vec<CK_ATTRIBUTE_TYPE> = p
            .template
            .iter()
            .map(|a| a.ty)
            .filter(|ty| rule_of(*ty).is_some_and(|r| r.droppable))
            .collect();
        let mut tries: Vec<Vec<CK_ATTRIBUTE_TYPE>> = droppable.iter().map(|t| vec![*t]).collect();
        if droppable.len() > 1 {
            tries.push(droppable.clone());
        }
        for drop in tries {
            if let Ok(h) = make(&without(&full, &drop)) {
                for ty in &drop {
                    p.notes.push(Note {
                        mark: Mark::Lost,
                        ty: *ty,
                        text: format!(
                            "the destination refused the template with it ({}); left out \
                             (--allow-loss), the destination's default applies",
                            e.name()
                        ),
                    });
                }
                p.template = without(&p.template, &drop);
                return Ok(h);
            }
        }
        Err(format!(
            "the destination refused the template ({}), also without the attributes it may \
             lack; check the destination's support for this key type",
            e.name()
        ))
    }

    /// Reads every attribute given back from the copy. One the destination made less
    /// protected destroys the copy; one it made stricter, or will not report, is noted.
    fn verify(&self, copy: ObjectHandle, p: &mut Plan) -> Result<(), String> {
        let types: Vec<CK_ATTRIBUTE_TYPE> = p.template.iter().map(|a| a.ty).collect();
        let got = self.dst.read(copy, &types);
        let mut weaker = None;
        for (want, got) in p.template.iter().zip(&got) {
            let rule = rule_of(want.ty);
            match got {
                Answer::Known(v) if same(want.ty, &want.value, v) => {}
                Answer::Known(v) => {
                    let stricter = match (rule.map(|r| r.if_silent), v) {
                        (Some(Set(b)), AttrValue::Bytes(x)) => x.as_slice() == [u8::from(b)],
                        _ => false,
                    };
                    let descriptive = rule.is_some_and(|r| r.if_silent == Omit);
                    if stricter || descriptive {
                        p.notes.push(Note {
                            mark: if stricter { Mark::Stricter } else { Mark::Lost },
                            ty: want.ty,
                            text: "the destination changed the value given".to_owned(),
                        });
                    } else {
                        weaker = Some(want.ty);
                        break;
                    }
                }
                Answer::Absent(why) | Answer::Silent(why) => p.notes.push(Note {
                    mark: Mark::Lost,
                    ty: want.ty,
                    text: format!("read back: {why}; check it there"),
                }),
            }
        }
        let Some(ty) = weaker else {
            return Ok(());
        };
        let fate = match self.dst.r.destroy_object(self.dst.s, copy) {
            Ok(()) => "the copy was destroyed".to_owned(),
            Err(e) => format!(
                "the copy could not be destroyed ({}): remove it by hand",
                e.name()
            ),
        };
        Err(format!(
            "the destination did not keep {} as given; {fate}; check the destination's support \
             for it",
            name(ty)
        ))
    }

    /// The public key of a private key: the one public key with the same non-empty CKA_ID
    /// and, for RSA, the same modulus.
    fn public_half(
        &self,
        private: ObjectHandle,
        key_type: CK_KEY_TYPE,
        id: &Answer,
    ) -> Option<ObjectHandle> {
        let id = id.bytes().filter(|b| !b.is_empty())?;
        let found = self
            .src
            .find(
                &Template::new()
                    .with(Attribute::ulong(CKA_CLASS, CKO_PUBLIC_KEY))
                    .with(Attribute::bool(CKA_TOKEN, true))
                    .with(Attribute::bytes(CKA_ID, id.to_vec())),
            )
            .ok()?;
        let material = if key_type == CKK_RSA {
            CKA_MODULUS
        } else {
            CKA_EC_PARAMS
        };
        let mine = self.src.read(private, &[material]);
        let mine = mine.first().and_then(Answer::bytes);
        let matching: Vec<ObjectHandle> = found
            .into_iter()
            .filter(|h| !self.done.contains(&h.0))
            .filter(|h| {
                let theirs = self.src.read(*h, &[CKA_KEY_TYPE, material]);
                theirs.first().and_then(Answer::ulong) == Some(key_type)
                    && match (mine, theirs.get(1).and_then(Answer::bytes)) {
                        (Some(a), Some(b)) => a == b,
                        _ => true,
                    }
            })
            .collect();
        match matching.as_slice() {
            [one] => Some(*one),
            // None or several: the public keys pass copies them on their own.
            _ => None,
        }
    }
}

/// The AES transport key in both tokens: (source handle, destination handle).
fn transport_key(src: &Side<'_>, dst: &Side<'_>) -> Result<(ObjectHandle, ObjectHandle), String> {
    // The destination's RSA key pair, as session objects.
    let public = Template::new()
        .with(Attribute::bool(CKA_TOKEN, false))
        .with(Attribute::ulong(CKA_MODULUS_BITS, 2048))
        .with(Attribute::bytes(CKA_PUBLIC_EXPONENT, vec![1, 0, 1]))
        .with(Attribute::bool(CKA_WRAP, true))
        .with(Attribute::bool(CKA_ENCRYPT, true));
    let private = Template::new()
        .with(Attribute::bool(CKA_TOKEN, false))
        .with(Attribute::bool(CKA_PRIVATE, true))
        .with(Attribute::bool(CKA_SENSITIVE, true))
        .with(Attribute::bool(CKA_EXTRACTABLE, false))
        .with(Attribute::bool(CKA_UNWRAP, true))
        .with(Attribute::bool(CKA_DECRYPT, true));
    let (dst_pub, dst_priv) = dst
        .r
        .generate_key_pair(
            dst.s,
            &Mechanism::new(CKM_RSA_PKCS_KEY_PAIR_GEN),
            &public,
            &private,
        )
        .map_err(|e| explain("making the transport key pair in the destination", &e))?;
    let v = dst.read(dst_pub, &[CKA_MODULUS, CKA_PUBLIC_EXPONENT]);
    let (Some(modulus), Some(exponent)) = (
        v.first().and_then(Answer::bytes),
        v.get(1).and_then(Answer::bytes),
    ) else {
        return Err(
            "the destination's transport public key cannot be read; check the destination"
                .to_owned(),
        );
    };
    let src_pub = src
        .r
        .create_object(
            src.s,
            &Template::new()
                .with(Attribute::ulong(CKA_CLASS, CKO_PUBLIC_KEY))
                .with(Attribute::ulong(CKA_KEY_TYPE, CKK_RSA))
                .with(Attribute::bool(CKA_TOKEN, false))
                .with(Attribute::bool(CKA_WRAP, true))
                .with(Attribute::bool(CKA_ENCRYPT, true))
                .with(Attribute::bytes(CKA_MODULUS, modulus.to_vec()))
                .with(Attribute::bytes(CKA_PUBLIC_EXPONENT, exponent.to_vec())),
        )
        .map_err(|e| explain("copying the transport public key into the source", &e))?;
    let aes = src
        .r
        .generate_key(
            src.s,
            &Mechanism::new(CKM_AES_KEY_GEN),
            &Template::new()
                .with(Attribute::bool(CKA_TOKEN, false))
                .with(Attribute::ulong(CKA_VALUE_LEN, 32))
                .with(Attribute::bool(CKA_PRIVATE, true))
                .with(Attribute::bool(CKA_SENSITIVE, true))
                .with(Attribute::bool(CKA_EXTRACTABLE, true))
                .with(Attribute::bool(CKA_WRAP, true))
                .with(Attribute::bool(CKA_ENCRYPT, true)),
        )
        .map_err(|e| explain("making the transport key in the source", &e))?;
    let wrapped = wrap(src, &oaep_sha1(), src_pub, aes)
        .map_err(|e| explain("wrapping the transport key in the source", &e))?;
    let dst_aes = dst
        .r
        .unwrap_key(
            dst.s,
            &oaep_sha1(),
            dst_priv,
            &wrapped,
            &Template::new()
                .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
                .with(Attribute::ulong(CKA_KEY_TYPE, CKK_AES))
                .with(Attribute::bool(CKA_TOKEN, false))
                .with(Attribute::bool(CKA_PRIVATE, true))
                .with(Attribute::bool(CKA_SENSITIVE, true))
                .with(Attribute::bool(CKA_EXTRACTABLE, false))
                .with(Attribute::bool(CKA_UNWRAP, true))
                .with(Attribute::bool(CKA_DECRYPT, true)),
        )
        .map_err(|e| explain("unwrapping the transport key in the destination", &e))?;
    let _ = dst.r.destroy_object(dst.s, dst_pub);
    let _ = dst.r.destroy_object(dst.s, dst_priv);
    Ok((aes, dst_aes))
}

/// `C_WrapKey` with the two-call length convention; a length beyond [`MAX_WRAPPED`] is the
/// source's error, not an allocation.
fn wrap(
    side: &Side<'_>,
    mech: &Mechanism,
    wrapping: ObjectHandle,
    key: ObjectHandle,
) -> Result<Vec<u8>, Error> {
    let n = side.r.wrap_key(side.s, mech, wrapping, key, None)?;
    if n == 0 || n > MAX_WRAPPED {
        return Err(Error::Internal(
            "the source announced an implausible wrapped key length",
        ));
    }
    let mut buf = vec![0u8; n];
    let n = side
        .r
        .wrap_key(side.s, mech, wrapping, key, Some(&mut buf))?;
    buf.truncate(n);
    Ok(buf)
}

/// The RFC 5649 mechanism a side knows it by.
fn rfc5649(side: &Side<'_>) -> CK_MECHANISM_TYPE {
    if side.has(CKM_AES_KEY_WRAP_KWP) {
        CKM_AES_KEY_WRAP_KWP
    } else {
        CKM_AES_KEY_WRAP_PAD
    }
}

#[cfg(test)]
mod tests {
    use super::plan::flag_of;
    use super::rules::{HoldBack, RULES, Rule};
    use super::*;

    fn known_bool(b: bool) -> Answer {
        Answer::Known(AttrValue::Bytes(vec![u8::from(b)]))
    }

    fn silent() -> Answer {
        Answer::Silent("the source does not return it".to_owned())
    }

    /// The plan when the source answers `f(rule)` for each rule of `class`.
    fn plan_with(class: CK_OBJECT_CLASS, f: impl Fn(&Rule) -> Answer) -> Plan {
        let rules = rules_for(class);
        let answers: Vec<Answer> = rules.iter().map(|r| f(r)).collect();
        plan(class, &rules, &answers, Provenance::default(), false)
    }

    fn assert_no_repeats(t: &Template) {
        let mut seen = BTreeSet::new();
        for a in t {
            assert!(seen.insert(a.ty), "{} twice", name(a.ty));
        }
    }

    #[test]
    fn rules_name_each_attribute_once() {
        let mut seen = BTreeSet::new();
        for r in RULES {
            assert!(seen.insert(r.ty), "{} twice", r.name);
            assert!(r.name.starts_with("CKA_"));
        }
    }

    #[test]
    fn a_silent_source_gets_the_more_protected_value_of_every_flag() {
        for class in [CKO_SECRET_KEY, CKO_PRIVATE_KEY, CKO_PUBLIC_KEY] {
            let p = plan_with(class, |_| silent());
            assert_no_repeats(&p.template);
            for r in rules_for(class) {
                match r.if_silent {
                    Set(_) if r.ty == CKA_TRUSTED => assert!(p.template.get(r.ty).is_none()),
                    Set(b) => assert_eq!(flag_of(&p.template, r.ty), Some(b), "{}", r.name),
                    _ => assert!(p.template.get(r.ty).is_none(), "{}", r.name),
                }
                // A template matters only while its use is on, and a silent use is off.
                let reported = p.notes.iter().any(|n| n.ty == r.ty);
                let expected = !matches!(r.if_silent, HoldBack(Some(_)));
                assert_eq!(reported, expected, "{}", r.name);
            }
            // The mechanism list is a restriction no value can stand in for.
            assert!(p.hold);
            assert_eq!(p.extractable, None);
        }
    }

    #[test]
    fn malformed_flags_are_silence_never_false() {
        for bad in [vec![2u8], vec![1, 0, 0, 0], vec![]] {
            let p = plan_with(CKO_SECRET_KEY, |r| match r.ty {
                CKA_SENSITIVE | CKA_PRIVATE => Answer::Known(AttrValue::Bytes(bad.clone())),
                CKA_DESTROYABLE => Answer::Known(AttrValue::Bytes(bad.clone())),
                _ if r.shape == Bool => known_bool(false),
                _ => Answer::Known(AttrValue::Bytes(Vec::new())),
            });
            assert_eq!(flag_of(&p.template, CKA_SENSITIVE), Some(true));
            assert_eq!(flag_of(&p.template, CKA_PRIVATE), Some(true));
            assert_eq!(flag_of(&p.template, CKA_DESTROYABLE), Some(false));
            assert!(!p.hold);
        }
    }

    #[test]
    fn every_attribute_the_source_states_is_carried_as_stated() {
        let p = plan_with(CKO_PRIVATE_KEY, |r| match r.shape {
            Bool => known_bool(matches!(
                r.ty,
                CKA_PRIVATE | CKA_SENSITIVE | CKA_EXTRACTABLE | CKA_ALWAYS_AUTHENTICATE | CKA_SIGN
            )),
            Mechanisms => {
                Answer::Known(AttrValue::Bytes(CKM_SHA256_RSA_PKCS.to_ne_bytes().to_vec()))
            }
            Date => Answer::Known(AttrValue::Bytes(b"20300101".to_vec())),
            Array => Answer::Known(AttrValue::Template(Template::new())),
            _ => Answer::Known(AttrValue::Bytes(b"x".to_vec())),
        });
        assert!(p.notes.is_empty(), "{:?}", p.notes);
        assert_no_repeats(&p.template);
        assert_eq!(flag_of(&p.template, CKA_ALWAYS_AUTHENTICATE), Some(true));
        assert_eq!(flag_of(&p.template, CKA_EXTRACTABLE), Some(true));
        assert_eq!(flag_of(&p.template, CKA_MODIFIABLE), Some(false));
        assert_eq!(flag_of(&p.template, CKA_DECRYPT), Some(false));
        assert!(p.template.get(CKA_ALLOWED_MECHANISMS).is_some());
        assert!(p.template.get(CKA_END_DATE).is_some());
        assert_eq!(p.extractable, Some(true));
    }

    #[test]
    fn an_unreadable_template_holds_the_key_back_only_while_its_use_is_on() {
        for derive in [false, true] {
            let p = plan_with(CKO_SECRET_KEY, |r| match r.ty {
                CKA_DERIVE_TEMPLATE => silent(),
                CKA_DERIVE => known_bool(derive),
                _ if r.shape == Bool => known_bool(true),
                _ => Answer::Known(AttrValue::Bytes(Vec::new())),
            });
            assert_eq!(p.hold, derive);
        }
    }

    #[test]
    fn an_absent_template_is_none_but_an_absent_flag_or_mechanism_list_is_silence() {
        let absent = || Answer::Absent("the source does not return it".to_owned());
        let p = plan_with(CKO_SECRET_KEY, |r| match r.ty {
            CKA_WRAP_TEMPLATE | CKA_UNWRAP_TEMPLATE | CKA_DERIVE_TEMPLATE => absent(),
            _ if r.shape == Bool => known_bool(r.ty != CKA_TRUSTED),
            _ => Answer::Known(AttrValue::Bytes(Vec::new())),
        });
        assert!(!p.hold);
        assert!(p.notes.is_empty(), "{:?}", p.notes);
        let p = plan_with(CKO_SECRET_KEY, |r| match r.ty {
            CKA_ALLOWED_MECHANISMS | CKA_SENSITIVE => absent(),
            _ if r.shape == Bool => known_bool(false),
            _ => Answer::Known(AttrValue::Bytes(Vec::new())),
        });
        assert!(p.hold);
        assert_eq!(flag_of(&p.template, CKA_SENSITIVE), Some(true));
    }

    #[test]
    fn a_sensitive_key_is_made_private_and_reported() {
        let p = plan_with(CKO_SECRET_KEY, |r| match r.ty {
            CKA_SENSITIVE | CKA_EXTRACTABLE => known_bool(true),
            _ if r.shape == Bool => known_bool(false),
            _ => Answer::Known(AttrValue::Bytes(Vec::new())),
        });
        assert_eq!(flag_of(&p.template, CKA_PRIVATE), Some(true));
        assert_no_repeats(&p.template);
        assert!(
            p.notes
                .iter()
                .any(|n| n.ty == CKA_PRIVATE && n.mark == Mark::Stricter)
        );
    }

    #[test]
    fn a_contradicted_flag_takes_the_stricter_word() {
        let rules = rules_for(CKO_SECRET_KEY);
        let answers: Vec<Answer> = rules
            .iter()
            .map(|r| match r.shape {
                Bool => known_bool(matches!(r.ty, CKA_EXTRACTABLE | CKA_PRIVATE)),
                _ => Answer::Known(AttrValue::Bytes(Vec::new())),
            })
            .collect();
        let provenance = Provenance {
            always_sensitive: Some(true),
            never_extractable: Some(true),
        };
        let p = plan(CKO_SECRET_KEY, &rules, &answers, provenance, false);
        assert_eq!(flag_of(&p.template, CKA_SENSITIVE), Some(true));
        assert_eq!(flag_of(&p.template, CKA_EXTRACTABLE), Some(false));
        // The source said it is extractable: the wrap is still tried.
        assert_eq!(p.extractable, None);
    }

    #[test]
    fn attribute_templates_are_checked_element_by_element() {
        let ok = Template::new()
            .with(Attribute::bool(CKA_SENSITIVE, true))
            .with(Attribute::ulong(CKA_KEY_TYPE, CKK_AES));
        assert!(check_template(&ok).is_ok());
        let twice = ok.clone().with(Attribute::bool(CKA_SENSITIVE, false));
        assert!(check_template(&twice).is_err());
        let odd = Template::new().with(Attribute::bytes(CKA_EXTRACTABLE, vec![1, 0]));
        assert!(check_template(&odd).is_err());
        let nested = Template::new().with(Attribute::template(CKA_WRAP_TEMPLATE, Template::new()));
        assert!(check_template(&nested).is_err());
    }

    #[test]
    fn read_back_comparison_ignores_order_only() {
        let a = Template::new()
            .with(Attribute::bool(CKA_SENSITIVE, true))
            .with(Attribute::bool(CKA_EXTRACTABLE, false));
        let b: Template = a.iter().rev().cloned().collect();
        let fewer = Template::new().with(Attribute::bool(CKA_SENSITIVE, true));
        let t = |t: &Template| AttrValue::Template(t.clone());
        assert!(same(CKA_WRAP_TEMPLATE, &t(&a), &t(&b)));
        assert!(!same(CKA_WRAP_TEMPLATE, &t(&a), &t(&fewer)));
        let m = |v: &[CK_ULONG]| {
            AttrValue::Bytes(v.iter().flat_map(|x| x.to_ne_bytes()).collect::<Vec<u8>>())
        };
        assert!(same(CKA_ALLOWED_MECHANISMS, &m(&[1, 2]), &m(&[2, 1])));
        assert!(!same(CKA_ALLOWED_MECHANISMS, &m(&[1, 2]), &m(&[1])));
    }
}
