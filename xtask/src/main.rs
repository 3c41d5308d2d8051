//! Developer automation behind `cargo xtask`: dependencies, kernels, QEMU tests, CI.
//!
//! CI calls `cargo xtask ci` and nothing else.

#![allow(
    clippy::disallowed_methods,
    reason = "developer automation: running programs is what xtask does"
)]

mod bench_build;
mod build_root;
mod cases;
mod ci;
mod debian_kpatch;
mod demo;
mod deps;
mod dist;
mod distro;
mod faults;
mod fixtures;
mod fuzz;
mod guest;
mod int3_repro;
mod kernel;
mod kpatch;
mod package_test;
mod process;
mod qemu_test;
mod race_stress;
mod selftests;
mod stable_delta;
mod suite_apt;

use anyhow::{bail, Result};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  demo      the main job: deps, test kernel, kpatch-rs build of a patch, load it in QEMU
  bench-build  time kpatch-rs build against compiling the touched object twice
  ci        everything CI checks: fmt, clippy, unit tests, QEMU tests
  distro-test  livepatch Debian's own 6.12 kernel in QEMU: 3 patches, debug vmlinux and
            System.map as symbol sources [--bench: also estimate a full build]
  faults    kpatch-rs build killed (SIGKILL) at random points, then run again, and builds
            side by side in one cache and in two: the same bytes, the tree untouched
            [--kills N (50)] [--seed S] [--keep]
  deps      install the Debian packages the harness needs (apt-get)
  dist      the release binary, manual pages and shell completions under target/dist/
  kernel    build the cached test kernel [--print-dirs] [--core c|rust|rust-pre-fix]
            [--fragment FILE]...
  package-test  kpatch-rs package --deb: install in a Debian 12 chroot (debootstrap, cached),
            then boot it with systemd in QEMU: the livepatch loads at boot, dpkg -r unloads
            it, kpatch.enable=0 stops it (needs distro-test's livepatch-cmdline.ko)
  qemu-test run the livepatch selftests and tests/ cases in QEMU
            [--core c|rust|rust-pre-fix] [--fragment FILE]... [--kernel-build DIR] [--tests DIR]
            [--only selftests|cases]
  stable-delta  --from A --to B: every .c file Debian's amd64 kernel compiles that changed
            between two linux-source-6.12 versions (6.12.111 or 6.12.111-1~deb12u1), one
            kpatch-rs build each for A's own kernel, each livepatch loaded in QEMU; results
            in ~/.cache/kpatch-rs/stable-delta/runs/ and fixtures/stable-delta/
            [--sample: the fixed list of fixtures/stable-delta/sample.txt] [--parallel N]
            [--file PATH]... [--limit N] [--skip-guest] [--rebuild] [--report-only]
  int3-repro  rewrite the cond_resched() static-call sites in a loop in QEMU, every CPU online
            and busy, and count int3 oopses [--kernel stock|debian] [--tcg single|multi]
            [--cpus N] [--load preempt|livepatch] [--seconds N] [--switches N] [--boots N];
            --ci: CI's bounded check (Debian, one TCG thread, both vCPUs online)
  fixtures  build the kernel object pairs of fixtures/kernel/patches for the diff tests
  fuzz      libFuzzer on the ELF reader, the diff, symbol maps and patches, each target for
            a bounded time; a crash fails [--seconds N (default 60)] [TARGET...]
  race-stress  the founding race on a real kernel: M comes and goes while P3 is
            enabled and disabled [--core c|rust|rust-pre-fix] [--rounds N]
            [--window-ms MS] [--kernel-build DIR]; --experiment [--rounds N]: every
            kernel, with and without a widened race window, and the model's prediction
";

/// Errors are printed as one chain of causes, without the backtrace that anyhow's default
/// report adds when RUST_BACKTRACE is set: the messages say what to do, the stack does not.
fn main() -> std::process::ExitCode {
    match dispatch() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        print!("{USAGE}");
        return Ok(());
    };
    match command.as_str() {
        "demo" => demo::run(rest),
        "bench-build" => bench_build::run(rest),
        "ci" => ci::run(rest),
        "deps" => deps::run(rest),
        "dist" => dist::run(rest),
        "distro-test" => distro::run(rest),
        "package-test" => package_test::run(rest),
        "faults" => faults::run(rest),
        "kernel" => kernel::run(rest),
        "qemu-test" => qemu_test::run(rest),
        "fixtures" => fixtures::run(rest),
        "fuzz" => fuzz::run(rest),
        "int3-repro" => int3_repro::run(rest),
        "race-stress" => race_stress::run(rest),
        "stable-delta" => stable_delta::run(rest),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown xtask command `{other}`\n\n{USAGE}"),
    }
}

/// The workspace root: xtask lives one level below it.
/// `${XDG_CACHE_HOME:-$HOME/.cache}/kpatch-rs/<part>`: where each cache of xtask lives.
pub fn cache_dir(part: &str) -> anyhow::Result<std::path::PathBuf> {
    match kpatch_support::cache_root() {
        Some(root) => Ok(root.join(part)),
        None => bail!("cannot locate the cache directory: neither XDG_CACHE_HOME nor HOME is set"),
    }
}

pub fn project_root() -> std::path::PathBuf {
    let manifest_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| manifest_dir.to_path_buf())
}
