//! The diff report: what changed in one object pair, what the output needs from the klp object
//! binary, and what was refused; printed for people or as one JSON document.
//!
//! The same value is the metadata embedded in the output object, so the module generator reads
//! exactly what the user saw.

use std::collections::BTreeMap;
use std::io::{self, Write};

use crate::compare::{Refusal, Status};
use crate::elf::Binding;

/// The verdict for one object pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Some function changed or is new; an output object was produced.
    Changed,
    /// No function differs.
    NoChange,
    /// Some change cannot be live patched; see `refusals`.
    Unpatchable,
}

/// A function the output object defines because it changed or is new.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FunctionReport {
    /// The function's name in the output object.
    pub name: String,
    /// Its global alias in the output object (`kpatch_rs.<object>.<name>`), which the module
    /// generator uses as `new_func` even when the function itself is static.
    pub symbol: String,
    pub status: Status,
    pub section: String,
    /// For a changed function: the function it replaces, named as in the original object.
    pub replaces: Option<Replaced>,
    /// For a changed function: where it first differs, e.g. `code differs from +0x1c`.
    pub difference: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Replaced {
    pub name: String,
    /// The binary the function lives in: `vmlinux` or a module name.
    pub object: String,
}

/// How a reference to something left in the klp object (vmlinux or the module) must be resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resolution {
    /// A symbol local to the original object: only a livepatch relocation
    /// (`.klp.sym.<object>.<name>,<sympos>`) can reach it.
    Livepatch,
    /// A global symbol: a normal relocation if it is exported, else a livepatch relocation.
    UnlessExported,
}

/// An undefined symbol of the output object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Reference {
    pub name: String,
    /// Binding in the original object; `None` when the original object did not define it.
    pub binding: Option<Binding>,
    pub resolution: Resolution,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    /// The object as named on the command line.
    pub object: String,
    /// The binary the object is linked into.
    pub klp_object: String,
    pub outcome: Outcome,
    /// Changed and new functions, in the patched object's symbol order.
    pub functions: Vec<FunctionReport>,
    /// Functions that differ only in `__LINE__` values and are treated as unchanged.
    pub line_only: Vec<String>,
    /// Changed or new functions that no livepatch replaces, with why (a changed `__exit`
    /// function): the reason a patch whose only change is there changes nothing.
    pub left_out: Vec<String>,
    /// Data copied into the output: new objects, changed read-only data, debug descriptors.
    pub data: Vec<String>,
    /// Kept entries per special section.
    pub special_entries: BTreeMap<String, usize>,
    /// Entries of special sections left out on purpose, per section: in a module klp object,
    /// static call sites and tracepoint jump labels whose key the output does not hold.
    pub dropped_entries: BTreeMap<String, usize>,
    /// Jump labels kept in a module klp object whose key the output does not hold: each one
    /// must reach its key through a normal relocation (a vmlinux export), or the build refuses.
    pub module_keys: Vec<ModuleKey>,
    /// Symbols the output refers to in the klp object.
    pub references: Vec<Reference>,
    pub refusals: Vec<Refusal>,
    /// Whether the objects' DWARF was there to check the data layout of the original's
    /// types against the patched ones (see `layout`).
    pub layout_checked: bool,
    /// Layout changes the user accepted with `--allow-layout-change`, which a refusal would
    /// otherwise have stopped.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub layout_changes_allowed: Vec<crate::layout::LayoutChange>,
}

/// A jump label of copied code whose static key lies outside the output.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModuleKey {
    /// The table, `__jump_table`.
    pub section: String,
    /// The function the jump label is in, and the label's offset in it.
    pub function: String,
    pub offset: u64,
    /// The key, named as the output's reference to it.
    pub key: String,
}

impl Report {
    /// Names of functions with the given status, for tests and summaries.
    pub fn functions_with(&self, status: Status) -> Vec<&str> {
        self.functions
            .iter()
            .filter(|f| f.status == status)
            .map(|f| f.name.as_str())
            .collect()
    }

    pub fn write_json(&self, out: &mut dyn Write) -> io::Result<()> {
        serde_json::to_writer_pretty(&mut *out, self)?;
        writeln!(out)
    }

    pub fn write_human(&self, out: &mut dyn Write) -> io::Result<()> {
        match self.outcome {
            Outcome::NoChange => writeln!(out, "{}: no function changed", self.object)?,
            Outcome::Unpatchable => {
                writeln!(out, "{}: cannot be live patched", self.object)?;
                for refusal in &self.refusals {
                    writeln!(out, "  {refusal}")?;
                }
            }
            Outcome::Changed => writeln!(
                out,
                "{}: {} changed, {} new function(s) for {}",
                self.object,
                self.functions_with(Status::Changed).len(),
                self.functions_with(Status::New).len(),
                self.klp_object
            )?,
        }
        for function in &self.functions {
            let status = function.status.as_str();
            if function.difference.is_empty() {
                writeln!(out, "  {status:8} {} ({})", function.name, function.section)?;
            } else {
                writeln!(
                    out,
                    "  {status:8} {} ({}): {}",
                    function.name, function.section, function.difference
                )?;
            }
        }
        for name in &self.line_only {
            writeln!(out, "  same     {name} (only __LINE__ values differ)")?;
        }
        for reason in &self.left_out {
            writeln!(out, "  left out {reason}")?;
        }
        for change in &self.layout_changes_allowed {
            writeln!(
                out,
                "  warning  layout change of {} allowed (--allow-layout-change): {}",
                change.type_name,
                change.changes.join("; ")
            )?;
        }
        if !self.layout_checked && self.outcome == Outcome::Changed {
            writeln!(
                out,
                "  warning  data layout not checked: the objects carry no DWARF (compile with -g)"
            )?;
        }
        for name in &self.data {
            writeln!(out, "  data     {name}")?;
        }
        for (section, count) in &self.special_entries {
            writeln!(out, "  entries  {section}: {count}")?;
        }
        for (section, count) in &self.dropped_entries {
            writeln!(
                out,
                "  dropped  {section}: {count} (keys in the module, inert without their entries)"
            )?;
        }
        for key in &self.module_keys {
            writeln!(
                out,
                "  key      {} at {}+{:#x} ({})",
                key.key, key.function, key.offset, key.section
            )?;
        }
        for reference in &self.references {
            let how = match reference.resolution {
                Resolution::Livepatch => "livepatch relocation",
                Resolution::UnlessExported => "exported, or livepatch relocation",
            };
            writeln!(out, "  needs    {} ({how})", reference.name)?;
        }
        Ok(())
    }
}
