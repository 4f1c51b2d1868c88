//! Hostile input for the parsers of rafty-core (issue 6): the job decoder and the ISO 9660/UDF
//! descriptor reader. Property tests with proptest, bounded so that they run in CI in seconds.
//!
//! The runs are deterministic (a fixed seed) unless `PROPTEST_RNG_SEED` is set, and `PROPTEST_CASES`
//! overrides the number of cases, so a developer can fuzz longer:
//! `PROPTEST_CASES=100000 PROPTEST_RNG_SEED=$RANDOM cargo test -p rafty-core --test hostile_input`.
//! Failures are not persisted to files (nothing is written into the repository).

use std::ffi::OsStr;
use std::io::Cursor;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use rafty_core::job::{MAX_BODY_BYTES, MAX_OUTPUT_NAME_BYTES, validate_output_name};
use rafty_core::label::{DiscInfo, disc_info};
use rafty_core::names::JOB_TYPE;
use rafty_core::{Job, JobError, TitleSelection};
use serde_json::{Value, json};

/// A bounded, reproducible configuration: `cases` unless `PROPTEST_CASES` says otherwise, a fixed seed
/// unless `PROPTEST_RNG_SEED` is set, no regression files, shrinking bounded in time.
fn config(cases: u32) -> Config {
    let mut c = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = cases;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        c.rng_seed = RngSeed::Fixed(0x5AF7_0006);
    }
    c.failure_persistence = None;
    c.max_shrink_time = 20_000;
    c
}

// ---------------------------------------------------------------------------------------------------
// The job decoder
// ---------------------------------------------------------------------------------------------------

fn valid_job() -> Value {
    json!({
        "id": "0d6f7a3e-8f25-4f4e-9a53-1f4e4a0b7c11",
        "created_at": "2026-11-23T10:00:00Z",
        "source": {
            "path": "/srv/iso/Feature Disc.iso",
            "media": "dvd",
            "size": 7,
            "sha256": "9f2c",
            "label": "FEATURE"
        },
        "encode": {"preset": "Very Fast 480p30", "titles": [1, 3]},
        "output": {"name": "Feature Disc"},
        "origin": {"host": "ripper", "device": "/dev/sr0"}
    })
}

/// What every job the decoder accepts must satisfy, checked independently of `validate()`.
fn assert_sane(job: &Job) -> Result<(), TestCaseError> {
    let name = job.output.name.as_str();
    prop_assert!(job.validate().is_ok(), "accepted but invalid: {job:?}");
    prop_assert!(validate_output_name(name).is_ok());
    prop_assert!(!name.trim().is_empty(), "empty name {name:?}");
    prop_assert!(!name.contains('/') && !name.contains('\\'), "{name:?}");
    prop_assert!(!name.contains(".."), "{name:?}");
    prop_assert!(!name.starts_with('.'), "{name:?}");
    prop_assert!(!name.chars().any(char::is_control), "{name:?}");
    prop_assert!(name.len() <= MAX_OUTPUT_NAME_BYTES, "{} bytes", name.len());
    // One component: joined to the output directory it names a file directly inside it, also with
    // the suffixes the worker adds.
    let out = Path::new("/srv/media");
    for file in [
        name.to_owned(),
        format!("{name}.mkv"),
        format!("{name} - t99.mkv.rafty.json"),
    ] {
        let joined = out.join(&file);
        prop_assert_eq!(joined.parent(), Some(out), "{:?} escapes", file);
        prop_assert_eq!(joined.file_name(), Some(OsStr::new(&file)));
    }
    let path = &job.source.path;
    prop_assert!(path.is_absolute(), "{path:?}");
    prop_assert!(!path.as_os_str().as_bytes().contains(&0), "{path:?}");
    match &job.encode.titles {
        TitleSelection::MainFeature | TitleSelection::MinDuration { .. } => {}
        TitleSelection::List(list) => {
            prop_assert!(!list.is_empty());
            prop_assert!(list.iter().all(|n| (1..=999).contains(n)), "{list:?}");
        }
    }
    // What was accepted survives a round trip through the wire format.
    let again = job.to_json();
    if again.len() <= MAX_BODY_BYTES {
        let decoded = Job::decode(Some(JOB_TYPE), &again);
        prop_assert_eq!(decoded.as_ref(), Ok(job));
    }
    Ok(())
}

/// Decode with every kind of `type` property: none, the right one, another one.
fn check_decode(body: &[u8]) -> Result<Option<Job>, TestCaseError> {
    let without = Job::decode(None, body);
    let with = Job::decode(Some(JOB_TYPE), body);
    prop_assert_eq!(&without, &with, "the type property changed the verdict");
    prop_assert!(matches!(
        Job::decode(Some("rafty.job.v2"), body),
        Err(JobError::WrongType(_))
    ));
    if body.len() > MAX_BODY_BYTES {
        prop_assert!(matches!(with, Err(JobError::TooLarge(_))));
    }
    match with {
        Ok(job) => {
            assert_sane(&job)?;
            Ok(Some(job))
        }
        Err(e) => {
            prop_assert!(!e.to_string().is_empty());
            Ok(None)
        }
    }
}

/// Strings chosen to hit the output-name and path checks: separators, dots, NUL, control characters,
/// Unicode spaces and marks, long runs.
fn tricky_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9 ./\\\\\\-_~]{0,12}",
        2 => "[./\u{0}\u{1}\u{7f}\u{85}\u{200b}\u{2028}\u{3000}\u{fe0f}\u{301} ]{0,6}[a-z]{0,3}[./\u{0}\u{7f}]{0,3}",
        1 => any::<String>(),
        1 => "[a-z]{170,190}",
        1 => "[é]{85,95}",
        1 => prop::sample::select(vec![
            "", " ", ".", "..", "...", "/", "//", "a/..", "../a", "a/b", ".hidden", "a..b",
            "C:\\x", "\t", "x\u{0}", "\u{feff}", "~", "-", "--help", "$(reboot)", "*", "?",
        ])
        .prop_map(str::to_owned),
    ]
}

/// Source paths: absolute and relative, with `..`, NUL, doubled slashes.
fn tricky_path() -> impl Strategy<Value = String> {
    prop_oneof![
        "/[a-z./ ]{0,20}",
        "[a-z./]{0,10}",
        "/srv/iso/[a-z]{1,5}\u{0}[a-z]{0,3}\\.iso",
        tricky_string(),
        prop::sample::select(vec![
            "/",
            "//",
            "/srv/iso/../../etc/shadow",
            "/srv/iso/./a.iso",
            "relative.iso",
            "",
            "/dev/zero",
            "/proc/self/mem",
            "~/a.iso",
        ])
        .prop_map(str::to_owned),
    ]
}

/// Arbitrary JSON, with object keys that are often the job's own field names.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)),
        tricky_string().prop_map(Value::from),
        prop::sample::select(vec![
            "dvd",
            "bluray",
            "data",
            "main-feature",
            "0d6f7a3e-8f25-4f4e-9a53-1f4e4a0b7c11",
            "2026-11-23T10:00:00Z",
            "/srv/iso/a.iso",
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((field_name(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "id", "created_at", "source", "path", "media", "size", "sha256", "label",
            "unreadable_sectors", "encode", "preset", "titles", "min-duration-secs", "output",
            "name", "origin", "host", "device",
        ])
        .prop_map(str::to_owned),
        1 => "[a-z_-]{0,8}",
    ]
}

/// Where a job-shaped edit applies.
const FIELDS: &[&[&str]] = &[
    &["id"],
    &["created_at"],
    &["source"],
    &["source", "path"],
    &["source", "media"],
    &["source", "size"],
    &["source", "sha256"],
    &["source", "label"],
    &["source", "unreadable_sectors"],
    &["encode"],
    &["encode", "preset"],
    &["encode", "titles"],
    &["output"],
    &["output", "name"],
    &["origin"],
    &["origin", "host"],
    &["origin", "device"],
];

#[derive(Debug, Clone)]
enum Edit {
    Remove,
    Set(Value),
}

fn apply(job: &mut Value, path: &[&str], edit: &Edit) {
    let (last, parents) = path.split_last().expect("a field");
    let mut at = &mut *job;
    for p in parents {
        match at.get_mut(*p) {
            Some(v) => at = v,
            None => return,
        }
    }
    if let Some(obj) = at.as_object_mut() {
        match edit {
            Edit::Remove => {
                obj.remove(*last);
            }
            Edit::Set(v) => {
                obj.insert((*last).to_owned(), v.clone());
            }
        }
    }
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        1 => Just(Edit::Remove),
        4 => json_value().prop_map(Edit::Set),
        2 => tricky_string().prop_map(|s| Edit::Set(Value::from(s))),
    ]
}

/// A valid job with some fields removed or replaced by anything.
fn job_shaped() -> impl Strategy<Value = Value> {
    prop::collection::vec((prop::sample::select(FIELDS), edit()), 1..4).prop_map(|edits| {
        let mut job = valid_job();
        for (path, e) in &edits {
            apply(&mut job, path, e);
        }
        job
    })
}

/// Title selections: lists of any numbers (negative, zero, huge, fractional, strings), objects.
fn titles() -> impl Strategy<Value = Value> {
    let number = prop_oneof![
        any::<i64>().prop_map(Value::from),
        (0u64..1100).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        Just(json!(1.5)),
        Just(json!(1e300)),
        Just(json!("1")),
        Just(Value::Null),
    ];
    prop_oneof![
        prop::collection::vec(number, 0..5).prop_map(Value::Array),
        any::<u64>().prop_map(|n| json!({"min-duration-secs": n})),
        (any::<i64>(), field_name()).prop_map(|(n, k)| {
            let mut titles = json!({"min-duration-secs": n});
            titles[k.as_str()] = json!(1);
            titles
        }),
        Just(json!("main-feature")),
        Just(json!("all")),
        json_value(),
    ]
}

/// Byte-level mutations of a body: overwrite, insert, delete, splice a nasty token.
#[derive(Debug, Clone)]
enum Mutation {
    Overwrite(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Splice(usize, &'static str),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<usize>();
    prop_oneof![
        3 => (at, any::<u8>()).prop_map(|(i, b)| Mutation::Overwrite(i, b)),
        2 => (at, any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        2 => at.prop_map(Mutation::Delete),
        2 => (at, prop::sample::select(vec![
            "\\u0000", "\\u0001", "\\ud800", "..", "/", "\\\\", "\"", "{", "}", "[", "]", ",", ":",
            "-1", "0", "1e999", "18446744073709551616", "null", "true", "\u{7f}", "\u{ff}",
            "\\/", "\\u002e\\u002e", "\\u002f",
        ])).prop_map(|(i, s)| Mutation::Splice(i, s)),
        1 => at.prop_map(Mutation::Truncate),
    ]
}

fn mutate(body: &mut Vec<u8>, m: &Mutation) {
    let pos = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
    match *m {
        Mutation::Overwrite(i, b) if !body.is_empty() => {
            let i = i % body.len();
            body[i] = b;
        }
        Mutation::Overwrite(..) => {}
        Mutation::Insert(i, b) => {
            let i = pos(i, body.len());
            body.insert(i, b);
        }
        Mutation::Delete(i) if !body.is_empty() => {
            let i = i % body.len();
            body.remove(i);
        }
        Mutation::Delete(_) => {}
        Mutation::Splice(i, s) => {
            let i = pos(i, body.len());
            body.splice(i..i, s.bytes());
        }
        Mutation::Truncate(i) => {
            let i = pos(i, body.len());
            body.truncate(i);
        }
    }
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(
        body in prop::collection::vec(any::<u8>(), 0..2048),
        kind in prop::option::of(prop_oneof![Just(JOB_TYPE.to_owned()), any::<String>()]),
    ) {
        let verdict = Job::decode(kind.as_deref(), &body);
        if kind.as_deref().is_some_and(|k| k != JOB_TYPE) {
            prop_assert!(matches!(verdict, Err(JobError::WrongType(_))));
        }
        check_decode(&body)?;
    }

    #[test]
    fn decode_never_panics_on_arbitrary_json(value in json_value()) {
        check_decode(value.to_string().as_bytes())?;
    }

    #[test]
    fn decode_of_job_shaped_json_accepts_only_sane_jobs(job in job_shaped()) {
        check_decode(job.to_string().as_bytes())?;
    }

    #[test]
    fn output_names_and_source_paths_are_checked(name in tricky_string(), path in tricky_path()) {
        let mut job = valid_job();
        job["output"]["name"] = Value::from(name.clone());
        job["source"]["path"] = Value::from(path.clone());
        let accepted = check_decode(job.to_string().as_bytes())?;
        // The other way round: a plain name under an absolute path without NUL is accepted.
        let plain = !name.trim().is_empty()
            && name.len() <= MAX_OUTPUT_NAME_BYTES
            && !name.starts_with('.')
            && !name.contains("..")
            && !name.contains(['/', '\\'])
            && !name.chars().any(char::is_control);
        let absolute = path.starts_with('/') && !path.contains('\0');
        prop_assert_eq!(accepted.is_some(), plain && absolute, "name {:?} path {:?}", name, path);
    }

    #[test]
    fn title_numbers_outside_1_to_999_are_refused(titles in titles()) {
        let mut job = valid_job();
        job["encode"]["titles"] = titles;
        check_decode(job.to_string().as_bytes())?;
    }

    #[test]
    fn decode_of_mutated_valid_bodies(mutations in prop::collection::vec(mutation(), 1..6)) {
        let mut body = valid_job().to_string().into_bytes();
        for m in &mutations {
            mutate(&mut body, m);
        }
        check_decode(&body)?;
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow(
        depth in 0usize..40_000,
        (open, close) in prop::sample::select(vec![
            ("[", "]"), ("{\"a\":", "}"), ("{\"titles\":", "}"), ("[{\"x\":", "}]"),
        ]),
        balanced in any::<bool>(),
        place in 0usize..5,
    ) {
        let closing = if balanced { close.repeat(depth) } else { String::new() };
        let nested = format!("{}1{closing}", open.repeat(depth));
        let body = match place {
            0 => nested,
            1 => valid_job().to_string().replacen("\"Very Fast 480p30\"", &nested, 1),
            2 => valid_job().to_string().replacen("[1,3]", &nested, 1),
            3 => valid_job().to_string().replacen(
                "\"origin\":{",
                &format!("\"origin\":{{\"x-unknown\":{nested},"),
                1,
            ),
            _ => valid_job().to_string().replacen("\"ripper\"", &nested, 1),
        };
        let mut body = body.into_bytes();
        body.truncate(MAX_BODY_BYTES + 16);
        check_decode(&body)?;
    }
}

#[test]
fn an_oversized_body_is_refused_whatever_it_holds() {
    let mut job = valid_job();
    job["origin"]["padding"] = Value::from("x".repeat(MAX_BODY_BYTES));
    let body = job.to_string();
    assert!(matches!(
        Job::decode(None, body.as_bytes()),
        Err(JobError::TooLarge(n)) if n == body.len()
    ));
    // Just under the limit the same job, padding and all, is fine (unknown fields are ignored).
    job["origin"]["padding"] = Value::from("x".repeat(MAX_BODY_BYTES - 1000));
    assert!(Job::decode(None, job.to_string().as_bytes()).is_ok());
}

/// The reason of a refusal names what is wrong (it becomes the dead letter's `x-rafty-error`); the same
/// cases run against a real broker and worker in tests/acceptance/hostile.rs.
#[test]
fn refusals_name_the_problem() {
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut job = valid_job();
        edit(&mut job);
        job.to_string()
    };
    let cases = [
        (
            with(&|j| j["source"]["path"] = json!("/srv/iso/a.iso\u{0}.txt")),
            "NUL",
        ),
        (with(&|j| j["source"]["path"] = json!("a.iso")), "absolute"),
        (with(&|j| j["source"]["media"] = json!(7)), "media"),
        (with(&|j| j["source"]["media"] = json!("hddvd")), "hddvd"),
        (with(&|j| j["output"]["name"] = json!("a\u{7}")), "control"),
        (
            with(&|j| j["encode"]["titles"] = json!([-1])),
            "-1 is not a title",
        ),
        (with(&|j| j["id"] = json!(42)), "integer `42`"),
    ];
    let mut vague = Vec::new();
    for (body, want) in &cases {
        let reason = Job::decode(None, body.as_bytes()).unwrap_err().to_string();
        if !reason.contains(want) {
            vague.push(format!("{reason:?} does not mention {want:?}"));
        }
    }
    assert!(vague.is_empty(), "vague reasons:\n{}", vague.join("\n"));
}

// ---------------------------------------------------------------------------------------------------
// The ISO 9660 / UDF descriptor reader
// ---------------------------------------------------------------------------------------------------

const SECTOR: usize = 2048;

/// A small valid image, built like the unit tests in label.rs: a primary volume descriptor at sector
/// 16 with its root directory at sector 20 (`.`, `..` and `VIDEO_TS`), a terminator at 17, a UDF
/// anchor at 256 pointing at a descriptor sequence whose logical volume descriptor (at 261) holds a
/// UTF-16 label.
fn valid_image() -> Vec<u8> {
    let mut img = vec![0u8; 300 * SECTOR];
    let pvd = 16 * SECTOR;
    img[pvd] = 1;
    img[pvd + 1..pvd + 6].copy_from_slice(b"CD001");
    let mut label = [b' '; 32];
    label[..12].copy_from_slice(b"FEATURE_DISC");
    img[pvd + 40..pvd + 72].copy_from_slice(&label);
    img[pvd + 156 + 2..pvd + 156 + 6].copy_from_slice(&20u32.to_le_bytes());
    img[pvd + 156 + 10..pvd + 156 + 14].copy_from_slice(&2048u32.to_le_bytes());
    let term = 17 * SECTOR;
    img[term] = 255;
    img[term + 1..term + 6].copy_from_slice(b"CD001");
    let dir = 20 * SECTOR;
    for (i, name) in [&b"\0"[..], b"\x01", b"VIDEO_TS"].iter().enumerate() {
        let at = dir + i * 64;
        img[at] = 64;
        img[at + 25] = 2;
        img[at + 32] = name.len() as u8;
        img[at + 33..at + 33 + name.len()].copy_from_slice(name);
    }
    let anchor = 256 * SECTOR;
    img[anchor] = 2;
    img[anchor + 16..anchor + 20].copy_from_slice(&(4 * 2048u32).to_le_bytes());
    img[anchor + 20..anchor + 24].copy_from_slice(&260u32.to_le_bytes());
    let lvd = 261 * SECTOR;
    img[lvd] = 6;
    let mut udf = vec![16u8];
    for u in "Fëature Disc".encode_utf16() {
        udf.extend_from_slice(&u.to_be_bytes());
    }
    img[lvd + 84..lvd + 84 + udf.len()].copy_from_slice(&udf);
    img[lvd + 84 + 127] = udf.len() as u8;
    img
}

/// What every answer of `disc_info` must satisfy.
fn assert_sane_info(info: &DiscInfo) -> Result<(), TestCaseError> {
    if !info.recognised {
        prop_assert_eq!(info, &DiscInfo::default(), "unrecognised but not empty");
    }
    if let Some(label) = &info.label {
        prop_assert!(!label.is_empty());
        prop_assert_eq!(label.trim_matches([' ', '\0']), label.as_str(), "untrimmed");
        // A label is at most 32 ISO bytes or 127 UDF bytes (63 UTF-16 units, each up to 3 bytes).
        prop_assert!(label.len() <= 3 * 127, "{} bytes", label.len());
    }
    Ok(())
}

fn check_image(img: Vec<u8>) -> Result<DiscInfo, TestCaseError> {
    let info = disc_info(&mut Cursor::new(&img));
    prop_assert!(
        info.is_ok(),
        "an in-memory image cannot fail to read: {info:?}"
    );
    let info = info.unwrap();
    assert_sane_info(&info)?;
    prop_assert_eq!(
        &disc_info(&mut Cursor::new(&img)).unwrap(),
        &info,
        "not deterministic"
    );
    Ok(info)
}

/// Offsets worth mutating: the descriptors, the root directory, the anchor and the UDF sequence.
fn hot_offset() -> impl Strategy<Value = usize> {
    prop_oneof![
        (16 * SECTOR..18 * SECTOR),
        (20 * SECTOR..21 * SECTOR),
        (256 * SECTOR..256 * SECTOR + 32),
        (260 * SECTOR..265 * SECTOR),
        (0..300 * SECTOR),
    ]
}

/// Interesting little-endian values for the extent, length and location fields.
fn hot_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        any::<u32>(),
        0u32..600,
        Just(u32::MAX),
        Just(u32::MAX / 2048),
        Just(256 * 1024),
        Just(64 * 2048 + 1),
    ]
}

#[derive(Debug, Clone)]
enum ImageEdit {
    Byte(usize, u8),
    Word(usize, u32),
    Field(usize, u32),
}

/// The fields that steer the reader: root extent and length, anchor length and location, the
/// directory record and name lengths, the dstring length byte.
const FIELD_OFFSETS: &[usize] = &[
    16 * SECTOR + 156 + 2,
    16 * SECTOR + 156 + 10,
    256 * SECTOR + 16,
    256 * SECTOR + 20,
    20 * SECTOR + 128,
    20 * SECTOR + 128 + 32,
    261 * SECTOR + 84,
    261 * SECTOR + 84 + 124,
];

fn image_edit() -> impl Strategy<Value = ImageEdit> {
    prop_oneof![
        4 => (hot_offset(), any::<u8>()).prop_map(|(o, b)| ImageEdit::Byte(o, b)),
        2 => (hot_offset(), hot_u32()).prop_map(|(o, w)| ImageEdit::Word(o, w)),
        3 => (prop::sample::select(FIELD_OFFSETS), hot_u32()).prop_map(|(o, w)| ImageEdit::Field(o, w)),
    ]
}

fn edit_image(img: &mut [u8], e: &ImageEdit) {
    match *e {
        ImageEdit::Byte(o, b) => img[o % img.len()] = b,
        ImageEdit::Word(o, w) | ImageEdit::Field(o, w) => {
            let o = o.min(img.len() - 4);
            img[o..o + 4].copy_from_slice(&w.to_le_bytes());
        }
    }
}

#[test]
fn the_valid_image_reads_as_built() {
    let info = disc_info(&mut Cursor::new(valid_image())).unwrap();
    assert_eq!(info.label.as_deref(), Some("Fëature Disc"));
    assert_eq!(info.media, Some(rafty_core::Media::Dvd));
    assert!(info.recognised);
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn disc_info_never_fails_on_arbitrary_bytes(img in prop::collection::vec(any::<u8>(), 0..40_000)) {
        check_image(img)?;
    }

    #[test]
    fn disc_info_never_fails_on_random_descriptors(
        pvd in prop::collection::vec(any::<u8>(), SECTOR),
        dir in prop::collection::vec(any::<u8>(), SECTOR),
        anchor in prop::collection::vec(any::<u8>(), SECTOR),
        lvd in prop::collection::vec(any::<u8>(), SECTOR),
        keep_signatures in any::<bool>(),
    ) {
        let mut img = valid_image();
        for (sector, bytes) in [(16, &pvd), (20, &dir), (256, &anchor), (261, &lvd)] {
            img[sector * SECTOR..(sector + 1) * SECTOR].copy_from_slice(bytes);
        }
        if keep_signatures {
            img[16 * SECTOR] = 1;
            img[16 * SECTOR + 1..16 * SECTOR + 6].copy_from_slice(b"CD001");
            img[256 * SECTOR..256 * SECTOR + 2].copy_from_slice(&2u16.to_le_bytes());
            img[261 * SECTOR..261 * SECTOR + 2].copy_from_slice(&6u16.to_le_bytes());
        }
        check_image(img)?;
    }

    #[test]
    fn disc_info_never_fails_on_mutated_images(edits in prop::collection::vec(image_edit(), 1..12)) {
        let mut img = valid_image();
        for e in &edits {
            edit_image(&mut img, e);
        }
        check_image(img)?;
    }

    #[test]
    fn disc_info_never_fails_on_truncated_images(len in 0usize..300 * SECTOR) {
        let mut img = valid_image();
        img.truncate(len);
        let info = check_image(img)?;
        if len < 16 * SECTOR {
            prop_assert!(!info.recognised);
        }
        if len >= 262 * SECTOR {
            prop_assert_eq!(info.label.as_deref(), Some("Fëature Disc"));
        }
    }
}
