//! The map of good and bad areas of a copy, in GNU ddrescue's mapfile format, so `ddrescue` and its
//! tools (ddrescuelog, ddrescueview) can read what `rip` did, and `rip` can resume what it left.
//!
//! ```text
//! # Mapfile. Created by rip (Rafty)
//! # rafty-fingerprint: 3f9c0a1d2e4b5a67
//! # current_pos  current_status  current_pass
//! 0x00000000     +               1
//! #      pos        size  status
//! 0x00000000  0x00100000  +
//! 0x00100000  0x00001000  -
//! 0x00101000  0x0A000000  ?
//! ```
//!
//! Status characters: `?` not tried, `*` failed in a large read and not yet split, `-` bad sector,
//! `+` copied. Comment lines are ignored by ddrescue; Rafty keeps the disc's fingerprint in one.

use std::fmt::Write as _;
use std::path::Path;

/// Not read yet.
pub const NON_TRIED: u8 = b'?';
/// Failed as part of a large read; its sectors are still to be tried one by one.
pub const NON_TRIMMED: u8 = b'*';
/// A sector that could not be read.
pub const BAD: u8 = b'-';
/// Copied.
pub const FINISHED: u8 = b'+';

/// One contiguous area with one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// Byte offset.
    pub pos: u64,
    /// Length in bytes.
    pub size: u64,
    /// Status character.
    pub status: u8,
}

/// The whole map: blocks in order, covering `0..size` exactly, neighbours of equal status merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Map {
    size: u64,
    blocks: Vec<Block>,
    /// The disc's fingerprint, kept in a comment line.
    pub fingerprint: Option<String>,
}

/// A mapfile that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("mapfile line {line}: {message}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl Map {
    /// A map of `size` bytes, nothing tried yet.
    pub fn new(size: u64) -> Map {
        Map {
            size,
            blocks: if size == 0 {
                Vec::new()
            } else {
                vec![Block {
                    pos: 0,
                    size,
                    status: NON_TRIED,
                }]
            },
            fingerprint: None,
        }
    }

    /// Total size covered.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The blocks, in order.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// Set the status of `pos..pos+len` (clamped to the map).
    pub fn set(&mut self, pos: u64, len: u64, status: u8) {
        let end = pos.saturating_add(len).min(self.size);
        if pos >= end {
            return;
        }
        let mut out = Vec::with_capacity(self.blocks.len() + 2);
        for b in &self.blocks {
            let b_end = b.pos + b.size;
            if b_end <= pos || b.pos >= end {
                out.push(*b);
                continue;
            }
            if b.pos < pos {
                out.push(Block {
                    pos: b.pos,
                    size: pos - b.pos,
                    status: b.status,
                });
            }
            if b_end > end {
                out.push(Block {
                    pos: end,
                    size: b_end - end,
                    status: b.status,
                });
            }
        }
        out.push(Block {
            pos,
            size: end - pos,
            status,
        });
        out.sort_by_key(|b| b.pos);
        // Merge neighbours with the same status.
        let mut merged: Vec<Block> = Vec::with_capacity(out.len());
        for b in out {
            match merged.last_mut() {
                Some(last) if last.status == b.status && last.pos + last.size == b.pos => {
                    last.size += b.size
                }
                _ => merged.push(b),
            }
        }
        self.blocks = merged;
    }

    /// Areas with this status, as (pos, size).
    pub fn areas(&self, status: u8) -> Vec<(u64, u64)> {
        self.blocks
            .iter()
            .filter(|b| b.status == status)
            .map(|b| (b.pos, b.size))
            .collect()
    }

    /// Bytes with this status.
    pub fn bytes(&self, status: u8) -> u64 {
        self.blocks
            .iter()
            .filter(|b| b.status == status)
            .map(|b| b.size)
            .sum()
    }

    /// Whether every byte is copied.
    pub fn complete(&self) -> bool {
        self.bytes(FINISHED) == self.size
    }

    /// Bad areas as inclusive ranges of 2048-byte sectors (LBAs).
    pub fn bad_lba_ranges(&self) -> Vec<(u64, u64)> {
        self.areas(BAD)
            .into_iter()
            .map(|(pos, size)| (pos / 2048, (pos + size - 1) / 2048))
            .collect()
    }

    /// The mapfile text.
    pub fn to_text(&self) -> String {
        let mut s = String::from("# Mapfile. Created by rip (Rafty), in GNU ddrescue's format\n");
        if let Some(fp) = &self.fingerprint {
            let _ = writeln!(s, "# rafty-fingerprint: {fp}");
        }
        let current = self
            .blocks
            .iter()
            .find(|b| b.status != FINISHED)
            .map(|b| (b.pos, b.status))
            .unwrap_or((self.size, FINISHED));
        s.push_str("# current_pos  current_status  current_pass\n");
        let _ = writeln!(
            s,
            "0x{:08X}     {}               1",
            current.0, current.1 as char
        );
        s.push_str("#      pos        size  status\n");
        for b in &self.blocks {
            let _ = writeln!(s, "0x{:08X}  0x{:08X}  {}", b.pos, b.size, b.status as char);
        }
        s
    }

    /// Parse mapfile text; the blocks must cover `0..size` without gaps or overlaps.
    pub fn parse(text: &str) -> Result<Map, ParseError> {
        let mut fingerprint = None;
        let mut seen_status_line = false;
        let mut blocks = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let err = |message: String| ParseError {
                line: i + 1,
                message,
            };
            let line = line.trim();
            if let Some(comment) = line.strip_prefix('#') {
                if let Some(fp) = comment.trim().strip_prefix("rafty-fingerprint:") {
                    fingerprint = Some(fp.trim().to_owned());
                }
                continue;
            }
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            if !seen_status_line {
                seen_status_line = true;
                if fields.len() < 2 {
                    return Err(err(
                        "expected the status line: current_pos current_status [current_pass]"
                            .into(),
                    ));
                }
                continue;
            }
            if fields.len() != 3 || fields[2].len() != 1 {
                return Err(err(format!("expected `pos size status`, got {line:?}")));
            }
            let num = |f: &str| {
                let f = f.to_ascii_lowercase();
                match f.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16),
                    None => f.parse(),
                }
                .map_err(|_| err(format!("{f:?} is not a number")))
            };
            let status = fields[2].as_bytes()[0];
            if !b"?*/-+".contains(&status) {
                return Err(err(format!("unknown status {:?}", status as char)));
            }
            // ddrescue's non-scraped '/' is handled like non-trimmed: still to be tried sector by sector.
            let status = if status == b'/' { NON_TRIMMED } else { status };
            blocks.push(Block {
                pos: num(fields[0])?,
                size: num(fields[1])?,
                status,
            });
        }
        let mut expect = 0;
        for (i, b) in blocks.iter().enumerate() {
            if b.pos != expect || b.size == 0 {
                return Err(ParseError {
                    line: 0,
                    message: format!(
                        "block {} at 0x{:X} leaves a gap or overlaps (expected 0x{expect:X})",
                        i + 1,
                        b.pos
                    ),
                });
            }
            expect = b.pos.checked_add(b.size).ok_or_else(|| ParseError {
                line: 0,
                message: format!(
                    "block {} at 0x{:X} of 0x{:X} bytes ends past 2^64",
                    i + 1,
                    b.pos,
                    b.size
                ),
            })?;
        }
        let mut map = Map {
            size: expect,
            blocks: Vec::new(),
            fingerprint,
        };
        for b in blocks {
            map.blocks.push(b);
        }
        // Normalise (merge neighbours).
        if let Some(first) = map.blocks.first().copied() {
            map.set(first.pos, first.size, first.status);
        }
        Ok(map)
    }

    /// Read a mapfile.
    pub fn load(path: &Path) -> std::io::Result<Map> {
        let text = std::fs::read_to_string(path)?;
        Map::parse(&text).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })
    }

    /// Write the mapfile durably: a temporary file, fsync, rename.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let temp = path.with_extension("map.tmp");
        let mut f = std::fs::File::create(&temp)?;
        f.write_all(self.to_text().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&temp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_splits_and_merges() {
        let mut m = Map::new(10 * 2048);
        m.set(0, 4 * 2048, FINISHED);
        m.set(4 * 2048, 2048, BAD);
        m.set(6 * 2048, 4 * 2048, FINISHED);
        assert_eq!(m.blocks().len(), 4);
        assert_eq!(m.bad_lba_ranges(), [(4, 4)]);
        assert_eq!(m.areas(NON_TRIED), [(5 * 2048, 2048)]);
        m.set(5 * 2048, 2048, FINISHED);
        m.set(4 * 2048, 2048, FINISHED);
        assert_eq!(
            m.blocks(),
            [Block {
                pos: 0,
                size: 10 * 2048,
                status: FINISHED
            }]
        );
        assert!(m.complete());
    }

    #[test]
    fn round_trips_through_text_and_reads_ddrescue_maps() {
        let mut m = Map::new(0x10_0000);
        m.fingerprint = Some("abc123".into());
        m.set(0x800, 0x1000, BAD);
        m.set(0, 0x800, FINISHED);
        let again = Map::parse(&m.to_text()).unwrap();
        assert_eq!(again, m);

        let ddrescue = "# Mapfile. Created by GNU ddrescue version 1.27\n# Command line: ddrescue /dev/sr0 x.iso x.map\n\
            # current_pos  current_status  current_pass\n0x00010000     +               1\n\
            #      pos        size  status\n0x00000000  0x00008000  +\n0x00008000  0x00000800  /\n0x00008800  0x00007800  +\n";
        let m = Map::parse(ddrescue).unwrap();
        assert_eq!(m.size(), 0x10000);
        assert_eq!(m.areas(NON_TRIMMED), [(0x8000, 0x800)]);
        assert!(m.fingerprint.is_none());
    }

    #[test]
    fn rejects_broken_maps() {
        for bad in [
            "0x0 +\n0x0 0x800 x\n",
            "0x0 +\n0x800 0x800 +\n",
            "0x0 +\n0x0 0x800 +\n0x400 0x800 +\n",
            "0x0 +\n0x0 zz +\n",
        ] {
            assert!(Map::parse(bad).is_err(), "{bad:?}");
        }
    }
}
