//! `kpatch-rs core explore` as users run it: the built binary, its exit codes and its trace.

#![allow(
    clippy::disallowed_methods,
    reason = "tests compile fixtures and run the binary"
)]

use std::path::PathBuf;
use std::process::Command;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn explore(args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_kpatch-rs"))
        .args(["core", "explore"])
        .args(args)
        .output();
    let Ok(output) = output else {
        panic!("cannot run kpatch-rs: {output:?}")
    };
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn check(args: &[&str], code: i32, stdout_has: &[&str]) {
    let run = explore(args);
    assert_eq!(
        run.code,
        Some(code),
        "{args:?}\n{}{}",
        run.stdout,
        run.stderr
    );
    for expected in stdout_has {
        assert!(
            run.stdout.contains(expected),
            "{args:?}: no {expected:?} in\n{}",
            run.stdout
        );
    }
}

fn scenario_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../core-patch/scenarios")
        .join(name);
    path.to_string_lossy().into_owned()
}

#[test]
fn pre_fix_stacking_race_exits_4_with_the_b2_b1_b3_stack() {
    check(
        &["--pre-fix", "seed-stacking"],
        4,
        &[
            "invariant violated: func_stack order",
            "3. CPU1 enable P3",
            "4. CPU0 load M: klp_module_coming()",
            "func_stack b: P2 P1 P3",
        ],
    );
}

#[test]
fn pre_fix_going_race_exits_4() {
    check(
        &["--pre-fix", "seed-going"],
        4,
        &[
            "invariant violated: no object bound to a gone module",
            "P3's object for M is bound to M after its going hook ran",
            "CPU0 unload M: klp_module_going()",
            "func_stack b: P3",
        ],
    );
}

#[test]
fn fixed_core_exits_0_and_reports_coverage() {
    for scenario in ["seed-stacking", "seed-going"] {
        check(
            &[scenario],
            0,
            &[
                "every interleaving holds every invariant",
                "distinct states and",
            ],
        );
    }
}

#[test]
fn scenario_files_are_explored_like_built_ins() {
    let file = scenario_file("two-modules.scn");
    check(
        &[&file],
        0,
        &["scenario two-modules: fixed", "6126120 interleavings"],
    );
    check(&["--pre-fix", &file], 4, &["invariant violated"]);
}

#[test]
fn bad_scenarios_exit_1_and_say_why() {
    let run = explore(&["no-such-scenario"]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("cannot read scenario no-such-scenario"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("seed-stacking, seed-going"),
        "{}",
        run.stderr
    );

    let dir = tempfile::tempdir();
    let Ok(dir) = dir else { panic!("{dir:?}") };
    let path = dir.path().join("broken.scn");
    let written = std::fs::write(&path, "module M\npatch P M:b\ncpu CPU0 load N\n");
    assert!(written.is_ok());
    let run = explore(&[&path.to_string_lossy()]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr
            .contains("line 3: unknown module `N` in `load N`"),
        "{}",
        run.stderr
    );
}
