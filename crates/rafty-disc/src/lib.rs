//! Copying discs to images, for `rip`.
//!
//! - [`copy`]: the copy engine (large reads, then sector by sector over failures, a ddrescue map,
//!   resume, SHA-256, bounded memory).
//! - [`mapfile`]: GNU ddrescue's mapfile format.
//! - [`identity`]: the disc's fingerprint and where its image goes (unique names, duplicates, resume).
//! - [`css`]: unlocking CSS-encrypted DVDs through libdvdcss, where it is installed.
//! - [`lock`]: one rip per drive.
//! - [`eject`]: UDisks2 over D-Bus, or the CDROMEJECT ioctl.

pub mod copy;
pub mod css;
pub mod eject;
pub mod identity;
pub mod lock;
pub mod mapfile;
