//! The message API's conformance suite, unchanged, on a connected loopback pair, each way.

mod common;

mod client_to_acceptor {
    use super::common::loopback_pair;
    spsc_core::conformance_suite!(tx, rx =>
        let dir = tempfile::tempdir().unwrap();
        let (mut acceptor, mut tx, id) =
            loopback_pair::<4096>(dir.path(), shm_tcp::ConnectionOptions::new());
        let mut rx = acceptor.connection(id).unwrap();
    );
}

mod acceptor_to_client {
    use super::common::loopback_pair;
    spsc_core::conformance_suite!(tx, rx =>
        let dir = tempfile::tempdir().unwrap();
        let (mut acceptor, mut rx, id) =
            loopback_pair::<65536>(dir.path(), shm_tcp::ConnectionOptions::new());
        let mut tx = acceptor.connection(id).unwrap();
    );
}
