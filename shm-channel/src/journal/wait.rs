//! Blocking readers of a journal page, and the writer waking them only when one sleeps.
//!
//! The channel's [`WaitCell`](crate::wait::WaitCell) serves one receiver; a journal page has any
//! number of readers, which come, go and crash independently. This cell (in every page header,
//! on a cache line of its own) keeps the channel's protocol and changes what must change:
//!
//! - `armed` counts the readers that may block (low 32 bits) and numbers their arms (high 32
//!   bits): a reader arms with one `fetch_add(1 << 32 | 1)`, so the arm number it gets names a
//!   point in that word's modification order, and disarms with `fetch_sub(1)`.
//! - The writer, after each publication, loads `armed` (Relaxed). A zero count: done — one load
//!   of a line only arming readers write. Otherwise (`#[cold]`): `fence(SeqCst)`, store the arm
//!   number it saw in `ack` if it is newer (Release), load `sleepers`; only if it is set, take it
//!   (`swap(0)`), bump `seq` (Release) and `futex_wake` **every** sleeper on the page.
//! - A reader that wants to sleep reads `seq` (Acquire), stores `sleepers = 1`, `fence(SeqCst)`,
//!   reads `ack` (Acquire) until it shows an arm number at least its own, re-checks for a frame,
//!   and `futex_wait`s on `seq`: until woken once `ack` showed its arm, for a short growing poll
//!   before that.
//!
//! Why no wake-up is lost: the store-buffering argument of the channel's protocol holds for every
//! sleeper, because the writer wakes all of them and any of them may have set the flag (each
//! read `seq` before setting it, so a bump that took the flag changes the word every one of them
//! sleeps on). Why `ack` may be trusted: the writer stored in `ack` an arm number at least ours,
//! so its load of `armed` read our arm or a later value; every later value until we disarm
//! counts us, so (read-read coherence) every later publication of that writer fences; every
//! earlier one happens before the `ack` store we Acquired, so our re-check sees it.
//!
//! The cell lives in the journal's wake file, not in a page: readers never write a page.
//!
//! Crashed readers: a reader killed while armed leaves the count raised, so the writer pays a
//! fence per publication from then on — never a system call, since the flag it may have left is
//! taken by one wake — until the writer's `maintain` sweeps the wake file's table of blocking
//! readers (pid, start time, armed flag; once a second) and takes the dead reader's arm back.
//! A reader arms, then sets its flag; clears its flag, then disarms: a death between the two
//! leaves the count too high (a fence), never too low (a lost wake-up).
//! `tests/loom_journal_wait.rs` checks the protocol with loom on this code.

#[cfg(not(loom))]
use core::time::Duration;

#[cfg(not(loom))]
use core::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
#[cfg(loom)]
use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// The park/wake words of one page (module docs). Layout: `seq` `u32` @0, `sleepers` `u32` @4,
/// `armed` `u64` @8, `ack` `u32` @16, pad @20, `wakes` `u64` @24, `parks` `u64` @32; 64 bytes.
/// All zero is the initial state.
#[repr(C)]
pub struct WakeCell {
    seq: AtomicU32,
    sleepers: AtomicU32,
    armed: AtomicU64,
    ack: AtomicU32,
    _pad: u32,
    wakes: AtomicU64,
    parks: AtomicU64,
    _tail: [u64; 3],
    #[cfg(loom)]
    futex: LoomFutex,
}

#[cfg(not(loom))]
static_assertions::const_assert_eq!(core::mem::size_of::<WakeCell>(), 64);

/// The futex, modelled as in the channel's wait protocol (a mutex and a condition variable).
#[cfg(loom)]
struct LoomFutex {
    lock: loom::sync::Mutex<()>,
    woken: loom::sync::Condvar,
}

#[cfg(loom)]
impl Default for WakeCell {
    fn default() -> Self {
        Self::new()
    }
}

/// A snapshot of a page's wake words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WakeStats {
    /// `futex_wake` calls the writer made (each answered a sleeper's announcement).
    pub wakes: u64,
    /// Times readers announced themselves as about to sleep.
    pub parks: u64,
    /// Readers that may block now (a crashed one stays counted until the page is left).
    pub armed: u32,
}

/// First and largest poll sleep of a reader whose arm the writer has not acknowledged yet.
const FIRST_POLL_NS: u64 = 50_000;
#[cfg(not(loom))]
const MAX_POLL_NS: u64 = 10_000_000;

impl WakeCell {
    /// A cell nobody waits on (loom models build their own; pages start as zero bytes).
    #[cfg(loom)]
    pub fn new() -> Self {
        Self {
            seq: AtomicU32::new(0),
            sleepers: AtomicU32::new(0),
            armed: AtomicU64::new(0),
            ack: AtomicU32::new(0),
            _pad: 0,
            wakes: AtomicU64::new(0),
            parks: AtomicU64::new(0),
            _tail: [0; 3],
            futex: LoomFutex {
                lock: loom::sync::Mutex::new(()),
                woken: loom::sync::Condvar::new(),
            },
        }
    }

    /// Writer side: call after a publication (the Release store of a frame's length word).
    /// Wakes every reader asleep on the page if one announced itself; returns whether it did.
    ///
    /// Cost while no reader may block: one Relaxed load. Otherwise a `fence(SeqCst)` and a load;
    /// a `futex_wake` only if a reader announced itself since the last one.
    #[inline(always)]
    pub fn notify(&self) -> bool {
        let armed = self.armed.load(Ordering::Relaxed);
        if armed as u32 == 0 {
            return false;
        }
        self.notify_armed(armed)
    }

    #[cold]
    #[inline(never)]
    fn notify_armed(&self, armed: u64) -> bool {
        // Orders the caller's publishing store before the load of `sleepers` (module docs).
        fence(Ordering::SeqCst);
        let arm = (armed >> 32) as u32;
        let acked = self.ack.load(Ordering::Relaxed);
        if (arm.wrapping_sub(acked) as i32) > 0 {
            self.ack.store(arm, Ordering::Release);
        }
        if self.sleepers.load(Ordering::Relaxed) == 0
            || self.sleepers.swap(0, Ordering::Relaxed) == 0
        {
            return false;
        }
        self.seq.fetch_add(1, Ordering::Release);
        self.wakes.fetch_add(1, Ordering::Relaxed);
        self.futex_wake();
        true
    }

    /// A snapshot for monitoring and tests.
    pub fn stats(&self) -> WakeStats {
        WakeStats {
            wakes: self.wakes.load(Ordering::Relaxed),
            parks: self.parks.load(Ordering::Relaxed),
            armed: self.armed.load(Ordering::Relaxed) as u32,
        }
    }

    /// Arms a reader: returns its arm number.
    fn arm(&self) -> u32 {
        let previous = self.armed.fetch_add((1 << 32) | 1, Ordering::Relaxed);
        ((previous >> 32) as u32).wrapping_add(1)
    }

    /// Takes back the arm of a reader that died armed (the writer's sweep of the wake file's
    /// reader table): the count only.
    #[cfg(not(loom))]
    pub(crate) fn disarm_dead(&self) {
        self.disarm();
    }

    /// Disarms a reader (its count only; arm numbers only grow).
    fn disarm(&self) {
        // Never below zero, even if a corrupt page says 0 (a page we only read may have been
        // damaged): a wrapped count would only make the writer fence.
        let _ = self
            .armed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |armed| {
                (armed as u32 != 0).then(|| armed - 1)
            });
    }

    #[cfg(not(loom))]
    fn futex_wake(&self) {
        use rustix::thread::futex;
        // Shared (not PRIVATE): readers are other processes. Only EFAULT could fail.
        let _ = futex::wake(&self.seq, futex::Flags::empty(), u32::MAX);
    }

    #[cfg(not(loom))]
    fn futex_wait(&self, observed: u32, ns: u64) {
        use rustix::io::Errno;
        use rustix::thread::futex;
        let timeout = futex::Timespec {
            tv_sec: i64::try_from(ns / 1_000_000_000).unwrap_or(i64::MAX),
            tv_nsec: (ns % 1_000_000_000) as i64,
        };
        match futex::wait(&self.seq, futex::Flags::empty(), observed, Some(&timeout)) {
            Ok(()) | Err(Errno::AGAIN | Errno::TIMEDOUT | Errno::INTR) => {}
            // No futex (a sandbox): sleep briefly, so the caller's loop still makes progress.
            Err(_) => std::thread::sleep(Duration::from_nanos(ns.min(1_000_000))),
        }
    }

    #[cfg(loom)]
    fn futex_wake(&self) {
        let _guard = self.futex.lock.lock().unwrap();
        self.futex.woken.notify_all();
    }

    #[cfg(loom)]
    fn futex_wait(&self, observed: u32, trusted: bool) {
        if trusted {
            let guard = self.futex.lock.lock().unwrap();
            if self.seq.load(Ordering::Relaxed) == observed {
                drop(self.futex.woken.wait(guard).unwrap());
            }
        } else {
            loom::thread::yield_now();
        }
    }
}

/// One reader's side of a page's [`WakeCell`]: arms on its first sleep; the reader disarms it
/// when it leaves the page or is dropped. Holds no reference, so a reader can keep it beside
/// the mapping the cell lives in.
#[derive(Debug)]
pub struct Sleeper {
    arm: Option<u32>,
    trusted: bool,
    poll_ns: u64,
}

impl Default for Sleeper {
    fn default() -> Self {
        Self::new()
    }
}

impl Sleeper {
    /// A sleeper not armed yet (the writer keeps its fence-free path until it sleeps).
    pub const fn new() -> Self {
        Self {
            arm: None,
            trusted: false,
            poll_ns: FIRST_POLL_NS,
        }
    }

    /// Whether it is armed (so must be disarmed on `cell` before it is dropped or moved to
    /// another page).
    pub fn is_armed(&self) -> bool {
        self.arm.is_some()
    }

    /// Arms on `cell` now, if not armed yet: from here on the writer fences after each
    /// publication and reports the arm it saw, so a later sleep may rely on being woken.
    pub fn arm(&mut self, cell: &WakeCell) {
        if self.arm.is_none() {
            self.arm = Some(cell.arm());
        }
    }

    /// Sleeps once on `cell`, at most `bound_ns`, unless `ready()` (which must Acquire what the
    /// writer publishes) is true after the announcement. Returns after a wake, a timeout or a
    /// spurious wake-up: the caller re-checks.
    pub fn sleep(&mut self, cell: &WakeCell, ready: &mut impl FnMut() -> bool, bound_ns: u64) {
        let arm = match self.arm {
            Some(arm) => arm,
            None => {
                let arm = cell.arm();
                self.arm = Some(arm);
                arm
            }
        };
        let observed = cell.seq.load(Ordering::Acquire);
        cell.sleepers.swap(1, Ordering::Relaxed);
        cell.parks.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if !self.trusted {
            let acked = cell.ack.load(Ordering::Acquire);
            self.trusted = (acked.wrapping_sub(arm) as i32) >= 0;
        }
        if ready() {
            return;
        }
        #[cfg(not(loom))]
        {
            let ns = if self.trusted {
                bound_ns
            } else {
                let poll = self.poll_ns.min(bound_ns);
                self.poll_ns = (self.poll_ns * 2).min(MAX_POLL_NS);
                poll
            };
            cell.futex_wait(observed, ns);
        }
        #[cfg(loom)]
        {
            let _ = bound_ns;
            cell.futex_wait(observed, self.trusted);
        }
    }

    /// Leaves `cell` (the one it armed on): the writer stops fencing for this reader.
    pub fn disarm(&mut self, cell: &WakeCell) {
        if self.arm.take().is_some() {
            cell.disarm();
            self.trusted = false;
            self.poll_ns = FIRST_POLL_NS;
        }
    }
}
