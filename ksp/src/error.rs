//! `Status`: a `SECURITY_STATUS` as an error value, and the one mapping from the firmware's
//! `CK_RV` vocabulary onto the NTE codes Windows' own providers return.

use bridge::Error;

use crate::blob::BlobError;
use crate::types::*;

/// A failed call's `SECURITY_STATUS` (never `ERROR_SUCCESS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub SECURITY_STATUS);

/// The result of everything behind the boundary.
pub(crate) type KResult<T> = Result<T, Status>;

/// Shorthands.
pub(crate) const INVALID_HANDLE: Status = Status(NTE_INVALID_HANDLE);
pub(crate) const INVALID_PARAMETER: Status = Status(NTE_INVALID_PARAMETER);
pub(crate) const NOT_SUPPORTED: Status = Status(NTE_NOT_SUPPORTED);
pub(crate) const BAD_FLAGS: Status = Status(NTE_BAD_FLAGS);

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        use Error::*;
        Status(match e {
            BufferTooSmall { .. } => NTE_BUFFER_TOO_SMALL,
            HostMemory | DeviceMemory | TokenResourceExceeded => NTE_NO_MEMORY,
            PinIncorrect | PinInvalid | PinLenRange => NTE_INCORRECT_PASSWORD,
            PinLocked
            | PinExpired
            | UserNotLoggedIn
            | UserPinNotInitialized
            | KeyFunctionNotPermitted
            | ActionProhibited => NTE_PERM,
            // The firmware's one export check refused: the key is not exportable this way.
            KeyUnextractable | AttributeSensitive | KeyNotWrappable => NTE_NOT_SUPPORTED,
            MechanismInvalid | FunctionNotSupported | CurveNotSupported => NTE_NOT_SUPPORTED,
            SignatureInvalid | SignatureLenRange => NTE_BAD_SIGNATURE,
            EncryptedDataInvalid | EncryptedDataLenRange => NTE_DECRYPTION_FAILURE,
            DataInvalid | DataLenRange | WrappedKeyInvalid | WrappedKeyLenRange => NTE_BAD_DATA,
            PublicKeyInvalid => NTE_BAD_PUBLIC_KEY,
            KeySizeRange => NTE_BAD_LEN,
            KeyHandleInvalid
            | ObjectHandleInvalid
            | KeyTypeInconsistent
            | UnwrappingKeyHandleInvalid
            | UnwrappingKeyTypeInconsistent
            | UnwrappingKeySizeRange => NTE_BAD_KEY,
            MechanismParamInvalid
            | ArgumentsBad
            | AttributeValueInvalid
            | AttributeTypeInvalid
            | TemplateInconsistent
            | TemplateIncomplete
            | DomainParamsInvalid => NTE_INVALID_PARAMETER,
            TokenNotPresent | TokenNotRecognized | TokenNotInitialized | SlotIdInvalid => {
                NTE_DEVICE_NOT_FOUND
            }
            DeviceRemoved | DeviceError | SessionHandleInvalid | SessionClosed => {
                NTE_DEVICE_NOT_READY
            }
            Config(_) | LibraryLoadFailed => NTE_PROVIDER_DLL_FAIL,
            Internal(_) | GeneralError => NTE_INTERNAL_ERROR,
            _ => NTE_FAIL,
        })
    }
}

impl From<BlobError> for Status {
    fn from(e: BlobError) -> Self {
        Status(match e {
            BlobError::Malformed => NTE_BAD_DATA,
            BlobError::BadMagic => NTE_BAD_TYPE,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_refusals_are_not_supported() {
        assert_eq!(Status::from(Error::AttributeSensitive), NOT_SUPPORTED);
        assert_eq!(Status::from(Error::KeyUnextractable), NOT_SUPPORTED);
        assert_eq!(Status::from(Error::UserNotLoggedIn), Status(NTE_PERM));
        assert_eq!(
            Status::from(Error::BufferTooSmall { needed: 3 }),
            Status(NTE_BUFFER_TOO_SMALL)
        );
    }
}
