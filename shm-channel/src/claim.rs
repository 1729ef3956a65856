//! Claiming an end's ring sides, and taking them over from a dead holder without ever letting
//! two live processes hold one side.

use core::num::NonZeroU32;

use spsc_core::{AttachError, ClaimError};

use crate::channel::ChannelError;
use crate::header::{Direction, End, SegmentHeader};
use crate::pid::{is_process_alive, is_process_alive_since};

/// What the claiming process knows while it attaches `end`, and the ticket that makes it the only
/// taker of a dead holder recorded in the end's liveness record.
///
/// Ring sides are claimed with bare pids, and a pid outlives its process: the next process given
/// it (in a container, the restarted main process, often pid 1 again) would otherwise see a side
/// of the end it held before it restarted as held by itself, and an unrelated process given the
/// pid would make the dead holder look alive. The liveness record keeps the holder's start time
/// too, which tells these apart. One case needs more than that check: a process whose pid is the
/// dead holder's "takes the side over" with a compare-and-swap that leaves the side word as it
/// was, so that compare-and-swap cannot stop a second taker. Every taker that relies on the
/// record therefore first swaps the recorded start time (this process's own start time when the
/// holder's pid is ours, so that the record names the process that will hold the end; 0 =
/// unknown otherwise, until its `mark_attached` writes its own): only one swap from a given
/// record succeeds, and whoever reads the record after it sees a live holder.
pub(crate) struct Claimant<'h> {
    pub(crate) header: &'h SegmentHeader,
    pub(crate) end: End,
    /// The segment, as errors name it.
    pub(crate) segment: String,
    pub(crate) pid: NonZeroU32,
    /// This process's start time (0 if `/proc` cannot tell).
    pub(crate) start: u64,
    /// The dead holder this process won the record for: (its pid, the start time the record held,
    /// the start time we wrote). Put back on drop if the attach fails, so that a failed attempt
    /// leaves the record as it found it.
    pub(crate) ticket: core::cell::Cell<Option<(u32, u64, u64)>>,
}

/// What [`Claimant::verdict`] found about a side's holder.
enum Verdict {
    /// The holder's process is gone, and this process may take the side over.
    Dead,
    /// The holder runs (or cannot be told from a live process, or is this very process).
    Alive,
    /// The record changed while we judged: look again.
    Changed,
}

impl Claimant<'_> {
    /// Judges `holder`, the pid claiming a side of our end, and wins the ticket when the verdict
    /// rests on the liveness record (type docs).
    fn verdict(&self, holder: NonZeroU32) -> Verdict {
        if let Some((won, ..)) = self.ticket.get() {
            // We already changed the record on the evidence that `won` is dead: the same pid on
            // the other side is the same dead process. Another pid is not in the record, so only
            // its existence can tell (and our own pid there, nothing: refuse).
            return if won == holder.get() || (holder != self.pid && !is_process_alive(holder.get()))
            {
                Verdict::Dead
            } else {
                Verdict::Alive
            };
        }
        let (recorded_pid, recorded_start) = self.header.owner(self.end);
        let recorded = recorded_pid == holder.get() && recorded_start != 0;
        let replacement = if holder == self.pid {
            // Our own pid: this very process holds the end already, unless the record shows that
            // a previous process with our pid (long exited: we have its pid) does.
            if !recorded || self.start == 0 || recorded_start == self.start {
                return Verdict::Alive;
            }
            self.start
        } else {
            let alive = if recorded {
                is_process_alive_since(holder.get(), recorded_start)
            } else {
                is_process_alive(holder.get())
            };
            if alive {
                return Verdict::Alive;
            }
            if !recorded {
                // Judged by the pid alone: the side word's compare-and-swap away from `holder`
                // is the only exclusion needed.
                return Verdict::Dead;
            }
            0
        };
        if !self
            .header
            .swap_owner_start(self.end, recorded_start, replacement)
        {
            return Verdict::Changed;
        }
        if self.header.owner_pid(self.end) != holder.get() {
            // The start time matched by coincidence, under another owner who attached meanwhile
            // (two processes started in the same clock tick): put its record back.
            let _ = self
                .header
                .swap_owner_start(self.end, replacement, recorded_start);
            return Verdict::Changed;
        }
        self.ticket
            .set(Some((holder.get(), recorded_start, replacement)));
        Verdict::Dead
    }
}

impl Drop for Claimant<'_> {
    fn drop(&mut self) {
        if let Some((_, found, wrote)) = self.ticket.get() {
            let _ = self.header.swap_owner_start(self.end, wrote, found);
        }
    }
}

/// Claims a ring side of `claimant`'s end, taking it over from a dead holder. A few rounds,
/// because the holder may release or change between our attempts.
pub(crate) fn claim<T>(
    claimant: &Claimant<'_>,
    direction: Direction,
    claim: impl Fn() -> Result<T, ClaimError>,
    take_over: impl Fn(NonZeroU32) -> Result<T, ClaimError>,
) -> Result<T, ChannelError> {
    let corrupt = |reason| ChannelError::Ring {
        segment: claimant.segment.clone(),
        direction,
        error: AttachError::Corrupt { reason },
    };
    let mut holder = 0;
    for _ in 0..4 {
        let taken = match claim() {
            Ok(handle) => return Ok(handle),
            Err(ClaimError::Taken { owner }) => owner,
            Err(ClaimError::Corrupt { reason }) => return Err(corrupt(reason)),
            Err(_) => return Err(corrupt("unknown claim error")),
        };
        holder = taken;
        let Some(dead) = NonZeroU32::new(taken) else {
            continue; // released meanwhile
        };
        match claimant.verdict(dead) {
            Verdict::Dead => {}
            Verdict::Alive => break,
            Verdict::Changed => continue,
        }
        match take_over(dead) {
            Ok(handle) => return Ok(handle),
            Err(ClaimError::Taken { owner }) => holder = owner,
            Err(ClaimError::Corrupt { reason }) => return Err(corrupt(reason)),
            Err(_) => return Err(corrupt("unknown claim error")),
        }
    }
    if holder == claimant.pid.get() {
        return Err(ChannelError::EndOpenInThisProcess {
            segment: claimant.segment.clone(),
            end: claimant.end,
        });
    }
    Err(ChannelError::EndTaken {
        segment: claimant.segment.clone(),
        end: claimant.end,
        direction,
        holder_pid: holder,
    })
}
