//! The text the kernel shows about modules, livepatches and tasks, read without touching any
//! file: `/proc/modules`, the livepatch sysfs attributes, `/proc/PID/task/TID/{patch_state,
//! stack,stat}`.

use serde::Serialize;

/// One line of `/proc/modules`: `NAME SIZE REFCOUNT DEPS STATE ADDRESS [(TAINTS)]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModuleLine {
    pub name: String,
    pub size: u64,
    /// None when the kernel cannot unload modules (`-`).
    pub refcount: Option<u64>,
    /// `Live`, `Loading` or `Unloading`.
    pub state: String,
    /// The module's taint letters (`K`: a livepatch), empty when there are none.
    pub taints: String,
}

impl ModuleLine {
    /// Whether the kernel loaded it as a livepatch (taint `K`, `TAINT_LIVEPATCH`).
    pub fn is_livepatch(&self) -> bool {
        self.taints.contains('K')
    }
}

/// `/proc/modules`, newest module first (the kernel adds each at the head of its list).
pub fn proc_modules(text: &str) -> Result<Vec<ModuleLine>, String> {
    let mut modules = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |what: &str| format!("/proc/modules line {}: {what}: {line:?}", number + 1);
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 6 {
            return Err(bad("fewer than six fields"));
        }
        let size = fields[1]
            .parse()
            .map_err(|_| bad("the size is no number"))?;
        let refcount = match fields[2] {
            "-" => None,
            count => Some(
                count
                    .parse()
                    .map_err(|_| bad("the use count is no number"))?,
            ),
        };
        let taints = match fields.get(6) {
            Some(field) => field
                .strip_prefix('(')
                .and_then(|t| t.strip_suffix(')'))
                .ok_or_else(|| bad("the taints are not in parentheses"))?
                .to_string(),
            None => String::new(),
        };
        modules.push(ModuleLine {
            name: fields[0].to_string(),
            size,
            refcount,
            state: fields[4].to_string(),
            taints,
        });
    }
    Ok(modules)
}

/// A sysfs boolean (`enabled`, `transition`, `patched`, `replace`): `0` or `1` and a newline.
pub fn flag(text: &str) -> Option<bool> {
    match text.trim() {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

/// A task's livepatch state (`/proc/PID/task/TID/patch_state`, `KLP_TRANSITION_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PatchState {
    /// No transition is going on (`-1`).
    Idle,
    /// The task runs the code without the transitioning patch (`0`).
    Unpatched,
    /// The task runs the code with the transitioning patch (`1`).
    Patched,
}

impl PatchState {
    /// The state every task must reach for a transition of a patch whose `enabled` is this.
    pub fn target(enabled: bool) -> PatchState {
        if enabled {
            PatchState::Patched
        } else {
            PatchState::Unpatched
        }
    }
}

pub fn patch_state(text: &str) -> Option<PatchState> {
    match text.trim() {
        "-1" => Some(PatchState::Idle),
        "0" => Some(PatchState::Unpatched),
        "1" => Some(PatchState::Patched),
        _ => None,
    }
}

/// One frame of `/proc/PID/task/TID/stack`: `[<0>] function+0xOFF/0xSIZE [module]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Frame {
    pub function: String,
    /// The module that holds the function; None for vmlinux.
    pub module: Option<String>,
    /// The frame as the kernel wrote it, without the address.
    pub text: String,
}

/// A task's kernel stack, innermost frame first; lines that are not frames are skipped.
pub fn stack(text: &str) -> Vec<Frame> {
    let mut frames = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let rest = match line.split_once("] ") {
            Some((address, rest)) if address.starts_with("[<") => rest.trim(),
            _ => line,
        };
        let (symbol, module) = match rest.split_once(" [") {
            Some((symbol, module)) => (symbol, module.strip_suffix(']').map(str::to_string)),
            None => (rest, None),
        };
        let function = symbol.split('+').next().unwrap_or_default().trim();
        if function.is_empty() || function.starts_with("0x") {
            continue;
        }
        frames.push(Frame {
            function: function.to_string(),
            module,
            text: rest.to_string(),
        });
    }
    frames
}

/// A patched function's sysfs directory name, `NAME,SYMPOS`.
pub fn function_dir(name: &str) -> Option<(String, u64)> {
    let (function, sympos) = name.rsplit_once(',')?;
    if function.is_empty() {
        return None;
    }
    Some((function.to_string(), sympos.parse().ok()?))
}

/// A function of a klp object: the module that holds it (None for vmlinux) and its name.
pub type ObjectFunction = (Option<String>, String);

/// For each symbol of `/proc/kallsyms` (`ADDRESS TYPE NAME [MODULE]`) at the address of one
/// of the `wanted` functions, that function: a stack names the code at an address by one of
/// its symbols (`__do_sys_pause` for the `__x64_sys_pause` a patch replaces), not always the
/// patched one. Addresses hidden as 0 (`kptr_restrict`) match nothing; the wanted functions
/// always map to themselves.
pub fn aliases(
    kallsyms: &str,
    wanted: &[ObjectFunction],
) -> std::collections::BTreeMap<ObjectFunction, ObjectFunction> {
    let symbols = kallsyms.lines().filter_map(|line| {
        let mut fields = line.split_whitespace();
        let address = u64::from_str_radix(fields.next()?, 16).ok()?;
        let _kind = fields.next()?;
        let name = fields.next()?;
        let module = fields
            .next()
            .and_then(|m| m.strip_prefix('[')?.strip_suffix(']'))
            .map(str::to_string);
        (address != 0).then(|| (address, (module, name.to_string())))
    });
    let mut at_address = std::collections::BTreeMap::new();
    let mut names = Vec::new();
    for (address, symbol) in symbols {
        if wanted.contains(&symbol) {
            at_address.insert(address, symbol.clone());
        }
        names.push((address, symbol));
    }
    let mut found: std::collections::BTreeMap<ObjectFunction, ObjectFunction> = wanted
        .iter()
        .map(|function| (function.clone(), function.clone()))
        .collect();
    for (address, symbol) in names {
        if let Some(patched) = at_address.get(&address) {
            if symbol.0 == patched.0 {
                found.entry(symbol).or_insert_with(|| patched.clone());
            }
        }
    }
    found
}

/// `PF_KTHREAD`, in the flags field of `/proc/PID/stat`.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Whether `/proc/PID/task/TID/stat` describes a kernel thread. The command name, in
/// parentheses, may itself hold spaces and parentheses: fields are counted after the last `)`.
pub fn is_kernel_thread(stat: &str) -> Option<bool> {
    let (_, after) = stat.rsplit_once(')')?;
    // After the name: state (3), ppid (4), pgrp, session, tty_nr, tpgid, flags (9).
    let flags: u64 = after.split_whitespace().nth(6)?.parse().ok()?;
    Some(flags & PF_KTHREAD != 0)
}

/// The release a module's `vermagic` names (its first word).
pub fn vermagic_release(vermagic: &str) -> &str {
    vermagic.split_whitespace().next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_modules_newest_first_with_taints() {
        let text = "livepatch_b 12288 1 - Live 0xffffffffc0010000 (K)\n\
                    livepatch_a 16384 1 - Live 0x0000000000000000 (OEK)\n\
                    race_target 12288 0 - Loading 0xffffffffc0000000\n\
                    keyed 8192 2 race_target,livepatch_a, Unloading 0x0 (O)\n";
        let modules = proc_modules(text).expect("parses");
        let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            ["livepatch_b", "livepatch_a", "race_target", "keyed"]
        );
        assert_eq!(
            modules[1],
            ModuleLine {
                name: "livepatch_a".to_string(),
                size: 16384,
                refcount: Some(1),
                state: "Live".to_string(),
                taints: "OEK".to_string(),
            }
        );
        let livepatches: Vec<bool> = modules.iter().map(ModuleLine::is_livepatch).collect();
        assert_eq!(livepatches, [true, true, false, false]);
        assert_eq!(modules[2].taints, "");
        assert_eq!(modules[3].state, "Unloading");
        let no_unload = proc_modules("m 4096 - - Live 0x0\n").expect("parses");
        assert_eq!(no_unload[0].refcount, None);
        assert_eq!(proc_modules("\n").expect("parses"), vec![]);
    }

    #[test]
    fn a_malformed_proc_modules_line_is_an_error_naming_it() {
        for (text, why) in [
            ("m 4096 1 - Live\n", "fewer than six fields"),
            ("m big 1 - Live 0x0\n", "size"),
            ("m 1 x - Live 0x0\n", "use count"),
            ("m 1 1 - Live 0x0 K\n", "parentheses"),
        ] {
            let error = proc_modules(text).expect_err(text);
            assert!(error.contains(why), "{text:?}: {error}");
            assert!(error.contains("line 1"), "{error}");
        }
    }

    #[test]
    fn reads_flags_and_patch_states() {
        assert_eq!(flag("1\n"), Some(true));
        assert_eq!(flag("0\n"), Some(false));
        assert_eq!(flag("Y\n"), None);
        assert_eq!(flag(""), None);
        assert_eq!(patch_state("-1\n"), Some(PatchState::Idle));
        assert_eq!(patch_state("0\n"), Some(PatchState::Unpatched));
        assert_eq!(patch_state("1"), Some(PatchState::Patched));
        assert_eq!(patch_state("2\n"), None);
        assert_eq!(PatchState::target(true), PatchState::Patched);
        assert_eq!(PatchState::target(false), PatchState::Unpatched);
    }

    #[test]
    fn reads_a_kernel_stack() {
        let text = "[<0>] __x64_sys_pause+0x2a/0x50\n\
                    [<0>] race_target_b+0x10/0x20 [race_target]\n\
                    [<ffffffff81000000>] do_syscall_64+0x55/0x110\n\
                    [<0>] 0xffffffffc0001234\n\
                    garbage\n\
                    [<0>] entry_SYSCALL_64_after_hwframe+0x76/0x7e\n";
        let frames = stack(text);
        let functions: Vec<(&str, Option<&str>)> = frames
            .iter()
            .map(|f| (f.function.as_str(), f.module.as_deref()))
            .collect();
        assert_eq!(
            functions,
            [
                ("__x64_sys_pause", None),
                ("race_target_b", Some("race_target")),
                ("do_syscall_64", None),
                ("garbage", None),
                ("entry_SYSCALL_64_after_hwframe", None),
            ]
        );
        assert_eq!(frames[0].text, "__x64_sys_pause+0x2a/0x50");
        assert_eq!(stack(""), vec![]);
    }

    #[test]
    fn reads_function_directories() {
        assert_eq!(
            function_dir("cmdline_proc_show,1"),
            Some(("cmdline_proc_show".to_string(), 1))
        );
        assert_eq!(function_dir("a,b,2"), Some(("a,b".to_string(), 2)));
        assert_eq!(function_dir("patched"), None);
        assert_eq!(function_dir(",1"), None);
        assert_eq!(function_dir("f,x"), None);
    }

    #[test]
    fn a_patched_function_is_known_by_every_symbol_at_its_address() {
        let kallsyms = "ffffffff8105d0f1 t __do_sys_pause\n\
                        ffffffff8105d0e1 T __pfx___x64_sys_pause\n\
                        ffffffff8105d0f1 T __x64_sys_pause\n\
                        ffffffff81200000 t other\n\
                        ffffffffc0001000 t race_target_b\t[race_target]\n\
                        ffffffffc0001000 t race_b_alias\t[race_target]\n\
                        ffffffff81300000 t race_target_b\n\
                        0000000000000000 t hidden\n";
        let function = |module: Option<&str>, name: &str| -> ObjectFunction {
            (module.map(str::to_string), name.to_string())
        };
        let pause = function(None, "__x64_sys_pause");
        let race = function(Some("race_target"), "race_target_b");
        let found = aliases(kallsyms, &[pause.clone(), race.clone()]);
        let expected: std::collections::BTreeMap<ObjectFunction, ObjectFunction> = [
            (function(None, "__do_sys_pause"), pause.clone()),
            (pause.clone(), pause.clone()),
            (function(Some("race_target"), "race_b_alias"), race.clone()),
            (race.clone(), race.clone()),
        ]
        .into_iter()
        .collect();
        assert_eq!(found, expected);
        // Hidden addresses (all 0) leave the patched names only.
        let hidden = "0000000000000000 t __do_sys_pause\n0000000000000000 T __x64_sys_pause\n";
        assert_eq!(aliases(hidden, std::slice::from_ref(&pause)).len(), 1);
        assert_eq!(aliases("", std::slice::from_ref(&pause)).len(), 1);
    }

    #[test]
    fn tells_kernel_threads_by_their_flags() {
        let kthread = "42 (kworker/0:1) I 2 0 0 0 -1 69238880 0 0 0 0 0 0";
        assert_eq!(is_kernel_thread(kthread), Some(true));
        let user = "77 (a) b) (c) S 1 77 77 0 -1 4194560 100 0 0 0";
        assert_eq!(is_kernel_thread(user), Some(false));
        assert_eq!(is_kernel_thread("77 (sh S 1"), None);
        assert_eq!(is_kernel_thread("77 (sh) S 1 2"), None);
    }

    #[test]
    fn the_release_is_the_first_word_of_vermagic() {
        assert_eq!(
            vermagic_release("6.12.117 SMP preempt mod_unload "),
            "6.12.117"
        );
        assert_eq!(vermagic_release(""), "");
    }
}
