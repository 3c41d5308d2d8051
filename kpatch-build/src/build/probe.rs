//! The kernel's own description of its special sections: a probe unit that includes the
//! headers declaring every entry type (`struct alt_instr`, `struct jump_entry`, ...) is
//! compiled with DWARF as an external module object of the prepared original tree, so with
//! the kernel's headers, config and compiler flags, and the types' sizes and member offsets
//! are read from its DWARF ([`KernelLayout::from_dwarf`]). A type the kernel lacks is simply
//! not described, and the diff refuses a section that needs it. The result is kept in the
//! cache entry (`probe/layout.json`), so it is computed once per entry.

use std::fs;
use std::path::Path;

use kpatch_diff::special_sections::KernelLayout;

use super::compile::debug_info_flags;
use super::files;
use super::kbuild::KernelBuild;
use super::{io_error, BuildError};

/// The probe unit: every header that declares an entry type of a special section, each only
/// where this kernel has it.
const PROBE_SOURCE: &str = r#"// kpatch-rs: the kernel's special-section entry types, for their layouts in DWARF.
#include <linux/module.h>
#include <linux/bug.h>
#include <linux/jump_label.h>
#include <linux/uaccess.h>
#include <asm/alternative.h>
#if __has_include(<linux/static_call_types.h>)
#include <linux/static_call_types.h>
#endif
#if __has_include(<asm/orc_types.h>)
#include <asm/orc_types.h>
#endif
#if defined(CONFIG_PARAVIRT) && __has_include(<asm/paravirt_types.h>)
#include <asm/paravirt_types.h>
#endif
#if __has_include(<linux/objtool_types.h>)
#include <linux/objtool_types.h>
#elif __has_include(<linux/objtool.h>)
#include <linux/objtool.h>
#endif
"#;

const PROBE: &str = "kpatch-rs-probe";

/// The layouts of `build`'s kernel, from the cache entry's probe or by compiling it there.
pub fn kernel_layout(
    build: &KernelBuild,
    cache: &Path,
    config: &str,
) -> Result<KernelLayout, BuildError> {
    let dir = cache.join("probe");
    let saved = dir.join("layout.json");
    if let Ok(text) = fs::read_to_string(&saved) {
        if let Ok(layout) = serde_json::from_str::<KernelLayout>(&text) {
            return Ok(layout);
        }
    }
    fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
    let source = dir.join(format!("{PROBE}.c"));
    fs::write(&source, PROBE_SOURCE).map_err(io_error("write", &source))?;
    let mut flags = debug_info_flags(config);
    // Declared but unused types get DWARF too.
    flags.push("-fno-eliminate-unused-debug-types");
    let kbuild = format!("obj-m := {PROBE}.o\nccflags-y := {}\n", flags.join(" "));
    let kbuild_file = dir.join("Kbuild");
    fs::write(&kbuild_file, kbuild).map_err(io_error("write", &kbuild_file))?;
    let object = dir.join(format!("{PROBE}.o"));
    let _ = fs::remove_file(&object);
    // Beside the object builds in the same directory (`compile.rs`), which rewrite its
    // generated Makefile.
    build.build_external_beside(
        "compiling the probe of the kernel's special-section layouts",
        &dir,
        &[&format!("{PROBE}.o")],
        "",
    )?;
    let bytes = fs::read(&object).map_err(io_error("read", &object))?;
    let layout =
        KernelLayout::from_dwarf(&object.display().to_string(), &bytes).map_err(|message| {
            BuildError::Internal(format!(
                "cannot read the kernel's special-section layouts from {}: {message}",
                object.display()
            ))
        })?;
    let json = serde_json::to_vec_pretty(&layout)
        .map_err(|e| BuildError::Internal(format!("cannot encode the kernel layout: {e}")))?;
    files::write_atomically(&saved, &json)?;
    Ok(layout)
}
