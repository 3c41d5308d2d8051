//! `kpatch-rs build` compiles every unit with `-g`, so that the layout check has DWARF to
//! read, also for kernels built without debug information. That is safe only if `-g` changes
//! no code and no data: this compiles every fixture with and without it and requires every
//! allocated section, its relocations and every code or data symbol to be identical.

#![allow(clippy::disallowed_methods, reason = "tests compile fixtures with gcc")]

mod common;

use kpatch_diff::elf::{Object, Placement, SymbolKind};

/// What the kernel would load of an object: allocated sections with their bytes and
/// relocations (targets by name), and the symbols of code and data.
fn loadable(object: &Object) -> Vec<String> {
    let section_name = |placement: Placement| match placement {
        Placement::Section(id) => object.section(id).name.clone(),
        other => format!("{other:?}"),
    };
    let mut lines = Vec::new();
    for section in object.sections.iter().filter(|s| s.is_alloc()) {
        lines.push(format!(
            "section {} flags {:#x} align {} size {} data {:02x?}",
            section.name, section.flags, section.align, section.size, section.data
        ));
        for relocation in &section.relocations {
            let target = object.symbol(relocation.symbol);
            let target_name = if target.kind == SymbolKind::Section {
                section_name(target.placement)
            } else {
                target.name.clone()
            };
            lines.push(format!(
                "  {:#x} type {} {target_name}{:+}",
                relocation.offset, relocation.r_type, relocation.addend
            ));
        }
    }
    for symbol in &object.symbols {
        if matches!(symbol.kind, SymbolKind::Section | SymbolKind::File) {
            continue;
        }
        lines.push(format!(
            "symbol {} {:?} {:?} in {} at {:#x} size {}",
            symbol.name,
            symbol.kind,
            symbol.binding,
            section_name(symbol.placement),
            symbol.value,
            symbol.size
        ));
    }
    lines
}

#[test]
fn debug_info_changes_no_code() {
    if !common::have_tool("gcc") {
        return;
    }
    let fixtures = common::repo_root().join("fixtures");
    let mut names: Vec<String> = std::fs::read_dir(&fixtures)
        .expect("cannot list fixtures")
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".orig.c").map(str::to_string)
        })
        .collect();
    names.sort();
    assert!(
        names.len() > 20,
        "expected the fixture pairs, found {names:?}"
    );
    let mut compared = 0;
    for name in &names {
        for variant in ["orig", "patched"] {
            let with = common::compile_fixture(name, variant);
            let without = common::compile_fixture_with(name, variant, &["-g0"]);
            let with = Object::parse("with -g", &with).expect("object with -g");
            let without = Object::parse("with -g0", &without).expect("object with -g0");
            assert!(
                kpatch_diff::layout::has_dwarf(&with) && !kpatch_diff::layout::has_dwarf(&without),
                "{name}.{variant}: -g must give DWARF and -g0 none"
            );
            let (with, without) = (loadable(&with), loadable(&without));
            if let Some(index) =
                (0..with.len().max(without.len())).find(|&i| with.get(i) != without.get(i))
            {
                panic!(
                    "{name}.{variant}.c: -g changed what the kernel loads:\n  with -g:  {:?}\n  without:  {:?}",
                    with.get(index),
                    without.get(index)
                );
            }
            compared += 1;
        }
    }
    assert_eq!(compared, names.len() * 2);
}

/// A malformed DWARF is a refusal or an error, never a panic: each byte of `.debug_info`
/// and `.debug_abbrev` in turn (every third one) set to a value that breaks something.
#[test]
fn corrupt_dwarf_never_panics() {
    if !common::have_tool("gcc") {
        return;
    }
    let orig = common::compile_fixture("layout_member_added", "orig");
    let patched = common::compile_fixture("layout_member_added", "patched");
    let parsed = Object::parse("patched", &patched).expect("object");
    let file = object::read::File::parse(patched.as_slice()).expect("object file");
    let mut tried = 0;
    for name in [".debug_info", ".debug_abbrev"] {
        assert!(parsed.sections.iter().any(|s| s.name == name));
        let section = object::Object::section_by_name(&file, name).expect("DWARF section");
        let (start, size) = object::ObjectSection::file_range(&section).expect("file range");
        for offset in (start..start + size).step_by(3) {
            for value in [0x00u8, 0xff, 0x7f] {
                let mut broken = patched.clone();
                broken[offset as usize] = value;
                let pair = kpatch_diff::Pair {
                    name: "broken.o",
                    orig_name: "original",
                    orig: &orig,
                    patched: &broken,
                    klp_object: "vmlinux",
                };
                let options = kpatch_diff::DiffOptions {
                    require_dwarf: true,
                    ..Default::default()
                };
                let _ = kpatch_diff::diff_with(&pair, &options);
                tried += 1;
            }
        }
    }
    assert!(tried > 100, "only {tried} corruptions tried");
}
