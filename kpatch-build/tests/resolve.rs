//! `sympos` from a real link: two translation units named `show.c`, each with a static
//! `show()`, linked the way vmlinux is, and the resolver must tell them apart by their other
//! local symbols.

#![allow(
    clippy::disallowed_methods,
    reason = "tests compile fixtures and run the binary"
)]

use std::path::{Path, PathBuf};
use std::process::Command;

use kpatch_build::build::module::KlpObjectName;
use kpatch_build::build::resolve::{KlpObjectSymbols, Sympos, Unit};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/resolve")
}

fn tools_available() -> bool {
    let found = ["gcc", "ld"]
        .iter()
        .all(|tool| Command::new(tool).arg("--version").output().is_ok());
    if !found {
        kpatch_support::skip_unless_ci("gcc and ld not found (cargo xtask deps)");
    }
    found
}

/// Compiles both `show.c` files and links them, `one` first, into an executable image.
fn link_two_units(dir: &Path) -> Vec<u8> {
    let mut objects = Vec::new();
    for unit in ["one", "two"] {
        let object = dir.join(format!("{unit}.o"));
        let status = Command::new("gcc")
            .args([
                "-c",
                "-O2",
                "-fno-pic",
                "-ffunction-sections",
                "-fdata-sections",
            ])
            .current_dir(fixtures().join(unit))
            .arg("show.c")
            .arg("-o")
            .arg(&object)
            .status()
            .expect("run gcc");
        assert!(status.success(), "gcc failed on {unit}/show.c");
        objects.push(object);
    }
    let image = dir.join("image");
    let status = Command::new("ld")
        .args(["-e", "0", "-Ttext=0x100000", "-o"])
        .arg(&image)
        .args(&objects)
        .status()
        .expect("run ld");
    assert!(status.success(), "ld failed");
    std::fs::read(image).expect("read image")
}

#[test]
fn duplicate_local_names_resolve_to_their_own_unit() {
    if !tools_available() {
        eprintln!("skipped: gcc and ld are needed");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let image = link_two_units(dir.path());
    // Read from memory, and from the file through a read cache (the build's way, which reads
    // only the symbol table): the same answers.
    let in_memory =
        KlpObjectSymbols::from_elf(KlpObjectName::Vmlinux, image.as_slice()).expect("read symbols");
    let path = dir.path().join("vmlinux");
    std::fs::write(&path, &image).expect("write vmlinux");
    let file = std::fs::File::open(&path).expect("open vmlinux");
    let from_file =
        KlpObjectSymbols::from_elf(KlpObjectName::Vmlinux, &object::read::ReadCache::new(file))
            .expect("read symbols from the file");
    for symbols in [in_memory, from_file] {
        check_show_units(&symbols);
    }
}

fn check_show_units(symbols: &KlpObjectSymbols) {
    let unit = |locals: &'static [&'static str]| Unit {
        file: "show.c",
        locals,
        defined: locals,
    };
    let check = |locals: &'static [&'static str], expected: Sympos| {
        let block = symbols.find_block(&unit(locals)).expect("block");
        assert_eq!(
            symbols.sympos("show", Some(&block)).expect("sympos"),
            expected
        );
    };
    // `one` was linked first, so its show() has the lower address and comes first.
    check(&["show", "alpha"], Sympos(1));
    check(&["show", "beta"], Sympos(2));

    // A unique local has position 0, and so has a unique global.
    let two = symbols.find_block(&unit(&["beta"])).expect("block");
    assert_eq!(symbols.sympos("beta", Some(&two)).expect("beta"), Sympos(0));
    assert_eq!(
        symbols.sympos("two_entry", None).expect("global"),
        Sympos(0)
    );
    assert!(symbols.has_global("one_entry"));
    assert!(!symbols.has_global("show"));

    // show() alone does not say which show.c was compiled.
    let error = symbols.find_block(&unit(&["show"])).expect_err("ambiguous");
    assert_eq!(
        error.to_string(),
        "cannot tell which show.c of vmlinux was compiled: 2 local symbol blocks match equally \
         well; its local symbols do not single one out"
    );
    // A local the link dropped does not hide the block that holds the others.
    check(&["show", "beta", "__UNIQUE_ID_dropped"], Sympos(2));
    let error = symbols
        .find_block(&unit(&["gamma", "delta"]))
        .expect_err("no block");
    assert_eq!(
        error.to_string(),
        "cannot find show.c in vmlinux: no local symbol block of that file holds any of \
         gamma, delta; is vmlinux built from the same source and config?"
    );
    let error = symbols.sympos("alpha", Some(&two)).expect_err("wrong unit");
    assert_eq!(
        error.to_string(),
        "cannot find symbol alpha of show.c in vmlinux"
    );
}

#[test]
fn a_stripped_target_is_an_error_that_says_what_to_pass() {
    if !tools_available() {
        eprintln!("skipped: gcc and ld are needed");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let image = link_two_units(dir.path());
    let stripped_path = dir.path().join("stripped");
    std::fs::write(dir.path().join("image"), &image).expect("write");
    let status = Command::new("strip")
        .arg("-o")
        .arg(&stripped_path)
        .arg(dir.path().join("image"))
        .status()
        .expect("run strip");
    assert!(status.success());
    let stripped = std::fs::read(stripped_path).expect("read");
    let error = KlpObjectSymbols::from_elf(KlpObjectName::Vmlinux, stripped.as_slice())
        .expect_err("stripped");
    assert_eq!(
        error.to_string(),
        "cannot read symbols of vmlinux: it has no symbol table (stripped?); pass an unstripped vmlinux"
    );
    let error = KlpObjectSymbols::from_elf(KlpObjectName::Vmlinux, &b"not an elf"[..])
        .expect_err("garbage");
    assert!(error
        .to_string()
        .starts_with("cannot read symbols of vmlinux: "));
}

#[test]
fn a_module_stripped_of_file_symbols_is_one_block_and_refuses_duplicates() {
    if !tools_available() {
        eprintln!("skipped: gcc and ld are needed");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    link_two_units(dir.path());
    // A module is a relocatable link; a distribution strips its file symbols with the debug
    // information.
    let module = dir.path().join("module.ko");
    let status = Command::new("ld")
        .arg("-r")
        .arg("-o")
        .arg(&module)
        .arg(dir.path().join("one.o"))
        .arg(dir.path().join("two.o"))
        .status()
        .expect("run ld");
    assert!(status.success(), "ld -r failed");
    let status = Command::new("objcopy")
        .args(["--strip-debug", "--strip-symbol=show.c"])
        .arg(&module)
        .status()
        .expect("run objcopy");
    assert!(status.success(), "objcopy failed");
    let data = std::fs::read(&module).expect("read module");
    let symbols =
        KlpObjectSymbols::from_elf(KlpObjectName::Module("module".to_string()), data.as_slice())
            .expect("symbols");
    let block = symbols
        .find_block(&Unit {
            file: "show.c",
            locals: &["show", "beta"],
            defined: &["show", "beta"],
        })
        .expect("the whole module is the block");
    assert_eq!(symbols.sympos("beta", Some(&block)), Ok(Sympos(0)));
    assert_eq!(
        symbols
            .sympos("show", Some(&block))
            .expect_err("two show()")
            .to_string(),
        "cannot tell which show of module is meant: the module has 2 local symbols of that \
         name and no file symbols (stripped); pass the directory of its unstripped modules (a \
         distribution's -dbg package) with --modules"
    );
}

#[test]
fn a_units_locals_are_only_those_the_binary_keeps() {
    if !tools_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let object = dir.path().join("exports.o");
    let status = Command::new("gcc")
        .args(["-c", "-O2", "-ffunction-sections", "-fdata-sections", "-o"])
        .arg(&object)
        .arg(fixtures().join("exports/exports.c"))
        .status()
        .expect("run gcc");
    assert!(status.success(), "gcc failed on exports.c");
    let bytes = std::fs::read(&object).expect("read object");
    let parsed = kpatch_diff::elf::Object::parse("exports.o", &bytes).expect("parse");
    assert_eq!(
        kpatch_build::build::resolve::unit_locals(&parsed),
        ["helper"]
    );
    let defined = kpatch_build::build::resolve::unit_defined(&parsed);
    assert!(
        !defined.iter().any(|s| s.contains("addressable")),
        "{defined:?}"
    );
    assert!(defined.contains(&"exported") && defined.contains(&"exports_setup"));
}

#[test]
fn a_unit_whose_only_locals_are_clones_is_found_by_them() {
    if !tools_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let object = dir.path().join("clones.o");
    let status = Command::new("gcc")
        .args(["-c", "-O2", "-ffunction-sections", "-fdata-sections", "-o"])
        .arg(&object)
        .arg(fixtures().join("clones/clones.c"))
        .status()
        .expect("run gcc");
    assert!(status.success(), "gcc failed on clones.c");
    let bytes = std::fs::read(&object).expect("read object");
    let parsed = kpatch_diff::elf::Object::parse("clones.o", &bytes).expect("parse");
    assert_eq!(
        kpatch_build::build::resolve::unit_locals(&parsed),
        ["helper.constprop.0"]
    );
}
