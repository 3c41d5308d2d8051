//! The livepatch relocation records that travel through Kbuild's link.
//!
//! A reference from patched code to a symbol that the module loader cannot resolve (a local or
//! unexported symbol of vmlinux, or any symbol of a module that may load later) must become a
//! livepatch relocation: an entry in a `.klp.rela.<object>.<section>` section against a
//! `.klp.sym.<object>.<symbol>,<sympos>` symbol. The linker would turn such a relocation section
//! into an ordinary one and modpost would reject the undefined symbols, so the references cross
//! the link as data instead, and `post_link` turns them into livepatch relocations in the
//! linked `.ko`.
//!
//! Each record in [`RECORDS_SECTION`] is [`RECORD_SIZE`] bytes, little-endian:
//!
//! | offset | size | field                                                               |
//! |--------|------|---------------------------------------------------------------------|
//! | 0      | 8    | the place to relocate: an `R_X86_64_64` relocation against it      |
//! | 8      | 8    | the livepatch symbol name: an `R_X86_64_64` relocation to a C string |
//! |        |      | in [`STRINGS_SECTION`], such as `.klp.sym.vmlinux.saved_command_line,0` |
//! |        |      | ([`record_name`]: `btusb/.klp.sym.bluetooth.bt_err,0` when the      |
//! |        |      | relocation section is another klp object's than the symbol's)      |
//! | 16     | 4    | the relocation type (`R_X86_64_PC32`, `R_X86_64_32S`, ...)          |
//! | 20     | 4    | zero                                                                |
//! | 24     | 8    | the relocation addend                                               |
//!
//! Because both pointers are ordinary relocations, the linker keeps them right when it merges
//! and moves sections, which is the whole point of the detour.

use std::collections::BTreeMap;

use object::build::elf::{Builder, Relocation, SectionData, SectionId, SymbolId};
use object::build::Id;
use object::elf;

/// The section holding the records; it never reaches the final module.
pub const RECORDS_SECTION: &str = ".kpatch.klp_relocs";
/// The section holding the livepatch symbol names the records point at.
pub const STRINGS_SECTION: &str = ".kpatch.klp_strings";
/// The size of one record in bytes.
pub const RECORD_SIZE: u64 = 32;
/// Offset of the place pointer within a record.
pub const PLACE_OFFSET: u64 = 0;
/// Offset of the symbol name pointer within a record.
pub const NAME_OFFSET: u64 = 8;
/// Offset of the relocation type within a record.
pub const TYPE_OFFSET: u64 = 16;
/// Offset of the addend within a record.
pub const ADDEND_OFFSET: u64 = 24;

/// The prefix of every livepatch symbol name.
pub const KLP_SYM_PREFIX: &str = ".klp.sym.";
/// The prefix of every livepatch relocation section name.
pub const KLP_RELA_PREFIX: &str = ".klp.rela.";

/// The name of the livepatch symbol for `symbol` in `object` (`vmlinux` or a module name) at
/// position `sympos` (0 when the name is unique in that object).
pub fn klp_symbol_name(object: &str, symbol: &str, sympos: u64) -> String {
    format!("{KLP_SYM_PREFIX}{object}.{symbol},{sympos}")
}

/// The text a record carries for a livepatch symbol: the symbol name alone when its
/// relocation section belongs to the symbol's own klp object, else `<section object>/` before
/// it (a module's code calling another module's export: the relocation is applied when the
/// patched module comes, from that module's section).
pub fn record_name(section_object: &str, klp_symbol: &str) -> String {
    if object_of_klp_symbol(klp_symbol) == Some(section_object) {
        klp_symbol.to_string()
    } else {
        format!("{section_object}/{klp_symbol}")
    }
}

/// The (relocation section's klp object, livepatch symbol name) of a record's text.
pub fn parse_record_name(text: &str) -> Option<(&str, &str)> {
    match text.split_once('/') {
        Some((section_object, symbol)) => {
            object_of_klp_symbol(symbol)?;
            (!section_object.is_empty()).then_some((section_object, symbol))
        }
        None => Some((object_of_klp_symbol(text)?, text)),
    }
}

/// The object part of a livepatch symbol name, as the kernel parses it: everything between the
/// prefix and the next dot. `None` when the name is not a livepatch symbol name.
pub fn object_of_klp_symbol(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(KLP_SYM_PREFIX)?;
    let (object, symbol_and_pos) = rest.split_once('.')?;
    let (_, sympos) = symbol_and_pos.rsplit_once(',')?;
    if object.is_empty() || sympos.parse::<u64>().is_err() {
        return None;
    }
    Some(object)
}

/// Why an object's references could not be turned into records.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot read object {object}: {source}")]
    Read {
        object: String,
        source: object::build::Error,
    },
    #[error("cannot write object {object}: {source}")]
    Write {
        object: String,
        source: object::build::Error,
    },
    #[error("cannot convert reference to {symbol} in {object}: relocation section {section} applies to no section")]
    NoTarget {
        object: String,
        section: String,
        symbol: String,
    },
}

/// Replaces every relocation in `object_bytes` whose symbol is an undefined symbol named in
/// `klp_names` (object symbol name to the record's text, [`record_name`]) by a record, and drops those
/// symbols. Returns the new object and how many relocations became records.
///
/// The bytes at each converted place stay as the compiler left them (zero for `RELA`), which
/// is what the kernel's x86 relocation code checks before it writes a livepatch relocation.
pub fn convert_references(
    object_name: &str,
    object_bytes: &[u8],
    klp_names: &BTreeMap<String, String>,
) -> Result<(Vec<u8>, usize), RecordError> {
    let mut builder = Builder::read(object_bytes).map_err(|source| RecordError::Read {
        object: object_name.to_string(),
        source,
    })?;

    let converted: BTreeMap<usize, String> = builder
        .symbols
        .iter()
        .filter(|symbol| symbol.section.is_none() && symbol.st_shndx == elf::SHN_UNDEF)
        .filter_map(|symbol| {
            let name = std::str::from_utf8(symbol.name.as_slice()).ok()?;
            Some((symbol.id().index(), klp_names.get(name)?.clone()))
        })
        .collect();

    // Pull the relocations out, in section order, so that record order is deterministic.
    let mut pulled: Vec<(SectionId, u64, String, u32, i64)> = Vec::new();
    for section in builder.sections.iter_mut() {
        let SectionData::Relocation(relocations) = &mut section.data else {
            continue;
        };
        let mut missing_target = None;
        relocations.retain(|relocation| {
            let Some(klp_name) = relocation
                .symbol
                .and_then(|symbol| converted.get(&symbol.index()))
            else {
                return true;
            };
            match section.sh_info_section {
                Some(target) => pulled.push((
                    target,
                    relocation.r_offset,
                    klp_name.clone(),
                    relocation.r_type.0,
                    relocation.r_addend,
                )),
                None => missing_target = Some(klp_name.clone()),
            }
            false
        });
        if let Some(symbol) = missing_target {
            return Err(RecordError::NoTarget {
                object: object_name.to_string(),
                section: String::from_utf8_lossy(section.name.as_slice()).into_owned(),
                symbol,
            });
        }
    }
    for symbol in builder.symbols.iter_mut() {
        if converted.contains_key(&symbol.id().index()) {
            symbol.delete = true;
        }
    }
    let count = pulled.len();
    if count > 0 {
        append_records(&mut builder, &pulled);
    }
    let mut out = Vec::new();
    builder
        .write(&mut out)
        .map_err(|source| RecordError::Write {
            object: object_name.to_string(),
            source,
        })?;
    Ok((out, count))
}

/// The local section symbol of `section`, added when the object has none.
fn section_symbol(builder: &mut Builder<'_>, section: SectionId) -> SymbolId {
    let existing = builder.symbols.iter().find(|symbol| {
        !symbol.delete && symbol.section == Some(section) && symbol.st_type() == elf::STT_SECTION
    });
    if let Some(symbol) = existing {
        return symbol.id();
    }
    let symbol = builder.symbols.add();
    symbol.set_st_info(elf::STB_LOCAL, elf::STT_SECTION);
    symbol.section = Some(section);
    symbol.id()
}

fn append_records(builder: &mut Builder<'_>, pulled: &[(SectionId, u64, String, u32, i64)]) {
    // One string per distinct name, in name order.
    let mut string_offsets: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, _, name, _, _) in pulled {
        string_offsets.insert(name, 0);
    }
    let mut strings = Vec::new();
    for (name, offset) in string_offsets.iter_mut() {
        *offset = strings.len() as u64;
        strings.extend_from_slice(name.as_bytes());
        strings.push(0);
    }

    let strings_section = builder.sections.add();
    strings_section.name = STRINGS_SECTION.as_bytes().to_vec().into();
    strings_section.sh_type = elf::SHT_PROGBITS;
    // Allocated only so that modpost does not warn about a stray section; post-link removes
    // both sections before the module is ever loaded.
    strings_section.sh_flags = elf::SHF_ALLOC;
    strings_section.sh_addralign = 1;
    strings_section.data = SectionData::Data(strings.into());
    let strings_id = strings_section.id();

    let mut data = vec![0u8; pulled.len() * RECORD_SIZE as usize];
    let mut pointers = Vec::with_capacity(pulled.len() * 2);
    let strings_symbol = section_symbol(builder, strings_id);
    for (index, (target, offset, name, r_type, addend)) in pulled.iter().enumerate() {
        let base = index as u64 * RECORD_SIZE;
        let at = base as usize;
        data[at + TYPE_OFFSET as usize..at + TYPE_OFFSET as usize + 4]
            .copy_from_slice(&r_type.to_le_bytes());
        data[at + ADDEND_OFFSET as usize..at + ADDEND_OFFSET as usize + 8]
            .copy_from_slice(&addend.to_le_bytes());
        let place_symbol = section_symbol(builder, *target);
        pointers.push(Relocation {
            r_offset: base + PLACE_OFFSET,
            symbol: Some(place_symbol),
            r_type: elf::R_X86_64_64,
            r_addend: *offset as i64,
        });
        pointers.push(Relocation {
            r_offset: base + NAME_OFFSET,
            symbol: Some(strings_symbol),
            r_type: elf::R_X86_64_64,
            r_addend: string_offsets.get(name.as_str()).copied().unwrap_or(0) as i64,
        });
    }

    let records_section = builder.sections.add();
    records_section.name = RECORDS_SECTION.as_bytes().to_vec().into();
    records_section.sh_type = elf::SHT_PROGBITS;
    records_section.sh_flags = elf::SHF_ALLOC;
    records_section.sh_addralign = 8;
    records_section.data = SectionData::Data(data.into());
    let records_id = records_section.id();

    let symtab = builder
        .sections
        .iter()
        .find(|section| matches!(section.data, SectionData::Symbol))
        .map(|section| section.id());
    let rela = builder.sections.add();
    rela.name = format!(".rela{RECORDS_SECTION}").into_bytes().into();
    rela.sh_type = elf::SHT_RELA;
    rela.sh_flags = elf::SHF_INFO_LINK;
    rela.sh_addralign = 8;
    rela.sh_entsize = 24;
    rela.sh_link_section = symtab;
    rela.sh_info_section = Some(records_id);
    rela.data = SectionData::Relocation(pointers);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbol_names_round_trip_to_their_object() {
        let name = klp_symbol_name("vmlinux", "saved_command_line", 0);
        assert_eq!(name, ".klp.sym.vmlinux.saved_command_line,0");
        assert_eq!(object_of_klp_symbol(&name), Some("vmlinux"));
        // GCC clone names carry dots; the kernel reads the object up to the first dot only.
        let clone = klp_symbol_name("kpatch_test_mod", "helper.constprop.0", 2);
        assert_eq!(object_of_klp_symbol(&clone), Some("kpatch_test_mod"));
    }

    #[test]
    fn malformed_symbol_names_have_no_object() {
        for name in [
            "saved_command_line",
            ".klp.sym.vmlinux",
            ".klp.sym..foo,0",
            ".klp.sym.vmlinux.foo",
            ".klp.sym.vmlinux.foo,x",
        ] {
            assert_eq!(object_of_klp_symbol(name), None, "{name}");
        }
    }
}
