//! The fuzz targets of kpatch-rs: what a hostile object, symbol file or patch reaches.
//!
//! Each target takes arbitrary bytes and runs them through one reader the way `kpatch-rs`
//! does, then walks what the reader accepted with every accessor the later phases use. A
//! target returns normally for any input: a reader answers bad input with an error, never a
//! panic, and what it accepts must hold the invariants the phases after it rely on (those
//! are asserted here, so a broken one is a crash too).
//!
//! The same functions run three ways: under libFuzzer (`fuzz/libfuzzer/`, `cargo xtask
//! fuzz`), on the committed seeds and regression inputs (`tests/corpus.rs`), and on one file
//! (`kpatch-fuzz replay TARGET FILE`).

use std::path::Component;

use kpatch_build::build::module::KlpObjectName;
use kpatch_build::build::resolve::{self, Exports, KlpObjectSymbols, Unit};
use kpatch_build::build::units;
use kpatch_diff::elf::{Object, RelocationTarget};

/// One fuzz target: its name (the libFuzzer binary's, and the corpus directory's) and body.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    /// What it reads (`kpatch-fuzz replay` says it first).
    pub what: &'static str,
}

/// Every target, in the order `cargo xtask fuzz` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "elf",
        run: elf,
        what: "one object: the ELF reader and its accessors, a klp object's symbol table, inspect",
    },
    Target {
        name: "diff",
        run: diff,
        what: "an object pair through kpatch_diff::diff, the output object read back",
    },
    Target {
        name: "system_map",
        run: system_map,
        what: "System.map / kallsyms and Module.symvers text, with sympos lookups",
    },
    Target {
        name: "patch",
        run: patch,
        what: "a patch's touched files (-p1) and a .cmd file's klp object",
    },
];

/// The target named `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|target| target.name == name)
}

/// At most this many names are looked up per input, so that one input's time stays bounded
/// by its size rather than by its square.
const LOOKUPS: usize = 64;

/// The ELF reader: `kpatch_diff::elf::Object::parse`, then every accessor over what it
/// accepted (relocation targets, extents, jump blocks, strings); the same bytes as a klp
/// object's symbol table (`KlpObjectSymbols::from_elf`, vmlinux and module) with `sympos`
/// lookups of the object's own unit, a module's `depends=`, and `kpatch-rs inspect`.
pub fn elf(data: &[u8]) {
    let object = Object::parse("fuzz.o", data);
    if let Ok(object) = &object {
        walk(object);
    }
    let _ = resolve::module_depends(data);
    // `kpatch-rs inspect` reads a module the same way, with its reports written out.
    if let Ok(inspection) = kpatch_build::inspect::inspect("fuzz.ko", data) {
        let mut sink = Vec::new();
        inspection
            .write_json(&mut sink)
            .expect("the JSON inspection writes to memory");
        inspection
            .write_human(&mut sink)
            .expect("the human inspection writes to memory");
    }
    for klp_object in [
        KlpObjectName::Vmlinux,
        KlpObjectName::Module("fuzz_mod".to_string()),
    ] {
        let Ok(symbols) = KlpObjectSymbols::from_elf(klp_object, data) else {
            continue;
        };
        let Ok(object) = &object else {
            continue;
        };
        let locals = resolve::unit_locals(object);
        let defined = resolve::unit_defined(object);
        look_up(&symbols, "fuzz.c", &locals, &defined);
    }
}

/// Every accessor of the validated model, over every section, symbol and relocation: the
/// model promises that later phases may index it without checks, so none of these may panic.
fn walk(object: &Object) {
    for section in &object.sections {
        for relocation in &section.relocations {
            assert_eq!(relocation.section, section.id, "relocation filed elsewhere");
            let _ = object.reference_bias(relocation);
            match object.resolve(relocation) {
                RelocationTarget::Symbol { symbol, .. } => {
                    let _ = object.symbol(symbol);
                }
                RelocationTarget::String {
                    section,
                    string_start,
                    ..
                } => {
                    let _ = object.string_at(section, string_start);
                }
                RelocationTarget::Section { section, addend } => {
                    if object.section(section).is_exec() {
                        let _ = object.jump_block(relocation, section, addend);
                    }
                }
            }
        }
        let relocations = object.relocations_in(section.id, 0, u64::MAX);
        assert_eq!(relocations.len(), section.relocations.len());
    }
    for symbol in &object.symbols {
        let Some(section) = symbol.section() else {
            continue;
        };
        let _ = object.symbols_in(section);
        let (start, end) = object.extent(symbol.id);
        assert!(
            start <= end,
            "extent of {} ends before it starts",
            symbol.name
        );
        let _ = object.relocations_in(section, start, end);
        let _ = object.owns_whole_section(symbol.id);
        let _ = object.string_at(section, symbol.value);
    }
}

/// `find_block` and `sympos` as the resolve phase calls them, for the unit `locals` and
/// `defined` describe, and `sympos` in global scope for each of its names.
fn look_up(symbols: &KlpObjectSymbols, file: &str, locals: &[&str], defined: &[&str]) {
    let unit = Unit {
        file,
        locals,
        defined,
    };
    let block = symbols.find_block(&unit).ok();
    for name in defined.iter().chain(locals).take(LOOKUPS) {
        if let Some(block) = &block {
            let _ = symbols.sympos(name, Some(block));
        }
        let _ = symbols.sympos(name, None);
        let _ = symbols.has_global(name);
    }
}

/// Splits a `diff` input into the module flag, the original and the patched object:
/// byte 0 bit 0 says a module klp object, bytes 1..5 the original's length (u32, little
/// endian), then the original, then the patched object. `None` when too short.
pub fn split_pair(data: &[u8]) -> Option<(bool, &[u8], &[u8])> {
    let (&flags, rest) = data.split_first()?;
    let (length, rest) = rest.split_first_chunk::<4>()?;
    let length = usize::try_from(u32::from_le_bytes(*length)).ok()?;
    let orig = rest.get(..length)?;
    let patched = rest.get(length..)?;
    Some((flags & 1 != 0, orig, patched))
}

/// The `diff` input for a pair: the inverse of [`split_pair`].
pub fn join_pair(module: bool, orig: &[u8], patched: &[u8]) -> Vec<u8> {
    let length = u32::try_from(orig.len()).unwrap_or(u32::MAX);
    let mut data = Vec::with_capacity(5 + orig.len() + patched.len());
    data.push(u8::from(module));
    data.extend_from_slice(&length.to_le_bytes());
    data.extend_from_slice(orig);
    data.extend_from_slice(patched);
    data
}

/// The whole diff of a pair (`kpatch_diff::diff`), for vmlinux or a module klp object; the
/// report is written both ways and the output object, when there is one, must be one that
/// kpatch-rs itself reads back (the build reads it again to make it linkable).
pub fn diff(data: &[u8]) {
    let Some((module, orig, patched)) = split_pair(data) else {
        return;
    };
    let pair = kpatch_diff::Pair {
        name: "fuzz.o",
        orig_name: "fuzz.orig.o",
        orig,
        patched,
        klp_object: if module { "fuzz_mod" } else { "vmlinux" },
    };
    let Ok(output) = kpatch_diff::diff(&pair) else {
        return;
    };
    let mut sink = Vec::new();
    output
        .report
        .write_json(&mut sink)
        .expect("the JSON report writes to memory");
    output
        .report
        .write_human(&mut sink)
        .expect("the human report writes to memory");
    if let Some(bytes) = &output.object {
        if let Err(error) = Object::parse("output.o", bytes) {
            panic!("the diff wrote an output object that kpatch-rs cannot read: {error}");
        }
    }
}

/// A symbol map as `--system-map` reads it (System.map or a copy of /proc/kallsyms), with
/// `find_block` and `sympos` for a unit made of the map's own names (every name whose first
/// byte is even, so the split follows the input); and the same text as `Module.symvers`.
pub fn system_map(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(symbols) = KlpObjectSymbols::from_system_map(&text) {
        let names: Vec<&str> = text
            .lines()
            .filter_map(|line| line.split_whitespace().nth(2))
            .take(LOOKUPS)
            .collect();
        let defined: Vec<&str> = names
            .iter()
            .copied()
            .filter(|name| name.as_bytes().first().is_some_and(|b| b % 2 == 0))
            .collect();
        look_up(&symbols, "fuzz.c", &defined, &defined);
        for name in &names {
            let _ = symbols.sympos(name, None);
        }
    }
    if let Ok(exports) = Exports::parse(&text) {
        let lines = text.lines().filter(|line| !line.trim().is_empty());
        for line in lines.take(LOOKUPS) {
            if let Some(symbol) = line.split('\t').nth(1) {
                let exporter = exports.exporter(symbol);
                assert!(
                    exporter.is_some(),
                    "{symbol} was parsed but is not exported"
                );
                let _ = exports.namespace(symbol);
                if let Some(exporter) = exports.exporter_to_livepatch(symbol) {
                    let _ = resolve::module_of_exporter(exporter);
                }
            }
        }
    }
}

/// A patch as `kpatch-rs build` reads it: the files it touches (`-p1`) must be relative
/// paths inside the tree, C sources or headers, each once; and the same text as a `.cmd`
/// file, whose klp object is vmlinux or a named module.
pub fn patch(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(files) = units::touched_files("fuzz.patch", &text) {
        assert!(
            !files.is_empty(),
            "a patch that changes no file was accepted"
        );
        for (index, file) in files.iter().enumerate() {
            assert!(
                file.components()
                    .all(|component| matches!(component, Component::Normal(_))),
                "{} escapes the tree",
                file.display()
            );
            assert!(
                matches!(
                    file.extension().and_then(|e| e.to_str()),
                    Some("c") | Some("h")
                ),
                "{} is neither a C source nor a header",
                file.display()
            );
            assert!(
                !files[..index].contains(file),
                "{} is listed twice",
                file.display()
            );
        }
    }
    if let KlpObjectName::Module(name) = units::attribute(&text) {
        assert!(!name.is_empty(), "a module without a name");
    }
}
