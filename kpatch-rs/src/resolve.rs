//! Resolve: where each symbol that patched code references lives in the running kernel.
//!
//! A reference resolves one of three ways: to a symbol the patch module defines itself, to a
//! symbol another binary exports (an ordinary relocation the module loader resolves), or to a
//! livepatch relocation against `.klp.sym.<object>.<symbol>,<sympos>`. This file owns the last
//! case's hard part, `sympos`: when a target has several symbols of one name (static functions
//! named `show` in many files), the livepatch core picks the `sympos`-th of them in kallsyms
//! order, so kpatch-rs must find which of them belongs to the translation unit it compiled.
//!
//! The target's symbols come from its ELF symbol table (vmlinux or the module's `.ko`), where
//! the linker keeps each input file's local symbols together after an `STT_FILE` symbol that
//! names the source file. The block for a translation unit is the one whose file name matches
//! and which holds the unit's local symbols; `sympos` is then the position of the block's symbol
//! among all same-named symbols in the order the kernel counts them: by address for vmlinux
//! (its kallsyms table is sorted so), by symbol table order for a module.

use std::collections::{BTreeMap, HashMap};

use object::read::elf::{ElfFile64, FileHeader, Sym};
use object::{elf, Endianness};

use crate::module::Target;

/// The position of a symbol among same-named symbols of its object: 0 when the name is unique,
/// otherwise 1-based, as `klp_func.old_sympos` and `.klp.sym` names take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Sympos(pub u64);

/// Why a reference could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot read symbols of {target}: {reason}")]
    Read { target: String, reason: String },
    #[error(
        "cannot find {file} in {target}: no local symbol block of that file holds any of \
         {symbols}; is {target} built from the same source and config?"
    )]
    NoBlock {
        target: String,
        file: String,
        symbols: String,
    },
    #[error(
        "cannot tell which {file} of {target} was compiled: {count} local symbol blocks match \
         equally well; its local symbols do not single one out"
    )]
    AmbiguousBlock {
        target: String,
        file: String,
        count: usize,
    },
    #[error("cannot find symbol {symbol} of {file} in {target}")]
    NoSymbol {
        target: String,
        file: String,
        symbol: String,
    },
}

/// One symbol of a target, as the kernel's symbol lookup sees it.
#[derive(Debug, Clone)]
struct TargetSymbol {
    name: String,
    address: u64,
    local: bool,
    /// The index of the `STT_FILE` block this local symbol belongs to.
    block: Option<usize>,
    /// Position in the order the kernel counts same-named symbols.
    order: usize,
}

/// A block of local symbols that the linker kept together under one `STT_FILE` symbol.
#[derive(Debug, Clone)]
struct FileBlock {
    file: String,
    symbols: Vec<usize>,
}

/// The symbols of one target binary, indexed for `sympos` lookups.
#[derive(Debug, Clone)]
pub struct TargetSymbols {
    target: Target,
    symbols: Vec<TargetSymbol>,
    by_name: HashMap<String, Vec<usize>>,
    blocks: Vec<FileBlock>,
}

/// A translation unit's block of local symbols inside a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockId(usize);

/// Whether a symbol name is one kallsyms would list. Compiler-local labels and mapping symbols
/// never reach it, and would only inflate the counts.
fn is_listed_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with(".L") && !name.starts_with('$')
}

impl TargetSymbols {
    /// Reads the symbol table of `data`, the ELF file of `target` (vmlinux, or a module's
    /// `.ko`).
    pub fn from_elf(target: Target, data: &[u8]) -> Result<TargetSymbols, ResolveError> {
        let read_error = |reason: String| ResolveError::Read {
            target: target.klp_name().to_string(),
            reason,
        };
        let file = ElfFile64::<Endianness>::parse(data).map_err(|e| read_error(e.to_string()))?;
        let endian = file.endian();
        let header = file.elf_header();
        let sections = header
            .sections(endian, data)
            .map_err(|e| read_error(e.to_string()))?;
        let table = sections
            .symbols(endian, data, elf::SHT_SYMTAB)
            .map_err(|e| read_error(e.to_string()))?;
        if table.is_empty() {
            return Err(read_error(
                "it has no symbol table (stripped?); pass an unstripped vmlinux".to_string(),
            ));
        }
        let is_module = !matches!(target, Target::Vmlinux);

        let mut symbols = Vec::new();
        let mut blocks: Vec<FileBlock> = Vec::new();
        let mut current_block = None;
        for symbol in table.iter() {
            let name = table
                .symbol_name(endian, symbol)
                .map_err(|e| read_error(e.to_string()))?;
            let name = String::from_utf8_lossy(name).into_owned();
            let kind = symbol.st_type();
            if kind == elf::STT_FILE {
                blocks.push(FileBlock {
                    file: name,
                    symbols: Vec::new(),
                });
                current_block = Some(blocks.len() - 1);
                continue;
            }
            let local = symbol.st_bind() == elf::STB_LOCAL;
            if !local {
                // Globals come after every file's locals; no later local belongs to a file.
                current_block = None;
            }
            let shndx = symbol.st_shndx(endian);
            if kind == elf::STT_SECTION || shndx == elf::SHN_UNDEF || !is_listed_name(&name) {
                continue;
            }
            if is_module && is_init_section(&sections, endian, shndx.0.into()) {
                continue;
            }
            let index = symbols.len();
            if local {
                if let Some(block) = current_block {
                    blocks[block].symbols.push(index);
                }
            }
            symbols.push(TargetSymbol {
                name,
                address: symbol.st_value(endian),
                local,
                block: if local { current_block } else { None },
                order: index,
            });
        }

        // vmlinux counts same-named symbols by address; a module by symbol table order.
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        for (index, symbol) in symbols.iter().enumerate() {
            by_name.entry(symbol.name.clone()).or_default().push(index);
        }
        if !is_module {
            for indices in by_name.values_mut() {
                indices.sort_by_key(|&index| (symbols[index].address, symbols[index].order));
            }
        }
        Ok(TargetSymbols {
            target,
            symbols,
            by_name,
            blocks,
        })
    }

    /// Finds the block of the translation unit whose source file name is `file` (as GCC
    /// records it: the base name, such as `cmdline.c`) and whose local symbols include
    /// `locals` (the unit's local function and object names).
    pub fn find_block(&self, file: &str, locals: &[&str]) -> Result<BlockId, ResolveError> {
        // Score each same-named block by how many of the unit's locals it holds. The best
        // block need not hold all of them: the compiler keeps locals that the kernel's link
        // discards (`__UNIQUE_ID_*` in `.discard.*`, `.init` data of some configs).
        let mut scored: Vec<(usize, usize)> = Vec::new();
        for (index, block) in self.blocks.iter().enumerate() {
            if block.file != file {
                continue;
            }
            let score = locals
                .iter()
                .filter(|local| {
                    block
                        .symbols
                        .iter()
                        .any(|&symbol| self.symbols[symbol].name == **local)
                })
                .count();
            scored.push((index, score));
        }
        let top = scored.iter().map(|&(_, score)| score).max().unwrap_or(0);
        let mut best: Vec<usize> = scored
            .iter()
            .filter(|&&(_, score)| score == top && (score > 0 || locals.is_empty()))
            .map(|&(index, _)| index)
            .collect();
        // Among equally good blocks, prefer the one whose own locals are closest in number
        // to the unit's.
        if best.len() > 1 {
            let size = |index: &usize| self.blocks[*index].symbols.len().abs_diff(locals.len());
            let closest = best.iter().map(size).min().unwrap_or(0);
            best.retain(|index| size(index) == closest);
        }
        match best.as_slice() {
            [block] => Ok(BlockId(*block)),
            [] => Err(ResolveError::NoBlock {
                target: self.target.klp_name().to_string(),
                file: file.to_string(),
                symbols: if locals.is_empty() {
                    "any symbol".to_string()
                } else {
                    locals.join(", ")
                },
            }),
            many => Err(ResolveError::AmbiguousBlock {
                target: self.target.klp_name().to_string(),
                file: file.to_string(),
                count: many.len(),
            }),
        }
    }

    /// The `sympos` of `name`: of the local symbol in `block` when given, else of the
    /// target's global symbol of that name.
    pub fn sympos(&self, name: &str, block: Option<BlockId>) -> Result<Sympos, ResolveError> {
        let not_found = || ResolveError::NoSymbol {
            target: self.target.klp_name().to_string(),
            file: block
                .map(|BlockId(index)| self.blocks[index].file.clone())
                .unwrap_or_else(|| "global scope".to_string()),
            symbol: name.to_string(),
        };
        let same_named = self.by_name.get(name).ok_or_else(not_found)?;
        let position = same_named
            .iter()
            .position(|&index| {
                let symbol = &self.symbols[index];
                match block {
                    Some(BlockId(block)) => symbol.local && symbol.block == Some(block),
                    None => !symbol.local,
                }
            })
            .ok_or_else(not_found)?;
        if same_named.len() == 1 {
            Ok(Sympos(0))
        } else {
            Ok(Sympos(position as u64 + 1))
        }
    }

    /// Whether the target defines a global symbol named `name`.
    pub fn has_global(&self, name: &str) -> bool {
        self.by_name
            .get(name)
            .is_some_and(|indices| indices.iter().any(|&index| !self.symbols[index].local))
    }
}

/// Whether section `index` of a module is one the loader frees after init (`.init.*`), whose
/// symbols the kernel no longer lists once the module is live.
fn is_init_section(
    sections: &object::read::elf::SectionTable<'_, elf::FileHeader64<Endianness>>,
    endian: Endianness,
    index: usize,
) -> bool {
    sections
        .section(object::SectionIndex(index))
        .ok()
        .and_then(|section| sections.section_name(endian, section).ok())
        .is_some_and(|name| name.starts_with(b".init") || name.starts_with(b".exit"))
}

/// The symbols each binary exports, from a `Module.symvers` file:
/// `<crc>\t<symbol>\t<module>\t<export type>[\t<namespace>]` per line.
#[derive(Debug, Clone, Default)]
pub struct Exports {
    owner: BTreeMap<String, String>,
}

impl Exports {
    /// Parses `Module.symvers` content; lines that do not have the expected fields are
    /// reported with their line number.
    pub fn parse(content: &str) -> Result<Exports, ResolveError> {
        let mut owner = BTreeMap::new();
        for (number, line) in content.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split('\t').collect();
            let (Some(symbol), Some(module)) = (fields.get(1), fields.get(2)) else {
                return Err(ResolveError::Read {
                    target: "Module.symvers".to_string(),
                    reason: format!("line {} has fewer than 3 tab-separated fields", number + 1),
                });
            };
            owner.insert(symbol.to_string(), module.to_string());
        }
        Ok(Exports { owner })
    }

    /// The binary that exports `symbol` (`vmlinux` or a module path), if any.
    pub fn exporter(&self, symbol: &str) -> Option<&str> {
        self.owner.get(symbol).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_symvers_lines_map_symbols_to_their_exporter() {
        let exports = Exports::parse(
            "0x12345678\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n\
             0x00000000\tsnd_card_new\tsound/core/snd\tEXPORT_SYMBOL_GPL\tSND\n",
        )
        .expect("parse");
        assert_eq!(exports.exporter("printk"), Some("vmlinux"));
        assert_eq!(exports.exporter("snd_card_new"), Some("sound/core/snd"));
        assert_eq!(exports.exporter("saved_command_line"), None);
        let error = Exports::parse("printk vmlinux\n").expect_err("malformed");
        assert_eq!(
            error.to_string(),
            "cannot read symbols of Module.symvers: line 1 has fewer than 3 tab-separated fields"
        );
    }
}
