//! The in-memory object cache of a token, indexed by the attributes searches use most, so that
//! a search among thousands of objects looks at a handful.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bridge::{AttrValue, Template};
use cryptoki_sys::*;

use crate::object::Object;

/// The attributes that are indexed.
const INDEXED: [CK_ATTRIBUTE_TYPE; 3] = [CKA_LABEL, CKA_ID, CKA_CLASS];

/// Objects by handle, plus indexes by label, id and class.
#[derive(Default)]
pub(crate) struct ObjectTable {
    by_handle: BTreeMap<CK_OBJECT_HANDLE, Arc<Object>>,
    index: HashMap<(CK_ATTRIBUTE_TYPE, Vec<u8>), BTreeSet<CK_OBJECT_HANDLE>>,
}

fn key_of(obj: &Object, ty: CK_ATTRIBUTE_TYPE) -> Option<(CK_ATTRIBUTE_TYPE, Vec<u8>)> {
    match obj.attrs.get(&ty)? {
        AttrValue::Bytes(b) => Some((ty, b.clone())),
        AttrValue::Template(_) => None,
    }
}

impl ObjectTable {
    /// The object `handle`.
    pub(crate) fn get(&self, handle: CK_OBJECT_HANDLE) -> Option<&Arc<Object>> {
        self.by_handle.get(&handle)
    }

    /// Number of objects.
    #[allow(dead_code)] // not used yet
    pub(crate) fn len(&self) -> usize {
        self.by_handle.len()
    }

    /// Inserts or replaces an object.
    pub(crate) fn insert(&mut self, obj: Arc<Object>) {
        self.remove(obj.handle);
        for ty in INDEXED {
            if let Some(k) = key_of(&obj, ty) {
                self.index.entry(k).or_default().insert(obj.handle);
            }
        }
        self.by_handle.insert(obj.handle, obj);
    }

    /// Removes an object.
    pub(crate) fn remove(&mut self, handle: CK_OBJECT_HANDLE) -> Option<Arc<Object>> {
        let obj = self.by_handle.remove(&handle)?;
        for ty in INDEXED {
            if let Some(k) = key_of(&obj, ty) {
                if let Some(set) = self.index.get_mut(&k) {
                    set.remove(&handle);
                    if set.is_empty() {
                        self.index.remove(&k);
                    }
                }
            }
        }
        Some(obj)
    }

    /// Removes every session object `owner` created.
    pub(crate) fn remove_owned_by(&mut self, owner: CK_SESSION_HANDLE) {
        let gone: Vec<_> = self
            .by_handle
            .values()
            .filter(|o| o.owner == Some(owner))
            .map(|o| o.handle)
            .collect();
        for h in gone {
            self.remove(h);
        }
    }

    /// Drops token objects (all objects when the token was re-initialized).
    pub(crate) fn clear_token_objects(&mut self, everything: bool) {
        let gone: Vec<_> = self
            .by_handle
            .values()
            .filter(|o| everything || o.owner.is_none())
            .map(|o| o.handle)
            .collect();
        for h in gone {
            self.remove(h);
        }
    }

    /// The objects that may match `template`: those under the most selective indexed
    /// attribute it names, else all. The caller still matches each one.
    pub(crate) fn candidates<'a>(
        &'a self,
        template: &Template,
    ) -> Box<dyn Iterator<Item = &'a Arc<Object>> + 'a> {
        let mut best: Option<&BTreeSet<CK_OBJECT_HANDLE>> = None;
        for a in template.iter() {
            if !INDEXED.contains(&a.ty) {
                continue;
            }
            let AttrValue::Bytes(b) = &a.value else {
                continue;
            };
            match self.index.get(&(a.ty, b.clone())) {
                None => return Box::new(std::iter::empty()),
                Some(set) => {
                    if best.is_none_or(|cur| set.len() < cur.len()) {
                        best = Some(set);
                    }
                }
            }
        }
        match best {
            Some(set) => Box::new(set.iter().filter_map(|h| self.by_handle.get(h))),
            None => Box::new(self.by_handle.values()),
        }
    }
}
