//! Long-lived child processes (rabbitmq-server, epmd, dnsmasq, qemu): pid files, liveness and
//! stopping by pid.
//!
//! Children are started in their own process group, so a Ctrl-C in the terminal that ran
//! `novabox up` does not reach them and stopping the group leader also stops whatever it forked
//! (rabbitmq-server is a shell script that forks the Erlang VM).

pub mod rabbitmq;

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("cannot write the pid file {path}: {source}")]
    WritePid { path: PathBuf, source: io::Error },
    #[error("cannot read the pid file {path}: {source}")]
    ReadPid { path: PathBuf, source: io::Error },
    #[error("cannot signal process {pid}: {source}")]
    Signal { pid: i32, source: io::Error },
    #[error("process {pid} did not exit within {}s even after SIGKILL", timeout.as_secs())]
    WontDie { pid: i32, timeout: Duration },
}

/// Writes `pid` to `path` (atomically, owner-only).
pub fn write_pid_file(path: &Path, pid: u32) -> Result<(), SuperviseError> {
    crate::home::write_atomic(path, format!("{pid}\n").as_bytes(), 0o600)
        .map_err(|source| SuperviseError::WritePid { path: path.to_path_buf(), source })
}

/// The pid stored in `path`; `None` when the file is missing or does not hold a pid (a stale or
/// half-written file is treated as "nothing running", never as an error that blocks `down`).
pub fn read_pid_file(path: &Path) -> Result<Option<i32>, SuperviseError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.trim().parse::<i32>().ok().filter(|p| *p > 1)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SuperviseError::ReadPid { path: path.to_path_buf(), source }),
    }
}

/// True while `pid` is a running process. Zombies count as dead; a zombie that is our own child
/// is reaped here, so a child started with `std::process` and never waited for cannot pin its
/// pid forever.
pub fn is_alive(pid: i32) -> bool {
    if pid <= 1 {
        return false;
    }
    // SAFETY: waitpid with WNOHANG on a single pid never blocks; ECHILD (not our child) is fine.
    unsafe {
        libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG);
    }
    // SAFETY: signal 0 only checks existence and permission.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    }
    !matches!(process_state(pid), Some('Z') | Some('X'))
}

/// True when `pid` is alive and its command line contains `needle`: guards against signalling
/// an unrelated process that reused the pid of one that died long ago.
pub fn is_alive_as(pid: i32, needle: &str) -> bool {
    is_alive(pid) && cmdline(pid).is_some_and(|c| c.contains(needle))
}

/// The pid from `pid_file` if that process is alive and looks like `needle`.
pub fn running_pid(pid_file: &Path, needle: &str) -> Result<Option<i32>, SuperviseError> {
    Ok(read_pid_file(pid_file)?.filter(|pid| is_alive_as(*pid, needle)))
}

/// How a stop went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Nothing was running.
    NotRunning,
    /// It exited after SIGTERM.
    Gracefully,
    /// It ignored SIGTERM for the whole timeout and was killed.
    Killed,
}

/// Sends SIGTERM to `pid` (to its whole process group when it leads one), waits up to
/// `timeout`, then sends SIGKILL. Blocking on purpose: callers include `Drop` guards.
pub fn stop_pid(pid: i32, timeout: Duration) -> Result<Stopped, SuperviseError> {
    if !is_alive(pid) {
        return Ok(Stopped::NotRunning);
    }
    // SAFETY: getpgid has no preconditions.
    let leads_group = unsafe { libc::getpgid(pid) } == pid;
    let target = if leads_group { -pid } else { pid };
    signal(target, pid, libc::SIGTERM)?;
    if wait_dead(pid, leads_group, timeout) {
        return Ok(Stopped::Gracefully);
    }
    tracing::warn!(pid, "process ignored SIGTERM for {}s; sending SIGKILL", timeout.as_secs());
    signal(target, pid, libc::SIGKILL)?;
    if wait_dead(pid, leads_group, Duration::from_secs(5)) {
        return Ok(Stopped::Killed);
    }
    Err(SuperviseError::WontDie { pid, timeout })
}

/// Stops the process named by `pid_file` when it is alive and looks like `needle`, then
/// removes the pid file.
pub fn stop_pid_file(pid_file: &Path, needle: &str, timeout: Duration) -> Result<Stopped, SuperviseError> {
    let outcome = match running_pid(pid_file, needle)? {
        Some(pid) => stop_pid(pid, timeout)?,
        None => Stopped::NotRunning,
    };
    let _ = std::fs::remove_file(pid_file);
    Ok(outcome)
}

/// True when nothing listens on (and nothing else holds) `127.0.0.1:port`.
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// A loopback port that was free a moment ago, chosen by the kernel.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

fn signal(target: i32, pid: i32, sig: i32) -> Result<(), SuperviseError> {
    // SAFETY: kill has no memory-safety preconditions; target was checked above to be a live
    // process (or its group).
    if unsafe { libc::kill(target, sig) } == 0 {
        return Ok(());
    }
    let source = io::Error::last_os_error();
    if source.raw_os_error() == Some(libc::ESRCH) {
        return Ok(()); // exited meanwhile
    }
    Err(SuperviseError::Signal { pid, source })
}

/// Waits for `pid` to die and, when it led a group, for the rest of the group too (the Erlang
/// VM outlives its wrapper script by a moment while it flushes to disk).
fn wait_dead(pid: i32, group: bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let leader_alive = is_alive(pid);
        // SAFETY: signal 0 to a group only checks existence.
        let group_alive = group && unsafe { libc::kill(-pid, 0) } == 0 && group_has_live_member(pid);
        if !leader_alive && !group_alive {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// `kill(-pgid, 0)` succeeds while zombies remain in the group, so look for a live member.
fn group_has_live_member(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else { return false };
    entries.flatten().filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok())).any(|pid| {
        let Some(stat) = stat_fields(pid) else { return false };
        stat.1 == pgid && stat.0 != 'Z' && stat.0 != 'X'
    })
}

fn process_state(pid: i32) -> Option<char> {
    stat_fields(pid).map(|s| s.0)
}

/// State and process group from `/proc/<pid>/stat`. The command name may contain spaces and
/// parentheses, so parse from the last ')'.
fn stat_fields(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

fn cmdline(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn pid_file_round_trip_and_garbage() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("x.pid");
        assert_eq!(read_pid_file(&f).unwrap(), None);
        write_pid_file(&f, 4242).unwrap();
        assert_eq!(read_pid_file(&f).unwrap(), Some(4242));
        std::fs::write(&f, "not a pid").unwrap();
        assert_eq!(read_pid_file(&f).unwrap(), None);
    }

    #[test]
    fn stops_a_process_group_and_reaps_it() {
        let t = tempfile::tempdir().unwrap();
        let pid_file = t.path().join("sleep.pid");
        // A shell that forks a grandchild, like rabbitmq-server does with the Erlang VM.
        let mut child =
            std::process::Command::new("sh").args(["-c", "sleep 300 & wait"]).process_group(0).spawn().unwrap();
        write_pid_file(&pid_file, child.id()).unwrap();
        let pid = child.id() as i32;
        assert!(is_alive_as(pid, "sleep 300"));
        assert_eq!(stop_pid_file(&pid_file, "sleep 300", Duration::from_secs(5)).unwrap(), Stopped::Gracefully);
        assert!(!is_alive(pid));
        assert!(!group_has_live_member(pid), "the grandchild survived");
        assert!(!pid_file.exists());
        assert_eq!(stop_pid_file(&pid_file, "sleep 300", Duration::from_secs(1)).unwrap(), Stopped::NotRunning);
        // Already reaped by is_alive; this only satisfies the zombie lint.
        let _ = child.wait();
    }

    #[test]
    fn kills_what_ignores_sigterm() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "trap '' TERM; while :; do sleep 0.1; done"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // Give the shell time to install its trap.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(stop_pid(pid, Duration::from_millis(300)).unwrap(), Stopped::Killed);
        assert!(!is_alive(pid));
        let _ = child.wait();
    }

    #[test]
    fn wrong_name_is_not_signalled() {
        let mut child = std::process::Command::new("sleep").arg("300").spawn().unwrap();
        let pid = child.id() as i32;
        assert!(!is_alive_as(pid, "rabbitmq"));
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("p.pid");
        write_pid_file(&f, child.id()).unwrap();
        assert_eq!(stop_pid_file(&f, "rabbitmq", Duration::from_secs(1)).unwrap(), Stopped::NotRunning);
        assert!(is_alive(pid));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn free_port_is_free() {
        let p = free_port().unwrap();
        assert!(port_is_free(p));
        let _hold = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, p)).unwrap();
        assert!(!port_is_free(p));
    }
}
