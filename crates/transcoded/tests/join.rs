//! The join of a split title and its checks, on real pieces: HandBrakeCLI encodes two pieces and the
//! tracks pass of a real DVD-Video title, mkvmerge joins them, ffprobe and ffmpeg check the result.
//! A join that leaves out a piece must fail the checks that would catch it (the worker then encodes
//! the title whole); the end-to-end split across workers is in tests/acceptance/split.rs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rafty_core::job::ChapterRange;
use rafty_handbrake::{EncodeRequest, HandBrake, Tracks};
use transcoded::split::{self, Expected, Record, Video};

const PRESET: &str = "Very Fast 480p30";

async fn encode(
    hb: &HandBrake,
    iso: &Path,
    out: &Path,
    tracks: &Tracks,
    extra: &[std::ffi::OsString],
) {
    hb.encode(
        &EncodeRequest {
            input: iso,
            title: 1,
            output: out,
            preset: PRESET,
            format: "av_mkv",
            tracks,
            extra,
        },
        Duration::from_secs(120),
        std::future::pending(),
        |_| {},
    )
    .await
    .unwrap_or_else(|e| panic!("encoding {}: {e}", out.display()));
}

async fn record(file: &Path) -> Record {
    let video = Video::of(file).await.unwrap();
    Record {
        job: uuid::Uuid::nil(),
        host: "test".into(),
        frames: video.frames(),
        video_secs: video.duration(),
        size: std::fs::metadata(file).unwrap().len(),
        sha256: rafty_store::client::sha256_of(file).await.unwrap(),
    }
}

#[tokio::test]
async fn a_join_of_every_piece_passes_and_one_missing_a_piece_fails() {
    rafty_testkit::require_tools(&["HandBrakeCLI", "mkvmerge", "ffprobe", "ffmpeg"]);
    // Four chapters of 15 s.
    let iso = rafty_testkit::fixture_iso_chapters("JOIN", &["60@0,15,30,45"]);
    let dir = tempfile::tempdir().unwrap();
    let hb = HandBrake::new("HandBrakeCLI".into(), Vec::new(), None, 1);
    let scan = hb.scan(&iso, Duration::from_secs(60)).await.unwrap();
    let title = scan.title(1).unwrap();
    let ranges = split::plan(&title.chapter_durations, 2);
    assert_eq!(
        ranges,
        [
            ChapterRange { first: 1, last: 2 },
            ChapterRange { first: 3, last: 4 }
        ]
    );
    let no_marks = Tracks {
        chapter_markers: Some(false),
        ..Default::default()
    };
    let mut pieces: Vec<PathBuf> = Vec::new();
    for (i, range) in ranges.iter().enumerate() {
        let out = split::piece_path(dir.path(), i as u32);
        encode(&hb, &iso, &out, &no_marks, &split::piece_args(*range)).await;
        split::decode(&out, None)
            .await
            .expect("a piece decodes cleanly");
        pieces.push(out);
    }
    let tracks_file = split::tracks_path(dir.path());
    let marks = Tracks {
        chapter_markers: Some(true),
        ..Default::default()
    };
    encode(&hb, &iso, &tracks_file, &marks, &split::tracks_args()).await;

    let records = vec![record(&pieces[0]).await, record(&pieces[1]).await];
    let tracks = record(&tracks_file).await;
    let chapters = split::chapters(&tracks_file).await.unwrap();
    assert_eq!(
        chapters.len(),
        4,
        "the tracks pass carries the title's marks"
    );
    let expected = Expected {
        pieces: &records,
        tracks: &tracks,
        chapters: &chapters,
        audio: true,
        tracks_file: &tracks_file,
    };

    let joined = dir.path().join("joined.mkv");
    split::merge(&pieces, &tracks_file, &joined).await.unwrap();
    let (checks, secs) = split::verify(&joined, &expected).await.unwrap();
    assert!(
        (secs - tracks.video_secs).abs() <= 0.034,
        "joined {secs} s, whole-title pass {} s",
        tracks.video_secs
    );
    for c in &checks {
        eprintln!("{}: {} ({})", c.name, c.passed, c.detail);
    }
    assert!(checks.iter().all(|c| c.passed), "{checks:#?}");
    let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["frames", "duration", "seam 1", "gaps", "audio", "chapters"]
    );
    assert_eq!(
        records[0].frames + records[1].frames,
        tracks.frames,
        "the pieces have every frame of the title once"
    );

    // The second piece left out: the checks that must catch it do.
    let short = dir.path().join("short.mkv");
    split::merge(&pieces[..1], &tracks_file, &short)
        .await
        .unwrap();
    let (checks, _) = split::verify(&short, &expected).await.unwrap();
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name.as_str())
        .collect();
    for want in ["frames", "duration", "seam 1", "audio"] {
        assert!(
            failed.contains(&want),
            "{want} passed on a join without piece 2: {checks:#?}"
        );
    }
}
