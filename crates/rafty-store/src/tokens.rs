//! The bearer tokens a store accepts (`[store] token-file`, one per line), read again whenever the
//! file changes so that deleting a machine's line revokes it without a restart.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

/// Why the token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// It cannot be read.
    #[error("cannot read the token file {path} ([store] token-file): {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It holds no token.
    #[error(
        "the token file {0} ([store] token-file) holds no token: put one per line (e.g. from `openssl rand -hex 32`)"
    )]
    Empty(PathBuf),
    /// A token is too short to be a secret.
    #[error(
        "the token file {path} ([store] token-file) line {line}: a token must be at least 16 characters"
    )]
    Short {
        /// The file.
        path: PathBuf,
        /// The line.
        line: usize,
    },
}

/// The tokens in a file: non-empty lines, `#` comments ignored, surrounding space trimmed.
pub fn read_tokens(path: &Path) -> Result<Vec<String>, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut tokens = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if t.len() < 16 {
            return Err(TokenError::Short {
                path: path.to_owned(),
                line: i + 1,
            });
        }
        tokens.push(t.to_owned());
    }
    if tokens.is_empty() {
        return Err(TokenError::Empty(path.to_owned()));
    }
    Ok(tokens)
}

/// The accepted tokens, kept as digests (comparing digests leaks nothing of a token's bytes).
pub struct Tokens {
    path: PathBuf,
    state: Mutex<(Option<SystemTime>, Vec<[u8; 32]>)>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// Read the file; it must hold at least one token.
    pub fn load(path: &Path) -> Result<Tokens, TokenError> {
        let tokens = read_tokens(path)?;
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        Ok(Tokens {
            path: path.to_owned(),
            state: Mutex::new((modified, tokens.iter().map(|t| digest(t)).collect())),
        })
    }

    /// Whether `token` is accepted now. A file changed since the last look is read again; one that
    /// became unreadable or empty accepts nothing (closed, not open).
    pub fn accepts(&self, token: &str) -> bool {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let mut state = self.state.lock().expect("token state");
        if modified != state.0 || modified.is_none() {
            let fresh = read_tokens(&self.path).unwrap_or_else(|e| {
                tracing::error!(error = %e, "the token file is unusable: refusing every request until it is fixed");
                Vec::new()
            });
            *state = (modified, fresh.iter().map(|t| digest(t)).collect());
        }
        let d = digest(token);
        state.1.contains(&d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_line_revokes_its_token() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tokens");
        std::fs::write(
            &f,
            "# workers\nlaptop-0123456789abcdef\n\nnas-0123456789abcdef\n",
        )
        .unwrap();
        let tokens = Tokens::load(&f).unwrap();
        assert!(tokens.accepts("laptop-0123456789abcdef"));
        assert!(tokens.accepts("nas-0123456789abcdef"));
        assert!(!tokens.accepts("laptop-0123456789abcdeX"));
        assert!(!tokens.accepts("# workers"));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&f, "nas-0123456789abcdef\n").unwrap();
        // mtime granularity: make sure the change is seen.
        let later = SystemTime::now() + std::time::Duration::from_secs(2);
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(!tokens.accepts("laptop-0123456789abcdef"));
        assert!(tokens.accepts("nas-0123456789abcdef"));
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tokens");
        std::fs::write(&f, "# nothing\n").unwrap();
        assert!(
            read_tokens(&f)
                .unwrap_err()
                .to_string()
                .contains("holds no token")
        );
        std::fs::write(&f, "short\n").unwrap();
        assert!(read_tokens(&f).unwrap_err().to_string().contains("line 1"));
        let missing = dir.path().join("nope");
        assert!(
            read_tokens(&missing)
                .unwrap_err()
                .to_string()
                .contains("nope")
        );
    }
}
