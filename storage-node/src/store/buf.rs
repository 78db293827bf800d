//! Page-aligned buffers: shards as received for storing and as read back with O_DIRECT.

use super::*;
use std::mem::MaybeUninit;

/// A page-aligned buffer for O_DIRECT reads and writes, fully initialised.
pub(super) struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    /// A buffer of at least `len` bytes (whole pages), not initialised: the caller must write
    /// every byte before [`AsRef::as_ref`] is used.
    pub(super) fn uninit(len: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len.max(PAGE).div_ceil(PAGE) * PAGE, PAGE)
            .expect("layout");
        // SAFETY: layout has non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        let ptr =
            std::ptr::NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, layout }
    }

    /// Fill a new buffer of `len` bytes (a multiple of the page size) from `f`, without
    /// zeroing it first.
    pub(super) fn read_from(f: &mut File, len: usize) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        let buf = Self::uninit(len);
        let layout = buf.layout;
        let mut done = 0usize;
        while done < layout.size() {
            // SAFETY: writes stay within the allocation; the kernel fills the bytes it reports.
            let n = unsafe {
                libc::read(
                    f.as_raw_fd(),
                    buf.ptr.as_ptr().add(done) as *mut libc::c_void,
                    layout.size() - done,
                )
            };
            match n {
                n if n > 0 => done += n as usize,
                0 => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        // Every byte is now initialised.
        Ok(buf)
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: ptr points to layout.size() initialised bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}

/// A shard as received for storing: room for the header, the shard's bytes, then zeros up to
/// a whole number of pages, in one page-aligned buffer written to disk as it is.
pub struct ShardBuf {
    buf: AlignedBuf,
    pub(super) len: usize,
    filled: bool,
}

impl ShardBuf {
    /// A shard holding a copy of `data`.
    pub fn from_slice(data: &[u8]) -> Self {
        let mut b = <Self as BulkBuf>::for_len(data.len());
        let dst = b.unfilled();
        // SAFETY: `dst` has exactly data.len() bytes; the buffers are distinct.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), dst.as_mut_ptr() as *mut u8, data.len())
        };
        // SAFETY: every payload byte was written just above.
        unsafe { b.assume_filled() };
        b
    }

    /// How many bytes the shard has.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The shard's bytes.
    pub fn data(&self) -> &[u8] {
        &self.all()[HEADER_LEN..HEADER_LEN + self.len]
    }

    pub(super) fn all(&self) -> &[u8] {
        assert!(self.filled, "shard buffer read before it was filled");
        self.buf.as_ref()
    }

    pub(super) fn set_header(&mut self, header: &[u8; HEADER_LEN]) {
        // SAFETY: the buffer is at least one page, longer than the header.
        unsafe {
            std::ptr::copy_nonoverlapping(header.as_ptr(), self.buf.ptr.as_ptr(), HEADER_LEN)
        };
    }
}

impl BulkBuf for ShardBuf {
    fn for_len(len: usize) -> Self {
        let buf = AlignedBuf::uninit(HEADER_LEN + len);
        let size = buf.layout.size();
        // SAFETY: zero the header room and the padding after the payload; the payload is
        // written by the receiver before the buffer is read.
        unsafe {
            std::ptr::write_bytes(buf.ptr.as_ptr(), 0, HEADER_LEN);
            std::ptr::write_bytes(
                buf.ptr.as_ptr().add(HEADER_LEN + len),
                0,
                size - HEADER_LEN - len,
            );
        }
        ShardBuf {
            buf,
            len,
            filled: false,
        }
    }

    fn unfilled(&mut self) -> &mut [MaybeUninit<u8>] {
        // SAFETY: HEADER_LEN + len bytes lie inside the allocation, owned by self.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.buf.ptr.as_ptr().add(HEADER_LEN) as *mut MaybeUninit<u8>,
                self.len,
            )
        }
    }

    unsafe fn assume_filled(&mut self) {
        self.filled = true;
    }
}

/// A shard file's bytes, as read.
pub(super) enum Shard {
    Plain(Vec<u8>),
    Aligned(AlignedBuf),
}

impl AsRef<[u8]> for Shard {
    fn as_ref(&self) -> &[u8] {
        match self {
            Shard::Plain(v) => v,
            Shard::Aligned(b) => b.as_ref(),
        }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in new() with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}
