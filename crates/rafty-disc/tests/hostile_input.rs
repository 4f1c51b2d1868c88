//! Hostile input for the ddrescue mapfile parser (issue 6). A mapfile is read back on every resumed
//! rip and may have been written or edited by GNU ddrescue, ddrescuelog or a person.
//!
//! Deterministic (a fixed seed) unless `PROPTEST_RNG_SEED` is set; `PROPTEST_CASES` overrides the
//! number of cases; no regression files are written.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use rafty_disc::mapfile::{BAD, FINISHED, Map, NON_TRIED, NON_TRIMMED};

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

/// The map's invariant: blocks in order from 0, no gaps, no overlaps, none empty, covering exactly
/// `size`, neighbours of equal status merged, only known statuses.
fn assert_well_formed(m: &Map) -> Result<(), TestCaseError> {
    let mut expect = 0u64;
    for (i, b) in m.blocks().iter().enumerate() {
        prop_assert_eq!(b.pos, expect, "block {} of {:?}", i, m.blocks());
        prop_assert!(b.size > 0, "empty block {i} of {:?}", m.blocks());
        prop_assert!(
            [NON_TRIED, NON_TRIMMED, BAD, FINISHED].contains(&b.status),
            "status {:?}",
            b.status as char
        );
        if i > 0 {
            prop_assert_ne!(
                m.blocks()[i - 1].status,
                b.status,
                "unmerged neighbours in {:?}",
                m.blocks()
            );
        }
        let end = b.pos.checked_add(b.size);
        prop_assert!(end.is_some(), "block {i} ends past 2^64: {b:?}");
        expect = end.unwrap();
    }
    prop_assert_eq!(
        expect,
        m.size(),
        "blocks do not cover the map: {:?}",
        m.blocks()
    );
    prop_assert_eq!(m.complete(), m.bytes(FINISHED) == m.size());
    Ok(())
}

fn status() -> impl Strategy<Value = u8> {
    prop::sample::select(vec![NON_TRIED, NON_TRIMMED, BAD, FINISHED])
}

/// `set` calls that stay mostly inside a map of `size` bytes, sector-aligned or not.
fn set_call(size: u64) -> impl Strategy<Value = (u64, u64, u8)> {
    let upto = size.saturating_mul(2).max(1);
    prop_oneof![
        3 => (0..upto / 2048 + 1, 0..64u64, status()).prop_map(|(s, n, st)| (s * 2048, n * 2048, st)),
        2 => (0..upto, 0..upto, status()),
    ]
}

fn built_map() -> impl Strategy<Value = (Map, Vec<(u64, u64, u8)>)> {
    (
        prop_oneof![
            Just(0u64),
            1u64..10_000,
            (1u64..5000).prop_map(|s| s * 2048)
        ],
        prop::option::of("[0-9a-f]{0,16}"),
    )
        .prop_flat_map(|(size, fp)| {
            (
                Just(size),
                Just(fp),
                prop::collection::vec(set_call(size), 0..40),
            )
        })
        .prop_map(|(size, fp, calls)| {
            let mut m = Map::new(size);
            m.fingerprint = fp;
            for &(pos, len, st) in &calls {
                m.set(pos, len, st);
            }
            (m, calls)
        })
}

/// A reference model: one status per byte (maps are kept small here).
fn model(size: u64, calls: &[(u64, u64, u8)]) -> Vec<u8> {
    let mut bytes = vec![NON_TRIED; size as usize];
    for &(pos, len, st) in calls {
        let end = pos.saturating_add(len).min(size);
        for b in bytes.iter_mut().take(end as usize).skip(pos as usize) {
            *b = st;
        }
    }
    bytes
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn set_keeps_blocks_contiguous_and_merged((m, calls) in built_map()) {
        assert_well_formed(&m)?;
        if m.size() <= 10_000 {
            let want = model(m.size(), &calls);
            let mut got = Vec::with_capacity(want.len());
            for b in m.blocks() {
                got.extend(std::iter::repeat_n(b.status, b.size as usize));
            }
            prop_assert_eq!(got, want, "set disagrees with the byte model");
        }
    }

    #[test]
    fn text_round_trips((m, _) in built_map()) {
        let text = m.to_text();
        let again = Map::parse(&text);
        prop_assert!(again.is_ok(), "{:?} on\n{}", again.err(), text);
        prop_assert_eq!(again.unwrap(), m);
    }

    /// `set` is documented as clamping to the map, whatever the caller passes.
    #[test]
    fn set_clamps_any_range(
        size in prop_oneof![Just(0u64), 1u64..1_000_000, Just(u64::MAX)],
        calls in prop::collection::vec((any::<u64>(), any::<u64>(), status()), 1..8),
    ) {
        let mut m = Map::new(size);
        for &(pos, len, st) in &calls {
            m.set(pos, len, st);
            assert_well_formed(&m)?;
        }
    }
}

/// Mapfile lines: comments, status lines and block lines whose fields may be anything.
fn map_line() -> impl Strategy<Value = String> {
    let num = prop_oneof![
        3 => (0u64..0x10_0000).prop_map(|n| format!("0x{n:08X}")),
        2 => any::<u64>().prop_map(|n| format!("0x{n:X}")),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => prop::sample::select(vec![
            "0x", "-1", "0xFFFFFFFFFFFFFFFFF", "18446744073709551616", "0X10", "0x-1", "+1", "",
            "0xé",
        ])
        .prop_map(str::to_owned),
    ];
    let st = prop_oneof![
        4 => prop::sample::select(vec!["?", "*", "/", "-", "+"]).prop_map(str::to_owned),
        1 => "[^\\s]{1,2}",
    ];
    prop_oneof![
        4 => (num.clone(), num.clone(), st.clone()).prop_map(|(p, s, t)| format!("{p}  {s}  {t}")),
        1 => (num.clone(), st).prop_map(|(p, t)| format!("{p}     {t}               1")),
        1 => "# rafty-fingerprint: [ -~]{0,20}",
        1 => "#[ -~]{0,20}",
        1 => any::<String>(),
        1 => Just(String::new()),
    ]
}

/// Block lines that tile `0..size` with sizes that may be huge: overflow bait.
fn tiling() -> impl Strategy<Value = String> {
    prop::collection::vec(
        (
            prop_oneof![
                1u64..0x1000,
                Just(u64::MAX),
                Just(u64::MAX / 2 + 1),
                any::<u64>()
            ],
            prop::sample::select(vec!['?', '*', '/', '-', '+']),
        ),
        1..5,
    )
    .prop_map(|blocks| {
        let mut text = String::from("0x0 ? 1\n");
        let mut pos = 0u64;
        for (size, st) in blocks {
            text.push_str(&format!("0x{pos:X} 0x{size:X} {st}\n"));
            pos = pos.wrapping_add(size);
        }
        text
    })
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn parse_never_panics_on_arbitrary_text(text in any::<String>()) {
        if let Ok(m) = Map::parse(&text) {
            assert_well_formed(&m)?;
        }
    }

    #[test]
    fn parse_never_panics_on_mapfile_like_text(lines in prop::collection::vec(map_line(), 0..12)) {
        let text = lines.join("\n");
        if let Ok(m) = Map::parse(&text) {
            assert_well_formed(&m)?;
            // What was accepted is written back in a form that reads the same.
            prop_assert_eq!(Map::parse(&m.to_text()).ok(), Some(m));
        }
    }

    #[test]
    fn parse_accepts_only_maps_that_fit_in_64_bits(text in tiling()) {
        if let Ok(m) = Map::parse(&text) {
            assert_well_formed(&m)?;
        }
    }
}

#[test]
fn a_map_that_overflows_64_bits_is_an_error_not_a_panic() {
    let text = "0x0 ? 1\n0x0 0xFFFFFFFFFFFFFFFF +\n0xFFFFFFFFFFFFFFFF 0x2 -\n";
    let parsed = std::panic::catch_unwind(|| Map::parse(text).map(|m| m.blocks().to_vec()));
    match parsed {
        Err(_) => panic!("Map::parse panicked on a map whose end overflows u64"),
        Ok(Ok(blocks)) => {
            panic!("Map::parse accepted a map whose end overflows u64: {blocks:?}")
        }
        Ok(Err(e)) => assert!(e.to_string().contains("mapfile"), "{e}"),
    }
}

#[test]
fn set_to_the_end_of_the_map_with_a_huge_length_clamps() {
    let mut m = Map::new(10 * 2048);
    let set = std::panic::catch_unwind(move || {
        m.set(4 * 2048, u64::MAX, FINISHED);
        m
    });
    let m = set.expect("Map::set panicked on pos + len past u64::MAX instead of clamping");
    assert_eq!(m.areas(FINISHED), [(4 * 2048, 6 * 2048)]);
}
