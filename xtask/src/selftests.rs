//! The kernel's own livepatch selftests (`tools/testing/selftests/livepatch`), run unmodified
//! in the guest: their test modules are built out of tree against the kernel under test, and
//! their helper program is linked statically, so the scripts find everything where they look.
//!
//! Nothing here is specific to one kernel image: give it the directories of another kernel
//! (for example one with the Rust livepatch core) and the same scripts judge that kernel.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::guest::{make_executable, Job, Rootfs};
use crate::kernel::KernelDirs;
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
pub fn prepare(kernel: &KernelDirs, rootfs: &Rootfs, work: &Path) -> Result<Vec<Job>> {
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
    build_modules(
        kernel,
        &copy.join("test_modules"),
        &log,
        "selftests: test modules",
    )?;
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

    let guest = rootfs.path(Path::new(GUEST_DIR));
    copy_tree(&copy, &guest)?;
    let mut jobs = Vec::new();
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
    make_executable(&guest.join("test_klp-call_getpid"))?;
    Ok(jobs)
}

/// Builds the out-of-tree modules in `dir` against `kernel` (`make -C build M=dir modules`).
pub fn build_modules(kernel: &KernelDirs, dir: &Path, log: &Path, label: &str) -> Result<()> {
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    run_logged(
        Command::new("make")
            .arg("-C")
            .arg(&kernel.build)
            .arg(format!("M={}", dir.display()))
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
