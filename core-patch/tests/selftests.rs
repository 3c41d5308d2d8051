//! The upstream livepatch selftests, played against the model kernel.
//!
//! The scripts come from the kernel source (Linux 6.12, `tools/testing/selftests/livepatch`):
//! the eleven scenarios of `test-callbacks.sh` and the two scenarios of `test-sysfs.sh` that
//! check `.../patched` ("sysfs test" for vmlinux, "sysfs test object/patched" for a module).
//! Each scenario's harness commands (`load_lp`, `load_mod`, `disable_lp`, ...) are read from the
//! script and played on the model; the expected log is the script's `check_result` text with
//! the script's variables substituted.
//!
//! Which lines are compared: exactly the lines `check_result` compares on a real kernel. The
//! model writes the harness's own `% ...` lines (which `functions.sh` writes to `/dev/kmsg`),
//! insmod's error line for a failing load (which `load_failing_mod` logs), the target modules'
//! `init`/`exit` messages, the demo's callback messages and the livepatch core's messages;
//! then the same filter as `check_result` keeps lines containing `livepatch:` or `test_klp`
//! and drops the taint lines. The comparison is of the whole text, in order: a mismatch is a
//! model bug.
//!
//! What the harness waits for, the player does: `load_lp` and `disable_lp` wait until the
//! transition is over, so the player completes it; `load_lp_nowait` does not, which is how the
//! "busy target module" scenario keeps its transition open while the busy module would block
//! it on a real kernel. `check_sysfs_value` is checked for `enabled`, `transition`, `replace`
//! and `<object>/patched`; `check_sysfs_rights` is about sysfs file modes and is not modelled.
//!
//! Where the scripts come from: `$KPATCH_RS_LINUX_SOURCE` (an extracted tree), else
//! `${XDG_CACHE_HOME:-$HOME/.cache}/kpatch-rs/linux-source-6.12`, extracted there once from
//! Debian's `/usr/src/linux-source-6.12.tar.xz` (package linux-source-6.12). Without any, the
//! tests are skipped with a message, except under `CI`, where they fail.

#![allow(
    clippy::disallowed_methods,
    reason = "tests compile fixtures and run the binary"
)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use core_patch::model::kernel::{
    Binding, Catalog, FuncDecl, FuncId, Kernel, ModuleDecl, ModuleId, ObjectDecl, Op, PatchDecl,
    PatchId, Step, Target,
};

const TARBALL: &str = "/usr/src/linux-source-6.12.tar.xz";
const SELFTESTS: &str = "tools/testing/selftests/livepatch";

fn source_tree() -> Result<PathBuf, String> {
    if let Some(tree) = std::env::var_os("KPATCH_RS_LINUX_SOURCE") {
        return Ok(PathBuf::from(tree));
    }
    let cache = kpatch_support::cache_root().ok_or("neither XDG_CACHE_HOME nor HOME is set")?;
    let tree = cache.join("linux-source-6.12");
    if tree.join(SELFTESTS).join("test-callbacks.sh").is_file() {
        return Ok(tree);
    }
    if !Path::new(TARBALL).is_file() {
        return Err(format!(
            "{TARBALL} is missing (apt-get install linux-source-6.12, or set KPATCH_RS_LINUX_SOURCE to a kernel tree)"
        ));
    }
    // Extract into a private directory, then rename, so that a concurrent run never reads a
    // half-written tree.
    let staging = cache.join(format!("linux-source-6.12.tmp{}", std::process::id()));
    std::fs::create_dir_all(&staging).map_err(|e| format!("cannot create {staging:?}: {e}"))?;
    let status = Command::new("tar")
        .arg("-xJf")
        .arg(TARBALL)
        .arg("-C")
        .arg(&staging)
        .arg(format!("linux-source-6.12/{SELFTESTS}"))
        .status()
        .map_err(|e| format!("cannot run tar: {e}"))?;
    if !status.success() {
        return Err(format!("tar could not extract {SELFTESTS} from {TARBALL}"));
    }
    // Losing the race to another run is fine: its tree is the same.
    let _ = std::fs::rename(staging.join("linux-source-6.12"), &tree);
    let _ = std::fs::remove_dir_all(&staging);
    Ok(tree)
}

fn selftest_script(name: &str) -> Option<String> {
    static TREE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match TREE.get_or_init(source_tree) {
        Ok(tree) => {
            let path = tree.join(SELFTESTS).join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => Some(text),
                Err(e) => panic!("cannot read {path:?}: {e}"),
            }
        }
        Err(why) => {
            kpatch_support::skip_unless_ci(&format!(
                "the livepatch selftests are not available: {why}"
            ));
            None
        }
    }
}

/// One `start_test` ... `check_result` block of a script.
#[derive(Debug)]
struct SelftestCase {
    title: String,
    commands: Vec<Vec<String>>,
    expected: String,
}

/// Splits a script into its scenarios, with shell variables (`NAME=value`, `$NAME`,
/// `${NAME}`) substituted as the script assigns them.
fn parse_script(text: &str) -> Vec<SelftestCase> {
    let mut vars: HashMap<String, String> = HashMap::new();
    let mut cases = Vec::new();
    let mut current: Option<SelftestCase> = None;
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((name, value)) = line.split_once('=') {
            if !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit())
            {
                vars.insert(name.to_string(), substitute(value, &vars));
                continue;
            }
        }
        if let Some(title) = line.strip_prefix("start_test ") {
            current = Some(SelftestCase {
                title: title.trim_matches('"').to_string(),
                commands: Vec::new(),
                expected: String::new(),
            });
            continue;
        }
        if let Some(first) = line.strip_prefix("check_result \"") {
            let mut expected = vec![first.to_string()];
            while !expected.last().is_some_and(|l| l.ends_with('"')) {
                match lines.next() {
                    Some(next) => expected.push(next.to_string()),
                    None => panic!("unterminated check_result"),
                }
            }
            let mut joined = expected.join("\n");
            joined.pop();
            if let Some(mut case) = current.take() {
                case.expected = substitute(&joined, &vars);
                cases.push(case);
            }
            continue;
        }
        if let Some(case) = current.as_mut() {
            let words: Vec<String> = substitute(line, &vars)
                .split_whitespace()
                .map(|w| w.trim_matches('"').to_string())
                .collect();
            case.commands.push(words);
        }
    }
    cases
}

fn substitute(text: &str, vars: &HashMap<String, String>) -> String {
    let mut out = text.to_string();
    // Longest names first, so that $MOD_LIVEPATCH2 is not read as $MOD_LIVEPATCH then 2.
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for name in names {
        out = out.replace(&format!("${{{name}}}"), &vars[name]);
        out = out.replace(&format!("${name}"), &vars[name]);
    }
    out
}

/// The selftests' test modules as the model knows them (`test_modules/*.c`).
fn selftest_catalog() -> Catalog {
    let module = |name: &str| ModuleDecl {
        name: name.to_string(),
        init_messages: vec![format!("{name}: {name}_init")],
        exit_messages: vec![format!("{name}: {name}_exit")],
    };
    let target = ModuleId(0);
    let busy = ModuleId(1);
    Catalog {
        modules: vec![
            module("test_klp_callbacks_mod"),
            module("test_klp_callbacks_busy"),
        ],
        functions: vec![
            FuncDecl {
                target: Target::Module(busy),
                name: "busymod_work_func".into(),
            },
            FuncDecl {
                target: Target::Vmlinux,
                name: "cmdline_proc_show".into(),
            },
        ],
        patches: vec![
            PatchDecl {
                name: "test_klp_callbacks_demo".into(),
                replace: false,
                callbacks: true,
                objects: vec![
                    ObjectDecl {
                        target: Target::Vmlinux,
                        funcs: vec![],
                    },
                    ObjectDecl {
                        target: Target::Module(target),
                        funcs: vec![],
                    },
                    ObjectDecl {
                        target: Target::Module(busy),
                        funcs: vec![FuncId(0)],
                    },
                ],
            },
            PatchDecl {
                name: "test_klp_callbacks_demo2".into(),
                replace: false,
                callbacks: true,
                objects: vec![ObjectDecl {
                    target: Target::Vmlinux,
                    funcs: vec![],
                }],
            },
            PatchDecl {
                name: "test_klp_livepatch".into(),
                replace: false,
                callbacks: false,
                objects: vec![ObjectDecl {
                    target: Target::Vmlinux,
                    funcs: vec![FuncId(1)],
                }],
            },
        ],
    }
}

/// The harness around the model kernel: what `functions.sh` does on a real one.
struct Player {
    catalog: Catalog,
    kernel: Kernel,
    dmesg: Vec<String>,
}

fn strerror(errno: i32) -> &'static str {
    match errno {
        -19 => "No such device",
        -16 => "Device or resource busy",
        -22 => "Invalid argument",
        -17 => "File exists",
        _ => "Unknown error",
    }
}

impl Player {
    fn new() -> Self {
        let catalog = selftest_catalog();
        let kernel = Kernel::new(&catalog);
        Self {
            catalog,
            kernel,
            dmesg: Vec::new(),
        }
    }

    /// Runs `op` until it finishes, or until its transition would have to complete.
    fn run(&mut self, op: Op, complete: bool) -> Option<i32> {
        let mut step = Some(op.first_step());
        let mut error = None;
        while let Some(current) = step {
            if current == Step::CompleteTransition && !complete {
                break;
            }
            let result = self.kernel.step(
                &self.catalog,
                Binding::KlpAlive,
                op,
                current,
                Some(&mut self.dmesg),
            );
            error = error.or(result.error);
            step = result.next;
        }
        error
    }

    fn module(&self, name: &str) -> Option<ModuleId> {
        self.catalog.module_named(name)
    }

    fn patch(&self, name: &str) -> Option<PatchId> {
        self.catalog.patch_named(name)
    }

    fn params(args: &[String]) -> HashMap<&str, &str> {
        args.iter().filter_map(|a| a.split_once('=')).collect()
    }

    /// `insmod`: a livepatch module enables its patch from its init; a target module loads.
    fn insmod(&mut self, name: &str, args: &[String], complete: bool) -> Option<i32> {
        let mut line = format!("% insmod test_modules/{name}.ko {}", args.join(" "));
        while line.ends_with(' ') {
            line.pop();
        }
        self.dmesg.push(line);
        let params = Self::params(args);
        if let Some(patch) = self.patch(name) {
            // Module parameters start from their defaults at every insmod.
            let ret = params
                .get("pre_patch_ret")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            self.kernel.set_pre_patch_ret(patch, ret);
            if let Some(decl) = self.catalog.patches.get_mut(usize::from(patch.0)) {
                decl.replace = params.get("replace").is_some_and(|v| *v == "1");
            }
            return self.run(Op::Enable(patch), complete);
        }
        let Some(module) = self.module(name) else {
            panic!("the model has no test module {name}")
        };
        if name == "test_klp_callbacks_busy" {
            // test_klp_callbacks_busy.c: the work function prints on entry, and on exit only
            // once block_transition is cleared (at once, or in the module's exit).
            let blocks = params.get("block_transition").is_some_and(|v| *v == "Y");
            let enter = format!("{name}: busymod_work_func enter");
            let exit = format!("{name}: busymod_work_func exit");
            let decl = &mut self.catalog.modules[usize::from(module.0)];
            decl.init_messages = vec![format!("{name}: {name}_init"), enter];
            decl.exit_messages = vec![format!("{name}: {name}_exit")];
            if blocks {
                decl.exit_messages.insert(0, exit);
            } else {
                decl.init_messages.push(exit);
            }
        }
        self.run(Op::Load(module), true)
    }

    fn rmmod(&mut self, name: &str) {
        self.dmesg.push(format!("% rmmod {name}"));
        // A livepatch module's exit does nothing: its patch was freed when it was disabled
        // (or replaced).
        if let Some(module) = self.module(name) {
            if let Some(errno) = self.run(Op::Unload(module), true) {
                panic!("rmmod {name} failed with {errno}");
            }
        }
    }

    fn sysfs_value(&self, patch_name: &str, attribute: &str) -> String {
        let Some(patch) = self.patch(patch_name) else {
            panic!("unknown livepatch {patch_name}")
        };
        let record = &self.kernel.patches[usize::from(patch.0)];
        let decl = &self.catalog.patches[usize::from(patch.0)];
        let flag = |b: bool| String::from(if b { "1" } else { "0" });
        match attribute {
            "enabled" => flag(record.enabled),
            "transition" => flag(self.kernel.transition.is_some_and(|(p, _)| p == patch)),
            "replace" => flag(decl.replace),
            object_patched => {
                let Some(object) = object_patched.strip_suffix("/patched") else {
                    panic!("sysfs attribute {attribute} is not modelled")
                };
                let index = decl
                    .objects
                    .iter()
                    .position(|o| self.catalog.target_name(o.target) == object);
                let Some(index) = index else {
                    panic!("{patch_name} has no object {object}")
                };
                flag(record.objects[index].patched)
            }
        }
    }

    fn play(&mut self, command: &[String]) {
        let args = &command[1..];
        let name = args.first().map(String::as_str).unwrap_or("");
        match command[0].as_str() {
            "load_mod" | "load_lp" => {
                if let Some(errno) = self.insmod(name, &args[1..], true) {
                    panic!("insmod {name} failed with {errno}");
                }
            }
            "load_lp_nowait" => {
                if let Some(errno) = self.insmod(name, &args[1..], false) {
                    panic!("insmod {name} failed with {errno}");
                }
            }
            "load_failing_mod" => {
                let Some(errno) = self.insmod(name, &args[1..], true) else {
                    panic!("{name} unexpectedly loaded")
                };
                self.dmesg.push(format!(
                    "insmod: ERROR: could not insert module test_modules/{name}.ko: {}",
                    strerror(errno)
                ));
            }
            "unload_mod" | "unload_lp" => self.rmmod(name),
            "disable_lp" => {
                self.dmesg
                    .push(format!("% echo 0 > /sys/kernel/livepatch/{name}/enabled"));
                let Some(patch) = self.patch(name) else {
                    panic!("unknown livepatch {name}")
                };
                if let Some(errno) = self.run(Op::Disable(patch), true) {
                    panic!("disabling {name} failed with {errno}");
                }
            }
            "set_pre_patch_ret" => {
                let value = args.get(1).map(String::as_str).unwrap_or("0");
                self.dmesg.push(format!(
                    "% echo {value} > /sys/module/{name}/parameters/pre_patch_ret"
                ));
                let Some(patch) = self.patch(name) else {
                    panic!("unknown livepatch {name}")
                };
                self.kernel
                    .set_pre_patch_ret(patch, value.parse().unwrap_or(0));
            }
            "check_sysfs_value" => {
                let (attribute, expected) = (&args[1], &args[2]);
                let actual = self.sysfs_value(name, attribute);
                assert_eq!(&actual, expected, "sysfs {name}/{attribute} in the model");
            }
            // Waiting loops and their failure branches, file modes, and the script's own
            // setup: nothing to model.
            "loop_until" | "die" | "check_sysfs_rights" | "setup_config" | "exit" | "." => {}
            other => panic!("the player does not know the harness command {other}"),
        }
    }

    /// What `check_result` would see: the lines it keeps, in order.
    fn check_result_view(lines: &[String]) -> String {
        lines
            .iter()
            .filter(|l| l.contains("livepatch:") || l.contains("test_klp"))
            .filter(|l| !l.contains("tainting kernel") && !l.contains("taints kernel"))
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Plays `script` on one model kernel, scenario after scenario as the script does, and
/// compares the log of scenario `title` with its `check_result` text.
fn check(script: &str, title: &str) {
    let Some(text) = selftest_script(script) else {
        return;
    };
    let cases = parse_script(&text);
    assert!(
        cases.iter().any(|c| c.title == title),
        "{script} has no scenario {title:?}; it has {:?}",
        cases.iter().map(|c| &c.title).collect::<Vec<_>>()
    );
    let mut player = Player::new();
    for case in cases {
        player.dmesg.clear();
        for command in &case.commands {
            player.play(command);
        }
        if case.title == title {
            let actual = Player::check_result_view(&player.dmesg);
            if actual != case.expected {
                let diff: Vec<String> = case
                    .expected
                    .lines()
                    .zip(actual.lines().chain(std::iter::repeat("<missing>")))
                    .filter(|(e, a)| e != a)
                    .map(|(e, a)| format!("expected: {e}\n   model: {a}"))
                    .collect();
                panic!(
                    "{script}: {title}: the model's log differs from the selftest's\n{}\n--- expected\n{}\n--- model\n{actual}",
                    diff.join("\n"),
                    case.expected
                );
            }
            return;
        }
    }
}

macro_rules! selftest {
    ($($test:ident: $script:literal, $title:literal;)*) => {
        $(
            #[test]
            fn $test() {
                check($script, $title);
            }
        )*
    };
}

selftest! {
    callbacks_target_module_before_livepatch: "test-callbacks.sh", "target module before livepatch";
    callbacks_module_coming_notifier: "test-callbacks.sh", "module_coming notifier";
    callbacks_module_going_notifier: "test-callbacks.sh", "module_going notifier";
    callbacks_module_coming_and_going: "test-callbacks.sh", "module_coming and module_going notifiers";
    callbacks_target_module_not_present: "test-callbacks.sh", "target module not present";
    callbacks_pre_patch_enodev: "test-callbacks.sh", "pre-patch callback -ENODEV";
    callbacks_module_coming_pre_patch_enodev: "test-callbacks.sh", "module_coming + pre-patch callback -ENODEV";
    callbacks_multiple_target_modules: "test-callbacks.sh", "multiple target modules";
    callbacks_busy_target_module: "test-callbacks.sh", "busy target module";
    callbacks_multiple_livepatches: "test-callbacks.sh", "multiple livepatches";
    callbacks_atomic_replace: "test-callbacks.sh", "atomic replace";
    sysfs_vmlinux_patched: "test-sysfs.sh", "sysfs test";
    sysfs_object_patched: "test-sysfs.sh", "sysfs test object/patched";
}

#[test]
fn test_callbacks_has_exactly_the_eleven_scenarios_played_here() {
    let Some(text) = selftest_script("test-callbacks.sh") else {
        return;
    };
    assert_eq!(parse_script(&text).len(), 11);
}

#[test]
fn a_wrong_model_log_is_caught() {
    // The comparison is not vacuous: one changed line breaks it.
    let Some(text) = selftest_script("test-callbacks.sh") else {
        return;
    };
    let cases = parse_script(&text);
    let mut player = Player::new();
    let case = &cases[0];
    for command in &case.commands {
        player.play(command);
    }
    let mut lines = player.dmesg.clone();
    assert_eq!(Player::check_result_view(&lines), case.expected);
    if let Some(line) = lines.iter_mut().find(|l| l.contains("pre_patch_callback")) {
        *line = line.replace("pre_patch", "post_patch");
    }
    assert_ne!(Player::check_result_view(&lines), case.expected);
}
