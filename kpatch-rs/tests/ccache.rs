//! The compile cache through a compiler wrapper: `--make-var CC="ccache gcc"` against the
//! project's cached 6.12 kernel. A second build in an empty kpatch-rs cache (other `O=`
//! directories, another patched tree) finds the units in ccache, the module's bytes are
//! those of a build without ccache, and the compiler check and the cache key follow the
//! compiler behind the wrapper.

#![allow(clippy::disallowed_methods, reason = "tests run the binary and ccache")]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{fixture, kernel, stderr, Kernel};

/// `kpatch-rs build` of cmdline.patch into `output`, with `extra` arguments, ccache's
/// directory and log under `dir`, and none of the user's ccache path settings.
fn build(kernel: &Kernel, dir: &Path, output: &str, extra: &[&str], log: &str) -> Output {
    let mut command = kernel.command(&dir.join(output), extra, &[fixture("cmdline.patch")]);
    command
        .env("CCACHE_DIR", dir.join("ccache"))
        .env("CCACHE_LOGFILE", dir.join(log))
        .env_remove("CCACHE_BASEDIR")
        .env_remove("CCACHE_NOHASHDIR")
        .env_remove("CCACHE_HASHDIR")
        .env_remove("CCACHE_DISABLE");
    let started = std::time::Instant::now();
    let result = command.output().expect("run kpatch-rs");
    eprintln!(
        "build into {output}: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    result
}

fn ccache(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("ccache")
        .args(args)
        .env("CCACHE_DIR", dir.join("ccache"))
        .output()
        .expect("run ccache");
    assert!(
        output.status.success(),
        "ccache {args:?}: {}",
        stderr(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// What ccache's log says of each compiled source file: `direct_cache_hit`,
/// `preprocessed_cache_hit` or `cache_miss`, per source file as ccache saw it (relative when
/// under `CCACHE_BASEDIR`), in the order they came.
fn results(log: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(log).expect("read ccache log");
    let mut source_of: BTreeMap<&str, &str> = BTreeMap::new();
    let mut results = Vec::new();
    for line in text.lines() {
        // `[2026-12-01T19:47:09.476448 18382] Source file: ...`
        let Some((pid, message)) = line
            .split_once(' ')
            .and_then(|(_, rest)| rest.split_once("] "))
        else {
            continue;
        };
        if let Some(source) = message.strip_prefix("Source file: ") {
            source_of.insert(pid, source);
        } else if let Some(result) = message.strip_prefix("Result: ") {
            if matches!(
                result,
                "direct_cache_hit" | "preprocessed_cache_hit" | "cache_miss"
            ) {
                let source = source_of.get(pid).copied().unwrap_or("?");
                results.push((source.to_string(), result.to_string()));
            }
        }
    }
    results
}

/// The ccache results of the cmdline.c compiles: the original tree's (the user's source, an
/// absolute path) and the patched tree's (in the cache entry, which ccache names relative to
/// the base directory kpatch-rs gives it).
fn unit_results(log: &Path, source: &Path) -> (Vec<String>, Vec<String>) {
    let original = source.join("fs/proc/cmdline.c").display().to_string();
    let all = results(log);
    let of = |wanted: &dyn Fn(&str) -> bool| {
        all.iter()
            .filter(|(file, _)| wanted(file))
            .map(|(_, result)| result.clone())
            .collect::<Vec<_>>()
    };
    (
        of(&|file| file == original),
        of(&|file| file.ends_with("patched-source/fs/proc/cmdline.c")),
    )
}

fn stat(stats: &str, name: &str) -> u64 {
    stats
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

fn module(dir: &Path, output: &str) -> Vec<u8> {
    std::fs::read(dir.join(output).join("livepatch-cmdline.ko")).expect("read module")
}

#[test]
fn an_empty_kpatch_rs_cache_hits_ccache_and_the_wrapped_compiler_decides() {
    let Some(kernel) = kernel() else { return };
    if Command::new("ccache").arg("--version").output().is_err() {
        kpatch_support::skip_unless_ci("ccache is not installed (cargo xtask deps)");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let cc = ["--make-var", "CC=ccache gcc"];

    // Without ccache, in the usual cache, for the bytes to compare with.
    let plain = build(&kernel, dir, "plain", &[], "plain.log");
    assert!(plain.status.success(), "{}", stderr(&plain));

    // Through ccache, in the usual cache: ccache starts empty and learns the units.
    let first = build(&kernel, dir, "first", &cc, "first.log");
    assert!(first.status.success(), "{}", stderr(&first));
    let (original, patched) = unit_results(&dir.join("first.log"), &kernel.source);
    assert_eq!(
        original,
        ["cache_miss"],
        "the original tree's cmdline.o, first"
    );
    assert_eq!(
        patched,
        ["cache_miss"],
        "the patched tree's cmdline.o, first"
    );

    // Through ccache, in an empty kpatch-rs cache: the trees are prepared anew in other
    // directories, and every unit comes from ccache.
    ccache(dir, &["--zero-stats"]);
    let empty = dir.join("empty-cache");
    let empty_arg = empty.display().to_string();
    let mut extra = cc.to_vec();
    extra.extend(["--cache-dir", &empty_arg]);
    let second = build(&kernel, dir, "second", &extra, "second.log");
    assert!(second.status.success(), "{}", stderr(&second));
    let (original, patched) = unit_results(&dir.join("second.log"), &kernel.source);
    // A direct hit here, but a preprocessed one (a header newer than ccache trusts for its
    // direct mode) is as good a hit.
    let hit = |results: &[String]| results.len() == 1 && results[0].ends_with("_cache_hit");
    assert!(
        hit(&original),
        "the original tree's cmdline.o: {original:?}"
    );
    assert!(hit(&patched), "the patched tree's cmdline.o: {patched:?}");
    let stats = ccache(dir, &["--print-stats"]);
    let hits = stat(&stats, "direct_cache_hit") + stat(&stats, "preprocessed_cache_hit");
    eprintln!(
        "ccache in the empty kpatch-rs cache: {hits} hits, {} misses",
        stat(&stats, "cache_miss")
    );
    assert!(hits >= 2, "{stats}");

    // Same inputs, same bytes: with ccache or without, in one cache or another.
    let bytes = module(dir, "plain");
    assert!(module(dir, "first") == bytes, "ccache changed the module");
    assert!(
        module(dir, "second") == bytes,
        "a ccache hit changed the module"
    );

    // The compiler behind the wrapper is what counts. A script in its place that is gcc,
    // then one that says it is another gcc: the same CC, two cache entries (each build stops
    // on a release of another version, after taking its entry), and the other gcc refused
    // (exit 2) with its version, which ccache passed on, before any compiling.
    let fake = dir.join("bin/gcc");
    std::fs::create_dir_all(dir.join("bin")).expect("mkdir");
    let write_fake = |script: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&fake, script).expect("write fake compiler");
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    };
    let fake_cc = format!("CC=ccache {}", fake.display());
    let keys = dir.join("keys");
    let keys_arg = keys.display().to_string();
    let stop_after_key = [
        "--make-var",
        &fake_cc,
        "--cache-dir",
        &keys_arg,
        "--skip-compiler-check",
        "--kernel-release",
        "1.0",
    ];
    write_fake("#!/bin/sh\nexec gcc \"$@\"\n");
    let same = build(&kernel, dir, "keys", &stop_after_key, "keys.log");
    assert_eq!(same.status.code(), Some(1), "{}", stderr(&same));
    assert!(stderr(&same).contains("kernel release 1.0 is not of the source tree's version"));
    assert_eq!(entries(&keys).len(), 1);
    write_fake(
        "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'gcc (Other 99.1.0-1) 99.1.0'; exit 0; fi\n\
         exec gcc \"$@\"\n",
    );
    let other = build(&kernel, dir, "keys", &stop_after_key, "keys.log");
    assert_eq!(other.status.code(), Some(1), "{}", stderr(&other));
    assert_eq!(
        entries(&keys).len(),
        2,
        "another compiler, another cache entry"
    );

    let refused = build(
        &kernel,
        dir,
        "refused",
        &["--make-var", &fake_cc],
        "refused.log",
    );
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    let message = stderr(&refused);
    assert!(
        message.contains("gcc (Other 99.1.0-1) 99.1.0") && message.contains("(Debian 12.2.0"),
        "{message}"
    );
    assert!(!dir.join("refused/livepatch-cmdline.ko").exists());
}

/// The cache entries under a kpatch-rs cache directory (everything but `digests`).
fn entries(cache: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(cache)
        .map(|dir| dir.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    entries.retain(|path| path.file_name().is_some_and(|n| n != "digests"));
    entries.sort();
    entries
}
