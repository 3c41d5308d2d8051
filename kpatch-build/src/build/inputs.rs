//! The inputs phase: every argument checked before any work, so that a wrong one fails in
//! milliseconds with what to pass instead; the files the patches touch; the cache entry for
//! this (source, config, compiler, make variables), locked for the build; the release string
//! Kbuild builds with; the hash a signed module is signed with.

use std::fs;
use std::path::{Path, PathBuf};

use super::build_root;
use super::kbuild;
use super::sign::{self, SigningKey};
use super::units;
use super::{patches, version};
use kpatch_diff::compare::Refusal;

use super::{io_error, BuildError, BuildOptions, SymbolSource};

/// An input that cannot serve, with what to pass instead.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error(
        "{} is not a kernel source tree (no Makefile and kernel/); pass the kernel's source \
         with --sourcedir",
        .0.display()
    )]
    NotASourceTree(PathBuf),
    #[error(
        "{} is configured in place (it has .config or include/config); kpatch-rs builds out \
         of tree and needs a clean source tree: pass a clean copy with --sourcedir and the \
         configuration with --config",
        .0.display()
    )]
    ConfiguredInPlace(PathBuf),
    #[error("cannot read {what} {}: {source}; {hint}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        hint: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "kernel config {} does not enable CONFIG_LIVEPATCH: that kernel cannot load \
         livepatches; rebuild it with CONFIG_LIVEPATCH=y or pass the right --config",
        .0.display()
    )]
    NoLivepatch(PathBuf),
    #[error(
        "{} does not exist; pass the running kernel's vmlinux (with symbols) with \
         --vmlinux, or its System.map with --system-map",
        .0.display()
    )]
    NoSymbols(PathBuf),
    #[error(
        "Module.symvers {} does not exist; pass the kernel's Module.symvers with --symvers",
        .0.display()
    )]
    NoSymvers(PathBuf),
    #[error("no patch given; pass one or more patch files")]
    NoPatch,
    #[error("pass the kernel's symbols with --vmlinux or --system-map")]
    NoSymbolSource,
    #[error(
        "cannot locate the cache directory: neither XDG_CACHE_HOME nor HOME is set; pass \
         --cache-dir"
    )]
    NoCacheDir,
    #[error("cannot resolve {}: {source}", path.display())]
    Canonicalize {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "kernel release {release} is not of the source tree's version {version}: pass the \
         source the running kernel was built from, or its release with --kernel-release"
    )]
    ReleaseMismatch { release: String, version: String },
    #[error(
        "the source tree {} is Linux {source_version} (its Makefile), and {what} is of \
         {other}: pass the source the running kernel was built from with --sourcedir, or the \
         running kernel's files",
        tree.display()
    )]
    VersionMismatch {
        tree: PathBuf,
        source_version: String,
        what: String,
        other: String,
    },
    #[error(
        "kernel release {0:?} has white space or quotes; pass `uname -r` of the running \
         kernel with --kernel-release"
    )]
    ReleaseNotAWord(String),
    #[error(
        "the kernel config cannot be reproduced on this machine: olddefconfig dropped \
         {dropped}; install what they depend on (CONFIG_DEBUG_INFO_BTF needs pahole from the \
         dwarves package, CONFIG_RUST needs rustc and bindgen) or the module will not match \
         the running kernel"
    )]
    ConfigNotReproducible { dropped: String },
    #[error(
        "cannot find {module}.ko under {}: the module's symbols are needed to patch it; build \
         the modules of the original tree there, or pass the directory of the kernel's \
         (decompressed) modules with --modules",
        dir.display()
    )]
    ModuleNotFound { module: String, dir: PathBuf },
    #[error(
        "signing key {} does not exist; pass a PEM file with the private key, or a PKCS#11 \
         URI (pkcs11:...), with --sign-key",
        .0.display()
    )]
    NoSigningKey(PathBuf),
    #[error(
        "signing certificate {} does not exist; pass the key's X.509 certificate (a PEM or \
         DER file) with --sign-cert",
        .0.display()
    )]
    NoSigningCert(PathBuf),
    #[error(
        "kernel config {} has no CONFIG_MODULE_SIG_HASH: that kernel does not check module \
         signatures, so there is no hash to sign with; pass the config of a kernel built with \
         CONFIG_MODULE_SIG=y, or build without --sign-key",
        .0.display()
    )]
    NoSignatureHash(PathBuf),
}

/// What the inputs phase hands on.
#[derive(Debug)]
pub struct Inputs {
    /// The files the patches touch, relative to the tree.
    pub touched: Vec<PathBuf>,
    /// This build's cache entry.
    pub cache: PathBuf,
    /// The log of the patched tree's preparation.
    pub log: PathBuf,
    /// `KERNELRELEASE` for every make run, when known.
    pub release: Option<String>,
    /// The hash to sign the module with (`CONFIG_MODULE_SIG_HASH`), when signing is asked for.
    pub signature_hash: Option<String>,
    /// One build at a time per cache entry: two builds would patch the same tree. Held until
    /// the value is dropped, at the end of the build, and by every program the build starts
    /// for as long as it runs (`kbuild::inherit_lock`), even when kpatch-rs is killed.
    _children_lock: kbuild::InheritedLock,
    _lock: fs::File,
}

impl Inputs {
    /// Where the patched tree (a hard-linked copy of the source) lives.
    pub fn patched_source(&self) -> PathBuf {
        self.cache.join("patched-source")
    }
}

/// The options with every path absolute: make runs in other directories (`-C`, `O=`, `M=`).
pub fn absolute(options: &BuildOptions) -> BuildOptions {
    let absolute = |path: &Path| std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    BuildOptions {
        sourcedir: absolute(&options.sourcedir),
        config: absolute(&options.config),
        symbols: match &options.symbols {
            SymbolSource::Vmlinux(path) => SymbolSource::Vmlinux(absolute(path)),
            SymbolSource::SystemMap(path) => SymbolSource::SystemMap(absolute(path)),
        },
        modules: options.modules.as_deref().map(absolute),
        symvers: absolute(&options.symvers),
        output: absolute(&options.output),
        patches: options.patches.iter().map(|p| absolute(p)).collect(),
        cache: absolute(&options.cache),
        oot_module: options
            .oot_module
            .as_ref()
            .map(|module| super::oot::OotModule {
                ko: absolute(&module.ko),
                source: absolute(&module.source),
            }),
        signing_key: options.signing_key.as_ref().map(|signing_key| SigningKey {
            key: if signing_key.key_is_pkcs11_uri() {
                signing_key.key.clone()
            } else {
                absolute(Path::new(&signing_key.key))
                    .to_string_lossy()
                    .into_owned()
            },
            cert: absolute(&signing_key.cert),
        }),
        ..options.clone()
    }
}

/// Checks the inputs and takes this build's cache entry.
pub fn check(options: &BuildOptions) -> Result<Inputs, BuildError> {
    check_inputs(options)?;
    let signature_hash = signature_hash(options)?;
    if !options.skip_compiler_check {
        check_compiler(options)?;
    }
    let touched = touched_files(options)?;
    let key = cache_key(options)?;
    let cache = options.cache.join(&key);
    fs::create_dir_all(&cache).map_err(io_error("create the cache", &cache))?;
    let lock_path = cache.join("lock");
    // Read and write: programs read it as their standard input (and find it empty).
    let lock = fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .and_then(|file| {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(fs::TryLockError::WouldBlock) => eprintln!(
                    "kpatch-rs: waiting for another build of the same kernel and config to \
                     finish (it holds {})",
                    lock_path.display()
                ),
                Err(fs::TryLockError::Error(error)) => return Err(error),
            }
            file.lock().map(|()| file)
        })
        .map_err(io_error("lock", &lock_path))?;
    let children_lock =
        kbuild::inherit_lock(&lock).map_err(io_error("share the lock", &lock_path))?;
    let log = cache.join("build.log");
    let _ = fs::remove_file(&log);
    let release = kernel_release(options)?;
    Ok(Inputs {
        touched,
        cache,
        log,
        release,
        signature_hash,
        _children_lock: children_lock,
        _lock: lock,
    })
}

/// Reads a file the build needs; the error says which and what to pass instead.
pub(super) fn read_file(
    path: &Path,
    what: &'static str,
    hint: &'static str,
) -> Result<Vec<u8>, InputError> {
    fs::read(path).map_err(|source| InputError::Read {
        what,
        path: path.to_path_buf(),
        hint,
        source,
    })
}

/// The C compiler every make run uses: `CC=` among the make variables, else `gcc`. It may be
/// a wrapper and the compiler it runs (`ccache gcc`); [`kbuild::compiler_version`] asks the
/// two together, which answer with the wrapped compiler's version, so the compiler check and
/// the cache key follow the compiler, not the wrapper.
fn compiler_program(options: &BuildOptions) -> &str {
    options
        .make_vars
        .iter()
        .find_map(|var| var.strip_prefix("CC="))
        .unwrap_or("gcc")
}

/// The compiler that built the kernel, as its config records it (`CONFIG_CC_VERSION_TEXT`,
/// the first line of `$(CC) --version` without `#`).
fn kernel_compiler(config: &str) -> Option<String> {
    config.lines().find_map(|line| {
        let value = line.strip_prefix("CONFIG_CC_VERSION_TEXT=")?;
        Some(value.trim().trim_matches('"').to_string())
    })
}

/// Whether two `--version` lines name the same compiler: everything after the program's
/// name (`x86_64-linux-gnu-gcc-12` and `gcc` are one program on Debian 12) must agree, the
/// package release included.
fn same_compiler(kernel: &str, ours: &str) -> bool {
    let rest = |line: &str| {
        let line = line.replace('#', "");
        line.split_once(' ')
            .map_or(String::new(), |(_, rest)| rest.trim().to_string())
    };
    !rest(kernel).is_empty() && rest(kernel) == rest(ours)
}

/// A module compiled by another compiler than the kernel's may differ from the kernel's own
/// code in ways that break it (inlining, clones, structure padding of bit fields, new
/// instrumentation): refused unless the caller says otherwise.
fn check_compiler(options: &BuildOptions) -> Result<(), BuildError> {
    let config = read_file(&options.config, "kernel config", "pass --config")?;
    let Some(kernel) = kernel_compiler(&String::from_utf8_lossy(&config)) else {
        return Ok(());
    };
    let program = compiler_program(options);
    let ours = kbuild::compiler_version(program)?;
    let inside = build_root::current()
        .map(|root| format!(" (the compiler is that of --chroot {})", root.display()))
        .unwrap_or_default();
    if same_compiler(&kernel, &ours) {
        return Ok(());
    }
    Err(BuildError::Unpatchable {
        refusals: vec![Refusal {
            object: "the kernel".to_string(),
            section: String::new(),
            symbol: String::new(),
            reason: format!(
                "it was built by `{kernel}`, and `{program}` here is `{ours}`: a module \
                 compiled by another compiler may not match the kernel's code; build in a \
                 root of the kernel's release with --chroot DIR (made with debootstrap), or \
                 install the kernel's compiler (and pass it with --make-var CC=...), or pass \
                 --skip-compiler-check if you know the difference is harmless{inside}"
            ),
        }],
    })
}

/// The arguments, checked before any work.
fn check_inputs(options: &BuildOptions) -> Result<(), BuildError> {
    let source = &options.sourcedir;
    if !source.join("Makefile").is_file() || !source.join("kernel").is_dir() {
        return Err(InputError::NotASourceTree(source.clone()).into());
    }
    if source.join(".config").exists() || source.join("include/config").exists() {
        return Err(InputError::ConfiguredInPlace(source.clone()).into());
    }
    let config = read_file(
        &options.config,
        "kernel config",
        "pass the running kernel's config with --config",
    )?;
    let config = String::from_utf8_lossy(&config);
    if !config
        .lines()
        .any(|line| line.trim() == "CONFIG_LIVEPATCH=y")
    {
        return Err(InputError::NoLivepatch(options.config.clone()).into());
    }
    if !options.symbols.path().is_file() {
        return Err(InputError::NoSymbols(options.symbols.path().to_path_buf()).into());
    }
    let vmlinux = match &options.symbols {
        SymbolSource::Vmlinux(path) => Some(path.as_path()),
        SymbolSource::SystemMap(_) => None,
    };
    version::check_source_matches(source, &options.config, &config, vmlinux)?;
    if !options.symvers.is_file() {
        return Err(InputError::NoSymvers(options.symvers.clone()).into());
    }
    if options.patches.is_empty() {
        return Err(InputError::NoPatch.into());
    }
    if let Some(module) = &options.oot_module {
        super::oot::check_inputs(module)?;
    }
    Ok(())
}

/// The hash a signed module is signed with, from the kernel config, after checking that the
/// key (unless it is on a token) and the certificate are there; None when no signing is
/// asked for.
fn signature_hash(options: &BuildOptions) -> Result<Option<String>, BuildError> {
    let Some(signing_key) = &options.signing_key else {
        return Ok(None);
    };
    if !signing_key.key_is_pkcs11_uri() && !Path::new(&signing_key.key).is_file() {
        return Err(InputError::NoSigningKey(PathBuf::from(&signing_key.key)).into());
    }
    // sign-file reads the certificate from a file whatever the key is.
    if !signing_key.cert.is_file() {
        return Err(InputError::NoSigningCert(signing_key.cert.clone()).into());
    }
    let config = read_file(&options.config, "kernel config", "pass --config")?;
    match sign::module_sig_hash(&String::from_utf8_lossy(&config)) {
        Some(hash) => Ok(Some(hash)),
        None => Err(InputError::NoSignatureHash(options.config.clone()).into()),
    }
}

/// The files the patches touch, relative to the tree.
fn touched_files(options: &BuildOptions) -> Result<Vec<PathBuf>, BuildError> {
    let mut texts = Vec::new();
    for patch in &options.patches {
        let text = read_file(patch, "patch", "pass an existing patch file")?;
        texts.push((patch.display().to_string(), text));
    }
    // What kpatch-rs refuses in a patch comes first: a binary change names no file to touch.
    // An out-of-tree module's patches apply to its source directory.
    let tree = options
        .oot_module
        .as_ref()
        .map_or(&options.sourcedir, |module| &module.source);
    patches::check_patches(&texts, tree)?;
    let mut touched = Vec::new();
    for (name, text) in &texts {
        touched.extend(units::touched_files(name, &String::from_utf8_lossy(text))?);
    }
    Ok(touched)
}

/// The cache directory for this (source, config, compiler, make variables).
fn cache_key(options: &BuildOptions) -> Result<String, BuildError> {
    let source =
        fs::canonicalize(&options.sourcedir).map_err(|source| InputError::Canonicalize {
            path: options.sourcedir.clone(),
            source,
        })?;
    let config = read_file(&options.config, "kernel config", "pass --config")?;
    let compiler = kbuild::compiler_version(compiler_program(options))?;
    let mut hash = kpatch_support::Fnv1a::new();
    for part in [
        source.to_string_lossy().as_bytes(),
        &config,
        compiler.as_bytes(),
        options.make_vars.join("\n").as_bytes(),
    ] {
        hash.write(part).write(&[0]);
    }
    // In a build root, its linker too: the root is another toolchain than the host's even
    // where the compilers agree. (Not on the host, whose entries keep their names.)
    if build_root::current().is_some() {
        let linker = kbuild::linker_version()?;
        hash.write(b"root")
            .write(&[0])
            .write(linker.as_bytes())
            .write(&[0]);
    }
    Ok(hash.hex())
}

/// The release string Kbuild builds with: `--kernel-release`, else the release in the
/// `linux_banner` of `--vmlinux`, else that of the shipped modules in `--modules` (their
/// vermagic), else the `include/config/kernel.release` of the headers
/// directory `--symvers` lies in (which Debian's 6.1 headers give as the upstream version,
/// not the release the kernel runs as). It must be of the source tree's version (start with
/// it), or be the release of a vmlinux whose banner names that version, or the release of
/// the shipped modules in `--modules` (their vermagic): otherwise the module would be built
/// for another kernel.
pub(crate) fn kernel_release(options: &BuildOptions) -> Result<Option<String>, BuildError> {
    let vmlinux = match &options.symbols {
        SymbolSource::Vmlinux(path) => Some(path.as_path()),
        SymbolSource::SystemMap(_) => None,
    };
    let banner = vmlinux.and_then(version::vmlinux_banner);
    let banner_release = banner.as_deref().and_then(version::banner_release);
    let release = match &options.kernel_release {
        Some(release) => Some(release.clone()),
        None => banner_release
            .clone()
            .or_else(|| options.modules.as_deref().and_then(modules_release))
            .or_else(|| {
                options
                    .symvers
                    .parent()
                    .map(|headers| headers.join("include/config/kernel.release"))
                    .and_then(|path| fs::read_to_string(path).ok())
                    .map(|text| text.trim().to_string())
                    .filter(|release| !release.is_empty())
            }),
    };
    let Some(release) = release else {
        return Ok(None);
    };
    let (version, _) = version::source_version(&options.sourcedir)?;
    let of_version = version::release_of(&release, &version)
        || (banner_release.as_deref() == Some(release.as_str())
            && banner
                .as_deref()
                .is_some_and(|b| version::banner_is_of(b, &version)))
        || options
            .modules
            .as_deref()
            .is_some_and(|dir| modules_have_release(dir, &release));
    if !of_version {
        return Err(InputError::ReleaseMismatch { release, version }.into());
    }
    if release.chars().any(|c| c.is_whitespace() || c == '\'') {
        return Err(InputError::ReleaseNotAWord(release).into());
    }
    Ok(Some(release))
}

/// The release the first shipped module in `dir` (by name) was built for: the first word
/// of its `.modinfo` vermagic.
fn modules_release(dir: &Path) -> Option<String> {
    let mut modules: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "ko"))
        .collect();
    modules.sort();
    modules.iter().find_map(|path| {
        let bytes = fs::read(path).ok()?;
        let marker = b"vermagic=";
        let start = bytes.windows(marker.len()).position(|w| w == marker)? + marker.len();
        let rest = &bytes[start..];
        let end = rest.iter().position(|&b| b == b' ' || b == 0)?;
        let release = String::from_utf8(rest[..end].to_vec()).ok()?;
        (!release.is_empty()).then_some(release)
    })
}

/// Whether a shipped module in `dir` was built for `release` (its `.modinfo` vermagic).
fn modules_have_release(dir: &Path, release: &str) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    let wanted = format!("vermagic={release} ");
    entries.flatten().any(|entry| {
        let path = entry.path();
        path.extension().is_some_and(|e| e == "ko")
            && fs::read(&path).is_ok_and(|bytes| {
                bytes
                    .windows(wanted.len())
                    .any(|window| window == wanted.as_bytes())
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Options for a build whose only real inputs are the config and the signing key;
    /// `key` and `cert` are file names under `dir` (or a URI for `key`).
    fn signing_options(dir: &Path, config: &str, key: &str, cert: &str) -> BuildOptions {
        let config_path = dir.join("config");
        fs::write(&config_path, config).expect("write config");
        BuildOptions {
            sourcedir: dir.join("source"),
            config: config_path,
            symbols: SymbolSource::Vmlinux(dir.join("vmlinux")),
            modules: None,
            kernel_release: None,
            symvers: dir.join("Module.symvers"),
            name: "x".to_string(),
            jobs: 1,
            output: dir.join("out"),
            patches: Vec::new(),
            replace: true,
            cache: dir.join("cache"),
            make_vars: Vec::new(),
            skip_compiler_check: true,
            allowed_layout_changes: Vec::new(),
            chroot: None,
            targets: Vec::new(),
            oot_module: None,
            signing_key: Some(SigningKey {
                key: if key.starts_with("pkcs11:") {
                    key.to_string()
                } else {
                    dir.join(key).display().to_string()
                },
                cert: dir.join(cert),
            }),
        }
    }

    /// Debian's 6.1 headers name the upstream version (`6.1.192`) as their release, while the
    /// kernel runs as `6.1.0-57-amd64`: the shipped modules' vermagic wins over the headers,
    /// and an explicit release is accepted when those modules carry it.
    #[test]
    fn the_release_comes_from_the_shipped_modules_before_the_headers() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        fs::create_dir_all(root.join("source")).expect("source dir");
        fs::write(
            root.join("source/Makefile"),
            "VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 192\nEXTRAVERSION =\n",
        )
        .expect("Makefile");
        fs::create_dir_all(root.join("include/config")).expect("headers");
        fs::write(root.join("include/config/kernel.release"), "6.1.192\n").expect("release");
        fs::create_dir_all(root.join("modules")).expect("modules");
        fs::write(
            root.join("modules/binfmt_misc.ko"),
            b"\x7fELF...\0vermagic=6.1.0-57-amd64 SMP preempt mod_unload modversions \0",
        )
        .expect("module");
        let mut options = signing_options(root, "", "key.pem", "cert.pem");
        options.symbols = SymbolSource::SystemMap(root.join("System.map"));
        assert_eq!(
            kernel_release(&options).expect("release").as_deref(),
            Some("6.1.192"),
            "without modules, the headers' release"
        );
        options.modules = Some(root.join("modules"));
        assert_eq!(
            kernel_release(&options).expect("release").as_deref(),
            Some("6.1.0-57-amd64")
        );
        options.kernel_release = Some("6.1.0-57-amd64".to_string());
        assert!(kernel_release(&options).is_ok());
        options.kernel_release = Some("6.1.0-58-amd64".to_string());
        let error = kernel_release(&options).expect_err("a release nothing carries");
        assert!(error.to_string().contains("6.1.0-58-amd64"), "{error}");
    }

    fn check_signing(config: &str, key: &str, cert: &str, expected: Result<&str, &str>) {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(dir.path().join("key.pem"), "key").expect("write key");
        fs::write(dir.path().join("cert.pem"), "cert").expect("write cert");
        let options = signing_options(dir.path(), config, key, cert);
        match (signature_hash(&options), expected) {
            (Ok(hash), Ok(wanted)) => assert_eq!(hash.as_deref(), Some(wanted)),
            (Err(error), Err(fragment)) => {
                let text = error.to_string();
                assert!(text.contains(fragment), "{key} {cert}: {text}");
            }
            (result, expected) => panic!("{key} {cert}: {result:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn signing_needs_a_key_a_certificate_and_a_kernel_that_checks_signatures() {
        let signing = "CONFIG_MODULE_SIG=y\nCONFIG_MODULE_SIG_HASH=\"sha512\"\n";
        check_signing(signing, "key.pem", "cert.pem", Ok("sha512"));
        // A key on a token is no file; its certificate still is, since sign-file reads it.
        check_signing(signing, "pkcs11:token=kernel", "cert.pem", Ok("sha512"));
        check_signing(
            signing,
            "pkcs11:token=kernel",
            "none.pem",
            Err("signing certificate"),
        );
        check_signing(
            signing,
            "none.pem",
            "cert.pem",
            Err("none.pem does not exist; pass a PEM file with the private key"),
        );
        check_signing(
            signing,
            "key.pem",
            "none.pem",
            Err("none.pem does not exist; pass the key's X.509 certificate"),
        );
        check_signing(
            "CONFIG_LIVEPATCH=y\n# CONFIG_MODULE_SIG is not set\n",
            "key.pem",
            "cert.pem",
            Err("has no CONFIG_MODULE_SIG_HASH"),
        );
    }

    #[test]
    fn no_signing_asked_for_needs_no_hash() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut options = signing_options(dir.path(), "CONFIG_LIVEPATCH=y\n", "k", "c");
        options.signing_key = None;
        assert!(matches!(signature_hash(&options), Ok(None)));
    }

    /// A compiler script under `dir` that says it is `version`.
    fn fake_compiler(dir: &Path, version: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("gcc");
        fs::write(&path, format!("#!/bin/sh\necho '{version}'\n")).expect("write script");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    #[test]
    fn a_wrapped_compiler_is_checked_and_keyed_by_its_own_version() {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::create_dir(dir.path().join("source")).expect("mkdir");
        let kernel = "gcc (Debian 12.2.0-14+deb12u1) 12.2.0";
        let config = format!("CONFIG_LIVEPATCH=y\nCONFIG_CC_VERSION_TEXT=\"{kernel}\"\n");
        let mut options = signing_options(dir.path(), &config, "k", "c");
        // `env` stands for any wrapper that runs the compiler it is given (ccache, sccache).
        let compiler = fake_compiler(dir.path(), kernel);
        options.make_vars = vec![format!("CC=env {}", compiler.display())];
        assert_eq!(
            kbuild::compiler_version(&format!("env {}", compiler.display())).expect("version"),
            kernel
        );
        check_compiler(&options).expect("the wrapped compiler is the kernel's");
        let key = cache_key(&options).expect("key");

        // The same CC, but the compiler behind the wrapper is another one now.
        fake_compiler(dir.path(), "gcc (Debian 12.2.0-14+deb12u2) 12.2.0");
        assert_ne!(cache_key(&options).expect("key"), key);
        let refused = check_compiler(&options).expect_err("another compiler");
        let text = refused.to_string();
        assert!(
            text.contains("12.2.0-14+deb12u2") && text.contains(kernel),
            "{text}"
        );
        assert_eq!(refused.exit_code(), crate::exit::UNPATCHABLE);
    }

    #[test]
    fn the_kernels_compiler_is_read_from_its_config() {
        let config = "CONFIG_CC_IS_GCC=y\nCONFIG_CC_VERSION_TEXT=\"x86_64-linux-gnu-gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0\"\n";
        assert_eq!(
            kernel_compiler(config).as_deref(),
            Some("x86_64-linux-gnu-gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0")
        );
        assert_eq!(kernel_compiler("CONFIG_LIVEPATCH=y\n"), None);
    }

    #[test]
    fn compilers_agree_on_everything_but_the_programs_name() {
        let debian_12 = "gcc (Debian 12.2.0-14+deb12u1) 12.2.0";
        assert!(same_compiler(
            "x86_64-linux-gnu-gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0",
            debian_12
        ));
        assert!(same_compiler(debian_12, debian_12));
        // Another package release of the same version is another build of the compiler.
        assert!(!same_compiler(
            "gcc-12 (Debian 12.2.0-14) 12.2.0",
            debian_12
        ));
        assert!(!same_compiler(
            "x86_64-linux-gnu-gcc-14 (Debian 14.2.0-19) 14.2.0",
            debian_12
        ));
        assert!(!same_compiler("", debian_12));
    }
}
