//! End-to-end livepatch scenarios from `tests/`, run in the guest.
//!
//! A scenario is a directory `tests/<name>/` holding:
//! - `guest.sh`: run in the guest, from a directory that holds the scenario's built modules;
//! - `expected`: what `guest.sh` must print (stdout and stderr together); the scenario passes
//!   when the script exits 0 and its output matches, line by line, ignoring trailing blanks;
//! - `module/`: sources of out-of-tree modules, built with `make M=` against the kernel under
//!   test. `module/kernel-sources` may list files of the kernel source tree (one per line,
//!   relative to its top) to copy in first, so a scenario can build the kernel's own samples
//!   without carrying a copy of them.
//!
//! - `timeout` (optional): seconds the script may run, 120 when absent.
//!
//! A scenario with a `*.patch` instead will have its module made by `kpatch-rs build`; this
//! runner refuses such a scenario until that command exists.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::guest::{make_executable, Job, Outcome, Rootfs};
use crate::kernel::KernelDirs;
use crate::selftests::{build_modules, copy_tree};

const GUEST_DIR: &str = "/scenarios";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// A scenario found in `tests/`.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub dir: PathBuf,
    pub expected: String,
    pub timeout: Duration,
}

/// The scenarios under `tests_dir`, sorted by name.
pub fn discover(tests_dir: &Path) -> Result<Vec<Scenario>> {
    let mut scenarios = Vec::new();
    let entries = std::fs::read_dir(tests_dir)
        .with_context(|| format!("cannot list scenarios in {}", tests_dir.display()))?;
    for entry in entries {
        let dir = entry?.path();
        if !dir.join("guest.sh").is_file() {
            continue;
        }
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let expected = std::fs::read_to_string(dir.join("expected")).with_context(|| {
            format!("scenario {name} has no readable `expected` file (what guest.sh must print)")
        })?;
        let timeout = match std::fs::read_to_string(dir.join("timeout")) {
            Ok(text) => Duration::from_secs(text.trim().parse().with_context(|| {
                format!("scenario {name}: `timeout` must hold a number of seconds, found {text:?}")
            })?),
            Err(_) => DEFAULT_TIMEOUT,
        };
        scenarios.push(Scenario {
            name,
            dir,
            expected,
            timeout,
        });
    }
    scenarios.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(scenarios)
}

/// Builds each scenario's modules for `kernel`, stages the scenario in the guest tree, and
/// returns one job per scenario.
pub fn prepare(
    kernel: &KernelDirs,
    rootfs: &Rootfs,
    scenarios: &[Scenario],
    work: &Path,
) -> Result<Vec<Job>> {
    let mut jobs = Vec::new();
    for scenario in scenarios {
        let guest_dir = format!("{GUEST_DIR}/{}", scenario.name);
        let staged = rootfs.path(Path::new(&guest_dir));
        std::fs::create_dir_all(&staged)?;
        if has_patch(&scenario.dir)? {
            bail!(
                "scenario {} has a .patch file, which needs `kpatch-rs build` to make its module; \
                 this runner builds only `module/` sources so far",
                scenario.name
            );
        }
        let module_sources = scenario.dir.join("module");
        if module_sources.is_dir() {
            let build_dir = work.join(&scenario.name);
            if build_dir.exists() {
                std::fs::remove_dir_all(&build_dir)?;
            }
            copy_tree(&module_sources, &build_dir)?;
            copy_kernel_sources(kernel, &build_dir, &scenario.name)?;
            let log = work.join(format!("{}.build.log", scenario.name));
            std::fs::write(&log, "")?;
            build_modules(
                kernel,
                &build_dir,
                &log,
                &format!("scenario {}: modules", scenario.name),
            )?;
            for module in files_with_extension(&build_dir, "ko")? {
                let name = module.file_name().unwrap_or_default();
                std::fs::copy(&module, staged.join(name))
                    .with_context(|| format!("cannot stage {}", module.display()))?;
            }
        }
        let script = staged.join("guest.sh");
        std::fs::copy(scenario.dir.join("guest.sh"), &script)
            .with_context(|| format!("cannot stage guest.sh of scenario {}", scenario.name))?;
        make_executable(&script)?;
        jobs.push(Job {
            name: scenario.name.clone(),
            cwd: guest_dir,
            command: "./guest.sh".to_string(),
            timeout: scenario.timeout,
        });
    }
    Ok(jobs)
}

fn has_patch(dir: &Path) -> Result<bool> {
    Ok(!files_with_extension(dir, "patch")?.is_empty())
}

fn files_with_extension(dir: &Path, extension: &str) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.is_file() && path.extension().is_some_and(|e| e == extension) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Copies the kernel source files named in `module/kernel-sources` into the module build dir.
fn copy_kernel_sources(kernel: &KernelDirs, build_dir: &Path, scenario: &str) -> Result<()> {
    let list = build_dir.join("kernel-sources");
    let Ok(text) = std::fs::read_to_string(&list) else {
        return Ok(());
    };
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let relative = Path::new(line);
        if relative.is_absolute() || relative.components().any(|c| c.as_os_str() == "..") {
            bail!("scenario {scenario}: kernel-sources entry {line:?} must be a path inside the kernel tree");
        }
        let from = kernel.source.join(relative);
        let name = relative.file_name().unwrap_or_default();
        std::fs::copy(&from, build_dir.join(name)).with_context(|| {
            format!(
                "scenario {scenario}: cannot copy {} from the kernel source",
                from.display()
            )
        })?;
    }
    Ok(())
}

/// Whether a scenario passed, and if not, why.
pub fn judge(scenario: &Scenario, outcome: &Outcome) -> std::result::Result<(), String> {
    match &outcome.ending {
        crate::guest::Ending::Exited(0) => {}
        crate::guest::Ending::Exited(code) => return Err(format!("guest.sh exited {code}")),
        crate::guest::Ending::TimedOut => {
            return Err(format!("timed out after {}s", scenario.timeout.as_secs()))
        }
        crate::guest::Ending::GuestLost(why) => return Err(why.clone()),
    }
    let expected = normalise(&scenario.expected);
    let actual = normalise(&outcome.output);
    if expected == actual {
        return Ok(());
    }
    Err(format!(
        "output differs from {}\n--- expected\n{expected}\n--- actual\n{actual}",
        scenario.dir.join("expected").display()
    ))
}

/// Lines with trailing blanks removed, without trailing empty lines.
fn normalise(text: &str) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    let end = lines
        .iter()
        .rposition(|l| !l.is_empty())
        .map_or(0, |i| i + 1);
    lines[..end].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::Ending;

    fn check(expected: &str, ending: Ending, output: &str, passes: bool) {
        let scenario = Scenario {
            name: "s".to_string(),
            dir: PathBuf::from("tests/s"),
            expected: expected.to_string(),
            timeout: DEFAULT_TIMEOUT,
        };
        let outcome = Outcome {
            name: "s".to_string(),
            ending,
            output: output.to_string(),
            seconds: None,
            console_log: None,
        };
        assert_eq!(
            judge(&scenario, &outcome).is_ok(),
            passes,
            "{expected:?} vs {output:?}"
        );
    }

    #[test]
    fn judges_exit_code_and_output() {
        check("a\nb\n", Ending::Exited(0), "a\nb\n", true);
        check("a\nb\n", Ending::Exited(0), "a  \nb\n\n\n", true);
        check("a\nb", Ending::Exited(0), "a\nb\n", true);
        check("a\nb\n", Ending::Exited(0), "a\nc\n", false);
        check("a\nb\n", Ending::Exited(0), "a\n", false);
        check("a\nb\n", Ending::Exited(0), "\na\nb\n", false);
        check("a\n", Ending::Exited(1), "a\n", false);
        check("a\n", Ending::GuestLost("hung".to_string()), "a\n", false);
        check("a\n", Ending::TimedOut, "a\n", false);
    }
}
