//! Segment files, names, permissions, removal, the create-or-open race (threads and processes),
//! end claims and take-over, counters, the session area and typed messages.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};
use shm_channel::{
    Channel, ChannelError, ChannelOptions, Direction, End, NameError, PodReceiver, PodRecvError,
    PodSender, SegmentError,
};
use spsc_core::{MessageReceiver, MessageSender, RecvError, SendError};

type Chan = Channel<4096>;

/// Taken for writing around every process spawn of this binary, and for reading by each test
/// that closes a segment and then expects to find it unused (removed by its last closer, by
/// `remove_on_close` or by `reclaim_stale`). A child shares every open file of this process, and
/// so its `flock`s, from its `fork` until its `exec` has closed them (they are all close-on-exec);
/// a segment closed meanwhile is still in use (correctly: for that instant it is), and its closer
/// sees `Reclaim::InUse`. The library documents the effect on `close_and_remove_if_last`. A
/// reader never spawns while it holds the guard (the lock is not reentrant).
static SPAWNING: RwLock<()> = RwLock::new(());

/// The guard of a test that closes a segment and expects it unused: no child of this process
/// holds any of its descriptors while it is held.
fn no_spawn_meanwhile() -> RwLockReadGuard<'static, ()> {
    SPAWNING.read().unwrap_or_else(PoisonError::into_inner)
}

/// The guard of a process spawn. `spawn` returning is not enough to release it: the parent of a
/// `vfork`-style spawn resumes as soon as the child's `exec` has replaced its memory, before the
/// `exec` closes the inherited descriptors (and a file's last close, which drops its `flock`, is
/// finished only on the child's way back to user space). Hence [`spawn_test_child`] and
/// `status` (which returns once the child is gone).
fn spawning() -> RwLockWriteGuard<'static, ()> {
    SPAWNING.write().unwrap_or_else(PoisonError::into_inner)
}

/// Spawns `command`, a run of this test binary, and returns once the child runs the test
/// harness: when its first output (the harness's "running 1 test") arrives, its `exec` has
/// closed every descriptor it inherited. The rest of its output is discarded.
fn spawn_test_child(command: &mut Command) -> std::process::Child {
    let _no_close_meanwhile = spawning();
    let mut process = command.stdout(Stdio::piped()).spawn().unwrap();
    let mut stdout = process.stdout.take().unwrap();
    // 0 bytes: the child ended before printing anything, its descriptors closed all the same.
    let _ = std::io::Read::read(&mut stdout, &mut [0u8; 1]).unwrap();
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    process
}

fn options(dir: &tempfile::TempDir) -> ChannelOptions {
    ChannelOptions::new().dir(dir.path())
}

/// Waits for a message (the peer may be another process), then returns its tag and payload.
fn recv<R: MessageReceiver>(rx: &mut R) -> (u16, Vec<u8>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match rx.recv_with(|m| (m.tag(), m.payload().to_vec())) {
            Ok(message) => return message,
            Err(RecvError::Empty) if Instant::now() < deadline => std::thread::yield_now(),
            Err(error) => panic!("no message: {error}"),
        }
    }
}

#[test]
fn segment_is_owner_only_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let _a = Chan::create_or_open("perm", End::A, &options(&dir)).unwrap();
    let mode = std::fs::metadata(dir.path().join("perm"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(dir.path().join("perm")).unwrap().len(),
        Chan::SEGMENT_SIZE as u64
    );
}

#[test]
fn wider_mode_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let _a = Chan::create_or_open("perm", End::A, &options(&dir).mode(0o640)).unwrap();
    let mode = std::fs::metadata(dir.path().join("perm"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);
}

#[test]
fn unlink_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Chan::create_or_open("gone", End::A, &options(&dir)).unwrap();
    let mut b = Chan::create_or_open("gone", End::B, &options(&dir)).unwrap();
    a.unlink().unwrap();
    assert!(!dir.path().join("gone").exists());
    // Still usable until dropped.
    a.sender().send(1, b"after unlink").unwrap();
    assert_eq!(recv(b.receiver()), (1, b"after unlink".to_vec()));
    drop((a, b));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    assert_eq!(
        Chan::unlink("gone", &options(&dir)),
        Err(ChannelError::Segment(SegmentError::NotFound {
            name: "gone".into(),
            folder: dir.path().to_owned(),
        }))
    );
    // A new create_or_open makes a fresh segment.
    let a = Chan::create_or_open("gone", End::A, &options(&dir)).unwrap();
    assert!(a.created());
    Chan::unlink("gone", &options(&dir)).unwrap();
    assert!(!dir.path().join("gone").exists());
}

#[test]
fn bad_names_are_errors_and_touch_nothing() {
    let parent = tempfile::tempdir().unwrap();
    let inner = parent.path().join("segments");
    std::fs::create_dir(&inner).unwrap();
    let options = ChannelOptions::new().dir(&inner);
    let cases = [
        ("../escape", NameError::InvalidChar { ch: '/', index: 2 }),
        ("..", NameError::LeadingDot),
        (".", NameError::LeadingDot),
        ("", NameError::Empty),
        ("a/b", NameError::InvalidChar { ch: '/', index: 1 }),
    ];
    for (name, expected) in cases {
        assert_eq!(
            Chan::create_or_open(name, End::A, &options).unwrap_err(),
            ChannelError::Segment(SegmentError::Name(expected)),
            "{name:?}"
        );
        assert_eq!(
            Chan::unlink(name, &options).unwrap_err(),
            ChannelError::Segment(SegmentError::Name(expected))
        );
    }
    let long = "x".repeat(201);
    assert!(matches!(
        Chan::create_or_open(&long, End::A, &options),
        Err(ChannelError::Segment(SegmentError::Name(
            NameError::TooLong { len: 201, max: 200 }
        )))
    ));
    assert_eq!(std::fs::read_dir(&inner).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 1);
}

#[test]
fn create_and_open_only() {
    let dir = tempfile::tempdir().unwrap();
    let name = String::from("only");
    let missing = Chan::open("only", End::B, &options(&dir)).unwrap_err();
    assert_eq!(
        missing,
        ChannelError::Segment(SegmentError::NotFound {
            name: name.clone(),
            folder: dir.path().to_owned(),
        })
    );
    // The message names the folder it looked in.
    assert!(
        missing
            .to_string()
            .contains(&dir.path().display().to_string()),
        "{missing}"
    );
    let a = Chan::create("only", End::A, &options(&dir)).unwrap();
    assert!(a.created());
    assert_eq!(
        Chan::create("only", End::B, &options(&dir)).unwrap_err(),
        ChannelError::Segment(SegmentError::AlreadyExists {
            name,
            folder: dir.path().to_owned(),
        })
    );
    let b = Chan::open("only", End::B, &options(&dir)).unwrap();
    assert!(!b.created());
}

#[test]
fn symlinks_are_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target");
    std::fs::write(&target, vec![0u8; Chan::SEGMENT_SIZE]).unwrap();
    std::os::unix::fs::symlink(&target, dir.path().join("link")).unwrap();
    assert_eq!(
        Chan::open("link", End::A, &options(&dir)).unwrap_err(),
        ChannelError::Segment(SegmentError::NotAFile {
            name: "link".into(),
            folder: dir.path().to_owned(),
            kind: "a symbolic link",
        })
    );
    assert!(matches!(
        Chan::create_or_open("link", End::A, &options(&dir)),
        Err(ChannelError::Segment(SegmentError::NotAFile { .. }))
    ));
}

#[test]
fn missing_folder_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let options = ChannelOptions::new().dir(dir.path().join("nope"));
    let error = Chan::create_or_open("x", End::A, &options).unwrap_err();
    assert!(
        matches!(error, ChannelError::Segment(SegmentError::Io { .. })),
        "{error:?}"
    );
    assert!(error.to_string().contains("nope"), "{error}");
}

#[test]
fn create_or_open_race_between_threads() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..50 {
        let name = format!("race-{round}");
        let barrier = Arc::new(Barrier::new(2));
        let spawn = |end: End| {
            let (barrier, options, name) = (Arc::clone(&barrier), options(&dir), name.clone());
            std::thread::spawn(move || {
                barrier.wait();
                Chan::create_or_open(&name, end, &options).unwrap()
            })
        };
        let (a, b) = (spawn(End::A), spawn(End::B));
        let (mut a, mut b) = (a.join().unwrap(), b.join().unwrap());
        assert!(a.created() != b.created(), "exactly one side creates");
        // Same segment: a message crosses in both directions.
        a.sender().send(1, name.as_bytes()).unwrap();
        b.sender().send(2, b"back").unwrap();
        assert_eq!(recv(b.receiver()), (1, name.as_bytes().to_vec()));
        assert_eq!(recv(a.receiver()), (2, b"back".to_vec()));
        assert_eq!(a.header().attach_count(End::B), 1);
    }
}

/// Runs this test binary's ignored test `role` as a child process, with `env` set.
fn child(role: &str, env: &[(&str, String)]) -> std::process::Child {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.args([
        "--exact",
        role,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    for (key, value) in env {
        command.env(key, value);
    }
    spawn_test_child(&mut command)
}

fn child_env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("{key} not set: run only as a child role"))
}

/// Child role: opens end B of segment `SHM_NAME` in `SHM_DIR`, answers one ping, exits.
#[test]
#[ignore = "child role of create_or_open_race_between_processes"]
fn role_race_b() {
    let options = ChannelOptions::new().dir(child_env("SHM_DIR"));
    let mut b = Chan::create_or_open(&child_env("SHM_NAME"), End::B, &options).unwrap();
    let (tag, payload) = recv(b.receiver());
    assert_eq!(tag, 1);
    let mut reply = payload;
    reply.extend_from_slice(&std::process::id().to_le_bytes());
    b.sender().send(2, &reply).unwrap();
}

#[test]
fn create_or_open_race_between_processes() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..5 {
        let name = format!("xrace-{round}");
        let mut process = child(
            "role_race_b",
            &[
                ("SHM_DIR", dir.path().display().to_string()),
                ("SHM_NAME", name.clone()),
            ],
        );
        let mut a = Chan::create_or_open(&name, End::A, &options(&dir)).unwrap();
        a.sender().send(1, b"ping").unwrap();
        let (tag, reply) = recv(a.receiver());
        assert_eq!(tag, 2);
        assert_eq!(&reply[..4], b"ping");
        assert_eq!(reply[4..], process.id().to_le_bytes());
        assert!(process.wait().unwrap().success());
        // The child detached cleanly.
        assert_eq!(a.peer_pid(), 0);
        assert!(!a.peer_alive());
    }
}

/// Child role: opens end B, sends one message, and exits without releasing its claims.
#[test]
#[ignore = "child role of an end_held_by_a_dead_process_is_taken_over"]
fn role_die_holding_b() {
    let options = ChannelOptions::new().dir(child_env("SHM_DIR"));
    let mut b = Chan::open(&child_env("SHM_NAME"), End::B, &options).unwrap();
    b.sender().send(9, b"from the departed").unwrap();
    // Not popped by us: stays for whoever takes end B over.
    std::mem::forget(b);
    std::process::exit(0);
}

#[test]
fn end_held_by_a_dead_process_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Chan::create("dead", End::A, &options(&dir)).unwrap();
    a.sender().send(1, b"for b").unwrap();
    let mut process = child(
        "role_die_holding_b",
        &[
            ("SHM_DIR", dir.path().display().to_string()),
            ("SHM_NAME", "dead".into()),
        ],
    );
    let dead = process.id();
    assert!(process.wait().unwrap().success());
    assert_eq!(a.peer_pid(), dead, "the child never detached");
    assert!(!a.peer_alive());
    assert_eq!(recv(a.receiver()), (9, b"from the departed".to_vec()));
    // The dead child's claims are taken over; what it did not pop is still there.
    let mut b = Chan::open("dead", End::B, &options(&dir)).unwrap();
    assert_eq!(recv(b.receiver()), (1, b"for b".to_vec()));
    assert_eq!(a.peer_pid(), std::process::id());
    assert_eq!(a.header().attach_count(End::B), 2);
}

#[test]
fn a_live_holder_keeps_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let a = Chan::create_or_open("held", End::A, &options(&dir)).unwrap();
    let twice = Chan::create_or_open("held", End::A, &options(&dir)).unwrap_err();
    assert_eq!(
        twice,
        ChannelError::EndOpenInThisProcess {
            segment: format!("segment \"held\" in {}", dir.path().display()),
            end: End::A,
        }
    );
    assert!(
        twice.to_string().contains("already open in this process"),
        "{twice}"
    );
    // The failed attempt did not disturb the holder's liveness record.
    assert_eq!(a.header().owner_pid(End::A), std::process::id());
    drop(a);
    let a = Chan::create_or_open("held", End::A, &options(&dir)).unwrap();
    assert_eq!(a.header().attach_count(End::A), 2);
    // A split endpoint keeps the end until both halves are gone.
    let (tx, rx) = a.split();
    drop(tx);
    assert!(matches!(
        Chan::create_or_open("held", End::A, &options(&dir)),
        Err(ChannelError::EndOpenInThisProcess { end: End::A, .. })
    ));
    drop(rx);
    assert!(Chan::create_or_open("held", End::A, &options(&dir)).is_ok());
}

#[test]
fn counters_count() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Chan::create_or_open("count", End::A, &options(&dir)).unwrap();
    let mut b = Chan::create_or_open("count", End::B, &options(&dir)).unwrap();
    for i in 0..10u8 {
        a.sender().send(0, &vec![i; usize::from(i)]).unwrap();
    }
    for _ in 0..4 {
        b.receiver().pop().unwrap();
    }
    let stats = b.stats(Direction::AToB);
    assert_eq!((stats.sent_messages, stats.sent_bytes), (10, 45));
    assert_eq!((stats.received_messages, stats.received_bytes), (4, 6));
    assert_eq!(stats.depth(), 6);
    assert_eq!(stats.full_rejections, 0);
    // Fill the ring: rejections are counted, and the next alloc samples the high-water mark.
    while a.sender().send(0, &[0; 512]) != Err(SendError::Full) {}
    let _ = a.sender().alloc(8, 0);
    let stats = a.stats(Direction::AToB);
    assert_eq!(stats.full_rejections, 1);
    assert!(stats.high_water_bytes > 4096 / 2, "{stats:?}");
    assert_eq!(a.stats(Direction::BToA), Default::default());
}

#[test]
fn session_area_and_heartbeat_are_shared() {
    let dir = tempfile::tempdir().unwrap();
    let options = options(&dir).end_names("gateway", "risk").unwrap();
    let a = Chan::create_or_open("session", End::A, &options).unwrap();
    let b = Chan::open("session", End::B, &ChannelOptions::new().dir(dir.path())).unwrap();
    assert_eq!(b.header().end_name(End::A).unwrap().as_str(), "gateway");
    assert_eq!(b.header().end_name(End::B).unwrap().as_str(), "risk");
    a.header().set_session_generation(7);
    assert_eq!(b.header().session_generation(), 7);
    a.heartbeat(123);
    assert_eq!(b.header().heartbeat(End::A), 123);
    b.header()
        .user_word(61)
        .unwrap()
        .store(5, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        a.header()
            .user_word(61)
            .unwrap()
            .load(std::sync::atomic::Ordering::Relaxed),
        5
    );
    assert!(a.header().user_word(62).is_none());
    assert_eq!(a.header().creator_pid(), std::process::id());
    assert!(a.header().is_ready());
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
struct Order {
    id: u64,
    price: i64,
    qty: u32,
    side: u8,
    _pad: [u8; 3],
}

#[test]
fn typed_messages_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Chan::create_or_open("typed", End::A, &options(&dir)).unwrap();
    let mut b = Chan::create_or_open("typed", End::B, &options(&dir)).unwrap();
    let order = Order {
        id: 1,
        price: -5,
        qty: 10,
        side: 1,
        _pad: [0; 3],
    };
    a.sender().send_pod(4, &order).unwrap();
    let mut slot = a.sender().alloc_pod::<Order>(5).unwrap();
    *slot.value_mut() = Order { id: 2, ..order };
    slot.push();
    {
        let payload_ptr = b.receiver().front().unwrap().payload().as_ptr();
        let (tag, got) = b.receiver().front_pod::<Order>().unwrap();
        assert_eq!((tag, *got), (4, order));
        assert_eq!(got as *const Order as *const u8, payload_ptr, "no copy");
    }
    b.receiver().pop().unwrap();
    assert_eq!(
        b.receiver().front_pod::<u32>(),
        Err(PodRecvError::WrongSize {
            tag: 5,
            expected: 4,
            actual: std::mem::size_of::<Order>()
        })
    );
    assert_eq!(
        b.receiver().recv_pod::<Order>().unwrap(),
        (5, Order { id: 2, ..order })
    );
    assert_eq!(
        b.receiver().recv_pod::<Order>(),
        Err(PodRecvError::Recv(RecvError::Empty))
    );
    // Dropping a typed slot publishes nothing.
    let unpushed = a.sender().alloc_pod::<Order>(6);
    assert!(unpushed.is_ok());
    #[allow(clippy::drop_non_drop)] // the point: an unpushed slot simply goes away
    drop(unpushed);
    assert!(b.receiver().is_empty());
}

#[test]
fn ends_closing_at_once_remove_the_file_exactly_once() {
    use shm_channel::Reclaim;
    let dir = tempfile::tempdir().unwrap();
    let _no_spawn_meanwhile = no_spawn_meanwhile();
    for round in 0..50 {
        let name = format!("close-{round}");
        let a = Chan::create_or_open(&name, End::A, &options(&dir)).unwrap();
        let b = Chan::create_or_open(&name, End::B, &options(&dir)).unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let closers: Vec<_> = [a, b]
            .into_iter()
            .map(|endpoint| {
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    endpoint.close_and_remove_if_last().unwrap()
                })
            })
            .collect();
        let mut outcomes: Vec<Reclaim> = closers.into_iter().map(|c| c.join().unwrap()).collect();
        outcomes.sort_by_key(|outcome| *outcome != Reclaim::Removed);
        assert_eq!(outcomes[0], Reclaim::Removed, "round {round}: {outcomes:?}");
        assert_ne!(outcomes[1], Reclaim::Removed, "removed once: {outcomes:?}");
        assert!(!dir.path().join(&name).exists(), "round {round}: file left");
    }
}

#[test]
fn closing_an_end_the_peer_still_holds_leaves_the_file_and_its_messages() {
    use shm_channel::Reclaim;
    let _no_spawn_meanwhile = no_spawn_meanwhile();
    let dir = tempfile::tempdir().unwrap();
    let mut a = Chan::create_or_open("close-held", End::A, &options(&dir)).unwrap();
    let mut b = Chan::create_or_open("close-held", End::B, &options(&dir)).unwrap();
    b.sender().send(4, b"for A").unwrap();
    a.sender().send(5, b"for B").unwrap();
    assert_eq!(a.close_and_remove_if_last().unwrap(), Reclaim::InUse);
    assert!(dir.path().join("close-held").exists());
    assert_eq!(recv(b.receiver()), (5, b"for B".to_vec()));
    // A comes back to its end and finds what B sent while it was away.
    let mut a = Chan::open("close-held", End::A, &options(&dir)).unwrap();
    assert_eq!(recv(a.receiver()), (4, b"for A".to_vec()));
    drop(a);
    assert_eq!(b.close_and_remove_if_last().unwrap(), Reclaim::Removed);
    assert!(!dir.path().join("close-held").exists());
}

#[test]
fn a_segment_closed_by_its_last_user_is_removed() {
    use shm_channel::{Reclaim, Segment, SegmentOptions};
    let _no_spawn_meanwhile = no_spawn_meanwhile();
    let dir = tempfile::tempdir().unwrap();
    let seg_options = SegmentOptions::default().dir(dir.path());
    let first = Segment::create("seg-close", 8192, &seg_options).unwrap();
    let second = Segment::open("seg-close", &seg_options).unwrap();
    assert_eq!(first.close_and_remove_if_unused().unwrap(), Reclaim::InUse);
    assert!(dir.path().join("seg-close").exists());
    assert_eq!(
        second.close_and_remove_if_unused().unwrap(),
        Reclaim::Removed
    );
    assert!(!dir.path().join("seg-close").exists());
}

#[test]
fn a_stale_segment_is_reclaimed_only_when_no_live_process_holds_it() {
    use shm_channel::{Reclaim, Segment, SegmentOptions};
    let dir = tempfile::tempdir().unwrap();
    let seg_options = SegmentOptions::default().dir(dir.path());
    assert_eq!(
        Segment::reclaim_stale("stale", &seg_options).unwrap(),
        Reclaim::NotFound
    );
    let mut a = Chan::create("stale", End::A, &options(&dir)).unwrap();
    a.sender().send(1, b"never read").unwrap();
    // A child process opens end B and dies without cleaning up.
    let mut process = child(
        "role_die_holding_b",
        &[
            ("SHM_DIR", dir.path().display().to_string()),
            ("SHM_NAME", "stale".into()),
        ],
    );
    assert!(process.wait().unwrap().success());
    // From here on the segment is expected unused once `a` is dropped.
    let _no_spawn_meanwhile = no_spawn_meanwhile();
    // We still hold end A: the segment is in use, whatever the dead child left.
    assert_eq!(
        Segment::reclaim_stale("stale", &seg_options).unwrap(),
        Reclaim::InUse
    );
    assert!(dir.path().join("stale").exists());
    // Once nobody holds it, it is stale: reclaiming removes it, queued messages and all.
    drop(a);
    assert_eq!(
        Segment::reclaim_stale("stale", &seg_options).unwrap(),
        Reclaim::Removed
    );
    assert!(!dir.path().join("stale").exists());
    // A new channel under the same name starts afresh.
    let mut a = Chan::create("stale", End::A, &options(&dir)).unwrap();
    let mut b = Chan::open("stale", End::B, &options(&dir)).unwrap();
    assert!(b.receiver().is_empty());
    a.sender().send(2, b"fresh").unwrap();
    assert_eq!(recv(b.receiver()), (2, b"fresh".to_vec()));
}

/// Byte offset, in the segment file, of `end`'s recorded owner start time: the liveness blocks
/// start at 128, one 128-byte block per end, the start time at +16 (the layout `header.rs` locks
/// with static assertions for ABI version 2). The API lets only an end's owner write its record,
/// so a test that plays a previous process with our pid has to write the file; each test first
/// checks the offset against `SegmentHeader::owner_start`.
fn owner_start_offset(end: End) -> u64 {
    const LIVENESS: u64 = 128;
    const BLOCK: u64 = 128;
    const OWNER_START: u64 = 16;
    LIVENESS + BLOCK * end.index() as u64 + OWNER_START
}

fn read_owner_start(path: &std::path::Path, end: End) -> u64 {
    use std::os::unix::fs::FileExt;
    let mut buf = [0; 8];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, owner_start_offset(end))
        .unwrap();
    u64::from_le_bytes(buf)
}

fn write_owner_start(path: &std::path::Path, end: End, start: u64) {
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(&start.to_le_bytes(), owner_start_offset(end))
        .unwrap();
}

/// This process's end A, forgotten while holding its claims, as a process that died with our
/// pid would have left it; its record then names our pid with our start time (checked).
fn forget_end_a(name: &str, dir: &tempfile::TempDir) -> u64 {
    let a = Chan::open(name, End::A, &options(dir)).unwrap();
    let start = a.header().owner_start(End::A);
    assert_ne!(start, 0, "/proc tells our start time where these tests run");
    assert_eq!(read_owner_start(&dir.path().join(name), End::A), start);
    assert_eq!(a.header().owner_pid(End::A), std::process::id());
    std::mem::forget(a);
    start
}

#[test]
fn the_same_process_cannot_hold_an_end_twice() {
    let dir = tempfile::tempdir().unwrap();
    let _b = Chan::create("twice", End::B, &options(&dir)).unwrap();
    let a = Chan::open("twice", End::A, &options(&dir)).unwrap();
    let taken = ChannelError::EndOpenInThisProcess {
        segment: format!("segment \"twice\" in {}", dir.path().display()),
        end: End::A,
    };
    assert_eq!(
        Chan::open("twice", End::A, &options(&dir)).unwrap_err(),
        taken
    );
    // The start time recorded is ours, so even a handle we lost track of (forgotten, never
    // released) is this process's, not a previous one's: still refused.
    drop(a);
    let start = forget_end_a("twice", &dir);
    assert_eq!(
        Chan::open("twice", End::A, &options(&dir)).unwrap_err(),
        taken
    );
    assert_eq!(read_owner_start(&dir.path().join("twice"), End::A), start);
    // Unknown (0): the pid alone cannot tell a previous process from this one, so still refused.
    write_owner_start(&dir.path().join("twice"), End::A, 0);
    assert_eq!(
        Chan::open("twice", End::A, &options(&dir)).unwrap_err(),
        taken
    );
}

#[test]
fn an_end_left_by_a_previous_process_with_our_pid_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reborn");
    let mut b = Chan::create("reborn", End::B, &options(&dir)).unwrap();
    let mut a = Chan::open("reborn", End::A, &options(&dir)).unwrap();
    for i in 0..3u8 {
        b.sender().send(u16::from(i), &[i; 5]).unwrap();
    }
    a.sender().send(7, b"for b").unwrap();
    // The popped message is committed; the two others stay queued.
    assert_eq!(recv(a.receiver()), (0, vec![0; 5]));
    drop(a);
    let start = forget_end_a("reborn", &dir);
    assert!(b.peer_alive());
    // What a restart leaves: the claims and the record name our pid, with the start time of the
    // process that had it before us.
    write_owner_start(&path, End::A, start + 1000);
    assert_eq!(b.header().owner_start(End::A), start + 1000);
    assert!(!b.peer_alive(), "a previous process with our pid is gone");
    let now = shm_channel::monotonic_nanos();
    assert!(b.receiver().sender_gone(now, None));
    assert_eq!(b.peer_pid(), std::process::id());

    let mut a = Chan::open("reborn", End::A, &options(&dir)).unwrap();
    assert_eq!(a.header().owner_pid(End::A), std::process::id());
    assert_eq!(a.header().owner_start(End::A), start);
    assert_eq!(a.header().attach_count(End::A), 3);
    assert!(b.peer_alive());
    assert!(!b.receiver().sender_gone(now, None));
    assert_eq!(recv(a.receiver()), (1, vec![1; 5]));
    assert_eq!(recv(a.receiver()), (2, vec![2; 5]));
    assert!(a.receiver().is_empty());
    // The sending side was taken over too: after what the previous process pushed.
    a.sender().send(8, b"again").unwrap();
    assert_eq!(recv(b.receiver()), (7, b"for b".to_vec()));
    assert_eq!(recv(b.receiver()), (8, b"again".to_vec()));
    // And the new holder is recognised as this very process.
    assert!(matches!(
        Chan::open("reborn", End::A, &options(&dir)),
        Err(ChannelError::EndOpenInThisProcess { end: End::A, .. })
    ));
}

#[test]
fn threads_racing_to_take_over_from_a_previous_process_admit_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one");
    let mut b = Chan::create("one", End::B, &options(&dir)).unwrap();
    b.sender().send(5, b"queued").unwrap();
    for round in 0..20u64 {
        let start = forget_end_a("one", &dir);
        write_owner_start(&path, End::A, start + 1 + round);
        let threads = 4;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let barrier = Arc::clone(&barrier);
                let options = options(&dir);
                std::thread::spawn(move || {
                    barrier.wait();
                    Chan::open("one", End::A, &options)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for handle in handles {
            match handle.join().unwrap() {
                Ok(endpoint) => winners.push(endpoint),
                // The losers lose to another thread of this process.
                Err(ChannelError::EndOpenInThisProcess { end: End::A, .. }) => {}
                Err(error) => panic!("unexpected error: {error}"),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: one taker, not {}",
            winners.len()
        );
        let mut a = winners.pop().unwrap();
        assert_eq!(a.header().owner_start(End::A), start);
        // The message is delivered once, to the one winner, in the first round.
        if round == 0 {
            assert_eq!(recv(a.receiver()), (5, b"queued".to_vec()));
        }
        assert!(a.receiver().is_empty());
        drop(a);
    }
}

/// Child role: opens end B, tells the parent (a message), then waits for stdin to close and
/// exits without releasing its claims; it never touches the ring again after the message.
#[test]
#[ignore = "child role of a_holder_pid_given_to_another_process_does_not_keep_the_end"]
fn role_hold_b_until_stdin_closes() {
    let options = ChannelOptions::new().dir(child_env("SHM_DIR"));
    let mut b = Chan::open(&child_env("SHM_NAME"), End::B, &options).unwrap();
    b.sender().send(4, b"holding").unwrap();
    std::mem::forget(b);
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
    std::process::exit(0);
}

#[test]
fn a_holder_pid_given_to_another_process_does_not_keep_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reused");
    let mut a = Chan::create("reused", End::A, &options(&dir)).unwrap();
    a.sender().send(1, b"for whoever holds b").unwrap();
    let mut process = spawn_test_child(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "role_hold_b_until_stdin_closes",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SHM_DIR", dir.path())
            .env("SHM_NAME", "reused")
            .stdin(Stdio::piped()),
    );
    assert_eq!(recv(a.receiver()), (4, b"holding".to_vec()));
    let holder = process.id();
    assert_eq!(a.peer_pid(), holder);
    assert!(a.peer_alive());
    // The child's pid exists and its start time matches the record: a live holder keeps its end.
    assert!(matches!(
        Chan::open("reused", End::B, &options(&dir)),
        Err(ChannelError::EndTaken { end: End::B, holder_pid, .. }) if holder_pid == holder
    ));
    // Now say the record was left by an earlier process under that pid: the process running
    // with it (which, as promised, no longer touches the ring) is another one.
    let start = read_owner_start(&path, End::B);
    assert_eq!(a.header().owner_start(End::B), start);
    write_owner_start(&path, End::B, start + 1000);
    assert!(!a.peer_alive());
    let mut b = Chan::open("reused", End::B, &options(&dir)).unwrap();
    assert_eq!(a.peer_pid(), std::process::id());
    assert!(a.peer_alive());
    assert_eq!(recv(b.receiver()), (1, b"for whoever holds b".to_vec()));
    drop(process.stdin.take());
    assert!(process.wait().unwrap().success());
}

#[test]
fn removal_refuses_what_is_not_a_segment() {
    use shm_channel::{Segment, SegmentOptions};
    let dir = tempfile::tempdir().unwrap();
    let seg_options = SegmentOptions::default().dir(dir.path());
    let is_not_a_segment = |error: &SegmentError| {
        matches!(error, SegmentError::NotASegment { name, folder, .. }
            if name == "notes" && folder == dir.path())
    };

    // A plain text file that carries the name: neither unlink nor reclaim removes it.
    let notes = dir.path().join("notes");
    std::fs::write(&notes, "my notes, not a segment\n").unwrap();
    match Chan::unlink("notes", &options(&dir)) {
        Err(ChannelError::Segment(error)) => {
            assert!(is_not_a_segment(&error), "{error:?}");
            assert!(error.to_string().contains("left alone"), "{error}");
        }
        other => panic!("unlink of a text file: {other:?}"),
    }
    let error = Segment::reclaim_stale("notes", &seg_options).unwrap_err();
    assert!(is_not_a_segment(&error), "{error:?}");
    assert_eq!(
        std::fs::read_to_string(&notes).unwrap(),
        "my notes, not a segment\n"
    );
    std::fs::remove_file(&notes).unwrap();

    // A hard link to a foreign file, large enough to look like a segment by size: left alone.
    let foreign = tempfile::tempdir().unwrap();
    let original = foreign.path().join("data.bin");
    std::fs::write(&original, vec![0x5a; Chan::SEGMENT_SIZE]).unwrap();
    std::fs::hard_link(&original, &notes).unwrap();
    let error = Segment::reclaim_stale("notes", &seg_options).unwrap_err();
    assert!(is_not_a_segment(&error), "{error:?}");
    assert!(Chan::unlink("notes", &options(&dir)).is_err());
    assert!(notes.exists() && original.exists());
    // Opening it is refused at once too, as not a segment.
    assert!(matches!(
        Chan::open("notes", End::A, &options(&dir)),
        Err(ChannelError::Segment(ref error)) if is_not_a_segment(error)
    ));
    std::fs::remove_file(&notes).unwrap();

    // A directory and a symbolic link under the name: the same error, saying which.
    std::fs::create_dir(&notes).unwrap();
    let dir_error = Chan::open("notes", End::A, &options(&dir)).unwrap_err();
    assert_eq!(
        dir_error,
        ChannelError::Segment(SegmentError::NotAFile {
            name: "notes".into(),
            folder: dir.path().to_owned(),
            kind: "a directory",
        })
    );
    assert!(matches!(
        Chan::unlink("notes", &options(&dir)),
        Err(ChannelError::Segment(SegmentError::NotAFile {
            kind: "a directory",
            ..
        }))
    ));
    std::fs::remove_dir(&notes).unwrap();
    std::os::unix::fs::symlink(&original, &notes).unwrap();
    assert!(matches!(
        Chan::open("notes", End::A, &options(&dir)),
        Err(ChannelError::Segment(SegmentError::NotAFile {
            kind: "a symbolic link",
            ..
        }))
    ));
    assert!(matches!(
        Segment::reclaim_stale("notes", &seg_options),
        Err(SegmentError::NotAFile {
            kind: "a symbolic link",
            ..
        })
    ));
    assert!(notes.symlink_metadata().is_ok() && original.exists());

    std::fs::remove_file(&notes).unwrap();

    // A FIFO under the name is never opened (opening one could block): reported as what it is.
    let made = {
        let _no_close_meanwhile = spawning();
        Command::new("mkfifo").arg(&notes).status().unwrap()
    };
    assert!(made.success());
    assert!(matches!(
        Chan::open("notes", End::A, &options(&dir)),
        Err(ChannelError::Segment(SegmentError::NotAFile {
            kind: "a FIFO",
            ..
        }))
    ));
    assert!(matches!(
        Segment::reclaim_stale("notes", &seg_options),
        Err(SegmentError::NotAFile { kind: "a FIFO", .. })
    ));
    assert!(notes.symlink_metadata().is_ok());

    // A segment too small to hold even a creator's marker is refused before any file is made.
    assert_eq!(
        Segment::create("tiny", 16, &seg_options).unwrap_err(),
        SegmentError::SizeTooLarge { size: 16 }
    );
    assert!(!dir.path().join("tiny").exists());

    // A real segment, stale or not, is removed.
    drop(Chan::create("real", End::A, &options(&dir)).unwrap());
    Chan::unlink("real", &options(&dir)).unwrap();
    assert!(!dir.path().join("real").exists());
}

#[test]
fn unlinking_through_an_endpoint_spares_a_newer_segment_under_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let old = Chan::create("renewed", End::A, &options(&dir)).unwrap();
    Chan::unlink("renewed", &options(&dir)).unwrap();
    let new = Chan::create("renewed", End::A, &options(&dir)).unwrap();
    // The old endpoint's file is gone; the name is someone else's segment now.
    assert!(matches!(old.unlink(), Err(SegmentError::NotFound { .. })));
    assert!(dir.path().join("renewed").exists());
    new.unlink().unwrap();
}

#[test]
fn remove_on_close_removes_the_file_when_the_last_end_closes_and_never_after_a_kill() {
    let no_spawn_meanwhile_guard = no_spawn_meanwhile();
    let dir = tempfile::tempdir().unwrap();
    let removing = options(&dir).remove_on_close(true);
    let path = dir.path().join("tidy");
    let a = Chan::create_or_open("tidy", End::A, &removing).unwrap();
    let (tx, rx) = Chan::create_or_open("tidy", End::B, &removing)
        .unwrap()
        .split();
    drop(a);
    assert!(path.exists(), "end B still has it open");
    drop(tx);
    assert!(path.exists(), "the receiving half still holds end B");
    drop(rx);
    assert!(!path.exists(), "the last end closed: the file goes");

    // A panic unwinds through the end: removed too.
    let unwound = std::panic::catch_unwind(|| {
        let _a = Chan::create_or_open("tidy", End::A, &removing).unwrap();
        panic!("failing while holding end A");
    });
    assert!(unwound.is_err());
    assert!(!path.exists());

    // A failed open (the end is held) removes nothing, whatever its options.
    let a = Chan::create_or_open("tidy", End::A, &options(&dir)).unwrap();
    assert!(matches!(
        Chan::open("tidy", End::A, &removing),
        Err(ChannelError::EndOpenInThisProcess { .. })
    ));
    assert!(path.exists());
    drop(a);

    // A process killed while it holds an end opened with the option runs no code: the file and
    // its messages stay, for whoever reopens the end.
    let mut a = Chan::open("tidy", End::A, &options(&dir)).unwrap();
    a.sender().send(4, b"kept").unwrap();
    drop(a);
    // This test spawns a child of its own: no guard meanwhile (`child` takes the lock's write
    // side); the file is expected to stay until after the child is gone.
    drop(no_spawn_meanwhile_guard);
    let ready = dir.path().join("child-ready");
    let mut process = child(
        "role_hold_b_removing_until_killed",
        &[
            ("SHM_DIR", dir.path().display().to_string()),
            ("SHM_NAME", "tidy".into()),
            ("SHM_READY", ready.display().to_string()),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "the child never opened end B");
        std::thread::sleep(Duration::from_millis(2));
    }
    process.kill().unwrap();
    process.wait().unwrap();
    let _no_spawn_meanwhile = no_spawn_meanwhile();
    assert!(path.exists(), "a killed end removed the file");
    let mut a = Chan::open("tidy", End::A, &removing).unwrap();
    assert_eq!(recv(a.receiver()), (5, b"from the killed".to_vec()));
    let mut b = Chan::open("tidy", End::B, &removing).unwrap();
    assert_eq!(recv(b.receiver()), (4, b"kept".to_vec()));
    drop((a, b));
    assert!(!path.exists());
}

/// Child role: opens end B with `remove_on_close`, sends one message, says so by creating the
/// file `SHM_READY`, and waits to be killed.
#[test]
#[ignore = "child role of remove_on_close_removes_the_file_when_the_last_end_closes_and_never_after_a_kill"]
fn role_hold_b_removing_until_killed() {
    let options = ChannelOptions::new()
        .dir(child_env("SHM_DIR"))
        .remove_on_close(true);
    let mut b = Chan::open(&child_env("SHM_NAME"), End::B, &options).unwrap();
    b.sender().send(5, b"from the killed").unwrap();
    std::fs::write(child_env("SHM_READY"), b"").unwrap();
    std::thread::sleep(Duration::from_secs(60));
    // Not reached when the test passes; leave without closing if it is.
    std::process::exit(3);
}

#[test]
fn blocking_typed_calls_wait_time_out_and_refuse_the_wrong_type() {
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
    struct Order {
        id: u64,
        qty: u32,
        side: u32,
    }
    let dir = tempfile::tempdir().unwrap();
    let a = Chan::create_or_open("typed-wait", End::A, &options(&dir)).unwrap();
    let mut b = Chan::create_or_open("typed-wait", End::B, &options(&dir)).unwrap();
    let wait = shm_channel::WaitOptions::new(shm_channel::WaitStrategy::Block { spin_first: 10 })
        .timeout(Duration::from_millis(20));
    assert_eq!(
        b.receiver().recv_pod_wait::<Order>(&wait).unwrap_err(),
        PodRecvError::Recv(RecvError::TimedOut)
    );
    // From another thread, after a while: the wait blocks until it comes.
    let order = Order {
        id: 9,
        qty: 3,
        side: 1,
    };
    let (mut tx, rx) = a.split();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(5));
        let patient =
            shm_channel::WaitOptions::new(shm_channel::WaitStrategy::Block { spin_first: 10 })
                .timeout(Duration::from_secs(20));
        tx.send_pod_wait(5, &order, &patient).unwrap();
        tx.send_wait(6, b"not an order", &patient).unwrap();
        tx
    });
    let patient = wait.timeout(Duration::from_secs(20));
    assert_eq!(
        b.receiver().recv_pod_wait::<Order>(&patient).unwrap(),
        (5, order)
    );
    let tx = sender.join().unwrap();
    // The wrong size is refused with its tag and stays queued.
    assert_eq!(
        b.receiver().front_pod_wait::<Order>(&patient).unwrap_err(),
        PodRecvError::WrongSize {
            tag: 6,
            expected: 16,
            actual: 12
        }
    );
    assert_eq!(recv(b.receiver()), (6, b"not an order".to_vec()));
    // A full ring: the typed send waits, then times out.
    let mut tx = tx;
    while tx.send_pod(1, &order).is_ok() {}
    assert_eq!(
        tx.send_pod_wait(1, &order, &wait).unwrap_err(),
        SendError::Full
    );
    drop(rx);
}
