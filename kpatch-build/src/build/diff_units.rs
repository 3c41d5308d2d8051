//! The diff phase: each unit's original and patched objects compared by `kpatch_diff`, in
//! parallel, and the verdicts gathered: any refusal stops the build (exit 2) with all of
//! them, and a build whose units all came out unchanged is no change (exit 3).

use std::path::PathBuf;

use kpatch_diff::report::Outcome;
use kpatch_diff::{DiffOutput, Pair};

use super::compile::Compiled;
use super::inputs::read_file;
use super::module::KlpObjectName;
use super::targets;
use super::BuildError;

/// One unit's diff, with what the later phases need of it.
#[derive(Debug)]
pub struct DiffedUnit {
    /// The unit's object, relative to the tree (`fs/proc/cmdline.o`).
    pub name: String,
    /// The klp object it belongs to.
    pub klp_object: KlpObjectName,
    /// The original object's bytes.
    pub orig: Vec<u8>,
    pub output: DiffOutput,
}

/// Reads each unit's object pair and diffs them all. The units are compiled with DWARF
/// (`compile::debug_info_flags`), so the data layout of every type the original code uses is
/// checked; `allowed_layout_changes` are the types the user accepts a layout change of.
pub fn diff_units(
    compiled: &Compiled,
    allowed_layout_changes: &[String],
) -> Result<Vec<DiffedUnit>, BuildError> {
    let mut inputs = Vec::new();
    for object in &compiled.units {
        let orig_name = format!("{} (original)", object.display());
        let klp_object = targets::klp_object_of(&compiled.original_objects, object);
        let orig = read_file(
            &compiled.original_objects.join(object),
            "object",
            "see the build log",
        )?;
        let patched = read_file(
            &compiled.patched_objects.join(object),
            "object",
            "see the build log",
        )?;
        inputs.push((
            object.display().to_string(),
            orig_name,
            klp_object,
            orig,
            patched,
        ));
    }
    let pairs: Vec<Pair<'_>> = inputs
        .iter()
        .map(|(name, orig_name, klp_object, orig, patched)| Pair {
            name,
            orig_name,
            orig,
            patched,
            klp_object: klp_object.klp_name(),
        })
        .collect();
    let options = kpatch_diff::DiffOptions {
        require_dwarf: true,
        allowed_layout_changes: allowed_layout_changes.to_vec(),
        kernel_layout: Some(compiled.kernel_layout.clone()),
    };
    let results = kpatch_diff::diff_all_with(&pairs, &options);
    let mut diffed = Vec::new();
    for (result, (name, _, klp_object, orig, _)) in results.into_iter().zip(inputs) {
        let output = result?;
        diffed.push(DiffedUnit {
            name,
            klp_object,
            orig,
            output,
        });
    }
    Ok(diffed)
}

/// The verdict over all units: every refusal of the diff; else no change when no unit has an
/// output object.
pub fn judge(units: &[DiffedUnit], built: &[PathBuf]) -> Result<(), BuildError> {
    let mut refusals = Vec::new();
    for unit in units {
        match unit.output.report.outcome {
            Outcome::Unpatchable => refusals.extend(unit.output.report.refusals.iter().cloned()),
            Outcome::NoChange => {}
            Outcome::Changed => {}
        }
    }
    if !refusals.is_empty() {
        return Err(BuildError::Unpatchable { refusals });
    }
    if units.iter().all(|unit| unit.output.object.is_none()) {
        let mut why: Vec<String> = units
            .iter()
            .flat_map(|unit| {
                unit.output
                    .report
                    .left_out
                    .iter()
                    .map(move |reason| format!("{}: {reason}", unit.name))
            })
            .collect();
        if why.is_empty() {
            why = built.iter().map(|o| o.display().to_string()).collect();
        }
        return Err(BuildError::NoChange {
            objects: why.join("; "),
        });
    }
    Ok(())
}
