//! End-to-end livepatch cases from `tests/`: their modules built on the host, their
//! scripts run in the guest, and their verdicts.
//!
//! A case is a directory `tests/<name>/` holding at least one of `guest.sh` and `build`:
//! - `guest.sh`: run in the guest, from a directory that holds the case's built modules;
//!   it can source `/cases/livepatch.sh` (`fixtures/cases/livepatch.sh`), the shared
//!   helpers. The kernel log is cleared before it runs, and the case fails when the log
//!   then shows a warning, an oops, a BUG or a call trace;
//! - `expected` (with `guest.sh`): what `guest.sh` must print (stdout and stderr together); the
//!   case passes when the script exits 0 and its output matches, line by line, ignoring
//!   trailing blanks. Lines that start with `KPATCH-FIGURE ` (the helper `figure`) are
//!   measurements that differ from run to run: they are left out of the comparison and
//!   printed under the case's verdict;
//! - `build`: modules made by the project's own `kpatch-rs build` from patch files of the
//!   case (against the kernel under test), one per line, `NAME [--no-replace] [--sign]
//!   PATCH...`; `livepatch-NAME.ko` is then beside `guest.sh`. A name with a range,
//!   `level{1..20}`, is one line per number (`level1` to `level20`), each built from its
//!   patches with every `@N@` replaced by the number, so that a case can stack many distinct
//!   patches made from one template. `--sign` signs it with the
//!   committed test key (`fixtures/signing/test-key.pem`, which the signing kernel trusts),
//!   and the build must then have appended a signature. A line ending in `=> exit CODE: MESSAGE`
//!   is a build that must fail instead: with that exit code, MESSAGE somewhere in its output,
//!   and no module written. `--oot-module=NAME` patches the out-of-tree module `NAME.ko` of
//!   the case's `module/` (built first, against the kernel under test) with `module/` itself
//!   as `--oot-module-src`: the patches are then against the module's source. A case with a
//!   `build` and no `guest.sh` is judged on the host alone and needs no boot;
//! - `module/`: sources of out-of-tree modules, built with `make M=` against the kernel under
//!   test. `module/kernel-sources` may list files of the kernel source tree (one per line,
//!   relative to its top) to copy in first, so a case can build the kernel's own samples
//!   without carrying a copy of them;
//! - `program/*.c`: user programs the script runs, compiled on the host with `gcc -static`
//!   (the guest has no C library of its own) into `./NAME` beside `guest.sh`;
//! - `tools` (optional): programs the script runs besides the guest's usual ones, one word
//!   each: `kpatch-rs` (the workspace's binary, as `/bin/kpatch-rs`) and `debian-kpatch`
//!   (Debian's `kpatch` script as `/usr/sbin/kpatch`, with the `readelf` it calls; see
//!   `debian_kpatch.rs`);
//! - `timeout` (optional): seconds the script may run, 120 when absent;
//! - `disabled` (optional): why the case cannot pass yet; it is then neither built nor
//!   run, and reported as skipped, never as passed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xshell::Shell;

use crate::guest::{make_executable, Job, Outcome, Rootfs};
use crate::kernel::KernelDirs;
use crate::kpatch::{build_kpatch_rs, kpatch_build_command};
use crate::selftests::{build_modules, copy_tree};

const GUEST_DIR: &str = "/cases";

/// The key and certificate (one PEM file) a `--sign` build line signs with, relative to the
/// project root; `fixtures/kernel-config/module-signing.config` builds it into the kernel.
pub const TEST_SIGNING_KEY: &str = "fixtures/signing/test-key.pem";

/// The cases that need the signing kernel (`module-signing.config`), apart from `tests/`.
pub const SIGNING_CASES: &str = "fixtures/signing/cases";

/// What `scripts/sign-file` appends after the signature: a signed module ends with it.
const SIGNATURE_MARKER: &[u8] = b"~Module signature appended~\n";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs one case's `guest.sh` in the guest: clears the kernel log first, and afterwards
/// prints every log line that shows a kernel warning, oops, BUG or call trace with the
/// `KPATCH-DMESG ` prefix, which [`judge`] turns into a failure. The script's exit code is kept.
const RUNNER_SCRIPT: &str = r#"#!/bin/sh
dmesg -c > /dev/null
./guest.sh
rc=$?
dmesg | grep -E 'WARNING:|Oops|BUG:|Call Trace' | sed 's/^/KPATCH-DMESG /'
exit $rc
"#;

/// The prefix of the kernel log lines the runner script reports.
const DMESG_PREFIX: &str = "KPATCH-DMESG ";

/// The prefix of the lines a script prints as figures (timings, counts): not compared with
/// `expected`, shown with the verdict.
const FIGURE_PREFIX: &str = "KPATCH-FIGURE ";

/// What a numbered build line's patches say where its number goes.
const NUMBER_PLACEHOLDER: &str = "@N@";

/// The most lines one ranged build line may stand for.
const MAX_RANGE: u32 = 100;

/// Shared shell helpers for `guest.sh` scripts, staged as `/cases/livepatch.sh`.
const HELPERS: &str = include_str!("../../fixtures/cases/livepatch.sh");

/// A case found in `tests/`.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub dir: PathBuf,
    /// What `guest.sh` must print; None for a case without `guest.sh`.
    pub expected: Option<String>,
    pub timeout: Duration,
    /// The lines of `build`, in order.
    pub builds: Vec<BuildLine>,
    /// Why the case is disabled (the text of `disabled`).
    pub disabled: Option<String>,
    /// The extra programs its script runs (the words of `tools`).
    pub tools: Vec<Tool>,
    /// The script the guest runs: `guest.sh`, or the kernel series' own `SERIES/guest.sh`
    /// ([`for_series`]).
    pub script: PathBuf,
}

/// The cases as they run on a kernel of `series`: a case's `SERIES/guest.sh` and
/// `SERIES/expected` replace its own where the series behaves differently, and a case whose
/// `kernels` file does not list the series is skipped with that file's reason (its first
/// line lists the series, the rest says why).
pub fn for_series(cases: Vec<Case>, series: &str) -> Result<Vec<Case>> {
    cases
        .into_iter()
        .map(|mut case| {
            let own = case.dir.join(series);
            if own.join("guest.sh").is_file() {
                case.script = own.join("guest.sh");
            }
            if let Ok(expected) = std::fs::read_to_string(own.join("expected")) {
                case.expected = Some(expected);
            }
            if let Ok(text) = std::fs::read_to_string(case.dir.join("kernels")) {
                let mut lines = text.lines();
                let listed: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
                if !listed.contains(&series) && case.disabled.is_none() {
                    let why: Vec<&str> = lines.map(str::trim).filter(|l| !l.is_empty()).collect();
                    case.disabled = Some(format!(
                        "runs on Linux {} only: {}",
                        listed.join(", "),
                        why.join(" ")
                    ));
                }
            }
            Ok(case)
        })
        .collect()
}

/// A program a case's `tools` file asks for in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// The workspace's `kpatch-rs`, as `/bin/kpatch-rs`.
    KpatchRs,
    /// Debian's `kpatch` script, as `/usr/sbin/kpatch`, and `readelf`.
    DebianKpatch,
}

/// The words of a `tools` file; `#` starts a comment.
pub fn parse_tools(text: &str) -> std::result::Result<Vec<Tool>, String> {
    let mut tools = Vec::new();
    for word in text
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default())
        .flat_map(str::split_whitespace)
    {
        let tool = match word {
            "kpatch-rs" => Tool::KpatchRs,
            "debian-kpatch" => Tool::DebianKpatch,
            other => {
                return Err(format!(
                    "unknown tool {other:?}: the tools are kpatch-rs and debian-kpatch"
                ))
            }
        };
        if !tools.contains(&tool) {
            tools.push(tool);
        }
    }
    Ok(tools)
}

impl Case {
    fn has_guest_script(&self) -> bool {
        self.expected.is_some()
    }
}

/// One line of a case's `build` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildLine {
    /// The module is `livepatch-NAME.ko`.
    pub name: String,
    pub no_replace: bool,
    /// Signed with the test key ([`TEST_SIGNING_KEY`]).
    pub sign: bool,
    /// Types passed as `--allow-layout-change`; the word is `--allow-layout-change=KIND:NAME`
    /// for `KIND NAME` (`struct:foo_obj`), or `=NAME` for a typedef.
    pub allow_layout_changes: Vec<String>,
    /// The number of a line made from a range (`NAME{A..B}`): its patches' `@N@` become it.
    pub number: Option<u32>,
    /// `--oot-module=NAME`: the out-of-tree module `NAME.ko` built from the case's `module/`.
    pub oot_module: Option<String>,
    /// Patch files, relative to the case directory.
    pub patches: Vec<String>,
    /// Set when the build must fail.
    pub failure: Option<ExpectedFailure>,
}

/// How a build that must fail has to fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedFailure {
    pub exit_code: i32,
    /// A substring of what `kpatch-rs build` prints.
    pub message: String,
}

/// Reads a `build` file: `NAME [--no-replace] [--sign] [--allow-layout-change=KIND:NAME]
/// [--oot-module=MODULE] PATCH... [=> exit CODE: MESSAGE]` per line, blank lines and `#` comments ignored. A NAME
/// with a range, `PREFIX{A..B}SUFFIX`, stands for one line per number from A to B, named with
/// the number in place of the range.
pub fn parse_build_file(text: &str) -> std::result::Result<Vec<BuildLine>, String> {
    let mut lines = Vec::new();
    for (number, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |why: &str| format!("line {}: {why}: {line:?}", number + 1);
        let (command, failure) = match line.split_once("=>") {
            None => (line, None),
            Some((command, expectation)) => {
                let expectation = expectation.trim();
                let Some((code, message)) = expectation
                    .strip_prefix("exit ")
                    .and_then(|rest| rest.split_once(':'))
                else {
                    return Err(at("an expectation reads `=> exit CODE: MESSAGE`"));
                };
                let exit_code = code
                    .trim()
                    .parse()
                    .map_err(|_| at("the exit code must be a number"))?;
                let message = message.trim().to_string();
                if exit_code == 0 || message.is_empty() {
                    return Err(at(
                        "a build that must fail needs a non-zero exit code and a message",
                    ));
                }
                (command, Some(ExpectedFailure { exit_code, message }))
            }
        };
        let mut words = command.split_whitespace();
        let Some(name) = words.next() else {
            return Err(at("a build line starts with the module name"));
        };
        let names = expand_name(name).map_err(|why| at(&why))?;
        if !names.iter().all(|(name, _)| {
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        }) {
            return Err(at("a module name has only letters, digits, `-` and `_`"));
        }
        let mut no_replace = false;
        let mut sign = false;
        let mut allow_layout_changes = Vec::new();
        let mut oot_module = None;
        let mut patches = Vec::new();
        for word in words {
            if let Some(type_name) = word.strip_prefix("--allow-layout-change=") {
                allow_layout_changes.push(type_name.replacen(':', " ", 1));
                continue;
            }
            if let Some(module) = word.strip_prefix("--oot-module=") {
                if module.is_empty() || module.contains('/') || module.ends_with(".ko") {
                    return Err(at("--oot-module=NAME names NAME.ko of the case's module/"));
                }
                oot_module = Some(module.to_string());
                continue;
            }
            match word {
                "--no-replace" => no_replace = true,
                "--sign" => sign = true,
                option if option.starts_with('-') => {
                    return Err(at(&format!("unknown option {option}")))
                }
                patch => {
                    if Path::new(patch).is_absolute() || patch.split('/').any(|p| p == "..") {
                        return Err(at(
                            "patches are files of the case directory, or @NAME in fixtures/patches",
                        ));
                    }
                    if patch.starts_with('@') && patch.contains('/') {
                        return Err(at("@NAME names a file of fixtures/patches, without a path"));
                    }
                    patches.push(patch.to_string());
                }
            }
        }
        if patches.is_empty() {
            return Err(at("a build line names at least one patch"));
        }
        for (name, number) in names {
            if lines.iter().any(|l: &BuildLine| l.name == name) {
                return Err(at(&format!("the module name is used twice ({name})")));
            }
            lines.push(BuildLine {
                name,
                no_replace,
                sign,
                allow_layout_changes: allow_layout_changes.clone(),
                number,
                oot_module: oot_module.clone(),
                patches: patches.clone(),
                failure: failure.clone(),
            });
        }
    }
    Ok(lines)
}

/// The module names a build line's NAME stands for, each with its number: `level{1..3}` is
/// `level1`, `level2`, `level3`; a name without braces is itself, without a number.
fn expand_name(name: &str) -> std::result::Result<Vec<(String, Option<u32>)>, String> {
    let Some((prefix, rest)) = name.split_once('{') else {
        if name.contains('}') {
            return Err("a range in a name reads `NAME{A..B}`".to_string());
        }
        return Ok(vec![(name.to_string(), None)]);
    };
    let range_syntax = || "a range in a name reads `NAME{A..B}`, A and B numbers".to_string();
    let (range, suffix) = rest.split_once('}').ok_or_else(range_syntax)?;
    if suffix.contains(['{', '}']) {
        return Err("a name has at most one range".to_string());
    }
    let (first, last) = range.split_once("..").ok_or_else(range_syntax)?;
    let number = |text: &str| text.parse::<u32>().map_err(|_| range_syntax());
    let (first, last) = (number(first)?, number(last)?);
    if first > last || last - first >= MAX_RANGE {
        return Err(format!(
            "a range goes up, A..B with A <= B, and names at most {MAX_RANGE} modules"
        ));
    }
    Ok((first..=last)
        .map(|n| (format!("{prefix}{n}{suffix}"), Some(n)))
        .collect())
}

/// The file a build line's patch word names: `@NAME` is `fixtures/patches/NAME`, the patches
/// several tests share; anything else is a file of the case directory.
fn patch_path(case_dir: &Path, word: &str) -> PathBuf {
    match word.strip_prefix('@') {
        Some(name) => crate::project_root().join("fixtures/patches").join(name),
        None => case_dir.join(word),
    }
}

/// The patch for a kernel of `series` (`6.1`): the same name in the directory's `SERIES/`
/// when the series needs its own (its context differs), else the one file.
fn patch_for_series(case_dir: &Path, word: &str, series: &str) -> PathBuf {
    let path = patch_path(case_dir, word);
    let own = match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => dir.join(series).join(name),
        _ => return path,
    };
    if own.is_file() {
        own
    } else {
        path
    }
}

/// A kernel tree's series, `VERSION.PATCHLEVEL` of its Makefile (`6.12`).
pub fn kernel_series(source: &Path) -> Result<String> {
    let makefile = std::fs::read_to_string(source.join("Makefile"))
        .with_context(|| format!("cannot read {}/Makefile", source.display()))?;
    let field = |key: &str| {
        makefile
            .lines()
            .find_map(|line| {
                let rest = line.strip_prefix(key)?.trim_start().strip_prefix('=')?;
                Some(rest.trim().to_string())
            })
            .unwrap_or_default()
    };
    Ok(format!("{}.{}", field("VERSION"), field("PATCHLEVEL")))
}

/// The cases under `tests_dir`, sorted by name.
pub fn discover(tests_dir: &Path) -> Result<Vec<Case>> {
    let mut cases = Vec::new();
    let entries = std::fs::read_dir(tests_dir)
        .with_context(|| format!("cannot list cases in {}", tests_dir.display()))?;
    for entry in entries {
        let dir = entry?.path();
        let has_script = dir.join("guest.sh").is_file();
        let build_file = dir.join("build");
        if !has_script && !build_file.is_file() {
            continue;
        }
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let expected = if has_script {
            Some(
                std::fs::read_to_string(dir.join("expected")).with_context(|| {
                    format!(
                        "case {name} has no readable `expected` file (what guest.sh must print)"
                    )
                })?,
            )
        } else {
            None
        };
        let timeout = match std::fs::read_to_string(dir.join("timeout")) {
            Ok(text) => Duration::from_secs(text.trim().parse().with_context(|| {
                format!("case {name}: `timeout` must hold a number of seconds, found {text:?}")
            })?),
            Err(_) => DEFAULT_TIMEOUT,
        };
        let builds = match std::fs::read_to_string(&build_file) {
            Ok(text) => parse_build_file(&text)
                .map_err(|why| anyhow::anyhow!("case {name}: `build` {why}"))?,
            Err(_) => Vec::new(),
        };
        let disabled = std::fs::read_to_string(dir.join("disabled"))
            .ok()
            .map(|text| {
                let reason = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
                if reason.is_empty() {
                    "disabled".to_string()
                } else {
                    reason.trim().to_string()
                }
            });
        let tools = match std::fs::read_to_string(dir.join("tools")) {
            Ok(text) => {
                parse_tools(&text).map_err(|why| anyhow::anyhow!("case {name}: `tools`: {why}"))?
            }
            Err(_) => Vec::new(),
        };
        let script = dir.join("guest.sh");
        cases.push(Case {
            name,
            dir,
            expected,
            timeout,
            builds,
            disabled,
            tools,
            script,
        });
    }
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(cases)
}

/// The cases of `found` that `names` names, in `found`'s order; all of them when `names` is
/// empty. A name that is no case is an error that lists the cases.
pub fn choose(found: Vec<Case>, names: &[String]) -> Result<Vec<Case>> {
    if let Some(unknown) = names.iter().find(|n| !found.iter().any(|c| &c.name == *n)) {
        let all: Vec<&str> = found.iter().map(|c| c.name.as_str()).collect();
        bail!(
            "there is no case {unknown}; the cases are {}",
            all.join(", ")
        );
    }
    Ok(found
        .into_iter()
        .filter(|c| names.is_empty() || names.contains(&c.name))
        .collect())
}

/// What staging a case on the host led to.
#[derive(Debug)]
pub enum Staged {
    /// Disabled: the reason.
    Skipped(String),
    /// Judged on the host alone (or failed there, before any boot): the verdict, what the
    /// builds printed, and how long they took.
    Host {
        verdict: std::result::Result<(), String>,
        seconds: u64,
    },
    /// Ready to run in the guest.
    Guest(Job),
}

/// Builds each case's modules for `kernel`, checks the builds that must fail, stages the
/// cases that run in the guest, and returns what became of each case, in order.
pub fn stage(
    sh: &Shell,
    kernel: &KernelDirs,
    rootfs: &Rootfs,
    cases: &[Case],
    work: &Path,
) -> Result<Vec<Staged>> {
    let guest_root = rootfs.path(Path::new(GUEST_DIR));
    std::fs::create_dir_all(&guest_root)?;
    let runner = guest_root.join("run-case");
    std::fs::write(&runner, RUNNER_SCRIPT).context("cannot stage the case runner")?;
    make_executable(&runner)?;
    std::fs::write(guest_root.join("livepatch.sh"), HELPERS)
        .context("cannot stage the case helpers")?;

    let needs_kpatch = cases
        .iter()
        .any(|s| s.disabled.is_none() && !s.builds.is_empty());
    let wants = |tool: Tool| {
        cases
            .iter()
            .any(|c| c.disabled.is_none() && c.tools.contains(&tool))
    };
    let kpatch = if needs_kpatch || wants(Tool::KpatchRs) {
        Some(build_kpatch_rs(sh)?)
    } else {
        None
    };
    if let (Some(kpatch), true) = (&kpatch, wants(Tool::KpatchRs)) {
        rootfs.add_program(sh, kpatch, "kpatch-rs")?;
    }
    if wants(Tool::DebianKpatch) {
        let script = crate::debian_kpatch::ensure(sh)?;
        rootfs.add_program(sh, &script, "kpatch")?;
        rootfs.add_program(sh, &crate::guest::find_program("readelf")?, "readelf")?;
    }

    let mut results = Vec::new();
    for case in cases {
        if let Some(reason) = &case.disabled {
            results.push(Staged::Skipped(reason.clone()));
            continue;
        }
        let guest_dir = format!("{GUEST_DIR}/{}", case.name);
        let staged = rootfs.path(Path::new(&guest_dir));
        std::fs::create_dir_all(&staged)?;
        let started = Instant::now();
        // The case's own modules first: an `--oot-module=` build line patches one of them.
        let module_sources = case.dir.join("module");
        let module_build = work.join(&case.name).join("module");
        if module_sources.is_dir() {
            if module_build.exists() {
                std::fs::remove_dir_all(&module_build)?;
            }
            copy_tree(&module_sources, &module_build)?;
            copy_kernel_sources(kernel, &module_build, &case.name)?;
            let log = work.join(format!("{}.build.log", case.name));
            std::fs::write(&log, "")?;
            build_modules(
                kernel,
                &module_build,
                &log,
                &format!("case {}: modules", case.name),
            )?;
            for module in files_with_extension(&module_build, "ko")? {
                let name = module.file_name().unwrap_or_default();
                std::fs::copy(&module, staged.join(name))
                    .with_context(|| format!("cannot stage {}", module.display()))?;
            }
        }
        if let Some(kpatch) = &kpatch {
            let verdict = run_builds(
                kpatch,
                kernel,
                case,
                &work.join(&case.name),
                &staged,
                &module_build,
            )?;
            if verdict.is_err() || !case.has_guest_script() {
                results.push(Staged::Host {
                    verdict,
                    seconds: started.elapsed().as_secs(),
                });
                continue;
            }
        }
        if !case.has_guest_script() {
            continue;
        }
        let programs = case.dir.join("program");
        if programs.is_dir() {
            for source in files_with_extension(&programs, "c")? {
                let name = source.file_stem().unwrap_or_default();
                let output = Command::new("gcc")
                    .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
                    .arg(staged.join(name))
                    .arg(&source)
                    .output()
                    .with_context(|| format!("cannot run gcc for {}", source.display()))?;
                if !output.status.success() {
                    bail!(
                        "case {}: gcc failed on {}:\n{}",
                        case.name,
                        source.display(),
                        String::from_utf8_lossy(&output.stderr)
                    );
                }
            }
        }
        let script = staged.join("guest.sh");
        std::fs::copy(&case.script, &script)
            .with_context(|| format!("cannot stage guest.sh of case {}", case.name))?;
        make_executable(&script)?;
        results.push(Staged::Guest(Job {
            name: case.name.clone(),
            cwd: guest_dir,
            command: format!("{GUEST_DIR}/run-case"),
            timeout: case.timeout,
        }));
    }
    Ok(results)
}

/// Runs every line of the case's `build` file with `kpatch-rs build` against `kernel`,
/// each into a fresh directory under `work`; stages the modules in `staged`. Returns the
/// case's host verdict: every build did what its line says. `module_build` is where the
/// case's `module/` was built, for `--oot-module=` lines.
fn run_builds(
    kpatch: &Path,
    kernel: &KernelDirs,
    case: &Case,
    work: &Path,
    staged: &Path,
    module_build: &Path,
) -> Result<std::result::Result<(), String>> {
    let series = kernel_series(&kernel.source)?;
    for line in &case.builds {
        let output_dir = work.join("kpatch").join(&line.name);
        let mut command = kpatch_build_command(kpatch, kernel, &line.name, &output_dir)?;
        if line.no_replace {
            command.arg("--no-replace");
        }
        if line.sign {
            let key = crate::project_root().join(TEST_SIGNING_KEY);
            command
                .arg("--sign-key")
                .arg(&key)
                .arg("--sign-cert")
                .arg(&key);
        }
        for type_name in &line.allow_layout_changes {
            command.arg("--allow-layout-change").arg(type_name);
        }
        if let Some(module) = &line.oot_module {
            let ko = module_build.join(format!("{module}.ko"));
            if !ko.is_file() {
                return Ok(Err(format!(
                    "`build` line {} names --oot-module={module}, but the case's module/ \
                     built no {}",
                    line.name,
                    ko.display()
                )));
            }
            command
                .arg("--oot-module")
                .arg(ko)
                .arg("--oot-module-src")
                .arg(case.dir.join("module"));
        }
        let mut numbered = false;
        for patch in &line.patches {
            let path = patch_for_series(&case.dir, patch, &series);
            if !path.is_file() {
                return Ok(Err(format!(
                    "`build` names {patch}, which is not the file {}",
                    path.display()
                )));
            }
            let Some(number) = line.number else {
                command.arg(path);
                continue;
            };
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            numbered |= text.contains(NUMBER_PLACEHOLDER);
            let file_name = path.file_name().unwrap_or_default();
            let written = work.join("patches").join(&line.name).join(file_name);
            if let Some(dir) = written.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            std::fs::write(&written, number_patch(&text, number))
                .with_context(|| format!("cannot write {}", written.display()))?;
            command.arg(written);
        }
        if line.number.is_some() && !numbered {
            return Ok(Err(format!(
                "{} comes from a range, but none of its patches has {NUMBER_PLACEHOLDER} \
                 for its number: every module of the range would be the same",
                line.name
            )));
        }
        eprintln!("  case {}: kpatch-rs build {}", case.name, line.name);
        let output = command
            .output()
            .with_context(|| format!("cannot run {}", kpatch.display()))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let log = work.join(format!("{}.build.log", line.name));
        std::fs::write(&log, &text).with_context(|| format!("cannot write {}", log.display()))?;
        let modules = files_with_extension(&output_dir, "ko")?;
        let verdict = judge_build(line, output.status.code(), &text, &modules).and_then(|()| {
            match modules.first() {
                Some(module) if line.sign && line.failure.is_none() => {
                    let bytes = std::fs::read(module)
                        .map_err(|e| format!("cannot read {}: {e}", module.display()))?;
                    judge_signature(&bytes)
                }
                _ => Ok(()),
            }
        });
        if let Err(why) = verdict {
            return Ok(Err(format!(
                "kpatch-rs build {}: {why} (log: {})",
                line.name,
                log.display()
            )));
        }
        for module in modules {
            let name = module.file_name().unwrap_or_default();
            std::fs::copy(&module, staged.join(name))
                .with_context(|| format!("cannot stage {}", module.display()))?;
        }
    }
    Ok(Ok(()))
}

/// A numbered build line's patch: every `@N@` of `text` replaced by `number`.
fn number_patch(text: &str, number: u32) -> String {
    text.replace(NUMBER_PLACEHOLDER, &number.to_string())
}

/// Whether one `kpatch-rs build` did what its `build` line asks: `code` is its exit code
/// (None when killed by a signal), `text` what it printed, `modules` the `.ko` files it wrote.
fn judge_build(
    line: &BuildLine,
    code: Option<i32>,
    text: &str,
    modules: &[PathBuf],
) -> std::result::Result<(), String> {
    let exited = code.map_or("was killed by a signal".to_string(), |c| {
        format!("exited {c}")
    });
    let module = format!("livepatch-{}.ko", line.name);
    let tail = || {
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    };
    match &line.failure {
        None => {
            if code != Some(0) {
                return Err(format!("{exited}:\n{}", tail()));
            }
            if !modules.iter().any(|m| m.ends_with(&module)) {
                return Err(format!("exited 0 but wrote no {module}"));
            }
        }
        Some(failure) => {
            if code != Some(failure.exit_code) {
                return Err(format!(
                    "must exit {}, {exited}:\n{}",
                    failure.exit_code,
                    tail()
                ));
            }
            if !text.contains(&failure.message) {
                return Err(format!(
                    "exited {} as it must, but did not print {:?}:\n{}",
                    failure.exit_code,
                    failure.message,
                    tail()
                ));
            }
            if let Some(written) = modules.first() {
                return Err(format!(
                    "failed as it must, but wrote {}",
                    written.display()
                ));
            }
        }
    }
    Ok(())
}

/// Whether a module a `--sign` line built carries a signature: `sign-file` ends it with
/// [`SIGNATURE_MARKER`]. The guest is the judge of whether the kernel accepts it.
fn judge_signature(module: &[u8]) -> std::result::Result<(), String> {
    if module.ends_with(SIGNATURE_MARKER) {
        Ok(())
    } else {
        Err("asked to sign, but the module has no appended signature".to_string())
    }
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
fn copy_kernel_sources(kernel: &KernelDirs, build_dir: &Path, case: &str) -> Result<()> {
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
            bail!(
                "case {case}: kernel-sources entry {line:?} must be a path inside the kernel tree"
            );
        }
        let from = kernel.source.join(relative);
        let name = relative.file_name().unwrap_or_default();
        std::fs::copy(&from, build_dir.join(name)).with_context(|| {
            format!(
                "case {case}: cannot copy {} from the kernel source",
                from.display()
            )
        })?;
    }
    Ok(())
}

/// Whether a case that ran in the guest passed, and if not, why.
pub fn judge(case: &Case, outcome: &Outcome) -> std::result::Result<(), String> {
    match &outcome.ending {
        crate::guest::Ending::Exited(0) => {}
        crate::guest::Ending::Exited(code) => return Err(format!("guest.sh exited {code}")),
        crate::guest::Ending::TimedOut => {
            return Err(format!("timed out after {}s", case.timeout.as_secs()))
        }
        crate::guest::Ending::GuestLost(why) => return Err(why.clone()),
    }
    let split = split_output(&outcome.output);
    let (script_output, kernel_problems) = (split.script, split.kernel_problems);
    if !kernel_problems.is_empty() {
        return Err(format!(
            "the kernel log shows a warning, oops, BUG or call trace:\n{}",
            kernel_problems.join("\n")
        ));
    }
    let expected = normalise(case.expected.as_deref().unwrap_or_default());
    let actual = normalise(&script_output);
    if expected == actual {
        return Ok(());
    }
    Err(format!(
        "output differs from {}\n--- expected\n{expected}\n--- actual\n{actual}",
        case.dir.join("expected").display()
    ))
}

/// What the runner script printed, taken apart.
struct SplitOutput {
    /// The output of `guest.sh` that `expected` is compared with.
    script: String,
    /// The kernel log lines the runner flagged.
    kernel_problems: Vec<String>,
    /// The figures `guest.sh` printed.
    figures: Vec<String>,
}

fn split_output(output: &str) -> SplitOutput {
    let mut split = SplitOutput {
        script: String::new(),
        kernel_problems: Vec::new(),
        figures: Vec::new(),
    };
    for line in output.lines() {
        if let Some(problem) = line.strip_prefix(DMESG_PREFIX) {
            split.kernel_problems.push(problem.to_string());
        } else if let Some(figure) = line.strip_prefix(FIGURE_PREFIX) {
            split.figures.push(figure.trim_end().to_string());
        } else {
            split.script.push_str(line);
            split.script.push('\n');
        }
    }
    split
}

/// The figures (`KPATCH-FIGURE ` lines) a case's script printed, in order.
pub fn figures(output: &str) -> Vec<String> {
    split_output(output).figures
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
        let case = Case {
            name: "s".to_string(),
            dir: PathBuf::from("tests/s"),
            expected: Some(expected.to_string()),
            timeout: DEFAULT_TIMEOUT,
            builds: Vec::new(),
            disabled: None,
            tools: Vec::new(),
            script: PathBuf::from("tests/s/guest.sh"),
        };
        let outcome = Outcome {
            name: "s".to_string(),
            ending,
            output: output.to_string(),
            seconds: None,
            console_log: None,
        };
        assert_eq!(
            judge(&case, &outcome).is_ok(),
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

    #[test]
    fn kernel_log_problems_fail_a_case() {
        check(
            "a\n",
            Ending::Exited(0),
            "a\nKPATCH-DMESG [ 1.0] ok line\n",
            false,
        );
        check(
            "a\n",
            Ending::Exited(0),
            "a\nKPATCH-DMESG [ 2.1] WARNING: CPU: 0 PID: 1 at x.c:1\n",
            false,
        );
        check(
            "a\n",
            Ending::Exited(0),
            "a\nDMESG WARNING: in the output\n",
            false,
        );
        check("KPATCH-DMESG\n", Ending::Exited(0), "KPATCH-DMESG\n", true);
    }

    /// Writes `files` (path, contents) under a fresh directory and discovers its cases.
    fn discover_files(files: &[(&str, &str)]) -> Result<Vec<Case>> {
        let root = std::env::temp_dir().join(format!(
            "kpatch-rs-cases-{}-{}",
            std::process::id(),
            files.len()
        ));
        let _ = std::fs::remove_dir_all(&root);
        for (path, contents) in files {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap_or(&root))?;
            std::fs::write(path, contents)?;
        }
        let found = discover(&root);
        let _ = std::fs::remove_dir_all(&root);
        found
    }

    #[test]
    fn discovers_guest_host_and_disabled_cases() {
        let found = discover_files(&[
            ("guest/guest.sh", "echo hi"),
            ("guest/expected", "hi\n"),
            ("host/build", "x x.patch => exit 2: cannot patch\n"),
            ("off/build", "x x.patch\n"),
            ("off/disabled", "\nthe engine drops x\nmore\n"),
            ("not-a-case/notes", "nothing"),
        ])
        .map_err(|e| format!("{e:#}"));
        let summary: Vec<(String, bool, usize, Option<String>)> = found
            .unwrap_or_default()
            .into_iter()
            .map(|s| {
                (
                    s.name.clone(),
                    s.has_guest_script(),
                    s.builds.len(),
                    s.disabled,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("guest".to_string(), true, 0, None),
                ("host".to_string(), false, 1, None),
                (
                    "off".to_string(),
                    false,
                    1,
                    Some("the engine drops x".to_string())
                ),
            ]
        );
    }

    #[test]
    fn a_series_gets_its_own_script_and_expected_output_or_is_skipped() {
        let root = std::env::temp_dir().join(format!("kpatch-rs-series-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let make = |name: &str, files: &[(&str, &str)]| {
            let case = root.join(name);
            for (file, text) in files {
                let path = case.join(file);
                std::fs::create_dir_all(path.parent().expect("a case file's directory"))
                    .expect("create the case directory");
                std::fs::write(path, text).expect("write a case file");
            }
        };
        make("both", &[("guest.sh", "a"), ("expected", "x\n")]);
        make(
            "own",
            &[
                ("guest.sh", "a"),
                ("expected", "x\n"),
                ("6.1/guest.sh", "b"),
                ("6.1/expected", "y\n"),
            ],
        );
        make(
            "new",
            &[
                ("guest.sh", "a"),
                ("expected", "x\n"),
                ("kernels", "6.12\npidfs is Linux 6.9's.\n"),
            ],
        );
        let on = |series: &str| {
            for_series(discover(&root).expect("discover"), series).expect("for_series")
        };
        let old = on("6.1");
        assert_eq!(old[0].name, "both");
        assert_eq!(old[0].expected.as_deref(), Some("x\n"));
        assert_eq!(old[0].disabled, None);
        assert_eq!(
            old[1].disabled.as_deref(),
            Some("runs on Linux 6.12 only: pidfs is Linux 6.9's.")
        );
        assert_eq!(old[2].script, root.join("own/6.1/guest.sh"));
        assert_eq!(old[2].expected.as_deref(), Some("y\n"));
        let new = on("6.12");
        assert_eq!(new[1].disabled, None);
        assert_eq!(new[2].script, root.join("own/guest.sh"));
        assert_eq!(new[2].expected.as_deref(), Some("x\n"));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn chooses_cases_by_name() {
        let case = |name: &str| Case {
            name: name.to_string(),
            dir: PathBuf::from("tests").join(name),
            expected: None,
            timeout: DEFAULT_TIMEOUT,
            builds: Vec::new(),
            disabled: None,
            tools: Vec::new(),
            script: PathBuf::from("tests").join(name).join("guest.sh"),
        };
        let names = |chosen: Result<Vec<Case>>| -> Vec<String> {
            chosen
                .expect("chosen")
                .into_iter()
                .map(|c| c.name)
                .collect()
        };
        let found = || vec![case("a"), case("b"), case("c")];
        assert_eq!(names(choose(found(), &[])), ["a", "b", "c"]);
        let wanted = ["c".to_string(), "a".to_string()];
        assert_eq!(names(choose(found(), &wanted)), ["a", "c"]);
        let error = choose(found(), &["d".to_string()])
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            error.as_deref(),
            Some("there is no case d; the cases are a, b, c")
        );
    }

    #[test]
    fn a_bad_build_file_names_its_case() {
        let found = discover_files(&[("s/build", "x\n")]);
        let error = found.err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(error.contains("case s: `build` line 1"), "{error}");
    }

    fn build_line(name: &str, no_replace: bool, patches: &[&str]) -> BuildLine {
        BuildLine {
            name: name.to_string(),
            no_replace,
            sign: false,
            allow_layout_changes: Vec::new(),
            number: None,
            oot_module: None,
            patches: patches.iter().map(|p| p.to_string()).collect(),
            failure: None,
        }
    }

    fn check_build_file(text: &str, expected: std::result::Result<Vec<BuildLine>, &str>) {
        let parsed = parse_build_file(text);
        match expected {
            Ok(lines) => assert_eq!(parsed, Ok(lines), "{text:?}"),
            Err(fragment) => match parsed {
                Err(why) => assert!(why.contains(fragment), "{text:?}: {why}"),
                Ok(lines) => panic!("{text:?} parsed as {lines:?}"),
            },
        }
    }

    #[test]
    fn reads_build_files() {
        check_build_file("", Ok(vec![]));
        check_build_file(
            "# comment\n\na a.patch\nb --no-replace b1.patch b2.patch\n",
            Ok(vec![
                build_line("a", false, &["a.patch"]),
                build_line("b", true, &["b1.patch", "b2.patch"]),
            ]),
        );
        let mut failing = build_line("init", false, &["init.patch"]);
        failing.failure = Some(ExpectedFailure {
            exit_code: 2,
            message: "changed __init: x".to_string(),
        });
        check_build_file(
            "init init.patch => exit 2: changed __init: x\n",
            Ok(vec![failing]),
        );
        check_build_file("a\n", Err("at least one patch"));
        check_build_file("a --replace a.patch\n", Err("unknown option --replace"));
        check_build_file("a ../a.patch\n", Err("files of the case"));
        check_build_file("a /tmp/a.patch\n", Err("files of the case"));
        check_build_file(
            "a @cmdline.patch own.patch\n",
            Ok(vec![build_line(
                "a",
                false,
                &["@cmdline.patch", "own.patch"],
            )]),
        );
        check_build_file("a @sub/x.patch\n", Err("without a path"));
        let mut signed = build_line("s", true, &["@cmdline.patch"]);
        signed.sign = true;
        check_build_file(
            "s --sign --no-replace @cmdline.patch\n",
            Ok(vec![signed.clone()]),
        );
        check_build_file("s --no-replace @cmdline.patch --sign\n", Ok(vec![signed]));
        check_build_file("s --signed a.patch\n", Err("unknown option --signed"));
        let mut forced = build_line("f", false, &["a.patch"]);
        forced.allow_layout_changes = vec!["struct foo_obj".to_string(), "counter_t".to_string()];
        check_build_file(
            "f --allow-layout-change=struct:foo_obj --allow-layout-change=counter_t a.patch\n",
            Ok(vec![forced]),
        );
        let mut oot = build_line("o", false, &["o.patch"]);
        oot.oot_module = Some("kpatch-oot-demo".to_string());
        check_build_file("o --oot-module=kpatch-oot-demo o.patch\n", Ok(vec![oot]));
        check_build_file("o --oot-module=x.ko o.patch\n", Err("--oot-module=NAME"));
        check_build_file("s --sign\n", Err("at least one patch"));
        check_build_file(
            "a a.patch\na b.patch\n",
            Err("line 2: the module name is used twice"),
        );
        check_build_file("a.b a.patch\n", Err("module name"));
        check_build_file("a a.patch => 2: x\n", Err("=> exit CODE: MESSAGE"));
        check_build_file("a a.patch => exit two: x\n", Err("must be a number"));
        check_build_file("a a.patch => exit 0: x\n", Err("non-zero exit code"));
        check_build_file("a a.patch => exit 2:\n", Err("non-zero exit code"));
    }

    #[test]
    fn a_range_in_a_name_is_one_numbered_line_per_number() {
        let numbered = |name: &str, number: u32| {
            let mut line = build_line(name, true, &["level.patch", "@cmdline.patch"]);
            line.number = Some(number);
            line
        };
        check_build_file(
            "level{1..3} --no-replace level.patch @cmdline.patch\n",
            Ok(vec![
                numbered("level1", 1),
                numbered("level2", 2),
                numbered("level3", 3),
            ]),
        );
        check_build_file(
            "p{7..7}-x --no-replace level.patch @cmdline.patch\nc c.patch\n",
            Ok(vec![
                numbered("p7-x", 7),
                build_line("c", false, &["c.patch"]),
            ]),
        );
        let mut failing = build_line("bad0", false, &["x.patch"]);
        failing.number = Some(0);
        failing.failure = Some(ExpectedFailure {
            exit_code: 3,
            message: "no change".to_string(),
        });
        check_build_file(
            "bad{0..0} x.patch => exit 3: no change\n",
            Ok(vec![failing]),
        );
        check_build_file("a{3..1} a.patch\n", Err("A <= B"));
        check_build_file("a{0..100} a.patch\n", Err("at most 100"));
        check_build_file("a{1..} a.patch\n", Err("NAME{A..B}"));
        check_build_file("a{1-2} a.patch\n", Err("NAME{A..B}"));
        check_build_file("a{1..2 a.patch\n", Err("NAME{A..B}"));
        check_build_file("a}1 a.patch\n", Err("NAME{A..B}"));
        check_build_file("a{1..2}{3..4} a.patch\n", Err("at most one range"));
        check_build_file("a.{1..2} a.patch\n", Err("module name"));
        check_build_file(
            "a2 a.patch\na{1..3} b.patch\n",
            Err("line 2: the module name is used twice (a2)"),
        );
        assert_eq!(
            number_patch("+\treturn @N@;\n+\tx = @N@ * 2;\n", 17),
            "+\treturn 17;\n+\tx = 17 * 2;\n"
        );
    }

    #[test]
    fn reads_tools_files() {
        assert_eq!(parse_tools(""), Ok(vec![]));
        assert_eq!(
            parse_tools("# what the script runs\nkpatch-rs debian-kpatch\nkpatch-rs # again\n"),
            Ok(vec![Tool::KpatchRs, Tool::DebianKpatch])
        );
        let error = parse_tools("kpatch\n").expect_err("unknown");
        assert!(error.contains("unknown tool \"kpatch\""), "{error}");
    }

    #[test]
    fn figures_are_shown_and_not_compared() {
        let output = "a\nKPATCH-FIGURE load: 12 ms  \nb\nKPATCH-DMESG x\nKPATCH-FIGURE n: 3\n";
        assert_eq!(figures(output), vec!["load: 12 ms", "n: 3"]);
        check(
            "a\nb\n",
            Ending::Exited(0),
            "a\nKPATCH-FIGURE load: 12 ms\nb\n",
            true,
        );
        check("a\n", Ending::Exited(0), "a\nKPATCH-FIGURE b\n", true);
        check("a\nb\n", Ending::Exited(0), "a\nKPATCH-FIGURE b\n", false);
    }

    #[test]
    fn an_at_name_is_a_shared_patch_and_every_shared_patch_a_test_names_exists() {
        let root = crate::project_root();
        assert_eq!(
            patch_path(Path::new("/case"), "@cmdline.patch"),
            root.join("fixtures/patches/cmdline.patch")
        );
        assert_eq!(
            patch_path(Path::new("/case"), "own.patch"),
            PathBuf::from("/case/own.patch")
        );
        let case_dirs = ["tests", SIGNING_CASES];
        let cases = case_dirs
            .iter()
            .flat_map(|dir| discover(&root.join(dir)).expect("cases"));
        for case in cases {
            for line in &case.builds {
                for patch in &line.patches {
                    let path = patch_path(&case.dir, patch);
                    assert!(
                        path.is_file(),
                        "{}: {patch} is not {}",
                        case.name,
                        path.display()
                    );
                }
            }
        }
    }

    fn check_build(
        failure: Option<(i32, &str)>,
        code: Option<i32>,
        text: &str,
        modules: &[&str],
        passes: bool,
    ) {
        let mut line = build_line("x", false, &["x.patch"]);
        line.failure = failure.map(|(exit_code, message)| ExpectedFailure {
            exit_code,
            message: message.to_string(),
        });
        let modules: Vec<PathBuf> = modules
            .iter()
            .map(|m| PathBuf::from("/out").join(m))
            .collect();
        assert_eq!(
            judge_build(&line, code, text, &modules).is_ok(),
            passes,
            "{failure:?} {code:?} {text:?} {modules:?}"
        );
    }

    #[test]
    fn a_signed_module_ends_with_the_signature_marker() {
        let mut signed = b"\x7fELF...module...PKCS#7...".to_vec();
        signed.extend_from_slice(b"\0\0\x02\0\0\0\0\0\0\0\x01\xb5");
        signed.extend_from_slice(SIGNATURE_MARKER);
        assert_eq!(judge_signature(&signed), Ok(()));
        assert!(judge_signature(b"\x7fELF...module...").is_err());
        // The marker without its newline is what a truncated module would end with.
        assert!(judge_signature(&signed[..signed.len() - 1]).is_err());
    }

    #[test]
    fn judges_builds() {
        check_build(None, Some(0), "built", &["livepatch-x.ko"], true);
        check_build(None, Some(0), "built", &[], false);
        check_build(None, Some(0), "built", &["livepatch-y.ko"], false);
        check_build(None, Some(1), "error", &[], false);
        check_build(None, None, "", &[], false);
        let init = Some((2, "__init"));
        check_build(init, Some(2), "cannot patch: __init function", &[], true);
        check_build(init, Some(2), "cannot patch: data", &[], false);
        check_build(init, Some(1), "cannot patch: __init function", &[], false);
        check_build(init, Some(0), "__init", &["livepatch-x.ko"], false);
        check_build(init, Some(2), "__init", &["livepatch-x.ko"], false);
    }
}
