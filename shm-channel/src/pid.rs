//! Process ids as the segment records them: who created it, who holds each end.

use core::num::NonZeroU32;

use rustix::io::Errno;
use rustix::process::{getpid, test_kill_process, Pid};

/// This process's id, as recorded in headers and ring claims.
pub(crate) fn current_pid() -> NonZeroU32 {
    // A pid is positive, so the conversion never yields zero.
    NonZeroU32::new(getpid().as_raw_nonzero().get().unsigned_abs()).unwrap_or(NonZeroU32::MIN)
}

/// Whether a process with id `pid` exists now (`kill(pid, 0)`).
///
/// Answers `false` for 0 and for values no pid can take (a corrupt header must never make us
/// probe process groups: `kill(-n, 0)` addresses a group). A process that exists but that we may
/// not signal (`EPERM`) counts as alive. A zombie (exited, not yet reaped by its parent) counts
/// as dead: `kill(pid, 0)` still succeeds for it, so its state is read from `/proc/<pid>/stat`
/// (where `/proc` is missing the answer falls back to `kill` alone). A zombie's pid cannot be
/// reused before it is reaped, so this never mistakes a new process for the dead one.
///
/// Both processes must share a pid namespace: a pid from another namespace says nothing here.
pub fn is_process_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    let Some(pid) = Pid::from_raw(raw) else {
        return false;
    };
    !matches!(test_kill_process(pid), Err(Errno::SRCH)) && !is_zombie(raw)
}

/// Whether `/proc` says process `pid` has exited but is not reaped (state `Z`, or `X` while it
/// is being reaped). Not on the hot path: liveness checks run at claim time and while waiting.
fn is_zombie(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The command name in parentheses may itself contain spaces or parentheses: the state is
    // the first field after the last `)`.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state == "Z" || state == "X")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_pid_is_alive_and_impossible_pids_are_not() {
        assert!(is_process_alive(current_pid().get()));
        assert!(!is_process_alive(0));
        assert!(!is_process_alive(u32::MAX));
        assert!(!is_process_alive(i32::MAX as u32 + 1));
    }

    #[test]
    fn an_exited_unreaped_child_is_dead() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "exit 0"])
            .spawn()
            .expect("spawn sh");
        let pid = child.id();
        // The child exits at once; until we reap it, it is a zombie that `kill(pid, 0)` finds.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while is_process_alive(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "zombie child {pid} still reads as alive"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(is_zombie(pid as i32), "the child is not reaped yet");
        child.wait().expect("reap the child");
        assert!(!is_process_alive(pid));
    }
}
