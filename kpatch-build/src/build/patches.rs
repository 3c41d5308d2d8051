//! The patch files: what kpatch-rs refuses in them before any work, and what `patch` said
//! when one does not apply, each as an error that names the patch and the file.
//!
//! Refused before any work, since the module would not be the change the patch describes:
//! CRLF line endings on a file that has LF endings (`patch` would strip them silently, so the
//! patch is not the text its author sent), renames and copies (a livepatch replaces functions
//! of the running kernel's own units; a unit under a new name has no original), binary
//! changes (`patch` cannot apply them, and a `Binary files ... differ` line carries no
//! change at all, so the file would silently stay as it is), and a change to a file the
//! source tree does not have. When applied, every hunk must match exactly: offsets are fine,
//! fuzz is not (context lines that differ mean the tree is not the one the patch was made
//! for, and the change may land in the wrong place).

use std::path::{Path, PathBuf};

use super::kbuild::{self, CommandError};

/// A patch that kpatch-rs will not apply, or that does not apply.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error(
        "patch {patch} has CRLF line endings (line {line}, in its change to {file}) and {file} \
         has LF line endings in the source tree: convert the patch (sed -i 's/\\r$//' {patch})"
    )]
    CrlfLineEndings {
        patch: String,
        file: String,
        line: usize,
    },
    #[error(
        "patch {patch} {verb} {from} to {to}: a livepatch replaces functions of the running \
         kernel's files where they are, and a file under a new name has no original to \
         compare with; make the patch without the {noun}"
    )]
    Rename {
        patch: String,
        verb: &'static str,
        noun: &'static str,
        from: String,
        to: String,
    },
    #[error(
        "patch {patch} has a binary change to {file} ({what}): kpatch-rs builds C sources and \
         headers from text patches; make the patch as text (git diff --text)"
    )]
    Binary {
        patch: String,
        file: String,
        what: &'static str,
    },
    #[error(
        "patch {patch} changes {file}, which the source tree {} does not have: pass the \
         source the running kernel was built from with --sourcedir",
        tree.display()
    )]
    MissingFile {
        patch: String,
        file: String,
        tree: PathBuf,
    },
    #[error(
        "patch {patch} does not apply to {file}: {hunks}; the source tree is not the one the \
         patch was made for: make the patch against the running kernel's source"
    )]
    HunkFailed {
        patch: String,
        file: String,
        hunks: String,
    },
    #[error(
        "patch {patch} applies to {file} only with fuzz ({hunks}): its context lines differ \
         from the source tree's, so the change may land in the wrong place; make the patch \
         against the running kernel's source"
    )]
    Fuzz {
        patch: String,
        file: String,
        hunks: String,
    },
    #[error(
        "patch {patch} is already applied to {file} in the source tree (or it is reversed): \
         pass the source without it, as the running kernel was built"
    )]
    AlreadyApplied { patch: String, file: String },
    #[error("patch {patch} is malformed: {detail}")]
    Malformed { patch: String, detail: String },
    #[error(transparent)]
    Command(#[from] CommandError),
}

/// One line of a patch without its line end, and whether that end was CRLF.
fn lines(text: &[u8]) -> impl Iterator<Item = (usize, String, bool)> + '_ {
    text.split(|&b| b == b'\n')
        .enumerate()
        .map(|(index, line)| {
            let (line, crlf) = match line.strip_suffix(b"\r") {
                Some(line) => (line, true),
                None => (line, false),
            };
            (index + 1, String::from_utf8_lossy(line).into_owned(), crlf)
        })
}

/// `a/fs/x.c` -> `fs/x.c` (`-p1`), without a trailing timestamp; None for `/dev/null`.
fn strip_path(path: &str) -> Option<String> {
    let path = path.split('\t').next().unwrap_or(path).trim_end();
    if path == "/dev/null" {
        return None;
    }
    Some(
        path.split_once('/')
            .map_or(path, |(_, rest)| rest)
            .to_string(),
    )
}

/// The counts of a hunk header `@@ -a[,b] +c[,d] @@`: lines of the old and the new side.
fn hunk_counts(line: &str) -> Option<(usize, usize)> {
    let rest = line.strip_prefix("@@ -")?;
    let (old, rest) = rest.split_once(" +")?;
    let (new, _) = rest.split_once(" @@")?;
    let count = |range: &str| match range.split_once(',') {
        Some((_, count)) => count.parse().ok(),
        None => Some(1),
    };
    Some((count(old)?, count(new)?))
}

/// Checks the patches, in the order they are applied, against the source tree: the things
/// kpatch-rs refuses (see the module's text), and that every file changed exists in the tree
/// or is created by an earlier patch.
pub fn check_patches(patches: &[(String, Vec<u8>)], source: &Path) -> Result<(), PatchError> {
    let mut created: Vec<String> = Vec::new();
    for (patch, text) in patches {
        let mut file: Option<String> = None;
        let mut old: Option<Option<String>> = None;
        // The first CRLF line of each file's part (a header line counts for its file).
        let mut pending_crlf: Option<usize> = None;
        let mut crlf_files: Vec<(usize, String)> = Vec::new();
        let mut remaining = (0usize, 0usize);
        for (number, line, crlf) in lines(text) {
            if crlf && pending_crlf.is_none() {
                pending_crlf = Some(number);
            }
            if let (Some(first), Some(current)) = (pending_crlf, &file) {
                if !crlf_files.iter().any(|(_, f)| f == current) {
                    crlf_files.push((first, current.clone()));
                }
                pending_crlf = None;
            }
            if remaining != (0, 0) {
                match line.as_bytes().first() {
                    Some(b' ') | None => {
                        remaining.0 = remaining.0.saturating_sub(1);
                        remaining.1 = remaining.1.saturating_sub(1);
                    }
                    Some(b'-') => remaining.0 = remaining.0.saturating_sub(1),
                    Some(b'+') => remaining.1 = remaining.1.saturating_sub(1),
                    Some(b'\\') => {}
                    Some(_) => {
                        return Err(PatchError::Malformed {
                            patch: patch.clone(),
                            detail: format!(
                                "line {number} ends a hunk of {} early",
                                file.as_deref().unwrap_or("a file")
                            ),
                        })
                    }
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix("diff --git ") {
                // `diff --git a/X b/Y`: the file the following extended headers are about.
                file = rest
                    .rsplit_once(" b/")
                    .map(|(_, new)| new.to_string())
                    .or(file);
            } else if let Some(rest) = line.strip_prefix("--- ") {
                old = Some(strip_path(rest));
            } else if let Some(rest) = line.strip_prefix("+++ ") {
                let new = strip_path(rest);
                let old_path = old.take().flatten();
                if let (Some(from), Some(to)) = (&old_path, &new) {
                    if from != to {
                        return Err(PatchError::Rename {
                            patch: patch.clone(),
                            verb: "renames",
                            noun: "rename",
                            from: from.clone(),
                            to: to.clone(),
                        });
                    }
                }
                match (&old_path, &new) {
                    (None, Some(new)) => created.push(new.clone()),
                    (Some(path), _) => {
                        if !source.join(path).exists() && !created.contains(path) {
                            return Err(PatchError::MissingFile {
                                patch: patch.clone(),
                                file: path.clone(),
                                tree: source.to_path_buf(),
                            });
                        }
                    }
                    (None, None) => {}
                }
                file = new.or(old_path);
                if let (Some(first), Some(current)) = (pending_crlf.take(), &file) {
                    if !crlf_files.iter().any(|(_, f)| f == current) {
                        crlf_files.push((first, current.clone()));
                    }
                }
            } else if let Some(from) = line
                .strip_prefix("rename from ")
                .or_else(|| line.strip_prefix("copy from "))
            {
                let copy = line.starts_with("copy");
                return Err(PatchError::Rename {
                    patch: patch.clone(),
                    verb: if copy { "copies" } else { "renames" },
                    noun: if copy { "copy" } else { "rename" },
                    from: from.to_string(),
                    to: file.clone().unwrap_or_default(),
                });
            } else if line == "GIT binary patch" {
                return Err(PatchError::Binary {
                    patch: patch.clone(),
                    file: file.clone().unwrap_or_default(),
                    what: "GIT binary patch",
                });
            } else if let Some(rest) = line.strip_prefix("Binary files ") {
                let named = rest
                    .strip_suffix(" differ")
                    .and_then(|names| names.rsplit_once(" and "))
                    .and_then(|(_, new)| strip_path(new));
                return Err(PatchError::Binary {
                    patch: patch.clone(),
                    file: named.or(file.clone()).unwrap_or_default(),
                    what: "\"Binary files ... differ\", which carries no change",
                });
            } else if let Some(counts) = hunk_counts(&line) {
                remaining = counts;
            }
        }
        // CRLF is the patch's own line end unless the file it changes has CRLF lines too.
        for (line, crlf_file) in crlf_files {
            let file_has_crlf = std::fs::read(source.join(&crlf_file))
                .is_ok_and(|bytes| bytes.windows(2).any(|pair| pair == b"\r\n"));
            if !file_has_crlf {
                return Err(PatchError::CrlfLineEndings {
                    patch: patch.clone(),
                    file: crlf_file,
                    line,
                });
            }
        }
    }
    Ok(())
}

/// Applies `patch` to `tree`: a dry run first, so that a patch that does not apply leaves the
/// tree as it was, with no fuzz allowed; when it fails, what `patch` said made into an error
/// that names the file and the hunks.
pub fn apply(tree: &Path, patch: &Path, log: &Path) -> Result<(), PatchError> {
    let name = patch.display().to_string();
    let strict = kbuild::run_patch(tree, patch, kbuild::PatchMode::DryRun { fuzz: 0 }, log)?;
    if let Some(failure) = strict.failure {
        // Would the usual fuzz have let it through? Then that is what is wrong with it.
        let fuzzy = kbuild::run_patch(tree, patch, kbuild::PatchMode::DryRun { fuzz: 2 }, log)?;
        let fuzzy_output = fuzzy.failure.is_none().then_some(&fuzzy.output);
        return Err(explain(&name, &strict.output, fuzzy_output).unwrap_or(failure.into()));
    }
    let applied = kbuild::run_patch(tree, patch, kbuild::PatchMode::Apply, log)?;
    match applied.failure {
        Some(failure) => Err(failure.into()),
        None => Ok(()),
    }
}

/// The error for what `patch --dry-run --fuzz=0` printed (`strict`), given what the same dry
/// run with fuzz printed when that one succeeded; None when the output says nothing known.
fn explain(patch: &str, strict: &str, fuzzy_success: Option<&String>) -> Option<PatchError> {
    let mut file = String::new();
    let mut failed: Vec<(String, String)> = Vec::new();
    for line in strict.lines() {
        if let Some(name) = line.strip_prefix("checking file ") {
            file = name.trim().trim_matches('\'').to_string();
        } else if line.starts_with("Reversed (or previously applied) patch detected") {
            return Some(PatchError::AlreadyApplied {
                patch: patch.to_string(),
                file,
            });
        } else if line.contains("Only garbage was found in the patch input") {
            return Some(PatchError::Malformed {
                patch: patch.to_string(),
                detail: "patch found no diff in it".to_string(),
            });
        } else if let Some(at) = line.find("malformed patch at line") {
            return Some(PatchError::Malformed {
                patch: patch.to_string(),
                detail: line[at..].to_string(),
            });
        } else if let Some(hunk) = line.strip_prefix("Hunk ") {
            if let Some((number, at)) = hunk.split_once(" FAILED at ") {
                let at = at.trim_end_matches('.');
                failed.push((file.clone(), format!("hunk {number} at line {at}")));
            }
        }
    }
    let (first_file, _) = failed.first()?;
    let first_file = first_file.clone();
    if let Some(fuzzy) = fuzzy_success {
        let mut fuzz_file = String::new();
        let mut hunks = Vec::new();
        for line in fuzzy.lines() {
            if let Some(name) = line.strip_prefix("checking file ") {
                fuzz_file = name.trim().trim_matches('\'').to_string();
            } else if let Some(hunk) = line.strip_prefix("Hunk ") {
                if let Some((number, rest)) = hunk.split_once(" succeeded at ") {
                    if let Some((_, fuzz)) = rest.split_once(" with fuzz ") {
                        if fuzz_file == first_file {
                            hunks.push(format!(
                                "hunk {number} with fuzz {}",
                                fuzz.trim_end_matches('.')
                            ));
                        }
                    }
                }
            }
        }
        if !hunks.is_empty() {
            return Some(PatchError::Fuzz {
                patch: patch.to_string(),
                file: first_file,
                hunks: hunks.join(", "),
            });
        }
    }
    let hunks: Vec<String> = failed
        .iter()
        .filter(|(f, _)| *f == first_file)
        .map(|(_, hunk)| hunk.clone())
        .collect();
    Some(PatchError::HunkFailed {
        patch: patch.to_string(),
        file: first_file,
        hunks: format!("{} FAILED", hunks.join(", ")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, files: &[(&str, &str)]) -> Result<(), PatchError> {
        let dir = tempfile::tempdir().expect("temp dir");
        for (path, content) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, content).expect("write");
        }
        check_patches(
            &[("fix.patch".to_string(), text.as_bytes().to_vec())],
            dir.path(),
        )
    }

    const PLAIN: &str = "--- a/fs/x.c\n+++ b/fs/x.c\n@@ -1,2 +1,2 @@\n a\n-b\n+B\n";

    #[test]
    fn a_plain_patch_passes_and_a_removed_dashed_line_is_no_header() {
        check(PLAIN, &[("fs/x.c", "a\nb\n")]).expect("plain");
        // `--- x` inside a hunk is a removed line `-- x`, not a file header.
        let dashed = "--- a/fs/x.c\n+++ b/fs/x.c\n@@ -1,2 +1,1 @@\n a\n--- b\n";
        check(dashed, &[("fs/x.c", "a\n-- b\n")]).expect("dashed");
        let new_file = "--- /dev/null\n+++ b/fs/new.c\n@@ -0,0 +1 @@\n+int x;\n";
        check(new_file, &[]).expect("a new file needs no original");
    }

    #[test]
    fn each_refused_form_names_the_patch_and_the_file() {
        let crlf = PLAIN.replace('\n', "\r\n");
        let error = check(&crlf, &[("fs/x.c", "a\nb\n")]).expect_err("crlf");
        assert!(
            error.to_string().starts_with(
                "patch fix.patch has CRLF line endings (line 1, in its change to fs/x.c)"
            ),
            "{error}"
        );
        // A file with CRLF lines is changed by a patch with CRLF lines.
        check(&crlf, &[("fs/x.c", "a\r\nb\r\n")]).expect("crlf file");

        let renamed = "diff --git a/fs/x.c b/fs/y.c\nsimilarity index 90%\nrename from fs/x.c\n\
                       rename to fs/y.c\n";
        let error = check(renamed, &[("fs/x.c", "")]).expect_err("rename");
        assert!(
            error
                .to_string()
                .starts_with("patch fix.patch renames fs/x.c to fs/y.c: "),
            "{error}"
        );
        let moved = "--- a/fs/x.c\n+++ b/fs/y.c\n@@ -1 +1 @@\n-a\n+b\n";
        assert!(matches!(
            check(moved, &[("fs/x.c", "a\n")]),
            Err(PatchError::Rename { .. })
        ));

        let binary =
            "diff --git a/fs/x.c b/fs/x.c\nindex 1..2 100644\nGIT binary patch\nliteral 1\n";
        let error = check(binary, &[("fs/x.c", "")]).expect_err("binary");
        assert!(
            error
                .to_string()
                .starts_with("patch fix.patch has a binary change to fs/x.c (GIT binary patch)"),
            "{error}"
        );
        let differ = "diff -ru a/fs/x.c b/fs/x.c\nBinary files a/fs/x.c and b/fs/x.c differ\n";
        let error = check(differ, &[("fs/x.c", "")]).expect_err("binary");
        assert!(
            error.to_string().contains("binary change to fs/x.c"),
            "{error}"
        );

        let error = check(PLAIN, &[]).expect_err("missing");
        assert!(
            error
                .to_string()
                .starts_with("patch fix.patch changes fs/x.c, which the source tree"),
            "{error}"
        );
        let truncated = "--- a/fs/x.c\n+++ b/fs/x.c\n@@ -1,3 +1,3 @@\n a\n-b\nthen text\n";
        let error = check(truncated, &[("fs/x.c", "a\nb\nc\n")]).expect_err("truncated");
        assert!(
            error
                .to_string()
                .contains("line 6 ends a hunk of fs/x.c early"),
            "{error}"
        );
    }

    #[test]
    fn patchs_own_words_become_errors_with_the_file_and_the_hunks() {
        let failed = "checking file fs/x.c\nHunk #1 FAILED at 2.\nHunk #3 FAILED at 40.\n2 out of 3 hunks FAILED\n";
        let error = explain("fix.patch", failed, None).expect("known");
        assert_eq!(
            error.to_string(),
            "patch fix.patch does not apply to fs/x.c: hunk #1 at line 2, hunk #3 at line 40 \
             FAILED; the source tree is not the one the patch was made for: make the patch \
             against the running kernel's source"
        );
        let fuzzy = "checking file fs/x.c\nHunk #1 succeeded at 2 with fuzz 2.\n".to_string();
        let strict = "checking file fs/x.c\nHunk #1 FAILED at 2.\n1 out of 1 hunk FAILED\n";
        let error = explain("fix.patch", strict, Some(&fuzzy)).expect("known");
        assert!(
            error.to_string().starts_with(
                "patch fix.patch applies to fs/x.c only with fuzz (hunk #1 with fuzz 2)"
            ),
            "{error}"
        );
        let reversed = "checking file fs/x.c\nReversed (or previously applied) patch detected!  Skipping patch.\n";
        assert!(matches!(
            explain("fix.patch", reversed, None),
            Some(PatchError::AlreadyApplied { file, .. }) if file == "fs/x.c"
        ));
        assert!(explain("fix.patch", "something else\n", None).is_none());
    }
}
