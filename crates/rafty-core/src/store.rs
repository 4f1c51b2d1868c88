//! Where `rafty-store` keeps things in its URL space: pure functions shared by the producers that
//! write `source.url`, the store that serves it and the workers that fetch it (docs/store.md).
//!
//! An image is `/v1/images/<its absolute path on the store's machine, each component
//! percent-encoded>`. The reverse mapping refuses anything that is not a plain absolute path: empty
//! segments (`//`), `.` and `..` (also percent-encoded), encoded slashes and NUL bytes. The store
//! then confines the path to its source roots as a worker would ([`crate::paths::resolve_source`]).

use std::path::{Component, Path, PathBuf};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// Prefix of every image's URL path.
pub const IMAGES_PREFIX: &str = "/v1/images/";
/// The store's health check (authenticated: a worker learns from it whether its token works).
pub const HEALTH_PATH: &str = "/v1/health";
/// Where a worker offers an output (`POST`), and finds one (`GET /v1/outputs/<relative path>`).
pub const OUTPUTS_PREFIX: &str = "/v1/outputs";
/// Upload sessions: `PATCH`/`HEAD /v1/uploads/<id>`, `POST /v1/uploads/<id>/commit`.
pub const UPLOADS_PREFIX: &str = "/v1/uploads";
/// Header carrying an upload's offset (the name the tus protocol uses).
pub const UPLOAD_OFFSET: &str = "upload-offset";
/// The steps of split titles (docs/split.md): `GET /v1/split/<whole>` lists the finished ones,
/// `PUT`/`GET /v1/split/<whole>/<file>` sends or fetches one step's file, `DELETE /v1/split/<whole>`
/// removes them all after the join.
pub const SPLIT_PREFIX: &str = "/v1/split";
/// Header of a step file's `PUT`: its [`crate::split::Record`] as JSON, percent-encoded.
pub const STEP_RECORD: &str = "x-rafty-record";

/// The URL path of split job `whole`'s steps, or of one step's file in it.
pub fn split_url_path(whole: uuid::Uuid, file: Option<&str>) -> String {
    match file {
        Some(f) => format!("{SPLIT_PREFIX}/{whole}/{}", encode_path(f)),
        None => format!("{SPLIT_PREFIX}/{whole}"),
    }
}

/// A step's record as the [`STEP_RECORD`] header carries it.
pub fn encode_record(record: &crate::split::Record) -> String {
    let json = serde_json::to_string(record).expect("serializes");
    utf8_percent_encode(&json, COMPONENT).to_string()
}

/// The record in a [`STEP_RECORD`] header, or why it is not one.
pub fn decode_record(header: &str) -> Result<crate::split::Record, String> {
    let json = percent_decode_str(header)
        .decode_utf8()
        .map_err(|_| format!("{STEP_RECORD} is not UTF-8 once decoded"))?;
    serde_json::from_str(&json).map_err(|e| format!("{STEP_RECORD} is not a step record: {e}"))
}

/// Characters left as they are in a path component: RFC 3986 unreserved ones.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encode each component of a relative `/`-separated path.
pub fn encode_path(relative: &str) -> String {
    relative
        .split('/')
        .map(|c| utf8_percent_encode(c, COMPONENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// The URL path of the image at `path` (absolute, on the store's machine).
pub fn image_url_path(path: &Path) -> String {
    let parts: Vec<String> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => {
                Some(utf8_percent_encode(&s.to_string_lossy(), COMPONENT).to_string())
            }
            _ => None,
        })
        .collect();
    format!("{IMAGES_PREFIX}{}", parts.join("/"))
}

/// The full URL of the image at `path` in the store at `base` (`[store] url`).
pub fn image_url(base: &str, path: &Path) -> String {
    format!("{}{}", base.trim_end_matches('/'), image_url_path(path))
}

/// Why a URL path names no file the store may serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path:?} {reason}")]
pub struct BadPath {
    /// The path as received.
    pub path: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Decode the components of a relative URL path, refusing what could leave its root.
pub fn decode_components(raw: &str) -> Result<Vec<String>, BadPath> {
    let bad = |reason| BadPath {
        path: raw.to_owned(),
        reason,
    };
    if raw.is_empty() {
        return Err(bad("names no file"));
    }
    let mut out = Vec::new();
    for segment in raw.split('/') {
        if segment.is_empty() {
            return Err(bad("has an empty segment (a double or trailing slash)"));
        }
        let decoded = percent_decode_str(segment)
            .decode_utf8()
            .map_err(|_| bad("is not UTF-8 once decoded"))?;
        if decoded == "." || decoded == ".." {
            return Err(bad("has a . or .. segment"));
        }
        if decoded.contains('/') || decoded.contains('\\') || decoded.contains('\0') {
            return Err(bad("has an encoded slash, backslash or NUL"));
        }
        out.push(decoded.into_owned());
    }
    Ok(out)
}

/// The absolute path an image URL path (`/v1/images/...`) names.
pub fn image_path(url_path: &str) -> Result<PathBuf, BadPath> {
    let rest = url_path
        .strip_prefix(IMAGES_PREFIX)
        .ok_or_else(|| BadPath {
            path: url_path.to_owned(),
            reason: "is not under /v1/images/",
        })?;
    let mut path = PathBuf::from("/");
    path.extend(decode_components(rest)?);
    Ok(path)
}

/// The URL path of an image from a job's `source.url`, whatever host it names: a worker joins it to
/// its own store's URL and never contacts the host in the job.
pub fn image_url_path_of(url: &str) -> Result<String, BadPath> {
    let bad = |reason| BadPath {
        path: url.to_owned(),
        reason,
    };
    let after_scheme = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| bad("is not an http(s) URL"))?;
    let path = match after_scheme.find('/') {
        Some(i) => &after_scheme[i..],
        None => return Err(bad("has no path")),
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    // The store's own base may have a path of its own (behind a proxy): the image part starts at the
    // last /v1/images/.
    let at = path
        .rfind(IMAGES_PREFIX)
        .ok_or_else(|| bad("is not under /v1/images/"))?;
    let own = &path[at..];
    image_path(own)?;
    Ok(own.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_records_travel_in_a_header() {
        let record = crate::split::Record {
            job: uuid::Uuid::from_u128(7),
            host: "Wörker 2".into(),
            frames: 1206,
            video_secs: 40.24,
            size: 123_456,
            sha256: "ab".repeat(32),
        };
        let header = encode_record(&record);
        assert!(header.is_ascii() && !header.contains(' '), "{header}");
        assert_eq!(decode_record(&header).unwrap(), record);
        assert!(decode_record("%7Bnot").unwrap_err().contains(STEP_RECORD));
        let whole = uuid::Uuid::from_u128(1);
        assert_eq!(
            split_url_path(whole, Some("piece-00.mkv")),
            format!("/v1/split/{whole}/piece-00.mkv")
        );
    }

    #[test]
    fn image_paths_round_trip() {
        for p in [
            "/srv/iso/Feature Disc.iso",
            "/srv/iso/Été 100%.iso",
            "/a/b#c?.iso",
        ] {
            let url = image_url_path(Path::new(p));
            assert!(url.starts_with(IMAGES_PREFIX), "{url}");
            assert!(!url[IMAGES_PREFIX.len()..].contains(' '));
            assert_eq!(image_path(&url).unwrap(), Path::new(p), "{url}");
        }
        assert_eq!(
            image_url("https://nas:8766/", Path::new("/srv/iso/A B.iso")),
            "https://nas:8766/v1/images/srv/iso/A%20B.iso"
        );
    }

    #[test]
    fn traversal_is_refused() {
        for raw in [
            "/v1/images/srv/../etc/passwd",
            "/v1/images/srv/%2e%2e/etc/passwd",
            "/v1/images/srv/%2E%2E/etc/passwd",
            "/v1/images//etc/passwd",
            "/v1/images/srv//x.iso",
            "/v1/images/srv/x.iso/",
            "/v1/images/srv/.%2fx.iso",
            "/v1/images/srv/a%2f..%2f..%2fetc",
            "/v1/images/srv/a%00.iso",
            "/v1/images/",
            "/v2/images/srv/x.iso",
        ] {
            assert!(image_path(raw).is_err(), "{raw} must be refused");
        }
    }

    #[test]
    fn only_the_path_of_a_job_url_is_used() {
        assert_eq!(
            image_url_path_of("http://169.254.169.254:80/v1/images/srv/iso/x.iso?y=1").unwrap(),
            "/v1/images/srv/iso/x.iso"
        );
        assert_eq!(
            image_url_path_of("https://nas/proxy/v1/images/srv/x.iso").unwrap(),
            "/v1/images/srv/x.iso"
        );
        for bad in [
            "file:///etc/passwd",
            "http://evil/latest/meta-data",
            "https://nas/v1/images/../x",
            "ftp://nas/v1/images/x.iso",
        ] {
            assert!(image_url_path_of(bad).is_err(), "{bad}");
        }
    }
}
