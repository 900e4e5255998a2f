//! Parsing catalog files (built-in or user extensions) into operations with their places.

use crate::model::Operation;
use crate::problem::{Place, Problem};
use serde::Deserialize;
use serde_saphyr::Spanned;

/// One catalog file: categories it declares and operations it defines.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    categories: Vec<Spanned<Category>>,
    #[serde(default)]
    operations: Vec<Spanned<Operation>>,
}

/// A category operations are grouped by.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Category {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

/// Everything parsed from one file, with where each piece was written.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub categories: Vec<(Category, Place)>,
    pub operations: Vec<(Operation, Place)>,
}

pub(crate) fn parse_file(file: &str, text: &str) -> Result<Parsed, Problem> {
    let parsed: CatalogFile = serde_saphyr::from_str(text).map_err(|e| {
        let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
        Problem { place: Place { file: file.to_string(), line, column }, message: first_line(&e.to_string()) }
    })?;
    let place = |s: &serde_saphyr::Location| Place { file: file.to_string(), line: s.line(), column: s.column() };
    Ok(Parsed {
        categories: parsed.categories.into_iter().map(|s| (s.value, place(&s.referenced))).collect(),
        operations: parsed.operations.into_iter().map(|s| (s.value, place(&s.referenced))).collect(),
    })
}

// serde-saphyr prefixes "error: line L column C: " and may append a source excerpt; the
// place is reported separately, and an unknown field gets the nearest known one.
fn first_line(message: &str) -> String {
    let mut line = message.lines().next().unwrap_or(message).trim();
    line = line.strip_prefix("error: ").unwrap_or(line);
    if let Some(rest) = line.strip_prefix("line ") {
        if let Some((_, after)) = rest.split_once(": ") {
            line = after;
        }
    }
    let line = match line.rfind(" at line ") {
        Some(i) => &line[..i],
        None => line,
    };
    suggest_field(line).unwrap_or_else(|| line.to_string())
}

/// "unknown field `pth`, expected one of a, b" becomes "unknown field `pth`; did you mean `path`?".
pub(crate) fn suggest_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let expected =
        rest.split_once("expected one of ").map(|(_, e)| e).or_else(|| rest.split_once("expected ").map(|(_, e)| e))?;
    let names: Vec<&str> = expected.split(", ").map(|n| n.trim_matches('`')).collect();
    let best = crate::suggest::nearest(field, names.iter().copied(), 1);
    let hint = if best.is_empty() {
        format!("; expected one of {}", names.join(", "))
    } else {
        crate::suggest::did_you_mean(&best)
    };
    Some(format!("unknown field `{field}`{hint}"))
}
