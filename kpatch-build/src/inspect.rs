//! Inspect: what a livepatch module will ask of the kernel, read back from the `.ko`.
//!
//! The livepatch relocations and symbols come straight from the ELF file, as the kernel reads
//! them: each `SHF_RELA_LIVEPATCH` section, the section it applies to, and every
//! `.klp.sym.<object>.<symbol>,<sympos>` symbol it uses. The patch's objects and functions come
//! from the description kpatch-rs leaves in `.kpatch.info`; a module built by another tool has
//! none, and the report says so rather than guessing from the kernel's structure layouts.

use std::io::{self, Write};

use object::read::elf::{ElfFile64, FileHeader, Rela, SectionHeader, Sym};
use object::{elf, Endianness};

use crate::build::module::LivepatchModule;
use crate::build::post_link::{INFO_SECTION, SHF_RELA_LIVEPATCH, SHN_LIVEPATCH};

/// Why a file could not be inspected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot inspect {file}: {reason}")]
pub struct InspectError {
    file: String,
    reason: String,
}

/// One livepatch relocation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KlpRelocation {
    /// Offset in the section it applies to.
    pub offset: u64,
    /// The x86_64 relocation type number.
    pub r_type: u32,
    /// The livepatch symbol it refers to.
    pub symbol: String,
    /// The addend.
    pub addend: i64,
}

/// One livepatch relocation section.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KlpRelocationSection {
    /// Its name, `.klp.rela.<object>.<section>`.
    pub name: String,
    /// The section of the module it applies to.
    pub applies_to: String,
    /// Its entries.
    pub relocations: Vec<KlpRelocation>,
}

/// One livepatch symbol, parsed as the kernel parses it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KlpSymbol {
    /// The object that defines it: `vmlinux` or a module name.
    pub object: String,
    /// The symbol's name in that object.
    pub name: String,
    /// Its position among same-named symbols (0: unique).
    pub sympos: u64,
}

/// What `kpatch-rs inspect` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Inspection {
    /// The module name from `.modinfo`.
    pub module: String,
    /// Whether `.modinfo` marks it as a livepatch (`livepatch=Y`).
    pub livepatch: bool,
    /// The kernel version string it was built for.
    pub vermagic: String,
    /// The patch's objects and functions, when kpatch-rs built the module.
    pub patch: Option<LivepatchModule>,
    /// Its livepatch relocation sections.
    pub klp_relocation_sections: Vec<KlpRelocationSection>,
    /// Its livepatch symbols.
    pub klp_symbols: Vec<KlpSymbol>,
    /// The signature appended to it, if any.
    pub signature: Option<AppendedSignature>,
}

/// A module signature as `scripts/sign-file` appends it: the signature, a `module_signature`
/// trailer (12 bytes; the signature's length big-endian in the last four) and the marker.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AppendedSignature {
    /// The trailer's key identifier type: `PKCS#7` for every signature current kernels accept.
    pub id_type: String,
    /// The signature's length in bytes.
    pub bytes: u32,
}

/// The marker the kernel looks for at the end of a signed module.
const SIGNATURE_MARKER: &[u8] = b"~Module signature appended~\n";

/// The signature appended to a module's bytes, if the marker ends them and the trailer's
/// length fits.
pub fn appended_signature(data: &[u8]) -> Option<AppendedSignature> {
    const TRAILER: usize = 12;
    let body = data.strip_suffix(SIGNATURE_MARKER)?;
    let trailer = body.get(body.len().checked_sub(TRAILER)?..)?;
    let bytes = u32::from_be_bytes([trailer[8], trailer[9], trailer[10], trailer[11]]);
    if (bytes as usize) > body.len() - TRAILER {
        return None;
    }
    let id_type = match trailer[2] {
        2 => "PKCS#7".to_string(),
        other => format!("unknown ({other})"),
    };
    Some(AppendedSignature { id_type, bytes })
}

/// Reads the livepatch metadata of module `file` from its bytes.
pub fn inspect(file: &str, data: &[u8]) -> Result<Inspection, InspectError> {
    let fail = |reason: String| InspectError {
        file: file.to_string(),
        reason,
    };
    let elf_file = ElfFile64::<Endianness>::parse(data)
        .map_err(|e| fail(format!("not a 64-bit ELF file ({e})")))?;
    let endian = elf_file.endian();
    let header = elf_file.elf_header();
    if header.e_type(endian) != elf::ET_REL {
        return Err(fail(
            "not a kernel module (not a relocatable ELF file)".to_string(),
        ));
    }
    let sections = header
        .sections(endian, data)
        .map_err(|e| fail(e.to_string()))?;
    let symbols = sections
        .symbols(endian, data, elf::SHT_SYMTAB)
        .map_err(|e| fail(e.to_string()))?;

    let mut modinfo: Vec<(String, String)> = Vec::new();
    let mut patch = None;
    let mut klp_relocation_sections = Vec::new();
    for section in sections.iter() {
        let name = sections
            .section_name(endian, section)
            .map_err(|e| fail(e.to_string()))?;
        if name == b".modinfo" {
            let bytes = section
                .data(endian, data)
                .map_err(|e| fail(e.to_string()))?;
            for entry in bytes.split(|&b| b == 0) {
                let entry = String::from_utf8_lossy(entry);
                if let Some((key, value)) = entry.split_once('=') {
                    modinfo.push((key.to_string(), value.to_string()));
                }
            }
        } else if name == INFO_SECTION.as_bytes() {
            let bytes = section
                .data(endian, data)
                .map_err(|e| fail(e.to_string()))?;
            patch = Some(
                serde_json::from_slice(bytes)
                    .map_err(|e| fail(format!("{INFO_SECTION} is not readable: {e}")))?,
            );
        } else if section.sh_flags(endian).0 & SHF_RELA_LIVEPATCH != 0 {
            let target = sections
                .section(object::SectionIndex(section.sh_info(endian) as usize))
                .and_then(|target| sections.section_name(endian, target))
                .map_err(|e| fail(format!("{}: {e}", String::from_utf8_lossy(name))))?;
            let (relas, _) = section
                .rela(endian, data)
                .map_err(|e| fail(e.to_string()))?
                .ok_or_else(|| fail("a livepatch relocation section is not RELA".to_string()))?;
            let mut relocations = Vec::new();
            for rela in relas {
                let symbol = symbols
                    .symbol(object::SymbolIndex(rela.r_sym(endian, false) as usize))
                    .map_err(|e| fail(e.to_string()))?;
                let symbol_name = symbols
                    .symbol_name(endian, symbol)
                    .map_err(|e| fail(e.to_string()))?;
                relocations.push(KlpRelocation {
                    offset: rela.r_offset(endian),
                    r_type: rela.r_type(endian, false).0,
                    symbol: String::from_utf8_lossy(symbol_name).into_owned(),
                    addend: rela.r_addend(endian),
                });
            }
            klp_relocation_sections.push(KlpRelocationSection {
                name: String::from_utf8_lossy(name).into_owned(),
                applies_to: String::from_utf8_lossy(target).into_owned(),
                relocations,
            });
        }
    }
    if modinfo.is_empty() {
        return Err(fail("not a kernel module (no .modinfo)".to_string()));
    }
    let info = |key: &str| {
        modinfo
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };

    let mut klp_symbols = Vec::new();
    for symbol in symbols.iter() {
        if symbol.st_shndx(endian).0 != SHN_LIVEPATCH {
            continue;
        }
        let name = symbols
            .symbol_name(endian, symbol)
            .map_err(|e| fail(e.to_string()))?;
        let name = String::from_utf8_lossy(name);
        let parsed = name.strip_prefix(".klp.sym.").and_then(|rest| {
            let (object, rest) = rest.split_once('.')?;
            let (symbol, sympos) = rest.rsplit_once(',')?;
            Some(KlpSymbol {
                object: object.to_string(),
                name: symbol.to_string(),
                sympos: sympos.parse().ok()?,
            })
        });
        klp_symbols.push(parsed.ok_or_else(|| {
            fail(format!(
                "livepatch symbol {name} is not named .klp.sym.<object>.<symbol>,<sympos>"
            ))
        })?);
    }

    Ok(Inspection {
        module: info("name"),
        livepatch: info("livepatch") == "Y",
        vermagic: info("vermagic"),
        patch,
        klp_relocation_sections,
        klp_symbols,
        signature: appended_signature(data),
    })
}

impl Inspection {
    /// Prints the inspection as one JSON document.
    pub fn write_json(&self, out: &mut dyn Write) -> io::Result<()> {
        serde_json::to_writer_pretty(&mut *out, self)?;
        writeln!(out)
    }

    /// Prints the inspection for people.
    pub fn write_human(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(
            out,
            "module {} ({}), built for {}",
            self.module,
            if self.livepatch {
                "livepatch"
            } else {
                "not marked as a livepatch"
            },
            self.vermagic.trim()
        )?;
        match &self.signature {
            Some(signature) => writeln!(
                out,
                "signed: {} signature of {} bytes appended",
                signature.id_type, signature.bytes
            )?,
            None => writeln!(out, "not signed")?,
        }
        match &self.patch {
            Some(patch) => {
                writeln!(
                    out,
                    "patch from {} ({})",
                    patch.patches.join(", "),
                    if patch.replace {
                        "replaces earlier livepatches"
                    } else {
                        "stacks on earlier livepatches"
                    }
                )?;
                for object in &patch.objects {
                    writeln!(out, "object {}", object.name.klp_name())?;
                    for function in &object.functions {
                        writeln!(
                            out,
                            "  function {} sympos {}",
                            function.old_name, function.old_sympos
                        )?;
                    }
                    let callbacks = &object.callbacks;
                    for (kind, symbol) in [
                        ("pre-patch", &callbacks.pre_patch),
                        ("post-patch", &callbacks.post_patch),
                        ("pre-unpatch", &callbacks.pre_unpatch),
                        ("post-unpatch", &callbacks.post_unpatch),
                    ] {
                        if symbol.is_some() {
                            writeln!(out, "  callback {kind}")?;
                        }
                    }
                }
            }
            None => writeln!(
                out,
                "no kpatch-rs description (.kpatch.info): built by another tool"
            )?,
        }
        for section in &self.klp_relocation_sections {
            writeln!(
                out,
                "relocations {} -> {} ({})",
                section.name,
                section.applies_to,
                section.relocations.len()
            )?;
            for relocation in &section.relocations {
                writeln!(
                    out,
                    "  {:#x} type {} {}{:+}",
                    relocation.offset, relocation.r_type, relocation.symbol, relocation.addend
                )?;
            }
        }
        for symbol in &self.klp_symbols {
            writeln!(
                out,
                "symbol {}.{} sympos {}",
                symbol.object, symbol.name, symbol.sympos
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{appended_signature, AppendedSignature, SIGNATURE_MARKER};

    fn signed(module: &[u8], signature: &[u8], id_type: u8) -> Vec<u8> {
        let mut data = module.to_vec();
        data.extend_from_slice(signature);
        let length = u32::try_from(signature.len())
            .expect("length")
            .to_be_bytes();
        data.extend_from_slice(&[0, 0, id_type, 0, 0, 0, 0, 0]);
        data.extend_from_slice(&length);
        data.extend_from_slice(SIGNATURE_MARKER);
        data
    }

    #[test]
    fn an_appended_signature_is_read_from_its_trailer() {
        assert_eq!(
            appended_signature(&signed(b"\x7fELF...", &[7; 466], 2)),
            Some(AppendedSignature {
                id_type: "PKCS#7".to_string(),
                bytes: 466
            })
        );
        assert_eq!(
            appended_signature(&signed(b"\x7fELF", &[1; 3], 1)).map(|s| s.id_type),
            Some("unknown (1)".to_string())
        );
    }

    #[test]
    fn no_marker_or_a_length_past_the_start_is_no_signature() {
        assert_eq!(appended_signature(b"\x7fELF plain module"), None);
        let mut lying = signed(b"", &[0; 4], 2);
        let length_at = lying.len() - SIGNATURE_MARKER.len() - 4;
        lying[length_at..length_at + 4].copy_from_slice(&1000u32.to_be_bytes());
        assert_eq!(appended_signature(&lying), None);
        assert_eq!(appended_signature(SIGNATURE_MARKER), None);
    }
}
