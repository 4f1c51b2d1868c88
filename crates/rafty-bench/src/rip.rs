//! Rip throughput and memory: `rip` vs `dd bs=1M`, `dd bs=2048` and `ddrescue` reading the same loop
//! device (page cache warm) into a file in memory (`/dev/shm`), so the figure is the copy engine's
//! cost and not the noise of this machine's disk write-back (measured: the same 1 GiB `dd` to disk
//! took 0.5 s to 2.8 s from one run to the next). Every tool syncs as it would on disk (rip fsyncs,
//! dd gets `conv=fsync`, ddrescue is followed by `sync`). Peak RSS of `rip` from `/usr/bin/time`.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use rafty_testkit::{Env, LoopDevice, bin};

use crate::{median, verdict};

fn run(what: &str, cmd: &mut Command) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(t0.elapsed().as_secs_f64())
}

fn clean(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let _ = std::fs::remove_file(e.path());
    }
}

/// Rows of the results table.
pub fn bench(env: &Env, mib: u64, reps: usize) -> anyhow::Result<Vec<String>> {
    let image = env.path().join("bench-disc.img");
    {
        // Distinct bytes per MiB (not a sparse file), so every read returns real data.
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&image)?);
        let mut block = vec![0u8; 1 << 20];
        for i in 0..mib {
            for (j, b) in block.iter_mut().enumerate() {
                *b = (j as u64).wrapping_mul(31).wrapping_add(i) as u8;
            }
            f.write_all(&block)?;
        }
        f.flush()?;
    }
    let disc = LoopDevice::attach(&image);
    let dev = disc.path();
    let out_dir = std::path::PathBuf::from(format!("/dev/shm/rafty-bench-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir)?;
    let target = out_dir.join("copy.img");
    let cfg = env.write_config(
        "rip-bench.toml",
        None,
        &[
            ("rip.iso-dir", &format!("\"{}\"", out_dir.display())),
            ("rip.progress-interval", "\"1h\""),
        ],
    );
    // Warm the cache with one full read.
    run(
        "warm-up",
        Command::new("dd")
            .arg(format!("if={}", dev.display()))
            .args(["of=/dev/null", "bs=1M"]),
    )?;

    let (mut rip, mut dd1m, mut dd2k, mut ddrescue, mut rss) =
        (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..reps {
        clean(&out_dir);
        let rss_file = env.path().join("rip.rss");
        rip.push(run(
            "rip",
            Command::new("/usr/bin/time")
                .args(["-f", "%M", "-o"])
                .arg(&rss_file)
                .arg(bin("rip"))
                .arg("--config")
                .arg(&cfg)
                .arg("--device")
                .arg(dev)
                .env("RUST_LOG", "warn"),
        )?);
        rss.push(
            std::fs::read_to_string(&rss_file)?
                .trim()
                .lines()
                .last()
                .unwrap_or("0")
                .parse::<f64>()?
                / 1024.0,
        );
        clean(&out_dir);
        let dd = |bs: &str| {
            let mut c = Command::new("dd");
            c.arg(format!("if={}", dev.display()))
                .arg(format!("of={}", target.display()))
                .arg(format!("bs={bs}"))
                .arg("conv=fsync")
                .arg("status=none");
            c
        };
        dd1m.push(run("dd bs=1M", &mut dd("1M"))?);
        clean(&out_dir);
        dd2k.push(run("dd bs=2048", &mut dd("2048"))?);
        clean(&out_dir);
        let map = out_dir.join("copy.map");
        ddrescue.push(
            run(
                "ddrescue",
                Command::new("ddrescue")
                    .arg("-q")
                    .arg(dev)
                    .arg(&target)
                    .arg(&map),
            )? + run("sync", &mut Command::new("sync"))?,
        );
    }
    let _ = std::fs::remove_dir_all(&out_dir);
    let mb = mib as f64 * 1.048_576;
    // Rates: median, and the slowest and fastest run, as "median (min–max)".
    let rate = |v: &mut Vec<f64>| {
        let med = mb / median(v);
        let (lo, hi) = (mb / v[v.len() - 1], mb / v[0]);
        (med, format!("{med:.0} ({lo:.0}–{hi:.0})"))
    };
    let ((r, rs), (d1, d1s), (d2, d2s), (dr, drs)) = (
        rate(&mut rip),
        rate(&mut dd1m),
        rate(&mut dd2k),
        rate(&mut ddrescue),
    );
    let peak = rss.iter().cloned().fold(0.0, f64::max);
    Ok(vec![
        format!(
            "| rip, {mib} MiB loop device → image (MB/s) | {rs} | dd bs=1M {d1s} | {:.2}× | ≥ 0.95× | {} |",
            r / d1,
            verdict(r / d1 >= 0.95)
        ),
        format!(
            "| rip vs ddrescue (MB/s) | {rs} | ddrescue {drs} | {:.2}× | | |",
            r / dr
        ),
        format!(
            "| rip vs dd bs=2048 (MB/s) | {rs} | dd bs=2048 {d2s} | {:.2}× | | |",
            r / d2
        ),
        format!(
            "| rip peak RSS, {mib} MiB image (MiB) | {peak:.1} | target 32 | {:.2}× | ≤ 1.00× | {} |",
            peak / 32.0,
            verdict(peak <= 32.0)
        ),
    ])
}
