//! `C_GetAttributeValue` over a loaded module, as owned answers.
//!
//! 1. Lengths: every entry with `pValue` NULL. An entry left at `CK_UNAVAILABLE_INFORMATION` is
//!    sensitive when the module said `CKR_ATTRIBUTE_SENSITIVE` for it, else invalid. One call
//!    has one return code, so when several entries are unavailable each is asked alone.
//! 2. Values: a buffer of the reported length per entry. An attribute-array attribute
//!    (`CKA_WRAP_TEMPLATE`, ...) gets an array of that many `CK_ATTRIBUTE`s with NULL values,
//!    and the module fills in the element types and lengths (PKCS#11 v3.1, C_GetAttributeValue:
//!    "If the pValue of elements within the array is NULL_PTR then the ulValueLen of elements
//!    within the array will be set to the required length").
//! 3. Array values: the same arrays again, now with a buffer per element.
//!
//! If the object changes between passes (a length grows, an attribute disappears), the whole
//! query starts again, a few times at most. An attribute array longer than [`MAX_ELEMENTS`] is
//! a broken module, and so is one query needing more than `marshal::MAX_LEN` bytes in all;
//! an array with an element whose value the module will not give is answered as unavailable,
//! never shortened (a template missing one of its constraints would say less than it does).

use cryptoki_sys::*;

use super::contract_broken;
use super::ffi::Module;
use super::marshal::{Got, GotKind, OutTemplate, Want};
use crate::error::{Error, Result};
use crate::types::*;

/// How often the query starts again when the object changed between passes.
const ATTEMPTS: usize = 3;

/// The most elements an attribute array may have (a template names each attribute type once;
/// no real one comes near this).
const MAX_ELEMENTS: usize = 4096;

/// The answers for `types`, in order.
pub(super) fn get(
    module: &Module,
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    types: &[CK_ATTRIBUTE_TYPE],
) -> Result<Vec<AttrAnswer>> {
    for _ in 0..ATTEMPTS {
        if let Some(answers) = attempt(module, session, object, types)? {
            return Ok(answers);
        }
    }
    Err(contract_broken(
        "C_GetAttributeValue: answers kept changing between passes",
    ))
}

/// One query; `None` when the object changed between passes.
fn attempt(
    module: &Module,
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    types: &[CK_ATTRIBUTE_TYPE],
) -> Result<Option<Vec<AttrAnswer>>> {
    let mut answers: Vec<Option<AttrAnswer>> = types.iter().map(|_| None).collect();

    // Pass 1: lengths.
    let wants: Vec<Want> = types.iter().map(|ty| Want::Length(*ty)).collect();
    let (rv, lengths) = query(module, session, object, &wants)?;
    if !matches!(
        rv,
        CKR_OK | CKR_ATTRIBUTE_SENSITIVE | CKR_ATTRIBUTE_TYPE_INVALID
    ) {
        return Err(Error::from_rv(rv));
    }
    let unavailable = lengths
        .iter()
        .filter(|g| g.kind == GotKind::Unavailable)
        .count();

    let mut values = Vec::new(); // (index, want) for pass 2
    for (i, (ty, got)) in types.iter().zip(&lengths).enumerate() {
        let answer = match got.kind {
            GotKind::Unavailable => {
                // The call's code speaks for the entry only if it is the only one unavailable.
                let why = if unavailable == 1 {
                    rv
                } else {
                    match ask_alone(module, session, object, *ty)? {
                        Some(rv) => rv,
                        None => return Ok(None),
                    }
                };
                if why == CKR_ATTRIBUTE_SENSITIVE {
                    AttrAnswer::Sensitive
                } else {
                    AttrAnswer::Invalid
                }
            }
            GotKind::Length(len) => {
                values.push((i, value_want(*ty, len)?));
                continue;
            }
            GotKind::Value(_) | GotKind::Array(_) => {
                return Err(contract_broken(
                    "C_GetAttributeValue: a value for a NULL pValue",
                ));
            }
        };
        set(&mut answers, i, answer)?;
    }

    // Pass 2: values, and the element types and lengths of attribute arrays.
    let mut arrays = Vec::new(); // (index, want) for pass 3
    if !values.is_empty() {
        let wants: Vec<Want> = values.iter().map(|(_, w)| w.clone()).collect();
        let Some(got) = query_values(module, session, object, &wants)? else {
            return Ok(None);
        };
        for ((i, _), got) in values.iter().zip(got) {
            match got.kind {
                GotKind::Value(bytes) => {
                    set(&mut answers, *i, AttrAnswer::Value(AttrValue::Bytes(bytes)))?;
                }
                GotKind::Array(elements) => {
                    let wants = elements
                        .iter()
                        .map(|e| match e.kind {
                            GotKind::Length(len) => Want::Value(e.ty, len),
                            // An element whose length the module would not give: ask for it
                            // with no room, so that the array keeps its shape.
                            _ => Want::Value(e.ty, 0),
                        })
                        .collect();
                    let ty = types.get(*i).copied().unwrap_or(got.ty);
                    arrays.push((*i, Want::Array(ty, wants)));
                }
                GotKind::Unavailable => return Ok(None),
                GotKind::Length(_) => {
                    return Err(contract_broken("C_GetAttributeValue: a length for a value"));
                }
            }
        }
    }

    // Pass 3: the values of the elements of attribute arrays.
    if !arrays.is_empty() {
        let wants: Vec<Want> = arrays.iter().map(|(_, w)| w.clone()).collect();
        let Some(got) = query_values(module, session, object, &wants)? else {
            return Ok(None);
        };
        for ((i, _), got) in arrays.iter().zip(got) {
            let GotKind::Array(elements) = got.kind else {
                return Ok(None);
            };
            let template: Option<Template> = elements.into_iter().map(element).collect();
            let answer = match template {
                Some(t) => AttrAnswer::Value(AttrValue::Template(t)),
                None => AttrAnswer::Invalid,
            };
            set(&mut answers, *i, answer)?;
        }
    }

    answers
        .into_iter()
        .map(|a| a.ok_or_else(|| contract_broken("C_GetAttributeValue: an entry was lost")))
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// What to ask for in pass 2, given the length from pass 1.
fn value_want(ty: CK_ATTRIBUTE_TYPE, len: usize) -> Result<Want> {
    if !is_template_attribute(ty) {
        return Ok(Want::Value(ty, len));
    }
    let size = size_of::<CK_ATTRIBUTE>();
    if !len.is_multiple_of(size) {
        return Err(contract_broken(
            "C_GetAttributeValue: an attribute array length is not a whole number of attributes",
        ));
    }
    if len / size > MAX_ELEMENTS {
        return Err(contract_broken(
            "C_GetAttributeValue: an implausibly long attribute array",
        ));
    }
    Ok(Want::Array(ty, vec![Want::Length(0); len / size]))
}

/// An element of an attribute array as an attribute; `None` for an element without a value
/// or a nested array inside an array (which the spec does not define): the array as a whole
/// is then not reported.
fn element(got: Got) -> Option<Attribute> {
    match got.kind {
        GotKind::Value(bytes) if !is_template_attribute(got.ty) => {
            Some(Attribute::bytes(got.ty, bytes))
        }
        _ => {
            log::debug!(
                "C_GetAttributeValue: element {} of an attribute array has no value; the array \
                 is reported unavailable",
                attr_name(got.ty)
            );
            None
        }
    }
}

/// One `C_GetAttributeValue` call: the raw code and what was written.
fn query(
    module: &Module,
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    wants: &[Want],
) -> Result<(CK_RV, Vec<Got>)> {
    let mut template = OutTemplate::new(wants)?;
    let rv = module.get_attribute_value(session, object, &mut template)?;
    Ok((rv, template.results()?))
}

/// A values pass: `None` when the module's answer says the object changed since the lengths.
fn query_values(
    module: &Module,
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    wants: &[Want],
) -> Result<Option<Vec<Got>>> {
    let (rv, got) = query(module, session, object, wants)?;
    match rv {
        CKR_OK => Ok(Some(got)),
        CKR_ATTRIBUTE_SENSITIVE | CKR_ATTRIBUTE_TYPE_INVALID | CKR_BUFFER_TOO_SMALL => Ok(None),
        rv => Err(Error::from_rv(rv)),
    }
}

/// The code the module gives for `ty` alone; `None` when it is available after all.
fn ask_alone(
    module: &Module,
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    ty: CK_ATTRIBUTE_TYPE,
) -> Result<Option<CK_RV>> {
    let (rv, got) = query(module, session, object, &[Want::Length(ty)])?;
    match rv {
        CKR_ATTRIBUTE_SENSITIVE | CKR_ATTRIBUTE_TYPE_INVALID => Ok(Some(rv)),
        CKR_OK if got.first().is_some_and(|g| g.kind == GotKind::Unavailable) => Ok(Some(rv)),
        CKR_OK => Ok(None),
        rv => Err(Error::from_rv(rv)),
    }
}

fn set(answers: &mut [Option<AttrAnswer>], i: usize, answer: AttrAnswer) -> Result<()> {
    let slot = answers
        .get_mut(i)
        .ok_or_else(|| contract_broken("C_GetAttributeValue: an entry out of range"))?;
    *slot = Some(answer);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_want_refuses_implausibly_long_attribute_arrays() {
        let size = size_of::<CK_ATTRIBUTE>();
        assert!(value_want(CKA_WRAP_TEMPLATE, size << 55).is_err());
        assert!(value_want(CKA_WRAP_TEMPLATE, size * (MAX_ELEMENTS + 1)).is_err());
        assert!(value_want(CKA_WRAP_TEMPLATE, size * 3).is_ok());
    }

    #[test]
    fn an_element_without_a_value_is_none_never_dropped_quietly() {
        let valued = Got {
            ty: CKA_SENSITIVE,
            kind: GotKind::Value(vec![1]),
        };
        let silent = Got {
            ty: CKA_EXTRACTABLE,
            kind: GotKind::Unavailable,
        };
        let all: Option<Template> = [valued, silent].into_iter().map(element).collect();
        assert_eq!(all, None);
    }
}
