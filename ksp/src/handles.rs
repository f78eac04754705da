//! Generation-tagged handle tables.
//!
//! A handle is `kind << 56 | generation << 24 | (index + 1)`: the kind byte keeps provider, key
//! and secret handles apart (a key handle given as a provider handle is `NTE_INVALID_HANDLE`),
//! and the generation, bumped on every free, keeps a freed handle from ever naming the slot's
//! next occupant. A slot whose generation would wrap is retired, never reused. Handle 0 is
//! never issued.

use crate::error::{INVALID_HANDLE, KResult};

/// The kinds of handle the provider issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// `NCRYPT_PROV_HANDLE`.
    Provider = 0xA1,
    /// `NCRYPT_KEY_HANDLE`.
    Key = 0xB2,
    /// `NCRYPT_SECRET_HANDLE`.
    Secret = 0xC3,
}

const INDEX_BITS: u32 = 24;
const GEN_BITS: u32 = 32;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;
const GEN_MASK: u64 = (1 << GEN_BITS) - 1;

struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

/// One table of live objects of one kind.
pub(crate) struct Table<T> {
    kind: Kind,
    slots: Vec<Slot<T>>,
    free: Vec<usize>,
}

impl<T: Clone> Table<T> {
    /// An empty table for `kind`.
    pub(crate) const fn new(kind: Kind) -> Self {
        Self {
            kind,
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    fn encode(&self, index: usize, generation: u32) -> KResult<usize> {
        let i = u64::try_from(index + 1).map_err(|_| INVALID_HANDLE)?;
        if i > INDEX_MASK {
            return Err(crate::error::Status(crate::types::NTE_NO_MEMORY));
        }
        let h = (u64::from(self.kind as u8) << (INDEX_BITS + GEN_BITS))
            | (u64::from(generation) << INDEX_BITS)
            | i;
        usize::try_from(h).map_err(|_| INVALID_HANDLE)
    }

    fn decode(&self, handle: usize) -> KResult<usize> {
        let h = u64::try_from(handle).map_err(|_| INVALID_HANDLE)?;
        if h >> (INDEX_BITS + GEN_BITS) != u64::from(self.kind as u8) {
            return Err(INVALID_HANDLE);
        }
        let generation = (h >> INDEX_BITS) & GEN_MASK;
        let index = usize::try_from(h & INDEX_MASK)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .ok_or(INVALID_HANDLE)?;
        let slot = self.slots.get(index).ok_or(INVALID_HANDLE)?;
        if u64::from(slot.generation) != generation || slot.value.is_none() {
            return Err(INVALID_HANDLE);
        }
        Ok(index)
    }

    /// Stores `value` and returns its new handle.
    pub(crate) fn insert(&mut self, value: T) -> KResult<usize> {
        if let Some(index) = self.free.pop() {
            if let Some(slot) = self.slots.get_mut(index) {
                slot.value = Some(value);
                let generation = slot.generation;
                return self.encode(index, generation);
            }
        }
        let index = self.slots.len();
        let handle = self.encode(index, 0)?;
        self.slots.push(Slot {
            generation: 0,
            value: Some(value),
        });
        Ok(handle)
    }

    /// The object `handle` names, or `NTE_INVALID_HANDLE`.
    pub(crate) fn get(&self, handle: usize) -> KResult<T> {
        let index = self.decode(handle)?;
        self.slots
            .get(index)
            .and_then(|s| s.value.clone())
            .ok_or(INVALID_HANDLE)
    }

    /// Removes and returns the object `handle` names; the handle is dead from now on.
    pub(crate) fn remove(&mut self, handle: usize) -> KResult<T> {
        let index = self.decode(handle)?;
        let slot = self.slots.get_mut(index).ok_or(INVALID_HANDLE)?;
        let value = slot.value.take().ok_or(INVALID_HANDLE)?;
        // A slot whose generation would wrap is retired: its handles have all been used.
        if let Some(g) = slot.generation.checked_add(1) {
            slot.generation = g;
            self.free.push(index);
        }
        Ok(value)
    }

    /// The live objects, with their handles.
    pub(crate) fn live(&self) -> Vec<(usize, T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let v = s.value.clone()?;
                Some((self.encode(i, s.generation).ok()?, v))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_handles_never_alias_and_kinds_are_distinct() {
        let mut keys = Table::new(Kind::Key);
        let mut providers = Table::<u32>::new(Kind::Provider);
        let a = keys.insert(1u32).unwrap();
        assert_ne!(a, 0);
        assert_eq!(keys.get(a), Ok(1));
        assert_eq!(keys.remove(a), Ok(1));
        let b = keys.insert(2).unwrap();
        assert_ne!(a, b, "same slot, new generation");
        assert_eq!(keys.get(a), Err(INVALID_HANDLE));
        assert_eq!(keys.remove(a), Err(INVALID_HANDLE));
        assert_eq!(keys.get(b), Ok(2));
        let p = providers.insert(7).unwrap();
        assert_eq!(keys.get(p), Err(INVALID_HANDLE));
        assert_eq!(providers.get(b), Err(INVALID_HANDLE));
        for bad in [0, 1, usize::MAX, b + 1, b ^ (1 << 60)] {
            assert_eq!(keys.get(bad), Err(INVALID_HANDLE), "{bad:#x}");
        }
    }
}
