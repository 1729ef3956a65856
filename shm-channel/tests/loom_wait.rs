//! Loom model of the park/wake protocol of `src/wait.rs`: no lost wake-up.
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=/tmp/target-waitloom cargo test -p shm-channel --test loom_wait --release`.
//!
//! Under `--cfg loom` the protocol's atomics are loom's, and the futex is a loom mutex and
//! condition variable (a wait checks the futex word under the mutex; a wake notifies under it).
//! A sleep that relies on being woken has no timeout in the model, so a lost wake-up leaves the
//! receiver asleep for ever, which loom reports as a deadlock; a poll sleep (the receiver's
//! epoch not yet acknowledged by the sender) is modelled as an immediate timeout. The clock never
//! advances, so timeouts and liveness checks never fire: every wake-up must come from the
//! protocol.
//!
//! What runs is the real code: `Parker::wait` (spin, arm, announce, fence, read the futex word
//! and the acknowledgement, re-check, sleep) over a real `MessageRing` (whose commit word is
//! only Release-stored: the sender's fence is what orders it before the load of `sleepers`),
//! and `WaitCell::notify` after each push, as `ChannelSlot::push` does. The receiver checks every
//! message's tag and payload, in order.
//!
//! Most models start sleeping without spinning first (`spin_first: 0`): a spin is a loom yield,
//! after which loom stops returning values the thread has already seen, which hides exactly the
//! stale reads a lost wake-up needs. The `spins_first` models cover the spin phase itself.
//!
//! The models have teeth: each of these mutations of `src/wait.rs` makes at least one of them
//! deadlock: dropping the sender's fence, dropping the receiver's fence, trusting the wake
//! before the sender acknowledged the epoch, and reading `seq` after the announcement instead
//! of before it.
#![cfg(loom)]

use core::num::NonZeroU32;
use core::time::Duration;
use std::sync::atomic::{AtomicUsize, Ordering};

use loom::sync::Arc;
use loom::thread;
use shm_channel::wait::{Parker, WaitCell, WaitOptions, WaitOutcome, WaitStrategy};
use spsc_core::{MessageReceiver, MessageRing, MessageSender, SendSlot};

/// Preemptions loom may force per execution, unless `LOOM_MAX_PREEMPTIONS` says otherwise. The
/// lost wake-up needs one preemption (between the receiver's re-check and its sleep, or between
/// the sender's publication and its load of `sleepers`); three leave room for the handshake and
/// the second message around it. (With 10 the whole file still runs in seconds.)
const PREEMPTION_BOUND: usize = 3;

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
        counter.fetch_add(1, Ordering::Relaxed);
        f();
    });
    println!(
        "{}: {} executions explored (preemption bound {:?})",
        std::thread::current().name().unwrap_or("model"),
        executions.load(Ordering::Relaxed),
        builder.preemption_bound
    );
}

fn owner(id: u32) -> NonZeroU32 {
    NonZeroU32::new(id).expect("owner ids are non-zero")
}

/// Publishes message `i` (tag `i`, payload `[i; 8]`) and wakes the receiver, as the channel's
/// `ChannelSlot::push` does.
fn send(tx: &mut impl MessageSender, cell: &WaitCell, i: u8) {
    let mut slot = tx.alloc(8, u16::from(i)).expect("the ring has room");
    slot.payload_mut().fill(i);
    slot.push();
    cell.notify();
}

/// The receiver side: `messages` blocking waits, each followed by checking and popping the
/// message. A lost wake-up deadlocks here.
fn receive_all(
    parker: &mut Parker<'_>,
    rx: &mut impl MessageReceiver,
    spin_first: u32,
    first: u8,
    messages: u8,
) {
    let options = WaitOptions::new(WaitStrategy::Block { spin_first });
    for i in first..first + messages {
        let outcome = parker.wait(
            &options,
            || rx.front().is_ok(),
            |_| panic!("the clock never advances, so the peer is never checked"),
            || 0,
        );
        assert_eq!(outcome, WaitOutcome::Ready);
        let message = rx.front().expect("ready means a message");
        assert_eq!(message.tag(), u16::from(i));
        assert_eq!(message.payload(), &[i; 8]);
        rx.pop().unwrap();
    }
    assert!(rx.front().is_err(), "no message beyond those sent");
}

/// A fresh receiver (not armed yet) and a sender pushing `messages` messages: covers arming, the
/// acknowledgement handshake and, with two messages, a sleep that relies on the wake.
fn fresh(messages: u8, spin_first: u32) {
    model(move || {
        let ring = Arc::new(MessageRing::<64>::new());
        let cell = Arc::new(WaitCell::new());
        let sender = {
            let (ring, cell) = (ring.clone(), cell.clone());
            thread::spawn(move || {
                let mut tx = ring.claim_producer(owner(1)).unwrap();
                for i in 0..messages {
                    send(&mut tx, &cell, i);
                }
            })
        };
        let mut rx = ring.claim_consumer(owner(2)).unwrap();
        let mut parker = Parker::new(&cell);
        receive_all(&mut parker, &mut rx, spin_first, 0, messages);
        sender.join().unwrap();
    });
}

/// The steady state: the receiver armed earlier and the sender acknowledged it, so every sleep
/// relies on the wake; then `messages` more messages race with the receiver going to sleep.
fn acknowledged(messages: u8, spin_first: u32) {
    model(move || {
        let ring = Arc::new(MessageRing::<64>::new());
        let cell = Arc::new(WaitCell::new());
        let mut rx = ring.claim_consumer(owner(2)).unwrap();
        let mut parker = Parker::new(&cell);
        // Arm: one blocking wait that times out (a clock that advances on every reading).
        let mut clock = 0;
        let arm = WaitOptions::new(WaitStrategy::Block { spin_first: 0 })
            .timeout(Duration::from_nanos(1));
        let outcome = parker.wait(
            &arm,
            || false,
            |_| false,
            || {
                clock += 1;
                clock
            },
        );
        assert_eq!(outcome, WaitOutcome::TimedOut);
        assert!(cell.stats().armed);
        // The sender acknowledges on its next push; the receiver takes that message.
        {
            let mut tx = ring.claim_producer(owner(1)).unwrap();
            send(&mut tx, &cell, 0);
        }
        receive_all(&mut parker, &mut rx, spin_first, 0, 1);

        let sender = {
            let (ring, cell) = (ring.clone(), cell.clone());
            thread::spawn(move || {
                let mut tx = ring.claim_producer(owner(1)).unwrap();
                for i in 1..=messages {
                    send(&mut tx, &cell, i);
                }
            })
        };
        receive_all(&mut parker, &mut rx, spin_first, 1, messages);
        sender.join().unwrap();
        let stats = cell.stats();
        assert!(stats.wakes <= stats.parks, "{stats:?}");
    });
}

#[test]
fn fresh_receiver_one_message() {
    fresh(1, 0);
}

#[test]
fn fresh_receiver_two_messages() {
    fresh(2, 0);
}

#[test]
fn fresh_receiver_spins_first() {
    fresh(2, 1);
}

#[test]
fn acknowledged_receiver_one_message() {
    acknowledged(1, 0);
}

#[test]
fn acknowledged_receiver_two_messages() {
    acknowledged(2, 0);
}

#[test]
fn acknowledged_receiver_spins_first() {
    acknowledged(2, 1);
}
