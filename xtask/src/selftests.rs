//! The kernel's own livepatch selftests (`tools/testing/selftests/livepatch`), run unmodified
//! in the guest: their test modules are built out of tree against the kernel under test, and
//! their helper program is linked statically, so the scripts find everything where they look.
//!
//! Nothing here is specific to one kernel image: give it the directories of another kernel
//! (for example one with the Rust livepatch core) and the same scripts judge that kernel.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::guest::{make_executable, Job, Rootfs};
use crate::kernel::{KernelDirs, RUST_CORE_FILES, RUST_CORE_SYMBOL};
use crate::process::run_logged;

/// Where the selftests live in a kernel source tree.
const SELFTEST_DIR: &str = "tools/testing/selftests/livepatch";

/// Where they live in the guest; the scripts run from there, as `make run_tests` would.
const GUEST_DIR: &str = "/selftests/livepatch";

/// The scripts loop on transitions with a generous retry limit; under software emulation the
/// slowest (test-callbacks.sh) takes about a minute, so this only stops a real hang.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(600);

/// Builds the selftests' modules and program for `kernel` in `work`, copies them into the
/// guest tree, and returns one job per script, in the order the selftests' Makefile lists.
pub fn jobs(kernel: &KernelDirs, rootfs: &Rootfs, work: &Path) -> Result<Vec<Job>> {
    let source = kernel.source.join(SELFTEST_DIR);
    let makefile = std::fs::read_to_string(source.join("Makefile")).with_context(|| {
        format!(
            "cannot read the livepatch selftests in {}",
            source.display()
        )
    })?;
    let scripts = test_programs(&makefile);
    if scripts.is_empty() {
        bail!(
            "cannot find TEST_PROGS in {}",
            source.join("Makefile").display()
        );
    }

    // The modules are built in a copy: Kbuild writes its objects next to the sources, and the
    // kernel source tree stays pristine.
    let copy = work.join("livepatch");
    if copy.exists() {
        std::fs::remove_dir_all(&copy)?;
    }
    copy_tree(&source, &copy)?;
    let log = work.join("build.log");
    std::fs::write(&log, "")?;
    if copy.join("test_modules").is_dir() {
        // Linux 6.5 and later: the modules beside the scripts, which insmod them from there.
        build_modules(
            kernel,
            &copy.join("test_modules"),
            &log,
            "selftests: test modules",
        )?;
    } else {
        // Earlier kernels: the modules are the kernel's own `lib/livepatch/` (built with
        // CONFIG_TEST_LIVEPATCH=m), which the scripts load with modprobe.
        install_lib_livepatch(kernel, rootfs, work, &log)?;
    }
    if copy.join("test_klp-call_getpid.c").is_file() {
        run_logged(
            Command::new("gcc").current_dir(&copy).args([
                "-O2",
                "-static",
                "-o",
                "test_klp-call_getpid",
                "test_klp-call_getpid.c",
            ]),
            &log,
            "selftests: test_klp-call_getpid",
        )?;
    }

    let guest = rootfs.path(Path::new(GUEST_DIR));
    copy_tree(&copy, &guest)?;
    let mut jobs = vec![core_check_job(kernel)?];
    for script in &scripts {
        let path = guest.join(script);
        if !path.is_file() {
            bail!(
                "selftest script {script} listed in the Makefile is missing from {}",
                source.display()
            );
        }
        make_executable(&path)?;
        jobs.push(Job {
            name: script.clone(),
            cwd: GUEST_DIR.to_string(),
            command: format!("./{script}"),
            timeout: SCRIPT_TIMEOUT,
        });
    }
    if guest.join("test_klp-call_getpid").is_file() {
        make_executable(&guest.join("test_klp-call_getpid"))?;
    }
    Ok(jobs)
}

/// The first job of every selftest boot: shows which livepatch core the booted kernel runs,
/// so that a Rust-core run cannot pass on a kernel that quietly runs the C bodies, nor a stock
/// run on a kernel that carries the Rust core. For the Rust core, the kernel's copy of the
/// algorithm must also be core-patch's text, byte for byte.
pub fn core_check_job(kernel: &KernelDirs) -> Result<Job> {
    let (name, command) = if kernel.has_rust_core() {
        verify_rust_core_source(&crate::project_root(), &kernel.source)?;
        (
            "livepatch-core-rust",
            format!(
                "grep -w {RUST_CORE_SYMBOL} /proc/kallsyms && dmesg | grep -F '{RUST_CORE_BOOT_LINE}'"
            ),
        )
    } else {
        (
            "livepatch-core-c",
            format!(
                "grep -q -w klp_module_coming /proc/kallsyms && ! grep -w {RUST_CORE_SYMBOL} /proc/kallsyms"
            ),
        )
    };
    Ok(Job {
        name: name.to_string(),
        cwd: "/".to_string(),
        command,
        timeout: Duration::from_secs(30),
    })
}

/// What `klp_rust_core_announce()` prints at boot (after `livepatch: `).
pub const RUST_CORE_BOOT_LINE: &str = "module coming/going run by core-patch";

/// Fails when a kernel tree's copy of the Rust core differs from the project's files: the
/// kernel would then test another text than the one the model checks.
pub fn verify_rust_core_source(project: &Path, kernel_source: &Path) -> Result<()> {
    for (from, to) in RUST_CORE_FILES {
        let ours = project.join(from);
        let theirs = kernel_source.join("kernel/livepatch").join(to);
        let ours_bytes =
            std::fs::read(&ours).with_context(|| format!("cannot read {}", ours.display()))?;
        let theirs_bytes = std::fs::read(&theirs).with_context(|| {
            format!(
                "cannot read {}: the kernel's tree lacks the Rust core",
                theirs.display()
            )
        })?;
        if ours_bytes != theirs_bytes {
            bail!(
                "{} differs from {}: the kernel was built from another text of the algorithm; \
                 rebuild it with `cargo xtask kernel --core rust`",
                theirs.display(),
                ours.display()
            );
        }
    }
    Ok(())
}

/// The side-by-side report of two kernels' selftest verdicts: one row per script, in the
/// order of the first kernel, then scripts only the second ran.
pub fn side_by_side(
    left_name: &str,
    left: &[(String, bool)],
    right_name: &str,
    right: &[(String, bool)],
) -> String {
    let mut names: Vec<&str> = left.iter().map(|(n, _)| n.as_str()).collect();
    for (name, _) in right {
        if !names.contains(&name.as_str()) {
            names.push(name);
        }
    }
    let width = names.iter().map(|n| n.len()).max().unwrap_or(0).max(6);
    let cell =
        |verdicts: &[(String, bool)], name: &str| match verdicts.iter().find(|(n, _)| n == name) {
            Some((_, true)) => "PASS",
            Some((_, false)) => "FAIL",
            None => "-",
        };
    let mut text = format!("{:width$}  {left_name:9}  {right_name}\n", "script");
    for name in names {
        let _ = writeln!(
            text,
            "{name:width$}  {:9}  {}",
            cell(left, name),
            cell(right, name)
        );
    }
    text
}

/// The test modules of kernels before 6.5: `lib/livepatch/*.c` built out of tree as modules
/// (`CONFIG_TEST_LIVEPATCH=m` for their Makefile), installed in the guest under
/// `/lib/modules/RELEASE/kernel/lib/livepatch/` with a `depmod` index, where the scripts'
/// `modprobe` finds them.
fn install_lib_livepatch(
    kernel: &KernelDirs,
    rootfs: &Rootfs,
    work: &Path,
    log: &Path,
) -> Result<()> {
    let modules = work.join("lib-livepatch");
    if modules.exists() {
        std::fs::remove_dir_all(&modules)?;
    }
    copy_tree(&kernel.source.join("lib/livepatch"), &modules)?;
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    run_logged(
        Command::new("make")
            .arg("-C")
            .arg(&kernel.build)
            .arg(format!("M={}", modules.display()))
            .arg("CONFIG_TEST_LIVEPATCH=m")
            .args(&kernel.make_vars)
            .arg(format!("-j{jobs}"))
            .arg("modules"),
        log,
        "selftests: lib/livepatch test modules",
    )?;
    let release_file = kernel.build.join("include/config/kernel.release");
    let release = std::fs::read_to_string(&release_file)
        .with_context(|| format!("cannot read {}", release_file.display()))?
        .trim()
        .to_string();
    let target = Path::new("/lib/modules")
        .join(&release)
        .join("kernel/lib/livepatch");
    let mut installed = 0;
    for entry in std::fs::read_dir(&modules)?.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "ko") {
            rootfs.copy_file(&path, &target.join(entry.file_name()))?;
            installed += 1;
        }
    }
    if installed == 0 {
        bail!("lib/livepatch gave no test modules (see {})", log.display());
    }
    run_logged(
        Command::new("depmod")
            .arg("-b")
            .arg(rootfs.path(Path::new("/")))
            .arg(&release),
        log,
        "selftests: depmod",
    )
}

/// Builds the out-of-tree modules in `dir` against `kernel` (`make -C build M=dir modules`).
pub fn build_modules(kernel: &KernelDirs, dir: &Path, log: &Path, label: &str) -> Result<()> {
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    run_logged(
        Command::new("make")
            .arg("-C")
            .arg(&kernel.build)
            .arg(format!("M={}", dir.display()))
            .args(&kernel.make_vars)
            .arg(format!("-j{jobs}"))
            .arg("modules"),
        log,
        label,
    )
}

/// The scripts of `TEST_PROGS := a.sh \ b.sh ...` in a selftest Makefile, in order.
fn test_programs(makefile: &str) -> Vec<String> {
    let mut programs = Vec::new();
    let mut in_list = false;
    for line in makefile.lines() {
        let line = line.trim();
        let rest = if in_list {
            line
        } else if let Some(rest) = line.strip_prefix("TEST_PROGS") {
            let rest = rest.trim_start();
            match rest.strip_prefix(":=").or_else(|| rest.strip_prefix('=')) {
                Some(rest) => rest,
                None => continue,
            }
        } else {
            continue;
        };
        let continued = rest.ends_with('\\');
        programs.extend(
            rest.trim_end_matches('\\')
                .split_whitespace()
                .map(str::to_string),
        );
        in_list = continued;
    }
    programs
}

/// Copies a directory tree (files and directories; symlinks are followed).
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    let entries =
        std::fs::read_dir(from).with_context(|| format!("cannot list {}", from.display()))?;
    for entry in entries {
        let entry = entry?;
        let target: PathBuf = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target).with_context(|| {
                format!(
                    "cannot copy {} to {}",
                    entry.path().display(),
                    target.display()
                )
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(makefile: &str, expected: &[&str]) {
        assert_eq!(test_programs(makefile), expected);
    }

    fn verdicts(list: &[(&str, bool)]) -> Vec<(String, bool)> {
        list.iter().map(|(n, ok)| (n.to_string(), *ok)).collect()
    }

    #[test]
    fn side_by_side_lines_up_both_kernels() {
        let stock = verdicts(&[("livepatch-core-c", true), ("a.sh", true), ("bb.sh", true)]);
        let rust = verdicts(&[
            ("livepatch-core-rust", true),
            ("a.sh", true),
            ("bb.sh", false),
        ]);
        let expected = "\
script               stock      rust-core
livepatch-core-c     PASS       -
a.sh                 PASS       PASS
bb.sh                PASS       FAIL
livepatch-core-rust  -          PASS
";
        assert_eq!(side_by_side("stock", &stock, "rust-core", &rust), expected);
    }

    #[test]
    fn rust_core_copy_must_match_the_project() {
        let dir = std::env::temp_dir().join(format!("kpatch-rs-core-copy-{}", std::process::id()));
        let livepatch = dir.join("kernel/livepatch");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&livepatch).unwrap_or_default();
        let project = crate::project_root();
        assert!(
            verify_rust_core_source(&project, &dir).is_err(),
            "no copy yet"
        );
        crate::kernel::copy_rust_core_files(&livepatch).unwrap_or_default();
        let same = verify_rust_core_source(&project, &dir);
        assert!(same.is_ok(), "{same:?}");
        let copy = livepatch.join("module_notifier.rs");
        let mut text = std::fs::read_to_string(&copy).unwrap_or_default();
        text.push_str("// edited\n");
        std::fs::write(&copy, text).unwrap_or_default();
        let error = verify_rust_core_source(&project, &dir).map_err(|e| e.to_string());
        assert!(
            error
                .as_ref()
                .is_err_and(|e| e.contains("module_notifier.rs differs")),
            "{error:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reads_test_programs() {
        check(
            "TEST_GEN_FILES := x\nTEST_PROGS := \\\n\ta.sh \\\n\tb.sh \\\n\tc.sh\n\nTEST_FILES := settings\n",
            &["a.sh", "b.sh", "c.sh"],
        );
        check(
            "TEST_PROGS := a.sh b.sh\nTEST_PROGS_EXTENDED := f.sh\n",
            &["a.sh", "b.sh"],
        );
        check("TEST_PROGS = a.sh\n", &["a.sh"]);
        check("TEST_PROGS_EXTENDED := functions.sh\n", &[]);
        check("", &[]);
    }
}
