//! The diff engine on real Linux 6.12 objects: each patch of `fixtures/kernel/patches` built
//! before and after by `cargo xtask fixtures`, checked for exactly the functions the patch changes and for
//! the special section entries only real kernel code produces.
//!
//! Skipped with a message when the fixtures are not built, except under CI.

#![allow(
    clippy::disallowed_methods,
    reason = "tests compile fixtures and run the binary"
)]

mod common;

use std::path::PathBuf;

use kpatch_diff::compare::Status;
use kpatch_diff::report::{Outcome, Resolution};
use kpatch_diff::{diff, Pair};

fn fixtures_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("KPATCH_RS_KERNEL_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => kpatch_support::cache_root()?.join("fixtures/latest"),
    };
    if dir.join("complete").is_file() {
        return Some(dir);
    }
    kpatch_support::skip_unless_ci("kernel fixtures not built (run `cargo xtask fixtures`)");
    None
}

struct Expect {
    changed: &'static [&'static str],
    new: &'static [&'static str],
    data: &'static [&'static str],
    /// Special sections that must keep at least one entry.
    tables: &'static [&'static str],
    /// Further tables, written by objtool, that must keep entries in the objtool variant.
    objtool_tables: &'static [&'static str],
    /// References that must become livepatch relocations (locals of the original object).
    livepatch_references: &'static [&'static str],
}

fn read(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Checks the plain compiler output and the objtool-processed variant of one object.
fn check(object: &str, expect: Expect) {
    let Some(dir) = fixtures_dir() else { return };
    check_variant(&dir, "", object, &expect, expect.tables);
    let all: Vec<&str> = expect
        .tables
        .iter()
        .chain(expect.objtool_tables)
        .copied()
        .collect();
    check_variant(&dir, "-objtool", object, &expect, &all);
    // Lockdep and friends change much of the code, not which functions the patch changes.
    check_variant(&dir, "-debug", object, &expect, expect.tables);
}

fn check_variant(
    dir: &std::path::Path,
    variant: &str,
    object: &str,
    expect: &Expect,
    tables: &[&str],
) {
    let orig = read(&dir.join(format!("orig{variant}")).join(object));
    let patched = read(&dir.join(format!("patched{variant}")).join(object));
    let result = diff(&Pair {
        name: object,
        orig_name: "original",
        orig: &orig,
        patched: &patched,
        klp_object: "vmlinux",
    })
    .unwrap_or_else(|e| panic!("{object}: {e}"));
    let report = &result.report;
    let mut text = Vec::new();
    let _ = report.write_human(&mut text);
    let text = String::from_utf8_lossy(&text);
    assert_eq!(report.outcome, Outcome::Changed, "{text}");
    assert_eq!(
        report.functions_with(Status::Changed),
        expect.changed,
        "{text}"
    );
    assert_eq!(report.functions_with(Status::New), expect.new, "{text}");
    // Static locals are numbered per configuration; the data list holds for the test kernel's.
    if variant != "-debug" {
        assert_eq!(report.data, expect.data, "{text}");
    }
    for table in tables {
        assert!(
            report.special_entries.get(*table).copied().unwrap_or(0) > 0,
            "{object}{variant}: no {table} entries kept:\n{text}"
        );
    }
    for name in expect.livepatch_references {
        assert!(
            report
                .references
                .iter()
                .any(|r| r.name == *name && r.resolution == Resolution::Livepatch),
            "{object}: {name} is not a livepatch reference:\n{text}"
        );
    }
    let Some(bytes) = &result.object else {
        panic!("{object}{variant}: no output object");
    };
    common::check_output(object, bytes, report);
    common::check_relocations_preserved(object, &patched, bytes, report);
    // ORC's two tables run in parallel: one 6-byte entry per 4-byte instruction address.
    let output = kpatch_diff::elf::Object::parse("output", bytes).expect("output reads back");
    let size = |name: &str| {
        output
            .sections
            .iter()
            .find(|s| s.name == name)
            .map_or(0, |s| s.size)
    };
    assert_eq!(
        size(".orc_unwind_ip") / 4 * 6,
        size(".orc_unwind"),
        "{object}{variant}"
    );
    if variant == "-objtool" {
        // Every ORC entry of the changed functions' sections is kept, the one objtool puts at
        // each section's end included; counted here straight from the relocations.
        let input = kpatch_diff::elf::Object::parse("patched", &patched).expect("input reads back");
        let sections: Vec<&str> = report
            .functions
            .iter()
            .map(|f| f.section.as_str())
            .collect();
        let expected = input
            .sections
            .iter()
            .filter(|s| s.name == ".orc_unwind_ip")
            .flat_map(|s| s.relocations.iter())
            .filter(|r| {
                let symbol = input.symbol(r.symbol);
                symbol
                    .section()
                    .is_some_and(|t| sections.contains(&input.section(t).name.as_str()))
            })
            .count();
        assert_eq!(
            report
                .special_entries
                .get(".orc_unwind_ip")
                .copied()
                .unwrap_or(0),
            expected,
            "{object}{variant}: ORC entries"
        );
    }

    if variant.is_empty() {
        objtool_finds_nothing_new(dir, object, &patched, bytes);
    }

    // Same inputs, same bytes (hash maps inside are seeded differently on each call).
    let again = diff(&Pair {
        name: object,
        orig_name: "original",
        orig: &orig,
        patched: &patched,
        klp_object: "vmlinux",
    })
    .unwrap_or_else(|e| panic!("{object}: {e}"));
    assert_eq!(
        again.object.as_ref(),
        Some(bytes),
        "{object}{variant}: output not reproducible"
    );

    // The original against itself differs in nothing, big as it is.
    let same = diff(&Pair {
        name: object,
        orig_name: "original",
        orig: &orig,
        patched: &orig,
        klp_object: "vmlinux",
    })
    .unwrap_or_else(|e| panic!("{object}: {e}"));
    assert_eq!(
        same.report.outcome,
        Outcome::NoChange,
        "{object} against itself"
    );
}

#[test]
fn cmdline_patch_changes_cmdline_proc_show() {
    check(
        "fs/proc/cmdline.o",
        Expect {
            changed: &["cmdline_proc_show"],
            new: &[],
            data: &[],
            tables: &["__mcount_loc", "__patchable_function_entries"],
            objtool_tables: &[".return_sites", ".call_sites", ".orc_unwind_ip"],
            livepatch_references: &[],
        },
    );
}

#[test]
fn meminfo_patch_keeps_the_alternatives_of_meminfo_proc_show() {
    check(
        "fs/proc/meminfo.o",
        Expect {
            changed: &["meminfo_proc_show"],
            new: &[],
            data: &[],
            tables: &[".altinstructions", "__mcount_loc"],
            objtool_tables: &[".return_sites", ".call_sites", ".orc_unwind_ip"],
            livepatch_references: &["show_val_kb"],
        },
    );
}

#[test]
fn sys_patch_changes_only_getrusage_syscall_despite_moved_lines() {
    // Four lines added above getrusage() move the __LINE__ of every WARN below it (in
    // getrusage itself and in prctl); those functions stay the same. The changed body,
    // __do_sys_getrusage, is an inline kept out of line and so notrace: the syscall entry that
    // jumps to it, which ftrace can hook, is the function replaced.
    check(
        "kernel/sys.o",
        Expect {
            changed: &["__do_sys_getrusage", "__x64_sys_getrusage"],
            new: &[],
            data: &["__already_done.0"],
            tables: &["__mcount_loc", "__patchable_function_entries"],
            objtool_tables: &[".return_sites", ".orc_unwind_ip"],
            livepatch_references: &[],
        },
    );
}

#[test]
fn sched_patch_keeps_bug_and_jump_entries_of_set_task_cpu() {
    check(
        "kernel/sched/core.o",
        Expect {
            changed: &["set_task_cpu"],
            new: &[],
            data: &[],
            tables: &["__bug_table", "__jump_table", "__mcount_loc"],
            // The tracepoint in set_task_cpu goes through a static call and a retpoline.
            objtool_tables: &[
                ".static_call_sites",
                ".retpoline_sites",
                ".return_sites",
                ".call_sites",
                ".orc_unwind_ip",
            ],
            livepatch_references: &[],
        },
    );
}

#[test]
fn transition_patch_copies_the_dynamic_debug_descriptor_of_its_pr_debug() {
    // klp_try_switch_task has four pr_debug descriptors with the same user; they pair by
    // order of use, so it stays the same while klp_cancel_transition's message changed.
    check(
        "kernel/livepatch/transition.o",
        Expect {
            changed: &["klp_cancel_transition"],
            new: &[],
            data: &["__UNIQUE_ID_ddebug297.11", "__func__.4"],
            tables: &["__bug_table", "__jump_table", "__mcount_loc"],
            objtool_tables: &[".return_sites", ".call_sites", ".orc_unwind_ip"],
            livepatch_references: &["klp_complete_transition"],
        },
    );
}

/// Diffs `object` of one variant and returns the report.
fn report_of(dir: &std::path::Path, variant: &str, object: &str) -> kpatch_diff::report::Report {
    let orig = read(&dir.join(format!("orig{variant}")).join(object));
    let patched = read(&dir.join(format!("patched{variant}")).join(object));
    diff(&Pair {
        name: object,
        orig_name: "original",
        orig: &orig,
        patched: &patched,
        klp_object: "vmlinux",
    })
    .unwrap_or_else(|e| panic!("{object}{variant}: {e}"))
    .report
}

#[test]
fn readdir_patch_keeps_the_exception_table_of_the_user_copies() {
    // filldir64 writes to user memory with unsafe_put_user(): __ex_table entries and stac/clac
    // alternatives. At -Os, GCC then stops keeping signal_pending() out of line, so filldir
    // calls a new out-of-line task_sigpending(): the object really changed in both.
    check(
        "fs/readdir.o",
        Expect {
            changed: &["filldir64", "filldir"],
            new: &["task_sigpending"],
            data: &[],
            tables: &["__ex_table", ".altinstructions", "__mcount_loc"],
            objtool_tables: &[".return_sites", ".call_sites", ".orc_unwind_ip"],
            livepatch_references: &["verify_dirent_name"],
        },
    );
}

#[test]
fn lines_added_at_the_top_change_nothing() {
    // Three lines added at the top of each file move every __LINE__: in the bug table of
    // every WARN, and, in the debug variant, in the immediates passed to __might_sleep() and
    // lockdep_rcu_suspicious() and in the "file:line" lockdep names of timers and srcu.
    let Some(dir) = fixtures_dir() else { return };
    let objects = [
        "kernel/fork.o",
        "kernel/exit.o",
        "kernel/workqueue.o",
        "kernel/printk/printk.o",
        "kernel/time/timer.o",
        "mm/memory.o",
    ];
    let mut line_only = 0;
    for object in objects {
        for variant in ["", "-objtool", "-debug"] {
            let report = report_of(&dir, variant, object);
            let mut text = Vec::new();
            let _ = report.write_human(&mut text);
            assert_eq!(
                report.outcome,
                Outcome::NoChange,
                "{object}{variant}:\n{}",
                String::from_utf8_lossy(&text)
            );
            if variant == "-debug" {
                line_only += report.line_only.len();
            }
        }
    }
    // The debug build really has line numbers in code, so the rule was exercised.
    assert!(
        line_only >= 10,
        "only {line_only} line-only functions in the debug variant"
    );
}

/// Runs the kernel build's objtool, with the options Kbuild uses for a module of this
/// configuration, on the patched object and on the diff output: every warning about the
/// output must also be one about the input (same function and offset), so the livepatch
/// module passes objtool as well as the kernel did.
fn objtool_finds_nothing_new(dir: &std::path::Path, object: &str, patched: &[u8], output: &[u8]) {
    let objtool = dir.join("orig/tools/objtool/objtool");
    let Ok(args) = std::fs::read_to_string(dir.join("objtool-args")) else {
        panic!(
            "{}: no objtool-args; rebuild with `cargo xtask fixtures`",
            dir.display()
        );
    };
    let args: Vec<&str> = args.lines().filter(|l| !l.is_empty()).collect();
    let scratch = tempfile::tempdir().expect("temporary directory");
    let warnings = |name: &str, bytes: &[u8]| -> Vec<String> {
        let path = scratch.path().join(name);
        std::fs::write(&path, bytes).expect("write object");
        let run = std::process::Command::new(&objtool)
            .args(&args)
            .arg(&path)
            .output()
            .expect("run objtool");
        assert!(
            run.status.success(),
            "{object}: objtool failed on {name}:\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
        // "<path>: warning: objtool: <function>+<offset>: <message>"
        String::from_utf8_lossy(&run.stderr)
            .lines()
            .filter_map(|l| {
                l.split_once(": warning: objtool: ")
                    .map(|(_, w)| w.to_string())
            })
            .collect()
    };
    let before = warnings("input.o", patched);
    let after = warnings("output.o", output);
    let new: Vec<&String> = after.iter().filter(|w| !before.contains(w)).collect();
    assert!(
        new.is_empty(),
        "{object}: objtool warns about the output only: {new:#?}"
    );
}

#[test]
fn diffing_all_pairs_in_parallel_gives_the_same_results_as_one_by_one() {
    let Some(dir) = fixtures_dir() else { return };
    let manifest = std::fs::read_to_string(dir.join("manifest")).expect("manifest");
    let inputs: Vec<(String, Vec<u8>, Vec<u8>)> = manifest
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(_, object)| {
            (
                object.to_string(),
                read(&dir.join("orig").join(object)),
                read(&dir.join("patched").join(object)),
            )
        })
        .collect();
    let pairs: Vec<Pair<'_>> = inputs
        .iter()
        .map(|(name, orig, patched)| Pair {
            name,
            orig_name: name,
            orig,
            patched,
            klp_object: "vmlinux",
        })
        .collect();
    assert!(pairs.len() >= 5, "manifest lists {} objects", pairs.len());
    let parallel = kpatch_diff::diff_all(&pairs);
    for (pair, result) in pairs.iter().zip(parallel) {
        let result = result.unwrap_or_else(|e| panic!("{}: {e}", pair.name));
        let single = diff(pair).unwrap_or_else(|e| panic!("{}: {e}", pair.name));
        assert_eq!(result.report, single.report, "{}", pair.name);
        assert_eq!(result.object, single.object, "{}", pair.name);
    }
}

/// Random corruptions (a fixed-seed generator, so failures reproduce) of a real kernel object
/// with every kind of special section: each either diffs or fails with an error, never panics.
#[test]
fn corrupted_kernel_objects_never_panic() {
    let Some(dir) = fixtures_dir() else { return };
    let object = "kernel/sched/core.o";
    let orig = read(&dir.join("orig-objtool").join(object));
    let patched = read(&dir.join("patched-objtool").join(object));
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..500 {
        let mut corrupt = patched.clone();
        let len = corrupt.len() as u64;
        for _ in 0..1 + next() % 8 {
            // Half the hits go to the last third, where gcc puts the symbol table, the
            // relocations and the section headers.
            let position = if next() % 2 == 0 {
                len - 1 - next() % (len / 3)
            } else {
                next() % len
            };
            corrupt[position as usize] = next() as u8;
        }
        let _ = diff(&Pair {
            name: object,
            orig_name: object,
            orig: &orig,
            patched: &corrupt,
            klp_object: "vmlinux",
        });
    }
}
