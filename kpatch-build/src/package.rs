//! `kpatch-rs package --deb|--rpm`: Debian (or RPM) packages of a livepatch module and of
//! the tool.
//!
//! A livepatch's package, `kpatch-rs-patch-NAME-RELEASE`, holds the module under
//! [`MODULE_ROOT`]`/RELEASE/` for exactly the release of its vermagic, and depends on that
//! release's kernel image and on the tool package. The tool package, `kpatch-rs`, holds the
//! binary and [`UNIT`], which runs `kpatch-rs load --all` at boot unless the kernel command
//! line says `kpatch.enable=0` (kpatch's convention). Removing a livepatch's package unloads
//! the livepatch first when the running kernel has it loaded.
//!
//! The tree is laid out in a staging directory with fixed modes and mtimes and built with
//! `dpkg-deb --build --root-owner-group`, gzip and one compressor thread, so the same inputs
//! give the same bytes (mtimes are `SOURCE_DATE_EPOCH`, else 0). `--rpm` writes a spec whose
//! `%install` copies the same tree and runs `rpmbuild -bb` on it, with the build time and
//! mtimes clamped to the same epoch, nothing stripped, and a gzip payload. An RPM livepatch
//! requires `kernel-uname-r = RELEASE`, which Fedora's and RHEL's kernel packages provide.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::inspect::{self, InspectError};

/// Where installed livepatches live: one directory per kernel release.
pub const MODULE_ROOT: &str = "/var/lib/kpatch-rs";
/// The unit's path in the tool package.
pub const UNIT_PATH: &str = "usr/lib/systemd/system/kpatch-rs.service";
/// The tool package's name, which every livepatch's package depends on.
pub const TOOL_PACKAGE: &str = "kpatch-rs";

/// The systemd unit that loads the running kernel's installed livepatches at boot.
pub const UNIT: &str = "\
[Unit]
Description=Load the livepatches installed for the running kernel (kpatch-rs)
Documentation=man:kpatch-rs-load(1)
ConditionKernelCommandLine=!kpatch.enable=0
RequiresMountsFor=/var/lib/kpatch-rs
Before=network-pre.target
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/kpatch-rs load --all

[Install]
WantedBy=multi-user.target
";

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Inspect(#[from] InspectError),
    #[error("{} is not a livepatch module (its .modinfo has no livepatch=Y)", file.display())]
    NotLivepatch { file: PathBuf },
    #[error("{} has no vermagic: its kernel release is unknown", file.display())]
    NoRelease { file: PathBuf },
    #[error("`{name}` cannot be part of a Debian package name (lowercase letters, digits, `+`, `-`, `.`)")]
    BadName { name: String },
    #[error(
        "`{version}` is not a Debian version (it starts with a digit; letters, digits, `.+~-`)"
    )]
    BadVersion { version: String },
    #[error("{} is not an ELF file", file.display())]
    NotElf { file: PathBuf },
    #[error("{} is an ELF file for machine {machine}, which has no Debian architecture here", file.display())]
    UnknownMachine { file: PathBuf, machine: u16 },
    #[error("cannot run {program} (apt-get install {package}): {source}")]
    NoProgram {
        program: &'static str,
        package: &'static str,
        source: std::io::Error,
    },
    #[error("{program} failed: {stderr}")]
    Failed {
        program: &'static str,
        stderr: String,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PackageError {
    let path = path.to_path_buf();
    move |source| PackageError::Io {
        action,
        path,
        source,
    }
}

/// What a package is made of: its control fields and its files.
#[derive(Debug, Clone)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub depends: String,
    pub recommends: Option<String>,
    pub maintainer: String,
    pub description: String,
    /// Files by their path in the installed system (no leading `/`): content and mode.
    pub files: Vec<(String, Vec<u8>, u32)>,
    /// Maintainer scripts (`postinst`, `prerm`, ...) and their text.
    pub scripts: Vec<(&'static str, String)>,
    /// The RPM's Requires.
    pub rpm_requires: Vec<String>,
    /// The RPM's scriptlets (`post`, `preun`) and their text.
    pub rpm_scripts: Vec<(&'static str, String)>,
    /// Directories the package owns even when empty (the RPM lists them with `%dir`).
    pub rpm_dirs: Vec<String>,
}

/// The package of livepatch module `module`, for the release of its vermagic.
pub fn livepatch_package(
    module: &Path,
    version: &str,
    maintainer: &str,
) -> Result<Package, PackageError> {
    let data = std::fs::read(module).map_err(io("read", module))?;
    let inspection = inspect::inspect(&module.display().to_string(), &data)?;
    if !inspection.livepatch {
        return Err(PackageError::NotLivepatch {
            file: module.to_path_buf(),
        });
    }
    let release = inspection
        .vermagic
        .split_whitespace()
        .next()
        .ok_or_else(|| PackageError::NoRelease {
            file: module.to_path_buf(),
        })?
        .to_string();
    let architecture = architecture(module, &data)?;
    check_version(version)?;
    // livepatch_foo (the kernel's name) or livepatch-foo (the file's): the package says foo.
    let short = inspection
        .module
        .trim_start_matches("livepatch")
        .trim_start_matches(['-', '_'])
        .replace('_', "-");
    let short = if short.is_empty() {
        inspection.module.replace('_', "-")
    } else {
        short
    };
    let name = format!("kpatch-rs-patch-{short}-{release}");
    check_name(&name)?;
    let file_name = format!("{}.ko", inspection.module.replace('_', "-"));
    let installed = format!("{MODULE_ROOT}/{release}/{file_name}");
    let kernel = format!("linux-image-{release}");
    Ok(Package {
        name,
        version: version.to_string(),
        architecture,
        depends: format!("{kernel} | {kernel}-unsigned, {TOOL_PACKAGE}"),
        recommends: None,
        maintainer: maintainer.to_string(),
        description: format!(
            "livepatch {short} for Linux {release}\n \
             Built by kpatch-rs. kpatch-rs.service loads it at boot when the running kernel\n \
             is {release}, unless the kernel command line says kpatch.enable=0;\n \
             `kpatch-rs load {installed}` loads it now."
        ),
        files: vec![(installed.trim_start_matches('/').to_string(), data, 0o644)],
        scripts: vec![(
            "prerm",
            livepatch_prerm(&release, &inspection.module, "\"$1\" = remove"),
        )],
        rpm_requires: vec![
            format!("kernel-uname-r = {release}"),
            TOOL_PACKAGE.to_string(),
        ],
        rpm_scripts: vec![(
            "preun",
            livepatch_prerm(&release, &inspection.module, "\"$1\" = 0"),
        )],
        rpm_dirs: vec![format!("{MODULE_ROOT}/{release}")],
    })
}

/// Before the package goes (not on an upgrade): its livepatch is unloaded if this kernel
/// has it, and a failed unload keeps the package, so files and kernel stay in step.
/// `removing` is the shell test that says the package goes: dpkg's and rpm's differ.
fn livepatch_prerm(release: &str, module: &str, removing: &str) -> String {
    let sysfs = module.replace('-', "_");
    format!(
        "#!/bin/sh\n\
         set -e\n\
         if [ {removing} ] && [ \"$(uname -r)\" = '{release}' ] && \\\n   \
         [ -d /sys/kernel/livepatch/{sysfs} ]; then\n    \
         kpatch-rs unload {sysfs}\n\
         fi\n"
    )
}

/// The tool's package: `binary` as /usr/bin/kpatch-rs and the boot unit, enabled on
/// install and disabled on removal.
pub fn tool_package(
    binary: &Path,
    version: &str,
    maintainer: &str,
) -> Result<Package, PackageError> {
    let data = std::fs::read(binary).map_err(io("read", binary))?;
    let architecture = architecture(binary, &data)?;
    check_version(version)?;
    let script = |when: &str, verb: &str| {
        format!(
            "#!/bin/sh\nset -e\nif [ {when} ]; then\n    \
             if command -v systemctl >/dev/null 2>&1; then\n        \
             systemctl {verb} kpatch-rs.service\n    \
             fi\n\
             fi\n"
        )
    };
    Ok(Package {
        name: TOOL_PACKAGE.to_string(),
        version: version.to_string(),
        architecture,
        depends: "libc6".to_string(),
        recommends: Some("systemd".to_string()),
        maintainer: maintainer.to_string(),
        description: "load livepatches built by kpatch-rs at boot\n \
             The kpatch-rs command and kpatch-rs.service, which loads the livepatch modules\n \
             installed under /var/lib/kpatch-rs/RELEASE/ for the running kernel at boot,\n \
             unless the kernel command line says kpatch.enable=0."
            .to_string(),
        files: vec![
            ("usr/bin/kpatch-rs".to_string(), data, 0o755),
            (UNIT_PATH.to_string(), UNIT.as_bytes().to_vec(), 0o644),
        ],
        scripts: vec![
            ("postinst", script("\"$1\" = configure", "enable")),
            ("prerm", script("\"$1\" = remove", "disable")),
        ],
        rpm_requires: Vec::new(),
        // rpm's $1: 1 on a first install, 0 when the last version goes.
        rpm_scripts: vec![
            ("post", script("\"$1\" = 1", "enable")),
            ("preun", script("\"$1\" = 0", "disable")),
        ],
        rpm_dirs: vec![MODULE_ROOT.to_string()],
    })
}

/// The Debian architecture of an ELF file, from its machine field.
fn architecture(file: &Path, data: &[u8]) -> Result<String, PackageError> {
    if data.len() < 20 || &data[..4] != b"\x7fELF" {
        return Err(PackageError::NotElf {
            file: file.to_path_buf(),
        });
    }
    let machine = if data[5] == 2 {
        u16::from_be_bytes([data[18], data[19]])
    } else {
        u16::from_le_bytes([data[18], data[19]])
    };
    let little = data[5] == 1;
    Ok(match (machine, little) {
        (62, _) => "amd64",
        (183, _) => "arm64",
        (243, _) => "riscv64",
        (21, true) => "ppc64el",
        (22, _) => "s390x",
        (3, _) => "i386",
        _ => {
            return Err(PackageError::UnknownMachine {
                file: file.to_path_buf(),
                machine,
            })
        }
    }
    .to_string())
}

fn check_name(name: &str) -> Result<(), PackageError> {
    let valid = name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    if valid {
        Ok(())
    } else {
        Err(PackageError::BadName {
            name: name.to_string(),
        })
    }
}

fn check_version(version: &str) -> Result<(), PackageError> {
    let valid = version.starts_with(|c: char| c.is_ascii_digit())
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+~-".contains(c));
    if valid {
        Ok(())
    } else {
        Err(PackageError::BadVersion {
            version: version.to_string(),
        })
    }
}

impl Package {
    /// The .deb's file name: NAME_VERSION_ARCH.deb.
    pub fn deb_name(&self) -> String {
        format!("{}_{}_{}.deb", self.name, self.version, self.architecture)
    }

    /// The control file.
    pub fn control(&self) -> String {
        let installed_kib: usize = self
            .files
            .iter()
            .map(|(_, data, _)| data.len().div_ceil(1024))
            .sum();
        let mut text = String::new();
        let _ = writeln!(text, "Package: {}", self.name);
        let _ = writeln!(text, "Version: {}", self.version);
        let _ = writeln!(text, "Architecture: {}", self.architecture);
        let _ = writeln!(text, "Maintainer: {}", self.maintainer);
        let _ = writeln!(text, "Installed-Size: {installed_kib}");
        let _ = writeln!(text, "Depends: {}", self.depends);
        if let Some(recommends) = &self.recommends {
            let _ = writeln!(text, "Recommends: {recommends}");
        }
        let _ = writeln!(text, "Section: kernel");
        let _ = writeln!(text, "Priority: optional");
        let _ = writeln!(text, "Description: {}", self.description);
        text
    }

    /// Builds the .deb into `out_dir` and returns its path.
    pub fn build_deb(&self, out_dir: &Path) -> Result<PathBuf, PackageError> {
        std::fs::create_dir_all(out_dir).map_err(io("create", out_dir))?;
        let epoch = source_date_epoch();
        let staging = out_dir.join(format!(".{}.staging-{}", self.name, std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        let result = self.stage(&staging, epoch).and_then(|()| {
            let deb = out_dir.join(self.deb_name());
            let args = [
                "--root-owner-group".to_string(),
                "-Zgzip".to_string(),
                "-z9".to_string(),
                "--threads-max=1".to_string(),
                "--build".to_string(),
                staging.display().to_string(),
                deb.display().to_string(),
            ];
            run_program("dpkg-deb", "dpkg", &args, epoch)?;
            Ok(deb)
        });
        let _ = std::fs::remove_dir_all(&staging);
        result
    }

    /// The RPM's architecture, from the Debian one.
    pub fn rpm_architecture(&self) -> &str {
        match self.architecture.as_str() {
            "amd64" => "x86_64",
            "arm64" => "aarch64",
            "ppc64el" => "ppc64le",
            "i386" => "i686",
            other => other,
        }
    }

    /// The .rpm's file name: NAME-VERSION-1.ARCH.rpm.
    pub fn rpm_name(&self) -> String {
        format!(
            "{}-{}-1.{}.rpm",
            self.name,
            self.version.replace('-', "_"),
            self.rpm_architecture()
        )
    }

    /// The spec `rpmbuild -bb` builds, its `%install` copying the staged tree `tree`.
    pub fn rpm_spec(&self, tree: &Path) -> String {
        let (summary, body) = self
            .description
            .split_once('\n')
            .unwrap_or((&self.description, ""));
        let body: Vec<&str> = body.lines().map(|line| line.trim_start()).collect();
        let mut text = String::new();
        for line in [
            "%global debug_package %{nil}",
            "%global __os_install_post %{nil}",
            "%global _build_id_links none",
            "%global _binary_payload w9.gzdio",
            "%global use_source_date_epoch_as_buildtime 1",
            "%global clamp_mtime_to_source_epoch 1",
            "%global _buildhost kpatch-rs",
        ] {
            let _ = writeln!(text, "{line}");
        }
        let _ = writeln!(text, "Name: {}", self.name);
        // rpm takes no `-` in a version: dpkg's revision separator becomes `_`.
        let _ = writeln!(text, "Version: {}", self.version.replace('-', "_"));
        let _ = writeln!(text, "Release: 1");
        let _ = writeln!(text, "Summary: {summary}");
        let _ = writeln!(text, "License: GPL-2.0-only");
        let _ = writeln!(text, "Packager: {}", self.maintainer);
        let _ = writeln!(text, "BuildArch: {}", self.rpm_architecture());
        for requires in &self.rpm_requires {
            let _ = writeln!(text, "Requires: {requires}");
        }
        let _ = writeln!(text, "\n%description\n{}\n", body.join("\n"));
        let _ = writeln!(
            text,
            "%install\nmkdir -p %{{buildroot}}\ncp -a '{}'/. %{{buildroot}}/\n",
            tree.display()
        );
        let _ = writeln!(text, "%files");
        for dir in &self.rpm_dirs {
            let _ = writeln!(text, "%dir %attr(0755,root,root) {dir}");
        }
        for (path, _, mode) in &self.files {
            let _ = writeln!(text, "%attr({mode:04o},root,root) /{path}");
        }
        for (name, script) in &self.rpm_scripts {
            let body = script.strip_prefix("#!/bin/sh\n").unwrap_or(script);
            let _ = writeln!(text, "\n%{name}\n{}", body.trim_end());
        }
        text
    }

    /// Builds the .rpm into `out_dir` with rpmbuild and returns its path.
    pub fn build_rpm(&self, out_dir: &Path) -> Result<PathBuf, PackageError> {
        std::fs::create_dir_all(out_dir).map_err(io("create", out_dir))?;
        // rpmbuild runs %install in a directory of its own.
        let out_dir = &std::path::absolute(out_dir).map_err(io("resolve", out_dir))?;
        let epoch = source_date_epoch();
        let staging = out_dir.join(format!(".{}.rpm-{}", self.name, std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        let result = (|| {
            let tree = staging.join("tree");
            self.stage_files(&tree, epoch)?;
            let spec = staging.join(format!("{}.spec", self.name));
            std::fs::write(&spec, self.rpm_spec(&tree)).map_err(io("write", &spec))?;
            let top = staging.join("top");
            let define = |name: &str, value: &Path| format!("{name} {}", value.display());
            let filename = "_rpmfilename %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm";
            let args = vec![
                "-bb".to_string(),
                "--quiet".to_string(),
                "--target".to_string(),
                self.rpm_architecture().to_string(),
                "--define".to_string(),
                define("_topdir", &top),
                "--define".to_string(),
                define("_rpmdir", out_dir),
                "--define".to_string(),
                filename.to_string(),
                spec.display().to_string(),
            ];
            run_program("rpmbuild", "rpm", &args, epoch)?;
            let rpm = out_dir.join(self.rpm_name());
            if !rpm.is_file() {
                return Err(PackageError::Failed {
                    program: "rpmbuild",
                    stderr: format!("it wrote no {}", rpm.display()),
                });
            }
            Ok(rpm)
        })();
        let _ = std::fs::remove_dir_all(&staging);
        result
    }

    /// The package's files alone under `tree`, with fixed modes and mtimes.
    fn stage_files(&self, tree: &Path, epoch: u64) -> Result<(), PackageError> {
        let mut files = self.clone();
        files.scripts.clear();
        files.stage_tree(tree, epoch, false)
    }

    fn stage(&self, staging: &Path, epoch: u64) -> Result<(), PackageError> {
        self.stage_tree(staging, epoch, true)
    }

    fn stage_tree(&self, staging: &Path, epoch: u64, control: bool) -> Result<(), PackageError> {
        let mut written = Vec::new();
        let mut write = |relative: &str, data: &[u8], mode: u32| -> Result<(), PackageError> {
            let path = staging.join(relative);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io("create", parent))?;
            }
            std::fs::write(&path, data).map_err(io("write", &path))?;
            set_mode(&path, mode)?;
            written.push(path);
            Ok(())
        };
        if control {
            write("DEBIAN/control", self.control().as_bytes(), 0o644)?;
            for (name, text) in &self.scripts {
                write(&format!("DEBIAN/{name}"), text.as_bytes(), 0o755)?;
            }
        }
        for (path, data, mode) in &self.files {
            write(path, data, *mode)?;
        }
        // Directories too get a fixed mode and mtime, deepest first so that setting a child's
        // time does not change its parent's afterwards.
        let mut dirs = Vec::new();
        let mut leaves = Vec::new();
        for dir in &self.rpm_dirs {
            let path = staging.join(dir.trim_start_matches('/'));
            std::fs::create_dir_all(&path).map_err(io("create", &path))?;
            leaves.push(path.join("child"));
        }
        for file in written.iter().chain(&leaves) {
            let mut dir = file.parent();
            while let Some(d) = dir {
                if !d.starts_with(staging) {
                    break;
                }
                if !dirs.contains(&d.to_path_buf()) {
                    dirs.push(d.to_path_buf());
                }
                dir = d.parent();
            }
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(epoch);
        for path in written.iter().chain(&dirs) {
            if dirs.contains(path) {
                set_mode(path, 0o755)?;
            }
            let file = std::fs::File::open(path).map_err(io("open", path))?;
            file.set_modified(time)
                .map_err(io("set the time of", path))?;
        }
        Ok(())
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), PackageError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io("set the mode of", path))
}

/// `SOURCE_DATE_EPOCH`, else 0: every mtime and timestamp in a package.
fn source_date_epoch() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

/// Runs the packager (`dpkg-deb`, `rpmbuild`, from Debian package `package`); its failure
/// and stderr become a [`PackageError`].
#[allow(clippy::disallowed_methods)] // packaging is the packager's job, as Kbuild's is kbuild.rs's
fn run_program(
    program: &'static str,
    package: &'static str,
    args: &[String],
    epoch: u64,
) -> Result<(), PackageError> {
    let output = Command::new(program)
        .args(args)
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .output()
        .map_err(|source| PackageError::NoProgram {
            program,
            package,
            source,
        })?;
    if !output.status.success() {
        let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        if stderr.is_empty() {
            stderr = String::from_utf8_lossy(&output.stdout).trim().to_string();
        }
        return Err(PackageError::Failed { program, stderr });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_versions_are_checked() {
        assert!(check_name("kpatch-rs-patch-foo-6.12.117+deb12-amd64").is_ok());
        assert!(matches!(
            check_name("kpatch-rs-patch-foo-6.1.0_Custom"),
            Err(PackageError::BadName { .. })
        ));
        assert!(check_version("1").is_ok());
        assert!(check_version("2.0~rc1-3").is_ok());
        assert!(matches!(
            check_version("v1"),
            Err(PackageError::BadVersion { .. })
        ));
        assert!(matches!(
            check_version("1 2"),
            Err(PackageError::BadVersion { .. })
        ));
    }

    #[test]
    fn the_architecture_is_the_elf_machine() {
        let mut header = vec![0u8; 64];
        header[..4].copy_from_slice(b"\x7fELF");
        header[4] = 2;
        header[5] = 1;
        header[18] = 62;
        assert_eq!(
            architecture(Path::new("x"), &header).expect("an ELF header"),
            "amd64"
        );
        header[18] = 183;
        assert_eq!(
            architecture(Path::new("x"), &header).expect("an ELF header"),
            "arm64"
        );
        header[18] = 99;
        assert!(matches!(
            architecture(Path::new("x"), &header),
            Err(PackageError::UnknownMachine { machine: 99, .. })
        ));
        assert!(architecture(Path::new("x"), b"#!/bin/sh\n").is_err());
    }

    #[test]
    fn the_unit_loads_at_boot_unless_the_command_line_says_no() {
        assert!(UNIT.contains("ConditionKernelCommandLine=!kpatch.enable=0\n"));
        assert!(UNIT.contains("Type=oneshot\n"));
        assert!(UNIT.contains("RemainAfterExit=yes\n"));
        assert!(UNIT.contains("ExecStart=/usr/bin/kpatch-rs load --all\n"));
    }

    #[test]
    fn the_prerm_unloads_only_on_removal_of_the_running_release() {
        let script = livepatch_prerm(
            "6.12.117+deb12-amd64",
            "livepatch_cmdline",
            "\"$1\" = remove",
        );
        assert!(script.contains("\"$1\" = remove"));
        assert!(script.contains("= '6.12.117+deb12-amd64'"));
        assert!(script.contains("kpatch-rs unload livepatch_cmdline\n"));
    }
}
