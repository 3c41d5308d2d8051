//! Writing the output object: the included bytes of the patched object as a relocatable
//! x86_64 ELF file, built with `object::write`.
//!
//! Each included range keeps its section name, flags and alignment; ranges of one section are
//! packed in order with their alignment kept (a range starting at offset `s` lands at an
//! offset congruent to `s` modulo the section alignment). References to what stays in the
//! original binary become undefined symbols named as in the original object, so the module
//! generator can turn them into livepatch relocations. The diff metadata rides along in the
//! non-allocated section `.kpatch.diff` (see ARCHITECTURE.md).

use std::collections::{BTreeMap, HashMap};

use object::write::{self, Relocation as WriteRelocation, Symbol as WriteSymbol};
use object::{
    elf, Architecture, BinaryFormat, Endianness, RelocationFlags, SectionFlags, SectionKind,
    SymbolFlags, SymbolScope,
};

use crate::correlate::Twins;
use crate::elf::{Binding, Object, RelocationTarget, SectionId, SymbolId, SymbolKind};
use crate::include::Inclusion;

/// Prefix of the global alias every changed or new function gets in the output:
/// `kpatch_rs.<object>.<function>`, e.g. `kpatch_rs.fs/proc/cmdline.o.cmdline_proc_show`.
/// C reaches it with `extern int f(...) __asm__("kpatch_rs.fs/proc/cmdline.o.f");`.
pub const FUNCTION_ALIAS_PREFIX: &str = "kpatch_rs.";

/// The alias of `function` from `object`.
pub fn function_alias(object: &str, function: &str) -> String {
    format!("{FUNCTION_ALIAS_PREFIX}{object}.{function}")
}

/// Name of the section that carries the diff metadata (one NUL-terminated JSON document per
/// diffed object; `ld -r` concatenates them).
pub const METADATA_SECTION: &str = ".kpatch.diff";

/// Where an old section offset went in the output.
#[derive(Debug, Default)]
struct Layout {
    /// `(old_start, old_end, new_start)` for each copied range.
    ranges: Vec<(u64, u64, u64)>,
}

impl Layout {
    fn map(&self, offset: u64) -> Option<u64> {
        self.ranges
            .iter()
            .find(|&&(start, end, _)| offset >= start && offset < end)
            .map(|&(start, _, new_start)| new_start + (offset - start))
    }

    /// Like [`Layout::map`], also accepting the end of a range (a symbol or label placed
    /// right after the copied bytes).
    fn map_inclusive(&self, offset: u64) -> Option<u64> {
        self.map(offset).or_else(|| {
            self.ranges
                .iter()
                .find(|&&(_, end, _)| offset == end)
                .map(|&(start, _, new_start)| new_start + (offset - start))
        })
    }
}

/// The output object, or why it could not be written.
pub fn write_object(
    orig: &Object,
    patched: &Object,
    twins: &Twins,
    inclusion: &Inclusion,
    aliases: &[(SymbolId, String)],
    metadata: &[u8],
) -> Result<Vec<u8>, String> {
    let mut out = write::Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    let mut out_sections: HashMap<SectionId, write::SectionId> = HashMap::new();
    let mut layouts: HashMap<SectionId, Layout> = HashMap::new();

    // Sections in the patched object's order, so the output does not depend on hash order.
    let mut copied: BTreeMap<SectionId, Vec<(u64, u64)>> = inclusion.pieces.clone();
    for (&section, kept) in &inclusion.entries {
        let Some(table) = patched.tables.get(&section) else {
            continue;
        };
        let ranges = kept
            .iter()
            .map(|&i| {
                let end = ((i + 1) * table.entry_size).min(patched.section(section).size);
                (i * table.entry_size, end)
            })
            .collect();
        copied.insert(section, ranges);
        // `.orc_unwind` runs in parallel with `.orc_unwind_ip`: keep the same entries.
        if let Some((parallel_name, parallel_size)) = table.parallel {
            if let Some(parallel) = patched.sections.iter().find(|s| s.name == parallel_name) {
                let ranges = kept
                    .iter()
                    .map(|&i| (i * parallel_size, (i + 1) * parallel_size))
                    .filter(|&(_, end)| end <= parallel.size)
                    .collect();
                copied.insert(parallel.id, ranges);
            }
        }
    }

    for (&section_id, ranges) in &copied {
        let section = patched.section(section_id);
        let kind = if section.is_nobits() {
            SectionKind::UninitializedData
        } else if section.is_string_merge() {
            SectionKind::ReadOnlyString
        } else if section.is_exec() {
            SectionKind::Text
        } else if section.is_write() {
            SectionKind::Data
        } else {
            SectionKind::ReadOnlyData
        };
        let out_id = out.add_section(Vec::new(), section.name.as_bytes().to_vec(), kind);
        let mut sh_flags = section.flags;
        // Section groups are not written, so no section may claim to be in one.
        sh_flags &= !elf::SHF_GROUP.0;
        if section.is_merge() && !section.is_string_merge() {
            // The writer records entry sizes only for strings; without one, merging is invalid,
            // and copies of constants need no merging.
            sh_flags &= !elf::SHF_MERGE.0;
        }
        out.section_mut(out_id).flags = SectionFlags::Elf {
            sh_type: elf::SectionType(section.sh_type),
            sh_flags: elf::SectionFlags(sh_flags),
        };
        let align = section.align.max(1);
        let mut layout = Layout::default();
        let mut data: Vec<u8> = Vec::new();
        let mut size: u64 = 0;
        for &(start, end) in ranges {
            // Keep each range's alignment phase so every symbol inside stays aligned.
            let phase = start % align;
            let mut new_start = size - size % align + phase;
            if new_start < size {
                new_start += align;
            }
            if !section.is_nobits() {
                data.resize(new_start as usize, pad_byte(section.is_exec()));
                data.extend_from_slice(&section.data[start as usize..end as usize]);
            }
            size = new_start + (end - start);
            layout.ranges.push((start, end, new_start));
        }
        if section.is_nobits() {
            out.append_section_bss(out_id, size, align);
        } else {
            out.set_section_data(out_id, data, align);
        }
        out_sections.insert(section_id, out_id);
        layouts.insert(section_id, layout);
    }

    // Defined symbols: every function and object in copied bytes.
    let mut out_symbols: HashMap<SymbolId, write::SymbolId> = HashMap::new();
    for &symbol_id in &inclusion.symbols {
        let symbol = patched.symbol(symbol_id);
        let Some(section) = symbol.section() else {
            continue;
        };
        let (Some(&out_section), Some(layout)) =
            (out_sections.get(&section), layouts.get(&section))
        else {
            continue;
        };
        let Some(value) = layout.map_inclusive(symbol.value) else {
            continue;
        };
        let id = out.add_symbol(WriteSymbol {
            name: symbol.name.as_bytes().to_vec(),
            value,
            size: symbol.size,
            kind: if symbol.kind == SymbolKind::Func {
                object::SymbolKind::Text
            } else {
                object::SymbolKind::Data
            },
            scope: if symbol.binding == Binding::Local {
                SymbolScope::Compilation
            } else {
                // `Linkage` would make the symbol hidden; kernel objects use default visibility.
                SymbolScope::Dynamic
            },
            weak: symbol.binding == Binding::Weak,
            section: write::SymbolSection::Section(out_section),
            flags: SymbolFlags::None,
        });
        out_symbols.insert(symbol_id, id);
    }

    // A global alias per changed or new function, so the module generator can name a static
    // function of any object without clashes (see FUNCTION_ALIAS_PREFIX).
    for (symbol_id, alias) in aliases {
        let Some(&defined) = out_symbols.get(symbol_id) else {
            return Err(format!("function {alias} was not copied"));
        };
        let original = out.symbol(defined);
        let symbol = WriteSymbol {
            name: alias.as_bytes().to_vec(),
            value: original.value,
            size: original.size,
            kind: original.kind,
            scope: SymbolScope::Dynamic,
            weak: false,
            section: original.section,
            flags: SymbolFlags::None,
        };
        out.add_symbol(symbol);
    }

    // Relocations of every copied range.
    let mut undefined: HashMap<String, write::SymbolId> = HashMap::new();
    for (&section_id, ranges) in &copied {
        let (Some(&out_section), Some(layout)) =
            (out_sections.get(&section_id), layouts.get(&section_id))
        else {
            return Err(format!(
                "section {} was not laid out",
                patched.section(section_id).name
            ));
        };
        // Instructions refer to their target minus the bytes after the displacement; table
        // fields (`.long 6641f - .`) refer to it directly.
        for &(start, end) in ranges {
            for relocation in patched.relocations_in(section_id, start, end) {
                let bias = patched.reference_bias(relocation);
                let Some(offset) = layout.map(relocation.offset) else {
                    continue;
                };
                let (symbol, addend) = match patched.resolve(relocation) {
                    RelocationTarget::Symbol {
                        symbol,
                        offset: delta,
                    } => {
                        // A reference the assembler wrote through a section symbol (or a local
                        // label) stays one: objtool reads `jmp .text.foo+0x40b` in replacement
                        // code as a jump inside foo but `jmp foo+0x3fb` as a sibling call, and
                        // requires section symbols in its annotations.
                        let written = patched.symbol(relocation.symbol);
                        let section_relative = written.kind == SymbolKind::Section
                            || (written.kind == SymbolKind::NoType
                                && written.binding == Binding::Local
                                && written.section().is_some());
                        let through_section = section_relative
                            .then(|| {
                                let section = written.section()?;
                                let raw = (written.value as i64).checked_add(relocation.addend)?;
                                let layout = layouts.get(&section)?;
                                let mapped = mapped_addend(layout, raw, bias)?;
                                Some((*out_sections.get(&section)?, mapped))
                            })
                            .flatten();
                        if let (Some(&_), Some((out_target, mapped))) =
                            (out_symbols.get(&symbol), through_section)
                        {
                            (out.section_symbol(out_target), mapped)
                        } else if let Some(&out_symbol) = out_symbols.get(&symbol) {
                            (out_symbol, delta)
                        } else {
                            let sym = patched.symbol(symbol);
                            if let (Some(section), SymbolKind::Section | SymbolKind::NoType) =
                                (sym.section(), sym.kind)
                            {
                                // A label in a copied section: point at the copy.
                                let address = sym.value as i64 + delta;
                                let mapped = layouts.get(&section).and_then(|p| {
                                    p.map_inclusive(u64::try_from(address.max(0)).unwrap_or(0))
                                });
                                match (out_sections.get(&section), mapped) {
                                    (Some(&out_target), Some(mapped)) => {
                                        (out.section_symbol(out_target), mapped as i64)
                                    }
                                    _ => {
                                        return Err(format!(
                                            "relocation at {}+{:#x} refers to {}+{:#x}, which was not copied",
                                            patched.section(section_id).name,
                                            relocation.offset,
                                            patched.section(section).name,
                                            address
                                        ))
                                    }
                                }
                            } else {
                                let name = external_name(orig, patched, twins, symbol);
                                let kind = if sym.kind == SymbolKind::Func {
                                    object::SymbolKind::Text
                                } else {
                                    object::SymbolKind::Data
                                };
                                let id = *undefined.entry(name.clone()).or_insert_with(|| {
                                    out.add_symbol(WriteSymbol {
                                        name: name.into_bytes(),
                                        value: 0,
                                        size: 0,
                                        kind,
                                        scope: SymbolScope::Dynamic,
                                        weak: false,
                                        section: write::SymbolSection::Undefined,
                                        flags: SymbolFlags::None,
                                    })
                                });
                                (id, delta)
                            }
                        }
                    }
                    target @ (RelocationTarget::String { section, .. }
                    | RelocationTarget::Section { section, .. }) => {
                        let section_addend = match target {
                            RelocationTarget::String {
                                string_start,
                                offset,
                                ..
                            } => string_start as i64 + offset,
                            RelocationTarget::Section { addend, .. } => addend,
                            RelocationTarget::Symbol { offset, .. } => offset,
                        };
                        let (Some(&out_target), Some(layout)) =
                            (out_sections.get(&section), layouts.get(&section))
                        else {
                            return Err(format!(
                                "relocation at {}+{:#x} refers to section {}, which was not copied",
                                patched.section(section_id).name,
                                relocation.offset,
                                patched.section(section).name
                            ));
                        };
                        // A section copied whole keeps its offsets, even for addends outside
                        // it (`lea .LC0-4(%rip)`); one copied in parts (replacement code of
                        // kept alternatives) maps the referenced address.
                        let whole = layout.ranges.len() == 1
                            && layout.ranges[0] == (0, patched.section(section).size, 0);
                        let addend = if whole {
                            section_addend
                        } else {
                            match mapped_addend(layout, section_addend, bias) {
                                Some(mapped) => mapped,
                                None => {
                                    return Err(format!(
                                        "relocation at {}+{:#x} refers to {}+{:#x}, which was not copied",
                                        patched.section(section_id).name,
                                        relocation.offset,
                                        patched.section(section).name,
                                        section_addend
                                    ))
                                }
                            }
                        };
                        (out.section_symbol(out_target), addend)
                    }
                };
                out.add_relocation(
                    out_section,
                    WriteRelocation {
                        offset,
                        symbol,
                        addend,
                        flags: RelocationFlags::Elf {
                            r_type: elf::RelocationType(relocation.r_type),
                        },
                    },
                )
                .map_err(|e| format!("cannot add relocation: {e}"))?;
            }
        }
    }

    let mut metadata_bytes = metadata.to_vec();
    metadata_bytes.push(0);
    let metadata_section = out.add_section(
        Vec::new(),
        METADATA_SECTION.as_bytes().to_vec(),
        SectionKind::Other,
    );
    out.section_mut(metadata_section).flags = SectionFlags::Elf {
        sh_type: elf::SHT_PROGBITS,
        sh_flags: elf::SectionFlags(0),
    };
    out.set_section_data(metadata_section, metadata_bytes, 1);
    // Every kernel object says its stack is not executable; so does this one.
    let gnu_stack = out.add_section(Vec::new(), b".note.GNU-stack".to_vec(), SectionKind::Other);
    out.section_mut(gnu_stack).flags = SectionFlags::Elf {
        sh_type: elf::SHT_PROGBITS,
        sh_flags: elf::SectionFlags(0),
    };
    let mut bytes = out.write().map_err(|e| format!("cannot write ELF: {e}"))?;
    link_ordered_sections(&mut bytes)?;
    Ok(bytes)
}

/// Sets `sh_link` of `SHF_LINK_ORDER` sections (`__patchable_function_entries`), which
/// `object::write` leaves 0, to the section their entries point into, as gas does. Without
/// it `ld` refuses to link the object with any other that has ordered entries ("has both
/// ordered and unordered sections").
fn link_ordered_sections(bytes: &mut [u8]) -> Result<(), String> {
    let object = Object::parse("output", bytes).map_err(|e| e.to_string())?;
    let mut links = Vec::new();
    for section in &object.sections {
        if section.flags & elf::SHF_LINK_ORDER.0 == 0 {
            continue;
        }
        let target = section
            .relocations
            .first()
            .and_then(|r| object.symbol(r.symbol).section());
        if let Some(target) = target {
            links.push((section.id.0, target.0 as u32));
        }
    }
    // The ELF64 header keeps e_shoff at offset 40; each 64-byte section header keeps
    // sh_link at offset 40.
    let section_headers = u64::from_le_bytes(
        bytes
            .get(40..48)
            .and_then(|b| b.try_into().ok())
            .ok_or("output has no ELF header")?,
    ) as usize;
    for (index, link) in links {
        let at = section_headers + index * 64 + 40;
        let field = bytes
            .get_mut(at..at + 4)
            .ok_or("output section header out of range")?;
        field.copy_from_slice(&link.to_le_bytes());
    }
    Ok(())
}

/// The addend that makes a relocation reach, in the output, the copy of what `addend` (plus
/// `bias`, the bytes after an instruction's displacement) reached in the input.
fn mapped_addend(layout: &Layout, addend: i64, bias: i64) -> Option<i64> {
    let with = |b: i64| {
        let address = u64::try_from(addend.checked_add(b)?).ok()?;
        layout
            .map_inclusive(address)
            .map(|mapped| mapped as i64 - b)
    };
    with(bias).or_else(|| with(0))
}

/// Padding between copied code ranges is `int3`, so that stray execution traps.
fn pad_byte(exec: bool) -> u8 {
    if exec {
        0xcc
    } else {
        0
    }
}

/// The name an external reference carries in the output: the original object's name for the
/// symbol (a static local `count.3` in the patched object may be `count.2` in the running
/// kernel), else the patched name (an undefined global).
pub fn external_name(orig: &Object, patched: &Object, twins: &Twins, symbol: SymbolId) -> String {
    match twins.symbol(symbol) {
        Some(orig_symbol) => orig.symbol(orig_symbol).name.clone(),
        None => patched.symbol(symbol).name.clone(),
    }
}
