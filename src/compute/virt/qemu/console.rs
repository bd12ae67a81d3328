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
