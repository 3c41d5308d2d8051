//! The kernel's special sections: tables with one fixed-size entry per code site.
//!
//! Each entry of `__bug_table`, `__jump_table`, `.altinstructions`, `__ex_table` and the
//! objtool and ftrace site lists describes one place in some function, and the entry's first
//! field is a relocation to that place. An entry is kept when the place lies in included code
//! and dropped otherwise; its other relocations (a bug's file name, a jump label's key, an
//! alternative's replacement) then become things the included code needs. Entry sizes are
//! those of Linux 6.12 on x86_64 (read from its headers, cited per entry below).
//!
//! `__dyndbg` is not a table here: its entries are named objects (`descriptor.N`) that code
//! refers to, so they are included like data, one copy per included user.

/// How one special section's entries are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    pub name: &'static str,
    /// Size in bytes of one entry.
    pub entry_size: u64,
    /// Offset inside an entry of the field that points at the code the entry belongs to.
    pub code_field: u64,
    /// For `.orc_unwind_ip`: the section whose entries run in parallel with this one's
    /// (`.orc_unwind`, entry size given) and carry no relocations of their own.
    pub parallel: Option<(&'static str, u64)>,
    /// For `.altinstructions`: the field that points at replacement code and the offset of
    /// the byte holding its length, so only the kept entries' replacements are copied.
    pub replacement: Option<(u64, u64)>,
}

const fn table(name: &'static str, entry_size: u64) -> Table {
    Table {
        name,
        entry_size,
        code_field: 0,
        parallel: None,
        replacement: None,
    }
}

/// Every table the diff keeps per entry.
pub const TABLES: &[Table] = &[
    // struct bug_entry with GENERIC_BUG_RELATIVE_POINTERS and DEBUG_BUGVERBOSE:
    // bug_addr_disp, file_disp (s32 each), line, flags (u16 each).
    table("__bug_table", 12),
    // struct jump_entry: code, target (s32 each), key (long).
    table("__jump_table", 16),
    // struct alt_instr (packed): instr_offset, repl_offset, ft_flags, instrlen, replacementlen.
    Table {
        name: ".altinstructions",
        entry_size: 14,
        code_field: 0,
        parallel: None,
        replacement: Some((4, 13)),
    },
    // struct exception_table_entry: insn, fixup, data (int each).
    table("__ex_table", 12),
    // struct static_call_site: addr, key (s32 each).
    table(".static_call_sites", 8),
    // Addresses of the `call __fentry__` sites and of the patchable entry padding.
    table("__mcount_loc", 8),
    table("__patchable_function_entries", 8),
    // objtool's lists of s32 relative addresses.
    table(".return_sites", 4),
    table(".retpoline_sites", 4),
    table(".call_sites", 4),
    // LOCK_PREFIX sites: s32 relative addresses of lock prefixes.
    table(".smp_locks", 4),
    // kpatch-macros.h callbacks: one function pointer per entry. The callback is new code, so
    // its entry is kept with it; `prepare` turns each into the klp_object's callback.
    table(".kpatch.callbacks.pre_patch", 8),
    table(".kpatch.callbacks.post_patch", 8),
    table(".kpatch.callbacks.pre_unpatch", 8),
    table(".kpatch.callbacks.post_unpatch", 8),
    // objtool's annotations (include/linux/objtool.h, instrumentation.h, nospec-branch.h):
    // one `.long` per annotated instruction. Kbuild runs objtool on the livepatch module, which
    // needs them for the copied code as much as vmlinux did (a WARN's ud2 is followed by an
    // instruction `.discard.reachable` marks as reachable).
    table(".discard.reachable", 4),
    table(".discard.unreachable", 4),
    table(".discard.noendbr", 4),
    table(".discard.retpoline_safe", 4),
    table(".discard.instr_begin", 4),
    table(".discard.instr_end", 4),
    table(".discard.intra_function_calls", 4),
    table(".discard.validate_unret", 4),
    // struct unwind_hint: ip (s32), sp_offset (s16), sp_reg, type, signal (u8), padded to 4.
    table(".discard.unwind_hints", 12),
    // STACK_FRAME_NON_STANDARD: a pointer to the function.
    table(".discard.func_stack_frame_non_standard", 8),
    // ORC: s32 relative instruction addresses, and in `.orc_unwind` the parallel 6-byte
    // struct orc_entry (sp_offset, bp_offset s16, then 16 bits of flags).
    Table {
        name: ".orc_unwind_ip",
        entry_size: 4,
        code_field: 0,
        parallel: Some((".orc_unwind", 6)),
        replacement: None,
    },
];

/// The table layout of a section, if it is a per-entry special section.
pub fn table_for(section_name: &str) -> Option<&'static Table> {
    TABLES.iter().find(|t| t.name == section_name)
}

/// Sections filled by tables above and kept only through them.
pub fn is_table_companion(section_name: &str) -> bool {
    TABLES
        .iter()
        .any(|t| t.parallel.is_some_and(|(name, _)| name == section_name))
}

/// Sections whose contents belong to code sites and are included through the table entries
/// that point into them, never compared on their own: alternative replacement code.
pub fn is_code_companion(section_name: &str) -> bool {
    matches!(section_name, ".altinstr_replacement" | ".altinstr_aux")
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
pub fn is_dyndbg(section_name: &str) -> bool {
    section_name == "__dyndbg" || section_name == "__dyndbg_classes"
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
    ];
    PREFIXES.iter().any(|p| section_name.starts_with(p))
}

/// Whether a section is special in any of the ways above, so that it is not judged as an
/// ordinary section that "belongs to no function".
pub fn is_special(section_name: &str) -> bool {
    table_for(section_name).is_some()
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
