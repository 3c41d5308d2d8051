//! The explorer against the founding commit's two races: the pre-fix binding rule must break
//! the invariants with both traces, and the fix must hold in every interleaving.

use core_patch::model::{scenario, Binding, Explorer, Report};

fn explore(name: &str, binding: Binding) -> Report {
    let Some(scenario) = scenario::builtin(name) else {
        panic!("no built-in scenario {name}")
    };
    match Explorer::new(scenario, binding) {
        Ok(explorer) => explorer.run(),
        Err(error) => panic!("{name}: {error}"),
    }
}

/// The report as the command prints it; also shown by `cargo test -- --nocapture`.
fn printed(report: &Report) -> String {
    let mut out = String::new();
    report.write(&mut out);
    println!("{out}");
    out
}

/// Interleavings of actors with `steps[i]` atomic steps each: the multinomial coefficient.
fn multinomial(steps: &[u128]) -> u128 {
    let mut total = 0;
    let mut result = 1;
    for &k in steps {
        for i in 1..=k {
            total += 1;
            result = result * total / i;
        }
    }
    result
}

/// Steps per operation in the model: load 5 (UNFORMED, COMING, coming hook, init, LIVE),
/// unload 4 (GOING, exit, going hook, freed), enable and disable 2 (start, complete).
const LOAD: u128 = 5;
const UNLOAD: u128 = 4;
const ENABLE: u128 = 2;

#[test]
fn pre_fix_stacks_b2_b1_b3_when_a_patch_is_enabled_between_coming_and_the_hook() {
    let report = explore("seed-stacking", Binding::ModuleState);
    let Some(first) = report.violations.first() else {
        panic!(
            "pre-fix seed-stacking found no violation:\n{}",
            printed(&report)
        )
    };
    assert_eq!(first.invariant, "func_stack order", "{}", printed(&report));
    let steps: Vec<(&str, &str)> = first
        .trace
        .iter()
        .map(|s| (s.actor.as_str(), s.step))
        .collect();
    assert_eq!(
        steps,
        [
            ("CPU0", "module enters the list, UNFORMED (invisible)"),
            ("CPU0", "module state COMING (visible to find_module)"),
            ("CPU1", "klp_enable_patch(): start patching transition"),
            ("CPU0", "klp_module_coming()"),
        ]
    );
    // STATE 1 of the commit message: a3,a2,a1 and b3; STATE 2: b2,b1,b3.
    let state1 = &first.trace[2].stacks;
    assert_eq!(state1, &["a: P3 P2 P1", "b: P3"]);
    let state2 = &first.trace[3].stacks;
    assert_eq!(state2, &["a: P3 P2 P1", "b: P2 P1 P3"]);
    let text = printed(&report);
    assert!(text.contains("func_stack b: P2 P1 P3"), "{text}");
    assert!(text.contains("3. CPU1 enable P3"), "{text}");
    // The same run also meets the going race, later.
    assert!(report
        .violations
        .iter()
        .any(|v| v.invariant == "no object bound to a gone module"));
}

#[test]
fn pre_fix_binds_a_new_patch_to_a_module_whose_going_hook_ran() {
    let report = explore("seed-going", Binding::ModuleState);
    printed(&report);
    let Some(first) = report.violations.first() else {
        panic!(
            "pre-fix seed-going found no violation:\n{}",
            printed(&report)
        )
    };
    assert_eq!(first.invariant, "no object bound to a gone module");
    assert_eq!(
        first.message,
        "P3's object for M is bound to M after its going hook ran"
    );
    let last = first
        .trace
        .last()
        .map(|s| (s.actor.as_str(), s.op.as_str()));
    assert_eq!(last, Some(("CPU1", "enable P3")));
    let hook = first
        .trace
        .iter()
        .position(|s| s.step == "klp_module_going()");
    assert!(hook.is_some_and(|h| h + 1 < first.trace.len()));
    assert!(first
        .trace
        .iter()
        .any(|s| s.modules.iter().any(|m| m == "M GOING klp_alive=0")));
    assert_eq!(
        first.trace.last().map(|s| s.stacks.clone()),
        Some(vec![String::from("a: P3 P2 P1"), String::from("b: P3")])
    );
}

#[test]
fn the_fix_holds_in_every_interleaving() {
    for (name, actors) in [
        ("seed-stacking", vec![LOAD + UNLOAD, ENABLE]),
        ("seed-going", vec![UNLOAD, ENABLE]),
        ("two-modules", vec![LOAD + UNLOAD, LOAD, ENABLE + ENABLE]),
    ] {
        let report = explore(name, Binding::KlpAlive);
        assert!(report.violations.is_empty(), "{}", printed(&report));
        assert_eq!(report.interleavings, multinomial(&actors), "{name}");
        assert!(report.states > 1, "{name}");
        assert!(printed(&report).contains("every interleaving holds every invariant"));
    }
}

#[test]
fn pre_fix_and_fix_cover_the_same_interleavings() {
    for name in ["seed-stacking", "seed-going", "two-modules"] {
        let before = explore(name, Binding::ModuleState);
        let after = explore(name, Binding::KlpAlive);
        assert_eq!(before.interleavings, after.interleavings, "{name}");
    }
}

#[test]
fn seed_stacking_is_explored_in_well_under_ten_seconds() {
    let report = explore("seed-stacking", Binding::KlpAlive);
    assert!(report.elapsed.as_secs_f64() < 10.0, "{:?}", report.elapsed);
}
