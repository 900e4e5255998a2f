//! YAML text to typed flow documents that remember where every key and value was.
//!
//! serde-saphyr parses the text once into [`Node`]s that carry their positions
//! (`Spanned`), then the typed document is read from those. Deriving the typed structs
//! straight from serde would stop at the first wrong key or type; reading them from
//! positioned nodes lets one pass report every problem, each at its own line and column.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_saphyr::Spanned;

use crate::diagnostic::{Pos, Sink};

/// A YAML value with the position of every key and value in it.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<Key>, Spanned<Node>)>),
}

/// A mapping key; YAML allows non-string scalars, flows only use their text.
#[derive(Debug, Clone)]
pub(crate) struct Key(pub String);

pub(crate) fn pos<T>(s: &Spanned<T>) -> Pos {
    Pos::of(&s.referenced)
}

impl Node {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Node::Null => "null",
            Node::Bool(_) => "a boolean",
            Node::Int(_) | Node::UInt(_) => "an integer",
            Node::Float(_) => "a number",
            Node::Str(_) => "a string",
            Node::Seq(_) => "a list",
            Node::Map(_) => "a mapping",
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        match self {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(*b),
            Node::Int(i) => Value::from(*i),
            Node::UInt(u) => Value::from(*u),
            Node::Float(f) => serde_json::Number::from_f64(*f).map(Value::Number).unwrap_or(Value::Null),
            Node::Str(s) => Value::String(s.clone()),
            Node::Seq(items) => Value::Array(items.iter().map(|i| i.value.to_json()).collect()),
            Node::Map(entries) => {
                Value::Object(entries.iter().map(|(k, v)| (k.value.0.clone(), v.value.to_json())).collect())
            }
        }
    }

    /// Scalars as text, so `name: 2024` is a name and not a type error.
    fn scalar_text(&self) -> Option<String> {
        match self {
            Node::Str(s) => Some(s.clone()),
            Node::Int(i) => Some(i.to_string()),
            Node::UInt(u) => Some(u.to_string()),
            Node::Float(f) => Some(f.to_string()),
            Node::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::UInt(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Node, E> {
        Ok(Node::Str(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = a.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(k) = a.next_key()? {
            entries.push((k, a.next_value()?));
        }
        Ok(Node::Map(entries))
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        match Node::deserialize(d)? {
            Node::Null => Ok(Key("null".into())),
            n => n.scalar_text().map(Key).ok_or_else(|| de::Error::custom("mapping keys must be scalars")),
        }
    }
}

/// Parses the text; a YAML error becomes one diagnostic.
pub(crate) fn parse_yaml(text: &str, sink: &mut Sink) -> Option<Spanned<Node>> {
    match serde_saphyr::from_str::<Spanned<Node>>(text) {
        Ok(n) => Some(n),
        Err(e) => {
            let at = e.location().map(|l| Pos::of(&l)).unwrap_or(Pos { line: 1, column: 1 });
            sink.error(at, format!("YAML syntax error: {}", yaml_message(&e)));
            None
        }
    }
}

fn yaml_message(e: &serde_saphyr::Error) -> String {
    let text = e.without_snippet().to_string();
    let text = text.lines().next().unwrap_or_default().to_string();
    // The position is already in the diagnostic; drop the library's copy of it and
    // its advice to callers about parser options.
    let text = match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    let text = match text.find(", set DuplicateKeyPolicy") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    match text.find("; use from_str_multiple") {
        Some(i) => format!("{}; a flow file holds one document", &text[..i]),
        None => text,
    }
}

/// A value with the position it was written at.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct At<T> {
    pub value: T,
    pub pos: Pos,
}

pub(crate) type Entries = Vec<(At<String>, Spanned<Node>)>;

/// The flow file as written, each part with its position.
#[derive(Debug, Default)]
pub(crate) struct FlowDoc {
    pub name: Option<At<String>>,
    pub account: Option<At<String>>,
    pub trigger: Option<TriggerDoc>,
    pub filter: Option<At<String>>,
    pub steps: Vec<StepDoc>,
    pub tests: Vec<TestDoc>,
}

#[derive(Debug)]
pub(crate) struct TriggerDoc {
    pub pos: Pos,
    pub uses: Option<At<String>>,
    pub with: Option<At<Entries>>,
    pub every: Option<At<String>>,
    pub cron: Option<At<String>>,
    pub dedupe: Option<At<String>>,
    pub start: Option<At<String>>,
    pub max_new: Option<At<u64>>,
    /// How far behind its watermark an incremental poll re-reads (search results lag).
    pub lookback: Option<At<String>>,
    /// How often an incremental trigger re-reads everything instead.
    pub sweep: Option<At<String>>,
    /// A GHL webhook event type: the trigger fires on deliveries instead of polls.
    pub webhook: Option<At<String>>,
    /// The polling trigger paired with `webhook`, sharing its dedupe keys.
    pub reconcile: Option<Box<TriggerDoc>>,
    pub coalesce: Option<At<String>>,
    /// An inbound HTTP trigger: the app calls flowd (see `inbound`).
    pub http: Option<Spanned<Node>>,
    pub for_each_record: Option<crate::fanout::FanOutDoc>,
}

#[derive(Debug)]
pub(crate) struct StepDoc {
    pub pos: Pos,
    pub id: Option<At<String>>,
    pub uses: Option<At<String>>,
    pub with: Option<At<Entries>>,
    /// `if`, `for_each`, `max_items`, `on_error` (see `step_control`).
    pub control: crate::step_control::ControlDoc,
    /// How long a GET step's result is reused (see `inbound`).
    pub cache: Option<At<String>>,
}

#[derive(Debug)]
pub(crate) struct TestDoc {
    pub pos: Pos,
    pub name: Option<At<String>>,
    pub item: Option<At<Value>>,
    pub results: Vec<(At<String>, Value)>,
    pub expect: Vec<(At<String>, At<Value>)>,
    pub filtered: Option<At<bool>>,
    pub env: Vec<(At<String>, Value)>,
}

pub(crate) const TOP_KEYS: &[&str] = &["name", "account", "trigger", "if", "steps", "tests"];
pub(crate) const TRIGGER_KEYS: &[&str] = &[
    "uses",
    "with",
    "every",
    "cron",
    "dedupe",
    "start",
    "max_new",
    "lookback",
    "sweep",
    "webhook",
    "reconcile",
    "coalesce",
    "http",
    crate::fanout::KEY,
];
/// `reconcile:` is a polling trigger: the trigger's keys minus the webhook ones.
pub(crate) const RECONCILE_KEYS: &[&str] =
    &["uses", "with", "every", "cron", "dedupe", "start", "max_new", "lookback", "sweep"];
pub(crate) const STEP_KEYS: &[&str] = &["id", "uses", "with", "if", "for_each", "max_items", "on_error", "cache"];
pub(crate) const TEST_KEYS: &[&str] = &["name", "item", "env", "results", "expect", "filtered"];

/// Reads the typed document, reporting every structural problem.
pub(crate) fn read_doc(root: &Spanned<Node>, sink: &mut Sink) -> FlowDoc {
    let mut doc = FlowDoc::default();
    let Some(entries) = mapping(root, "the flow file", sink) else { return doc };
    for (key, value) in entries {
        match key.value.as_str() {
            "name" => doc.name = string(value, "name", sink),
            "account" => doc.account = string(value, "account", sink),
            "if" => doc.filter = string(value, "if", sink),
            "trigger" => doc.trigger = read_trigger(value, "trigger", TRIGGER_KEYS, sink),
            "steps" => {
                if let Some(items) = sequence(value, "steps", sink) {
                    doc.steps = items.iter().filter_map(|s| read_step(s, sink)).collect();
                }
            }
            "tests" => {
                if let Some(items) = sequence(value, "tests", sink) {
                    doc.tests = items.iter().filter_map(|t| read_test(t, sink)).collect();
                }
            }
            other => unknown_key(&key, other, TOP_KEYS, "", sink),
        }
    }
    doc
}

fn read_trigger(node: &Spanned<Node>, what: &str, keys: &[&str], sink: &mut Sink) -> Option<TriggerDoc> {
    let entries = mapping(node, what, sink)?;
    let mut t = TriggerDoc {
        pos: pos(node),
        uses: None,
        with: None,
        every: None,
        cron: None,
        dedupe: None,
        start: None,
        max_new: None,
        lookback: None,
        sweep: None,
        webhook: None,
        reconcile: None,
        coalesce: None,
        http: None,
        for_each_record: None,
    };
    let nested = keys.len() < TRIGGER_KEYS.len();
    for (key, value) in entries {
        let name = format!("{what}.{}", key.value);
        match key.value.as_str() {
            k if !keys.contains(&k) => unknown_key(&key, k, keys, &format!(" in `{what}`"), sink),
            "uses" => t.uses = string(value, &name, sink),
            "with" => t.with = with_block(value, &name, sink),
            "every" => t.every = string(value, &name, sink),
            "cron" => t.cron = string(value, &name, sink),
            "dedupe" => t.dedupe = string(value, &name, sink),
            "start" => t.start = string(value, &name, sink),
            "lookback" => t.lookback = string(value, &name, sink),
            "sweep" => t.sweep = string(value, &name, sink),
            "webhook" => t.webhook = string(value, &name, sink),
            "coalesce" => t.coalesce = string(value, &name, sink),
            "http" if !nested => t.http = Some(value.clone()),
            crate::fanout::KEY => t.for_each_record = crate::fanout::read(value, sink),
            "reconcile" if !nested => {
                t.reconcile = read_trigger(value, "trigger.reconcile", RECONCILE_KEYS, sink).map(Box::new)
            }
            "max_new" => match &value.value {
                Node::UInt(n) if *n > 0 => t.max_new = Some(At { value: *n, pos: pos(value) }),
                Node::Int(n) if *n > 0 => t.max_new = Some(At { value: n.unsigned_abs(), pos: pos(value) }),
                other => {
                    sink.error(pos(value), format!("`{name}` must be a positive integer, found {}", describe(other)));
                }
            },
            other => unknown_key(&key, other, keys, &format!(" in `{what}`"), sink),
        }
    }
    Some(t)
}

fn read_step(node: &Spanned<Node>, sink: &mut Sink) -> Option<StepDoc> {
    let entries = mapping(node, "a step", sink)?;
    let mut s = StepDoc { pos: pos(node), id: None, uses: None, with: None, control: Default::default(), cache: None };
    for (key, value) in entries {
        match key.value.as_str() {
            "id" => s.id = string(value, "step id", sink),
            "uses" => s.uses = string(value, "step uses", sink),
            "with" => s.with = with_block(value, "step with", sink),
            k if crate::step_control::KEYS.contains(&k) => {
                crate::step_control::read_key(&mut s.control, k, value, sink)
            }
            "cache" => s.cache = string(value, "step cache", sink),
            other => unknown_key(&key, other, STEP_KEYS, " in a step", sink),
        }
    }
    Some(s)
}

fn read_test(node: &Spanned<Node>, sink: &mut Sink) -> Option<TestDoc> {
    let entries = mapping(node, "a test", sink)?;
    let mut t = TestDoc {
        pos: pos(node),
        name: None,
        item: None,
        results: Vec::new(),
        expect: Vec::new(),
        filtered: None,
        env: Vec::new(),
    };
    for (key, value) in entries {
        match key.value.as_str() {
            "name" => t.name = string(value, "test name", sink),
            "item" => t.item = Some(At { value: value.value.to_json(), pos: pos(value) }),
            "env" => {
                if let Some(m) = mapping(value, "test env", sink) {
                    t.env = m.into_iter().map(|(k, v)| (k, v.value.to_json())).collect();
                }
            }
            "results" => {
                if let Some(m) = mapping(value, "test results", sink) {
                    t.results = m.into_iter().map(|(k, v)| (k, v.value.to_json())).collect();
                }
            }
            "expect" => {
                if let Some(m) = mapping(value, "test expect", sink) {
                    t.expect = m.into_iter().map(|(k, v)| (k, At { value: v.value.to_json(), pos: pos(v) })).collect();
                }
            }
            "filtered" => match value.value {
                Node::Bool(b) => t.filtered = Some(At { value: b, pos: pos(value) }),
                ref other => {
                    sink.error(pos(value), format!("`filtered` must be true or false, found {}", describe(other)));
                }
            },
            other => unknown_key(&key, other, TEST_KEYS, " in a test", sink),
        }
    }
    Some(t)
}

pub(crate) fn describe(n: &Node) -> String {
    match n.scalar_text() {
        Some(t) => format!("{} `{t}`", n.kind()),
        None => n.kind().to_string(),
    }
}

pub(crate) fn unknown_key(key: &At<String>, name: &str, known: &[&str], what: &str, sink: &mut Sink) {
    let suggestions = catalog::nearest(name, known.iter().copied(), 1);
    let d = sink.error(key.pos, format!("unknown key `{name}`{what}"));
    if suggestions.is_empty() {
        d.help(format!("expected one of {}", known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")));
    } else {
        d.suggest(&suggestions);
    }
}

/// The entries of a mapping, keys as text with positions.
pub(crate) fn mapping<'a>(
    node: &'a Spanned<Node>,
    what: &str,
    sink: &mut Sink,
) -> Option<Vec<(At<String>, &'a Spanned<Node>)>> {
    match &node.value {
        Node::Map(entries) => {
            Some(entries.iter().map(|(k, v)| (At { value: k.value.0.clone(), pos: pos(k) }, v)).collect())
        }
        other => {
            sink.error(pos(node), format!("{what} must be a mapping, found {}", describe(other)));
            None
        }
    }
}

pub(crate) fn sequence<'a>(node: &'a Spanned<Node>, what: &str, sink: &mut Sink) -> Option<&'a [Spanned<Node>]> {
    match &node.value {
        Node::Seq(items) => Some(items),
        Node::Null => Some(&[]),
        other => {
            sink.error(pos(node), format!("`{what}` must be a list, found {}", describe(other)));
            None
        }
    }
}

pub(crate) fn string(node: &Spanned<Node>, what: &str, sink: &mut Sink) -> Option<At<String>> {
    match node.value.scalar_text() {
        Some(s) => Some(At { value: s, pos: pos(node) }),
        None => {
            sink.error(pos(node), format!("`{what}` must be a string, found {}", node.value.kind()));
            None
        }
    }
}

pub(crate) fn with_block(node: &Spanned<Node>, what: &str, sink: &mut Sink) -> Option<At<Entries>> {
    match &node.value {
        Node::Null => Some(At { value: Vec::new(), pos: pos(node) }),
        Node::Map(entries) => Some(At {
            value: entries.iter().map(|(k, v)| (At { value: k.value.0.clone(), pos: pos(k) }, v.clone())).collect(),
            pos: pos(node),
        }),
        other => {
            sink.error(pos(node), format!("`{what}` must be a mapping of parameters, found {}", describe(other)));
            None
        }
    }
}
