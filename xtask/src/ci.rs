//! `cargo xtask ci`: the whole check a clean checkout must pass, in the order CI runs it.
//!
//! Dependencies first (nothing else can run without them), then the cheap checks, then the
//! kernel build, the unit tests, the fuzz targets for a bounded time, the faults, the
//! distribution tests (Debian's own kernel, its static-call rewrites without a livepatch,
//! `cargo xtask int3-repro`, and a fixed sample of a Debian stable update's real changes,
//! `cargo xtask stable-delta --sample`) and the QEMU tests. A
//! failing check does not stop the later ones, so one run shows every problem; the exit
//! status is non-zero when anything failed, and the last line
//! is the QEMU tests' `N passed, N failed`. The selftests and the cases also run on the 6.1
//! test kernel. The upstream selftests run on two kernels, the
//! stock one and the Rust-core one, and their verdicts are printed side by side; then the
//! race stress (`cargo xtask race-stress`) runs on both, clean required, and on the Rust core
//! built with the pre-fix binding rule, where it must see the race. The signing cases
//! (`fixtures/signing/cases/`) run on one more kernel, the stock one with module signatures
//! enforced.

use anyhow::{bail, Result};
use xshell::{cmd, Shell};

use crate::kernel::{ensure_kernel, Core, KernelSpec};

/// Seconds of fuzzing per target in CI: four targets, three minutes in all, after a build
/// of the libFuzzer binaries of about two minutes on the 2-core machine (4 min 54 s in all,
/// measured from a cold build).
const FUZZ_SECONDS: &str = "45";

pub fn run(args: &[String]) -> Result<()> {
    if let Some(arg) = args.first() {
        bail!("`cargo xtask ci` takes no arguments, got `{arg}`");
    }
    let started = std::time::Instant::now();
    let sh = Shell::new()?;
    sh.change_dir(crate::project_root());
    crate::deps::ensure_packages(&sh)?;

    let mut failed_steps = Vec::new();
    let mut step = |name: &str, result: Result<()>| {
        if let Err(error) = result {
            eprintln!("ci: {name} failed: {error:#}");
            failed_steps.push(name.to_string());
        }
    };
    step(
        "fmt",
        cmd!(sh, "cargo fmt --all -- --check")
            .run()
            .map_err(Into::into),
    );
    step(
        "clippy",
        cmd!(
            sh,
            "cargo clippy --workspace --all-targets --all-features -- -D warnings"
        )
        .run()
        .map_err(Into::into),
    );
    // The kernel comes before the unit tests: `kpatch-rs build`'s tests build against it.
    let kernel = ensure_kernel(&sh, &KernelSpec::stock())?;
    // The diff's kernel tests read object pairs built from that kernel's source.
    step(
        "kernel fixtures",
        cmd!(sh, "cargo xtask fixtures").run().map_err(Into::into),
    );
    // The unit tests run with CI set, so a test that lacks a tool fails instead of skipping.
    step(
        "unit tests",
        cmd!(sh, "cargo test --workspace --all-features")
            .env("CI", "1")
            .env("KPATCH_RS_KERNEL_SOURCE", &kernel.source)
            .env("KPATCH_RS_KERNEL_BUILD", &kernel.build)
            .run()
            .map_err(Into::into),
    );

    // The readers against hostile input: each fuzz target for a bounded time, seeded from
    // the fixtures (the kernel pairs included), a crash fails (`cargo xtask fuzz`).
    step(
        "fuzz",
        cmd!(sh, "cargo xtask fuzz --seconds {FUZZ_SECONDS}")
            .run()
            .map_err(Into::into),
    );

    // `kpatch-rs build` killed at random points and run side by side: nothing lost.
    let kills = crate::faults::CI_KILLS.to_string();
    step(
        "faults",
        cmd!(sh, "cargo xtask faults --kills {kills}")
            .run()
            .map_err(Into::into),
    );

    // What a package installs: the binary, its manual pages and shell completions.
    step(
        "dist",
        cmd!(sh, "cargo xtask dist").run().map_err(Into::into),
    );

    // Debian's own kernels, 6.12, Debian 12's default 6.1 and Debian 13's 6.12, livepatched by kpatch-rs from
    // both symbol sources.
    step(
        "distro test",
        cmd!(sh, "cargo xtask distro-test")
            .run()
            .map_err(Into::into),
    );
    step(
        "distro test 6.1",
        cmd!(sh, "cargo xtask distro-test --kernel 6.1")
            .run()
            .map_err(Into::into),
    );
    // Debian 13's kernel, built by gcc 14: refused with this machine's gcc 12, built in a
    // trixie root with `--chroot`.
    step(
        "distro test trixie",
        cmd!(sh, "cargo xtask distro-test --kernel trixie")
            .run()
            .map_err(Into::into),
    );

    // `kpatch-rs package --deb` of distro-test's livepatch-cmdline.ko and of the tool,
    // installed in a Debian 12 chroot and booted with systemd in QEMU: loaded at boot,
    // unloaded by `dpkg -r`, not loaded with kpatch.enable=0 (`cargo xtask package-test`).
    step(
        "package test",
        cmd!(sh, "cargo xtask package-test")
            .run()
            .map_err(Into::into),
    );

    // The static-call rewrites every livepatch transition makes, without a livepatch, on the
    // machine every guest check runs on (one TCG thread, both vCPUs online): no int3 oops
    // (`cargo xtask int3-repro`).
    step("int3 check", crate::int3_repro::ci_check(&sh));

    // A fixed sample of a Debian stable update's real changes, built and loaded on Debian's
    // kernel: each must end as expected, and none may oops (`cargo xtask stable-delta`).
    // `--rebuild`: the results kept from an earlier run would judge an earlier kpatch-rs.
    step(
        "stable-delta sample",
        cmd!(
            sh,
            "cargo xtask stable-delta --from 6.12.111 --to 6.12.113 --sample --rebuild"
        )
        .run()
        .map_err(Into::into),
    );

    let (mut tally, stock_verdicts) = crate::qemu_test::run_everything_verdicts(&sh, &kernel)?;

    // The test kernel matrix: the same selftests and cases on a 6.1 test kernel (Debian
    // 12's default series), the cases' 6.1 patches and scripts where 6.1 differs.
    let mut spec_6_1 = KernelSpec::stock();
    spec_6_1.tarball = crate::kernel::series_tarball("6.1")?;
    match ensure_kernel(&sh, &spec_6_1)
        .and_then(|dirs| crate::qemu_test::run_everything_verdicts(&sh, &dirs))
    {
        Ok((tally_6_1, verdicts_6_1)) => {
            tally.passed += tally_6_1.passed;
            tally.failed += tally_6_1.failed;
            tally.skipped += tally_6_1.skipped;
            print!(
                "{}",
                crate::selftests::side_by_side("6.12", &stock_verdicts, "6.1", &verdicts_6_1)
            );
        }
        Err(error) => {
            tally.failed += 1;
            println!("FAIL  6.1 test kernel: {error:#}");
        }
    }

    // `kpatch-rs build --sign-key`: the unsigned module refused and the signed one loaded by
    // a kernel that enforces module signatures and trusts the test key.
    let signing_cases = crate::project_root().join(crate::cases::SIGNING_CASES);
    match ensure_kernel(&sh, &KernelSpec::module_signing())
        .and_then(|dirs| crate::qemu_test::run_cases(&sh, &dirs, &signing_cases))
    {
        Ok(signing_tally) => {
            tally.passed += signing_tally.passed;
            tally.failed += signing_tally.failed;
            tally.skipped += signing_tally.skipped;
        }
        Err(error) => {
            tally.failed += 1;
            println!("FAIL  signing cases: {error:#}");
        }
    }

    // The same selftests, through the same runner, on the kernel whose module coming/going
    // hooks run core-patch's Rust algorithm; then both kernels' verdicts side by side.
    let rust_started = std::time::Instant::now();
    match ensure_kernel(&sh, &KernelSpec::rust_core()) {
        Ok(rust_kernel) => {
            eprintln!(
                "ci: Rust-core kernel ready in {}s",
                rust_started.elapsed().as_secs()
            );
            let (rust_tally, rust_verdicts) =
                crate::qemu_test::run_selftests_verdicts(&sh, &rust_kernel)?;
            tally.passed += rust_tally.passed;
            tally.failed += rust_tally.failed;
            print!(
                "{}",
                crate::selftests::side_by_side(
                    "stock",
                    &stock_verdicts,
                    "rust-core",
                    &rust_verdicts
                )
            );
            // The founding race on both kernels: M comes and goes while P3 is enabled; on
            // the Rust core also with the race window widened.
            let runs = [
                (&kernel, "stock", 0),
                (&rust_kernel, "rust-core", 0),
                (
                    &rust_kernel,
                    "rust-core",
                    crate::race_stress::EXPERIMENT_WINDOW_MS,
                ),
            ];
            let kpatch = crate::kpatch::build_kpatch_rs(&sh);
            for (dirs, name, window_ms) in runs {
                let rounds = crate::race_stress::DEFAULT_ROUNDS;
                let verdict = kpatch
                    .as_ref()
                    .map_err(|e| anyhow::anyhow!("{e:#}"))
                    .and_then(|kpatch| {
                        let observation = crate::race_stress::observe(
                            &sh, kpatch, dirs, name, rounds, window_ms,
                        )?;
                        crate::race_stress::judge(&observation)?;
                        Ok(observation)
                    });
                match verdict {
                    Ok(observation) => {
                        tally.passed += 1;
                        println!("PASS  race-stress {}", observation.describe());
                    }
                    Err(error) => {
                        tally.failed += 1;
                        println!("FAIL  race-stress {name} window {window_ms} ms: {error:#}");
                    }
                }
            }
        }
        Err(error) => step("Rust-core kernel", Err(error)),
    }

    // The other side of the stress: on the Rust core built with the pre-fix binding rule, the
    // same stress must see the race, or it could not see it on the kernels above either.
    let verdict = ensure_kernel(&sh, &KernelSpec::for_core(Core::RustPreFix)).and_then(|dirs| {
        let kpatch = crate::kpatch::build_kpatch_rs(&sh)?;
        crate::race_stress::observe(
            &sh,
            &kpatch,
            &dirs,
            Core::RustPreFix.name(),
            crate::race_stress::DEFAULT_ROUNDS,
            crate::race_stress::EXPERIMENT_WINDOW_MS,
        )
    });
    match verdict {
        Ok(observation) if observation.tally.is_some_and(|t| t.shows_the_race()) => {
            tally.passed += 1;
            println!(
                "PASS  race-stress sees the race without the fix: {}",
                observation.describe()
            );
        }
        Ok(observation) => {
            tally.failed += 1;
            println!(
                "FAIL  race-stress did not see the race without the fix: {}; guest output in {}",
                observation.describe(),
                observation.output_file.display()
            );
        }
        Err(error) => {
            tally.failed += 1;
            println!("FAIL  race-stress on the pre-fix Rust core: {error:#}");
        }
    }
    eprintln!("ci: finished in {}s", started.elapsed().as_secs());
    if !failed_steps.is_empty() {
        eprintln!("ci: failed steps: {}", failed_steps.join(", "));
    }
    println!("{}", tally.summary());
    if !failed_steps.is_empty() || tally.failed > 0 {
        bail!("ci failed");
    }
    Ok(())
}
