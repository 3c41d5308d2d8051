//! Changed, new or same: judging each function and data object of the patched object against
//! its twin, and refusing what cannot be live patched.
//!
//! Two functions are the same when their bytes are equal and their relocations are equal
//! symbolically: same offset, same type, and the same target symbol (by twin) with the same
//! addend, or the same string contents for references into merged string sections. Raw
//! relocation offsets into sections are never compared, since they move whenever anything
//! before them in the section changes.

use std::collections::{BTreeSet, HashMap};

use crate::correlate::{cold_parent, Twins};
use crate::elf::{Object, Relocation, RelocationTarget, SectionId, SymbolId, SymbolKind};
use crate::special_sections;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Same,
    Changed,
    New,
}

impl Status {
    /// The word reports use, as in the JSON: `same`, `changed`, `new`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Same => "same",
            Status::Changed => "changed",
            Status::New => "new",
        }
    }
}

#[derive(Debug, Clone)]
pub struct FunctionVerdict {
    pub patched: SymbolId,
    pub orig: Option<SymbolId>,
    pub status: Status,
    /// Equal except for `__LINE__` immediates passed to a line-taking function.
    pub line_only: bool,
    /// For a changed function: where it first differs from its twin.
    pub difference: String,
}

/// A change that cannot be live patched, with the object, section and symbol it concerns.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Refusal {
    pub object: String,
    pub section: String,
    pub symbol: String,
    pub reason: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot patch {}: {}", self.object, self.reason)
    }
}

#[derive(Debug, Clone)]
pub struct Comparison {
    /// One verdict per function defined in the patched object, in symbol table order.
    pub functions: Vec<FunctionVerdict>,
    /// Status of every function or object symbol defined in the patched object.
    pub status: HashMap<SymbolId, Status>,
    pub refusals: Vec<Refusal>,
}

/// Functions that take `(const char *file, int line, ...)`: a changed immediate passed to
/// them after an edit above the function is a moved line, nothing else.
const FILE_LINE_FUNCTIONS: &[&str] = &[
    "__might_sleep",
    "__might_resched",
    "__might_fault",
    "__cant_sleep",
    "__cant_migrate",
    "__warn",
    "warn_slowpath_fmt",
    "lockdep_rcu_suspicious",
    "__kunit_fail_current_test_impl",
];

/// Printing functions, which `pr_err("%s:%d", __FILE__, __LINE__)` reaches. An immediate
/// passed to them may be a line or a real constant, so a changed one counts as a moved line
/// only when the same object shows lines moving by the same amount elsewhere (a WARN's
/// `__bug_table` line, a `__might_sleep()` argument); otherwise the function is changed.
const PRINTING_FUNCTIONS: &[&str] = &[
    "_printk",
    "printk",
    "__warn_printk",
    "__dynamic_pr_debug",
    "__dynamic_dev_dbg",
    "_dev_printk",
    "_dev_emerg",
    "_dev_alert",
    "_dev_crit",
    "_dev_err",
    "_dev_warn",
    "_dev_notice",
    "_dev_info",
    "panic",
];

/// One `mov $line, %reg` whose immediate changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineShift {
    /// New value minus old value.
    pub delta: i64,
    /// Whether it is passed to a file-and-line function (certain) or a printing one (to be
    /// confirmed by other evidence).
    pub certain: bool,
}

struct Comparer<'a> {
    orig: &'a Object,
    patched: &'a Object,
    twins: &'a Twins,
    /// Read-only data whose contents changed: references to it differ.
    changed_readonly: HashMap<SymbolId, bool>,
}

/// The section name without the symbol name that `-ffunction-sections`/`-fdata-sections`
/// appended: `.text.unlikely.foo` gives `.text.unlikely`, `.init.text` stays.
fn section_class<'s>(section: &'s str, symbol: &str) -> &'s str {
    section
        .strip_suffix(symbol)
        .and_then(|s| s.strip_suffix('.'))
        .unwrap_or(section)
}

/// Whether a function's section class is ordinary code that GCC picks by its own heuristics
/// (`__cold`, profile hints, `-freorder-functions`): a function that moves between `.text`,
/// `.text.unlikely` and `.text.hot` has changed, and its copy goes wherever the patched
/// object put it. Moves into or out of any other class (`.init.text`, `.noinstr.text`,
/// `.entry.text`) change what the kernel does with the code and are refused.
fn is_ordinary_text(class: &str) -> bool {
    matches!(class, ".text" | ".text.unlikely" | ".text.hot")
}

impl Comparer<'_> {
    fn same_target(&self, orig_target: RelocationTarget, patched_target: RelocationTarget) -> bool {
        match (orig_target, patched_target) {
            (
                RelocationTarget::Symbol {
                    symbol: o,
                    offset: orig_offset,
                },
                RelocationTarget::Symbol {
                    symbol: p,
                    offset: patched_offset,
                },
            ) => {
                orig_offset == patched_offset
                    && self.twins.symbol(p) == Some(o)
                    && !self.changed_readonly.get(&p).copied().unwrap_or(false)
            }
            (
                RelocationTarget::String {
                    section: os,
                    string_start: ostart,
                    offset: ooff,
                },
                RelocationTarget::String {
                    section: ps,
                    string_start: pstart,
                    offset: poff,
                },
            ) => {
                ooff == poff
                    && same_string_but_line(
                        self.orig.string_at(os, ostart),
                        self.patched.string_at(ps, pstart),
                    )
            }
            (
                RelocationTarget::Section {
                    section: os,
                    addend: oa,
                },
                RelocationTarget::Section {
                    section: ps,
                    addend: pa,
                },
            ) => {
                let ubsan = |object: &Object, section| {
                    special_sections::is_ubsan_data(&object.section(section).name)
                };
                if ubsan(self.orig, os) && ubsan(self.patched, ps) {
                    return oa == pa && self.same_ubsan_data(os, ps);
                }
                oa == pa
                    && self.twins.section(ps) == Some(os)
                    && self.orig.section(os).data == self.patched.section(ps).data
            }
            _ => false,
        }
    }

    /// Whether two functions' site code is the same: the same sites, each with the same
    /// bytes and references.
    fn same_site_code(&self, orig: &[SiteCode], patched: &[SiteCode]) -> bool {
        orig.len() == patched.len()
            && orig.iter().zip(patched).all(|(o, p)| {
                let orig_bytes = self
                    .orig
                    .section(o.section)
                    .data
                    .get(o.start as usize..o.end as usize);
                let patched_bytes = self
                    .patched
                    .section(p.section)
                    .data
                    .get(p.start as usize..p.end as usize);
                o.site == p.site
                    && o.table == p.table
                    && orig_bytes.is_some()
                    && orig_bytes == patched_bytes
                    && self.same_relocations(
                        self.orig.relocations_in(o.section, o.start, o.end),
                        o.start,
                        self.patched.relocations_in(p.section, p.start, p.end),
                        p.start,
                    )
            })
    }

    fn same_relocations(
        &self,
        orig_relocations: &[Relocation],
        orig_base: u64,
        patched_relocations: &[Relocation],
        patched_base: u64,
    ) -> bool {
        orig_relocations.len() == patched_relocations.len()
            && orig_relocations
                .iter()
                .zip(patched_relocations)
                .all(|(o, p)| {
                    o.offset - orig_base == p.offset - patched_base
                        && o.r_type == p.r_type
                        && self.same_reference(o, p)
                })
    }

    /// Whether two relocations at the same place refer to the same thing, by their targets
    /// ([`Comparer::same_target`]). A jump into `.altinstr_aux` is the exception: it lands on
    /// its site's fallback block, which moves whenever another site of the unit is added or
    /// removed, so the blocks are compared, not their offsets.
    fn same_reference(&self, o: &Relocation, p: &Relocation) -> bool {
        let (orig_target, patched_target) = (self.orig.resolve(o), self.patched.resolve(p));
        if let (
            RelocationTarget::Section {
                section: os,
                addend: oa,
            },
            RelocationTarget::Section {
                section: ps,
                addend: pa,
            },
        ) = (orig_target, patched_target)
        {
            let aux = |object: &Object, section| object.section(section).name == ".altinstr_aux";
            if aux(self.orig, os) && aux(self.patched, ps) {
                return match (
                    self.orig.jump_block(o, os, oa),
                    self.patched.jump_block(p, ps, pa),
                ) {
                    (Some(orig_block), Some(patched_block)) => {
                        self.same_block(os, orig_block, ps, patched_block)
                    }
                    _ => self.same_target(orig_target, patched_target),
                };
            }
        }
        self.same_target(orig_target, patched_target)
    }

    /// Whether two UBSAN data sections describe the same check, wherever it moved: the same
    /// bytes but the source location's line and column (bytes 8 to 16), the file named in a
    /// string equal up to a line number, the same type descriptors. The sections are numbered
    /// in the unit's order, so they are compared by content, not paired by name.
    fn same_ubsan_data(&self, os: SectionId, ps: SectionId) -> bool {
        const LINE_AND_COLUMN: std::ops::Range<usize> = 8..16;
        let (orig, patched) = (self.orig.section(os), self.patched.section(ps));
        if orig.data.len() != patched.data.len()
            || orig.relocations.len() != patched.relocations.len()
        {
            return false;
        }
        // A type descriptor holds no references: compared as bytes.
        if special_sections::is_ubsan_type(&orig.name) {
            return orig.data == patched.data && orig.relocations.is_empty();
        }
        let same_bytes = orig
            .data
            .iter()
            .zip(&patched.data)
            .enumerate()
            .all(|(at, (o, p))| o == p || LINE_AND_COLUMN.contains(&at));
        same_bytes
            && orig
                .relocations
                .iter()
                .zip(&patched.relocations)
                .all(|(o, p)| {
                    if o.offset != p.offset || o.r_type != p.r_type {
                        return false;
                    }
                    match (self.orig.resolve(o), self.patched.resolve(p)) {
                        // Check data refers to type descriptors only; another UBSAN section
                        // here is not followed, so that the comparison cannot recurse.
                        (
                            RelocationTarget::Section {
                                section: ot,
                                addend: oa,
                            },
                            RelocationTarget::Section {
                                section: pt,
                                addend: pa,
                            },
                        ) if special_sections::is_ubsan_data(&self.orig.section(ot).name)
                            || special_sections::is_ubsan_data(&self.patched.section(pt).name) =>
                        {
                            let (orig_type, patched_type) =
                                (self.orig.section(ot), self.patched.section(pt));
                            oa == pa
                                && special_sections::is_ubsan_type(&orig_type.name)
                                && special_sections::is_ubsan_type(&patched_type.name)
                                && orig_type.data == patched_type.data
                                && orig_type.relocations.is_empty()
                                && patched_type.relocations.is_empty()
                        }
                        (orig_target, patched_target) => {
                            self.same_target(orig_target, patched_target)
                        }
                    }
                })
    }

    /// Whether two blocks of code are the same: bytes, and relocations at the same places to
    /// the same targets.
    fn same_block(
        &self,
        os: SectionId,
        (ostart, oend): (u64, u64),
        ps: SectionId,
        (pstart, pend): (u64, u64),
    ) -> bool {
        let orig_bytes = self
            .orig
            .section(os)
            .data
            .get(ostart as usize..oend as usize);
        let patched_bytes = self
            .patched
            .section(ps)
            .data
            .get(pstart as usize..pend as usize);
        let orig_relocations = self.orig.relocations_in(os, ostart, oend);
        let patched_relocations = self.patched.relocations_in(ps, pstart, pend);
        // The block's own references are compared as targets, never followed into another
        // block, so that blocks that jump to each other cannot recurse.
        orig_bytes.is_some()
            && orig_bytes == patched_bytes
            && orig_relocations.len() == patched_relocations.len()
            && orig_relocations
                .iter()
                .zip(patched_relocations)
                .all(|(o, p)| {
                    o.offset - ostart == p.offset - pstart
                        && o.r_type == p.r_type
                        && self.same_target(self.orig.resolve(o), self.patched.resolve(p))
                })
    }

    /// Says where two twin bodies first differ, for the report: the first byte, relocation
    /// or size that differs.
    fn explain(&self, orig: SymbolId, patched: SymbolId) -> String {
        let (os, oe) = body(self.orig, orig);
        let (ps, pe) = body(self.patched, patched);
        let (Some(osec), Some(psec)) = (
            self.orig.symbol(orig).section(),
            self.patched.symbol(patched).section(),
        ) else {
            return String::new();
        };
        let orig_relocations = self.orig.relocations_in(osec, os, oe);
        let patched_relocations = self.patched.relocations_in(psec, ps, pe);
        for (o, p) in orig_relocations.iter().zip(patched_relocations) {
            let (ot, pt) = (self.orig.resolve(o), self.patched.resolve(p));
            if o.offset - os != p.offset - ps || o.r_type != p.r_type || !self.same_reference(o, p)
            {
                let (was, now) = (describe(self.orig, ot), describe(self.patched, pt));
                if was == now && o.offset - os == p.offset - ps && o.r_type == p.r_type {
                    // The same name at the same place: what it names changed (a table of
                    // device IDs that gained an entry, a fallback block that tests another
                    // bit).
                    return format!(
                        "relocation at +{:#x} refers to {now}, whose contents changed",
                        p.offset - ps
                    );
                }
                return format!(
                    "relocation at +{:#x}: {was} became {now} at +{:#x}",
                    o.offset - os,
                    p.offset - ps
                );
            }
        }
        if orig_relocations.len() != patched_relocations.len() {
            return format!(
                "{} relocations became {}",
                orig_relocations.len(),
                patched_relocations.len()
            );
        }
        if oe - os != pe - ps {
            return format!("size changed ({} -> {} bytes)", oe - os, pe - ps);
        }
        let orig_bytes = self.orig.section(osec).data.get(os as usize..oe as usize);
        let patched_bytes = self
            .patched
            .section(psec)
            .data
            .get(ps as usize..pe as usize);
        match (orig_bytes, patched_bytes) {
            (Some(a), Some(b)) => match a.iter().zip(b).position(|(x, y)| x != y) {
                Some(at) => format!("code differs from +{at:#x}"),
                None => String::new(),
            },
            _ => String::new(),
        }
    }

    /// Compares the bodies of two twin symbols: whether they are the same, and if they differ
    /// only in `__LINE__` immediates, those.
    fn compare_extents(&self, orig: SymbolId, patched: SymbolId) -> (bool, Option<Vec<LineShift>>) {
        let (os, oe) = body(self.orig, orig);
        let (ps, pe) = body(self.patched, patched);
        let (Some(osec), Some(psec)) = (
            self.orig.symbol(orig).section(),
            self.patched.symbol(patched).section(),
        ) else {
            return (true, None);
        };
        let orig_section = self.orig.section(osec);
        let patched_section = self.patched.section(psec);
        let orig_relocations = self.orig.relocations_in(osec, os, oe);
        let patched_relocations = self.patched.relocations_in(psec, ps, pe);
        let relocations_same = self.same_relocations(orig_relocations, os, patched_relocations, ps);
        if orig_section.is_nobits() || patched_section.is_nobits() {
            let same =
                orig_section.is_nobits() == patched_section.is_nobits() && oe - os == pe - ps;
            return (same && relocations_same, None);
        }
        let orig_bytes = &orig_section.data[os as usize..oe as usize];
        let patched_bytes = &patched_section.data[ps as usize..pe as usize];
        if orig_bytes == patched_bytes {
            return (relocations_same, None);
        }
        if !relocations_same || orig_bytes.len() != patched_bytes.len() {
            return (false, None);
        }
        let shifts = line_shifts(
            self.patched,
            orig_bytes,
            patched_bytes,
            patched_relocations,
            ps,
        );
        (false, shifts)
    }
}

/// Whether two strings are equal, or equal but for a trailing line number: lockdep names
/// such as `__FILE__ ":" __stringify(__LINE__)` (timers, srcu) read
/// `kernel/printk/printk.c:99` before an edit above them and `kernel/printk/printk.c:102`
/// after, which changes neither the code nor the data that points at them in a way that
/// matters.
fn same_string_but_line(orig: &[u8], patched: &[u8]) -> bool {
    if orig == patched {
        return true;
    }
    let split = |s: &'_ [u8]| -> Option<usize> {
        let digits = s.iter().rev().take_while(|b| b.is_ascii_digit()).count();
        let colon = s.len().checked_sub(digits + 1)?;
        (digits > 0 && s[colon] == b':').then_some(colon)
    };
    match (split(orig), split(patched)) {
        (Some(a), Some(b)) => orig[..a] == patched[..b],
        _ => false,
    }
}

/// A relocation target for messages: `name+0x10`, a string, or `section+0x10`.
fn describe(object: &Object, target: RelocationTarget) -> String {
    match target {
        RelocationTarget::Symbol { symbol, offset } => {
            format!("{}{}", object.symbol(symbol).name, signed_hex(offset))
        }
        RelocationTarget::String {
            section,
            string_start,
            offset,
        } => format!(
            "string {:?}{}",
            String::from_utf8_lossy(object.string_at(section, string_start)),
            signed_hex(offset)
        ),
        RelocationTarget::Section { section, addend } => {
            format!("{}{}", object.section(section).name, signed_hex(addend))
        }
    }
}

/// `+0x10`, `-0x4`, or nothing for 0, as objdump writes addends.
fn signed_hex(value: i64) -> String {
    match value {
        0 => String::new(),
        v if v < 0 => format!("-{:#x}", v.unsigned_abs()),
        v => format!("+{v:#x}"),
    }
}

/// The bytes a symbol's contents are judged by: `[value, value + size)`. The padding in front
/// (alignment and patchable-entry NOPs) belongs to the symbol's extent but is not compared,
/// since alignment padding grows or shrinks when the previous function in a shared section
/// (`.sched.text`) changes size. Symbols without a size are judged by their whole extent.
fn body(object: &Object, symbol: SymbolId) -> (u64, u64) {
    let sym = object.symbol(symbol);
    if sym.size == 0 {
        return object.extent(symbol);
    }
    (sym.value, sym.value + sym.size)
}

/// The `__LINE__` immediates in which two equally long bodies differ, if every difference is
/// the immediate of a `mov $imm, %reg` (decoded, in both bodies) holding a plausible line
/// number, into an argument register that the next call reads as a line: `%esi` for a
/// function taking `(file, line, ...)`, any argument register but the first for a printing
/// function. This is how `might_sleep()` and `printk("%d", __LINE__)` show up when lines are
/// added above a function: `be 2a 00 00 00` (`mov $0x2a, %esi`) becomes `be 2d 00 00 00`.
/// A constant in any other instruction, or in a register the call does not take as the
/// line (`mov $0x8, %edx` before `__might_sleep`), is a real change.
fn line_shifts(
    patched: &Object,
    orig_bytes: &[u8],
    patched_bytes: &[u8],
    relocations: &[Relocation],
    base: u64,
) -> Option<Vec<LineShift>> {
    use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

    let decode = |bytes: &[u8]| -> Vec<Instruction> {
        let mut decoder = Decoder::with_ip(64, bytes, 0, DecoderOptions::NONE);
        let mut out = Vec::new();
        while decoder.can_decode() {
            out.push(decoder.decode());
        }
        out
    };
    let orig_code = decode(orig_bytes);
    let patched_code = decode(patched_bytes);
    if orig_code.len() != patched_code.len() {
        return None;
    }
    // The function a call at `instruction` reaches, by the relocation of its displacement.
    let callee = |instruction: &Instruction| {
        let field = base + instruction.ip() + 1;
        relocations
            .iter()
            .find(|r| r.offset == field)
            .map(|r| patched.symbol(r.symbol).name.as_str())
    };
    let covered_by_relocation = |start: u64, end: u64| {
        relocations.iter().any(|r| {
            let field = r.offset - base;
            field < end && field + 4 > start
        })
    };
    let mut shifts = Vec::new();
    for (index, (old, new)) in orig_code.iter().zip(&patched_code).enumerate() {
        let range = old.ip() as usize..old.next_ip() as usize;
        if orig_bytes.get(range.clone()) == patched_bytes.get(range) {
            continue;
        }
        let is_mov_immediate = |i: &Instruction| {
            matches!(
                i.code(),
                Code::Mov_r32_imm32 | Code::Mov_rm32_imm32 | Code::Mov_rm64_imm32
            ) && i.op0_kind() == OpKind::Register
        };
        if !is_mov_immediate(old)
            || new.code() != old.code()
            || new.op0_register() != old.op0_register()
            || new.len() != old.len()
        {
            return None;
        }
        let (old_value, new_value) = (old.immediate32(), new.immediate32());
        if old_value >= 1 << 20
            || new_value >= 1 << 20
            || covered_by_relocation(old.ip(), old.next_ip())
        {
            return None;
        }
        let register = old.op0_register().full_register();
        // The next call, with nothing in between writing the register again.
        let mut certain = None;
        for later in &patched_code[index + 1..] {
            // A sibling call (`jmp _printk`) passes its arguments like a call.
            if matches!(later.mnemonic(), Mnemonic::Call | Mnemonic::Jmp) {
                let name = callee(later)?;
                certain = if FILE_LINE_FUNCTIONS.contains(&name) {
                    (register == Register::RSI).then_some(true)
                } else if PRINTING_FUNCTIONS.contains(&name) {
                    matches!(
                        register,
                        Register::RSI | Register::RDX | Register::RCX | Register::R8 | Register::R9
                    )
                    .then_some(false)
                } else {
                    None
                };
                break;
            }
            if later.op0_kind() == OpKind::Register
                && later.op0_register().full_register() == register
            {
                return None;
            }
        }
        shifts.push(LineShift {
            delta: i64::from(new_value) - i64::from(old_value),
            certain: certain?,
        });
    }
    Some(shifts)
}

/// Code that belongs to one site of a function without lying in it: an alternative's
/// replacement (`.altinstr_replacement`) or an exception entry's fixup (`.fixup`).
#[derive(Debug, Clone, Copy)]
struct SiteCode {
    /// Where the site is, from the function's start.
    site: u64,
    table: &'static str,
    section: SectionId,
    start: u64,
    end: u64,
}

/// The site code of every function of `object`, in site order.
fn site_code(object: &Object) -> HashMap<SymbolId, Vec<SiteCode>> {
    let mut by_function: HashMap<SymbolId, Vec<SiteCode>> = HashMap::new();
    let fixup_starts = crate::include::fixup_starts(object);
    for (&id, table) in &object.tables {
        if table.replacement.is_none() && table.fixup_field.is_none() {
            continue;
        }
        let count = table.entries;
        for index in 0..count {
            let entry = index * table.entry_size;
            let Some((code_section, address)) =
                crate::include::field_address(object, id, entry + table.code_field)
            else {
                continue;
            };
            let Some(function) = object.symbols_in(code_section).iter().copied().find(|&f| {
                let symbol = object.symbol(f);
                symbol.kind == SymbolKind::Func
                    && symbol.value <= address
                    && address < symbol.value.saturating_add(symbol.size)
            }) else {
                continue;
            };
            let site = address - object.symbol(function).value;
            let Some((section, start, end)) =
                crate::include::site_piece(object, id, table, entry, &fixup_starts)
            else {
                continue;
            };
            by_function.entry(function).or_default().push(SiteCode {
                site,
                table: table.name,
                section,
                start,
                end,
            });
        }
    }
    for pieces in by_function.values_mut() {
        pieces.sort_by_key(|p| (p.site, p.table, p.start));
    }
    by_function
}

/// How far lines moved according to the bug tables: for each WARN/BUG site in a function
/// present in both objects, at the same offset in it, the new line minus the old one.
fn bug_table_line_deltas(orig: &Object, patched: &Object, twins: &Twins) -> BTreeSet<i64> {
    let sites = |object: &Object, name_of: &dyn Fn(SymbolId) -> Option<String>| {
        let mut lines: HashMap<(String, i64), u16> = HashMap::new();
        for (&id, table) in &object.tables {
            let Some(line) = table.line_field else {
                continue;
            };
            let section = object.section(id);
            let entry = table.entry_size;
            for relocation in section
                .relocations
                .iter()
                .filter(|r| r.offset % entry == table.code_field)
            {
                let RelocationTarget::Symbol { symbol, offset } = object.resolve(relocation) else {
                    continue;
                };
                let at = (relocation.offset - table.code_field)
                    .saturating_add(line)
                    .try_into()
                    .unwrap_or(usize::MAX);
                let (Some(name), Some(bytes)) =
                    (name_of(symbol), section.data.get(at..at.saturating_add(2)))
                else {
                    continue;
                };
                lines.insert((name, offset), u16::from_le_bytes([bytes[0], bytes[1]]));
            }
        }
        lines
    };
    let orig_sites = sites(orig, &|s| Some(orig.symbol(s).name.clone()));
    let patched_sites = sites(patched, &|s| {
        twins.symbol(s).map(|o| orig.symbol(o).name.clone())
    });
    patched_sites
        .iter()
        .filter_map(|(site, &new)| {
            orig_sites
                .get(site)
                .map(|&old| i64::from(new) - i64::from(old))
        })
        .filter(|&delta| delta != 0)
        .collect()
}

/// Judges every function and data object of `patched` against its twin in `orig`.
pub fn compare(orig: &Object, patched: &Object, twins: &Twins) -> Comparison {
    let mut comparer = Comparer {
        orig,
        patched,
        twins,
        changed_readonly: HashMap::new(),
    };
    let mut refusals = Vec::new();
    let mut status = HashMap::new();
    let refuse = |refusals: &mut Vec<Refusal>, section: &str, symbol: &str, reason: String| {
        refusals.push(Refusal {
            object: patched.name.clone(),
            section: section.to_string(),
            symbol: symbol.to_string(),
            reason,
        });
    };

    // Data first, since references to changed read-only data make functions differ.
    // A read-only object that refers to one that changed must be copied too (its copy points
    // at the new one), and that can make a third change: repeat until nothing more changes,
    // so the verdicts do not depend on the order of the symbol table.
    let data_refusals_before = refusals.len();
    loop {
        refusals.truncate(data_refusals_before);
        status.clear();
        let changed_before = comparer.changed_readonly.len();
        for symbol in patched
            .symbols
            .iter()
            .filter(|s| s.kind == SymbolKind::Object)
        {
            let Some(section_id) = symbol.section() else {
                continue;
            };
            let section = patched.section(section_id);
            // A twin that the original only declared (`extern`) is no twin for contents.
            let defined_twin = twins
                .symbol(symbol.id)
                .filter(|&o| orig.symbol(o).section().is_some());
            let Some(orig_id) = defined_twin else {
                status.insert(symbol.id, Status::New);
                continue;
            };
            if special_sections::is_special(&section.name) {
                // Dynamic debug descriptors and boot-time data are never compared: included code
                // gets its own descriptors, and init data has done its work before a patch loads.
                status.insert(symbol.id, Status::Same);
                continue;
            }
            let orig_symbol = orig.symbol(orig_id);
            let Some(orig_section_id) = orig_symbol.section() else {
                status.insert(symbol.id, Status::Same);
                continue;
            };
            let orig_section = orig.section(orig_section_id);
            let orig_class = section_class(&orig_section.name, &orig_symbol.name);
            let patched_class = section_class(&section.name, &symbol.name);
            if orig_class != patched_class {
                refuse(
                    &mut refusals,
                    &section.name,
                    &symbol.name,
                    format!(
                        "data symbol {} moved from section {} to section {}",
                        symbol.name, orig_section.name, section.name
                    ),
                );
                status.insert(symbol.id, Status::Changed);
                continue;
            }
            let (same, _) = comparer.compare_extents(orig_id, symbol.id);
            let same_size = orig_symbol.size == symbol.size;
            if same && same_size {
                status.insert(symbol.id, Status::Same);
                continue;
            }
            status.insert(symbol.id, Status::Changed);
            if section.is_write() || section.is_nobits() {
                let reason = if !same_size {
                    format!(
                        "data symbol {} in section {} changed size ({} -> {} bytes)",
                        symbol.name, section.name, orig_symbol.size, symbol.size
                    )
                } else {
                    format!(
                        "data symbol {} in section {} changed its initial value ({}); the \
                         running kernel's copy holds live state",
                        symbol.name,
                        section.name,
                        comparer
                            .explain(orig_id, symbol.id)
                            .replace("code differs", "contents differ")
                    )
                };
                refuse(&mut refusals, &section.name, &symbol.name, reason);
            } else {
                comparer.changed_readonly.insert(symbol.id, true);
            }
        }
        if comparer.changed_readonly.len() == changed_before {
            break;
        }
    }

    let mut functions = Vec::new();
    let mut line_evidence: BTreeSet<i64> = BTreeSet::new();
    let mut unconfirmed: Vec<(usize, Vec<i64>)> = Vec::new();
    for symbol in patched
        .symbols
        .iter()
        .filter(|s| s.kind == SymbolKind::Func && !s.is_prefix())
    {
        let Some(section_id) = symbol.section() else {
            continue;
        };
        let section = patched.section(section_id);
        // A twin that the original only declared (`extern`) is no twin for contents.
        let defined_twin = twins
            .symbol(symbol.id)
            .filter(|&o| orig.symbol(o).section().is_some());
        let Some(orig_id) = defined_twin else {
            functions.push(FunctionVerdict {
                patched: symbol.id,
                orig: None,
                status: Status::New,
                line_only: false,
                difference: String::new(),
            });
            continue;
        };
        let orig_symbol = orig.symbol(orig_id);
        let orig_section_name = orig_symbol
            .section()
            .map(|s| orig.section(s).name.as_str())
            .unwrap_or("");
        let (same, shifts) = comparer.compare_extents(orig_id, symbol.id);
        // Printing-only shifts are confirmed below, once all evidence is in.
        let line_only = shifts.as_ref().is_some_and(|s| !s.is_empty());
        if let Some(shifts) = shifts {
            line_evidence.extend(shifts.iter().filter(|s| s.certain).map(|s| s.delta));
            let uncertain: Vec<i64> = shifts
                .iter()
                .filter(|s| !s.certain)
                .map(|s| s.delta)
                .collect();
            if !uncertain.is_empty() {
                unconfirmed.push((functions.len(), uncertain));
            }
        }
        let orig_class = section_class(orig_section_name, &orig_symbol.name);
        let patched_class = section_class(&section.name, &symbol.name);
        let moved = orig_class != patched_class;
        let moved_in_text =
            moved && is_ordinary_text(orig_class) && is_ordinary_text(patched_class);
        let verdict_status = if (same || line_only) && !moved_in_text {
            Status::Same
        } else {
            Status::Changed
        };
        if moved && !moved_in_text {
            refuse(
                &mut refusals,
                &section.name,
                &symbol.name,
                format!(
                    "function {} moved from section {} to section {}",
                    symbol.name, orig_section_name, section.name
                ),
            );
        } else if verdict_status == Status::Changed && section.name.starts_with(".init.") {
            refuse(
                &mut refusals,
                &section.name,
                &symbol.name,
                format!(
                    "__init function {} in section {} changed: it ran once at boot and cannot be live patched",
                    symbol.name, section.name
                ),
            );
        }
        let difference = if moved_in_text {
            format!(
                "moved from section {orig_section_name} to section {}",
                section.name
            )
        } else if verdict_status == Status::Changed {
            comparer.explain(orig_id, symbol.id)
        } else {
            String::new()
        };
        functions.push(FunctionVerdict {
            patched: symbol.id,
            orig: Some(orig_id),
            status: verdict_status,
            line_only,
            difference,
        });
    }

    // A printing call's changed immediate is a moved line only if lines moved by as much
    // elsewhere in the object.
    line_evidence.extend(bug_table_line_deltas(orig, patched, twins));
    for (index, deltas) in unconfirmed {
        let Some(delta) = deltas.iter().find(|d| !line_evidence.contains(d)) else {
            continue;
        };
        let verdict = &mut functions[index];
        verdict.status = Status::Changed;
        verdict.line_only = false;
        verdict.difference = format!(
            "an immediate passed to a printing function changed by {delta}, and no line in the object moved by as much"
        );
    }

    // A `.cold` part is not a function of its own: it is entered only by jumps from its parent,
    // so a change in it is a change of the parent.
    let changed_cold_parents: Vec<String> = functions
        .iter()
        .filter(|v| v.status != Status::Same)
        .filter_map(|v| cold_parent(&patched.symbol(v.patched).name).map(str::to_string))
        .collect();
    for verdict in &mut functions {
        if verdict.status == Status::Same
            && changed_cold_parents.contains(&patched.symbol(verdict.patched).name)
        {
            verdict.status = Status::Changed;
            verdict.line_only = false;
            verdict.difference = "its .cold part changed".to_string();
        }
    }
    // An alternative's replacement and an exception entry's fixup run in place of, or on
    // behalf of, the function's own bytes, which do not show them.
    let orig_sites = site_code(orig);
    let patched_sites = site_code(patched);
    for verdict in &mut functions {
        let Some(orig_id) = verdict.orig.filter(|_| verdict.status == Status::Same) else {
            continue;
        };
        let none = Vec::new();
        let o = orig_sites.get(&orig_id).unwrap_or(&none);
        let p = patched_sites.get(&verdict.patched).unwrap_or(&none);
        if !comparer.same_site_code(o, p) {
            verdict.status = Status::Changed;
            verdict.line_only = false;
            verdict.difference =
                "the replacement code of an alternative or the fixup code of an exception \
                 table entry changed"
                    .to_string();
        }
    }
    propagate_untraceable_changes(patched, &mut functions);
    refusals.extend(unreachable_untraceable_changes(patched, &functions));
    refusals.extend(changed_kthread_loops(patched, &functions));
    for verdict in &functions {
        status.insert(verdict.patched, verdict.status);
    }

    refusals.extend(changed_anonymous_sections(&comparer));
    refusals.extend(unpaired_static_locals(orig, patched, twins));
    Comparison {
        functions,
        status,
        refusals,
    }
}

/// Whether a function starts with the `call __fentry__` that ftrace, and so livepatch, hooks.
pub fn calls_fentry(object: &Object, function: SymbolId) -> bool {
    let Some(section) = object.symbol(function).section() else {
        return false;
    };
    let (start, end) = body(object, function);
    object
        .relocations_in(section, start, end)
        .iter()
        .any(|relocation| object.symbol(relocation.symbol).name == "__fentry__")
}

/// A changed function that ftrace cannot hook has no `call __fentry__`: the kernel builds every
/// `inline` function `notrace`, and GCC may still keep one out of line (the `__do_sys_<name>`
/// body of a system call is such a function, reached by a jump from `__x64_sys_<name>`). The
/// livepatch core cannot redirect it, so its callers are what gets replaced: every function of
/// the object that refers to it becomes changed, and so on until each changed function can be
/// hooked. The untraceable function itself is then new code of the patch, reached only from
/// the replaced callers.
fn propagate_untraceable_changes(patched: &Object, functions: &mut [FunctionVerdict]) {
    loop {
        let untraceable: BTreeSet<SymbolId> = functions
            .iter()
            .filter(|v| v.status == Status::Changed && !calls_fentry(patched, v.patched))
            .map(|v| v.patched)
            .collect();
        let mut grew = false;
        for verdict in functions.iter_mut().filter(|v| v.status == Status::Same) {
            let caller = verdict.patched;
            let Some(section) = patched.symbol(caller).section() else {
                continue;
            };
            let (start, end) = body(patched, caller);
            let callee =
                patched
                    .relocations_in(section, start, end)
                    .iter()
                    .find_map(|relocation| match patched.resolve(relocation) {
                        RelocationTarget::Symbol { symbol, .. }
                            if untraceable.contains(&symbol) =>
                        {
                            Some(symbol)
                        }
                        _ => None,
                    });
            if let Some(callee) = callee {
                verdict.status = Status::Changed;
                verdict.line_only = false;
                verdict.difference = format!(
                    "it calls {}, which changed and has no __fentry__ call to patch",
                    patched.symbol(callee).name
                );
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }
}

/// Whether the relocation at `offset` of an executable section is the displacement of a call
/// or jump (`call`/`jmp rel32`, `jcc rel32`) rather than an address the code takes.
fn is_branch_displacement(data: &[u8], offset: u64) -> bool {
    let Ok(offset) = usize::try_from(offset) else {
        return false;
    };
    let before = |back: usize| {
        offset
            .checked_sub(back)
            .and_then(|at| data.get(at))
            .copied()
    };
    matches!(before(1), Some(0xe8 | 0xe9))
        || (before(2) == Some(0x0f) && matches!(before(1), Some(0x80..=0x8f)))
}

/// Changed functions without a `call __fentry__` that replacing their callers in this object
/// does not cover: ftrace cannot redirect them, so a global one is still called, unchanged,
/// from other units, and one whose address is taken is still reached through that pointer.
/// Either would leave the change silently unapplied.
fn unreachable_untraceable_changes(
    patched: &Object,
    functions: &[FunctionVerdict],
) -> Vec<Refusal> {
    let mut refusals = Vec::new();
    for verdict in functions {
        let symbol = patched.symbol(verdict.patched);
        if verdict.status != Status::Changed
            || verdict.orig.is_none()
            || cold_parent(&symbol.name).is_some()
            || calls_fentry(patched, verdict.patched)
        {
            continue;
        }
        let Some(section) = symbol.section() else {
            continue;
        };
        let section_name = &patched.section(section).name;
        if special_sections::is_dropped(section_name) {
            continue;
        }
        let refuse = |reason: String| Refusal {
            object: patched.name.clone(),
            section: section_name.clone(),
            symbol: symbol.name.clone(),
            reason,
        };
        if symbol.binding != crate::elf::Binding::Local {
            refusals.push(refuse(format!(
                "function {} changed and has no __fentry__ call for the livepatch to hook \
                 (it is notrace or inline), and it is global: calls from other units would \
                 keep reaching the old code",
                symbol.name
            )));
            continue;
        }
        let taken_at = patched.sections.iter().find_map(|from| {
            if !from.is_alloc() || special_sections::is_special(&from.name) {
                return None;
            }
            from.relocations.iter().find_map(|relocation| {
                let RelocationTarget::Symbol { symbol: target, .. } = patched.resolve(relocation)
                else {
                    return None;
                };
                let taken = target == verdict.patched
                    && !(from.is_exec() && is_branch_displacement(&from.data, relocation.offset));
                taken.then(|| format!("{}+{:#x}", from.name, relocation.offset))
            })
        });
        if let Some(place) = taken_at {
            refusals.push(refuse(format!(
                "function {} changed and has no __fentry__ call for the livepatch to hook \
                 (it is notrace or inline), and its address is taken at {place}: calls \
                 through that pointer would keep reaching the old code",
                symbol.name
            )));
        }
    }
    refusals
}

/// Calls that mark a kernel thread's main loop: the thread asks them, between sleeps, whether
/// to leave the loop.
const KTHREAD_LOOP_CALLS: &[&str] = &["kthread_should_stop", "kthread_freezable_should_stop"];

/// A changed function that is a kernel thread's main loop. The thread sleeps inside it and
/// leaves it only when stopped, so its stack always shows the old function and the livepatch
/// transition never finishes: the patch would stay half applied until it is reversed.
fn changed_kthread_loops(patched: &Object, functions: &[FunctionVerdict]) -> Vec<Refusal> {
    let mut refusals = Vec::new();
    for verdict in functions {
        if verdict.status != Status::Changed {
            continue;
        }
        let symbol = patched.symbol(verdict.patched);
        let Some(section) = symbol.section() else {
            continue;
        };
        let (start, end) = body(patched, verdict.patched);
        let asks = patched
            .relocations_in(section, start, end)
            .iter()
            .map(|relocation| patched.symbol(relocation.symbol).name.as_str())
            .find(|name| KTHREAD_LOOP_CALLS.contains(name));
        if let Some(call) = asks {
            refusals.push(Refusal {
                object: patched.name.clone(),
                section: patched.section(section).name.clone(),
                symbol: symbol.name.clone(),
                reason: format!(
                    "function {} changed and is a kernel thread's main loop (it calls {call}): \
                     the thread sleeps inside it and never returns, so the livepatch \
                     transition would never finish; move the change into a function the loop \
                     calls (one that returns to it), so the patch replaces only that",
                    symbol.name
                ),
            });
        }
    }
    refusals
}

/// Writable static locals of the patched object that could not be paired with the original's
/// of the same name: the patch would get a fresh copy and lose the running kernel's value
/// (a counter restarting at zero, a lock no one else takes). Once-only flags of `WARN_ONCE`
/// and friends lose nothing that matters and are let through.
fn unpaired_static_locals(orig: &Object, patched: &Object, twins: &Twins) -> Vec<Refusal> {
    let mut refusals = Vec::new();
    for (symbol, candidates) in &twins.unpaired_static_locals {
        let symbol = patched.symbol(*symbol);
        let Some(section) = symbol.section().map(|s| patched.section(s)) else {
            continue;
        };
        let writable = section.is_write() || section.is_nobits();
        // The kernel's own per-site statics whose loss costs nothing: once-only flags
        // (`WARN_ONCE`, `RCU_LOCKDEP_WARN`, `printk_once`), lockdep class keys (a new one is a
        // new lock class to lockdep only) and ratelimit states.
        let harmless = special_sections::is_disposable_static_local(&symbol.name);
        if !writable
            || harmless
            || special_sections::is_special(&section.name)
            || section.name.starts_with(".data.once")
        {
            continue;
        }
        let names: Vec<&str> = candidates
            .iter()
            .map(|&o| orig.symbol(o).name.as_str())
            .collect();
        refusals.push(Refusal {
            object: patched.name.clone(),
            section: section.name.clone(),
            symbol: symbol.name.clone(),
            reason: format!(
                "static local {} cannot be paired with the original's ({}): the functions that \
                 use it changed too much to tell which it is, and a new copy would lose the \
                 running kernel's value",
                symbol.name,
                names.join(", ")
            ),
        });
    }
    refusals
}

/// Allocated sections that hold no function or object, are not special, and changed: nothing
/// in a livepatch could carry such a change.
fn changed_anonymous_sections(comparer: &Comparer<'_>) -> Vec<Refusal> {
    let (orig, patched) = (comparer.orig, comparer.patched);
    let mut refusals = Vec::new();
    for section in &patched.sections {
        if !section.is_alloc()
            || !section.is_content()
            || section.is_merge()
            || special_sections::is_special(&section.name)
            || special_sections::is_ubsan_data(&section.name)
            || !patched.symbols_in(section.id).is_empty()
        {
            continue;
        }
        let Some(orig_id) = comparer.twins.section(section.id) else {
            continue;
        };
        let orig_section = orig.section(orig_id);
        let same = orig_section.size == section.size
            && orig_section.data == section.data
            && comparer.same_relocations(&orig_section.relocations, 0, &section.relocations, 0);
        if !same {
            refusals.push(Refusal {
                object: patched.name.clone(),
                section: section.name.clone(),
                symbol: String::new(),
                reason: format!(
                    "section {} changed but belongs to no function or data symbol",
                    section.name
                ),
            });
        }
    }
    refusals
}

/// The section of a symbol, for messages.
pub fn section_name_of(object: &Object, symbol: SymbolId) -> &str {
    object
        .symbol(symbol)
        .section()
        .map(|s: SectionId| object.section(s).name.as_str())
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::{is_ordinary_text, section_class};

    #[test]
    fn strings_differing_in_a_trailing_line_number_are_the_same() {
        use super::same_string_but_line as same;
        assert!(same(
            b"kernel/printk/printk.c:99",
            b"kernel/printk/printk.c:102"
        ));
        assert!(same(b"hello", b"hello"));
        assert!(!same(b"hello", b"hello!"));
        assert!(!same(b"a.c:1", b"b.c:1"));
        assert!(!same(b"count 1", b"count 2"));
        assert!(!same(b":1", b":"));
    }

    #[test]
    fn section_classes_drop_the_symbol_name() {
        assert_eq!(section_class(".text.foo", "foo"), ".text");
        assert_eq!(section_class(".text.unlikely.foo", "foo"), ".text.unlikely");
        assert_eq!(section_class(".init.text", "foo"), ".init.text");
        assert_eq!(section_class(".bss.count.2", "count.2"), ".bss");
    }

    #[test]
    fn only_moves_between_ordinary_text_classes_are_changes() {
        assert!(is_ordinary_text(".text"));
        assert!(is_ordinary_text(".text.unlikely"));
        assert!(is_ordinary_text(".text.hot"));
        assert!(!is_ordinary_text(".init.text"));
        assert!(!is_ordinary_text(".noinstr.text"));
    }
}
