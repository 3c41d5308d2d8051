//! `cargo xtask kernel`: the test kernel, built once from Debian's linux-source package and
//! cached outside the repository, keyed by what determines its bytes.
//!
//! Layout of one cached kernel, `${XDG_CACHE_HOME:-$HOME/.cache}/kpatch-rs/kernel/<key>/`:
//! `source/` (the pristine extracted tree, never written to: Kbuild needs a clean source tree
//! for every `O=` build made from it), `build/` (the `O=` directory, keeping `.config`,
//! `vmlinux`, `Module.symvers` and the `.cmd` files that `kpatch-rs build` reads later),
//! `build.log`, and `complete`, written last, so that an interrupted build is redone rather
//! than trusted. The key hashes the tarball's identity, the compiler version and the content
//! of every config fragment, so editing a fragment builds a new kernel beside the old one.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::process::run_logged;

/// Debian's kernel source package, as installed by `cargo xtask deps`.
pub const DEFAULT_TARBALL: &str = "/usr/src/linux-source-6.12.tar.xz";

/// The config fragment every test kernel starts from, relative to the project root.
pub const LIVEPATCH_FRAGMENT: &str = "fixtures/kernel-config/livepatch-qemu.config";

/// Bumped when the build recipe changes in a way the inputs below do not capture.
const RECIPE_VERSION: u32 = 1;

/// What to build: a source tarball and the fragments merged, in order, over `tinyconfig`.
#[derive(Debug, Clone)]
pub struct KernelSpec {
    pub tarball: PathBuf,
    pub fragments: Vec<PathBuf>,
}

impl KernelSpec {
    /// The stock test kernel: Debian's 6.12 source with the livepatch fragment.
    pub fn stock() -> KernelSpec {
        KernelSpec {
            tarball: PathBuf::from(DEFAULT_TARBALL),
            fragments: vec![crate::project_root().join(LIVEPATCH_FRAGMENT)],
        }
    }
}

/// Where a built kernel lives.
#[derive(Debug, Clone)]
pub struct KernelDirs {
    /// The cache entry: holds `source/`, `build/`, `build.log`.
    pub root: PathBuf,
    pub source: PathBuf,
    pub build: PathBuf,
    pub bzimage: PathBuf,
    pub log: PathBuf,
}

impl KernelDirs {
    fn at(root: PathBuf) -> KernelDirs {
        KernelDirs {
            source: root.join("source"),
            build: root.join("build"),
            bzimage: root.join("build/arch/x86/boot/bzImage"),
            log: root.join("build.log"),
            root,
        }
    }

    fn stamp(&self) -> PathBuf {
        self.root.join("complete")
    }

    fn owner(&self) -> PathBuf {
        self.root.join("building.pid")
    }
}

/// `cargo xtask kernel [--print-dirs] [--fragment FILE]...`
pub fn run(args: &[String]) -> Result<()> {
    let mut spec = KernelSpec::stock();
    let mut print_dirs = false;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--print-dirs" => print_dirs = true,
            "--fragment" => {
                let Some(file) = args.next() else {
                    bail!("--fragment needs a config fragment file");
                };
                spec.fragments.push(absolute(Path::new(file))?);
            }
            other => bail!(
                "unknown argument `{other}` to `cargo xtask kernel` \
                 (expected --print-dirs or --fragment FILE)"
            ),
        }
    }
    let sh = Shell::new()?;
    let dirs = ensure_kernel(&sh, &spec)?;
    if print_dirs {
        println!("source={}", dirs.source.display());
        println!("build={}", dirs.build.display());
        println!("bzimage={}", dirs.bzimage.display());
    } else {
        eprintln!("kernel ready: {}", dirs.bzimage.display());
    }
    Ok(())
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot resolve path {}", path.display()))
}

/// The root of the kernel cache.
pub fn cache_root() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(".cache"),
            None => {
                bail!("cannot locate the cache directory: neither XDG_CACHE_HOME nor HOME is set")
            }
        },
    };
    Ok(base.join("kpatch-rs/kernel"))
}

/// Returns the cached kernel for `spec`, building it first when the cache lacks it.
pub fn ensure_kernel(sh: &Shell, spec: &KernelSpec) -> Result<KernelDirs> {
    let material = key_material(sh, spec)?;
    let stem = tarball_stem(&spec.tarball);
    let dirs = KernelDirs::at(cache_root()?.join(format!("{stem}-{}", cache_key(&material))));
    if dirs.stamp().is_file() && dirs.bzimage.is_file() {
        return Ok(dirs);
    }
    wait_for_other_builder(&dirs)?;
    if dirs.stamp().is_file() && dirs.bzimage.is_file() {
        return Ok(dirs);
    }
    build(sh, spec, &dirs, &material)?;
    Ok(dirs)
}

/// A kernel built elsewhere with `make O=<build>`: Kbuild leaves a `source` link to the
/// source tree in the build directory. Lets the QEMU runner judge any kernel image.
pub fn existing_kernel(build: &Path) -> Result<KernelDirs> {
    let source = std::fs::canonicalize(build.join("source")).with_context(|| {
        format!(
            "cannot find the source tree of {}: no `source` link (was it built with O=?)",
            build.display()
        )
    })?;
    let bzimage = build.join("arch/x86/boot/bzImage");
    if !bzimage.is_file() {
        bail!(
            "cannot use kernel build {}: {} is missing",
            build.display(),
            bzimage.display()
        );
    }
    let root = build
        .parent()
        .map_or_else(|| build.to_path_buf(), Path::to_path_buf);
    Ok(KernelDirs {
        log: build.join("build.log"),
        root,
        source,
        build: build.to_path_buf(),
        bzimage,
    })
}

/// Everything the cache key covers, as text; also written into the stamp file so that a
/// reader can see what a cache entry was built from.
fn key_material(sh: &Shell, spec: &KernelSpec) -> Result<String> {
    let meta = std::fs::metadata(&spec.tarball).with_context(|| {
        format!(
            "cannot read kernel source tarball {}; run `cargo xtask deps` to install linux-source-6.12",
            spec.tarball.display()
        )
    })?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let compiler = cmd!(sh, "gcc --version")
        .read()
        .context("cannot run gcc --version; run `cargo xtask deps`")?;
    let compiler = compiler.lines().next().unwrap_or_default().to_string();
    let mut fragments = Vec::new();
    for fragment in &spec.fragments {
        let text = std::fs::read_to_string(fragment)
            .with_context(|| format!("cannot read config fragment {}", fragment.display()))?;
        let name = fragment
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        fragments.push((name, text));
    }
    Ok(describe_inputs(
        &format!("{} {} {mtime}", spec.tarball.display(), meta.len()),
        &compiler,
        &fragments,
    ))
}

/// The key material in a fixed textual form: one line per scalar input, then each fragment's
/// name and full content in merge order (order matters: a later fragment overrides).
fn describe_inputs(tarball: &str, compiler: &str, fragments: &[(String, String)]) -> String {
    let mut text = format!("recipe {RECIPE_VERSION}\ntarball {tarball}\ncompiler {compiler}\n");
    for (name, content) in fragments {
        let _ = writeln!(text, "fragment {name} {} bytes", content.len());
        text.push_str(content);
        text.push('\n');
    }
    text
}

/// FNV-1a, 64 bits, as 16 hex digits: stable across Rust versions, unlike `DefaultHasher`.
fn cache_key(material: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in material.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// `linux-source-6.12` for `/usr/src/linux-source-6.12.tar.xz`.
fn tarball_stem(tarball: &Path) -> String {
    let name = tarball
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "linux".to_string());
    let stem = name.split(".tar").next().unwrap_or(&name);
    stem.to_string()
}

/// Another xtask process may be building the same entry (two helpers, or CI and a developer);
/// wait for it rather than delete its work. A recorded owner that no longer runs was
/// interrupted, and its half-built entry is rebuilt.
fn wait_for_other_builder(dirs: &KernelDirs) -> Result<()> {
    let mut told = false;
    loop {
        let Ok(pid) = std::fs::read_to_string(dirs.owner()) else {
            return Ok(());
        };
        let pid = pid.trim();
        let alive = !pid.is_empty()
            && pid != std::process::id().to_string()
            && Path::new("/proc").join(pid).exists();
        if !alive {
            return Ok(());
        }
        if !told {
            eprintln!(
                "kernel: waiting for process {pid}, which is building {}",
                dirs.root.display()
            );
            told = true;
        }
        std::thread::sleep(Duration::from_secs(2));
        if dirs.stamp().is_file() {
            return Ok(());
        }
    }
}

fn build(sh: &Shell, spec: &KernelSpec, dirs: &KernelDirs, material: &str) -> Result<()> {
    if dirs.root.exists() {
        eprintln!("kernel: removing incomplete build {}", dirs.root.display());
        std::fs::remove_dir_all(&dirs.root)
            .with_context(|| format!("cannot remove {}", dirs.root.display()))?;
    }
    std::fs::create_dir_all(&dirs.root)
        .with_context(|| format!("cannot create {}", dirs.root.display()))?;
    std::fs::write(dirs.owner(), std::process::id().to_string())
        .with_context(|| format!("cannot write {}", dirs.owner().display()))?;
    eprintln!("kernel: building into {}", dirs.root.display());

    extract(spec, dirs)?;
    configure(sh, spec, dirs)?;

    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    run_logged(
        make(dirs)
            .arg(format!("-j{jobs}"))
            .args(["bzImage", "modules"]),
        &dirs.log,
        "kernel: make bzImage modules",
    )?;
    if !dirs.bzimage.is_file() {
        bail!(
            "kernel build finished but {} is missing",
            dirs.bzimage.display()
        );
    }
    std::fs::write(dirs.stamp(), material)
        .with_context(|| format!("cannot write {}", dirs.stamp().display()))?;
    let _ = std::fs::remove_file(dirs.owner());
    Ok(())
}

fn make(dirs: &KernelDirs) -> Command {
    let mut command = Command::new("make");
    command
        .arg("-C")
        .arg(&dirs.source)
        .arg(format!("O={}", dirs.build.display()));
    command
}

/// Extracts the tarball's single top-level directory as `source/`.
fn extract(spec: &KernelSpec, dirs: &KernelDirs) -> Result<()> {
    let unpack = dirs.root.join("unpack");
    std::fs::create_dir_all(&unpack)?;
    run_logged(
        Command::new("tar")
            .arg("-xf")
            .arg(&spec.tarball)
            .arg("-C")
            .arg(&unpack),
        &dirs.log,
        "kernel: extracting source",
    )?;
    let mut entries = std::fs::read_dir(&unpack)
        .with_context(|| format!("cannot list {}", unpack.display()))?
        .collect::<std::io::Result<Vec<_>>>()?;
    let [top] = entries.as_mut_slice() else {
        bail!(
            "cannot use {}: expected one top-level directory, found {}",
            spec.tarball.display(),
            entries.len()
        );
    };
    std::fs::rename(top.path(), &dirs.source).with_context(|| {
        format!(
            "cannot move the extracted tree to {}",
            dirs.source.display()
        )
    })?;
    std::fs::remove_dir(&unpack)?;
    Ok(())
}

/// `tinyconfig`, then the fragments merged in order, then `olddefconfig`; then checks that
/// every value the fragments ask for survived, because Kconfig silently drops a value whose
/// dependencies are unmet and the kernel would quietly lack what a test needs.
fn configure(sh: &Shell, spec: &KernelSpec, dirs: &KernelDirs) -> Result<()> {
    std::fs::create_dir_all(&dirs.build)?;
    run_logged(
        make(dirs).arg("tinyconfig"),
        &dirs.log,
        "kernel: make tinyconfig",
    )?;
    // merge_config.sh writes its temporary files into the current directory, so it runs in
    // the build directory to keep the source tree pristine.
    let script = dirs.source.join("scripts/kconfig/merge_config.sh");
    let mut merge = Command::new("sh");
    merge
        .current_dir(&dirs.build)
        .arg(&script)
        .arg("-m")
        .arg(".config")
        .args(&spec.fragments);
    run_logged(&mut merge, &dirs.log, "kernel: merging config fragments")?;
    run_logged(
        make(dirs).arg("olddefconfig"),
        &dirs.log,
        "kernel: make olddefconfig",
    )?;

    let config = sh
        .read_file(dirs.build.join(".config"))
        .context("cannot read the generated .config")?;
    let mut requested = Vec::new();
    for fragment in &spec.fragments {
        let text = sh.read_file(fragment)?;
        requested.extend(fragment_values(&text).into_iter().map(|(name, value)| {
            (
                fragment.display().to_string(),
                name.to_string(),
                value.to_string(),
            )
        }));
    }
    let config_values = fragment_values(&config);
    let mut missing = String::new();
    for (fragment, name, value) in &requested {
        let actual = config_values
            .iter()
            .find(|(n, _)| n == name)
            .map_or("n", |(_, v)| v);
        if actual != value {
            let _ = writeln!(
                missing,
                "  {name}={value} (from {fragment}) became {name}={actual}"
            );
        }
    }
    if !missing.is_empty() {
        bail!(
            "cannot configure the kernel as asked: Kconfig dropped values whose dependencies \
             are unmet; add the dependencies to the fragment:\n{missing}"
        );
    }
    Ok(())
}

/// The `CONFIG_NAME=value` and `# CONFIG_NAME is not set` lines of a config file, as
/// (name, value) pairs with `n` for the latter.
fn fragment_values(text: &str) -> Vec<(&str, &str)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("# ") {
                let name = rest.strip_suffix(" is not set")?;
                return name.starts_with("CONFIG_").then_some((name, "n"));
            }
            let (name, value) = line.split_once('=')?;
            name.starts_with("CONFIG_").then_some((name, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tarball: &str, compiler: &str, fragments: &[(&str, &str)]) -> String {
        let fragments: Vec<(String, String)> = fragments
            .iter()
            .map(|(n, c)| (n.to_string(), c.to_string()))
            .collect();
        cache_key(&describe_inputs(tarball, compiler, &fragments))
    }

    #[test]
    fn cache_key_changes_with_each_input() {
        let base = key("t 1 2", "gcc 12", &[("a.config", "CONFIG_X=y\n")]);
        assert_eq!(
            base,
            key("t 1 2", "gcc 12", &[("a.config", "CONFIG_X=y\n")])
        );
        assert_eq!(base.len(), 16);
        let variants = [
            key("t 1 3", "gcc 12", &[("a.config", "CONFIG_X=y\n")]),
            key("t 1 2", "gcc 13", &[("a.config", "CONFIG_X=y\n")]),
            key("t 1 2", "gcc 12", &[("a.config", "CONFIG_X=m\n")]),
            key("t 1 2", "gcc 12", &[("b.config", "CONFIG_X=y\n")]),
            key(
                "t 1 2",
                "gcc 12",
                &[
                    ("a.config", "CONFIG_X=y\n"),
                    ("r.config", "CONFIG_RUST=y\n"),
                ],
            ),
        ];
        for variant in &variants {
            assert_ne!(&base, variant);
        }
    }

    #[test]
    fn cache_key_depends_on_fragment_order() {
        let ab = key("t", "c", &[("a", "CONFIG_A=y"), ("b", "CONFIG_A=n")]);
        let ba = key("t", "c", &[("b", "CONFIG_A=n"), ("a", "CONFIG_A=y")]);
        assert_ne!(ab, ba);
    }

    #[test]
    fn fnv1a_matches_reference_vectors() {
        // Published FNV-1a 64-bit test vectors.
        assert_eq!(cache_key(""), "cbf29ce484222325");
        assert_eq!(cache_key("a"), "af63dc4c8601ec8c");
        assert_eq!(cache_key("foobar"), "85944171f73967e8");
    }

    fn check_values(text: &str, expected: &[(&str, &str)]) {
        assert_eq!(fragment_values(text), expected);
    }

    #[test]
    fn fragment_values_reads_set_and_unset_lines() {
        check_values("CONFIG_A=y\n", &[("CONFIG_A", "y")]);
        check_values("# CONFIG_B is not set\n", &[("CONFIG_B", "n")]);
        check_values("CONFIG_S=\"a=b\"\n", &[("CONFIG_S", "\"a=b\"")]);
        check_values("# a comment\n\n# Another one: x=y\n", &[]);
        check_values("FOO=1\n", &[]);
        check_values(
            "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=m",
            &[("CONFIG_A", "y"), ("CONFIG_B", "n"), ("CONFIG_C", "m")],
        );
    }

    #[test]
    fn project_fragment_asks_for_what_the_selftests_need() {
        let path = crate::project_root().join(LIVEPATCH_FRAGMENT);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let values = fragment_values(&text);
        for wanted in [
            ("CONFIG_LIVEPATCH", "y"),
            ("CONFIG_MODULES", "y"),
            ("CONFIG_MODULE_UNLOAD", "y"),
            ("CONFIG_DYNAMIC_DEBUG", "y"),
            ("CONFIG_DEBUG_FS", "y"),
            ("CONFIG_PROC_SYSCTL", "y"),
            ("CONFIG_SERIAL_8250_CONSOLE", "y"),
        ] {
            assert!(
                values.contains(&wanted),
                "{} lacks {wanted:?}",
                path.display()
            );
        }
    }

    #[test]
    fn tarball_stem_drops_the_compression_suffix() {
        assert_eq!(
            tarball_stem(Path::new("/usr/src/linux-source-6.12.tar.xz")),
            "linux-source-6.12"
        );
        assert_eq!(tarball_stem(Path::new("linux-6.13.tar.gz")), "linux-6.13");
    }
}
