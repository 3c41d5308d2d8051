//! `cargo xtask fixtures`: real kernel object pairs for the diff tests and the benchmark.
//!
//! Builds the translation units that each patch listed in `fixtures/kernel/patches` touches,
//! once from the pristine Linux 6.12 source and once from a patched copy, the way kpatch-rs builds them
//! (`make O=... KCFLAGS='-ffunction-sections -fdata-sections' path/file.o` after
//! `modules_prepare`). The pristine tree is never written to: the patched tree is a hard-link
//! copy whose touched files are replaced by fresh copies before `patch` runs.
//!
//! Each object is also passed through the build's own objtool, as Kbuild does for a module
//! object with this configuration (`--link --module` plus the configured options), because
//! only objtool writes `.orc_unwind*`, `.return_sites`, `.static_call_sites`, `.call_sites`,
//! `.retpoline_sites` and `.ibt_endbr_seal`, and the diff must meet those too.
//!
//! A third variant, `-debug`, is built with `fixtures/kernel/debug.config` merged over the
//! configuration: debug options that put `__LINE__` into code (`might_sleep()`, RCU lockdep
//! checks) and into data (lockdep names of timers), so that the `__LINE__` rule meets them.
//!
//! Output, cached by (source, config, compiler, patches):
//! `${XDG_CACHE_HOME:-~/.cache}/kpatch-rs/fixtures/<key>/{orig,patched}{,-objtool,-debug}/
//! <path>.o`, with `fixtures/latest` pointing at the newest complete entry and
//! `<key>/manifest` listing `patch object` lines.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

const USAGE: &str = "\
usage: cargo xtask fixtures [--source DIR --config FILE] [--print-dir]

Without --source/--config, uses the test kernel of `cargo xtask kernel` (its source tree and
.config), building it first if needed.";

/// Bump when the layout of a cache entry changes.
const FORMAT: &str = "kpatch-rs kernel fixtures v4";

pub fn run(args: &[String]) -> Result<()> {
    let mut source = None;
    let mut config = None;
    let mut print_dir = false;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--source" => source = args.next().map(PathBuf::from),
            "--config" => config = args.next().map(PathBuf::from),
            "--print-dir" => print_dir = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument `{other}` to `cargo xtask fixtures`\n\n{USAGE}"),
        }
    }
    let (source, config) = match (source, config) {
        (Some(source), Some(config)) => (source, config),
        (None, None) => test_kernel()?,
        _ => bail!("--source and --config go together\n\n{USAGE}"),
    };
    let root = build_fixtures(&source, &config)?;
    if print_dir {
        println!("{}", root.display());
    } else {
        eprintln!("kernel fixtures ready: {}", root.display());
    }
    Ok(())
}

/// The source tree and `.config` of the test kernel: asks `cargo xtask kernel --print-dirs`
/// (which builds it when missing), else takes the newest complete entry of its cache.
fn test_kernel() -> Result<(PathBuf, PathBuf)> {
    let exe = std::env::current_exe().context("cannot find the xtask executable")?;
    // Its progress (a first build takes minutes) goes to the terminal; the dirs come on stdout.
    let output = Command::new(exe)
        .args(["kernel", "--print-dirs"])
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run `cargo xtask kernel --print-dirs`")?;
    if output.status.success() {
        let text = String::from_utf8_lossy(&output.stdout);
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .map(PathBuf::from)
        };
        if let (Some(source), Some(build)) = (field("source"), field("build")) {
            return Ok((source, build.join(".config")));
        }
    }
    eprintln!(
        "fixtures: `cargo xtask kernel --print-dirs` gave no kernel; using the newest cached one"
    );
    let kernels = crate::kernel::cache_root()?;
    let mut complete: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&kernels)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|dir| dir.join("complete").is_file() && dir.join("build/.config").is_file())
        .filter_map(|dir| {
            let modified = std::fs::metadata(dir.join("complete"))
                .ok()?
                .modified()
                .ok()?;
            Some((modified, dir))
        })
        .collect();
    complete.sort();
    match complete.pop() {
        Some((_, dir)) => Ok((dir.join("source"), dir.join("build/.config"))),
        None => bail!(
            "no configured kernel found: run `cargo xtask kernel` first, or pass \
             --source DIR --config FILE"
        ),
    }
}

/// The hash of `parts`, each ended by a 0xff byte so that the parts cannot run together.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash = kpatch_support::Fnv1a::new();
    for part in parts {
        hash.write(part).write(&[0xff]);
    }
    hash.finish()
}

/// One fixture patch and the objects it touches.
#[derive(Debug)]
struct FixturePatch {
    path: PathBuf,
    files: Vec<String>,
}

fn fixture_patches() -> Result<Vec<FixturePatch>> {
    let root = crate::project_root();
    let list = root.join("fixtures/kernel/patches");
    let text = std::fs::read_to_string(&list)
        .with_context(|| format!("cannot read {}", list.display()))?;
    let mut paths: Vec<PathBuf> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|name| root.join("fixtures/patches").join(name))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let files: Vec<String> = text
                .lines()
                .filter_map(|l| l.strip_prefix("+++ b/"))
                .map(|l| l.split('\t').next().unwrap_or(l).trim().to_string())
                .collect();
            if files.is_empty() || files.iter().any(|f| !f.ends_with(".c")) {
                bail!(
                    "{}: a fixture patch must touch only .c files, given as `+++ b/path.c`",
                    path.display()
                );
            }
            Ok(FixturePatch { path, files })
        })
        .collect()
}

fn run_command(command: &mut Command, what: &str) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot start {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn make(source: &Path, build: &Path, targets: &[&str], kcflags: bool) -> Result<()> {
    let mut command = Command::new("make");
    command
        .arg("-C")
        .arg(source)
        .arg(format!("O={}", build.display()))
        .arg("-j2")
        .arg("-s");
    if kcflags {
        command.arg("KCFLAGS=-ffunction-sections -fdata-sections");
    }
    command.args(targets);
    run_command(
        &mut command,
        &format!("make {} in {}", targets.join(" "), build.display()),
    )
}

fn prepare_build_dir(
    source: &Path,
    build: &Path,
    config: &Path,
    fragment: Option<&Path>,
) -> Result<()> {
    std::fs::create_dir_all(build)?;
    std::fs::copy(config, build.join(".config"))
        .with_context(|| format!("cannot copy {}", config.display()))?;
    if let Some(fragment) = fragment {
        let text = std::fs::read_to_string(fragment)
            .with_context(|| format!("cannot read {}", fragment.display()))?;
        let mut command = Command::new(source.join("scripts/config"));
        command.arg("--file").arg(build.join(".config"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            if let Some(name) = line
                .strip_prefix("CONFIG_")
                .and_then(|l| l.strip_suffix("=y"))
            {
                command.arg("--enable").arg(name);
            }
        }
        run_command(
            &mut command,
            &format!("scripts/config with {}", fragment.display()),
        )?;
    }
    make(source, build, &["olddefconfig"], false)?;
    make(source, build, &["modules_prepare"], false)
}

/// Replaces `path` by a copy of itself, so that it no longer shares an inode with the
/// pristine tree and nothing written to it can reach the original.
fn break_hard_link(path: &Path) -> Result<()> {
    let temporary = path.with_extension("kpatch-rs-copy");
    std::fs::copy(path, &temporary).with_context(|| format!("cannot copy {}", path.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("cannot replace {}", path.display()))
}

fn build_fixtures(source: &Path, config: &Path) -> Result<PathBuf> {
    let source = std::fs::canonicalize(source)
        .with_context(|| format!("cannot find kernel source {}", source.display()))?;
    if !source.join("Makefile").is_file() {
        bail!(
            "{} is not a kernel source tree (no Makefile)",
            source.display()
        );
    }
    let config_bytes =
        std::fs::read(config).with_context(|| format!("cannot read {}", config.display()))?;
    let compiler = Command::new("gcc")
        .arg("--version")
        .output()
        .context("cannot run gcc --version")?
        .stdout;
    let patches = fixture_patches()?;
    let mut material: Vec<Vec<u8>> = vec![
        FORMAT.as_bytes().to_vec(),
        source.as_os_str().as_encoded_bytes().to_vec(),
        config_bytes,
        compiler,
    ];
    for patch in &patches {
        material.push(
            patch
                .path
                .file_name()
                .map_or_else(Vec::new, |n| n.as_encoded_bytes().to_vec()),
        );
        material.push(std::fs::read(&patch.path)?);
    }
    let debug_fragment = crate::project_root().join("fixtures/kernel/debug.config");
    material.push(
        std::fs::read(&debug_fragment)
            .with_context(|| format!("cannot read {}", debug_fragment.display()))?,
    );
    let parts: Vec<&[u8]> = material.iter().map(Vec::as_slice).collect();
    let key = format!("{:016x}", fnv1a(&parts));
    let base = crate::cache_dir("fixtures")?;
    let root = base.join(&key);
    let latest = base.join("latest");
    if root.join("complete").is_file() {
        point_latest(&latest, &key)?;
        return Ok(root);
    }
    if root.exists() {
        std::fs::remove_dir_all(&root)
            .with_context(|| format!("cannot clear incomplete {}", root.display()))?;
    }
    std::fs::create_dir_all(&root)?;
    let (orig_build, patched_build, patched_source) = (
        root.join("orig"),
        root.join("patched"),
        root.join("patched-src"),
    );

    eprintln!("fixtures: preparing {}", orig_build.display());
    prepare_build_dir(&source, &orig_build, config, None)?;

    eprintln!(
        "fixtures: hard-link copy of the source in {}",
        patched_source.display()
    );
    run_command(
        Command::new("cp")
            .arg("-al")
            .arg(&source)
            .arg(&patched_source),
        "cp -al of the kernel source",
    )?;
    for patch in &patches {
        for file in &patch.files {
            break_hard_link(&patched_source.join(file))?;
        }
        run_command(
            Command::new("patch")
                .args(["-p1", "-s", "--no-backup-if-mismatch", "-d"])
                .arg(&patched_source)
                .arg("-i")
                .arg(&patch.path),
            &format!("patch -p1 < {}", patch.path.display()),
        )?;
    }
    eprintln!("fixtures: preparing {}", patched_build.display());
    prepare_build_dir(&patched_source, &patched_build, config, None)?;

    let objects: Vec<String> = patches
        .iter()
        .flat_map(|p| p.files.iter())
        .map(|f| format!("{}.o", f.trim_end_matches(".c")))
        .collect();
    let targets: Vec<&str> = objects.iter().map(String::as_str).collect();
    eprintln!("fixtures: building {}", targets.join(" "));
    make(&source, &orig_build, &targets, true)?;
    make(&patched_source, &patched_build, &targets, true)?;

    let fragment = crate::project_root().join("fixtures/kernel/debug.config");
    for (tree, variant) in [(&source, "orig-debug"), (&patched_source, "patched-debug")] {
        let build = root.join(variant);
        eprintln!(
            "fixtures: preparing {} with {}",
            build.display(),
            fragment.display()
        );
        prepare_build_dir(tree, &build, config, Some(&fragment))?;
        make(tree, &build, &targets, true)?;
    }

    let objtool_args = objtool_args(&std::fs::read_to_string(config)?);
    // The tests run the same objtool on the diff output, as Kbuild will on the module.
    std::fs::write(root.join("objtool-args"), objtool_args.join("\n") + "\n")?;
    for (build, variant) in [(&orig_build, "orig"), (&patched_build, "patched")] {
        let objtool = build.join("tools/objtool/objtool");
        for object in &objects {
            let copy = root.join(format!("{variant}-objtool")).join(object);
            if let Some(parent) = copy.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::copy(build.join(object), &copy)
                .with_context(|| format!("cannot copy {object}"))?;
            run_command(
                Command::new(&objtool).args(&objtool_args).arg(&copy),
                &format!("objtool on {}", copy.display()),
            )?;
        }
    }

    let mut manifest = String::new();
    for patch in &patches {
        let name = patch
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        for file in &patch.files {
            manifest.push_str(&format!("{name} {}.o\n", file.trim_end_matches(".c")));
        }
    }
    std::fs::write(root.join("manifest"), manifest)?;
    std::fs::write(
        root.join("complete"),
        format!("source {}\nconfig {}\n", source.display(), config.display()),
    )?;
    point_latest(&latest, &key)?;
    prune_other_entries(&base, &key);
    Ok(root)
}

/// Removes the cache entries of earlier fixture sets (other keys): each holds a patched
/// source tree and three builds, and only the newest is used.
fn prune_other_entries(base: &Path, key: &str) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_key = name.len() == 16 && name.bytes().all(|b| b.is_ascii_hexdigit());
        if is_key && name != key {
            eprintln!("fixtures: removing the outdated {}", entry.path().display());
            // A failed removal only costs disk space.
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn point_latest(latest: &Path, key: &str) -> Result<()> {
    let _ = std::fs::remove_file(latest);
    std::os::unix::fs::symlink(key, latest)
        .with_context(|| format!("cannot link {}", latest.display()))
}

/// The objtool options Kbuild's `scripts/Makefile.lib` derives from the configuration, for a
/// module object of an IBT kernel (where objtool runs at link time, hence `--link`).
fn objtool_args(config: &str) -> Vec<String> {
    let value = |name: &str| {
        config
            .lines()
            .find_map(|l| l.strip_prefix(&format!("CONFIG_{name}=")))
            .map(str::to_string)
    };
    let enabled = |name: &str| value(name).as_deref() == Some("y");
    let table: &[(&str, &str)] = &[
        ("HAVE_JUMP_LABEL_HACK", "--hacks=jump_label"),
        ("HAVE_NOINSTR_HACK", "--hacks=noinstr"),
        ("MITIGATION_CALL_DEPTH_TRACKING", "--hacks=skylake"),
        ("X86_KERNEL_IBT", "--ibt"),
        ("FINEIBT", "--cfi"),
        ("FTRACE_MCOUNT_USE_OBJTOOL", "--mcount"),
        ("HAVE_OBJTOOL_NOP_MCOUNT", "--mnop"),
        ("UNWINDER_ORC", "--orc"),
        ("MITIGATION_RETPOLINE", "--retpoline"),
        ("MITIGATION_RETHUNK", "--rethunk"),
        ("MITIGATION_SLS", "--sls"),
        ("STACK_VALIDATION", "--stackval"),
        ("HAVE_STATIC_CALL_INLINE", "--static-call"),
        ("HAVE_UACCESS_VALIDATION", "--uaccess"),
    ];
    let mut args: Vec<String> = table
        .iter()
        .filter(|(name, _)| enabled(name))
        .map(|(_, arg)| (*arg).to_string())
        .collect();
    // `--mnop` only goes with `--mcount`, as in Makefile.lib.
    if !enabled("FTRACE_MCOUNT_USE_OBJTOOL") {
        args.retain(|a| a != "--mnop");
    }
    if enabled("PREFIX_SYMBOLS") {
        if let Some(bytes) = value("FUNCTION_PADDING_BYTES") {
            args.push(format!("--prefix={bytes}"));
        }
    }
    args.push("--link".to_string());
    args.push("--module".to_string());
    args
}
