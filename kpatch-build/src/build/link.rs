//! The linkable-objects and link phases: each diff output made linkable (its replacements
//! paired with what they replace, callbacks read, livepatch references turned into records),
//! then the module source generated, compiled and linked with them by Kbuild.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::compile::Compiled;
use super::inputs::read_file;
use super::kbuild::{self, KernelBuild};
use super::klp_records;
use super::module::{self, KlpFunction, KlpObject, KlpObjectName};
use super::references::Resolved;
use super::replacements;
use super::{io_error, BuildError, ObjectSummary};

/// What the linkable phase hands on.
#[derive(Debug)]
pub struct Linkable {
    /// The prepared objects, in unit order.
    pub objects: Vec<PathBuf>,
    /// One `klp_object` per klp object, vmlinux first.
    pub klp_objects: Vec<KlpObject>,
    /// Per unit, for the report.
    pub summaries: Vec<ObjectSummary>,
}

/// Makes each unit's output linkable into `module_dir` and gathers the klp objects.
pub fn make_linkable(resolved: Resolved, module_dir: &Path) -> Result<Linkable, BuildError> {
    // The objects of an earlier run go; the module source's directories stay, for Kbuild and
    // `link_module` to tell what is still current.
    if let Ok(entries) = fs::read_dir(module_dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name != MAIN_DIR && name != LINK_DIR {
                let path = entry.path();
                let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
            }
        }
    }
    fs::create_dir_all(module_dir).map_err(io_error("create", module_dir))?;
    let mut klp_objects: BTreeMap<KlpObjectName, KlpObject> = BTreeMap::new();
    let mut objects = Vec::new();
    let mut summaries = Vec::new();
    for (index, (unit, links)) in resolved.units.into_iter().enumerate() {
        let summary = ObjectSummary {
            object: unit.name.clone(),
            klp_object: unit.klp_object.klp_name().to_string(),
            diff: unit.output.report.clone(),
        };
        let (Some(object_bytes), Some(links)) = (&unit.output.object, links) else {
            summaries.push(summary);
            continue;
        };
        let name = &unit.name;
        let replacements =
            replacements::read_replacements(name, object_bytes, &unit.output.report)?;
        let (linkable, _) =
            klp_records::convert_references(name, &replacements.object, &links.klp_names)?;
        let path = module_dir.join(format!("patched-{index}.o"));
        fs::write(&path, &linkable).map_err(io_error("write", &path))?;
        objects.push(path);

        let object_name = unit.klp_object.clone();
        let klp_object = klp_objects
            .entry(object_name.clone())
            .or_insert_with(|| KlpObject {
                name: object_name,
                functions: Vec::new(),
                callbacks: Default::default(),
            });
        for (old_name, alias) in replacements.functions {
            let sympos = links
                .replaced_sympos
                .get(&old_name)
                .copied()
                .ok_or_else(|| {
                    BuildError::Internal(format!("{name}: no sympos was resolved for {old_name}"))
                })?;
            klp_object.functions.push(KlpFunction {
                old_name,
                old_sympos: sympos,
                new_symbol: alias,
            });
        }
        klp_object.callbacks.merge(replacements.callbacks);
        summaries.push(summary);
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
    Ok(Linkable {
        objects,
        klp_objects: klp_objects.into_values().collect(),
        summaries,
    })
}

/// Renders the module source and links the module; returns the `.ko`'s bytes.
pub fn link(
    compiled: &Compiled,
    livepatch: &module::LivepatchModule,
    symvers: &[u8],
    module_dir: &Path,
    objects: &[PathBuf],
) -> Result<Vec<u8>, BuildError> {
    let source = module::render_source(livepatch)?;
    // External modules resolve exported symbols from the build directory's Module.symvers.
    let symvers_copy = compiled.original.output.join("Module.symvers");
    fs::write(&symvers_copy, symvers).map_err(io_error("write", &symvers_copy))?;
    link_module(
        &compiled.original,
        module_dir,
        &livepatch.name,
        &source,
        objects,
    )
}

/// Compiler flags that keep the cache directory's path out of the module: with
/// `CONFIG_DEBUG_INFO` the generated source and modpost's `.mod.c` are compiled with debug
/// information that names their directory, so the same inputs gave other bytes under another
/// `--cache-dir`. A path with white space is left alone (make would split the flag).
fn path_independent_cflags(module_dir: &Path) -> String {
    let Some(cache) = module_dir.parent() else {
        return String::new();
    };
    let cache = cache.display().to_string();
    if cache.is_empty() || cache.contains(char::is_whitespace) {
        return String::new();
    }
    format!("-ffile-prefix-map={cache}=kpatch-rs-cache")
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
    let write = |path: &Path, text: &str| fs::write(path, text).map_err(io_error("write", path));
    let main_dir = module_dir.join(MAIN_DIR);
    let link_dir = module_dir.join(LINK_DIR);
    for dir in [&main_dir, &link_dir] {
        fs::create_dir_all(dir).map_err(io_error("create", dir))?;
    }
    let cflags = path_independent_cflags(module_dir);
    // The module source is compiled again only when it or its flags changed: a rebuild of
    // the same fix, or of a fix to the same functions, reuses the object. The record of what
    // was compiled is removed first and written back once the object is whole, so a build
    // killed while compiling compiles again.
    let main_object = main_dir.join("livepatch-main.o");
    let compiled_record = main_dir.join(".kpatch-compiled");
    let wanted = compiled_source_record(source, &cflags, build.release.as_deref());
    let current = fs::read(&compiled_record).ok().as_deref() == Some(wanted.as_bytes())
        && main_object.is_file();
    if !current {
        let _ = fs::remove_file(&compiled_record);
        write(&main_dir.join("livepatch-main.c"), source)?;
        write(&main_dir.join("Kbuild"), "obj-m := livepatch-main.o\n")?;
        build.build_external(
            "compiling the livepatch module source",
            &main_dir,
            &["livepatch-main.o"],
            &cflags,
        )?;
        write(&compiled_record, &wanted)?;
    }
    let mut inputs = vec![main_object];
    inputs.extend(patched_objects.iter().cloned());
    let object = link_dir.join(format!("{module_name}.o"));
    // Nothing of an earlier link can pass for this one's module.
    let module_file = link_dir.join(format!("{module_name}.ko"));
    for stale in [&object, &module_file] {
        match fs::remove_file(stale) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_error("remove", stale)(e).into())
            }
            _ => {}
        }
    }
    kbuild::link_relocatable(&object, &inputs, &build.log)?;
    write(
        &link_dir.join("Kbuild"),
        &module::KBUILD_TEMPLATE.replace("@MODULE_NAME@", module_name),
    )?;
    // modpost reads an object's symbol CRCs from its `.cmd` file (with CONFIG_MODVERSIONS);
    // the prebuilt object exports nothing, so an empty one says so.
    write(&link_dir.join(format!(".{module_name}.o.cmd")), "")?;
    build.build_external(
        "building the livepatch module",
        &link_dir,
        &["modules"],
        &cflags,
    )?;
    Ok(read_file(&module_file, "module", "see the build log")?)
}

/// The directories of `module/` that stay between runs: the module source's and the link's.
const MAIN_DIR: &str = "main";
const LINK_DIR: &str = "link";

/// What decides the module source's object: the source, the flags, the release Kbuild is
/// given (which regenerates its headers), and the headers kpatch-rs puts on the include path.
fn compiled_source_record(source: &str, cflags: &str, release: Option<&str>) -> String {
    format!(
        "{cflags}\n{release:?}\n{source}\n{}\n{}\n{}",
        module::KPATCH_MACROS_H,
        module::KPATCH_SYSCALL_H,
        module::LIVEPATCH_HELPERS_H
    )
}
