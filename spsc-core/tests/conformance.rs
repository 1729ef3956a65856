//! The message API conformance suite, run against the in-process message ring at several
//! capacities (the smallest makes every test wrap around constantly).
// The loom build (`--cfg loom`) runs only `tests/loom.rs`: its rings exist only inside a
// loom model, and have no `init_in_place`, `attach` or slice views.
#![cfg(not(loom))]

mod message_ring_128 {
    use spsc_core::MessageRing;
    spsc_core::conformance_suite!(tx, rx => let mut ring = MessageRing::<128>::new();
                                            let (mut tx, mut rx) = ring.split(););
}

// Minutes each under Miri; the 128-byte instance runs the same bodies there.
#[cfg(not(miri))]
mod message_ring_1k {
    use spsc_core::MessageRing;
    spsc_core::conformance_suite!(tx, rx => let mut ring = MessageRing::<1024>::new();
                                            let (mut tx, mut rx) = ring.split(););
}

#[cfg(not(miri))]
mod message_ring_64k_boxed {
    use spsc_core::MessageRing;
    spsc_core::conformance_suite!(tx, rx => let mut ring = Box::new(MessageRing::<65536>::new());
                                            let (mut tx, mut rx) = ring.split(););
}

// Lanes: the same bodies with messages spread round 4 and 16 lanes (the largest message shrinks
// with the lane, which the suite reads from `max_payload`).
mod message_ring_512_in_2_lanes {
    use spsc_core::MessageRing;
    spsc_core::conformance_suite!(tx, rx => let mut ring = MessageRing::<512, 2>::new();
                                            let (mut tx, mut rx) = ring.split(););
}

#[cfg(not(miri))]
mod message_ring_4k_in_4_lanes {
    use spsc_core::MessageRing;
    spsc_core::conformance_suite!(tx, rx => let mut ring = MessageRing::<4096, 4>::new();
                                            let (mut tx, mut rx) = ring.split(););
}

#[cfg(not(miri))]
mod message_ring_64k_in_16_lanes_boxed {
    use spsc_core::MessageRing;
    spsc_core::conformance_suite!(tx, rx => let mut ring = Box::new(MessageRing::<65536, 16>::new());
                                            let (mut tx, mut rx) = ring.split(););
}
