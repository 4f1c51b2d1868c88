//! Hostile input for what rafty-handbrake parses out of HandBrakeCLI (issue 6): progress lines, the
//! scan's JSON title set, and the log lines picked as the error message. HandBrake reads discs made by
//! anybody, and what it prints about them ends up here.
//!
//! Deterministic (a fixed seed) unless `PROPTEST_RNG_SEED` is set; `PROPTEST_CASES` overrides the
//! number of cases; no regression files are written.

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use rafty_handbrake::{Progress, complaint, parse_progress, parse_scan};
use serde_json::{Value, json};

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

/// What an accepted progress report must satisfy.
fn assert_sane_progress(p: &Progress) -> Result<(), TestCaseError> {
    prop_assert!((0.0..=100.0).contains(&p.percent), "percent {}", p.percent);
    let f = p.fraction();
    prop_assert!(f.is_finite() && (0.0..=1.0).contains(&f), "fraction {f}");
    // `fps` is passed through as HandBrake printed it (it may even be negative or NaN for a broken
    // line); the events carry it as is (serde_json writes NaN as null), so it is not checked here.
    Ok(())
}

/// Numbers as HandBrake might print them, and as a broken or hostile one might.
fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (0u32..200).prop_map(|n| n.to_string()),
        2 => (0.0f64..100.0).prop_map(|f| format!("{f:.2}")),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<f64>().prop_map(|f| f.to_string()),
        1 => prop::sample::select(vec![
            "", " ", "-0", "NaN", "nan", "inf", "-inf", "infinity", "1e308", "1e309", "100.0000001",
            "99999999999999999999999", "0x10", "+5", "1_000", "١٢",
        ])
        .prop_map(str::to_owned),
    ]
}

fn eta_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (0u64..100, 0u64..60, 0u64..60).prop_map(|(h, m, s)| format!("{h:02}h{m:02}m{s:02}s")),
        2 => (number_text(), number_text(), number_text()).prop_map(|(h, m, s)| format!("{h}h{m}m{s}s")),
        1 => "[0-9hms ]{0,12}",
    ]
}

/// A progress line assembled from pieces, each of which may be broken.
fn progress_line() -> impl Strategy<Value = String> {
    (
        number_text(),
        number_text(),
        number_text(),
        prop::option::of((number_text(), number_text(), eta_text())),
        prop::sample::select(vec!["", "\r", "\n", "   ", "\r\n"]),
    )
        .prop_map(|(task, tasks, pct, rest, end)| {
            let mut line = format!("Encoding: task {task} of {tasks}, {pct} %");
            if let Some((fps, avg, eta)) = rest {
                line.push_str(&format!(" ({fps} fps, avg {avg} fps, ETA {eta})"));
            }
            line.push_str(end);
            line
        })
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn progress_never_panics_on_arbitrary_text(line in any::<String>()) {
        if let Some(p) = parse_progress(&line) {
            assert_sane_progress(&p)?;
        }
    }

    #[test]
    fn progress_never_panics_on_broken_progress_lines(line in progress_line()) {
        if let Some(p) = parse_progress(&line) {
            assert_sane_progress(&p)?;
        }
    }

    #[test]
    fn well_formed_progress_lines_are_read_exactly(
        task in 1u32..10,
        tasks in 1u32..10,
        hundredths in 0u32..=10_000,
        rate in prop::option::of((0u32..100_000, 0u32..100_000, 0u64..100, 0u64..60, 0u64..60)),
    ) {
        let percent = f64::from(hundredths) / 100.0;
        let mut line = format!("Encoding: task {task} of {tasks}, {percent:.2} %");
        if let Some((fps, avg, h, m, s)) = rate {
            line.push_str(&format!(
                " ({}.{:02} fps, avg {}.{:02} fps, ETA {h:02}h{m:02}m{s:02}s)",
                fps / 100, fps % 100, avg / 100, avg % 100
            ));
        }
        let p = parse_progress(&line);
        prop_assert!(p.is_some(), "{line:?} not read");
        let p = p.unwrap();
        assert_sane_progress(&p)?;
        prop_assert_eq!((p.task, p.tasks), (task, tasks));
        prop_assert!((p.percent - percent).abs() < 1e-9);
        match rate {
            Some((fps, _, h, m, s)) => {
                prop_assert!((p.fps.unwrap() - f64::from(fps) / 100.0).abs() < 1e-9);
                prop_assert_eq!(p.eta, Some(Duration::from_secs(h * 3600 + m * 60 + s)));
            }
            None => prop_assert_eq!((p.fps, p.eta), (None, None)),
        }
    }
}

/// Scan output: the banners around the marker, and a title set that may be anything.
fn title() -> impl Strategy<Value = Value> {
    let big = prop_oneof![
        3 => 0u64..1_000_000,
        1 => any::<u64>(),
        1 => prop::sample::select(vec![u64::MAX, u64::MAX / 100 + 1, u64::MAX / 3600 + 1]),
    ];
    (
        any::<u32>(),
        big.clone(),
        big.clone(),
        big.clone(),
        big,
        0usize..4,
        prop::option::of((any::<u32>(), any::<u32>())),
    )
        .prop_map(|(index, ticks, hours, minutes, seconds, n, geometry)| {
            let mut t = json!({
                "Index": index,
                "Duration": {"Ticks": ticks, "Hours": hours, "Minutes": minutes, "Seconds": seconds},
                "ChapterList": vec![json!({}); n],
                "AudioList": vec![json!({}); n],
            });
            if let Some((w, h)) = geometry {
                t["Geometry"] = json!({"Width": w, "Height": h});
            }
            t
        })
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        "[a-zA-Z]{0,6}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "MainFeature",
                        "TitleList",
                        "Index",
                        "Duration",
                        "Ticks",
                        "Hours",
                        "Minutes",
                        "Seconds",
                        "ChapterList",
                        "AudioList",
                        "Geometry",
                        "Width",
                        "Height",
                        "x",
                    ]),
                    inner
                ),
                0..6
            )
            .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        ]
    })
}

fn title_set() -> impl Strategy<Value = String> {
    prop_oneof![
        (any::<i64>(), prop::collection::vec(title(), 0..5)).prop_map(|(main, titles)| {
            serde_json::to_string_pretty(&json!({"MainFeature": main, "TitleList": titles}))
                .unwrap()
        }),
        json_value().prop_map(|v| v.to_string()),
        any::<String>(),
    ]
}

fn scan_output() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec![
            "",
            "Version: {\n \"Name\": \"HandBrake\"\n}\n",
            "libdvdread: Encrypted DVD support unavailable.\n",
            "JSON Title Set: ",
        ]),
        title_set(),
        prop::sample::select(vec![
            "",
            "\nHandBrake has exited.\n",
            "}}}",
            "\nJSON Title Set: {\"TitleList\": 5}",
        ]),
        any::<bool>(),
    )
        .prop_map(|(before, set, after, marker)| {
            let marker = if marker { "JSON Title Set: " } else { "" };
            format!("{before}{marker}{set}{after}")
        })
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn scan_never_panics_on_arbitrary_text(text in any::<String>()) {
        let _ = parse_scan(&text);
        let _ = parse_scan(&format!("JSON Title Set: {text}"));
    }

    #[test]
    fn scan_never_panics_on_hostile_title_sets(out in scan_output()) {
        if let Ok(scan) = parse_scan(&out) {
            if let Some(main) = scan.main_feature {
                prop_assert!(main > 0);
            }
            match scan.main_feature() {
                Some(t) => prop_assert!(scan.titles.contains(t)),
                None => prop_assert!(scan.titles.is_empty()),
            }
            for t in &scan.titles {
                prop_assert_eq!(scan.title(t.index).map(|x| x.index), Some(t.index));
            }
        }
    }
}

/// Log lines: HandBrake's stamped lines, the signs `complaint` looks for, and anything.
fn log_line() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => any::<String>(),
        2 => (
            prop::sample::select(vec!["", "[16:16:02] ", "[16:16:0] ", "[", "[] ", "[12345678] ", "  "]),
            prop::sample::select(vec![
                "No title found.", "Invalid preset X", "open failed", "scan: unrecognized file type",
                "error", "Error", "not a dvd", "HandBrake has exited.", "", " ", "libhb: work",
            ]),
            "[ -~]{0,10}",
        )
            .prop_map(|(stamp, text, tail)| format!("{stamp}{text}{tail}")),
    ]
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn complaint_never_panics_and_always_says_something(
        log in prop::collection::vec(log_line(), 0..40),
    ) {
        let said = complaint(&log);
        prop_assert!(!said.is_empty());
        // Every piece of the message comes from the log (stripped of its time stamp), and at most the
        // last three lines that look like errors are picked.
        let pieces: Vec<&str> = said.split("; ").collect();
        if said != "no message" {
            prop_assert!(
                pieces.iter().all(|p| log.iter().any(|l| l.contains(p))),
                "{said:?} is not from the log"
            );
        }
        if !log.iter().any(|l| l.contains("; ")) {
            prop_assert!(pieces.len() <= 3, "{said:?}");
        }
    }
}

/// The shortest inputs the properties above found; kept as plain tests so a failure reads at once.
#[test]
fn an_absurd_eta_is_refused_or_read_not_a_panic() {
    let line =
        "Encoding: task 1 of 1, 5.00 % (10.00 fps, avg 10.00 fps, ETA 99999999999999999h00m00s)";
    let p = std::panic::catch_unwind(|| parse_progress(line))
        .expect("parse_progress panicked on a huge ETA");
    let p = p.expect("the line is a progress line");
    assert!((p.percent - 5.0).abs() < 1e-9);
}

#[test]
fn an_absurd_title_duration_is_not_a_panic() {
    for duration in [
        r#"{"Ticks": 18446744073709551615}"#,
        r#"{"Hours": 18446744073709551615, "Minutes": 0, "Seconds": 0}"#,
    ] {
        let out = format!(
            "JSON Title Set: {{\"MainFeature\": 1, \"TitleList\": [{{\"Index\": 1, \"Duration\": {duration}}}]}}"
        );
        let scan = std::panic::catch_unwind(|| parse_scan(&out))
            .unwrap_or_else(|_| panic!("parse_scan panicked on the duration {duration}"));
        assert!(scan.is_ok() || scan.is_err());
    }
}
