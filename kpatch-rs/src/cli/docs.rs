//! Documentation generated from the command line's own definition: shell completions
//! (`kpatch-rs completions SHELL`, on stdout) and manual pages (`kpatch-rs man DIR`, one page
//! per command), so that neither can fall behind the options. `cargo xtask dist` runs both.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Prints the completion script of `shell` for `command`.
pub fn completions(
    shell: clap_complete::Shell,
    command: &mut clap::Command,
    out: &mut dyn Write,
) -> Result<()> {
    let name = command.get_name().to_string();
    // Into memory first: clap_complete panics when its writer fails (a closed pipe).
    let mut script = Vec::new();
    clap_complete::generate(shell, command, name, &mut script);
    out.write_all(&script)
        .context("cannot write the completion script")?;
    Ok(())
}

/// Writes `kpatch-rs.1` and a page per subcommand (`kpatch-rs-build.1`, ...) into `dir`;
/// returns the pages written.
pub fn man_pages(command: clap::Command, dir: &Path) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    let bin = command.get_name().to_string();
    write_pages(command, &bin.clone(), &bin, dir, &mut written)?;
    Ok(written)
}

/// Writes the page of `command`, named `name` (`kpatch-rs-build`) and invoked as `bin`
/// (`kpatch-rs build`), then those of its subcommands.
fn write_pages(
    command: clap::Command,
    name: &str,
    bin: &str,
    dir: &Path,
    written: &mut Vec<String>,
) -> Result<()> {
    // A page's title is its full command name, as `man kpatch-rs-build` finds it.
    let command = command.name(name.to_string()).bin_name(bin.to_string());
    let file = format!("{name}.1");
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone())
        .render(&mut page)
        .with_context(|| format!("cannot render {file}"))?;
    let path = dir.join(&file);
    std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    written.push(file);
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        let sub_name = sub.get_name().to_string();
        write_pages(
            sub.clone(),
            &format!("{name}-{sub_name}"),
            &format!("{bin} {sub_name}"),
            dir,
            written,
        )?;
    }
    Ok(())
}
