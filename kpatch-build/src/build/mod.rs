//! The build pipeline (`kpatch-rs build`): from patch files to a livepatch module.
//!
//! Phases, in order, each in its own file: inputs are checked here; `targets` finds the
//! objects to build; `trees` makes the patched tree; `kbuild` compiles the touched objects of
//! both trees; `diff` compares each pair (in parallel); `resolve` decides how each reference
//! reaches its symbol; `prepare` and `klp_records` make each diff output linkable; `module`
//! generates the module source; `kbuild` links it; `post_link` writes the livepatch
//! relocations. Every phase's time goes into the report.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kpatch_diff::compare::Refusal;
use kpatch_diff::elf::{Binding, Object};
use kpatch_diff::report::{Outcome, Report};
use kpatch_diff::{self as diff, Pair};

use kbuild::{CommandError, KernelBuild};
use klp_records::klp_symbol_name;
use module::{KlpFunction, KlpObject, LivepatchModule, Target};
use resolve::{Exports, Reach, ReferenceFacts, ResolveError, TargetSymbols, Unit};
use trees::TreeError;
use units::TargetError;

pub mod kbuild;
pub mod klp_records;
pub mod module;
pub mod post_link;
pub mod prepare;
pub mod resolve;
pub mod trees;
pub mod units;

/// What `kpatch-rs build` was asked to do.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The kernel source tree; a clean tree (configured out of tree), never modified.
    pub sourcedir: PathBuf,
    /// The kernel config the running kernel was built with.
    pub config: PathBuf,
    /// Where the running kernel's symbols come from.
    pub symbols: SymbolSource,
    /// Where the `.ko` files of module targets are (searched recursively); by default the
    /// directory of the symbol source.
    pub modules: Option<PathBuf>,
    /// The running kernel's release (`uname -r`), which Kbuild puts into the module's
    /// vermagic; by default `include/config/kernel.release` beside `symvers` when that
    /// exists (a distribution's headers package ships it), else what the source tree's
    /// `scripts/setlocalversion` says.
    pub kernel_release: Option<String>,
    /// The kernel's `Module.symvers`.
    pub symvers: PathBuf,
    /// The module's name without the `livepatch-` prefix.
    pub name: String,
    /// Parallel jobs for make.
    pub jobs: usize,
    /// Where `livepatch-<name>.ko` goes.
    pub output: PathBuf,
    /// The patches, applied in order.
    pub patches: Vec<PathBuf>,
    /// Whether the module replaces earlier livepatches (`klp_patch.replace`).
    pub replace: bool,
    /// Where build directories and the patched tree are kept between runs.
    pub cache: PathBuf,
    /// `VAR=VALUE` for every make run: the toolchain the running kernel was built with where
    /// it is not the default one (`RUSTC=`, `BINDGEN=` for a kernel with Rust code).
    pub make_vars: Vec<String>,
}

/// The symbols of the running kernel's vmlinux.
#[derive(Debug, Clone)]
pub enum SymbolSource {
    /// The unstripped vmlinux (a distribution's debug package): file symbols settle which
    /// same-named local symbol a translation unit defines.
    Vmlinux(PathBuf),
    /// System.map or a copy of `/proc/kallsyms`: same-named locals are told apart by their
    /// neighbours.
    SystemMap(PathBuf),
}

impl SymbolSource {
    fn path(&self) -> &Path {
        match self {
            SymbolSource::Vmlinux(path) | SymbolSource::SystemMap(path) => path,
        }
    }

    /// The Kbuild output directory the symbol file lies in, where `.cmd` files and module
    /// `.ko` files are looked for.
    fn reference_build(&self) -> &Path {
        self.path().parent().unwrap_or(Path::new("."))
    }
}

/// Why a build stopped.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("{0}")]
    Diff(String),
    #[error("{}", .refusals.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Unpatchable { refusals: Vec<Refusal> },
    #[error("the patches change no code: {objects}")]
    NoChange { objects: String },
    #[error("{0}")]
    Module(String),
}

impl BuildError {
    /// The outcome word of the JSON document: `refused`, `no-change` or `error`.
    pub fn outcome(&self) -> &'static str {
        match self {
            BuildError::Unpatchable { .. } => "refused",
            BuildError::NoChange { .. } => "no-change",
            _ => "error",
        }
    }

    /// The error as the one JSON document `kpatch-rs build --json` prints when no module was
    /// built: its outcome, exit code and message, and each refusal's object, section, symbol
    /// and reason.
    pub fn write_json(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let refusals: &[Refusal] = match self {
            BuildError::Unpatchable { refusals } => refusals,
            _ => &[],
        };
        let document = serde_json::json!({
            "outcome": self.outcome(),
            "exit_code": self.exit_code(),
            "message": self.to_string(),
            "refusals": refusals,
        });
        serde_json::to_writer_pretty(&mut *out, &document)?;
        writeln!(out)
    }

    /// The exit code scripts see for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            BuildError::Unpatchable { .. } => crate::exit::UNPATCHABLE,
            BuildError::NoChange { .. } => crate::exit::NO_CHANGE,
            _ => crate::exit::ERROR,
        }
    }
}

/// One object's part of the build, for the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ObjectSummary {
    /// The object, relative to the tree.
    pub object: String,
    /// `vmlinux` or the module it belongs to.
    pub target: String,
    /// The diff's report.
    pub diff: Report,
}

/// What a build produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildReport {
    /// Always `built`: the word that tells this document from an error's
    /// ([`BuildError::write_json`]).
    pub outcome: &'static str,
    /// The module written.
    pub module: PathBuf,
    /// The module's name as the kernel shows it (`/sys/kernel/livepatch/<name>`).
    pub kernel_name: String,
    /// Per object: what changed.
    pub objects: Vec<ObjectSummary>,
    /// The livepatch relocation sections written, with their entry counts.
    pub klp_relocation_sections: Vec<(String, usize)>,
    /// Seconds per phase, in order.
    pub timings: Vec<(String, f64)>,
}

impl BuildReport {
    /// Prints the report as one JSON document.
    pub fn write_json(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        serde_json::to_writer_pretty(&mut *out, self)?;
        writeln!(out)
    }

    /// Prints what changed per object, the livepatch relocations, and the time per phase.
    pub fn write_human(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        writeln!(
            out,
            "built {} (loads as /sys/kernel/livepatch/{})",
            self.module.display(),
            self.kernel_name
        )?;
        // A header change compiles many objects; only those with a changed function matter.
        for object in self.objects.iter().filter(|o| !o.diff.functions.is_empty()) {
            writeln!(out, "{} ({}):", object.object, object.target)?;
            for function in &object.diff.functions {
                let status = function.status.as_str();
                writeln!(out, "  {status:8} {}", function.name)?;
            }
        }
        for (section, count) in &self.klp_relocation_sections {
            writeln!(out, "  livepatch relocations: {section} ({count})")?;
        }
        let total: f64 = self.timings.iter().map(|(_, seconds)| seconds).sum();
        let phases: Vec<String> = self
            .timings
            .iter()
            .map(|(phase, seconds)| format!("{phase} {seconds:.2}s"))
            .collect();
        writeln!(out, "time: {total:.2}s ({})", phases.join(", "))
    }
}

struct Timer {
    phases: Vec<(String, f64)>,
    last: Instant,
}

impl Timer {
    fn new() -> Timer {
        Timer {
            phases: Vec::new(),
            last: Instant::now(),
        }
    }

    fn lap(&mut self, phase: &str) {
        let now = Instant::now();
        self.phases
            .push((phase.to_string(), (now - self.last).as_secs_f64()));
        self.last = now;
    }
}

fn read_file(path: &Path, what: &str, hint: &str) -> Result<Vec<u8>, BuildError> {
    fs::read(path).map_err(|e| {
        BuildError::Input(format!(
            "cannot read {what} {}: {e}; {hint}",
            path.display()
        ))
    })
}

/// Checks the inputs before any work, so that a wrong argument fails in milliseconds with a
/// message that says what to pass instead.
fn check_inputs(options: &BuildOptions) -> Result<(), BuildError> {
    let source = &options.sourcedir;
    if !source.join("Makefile").is_file() || !source.join("kernel").is_dir() {
        return Err(BuildError::Input(format!(
            "{} is not a kernel source tree (no Makefile and kernel/); pass the kernel's source \
             with --sourcedir",
            source.display()
        )));
    }
    if source.join(".config").exists() || source.join("include/config").exists() {
        return Err(BuildError::Input(format!(
            "{} is configured in place (it has .config or include/config); kpatch-rs builds out \
             of tree and needs a clean source tree: pass a clean copy with --sourcedir and the \
             configuration with --config",
            source.display()
        )));
    }
    let config = read_file(
        &options.config,
        "kernel config",
        "pass the running kernel's config with --config",
    )?;
    let config = String::from_utf8_lossy(&config);
    if !config
        .lines()
        .any(|line| line.trim() == "CONFIG_LIVEPATCH=y")
    {
        return Err(BuildError::Input(format!(
            "kernel config {} does not enable CONFIG_LIVEPATCH: that kernel cannot load \
             livepatches; rebuild it with CONFIG_LIVEPATCH=y or pass the right --config",
            options.config.display()
        )));
    }
    if !options.symbols.path().is_file() {
        return Err(BuildError::Input(format!(
            "{} does not exist; pass the running kernel's vmlinux (with symbols) with \
             --vmlinux, or its System.map with --system-map",
            options.symbols.path().display()
        )));
    }
    if !options.symvers.is_file() {
        return Err(BuildError::Input(format!(
            "Module.symvers {} does not exist; pass the kernel's Module.symvers with --symvers",
            options.symvers.display()
        )));
    }
    if options.patches.is_empty() {
        return Err(BuildError::Input(
            "no patch given; pass one or more patch files".to_string(),
        ));
    }
    Ok(())
}

/// The files the patches touch, relative to the tree.
fn touched_files(options: &BuildOptions) -> Result<Vec<PathBuf>, BuildError> {
    let mut touched = Vec::new();
    for patch in &options.patches {
        let text = read_file(patch, "patch", "pass an existing patch file")?;
        let text = String::from_utf8_lossy(&text);
        touched.extend(units::touched_files(&patch.display().to_string(), &text)?);
    }
    Ok(touched)
}

/// Whether `build` is a Kbuild output directory whose `.cmd` files list dependencies.
fn has_cmd_files(build: &Path) -> bool {
    build.join(".vmlinux.cmd").is_file()
}

/// The objects to build for the touched files: a `.c` is one object, a header every object
/// whose dependency list in `reference` (a built tree of the original source) names it.
fn objects_to_build(
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
            return Err(TargetError::UnusedHeader {
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

/// The cache directory for this (source, config, compiler, make variables).
fn cache_key(options: &BuildOptions) -> Result<String, BuildError> {
    let source = fs::canonicalize(&options.sourcedir).map_err(|e| {
        BuildError::Input(format!(
            "cannot resolve {}: {e}",
            options.sourcedir.display()
        ))
    })?;
    let config = read_file(&options.config, "kernel config", "pass --config")?;
    let compiler = kbuild::compiler_version()?;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [
        source.to_string_lossy().as_bytes(),
        &config,
        compiler.as_bytes(),
        options.make_vars.join("\n").as_bytes(),
    ] {
        for &byte in part.iter().chain(std::iter::once(&0u8)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    Ok(format!("{hash:016x}"))
}

/// Builds a livepatch module; see the module documentation for the phases.
pub fn build(options: &BuildOptions) -> Result<BuildReport, BuildError> {
    // make runs in other directories (`-C`, `O=`, `M=`): every path must be absolute.
    let absolute = |path: &Path| std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let options = &BuildOptions {
        sourcedir: absolute(&options.sourcedir),
        config: absolute(&options.config),
        symbols: match &options.symbols {
            SymbolSource::Vmlinux(path) => SymbolSource::Vmlinux(absolute(path)),
            SymbolSource::SystemMap(path) => SymbolSource::SystemMap(absolute(path)),
        },
        modules: options.modules.as_deref().map(absolute),
        symvers: absolute(&options.symvers),
        output: absolute(&options.output),
        patches: options.patches.iter().map(|p| absolute(p)).collect(),
        cache: absolute(&options.cache),
        ..options.clone()
    };
    let mut timer = Timer::new();
    check_inputs(options)?;
    let touched_files = touched_files(options)?;
    let key = cache_key(options)?;
    let cache = options.cache.join(&key);
    // One build at a time per cache entry: two builds would patch the same tree.
    fs::create_dir_all(&cache)
        .map_err(|e| BuildError::Input(format!("cannot create cache {}: {e}", cache.display())))?;
    let lock_path = cache.join("lock");
    let lock = fs::File::create(&lock_path)
        .and_then(|file| file.lock().map(|()| file))
        .map_err(|e| BuildError::Input(format!("cannot lock {}: {e}", lock_path.display())))?;
    let log = cache.join("build.log");
    let _ = fs::remove_file(&log);
    timer.lap("inputs");

    let patched_source = cache.join("patched-source");
    trees::patch_tree(
        &options.sourcedir,
        &patched_source,
        &options.patches,
        &touched_files,
        &log,
    )?;
    timer.lap("patched tree");

    let release = kernel_release(options)?;
    let jobs_each = (options.jobs / 2).max(1);
    let original_build = KernelBuild {
        source: options.sourcedir.clone(),
        output: cache.join("original"),
        jobs: jobs_each,
        log: cache.join("original.log"),
        release: release.clone(),
        make_vars: options.make_vars.clone(),
    };
    let patched_build = KernelBuild {
        source: patched_source.clone(),
        output: cache.join("patched"),
        jobs: jobs_each,
        log: cache.join("patched.log"),
        release,
        make_vars: options.make_vars.clone(),
    };
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
        original_build.prepare(&options.config)?;
        if !has_cmd_files(&original_build.output) {
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
        }
        original_build.output.clone()
    };
    let objects = objects_to_build(options, &touched_files, &reference)?;
    let include_flag = format!("-I{}", write_headers(&cache)?.display());
    let (original_result, patched_result) = std::thread::scope(|scope| {
        let original = scope.spawn(|| {
            original_build.prepare(&options.config)?;
            original_build.build_objects("building original objects", &objects, &include_flag)
        });
        let patched = scope.spawn(|| {
            patched_build.prepare(&options.config)?;
            patched_build.build_objects("building patched objects", &objects, &include_flag)
        });
        (original.join(), patched.join())
    });
    let thread_error = || BuildError::Module("a build thread panicked".to_string());
    original_result.map_err(|_| thread_error())??;
    patched_result.map_err(|_| thread_error())??;
    if let Err(error) = check_config_kept(&options.config, &original_build.output.join(".config")) {
        // The next run must configure again, once the missing tool is there.
        for build in [&original_build, &patched_build] {
            let _ = fs::remove_file(build.output.join(".kpatch-prepared"));
        }
        return Err(error);
    }
    timer.lap("compile");

    // Read the object pairs and their targets.
    let mut inputs = Vec::new();
    for object in &objects {
        let orig_name = format!("{} (original)", object.display());
        let cmd =
            fs::read_to_string(units::cmd_file(&original_build.output, object)).unwrap_or_default();
        let target = units::attribute(&cmd);
        let orig = read_file(
            &original_build.output.join(object),
            "object",
            "see the build log",
        )?;
        let patched = read_file(
            &patched_build.output.join(object),
            "object",
            "see the build log",
        )?;
        inputs.push((
            object.display().to_string(),
            orig_name,
            target,
            orig,
            patched,
        ));
    }
    let pairs: Vec<Pair<'_>> = inputs
        .iter()
        .map(|(name, orig_name, target, orig, patched)| Pair {
            name,
            orig_name,
            orig,
            patched,
            target: target.klp_name(),
        })
        .collect();
    let results = diff::diff_all(&pairs);
    timer.lap("diff");

    let symvers = read_file(&options.symvers, "Module.symvers", "pass --symvers")?;
    let exports = Exports::parse(&String::from_utf8_lossy(&symvers))?;
    let mut refusals = Vec::new();
    let mut diffed = Vec::new();
    for (result, (name, _, target, orig, _)) in results.into_iter().zip(&inputs) {
        let output = result.map_err(|e| BuildError::Diff(e.to_string()))?;
        match output.report.outcome {
            Outcome::Unpatchable => refusals.extend(output.report.refusals.iter().cloned()),
            Outcome::NoChange => {}
            Outcome::Changed => refusals.extend(unreachable_keys(&output.report, &exports)),
        }
        diffed.push((name.clone(), target.clone(), orig, output));
    }
    if !refusals.is_empty() {
        return Err(BuildError::Unpatchable { refusals });
    }
    if diffed
        .iter()
        .all(|(_, _, _, output)| output.object.is_none())
    {
        let mut why: Vec<String> = diffed
            .iter()
            .flat_map(|(name, _, _, output)| {
                output
                    .report
                    .left_out
                    .iter()
                    .map(move |reason| format!("{name}: {reason}"))
            })
            .collect();
        if why.is_empty() {
            why = objects.iter().map(|o| o.display().to_string()).collect();
        }
        return Err(BuildError::NoChange {
            objects: why.join("; "),
        });
    }

    // Resolve every reference and replaced function against the target's symbols.
    let vmlinux_symbols = match &options.symbols {
        SymbolSource::Vmlinux(path) => {
            let vmlinux = read_file(path, "vmlinux", "pass --vmlinux")?;
            TargetSymbols::from_elf(Target::Vmlinux, &vmlinux)?
        }
        SymbolSource::SystemMap(path) => {
            let map = read_file(path, "System.map", "pass --system-map")?;
            TargetSymbols::from_system_map(&String::from_utf8_lossy(&map))?
        }
    };
    let reference_build = options
        .modules
        .as_deref()
        .unwrap_or(options.symbols.reference_build());
    let mut module_symbols: BTreeMap<String, TargetSymbols> = BTreeMap::new();
    let mut module_depends: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut import_namespaces: std::collections::BTreeSet<String> = Default::default();
    // Globals that one unit's output defines for another's to use (a new function the patch
    // adds in one file and calls from another): the module's own link resolves them.
    let mut defined_by_patch: std::collections::BTreeSet<String> = Default::default();
    for (name, _, orig_bytes, output) in &diffed {
        if let Some(bytes) = &output.object {
            let defined_globals = |object: &Object| -> std::collections::BTreeSet<String> {
                object
                    .symbols
                    .iter()
                    .filter(|s| s.binding != Binding::Local && s.section().is_some())
                    .map(|s| s.name.clone())
                    .collect()
            };
            let parse = |bytes: &[u8]| {
                Object::parse(name, bytes).map_err(|e| BuildError::Diff(e.to_string()))
            };
            let before = defined_globals(&parse(orig_bytes)?);
            defined_by_patch.extend(
                defined_globals(&parse(bytes)?)
                    .into_iter()
                    .filter(|symbol| !before.contains(symbol)),
            );
        }
    }
    let mut refusals = Vec::new();

    let module_dir = cache.join("module");
    let _ = fs::remove_dir_all(&module_dir);
    fs::create_dir_all(&module_dir)
        .map_err(|e| BuildError::Module(format!("cannot create {}: {e}", module_dir.display())))?;
    let mut klp_objects: BTreeMap<Target, KlpObject> = BTreeMap::new();
    let mut linked_inputs = Vec::new();
    let mut summaries = Vec::new();
    for (index, (name, target, orig_bytes, output)) in diffed.into_iter().enumerate() {
        let Some(object_bytes) = output.object.clone() else {
            summaries.push(ObjectSummary {
                object: name,
                target: target.klp_name().to_string(),
                diff: output.report,
            });
            continue;
        };
        let symbols = match &target {
            Target::Vmlinux => &vmlinux_symbols,
            Target::Module(module_name) => {
                if !module_symbols.contains_key(module_name) {
                    let ko = find_module_file(reference_build, module_name).ok_or_else(|| {
                        BuildError::Input(format!(
                            "cannot find {module_name}.ko under {}: the module's symbols are \
                             needed to patch it; build the modules of the original tree there, \
                             or pass the directory of the kernel's (decompressed) modules with \
                             --modules",
                            reference_build.display()
                        ))
                    })?;
                    let data = read_file(&ko, "module", "build the original modules")?;
                    module_depends.insert(module_name.clone(), resolve::module_depends(&data));
                    module_symbols.insert(
                        module_name.clone(),
                        TargetSymbols::from_elf(target.clone(), &data)?,
                    );
                }
                &module_symbols[module_name]
            }
        };
        let original =
            Object::parse(&name, orig_bytes).map_err(|e| BuildError::Diff(e.to_string()))?;
        let locals = resolve::unit_locals(&original);
        // Every function and object the unit defines: a symbol map's neighbours are
        // compared with these.
        let defined = resolve::unit_defined(&original);
        let file = Path::new(&name)
            .with_extension("c")
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let block = if locals.is_empty() {
            None
        } else {
            Some(symbols.find_block(&Unit {
                file: &file,
                locals: &locals,
                defined: &defined,
            })?)
        };

        let mut klp_names = BTreeMap::new();
        for reference in &output.report.references {
            let local = reference.binding == Some(Binding::Local);
            let facts = ReferenceFacts {
                local,
                exporter: exports.exporter_to_livepatch(&reference.name),
                global_of_target: symbols.has_global(&reference.name),
                defined_by_patch: !local && defined_by_patch.contains(reference.name.as_str()),
            };
            let Reach::Livepatch {
                owner,
                section_object,
            } = resolve::reach(&target, facts)
            else {
                if let Some(namespace) = exports.namespace(&reference.name) {
                    import_namespaces.insert(namespace.to_string());
                }
                continue;
            };
            let sympos = if owner == target.klp_name() {
                symbols.sympos(&reference.name, if local { block.as_ref() } else { None })?
            } else if owner == "vmlinux" {
                vmlinux_symbols.sympos(&reference.name, None)?
            } else {
                // Another module's export: a global, unique in the module that exports it.
                // The relocation is applied when the patched module comes, so that module
                // must depend on the exporter, or it could come without it.
                let depends = module_depends.get(target.klp_name());
                if !depends.is_some_and(|d| d.contains(&owner)) {
                    refusals.push(Refusal {
                        object: name.clone(),
                        section: String::new(),
                        symbol: reference.name.clone(),
                        reason: format!(
                            "the patched code calls {} exported by module {owner}, which {} \
                             does not depend on; the livepatch relocation to it could not be \
                             resolved when {} loads without {owner}",
                            reference.name,
                            target.klp_name(),
                            target.klp_name()
                        ),
                    });
                    continue;
                }
                resolve::Sympos(0)
            };
            klp_names.insert(
                reference.name.clone(),
                klp_records::record_name(
                    &section_object,
                    &klp_symbol_name(&owner, &reference.name, sympos.0),
                ),
            );
        }

        let prepared = prepare::prepare_object(&name, &object_bytes, &output.report)
            .map_err(|e| BuildError::Module(e.to_string()))?;
        let (linkable, _) = klp_records::convert_references(&name, &prepared.object, &klp_names)
            .map_err(|e| BuildError::Module(e.to_string()))?;
        let path = module_dir.join(format!("patched-{index}.o"));
        fs::write(&path, &linkable)
            .map_err(|e| BuildError::Module(format!("cannot write {}: {e}", path.display())))?;
        linked_inputs.push(path);

        let klp_object = klp_objects
            .entry(target.clone())
            .or_insert_with(|| KlpObject {
                target: target.clone(),
                functions: Vec::new(),
                callbacks: Default::default(),
            });
        for (old_name, alias) in prepared.functions {
            let local = original
                .symbols
                .iter()
                .any(|s| s.name == old_name && s.binding == Binding::Local);
            let sympos = symbols.sympos(&old_name, if local { block.as_ref() } else { None })?;
            klp_object.functions.push(KlpFunction {
                old_name,
                old_sympos: sympos.0,
                new_symbol: alias,
            });
        }
        klp_object.callbacks.merge(prepared.callbacks);
        summaries.push(ObjectSummary {
            object: name,
            target: target.klp_name().to_string(),
            diff: output.report,
        });
    }
    if !refusals.is_empty() {
        return Err(BuildError::Unpatchable { refusals });
    }
    // New functions that no changed function calls never run: a module of them alone would
    // patch nothing (and the kernel would load it for no effect).
    if klp_objects
        .values()
        .all(|object| object.functions.is_empty() && object.callbacks.is_empty())
    {
        let new: Vec<String> = summaries
            .iter()
            .flat_map(|summary| {
                summary
                    .diff
                    .functions
                    .iter()
                    .map(move |f| format!("{}: {}", summary.object, f.name))
            })
            .collect();
        return Err(BuildError::NoChange {
            objects: format!("only new functions that nothing calls ({})", new.join(", ")),
        });
    }
    timer.lap("resolve");

    let module_name = format!("livepatch-{}", options.name);
    let livepatch = LivepatchModule {
        name: module_name.clone(),
        patches: options
            .patches
            .iter()
            .map(|p| {
                p.file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect(),
        replace: options.replace,
        objects: klp_objects.into_values().collect(),
        import_namespaces: import_namespaces.into_iter().collect(),
    };
    let source =
        module::render_source(&livepatch).map_err(|e| BuildError::Module(e.to_string()))?;
    // External modules resolve exported symbols from the build directory's Module.symvers.
    let symvers_copy = original_build.output.join("Module.symvers");
    fs::write(&symvers_copy, &symvers)
        .map_err(|e| BuildError::Module(format!("cannot write {}: {e}", symvers_copy.display())))?;
    let ko = link_module(
        &original_build,
        &module_dir,
        &module_name,
        &source,
        &linked_inputs,
    )?;
    timer.lap("link");

    let info = serde_json::to_vec(&livepatch)
        .map_err(|e| BuildError::Module(format!("cannot describe the module: {e}")))?;
    let (rewritten, post_link_summary) = post_link::rewrite_module(&module_name, &ko, Some(&info))
        .map_err(|e| BuildError::Module(e.to_string()))?;
    fs::create_dir_all(&options.output).map_err(|e| {
        BuildError::Module(format!("cannot create {}: {e}", options.output.display()))
    })?;
    let module_path = options.output.join(format!("{module_name}.ko"));
    fs::write(&module_path, &rewritten)
        .map_err(|e| BuildError::Module(format!("cannot write {}: {e}", module_path.display())))?;
    timer.lap("post-link");

    drop(lock);
    Ok(BuildReport {
        outcome: "built",
        module: module_path,
        kernel_name: livepatch.kernel_name(),
        objects: summaries,
        klp_relocation_sections: post_link_summary.sections,
        timings: timer.phases,
    })
}

/// The jump labels of a module klp object that the kernel could not read: the module loader
/// reads the livepatch module's `__jump_table` while it loads, and a key that only a
/// livepatch relocation reaches is resolved later, when the target module comes (see
/// `kpatch_diff::include`). Only a key exported by vmlinux, reached through a normal
/// relocation, is there in time.
pub fn unreachable_keys(report: &Report, exports: &Exports) -> Vec<Refusal> {
    report
        .module_keys
        .iter()
        .filter(|use_| {
            let local = report
                .references
                .iter()
                .any(|r| r.name == use_.key && r.binding == Some(Binding::Local));
            local || exports.exporter(&use_.key) != Some("vmlinux")
        })
        .map(|use_| Refusal {
            object: report.object.clone(),
            section: use_.section.clone(),
            symbol: use_.key.clone(),
            reason: format!(
                "the jump label at {}+{:#x} uses static key {} of {}, which only a livepatch \
                 relocation reaches, and the kernel reads {} when the livepatch module loads, \
                 before that relocation is applied; test the key with static_key_enabled() in \
                 the patch instead of static_branch_*()",
                use_.function, use_.offset, use_.key, report.target, use_.section
            ),
        })
        .collect()
}

/// Refuses a build whose configuration lost options on the way through `olddefconfig`: an
/// option whose dependency this machine cannot meet (`DEBUG_INFO_BTF` without pahole) is
/// dropped silently, and changes the layout of `struct module` and others, so the running
/// kernel would refuse the module or misread it.
fn check_config_kept(given: &Path, used: &Path) -> Result<(), BuildError> {
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
    Err(BuildError::Input(format!(
        "the kernel config cannot be reproduced on this machine: olddefconfig dropped {}; \
         install what they depend on (CONFIG_DEBUG_INFO_BTF needs pahole from the dwarves \
         package, CONFIG_RUST needs rustc and bindgen) or the module will not match the \
         running kernel",
        dropped.join(", ")
    )))
}

/// The release string Kbuild builds with: `--kernel-release`, else the
/// `include/config/kernel.release` of the headers directory `--symvers` lies in. It must
/// start with the source tree's version, or the module would be built for another kernel.
fn kernel_release(options: &BuildOptions) -> Result<Option<String>, BuildError> {
    let release = match &options.kernel_release {
        Some(release) => Some(release.clone()),
        None => options
            .symvers
            .parent()
            .map(|headers| headers.join("include/config/kernel.release"))
            .and_then(|path| fs::read_to_string(path).ok())
            .map(|text| text.trim().to_string())
            .filter(|release| !release.is_empty()),
    };
    let Some(release) = release else {
        return Ok(None);
    };
    let makefile = read_file(
        &options.sourcedir.join("Makefile"),
        "kernel Makefile",
        "pass a kernel source tree with --sourcedir",
    )?;
    let makefile = String::from_utf8_lossy(&makefile);
    let field = |key: &str| {
        makefile
            .lines()
            .find_map(|line| {
                line.strip_prefix(key)?
                    .trim()
                    .strip_prefix('=')
                    .map(str::trim)
            })
            .unwrap_or("")
            .to_string()
    };
    let version = format!(
        "{}.{}.{}",
        field("VERSION"),
        field("PATCHLEVEL"),
        field("SUBLEVEL")
    );
    let after = release.strip_prefix(&version);
    if after.is_none_or(|rest| rest.starts_with(|c: char| c.is_ascii_digit())) {
        return Err(BuildError::Input(format!(
            "kernel release {release} is not of the source tree's version {version}: pass the \
             source the running kernel was built from, or its release with --kernel-release"
        )));
    }
    if release.chars().any(|c| c.is_whitespace() || c == '\'') {
        return Err(BuildError::Input(format!(
            "kernel release {release:?} has white space or quotes; pass `uname -r` of the \
             running kernel with --kernel-release"
        )));
    }
    Ok(Some(release))
}

/// Writes the patch-author headers where patched sources can include them.
fn write_headers(cache: &Path) -> Result<PathBuf, BuildError> {
    let include = cache.join("include");
    let write = |name: &str, text: &str| {
        let path = include.join(name);
        path.parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|_| fs::write(&path, text))
            .map_err(|e| BuildError::Module(format!("cannot write {}: {e}", path.display())))
    };
    write("kpatch-macros.h", module::KPATCH_MACROS_H)?;
    write("kpatch-syscall.h", module::KPATCH_SYSCALL_H)?;
    write("linux/livepatch_helpers.h", module::LIVEPATCH_HELPERS_H)?;
    Ok(include)
}

/// The `.ko` of module `name` in a Kbuild output tree (file names may use `-` for `_`).
fn find_module_file(build: &Path, name: &str) -> Option<PathBuf> {
    let mut stack = vec![build.to_path_buf()];
    while let Some(directory) = stack.pop() {
        for entry in fs::read_dir(&directory).ok()?.flatten() {
            let path = entry.path();
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(path);
            } else if path
                .file_name()
                .and_then(|f| f.to_str())
                .and_then(|f| f.strip_suffix(".ko"))
                .is_some_and(|stem| stem.replace('-', "_") == name)
            {
                return Some(path);
            }
        }
    }
    None
}

/// Compiles the generated source, links it with the prepared diff objects into one object,
/// and lets Kbuild make the module from that object.
///
/// The module is built from one prebuilt object rather than as a composite of several,
/// because Kbuild runs objtool over composite modules when the kernel has IBT, and objtool
/// would meet the livepatch references that only exist as records at that point.
fn link_module(
    build: &KernelBuild,
    module_dir: &Path,
    module_name: &str,
    source: &str,
    patched_objects: &[PathBuf],
) -> Result<Vec<u8>, BuildError> {
    let write = |path: &Path, text: &str| {
        fs::write(path, text)
            .map_err(|e| BuildError::Module(format!("cannot write {}: {e}", path.display())))
    };
    let main_dir = module_dir.join("main");
    let link_dir = module_dir.join("link");
    for dir in [&main_dir, &link_dir] {
        fs::create_dir_all(dir)
            .map_err(|e| BuildError::Module(format!("cannot create {}: {e}", dir.display())))?;
    }
    write(&main_dir.join("livepatch-main.c"), source)?;
    write(&main_dir.join("Kbuild"), "obj-m := livepatch-main.o\n")?;
    build.build_external(
        "compiling the livepatch module source",
        &main_dir,
        &["livepatch-main.o"],
        "",
    )?;
    let mut inputs = vec![main_dir.join("livepatch-main.o")];
    inputs.extend(patched_objects.iter().cloned());
    let object = link_dir.join(format!("{module_name}.o"));
    kbuild::link_relocatable(&object, &inputs, &build.log)?;
    write(
        &link_dir.join("Kbuild"),
        &module::KBUILD_TEMPLATE.replace("@MODULE_NAME@", module_name),
    )?;
    // modpost reads an object's symbol CRCs from its `.cmd` file (with CONFIG_MODVERSIONS);
    // the prebuilt object exports nothing, so an empty one says so.
    write(&link_dir.join(format!(".{module_name}.o.cmd")), "")?;
    build.build_external("building the livepatch module", &link_dir, &["modules"], "")?;
    read_file(
        &link_dir.join(format!("{module_name}.ko")),
        "module",
        "see the build log",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kpatch_diff::report::{ModuleKey, Reference, Resolution};

    /// A module object's report with one kept jump label per key, each key referenced with
    /// the given binding in the original object.
    fn report_with(keys: &[(&str, Option<Binding>)]) -> Report {
        Report {
            object: "drivers/demo/demo.o".to_string(),
            target: "demo".to_string(),
            outcome: Outcome::Changed,
            functions: Vec::new(),
            line_only: Vec::new(),
            left_out: Vec::new(),
            data: Vec::new(),
            special_entries: BTreeMap::new(),
            dropped_entries: BTreeMap::new(),
            module_keys: keys
                .iter()
                .map(|(key, _)| ModuleKey {
                    section: "__jump_table".to_string(),
                    function: "demo_handler".to_string(),
                    offset: 0x1c,
                    key: key.to_string(),
                })
                .collect(),
            references: keys
                .iter()
                .map(|(key, binding)| Reference {
                    name: key.to_string(),
                    binding: *binding,
                    resolution: Resolution::UnlessExported,
                })
                .collect(),
            refusals: Vec::new(),
        }
    }

    #[test]
    fn a_module_jump_label_is_refused_unless_vmlinux_exports_its_key() {
        let exports = Exports::parse(
            "0x1\tvm_key\tvmlinux\tEXPORT_SYMBOL\t\n\
             0x2\tother_key\tdrivers/other/other\tEXPORT_SYMBOL_GPL\t\n\
             0x3\tlocal_key\tvmlinux\tEXPORT_SYMBOL\t\n",
        )
        .expect("symvers parses");
        let check = |key: &str, binding: Option<Binding>, refused: bool| {
            let refusals = unreachable_keys(&report_with(&[(key, binding)]), &exports);
            assert_eq!(refusals.len(), usize::from(refused), "{key}: {refusals:?}");
            if refused {
                let text = refusals[0].to_string();
                assert!(
                    text.starts_with("cannot patch drivers/demo/demo.o: ")
                        && text.contains(&format!("static key {key} of demo"))
                        && text.contains("demo_handler+0x1c")
                        && text.contains("static_key_enabled()"),
                    "{text}"
                );
                assert_eq!(refusals[0].symbol, key);
                assert_eq!(refusals[0].section, "__jump_table");
            }
        };
        check("vm_key", Some(Binding::Global), false);
        check("vm_key", None, false);
        check("other_key", None, true);
        check("unexported_key", None, true);
        check("unexported_key", Some(Binding::Global), true);
        // A key static to the unit is the module's own, whatever another binary exports.
        check("local_key", Some(Binding::Local), true);
    }
}
