//! The explorer: every interleaving of a scenario's actors, breadth-first with `stateright`,
//! the invariants checked after every step, and the shortest violating trace printed step by
//! step.
//!
//! The invariants (each an `always` property):
//! - `func_stack order`: every `func_stack`, bottom to top, lists exactly the patches on
//!   `klp_patches` whose object for that function is patched, in `klp_patches` order.
//! - `no object bound to a gone module`: no object is bound to a module whose going hook has
//!   run or that is freed, and no `func_stack` of a freed module's function holds an entry.
//! - `klp_alive between the hooks`: `klp_alive` is set exactly from a successful coming hook
//!   to the going hook.
//! - `callbacks paired`: no post-patch or post-unpatch callback without a successful pre-patch.
//! - `no model fault`: no object patched twice, `klp_mutex` balanced.
//!
//! The number of interleavings is the number of paths from the initial state to a final one
//! in the state graph, which is acyclic because every step advances one actor; it is counted
//! by memoised depth-first search over the same transition function.

use std::collections::HashMap;
use std::prelude::rust_2021::*;
use std::time::{Duration, Instant};
use std::{format, vec};

use stateright::{Checker, Model, Property};

use super::kernel::{Binding, Catalog, Fault, HookRun, Kernel, ModuleState, Step, Target};
use super::scenario::Scenario;

/// One explored state: the kernel and where each actor is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct State {
    /// The model kernel.
    pub kernel: Kernel,
    /// Per actor: the index of its current operation and that operation's next step, or
    /// `None` once it has run all of them.
    pub actors: Vec<Option<(u8, Step)>>,
}

/// A step of one actor, by index into [`Scenario::actors`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Action(pub u8);

/// A scenario ready to explore under one binding rule.
#[derive(Debug, Clone)]
pub struct Explorer {
    scenario: Scenario,
    binding: Binding,
    initial: Kernel,
}

/// Why a scenario cannot be explored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExploreError {
    /// A setup operation failed.
    #[error("setup operation `{op}` failed with error {errno}; fix the scenario's setup line")]
    Setup {
        /// The operation, as written.
        op: String,
        /// What it returned.
        errno: i32,
    },
    /// Too many actors or operations for the state encoding.
    #[error("scenario has too many {0} (at most 255)")]
    TooLarge(&'static str),
}

/// One step of a printed trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceStep {
    /// The actor that moved.
    pub actor: String,
    /// Its operation, as written in the scenario.
    pub op: String,
    /// What the step did.
    pub step: &'static str,
    /// The kernel messages of the step.
    pub log: Vec<String>,
    /// Every `func_stack` after the step, top first, e.g. `b: P2 P1 P3`.
    pub stacks: Vec<String>,
    /// Every module after the step, e.g. `M COMING klp_alive=0`.
    pub modules: Vec<String>,
}

/// An invariant that fails, with the shortest trace that breaks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The invariant's name.
    pub invariant: &'static str,
    /// What is wrong in the last state of the trace.
    pub message: String,
    /// The steps from the state after setup.
    pub trace: Vec<TraceStep>,
}

/// What an exploration covered and found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// The binding rule explored.
    pub binding: Binding,
    /// Distinct states reached.
    pub states: usize,
    /// Distinct complete interleavings (paths from the initial state to a final one).
    pub interleavings: u128,
    /// Wall time of the search and the count.
    pub elapsed: Duration,
    /// The `func_stack`s after setup, top first.
    pub initial_stacks: Vec<String>,
    /// Violations, shortest trace first.
    pub violations: Vec<Violation>,
}

/// An invariant: `None` when it holds, else what is wrong.
pub type Invariant = fn(&Catalog, &Kernel) -> Option<String>;

/// The invariants, by name.
pub const INVARIANTS: &[(&str, Invariant)] = &[
    ("func_stack order", func_stack_order),
    ("no object bound to a gone module", bound_to_gone_module),
    ("klp_alive between the hooks", klp_alive_between_hooks),
    ("callbacks paired", callbacks_paired),
    ("no model fault", model_fault),
];

impl Explorer {
    /// Plays the scenario's setup and prepares the search.
    pub fn new(scenario: Scenario, binding: Binding) -> Result<Self, ExploreError> {
        if scenario.actors.len() > usize::from(u8::MAX) {
            return Err(ExploreError::TooLarge("cpus"));
        }
        if scenario
            .actors
            .iter()
            .any(|a| a.ops.len() > usize::from(u8::MAX))
        {
            return Err(ExploreError::TooLarge("operations on one cpu"));
        }
        let mut kernel = Kernel::new(&scenario.catalog);
        for &op in &scenario.setup {
            let mut step = Some(op.first_step());
            while let Some(current) = step {
                let result = kernel.step(&scenario.catalog, binding, op, current, None);
                if let Some(errno) = result.error {
                    return Err(ExploreError::Setup {
                        op: op.describe(&scenario.catalog),
                        errno,
                    });
                }
                step = result.next;
            }
        }
        Ok(Self {
            scenario,
            binding,
            initial: kernel,
        })
    }

    /// The state the search starts from.
    pub fn initial_state(&self) -> State {
        State {
            kernel: self.initial.clone(),
            actors: self
                .scenario
                .actors
                .iter()
                .map(|a| a.ops.first().map(|op| (0, op.first_step())))
                .collect(),
        }
    }

    fn advance(&self, state: &mut State, action: Action, log: Option<&mut Vec<String>>) {
        let index = usize::from(action.0);
        let (Some(actor), Some(Some((op_index, step)))) = (
            self.scenario.actors.get(index),
            state.actors.get(index).copied(),
        ) else {
            return;
        };
        let Some(&op) = actor.ops.get(usize::from(op_index)) else {
            return;
        };
        let result = state
            .kernel
            .step(&self.scenario.catalog, self.binding, op, step, log);
        let next = match result.next {
            Some(next) => Some((op_index, next)),
            None => {
                let following = op_index.saturating_add(1);
                actor
                    .ops
                    .get(usize::from(following))
                    .map(|op| (following, op.first_step()))
            }
        };
        if let Some(slot) = state.actors.get_mut(index) {
            *slot = next;
        }
    }

    /// Searches every interleaving, counts them, and collects the shortest violating trace of
    /// each invariant that fails.
    pub fn run(&self) -> Report {
        let started = Instant::now();
        let checker = self.clone().checker().spawn_bfs().join();
        let states = checker.unique_state_count();
        let mut violations: Vec<Violation> = INVARIANTS
            .iter()
            .filter_map(|&(name, invariant)| {
                // stateright says whether the invariant fails; the trace it keeps is the last
                // violating state it visited, so the shortest one is searched for here.
                checker.discovery(name)?;
                let actions = self.shortest_violation(invariant)?;
                Some(self.violation(name, invariant, &actions))
            })
            .collect();
        violations.sort_by_key(|v| v.trace.len());
        let interleavings = self.count_interleavings();
        Report {
            scenario: self.scenario.name.clone(),
            binding: self.binding,
            states,
            interleavings,
            elapsed: started.elapsed(),
            initial_stacks: stacks(&self.scenario.catalog, &self.initial),
            violations,
        }
    }

    fn violation(&self, name: &'static str, invariant: Invariant, actions: &[Action]) -> Violation {
        let catalog = &self.scenario.catalog;
        let mut state = self.initial_state();
        let mut trace = Vec::new();
        for &action in actions {
            let index = usize::from(action.0);
            let position = state.actors.get(index).copied().flatten();
            let actor = self.scenario.actors.get(index);
            let op =
                position.and_then(|(op_index, _)| actor?.ops.get(usize::from(op_index)).copied());
            let mut log = Vec::new();
            self.advance(&mut state, action, Some(&mut log));
            trace.push(TraceStep {
                actor: actor.map_or_else(String::new, |a| a.name.clone()),
                op: op.map_or_else(String::new, |op| op.describe(catalog)),
                step: position.map_or("", |(_, step)| step.describe()),
                log,
                stacks: stacks(catalog, &state.kernel),
                modules: modules(catalog, &state.kernel),
            });
        }
        Violation {
            invariant: name,
            message: invariant(catalog, &state.kernel).unwrap_or_default(),
            trace,
        }
    }

    /// The shortest sequence of steps from the initial state to a state that breaks
    /// `invariant`, by breadth-first search with parent links.
    pub fn shortest_violation(&self, invariant: Invariant) -> Option<Vec<Action>> {
        let catalog = &self.scenario.catalog;
        let mut visited: Vec<(State, Option<(usize, Action)>)> = vec![(self.initial_state(), None)];
        let mut seen: HashMap<State, usize> = HashMap::new();
        seen.insert(self.initial_state(), 0);
        let mut next_index = 0;
        let mut actions = Vec::new();
        while let Some((state, _)) = visited.get(next_index) {
            if invariant(catalog, &state.kernel).is_some() {
                let mut path = Vec::new();
                let mut cursor = next_index;
                while let Some((_, Some((parent, action)))) = visited.get(cursor) {
                    path.push(*action);
                    cursor = *parent;
                }
                path.reverse();
                return Some(path);
            }
            let state = state.clone();
            actions.clear();
            self.actions(&state, &mut actions);
            for &action in &actions {
                let mut next = state.clone();
                self.advance(&mut next, action, None);
                if !seen.contains_key(&next) {
                    seen.insert(next.clone(), visited.len());
                    visited.push((next, Some((next_index, action))));
                }
            }
            next_index += 1;
        }
        None
    }

    /// Counts the complete interleavings: paths from the initial state to a state where no
    /// actor has a step left.
    pub fn count_interleavings(&self) -> u128 {
        let mut memo: HashMap<State, u128> = HashMap::new();
        self.paths_from(self.initial_state(), &mut memo)
    }

    fn paths_from(&self, state: State, memo: &mut HashMap<State, u128>) -> u128 {
        if let Some(&count) = memo.get(&state) {
            return count;
        }
        let mut actions = Vec::new();
        self.actions(&state, &mut actions);
        let count = if actions.is_empty() {
            1
        } else {
            actions
                .into_iter()
                .map(|action| {
                    let mut next = state.clone();
                    self.advance(&mut next, action, None);
                    self.paths_from(next, memo)
                })
                .fold(0u128, u128::saturating_add)
        };
        memo.insert(state, count);
        count
    }
}

impl Model for Explorer {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![self.initial_state()]
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        for (index, position) in state.actors.iter().enumerate() {
            if position.is_some() {
                if let Ok(index) = u8::try_from(index) {
                    actions.push(Action(index));
                }
            }
        }
    }

    fn next_state(&self, state: &State, action: Action) -> Option<State> {
        let mut next = state.clone();
        self.advance(&mut next, action, None);
        Some(next)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("func_stack order", |m: &Explorer, s: &State| {
                func_stack_order(&m.scenario.catalog, &s.kernel).is_none()
            }),
            Property::always(
                "no object bound to a gone module",
                |m: &Explorer, s: &State| {
                    bound_to_gone_module(&m.scenario.catalog, &s.kernel).is_none()
                },
            ),
            Property::always("klp_alive between the hooks", |m: &Explorer, s: &State| {
                klp_alive_between_hooks(&m.scenario.catalog, &s.kernel).is_none()
            }),
            Property::always("callbacks paired", |m: &Explorer, s: &State| {
                callbacks_paired(&m.scenario.catalog, &s.kernel).is_none()
            }),
            Property::always("no model fault", |m: &Explorer, s: &State| {
                model_fault(&m.scenario.catalog, &s.kernel).is_none()
            }),
        ]
    }
}

fn top_first(catalog: &Catalog, stack: &[super::kernel::PatchId]) -> String {
    if stack.is_empty() {
        return String::from("-");
    }
    let names: Vec<&str> = stack.iter().rev().map(|&p| catalog.patch_name(p)).collect();
    names.join(" ")
}

/// Every `func_stack`, top first: `a: P3 P2 P1`.
pub fn stacks(catalog: &Catalog, kernel: &Kernel) -> Vec<String> {
    catalog
        .functions
        .iter()
        .zip(&kernel.func_stacks)
        .map(|(func, stack)| format!("{}: {}", func.name, top_first(catalog, stack)))
        .collect()
}

fn modules(catalog: &Catalog, kernel: &Kernel) -> Vec<String> {
    catalog
        .modules
        .iter()
        .zip(&kernel.modules)
        .map(|(decl, record)| {
            format!(
                "{} {} klp_alive={}",
                decl.name,
                record.state.name(),
                u8::from(record.klp_alive)
            )
        })
        .collect()
}

fn func_stack_order(catalog: &Catalog, kernel: &Kernel) -> Option<String> {
    for (index, (func, stack)) in catalog
        .functions
        .iter()
        .zip(&kernel.func_stacks)
        .enumerate()
    {
        let expected: Vec<_> = kernel
            .klp_patches
            .iter()
            .copied()
            .filter(|&patch| {
                catalog
                    .patches
                    .get(usize::from(patch.0))
                    .into_iter()
                    .flat_map(|p| p.objects.iter().enumerate())
                    .any(|(object_index, object)| {
                        object.funcs.iter().any(|f| usize::from(f.0) == index)
                            && kernel
                                .patches
                                .get(usize::from(patch.0))
                                .and_then(|p| p.objects.get(object_index))
                                .is_some_and(|o| o.patched)
                    })
            })
            .collect();
        if *stack != expected {
            return Some(format!(
                "func_stack {}() is [{}] (top first) but klp_patches order of its patched objects is [{}]",
                func.name,
                top_first(catalog, stack),
                top_first(catalog, &expected)
            ));
        }
    }
    None
}

fn bound_to_gone_module(catalog: &Catalog, kernel: &Kernel) -> Option<String> {
    for (patch_decl, patch) in catalog.patches.iter().zip(&kernel.patches) {
        for (object_decl, object) in patch_decl.objects.iter().zip(&patch.objects) {
            let Target::Module(module) = object_decl.target else {
                continue;
            };
            let Some(record) = kernel.module(module) else {
                continue;
            };
            if object.bound && (record.state == ModuleState::Absent || record.going_hook_done) {
                let when = if record.state == ModuleState::Absent {
                    "it was freed"
                } else {
                    "its going hook ran"
                };
                return Some(format!(
                    "{}'s object for {} is bound to {} after {when}",
                    patch_decl.name,
                    catalog.module_name(module),
                    catalog.module_name(module)
                ));
            }
        }
    }
    for (func, stack) in catalog.functions.iter().zip(&kernel.func_stacks) {
        let Target::Module(module) = func.target else {
            continue;
        };
        if !stack.is_empty()
            && kernel
                .module(module)
                .is_some_and(|m| m.state == ModuleState::Absent)
        {
            return Some(format!(
                "func_stack {}() of freed module {} still holds [{}]",
                func.name,
                catalog.module_name(module),
                top_first(catalog, stack)
            ));
        }
    }
    None
}

fn klp_alive_between_hooks(catalog: &Catalog, kernel: &Kernel) -> Option<String> {
    for (decl, record) in catalog.modules.iter().zip(&kernel.modules) {
        let expected = record.coming_hook == HookRun::Succeeded && !record.going_hook_done;
        if record.klp_alive != expected {
            return Some(format!(
                "{}.klp_alive is {} in state {} (coming hook {:?}, going hook run: {})",
                decl.name,
                record.klp_alive,
                record.state.name(),
                record.coming_hook,
                record.going_hook_done
            ));
        }
    }
    None
}

fn describe_object(catalog: &Catalog, object: super::kernel::ObjectRef) -> String {
    let target = catalog
        .patches
        .get(usize::from(object.patch.0))
        .and_then(|p| p.objects.get(usize::from(object.index)))
        .map_or("?", |o| catalog.target_name(o.target));
    format!("{}'s object for {target}", catalog.patch_name(object.patch))
}

fn callbacks_paired(catalog: &Catalog, kernel: &Kernel) -> Option<String> {
    match &kernel.fault {
        Some(Fault::UnpairedCallback { object, callback }) => Some(format!(
            "{callback} callback ran for {} without a successful pre_patch callback",
            describe_object(catalog, *object)
        )),
        _ => None,
    }
}

fn model_fault(catalog: &Catalog, kernel: &Kernel) -> Option<String> {
    match &kernel.fault {
        Some(Fault::PatchedTwice { object }) => Some(format!(
            "klp_patch_object() met {} already patched",
            describe_object(catalog, *object)
        )),
        Some(Fault::Locking) => Some(String::from("klp_mutex taken twice or released unheld")),
        _ => None,
    }
}

impl Report {
    /// Prints the report: figures, then the shortest violating trace step by step, then the
    /// names of the other invariants that fail.
    pub fn write(&self, out: &mut dyn std::fmt::Write) {
        let variant = match self.binding {
            Binding::KlpAlive => "fixed (bind when klp_alive)",
            Binding::ModuleState => "pre-fix (bind when find_module() finds it)",
        };
        let seconds = self.elapsed.as_secs_f64();
        let rate = if seconds > 0.0 {
            self.states as f64 / seconds
        } else {
            0.0
        };
        let _ = writeln!(out, "scenario {}: {variant}", self.scenario);
        let _ = writeln!(
            out,
            "covered {} distinct states and {} interleavings in {:.1} ms ({rate:.0} states/s)",
            self.states,
            self.interleavings,
            seconds * 1000.0
        );
        let Some(first) = self.violations.first() else {
            let _ = writeln!(out, "every interleaving holds every invariant");
            return;
        };
        let _ = writeln!(out, "invariant violated: {}", first.invariant);
        let _ = writeln!(out, "  {}", first.message);
        let _ = writeln!(out, "shortest trace ({} steps):", first.trace.len());
        let _ = writeln!(out, "  0. after setup (func_stack lists are top first)");
        for stack in &self.initial_stacks {
            let _ = writeln!(out, "       func_stack {stack}");
        }
        for (number, step) in first.trace.iter().enumerate() {
            let _ = writeln!(
                out,
                "  {}. {} {}: {}",
                number + 1,
                step.actor,
                step.op,
                step.step
            );
            for line in &step.log {
                let _ = writeln!(out, "       | {line}");
            }
            for module in &step.modules {
                let _ = writeln!(out, "       module {module}");
            }
            for stack in &step.stacks {
                let _ = writeln!(out, "       func_stack {stack}");
            }
        }
        for other in self.violations.iter().skip(1) {
            let _ = writeln!(
                out,
                "also violated: {} (shortest trace {} steps): {}",
                other.invariant,
                other.trace.len(),
                other.message
            );
        }
    }
}
