//! Loom models of the journal's many-reader park/wake protocol
//! (`shm_channel::journal::wait::{WakeCell, Sleeper}`): no lost wake-up, with one or two
//! readers, fresh (not acknowledged yet) or acknowledged, and a reader that disarms and arms
//! again.
//!
//! Run with
//! `CARGO_TARGET_DIR=target/loom RUSTFLAGS="--cfg loom" cargo test -p shm-channel --test loom_journal_wait --release`.
//!
//! What runs is the real code of `src/journal/wait.rs`: under `--cfg loom` its atomics are
//! loom's and the futex is a loom mutex and condition variable (a wait checks `seq` under the
//! mutex, a wake notifies under it). A sleep that trusts the writer's wake (its arm
//! acknowledged) has no timeout in the model, so a lost wake-up leaves the reader asleep for
//! ever, which loom reports as a deadlock; a poll sleep (arm not acknowledged yet) is a yield.
//!
//! The writer stands in for `JournalSlot::publish`: a Release store of a frame's length word (a
//! loom `AtomicU32`, one per frame), then `WakeCell::notify`. Readers wait as
//! `JournalReader::wait` does: `Sleeper::sleep` with a `ready` that Acquire-loads the length
//! word of their next frame, in a loop until it is set.
//!
//! Two *fresh* readers racing the writer (both polling, neither arm acknowledged) are not
//! modelled: their poll loops (a loom yield per poll) exceed loom's branch limit, and with a
//! raised limit the model did not finish in minutes (one frame, preemption bound 2,
//! 20,000 branches: still over the limit after 40 s). The two-reader model starts from
//! acknowledged arms, where every sleep relies on the one wake the writer makes for all.
//!
//! The models have teeth: a writer that skips `notify` once, or calls it before its
//! publication, deadlocks an acknowledged reader (`planted_*` below, run in child processes by
//! `planted_bugs_deadlock`, which expects loom's deadlock report from each).
#![cfg(loom)]

use std::sync::atomic::{AtomicUsize, Ordering as StdOrdering};

use loom::sync::atomic::{AtomicU32, Ordering};
use loom::sync::Arc;
use loom::thread;
use shm_channel::journal::wait::{Sleeper, WakeCell};

/// Preemptions loom may force per execution, unless `LOOM_MAX_PREEMPTIONS` says otherwise. A
/// lost wake-up needs one (between a reader's re-check and its sleep, or between the writer's
/// publication and its load of `sleepers`); three leave room for the arm handshake around it.
const PREEMPTION_BOUND: usize = 3;

/// Frames a model's writer publishes at most.
const MAX_FRAMES: usize = 3;

fn model<F>(f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(PREEMPTION_BOUND);
    }
    let executions = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = executions.clone();
    builder.check(move || {
        counter.fetch_add(1, StdOrdering::Relaxed);
        f();
    });
    println!(
        "{}: {} executions explored (preemption bound {:?})",
        std::thread::current().name().unwrap_or("model"),
        executions.load(StdOrdering::Relaxed),
        builder.preemption_bound
    );
}

/// A page in the model: the wake cell and one length word per frame (0: not published).
struct Page {
    cell: WakeCell,
    frames: [AtomicU32; MAX_FRAMES],
}

impl Page {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            cell: WakeCell::new(),
            frames: [AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0)],
        })
    }

    /// The writer's publication of frame `i` (`JournalSlot::publish`): the Release store of its
    /// length word, then the wake.
    fn publish(&self, i: usize) {
        self.frames[i].store(40, Ordering::Release);
        self.cell.notify();
    }

    fn published(&self, i: usize) -> bool {
        self.frames[i].load(Ordering::Acquire) != 0
    }

    /// A reader's blocking wait for frame `i` (`JournalReader::wait` with `Block`): re-check,
    /// sleep, until it is there. A lost wake-up deadlocks here.
    fn wait_for(&self, sleeper: &mut Sleeper, i: usize) {
        let mut ready = || self.published(i);
        while !ready() {
            sleeper.sleep(&self.cell, &mut ready, u64::MAX);
        }
    }
}

/// Arms `sleeper` and has the writer acknowledge the arm, on the model's main thread before any
/// race: afterwards every sleep of that reader trusts the wake (no poll). Publishes frame 0.
fn arm_and_acknowledge(page: &Page, sleepers: &mut [&mut Sleeper]) {
    for sleeper in sleepers.iter_mut() {
        // Ready at once: arms, announces, returns without sleeping.
        sleeper.sleep(&page.cell, &mut || true, u64::MAX);
        assert!(sleeper.is_armed());
    }
    // The writer's next publication sees the arms and acknowledges the newest.
    page.publish(0);
    for sleeper in sleepers.iter_mut() {
        page.wait_for(sleeper, 0);
    }
    assert_eq!(page.cell.stats().armed as usize, sleepers.len());
}

fn spawn_writer(page: &Arc<Page>, frames: core::ops::Range<usize>) -> thread::JoinHandle<()> {
    let page = page.clone();
    thread::spawn(move || {
        for i in frames {
            page.publish(i);
        }
    })
}

/// One fresh reader (not armed), a writer publishing `frames` frames: arming, the
/// acknowledgement handshake and, from the second frame on, sleeps that trust the wake.
fn fresh_reader(frames: usize) {
    model(move || {
        let page = Page::new();
        let writer = spawn_writer(&page, 0..frames);
        let mut sleeper = Sleeper::new();
        for i in 0..frames {
            page.wait_for(&mut sleeper, i);
        }
        sleeper.disarm(&page.cell);
        writer.join().unwrap();
        assert_eq!(page.cell.stats().armed, 0);
    });
}

#[test]
fn fresh_reader_one_frame() {
    fresh_reader(1);
}

#[test]
fn fresh_reader_two_frames() {
    fresh_reader(2);
}

/// An acknowledged reader: every sleep trusts the wake; `frames` more frames race with it going
/// to sleep.
fn acknowledged_reader(frames: usize) {
    model(move || {
        let page = Page::new();
        let mut sleeper = Sleeper::new();
        arm_and_acknowledge(&page, &mut [&mut sleeper]);
        let writer = spawn_writer(&page, 1..1 + frames);
        for i in 1..1 + frames {
            page.wait_for(&mut sleeper, i);
        }
        writer.join().unwrap();
        sleeper.disarm(&page.cell);
        let stats = page.cell.stats();
        assert!(stats.wakes <= stats.parks, "{stats:?}");
        assert_eq!(stats.armed, 0);
    });
}

#[test]
fn acknowledged_reader_one_frame() {
    acknowledged_reader(1);
}

#[test]
fn acknowledged_reader_two_frames() {
    acknowledged_reader(2);
}

/// Two readers, both acknowledged, and the writer's one wake call for both: a wake taken for
/// one sleeper's announcement must reach the other, which may have announced itself just
/// before or after.
#[test]
fn two_acknowledged_readers() {
    model(|| {
        let page = Page::new();
        let mut first = Sleeper::new();
        let mut second = Sleeper::new();
        arm_and_acknowledge(&page, &mut [&mut first, &mut second]);
        let other = {
            let page = page.clone();
            thread::spawn(move || {
                page.wait_for(&mut second, 1);
                second.disarm(&page.cell);
            })
        };
        let writer = spawn_writer(&page, 1..2);
        page.wait_for(&mut first, 1);
        first.disarm(&page.cell);
        writer.join().unwrap();
        other.join().unwrap();
        assert_eq!(page.cell.stats().armed, 0);
    });
}

/// A reader that disarms between two frames (as `JournalReader::disarm` or a page switch does)
/// and arms again: its new arm is not acknowledged, so it must not trust the old one, while the
/// writer may meanwhile see no armed reader at all and skip the fence.
#[test]
fn reader_disarms_and_arms_again() {
    model(|| {
        let page = Page::new();
        let mut sleeper = Sleeper::new();
        arm_and_acknowledge(&page, &mut [&mut sleeper]);
        let writer = spawn_writer(&page, 1..3);
        page.wait_for(&mut sleeper, 1);
        sleeper.disarm(&page.cell);
        assert!(!sleeper.is_armed());
        page.wait_for(&mut sleeper, 2);
        sleeper.disarm(&page.cell);
        writer.join().unwrap();
        assert_eq!(page.cell.stats().armed, 0);
    });
}

// ---------------------------------------------------------------------------------------------
// Planted bugs: the models must catch a writer that breaks the protocol. Loom reports the reader
// asleep for ever as a deadlock, a panic out of `model`; but unwinding through a loom execution
// then panics again in loom's own destructors, which aborts the process. So each planted model
// runs in a child process (this binary re-executed with the ignored test), which must fail
// with loom's deadlock report.

/// Runs the ignored test `name` in a child process; asserts it failed with a deadlock report.
fn expect_deadlock(name: &str) {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            name,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("deadlock"),
        "{name}: loom did not report the planted lost wake-up ({}):\n{stderr}",
        output.status
    );
    println!("{name}: loom found the deadlock");
}

#[test]
fn planted_bugs_deadlock() {
    expect_deadlock("planted_writer_skips_notify");
    expect_deadlock("planted_writer_notifies_before_publishing");
}

/// A writer that publishes frame 1 without calling `notify`: the acknowledged reader may sleep
/// for ever.
#[test]
#[ignore = "a planted bug, run by planted_bugs_deadlock in a child process"]
fn planted_writer_skips_notify() {
    model(|| {
        let page = Page::new();
        let mut sleeper = Sleeper::new();
        arm_and_acknowledge(&page, &mut [&mut sleeper]);
        let writer = {
            let page = page.clone();
            thread::spawn(move || page.frames[1].store(40, Ordering::Release))
        };
        page.wait_for(&mut sleeper, 1);
        writer.join().unwrap();
    });
}

/// A writer that calls `notify` before its publication: the reader may check, find nothing,
/// announce itself after the wake, and sleep for ever.
#[test]
#[ignore = "a planted bug, run by planted_bugs_deadlock in a child process"]
fn planted_writer_notifies_before_publishing() {
    model(|| {
        let page = Page::new();
        let mut sleeper = Sleeper::new();
        arm_and_acknowledge(&page, &mut [&mut sleeper]);
        let writer = {
            let page = page.clone();
            thread::spawn(move || {
                page.cell.notify();
                page.frames[1].store(40, Ordering::Release);
            })
        };
        page.wait_for(&mut sleeper, 1);
        writer.join().unwrap();
    });
}
