//! `CK_ATTRIBUTE[]` → owned `bridge::Template`, and the `C_GetAttributeValue` encoder that
//! fills the caller's template from the backend's answers.
//!
//! Attribute-array attributes (`bridge::TEMPLATE_ATTRIBUTES`: `CKA_WRAP_TEMPLATE`, ...) are
//! decoded and encoded recursively, at most [`MAX_TEMPLATE_DEPTH`] arrays deep.

use bridge::{AttrAnswer, AttrValue, Attribute, Error, Template, is_template_attribute};
use cryptoki_sys::{CK_ATTRIBUTE, CK_ULONG, CK_UNAVAILABLE_INFORMATION};

use super::ptr::{MAX_IO_LEN, in_bytes, read_array, to_ulong, to_usize, write_array, write_bytes};

/// The most attributes one call may pass, counting those inside attribute arrays.
pub(crate) const MAX_TEMPLATE_ATTRS: usize = 4096;
/// The longest single attribute value: 64 MiB.
pub(crate) const MAX_ATTR_VALUE_LEN: usize = 64 << 20;
/// How deep attribute arrays may nest: a template may hold e.g. a `CKA_WRAP_TEMPLATE` (depth 1)
/// which holds a `CKA_DERIVE_TEMPLATE` (depth 2), and no deeper. key_objects.md "Template
/// Attributes": "Implementations can limit permitted recursion ... returning
/// CKR_TEMPLATE_INCONSISTENT".
pub(crate) const MAX_TEMPLATE_DEPTH: usize = 2;

/// Size of one `CK_ATTRIBUTE`: the unit of an attribute array's `ulValueLen`.
const ATTR_SIZE: usize = size_of::<CK_ATTRIBUTE>();

/// What is left of a call's allowance while a template is decoded.
struct Budget {
    attrs: usize,
    bytes: usize,
}

/// Decodes the caller's template (`pTemplate`, `ulCount`) into an owned `Template`.
///
/// NULL with a count of 0 is the empty template. Refused before reading: more than
/// [`MAX_TEMPLATE_ATTRS`] attributes in all, or more than [`MAX_IO_LEN`] value bytes in all
/// (`CKR_ARGUMENTS_BAD`); a value over [`MAX_ATTR_VALUE_LEN`] (`CKR_ATTRIBUTE_VALUE_INVALID`);
/// arrays nested deeper than [`MAX_TEMPLATE_DEPTH`] (`CKR_TEMPLATE_INCONSISTENT`). A NULL
/// `pValue` with a non-zero length is `CKR_ARGUMENTS_BAD`.
///
/// # Safety
///
/// If `ptr` is non-null it must be valid for reads of `count` `CK_ATTRIBUTE`s, each `pValue`
/// must be NULL or valid for reads of `ulValueLen` bytes, and the `pValue` of an
/// attribute-array attribute must point to `ulValueLen / sizeof(CK_ATTRIBUTE)` attributes
/// satisfying the same contract.
pub(crate) unsafe fn template_in(
    ptr: *const CK_ATTRIBUTE,
    count: CK_ULONG,
) -> Result<Template, Error> {
    let mut budget = Budget {
        attrs: MAX_TEMPLATE_ATTRS,
        bytes: MAX_IO_LEN,
    };
    // SAFETY: forwarded from the caller.
    unsafe { decode_array(ptr, count, 0, &mut budget) }
}

/// Decodes a template that makes or changes an object (`C_CreateObject`, `C_CopyObject`,
/// `C_SetAttributeValue`, `C_GenerateKey(Pair)`, `C_UnwrapKey`, `C_DeriveKey`): as
/// [`template_in`], and an attribute type given twice (at any depth) is
/// `CKR_TEMPLATE_INCONSISTENT` before any backend sees it.
///
/// # Safety
///
/// As [`template_in`].
pub(crate) unsafe fn object_template_in(
    ptr: *const CK_ATTRIBUTE,
    count: CK_ULONG,
) -> Result<Template, Error> {
    // SAFETY: forwarded from the caller.
    let t = unsafe { template_in(ptr, count) }?;
    t.refuse_duplicates()?;
    Ok(t)
}

/// # Safety
///
/// As [`template_in`].
unsafe fn decode_array(
    ptr: *const CK_ATTRIBUTE,
    count: CK_ULONG,
    depth: usize,
    budget: &mut Budget,
) -> Result<Template, Error> {
    // SAFETY: forwarded from the caller; the count is checked against the budget first.
    let raw = unsafe { read_array(ptr, count, budget.attrs) }?;
    budget.attrs -= raw.len();
    raw.iter()
        .map(|attr| {
            // SAFETY: `attr` came from the caller's array, whose values the caller vouches for.
            unsafe { decode_attribute(attr, depth, budget) }
        })
        .collect()
}

/// # Safety
///
/// `attr.pValue` must satisfy [`template_in`]'s contract for `attr.ulValueLen`.
unsafe fn decode_attribute(
    attr: &CK_ATTRIBUTE,
    depth: usize,
    budget: &mut Budget,
) -> Result<Attribute, Error> {
    let len = to_usize(attr.ulValueLen, Error::AttributeValueInvalid)?;
    if len > MAX_ATTR_VALUE_LEN {
        return Err(Error::AttributeValueInvalid);
    }
    if attr.pValue.is_null() && len != 0 {
        return Err(Error::ArgumentsBad);
    }
    if is_template_attribute(attr.type_) {
        if depth >= MAX_TEMPLATE_DEPTH {
            return Err(Error::TemplateInconsistent);
        }
        if len % ATTR_SIZE != 0 {
            return Err(Error::AttributeValueInvalid);
        }
        let count = to_ulong(len / ATTR_SIZE)?;
        let inner = attr.pValue.cast::<CK_ATTRIBUTE>().cast_const();
        // SAFETY: the caller vouches that an attribute array's pValue holds `count` attributes.
        let inner = unsafe { decode_array(inner, count, depth + 1, budget) }?;
        return Ok(Attribute::template(attr.type_, inner));
    }
    budget.bytes = budget.bytes.checked_sub(len).ok_or(Error::ArgumentsBad)?;
    // SAFETY: the caller vouches for `ulValueLen` readable bytes at a non-null pValue.
    let value = unsafe { in_bytes(attr.pValue.cast::<u8>(), attr.ulValueLen) }?;
    Ok(Attribute::bytes(attr.type_, value))
}

/// Reads the caller's `C_GetAttributeValue` template: the types asked for, and where each
/// value is to go. At most [`MAX_TEMPLATE_ATTRS`] entries.
///
/// # Safety
///
/// If `ptr` is non-null it must be valid for reads of `count` `CK_ATTRIBUTE`s.
pub(crate) unsafe fn attribute_requests(
    ptr: *const CK_ATTRIBUTE,
    count: CK_ULONG,
) -> Result<Vec<CK_ATTRIBUTE>, Error> {
    // SAFETY: forwarded from the caller.
    unsafe { read_array(ptr, count, MAX_TEMPLATE_ATTRS) }
}

/// What went wrong across the entries of one `C_GetAttributeValue`; the entries are all
/// processed first ("the call MUST nonetheless have processed every attribute").
#[derive(Default)]
struct Problems {
    /// The caller's attribute array does not fit the stored template.
    inconsistent: bool,
    sensitive: bool,
    type_invalid: bool,
    too_small: bool,
}

impl Problems {
    /// The code returned. The specification lets us pick any of the applicable ones; the
    /// precedence is CKR_TEMPLATE_INCONSISTENT (the request itself is malformed), then as
    /// SoftHSM does: CKR_ATTRIBUTE_SENSITIVE, CKR_ATTRIBUTE_TYPE_INVALID,
    /// CKR_BUFFER_TOO_SMALL.
    fn into_result(self) -> Result<(), Error> {
        if self.inconsistent {
            Err(Error::TemplateInconsistent)
        } else if self.sensitive {
            Err(Error::AttributeSensitive)
        } else if self.type_invalid {
            Err(Error::AttributeTypeInvalid)
        } else if self.too_small {
            // No single needed length describes several attributes: the lengths are per entry.
            Err(Error::BufferTooSmall { needed: 0 })
        } else {
            Ok(())
        }
    }
}

/// Fills the caller's template with the backend's answers, following object_mgmt_functions.md
/// (C_GetAttributeValue, cases 1 to 5) and key_objects.md ("Template Attributes") for
/// attribute arrays. `entries` is the template as read by [`attribute_requests`]; every entry
/// is processed, written back, and then the chosen error (see `Problems::into_result`) is
/// returned.
///
/// # Safety
///
/// `ptr` must be the template `entries` was read from, valid for writes of `entries.len()`
/// attributes; each non-NULL `pValue` must be valid for writes of its `ulValueLen` bytes, and
/// the `pValue` of an attribute-array entry must satisfy this contract for its inner array.
pub(crate) unsafe fn fill_answers(
    ptr: *mut CK_ATTRIBUTE,
    mut entries: Vec<CK_ATTRIBUTE>,
    answers: &[AttrAnswer],
) -> Result<(), Error> {
    if answers.len() != entries.len() {
        return Err(Error::Internal(
            "backend answered a different number of attributes",
        ));
    }
    let mut problems = Problems::default();
    for (entry, answer) in entries.iter_mut().zip(answers) {
        match answer {
            // Case 1: "cannot be revealed because the object is sensitive or unextractable".
            AttrAnswer::Sensitive => {
                entry.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                problems.sensitive = true;
            }
            // Case 2: "the object does not possess such an attribute".
            AttrAnswer::Invalid => {
                entry.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                problems.type_invalid = true;
            }
            AttrAnswer::Value(value) => {
                // SAFETY: the entry's buffers are the caller's, vouched for by the contract.
                unsafe { fill_value(entry, value, 0, &mut problems) }?;
            }
        }
    }
    // SAFETY: `ptr` is the caller's template of `entries.len()` attributes.
    unsafe { write_array(ptr, &entries) };
    problems.into_result()
}

/// Cases 3 to 5 for one entry whose attribute has a value. `depth` is the depth of the array
/// holding `entry` (0 for the caller's template).
///
/// # Safety
///
/// As [`fill_answers`], for `entry`.
unsafe fn fill_value(
    entry: &mut CK_ATTRIBUTE,
    value: &AttrValue,
    depth: usize,
    problems: &mut Problems,
) -> Result<(), Error> {
    match value {
        AttrValue::Bytes(bytes) => {
            if entry.pValue.is_null() {
                // Case 3: report the exact length.
                entry.ulValueLen = to_ulong(bytes.len())?;
            } else if fits(entry.ulValueLen, bytes.len()) {
                // Case 4: copy and report the exact length.
                // SAFETY: the caller declared `ulValueLen >= bytes.len()` writable bytes.
                unsafe { write_bytes(entry.pValue.cast::<u8>(), bytes) };
                entry.ulValueLen = to_ulong(bytes.len())?;
            } else {
                // Case 5.
                entry.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                problems.too_small = true;
            }
            Ok(())
        }
        AttrValue::Template(template) => {
            // SAFETY: forwarded from the caller.
            unsafe { fill_template(entry, template, depth, problems) }
        }
    }
}

/// Whether a buffer of `room` bytes (as the caller declared it) holds `needed` bytes.
fn fits(room: CK_ULONG, needed: usize) -> bool {
    usize::try_from(room).is_ok_and(|room| room >= needed)
}

/// An attribute-array value (key_objects.md, "Template Attributes").
///
/// - `pValue` NULL: the length, `n * sizeof(CK_ATTRIBUTE)`.
/// - The caller's array has every type set to `CK_UNAVAILABLE_INFORMATION`: discovery; the
///   types and value lengths are written, `pValue`s are left alone.
/// - Every type set: each entry is filled by the same rules as the top level; the array may
///   be a subset of the stored template, but a type it does not hold is
///   `CKR_TEMPLATE_INCONSISTENT`, as is a mix of set and unset types.
///
/// # Safety
///
/// As [`fill_answers`], for `entry`.
unsafe fn fill_template(
    entry: &mut CK_ATTRIBUTE,
    template: &Template,
    depth: usize,
    problems: &mut Problems,
) -> Result<(), Error> {
    let needed = template
        .len()
        .checked_mul(ATTR_SIZE)
        .ok_or(Error::Internal("attribute array too long"))?;
    if entry.pValue.is_null() {
        entry.ulValueLen = to_ulong(needed)?;
        return Ok(());
    }
    let inner_ptr = entry.pValue.cast::<CK_ATTRIBUTE>();
    // SAFETY: forwarded from the caller.
    let Some(mut inner) = (unsafe { read_inner(entry, depth) }) else {
        entry.ulValueLen = CK_UNAVAILABLE_INFORMATION;
        problems.inconsistent = true;
        return Ok(());
    };
    // Discovery: every type CK_UNAVAILABLE_INFORMATION (the specification's form), or a
    // zero-filled array (type 0, no buffer, no length) with room for the whole template: what
    // callers send that read these arrays as other tokens fill them. Read as queries, those
    // entries would all ask for CKA_CLASS (type 0), which discovery answers alike where the
    // template holds only that.
    let zeroed = |a: &CK_ATTRIBUTE| a.type_ == 0 && a.pValue.is_null() && a.ulValueLen == 0;
    let discovery = inner.iter().all(|a| a.type_ == CK_UNAVAILABLE_INFORMATION)
        || (!inner.is_empty() && inner.len() >= template.len() && inner.iter().all(zeroed));
    if discovery {
        let Some(slots) = inner.get_mut(..template.len()) else {
            // "the length specified in ulValueLen MUST be large enough to hold all attributes
            // in the array"
            entry.ulValueLen = CK_UNAVAILABLE_INFORMATION;
            problems.too_small = true;
            return Ok(());
        };
        for (slot, attr) in slots.iter_mut().zip(template.iter()) {
            slot.type_ = attr.ty;
            slot.ulValueLen = value_len(&attr.value)?;
        }
        // SAFETY: the caller's array holds at least `slots.len()` attributes.
        unsafe { write_array(inner_ptr, slots) };
        entry.ulValueLen = to_ulong(needed)?;
        return Ok(());
    }
    if inner.iter().any(|a| a.type_ == CK_UNAVAILABLE_INFORMATION) {
        // "If either *all* or *none* of the attribute type fields are set to
        // CK_UNAVAILABLE_INFORMATION ... the template is considered valid"; this is neither.
        entry.ulValueLen = CK_UNAVAILABLE_INFORMATION;
        problems.inconsistent = true;
        return Ok(());
    }
    for slot in inner.iter_mut() {
        match template.get(slot.type_) {
            Some(attr) => {
                // SAFETY: the caller vouches for the inner entries' buffers.
                unsafe { fill_value(slot, &attr.value, depth + 1, problems) }?;
            }
            None => {
                slot.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                problems.inconsistent = true;
            }
        }
    }
    // SAFETY: the caller's array holds `inner.len()` attributes.
    unsafe { write_array(inner_ptr, &inner) };
    entry.ulValueLen = to_ulong(inner.len() * ATTR_SIZE)?;
    Ok(())
}

/// Reads the caller's inner attribute array of `entry` (non-NULL `pValue`), or `None` when it
/// cannot be accepted: nested too deep, a length that is not a whole number of attributes, or
/// more than [`MAX_TEMPLATE_ATTRS`] entries.
///
/// # Safety
///
/// As [`fill_answers`], for `entry`.
unsafe fn read_inner(entry: &CK_ATTRIBUTE, depth: usize) -> Option<Vec<CK_ATTRIBUTE>> {
    if depth >= MAX_TEMPLATE_DEPTH {
        return None;
    }
    let room = usize::try_from(entry.ulValueLen).ok()?;
    if room % ATTR_SIZE != 0 {
        return None;
    }
    let count = CK_ULONG::try_from(room / ATTR_SIZE).ok()?;
    let ptr = entry.pValue.cast::<CK_ATTRIBUTE>().cast_const();
    // SAFETY: the caller vouches for an array of `count` attributes at a non-NULL pValue.
    unsafe { read_array(ptr, count, MAX_TEMPLATE_ATTRS) }.ok()
}

/// The `ulValueLen` that describes `value`.
fn value_len(value: &AttrValue) -> Result<CK_ULONG, Error> {
    match value {
        AttrValue::Bytes(b) => to_ulong(b.len()),
        AttrValue::Template(t) => to_ulong(
            t.len()
                .checked_mul(ATTR_SIZE)
                .ok_or(Error::Internal("attribute array too long"))?,
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::c_void;
    use std::ptr;

    use cryptoki_sys::*;

    use super::*;

    fn attr(ty: CK_ATTRIBUTE_TYPE, value: &mut [u8]) -> CK_ATTRIBUTE {
        CK_ATTRIBUTE {
            type_: ty,
            pValue: value.as_mut_ptr().cast::<c_void>(),
            ulValueLen: CK_ULONG::try_from(value.len()).unwrap(),
        }
    }

    fn array_attr(ty: CK_ATTRIBUTE_TYPE, inner: &mut [CK_ATTRIBUTE]) -> CK_ATTRIBUTE {
        CK_ATTRIBUTE {
            type_: ty,
            pValue: inner.as_mut_ptr().cast::<c_void>(),
            ulValueLen: CK_ULONG::try_from(inner.len() * ATTR_SIZE).unwrap(),
        }
    }

    fn null_attr(ty: CK_ATTRIBUTE_TYPE, len: CK_ULONG) -> CK_ATTRIBUTE {
        CK_ATTRIBUTE {
            type_: ty,
            pValue: ptr::null_mut(),
            ulValueLen: len,
        }
    }

    fn decode(t: &[CK_ATTRIBUTE]) -> Result<Template, Error> {
        // SAFETY: the tests build every array and value buffer to the sizes they declare.
        unsafe { template_in(t.as_ptr(), CK_ULONG::try_from(t.len()).unwrap()) }
    }

    #[test]
    fn decodes_plain_and_nested_template() {
        let mut class = CKO_SECRET_KEY.to_ne_bytes();
        let mut yes = [CK_TRUE];
        let mut inner = [attr(CKA_CLASS, &mut class), attr(CKA_EXTRACTABLE, &mut yes)];
        let mut outer_label = *b"kek";
        let t = [
            attr(CKA_LABEL, &mut outer_label),
            array_attr(CKA_WRAP_TEMPLATE, &mut inner),
        ];
        let got = decode(&t).unwrap();
        let want = Template::new()
            .with(Attribute::bytes(CKA_LABEL, &b"kek"[..]))
            .with(Attribute::template(
                CKA_WRAP_TEMPLATE,
                Template::new()
                    .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
                    .with(Attribute::bool(CKA_EXTRACTABLE, true)),
            ));
        assert_eq!(got, want);
    }

    #[test]
    fn null_template_with_zero_count_is_empty() {
        // SAFETY: NULL with count 0 is never read.
        assert_eq!(unsafe { template_in(ptr::null(), 0) }, Ok(Template::new()));
        assert_eq!(
            // SAFETY: NULL with a count is refused before reading.
            unsafe { template_in(ptr::null(), 1) },
            Err(Error::ArgumentsBad)
        );
    }

    #[test]
    fn null_value_with_length_is_arguments_bad() {
        assert_eq!(decode(&[null_attr(CKA_LABEL, 4)]), Err(Error::ArgumentsBad));
        // NULL with length 0 is an empty value.
        assert_eq!(
            decode(&[null_attr(CKA_LABEL, 0)]),
            Ok(Template::new().with(Attribute::bytes(CKA_LABEL, Vec::new())))
        );
    }

    #[test]
    fn over_long_value_is_refused_before_reading() {
        let len = CK_ULONG::try_from(MAX_ATTR_VALUE_LEN + 1).unwrap();
        let a = CK_ATTRIBUTE {
            type_: CKA_VALUE,
            pValue: ptr::NonNull::<c_void>::dangling().as_ptr(),
            ulValueLen: len,
        };
        assert_eq!(decode(&[a]), Err(Error::AttributeValueInvalid));
        let a = CK_ATTRIBUTE {
            ulValueLen: CK_UNAVAILABLE_INFORMATION,
            ..a
        };
        assert_eq!(decode(&[a]), Err(Error::AttributeValueInvalid));
    }

    #[test]
    fn too_many_attributes_is_arguments_bad() {
        let t = vec![null_attr(CKA_LABEL, 0); MAX_TEMPLATE_ATTRS + 1];
        assert_eq!(decode(&t), Err(Error::ArgumentsBad));
        // The limit counts attributes inside attribute arrays too.
        let mut inner = vec![null_attr(CKA_LABEL, 0); MAX_TEMPLATE_ATTRS];
        let t = [
            null_attr(CKA_ID, 0),
            array_attr(CKA_WRAP_TEMPLATE, &mut inner),
        ];
        assert_eq!(decode(&t), Err(Error::ArgumentsBad));
    }

    #[test]
    fn attribute_array_length_must_be_whole_attributes() {
        let mut inner = [null_attr(CKA_LABEL, 0)];
        let mut a = array_attr(CKA_WRAP_TEMPLATE, &mut inner);
        a.ulValueLen -= 1;
        assert_eq!(decode(&[a]), Err(Error::AttributeValueInvalid));
    }

    #[test]
    fn over_deep_nesting_is_template_inconsistent() {
        let mut level3 = [null_attr(CKA_LABEL, 0)];
        let mut level2 = [array_attr(CKA_DERIVE_TEMPLATE, &mut level3)];
        let mut level1 = [array_attr(CKA_UNWRAP_TEMPLATE, &mut level2)];
        let t = [array_attr(CKA_WRAP_TEMPLATE, &mut level1)];
        assert_eq!(decode(&t), Err(Error::TemplateInconsistent));
        // Two levels are accepted.
        let t = [array_attr(CKA_WRAP_TEMPLATE, &mut level2)];
        assert!(decode(&t).is_ok());
    }

    fn fill(t: &mut [CK_ATTRIBUTE], answers: &[AttrAnswer]) -> Result<(), Error> {
        let count = CK_ULONG::try_from(t.len()).unwrap();
        // SAFETY: the tests build every array and buffer to the sizes they declare.
        let entries = unsafe { attribute_requests(t.as_ptr(), count) }.unwrap();
        // SAFETY: as above.
        unsafe { fill_answers(t.as_mut_ptr(), entries, answers) }
    }

    fn bytes(b: &[u8]) -> AttrAnswer {
        AttrAnswer::Value(AttrValue::Bytes(b.to_vec()))
    }

    #[test]
    fn encoder_applies_every_case_and_reports_sensitive_first() {
        let mut fits = [0u8; 8];
        let mut short = [0u8; 2];
        let mut t = [
            null_attr(CKA_LABEL, 0),       // case 3: length only
            attr(CKA_ID, &mut fits),       // case 4: copied
            attr(CKA_SUBJECT, &mut short), // case 5: too small
            null_attr(CKA_VALUE, 0),       // case 1: sensitive
            null_attr(CKA_MODULUS, 0),     // case 2: invalid
        ];
        let answers = [
            bytes(b"label"),
            bytes(b"id"),
            bytes(b"subject"),
            AttrAnswer::Sensitive,
            AttrAnswer::Invalid,
        ];
        assert_eq!(fill(&mut t, &answers), Err(Error::AttributeSensitive));
        assert_eq!(t[0].ulValueLen, 5);
        assert_eq!(t[1].ulValueLen, 2);
        assert_eq!(&fits[..2], b"id");
        assert_eq!(t[2].ulValueLen, CK_UNAVAILABLE_INFORMATION);
        assert_eq!(short, [0, 0]);
        assert_eq!(t[3].ulValueLen, CK_UNAVAILABLE_INFORMATION);
        assert_eq!(t[4].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    }

    #[test]
    fn encoder_precedence_type_invalid_then_buffer_too_small() {
        let mut short = [0u8; 1];
        let mut t = [attr(CKA_ID, &mut short), null_attr(CKA_MODULUS, 0)];
        let r = fill(&mut t, &[bytes(b"id"), AttrAnswer::Invalid]);
        assert_eq!(r, Err(Error::AttributeTypeInvalid));
        let mut t = [attr(CKA_ID, &mut short)];
        let r = fill(&mut t, &[bytes(b"id")]);
        assert_eq!(r.map_err(|e| e.rv()), Err(CKR_BUFFER_TOO_SMALL));
        let mut t = [null_attr(CKA_ID, 0)];
        assert_eq!(fill(&mut t, &[bytes(b"id")]), Ok(()));
    }

    #[test]
    fn encoder_refuses_mismatched_answer_count() {
        let mut t = [null_attr(CKA_ID, 0)];
        assert!(matches!(fill(&mut t, &[]), Err(Error::Internal(_))));
    }

    fn wrap_template_answer() -> AttrAnswer {
        AttrAnswer::Value(AttrValue::Template(
            Template::new()
                .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
                .with(Attribute::bytes(CKA_LABEL, &b"inner"[..])),
        ))
    }

    #[test]
    fn encoder_nested_template_length_discovery_and_fill() {
        let answer = [wrap_template_answer()];

        // Pass 1: pValue NULL gives the array's size.
        let mut t = [null_attr(CKA_WRAP_TEMPLATE, 0)];
        assert_eq!(fill(&mut t, &answer), Ok(()));
        assert_eq!(t[0].ulValueLen, CK_ULONG::try_from(2 * ATTR_SIZE).unwrap());

        // Pass 2: all types unavailable: types and lengths are written, pValue stays NULL.
        let mut inner = [null_attr(CK_UNAVAILABLE_INFORMATION, 0); 2];
        let mut t = [array_attr(CKA_WRAP_TEMPLATE, &mut inner)];
        assert_eq!(fill(&mut t, &answer), Ok(()));
        assert_eq!(t[0].ulValueLen, CK_ULONG::try_from(2 * ATTR_SIZE).unwrap());
        assert_eq!(inner[0].type_, CKA_CLASS);
        assert_eq!(
            inner[0].ulValueLen,
            CK_ULONG::try_from(size_of::<CK_ULONG>()).unwrap()
        );
        assert!(inner[0].pValue.is_null());
        assert_eq!(inner[1].type_, CKA_LABEL);
        assert_eq!(inner[1].ulValueLen, 5);

        // Pass 3: buffers provided: values are copied.
        let mut class = [0u8; size_of::<CK_ULONG>()];
        let mut label = [0u8; 5];
        let mut inner = [attr(CKA_CLASS, &mut class), attr(CKA_LABEL, &mut label)];
        let mut t = [array_attr(CKA_WRAP_TEMPLATE, &mut inner)];
        assert_eq!(fill(&mut t, &answer), Ok(()));
        assert_eq!(CK_ULONG::from_ne_bytes(class), CKO_SECRET_KEY);
        assert_eq!(&label, b"inner");
    }

    #[test]
    fn encoder_nested_template_zero_filled_is_discovery() {
        let answer = [wrap_template_answer()];
        // A zero-filled array with room for the template (and more): types and lengths.
        let mut inner = [null_attr(0, 0); 3];
        let mut t = [array_attr(CKA_WRAP_TEMPLATE, &mut inner)];
        assert_eq!(fill(&mut t, &answer), Ok(()));
        assert_eq!(t[0].ulValueLen, CK_ULONG::try_from(2 * ATTR_SIZE).unwrap());
        assert_eq!(inner[0].type_, CKA_CLASS);
        assert_eq!(
            inner[0].ulValueLen,
            CK_ULONG::try_from(size_of::<CK_ULONG>()).unwrap()
        );
        assert_eq!(inner[1].type_, CKA_LABEL);
        assert_eq!(inner[1].ulValueLen, 5);
        assert!(inner[1].pValue.is_null());
        assert_eq!((inner[2].type_, inner[2].ulValueLen), (0, 0));
        // Shorter than the template: a query of CKA_CLASS (type 0), answered as such.
        let mut inner = [null_attr(0, 0)];
        let mut t = [array_attr(CKA_WRAP_TEMPLATE, &mut inner)];
        assert_eq!(fill(&mut t, &answer), Ok(()));
        assert_eq!(inner[0].type_, CKA_CLASS);
        assert_eq!(
            inner[0].ulValueLen,
            CK_ULONG::try_from(size_of::<CK_ULONG>()).unwrap()
        );
    }

    #[test]
    fn encoder_nested_template_short_cases() {
        let answer = [wrap_template_answer()];

        // Discovery with room for one attribute of two: too small.
        let mut inner = [null_attr(CK_UNAVAILABLE_INFORMATION, 0)];
        let mut t = [array_attr(CKA_WRAP_TEMPLATE, &mut inner)];
        assert_eq!(
            fill(&mut t, &answer).map_err(|e| e.rv()),
            Err(CKR_BUFFER_TOO_SMALL)
        );
        assert_eq!(t[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);

        // A subset by type is allowed; a short inner buffer is too small.
        let mut label = [0u8; 2];
        let mut inner = [attr(CKA_LABEL, &mut label)];
        let mut t = [array_attr(CKA_WRAP_TEMPLATE, &mut inner)];
        assert_eq!(
            fill(&mut t, &answer).map_err(|e| e.rv()),
            Err(CKR_BUFFER_TOO_SMALL)
        );
        assert_eq!(inner[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);

        // A type the stored template does not hold, or a mix, is inconsistent.
        let mut inner = [null_attr(CKA_MODULUS, 0)];
        let mut t = [array_attr(CKA_WRAP_TEMPLATE, &mut inner)];
        assert_eq!(fill(&mut t, &answer), Err(Error::TemplateInconsistent));
        let mut inner = [
            null_attr(CKA_LABEL, 0),
            null_attr(CK_UNAVAILABLE_INFORMATION, 0),
        ];
        let mut t = [array_attr(CKA_WRAP_TEMPLATE, &mut inner)];
        assert_eq!(fill(&mut t, &answer), Err(Error::TemplateInconsistent));
        assert_eq!(t[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    }
}
