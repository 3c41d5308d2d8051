//! Targets: which objects a patch touches and which binary each belongs to.
//!
//! A `.c` file in the patch is one object. A header is every object whose Kbuild dependency
//! list (the `deps_` block of its `.<name>.o.cmd` file) names it, which needs a full build of
//! the original tree to read from. Which binary an object belongs to also comes from its
//! `.cmd` file: objects compiled with `-DMODULE` go into the module named by
//! `KBUILD_MODNAME`, all others into vmlinux.

use std::fs;
use std::path::{Component, Path, PathBuf};

use crate::build::module::KlpObjectName;
use crate::build::{io_error, IoError};

/// Why the units the patch touches could not be worked out.
#[derive(Debug, thiserror::Error)]
pub enum UnitsError {
    #[error("cannot read patch {patch}: {reason}")]
    Patch { patch: String, reason: String },
    #[error("patch {patch} touches {path}, which is not a path inside the tree")]
    UnsafePath { patch: String, path: String },
    #[error("patch {patch} touches {path}: kpatch-rs patches C sources and headers only")]
    Unsupported { patch: String, path: String },
    #[error("patch {patch} changes no file")]
    Empty { patch: String },
    #[error("no object of this configuration includes {header}")]
    UnusedHeader { header: String },
    #[error(transparent)]
    Io(#[from] IoError),
}

/// The files one patch changes, relative to the tree root (`-p1`).
pub fn touched_files(patch_name: &str, text: &str) -> Result<Vec<PathBuf>, UnitsError> {
    let mut files = Vec::new();
    let mut old_path: Option<&str> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("--- ") {
            old_path = Some(header_path(rest));
            continue;
        }
        let Some(rest) = line.strip_prefix("+++ ") else {
            continue;
        };
        // A deleted file names /dev/null as its new path; the old path is the one touched.
        let path = match header_path(rest) {
            "/dev/null" => old_path.unwrap_or("/dev/null"),
            path => path,
        };
        let relative = strip_first_component(path).ok_or_else(|| UnitsError::UnsafePath {
            patch: patch_name.to_string(),
            path: path.to_string(),
        })?;
        let safe = relative
            .components()
            .all(|component| matches!(component, Component::Normal(_)));
        if !safe || relative.as_os_str().is_empty() {
            return Err(UnitsError::UnsafePath {
                patch: patch_name.to_string(),
                path: path.to_string(),
            });
        }
        if !files.contains(&relative) {
            files.push(relative);
        }
    }
    if files.is_empty() {
        return Err(UnitsError::Empty {
            patch: patch_name.to_string(),
        });
    }
    for file in &files {
        let supported = matches!(
            file.extension().and_then(|e| e.to_str()),
            Some("c") | Some("h")
        );
        if !supported {
            return Err(UnitsError::Unsupported {
                patch: patch_name.to_string(),
                path: file.display().to_string(),
            });
        }
    }
    Ok(files)
}

/// The path of a `---`/`+++` header line: up to a tab (where a timestamp may follow).
fn header_path(rest: &str) -> &str {
    rest.split('\t').next().unwrap_or(rest).trim_end()
}

/// `a/fs/proc/cmdline.c` -> `fs/proc/cmdline.c`, as `patch -p1` reads it.
fn strip_first_component(path: &str) -> Option<PathBuf> {
    if path.starts_with('/') {
        return None;
    }
    let (_, rest) = path.split_once('/')?;
    Some(PathBuf::from(rest))
}

/// The unit that compiles a touched `.c` file (relative to `source`): the file's own object
/// when its directory's Makefile names it, else the object of a `.c` file beside it that
/// `#include`s it. The scheduler builds `rt.c`, `deadline.c` and others only as part of
/// `kernel/sched/build_policy.c`, and `make kernel/sched/rt.o` would fail with "No rule".
pub fn unit_of_c_file(source: &Path, file: &Path) -> PathBuf {
    let own = file.with_extension("o");
    let (Some(directory), Some(name), Some(object)) = (
        file.parent(),
        file.file_name().and_then(|n| n.to_str()),
        own.file_name().and_then(|n| n.to_str()),
    ) else {
        return own;
    };
    let named_by_makefile = ["Makefile", "Kbuild"].iter().any(|makefile| {
        std::fs::read_to_string(source.join(directory).join(makefile)).is_ok_and(|text| {
            text.split(|c: char| c.is_whitespace() || c == '=' || c == '+' || c == ':')
                .any(|word| word == object)
        })
    });
    if named_by_makefile {
        return own;
    }
    let include = format!("#include \"{name}\"");
    let Ok(entries) = std::fs::read_dir(source.join(directory)) else {
        return own;
    };
    let mut includers: Vec<PathBuf> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "c"))
        .filter(|path| {
            std::fs::read_to_string(path)
                .is_ok_and(|text| text.lines().any(|line| line.trim() == include))
        })
        .filter_map(|path| Some(directory.join(path.file_name()?).with_extension("o")))
        .collect();
    includers.sort();
    includers.into_iter().next().unwrap_or(own)
}

/// The `.cmd` file Kbuild writes beside `object` in build directory `build`.
pub fn cmd_file(build: &Path, object: &Path) -> PathBuf {
    let name = object
        .file_name()
        .map(|name| format!(".{}.cmd", name.to_string_lossy()))
        .unwrap_or_default();
    build
        .join(object.parent().unwrap_or(Path::new("")))
        .join(name)
}

/// The binary an object belongs to, from the text of its `.cmd` file.
pub fn attribute(cmd_text: &str) -> KlpObjectName {
    let command = cmd_text
        .lines()
        .find(|line| line.starts_with("savedcmd_") || line.starts_with("cmd_"))
        .unwrap_or("");
    let is_module = command.split_whitespace().any(|arg| arg == "-DMODULE");
    if !is_module {
        return KlpObjectName::Vmlinux;
    }
    let modname = command
        .split_whitespace()
        .find_map(|arg| arg.strip_prefix("-DKBUILD_MODNAME="))
        .map(|value| value.trim_matches(|c| c == '\'' || c == '"').to_string());
    match modname {
        Some(name) if !name.is_empty() => KlpObjectName::Module(name),
        _ => KlpObjectName::Vmlinux,
    }
}

/// Every object in `build` whose dependency list names `header` (an absolute path, since
/// Kbuild records source headers of an `O=` build by absolute path), sorted.
pub fn objects_including(build: &Path, header: &Path) -> Result<Vec<PathBuf>, UnitsError> {
    let needle = header.to_string_lossy().into_owned();
    let mut found = Vec::new();
    let mut stack = vec![build.to_path_buf()];
    while let Some(directory) = stack.pop() {
        let entries = fs::read_dir(&directory).map_err(io_error("list", &directory))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(path);
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            // `.cmdline.o.cmd` describes `cmdline.o`; `.mod.o` and `.ko` are link products.
            let Some(object) = name
                .strip_prefix('.')
                .and_then(|rest| rest.strip_suffix(".cmd"))
            else {
                continue;
            };
            if !object.ends_with(".o") || object.ends_with(".mod.o") {
                continue;
            }
            let Ok(text) = fs::read_to_string(&path) else {
                continue;
            };
            let depends = text
                .lines()
                .skip_while(|line| !line.starts_with("deps_"))
                .any(|line| line.trim().trim_end_matches('\\').trim() == needle);
            if depends {
                let relative = directory.strip_prefix(build).unwrap_or(&directory);
                found.push(relative.join(object));
            }
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_c_file_that_another_unit_includes_builds_as_that_unit() {
        let dir = tempfile::tempdir().expect("temp dir");
        let sched = dir.path().join("kernel/sched");
        std::fs::create_dir_all(&sched).expect("mkdir");
        std::fs::write(
            sched.join("Makefile"),
            "obj-y += core.o fair.o\nobj-y += build_policy.o\n",
        )
        .expect("write");
        std::fs::write(
            sched.join("build_policy.c"),
            "#include \"idle.c\"\n#include \"rt.c\"\n",
        )
        .expect("write");
        for file in ["core.c", "rt.c", "fair.c", "orphan.c"] {
            std::fs::write(sched.join(file), "int x;\n").expect("write");
        }
        let unit = |file: &str| unit_of_c_file(dir.path(), Path::new(file));
        assert_eq!(
            unit("kernel/sched/rt.c"),
            Path::new("kernel/sched/build_policy.o")
        );
        assert_eq!(
            unit("kernel/sched/core.c"),
            Path::new("kernel/sched/core.o")
        );
        // Nothing names or includes it: make says why.
        assert_eq!(
            unit("kernel/sched/orphan.c"),
            Path::new("kernel/sched/orphan.o")
        );
    }

    #[test]
    fn touched_files_follow_patch_p1() {
        let patch = "\
diff --git a/fs/proc/cmdline.c b/fs/proc/cmdline.c
--- a/fs/proc/cmdline.c\t2024-01-01 00:00:00
+++ b/fs/proc/cmdline.c\t2024-01-01 00:00:00
@@ -1 +1 @@
-a
+b
--- a/include/linux/foo.h
+++ b/include/linux/foo.h
@@ -1 +1 @@
-a
+b
--- a/fs/proc/cmdline.c
+++ b/fs/proc/cmdline.c
";
        assert_eq!(
            touched_files("p", patch).expect("files"),
            vec![
                PathBuf::from("fs/proc/cmdline.c"),
                PathBuf::from("include/linux/foo.h")
            ]
        );
    }

    #[test]
    fn touched_files_refuse_what_cannot_be_built_or_escapes_the_tree() {
        let check = |text: &str, expected: &str| {
            let error = touched_files("x.patch", text).expect_err("must refuse");
            assert_eq!(error.to_string(), expected);
        };
        check("just words\n", "patch x.patch changes no file");
        check(
            "--- a/../etc/passwd\n+++ b/../etc/passwd\n",
            "patch x.patch touches b/../etc/passwd, which is not a path inside the tree",
        );
        check(
            "--- /etc/passwd\n+++ /etc/passwd\n",
            "patch x.patch touches /etc/passwd, which is not a path inside the tree",
        );
        check(
            "--- a/Makefile\n+++ b/Makefile\n",
            "patch x.patch touches Makefile: kpatch-rs patches C sources and headers only",
        );
    }

    #[test]
    fn objects_are_attributed_by_their_compile_flags() {
        let builtin = "savedcmd_fs/proc/cmdline.o := gcc -DKBUILD_BASENAME='\"cmdline\"' \
                       -DKBUILD_MODNAME='\"proc\"' -c -o fs/proc/cmdline.o";
        assert_eq!(attribute(builtin), KlpObjectName::Vmlinux);
        let module = "savedcmd_drivers/x/y.o := gcc -DMODULE -DKBUILD_BASENAME='\"y\"' \
                      -DKBUILD_MODNAME='\"kpatch_test_mod\"' -c -o y.o";
        assert_eq!(
            attribute(module),
            KlpObjectName::Module("kpatch_test_mod".to_string())
        );
    }

    #[test]
    fn header_dependents_come_from_the_deps_blocks() {
        let dir = tempfile::tempdir().expect("temp dir");
        let build = dir.path();
        fs::create_dir_all(build.join("fs/proc")).expect("mkdir");
        let header = "/src/include/linux/seq_file.h";
        fs::write(
            build.join("fs/proc/.cmdline.o.cmd"),
            format!("savedcmd_fs/proc/cmdline.o := gcc\n\ndeps_fs/proc/cmdline.o := \\\n  {header} \\\n  /src/include/linux/fs.h \\\n\n"),
        )
        .expect("write");
        fs::write(
            build.join("fs/proc/.meminfo.o.cmd"),
            "savedcmd_fs/proc/meminfo.o := gcc\n\ndeps_fs/proc/meminfo.o := \\\n  /src/include/linux/fs.h \\\n\n",
        )
        .expect("write");
        // A header named only on the command line is not a dependency.
        fs::write(
            build.join("fs/proc/.array.o.cmd"),
            format!("savedcmd_fs/proc/array.o := gcc -include {header}\n\ndeps_fs/proc/array.o := \\\n\n"),
        )
        .expect("write");
        assert_eq!(
            objects_including(build, Path::new(header)).expect("scan"),
            vec![PathBuf::from("fs/proc/cmdline.o")]
        );
        assert_eq!(
            objects_including(build, Path::new("/src/include/linux/fs.h")).expect("scan"),
            vec![
                PathBuf::from("fs/proc/cmdline.o"),
                PathBuf::from("fs/proc/meminfo.o")
            ]
        );
        assert_eq!(
            cmd_file(build, Path::new("fs/proc/cmdline.o")),
            build.join("fs/proc/.cmdline.o.cmd")
        );
    }
}
