//! The `kpatch-rs` command line: parses arguments, calls the library, maps results to exit codes.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cli::print_error;
use kpatch_build::build::inputs::InputError;
use kpatch_build::build::sign::SigningKey;
use kpatch_build::build::{BuildError, BuildOptions, SymbolSource};

mod cli;

/// `--version`: the crate's version and the commit it was built from (`build.rs`).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("KPATCH_RS_COMMIT"),
    ")"
);

/// The examples under `kpatch-rs build --help`.
const BUILD_EXAMPLES: &str = "\
Examples:
  kpatch-rs build -s linux -v build/vmlinux fix.patch
      a livepatch-fix.ko for every klp object fix.patch touches
  kpatch-rs build -s linux -v build/vmlinux -t binfmt_misc fix.patch
      only the part of fix.patch in module binfmt_misc; the rest is reported as skipped
  kpatch-rs build -s linux -v build/vmlinux --oot-module /lib/modules/$(uname -r)/extra/foo.ko \\
      --oot-module-src foo-1.2 foo.patch
      foo.patch applies to the out-of-tree module's source foo-1.2, the klp object is foo";

#[derive(Debug, Parser)]
#[command(
    name = "kpatch-rs",
    version = VERSION,
    about = "Build Linux kernel livepatch modules from source diffs"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Diff an original and a patched object (create-diff-object): report changed and new
    /// functions and write an object holding them and what they need.
    Diff(cli::diff::DiffArgs),
    /// Build a livepatch module from patch files against a kernel source tree.
    #[command(after_help = BUILD_EXAMPLES)]
    Build(Box<BuildArgs>),
    /// Build the patch sets of a manifest for its kernels: jobs in parallel, a log per job,
    /// one JSON summary; `--shard I/N` runs a part, `--merge` joins the parts' summaries.
    Batch(cli::batch::BatchArgs),
    /// Show a livepatch module's objects, functions, sympos and livepatch relocations.
    Inspect(InspectArgs),
    /// Load a livepatch module and wait for its transition; a transition that does not
    /// finish is reversed and the tasks that held it are named.
    Load(cli::load::LoadArgs),
    /// Disable a livepatch, wait for its transition and remove its module.
    Unload(cli::load::UnloadArgs),
    /// Show every livepatch: enabled, in transition, stack order, what it patches.
    List(cli::load::ListArgs),
    /// Show a livepatch module's description and whether it is loaded and enabled.
    Info(cli::load::InfoArgs),
    /// Make a Debian package of a livepatch module for exactly its kernel release, or of
    /// kpatch-rs itself with the unit that loads installed livepatches at boot (`--tool`).
    Package(cli::package::PackageArgs),
    /// Check the Rust livepatch core.
    Core {
        #[command(subcommand)]
        command: CoreCommand,
    },
    /// Print the completion script for a shell (bash, zsh, fish, elvish, powershell), e.g.
    /// `kpatch-rs completions bash > /usr/share/bash-completion/completions/kpatch-rs`.
    Completions { shell: clap_complete::Shell },
    /// Write the manual pages (kpatch-rs.1, kpatch-rs-build.1, ...) into DIR.
    #[command(hide = true)]
    Man { dir: std::path::PathBuf },
}

#[derive(Debug, Subcommand)]
enum CoreCommand {
    /// Run every interleaving of a scenario on the model kernel and check the invariants;
    /// exit 0 when all hold, 4 with the shortest violating trace.
    Explore {
        /// Bind objects the way the kernel did before the klp_alive fix.
        #[arg(long)]
        pre_fix: bool,
        /// A built-in scenario (seed-stacking, seed-going, two-modules, stress) or a scenario file.
        scenario: String,
    },
}

#[derive(Debug, clap::Args)]
struct InspectArgs {
    /// The module (.ko) to read.
    module: std::path::PathBuf,
    /// Print the report as one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct BuildArgs {
    /// The kernel source tree (clean: configured out of tree). It is never modified.
    #[arg(short = 's', long)]
    sourcedir: std::path::PathBuf,
    /// The running kernel's config (default: .config beside --vmlinux).
    #[arg(short = 'c', long)]
    config: Option<std::path::PathBuf>,
    /// The running kernel's vmlinux, with its symbol table (a distribution's debug package).
    #[arg(
        short = 'v',
        long,
        required_unless_present = "system_map",
        conflicts_with = "system_map"
    )]
    vmlinux: Option<std::path::PathBuf>,
    /// The running kernel's System.map (or a copy of /proc/kallsyms), instead of --vmlinux;
    /// a duplicated local symbol is then told apart by its neighbours.
    #[arg(long)]
    system_map: Option<std::path::PathBuf>,
    /// Where the .ko files of patched modules are, uncompressed (default: beside the symbols).
    #[arg(long)]
    modules: Option<std::path::PathBuf>,
    /// The running kernel's release, `uname -r` (default: include/config/kernel.release beside
    /// --symvers, as a distribution's headers package has it).
    #[arg(long)]
    kernel_release: Option<String>,
    /// The kernel's Module.symvers (default: beside --vmlinux).
    #[arg(long)]
    symvers: Option<std::path::PathBuf>,
    /// The module's name: livepatch-NAME.ko (default: the first patch's file name).
    #[arg(short = 'n', long)]
    name: Option<String>,
    /// Parallel jobs for the kernel build (default: the CPUs this process may use).
    #[arg(short = 'j', long, default_value_t = default_jobs(), hide_default_value = true)]
    jobs: usize,
    /// Where to write the module.
    #[arg(short = 'o', long, default_value = ".")]
    output: std::path::PathBuf,
    /// Stack on earlier livepatches instead of replacing them (replacing is the default).
    #[arg(short = 'R', long)]
    no_replace: bool,
    /// A make variable for every Kbuild run, VAR=VALUE, repeatable: the toolchain the running
    /// kernel was built with where it is not the default, such as RUSTC=/usr/bin/rustc and
    /// BINDGEN=/path/to/bindgen for a kernel with Rust code.
    #[arg(long = "make-var", value_name = "VAR=VALUE", value_parser = parse_make_var)]
    make_vars: Vec<String>,
    /// Build with this machine's compiler even when the kernel's config says another built
    /// the kernel (its CONFIG_CC_VERSION_TEXT): only when you know the difference is harmless.
    #[arg(long)]
    skip_compiler_check: bool,
    /// Run every compile and link in DIR, a root file system of the kernel's release with its
    /// compiler and build dependencies (made with debootstrap): for a kernel built by another
    /// compiler than this machine's, such as a Debian 13 kernel (gcc 14) on Debian 12. The
    /// source tree and the cache are bind-mounted into it at their own paths, the tree
    /// read-only, in a private mount namespace (a user's own user namespace when not root);
    /// the compiler check then compares the root's compiler.
    /// Example: kpatch-rs build --chroot /srv/trixie -s linux-6.12 ... fix.patch
    #[arg(long, value_name = "DIR")]
    chroot: Option<std::path::PathBuf>,
    /// Build even though the patch changes the layout of TYPE (`struct foo`, `union bar`, or
    /// a typedef's name), which kpatch-rs otherwise refuses: only when no object of that
    /// type can be live when the patch loads. Repeat for more types; the report lists each.
    #[arg(long = "allow-layout-change", value_name = "TYPE")]
    allowed_layout_changes: Vec<String>,
    /// Sign the module with this private key (a PEM file, or a PKCS#11 URI), as the kernel's
    /// scripts/sign-file takes it, with the hash of the config's CONFIG_MODULE_SIG_HASH.
    #[arg(long, value_name = "KEY", requires = "sign_cert")]
    sign_key: Option<String>,
    /// The X.509 certificate (PEM or DER) of --sign-key.
    #[arg(long, value_name = "CERT", requires = "sign_key")]
    sign_cert: Option<std::path::PathBuf>,
    /// Build only this klp object of the patch: `vmlinux` or a module's name (`binfmt_misc`).
    /// Repeatable. Changed units of other klp objects are compiled but left out of the
    /// module, each reported as skipped with a warning; a target the patches do not touch is
    /// an error that lists the ones they do.
    #[arg(short = 't', long = "target", value_name = "OBJECT")]
    targets: Vec<String>,
    /// Patch this out-of-tree module (its .ko as it runs, with symbols) instead of the
    /// kernel: the patches apply to --oot-module-src, built with `make M=` against the
    /// kernel. Refused (exit 2) when the .ko is stripped, is of another vermagic, or does not
    /// define the functions of the original build.
    #[arg(long, value_name = "FILE.ko", requires = "oot_module_src")]
    oot_module: Option<std::path::PathBuf>,
    /// The out-of-tree module's source directory (with its Makefile or Kbuild), as
    /// --oot-module was built from; it is copied, never modified.
    #[arg(long, value_name = "DIR", requires = "oot_module")]
    oot_module_src: Option<std::path::PathBuf>,
    /// Print the report as one JSON document on stdout.
    #[arg(long)]
    json: bool,
    /// Where build directories are kept between runs (default: $XDG_CACHE_HOME/kpatch-rs/build).
    #[arg(long)]
    cache_dir: Option<std::path::PathBuf>,
    /// The patch files, applied in order with `patch -p1`.
    #[arg(required = true)]
    patches: Vec<std::path::PathBuf>,
}

fn main() -> ExitCode {
    // clap exits 2 on a usage error, which here means "cannot be live patched": a script must
    // be able to tell the two apart, so a usage error is an input error (1).
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            if error.use_stderr() {
                print_usage_error_json(&error);
            }
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(kpatch_build::exit::ERROR)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        None => {
            use clap::CommandFactory;
            // Printing help can only fail on a closed stdout, where there is no one to tell.
            let _ = Cli::command().print_help();
            ExitCode::from(kpatch_build::exit::ERROR)
        }
        Some(Command::Core {
            command: CoreCommand::Explore { pre_fix, scenario },
        }) => match cli::core_explore::run(&scenario, pre_fix, &mut std::io::stdout()) {
            Ok(code) => ExitCode::from(code),
            Err(error) => {
                print_error(&error);
                ExitCode::from(kpatch_build::exit::ERROR)
            }
        },
        Some(Command::Completions { shell }) => {
            use clap::CommandFactory;
            let result = cli::docs::completions(shell, &mut Cli::command(), &mut std::io::stdout());
            exit_code(result.map(|()| kpatch_build::exit::SUCCESS))
        }
        Some(Command::Man { dir }) => {
            use clap::CommandFactory;
            let result = cli::docs::man_pages(Cli::command(), &dir).map(|pages| {
                for page in pages {
                    println!("{}", dir.join(page).display());
                }
                kpatch_build::exit::SUCCESS
            });
            exit_code(result)
        }
        Some(Command::Diff(args)) => exit_code(cli::diff::run(&args)),
        Some(Command::Build(args)) => run_build(*args),
        Some(Command::Batch(args)) => {
            exit_code(cli::batch::run(&args, &format!("kpatch-rs {VERSION}")))
        }
        Some(Command::Inspect(args)) => exit_code(run_inspect(&args)),
        Some(Command::Load(args)) => exit_code(cli::load::load(&args)),
        Some(Command::Unload(args)) => exit_code(cli::load::unload(&args)),
        Some(Command::List(args)) => exit_code(cli::load::list(&args)),
        Some(Command::Info(args)) => exit_code(cli::load::info(&args)),
        Some(Command::Package(args)) => {
            use clap::CommandFactory;
            exit_code(cli::package::run(
                &args,
                env!("CARGO_PKG_VERSION"),
                Cli::command(),
            ))
        }
    }
}

/// A usage error of `kpatch-rs build --json` is an outcome too: a pipeline that asked for
/// JSON gets its document on stdout (the message also goes to stderr, as always).
fn print_usage_error_json(error: &clap::Error) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("build") || !args.iter().any(|a| a == "--json") {
        return;
    }
    let message = error.to_string();
    let document = serde_json::json!({
        "outcome": "error",
        "exit_code": kpatch_build::exit::ERROR,
        "message": message.lines().next().unwrap_or_default().trim_start_matches("error: "),
        "refusals": [],
        "timings": [],
        "schema_version": kpatch_build::build::provenance::SCHEMA_VERSION,
        "tool": format!("kpatch-rs {VERSION}"),
        "kernel_release": null,
        "vermagic": null,
        "inputs": [],
        "output": null,
    });
    if let Ok(text) = serde_json::to_string_pretty(&document) {
        println!("{text}");
    }
}

fn exit_code(result: anyhow::Result<u8>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            print_error(&error);
            ExitCode::from(kpatch_build::exit::ERROR)
        }
    }
}

fn run_build(args: BuildArgs) -> ExitCode {
    use kpatch_build::build::provenance::{self, Provenance};
    let tool = format!("kpatch-rs {VERSION}");
    let mut timings = Vec::new();
    let (options, result) = match build_options(&args) {
        Ok(options) => {
            let result = kpatch_build::build::build_timed(&options, &mut timings);
            (Some(options), result)
        }
        Err(error) => (None, Err(BuildError::from(error))),
    };
    let describe = |module: Option<&std::path::Path>| match &options {
        Some(options) => provenance::describe(options, &tool, module),
        None => Provenance {
            schema_version: provenance::SCHEMA_VERSION,
            tool: tool.clone(),
            kernel_release: None,
            vermagic: None,
            inputs: Vec::new(),
            output: None,
        },
    };
    match result {
        Ok(mut report) => {
            if args.json {
                report.provenance = Some(describe(Some(&report.module)));
            }
            let stdout = &mut std::io::stdout().lock();
            let written = if args.json {
                report.write_json(stdout)
            } else {
                report.write_human(stdout)
            };
            match written {
                Ok(()) => ExitCode::from(kpatch_build::exit::SUCCESS),
                Err(error) => {
                    print_error(&format!("cannot print the report: {error}"));
                    ExitCode::from(kpatch_build::exit::ERROR)
                }
            }
        }
        Err(error) => {
            if args.json {
                // A pipeline reads the outcome from stdout whatever it is; the message still
                // goes to stderr for the person reading the log.
                let _ = error.write_json(&mut std::io::stdout().lock(), &describe(None), &timings);
            }
            print_error(&error);
            ExitCode::from(error.exit_code())
        }
    }
}

/// The build's options from the command line, with the defaults filled in.
fn build_options(args: &BuildArgs) -> Result<BuildOptions, InputError> {
    let symbols = match (&args.vmlinux, &args.system_map) {
        (Some(vmlinux), _) => SymbolSource::Vmlinux(vmlinux.clone()),
        (None, Some(map)) => SymbolSource::SystemMap(map.clone()),
        (None, None) => return Err(InputError::NoSymbolSource),
    };
    let symbol_file = args.vmlinux.as_ref().or(args.system_map.as_ref());
    let beside_vmlinux = |file: &str| {
        symbol_file
            .and_then(|path| path.parent())
            .unwrap_or(std::path::Path::new("."))
            .join(file)
    };
    let name = args.name.clone().unwrap_or_else(|| {
        let stem = args
            .patches
            .first()
            .and_then(|p| p.file_stem())
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        stem.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    });
    let cache = match &args.cache_dir {
        Some(dir) => dir.clone(),
        None => kpatch_support::cache_root()
            .map(|root| root.join("build"))
            .ok_or(InputError::NoCacheDir)?,
    };
    Ok(BuildOptions {
        sourcedir: args.sourcedir.clone(),
        config: args
            .config
            .clone()
            .unwrap_or_else(|| beside_vmlinux(".config")),
        symbols,
        modules: args.modules.clone(),
        kernel_release: args.kernel_release.clone(),
        symvers: args
            .symvers
            .clone()
            .unwrap_or_else(|| beside_vmlinux("Module.symvers")),
        name,
        jobs: args.jobs,
        output: args.output.clone(),
        patches: args.patches.clone(),
        replace: !args.no_replace,
        cache,
        make_vars: args.make_vars.clone(),
        skip_compiler_check: args.skip_compiler_check,
        allowed_layout_changes: args.allowed_layout_changes.clone(),
        chroot: args.chroot.clone(),
        targets: args.targets.clone(),
        oot_module: match (&args.oot_module, &args.oot_module_src) {
            (Some(ko), Some(source)) => Some(kpatch_build::build::oot::OotModule {
                ko: ko.clone(),
                source: source.clone(),
            }),
            _ => None,
        },
        signing_key: match (&args.sign_key, &args.sign_cert) {
            (Some(key), Some(cert)) => Some(SigningKey {
                key: key.clone(),
                cert: cert.clone(),
            }),
            _ => None,
        },
    })
}

/// A `--make-var`: `NAME=VALUE` with a make variable name (letters, digits, `_`).
/// `-j`'s default: the CPUs this process may run on (its affinity mask and cgroup quota).
fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn parse_make_var(text: &str) -> Result<String, String> {
    let Some((name, _)) = text.split_once('=') else {
        return Err(format!("`{text}` is not VAR=VALUE"));
    };
    let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!("`{name}` is not a make variable name"));
    }
    Ok(text.to_string())
}

fn run_inspect(args: &InspectArgs) -> anyhow::Result<u8> {
    use anyhow::Context;

    let data = std::fs::read(&args.module)
        .with_context(|| format!("cannot read {}", args.module.display()))?;
    let inspection = kpatch_build::inspect::inspect(&args.module.display().to_string(), &data)?;
    let stdout = &mut std::io::stdout().lock();
    if args.json {
        inspection.write_json(stdout)?;
    } else {
        inspection.write_human(stdout)?;
    }
    Ok(kpatch_build::exit::SUCCESS)
}
