//! What disc this is, and where its image goes.
//!
//! The fingerprint hashes the disc's size and its first 2 MiB after the system area (the ISO 9660 and
//! UDF descriptors and directories): the same disc gives the same fingerprint in any drive, and two
//! discs with the same label almost never share it, since their file layouts differ. Image names come
//! from the volume label; a different disc with a label already used gets `Label (2).iso`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rafty_core::config::DuplicatePolicy;
use sha2::{Digest, Sha256};

use crate::copy::SECTOR;
use crate::mapfile::Map;

/// First sector hashed (the 32 KiB system area before it is often blank on every disc).
const FIRST: u64 = 16;
/// Sectors hashed (2 MiB).
const COUNT: u64 = 1024;

/// The fingerprint of a disc or image: 16 hex digits. Unreadable sectors count as zeros.
pub fn fingerprint(path: &Path, size: u64) -> io::Result<String> {
    let f = File::open(path)?;
    let mut h = Sha256::new();
    h.update(size.to_le_bytes());
    let end = size.div_ceil(SECTOR).min(FIRST + COUNT);
    let mut buf = vec![0u8; SECTOR as usize];
    for lba in FIRST..end {
        let want = (size - lba * SECTOR).min(SECTOR) as usize;
        buf[..want].fill(0);
        let _ = f.read_exact_at(&mut buf[..want], lba * SECTOR);
        h.update(&buf[..want]);
    }
    Ok(h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// A file name made from a volume label: separators and control characters replaced, no leading
/// dot, at most 100 characters; `disc` when the label is empty.
pub fn image_base_name(label: Option<&str>) -> String {
    let cleaned: String = label
        .unwrap_or("")
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    let cleaned = cleaned.replace("..", "_");
    let cleaned = cleaned.trim().trim_start_matches('.').trim();
    // At most 100 bytes (on a character boundary): with " (NN).iso" and the worker's " - tNN.mkv" and
    // ".rafty.json" it stays well inside a file name's 255 bytes and a job's 180-byte output name.
    let mut end = cleaned.len().min(100);
    while !cleaned.is_char_boundary(end) {
        end -= 1;
    }
    let cleaned = cleaned[..end].trim_end().to_owned();
    if cleaned.is_empty() {
        "disc".to_owned()
    } else {
        cleaned
    }
}

/// Where a copy goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// This disc was copied before, to this image (duplicate policy `skip`).
    AlreadyDone(PathBuf),
    /// Copy (or resume copying) into `part` with the map `map`, then rename to `image`.
    Copy {
        /// The final image path.
        image: PathBuf,
        /// The partial image (`<image>.part`).
        part: PathBuf,
        /// The ddrescue map (`<image>.map`).
        map: PathBuf,
        /// Whether a partial copy of this disc is resumed.
        resume: bool,
    },
}

fn copy_plan(image: PathBuf, resume: bool) -> Plan {
    let with = |ext: &str| {
        let mut s = image.clone().into_os_string();
        s.push(ext);
        PathBuf::from(s)
    };
    Plan::Copy {
        part: with(".part"),
        map: with(".map"),
        image,
        resume,
    }
}

/// Decide where the disc with this fingerprint goes in `dir`.
pub fn plan(dir: &Path, base: &str, fp: &str, duplicate: DuplicatePolicy) -> io::Result<Plan> {
    // A partial copy of this disc, under whatever name it was given, is resumed.
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some(image) = name.strip_suffix(".map")
            && image.ends_with(".iso")
            && let Ok(map) = Map::load(&path)
            && map.fingerprint.as_deref() == Some(fp)
        {
            let image = dir.join(image);
            let mut part = image.clone().into_os_string();
            part.push(".part");
            if Path::new(&part).exists() {
                return Ok(copy_plan(image, true));
            }
        }
    }
    for n in 1.. {
        let name = if n == 1 {
            format!("{base}.iso")
        } else {
            format!("{base} ({n}).iso")
        };
        let image = dir.join(&name);
        let taken_by_partial =
            dir.join(format!("{name}.map")).exists() || dir.join(format!("{name}.part")).exists();
        match std::fs::metadata(&image) {
            Ok(meta) => {
                if duplicate == DuplicatePolicy::Skip && fingerprint(&image, meta.len())? == fp {
                    return Ok(Plan::AlreadyDone(image));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && !taken_by_partial => {
                // Claim the name by creating the partial file: two drives copying discs with one
                // label at once get different names, never one partial file.
                let plan = copy_plan(image, false);
                let Plan::Copy { part, .. } = &plan else {
                    unreachable!("a copy plan")
                };
                match std::fs::File::options()
                    .write(true)
                    .create_new(true)
                    .open(part)
                {
                    Ok(_) => return Ok(plan),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    unreachable!("some name is free")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_labels() {
        assert_eq!(image_base_name(Some("FEATURE_DISC")), "FEATURE_DISC");
        assert_eq!(image_base_name(Some("../a/b\u{7}")), "__a_b_");
        assert_eq!(image_base_name(Some("   ")), "disc");
        assert_eq!(image_base_name(None), "disc");
        assert_eq!(image_base_name(Some(&"x".repeat(300))).len(), 100);
        assert_eq!(
            image_base_name(Some(&"é".repeat(300))).len(),
            100,
            "bytes, not characters"
        );
        assert_eq!(image_base_name(Some("A..B")), "A_B");
    }

    #[test]
    fn same_label_other_disc_gets_a_new_name_and_same_disc_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let a: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let b: Vec<u8> = (0..200_000u32).map(|i| (i / 3) as u8).collect();
        std::fs::write(dir.path().join("a.src"), &a).unwrap();
        std::fs::write(dir.path().join("b.src"), &b).unwrap();
        let fa = fingerprint(&dir.path().join("a.src"), a.len() as u64).unwrap();
        let fb = fingerprint(&dir.path().join("b.src"), b.len() as u64).unwrap();
        assert_ne!(fa, fb);
        assert_eq!(
            fa,
            fingerprint(&dir.path().join("a.src"), a.len() as u64).unwrap(),
            "stable"
        );

        let first = plan(dir.path(), "LABEL", &fa, DuplicatePolicy::Skip).unwrap();
        let Plan::Copy {
            image,
            resume: false,
            ..
        } = &first
        else {
            panic!("{first:?}")
        };
        assert_eq!(image, &dir.path().join("LABEL.iso"));
        std::fs::write(image, &a).unwrap();

        assert_eq!(
            plan(dir.path(), "LABEL", &fa, DuplicatePolicy::Skip).unwrap(),
            Plan::AlreadyDone(dir.path().join("LABEL.iso"))
        );
        let Plan::Copy { image, part, .. } =
            plan(dir.path(), "LABEL", &fa, DuplicatePolicy::Copy).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            image,
            dir.path().join("LABEL (2).iso"),
            "policy copy: a second image"
        );
        assert!(
            part.exists(),
            "the plan claims its name with the partial file"
        );
        assert!(
            matches!(plan(dir.path(), "LABEL", &fa, DuplicatePolicy::Copy).unwrap(),
                Plan::Copy { image, .. } if image == dir.path().join("LABEL (3).iso")),
            "a claimed name is not given twice"
        );
        std::fs::remove_file(part).unwrap();
        std::fs::remove_file(dir.path().join("LABEL (3).iso.part")).unwrap();
        let Plan::Copy {
            image, part, map, ..
        } = plan(dir.path(), "LABEL", &fb, DuplicatePolicy::Skip).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            image,
            dir.path().join("LABEL (2).iso"),
            "another disc, same label"
        );

        // A partial copy of disc b is resumed under its name.
        std::fs::write(&part, b"").unwrap();
        let mut m = Map::new(b.len() as u64);
        m.fingerprint = Some(fb.clone());
        m.save(&map).unwrap();
        assert!(matches!(
            plan(dir.path(), "OTHER", &fb, DuplicatePolicy::Skip).unwrap(),
            Plan::Copy { resume: true, image: i, .. } if i == dir.path().join("LABEL (2).iso")
        ));
    }
}
