//! Post-link: turn the relocation records of a linked livepatch module into the kernel's
//! livepatch relocation sections and symbols.
//!
//! Kbuild links the module with `ld -r`, which would fold any `.klp.rela.*` section into an
//! ordinary relocation section, and modpost rejects undefined symbols that no one exports. So
//! the references cross the link as records (see `klp_records`), and this phase rewrites the
//! linked `.ko`: one `SHT_RELA` section `.klp.rela.<object>.<section>` per (object, target
//! section), flagged `SHF_ALLOC | SHF_RELA_LIVEPATCH` so the loader keeps it in memory and
//! leaves it to the livepatch core, and one `.klp.sym.<object>.<symbol>,<sympos>` symbol per
//! name, with section index `SHN_LIVEPATCH` so the loader does not try to resolve it. The
//! records and their strings are removed.
//!
//! The rewrite is deterministic: records are grouped and symbols created in a fixed order
//! (target section index, then record order), so the same input gives the same bytes.

use std::collections::BTreeMap;

use object::build::elf::{Builder, Relocation, SectionData, SectionId, SymbolId};
use object::build::Id;
use object::elf;

use crate::build::klp_records::{
    parse_record_name, ADDEND_OFFSET, KLP_RELA_PREFIX, NAME_OFFSET, PLACE_OFFSET, RECORDS_SECTION,
    RECORD_SIZE, STRINGS_SECTION, TYPE_OFFSET,
};

/// `SHF_RELA_LIVEPATCH` from the kernel's `include/uapi/linux/elf.h`.
pub const SHF_RELA_LIVEPATCH: u64 = 0x0010_0000;
/// `SHN_LIVEPATCH` from the kernel's `include/uapi/linux/elf.h`.
pub const SHN_LIVEPATCH: u16 = 0xff20;

/// Why a linked module could not be rewritten.
#[derive(Debug, thiserror::Error)]
pub enum PostLinkError {
    #[error("cannot read linked module {module}: {source}")]
    Read {
        module: String,
        source: object::build::Error,
    },
    #[error("cannot write linked module {module}: {source}")]
    Write {
        module: String,
        source: object::build::Error,
    },
    #[error("malformed livepatch relocation record {index} in {module}: {what}")]
    Record {
        module: String,
        index: u64,
        what: String,
    },
}

/// What the rewrite produced, for the report and for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostLinkSummary {
    /// The livepatch relocation sections written, by name, with their entry counts.
    pub sections: Vec<(String, usize)>,
}

/// One record, read back from the linked module.
#[derive(Debug)]
struct Record {
    target_section: SectionId,
    target_offset: u64,
    /// The klp object whose `.klp.rela.<object>.<section>` holds the relocation.
    section_object: String,
    symbol_name: String,
    r_type: u32,
    addend: i64,
}

/// The non-allocated section where kpatch-rs leaves a description of the module (its
/// objects, functions and sympos, as JSON) for `kpatch-rs inspect`. The loader ignores it.
pub const INFO_SECTION: &str = ".kpatch.info";

/// Rewrites the linked module `ko` (named `module` in messages) and returns the new bytes;
/// `info` goes into [`INFO_SECTION`] when given.
///
/// A module without records is returned unchanged in meaning: it needs no livepatch
/// relocations (the kernel's own livepatch sample is such a module).
pub fn rewrite_module(
    module: &str,
    ko: &[u8],
    info: Option<&[u8]>,
) -> Result<(Vec<u8>, PostLinkSummary), PostLinkError> {
    let mut builder = Builder::read(ko).map_err(|source| PostLinkError::Read {
        module: module.to_string(),
        source,
    })?;
    let records = read_records(module, &builder)?;
    let summary = apply_records(&mut builder, records);
    remove_record_sections(&mut builder);
    if let Some(info) = info {
        let section = builder.sections.add();
        section.name = INFO_SECTION.as_bytes().to_vec().into();
        section.sh_type = elf::SHT_PROGBITS;
        section.sh_addralign = 1;
        section.data = SectionData::Data(info.to_vec().into());
    }
    let mut out = Vec::new();
    builder
        .write(&mut out)
        .map_err(|source| PostLinkError::Write {
            module: module.to_string(),
            source,
        })?;
    Ok((out, summary))
}

fn find_section(builder: &Builder<'_>, name: &str) -> Option<SectionId> {
    builder
        .sections
        .iter()
        .find(|section| !section.delete && section.name.as_slice() == name.as_bytes())
        .map(|section| section.id())
}

/// The relocations that apply to `section`, from whichever relocation section targets it.
fn relocations_for<'a>(builder: &'a Builder<'_>, section: SectionId) -> Vec<&'a Relocation> {
    builder
        .sections
        .iter()
        .filter(|candidate| candidate.sh_info_section == Some(section))
        .filter_map(|candidate| match &candidate.data {
            SectionData::Relocation(relocations) => Some(relocations.iter()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Where a relocation points: the section of its symbol and the offset within it.
fn relocation_target(builder: &Builder<'_>, relocation: &Relocation) -> Option<(SectionId, u64)> {
    let symbol = builder.symbols.get(relocation.symbol?);
    let section = symbol.section?;
    let offset = symbol.st_value.checked_add_signed(relocation.r_addend)?;
    Some((section, offset))
}

fn section_bytes<'a>(builder: &'a Builder<'_>, section: SectionId) -> Option<&'a [u8]> {
    match &builder.sections.get(section).data {
        SectionData::Data(bytes) => Some(bytes.as_slice()),
        _ => None,
    }
}

fn read_records(module: &str, builder: &Builder<'_>) -> Result<Vec<Record>, PostLinkError> {
    let Some(records_section) = find_section(builder, RECORDS_SECTION) else {
        return Ok(Vec::new());
    };
    let malformed = |index: u64, what: String| PostLinkError::Record {
        module: module.to_string(),
        index,
        what,
    };
    let data = section_bytes(builder, records_section)
        .ok_or_else(|| malformed(0, format!("{RECORDS_SECTION} holds no data")))?;
    if !(data.len() as u64).is_multiple_of(RECORD_SIZE) {
        return Err(malformed(
            0,
            format!(
                "{RECORDS_SECTION} is {} bytes, not a multiple of {RECORD_SIZE}",
                data.len()
            ),
        ));
    }
    // Index the section's relocations by offset; each record has exactly two.
    let mut pointers: BTreeMap<u64, &Relocation> = BTreeMap::new();
    for relocation in relocations_for(builder, records_section) {
        if relocation.r_type != elf::R_X86_64_64 {
            return Err(malformed(
                relocation.r_offset / RECORD_SIZE,
                format!("pointer relocation has type {}", relocation.r_type.0),
            ));
        }
        pointers.insert(relocation.r_offset, relocation);
    }
    let read_u32 = |at: u64| -> Option<u32> {
        let at = usize::try_from(at).ok()?;
        Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
    };
    let read_i64 = |at: u64| -> Option<i64> {
        let at = usize::try_from(at).ok()?;
        Some(i64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?))
    };

    let mut records = Vec::new();
    for index in 0..data.len() as u64 / RECORD_SIZE {
        let base = index * RECORD_SIZE;
        let place = pointers
            .get(&(base + PLACE_OFFSET))
            .and_then(|relocation| relocation_target(builder, relocation))
            .ok_or_else(|| malformed(index, "place pointer has no relocation".into()))?;
        let (strings, string_offset) = pointers
            .get(&(base + NAME_OFFSET))
            .and_then(|relocation| relocation_target(builder, relocation))
            .ok_or_else(|| malformed(index, "symbol name pointer has no relocation".into()))?;
        let symbol_name = section_bytes(builder, strings)
            .and_then(|bytes| read_c_string(bytes, string_offset))
            .ok_or_else(|| malformed(index, "symbol name is not a terminated string".into()))?;
        let Some((section_object, symbol_name)) = parse_record_name(&symbol_name)
            .map(|(object, symbol)| (object.to_string(), symbol.to_string()))
        else {
            return Err(malformed(
                index,
                format!("`{symbol_name}` is not a livepatch symbol name"),
            ));
        };
        let r_type = read_u32(base + TYPE_OFFSET)
            .ok_or_else(|| malformed(index, "truncated relocation type".into()))?;
        let addend = read_i64(base + ADDEND_OFFSET)
            .ok_or_else(|| malformed(index, "truncated addend".into()))?;
        records.push(Record {
            target_section: place.0,
            target_offset: place.1,
            section_object,
            symbol_name,
            r_type,
            addend,
        });
    }
    Ok(records)
}

fn read_c_string(bytes: &[u8], offset: u64) -> Option<String> {
    let tail = bytes.get(usize::try_from(offset).ok()?..)?;
    let end = tail.iter().position(|&byte| byte == 0)?;
    String::from_utf8(tail[..end].to_vec()).ok()
}

fn apply_records(builder: &mut Builder<'_>, records: Vec<Record>) -> PostLinkSummary {
    let symtab = builder
        .sections
        .iter()
        .find(|section| matches!(section.data, SectionData::Symbol))
        .map(|section| section.id());

    // Group by (object, target section); the BTreeMap fixes the output order.
    let mut groups: BTreeMap<(String, usize), Vec<Record>> = BTreeMap::new();
    for record in records {
        groups
            .entry((record.section_object.clone(), record.target_section.index()))
            .or_default()
            .push(record);
    }

    let mut symbols: BTreeMap<String, SymbolId> = BTreeMap::new();
    let mut summary_sections = Vec::new();
    for ((object, _), group) in groups {
        let Some(target) = group.first().map(|record| record.target_section) else {
            continue;
        };
        let mut relocations = Vec::with_capacity(group.len());
        for record in &group {
            let symbol = *symbols
                .entry(record.symbol_name.clone())
                .or_insert_with(|| {
                    let symbol = builder.symbols.add();
                    symbol.name = record.symbol_name.clone().into_bytes().into();
                    symbol.set_st_info(elf::STB_GLOBAL, elf::STT_NOTYPE);
                    symbol.st_shndx = elf::SymbolSection(SHN_LIVEPATCH);
                    symbol.section = None;
                    symbol.id()
                });
            relocations.push(Relocation {
                r_offset: record.target_offset,
                symbol: Some(symbol),
                r_type: elf::RelocationType(record.r_type),
                r_addend: record.addend,
            });
        }
        let target_name =
            String::from_utf8_lossy(builder.sections.get(target).name.as_slice()).into_owned();
        let name = format!("{KLP_RELA_PREFIX}{object}.{target_name}");
        summary_sections.push((name.clone(), relocations.len()));
        let section = builder.sections.add();
        section.name = name.into_bytes().into();
        section.sh_type = elf::SHT_RELA;
        section.sh_flags =
            elf::SectionFlags(elf::SHF_ALLOC.0 | elf::SHF_INFO_LINK.0 | SHF_RELA_LIVEPATCH);
        section.sh_addralign = 8;
        section.sh_entsize = 24;
        section.sh_link_section = symtab;
        section.sh_info_section = Some(target);
        section.data = SectionData::Relocation(relocations);
    }
    PostLinkSummary {
        sections: summary_sections,
    }
}

fn remove_record_sections(builder: &mut Builder<'_>) {
    let removed: Vec<SectionId> = [RECORDS_SECTION, STRINGS_SECTION]
        .iter()
        .filter_map(|name| find_section(builder, name))
        .collect();
    for section in builder.sections.iter_mut() {
        let targets_removed = section
            .sh_info_section
            .is_some_and(|target| removed.contains(&target));
        if removed.contains(&section.id()) || targets_removed {
            section.delete = true;
        }
    }
    builder.delete_orphans();
}
