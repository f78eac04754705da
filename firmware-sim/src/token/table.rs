//! The in-memory object cache of a token, indexed by the attributes searches use most, so that
//! a search among thousands of objects looks at a handful.
//!
//! Token objects read from the store stay as their record (a few hundred bytes) until a call
//! first needs one: loading a token costs reading its records and indexing them by label, id
//! and class, not decoding (and, for public objects, unsealing) every object. The decoded
//! object is kept from then on. A record that does not decode is invisible, as a corrupt one
//! always was (one log line).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use bridge::{AttrValue, Result, Template};
use cryptoki_sys::*;

use crate::object::Object;
use crate::storage::codec;

/// The attributes that are indexed.
const INDEXED: [CK_ATTRIBUTE_TYPE; 3] = [CKA_LABEL, CKA_ID, CKA_CLASS];

/// Decodes a token object's record: (handle, rev, record) to the object.
pub(crate) type Decode = dyn Fn(CK_OBJECT_HANDLE, u64, &[u8]) -> Result<Object> + Send + Sync;

/// A token object as the store holds it, decoded on first use.
struct Stored {
    rev: u64,
    record: Box<[u8]>,
    decode: Arc<Decode>,
    /// The decoded object (`None`: the record does not decode).
    decoded: OnceLock<Option<Arc<Object>>>,
}

impl Stored {
    fn object(&self, handle: CK_OBJECT_HANDLE) -> Option<&Arc<Object>> {
        self.decoded
            .get_or_init(|| match (self.decode)(handle, self.rev, &self.record) {
                Ok(obj) => Some(Arc::new(obj)),
                Err(e) => {
                    // One bad record must not take the token down: it is invisible, as it is
                    // to a process that loads the token afresh (an older copy is not served).
                    log::error!("object {handle}: {e}");
                    None
                }
            })
            .as_ref()
    }
}

enum Entry {
    Object(Arc<Object>),
    Stored(Box<Stored>),
}

impl Entry {
    fn object(&self, handle: CK_OBJECT_HANDLE) -> Option<&Arc<Object>> {
        match self {
            Self::Object(o) => Some(o),
            Self::Stored(s) => s.object(handle),
        }
    }
}

/// The handles under one indexed value, in ascending order (most labels and ids name one
/// object: no allocation for those).
#[derive(Debug)]
enum Handles {
    One(CK_OBJECT_HANDLE),
    Many(Vec<CK_OBJECT_HANDLE>),
}

impl Handles {
    fn add(&mut self, handle: CK_OBJECT_HANDLE) {
        match self {
            Self::One(h) if *h == handle => {}
            Self::One(h) => {
                let mut v = vec![*h, handle];
                v.sort_unstable();
                *self = Self::Many(v);
            }
            // Handles mostly arrive in ascending order (a token's load): append, else insert.
            Self::Many(v) => match v.last() {
                Some(last) if *last >= handle => {
                    if let Err(at) = v.binary_search(&handle) {
                        v.insert(at, handle);
                    }
                }
                _ => v.push(handle),
            },
        }
    }

    /// Removes `handle`; whether none is left.
    fn remove(&mut self, handle: CK_OBJECT_HANDLE) -> bool {
        match self {
            Self::One(h) => *h == handle,
            Self::Many(v) => {
                if let Ok(at) = v.binary_search(&handle) {
                    v.remove(at);
                }
                v.is_empty()
            }
        }
    }

    fn as_slice(&self) -> &[CK_OBJECT_HANDLE] {
        match self {
            Self::One(h) => std::slice::from_ref(h),
            Self::Many(v) => v,
        }
    }
}

/// Objects by handle, plus indexes by label, id and class.
#[derive(Default)]
pub(crate) struct ObjectTable {
    by_handle: BTreeMap<CK_OBJECT_HANDLE, Entry>,
    /// For each of `INDEXED`, the handles under each value (ordered maps: no hashing of
    /// caller-chosen labels).
    index: [BTreeMap<Box<[u8]>, Handles>; 3],
}

/// The position of `ty` in `INDEXED`.
fn slot_of(ty: CK_ATTRIBUTE_TYPE) -> Option<usize> {
    INDEXED.iter().position(|t| *t == ty)
}

/// The indexed values of `obj`.
fn keys_of(obj: &Object) -> impl Iterator<Item = (CK_ATTRIBUTE_TYPE, &[u8])> {
    INDEXED
        .into_iter()
        .filter_map(|ty| match obj.attrs.get(&ty)? {
            AttrValue::Bytes(b) => Some((ty, b.as_slice())),
            AttrValue::Template(_) => None,
        })
}

impl ObjectTable {
    /// The object `handle` (decoded now if it was not yet).
    pub(crate) fn get(&self, handle: CK_OBJECT_HANDLE) -> Option<&Arc<Object>> {
        self.by_handle.get(&handle)?.object(handle)
    }

    /// The store revision of `handle` as cached, without decoding it.
    pub(crate) fn rev(&self, handle: CK_OBJECT_HANDLE) -> Option<u64> {
        match self.by_handle.get(&handle)? {
            Entry::Object(o) => Some(o.rev),
            Entry::Stored(s) => Some(s.rev),
        }
    }

    /// Number of objects of the classes `classes` (from the index: no object is decoded).
    pub(crate) fn count_classes(&self, classes: &[CK_OBJECT_CLASS]) -> usize {
        let Some(by_class) = slot_of(CKA_CLASS).and_then(|i| self.index.get(i)) else {
            return 0;
        };
        classes
            .iter()
            .filter_map(|c| by_class.get(c.to_ne_bytes().as_slice()))
            .map(|h| match h {
                Handles::One(_) => 1,
                Handles::Many(v) => v.len(),
            })
            .sum()
    }

    fn index_add(&mut self, handle: CK_OBJECT_HANDLE, keys: &[(CK_ATTRIBUTE_TYPE, &[u8])]) {
        for (ty, v) in keys {
            let Some(map) = slot_of(*ty).and_then(|i| self.index.get_mut(i)) else {
                continue;
            };
            match map.get_mut(*v) {
                Some(handles) => handles.add(handle),
                None => {
                    map.insert(Box::from(*v), Handles::One(handle));
                }
            }
        }
    }

    fn index_remove(&mut self, handle: CK_OBJECT_HANDLE, keys: &[(CK_ATTRIBUTE_TYPE, &[u8])]) {
        for (ty, v) in keys {
            let Some(map) = slot_of(*ty).and_then(|i| self.index.get_mut(i)) else {
                continue;
            };
            if map.get_mut(*v).is_some_and(|h| h.remove(handle)) {
                map.remove(*v);
            }
        }
    }

    /// Inserts or replaces an object.
    pub(crate) fn insert(&mut self, obj: Arc<Object>) {
        if self.by_handle.contains_key(&obj.handle) {
            self.remove(obj.handle);
        }
        let keys: Vec<_> = keys_of(&obj).collect();
        self.index_add(obj.handle, &keys);
        self.by_handle.insert(obj.handle, Entry::Object(obj));
    }

    /// Inserts or replaces a token object by its store record, to be decoded by `decode` when
    /// first used. A record whose indexed values cannot be read is decoded now (and is
    /// invisible if that fails too).
    pub(crate) fn insert_stored(
        &mut self,
        handle: CK_OBJECT_HANDLE,
        rev: u64,
        record: Vec<u8>,
        decode: &Arc<Decode>,
    ) {
        if self.by_handle.contains_key(&handle) {
            self.remove(handle);
        }
        let stored = Box::new(Stored {
            rev,
            record: record.into_boxed_slice(),
            decode: Arc::clone(decode),
            decoded: OnceLock::new(),
        });
        match codec::scan_public(&stored.record, &INDEXED) {
            Some(keys) => {
                self.index_add(handle, &keys);
                self.by_handle.insert(handle, Entry::Stored(stored));
            }
            None => {
                if let Some(obj) = stored.object(handle) {
                    let obj = Arc::clone(obj);
                    self.insert(obj);
                }
            }
        }
    }

    /// Removes an object.
    pub(crate) fn remove(&mut self, handle: CK_OBJECT_HANDLE) {
        let Some(entry) = self.by_handle.remove(&handle) else {
            return;
        };
        let keys: Vec<(CK_ATTRIBUTE_TYPE, &[u8])> = match &entry {
            Entry::Object(o) => keys_of(o).collect(),
            Entry::Stored(s) => codec::scan_public(&s.record, &INDEXED).unwrap_or_default(),
        };
        self.index_remove(handle, &keys);
    }

    /// Removes every session object `owner` created.
    pub(crate) fn remove_owned_by(&mut self, owner: CK_SESSION_HANDLE) {
        let gone: Vec<_> = self
            .by_handle
            .iter()
            .filter(|(_, e)| matches!(e, Entry::Object(o) if o.owner == Some(owner)))
            .map(|(h, _)| *h)
            .collect();
        for h in gone {
            self.remove(h);
        }
    }

    /// Drops token objects (all objects when the token was re-initialized).
    pub(crate) fn clear_token_objects(&mut self, everything: bool) {
        if everything {
            *self = Self::default();
            return;
        }
        let gone: Vec<_> = self
            .by_handle
            .iter()
            .filter(|(_, e)| match e {
                Entry::Object(o) => o.owner.is_none(),
                Entry::Stored(_) => true,
            })
            .map(|(h, _)| *h)
            .collect();
        for h in gone {
            self.remove(h);
        }
    }

    /// The objects that may match `template`: those under the most selective indexed
    /// attribute it names, else all (each decoded as it is looked at). The caller still
    /// matches each one.
    pub(crate) fn candidates<'a>(
        &'a self,
        template: &Template,
    ) -> Box<dyn Iterator<Item = &'a Arc<Object>> + 'a> {
        let mut best: Option<&[CK_OBJECT_HANDLE]> = None;
        for a in template.iter() {
            let Some(map) = slot_of(a.ty).and_then(|i| self.index.get(i)) else {
                continue;
            };
            let AttrValue::Bytes(b) = &a.value else {
                continue;
            };
            match map.get(b.as_slice()) {
                None => return Box::new(std::iter::empty()),
                Some(handles) => {
                    let set = handles.as_slice();
                    if best.is_none_or(|cur| set.len() < cur.len()) {
                        best = Some(set);
                    }
                }
            }
        }
        match best {
            Some(set) => Box::new(set.iter().filter_map(|h| self.get(*h))),
            None => Box::new(self.by_handle.iter().filter_map(|(h, e)| e.object(*h))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bridge::Attribute;

    use super::*;
    use crate::object::{Material, SecretAttrs};

    fn record(label: &[u8]) -> Vec<u8> {
        let attrs = [
            (CKA_CLASS, AttrValue::Bytes(CKO_DATA.to_ne_bytes().to_vec())),
            (CKA_LABEL, AttrValue::Bytes(label.to_vec())),
            (
                CKA_VALUE,
                AttrValue::Template(Template::new().with(Attribute::bool(CKA_TOKEN, true))),
            ),
        ];
        let public = codec::encode_public(attrs.iter().map(|(t, v)| (*t, v)));
        codec::encode_record(&public, b"sealed")
    }

    /// Records are indexed from their bytes and decoded only when a call needs them, once; one
    /// that does not decode is invisible; removal leaves nothing in the indexes.
    #[test]
    fn records_are_decoded_on_first_use_only() {
        let calls = Arc::new(AtomicUsize::new(0));
        let decode: Arc<Decode> = {
            let calls = Arc::clone(&calls);
            Arc::new(move |handle, rev, record: &[u8]| {
                calls.fetch_add(1, Ordering::SeqCst);
                let (rec, _) = codec::decode_record(record)?;
                if handle == 3 {
                    return Err(bridge::Error::Store("does not authenticate".into()));
                }
                Ok(Object {
                    handle,
                    rev,
                    owner: None,
                    attrs: rec.public.into_iter().map(|a| (a.ty, a.value)).collect(),
                    material: Material::plain(SecretAttrs::default()),
                })
            })
        };
        let mut t = ObjectTable::default();
        t.insert_stored(1, 7, record(b"one"), &decode);
        t.insert_stored(2, 7, record(b"two"), &decode);
        t.insert_stored(3, 7, record(b"two"), &decode);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(t.rev(2), Some(7));

        let by_label = |t: &ObjectTable, l: &[u8]| -> Vec<CK_OBJECT_HANDLE> {
            let template = Template::new().with(Attribute::bytes(CKA_LABEL, l.to_vec()));
            t.candidates(&template).map(|o| o.handle).collect()
        };
        assert_eq!(by_label(&t, b"one"), vec![1]);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // The bad record is looked at, and left out.
        assert_eq!(by_label(&t, b"two"), vec![2]);
        assert!(t.get(3).is_none());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // Decoded once.
        assert!(t.get(1).is_some() && t.get(2).is_some());
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        t.remove(2);
        t.remove(3);
        assert!(by_label(&t, b"two").is_empty());
        assert!(t.index.iter().all(|m| !m.contains_key(&b"two"[..])));
        let class = Template::new().with(Attribute::ulong(CKA_CLASS, CKO_DATA));
        assert_eq!(t.candidates(&class).count(), 1);
        assert_eq!(t.count_classes(&[CKO_DATA]), 1);
        assert_eq!(t.count_classes(&[CKO_SECRET_KEY, CKO_PRIVATE_KEY]), 0);
        t.clear_token_objects(false);
        assert!(t.by_handle.is_empty());
        assert_eq!(t.count_classes(&[CKO_DATA]), 0);
        assert!(t.index.iter().all(BTreeMap::is_empty));
    }

    #[test]
    fn handles_stay_sorted_and_one_costs_nothing() {
        let mut h = Handles::One(5);
        h.add(5);
        assert!(matches!(h, Handles::One(5)));
        h.add(3);
        h.add(9);
        h.add(4);
        assert_eq!(h.as_slice(), &[3, 4, 5, 9]);
        assert!(!h.remove(4));
        assert!(!h.remove(42));
        assert_eq!(h.as_slice(), &[3, 5, 9]);
        for x in [3, 5] {
            assert!(!h.remove(x));
        }
        assert!(h.remove(9));
        assert!(Handles::One(1).remove(1));
        assert!(!Handles::One(1).remove(2));
    }
}
