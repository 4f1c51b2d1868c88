//! Destinations: one interface ([`Place`]) over a directory (`file://`, e.g. a USB disk) and
//! S3-compatible object storage (`s3://`, through the `object_store` crate, multipart for large
//! objects). Every write goes to a temporary name first, is read back and checked against its SHA-256,
//! and only then takes the object's name (a rename, or the completion of the upload), so a copy
//! that is there is a whole copy.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_lite::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use rafty_core::config::Destination;
use sha2::{Digest, Sha256};

/// Objects at least this large go up in parts (S3's single PUT tops out at 5 GB).
const MULTIPART_OVER: u64 = 64 << 20;
/// Size of each read, and of each part of a multipart upload.
const CHUNK: usize = 8 << 20;

/// What went wrong at a place, sorted by what the replicator does about it.
#[derive(Debug, thiserror::Error)]
pub enum DestError {
    /// The place cannot be reached (not mounted, connection refused, credentials refused): hold the
    /// backlog and probe.
    #[error("{0}")]
    Away(String),
    /// The place has no room: hold the backlog and probe, like away.
    #[error("{0}")]
    Full(String),
    /// No such object there.
    #[error("{0}")]
    Missing(String),
    /// Reading failed (an I/O error such as EIO).
    #[error("{0}")]
    Unreadable(String),
    /// What was read back is not what was written.
    #[error("{0}")]
    Corrupt(String),
}

impl DestError {
    /// Whether the whole place is unusable now (rather than this one object).
    pub fn is_place(&self) -> bool {
        matches!(self, DestError::Away(_) | DestError::Full(_))
    }
}

/// An object's size and SHA-256 (lower-case hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digested {
    /// Bytes.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// A destination.
#[derive(Clone)]
pub enum Place {
    /// A directory that must already exist (a missing one is a disk that is not mounted).
    Dir(PathBuf),
    /// An S3 bucket, under a prefix.
    S3 {
        /// The client.
        store: Arc<dyn ObjectStore>,
        /// The prefix every key goes under (may be empty).
        prefix: String,
        /// `s3://bucket/prefix`, for messages.
        url: String,
    },
}

impl Place {
    /// The place a configured destination names.
    pub fn open(d: &Destination) -> Result<Place, String> {
        if let Some(path) = d.url.strip_prefix("file://") {
            return Ok(Place::Dir(PathBuf::from(path)));
        }
        let Some(rest) = d.url.strip_prefix("s3://") else {
            return Err(format!(
                "destination {}: {} is neither file:///dir nor s3://bucket/prefix",
                d.name, d.url
            ));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(endpoint) = &d.endpoint {
            b = b.with_endpoint(endpoint);
        }
        if let Some(region) = &d.region {
            b = b.with_region(region);
        }
        if let Some(id) = &d.access_key_id {
            b = b.with_access_key_id(id);
        }
        if let Some(file) = &d.secret_access_key_file {
            let secret = std::fs::read_to_string(file).map_err(|e| {
                format!(
                    "destination {}: secret-access-key-file {}: {e}",
                    d.name,
                    file.display()
                )
            })?;
            b = b.with_secret_access_key(secret.trim());
        }
        let store = b
            .with_allow_http(d.allow_http)
            .with_virtual_hosted_style_request(false)
            .build()
            .map_err(|e| format!("destination {} ({}): {e}", d.name, d.url))?;
        Ok(Place::S3 {
            store: Arc::new(store),
            prefix: prefix.trim_matches('/').to_owned(),
            url: d.url.clone(),
        })
    }

    /// Where it is, for messages.
    pub fn describe(&self) -> String {
        match self {
            Place::Dir(root) => format!("file://{}", root.display()),
            Place::S3 { url, .. } => url.clone(),
        }
    }

    /// Whether an error message is about this place (rather than the local source).
    pub fn mentions(&self, message: &str) -> bool {
        match self {
            Place::Dir(root) => message.contains(&*root.to_string_lossy()),
            Place::S3 { url, .. } => message.contains(url.as_str()),
        }
    }

    /// Whether the place can take copies now (with `room`: and has that many bytes free, after a
    /// copy found it full; a directory only, S3 has no such figure).
    pub async fn probe(&self, room: Option<u64>) -> Result<(), DestError> {
        match self {
            Place::Dir(root) => {
                let root = dir_root(root)?;
                let Some(need) = room else { return Ok(()) };
                let st = nix::sys::statvfs::statvfs(&root)
                    .map_err(|e| DestError::Away(format!("{}: {e}", root.display())))?;
                let free = st.blocks_available() as u64 * st.fragment_size() as u64;
                if free < need {
                    return Err(DestError::Full(format!(
                        "{}: No space left on device: {free} bytes free, the next copy needs {need}",
                        root.display()
                    )));
                }
                Ok(())
            }
            Place::S3 { store, prefix, .. } => {
                let probe = object_path(prefix, "ledger.json");
                match store.head(&probe).await {
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(DestError::Away(format!("{}: {e}", self.describe()))),
                }
            }
        }
    }

    /// Read the object `key` whole and hash it; `Missing` when it is not there.
    pub async fn digest(&self, key: &str) -> Result<Digested, DestError> {
        match self {
            Place::Dir(root) => {
                let root = dir_root(root)?;
                let path = root.join(key);
                blocking(move || digest_file(&path)).await
            }
            Place::S3 { store, prefix, .. } => {
                let got = store
                    .get(&object_path(prefix, key))
                    .await
                    .map_err(|e| s3_error(self, key, e))?;
                let mut stream = got.into_stream();
                let mut hasher = Sha256::new();
                let mut size = 0u64;
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| {
                        DestError::Unreadable(format!("{}/{key}: {e}", self.describe()))
                    })?;
                    size += chunk.len() as u64;
                    hasher.update(&chunk);
                }
                Ok(Digested {
                    size,
                    sha256: hex(&hasher.finalize()),
                })
            }
        }
    }

    /// Copy the object `key` to the local file `to` (created; removed again on failure), hashing
    /// what was read.
    pub async fn fetch(&self, key: &str, to: &Path) -> Result<Digested, DestError> {
        let result = match self {
            Place::Dir(root) => {
                let from = dir_root(root)?.join(key);
                let to = to.to_owned();
                blocking(move || copy_hashing(&from, &to)).await
            }
            Place::S3 { store, prefix, .. } => {
                let got = store
                    .get(&object_path(prefix, key))
                    .await
                    .map_err(|e| s3_error(self, key, e))?;
                let mut stream = got.into_stream();
                let mut out = std::fs::File::create(to)
                    .map_err(|e| local_error(to, &e, DestError::Unreadable))?;
                let mut hasher = Sha256::new();
                let mut size = 0u64;
                let mut result = Ok(());
                while let Some(chunk) = stream.next().await {
                    match chunk {
                        Ok(chunk) => {
                            size += chunk.len() as u64;
                            hasher.update(&chunk);
                            if let Err(e) = out.write_all(&chunk) {
                                result = Err(local_error(to, &e, DestError::Unreadable));
                                break;
                            }
                        }
                        Err(e) => {
                            result = Err(DestError::Unreadable(format!(
                                "{}/{key}: {e}",
                                self.describe()
                            )));
                            break;
                        }
                    }
                }
                result.and_then(|()| {
                    out.sync_all()
                        .map_err(|e| local_error(to, &e, DestError::Unreadable))?;
                    Ok(Digested {
                        size,
                        sha256: hex(&hasher.finalize()),
                    })
                })
            }
        };
        if result.is_err() {
            let _ = std::fs::remove_file(to);
        }
        result
    }

    /// Put the local file `from` at `key`, which must come out as `want` (the ledger's size and
    /// SHA-256): the bytes read from `from` are hashed on the way (a library copy that rotted is
    /// not spread), written under a temporary name, read back and checked, and only then named.
    /// An object already at `key` is replaced only by this verified copy (it is a damaged copy of
    /// the same object: the ledger says which object a key is).
    pub async fn put(&self, key: &str, from: &Path, want: &Digested) -> Result<(), DestError> {
        match self {
            Place::Dir(root) => {
                let root = dir_root(root)?;
                let (key, from, want) = (key.to_owned(), from.to_owned(), want.clone());
                blocking(move || put_dir(&root, &key, &from, &want)).await
            }
            Place::S3 { store, prefix, .. } => {
                self.put_s3(store.as_ref(), prefix, key, from, want).await
            }
        }
    }

    async fn put_s3(
        &self,
        store: &dyn ObjectStore,
        prefix: &str,
        key: &str,
        from: &Path,
        want: &Digested,
    ) -> Result<(), DestError> {
        let path = object_path(prefix, key);
        let mut file =
            std::fs::File::open(from).map_err(|e| local_error(from, &e, DestError::Unreadable))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        if want.size < MULTIPART_OVER {
            let mut data = Vec::with_capacity(want.size as usize);
            file.read_to_end(&mut data)
                .map_err(|e| local_error(from, &e, DestError::Unreadable))?;
            hasher.update(&data);
            check_source(from, data.len() as u64, &hasher.finalize_reset(), want)?;
            store
                .put(&path, PutPayload::from(bytes::Bytes::from(data)))
                .await
                .map_err(|e| s3_error(self, key, e))?;
        } else {
            let upload = store
                .put_multipart(&path)
                .await
                .map_err(|e| s3_error(self, key, e))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, CHUNK);
            let mut size = 0u64;
            loop {
                let n = match file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = writer.abort().await;
                        return Err(local_error(from, &e, DestError::Unreadable));
                    }
                };
                size += n as u64;
                hasher.update(&buf[..n]);
                if let Err(e) = writer.wait_for_capacity(4).await {
                    return Err(s3_error(self, key, e));
                }
                writer.write(&buf[..n]);
            }
            // The upload is completed (the object appears) only for a source that hashed right.
            if let Err(e) = check_source(from, size, &hasher.finalize_reset(), want) {
                let _ = writer.abort().await;
                return Err(e);
            }
            writer.finish().await.map_err(|e| s3_error(self, key, e))?;
        }
        let got = self.digest(key).await?;
        if &got != want {
            let _ = store.delete(&path).await;
            return Err(DestError::Corrupt(format!(
                "{}/{key} read back as {} bytes, sha256 {} (sent {} bytes, {}); removed",
                self.describe(),
                got.size,
                got.sha256,
                want.size,
                want.sha256
            )));
        }
        Ok(())
    }

    /// Put small bytes at `key` (the ledger's copy), replacing what is there.
    pub async fn put_bytes(&self, key: &str, data: Vec<u8>) -> Result<(), DestError> {
        match self {
            Place::Dir(root) => {
                let root = dir_root(root)?;
                let key = key.to_owned();
                blocking(move || {
                    let path = root.join(&key);
                    let temp = temp_beside(&path);
                    let written = (|| {
                        let mut f = std::fs::File::create(&temp)?;
                        f.write_all(&data)?;
                        f.sync_all()?;
                        std::fs::rename(&temp, &path)
                    })();
                    written.map_err(|e| {
                        let _ = std::fs::remove_file(&temp);
                        local_error(&path, &e, DestError::Away)
                    })
                })
                .await
            }
            Place::S3 { store, prefix, .. } => store
                .put(
                    &object_path(prefix, key),
                    PutPayload::from(bytes::Bytes::from(data)),
                )
                .await
                .map(|_| ())
                .map_err(|e| s3_error(self, key, e)),
        }
    }

    /// The local path of `key`, for a directory place (to decode a video where it lies).
    pub fn local(&self, key: &str) -> Option<PathBuf> {
        match self {
            Place::Dir(root) => Some(root.join(key)),
            Place::S3 { .. } => None,
        }
    }
}

/// The directory's root, which must exist: a mount point whose disk is away has no `rafty/` in it.
fn dir_root(root: &Path) -> Result<PathBuf, DestError> {
    match std::fs::metadata(root) {
        Ok(m) if m.is_dir() => Ok(root.to_owned()),
        Ok(_) => Err(DestError::Away(format!(
            "{} is not a directory",
            root.display()
        ))),
        Err(e) => Err(DestError::Away(format!(
            "{}: {e} (is the disk mounted? create the directory once it is)",
            root.display()
        ))),
    }
}

fn put_dir(root: &Path, key: &str, from: &Path, want: &Digested) -> Result<(), DestError> {
    let path = root.join(key);
    let dir = path.parent().expect("keys have a directory");
    std::fs::create_dir_all(dir).map_err(|e| local_error(dir, &e, DestError::Away))?;
    let temp = temp_beside(&path);
    let result = (|| {
        let got = copy_hashing(from, &temp)?;
        check_source(from, got.size, &unhex(&got.sha256), want)?;
        let back = digest_file(&temp)?;
        if &back != want {
            return Err(DestError::Corrupt(format!(
                "{} read back as {} bytes, sha256 {} (wrote {} bytes, {})",
                temp.display(),
                back.size,
                back.sha256,
                want.size,
                want.sha256
            )));
        }
        std::fs::rename(&temp, &path).map_err(|e| local_error(&path, &e, DestError::Away))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| local_error(dir, &e, DestError::Away))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// The source must be what the ledger says, or the copy would spread a damaged file.
fn check_source(from: &Path, size: u64, sha: &[u8], want: &Digested) -> Result<(), DestError> {
    let sha = hex(sha);
    if size != want.size || sha != want.sha256 {
        return Err(DestError::Corrupt(format!(
            "the source {} is {size} bytes, sha256 {sha}, but the ledger says {} bytes, {}: not copied (raftyctl audit --repair mends the library from a good copy)",
            from.display(),
            want.size,
            want.sha256
        )));
    }
    Ok(())
}

/// A hidden temporary name beside `path`, unique to this attempt.
fn temp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".{name}.{}.rafty-tmp",
        uuid::Uuid::new_v4().simple()
    ))
}

/// Copy `from` to a new file `to` (fsynced), hashing what was read.
pub fn copy_hashing(from: &Path, to: &Path) -> Result<Digested, DestError> {
    let mut src = std::fs::File::open(from).map_err(|e| source_error(from, &e))?;
    let mut dst = std::fs::File::create(to).map_err(|e| local_error(to, &e, DestError::Away))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(source_error(from, &e)),
        };
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n])
            .map_err(|e| local_error(to, &e, DestError::Away))?;
        size += n as u64;
    }
    dst.sync_all()
        .map_err(|e| local_error(to, &e, DestError::Away))?;
    Ok(Digested {
        size,
        sha256: hex(&hasher.finalize()),
    })
}

/// Read a local file whole and hash it.
pub fn digest_file(path: &Path) -> Result<Digested, DestError> {
    let mut f = std::fs::File::open(path).map_err(|e| source_error(path, &e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                size += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(source_error(path, &e)),
        }
    }
    Ok(Digested {
        size,
        sha256: hex(&hasher.finalize()),
    })
}

/// An error reading an object that should be there.
fn source_error(path: &Path, e: &io::Error) -> DestError {
    if e.kind() == io::ErrorKind::NotFound {
        DestError::Missing(format!("{}: not there", path.display()))
    } else {
        DestError::Unreadable(format!("{}: {e}", path.display()))
    }
}

/// An error writing at a place: no room is `Full`, anything else `other`.
fn local_error(path: &Path, e: &io::Error, other: fn(String) -> DestError) -> DestError {
    if e.raw_os_error() == Some(libc_enospc()) || e.kind() == io::ErrorKind::StorageFull {
        DestError::Full(format!("{}: {e}", path.display()))
    } else {
        other(format!("{}: {e}", path.display()))
    }
}

fn libc_enospc() -> i32 {
    nix::errno::Errno::ENOSPC as i32
}

fn s3_error(place: &Place, key: &str, e: object_store::Error) -> DestError {
    match e {
        object_store::Error::NotFound { .. } => {
            DestError::Missing(format!("{}/{key}: not there", place.describe()))
        }
        e => DestError::Away(format!("{}/{key}: {e}", place.describe())),
    }
}

fn object_path(prefix: &str, key: &str) -> ObjectPath {
    let full = if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}/{key}")
    };
    // Verbatim, so a key with spaces or non-ASCII letters is the same key at S3 as in the library
    // (`from_iter` would percent-encode non-ASCII bytes into the key itself). Only a name with
    // control characters, which `parse` refuses, is stored encoded.
    ObjectPath::parse(&full)
        .unwrap_or_else(|_| ObjectPath::from_iter(full.split('/').filter(|p| !p.is_empty())))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DestError> + Send + 'static,
) -> Result<T, DestError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(DestError::Unreadable(format!("copy task failed: {e}"))))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dir_copy_is_verified_and_named_only_when_whole() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("dest");
        std::fs::create_dir(&root).unwrap();
        let src = dir.path().join("a b é.iso");
        std::fs::write(&src, b"hello").unwrap();
        let want = digest_file(&src).unwrap();
        let place = Place::Dir(root.clone());
        place.put("iso/a b é.iso", &src, &want).await.unwrap();
        assert_eq!(place.digest("iso/a b é.iso").await.unwrap(), want);

        // A source that is not what the ledger says is refused, and leaves nothing behind.
        let wrong = Digested {
            size: 5,
            sha256: "00".repeat(32),
        };
        let e = place.put("iso/other.iso", &src, &wrong).await.unwrap_err();
        assert!(matches!(e, DestError::Corrupt(_)), "{e}");
        let names: Vec<_> = std::fs::read_dir(root.join("iso"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a b é.iso")]);
    }

    #[tokio::test]
    async fn a_missing_root_is_away_and_is_never_created() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("unplugged");
        let place = Place::Dir(root.clone());
        assert!(matches!(place.probe(None).await, Err(DestError::Away(_))));
        let src = dir.path().join("x");
        std::fs::write(&src, b"x").unwrap();
        let want = digest_file(&src).unwrap();
        let e = place.put("iso/x", &src, &want).await.unwrap_err();
        assert!(e.is_place(), "{e}");
        assert!(!root.exists());
    }
}
