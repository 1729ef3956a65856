//! Waiting for messages: busy-polling, spinning then yielding, or blocking on a futex in the
//! segment, and noticing a dead peer while doing so.
//!
//! # The park/wake protocol
//!
//! Each direction has a [`WaitCell`] in the segment header: `seq` (the futex word), `sleepers`
//! (the receiver is about to sleep or asleep), `armed` (the receiver may block; an epoch, odd
//! while armed) and `ack` (the last armed epoch the sender has seen).
//!
//! A receiver that found nothing and wants to sleep:
//! 1. *arms* once (a new odd epoch in `armed`), then for every sleep:
//! 2. reads `seq` (Acquire), stores `sleepers = 1`, then `fence(SeqCst)`;
//! 3. reads `ack` (Acquire) if it has not yet seen its epoch there;
//! 4. re-checks the ring; if a message is there, clears `sleepers` and returns;
//! 5. `futex_wait(seq, observed)`, bounded by the timeout and the liveness interval (and by a
//!    short poll interval while `ack` does not show its epoch), then clears `sleepers`.
//!
//! A sender, after publishing a message (the ring's Release store of the record's commit word):
//! loads `armed` (Relaxed). Even: done. That is the whole cost of a sender whose receiver never
//! blocks: one load of a line nobody writes. Odd (rarely taken, `#[cold]`): `fence(SeqCst)`,
//! store the epoch in `ack` if it is not there (Release), load `sleepers`; only if it is set,
//! take it (`swap(0)`), bump `seq` (Release) and `futex_wake`.
//!
//! # Why no wake-up is lost
//!
//! The race to exclude: the receiver checks the ring (empty), the sender publishes and sees no
//! sleeper, the receiver sleeps for ever. Both sides store one location and then load the other
//! (the receiver `sleepers` then the ring, the sender the ring then `sleepers`): the classic
//! store-buffering pattern, which Acquire/Release cannot order and which x86 reorders too.
//!
//! - *Armed, acknowledged.* Both sides run a `fence(SeqCst)` between their store and their
//!   load. SC fences are totally ordered: if the sender's fence comes first, the receiver's
//!   re-check (after its fence) sees the message; if the receiver's comes first, the sender's
//!   load of `sleepers` sees the receiver's `1` (or a later store, which the receiver only makes
//!   after it woke up and before it re-checks again), takes it and bumps `seq`. The receiver
//!   read `seq` *before* its fence, so it cannot have seen that bump (it comes after the
//!   sender's fence, which follows the receiver's in S); the futex compares the bumped word with
//!   the old value and does not sleep, or sleeps and is woken — the kernel orders the compare
//!   against the wake.
//! - *Why `seq` is read before announcing.* The sender takes the flag (`swap(0)`) so that one
//!   announcement costs at most one wake. A bump that took this announcement is therefore the
//!   only wake this sleep gets, and it must not have been read already: reading `seq` (Acquire)
//!   before storing the flag makes that impossible (the swap read the flag, which follows the
//!   read of `seq`). Reading `seq` after the fence instead loses wake-ups: a bump answering the
//!   announcement can be read, the futex then sleeps on the new value, the flag is gone, and no
//!   later push wakes it. The loom model found exactly that.
//! - *Why the handshake.* The fence costs tens of cycles and drains the store buffer, so a
//!   sender pays it only while `armed` is odd. A sender could read a stale even `armed` just
//!   after the receiver armed; the receiver therefore relies on being woken only once `ack`
//!   holds its epoch. The sender stores `ack` after loading `armed`, so (read-read coherence)
//!   every later push of that sender sees the epoch and fences; every earlier push happens
//!   before the `ack` store, which the receiver reads with Acquire before re-checking, so the
//!   re-check sees those messages. Until then the receiver sleeps only for a short, growing poll
//!   interval (50 µs doubling to 10 ms): a lost wake-up there costs at most one interval, and the
//!   first push after arming acknowledges.
//! - *Epochs.* `armed` only grows (odd = armed, even = disarmed), so an `ack` left from an older
//!   epoch never matches a newer one; a receiver that detaches disarms, so the sender goes back
//!   to its fence-free path; a new receiver disarms what a crashed one left armed.
//!
//! `tests/loom_wait.rs` checks this with loom on the real code: under `--cfg loom` the atomics
//! are loom's and the futex is a loom mutex and condition variable (a sleep that relies on the
//! wake is modelled without its timeout, so a lost wake-up is a deadlock loom reports; a poll
//! sleep is modelled as a yield, i.e. an early timeout).
//!
//! # Peer liveness
//!
//! While waiting, the receiver checks the sender every `liveness_check` (a bounded sleep, so a
//! parked receiver wakes up for it): the process holding the incoming ring's producer side must
//! exist (`kill(pid, 0)`), and, if a heartbeat limit is set and the peer records heartbeats with
//! [`monotonic_nanos`], its last heartbeat must be younger than the limit. Messages already in
//! the ring are delivered first; only an empty ring reports the peer gone.

use core::fmt;
use core::time::Duration;

use spsc_core::spin_hint;

/// The atomics the protocol is made of: `core`'s, or loom's under `--cfg loom` so that
/// `tests/loom_wait.rs` explores the very same code.
mod sync {
    #[cfg(loom)]
    pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
    #[cfg(loom)]
    pub(crate) use loom::thread::yield_now;

    #[cfg(not(loom))]
    pub(crate) use core::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
    #[cfg(not(loom))]
    pub(crate) use std::thread::yield_now;
}

use sync::{fence, yield_now, AtomicU32, AtomicU64, Ordering};

/// How a receiver waits for the next message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WaitStrategy {
    /// Poll the ring continuously: lowest latency, one core fully busy. The default.
    #[default]
    BusyPoll,
    /// Poll `spins` times, then yield the CPU between polls: for a receiver sharing its core.
    SpinThenYield {
        /// Polls before the first yield.
        spins: u32,
    },
    /// Poll `spin_first` times, then sleep on a futex in the segment until the sender wakes it:
    /// no CPU while idle, a few microseconds to wake. Once a receiver has blocked, its sender
    /// pays a memory fence per push (not a syscall) until the receiver is dropped or
    /// [disarmed](crate::Receiver::disarm_blocking).
    Block {
        /// Polls before sleeping.
        spin_first: u32,
    },
}

/// How long to wait and how closely to watch the peer while waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitOptions {
    strategy: WaitStrategy,
    timeout: Option<Duration>,
    liveness_check: Duration,
    heartbeat_limit: Option<Duration>,
}

impl Default for WaitOptions {
    fn default() -> Self {
        Self::new(WaitStrategy::BusyPoll)
    }
}

impl WaitOptions {
    /// Waits with `strategy`, without a timeout, checking the peer every 100 ms.
    pub const fn new(strategy: WaitStrategy) -> Self {
        Self {
            strategy,
            timeout: None,
            liveness_check: Duration::from_millis(100),
            heartbeat_limit: None,
        }
    }

    /// The strategy.
    pub const fn strategy(&self) -> WaitStrategy {
        self.strategy
    }

    /// Gives up after `timeout` (`Duration::ZERO`: poll once). Without one, only a dead peer
    /// ends the wait.
    pub const fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How often a waiting receiver checks whether the peer is still there: the bound on how
    /// long it takes to notice a dead peer. A blocked receiver wakes up this often.
    pub const fn liveness_check(mut self, interval: Duration) -> Self {
        self.liveness_check = interval;
        self
    }

    /// Also treats the peer as gone when its last heartbeat is older than `limit`. Only
    /// meaningful if the peer records heartbeats with [`monotonic_nanos`] (a peer that has never
    /// recorded one is judged by its process id alone).
    pub const fn heartbeat_limit(mut self, limit: Duration) -> Self {
        self.heartbeat_limit = Some(limit);
        self
    }

    /// The heartbeat limit in nanoseconds, if any.
    pub(crate) fn heartbeat_limit_ns(&self) -> Option<u64> {
        self.heartbeat_limit.map(nanos)
    }
}

/// How a [`Parker::wait`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitOutcome {
    /// The ready check said yes.
    Ready,
    /// The timeout passed first.
    TimedOut,
    /// The peer check said the peer is gone.
    PeerGone,
}

/// Nanoseconds of `CLOCK_MONOTONIC`: the clock waits measure time with, and the one heartbeats
/// must use for [`WaitOptions::heartbeat_limit`] (system-wide, so comparable across processes on
/// one host). Costs a vDSO call; never called on the send or receive path.
pub fn monotonic_nanos() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(now.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(now.tv_nsec).unwrap_or(0))
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// The park/wake words of one direction, in the segment header (module docs).
///
/// Layout (ABI version 2): `seq` `u32` @0, `sleepers` `u32` @4, `armed` `u32` @8, `ack` `u32`
/// @12, `wakes` `u64` @16, `parks` `u64` @24. All zero is the initial state: disarmed, nobody
/// asleep.
#[repr(C)]
pub struct WaitCell {
    /// The futex word; the sender bumps it before waking.
    seq: AtomicU32,
    /// 1 while the receiver is about to sleep or asleep; the sender takes it when it wakes.
    sleepers: AtomicU32,
    /// Receiver's epoch: odd while it may block. Written only by the receiver.
    armed: AtomicU32,
    /// The last odd epoch the sender has seen (and so fences for). Written only by the sender.
    ack: AtomicU32,
    /// `futex_wake` calls made by the sender (sender's counter).
    wakes: AtomicU64,
    /// Times the receiver announced itself as a sleeper (receiver's counter).
    parks: AtomicU64,
    #[cfg(loom)]
    futex: LoomFutex,
}

/// The futex, modelled: a wait checks the word under the mutex and sleeps on the condition
/// variable; a wake takes the mutex after the word changed and notifies. As with the kernel's
/// futex, a wake between the check and the sleep cannot be missed.
#[cfg(loom)]
struct LoomFutex {
    lock: loom::sync::Mutex<()>,
    woken: loom::sync::Condvar,
}

#[cfg(not(loom))]
mod locked {
    use core::mem::{offset_of, size_of};

    use static_assertions::const_assert_eq;

    use super::WaitCell;

    const_assert_eq!(size_of::<WaitCell>(), 32);
    const_assert_eq!(offset_of!(WaitCell, seq), 0);
    const_assert_eq!(offset_of!(WaitCell, sleepers), 4);
    const_assert_eq!(offset_of!(WaitCell, armed), 8);
    const_assert_eq!(offset_of!(WaitCell, ack), 12);
    const_assert_eq!(offset_of!(WaitCell, wakes), 16);
    const_assert_eq!(offset_of!(WaitCell, parks), 24);
}

/// A snapshot of one direction's wait words, as a monitor (or a test) reads them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WaitStats {
    /// `futex_wake` calls the sender made: each one answered a receiver that announced itself
    /// as a sleeper, so `wakes <= parks` always.
    pub wakes: u64,
    /// Times the receiver announced itself as about to sleep (it may then have found a message
    /// and not slept).
    pub parks: u64,
    /// Whether the receiver may block, i.e. whether the sender fences after each push.
    pub armed: bool,
    /// Whether the receiver is about to sleep or asleep right now.
    pub sleeping: bool,
}

/// How long a park may sleep: until woken (bounded only for timeouts and liveness checks), or a
/// short poll that does not rely on being woken.
#[derive(Clone, Copy)]
enum Sleep {
    UntilWoken(u64),
    Poll(u64),
}

/// First and largest poll sleep of a receiver whose epoch the sender has not acknowledged yet.
const FIRST_POLL_NS: u64 = 50_000;
const MAX_POLL_NS: u64 = 10_000_000;

/// Polls between two clock readings while spinning (a power of two).
const CLOCK_EVERY: u32 = 256;
const _: () = assert!(CLOCK_EVERY.is_power_of_two());

/// Adds `n` to a counter with a single writer (relaxed load and store).
#[inline(always)]
fn bump(counter: &AtomicU64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Relaxed,
    );
}

impl WaitCell {
    /// A disarmed cell, nobody asleep. Cells in a segment start as its zero bytes instead.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self {
            seq: AtomicU32::new(0),
            sleepers: AtomicU32::new(0),
            armed: AtomicU32::new(0),
            ack: AtomicU32::new(0),
            wakes: AtomicU64::new(0),
            parks: AtomicU64::new(0),
        }
    }

    /// A disarmed cell, nobody asleep (loom build: not `const`).
    #[cfg(loom)]
    pub fn new() -> Self {
        Self {
            seq: AtomicU32::new(0),
            sleepers: AtomicU32::new(0),
            armed: AtomicU32::new(0),
            ack: AtomicU32::new(0),
            wakes: AtomicU64::new(0),
            parks: AtomicU64::new(0),
            futex: LoomFutex {
                lock: loom::sync::Mutex::new(()),
                woken: loom::sync::Condvar::new(),
            },
        }
    }

    /// Sender side: call after publishing a message (after the Release store that makes it
    /// visible). Wakes the receiver if it is asleep or about to sleep; returns whether it did.
    ///
    /// Cost while the receiver has never blocked: one Relaxed load of a line nobody writes. While
    /// it may block: a `fence(SeqCst)` and a load; a `futex_wake` only if it announced itself.
    #[inline(always)]
    pub fn notify(&self) -> bool {
        let armed = self.armed.load(Ordering::Relaxed);
        if armed & 1 == 0 {
            return false;
        }
        self.notify_armed(armed)
    }

    #[cold]
    #[inline(never)]
    fn notify_armed(&self, armed: u32) -> bool {
        // Orders the caller's publishing store before the load of `sleepers` (module docs).
        fence(Ordering::SeqCst);
        if self.ack.load(Ordering::Relaxed) != armed {
            // Release: every message published before is visible to a receiver that reads the
            // epoch here with Acquire; and this store follows our load of `armed`.
            self.ack.store(armed, Ordering::Release);
        }
        if self.sleepers.load(Ordering::Relaxed) == 0 {
            return false;
        }
        // Taking the flag makes one announcement cost at most one wake.
        if self.sleepers.swap(0, Ordering::Relaxed) == 0 {
            return false;
        }
        // Release: a receiver whose read of `seq` sees this bump also sees the message.
        self.seq.fetch_add(1, Ordering::Release);
        bump(&self.wakes);
        self.futex_wake();
        true
    }

    /// A snapshot for monitoring.
    pub fn stats(&self) -> WaitStats {
        WaitStats {
            wakes: self.wakes.load(Ordering::Relaxed),
            parks: self.parks.load(Ordering::Relaxed),
            armed: self.armed.load(Ordering::Relaxed) & 1 == 1,
            sleeping: self.sleepers.load(Ordering::Relaxed) != 0,
        }
    }

    #[cfg(not(loom))]
    fn futex_wake(&self) {
        use rustix::thread::futex;
        // Shared (not PRIVATE): the receiver is another process. Only EFAULT could fail, and the
        // word is a valid reference.
        let _ = futex::wake(&self.seq, futex::Flags::empty(), 1);
    }

    #[cfg(not(loom))]
    fn futex_wait(&self, observed: u32, sleep: Sleep) {
        use rustix::io::Errno;
        use rustix::thread::futex;
        let (Sleep::UntilWoken(ns) | Sleep::Poll(ns)) = sleep;
        let timeout = futex::Timespec {
            tv_sec: i64::try_from(ns / 1_000_000_000).unwrap_or(i64::MAX),
            tv_nsec: (ns % 1_000_000_000) as i64,
        };
        match futex::wait(&self.seq, futex::Flags::empty(), observed, Some(&timeout)) {
            // Woken, the word already changed, the time is up, or a signal: the caller re-checks.
            Ok(()) | Err(Errno::AGAIN | Errno::TIMEDOUT | Errno::INTR) => {}
            // No futex (e.g. forbidden by a sandbox): sleep briefly instead, so the caller's
            // loop still makes progress without burning a core.
            Err(_) => std::thread::sleep(Duration::from_nanos(ns.min(1_000_000))),
        }
    }

    #[cfg(loom)]
    fn futex_wake(&self) {
        let _guard = self.futex.lock.lock().unwrap();
        self.futex.woken.notify_all();
    }

    #[cfg(loom)]
    fn futex_wait(&self, observed: u32, sleep: Sleep) {
        match sleep {
            // A wait that relies on the wake has no timeout in the model: if the wake were lost,
            // loom would report the deadlock.
            Sleep::UntilWoken(bound_ns) => {
                // The bound only serves timeouts and liveness checks, which the model leaves out.
                let _ = bound_ns;
                let guard = self.futex.lock.lock().unwrap();
                if self.seq.load(Ordering::Relaxed) == observed {
                    drop(self.futex.woken.wait(guard).unwrap());
                }
            }
            // A poll that times out at once, whatever its length.
            Sleep::Poll(_ns) => yield_now(),
        }
    }
}

impl Default for WaitCell {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for WaitCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitCell")
            .field("seq", &self.seq.load(Ordering::Relaxed))
            .field("stats", &self.stats())
            .finish()
    }
}

/// The receiving side of one direction's wait protocol: arms the cell when it first blocks and
/// disarms it when dropped. At most one per cell (the channel's [`Receiver`](crate::Receiver)
/// holds it, and a ring has one consumer).
pub struct Parker<'a> {
    cell: &'a WaitCell,
    /// Our armed epoch (odd), once armed.
    token: Option<u32>,
    /// Whether the sender has acknowledged `token`, so that a sleep may rely on being woken.
    trusted: bool,
    /// The next poll sleep while not trusted.
    poll_ns: u64,
}

impl<'a> Parker<'a> {
    /// Takes the receiving side of `cell`, disarming what a previous receiver (perhaps one that
    /// crashed) left armed, so its sender stops fencing.
    pub fn new(cell: &'a WaitCell) -> Self {
        // RMW: reads the latest epoch, so the next one we pick is new.
        let _ = cell
            .armed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |armed| {
                (armed & 1 == 1).then(|| armed.wrapping_add(1))
            });
        cell.sleepers.swap(0, Ordering::Relaxed);
        Self {
            cell,
            token: None,
            trusted: false,
            poll_ns: FIRST_POLL_NS,
        }
    }

    /// The cell.
    pub fn cell(&self) -> &'a WaitCell {
        self.cell
    }

    /// Starts a new epoch in which the receiver may block (idempotent).
    fn arm(&mut self) -> u32 {
        if let Some(token) = self.token {
            return token;
        }
        // Relaxed: the sender's view of `armed` is never trusted directly; the receiver waits
        // for the `ack` handshake (module docs). The RMW reads the latest epoch.
        // The next odd value (0 is even, so a token is never 0).
        let next = |armed: u32| armed.wrapping_add(if armed & 1 == 1 { 2 } else { 1 });
        let previous = self
            .cell
            .armed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |armed| {
                Some(next(armed))
            })
            .unwrap_or_else(|armed| armed);
        let token = next(previous);
        self.token = Some(token);
        self.trusted = false;
        self.poll_ns = FIRST_POLL_NS;
        token
    }

    /// Ends the current epoch: the sender goes back to its fence-free path. The next blocking
    /// wait arms again.
    pub fn disarm(&mut self) {
        if let Some(token) = self.token.take() {
            // Only we write `armed`; an even value is "disarmed" and still newer than `token`.
            let _ = self.cell.armed.compare_exchange(
                token,
                token.wrapping_add(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            self.trusted = false;
        }
    }

    /// Waits until `ready()` returns `true`, following `options`: its strategy, its timeout,
    /// and a call of `peer_gone(now)` every liveness interval. `now()` reads the clock in
    /// nanoseconds (e.g. [`monotonic_nanos`]); it is read once when the wait starts if nothing
    /// is ready, every 256 polls while spinning, and around every yield or sleep.
    ///
    /// `ready` must become `true` after (in the memory-model sense) the sender's
    /// [`WaitCell::notify`] that follows a publication: e.g. an Acquire load of what the sender
    /// published with Release.
    pub fn wait(
        &mut self,
        options: &WaitOptions,
        mut ready: impl FnMut() -> bool,
        mut peer_gone: impl FnMut(u64) -> bool,
        mut now: impl FnMut() -> u64,
    ) -> WaitOutcome {
        if ready() {
            return WaitOutcome::Ready;
        }
        if options.timeout == Some(Duration::ZERO) {
            return WaitOutcome::TimedOut;
        }
        let start = now();
        let deadline = options
            .timeout
            .map(|timeout| start.saturating_add(nanos(timeout)));
        let interval = nanos(options.liveness_check).max(1);
        let mut next_check = start.saturating_add(interval);
        let spins = match options.strategy {
            WaitStrategy::BusyPoll => u32::MAX,
            WaitStrategy::SpinThenYield { spins } => spins,
            WaitStrategy::Block { spin_first } => spin_first,
        };
        let mut polls: u32 = 0;
        loop {
            let idle = polls >= spins && options.strategy != WaitStrategy::BusyPoll;
            if idle {
                if let WaitStrategy::Block { .. } = options.strategy {
                    let t = now();
                    let until = deadline.map_or(next_check, |d| d.min(next_check));
                    self.park(&mut ready, until.saturating_sub(t));
                } else {
                    yield_now();
                }
            } else {
                spin_hint();
                // Wraps only when busy-polling, where it just keeps the clock checks periodic.
                polls = polls.wrapping_add(1);
            }
            if ready() {
                return WaitOutcome::Ready;
            }
            if idle || polls & (CLOCK_EVERY - 1) == 0 {
                let t = now();
                if deadline.is_some_and(|deadline| t >= deadline) {
                    return WaitOutcome::TimedOut;
                }
                if t >= next_check {
                    if peer_gone(t) {
                        return WaitOutcome::PeerGone;
                    }
                    next_check = t.saturating_add(interval);
                }
            }
        }
    }

    /// One sleep (module docs, steps 2–5), at most `bound_ns` long.
    fn park(&mut self, ready: &mut impl FnMut() -> bool, bound_ns: u64) {
        let token = self.arm();
        let cell = self.cell;
        // Read before announcing: any bump that answers this announcement (or a later message)
        // comes after this read, so the futex sees a changed word and does not sleep.
        let observed = cell.seq.load(Ordering::Acquire);
        // Every write of `sleepers` is a read-modify-write (module docs).
        cell.sleepers.swap(1, Ordering::Relaxed);
        bump(&cell.parks);
        // Orders the announcement before the re-check below (module docs).
        fence(Ordering::SeqCst);
        if !self.trusted {
            // Before the re-check too: messages published before the acknowledgement must be
            // seen by it.
            self.trusted = cell.ack.load(Ordering::Acquire) == token;
        }
        if ready() {
            cell.sleepers.swap(0, Ordering::Relaxed);
            return;
        }
        let sleep = if self.trusted {
            Sleep::UntilWoken(bound_ns)
        } else {
            let poll = self.poll_ns.min(bound_ns);
            self.poll_ns = (self.poll_ns * 2).min(MAX_POLL_NS);
            Sleep::Poll(poll)
        };
        cell.futex_wait(observed, sleep);
        cell.sleepers.swap(0, Ordering::Relaxed);
    }
}

impl Drop for Parker<'_> {
    fn drop(&mut self) {
        self.disarm();
    }
}

impl fmt::Debug for Parker<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Parker")
            .field("token", &self.token)
            .field("trusted", &self.trusted)
            .finish_non_exhaustive()
    }
}
