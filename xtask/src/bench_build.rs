//! `cargo xtask bench-build`: how fast and how small `kpatch-rs build` is, each figure beside
//! its target (issue 14, item 6).
//!
//! The floor is what no tool can beat: the one translation unit the patch touches compiled
//! twice (original and patched) through Kbuild's single-object rule in an already prepared
//! build directory, plus Kbuild's link of the module from its object. The benchmark times
//! `kpatch-rs build` of `fixtures/patches/cmdline.patch` against the test kernel into an empty
//! cache (cold: a configured, never-built tree), then on that warm cache (best of three) and
//! the floor (best of three); then `fixtures/distro/cmdline.patch` against Debian's kernel
//! (the packages `cargo xtask distro-test` uses, downloaded once) into an empty cache with
//! the debug vmlinux as the symbol source, and once more with System.map. Peak memory is
//! kpatch-rs's own (`peak_memory_kib` of its `--json` report; make and the compiler are other
//! processes). It prints; it does not judge: the machine may be shared, so the load average
//! is printed with the figures.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::kernel::{ensure_kernel, KernelSpec};

const ROUNDS: usize = 3;

/// One timed run: its wall time, the CPU time of all it ran (kpatch-rs, make, the compilers:
/// what a busy machine cannot inflate much), and for `kpatch-rs build` its report's peak
/// memory.
#[derive(Clone, Copy)]
struct Run {
    time: Duration,
    cpu: f64,
    peak_kib: Option<u64>,
}

/// The run with the least wall time of `rounds`.
fn best_of(rounds: usize, mut run: impl FnMut() -> Result<Run>) -> Result<Run> {
    let mut best: Option<Run> = None;
    for _ in 0..rounds {
        let this = run()?;
        if best.is_none_or(|best| this.time < best.time) {
            best = Some(this);
        }
    }
    best.context("no rounds")
}

/// The user and system seconds of this process's waited-for children and their
/// descendants so far (`cutime` and `cstime` of `/proc/self/stat`).
fn children_cpu(ticks_per_second: f64) -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| fields.get(index).and_then(|f| f.parse::<f64>().ok());
    // `state` is field 3 of proc(5); `cutime` and `cstime` are fields 16 and 17.
    ticks(13).unwrap_or(0.0) / ticks_per_second + ticks(14).unwrap_or(0.0) / ticks_per_second
}

fn timed(ticks: f64, run: impl FnOnce() -> Result<()>) -> Result<Run> {
    let cpu = children_cpu(ticks);
    let start = Instant::now();
    run()?;
    Ok(Run {
        time: start.elapsed(),
        cpu: children_cpu(ticks) - cpu,
        peak_kib: None,
    })
}

/// Runs `kpatch-rs build --json ARGS`, timed; its report gives the peak memory.
fn kpatch_build(sh: &Shell, kpatch: &Path, args: &[String], ticks: f64) -> Result<Run> {
    let cpu = children_cpu(ticks);
    let start = Instant::now();
    let output = cmd!(sh, "{kpatch} build --json {args...}")
        .quiet()
        .ignore_status()
        .output()?;
    let time = start.elapsed();
    let cpu = children_cpu(ticks) - cpu;
    if !output.status.success() {
        bail!(
            "kpatch-rs build {} failed ({}):\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("kpatch-rs build --json printed no JSON")?;
    Ok(Run {
        time,
        cpu,
        peak_kib: report["peak_memory_kib"].as_u64(),
    })
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_string())
}

fn mib(run: &Run) -> String {
    run.peak_kib.map_or("unknown".to_string(), |kib| {
        format!("{:.1} MiB", kib as f64 / 1024.0)
    })
}

fn text(path: &Path) -> String {
    path.display().to_string()
}

pub fn run(args: &[String]) -> Result<()> {
    let mut distro = true;
    for arg in args {
        match arg.as_str() {
            "--test-kernel-only" => distro = false,
            other => {
                bail!("`cargo xtask bench-build` takes only --test-kernel-only, got `{other}`")
            }
        }
    }
    let sh = Shell::new()?;
    let root = crate::project_root();
    sh.change_dir(&root);
    let kernel = ensure_kernel(&sh, &KernelSpec::stock())?;
    let kpatch = crate::kpatch::build_kpatch_rs(&sh)?;
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let load_before = load_average();
    let ticks = cmd!(sh, "getconf CLK_TCK")
        .quiet()
        .read()
        .ok()
        .and_then(|text| text.trim().parse::<f64>().ok())
        .unwrap_or(100.0);

    let work = root.join("target/bench-build");
    let _ = std::fs::remove_dir_all(&work);
    let cache = work.join("cache");
    let output = work.join("out");
    let test_args: Vec<String> = vec![
        "--sourcedir".into(),
        text(&kernel.source),
        "--vmlinux".into(),
        text(&kernel.build.join("vmlinux")),
        "--cache-dir".into(),
        text(&cache),
        "-o".into(),
        text(&output),
        text(&root.join("fixtures/patches/cmdline.patch")),
    ];
    eprintln!("bench-build: the test kernel, cold (empty cache)");
    let cold = kpatch_build(&sh, &kpatch, &test_args, ticks)?;
    eprintln!("bench-build: the test kernel, warm (best of {ROUNDS})");
    let warm = best_of(ROUNDS, || kpatch_build(&sh, &kpatch, &test_args, ticks))?;
    let mut system_map_args = test_args.clone();
    system_map_args[2] = "--system-map".into();
    system_map_args[3] = text(&kernel.build.join("System.map"));
    let test_map = kpatch_build(&sh, &kpatch, &system_map_args, ticks)?;

    // The floor, in the build directories kpatch-rs prepared: the unit compiled twice with the
    // flags kpatch-rs uses, after removing the object so that make really compiles, and
    // Kbuild's link of the module kpatch-rs built, from its object.
    eprintln!("bench-build: the floor (best of {ROUNDS})");
    let entry = std::fs::read_dir(&cache)?
        .flatten()
        .map(|entry| entry.path())
        .find(|dir| dir.join("original").is_dir())
        .context("kpatch-rs left no original build directory in its cache")?;
    let original = entry.join("original");
    // The release kpatch-rs prepared the directory for: another would make Kbuild redo it.
    let release = std::fs::read_to_string(original.join("include/config/kernel.release"))
        .context("the original build directory has no kernel.release")?;
    let release = format!("KERNELRELEASE={}", release.trim());
    let link_dir = entry.join("module/link");
    let source = &kernel.source;
    let object = original.join("fs/proc/cmdline.o");
    let out = format!("O={}", original.display());
    let include = entry.join("include");
    let kcflags = format!(
        "KCFLAGS=-ffunction-sections -fdata-sections -I{} -g",
        include.display()
    );
    let compile_once = || -> Result<()> {
        let _ = std::fs::remove_file(&object);
        cmd!(
            sh,
            "make -s -C {source} {out} {release} {kcflags} objtool-enabled=y fs/proc/cmdline.o"
        )
        .quiet()
        .run()
        .context("compiling fs/proc/cmdline.o failed")
    };
    let module_object = link_dir.join("livepatch-cmdline.o");
    let module = link_dir.join("livepatch-cmdline.ko");
    let m = format!("M={}", link_dir.display());
    let prefix_map = format!(
        "KCFLAGS=-ffile-prefix-map={}=kpatch-rs-cache",
        entry.display()
    );
    let link_once = || -> Result<()> {
        let _ = std::fs::remove_file(&module);
        // A newer object, as each build's `ld -r` writes, so that Kbuild links again.
        let bytes = std::fs::read(&module_object)?;
        std::fs::write(&module_object, bytes)?;
        cmd!(
            sh,
            "make -s -C {original} {m} {release} {prefix_map} modules"
        )
        .quiet()
        .run()
        .context("linking the module failed")
    };
    let floor = best_of(ROUNDS, || {
        timed(ticks, || {
            compile_once()?;
            compile_once()?;
            link_once()
        })
    })?;

    let distro_runs = if distro {
        Some(bench_distro(&sh, &kpatch, &work, ticks)?)
    } else {
        None
    };
    let load_after = load_average();

    let s = |run: &Run| format!("{:.2} s", run.time.as_secs_f64());
    let row = |figure: &str, run: &Run, target: &str| {
        println!(
            "{figure:<58} {:<10} {:<9} {target}",
            s(run),
            format!("{:.1} s", run.cpu)
        );
    };
    println!(
        "bench-build ({cpus} CPUs, -j defaults to {cpus}; load average {load_before} before, \
         {load_after} after: a busy machine inflates wall times, CPU times much less)"
    );
    println!("{:<58} {:<10} {:<9} target", "figure", "wall", "CPU");
    row(
        "test kernel cold (configured, never built, empty cache)",
        &cold,
        "<= 12 s",
    );
    if let Some((debian_cold, _)) = &distro_runs {
        row(
            "Debian kernel cold (never-built tree, empty cache)",
            debian_cold,
            "<= 20 s",
        );
    }
    row(
        &format!("test kernel warm (best of {ROUNDS})"),
        &warm,
        &format!(
            "<= {:.2} s (1.2 x floor); {:.2} x floor",
            floor.time.as_secs_f64() * 1.2,
            warm.time.as_secs_f64() / floor.time.as_secs_f64()
        ),
    );
    row(
        &format!("floor: cmdline.o compiled twice + module link (best of {ROUNDS})"),
        &floor,
        "",
    );
    let memory = |figure: &str, run: &Run| {
        println!("{figure:<58} {:<20} <= 100 MiB", mib(run));
    };
    if let Some((debian_cold, debian_map)) = &distro_runs {
        memory(
            "peak memory of kpatch-rs, Debian's debug vmlinux",
            debian_cold,
        );
        memory("peak memory of kpatch-rs, Debian's System.map", debian_map);
    }
    memory("peak memory of kpatch-rs, test kernel's vmlinux", &cold);
    memory(
        "peak memory of kpatch-rs, test kernel's System.map",
        &test_map,
    );
    Ok(())
}

/// Debian's kernel: a cold build with the debug vmlinux into an empty cache, then one with
/// System.map on that cache.
fn bench_distro(sh: &Shell, kpatch: &Path, work: &Path, ticks: f64) -> Result<(Run, Run)> {
    let distro = crate::distro::ensure_distro(sh)?;
    let cache = work.join("distro-cache");
    let common = |symbols: &str, file: &Path| -> Vec<String> {
        vec![
            "--sourcedir".into(),
            text(&distro.source),
            "--config".into(),
            text(&distro.config),
            symbols.into(),
            text(file),
            "--symvers".into(),
            text(&distro.symvers),
            "--modules".into(),
            text(&distro.modules),
            "--cache-dir".into(),
            text(&cache),
            "-o".into(),
            text(&work.join("distro-out")),
            text(&crate::project_root().join("fixtures/distro/cmdline.patch")),
        ]
    };
    eprintln!("bench-build: Debian's kernel, cold (empty cache, debug vmlinux)");
    let cold = kpatch_build(sh, kpatch, &common("--vmlinux", &distro.vmlinux), ticks)?;
    eprintln!("bench-build: Debian's kernel with System.map");
    let map = kpatch_build(
        sh,
        kpatch,
        &common("--system-map", &distro.system_map),
        ticks,
    )?;
    Ok((cold, map))
}
