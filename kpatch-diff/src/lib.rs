//! The object diff (create-diff-object's job): bytes of an original and a patched object
//! in, a report and the output object's bytes out. Pure: no files, no processes.
//!
//! Order: read both objects ([`crate::elf`]), pair them ([`crate::correlate`]), judge each
//! function and object ([`crate::compare`]), compute what the changed code needs
//! ([`crate::include`] with [`crate::special_sections`]), write the result
//! ([`crate::output`]) and describe it ([`crate::report`]).

pub mod compare;
pub mod correlate;
pub mod elf;
pub mod include;
pub mod layout;
pub mod output;
pub mod report;
pub mod special_sections;

use std::collections::BTreeMap;

use rayon::prelude::*;

use crate::compare::Status;
use crate::elf::{Binding, ElfError, Object, SymbolId, SymbolKind};
use crate::report::{FunctionReport, ModuleKey, Outcome, Reference, Replaced, Report, Resolution};

/// What went wrong while diffing one pair, other than a refusal (which is an outcome).
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error(transparent)]
    Malformed(#[from] ElfError),
    #[error("cannot write the output for {object}: {message}")]
    Write { object: String, message: String },
    /// A special section that does not divide into the kernel's entries: the objects and
    /// the kernel layout kpatch-rs was given do not belong together.
    #[error("cannot read the special sections of {object}: {message}")]
    Table { object: String, message: String },
}

/// One object pair to diff.
#[derive(Debug, Clone)]
pub struct Pair<'a> {
    /// How messages name the object (usually its path relative to the kernel tree).
    pub name: &'a str,
    /// How errors about the original file name it (its path, say).
    pub orig_name: &'a str,
    pub orig: &'a [u8],
    pub patched: &'a [u8],
    /// The binary the object belongs to: `vmlinux` or a module name.
    pub klp_object: &'a str,
}

#[derive(Debug, Clone)]
pub struct DiffOutput {
    pub report: Report,
    /// The output object, when the outcome is [`Outcome::Changed`].
    pub object: Option<Vec<u8>>,
}

/// Aliases are one function: `__x64_sys_getppid` is another name of `__do_sys_getppid` (a
/// system call without arguments on x86_64). The kernel keeps one `func_stack` per address,
/// so a livepatch that replaced both names would push two functions on it, and a task still
/// on the old code during the transition, which the kernel sends to the entry below the top,
/// would run the new code of the second name. Of the changed functions whose originals share
/// a section and an offset, one replaces the original: the global name if there is one (what
/// the rest of the kernel calls), else the first by name; the others stay in the output as code.
fn replace_aliases_once(
    orig: &Object,
    functions: &mut [FunctionReport],
    replaced: &[Option<SymbolId>],
) {
    let mut by_place: BTreeMap<(elf::SectionId, u64), Vec<usize>> = BTreeMap::new();
    for (index, function) in functions.iter().enumerate() {
        let Some(symbol) = replaced[index].filter(|_| function.replaces.is_some()) else {
            continue;
        };
        let symbol = orig.symbol(symbol);
        if let Some(section) = symbol.section() {
            by_place
                .entry((section, symbol.value))
                .or_default()
                .push(index);
        }
    }
    for aliases in by_place.values().filter(|a| a.len() > 1) {
        let rank = |&index: &usize| {
            let symbol = replaced[index].map(|s| orig.symbol(s));
            let local = symbol.is_none_or(|s| s.binding == Binding::Local);
            (local, functions[index].name.clone())
        };
        let Some(&kept) = aliases.iter().min_by_key(|index| rank(index)) else {
            continue;
        };
        for &index in aliases.iter().filter(|&&index| index != kept) {
            functions[index].replaces = None;
        }
    }
}

/// Whether a section holds ordinary data (`.data`, `.rodata`, `.bss` and their
/// `-fdata-sections` and attribute forms), whose objects the diff judges one by one.
fn is_ordinary_data(name: &str) -> bool {
    [
        ".data",
        ".rodata",
        ".bss",
        ".ref.data",
        ".init.data",
        ".exit.data",
    ]
    .iter()
    .any(|prefix| {
        name == *prefix
            || name
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// Sections kpatch-rs does not know whose entries describe copied code: entries of an
/// allocated, non-code section that is not copied itself and that point into copied code,
/// anonymous ones (covered by no symbol) anywhere and named ones outside ordinary data. The kernel reads such a table for the code it describes
/// (as it reads `.parainstructions` or `__ex_table`); a copy without its entries could
/// behave differently, so the pair is refused, naming the section.
fn unknown_tables(patched: &Object, inclusion: &include::Inclusion) -> Vec<compare::Refusal> {
    let mut refusals = Vec::new();
    for section in &patched.sections {
        if !section.is_alloc()
            || section.is_exec()
            || special_sections::is_special(&section.name)
            || special_sections::is_ubsan_data(&section.name)
            || inclusion.pieces.contains_key(&section.id)
        {
            continue;
        }
        let symbols = patched.symbols_in(section.id);
        let ordinary = is_ordinary_data(&section.name);
        let described = section.relocations.iter().find(|relocation| {
            // In ordinary data, a named object pointing at code is data like any other (an
            // ops table); in another section it is an entry of a table the kernel reads.
            let named = symbols.iter().any(|&s| {
                let symbol = patched.symbol(s);
                symbol.value <= relocation.offset
                    && relocation.offset < symbol.value.saturating_add(symbol.size.max(1))
            });
            if named && ordinary {
                return false;
            }
            let Some(target) = patched.symbol(relocation.symbol).section() else {
                return false;
            };
            let address =
                (patched.symbol(relocation.symbol).value as i64).saturating_add(relocation.addend);
            patched.section(target).is_exec()
                && u64::try_from(address).is_ok_and(|a| inclusion.covers(target, a))
        });
        if let Some(relocation) = described {
            refusals.push(compare::Refusal {
                object: patched.name.clone(),
                section: section.name.clone(),
                symbol: String::new(),
                reason: format!(
                    "section {} has an entry (at {:#x}) describing code the patch copies, and \
                     kpatch-rs does not know what the kernel does with it",
                    section.name, relocation.offset
                ),
            });
        }
    }
    refusals
}

/// How a diff treats the data layout of the types the objects describe (see [`layout`]).
#[derive(Debug, Clone, Default)]
pub struct DiffOptions {
    /// Refuse a pair whose original has no DWARF, instead of reporting the layout unchecked:
    /// `kpatch-rs build` compiles every unit with debug information, so there it must be.
    pub require_dwarf: bool,
    /// Types whose layout change the user accepted (`--allow-layout-change`): reported,
    /// not refused.
    pub allowed_layout_changes: Vec<String>,
    /// The kernel's layouts of the special sections' entries; Linux 6.12 x86_64's when
    /// `None` (objects diffed without their kernel).
    pub kernel_layout: Option<special_sections::KernelLayout>,
}

/// Diffs one pair, the data layout checked where the objects carry DWARF.
pub fn diff(pair: &Pair<'_>) -> Result<DiffOutput, DiffError> {
    diff_with(pair, &DiffOptions::default())
}

/// Diffs one pair with `options`.
pub fn diff_with(pair: &Pair<'_>, options: &DiffOptions) -> Result<DiffOutput, DiffError> {
    let mut orig = Object::parse(pair.orig_name, pair.orig)?;
    let mut patched = Object::parse(pair.name, pair.patched)?;
    patched.name = pair.name.to_string();
    let default_layout;
    let kernel_layout = match &options.kernel_layout {
        Some(layout) => layout,
        None => {
            default_layout = special_sections::KernelLayout::linux_6_12_x86_64();
            &default_layout
        }
    };
    let mut table_refusals = Vec::new();
    for object in [&mut orig, &mut patched] {
        match special_sections::read_tables(object, kernel_layout) {
            Ok(tables) => object.tables = tables,
            Err(special_sections::TableError::Unknown { section, reason }) => {
                table_refusals.push(compare::Refusal {
                    object: pair.name.to_string(),
                    section: section.clone(),
                    symbol: String::new(),
                    reason: format!("special section {section}: {reason}"),
                });
            }
            Err(error @ special_sections::TableError::Malformed { .. }) => {
                return Err(DiffError::Table {
                    object: object.name.clone(),
                    message: format!(
                        "{error}; the objects do not match the kernel layout kpatch-rs was \
                         given (built for another kernel?)"
                    ),
                });
            }
        }
    }
    if !table_refusals.is_empty() {
        table_refusals.dedup_by(|a, b| a.section == b.section);
    }
    let twins = correlate::correlate(&orig, &patched);
    let mut comparison = compare::compare(&orig, &patched, &twins);
    comparison.refusals.extend(table_refusals);
    let layout = check_layout(pair, &orig, &patched, options);
    comparison.refusals.extend(layout.refusals);
    let mut ignored = ignore_by_author(&patched, &mut comparison);
    ignored.extend(changed_boot_data(&orig, &patched, &twins));

    let mut functions = Vec::new();
    // The original function each entry of `functions` replaces, for `replace_aliases_once`.
    let mut replaced = Vec::new();
    let mut line_only = Vec::new();
    let mut left_out = ignored;
    for verdict in &comparison.functions {
        let symbol = patched.symbol(verdict.patched);
        let section = compare::section_name_of(&patched, verdict.patched).to_string();
        if special_sections::is_dropped(&section) {
            // New boot-time functions never run in a patched kernel; changed ones are refused
            // (compare). A changed `__exit` function runs only when its module unloads, from
            // the module's own copy, which no livepatch replaces.
            // `cleanup_module` is module_exit()'s alias of the same function.
            let alias = matches!(symbol.name.as_str(), "cleanup_module" | "init_module");
            if verdict.status != Status::Same && !section.starts_with(".init.") && !alias {
                left_out.push(format!(
                    "{} function {} in {section}, which a livepatch does not replace",
                    verdict.status.as_str(),
                    symbol.name
                ));
            }
            continue;
        }
        if verdict.line_only {
            line_only.push(symbol.name.clone());
        }
        if verdict.status == Status::Same || correlate::cold_parent(&symbol.name).is_some() {
            // A `.cold` part is reported through its parent, which is what gets replaced.
            continue;
        }
        functions.push(FunctionReport {
            name: symbol.name.clone(),
            symbol: output::function_alias(pair.name, &symbol.name),
            status: verdict.status,
            section,
            // A function ftrace cannot hook is carried as code for its replaced callers,
            // never replaced itself (see `compare::calls_fentry`).
            replaces: verdict
                .orig
                .filter(|_| compare::calls_fentry(&patched, verdict.patched))
                .map(|o| Replaced {
                    name: orig.symbol(o).name.clone(),
                    object: pair.klp_object.to_string(),
                }),
            difference: verdict.difference.clone(),
        });
        replaced.push(verdict.orig);
    }
    replace_aliases_once(&orig, &mut functions, &replaced);

    let outcome = if !comparison.refusals.is_empty() {
        Outcome::Unpatchable
    } else if functions.is_empty() {
        Outcome::NoChange
    } else {
        Outcome::Changed
    };
    let mut report = Report {
        object: pair.name.to_string(),
        klp_object: pair.klp_object.to_string(),
        outcome,
        functions,
        line_only,
        left_out,
        data: Vec::new(),
        special_entries: BTreeMap::new(),
        dropped_entries: BTreeMap::new(),
        module_keys: Vec::new(),
        references: Vec::new(),
        refusals: comparison.refusals.clone(),
        layout_checked: layout.checked,
        layout_changes_allowed: layout.allowed,
    };
    if outcome != Outcome::Changed {
        return Ok(DiffOutput {
            report,
            object: None,
        });
    }

    comparison
        .functions
        .retain(|v| !special_sections::is_dropped(compare::section_name_of(&patched, v.patched)));
    let inclusion = include::include(&patched, &comparison, pair.klp_object != "vmlinux");
    let unknown = unknown_tables(&patched, &inclusion);
    if !unknown.is_empty() {
        report.refusals.extend(unknown);
        report.outcome = Outcome::Unpatchable;
        return Ok(DiffOutput {
            report,
            object: None,
        });
    }
    report.data = inclusion
        .symbols
        .iter()
        .filter(|&&s| patched.symbol(s).kind == SymbolKind::Object)
        .map(|&s| patched.symbol(s).name.clone())
        .collect();
    for (&section, kept) in &inclusion.entries {
        report
            .special_entries
            .insert(patched.section(section).name.clone(), kept.len());
    }
    for (&section, dropped) in &inclusion.dropped {
        report
            .dropped_entries
            .insert(patched.section(section).name.clone(), dropped.len());
    }
    for &(table, entry, key) in &inclusion.external_keys {
        let (function, offset) = include::field_address(&patched, table, entry)
            .and_then(|(section, address)| {
                patched.symbols_in(section).iter().find_map(|&id| {
                    let symbol = patched.symbol(id);
                    (symbol.kind == SymbolKind::Func
                        && symbol.value <= address
                        && address < symbol.value + symbol.size.max(1))
                    .then(|| (symbol.name.clone(), address - symbol.value))
                })
            })
            .unwrap_or_else(|| ("?".to_string(), 0));
        report.module_keys.push(ModuleKey {
            section: patched.section(table).name.clone(),
            function,
            offset,
            key: output::external_name(&orig, &patched, &twins, key),
        });
    }
    let mut references: BTreeMap<String, Reference> = BTreeMap::new();
    for &symbol in &inclusion.external {
        let name = output::external_name(&orig, &patched, &twins, symbol);
        let binding = twins
            .symbol(symbol)
            .map(|o| orig.symbol(o))
            .filter(|o| o.section().is_some())
            .map(|o| o.binding);
        let resolution = if binding == Some(Binding::Local) {
            Resolution::Livepatch
        } else {
            Resolution::UnlessExported
        };
        references.insert(
            name.clone(),
            Reference {
                name,
                binding,
                resolution,
            },
        );
    }
    report.references = references.into_values().collect();

    let metadata = serde_json::to_vec(&report).map_err(|e| DiffError::Write {
        object: pair.name.to_string(),
        message: e.to_string(),
    })?;
    let aliases: Vec<(SymbolId, String)> = comparison
        .functions
        .iter()
        .filter(|v| v.status != Status::Same)
        .filter(|v| correlate::cold_parent(&patched.symbol(v.patched).name).is_none())
        .map(|v| {
            let name = &patched.symbol(v.patched).name;
            (v.patched, output::function_alias(pair.name, name))
        })
        .collect();
    let object = output::write_object(&orig, &patched, &twins, &inclusion, &aliases, &metadata)
        .map_err(|message| DiffError::Write {
            object: pair.name.to_string(),
            message,
        })?;
    Ok(DiffOutput {
        report,
        object: Some(object),
    })
}

/// The functions a patch author told the diff to leave alone, with kpatch-macros.h's
/// `KPATCH_IGNORE_FUNCTION(f)` (a pointer to `f` in `.kpatch.ignore.functions`) and
/// `KPATCH_IGNORE_SECTION(".text.f")` (a pointer to the name in `.kpatch.ignore.sections`):
/// they count as unchanged, so they are neither replaced nor copied.
fn ignore_by_author(patched: &Object, comparison: &mut compare::Comparison) -> Vec<String> {
    let mut functions: Vec<SymbolId> = Vec::new();
    let mut sections: Vec<String> = Vec::new();
    for section in &patched.sections {
        let by_name = match section.name.as_str() {
            ".kpatch.ignore.functions" => false,
            ".kpatch.ignore.sections" => true,
            _ => continue,
        };
        for relocation in &section.relocations {
            match patched.resolve(relocation) {
                elf::RelocationTarget::Symbol { symbol, .. } if !by_name => functions.push(symbol),
                elf::RelocationTarget::String {
                    section,
                    string_start,
                    ..
                } if by_name => sections.push(
                    String::from_utf8_lossy(patched.string_at(section, string_start)).into_owned(),
                ),
                _ => {}
            }
        }
    }
    let mut left_out = Vec::new();
    if functions.is_empty() && sections.is_empty() {
        return left_out;
    }
    for verdict in &mut comparison.functions {
        let section = compare::section_name_of(patched, verdict.patched);
        let ignored = functions.contains(&verdict.patched) || sections.iter().any(|s| s == section);
        if ignored && verdict.orig.is_some() {
            if verdict.status != Status::Same {
                left_out.push(format!(
                    "{} function {}, which the patch ignores (KPATCH_IGNORE_FUNCTION or \
                     KPATCH_IGNORE_SECTION)",
                    verdict.status.as_str(),
                    patched.symbol(verdict.patched).name
                ));
            }
            verdict.status = Status::Same;
            verdict.line_only = false;
            comparison.status.insert(verdict.patched, Status::Same);
        }
    }
    left_out
}

/// Boot-time data (`__initdata`, `__initconst`: a DMI quirk table, a command-line default)
/// whose contents changed: used only while the kernel or the module initialises, so no
/// livepatch can carry the change, and a patch whose only change is there changes nothing.
/// Named in the report so that the no-change verdict says why.
fn changed_boot_data(orig: &Object, patched: &Object, twins: &correlate::Twins) -> Vec<String> {
    let mut left_out = Vec::new();
    for symbol in patched
        .symbols
        .iter()
        .filter(|s| s.kind == SymbolKind::Object)
    {
        let Some(section) = symbol.section().map(|s| patched.section(s)) else {
            continue;
        };
        if !section.name.starts_with(".init.") {
            continue;
        }
        let bytes = |object: &Object, symbol: &elf::Symbol| {
            let section = symbol.section().map(|s| object.section(s))?;
            let start = usize::try_from(symbol.value).ok()?;
            let end = start.checked_add(usize::try_from(symbol.size).ok()?)?;
            section.data.get(start..end).map(<[u8]>::to_vec)
        };
        let twin = twins
            .symbol(symbol.id)
            .map(|o| orig.symbol(o))
            .filter(|o| o.section().is_some());
        let changed = match twin {
            None => false,
            Some(o) => o.size != symbol.size || bytes(orig, o) != bytes(patched, symbol),
        };
        if changed {
            left_out.push(format!(
                "changed boot-time data {} in {}, used only while the kernel or the module \
                 initialises",
                symbol.name, section.name
            ));
        }
    }
    left_out
}

/// Diffs many pairs in parallel; results come back in the order of `pairs`.
pub fn diff_all(pairs: &[Pair<'_>]) -> Vec<Result<DiffOutput, DiffError>> {
    diff_all_with(pairs, &DiffOptions::default())
}

/// Diffs many pairs in parallel with `options`.
pub fn diff_all_with(
    pairs: &[Pair<'_>],
    options: &DiffOptions,
) -> Vec<Result<DiffOutput, DiffError>> {
    pairs
        .par_iter()
        .map(|pair| diff_with(pair, options))
        .collect()
}

/// The layout check of one pair: its refusals, the changes the user allowed, and whether
/// the original's DWARF was there to check.
struct LayoutVerdict {
    checked: bool,
    refusals: Vec<compare::Refusal>,
    allowed: Vec<layout::LayoutChange>,
}

fn check_layout(
    pair: &Pair<'_>,
    orig: &Object,
    patched: &Object,
    options: &DiffOptions,
) -> LayoutVerdict {
    let refusal = |symbol: &str, reason: String| compare::Refusal {
        object: pair.name.to_string(),
        section: ".debug_info".to_string(),
        symbol: symbol.to_string(),
        reason,
    };
    let mut verdict = LayoutVerdict {
        checked: false,
        refusals: Vec::new(),
        allowed: Vec::new(),
    };
    if !layout::has_dwarf(orig) || !layout::has_dwarf(patched) {
        if options.require_dwarf {
            verdict.refusals.push(refusal(
                "",
                "the objects carry no DWARF, so the data layout of the types the original \
                 code uses cannot be checked (they must be compiled with -g)"
                    .to_string(),
            ));
        }
        return verdict;
    }
    let types = layout::read_types(orig).and_then(|o| Ok((o, layout::read_types(patched)?)));
    let (old, new) = match types {
        Ok(types) => types,
        Err(error) => {
            verdict.refusals.push(refusal(
                "",
                format!("{error}, so the data layout cannot be checked"),
            ));
            return verdict;
        }
    };
    verdict.checked = true;
    for change in layout::changes(&old, &new) {
        if options.allowed_layout_changes.contains(&change.type_name) {
            verdict.allowed.push(change);
        } else {
            verdict
                .refusals
                .push(refusal(&change.type_name, change.reason()));
        }
    }
    verdict
}
