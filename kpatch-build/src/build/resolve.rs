//! Resolve: where each symbol that patched code references lives in the running kernel.
//!
//! A reference resolves one of three ways: to a symbol the patch module defines itself, to a
//! symbol another binary exports (an ordinary relocation the module loader resolves), or to a
//! livepatch relocation against `.klp.sym.<object>.<symbol>,<sympos>`. This file owns the last
//! case's hard part, `sympos`: when a klp object has several symbols of one name (static functions
//! named `show` in many files), the livepatch core picks the `sympos`-th of them in kallsyms
//! order, so kpatch-rs must find which of them belongs to the translation unit it compiled.
//!
//! The klp object's symbols come from its ELF symbol table (vmlinux or the module's `.ko`), where
//! the linker keeps each input file's local symbols together after an `STT_FILE` symbol that
//! names the source file. The block for a translation unit is the one whose file name matches
//! and which holds the unit's local symbols; `sympos` is then the position of the block's symbol
//! among all same-named symbols in the order the kernel counts them: by address for vmlinux
//! (its kallsyms table is sorted so), by symbol table order for a module.

use std::collections::{BTreeMap, HashMap};

use object::read::elf::{ElfFile64, FileHeader, Sym};
use object::{elf, Endianness, Object as _, ObjectSection as _, ReadRef};

use crate::build::module::KlpObjectName;

/// The position of a symbol among same-named symbols of its object: 0 when the name is unique,
/// otherwise 1-based, as `klp_func.old_sympos` and `.klp.sym` names take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Sympos(pub u64);

/// Why a reference could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot read symbols of {klp_object}: {reason}")]
    Read { klp_object: String, reason: String },
    #[error(
        "cannot find {file} in {klp_object}: no local symbol block of that file holds any of \
         {symbols}; is {klp_object} built from the same source and config?"
    )]
    NoBlock {
        klp_object: String,
        file: String,
        symbols: String,
    },
    #[error(
        "cannot tell which {file} of {klp_object} was compiled: {count} local symbol blocks match \
         equally well; its local symbols do not single one out"
    )]
    AmbiguousBlock {
        klp_object: String,
        file: String,
        count: usize,
    },
    #[error(
        "cannot tell which {symbol} of {klp_object} belongs to {file}: the symbol map has \
         {count} local symbols of that name and the neighbours of {candidates} match \
         {file}'s symbols equally well; pass the debug vmlinux with --vmlinux to settle it"
    )]
    AmbiguousSymbol {
        klp_object: String,
        file: String,
        symbol: String,
        count: usize,
        candidates: String,
    },
    #[error(
        "cannot tell which {symbol} of {klp_object} is meant: the module has {count} local symbols \
         of that name and no file symbols (stripped); pass the directory of its unstripped \
         modules (a distribution's -dbg package) with --modules"
    )]
    StrippedModule {
        klp_object: String,
        symbol: String,
        count: usize,
    },
    #[error("cannot find symbol {symbol} of {file} in {klp_object}")]
    NoSymbol {
        klp_object: String,
        file: String,
        symbol: String,
    },
}

/// One symbol of a klp object, as the kernel's symbol lookup sees it.
#[derive(Debug, Clone)]
struct KlpObjectSymbol {
    name: String,
    address: u64,
    local: bool,
    /// Code rather than data (System.map types `t`, `T`, `w`, `W`); only symbol maps use it.
    text: bool,
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

/// The symbols of one klp object (vmlinux or a module), indexed for `sympos` lookups.
#[derive(Debug, Clone)]
pub struct KlpObjectSymbols {
    klp_object: KlpObjectName,
    symbols: Vec<KlpObjectSymbol>,
    by_name: HashMap<String, Vec<usize>>,
    blocks: Vec<FileBlock>,
    /// Read from a symbol map (System.map, /proc/kallsyms): no file blocks, symbols in
    /// address order, and a unit's locals found by their neighbours instead.
    from_map: bool,
}

/// The translation unit kpatch-rs compiled, as the resolver needs it.
#[derive(Debug, Clone, Copy)]
pub struct Unit<'a> {
    /// The source file name as GCC records it in `STT_FILE` (`cmdline.c`).
    pub file: &'a str,
    /// The unit's local function and object names that the klp object's link keeps.
    pub locals: &'a [&'a str],
    /// Every function and object name the unit defines, local or global.
    pub defined: &'a [&'a str],
}

/// Where a translation unit's local symbols are inside a klp object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    /// The `STT_FILE` block of an ELF symbol table.
    File(usize),
    /// A unit in a symbol map: each local is found among same-named symbols by how many of
    /// its neighbours the unit also defines.
    Neighbours {
        file: String,
        names: std::collections::BTreeSet<String>,
    },
}

/// Whether a symbol name is one kallsyms would list. Compiler-local labels and mapping symbols
/// never reach it, and would only inflate the counts.
fn is_listed_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with(".L") && !name.starts_with('$')
}

impl KlpObjectSymbols {
    /// Reads the symbol table of `data`, the ELF file of `klp_object` (vmlinux, or a module's
    /// `.ko`): bytes in memory, or a file read through `object::ReadCache`, which reads only
    /// the headers, the symbol table and its strings, not a debug vmlinux's hundreds of
    /// megabytes of DWARF.
    pub fn from_elf<'data, R: ReadRef<'data>>(
        klp_object: KlpObjectName,
        data: R,
    ) -> Result<KlpObjectSymbols, ResolveError> {
        let read_error = |reason: String| ResolveError::Read {
            klp_object: klp_object.klp_name().to_string(),
            reason,
        };
        let file =
            ElfFile64::<Endianness, R>::parse(data).map_err(|e| read_error(e.to_string()))?;
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
        let is_module = !matches!(klp_object, KlpObjectName::Vmlinux);

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
            symbols.push(KlpObjectSymbol {
                name,
                address: symbol.st_value(endian),
                local,
                text: kind == elf::STT_FUNC,
                block: if local { current_block } else { None },
                order: index,
            });
        }

        // A distribution strips its modules of file symbols: the whole module is then one
        // block, which settles every name the module defines once.
        if blocks.is_empty() && is_module {
            let locals: Vec<usize> = (0..symbols.len())
                .filter(|&index| symbols[index].local)
                .collect();
            for &index in &locals {
                symbols[index].block = Some(0);
            }
            blocks.push(FileBlock {
                file: WHOLE_MODULE.to_string(),
                symbols: locals,
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
        Ok(KlpObjectSymbols {
            klp_object,
            symbols,
            by_name,
            blocks,
            from_map: false,
        })
    }

    /// Reads vmlinux's symbols from a symbol map: System.map (`nm -n` output, as Kbuild writes
    /// it) or a copy of `/proc/kallsyms`, whose module symbols (`[module]` suffix) are skipped.
    /// The map has no file symbols; `sympos` of a duplicated local comes from its neighbours.
    pub fn from_system_map(content: &str) -> Result<KlpObjectSymbols, ResolveError> {
        let mut symbols = Vec::new();
        for (number, line) in content.lines().enumerate() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (address, kind, name) = match fields.as_slice() {
                [] => continue,
                [address, kind, name] => (address, kind, name),
                // A kallsyms line of a module: not vmlinux.
                [_, _, _, module] if module.starts_with('[') => continue,
                _ => {
                    return Err(ResolveError::Read {
                        klp_object: "vmlinux".to_string(),
                        reason: format!(
                            "symbol map line {} is not `ADDRESS TYPE NAME`: {line:?}",
                            number + 1
                        ),
                    })
                }
            };
            let address = u64::from_str_radix(address, 16).map_err(|_| ResolveError::Read {
                klp_object: "vmlinux".to_string(),
                reason: format!(
                    "symbol map line {} has no hexadecimal address: {line:?}",
                    number + 1
                ),
            })?;
            let Some(kind) = kind.chars().next() else {
                continue;
            };
            // Absolute and undefined entries are not symbols the livepatch core looks up.
            if matches!(kind, 'a' | 'A' | 'U' | 'u' | 'N' | 'n') || !is_listed_name(name) {
                continue;
            }
            symbols.push(KlpObjectSymbol {
                name: name.to_string(),
                address,
                local: kind.is_ascii_lowercase(),
                text: matches!(kind, 't' | 'T' | 'w' | 'W'),
                block: None,
                order: 0,
            });
        }
        if symbols.is_empty() {
            return Err(ResolveError::Read {
                klp_object: "vmlinux".to_string(),
                reason: "the symbol map lists no symbols (Debian's image package ships a \
                         placeholder System.map; the real one is in the -dbg package)"
                    .to_string(),
            });
        }
        // kallsyms counts same-named symbols by address; a sorted map keeps that order.
        symbols.sort_by_key(|symbol| symbol.address);
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        for (index, symbol) in symbols.iter_mut().enumerate() {
            symbol.order = index;
            by_name.entry(symbol.name.clone()).or_default().push(index);
        }
        Ok(KlpObjectSymbols {
            klp_object: KlpObjectName::Vmlinux,
            symbols,
            by_name,
            blocks: Vec::new(),
            from_map: true,
        })
    }

    /// Finds where the unit's local symbols are: the `STT_FILE` block whose file name is
    /// `unit.file` and which holds the most of `unit.locals`, or, for a symbol map, the unit's
    /// names to compare each local's neighbours with.
    pub fn find_block(&self, unit: &Unit<'_>) -> Result<Block, ResolveError> {
        if self.from_map {
            let names: std::collections::BTreeSet<String> = unit
                .defined
                .iter()
                .map(|name| base_name(name).to_string())
                .collect();
            if !names
                .iter()
                .any(|name| self.by_name.contains_key(name.as_str()))
            {
                return Err(self.no_block(unit));
            }
            return Ok(Block::Neighbours {
                file: unit.file.to_string(),
                names,
            });
        }
        let (file, locals) = (unit.file, unit.locals);
        // Score each same-named block by how many of the unit's locals it holds. The best
        // block need not hold all of them: the compiler keeps locals that the kernel's link
        // discards (`__UNIQUE_ID_*` in `.discard.*`, `.init` data of some configs).
        let mut scored: Vec<(usize, usize)> = Vec::new();
        for (index, block) in self.blocks.iter().enumerate() {
            if block.file != file && block.file != WHOLE_MODULE {
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
            [block] => Ok(Block::File(*block)),
            [] => Err(self.no_block(unit)),
            many => Err(ResolveError::AmbiguousBlock {
                klp_object: self.klp_object.klp_name().to_string(),
                file: file.to_string(),
                count: many.len(),
            }),
        }
    }

    fn no_block(&self, unit: &Unit<'_>) -> ResolveError {
        ResolveError::NoBlock {
            klp_object: self.klp_object.klp_name().to_string(),
            file: unit.file.to_string(),
            symbols: if unit.locals.is_empty() {
                "any symbol".to_string()
            } else {
                unit.locals.join(", ")
            },
        }
    }

    /// The `sympos` of `name`: of the local symbol in `block` when given, else of the
    /// klp object's global symbol of that name.
    pub fn sympos(&self, name: &str, block: Option<&Block>) -> Result<Sympos, ResolveError> {
        let not_found = || ResolveError::NoSymbol {
            klp_object: self.klp_object.klp_name().to_string(),
            file: match block {
                Some(Block::File(index)) => self.blocks[*index].file.clone(),
                Some(Block::Neighbours { file, .. }) => file.clone(),
                None => "global scope".to_string(),
            },
            symbol: name.to_string(),
        };
        let same_named = self.by_name.get(name).ok_or_else(not_found)?;
        let position = match block {
            Some(Block::Neighbours { file, names }) => {
                self.position_by_neighbours(name, file, names, same_named)?
            }
            Some(Block::File(index)) if self.blocks[*index].file == WHOLE_MODULE => {
                let in_module: Vec<usize> = same_named
                    .iter()
                    .enumerate()
                    .filter(|&(_, &symbol)| self.symbols[symbol].local)
                    .map(|(position, _)| position)
                    .collect();
                match in_module.as_slice() {
                    [position] => *position,
                    [] => return Err(not_found()),
                    many => {
                        return Err(ResolveError::StrippedModule {
                            klp_object: self.klp_object.klp_name().to_string(),
                            symbol: name.to_string(),
                            count: many.len(),
                        })
                    }
                }
            }
            _ => same_named
                .iter()
                .position(|&index| {
                    let symbol = &self.symbols[index];
                    match block {
                        Some(Block::File(block)) => symbol.local && symbol.block == Some(*block),
                        _ => !symbol.local,
                    }
                })
                .ok_or_else(not_found)?,
        };
        if same_named.len() == 1 {
            Ok(Sympos(0))
        } else {
            Ok(Sympos(position as u64 + 1))
        }
    }

    /// Which of the same-named local symbols of a symbol map is the unit's: the one inside
    /// the longest run of neighbours (in address order, code or data alike) that the unit
    /// also defines. A unit's functions are laid out together in link order, so its copy of
    /// a duplicated name is surrounded by its other functions, while another file's copy is
    /// surrounded by that file's.
    fn position_by_neighbours(
        &self,
        name: &str,
        file: &str,
        names: &std::collections::BTreeSet<String>,
        same_named: &[usize],
    ) -> Result<usize, ResolveError> {
        let locals: Vec<(usize, usize)> = same_named
            .iter()
            .enumerate()
            .filter(|&(_, &index)| self.symbols[index].local)
            .map(|(position, &index)| (position, index))
            .collect();
        if let [(position, _)] = locals.as_slice() {
            return Ok(*position);
        }
        if locals.is_empty() {
            return Err(ResolveError::NoSymbol {
                klp_object: self.klp_object.klp_name().to_string(),
                file: file.to_string(),
                symbol: name.to_string(),
            });
        }
        let scored: Vec<(usize, usize, usize)> = locals
            .iter()
            .map(|&(position, index)| (position, index, self.run_length(index, names)))
            .collect();
        let top = scored.iter().map(|&(_, _, run)| run).max().unwrap_or(0);
        let best: Vec<&(usize, usize, usize)> =
            scored.iter().filter(|&&(_, _, run)| run == top).collect();
        match best.as_slice() {
            [(position, _, run)] if *run > 0 => Ok(*position),
            _ => Err(ResolveError::AmbiguousSymbol {
                klp_object: self.klp_object.klp_name().to_string(),
                file: file.to_string(),
                symbol: name.to_string(),
                count: locals.len(),
                candidates: best
                    .iter()
                    .map(|&&(_, index, _)| format!("{name} at {:#x}", self.symbols[index].address))
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// How many symbols next to `index` (before and after, up to the first that is not the
    /// unit's) the unit defines. Padding (`__pfx_`, `__cfi_`) symbols objtool adds at link
    /// time are stepped over.
    fn run_length(&self, index: usize, names: &std::collections::BTreeSet<String>) -> usize {
        let text = self.symbols[index].text;
        let belongs = |symbol: &KlpObjectSymbol| names.contains(base_name(&symbol.name));
        let is_padding = |symbol: &KlpObjectSymbol| {
            symbol.name.starts_with("__pfx_") || symbol.name.starts_with("__cfi_")
        };
        let mut run = 0;
        for neighbour in self.symbols[..index].iter().rev() {
            if is_padding(neighbour) {
                continue;
            }
            if neighbour.text != text || !belongs(neighbour) {
                break;
            }
            run += 1;
        }
        for neighbour in &self.symbols[index + 1..] {
            if is_padding(neighbour) {
                continue;
            }
            if neighbour.text != text || !belongs(neighbour) {
                break;
            }
            run += 1;
        }
        run
    }

    /// Whether the klp object defines a global symbol named `name`.
    pub fn has_global(&self, name: &str) -> bool {
        self.by_name
            .get(name)
            .is_some_and(|indices| indices.iter().any(|&index| !self.symbols[index].local))
    }
}

/// The file name of the one block of a module without file symbols.
const WHOLE_MODULE: &str = "*";

/// A symbol's name without the compiler's clone suffixes (`.constprop.0`, `.isra.0`,
/// `.cold`) and static-local numbers (`name.12`).
fn base_name(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

/// Whether section `index` of a module is one the loader frees after init (`.init.*`), whose
/// symbols the kernel no longer lists once the module is live.
fn is_init_section<'data, R: ReadRef<'data>>(
    sections: &object::read::elf::SectionTable<'data, elf::FileHeader64<Endianness>, R>,
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
    namespace: BTreeMap<String, String>,
}

impl Exports {
    /// Parses `Module.symvers` content; lines that do not have the expected fields are
    /// reported with their line number.
    pub fn parse(content: &str) -> Result<Exports, ResolveError> {
        let mut owner = BTreeMap::new();
        let mut namespace = BTreeMap::new();
        for (number, line) in content.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split('\t').collect();
            let (Some(symbol), Some(module)) = (fields.get(1), fields.get(2)) else {
                return Err(ResolveError::Read {
                    klp_object: "Module.symvers".to_string(),
                    reason: format!("line {} has fewer than 3 tab-separated fields", number + 1),
                });
            };
            owner.insert(symbol.to_string(), module.to_string());
            if let Some(ns) = fields.get(4).map(|f| f.trim()).filter(|f| !f.is_empty()) {
                namespace.insert(symbol.to_string(), ns.to_string());
            }
        }
        Ok(Exports { owner, namespace })
    }

    /// The binary that exports `symbol` to a livepatch module: as [`Exports::exporter`], but
    /// none for an export reserved to named modules (`EXPORT_SYMBOL_GPL_FOR_MODULES`, namespace
    /// `module:kvm`), which the loader lets no other module import; the livepatch reaches
    /// such a symbol like an unexported one.
    pub fn exporter_to_livepatch(&self, symbol: &str) -> Option<&str> {
        if self
            .namespace(symbol)
            .is_some_and(|namespace| namespace.starts_with("module:"))
        {
            return None;
        }
        self.exporter(symbol)
    }

    /// The namespace `symbol` is exported in (`EXPORT_SYMBOL_NS`), if any: a module that
    /// uses it must import the namespace, or modpost and the loader refuse it.
    pub fn namespace(&self, symbol: &str) -> Option<&str> {
        self.namespace.get(symbol).map(String::as_str)
    }

    /// The binary that exports `symbol` (`vmlinux` or a module path), if any.
    pub fn exporter(&self, symbol: &str) -> Option<&str> {
        self.owner.get(symbol).map(String::as_str)
    }
}

/// Whether a symbol of a compiled unit is in the running binary at all: not in a section the
/// link drops (`EXPORT_SYMBOL`'s `__UNIQUE_ID___addressable_*` in `.discard.addressable`,
/// `__init` code and data, export tables).
fn reaches_the_binary(
    object: &kpatch_diff::elf::Object,
    symbol: &kpatch_diff::elf::Symbol,
) -> bool {
    symbol.section().is_some_and(|section| {
        let name = &object.section(section).name;
        !name.starts_with(".init") && !kpatch_diff::special_sections::is_dropped(name)
    })
}

/// The local functions and objects of a unit that its file block in the klp object's symbol
/// table holds: what tells that block (and so the `sympos` of a duplicated name) apart. Names
/// with a compiler suffix (`count.2`, `foo.isra.0`) are left out while plain ones exist,
/// since the plain ones are the firmer evidence; a unit whose only locals are clones
/// (`aes_s2v.constprop.0` in net/mac80211/fils_aead.c) is found by those, which the same
/// compiler reproduces from the same source.
pub fn unit_locals(object: &kpatch_diff::elf::Object) -> Vec<&str> {
    use kpatch_diff::elf::{Binding, SymbolKind};
    let locals: Vec<&kpatch_diff::elf::Symbol> = object
        .symbols
        .iter()
        .filter(|s| {
            s.binding == Binding::Local
                && matches!(s.kind, SymbolKind::Func | SymbolKind::Object)
                && !s.name.is_empty()
                && !s.is_prefix()
                && reaches_the_binary(object, s)
        })
        .collect();
    let plain: Vec<&str> = locals
        .iter()
        .filter(|s| !s.name.contains('.'))
        .map(|s| s.name.as_str())
        .collect();
    if !plain.is_empty() {
        return plain;
    }
    locals
        .iter()
        .filter(|s| s.kind == SymbolKind::Func)
        .map(|s| s.name.as_str())
        .collect()
}

/// Every function and object a unit defines, but those the link discards: a symbol map's
/// neighbours are compared with these.
pub fn unit_defined(object: &kpatch_diff::elf::Object) -> Vec<&str> {
    use kpatch_diff::elf::SymbolKind;
    object
        .symbols
        .iter()
        .filter(|s| {
            matches!(s.kind, SymbolKind::Func | SymbolKind::Object)
                && !s.name.is_empty()
                && s.section()
                    .is_some_and(|section| !object.section(section).name.starts_with(".discard"))
        })
        .map(|s| s.name.as_str())
        .collect()
}

/// How the livepatch module reaches one symbol its copied code refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// An ordinary relocation, resolved by the module loader or by the module's own link.
    Normal,
    /// A livepatch relocation: `.klp.sym.<owner>.<name>,<sympos>` in the relocation section
    /// of `section_object`, applied when that klp object is there (vmlinux: while the module
    /// loads; a module: when it comes).
    Livepatch {
        owner: String,
        section_object: String,
    },
}

/// What is known of one reference, for [`reach`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReferenceFacts<'a> {
    /// The original unit defined the symbol as a local.
    pub local: bool,
    /// The binary that exports it by `Module.symvers`: `vmlinux` or a module's path.
    pub exporter: Option<&'a str>,
    /// The klp object's symbol table has it as a global.
    pub global_of_klp_object: bool,
    /// Another unit of the same livepatch defines it (a new global the patch adds there).
    pub defined_by_patch: bool,
}

/// The module name of a `Module.symvers` exporter path (`net/bluetooth/bluetooth`), as the
/// kernel names the module (`-` becomes `_`).
pub fn module_of_exporter(exporter: &str) -> String {
    exporter
        .rsplit('/')
        .next()
        .unwrap_or(exporter)
        .replace('-', "_")
}

/// The one rule that decides which references become livepatch relocations.
///
/// A vmlinux export is always there: an ordinary relocation. So is a module's export for
/// vmlinux code (the livepatch module then depends on that module, as a normal module would).
/// A module klp object's code reaches everything else through livepatch relocations applied
/// when the module comes, since the module may load after the livepatch: its own symbols,
/// exported or not, and other modules' exports (by that module's name, from the klp object's
/// own relocation section, as the kernel requires: a module's section may not name vmlinux
/// symbols). A symbol that only vmlinux has, unexported, goes in vmlinux's section. What the
/// patch itself defines in another unit is linked into the module.
pub fn reach(klp_object: &KlpObjectName, facts: ReferenceFacts<'_>) -> Reach {
    let livepatch = |owner: &str| Reach::Livepatch {
        owner: owner.to_string(),
        section_object: if owner == "vmlinux" {
            "vmlinux".to_string()
        } else {
            klp_object.klp_name().to_string()
        },
    };
    if facts.local {
        return livepatch(klp_object.klp_name());
    }
    if facts.defined_by_patch {
        return Reach::Normal;
    }
    match (klp_object, facts.exporter) {
        (_, Some("vmlinux")) => Reach::Normal,
        (KlpObjectName::Vmlinux, Some(_)) => Reach::Normal,
        (KlpObjectName::Module(name), Some(exporter)) => {
            let exporter = module_of_exporter(exporter);
            if exporter == *name || facts.global_of_klp_object {
                livepatch(name)
            } else {
                livepatch(&exporter)
            }
        }
        (_, None) if facts.global_of_klp_object => livepatch(klp_object.klp_name()),
        (_, None) => livepatch("vmlinux"),
    }
}

/// The modules a module depends on, from its `.modinfo` `depends=` entry.
pub fn module_depends(data: &[u8]) -> Vec<String> {
    let Ok(file) = ElfFile64::<Endianness>::parse(data) else {
        return Vec::new();
    };
    let Some(modinfo) = file
        .section_by_name(".modinfo")
        .and_then(|section| section.data().ok())
    else {
        return Vec::new();
    };
    modinfo
        .split(|&byte| byte == 0)
        .filter_map(|entry| entry.strip_prefix(b"depends="))
        .flat_map(|list| list.split(|&byte| byte == b','))
        .filter(|name| !name.is_empty())
        .map(|name| String::from_utf8_lossy(name).replace('-', "_"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relocation_rule_by_klp_object_and_symbol() {
        let module = KlpObjectName::Module("btusb".to_string());
        let facts = |local, exporter, global_of_klp_object, defined_by_patch| ReferenceFacts {
            local,
            exporter,
            global_of_klp_object,
            defined_by_patch,
        };
        let klp = |owner: &str, section_object: &str| Reach::Livepatch {
            owner: owner.to_string(),
            section_object: section_object.to_string(),
        };
        let bt = Some("net/bluetooth/bluetooth");
        let own = Some("drivers/bluetooth/btusb");
        let vm = Some("vmlinux");
        #[rustfmt::skip]
        let table: &[(&KlpObjectName, ReferenceFacts<'_>, Reach)] = &[
            // klp object  local  exporter global  patch   reach
            (&KlpObjectName::Vmlinux, facts(false, vm, false, false), Reach::Normal),
            (&KlpObjectName::Vmlinux, facts(true, vm, false, false), klp("vmlinux", "vmlinux")),
            (&KlpObjectName::Vmlinux, facts(false, None, false, false), klp("vmlinux", "vmlinux")),
            (&KlpObjectName::Vmlinux, facts(false, None, false, true), Reach::Normal),
            (&KlpObjectName::Vmlinux, facts(false, bt, false, false), Reach::Normal),
            (&module, facts(false, vm, false, false), Reach::Normal),
            (&module, facts(true, None, false, false), klp("btusb", "btusb")),
            (&module, facts(true, vm, false, false), klp("btusb", "btusb")),
            (&module, facts(false, None, true, false), klp("btusb", "btusb")),
            (&module, facts(false, own, true, false), klp("btusb", "btusb")),
            (&module, facts(false, None, false, false), klp("vmlinux", "vmlinux")),
            (&module, facts(false, bt, false, false), klp("bluetooth", "btusb")),
            (&module, facts(false, None, false, true), Reach::Normal),
        ];
        for (klp_object, facts, expected) in table {
            assert_eq!(
                &reach(klp_object, *facts),
                expected,
                "{klp_object:?} {facts:?}"
            );
        }
        assert_eq!(module_of_exporter("drivers/hid/hid-generic"), "hid_generic");
        assert_eq!(module_of_exporter("vmlinux"), "vmlinux");
    }

    #[test]
    fn module_symvers_lines_map_symbols_to_their_exporter() {
        let exports = Exports::parse(
            "0x12345678\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n\
             0x00000000\tsnd_card_new\tsound/core/snd\tEXPORT_SYMBOL_GPL\tSND\n",
        )
        .expect("parse");
        assert_eq!(exports.namespace("snd_card_new"), Some("SND"));
        let reserved = Exports::parse(
            "0x1\tanon_inode_make_secure_inode\tvmlinux\tEXPORT_SYMBOL_GPL\tmodule:kvm\n",
        )
        .expect("parse");
        assert_eq!(
            reserved.exporter("anon_inode_make_secure_inode"),
            Some("vmlinux")
        );
        assert_eq!(
            reserved.exporter_to_livepatch("anon_inode_make_secure_inode"),
            None
        );
        assert_eq!(
            exports.exporter_to_livepatch("snd_card_new"),
            Some("sound/core/snd")
        );
        assert_eq!(exports.namespace("printk"), None);
        assert_eq!(exports.exporter("printk"), Some("vmlinux"));
        assert_eq!(exports.exporter("snd_card_new"), Some("sound/core/snd"));
        assert_eq!(exports.exporter("saved_command_line"), None);
        let error = Exports::parse("printk vmlinux\n").expect_err("malformed");
        assert_eq!(
            error.to_string(),
            "cannot read symbols of Module.symvers: line 1 has fewer than 3 tab-separated fields"
        );
    }

    /// One case of Debian's System.map: the unit (its file and names) and the sympos its
    /// `type_show` has, as the debug vmlinux's file blocks say.
    fn check_map_sympos(map: &KlpObjectSymbols, line: &str) {
        let mut fields = line.split_whitespace();
        let expected: u64 = fields.next().and_then(|f| f.parse().ok()).expect("sympos");
        let file = fields.next().expect("file");
        let names: Vec<&str> = fields.collect();
        let unit = Unit {
            file,
            locals: &names,
            defined: &names,
        };
        let block = map.find_block(&unit).expect("unit in map");
        assert_eq!(
            map.sympos("type_show", Some(&block)).expect(file),
            Sympos(expected),
            "type_show of {file}"
        );
    }

    #[test]
    fn system_map_neighbours_pick_each_duplicated_local_of_debian_vmlinux() {
        let map = KlpObjectSymbols::from_system_map(
            include_str!("../../../fixtures/distro/system-map-type_show.txt")
                .lines()
                .filter(|line| !line.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n")
                .as_str(),
        )
        .expect("read map");
        let cases: Vec<&str> = include_str!("../../../fixtures/distro/type_show-units.txt")
            .lines()
            .filter(|line| !line.starts_with('#'))
            .collect();
        assert_eq!(cases.len(), 18);
        for case in cases {
            check_map_sympos(&map, case);
        }
    }

    #[test]
    fn system_map_errors_name_the_symbol_the_candidates_and_the_remedy() {
        let map = KlpObjectSymbols::from_system_map(
            "ffffffff81000000 t show\n\
             ffffffff81000010 t alpha_read\n\
             ffffffff81000020 T two_entry\n\
             ffffffff81000030 t show\n\
             ffffffff81000040 t beta_read\n\
             ffffffff81000060 t show\t[foo]\n",
        )
        .expect("map");
        let unit = |defined: &'static [&'static str]| Unit {
            file: "show.c",
            locals: defined,
            defined,
        };
        let block = map
            .find_block(&unit(&["show", "beta_read"]))
            .expect("block");
        assert_eq!(map.sympos("show", Some(&block)), Ok(Sympos(2)));
        assert_eq!(map.sympos("two_entry", None), Ok(Sympos(0)));
        // Nothing around either show() is the unit's: the map cannot tell.
        let block = map.find_block(&unit(&["show", "gamma"])).expect("block");
        assert_eq!(
            map.sympos("show", Some(&block))
                .expect_err("ambiguous")
                .to_string(),
            "cannot tell which show of vmlinux belongs to show.c: the symbol map has 2 local \
             symbols of that name and the neighbours of show at 0xffffffff81000000, show at \
             0xffffffff81000030 match show.c's symbols equally well; pass the debug vmlinux \
             with --vmlinux to settle it"
        );
        assert_eq!(
            map.find_block(&unit(&["gamma"]))
                .expect_err("absent")
                .to_string(),
            "cannot find show.c in vmlinux: no local symbol block of that file holds any of \
             gamma; is vmlinux built from the same source and config?"
        );
        for (text, reason) in [
            (
                "ffffffff81000000 t\n",
                "symbol map line 1 is not `ADDRESS TYPE NAME`",
            ),
            (
                "zz t show\n",
                "symbol map line 1 has no hexadecimal address",
            ),
            (
                "ffffffffffffffff B The real System.map is in the -dbg package\n",
                "symbol map line 1 is not `ADDRESS TYPE NAME`",
            ),
            ("", "the symbol map lists no symbols"),
        ] {
            let error = KlpObjectSymbols::from_system_map(text).expect_err(text);
            assert!(error.to_string().contains(reason), "{text:?}: {error}");
        }
    }
}
