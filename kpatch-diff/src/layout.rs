//! The data-layout check: the struct and union types an original object's DWARF describes,
//! compared with the patched object's. The original code may have made objects of any type it
//! uses (an open file's private data, a queued request), and those stay live when the patch
//! lands, so a type whose members moved, grew, shrank, appeared or disappeared would be read
//! by the new code with the old layout. Types the original does not describe are new to the
//! patch and free to be anything.
//!
//! A type is known by its kind and tag (`struct sk_buff`), or by its typedef's name when the
//! struct itself has none. Anonymous struct and union members are flattened into the type
//! that holds them, with their members' offsets counted from its start, so that what moves
//! inside them moves in the holder.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::elf::{Object, Section};

/// Relocation types that can appear in DWARF sections of an x86_64 object: absolute
/// addresses and section offsets. Any other is ignored (its field is an address, which the
/// layout check never reads).
const R_X86_64_64: u32 = 1;
const R_X86_64_32: u32 = 10;
const R_X86_64_32S: u32 = 11;

/// One member of a type, as the running kernel lays it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The member's name; `a.b` for a member `b` of a named member `a` whose type is an
    /// anonymous struct or union, `b` when the holder member itself is anonymous.
    pub name: String,
    /// Offset and size in bits, so that bit fields count.
    pub offset_bits: u64,
    pub size_bits: u64,
}

/// The layout of one struct or union.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub size: u64,
    pub members: Vec<Member>,
}

/// The struct and union types one object describes, with the code and data of the object
/// that use each.
#[derive(Debug, Default)]
pub struct Types {
    /// By name (`struct foo`, `union bar`, or a typedef's name); a name defined twice in one
    /// object (in two function scopes, say) keeps every definition, in DWARF order.
    pub layouts: BTreeMap<String, Vec<Layout>>,
    /// Functions (and global or static data, as `data NAME`) whose own type, parameters or
    /// variables name the type, through pointers, arrays, typedefs and qualifiers.
    pub users: BTreeMap<String, BTreeSet<String>>,
    /// The types each type holds or points to through its members.
    pub reaches: BTreeMap<String, BTreeSet<String>>,
}

/// A type whose layout the patch changes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LayoutChange {
    /// `struct foo`, `union bar` or a typedef's name.
    pub type_name: String,
    /// What changed, one line each: `member b moved from offset 4 to 8`.
    pub changes: Vec<String>,
    /// Whether a member was added, which a shadow variable can carry instead.
    pub member_added: bool,
    /// The original's functions and data that use the type (directly, or else through the
    /// types that hold or point to it).
    pub users: Vec<String>,
}

impl LayoutChange {
    /// The refusal's reason: what changed, why that is unsafe, and what to do.
    pub fn reason(&self) -> String {
        let mut reason = format!(
            "the patch changes the layout of {}: {}",
            self.type_name,
            self.changes.join("; ")
        );
        if self.users.is_empty() {
            reason.push_str(". The original object describes the type");
        } else {
            reason.push_str(&format!(
                ". The original code uses it ({})",
                list_names(&self.users)
            ));
        }
        reason.push_str(
            ", so objects laid out the old way may be live when the patch lands, and the new \
             code would misread them",
        );
        if self.member_added {
            reason.push_str(
                ". To give existing objects new state, leave the type as it is and keep the \
                 new field in a shadow variable (klp_shadow_alloc or klp_shadow_get_or_alloc \
                 where the object is first met, klp_shadow_get where it is used, \
                 klp_shadow_free when it goes away)",
            );
        }
        reason.push_str(&format!(
            ". If no object of the type can be live when the patch loads, pass \
             --allow-layout-change '{}'",
            self.type_name
        ));
        reason
    }
}

/// At most this many moved members are named in a message, the rest counted.
const NAMED_MOVES: usize = 4;

/// At most this many users are named in a message.
const NAMED_USERS: usize = 8;

fn list_names(names: &[String]) -> String {
    let mut text = names
        .iter()
        .take(NAMED_USERS)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > NAMED_USERS {
        text.push_str(&format!(" and {} more", names.len() - NAMED_USERS));
    }
    text
}

/// Why an object's DWARF could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot read the DWARF of {object}: {message}")]
pub struct DwarfError {
    pub object: String,
    pub message: String,
}

/// Whether the object carries DWARF type information.
pub fn has_dwarf(object: &Object) -> bool {
    object
        .sections
        .iter()
        .any(|s| s.name == ".debug_info" && !s.data.is_empty())
}

/// The layout changes from `orig` to `patched`: every type both describe whose layout differs.
/// A type only the patched object describes is new to it (or newly used), and passes.
pub fn changes(orig: &Types, patched: &Types) -> Vec<LayoutChange> {
    let mut found = Vec::new();
    for (name, old_layouts) in &orig.layouts {
        let Some(new_layouts) = patched.layouts.get(name) else {
            continue;
        };
        let mut lines = Vec::new();
        let mut member_added = false;
        if old_layouts.len() != new_layouts.len() {
            lines.push(format!(
                "defined {} times in the original and {} in the patched object",
                old_layouts.len(),
                new_layouts.len()
            ));
        }
        for (old, new) in old_layouts.iter().zip(new_layouts) {
            let (mut difference, added) = compare_layouts(old, new);
            member_added |= added;
            lines.append(&mut difference);
        }
        if lines.is_empty() {
            continue;
        }
        found.push(LayoutChange {
            type_name: name.clone(),
            changes: lines,
            member_added,
            users: users_of(orig, name),
        });
    }
    found
}

/// The original's users of `name`: those that name it, or else those that name a type that
/// holds or points to it.
fn users_of(types: &Types, name: &str) -> Vec<String> {
    if let Some(direct) = types.users.get(name).filter(|u| !u.is_empty()) {
        return direct.iter().cloned().collect();
    }
    let mut holders: BTreeSet<&str> = BTreeSet::new();
    let mut pending = vec![name];
    while let Some(current) = pending.pop() {
        for (holder, held) in &types.reaches {
            if held.contains(current) && holders.insert(holder.as_str()) {
                pending.push(holder);
            }
        }
    }
    holders
        .iter()
        .filter_map(|holder| types.users.get(*holder))
        .flatten()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// An offset for a message: in bytes, or in bits from the start when a bit field's is not
/// whole bytes.
fn offset_text(bits: u64) -> String {
    if bits & 7 == 0 {
        format!("offset {}", bits / 8)
    } else {
        format!("bit {bits}")
    }
}

fn size_text(bits: u64) -> String {
    match bits {
        1 => "1 bit".to_string(),
        8 => "1 byte".to_string(),
        bits if bits & 7 == 0 => format!("{} bytes", bits / 8),
        bits => format!("{bits} bits"),
    }
}

/// What differs between two layouts of one type, and whether a member was added. A member
/// that is gone while another of the same offset and size appears is a rename: the memory is
/// read the same way.
fn compare_layouts(old: &Layout, new: &Layout) -> (Vec<String>, bool) {
    let mut lines = Vec::new();
    let old_members: HashMap<&str, &Member> =
        old.members.iter().map(|m| (m.name.as_str(), m)).collect();
    let new_members: HashMap<&str, &Member> =
        new.members.iter().map(|m| (m.name.as_str(), m)).collect();
    let mut added: Vec<&Member> = new
        .members
        .iter()
        .filter(|m| !old_members.contains_key(m.name.as_str()))
        .collect();
    let mut removed: Vec<&Member> = old
        .members
        .iter()
        .filter(|m| !new_members.contains_key(m.name.as_str()))
        .collect();
    removed.retain(|gone| {
        let renamed = added
            .iter()
            .position(|a| a.offset_bits == gone.offset_bits && a.size_bits == gone.size_bits);
        if let Some(index) = renamed {
            added.remove(index);
        }
        renamed.is_none()
    });
    // Added and removed members first: they are the change; moves follow from them.
    for member in &added {
        lines.push(format!(
            "member {} added at {} ({})",
            member.name,
            offset_text(member.offset_bits),
            size_text(member.size_bits)
        ));
    }
    for member in &removed {
        lines.push(format!(
            "member {} ({}, {}) removed",
            member.name,
            offset_text(member.offset_bits),
            size_text(member.size_bits)
        ));
    }
    let mut moved = Vec::new();
    for member in &old.members {
        let Some(now) = new_members.get(member.name.as_str()) else {
            continue;
        };
        if now.size_bits != member.size_bits {
            lines.push(format!(
                "member {} resized from {} to {}",
                member.name,
                size_text(member.size_bits),
                size_text(now.size_bits)
            ));
        }
        if now.offset_bits != member.offset_bits {
            moved.push(format!(
                "member {} moved from {} to {}",
                member.name,
                offset_text(member.offset_bits),
                offset_text(now.offset_bits)
            ));
        }
    }
    if moved.len() > NAMED_MOVES {
        let more = moved.len() - NAMED_MOVES;
        moved.truncate(NAMED_MOVES);
        moved.push(format!("{more} more members moved"));
    }
    lines.append(&mut moved);
    if old.size != new.size {
        lines.push(format!(
            "size changed from {} to {} bytes",
            old.size, new.size
        ));
    }
    (lines, !added.is_empty())
}

/// One debugging information entry, with what the check needs of it.
#[derive(Debug, Clone)]
struct Die {
    tag: gimli::DwTag,
    name: Option<String>,
    ty: Option<usize>,
    byte_size: Option<u64>,
    bit_size: Option<u64>,
    /// `DW_AT_data_member_location` in bytes, or `DW_AT_data_bit_offset` in bits.
    member_offset_bits: Option<u64>,
    /// A subrange's element count (`DW_AT_count`, or `DW_AT_upper_bound` plus one).
    count: Option<u64>,
    declaration: bool,
    /// `DW_AT_specification` or `DW_AT_abstract_origin`: where a name comes from.
    origin: Option<usize>,
    parent: Option<usize>,
    children: Vec<usize>,
}

/// The DWARF sections of `object`, relocated: in a relocatable object the offsets into
/// `.debug_str` and the other sections are relocations, and the section bytes hold zero.
fn relocated(object: &Object, name: &str) -> Vec<u8> {
    let Some(section) = object.sections.iter().find(|s| s.name == name) else {
        return Vec::new();
    };
    let mut data = section.data.clone();
    apply_relocations(object, section, &mut data);
    data
}

fn apply_relocations(object: &Object, section: &Section, data: &mut [u8]) {
    for relocation in &section.relocations {
        let width = match relocation.r_type {
            R_X86_64_64 => 8,
            R_X86_64_32 | R_X86_64_32S => 4,
            _ => continue,
        };
        let value = object
            .symbol(relocation.symbol)
            .value
            .wrapping_add_signed(relocation.addend);
        let Ok(start) = usize::try_from(relocation.offset) else {
            continue;
        };
        let Some(field) = data.get_mut(start..start.saturating_add(width)) else {
            continue;
        };
        field.copy_from_slice(&value.to_le_bytes()[..width]);
    }
}

/// Reads the struct and union types of `object`'s DWARF, and who uses each.
pub fn read_types(object: &Object) -> Result<Types, DwarfError> {
    let error = |message: String| DwarfError {
        object: object.name.clone(),
        message,
    };
    let mut sections: HashMap<gimli::SectionId, Vec<u8>> = HashMap::new();
    for id in [
        gimli::SectionId::DebugInfo,
        gimli::SectionId::DebugAbbrev,
        gimli::SectionId::DebugStr,
        gimli::SectionId::DebugLineStr,
        gimli::SectionId::DebugStrOffsets,
        // `Dwarf::unit` reads the unit's line program header.
        gimli::SectionId::DebugLine,
    ] {
        sections.insert(id, relocated(object, id.name()));
    }
    let dwarf = gimli::Dwarf::load(|id| -> Result<_, gimli::Error> {
        let data = sections.get(&id).map(Vec::as_slice).unwrap_or(&[]);
        Ok(gimli::EndianSlice::new(data, gimli::LittleEndian))
    })
    .map_err(|e| error(e.to_string()))?;
    let mut types = Types::default();
    let mut headers = dwarf.units();
    while let Some(header) = headers.next().map_err(|e| error(e.to_string()))? {
        let unit = dwarf.unit(header).map_err(|e| error(e.to_string()))?;
        let dies = read_dies(&dwarf, &unit).map_err(|e| error(e.to_string()))?;
        collect_types(&dies, &mut types);
    }
    Ok(types)
}

type Reader<'a> = gimli::EndianSlice<'a, gimli::LittleEndian>;

fn read_dies(
    dwarf: &gimli::Dwarf<Reader<'_>>,
    unit: &gimli::Unit<Reader<'_>>,
) -> gimli::Result<HashMap<usize, Die>> {
    let mut dies: HashMap<usize, Die> = HashMap::new();
    let mut stack: Vec<usize> = Vec::new();
    let mut entries = unit.entries();
    let mut depth: isize = 0;
    while let Some((delta, entry)) = entries.next_dfs()? {
        depth += delta;
        let keep = usize::try_from(depth).unwrap_or(0);
        stack.truncate(keep);
        let offset = entry.offset().0;
        let reference = |value: Option<gimli::AttributeValue<Reader<'_>>>| match value {
            Some(gimli::AttributeValue::UnitRef(target)) => Some(target.0),
            _ => None,
        };
        let mut die = Die {
            tag: entry.tag(),
            name: None,
            ty: None,
            byte_size: None,
            bit_size: None,
            member_offset_bits: None,
            count: None,
            declaration: false,
            origin: None,
            parent: stack.last().copied(),
            children: Vec::new(),
        };
        if let Some(value) = entry.attr_value(gimli::DW_AT_name)? {
            let name = dwarf.attr_string(unit, value)?;
            die.name = Some(String::from_utf8_lossy(name.slice()).into_owned());
        }
        die.ty = reference(entry.attr_value(gimli::DW_AT_type)?);
        die.origin = reference(entry.attr_value(gimli::DW_AT_specification)?)
            .or(reference(entry.attr_value(gimli::DW_AT_abstract_origin)?));
        let number = |attribute| -> gimli::Result<Option<u64>> {
            Ok(entry
                .attr_value(attribute)?
                .and_then(|value| value.udata_value()))
        };
        die.byte_size = number(gimli::DW_AT_byte_size)?;
        die.bit_size = number(gimli::DW_AT_bit_size)?;
        die.member_offset_bits = match number(gimli::DW_AT_data_bit_offset)? {
            Some(bits) => Some(bits),
            None => number(gimli::DW_AT_data_member_location)?.map(|b| b.saturating_mul(8)),
        };
        die.count = match number(gimli::DW_AT_count)? {
            Some(count) => Some(count),
            None => number(gimli::DW_AT_upper_bound)?.map(|b| b.saturating_add(1)),
        };
        die.declaration = matches!(
            entry.attr_value(gimli::DW_AT_declaration)?,
            Some(gimli::AttributeValue::Flag(true))
        );
        if let Some(&parent) = stack.last() {
            if let Some(parent_die) = dies.get_mut(&parent) {
                parent_die.children.push(offset);
            }
        }
        dies.insert(offset, die);
        if entry.has_children() {
            stack.push(offset);
        }
    }
    Ok(dies)
}

fn is_aggregate(tag: gimli::DwTag) -> bool {
    matches!(
        tag,
        gimli::DW_TAG_structure_type | gimli::DW_TAG_union_type | gimli::DW_TAG_class_type
    )
}

/// Tags that stand for the type they refer to, as far as layout goes.
fn is_transparent(tag: gimli::DwTag) -> bool {
    matches!(
        tag,
        gimli::DW_TAG_const_type
            | gimli::DW_TAG_volatile_type
            | gimli::DW_TAG_restrict_type
            | gimli::DW_TAG_atomic_type
    )
}

/// How types are named: by tag, or by the typedef that names an untagged struct.
fn type_names(dies: &HashMap<usize, Die>) -> HashMap<usize, String> {
    let mut names = HashMap::new();
    for (&offset, die) in dies {
        if !is_aggregate(die.tag) || die.declaration {
            continue;
        }
        if let Some(name) = &die.name {
            let kind = match die.tag {
                gimli::DW_TAG_union_type => "union",
                gimli::DW_TAG_class_type => "class",
                _ => "struct",
            };
            names.insert(offset, format!("{kind} {name}"));
        }
    }
    for die in dies.values() {
        if die.tag != gimli::DW_TAG_typedef {
            continue;
        }
        let (Some(name), Some(target)) = (&die.name, die.ty) else {
            continue;
        };
        let named = dies
            .get(&target)
            .is_some_and(|t| is_aggregate(t.tag) && t.name.is_none() && !t.declaration);
        if named {
            names.entry(target).or_insert_with(|| name.clone());
        }
    }
    names
}

/// The size of a type in bytes, through typedefs, qualifiers and arrays.
fn type_size(dies: &HashMap<usize, Die>, offset: usize) -> u64 {
    sized(dies, offset, 0)
}

/// [`type_size`], `depth` arrays deep: a malformed DWARF can make an array its own element.
fn sized(dies: &HashMap<usize, Die>, mut offset: usize, depth: usize) -> u64 {
    if depth > 16 {
        return 0;
    }
    for _ in 0..64 {
        let Some(die) = dies.get(&offset) else {
            return 0;
        };
        if die.tag == gimli::DW_TAG_array_type {
            let element = die.ty.map_or(0, |t| sized(dies, t, depth + 1));
            let count: u64 = die
                .children
                .iter()
                .filter_map(|c| dies.get(c))
                .filter(|c| c.tag == gimli::DW_TAG_subrange_type)
                .map(|c| c.count.unwrap_or(0))
                .product();
            return die.byte_size.unwrap_or(element.saturating_mul(count));
        }
        if let Some(size) = die.byte_size {
            return size;
        }
        match die.ty {
            Some(next) if die.tag == gimli::DW_TAG_typedef || is_transparent(die.tag) => {
                offset = next
            }
            _ => {
                return if die.tag == gimli::DW_TAG_pointer_type {
                    8
                } else {
                    0
                }
            }
        }
    }
    0
}

/// The aggregate a type reference leads to through qualifiers only (not typedefs: a
/// typedef'd struct is a type of its own name).
fn strip_qualifiers(dies: &HashMap<usize, Die>, mut offset: usize) -> Option<usize> {
    for _ in 0..64 {
        let die = dies.get(&offset)?;
        if is_transparent(die.tag) {
            offset = die.ty?;
        } else {
            return Some(offset);
        }
    }
    None
}

/// The members of an aggregate, anonymous aggregates flattened in.
fn flatten(
    dies: &HashMap<usize, Die>,
    names: &HashMap<usize, String>,
    aggregate: usize,
    base_bits: u64,
    prefix: &str,
    members: &mut Vec<Member>,
    depth: usize,
) {
    let Some(die) = dies.get(&aggregate) else {
        return;
    };
    if depth > 16 {
        return;
    }
    for child in die.children.iter().filter_map(|c| dies.get(c)) {
        if child.tag != gimli::DW_TAG_member {
            continue;
        }
        let offset_bits = base_bits.saturating_add(child.member_offset_bits.unwrap_or(0));
        let size_bits = child
            .bit_size
            .unwrap_or_else(|| child.ty.map_or(0, |t| type_size(dies, t)).saturating_mul(8));
        let inner = child
            .ty
            .and_then(|t| strip_qualifiers(dies, t))
            .filter(|t| dies.get(t).is_some_and(|d| is_aggregate(d.tag)) && !names.contains_key(t));
        match (&child.name, inner) {
            (None, Some(inner)) => {
                flatten(dies, names, inner, offset_bits, prefix, members, depth + 1)
            }
            (Some(name), inner) => {
                let full = format!("{prefix}{name}");
                members.push(Member {
                    name: full.clone(),
                    offset_bits,
                    size_bits,
                });
                if let Some(inner) = inner {
                    let prefix = format!("{full}.");
                    flatten(dies, names, inner, offset_bits, &prefix, members, depth + 1);
                }
            }
            (None, None) => members.push(Member {
                name: format!("{prefix}<anonymous at bit {offset_bits}>"),
                offset_bits,
                size_bits,
            }),
        }
    }
}

/// The named aggregates a type reference names, through pointers, arrays, typedefs of
/// pointers and qualifiers (a typedef of a struct names the typedef's own type).
fn named_types(
    dies: &HashMap<usize, Die>,
    names: &HashMap<usize, String>,
    start: usize,
) -> Option<String> {
    let mut offset = start;
    for _ in 0..64 {
        if let Some(name) = names.get(&offset) {
            return Some(name.clone());
        }
        let die = dies.get(&offset)?;
        match die.tag {
            gimli::DW_TAG_pointer_type
            | gimli::DW_TAG_array_type
            | gimli::DW_TAG_typedef
            | gimli::DW_TAG_reference_type => offset = die.ty?,
            tag if is_transparent(tag) => offset = die.ty?,
            _ => return None,
        }
    }
    None
}

/// The name a function or variable entry goes by, through its specification or abstract
/// origin.
fn entry_name(dies: &HashMap<usize, Die>, offset: usize) -> Option<String> {
    let mut current = offset;
    for _ in 0..8 {
        let die = dies.get(&current)?;
        if let Some(name) = &die.name {
            return Some(name.clone());
        }
        current = die.origin?;
    }
    None
}

fn collect_types(dies: &HashMap<usize, Die>, types: &mut Types) {
    let names = type_names(dies);
    let mut offsets: Vec<&usize> = names.keys().collect();
    offsets.sort();
    for &offset in offsets {
        let (Some(die), Some(name)) = (dies.get(&offset), names.get(&offset)) else {
            continue;
        };
        let mut members = Vec::new();
        flatten(dies, &names, offset, 0, "", &mut members, 0);
        types.layouts.entry(name.clone()).or_default().push(Layout {
            size: die.byte_size.unwrap_or(0),
            members,
        });
        let held = types.reaches.entry(name.clone()).or_default();
        for member in die.children.iter().filter_map(|c| dies.get(c)) {
            if let Some(target) = member.ty.and_then(|t| named_types(dies, &names, t)) {
                held.insert(target);
            }
        }
    }
    // Users: each function's own type, parameters and variables (and those of the blocks
    // and inlined calls inside it), and each variable outside functions.
    let mut sorted: Vec<(&usize, &Die)> = dies.iter().collect();
    sorted.sort_by_key(|(offset, _)| **offset);
    for (&offset, die) in sorted {
        let Some(ty) = die.ty else {
            continue;
        };
        let Some(type_name) = named_types(dies, &names, ty) else {
            continue;
        };
        let at_top = die
            .parent
            .and_then(|p| dies.get(&p))
            .is_some_and(|p| p.tag == gimli::DW_TAG_compile_unit);
        let user = match die.tag {
            gimli::DW_TAG_subprogram if !die.declaration => entry_name(dies, offset),
            gimli::DW_TAG_formal_parameter | gimli::DW_TAG_variable => {
                match enclosing_function(dies, offset) {
                    Some(function) => entry_name(dies, function),
                    None if at_top && !die.declaration && die.tag == gimli::DW_TAG_variable => {
                        entry_name(dies, offset).map(|n| format!("data {n}"))
                    }
                    None => None,
                }
            }
            _ => None,
        };
        if let Some(user) = user {
            types.users.entry(type_name).or_default().insert(user);
        }
    }
}

/// The function definition an entry is inside, if any.
fn enclosing_function(dies: &HashMap<usize, Die>, offset: usize) -> Option<usize> {
    let mut current = dies.get(&offset)?.parent?;
    for _ in 0..64 {
        let die = dies.get(&current)?;
        if die.tag == gimli::DW_TAG_subprogram {
            return (!die.declaration).then_some(current);
        }
        current = die.parent?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, offset: u64, size: u64) -> Member {
        Member {
            name: name.to_string(),
            offset_bits: offset * 8,
            size_bits: size * 8,
        }
    }

    fn layout(size: u64, members: &[(&str, u64, u64)]) -> Layout {
        Layout {
            size,
            members: members.iter().map(|&(n, o, s)| member(n, o, s)).collect(),
        }
    }

    #[test]
    fn a_rename_is_not_a_layout_change() {
        let old = layout(8, &[("a", 0, 4), ("b", 4, 4)]);
        let new = layout(8, &[("a", 0, 4), ("c", 4, 4)]);
        assert_eq!(compare_layouts(&old, &new), (Vec::new(), false));
    }

    #[test]
    fn an_inserted_member_moves_the_rest() {
        let old = layout(8, &[("a", 0, 4), ("b", 4, 4)]);
        let new = layout(12, &[("a", 0, 4), ("x", 4, 4), ("b", 8, 4)]);
        let (lines, added) = compare_layouts(&old, &new);
        assert!(added);
        assert_eq!(
            lines,
            [
                "member x added at offset 4 (4 bytes)",
                "member b moved from offset 4 to offset 8",
                "size changed from 8 to 12 bytes",
            ]
        );
    }

    #[test]
    fn users_through_holders() {
        let mut types = Types::default();
        types
            .reaches
            .insert("struct outer".into(), ["struct inner".to_string()].into());
        types
            .users
            .insert("struct outer".into(), ["f".to_string()].into());
        assert_eq!(users_of(&types, "struct inner"), ["f"]);
        assert!(users_of(&types, "struct other").is_empty());
    }
}
