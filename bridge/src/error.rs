//! The one error enum of the workspace and its mapping to `CK_RV`.

use std::fmt;

use cryptoki_sys::*;

/// `Result` with the workspace's one error type.
pub type Result<T> = core::result::Result<T, Error>;

/// Every failure a PKCS#11 call can report.
///
/// One unit variant per standard `CKR_*` code (the CKR name in UpperCamelCase), plus a few
/// variants that carry what the code alone cannot: the needed length of a short buffer, a
/// foreign code passed through verbatim, and internal detail for logs. The detail strings never
/// hold attribute values, key bytes or PINs.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// `CKR_BUFFER_TOO_SMALL`; `needed` is written back to the caller's length.
    BufferTooSmall {
        /// The length the output needs.
        needed: usize,
    },
    /// A bad configuration: `CKR_GENERAL_ERROR`, with a message for the operator.
    Config(String),
    /// A code returned verbatim by a loaded module or a remote peer; never remapped.
    Foreign(CK_RV),
    /// A broken invariant inside this workspace: `CKR_GENERAL_ERROR`.
    Internal(&'static str),
    /// The store failed or is unreadable: `CKR_DEVICE_ERROR`, with a message for the operator.
    Store(String),
    // --- generated list: one unit variant per standard CKR code ---
    /// `CKR_ACTION_PROHIBITED`.
    ActionProhibited,
    /// `CKR_AEAD_DECRYPT_FAILED`.
    AeadDecryptFailed,
    /// `CKR_ARGUMENTS_BAD`.
    ArgumentsBad,
    /// `CKR_ATTRIBUTE_READ_ONLY`.
    AttributeReadOnly,
    /// `CKR_ATTRIBUTE_SENSITIVE`.
    AttributeSensitive,
    /// `CKR_ATTRIBUTE_TYPE_INVALID`.
    AttributeTypeInvalid,
    /// `CKR_ATTRIBUTE_VALUE_INVALID`.
    AttributeValueInvalid,
    /// `CKR_CANCEL`.
    Cancel,
    /// `CKR_CANT_LOCK`.
    CantLock,
    /// `CKR_CRYPTOKI_ALREADY_INITIALIZED`.
    CryptokiAlreadyInitialized,
    /// `CKR_CRYPTOKI_NOT_INITIALIZED`.
    CryptokiNotInitialized,
    /// `CKR_CURVE_NOT_SUPPORTED`.
    CurveNotSupported,
    /// `CKR_DATA_INVALID`.
    DataInvalid,
    /// `CKR_DATA_LEN_RANGE`.
    DataLenRange,
    /// `CKR_DEVICE_ERROR`.
    DeviceError,
    /// `CKR_DEVICE_MEMORY`.
    DeviceMemory,
    /// `CKR_DEVICE_REMOVED`.
    DeviceRemoved,
    /// `CKR_DOMAIN_PARAMS_INVALID`.
    DomainParamsInvalid,
    /// `CKR_ENCRYPTED_DATA_INVALID`.
    EncryptedDataInvalid,
    /// `CKR_ENCRYPTED_DATA_LEN_RANGE`.
    EncryptedDataLenRange,
    /// `CKR_EXCEEDED_MAX_ITERATIONS`.
    ExceededMaxIterations,
    /// `CKR_FIPS_SELF_TEST_FAILED`.
    FipsSelfTestFailed,
    /// `CKR_FUNCTION_CANCELED`.
    FunctionCanceled,
    /// `CKR_FUNCTION_FAILED`.
    FunctionFailed,
    /// `CKR_FUNCTION_NOT_PARALLEL`.
    FunctionNotParallel,
    /// `CKR_FUNCTION_NOT_SUPPORTED`.
    FunctionNotSupported,
    /// `CKR_FUNCTION_REJECTED`.
    FunctionRejected,
    /// `CKR_GENERAL_ERROR`.
    GeneralError,
    /// `CKR_HOST_MEMORY`.
    HostMemory,
    /// `CKR_INFORMATION_SENSITIVE`.
    InformationSensitive,
    /// `CKR_KEY_CHANGED`.
    KeyChanged,
    /// `CKR_KEY_EXHAUSTED`.
    KeyExhausted,
    /// `CKR_KEY_FUNCTION_NOT_PERMITTED`.
    KeyFunctionNotPermitted,
    /// `CKR_KEY_HANDLE_INVALID`.
    KeyHandleInvalid,
    /// `CKR_KEY_INDIGESTIBLE`.
    KeyIndigestible,
    /// `CKR_KEY_NEEDED`.
    KeyNeeded,
    /// `CKR_KEY_NOT_NEEDED`.
    KeyNotNeeded,
    /// `CKR_KEY_NOT_WRAPPABLE`.
    KeyNotWrappable,
    /// `CKR_KEY_SIZE_RANGE`.
    KeySizeRange,
    /// `CKR_KEY_TYPE_INCONSISTENT`.
    KeyTypeInconsistent,
    /// `CKR_KEY_UNEXTRACTABLE`.
    KeyUnextractable,
    /// `CKR_LIBRARY_LOAD_FAILED`.
    LibraryLoadFailed,
    /// `CKR_MECHANISM_INVALID`.
    MechanismInvalid,
    /// `CKR_MECHANISM_PARAM_INVALID`.
    MechanismParamInvalid,
    /// `CKR_MUTEX_BAD`.
    MutexBad,
    /// `CKR_MUTEX_NOT_LOCKED`.
    MutexNotLocked,
    /// `CKR_NEED_TO_CREATE_THREADS`.
    NeedToCreateThreads,
    /// `CKR_NEW_PIN_MODE`.
    NewPinMode,
    /// `CKR_NEXT_OTP`.
    NextOtp,
    /// `CKR_NO_EVENT`.
    NoEvent,
    /// `CKR_OBJECT_HANDLE_INVALID`.
    ObjectHandleInvalid,
    /// `CKR_OPERATION_ACTIVE`.
    OperationActive,
    /// `CKR_OPERATION_CANCEL_FAILED`.
    OperationCancelFailed,
    /// `CKR_OPERATION_NOT_INITIALIZED`.
    OperationNotInitialized,
    /// `CKR_OPERATION_NOT_VALIDATED`.
    OperationNotValidated,
    /// `CKR_PARAMETER_SET_NOT_SUPPORTED`.
    ParameterSetNotSupported,
    /// `CKR_PENDING`.
    Pending,
    /// `CKR_PIN_EXPIRED`.
    PinExpired,
    /// `CKR_PIN_INCORRECT`.
    PinIncorrect,
    /// `CKR_PIN_INVALID`.
    PinInvalid,
    /// `CKR_PIN_LEN_RANGE`.
    PinLenRange,
    /// `CKR_PIN_LOCKED`.
    PinLocked,
    /// `CKR_PIN_TOO_WEAK`.
    PinTooWeak,
    /// `CKR_PUBLIC_KEY_INVALID`.
    PublicKeyInvalid,
    /// `CKR_RANDOM_NO_RNG`.
    RandomNoRng,
    /// `CKR_RANDOM_SEED_NOT_SUPPORTED`.
    RandomSeedNotSupported,
    /// `CKR_SAVED_STATE_INVALID`.
    SavedStateInvalid,
    /// `CKR_SEED_RANDOM_REQUIRED`.
    SeedRandomRequired,
    /// `CKR_SESSION_ASYNC_NOT_SUPPORTED`.
    SessionAsyncNotSupported,
    /// `CKR_SESSION_CLOSED`.
    SessionClosed,
    /// `CKR_SESSION_COUNT`.
    SessionCount,
    /// `CKR_SESSION_EXISTS`.
    SessionExists,
    /// `CKR_SESSION_HANDLE_INVALID`.
    SessionHandleInvalid,
    /// `CKR_SESSION_PARALLEL_NOT_SUPPORTED`.
    SessionParallelNotSupported,
    /// `CKR_SESSION_READ_ONLY`.
    SessionReadOnly,
    /// `CKR_SESSION_READ_ONLY_EXISTS`.
    SessionReadOnlyExists,
    /// `CKR_SESSION_READ_WRITE_SO_EXISTS`.
    SessionReadWriteSoExists,
    /// `CKR_SIGNATURE_INVALID`.
    SignatureInvalid,
    /// `CKR_SIGNATURE_LEN_RANGE`.
    SignatureLenRange,
    /// `CKR_SLOT_ID_INVALID`.
    SlotIdInvalid,
    /// `CKR_STATE_UNSAVEABLE`.
    StateUnsaveable,
    /// `CKR_TEMPLATE_INCOMPLETE`.
    TemplateIncomplete,
    /// `CKR_TEMPLATE_INCONSISTENT`.
    TemplateInconsistent,
    /// `CKR_TOKEN_NOT_INITIALIZED`.
    TokenNotInitialized,
    /// `CKR_TOKEN_NOT_PRESENT`.
    TokenNotPresent,
    /// `CKR_TOKEN_NOT_RECOGNIZED`.
    TokenNotRecognized,
    /// `CKR_TOKEN_RESOURCE_EXCEEDED`.
    TokenResourceExceeded,
    /// `CKR_TOKEN_WRITE_PROTECTED`.
    TokenWriteProtected,
    /// `CKR_UNWRAPPING_KEY_HANDLE_INVALID`.
    UnwrappingKeyHandleInvalid,
    /// `CKR_UNWRAPPING_KEY_SIZE_RANGE`.
    UnwrappingKeySizeRange,
    /// `CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT`.
    UnwrappingKeyTypeInconsistent,
    /// `CKR_USER_ALREADY_LOGGED_IN`.
    UserAlreadyLoggedIn,
    /// `CKR_USER_ANOTHER_ALREADY_LOGGED_IN`.
    UserAnotherAlreadyLoggedIn,
    /// `CKR_USER_NOT_LOGGED_IN`.
    UserNotLoggedIn,
    /// `CKR_USER_PIN_NOT_INITIALIZED`.
    UserPinNotInitialized,
    /// `CKR_USER_TOO_MANY_TYPES`.
    UserTooManyTypes,
    /// `CKR_USER_TYPE_INVALID`.
    UserTypeInvalid,
    /// `CKR_WRAPPED_KEY_INVALID`.
    WrappedKeyInvalid,
    /// `CKR_WRAPPED_KEY_LEN_RANGE`.
    WrappedKeyLenRange,
    /// `CKR_WRAPPING_KEY_HANDLE_INVALID`.
    WrappingKeyHandleInvalid,
    /// `CKR_WRAPPING_KEY_SIZE_RANGE`.
    WrappingKeySizeRange,
    /// `CKR_WRAPPING_KEY_TYPE_INCONSISTENT`.
    WrappingKeyTypeInconsistent,
}

impl Error {
    /// The code reported to the application. Exhaustive on purpose: a new variant does not
    /// compile until someone chooses its code.
    pub const fn rv(&self) -> CK_RV {
        match self {
            Self::BufferTooSmall { .. } => CKR_BUFFER_TOO_SMALL,
            Self::Config(_) => CKR_GENERAL_ERROR,
            Self::Foreign(rv) => *rv,
            Self::Internal(_) => CKR_GENERAL_ERROR,
            Self::Store(_) => CKR_DEVICE_ERROR,
            Self::ActionProhibited => CKR_ACTION_PROHIBITED,
            Self::AeadDecryptFailed => CKR_AEAD_DECRYPT_FAILED,
            Self::ArgumentsBad => CKR_ARGUMENTS_BAD,
            Self::AttributeReadOnly => CKR_ATTRIBUTE_READ_ONLY,
            Self::AttributeSensitive => CKR_ATTRIBUTE_SENSITIVE,
            Self::AttributeTypeInvalid => CKR_ATTRIBUTE_TYPE_INVALID,
            Self::AttributeValueInvalid => CKR_ATTRIBUTE_VALUE_INVALID,
            Self::Cancel => CKR_CANCEL,
            Self::CantLock => CKR_CANT_LOCK,
            Self::CryptokiAlreadyInitialized => CKR_CRYPTOKI_ALREADY_INITIALIZED,
            Self::CryptokiNotInitialized => CKR_CRYPTOKI_NOT_INITIALIZED,
            Self::CurveNotSupported => CKR_CURVE_NOT_SUPPORTED,
            Self::DataInvalid => CKR_DATA_INVALID,
            Self::DataLenRange => CKR_DATA_LEN_RANGE,
            Self::DeviceError => CKR_DEVICE_ERROR,
            Self::DeviceMemory => CKR_DEVICE_MEMORY,
            Self::DeviceRemoved => CKR_DEVICE_REMOVED,
            Self::DomainParamsInvalid => CKR_DOMAIN_PARAMS_INVALID,
            Self::EncryptedDataInvalid => CKR_ENCRYPTED_DATA_INVALID,
            Self::EncryptedDataLenRange => CKR_ENCRYPTED_DATA_LEN_RANGE,
            Self::ExceededMaxIterations => CKR_EXCEEDED_MAX_ITERATIONS,
            Self::FipsSelfTestFailed => CKR_FIPS_SELF_TEST_FAILED,
            Self::FunctionCanceled => CKR_FUNCTION_CANCELED,
            Self::FunctionFailed => CKR_FUNCTION_FAILED,
            Self::FunctionNotParallel => CKR_FUNCTION_NOT_PARALLEL,
            Self::FunctionNotSupported => CKR_FUNCTION_NOT_SUPPORTED,
            Self::FunctionRejected => CKR_FUNCTION_REJECTED,
            Self::GeneralError => CKR_GENERAL_ERROR,
            Self::HostMemory => CKR_HOST_MEMORY,
            Self::InformationSensitive => CKR_INFORMATION_SENSITIVE,
            Self::KeyChanged => CKR_KEY_CHANGED,
            Self::KeyExhausted => CKR_KEY_EXHAUSTED,
            Self::KeyFunctionNotPermitted => CKR_KEY_FUNCTION_NOT_PERMITTED,
            Self::KeyHandleInvalid => CKR_KEY_HANDLE_INVALID,
            Self::KeyIndigestible => CKR_KEY_INDIGESTIBLE,
            Self::KeyNeeded => CKR_KEY_NEEDED,
            Self::KeyNotNeeded => CKR_KEY_NOT_NEEDED,
            Self::KeyNotWrappable => CKR_KEY_NOT_WRAPPABLE,
            Self::KeySizeRange => CKR_KEY_SIZE_RANGE,
            Self::KeyTypeInconsistent => CKR_KEY_TYPE_INCONSISTENT,
            Self::KeyUnextractable => CKR_KEY_UNEXTRACTABLE,
            Self::LibraryLoadFailed => CKR_LIBRARY_LOAD_FAILED,
            Self::MechanismInvalid => CKR_MECHANISM_INVALID,
            Self::MechanismParamInvalid => CKR_MECHANISM_PARAM_INVALID,
            Self::MutexBad => CKR_MUTEX_BAD,
            Self::MutexNotLocked => CKR_MUTEX_NOT_LOCKED,
            Self::NeedToCreateThreads => CKR_NEED_TO_CREATE_THREADS,
            Self::NewPinMode => CKR_NEW_PIN_MODE,
            Self::NextOtp => CKR_NEXT_OTP,
            Self::NoEvent => CKR_NO_EVENT,
            Self::ObjectHandleInvalid => CKR_OBJECT_HANDLE_INVALID,
            Self::OperationActive => CKR_OPERATION_ACTIVE,
            Self::OperationCancelFailed => CKR_OPERATION_CANCEL_FAILED,
            Self::OperationNotInitialized => CKR_OPERATION_NOT_INITIALIZED,
            Self::OperationNotValidated => CKR_OPERATION_NOT_VALIDATED,
            Self::ParameterSetNotSupported => CKR_PARAMETER_SET_NOT_SUPPORTED,
            Self::Pending => CKR_PENDING,
            Self::PinExpired => CKR_PIN_EXPIRED,
            Self::PinIncorrect => CKR_PIN_INCORRECT,
            Self::PinInvalid => CKR_PIN_INVALID,
            Self::PinLenRange => CKR_PIN_LEN_RANGE,
            Self::PinLocked => CKR_PIN_LOCKED,
            Self::PinTooWeak => CKR_PIN_TOO_WEAK,
            Self::PublicKeyInvalid => CKR_PUBLIC_KEY_INVALID,
            Self::RandomNoRng => CKR_RANDOM_NO_RNG,
            Self::RandomSeedNotSupported => CKR_RANDOM_SEED_NOT_SUPPORTED,
            Self::SavedStateInvalid => CKR_SAVED_STATE_INVALID,
            Self::SeedRandomRequired => CKR_SEED_RANDOM_REQUIRED,
            Self::SessionAsyncNotSupported => CKR_SESSION_ASYNC_NOT_SUPPORTED,
            Self::SessionClosed => CKR_SESSION_CLOSED,
            Self::SessionCount => CKR_SESSION_COUNT,
            Self::SessionExists => CKR_SESSION_EXISTS,
            Self::SessionHandleInvalid => CKR_SESSION_HANDLE_INVALID,
            Self::SessionParallelNotSupported => CKR_SESSION_PARALLEL_NOT_SUPPORTED,
            Self::SessionReadOnly => CKR_SESSION_READ_ONLY,
            Self::SessionReadOnlyExists => CKR_SESSION_READ_ONLY_EXISTS,
            Self::SessionReadWriteSoExists => CKR_SESSION_READ_WRITE_SO_EXISTS,
            Self::SignatureInvalid => CKR_SIGNATURE_INVALID,
            Self::SignatureLenRange => CKR_SIGNATURE_LEN_RANGE,
            Self::SlotIdInvalid => CKR_SLOT_ID_INVALID,
            Self::StateUnsaveable => CKR_STATE_UNSAVEABLE,
            Self::TemplateIncomplete => CKR_TEMPLATE_INCOMPLETE,
            Self::TemplateInconsistent => CKR_TEMPLATE_INCONSISTENT,
            Self::TokenNotInitialized => CKR_TOKEN_NOT_INITIALIZED,
            Self::TokenNotPresent => CKR_TOKEN_NOT_PRESENT,
            Self::TokenNotRecognized => CKR_TOKEN_NOT_RECOGNIZED,
            Self::TokenResourceExceeded => CKR_TOKEN_RESOURCE_EXCEEDED,
            Self::TokenWriteProtected => CKR_TOKEN_WRITE_PROTECTED,
            Self::UnwrappingKeyHandleInvalid => CKR_UNWRAPPING_KEY_HANDLE_INVALID,
            Self::UnwrappingKeySizeRange => CKR_UNWRAPPING_KEY_SIZE_RANGE,
            Self::UnwrappingKeyTypeInconsistent => CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT,
            Self::UserAlreadyLoggedIn => CKR_USER_ALREADY_LOGGED_IN,
            Self::UserAnotherAlreadyLoggedIn => CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
            Self::UserNotLoggedIn => CKR_USER_NOT_LOGGED_IN,
            Self::UserPinNotInitialized => CKR_USER_PIN_NOT_INITIALIZED,
            Self::UserTooManyTypes => CKR_USER_TOO_MANY_TYPES,
            Self::UserTypeInvalid => CKR_USER_TYPE_INVALID,
            Self::WrappedKeyInvalid => CKR_WRAPPED_KEY_INVALID,
            Self::WrappedKeyLenRange => CKR_WRAPPED_KEY_LEN_RANGE,
            Self::WrappingKeyHandleInvalid => CKR_WRAPPING_KEY_HANDLE_INVALID,
            Self::WrappingKeySizeRange => CKR_WRAPPING_KEY_SIZE_RANGE,
            Self::WrappingKeyTypeInconsistent => CKR_WRAPPING_KEY_TYPE_INCONSISTENT,
        }
    }

    /// The error for a code received from elsewhere (a loaded module, a remote peer).
    /// Standard codes become their variant; anything else is kept verbatim in `Foreign`.
    /// `CKR_OK` is not an error and maps to `Foreign(CKR_OK)`, which callers must not produce.
    pub const fn from_rv(rv: CK_RV) -> Self {
        match rv {
            CKR_ACTION_PROHIBITED => Self::ActionProhibited,
            CKR_AEAD_DECRYPT_FAILED => Self::AeadDecryptFailed,
            CKR_ARGUMENTS_BAD => Self::ArgumentsBad,
            CKR_ATTRIBUTE_READ_ONLY => Self::AttributeReadOnly,
            CKR_ATTRIBUTE_SENSITIVE => Self::AttributeSensitive,
            CKR_ATTRIBUTE_TYPE_INVALID => Self::AttributeTypeInvalid,
            CKR_ATTRIBUTE_VALUE_INVALID => Self::AttributeValueInvalid,
            CKR_CANCEL => Self::Cancel,
            CKR_CANT_LOCK => Self::CantLock,
            CKR_CRYPTOKI_ALREADY_INITIALIZED => Self::CryptokiAlreadyInitialized,
            CKR_CRYPTOKI_NOT_INITIALIZED => Self::CryptokiNotInitialized,
            CKR_CURVE_NOT_SUPPORTED => Self::CurveNotSupported,
            CKR_DATA_INVALID => Self::DataInvalid,
            CKR_DATA_LEN_RANGE => Self::DataLenRange,
            CKR_DEVICE_ERROR => Self::DeviceError,
            CKR_DEVICE_MEMORY => Self::DeviceMemory,
            CKR_DEVICE_REMOVED => Self::DeviceRemoved,
            CKR_DOMAIN_PARAMS_INVALID => Self::DomainParamsInvalid,
            CKR_ENCRYPTED_DATA_INVALID => Self::EncryptedDataInvalid,
            CKR_ENCRYPTED_DATA_LEN_RANGE => Self::EncryptedDataLenRange,
            CKR_EXCEEDED_MAX_ITERATIONS => Self::ExceededMaxIterations,
            CKR_FIPS_SELF_TEST_FAILED => Self::FipsSelfTestFailed,
            CKR_FUNCTION_CANCELED => Self::FunctionCanceled,
            CKR_FUNCTION_FAILED => Self::FunctionFailed,
            CKR_FUNCTION_NOT_PARALLEL => Self::FunctionNotParallel,
            CKR_FUNCTION_NOT_SUPPORTED => Self::FunctionNotSupported,
            CKR_FUNCTION_REJECTED => Self::FunctionRejected,
            CKR_GENERAL_ERROR => Self::GeneralError,
            CKR_HOST_MEMORY => Self::HostMemory,
            CKR_INFORMATION_SENSITIVE => Self::InformationSensitive,
            CKR_KEY_CHANGED => Self::KeyChanged,
            CKR_KEY_EXHAUSTED => Self::KeyExhausted,
            CKR_KEY_FUNCTION_NOT_PERMITTED => Self::KeyFunctionNotPermitted,
            CKR_KEY_HANDLE_INVALID => Self::KeyHandleInvalid,
            CKR_KEY_INDIGESTIBLE => Self::KeyIndigestible,
            CKR_KEY_NEEDED => Self::KeyNeeded,
            CKR_KEY_NOT_NEEDED => Self::KeyNotNeeded,
            CKR_KEY_NOT_WRAPPABLE => Self::KeyNotWrappable,
            CKR_KEY_SIZE_RANGE => Self::KeySizeRange,
            CKR_KEY_TYPE_INCONSISTENT => Self::KeyTypeInconsistent,
            CKR_KEY_UNEXTRACTABLE => Self::KeyUnextractable,
            CKR_LIBRARY_LOAD_FAILED => Self::LibraryLoadFailed,
            CKR_MECHANISM_INVALID => Self::MechanismInvalid,
            CKR_MECHANISM_PARAM_INVALID => Self::MechanismParamInvalid,
            CKR_MUTEX_BAD => Self::MutexBad,
            CKR_MUTEX_NOT_LOCKED => Self::MutexNotLocked,
            CKR_NEED_TO_CREATE_THREADS => Self::NeedToCreateThreads,
            CKR_NEW_PIN_MODE => Self::NewPinMode,
            CKR_NEXT_OTP => Self::NextOtp,
            CKR_NO_EVENT => Self::NoEvent,
            CKR_OBJECT_HANDLE_INVALID => Self::ObjectHandleInvalid,
            CKR_OPERATION_ACTIVE => Self::OperationActive,
            CKR_OPERATION_CANCEL_FAILED => Self::OperationCancelFailed,
            CKR_OPERATION_NOT_INITIALIZED => Self::OperationNotInitialized,
            CKR_OPERATION_NOT_VALIDATED => Self::OperationNotValidated,
            CKR_PARAMETER_SET_NOT_SUPPORTED => Self::ParameterSetNotSupported,
            CKR_PENDING => Self::Pending,
            CKR_PIN_EXPIRED => Self::PinExpired,
            CKR_PIN_INCORRECT => Self::PinIncorrect,
            CKR_PIN_INVALID => Self::PinInvalid,
            CKR_PIN_LEN_RANGE => Self::PinLenRange,
            CKR_PIN_LOCKED => Self::PinLocked,
            CKR_PIN_TOO_WEAK => Self::PinTooWeak,
            CKR_PUBLIC_KEY_INVALID => Self::PublicKeyInvalid,
            CKR_RANDOM_NO_RNG => Self::RandomNoRng,
            CKR_RANDOM_SEED_NOT_SUPPORTED => Self::RandomSeedNotSupported,
            CKR_SAVED_STATE_INVALID => Self::SavedStateInvalid,
            CKR_SEED_RANDOM_REQUIRED => Self::SeedRandomRequired,
            CKR_SESSION_ASYNC_NOT_SUPPORTED => Self::SessionAsyncNotSupported,
            CKR_SESSION_CLOSED => Self::SessionClosed,
            CKR_SESSION_COUNT => Self::SessionCount,
            CKR_SESSION_EXISTS => Self::SessionExists,
            CKR_SESSION_HANDLE_INVALID => Self::SessionHandleInvalid,
            CKR_SESSION_PARALLEL_NOT_SUPPORTED => Self::SessionParallelNotSupported,
            CKR_SESSION_READ_ONLY => Self::SessionReadOnly,
            CKR_SESSION_READ_ONLY_EXISTS => Self::SessionReadOnlyExists,
            CKR_SESSION_READ_WRITE_SO_EXISTS => Self::SessionReadWriteSoExists,
            CKR_SIGNATURE_INVALID => Self::SignatureInvalid,
            CKR_SIGNATURE_LEN_RANGE => Self::SignatureLenRange,
            CKR_SLOT_ID_INVALID => Self::SlotIdInvalid,
            CKR_STATE_UNSAVEABLE => Self::StateUnsaveable,
            CKR_TEMPLATE_INCOMPLETE => Self::TemplateIncomplete,
            CKR_TEMPLATE_INCONSISTENT => Self::TemplateInconsistent,
            CKR_TOKEN_NOT_INITIALIZED => Self::TokenNotInitialized,
            CKR_TOKEN_NOT_PRESENT => Self::TokenNotPresent,
            CKR_TOKEN_NOT_RECOGNIZED => Self::TokenNotRecognized,
            CKR_TOKEN_RESOURCE_EXCEEDED => Self::TokenResourceExceeded,
            CKR_TOKEN_WRITE_PROTECTED => Self::TokenWriteProtected,
            CKR_UNWRAPPING_KEY_HANDLE_INVALID => Self::UnwrappingKeyHandleInvalid,
            CKR_UNWRAPPING_KEY_SIZE_RANGE => Self::UnwrappingKeySizeRange,
            CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT => Self::UnwrappingKeyTypeInconsistent,
            CKR_USER_ALREADY_LOGGED_IN => Self::UserAlreadyLoggedIn,
            CKR_USER_ANOTHER_ALREADY_LOGGED_IN => Self::UserAnotherAlreadyLoggedIn,
            CKR_USER_NOT_LOGGED_IN => Self::UserNotLoggedIn,
            CKR_USER_PIN_NOT_INITIALIZED => Self::UserPinNotInitialized,
            CKR_USER_TOO_MANY_TYPES => Self::UserTooManyTypes,
            CKR_USER_TYPE_INVALID => Self::UserTypeInvalid,
            CKR_WRAPPED_KEY_INVALID => Self::WrappedKeyInvalid,
            CKR_WRAPPED_KEY_LEN_RANGE => Self::WrappedKeyLenRange,
            CKR_WRAPPING_KEY_HANDLE_INVALID => Self::WrappingKeyHandleInvalid,
            CKR_WRAPPING_KEY_SIZE_RANGE => Self::WrappingKeySizeRange,
            CKR_WRAPPING_KEY_TYPE_INCONSISTENT => Self::WrappingKeyTypeInconsistent,
            other => Self::Foreign(other),
        }
    }

    /// The `CKR_*` name of this error's code, for messages.
    pub fn name(&self) -> &'static str {
        rv_name(self.rv())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BufferTooSmall { needed } => write!(f, "CKR_BUFFER_TOO_SMALL (needs {needed})"),
            Self::Config(msg) => write!(f, "configuration error: {msg}"),
            Self::Internal(msg) => write!(f, "CKR_GENERAL_ERROR (internal: {msg})"),
            Self::Store(msg) => write!(f, "CKR_DEVICE_ERROR (store: {msg})"),
            Self::Foreign(rv) => write!(f, "{} (0x{rv:08x})", rv_name(*rv)),
            other => f.write_str(other.name()),
        }
    }
}

impl std::error::Error for Error {}

/// The return value named `name` (`CKR_PIN_INVALID`), among the standard codes.
pub fn rv_from_name(name: &str) -> Option<CK_RV> {
    (0..0x400).find(|rv| rv_name(*rv) == name)
}

/// The `CKR_*` name of a return value (`CKR_VENDOR_DEFINED+n` and unknown codes get a generic name).
pub fn rv_name(rv: CK_RV) -> &'static str {
    match rv {
        CKR_ACTION_PROHIBITED => "CKR_ACTION_PROHIBITED",
        CKR_AEAD_DECRYPT_FAILED => "CKR_AEAD_DECRYPT_FAILED",
        CKR_ARGUMENTS_BAD => "CKR_ARGUMENTS_BAD",
        CKR_ATTRIBUTE_READ_ONLY => "CKR_ATTRIBUTE_READ_ONLY",
        CKR_ATTRIBUTE_SENSITIVE => "CKR_ATTRIBUTE_SENSITIVE",
        CKR_ATTRIBUTE_TYPE_INVALID => "CKR_ATTRIBUTE_TYPE_INVALID",
        CKR_ATTRIBUTE_VALUE_INVALID => "CKR_ATTRIBUTE_VALUE_INVALID",
        CKR_BUFFER_TOO_SMALL => "CKR_BUFFER_TOO_SMALL",
        CKR_CANCEL => "CKR_CANCEL",
        CKR_CANT_LOCK => "CKR_CANT_LOCK",
        CKR_CRYPTOKI_ALREADY_INITIALIZED => "CKR_CRYPTOKI_ALREADY_INITIALIZED",
        CKR_CRYPTOKI_NOT_INITIALIZED => "CKR_CRYPTOKI_NOT_INITIALIZED",
        CKR_CURVE_NOT_SUPPORTED => "CKR_CURVE_NOT_SUPPORTED",
        CKR_DATA_INVALID => "CKR_DATA_INVALID",
        CKR_DATA_LEN_RANGE => "CKR_DATA_LEN_RANGE",
        CKR_DEVICE_ERROR => "CKR_DEVICE_ERROR",
        CKR_DEVICE_MEMORY => "CKR_DEVICE_MEMORY",
        CKR_DEVICE_REMOVED => "CKR_DEVICE_REMOVED",
        CKR_DOMAIN_PARAMS_INVALID => "CKR_DOMAIN_PARAMS_INVALID",
        CKR_ENCRYPTED_DATA_INVALID => "CKR_ENCRYPTED_DATA_INVALID",
        CKR_ENCRYPTED_DATA_LEN_RANGE => "CKR_ENCRYPTED_DATA_LEN_RANGE",
        CKR_EXCEEDED_MAX_ITERATIONS => "CKR_EXCEEDED_MAX_ITERATIONS",
        CKR_FIPS_SELF_TEST_FAILED => "CKR_FIPS_SELF_TEST_FAILED",
        CKR_FUNCTION_CANCELED => "CKR_FUNCTION_CANCELED",
        CKR_FUNCTION_FAILED => "CKR_FUNCTION_FAILED",
        CKR_FUNCTION_NOT_PARALLEL => "CKR_FUNCTION_NOT_PARALLEL",
        CKR_FUNCTION_NOT_SUPPORTED => "CKR_FUNCTION_NOT_SUPPORTED",
        CKR_FUNCTION_REJECTED => "CKR_FUNCTION_REJECTED",
        CKR_GENERAL_ERROR => "CKR_GENERAL_ERROR",
        CKR_HOST_MEMORY => "CKR_HOST_MEMORY",
        CKR_INFORMATION_SENSITIVE => "CKR_INFORMATION_SENSITIVE",
        CKR_KEY_CHANGED => "CKR_KEY_CHANGED",
        CKR_KEY_EXHAUSTED => "CKR_KEY_EXHAUSTED",
        CKR_KEY_FUNCTION_NOT_PERMITTED => "CKR_KEY_FUNCTION_NOT_PERMITTED",
        CKR_KEY_HANDLE_INVALID => "CKR_KEY_HANDLE_INVALID",
        CKR_KEY_INDIGESTIBLE => "CKR_KEY_INDIGESTIBLE",
        CKR_KEY_NEEDED => "CKR_KEY_NEEDED",
        CKR_KEY_NOT_NEEDED => "CKR_KEY_NOT_NEEDED",
        CKR_KEY_NOT_WRAPPABLE => "CKR_KEY_NOT_WRAPPABLE",
        CKR_KEY_SIZE_RANGE => "CKR_KEY_SIZE_RANGE",
        CKR_KEY_TYPE_INCONSISTENT => "CKR_KEY_TYPE_INCONSISTENT",
        CKR_KEY_UNEXTRACTABLE => "CKR_KEY_UNEXTRACTABLE",
        CKR_LIBRARY_LOAD_FAILED => "CKR_LIBRARY_LOAD_FAILED",
        CKR_MECHANISM_INVALID => "CKR_MECHANISM_INVALID",
        CKR_MECHANISM_PARAM_INVALID => "CKR_MECHANISM_PARAM_INVALID",
        CKR_MUTEX_BAD => "CKR_MUTEX_BAD",
        CKR_MUTEX_NOT_LOCKED => "CKR_MUTEX_NOT_LOCKED",
        CKR_NEED_TO_CREATE_THREADS => "CKR_NEED_TO_CREATE_THREADS",
        CKR_NEW_PIN_MODE => "CKR_NEW_PIN_MODE",
        CKR_NEXT_OTP => "CKR_NEXT_OTP",
        CKR_NO_EVENT => "CKR_NO_EVENT",
        CKR_OBJECT_HANDLE_INVALID => "CKR_OBJECT_HANDLE_INVALID",
        CKR_OK => "CKR_OK",
        CKR_OPERATION_ACTIVE => "CKR_OPERATION_ACTIVE",
        CKR_OPERATION_CANCEL_FAILED => "CKR_OPERATION_CANCEL_FAILED",
        CKR_OPERATION_NOT_INITIALIZED => "CKR_OPERATION_NOT_INITIALIZED",
        CKR_OPERATION_NOT_VALIDATED => "CKR_OPERATION_NOT_VALIDATED",
        CKR_PARAMETER_SET_NOT_SUPPORTED => "CKR_PARAMETER_SET_NOT_SUPPORTED",
        CKR_PENDING => "CKR_PENDING",
        CKR_PIN_EXPIRED => "CKR_PIN_EXPIRED",
        CKR_PIN_INCORRECT => "CKR_PIN_INCORRECT",
        CKR_PIN_INVALID => "CKR_PIN_INVALID",
        CKR_PIN_LEN_RANGE => "CKR_PIN_LEN_RANGE",
        CKR_PIN_LOCKED => "CKR_PIN_LOCKED",
        CKR_PIN_TOO_WEAK => "CKR_PIN_TOO_WEAK",
        CKR_PUBLIC_KEY_INVALID => "CKR_PUBLIC_KEY_INVALID",
        CKR_RANDOM_NO_RNG => "CKR_RANDOM_NO_RNG",
        CKR_RANDOM_SEED_NOT_SUPPORTED => "CKR_RANDOM_SEED_NOT_SUPPORTED",
        CKR_SAVED_STATE_INVALID => "CKR_SAVED_STATE_INVALID",
        CKR_SEED_RANDOM_REQUIRED => "CKR_SEED_RANDOM_REQUIRED",
        CKR_SESSION_ASYNC_NOT_SUPPORTED => "CKR_SESSION_ASYNC_NOT_SUPPORTED",
        CKR_SESSION_CLOSED => "CKR_SESSION_CLOSED",
        CKR_SESSION_COUNT => "CKR_SESSION_COUNT",
        CKR_SESSION_EXISTS => "CKR_SESSION_EXISTS",
        CKR_SESSION_HANDLE_INVALID => "CKR_SESSION_HANDLE_INVALID",
        CKR_SESSION_PARALLEL_NOT_SUPPORTED => "CKR_SESSION_PARALLEL_NOT_SUPPORTED",
        CKR_SESSION_READ_ONLY => "CKR_SESSION_READ_ONLY",
        CKR_SESSION_READ_ONLY_EXISTS => "CKR_SESSION_READ_ONLY_EXISTS",
        CKR_SESSION_READ_WRITE_SO_EXISTS => "CKR_SESSION_READ_WRITE_SO_EXISTS",
        CKR_SIGNATURE_INVALID => "CKR_SIGNATURE_INVALID",
        CKR_SIGNATURE_LEN_RANGE => "CKR_SIGNATURE_LEN_RANGE",
        CKR_SLOT_ID_INVALID => "CKR_SLOT_ID_INVALID",
        CKR_STATE_UNSAVEABLE => "CKR_STATE_UNSAVEABLE",
        CKR_TEMPLATE_INCOMPLETE => "CKR_TEMPLATE_INCOMPLETE",
        CKR_TEMPLATE_INCONSISTENT => "CKR_TEMPLATE_INCONSISTENT",
        CKR_TOKEN_NOT_INITIALIZED => "CKR_TOKEN_NOT_INITIALIZED",
        CKR_TOKEN_NOT_PRESENT => "CKR_TOKEN_NOT_PRESENT",
        CKR_TOKEN_NOT_RECOGNIZED => "CKR_TOKEN_NOT_RECOGNIZED",
        CKR_TOKEN_RESOURCE_EXCEEDED => "CKR_TOKEN_RESOURCE_EXCEEDED",
        CKR_TOKEN_WRITE_PROTECTED => "CKR_TOKEN_WRITE_PROTECTED",
        CKR_UNWRAPPING_KEY_HANDLE_INVALID => "CKR_UNWRAPPING_KEY_HANDLE_INVALID",
        CKR_UNWRAPPING_KEY_SIZE_RANGE => "CKR_UNWRAPPING_KEY_SIZE_RANGE",
        CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT => "CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT",
        CKR_USER_ALREADY_LOGGED_IN => "CKR_USER_ALREADY_LOGGED_IN",
        CKR_USER_ANOTHER_ALREADY_LOGGED_IN => "CKR_USER_ANOTHER_ALREADY_LOGGED_IN",
        CKR_USER_NOT_LOGGED_IN => "CKR_USER_NOT_LOGGED_IN",
        CKR_USER_PIN_NOT_INITIALIZED => "CKR_USER_PIN_NOT_INITIALIZED",
        CKR_USER_TOO_MANY_TYPES => "CKR_USER_TOO_MANY_TYPES",
        CKR_USER_TYPE_INVALID => "CKR_USER_TYPE_INVALID",
        CKR_WRAPPED_KEY_INVALID => "CKR_WRAPPED_KEY_INVALID",
        CKR_WRAPPED_KEY_LEN_RANGE => "CKR_WRAPPED_KEY_LEN_RANGE",
        CKR_WRAPPING_KEY_HANDLE_INVALID => "CKR_WRAPPING_KEY_HANDLE_INVALID",
        CKR_WRAPPING_KEY_SIZE_RANGE => "CKR_WRAPPING_KEY_SIZE_RANGE",
        CKR_WRAPPING_KEY_TYPE_INCONSISTENT => "CKR_WRAPPING_KEY_TYPE_INCONSISTENT",
        v if v >= CKR_VENDOR_DEFINED => "CKR_VENDOR_DEFINED",
        _ => "CKR_(unknown)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_rv_round_trips_every_standard_code() {
        for rv in 1..0x300 {
            let e = Error::from_rv(rv);
            assert_eq!(e.rv(), rv, "{e:?}");
        }
    }

    #[test]
    fn foreign_vendor_code_passes_through() {
        let rv = CKR_VENDOR_DEFINED + 7;
        assert_eq!(Error::from_rv(rv), Error::Foreign(rv));
        assert_eq!(Error::Foreign(rv).rv(), rv);
    }

    #[test]
    fn detail_variants_map_to_their_codes() {
        assert_eq!(
            Error::BufferTooSmall { needed: 3 }.rv(),
            CKR_BUFFER_TOO_SMALL
        );
        assert_eq!(Error::Internal("x").rv(), CKR_GENERAL_ERROR);
        assert_eq!(Error::Config("x".into()).rv(), CKR_GENERAL_ERROR);
        assert_eq!(Error::Store("x".into()).rv(), CKR_DEVICE_ERROR);
        assert_eq!(Error::PinIncorrect.to_string(), "CKR_PIN_INCORRECT");
    }
}
