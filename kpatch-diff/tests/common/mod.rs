//! Helpers shared by the diff tests: compiling fixture pairs with the kernel's code-generation
//! flags, and skipping (or failing, under CI) when a tool is missing.

#![allow(dead_code)] // each test binary uses a different subset of these helpers

use std::path::{Path, PathBuf};
use std::process::Command;

use kpatch_diff::elf::{Object, Placement, SymbolKind};
use kpatch_diff::report::Report;

/// The x86_64 code-generation flags of a Linux 6.12 object as Kbuild compiles it (taken from a
/// real `.o.cmd` file of the test kernel), at -O2 as distributions build, plus
/// `-ffunction-sections -fdata-sections` and `-g` as kpatch-rs builds (`-g` gives the layout
/// check its DWARF, and changes no code: `debug_info_changes_no_code`). Warnings and include
/// paths are left out: the fixtures are self-contained.
pub const KERNEL_CFLAGS: &[&str] = &[
    "-g",
    "-O2",
    "-std=gnu11",
    "-nostdinc",
    "-ffreestanding",
    "-fno-builtin",
    "-fshort-wchar",
    "-funsigned-char",
    "-fno-common",
    "-fno-PIE",
    "-fno-pic",
    "-fno-strict-aliasing",
    "-mno-sse",
    "-mno-mmx",
    "-mno-sse2",
    "-mno-3dnow",
    "-mno-avx",
    "-mno-80387",
    "-mno-fp-ret-in-387",
    "-mpreferred-stack-boundary=3",
    "-mskip-rax-setup",
    "-mtune=generic",
    "-mno-red-zone",
    "-mcmodel=kernel",
    "-fcf-protection=branch",
    "-fno-jump-tables",
    "-falign-jumps=1",
    "-falign-loops=1",
    "-mindirect-branch=thunk-extern",
    "-mindirect-branch-register",
    "-mindirect-branch-cs-prefix",
    "-mfunction-return=thunk-extern",
    "-fpatchable-function-entry=16,16",
    "-fno-asynchronous-unwind-tables",
    "-fno-delete-null-pointer-checks",
    "-fno-allow-store-data-races",
    "-fno-stack-protector",
    "-ftrivial-auto-var-init=zero",
    "-fno-stack-clash-protection",
    "-pg",
    "-mrecord-mcount",
    "-mfentry",
    "-DCC_USING_FENTRY",
    "-falign-functions=16",
    "-fno-strict-overflow",
    "-fno-stack-check",
    "-fconserve-stack",
    "-ffunction-sections",
    "-fdata-sections",
];

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// Whether `tool` runs; if not, returns false after saying so, or fails under CI.
pub fn have_tool(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        kpatch_support::skip_unless_ci(&format!("{tool} not found (cargo xtask deps)"));
    }
    found
}

/// Compiles `fixtures/NAME.VARIANT.c` as `NAME.c` (so `__FILE__` is the same in both variants,
/// as it is for a kernel source file before and after a patch) and returns the object bytes.
pub fn compile_fixture(name: &str, variant: &str) -> Vec<u8> {
    compile_fixture_with(name, variant, &[])
}

/// Compiles a fixture as [`compile_fixture`] does, with `more` flags after the others.
pub fn compile_fixture_with(name: &str, variant: &str, more: &[&str]) -> Vec<u8> {
    let fixtures = repo_root().join("fixtures");
    let dir = tempfile::tempdir().expect("cannot create a temporary directory");
    let source = dir.path().join(format!("{name}.c"));
    std::fs::copy(fixtures.join(format!("{name}.{variant}.c")), &source)
        .expect("cannot copy fixture source");
    std::fs::copy(
        fixtures.join("kernel_like.h"),
        dir.path().join("kernel_like.h"),
    )
    .expect("cannot copy fixture header");
    // A fixture may ask for more flags with a line `// cflags: ...` (UBSAN's, say).
    let text = std::fs::read_to_string(&source).expect("cannot read fixture source");
    let extra: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("// cflags:"))
        .flat_map(str::split_whitespace)
        .collect();
    let output = Command::new("gcc")
        .args(KERNEL_CFLAGS)
        .args(&extra)
        .args(more)
        .arg("-c")
        .arg(format!("{name}.c"))
        .arg("-o")
        .arg(format!("{name}.o"))
        .current_dir(dir.path())
        .output()
        .expect("cannot run gcc");
    assert!(
        output.status.success(),
        "gcc failed on fixtures/{name}.{variant}.c:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read(dir.path().join(format!("{name}.o"))).expect("cannot read compiled object")
}

/// Compiles the fixture pair `name` and diffs it as part of the klp object `klp_object`; returns
/// the patched object's bytes beside the diff.
pub fn diff_fixture(name: &str, klp_object: &str) -> (Vec<u8>, kpatch_diff::DiffOutput) {
    diff_fixture_with(name, klp_object, &kpatch_diff::DiffOptions::default())
}

/// [`diff_fixture`] with the diff's `options` (the layout check's).
pub fn diff_fixture_with(
    name: &str,
    klp_object: &str,
    options: &kpatch_diff::DiffOptions,
) -> (Vec<u8>, kpatch_diff::DiffOutput) {
    let orig = compile_fixture(name, "orig");
    let patched = compile_fixture(name, "patched");
    let object_name = format!("{name}.o");
    let mut options = options.clone();
    if options.kernel_layout.is_none() {
        options.kernel_layout = fixture_layout(name);
    }
    let options = &options;
    let pair = kpatch_diff::Pair {
        name: &object_name,
        orig_name: "original",
        orig: &orig,
        patched: &patched,
        klp_object,
    };
    let output = kpatch_diff::diff_with(&pair, options).unwrap_or_else(|e| panic!("{name}: {e}"));
    (patched, output)
}

/// The kernel layout a fixture names with a line `// layout: fixtures/layouts/NAME.json`, for
/// the forms older kernels give their special sections; `None` (Linux 6.12's) without one.
pub fn fixture_layout(name: &str) -> Option<kpatch_diff::special_sections::KernelLayout> {
    let source = repo_root().join(format!("fixtures/{name}.orig.c"));
    let text = std::fs::read_to_string(&source).expect("cannot read fixture source");
    let path = text
        .lines()
        .find_map(|line| line.strip_prefix("// layout:"))?
        .trim();
    let json = std::fs::read_to_string(repo_root().join(path))
        .unwrap_or_else(|e| panic!("fixtures/{name}: cannot read {path}: {e}"));
    Some(serde_json::from_str(&json).unwrap_or_else(|e| panic!("{path}: {e}")))
}

/// Runs a binutils tool on `path`, asserting it succeeds without warnings; returns stdout.
pub fn binutils_clean(tool: &str, args: &[&str], path: &Path) -> String {
    let output = Command::new(tool)
        .args(args)
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.trim().is_empty(),
        "{tool} {args:?} {} failed or warned:\n{stderr}",
        path.display()
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The output object must read back, define every changed and new function, leave every
/// reference undefined, carry the metadata, and satisfy readelf, objdump and `ld -r`.
pub fn check_output(name: &str, bytes: &[u8], report: &Report) {
    let object = Object::parse("output", bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    for function in &report.functions {
        let symbol = object
            .symbols
            .iter()
            .find(|s| s.name == function.name)
            .unwrap_or_else(|| panic!("{name}: output lacks {}", function.name));
        assert_eq!(symbol.kind, SymbolKind::Func, "{name}: {}", function.name);
        assert!(
            matches!(symbol.placement, Placement::Section(_)),
            "{name}: {} is not defined in the output",
            function.name
        );
    }
    for function in &report.functions {
        let alias = object
            .symbols
            .iter()
            .find(|s| s.name == function.symbol)
            .unwrap_or_else(|| panic!("{name}: output lacks alias {}", function.symbol));
        assert_eq!(alias.kind, SymbolKind::Func, "{name}: {}", function.symbol);
        assert_eq!(
            alias.binding,
            kpatch_diff::elf::Binding::Global,
            "{name}: {}",
            function.symbol
        );
    }
    for reference in &report.references {
        let symbol = object
            .symbols
            .iter()
            .find(|s| s.name == reference.name)
            .unwrap_or_else(|| panic!("{name}: output lacks reference {}", reference.name));
        assert_eq!(
            symbol.placement,
            Placement::Undefined,
            "{name}: {}",
            reference.name
        );
    }
    let metadata = object
        .sections
        .iter()
        .find(|s| s.name == kpatch_diff::output::METADATA_SECTION)
        .unwrap_or_else(|| panic!("{name}: no metadata section"));
    let json = metadata
        .data
        .strip_suffix(&[0])
        .expect("metadata is NUL-terminated");
    let parsed: serde_json::Value = serde_json::from_slice(json).expect("metadata is JSON");
    assert_eq!(parsed["object"], report.object.as_str());

    if !have_tool("ld") {
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("out.o");
    std::fs::write(&path, bytes).expect("write output");
    binutils_clean("readelf", &["-aW"], &path);
    let disassembly = binutils_clean("objdump", &["-dr"], &path);
    for function in &report.functions {
        // objdump labels an address with one of its names (the global alias, or another name
        // of the same function): one of the names at the function's place must be a label.
        let place = object
            .symbols
            .iter()
            .find(|s| s.name == function.symbol)
            .map(|s| (s.placement, s.value));
        let labelled = object
            .symbols
            .iter()
            .filter(|s| Some((s.placement, s.value)) == place)
            .any(|s| disassembly.contains(&format!("<{}>:", s.name)));
        assert!(labelled, "{name}: objdump shows no {}", function.name);
    }
    // Linked with an ordinary object of the same flags, as the module generator will, so
    // that ordered sections (`__patchable_function_entries`) must agree.
    let other = dir.path().join("other.o");
    std::fs::write(&other, compile_fixture("same", "orig")).expect("write other object");
    let linked = dir.path().join("linked.o");
    let output = std::process::Command::new("ld")
        .arg("-r")
        .arg("-o")
        .arg(&linked)
        .arg(&path)
        .arg(&other)
        .output()
        .expect("run ld");
    assert!(
        output.status.success() && output.stderr.is_empty(),
        "{name}: ld -r failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The relocations of one function's body, each as (offset in the function, type, target),
/// the target named independently of layout: `symbol+offset` (static locals without their
/// counter), a string's contents, or `section+addend`.
fn body_relocations(object: &Object, function: &str) -> Vec<(u64, u32, String)> {
    let Some(symbol) = object
        .symbols
        .iter()
        .find(|s| s.name == function && s.kind == SymbolKind::Func && s.section().is_some())
    else {
        panic!("no function {function}");
    };
    let Some(section) = symbol.section() else {
        return Vec::new();
    };
    object
        .relocations_in(section, symbol.value, symbol.value + symbol.size)
        .iter()
        .map(|r| {
            let target = match object.resolve(r) {
                kpatch_diff::elf::RelocationTarget::Symbol { symbol, offset } => {
                    let name = &object.symbol(symbol).name;
                    format!("{}{offset:+}", kpatch_diff::correlate::name_key(name).base)
                }
                kpatch_diff::elf::RelocationTarget::String {
                    section,
                    string_start,
                    offset,
                } => format!(
                    "{:?}{offset:+}",
                    String::from_utf8_lossy(object.string_at(section, string_start))
                ),
                kpatch_diff::elf::RelocationTarget::Section { section, addend } => {
                    format!("{}{addend:+}", object.section(section).name)
                }
            };
            (r.offset - symbol.value, r.r_type, target)
        })
        .collect()
}

/// Every relocation of every changed or new function reaches in the output what it reached in
/// the patched object: the same function or object at the same offset, the same string.
pub fn check_relocations_preserved(name: &str, patched: &[u8], output: &[u8], report: &Report) {
    let input = Object::parse("patched", patched).expect("patched object reads");
    let output = Object::parse("output", output).expect("output reads back");
    for function in &report.functions {
        assert_eq!(
            body_relocations(&output, &function.name),
            body_relocations(&input, &function.name),
            "{name}: relocations of {} differ between input and output",
            function.name
        );
    }
}
