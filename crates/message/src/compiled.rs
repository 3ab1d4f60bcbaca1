//! Rendering a template without minijinja's VM when it uses only what a newsletter usually
//! does: text, printed values, attribute and constant-index look-ups, `{% if %}`, `{% for %}`
//! over a list with the `loop` variable, `/`, and the filters `default`, `title`, `number`,
//! `currency` and `date`. The plan is minijinja's own compiled instructions, one operation per
//! instruction (so jump targets stay valid), accepted only when every instruction is one this
//! evaluator repeats exactly; values are read straight from the recipient's JSON, without
//! converting it to template values.
//!
//! Whatever the evaluator meets at run time that it does not repeat exactly (a missing
//! variable, a float or a boolean to print, a filter error, an object where a list was
//! expected, a render near the fuel budget…) makes it give up, and the part is rendered by
//! minijinja as before: the result, or the error, is then minijinja's by construction.

use crate::mime::{EncodedLiteral, LiteralAt};
use campaign::Recipient;
use minijinja::machinery::Instruction;
use minijinja::value::{Value, ValueKind};
use minijinja::{AutoEscape, Environment};
use serde_json::{Map, Value as Json};
use std::collections::HashSet;
use std::fmt::Write as _;

/// minijinja's fuel cost of one instruction, in its internal units (`INSTRUCTION_COST`).
const UNITS_PER_INSTRUCTION: u64 = 64;

/// minijinja's `PushLoop` flag for a loop with the `loop` variable (`LOOP_FLAG_WITH_LOOP_VAR`
/// in its compiler/instructions.rs, not exported); a recursive loop adds another flag.
const LOOP_FLAG_WITH_LOOP_VAR: u8 = 1;

/// Names minijinja-contrib's `dateformat` reads through the template's context: a plan that
/// uses `date` is refused where a recipient field or a local could carry one of them, since
/// the helper that formats dates sees only the environment's globals.
const DATE_SETTINGS: [&str; 2] = ["TIMEZONE", "DATE_FORMAT"];

/// One of minijinja's instructions, as the evaluator runs it.
#[derive(Debug, Clone, PartialEq)]
enum Op {
    EmitRaw(String),
    /// The plan's literal at this index, which has a quoted-printable encoding to copy.
    EmitEncoded(usize),
    Emit,
    Lookup(Variable),
    /// A `Lookup` whose value the next instruction (an `Emit`) prints: both done at once,
    /// without the stack. The `Emit` stays in place for jumps that land on it.
    LookupEmit(Variable),
    /// A `Lookup` and the `GetAttr`s that follow it (`book.title`, `campaign.metadata.issue`),
    /// done at once without the stack, and the value printed when an `Emit` follows them
    /// (`emit`). The operations it covers stay in place for jumps that land on them.
    LookupPath {
        variable: Variable,
        attributes: Vec<String>,
        emit: bool,
    },
    GetAttr(String),
    GetItem,
    LoadConst(Constant),
    Filter(Filter, u16),
    /// `number` or `currency` whose result the next instruction (an `Emit`) prints: written
    /// into the output directly (the text has nothing to escape). The `Emit` stays in place.
    FilterEmit(Filter, u16),
    Arithmetic(Arithmetic),
    Jump(usize),
    JumpIfFalse(usize),
    PushLoop,
    Iterate(usize),
    /// The local of this [`LocalName`].
    StoreLocal(LocalName),
    PopLoopFrame,
}

/// A looked-up name, resolved when the plan is made as far as the template alone decides.
#[derive(Debug, Clone, PartialEq)]
struct Variable {
    name: String,
    root: RootName,
    /// The local of that name, when the template stores one: locals are found by this
    /// number rather than by comparing names.
    local: Option<LocalName>,
    /// Whether it is `loop`, which a loop frame answers after its locals. A name that is
    /// neither a local nor `loop` is not searched for in the frames.
    is_loop: bool,
}

/// A local variable's name, as its place in the plan's list of the names it stores.
type LocalName = u32;

/// What a name is in the template's root namespace.
#[derive(Debug, Clone, Copy, PartialEq)]
enum RootName {
    Email,
    UnsubscribeUrl,
    Campaign,
    Tracking,
    /// `recipient`, an object of every field: left to minijinja.
    Recipient,
    /// A recipient field, and whether minijinja is given it (only the fields the templates
    /// name are).
    Field {
        visible: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Constant {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    None,
}

/// `+`, `-`, `*` and `/` on numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arithmetic {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    Default,
    Title,
    Number,
    Currency,
    Date,
}

/// A part's template as operations the evaluator runs.
#[derive(Debug)]
pub(crate) struct Plan {
    ops: Vec<Op>,
    /// The body part's literals that have a quoted-printable encoding worth copying, with
    /// it (`EmitEncoded`).
    literals: Vec<(String, EncodedLiteral)>,
    escape_html: bool,
    /// How deep its loops nest.
    loop_depth: usize,
    /// Whether it calls `date` (which needs the campaign's date helper).
    pub(crate) uses_date: bool,
}

/// What a template can read for one recipient, borrowed from where it already is.
pub(crate) struct Data<'a> {
    pub recipient: &'a Recipient,
    pub unsubscribe_url: &'a str,
    pub campaign_name: &'a str,
    pub metadata: &'a Map<String, Json>,
    /// The open pixel URL when the part shows it.
    pub open_pixel: Option<&'a str>,
    /// The tracked links' hrefs, the recipient's signed URLs or the text as written.
    pub clicks: &'a dyn Fn(usize) -> Option<(&'a str, bool)>,
    /// `date`'s result for a value and an optional format, as minijinja's filter gives it;
    /// `None` when it fails.
    pub date: &'a dyn Fn(&Value, Option<&Value>) -> Option<String>,
}

/// A value on the evaluator's stack.
#[derive(Debug, Clone)]
enum V<'a> {
    /// A string and whether it is marked safe (printed without HTML escaping).
    Str(&'a str, bool),
    Owned(String, bool),
    Int(i64),
    Float(f64),
    Bool(bool),
    None,
    List(&'a [Json]),
    Object(&'a Map<String, Json>),
    Campaign,
    Tracking,
    Clicks,
    /// The `loop` variable of the loop frame at this index.
    Loop(usize),
}

impl<'a> V<'a> {
    /// A JSON value as `values::from_json` would make it; `None` for what it does not model
    /// (a `u64` above `i64::MAX`, a number kept as text).
    fn from_json(json: &'a Json) -> Option<V<'a>> {
        Some(match json {
            Json::Null => V::None,
            Json::Bool(b) => V::Bool(*b),
            Json::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => V::Int(i),
                (None, None, Some(f)) => V::Float(f),
                _ => return None,
            },
            Json::String(s) => V::Str(s, false),
            Json::Array(items) => V::List(items),
            Json::Object(map) => V::Object(map),
        })
    }

    fn text(&self) -> Option<(&str, bool)> {
        match self {
            V::Str(s, safe) => Some((s, *safe)),
            V::Owned(s, safe) => Some((s, *safe)),
            _ => None,
        }
    }

    /// The scalar as a minijinja value, for the filters; `None` for the rest.
    fn to_value(&self) -> Option<Value> {
        Some(match self {
            V::Str(s, false) => Value::from(*s),
            V::Owned(s, false) => Value::from(s.as_str()),
            V::Str(s, true) => Value::from_safe_string(s.to_string()),
            V::Owned(s, true) => Value::from_safe_string(s.clone()),
            V::Int(i) => Value::from(*i),
            V::Float(f) => Value::from(*f),
            V::Bool(b) => Value::from(*b),
            _ => return None,
        })
    }

    /// `{% if %}`'s truthiness (minijinja's `Value::is_true`) for the kinds modelled.
    fn is_true(&self) -> Option<bool> {
        Some(match self {
            V::Str(s, _) => !s.is_empty(),
            V::Owned(s, _) => !s.is_empty(),
            V::Int(i) => *i != 0,
            V::Float(f) => *f != 0.0,
            V::Bool(b) => *b,
            V::None => false,
            V::List(items) => !items.is_empty(),
            V::Object(map) => !map.is_empty(),
            _ => return None,
        })
    }
}

/// A loop's (or the top level's) local variables.
struct Frame<'a> {
    locals: Vec<(LocalName, V<'a>)>,
    items: &'a [Json],
    /// How many items were taken.
    taken: usize,
}

impl Plan {
    /// `part`'s plan when every instruction minijinja compiled it into is one the evaluator
    /// repeats exactly; `None` otherwise (the part is always rendered by minijinja).
    pub(crate) fn of(
        env: &Environment<'static>,
        name: &str,
        used_fields: Option<&HashSet<String>>,
        recursion_limit: usize,
        encode_literals: bool,
    ) -> Option<Plan> {
        let template = env.get_template(name).ok()?;
        let compiled = minijinja::machinery::get_compiled_template(&template);
        let escape_html = match compiled.initial_auto_escape {
            AutoEscape::Html => true,
            AutoEscape::None => false,
            _ => return None,
        };
        let instructions = &compiled.instructions;
        let mut ops = Vec::new();
        let mut literals = Vec::new();
        let mut depth = 0usize;
        let mut max_depth = 0usize;
        let mut uses_date = false;
        let mut stores = Vec::new();
        let mut index = 0u32;
        while let Some(instruction) = instructions.get(index) {
            let op = match instruction {
                Instruction::EmitRaw(text) => {
                    let encoded = match encode_literals {
                        true => EncodedLiteral::of(text),
                        false => EncodedLiteral::default(),
                    };
                    if encoded.is_empty() {
                        Op::EmitRaw(text.to_string())
                    } else {
                        literals.push((text.to_string(), encoded));
                        Op::EmitEncoded(literals.len() - 1)
                    }
                }
                Instruction::Emit => Op::Emit,
                Instruction::Lookup(name) => {
                    let variable = Variable {
                        name: name.to_string(),
                        root: match *name {
                            "email" => RootName::Email,
                            "unsubscribe_url" => RootName::UnsubscribeUrl,
                            "campaign" => RootName::Campaign,
                            crate::tracking::TRACKING_VARIABLE => RootName::Tracking,
                            "recipient" => RootName::Recipient,
                            _ => RootName::Field {
                                visible: used_fields.is_none_or(|used| used.contains(*name)),
                            },
                        },
                        // Set below, once every local is known.
                        local: None,
                        is_loop: *name == "loop",
                    };
                    match instructions.get(index + 1) {
                        Some(Instruction::Emit) => Op::LookupEmit(variable),
                        _ => Op::Lookup(variable),
                    }
                }
                Instruction::GetAttr(name) => Op::GetAttr(name.to_string()),
                Instruction::GetItem => Op::GetItem,
                Instruction::LoadConst(value) => Op::LoadConst(constant(value)?),
                Instruction::ApplyFilter(name, Some(arity), _) => {
                    let filter = match (*name, *arity) {
                        ("default", 1 | 2) => Filter::Default,
                        ("title", 1) => Filter::Title,
                        ("number", 1 | 2) => Filter::Number,
                        ("currency", 1 | 2) => Filter::Currency,
                        ("date", 1 | 2) => Filter::Date,
                        _ => return None,
                    };
                    uses_date |= filter == Filter::Date;
                    match (filter, instructions.get(index + 1)) {
                        (Filter::Number | Filter::Currency, Some(Instruction::Emit)) => {
                            Op::FilterEmit(filter, *arity)
                        }
                        _ => Op::Filter(filter, *arity),
                    }
                }
                Instruction::Add => Op::Arithmetic(Arithmetic::Add),
                Instruction::Sub => Op::Arithmetic(Arithmetic::Sub),
                Instruction::Mul => Op::Arithmetic(Arithmetic::Mul),
                Instruction::Div => Op::Arithmetic(Arithmetic::Div),
                Instruction::Jump(target) => Op::Jump(*target as usize),
                Instruction::JumpIfFalse(target) => Op::JumpIfFalse(*target as usize),
                // Only a plain loop with the `loop` variable (no `recursive`, no filter
                // expression, which compiles to a loop without it).
                Instruction::PushLoop(LOOP_FLAG_WITH_LOOP_VAR) => {
                    depth += 1;
                    max_depth = max_depth.max(depth);
                    Op::PushLoop
                }
                Instruction::Iterate(target) => Op::Iterate(*target as usize),
                Instruction::StoreLocal(name) => {
                    let local = match stores.iter().position(|store| store == name) {
                        Some(local) => local,
                        None => {
                            stores.push(name.to_string());
                            stores.len() - 1
                        }
                    };
                    Op::StoreLocal(LocalName::try_from(local).ok()?)
                }
                Instruction::PopLoopFrame => {
                    depth = depth.checked_sub(1)?;
                    Op::PopLoopFrame
                }
                _ => return None,
            };
            ops.push(op);
            index += 1;
        }
        fuse_lookup_paths(&mut ops);
        for op in &mut ops {
            if let Op::Lookup(variable)
            | Op::LookupEmit(variable)
            | Op::LookupPath { variable, .. } = op
            {
                variable.local = stores
                    .iter()
                    .position(|store| *store == variable.name)
                    .and_then(|local| LocalName::try_from(local).ok());
            }
        }
        // minijinja counts a frame per loop against the recursion limit: keep well inside it
        // and let minijinja decide near it.
        if max_depth.saturating_mul(2).saturating_add(2) > recursion_limit {
            return None;
        }
        if uses_date
            && DATE_SETTINGS.iter().any(|name| {
                stores.iter().any(|store| store == name)
                    || used_fields.is_none_or(|used| used.contains(*name))
            })
        {
            return None;
        }
        Some(Plan {
            ops,
            literals,
            escape_html,
            loop_depth: max_depth,
            uses_date,
        })
    }

    /// Writes the part as minijinja would render it into `out`, or gives up (`None`, with
    /// `out` holding what was written so far; see the module's documentation).
    /// `budget_units` is the fuel it may use, in minijinja's units (an instruction 64, a byte
    /// written or given to a filter 1); `max_bytes` the output. Where it writes a literal
    /// whose quoted-printable encoding can be copied is added to `literals`, for the encoder
    /// (left as it was when the plan gives up).
    pub(crate) fn render_into<'p: 'a, 'a>(
        &'p self,
        data: &Data<'a>,
        budget_units: u64,
        max_bytes: usize,
        out: &mut String,
        mut literals: Option<&mut Vec<LiteralAt<'p>>>,
    ) -> Option<()> {
        let recorded = literals.as_ref().map_or(0, |literals| literals.len());
        let output = self.run(data, budget_units, max_bytes, out, literals.as_deref_mut());
        if output.is_none()
            && let Some(literals) = literals
        {
            literals.truncate(recorded);
        }
        output
    }

    fn run<'p: 'a, 'a>(
        &'p self,
        data: &Data<'a>,
        budget_units: u64,
        max_bytes: usize,
        out: &mut String,
        mut literals: Option<&mut Vec<LiteralAt<'p>>>,
    ) -> Option<()> {
        let mut stack: Vec<V<'a>> = Vec::with_capacity(8);
        // Room for the top level and every loop frame: no reallocation when a loop starts.
        let mut frames: Vec<Frame<'a>> = Vec::with_capacity(self.loop_depth + 1);
        frames.push(Frame {
            locals: Vec::new(),
            items: &[],
            taken: 0,
        });
        let mut executed: u64 = 0;
        let mut filter_bytes: u64 = 0;
        let mut pc = 0;
        while let Some(op) = self.ops.get(pc) {
            // Past the budget, minijinja decides (it stops for fuel or the output limit).
            // Checked before every operation that writes or filters, not only on a loop's back
            // edge: a template of many prints of one large field has no loop, and must not
            // build hundreds of MB first. At most one write passes the limit. The operations
            // in between only look values up or move the counter on, and the count only grows,
            // so the check before the next write (or the last one) sees them.
            if matches!(
                op,
                Op::EmitRaw(_)
                    | Op::EmitEncoded(_)
                    | Op::Emit
                    | Op::LookupEmit(_)
                    | Op::LookupPath { .. }
                    | Op::Filter(..)
                    | Op::FilterEmit(..)
                    | Op::Jump(_)
            ) {
                let units = executed * UNITS_PER_INSTRUCTION + out.len() as u64 + filter_bytes;
                if units.saturating_mul(2) >= budget_units || out.len() > max_bytes {
                    return None;
                }
            }
            executed += 1;
            pc += 1;
            match op {
                Op::EmitRaw(text) => out.push_str(text),
                Op::EmitEncoded(index) => {
                    let (text, encoded) = self.literals.get(*index)?;
                    if let Some(literals) = literals.as_deref_mut()
                        && encoded.copies_after(out)
                    {
                        if literals.capacity() == 0 {
                            // Allocated when first needed (a 7bit body notes none); a loop
                            // writes its literals again, but this is room for most bodies.
                            literals.reserve(self.literals.len());
                        }
                        literals.push(LiteralAt {
                            at: out.len(),
                            text,
                            encoded,
                        });
                    }
                    out.push_str(text);
                }
                Op::Emit => self.emit(out, &stack.pop()?)?,
                Op::Lookup(variable) => stack.push(lookup(data, &frames, variable)?),
                Op::LookupEmit(variable) => {
                    self.emit(out, &lookup(data, &frames, variable)?)?;
                    // The `Emit` is done: count it as run.
                    executed += 1;
                    pc += 1;
                }
                Op::LookupPath {
                    variable,
                    attributes,
                    emit,
                } => {
                    let mut value = lookup(data, &frames, variable)?;
                    for name in attributes {
                        value = get_attr(data, &frames, value, name)?;
                    }
                    if *emit {
                        self.emit(out, &value)?;
                    } else {
                        stack.push(value);
                    }
                    // The `GetAttr`s (and the `Emit`) are done: count them as run.
                    let covered = attributes.len() + usize::from(*emit);
                    executed += covered as u64;
                    pc += covered;
                }
                Op::GetAttr(name) => {
                    let value = get_attr(data, &frames, stack.pop()?, name)?;
                    stack.push(value);
                }
                Op::GetItem => {
                    let key = stack.pop()?;
                    let value = get_item(data, stack.pop()?, key)?;
                    stack.push(value);
                }
                Op::LoadConst(constant) => stack.push(match constant {
                    Constant::Str(s) => V::Str(s, false),
                    Constant::Int(i) => V::Int(*i),
                    Constant::Float(f) => V::Float(*f),
                    Constant::Bool(b) => V::Bool(*b),
                    Constant::None => V::None,
                }),
                Op::Filter(filter, arity) => {
                    let (value, argument) = filter_operands(&mut stack, *arity, &mut filter_bytes)?;
                    let result = apply(data, *filter, value, argument)?;
                    if let Some((s, _)) = result.text() {
                        filter_bytes += s.len() as u64;
                    }
                    stack.push(result);
                }
                Op::FilterEmit(filter, arity) => {
                    let (value, argument) = filter_operands(&mut stack, *arity, &mut filter_bytes)?;
                    let before = out.len();
                    write_number(out, *filter, &value, argument)?;
                    filter_bytes += (out.len() - before) as u64;
                    // The `Emit` is done: count it as run.
                    executed += 1;
                    pc += 1;
                }
                Op::Arithmetic(operation) => {
                    let rhs = stack.pop()?;
                    let lhs = stack.pop()?;
                    stack.push(arithmetic(*operation, &lhs, &rhs)?);
                }
                Op::Jump(target) => pc = *target,
                Op::JumpIfFalse(target) => {
                    if !stack.pop()?.is_true()? {
                        pc = *target;
                    }
                }
                Op::PushLoop => {
                    let V::List(items) = stack.pop()? else {
                        return None;
                    };
                    frames.push(Frame {
                        locals: Vec::new(),
                        items,
                        taken: 0,
                    });
                }
                Op::Iterate(target) => {
                    let frame = frames.last_mut()?;
                    match frame.items.get(frame.taken) {
                        Some(item) => {
                            frame.taken += 1;
                            // Each iteration starts without the names the last one set, as
                            // minijinja's next loop item clears the frame's locals: a later
                            // read finds the outer value (or none) again.
                            frame.locals.clear();
                            stack.push(V::from_json(item)?);
                        }
                        None => pc = *target,
                    }
                }
                Op::StoreLocal(name) => {
                    let value = stack.pop()?;
                    let locals = &mut frames.last_mut()?.locals;
                    match locals.iter_mut().find(|(local, _)| local == name) {
                        Some((_, slot)) => *slot = value,
                        None => locals.push((*name, value)),
                    }
                }
                Op::PopLoopFrame => {
                    if frames.len() < 2 {
                        return None;
                    }
                    frames.pop();
                }
            }
        }
        let units = executed * UNITS_PER_INSTRUCTION + out.len() as u64 + filter_bytes;
        (units.saturating_mul(2) < budget_units && out.len() <= max_bytes).then_some(())
    }

    /// What minijinja's default formatter writes for the kinds modelled: strings (escaped
    /// unless safe, in an HTML part) and integers; `None` for the rest.
    fn emit(&self, out: &mut String, value: &V<'_>) -> Option<()> {
        match value {
            V::Int(i) => write!(out, "{i}").ok(),
            _ => {
                let (text, safe) = value.text()?;
                if self.escape_html && !safe {
                    escape_html(out, text);
                    Some(())
                } else {
                    out.push_str(text);
                    Some(())
                }
            }
        }
    }
}

/// Each `Lookup` followed by `GetAttr`s becomes a [`Op::LookupPath`] (printing the value when
/// an `Emit` follows them); the operations it covers are left where they are, so a jump into
/// the middle of the path runs them one by one as before.
fn fuse_lookup_paths(ops: &mut [Op]) {
    for index in 0..ops.len() {
        let Op::Lookup(variable) = &ops[index] else {
            continue;
        };
        let attributes: Vec<String> = ops[index + 1..]
            .iter()
            .map_while(|op| match op {
                Op::GetAttr(name) => Some(name.clone()),
                _ => None,
            })
            .collect();
        if attributes.is_empty() {
            continue;
        }
        let emit = ops.get(index + 1 + attributes.len()) == Some(&Op::Emit);
        ops[index] = Op::LookupPath {
            variable: variable.clone(),
            attributes,
            emit,
        };
    }
}

/// `text` HTML-escaped as minijinja's `HtmlEscape` writes it (the same six characters and
/// entities), appending the runs between them directly instead of through `fmt::Write`.
/// Blocks of 16 bytes without any of the six are passed over with one test each.
pub(crate) fn escape_html(out: &mut String, text: &str) {
    let bytes = text.as_bytes();
    // Most values (names, cities) are shorter than a block: one test of the padded copy.
    if bytes.len() < 16 {
        let mut block = [b' '; 16];
        block[..bytes.len()].copy_from_slice(bytes);
        if !has_html_special(&block) {
            out.push_str(text);
            return;
        }
    }
    let mut start = 0;
    let mut index = 0;
    while index < bytes.len() {
        // A block with one of the six (or the last, short one) is read byte by byte.
        let block_end = match bytes.get(index..index + 16) {
            Some(block) if !has_html_special(block.try_into().unwrap_or(&[b'<'; 16])) => {
                index += 16;
                continue;
            }
            Some(_) => index + 16,
            // The tail, shorter than a block, is among the text's last 16 bytes (which
            // overlap the block before it): one test of those passes over a tail without
            // any of the six (a text this long was not tested as a padded copy above).
            None if bytes.len() >= 16
                && !has_html_special(
                    bytes[bytes.len() - 16..].try_into().unwrap_or(&[b'<'; 16]),
                ) =>
            {
                index = bytes.len();
                continue;
            }
            None => bytes.len(),
        };
        while index < block_end {
            let entity = match bytes[index] {
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'&' => "&amp;",
                b'"' => "&quot;",
                b'\'' => "&#x27;",
                b'/' => "&#x2f;",
                _ => {
                    index += 1;
                    continue;
                }
            };
            // The six are ASCII, so `start..index` lies on character boundaries.
            out.push_str(&text[start..index]);
            out.push_str(entity);
            index += 1;
            start = index;
        }
    }
    out.push_str(&text[start..]);
}

/// Whether `block` holds one of the characters HTML escaping replaces: a fold without early
/// exit over a fixed-size block, which the compiler turns into SIMD compares. The pairs
/// `<` `>` (0x3c, 0x3e) and `&` `'` (0x26, 0x27) are each one compare after setting the bit
/// they differ in: six plain compares of one byte the compiler turned into a table test of
/// bits that took twice the instructions.
fn has_html_special(block: &[u8; 16]) -> bool {
    block.iter().fold(false, |found, &byte| {
        found | (byte | 0x02 == b'>') | (byte | 0x01 == b'\'') | (byte == b'"') | (byte == b'/')
    })
}

/// An object's entry: a scan for the few keys of a record (comparing lengths first) instead
/// of hashing the name; the keys are distinct, so it finds what `get` finds.
fn entry<'a>(map: &'a Map<String, Json>, key: &str) -> Option<&'a Json> {
    if map.len() <= 16 {
        map.iter()
            .find(|(name, _)| same_name(name, key))
            .map(|(_, value)| value)
    } else {
        map.get(key)
    }
}

/// `a == b` for the short names of a record's keys: lengths, then the bytes in a loop, which
/// for names of a few bytes costs less than the call to `memcmp` that `==` makes (records
/// have several keys of the same length, `title` and `price`, so most tests get that far).
fn same_name(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| x == y)
}

/// A compiled constant the evaluator models.
fn constant(value: &Value) -> Option<Constant> {
    Some(match value.kind() {
        ValueKind::String if !value.is_safe() => Constant::Str(value.as_str()?.to_string()),
        ValueKind::Number if value.is_integer() => {
            Constant::Int(i64::try_from(value.clone()).ok()?)
        }
        ValueKind::Number => Constant::Float(f64::try_from(value.clone()).ok()?),
        ValueKind::Bool => Constant::Bool(value.is_true()),
        ValueKind::None => Constant::None,
        _ => return None,
    })
}

/// A name as minijinja's `Lookup` finds it: the frames' locals from the innermost (a loop
/// frame's `loop` after its locals), then the template root (the service variables, then the
/// recipient's fields); a name found nowhere (a global, or undefined) is left to minijinja.
fn lookup<'a>(data: &Data<'a>, frames: &[Frame<'a>], variable: &Variable) -> Option<V<'a>> {
    if variable.local.is_some() || variable.is_loop {
        for (depth, frame) in frames.iter().enumerate().rev() {
            if let Some(name) = variable.local
                && let Some((_, value)) = frame.locals.iter().find(|(local, _)| *local == name)
            {
                return Some(value.clone());
            }
            if depth > 0 && variable.is_loop {
                return Some(V::Loop(depth));
            }
        }
    }
    Some(match variable.root {
        RootName::Email => V::Str(data.recipient.email.as_str(), false),
        RootName::UnsubscribeUrl => V::Str(
            data.unsubscribe_url,
            !crate::template::needs_escaping(data.unsubscribe_url),
        ),
        RootName::Campaign => V::Campaign,
        RootName::Tracking => V::Tracking,
        RootName::Recipient | RootName::Field { visible: false } => return None,
        RootName::Field { visible: true } => {
            V::from_json(entry(&data.recipient.fields, &variable.name)?)?
        }
    })
}

fn get_attr<'a>(data: &Data<'a>, frames: &[Frame<'a>], value: V<'a>, name: &str) -> Option<V<'a>> {
    match value {
        V::Object(map) => V::from_json(entry(map, name)?),
        V::Campaign => match name {
            "name" => Some(V::Str(data.campaign_name, false)),
            "metadata" => Some(V::Object(data.metadata)),
            _ => None,
        },
        V::Tracking => match name {
            "open_pixel" => Some(match data.open_pixel {
                Some(url) => V::Str(url, !crate::template::needs_escaping(url)),
                None => V::None,
            }),
            "clicks" => Some(V::Clicks),
            _ => None,
        },
        V::Loop(depth) => {
            let frame = frames.get(depth)?;
            let (index0, length) = (frame.taken.checked_sub(1)?, frame.items.len());
            let number = |n: usize| i64::try_from(n).ok().map(V::Int);
            match name {
                "first" => Some(V::Bool(index0 == 0)),
                "last" => Some(V::Bool(index0 + 1 == length)),
                "index" => number(index0 + 1),
                "index0" => number(index0),
                "length" => number(length),
                "revindex" => number(length - index0),
                "revindex0" => number(length - index0 - 1),
                _ => None,
            }
        }
        _ => None,
    }
}

fn get_item<'a>(data: &Data<'a>, value: V<'a>, key: V<'a>) -> Option<V<'a>> {
    match (value, key) {
        (V::List(items), V::Int(index)) => V::from_json(items.get(usize::try_from(index).ok()?)?),
        (V::Object(map), V::Str(key, _)) => V::from_json(entry(map, key)?),
        (V::Clicks, V::Int(index)) => {
            let (url, safe) = (data.clicks)(usize::try_from(index).ok()?)?;
            Some(V::Str(url, safe))
        }
        _ => None,
    }
}

/// minijinja's arithmetic on numbers (its `ops`): two integers stay an integer (`None` when
/// the result leaves `i64`, which minijinja widens), a float on either side makes a float,
/// `/` always divides as floats and refuses a zero divisor; anything else (strings, lists,
/// booleans) is left to minijinja.
fn arithmetic<'a>(operation: Arithmetic, lhs: &V<'a>, rhs: &V<'a>) -> Option<V<'a>> {
    if let (Arithmetic::Add | Arithmetic::Sub | Arithmetic::Mul, V::Int(a), V::Int(b)) =
        (operation, lhs, rhs)
    {
        return match operation {
            Arithmetic::Add => a.checked_add(*b),
            Arithmetic::Sub => a.checked_sub(*b),
            _ => a.checked_mul(*b),
        }
        .map(V::Int);
    }
    let (a, b) = (number(lhs)?, number(rhs)?);
    Some(V::Float(match operation {
        Arithmetic::Add => a + b,
        Arithmetic::Sub => a - b,
        Arithmetic::Mul => a * b,
        Arithmetic::Div if b == 0.0 => return None,
        Arithmetic::Div => a / b,
    }))
}

/// `number` or `currency` appended to `out`, as [`apply`] computes them. An integer or float
/// without decimals, or with a currency code, is formatted straight from the stack; the
/// rest goes through minijinja values, as the filters take them.
fn write_number(
    out: &mut String,
    filter: Filter,
    value: &V<'_>,
    argument: Option<V<'_>>,
) -> Option<()> {
    use crate::values::PlanNumber;
    let number = match value {
        V::Int(i) => Some(PlanNumber::Int(*i)),
        V::Float(f) => Some(PlanNumber::Float(*f)),
        _ => None,
    };
    if let Some(number) = number {
        match (filter, argument.as_ref().map(V::text)) {
            (Filter::Number, None) => return crate::values::plan_number_into(out, number),
            (Filter::Currency, None) => {
                return crate::values::plan_currency_into(out, number, None);
            }
            (Filter::Currency, Some(Some((code, _)))) => {
                return crate::values::plan_currency_into(out, number, Some(code));
            }
            _ => {}
        }
    }
    write_number_by_value(out, filter, value, argument)
}

/// [`write_number`] through minijinja values.
fn write_number_by_value(
    out: &mut String,
    filter: Filter,
    value: &V<'_>,
    argument: Option<V<'_>>,
) -> Option<()> {
    let argument = match argument {
        Some(V::None) => return None,
        Some(argument) => Some(argument.to_value()?),
        None => None,
    };
    let value = value.to_value()?;
    match filter {
        Filter::Number => crate::values::number_plain_into(out, &value, argument.as_ref()),
        Filter::Currency => crate::values::currency_plain_into(out, &value, argument.as_ref()),
        _ => return None,
    }
    .ok()
}

/// A filter's value and its argument, taken from the stack (a plan admits one or two
/// operands: the value and one more); the value's text counts as bytes given to the filter,
/// as minijinja charges them.
fn filter_operands<'a>(
    stack: &mut Vec<V<'a>>,
    arity: u16,
    filter_bytes: &mut u64,
) -> Option<(V<'a>, Option<V<'a>>)> {
    let argument = match arity {
        2 => Some(stack.pop()?),
        _ => None,
    };
    let value = stack.pop()?;
    if let Some((text, _)) = value.text() {
        *filter_bytes += text.len() as u64;
    }
    Some((value, argument))
}

/// A number operand (`i64` or float); `None` for the rest.
fn number(value: &V<'_>) -> Option<f64> {
    match value {
        V::Int(i) => Some(*i as f64),
        V::Float(f) => Some(*f),
        _ => None,
    }
}

fn apply<'a>(
    data: &Data<'a>,
    filter: Filter,
    value: V<'a>,
    argument: Option<V<'a>>,
) -> Option<V<'a>> {
    let argument = match argument {
        // `none` reads as absent to the filters' `Option` parameters; left to minijinja
        // rather than repeated.
        Some(V::None) => return None,
        Some(argument) => Some(argument.to_value()?),
        None => None,
    };
    Some(match filter {
        // The value is never undefined here (a missing one makes the evaluator give up), so
        // `default` returns it as it is; but minijinja charges fuel per item of a filter's
        // list or map result, which the plan does not count: those are left to it.
        Filter::Default => match value {
            V::List(_) | V::Object(_) => return None,
            value => value,
        },
        Filter::Title => V::Owned(
            minijinja::filters::title(std::borrow::Cow::Borrowed(value.text()?.0)),
            false,
        ),
        Filter::Number => V::Owned(
            crate::values::number_plain(&value.to_value()?, argument.as_ref()).ok()?,
            false,
        ),
        Filter::Currency => V::Owned(
            crate::values::currency_plain(&value.to_value()?, argument.as_ref()).ok()?,
            false,
        ),
        Filter::Date => V::Owned((data.date)(&value.to_value()?, argument.as_ref())?, false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Values and arguments `number` and `currency` meet: integers and floats of every
    /// size (not finite ones too), codes of every case, length and kind, safe or not.
    fn number_operand() -> impl Strategy<Value = V<'static>> {
        prop_oneof![
            any::<i64>().prop_map(V::Int),
            (-1_000_000i64..1_000_000).prop_map(V::Int),
            any::<f64>().prop_map(V::Float),
            (-100_000_000i64..100_000_000).prop_map(|cents| V::Float(cents as f64 / 100.0)),
            prop_oneof![
                Just(f64::NAN),
                Just(f64::INFINITY),
                Just(-0.0),
                Just(-0.004)
            ]
            .prop_map(V::Float),
        ]
    }

    fn filter_argument() -> impl Strategy<Value = Option<V<'static>>> {
        let code = prop_oneof![
            Just("GBP"),
            Just("eur"),
            Just("Jpy"),
            Just("CHF"),
            Just("usd"),
            Just("KRW"),
            Just("INR"),
            Just("NZD"),
            Just("GB"),
            Just("GBPX"),
            Just("G1P"),
            Just("ÉUR"),
            Just(""),
        ];
        prop_oneof![
            Just(None),
            (code, any::<bool>()).prop_map(|(code, safe)| Some(V::Str(code, safe))),
            (code_owned(), any::<bool>()).prop_map(|(code, safe)| Some(V::Owned(code, safe))),
            (0i64..25).prop_map(|decimals| Some(V::Int(decimals))),
            Just(Some(V::Float(2.0))),
            Just(Some(V::Bool(true))),
        ]
    }

    fn code_owned() -> impl Strategy<Value = String> {
        "[a-zA-Z]{3}"
    }

    proptest::proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// `number` and `currency` formatted straight from the stack write what they write
        /// through minijinja values, and fail where those fail.
        #[test]
        fn numbers_from_the_stack_write_what_values_write(
            value in number_operand(),
            argument in filter_argument(),
            currency in any::<bool>(),
        ) {
            let filter = if currency { Filter::Currency } else { Filter::Number };
            let mut direct = String::from("x");
            let direct_result = write_number(&mut direct, filter, &value, argument.clone());
            let mut by_value = String::from("x");
            let by_value_result = write_number_by_value(&mut by_value, filter, &value, argument);
            prop_assert_eq!(direct_result, by_value_result);
            prop_assert_eq!(direct, by_value);
        }
    }

    proptest::proptest! {
        /// The names' loop compares as `==` does: names of equal and different lengths,
        /// sharing a beginning or not, ASCII or not.
        #[test]
        fn same_name_is_equality(a in "[a-cé]{0,6}", b in "[a-cé]{0,6}") {
            proptest::prop_assert_eq!(same_name(&a, &b), a == b);
            proptest::prop_assert!(same_name(&a, &a));
        }
    }

    /// The block test finds the six and only them: every byte value at every place of a
    /// block of each of the other bytes of their neighbourhood (0x20 to 0x3f, where the pairs
    /// share all bits but one).
    #[test]
    fn the_block_test_finds_exactly_the_six() {
        let special = |byte: u8| matches!(byte, b'<' | b'>' | b'&' | b'"' | b'\'' | b'/');
        for filler in (0x20..0x40).filter(|&byte| !special(byte)) {
            for byte in 0..=255u8 {
                for place in 0..16 {
                    let mut block = [filler; 16];
                    block[place] = byte;
                    assert_eq!(
                        has_html_special(&block),
                        special(byte),
                        "{byte:#04x} at {place} among {filler:#04x}"
                    );
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// The plans' HTML escaping writes what minijinja's `HtmlEscape` writes, for any text
        /// (shorter and longer than a block, the six in blocks, tails and the overlap).
        #[test]
        fn escape_html_writes_what_minijinja_writes(text in "([a-z =é€😀\\\\]{0,20}[<>&\"'/]?){0,6}") {
            let mut out = String::from("x");
            escape_html(&mut out, &text);
            proptest::prop_assert_eq!(out, format!("x{}", minijinja::HtmlEscape(&text)));
        }
    }
}
