//! Out-of-tree modules (`--oot-module FILE.ko --oot-module-src DIR`, as kpatch-build has
//! them): the patches apply to the module's source directory, whose units are built as an
//! external module (`make -C <kernel build> M=<dir>`) against kpatch-rs's prepared original
//! kernel build; the klp object is the module `FILE.ko` names, and its symbols come from
//! `FILE.ko`.
//!
//! The user's `DIR` is never written: the original, the patched and the reference builds
//! each run in a copy of it in the cache entry (copied, not linked, since Kbuild rewrites its
//! own files in an `M=` directory in place), brought back to `DIR` before every build.
//!
//! A livepatch is only right for the module that runs when the original build is that
//! module's build, so kpatch-rs refuses (exit 2), saying why, when it cannot be sure: a
//! `FILE.ko` without a symbol table (stripped), one of another kernel release or vermagic
//! than the livepatch gets, a unit of `DIR` that Kbuild builds into another module than
//! `FILE.ko`'s, a function of an original unit that `FILE.ko` does not define (the source
//! is not the one `FILE.ko` was built from), and a function whose code differs from
//! `FILE.ko`'s under the same name. For that last check the touched units are built once
//! more as `FILE.ko`'s were, without the diff's flags (which move every function into its
//! own section, so the assembler cannot resolve or shorten a jump between functions), in the
//! reference copy; each function's bytes, outside the places a relocation fills in, must be
//! those of a function of the same name in `FILE.ko`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use kpatch_diff::compare::Refusal;
use object::{Object, ObjectSymbol, SymbolKind};

use super::compile::{self, Compiled};
use super::inputs::{read_file, Inputs};
use super::kbuild::{KernelBuild, DIFF_KCFLAGS};
use super::module::KlpObjectName;
use super::units::{self, UnitsError};
use super::{io_error, patches, targets, trees, BuildError, BuildOptions};

/// `--oot-module FILE.ko --oot-module-src DIR`.
#[derive(Debug, Clone)]
pub struct OotModule {
    /// The module as it runs (`FILE.ko`, with its symbol table).
    pub ko: PathBuf,
    /// The module's source directory, which the patches apply to; never written.
    pub source: PathBuf,
}

/// Why an out-of-tree module cannot be patched; [`OotError::is_refusal`] tells the
/// refusals (exit 2) from the bad inputs (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum OotError {
    #[error("out-of-tree module {} does not exist; pass the module's .ko with --oot-module", .0.display())]
    NoModule(PathBuf),
    #[error(
        "{} is not a kernel module ({why}); pass the out-of-tree module's .ko with --oot-module",
        path.display()
    )]
    NotAModule { path: PathBuf, why: String },
    #[error(
        "{} is not an out-of-tree module's source directory (no Makefile or Kbuild); pass the \
         directory the module is built from with --oot-module-src",
        .0.display()
    )]
    NoSource(PathBuf),
    #[error(
        "cannot patch out-of-tree module {}: it has no symbol table (stripped), so the \
         functions the livepatch replaces cannot be found in it; pass the unstripped .ko",
        .0.display()
    )]
    Stripped(PathBuf),
    #[error(
        "cannot patch out-of-tree module {}: it was built for {theirs}, and the livepatch \
         would be for {ours}; pass the kernel the module runs on (--vmlinux, --config, \
         --kernel-release) or the module built for this one",
        ko.display()
    )]
    OtherKernel {
        ko: PathBuf,
        theirs: String,
        ours: String,
    },
    #[error(
        "cannot patch out-of-tree module {}: {unit} of {} is built into module {built}, not \
         {name}; pass the source directory of {name} with --oot-module-src",
        ko.display(),
        src.display()
    )]
    OtherModule {
        ko: PathBuf,
        src: PathBuf,
        unit: String,
        built: String,
        name: String,
    },
    #[error(
        "cannot patch out-of-tree module {}: {unit} of {} defines {} that the module does not \
         have, so {} is not the source {} was built from; pass the module's own source",
        ko.display(),
        src.display(),
        missing.join(", "),
        src.display(),
        ko.display()
    )]
    OtherSource {
        ko: PathBuf,
        src: PathBuf,
        unit: String,
        missing: Vec<String>,
    },
    #[error(
        "cannot patch out-of-tree module {}: {unit} of {}, built with this kernel build's \
         compiler and flags, has other code than the module under the same name ({}), so the \
         module was not built from this source or not with this compiler and kernel build; \
         pass the module's own source and the kernel build it was made with",
        ko.display(),
        src.display(),
        differing.join(", ")
    )]
    OtherCode {
        ko: PathBuf,
        src: PathBuf,
        unit: String,
        differing: Vec<String>,
    },
}

impl OotError {
    /// Whether this is a refusal to patch (exit 2) rather than a wrong input (exit 1).
    pub fn is_refusal(&self) -> bool {
        self.refused_module().is_some()
    }

    /// The module a refusal is about.
    fn refused_module(&self) -> Option<&Path> {
        match self {
            OotError::Stripped(ko)
            | OotError::OtherKernel { ko, .. }
            | OotError::OtherModule { ko, .. }
            | OotError::OtherSource { ko, .. }
            | OotError::OtherCode { ko, .. } => Some(ko),
            OotError::NoModule(_) | OotError::NotAModule { .. } | OotError::NoSource(_) => None,
        }
    }
}

/// A refusal is one like the diff's (exit 2, a `refusals` entry in `--json`), about the
/// module; the other errors are the inputs' (exit 1).
impl From<OotError> for BuildError {
    fn from(error: OotError) -> BuildError {
        let Some(ko) = error.refused_module() else {
            return BuildError::Oot(error);
        };
        let object = format!("out-of-tree module {}", ko.display());
        let text = error.to_string();
        let reason = text
            .strip_prefix(&format!("cannot patch {object}: "))
            .unwrap_or(&text)
            .to_string();
        BuildError::Unpatchable {
            refusals: vec![Refusal {
                object,
                section: String::new(),
                symbol: String::new(),
                reason,
            }],
        }
    }
}

/// What the module file says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleFacts {
    /// The module's name as the kernel knows it (`.modinfo` `name=`, else the file's stem
    /// with `-` as `_`).
    pub name: String,
    /// `.modinfo` `vermagic=`.
    pub vermagic: String,
    /// The functions its symbol table defines.
    pub functions: BTreeSet<String>,
    /// Whether its symbol table has file symbols: `strip --strip-unneeded` removes them with
    /// every local function, and keeps only what the module's relocations need.
    pub file_symbols: bool,
}

/// Reads a module's name, vermagic and defined functions.
pub fn module_facts(path: &Path, data: &[u8]) -> Result<ModuleFacts, OotError> {
    let not_a_module = |why: &str| OotError::NotAModule {
        path: path.to_path_buf(),
        why: why.to_string(),
    };
    let file = object::File::parse(data).map_err(|e| not_a_module(&e.to_string()))?;
    if file.kind() != object::ObjectKind::Relocatable {
        return Err(not_a_module("not a relocatable ELF object"));
    }
    let modinfo = |key: &str| modinfo(data, key);
    let vermagic = modinfo("vermagic").ok_or_else(|| not_a_module("no .modinfo vermagic"))?;
    let stem = path
        .file_name()
        .and_then(|name| name.to_str())
        .map(targets::normalize)
        .unwrap_or_default();
    let name = modinfo("name").unwrap_or(stem).replace('-', "_");
    let functions: BTreeSet<String> = file
        .symbols()
        .filter(|symbol| symbol.kind() == SymbolKind::Text && symbol.is_definition())
        .filter_map(|symbol| symbol.name().ok().map(str::to_string))
        .filter(|name| !name.is_empty())
        .collect();
    if functions.is_empty() {
        return Err(OotError::Stripped(path.to_path_buf()));
    }
    let file_symbols = file
        .symbols()
        .any(|symbol| symbol.kind() == SymbolKind::File);
    Ok(ModuleFacts {
        name,
        vermagic,
        functions,
        file_symbols,
    })
}

/// An entry of a module's `.modinfo` (`vermagic`, `name`).
pub fn modinfo(data: &[u8], key: &str) -> Option<String> {
    use object::ObjectSection;
    let file = object::File::parse(data).ok()?;
    let section = file.section_by_name(".modinfo")?.data().ok()?;
    let prefix = format!("{key}=");
    section
        .split(|&byte| byte == 0)
        .find_map(|entry| entry.strip_prefix(prefix.as_bytes()))
        .map(|value| String::from_utf8_lossy(value).trim().to_string())
}

/// The arguments, checked in the inputs phase before any work.
pub fn check_inputs(module: &OotModule) -> Result<(), BuildError> {
    if !module.ko.is_file() {
        return Err(OotError::NoModule(module.ko.clone()).into());
    }
    let has_makefile = ["Makefile", "Kbuild"]
        .iter()
        .any(|file| module.source.join(file).is_file());
    if !has_makefile {
        return Err(OotError::NoSource(module.source.clone()).into());
    }
    Ok(())
}

/// The module and the two copies of its source a build works in.
#[derive(Debug)]
pub struct OotTrees {
    pub module: OotModule,
    pub facts: ModuleFacts,
    /// The copy of the source the original units are built in.
    pub original: PathBuf,
    /// The copy with the patches applied.
    pub patched: PathBuf,
    /// The copy the original units are built in as `FILE.ko`'s were (without the diff's
    /// flags), to compare their code with the module's.
    pub reference: PathBuf,
}

/// Reads the module, checks its release, and makes both copies of its source, the patched
/// one with the patches applied.
pub fn patch_trees(
    module: &OotModule,
    options: &BuildOptions,
    inputs: &Inputs,
) -> Result<OotTrees, BuildError> {
    let data = read_file(&module.ko, "out-of-tree module", "pass --oot-module")?;
    let facts = module_facts(&module.ko, &data)?;
    if let Some(release) = &inputs.release {
        let theirs = facts.vermagic.split_whitespace().next().unwrap_or_default();
        if theirs != release {
            return Err(OotError::OtherKernel {
                ko: module.ko.clone(),
                theirs: format!("kernel release {theirs}"),
                ours: format!("{release} (the release of the kernel files given)"),
            }
            .into());
        }
    }
    let source = fs::canonicalize(&module.source).map_err(io_error("resolve", &module.source))?;
    let mut key = kpatch_support::Fnv1a::new();
    key.write(source.as_os_str().as_encoded_bytes());
    let dir = inputs.cache.join("oot").join(key.hex());
    let original = dir.join("original");
    let patched = dir.join("patched");
    let reference = dir.join("reference");
    trees::sync_copied_tree(&source, &original)?;
    trees::sync_copied_tree(&source, &patched)?;
    trees::sync_copied_tree(&source, &reference)?;
    for patch in &options.patches {
        patches::apply(&patched, patch, &inputs.log)?;
    }
    Ok(OotTrees {
        module: module.clone(),
        facts,
        original,
        patched,
        reference,
    })
}

/// The compile phase for an out-of-tree module: the original kernel build prepared as for
/// in-tree units, the touched units built in both copies as objects of an external module,
/// then the checks that the original build is `FILE.ko`'s.
pub fn compile(
    options: &BuildOptions,
    inputs: &Inputs,
    trees: &OotTrees,
) -> Result<Compiled, BuildError> {
    let kernel = KernelBuild {
        source: options.sourcedir.clone(),
        output: inputs.cache.join("original"),
        jobs: options.jobs.max(1),
        log: inputs.cache.join("original.log"),
        release: inputs.release.clone(),
        make_vars: options.make_vars.clone(),
    };
    let config_text = read_file(&options.config, "kernel config", "pass --config")?;
    let config_text = String::from_utf8_lossy(&config_text).into_owned();
    let mut flags = vec![format!(
        "-I{}",
        compile::write_headers(&inputs.cache)?.display()
    )];
    flags.extend(
        compile::debug_info_flags(&config_text)
            .iter()
            .map(|flag| flag.to_string()),
    );
    let include_flag = flags.join(" ");
    kernel.prepare(&options.config, &include_flag)?;
    compile::check_config_kept(&options.config, &kernel.output.join(".config"))?;
    let kcflags = format!("{DIFF_KCFLAGS} {include_flag}");

    let objects = units_to_build(&kernel, &inputs.touched, &trees.original, &kcflags)?;
    let targets: Vec<String> = std::iter::once("objtool-enabled=y".to_string())
        .chain(objects.iter().map(|o| o.display().to_string()))
        .collect();
    let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
    for (what, copy, kcflags) in [
        (
            "building the out-of-tree module's original objects",
            &trees.original,
            kcflags.as_str(),
        ),
        (
            "building the out-of-tree module's patched objects",
            &trees.patched,
            kcflags.as_str(),
        ),
        (
            "building the out-of-tree module's objects as the module's were, to compare them",
            &trees.reference,
            "",
        ),
    ] {
        for object in &objects {
            let _ = fs::remove_file(copy.join(object));
        }
        kernel.build_external(what, copy, &targets, kcflags)?;
    }
    let kernel_layout = super::probe::kernel_layout(&kernel, &inputs.cache, &config_text)?;
    let module = read_file(&trees.module.ko, "out-of-tree module", "pass --oot-module")?;
    for object in &objects {
        check_unit(trees, object, &module)?;
    }
    Ok(Compiled {
        original: kernel.clone(),
        patched: kernel,
        units: objects,
        kernel_layout,
        original_objects: trees.original.clone(),
        patched_objects: trees.patched.clone(),
    })
}

/// The units for the touched files, relative to the module's directory: a `.c` is one
/// unit; a header, every unit whose Kbuild dependency list names it, read from a full build
/// of the original copy.
fn units_to_build(
    kernel: &KernelBuild,
    touched: &[PathBuf],
    original: &Path,
    kcflags: &str,
) -> Result<Vec<PathBuf>, BuildError> {
    let mut objects = Vec::new();
    let mut built_all = false;
    for file in touched {
        if file.extension().and_then(|e| e.to_str()) == Some("c") {
            objects.push(units::unit_of_c_file(original, file));
            continue;
        }
        if !built_all {
            kernel.build_external(
                "building the out-of-tree module once for header dependencies",
                original,
                &["modules"],
                kcflags,
            )?;
            built_all = true;
        }
        let mut dependents = units::objects_including(original, &original.join(file))?;
        if dependents.is_empty() {
            if let Ok(canonical) = fs::canonicalize(original.join(file)) {
                dependents = units::objects_including(original, &canonical)?;
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

/// A unit of the original copy must be of `FILE.ko`'s module, every function it defines
/// must be one `FILE.ko` defines, and its reference build's functions must have the code of
/// `FILE.ko`'s.
fn check_unit(trees: &OotTrees, object: &Path, module: &[u8]) -> Result<(), BuildError> {
    let unit = object.display().to_string();
    let built = targets::klp_object_of(&trees.original, object);
    if built != KlpObjectName::Module(trees.facts.name.clone()) {
        return Err(OotError::OtherModule {
            ko: trees.module.ko.clone(),
            src: trees.module.source.clone(),
            unit,
            built: built.klp_name().to_string(),
            name: trees.facts.name.clone(),
        }
        .into());
    }
    let path = trees.original.join(object);
    let data = read_file(&path, "object", "see the build log")?;
    let missing = missing_functions(&data, &trees.facts.functions);
    if !missing.is_empty() && !trees.facts.file_symbols {
        return Err(OotError::Stripped(trees.module.ko.clone()).into());
    }
    if !missing.is_empty() {
        return Err(OotError::OtherSource {
            ko: trees.module.ko.clone(),
            src: trees.module.source.clone(),
            unit,
            missing,
        }
        .into());
    }
    let path = trees.reference.join(object);
    let reference = read_file(&path, "object", "see the build log")?;
    let differing = differing_functions(&reference, module);
    if !differing.is_empty() {
        return Err(OotError::OtherCode {
            ko: trees.module.ko.clone(),
            src: trees.module.source.clone(),
            unit,
            differing,
        }
        .into());
    }
    Ok(())
}

/// A function's code with the bytes a relocation fills in cleared: what two builds of one
/// source by one compiler share, whatever the link made of them.
#[derive(Debug)]
struct Code {
    bytes: Vec<u8>,
}

/// The code of every named function an object defines, by name (a static name may be
/// defined by several units of a module).
fn function_code(file: &object::File) -> BTreeMap<String, Vec<Code>> {
    use object::ObjectSection;
    let mut relocated: BTreeMap<usize, Vec<(u64, u64)>> = BTreeMap::new();
    let mut functions: BTreeMap<String, Vec<Code>> = BTreeMap::new();
    for symbol in file.symbols() {
        if symbol.kind() != SymbolKind::Text || !symbol.is_definition() || symbol.size() == 0 {
            continue;
        }
        let (Ok(name), Some(index)) = (symbol.name(), symbol.section_index()) else {
            continue;
        };
        if name.is_empty() || name.starts_with("__pfx_") || name.starts_with("__cfi_") {
            continue;
        }
        let Ok(section) = file.section_by_index(index) else {
            continue;
        };
        let sites = relocated.entry(index.0).or_insert_with(|| {
            section
                .relocations()
                .map(|(offset, relocation)| {
                    let width = u64::from(relocation.size()).div_ceil(8).max(1);
                    (offset, offset.saturating_add(width))
                })
                .collect()
        });
        let start = symbol.address();
        let Some(end) = start.checked_add(symbol.size()) else {
            continue;
        };
        let Ok(data) = section.data() else { continue };
        let (Ok(from), Ok(to)) = (usize::try_from(start), usize::try_from(end)) else {
            continue;
        };
        let Some(bytes) = data.get(from..to) else {
            continue;
        };
        let mut bytes = bytes.to_vec();
        for &(site, site_end) in sites.iter() {
            let (low, high) = (site.max(start), site_end.min(end));
            for at in low..high {
                bytes[(at - start) as usize] = 0;
            }
        }
        functions
            .entry(name.to_string())
            .or_default()
            .push(Code { bytes });
    }
    functions
}

/// The functions of `reference` (a unit built as the module's were) whose code no function
/// of the same name in `module` has, each with how it differs (at most five, then `...`).
/// A function the module lacks is [`missing_functions`]'s, not this one's.
pub fn differing_functions(reference: &[u8], module: &[u8]) -> Vec<String> {
    let (Ok(reference), Ok(module)) = (object::File::parse(reference), object::File::parse(module))
    else {
        return vec!["(an unreadable object)".to_string()];
    };
    let ours = function_code(&reference);
    let theirs = function_code(&module);
    let mut differing = Vec::new();
    for (name, codes) in &ours {
        let Some(candidates) = theirs.get(name) else {
            continue;
        };
        for code in codes {
            if candidates.iter().any(|other| other.bytes == code.bytes) {
                continue;
            }
            let other = &candidates[0];
            let how = if other.bytes.len() != code.bytes.len() {
                format!(
                    "{name}: {} bytes from the source, {} in the module",
                    code.bytes.len(),
                    other.bytes.len()
                )
            } else {
                let at = code
                    .bytes
                    .iter()
                    .zip(&other.bytes)
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                format!(
                    "{name}: {} bytes, differing from +{at:#x}",
                    code.bytes.len()
                )
            };
            differing.push(how);
        }
    }
    differing.sort();
    differing.dedup();
    if differing.len() > 5 {
        differing.truncate(5);
        differing.push("...".to_string());
    }
    differing
}

/// The functions an object defines that `functions` lacks (at most five, then `...`).
pub fn missing_functions(object: &[u8], functions: &BTreeSet<String>) -> Vec<String> {
    let Ok(file) = object::File::parse(object) else {
        return vec!["(an unreadable object)".to_string()];
    };
    let mut missing: Vec<String> = file
        .symbols()
        .filter(|symbol| symbol.kind() == SymbolKind::Text && symbol.is_definition())
        .filter_map(|symbol| symbol.name().ok().map(str::to_string))
        .filter(|name| !name.is_empty() && !functions.contains(name))
        // objtool's padding symbols name the function they stand before.
        .filter(|name| !name.starts_with("__pfx_") && !name.starts_with("__cfi_"))
        .collect();
    missing.sort();
    missing.dedup();
    if missing.len() > 5 {
        missing.truncate(5);
        missing.push("...".to_string());
    }
    missing
}

/// The livepatch loads only where `FILE.ko` does: its vermagic must be the module's.
pub fn check_vermagic(trees: &OotTrees, livepatch: &[u8]) -> Result<(), BuildError> {
    let ours = modinfo(livepatch, "vermagic").unwrap_or_default();
    if ours == trees.facts.vermagic {
        return Ok(());
    }
    Err(OotError::OtherKernel {
        ko: trees.module.ko.clone(),
        theirs: format!("vermagic {:?}", trees.facts.vermagic),
        ours: format!("vermagic {ours:?}"),
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_exit_2_and_wrong_inputs_exit_1() {
        let refusal = BuildError::from(OotError::Stripped(PathBuf::from("m.ko")));
        assert_eq!(refusal.exit_code(), crate::exit::UNPATCHABLE);
        assert_eq!(refusal.outcome(), "refused");
        let BuildError::Unpatchable { refusals } = &refusal else {
            panic!("{refusal:?}");
        };
        assert_eq!(refusals[0].object, "out-of-tree module m.ko");
        assert!(
            refusals[0]
                .reason
                .starts_with("it has no symbol table (stripped)"),
            "{refusals:?}"
        );
        assert_eq!(
            refusal.to_string(),
            OotError::Stripped(PathBuf::from("m.ko")).to_string()
        );
        let input = BuildError::from(OotError::NoModule(PathBuf::from("m.ko")));
        assert_eq!(input.exit_code(), crate::exit::ERROR);
        assert!(input
            .to_string()
            .contains("pass the module's .ko with --oot-module"));
    }

    /// A relocatable object with one `.text` of `code`, the functions `(name, offset, size)`,
    /// and a 4-byte PC-relative relocation against `target` at each offset of `relocations`.
    fn object_with(code: &[u8], functions: &[(&str, u64, u64)], relocations: &[u64]) -> Vec<u8> {
        use object::write::{Object as Writer, Relocation, Symbol, SymbolSection};
        use object::{Architecture, BinaryFormat, Endianness, SymbolFlags, SymbolScope};
        let mut file = Writer::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
        let text = file.section_id(object::write::StandardSection::Text);
        file.append_section_data(text, code, 16);
        for &(name, value, size) in functions {
            file.add_symbol(Symbol {
                name: name.as_bytes().to_vec(),
                value,
                size,
                kind: SymbolKind::Text,
                scope: SymbolScope::Compilation,
                weak: false,
                section: SymbolSection::Section(text),
                flags: SymbolFlags::None,
            });
        }
        let target = file.add_symbol(Symbol {
            name: b"target".to_vec(),
            value: 0,
            size: 0,
            kind: SymbolKind::Text,
            scope: SymbolScope::Linkage,
            weak: false,
            section: SymbolSection::Undefined,
            flags: SymbolFlags::None,
        });
        for &offset in relocations {
            file.add_relocation(
                text,
                Relocation {
                    offset,
                    symbol: target,
                    addend: -4,
                    flags: object::RelocationFlags::Generic {
                        kind: object::RelocationKind::Relative,
                        encoding: object::RelocationEncoding::Generic,
                        size: 32,
                    },
                },
            )
            .expect("relocation");
        }
        file.write().expect("write")
    }

    #[test]
    fn code_is_compared_outside_relocation_sites_with_every_function_of_the_name() {
        // `call target; ret` twice: the unit's call is unresolved, the module's was filled in.
        let unit = object_with(
            &[0xe8, 0, 0, 0, 0, 0xc3, 0xe8, 0, 0, 0, 0, 0xc3],
            &[("show", 0, 6), ("helper", 6, 6)],
            &[1, 7],
        );
        let module = object_with(
            &[0xe8, 1, 2, 3, 4, 0xc3, 0xe8, 5, 6, 7, 8, 0xc3],
            &[("show", 0, 6), ("helper", 6, 6)],
            &[1, 7],
        );
        assert_eq!(differing_functions(&unit, &module), Vec::<String>::new());
        // A static of the same name in another unit of the module does not hide a match.
        let two_helpers = object_with(
            &[0x90, 0xc3, 0xe8, 0, 0, 0, 0, 0xc3, 0xe8, 0, 0, 0, 0, 0xc3],
            &[("helper", 0, 2), ("show", 2, 6), ("helper", 8, 6)],
            &[3, 9],
        );
        assert_eq!(
            differing_functions(&unit, &two_helpers),
            Vec::<String>::new()
        );
        // A byte outside a relocation site, or another size, is other code.
        let other_byte = object_with(
            &[0xe8, 0, 0, 0, 0, 0xc3, 0xe9, 0, 0, 0, 0, 0xc3],
            &[("show", 0, 6), ("helper", 6, 6)],
            &[1, 7],
        );
        assert_eq!(
            differing_functions(&unit, &other_byte),
            vec!["helper: 6 bytes, differing from +0x0".to_string()]
        );
        let other_size = object_with(
            &[0xe8, 0, 0, 0, 0, 0x90, 0xc3, 0xe8, 0, 0, 0, 0, 0xc3],
            &[("show", 0, 7), ("helper", 7, 6)],
            &[1, 8],
        );
        assert_eq!(
            differing_functions(&unit, &other_size),
            vec!["show: 6 bytes from the source, 7 in the module".to_string()]
        );
        // The same bytes without the relocation: the site is not cleared in the module, so a
        // filled-in call differs where the unit has a relocation and the module has none.
        let unrelocated = object_with(
            &[0xe8, 1, 2, 3, 4, 0xc3, 0xe8, 0, 0, 0, 0, 0xc3],
            &[("show", 0, 6), ("helper", 6, 6)],
            &[7],
        );
        assert_eq!(
            differing_functions(&unit, &unrelocated),
            vec!["show: 6 bytes, differing from +0x1".to_string()]
        );
        // A function the module lacks is left to `missing_functions`.
        let fewer = object_with(&[0xe8, 0, 0, 0, 0, 0xc3], &[("show", 0, 6)], &[1]);
        assert_eq!(differing_functions(&unit, &fewer), Vec::<String>::new());
        assert_eq!(
            missing_functions(&unit, &["show".to_string()].into()),
            ["helper"]
        );
    }

    #[test]
    fn a_file_that_is_no_module_is_an_input_error() {
        let error = module_facts(Path::new("x.ko"), b"not an ELF file").expect_err("no ELF");
        assert!(!error.is_refusal());
        assert!(
            error.to_string().starts_with("x.ko is not a kernel module"),
            "{error}"
        );
    }
}
