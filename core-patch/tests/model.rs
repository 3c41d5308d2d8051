//! The model kernel step by step: the coming hook's error path with several patches, and the
//! invariants catching states that the algorithm must never produce.

use core_patch::model::explore::INVARIANTS;
use core_patch::model::kernel::{
    Binding, Fault, HookRun, Kernel, ModuleState, ObjectRef, Op, PatchId,
};
use core_patch::model::scenario;

fn parse(text: &str) -> scenario::Scenario {
    match scenario::parse("t", text) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

/// Runs `op` to its end on `kernel` and returns its error and its kernel messages.
fn run(scenario: &scenario::Scenario, kernel: &mut Kernel, op: Op) -> (Option<i32>, Vec<String>) {
    let mut log = Vec::new();
    let mut error = None;
    let mut step = Some(op.first_step());
    while let Some(current) = step {
        let result = kernel.step(
            &scenario.catalog,
            Binding::KlpAlive,
            op,
            current,
            Some(&mut log),
        );
        error = error.or(result.error);
        step = result.next;
    }
    (error, log)
}

fn violations(scenario: &scenario::Scenario, kernel: &Kernel) -> Vec<&'static str> {
    INVARIANTS
        .iter()
        .filter(|(_, invariant)| invariant(&scenario.catalog, kernel).is_some())
        .map(|(name, _)| *name)
        .collect()
}

#[test]
fn a_failing_patch_reverts_the_patches_before_it_and_refuses_the_load() {
    let s = parse(
        "module M\npatch P1 callbacks M:b\npatch P2 callbacks M:b\npatch P3 callbacks M:b\ncpu C load M",
    );
    let mut kernel = Kernel::new(&s.catalog);
    for patch in ["P1", "P2", "P3"] {
        let Some(id) = s.catalog.patch_named(patch) else {
            panic!()
        };
        assert_eq!(run(&s, &mut kernel, Op::Enable(id)).0, None);
    }
    kernel.set_pre_patch_ret(PatchId(1), -19);
    let Some(m) = s.catalog.module_named("M") else {
        panic!()
    };
    let (error, log) = run(&s, &mut kernel, Op::Load(m));
    assert_eq!(error, Some(-19));
    assert_eq!(
        log,
        [
            "livepatch: applying patch 'P1' to loading module 'M'",
            "P1: pre_patch_callback: M -> [MODULE_STATE_COMING] Full formed, running module_init",
            "P1: post_patch_callback: M -> [MODULE_STATE_COMING] Full formed, running module_init",
            "livepatch: applying patch 'P2' to loading module 'M'",
            "P2: pre_patch_callback: M -> [MODULE_STATE_COMING] Full formed, running module_init",
            "livepatch: pre-patch callback failed for object 'M'",
            "livepatch: patch 'P2' failed for module 'M', refusing to load module 'M'",
            // Still COMING: klp_module_coming() reverts before it returns to the loader.
            "P1: pre_unpatch_callback: M -> [MODULE_STATE_COMING] Full formed, running module_init",
            "livepatch: reverting patch 'P1' on unloading module 'M'",
            "P1: post_unpatch_callback: M -> [MODULE_STATE_COMING] Full formed, running module_init",
        ]
    );
    // P3 was never reached; nothing is left bound or on the stack, the module is gone.
    assert_eq!(kernel.func_stacks, [Vec::<PatchId>::new()]);
    assert!(kernel
        .patches
        .iter()
        .all(|p| p.objects.iter().all(|o| !o.bound)));
    assert_eq!(kernel.modules[0].state, ModuleState::Absent);
    assert!(
        violations(&s, &kernel).is_empty(),
        "{:?}",
        violations(&s, &kernel)
    );
}

#[test]
fn invariants_catch_broken_states() {
    let s = parse("module M\npatch P1 M:b\npatch P2 M:b\ncpu C load M");
    let mut base = Kernel::new(&s.catalog);
    let Some(m) = s.catalog.module_named("M") else {
        panic!()
    };
    for patch in [PatchId(0), PatchId(1)] {
        assert_eq!(run(&s, &mut base, Op::Enable(patch)).0, None);
    }
    assert_eq!(run(&s, &mut base, Op::Load(m)).0, None);
    assert!(violations(&s, &base).is_empty());
    assert_eq!(base.func_stacks, [vec![PatchId(0), PatchId(1)]]);

    let check = |edit: &dyn Fn(&mut Kernel), expected: &[&str]| {
        let mut kernel = base.clone();
        edit(&mut kernel);
        assert_eq!(violations(&s, &kernel), expected);
    };
    check(&|k| k.func_stacks[0].reverse(), &["func_stack order"]);
    check(
        &|k| k.func_stacks[0].pop().map(drop).unwrap_or(()),
        &["func_stack order"],
    );
    check(
        &|k| k.modules[0].going_hook_done = true,
        &[
            "no object bound to a gone module",
            "klp_alive between the hooks",
        ],
    );
    check(
        &|k| k.modules[0].klp_alive = false,
        &["klp_alive between the hooks"],
    );
    check(
        &|k| k.modules[0].coming_hook = HookRun::No,
        &["klp_alive between the hooks"],
    );
    check(
        &|k| {
            k.fault = Some(Fault::UnpairedCallback {
                object: ObjectRef {
                    patch: PatchId(0),
                    index: 0,
                },
                callback: "post_unpatch",
            })
        },
        &["callbacks paired"],
    );
    check(
        &|k| {
            k.fault = Some(Fault::PatchedTwice {
                object: ObjectRef {
                    patch: PatchId(1),
                    index: 0,
                },
            })
        },
        &["no model fault"],
    );
}
