//! Every header validation error, provoked by corrupting a real segment file and opening it.
//! Each test also checks that the refused file was left exactly as it was (no re-initialisation).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use shm_channel::{
    Channel, ChannelError, ChannelOptions, Direction, End, HeaderError, SegmentError, ABI_VERSION,
    HEADER_SIZE, SEGMENT_MAGIC,
};
use spsc_core::{AttachError, MessageSender, RING_MAGIC};

type Chan = Channel<4096>;

// Offsets in the header (locked by static assertions in `header.rs`).
const MAGIC: u64 = 0;
const VERSION: u64 = 8;
const HEADER_SIZE_FIELD: u64 = 12;
const TOTAL_SIZE: u64 = 16;
const STATE: u64 = 24;
const CREATOR_PID: u64 = 28;
const RING0_OFFSET: u64 = 32;
const RING0_SIZE: u64 = 40;
const RING0_FINGERPRINT: u64 = 48;
const RING1_OFFSET: u64 = 64;
const RING1_FINGERPRINT: u64 = 80;
const STATE_INITIALISING: u32 = 1;

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    options: ChannelOptions,
}

/// A real, ready segment with one queued message, no process attached.
fn segment() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let options = ChannelOptions::new()
        .dir(dir.path())
        .init_timeout(Duration::from_millis(50));
    let mut a = Chan::create("seg", End::A, &options).unwrap();
    a.sender().send(3, b"queued").unwrap();
    drop(a);
    let path = dir.path().join("seg");
    Fixture {
        _dir: dir,
        path,
        options,
    }
}

impl Fixture {
    fn dir(&self) -> &Path {
        self._dir.path()
    }
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, offset).unwrap();
}

fn read_u64(path: &Path, offset: u64) -> u64 {
    let file = std::fs::File::open(path).unwrap();
    let mut buf = [0; 8];
    file.read_exact_at(&mut buf, offset).unwrap();
    u64::from_le_bytes(buf)
}

fn set_len(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// Opens end B with each entry point and returns the (same) error; checks the file is untouched.
fn refused(fixture: &Fixture) -> ChannelError {
    let before = std::fs::read(&fixture.path).unwrap();
    let open = Chan::open("seg", End::B, &fixture.options).unwrap_err();
    let create_or_open = Chan::create_or_open("seg", End::B, &fixture.options).unwrap_err();
    assert_eq!(without_wait_time(&open), without_wait_time(&create_or_open));
    assert!(!open.to_string().is_empty());
    assert_eq!(
        std::fs::read(&fixture.path).unwrap(),
        before,
        "a refused segment must not be modified"
    );
    open
}

/// The error with the (run-dependent) waiting time of a timeout zeroed, for comparison.
fn without_wait_time(error: &ChannelError) -> ChannelError {
    match error {
        ChannelError::Segment(SegmentError::InitTimeout {
            name,
            folder,
            creator_pid,
            ..
        }) => ChannelError::Segment(SegmentError::InitTimeout {
            name: name.clone(),
            folder: folder.clone(),
            creator_pid: *creator_pid,
            waited: Duration::ZERO,
        }),
        other => other.clone(),
    }
}

fn header_error(fixture: &Fixture) -> HeaderError {
    match refused(fixture) {
        ChannelError::Segment(SegmentError::Header {
            name,
            folder,
            error,
        }) => {
            // Every header error names the segment and its folder.
            assert_eq!((name.as_str(), folder.as_path()), ("seg", fixture.dir()));
            error
        }
        other => panic!("expected a header error, got {other:?}"),
    }
}

/// The first word of a file that was refused as not a segment.
fn not_a_segment(fixture: &Fixture) -> Option<u64> {
    match refused(fixture) {
        ChannelError::Segment(error @ SegmentError::NotASegment { .. }) => {
            let text = error.to_string();
            assert!(
                text.contains("\"seg\"") && text.contains(&fixture.dir().display().to_string())
            );
            let SegmentError::NotASegment { first_word, .. } = error else {
                unreachable!()
            };
            first_word
        }
        other => panic!("expected NotASegment, got {other:?}"),
    }
}

/// A pid that belonged to a process that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn intact_segment_opens_and_keeps_its_message() {
    let fixture = segment();
    let mut b = Chan::open("seg", End::B, &fixture.options).unwrap();
    let message = spsc_core::MessageReceiver::front(b.receiver()).unwrap();
    assert_eq!((message.tag(), message.payload()), (3, &b"queued"[..]));
    assert_eq!(read_u64(&fixture.path, MAGIC), SEGMENT_MAGIC);
}

#[test]
fn wrong_magic() {
    let fixture = segment();
    write_at(&fixture.path, MAGIC, b"NOTASEG!");
    assert_eq!(
        not_a_segment(&fixture),
        Some(u64::from_le_bytes(*b"NOTASEG!"))
    );
}

#[test]
fn not_a_segment_at_all() {
    let fixture = segment();
    std::fs::write(
        &fixture.path,
        "just some text, long enough? no.".repeat(200),
    )
    .unwrap();
    assert_eq!(
        not_a_segment(&fixture),
        Some(u64::from_le_bytes(*b"just som"))
    );
}

#[test]
fn other_version() {
    let fixture = segment();
    write_at(&fixture.path, VERSION, &(ABI_VERSION + 1).to_le_bytes());
    assert_eq!(
        header_error(&fixture),
        HeaderError::VersionMismatch {
            found: ABI_VERSION + 1,
            expected: ABI_VERSION
        }
    );
}

#[test]
fn other_fingerprint() {
    let fixture = segment();
    let expected = Chan::RING_LAYOUT.fingerprint();
    write_at(
        &fixture.path,
        RING1_FINGERPRINT,
        &(expected ^ 1).to_le_bytes(),
    );
    assert_eq!(
        header_error(&fixture),
        HeaderError::LayoutMismatch {
            direction: Direction::BToA,
            found: expected ^ 1,
            expected,
            found_shape: (4096, 1),
            expected_shape: (4096, 1),
        }
    );
}

#[test]
fn other_capacity_is_a_layout_mismatch() {
    let fixture = segment();
    let error = Channel::<8192>::open("seg", End::B, &fixture.options).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "segment \"seg\" in {}: ring A→B was created with a capacity of 4096 bytes in 1 \
             lane(s), but this end was built for 8192 bytes in 1 lane(s): both ends must use the \
             same Channel<C, L> (capacity C and lanes L)",
            fixture.dir().display()
        )
    );
    assert!(matches!(
        error,
        ChannelError::Segment(SegmentError::Header {
            error: HeaderError::LayoutMismatch {
                direction: Direction::AToB,
                found_shape: (4096, 1),
                expected_shape: (8192, 1),
                ..
            },
            ..
        })
    ));
    // The same capacity in another number of lanes: refused, saying so.
    let error = Channel::<4096, 16>::open("seg", End::B, &fixture.options).unwrap_err();
    assert!(matches!(
        error,
        ChannelError::Segment(SegmentError::Header {
            error: HeaderError::LayoutMismatch {
                found_shape: (4096, 1),
                expected_shape: (4096, 16),
                ..
            },
            ..
        })
    ));
    assert!(error.to_string().contains("in 16 lane(s)"), "{error}");
}

#[test]
fn truncated_file() {
    let fixture = segment();
    let size = Chan::SEGMENT_SIZE as u64;
    set_len(&fixture.path, size - 128);
    assert_eq!(
        header_error(&fixture),
        HeaderError::Truncated {
            recorded: size,
            actual: size - 128
        }
    );
}

#[test]
fn file_shorter_than_the_header() {
    let fixture = segment();
    set_len(&fixture.path, 100);
    assert_eq!(
        header_error(&fixture),
        HeaderError::TooShort {
            len: 100,
            required: HEADER_SIZE as u64
        }
    );
}

#[test]
fn empty_file() {
    let fixture = segment();
    set_len(&fixture.path, 0);
    assert_eq!(
        header_error(&fixture),
        HeaderError::TooShort {
            len: 0,
            required: HEADER_SIZE as u64
        }
    );
}

#[test]
fn file_longer_than_recorded() {
    let fixture = segment();
    let size = Chan::SEGMENT_SIZE as u64;
    set_len(&fixture.path, size + 4096);
    assert_eq!(
        header_error(&fixture),
        HeaderError::SizeMismatch {
            recorded: size,
            actual: size + 4096
        }
    );
}

#[test]
fn half_initialised_by_a_dead_creator() {
    let fixture = segment();
    let pid = dead_pid();
    write_at(&fixture.path, STATE, &STATE_INITIALISING.to_le_bytes());
    write_at(&fixture.path, CREATOR_PID, &pid.to_le_bytes());
    assert_eq!(
        header_error(&fixture),
        HeaderError::HalfInitialised { creator_pid: pid }
    );
}

#[test]
fn initialising_by_a_live_creator_times_out() {
    let fixture = segment();
    let me = std::process::id();
    write_at(&fixture.path, STATE, &STATE_INITIALISING.to_le_bytes());
    write_at(&fixture.path, CREATOR_PID, &me.to_le_bytes());
    match refused(&fixture) {
        ChannelError::Segment(SegmentError::InitTimeout { creator_pid, .. }) => {
            assert_eq!(creator_pid, me)
        }
        other => panic!("expected InitTimeout, got {other:?}"),
    }
}

/// Options that would wait a long time for a creator: a refusal under them did not wait.
fn patient(fixture: &Fixture) -> ChannelOptions {
    ChannelOptions::new()
        .dir(fixture.dir())
        .init_timeout(Duration::from_secs(600))
}

#[test]
fn zero_filled_file_is_refused_at_once_as_never_initialised() {
    let fixture = segment();
    std::fs::write(&fixture.path, vec![0u8; Chan::SEGMENT_SIZE]).unwrap();
    // A creator marks the file before it sizes it, so a zero file of full size is nobody's
    // creation in progress: refused without waiting, and not blamed on "pid 0".
    let error = Chan::open("seg", End::B, &patient(&fixture)).unwrap_err();
    assert!(
        matches!(
            error,
            ChannelError::Segment(SegmentError::Header {
                error: HeaderError::NeverInitialised { len },
                ..
            }) if len == Chan::SEGMENT_SIZE as u64
        ),
        "{error:?}"
    );
    assert!(!error.to_string().contains("pid 0"), "{error}");
    assert_eq!(
        header_error(&fixture),
        HeaderError::NeverInitialised {
            len: Chan::SEGMENT_SIZE as u64
        }
    );
}

#[test]
fn files_shorter_than_a_header_are_refused_at_once_unless_a_live_creator_is_at_work() {
    let fixture = segment();
    let open = |fixture: &Fixture| Chan::open("seg", End::B, &patient(fixture)).unwrap_err();
    // A short foreign file (a hard link to one, say): not a segment.
    std::fs::write(
        &fixture.path,
        b"a short text file that happens to carry the name\n",
    )
    .unwrap();
    assert!(matches!(
        open(&fixture),
        ChannelError::Segment(SegmentError::NotASegment {
            len: 49,
            first_word: Some(_),
            ..
        })
    ));
    // The magic in a file shorter than a header: a truncated segment.
    let mut truncated = SEGMENT_MAGIC.to_le_bytes().to_vec();
    truncated.resize(100, 0);
    std::fs::write(&fixture.path, &truncated).unwrap();
    assert!(matches!(
        open(&fixture),
        ChannelError::Segment(SegmentError::Header {
            error: HeaderError::TooShort { len: 100, .. },
            ..
        })
    ));
    // Empty: a creator that died right after creating the file (a moment's grace, not 600 s).
    std::fs::write(&fixture.path, b"").unwrap();
    assert!(matches!(
        open(&fixture),
        ChannelError::Segment(SegmentError::Header {
            error: HeaderError::TooShort { len: 0, .. },
            ..
        })
    ));
    // A creator's marker (zeros, then state `initialising` and its pid) in a short file: a
    // creation in progress if the creator lives, half-initialised if it died.
    let marked = |pid: u32| {
        let mut bytes = vec![0u8; 32];
        bytes[STATE as usize..][..4].copy_from_slice(&STATE_INITIALISING.to_le_bytes());
        bytes[CREATOR_PID as usize..][..4].copy_from_slice(&pid.to_le_bytes());
        bytes
    };
    let dead = dead_pid();
    std::fs::write(&fixture.path, marked(dead)).unwrap();
    assert!(matches!(
        open(&fixture),
        ChannelError::Segment(SegmentError::Header {
            error: HeaderError::HalfInitialised { creator_pid },
            ..
        }) if creator_pid == dead
    ));
    std::fs::write(&fixture.path, marked(std::process::id())).unwrap();
    match refused(&fixture) {
        ChannelError::Segment(SegmentError::InitTimeout { creator_pid, .. }) => {
            assert_eq!(creator_pid, std::process::id())
        }
        other => panic!("expected InitTimeout, got {other:?}"),
    }
}

#[test]
fn unknown_state() {
    let fixture = segment();
    write_at(&fixture.path, STATE, &7u32.to_le_bytes());
    assert_eq!(header_error(&fixture), HeaderError::BadState { found: 7 });
}

#[test]
fn impossible_offsets_and_sizes() {
    let size = Chan::SEGMENT_SIZE as u64;
    let ring0 = HEADER_SIZE as u64;
    let cases: [(&str, u64, Vec<u8>, &str); 7] = [
        (
            "misaligned ring",
            RING0_OFFSET,
            (ring0 + 8).to_le_bytes().to_vec(),
            "ring offset is not 128-byte aligned",
        ),
        (
            "ring inside the header",
            RING0_OFFSET,
            0u64.to_le_bytes().to_vec(),
            "ring overlaps the segment header",
        ),
        (
            "ring past the end",
            RING0_OFFSET,
            (size - 128).to_le_bytes().to_vec(),
            "ring runs past the end of the segment",
        ),
        (
            "offset that overflows",
            RING1_OFFSET,
            (u64::MAX - 127).to_le_bytes().to_vec(),
            "ring runs past the end of the segment",
        ),
        (
            "overlapping rings",
            RING1_OFFSET,
            ring0.to_le_bytes().to_vec(),
            "the two rings overlap",
        ),
        (
            "ring size",
            RING0_SIZE,
            128u64.to_le_bytes().to_vec(),
            "recorded ring size does not match the ring's layout",
        ),
        (
            "header size",
            HEADER_SIZE_FIELD,
            64u32.to_le_bytes().to_vec(),
            "recorded header size differs from this format version's",
        ),
    ];
    for (what, offset, bytes, reason) in cases {
        let fixture = segment();
        write_at(&fixture.path, offset, &bytes);
        assert_eq!(
            header_error(&fixture),
            HeaderError::Impossible { reason },
            "{what}"
        );
    }
    // A total size that disagrees with the file is reported as such, not as an offset problem.
    let fixture = segment();
    write_at(&fixture.path, TOTAL_SIZE, &(size * 2).to_le_bytes());
    assert_eq!(
        header_error(&fixture),
        HeaderError::Truncated {
            recorded: size * 2,
            actual: size
        }
    );
}

/// Headers that are consistent in themselves (every ring inside a file of the recorded size, no
/// overlap) but describe an arrangement no channel creator writes: slack at the end, a gap
/// before a moved ring, the rings swapped. Each used to be accepted (the fuzzer found the
/// first); a channel's rings have one place, so each is refused.
#[test]
fn self_consistent_headers_of_another_arrangement() {
    let size = Chan::SEGMENT_SIZE as u64;
    let ring_size = read_u64(&segment().path, RING0_SIZE);
    let (ring0, ring1) = (HEADER_SIZE as u64, HEADER_SIZE as u64 + ring_size);
    let grown = size + 4096;
    // (what, the file's length, the header words written as (offset, value))
    type Case<'a> = (&'a str, u64, &'a [(u64, u64)]);
    let cases: [Case; 3] = [
        ("slack after the rings", grown, &[(TOTAL_SIZE, grown)]),
        (
            "a gap before ring 1",
            grown,
            &[(TOTAL_SIZE, grown), (RING1_OFFSET, ring1 + 4096)],
        ),
        (
            "the rings swapped",
            size,
            &[(RING0_OFFSET, ring1), (RING1_OFFSET, ring0)],
        ),
    ];
    for (what, file_len, patches) in cases {
        let fixture = segment();
        set_len(&fixture.path, file_len);
        for &(offset, value) in patches {
            write_at(&fixture.path, offset, &value.to_le_bytes());
        }
        assert_eq!(
            header_error(&fixture),
            HeaderError::Impossible {
                reason: "rings are not laid out as a channel of this capacity lays them out"
            },
            "{what}"
        );
    }
}

#[test]
fn corrupt_ring_inside_a_valid_header() {
    let fixture = segment();
    write_at(
        &fixture.path,
        HEADER_SIZE as u64,
        &0xdead_beef_u32.to_le_bytes(),
    );
    assert_eq!(
        refused(&fixture),
        ChannelError::Ring {
            segment: format!("segment \"seg\" in {}", fixture.dir().display()),
            direction: Direction::AToB,
            error: AttachError::BadMagic { found: 0xdead_beef }
        }
    );
    // Sanity: the ring's magic really was where we wrote.
    assert_ne!(RING_MAGIC, 0xdead_beef);
}

#[test]
fn fingerprint_of_ring_zero_is_checked_too() {
    let fixture = segment();
    write_at(&fixture.path, RING0_FINGERPRINT, &0u64.to_le_bytes());
    assert!(matches!(
        header_error(&fixture),
        HeaderError::LayoutMismatch {
            direction: Direction::AToB,
            found: 0,
            ..
        }
    ));
}
