//! `for_each_record:` on a trigger: the per-record trigger in `uses` (the tasks of one
//! contact) is polled for each record of a parent trigger (the contacts' search), with
//! `parent` in the trigger's `with` (`contactId: "{{ parent.id }}"`). Parsing and checks;
//! the engine's `fanout` module polls it.

use catalog::{Catalog, Kind, Operation, DEFAULT_MAX_PER_POLL, MAX_PER_POLL, MIN_PER_POLL};
use serde_saphyr::Spanned;

use crate::diagnostic::{Pos, Sink};
use crate::parse::{self, At, Entries, Node};
use crate::template::ValueTemplate;
use crate::validate::{self, Scope};

/// The key, under `trigger`.
pub(crate) const KEY: &str = "for_each_record";
const KEYS: &[&str] = &["of", "with", "max_per_poll"];

/// A compiled `for_each_record:`.
#[derive(Debug, Clone)]
pub struct FanOut {
    /// Catalog key of the parent trigger (a search that can be read by cursor).
    pub parent: String,
    /// The parent's request parameters (context: account, env, flow, run, now).
    pub with: ValueTemplate,
    /// Parents one poll reads; a poll sends at most this many requests plus one.
    pub max_per_poll: u32,
}

/// `for_each_record:` as written.
#[derive(Debug)]
pub(crate) struct FanOutDoc {
    pub(crate) pos: Pos,
    of: Option<At<String>>,
    with: Option<At<Entries>>,
    max_per_poll: Option<At<i64>>,
}

pub(crate) fn read(node: &Spanned<Node>, sink: &mut Sink) -> Option<FanOutDoc> {
    let entries = parse::mapping(node, "`trigger.for_each_record`", sink)?;
    let mut d = FanOutDoc { pos: parse::pos(node), of: None, with: None, max_per_poll: None };
    for (key, value) in entries {
        let name = format!("trigger.{KEY}.{}", key.value);
        match key.value.as_str() {
            "of" => d.of = parse::string(value, &name, sink),
            "with" => d.with = parse::with_block(value, &name, sink),
            "max_per_poll" => match &value.value {
                Node::Int(n) => d.max_per_poll = Some(At { value: *n, pos: parse::pos(value) }),
                Node::UInt(n) => {
                    d.max_per_poll = Some(At { value: i64::try_from(*n).unwrap_or(i64::MAX), pos: parse::pos(value) })
                }
                other => {
                    sink.error(parse::pos(value), format!("`{name}` must be an integer, found {}", other.kind()));
                }
            },
            other => parse::unknown_key(&key, other, KEYS, &format!(" in `trigger.{KEY}`"), sink),
        }
    }
    Some(d)
}

/// Checks `for_each_record:` against the child trigger `child` and compiles it; also
/// returns the parent's item fields, which the child's `with` may use as `parent.*`.
pub(crate) fn compile(
    d: &FanOutDoc,
    child: &Operation,
    child_pos: Pos,
    cat: &Catalog,
    scope: &Scope<'_>,
    sink: &mut Sink,
) -> (Option<FanOut>, Vec<String>) {
    let mut ok = true;
    if child.fan_out_param().is_none() {
        sink.error(child_pos, format!("`{}` cannot fan out: it reads no list of one record's children", child.key))
            .help("fan-out triggers read one record's list in one request, like `contacts.get_contact_tasks` (`flowd catalog show` says which can)");
        ok = false;
    }
    let max_per_poll = match &d.max_per_poll {
        None => DEFAULT_MAX_PER_POLL,
        Some(m) if (i64::from(MIN_PER_POLL)..=i64::from(MAX_PER_POLL)).contains(&m.value) => {
            u32::try_from(m.value).unwrap_or(MAX_PER_POLL)
        }
        Some(m) => {
            sink.error(m.pos, format!("`max_per_poll: {}` must be between {MIN_PER_POLL} and {MAX_PER_POLL}", m.value))
                .help("up to half of a poll reads changed parents, the rest goes on round-robin through all of them");
            ok = false;
            DEFAULT_MAX_PER_POLL
        }
    };
    let Some(of) = &d.of else {
        sink.error(d.pos, format!("`{KEY}` needs `of`: the catalog key of the parent trigger"))
            .help("for example `of: contacts.search_contacts`");
        return (None, Vec::new());
    };
    let parent = match cat.get(&of.value) {
        Some(op) if op.kind == Kind::Trigger && op.parent_read().is_some() => op,
        Some(op) => {
            let parents: Vec<&str> =
                cat.operations().iter().filter(|o| o.parent_read().is_some()).map(|o| o.key.as_str()).collect();
            sink.error(of.pos, format!("`{}` cannot be the parent of a fan-out", op.key)).help(format!(
                "a parent is read by search, changed records first and then round-robin: one of {}",
                parents.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
            ));
            return (None, Vec::new());
        }
        None => {
            sink.error(of.pos, format!("unknown trigger `{}`", of.value))
                .suggest(&cat.suggest_kind(&of.value, Kind::Trigger));
            return (None, Vec::new());
        }
    };
    let with = validate::check_ghl_with(parent, d.with.as_ref(), of.pos, scope, sink);
    let fields = parent.trigger.as_ref().map(|t| t.fields.clone()).unwrap_or_default();
    match with {
        Some(with) if ok => (Some(FanOut { parent: parent.key.clone(), with, max_per_poll }), fields),
        _ => (None, fields),
    }
}

#[cfg(test)]
mod tests {
    use crate::{load, CompileEnv, Severity};

    fn flow(trigger: &str) -> String {
        format!(
            "name: t\naccount: main\ntrigger:\n{trigger}\nsteps:\n  - id: s\n    uses: http.request\n    with: {{ method: POST, url: \"http://127.0.0.1:1/\", json: {{ id: \"{{{{ trigger.id }}}}\" }} }}\n"
        )
    }

    fn errors(text: &str) -> Vec<String> {
        let cat = catalog::Catalog::builtin().expect("catalog");
        let (_, diags) = load("t.yaml", text, &cat, &CompileEnv::default());
        diags
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(|d| format!("{}:{} {}", d.line, d.column, d.message))
            .collect()
    }

    const GOOD: &str = "  uses: contacts.get_contact_tasks\n  for_each_record:\n    of: contacts.search_contacts\n    with: { locationId: \"{{ account.location_id }}\" }\n    max_per_poll: 20\n  with: { contactId: \"{{ parent.id }}\" }\n  dedupe: changed";

    #[test]
    fn a_fan_out_compiles_with_its_parent_and_bound() {
        let cat = catalog::Catalog::builtin().expect("catalog");
        let (f, diags) = load("t.yaml", &flow(GOOD), &cat, &CompileEnv::default());
        let f = f.unwrap_or_else(|| panic!("{}", crate::render_all(&diags)));
        let fan = f.trigger.fan_out.expect("fan-out");
        assert_eq!(fan.parent, "contacts.search_contacts");
        assert_eq!(fan.max_per_poll, 20);
    }

    #[test]
    fn every_misuse_is_reported_at_its_position() {
        let e = errors(&flow(&GOOD.replace("of: contacts.search_contacts", "of: contacts.get_contact")));
        assert!(e.iter().any(|m| m.starts_with("6:9 ") && m.contains("cannot be the parent")), "{e:?}");
        let e = errors(&flow(&GOOD.replace("max_per_poll: 20", "max_per_poll: 1")));
        assert!(e.iter().any(|m| m.starts_with("8:19 ") && m.contains("between 4 and 500")), "{e:?}");
        let e = errors(&flow(&GOOD.replace("uses: contacts.get_contact_tasks", "uses: contacts.search_contacts")));
        assert!(e.iter().any(|m| m.contains("cannot fan out")), "{e:?}");
        let e = errors(&flow(&GOOD.replace("parent.id", "parent.idd")));
        assert!(e.iter().any(|m| m.contains("`parent.idd`")), "{e:?}");
        let e = errors(&flow(&format!("{GOOD}\n  sweep: 6h")));
        assert!(e.iter().any(|m| m.contains("`sweep` does not apply")), "{e:?}");
        let e = errors(&flow(&GOOD.replace("    of: contacts.search_contacts\n", "")));
        assert!(e.iter().any(|m| m.contains("needs `of`")), "{e:?}");
        let e = errors(&flow("  webhook: TaskCreate\n  for_each_record: { of: contacts.search_contacts }"));
        assert!(e.iter().any(|m| m.contains("cannot be paired with `webhook`")), "{e:?}");
        let e = errors(&flow(&GOOD.replace("max_per_poll", "max_per_pol")));
        assert!(e.iter().any(|m| m.contains("unknown key `max_per_pol`")), "{e:?}");
    }

    #[test]
    fn parent_is_only_seen_in_a_fan_out_trigger() {
        let e = errors(&flow("  uses: contacts.get_contact_tasks\n  with: { contactId: \"{{ parent.id }}\" }"));
        assert!(
            e.iter().any(|m| m.contains("only available in the `with` of a trigger with `for_each_record`")),
            "{e:?}"
        );
    }
}
