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
//!
//! The Rust-core kernel (`--core rust`) is the same recipe plus `rust.config`, with
//! `core-patch/kernel/livepatch-rust-core.patch` applied to its own extracted `source/` and
//! core-patch's Rust files copied beside `kernel/livepatch/core.c` (see [`install_rust_core`]);
//! its key also covers those files and the Rust toolchain. It is built with Debian's rustc
//! (`/usr/bin/rustc`) and the bindgen that `cargo xtask deps` installs, never with the rustup
//! toolchain that builds kpatch-rs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::process::run_logged;

/// Debian's kernel source package, as installed by `cargo xtask deps`.
pub const DEFAULT_TARBALL: &str = "/usr/src/linux-source-6.12.tar.xz";

/// The kernel series a test kernel can be built from, each from Debian's `linux-source`
/// package of that series (`cargo xtask deps` installs both): 6.12, and 6.1, Debian 12's
/// default kernel.
pub const SERIES: &[(&str, &str)] = &[
    ("6.12", DEFAULT_TARBALL),
    ("6.1", "/usr/src/linux-source-6.1.tar.xz"),
];

/// The source tarball of a kernel series.
pub fn series_tarball(series: &str) -> Result<PathBuf> {
    SERIES
        .iter()
        .find(|(name, _)| *name == series)
        .map(|(_, tarball)| PathBuf::from(tarball))
        .with_context(|| {
            let known: Vec<&str> = SERIES.iter().map(|(name, _)| *name).collect();
            format!("--kernel takes {}, not `{series}`", known.join(" or "))
        })
}

/// The config fragment every test kernel starts from, relative to the project root.
pub const LIVEPATCH_FRAGMENT: &str = "fixtures/kernel-config/livepatch-qemu.config";

/// The fragment that adds `CONFIG_RUST`, merged after [`LIVEPATCH_FRAGMENT`] for the Rust core.
pub const RUST_FRAGMENT: &str = "fixtures/kernel-config/rust.config";

/// Merged after [`LIVEPATCH_FRAGMENT`] for the kernel that enforces module signatures and
/// trusts the test key (`fixtures/signing/`).
pub const MODULE_SIGNING_FRAGMENT: &str = "fixtures/kernel-config/module-signing.config";

/// Merged after [`RUST_FRAGMENT`] for the race experiment's pre-fix Rust core.
pub const RUST_PRE_FIX_FRAGMENT: &str = "fixtures/kernel-config/rust-pre-fix.config";

/// The project's own test modules, put into every test kernel's tree so that `kpatch-rs build`
/// can patch them like any module of the kernel: (project path, path in the tree). Kbuild
/// builds them as modules under `samples/` (`CONFIG_SAMPLES`).
pub const TEST_MODULES: &[(&str, &str)] = &[
    (
        "fixtures/race-stress/race_target.c",
        "samples/kpatch-rs/race_target.c",
    ),
    (
        "fixtures/test-modules/keyed_target.c",
        "samples/kpatch-rs/keyed_target.c",
    ),
];

/// The kernel patch that makes `klp_module_coming()`/`klp_module_going()` call the Rust core.
pub const RUST_CORE_PATCH: &str = "core-patch/kernel/livepatch-rust-core.patch";

/// The Rust files that go beside `kernel/livepatch/core.c`: (project path, name in the tree).
/// The algorithm is core-patch's own source, copied unchanged: one text for model and kernel.
pub const RUST_CORE_FILES: &[(&str, &str)] = &[
    ("core-patch/kernel/klp_core_rust.rs", "klp_core_rust.rs"),
    ("core-patch/src/module_notifier.rs", "module_notifier.rs"),
];

/// The symbol that shows, in `System.map` or `/proc/kallsyms`, that the Rust core is built in.
pub const RUST_CORE_SYMBOL: &str = "klp_rust_module_coming";

/// Debian's rustc (package rustc-web), which the kernel's Rust code is built with.
pub const KERNEL_RUSTC: &str = "/usr/bin/rustc";

/// Bumped when the build recipe changes in a way the inputs below do not capture.
const RECIPE_VERSION: u32 = 1;

/// Which livepatch core runs `klp_module_coming()`/`klp_module_going()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Core {
    /// The kernel's own C bodies.
    C,
    /// core-patch's algorithm, through `core-patch/kernel/`.
    Rust,
    /// The same with the binding rule from before the fix, for the race experiment only.
    RustPreFix,
}

impl Core {
    pub fn parse(text: &str) -> Result<Core> {
        match text {
            "c" | "stock" => Ok(Core::C),
            "rust" => Ok(Core::Rust),
            "rust-pre-fix" => Ok(Core::RustPreFix),
            other => bail!("--core takes `c`, `rust` or `rust-pre-fix`, not `{other}`"),
        }
    }

    /// Whether the kernel carries core-patch's Rust core (and so `CONFIG_RUST`).
    pub fn is_rust(self) -> bool {
        matches!(self, Core::Rust | Core::RustPreFix)
    }

    /// The name used in reports and cache listings.
    pub fn name(self) -> &'static str {
        match self {
            Core::C => "stock",
            Core::Rust => "rust-core",
            Core::RustPreFix => "rust-core-pre-fix",
        }
    }
}

/// What to build: a source tarball and the fragments merged, in order, over `tinyconfig`.
#[derive(Debug, Clone)]
pub struct KernelSpec {
    pub tarball: PathBuf,
    pub fragments: Vec<PathBuf>,
    pub core: Core,
}

impl KernelSpec {
    /// The stock test kernel: Debian's 6.12 source with the livepatch fragment.
    pub fn stock() -> KernelSpec {
        KernelSpec {
            tarball: PathBuf::from(DEFAULT_TARBALL),
            fragments: vec![crate::project_root().join(LIVEPATCH_FRAGMENT)],
            core: Core::C,
        }
    }

    /// The stock test kernel with module signatures enforced and the test key trusted: what
    /// `cargo xtask qemu-test --fragment fixtures/kernel-config/module-signing.config` builds.
    pub fn module_signing() -> KernelSpec {
        let mut spec = KernelSpec::stock();
        spec.fragments
            .push(crate::project_root().join(MODULE_SIGNING_FRAGMENT));
        spec
    }

    /// The test kernel whose module coming/going hooks run core-patch's Rust algorithm.
    pub fn rust_core() -> KernelSpec {
        let root = crate::project_root();
        KernelSpec {
            tarball: PathBuf::from(DEFAULT_TARBALL),
            fragments: vec![root.join(LIVEPATCH_FRAGMENT), root.join(RUST_FRAGMENT)],
            core: Core::Rust,
        }
    }

    /// Builds `core`'s kernel: the stock one, the Rust-core one, or the pre-fix experiment.
    pub fn for_core(core: Core) -> KernelSpec {
        match core {
            Core::C => KernelSpec::stock(),
            Core::Rust => KernelSpec::rust_core(),
            Core::RustPreFix => {
                let mut spec = KernelSpec::rust_core();
                spec.fragments
                    .push(crate::project_root().join(RUST_PRE_FIX_FRAGMENT));
                spec.core = Core::RustPreFix;
                spec
            }
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
    /// Variables every `make` against this kernel needs: the Rust toolchain for a kernel
    /// with `CONFIG_RUST`, nothing otherwise.
    pub make_vars: Vec<String>,
}

impl KernelDirs {
    fn at(root: PathBuf) -> KernelDirs {
        KernelDirs {
            source: root.join("source"),
            build: root.join("build"),
            bzimage: root.join("build/arch/x86/boot/bzImage"),
            log: root.join("build.log"),
            root,
            make_vars: Vec::new(),
        }
    }

    /// Whether `build/System.map` lists the Rust core's entry point: the kernel under test
    /// must then show it running (see `selftests.rs`).
    pub fn has_rust_core(&self) -> bool {
        std::fs::read_to_string(self.build.join("System.map")).is_ok_and(|map| {
            map.lines()
                .any(|line| line.split_whitespace().nth(2) == Some(RUST_CORE_SYMBOL))
        })
    }

    fn stamp(&self) -> PathBuf {
        self.root.join("complete")
    }

    fn owner(&self) -> PathBuf {
        self.root.join("building.pid")
    }
}

/// The test kernel an xtask command runs on, from its `--core`, `--fragment` and
/// `--kernel-build` options.
#[derive(Debug, Clone)]
pub struct KernelChoice {
    pub core: Core,
    /// The kernel series (`--kernel 6.12|6.1`).
    pub series: String,
    pub fragments: Vec<PathBuf>,
    /// An existing build directory to use instead of the cached kernel.
    pub kernel_build: Option<PathBuf>,
}

impl Default for KernelChoice {
    fn default() -> Self {
        KernelChoice {
            core: Core::C,
            series: "6.12".to_string(),
            fragments: Vec::new(),
            kernel_build: None,
        }
    }
}

impl KernelChoice {
    /// How the options read in usage messages.
    pub const USAGE: &'static str =
        "--kernel 6.12|6.1, --core c|rust|rust-pre-fix, --fragment FILE, --kernel-build DIR";

    /// Takes `arg` if it is one of the kernel options, reading its value with `value`;
    /// returns whether it was.
    pub fn take(
        &mut self,
        arg: &str,
        mut value: impl FnMut(&str) -> Result<String>,
    ) -> Result<bool> {
        match arg {
            "--core" => self.core = Core::parse(&value("c, rust or rust-pre-fix")?)?,
            "--kernel" => {
                let series = value("a kernel series (6.12 or 6.1)")?;
                series_tarball(&series)?;
                self.series = series;
            }
            "--fragment" => self
                .fragments
                .push(absolute(Path::new(&value("a config fragment file")?))?),
            "--kernel-build" => {
                self.kernel_build = Some(absolute(Path::new(&value("a kernel build directory")?))?)
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The kernel's spec: the core's, from the series' source, with the extra fragments.
    pub fn spec(&self) -> KernelSpec {
        let mut spec = KernelSpec::for_core(self.core);
        if let Ok(tarball) = series_tarball(&self.series) {
            spec.tarball = tarball;
        }
        spec.fragments.extend(self.fragments.iter().cloned());
        spec
    }

    /// The kernel: the given build directory, or the cached kernel of the spec, built if
    /// needed.
    pub fn kernel(&self, sh: &Shell) -> Result<KernelDirs> {
        match &self.kernel_build {
            Some(build) => existing_kernel(build),
            None => ensure_kernel(sh, &self.spec()),
        }
    }
}

/// `cargo xtask kernel [--print-dirs] [--core c|rust|rust-pre-fix] [--fragment FILE]...`
pub fn run(args: &[String]) -> Result<()> {
    let mut choice = KernelChoice::default();
    let mut print_dirs = false;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let value = |what: &str| {
            args.next()
                .cloned()
                .with_context(|| format!("{arg} needs {what}"))
        };
        if choice.take(arg, value)? {
            continue;
        }
        match arg.as_str() {
            "--print-dirs" => print_dirs = true,
            other => bail!(
                "unknown argument `{other}` to `cargo xtask kernel` \
                 (expected --print-dirs, --kernel 6.12|6.1, --core c|rust|rust-pre-fix or \
                 --fragment FILE)"
            ),
        }
    }
    if choice.kernel_build.is_some() {
        bail!("`cargo xtask kernel` builds the cached kernel; --kernel-build names one built elsewhere");
    }
    let sh = Shell::new()?;
    let dirs = choice.kernel(&sh)?;
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
    crate::cache_dir("kernel")
}

/// Returns the cached kernel for `spec`, building it first when the cache lacks it.
pub fn ensure_kernel(sh: &Shell, spec: &KernelSpec) -> Result<KernelDirs> {
    let material = key_material(sh, spec)?;
    let stem = tarball_stem(&spec.tarball);
    let mut dirs = KernelDirs::at(cache_root()?.join(format!("{stem}-{}", cache_key(&material))));
    if spec.core.is_rust() {
        dirs.make_vars = rust_make_vars()?;
    }
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
    let config = std::fs::read_to_string(build.join(".config")).unwrap_or_default();
    let make_vars = if fragment_values(&config).contains(&("CONFIG_RUST", "y")) {
        rust_make_vars()?
    } else {
        Vec::new()
    };
    Ok(KernelDirs {
        log: build.join("build.log"),
        root,
        source,
        build: build.to_path_buf(),
        bzimage,
        make_vars,
    })
}

/// Everything the cache key covers, as text; also written into the stamp file so that a
/// reader can see what a cache entry was built from.
fn key_material(sh: &Shell, spec: &KernelSpec) -> Result<String> {
    let meta = std::fs::metadata(&spec.tarball).with_context(|| {
        format!(
            "cannot read kernel source tarball {}; run `cargo xtask deps` to install \
             linux-source-6.12 and linux-source-6.1",
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
    let mut material = describe_inputs(
        &format!("{} {} {mtime}", spec.tarball.display(), meta.len()),
        &compiler,
        &fragments,
    );
    material.push_str(&test_modules_material()?);
    material.push_str(&project_files_material(
        &crate::project_root(),
        &spec.fragments,
    )?);
    if spec.core.is_rust() {
        material.push_str(&rust_core_material()?);
    }
    Ok(material)
}

/// The test modules' part of the key: their sources.
fn test_modules_material() -> Result<String> {
    let root = crate::project_root();
    let mut text = String::new();
    for (from, to) in TEST_MODULES {
        let content = std::fs::read_to_string(root.join(from))
            .with_context(|| format!("cannot read {from}"))?;
        let _ = writeln!(text, "test module {from} as {to}, {} bytes", content.len());
        text.push_str(&content);
        text.push('\n');
    }
    Ok(text)
}

/// The config options whose value can be a file the kernel build reads: a relative path in a
/// fragment names a file of the project, which [`install_project_files`] copies to the same
/// path under the build directory, where Kbuild (running there) finds it. A PKCS#11 URI is
/// no file.
const FILE_OPTIONS: &[&str] = &["CONFIG_MODULE_SIG_KEY"];

/// The project files the fragments name through [`FILE_OPTIONS`], as paths relative to the
/// project root (`fixtures/signing/test-key.pem`).
fn project_files(fragments: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for fragment in fragments {
        let text = std::fs::read_to_string(fragment)
            .with_context(|| format!("cannot read config fragment {}", fragment.display()))?;
        for (name, value) in fragment_values(&text) {
            if !FILE_OPTIONS.contains(&name) {
                continue;
            }
            let value = value.trim_matches('"');
            if value.is_empty() || value.starts_with("pkcs11:") || value.starts_with('/') {
                continue;
            }
            let path = PathBuf::from(value);
            if path.components().any(|c| c.as_os_str() == "..") {
                bail!(
                    "{}: {name}={value} must be a file inside the project, without `..`",
                    fragment.display()
                );
            }
            files.push(path);
        }
    }
    Ok(files)
}

/// The named project files' part of the key: their bytes, so that a new test key builds a
/// new kernel that trusts it.
fn project_files_material(root: &Path, fragments: &[PathBuf]) -> Result<String> {
    let mut text = String::new();
    for file in project_files(fragments)? {
        let bytes = std::fs::read(root.join(&file))
            .with_context(|| format!("cannot read {}, which a fragment names", file.display()))?;
        let _ = writeln!(
            text,
            "project file {} {} bytes {}",
            file.display(),
            bytes.len(),
            kpatch_support::Fnv1a::new().write(&bytes).hex()
        );
    }
    Ok(text)
}

/// Copies the project files (under `root`) the fragments name to the same paths under `build`.
fn install_project_files(root: &Path, fragments: &[PathBuf], build: &Path) -> Result<()> {
    for file in project_files(fragments)? {
        let to = build.join(&file);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::copy(root.join(&file), &to)
            .with_context(|| format!("cannot copy {} to {}", file.display(), to.display()))?;
    }
    Ok(())
}

/// Puts [`TEST_MODULES`] into the extracted tree `source` (this cache entry's own copy): each
/// file in its directory with a Makefile that builds it as a module, and the directory added
/// to its parent's Makefile.
pub fn install_test_modules(source: &Path) -> Result<()> {
    let root = crate::project_root();
    let mut dirs: Vec<(&Path, Vec<String>)> = Vec::new();
    for (from, to) in TEST_MODULES {
        let to = Path::new(to);
        let (Some(dir), Some(stem)) = (to.parent(), to.file_stem()) else {
            bail!("test module path {} has no directory", to.display());
        };
        std::fs::create_dir_all(source.join(dir))
            .with_context(|| format!("cannot create {}", source.join(dir).display()))?;
        std::fs::copy(root.join(from), source.join(to))
            .with_context(|| format!("cannot copy {from} into the kernel tree"))?;
        let object = format!("{}.o", stem.to_string_lossy());
        match dirs.iter_mut().find(|(d, _)| *d == dir) {
            Some((_, objects)) => objects.push(object),
            None => dirs.push((dir, vec![object])),
        }
    }
    for (dir, objects) in dirs {
        let makefile = source.join(dir).join("Makefile");
        std::fs::write(
            &makefile,
            format!(
                "# SPDX-License-Identifier: GPL-2.0\n# kpatch-rs test modules.\nobj-m += {}\n",
                objects.join(" ")
            ),
        )
        .with_context(|| format!("cannot write {}", makefile.display()))?;
        let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
            bail!("test module directory {} has no parent", dir.display());
        };
        let parent_makefile = source.join(parent).join("Makefile");
        let mut text = std::fs::read_to_string(&parent_makefile)
            .with_context(|| format!("cannot read {}", parent_makefile.display()))?;
        let _ = writeln!(text, "obj-y += {}/", name.to_string_lossy());
        std::fs::write(&parent_makefile, text)
            .with_context(|| format!("cannot write {}", parent_makefile.display()))?;
    }
    Ok(())
}

/// The Rust core's part of the key: the toolchain and every file that goes into the tree.
fn rust_core_material() -> Result<String> {
    let vars = rust_make_vars()?;
    let mut text = String::from("core rust\n");
    let rustc = Command::new(KERNEL_RUSTC)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {KERNEL_RUSTC}; run `cargo xtask deps`"))?;
    let _ = writeln!(
        text,
        "rustc {}",
        String::from_utf8_lossy(&rustc.stdout).trim()
    );
    let bindgen = bindgen_path()?;
    let version = Command::new(&bindgen)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {}", bindgen.display()))?;
    let _ = writeln!(
        text,
        "bindgen {}",
        String::from_utf8_lossy(&version.stdout).trim()
    );
    let _ = writeln!(text, "make {}", vars.join(" "));
    let root = crate::project_root();
    let mut files = vec![RUST_CORE_PATCH];
    files.extend(RUST_CORE_FILES.iter().map(|(from, _)| *from));
    for file in files {
        let content = std::fs::read_to_string(root.join(file))
            .with_context(|| format!("cannot read {file}"))?;
        let _ = writeln!(text, "file {file} {} bytes", content.len());
        text.push_str(&content);
        text.push('\n');
    }
    Ok(text)
}

/// bindgen from `cargo install bindgen-cli` (see `cargo xtask deps`).
pub fn bindgen_path() -> Result<PathBuf> {
    let Some(home) = std::env::var_os("HOME") else {
        bail!("cannot locate bindgen: HOME is not set");
    };
    let path = PathBuf::from(home).join(".cargo/bin/bindgen");
    if !path.is_file() {
        bail!(
            "cannot find {}: the Rust-core kernel needs bindgen-cli; run `cargo xtask deps`",
            path.display()
        );
    }
    Ok(path)
}

/// The toolchain a kernel with `CONFIG_RUST` is built with, as `make` variables.
fn rust_make_vars() -> Result<Vec<String>> {
    if !Path::new(KERNEL_RUSTC).is_file() {
        bail!(
            "cannot find {KERNEL_RUSTC}: the Rust-core kernel needs Debian's rustc-web; \
             run `cargo xtask deps`"
        );
    }
    let bindgen = bindgen_path()?;
    Ok(vec![
        format!("RUSTC={KERNEL_RUSTC}"),
        format!("HOSTRUSTC={KERNEL_RUSTC}"),
        format!("BINDGEN={}", bindgen.display()),
    ])
}

/// Puts the Rust core into the extracted tree `source`: applies the kernel patch and copies
/// core-patch's Rust files beside `kernel/livepatch/core.c`. The tree is this cache entry's
/// own copy; the stock kernel's tree is never touched.
pub fn install_rust_core(source: &Path, log: &Path) -> Result<()> {
    let root = crate::project_root();
    let patch = root.join(RUST_CORE_PATCH);
    run_logged(
        Command::new("patch")
            .arg("-p1")
            .arg("--forward")
            .arg("--batch")
            .arg("-d")
            .arg(source)
            .arg("-i")
            .arg(&patch),
        log,
        "kernel: applying livepatch-rust-core.patch",
    )?;
    copy_rust_core_files(&source.join("kernel/livepatch"))
}

/// Copies [`RUST_CORE_FILES`] into `dir` (a kernel's `kernel/livepatch/`, or a test's scratch
/// directory laid out the same way).
pub fn copy_rust_core_files(dir: &Path) -> Result<()> {
    let root = crate::project_root();
    for (from, to) in RUST_CORE_FILES {
        std::fs::copy(root.join(from), dir.join(to))
            .with_context(|| format!("cannot copy {from} to {}", dir.join(to).display()))?;
    }
    Ok(())
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

/// The cache key of `material`, as 16 hex digits.
fn cache_key(material: &str) -> String {
    kpatch_support::Fnv1a::new()
        .write(material.as_bytes())
        .hex()
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
    install_test_modules(&dirs.source)?;
    if spec.core.is_rust() {
        install_rust_core(&dirs.source, &dirs.log)?;
        // Names the toolchain problem before Kconfig would quietly drop CONFIG_RUST.
        run_logged(
            make(dirs).arg("rustavailable"),
            &dirs.log,
            "kernel: make rustavailable",
        )?;
    }
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
    if spec.core.is_rust() && !dirs.has_rust_core() {
        bail!(
            "kernel build finished but {} lacks {RUST_CORE_SYMBOL}: the Rust core was not \
             built in; see {}",
            dirs.build.join("System.map").display(),
            dirs.log.display()
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
        .arg(format!("O={}", dirs.build.display()))
        .args(&dirs.make_vars);
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
    install_project_files(&crate::project_root(), &spec.fragments, &dirs.build)?;
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

    fn project_file(path: &str) -> String {
        std::fs::read_to_string(crate::project_root().join(path)).unwrap_or_default()
    }

    /// `name(` after `prefix` on each line that `keep` accepts.
    fn called_names(text: &str, keep: impl Fn(&str) -> bool, prefix: &str) -> Vec<String> {
        let mut names: Vec<String> = text
            .lines()
            .filter(|line| keep(line))
            .filter_map(|line| {
                let start = line.find(prefix)?;
                let rest = &line[start..];
                let end = rest.find('(')?;
                Some(rest[..end].to_string())
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    #[test]
    fn rust_host_declares_exactly_the_helpers_the_patch_defines() {
        let rust = project_file("core-patch/kernel/klp_core_rust.rs");
        let patch = project_file(RUST_CORE_PATCH);
        let declared = called_names(
            &rust,
            |l| l.trim_start().starts_with("fn klp_rs_"),
            "klp_rs_",
        );
        // Definitions in core.c: added lines that start a function at column 0.
        let defined = called_names(
            &patch,
            |l| {
                // Column 0 of an added line, not a comment, not a prototype.
                let code = l.strip_prefix('+').unwrap_or("");
                l.starts_with('+')
                    && code.starts_with(|c: char| c.is_ascii_alphabetic())
                    && !code.ends_with(';')
            },
            "klp_rs_",
        );
        assert!(declared.len() > 20, "{declared:?}");
        assert_eq!(declared, defined);
        // And C declares the Rust entry points that Rust exports.
        let exported = called_names(&rust, |l| l.starts_with("pub extern \"C\" fn"), "klp_rust_");
        let called = called_names(
            &patch,
            |l| l.starts_with('+') && l.ends_with(");"),
            "klp_rust_",
        );
        assert_eq!(
            exported,
            [
                "klp_rust_binds_on_enable",
                "klp_rust_core_announce",
                "klp_rust_module_coming",
                "klp_rust_module_going"
            ]
        );
        assert_eq!(exported, called);
        assert!(rust.contains(crate::selftests::RUST_CORE_BOOT_LINE));
        assert!(rust.contains(&format!("fn {RUST_CORE_SYMBOL}(")));
    }

    /// The kernel host and the algorithm, laid out as in `kernel/livepatch/`, compiled the way
    /// Kbuild compiles a built-in Rust object (its lint flags, `no_std` added from outside),
    /// with every warning an error: a change to the algorithm or its trait that breaks the
    /// kernel build fails here, without building a kernel.
    #[test]
    fn rust_host_compiles_as_kbuild_compiles_it() {
        let target = "x86_64-unknown-none";
        let installed = Command::new("rustup")
            .args(["target", "list", "--installed"])
            .output()
            .is_ok_and(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l == target)
            });
        if !installed {
            kpatch_support::skip_unless_ci(&format!(
                "the {target} target is not installed (cargo xtask deps)"
            ));
            return;
        }
        let dir = crate::project_root().join("target/kbuild-host-check");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let copied = copy_rust_core_files(&dir);
        assert!(copied.is_ok(), "{copied:?}");
        // Both builds: the one with the fix and the pre-fix one of the race experiment, whose
        // Kconfig option Kbuild hands to rustc as a cfg.
        for cfg in [None, Some("CONFIG_LIVEPATCH_RUST_PRE_FIX")] {
            let mut rustc = Command::new("rustc");
            rustc
                .current_dir(&dir)
                .env("RUSTC_BOOTSTRAP", "1")
                .args(["--edition=2021", "--target", target, "-Zcrate-attr=no_std"])
                .args(["--crate-type", "rlib", "--emit=obj", "-Cpanic=abort"])
                .args([
                    "-Dwarnings",
                    "-Dnon_ascii_idents",
                    "-Dunsafe_op_in_unsafe_fn",
                ])
                .args(["-Wmissing_docs", "-Wrust_2018_idioms", "-Wunreachable_pub"])
                .arg("klp_core_rust.rs");
            if let Some(cfg) = cfg {
                rustc.args(["--cfg", cfg]);
            }
            let output = match rustc.output() {
                Ok(output) => output,
                Err(e) => panic!("cannot run rustc: {e}"),
            };
            assert!(
                output.status.success(),
                "{cfg:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let nm = Command::new("nm").arg(dir.join("klp_core_rust.o")).output();
            let symbols = nm.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            let symbols = symbols.unwrap_or_default();
            for entry in [
                "klp_rust_module_coming",
                "klp_rust_module_going",
                "klp_rust_core_announce",
                "klp_rust_binds_on_enable",
            ] {
                assert!(
                    symbols.lines().any(|l| l.ends_with(&format!(" T {entry}"))),
                    "{cfg:?}: {entry} not exported:\n{symbols}"
                );
            }
        }
    }

    #[test]
    fn a_key_file_a_fragment_names_is_copied_and_keyed_by_its_bytes() {
        let dir = std::env::temp_dir().join(format!("kpatch-rs-key-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.as_path();
        let write = |path: &str, text: &str| {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap_or(root)).expect("create");
            std::fs::write(&path, text).expect("write");
            path
        };
        let fragment = write(
            "signing.config",
            "CONFIG_MODULE_SIG=y\nCONFIG_MODULE_SIG_KEY=\"keys/test.pem\"\n",
        );
        write("keys/test.pem", "key one");
        let fragments = [fragment];
        let first = project_files_material(root, &fragments).expect("material");
        assert!(
            first.contains("project file keys/test.pem 7 bytes"),
            "{first}"
        );
        write("keys/test.pem", "key two");
        let second = project_files_material(root, &fragments).expect("material");
        assert_ne!(first, second);

        let build = root.join("build");
        install_project_files(root, &fragments, &build).expect("install");
        assert_eq!(
            std::fs::read_to_string(build.join("keys/test.pem"))
                .ok()
                .as_deref(),
            Some("key two")
        );

        // A token or an absolute path is the kernel build's own business; `..` leaves the project.
        let others = write(
            "others.config",
            "CONFIG_MODULE_SIG_KEY=\"pkcs11:token=kernel\"\n\
             # CONFIG_MODULE_SIG_KEY=\"not/this.pem\"\n\
             CONFIG_SYSTEM_TRUSTED_KEYS=\"x.pem\"\n",
        );
        assert_eq!(
            project_files(&[others]).expect("files"),
            Vec::<PathBuf>::new()
        );
        let absolute = write("abs.config", "CONFIG_MODULE_SIG_KEY=\"/etc/key.pem\"\n");
        assert_eq!(
            project_files(&[absolute]).expect("files"),
            Vec::<PathBuf>::new()
        );
        let outside = write("out.config", "CONFIG_MODULE_SIG_KEY=\"../key.pem\"\n");
        let error = project_files(&[outside]).err().map(|e| format!("{e:#}"));
        assert!(error.is_some_and(|e| e.contains("inside the project")));
        // The committed fragment names the committed key.
        let committed = crate::project_root().join(MODULE_SIGNING_FRAGMENT);
        assert_eq!(
            project_files(&[committed]).expect("files"),
            vec![PathBuf::from(crate::cases::TEST_SIGNING_KEY)]
        );
        let _ = std::fs::remove_dir_all(&dir);
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
