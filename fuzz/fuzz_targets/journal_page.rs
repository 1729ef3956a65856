//! `shm_channel::journal` on pages holding arbitrary bytes (as left by a crashed, buggy or
//! hostile process, or files that are not pages at all). Every refusal must be a typed error;
//! an accepted page must behave: no panic, no read outside the page, no endless loop.
//!
//! Input: one mode byte, then bytes whose meaning the mode chooses:
//! - `mode & 3 == 0`: page 0 is the bytes, as they are (any length);
//! - `mode & 3 == 1`: page 0 is a valid page written by the crate (full of frames, ending in an
//!   end-of-page word), then the bytes are patches;
//! - `mode & 3 == 2`: page 0 is a valid header (first 4096 bytes), then the bytes as the frames
//!   (zero-padded to the page size);
//! - `mode & 3 == 3`: page 0 is the valid page 1 (a partly filled page, numbered 1: refused as
//!   foreign unless patched into shape), then patches.
//!
//! `mode & 4` uses the template made with checksums; `mode & 8` adds the valid page 1 after
//! page 0 (so a reader crosses the end-of-page word into it); `mode & 16` also runs the
//! file-based checks (readers and a writer on files), which are slower than the in-memory ones.
//!
//! A patch is 4 bytes `[op, offset_lo, offset_hi, value]`: set, xor or add `value` at `offset`
//! (modulo the page's length), set the aligned 32-bit word there to a length-like value, or
//! resize the page to `offset` bytes.
//!
//! In memory: `PageInfo::validate`, then a walk of `PageView::slot` from the first frame,
//! the index entries, and slots at offsets from the input, on an 8-aligned copy. On files (a
//! fixed folder of this process under /dev/shm, emptied each run): `JournalReader::open` from
//! the oldest frame, the end, a sequence number and a time, each read to its end; and
//! `JournalWriter::open` on a copy, then an append and `maintain`.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shm_channel::journal::layout::{
    Expected, PageInfo, PageView, Slot, INDEX_SLOTS, PAGE_HEADER_SIZE,
};
use shm_channel::journal::{
    JournalOptions, JournalReader, JournalWriter, ReadError, ReadFrom, ReaderOptions, Retention,
};

const NAME: &str = "fuzzj";
const PAGE_SIZE: u64 = 64 * 1024;
const MAX_PATCHES: usize = 64;

fn page_file(number: u64) -> String {
    format!("{number:020}.page")
}

/// This process's folder under /dev/shm (fixed, so runs do not churn through folders).
fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = PathBuf::from(format!("/dev/shm/spsc-fuzz-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("create the fuzz folder");
        root
    })
}

/// Pages 0 and 1 of a journal written by the crate: page 0 full (its last word the end of
/// page), page 1 partly filled.
struct Template {
    pages: [Vec<u8>; 2],
}

fn templates() -> &'static [Template; 2] {
    static TEMPLATES: OnceLock<[Template; 2]> = OnceLock::new();
    TEMPLATES.get_or_init(|| [make_template(false), make_template(true)])
}

fn make_template(checksums: bool) -> Template {
    let dir = root().join(format!("template-{checksums}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the template folder");
    let options = JournalOptions::new()
        .dir(&dir)
        .page_size(PAGE_SIZE)
        .checksums(checksums);
    {
        let mut writer = JournalWriter::open(NAME, &options).expect("open the template writer");
        let mut seq = 0u64;
        while writer.current_page() < 1 || seq % 7 != 0 {
            let len = [0usize, 1, 7, 8, 40, 300, 1500][(seq % 7) as usize] + (seq as usize % 5);
            let payload: Vec<u8> = (0..len).map(|j| (seq as usize * 31 + j) as u8).collect();
            writer
                .append((seq % 3) as u16, 1_000 + seq * 10, &payload)
                .expect("append to the template");
            seq += 1;
        }
    }
    let folder = dir.join(NAME);
    let pages = [0, 1].map(|n| std::fs::read(folder.join(page_file(n))).expect("read a page"));
    let _ = std::fs::remove_dir_all(&dir);
    Template { pages }
}

fn apply_patches(page: &mut Vec<u8>, patches: &[u8]) {
    for patch in patches.chunks_exact(4).take(MAX_PATCHES) {
        let (op, offset, value) = (
            patch[0],
            usize::from(u16::from_le_bytes([patch[1], patch[2]])),
            patch[3],
        );
        if op % 8 == 7 {
            page.resize(offset, 0);
            continue;
        }
        if page.is_empty() {
            continue;
        }
        let at = offset % page.len();
        match op % 8 {
            0 | 1 => page[at] = value,
            2 => page[at] ^= value,
            3 => page[at] = page[at].wrapping_add(value),
            _ => {
                // A length-like word at an aligned offset: frame lengths, an end-of-page word,
                // or lengths around the room left.
                let at = at & !7;
                if at + 4 <= page.len() {
                    let word = match op % 8 {
                        4 => u32::from(value) * 8,
                        5 => u32::MAX,
                        _ => ((page.len() - at) as u32).wrapping_sub(u32::from(value)),
                    };
                    page[at..at + 4].copy_from_slice(&word.to_le_bytes());
                }
            }
        }
    }
}

/// In-memory checks on an 8-aligned copy.
fn check_in_memory(page: &[u8], probes: &[u8], page_number: u64) {
    let mut words = vec![0u64; page.len().div_ceil(8)];
    copy_words(&mut words, page);
    // The view covers exactly the page's bytes rounded down to whole words (a file's length is
    // whatever it is; a view of words is what a mapping gives).
    let view = PageView::of_bytes(&words[..page.len() / 8]);
    let expected = Expected {
        name: NAME,
        journal_id: None,
        page_size: None,
        page_number,
    };
    let Ok(info) = PageInfo::validate(&view, &expected) else {
        return;
    };
    // Walk the chain from the first frame: every step moves on by at least a frame header, so
    // the walk ends within the page.
    let mut offset = PAGE_HEADER_SIZE;
    let mut steps = 0usize;
    let mut sum = 0u64;
    while let Ok(Slot::Frame(frame)) = view.slot(offset) {
        sum = sum.wrapping_add(frame.payload.iter().map(|&b| u64::from(b)).sum::<u64>());
        if info.checksums() {
            let _ = frame.check_crc();
        }
        offset += frame.len as usize;
        steps += 1;
        assert!(steps <= view.len() / 32, "a walk that does not end");
    }
    // The index, and slots wherever the input points (any offset must be refused or read
    // within the page).
    for i in 0..INDEX_SLOTS + 2 {
        if let Some(at) = view.index_entry(i, info.index_stride) {
            assert!(at + 8 <= view.len(), "an index entry outside the page");
            if let Ok(Slot::Frame(frame)) = view.slot(at) {
                sum = sum.wrapping_add(frame.payload.len() as u64);
            }
        }
    }
    for probe in probes.chunks_exact(4).take(16) {
        let at = u32::from_le_bytes(probe.try_into().unwrap()) as usize;
        for at in [at, at & !7, PAGE_HEADER_SIZE + (at & !7) % view.len()] {
            if let Ok(Slot::Frame(frame)) = view.slot(at) {
                sum = sum.wrapping_add(frame.payload.last().map_or(0, |&b| u64::from(b)));
            }
        }
    }
    std::hint::black_box(sum);
}

fn copy_words(words: &mut [u64], bytes: &[u8]) {
    for (word, chunk) in words.iter_mut().zip(bytes.chunks(8)) {
        let mut buf = [0u8; 8];
        buf[..chunk.len()].copy_from_slice(chunk);
        *word = u64::from_ne_bytes(buf);
    }
}

/// Reads `reader` to its end: every frame's bytes, until nothing more, or an error. A lag
/// report is followed (at most a few: the files do not change under it).
fn read_all(reader: &mut JournalReader) {
    let mut frames = 0usize;
    let mut lags = 0usize;
    let mut sum = 0u64;
    loop {
        match reader.front() {
            Ok(frame) => {
                sum = sum.wrapping_add(frame.payload().iter().map(|&b| u64::from(b)).sum::<u64>());
                sum = sum.wrapping_add(frame.seq() ^ frame.time() ^ u64::from(frame.tag()));
            }
            Err(ReadError::Empty) => break,
            Err(ReadError::Lagged { .. }) => {
                lags += 1;
                assert!(
                    lags <= 4,
                    "a reader lagging for ever on files that do not change"
                );
                continue;
            }
            Err(_) => break,
        }
        if reader.pop().is_err() {
            break;
        }
        frames += 1;
        // Two pages of 64 KiB hold at most this many frames (32 bytes each at least).
        assert!(
            frames <= 2 * PAGE_SIZE as usize / 32,
            "a read that does not end"
        );
    }
    std::hint::black_box(sum);
}

/// The page files into `<dir>/<NAME>/`, numbered from `first`, the folder emptied first.
fn write_pages(dir: &Path, first: u64, pages: &[&[u8]]) {
    let folder = dir.join(NAME);
    let _ = std::fs::remove_dir_all(&folder);
    std::fs::create_dir_all(&folder).expect("create the journal folder");
    for (number, page) in pages.iter().enumerate() {
        std::fs::write(folder.join(page_file(first + number as u64)), page).expect("write a page");
    }
}

fn check_files(first: u64, pages: &[&[u8]], seek: u64) {
    let read_dir = root().join("read");
    write_pages(&read_dir, first, pages);
    let options = ReaderOptions::new().dir(&read_dir);
    for from in [
        ReadFrom::Oldest,
        ReadFrom::End,
        ReadFrom::Seq(seek % 4096),
        ReadFrom::Time(seek),
    ] {
        if let Ok(mut reader) = JournalReader::open(NAME, &options, from) {
            read_all(&mut reader);
        }
    }

    // A writer on a copy: it recovers its position from the pages (or refuses them), appends,
    // makes the next page; a reader then reads what it left.
    let write_dir = root().join("write");
    write_pages(&write_dir, first, pages);
    let options = JournalOptions::new()
        .dir(&write_dir)
        .page_size(PAGE_SIZE)
        .retention(Retention::KeepAll);
    if let Ok(mut writer) = JournalWriter::open(NAME, &options) {
        let time = writer.last_time();
        let _ = writer.append(1, time, &seek.to_le_bytes());
        let _ = writer.maintain(time);
        let _ = writer.append(2, time, &[7; 100]);
        drop(writer);
        if let Ok(mut reader) = JournalReader::open(
            NAME,
            &ReaderOptions::new().dir(&write_dir),
            ReadFrom::Oldest,
        ) {
            read_all(&mut reader);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let template = &templates()[usize::from(mode & 4 != 0)];
    let (mut page, patches, number) = match mode & 3 {
        0 => (rest.to_vec(), &[][..], 0),
        1 => (template.pages[0].clone(), rest, 0),
        2 => {
            let mut page = template.pages[0][..PAGE_HEADER_SIZE].to_vec();
            page.extend_from_slice(&rest[..rest.len().min(PAGE_SIZE as usize - PAGE_HEADER_SIZE)]);
            page.resize(PAGE_SIZE as usize, 0);
            (page, &[][..], 0)
        }
        _ => (template.pages[1].clone(), rest, 1),
    };
    apply_patches(&mut page, patches);
    check_in_memory(&page, rest, number);
    if mode & 16 != 0 {
        let seek = rest
            .get(..8)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
        if mode & 8 != 0 && number == 0 {
            check_files(0, &[&page, &template.pages[1]], seek);
        } else {
            // Page 1 alone is a journal whose page 0 retention removed.
            check_files(number, &[&page], seek);
        }
    }
});
