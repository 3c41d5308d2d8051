//! `kpatch-fuzz`: the fuzzing helpers that need no libFuzzer build.
//!
//! - `kpatch-fuzz seeds OUT [KERNEL_FIXTURES]`: writes the seed corpus of every target into
//!   `OUT/<target>/`: the C fixture pairs compiled with the kernel's flags (objects, pairs,
//!   and symbol maps and `Module.symvers` lines made of their symbols), the committed
//!   patches and System.map excerpt, and, given the directory `cargo xtask fixtures` keeps,
//!   its small kernel object pairs and `.cmd` files; and the livepatch modules earlier builds
//!   left in kpatch-rs's build cache.
//! - `kpatch-fuzz replay TARGET FILE...`: runs each file through the target once, as the
//!   regression tests do, and says which panicked (a libFuzzer crash file reproduces so).

#![allow(
    clippy::disallowed_methods,
    reason = "compiles the C fixtures with gcc for the seed corpus"
)]

#[path = "../../kpatch-diff/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use kpatch_diff::elf::{Binding, Object, SymbolKind};

const USAGE: &str = "usage: kpatch-fuzz seeds OUT [KERNEL_FIXTURES]\n       \
                     kpatch-fuzz replay TARGET FILE...";

/// Kernel objects larger than this are left out of the seeds: a large input makes every
/// execution slow, and the small ones already carry every kind of section.
const LARGEST_SEED: u64 = 64 * 1024;

/// How many livepatch modules of the build cache become seeds.
const MODULE_SEEDS: usize = 8;

/// Lines of a kernel `.cmd` file kept as a seed.
const CMD_LINES: usize = 12;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.split_first() {
        Some((command, rest)) if command == "seeds" => seeds(rest),
        Some((command, rest)) if command == "replay" => replay(rest),
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("kpatch-fuzz: {message}");
            ExitCode::FAILURE
        }
    }
}

fn replay(args: &[String]) -> Result<(), String> {
    let [name, files @ ..] = args else {
        return Err(USAGE.to_string());
    };
    let target = kpatch_fuzz::target(name).ok_or_else(|| format!("no target named {name}"))?;
    if files.is_empty() {
        return Err(USAGE.to_string());
    }
    println!("{}: {}", target.name, target.what);
    let mut panicked = 0;
    for file in files {
        let data = std::fs::read(file).map_err(|e| format!("cannot read {file}: {e}"))?;
        match std::panic::catch_unwind(|| (target.run)(&data)) {
            Ok(()) => println!("{file}: ok"),
            Err(_) => {
                println!("{file}: panicked (message above)");
                panicked += 1;
            }
        }
    }
    if panicked > 0 {
        return Err(format!("{panicked} of {} inputs panicked", files.len()));
    }
    Ok(())
}

fn seeds(args: &[String]) -> Result<(), String> {
    let (out, kernel_fixtures) = match args {
        [out] => (PathBuf::from(out), None),
        [out, fixtures] => (PathBuf::from(out), Some(PathBuf::from(fixtures))),
        _ => return Err(USAGE.to_string()),
    };
    if !common::have_tool("gcc") {
        return Err("gcc is needed to compile the fixtures (cargo xtask deps)".to_string());
    }
    let mut corpus = Corpus::new(out)?;
    let root = common::repo_root();
    let fixtures = root.join("fixtures");
    let mut pairs = Vec::new();
    for entry in read_dir(&fixtures)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".orig.c") {
            pairs.push(stem.to_string());
        }
    }
    pairs.sort();
    for (index, name) in pairs.iter().enumerate() {
        let orig = common::compile_fixture(name, "orig");
        let patched = common::compile_fixture(name, "patched");
        corpus.add("elf", &format!("{name}.orig.o"), &orig)?;
        corpus.add("elf", &format!("{name}.patched.o"), &patched)?;
        let module = name.contains("module");
        corpus.add(
            "diff",
            name,
            &kpatch_fuzz::join_pair(module, &orig, &patched),
        )?;
        if let Ok(object) = Object::parse(name, &orig) {
            corpus.add(
                "system_map",
                &format!("{name}.map"),
                &symbol_map(&object, false),
            )?;
            if index % 4 == 0 {
                let kallsyms = symbol_map(&object, true);
                corpus.add("system_map", &format!("{name}.kallsyms"), &kallsyms)?;
            }
            corpus.add("system_map", &format!("{name}.symvers"), &symvers(&object))?;
        }
    }
    // One map of every fixture, one after another as a link lays out units: the same static
    // names in several units, for the neighbour rule.
    let mut linked = Vec::new();
    for (index, name) in pairs.iter().enumerate() {
        let orig = std::fs::read(corpus.out.join("elf").join(format!("{name}.orig.o")))
            .map_err(|e| format!("cannot read back {name}.orig.o: {e}"))?;
        if let Ok(object) = Object::parse(name, &orig) {
            let base = 0xffff_ffff_8100_0000 + index as u64 * 0x10_0000;
            linked.extend(symbol_map_at(&object, base, false));
        }
    }
    corpus.add("system_map", "fixtures-linked.map", &linked)?;
    let excerpt = read(&fixtures.join("distro/system-map-type_show.txt"))?;
    let excerpt: Vec<u8> = String::from_utf8_lossy(&excerpt)
        .lines()
        .filter(|line| !line.starts_with('#'))
        .flat_map(|line| line.bytes().chain(std::iter::once(b'\n')))
        .collect();
    corpus.add("system_map", "system-map-type_show", &excerpt)?;
    for directory in ["patches", "distro"] {
        for entry in read_dir(&fixtures.join(directory))? {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "patch") {
                let name = format!("{directory}-{}", entry.file_name().to_string_lossy());
                corpus.add("patch", &name, &read(&path)?)?;
            }
        }
    }
    if let Some(kernel) = kernel_fixtures {
        kernel_seeds(&mut corpus, &kernel)?;
    }
    module_seeds(&mut corpus)?;
    for (target, count) in &corpus.counts {
        eprintln!("kpatch-fuzz: {count} seeds for {target}");
    }
    Ok(())
}

/// The object pairs of `cargo xtask fixtures` (as objtool left them, which is what
/// kpatch-rs diffs) no larger than [`LARGEST_SEED`], and the `.cmd` files of their units.
fn kernel_seeds(corpus: &mut Corpus, kernel: &Path) -> Result<(), String> {
    let manifest = String::from_utf8_lossy(&read(&kernel.join("manifest"))?).into_owned();
    for line in manifest.lines() {
        let Some((patch, object)) = line.split_once(' ') else {
            continue;
        };
        let orig_path = kernel.join("orig-objtool").join(object);
        let patched_path = kernel.join("patched-objtool").join(object);
        let small = |path: &Path| {
            std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() <= LARGEST_SEED)
        };
        if !small(&orig_path) || !small(&patched_path) {
            continue;
        }
        let (orig, patched) = (read(&orig_path)?, read(&patched_path)?);
        let name = format!("kernel-{patch}-{}", object.replace('/', "-"));
        corpus.add("elf", &format!("{name}.orig"), &orig)?;
        corpus.add("elf", &format!("{name}.patched"), &patched)?;
        corpus.add(
            "diff",
            &name,
            &kpatch_fuzz::join_pair(false, &orig, &patched),
        )?;
        // A `.cmd` file's command line and the head of its dependency list (the whole file
        // names hundreds of headers).
        let cmd = kpatch_build::build::units::cmd_file(&kernel.join("orig"), Path::new(object));
        if let Ok(text) = std::fs::read(&cmd) {
            let head: Vec<u8> = String::from_utf8_lossy(&text)
                .lines()
                .take(CMD_LINES)
                .flat_map(|line| line.bytes().chain(std::iter::once(b'\n')))
                .collect();
            corpus.add("patch", &format!("{name}.cmd"), &head)?;
        }
    }
    Ok(())
}

/// The livepatch modules that earlier `kpatch-rs build` runs left in the build cache (the
/// unit tests make some), for `inspect` in the `elf` target: at most [`MODULE_SEEDS`].
fn module_seeds(corpus: &mut Corpus) -> Result<(), String> {
    let Some(builds) = kpatch_support::cache_root().map(|root| root.join("build")) else {
        return Ok(());
    };
    let mut modules: Vec<PathBuf> = std::fs::read_dir(&builds)
        .map(|entries| entries.flatten().collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|entry| std::fs::read_dir(entry.path().join("module/link")).ok())
        .flat_map(|entries| entries.flatten().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "ko"))
        .filter(|path| std::fs::metadata(path).is_ok_and(|m| m.len() <= LARGEST_SEED))
        .collect();
    modules.sort();
    for (index, path) in modules.iter().take(MODULE_SEEDS).enumerate() {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let name = format!("module-{index}-{}", name.unwrap_or_default());
        corpus.add("elf", &name, &read(path)?)?;
    }
    Ok(())
}

/// A System.map (`nm -n` form) of an object's functions and objects, each section placed at
/// its own 4 KiB-aligned place after `base`; with `kallsyms`, every other line carries a module suffix as
/// /proc/kallsyms lists module symbols.
fn symbol_map(object: &Object, kallsyms: bool) -> Vec<u8> {
    symbol_map_at(object, 0xffff_ffff_8100_0000, kallsyms)
}

fn symbol_map_at(object: &Object, base: u64, kallsyms: bool) -> Vec<u8> {
    let mut lines: Vec<(u64, String)> = Vec::new();
    for symbol in &object.symbols {
        let Some(section) = symbol.section() else {
            continue;
        };
        if !matches!(symbol.kind, SymbolKind::Func | SymbolKind::Object) {
            continue;
        }
        let flags = object.section(section);
        let letter = if flags.is_exec() {
            't'
        } else if flags.is_nobits() {
            'b'
        } else if flags.is_write() {
            'd'
        } else {
            'r'
        };
        let letter = if symbol.binding == Binding::Local {
            letter
        } else {
            letter.to_ascii_uppercase()
        };
        let address = base + section.0 as u64 * 0x1000 + symbol.value;
        let suffix = if kallsyms && lines.len() % 2 == 1 {
            "\t[fuzz_mod]"
        } else {
            ""
        };
        lines.push((
            address,
            format!("{address:016x} {letter} {}{suffix}\n", symbol.name),
        ));
    }
    lines.sort();
    lines
        .into_iter()
        .flat_map(|(_, line)| line.into_bytes())
        .collect()
}

/// `Module.symvers` lines exporting an object's global functions, every third in a namespace.
fn symvers(object: &Object) -> Vec<u8> {
    let mut text = String::new();
    for (index, symbol) in object
        .symbols
        .iter()
        .filter(|s| s.binding != Binding::Local && s.section().is_some())
        .enumerate()
    {
        let namespace = if index % 3 == 2 { "FUZZ_NS" } else { "" };
        text.push_str(&format!(
            "0x{:08x}\t{}\tvmlinux\tEXPORT_SYMBOL_GPL\t{namespace}\n",
            index * 0x1234_5679 % 0xffff_ffff,
            symbol.name
        ));
    }
    text.into_bytes()
}

/// The seed directories, one per target.
struct Corpus {
    out: PathBuf,
    counts: std::collections::BTreeMap<&'static str, usize>,
}

impl Corpus {
    fn new(out: PathBuf) -> Result<Corpus, String> {
        let mut counts = std::collections::BTreeMap::new();
        for target in kpatch_fuzz::TARGETS {
            let directory = out.join(target.name);
            std::fs::create_dir_all(&directory)
                .map_err(|e| format!("cannot create {}: {e}", directory.display()))?;
            counts.insert(target.name, 0);
        }
        Ok(Corpus { out, counts })
    }

    fn add(&mut self, target: &'static str, name: &str, data: &[u8]) -> Result<(), String> {
        let path = self.out.join(target).join(name);
        std::fs::write(&path, data).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        *self.counts.entry(target).or_default() += 1;
        Ok(())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn read_dir(path: &Path) -> Result<Vec<std::fs::DirEntry>, String> {
    let entries =
        std::fs::read_dir(path).map_err(|e| format!("cannot list {}: {e}", path.display()))?;
    Ok(entries.flatten().collect())
}
