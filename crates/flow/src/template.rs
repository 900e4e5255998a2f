//! Templated values: parsed once with handlebars' parser, then evaluated directly.
//!
//! Most flow templates are a path (`{{ trigger.id }}`), a helper call, or text with a few
//! of those in it. Those are evaluated here without going through handlebars' renderer:
//! no context clone, no registry lookup, and a string that is one expression keeps the
//! JSON type of its value. Templates with blocks (`{{#if}}`, `{{#each}}`), partials or
//! `this`/`../`/`@` paths are handed to a shared handlebars registry (strict mode, no HTML
//! escaping, our helpers registered), which needs an owned copy of the context.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use handlebars::template::{HelperTemplate, Parameter, TemplateElement};
use handlebars::{Handlebars, Path, PathSeg, Renderable};
use serde_json::Value;

use crate::helpers::{self, Helper};

/// Why rendering failed at run time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("`{path}` is missing")]
    Missing { path: String },
    #[error("helper `{helper}`: {message}")]
    Helper { helper: &'static str, message: String },
    #[error("{0}")]
    Handlebars(String),
}

/// Why a template could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("template syntax error: {0}")]
    Syntax(String),
    #[error("unknown helper `{0}`")]
    UnknownHelper(String),
    #[error("helper `{helper}` takes {expected} argument(s), got {got}")]
    Arity { helper: &'static str, expected: String, got: usize },
    #[error("helper `{helper}` has no argument `{key}=`")]
    UnknownHashKey { helper: &'static str, key: String },
    #[error("invalid JSONPath `{path}`: {message}")]
    JsonPath { path: String, message: String },
    #[error("partials (`{{{{> name}}}}`, `{{{{#*inline}}}}`) and decorators are not supported in flows")]
    Partial,
    #[error("template nests deeper than {max} levels (blocks and helper calls inside one another)")]
    TooDeep { max: usize },
    #[error("template is {len} bytes; at most {max} are allowed")]
    TooLarge { len: usize, max: usize },
}

/// The longest template a flow may hold. Templates are a value's worth of text; a longer
/// one is a mistake or an attack, and its parse would cost the loader its time.
pub const MAX_TEMPLATE_BYTES: usize = 16 * 1024;

/// How deep blocks and helper calls may nest in one template. The parser and the renderer
/// recurse once per level, so an unbounded depth could overflow a thread's stack.
pub const MAX_TEMPLATE_DEPTH: usize = 32;

/// Refuses a template too long or nested too deep, before the parser (which recurses)
/// sees it. Counts `{{#…}}` blocks open and `(`, `[`, `{` open inside one `{{ }}`.
fn check_limits(source: &str) -> Result<(), TemplateError> {
    if source.len() > MAX_TEMPLATE_BYTES {
        return Err(TemplateError::TooLarge { len: source.len(), max: MAX_TEMPLATE_BYTES });
    }
    let too_deep = TemplateError::TooDeep { max: MAX_TEMPLATE_DEPTH };
    let b = source.as_bytes();
    let (mut i, mut blocks) = (0, 0usize);
    while i < b.len() {
        if !b[i..].starts_with(b"{{") {
            i += 1;
            continue;
        }
        i += 2;
        let mut j = i;
        while j < b.len() && (b[j] == b'{' || b[j] == b'~' || b[j].is_ascii_whitespace()) {
            j += 1;
        }
        match b.get(j) {
            Some(b'#') => blocks += 1,
            Some(b'/') => blocks = blocks.saturating_sub(1),
            _ => {}
        }
        if blocks > MAX_TEMPLATE_DEPTH {
            return Err(too_deep);
        }
        let (mut depth, mut quote) = (0usize, None);
        while i < b.len() {
            let c = b[i];
            i += 1;
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None => match c {
                    b'"' | b'\'' => quote = Some(c),
                    b'(' | b'[' | b'{' => {
                        depth += 1;
                        if blocks + depth > MAX_TEMPLATE_DEPTH {
                            return Err(too_deep);
                        }
                    }
                    b')' | b']' => depth = depth.saturating_sub(1),
                    b'}' if depth > 0 => depth -= 1,
                    b'}' if b.get(i) == Some(&b'}') => break,
                    _ => {}
                },
            }
        }
    }
    Ok(())
}

/// Refuses partials and decorators anywhere in a template: flows have no use for them,
/// a partial may render itself without end, and one that is not registered would only
/// fail at run time.
fn refuse_partials(elements: &[TemplateElement]) -> Result<(), TemplateError> {
    for el in elements {
        match el {
            TemplateElement::PartialExpression(_)
            | TemplateElement::PartialBlock(_)
            | TemplateElement::DecoratorExpression(_)
            | TemplateElement::DecoratorBlock(_) => return Err(TemplateError::Partial),
            TemplateElement::HelperBlock(h) => {
                for t in [&h.template, &h.inverse].into_iter().flatten() {
                    refuse_partials(&t.elements)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// A JSON value with templates in its strings, compiled once; see the module docs.
#[derive(Debug, Clone)]
pub struct ValueTemplate(Node);

#[derive(Debug, Clone)]
enum Node {
    Literal(Value),
    /// The whole string is one expression: its value keeps its JSON type.
    Expr(Expr),
    /// Text with expressions in it: always a string.
    Text(Vec<Part>),
    Handlebars(Arc<handlebars::Template>),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

#[derive(Debug, Clone)]
enum Part {
    Raw(String),
    Expr(Expr),
}

#[derive(Debug, Clone)]
enum Expr {
    Path { segs: Vec<String>, raw: String },
    Lit(Value),
    Call(Box<Call>),
}

#[derive(Debug, Clone)]
struct Call {
    helper: Helper,
    params: Vec<Expr>,
    hash: Vec<(String, Expr)>,
}

/// The parser met something the fast evaluator does not do; handlebars will.
struct NeedsHandlebars;

enum Compiled {
    Ok(Expr),
    Fallback,
}

impl ValueTemplate {
    /// A value rendered as is.
    pub fn literal(value: Value) -> ValueTemplate {
        ValueTemplate(Node::Literal(value))
    }

    /// Compiles one string. A string without `{{` is a literal.
    pub fn compile_str(source: &str) -> Result<ValueTemplate, TemplateError> {
        if !source.contains("{{") {
            return Ok(ValueTemplate::literal(Value::String(source.to_string())));
        }
        check_limits(source)?;
        let tpl = handlebars::Template::compile(source).map_err(|e| TemplateError::Syntax(syntax_message(&e)))?;
        refuse_partials(&tpl.elements)?;
        let elements: Vec<&TemplateElement> =
            tpl.elements.iter().filter(|e| !matches!(e, TemplateElement::Comment(_))).collect();
        if let [TemplateElement::Expression(h) | TemplateElement::HtmlExpression(h)] = elements.as_slice() {
            return Ok(ValueTemplate(match compile_expr(h)? {
                Compiled::Ok(e) => Node::Expr(e),
                Compiled::Fallback => Node::Handlebars(Arc::new(tpl)),
            }));
        }
        let mut parts = Vec::with_capacity(elements.len());
        for el in elements {
            match el {
                TemplateElement::RawString(s) => parts.push(Part::Raw(s.clone())),
                TemplateElement::Expression(h) | TemplateElement::HtmlExpression(h) => match compile_expr(h)? {
                    Compiled::Ok(e) => parts.push(Part::Expr(e)),
                    Compiled::Fallback => return Ok(ValueTemplate(Node::Handlebars(Arc::new(tpl)))),
                },
                _ => {
                    check_block_helpers(&tpl.elements)?;
                    return Ok(ValueTemplate(Node::Handlebars(Arc::new(tpl))));
                }
            }
        }
        Ok(ValueTemplate(Node::Text(parts)))
    }

    /// Compiles every string inside a JSON value.
    pub fn compile_value(value: &Value) -> Result<ValueTemplate, TemplateError> {
        Ok(match value {
            Value::String(s) => ValueTemplate::compile_str(s)?,
            Value::Array(items) => {
                let items = items.iter().map(ValueTemplate::compile_value).collect::<Result<Vec<_>, _>>()?;
                ValueTemplate::array(items)
            }
            Value::Object(map) => {
                let fields = map
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), ValueTemplate::compile_value(v)?)))
                    .collect::<Result<Vec<_>, TemplateError>>()?;
                ValueTemplate::object(fields)
            }
            other => ValueTemplate::literal(other.clone()),
        })
    }

    /// A list; all-literal lists collapse into one literal so rendering is a clone.
    pub fn array(items: Vec<ValueTemplate>) -> ValueTemplate {
        if items.iter().all(ValueTemplate::is_literal) {
            let values = items.into_iter().filter_map(|t| t.into_literal()).collect();
            return ValueTemplate::literal(Value::Array(values));
        }
        ValueTemplate(Node::Array(items.into_iter().map(|t| t.0).collect()))
    }

    /// A map, in the given key order.
    pub fn object(fields: Vec<(String, ValueTemplate)>) -> ValueTemplate {
        if fields.iter().all(|(_, t)| t.is_literal()) {
            let map = fields.into_iter().filter_map(|(k, t)| t.into_literal().map(|v| (k, v))).collect();
            return ValueTemplate::literal(Value::Object(map));
        }
        ValueTemplate(Node::Object(fields.into_iter().map(|(k, t)| (k, t.0)).collect()))
    }

    pub fn is_literal(&self) -> bool {
        matches!(self.0, Node::Literal(_))
    }

    pub fn as_literal(&self) -> Option<&Value> {
        match &self.0 {
            Node::Literal(v) => Some(v),
            _ => None,
        }
    }

    fn into_literal(self) -> Option<Value> {
        match self.0 {
            Node::Literal(v) => Some(v),
            _ => None,
        }
    }

    /// Renders against a context object (`trigger`, `steps`, `account`, `env`, `flow`,
    /// `run`, `now`). Strict: a path that is not in the context is an error.
    pub fn render(&self, ctx: &Value) -> Result<Value, RenderError> {
        render_node(&self.0, ctx)
    }

    /// Calls `f` with every context path the template reads at the top level, for checks
    /// at load time. Paths inside `{{#each}}`/`{{#with}}` blocks are relative to the block
    /// and are not reported.
    pub fn visit_paths(&self, f: &mut dyn FnMut(&[String])) {
        visit_node(&self.0, f);
    }
}

fn syntax_message(e: &handlebars::TemplateError) -> String {
    let reason = match e.reason() {
        // The parser's own text names grammar rules ("expected trailing_tilde_..."),
        // which helps nobody writing a flow.
        handlebars::TemplateErrorReason::InvalidSyntax(_) => "malformed `{{ }}` expression".to_string(),
        other => other.to_string().lines().next().unwrap_or_default().trim().to_string(),
    };
    match e.pos() {
        Some((line, col)) => format!("{reason} (template line {line}, column {col})"),
        None => reason,
    }
}

fn compile_expr(h: &HelperTemplate) -> Result<Compiled, TemplateError> {
    match lower(h.name.clone(), &h.params, &h.hash) {
        Ok(e) => Ok(Compiled::Ok(e)),
        Err(Lowering::Error(e)) => Err(e),
        Err(Lowering::Fallback(_)) => Ok(Compiled::Fallback),
    }
}

enum Lowering {
    Error(TemplateError),
    Fallback(NeedsHandlebars),
}

impl From<TemplateError> for Lowering {
    fn from(e: TemplateError) -> Self {
        Lowering::Error(e)
    }
}

fn lower(
    name: Parameter,
    params: &[Parameter],
    hash: &std::collections::HashMap<String, Parameter>,
) -> Result<Expr, Lowering> {
    let helper_name = match &name {
        Parameter::Name(n) => Some(n.as_str()),
        Parameter::Path(Path::Relative((segs, _))) if segs.len() == 1 => match &segs[0] {
            PathSeg::Named(n) => Some(n.as_str()),
            _ => None,
        },
        _ => None,
    };
    if params.is_empty() && hash.is_empty() {
        // `{{ name }}` is a lookup unless `name` is a helper, as in handlebars.
        if let Some(helper) = helper_name.and_then(Helper::by_name) {
            return Err(arity_error(helper, 0).into());
        }
        return lower_param(&name);
    }
    let Some(n) = helper_name else {
        return Err(TemplateError::UnknownHelper(param_text(&name)).into());
    };
    let helper = match Helper::by_name(n) {
        Some(h) => h,
        None if matches!(n, "if" | "unless" | "each" | "with" | "log" | "raw") => {
            return Err(Lowering::Fallback(NeedsHandlebars));
        }
        None => return Err(TemplateError::UnknownHelper(n.to_string()).into()),
    };
    let (min, max) = helper.arity();
    if params.len() < min || params.len() > max {
        return Err(arity_error(helper, params.len()).into());
    }
    let mut hash_exprs = Vec::with_capacity(hash.len());
    let mut keys: Vec<&String> = hash.keys().collect();
    // HashMap order is random; a fixed order keeps rendering deterministic.
    keys.sort();
    for key in keys {
        if !helper.hash_keys().contains(&key.as_str()) {
            return Err(TemplateError::UnknownHashKey { helper: helper.name(), key: key.clone() }.into());
        }
        hash_exprs.push((key.clone(), lower_param(&hash[key])?));
    }
    let params = params.iter().map(lower_param).collect::<Result<Vec<_>, _>>()?;
    if helper == Helper::JsonPath {
        if let Some(Expr::Lit(Value::String(path))) = params.get(1) {
            if let Err(e) = jsonpath_rust::parser::parse_json_path(path) {
                return Err(TemplateError::JsonPath { path: path.clone(), message: e.to_string() }.into());
            }
        }
    }
    Ok(Expr::Call(Box::new(Call { helper, params, hash: hash_exprs })))
}

fn arity_error(helper: Helper, got: usize) -> TemplateError {
    let (min, max) = helper.arity();
    let expected = if min == max {
        min.to_string()
    } else if max == usize::MAX {
        format!("at least {min}")
    } else {
        format!("{min} to {max}")
    };
    TemplateError::Arity { helper: helper.name(), expected, got }
}

fn param_text(p: &Parameter) -> String {
    match p {
        Parameter::Name(n) => n.clone(),
        Parameter::Path(Path::Relative((_, raw))) => raw.clone(),
        Parameter::Path(Path::Local((_, _, raw))) => raw.clone(),
        Parameter::Literal(v) => v.to_string(),
        _ => "(...)".to_string(),
    }
}

fn lower_param(p: &Parameter) -> Result<Expr, Lowering> {
    match p {
        Parameter::Name(n) => Ok(Expr::Path { segs: vec![n.clone()], raw: n.clone() }),
        Parameter::Path(Path::Relative((segs, raw))) => {
            let mut names = Vec::with_capacity(segs.len());
            for s in segs {
                match s {
                    PathSeg::Named(n) => names.push(n.clone()),
                    _ => return Err(Lowering::Fallback(NeedsHandlebars)),
                }
            }
            if names.is_empty() {
                return Err(Lowering::Fallback(NeedsHandlebars));
            }
            Ok(Expr::Path { segs: names, raw: raw.clone() })
        }
        Parameter::Path(Path::Local(_)) => Err(Lowering::Fallback(NeedsHandlebars)),
        Parameter::Literal(v) => Ok(Expr::Lit(v.clone())),
        Parameter::Subexpression(sub) => match sub.element.as_ref() {
            TemplateElement::Expression(h) | TemplateElement::HtmlExpression(h) => {
                lower(h.name.clone(), &h.params, &h.hash)
            }
            _ => Err(Lowering::Fallback(NeedsHandlebars)),
        },
        _ => Err(Lowering::Fallback(NeedsHandlebars)),
    }
}

/// Block templates go to handlebars, but their helpers must still exist.
fn check_block_helpers(elements: &[TemplateElement]) -> Result<(), TemplateError> {
    for el in elements {
        if let TemplateElement::HelperBlock(h) = el {
            if let Parameter::Name(n) = &h.name {
                let known =
                    Helper::by_name(n).is_some() || matches!(n.as_str(), "if" | "unless" | "each" | "with" | "raw");
                if !known {
                    return Err(TemplateError::UnknownHelper(n.clone()));
                }
            }
            for t in [&h.template, &h.inverse].into_iter().flatten() {
                check_block_helpers(&t.elements)?;
            }
        }
    }
    Ok(())
}

fn resolve<'a>(ctx: &'a Value, segs: &[String]) -> Option<&'a Value> {
    let mut cur = ctx;
    for s in segs {
        cur = match cur {
            Value::Object(m) => m.get(s.as_str())?,
            Value::Array(a) => a.get(s.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn eval<'a>(e: &'a Expr, ctx: &'a Value) -> Result<Cow<'a, Value>, RenderError> {
    match e {
        Expr::Path { segs, raw } => {
            resolve(ctx, segs).map(Cow::Borrowed).ok_or_else(|| RenderError::Missing { path: raw.clone() })
        }
        Expr::Lit(v) => Ok(Cow::Borrowed(v)),
        Expr::Call(call) => {
            let lenient = call.helper.tolerates_missing();
            let mut params = Vec::with_capacity(call.params.len());
            for p in &call.params {
                params.push(match eval(p, ctx) {
                    Err(RenderError::Missing { .. }) if lenient => Cow::Owned(Value::Null),
                    other => other?,
                });
            }
            let mut hash = Vec::with_capacity(call.hash.len());
            for (k, v) in &call.hash {
                hash.push((k.as_str(), eval(v, ctx)?));
            }
            call.helper.call(&params, &hash).map(Cow::Owned)
        }
    }
}

fn render_node(node: &Node, ctx: &Value) -> Result<Value, RenderError> {
    match node {
        Node::Literal(v) => Ok(v.clone()),
        Node::Expr(e) => eval(e, ctx).map(Cow::into_owned),
        Node::Text(parts) => {
            let mut out = String::new();
            for p in parts {
                match p {
                    Part::Raw(s) => out.push_str(s),
                    Part::Expr(e) => {
                        let v = eval(e, ctx)?;
                        out.push_str(&helpers::text(&v));
                    }
                }
            }
            Ok(Value::String(out))
        }
        Node::Handlebars(tpl) => {
            let hb_ctx = handlebars::Context::from(ctx.clone());
            let reg = registry();
            let mut rc = handlebars::RenderContext::new(None);
            tpl.renders(reg, &hb_ctx, &mut rc)
                .map(Value::String)
                .map_err(|e| RenderError::Handlebars(render_error_text(&e)))
        }
        Node::Array(items) => {
            items.iter().map(|n| render_node(n, ctx)).collect::<Result<Vec<_>, _>>().map(Value::Array)
        }
        Node::Object(fields) => {
            let mut map = serde_json::Map::with_capacity(fields.len());
            for (k, n) in fields {
                map.insert(k.clone(), render_node(n, ctx)?);
            }
            Ok(Value::Object(map))
        }
    }
}

fn render_error_text(e: &handlebars::RenderError) -> String {
    match e.reason() {
        handlebars::RenderErrorReason::MissingVariable(Some(path)) => format!("`{path}` is missing"),
        other => other.to_string(),
    }
}

/// The registry block templates render with. Built once: registering helpers per render
/// would dominate the cost.
fn registry() -> &'static Handlebars<'static> {
    static REGISTRY: OnceLock<Handlebars<'static>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut r = Handlebars::new();
        r.set_strict_mode(true);
        r.register_escape_fn(handlebars::no_escape);
        for h in Helper::ALL.iter().copied().filter(|h| !h.is_handlebars_builtin()) {
            r.register_helper(h.name(), Box::new(helpers::HandlebarsHelper(h)));
        }
        r
    })
}

fn visit_node(node: &Node, f: &mut dyn FnMut(&[String])) {
    match node {
        Node::Literal(_) => {}
        Node::Expr(e) => visit_expr(e, f),
        Node::Text(parts) => parts.iter().for_each(|p| {
            if let Part::Expr(e) = p {
                visit_expr(e, f)
            }
        }),
        Node::Handlebars(tpl) => visit_elements(&tpl.elements, f),
        Node::Array(items) => items.iter().for_each(|n| visit_node(n, f)),
        Node::Object(fields) => fields.iter().for_each(|(_, n)| visit_node(n, f)),
    }
}

fn visit_expr(e: &Expr, f: &mut dyn FnMut(&[String])) {
    match e {
        Expr::Path { segs, .. } => f(segs),
        Expr::Lit(_) => {}
        Expr::Call(c) => {
            c.params.iter().for_each(|p| visit_expr(p, f));
            c.hash.iter().for_each(|(_, p)| visit_expr(p, f));
        }
    }
}

fn visit_elements(elements: &[TemplateElement], f: &mut dyn FnMut(&[String])) {
    for el in elements {
        match el {
            TemplateElement::Expression(h) | TemplateElement::HtmlExpression(h) => visit_helper(h, f),
            TemplateElement::HelperBlock(h) => {
                h.params.iter().for_each(|p| visit_param(p, f));
                let same_scope = matches!(&h.name, Parameter::Name(n) if n == "if" || n == "unless");
                if same_scope {
                    for t in [&h.template, &h.inverse].into_iter().flatten() {
                        visit_elements(&t.elements, f);
                    }
                }
            }
            _ => {}
        }
    }
}

fn visit_helper(h: &HelperTemplate, f: &mut dyn FnMut(&[String])) {
    if h.params.is_empty() && h.hash.is_empty() {
        visit_param(&h.name, f);
    }
    h.params.iter().for_each(|p| visit_param(p, f));
    h.hash.values().for_each(|p| visit_param(p, f));
}

fn visit_param(p: &Parameter, f: &mut dyn FnMut(&[String])) {
    match p {
        Parameter::Path(Path::Relative((segs, _))) => {
            let names: Option<Vec<String>> = segs
                .iter()
                .map(|s| match s {
                    PathSeg::Named(n) => Some(n.clone()),
                    _ => None,
                })
                .collect();
            if let Some(names) = names.filter(|n| !n.is_empty()) {
                f(&names);
            }
        }
        Parameter::Name(n) if Helper::by_name(n).is_none() => f(std::slice::from_ref(n)),
        Parameter::Subexpression(sub) => {
            if let TemplateElement::Expression(h) = sub.element.as_ref() {
                visit_helper(h, f);
            }
        }
        _ => {}
    }
}

/// The `if:` filter of a flow.
#[derive(Debug, Clone)]
pub struct Filter(pub(crate) ValueTemplate);

impl Filter {
    pub fn compile(source: &str) -> Result<Filter, TemplateError> {
        ValueTemplate::compile_str(source).map(Filter)
    }

    /// Whether the item passes: the value is truthy as handlebars' `{{#if}}` sees it
    /// (false, null, 0, "", [] and {} do not pass). A missing path does not pass either:
    /// GHL leaves empty fields out of items, so `if: "{{ trigger.email }}"` must mean
    /// "has an email", not "fail the run".
    pub fn matches(&self, ctx: &Value) -> Result<bool, RenderError> {
        match self.0.render(ctx) {
            Ok(v) => Ok(helpers::truthy(&v)),
            Err(RenderError::Missing { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn template(&self) -> &ValueTemplate {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> Value {
        json!({
            "trigger": {"id": "c1", "firstName": "ann", "tags": ["a", "b"], "n": 3, "email": null,
                        "custom": [{"k": "x", "v": 1}]},
            "steps": {"task": {"id": "t9"}},
            "now": "2024-01-01T00:00:00Z",
            "env": {"HOOK": "https://app/hook"}
        })
    }

    fn r(s: &str) -> Result<Value, RenderError> {
        ValueTemplate::compile_str(s).unwrap().render(&ctx())
    }

    #[test]
    fn single_expression_keeps_json_type() {
        assert_eq!(r("{{ trigger.tags }}").unwrap(), json!(["a", "b"]));
        assert_eq!(r("{{trigger.n}}").unwrap(), json!(3));
        assert_eq!(r("{{ trigger }}").unwrap()["id"], json!("c1"));
        assert_eq!(r("{{ trigger.email }}").unwrap(), Value::Null);
        assert_eq!(r("{{ trigger.tags.[1] }}").unwrap(), json!("b"));
        assert_eq!(r("{{ default trigger.nick trigger.tags }}").unwrap(), json!(["a", "b"]));
        assert_eq!(r("{{ jsonpath trigger \"$.custom[0].v\" }}").unwrap(), json!(1));
    }

    #[test]
    fn text_is_a_string() {
        assert_eq!(r("Hi {{ upper trigger.firstName }}!").unwrap(), json!("Hi ANN!"));
        assert_eq!(r("n={{ trigger.n }} e={{ trigger.email }}").unwrap(), json!("n=3 e="));
        assert_eq!(r(" {{ trigger.n }}").unwrap(), json!(" 3"));
        assert_eq!(r("{{ date_add now days=2 }}").unwrap(), json!("2024-01-03T00:00:00Z"));
        assert_eq!(r("{{ title (lower \"ANN LEE\") }}").unwrap(), json!("Ann Lee"));
        assert_eq!(r("<{{ trigger.firstName }}&>").unwrap(), json!("<ann&>"));
        assert_eq!(r("plain").unwrap(), json!("plain"));
    }

    #[test]
    fn strict_mode() {
        assert_eq!(r("{{ trigger.nope }}").unwrap_err(), RenderError::Missing { path: "trigger.nope".into() });
        assert!(r("x {{ steps.other.id }}").is_err());
        assert!(r("{{#if trigger.nope}}y{{/if}}").is_ok());
    }

    #[test]
    fn blocks_go_through_handlebars() {
        assert_eq!(r("{{#each trigger.tags}}[{{this}}]{{/each}}").unwrap(), json!("[a][b]"));
        assert_eq!(r("{{#if trigger.n}}{{upper trigger.firstName}}{{else}}no{{/if}}").unwrap(), json!("ANN"));
        assert_eq!(r("{{#if (eq trigger.n 3)}}three{{/if}}").unwrap(), json!("three"));
        assert!(r("{{#each trigger.tags}}{{nope}}{{/each}}").is_err());
    }

    #[test]
    fn compile_errors() {
        assert!(matches!(ValueTemplate::compile_str("{{ trigger.id"), Err(TemplateError::Syntax(_))));
        assert!(
            matches!(ValueTemplate::compile_str("{{ shout trigger.id }}"), Err(TemplateError::UnknownHelper(n)) if n == "shout")
        );
        assert!(matches!(ValueTemplate::compile_str("{{ upper }}"), Err(TemplateError::Arity { .. })));
        assert!(matches!(
            ValueTemplate::compile_str("{{ date_add now years=1 }}"),
            Err(TemplateError::UnknownHashKey { .. })
        ));
        assert!(matches!(
            ValueTemplate::compile_str("{{ jsonpath trigger \"$[\" }}"),
            Err(TemplateError::JsonPath { .. })
        ));
        assert!(matches!(ValueTemplate::compile_str("{{#shout x}}y{{/shout}}"), Err(TemplateError::UnknownHelper(_))));
    }

    #[test]
    fn values_render_field_by_field() {
        let t = ValueTemplate::compile_value(
            &json!({"a": "{{ trigger.n }}", "b": ["{{ trigger.id }}", 2], "c": {"d": true}}),
        )
        .unwrap();
        assert_eq!(t.render(&ctx()).unwrap(), json!({"a": 3, "b": ["c1", 2], "c": {"d": true}}));
        let lit = ValueTemplate::compile_value(&json!({"a": [1, "x"]})).unwrap();
        assert!(lit.is_literal());
    }

    #[test]
    fn paths_are_reported() {
        let t = ValueTemplate::compile_str(
            "{{ trigger.a }} {{ default steps.x.id (upper env.Y) }} {{#each trigger.tags}}{{this.z}}{{/each}}",
        )
        .unwrap();
        let mut seen = Vec::new();
        t.visit_paths(&mut |p| seen.push(p.join(".")));
        assert_eq!(seen, vec!["trigger.a", "steps.x.id", "env.Y", "trigger.tags"]);
    }

    #[test]
    fn filter_truthiness() {
        let yes = |s: &str| Filter::compile(s).unwrap().matches(&ctx()).unwrap();
        assert!(yes("{{ trigger.id }}"));
        assert!(!yes("{{ trigger.email }}"));
        assert!(!yes("{{ trigger.missing }}"));
        assert!(!yes("{{ eq trigger.n 4 }}"));
        assert!(yes("{{ gt trigger.n 2 }}"));
        assert!(!yes("{{ steps.task.nothing }}"));
        let empty = json!({"trigger": {"a": [], "z": 0, "s": ""}});
        for s in ["{{ trigger.a }}", "{{ trigger.z }}", "{{ trigger.s }}"] {
            assert!(!Filter::compile(s).unwrap().matches(&empty).unwrap(), "{s}");
        }
    }
}
