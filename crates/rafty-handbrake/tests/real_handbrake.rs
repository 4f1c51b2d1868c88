//! The real HandBrakeCLI on a real DVD-Video ISO built by the test kit: scan, a good encode with
//! progress, and a bad preset whose complaint comes before hundreds of lines of preset list.

use std::time::Duration;

use rafty_handbrake::{EncodeRequest, Error, HandBrake, Tracks};
use rafty_testkit::fixture_iso;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn scan_and_encode_report_what_happened() {
    let iso = fixture_iso("FEATURE_DISC", &[20, 12]);
    let dir = tempfile::tempdir().unwrap();
    let hb = HandBrake::new("HandBrakeCLI".into(), vec![], None, 1);
    runtime().block_on(async {
        let scan = hb.scan(&iso, Duration::from_secs(120)).await.unwrap();
        assert_eq!(scan.titles.len(), 2);
        assert_eq!(scan.main_feature().unwrap().index, 1);
        assert_eq!(scan.titles[0].chapter_durations.len(), 2);

        let out = dir.path().join("ok.mkv");
        let tracks = Tracks::default();
        let mut seen = Vec::new();
        let request = EncodeRequest {
            input: &iso,
            title: 2,
            output: &out,
            preset: "Very Fast 480p30",
            format: "av_mkv",
            tracks: &tracks,
            extra: &[],
        };
        hb.encode(
            &request,
            Duration::from_secs(60),
            std::future::pending(),
            |p| seen.push(p.fraction()),
        )
        .await
        .unwrap();
        assert!(
            !seen.is_empty() && seen.windows(2).all(|w| w[0] <= w[1]),
            "progress moves forward: {seen:?}"
        );
        assert!(std::fs::metadata(&out).unwrap().len() > 0);

        let bad = EncodeRequest {
            preset: "No Such Preset",
            ..request
        };
        match hb
            .encode(
                &bad,
                Duration::from_secs(60),
                std::future::pending(),
                |_| {},
            )
            .await
        {
            Err(Error::Exit { code: 2, message }) => {
                assert!(
                    message.contains("Invalid preset No Such Preset"),
                    "{message}"
                )
            }
            other => panic!("expected exit 2 naming the preset, got {other:?}"),
        }
    });
}
