//! `kpatch-rs package --deb`: a Debian package of a livepatch module for exactly its kernel
//! release, or (`--tool`) of this kpatch-rs binary and the unit that loads livepatches at boot.

use std::path::PathBuf;

use kpatch_build::exit;
use kpatch_build::package;

#[derive(Debug, clap::Args)]
pub struct PackageArgs {
    /// Make a Debian package (.deb) with dpkg-deb; the only format so far.
    #[arg(long, required = true)]
    pub deb: bool,
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

pub fn run(args: &PackageArgs, tool_version: &str) -> anyhow::Result<u8> {
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
            package::tool_package(
                &binary,
                args.package_version.as_deref().unwrap_or(tool_version),
                &args.maintainer,
            )
            .map_err(plain)?
        }
    };
    let deb = package.build_deb(&args.output).map_err(plain)?;
    println!("{}", deb.display());
    Ok(exit::SUCCESS)
}
