//! Processes made by `fork` without `exec`: they inherit a copy of their parent's memory (every
//! static, every handle) and its descriptors, which must never make one end look held by the
//! wrong process.
//!
//! - A child of a parent that had already opened a channel, which opens an end itself, records
//!   its *own* start time, so no contender (the parent, another forked child, an exec'd process)
//!   judges the live child dead and takes its end.
//! - A child forked while its parent holds an end has copies of the parent's handles. It cannot
//!   open that end (the parent is alive), and dropping its copies leaves the parent's claims,
//!   owner record and wait cells alone.
//!
//! Children run a closure and leave with `_exit`, never returning into the test harness; each
//! waits with a deadline, so a failing parent leaves nothing running. The tests run one at a time
//! (a fork copies only the forking thread; no other test of this binary is mid-way then).

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use shm_channel::{
    process_start_time, Channel, ChannelError, ChannelOptions, End, WaitOptions, WaitStrategy,
};
use spsc_core::{MessageReceiver, MessageSender};

type Chan = Channel<4096>;

static SERIAL: Mutex<()> = Mutex::new(());

/// Child exit codes.
const CHILD_OK: i32 = 0;
const CHILD_PANICKED: i32 = 101;

fn options(dir: &std::path::Path) -> ChannelOptions {
    ChannelOptions::new().dir(dir)
}

/// Waits up to 30 s for a message (children and parents alike: nothing waits forever).
fn patient() -> WaitOptions {
    WaitOptions::new(WaitStrategy::Block { spin_first: 100 }).timeout(Duration::from_secs(30))
}

/// Forks; the child runs `body` and leaves with `_exit(body's code)` (101 if it panicked).
fn fork_child(body: impl FnOnce() -> i32) -> Pid {
    // SAFETY: the child only runs `body` (this crate's calls, allocation, and `_exit`); the tests
    // are serialised, so no other thread of this binary holds a lock the child could need.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Parent { child } => child,
        ForkResult::Child => {
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body))
                .unwrap_or(CHILD_PANICKED);
            // SAFETY: `_exit` ends the process at once, running no destructor or exit handler of
            // the parent's state the child inherited.
            unsafe { nix::libc::_exit(code) }
        }
    }
}

/// Reaps `child` and returns its exit code.
fn exit_code(child: Pid) -> i32 {
    match waitpid(child, None).expect("waitpid") {
        WaitStatus::Exited(_, code) => code,
        other => panic!("child {child} did not exit normally: {other:?}"),
    }
}

/// Runs this test binary's ignored test `role` as an exec'd child with `env`, and returns its
/// exit code.
fn exec_role(role: &str, env: &[(&str, String)]) -> i32 {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", role, "--ignored", "--test-threads=1"])
        .stdout(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    command.status().unwrap().code().unwrap_or(-1)
}

fn child_env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("{key} not set: run only as a child role"))
}

/// Exec'd contender: tries to open end `SHM_END` of `SHM_NAME`, which a live process holds; the
/// test passes only if it is refused, naming `SHM_HOLDER` as the holder.
#[test]
#[ignore = "child role of the fork tests"]
fn role_contender() {
    let end = if child_env("SHM_END") == "A" {
        End::A
    } else {
        End::B
    };
    let holder: u32 = child_env("SHM_HOLDER").parse().unwrap();
    let options = options(child_env("SHM_DIR").as_ref());
    match Chan::open(&child_env("SHM_NAME"), end, &options) {
        Err(ChannelError::EndTaken { holder_pid, .. }) => assert_eq!(holder_pid, holder),
        Err(error) => panic!("unexpected error: {error}"),
        Ok(_) => panic!("took {end} from the live process {holder}"),
    }
}

#[test]
fn a_child_forked_after_opening_keeps_the_end_it_opens() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    for round in 0..20 {
        let name = format!("fork-after-open-{round}");
        // The parent opens first, so whatever it caches about itself is there to be inherited.
        let mut a = Chan::create(&name, End::A, &options(dir.path())).unwrap();
        let child_dir = dir.path().to_owned();
        let child_name = name.clone();
        let child = fork_child(move || {
            let mut b = Chan::open(&child_name, End::B, &options(&child_dir)).unwrap();
            b.sender().send(1, b"holding B").unwrap();
            // Hold end B until the parent says it is done contending.
            let message = b.receiver().recv_wait(&patient()).unwrap();
            assert_eq!(message.tag(), 2);
            b.receiver().pop().unwrap();
            CHILD_OK
        });
        let message = a.receiver().recv_wait(&patient()).unwrap();
        assert_eq!(message.payload(), b"holding B");
        a.receiver().pop().unwrap();

        // The child recorded its own start time, not the parent's.
        let child_pid = child.as_raw() as u32;
        let (pid, start) = a.header().owner(End::B);
        assert_eq!(pid, child_pid);
        assert_eq!(Some(start), process_start_time(child_pid));
        assert!(a.peer_alive(), "the live child reads as dead");

        // Contenders: this process (a parent with another pid), a second forked child, and an
        // exec'd process. None may take end B from the live child.
        match Chan::open(&name, End::B, &options(dir.path())) {
            Err(ChannelError::EndTaken { holder_pid, .. }) => assert_eq!(holder_pid, child_pid),
            other => panic!("round {round}: the parent contended and got {other:?}"),
        }
        let contender_dir = dir.path().to_owned();
        let contender_name = name.clone();
        let forked_contender = fork_child(move || {
            match Chan::open(&contender_name, End::B, &options(&contender_dir)) {
                Err(ChannelError::EndTaken { holder_pid, .. }) if holder_pid == child_pid => {
                    CHILD_OK
                }
                _ => 1,
            }
        });
        assert_eq!(exit_code(forked_contender), CHILD_OK, "round {round}");
        if round % 4 == 0 {
            let env = [
                ("SHM_DIR", dir.path().display().to_string()),
                ("SHM_NAME", name.clone()),
                ("SHM_END", "B".to_string()),
                ("SHM_HOLDER", child_pid.to_string()),
            ];
            assert_eq!(exec_role("role_contender", &env), 0, "round {round}");
        }

        a.sender().send(2, b"done").unwrap();
        assert_eq!(exit_code(child), CHILD_OK, "round {round}");
        // Gone: end B is free again (released cleanly), and opens.
        assert!(!a.peer_alive());
        drop(Chan::open(&name, End::B, &options(dir.path())).unwrap());
    }
}

#[test]
fn a_child_forked_while_holding_an_end_cannot_take_it_and_its_copies_leave_it_alone() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let name = "fork-while-holding";
    let mut a = Chan::create(name, End::A, &options(dir.path())).unwrap();
    let mut b = Chan::open(name, End::B, &options(dir.path())).unwrap();
    let parent = std::process::id();
    let parent_start = process_start_time(parent).unwrap();
    let holders_before = a.header().owner(End::A);
    assert_eq!(holders_before, (parent, parent_start));

    let child_dir = dir.path().to_owned();
    let (parent_a, parent_b) = (&a, &b);
    let child = fork_child(move || {
        // The parent holds both ends: the child, another pid, is refused either.
        for end in [End::A, End::B] {
            match Chan::open(name, end, &options(&child_dir)) {
                Err(ChannelError::EndTaken { holder_pid, .. }) if holder_pid == parent => {}
                other => panic!("the child opened {end} of its live parent: {other:?}"),
            }
        }
        // The child's copies of the parent's handles go out of scope in the child; dropping them
        // must leave the parent's claims, owner records and wait cells as they are.
        // SAFETY: this runs in the child, whose memory is a copy of the parent's: the values
        // behind `parent_a` and `parent_b` are the child's own copies, which it reads out once,
        // drops once, and never touches again (it leaves with `_exit`, running no destructor).
        let (a_copy, b_copy) = unsafe { (std::ptr::read(parent_a), std::ptr::read(parent_b)) };
        drop(a_copy);
        drop(b_copy);
        CHILD_OK
    });
    assert_eq!(exit_code(child), CHILD_OK);

    // The parent still holds both ends, as recorded and as the rings' side words say.
    for (sides, what) in [
        (a.sender().ring_holders(), "ring A→B"),
        (a.receiver().ring_holders(), "ring B→A"),
    ] {
        assert_eq!(sides, (parent, parent), "{what}: a side was released");
    }
    assert_eq!(a.header().owner(End::A), (parent, parent_start));
    assert_eq!(a.header().owner(End::B), (parent, parent_start));
    let env = [
        ("SHM_DIR", dir.path().display().to_string()),
        ("SHM_NAME", name.to_string()),
        ("SHM_END", "A".to_string()),
        ("SHM_HOLDER", parent.to_string()),
    ];
    assert_eq!(exec_role("role_contender", &env), 0, "end A was released");
    let env_b = [
        ("SHM_END", "B".to_string()),
        ("SHM_DIR", env[0].1.clone()),
        ("SHM_NAME", env[1].1.clone()),
        ("SHM_HOLDER", parent.to_string()),
    ];
    assert_eq!(exec_role("role_contender", &env_b), 0, "end B was released");

    // And the channel still works, blocking waits included (the wait cells stayed armed).
    a.sender().send(7, b"after the fork").unwrap();
    let message = b.receiver().recv_wait(&patient()).unwrap();
    assert_eq!(
        (message.tag(), message.payload()),
        (7, &b"after the fork"[..])
    );
    b.receiver().pop().unwrap();
}
