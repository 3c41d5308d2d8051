//! `cargo bench -p kpatch-diff --bench diff`: time per object pair of the diff engine on the
//! kernel fixtures of `cargo xtask fixtures`, in all three variants (best and median of many
//! runs, in one thread),
//! and the time to diff all pairs at once in parallel.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kpatch_diff::{diff, diff_all, Pair};

const RUNS: usize = 50;

fn fixtures_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("KPATCH_RS_KERNEL_FIXTURES") {
        return Some(PathBuf::from(dir));
    }
    Some(kpatch_support::cache_root()?.join("fixtures/latest"))
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(dir) = fixtures_dir().filter(|d| d.join("complete").is_file()) else {
        eprintln!("no kernel fixtures: run `cargo xtask fixtures` first");
        return Ok(());
    };
    let manifest = std::fs::read_to_string(dir.join("manifest"))?;
    let mut inputs = Vec::new();
    for line in manifest.lines() {
        let Some((_, object)) = line.split_once(' ') else {
            continue;
        };
        for variant in ["", "-objtool", "-debug"] {
            let orig = std::fs::read(dir.join(format!("orig{variant}")).join(object))?;
            let patched = std::fs::read(dir.join(format!("patched{variant}")).join(object))?;
            let label = format!("{object}{variant}");
            inputs.push((label, orig, patched));
        }
    }
    let pairs: Vec<Pair<'_>> = inputs
        .iter()
        .map(|(name, orig, patched)| Pair {
            name,
            orig_name: name,
            orig,
            patched,
            klp_object: "vmlinux",
        })
        .collect();

    println!(
        "{:<40} {:>9} {:>9} {:>10}",
        "object", "size KiB", "best ms", "median ms"
    );
    for pair in &pairs {
        let mut times = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            let start = Instant::now();
            let result = diff(pair)?;
            times.push(start.elapsed());
            std::hint::black_box(result);
        }
        times.sort();
        println!(
            "{:<40} {:>9} {:>9.3} {:>10.3}",
            pair.name,
            pair.patched.len() / 1024,
            millis(times[0]),
            millis(times[RUNS / 2])
        );
    }
    let mut best = Duration::MAX;
    for _ in 0..RUNS {
        let start = Instant::now();
        let results = diff_all(&pairs);
        best = best.min(start.elapsed());
        std::hint::black_box(results);
    }
    println!(
        "all {} pairs in parallel ({} threads): best {:.3} ms",
        pairs.len(),
        rayon::current_num_threads(),
        millis(best)
    );
    Ok(())
}
