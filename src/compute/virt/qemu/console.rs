//! The serial console: a unix socket `novabox console` connects to, which also logs everything
//! the guest writes to `console.log` (appended across power cycles), connected or not.

use std::path::Path;

use super::super::guestfiles::read_tail;
use super::super::VirtError;
use super::cmdline::opt_path;
use super::failed;

/// The serial console's socket in the instance dir (`novabox console` connects to it).
pub const CONSOLE_SOCKET: &str = "console.sock";
/// Kept of the console for `console_output` (nova's MAX_CONSOLE_BYTES).
const MAX_CONSOLE_BYTES: u64 = 100 * 1024;
/// A unix socket path longer than this cannot be bound (sun_path is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Refuses an instance dir whose sockets qemu could not bind; console.sock is the longer of
/// the two (with qmp.sock).
pub(super) fn check_socket_path(dir: &Path) -> Result<(), VirtError> {
    let console = dir.join(CONSOLE_SOCKET);
    if console.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(failed(format!(
            "the console socket path {} is longer than {MAX_SOCKET_PATH} bytes; use a shorter --home",
            console.display()
        )));
    }
    Ok(())
}

/// The `-chardev` of the serial console.
pub(super) fn serial_chardev(dir: &Path) -> Result<String, VirtError> {
    Ok(format!(
        "socket,id=serial0,path={},server=on,wait=off,logfile={},logappend=on",
        opt_path(&dir.join(CONSOLE_SOCKET))?,
        opt_path(&dir.join("console.log"))?
    ))
}

/// The last `MAX_CONSOLE_BYTES` of what the guest wrote to its console.
pub(super) fn read(dir: &Path) -> Result<String, VirtError> {
    read_tail(&dir.join("console.log"), MAX_CONSOLE_BYTES)
}

/// qemu's VNC server of the guest, on a unix socket in the instance dir (issue 22); only
/// novabox's websocket proxy connects to it. A guest started before novabox had it has none.
pub const VNC_SOCKET: &str = "vnc.sock";
/// Held (flock) by whoever is attached to the serial console, with a line saying who.
const SERIAL_LOCK: &str = "console.lock";

/// The `-vnc` display of a guest.
pub(super) fn vnc_display(dir: &Path) -> Result<String, VirtError> {
    Ok(format!("unix:{}", opt_path(&dir.join(VNC_SOCKET))?))
}

/// Someone else is attached to a guest's serial console.
#[derive(Debug, thiserror::Error)]
pub enum SerialClaimError {
    #[error("the serial console is in use by {0}; only one client at a time can type into it")]
    Busy(String),
    #[error("cannot lock {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// The right to the serial console of one guest, until dropped.
///
/// qemu's socket chardev serves one client: a second connection waits unanswered in the
/// listen queue, seeing nothing, and when the first leaves it gets the input meant for the
/// first. So `novabox console` and the websocket proxy take this lock first and the second
/// is refused with who holds it, rather than hanging.
#[derive(Debug)]
pub struct SerialClaim {
    _file: std::fs::File,
}

/// Claims the serial console of the guest in `dir`, naming the holder as `who`.
pub fn claim_serial(dir: &Path, who: &str) -> Result<SerialClaim, SerialClaimError> {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    let path = dir.join(SERIAL_LOCK);
    let io = |source| SerialClaimError::Io { path: path.display().to_string(), source };
    let mut file =
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
    // SAFETY: flock on a descriptor this function owns; released when the file is closed,
    // also when the holder dies.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::WouldBlock {
            return Err(io(err));
        }
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        return Err(SerialClaimError::Busy(if holder.is_empty() { "another client".into() } else { holder.into() }));
    }
    file.set_len(0).and_then(|_| file.rewind()).and_then(|_| file.write_all(who.as_bytes())).map_err(io)?;
    Ok(SerialClaim { _file: file })
}

#[cfg(test)]
mod claim_tests {
    use super::*;

    #[test]
    fn a_second_serial_client_is_refused_with_the_holder_until_the_first_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let first = claim_serial(dir.path(), "novabox console (pid 1)").unwrap();
        let err = claim_serial(dir.path(), "the websocket proxy").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the serial console is in use by novabox console (pid 1); only one client at a time can type into it"
        );
        drop(first);
        let _second = claim_serial(dir.path(), "the websocket proxy").unwrap();
    }
}
