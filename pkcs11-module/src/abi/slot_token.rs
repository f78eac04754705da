//! Slot and token management functions: `C_GetSlotList`, `C_GetSlotInfo`, `C_GetTokenInfo`,
//! `C_WaitForSlotEvent`, `C_GetMechanismList`, `C_GetMechanismInfo`, `C_InitToken`,
//! `C_InitPIN`, `C_SetPIN`.

use bridge::{BackendExt as _, Error, SessionHandle, SlotId, SlotInfo, TokenInfo, Version};
use cryptoki_sys::*;

use super::entry::guard;
use super::ptr::{OutList, in_bytes, out_value, padded};
use super::router;

/// `CK_VERSION` from the owned `Version`.
fn ck_version(v: Version) -> CK_VERSION {
    CK_VERSION {
        major: v.major,
        minor: v.minor,
    }
}

/// `CK_SLOT_INFO` from the owned `SlotInfo`: blank-padded strings.
fn ck_slot_info(info: &SlotInfo) -> CK_SLOT_INFO {
    CK_SLOT_INFO {
        slotDescription: padded(&info.description),
        manufacturerID: padded(&info.manufacturer),
        flags: info.flags,
        hardwareVersion: ck_version(info.hardware_version),
        firmwareVersion: ck_version(info.firmware_version),
    }
}

/// `CK_TOKEN_INFO` from the owned `TokenInfo`: blank-padded strings.
fn ck_token_info(info: &TokenInfo) -> CK_TOKEN_INFO {
    CK_TOKEN_INFO {
        label: padded(&info.label),
        manufacturerID: padded(&info.manufacturer),
        model: padded(&info.model),
        serialNumber: padded(&info.serial_number),
        flags: info.flags,
        ulMaxSessionCount: info.max_session_count,
        ulSessionCount: info.session_count,
        ulMaxRwSessionCount: info.max_rw_session_count,
        ulRwSessionCount: info.rw_session_count,
        ulMaxPinLen: info.max_pin_len,
        ulMinPinLen: info.min_pin_len,
        ulTotalPublicMemory: info.total_public_memory,
        ulFreePublicMemory: info.free_public_memory,
        ulTotalPrivateMemory: info.total_private_memory,
        ulFreePrivateMemory: info.free_private_memory,
        hardwareVersion: ck_version(info.hardware_version),
        firmwareVersion: ck_version(info.firmware_version),
        utcTime: padded(&info.utc_time),
    }
}

/// `C_GetSlotList`: the slots, or those with a token present.
///
/// Spec: [PKCS #11 v3.2], Slot and token management functions, C_GetSlotList.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pulCount` must be NULL or valid for reads and writes of a `CK_ULONG`; `pSlotList` NULL or
/// valid for writes of `*pulCount` slot ids.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetSlotList(
    tokenPresent: CK_BBOOL,
    pSlotList: CK_SLOT_ID_PTR,
    pulCount: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_GetSlotList", || {
        let router = router()?;
        // SAFETY: the pointers follow the C_GetSlotList contract.
        let out = unsafe { OutList::new(pSlotList, pulCount) }?;
        let slots = router.slot_list(tokenPresent != CK_FALSE)?;
        let ids: Vec<CK_SLOT_ID> = slots.iter().map(|s| s.0).collect();
        out.fill(&ids)
    })
}

/// `C_GetSlotInfo`: information about a slot.
///
/// Spec: [PKCS #11 v3.2], Slot and token management functions, C_GetSlotInfo.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pInfo` must be NULL or valid for writes of a `CK_SLOT_INFO`.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetSlotInfo(slotID: CK_SLOT_ID, pInfo: CK_SLOT_INFO_PTR) -> CK_RV {
    guard("C_GetSlotInfo", || {
        let router = router()?;
        // SAFETY: `pInfo` is NULL or writable per the C_GetSlotInfo contract.
        let out = unsafe { out_value(pInfo) }?;
        out.write(ck_slot_info(&router.slot_info(SlotId(slotID))?));
        Ok(())
    })
}

/// `C_GetTokenInfo`: information about the token in a slot.
///
/// Spec: [PKCS #11 v3.2], Slot and token management functions, C_GetTokenInfo.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pInfo` must be NULL or valid for writes of a `CK_TOKEN_INFO`.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetTokenInfo(slotID: CK_SLOT_ID, pInfo: CK_TOKEN_INFO_PTR) -> CK_RV {
    guard("C_GetTokenInfo", || {
        let router = router()?;
        // SAFETY: `pInfo` is NULL or writable per the C_GetTokenInfo contract.
        let out = unsafe { out_value(pInfo) }?;
        out.write(ck_token_info(&router.token_info(SlotId(slotID))?));
        Ok(())
    })
}

/// `C_WaitForSlotEvent`: waits for (or, with `CKF_DONT_BLOCK`, polls for) a slot event.
///
/// Spec: [PKCS #11 v3.2], Slot and token management functions, C_WaitForSlotEvent.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pSlot` must be NULL or valid for writes of a `CK_SLOT_ID`; `pReserved` is only compared
/// with NULL.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_WaitForSlotEvent(
    flags: CK_FLAGS,
    pSlot: CK_SLOT_ID_PTR,
    pReserved: CK_VOID_PTR,
) -> CK_RV {
    guard("C_WaitForSlotEvent", || {
        let router = router()?;
        // "pReserved is reserved for future versions. For this version of Cryptoki, it should
        // be NULL_PTR."
        if !pReserved.is_null() {
            return Err(Error::ArgumentsBad);
        }
        // SAFETY: `pSlot` is NULL or writable per the C_WaitForSlotEvent contract.
        let out = unsafe { out_value(pSlot) }?;
        out.write(router.wait_for_slot_event(flags)?.0);
        Ok(())
    })
}

/// `C_GetMechanismList`: the mechanisms a token supports.
///
/// Spec: [PKCS #11 v3.2], Slot and token management functions, C_GetMechanismList.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pulCount` must be NULL or valid for reads and writes of a `CK_ULONG`; `pMechanismList`
/// NULL or valid for writes of `*pulCount` mechanism types.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetMechanismList(
    slotID: CK_SLOT_ID,
    pMechanismList: CK_MECHANISM_TYPE_PTR,
    pulCount: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_GetMechanismList", || {
        let router = router()?;
        // SAFETY: the pointers follow the C_GetMechanismList contract.
        let out = unsafe { OutList::new(pMechanismList, pulCount) }?;
        out.fill(&router.mechanism_list(SlotId(slotID))?)
    })
}

/// `C_GetMechanismInfo`: what a token can do with one mechanism.
///
/// Spec: [PKCS #11 v3.2], Slot and token management functions, C_GetMechanismInfo.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pInfo` must be NULL or valid for writes of a `CK_MECHANISM_INFO`.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetMechanismInfo(
    slotID: CK_SLOT_ID,
    r#type: CK_MECHANISM_TYPE,
    pInfo: CK_MECHANISM_INFO_PTR,
) -> CK_RV {
    guard("C_GetMechanismInfo", || {
        let router = router()?;
        // SAFETY: `pInfo` is NULL or writable per the C_GetMechanismInfo contract.
        let out = unsafe { out_value(pInfo) }?;
        let info = router.mechanism_info(SlotId(slotID), r#type)?;
        out.write(CK_MECHANISM_INFO {
            ulMinKeySize: info.min_key_size,
            ulMaxKeySize: info.max_key_size,
            flags: info.flags,
        });
        Ok(())
    })
}

/// `C_InitToken`: initializes a token with an SO PIN and a 32-byte blank-padded label.
///
/// Spec: [PKCS #11 v3.2], Slot and token management functions, C_InitToken.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pPin` must be NULL or valid for reads of `ulPinLen` bytes; `pLabel` NULL or valid for
/// reads of 32 bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_InitToken(
    slotID: CK_SLOT_ID,
    pPin: CK_UTF8CHAR_PTR,
    ulPinLen: CK_ULONG,
    pLabel: CK_UTF8CHAR_PTR,
) -> CK_RV {
    guard("C_InitToken", || {
        let router = router()?;
        // SAFETY: `pPin` is NULL or readable for `ulPinLen` bytes per the contract.
        let pin = unsafe { in_bytes(pPin, ulPinLen) }?;
        if pLabel.is_null() {
            return Err(Error::ArgumentsBad);
        }
        // "pLabel points to the 32-byte label of the token (which MUST be padded with blank
        // characters, and which MUST NOT be null-terminated)"
        // SAFETY: `pLabel` is non-null and readable for 32 bytes per the contract.
        let label = unsafe { in_bytes(pLabel, 32) }?;
        let label: &[u8; 32] = label.try_into().map_err(|_| Error::ArgumentsBad)?;
        router.init_token(SlotId(slotID), pin, label)
    })
}

/// `C_InitPIN`: the SO sets the normal user's PIN.
///
/// Spec: [PKCS #11 v3.2], Slot and token management functions, C_InitPIN.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pPin` must be NULL or valid for reads of `ulPinLen` bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_InitPIN(
    hSession: CK_SESSION_HANDLE,
    pPin: CK_UTF8CHAR_PTR,
    ulPinLen: CK_ULONG,
) -> CK_RV {
    guard("C_InitPIN", || {
        let router = router()?;
        // SAFETY: `pPin` is NULL or readable for `ulPinLen` bytes per the contract.
        let pin = unsafe { in_bytes(pPin, ulPinLen) }?;
        router.init_pin(SessionHandle(hSession), pin)
    })
}

/// `C_SetPIN`: changes the PIN of the user logged in (or of the normal user when none is).
///
/// Spec: [PKCS #11 v3.2], Slot and token management functions, C_SetPIN.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pOldPin` and `pNewPin` must each be NULL or valid for reads of their lengths.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_SetPIN(
    hSession: CK_SESSION_HANDLE,
    pOldPin: CK_UTF8CHAR_PTR,
    ulOldLen: CK_ULONG,
    pNewPin: CK_UTF8CHAR_PTR,
    ulNewLen: CK_ULONG,
) -> CK_RV {
    guard("C_SetPIN", || {
        let router = router()?;
        // SAFETY: `pOldPin` is NULL or readable for `ulOldLen` bytes per the contract.
        let old_pin = unsafe { in_bytes(pOldPin, ulOldLen) }?;
        // SAFETY: `pNewPin` is NULL or readable for `ulNewLen` bytes per the contract.
        let new_pin = unsafe { in_bytes(pNewPin, ulNewLen) }?;
        router.set_pin(SessionHandle(hSession), old_pin, new_pin)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_info_strings_are_blank_padded() {
        let info = TokenInfo {
            label: "my token".into(),
            manufacturer: "FerroHSM".into(),
            model: "a model name longer than sixteen".into(),
            serial_number: "0001".into(),
            flags: CKF_TOKEN_INITIALIZED,
            max_session_count: CK_EFFECTIVELY_INFINITE,
            session_count: 0,
            max_rw_session_count: CK_EFFECTIVELY_INFINITE,
            rw_session_count: 0,
            max_pin_len: 64,
            min_pin_len: 4,
            total_public_memory: CK_UNAVAILABLE_INFORMATION,
            free_public_memory: CK_UNAVAILABLE_INFORMATION,
            total_private_memory: CK_UNAVAILABLE_INFORMATION,
            free_private_memory: CK_UNAVAILABLE_INFORMATION,
            hardware_version: Version { major: 1, minor: 2 },
            firmware_version: Version { major: 3, minor: 4 },
            utc_time: "2026010112000000".into(),
        };
        let ck = ck_token_info(&info);
        assert_eq!(&ck.label, b"my token                        ");
        assert_eq!(&ck.model, b"a model name lon");
        assert_eq!(&ck.serialNumber, b"0001            ");
        assert_eq!(&ck.utcTime, b"2026010112000000");
        assert_eq!((ck.firmwareVersion.major, ck.firmwareVersion.minor), (3, 4));
        assert_eq!(ck.ulMinPinLen, 4);
    }

    #[test]
    fn slot_info_strings_are_blank_padded() {
        let info = SlotInfo {
            description: "FerroHSM slot".into(),
            manufacturer: String::new(),
            flags: CKF_TOKEN_PRESENT,
            hardware_version: Version::default(),
            firmware_version: Version::default(),
        };
        let ck = ck_slot_info(&info);
        assert!(ck.slotDescription.starts_with(b"FerroHSM slot "));
        assert!(ck.slotDescription.iter().all(|b| *b != 0));
        assert_eq!(ck.manufacturerID, [b' '; 32]);
    }
}
