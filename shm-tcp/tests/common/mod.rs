//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod proxy;

use shm_tcp::{Acceptor, AcceptorEvent, AcceptorOptions, ConnId, Connection, ConnectionOptions};

/// The caller's clock, as the library expects it.
pub fn now() -> u64 {
    shm_channel::monotonic_nanos()
}

/// Polls `acceptor` and its connections, and `client`, until the client is connected (or
/// panics after 10 s).
pub fn drive_until_connected<const C: usize>(
    acceptor: &mut Acceptor<C>,
    client: &mut Connection<C>,
) {
    let start = now();
    while !(client.is_connected() && acceptor.connections().any(|(_, c)| c.is_connected())) {
        let t = now();
        assert!(
            t - start < 10_000_000_000,
            "no connection after 10 s: {client:?} {acceptor:?}"
        );
        while let Some(event) = acceptor.poll(t, |_| Ok(())) {
            if let AcceptorEvent::Failed { error, .. } = event {
                panic!("acceptor: {error}");
            }
        }
        for (_, conn) in acceptor.connections() {
            if let Err(error) = conn.poll(t) {
                panic!("server side: {error}");
            }
        }
        if let Err(error) = client.poll(t) {
            panic!("client: {error}");
        }
    }
}

/// An acceptor and a connected client over loopback, their state files in `dir`.
pub fn loopback_pair<const C: usize>(
    dir: &std::path::Path,
    options: ConnectionOptions,
) -> (Acceptor<C>, Connection<C>, ConnId) {
    let options = options.dir(dir);
    let mut acceptor =
        Acceptor::<C>::bind("server", "day1", AcceptorOptions::new(options.clone())).unwrap();
    let mut client =
        Connection::<C>::client(acceptor.local_addr(), "client", "server", &options).unwrap();
    drive_until_connected(&mut acceptor, &mut client);
    let id = acceptor.find("client").unwrap();
    (acceptor, client, id)
}
