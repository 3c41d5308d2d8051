//! Twins: pairing the sections and symbols of the original object with those of the patched one.
//!
//! A patched symbol's twin is the original symbol it stands for. Names are the first clue, but
//! GCC renames things between two compilations of nearly the same source: clones get numbered
//! suffixes (`foo.constprop.0` may become `foo.constprop.1`), and function-local statics get a
//! per-translation-unit counter (`count.2` may become `count.3` when a static is added above).
//! So names are normalised first, and static locals that still collide are paired by use: the
//! twin of `count.3` is the `count.N` referenced by the twin of the function that uses it.

use std::collections::{BTreeSet, HashMap};

use crate::elf::{Binding, Object, Placement, RelocationTarget, SectionId, SymbolId, SymbolKind};

/// The pairing of one original object with its patched counterpart.
#[derive(Debug, Clone)]
pub struct Twins {
    patched_to_orig_symbol: Vec<Option<SymbolId>>,
    orig_to_patched_symbol: Vec<Option<SymbolId>>,
    patched_to_orig_section: Vec<Option<SectionId>>,
    /// Static locals of the patched object that no rule could pair although the original has
    /// unpaired ones of the same name (their users changed beyond recognition), with those
    /// candidates. `compare` refuses the writable ones: a new copy would lose live state.
    pub unpaired_static_locals: Vec<(SymbolId, Vec<SymbolId>)>,
}

impl Twins {
    /// The original twin of a patched symbol.
    pub fn symbol(&self, patched: SymbolId) -> Option<SymbolId> {
        self.patched_to_orig_symbol
            .get(patched.0)
            .copied()
            .flatten()
    }

    /// The patched twin of an original symbol.
    pub fn patched_symbol(&self, orig: SymbolId) -> Option<SymbolId> {
        self.orig_to_patched_symbol.get(orig.0).copied().flatten()
    }

    /// The original twin of a patched section.
    pub fn section(&self, patched: SectionId) -> Option<SectionId> {
        self.patched_to_orig_section
            .get(patched.0)
            .copied()
            .flatten()
    }

    fn pair(&mut self, orig: SymbolId, patched: SymbolId) {
        self.patched_to_orig_symbol[patched.0] = Some(orig);
        self.orig_to_patched_symbol[orig.0] = Some(patched);
    }
}

/// Compiler suffixes that carry a clone number: `foo.constprop.0`, `foo.isra.3`, `foo.part.1`.
const NUMBERED_CLONE_SUFFIXES: &[&str] = &["constprop", "isra", "part", "lto_priv", "llvm"];

/// How a local symbol name is matched across compilations.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NameKey {
    /// The name with clone numbers removed (`foo.constprop.isra`) or, for a static local, the
    /// name without its counter (`count`).
    pub base: String,
    pub static_local: bool,
}

/// Normalises a symbol name: `foo.constprop.0.isra.1` becomes `foo.constprop.isra`,
/// `foo.cold` stays, and a static local `count.12` becomes `count` marked as a static local.
pub fn name_key(name: &str) -> NameKey {
    if name.starts_with('.') || !name.contains('.') {
        let base = if name.starts_with("__UNIQUE_ID_") {
            name.trim_end_matches(|c: char| c.is_ascii_digit())
        } else {
            name
        };
        return NameKey {
            base: base.to_string(),
            static_local: false,
        };
    }
    let parts: Vec<&str> = name.split('.').collect();
    // The kernel's __UNIQUE_ID(prefix) appends __COUNTER__, which any macro use above
    // changes: `__UNIQUE_ID_ddebug345.12` is the same static as `__UNIQUE_ID_ddebug351.12`.
    let first = if parts[0].starts_with("__UNIQUE_ID_") {
        parts[0].trim_end_matches(|c: char| c.is_ascii_digit())
    } else {
        parts[0]
    };
    let mut kept: Vec<&str> = vec![first];
    let mut clone_suffix_seen = false;
    for (i, part) in parts.iter().enumerate().skip(1) {
        let is_number = !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
        if is_number && NUMBERED_CLONE_SUFFIXES.contains(&parts[i - 1]) {
            continue;
        }
        if NUMBERED_CLONE_SUFFIXES.contains(part) || *part == "cold" {
            clone_suffix_seen = true;
        }
        kept.push(part);
    }
    let last_is_number = kept.len() > 1
        && kept
            .last()
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if last_is_number && !clone_suffix_seen {
        kept.pop();
        return NameKey {
            base: kept.join("."),
            static_local: true,
        };
    }
    NameKey {
        base: kept.join("."),
        static_local: false,
    }
}

/// The name a `.cold` part's parent function has: `foo.cold` and `foo.constprop.0.cold` belong
/// to `foo` and `foo.constprop.0`.
pub fn cold_parent(name: &str) -> Option<&str> {
    name.strip_suffix(".cold")
}

fn is_pairable(object: &Object, id: SymbolId) -> bool {
    let symbol = object.symbol(id);
    !symbol.name.is_empty()
        && matches!(
            symbol.kind,
            SymbolKind::Func | SymbolKind::Object | SymbolKind::NoType | SymbolKind::Other
        )
}

/// Who uses a static local: the functions (and, in the second round, the data objects)
/// whose contents refer to it, and the offset of the earliest such reference from the start
/// of its referrer.
#[derive(Debug, Default)]
struct Users {
    referrers: BTreeSet<SymbolId>,
    first_use: u64,
}

/// For each data symbol, who refers to it.
fn data_users(object: &Object, with_data_referrers: bool) -> HashMap<SymbolId, Users> {
    let mut users: HashMap<SymbolId, Users> = HashMap::new();
    let referrers = object.symbols.iter().filter(|s| {
        (s.kind == SymbolKind::Func && !s.is_prefix())
            || (with_data_referrers && s.kind == SymbolKind::Object)
    });
    for referrer in referrers {
        let Some(section) = referrer.section() else {
            continue;
        };
        let (start, end) = object.extent(referrer.id);
        for relocation in object.relocations_in(section, start, end) {
            let RelocationTarget::Symbol { symbol, .. } = object.resolve(relocation) else {
                continue;
            };
            if object.symbol(symbol).kind != SymbolKind::Object || symbol == referrer.id {
                continue;
            }
            let offset = relocation.offset.saturating_sub(referrer.value);
            let entry = users.entry(symbol).or_insert(Users {
                referrers: BTreeSet::new(),
                first_use: offset,
            });
            entry.referrers.insert(referrer.id);
            entry.first_use = entry.first_use.min(offset);
        }
    }
    users
}

/// Pairs the symbols and sections of `orig` and `patched`.
pub fn correlate(orig: &Object, patched: &Object) -> Twins {
    let mut twins = Twins {
        patched_to_orig_symbol: vec![None; patched.symbols.len()],
        orig_to_patched_symbol: vec![None; orig.symbols.len()],
        patched_to_orig_section: vec![None; patched.sections.len()],
        unpaired_static_locals: Vec::new(),
    };

    // Global and undefined names are unique in an object, so they pair by exact name.
    let orig_globals: HashMap<&str, SymbolId> = orig
        .symbols
        .iter()
        .filter(|s| is_pairable(orig, s.id))
        .filter(|s| s.binding != Binding::Local || s.placement == Placement::Undefined)
        .map(|s| (s.name.as_str(), s.id))
        .collect();
    for symbol in patched
        .symbols
        .iter()
        .filter(|s| is_pairable(patched, s.id))
    {
        if symbol.binding != Binding::Local || symbol.placement == Placement::Undefined {
            if let Some(&orig_id) = orig_globals.get(symbol.name.as_str()) {
                twins.pair(orig_id, symbol.id);
            }
        }
    }

    // Local functions first, since static locals are then paired by the functions using them.
    pair_locals(orig, patched, &mut twins, true);
    pair_locals(orig, patched, &mut twins, false);

    // A section's twin is the section holding its first symbol's twin; sections without
    // symbols (string tables, special sections) pair by name.
    let mut orig_sections_by_name: HashMap<&str, Vec<SectionId>> = HashMap::new();
    for section in &orig.sections {
        orig_sections_by_name
            .entry(section.name.as_str())
            .or_default()
            .push(section.id);
    }
    for section in &patched.sections {
        let by_symbol = patched
            .symbols_in(section.id)
            .iter()
            .find_map(|&id| twins.symbol(id))
            .and_then(|orig_id| orig.symbol(orig_id).section());
        let twin = by_symbol.or_else(|| {
            match orig_sections_by_name
                .get(section.name.as_str())
                .map(Vec::as_slice)
            {
                Some([only]) if orig.symbols_in(*only).is_empty() => Some(*only),
                _ => None,
            }
        });
        twins.patched_to_orig_section[section.id.0] = twin;
    }
    twins
}

fn pair_locals(orig: &Object, patched: &Object, twins: &mut Twins, functions: bool) {
    let wanted = |object: &Object, id: SymbolId| {
        let symbol = object.symbol(id);
        is_pairable(object, id)
            && symbol.binding == Binding::Local
            && symbol.placement != Placement::Undefined
            && (symbol.kind == SymbolKind::Func) == functions
    };
    let mut groups: HashMap<NameKey, (Vec<SymbolId>, Vec<SymbolId>)> = HashMap::new();
    for symbol in &orig.symbols {
        if wanted(orig, symbol.id) {
            groups
                .entry(name_key(&symbol.name))
                .or_default()
                .0
                .push(symbol.id);
        }
    }
    for symbol in &patched.symbols {
        if wanted(patched, symbol.id) {
            groups
                .entry(name_key(&symbol.name))
                .or_default()
                .1
                .push(symbol.id);
        }
    }
    let mut static_groups: Vec<(Vec<SymbolId>, Vec<SymbolId>)> = Vec::new();
    // Sorting the keys keeps the pairing independent of hash order.
    let mut keys: Vec<&NameKey> = groups.keys().collect();
    keys.sort();
    for key in keys {
        let (orig_ids, patched_ids) = &groups[key];
        if let ([o], [p]) = (orig_ids.as_slice(), patched_ids.as_slice()) {
            twins.pair(*o, *p);
            continue;
        }
        let mut orig_left: Vec<SymbolId> = orig_ids.clone();
        let mut patched_left: Vec<SymbolId> = Vec::new();
        for &p in patched_ids {
            let name = &patched.symbol(p).name;
            match orig_left.iter().position(|&o| &orig.symbol(o).name == name) {
                // For clones an exact name is the best evidence left; for static locals the
                // counter is not evidence at all, so they go by use below.
                Some(i) if !key.static_local => {
                    twins.pair(orig_left[i], p);
                    orig_left.remove(i);
                }
                _ => patched_left.push(p),
            }
        }
        if key.static_local {
            static_groups.push((orig_left, patched_left));
        }
    }
    if !functions {
        pair_static_locals(orig, patched, twins, &static_groups);
    }
}

/// Which object a symbol belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Orig,
    Patched,
}

/// How a patched referrer without a twin is named in a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unpaired {
    /// As new: it matches no original referrer.
    AsNew,
    /// By its own name, which may equal its original's.
    ByOwnName,
}

/// The referrers of a static local, each named as in the original object.
fn referrer_names(
    orig: &Object,
    patched: &Object,
    twins: &Twins,
    users: &Users,
    side: Side,
    unpaired: Unpaired,
) -> BTreeSet<String> {
    users
        .referrers
        .iter()
        .map(|&r| match (side, twins.symbol(r)) {
            (Side::Orig, _) => orig.symbol(r).name.clone(),
            (Side::Patched, Some(o)) => orig.symbol(o).name.clone(),
            (Side::Patched, None) => match unpaired {
                Unpaired::AsNew => format!("\0new {}", patched.symbol(r).name),
                Unpaired::ByOwnName => patched.symbol(r).name.clone(),
            },
        })
        .collect()
}

/// Pairs static locals that share a name (`count.1`, `count.2`) by use: first by the
/// functions that refer to them, then also by the data that does (a `pr_debug` descriptor
/// refers to its `__func__.N`), then, among those sharing their users, by the order of first
/// use. What is left pairs by exact name, so that an object always pairs fully with itself.
fn pair_static_locals(
    orig: &Object,
    patched: &Object,
    twins: &mut Twins,
    groups: &[(Vec<SymbolId>, Vec<SymbolId>)],
) {
    for with_data_referrers in [false, true] {
        let orig_users = data_users(orig, with_data_referrers);
        let patched_users = data_users(patched, with_data_referrers);
        for (orig_ids, patched_ids) in groups {
            let orig_left: Vec<SymbolId> = orig_ids
                .iter()
                .copied()
                .filter(|&o| twins.patched_symbol(o).is_none())
                .collect();
            let patched_left: Vec<SymbolId> = patched_ids
                .iter()
                .copied()
                .filter(|&p| twins.symbol(p).is_none())
                .collect();
            if orig_left.is_empty() || patched_left.is_empty() {
                continue;
            }
            // Who uses each static, named as in the original object; computed before this
            // group pairs anything, since pairing changes twins.
            let signature_in = |users: &HashMap<SymbolId, Users>, id, side| {
                users.get(&id).map(|u| {
                    let names = referrer_names(orig, patched, twins, u, side, Unpaired::AsNew);
                    (names, u.first_use)
                })
            };
            let orig_signatures: Vec<(SymbolId, BTreeSet<String>, u64)> = orig_left
                .iter()
                .filter_map(|&o| signature_in(&orig_users, o, Side::Orig).map(|(n, f)| (o, n, f)))
                .collect();
            let patched_signatures: Vec<(SymbolId, BTreeSet<String>, u64)> = patched_left
                .iter()
                .filter_map(|&p| {
                    signature_in(&patched_users, p, Side::Patched).map(|(n, f)| (p, n, f))
                })
                .collect();
            let mut signatures: Vec<&BTreeSet<String>> =
                patched_signatures.iter().map(|(_, n, _)| n).collect();
            signatures.sort();
            signatures.dedup();
            let mut pairs = Vec::new();
            for signature in signatures {
                let by_first_use = |list: &[(SymbolId, BTreeSet<String>, u64)]| {
                    let mut same: Vec<(u64, SymbolId)> = list
                        .iter()
                        .filter(|(_, n, _)| n == signature)
                        .map(|(id, _, first)| (*first, *id))
                        .collect();
                    same.sort();
                    same
                };
                let orig_same = by_first_use(&orig_signatures);
                let patched_same = by_first_use(&patched_signatures);
                let distinct = |l: &[(u64, SymbolId)]| l.windows(2).all(|w| w[0].0 != w[1].0);
                // One each: the users say it all. Several each, as many on both sides, used at
                // distinct places: the order of first use says it.
                if orig_same.len() == patched_same.len()
                    && (orig_same.len() == 1 || (distinct(&orig_same) && distinct(&patched_same)))
                {
                    for (&(_, o), &(_, p)) in orig_same.iter().zip(&patched_same) {
                        pairs.push((o, p));
                    }
                }
            }
            for (o, p) in pairs {
                twins.pair(o, p);
            }
        }
    }
    // Last, exact names, but only where the users agree (an object paired with itself) or
    // neither side has any: a counter suffix alone is no evidence, and pairing two statics
    // that different functions use would hand one function's state to another.
    let orig_users = data_users(orig, true);
    let patched_users = data_users(patched, true);
    // Not paired (yet), a referrer counts by its own name: what an unpaired static local that
    // refers to this one (a compound literal inside another) still has in common with its
    // original.
    let users_named_as_in_orig = |users: Option<&Users>, side| -> BTreeSet<String> {
        users
            .map(|u| referrer_names(orig, patched, twins, u, side, Unpaired::ByOwnName))
            .unwrap_or_default()
    };
    let mut by_name = Vec::new();
    for (orig_ids, patched_ids) in groups {
        for &p in patched_ids {
            if twins.symbol(p).is_some() {
                continue;
            }
            let name = &patched.symbol(p).name;
            let patched_signature = users_named_as_in_orig(patched_users.get(&p), Side::Patched);
            if let Some(&o) = orig_ids.iter().find(|&&o| {
                twins.patched_symbol(o).is_none()
                    && &orig.symbol(o).name == name
                    && users_named_as_in_orig(orig_users.get(&o), Side::Orig) == patched_signature
            }) {
                by_name.push((o, p));
            }
        }
    }
    for (o, p) in by_name {
        twins.pair(o, p);
    }
    for (orig_ids, patched_ids) in groups {
        let orig_left: Vec<SymbolId> = orig_ids
            .iter()
            .copied()
            .filter(|&o| twins.patched_symbol(o).is_none())
            .collect();
        if orig_left.is_empty() {
            continue;
        }
        for &p in patched_ids {
            if twins.symbol(p).is_none() {
                twins.unpaired_static_locals.push((p, orig_left.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, base: &str, static_local: bool) {
        assert_eq!(
            name_key(name),
            NameKey {
                base: base.to_string(),
                static_local
            },
            "{name}"
        );
    }

    #[test]
    fn names_are_normalised() {
        check("foo", "foo", false);
        check("foo.constprop.0", "foo.constprop", false);
        check("foo.constprop.12.isra.0", "foo.constprop.isra", false);
        check("foo.part.3", "foo.part", false);
        check("foo.cold", "foo.cold", false);
        check("foo.isra.0.cold", "foo.isra.cold", false);
        check("count.2", "count", true);
        check("__already_done.17", "__already_done", true);
        check(".LC0", ".LC0", false);
        check("__func__.0", "__func__", true);
        check("__UNIQUE_ID_ddebug345.12", "__UNIQUE_ID_ddebug", true);
        check("__UNIQUE_ID_ddebug345", "__UNIQUE_ID_ddebug", false);
    }

    #[test]
    fn cold_parts_name_their_parent() {
        assert_eq!(cold_parent("foo.cold"), Some("foo"));
        assert_eq!(cold_parent("foo.isra.0.cold"), Some("foo.isra.0"));
        assert_eq!(cold_parent("foo"), None);
    }
}
