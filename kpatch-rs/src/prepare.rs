//! Prepare: make a diff output linkable into the livepatch module.
//!
//! A replacement function usually keeps the original's local name (`cmdline_proc_show`), which
//! the generated module source cannot name, so each one gets a global alias
//! `__kpatch_new_<n>` at the same place. Callbacks registered with `kpatch-macros.h` sit as
//! pointers in `.kpatch.callbacks.<kind>` sections; each pointed-to function gets an alias
//! `__kpatch_callback_<n>` for the module's `klp_callbacks`, and the sections are dropped.

use object::build::elf::{Builder, SectionData, SymbolId};
use object::elf;

use crate::module::Callbacks;
use crate::report::Report;

/// The prefix of the sections where `kpatch-macros.h` records callbacks.
pub const CALLBACK_SECTION_PREFIX: &str = ".kpatch.callbacks.";

/// Why a diff output could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("cannot prepare {object} for linking: {reason}")]
    Object { object: String, reason: String },
}

/// A prepared object.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The object's new bytes.
    pub object: Vec<u8>,
    /// For each replaced function: the original's name and the replacement's alias.
    pub functions: Vec<(String, String)>,
    /// The callbacks the object registers, by alias.
    pub callbacks: Callbacks,
}

/// Adds the aliases and drops the callback sections; aliases are numbered from
/// `first_alias` so that several objects of one module do not collide.
pub fn prepare_object(
    name: &str,
    object: &[u8],
    report: &Report,
    first_alias: usize,
) -> Result<Prepared, PrepareError> {
    let error = |reason: String| PrepareError::Object {
        object: name.to_string(),
        reason,
    };
    let mut builder = Builder::read(object).map_err(|e| error(e.to_string()))?;

    link_ordered_sections(&mut builder);

    let mut functions = Vec::new();
    for function in &report.functions {
        let Some(replaced) = &function.replaces else {
            continue;
        };
        let symbol = find_function(&builder, &function.name).ok_or_else(|| {
            error(format!(
                "the replacement of {} has no function symbol",
                replaced.name
            ))
        })?;
        let alias = format!("__kpatch_new_{}", first_alias + functions.len());
        add_alias(&mut builder, symbol, &alias);
        functions.push((replaced.name.clone(), alias));
    }

    let mut callbacks = Callbacks::default();
    let mut callback_count = 0usize;
    let callback_sections: Vec<_> = builder
        .sections
        .iter()
        .filter(|s| {
            s.name
                .as_slice()
                .starts_with(CALLBACK_SECTION_PREFIX.as_bytes())
        })
        .map(|s| {
            (
                s.id(),
                String::from_utf8_lossy(s.name.as_slice()).into_owned(),
            )
        })
        .collect();
    for (section, section_name) in &callback_sections {
        let kind = &section_name[CALLBACK_SECTION_PREFIX.len()..];
        let targets: Vec<(SymbolId, i64)> = builder
            .sections
            .iter()
            .filter(|s| s.sh_info_section == Some(*section))
            .filter_map(|s| match &s.data {
                SectionData::Relocation(relocations) => Some(relocations),
                _ => None,
            })
            .flatten()
            .filter_map(|r| Some((r.symbol?, r.r_addend)))
            .collect();
        for (symbol, addend) in targets {
            let function = resolve_function(&builder, symbol, addend).ok_or_else(|| {
                error(format!(
                    "a {section_name} entry does not point at a function"
                ))
            })?;
            let alias = format!("__kpatch_callback_{}", first_alias + callback_count);
            callback_count += 1;
            add_alias(&mut builder, function, &alias);
            let slot = match kind {
                "pre_patch" => &mut callbacks.pre_patch,
                "post_patch" => &mut callbacks.post_patch,
                "pre_unpatch" => &mut callbacks.pre_unpatch,
                "post_unpatch" => &mut callbacks.post_unpatch,
                other => return Err(error(format!("unknown callback kind {other}"))),
            };
            if slot.is_some() {
                return Err(error(format!(
                    "registers two {kind} callbacks; a livepatch object takes one of each"
                )));
            }
            *slot = Some(alias);
        }
    }
    // The diff's metadata section has done its job once the report is read.
    let mut dropped: Vec<_> = callback_sections.iter().map(|(id, _)| *id).collect();
    dropped.extend(
        builder
            .sections
            .iter()
            .filter(|s| s.name.as_slice() == crate::output::METADATA_SECTION.as_bytes())
            .map(|s| s.id()),
    );
    for section in builder.sections.iter_mut() {
        let targets_dropped = section
            .sh_info_section
            .is_some_and(|target| dropped.contains(&target));
        if dropped.contains(&section.id()) || targets_dropped {
            section.delete = true;
        }
    }
    builder.delete_orphans();

    let mut out = Vec::new();
    builder.write(&mut out).map_err(|e| error(e.to_string()))?;
    Ok(Prepared {
        object: out,
        functions,
        callbacks,
    })
}

/// Points each `SHF_LINK_ORDER` section (`__patchable_function_entries`) at the code section
/// its entries describe, read from its relocations. The linker refuses to merge such sections
/// with ordered ones from other objects unless every one names its linked section.
fn link_ordered_sections(builder: &mut Builder<'_>) {
    let mut links = Vec::new();
    for section in builder.sections.iter() {
        if section.sh_flags.0 & elf::SHF_LINK_ORDER.0 == 0 || section.sh_link_section.is_some() {
            continue;
        }
        let target = builder
            .sections
            .iter()
            .filter(|rela| rela.sh_info_section == Some(section.id()))
            .filter_map(|rela| match &rela.data {
                SectionData::Relocation(relocations) => relocations.first(),
                _ => None,
            })
            .find_map(|relocation| builder.symbols.get(relocation.symbol?).section);
        if let Some(target) = target {
            links.push((section.id(), target));
        }
    }
    for (section, target) in links {
        builder.sections.get_mut(section).sh_link_section = Some(target);
    }
}

fn find_function(builder: &Builder<'_>, name: &str) -> Option<SymbolId> {
    builder
        .symbols
        .iter()
        .find(|s| {
            s.name.as_slice() == name.as_bytes()
                && s.st_type() == elf::STT_FUNC
                && s.section.is_some()
        })
        .map(|s| s.id())
}

/// The function a pointer relocation designates: the symbol itself, or for a section symbol
/// (the assembler's way of referencing a local function) the function at `addend` in it.
fn resolve_function(builder: &Builder<'_>, symbol: SymbolId, addend: i64) -> Option<SymbolId> {
    let symbol = builder.symbols.get(symbol);
    if symbol.st_type() == elf::STT_FUNC && addend == 0 {
        return Some(symbol.id());
    }
    if symbol.st_type() != elf::STT_SECTION {
        return None;
    }
    let section = symbol.section?;
    let offset = u64::try_from(addend).ok()?;
    builder
        .symbols
        .iter()
        .find(|s| {
            s.section == Some(section) && s.st_type() == elf::STT_FUNC && s.st_value == offset
        })
        .map(|s| s.id())
}

fn add_alias(builder: &mut Builder<'_>, target: SymbolId, alias: &str) {
    let (section, value, size) = {
        let symbol = builder.symbols.get(target);
        (symbol.section, symbol.st_value, symbol.st_size)
    };
    let symbol = builder.symbols.add();
    symbol.name = alias.as_bytes().to_vec().into();
    symbol.set_st_info(elf::STB_GLOBAL, elf::STT_FUNC);
    symbol.section = section;
    symbol.st_value = value;
    symbol.st_size = size;
}
