//! Unlocking CSS-encrypted DVDs before a raw copy.
//!
//! A drive refuses to return the encrypted sectors of a CSS-protected DVD (they read as I/O errors)
//! until the host has authenticated with it. libdvdcss performs that handshake when it opens a disc;
//! where it is installed (Debian: the `libdvd-pkg` package builds `libdvdcss2`), rip opens the drive
//! with it and closes it again before copying, which leaves the drive unlocked for raw reads. The
//! sectors stay encrypted in the image; HandBrake decrypts them when libdvdcss is installed on the
//! workers too. Without libdvdcss nothing happens here, and rip's error for unreadable sectors of a
//! DVD names this as a likely cause.

use std::ffi::{CString, c_char, c_int, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// How the CSS step went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Css {
    /// libdvdcss opened (and so authenticated) the drive.
    Authenticated,
    /// libdvdcss is not installed; nothing was done.
    Unavailable,
}

/// Open and close `device` with libdvdcss if it is installed.
#[allow(unsafe_code)]
pub fn authenticate(device: &Path) -> Result<Css, String> {
    // SAFETY: loading libdvdcss runs its initialisers, which only set up its own state.
    let lib = match unsafe { libloading::Library::new("libdvdcss.so.2") } {
        Ok(lib) => lib,
        Err(_) => return Ok(Css::Unavailable),
    };
    let path = CString::new(device.as_os_str().as_bytes())
        .map_err(|_| "device path contains NUL".to_owned())?;
    // SAFETY: the signatures are libdvdcss's public API (dvdcss.h): dvdcss_open(const char *) returns
    // a handle or NULL; dvdcss_close(handle) returns 0 on success. The handle is closed before the
    // library is unloaded.
    unsafe {
        let open: libloading::Symbol<unsafe extern "C" fn(*const c_char) -> *mut c_void> = lib
            .get(b"dvdcss_open\0")
            .map_err(|e| format!("libdvdcss: {e}"))?;
        let close: libloading::Symbol<unsafe extern "C" fn(*mut c_void) -> c_int> = lib
            .get(b"dvdcss_close\0")
            .map_err(|e| format!("libdvdcss: {e}"))?;
        let handle = open(path.as_ptr());
        if handle.is_null() {
            return Err(format!("libdvdcss could not open {}", device.display()));
        }
        close(handle);
    }
    Ok(Css::Authenticated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_libdvdcss_nothing_happens_and_with_it_a_missing_device_is_an_error() {
        match authenticate(Path::new("/nonexistent/sr9")) {
            Ok(Css::Unavailable) => {}
            Err(e) => assert!(e.contains("/nonexistent/sr9"), "{e}"),
            Ok(Css::Authenticated) => panic!("a missing device cannot be authenticated"),
        }
    }
}
