//! The compile phase: the touched units built twice by Kbuild, from the user's tree and from
//! the patched one, each into its cached `O=` directory, in parallel. A header change first
//! needs the units that include it, from the `.cmd` files of a built original tree.

use std::fs;
use std::path::{Path, PathBuf};

use kpatch_diff::special_sections::KernelLayout;

use super::inputs::{read_file, InputError, Inputs};
use super::kbuild::KernelBuild;
use super::module;
use super::trees;
use super::units::{self, UnitsError};
use super::{io_error, BuildError, BuildOptions};

/// What the compile phase hands on: both builds and the units compiled in each.
#[derive(Debug)]
pub struct Compiled {
    pub original: KernelBuild,
    pub patched: KernelBuild,
    /// The units, as object paths relative to the tree (`fs/proc/cmdline.o`).
    pub units: Vec<PathBuf>,
    /// The kernel's layouts of its special sections' entries (`probe.rs`).
    pub kernel_layout: KernelLayout,
    /// Where the units' objects and Kbuild's `.cmd` files for them are: the two builds'
    /// `O=` directories, or an out-of-tree module's two copies (`oot.rs`).
    pub original_objects: PathBuf,
    pub patched_objects: PathBuf,
}

/// Builds the touched units of both trees.
pub fn compile(options: &BuildOptions, inputs: &Inputs) -> Result<Compiled, BuildError> {
    let jobs_each = (options.jobs / 2).max(1);
    let original_build = KernelBuild {
        source: options.sourcedir.clone(),
        output: inputs.cache.join("original"),
        jobs: jobs_each,
        log: inputs.cache.join("original.log"),
        release: inputs.release.clone(),
        make_vars: options.make_vars.clone(),
    };
    let patched_build = KernelBuild {
        source: inputs.patched_source(),
        output: inputs.cache.join("patched"),
        jobs: jobs_each,
        log: inputs.cache.join("patched.log"),
        release: inputs.release.clone(),
        make_vars: options.make_vars.clone(),
    };
    let config_text = read_file(&options.config, "kernel config", "pass --config")?;
    let mut extra_flags = vec![format!("-I{}", write_headers(&inputs.cache)?.display())];
    extra_flags.extend(
        debug_info_flags(&String::from_utf8_lossy(&config_text))
            .iter()
            .map(|flag| flag.to_string()),
    );
    let include_flag = extra_flags.join(" ");
    let touched_files = &inputs.touched;
    // A header change needs the dependency lists of a built original tree: the one beside the
    // symbols when it is a Kbuild build directory, else kpatch-rs's own original build
    // directory, built in full once and kept in the cache.
    let needs_reference = touched_files
        .iter()
        .any(|file| file.extension().and_then(|e| e.to_str()) != Some("c"));
    let given_reference = options.symbols.reference_build().to_path_buf();
    let reference = if !needs_reference || has_cmd_files(&given_reference) {
        given_reference
    } else {
        original_build.prepare(&options.config, &include_flag)?;
        // Its own stamp, not `.vmlinux.cmd`: a build killed while making the modules has one.
        let built = original_build.output.join(".kpatch-built-all");
        if !built.is_file() {
            eprintln!(
                "kpatch-rs: a header changed and {} has no .cmd files; building the original \
                 tree once (kept in {}, log {})",
                given_reference.display(),
                original_build.output.display(),
                original_build.log.display()
            );
            let whole = KernelBuild {
                jobs: options.jobs.max(1),
                ..original_build.clone()
            };
            whole.build_all("building the original tree once for header dependencies")?;
            fs::write(&built, "").map_err(io_error("write", &built))?;
        }
        original_build.output.clone()
    };
    let objects = units_to_build(options, touched_files, &reference)?;
    // One tree is prepared with all the jobs; the patched build directory starts as a copy
    // of it rather than being prepared again.
    KernelBuild {
        jobs: options.jobs.max(1),
        ..original_build.clone()
    }
    .prepare(&options.config, &include_flag)?;
    prepare_as_copy(&patched_build, &original_build, &options.config)?;
    // The probe (`probe.rs`) is compiled in the original build directory at the same time as
    // both trees' objects, with its own log (two makes' output in one log would mix their
    // error tails).
    let probe_build = KernelBuild {
        log: inputs.cache.join("probe.log"),
        ..original_build.clone()
    };
    let (original_result, patched_result, probe_result) = std::thread::scope(|scope| {
        let original = scope.spawn(|| {
            original_build.build_objects("building original objects", &objects, &include_flag)
        });
        let patched = scope.spawn(|| {
            patched_build.build_objects("building patched objects", &objects, &include_flag)
        });
        let probe = scope.spawn(|| {
            super::probe::kernel_layout(
                &probe_build,
                &inputs.cache,
                &String::from_utf8_lossy(&config_text),
            )
        });
        (original.join(), patched.join(), probe.join())
    });
    let thread_error = || BuildError::Internal("a build thread panicked".to_string());
    original_result.map_err(|_| thread_error())??;
    patched_result.map_err(|_| thread_error())??;
    let kernel_layout = probe_result.map_err(|_| thread_error())??;
    if let Err(error) = check_config_kept(&options.config, &original_build.output.join(".config")) {
        // The next run must configure again, once the missing tool is there.
        for build in [&original_build, &patched_build] {
            let _ = fs::remove_file(build.output.join(".kpatch-prepared"));
        }
        return Err(error);
    }
    Ok(Compiled {
        original_objects: original_build.output.clone(),
        patched_objects: patched_build.output.clone(),
        original: original_build,
        patched: patched_build,
        units: objects,
        kernel_layout,
    })
}

/// Prepares `build` for `config` as a copy of `prepared`, a build directory of another source
/// tree already prepared for it ([`trees::copy_prepared_build`]): the patched tree differs
/// from the original only in the files the patches touch, and whatever of the preparation
/// depends on those, Kbuild remakes in the copy when it builds there. A build directory
/// already prepared is kept.
fn prepare_as_copy(
    build: &KernelBuild,
    prepared: &KernelBuild,
    config: &Path,
) -> Result<(), BuildError> {
    let wanted = read_file(config, "kernel config", "pass --config")?;
    if build.is_prepared(&wanted) {
        return Ok(());
    }
    let stamp = prepared.prepared_stamp();
    let cutoff = fs::metadata(&stamp)
        .and_then(|meta| meta.modified())
        .map_err(io_error("stat", &stamp))?;
    // Kbuild writes both directories as make resolved them (`realpath`), and they may also
    // appear as given.
    let mut renames = Vec::new();
    for (old, new) in [
        (&prepared.source, &build.source),
        (&prepared.output, &build.output),
    ] {
        fs::create_dir_all(new).map_err(io_error("create", new))?;
        let canonical = |path: &Path| fs::canonicalize(path).map_err(io_error("resolve", path));
        renames.push((canonical(old)?, canonical(new)?));
        renames.push((old.clone(), new.clone()));
    }
    renames.dedup();
    trees::copy_prepared_build(&prepared.output, &build.output, &renames, cutoff)?;
    Ok(())
}

/// The flags that give every compared object full DWARF for the layout check, whatever the
/// kernel's own debug options: `-g` when the config has none (it changes no code: the diff's
/// `debug_info_changes_no_code` test), every struct described in every unit when
/// `CONFIG_DEBUG_INFO_REDUCED` would describe only the unit's own, and the DWARF kept in the
/// object when `CONFIG_DEBUG_INFO_SPLIT` would move it to a `.dwo` file.
pub fn debug_info_flags(config: &str) -> Vec<&'static str> {
    let enabled = |option: &str| {
        config
            .lines()
            .any(|line| line.strip_prefix(option) == Some("=y"))
    };
    let mut flags = Vec::new();
    if !enabled("CONFIG_DEBUG_INFO") {
        flags.push("-g");
    }
    if enabled("CONFIG_DEBUG_INFO_REDUCED") {
        flags.push("-femit-struct-debug-detailed=any");
    }
    if enabled("CONFIG_DEBUG_INFO_SPLIT") {
        flags.push("-gno-split-dwarf");
    }
    flags
}

/// Whether `build` is a Kbuild output directory whose `.cmd` files list dependencies.
fn has_cmd_files(build: &Path) -> bool {
    build.join(".vmlinux.cmd").is_file()
}

/// The units to build for the touched files: a `.c` is one object, a header every object
/// whose dependency list in `reference` (a built tree of the original source) names it.
fn units_to_build(
    options: &BuildOptions,
    touched: &[PathBuf],
    reference: &Path,
) -> Result<Vec<PathBuf>, BuildError> {
    let mut objects = Vec::new();
    for file in touched {
        if file.extension().and_then(|e| e.to_str()) == Some("c") {
            objects.push(units::unit_of_c_file(&options.sourcedir, file));
            continue;
        }
        // Kbuild records a header by the source path make was given; try it as given and
        // with symlinks resolved.
        let mut dependents = units::objects_including(reference, &options.sourcedir.join(file))?;
        if dependents.is_empty() {
            if let Ok(canonical) = fs::canonicalize(options.sourcedir.join(file)) {
                dependents = units::objects_including(reference, &canonical)?;
            }
        }
        if dependents.is_empty() {
            return Err(UnitsError::UnusedHeader {
                header: file.display().to_string(),
            }
            .into());
        }
        objects.extend(dependents);
    }
    objects.sort();
    objects.dedup();
    Ok(objects)
}

/// Refuses a build whose configuration lost options on the way through `olddefconfig`: an
/// option whose dependency this machine cannot meet (`DEBUG_INFO_BTF` without pahole) is
/// dropped silently, and changes the layout of `struct module` and others, so the running
/// kernel would refuse the module or misread it.
pub(super) fn check_config_kept(given: &Path, used: &Path) -> Result<(), BuildError> {
    let enabled = |path: &Path| -> Result<std::collections::BTreeSet<String>, BuildError> {
        let text = read_file(path, "kernel config", "pass --config")?;
        Ok(String::from_utf8_lossy(&text)
            .lines()
            .filter(|line| line.ends_with("=y") || line.ends_with("=m"))
            .map(str::to_string)
            .collect())
    };
    let used_options = enabled(used)?;
    let dropped: Vec<String> = enabled(given)?
        .into_iter()
        .filter(|option| !used_options.contains(option))
        .collect();
    if dropped.is_empty() {
        return Ok(());
    }
    Err(InputError::ConfigNotReproducible {
        dropped: dropped.join(", "),
    }
    .into())
}

/// Writes the patch-author headers where patched sources can include them.
pub(super) fn write_headers(cache: &Path) -> Result<PathBuf, BuildError> {
    let include = cache.join("include");
    let write = |name: &str, text: &str| {
        let path = include.join(name);
        path.parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|_| fs::write(&path, text))
            .map_err(io_error("write", &path))
    };
    write("kpatch-macros.h", module::KPATCH_MACROS_H)?;
    write("kpatch-syscall.h", module::KPATCH_SYSCALL_H)?;
    write("linux/livepatch_helpers.h", module::LIVEPATCH_HELPERS_H)?;
    Ok(include)
}

#[cfg(test)]
mod tests {
    use super::debug_info_flags;

    #[test]
    fn every_unit_gets_full_dwarf_whatever_the_debug_options() {
        assert_eq!(
            debug_info_flags("CONFIG_DEBUG_INFO_NONE=y\n# CONFIG_DEBUG_INFO is not set\n"),
            ["-g"]
        );
        assert!(debug_info_flags("CONFIG_DEBUG_INFO=y\nCONFIG_DEBUG_INFO_DWARF5=y\n").is_empty());
        assert_eq!(
            debug_info_flags(
                "CONFIG_DEBUG_INFO=y\nCONFIG_DEBUG_INFO_REDUCED=y\nCONFIG_DEBUG_INFO_SPLIT=y\n"
            ),
            ["-femit-struct-debug-detailed=any", "-gno-split-dwarf"]
        );
    }
}
