//! The exit statuses every Rafty program uses: the BSD `sysexits.h` codes, which systemd units can
//! name (`RestartPreventExitStatus=78`: a bad configuration is not restarted in a loop) and scripts
//! can tell apart.

/// Done.
pub const OK: u8 = 0;
/// Failed in a way none of the codes below names.
pub const FAILURE: u8 = 1;
/// The input is not usable as given (EX_DATAERR): an audio CD, an unknown parked job id.
pub const DATAERR: u8 = 65;
/// The input does not exist (EX_NOINPUT): no disc in the drive, no such image.
pub const NOINPUT: u8 = 66;
/// A service or program that is needed is missing (EX_UNAVAILABLE): the broker, HandBrakeCLI, udev.
pub const UNAVAILABLE: u8 = 69;
/// There is not room to write the output (EX_CANTCREAT): not enough space.
pub const CANTCREAT: u8 = 73;
/// Reading or writing failed (EX_IOERR): sectors left unreadable.
pub const IOERR: u8 = 74;
/// Try again later (EX_TEMPFAIL): the drive is busy, or the run was stopped early.
pub const TEMPFAIL: u8 = 75;
/// The broker refused or returned a message (EX_PROTOCOL).
pub const PROTOCOL: u8 = 76;
/// The configuration is unusable (EX_CONFIG).
pub const CONFIG: u8 = 78;
