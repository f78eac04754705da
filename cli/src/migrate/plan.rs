//! The plan for one object: the template the destination gets, and a note for every
//! attribute not carried exactly.

use std::collections::BTreeSet;

use bridge::{AttrValue, Attribute, Template, ULONG_SIZE};
use cryptoki_sys::*;

use super::rules::{Bool, Date, HoldBack, Mechanisms, Omit, Rule, Set, element_shape};
use super::{Answer, checked};

/// How an attribute differs from the source in the copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mark {
    /// More protected than (or not known to be as open as) the source.
    Stricter,
    /// Not carried: a restriction or a descriptor the copy does not have.
    Lost,
}

/// One attribute not carried exactly, for the report.
#[derive(Clone, Debug)]
pub(super) struct Note {
    pub(super) mark: Mark,
    pub(super) ty: CK_ATTRIBUTE_TYPE,
    pub(super) text: String,
}

/// The carried attributes of one object, as the destination will get them.
#[derive(Debug, Default)]
pub(super) struct Plan {
    pub(super) template: Template,
    pub(super) notes: Vec<Note>,
    /// A restriction could not be read: the object stays unless `--allow-loss`.
    pub(super) hold: bool,
    /// The source's `CKA_EXTRACTABLE`, if it said.
    pub(super) extractable: Option<bool>,
}

/// Sets `attr` in `t`, replacing an attribute of the same type: a template never repeats one.
pub(super) fn put(t: &mut Template, attr: Attribute) {
    match t.0.iter_mut().find(|a| a.ty == attr.ty) {
        Some(a) => *a = attr,
        None => t.0.push(attr),
    }
}

pub(super) fn without(t: &Template, types: &[CK_ATTRIBUTE_TYPE]) -> Template {
    t.iter()
        .filter(|a| !types.contains(&a.ty))
        .cloned()
        .collect()
}

pub(super) fn flag_of(t: &Template, ty: CK_ATTRIBUTE_TYPE) -> Option<bool> {
    t.get(ty).and_then(|a| a.as_bool().ok())
}

fn on_off(b: bool) -> &'static str {
    if b { "TRUE" } else { "FALSE" }
}

/// The source's provenance flags of a key (`CKA_ALWAYS_SENSITIVE`, `CKA_NEVER_EXTRACTABLE`):
/// not carried (the destination sets its own), but a source that contradicts them is taken at
/// its stricter word.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Provenance {
    pub(super) always_sensitive: Option<bool>,
    pub(super) never_extractable: Option<bool>,
}

/// The destination's template for an object of `class` whose source answered `answers` for
/// `rules` (in order), with what could not be carried exactly.
pub(super) fn plan(
    class: CK_OBJECT_CLASS,
    rules: &[&'static Rule],
    answers: &[Answer],
    provenance: Provenance,
    loss: bool,
) -> Plan {
    let mut p = Plan::default();
    let mut deferred = Vec::new();
    for (r, a) in rules.iter().zip(answers) {
        let value = match a {
            Answer::Known(v) => {
                checked(r.shape, v).map_err(|why| format!("the source gave a {why}"))
            }
            // An attribute template has no default: an object without one says so with
            // CKR_ATTRIBUTE_TYPE_INVALID (FerroHSM, and SoftHSM for CKA_DERIVE_TEMPLATE), and
            // its copy has none either.
            Answer::Absent(_) if matches!(r.if_silent, HoldBack(Some(_))) => continue,
            Answer::Absent(why) | Answer::Silent(why) => Err(why.clone()),
        };
        match value {
            Ok(v) => {
                let attr = Attribute { ty: r.ty, value: v };
                if r.ty == CKA_EXTRACTABLE {
                    p.extractable = attr.as_bool().ok();
                }
                match (&attr.value, r.shape) {
                    (_, Bool) if r.ty == CKA_TRUSTED => {
                        if attr.as_bool().unwrap_or(false) {
                            p.notes.push(Note {
                                mark: Mark::Stricter,
                                ty: r.ty,
                                text: "TRUE in the source; only the destination's SO may set \
                                       it (check, then set it as SO)"
                                    .to_owned(),
                            });
                        }
                    }
                    // Empty lists, templates and dates are the same as none.
                    (AttrValue::Template(t), _) if t.is_empty() => {}
                    (AttrValue::Bytes(b), Mechanisms | Date) if b.is_empty() => {}
                    _ => put(&mut p.template, attr),
                }
            }
            Err(why) => match r.if_silent {
                Set(b) => {
                    if r.ty != CKA_TRUSTED {
                        put(&mut p.template, Attribute::bool(r.ty, b));
                    }
                    p.notes.push(Note {
                        mark: Mark::Stricter,
                        ty: r.ty,
                        text: format!("{why}; {} in the destination", on_off(b)),
                    });
                }
                HoldBack(usage) => deferred.push((r.ty, usage, why)),
                Omit => p.notes.push(Note {
                    mark: Mark::Lost,
                    ty: r.ty,
                    text: format!("{why}; left out"),
                }),
            },
        }
    }
    // A restriction that could not be read matters only while its use is on.
    for (ty, usage, why) in deferred {
        if usage.is_some_and(|u| flag_of(&p.template, u) != Some(true)) {
            continue;
        }
        p.hold = true;
        let text = if loss {
            format!("{why}; left out (--allow-loss): the copy is unrestricted there")
        } else {
            format!("{why}; without it the copy would be unrestricted (--allow-loss accepts that)")
        };
        p.notes.push(Note {
            mark: Mark::Lost,
            ty,
            text,
        });
    }
    // Contradictions: a key that was always sensitive is sensitive now; one that was never
    // extractable is not extractable now (CKA_SENSITIVE only turns TRUE, CKA_EXTRACTABLE only
    // FALSE).
    for (said, ty, stricter, other) in [
        (
            provenance.always_sensitive,
            CKA_SENSITIVE,
            true,
            "CKA_ALWAYS_SENSITIVE",
        ),
        (
            provenance.never_extractable,
            CKA_EXTRACTABLE,
            false,
            "CKA_NEVER_EXTRACTABLE",
        ),
    ] {
        if said == Some(true) && flag_of(&p.template, ty) == Some(!stricter) {
            put(&mut p.template, Attribute::bool(ty, stricter));
            if ty == CKA_EXTRACTABLE {
                p.extractable = None;
            }
            p.notes.push(Note {
                mark: Mark::Stricter,
                ty,
                text: format!(
                    "{} in the source, which also says {other}=TRUE (a contradiction); {} in \
                     the destination",
                    on_off(!stricter),
                    on_off(stricter)
                ),
            });
        }
    }
    // The firmware keeps sensitive, unextractable and always-authenticate keys private.
    if matches!(class, CKO_SECRET_KEY | CKO_PRIVATE_KEY)
        && flag_of(&p.template, CKA_PRIVATE) == Some(false)
        && (flag_of(&p.template, CKA_SENSITIVE) == Some(true)
            || flag_of(&p.template, CKA_EXTRACTABLE) == Some(false)
            || flag_of(&p.template, CKA_ALWAYS_AUTHENTICATE) == Some(true))
    {
        put(&mut p.template, Attribute::bool(CKA_PRIVATE, true));
        p.notes.push(Note {
            mark: Mark::Stricter,
            ty: CKA_PRIVATE,
            text: "FALSE in the source; TRUE in the destination, which keeps sensitive, \
                   unextractable and always-authenticate keys private"
                .to_owned(),
        });
    }
    p
}

/// Whether `got` (read back from the copy) keeps `want`, the value given for `ty`.
pub(super) fn same(ty: CK_ATTRIBUTE_TYPE, want: &AttrValue, got: &AttrValue) -> bool {
    match (element_shape(ty), want, got) {
        (Mechanisms, AttrValue::Bytes(a), AttrValue::Bytes(b)) => {
            let set = |x: &[u8]| -> BTreeSet<Vec<u8>> {
                x.chunks(ULONG_SIZE).map(<[u8]>::to_vec).collect()
            };
            a.len() % ULONG_SIZE == 0 && b.len() % ULONG_SIZE == 0 && set(a) == set(b)
        }
        (_, AttrValue::Template(a), AttrValue::Template(b)) => {
            a.len() == b.len() && a.iter().all(|x| b.iter().any(|y| x == y))
        }
        _ => want == got,
    }
}
