//! The spsc-core conformance suite, unchanged, on both directions of a channel whose two ends
//! are opened in this process (each test in a fresh temporary folder).

mod a_to_b_4k {
    use shm_channel::{Channel, ChannelOptions, End};
    spsc_core::conformance_suite!(tx, rx =>
        let dir = tempfile::tempdir().unwrap();
        let options = ChannelOptions::new().dir(dir.path());
        let a = Channel::<4096>::create_or_open("conformance", End::A, &options).unwrap();
        let b = Channel::<4096>::create_or_open("conformance", End::B, &options).unwrap();
        let (mut tx, _a_rx) = a.split();
        let (_b_tx, mut rx) = b.split(););
}

mod b_to_a_256 {
    use shm_channel::{Channel, ChannelOptions, End};
    spsc_core::conformance_suite!(tx, rx =>
        let dir = tempfile::tempdir().unwrap();
        let options = ChannelOptions::new().dir(dir.path());
        let b = Channel::<256>::create_or_open("conformance", End::B, &options).unwrap();
        let a = Channel::<256>::create_or_open("conformance", End::A, &options).unwrap();
        let (mut tx, _b_rx) = b.split();
        let (_a_tx, mut rx) = a.split(););
}

mod a_to_b_1m {
    use shm_channel::{Channel, ChannelOptions, End};
    spsc_core::conformance_suite!(tx, rx =>
        let dir = tempfile::tempdir().unwrap();
        let options = ChannelOptions::new().dir(dir.path());
        let a = Channel::<{ 1 << 20 }>::create_or_open("conformance", End::A, &options).unwrap();
        let b = Channel::<{ 1 << 20 }>::create_or_open("conformance", End::B, &options).unwrap();
        let (mut tx, _a_rx) = a.split();
        let (_b_tx, mut rx) = b.split(););
}
