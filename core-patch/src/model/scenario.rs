//! Scenarios for the explorer: a small line-oriented text format, and the built-in ones.
//!
//! ```text
//! # comment
//! module M                          a module that can be loaded
//! patch P1 vmlinux:a M:b            a patch and its objects: TARGET:FUNC[,FUNC...]
//! patch P2 replace callbacks M:     options before the objects; an object may patch nothing
//! setup enable P1; load M           played once, in order, before exploring
//! cpu CPU0 load M; unload M         an actor: its operations run in order
//! cpu CPU1 enable P2                actors interleave at step granularity
//! ```
//!
//! Operations: `load M`, `unload M`, `enable P`, `disable P`. Setup runs every transition to
//! completion; an actor's `enable` and `disable` complete their transition as a later step of
//! the same actor.

use std::prelude::rust_2021::*;
use std::{format, vec};

use super::kernel::{
    Catalog, FuncDecl, FuncId, ModuleDecl, ModuleId, ObjectDecl, Op, PatchDecl, PatchId, Target,
};

/// A scenario: what exists, what runs first, and who runs concurrently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// Its name (built-in name or file stem).
    pub name: String,
    /// Modules, functions and patches.
    pub catalog: Catalog,
    /// Operations played in order before exploring, each to completion.
    pub setup: Vec<Op>,
    /// The concurrent actors.
    pub actors: Vec<Actor>,
}

/// One CPU of a scenario and its operations, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// Its name, as traces print it (e.g. `CPU0`).
    pub name: String,
    /// Its operations.
    pub ops: Vec<Op>,
}

/// A scenario text that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ScenarioError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong, and what to write instead.
    pub message: String,
}

/// The built-in scenarios: name, then text.
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "seed-stacking",
        include_str!("../../scenarios/seed-stacking.scn"),
    ),
    ("seed-going", include_str!("../../scenarios/seed-going.scn")),
    (
        "two-modules",
        include_str!("../../scenarios/two-modules.scn"),
    ),
    ("stress", include_str!("../../scenarios/stress.scn")),
];

/// The built-in scenario called `name`.
pub fn builtin(name: &str) -> Option<Scenario> {
    let (_, text) = BUILTIN.iter().find(|(n, _)| *n == name)?;
    // The built-in texts are tested to parse; a failure here would be a bug in this crate.
    parse(name, text).ok()
}

/// Parses a scenario text.
pub fn parse(name: &str, text: &str) -> Result<Scenario, ScenarioError> {
    let mut scenario = Scenario {
        name: String::from(name),
        catalog: Catalog::default(),
        setup: Vec::new(),
        actors: Vec::new(),
    };
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let err = |message: String| ScenarioError { line, message };
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let (keyword, rest) = content
            .split_once(char::is_whitespace)
            .map_or((content, ""), |(k, r)| (k, r.trim()));
        match keyword {
            "module" => {
                let module = single_word(rest)
                    .ok_or_else(|| err(String::from("expected `module NAME` with one name")))?;
                if module == "vmlinux" {
                    return Err(err(String::from(
                        "`vmlinux` is the kernel image, not a module; objects name it directly",
                    )));
                }
                if scenario.catalog.module_named(module).is_some() {
                    return Err(err(format!("module `{module}` is declared twice")));
                }
                check_count(scenario.catalog.modules.len(), "modules").map_err(err)?;
                scenario.catalog.modules.push(ModuleDecl {
                    name: String::from(module),
                    init_messages: Vec::new(),
                    exit_messages: Vec::new(),
                });
            }
            "patch" => parse_patch(&mut scenario.catalog, rest).map_err(err)?,
            "setup" => {
                let ops = parse_ops(&scenario.catalog, rest).map_err(err)?;
                scenario.setup.extend(ops);
            }
            "cpu" => {
                let (actor, ops) = rest.split_once(char::is_whitespace).ok_or_else(|| {
                    err(String::from(
                        "expected `cpu NAME OP; OP; ...`, e.g. `cpu CPU0 load M; unload M`",
                    ))
                })?;
                if scenario.actors.iter().any(|a| a.name == actor) {
                    return Err(err(format!("cpu `{actor}` is declared twice")));
                }
                let ops = parse_ops(&scenario.catalog, ops).map_err(err)?;
                check_count(scenario.actors.len(), "cpus").map_err(err)?;
                scenario.actors.push(Actor {
                    name: String::from(actor),
                    ops,
                });
            }
            other => {
                return Err(err(format!(
                    "unknown keyword `{other}`; expected module, patch, setup or cpu"
                )))
            }
        }
    }
    if scenario.actors.is_empty() {
        return Err(ScenarioError {
            line: text.lines().count(),
            message: String::from("no `cpu` line: nothing to explore"),
        });
    }
    Ok(scenario)
}

fn single_word(text: &str) -> Option<&str> {
    let mut words = text.split_whitespace();
    let word = words.next()?;
    words.next().is_none().then_some(word)
}

/// Handles are bytes, which keeps states small; scenarios never come near the limit.
fn check_count(count: usize, what: &str) -> Result<(), String> {
    if count >= usize::from(u8::MAX) {
        return Err(format!("too many {what} (at most {})", u8::MAX));
    }
    Ok(())
}

fn parse_patch(catalog: &mut Catalog, rest: &str) -> Result<(), String> {
    let mut words = rest.split_whitespace();
    let name = words.next().ok_or_else(|| {
        String::from("expected `patch NAME [replace] [callbacks] TARGET:FUNC,...`")
    })?;
    if catalog.patch_named(name).is_some() {
        return Err(format!("patch `{name}` is declared twice"));
    }
    check_count(catalog.patches.len(), "patches")?;
    let mut patch = PatchDecl {
        name: String::from(name),
        replace: false,
        callbacks: false,
        objects: Vec::new(),
    };
    for word in words {
        match word {
            "replace" => patch.replace = true,
            "callbacks" => patch.callbacks = true,
            object => {
                let (target_name, funcs) = object.split_once(':').ok_or_else(|| {
                    format!("`{object}` is not an option (replace, callbacks) nor an object TARGET:FUNC,...")
                })?;
                let target = if target_name == "vmlinux" {
                    Target::Vmlinux
                } else {
                    Target::Module(catalog.module_named(target_name).ok_or_else(|| {
                        format!("unknown module `{target_name}`; declare it first with `module {target_name}`")
                    })?)
                };
                if patch.objects.iter().any(|o| o.target == target) {
                    return Err(format!(
                        "patch `{name}` has two objects for `{target_name}`; list all their functions in one"
                    ));
                }
                let mut ids = Vec::new();
                for func in funcs.split(',').filter(|f| !f.is_empty()) {
                    let id = match catalog
                        .functions
                        .iter()
                        .position(|f| f.target == target && f.name == func)
                    {
                        Some(index) => index,
                        None => {
                            check_count(catalog.functions.len(), "functions")?;
                            catalog.functions.push(FuncDecl {
                                target,
                                name: String::from(func),
                            });
                            catalog.functions.len() - 1
                        }
                    };
                    let id =
                        FuncId(u8::try_from(id).map_err(|_| String::from("too many functions"))?);
                    if ids.contains(&id) {
                        return Err(format!("function `{func}` is listed twice in `{object}`"));
                    }
                    ids.push(id);
                }
                check_count(patch.objects.len(), "objects")?;
                patch.objects.push(ObjectDecl { target, funcs: ids });
            }
        }
    }
    if patch.objects.is_empty() {
        return Err(format!(
            "patch `{name}` has no object; add one, e.g. `vmlinux:a` or `M:b`"
        ));
    }
    catalog.patches.push(patch);
    Ok(())
}

fn parse_ops(catalog: &Catalog, text: &str) -> Result<Vec<Op>, String> {
    let mut ops = vec![];
    for part in text.split(';').map(str::trim) {
        let (verb, object) = part
            .split_once(char::is_whitespace)
            .map(|(v, o)| (v, o.trim()))
            .ok_or_else(|| {
                format!("`{part}` is not an operation; expected load M, unload M, enable P or disable P")
            })?;
        let module = || -> Result<ModuleId, String> {
            catalog
                .module_named(object)
                .ok_or_else(|| format!("unknown module `{object}` in `{part}`"))
        };
        let patch = || -> Result<PatchId, String> {
            catalog
                .patch_named(object)
                .ok_or_else(|| format!("unknown patch `{object}` in `{part}`"))
        };
        ops.push(match verb {
            "load" => Op::Load(module()?),
            "unload" => Op::Unload(module()?),
            "enable" => Op::Enable(patch()?),
            "disable" => Op::Disable(patch()?),
            other => {
                return Err(format!(
                    "unknown operation `{other}`; expected load, unload, enable or disable"
                ))
            }
        });
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse() {
        for (name, text) in BUILTIN {
            let parsed = parse(name, text);
            assert!(parsed.is_ok(), "{name}: {parsed:?}");
        }
    }

    fn check_error(text: &str, expected: &str) {
        let error = parse("t", text).err().map(|e| e.to_string());
        assert_eq!(error.as_deref(), Some(expected));
    }

    #[test]
    fn errors_name_the_line_and_the_fix() {
        check_error(
            "module M\npatch P N:b\n",
            "line 2: unknown module `N`; declare it first with `module N`",
        );
        check_error(
            "frobnicate\n",
            "line 1: unknown keyword `frobnicate`; expected module, patch, setup or cpu",
        );
        check_error(
            "module M\npatch P M:b\ncpu C0 load X\n",
            "line 3: unknown module `X` in `load X`",
        );
        check_error(
            "module M\npatch P M:b\ncpu C0 remove M\n",
            "line 3: unknown operation `remove`; expected load, unload, enable or disable",
        );
        check_error("module M\n", "line 1: no `cpu` line: nothing to explore");
        check_error(
            "module vmlinux\n",
            "line 1: `vmlinux` is the kernel image, not a module; objects name it directly",
        );
        check_error(
            "module M\npatch P\n",
            "line 2: patch `P` has no object; add one, e.g. `vmlinux:a` or `M:b`",
        );
    }

    #[test]
    fn functions_are_shared_between_patches_by_target_and_name() {
        let scenario = parse(
            "t",
            "module M\npatch P1 vmlinux:a M:b\npatch P2 callbacks replace M:b,c\ncpu C enable P1",
        );
        let Ok(scenario) = scenario else {
            std::panic!("{scenario:?}")
        };
        let names: Vec<&str> = scenario
            .catalog
            .functions
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        let p2 = &scenario.catalog.patches[1];
        assert!(p2.replace && p2.callbacks);
        assert_eq!(p2.objects[0].funcs, [FuncId(1), FuncId(2)]);
    }
}
