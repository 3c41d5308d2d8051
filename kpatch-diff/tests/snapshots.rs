//! What the diff writes for every C fixture pair of `fixtures/`, as a readable dump of the
//! output object (sections with their relocations, symbols, kept special-section entries)
//! checked against `tests/snapshots/NAME.txt`. A change in the engine shows here as a diff a
//! reviewer can read; `UPDATE_EXPECT=1 cargo test -p kpatch-diff --test snapshots` rewrites
//! the files after a deliberate change.

#![allow(
    clippy::disallowed_methods,
    reason = "tests compile fixtures and run the binary"
)]

mod common;

use std::fmt::Write as _;

use kpatch_diff::elf::{Object, Placement, SymbolKind};
use kpatch_diff::DiffOutput;

fn relocation_type(r_type: u32) -> String {
    match r_type {
        1 => "R_X86_64_64".to_string(),
        2 => "R_X86_64_PC32".to_string(),
        4 => "R_X86_64_PLT32".to_string(),
        9 => "R_X86_64_GOTPCREL".to_string(),
        10 => "R_X86_64_32".to_string(),
        11 => "R_X86_64_32S".to_string(),
        24 => "R_X86_64_PC64".to_string(),
        41 => "R_X86_64_GOTPCRELX".to_string(),
        42 => "R_X86_64_REX_GOTPCRELX".to_string(),
        other => format!("type {other}"),
    }
}

fn flags(section: &kpatch_diff::elf::Section) -> String {
    let mut text = String::new();
    for (set, letter) in [
        (section.is_alloc(), 'A'),
        (section.is_write(), 'W'),
        (section.is_exec(), 'X'),
        (section.is_merge(), 'M'),
        (section.is_string_merge(), 'S'),
    ] {
        if set {
            text.push(letter);
        }
    }
    text
}

/// The dump of one diff: the outcome, then the output object if there is one.
fn dump(output: &DiffOutput) -> String {
    let report = &output.report;
    let mut text = String::new();
    let mut human = Vec::new();
    report.write_human(&mut human).expect("report prints");
    text.push_str(&String::from_utf8_lossy(&human));
    let Some(bytes) = &output.object else {
        return text;
    };
    let object = Object::parse("output", bytes).expect("the output parses");
    let _ = writeln!(text, "sections:");
    for section in object.sections.iter().filter(|s| s.is_content()) {
        let _ = writeln!(
            text,
            "  {} [{}] size {:#x}",
            section.name,
            flags(section),
            section.size
        );
        if section.name == kpatch_diff::output::METADATA_SECTION {
            continue;
        }
        for relocation in &section.relocations {
            let symbol = object.symbol(relocation.symbol);
            let target = if symbol.kind == SymbolKind::Section {
                symbol
                    .section()
                    .map(|s| object.section(s).name.clone())
                    .unwrap_or_default()
            } else {
                symbol.name.clone()
            };
            let _ = writeln!(
                text,
                "    {:#06x} {} {target}{:+}",
                relocation.offset,
                relocation_type(relocation.r_type),
                relocation.addend
            );
        }
    }
    let _ = writeln!(text, "symbols:");
    let mut symbols: Vec<String> = object
        .symbols
        .iter()
        .filter(|s| !s.name.is_empty())
        .filter(|s| !matches!(s.kind, SymbolKind::Section | SymbolKind::File))
        .map(|s| {
            let place = match s.placement {
                Placement::Section(id) => {
                    format!(
                        "{}+{:#x} size {:#x}",
                        object.section(id).name,
                        s.value,
                        s.size
                    )
                }
                Placement::Undefined => "undefined".to_string(),
                Placement::Absolute => "absolute".to_string(),
                Placement::Common => "common".to_string(),
            };
            format!("  {} {:?} {:?} {place}", s.name, s.kind, s.binding)
        })
        .collect();
    symbols.sort();
    for symbol in symbols {
        let _ = writeln!(text, "{symbol}");
    }
    text
}

#[test]
fn every_fixture_pair_matches_its_snapshot() {
    if !common::have_tool("gcc") {
        return;
    }
    let fixtures = common::repo_root().join("fixtures");
    let mut names: Vec<String> = std::fs::read_dir(&fixtures)
        .expect("fixtures directory")
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".orig.c").map(str::to_string)
        })
        .collect();
    names.sort();
    assert!(names.len() >= 20, "fixture pairs found: {names:?}");
    for name in names {
        let (_, output) = common::diff_fixture(&name, "vmlinux");
        expect_test::expect_file![format!("snapshots/{name}.txt")].assert_eq(&dump(&output));
    }
}
