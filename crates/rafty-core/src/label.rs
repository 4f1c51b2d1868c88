//! What a disc image says about itself: its volume label (ISO 9660 and UDF descriptors) and whether
//! it holds DVD-Video (`VIDEO_TS`) or Blu-ray (`BDMV`).
//!
//! Only a few sectors are read, so this is cheap on a multi-gigabyte image. A label from UDF's Logical
//! Volume Descriptor wins over ISO 9660's (it is longer and keeps its case); the media is read from the
//! ISO 9660 root directory, which DVD and most Blu-ray images carry beside UDF.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use crate::Media;

const SECTOR: u64 = 2048;
/// How much of a directory extent is read at most.
const MAX_DIR_BYTES: u32 = 256 * 1024;

/// What an image's descriptors say.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DiscInfo {
    /// Volume label, trimmed; `None` when the image has none.
    pub label: Option<String>,
    /// The media, when the root directory tells it (`VIDEO_TS` → DVD, `BDMV` → Blu-ray).
    pub media: Option<Media>,
    /// Whether an ISO 9660 or UDF descriptor was found at all.
    pub recognised: bool,
}

/// Read the descriptors of the image at `path`.
pub fn read_disc_info(path: &Path) -> io::Result<DiscInfo> {
    let mut file = std::fs::File::open(path)?;
    disc_info(&mut file)
}

/// Read the descriptors from any seekable image.
pub fn disc_info<R: Read + Seek>(r: &mut R) -> io::Result<DiscInfo> {
    let mut info = DiscInfo::default();
    let iso = iso9660(r)?;
    let udf_label = udf_label(r)?;
    if let Some((label, media)) = iso {
        info.recognised = true;
        info.label = label;
        info.media = media;
    }
    if let Some(label) = udf_label {
        info.recognised = true;
        if !label.is_empty() {
            info.label = Some(label);
        }
    }
    Ok(info)
}

fn read_sector<R: Read + Seek>(r: &mut R, lba: u64) -> io::Result<Option<[u8; SECTOR as usize]>> {
    let mut buf = [0u8; SECTOR as usize];
    r.seek(SeekFrom::Start(lba * SECTOR))?;
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..])? {
            0 => return Ok(None),
            n => filled += n,
        }
    }
    Ok(Some(buf))
}

fn u32_le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn clean(text: &str) -> Option<String> {
    let t = text
        .trim_matches(|c: char| c == ' ' || c == '\0')
        .to_owned();
    (!t.is_empty()).then_some(t)
}

/// ISO 9660: the primary volume descriptor's label and the media from the root directory.
#[allow(clippy::type_complexity)]
fn iso9660<R: Read + Seek>(r: &mut R) -> io::Result<Option<(Option<String>, Option<Media>)>> {
    for lba in 16..48 {
        let Some(d) = read_sector(r, lba)? else {
            return Ok(None);
        };
        if &d[1..6] != b"CD001" {
            return Ok(None);
        }
        match d[0] {
            1 => {
                let label = clean(&String::from_utf8_lossy(&d[40..72]));
                let root = &d[156..156 + 34];
                let media = root_media(r, u32_le(root, 2), u32_le(root, 10))?;
                return Ok(Some((label, media)));
            }
            255 => return Ok(None),
            _ => {}
        }
    }
    Ok(None)
}

fn root_media<R: Read + Seek>(r: &mut R, extent: u32, len: u32) -> io::Result<Option<Media>> {
    let len = len.min(MAX_DIR_BYTES);
    let sectors = u64::from(len).div_ceil(SECTOR);
    for i in 0..sectors {
        let Some(s) = read_sector(r, u64::from(extent) + i)? else {
            return Ok(None);
        };
        let mut at = 0usize;
        while at < s.len() {
            let rec_len = s[at] as usize;
            if rec_len < 34 || at + rec_len > s.len() {
                break;
            }
            let name_len = s[at + 32] as usize;
            if 33 + name_len <= rec_len {
                let name = &s[at + 33..at + 33 + name_len];
                let is_dir = s[at + 25] & 2 != 0;
                if is_dir && name.eq_ignore_ascii_case(b"VIDEO_TS") {
                    return Ok(Some(Media::Dvd));
                }
                if is_dir && name.eq_ignore_ascii_case(b"BDMV") {
                    return Ok(Some(Media::Bluray));
                }
            }
            at += rec_len;
        }
    }
    Ok(None)
}

/// UDF: the Logical Volume Identifier, found through the anchor at sector 256.
fn udf_label<R: Read + Seek>(r: &mut R) -> io::Result<Option<String>> {
    let Some(anchor) = read_sector(r, 256)? else {
        return Ok(None);
    };
    if u16::from_le_bytes([anchor[0], anchor[1]]) != 2 {
        return Ok(None);
    }
    let len = u32_le(&anchor, 16);
    let loc = u32_le(&anchor, 20);
    let sectors = u64::from(len.min(64 * SECTOR as u32)).div_ceil(SECTOR);
    for i in 0..sectors {
        let Some(d) = read_sector(r, u64::from(loc) + i)? else {
            return Ok(None);
        };
        match u16::from_le_bytes([d[0], d[1]]) {
            6 => return Ok(Some(dstring(&d[84..84 + 128]).unwrap_or_default())),
            8 => break,
            _ => {}
        }
    }
    Ok(None)
}

/// Decode a UDF `dstring`: a compression id (8: Latin-1, 16: UTF-16BE), the characters, the length last.
fn dstring(field: &[u8]) -> Option<String> {
    let used = *field.last()? as usize;
    if used < 1 || used > field.len() - 1 {
        return None;
    }
    let body = &field[1..used];
    let text = match field[0] {
        8 => body.iter().map(|&b| b as char).collect::<String>(),
        16 => {
            let units: Vec<u16> = body
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        }
        _ => return None,
    };
    clean(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn image_with(pvd_label: &str, dir_name: &[u8], udf: Option<&[u8]>) -> Vec<u8> {
        let mut img = vec![0u8; 300 * SECTOR as usize];
        let pvd = 16 * SECTOR as usize;
        img[pvd] = 1;
        img[pvd + 1..pvd + 6].copy_from_slice(b"CD001");
        let mut label = [b' '; 32];
        label[..pvd_label.len()].copy_from_slice(pvd_label.as_bytes());
        img[pvd + 40..pvd + 72].copy_from_slice(&label);
        img[pvd + 156 + 2..pvd + 156 + 6].copy_from_slice(&20u32.to_le_bytes());
        img[pvd + 156 + 10..pvd + 156 + 14].copy_from_slice(&2048u32.to_le_bytes());
        let term = 17 * SECTOR as usize;
        img[term] = 255;
        img[term + 1..term + 6].copy_from_slice(b"CD001");
        let dir = 20 * SECTOR as usize;
        for (i, name) in [&b"\0"[..], b"\x01", dir_name].iter().enumerate() {
            let at = dir + i * 64;
            img[at] = 64;
            img[at + 25] = 2;
            img[at + 32] = name.len() as u8;
            img[at + 33..at + 33 + name.len()].copy_from_slice(name);
        }
        if let Some(udf) = udf {
            let anchor = 256 * SECTOR as usize;
            img[anchor] = 2;
            img[anchor + 16..anchor + 20].copy_from_slice(&(4 * 2048u32).to_le_bytes());
            img[anchor + 20..anchor + 24].copy_from_slice(&260u32.to_le_bytes());
            let lvd = 261 * SECTOR as usize;
            img[lvd] = 6;
            img[lvd + 84..lvd + 84 + udf.len()].copy_from_slice(udf);
            img[lvd + 84 + 127] = udf.len() as u8;
        }
        img
    }

    #[test]
    fn reads_iso9660_label_and_media() {
        let info = disc_info(&mut Cursor::new(image_with(
            "FEATURE_DISC",
            b"VIDEO_TS",
            None,
        )))
        .unwrap();
        assert_eq!(info.label.as_deref(), Some("FEATURE_DISC"));
        assert_eq!(info.media, Some(Media::Dvd));
        let info = disc_info(&mut Cursor::new(image_with("BD", b"BDMV", None))).unwrap();
        assert_eq!(info.media, Some(Media::Bluray));
        let info = disc_info(&mut Cursor::new(image_with("DATA", b"DOCS", None))).unwrap();
        assert_eq!(info.media, None);
    }

    #[test]
    fn udf_label_wins_and_decodes_utf16() {
        let mut udf = vec![16u8];
        for u in "Fëature Disc".encode_utf16() {
            udf.extend_from_slice(&u.to_be_bytes());
        }
        let info = disc_info(&mut Cursor::new(image_with(
            "FEATURE",
            b"VIDEO_TS",
            Some(&udf),
        )))
        .unwrap();
        assert_eq!(info.label.as_deref(), Some("Fëature Disc"));
    }

    #[test]
    fn garbage_is_not_recognised() {
        let junk: Vec<u8> = (0..600_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let info = disc_info(&mut Cursor::new(junk)).unwrap();
        assert!(!info.recognised);
        assert_eq!(
            disc_info(&mut Cursor::new(vec![0u8; 10])).unwrap(),
            DiscInfo::default()
        );
    }
}
