//! `--target`: only the named klp objects of the patch are built into the module.
//!
//! kpatch-build's `-t` names make targets; kpatch-rs never builds what the patch does not
//! touch, so here a target is a klp object (`vmlinux` or a module's name) and the rest of the
//! patch is left out of the module. Which klp object a unit belongs to is only known once
//! Kbuild has compiled it (its `.cmd` file: `-DMODULE` and `KBUILD_MODNAME`), so every touched
//! unit is compiled; the units of other klp objects are then neither diffed nor linked, and
//! the report lists each as skipped, with a warning. A target that no unit of the patch
//! belongs to is an error naming it and the klp objects the patch does touch.

use std::fs;
use std::path::{Path, PathBuf};

use super::module::KlpObjectName;
use super::units;

/// A target the patch does not touch.
#[derive(Debug, thiserror::Error)]
#[error(
    "--target {}: the patches touch no unit of {}; they touch {} (pass those names, \
     `vmlinux` or a module's name, to --target)",
    missing.join(", "),
    if missing.len() == 1 { "it" } else { "them" },
    touched.join(", ")
)]
pub struct TargetError {
    pub missing: Vec<String>,
    pub touched: Vec<String>,
}

/// A unit the patch changes that `--target` left out of the module.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SkippedUnit {
    /// The unit's object, relative to its tree (`fs/proc/cmdline.o`).
    pub object: String,
    /// The klp object it belongs to.
    pub klp_object: String,
}

impl SkippedUnit {
    /// The warning the report prints for it.
    pub fn warning(&self, targets: &[String]) -> String {
        format!(
            "{} ({}) is touched by the patches but left out of the module: it is not among \
             --target {}",
            self.object,
            self.klp_object,
            targets.join(", ")
        )
    }
}

/// A target as the kernel names the klp object: a module's `-` is `_` (`KBUILD_MODNAME`).
pub fn normalize(target: &str) -> String {
    target.trim_end_matches(".ko").replace('-', "_")
}

/// The klp object of a compiled unit, from Kbuild's `.cmd` file beside its object in
/// `objects` (the build directory the unit was compiled in).
pub fn klp_object_of(objects: &Path, unit: &Path) -> KlpObjectName {
    let cmd = fs::read_to_string(units::cmd_file(objects, unit)).unwrap_or_default();
    units::attribute(&cmd)
}

/// Splits `units` into those of the `targets` (kept, in order) and the others (skipped);
/// no targets keeps every unit. `klp_object` names each unit's klp object.
pub fn select(
    units: Vec<PathBuf>,
    targets: &[String],
    klp_object: impl Fn(&Path) -> KlpObjectName,
) -> Result<(Vec<PathBuf>, Vec<SkippedUnit>), TargetError> {
    if targets.is_empty() {
        return Ok((units, Vec::new()));
    }
    let wanted: Vec<String> = targets.iter().map(|t| normalize(t)).collect();
    let mut touched: Vec<String> = Vec::new();
    let mut kept = Vec::new();
    let mut skipped = Vec::new();
    for unit in units {
        let name = klp_object(&unit).klp_name().to_string();
        if !touched.contains(&name) {
            touched.push(name.clone());
        }
        if wanted.contains(&name) {
            kept.push(unit);
        } else {
            skipped.push(SkippedUnit {
                object: unit.display().to_string(),
                klp_object: name,
            });
        }
    }
    let mut missing: Vec<String> = wanted
        .iter()
        .filter(|target| !touched.contains(target))
        .cloned()
        .collect();
    missing.dedup();
    if !missing.is_empty() {
        touched.sort();
        return Err(TargetError { missing, touched });
    }
    Ok((kept, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(unit: &Path) -> KlpObjectName {
        match unit.to_str() {
            Some("samples/kobject/kobject-example.o") => {
                KlpObjectName::Module("kobject_example".to_string())
            }
            Some("fs/binfmt_misc.o") => KlpObjectName::Module("binfmt_misc".to_string()),
            _ => KlpObjectName::Vmlinux,
        }
    }

    fn units() -> Vec<PathBuf> {
        [
            "fs/proc/cmdline.o",
            "samples/kobject/kobject-example.o",
            "fs/proc/meminfo.o",
        ]
        .iter()
        .map(PathBuf::from)
        .collect()
    }

    #[test]
    fn no_target_keeps_every_unit() {
        let (kept, skipped) = select(units(), &[], of).expect("select");
        assert_eq!(kept, units());
        assert!(skipped.is_empty());
    }

    #[test]
    fn units_of_other_klp_objects_are_skipped_by_name() {
        let targets = ["kobject-example".to_string()];
        let (kept, skipped) = select(units(), &targets, of).expect("select");
        assert_eq!(kept, [PathBuf::from("samples/kobject/kobject-example.o")]);
        assert_eq!(
            skipped,
            [
                SkippedUnit {
                    object: "fs/proc/cmdline.o".to_string(),
                    klp_object: "vmlinux".to_string()
                },
                SkippedUnit {
                    object: "fs/proc/meminfo.o".to_string(),
                    klp_object: "vmlinux".to_string()
                }
            ]
        );
        assert!(skipped[0]
            .warning(&targets)
            .contains("not among --target kobject-example"));
        let (kept, skipped) =
            select(units(), &["vmlinux".to_string()], of).expect("select vmlinux");
        assert_eq!(kept.len(), 2);
        assert_eq!(skipped[0].klp_object, "kobject_example");
    }

    #[test]
    fn a_target_the_patch_does_not_touch_is_named_with_what_it_touches() {
        let targets = ["vmlinux".to_string(), "binfmt_misc.ko".to_string()];
        let error = select(units(), &targets, of).expect_err("binfmt_misc is not touched");
        assert_eq!(error.missing, ["binfmt_misc"]);
        assert_eq!(
            error.to_string(),
            "--target binfmt_misc: the patches touch no unit of it; they touch \
             kobject_example, vmlinux (pass those names, `vmlinux` or a module's name, to \
             --target)"
        );
    }
}
