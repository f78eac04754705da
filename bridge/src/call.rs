//! The vocabulary: every PKCS#11 function a backend serves, described once.
//!
//! One table ([`calls!`] below) lists each function: its wire tag, its variant of [`Call`],
//! its C name, its method name, the slot or session it acts on, its arguments and what it
//! returns. Everything that forwards, inspects or carries a call follows from that table:
//!
//! - [`Call`]: one variant per function, holding the arguments as the C door decoded them
//!   (borrowed: input bytes, output buffers, templates, in/out mechanism parameters);
//! - [`Backend`]: one entry, [`Backend::call`]; the router, the policy/audit overlay and the
//!   remote client implement only that, so a new function reaches every layer by construction;
//! - [`BackendExt`]: the typed methods (`sign`, `unwrap_key` ...) as thin provided wrappers
//!   that build a `Call`, for every caller of a backend;
//! - [`Functions`]: the same methods one by one, each `CKR_FUNCTION_NOT_SUPPORTED` by default,
//!   for the backends that do the work themselves (the firmware's `Device`, a loaded module):
//!   `call.dispatch(self)` is their whole `Backend` implementation;
//! - the remote protocol: [`Call::encode`] on the client, [`Request`] (the same call with owned
//!   arguments) on the server, and [`Reply`], which carries outputs back
//!   ([`Call::deliver`] puts them into the caller's buffers).
//!
//! The table also gives each function the version of the function list that first has it
//! (the C door builds `CK_FUNCTION_LIST` and `CK_FUNCTION_LIST_3_0` from it) and its
//! [`Access`] (the tenants' role class, read by `tenant::RoleGate`).
//!
//! Adding a PKCS#11 function touches three files: its C entry point
//! (`pkcs11-module/src/abi/<family>.rs`), one line of the table, and the firmware
//! (`Functions` for `Device`, `firmware-sim/src/device/`); two more for a real HSM's module
//! (`loaded/mod.rs`, `loaded/ffi.rs`). See `docs/architecture.md` §3.
//!
//! # Output convention
//!
//! Every function that produces bytes takes `out: Option<&mut [u8]>` and returns the number of
//! bytes produced (or needed). `None` is a length query. A buffer that is too short gives
//! `Err(Error::BufferTooSmall { needed })`. Neither a length query nor `BufferTooSmall` ends
//! the active operation; any other outcome of a single-part or final call does (PKCS#11 v3.1
//! §5.2: "A call to C_Sign always terminates the active signing operation unless it returns
//! CKR_BUFFER_TOO_SMALL or is a successful call ... to determine the length of the buffer").

use cryptoki_sys::{CK_FLAGS, CK_MECHANISM_TYPE, CK_ULONG};

use crate::error::{Error, Result};
use crate::remote::wire::{Bytes, Reader, Wire, Writer, malformed};
use crate::types::*;

/// The largest output buffer a server allocates for one call (a frame must still carry it).
pub const MAX_OUT: usize = crate::remote::proto::MAX_FRAME - 1024;

/// How one argument of a [`Call`] is held, carried over the wire and served.
///
/// `Self` is the borrowed form a `Call<'a>` holds; `Owned` what a server decodes it into and
/// lends to the call; `carry` and `deliver` move what an argument brings back (an output
/// buffer's bytes, updated mechanism parameters) from the serving side to the calling side.
pub trait Arg<'a>: Sized {
    /// The decoded, owned form.
    type Owned;
    /// Appends the wire form (an output buffer travels as its length).
    fn put(&self, w: &mut Writer);
    /// Decodes the wire form.
    fn get(r: &mut Reader<'_>) -> Result<Self::Owned>;
    /// Appends the wire form of a decoded argument (the same bytes `get` read).
    fn put_owned(owned: &Self::Owned, w: &mut Writer);
    /// The borrowed form of a decoded argument.
    fn lend(owned: &'a mut Self::Owned) -> Self;
    /// Serving side, after the call: what this argument brings back, added to the reply.
    fn carry(owned: Self::Owned, reply: Reply) -> Reply {
        let _ = owned;
        reply
    }
    /// Calling side: takes what this argument brings back out of the reply.
    fn deliver(&mut self, reply: &mut Reply) -> Result<()> {
        let _ = reply;
        Ok(())
    }
    /// Whether the argument asks for a length only (an absent output buffer).
    fn is_query(&self) -> bool {
        false
    }
    /// The mechanism, if the argument is one.
    fn mechanism(&self) -> Option<&Mechanism> {
        None
    }
    /// The template, if the argument is one.
    fn template(&self) -> Option<&Template> {
        None
    }
    /// The object, if the argument names one.
    fn object(&self) -> Option<ObjectHandle> {
        None
    }
    /// What the argument is, for a layer that describes calls (the recorder).
    fn view(&self) -> View<'_>;
}

/// One argument of a [`Call`] as its kind shows it, borrowed: what [`Call::args`] lists with
/// each argument's name, so that a layer can describe any call without naming functions.
#[derive(Debug)]
pub enum View<'v> {
    /// A flag (`token_present`, `last`).
    Bool(bool),
    /// A `CK_ULONG` (flags, a user type, a mechanism type).
    Ulong(u64),
    /// A count (`max`).
    Count(usize),
    /// A slot.
    Slot(SlotId),
    /// A session.
    Session(SessionHandle),
    /// An object.
    Object(ObjectHandle),
    /// An optional object.
    MaybeObject(Option<ObjectHandle>),
    /// Input bytes (data, a PIN, a wrapped key).
    Bytes(&'v [u8]),
    /// Optional input bytes.
    MaybeBytes(Option<&'v [u8]>),
    /// A token label (32 blank-padded bytes).
    Label(&'v [u8; 32]),
    /// Attribute types (`C_GetAttributeValue`).
    Types(&'v [CK_ULONG]),
    /// A template.
    Template(&'v Template),
    /// A mechanism.
    Mechanism(&'v Mechanism),
    /// Per-message mechanism parameters.
    Params(&'v MechanismParams),
    /// An output buffer of this length (`None`: a length query).
    Out(Option<usize>),
    /// A buffer to fill whole, of this length.
    Fill(usize),
}

/// Arguments passed by value.
macro_rules! value_args {
    ($($t:ty => $view:ident),*) => {$(
        impl<'a> Arg<'a> for $t {
            type Owned = $t;
            fn put(&self, w: &mut Writer) {
                Wire::put(self, w);
            }
            fn get(r: &mut Reader<'_>) -> Result<$t> {
                <$t as Wire>::get(r)
            }
            fn put_owned(owned: &$t, w: &mut Writer) {
                Wire::put(owned, w);
            }
            fn lend(owned: &'a mut $t) -> $t {
                *owned
            }
            fn view(&self) -> View<'_> {
                View::$view(*self)
            }
        }
    )*};
}
value_args!(
    bool => Bool,
    u64 => Ulong,
    usize => Count,
    SlotId => Slot,
    SessionHandle => Session,
    Option<ObjectHandle> => MaybeObject
);

impl<'a> Arg<'a> for ObjectHandle {
    type Owned = ObjectHandle;
    fn put(&self, w: &mut Writer) {
        Wire::put(self, w);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self> {
        <Self as Wire>::get(r)
    }
    fn put_owned(owned: &Self, w: &mut Writer) {
        Wire::put(owned, w);
    }
    fn lend(owned: &'a mut Self) -> Self {
        *owned
    }
    fn view(&self) -> View<'_> {
        View::Object(*self)
    }
    fn object(&self) -> Option<ObjectHandle> {
        Some(*self)
    }
}

/// Input bytes.
impl<'a> Arg<'a> for &'a [u8] {
    type Owned = Bytes;
    fn put(&self, w: &mut Writer) {
        w.bytes(self);
    }
    fn get(r: &mut Reader<'_>) -> Result<Bytes> {
        <Bytes as Wire>::get(r)
    }
    fn put_owned(owned: &Bytes, w: &mut Writer) {
        Wire::put(owned, w);
    }
    fn lend(owned: &'a mut Bytes) -> Self {
        &owned.0
    }
    fn view(&self) -> View<'_> {
        View::Bytes(self)
    }
}

/// Optional input bytes (a PIN on a protected path, the last part's signature).
impl<'a> Arg<'a> for Option<&'a [u8]> {
    type Owned = Option<Bytes>;
    fn put(&self, w: &mut Writer) {
        match self {
            None => w.u8(0),
            Some(b) => {
                w.u8(1);
                w.bytes(b);
            }
        }
    }
    fn get(r: &mut Reader<'_>) -> Result<Option<Bytes>> {
        <Option<Bytes> as Wire>::get(r)
    }
    fn put_owned(owned: &Option<Bytes>, w: &mut Writer) {
        Wire::put(owned, w);
    }
    fn lend(owned: &'a mut Option<Bytes>) -> Self {
        owned.as_ref().map(|b| b.0.as_slice())
    }
    fn view(&self) -> View<'_> {
        View::MaybeBytes(*self)
    }
}

/// A token label.
impl<'a> Arg<'a> for &'a [u8; 32] {
    type Owned = [u8; 32];
    fn put(&self, w: &mut Writer) {
        w.raw(*self);
    }
    fn get(r: &mut Reader<'_>) -> Result<[u8; 32]> {
        <[u8; 32] as Wire>::get(r)
    }
    fn put_owned(owned: &[u8; 32], w: &mut Writer) {
        w.raw(owned);
    }
    fn lend(owned: &'a mut [u8; 32]) -> Self {
        owned
    }
    fn view(&self) -> View<'_> {
        View::Label(self)
    }
}

/// Attribute types (`C_GetAttributeValue`).
impl<'a> Arg<'a> for &'a [CK_ULONG] {
    type Owned = Vec<CK_ULONG>;
    fn put(&self, w: &mut Writer) {
        w.count(self.len());
        for t in *self {
            Wire::put(t, w);
        }
    }
    fn get(r: &mut Reader<'_>) -> Result<Vec<CK_ULONG>> {
        <Vec<CK_ULONG> as Wire>::get(r)
    }
    fn put_owned(owned: &Vec<CK_ULONG>, w: &mut Writer) {
        Wire::put(owned, w);
    }
    fn lend(owned: &'a mut Vec<CK_ULONG>) -> Self {
        owned
    }
    fn view(&self) -> View<'_> {
        View::Types(self)
    }
}

impl<'a> Arg<'a> for &'a Template {
    type Owned = Template;
    fn put(&self, w: &mut Writer) {
        Wire::put(*self, w);
    }
    fn get(r: &mut Reader<'_>) -> Result<Template> {
        <Template as Wire>::get(r)
    }
    fn put_owned(owned: &Template, w: &mut Writer) {
        Wire::put(owned, w);
    }
    fn lend(owned: &'a mut Template) -> Self {
        owned
    }
    fn view(&self) -> View<'_> {
        View::Template(self)
    }
    fn template(&self) -> Option<&Template> {
        Some(self)
    }
}

impl<'a> Arg<'a> for &'a Mechanism {
    type Owned = Mechanism;
    fn put(&self, w: &mut Writer) {
        Wire::put(*self, w);
    }
    fn get(r: &mut Reader<'_>) -> Result<Mechanism> {
        <Mechanism as Wire>::get(r)
    }
    fn put_owned(owned: &Mechanism, w: &mut Writer) {
        Wire::put(owned, w);
    }
    fn lend(owned: &'a mut Mechanism) -> Self {
        owned
    }
    fn view(&self) -> View<'_> {
        View::Mechanism(self)
    }
    fn mechanism(&self) -> Option<&Mechanism> {
        Some(self)
    }
}

/// Per-message mechanism parameters: in, and back out (a generated IV, a tag).
impl<'a> Arg<'a> for &'a mut MechanismParams {
    type Owned = MechanismParams;
    fn put(&self, w: &mut Writer) {
        Wire::put(&**self, w);
    }
    fn get(r: &mut Reader<'_>) -> Result<MechanismParams> {
        <MechanismParams as Wire>::get(r)
    }
    fn put_owned(owned: &MechanismParams, w: &mut Writer) {
        Wire::put(owned, w);
    }
    fn lend(owned: &'a mut MechanismParams) -> Self {
        owned
    }
    fn view(&self) -> View<'_> {
        View::Params(self)
    }
    fn carry(owned: MechanismParams, reply: Reply) -> Reply {
        Reply::Message(owned, Box::new(reply))
    }
    fn deliver(&mut self, reply: &mut Reply) -> Result<()> {
        match std::mem::replace(reply, Reply::Unit(())) {
            Reply::Message(params, inner) => {
                **self = params;
                *reply = *inner;
                Ok(())
            }
            other => Err(unexpected(&other)),
        }
    }
}

/// A server's output buffer: the length the caller asked for, and the buffer lent to the call
/// (at most [`MAX_OUT`] bytes, allocated when it is lent).
#[derive(Debug)]
pub struct OutBuf {
    asked: usize,
    buf: Vec<u8>,
}

/// An output buffer (`None`: a length query). It travels as its length; the server calls the
/// backend with a buffer of that length (at most [`MAX_OUT`]) and sends back the bytes
/// produced, which the client copies into the caller's buffer.
impl<'a> Arg<'a> for Option<&'a mut [u8]> {
    type Owned = Option<OutBuf>;
    fn put(&self, w: &mut Writer) {
        Wire::put(&self.as_ref().map(|b| b.len()), w);
    }
    fn get(r: &mut Reader<'_>) -> Result<Option<OutBuf>> {
        Ok(<Option<usize> as Wire>::get(r)?.map(|asked| OutBuf {
            asked,
            buf: Vec::new(),
        }))
    }
    fn put_owned(owned: &Option<OutBuf>, w: &mut Writer) {
        Wire::put(&owned.as_ref().map(|o| o.asked), w);
    }
    fn lend(owned: &'a mut Option<OutBuf>) -> Self {
        owned.as_mut().map(|o| {
            o.buf.resize(o.asked.min(MAX_OUT), 0);
            o.buf.as_mut_slice()
        })
    }
    fn view(&self) -> View<'_> {
        View::Out(self.as_ref().map(|b| b.len()))
    }
    fn carry(owned: Option<OutBuf>, reply: Reply) -> Reply {
        let produced = |n: usize, mut buf: Vec<u8>| {
            if n > buf.len() {
                log::error!("a backend produced more than the buffer it was given");
                return Reply::Len(n);
            }
            buf.truncate(n);
            Reply::Out(Bytes(buf))
        };
        match (reply, owned) {
            (Reply::Len(n), Some(o)) => produced(n, o.buf),
            (Reply::Message(p, inner), Some(o)) => match *inner {
                Reply::Len(n) => Reply::Message(p, Box::new(produced(n, o.buf))),
                other => Reply::Message(p, Box::new(other)),
            },
            (reply, _) => reply,
        }
    }
    fn deliver(&mut self, reply: &mut Reply) -> Result<()> {
        let slot = match reply {
            Reply::Message(_, inner) => &mut **inner,
            other => other,
        };
        if let Reply::Out(Bytes(bytes)) = slot {
            let n = bytes.len();
            let dst = self
                .as_deref_mut()
                .and_then(|out| out.get_mut(..n))
                .ok_or_else(|| unexpected(&Reply::Len(n)))?;
            dst.copy_from_slice(bytes);
            *slot = Reply::Len(n);
        }
        Ok(())
    }
    fn is_query(&self) -> bool {
        self.is_none()
    }
}

/// A buffer to fill whole (`C_GenerateRandom`): travels as its length, comes back as bytes.
impl<'a> Arg<'a> for &'a mut [u8] {
    type Owned = Vec<u8>;
    fn put(&self, w: &mut Writer) {
        Wire::put(&self.len(), w);
    }
    fn get(r: &mut Reader<'_>) -> Result<Vec<u8>> {
        let n = <usize as Wire>::get(r)?;
        if n > MAX_OUT {
            return Err(malformed("random length"));
        }
        Ok(vec![0u8; n])
    }
    fn put_owned(owned: &Vec<u8>, w: &mut Writer) {
        Wire::put(&owned.len(), w);
    }
    fn lend(owned: &'a mut Vec<u8>) -> Self {
        owned
    }
    fn view(&self) -> View<'_> {
        View::Fill(self.len())
    }
    fn carry(owned: Vec<u8>, reply: Reply) -> Reply {
        match reply {
            Reply::Unit(()) => Reply::Random(Bytes(owned)),
            other => other,
        }
    }
    fn deliver(&mut self, reply: &mut Reply) -> Result<()> {
        if let Reply::Random(Bytes(bytes)) = reply {
            if bytes.len() != self.len() {
                return Err(unexpected(reply));
            }
            self.copy_from_slice(bytes);
            *reply = Reply::Unit(());
        }
        Ok(())
    }
}

/// What a call acts on, for routing.
pub enum Target<'c> {
    /// A slot (the router maps virtual slot ids).
    Slot(&'c mut SlotId),
    /// A session (the router and the remote client map session handles).
    Session(&'c mut SessionHandle),
    /// Neither (`C_GetSlotList`, `C_WaitForSlotEvent`).
    None,
}

/// The slot or session a call names first.
pub trait Targeted {
    /// As a routing target.
    fn target(&mut self) -> Target<'_>;
    /// The session, if it is one.
    fn session(&self) -> Option<SessionHandle> {
        None
    }
}

impl Targeted for SlotId {
    fn target(&mut self) -> Target<'_> {
        Target::Slot(self)
    }
}

impl Targeted for SessionHandle {
    fn target(&mut self) -> Target<'_> {
        Target::Session(self)
    }
    fn session(&self) -> Option<SessionHandle> {
        Some(*self)
    }
}

/// What a function does, as the tenants' roles see it: the `calls!` table gives every
/// function one (the column is part of each line's grammar, so a function cannot be added
/// without one), and `tenant::RoleGate` decides from it alone which roles may call it
/// (docs/architecture.md §8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    /// Describes slots, tokens, mechanisms or sessions, opens, closes or cancels in sessions,
    /// logs out, or gives randomness: every role, the auditor included.
    Describe,
    /// Administers a token (`C_InitToken`, `C_InitPIN`): crypto officers.
    AdministerToken,
    /// Changes the PIN logged in with (`C_SetPIN`): officers and users.
    OwnPin,
    /// Logs in: as the user type it names (the SO: officers; the user: officers and users; a
    /// key's context-specific login: users).
    Login,
    /// Reads objects (sizes, attributes, searches): officers and users.
    ReadObjects,
    /// Digests data (uses no key): officers and users.
    Digest,
    /// Uses a key (encrypts, decrypts, signs, verifies, wraps, digests a key, saves or restores
    /// an operation's state): crypto users.
    UseKey,
    /// Makes new objects from its templates: officers and users, and a token object only a
    /// role that may keep keys.
    MakeObject,
    /// Changes or destroys an object: officers and users, and a token object only a role that
    /// may keep keys.
    ChangeObject,
    /// Copies an object: as [`Access::ChangeObject`] for the original and
    /// [`Access::MakeObject`] for the copy.
    CopyObject,
    /// Unwraps a key: a key's use, and a new object (which the unwrapping key's
    /// `CKA_UNWRAP_TEMPLATE` may make a token object).
    Unwrap,
    /// Derives a key: a key's use, and a new object (which the base key's
    /// `CKA_DERIVE_TEMPLATE` may make a token object).
    Derive,
}

impl Access {
    /// Whether a successful call makes objects (its reply names them).
    pub fn makes_objects(self) -> bool {
        matches!(
            self,
            Self::MakeObject | Self::CopyObject | Self::Unwrap | Self::Derive
        )
    }
}

/// The value a successful call returns. Output bytes are written into the caller's buffer
/// and the reply says how many (`Len`); `Out`, `Random` and `Message` exist on the wire only.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Reply {
    Unit(()),
    Slots(Vec<SlotId>),
    Slot(SlotId),
    SlotInfo(SlotInfo),
    TokenInfo(TokenInfo),
    Mechanisms(Vec<CK_MECHANISM_TYPE>),
    MechanismInfo(MechanismInfo),
    Session(SessionHandle),
    SessionInfo(SessionInfo),
    Object(ObjectHandle),
    KeyPair((ObjectHandle, ObjectHandle)),
    Ulong(CK_ULONG),
    Answers(Vec<AttrAnswer>),
    Objects(Vec<ObjectHandle>),
    /// The bytes an output call produced (wire only: the caller gave a buffer).
    Out(Bytes),
    /// The length an output call produced or needs.
    Len(usize),
    /// Random bytes (wire only).
    Random(Bytes),
    /// A message call's updated parameters and its own reply (wire only).
    Message(MechanismParams, Box<Reply>),
}

/// A reply that does not fit the call.
pub fn unexpected(reply: &Reply) -> Error {
    log::error!("unexpected reply {reply:?}");
    Error::DeviceError
}

macro_rules! calls {
    (<$a:lifetime>
        $( $(#[$gdoc:meta])* $G:ident {
            $( $tag:literal $V:ident $cname:ident [$since:literal $access:ident] $m:ident
                ( $($t:ident : $tt:ty)? ; $($f:ident : $fty:ty),* ) -> $ret:ty = $rv:ident ; )*
        } )*
    ) => {
        /// One PKCS#11 call, with its arguments as the C door decoded them.
        #[allow(missing_docs)]
        pub enum Call<$a> {
            $( $( $V { $($t: $tt,)? $($f: $fty),* }, )* )*
        }

        /// A call as a server decodes it: every argument owned, lent to a [`Call`] by
        /// [`Request::serve`].
        #[allow(missing_docs)]
        pub enum Request<$a> {
            $( $( $V { $($t: <$tt as Arg<$a>>::Owned,)? $($f: <$fty as Arg<$a>>::Owned),* }, )* )*
        }

        impl<$a> Call<$a> {
            /// The C function's name, for logs and the audit log.
            pub fn name(&self) -> &'static str {
                match self {
                    $( $( Self::$V { .. } => stringify!($cname), )* )*
                }
            }

            /// What the call does, as the tenants' roles see it (its column in the table).
            pub fn access(&self) -> Access {
                match self {
                    $( $( Self::$V { .. } => Access::$access, )* )*
                }
            }

            /// Every function's C name and [`Access`], in the table's order.
            pub const ACCESS: &'static [(&'static str, Access)] =
                &[$($((stringify!($cname), Access::$access),)*)*];

            /// The session the call acts on, if it names one.
            #[allow(unreachable_code)]
            pub fn session(&self) -> Option<SessionHandle> {
                match self {
                    $( $( Self::$V { $($t,)? .. } => {
                        $( return Targeted::session($t); )?
                        None
                    } )* )*
                }
            }

            /// The slot or session the call acts on.
            #[allow(unreachable_code)]
            pub fn target(&mut self) -> Target<'_> {
                match self {
                    $( $( Self::$V { $($t,)? .. } => {
                        $( return Targeted::target($t); )?
                        Target::None
                    } )* )*
                }
            }

            /// Whether the call only asks for an output length.
            pub fn is_query(&self) -> bool {
                match self {
                    $( $( Self::$V { $($f,)* .. } => false $(|| Arg::is_query($f))*, )* )*
                }
            }

            /// The call's mechanism, if it has one.
            pub fn mechanism(&self) -> Option<&Mechanism> {
                match self {
                    $( $( Self::$V { $($f,)* .. } => None $(.or_else(|| Arg::mechanism($f)))*, )* )*
                }
            }

            /// The templates the call carries.
            pub fn templates(&self) -> Vec<&Template> {
                match self {
                    $( $( Self::$V { $($f,)* .. } => {
                        let v: Vec<Option<&Template>> = vec![$(Arg::template($f)),*];
                        v.into_iter().flatten().collect()
                    } )* )*
                }
            }

            /// Every object the call names, in order.
            pub fn objects(&self) -> Vec<ObjectHandle> {
                match self {
                    $( $( Self::$V { $($f,)* .. } => {
                        let v: Vec<Option<ObjectHandle>> = vec![$(Arg::object($f)),*];
                        v.into_iter().flatten().collect()
                    } )* )*
                }
            }

            /// The last object the call names (the key of an operation, the object of an
            /// object function, the key a wrap exports).
            pub fn object(&self) -> Option<ObjectHandle> {
                match self {
                    $( $( Self::$V { $($f,)* .. } => {
                        let v: Vec<Option<ObjectHandle>> = vec![$(Arg::object($f)),*];
                        v.into_iter().flatten().last()
                    } )* )*
                }
            }

            /// Every argument after the slot or session, with its name in the table, as its
            /// kind shows it (the recorder describes calls from this alone).
            pub fn args(&self) -> Vec<(&'static str, View<'_>)> {
                match self {
                    $( $( Self::$V { $($f,)* .. } => vec![$((stringify!($f), Arg::view($f))),*], )* )*
                }
            }

            /// Runs the call on a backend that implements each function itself.
            pub fn dispatch<F: Functions + ?Sized>(self, f: &F) -> Result<Reply> {
                match self {
                    $( $( Self::$V { $($t,)? $($f),* } => f.$m($($t,)? $($f),*).map(Reply::$rv), )* )*
                }
            }

            /// The wire form (client side).
            pub fn encode(&self) -> Vec<u8> {
                let mut w = Writer::new();
                match self {
                    $( $( Self::$V { $($t,)? $($f),* } => {
                        w.u8($tag);
                        $( Arg::put($t, &mut w); )?
                        $( Arg::put($f, &mut w); )*
                    } )* )*
                }
                w.into_bytes()
            }

            /// Client side: puts what the reply carries (output bytes, updated parameters)
            /// into the call's arguments; the reply that remains is the typed one.
            pub fn deliver(&mut self, reply: &mut Reply) -> Result<()> {
                match self {
                    $( $( Self::$V { $($t,)? $($f),* } => {
                        $( Arg::deliver($t, reply)?; )?
                        $( Arg::deliver($f, reply)?; )*
                    } )* )*
                }
                Ok(())
            }
        }

        impl<$a> Request<$a> {
            /// Decodes a whole request frame.
            pub fn decode(b: &[u8]) -> Result<Self> {
                let mut r = Reader::new(b);
                let req = match r.u8()? {
                    $( $( $tag => Self::$V {
                        $($t: <$tt as Arg<$a>>::get(&mut r)?,)?
                        $($f: <$fty as Arg<$a>>::get(&mut r)?),*
                    }, )* )*
                    _ => return Err(malformed("unknown request tag")),
                };
                r.finish()?;
                Ok(req)
            }

            /// The wire form (the bytes `decode` read).
            pub fn encode(&self) -> Vec<u8> {
                let mut w = Writer::new();
                match self {
                    $( $( Self::$V { $($t,)? $($f),* } => {
                        w.u8($tag);
                        $( <$tt as Arg<$a>>::put_owned($t, &mut w); )?
                        $( <$fty as Arg<$a>>::put_owned($f, &mut w); )*
                    } )* )*
                }
                w.into_bytes()
            }

            /// The C function's name.
            pub fn name(&self) -> &'static str {
                match self {
                    $( $( Self::$V { .. } => stringify!($cname), )* )*
                }
            }

            /// The session the request acts on, if it names one.
            pub fn session_mut(&mut self) -> Option<&mut SessionHandle> {
                match self {
                    $( $( Self::$V { $($t,)? .. } => {
                        $( if let Target::Session(s) = Targeted::target($t) {
                            return Some(s);
                        } )?
                        None
                    } )* )*
                }
            }

            /// Lends the arguments to `f` as a [`Call`] and returns its reply with what the
            /// arguments carry back (output bytes, updated parameters). A template that makes
            /// or changes objects and names an attribute type twice is refused here, before
            /// any backend sees it, as the C door refuses it ([`Call::refuse_duplicates`]).
            pub fn serve(mut self, f: impl FnOnce(Call<'_>) -> Result<Reply>) -> Result<Reply> {
                let reply = match &mut self {
                    $( $( Self::$V { $($t,)? $($f),* } => {
                        let call = Call::$V {
                            $($t: Arg::lend($t),)?
                            $($f: Arg::lend($f)),*
                        };
                        call.refuse_duplicates().and_then(|()| f(call))
                    } )* )*
                }?;
                Ok(match self {
                    $( $( Self::$V { $($t,)? $($f),* } => {
                        let r = reply;
                        $( let r = <$tt as Arg<$a>>::carry($t, r); )?
                        $( let r = <$fty as Arg<$a>>::carry($f, r); )*
                        r
                    } )* )*
                })
            }

            /// Every request tag, for tests.
            #[cfg(test)]
            pub(crate) const TAGS: &'static [u8] = &[$($($tag,)*)*];
        }

        $(
            $(#[$gdoc])*
            ///
            /// Each function is `CKR_FUNCTION_NOT_SUPPORTED` unless it is overridden.
            #[allow(unused_variables, missing_docs)]
            pub trait $G: Send + Sync {
                $(
                    #[doc = concat!("`", stringify!($cname), "`.")]
                    fn $m<$a>(&$a self, $($t: $tt,)? $($f: $fty),*) -> Result<$ret> {
                        Err(Error::FunctionNotSupported)
                    }
                )*
            }
        )*

        /// The PKCS#11 functions one by one, grouped as the specification's chapters are
        /// (one trait per group, so a backend implements each group where its code lives),
        /// for a backend that implements each function itself (the firmware, a loaded
        /// module): such a backend's [`Backend::call`] is `call.dispatch(self)`.
        pub trait Functions: $($G +)* Send + Sync {}

        impl<T: $($G +)* Send + Sync + ?Sized> Functions for T {}

        /// The typed methods of every backend, as wrappers around [`Backend::call`].
        #[allow(missing_docs)]
        pub trait BackendExt: Backend {
            $( $(
                #[doc = concat!("`", stringify!($cname), "`.")]
                fn $m<$a>(&$a self, $($t: $tt,)? $($f: $fty),*) -> Result<$ret> {
                    match self.call(Call::$V { $($t,)? $($f),* })? {
                        Reply::$rv(v) => Ok(v),
                        other => Err(unexpected(&other)),
                    }
                }
            )* )*
        }
    };
}

impl Call<'_> {
    /// `CKR_TEMPLATE_INCONSISTENT` if a template that makes or changes objects names an
    /// attribute type twice (at any depth): every door refuses it before a layer reads it
    /// (the C door's `object_template_in`, the daemon's [`Request::serve`]). A search template
    /// may repeat a type, as at the C door.
    pub fn refuse_duplicates(&self) -> Result<()> {
        if matches!(self, Self::FindObjectsInit { .. }) {
            return Ok(());
        }
        self.templates()
            .into_iter()
            .try_for_each(Template::refuse_duplicates)
    }
}

/// A provider of PKCS#11 slots: the simulated firmware, a real HSM's module, a remote daemon,
/// or a layer in front of others (the router, the policy/audit overlay).
pub trait Backend: Send + Sync {
    /// Serves one call.
    fn call(&self, call: Call<'_>) -> Result<Reply>;
}

impl<T: Backend + ?Sized> BackendExt for T {}

/// A shared backend is one (the module's `Arc<dyn Backend>` lends itself as `&dyn Backend`).
impl<T: Backend + ?Sized> Backend for std::sync::Arc<T> {
    fn call(&self, call: Call<'_>) -> Result<Reply> {
        (**self).call(call)
    }
}

/// The vocabulary's table, handed to the macro named `$callback`: `calls!` above (everything
/// in this file), and the C door's function lists (`pkcs11-module/src/abi/interface.rs`).
///
/// One line per function: its wire tag, its [`Call`] variant, its C name, in brackets the
/// version of the specification whose function list first has it (`2.40` or `3.0`) and its
/// [`Access`] (the tenants' role class), its method name, `(slot or session; arguments)`, what
/// it returns and the [`Reply`] variant that carries it.
#[macro_export]
macro_rules! calls_table {
    ($callback:ident) => {
        $callback! { <'a>
            /// The functions of slots and tokens.
            SlotFunctions {
                1 SlotList C_GetSlotList [2.40 Describe] slot_list(; token_present: bool) -> Vec<SlotId> = Slots;
                2 SlotInfo C_GetSlotInfo [2.40 Describe] slot_info(slot: SlotId; ) -> SlotInfo = SlotInfo;
                3 TokenInfo C_GetTokenInfo [2.40 Describe] token_info(slot: SlotId; ) -> TokenInfo = TokenInfo;
                4 MechanismList C_GetMechanismList [2.40 Describe] mechanism_list(slot: SlotId; ) -> Vec<CK_MECHANISM_TYPE> = Mechanisms;
                5 MechanismInfo C_GetMechanismInfo [2.40 Describe] mechanism_info(slot: SlotId; ty: CK_MECHANISM_TYPE) -> MechanismInfo = MechanismInfo;
                6 InitToken C_InitToken [2.40 AdministerToken] init_token(slot: SlotId; so_pin: &'a [u8], label: &'a [u8; 32]) -> () = Unit;
                7 WaitForSlotEvent C_WaitForSlotEvent [2.40 Describe] wait_for_slot_event(; flags: CK_FLAGS) -> SlotId = Slot;
            }
            /// The functions of sessions, PINs and login.
            SessionFunctions {
                8 OpenSession C_OpenSession [2.40 Describe] open_session(slot: SlotId; flags: CK_FLAGS) -> SessionHandle = Session;
                9 CloseSession C_CloseSession [2.40 Describe] close_session(session: SessionHandle; ) -> () = Unit;
                10 CloseAllSessions C_CloseAllSessions [2.40 Describe] close_all_sessions(slot: SlotId; ) -> () = Unit;
                11 SessionInfo C_GetSessionInfo [2.40 Describe] session_info(session: SessionHandle; ) -> SessionInfo = SessionInfo;
                12 SessionCancel C_SessionCancel [3.0 Describe] session_cancel(session: SessionHandle; flags: CK_FLAGS) -> () = Unit;
                13 OperationState C_GetOperationState [2.40 UseKey] operation_state(session: SessionHandle; out: Option<&'a mut [u8]>) -> usize = Len;
                14 SetOperationState C_SetOperationState [2.40 UseKey] set_operation_state(session: SessionHandle; state: &'a [u8], encryption_key: Option<ObjectHandle>, authentication_key: Option<ObjectHandle>) -> () = Unit;
                15 InitPin C_InitPIN [2.40 AdministerToken] init_pin(session: SessionHandle; pin: &'a [u8]) -> () = Unit;
                16 SetPin C_SetPIN [2.40 OwnPin] set_pin(session: SessionHandle; old_pin: &'a [u8], new_pin: &'a [u8]) -> () = Unit;
                17 Login C_Login [2.40 Login] login(session: SessionHandle; user: UserType, pin: Option<&'a [u8]>) -> () = Unit;
                18 LoginUser C_LoginUser [3.0 Login] login_user(session: SessionHandle; user: UserType, pin: Option<&'a [u8]>, username: &'a [u8]) -> () = Unit;
                19 Logout C_Logout [2.40 Describe] logout(session: SessionHandle; ) -> () = Unit;
            }
            /// The functions of objects.
            ObjectFunctions {
                20 CreateObject C_CreateObject [2.40 MakeObject] create_object(session: SessionHandle; template: &'a Template) -> ObjectHandle = Object;
                21 CopyObject C_CopyObject [2.40 CopyObject] copy_object(session: SessionHandle; object: ObjectHandle, template: &'a Template) -> ObjectHandle = Object;
                22 DestroyObject C_DestroyObject [2.40 ChangeObject] destroy_object(session: SessionHandle; object: ObjectHandle) -> () = Unit;
                23 ObjectSize C_GetObjectSize [2.40 ReadObjects] object_size(session: SessionHandle; object: ObjectHandle) -> CK_ULONG = Ulong;
                24 GetAttributeValue C_GetAttributeValue [2.40 ReadObjects] get_attribute_value(session: SessionHandle; object: ObjectHandle, types: &'a [CK_ULONG]) -> Vec<AttrAnswer> = Answers;
                25 SetAttributeValue C_SetAttributeValue [2.40 ChangeObject] set_attribute_value(session: SessionHandle; object: ObjectHandle, template: &'a Template) -> () = Unit;
                26 FindObjectsInit C_FindObjectsInit [2.40 ReadObjects] find_objects_init(session: SessionHandle; template: &'a Template) -> () = Unit;
                27 FindObjects C_FindObjects [2.40 ReadObjects] find_objects(session: SessionHandle; max: usize) -> Vec<ObjectHandle> = Objects;
                28 FindObjectsFinal C_FindObjectsFinal [2.40 ReadObjects] find_objects_final(session: SessionHandle; ) -> () = Unit;
            }
            /// The functions of encryption and decryption.
            CipherFunctions {
                29 EncryptInit C_EncryptInit [2.40 UseKey] encrypt_init(session: SessionHandle; mech: &'a Mechanism, key: ObjectHandle) -> () = Unit;
                30 Encrypt C_Encrypt [2.40 UseKey] encrypt(session: SessionHandle; data: &'a [u8], out: Option<&'a mut [u8]>) -> usize = Len;
                31 EncryptUpdate C_EncryptUpdate [2.40 UseKey] encrypt_update(session: SessionHandle; data: &'a [u8], out: Option<&'a mut [u8]>) -> usize = Len;
                32 EncryptFinal C_EncryptFinal [2.40 UseKey] encrypt_final(session: SessionHandle; out: Option<&'a mut [u8]>) -> usize = Len;
                33 DecryptInit C_DecryptInit [2.40 UseKey] decrypt_init(session: SessionHandle; mech: &'a Mechanism, key: ObjectHandle) -> () = Unit;
                34 Decrypt C_Decrypt [2.40 UseKey] decrypt(session: SessionHandle; data: &'a [u8], out: Option<&'a mut [u8]>) -> usize = Len;
                35 DecryptUpdate C_DecryptUpdate [2.40 UseKey] decrypt_update(session: SessionHandle; data: &'a [u8], out: Option<&'a mut [u8]>) -> usize = Len;
                36 DecryptFinal C_DecryptFinal [2.40 UseKey] decrypt_final(session: SessionHandle; out: Option<&'a mut [u8]>) -> usize = Len;
            }
            /// The functions of digests.
            DigestFunctions {
                37 DigestInit C_DigestInit [2.40 Digest] digest_init(session: SessionHandle; mech: &'a Mechanism) -> () = Unit;
                38 Digest C_Digest [2.40 Digest] digest(session: SessionHandle; data: &'a [u8], out: Option<&'a mut [u8]>) -> usize = Len;
                39 DigestUpdate C_DigestUpdate [2.40 Digest] digest_update(session: SessionHandle; data: &'a [u8]) -> () = Unit;
                40 DigestKey C_DigestKey [2.40 UseKey] digest_key(session: SessionHandle; key: ObjectHandle) -> () = Unit;
                41 DigestFinal C_DigestFinal [2.40 Digest] digest_final(session: SessionHandle; out: Option<&'a mut [u8]>) -> usize = Len;
            }
            /// The functions of signatures and MACs.
            SignFunctions {
                42 SignInit C_SignInit [2.40 UseKey] sign_init(session: SessionHandle; mech: &'a Mechanism, key: ObjectHandle) -> () = Unit;
                43 Sign C_Sign [2.40 UseKey] sign(session: SessionHandle; data: &'a [u8], out: Option<&'a mut [u8]>) -> usize = Len;
                44 SignUpdate C_SignUpdate [2.40 UseKey] sign_update(session: SessionHandle; data: &'a [u8]) -> () = Unit;
                45 SignFinal C_SignFinal [2.40 UseKey] sign_final(session: SessionHandle; out: Option<&'a mut [u8]>) -> usize = Len;
                46 SignRecoverInit C_SignRecoverInit [2.40 UseKey] sign_recover_init(session: SessionHandle; mech: &'a Mechanism, key: ObjectHandle) -> () = Unit;
                47 SignRecover C_SignRecover [2.40 UseKey] sign_recover(session: SessionHandle; data: &'a [u8], out: Option<&'a mut [u8]>) -> usize = Len;
                48 VerifyInit C_VerifyInit [2.40 UseKey] verify_init(session: SessionHandle; mech: &'a Mechanism, key: ObjectHandle) -> () = Unit;
                49 Verify C_Verify [2.40 UseKey] verify(session: SessionHandle; data: &'a [u8], signature: &'a [u8]) -> () = Unit;
                50 VerifyUpdate C_VerifyUpdate [2.40 UseKey] verify_update(session: SessionHandle; data: &'a [u8]) -> () = Unit;
                51 VerifyFinal C_VerifyFinal [2.40 UseKey] verify_final(session: SessionHandle; signature: &'a [u8]) -> () = Unit;
                52 VerifyRecoverInit C_VerifyRecoverInit [2.40 UseKey] verify_recover_init(session: SessionHandle; mech: &'a Mechanism, key: ObjectHandle) -> () = Unit;
                53 VerifyRecover C_VerifyRecover [2.40 UseKey] verify_recover(session: SessionHandle; signature: &'a [u8], out: Option<&'a mut [u8]>) -> usize = Len;
            }
            /// The functions of dual-function operations.
            DualFunctions {
                54 DigestEncryptUpdate C_DigestEncryptUpdate [2.40 UseKey] digest_encrypt_update(session: SessionHandle; data: &'a [u8], out: Option<&'a mut [u8]>) -> usize = Len;
                55 DecryptDigestUpdate C_DecryptDigestUpdate [2.40 UseKey] decrypt_digest_update(session: SessionHandle; data: &'a [u8], out: Option<&'a mut [u8]>) -> usize = Len;
                56 SignEncryptUpdate C_SignEncryptUpdate [2.40 UseKey] sign_encrypt_update(session: SessionHandle; data: &'a [u8], out: Option<&'a mut [u8]>) -> usize = Len;
                57 DecryptVerifyUpdate C_DecryptVerifyUpdate [2.40 UseKey] decrypt_verify_update(session: SessionHandle; data: &'a [u8], out: Option<&'a mut [u8]>) -> usize = Len;
            }
            /// The functions of key management.
            KeyFunctions {
                58 GenerateKey C_GenerateKey [2.40 MakeObject] generate_key(session: SessionHandle; mech: &'a Mechanism, template: &'a Template) -> ObjectHandle = Object;
                59 GenerateKeyPair C_GenerateKeyPair [2.40 MakeObject] generate_key_pair(session: SessionHandle; mech: &'a Mechanism, public_template: &'a Template, private_template: &'a Template) -> (ObjectHandle, ObjectHandle) = KeyPair;
                60 WrapKey C_WrapKey [2.40 UseKey] wrap_key(session: SessionHandle; mech: &'a Mechanism, wrapping_key: ObjectHandle, key: ObjectHandle, out: Option<&'a mut [u8]>) -> usize = Len;
                61 UnwrapKey C_UnwrapKey [2.40 Unwrap] unwrap_key(session: SessionHandle; mech: &'a Mechanism, unwrapping_key: ObjectHandle, wrapped: &'a [u8], template: &'a Template) -> ObjectHandle = Object;
                62 DeriveKey C_DeriveKey [2.40 Derive] derive_key(session: SessionHandle; mech: &'a Mechanism, base_key: ObjectHandle, template: &'a Template) -> ObjectHandle = Object;
            }
            /// The functions of random numbers.
            RandomFunctions {
                63 SeedRandom C_SeedRandom [2.40 Describe] seed_random(session: SessionHandle; seed: &'a [u8]) -> () = Unit;
                64 GenerateRandom C_GenerateRandom [2.40 Describe] generate_random(session: SessionHandle; out: &'a mut [u8]) -> () = Unit;
            }
            /// The functions of message-based encryption and signatures (3.0).
            MessageFunctions {
                65 MessageEncryptInit C_MessageEncryptInit [3.0 UseKey] message_encrypt_init(session: SessionHandle; mech: &'a Mechanism, key: ObjectHandle) -> () = Unit;
                66 EncryptMessage C_EncryptMessage [3.0 UseKey] encrypt_message(session: SessionHandle; params: &'a mut MechanismParams, aad: &'a [u8], data: &'a [u8], out: Option<&'a mut [u8]>) -> usize = Len;
                67 EncryptMessageBegin C_EncryptMessageBegin [3.0 UseKey] encrypt_message_begin(session: SessionHandle; params: &'a mut MechanismParams, aad: &'a [u8]) -> () = Unit;
                68 EncryptMessageNext C_EncryptMessageNext [3.0 UseKey] encrypt_message_next(session: SessionHandle; params: &'a mut MechanismParams, data: &'a [u8], out: Option<&'a mut [u8]>, last: bool) -> usize = Len;
                69 MessageEncryptFinal C_MessageEncryptFinal [3.0 UseKey] message_encrypt_final(session: SessionHandle; ) -> () = Unit;
                70 MessageDecryptInit C_MessageDecryptInit [3.0 UseKey] message_decrypt_init(session: SessionHandle; mech: &'a Mechanism, key: ObjectHandle) -> () = Unit;
                71 DecryptMessage C_DecryptMessage [3.0 UseKey] decrypt_message(session: SessionHandle; params: &'a mut MechanismParams, aad: &'a [u8], data: &'a [u8], out: Option<&'a mut [u8]>) -> usize = Len;
                72 DecryptMessageBegin C_DecryptMessageBegin [3.0 UseKey] decrypt_message_begin(session: SessionHandle; params: &'a mut MechanismParams, aad: &'a [u8]) -> () = Unit;
                73 DecryptMessageNext C_DecryptMessageNext [3.0 UseKey] decrypt_message_next(session: SessionHandle; params: &'a mut MechanismParams, data: &'a [u8], out: Option<&'a mut [u8]>, last: bool) -> usize = Len;
                74 MessageDecryptFinal C_MessageDecryptFinal [3.0 UseKey] message_decrypt_final(session: SessionHandle; ) -> () = Unit;
                75 MessageSignInit C_MessageSignInit [3.0 UseKey] message_sign_init(session: SessionHandle; mech: &'a Mechanism, key: ObjectHandle) -> () = Unit;
                76 SignMessage C_SignMessage [3.0 UseKey] sign_message(session: SessionHandle; params: &'a mut MechanismParams, data: &'a [u8], out: Option<&'a mut [u8]>) -> usize = Len;
                77 SignMessageBegin C_SignMessageBegin [3.0 UseKey] sign_message_begin(session: SessionHandle; params: &'a mut MechanismParams) -> () = Unit;
                78 SignMessageNext C_SignMessageNext [3.0 UseKey] sign_message_next(session: SessionHandle; params: &'a mut MechanismParams, data: &'a [u8], last: bool, out: Option<&'a mut [u8]>) -> usize = Len;
                79 MessageSignFinal C_MessageSignFinal [3.0 UseKey] message_sign_final(session: SessionHandle; ) -> () = Unit;
                80 MessageVerifyInit C_MessageVerifyInit [3.0 UseKey] message_verify_init(session: SessionHandle; mech: &'a Mechanism, key: ObjectHandle) -> () = Unit;
                81 VerifyMessage C_VerifyMessage [3.0 UseKey] verify_message(session: SessionHandle; params: &'a mut MechanismParams, data: &'a [u8], signature: &'a [u8]) -> () = Unit;
                82 VerifyMessageBegin C_VerifyMessageBegin [3.0 UseKey] verify_message_begin(session: SessionHandle; params: &'a mut MechanismParams) -> () = Unit;
                83 VerifyMessageNext C_VerifyMessageNext [3.0 UseKey] verify_message_next(session: SessionHandle; params: &'a mut MechanismParams, data: &'a [u8], signature: Option<&'a [u8]>) -> () = Unit;
                84 MessageVerifyFinal C_MessageVerifyFinal [3.0 UseKey] message_verify_final(session: SessionHandle; ) -> () = Unit;
            }
        }
    };
}

calls_table!(calls);
