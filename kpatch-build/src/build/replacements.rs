//! Replacements: what a diff output replaces and registers, read before it is linked.
//!
//! The diff gives every changed and new function a global alias (`kpatch_rs.<object>.<name>`)
//! that the generated source can name; this step pairs each replacement with the function it
//! replaces, and reads the callbacks registered with `kpatch-macros.h`: pointers in
//! `.kpatch.callbacks.<kind>` sections, which become the `klp_object`'s callbacks (by the
//! pointed-to function's alias). Those sections and the diff's metadata section are dropped.

use object::build::elf::{Builder, SectionData, SymbolId};
use object::elf;

use crate::build::module::Callbacks;
use kpatch_diff::report::Report;

/// The prefix of the sections where `kpatch-macros.h` records callbacks.
pub const CALLBACK_SECTION_PREFIX: &str = ".kpatch.callbacks.";

/// Why a diff output's replacements could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReplacementsError {
    #[error("cannot read the replacements of {object}: {reason}")]
    Object { object: String, reason: String },
}

/// A diff output's replacements and callbacks, and its bytes without the sections that must
/// not reach the module.
#[derive(Debug, Clone)]
pub struct Replacements {
    /// The object's new bytes.
    pub object: Vec<u8>,
    /// For each replaced function: the original's name and the replacement's symbol.
    pub functions: Vec<(String, String)>,
    /// The callbacks the object registers, by alias.
    pub callbacks: Callbacks,
}

/// Reads the replacements and callbacks of one diff output and drops the sections that must
/// not reach the module.
pub fn read_replacements(
    name: &str,
    object: &[u8],
    report: &Report,
) -> Result<Replacements, ReplacementsError> {
    let error = |reason: String| ReplacementsError::Object {
        object: name.to_string(),
        reason,
    };
    let mut builder = Builder::read(object).map_err(|e| error(e.to_string()))?;

    let functions: Vec<(String, String)> = report
        .functions
        .iter()
        .filter_map(|function| {
            let replaced = function.replaces.as_ref()?;
            Some((replaced.name.clone(), function.symbol.clone()))
        })
        .collect();

    let mut callbacks = Callbacks::default();
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
            let function_name =
                String::from_utf8_lossy(builder.symbols.get(function).name.as_slice()).into_owned();
            let alias = report
                .functions
                .iter()
                .find(|f| f.name == function_name)
                .map(|f| f.symbol.clone())
                .ok_or_else(|| {
                    error(format!(
                        "callback {function_name} is not among the diff's functions"
                    ))
                })?;
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
            .filter(|s| s.name.as_slice() == kpatch_diff::output::METADATA_SECTION.as_bytes())
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
    Ok(Replacements {
        object: out,
        functions,
        callbacks,
    })
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
