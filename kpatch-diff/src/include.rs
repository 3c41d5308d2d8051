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
use crate::elf::{Binding, Object, Placement, RelocationTarget, SectionId, SymbolId, SymbolKind};
use crate::special_sections::{self, Table};

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
    /// Entries (by index) of special tables whose code is copied but which are left out on
    /// purpose: in a module klp object, static call sites and tracepoint jump labels whose
    /// key lies outside the output (see [`Closure::module_key`]).
    pub dropped: BTreeMap<SectionId, BTreeSet<u64>>,
    /// Kept jump labels of a module klp object whose key lies outside the output: the build,
    /// which knows the exports, refuses each one whose key would need a livepatch relocation.
    /// (table section, entry offset, key symbol)
    pub external_keys: BTreeSet<(SectionId, u64, SymbolId)>,
}

/// What to do with a special table entry of copied code in a module klp object.
enum ModuleKey {
    /// The entry has no key, or its key is copied with the code.
    Keep,
    /// The key lies outside the output, and without the entry the code is still right.
    Drop,
    /// The key lies outside the output, and only the build can tell whether it is reachable
    /// when the kernel reads the table.
    Judge(SymbolId),
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

/// Whether a local read-only object is one the compiler or a per-site macro made rather than
/// one the source names: `__func__` and its GNU spellings, switch tables (`CSWTCH.N`), and
/// the message strings of netlink's `NL_SET_ERR_MSG()` (`__msg.N`). No code takes their
/// address to compare it, so a copy cannot be told from the original.
pub fn is_compiler_constant(name: &str) -> bool {
    let base = name.split('.').next().unwrap_or(name);
    match base {
        "__func__" | "__FUNCTION__" | "__PRETTY_FUNCTION__" | "CSWTCH" => true,
        // Only the macro's numbered static; a source's own `__msg` stays the kernel's.
        "__msg" => name.len() > base.len(),
        _ => false,
    }
}

/// The address the relocation of the field at `field` in `section` points at (data fields
/// such as `.long 1b - .` carry no PC bias).
pub fn field_address(object: &Object, section: SectionId, field: u64) -> Option<(SectionId, u64)> {
    let relocation = object.relocations_in(section, field, field + 1).first()?;
    let symbol = object.symbol(relocation.symbol);
    let target_section = symbol.section()?;
    let address = (symbol.value as i64).checked_add(relocation.addend)?;
    Some((target_section, u64::try_from(address).ok()?))
}

struct Closure<'a> {
    patched: &'a Object,
    comparison: &'a Comparison,
    /// Whether the klp object is a module rather than vmlinux.
    module_target: bool,
    inclusion: Inclusion,
    /// Ranges whose relocations still have to be followed.
    pending: Vec<(SectionId, u64, u64)>,
    /// Where each piece of `.fixup` code starts ([`fixup_starts`]).
    fixup_starts: Vec<u64>,
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
                    || (sym.binding == Binding::Local
                        && special_sections::is_disposable_static_local(&sym.name))
                    || (read_only
                        && (status == Some(Status::Changed)
                            || (sym.binding == Binding::Local && is_compiler_constant(&sym.name))))
            }
            _ => true,
        }
    }

    fn follow(&mut self, target: RelocationTarget) {
        match target {
            RelocationTarget::Symbol { symbol, .. } => {
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
            RelocationTarget::String { section, .. }
            | RelocationTarget::Section { section, .. } => {
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
        field_address(self.patched, section, field)
    }

    /// The rule for special entries of a module klp object that name a key.
    ///
    /// The module loader reads `__jump_table` and `.static_call_sites` while the livepatch
    /// module itself loads, but a livepatch relocation into a module klp object is applied
    /// only later, when that module comes: an entry whose key needs one is read with a key
    /// of zero (`static_call_del_module` then faults on it, and the loader later finds the
    /// call site already rewritten: "existing value is nonzero"). vmlinux klp objects do not
    /// have the problem: their livepatch relocations are applied while the module loads.
    ///
    /// A static call site is only an optimisation: without its entry the call still goes
    /// through the trampoline, which always calls the current target. A tracepoint's jump
    /// label without its entry keeps its compiled state, off: the patched code does not
    /// trace, and does nothing else differently. Every other jump label is judged by the build.
    fn module_key(&self, table: SectionId, entry: u64) -> ModuleKey {
        if !self.module_target {
            return ModuleKey::Keep;
        }
        let table_name = self.patched.section(table).name.as_str();
        let Some(field) = self.patched.tables.get(&table).and_then(|t| t.key_field) else {
            return ModuleKey::Keep;
        };
        let Some(relocation) = self
            .patched
            .relocations_in(table, entry + field, entry + field + 1)
            .first()
        else {
            return ModuleKey::Keep;
        };
        let RelocationTarget::Symbol { symbol, .. } = self.patched.resolve(relocation) else {
            // A key inside a section of this object that is copied whole.
            return ModuleKey::Keep;
        };
        let sym = self.patched.symbol(symbol);
        let defined_here = sym.section().is_some();
        if defined_here && (self.must_copy(symbol) || sym.kind == SymbolKind::Section) {
            return ModuleKey::Keep;
        }
        if table_name == ".static_call_sites" || sym.name.starts_with("__tracepoint_") {
            ModuleKey::Drop
        } else {
            ModuleKey::Judge(symbol)
        }
    }

    /// Copies code a kept entry owns outside its function ([`site_piece`]).
    fn include_site_piece(&mut self, table: SectionId, entry: u64) {
        let Some(&found) = self.patched.tables.get(&table) else {
            return;
        };
        if let Some((section, start, end)) =
            site_piece(self.patched, table, &found, entry, &self.fixup_starts)
        {
            if self.inclusion.add_piece(section, start, end) {
                self.pending.push((section, start, end));
            }
        }
    }

    /// Keeps the entries of special tables whose code is copied, and follows what they need.
    /// Returns whether anything new was kept.
    fn keep_table_entries(&mut self) -> bool {
        let mut progress = false;
        for (&id, table) in &self.patched.tables {
            let section = self.patched.section(id);
            let count = table.entries;
            for index in 0..count {
                let seen = |entries: &BTreeMap<SectionId, BTreeSet<u64>>| {
                    entries
                        .get(&section.id)
                        .is_some_and(|done| done.contains(&index))
                };
                if seen(&self.inclusion.entries) || seen(&self.inclusion.dropped) {
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
                match self.module_key(section.id, start) {
                    ModuleKey::Keep => {}
                    ModuleKey::Drop => {
                        self.inclusion
                            .dropped
                            .entry(section.id)
                            .or_default()
                            .insert(index);
                        continue;
                    }
                    ModuleKey::Judge(key) => {
                        self.inclusion
                            .external_keys
                            .insert((section.id, start, key));
                    }
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
                    // The replacement is copied as its kept alternative says, never whole;
                    // fixup code in `.fixup` likewise (a fixup elsewhere is the function's).
                    let replacement = table
                        .replacement
                        .is_some_and(|(field, _)| relocation.offset == start + field);
                    let fixup = table.fixup_field.is_some_and(|field| {
                        relocation.offset == start + field
                            && field_address(self.patched, section.id, relocation.offset)
                                .is_some_and(|(s, _)| self.patched.section(s).name == ".fixup")
                    });
                    if replacement || fixup {
                        self.include_site_piece(section.id, start);
                        continue;
                    }
                    let target = self.patched.resolve(relocation);
                    self.follow(target);
                }
            }
        }
        progress
    }
}

/// Where each piece of `.fixup` code starts: every address an exception table entry's fixup
/// field points at in `.fixup`, sorted.
pub fn fixup_starts(object: &Object) -> Vec<u64> {
    let mut starts: Vec<u64> = object
        .tables
        .iter()
        .filter_map(|(&id, table)| Some((id, table, table.fixup_field?)))
        .flat_map(|(id, table, field)| {
            (0..table.entries)
                .filter_map(move |i| field_address(object, id, i * table.entry_size + field))
        })
        .filter(|&(section, _)| object.section(section).name == ".fixup")
        .map(|(_, address)| address)
        .collect();
    starts.sort_unstable();
    starts.dedup();
    starts
}

/// The code that the table entry at `entry` of `table_id` owns outside its function, as
/// (section, start, end): an alternative's replacement, as long as the entry's length byte
/// says, or an exception entry's fixup in `.fixup` (kernels before 5.17), from its start to
/// where the next entry's fixup starts (`fixup_starts`), since nothing else marks its end.
pub fn site_piece(
    object: &Object,
    table_id: SectionId,
    table: &Table,
    entry: u64,
    fixup_starts: &[u64],
) -> Option<(SectionId, u64, u64)> {
    let (section, start, end) = if let Some((field, length_byte)) = table.replacement {
        let (section, start) = field_address(object, table_id, entry + field)?;
        let length = object
            .section(table_id)
            .data
            .get(usize::try_from(entry + length_byte).ok()?)
            .copied()
            .unwrap_or(0);
        (section, start, start.saturating_add(u64::from(length)))
    } else {
        let (section, start) = field_address(object, table_id, entry + table.fixup_field?)?;
        if object.section(section).name != ".fixup" {
            return None;
        }
        let next = fixup_starts.iter().copied().find(|&s| s > start);
        (section, start, next.unwrap_or(object.section(section).size))
    };
    let end = end.min(object.section(section).size);
    Some((section, start.min(end), end))
}

/// Computes what the output object holds for the changed and new functions of `comparison`;
/// `module_target` says whether the klp object is a module (see [`Closure::module_key`]).
pub fn include(patched: &Object, comparison: &Comparison, module_target: bool) -> Inclusion {
    let mut closure = Closure {
        patched,
        comparison,
        module_target,
        inclusion: Inclusion::default(),
        pending: Vec::new(),
        fixup_starts: fixup_starts(patched),
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
