//! Reading one relocatable object into an owned, validated model.
//!
//! Everything later phases need from an x86_64 `ET_REL` file: its sections with their bytes,
//! its symbols, and each section's relocations with the symbol they target. Every offset,
//! index and size is checked here, once, so the phases after this one can index the model
//! without re-validating it and malformed input never reaches them.

use std::collections::BTreeMap;

use object::elf;
use object::read::elf::{FileHeader, Rela as _, SectionHeader as _, Sym as _};
use object::{Endianness, SectionIndex};

use crate::special_sections::Table;

/// An index into [`Object::sections`]; equal to the ELF section header index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SectionId(pub usize);

/// An index into [`Object::symbols`]; equal to the ELF symbol table index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SymbolId(pub usize);

/// A malformed or unsupported input file.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {object}: {message}")]
pub struct ElfError {
    /// The file as the user named it.
    pub object: String,
    /// What was wrong, as a lower-case phrase.
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymbolKind {
    NoType,
    Object,
    Func,
    Section,
    File,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Binding {
    Local,
    Global,
    Weak,
}

/// Where a symbol is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Undefined,
    Absolute,
    Common,
    Section(SectionId),
}

#[derive(Debug, Clone)]
pub struct Symbol {
    pub id: SymbolId,
    pub name: String,
    pub kind: SymbolKind,
    pub binding: Binding,
    pub placement: Placement,
    pub value: u64,
    pub size: u64,
    pub other: u8,
}

impl Symbol {
    /// objtool's `__pfx_foo` (and kCFI's `__cfi_foo`) name the padding in front of `foo`: part
    /// of `foo`, not a function of their own.
    pub fn is_prefix(&self) -> bool {
        self.kind == SymbolKind::Func
            && (self.name.starts_with("__pfx_") || self.name.starts_with("__cfi_"))
    }

    /// The section this symbol is defined in, if any.
    pub fn section(&self) -> Option<SectionId> {
        match self.placement {
            Placement::Section(id) => Some(id),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relocation {
    /// The section the relocation applies to.
    pub section: SectionId,
    /// Offset of the relocated field inside the section it applies to.
    pub offset: u64,
    pub r_type: u32,
    pub symbol: SymbolId,
    pub addend: i64,
}

#[derive(Debug, Clone)]
pub struct Section {
    pub id: SectionId,
    pub name: String,
    pub sh_type: u32,
    pub flags: u64,
    pub align: u64,
    pub entsize: u64,
    /// Size in memory; for `SHT_NOBITS` sections `data` is empty and this is the real size.
    pub size: u64,
    pub data: Vec<u8>,
    /// The section's `SHT_RELA` relocations, sorted by offset.
    pub relocations: Vec<Relocation>,
}

impl Section {
    pub fn is_alloc(&self) -> bool {
        self.flags & elf::SHF_ALLOC.0 != 0
    }
    pub fn is_exec(&self) -> bool {
        self.flags & elf::SHF_EXECINSTR.0 != 0
    }
    pub fn is_write(&self) -> bool {
        self.flags & elf::SHF_WRITE.0 != 0
    }
    pub fn is_nobits(&self) -> bool {
        self.sh_type == elf::SHT_NOBITS.0
    }
    /// A `SHF_MERGE | SHF_STRINGS` section such as `.rodata.str1.1`: its contents are
    /// NUL-terminated strings that the linker may merge, so they are compared by content.
    pub fn is_string_merge(&self) -> bool {
        let merge_strings = elf::SHF_MERGE.0 | elf::SHF_STRINGS.0;
        self.flags & merge_strings == merge_strings
    }
    pub fn is_merge(&self) -> bool {
        self.flags & elf::SHF_MERGE.0 != 0
    }
    /// Sections with contents that a program or the kernel uses (not symbol/string/reloc tables).
    pub fn is_content(&self) -> bool {
        self.sh_type == elf::SHT_PROGBITS.0
            || self.sh_type == elf::SHT_NOBITS.0
            || self.sh_type == elf::SHT_NOTE.0
            || self.sh_type == elf::SHT_INIT_ARRAY.0
            || self.sh_type == elf::SHT_FINI_ARRAY.0
    }
}

/// The relocation target of a field, expressed so that it can be compared across objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelocationTarget {
    /// `symbol + offset`, where a reference through a section symbol has already been turned
    /// into a reference to the function or object that covers the address.
    Symbol { symbol: SymbolId, offset: i64 },
    /// A string in a mergeable string section: `string_start + offset` inside `section`.
    String {
        section: SectionId,
        string_start: u64,
        offset: i64,
    },
    /// An address in a section that has no symbol covering it (`.rodata.cst16`, replacement
    /// code in `.altinstr_replacement`).
    Section { section: SectionId, addend: i64 },
}

#[derive(Debug, Clone)]
pub struct Object {
    /// The file as the user named it; used in every message about it.
    pub name: String,
    pub sections: Vec<Section>,
    pub symbols: Vec<Symbol>,
    /// Function and object symbols of each section, sorted by value.
    symbols_by_section: Vec<Vec<SymbolId>>,
    /// For each executable section, its instructions as (start, length), in order, from a
    /// linear decode: where a PC-relative field's instruction ends.
    instructions: Vec<Vec<(u32, u8)>>,
    /// The special sections' tables, their layouts the kernel's: empty until
    /// [`crate::special_sections::read_tables`] fills it.
    pub tables: BTreeMap<SectionId, Table>,
}

/// Decodes an executable section into (start, length) per instruction.
fn decode_instructions(data: &[u8]) -> Vec<(u32, u8)> {
    let mut decoder = iced_x86::Decoder::with_ip(64, data, 0, iced_x86::DecoderOptions::NONE);
    let mut instructions = Vec::new();
    let mut instruction = iced_x86::Instruction::default();
    while decoder.can_decode() {
        decoder.decode_out(&mut instruction);
        let (Ok(start), Ok(length)) = (
            u32::try_from(instruction.ip()),
            u8::try_from(instruction.len()),
        ) else {
            break;
        };
        instructions.push((start, length.max(1)));
    }
    instructions
}

const R_X86_64_PC32: u32 = 2;
const R_X86_64_PLT32: u32 = 4;
const R_X86_64_GOTPCREL: u32 = 9;
const R_X86_64_PC64: u32 = 24;
const R_X86_64_GOTPCRELX: u32 = 41;
const R_X86_64_REX_GOTPCRELX: u32 = 42;

/// Bytes between the relocated field and the end of the instruction for PC-relative
/// relocations: the CPU adds the displacement to the address of the next instruction, so
/// GCC writes `target - 4` for a 32-bit field at the end of an instruction. Adding this back
/// recovers the address that is referenced.
pub fn pc_relative_bias(r_type: u32) -> i64 {
    match r_type {
        R_X86_64_PC32
        | R_X86_64_PLT32
        | R_X86_64_GOTPCREL
        | R_X86_64_GOTPCRELX
        | R_X86_64_REX_GOTPCRELX => 4,
        R_X86_64_PC64 => 8,
        _ => 0,
    }
}

/// The largest section alignment accepted: 2 MiB, a huge page.
const MAX_ALIGN: u64 = 1 << 21;

/// Size in bytes of the field a relocation type writes, for bounds checks.
fn relocation_field_size(r_type: u32) -> Option<u64> {
    match r_type {
        0 => Some(0),
        // R_X86_64_64, PC64, GOTOFF64
        1 | 24 | 26 => Some(8),
        // PC32, PLT32, GOTPCREL, 32, 32S, GOTPCRELX, REX_GOTPCRELX
        2 | 4 | 9 | 10 | 11 | 41 | 42 => Some(4),
        12 | 13 => Some(2),
        14 | 15 => Some(1),
        _ => None,
    }
}

/// Names of the machines someone is likely to pass by mistake.
fn machine_name(machine: u16) -> &'static str {
    match machine {
        3 => "EM_386",
        8 => "EM_MIPS",
        20 => "EM_PPC",
        21 => "EM_PPC64",
        22 => "EM_S390",
        40 => "EM_ARM",
        62 => "EM_X86_64",
        183 => "EM_AARCH64",
        243 => "EM_RISCV",
        258 => "EM_LOONGARCH",
        _ => "unknown",
    }
}

fn file_type_name(file_type: u16) -> &'static str {
    match file_type {
        0 => "ET_NONE",
        1 => "ET_REL",
        2 => "ET_EXEC",
        3 => "ET_DYN",
        4 => "ET_CORE",
        _ => "unknown",
    }
}

impl Object {
    /// Parses and validates `data` as an x86_64 ELF relocatable object.
    pub fn parse(name: &str, data: &[u8]) -> Result<Object, ElfError> {
        let fail = |message: String| ElfError {
            object: name.to_string(),
            message,
        };
        if data.len() < 4 || &data[..4] != b"\x7fELF" {
            return Err(fail("not an ELF file (no ELF magic)".into()));
        }
        if data.len() < 64 {
            return Err(fail(format!(
                "truncated ELF header ({} bytes, need 64)",
                data.len()
            )));
        }
        // e_ident[EI_CLASS] and e_ident[EI_DATA]: ELFCLASS64, ELFDATA2LSB.
        if data[4] != 2 {
            return Err(fail("not a 64-bit ELF file".into()));
        }
        if data[5] != 1 {
            return Err(fail("not a little-endian ELF file".into()));
        }
        let header = elf::FileHeader64::<Endianness>::parse(data)
            .map_err(|e| fail(format!("invalid ELF header: {e}")))?;
        let endian = header
            .endian()
            .map_err(|e| fail(format!("invalid ELF header: {e}")))?;
        let machine = header.e_machine(endian);
        if machine != elf::EM_X86_64 {
            return Err(fail(format!(
                "ELF machine is {} (e_machine {}), expected x86_64",
                machine_name(machine.0),
                machine.0
            )));
        }
        let file_type = header.e_type(endian);
        if file_type != elf::ET_REL {
            return Err(fail(format!(
                "ELF type is {}, expected a relocatable object (ET_REL)",
                file_type_name(file_type.0)
            )));
        }
        let section_table = header
            .sections(endian, data)
            .map_err(|e| fail(format!("invalid section table: {e}")))?;
        if section_table.is_empty() {
            return Err(fail("object has no section table".into()));
        }

        let mut sections = Vec::with_capacity(section_table.len());
        for (index, raw) in section_table.enumerate() {
            let section_name = section_table
                .section_name(endian, raw)
                .map_err(|e| fail(format!("section {}: invalid name: {e}", index.0)))?;
            let section_name = String::from_utf8_lossy(section_name).into_owned();
            let sh_type = raw.sh_type(endian).0;
            let size = raw.sh_size(endian);
            let bytes = raw.data(endian, data).map_err(|_| {
                fail(format!(
                    "section {section_name}: contents ({size} bytes at offset {}) lie outside the file ({} bytes): the file is truncated",
                    raw.sh_offset(endian),
                    data.len()
                ))
            })?;
            let align = raw.sh_addralign(endian);
            if align != 0 && !align.is_power_of_two() {
                return Err(fail(format!(
                    "section {section_name}: alignment {align} is not a power of two"
                )));
            }
            // Kernel objects align to pages at most (`.data..page_aligned`); an output
            // padded to a larger alignment could need any amount of memory.
            if align > MAX_ALIGN {
                return Err(fail(format!(
                    "section {section_name}: alignment {align} is larger than {MAX_ALIGN}"
                )));
            }
            sections.push(Section {
                id: SectionId(index.0),
                name: section_name,
                sh_type,
                flags: raw.sh_flags(endian).0,
                align,
                entsize: raw.sh_entsize(endian),
                size,
                data: bytes.to_vec(),
                relocations: Vec::new(),
            });
        }

        let symbol_table = section_table
            .symbols(endian, data, elf::SHT_SYMTAB)
            .map_err(|e| fail(format!("invalid symbol table: {e}")))?;
        let mut symbols = Vec::with_capacity(symbol_table.len());
        for (index, raw) in symbol_table.enumerate() {
            let symbol_name = symbol_table
                .symbol_name(endian, raw)
                .map_err(|e| fail(format!("symbol {}: invalid name: {e}", index.0)))?;
            let symbol_name = String::from_utf8_lossy(symbol_name).into_owned();
            let kind = match raw.st_type() {
                elf::STT_NOTYPE => SymbolKind::NoType,
                elf::STT_OBJECT => SymbolKind::Object,
                elf::STT_FUNC => SymbolKind::Func,
                elf::STT_SECTION => SymbolKind::Section,
                elf::STT_FILE => SymbolKind::File,
                _ => SymbolKind::Other,
            };
            let binding = match raw.st_bind() {
                elf::STB_LOCAL => Binding::Local,
                elf::STB_WEAK => Binding::Weak,
                _ => Binding::Global,
            };
            let shndx = raw.st_shndx(endian);
            let placement = if shndx == elf::SHN_UNDEF {
                Placement::Undefined
            } else if shndx == elf::SHN_ABS {
                Placement::Absolute
            } else if shndx == elf::SHN_COMMON {
                Placement::Common
            } else {
                let section = symbol_table
                    .symbol_section(endian, raw, index)
                    .map_err(|e| fail(format!("symbol {symbol_name}: {e}")))?;
                match section {
                    Some(SectionIndex(i)) if i > 0 && i < sections.len() => {
                        Placement::Section(SectionId(i))
                    }
                    Some(SectionIndex(i)) => {
                        return Err(fail(format!(
                            "symbol {symbol_name}: section index {i} out of range (object has {} sections)",
                            sections.len()
                        )))
                    }
                    None => Placement::Undefined,
                }
            };
            let value = raw.st_value(endian);
            let size = raw.st_size(endian);
            if let Placement::Section(section) = placement {
                let section_size = sections[section.0].size;
                if value.checked_add(size).is_none_or(|end| end > section_size) {
                    return Err(fail(format!(
                        "symbol {symbol_name}: [{value:#x}, +{size:#x}) lies outside section {} ({section_size:#x} bytes)",
                        sections[section.0].name
                    )));
                }
            }
            symbols.push(Symbol {
                id: SymbolId(index.0),
                name: symbol_name,
                kind,
                binding,
                placement,
                value,
                size,
                other: raw.st_other().0,
            });
        }
        if symbols.is_empty() {
            // An object without a symbol table (a bare note, say) is valid and defines nothing;
            // keep the null symbol that index 0 always means.
            symbols.push(Symbol {
                id: SymbolId(0),
                name: String::new(),
                kind: SymbolKind::NoType,
                binding: Binding::Local,
                placement: Placement::Undefined,
                value: 0,
                size: 0,
                other: 0,
            });
        }

        for (index, raw) in section_table.enumerate() {
            let sh_type = raw.sh_type(endian);
            if sh_type == elf::SHT_REL {
                return Err(fail(format!(
                    "section {}: SHT_REL relocations are not used on x86_64",
                    sections[index.0].name
                )));
            }
            if sh_type != elf::SHT_RELA {
                continue;
            }
            let rela_name = sections[index.0].name.clone();
            let target = raw.sh_info(endian) as usize;
            if target == 0 || target >= sections.len() {
                return Err(fail(format!(
                    "relocation section {rela_name}: applies to section index {target}, out of range"
                )));
            }
            let entries: &[elf::Rela64<Endianness>] = raw
                .data_as_array(endian, data)
                .map_err(|e| fail(format!("relocation section {rela_name}: {e}")))?;
            let target_size = sections[target].size;
            let mut relocations = Vec::with_capacity(entries.len());
            for entry in entries {
                let offset = entry.r_offset(endian);
                let r_type = entry.r_type(endian, false).0;
                let symbol = entry.r_sym(endian, false) as usize;
                let addend = entry.r_addend(endian);
                if symbol >= symbols.len() {
                    return Err(fail(format!(
                        "relocation section {rela_name}: symbol index {symbol} out of range ({} symbols)",
                        symbols.len()
                    )));
                }
                let field = relocation_field_size(r_type).ok_or_else(|| {
                    fail(format!(
                        "relocation section {rela_name}: unsupported x86_64 relocation type {r_type} at offset {offset:#x}"
                    ))
                })?;
                if offset
                    .checked_add(field)
                    .is_none_or(|end| end > target_size)
                {
                    return Err(fail(format!(
                        "relocation section {rela_name}: offset {offset:#x} lies outside section {} ({target_size:#x} bytes)",
                        sections[target].name
                    )));
                }
                relocations.push(Relocation {
                    section: SectionId(target),
                    offset,
                    r_type,
                    symbol: SymbolId(symbol),
                    addend,
                });
            }
            relocations.sort_by_key(|r| r.offset);
            sections[target].relocations.extend(relocations);
            sections[target].relocations.sort_by_key(|r| r.offset);
        }

        let mut symbols_by_section = vec![Vec::new(); sections.len()];
        for symbol in &symbols {
            if matches!(symbol.kind, SymbolKind::Func | SymbolKind::Object) && !symbol.is_prefix() {
                if let Some(section) = symbol.section() {
                    symbols_by_section[section.0].push(symbol.id);
                }
            }
        }
        for list in &mut symbols_by_section {
            list.sort_by_key(|id| (symbols[id.0].value, id.0));
        }
        let instructions = sections
            .iter()
            .map(|section| {
                if section.is_exec() && !section.is_nobits() {
                    decode_instructions(&section.data)
                } else {
                    Vec::new()
                }
            })
            .collect();
        Ok(Object {
            name: name.to_string(),
            sections,
            symbols,
            symbols_by_section,
            instructions,
            tables: BTreeMap::new(),
        })
    }

    /// Bytes between a relocated field and the address its displacement counts from: for a
    /// PC-relative field in code, the end of its instruction, which lies further than the
    /// field's own end when an immediate follows (`cmpl $0x5, x(%rip)` ends 4 bytes after the
    /// displacement: `x - 8`). Data fields (`.long 1b - .`) count from themselves: 0.
    pub fn reference_bias(&self, relocation: &Relocation) -> i64 {
        let fixed = pc_relative_bias(relocation.r_type);
        if fixed == 0 || !self.section(relocation.section).is_exec() {
            return 0;
        }
        let Some(instructions) = self.instructions.get(relocation.section.0) else {
            return fixed;
        };
        let offset = relocation.offset;
        let index = instructions.partition_point(|&(start, _)| u64::from(start) <= offset);
        let Some(&(start, length)) = index.checked_sub(1).and_then(|i| instructions.get(i)) else {
            return fixed;
        };
        let end = u64::from(start) + u64::from(length);
        // The field must lie inside the instruction, and what may follow a 32-bit
        // displacement is an immediate of 1, 2 or 4 bytes; anything else means the linear
        // decode lost its way here, and the assembler's usual layout is the better guess.
        match end.checked_sub(offset).and_then(|b| i64::try_from(b).ok()) {
            Some(bias) if bias == fixed || (fixed == 4 && matches!(bias, 5 | 6 | 8)) => bias,
            _ => fixed,
        }
    }

    /// The code a reference into an executable section lands on, up to and including the
    /// first unconditional jump after it, as `[start, end)`: one site's fallback block in
    /// `.altinstr_aux` (a capability test and the jumps back into its function). `None` when
    /// the reference does not land on an instruction or no jump ends the block within 64
    /// bytes.
    pub fn jump_block(
        &self,
        relocation: &Relocation,
        section: SectionId,
        addend: i64,
    ) -> Option<(u64, u64)> {
        const LONGEST: u64 = 64;
        let start = u64::try_from(addend.checked_add(self.reference_bias(relocation))?).ok()?;
        let instructions = self.instructions.get(section.0)?;
        let data = &self.section(section).data;
        let first = instructions.partition_point(|&(at, _)| u64::from(at) < start);
        if instructions.get(first).map(|&(at, _)| u64::from(at)) != Some(start) {
            return None;
        }
        for &(at, length) in &instructions[first..] {
            let end = u64::from(at) + u64::from(length);
            if end - start > LONGEST {
                return None;
            }
            // `jmp rel32` and `jmp rel8`.
            if matches!(data.get(at as usize), Some(0xe9 | 0xeb)) {
                return Some((start, end));
            }
        }
        None
    }

    pub fn section(&self, id: SectionId) -> &Section {
        &self.sections[id.0]
    }

    pub fn symbol(&self, id: SymbolId) -> &Symbol {
        &self.symbols[id.0]
    }

    /// Function and object symbols defined in `section`, sorted by value.
    pub fn symbols_in(&self, section: SectionId) -> &[SymbolId] {
        &self.symbols_by_section[section.0]
    }

    /// The byte range `[start, end)` a function or object owns in its section. With
    /// `-fpatchable-function-entry=16,16` the 16 padding bytes sit before the symbol, so a
    /// function owns everything from the end of the previous symbol in the section (or the
    /// section start) up to its own end; the last symbol also owns the section's tail padding.
    pub fn extent(&self, symbol: SymbolId) -> (u64, u64) {
        let sym = self.symbol(symbol);
        let Some(section) = sym.section() else {
            return (0, 0);
        };
        let list = self.symbols_in(section);
        // Symbols are sorted by value: those before `first_at` lie before this one, those from
        // `first_after` on after it (aliases at the same value share one extent).
        let first_at = list.partition_point(|&id| self.symbol(id).value < sym.value);
        let first_after = list.partition_point(|&id| self.symbol(id).value <= sym.value);
        let start = match first_at.checked_sub(1) {
            None => 0,
            Some(previous) => {
                let previous = self.symbol(list[previous]);
                (previous.value + previous.size).min(sym.value)
            }
        };
        let end = if first_after >= list.len() {
            self.section(section).size
        } else {
            sym.value + sym.size
        };
        (start, end.max(start))
    }

    /// Whether `symbol` is the only function or object in its section, so that including it
    /// means including the whole section.
    pub fn owns_whole_section(&self, symbol: SymbolId) -> bool {
        let sym = self.symbol(symbol);
        sym.section().is_some_and(|section| {
            self.symbols_in(section)
                .iter()
                .all(|&id| self.symbol(id).value == sym.value)
        })
    }

    /// What a relocation refers to, with section-symbol references turned into references to
    /// the covering function or object, and string references into string contents.
    pub fn resolve(&self, relocation: &Relocation) -> RelocationTarget {
        let sym = self.symbol(relocation.symbol);
        // A local label such as `.LC4` (gas keeps those that inline assembly names, as in
        // the bug table's `.long .LC4 - .`) is renumbered between compilations just like an
        // offset; resolve it like a section-relative reference.
        let is_local_label = sym.kind == SymbolKind::NoType
            && sym.binding == Binding::Local
            && sym.section().is_some();
        let addend = if is_local_label {
            relocation.addend.saturating_add(sym.value as i64)
        } else {
            relocation.addend
        };
        if sym.kind != SymbolKind::Section && !is_local_label {
            return RelocationTarget::Symbol {
                symbol: sym.id,
                offset: addend,
            };
        }
        let Some(section_id) = sym.section() else {
            return RelocationTarget::Symbol {
                symbol: sym.id,
                offset: addend,
            };
        };
        let section = self.section(section_id);
        // Only instructions end after their displacement; a table's `.long 1b - .` points
        // straight at its target.
        let bias = self.reference_bias(relocation);
        let location = addend.saturating_add(bias);
        if section.is_string_merge() {
            let at = u64::try_from(location.max(0))
                .unwrap_or(0)
                .min(section.data.len() as u64);
            let string_start = section.data[..at as usize]
                .iter()
                .rposition(|&b| b == 0)
                .map_or(0, |p| p as u64 + 1);
            return RelocationTarget::String {
                section: section_id,
                string_start,
                offset: addend.wrapping_sub(string_start as i64),
            };
        }
        // Addresses are compared as i128: a symbol's value and size are any u64 that fit
        // its section, an addend any i64.
        let covering = |address: i64| {
            self.symbols_in(section_id).iter().copied().find(|&id| {
                let s = self.symbol(id);
                let start = i128::from(s.value);
                let end = start + i128::from(s.size.max(1));
                (start..end).contains(&i128::from(address))
            })
        };
        let list = self.symbols_in(section_id);
        // An address in the padding before a function (the patchable-entry NOPs that
        // `__patchable_function_entries` points at) belongs to the function that follows.
        let owning = |address: i64| {
            list.iter().copied().find(|&id| {
                let (start, end) = self.extent(id);
                (i128::from(start)..i128::from(end)).contains(&i128::from(address))
            })
        };
        let found = covering(location)
            .or_else(|| covering(addend))
            .or_else(|| owning(addend))
            .or({
                // With -ffunction-sections there is one symbol per section; an address just past
                // it (an array end) or just before it still refers to it.
                if list.len() == 1 {
                    Some(list[0])
                } else {
                    None
                }
            });
        match found {
            Some(id) => RelocationTarget::Symbol {
                symbol: id,
                // Address arithmetic, modulo 2^64 as the relocation's S + A is: an addend
                // far below the symbol (i64::MIN) still names it.
                offset: addend.wrapping_sub(self.symbol(id).value as i64),
            },
            None => RelocationTarget::Section {
                section: section_id,
                addend,
            },
        }
    }

    /// The NUL-terminated string starting at `start` in a string section, without its NUL.
    pub fn string_at(&self, section: SectionId, start: u64) -> &[u8] {
        let data = &self.section(section).data;
        let start = (start as usize).min(data.len());
        let rest = &data[start..];
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    /// Relocations of `section` whose field lies in `[start, end)`.
    pub fn relocations_in(&self, section: SectionId, start: u64, end: u64) -> &[Relocation] {
        let relocations = &self.section(section).relocations;
        let first = relocations.partition_point(|r| r.offset < start);
        let last = relocations.partition_point(|r| r.offset < end);
        &relocations[first..last]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs the fuzzer found (`cargo xtask fuzz`), kept in `fuzz/regressions/elf/`.
    fn regression(name: &str) -> Object {
        let path = format!(
            "{}/../fuzz/regressions/elf/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        Object::parse(name, &data).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn an_alignment_larger_than_a_huge_page_is_an_error() {
        // A kernel object (transition.o) whose `.rodata...str1.1` alignment the fuzzer set
        // to 1 TiB: the output writer padded to it and asked for a terabyte.
        let path = format!(
            "{}/../fuzz/regressions/elf/align-1tib.o",
            env!("CARGO_MANIFEST_DIR")
        );
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let error = Object::parse("align-1tib.o", &data)
            .expect_err("a 1 TiB alignment")
            .to_string();
        assert!(
            error.contains("alignment 1099511627776 is larger than 2097152"),
            "{error}"
        );
    }

    #[test]
    fn an_addend_far_below_its_symbol_wraps_as_the_relocation_does() {
        // `same.orig.o` with the `__patchable_function_entries` entry's addend, `.text.answer
        // + 0`, set to i64::MIN: the offset from `answer` (at 0x10) overflowed an i64.
        let object = regression("addend-i64-min.o");
        let relocation = object
            .sections
            .iter()
            .find(|s| s.name == "__patchable_function_entries")
            .and_then(|s| s.relocations.first())
            .copied()
            .expect("the table's relocation");
        assert_eq!(relocation.addend, i64::MIN);
        let answer = object
            .symbols
            .iter()
            .find(|s| s.name == "answer")
            .expect("answer");
        assert_eq!(answer.value, 0x10);
        assert_eq!(
            object.resolve(&relocation),
            RelocationTarget::Symbol {
                symbol: answer.id,
                offset: i64::MIN.wrapping_sub(0x10),
            }
        );
    }
}
