//! The on-file layout of a journal page: its header and its frames, locked with
//! `static_assertions`, and the checks every page and frame passes before anything in it is used.
//!
//! A page file is `page_size` bytes: a [`PAGE_HEADER_SIZE`]-byte header, then frames from
//! [`PAGE_HEADER_SIZE`] on, each a [`FRAME_HEADER_SIZE`]-byte header and its payload, padded to 8
//! bytes. A frame is published by the Release store of its first word (its length); a reader
//! Acquires that word and sees the whole frame. The word after the last frame is 0 (nothing yet),
//! or [`END_OF_PAGE`]: the writer went on in the next page. A frame is written only where 8 bytes
//! stay free behind it, so that word always fits in the page.

use core::mem::{offset_of, size_of};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use static_assertions::const_assert_eq;

use crate::name::MAX_NAME_LEN;

/// The first 8 bytes of every page file.
pub const PAGE_MAGIC: [u8; 8] = *b"SPSCJRN1";
/// The page format this build reads and writes; a page of another version is refused.
pub const PAGE_VERSION: u32 = 1;
/// Bytes before the first frame (one 4 KiB page, so frames start page-aligned).
pub const PAGE_HEADER_SIZE: usize = 4096;
/// Bytes of a frame's header; the payload follows, 8-byte aligned.
pub const FRAME_HEADER_SIZE: usize = 32;
/// The length word that says "the writer went on in the next page".
pub const END_OF_PAGE: u32 = u32::MAX;
/// Entries of a page's seek index (one per `data / INDEX_SLOTS` bytes of frames).
pub const INDEX_SLOTS: usize = 512;
/// The smallest page a journal accepts: the header and 60 KiB of frames.
pub const MIN_PAGE_SIZE: u64 = 64 * 1024;
/// The largest page a journal accepts (frame lengths are 32-bit words).
pub const MAX_PAGE_SIZE: u64 = 1 << 31;

/// Page flag: every frame carries a CRC32C of its header fields and payload.
pub const FLAG_CHECKSUMS: u32 = 1;
const KNOWN_FLAGS: u32 = FLAG_CHECKSUMS;

/// `PageHeader::state` of a page the writer prepared but has not started (its `first_seq` is
/// not known yet).
pub const STATE_PREPARED: u32 = 0;
/// `PageHeader::state` of a page the writer started: `first_seq` is its first frame's sequence
/// number.
pub const STATE_ACTIVE: u32 = 1;

/// The header at the start of every page file. Everything but `state`, `first_seq`, the wait
/// cell and the index is written once, before the file gets its name, and never changes.
#[repr(C)]
pub struct PageHeader {
    /// [`PAGE_MAGIC`], written last (Release) when the page is made.
    pub magic: AtomicU64,
    /// [`PAGE_VERSION`].
    pub version: u32,
    /// [`PAGE_HEADER_SIZE`].
    pub header_size: u32,
    /// The size of this file, and of every page of the journal.
    pub page_size: u64,
    /// This page's number: the file is named after it, and pages of a journal count up from 0.
    pub page_number: u64,
    /// A random number chosen when the journal's first page was made, copied into every page:
    /// a page of another journal (or an earlier journal of the same name) is told apart by it.
    pub journal_id: u64,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// [`INDEX_SLOTS`].
    pub index_slots: u32,
    /// Bytes of frames each index entry covers (a multiple of 8).
    pub index_stride: u32,
    /// The pid of the writer that made the page (informational).
    pub creator_pid: u32,
    /// [`STATE_PREPARED`] or [`STATE_ACTIVE`] (Release when activated).
    pub state: AtomicU32,
    _pad0: u32,
    /// The first frame's sequence number, valid once `state` is [`STATE_ACTIVE`].
    pub first_seq: AtomicU64,
    /// Length of the journal's name in `name`.
    pub name_len: u32,
    _pad1: [u8; 52],
    /// Reserved (zero). Readers never write a page, so the words blocking readers announce
    /// themselves in live in the journal's wake file ([`WAKE_FILE`](super::WAKE_FILE)).
    _reserved_wake: [u8; 128],
    /// The journal's name (`name_len` bytes), for the identity check and for error messages.
    pub name: [u8; MAX_NAME_LEN],
    _pad2: [u8; 2048 - 256 - MAX_NAME_LEN],
    /// `index[i]`: the offset of the first frame that starts in the `i`-th stride of the page's
    /// frames (0 while none does). A hint a seek checks before use.
    pub index: [AtomicU32; INDEX_SLOTS],
}

const_assert_eq!(size_of::<PageHeader>(), PAGE_HEADER_SIZE);
const_assert_eq!(offset_of!(PageHeader, magic), 0);
const_assert_eq!(offset_of!(PageHeader, version), 8);
const_assert_eq!(offset_of!(PageHeader, header_size), 12);
const_assert_eq!(offset_of!(PageHeader, page_size), 16);
const_assert_eq!(offset_of!(PageHeader, page_number), 24);
const_assert_eq!(offset_of!(PageHeader, journal_id), 32);
const_assert_eq!(offset_of!(PageHeader, flags), 40);
const_assert_eq!(offset_of!(PageHeader, index_slots), 44);
const_assert_eq!(offset_of!(PageHeader, index_stride), 48);
const_assert_eq!(offset_of!(PageHeader, creator_pid), 52);
const_assert_eq!(offset_of!(PageHeader, state), 56);
const_assert_eq!(offset_of!(PageHeader, first_seq), 64);
const_assert_eq!(offset_of!(PageHeader, name_len), 72);
const_assert_eq!(offset_of!(PageHeader, name), 256);
const_assert_eq!(offset_of!(PageHeader, index), 2048);

/// The header of one frame. `len` is written last, with Release.
#[repr(C)]
pub struct FrameHeader {
    /// The frame's whole length (header, payload, padding; a multiple of 8), 0 while unwritten,
    /// or [`END_OF_PAGE`].
    pub len: AtomicU32,
    /// Payload bytes.
    pub payload_len: u32,
    /// The frame's sequence number: the journal's frames count up from 0 without a gap.
    pub seq: u64,
    /// The writer's timestamp in nanoseconds (given by the caller; never decreasing).
    pub time: u64,
    /// The type tag given at `alloc`.
    pub tag: u16,
    _reserved: u16,
    /// CRC32C of the fields above (but `len`) and the payload, when the page has
    /// [`FLAG_CHECKSUMS`]; 0 otherwise.
    pub crc: u32,
}

const_assert_eq!(size_of::<FrameHeader>(), FRAME_HEADER_SIZE);
const_assert_eq!(offset_of!(FrameHeader, len), 0);
const_assert_eq!(offset_of!(FrameHeader, payload_len), 4);
const_assert_eq!(offset_of!(FrameHeader, seq), 8);
const_assert_eq!(offset_of!(FrameHeader, time), 16);
const_assert_eq!(offset_of!(FrameHeader, tag), 24);
const_assert_eq!(offset_of!(FrameHeader, crc), 28);

/// The frame length for `payload_len` payload bytes: header plus payload, rounded up to 8.
pub const fn frame_len(payload_len: u32) -> u64 {
    (FRAME_HEADER_SIZE as u64 + payload_len as u64 + 7) & !7
}

/// The largest payload a page of `page_size` bytes holds (a frame plus the end word).
pub const fn max_payload(page_size: u64) -> u32 {
    let room = page_size - PAGE_HEADER_SIZE as u64 - 8 - FRAME_HEADER_SIZE as u64;
    if room > u32::MAX as u64 {
        !7
    } else {
        room as u32
    }
}

/// The index stride of a page of `page_size` bytes: the frame area over [`INDEX_SLOTS`],
/// rounded up to 8.
pub const fn index_stride(page_size: u64) -> u32 {
    let data = page_size - PAGE_HEADER_SIZE as u64;
    let stride = data.div_ceil(INDEX_SLOTS as u64);
    ((stride + 7) & !7) as u32
}

/// The CRC32C a frame carries: over its `payload_len`, `seq`, `time` and `tag` (little-endian)
/// and its payload.
pub fn frame_crc(payload_len: u32, seq: u64, time: u64, tag: u16, payload: &[u8]) -> u32 {
    let mut fields = [0u8; 22];
    fields[0..4].copy_from_slice(&payload_len.to_le_bytes());
    fields[4..12].copy_from_slice(&seq.to_le_bytes());
    fields[12..20].copy_from_slice(&time.to_le_bytes());
    fields[20..22].copy_from_slice(&tag.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&fields), payload)
}

/// What a page must be to belong to the journal a caller has open (or is opening: `id` and
/// `page_size` are then unknown until the first page is read).
#[derive(Clone, Copy, Debug)]
pub struct Expected<'a> {
    /// The journal's name.
    pub name: &'a str,
    /// The journal's id, if known.
    pub journal_id: Option<u64>,
    /// The page size, if known.
    pub page_size: Option<u64>,
    /// The page number the file name gives.
    pub page_number: u64,
}

/// Why a page is refused (see [`PageInfo::validate`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PageFault {
    /// The file is shorter than a header, or than its header's page size.
    Truncated {
        /// Its length.
        len: u64,
        /// What it must be at least.
        required: u64,
    },
    /// It does not start with [`PAGE_MAGIC`]: not a journal page, or one whose making never
    /// finished.
    BadMagic {
        /// Its first 8 bytes.
        found: [u8; 8],
    },
    /// A page format other than [`PAGE_VERSION`].
    Version {
        /// The page's version.
        found: u32,
    },
    /// A header field outside what any writer writes.
    BadField {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// A page of another journal (its name or its id differ), or numbered other than its file.
    Foreign {
        /// What differs.
        what: &'static str,
        /// The page's value.
        found: String,
        /// The journal's.
        expected: String,
    },
}

impl core::fmt::Display for PageFault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Truncated { len, required } => write!(
                f,
                "the file is {len} bytes long, but a page needs {required}: it was truncated, or is not a journal page"
            ),
            Self::BadMagic { found } => write!(
                f,
                "it does not start with the journal page magic {PAGE_MAGIC:?} (found {found:?}): not a journal page, or one whose making never finished"
            ),
            Self::Version { found } => write!(
                f,
                "its format version is {found}, but this build reads version {PAGE_VERSION}"
            ),
            Self::BadField { field, value } => {
                write!(f, "its header's {field} is {value}, which no writer writes: the header is corrupt")
            }
            Self::Foreign { what, found, expected } => write!(
                f,
                "its {what} is {found}, but the journal's is {expected}: the page belongs to another journal (or to an earlier one of the same name)"
            ),
        }
    }
}

/// What a validated page header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageInfo {
    /// The page size (= the file's length, checked).
    pub page_size: u64,
    /// The page number.
    pub page_number: u64,
    /// The journal's id.
    pub journal_id: u64,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// The index stride.
    pub index_stride: u32,
}

impl PageInfo {
    /// Checks the header at the start of `page` (a mapping of the whole file) against `expected`: magic (Acquire: the rest of the header was written before it),
    /// version, sizes, flags, index geometry, name, id and number. Reads nothing past the header.
    pub fn validate(page: &PageView<'_>, expected: &Expected<'_>) -> Result<Self, PageFault> {
        let len = page.len() as u64;
        if page.len() < PAGE_HEADER_SIZE {
            return Err(PageFault::Truncated {
                len,
                required: MIN_PAGE_SIZE,
            });
        }
        let header = page.header();
        let magic = header.magic.load(Ordering::Acquire).to_ne_bytes();
        if magic != PAGE_MAGIC {
            return Err(PageFault::BadMagic { found: magic });
        }
        if header.version != PAGE_VERSION {
            return Err(PageFault::Version {
                found: header.version,
            });
        }
        let bad = |field, value: u64| Err(PageFault::BadField { field, value });
        if header.header_size as usize != PAGE_HEADER_SIZE {
            return bad("header size", header.header_size.into());
        }
        let page_size = header.page_size;
        if !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size) || !page_size.is_multiple_of(8) {
            return bad("page size", page_size);
        }
        if len < page_size {
            return Err(PageFault::Truncated {
                len,
                required: page_size,
            });
        }
        if len > page_size {
            return bad("page size (shorter than the file)", page_size);
        }
        if header.flags & !KNOWN_FLAGS != 0 {
            return bad("flags", header.flags.into());
        }
        if header.index_slots as usize != INDEX_SLOTS {
            return bad("index slot count", header.index_slots.into());
        }
        if header.index_stride != index_stride(page_size) {
            return bad("index stride", header.index_stride.into());
        }
        if header.journal_id == 0 {
            return bad("journal id", 0);
        }
        let state = header.state.load(Ordering::Acquire);
        if state > STATE_ACTIVE {
            return bad("state", state.into());
        }
        let name_len = header.name_len as usize;
        let name = header.name.get(..name_len).ok_or(PageFault::BadField {
            field: "name length",
            value: name_len as u64,
        })?;
        if name != expected.name.as_bytes() {
            return Err(PageFault::Foreign {
                what: "journal name",
                found: format!("{:?}", String::from_utf8_lossy(name)),
                expected: format!("{:?}", expected.name),
            });
        }
        if let Some(id) = expected.journal_id.filter(|&id| id != header.journal_id) {
            return Err(PageFault::Foreign {
                what: "journal id",
                found: format!("{:#018x}", header.journal_id),
                expected: format!("{id:#018x}"),
            });
        }
        if let Some(size) = expected.page_size.filter(|&size| size != page_size) {
            return Err(PageFault::Foreign {
                what: "page size",
                found: page_size.to_string(),
                expected: size.to_string(),
            });
        }
        if header.page_number != expected.page_number {
            return Err(PageFault::Foreign {
                what: "page number",
                found: header.page_number.to_string(),
                expected: format!("{} (from the file name)", expected.page_number),
            });
        }
        Ok(Self {
            page_size,
            page_number: header.page_number,
            journal_id: header.journal_id,
            flags: header.flags,
            index_stride: header.index_stride,
        })
    }

    /// Whether frames carry checksums.
    pub fn checksums(&self) -> bool {
        self.flags & FLAG_CHECKSUMS != 0
    }
}

/// Why a frame is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameFault {
    /// The length word is not a multiple of 8, shorter than a header, or runs past the room the
    /// page leaves.
    BadLength {
        /// The length word.
        len: u32,
    },
    /// The payload length does not give the length word.
    BadPayloadLength {
        /// The payload length.
        payload_len: u32,
        /// The length word.
        len: u32,
    },
    /// The sequence number is not the one that follows.
    BadSeq {
        /// The frame's.
        found: u64,
        /// The one expected.
        expected: u64,
    },
    /// The timestamp is earlier than the frame before.
    TimeBackwards {
        /// The frame's.
        found: u64,
        /// The frame before's.
        previous: u64,
    },
    /// The checksum does not match: a frame torn by a power cut, or damaged since.
    Checksum {
        /// The stored CRC32C.
        stored: u32,
        /// The computed one.
        computed: u32,
    },
}

impl core::fmt::Display for FrameFault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BadLength { len } => write!(f, "its length word {len} is not a frame length that fits the page"),
            Self::BadPayloadLength { payload_len, len } => {
                write!(f, "its payload length {payload_len} does not give its length word {len}")
            }
            Self::BadSeq { found, expected } => {
                write!(f, "its sequence number is {found}, but {expected} comes next")
            }
            Self::TimeBackwards { found, previous } => {
                write!(f, "its timestamp {found} is earlier than the previous frame's {previous}")
            }
            Self::Checksum { stored, computed } => write!(
                f,
                "its CRC32C is {stored:#010x} but its bytes give {computed:#010x}: a frame torn by a power cut, or damaged since"
            ),
        }
    }
}

/// A page's mapped bytes, viewed: the header, and frames at offsets. Every offset is checked.
///
/// It holds a pointer, not a slice: the writer (perhaps in this very process) writes the
/// unpublished part of the page while readers look at the published part, so a slice is made
/// only of a published frame, which never changes again.
#[derive(Clone, Copy)]
pub struct PageView<'a> {
    base: core::ptr::NonNull<u8>,
    len: usize,
    _mapping: core::marker::PhantomData<&'a [u8]>,
}

/// One frame as found at an offset (its fields copied out; the payload borrowed).
#[derive(Clone, Copy, Debug)]
pub struct RawFrame<'a> {
    /// The length word (the next frame starts this many bytes on).
    pub len: u32,
    /// Sequence number.
    pub seq: u64,
    /// Timestamp.
    pub time: u64,
    /// Type tag.
    pub tag: u16,
    /// Payload.
    pub payload: &'a [u8],
    /// Stored checksum.
    pub crc: u32,
}

/// What is at an offset of a page.
#[derive(Clone, Copy, Debug)]
pub enum Slot<'a> {
    /// Nothing published yet.
    Empty,
    /// The writer went on in the next page.
    End,
    /// A published frame (not yet checked against its predecessor).
    Frame(RawFrame<'a>),
}

impl<'a> PageView<'a> {
    /// Views the `len` bytes at `base`.
    ///
    /// # Safety
    /// `base` is 8-byte aligned and `len` bytes from it stay mapped and readable for `'a`;
    /// nothing writes them but through atomics or where no published frame lies (the journal
    /// writer's discipline, or nothing at all).
    pub unsafe fn from_raw(base: core::ptr::NonNull<u8>, len: usize) -> Self {
        debug_assert!(base.as_ptr().cast::<u64>().is_aligned());
        Self {
            base,
            len,
            _mapping: core::marker::PhantomData,
        }
    }

    /// Views bytes nothing else writes (a test's or a fuzzer's buffer), 8-byte aligned.
    pub fn of_bytes(bytes: &'a [u64]) -> Self {
        // SAFETY: the slice is aligned, readable for 'a, and borrowed shared, so nothing writes it.
        unsafe {
            Self::from_raw(
                core::ptr::NonNull::from(bytes).cast(),
                core::mem::size_of_val(bytes),
            )
        }
    }

    /// The header. Only after [`PageInfo::validate`] (or another check that the page holds a
    /// header).
    pub fn header(&self) -> &'a PageHeader {
        assert!(
            self.len >= PAGE_HEADER_SIZE,
            "a page view shorter than a header"
        );
        // SAFETY: the mapping holds a header's bytes (asserted) and is aligned (`from_raw`'s
        // contract); every field is an integer or an atomic, valid for any bits; the plain
        // fields are written only before the page gets its name, the others are atomics.
        unsafe { &*self.base.as_ptr().cast::<PageHeader>() }
    }

    /// The page's length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the view is empty (never, for a mapped page).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The base pointer (the writer writes through it).
    pub fn base(&self) -> core::ptr::NonNull<u8> {
        self.base
    }

    /// The length word at `offset` (8-aligned, inside the page: the caller checked).
    pub fn len_word(&self, offset: usize) -> &'a AtomicU32 {
        assert!(
            offset.is_multiple_of(8) && offset + 8 <= self.len,
            "length word out of the page"
        );
        // SAFETY: in the mapping (asserted), 8-aligned; an AtomicU32 is valid for any bits and
        // is only ever accessed atomically by readers and the writer.
        unsafe { &*self.base.as_ptr().add(offset).cast::<AtomicU32>() }
    }

    /// Reads the slot at `offset` (a multiple of 8, at least [`PAGE_HEADER_SIZE`], with 8 bytes
    /// of room: the caller's own bookkeeping guarantees it). The length word is loaded with
    /// Acquire; a frame whose length or payload length does not fit is a [`FrameFault`].
    #[inline]
    pub fn slot(&self, offset: usize) -> Result<Slot<'a>, FrameFault> {
        if !offset.is_multiple_of(8) || offset < PAGE_HEADER_SIZE || offset + 8 > self.len() {
            return Err(FrameFault::BadLength { len: 0 });
        }
        let len = self.len_word(offset).load(Ordering::Acquire);
        match len {
            0 => return Ok(Slot::Empty),
            END_OF_PAGE => return Ok(Slot::End),
            _ => {}
        }
        let room = self.len() - offset - 8;
        if !len.is_multiple_of(8) || (len as usize) < FRAME_HEADER_SIZE || len as usize > room {
            return Err(FrameFault::BadLength { len });
        }
        // SAFETY: the whole frame is inside the mapping (checked above), and it is published
        // (the Acquire load above saw its length word): its bytes no longer change.
        let frame =
            unsafe { core::slice::from_raw_parts(self.base.as_ptr().add(offset), len as usize) };
        let u32_at = |at: usize| u32::from_le_bytes(frame[at..at + 4].try_into().unwrap_or([0; 4]));
        let u64_at = |at: usize| u64::from_le_bytes(frame[at..at + 8].try_into().unwrap_or([0; 8]));
        let payload_len = u32_at(4);
        if frame_len(payload_len) != u64::from(len) {
            return Err(FrameFault::BadPayloadLength { payload_len, len });
        }
        Ok(Slot::Frame(RawFrame {
            len,
            seq: u64_at(8),
            time: u64_at(16),
            tag: u16::from_le_bytes([frame[24], frame[25]]),
            crc: u32_at(28),
            payload: &frame[FRAME_HEADER_SIZE..FRAME_HEADER_SIZE + payload_len as usize],
        }))
    }

    /// The index entry `i` as a usable offset, if it is one (set, 8-aligned, inside stride `i`).
    pub fn index_entry(&self, i: usize, stride: u32) -> Option<usize> {
        let offset = self.header().index.get(i)?.load(Ordering::Acquire) as usize;
        let start = PAGE_HEADER_SIZE + i * stride as usize;
        let end = (start + stride as usize).min(self.len().saturating_sub(8));
        (offset != 0 && offset.is_multiple_of(8) && (start..end).contains(&offset))
            .then_some(offset)
    }
}

impl RawFrame<'_> {
    /// Checks the checksum.
    pub fn check_crc(&self) -> Result<(), FrameFault> {
        let computed = frame_crc(
            self.payload.len() as u32,
            self.seq,
            self.time,
            self.tag,
            self.payload,
        );
        if computed == self.crc {
            Ok(())
        } else {
            Err(FrameFault::Checksum {
                stored: self.crc,
                computed,
            })
        }
    }
}
