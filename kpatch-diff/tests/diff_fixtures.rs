//! The diff rules, each proven on a C pair under `fixtures/` compiled by gcc with the kernel's
//! code-generation flags: exact changed, new and refused functions and the refusal texts.

#![allow(
    clippy::disallowed_methods,
    reason = "tests compile fixtures and run the binary"
)]

mod common;

use kpatch_diff::compare::Status;
use kpatch_diff::report::Outcome;

/// What one fixture pair must produce.
#[derive(Debug)]
struct Expect {
    outcome: Outcome,
    changed: &'static [&'static str],
    new: &'static [&'static str],
    line_only: &'static [&'static str],
    data: &'static [&'static str],
    /// Kept entries per special section, for sections listed here.
    entries: &'static [(&'static str, usize)],
    /// Symbols the output must reference in the klp object.
    references: &'static [&'static str],
    refusals: &'static [&'static str],
}

const NOTHING: Expect = Expect {
    outcome: Outcome::Changed,
    changed: &[],
    new: &[],
    line_only: &[],
    data: &[],
    entries: &[],
    references: &[],
    refusals: &[],
};

fn check(name: &str, expect: Expect) {
    checked_diff(name, expect);
}

/// Like [`check`], returning the diff for further assertions (`None` when gcc is missing).
fn checked_diff(name: &str, expect: Expect) -> Option<kpatch_diff::DiffOutput> {
    if !common::have_tool("gcc") {
        return None;
    }
    let (patched, result) = common::diff_fixture(name, "vmlinux");
    let report = &result.report;
    let context = || {
        let mut text = Vec::new();
        let _ = report.write_human(&mut text);
        String::from_utf8_lossy(&text).into_owned()
    };
    assert_eq!(report.outcome, expect.outcome, "{name}:\n{}", context());
    assert_eq!(
        report.functions_with(Status::Changed),
        expect.changed,
        "{name} changed:\n{}",
        context()
    );
    assert_eq!(
        report.functions_with(Status::New),
        expect.new,
        "{name} new:\n{}",
        context()
    );
    assert_eq!(report.line_only, expect.line_only, "{name} line-only");
    for function in &report.functions {
        assert_eq!(
            function.difference.is_empty(),
            function.status == Status::New,
            "{name}: a changed function says where it differs, a new one does not: {function:?}"
        );
    }
    let refusals: Vec<String> = report.refusals.iter().map(ToString::to_string).collect();
    assert_eq!(refusals, expect.refusals, "{name} refusals");
    assert_eq!(report.data, expect.data, "{name} data:\n{}", context());
    for (section, count) in expect.entries {
        assert_eq!(
            report.special_entries.get(*section).copied().unwrap_or(0),
            *count,
            "{name}: kept entries of {section}:\n{}",
            context()
        );
    }
    for reference in expect.references {
        assert!(
            report.references.iter().any(|r| r.name == *reference),
            "{name}: no reference to {reference}:\n{}",
            context()
        );
    }
    match (&result.object, report.outcome) {
        (Some(object), Outcome::Changed) => {
            common::check_output(name, object, report);
            common::check_relocations_preserved(name, &patched, object, report);
        }
        (None, Outcome::Changed) => panic!("{name}: changed but no output object"),
        (Some(_), _) => panic!("{name}: output object without a change"),
        (None, _) => {}
    }
    Some(result)
}

#[test]
fn a_changed_function_is_changed_and_its_neighbour_same() {
    check(
        "changed",
        Expect {
            changed: &["cmdline_show"],
            entries: &[("__mcount_loc", 1), ("__patchable_function_entries", 1)],
            references: &["saved_command_line", "seq_printf", "__fentry__"],
            ..NOTHING
        },
    );
}

/// The original functions the diff's output replaces.
fn replaced_names(result: &kpatch_diff::DiffOutput) -> Vec<&str> {
    result
        .report
        .functions
        .iter()
        .filter_map(|f| f.replaces.as_ref().map(|r| r.name.as_str()))
        .collect()
}

#[test]
fn a_changed_notrace_function_is_carried_by_its_replaced_caller() {
    let Some(result) = checked_diff(
        "notrace",
        Expect {
            changed: &["do_uname", "sys_uname"],
            ..NOTHING
        },
    ) else {
        return;
    };
    // ftrace cannot hook do_uname: only its caller replaces a function of the kernel.
    assert_eq!(replaced_names(&result), ["sys_uname"]);
}

#[test]
fn a_function_with_two_names_is_replaced_once() {
    let Some(result) = checked_diff(
        "aliases",
        Expect {
            changed: &["__do_sys_answer", "__x64_sys_answer"],
            ..NOTHING
        },
    ) else {
        return;
    };
    // Both names are one address, one func_stack in the kernel: replaced by the global name
    // alone, or the livepatch would stand on that stack twice.
    assert_eq!(replaced_names(&result), ["__x64_sys_answer"]);
}

#[test]
fn a_new_function_and_new_data_are_included() {
    check(
        "new_function",
        Expect {
            changed: &["meminfo_show"],
            new: &["show_extra"],
            data: &["calls"],
            entries: &[("__mcount_loc", 2), ("__patchable_function_entries", 2)],
            ..NOTHING
        },
    );
}

#[test]
fn identical_code_is_no_change() {
    check(
        "same",
        Expect {
            outcome: Outcome::NoChange,
            ..NOTHING
        },
    );
}

#[test]
fn clones_and_cold_parts_pair_with_their_originals() {
    // `first` and `second` call the changed clone but are themselves the same; the change in
    // `check_limit.cold` makes `check_limit` the function to replace.
    check(
        "clones",
        Expect {
            changed: &["scale.constprop.0", "check_limit"],
            entries: &[("__mcount_loc", 2)],
            ..NOTHING
        },
    );
}

#[test]
fn static_locals_pair_by_use_not_by_number() {
    // `tock`'s `count` is renumbered by the new static above it, yet `tock` is the same, and
    // `tick` keeps using the original `count` through a livepatch relocation.
    check(
        "static_locals",
        Expect {
            changed: &["tick"],
            data: &["extra.2"],
            references: &["count.1"],
            ..NOTHING
        },
    );
}

#[test]
fn line_number_only_changes_are_not_changes() {
    check(
        "line_macro",
        Expect {
            outcome: Outcome::NoChange,
            line_only: &["sleepy"],
            ..NOTHING
        },
    );
}

#[test]
fn strings_compare_by_content() {
    // `farewell`'s string moves inside .rodata.str1.1 but is the same string.
    check(
        "strings",
        Expect {
            changed: &["greet"],
            ..NOTHING
        },
    );
}

#[test]
fn special_section_entries_follow_their_code() {
    // Both functions have one entry in each table; only the changed one's are kept.
    let result = checked_diff(
        "special",
        Expect {
            changed: &["checked"],
            entries: &[
                ("__bug_table", 1),
                ("__jump_table", 1),
                (".altinstructions", 1),
                ("__ex_table", 1),
                ("__mcount_loc", 1),
                ("__patchable_function_entries", 1),
            ],
            references: &["tracing_key", "sink"],
            ..NOTHING
        },
    );
    // Only the kept alternative's replacement (one 3-byte lfence of two) is copied.
    let Some(object) = result.and_then(|r| r.object) else {
        return;
    };
    let object = kpatch_diff::elf::Object::parse("output", &object).expect("output reads back");
    let replacement = object
        .sections
        .iter()
        .find(|s| s.name == ".altinstr_replacement")
        .expect("replacement code copied");
    assert_eq!(replacement.data, [0x0f, 0xae, 0xe8]);
}

#[test]
fn changed_data_value_is_refused() {
    check(
        "data_value",
        Expect {
            outcome: Outcome::Unpatchable,
            refusals: &["cannot patch data_value.o: data symbol threshold in section .data.threshold changed its initial value (contents differ from +0x0); the running kernel's copy holds live state"],
            ..NOTHING
        },
    );
}

#[test]
fn changed_data_size_is_refused() {
    check(
        "data_size",
        Expect {
            outcome: Outcome::Unpatchable,
            changed: &["remember"],
            refusals: &["cannot patch data_size.o: data symbol history in section .bss.history changed size (8 -> 16 bytes)"],
            ..NOTHING
        },
    );
}

#[test]
fn changed_init_function_is_refused() {
    check(
        "init_changed",
        Expect {
            outcome: Outcome::Unpatchable,
            refusals: &["cannot patch init_changed.o: __init function early_setup in section .init.text changed: it ran once at boot and cannot be live patched"],
            ..NOTHING
        },
    );
}

#[test]
fn changed_section_without_symbols_is_refused() {
    check(
        "anonymous_section",
        Expect {
            outcome: Outcome::Unpatchable,
            refusals: &["cannot patch anonymous_section.o: section .rodata.quirks changed but belongs to no function or data symbol"],
            ..NOTHING
        },
    );
}

#[test]
fn a_function_that_moves_to_text_unlikely_is_changed() {
    let Some(result) = checked_diff(
        "moved",
        Expect {
            changed: &["rarely_called"],
            ..NOTHING
        },
    ) else {
        return;
    };
    assert_eq!(
        result.report.functions[0].difference,
        "moved from section .text.rarely_called to section .text.unlikely.rarely_called"
    );
}

#[test]
fn a_function_that_moves_out_of_ordinary_text_is_refused() {
    check(
        "moved_noinstr",
        Expect {
            outcome: Outcome::Unpatchable,
            refusals: &["cannot patch moved_noinstr.o: function guarded moved from section .text.guarded to section .noinstr.text"],
            ..NOTHING
        },
    );
}

/// The names of the functions and objects an output object defines.
fn defined_symbols(output: Option<kpatch_diff::DiffOutput>) -> Option<Vec<String>> {
    let bytes = output?.object?;
    let object = kpatch_diff::elf::Object::parse("output", &bytes).expect("output reads back");
    Some(
        object
            .symbols
            .iter()
            .filter(|s| s.section().is_some() && !s.name.is_empty())
            .filter(|s| {
                matches!(
                    s.kind,
                    kpatch_diff::elf::SymbolKind::Func | kpatch_diff::elf::SymbolKind::Object
                )
            })
            .map(|s| s.name.clone())
            .collect(),
    )
}

#[test]
fn changed_read_only_data_is_copied_with_its_users() {
    // `limits` is const: its users get a new copy; `first_limit` does not use it.
    check(
        "rodata_changed",
        Expect {
            changed: &["limit_for"],
            data: &["limits"],
            ..NOTHING
        },
    );
}

#[test]
fn one_function_of_a_shared_section_is_cut_out() {
    // wait_a, wait_b and wait_c share .sched.text; wait_b shrinks, which moves wait_c, yet
    // only wait_b is changed and only it is copied (with its own ftrace entries).
    let result = checked_diff(
        "shared_section",
        Expect {
            changed: &["wait_b"],
            entries: &[("__mcount_loc", 1), ("__patchable_function_entries", 1)],
            ..NOTHING
        },
    );
    if let Some(defined) = defined_symbols(result) {
        assert_eq!(defined, ["wait_b", "kpatch_rs.shared_section.o.wait_b"]);
    }
}

#[test]
fn dynamic_debug_descriptors_are_copied_for_included_code() {
    // probe's pr_debug format changed; its descriptor (and the function name it points at)
    // is copied so the module registers its own, and only probe's jump entry is kept.
    let result = checked_diff(
        "dyndbg",
        Expect {
            changed: &["probe"],
            data: &["descriptor.3", "__func__.1"],
            entries: &[("__jump_table", 1)],
            ..NOTHING
        },
    );
    if let Some(defined) = defined_symbols(result) {
        assert_eq!(
            defined,
            [
                "descriptor.3",
                "__func__.1",
                "probe",
                "kpatch_rs.dyndbg.o.probe"
            ]
        );
    }
}

#[test]
fn data_moved_between_sections_is_refused() {
    // Giving a zero-initialised static a value moves it from .bss to .data.
    check(
        "data_moved",
        Expect {
            outcome: Outcome::Unpatchable,
            refusals: &["cannot patch data_moved.o: data symbol mode moved from section .bss.mode to section .data.mode"],
            ..NOTHING
        },
    );
}

#[test]
fn a_changed_constant_passed_to_printk_is_a_change() {
    check(
        "printk_constant",
        Expect {
            changed: &["report_retries"],
            ..NOTHING
        },
    );
}

#[test]
fn an_unchanged_const_ops_table_stays_the_original() {
    let Some(result) = checked_diff(
        "const_ops",
        Expect {
            changed: &["thing_open"],
            references: &["thing_ops"],
            ..NOTHING
        },
    ) else {
        return;
    };
    // Unchanged code compares `f_op == &thing_ops`: a copy in the module would make every
    // file the patched code opens look like another kind of file.
    let object = result.object.expect("an output object");
    let output = kpatch_diff::elf::Object::parse("output", &object).expect("output parses");
    let defined: Vec<&str> = output
        .symbols
        .iter()
        .filter(|s| s.section().is_some())
        .map(|s| s.name.as_str())
        .collect();
    assert!(
        !defined.contains(&"thing_ops"),
        "thing_ops was copied into the output: {defined:?}"
    );
    let reference = result
        .report
        .references
        .iter()
        .find(|r| r.name == "thing_ops")
        .expect("a reference to thing_ops");
    assert_eq!(
        reference.binding,
        Some(kpatch_diff::elf::Binding::Local),
        "the original's local table is reached through a livepatch relocation"
    );
}

/// Diffs a fixture pair as part of the klp object `klp_object`.
fn diff_for(name: &str, klp_object: &str) -> Option<kpatch_diff::DiffOutput> {
    if !common::have_tool("gcc") {
        return None;
    }
    let (_, output) = common::diff_fixture(name, klp_object);
    if let Some(object) = &output.object {
        common::check_output(name, object, &output.report);
    }
    Some(output)
}

#[test]
fn keyed_sites_of_a_module_are_dropped_when_inert_and_judged_otherwise() {
    let Some(module) = diff_for("module_keys", "demo_mod") else {
        return;
    };
    let report = &module.report;
    assert_eq!(report.functions_with(Status::Changed), ["demo_handler"]);
    // The static call still goes through its trampoline; the tracepoint stays off.
    assert_eq!(
        report.dropped_entries,
        [
            (".static_call_sites".to_string(), 1),
            ("__jump_table".to_string(), 1)
        ]
        .into_iter()
        .collect()
    );
    assert_eq!(report.special_entries.get("__jump_table"), Some(&2));
    assert_eq!(report.special_entries.get(".static_call_sites"), None);
    let keys: Vec<(&str, &str)> = report
        .module_keys
        .iter()
        .map(|k| (k.function.as_str(), k.key.as_str()))
        .collect();
    assert_eq!(
        keys,
        [
            ("demo_handler", "local_feature"),
            ("demo_handler", "exported_feature")
        ]
    );
    assert!(
        !report
            .references
            .iter()
            .any(|r| r.name.starts_with("__SCK__")),
        "a dropped static call site leaves no reference to its key: {:?}",
        report.references
    );

    // vmlinux applies its livepatch relocations while the module loads: everything is kept.
    let Some(vmlinux) = diff_for("module_keys", "vmlinux") else {
        return;
    };
    assert!(vmlinux.report.dropped_entries.is_empty());
    assert!(vmlinux.report.module_keys.is_empty());
    assert_eq!(vmlinux.report.special_entries.get("__jump_table"), Some(&3));
    assert_eq!(
        vmlinux.report.special_entries.get(".static_call_sites"),
        Some(&1)
    );
}

#[test]
fn an_untraceable_change_that_callers_here_cannot_carry_is_refused() {
    check(
        "untraceable",
        Expect {
            outcome: Outcome::Unpatchable,
            changed: &["hook", "shared_helper", "uses_both"],
            refusals: &[
                "cannot patch untraceable.o: function hook changed and has no __fentry__ call for the livepatch to hook (it is notrace or inline), and its address is taken at .rodata.hook_ops+0x0: calls through that pointer would keep reaching the old code",
                "cannot patch untraceable.o: function shared_helper changed and has no __fentry__ call for the livepatch to hook (it is notrace or inline), and it is global: calls from other units would keep reaching the old code",
            ],
            ..NOTHING
        },
    );
}

#[test]
fn a_const_table_pointing_at_changed_data_is_copied_whatever_the_symbol_order() {
    check(
        "data_chain",
        Expect {
            changed: &["limit_for"],
            data: &["limit_table", "limits"],
            ..NOTHING
        },
    );
}

#[test]
fn a_static_local_that_cannot_be_paired_is_refused() {
    let Some(result) = diff_for("static_unpaired", "vmlinux") else {
        return;
    };
    let refusals: Vec<String> = result
        .report
        .refusals
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(result.report.outcome, Outcome::Unpatchable, "{refusals:?}");
    assert!(
        refusals
            .iter()
            .all(|r| r.contains("cannot be paired with the original's (count.")),
        "{refusals:?}"
    );
    assert!(!refusals.is_empty());
}

#[test]
fn a_rip_relative_field_before_an_immediate_reaches_its_own_variable() {
    let Some(result) = checked_diff(
        "rip_immediate",
        Expect {
            changed: &["limit_reached"],
            references: &["limit"],
            ..NOTHING
        },
    ) else {
        return;
    };
    let names: Vec<&str> = result
        .report
        .references
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert!(
        !names.contains(&"spare"),
        "the field is limit's, not spare's: {names:?}"
    );
}

#[test]
fn a_constant_beside_a_moved_line_is_a_change() {
    check(
        "line_constant",
        Expect {
            changed: &["sleepy"],
            ..NOTHING
        },
    );
}

#[test]
fn changed_boot_time_data_is_no_change_and_says_why() {
    let Some(result) = checked_diff(
        "init_data",
        Expect {
            outcome: Outcome::NoChange,
            ..NOTHING
        },
    ) else {
        return;
    };
    assert_eq!(
        result.report.left_out,
        ["changed boot-time data quirks in .init.rodata, used only while the kernel or the module initialises"]
    );
}

#[test]
fn a_once_only_flag_is_copied_not_reached() {
    let Some(result) = checked_diff(
        "once_flag",
        Expect {
            changed: &["report_once"],
            data: &["__already_done.0"],
            ..NOTHING
        },
    ) else {
        return;
    };
    assert!(
        result
            .report
            .data
            .iter()
            .any(|d| d.starts_with("__already_done.")),
        "{:?}",
        result.report.data
    );
    assert!(!result
        .report
        .references
        .iter()
        .any(|r| r.name.starts_with("__already_done")));
}

#[test]
fn compound_literals_that_refer_to_each_other_stay_paired() {
    check(
        "compound_literals",
        Expect {
            changed: &["dev_start"],
            references: &["devs"],
            ..NOTHING
        },
    );
}

#[test]
fn a_netlink_error_message_is_copied_like_func() {
    let Some(result) = checked_diff(
        "netlink_msg",
        Expect {
            changed: &["validate"],
            data: &["__msg.0"],
            ..NOTHING
        },
    ) else {
        return;
    };
    assert!(
        result.report.data.iter().any(|d| d.starts_with("__msg.")),
        "{:?}",
        result.report.data
    );
}

#[test]
fn a_changed_kernel_thread_loop_is_refused_and_its_callees_are_not() {
    check(
        "kthread_loop",
        Expect {
            outcome: Outcome::Unpatchable,
            changed: &["worker_main", "worker_step"],
            refusals: &[
                "cannot patch kthread_loop.o: function worker_main changed and is a kernel thread's main loop (it calls kthread_should_stop): the thread sleeps inside it and never returns, so the livepatch transition would never finish; move the change into a function the loop calls (one that returns to it), so the patch replaces only that",
            ],
            ..NOTHING
        },
    );
}

#[test]
fn a_fallback_block_that_moved_in_altinstr_aux_is_no_change() {
    check(
        "altinstr_aux",
        Expect {
            changed: &["first"],
            ..NOTHING
        },
    );
}

#[test]
fn ubsan_source_locations_that_moved_are_no_change() {
    check(
        "ubsan_lines",
        Expect {
            changed: &["read_table"],
            ..NOTHING
        },
    );
}

/// A fixture pair diffed with `options` (`None` when gcc is missing).
fn layout_diff(name: &str, options: &kpatch_diff::DiffOptions) -> Option<kpatch_diff::DiffOutput> {
    common::have_tool("gcc").then(|| common::diff_fixture_with(name, "vmlinux", options).1)
}

#[test]
fn a_member_added_to_a_used_struct_is_refused_with_the_shadow_variable_advice() {
    check(
        "layout_member_added",
        Expect {
            outcome: Outcome::Unpatchable,
            changed: &["session_bytes"],
            refusals: &[
                "cannot patch layout_member_added.o: the patch changes the layout of \
                struct session: member flags added at offset 8 (8 bytes); member bytes moved \
                from offset 8 to offset 16; member buffer moved from offset 16 to offset 24; \
                member cookie moved from offset 16 to offset 24; size changed from 24 to 32 bytes. \
                The original code uses it (session_bytes), so objects laid out the old way may \
                be live when the patch lands, and the new code would misread them. To give \
                existing objects new state, leave the type as it is and keep the new field in a \
                shadow variable (klp_shadow_alloc or klp_shadow_get_or_alloc where the object is \
                first met, klp_shadow_get where it is used, klp_shadow_free when it goes away). \
                If no object of the type can be live when the patch loads, pass \
                --allow-layout-change 'struct session'",
            ],
            ..NOTHING
        },
    );
}

#[test]
fn a_resized_member_of_a_typedef_struct_is_refused_without_shadow_advice() {
    let Some(output) = checked_diff(
        "layout_resized",
        Expect {
            outcome: Outcome::Unpatchable,
            changed: &["count_hit"],
            refusals: &[
                "cannot patch layout_resized.o: the patch changes the layout of \
                counter_t: member hits resized from 4 bytes to 8 bytes; member hits moved from \
                offset 4 to offset 8; size changed from 8 to 16 bytes. The original code uses it \
                (count_hit), so objects laid out the old way may be live when the patch lands, \
                and the new code would misread them. If no object of the type can be live when \
                the patch loads, pass --allow-layout-change 'counter_t'",
            ],
            ..NOTHING
        },
    ) else {
        return;
    };
    assert_eq!(output.report.refusals[0].symbol, "counter_t");
}

#[test]
fn a_bit_field_that_moves_by_one_bit_is_a_layout_change() {
    let Some(output) = layout_diff("layout_bitfield", &Default::default()) else {
        return;
    };
    assert_eq!(output.report.outcome, Outcome::Unpatchable);
    let reason = &output.report.refusals[0].reason;
    for part in [
        "layout of struct flags",
        "member busy moved from bit 1 to bit 2",
        "member count moved from bit 2 to bit 3",
        "member stale added at bit 1 (1 bit)",
        "klp_shadow_alloc",
    ] {
        assert!(reason.contains(part), "no `{part}` in: {reason}");
    }
}

#[test]
fn a_type_new_in_the_patch_and_a_renamed_member_pass_the_layout_check() {
    for name in ["layout_new_type", "layout_renamed"] {
        let Some(output) = layout_diff(name, &Default::default()) else {
            return;
        };
        let report = &output.report;
        assert!(report.layout_checked, "{name}: the layout was checked");
        assert_eq!(
            report.outcome,
            Outcome::Changed,
            "{name}: {:?}",
            report.refusals
        );
        assert!(report.layout_changes_allowed.is_empty());
    }
}

#[test]
fn an_allowed_layout_change_is_reported_not_refused() {
    let options = kpatch_diff::DiffOptions {
        require_dwarf: true,
        allowed_layout_changes: vec!["struct session".to_string()],
        ..Default::default()
    };
    let Some(output) = layout_diff("layout_member_added", &options) else {
        return;
    };
    let report = &output.report;
    assert_eq!(report.outcome, Outcome::Changed, "{:?}", report.refusals);
    assert_eq!(report.layout_changes_allowed.len(), 1);
    let allowed = &report.layout_changes_allowed[0];
    assert_eq!(allowed.type_name, "struct session");
    assert!(allowed.member_added);
    assert_eq!(allowed.users, ["session_bytes"]);
    let json = serde_json::to_value(report).expect("report as JSON");
    assert_eq!(
        json["layout_changes_allowed"][0]["type_name"],
        "struct session"
    );
    let mut text = Vec::new();
    report.write_human(&mut text).expect("human report");
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.contains("layout change of struct session allowed"),
        "the human report names the allowed change:\n{text}"
    );
}

#[test]
fn objects_without_dwarf_are_refused_when_the_layout_check_needs_it() {
    if !common::have_tool("gcc") {
        return;
    }
    let orig = common::compile_fixture_with("layout_new_type", "orig", &["-g0"]);
    let patched = common::compile_fixture_with("layout_new_type", "patched", &["-g0"]);
    let pair = kpatch_diff::Pair {
        name: "layout_new_type.o",
        orig_name: "original",
        orig: &orig,
        patched: &patched,
        klp_object: "vmlinux",
    };
    let unchecked = kpatch_diff::diff(&pair).expect("diff");
    assert!(!unchecked.report.layout_checked);
    assert_eq!(unchecked.report.outcome, Outcome::Changed);
    let required = kpatch_diff::DiffOptions {
        require_dwarf: true,
        ..Default::default()
    };
    let refused = kpatch_diff::diff_with(&pair, &required).expect("diff");
    assert_eq!(refused.report.outcome, Outcome::Unpatchable);
    assert!(
        refused.report.refusals[0].reason.contains("carry no DWARF"),
        "{:?}",
        refused.report.refusals
    );
}

/// The special sections of older kernels, read with their layout
/// (`fixtures/layouts/older.json`): 13-byte alternatives, 24-byte absolute jump entries,
/// paravirt patch sites, exception entries with a handler and fixup code in `.fixup`,
/// pointer-sized objtool annotations, dynamic debug in `__verbose`.
#[test]
fn special_sections_of_older_kernels_follow_their_code() {
    let result = checked_diff(
        "old_sections",
        Expect {
            changed: &["checked"],
            entries: &[
                (".altinstructions", 1),
                ("__jump_table", 2),
                (".parainstructions", 1),
                ("__ex_table", 1),
                (".discard.retpoline_safe", 1),
            ],
            references: &["tracing_key", "sink", "ex_handler_default"],
            data: &["descriptor.3", "__func__.1"],
            ..NOTHING
        },
    );
    let Some(object) = result.and_then(|r| r.object) else {
        return;
    };
    let object = kpatch_diff::elf::Object::parse("output", &object).expect("output reads back");
    let section = |name: &str| {
        object
            .sections
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("output has no {name}"))
    };
    // One of each entry, at the older sizes. The objects' paravirt tables are 28 bytes, the
    // last of their two entries without its tail padding; the kept one is the first.
    assert_eq!(section(".altinstructions").size, 13);
    assert_eq!(section(".parainstructions").size, 16);
    assert_eq!(section(".discard.retpoline_safe").size, 8);
    assert_eq!(section("__ex_table").size, 12);
    // The kept exception entry's fixup, and only it: one of the two 10-byte pieces
    // (`movl $-14, %reg` and the `jmp` back into checked()).
    let fixup = section(".fixup");
    assert_eq!(
        fixup.data.len(),
        10,
        "fixup code copied: {:02x?}",
        fixup.data
    );
    assert_eq!(
        fixup.data[1..5],
        (-14i32).to_le_bytes(),
        "{:02x?}",
        fixup.data
    );
    assert_eq!(fixup.data[5], 0xe9, "the jump back: {:02x?}", fixup.data);
    // The descriptor of the changed function's pr_debug, copied as dynamic debug data.
    assert!(
        object
            .symbols
            .iter()
            .any(|s| s.name.starts_with("descriptor.")
                && s.section()
                    .is_some_and(|id| object.section(id).name == "__verbose")),
        "the output carries checked()'s __verbose descriptor"
    );
}

/// Read with Linux 6.12's layout, the same objects do not fit: the kernel must describe
/// its own tables.
#[test]
fn older_sections_are_an_error_or_refused_under_another_kernels_layout() {
    if !common::have_tool("gcc") {
        return;
    }
    let orig = common::compile_fixture("old_sections", "orig");
    let patched = common::compile_fixture("old_sections", "patched");
    let pair = kpatch_diff::Pair {
        name: "old_sections.o",
        orig_name: "original",
        orig: &orig,
        patched: &patched,
        klp_object: "vmlinux",
    };
    // 6.12 has no paravirt patch sites: refused, naming the section and the type.
    let older = common::fixture_layout("old_sections").expect("old_sections names a layout");
    let with = |names: &[&str]| {
        let mut layout = kpatch_diff::special_sections::KernelLayout::linux_6_12_x86_64();
        for name in names {
            layout
                .types
                .insert(name.to_string(), older.types[*name].clone());
        }
        kpatch_diff::DiffOptions {
            kernel_layout: Some(layout),
            ..Default::default()
        }
    };
    let options = with(&["struct jump_entry", "struct alt_instr"]);
    let refused = kpatch_diff::diff_with(&pair, &options).expect("diff");
    assert_eq!(refused.report.outcome, Outcome::Unpatchable);
    let reasons: Vec<String> = refused
        .report
        .refusals
        .iter()
        .map(|r| r.to_string())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains(".parainstructions") && r.contains("struct paravirt_patch_site")),
        "{reasons:?}"
    );
    // 14-byte alternatives over 13-byte entries: an error naming the section.
    let options = with(&["struct jump_entry", "struct paravirt_patch_site"]);
    let error = kpatch_diff::diff_with(&pair, &options)
        .expect_err("13-byte alternatives read as 14-byte ones")
        .to_string();
    assert!(
        error.contains(".altinstructions") && error.contains("14-byte"),
        "{error}"
    );
}

#[test]
fn a_change_only_in_replacement_or_fixup_code_changes_the_function() {
    check(
        "site_code",
        Expect {
            changed: &["alt_changed", "fixup_changed"],
            entries: &[(".altinstructions", 1), ("__ex_table", 1)],
            ..NOTHING
        },
    );
}

#[test]
fn the_printk_index_is_left_out() {
    let result = checked_diff(
        "printk_index",
        Expect {
            changed: &["greet"],
            ..NOTHING
        },
    );
    let Some(object) = result.and_then(|r| r.object) else {
        return;
    };
    let object = kpatch_diff::elf::Object::parse("output", &object).expect("output reads back");
    assert!(!object.sections.iter().any(|s| s.name == ".printk_index"));
}

#[test]
fn orc_entries_are_kept_in_parallel() {
    let result = checked_diff(
        "orc",
        Expect {
            changed: &["first"],
            entries: &[(".orc_unwind_ip", 1)],
            ..NOTHING
        },
    );
    let Some(object) = result.and_then(|r| r.object) else {
        return;
    };
    let object = kpatch_diff::elf::Object::parse("output", &object).expect("output reads back");
    let orc = object
        .sections
        .iter()
        .find(|s| s.name == ".orc_unwind")
        .expect("ORC entries copied");
    assert_eq!(orc.data, [8, 0, 0, 0, 0x15, 0], "first()'s entry only");
}

#[test]
fn an_unknown_table_describing_copied_code_is_refused() {
    check(
        "unknown_table",
        Expect {
            outcome: Outcome::Unpatchable,
            changed: &["checked"],
            refusals: &["cannot patch unknown_table.o: section .kpatch_rs_test_sites has an entry (at 0x0) describing code the patch copies, and kpatch-rs does not know what the kernel does with it"],
            ..NOTHING
        },
    );
}

#[test]
fn a_nokprobe_copy_keeps_its_blacklist_entry() {
    check(
        "kprobe_blacklist",
        Expect {
            changed: &["checked"],
            entries: &[("_kprobe_blacklist", 1)],
            ..NOTHING
        },
    );
}

#[test]
fn a_named_entry_of_an_unknown_table_describing_copied_code_is_refused() {
    check(
        "unknown_named",
        Expect {
            outcome: Outcome::Unpatchable,
            changed: &["checked"],
            refusals: &["cannot patch unknown_named.o: section .kpatch_rs_test_named has an entry (at 0x0) describing code the patch copies, and kpatch-rs does not know what the kernel does with it"],
            ..NOTHING
        },
    );
}
