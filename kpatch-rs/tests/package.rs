//! `kpatch-rs package --deb` on a module built against the project's cached 6.12 kernel:
//! the packages' files, control fields and maintainer scripts as dpkg-deb reads them back,
//! the same bytes from the same inputs, and a unit `systemd-analyze verify` accepts. Installing
//! the packages and loading at boot is `cargo xtask package-test`'s job.

#![allow(
    clippy::disallowed_methods,
    reason = "tests run the binary, dpkg-deb and systemd-analyze"
)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{fixture, kernel, stderr};

fn kpatch_rs(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kpatch-rs"))
        .args(args)
        .arg("--output")
        .arg(dir)
        .output()
        .expect("run kpatch-rs")
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let output = Command::new("dpkg-deb")
        .args(args)
        .arg(deb)
        .output()
        .expect("run dpkg-deb");
    assert!(output.status.success(), "dpkg-deb: {}", stderr(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The one path `kpatch-rs package` printed.
fn written(output: &Output) -> std::path::PathBuf {
    assert!(output.status.success(), "package: {}", stderr(output));
    let text = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one path on stdout: {text}");
    std::path::PathBuf::from(lines[0])
}

#[test]
fn a_livepatch_package_is_for_its_release_and_the_tool_package_has_the_unit() {
    let Some(kernel) = kernel() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let build = kernel
        .command(
            &dir.path().join("module"),
            &["--json"],
            &[fixture("cmdline.patch")],
        )
        .output()
        .expect("run kpatch-rs build");
    assert!(build.status.success(), "build: {}", stderr(&build));
    let report: serde_json::Value = serde_json::from_slice(&build.stdout).expect("json report");
    let release = report["kernel_release"]
        .as_str()
        .expect("the report's kernel release")
        .to_string();
    let module = dir.path().join("module/livepatch-cmdline.ko");
    let module_arg = module.to_str().expect("utf-8 path");

    let deb = written(&kpatch_rs(
        &["package", "--deb", module_arg],
        &dir.path().join("a"),
    ));
    let name = format!("kpatch-rs-patch-cmdline-{release}");
    assert_eq!(
        deb.file_name().and_then(|n| n.to_str()),
        Some(format!("{name}_1_amd64.deb").as_str())
    );
    assert_eq!(
        dpkg_deb(&["--field"], &deb).lines().next(),
        Some(format!("Package: {name}").as_str())
    );
    let depends = dpkg_deb(&["--field"], &deb)
        .lines()
        .find_map(|line| line.strip_prefix("Depends: ").map(str::to_string))
        .expect("a Depends field");
    assert_eq!(
        depends,
        format!("linux-image-{release} | linux-image-{release}-unsigned, kpatch-rs")
    );
    let contents = dpkg_deb(&["--contents"], &deb);
    let installed = format!("./var/lib/kpatch-rs/{release}/livepatch-cmdline.ko");
    let files: Vec<&str> = contents
        .lines()
        .filter(|line| line.starts_with('-'))
        .collect();
    assert_eq!(files.len(), 1, "{contents}");
    assert!(
        files[0].starts_with("-rw-r--r-- root/root") && files[0].ends_with(&installed),
        "{contents}"
    );
    let extracted = dir.path().join("extracted");
    let status = Command::new("dpkg-deb")
        .arg("--extract")
        .arg(&deb)
        .arg(&extracted)
        .status()
        .expect("run dpkg-deb");
    assert!(status.success());
    assert_eq!(
        std::fs::read(extracted.join(&installed[2..])).expect("the packaged module"),
        std::fs::read(&module).expect("the module"),
        "the package holds the module byte for byte"
    );
    let prerm = dpkg_deb(&["--info"], &deb);
    assert!(prerm.contains("prerm"), "{prerm}");
    let control = dir.path().join("control");
    let status = Command::new("dpkg-deb")
        .arg("--control")
        .arg(&deb)
        .arg(&control)
        .status()
        .expect("run dpkg-deb");
    assert!(status.success());
    let prerm = std::fs::read_to_string(control.join("prerm")).expect("prerm");
    assert!(prerm.contains(&format!("= '{release}'")), "{prerm}");
    assert!(
        prerm.contains("kpatch-rs unload livepatch_cmdline"),
        "{prerm}"
    );

    // The same module gives the same bytes, wherever and whenever it is packaged.
    let again = written(&kpatch_rs(
        &["package", "--deb", module_arg],
        &dir.path().join("b"),
    ));
    assert_eq!(
        std::fs::read(&deb).expect("first"),
        std::fs::read(&again).expect("second"),
        "packaging is deterministic"
    );

    // The tool package: the binary, the unit, and scripts that enable and disable it.
    let tool = written(&kpatch_rs(
        &["package", "--deb", "--tool"],
        &dir.path().join("a"),
    ));
    let contents = dpkg_deb(&["--contents"], &tool);
    assert!(contents.contains("-rwxr-xr-x root/root"), "{contents}");
    assert!(contents.contains("./usr/bin/kpatch-rs\n"), "{contents}");
    assert!(
        contents.contains("./usr/lib/systemd/system/kpatch-rs.service\n"),
        "{contents}"
    );
    let unpacked = dir.path().join("tool");
    let status = Command::new("dpkg-deb")
        .arg("--raw-extract")
        .arg(&tool)
        .arg(&unpacked)
        .status()
        .expect("run dpkg-deb");
    assert!(status.success());
    let unit_path = unpacked.join("usr/lib/systemd/system/kpatch-rs.service");
    let unit = std::fs::read_to_string(&unit_path).expect("the unit");
    for line in [
        "ConditionKernelCommandLine=!kpatch.enable=0",
        "Type=oneshot",
        "RemainAfterExit=yes",
        "ExecStart=/usr/bin/kpatch-rs load --all",
        "WantedBy=multi-user.target",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} in {unit}");
    }
    let postinst = std::fs::read_to_string(unpacked.join("DEBIAN/postinst")).expect("postinst");
    assert!(
        postinst.contains("systemctl enable kpatch-rs.service"),
        "{postinst}"
    );
    let prerm = std::fs::read_to_string(unpacked.join("DEBIAN/prerm")).expect("prerm");
    assert!(
        prerm.contains("systemctl disable kpatch-rs.service"),
        "{prerm}"
    );

    for page in ["kpatch-rs.1", "kpatch-rs-load.1", "kpatch-rs-package.1"] {
        assert!(
            contents.contains(&format!("./usr/share/man/man1/{page}\n")),
            "{page} in {contents}"
        );
    }

    // systemd-analyze reads the unit as systemd would, in a root holding the tool package
    // and this machine's own units (the targets the unit is ordered against).
    if Path::new("/usr/bin/systemd-analyze").exists() {
        let system = unpacked.join("usr/lib/systemd/system");
        for entry in std::fs::read_dir("/lib/systemd/system").expect("the system units") {
            let path = entry.expect("entry").path();
            let target = system.join(path.file_name().expect("a name"));
            if path.is_file() && !target.exists() {
                std::fs::copy(&path, &target).expect("copy a unit");
            }
        }
        let verify = Command::new("systemd-analyze")
            .arg("verify")
            .arg("--man=no")
            .arg(format!("--root={}", unpacked.display()))
            .arg(&unit_path)
            .output()
            .expect("run systemd-analyze");
        assert!(
            verify.status.success(),
            "systemd-analyze verify: {}{}",
            String::from_utf8_lossy(&verify.stdout),
            stderr(&verify)
        );
    } else {
        kpatch_support::skip_unless_ci("systemd-analyze is not installed");
    }
}

fn rpm_query(args: &[&str], rpm: &Path) -> String {
    let output = Command::new("rpm")
        .args(["-qp"])
        .args(args)
        .arg(rpm)
        .output()
        .expect("run rpm");
    assert!(output.status.success(), "rpm -qp: {}", stderr(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `--rpm`: the same module, the same tree, read back by rpm itself (installing an RPM is for
/// an RPM system; this is Debian).
#[test]
fn an_rpm_of_a_livepatch_requires_its_release_and_is_deterministic() {
    let Some(kernel) = kernel() else { return };
    if !Path::new("/usr/bin/rpmbuild").exists() {
        kpatch_support::skip_unless_ci("rpmbuild is not installed (apt-get install rpm)");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let build = kernel
        .command(
            &dir.path().join("module"),
            &["--json"],
            &[fixture("cmdline.patch")],
        )
        .output()
        .expect("run kpatch-rs build");
    assert!(build.status.success(), "build: {}", stderr(&build));
    let report: serde_json::Value = serde_json::from_slice(&build.stdout).expect("json report");
    let release = report["kernel_release"]
        .as_str()
        .expect("the release")
        .to_string();
    let module = dir.path().join("module/livepatch-cmdline.ko");
    let module_arg = module.to_str().expect("utf-8 path");
    let args = ["package", "--rpm", "--package-version", "2.0-1", module_arg];
    let rpm = written(&kpatch_rs(&args, &dir.path().join("a")));
    assert_eq!(
        rpm.file_name().and_then(|n| n.to_str()),
        Some(format!("kpatch-rs-patch-cmdline-{release}-2.0_1-1.x86_64.rpm").as_str())
    );
    let requires = rpm_query(&["--requires"], &rpm);
    assert!(
        requires
            .lines()
            .any(|l| l == format!("kernel-uname-r = {release}")),
        "{requires}"
    );
    assert!(requires.lines().any(|l| l == "kpatch-rs"), "{requires}");
    let files = rpm_query(&["--list", "-v"], &rpm);
    let installed = format!("/var/lib/kpatch-rs/{release}/livepatch-cmdline.ko");
    assert!(
        files.lines().any(|l| l.starts_with("-rw-r--r--")
            && l.contains(" root ")
            && l.ends_with(&installed)),
        "{files}"
    );
    let size = std::fs::metadata(&module)
        .expect("module")
        .len()
        .to_string();
    assert!(
        files.contains(&format!(" {size} ")),
        "the module is not stripped: {files}"
    );
    let scripts = rpm_query(&["--scripts"], &rpm);
    assert!(scripts.contains("\"$1\" = 0"), "{scripts}");
    assert!(
        scripts.contains("kpatch-rs unload livepatch_cmdline"),
        "{scripts}"
    );
    let again = written(&kpatch_rs(&args, &dir.path().join("b")));
    assert_eq!(
        std::fs::read(&rpm).expect("first"),
        std::fs::read(&again).expect("second"),
        "the RPM is deterministic"
    );

    let both = kpatch_rs(
        &["package", "--rpm", "--deb", "--tool"],
        &dir.path().join("tool"),
    );
    assert!(both.status.success(), "{}", stderr(&both));
    let paths: Vec<String> = String::from_utf8_lossy(&both.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(paths.len(), 2, "{paths:?}");
    let tool = Path::new(&paths[1]);
    let files = rpm_query(&["--list"], tool);
    for path in [
        "/usr/bin/kpatch-rs",
        "/usr/lib/systemd/system/kpatch-rs.service",
        "/var/lib/kpatch-rs",
    ] {
        assert!(files.lines().any(|l| l == path), "{path} in {files}");
    }
    let scripts = rpm_query(&["--scripts"], tool);
    assert!(
        scripts.contains("systemctl enable kpatch-rs.service"),
        "{scripts}"
    );
    assert!(
        scripts.contains("systemctl disable kpatch-rs.service"),
        "{scripts}"
    );
}

#[test]
fn bad_inputs_are_errors_not_packages() {
    let dir = tempfile::tempdir().expect("temp dir");
    let not_elf = dir.path().join("notes.ko");
    std::fs::write(&not_elf, "not a module").expect("write");
    let out = dir.path().join("out");
    let not_elf_arg = not_elf.to_str().expect("utf-8 path");
    for args in [
        vec!["package", "--deb", not_elf_arg],
        vec!["package", "--deb", "/nonexistent/livepatch-x.ko"],
        vec!["package", not_elf_arg],
        vec!["package", "--deb"],
    ] {
        let output = kpatch_rs(&args, &out);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains("error"),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    let bad_version = kpatch_rs(
        &["package", "--deb", "--tool", "--package-version", "v1"],
        &out,
    );
    assert_eq!(bad_version.status.code(), Some(1));
    assert!(
        stderr(&bad_version).contains("not a Debian version"),
        "{}",
        stderr(&bad_version)
    );
    assert!(
        !out.exists() || std::fs::read_dir(&out).expect("list").next().is_none(),
        "nothing is written on an error"
    );
}
