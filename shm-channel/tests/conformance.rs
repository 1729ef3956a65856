//! The spsc-core conformance suite, unchanged, on both directions of a channel whose two ends
//! are opened in this process (each test in a fresh temporary folder), with one lane and with
//! sixteen.
//!
//! The suite sizes its traffic from `max_payload`, which for a laned channel is set by one lane
//! (`C / L / 2 - 8`), so each capacity below is also a lane size the suite runs against: from
//! the smallest that carries its messages to lanes large enough for its megabyte streams.

/// One instance of the suite, in module `$module`: a `Channel<$capacity, $lanes>` sending from
/// end `$from` to end `$to`, with `$from` opened (and so the segment created) first.
macro_rules! channel_suite {
    ($module:ident: $capacity:expr, $lanes:literal lanes, $from:ident to $to:ident) => {
        mod $module {
            use shm_channel::{Channel, ChannelOptions, End};

            type Chan = Channel<{ $capacity }, $lanes>;

            spsc_core::conformance_suite!(tx, rx =>
                let dir = tempfile::tempdir().unwrap();
                let options = ChannelOptions::new().dir(dir.path());
                let from = Chan::create_or_open("conformance", End::$from, &options).unwrap();
                let to = Chan::create_or_open("conformance", End::$to, &options).unwrap();
                // The unused halves stay alive for the test: dropping one releases its claim,
                // which is not what this suite is about.
                let (mut tx, _from_rx) = from.split();
                let (_to_tx, mut rx) = to.split(););
        }
    };
}

channel_suite!(one_lane_a_to_b_4k: 4096, 1 lanes, A to B);
channel_suite!(one_lane_b_to_a_256: 256, 1 lanes, B to A);
channel_suite!(one_lane_a_to_b_1m: 1 << 20, 1 lanes, A to B);

// 2 KiB is the smallest capacity whose sixteen lanes (128 bytes, 56-byte payloads) carry the
// suite: `zero_length_messages` needs a `max_payload` of at least 49, and 1 KiB gives 24.
const _: () = assert!(shm_channel::Channel::<2048, 16>::MAX_PAYLOAD >= 49);
const _: () = assert!(shm_channel::Channel::<1024, 16>::MAX_PAYLOAD < 49);
channel_suite!(sixteen_lanes_a_to_b_2k: 2048, 16 lanes, A to B);
channel_suite!(sixteen_lanes_b_to_a_64k: 64 * 1024, 16 lanes, B to A);
channel_suite!(sixteen_lanes_a_to_b_1m: 1 << 20, 16 lanes, A to B);
