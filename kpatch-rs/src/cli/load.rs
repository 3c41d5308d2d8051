//! `kpatch-rs load|unload|list|info`: the command line over `kpatch_build::loader`. Progress
//! goes to stderr, results to stdout.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kpatch_build::exit;
use kpatch_build::loader::{self, Host, Livepatch, Loaded, LoaderError, Options};

/// A loader error for `print_error`: its message only, which already names the cause (the
/// chain of sources would repeat it).
fn plain(error: LoaderError) -> anyhow::Error {
    anyhow::Error::msg(error.to_string())
}

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// The livepatch module (.ko) to load.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub module: Option<PathBuf>,
    /// Load every livepatch installed for the running kernel, DIR/RELEASE/*.ko in name order
    /// (what kpatch-rs.service runs at boot); one that fails does not stop the others.
    #[arg(long)]
    pub all: bool,
    /// Where `--all` looks: the packages of `kpatch-rs package` install there.
    #[arg(long, value_name = "DIR", default_value = kpatch_build::package::MODULE_ROOT, requires = "all")]
    pub dir: PathBuf,
    /// Seconds the transition may take before it is reversed and the module removed.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub timeout: u64,
}

#[derive(Debug, clap::Args)]
pub struct UnloadArgs {
    /// The livepatch: its name (livepatch-foo or livepatch_foo) or its module file.
    pub livepatch: String,
    /// Seconds the transition may take before it is reversed (the patch then stays enabled).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub timeout: u64,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Print the livepatches as one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// A livepatch module file (.ko), or the name of a loaded livepatch.
    pub livepatch: String,
    /// Print the description and the state as one JSON document.
    #[arg(long)]
    pub json: bool,
}

fn options(timeout: u64) -> Options {
    Options {
        timeout: Duration::from_secs(timeout),
        ..Options::default()
    }
}

fn progress(message: &str) {
    eprintln!("{message}");
}

pub fn load(args: &LoadArgs) -> anyhow::Result<u8> {
    let host = Host::default();
    let Some(module) = &args.module else {
        return load_all(&host, args);
    };
    load_one(&host, module, args.timeout)?;
    Ok(exit::SUCCESS)
}

/// `load --all`: every module installed for the running release; the exit code is an error
/// when any failed, after trying the rest.
fn load_all(host: &Host, args: &LoadArgs) -> anyhow::Result<u8> {
    let release = host.release().map_err(plain)?;
    let modules = loader::installed(&args.dir, &release).map_err(plain)?;
    if modules.is_empty() {
        println!(
            "no livepatches installed for {release} in {}",
            args.dir.join(&release).display()
        );
        return Ok(exit::SUCCESS);
    }
    let mut failed = 0;
    for module in &modules {
        if let Err(error) = load_one(host, module, args.timeout) {
            crate::cli::print_error(&error);
            failed += 1;
        }
    }
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} livepatches for {release} did not load",
            modules.len()
        );
    }
    Ok(exit::SUCCESS)
}

fn load_one(host: &Host, module: &Path, timeout: u64) -> anyhow::Result<()> {
    match host
        .load(module, &options(timeout), &mut progress)
        .map_err(plain)?
    {
        Loaded::Enabled { name, took } => {
            println!(
                "{name}: loaded and enabled, transition finished in {:.1} s",
                took.as_secs_f64()
            );
        }
        Loaded::AlreadyEnabled { name } => println!("{name}: already loaded and enabled"),
    }
    Ok(())
}

pub fn unload(args: &UnloadArgs) -> anyhow::Result<u8> {
    let name = Host::default()
        .unload(&args.livepatch, &options(args.timeout), &mut progress)
        .map_err(plain)?;
    println!("{name}: disabled and removed");
    Ok(exit::SUCCESS)
}

pub fn list(args: &ListArgs) -> anyhow::Result<u8> {
    let host = Host::default();
    let patches = host.livepatches().map_err(plain)?;
    let stdout = &mut std::io::stdout().lock();
    if args.json {
        let documents: Vec<serde_json::Value> = patches
            .iter()
            .map(|patch| patch_json(&host, patch))
            .collect::<Result<_, _>>()?;
        serde_json::to_writer_pretty(
            &mut *stdout,
            &serde_json::json!({ "livepatches": documents }),
        )?;
        writeln!(stdout)?;
        return Ok(exit::SUCCESS);
    }
    if patches.is_empty() {
        writeln!(stdout, "no livepatches")?;
    }
    for patch in &patches {
        write_patch(&host, patch, stdout)?;
    }
    Ok(exit::SUCCESS)
}

pub fn info(args: &InfoArgs) -> anyhow::Result<u8> {
    let host = Host::default();
    let file = Path::new(&args.livepatch);
    let inspection = if file.is_file() {
        Some(loader::inspect_file(file).map_err(plain)?)
    } else {
        None
    };
    let name = match &inspection {
        Some(inspection) => inspection.module.clone(),
        None => host.name_of(&args.livepatch).map_err(plain)?,
    };
    // A module file is described on any kernel, one without livepatch support too.
    let state = match host.livepatch(&name) {
        Ok(state) => state,
        Err(LoaderError::NoLivepatchSupport { .. }) if inspection.is_some() => None,
        Err(error) => return Err(plain(error)),
    };
    if inspection.is_none() && state.is_none() {
        anyhow::bail!(
            "{} is neither a module file nor a loaded livepatch: give the .ko file, or a name `kpatch-rs list` shows",
            args.livepatch
        );
    }
    let stdout = &mut std::io::stdout().lock();
    if args.json {
        let state = match &state {
            Some(patch) => patch_json(&host, patch)?,
            None => serde_json::Value::Null,
        };
        let document = serde_json::json!({
            "name": name,
            "module": inspection,
            "loaded": state,
        });
        serde_json::to_writer_pretty(&mut *stdout, &document)?;
        writeln!(stdout)?;
        return Ok(exit::SUCCESS);
    }
    if let Some(inspection) = &inspection {
        inspection.write_human(stdout)?;
    }
    match &state {
        Some(patch) => write_patch(&host, patch, stdout)?,
        None => writeln!(stdout, "{name}: not loaded")?,
    }
    Ok(exit::SUCCESS)
}

/// A patch's JSON document: its state, and the tasks its transition waits for.
fn patch_json(host: &Host, patch: &Livepatch) -> serde_json::Result<serde_json::Value> {
    let mut value = serde_json::to_value(patch)?;
    let waiting = if patch.transition {
        host.waiting_tasks(patch)
    } else {
        Vec::new()
    };
    if let Some(object) = value.as_object_mut() {
        object.insert("waiting_tasks".to_string(), serde_json::to_value(waiting)?);
    }
    Ok(value)
}

/// A patch for people: one line of state, then its objects and functions, and in a
/// transition the tasks it waits for.
fn write_patch(host: &Host, patch: &Livepatch, out: &mut dyn Write) -> std::io::Result<()> {
    if !patch.in_sysfs {
        return writeln!(
            out,
            "{}: disabled, its module still loaded (`kpatch-rs unload {}` removes it)",
            patch.name, patch.name
        );
    }
    let state = match (patch.enabled, patch.transition) {
        (true, false) => "enabled",
        (true, true) => "enabling (in transition)",
        (false, true) => "disabling (in transition)",
        (false, false) => "disabled",
    };
    let mut line = format!("{}: {state}", patch.name);
    if let Some(order) = patch.stack_order {
        line.push_str(&format!(", stack order {order}"));
    }
    match patch.replace {
        Some(true) => line.push_str(", replaces earlier livepatches"),
        Some(false) => line.push_str(", stacks on earlier livepatches"),
        None => {}
    }
    writeln!(out, "{line}")?;
    for object in &patch.objects {
        let patched = match object.patched {
            Some(true) => "patched",
            Some(false) => "not patched (not loaded)",
            None => "unknown",
        };
        let functions: Vec<String> = object
            .functions
            .iter()
            .map(|f| format!("{},{}", f.name, f.sympos))
            .collect();
        writeln!(
            out,
            "  {} ({patched}): {}",
            object.name,
            functions.join(" ")
        )?;
    }
    if patch.transition {
        let tasks = host.waiting_tasks(patch);
        if !tasks.is_empty() {
            writeln!(out, "  waiting for:")?;
            let mut text = String::new();
            loader::describe_tasks(&tasks, &mut text);
            for line in text.lines() {
                writeln!(out, "  {line}")?;
            }
        }
    }
    Ok(())
}
