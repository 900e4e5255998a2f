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

// serde-saphyr appends a source excerpt to its message; the place is reported separately.
fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or(message).trim();
    strip_location_suffix(line).to_string()
}

fn strip_location_suffix(line: &str) -> &str {
    match line.rfind(" at line ") {
        Some(i) => &line[..i],
        None => line,
    }
}
