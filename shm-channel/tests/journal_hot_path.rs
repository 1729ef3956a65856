//! The journal's hot path allocates nothing: the writer's `alloc`/`publish`/`append` (across a
//! page switch to a page made in advance too), a reader's `front`/`pop`/`wait(BusyPoll)`, and
//! the merge's `front`/`pop` run under a counting global allocator, and the count of
//! allocations made during the loops must be exactly zero.

// The journal is not built under `--cfg loom`.
#![cfg(not(loom))]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use shm_channel::journal::{
    JournalOptions, JournalReader, JournalWriter, MergedReader, PrepareNext, ReadFrom,
    ReaderOptions,
};
use shm_channel::WaitStrategy;

/// Counts the allocations of threads that have counting switched on (see `allocations_during`):
/// per thread, so tests running in parallel do not count each other's.
struct CountingAllocator;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count_one() {
    // `try_with`: during thread teardown the locals may be gone; nothing is being measured then.
    let _ = COUNTING.try_with(|counting| {
        if counting.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counting is a side
// effect on const-initialised thread locals, which allocates nothing.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: forwarded with the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout (every allocation goes there).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: forwarded unchanged; `ptr` and `layout` are the caller's, from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Runs `body` on this thread with allocation counting on, and returns how many allocations it
/// made.
fn allocations_during(body: impl FnOnce()) -> usize {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    body();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(Cell::get)
}

const PAGE: u64 = 64 * 1024;

fn options(dir: &std::path::Path) -> JournalOptions {
    JournalOptions::new()
        .dir(dir)
        .page_size(PAGE)
        .prepare_next(PrepareNext::Manual)
}

fn byte(seq: u64, i: usize) -> u8 {
    (seq.wrapping_mul(131) ^ (i as u64).wrapping_mul(7)) as u8
}

fn fill(seq: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = byte(seq, i);
    }
}

/// Reads (and checks) frames until `Empty`, counting them; allocates nothing itself.
fn drain(reader: &mut JournalReader, len: usize) -> u64 {
    let mut read = 0;
    loop {
        let seq = reader.next_seq();
        match reader.front() {
            Ok(frame) => {
                assert_eq!(frame.seq(), seq);
                assert_eq!(frame.payload().len(), len);
                assert!(frame
                    .payload()
                    .iter()
                    .enumerate()
                    .all(|(i, &b)| b == byte(seq, i)));
            }
            Err(shm_channel::journal::ReadError::Empty) => return read,
            Err(error) => panic!("{error}"),
        }
        reader.pop().unwrap();
        read += 1;
    }
}

#[test]
fn the_counter_sees_allocations() {
    // Guards against a vacuous pass: the same measurement does see a real allocation.
    let count = allocations_during(|| drop(std::hint::black_box(vec![1u8; 64])));
    assert_eq!(count, 1);
}

#[test]
fn writer_alloc_publish_append_allocate_nothing_across_a_switch() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = JournalWriter::open("hot", &options(dir.path())).unwrap();
    writer.append(0, 0, &[0; 100]).unwrap();
    writer.prepare_next_page().unwrap();
    let page = writer.current_page();
    let mut buf = [0u8; 100];
    let mut time = 1;
    // Until one switch into the page made in advance, then a few more frames there.
    let count = allocations_during(|| {
        let mut after = 0;
        while after < 50 {
            let seq = writer.next_seq();
            if seq.is_multiple_of(2) {
                let mut slot = writer.alloc(100, 1, time).unwrap();
                fill(seq, slot.payload_mut());
                assert_eq!(slot.publish(), seq);
            } else {
                fill(seq, &mut buf);
                assert_eq!(writer.append(1, time, &buf).unwrap(), seq);
            }
            time += 1;
            if writer.current_page() > page {
                after += 1;
            }
        }
    });
    assert_eq!(count, 0, "allocations on the writer's hot path");
    let stats = writer.stats();
    assert_eq!(
        (stats.switches, stats.unprepared_switches),
        (1, 0),
        "{stats:?}"
    );
    assert!(!writer.next_page_ready());
    // The frames are all there.
    let mut reader = JournalReader::open(
        "hot",
        &ReaderOptions::new().dir(dir.path()),
        ReadFrom::Seq(1),
    )
    .unwrap();
    assert_eq!(drain(&mut reader, 100), writer.next_seq() - 1);
}

#[test]
fn reader_front_pop_wait_allocate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = JournalWriter::open("hotread", &options(dir.path())).unwrap();
    let mut reader = JournalReader::open(
        "hotread",
        &ReaderOptions::new().dir(dir.path()),
        ReadFrom::Oldest,
    )
    .unwrap();
    let mut buf = [0u8; 64];
    for round in 0..20u64 {
        // A batch on the same page (about 150 bytes a frame... 96 with the header: 600 fit a
        // page; 20 a round stays on page 0).
        for _ in 0..20 {
            let seq = writer.next_seq();
            fill(seq, &mut buf);
            writer.append(0, seq, &buf).unwrap();
        }
        assert_eq!(writer.current_page(), 0);
        let count = allocations_during(|| {
            let mut read = 0;
            while read < 20 {
                assert!(reader
                    .wait(WaitStrategy::BusyPoll, Some(Duration::from_secs(60)))
                    .unwrap());
                let seq = reader.next_seq();
                let frame = reader.front().unwrap();
                assert_eq!(frame.seq(), seq);
                assert!(frame
                    .payload()
                    .iter()
                    .enumerate()
                    .all(|(i, &b)| b == byte(seq, i)));
                reader.pop().unwrap();
                read += 1;
            }
            // Nothing more: Empty is no allocation either, nor a wait that times out.
            assert!(matches!(
                reader.front(),
                Err(shm_channel::journal::ReadError::Empty)
            ));
            assert!(!reader
                .wait(WaitStrategy::BusyPoll, Some(Duration::from_micros(50)))
                .unwrap());
        });
        assert_eq!(
            count, 0,
            "allocations on the reader's hot path, round {round}"
        );
    }
    assert_eq!(reader.next_seq(), 400);
}

#[test]
fn merged_front_pop_allocate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut writers: Vec<JournalWriter> = (0..3)
        .map(|j| JournalWriter::open(&format!("hotmerge{j}"), &options(dir.path())).unwrap())
        .collect();
    let readers = (0..3)
        .map(|j| {
            JournalReader::open(
                &format!("hotmerge{j}"),
                &ReaderOptions::new().dir(dir.path()),
                ReadFrom::Oldest,
            )
            .unwrap()
        })
        .collect();
    let mut merged = MergedReader::new(readers);
    let mut buf = [0u8; 32];
    for i in 0..300u64 {
        let j = (i * 7 % 3) as usize;
        let seq = writers[j].next_seq();
        fill(seq, &mut buf);
        writers[j].append(j as u16, i / 2, &buf).unwrap();
    }
    let mut last = 0;
    let count = allocations_during(|| {
        for _ in 0..300 {
            let (index, frame) = merged.front().unwrap();
            assert_eq!(usize::from(frame.tag()), index);
            assert!(frame.time() >= last);
            last = frame.time();
            merged.pop().unwrap();
        }
        assert!(matches!(
            merged.front(),
            Err(shm_channel::journal::ReadError::Empty)
        ));
    });
    assert_eq!(count, 0, "allocations in the merge");
    assert_eq!(last, 149);
}

#[test]
fn reader_crossing_a_page_allocates_nothing_in_steady_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = JournalWriter::open("hotcross", &options(dir.path())).unwrap();
    let mut reader = JournalReader::open(
        "hotcross",
        &ReaderOptions::new().dir(dir.path()),
        ReadFrom::Oldest,
    )
    .unwrap();
    let mut buf = [0u8; 1000];
    for round in 0..6u64 {
        // A page and a bit, so that the reader crosses one page end per round.
        let page = writer.current_page();
        while writer.current_page() == page {
            let seq = writer.next_seq();
            fill(seq, &mut buf);
            writer.append(0, seq, &buf).unwrap();
        }
        writer.prepare_next_page().unwrap();
        let mut read = 0;
        let count = allocations_during(|| read = drain(&mut reader, 1000));
        assert!(read > 50);
        // The first crossing may set up what later ones reuse.
        if round > 0 {
            assert_eq!(count, 0, "allocations crossing page {page}");
        }
    }
    assert_eq!(reader.next_seq(), writer.next_seq());
}
