//! The two system calls that load and remove a module, called directly so that the loader
//! sees the kernel's own errno (EBUSY: another transition; EEXIST: already loaded) instead of
//! reading insmod's message, and starts no program.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `finit_module(fd, "", 0)`: loads the module in `file` with no parameters.
pub fn finit_module(file: &File) -> io::Result<()> {
    let params = c"";
    // SAFETY: the descriptor is open for as long as `file` lives, and `params` is a
    // NUL-terminated string that outlives the call; the kernel reads both and keeps neither.
    let result = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            params.as_ptr(),
            0 as libc::c_int,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `delete_module(name, O_NONBLOCK)`: removes a module whose use count is zero, or fails at
/// once (EWOULDBLOCK, EBUSY) instead of waiting for it.
pub fn delete_module(name: &str) -> io::Result<()> {
    let name = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a module name holds NUL"))?;
    // SAFETY: `name` is a NUL-terminated string that outlives the call.
    let result = unsafe { libc::syscall(libc::SYS_delete_module, name.as_ptr(), libc::O_NONBLOCK) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
