//! The kernel's special sections: tables with one fixed-size entry per code site.
//!
//! Each entry of `__bug_table`, `__jump_table`, `.altinstructions`, `__ex_table` and the
//! objtool and ftrace site lists describes one place in some function, and the entry's first
//! field is a relocation to that place. An entry is kept when the place lies in included code
//! and dropped otherwise; its other relocations (a bug's file name, a jump label's key, an
//! alternative's replacement) then become things the included code needs. Entry sizes and
//! field offsets are the kernel's own ([`KernelLayout`]): they differ between kernels
//! (`struct alt_instr` is 12, 13 or 14 bytes; jump entries 16 or 24; objtool's annotations
//! 4 or 8), and a section that does not divide into the kernel's entries is an error.
//!
//! `__dyndbg` is not a table here: its entries are named objects (`descriptor.N`) that code
//! refers to, so they are included like data, one copy per included user.

use std::collections::BTreeMap;

use crate::elf::{Object, SectionId};

/// The layout of one C type of the kernel being patched: its size and the byte offsets of its
/// members (members of anonymous structs and unions flattened in).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TypeLayout {
    pub size: u64,
    pub members: BTreeMap<String, u64>,
}

/// What the kernel being patched says about its special sections: the layouts of the entry
/// types, by `struct NAME`. `kpatch-rs build` reads them from the DWARF of a probe unit
/// compiled with the kernel's own headers and config; `kpatch-rs diff --layout FILE` reads
/// this as JSON. A table whose type the kernel does not describe cannot be read, so a section
/// of it is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelLayout {
    pub types: BTreeMap<String, TypeLayout>,
}

/// The entry types the tables below need, in the order the probe declares them.
pub const ENTRY_TYPES: &[&str] = &[
    "struct bug_entry",
    "struct jump_entry",
    "struct alt_instr",
    "struct exception_table_entry",
    "struct static_call_site",
    "struct paravirt_patch_site",
    "struct orc_entry",
    "struct unwind_hint",
];

impl KernelLayout {
    /// Linux 6.12 on x86_64 with the configs kpatch-rs was first built for, for objects
    /// diffed without a kernel (`kpatch-rs diff` without `--layout`, and the fixtures).
    pub fn linux_6_12_x86_64() -> KernelLayout {
        let layout = |size: u64, members: &[(&str, u64)]| TypeLayout {
            size,
            members: members.iter().map(|&(n, o)| (n.to_string(), o)).collect(),
        };
        let types = [
            // GENERIC_BUG_RELATIVE_POINTERS and DEBUG_BUGVERBOSE.
            (
                "struct bug_entry",
                layout(
                    12,
                    &[
                        ("bug_addr_disp", 0),
                        ("file_disp", 4),
                        ("line", 8),
                        ("flags", 10),
                    ],
                ),
            ),
            (
                "struct jump_entry",
                layout(16, &[("code", 0), ("target", 4), ("key", 8)]),
            ),
            (
                "struct alt_instr",
                layout(
                    14,
                    &[
                        ("instr_offset", 0),
                        ("repl_offset", 4),
                        ("ft_flags", 8),
                        ("instrlen", 12),
                        ("replacementlen", 13),
                    ],
                ),
            ),
            (
                "struct exception_table_entry",
                layout(12, &[("insn", 0), ("fixup", 4), ("data", 8)]),
            ),
            (
                "struct static_call_site",
                layout(8, &[("addr", 0), ("key", 4)]),
            ),
            (
                "struct orc_entry",
                layout(6, &[("sp_offset", 0), ("bp_offset", 2)]),
            ),
            (
                "struct unwind_hint",
                layout(
                    12,
                    &[
                        ("ip", 0),
                        ("sp_offset", 4),
                        ("sp_reg", 6),
                        ("type", 7),
                        ("signal", 8),
                    ],
                ),
            ),
        ];
        KernelLayout {
            types: types
                .into_iter()
                .map(|(name, layout)| (name.to_string(), layout))
                .collect(),
        }
    }

    /// The entry types an object's DWARF describes (the probe unit's, compiled with the
    /// kernel's headers): each type's size and its members' byte offsets.
    pub fn from_dwarf(name: &str, bytes: &[u8]) -> Result<KernelLayout, String> {
        let object = Object::parse(name, bytes).map_err(|e| e.to_string())?;
        if !crate::layout::has_dwarf(&object) {
            return Err(format!("{name} carries no DWARF"));
        }
        let types = crate::layout::read_types(&object).map_err(|e| e.to_string())?;
        let mut layout = KernelLayout::default();
        for &type_name in ENTRY_TYPES {
            let Some(found) = types.layouts.get(type_name).and_then(|all| all.first()) else {
                continue;
            };
            let members = found
                .members
                .iter()
                .map(|m| (m.name.clone(), m.offset_bits / 8))
                .collect();
            layout.types.insert(
                type_name.to_string(),
                TypeLayout {
                    size: found.size,
                    members,
                },
            );
        }
        Ok(layout)
    }

    fn member(&self, type_name: &str, names: &[&str]) -> Option<u64> {
        let layout = self.types.get(type_name)?;
        names.iter().find_map(|n| layout.members.get(*n).copied())
    }
}

/// How the entries of one known special section are laid out.
#[derive(Debug, Clone, Copy)]
enum Entries {
    /// One struct per entry, read from the kernel's layout. Each field is given by the member
    /// names it has had across kernel versions.
    Struct {
        type_name: &'static str,
        code: &'static [&'static str],
        key: &'static [&'static str],
        /// The field pointing at replacement code, and the byte holding its length.
        replacement: Option<(&'static [&'static str], &'static str)>,
        /// The field pointing at fixup code in `.fixup` (kernels before 5.17).
        fixup: &'static [&'static str],
        /// The line number (a `u16`) of a bug entry.
        line: &'static [&'static str],
    },
    /// One relocated address per entry (objtool's and ftrace's site lists, function
    /// pointers): 4 or 8 bytes as the relocations say, the same for every entry.
    Address,
}

const fn fields(type_name: &'static str, code: &'static [&'static str]) -> Entries {
    Entries::Struct {
        type_name,
        code,
        key: &[],
        replacement: None,
        fixup: &[],
        line: &[],
    }
}

/// Every table the diff keeps per entry, and where its layout comes from.
const KNOWN: &[(&str, Entries)] = &[
    (
        "__bug_table",
        Entries::Struct {
            type_name: "struct bug_entry",
            code: &["bug_addr_disp", "bug_addr"],
            key: &[],
            replacement: None,
            fixup: &[],
            line: &["line"],
        },
    ),
    (
        "__jump_table",
        Entries::Struct {
            type_name: "struct jump_entry",
            code: &["code"],
            key: &["key"],
            replacement: None,
            fixup: &[],
            line: &[],
        },
    ),
    (
        ".altinstructions",
        Entries::Struct {
            type_name: "struct alt_instr",
            code: &["instr_offset", "instr"],
            key: &[],
            replacement: Some((&["repl_offset", "replacement"], "replacementlen")),
            fixup: &[],
            line: &[],
        },
    ),
    (
        "__ex_table",
        Entries::Struct {
            type_name: "struct exception_table_entry",
            code: &["insn"],
            key: &[],
            replacement: None,
            fixup: &["fixup"],
            line: &[],
        },
    ),
    (
        ".static_call_sites",
        Entries::Struct {
            type_name: "struct static_call_site",
            code: &["addr"],
            key: &["key"],
            replacement: None,
            fixup: &[],
            line: &[],
        },
    ),
    // Paravirt patch sites (kernels before 6.8): a pointer to the call site, its type and
    // length; the kernel rewrites the site at module load.
    (
        ".parainstructions",
        fields("struct paravirt_patch_site", &["instr"]),
    ),
    ("__mcount_loc", Entries::Address),
    ("__patchable_function_entries", Entries::Address),
    (".return_sites", Entries::Address),
    (".retpoline_sites", Entries::Address),
    (".call_sites", Entries::Address),
    // LOCK_PREFIX sites.
    (".smp_locks", Entries::Address),
    // kpatch-macros.h callbacks: one function pointer per entry. The callback is new code, so
    // its entry is kept with it; `prepare` turns each into the klp_object's callback.
    (".kpatch.callbacks.pre_patch", Entries::Address),
    (".kpatch.callbacks.post_patch", Entries::Address),
    (".kpatch.callbacks.pre_unpatch", Entries::Address),
    (".kpatch.callbacks.post_unpatch", Entries::Address),
    // objtool's annotations (include/linux/objtool.h, instrumentation.h, nospec-branch.h):
    // one address per annotated instruction (4 bytes today, a pointer in older kernels).
    // Kbuild runs objtool on the livepatch module, which needs them for the copied code as
    // much as vmlinux did (a WARN's ud2 is followed by an instruction `.discard.reachable`
    // marks as reachable).
    (".discard.reachable", Entries::Address),
    (".discard.unreachable", Entries::Address),
    (".discard.noendbr", Entries::Address),
    (".discard.retpoline_safe", Entries::Address),
    (".discard.instr_begin", Entries::Address),
    (".discard.instr_end", Entries::Address),
    (".discard.intra_function_calls", Entries::Address),
    (".discard.validate_unret", Entries::Address),
    (
        ".discard.unwind_hints",
        fields("struct unwind_hint", &["ip"]),
    ),
    // STACK_FRAME_NON_STANDARD: a pointer to the function.
    (".discard.func_stack_frame_non_standard", Entries::Address),
    // NOKPROBE_SYMBOL: a pointer to each function kprobes must not probe; the module loader
    // reads the livepatch module's list, so a copy of such a function stays unprobeable.
    ("_kprobe_blacklist", Entries::Address),
    // ORC: addresses, and in `.orc_unwind` the parallel `struct orc_entry` of each.
    (".orc_unwind_ip", Entries::Address),
];

/// The section whose entries run in parallel with `.orc_unwind_ip`'s, one per address, with
/// no relocations of their own.
const ORC_PARALLEL: (&str, &str) = (".orc_unwind", "struct orc_entry");

/// One special section of one object, its entries' layout resolved and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    pub name: &'static str,
    /// Size in bytes of one entry.
    pub entry_size: u64,
    /// How many entries the section holds. The last may lack its tail padding: the
    /// assembler aligns each entry's start, and nothing pads after the last one.
    pub entries: u64,
    /// Offset inside an entry of the field that points at the code the entry belongs to.
    pub code_field: u64,
    /// The field naming a static key or static call (jump labels, static call sites).
    pub key_field: Option<u64>,
    /// For `.orc_unwind_ip`: the section whose entries run in parallel with this one's
    /// (`.orc_unwind`, entry size given) and carry no relocations of their own.
    pub parallel: Option<(&'static str, u64)>,
    /// For `.altinstructions`: the field that points at replacement code and the offset of
    /// the byte holding its length, so only the kept entries' replacements are copied.
    pub replacement: Option<(u64, u64)>,
    /// For `__ex_table` of kernels with a `.fixup` section: the field pointing at the fixup
    /// code, which is copied with the entry.
    pub fixup_field: Option<u64>,
    /// For `__bug_table`: the offset of the `u16` line number.
    pub line_field: Option<u64>,
}

/// Whether a section name is one of the tables above (whatever its layout).
pub fn is_table(section_name: &str) -> bool {
    KNOWN.iter().any(|(name, _)| *name == section_name)
}

/// Why a special section of an object cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableError {
    /// The kernel does not describe the section's entry type: kpatch-rs cannot know what
    /// its entries mean for this kernel (a refusal).
    Unknown { section: String, reason: String },
    /// The section does not divide into entries of the kernel's size (an error).
    Malformed { section: String, reason: String },
}

impl std::fmt::Display for TableError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TableError::Unknown { section, reason } | TableError::Malformed { section, reason } => {
                write!(f, "section {section}: {reason}")
            }
        }
    }
}

/// The width of the address one relocation type writes into a table entry.
fn address_width(r_type: u32) -> Option<u64> {
    match r_type {
        // R_X86_64_64, R_X86_64_PC64
        1 | 24 => Some(8),
        // R_X86_64_PC32, R_X86_64_PLT32, R_X86_64_32, R_X86_64_32S
        2 | 4 | 10 | 11 => Some(4),
        _ => None,
    }
}

/// The tables of `object`, each section's layout resolved against `layout` and checked: a
/// struct table's size is a multiple of the kernel's entry size, an address list is one
/// relocation of one width per entry, `.orc_unwind` has one entry per address.
pub fn read_tables(
    object: &Object,
    layout: &KernelLayout,
) -> Result<BTreeMap<SectionId, Table>, TableError> {
    let mut tables = BTreeMap::new();
    for section in &object.sections {
        let Some(&(name, entries)) = KNOWN.iter().find(|(n, _)| *n == section.name) else {
            continue;
        };
        let malformed = |reason: String| TableError::Malformed {
            section: section.name.clone(),
            reason,
        };
        let table = match entries {
            Entries::Struct {
                type_name,
                code,
                key,
                replacement,
                fixup,
                line,
            } => {
                let Some(entry_type) = layout.types.get(type_name) else {
                    return Err(TableError::Unknown {
                        section: section.name.clone(),
                        reason: format!(
                            "the kernel's headers describe no `{type_name}`, so kpatch-rs \
                             cannot tell what its entries are in this kernel"
                        ),
                    });
                };
                let field = |names: &[&str], what: &str| -> Result<u64, TableError> {
                    layout.member(type_name, names).ok_or_else(|| {
                        malformed(format!(
                            "the kernel's `{type_name}` has no {what} member ({})",
                            names.join(" or ")
                        ))
                    })
                };
                let optional = |names: &[&str]| layout.member(type_name, names);
                let replacement = match replacement {
                    Some((pointer, length)) => Some((
                        field(pointer, "replacement")?,
                        field(&[length], "replacement length")?,
                    )),
                    None => None,
                };
                Table {
                    name,
                    entry_size: entry_type.size,
                    entries: 0,
                    code_field: field(code, "code address")?,
                    key_field: optional(key),
                    parallel: None,
                    replacement,
                    fixup_field: optional(fixup),
                    line_field: optional(line),
                }
            }
            Entries::Address => {
                let mut width = None;
                for relocation in &section.relocations {
                    let this = address_width(relocation.r_type).ok_or_else(|| {
                        malformed(format!(
                            "relocation type {} at {:#x} is not an address",
                            relocation.r_type, relocation.offset
                        ))
                    })?;
                    if *width.get_or_insert(this) != this {
                        return Err(malformed(format!(
                            "addresses of {} and {this} bytes in one list",
                            width.unwrap_or(0)
                        )));
                    }
                    if relocation.offset % this != 0 {
                        return Err(malformed(format!(
                            "an address at {:#x}, between entries of {this} bytes",
                            relocation.offset
                        )));
                    }
                }
                // An empty list has no relocations to tell; 4 bytes is the common case.
                let entry_size = width.unwrap_or(4);
                let parallel = if name == ".orc_unwind_ip" {
                    let Some(orc) = layout.types.get(ORC_PARALLEL.1) else {
                        return Err(TableError::Unknown {
                            section: section.name.clone(),
                            reason: format!(
                                "the kernel's headers describe no `{}`",
                                ORC_PARALLEL.1
                            ),
                        });
                    };
                    Some((ORC_PARALLEL.0, orc.size))
                } else {
                    None
                };
                Table {
                    name,
                    entry_size,
                    entries: 0,
                    code_field: 0,
                    key_field: None,
                    parallel,
                    replacement: None,
                    fixup_field: None,
                    line_field: None,
                }
            }
        };
        // A short last entry must still hold every member: it lacks tail padding only.
        let last_member = match entries {
            Entries::Struct { type_name, .. } => layout
                .types
                .get(type_name)
                .and_then(|t| t.members.values().max().copied())
                .unwrap_or(0),
            Entries::Address => table.entry_size,
        };
        let remainder = section.size.checked_rem(table.entry_size);
        if !matches!(remainder, Some(r) if r == 0 || r > last_member) {
            return Err(malformed(format!(
                "{} bytes are not a whole number of the kernel's {}-byte entries",
                section.size, table.entry_size
            )));
        }
        let table = Table {
            entries: section.size.div_ceil(table.entry_size),
            ..table
        };
        // Every entry points at its code: a layout that reads the entries at the wrong
        // stride finds fields without relocations.
        let has_relocation = |offset: u64| {
            let at = section.relocations.partition_point(|r| r.offset < offset);
            section
                .relocations
                .get(at)
                .is_some_and(|r| r.offset == offset)
        };
        if let Some(index) =
            (0..table.entries).find(|i| !has_relocation(i * table.entry_size + table.code_field))
        {
            return Err(malformed(format!(
                "entry {index} (at {:#x}) of the kernel's {}-byte entries has no relocation \
                 at its code field (+{:#x})",
                index * table.entry_size,
                table.entry_size,
                table.code_field
            )));
        }
        if let Some((parallel_name, parallel_size)) = table.parallel {
            let count = table.entries;
            if let Some(parallel) = object.sections.iter().find(|s| s.name == parallel_name) {
                if parallel_size == 0 || parallel.size != count * parallel_size {
                    return Err(TableError::Malformed {
                        section: parallel_name.to_string(),
                        reason: format!(
                            "{} bytes for the {count} entries of {name}, not {count} of the \
                             kernel's {parallel_size}-byte entries",
                            parallel.size
                        ),
                    });
                }
            }
        }
        tables.insert(section.id, table);
    }
    Ok(tables)
}

/// Sections filled by tables above and kept only through them.
pub fn is_table_companion(section_name: &str) -> bool {
    section_name == ORC_PARALLEL.0
}

/// Sections whose contents belong to code sites and are included through the table entries
/// that point into them, never compared on their own: alternative replacement code, and the
/// fixup code of exception table entries in kernels before 5.17.
pub fn is_code_companion(section_name: &str) -> bool {
    matches!(
        section_name,
        ".altinstr_replacement" | ".altinstr_aux" | ".fixup"
    )
}

/// UBSAN's per-check data (`.data..Lubsan_dataN`, each starting with the check's source
/// location) and type descriptors (`.data..Lubsan_typeN`): anonymous sections, numbered in
/// the unit's order, that belong to the function making the check.
pub fn is_ubsan_data(section_name: &str) -> bool {
    section_name.contains("..Lubsan_data") || is_ubsan_type(section_name)
}

/// UBSAN's type descriptors: a kind, some bits and the type's name, nothing relocated.
pub fn is_ubsan_type(section_name: &str) -> bool {
    section_name.contains("..Lubsan_type")
}

/// Dynamic debug descriptors: code refers to them by symbol, and included code gets its own
/// copies, registered by the module loader like any module's.
/// `__verbose` is the section's name before Linux 5.2.
pub fn is_dyndbg(section_name: &str) -> bool {
    matches!(section_name, "__dyndbg" | "__dyndbg_classes" | "__verbose")
}

/// Sections that the diff never carries into its output: link-time annotations, boot-time
/// code and data, and metadata that a livepatch module must not re-register.
pub fn is_dropped(section_name: &str) -> bool {
    const PREFIXES: &[&str] = &[
        ".discard",
        ".init.",
        ".exit.",
        ".initcall",
        ".con_initcall",
        "__ksymtab",
        "___ksymtab",
        "__kcrctab",
        ".comment",
        ".note",
        ".modinfo",
        "__param",
        ".export_symbol",
        // kpatch-macros.h's KPATCH_IGNORE_FUNCTION/SECTION and KPATCH_FORCE_UNSAFE lists:
        // read by the diff (`ignored_by_author`), never copied.
        ".kpatch.ignore.",
        ".kpatch.force",
        // objtool seals the ENDBR of every function whose address this one object does not
        // take, as if the object were all of vmlinux; the module loader would apply that
        // list, and a replacement called through a pointer from elsewhere would then fault on
        // IBT hardware. Unsealed ENDBRs cost nothing.
        ".ibt_endbr_seal",
        // ALLOW_ERROR_INJECTION's list: without its entry, a copied function only cannot
        // have errors injected for testing.
        "_error_injection_whitelist",
        // The printk format index (CONFIG_PRINTK_INDEX): pointers to descriptions of each
        // printk's format, read only to list them in debugfs. A livepatch's own printks are
        // then not listed there; nothing else reads it.
        ".printk_index",
    ];
    PREFIXES.iter().any(|p| section_name.starts_with(p))
}

/// Whether a section is special in any of the ways above, so that it is not judged as an
/// ordinary section that "belongs to no function".
pub fn is_special(section_name: &str) -> bool {
    is_table(section_name)
        || is_table_companion(section_name)
        || is_code_companion(section_name)
        || is_dyndbg(section_name)
        || is_dropped(section_name)
}

/// The kernel's own per-site static locals whose value no one depends on: once-only flags
/// (`WARN_ONCE`, `RCU_LOCKDEP_WARN`, `printk_once`), lockdep class keys (a new one is a new
/// lock class to lockdep only) and ratelimit states. A patch may take fresh copies of them
/// instead of reaching the running kernel's (the worst it costs is one more warning), which
/// spares the search for a name that a module without file symbols defines many times.
pub fn is_disposable_static_local(name: &str) -> bool {
    let base = name.split('.').next().unwrap_or("");
    matches!(
        base,
        "__already_done" | "__warned" | "__print_once" | "__key" | "_rs"
    ) && name.len() > base.len()
}
