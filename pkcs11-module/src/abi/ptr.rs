//! Pointer decoding: the only places in the module that read or write through C pointers.
//!
//! Every helper is an `unsafe fn` with a written contract, checks what can be checked (NULL,
//! lengths, sizes) before touching memory, and converts `CK_ULONG` with `try_from`, never `as`.
//! Structures are read and written unaligned: a C caller owes us validity, not alignment.

use std::ffi::{CStr, c_void};
use std::marker::PhantomData;
use std::ops::Deref;
use std::ptr::{self, NonNull};
use std::slice;
use std::sync::atomic::{Ordering, compiler_fence};

use bridge::Error;
use cryptoki_sys::{CK_BYTE, CK_ULONG};

/// The largest single byte input, and the largest output buffer the module hands to a backend:
/// 256 MiB. Longer inputs are refused before they are read.
pub(crate) const MAX_IO_LEN: usize = 256 << 20;

/// `CK_ULONG` → `usize`, with the caller's choice of error. Never `as usize`.
pub(crate) fn to_usize(n: CK_ULONG, err: Error) -> Result<usize, Error> {
    usize::try_from(n).map_err(|_| err)
}

/// `usize` → `CK_ULONG` for a length or count the module reports. A value that does not fit
/// can only come from a broken invariant.
pub(crate) fn to_ulong(n: usize) -> Result<CK_ULONG, Error> {
    CK_ULONG::try_from(n).map_err(|_| Error::Internal("length does not fit in CK_ULONG"))
}

/// Borrows `len` input bytes at `ptr`. NULL with length 0 is the empty input; NULL with a
/// non-zero length, or a length over [`MAX_IO_LEN`], is `CKR_ARGUMENTS_BAD`.
///
/// # Safety
///
/// If `ptr` is non-null and `len` is at most [`MAX_IO_LEN`], `ptr` must be valid for reads of
/// `len` bytes for `'a`, and the bytes must not be written during `'a`.
pub(crate) unsafe fn in_bytes<'a>(ptr: *const CK_BYTE, len: CK_ULONG) -> Result<&'a [u8], Error> {
    // SAFETY: the caller's contract is `in_bytes_limited`'s.
    unsafe { in_bytes_limited(ptr, len, Error::ArgumentsBad) }
}

/// [`in_bytes`] for data to be processed (plaintext, ciphertext, data to sign): an input over
/// [`MAX_IO_LEN`] is `CKR_DATA_LEN_RANGE`.
///
/// # Safety
///
/// As [`in_bytes`].
pub(crate) unsafe fn in_data<'a>(ptr: *const CK_BYTE, len: CK_ULONG) -> Result<&'a [u8], Error> {
    // SAFETY: the caller's contract is `in_bytes_limited`'s.
    unsafe { in_bytes_limited(ptr, len, Error::DataLenRange) }
}

/// The one place input slices are built.
///
/// # Safety
///
/// As [`in_bytes`].
unsafe fn in_bytes_limited<'a>(
    ptr: *const CK_BYTE,
    len: CK_ULONG,
    too_long: Error,
) -> Result<&'a [u8], Error> {
    let len = to_usize(len, too_long.clone())?;
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Error::ArgumentsBad);
    }
    if len > MAX_IO_LEN {
        return Err(too_long);
    }
    // SAFETY: non-null, `len` is at most MAX_IO_LEN (so below isize::MAX), and the caller
    // guarantees `len` readable bytes for 'a.
    Ok(unsafe { slice::from_raw_parts(ptr, len) })
}

/// Borrows the caller's fixed-size output buffer of `len` bytes (`C_GenerateRandom`): the
/// mutable twin of [`in_bytes`], with the same NULL and length rules.
///
/// # Safety
///
/// If `ptr` is non-null and `len` is at most [`MAX_IO_LEN`], `ptr` must be valid for writes of
/// `len` bytes for `'a`, and not otherwise accessed during `'a`.
pub(crate) unsafe fn out_bytes<'a>(
    ptr: *mut CK_BYTE,
    len: CK_ULONG,
) -> Result<&'a mut [u8], Error> {
    let len = to_usize(len, Error::ArgumentsBad)?;
    if len == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() || len > MAX_IO_LEN {
        return Err(Error::ArgumentsBad);
    }
    // SAFETY: non-null, `len` is at most MAX_IO_LEN (so below isize::MAX), and the caller
    // guarantees `len` writable bytes used by nothing else for 'a.
    Ok(unsafe { slice::from_raw_parts_mut(ptr, len) })
}

/// Reads a `T` at `ptr`, which need not be aligned. NULL gives `None`.
///
/// # Safety
///
/// If `ptr` is non-null it must be valid for reads of `size_of::<T>()` bytes, and every bit
/// pattern must be a valid `T` (true of the `cryptoki-sys` structures: integers, raw pointers
/// and optional function pointers).
pub(crate) unsafe fn read_value<T: Copy>(ptr: *const T) -> Option<T> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: non-null and readable per the caller's contract; `read_unaligned` has no
    // alignment requirement.
    Some(unsafe { ptr.read_unaligned() })
}

/// Reads a structure given as (`ptr`, `len`), as mechanism parameters are: `None` unless `ptr`
/// is non-null and `len` is exactly `size_of::<T>()` (kryoptic's `get_parameters` rule).
///
/// # Safety
///
/// If `ptr` is non-null it must be valid for reads of `len` bytes, and every bit pattern must
/// be a valid `T`.
pub(crate) unsafe fn read_struct<T: Copy>(ptr: *const c_void, len: CK_ULONG) -> Option<T> {
    if usize::try_from(len).ok()? != size_of::<T>() {
        return None;
    }
    // SAFETY: the caller guarantees `len` = size_of::<T>() readable bytes at a non-null `ptr`.
    unsafe { read_value(ptr.cast::<T>()) }
}

/// Copies an array of `count` elements at `ptr` (unaligned) into a `Vec`. Zero elements may
/// come with a NULL pointer; more than `max` elements, or NULL with a non-zero count, is
/// `CKR_ARGUMENTS_BAD`.
///
/// # Safety
///
/// If `ptr` is non-null and `count <= max`, `ptr` must be valid for reads of `count`
/// consecutive `T`s, and every bit pattern must be a valid `T`.
pub(crate) unsafe fn read_array<T: Copy>(
    ptr: *const T,
    count: CK_ULONG,
    max: usize,
) -> Result<Vec<T>, Error> {
    let count = to_usize(count, Error::ArgumentsBad)?;
    if count == 0 {
        return Ok(Vec::new());
    }
    if ptr.is_null() || count > max {
        return Err(Error::ArgumentsBad);
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        // SAFETY: element `i < count` lies inside the array the caller vouches for.
        out.push(unsafe { ptr.wrapping_add(i).read_unaligned() });
    }
    Ok(out)
}

/// Writes `items` to consecutive (possibly unaligned) elements at `ptr`.
///
/// # Safety
///
/// `ptr` must be valid for writes of `items.len()` consecutive `T`s.
pub(crate) unsafe fn write_array<T: Copy>(ptr: *mut T, items: &[T]) {
    for (i, item) in items.iter().enumerate() {
        // SAFETY: element `i < items.len()` lies inside the array the caller vouches for.
        unsafe { ptr.wrapping_add(i).write_unaligned(*item) };
    }
}

/// Copies `src` to `dst`.
///
/// # Safety
///
/// `dst` must be valid for writes of `src.len()` bytes.
pub(crate) unsafe fn write_bytes(dst: *mut CK_BYTE, src: &[u8]) {
    // SAFETY: the caller guarantees `src.len()` writable bytes at `dst`; `copy` tolerates
    // overlap, so nothing is assumed about where `src` lives.
    unsafe { ptr::copy(src.as_ptr(), dst, src.len()) };
}

/// Whether the NUL-terminated string at `ptr` equals `expected`. Reads byte by byte and stops
/// at the first difference, so it never reads past the caller's terminator nor past
/// `expected`'s.
///
/// # Safety
///
/// `ptr` must be NULL or point to a NUL-terminated string.
pub(crate) unsafe fn c_str_eq(ptr: *const CK_BYTE, expected: &CStr) -> bool {
    if ptr.is_null() {
        return false;
    }
    for (i, want) in expected.to_bytes_with_nul().iter().enumerate() {
        // SAFETY: every earlier byte matched `expected` and was therefore not NUL, so byte `i`
        // is still inside the caller's string (at most at its terminator).
        let got = unsafe { ptr.wrapping_add(i).read() };
        if got != *want {
            return false;
        }
    }
    true
}

/// A blank-padded, never NUL-terminated fixed-width text field (`manufacturerID`, `label`,
/// ...). Text that is too long is cut at the last character boundary that fits.
pub(crate) fn padded<const N: usize>(text: &str) -> [u8; N] {
    let mut out = [b' '; N];
    let mut end = text.len().min(N);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if let (Some(dst), Some(src)) = (out.get_mut(..end), text.as_bytes().get(..end)) {
        dst.copy_from_slice(src);
    }
    out
}

/// An input that is safe to hold while an output buffer is written: borrowed from the caller,
/// or copied when it overlaps the output (PKCS#11 allows in-place calls, "pData and
/// pEncryptedData can point to the same location", and Rust does not allow a `&[u8]` and a
/// `&mut [u8]` over the same bytes).
pub(crate) enum Input<'a> {
    /// The caller's bytes.
    Borrowed(&'a [u8]),
    /// A private copy, wiped on drop (it may be plaintext).
    Copied(Vec<u8>),
}

impl Deref for Input<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Self::Borrowed(b) => b,
            Self::Copied(v) => v,
        }
    }
}

impl Drop for Input<'_> {
    fn drop(&mut self) {
        if let Self::Copied(v) = self {
            wipe(v);
        }
    }
}

/// Overwrites `bytes` with zeros in a way the optimiser may not elide.
fn wipe(bytes: &mut [u8]) {
    for b in bytes.iter_mut() {
        // SAFETY: `b` is a valid, exclusive reference.
        unsafe { ptr::write_volatile(b, 0) };
    }
    compiler_fence(Ordering::SeqCst);
}

/// The PKCS#11 output convention (§5.2 "Conventions for functions returning output in a
/// variable-length buffer"): a NULL buffer asks for the length, a short one gets
/// `CKR_BUFFER_TOO_SMALL` with the needed length written back.
///
/// The output slice is only built inside [`OutBuf::fill`], so inputs can be checked against it
/// for overlap first ([`OutBuf::unalias`]).
pub(crate) struct OutBuf<'a> {
    /// The caller's buffer and the usable capacity (a prefix of what the caller declared).
    buf: Option<(NonNull<CK_BYTE>, usize)>,
    len: NonNull<CK_ULONG>,
    _caller: PhantomData<&'a mut [u8]>,
}

impl<'a> OutBuf<'a> {
    /// Takes the caller's (`ptr`, `len`) pair. `len` NULL is `CKR_ARGUMENTS_BAD`. The capacity
    /// is `*len`, capped at [`MAX_IO_LEN`].
    ///
    /// # Safety
    ///
    /// `len` must be NULL or valid for reads and writes of a `CK_ULONG` for `'a`. If `ptr` is
    /// non-null it must be valid for writes of `*len` bytes for `'a`.
    pub(crate) unsafe fn new(ptr: *mut CK_BYTE, len: *mut CK_ULONG) -> Result<Self, Error> {
        let len = NonNull::new(len).ok_or(Error::ArgumentsBad)?;
        let buf = match NonNull::new(ptr) {
            None => None,
            Some(p) => {
                // SAFETY: non-null and readable per the caller's contract.
                let declared = unsafe { len.as_ptr().read_unaligned() };
                let cap = usize::try_from(declared)
                    .unwrap_or(usize::MAX)
                    .min(MAX_IO_LEN);
                Some((p, cap))
            }
        };
        Ok(Self {
            buf,
            len,
            _caller: PhantomData,
        })
    }

    /// `input`, copied if it overlaps this buffer.
    pub(crate) fn unalias<'i>(&self, input: &'i [u8]) -> Input<'i> {
        match self.buf {
            Some((p, cap)) if overlaps(input.as_ptr(), input.len(), p.as_ptr(), cap) => {
                Input::Copied(input.to_vec())
            }
            _ => Input::Borrowed(input),
        }
    }

    /// Runs `produce` with the buffer (`None` for a length query) and applies the convention:
    /// on success the produced length is written back, on `BufferTooSmall { needed }` the needed
    /// length is written back and the error returned.
    pub(crate) fn fill(
        self,
        produce: impl FnOnce(Option<&mut [u8]>) -> Result<usize, Error>,
    ) -> Result<(), Error> {
        let buf = self.buf.map(|(p, cap)| {
            // SAFETY: `new`'s contract makes `p` writable for the declared length for 'a, of
            // which `cap` is a prefix (at most MAX_IO_LEN, below isize::MAX). Inputs that
            // overlap it went through `unalias`.
            unsafe { slice::from_raw_parts_mut(p.as_ptr(), cap) }
        });
        let cap = buf.as_ref().map(|b| b.len());
        match produce(buf) {
            Ok(n) if cap.is_some_and(|cap| n > cap) => Err(Error::Internal(
                "backend reported more output than the buffer holds",
            )),
            Ok(n) => self.set_len(n),
            // A length query succeeds whatever the backend thinks of the missing buffer.
            Err(Error::BufferTooSmall { needed }) if cap.is_none() => self.set_len(needed),
            Err(Error::BufferTooSmall { needed }) => {
                self.set_len(needed)?;
                Err(Error::BufferTooSmall { needed })
            }
            Err(err) => Err(err),
        }
    }

    fn set_len(&self, n: usize) -> Result<(), Error> {
        let n = to_ulong(n)?;
        // SAFETY: `new`'s contract makes `len` writable for 'a.
        unsafe { self.len.as_ptr().write_unaligned(n) };
        Ok(())
    }
}

/// Whether two byte ranges share at least one byte.
fn overlaps(a: *const u8, a_len: usize, b: *const u8, b_len: usize) -> bool {
    let (a, b) = (a.addr(), b.addr());
    a_len != 0 && b_len != 0 && a < b.saturating_add(b_len) && b < a.saturating_add(a_len)
}

/// Borrows the input at (`ptr`, `len`) and the output buffer (`out`, `out_len`) of a call that
/// may run in place (`C_Encrypt`, `C_DecryptUpdate`, ...): the data is validated with
/// [`in_data`], the buffer with [`OutBuf::new`], and the data is copied if the two overlap.
///
/// # Safety
///
/// The contracts of [`in_data`] for (`ptr`, `len`) and of [`OutBuf::new`] for (`out`,
/// `out_len`).
pub(crate) unsafe fn in_out<'a>(
    ptr: *const CK_BYTE,
    len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> Result<(Input<'a>, OutBuf<'a>), Error> {
    // SAFETY: forwarded from the caller.
    let out = unsafe { OutBuf::new(out, out_len) }?;
    // SAFETY: forwarded from the caller.
    let data = unsafe { in_data(ptr, len) }?;
    Ok((out.unalias(data), out))
}

/// A single value the caller receives (`*phSession`, `*pInfo`, ...).
pub(crate) struct OutValue<'a, T> {
    ptr: NonNull<T>,
    _caller: PhantomData<&'a mut T>,
}

/// Takes the caller's pointer for a single output value; NULL is `CKR_ARGUMENTS_BAD`. Taking
/// it before calling the backend means an operation is never run for a result that cannot be
/// delivered.
///
/// # Safety
///
/// `ptr` must be NULL or valid for writes of a `T` for `'a` (alignment is not required).
pub(crate) unsafe fn out_value<'a, T>(ptr: *mut T) -> Result<OutValue<'a, T>, Error> {
    let ptr = NonNull::new(ptr).ok_or(Error::ArgumentsBad)?;
    Ok(OutValue {
        ptr,
        _caller: PhantomData,
    })
}

impl<T> OutValue<'_, T> {
    /// Delivers the value.
    pub(crate) fn write(self, value: T) {
        // SAFETY: `out_value`'s contract makes the pointer writable for a `T`;
        // `write_unaligned` needs no alignment.
        unsafe { self.ptr.as_ptr().write_unaligned(value) };
    }
}

/// The list convention of `C_GetSlotList`, `C_GetMechanismList` and `C_GetInterfaceList`: a
/// NULL list asks for the count; a short list gets `CKR_BUFFER_TOO_SMALL` with the count
/// written back.
pub(crate) struct OutList<'a, T> {
    list: *mut T,
    count: NonNull<CK_ULONG>,
    _caller: PhantomData<&'a mut [T]>,
}

impl<'a, T: Copy> OutList<'a, T> {
    /// Takes the caller's (`list`, `count`) pair; `count` NULL is `CKR_ARGUMENTS_BAD`.
    ///
    /// # Safety
    ///
    /// `count` must be NULL or valid for reads and writes of a `CK_ULONG` for `'a`. If `list`
    /// is non-null it must be valid for writes of `*count` elements for `'a`.
    pub(crate) unsafe fn new(list: *mut T, count: *mut CK_ULONG) -> Result<Self, Error> {
        let count = NonNull::new(count).ok_or(Error::ArgumentsBad)?;
        Ok(Self {
            list,
            count,
            _caller: PhantomData,
        })
    }

    /// Delivers `items` (or only their number).
    pub(crate) fn fill(self, items: &[T]) -> Result<(), Error> {
        let n = to_ulong(items.len())?;
        let result = if self.list.is_null() {
            Ok(())
        } else {
            // SAFETY: `new`'s contract makes `count` readable.
            let room = unsafe { self.count.as_ptr().read_unaligned() };
            if room < n {
                Err(Error::BufferTooSmall {
                    needed: items.len(),
                })
            } else {
                // SAFETY: the caller declared room for `room >= items.len()` elements.
                unsafe { write_array(self.list, items) };
                Ok(())
            }
        };
        // SAFETY: `new`'s contract makes `count` writable.
        unsafe { self.count.as_ptr().write_unaligned(n) };
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_bytes_null_and_empty() {
        // SAFETY: NULL pointers are never read.
        assert_eq!(unsafe { in_bytes(ptr::null(), 0) }, Ok(&[][..]));
        assert_eq!(
            // SAFETY: as above.
            unsafe { in_bytes(ptr::null(), 5) },
            Err(Error::ArgumentsBad)
        );
        let data = [1u8, 2, 3];
        // SAFETY: `data` holds 3 bytes.
        assert_eq!(unsafe { in_bytes(data.as_ptr(), 3) }, Ok(&data[..]));
        assert_eq!(
            // SAFETY: length 0 is never read, whatever the pointer.
            unsafe { in_bytes(NonNull::dangling().as_ptr(), 0) },
            Ok(&[][..])
        );
    }

    #[test]
    fn in_bytes_refuses_absurd_lengths_before_reading() {
        let len = CK_ULONG::try_from(MAX_IO_LEN + 1).unwrap();
        let p = NonNull::<u8>::dangling().as_ptr();
        // SAFETY: the length check fails before the (dangling) pointer is read.
        assert_eq!(unsafe { in_bytes(p, len) }, Err(Error::ArgumentsBad));
        // SAFETY: as above.
        assert_eq!(unsafe { in_data(p, len) }, Err(Error::DataLenRange));
        assert_eq!(
            // SAFETY: as above.
            unsafe { in_data(p, CK_ULONG::MAX) },
            Err(Error::DataLenRange)
        );
    }

    #[test]
    fn out_bytes_rules() {
        assert_eq!(
            // SAFETY: NULL with length 0 is never written.
            unsafe { out_bytes(ptr::null_mut(), 0) }.map(|b| b.len()),
            Ok(0)
        );
        assert!(matches!(
            // SAFETY: NULL is refused.
            unsafe { out_bytes(ptr::null_mut(), 1) },
            Err(Error::ArgumentsBad)
        ));
        let p = NonNull::<u8>::dangling().as_ptr();
        assert!(matches!(
            // SAFETY: the length check fails before the (dangling) pointer is used.
            unsafe { out_bytes(p, CK_ULONG::MAX) },
            Err(Error::ArgumentsBad)
        ));
        let mut buf = [0u8; 4];
        // SAFETY: `buf` holds 4 bytes.
        let out = unsafe { out_bytes(buf.as_mut_ptr(), 4) }.unwrap();
        out.fill(7);
        assert_eq!(buf, [7; 4]);
    }

    #[test]
    fn outbuf_null_len_pointer_is_arguments_bad() {
        let mut buf = [0u8; 4];
        // SAFETY: the NULL length pointer is rejected before anything is read.
        let r = unsafe { OutBuf::new(buf.as_mut_ptr(), ptr::null_mut()) };
        assert!(matches!(r, Err(Error::ArgumentsBad)));
    }

    #[test]
    fn outbuf_length_query_passes_none_and_writes_length() {
        let mut len: CK_ULONG = 0;
        // SAFETY: `len` is a live CK_ULONG; the buffer is NULL.
        let out = unsafe { OutBuf::new(ptr::null_mut(), &raw mut len) }.unwrap();
        let r = out.fill(|buf| {
            assert!(buf.is_none());
            Ok(42)
        });
        assert_eq!(r, Ok(()));
        assert_eq!(len, 42);
    }

    #[test]
    fn outbuf_length_query_is_ok_even_if_backend_says_too_small() {
        let mut len: CK_ULONG = 0;
        // SAFETY: `len` is a live CK_ULONG; the buffer is NULL.
        let out = unsafe { OutBuf::new(ptr::null_mut(), &raw mut len) }.unwrap();
        assert_eq!(
            out.fill(|_| Err(Error::BufferTooSmall { needed: 7 })),
            Ok(())
        );
        assert_eq!(len, 7);
    }

    #[test]
    fn outbuf_too_small_writes_needed_length() {
        let mut buf = [0u8; 4];
        let mut len: CK_ULONG = 4;
        // SAFETY: `buf` holds `len` bytes.
        let out = unsafe { OutBuf::new(buf.as_mut_ptr(), &raw mut len) }.unwrap();
        let r = out.fill(|buf| {
            assert_eq!(buf.map(|b| b.len()), Some(4));
            Err(Error::BufferTooSmall { needed: 9 })
        });
        assert_eq!(r, Err(Error::BufferTooSmall { needed: 9 }));
        assert_eq!(len, 9);
    }

    #[test]
    fn outbuf_fits_writes_bytes_and_length() {
        let mut buf = [0u8; 8];
        let mut len: CK_ULONG = 8;
        // SAFETY: `buf` holds `len` bytes.
        let out = unsafe { OutBuf::new(buf.as_mut_ptr(), &raw mut len) }.unwrap();
        let r = out.fill(|buf| {
            let buf = buf.unwrap();
            buf[..3].copy_from_slice(b"abc");
            Ok(3)
        });
        assert_eq!(r, Ok(()));
        assert_eq!(len, 3);
        assert_eq!(&buf[..3], b"abc");
    }

    #[test]
    fn outbuf_other_errors_leave_length_alone() {
        let mut buf = [0u8; 8];
        let mut len: CK_ULONG = 8;
        // SAFETY: `buf` holds `len` bytes.
        let out = unsafe { OutBuf::new(buf.as_mut_ptr(), &raw mut len) }.unwrap();
        assert_eq!(
            out.fill(|_| Err(Error::KeyHandleInvalid)),
            Err(Error::KeyHandleInvalid)
        );
        assert_eq!(len, 8);
    }

    #[test]
    fn outbuf_backend_overclaiming_is_internal_error() {
        let mut buf = [0u8; 2];
        let mut len: CK_ULONG = 2;
        // SAFETY: `buf` holds `len` bytes.
        let out = unsafe { OutBuf::new(buf.as_mut_ptr(), &raw mut len) }.unwrap();
        assert!(matches!(out.fill(|_| Ok(3)), Err(Error::Internal(_))));
    }

    #[test]
    fn in_out_same_buffer_is_copied_and_works_in_place() {
        let mut buf = *b"hello\0\0\0";
        let mut len: CK_ULONG = 8;
        let p = buf.as_mut_ptr();
        // SAFETY: `buf` holds 8 bytes; input and output are the same location, as PKCS#11
        // allows for in-place calls.
        let (data, out) = unsafe { in_out(p, 5, p, &raw mut len) }.unwrap();
        assert!(matches!(data, Input::Copied(_)));
        let r = out.fill(|buf| {
            let buf = buf.unwrap();
            for (o, i) in buf.iter_mut().zip(data.iter()) {
                *o = i.to_ascii_uppercase();
            }
            Ok(data.len())
        });
        assert_eq!(r, Ok(()));
        assert_eq!(len, 5);
        assert_eq!(&buf[..5], b"HELLO");
    }

    #[test]
    fn in_out_disjoint_buffers_borrow() {
        let data = *b"abc";
        let mut buf = [0u8; 3];
        let mut len: CK_ULONG = 3;
        // SAFETY: both buffers are live and sized as declared.
        let (input, _out) =
            unsafe { in_out(data.as_ptr(), 3, buf.as_mut_ptr(), &raw mut len) }.unwrap();
        assert!(matches!(input, Input::Borrowed(_)));
    }

    #[test]
    fn overlap_detection() {
        let base = ptr::without_provenance::<u8>(0x1000);
        let at = |o: usize| base.wrapping_add(o);
        assert!(overlaps(at(0), 4, at(3), 4));
        assert!(!overlaps(at(0), 4, at(4), 4));
        assert!(!overlaps(at(0), 0, at(0), 4));
        assert!(overlaps(at(4), 1, at(0), 8));
    }

    #[test]
    fn read_struct_requires_exact_size_and_tolerates_misalignment() {
        let value: CK_ULONG = 0x0102_0304;
        let mut bytes = vec![0u8; 1 + size_of::<CK_ULONG>()];
        bytes[1..].copy_from_slice(&value.to_ne_bytes());
        let p = bytes[1..].as_ptr().cast::<c_void>();
        let size = CK_ULONG::try_from(size_of::<CK_ULONG>()).unwrap();
        // SAFETY: `p` points to `size` readable bytes (deliberately misaligned).
        assert_eq!(unsafe { read_struct::<CK_ULONG>(p, size) }, Some(value));
        // SAFETY: wrong sizes are refused before reading.
        assert_eq!(unsafe { read_struct::<CK_ULONG>(p, size - 1) }, None);
        // SAFETY: as above.
        assert_eq!(unsafe { read_struct::<CK_ULONG>(p, size + 1) }, None);
        // SAFETY: NULL is never read.
        assert_eq!(unsafe { read_struct::<CK_ULONG>(ptr::null(), size) }, None);
    }

    #[test]
    fn read_array_limits() {
        let items: [CK_ULONG; 3] = [1, 2, 3];
        assert_eq!(
            // SAFETY: `items` holds 3 elements.
            unsafe { read_array(items.as_ptr(), 3, 3) },
            Ok(vec![1, 2, 3])
        );
        assert_eq!(
            // SAFETY: over the limit is refused before reading.
            unsafe { read_array(items.as_ptr(), 3, 2) },
            Err(Error::ArgumentsBad)
        );
        assert_eq!(
            // SAFETY: NULL is never read.
            unsafe { read_array::<CK_ULONG>(ptr::null(), 1, 9) },
            Err(Error::ArgumentsBad)
        );
        assert_eq!(
            // SAFETY: as above.
            unsafe { read_array::<CK_ULONG>(ptr::null(), 0, 9) },
            Ok(vec![])
        );
    }

    #[test]
    fn out_list_convention() {
        let items: [CK_ULONG; 3] = [7, 8, 9];
        let mut count: CK_ULONG = 0;
        // SAFETY: `count` is live; the list is NULL.
        let out = unsafe { OutList::<CK_ULONG>::new(ptr::null_mut(), &raw mut count) }.unwrap();
        assert_eq!(out.fill(&items), Ok(()));
        assert_eq!(count, 3);

        let mut short: [CK_ULONG; 2] = [0; 2];
        let mut count: CK_ULONG = 2;
        // SAFETY: `short` holds `count` elements.
        let out = unsafe { OutList::new(short.as_mut_ptr(), &raw mut count) }.unwrap();
        assert_eq!(out.fill(&items), Err(Error::BufferTooSmall { needed: 3 }));
        assert_eq!(count, 3);
        assert_eq!(short, [0, 0]);

        let mut list: [CK_ULONG; 4] = [0; 4];
        let mut count: CK_ULONG = 4;
        // SAFETY: `list` holds `count` elements.
        let out = unsafe { OutList::new(list.as_mut_ptr(), &raw mut count) }.unwrap();
        assert_eq!(out.fill(&items), Ok(()));
        assert_eq!(count, 3);
        assert_eq!(list, [7, 8, 9, 0]);

        // SAFETY: a NULL count is rejected before anything is read.
        let r = unsafe { OutList::new(list.as_mut_ptr(), ptr::null_mut()) };
        assert!(matches!(r, Err(Error::ArgumentsBad)));
    }

    #[test]
    fn out_value_null_is_arguments_bad() {
        assert!(matches!(
            // SAFETY: NULL is rejected.
            unsafe { out_value::<CK_ULONG>(ptr::null_mut()) },
            Err(Error::ArgumentsBad)
        ));
        let mut v: CK_ULONG = 0;
        // SAFETY: `v` is live.
        unsafe { out_value(&raw mut v) }.unwrap().write(5);
        assert_eq!(v, 5);
    }

    #[test]
    fn padded_strings() {
        assert_eq!(&padded::<8>("abc"), b"abc     ");
        assert_eq!(&padded::<3>("abc"), b"abc");
        assert_eq!(&padded::<3>("abcdef"), b"abc");
        assert_eq!(&padded::<4>(""), b"    ");
        // "é" is two bytes: cut before it rather than through it.
        assert_eq!(&padded::<4>("abcé"), b"abc ");
        assert_eq!(&padded::<5>("abcé"), "abcé".as_bytes());
        assert!(!padded::<32>("FerroHSM").contains(&0));
    }

    #[test]
    fn c_str_eq_stops_at_terminators() {
        assert!(unsafe_c_str_eq(b"PKCS 11\0", c"PKCS 11"));
        assert!(!unsafe_c_str_eq(b"PKCS\0", c"PKCS 11"));
        assert!(!unsafe_c_str_eq(b"PKCS 11 extra\0", c"PKCS 11"));
        assert!(!unsafe_c_str_eq(b"\0", c"PKCS 11"));
        // SAFETY: NULL is never read.
        assert!(!unsafe { c_str_eq(ptr::null(), c"PKCS 11") });
    }

    fn unsafe_c_str_eq(s: &[u8], expected: &CStr) -> bool {
        assert_eq!(s.last(), Some(&0));
        // SAFETY: `s` is NUL-terminated.
        unsafe { c_str_eq(s.as_ptr(), expected) }
    }

    #[test]
    fn wipe_zeroes() {
        let mut v = vec![1u8, 2, 3];
        wipe(&mut v);
        assert_eq!(v, [0, 0, 0]);
    }
}
