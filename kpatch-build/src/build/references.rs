//! The resolve phase: how each unit's references reach their symbols, read against the klp
//! objects' symbol tables (vmlinux from `--vmlinux` or `--system-map`, each patched module
//! from its `.ko`). A reference that needs a livepatch relocation gets its
//! `.klp.sym.<object>.<name>,<sympos>` name ([`resolve::reach`] decides which do), and every
//! replaced function its `sympos`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use kpatch_diff::compare::Refusal;
use kpatch_diff::elf::{Binding, Object};
use kpatch_diff::report::Report;

use super::diff_units::DiffedUnit;
use super::inputs::{read_file, InputError};
use super::klp_records::{self, klp_symbol_name};
use super::module::KlpObjectName;
use super::resolve::{self, Exports, KlpObjectSymbols, Reach, ReferenceFacts, Unit};
use super::{BuildError, BuildOptions, SymbolSource};

/// How one unit with an output object reaches what it refers to.
#[derive(Debug)]
pub struct UnitLinks {
    /// Reference name to the record text of its livepatch relocation
    /// ([`klp_records::record_name`]); references not named here are ordinary.
    pub klp_names: BTreeMap<String, String>,
    /// Each replaced function's `sympos` in its klp object.
    pub replaced_sympos: BTreeMap<String, u64>,
}

/// What the resolve phase hands on: each unit, with its links when it has an output object,
/// and the symbol namespaces the module must import.
#[derive(Debug)]
pub struct Resolved {
    pub units: Vec<(DiffedUnit, Option<UnitLinks>)>,
    pub import_namespaces: Vec<String>,
}

/// Resolves every unit's references and replaced functions.
pub fn resolve_units(
    options: &BuildOptions,
    diffed: Vec<DiffedUnit>,
    exports: &Exports,
) -> Result<Resolved, BuildError> {
    let vmlinux_symbols = match &options.symbols {
        SymbolSource::Vmlinux(path) => {
            // Only the symbol table is read: a debug vmlinux is mostly DWARF.
            let vmlinux = fs::File::open(path).map_err(|source| InputError::Read {
                what: "vmlinux",
                path: path.clone(),
                hint: "pass --vmlinux",
                source,
            })?;
            KlpObjectSymbols::from_elf(
                KlpObjectName::Vmlinux,
                &object::read::ReadCache::new(vmlinux),
            )?
        }
        SymbolSource::SystemMap(path) => {
            let map = read_file(path, "System.map", "pass --system-map")?;
            KlpObjectSymbols::from_system_map(&String::from_utf8_lossy(&map))?
        }
    };
    let reference_build = options
        .modules
        .as_deref()
        .unwrap_or(options.symbols.reference_build());
    let mut module_symbols: BTreeMap<String, KlpObjectSymbols> = BTreeMap::new();
    let mut module_depends: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut import_namespaces: BTreeSet<String> = BTreeSet::new();
    let defined_by_patch = defined_by_patch(&diffed)?;
    let mut refusals = Vec::new();
    let mut units = Vec::new();
    for unit in diffed {
        if unit.output.object.is_none() {
            units.push((unit, None));
            continue;
        }
        let DiffedUnit {
            name,
            klp_object,
            orig,
            output,
        } = &unit;
        let symbols = match klp_object {
            KlpObjectName::Vmlinux => &vmlinux_symbols,
            KlpObjectName::Module(module_name) => {
                if !module_symbols.contains_key(module_name) {
                    // An out-of-tree module's units are all of it (`oot::compile` checks).
                    let ko = match &options.oot_module {
                        Some(module) => module.ko.clone(),
                        None => {
                            find_module_file(reference_build, module_name).ok_or_else(|| {
                                InputError::ModuleNotFound {
                                    module: module_name.clone(),
                                    dir: reference_build.to_path_buf(),
                                }
                            })?
                        }
                    };
                    let data = read_file(&ko, "module", "build the original modules")?;
                    module_depends.insert(module_name.clone(), resolve::module_depends(&data));
                    module_symbols.insert(
                        module_name.clone(),
                        KlpObjectSymbols::from_elf(klp_object.clone(), data.as_slice())?,
                    );
                }
                &module_symbols[module_name]
            }
        };
        let original = Object::parse(name, orig)?;
        let locals = resolve::unit_locals(&original);
        let defined = resolve::unit_defined(&original);
        let file = Path::new(name)
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

        refusals.extend(unreachable_keys(
            &output.report,
            klp_object,
            |key, local| ReferenceFacts {
                local,
                exporter: exports.exporter_to_livepatch(key),
                global_of_klp_object: symbols.has_global(key),
                defined_by_patch: !local && defined_by_patch.contains(key),
            },
        ));

        let mut klp_names = BTreeMap::new();
        for reference in &output.report.references {
            let local = reference.binding == Some(Binding::Local);
            let facts = ReferenceFacts {
                local,
                exporter: exports.exporter_to_livepatch(&reference.name),
                global_of_klp_object: symbols.has_global(&reference.name),
                defined_by_patch: !local && defined_by_patch.contains(reference.name.as_str()),
            };
            let Reach::Livepatch {
                owner,
                section_object,
            } = resolve::reach(klp_object, facts)
            else {
                if let Some(namespace) = exports.namespace(&reference.name) {
                    import_namespaces.insert(namespace.to_string());
                }
                continue;
            };
            let sympos = if owner == klp_object.klp_name() {
                symbols.sympos(&reference.name, if local { block.as_ref() } else { None })?
            } else if owner == "vmlinux" {
                vmlinux_symbols.sympos(&reference.name, None)?
            } else {
                // Another module's export: a global, unique in the module that exports it.
                // The relocation is applied when the patched module comes, so that module
                // must depend on the exporter, or it could come without it.
                let depends = module_depends.get(klp_object.klp_name());
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
                            klp_object.klp_name(),
                            klp_object.klp_name()
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

        let mut replaced_sympos = BTreeMap::new();
        for function in &output.report.functions {
            let Some(replaced) = &function.replaces else {
                continue;
            };
            let old_name = &replaced.name;
            let local = original
                .symbols
                .iter()
                .any(|s| &s.name == old_name && s.binding == Binding::Local);
            let sympos = symbols.sympos(old_name, if local { block.as_ref() } else { None })?;
            replaced_sympos.insert(old_name.clone(), sympos.0);
        }
        units.push((
            unit,
            Some(UnitLinks {
                klp_names,
                replaced_sympos,
            }),
        ));
    }
    if !refusals.is_empty() {
        return Err(BuildError::Unpatchable { refusals });
    }
    Ok(Resolved {
        units,
        import_namespaces: import_namespaces.into_iter().collect(),
    })
}

/// The jump labels of a module klp object that the kernel could not read. The loader reads
/// the livepatch module's `__jump_table` while the module loads; it has applied vmlinux's
/// livepatch relocations by then, but one into a module klp object only comes when that
/// module comes (see `kpatch_diff::include`). So a key is there in time when [`resolve::reach`]
/// gives an ordinary relocation or one in vmlinux's section, and not otherwise. `facts` tells
/// what is known of a key (its name, and whether the unit defines it as a local).
pub fn unreachable_keys<'a>(
    report: &Report,
    klp_object: &KlpObjectName,
    facts: impl Fn(&str, bool) -> ReferenceFacts<'a>,
) -> Vec<Refusal> {
    let mut refusals = Vec::new();
    for key in &report.module_keys {
        let local = report
            .references
            .iter()
            .any(|r| r.name == key.key && r.binding == Some(Binding::Local));
        let Reach::Livepatch {
            owner,
            section_object,
        } = resolve::reach(klp_object, facts(&key.key, local))
        else {
            continue;
        };
        if section_object == "vmlinux" {
            continue;
        }
        refusals.push(Refusal {
            object: report.object.clone(),
            section: key.section.clone(),
            symbol: key.key.clone(),
            reason: format!(
                "the jump label at {}+{:#x} uses static key {} of {owner}, which only a \
                 livepatch relocation reaches, applied when {section_object} comes; the kernel \
                 reads {} when the livepatch module loads, before that; test the key with \
                 static_key_enabled() in the patch instead of static_branch_*()",
                key.function, key.offset, key.key, key.section
            ),
        });
    }
    refusals
}

/// Globals that one unit's output defines new for another's to use (a function the patch adds
/// in one file and calls from another): the module's own link resolves them.
fn defined_by_patch(diffed: &[DiffedUnit]) -> Result<BTreeSet<String>, BuildError> {
    let defined_globals = |object: &Object| -> BTreeSet<String> {
        object
            .symbols
            .iter()
            .filter(|s| s.binding != Binding::Local && s.section().is_some())
            .map(|s| s.name.clone())
            .collect()
    };
    let mut defined = BTreeSet::new();
    for unit in diffed {
        let Some(bytes) = &unit.output.object else {
            continue;
        };
        let parse = |bytes: &[u8]| Object::parse(&unit.name, bytes).map_err(BuildError::from);
        let before = defined_globals(&parse(&unit.orig)?);
        defined.extend(
            defined_globals(&parse(bytes)?)
                .into_iter()
                .filter(|symbol| !before.contains(symbol)),
        );
    }
    Ok(defined)
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
