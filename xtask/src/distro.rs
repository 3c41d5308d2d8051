//! `cargo xtask distro-test`: livepatches for the kernel Debian ships, proven on that kernel.
//!
//! Downloads Debian's packages of linux 6.12.117+deb12-amd64 once into
//! `~/.cache/kpatch-rs/distro/` (`apt-get download`, `dpkg-deb -x`; nothing is installed), unpacks
//! the `linux-source-6.12` tarball there as the clean source tree, and builds the patches of
//! `fixtures/distro/` with `kpatch-rs build` twice: with the debug vmlinux as the symbol source
//! and with System.map alone. Then it boots Debian's own vmlinuz in QEMU with a busybox
//! initramfs holding the modules and the image's own `binfmt_misc.ko`, and checks each patch:
//! behaviour before, while patched and after disabling, the unload, and a clean kernel log.
//! The first build of a run goes into an empty cache, so its time is that of a never-built
//! tree; `--bench` also times a Kbuild compile of one directory for the full-build estimate.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::guest::{run_jobs, Ending, Job, Rootfs};
use crate::kernel::KernelDirs;
use crate::suite_apt::SuiteApt;

/// One Debian kernel under test: its release, the packages that carry it, and where its
/// files go.
#[derive(Debug, Clone, Copy)]
pub struct DebianKernel {
    /// As `--kernel` names it (`6.12`, `6.1`, `trixie`).
    pub name: &'static str,
    /// The kernel series (`6.12`, `6.1`), which picks the patches' variants.
    pub series: &'static str,
    pub release: &'static str,
    /// The `linux-source-SERIES` package, whose tarball is the clean source tree.
    source_package: &'static str,
    /// Whether the installed package's tarball in `/usr/src` is used (6.12, which `cargo
    /// xtask deps` installs for the test kernel); otherwise the package of the image's own
    /// version is downloaded like the others.
    installed_source: bool,
    /// The cache directory under `~/.cache/kpatch-rs/`.
    cache: &'static str,
    /// The Debian suite whose archive has the packages, when it is not this machine's:
    /// downloaded through a private apt state (`suite_apt.rs`).
    suite: Option<&'static str>,
    /// The suite of the build root the kernel is built in with `kpatch-rs build --chroot`
    /// (`build_root.rs`), when this machine's compiler is not the kernel's.
    root: Option<&'static str>,
    /// Whether the debug package's modules are unpacked too (the `--bench` estimate counts
    /// their units); otherwise only its vmlinux and System.map.
    dbg_modules: bool,
}

/// Debian 12's 6.12 kernel (bookworm-backports).
pub const DEBIAN_6_12: DebianKernel = DebianKernel {
    name: "6.12",
    series: "6.12",
    release: "6.12.117+deb12-amd64",
    source_package: "linux-source-6.12",
    installed_source: true,
    cache: "distro",
    suite: None,
    root: None,
    dbg_modules: true,
};

/// Debian 12's default kernel: 6.1, the newest in bookworm-security.
pub const DEBIAN_6_1: DebianKernel = DebianKernel {
    name: "6.1",
    series: "6.1",
    release: "6.1.0-57-amd64",
    source_package: "linux-source-6.1",
    installed_source: false,
    cache: "distro-6.1",
    suite: None,
    root: None,
    dbg_modules: false,
};

/// Debian 13's kernel, built by Debian 13's gcc 14: this Debian 12 machine (gcc 12) builds
/// its livepatches in a trixie root.
pub const DEBIAN_13: DebianKernel = DebianKernel {
    name: "trixie",
    series: "6.12",
    release: "6.12.117+deb13-amd64",
    source_package: "linux-source-6.12",
    installed_source: false,
    cache: "distro-trixie",
    suite: Some("trixie"),
    root: Some("trixie"),
    dbg_modules: false,
};

pub const KERNELS: &[DebianKernel] = &[DEBIAN_6_12, DEBIAN_6_1, DEBIAN_13];

impl DebianKernel {
    pub fn by_name(name: &str) -> Result<DebianKernel> {
        KERNELS
            .iter()
            .copied()
            .find(|k| k.name == name)
            .with_context(|| {
                let known: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
                format!("no Debian kernel {name}; known: {}", known.join(", "))
            })
    }
    fn image(&self) -> String {
        format!("linux-image-{}-unsigned", self.release)
    }
    fn dbg(&self) -> String {
        format!("linux-image-{}-dbg", self.release)
    }
    fn headers(&self) -> String {
        format!("linux-headers-{}", self.release)
    }
    fn tarball(&self) -> String {
        format!("{}.tar.xz", self.source_package)
    }
    /// `fixtures/distro/SERIES/NAME.patch` where the series needs its own, else
    /// `fixtures/distro/NAME.patch`.
    fn patch(&self, root: &Path, name: &str) -> PathBuf {
        let own = root.join(format!("fixtures/distro/{}/{name}.patch", self.series));
        if own.exists() {
            own
        } else {
            root.join(format!("fixtures/distro/{name}.patch"))
        }
    }
}

/// One patch of `fixtures/distro/` and what the guest checks for it.
struct Case {
    patch: &'static str,
    /// The shell lines that show the patch works, run with `$sysfs` set; `before` runs
    /// before loading and after unloading, `patched` while the patch is enabled.
    before: &'static str,
    patched: &'static str,
}

const CASES: &[Case] = &[
    Case {
        patch: "cmdline",
        before: r#"! grep -q kpatch-rs-distro /proc/cmdline"#,
        patched: r#"grep -q ' kpatch-rs-distro$' /proc/cmdline"#,
    },
    Case {
        patch: "meminfo",
        before: r#"! grep -q KpatchReads /proc/meminfo"#,
        // The new counter lives in the patch module's data: it counts up with every read.
        patched: r#"a=$(awk '/^KpatchReads:/ {print $2}' /proc/meminfo)
b=$(awk '/^KpatchReads:/ {print $2}' /proc/meminfo)
echo "KpatchReads $a then $b"
[ -n "$a" ] && [ "$b" -eq $((a + 1)) ]"#,
    },
    Case {
        patch: "binfmt-misc",
        before: r#"[ "$(cat /proc/sys/fs/binfmt_misc/status)" = enabled ]"#,
        patched: r#"[ "$(cat /proc/sys/fs/binfmt_misc/status)" = "enabled (kpatch-rs)" ]"#,
    },
];

/// The symbol sources `kpatch-rs build` is run with.
const SOURCES: &[&str] = &["vmlinux", "system-map"];

/// The guest script for one case: load, check, disable, unload, check the log.
fn guest_script(case: &Case, module: &str) -> String {
    let kernel_name = module.replace('-', "_");
    format!(
        r#"set -eu
sysfs=/sys/kernel/livepatch/{kernel_name}
wait_for() {{ n=300; until "$@"; do n=$((n - 1)); [ "$n" -gt 0 ] || exit 1; sleep 0.1; done; }}
transition_done() {{ [ "$(cat "$sysfs/transition")" = 0 ]; }}
patch_gone() {{ [ ! -e "$sysfs" ]; }}
# Both CPUs online: every transition rewrites this PREEMPT_DYNAMIC kernel's cond_resched()
# static-call sites through int3 breakpoints, which the guest's one TCG thread runs without
# the stale-translation int3 oops of multi-threaded TCG (`cargo xtask int3-repro`).
echo "online CPUs: $(cat /sys/devices/system/cpu/online)"
[ "$(cat /sys/devices/system/cpu/online)" = 0-1 ]
if [ {binfmt} = yes ] && [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
    insmod /distro/binfmt_misc.ko
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
{before}
echo "before: ok"
insmod ./{module}.ko
wait_for transition_done
{patched}
echo "patched: ok"
echo 0 > "$sysfs/enabled"
wait_for patch_gone
{before}
echo "disabled: ok"
rmmod {kernel_name}
if dmesg | grep -E 'WARNING:|Oops|BUG:|Call Trace'; then exit 1; fi
echo "dmesg: no warning, oops or bug"
"#,
        binfmt = if case.patch == "binfmt-misc" {
            "yes"
        } else {
            "no"
        },
        before = case.before,
        patched = case.patched,
    )
}

/// The unpacked Debian packages and source tree.
pub struct Distro {
    pub kernel: DebianKernel,
    pub cache: PathBuf,
    pub source: PathBuf,
    pub config: PathBuf,
    pub vmlinuz: PathBuf,
    pub vmlinux: PathBuf,
    pub system_map: PathBuf,
    pub symvers: PathBuf,
    /// The image's modules, decompressed: only those the patches target.
    pub modules: PathBuf,
}

impl Distro {
    /// Debian's own kernel image as a kernel to boot; guest.rs boots whatever `bzimage` names.
    pub fn kernel(&self) -> KernelDirs {
        KernelDirs {
            root: self.cache.clone(),
            source: self.source.clone(),
            build: self.cache.join("build"),
            bzimage: self.vmlinuz.clone(),
            log: self.cache.join("boot.log"),
            make_vars: Vec::new(),
        }
    }
}

/// The Debian version of the image package downloaded into `debs` (`6.1.192-3` of
/// `linux-image-6.1.0-57-amd64-unsigned_6.1.192-3_amd64.deb`).
fn image_version(debs: &Path, image: &str) -> Result<Option<String>> {
    Ok(std::fs::read_dir(debs)?.flatten().find_map(|entry| {
        let name = entry.file_name().to_string_lossy().into_owned();
        let rest = name.strip_prefix(&format!("{image}_"))?;
        Some(rest.split('_').next()?.to_string())
    }))
}

/// Debian's 6.12 kernel, downloaded and unpacked once.
pub fn ensure_distro(sh: &Shell) -> Result<Distro> {
    ensure_kernel(sh, &DEBIAN_6_12)
}

/// Downloads and unpacks what is missing; a package is unpacked once (a stamp file marks it).
pub fn ensure_kernel(sh: &Shell, kernel: &DebianKernel) -> Result<Distro> {
    let cache = crate::cache_dir(kernel.cache)?;
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs)?;
    let apt = match kernel.suite {
        Some(suite) => Some(SuiteApt::new(sh, &cache, suite)?),
        None => None,
    };
    let installed_tarball = Path::new("/usr/src").join(kernel.tarball());
    let use_installed = kernel.installed_source && installed_tarball.exists();
    let mut packages = vec![kernel.image(), kernel.dbg(), kernel.headers()];
    if !use_installed {
        packages.push(kernel.source_package.to_string());
    }
    for package in &packages {
        let unpacked = cache.join("x").join(package);
        let stamp = unpacked.join(".unpacked");
        if stamp.exists() {
            continue;
        }
        let find_deb = || -> Result<Option<PathBuf>> {
            Ok(std::fs::read_dir(&debs)?
                .flatten()
                .map(|entry| entry.path())
                .find(|path| {
                    path.file_name()
                        .and_then(|f| f.to_str())
                        .is_some_and(|f| f.starts_with(&format!("{package}_")))
                }))
        };
        let deb = match find_deb()? {
            Some(deb) => deb,
            None => {
                // The source of exactly the image's version, whatever apt's candidate is.
                let wanted = if *package == kernel.source_package {
                    match image_version(&debs, &kernel.image())? {
                        Some(version) => format!("{package}={version}"),
                        None => package.clone(),
                    }
                } else {
                    package.clone()
                };
                eprintln!("downloading {wanted}");
                match &apt {
                    Some(apt) => apt.download(sh, &wanted, &debs)?,
                    None => {
                        let _dir = sh.push_dir(&debs);
                        cmd!(sh, "apt-get download {wanted}")
                            .run()
                            .with_context(|| {
                                format!("cannot download {package} (apt-get update?)")
                            })?;
                    }
                }
                find_deb()?.with_context(|| format!("apt-get left no {package} .deb"))?
            }
        };
        let _ = std::fs::remove_dir_all(&unpacked);
        std::fs::create_dir_all(&unpacked)?;
        if *package == kernel.dbg() && !kernel.dbg_modules {
            // Only the symbol sources: the debug modules take gigabytes.
            let release = kernel.release;
            // Debian 13's vmlinux is in boot/, with a link to it where Debian 12 has it.
            let wanted = [
                format!("./usr/lib/debug/lib/modules/{release}/vmlinux"),
                "./usr/lib/debug/boot".to_string(),
            ];
            let script = r#"dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" "$3" "$4""#;
            cmd!(sh, "sh -c {script} sh {deb} {unpacked} {wanted...}").run()?;
        } else {
            cmd!(sh, "dpkg-deb -x {deb} {unpacked}").run()?;
        }
        std::fs::write(&stamp, "")?;
    }
    let tarball = if use_installed {
        installed_tarball
    } else {
        cache
            .join("x")
            .join(kernel.source_package)
            .join("usr/src")
            .join(kernel.tarball())
    };
    let source_root = cache.join("source");
    let source = source_root.join(kernel.source_package);
    if !source_root.join(".unpacked").exists() {
        if !tarball.exists() {
            bail!(
                "{} is missing: apt-get install {}",
                tarball.display(),
                kernel.source_package
            );
        }
        let _ = std::fs::remove_dir_all(&source_root);
        std::fs::create_dir_all(&source_root)?;
        eprintln!("unpacking {}", tarball.display());
        cmd!(sh, "tar -C {source_root} -xf {tarball}").run()?;
        std::fs::write(source_root.join(".unpacked"), "")?;
    }
    let release = kernel.release;
    let x = cache.join("x");
    let image = x.join(kernel.image());
    let modules = cache.join("modules");
    std::fs::create_dir_all(&modules)?;
    let binfmt = modules.join("binfmt_misc.ko");
    if !binfmt.exists() {
        // Debian 13's packages have merged /usr: its modules are in /usr/lib/modules.
        let shipped = ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|dir| image.join(format!("{dir}/{release}/kernel/fs/binfmt_misc.ko")))
            .find(|path| path.exists() || path.with_extension("ko.xz").exists())
            .with_context(|| format!("{} has no binfmt_misc.ko", image.display()))?;
        if shipped.exists() {
            std::fs::copy(&shipped, &binfmt)?;
        } else {
            let compressed = shipped.with_extension("ko.xz");
            let bytes = cmd!(sh, "xz -dc {compressed}").output()?.stdout;
            std::fs::write(&binfmt, bytes)?;
        }
    }
    Ok(Distro {
        kernel: *kernel,
        source,
        config: image.join(format!("boot/config-{release}")),
        vmlinuz: image.join(format!("boot/vmlinuz-{release}")),
        vmlinux: x
            .join(kernel.dbg())
            .join(format!("usr/lib/debug/lib/modules/{release}/vmlinux")),
        system_map: x
            .join(kernel.dbg())
            .join(format!("usr/lib/debug/boot/System.map-{release}")),
        symvers: x
            .join(kernel.headers())
            .join(format!("usr/src/linux-headers-{release}/Module.symvers")),
        modules,
        cache,
    })
}

pub fn run(args: &[String]) -> Result<()> {
    let mut bench = false;
    let mut kernel = DEBIAN_6_12;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => bench = true,
            "--kernel" => {
                let name = args
                    .next()
                    .context("--kernel needs a kernel (6.12, 6.1 or trixie)")?;
                kernel = DebianKernel::by_name(name)?;
            }
            other => {
                bail!("`cargo xtask distro-test` takes --kernel NAME and --bench, got `{other}`")
            }
        }
    }
    let sh = Shell::new()?;
    let root = crate::project_root();
    sh.change_dir(&root);
    let distro = ensure_kernel(&sh, &kernel)?;
    let release = kernel.release;
    let kpatch = crate::kpatch::build_kpatch_rs(&sh)?;

    let work = root.join(format!("target/distro-{}", kernel.name));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    // Empty caches: the first build starts from the never-built source tree. Each symbol
    // source builds in its own cache directory, so that the byte comparison below also shows
    // that the module does not depend on where the cache is.
    let cache_for = |symbol_source: &str| match symbol_source {
        "vmlinux" => distro.cache.join("build"),
        other => distro.cache.join(format!("build-{other}")),
    };
    for symbol_source in SOURCES {
        let _ = std::fs::remove_dir_all(cache_for(symbol_source));
    }

    let Distro {
        source,
        config,
        symvers,
        modules,
        ..
    } = &distro;
    // A kernel of another compiler: refused on this machine's, built in a root of its release.
    let chroot = match kernel.root {
        Some(suite) => {
            let build_root = crate::build_root::ensure(&sh, suite)?;
            check_compiler_refusal(&sh, &kpatch, &distro, &root, &work)?;
            vec!["--chroot".to_string(), path_text(&build_root)]
        }
        None => Vec::new(),
    };
    let mut timings = Vec::new();
    for symbol_source in SOURCES {
        let symbols = match *symbol_source {
            "vmlinux" => vec!["--vmlinux".to_string(), path_text(&distro.vmlinux)],
            _ => vec!["--system-map".to_string(), path_text(&distro.system_map)],
        };
        let out = work.join(symbol_source);
        let build_cache = cache_for(symbol_source);
        for case in CASES {
            let patch = kernel.patch(&root, case.patch);
            let start = Instant::now();
            let symbols = &symbols;
            let chroot = &chroot;
            cmd!(
                sh,
                "{kpatch} build --sourcedir {source} --config {config} {symbols...}
                 --symvers {symvers} --modules {modules} --cache-dir {build_cache} -j2
                 {chroot...} -o {out} {patch}"
            )
            .run()
            .with_context(|| format!("kpatch-rs build of {} failed", case.patch))?;
            timings.push((format!("{} ({symbol_source})", case.patch), start.elapsed()));
        }
    }
    check_no_resolve_btfids(config, &cache_for("vmlinux"))?;
    for case in CASES {
        let module = format!("livepatch-{}.ko", case.patch);
        let same = std::fs::read(work.join("vmlinux").join(&module))?
            == std::fs::read(work.join("system-map").join(&module))?;
        if !same {
            bail!(
                "{module}: the builds from the debug vmlinux and from System.map, in two cache \
                 directories, differ; the same fix must give the same bytes"
            );
        }
        println!(
            "{module}: the builds from the debug vmlinux and from System.map, in two cache \
             directories, are byte-identical"
        );
    }

    let rootfs = Rootfs::new(&sh, &work.join("rootfs"))?;
    rootfs.copy_file(
        &modules.join("binfmt_misc.ko"),
        Path::new("/distro/binfmt_misc.ko"),
    )?;
    let mut jobs = Vec::new();
    for symbol_source in SOURCES {
        for case in CASES {
            let module = format!("livepatch-{}", case.patch);
            let dir = format!("/distro/{symbol_source}");
            rootfs.copy_file(
                &work.join(symbol_source).join(format!("{module}.ko")),
                &Path::new(&dir).join(format!("{module}.ko")),
            )?;
            std::fs::write(
                rootfs.path(&Path::new(&dir).join(format!("{}.sh", case.patch))),
                guest_script(case, &module),
            )?;
            jobs.push(Job {
                name: format!("{}-{symbol_source}", case.patch),
                cwd: dir,
                command: format!("sh ./{}.sh", case.patch),
                timeout: Duration::from_secs(120),
            });
        }
    }
    let kernel = distro.kernel();
    println!("booting Debian's vmlinuz-{release} in QEMU");
    let outcomes = run_jobs(&sh, &kernel, &rootfs, &jobs, &work.join("qemu"))?;
    let mut failed = 0;
    for outcome in &outcomes {
        let passed = matches!(outcome.ending, Ending::Exited(0));
        if !passed {
            failed += 1;
        }
        println!(
            "{} {}: {:?}",
            if passed { "ok  " } else { "FAIL" },
            outcome.name,
            outcome.ending
        );
        for line in outcome.output.lines() {
            println!("    {line}");
        }
    }
    println!(
        "kpatch-rs build times (-j2, shared 2-core machine; the first ran into an empty cache):"
    );
    for (name, elapsed) in &timings {
        println!("  {name}: {:.1} s", elapsed.as_secs_f64());
    }
    if bench {
        bench_full_build(&sh, &distro)?;
    }
    if failed > 0 {
        bail!("{failed} of {} distro checks failed", outcomes.len());
    }
    println!("{} passed, 0 failed", outcomes.len());
    Ok(())
}

/// `kpatch-rs build` with this machine's compiler, for a kernel another compiler built:
/// refused (exit 2), with both compilers named.
fn check_compiler_refusal(
    sh: &Shell,
    kpatch: &Path,
    distro: &Distro,
    root: &Path,
    work: &Path,
) -> Result<()> {
    let config = std::fs::read_to_string(&distro.config)?;
    let kernel_compiler = config
        .lines()
        .find_map(|line| line.strip_prefix("CONFIG_CC_VERSION_TEXT="))
        .map(|text| text.trim_matches('"').to_string())
        .context("the kernel's config has no CONFIG_CC_VERSION_TEXT")?;
    let ours = cmd!(sh, "gcc --version").read()?;
    let ours = ours.lines().next().unwrap_or("").to_string();
    let patch = distro.kernel.patch(root, CASES[0].patch);
    let Distro {
        source,
        config,
        system_map,
        symvers,
        ..
    } = distro;
    let cache = work.join("refusal-cache");
    let output = cmd!(
        sh,
        "{kpatch} build --sourcedir {source} --config {config} --system-map {system_map}
         --symvers {symvers} --cache-dir {cache} -o {work} {patch}"
    )
    .ignore_status()
    .output()?;
    let _ = std::fs::remove_dir_all(&cache);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let code = output.status.code();
    if code != Some(2) || !stderr.contains(&kernel_compiler) || !stderr.contains(&ours) {
        bail!(
            "with this machine's compiler (`{ours}`), a kernel built by `{kernel_compiler}` must \
             be refused (exit 2) with both named; got exit {code:?}:\n{stderr}"
        );
    }
    println!(
        "compiler check: refused on this machine (exit 2), naming `{kernel_compiler}` and \
         `{ours}`"
    );
    Ok(())
}

fn path_text(path: &Path) -> String {
    path.display().to_string()
}

/// Estimates a full `make -j2` of Debian's config: times Kbuild compiling every object of
/// `fs/proc/` in a prepared tree, and scales the time per object by the number of translation
/// units Debian's vmlinux and modules hold (their `STT_FILE` symbols in the debug package).
fn bench_full_build(sh: &Shell, distro: &Distro) -> Result<()> {
    let bench = distro.cache.join("bench");
    let _ = std::fs::remove_dir_all(&bench);
    std::fs::create_dir_all(&bench)?;
    let source = &distro.source;
    std::fs::copy(&distro.config, bench.join(".config"))?;
    let output = format!("O={}", bench.display());
    let release = format!("KERNELRELEASE={}", distro.kernel.release);
    let start = Instant::now();
    cmd!(
        sh,
        "make -C {source} {output} {release} -j2 olddefconfig modules_prepare"
    )
    .quiet()
    .ignore_stdout()
    .run()?;
    let prepare = start.elapsed();
    let start = Instant::now();
    cmd!(sh, "make -C {source} {output} {release} -j2 fs/proc/")
        .quiet()
        .ignore_stdout()
        .run()?;
    let proc_dir = start.elapsed();
    let objects = std::fs::read_dir(bench.join("fs/proc"))?
        .flatten()
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.ends_with(".o") && !name.ends_with(".mod.o") && name != "built-in.o"
        })
        .count();
    // One STT_FILE symbol per compiled unit that has local symbols: a lower bound. Each
    // module also has its generated `.mod.c` and `module-common.c`, not counted.
    let file_symbols = |text: &str| {
        text.lines()
            .filter(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.get(3) == Some(&"FILE")
                    && fields
                        .last()
                        .is_some_and(|name| !name.ends_with(".mod.c") && *name != "module-common.c")
            })
            .count()
    };
    let vmlinux = &distro.vmlinux;
    let builtin_units = file_symbols(&cmd!(sh, "readelf -sW {vmlinux}").quiet().read()?);
    let debug_modules = distro.vmlinux.with_file_name("kernel");
    let placeholder = "{}";
    let module_units = file_symbols(
        &cmd!(
            sh,
            "find {debug_modules} -name *.ko -exec readelf -sW {placeholder} +"
        )
        .quiet()
        .read()?,
    );
    if objects == 0 {
        bail!("the fs/proc/ build made no objects");
    }
    let per_object = proc_dir.as_secs_f64() / objects as f64;
    let units = builtin_units + module_units;
    let estimate = prepare.as_secs_f64() + per_object * units as f64;
    println!("full build estimate for Debian's config at -j2 on this machine:");
    println!(
        "  olddefconfig + modules_prepare: {:.0} s",
        prepare.as_secs_f64()
    );
    println!(
        "  fs/proc/: {objects} objects in {:.1} s ({per_object:.2} s per object)",
        proc_dir.as_secs_f64()
    );
    println!(
        "  units: {builtin_units} built-in + {module_units} in modules (STT_FILE symbols of the \
         debug vmlinux and modules: a lower bound)"
    );
    println!(
        "  estimate: {:.0} s ({:.1} h), without linking vmlinux, BTF and modules",
        estimate,
        estimate / 3600.0
    );
    Ok(())
}

/// With `CONFIG_DEBUG_INFO_BTF` (Debian's config), Kbuild's `modules_prepare` builds
/// `resolve_btfids` and its libbpf, about 10 s of CPU, which nothing kpatch-rs runs uses; its
/// builds assume it made (`UNUSED_TOOLS` in kpatch-build's `kbuild.rs`). Fails when a prepared
/// build directory of `cache` has it after all. The modules these builds made are the ones
/// loaded in Debian's kernel.
fn check_no_resolve_btfids(config: &Path, cache: &Path) -> Result<()> {
    let config_text = std::fs::read_to_string(config)?;
    if !config_text.lines().any(|l| l == "CONFIG_DEBUG_INFO_BTF=y") {
        return Ok(());
    }
    let mut prepared = 0;
    for entry in std::fs::read_dir(cache)?.flatten() {
        let original = entry.path().join("original");
        if !original.join(".kpatch-prepared").is_file() {
            continue;
        }
        prepared += 1;
        let tool = original.join("tools/bpf/resolve_btfids");
        if tool.exists() {
            bail!(
                "{} exists: kpatch-rs's preparation built resolve_btfids, which its builds \
                 never run",
                tool.display()
            );
        }
    }
    if prepared == 0 {
        bail!(
            "no prepared original build directory in {}",
            cache.display()
        );
    }
    println!(
        "ok: Debian's config has CONFIG_DEBUG_INFO_BTF and the prepared build directory has no \
         resolve_btfids (not built)"
    );
    Ok(())
}
