//! The closure of what changed code needs: which bytes of the patched object go into the
//! output, and which symbols the output refers to in the original binary instead.
//!
//! Changed and new functions are the roots. Each of their relocations is followed: a changed or
//! new function, a function's `.cold` part, new data, local or changed read-only data, dynamic
//! debug descriptors, strings and anonymous constants are copied; everything else that exists in the
//! original (unchanged functions, all existing writable data, which holds live state) stays
//! where it is and is referenced by name. Special section entries follow their code.

use std::collections::{BTreeMap, BTreeSet};

use crate::compare::{Comparison, Status};
use crate::correlate::cold_parent;
use crate::elf::{Binding, Object, Placement, SectionId, SymbolId, SymbolKind, Target};
use crate::special_sections;

/// What goes into the output object.
#[derive(Debug, Clone, Default)]
pub struct Inclusion {
    /// Byte ranges `[start, end)` of patched sections to copy, sorted and disjoint.
    pub pieces: BTreeMap<SectionId, Vec<(u64, u64)>>,
    /// Kept entries (by index) of special tables.
    pub entries: BTreeMap<SectionId, BTreeSet<u64>>,
    /// Function and object symbols copied into the output.
    pub symbols: BTreeSet<SymbolId>,
    /// Symbols referenced by copied bytes and left in the original binary.
    pub external: BTreeSet<SymbolId>,
}

impl Inclusion {
    /// Whether `address` in `section` lies in copied bytes.
    pub fn covers(&self, section: SectionId, address: u64) -> bool {
        self.pieces.get(&section).is_some_and(|ranges| {
            ranges
                .iter()
                .any(|&(start, end)| address >= start && address < end)
        })
    }

    fn add_piece(&mut self, section: SectionId, start: u64, end: u64) -> bool {
        let ranges = self.pieces.entry(section).or_default();
        if ranges.iter().any(|&(s, e)| s <= start && end <= e) {
            return false;
        }
        ranges.push((start, end));
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for &(s, e) in ranges.iter() {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        *ranges = merged;
        true
    }
}

/// Whether a local read-only object is one the compiler made rather than one the source
/// names: `__func__` and its GNU spellings, and switch tables (`CSWTCH.N`). No code can take
/// their address by name, so a copy cannot be told from the original.
pub fn is_compiler_constant(name: &str) -> bool {
    let base = name.split('.').next().unwrap_or(name);
    matches!(
        base,
        "__func__" | "__FUNCTION__" | "__PRETTY_FUNCTION__" | "CSWTCH"
    )
}

struct Closure<'a> {
    patched: &'a Object,
    comparison: &'a Comparison,
    inclusion: Inclusion,
    /// Ranges whose relocations still have to be followed.
    pending: Vec<(SectionId, u64, u64)>,
}

impl Closure<'_> {
    fn include_symbol(&mut self, symbol: SymbolId) {
        if !self.inclusion.symbols.insert(symbol) {
            return;
        }
        let Some(section) = self.patched.symbol(symbol).section() else {
            return;
        };
        let (start, end) = self.patched.extent(symbol);
        if self.inclusion.add_piece(section, start, end) {
            self.pending.push((section, start, end));
        }
        // Aliases at the same address come along, so references to them reach the copy.
        let value = self.patched.symbol(symbol).value;
        for &alias in self.patched.symbols_in(section) {
            if self.patched.symbol(alias).value == value {
                self.inclusion.symbols.insert(alias);
            }
        }
    }

    fn include_whole_section(&mut self, section: SectionId) {
        let size = self.patched.section(section).size;
        if self.inclusion.add_piece(section, 0, size) {
            self.pending.push((section, 0, size));
            for &symbol in self.patched.symbols_in(section) {
                self.inclusion.symbols.insert(symbol);
            }
        }
    }

    /// Whether a referenced symbol must be copied rather than referenced in the original.
    fn must_copy(&self, symbol: SymbolId) -> bool {
        let sym = self.patched.symbol(symbol);
        let Some(section) = sym.section() else {
            return false;
        };
        let status = self.comparison.status.get(&symbol).copied();
        match sym.kind {
            SymbolKind::Func if sym.is_prefix() => false,
            SymbolKind::Func => status != Some(Status::Same) || cold_parent(&sym.name).is_some(),
            SymbolKind::Object => {
                let read_only = !self.patched.section(section).is_write()
                    && !self.patched.section(section).is_nobits();
                // An unchanged named object stays the original's, read-only or not: unchanged
                // code compares its address (`io_is_uring_fops()` checks `f_op ==
                // &io_uring_fops`, `sock_from_file()` checks `&socket_file_ops`), and files
                // opened while the patch is loaded keep pointing at it after the module is
                // gone. Only the compiler's own constants, whose address no code can name, are
                // copied unchanged: they need no livepatch relocation, which matters in
                // sections the kernel reads before those are applied (`__dyndbg`).
                status == Some(Status::New)
                    || special_sections::is_dyndbg(&self.patched.section(section).name)
                    || (read_only
                        && (status == Some(Status::Changed)
                            || (sym.binding == Binding::Local && is_compiler_constant(&sym.name))))
            }
            _ => true,
        }
    }

    fn follow(&mut self, target: Target) {
        match target {
            Target::Symbol { symbol, .. } => {
                let sym = self.patched.symbol(symbol);
                if sym.kind == SymbolKind::Section || sym.kind == SymbolKind::NoType {
                    // A label or section without a covering function or object: copy the
                    // section it is in, if it is in this object.
                    match sym.placement {
                        Placement::Section(section) => self.include_whole_section(section),
                        _ => {
                            self.inclusion.external.insert(symbol);
                        }
                    }
                } else if self.must_copy(symbol) {
                    self.include_symbol(symbol);
                } else {
                    self.inclusion.external.insert(symbol);
                }
            }
            Target::String { section, .. } | Target::Section { section, .. } => {
                self.include_whole_section(section);
            }
        }
    }

    fn drain(&mut self) {
        while let Some((section, start, end)) = self.pending.pop() {
            for relocation in self.patched.relocations_in(section, start, end) {
                let target = self.patched.resolve(relocation);
                self.follow(target);
            }
        }
    }

    /// The address the relocation of the field at `field` in `section` points at (data
    /// fields such as `.long 1b - .` carry no PC bias).
    fn field_address(&self, section: SectionId, field: u64) -> Option<(SectionId, u64)> {
        let relocation = self
            .patched
            .relocations_in(section, field, field + 1)
            .first()?;
        let symbol = self.patched.symbol(relocation.symbol);
        let target_section = symbol.section()?;
        let address = (symbol.value as i64).checked_add(relocation.addend)?;
        Some((target_section, u64::try_from(address).ok()?))
    }

    /// Copies the replacement code of one kept alternative: `length` bytes (read from the
    /// entry) at the address its replacement field points at.
    fn include_replacement(&mut self, table: SectionId, entry: u64, field: u64, length_byte: u64) {
        let Some((section, address)) = self.field_address(table, entry + field) else {
            return;
        };
        let length = self
            .patched
            .section(table)
            .data
            .get((entry + length_byte) as usize)
            .copied()
            .unwrap_or(0);
        let end = address
            .saturating_add(u64::from(length))
            .min(self.patched.section(section).size);
        let start = address.min(end);
        if self.inclusion.add_piece(section, start, end) {
            self.pending.push((section, start, end));
        }
    }

    /// Keeps the entries of special tables whose code is copied, and follows what they need.
    /// Returns whether anything new was kept.
    fn keep_table_entries(&mut self) -> bool {
        let mut progress = false;
        for section in &self.patched.sections {
            let Some(table) = special_sections::table_for(&section.name) else {
                continue;
            };
            let count = section.size / table.entry_size;
            for index in 0..count {
                if self
                    .inclusion
                    .entries
                    .get(&section.id)
                    .is_some_and(|kept| kept.contains(&index))
                {
                    continue;
                }
                let start = index * table.entry_size;
                let Some((code_section, address)) =
                    self.field_address(section.id, start + table.code_field)
                else {
                    continue;
                };
                // objtool ends each section's ORC with an entry at the section's end address;
                // it belongs to the code before it.
                let section_end = self.patched.section(code_section).size;
                let covered = self.inclusion.covers(code_section, address)
                    || (address > 0
                        && address == section_end
                        && self.inclusion.covers(code_section, address - 1));
                if !covered {
                    continue;
                }
                self.inclusion
                    .entries
                    .entry(section.id)
                    .or_default()
                    .insert(index);
                progress = true;
                for relocation in
                    self.patched
                        .relocations_in(section.id, start, start + table.entry_size)
                {
                    if let Some((field, length_byte)) = table.replacement {
                        if relocation.offset == start + field {
                            self.include_replacement(section.id, start, field, length_byte);
                            continue;
                        }
                    }
                    let target = self.patched.resolve(relocation);
                    self.follow(target);
                }
            }
        }
        progress
    }
}

/// Computes what the output object holds for the changed and new functions of `comparison`.
pub fn include(patched: &Object, comparison: &Comparison) -> Inclusion {
    let mut closure = Closure {
        patched,
        comparison,
        inclusion: Inclusion::default(),
        pending: Vec::new(),
    };
    for verdict in &comparison.functions {
        if verdict.status != Status::Same {
            closure.include_symbol(verdict.patched);
        }
    }
    loop {
        closure.drain();
        if !closure.keep_table_entries() {
            break;
        }
    }
    closure.inclusion
}
