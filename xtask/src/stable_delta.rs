//! `cargo xtask stable-delta --from A --to B`: every C file that changed between two Debian
//! `linux-source-6.12` releases, turned into a livepatch for the FROM release's own kernel and
//! loaded on that kernel in QEMU.
//!
//! Stages, each timed:
//! 1. Packages: both source packages and the FROM release's image, debug image and headers
//!    (`apt-get download`, `dpkg-deb -x`, nothing installed), cached in
//!    `~/.cache/kpatch-rs/stable-delta/`; each source tarball is extracted into its own tree.
//! 2. Units: the DWARF compile units of the debug vmlinux and the debug modules
//!    (`readelf --debug-dump=info --dwarf-depth=1`) say which `.c` files Debian's amd64 kernel
//!    compiles and into which klp object (vmlinux or a module).
//! 3. Builds: one `diff -u` patch per changed compiled file, one `kpatch-rs build` each, with
//!    the debug vmlinux as the symbol source and the shipped modules (decompressed) under
//!    `--modules`. Several builds run at once, each with its own kpatch-rs cache directory
//!    (a cache entry takes one build at a time).
//! 4. Guest: Debian's own vmlinuz boots in QEMU (2 vCPUs online) and, per built module, loads
//!    the patched module with its dependencies, the livepatch, waits for the transition,
//!    disables, unloads, and reads the kernel log. Guest batches start while builds go on.
//!
//! Every file's build and guest result is kept in the run directory, so an interrupted run
//! picks up where it stopped (`--rebuild` starts over). The results go to
//! `runs/<from>-<to>/results.{json,md}` in the cache and, for a full run, to
//! `fixtures/stable-delta/<from>-<to>.{json,md}`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use xshell::{cmd, Shell};

use crate::guest::{run_jobs, Ending, Job, Rootfs};
use crate::kernel::KernelDirs;
use crate::suite_apt::SuiteApt;

const SOURCE_PACKAGE: &str = "linux-source-6.12";
const SOURCE_TARBALL: &str = "usr/src/linux-source-6.12.tar.xz";
const TREE_NAME: &str = "linux-source-6.12";
/// Built modules per guest boot set (one initramfs, one `run_jobs` call).
const GUEST_BATCH: usize = 40;
/// A build that takes longer than this is stopped and counted as a tool error.
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);
/// The per-job limit in the guest.
const GUEST_TIMEOUT: Duration = Duration::from_secs(150);
/// The kernel log lines that fail a guest check.
const DIRTY_LOG: &str = "WARNING:|BUG:|Oops|Call Trace|Invalid relocation";

/// The fixed file list of `--sample` (one path per line, `#` comments).
const SAMPLE_LIST: &str = "fixtures/stable-delta/sample.txt";

/// The outcome class each `--sample` file must have (`FILE<TAB>CLASS` per line).
const SAMPLE_EXPECTED: &str = "fixtures/stable-delta/sample-expected.tsv";

struct Options {
    from: String,
    to: String,
    sample: bool,
    parallel: usize,
    skip_guest: bool,
    limit: Option<usize>,
    rebuild: bool,
    report_only: bool,
    files: Vec<String>,
    /// Another Debian suite than this machine's (`trixie`): its packages through a private
    /// apt state, its builds with `--chroot` in a root of that suite.
    suite: Option<&'static str>,
}

fn parse_args(args: &[String]) -> Result<Options> {
    let mut options = Options {
        from: String::new(),
        to: String::new(),
        sample: false,
        parallel: 2,
        skip_guest: false,
        limit: None,
        rebuild: false,
        report_only: false,
        files: Vec::new(),
        suite: None,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |what: &str| {
            args.next()
                .cloned()
                .with_context(|| format!("{arg} needs {what}"))
        };
        match arg.as_str() {
            "--from" => options.from = value("a version")?,
            "--to" => options.to = value("a version")?,
            "--sample" => options.sample = true,
            "--parallel" => {
                options.parallel = value("a number")?
                    .parse()
                    .context("--parallel needs a number")?
            }
            "--limit" => {
                options.limit = Some(
                    value("a number")?
                        .parse()
                        .context("--limit needs a number")?,
                )
            }
            "--file" => options.files.push(value("a path")?),
            "--skip-guest" => options.skip_guest = true,
            "--rebuild" => options.rebuild = true,
            "--report-only" => options.report_only = true,
            "--suite" => match value("a Debian suite")?.as_str() {
                "trixie" => options.suite = Some("trixie"),
                other => bail!("--suite takes trixie (Debian 13), not `{other}`"),
            },
            other => bail!(
                "unknown argument `{other}` to `cargo xtask stable-delta` (expected --from A \
                 --to B [--sample] [--parallel N] [--limit N] [--file PATH]... [--skip-guest] \
                 [--rebuild] [--report-only] [--suite trixie])"
            ),
        }
    }
    if options.from.is_empty() || options.to.is_empty() {
        bail!("`cargo xtask stable-delta` needs --from VERSION and --to VERSION (for example --from 6.12.111 --to 6.12.113)");
    }
    options.parallel = options.parallel.max(1);
    Ok(options)
}

/// One Debian release of the source package, and the FROM kernel's packages.
#[derive(Debug, Clone)]
struct Release {
    /// The Debian version, `6.12.111-1~deb12u1`.
    version: String,
    /// The upstream part, `6.12.111`.
    upstream: String,
}

/// `apt-cache madison`'s versions of `package`, newest first.
fn madison(sh: &Shell, apt: Option<&SuiteApt>, package: &str) -> Result<Vec<String>> {
    let text = match apt {
        Some(apt) => apt.cache_query(sh, &["madison", package])?,
        None => cmd!(sh, "apt-cache madison {package}")
            .quiet()
            .read()
            .with_context(|| format!("apt-cache madison {package} failed (apt-get update?)"))?,
    };
    let mut versions: Vec<String> = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split('|').map(str::trim).collect();
        if let [name, version, ..] = fields.as_slice() {
            if *name == package && !versions.iter().any(|v| v == version) {
                versions.push((*version).to_string());
            }
        }
    }
    Ok(versions)
}

/// Maps `6.12.111` or `6.12.111-1~deb12u1` to the Debian version of the source package.
fn resolve_release(sh: &Shell, apt: Option<&SuiteApt>, wanted: &str) -> Result<Release> {
    let versions = madison(sh, apt, SOURCE_PACKAGE)?;
    let version = versions
        .iter()
        .find(|v| *v == wanted)
        .or_else(|| {
            versions
                .iter()
                .find(|v| v.split('-').next() == Some(wanted))
        })
        .with_context(|| {
            format!(
                "{SOURCE_PACKAGE} has no version {wanted}; apt-cache madison lists: {}",
                versions.join(", ")
            )
        })?;
    Ok(Release {
        version: version.clone(),
        upstream: version.split('-').next().unwrap_or(version).to_string(),
    })
}

/// The kernel release (ABI string plus flavour, `6.12.111+deb12-amd64`) whose packages the
/// FROM source version built.
fn kernel_release(sh: &Shell, apt: Option<&SuiteApt>, release: &Release) -> Result<String> {
    let pattern = format!(
        "^linux-image-{}\\+[a-z0-9]+-amd64-unsigned$",
        release.upstream.replace('.', "\\.")
    );
    let text = match apt {
        Some(apt) => apt.cache_query(sh, &["search", "--names-only", &pattern])?,
        None => cmd!(sh, "apt-cache search --names-only {pattern}")
            .quiet()
            .read()?,
    };
    for line in text.lines() {
        let Some(name) = line.split(" - ").next().map(str::trim) else {
            continue;
        };
        if madison(sh, apt, name)?.contains(&release.version) {
            if let Some(r) = name
                .strip_prefix("linux-image-")
                .and_then(|n| n.strip_suffix("-unsigned"))
            {
                return Ok(r.to_string());
            }
        }
    }
    bail!(
        "no linux-image-{}+*-amd64-unsigned package of version {} (apt-cache search {pattern})",
        release.upstream,
        release.version
    )
}

/// Downloads `package=version` into `cache/debs` unless there, and unpacks it once into
/// `cache/x/<package>_<version>/`.
fn ensure_package(
    sh: &Shell,
    apt: Option<&SuiteApt>,
    cache: &Path,
    package: &str,
    version: &str,
) -> Result<PathBuf> {
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs)?;
    let unpacked = cache.join("x").join(format!("{package}_{version}"));
    if unpacked.join(".unpacked").exists() {
        return Ok(unpacked);
    }
    let prefix = format!("{package}_{}_", version.replace(':', "%3a"));
    let find_deb = || -> Result<Option<PathBuf>> {
        Ok(std::fs::read_dir(&debs)?
            .flatten()
            .map(|entry| entry.path())
            .find(|path| {
                path.file_name()
                    .and_then(|f| f.to_str())
                    .is_some_and(|f| f.starts_with(&prefix) && f.ends_with(".deb"))
            }))
    };
    let deb = match find_deb()? {
        Some(deb) => deb,
        None => {
            eprintln!("stable-delta: downloading {package}={version}");
            let spec = format!("{package}={version}");
            match apt {
                Some(apt) => apt.download(sh, &spec, &debs)?,
                None => {
                    let _dir = sh.push_dir(&debs);
                    cmd!(sh, "apt-get download {spec}")
                        .quiet()
                        .run()
                        .with_context(|| format!("cannot download {spec} (apt-get update?)"))?;
                }
            }
            find_deb()?.with_context(|| format!("apt-get left no {package} .deb"))?
        }
    };
    eprintln!("stable-delta: unpacking {}", deb.display());
    let _ = std::fs::remove_dir_all(&unpacked);
    std::fs::create_dir_all(&unpacked)?;
    cmd!(sh, "dpkg-deb -x {deb} {unpacked}").quiet().run()?;
    std::fs::write(unpacked.join(".unpacked"), "")?;
    Ok(unpacked)
}

/// Extracts a source package's tarball into `cache/trees/<version>/linux-source-6.12`.
fn ensure_tree(sh: &Shell, cache: &Path, package_dir: &Path, version: &str) -> Result<PathBuf> {
    let root = cache.join("trees").join(version);
    let tree = root.join(TREE_NAME);
    if root.join(".unpacked").exists() {
        return Ok(tree);
    }
    let tarball = package_dir.join(SOURCE_TARBALL);
    eprintln!("stable-delta: extracting {}", tarball.display());
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    cmd!(sh, "tar -C {root} -xf {tarball}").quiet().run()?;
    if !tree.is_dir() {
        bail!(
            "{} did not unpack into {}",
            tarball.display(),
            tree.display()
        );
    }
    std::fs::write(root.join(".unpacked"), "")?;
    Ok(tree)
}

/// The FROM kernel's unpacked packages.
struct Kernel {
    release: String,
    /// Where the image's `lib/modules` is: the image, or its `usr/` (Debian 13 merged /usr).
    modules_base: PathBuf,
    vmlinux: PathBuf,
    debug_modules: PathBuf,
    config: PathBuf,
    symvers: PathBuf,
    vmlinuz: PathBuf,
}

/// The names of the `.c` compile units in `readelf --debug-dump=info --dwarf-depth=1` output,
/// per file (`File: X` lines start a file when several are dumped at once).
fn parse_units(text: &str) -> Vec<(Option<String>, String)> {
    let mut units = Vec::new();
    let mut file = None;
    let mut in_unit = false;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("File: ") {
            file = Some(name.trim().to_string());
            in_unit = false;
        } else if line.contains("Abbrev Number") {
            in_unit = line.contains("(DW_TAG_compile_unit)");
        } else if in_unit && line.contains("DW_AT_name") {
            in_unit = false;
            let name = match line.rsplit_once("): ") {
                Some((_, name)) => name,
                None => line.rsplit(": ").next().unwrap_or_default(),
            };
            let name = name.trim().trim_start_matches("./");
            if name.ends_with(".c") && !name.ends_with(".mod.c") {
                units.push((file.clone(), name.to_string()));
            }
        }
    }
    units
}

/// The module name of a `.ko` path: its stem with `-` as `_`, as the kernel names it.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file
        .strip_suffix(".ko.xz")
        .or_else(|| file.strip_suffix(".ko"))
        .unwrap_or(file);
    stem.replace('-', "_")
}

/// Every compiled `.c` file and its klp objects (`vmlinux` or module names), from the DWARF
/// compile units of the debug vmlinux and modules; cached in `units-<release>.tsv`.
fn compile_units(
    sh: &Shell,
    cache: &Path,
    kernel: &Kernel,
) -> Result<BTreeMap<String, Vec<String>>> {
    let list = cache.join(format!("units-{}.tsv", kernel.release));
    if !list.exists() {
        eprintln!("stable-delta: reading the compile units of the debug vmlinux and modules");
        let mut lines = String::new();
        let vmlinux = &kernel.vmlinux;
        let text = cmd!(sh, "readelf --debug-dump=info --dwarf-depth=1 {vmlinux}")
            .quiet()
            .read()?;
        for (_, unit) in parse_units(&text) {
            let _ = writeln!(lines, "{unit}\tvmlinux");
        }
        let mut modules = Vec::new();
        collect_files(&kernel.debug_modules, ".ko", &mut modules)?;
        modules.sort();
        let chunks: Vec<Vec<PathBuf>> = modules.chunks(100).map(<[PathBuf]>::to_vec).collect();
        let queue = Arc::new(Mutex::new(VecDeque::from(chunks)));
        let results = Arc::new(Mutex::new(Vec::new()));
        std::thread::scope(|scope| {
            for _ in 0..2 {
                let queue = Arc::clone(&queue);
                let results = Arc::clone(&results);
                scope.spawn(move || {
                    while let Some(chunk) = queue.lock().ok().and_then(|mut q| q.pop_front()) {
                        let output = Command::new("readelf")
                            .args(["--debug-dump=info", "--dwarf-depth=1"])
                            .args(&chunk)
                            .stderr(Stdio::null())
                            .output();
                        let text = match output {
                            Ok(output) => String::from_utf8_lossy(&output.stdout).into_owned(),
                            Err(_) => String::new(),
                        };
                        // One file given alone has no `File:` line.
                        let single = (chunk.len() == 1).then(|| chunk[0].display().to_string());
                        let units: Vec<(String, String)> = parse_units(&text)
                            .into_iter()
                            .filter_map(|(file, unit)| {
                                file.or_else(|| single.clone())
                                    .map(|f| (module_name(&f), unit))
                            })
                            .collect();
                        if let Ok(mut results) = results.lock() {
                            results.extend(units);
                        }
                    }
                });
            }
        });
        let mut results = results
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .clone();
        results.sort();
        for (module, unit) in results {
            let _ = writeln!(lines, "{unit}\t{module}");
        }
        std::fs::write(&list, lines)?;
    }
    let mut units: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in std::fs::read_to_string(&list)?.lines() {
        if let Some((unit, target)) = line.split_once('\t') {
            let targets = units.entry(unit.to_string()).or_default();
            if !targets.iter().any(|t| t == target) {
                targets.push(target.to_string());
            }
        }
    }
    Ok(units)
}

fn collect_files(dir: &Path, suffix: &str, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            collect_files(&path, suffix, out)?;
        } else if path.to_string_lossy().ends_with(suffix) {
            out.push(path);
        }
    }
    Ok(())
}

/// The files `diff -rq` reports between the trees: changed `.c` files (present in both), and
/// the count of files only in one tree.
fn changed_files(from: &Path, to: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let output = Command::new("diff")
        .arg("-rq")
        .arg(from)
        .arg(to)
        .output()
        .context("cannot run diff -rq")?;
    if output.status.code() == Some(2) {
        bail!(
            "diff -rq {} {} failed: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let from_prefix = format!("Files {}/", from.display());
    let mut changed = Vec::new();
    let mut only = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(&from_prefix) {
            if let Some((path, _)) = rest.split_once(" and ") {
                changed.push(path.to_string());
            }
        } else if line.starts_with("Only in ") {
            only.push(line.to_string());
        }
    }
    changed.sort();
    Ok((changed, only))
}

/// What became of one `kpatch-rs build`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BuildRecord {
    /// The exit code; -1 when the build was stopped at its time limit.
    exit: i32,
    seconds: f64,
    /// The first line of the reason (the compiler's first error for a compile failure).
    reason: String,
    /// kpatch-rs's whole message (stderr), cut to a few kilobytes.
    detail: String,
    /// The klp objects the livepatch patches (from the JSON report).
    patched_targets: Vec<String>,
    /// `/sys/kernel/livepatch/<name>`.
    kernel_name: String,
    /// Functions the report names as changed or new.
    functions: Vec<String>,
    /// Set when the build with the shipped (stripped) modules asked for the unstripped ones
    /// and was run again with the -dbg package's modules: the first build's message.
    #[serde(default)]
    shipped_modules_error: Option<String>,
}

/// What became of one livepatch in the guest.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct GuestRecord {
    /// `works`, `load failure` or `oops`.
    class: String,
    reason: String,
    detail: String,
    notes: Vec<String>,
    seconds: Option<u64>,
}

/// One changed, compiled file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    file: String,
    /// The klp objects whose compile units name this file.
    targets: Vec<String>,
    name: String,
    build: Option<BuildRecord>,
    guest: Option<GuestRecord>,
    /// The outcome class: works, refused, no code change, does not compile on its own,
    /// tool error, load failure, oops, not loaded.
    outcome: String,
    /// The class and its reason, as the table shows it.
    outcome_text: String,
}

/// A module name for the file: unique per file (its index in the sorted list of the full run)
/// and short enough for `livepatch_` plus it to fit MODULE_NAME_LEN.
fn livepatch_name(index: usize, file: &str) -> String {
    let stem = file
        .rsplit('/')
        .next()
        .unwrap_or(file)
        .trim_end_matches(".c")
        .to_ascii_lowercase();
    let stem: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(30)
        .collect();
    format!("sd{index:04}-{stem}")
}

/// A fixed pseudo-random order (FNV-1a of the path), so that a run stopped early has tried a
/// spread of the tree rather than its first directories.
fn spread_key(file: &str) -> u64 {
    kpatch_support::fnv1a(file.as_bytes())
}

/// The first line of kpatch-rs's message that says why; for a compile failure the compiler's
/// first error line.
fn build_reason(exit: i32, stderr: &str) -> String {
    let compile = stderr.contains("building original objects failed")
        || stderr.contains("building patched objects failed");
    if compile {
        let side = if stderr.contains("building original objects failed") {
            "original"
        } else {
            "patched"
        };
        // kpatch-rs's own message quotes the compiler's first error after the make command
        // line; the log tail that follows may have lost it to later notes.
        let quoted = stderr.lines().find_map(|l| {
            let (_, rest) = l.split_once("; first error: ")?;
            Some(rest.split("; last lines of ").next().unwrap_or(rest))
        });
        if let Some(line) = quoted {
            return format!("{side}: {}", tree_relative(line.trim()));
        }
        if let Some(line) = stderr.lines().find(|l| {
            !l.starts_with("error: ") && (l.contains(": error:") || l.contains(": fatal error:"))
        }) {
            return format!("{side}: {}", tree_relative(line.trim()));
        }
        if let Some(line) = stderr.lines().find(|l| l.contains("Error ")) {
            return format!("{side}: {}", line.trim());
        }
    }
    // A failed Kbuild step other than the compile: the make error (modpost's ERROR line, the
    // linker's message) says more than the command line.
    if let Some(what) = stderr
        .lines()
        .find_map(|l| {
            l.strip_prefix("error: ")
                .and_then(|l| l.split_once(" failed: `"))
        })
        .map(|(what, _)| what.to_string())
    {
        let cause = stderr.lines().map(str::trim).find(|l| {
            l.starts_with("ERROR: ") || l.contains(": error:") || l.contains("undefined reference")
        });
        if let Some(cause) = cause {
            return format!("{what} failed: {}", tree_relative(cause));
        }
    }
    let message: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("kpatch-rs: "))
        .collect();
    match exit {
        2 => message
            .iter()
            .map(|l| l.trim_start_matches("error: "))
            .collect::<Vec<_>>()
            .join("; "),
        _ => message
            .iter()
            .find(|l| l.starts_with("error: "))
            .or(message.first())
            .map(|l| l.trim_start_matches("error: ").to_string())
            .unwrap_or_default(),
    }
}

/// A compiler message with the build directory's path cut down to the tree-relative file.
fn tree_relative(line: &str) -> String {
    for marker in ["/patched-source/", "/original/", "/patched/"] {
        if let Some(at) = line.find(marker) {
            let start = line[..at].rfind(' ').map_or(0, |space| space + 1);
            return format!("{}{}", &line[..start], &line[at + marker.len()..]);
        }
    }
    line.to_string()
}

fn cut(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n[... {} more bytes]", &text[..end], text.len() - end)
}

/// Everything a build needs, shared by the build threads.
struct BuildContext {
    kpatch: PathBuf,
    from_tree: PathBuf,
    to_tree: PathBuf,
    kernel_config: PathBuf,
    symvers: PathBuf,
    vmlinux: PathBuf,
    modules: PathBuf,
    debug_modules: PathBuf,
    run: PathBuf,
    slots: PathBuf,
    /// `--chroot` for every build: the suite's root when the suite is not this machine's.
    chroot: Option<PathBuf>,
}

/// One `kpatch-rs build` run for `row` with `modules` under --modules: exit code (-1 when
/// stopped at the time limit), stdout and stderr.
fn run_kpatch(
    context: &BuildContext,
    slot: usize,
    row: &Row,
    patch: &Path,
    out: &Path,
    modules: &Path,
) -> Result<(i32, String, String)> {
    let stdout_path = out.join("report.json");
    let stderr_path = out.join("stderr.log");
    let start = Instant::now();
    let mut child = Command::new(&context.kpatch)
        .arg("build")
        .arg("--sourcedir")
        .arg(&context.from_tree)
        .arg("--config")
        .arg(&context.kernel_config)
        .arg("--symvers")
        .arg(&context.symvers)
        .arg("--vmlinux")
        .arg(&context.vmlinux)
        .arg("--modules")
        .arg(modules)
        .arg("--cache-dir")
        .arg(context.slots.join(format!("slot{slot}")))
        .args(["-j2", "--json", "-n", &row.name])
        .args(
            context
                .chroot
                .iter()
                .flat_map(|root| [std::ffi::OsStr::new("--chroot"), root.as_os_str()]),
        )
        .arg("-o")
        .arg(out)
        .arg(patch)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path)?)
        .stderr(std::fs::File::create(&stderr_path)?)
        .spawn()
        .context("cannot start kpatch-rs")?;
    let exit = loop {
        if let Some(status) = child.try_wait()? {
            break status.code().unwrap_or(-1);
        }
        if start.elapsed() > BUILD_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break -1;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    Ok((exit, stdout, stderr))
}

fn build_one(context: &BuildContext, slot: usize, row: &Row) -> Result<BuildRecord> {
    let patches = context.run.join("patches");
    std::fs::create_dir_all(&patches)?;
    let patch = patches.join(format!("{}.patch", row.name));
    let file = &row.file;
    let output = Command::new("diff")
        .args([
            "-u",
            "--label",
            &format!("a/{file}"),
            "--label",
            &format!("b/{file}"),
        ])
        .arg(context.from_tree.join(file))
        .arg(context.to_tree.join(file))
        .output()
        .context("cannot run diff -u")?;
    if output.status.code() != Some(1) {
        bail!("diff -u of {file} exited {:?}", output.status.code());
    }
    std::fs::write(&patch, &output.stdout)?;
    let out = context.run.join("out").join(&row.name);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    // The shipped modules first, as a running system has them; a module whose patched static
    // name is defined twice needs the unstripped ones of the -dbg package, as kpatch-rs says.
    let start = Instant::now();
    let (mut exit, mut stdout, mut stderr) =
        run_kpatch(context, slot, row, &patch, &out, &context.modules)?;
    let mut first_message = String::new();
    if exit == 1 && stderr.contains("pass the directory of its unstripped modules") {
        first_message = stderr.clone();
        (exit, stdout, stderr) =
            run_kpatch(context, slot, row, &patch, &out, &context.debug_modules)?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let mut record = BuildRecord {
        exit,
        seconds,
        reason: if exit == -1 {
            format!("stopped after {} s", BUILD_TIMEOUT.as_secs())
        } else {
            build_reason(exit, &stderr)
        },
        detail: cut(&stderr, 6000),
        patched_targets: Vec::new(),
        kernel_name: String::new(),
        functions: Vec::new(),
        shipped_modules_error: (!first_message.is_empty()).then(|| cut(first_message.trim(), 2000)),
    };
    if exit == 0 {
        let report: serde_json::Value =
            serde_json::from_str(&stdout).context("kpatch-rs --json printed no JSON")?;
        record.kernel_name = report["kernel_name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Some(objects) = report["objects"].as_array() {
            for object in objects {
                let functions = object["diff"]["functions"].as_array();
                if functions.is_some_and(|f| !f.is_empty()) {
                    let target = object["klp_object"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    if !record.patched_targets.contains(&target) {
                        record.patched_targets.push(target);
                    }
                    for function in functions.into_iter().flatten() {
                        let name = function["name"].as_str().unwrap_or_default();
                        let status = function["status"].as_str().unwrap_or_default();
                        record.functions.push(format!("{name} ({status})"));
                    }
                }
            }
        }
    }
    Ok(record)
}

/// The shipped modules: path in the image (relative to lib/modules/R) and dependencies, from
/// `depmod -n` over the image package.
struct ModuleIndex {
    paths: BTreeMap<String, String>,
    deps: BTreeMap<String, Vec<String>>,
    /// `softdep M pre: X`, with X resolved through the modules' aliases (`crc32c` is
    /// `crc32c_generic`; a `_generic` module is preferred, the CPU-specific ones may not load).
    pre: BTreeMap<String, Vec<String>>,
}

impl ModuleIndex {
    /// `module` and what it needs, in load order.
    fn load_order(&self, module: &str, order: &mut Vec<String>) {
        if order.iter().any(|m| m == module) {
            return;
        }
        for pre in self.pre.get(module).into_iter().flatten() {
            self.load_order(pre, order);
        }
        for dep in self.deps.get(module).into_iter().flatten().rev() {
            self.load_order(dep, order);
        }
        if !order.iter().any(|m| m == module) {
            order.push(module.to_string());
        }
    }
}

fn module_index(sh: &Shell, kernel: &Kernel) -> Result<ModuleIndex> {
    let base = &kernel.modules_base;
    let release = &kernel.release;
    let text = cmd!(sh, "depmod -b {base} -n {release}")
        .quiet()
        .ignore_stderr()
        .read()?;
    let mut index = ModuleIndex {
        paths: BTreeMap::new(),
        deps: BTreeMap::new(),
        pre: BTreeMap::new(),
    };
    let mut aliases: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut softdeps: Vec<(String, Vec<String>)> = Vec::new();
    let mut in_dep = true;
    for line in text.lines() {
        if line.starts_with('#') {
            in_dep = false;
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if !in_dep {
            match fields.as_slice() {
                ["alias", alias, module] => aliases
                    .entry(alias.to_string())
                    .or_default()
                    .push(module_name(module)),
                ["softdep", module, "pre:", rest @ ..] => {
                    let pre = rest
                        .iter()
                        .take_while(|f| **f != "post:")
                        .map(|f| f.to_string())
                        .collect();
                    softdeps.push((module_name(module), pre));
                }
                _ => {}
            }
            continue;
        }
        let Some((path, deps)) = line.split_once(':') else {
            continue;
        };
        let name = module_name(path);
        index.paths.insert(name.clone(), path.to_string());
        index
            .deps
            .insert(name, deps.split_whitespace().map(module_name).collect());
    }
    for (module, pre) in softdeps {
        let mut resolved = Vec::new();
        for wanted in pre {
            let name = module_name(&wanted);
            if index.paths.contains_key(&name) {
                resolved.push(name);
            } else if let Some(targets) = aliases.get(&wanted) {
                let targets: Vec<&String> = targets
                    .iter()
                    .filter(|t| index.paths.contains_key(*t))
                    .collect();
                let generic = targets.iter().find(|t| t.ends_with("_generic"));
                match generic {
                    Some(generic) => resolved.push((*generic).clone()),
                    None => resolved.extend(targets.into_iter().cloned()),
                }
            }
        }
        index.pre.insert(module, resolved);
    }
    Ok(index)
}

/// Decompresses the shipped `name.ko.xz` into `dir/<file>.ko` unless there.
fn decompress_module(
    kernel: &Kernel,
    index: &ModuleIndex,
    dir: &Path,
    name: &str,
) -> Result<PathBuf> {
    let path = index
        .paths
        .get(name)
        .with_context(|| format!("module {name} is not in the image's modules"))?;
    let file = path
        .rsplit('/')
        .next()
        .unwrap_or(path)
        .trim_end_matches(".xz");
    let target = dir.join(file);
    if !target.exists() {
        let compressed = kernel
            .modules_base
            .join("lib/modules")
            .join(&kernel.release)
            .join(path);
        let output = Command::new("xz").arg("-dc").arg(&compressed).output()?;
        if !output.status.success() {
            bail!("xz -dc {} failed", compressed.display());
        }
        let partial = target.with_extension("ko.part");
        std::fs::write(&partial, &output.stdout)?;
        std::fs::rename(&partial, &target)?;
    }
    Ok(target)
}

/// The guest script for one livepatch: its target modules (with dependencies, as
/// `name:file`, in load order) are loaded first.
fn guest_script(row: &Row, build: &BuildRecord, load: &[(String, String)]) -> String {
    let load_list: Vec<String> = load.iter().map(|(n, f)| format!("{n}:{f}")).collect();
    let unload_list: Vec<String> = load.iter().rev().map(|(n, _)| n.clone()).collect();
    format!(
        r#"set -u
lp={kernel_name}
sysfs=/sys/kernel/livepatch/$lp
note() {{ echo "NOTE: $*"; }}
wait_for() {{ n=$1; shift; until "$@"; do n=$((n - 1)); [ "$n" -gt 0 ] || return 1; sleep 0.1; done; }}
transition_done() {{ [ "$(cat "$sysfs/transition" 2>/dev/null)" = 0 ]; }}
patch_gone() {{ [ ! -e "$sysfs" ]; }}
echo "file {file}, online CPUs: $(cat /sys/devices/system/cpu/online)"
dmesg -c > /dev/null
for m in {load_list}; do
    name=${{m%%:*}}
    if [ ! -e "/sys/module/$name" ]; then
        out=$(insmod "/mods/${{m#*:}}" 2>&1) || note "target module $name did not load: $out"
    fi
done
if dmesg | grep -E '{dirty}'; then
    note "the kernel log warned while loading the target modules, before the livepatch"
fi
dmesg -c > /dev/null
if ! out=$(insmod ./livepatch-{name}.ko 2>&1); then
    echo "LOAD-FAILED: $out"
    dmesg | tail -n 30
    exit 10
fi
if ! wait_for 600 transition_done; then
    blockers=$(for t in /proc/[0-9]*/task/[0-9]*; do
        [ "$(cat "$t/patch_state" 2>/dev/null)" = 0 ] && echo "$(cat "$t/comm" 2>/dev/null)"
    done | sort -u | tr '\n' ' ' | sed 's/ $//')
    echo "TRANSITION-STUCK: transition still $(cat "$sysfs/transition" 2>&1) after 60 s, tasks still on the old code: ${{blockers:-none found}}"
    dmesg | tail -n 30
    # Reverse it, so that the next case starts from a clean kernel; if even that does not
    # finish, ask for a fresh boot.
    echo 0 > "$sysfs/enabled" 2>/dev/null
    if wait_for 600 patch_gone && rmmod "$lp" 2>/dev/null; then
        echo "NOTE: reversed and unloaded after the stuck transition"
    else
        echo "NOTE: could not reverse the stuck transition; the next case gets a fresh boot"
        touch /tmp/kpatch-reboot
    fi
    exit 11
fi
echo 0 > "$sysfs/enabled" || {{ echo "DISABLE-FAILED"; dmesg | tail -n 30; exit 12; }}
if ! wait_for 600 patch_gone; then
    echo "DISABLE-STUCK: $sysfs still there after 60 s"
    dmesg | tail -n 30
    exit 12
fi
if ! out=$(rmmod "$lp" 2>&1); then
    echo "RMMOD-FAILED: $out"
    exit 13
fi
if dmesg | grep -E '{dirty}'; then
    echo "DMESG-DIRTY"
    dmesg | tail -n 80
    exit 14
fi
if dmesg | grep -i int3; then note "int3 in the kernel log"; fi
for name in {unload_list}; do rmmod "$name" 2>/dev/null; done
if dmesg | grep -E '{dirty}'; then
    note "the kernel log warned while unloading the target modules, after the livepatch"
fi
echo "livepatch loaded, transition done, disabled, unloaded"
"#,
        kernel_name = build.kernel_name,
        file = row.file,
        name = row.name,
        dirty = DIRTY_LOG,
        load_list = if load_list.is_empty() {
            String::new()
        } else {
            load_list.join(" ")
        },
        unload_list = unload_list.join(" "),
    )
}

/// The part of a lost guest's console log that shows why: the lines before the panic (or
/// the log's end), from the first relocation error, livepatch message, oops, BUG, warning or
/// int3 among the 80 lines before it.
fn console_excerpt(console: &Path) -> String {
    let text =
        String::from_utf8_lossy(&std::fs::read(console).unwrap_or_default()).replace('\r', "");
    let lines: Vec<&str> = text.lines().collect();
    let end = lines
        .iter()
        .rposition(|l| l.contains("Kernel panic"))
        .map_or(lines.len(), |p| p + 1);
    let window = end.saturating_sub(80);
    let bad = |l: &&str| {
        [
            "Invalid relocation",
            "livepatch:",
            "Oops",
            "BUG:",
            "WARNING:",
            "general protection",
            "int3",
        ]
        .iter()
        .any(|p| l.contains(p))
    };
    let start = lines[window..end]
        .iter()
        .position(bad)
        .map_or(end.saturating_sub(30), |p| p + window);
    lines[start..end.min(start + 60)].join("\n")
}

fn judge_guest(outcome: &crate::guest::Outcome) -> GuestRecord {
    let output = outcome.output.clone();
    let mut notes: Vec<String> = output
        .lines()
        .filter_map(|l| l.strip_prefix("NOTE: "))
        .map(str::to_string)
        .collect();
    let first = |prefix: &str| {
        output
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or(prefix)
            .to_string()
    };
    let dirty_lines = || {
        output
            .lines()
            .filter(|l| DIRTY_LOG.split('|').any(|p| l.contains(p)) && !l.starts_with("NOTE: "))
            .take(3)
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let (class, reason, detail) = match &outcome.ending {
        Ending::Exited(0) => ("works", String::new(), output.clone()),
        Ending::Exited(10) => {
            let mut reason = first("LOAD-FAILED");
            let invalid = output.lines().find(|l| l.contains("Invalid relocation"));
            if let Some(line) = invalid {
                reason = format!("{reason} ({})", line.trim());
            }
            ("load failure", reason, output.clone())
        }
        Ending::Exited(11) => ("load failure", first("TRANSITION-STUCK"), output.clone()),
        Ending::Exited(12) => ("load failure", first("DISABLE-"), output.clone()),
        Ending::Exited(13) => ("load failure", first("RMMOD-FAILED"), output.clone()),
        Ending::Exited(14) => (
            "oops",
            format!("kernel log: {}", dirty_lines()),
            output.clone(),
        ),
        Ending::Exited(code) => (
            "load failure",
            format!("guest script exited {code}"),
            output.clone(),
        ),
        Ending::TimedOut => (
            "oops",
            "the guest job hung (time limit)".to_string(),
            output.clone(),
        ),
        Ending::GuestLost(why) => {
            let excerpt = outcome
                .console_log
                .as_deref()
                .map(console_excerpt)
                .unwrap_or_default();
            if excerpt.contains("int3") {
                notes.push("int3 oops".to_string());
            }
            let first_bad = excerpt.lines().next().unwrap_or_default().to_string();
            (
                "oops",
                format!("guest lost: {why}: {}", strip_timestamp(&first_bad)),
                format!("{output}\n--- console ---\n{excerpt}"),
            )
        }
    };
    GuestRecord {
        class: class.to_string(),
        reason,
        detail: cut(&detail, 8000),
        notes,
        seconds: outcome.seconds,
    }
}

fn strip_timestamp(line: &str) -> &str {
    match line.trim_start().strip_prefix('[') {
        Some(rest) => rest.split_once("] ").map_or(line, |(_, l)| l),
        None => line,
    }
}

/// Everything the guest batches need.
struct GuestContext {
    kernel: Kernel,
    index: ModuleIndex,
    modules: PathBuf,
    run: PathBuf,
}

/// Runs one batch of built livepatches in the guest and stores each result.
fn run_guest_batch(
    sh: &Shell,
    context: &GuestContext,
    batch: &[Row],
    number: usize,
) -> Result<Vec<(String, GuestRecord)>> {
    let work = context.run.join("guest").join(format!("batch-{number:03}"));
    let rootfs = Rootfs::new(sh, &work.join("rootfs"))?;
    let mut jobs = Vec::new();
    let mut early = Vec::new();
    for row in batch {
        let Some(build) = &row.build else { continue };
        let mut load: Vec<(String, String)> = Vec::new();
        let mut problem = None;
        for target in build.patched_targets.iter().filter(|t| *t != "vmlinux") {
            let mut chain: Vec<String> = Vec::new();
            context.index.load_order(target, &mut chain);
            for module in chain {
                if load.iter().any(|(n, _)| *n == module) {
                    continue;
                }
                match decompress_module(&context.kernel, &context.index, &context.modules, &module)
                {
                    Ok(path) => {
                        let file = path
                            .file_name()
                            .map(|f| f.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        rootfs.copy_file(&path, &Path::new("/mods").join(&file))?;
                        load.push((module, file));
                    }
                    Err(error) => problem = Some(format!("{error:#}")),
                }
            }
        }
        if let Some(problem) = problem {
            early.push((
                row.name.clone(),
                GuestRecord {
                    class: "load failure".to_string(),
                    reason: format!("target module not available: {problem}"),
                    detail: String::new(),
                    notes: Vec::new(),
                    seconds: None,
                },
            ));
            continue;
        }
        let dir = format!("/lp/{}", row.name);
        let module = format!("livepatch-{}.ko", row.name);
        rootfs.copy_file(
            &context.run.join("out").join(&row.name).join(&module),
            &Path::new(&dir).join(&module),
        )?;
        std::fs::write(
            rootfs.path(&Path::new(&dir).join("check.sh")),
            guest_script(row, build, &load),
        )?;
        jobs.push(Job {
            name: row.name.clone(),
            cwd: dir,
            command: "bash ./check.sh".to_string(),
            timeout: GUEST_TIMEOUT,
        });
    }
    let mut results = early;
    if jobs.is_empty() {
        return Ok(results);
    }
    let kernel = KernelDirs {
        root: work.clone(),
        source: work.clone(),
        build: work.clone(),
        bzimage: context.kernel.vmlinuz.clone(),
        log: work.join("boot.log"),
        make_vars: Vec::new(),
    };
    eprintln!(
        "stable-delta: guest batch {number}: {} livepatches on vmlinuz-{}",
        jobs.len(),
        context.kernel.release
    );
    let outcomes = run_jobs(sh, &kernel, &rootfs, &jobs, &work.join("qemu"))?;
    for outcome in &outcomes {
        results.push((outcome.name.clone(), judge_guest(outcome)));
    }
    // The rootfs is rebuilt for every batch; the logs stay.
    let _ = std::fs::remove_dir_all(work.join("rootfs"));
    Ok(results)
}

fn classify(row: &mut Row) {
    if let Some(build) = row.build.as_mut() {
        if build.exit > 0 && !build.detail.is_empty() {
            build.reason = build_reason(build.exit, &build.detail);
        }
    }
    let (outcome, text) = match (&row.build, &row.guest) {
        (None, _) => (
            "not built".to_string(),
            "not built (run incomplete)".to_string(),
        ),
        (Some(build), guest) => match build.exit {
            0 => match guest {
                Some(guest) if guest.class == "works" => {
                    let notes = if guest.notes.is_empty() {
                        String::new()
                    } else {
                        format!(" (note: {})", guest.notes.join("; "))
                    };
                    ("works".to_string(), format!("works{notes}"))
                }
                Some(guest) => (
                    guest.class.clone(),
                    format!("{}: {}", guest.class, guest.reason),
                ),
                None => (
                    "not loaded".to_string(),
                    "built, not loaded in the guest".to_string(),
                ),
            },
            2 => ("refused".to_string(), format!("refused: {}", build.reason)),
            3 if !build.reason.is_empty() => (
                "no code change".to_string(),
                format!("no code change: {}", build.reason),
            ),
            3 => ("no code change".to_string(), "no code change".to_string()),
            _ if build.detail.contains("building original objects failed")
                || build.detail.contains("building patched objects failed") =>
            {
                (
                    "does not compile on its own".to_string(),
                    format!("does not compile on its own: {}", build.reason),
                )
            }
            _ => (
                "tool error".to_string(),
                format!("tool error: {}", build.reason),
            ),
        },
    };
    row.outcome = outcome;
    row.outcome_text = text;
}

fn md_cell(text: &str) -> String {
    let one_line = text.replace(['\n', '\r'], " ");
    let short = if one_line.len() > 300 {
        let mut end = 300;
        while !one_line.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &one_line[..end])
    } else {
        one_line
    };
    short.replace('|', "\\|")
}

const OUTCOMES: &[&str] = &[
    "works",
    "refused",
    "no code change",
    "does not compile on its own",
    "tool error",
    "load failure",
    "oops",
    "not loaded",
    "not built",
];

struct Summary {
    from: Release,
    to: Release,
    release: String,
    changed_c: usize,
    not_compiled: Vec<String>,
    only_in_one: usize,
    /// The stage times of every invocation that built or loaded something in this run
    /// directory (a resumed run has several).
    stages: Vec<Vec<(String, f64)>>,
    sample: bool,
}

fn totals(rows: &[Row]) -> BTreeMap<&'static str, (usize, usize)> {
    let mut totals = BTreeMap::new();
    for outcome in OUTCOMES {
        let vmlinux = rows
            .iter()
            .filter(|r| r.outcome == *outcome && r.targets.iter().any(|t| t == "vmlinux"))
            .count();
        let module = rows
            .iter()
            .filter(|r| r.outcome == *outcome && !r.targets.iter().any(|t| t == "vmlinux"))
            .count();
        totals.insert(*outcome, (vmlinux, module));
    }
    totals
}

fn markdown(summary: &Summary, rows: &[Row]) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# stable-delta {} → {}{}\n",
        summary.from.upstream,
        summary.to.upstream,
        if summary.sample { " (sample)" } else { "" }
    );
    let _ = writeln!(
        md,
        "`cargo xtask stable-delta --from {} --to {}{}`: every `.c` file that changed between \
         Debian's `linux-source-6.12` {} and {} and that Debian's amd64 kernel compiles (DWARF \
         compile units of the debug vmlinux and modules), one `kpatch-rs build` each for \
         `linux-image-{}` (debug vmlinux as symbols, shipped modules), each built livepatch \
         loaded, transitioned, disabled and unloaded on Debian's own vmlinuz in QEMU (2 vCPUs).\n",
        summary.from.upstream,
        summary.to.upstream,
        if summary.sample { " --sample" } else { "" },
        summary.from.version,
        summary.to.version,
        summary.release,
    );
    let _ = writeln!(
        md,
        "Changed `.c` files: {}; compiled by Debian's amd64 kernel: {} ({} not compiled); files \
         only in one tree: {}.\n",
        summary.changed_c,
        summary.changed_c - summary.not_compiled.len(),
        summary.not_compiled.len(),
        summary.only_in_one
    );
    let _ = writeln!(
        md,
        "## Totals\n\n| outcome | vmlinux | module | all |\n|---|---:|---:|---:|"
    );
    let totals = totals(rows);
    let (mut all_v, mut all_m) = (0, 0);
    for outcome in OUTCOMES {
        let (v, m) = totals[outcome];
        if v + m == 0 {
            continue;
        }
        all_v += v;
        all_m += m;
        let _ = writeln!(md, "| {outcome} | {v} | {m} | {} |", v + m);
    }
    let _ = writeln!(md, "| **all** | {all_v} | {all_m} | {} |\n", all_v + all_m);
    let _ = writeln!(
        md,
        "## Stages\n\nOne block per invocation that built or loaded something (a resumed run \
         has several).\n\n| invocation | stage | seconds |\n|---:|---|---:|"
    );
    for (number, stages) in summary.stages.iter().enumerate() {
        for (stage, seconds) in stages {
            let _ = writeln!(md, "| {} | {stage} | {seconds:.0} |", number + 1);
        }
    }
    let built: Vec<f64> = rows
        .iter()
        .filter_map(|r| r.build.as_ref())
        .map(|b| b.seconds)
        .collect();
    if !built.is_empty() {
        let mut sorted = built.clone();
        sorted.sort_by(f64::total_cmp);
        let _ = writeln!(
            md,
            "\nPer-file `kpatch-rs build`: {} builds, median {:.1} s, max {:.1} s, sum {:.0} s.",
            sorted.len(),
            sorted[sorted.len() / 2],
            sorted[sorted.len() - 1],
            sorted.iter().sum::<f64>()
        );
    }
    let _ = writeln!(md, "\n{}", goals(rows));
    let refused: Vec<&Row> = rows.iter().filter(|r| r.outcome == "refused").collect();
    if !refused.is_empty() {
        let _ = writeln!(
            md,
            "\n## Refusals, and why each is right\n\n| file | why a livepatch must not do it |\n|---|---|"
        );
        for row in refused {
            let why = refusal_rationale(&row.outcome_text)
                .unwrap_or("**no rule explains this refusal: check it by hand**");
            let _ = writeln!(md, "| {} | {why} |", row.file);
        }
    }
    let _ = writeln!(
        md,
        "\n## Files\n\n| file | klp object | outcome | build s | guest s |\n|---|---|---|---:|---:|"
    );
    for row in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            row.file,
            row.targets.join(", "),
            md_cell(&row.outcome_text),
            row.build
                .as_ref()
                .map_or(String::new(), |b| format!("{:.1}", b.seconds)),
            row.guest
                .as_ref()
                .and_then(|g| g.seconds)
                .map_or(String::new(), |s| s.to_string()),
        );
    }
    md
}

/// Why a refusal is right, by the rule that made it (the first that the reason names).
fn refusal_rationale(reason: &str) -> Option<&'static str> {
    const RULES: &[(&str, &str)] = &[
        (
            "the patch changes the layout of",
            "objects the running kernel made with the old layout (a device's private data \
             from its probe, a connection's or a netlink dump's state) stay live, and the \
             patched code would read and write them at the new offsets, into their neighbours \
             or past their end (tests/build-layout-forced shows it)",
        ),
        (
            "kernel thread's main loop",
            "the thread sleeps inside the changed function and never returns from it, so the \
             transition would never finish (seen in QEMU: the task stays on the old code)",
        ),
        (
            "__init function",
            "the function ran once at boot and its memory is freed: nothing would ever call the \
             replacement, and the change it makes to boot-time state is not made",
        ),
        (
            "changed size",
            "the running kernel's object has the old size: code that uses the new layout would \
             read or write past it",
        ),
        (
            "changed its initial value",
            "the object is already in use with its old value (a registered table, a driver \
             structure): a livepatch replaces code, so the new value would never take effect",
        ),
        (
            "moved from section",
            "the object's storage class changed (for example .bss to .data): the running \
             kernel's copy is the one in use, and the patch's idea of it differs",
        ),
        (
            "has no __fentry__ call",
            "ftrace cannot redirect the function, and callers the patch does not replace (other \
             units, or through its address) would keep running the old code",
        ),
        (
            "static local",
            "a fresh copy of the variable would lose the running kernel's value",
        ),
        (
            "belongs to no function or data symbol",
            "the change is in a table the kernel reads from its own image (such as PCI fixups \
             at boot and resume); a module's copy of it is never read",
        ),
        (
            "is refused when",
            "a jump label on a key only a livepatch relocation reaches would be read before the \
             relocation is applied",
        ),
    ];
    RULES
        .iter()
        .find(|(marker, _)| reason.contains(marker))
        .map(|&(_, why)| why)
}

/// The goals of the run, measured: nothing that oopses, warns or fails to load; working or
/// rightly refused modules for at least 95% of the files that compile on their own.
fn goals(rows: &[Row]) -> String {
    let count = |outcome: &str| rows.iter().filter(|r| r.outcome == outcome).count();
    let unsafe_modules = count("oops") + count("load failure");
    let own = rows.len() - count("does not compile on its own");
    let good = count("works") + count("refused") + count("no code change");
    let unexplained = rows
        .iter()
        .filter(|r| r.outcome == "refused" && refusal_rationale(&r.outcome_text).is_none())
        .count();
    let share = if own == 0 {
        100.0
    } else {
        100.0 * good as f64 / own as f64
    };
    format!(
        "## Goals\n\n\
         - modules that oops, warn or fail to load: {unsafe_modules} (goal 0);\n\
         - files that compile on their own ending as a working module, a refusal or no code \
           change: {good} of {own}, {share:.1}% (goal at least 95%); refusals no rule explains: \
           {unexplained};\n\
         - tool errors: {}; not loaded or not built: {}.",
        count("tool error"),
        count("not loaded") + count("not built"),
    )
}

fn json(summary: &Summary, rows: &[Row]) -> Result<String> {
    let totals: BTreeMap<&str, serde_json::Value> = totals(rows)
        .into_iter()
        .map(|(k, (v, m))| (k, serde_json::json!({"vmlinux": v, "module": m})))
        .collect();
    let value = serde_json::json!({
        "from": summary.from.version,
        "to": summary.to.version,
        "kernel_release": summary.release,
        "sample": summary.sample,
        "changed_c_files": summary.changed_c,
        "not_compiled": summary.not_compiled,
        "only_in_one_tree": summary.only_in_one,
        "stages_seconds": summary.stages.iter().map(|stages| stages.iter().map(|(s, t)| serde_json::json!([s, t])).collect::<Vec<_>>()).collect::<Vec<_>>(),
        "totals": totals,
        "rows": rows,
    });
    Ok(serde_json::to_string_pretty(&value)? + "\n")
}

fn read_record<T: for<'a> Deserialize<'a>>(path: &Path) -> Option<T> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn write_record<T: Serialize>(path: &Path, record: &T) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let partial = path.with_extension("json.part");
    std::fs::write(&partial, serde_json::to_string_pretty(record)?)?;
    std::fs::rename(&partial, path)?;
    Ok(())
}

fn sample_files(root: &Path) -> Result<Vec<String>> {
    let path = root.join(SAMPLE_LIST);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the sample list {}", path.display()))?;
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

pub fn run(args: &[String]) -> Result<()> {
    let options = parse_args(args)?;
    let sh = Shell::new()?;
    let root = crate::project_root();
    let cache = crate::cache_dir(&match options.suite {
        Some(suite) => format!("stable-delta-{suite}"),
        None => "stable-delta".to_string(),
    })?;
    std::fs::create_dir_all(&cache)?;
    let mut stages: Vec<(String, f64)> = Vec::new();

    let start = Instant::now();
    let apt = match options.suite {
        Some(suite) => Some(SuiteApt::new(&sh, &cache, suite)?),
        None => None,
    };
    let apt = apt.as_ref();
    let from = resolve_release(&sh, apt, &options.from)?;
    let to = resolve_release(&sh, apt, &options.to)?;
    let release = kernel_release(&sh, apt, &from)?;
    eprintln!(
        "stable-delta: {} → {}, kernel {release}",
        from.version, to.version
    );
    let from_source = ensure_package(&sh, apt, &cache, SOURCE_PACKAGE, &from.version)?;
    let to_source = ensure_package(&sh, apt, &cache, SOURCE_PACKAGE, &to.version)?;
    let image = ensure_package(
        &sh,
        apt,
        &cache,
        &format!("linux-image-{release}-unsigned"),
        &from.version,
    )?;
    let dbg = ensure_package(
        &sh,
        apt,
        &cache,
        &format!("linux-image-{release}-dbg"),
        &from.version,
    )?;
    let headers = ensure_package(
        &sh,
        apt,
        &cache,
        &format!("linux-headers-{release}"),
        &from.version,
    )?;
    stages.push((
        "download and unpack packages".to_string(),
        start.elapsed().as_secs_f64(),
    ));

    let start = Instant::now();
    let from_tree = ensure_tree(&sh, &cache, &from_source, &from.version)?;
    let to_tree = ensure_tree(&sh, &cache, &to_source, &to.version)?;
    stages.push((
        "extract source trees".to_string(),
        start.elapsed().as_secs_f64(),
    ));

    let kernel = Kernel {
        vmlinux: dbg.join(format!("usr/lib/debug/lib/modules/{release}/vmlinux")),
        debug_modules: dbg.join(format!("usr/lib/debug/lib/modules/{release}/kernel")),
        config: image.join(format!("boot/config-{release}")),
        vmlinuz: image.join(format!("boot/vmlinuz-{release}")),
        symvers: headers.join(format!("usr/src/linux-headers-{release}/Module.symvers")),
        modules_base: if image.join("lib/modules").is_dir() {
            image.clone()
        } else {
            image.join("usr")
        },
        release: release.clone(),
    };
    let start = Instant::now();
    let units = compile_units(&sh, &cache, &kernel)?;
    let (changed, only) = changed_files(&from_tree, &to_tree)?;
    let changed_c: Vec<&String> = changed.iter().filter(|f| f.ends_with(".c")).collect();
    let not_compiled: Vec<String> = changed_c
        .iter()
        .filter(|f| !units.contains_key(f.as_str()))
        .map(|f| f.to_string())
        .collect();
    let mut rows: Vec<Row> = changed_c
        .iter()
        .filter(|f| units.contains_key(f.as_str()))
        .enumerate()
        .map(|(index, file)| Row {
            file: file.to_string(),
            targets: units[file.as_str()].clone(),
            name: livepatch_name(index, file),
            build: None,
            guest: None,
            outcome: String::new(),
            outcome_text: String::new(),
        })
        .collect();
    stages.push((
        "compile units and changed files".to_string(),
        start.elapsed().as_secs_f64(),
    ));
    eprintln!(
        "stable-delta: {} changed .c files, {} compiled by the {release} kernel",
        changed_c.len(),
        rows.len()
    );

    let mut wanted: BTreeSet<String> = options.files.iter().cloned().collect();
    if options.sample {
        wanted.extend(sample_files(&root)?);
    }
    if !wanted.is_empty() {
        for file in &wanted {
            if !rows.iter().any(|r| r.file == *file) {
                bail!("{file} is not a changed file that the {release} kernel compiles");
            }
        }
        rows.retain(|r| wanted.contains(&r.file));
    }
    let run_name = format!(
        "{}-{}{}",
        from.upstream,
        to.upstream,
        if options.sample { "-sample" } else { "" }
    );
    let run = cache.join("runs").join(&run_name);
    if options.rebuild {
        let _ = std::fs::remove_dir_all(&run);
    }
    std::fs::create_dir_all(&run)?;

    // The shipped modules the builds need, decompressed into one directory.
    let start = Instant::now();
    let modules = cache.join("modules").join(&release);
    std::fs::create_dir_all(&modules)?;
    let index = module_index(&sh, &kernel)?;
    for row in &rows {
        for target in row.targets.iter().filter(|t| *t != "vmlinux") {
            if index.paths.contains_key(target) {
                decompress_module(&kernel, &index, &modules, target)?;
            }
        }
    }
    stages.push((
        "decompress target modules".to_string(),
        start.elapsed().as_secs_f64(),
    ));

    let kpatch = crate::kpatch::build_kpatch_rs(&sh)?;
    // Load earlier results; the rest is built in the spread order.
    for row in &mut rows {
        row.build = read_record(&run.join("builds").join(format!("{}.json", row.name)));
        row.guest = read_record(&run.join("guest-results").join(format!("{}.json", row.name)));
    }
    let mut todo: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i].build.is_none())
        .collect();
    todo.sort_by_key(|&i| spread_key(&rows[i].file));
    let already = rows.len() - todo.len();
    if options.report_only {
        todo.clear();
    }
    if let Some(limit) = options.limit {
        let done = rows.len() - todo.len();
        todo.truncate(limit.saturating_sub(done));
    }
    let pending_guest: Vec<usize> = (0..rows.len())
        .filter(|&i| {
            !options.report_only
                && rows[i].build.as_ref().is_some_and(|b| b.exit == 0)
                && rows[i].guest.is_none()
        })
        .collect();

    let build_context = BuildContext {
        kpatch,
        from_tree: from_tree.clone(),
        to_tree: to_tree.clone(),
        kernel_config: kernel.config.clone(),
        symvers: kernel.symvers.clone(),
        vmlinux: kernel.vmlinux.clone(),
        modules: modules.clone(),
        debug_modules: kernel.debug_modules.clone(),
        run: run.clone(),
        slots: cache.join("build-slots"),
        chroot: match options.suite {
            Some(suite) => Some(crate::build_root::ensure(&sh, suite)?),
            None => None,
        },
    };
    let guest_context = GuestContext {
        kernel,
        index,
        modules,
        run: run.clone(),
    };
    let total = todo.len();
    let guest_jobs = pending_guest.len() + if options.skip_guest { 0 } else { total };
    eprintln!(
        "stable-delta: {total} files to build ({already} built earlier), {} parallel builds; {} built earlier wait for the guest",
        options.parallel,
        pending_guest.len()
    );
    let builds_start = Instant::now();
    let guest_seconds = Arc::new(Mutex::new(0.0f64));
    let rows_shared = Arc::new(Mutex::new(rows));
    let queue = Arc::new(Mutex::new(VecDeque::from(todo)));
    let finished = Arc::new(Mutex::new(0usize));
    let (built_tx, built_rx) = mpsc::channel::<usize>();
    for index in pending_guest {
        let _ = built_tx.send(index);
    }
    let mut build_seconds = 0.0;
    std::thread::scope(|scope| -> Result<()> {
        let guest_thread = scope.spawn(|| -> Result<()> {
            if options.skip_guest {
                for _ in built_rx {}
                return Ok(());
            }
            let sh = Shell::new()?;
            let mut pending: Vec<usize> = Vec::new();
            let mut number = std::fs::read_dir(run.join("guest"))
                .map(|d| d.count())
                .unwrap_or(0);
            let mut open = true;
            while open || !pending.is_empty() {
                match built_rx.recv_timeout(Duration::from_secs(5)) {
                    Ok(index) => pending.push(index),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => open = false,
                }
                if pending.len() >= GUEST_BATCH || (!open && !pending.is_empty()) {
                    let batch_indices: Vec<usize> =
                        pending.drain(..pending.len().min(GUEST_BATCH)).collect();
                    let batch: Vec<Row> = {
                        let rows = rows_shared
                            .lock()
                            .map_err(|_| anyhow::anyhow!("poisoned"))?;
                        batch_indices.iter().map(|&i| rows[i].clone()).collect()
                    };
                    number += 1;
                    let start = Instant::now();
                    let results = match run_guest_batch(&sh, &guest_context, &batch, number) {
                        Ok(results) => results,
                        Err(error) => {
                            eprintln!("stable-delta: guest batch {number} failed: {error:#}");
                            continue;
                        }
                    };
                    if let Ok(mut seconds) = guest_seconds.lock() {
                        *seconds += start.elapsed().as_secs_f64();
                    }
                    let mut rows = rows_shared
                        .lock()
                        .map_err(|_| anyhow::anyhow!("poisoned"))?;
                    for (name, record) in results {
                        write_record(
                            &run.join("guest-results").join(format!("{name}.json")),
                            &record,
                        )?;
                        if let Some(row) = rows.iter_mut().find(|r| r.name == name) {
                            eprintln!("  guest {}: {} {}", row.file, record.class, record.reason);
                            row.guest = Some(record);
                        }
                    }
                }
            }
            Ok(())
        });
        let mut workers = Vec::new();
        for slot in 0..options.parallel {
            let queue = Arc::clone(&queue);
            let rows_shared = Arc::clone(&rows_shared);
            let finished = Arc::clone(&finished);
            let built_tx = built_tx.clone();
            let build_context = &build_context;
            let run = &run;
            workers.push(scope.spawn(move || -> Result<()> {
                loop {
                    let Some(index) = queue.lock().ok().and_then(|mut q| q.pop_front()) else {
                        return Ok(());
                    };
                    let row = rows_shared
                        .lock()
                        .map_err(|_| anyhow::anyhow!("poisoned"))?[index]
                        .clone();
                    let record = match build_one(build_context, slot, &row) {
                        Ok(record) => record,
                        Err(error) => BuildRecord {
                            exit: 1,
                            seconds: 0.0,
                            reason: format!("xtask could not run the build: {error:#}"),
                            detail: String::new(),
                            patched_targets: Vec::new(),
                            kernel_name: String::new(),
                            functions: Vec::new(),
                            shipped_modules_error: None,
                        },
                    };
                    write_record(
                        &run.join("builds").join(format!("{}.json", row.name)),
                        &record,
                    )?;
                    let count = {
                        let mut finished =
                            finished.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                        *finished += 1;
                        *finished
                    };
                    let exit = record.exit;
                    let mut shown = row.clone();
                    shown.build = Some(record.clone());
                    classify(&mut shown);
                    eprintln!(
                        "[{count}/{total}] {} ({}): {} in {:.1} s",
                        row.file,
                        row.targets.join(", "),
                        md_cell(&shown.outcome_text),
                        record.seconds
                    );
                    rows_shared
                        .lock()
                        .map_err(|_| anyhow::anyhow!("poisoned"))?[index]
                        .build = Some(record);
                    if exit == 0 {
                        let _ = built_tx.send(index);
                    }
                }
            }));
        }
        drop(built_tx);
        for worker in workers {
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("a build thread panicked"))??;
        }
        build_seconds = builds_start.elapsed().as_secs_f64();
        guest_thread
            .join()
            .map_err(|_| anyhow::anyhow!("the guest thread panicked"))??;
        Ok(())
    })?;
    stages.push((
        format!(
            "kpatch-rs builds ({total} files, {} at a time, wall clock)",
            options.parallel
        ),
        build_seconds,
    ));
    stages.push((
        "QEMU guest batches (overlapping the builds)".to_string(),
        guest_seconds.lock().map(|s| *s).unwrap_or_default(),
    ));

    let mut rows = Arc::try_unwrap(rows_shared)
        .map_err(|_| anyhow::anyhow!("rows still shared"))?
        .into_inner()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    for row in &mut rows {
        classify(row);
    }
    let stages_file = run.join("stages.json");
    let mut all_stages: Vec<Vec<(String, f64)>> = read_record(&stages_file).unwrap_or_default();
    if total > 0 || guest_jobs > 0 {
        all_stages.push(stages);
        write_record(&stages_file, &all_stages)?;
    }
    let stages = all_stages;
    let summary = Summary {
        from,
        to,
        release,
        changed_c: changed_c.len(),
        not_compiled,
        only_in_one: only.len(),
        stages,
        sample: options.sample,
    };
    let md = markdown(&summary, &rows);
    let json = json(&summary, &rows)?;
    std::fs::write(run.join("results.md"), &md)?;
    std::fs::write(run.join("results.json"), &json)?;
    if !options.sample && wanted.is_empty() && options.limit.is_none() {
        let fixtures = root.join("fixtures/stable-delta");
        std::fs::create_dir_all(&fixtures)?;
        std::fs::write(fixtures.join(format!("{run_name}.md")), &md)?;
        std::fs::write(fixtures.join(format!("{run_name}.json")), &json)?;
    }
    // The table is long: the terminal gets the summary above it.
    print!("{}", md.split("\n## Files").next().unwrap_or_default());
    eprintln!("stable-delta: results in {}", run.display());
    if options.sample {
        judge_sample(&root, &rows)?;
    }
    Ok(())
}

/// The sample's verdict for CI: every file in its expected outcome class, and no livepatch
/// that oopsed or failed to load, whatever was expected.
fn judge_sample(root: &Path, rows: &[Row]) -> Result<()> {
    let path = root.join(SAMPLE_EXPECTED);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the expected outcomes {}", path.display()))?;
    let expected: std::collections::BTreeMap<&str, &str> = text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split_once('\t'))
        .collect();
    let mut failures = Vec::new();
    for row in rows {
        let unsafe_outcome = matches!(row.outcome.as_str(), "oops" | "load failure");
        match expected.get(row.file.as_str()) {
            _ if unsafe_outcome => failures.push(format!("{}: {}", row.file, row.outcome_text)),
            Some(class) if *class == row.outcome => {}
            Some(class) => failures.push(format!(
                "{}: expected {class}, got {}",
                row.file, row.outcome_text
            )),
            None => failures.push(format!(
                "{}: no expected outcome in {SAMPLE_EXPECTED}",
                row.file
            )),
        }
    }
    for failure in &failures {
        println!("FAIL  stable-delta {failure}");
    }
    println!(
        "{} passed, {} failed",
        rows.len() - failures.len().min(rows.len()),
        failures.len()
    );
    if !failures.is_empty() {
        bail!(
            "{} of {} sample files did not end as expected",
            failures.len(),
            rows.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_compile_unit_names() {
        let text = "\nFile: a/b/foo-bar.ko\n <0><c>: Abbrev Number: 154 (DW_TAG_compile_unit)\n    <13>   DW_AT_name        : (indirect line string, offset: 0x24): fs/binfmt_misc.c\n <1><2b>: Abbrev Number: 3 (DW_TAG_base_type)\n    <2c>   DW_AT_name        : int\n <0><99>: Abbrev Number: 1 (DW_TAG_compile_unit)\n    <9a>   DW_AT_name        : (indirect line string, offset: 0x30): foo-bar.mod.c\n";
        assert_eq!(
            parse_units(text),
            vec![(
                Some("a/b/foo-bar.ko".to_string()),
                "fs/binfmt_misc.c".to_string()
            )]
        );
        assert_eq!(module_name("kernel/x/snd-hda-intel.ko.xz"), "snd_hda_intel");
    }

    #[test]
    fn names_fit_the_module_name_limit() {
        let name = livepatch_name(
            697,
            "drivers/gpu/drm/amd/display/amdgpu_dm/amdgpu_dm_mst_types_and_more.c",
        );
        assert!(format!("livepatch_{name}").len() < 56, "{name}");
        assert!(name.starts_with("sd0697-"));
    }

    #[test]
    fn every_refusal_kind_has_its_reason_and_an_unknown_one_none() {
        for reason in [
            "cannot patch init/main.o: __init function start_kernel in section .init.text changed",
            "cannot patch kernel/sysctl.o: data symbol kern_table in section .data.kern_table \
             changed size (2184 -> 2128 bytes)",
            "cannot patch net/ipv4/ipvs.o: function sync_thread_backup changed and is a kernel \
             thread's main loop (it calls kthread_should_stop)",
            "cannot patch security/selinux/avc.o: function avc_has_perm_noaudit changed and has \
             no __fentry__ call for the livepatch to hook",
            "cannot patch drivers/hwmon/emc1403.o: the patch changes the layout of struct \
             thermal_data: member mutex added at offset 16 (32 bytes)",
        ] {
            assert!(refusal_rationale(reason).is_some(), "{reason}");
        }
        assert_eq!(refusal_rationale("cannot patch x.o: something new"), None);
    }

    #[test]
    fn compile_failure_reason_is_the_first_compiler_error() {
        let stderr = "error: building patched objects failed: `make ...`\n  CC fs/x.o\nfs/x.c:3:1: error: unknown type name 'foo'\nfs/x.c:9:1: error: other\n";
        assert_eq!(
            build_reason(1, stderr),
            "patched: fs/x.c:3:1: error: unknown type name 'foo'"
        );
        assert_eq!(
            build_reason(
                1,
                "error: building the livepatch module failed: `make -C o M=m modules` (exit \
                 status: 2); last lines of o.log:\n  MODPOST m\nERROR: modpost: module \
                 livepatch-a uses symbol dma_buf_put from namespace DMA_BUF, but does not \
                 import it.\nmake: *** Error 2\n"
            ),
            "building the livepatch module failed: ERROR: modpost: module livepatch-a uses \
             symbol dma_buf_put from namespace DMA_BUF, but does not import it."
        );
        // The log tail may have lost the error line to later notes: kpatch-rs's own quote
        // of it is used, never a make line.
        let quoted = "error: building patched objects failed: `make x.o` (exit status: 2); \
                      first error: /c/s1/patched-source/net/x.c:305:9: error: too few \
                      arguments; last lines of /c/patched.log:\n  532 | note\n\
                      make[5]: *** [scripts/Makefile.build:234: net/x.o] Error 1\n";
        assert_eq!(
            build_reason(1, quoted),
            "patched: net/x.c:305:9: error: too few arguments"
        );
        assert_eq!(
            build_reason(2, "error: fs/x.o: section .data changed\nfs/x.o: y\n"),
            "fs/x.o: section .data changed; fs/x.o: y"
        );
    }
}
