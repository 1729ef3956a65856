//! Crash tests of the journal across real processes: one writer process appends frames whose
//! every byte is a function of their sequence number (lengths up to a few KiB, now and then
//! near the page's maximum payload, on 64 KiB pages so that pages roll over all the time), and
//! three reader processes read them live with named positions
//! ([`ReaderOptions::position_file`]), checking every frame: exactly once, in order, with the
//! right length, tag, time and bytes. The parent `SIGKILL`s the writer or a reader at random
//! moments, reaps it and starts it again: a restarted writer must go on at
//! [`JournalWriter::next_seq`] with at least every frame its predecessor reported published, a
//! restarted reader at its persisted position with at least every frame it reported verified.
//! At the end the parent stops the writer, lets the readers catch up to the final `next_seq`,
//! and reads the whole journal once more from [`ReadFrom::Oldest`] itself.
//!
//! A reader stops at once, with a failure exit, on the first gap, duplicate, wrong byte, lag
//! report (retention is `KeepAll`) or refused frame; the parent fails on any child exit it did
//! not cause. The children are this test binary re-executed with the ignored test
//! [`role_journal_child`] and their parameters in the environment; each dies with its parent
//! and has a deadline, and everything lives in a temporary folder under /dev/shm.
//!
//! Progress reports are 8-byte files each child rewrites (`pwrite`) now and then: the writer's
//! `next_seq` after a burst of appends, a reader's `next_seq` after a batch of pops. A kill can
//! land before a report, so a report may lag, never lead: a restart must start at or past it.
//!
//! Cycles (kills) per test: `JOURNAL_KILL_CYCLES` (default 150 per test, two tests — one journal
//! with checksums, one without, since a journal keeps the choice its first page was made with —
//! so 300 in all; a few seconds in all, debug or release).
//! `JOURNAL_KILL_SEED` replays a schedule.

#![cfg(not(loom))]

use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shm_channel::journal::{
    JournalOptions, JournalReader, JournalWriter, PrepareNext, ReadError, ReadFrom, ReaderOptions,
    Retention,
};
use shm_channel::WaitStrategy;

const NAME: &str = "killed";
const PAGE_SIZE: u64 = 64 * 1024;
const READERS: usize = 3;
/// How long a child may live at most, and how long the parent waits for anything.
const CHILD_LIFETIME: Duration = Duration::from_secs(240);

/// The tests each use both cores; run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------------------------
// Frames: everything is a function of the sequence number.

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Payload length of frame `seq`: mostly small, some up to 4 KiB, now and then within a few
/// bytes of the page's maximum payload (`max`), and sometimes empty.
fn frame_len(seq: u64, max: u32) -> usize {
    let key = splitmix(seq);
    let random = key >> 16;
    let len = match key % 512 {
        0 => u64::from(max) - random % 16,
        1..=8 => 0,
        9..=72 => random % 4097,
        _ => random % 200,
    };
    len as usize
}

fn frame_tag(seq: u64) -> u16 {
    seq as u16 ^ 0x5a5a
}

/// Strictly increasing: `4 * seq` plus 0..=3.
fn frame_time(seq: u64) -> u64 {
    1_000_000 + seq * 4 + (splitmix(seq ^ 0x7157) & 3)
}

/// Random bytes the payloads are cut from.
struct Pool(Vec<u8>);

impl Pool {
    fn new() -> Self {
        let mut state = 0x5EED_u64;
        let bytes = (0..PAGE_SIZE as usize + 8192)
            .map(|_| {
                state = splitmix(state);
                state as u8
            })
            .collect();
        Self(bytes)
    }

    /// The payload of frame `seq`: a cut of the pool at an offset of its own, its first 8 bytes
    /// (if it has them) the sequence number.
    fn fill(&self, seq: u64, payload: &mut [u8]) {
        let start = (splitmix(seq ^ 0xB0D1) % 8192) as usize;
        payload.copy_from_slice(&self.0[start..start + payload.len()]);
        if payload.len() >= 8 {
            payload[..8].copy_from_slice(&seq.to_le_bytes());
        }
    }

    /// Whether `payload` is frame `seq`'s.
    fn matches(&self, seq: u64, payload: &[u8]) -> bool {
        let start = (splitmix(seq ^ 0xB0D1) % 8192) as usize;
        if payload.len() >= 8 {
            payload[..8] == seq.to_le_bytes()
                && payload[8..] == self.0[start + 8..start + payload.len()]
        } else {
            payload == &self.0[start..start + payload.len()]
        }
    }
}

/// A small deterministic random source.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = splitmix(self.0);
        self.0
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

// ---------------------------------------------------------------------------------------------
// Progress reports: 8-byte files.

fn write_report(path: &Path, value: u64) {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    file.write_all_at(&value.to_le_bytes(), 0).unwrap();
}

fn read_report(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    Some(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// An open report file, rewritten in place.
struct Report(std::fs::File);

impl Report {
    fn open(path: &Path) -> Self {
        Self(
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .unwrap(),
        )
    }

    fn store(&self, value: u64) {
        self.0.write_all_at(&value.to_le_bytes(), 0).unwrap();
    }
}

fn writer_report(dir: &Path) -> PathBuf {
    dir.join("writer.report")
}

fn reader_report(dir: &Path, reader: usize) -> PathBuf {
    dir.join(format!("reader-{reader}.report"))
}

fn reader_position(dir: &Path, reader: usize) -> PathBuf {
    dir.join(format!("reader-{reader}.position"))
}

/// Created by the parent to stop the writer.
fn stop_file(dir: &Path) -> PathBuf {
    dir.join("stop")
}

/// Written by the parent: the final `next_seq`, at which readers exit successfully.
fn finish_file(dir: &Path) -> PathBuf {
    dir.join("finish")
}

// ---------------------------------------------------------------------------------------------
// The children.

fn child_env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("{key} not set: run only as a child role"))
}

fn fail(role: &str, why: &str) -> ! {
    eprintln!("journal_kill {role} (pid {}): {why}", std::process::id());
    std::process::exit(1);
}

#[test]
#[ignore = "child role of the journal kill tests"]
fn role_journal_child() {
    // Die with the parent; the deadline covers a parent that died before this call.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL)).unwrap();
    let deadline =
        UNIX_EPOCH + Duration::from_millis(child_env("JOURNAL_KILL_DEADLINE_MS").parse().unwrap());
    let dir = PathBuf::from(child_env("JOURNAL_KILL_DIR"));
    let seed: u64 = child_env("JOURNAL_KILL_CHILD_SEED").parse().unwrap();
    match child_env("JOURNAL_KILL_ROLE").as_str() {
        "writer" => run_writer(&dir, deadline, seed),
        reader => {
            let index = reader
                .strip_prefix("reader-")
                .and_then(|i| i.parse().ok())
                .unwrap_or_else(|| panic!("JOURNAL_KILL_ROLE={reader}"));
            run_reader(&dir, index, deadline, seed);
        }
    }
}

fn writer_options(dir: &Path, checksums: bool, rng: &mut Rng) -> JournalOptions {
    let prepare = match rng.below(3) {
        0 => PrepareNext::Manual,
        1 => PrepareNext::Eager { at_percent: 50 },
        _ => PrepareNext::Eager {
            at_percent: 1 + rng.below(99) as u8,
        },
    };
    JournalOptions::new()
        .dir(dir)
        .page_size(PAGE_SIZE)
        .checksums(checksums)
        .retention(Retention::KeepAll)
        .prepare_next(prepare)
}

fn run_writer(dir: &Path, deadline: SystemTime, seed: u64) {
    let role = "writer";
    let mut rng = Rng(seed);
    let checksums = child_env("JOURNAL_KILL_CHECKSUMS") == "1";
    let options = writer_options(dir, checksums, &mut rng);
    let mut writer = JournalWriter::open(NAME, &options)
        .unwrap_or_else(|error| fail(role, &format!("open: {error}")));
    let reported = read_report(&writer_report(dir)).unwrap_or(0);
    let mut seq = writer.next_seq();
    if seq < reported {
        fail(
            role,
            &format!("restarted at {seq}, but the writer before reported {reported} published"),
        );
    }
    if seq > 0 && writer.last_time() != frame_time(seq - 1) {
        fail(
            role,
            &format!(
                "restarted after a last frame of time {}, but frame {} has {}",
                writer.last_time(),
                seq - 1,
                frame_time(seq - 1)
            ),
        );
    }
    let report = Report::open(&writer_report(dir));
    report.store(seq);
    let pool = Pool::new();
    let max = writer.max_payload();
    let stop = stop_file(dir);
    let mut bursts = 0u64;
    loop {
        let burst = 1 + rng.below(64);
        for _ in 0..burst {
            let len = frame_len(seq, max);
            let (tag, time) = (frame_tag(seq), frame_time(seq));
            let published = if rng.below(4) == 0 {
                let mut payload = vec![0; len];
                pool.fill(seq, &mut payload);
                writer.append(tag, time, &payload)
            } else {
                writer.alloc(len as u32, tag, time).map(|mut slot| {
                    pool.fill(seq, slot.payload_mut());
                    slot.publish()
                })
            };
            match published {
                Ok(published) if published == seq => seq += 1,
                Ok(published) => fail(role, &format!("appended {published}, expected {seq}")),
                Err(error) => fail(role, &format!("append {seq}: {error}")),
            }
        }
        report.store(seq);
        bursts += 1;
        if rng.below(8) == 0 {
            if let Err(error) = writer.maintain(frame_time(seq)) {
                fail(role, &format!("maintain: {error}"));
            }
        }
        if bursts.is_multiple_of(16) {
            if stop.exists() {
                break;
            }
            if SystemTime::now() > deadline {
                fail(role, "deadline passed");
            }
        }
        // Pace the writer so the readers (three processes on two cores, debug builds checking
        // every byte) keep up, and the journal stays at tens of MiB.
        // Half the bursts go on at once, so a kill lands inside an append often enough.
        if rng.below(2) == 0 {
            std::thread::sleep(Duration::from_micros(50 + rng.below(250)));
        }
    }
    report.store(seq);
    println!("writer stopped at {seq}");
}

fn reader_strategy(rng: &mut Rng) -> (WaitStrategy, &'static str) {
    match rng.below(10) {
        0..=4 => (WaitStrategy::Block { spin_first: 64 }, "block"),
        5..=8 => (WaitStrategy::SpinThenYield { spins: 64 }, "yield"),
        _ => (WaitStrategy::BusyPoll, "busy-poll"),
    }
}

fn run_reader(dir: &Path, index: usize, deadline: SystemTime, seed: u64) {
    let role = format!("reader {index}");
    let mut rng = Rng(seed);
    let (strategy, strategy_name) = reader_strategy(&mut rng);
    let options = ReaderOptions::new()
        .dir(dir)
        .position_file(reader_position(dir, index));
    let mut reader = loop {
        match JournalReader::open(NAME, &options, ReadFrom::Oldest) {
            Ok(reader) => break reader,
            // Before the first writer made its first page.
            Err(shm_channel::journal::JournalError::NoPages { .. }) => {
                if SystemTime::now() > deadline {
                    fail(&role, "no pages before the deadline");
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(error) => fail(&role, &format!("open: {error}")),
        }
    };
    let report_path = reader_report(dir, index);
    let reported = read_report(&report_path).unwrap_or(0);
    let mut expected = reader.next_seq();
    if expected < reported {
        fail(
            &role,
            &format!("resumed at {expected}, but it reported {reported} verified before"),
        );
    }
    let report = Report::open(&report_path);
    report.store(expected);
    let pool = Pool::new();
    // The maximum payload of 64 KiB pages (the writer's `max_payload`).
    let max = shm_channel::journal::layout::max_payload(PAGE_SIZE);
    let finish = finish_file(dir);
    let mut finish_at = None;
    let mut unreported = 0u32;
    let mut idle = 0u32;
    loop {
        let checked = match reader.front() {
            Ok(frame) => {
                let seq = frame.seq();
                if seq != expected {
                    fail(&role, &format!("frame {seq}, expected {expected}"));
                }
                let len = frame_len(seq, max);
                if frame.payload().len() != len {
                    fail(
                        &role,
                        &format!(
                            "frame {seq}: {} bytes, expected {len}",
                            frame.payload().len()
                        ),
                    );
                }
                if frame.tag() != frame_tag(seq) || frame.time() != frame_time(seq) {
                    fail(
                        &role,
                        &format!(
                            "frame {seq}: tag {} time {}, expected {} {}",
                            frame.tag(),
                            frame.time(),
                            frame_tag(seq),
                            frame_time(seq)
                        ),
                    );
                }
                if !pool.matches(seq, frame.payload()) {
                    fail(&role, &format!("frame {seq}: wrong bytes ({len} bytes)"));
                }
                true
            }
            Err(ReadError::Empty) => false,
            Err(error) => fail(&role, &format!("at {expected}: {error}")),
        };
        if checked {
            if let Err(error) = reader.pop() {
                fail(&role, &format!("pop {expected}: {error}"));
            }
            expected += 1;
            if reader.next_seq() != expected {
                fail(
                    &role,
                    &format!(
                        "next_seq {} after a pop, expected {expected}",
                        reader.next_seq()
                    ),
                );
            }
            unreported += 1;
            if unreported >= 64 {
                report.store(expected);
                unreported = 0;
            }
            continue;
        }
        // Nothing to read: report, see whether the run is over, wait.
        report.store(expected);
        unreported = 0;
        idle = idle.wrapping_add(1);
        if finish_at.is_none() && (idle.is_multiple_of(16) || strategy_name == "busy-poll") {
            finish_at = read_report(&finish);
        }
        if let Some(end) = finish_at {
            if expected == end {
                println!("reader {index} ({strategy_name}) finished at {expected}");
                return;
            }
            if expected > end {
                fail(&role, &format!("read to {expected}, past the end {end}"));
            }
        }
        if SystemTime::now() > deadline {
            fail(&role, &format!("deadline passed at {expected}"));
        }
        let timeout = match strategy {
            // A short busy poll, then a sleep: one busy-polling process at most, on two cores.
            WaitStrategy::BusyPoll => Duration::from_micros(200),
            _ => Duration::from_millis(20),
        };
        match reader.wait(strategy, Some(timeout)) {
            Ok(_) => {}
            Err(error) => fail(&role, &format!("wait at {expected}: {error}")),
        }
        if strategy == WaitStrategy::BusyPoll {
            std::thread::sleep(Duration::from_micros(300));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The parent.

fn sigkill() -> i32 {
    rustix::process::Signal::KILL.as_raw()
}

/// Kills per test (two tests).
fn cycles() -> u64 {
    if let Ok(n) = std::env::var("JOURNAL_KILL_CYCLES") {
        return n.parse().unwrap();
    }
    150
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Writer,
    Reader(usize),
}

impl Role {
    fn slot(self) -> usize {
        match self {
            Self::Writer => 0,
            Self::Reader(i) => 1 + i,
        }
    }

    fn name(self) -> String {
        match self {
            Self::Writer => "writer".into(),
            Self::Reader(i) => format!("reader-{i}"),
        }
    }
}

struct Run {
    dir: tempfile::TempDir,
    checksums: bool,
    deadline: SystemTime,
    rng: Rng,
    children: Vec<Option<Child>>,
}

impl Run {
    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self, role: Role) {
        assert!(self.children[role.slot()].is_none());
        let deadline_ms = self
            .deadline
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "role_journal_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("JOURNAL_KILL_DIR", self.dir.path())
            .env("JOURNAL_KILL_ROLE", role.name())
            .env(
                "JOURNAL_KILL_CHECKSUMS",
                if self.checksums { "1" } else { "0" },
            )
            .env("JOURNAL_KILL_CHILD_SEED", self.rng.next().to_string())
            .env("JOURNAL_KILL_DEADLINE_MS", deadline_ms.to_string())
            .stdout(if std::env::var_os("JOURNAL_KILL_VERBOSE").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .unwrap();
        self.children[role.slot()] = Some(child);
    }

    fn kill(&mut self, role: Role) {
        let mut child = self.children[role.slot()].take().unwrap();
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(sigkill()),
            "{} ended before it was killed: {status}",
            role.name()
        );
    }

    /// Fails at once if a child exited: before the finish none may.
    fn check_children(&mut self) {
        for (slot, child) in self.children.iter_mut().enumerate() {
            if let Some(child) = child {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!("child {slot} (0: writer) exited on its own: {status}");
                }
            }
        }
    }

    fn writer_progress(&self) -> u64 {
        read_report(&writer_report(self.path())).unwrap_or(0)
    }

    /// Waits until the writer reported more than `mark` published.
    fn wait_for_writer(&mut self, mark: u64) {
        let limit = Instant::now() + CHILD_LIFETIME;
        while self.writer_progress() <= mark {
            self.check_children();
            assert!(Instant::now() < limit, "the writer makes no progress");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits for `role` to end on its own, successfully (at the finish, when the others may
    /// end too).
    fn wait_success(&mut self, role: Role, limit: Instant) {
        let mut child = self.children[role.slot()].take().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "{} failed: {status}", role.name());
                return;
            }
            if Instant::now() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} does not finish", role.name());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // On a failed assertion, leave no child running.
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Reads the whole journal from the oldest frame, checking every frame; returns how many.
fn verify_whole_journal(dir: &Path) -> u64 {
    let pool = Pool::new();
    let max = shm_channel::journal::layout::max_payload(PAGE_SIZE);
    let mut reader =
        JournalReader::open(NAME, &ReaderOptions::new().dir(dir), ReadFrom::Oldest).unwrap();
    let mut expected = 0;
    loop {
        match reader.front() {
            Ok(frame) => {
                let seq = frame.seq();
                assert_eq!(seq, expected);
                assert_eq!(frame.payload().len(), frame_len(seq, max), "frame {seq}");
                assert_eq!(frame.tag(), frame_tag(seq), "frame {seq}");
                assert_eq!(frame.time(), frame_time(seq), "frame {seq}");
                assert!(pool.matches(seq, frame.payload()), "frame {seq}: bytes");
            }
            Err(ReadError::Empty) => return expected,
            Err(error) => panic!("the final read at {expected}: {error}"),
        }
        reader.pop().unwrap();
        expected += 1;
    }
}

fn kill_test(name: &str, checksums: bool) {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let seed = std::env::var("JOURNAL_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                ^ u64::from(std::process::id())
        });
    let cycles = cycles();
    println!("{name}: JOURNAL_KILL_SEED={seed} JOURNAL_KILL_CYCLES={cycles}");
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("journal-kill-")
        .tempdir_in("/dev/shm")
        .unwrap();
    let mut run = Run {
        dir,
        checksums,
        deadline: SystemTime::now() + CHILD_LIFETIME,
        rng: Rng(seed),
        children: (0..=READERS).map(|_| None).collect(),
    };
    run.spawn(Role::Writer);
    // Readers start once the journal exists (a reader before the writer's first page is
    // refused: no folder, or no pages).
    run.wait_for_writer(0);
    for i in 0..READERS {
        run.spawn(Role::Reader(i));
    }
    let (mut writer_kills, mut reader_kills) = (0u64, 0u64);
    for _ in 0..cycles {
        let victim = if run.rng.below(2) == 0 {
            Role::Writer
        } else {
            Role::Reader(run.rng.below(READERS as u64) as usize)
        };
        // Let the writer get somewhere (a restarted one must have recovered and appended).
        let mark = run.writer_progress();
        run.wait_for_writer(mark);
        let delay = if cfg!(debug_assertions) {
            2 + run.rng.below(40)
        } else {
            1 + run.rng.below(25)
        };
        std::thread::sleep(Duration::from_millis(delay));
        run.check_children();
        run.kill(victim);
        match victim {
            Role::Writer => writer_kills += 1,
            Role::Reader(_) => reader_kills += 1,
        }
        // Sometimes a restart at once, sometimes after the others moved on.
        if run.rng.below(3) == 0 {
            std::thread::sleep(Duration::from_millis(run.rng.below(10)));
        }
        run.spawn(victim);
    }

    // Stop the writer; its final report is the journal's end.
    let limit = Instant::now() + CHILD_LIFETIME;
    std::fs::write(stop_file(run.path()), b"").unwrap();
    run.wait_success(Role::Writer, limit);
    let end = run.writer_progress();
    {
        let writer = JournalWriter::open(
            NAME,
            &JournalOptions::new().dir(run.path()).page_size(PAGE_SIZE),
        )
        .unwrap();
        assert_eq!(writer.next_seq(), end, "the stopped writer's report");
    }
    write_report(&finish_file(run.path()), end);
    for i in 0..READERS {
        run.wait_success(Role::Reader(i), limit);
        assert_eq!(read_report(&reader_report(run.path(), i)), Some(end));
    }
    let read = verify_whole_journal(run.path());
    assert_eq!(read, end);
    let pages = std::fs::read_dir(run.path().join(NAME))
        .unwrap()
        .filter(|entry| {
            entry
                .as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".page"))
        })
        .count();
    println!(
        "{name}: {end} frames on {pages} pages, {writer_kills} writer and {reader_kills} reader kills, {:.1?}",
        started.elapsed()
    );
    assert!(pages > 2, "pages must roll over");
}

#[test]
fn writer_and_readers_killed_with_checksums() {
    kill_test("with checksums", true);
}

#[test]
fn writer_and_readers_killed_without_checksums() {
    kill_test("without checksums", false);
}
