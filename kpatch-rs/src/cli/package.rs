//! `kpatch-rs package --deb|--rpm`: a Debian (or RPM) package of a livepatch module for exactly its kernel
//! release, or (`--tool`) of this kpatch-rs binary and the unit that loads livepatches at boot.

use std::path::{Path, PathBuf};

use anyhow::Context;

use kpatch_build::exit;
use kpatch_build::package;

#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("format").required(true).multiple(true).args(["deb", "rpm"]))]
pub struct PackageArgs {
    /// Make a Debian package (.deb) with dpkg-deb.
    #[arg(long)]
    pub deb: bool,
    /// Make an RPM package (.rpm) with rpmbuild; a livepatch's requires
    /// `kernel-uname-r = RELEASE`, as Fedora's and RHEL's kernel packages provide.
    #[arg(long)]
    pub rpm: bool,
    /// The livepatch module (.ko): its package installs it under
    /// /var/lib/kpatch-rs/RELEASE/ for the release of its vermagic and depends on
    /// linux-image-RELEASE and kpatch-rs.
    #[arg(required_unless_present = "tool", conflicts_with = "tool")]
    pub module: Option<PathBuf>,
    /// Package this kpatch-rs binary instead, with kpatch-rs.service (the `kpatch-rs` package
    /// every livepatch's package depends on).
    #[arg(long)]
    pub tool: bool,
    /// The package's version (default: 1 for a livepatch, kpatch-rs's own for --tool).
    #[arg(long, value_name = "VERSION")]
    pub package_version: Option<String>,
    /// The package's Maintainer field.
    #[arg(long, default_value = "kpatch-rs user <root@localhost>")]
    pub maintainer: String,
    /// Where to write the .deb.
    #[arg(short = 'o', long, default_value = ".")]
    pub output: PathBuf,
}

/// `command` is kpatch-rs's own command line, for the tool package's manual pages and bash
/// completions.
pub fn run(args: &PackageArgs, tool_version: &str, command: clap::Command) -> anyhow::Result<u8> {
    let plain = |error: package::PackageError| anyhow::Error::msg(error.to_string());
    let package = match &args.module {
        Some(module) => package::livepatch_package(
            module,
            args.package_version.as_deref().unwrap_or("1"),
            &args.maintainer,
        )
        .map_err(plain)?,
        None => {
            let binary = std::env::current_exe()?;
            let mut package = package::tool_package(
                &binary,
                args.package_version.as_deref().unwrap_or(tool_version),
                &args.maintainer,
            )
            .map_err(plain)?;
            package.files.extend(documentation(command, &args.output)?);
            package
        }
    };
    if args.deb {
        let deb = package.build_deb(&args.output).map_err(plain)?;
        println!("{}", deb.display());
    }
    if args.rpm {
        let rpm = package.build_rpm(&args.output).map_err(plain)?;
        println!("{}", rpm.display());
    }
    Ok(exit::SUCCESS)
}

/// The manual pages (generated into a scratch directory beside the output, then read back)
/// and the bash completions, as package files.
fn documentation(
    command: clap::Command,
    output: &Path,
) -> anyhow::Result<Vec<(String, Vec<u8>, u32)>> {
    let scratch = output.join(format!(".kpatch-rs-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let pages = super::docs::man_pages(command.clone(), &scratch);
    let mut files = Vec::new();
    let read = pages.and_then(|pages| {
        for page in pages {
            let path = scratch.join(&page);
            let data =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            files.push((format!("usr/share/man/man1/{page}"), data, 0o644));
        }
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&scratch);
    read?;
    let mut script = Vec::new();
    super::docs::completions(
        clap_complete::Shell::Bash,
        &mut command.clone(),
        &mut script,
    )?;
    files.push((
        "usr/share/bash-completion/completions/kpatch-rs".to_string(),
        script,
        0o644,
    ));
    files.sort();
    Ok(files)
}
