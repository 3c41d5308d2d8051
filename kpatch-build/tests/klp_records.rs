//! Livepatch relocation records survive a real `ld -r` link and become `.klp.rela` sections.
//!
//! The chain is the one a module build runs: gcc compiles patched code, `convert_references`
//! turns the references to unreachable symbols into records, `ld -r` links the object after
//! another one (as Kbuild does for a module), and `post_link` rewrites the result.

#![allow(
    clippy::disallowed_methods,
    reason = "tests compile fixtures and run the binary"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use kpatch_build::build::klp_records::convert_references;
use kpatch_build::build::post_link::{rewrite_module, SHF_RELA_LIVEPATCH, SHN_LIVEPATCH};
use object::elf;
use object::read::elf::{ElfFile64, FileHeader, Rela, SectionHeader, Sym};
use object::{Endianness, Object, ObjectSection, ObjectSymbol};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/records")
}

fn tool_available(tool: &str) -> bool {
    let found = Command::new(tool).arg("--version").output().is_ok();
    if !found {
        kpatch_support::skip_unless_ci(&format!("{tool} not found (cargo xtask deps)"));
    }
    found
}

/// Compiles `source` with the kernel's x86_64 code-generation flags into `dir`. Function
/// sections are off so that the link merges `.text` and really moves the patched code.
fn compile(dir: &Path, source: &str) -> PathBuf {
    let output = dir.join(source.replace(".c", ".o"));
    let status = Command::new("gcc")
        .args([
            "-c",
            "-O2",
            "-mcmodel=kernel",
            "-fno-pic",
            "-mno-red-zone",
            "-fno-function-sections",
        ])
        .arg(fixtures().join(source))
        .arg("-o")
        .arg(&output)
        .status()
        .expect("run gcc");
    assert!(status.success(), "gcc failed on {source}");
    output
}

/// (offset, symbol name) of every relocation against `.text` in `data`.
fn text_relocations(data: &[u8]) -> Vec<(u64, String)> {
    let file = object::File::parse(data).expect("parse object");
    file.section_by_name(".text")
        .expect(".text")
        .relocations()
        .map(|(offset, relocation)| {
            let object::RelocationTarget::Symbol(index) = relocation.target() else {
                panic!("relocation without symbol");
            };
            let symbol = file.symbol_by_index(index).expect("symbol");
            (offset, symbol.name().expect("name").to_string())
        })
        .collect()
}

#[test]
fn records_cross_the_link_and_become_livepatch_relocations() {
    if !tool_available("gcc") || !tool_available("ld") || !tool_available("readelf") {
        eprintln!("skipped: gcc, ld and readelf are needed");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let user = compile(dir.path(), "user.c");
    let padding = compile(dir.path(), "padding.c");

    let original = std::fs::read(&user).expect("read user.o");
    let original_places = text_relocations(&original);
    assert!(original_places
        .iter()
        .any(|(_, name)| name == "hidden_counter"));

    let klp_names = BTreeMap::from([
        (
            "hidden_counter".to_string(),
            ".klp.sym.vmlinux.hidden_counter,0".to_string(),
        ),
        (
            "hidden_log".to_string(),
            ".klp.sym.vmlinux.hidden_log,2".to_string(),
        ),
    ]);
    let (converted, count) = convert_references("user.o", &original, &klp_names).expect("convert");
    assert_eq!(count, original_places.len());
    assert!(
        text_relocations(&converted).is_empty(),
        "converted relocations must leave the code"
    );
    let converted_path = dir.path().join("user.converted.o");
    std::fs::write(&converted_path, &converted).expect("write");

    let linked_path = dir.path().join("linked.ko");
    let status = Command::new("ld")
        .args(["-r", "-o"])
        .arg(&linked_path)
        .arg(&padding)
        .arg(&converted_path)
        .status()
        .expect("run ld");
    assert!(status.success(), "ld -r failed");
    let linked = std::fs::read(&linked_path).expect("read linked");
    let linked_file = object::File::parse(&*linked).expect("parse linked");
    // The padding object comes first, so user.o's code starts after it inside `.text`.
    let shift = linked_file
        .symbol_by_name("read_hidden_counter")
        .expect("function symbol")
        .address();
    assert!(shift > 0, "the link must move the patched code");
    assert!(
        linked_file.symbol_by_name("hidden_counter").is_none(),
        "converted symbols must not reach the link"
    );

    let (rewritten, summary) = rewrite_module("linked.ko", &linked, None).expect("post-link");
    assert_eq!(
        summary.sections,
        vec![(".klp.rela.vmlinux..text".to_string(), original_places.len())]
    );

    let elf_file = ElfFile64::<Endianness>::parse(&*rewritten).expect("parse rewritten");
    let endian = elf_file.endian();
    let sections = elf_file
        .elf_header()
        .sections(endian, &*rewritten)
        .expect("sections");
    let symbols = sections
        .symbols(endian, &*rewritten, elf::SHT_SYMTAB)
        .expect("symtab");
    let mut found = Vec::new();
    for section in sections.iter() {
        let name = sections
            .section_name(endian, section)
            .expect("section name");
        assert!(
            !name.starts_with(b".kpatch."),
            "record sections must be removed"
        );
        if !name.starts_with(b".klp.rela.") {
            continue;
        }
        let flags = section.sh_flags(endian).0;
        assert_eq!(flags & SHF_RELA_LIVEPATCH, SHF_RELA_LIVEPATCH);
        assert_eq!(flags & elf::SHF_ALLOC.0, elf::SHF_ALLOC.0);
        let target = sections
            .section(object::SectionIndex(section.sh_info(endian) as usize))
            .expect("target");
        assert_eq!(
            sections.section_name(endian, target).expect("name"),
            b".text"
        );
        let (relas, _) = section
            .rela(endian, &*rewritten)
            .expect("rela")
            .expect("is rela");
        for rela in relas {
            let symbol = symbols
                .symbol(object::SymbolIndex(rela.r_sym(endian, false) as usize))
                .expect("symbol");
            assert_eq!(symbol.st_shndx(endian).0, SHN_LIVEPATCH);
            let name = symbols.symbol_name(endian, symbol).expect("name");
            found.push((
                rela.r_offset(endian),
                String::from_utf8(name.to_vec()).expect("utf8"),
            ));
        }
    }
    let mut expected: Vec<(u64, String)> = original_places
        .iter()
        .map(|(offset, name)| (shift + offset, klp_names[name].clone()))
        .collect();
    found.sort();
    expected.sort();
    assert_eq!(found, expected);

    // binutils must read the result without complaint.
    let rewritten_path = dir.path().join("rewritten.ko");
    std::fs::write(&rewritten_path, &rewritten).expect("write");
    let readelf = Command::new("readelf")
        .args(["-W", "-a"])
        .arg(&rewritten_path)
        .output()
        .expect("run readelf");
    assert!(readelf.status.success());
    let stderr = String::from_utf8_lossy(&readelf.stderr);
    assert!(stderr.trim().is_empty(), "readelf complained: {stderr}");
}
