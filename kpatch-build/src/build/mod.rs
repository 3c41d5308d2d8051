//! The build pipeline (`kpatch-rs build`): from patch files to a livepatch module.
//!
//! [`build`] is the whole pipeline, one phase per call, each phase in its own file:
//! `inputs` (arguments, touched files, cache entry), `trees` (the patched tree), `compile`
//! (the touched units, twice, through `kbuild`, the one place that runs programs),
//! `diff_units` (the object diff per unit and the verdict over all), `references` (how each
//! reference reaches its symbol, by the rule of `resolve`), `link` (linkable objects through
//! `replacements` and `klp_records`, the module source from `module`, Kbuild's link) and
//! `post_link` (the livepatch relocations), then `sign` (the kernel's `sign-file`, when asked
//! for). Every phase's time goes into the report.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kpatch_diff::compare::Refusal;
use kpatch_diff::report::Report;

use inputs::InputError;
use kbuild::CommandError;
use klp_records::RecordError;
use kpatch_diff::elf::ElfError;
use kpatch_diff::DiffError;
use module::{KlpObject, LivepatchModule, ModuleError};
use patches::PatchError;
use post_link::PostLinkError;
use replacements::ReplacementsError;
use resolve::{Exports, ResolveError};
use sign::{SignError, Signature, SigningKey};
use targets::{SkippedUnit, TargetError};

use trees::TreeError;
use units::UnitsError;

pub mod build_root;
pub mod compile;
pub mod diff_units;
pub mod files;
pub mod inputs;
pub mod kbuild;
pub mod klp_records;
pub mod link;
pub mod module;
pub mod oot;
pub mod patches;
pub mod post_link;
pub mod probe;
pub mod progress;
pub mod provenance;
pub mod references;
pub mod replacements;
pub mod resolve;
pub mod sign;
pub mod targets;
pub mod trees;
pub mod units;
pub mod version;

pub use references::unreachable_keys;

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
    /// Build even when the compiler is not the one the kernel was built with.
    pub skip_compiler_check: bool,
    /// Sign the module with this key, with the hash of the kernel config
    /// (`CONFIG_MODULE_SIG_HASH`); None writes it unsigned.
    pub signing_key: Option<SigningKey>,
    /// Types whose layout change the user accepts (`--allow-layout-change`): reported, not
    /// refused.
    pub allowed_layout_changes: Vec<String>,
    /// A root file system of the kernel's release that every compile and link runs in
    /// (`--chroot`, `build_root.rs`); None builds with this machine's toolchain.
    pub chroot: Option<PathBuf>,
    /// The klp objects to build (`--target`: `vmlinux` or module names); empty builds every
    /// klp object the patches touch. The units of the others are reported as skipped.
    pub targets: Vec<String>,
    /// An out-of-tree module to patch instead of the kernel tree (`--oot-module`): the
    /// patches apply to its source directory.
    pub oot_module: Option<oot::OotModule>,
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

/// A file operation that failed: what was done, to which path, and why.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {}: {source}{}", path.display(), files::storage_full_hint(source))]
pub struct IoError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// The `map_err` for an I/O call: `fs::write(&path, data).map_err(io_error("write", &path))`.
pub fn io_error<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> IoError + 'a {
    move |source| IoError {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Why a build stopped: one variant per phase's error type, and the two outcomes that are
/// not errors to the user (a refusal, no change).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Units(#[from] UnitsError),
    #[error(transparent)]
    Patch(#[from] PatchError),
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Diff(#[from] DiffError),
    #[error(transparent)]
    Elf(#[from] ElfError),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Replacements(#[from] ReplacementsError),
    #[error(transparent)]
    Records(#[from] RecordError),
    #[error(transparent)]
    Module(#[from] ModuleError),
    #[error(transparent)]
    PostLink(#[from] PostLinkError),
    #[error(transparent)]
    Sign(#[from] SignError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Oot(oot::OotError),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(transparent)]
    Root(#[from] build_root::RootError),
    #[error("cannot describe the module: {0}")]
    Describe(#[from] serde_json::Error),
    /// A broken promise inside kpatch-rs, not a problem with the inputs.
    #[error("internal error: {0}; please report it")]
    Internal(String),
    #[error("{}", .refusals.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Unpatchable { refusals: Vec<Refusal> },
    #[error("the patches change no code: {objects}")]
    NoChange { objects: String },
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
    /// With the provenance of the build (schema and tool versions, input digests) and the
    /// time of each phase that ran.
    pub fn write_json(
        &self,
        out: &mut dyn std::io::Write,
        provenance: &provenance::Provenance,
        timings: &[(String, f64)],
    ) -> std::io::Result<()> {
        let refusals: &[Refusal] = match self {
            BuildError::Unpatchable { refusals } => refusals,
            _ => &[],
        };
        let mut document = serde_json::json!({
            "outcome": self.outcome(),
            "exit_code": self.exit_code(),
            "message": self.to_string(),
            "refusals": refusals,
            "timings": timings,
        });
        if let (Some(fields), Ok(serde_json::Value::Object(more))) =
            (document.as_object_mut(), serde_json::to_value(provenance))
        {
            fields.extend(more);
        }
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
    pub klp_object: String,
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
    /// The units the patches touch that `--target` left out of the module.
    pub skipped_by_target: Vec<SkippedUnit>,
    /// The livepatch relocation sections written, with their entry counts.
    pub klp_relocation_sections: Vec<(String, usize)>,
    /// How the module is signed; None (`null`) for an unsigned module.
    pub signature: Option<Signature>,
    /// Seconds per phase, in order.
    pub timings: Vec<(String, f64)>,
    /// What the user should know about how the kernel will treat the module.
    pub warnings: Vec<String>,
    /// The most memory kpatch-rs itself held at once (`VmHWM`), in KiB: the programs it runs
    /// (make, the compiler) are not counted. None where `/proc` does not say.
    pub peak_memory_kib: Option<u64>,
    /// Versions, release, vermagic and digests, filled in by the caller that knows the tool
    /// ([`provenance::describe`]).
    #[serde(flatten)]
    pub provenance: Option<provenance::Provenance>,
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
            writeln!(out, "{} ({}):", object.object, object.klp_object)?;
            for function in &object.diff.functions {
                let status = function.status.as_str();
                writeln!(out, "  {status:8} {}", function.name)?;
            }
        }
        for object in &self.objects {
            for change in &object.diff.layout_changes_allowed {
                writeln!(
                    out,
                    "warning: {}: the layout change of {} is allowed by --allow-layout-change, \
                     and objects of it made before the patch will be misread: {}",
                    object.object,
                    change.type_name,
                    change.changes.join("; ")
                )?;
            }
        }
        for (section, count) in &self.klp_relocation_sections {
            writeln!(out, "  livepatch relocations: {section} ({count})")?;
        }
        for warning in &self.warnings {
            writeln!(out, "warning: {warning}")?;
        }
        if let Some(signature) = &self.signature {
            writeln!(out, "  signed: {}", signature.hash)?;
        }
        let total: f64 = self.timings.iter().map(|(_, seconds)| seconds).sum();
        let phases: Vec<String> = self
            .timings
            .iter()
            .map(|(phase, seconds)| format!("{phase} {seconds:.2}s"))
            .collect();
        writeln!(out, "time: {total:.2}s ({})", phases.join(", "))?;
        if let Some(kib) = self.peak_memory_kib {
            writeln!(
                out,
                "peak memory: {:.1} MiB (kpatch-rs itself)",
                kib as f64 / 1024.0
            )?;
        }
        Ok(())
    }
}

/// This process's peak resident memory so far, in KiB (`VmHWM` of `/proc/self/status`):
/// its own, since every program it runs is a process of its own.
pub fn peak_memory_kib() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

/// Times the phases into the caller's list, which keeps them when a phase fails, and shows
/// them as they finish.
struct Timer<'a> {
    phases: &'a mut Vec<(String, f64)>,
    last: Instant,
    progress: progress::Progress,
}

impl<'a> Timer<'a> {
    fn new(phases: &'a mut Vec<(String, f64)>) -> Timer<'a> {
        phases.clear();
        Timer {
            phases,
            last: Instant::now(),
            progress: progress::Progress::start(),
        }
    }

    fn lap(&mut self, phase: &str) {
        let now = Instant::now();
        let seconds = (now - self.last).as_secs_f64();
        self.phases.push((phase.to_string(), seconds));
        self.progress.finished(phase, seconds);
        self.last = now;
    }
}

/// Builds a livepatch module: the phases, in order.
pub fn build(options: &BuildOptions) -> Result<BuildReport, BuildError> {
    build_timed(options, &mut Vec::new())
}

/// [`build`], with the time of each phase that ran in `timings`, whatever the outcome.
pub fn build_timed(
    options: &BuildOptions,
    timings: &mut Vec<(String, f64)>,
) -> Result<BuildReport, BuildError> {
    let options = &inputs::absolute(options);
    let mut timer = Timer::new(timings);
    let _root = build_root::use_root(root(options)?);
    let inputs = inputs::check(options)?;
    timer.lap("inputs");

    let oot_trees = match &options.oot_module {
        Some(module) => Some(oot::patch_trees(module, options, &inputs)?),
        None => {
            trees::patch_tree(
                &options.sourcedir,
                &inputs.patched_source(),
                &options.patches,
                &inputs.touched,
                &inputs.log,
            )?;
            None
        }
    };
    timer.lap("patched tree");

    let mut compiled = match &oot_trees {
        Some(trees) => oot::compile(options, &inputs, trees)?,
        None => compile::compile(options, &inputs)?,
    };
    let units = std::mem::take(&mut compiled.units);
    let (units, skipped_by_target) = targets::select(units, &options.targets, |unit| {
        targets::klp_object_of(&compiled.original_objects, unit)
    })?;
    compiled.units = units;
    let mut warnings: Vec<String> = skipped_by_target
        .iter()
        .map(|unit| unit.warning(&options.targets))
        .collect();
    for warning in &warnings {
        eprintln!("kpatch-rs: warning: {warning}");
    }
    timer.lap("compile");

    let diffed = diff_units::diff_units(&compiled, &options.allowed_layout_changes)?;
    timer.lap("diff");

    let symvers = inputs::read_file(&options.symvers, "Module.symvers", "pass --symvers")?;
    let exports = Exports::parse(&String::from_utf8_lossy(&symvers))?;
    diff_units::judge(&diffed, &compiled.units)?;
    let resolved = references::resolve_units(options, diffed, &exports)?;
    let import_namespaces = resolved.import_namespaces.clone();
    let module_dir = inputs.cache.join("module");
    let linkable = link::make_linkable(resolved, &module_dir)?;
    timer.lap("resolve");

    let livepatch = livepatch_module(options, linkable.klp_objects, import_namespaces);
    let ko = link::link(
        &compiled,
        &livepatch,
        &symvers,
        &module_dir,
        &linkable.objects,
    )?;
    timer.lap("link");

    let info = serde_json::to_vec(&livepatch)?;
    if let Some(trees) = &oot_trees {
        oot::check_vermagic(trees, &ko)?;
    }
    let (rewritten, post_link) = post_link::rewrite_module(&livepatch.name, &ko, Some(&info))?;
    timer.lap("post-link");

    let (bytes, signature) = sign::sign(options, &inputs, &compiled.original, rewritten)?;
    if signature.is_some() {
        timer.lap("sign");
    }
    let module = write_module(options, &livepatch, &bytes)?;

    drop(inputs);
    warnings.extend(reload_warnings(&options.sourcedir, &livepatch.objects));
    Ok(BuildReport {
        outcome: "built",
        module,
        kernel_name: livepatch.kernel_name(),
        objects: linkable.summaries,
        skipped_by_target,
        klp_relocation_sections: post_link.sections,
        signature,
        timings: timer.phases.clone(),
        warnings,
        peak_memory_kib: peak_memory_kib(),
        provenance: None,
    })
}

/// The build root of `--chroot`, with what the build's commands read and write bound into
/// it: the source tree (read-only), the cache, and the signing key's and certificate's
/// directories (read-only).
fn root(options: &BuildOptions) -> Result<Option<build_root::BuildRoot>, BuildError> {
    let Some(dir) = &options.chroot else {
        return Ok(None);
    };
    fs::create_dir_all(&options.cache).map_err(io_error("create the cache", &options.cache))?;
    let mut binds = vec![
        build_root::Bind {
            path: options.sourcedir.clone(),
            read_only: true,
        },
        build_root::Bind {
            path: options.cache.clone(),
            read_only: false,
        },
    ];
    if let Some(signing_key) = &options.signing_key {
        let mut files = vec![signing_key.cert.clone()];
        if !signing_key.key_is_pkcs11_uri() {
            files.push(PathBuf::from(&signing_key.key));
        }
        for file in files {
            if let Some(parent) = file.parent().filter(|parent| parent.is_dir()) {
                binds.push(build_root::Bind {
                    path: parent.to_path_buf(),
                    read_only: true,
                });
            }
        }
    }
    let root = build_root::BuildRoot::new(dir, &binds)?;
    kbuild::check_root(&root)?;
    Ok(Some(root))
}

/// A kernel whose livepatch core cannot clear a module's livepatch relocations when the
/// module goes (no `clear_relocate_add()` in `include/linux/moduleloader.h`; Linux 6.1 has
/// none) finds them already written when the module comes again and refuses to load it
/// ("existing value is nonzero"): while the livepatch is loaded, a patched module cannot be
/// reloaded. Read from the kernel's own headers, one warning per module klp object.
fn reload_warnings(source: &Path, objects: &[KlpObject]) -> Vec<String> {
    let header = source.join("include/linux/moduleloader.h");
    let clears = fs::read_to_string(&header).is_ok_and(|text| text.contains("clear_relocate_add"));
    if clears {
        return Vec::new();
    }
    objects
        .iter()
        .filter_map(|object| match &object.name {
            module::KlpObjectName::Module(name) => Some(format!(
                "this kernel cannot apply a livepatch to module {name} a second time (its \
                 {} has no clear_relocate_add()): once {name} is unloaded while the livepatch \
                 is loaded, loading {name} again fails; disable and remove the livepatch \
                 before reloading {name}",
                header.display()
            )),
            module::KlpObjectName::Vmlinux => None,
        })
        .collect()
}

/// What the generated module holds: its name, the patches it came from, whether it
/// replaces earlier livepatches, its klp objects and the namespaces it imports.
fn livepatch_module(
    options: &BuildOptions,
    objects: Vec<KlpObject>,
    import_namespaces: Vec<String>,
) -> LivepatchModule {
    LivepatchModule {
        name: format!("livepatch-{}", options.name),
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
        objects,
        import_namespaces,
    }
}

/// The finished module (rewritten by post-link, signed when asked for) written to the
/// output directory, the only file a build writes there: all or nothing, so that a build
/// killed or out of space never leaves a partial module under the module's name.
fn write_module(
    options: &BuildOptions,
    livepatch: &LivepatchModule,
    bytes: &[u8],
) -> Result<PathBuf, BuildError> {
    fs::create_dir_all(&options.output).map_err(io_error("create", &options.output))?;
    let module_path = options.output.join(format!("{}.ko", livepatch.name));
    files::write_atomically(&module_path, bytes)?;
    Ok(module_path)
}

#[cfg(test)]
mod tests {

    /// A kernel without `clear_relocate_add()` (Linux 6.1) cannot take a patched module a
    /// second time while the livepatch is loaded: one warning per module klp object; none
    /// for vmlinux or on a kernel that clears the relocations.
    #[test]
    fn a_kernel_that_cannot_clear_module_relocations_gets_a_reload_warning() {
        let dir = tempfile::tempdir().expect("temp dir");
        let header = dir.path().join("include/linux/moduleloader.h");
        fs::create_dir_all(dir.path().join("include/linux")).expect("create include/linux");
        let object = |name: module::KlpObjectName| KlpObject {
            name,
            functions: Vec::new(),
            callbacks: Default::default(),
        };
        let objects = [
            object(module::KlpObjectName::Vmlinux),
            object(module::KlpObjectName::Module("kobject_example".to_string())),
        ];
        fs::write(&header, "int apply_relocate_add(Elf_Shdr *sechdrs);\n").expect("header");
        let warnings = reload_warnings(dir.path(), &objects);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("module kobject_example a second time"));
        assert!(reload_warnings(dir.path(), &objects[..1]).is_empty());
        fs::write(&header, "void clear_relocate_add(Elf_Shdr *sechdrs);\n").expect("header");
        assert!(reload_warnings(dir.path(), &objects).is_empty());
    }
    use super::*;
    use kpatch_diff::elf::Binding;
    use kpatch_diff::report::Outcome;
    use kpatch_diff::report::{ModuleKey, Reference, Resolution};
    use module::KlpObjectName;
    use std::collections::BTreeMap;

    /// A module object's report with one kept jump label per key, each key referenced with
    /// the given binding in the original object.
    fn report_with(keys: &[(&str, Option<Binding>)]) -> Report {
        Report {
            object: "drivers/demo/demo.o".to_string(),
            klp_object: "demo".to_string(),
            outcome: Outcome::Changed,
            functions: Vec::new(),
            line_only: Vec::new(),
            left_out: Vec::new(),
            data: Vec::new(),
            special_entries: BTreeMap::new(),
            dropped_entries: BTreeMap::new(),
            layout_checked: true,
            layout_changes_allowed: Vec::new(),
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
    fn the_peak_memory_is_this_process_own_and_grows_with_what_it_touches() {
        let before = peak_memory_kib().expect("VmHWM in /proc/self/status");
        assert!(before > 0);
        let held = vec![1u8; 64 << 20];
        let after = peak_memory_kib().expect("VmHWM");
        assert!(
            after >= before.max(60 << 10),
            "64 MiB touched: {before} KiB then {after} KiB"
        );
        drop(held);
    }

    #[test]
    fn a_module_jump_label_is_refused_when_its_key_comes_with_a_module() {
        let exports = Exports::parse(
            "0x1\tvm_key\tvmlinux\tEXPORT_SYMBOL\t\n\
             0x2\tother_key\tdrivers/other/other\tEXPORT_SYMBOL_GPL\t\n\
             0x3\tlocal_key\tvmlinux\tEXPORT_SYMBOL\t\n",
        )
        .expect("symvers parses");
        let klp_object = KlpObjectName::Module("demo".to_string());
        // `own` is a global of the module itself; everything else it does not define.
        let check = |key: &str, binding: Option<Binding>, refused: Option<&str>| {
            let refusals =
                unreachable_keys(&report_with(&[(key, binding)]), &klp_object, |k, local| {
                    resolve::ReferenceFacts {
                        local,
                        exporter: exports.exporter_to_livepatch(k),
                        global_of_klp_object: k == "own_key",
                        defined_by_patch: false,
                    }
                });
            assert_eq!(
                refusals.len(),
                usize::from(refused.is_some()),
                "{key}: {refusals:?}"
            );
            if let Some(owner) = refused {
                let text = refusals[0].to_string();
                assert!(
                    text.starts_with("cannot patch drivers/demo/demo.o: ")
                        && text.contains(&format!("static key {key} of {owner}"))
                        && text.contains("demo_handler+0x1c")
                        && text.contains("static_key_enabled()"),
                    "{text}"
                );
                assert_eq!(refusals[0].symbol, key);
                assert_eq!(refusals[0].section, "__jump_table");
            }
        };
        // An ordinary relocation, or one in vmlinux's section: applied while the module loads.
        check("vm_key", Some(Binding::Global), None);
        check("vm_key", None, None);
        check("unexported_key", None, None);
        // Applied only when a module comes.
        check("other_key", None, Some("other"));
        check("own_key", Some(Binding::Global), Some("demo"));
        // A key static to the unit is the module's own, whatever another binary exports.
        check("local_key", Some(Binding::Local), Some("demo"));
    }
}
