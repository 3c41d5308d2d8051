//! `kpatch-rs core explore [--pre-fix] SCENARIO`: runs every interleaving of a livepatch core
//! scenario on the model kernel of `core-patch` and prints what it covered, or the shortest
//! trace that breaks an invariant.
//!
//! SCENARIO is a built-in name (`seed-stacking`, `seed-going`, `two-modules`, `stress`) or the path of a
//! scenario file in the format of `core-patch/scenarios/*.scn`.

use std::io::Write;
use std::path::PathBuf;

use core_patch::model::explore::ExploreError;
use core_patch::model::scenario::{self, ScenarioError};
use core_patch::model::{Binding, Explorer};

use kpatch_build::exit;

/// Why a scenario could not be explored.
#[derive(Debug, thiserror::Error)]
pub enum CoreExploreError {
    /// Neither a built-in name nor a readable file.
    #[error("cannot read scenario {path}: {source}; built-in scenarios are: {builtins}")]
    Read {
        /// The path tried.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
        /// The built-in names, for the message.
        builtins: String,
    },
    /// The file does not parse.
    #[error("cannot parse scenario {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where and why.
        source: ScenarioError,
    },
    /// The setup of the scenario fails.
    #[error("cannot explore scenario {name}: {source}")]
    Setup {
        /// The scenario's name.
        name: String,
        /// What failed.
        source: ExploreError,
    },
    /// The report could not be written.
    #[error("cannot write the report: {0}")]
    Output(#[from] std::io::Error),
}

/// Loads `scenario` (built-in name or file), explores it with the fixed binding rule or, with
/// `pre_fix`, the one before the fix, writes the report to `out` and returns the exit code:
/// [`exit::SUCCESS`] when every interleaving holds, [`exit::VIOLATION`] otherwise.
pub fn run(scenario: &str, pre_fix: bool, out: &mut dyn Write) -> Result<u8, CoreExploreError> {
    let loaded = match scenario::builtin(scenario) {
        Some(builtin) => builtin,
        None => {
            let path = PathBuf::from(scenario);
            let text = std::fs::read_to_string(&path).map_err(|source| CoreExploreError::Read {
                path: path.clone(),
                source,
                builtins: scenario::BUILTIN
                    .iter()
                    .map(|(name, _)| *name)
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
            let name = path.file_stem().map_or_else(
                || scenario.to_string(),
                |s| s.to_string_lossy().into_owned(),
            );
            scenario::parse(&name, &text)
                .map_err(|source| CoreExploreError::Parse { path, source })?
        }
    };
    let binding = if pre_fix {
        Binding::ModuleState
    } else {
        Binding::KlpAlive
    };
    let name = loaded.name.clone();
    let explorer = Explorer::new(loaded, binding)
        .map_err(|source| CoreExploreError::Setup { name, source })?;
    let report = explorer.run();
    let mut text = String::new();
    report.write(&mut text);
    out.write_all(text.as_bytes())?;
    Ok(if report.violations.is_empty() {
        exit::SUCCESS
    } else {
        exit::VIOLATION
    })
}
