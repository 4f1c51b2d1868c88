//! Where a job's source is on this machine, and whether it may be read.
//!
//! A job carries the producer's path. The worker maps it with `path-map` (longest matching prefix),
//! refuses anything outside the allowed source roots (checked on the path as given and again after
//! symlinks are resolved), and reports a missing file as possibly temporary: shared storage can lag.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use crate::Failure;

/// Translate a producer's path with the longest matching prefix of `map`.
pub fn map_path(path: &Path, map: &BTreeMap<PathBuf, PathBuf>) -> PathBuf {
    map.iter()
        .filter(|(from, _)| path.starts_with(from))
        .max_by_key(|(from, _)| from.components().count())
        .map(|(from, to)| to.join(path.strip_prefix(from).expect("checked by starts_with")))
        .unwrap_or_else(|| path.to_path_buf())
}

/// Resolve a job's source to a readable file on this machine, inside one of `roots`.
pub fn resolve_source(
    path: &Path,
    map: &BTreeMap<PathBuf, PathBuf>,
    roots: &[PathBuf],
) -> Result<PathBuf, Failure> {
    let mapped = map_path(path, map);
    let shown = if mapped == path {
        format!("{}", path.display())
    } else {
        format!("{} (mapped from {})", mapped.display(), path.display())
    };
    let roots_shown = || {
        roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if mapped
        .components()
        .any(|c| matches!(c, Component::ParentDir))
        || !mapped.is_absolute()
    {
        return Err(Failure::SourceOutsideRoots(format!(
            "{shown} is not a plain absolute path; allowed roots: {}",
            roots_shown()
        )));
    }
    // Roots may be reached through symlinks (and producers publish canonical paths), so a path counts
    // as inside when it is under a root as written or under the root's real location; the check after
    // canonicalisation below is the one that confines.
    let real_roots: Vec<PathBuf> = roots
        .iter()
        .map(|r| std::fs::canonicalize(r).unwrap_or_else(|_| r.clone()))
        .collect();
    if !roots
        .iter()
        .chain(&real_roots)
        .any(|root| mapped.starts_with(root))
    {
        return Err(Failure::SourceOutsideRoots(format!(
            "{shown} is outside the allowed source roots ({}); add its directory to [transcode] source-roots or path-map",
            roots_shown()
        )));
    }
    let real = std::fs::canonicalize(&mapped)
        .map_err(|e| Failure::SourceUnavailable(format!("{shown}: {e}")))?;
    if !real_roots.iter().any(|root| real.starts_with(root)) {
        return Err(Failure::SourceOutsideRoots(format!(
            "{shown} resolves to {}, outside the allowed source roots ({})",
            real.display(),
            roots_shown()
        )));
    }
    let meta = std::fs::metadata(&real)
        .map_err(|e| Failure::SourceUnavailable(format!("{shown}: {e}")))?;
    if !meta.is_file() {
        return Err(Failure::SourceUnavailable(format!(
            "{shown} is not a regular file"
        )));
    }
    std::fs::File::open(&real).map_err(|e| Failure::SourceUnavailable(format!("{shown}: {e}")))?;
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins() {
        let map = BTreeMap::from([
            (PathBuf::from("/srv"), PathBuf::from("/mnt/srv")),
            (PathBuf::from("/srv/iso"), PathBuf::from("/nas/iso")),
        ]);
        assert_eq!(
            map_path(Path::new("/srv/iso/a.iso"), &map),
            Path::new("/nas/iso/a.iso")
        );
        assert_eq!(
            map_path(Path::new("/srv/x/a.iso"), &map),
            Path::new("/mnt/srv/x/a.iso")
        );
        assert_eq!(
            map_path(Path::new("/srvx/a.iso"), &map),
            Path::new("/srvx/a.iso")
        );
    }

    #[test]
    fn sources_are_confined_to_roots() {
        let base = std::env::temp_dir().join(format!("rafty-paths-{}", std::process::id()));
        let root = base.join("root");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(base.join("secret.iso"), b"x").unwrap();
        std::fs::write(root.join("ok.iso"), b"x").unwrap();
        std::os::unix::fs::symlink(base.join("secret.iso"), root.join("link.iso")).unwrap();
        let roots = [root.clone()];
        let none = BTreeMap::new();
        assert!(resolve_source(&root.join("ok.iso"), &none, &roots).is_ok());
        let outside = |p: &Path| {
            matches!(
                resolve_source(p, &none, &roots),
                Err(Failure::SourceOutsideRoots(_))
            )
        };
        assert!(outside(&base.join("secret.iso")));
        assert!(
            outside(&root.join("link.iso")),
            "a symlink out of the root is refused"
        );
        assert!(outside(&root.join("../secret.iso")));
        assert!(matches!(
            resolve_source(&root.join("missing.iso"), &none, &roots),
            Err(Failure::SourceUnavailable(_))
        ));
        // A root reached through a symlink accepts the canonical paths producers publish.
        let link = base.join("root-link");
        std::os::unix::fs::symlink(&root, &link).unwrap();
        let canonical = root.canonicalize().unwrap().join("ok.iso");
        assert!(resolve_source(&canonical, &none, std::slice::from_ref(&link)).is_ok());
        assert!(resolve_source(&link.join("ok.iso"), &none, &[link]).is_ok());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
