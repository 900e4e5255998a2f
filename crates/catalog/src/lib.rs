//! The catalog of GHL v2 operations flowd can poll (triggers) and call (actions).
//!
//! Operations are data, in `catalog/*.yaml` at the repository root; they are embedded in
//! the crate at build time, and users can add their own files in the same format.
//! This crate does no IO beyond reading those files, and nothing async.

mod cost;
mod fanout;
mod load;
mod model;
mod problem;
mod suggest;
mod validate;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

pub use cost::{PollCost, WINDOW_DAYS};
pub use fanout::{FanOutCost, ParentRead, DEFAULT_MAX_PER_POLL, MAX_PER_POLL, MIN_PER_POLL};
pub use load::Category;
pub use model::*;
pub use problem::{CatalogError, Place, Problem};
pub use suggest::{did_you_mean, nearest};

include!(concat!(env!("OUT_DIR"), "/builtin_files.rs"));

/// How many triggers and actions the built-in catalog must hold.
pub const BUILTIN_TRIGGERS: usize = 55;
pub const BUILTIN_ACTIONS: usize = 71;

/// A validated set of operations, looked up by key.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// Shared, so a loaded flow can keep its operations ([`SharedOperation`]) without
    /// copying them: an operation is kilobytes, and a service may load 10,000 flows.
    operations: Arc<[Operation]>,
    places: Vec<Place>,
    by_key: HashMap<String, usize>,
    categories: Vec<Category>,
}

impl Catalog {
    /// The built-in catalog. It is validated like any other; an error here means the
    /// embedded files are broken, which the crate's tests catch before release.
    pub fn builtin() -> Result<Catalog, CatalogError> {
        let mut b = CatalogBuilder::default();
        b.add_builtin();
        b.build(true)
    }

    /// The built-in catalog plus every `*.yaml` / `*.yml` file in `dir` (sorted by name).
    pub fn with_extensions(dir: &Path) -> Result<Catalog, CatalogError> {
        let mut b = CatalogBuilder::default();
        b.add_builtin();
        b.add_dir(dir)?;
        b.build(false)
    }

    pub fn get(&self, key: &str) -> Option<&Operation> {
        self.by_key.get(key).map(|&i| &self.operations[i])
    }

    /// Like [`Catalog::get`], as a handle that keeps the operation without copying it
    /// (it keeps the catalog's operations alive, not a clone of one).
    pub fn get_shared(&self, key: &str) -> Option<SharedOperation> {
        self.by_key.get(key).map(|&i| SharedOperation { all: self.operations.clone(), index: i })
    }

    /// Where an operation was defined.
    pub fn place(&self, key: &str) -> Option<&Place> {
        self.by_key.get(key).map(|&i| &self.places[i])
    }

    /// Keys nearest to an unknown one, best first.
    pub fn suggest(&self, key: &str) -> Vec<&str> {
        nearest(key, self.operations.iter().map(|o| o.key.as_str()), 3)
    }

    /// Like [`Catalog::suggest`], restricted to one kind.
    pub fn suggest_kind(&self, key: &str, kind: Kind) -> Vec<&str> {
        nearest(key, self.operations.iter().filter(|o| o.kind == kind).map(|o| o.key.as_str()), 3)
    }

    /// All operations, in catalog order (category file, then position in the file).
    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }

    pub fn categories(&self) -> &[Category] {
        &self.categories
    }

    pub fn len(&self) -> usize {
        self.operations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }
}

/// Collects catalog files, then validates them all at once.
#[derive(Debug, Default)]
pub struct CatalogBuilder {
    categories: Vec<(Category, Place)>,
    operations: Vec<(Operation, Place)>,
    problems: Vec<Problem>,
}

impl CatalogBuilder {
    pub fn add_builtin(&mut self) -> &mut Self {
        for (name, text) in BUILTIN_FILES {
            self.add_source(&format!("<builtin>/{name}"), text);
        }
        self
    }

    /// Adds one file's text; `file` names it in problems.
    pub fn add_source(&mut self, file: &str, text: &str) -> &mut Self {
        match load::parse_file(file, text) {
            Ok(parsed) => {
                self.categories.extend(parsed.categories);
                self.operations.extend(parsed.operations);
            }
            Err(p) => self.problems.push(p),
        }
        self
    }

    /// Adds every `*.yaml` / `*.yml` file of a directory, in name order.
    pub fn add_dir(&mut self, dir: &Path) -> Result<&mut Self, CatalogError> {
        let io = |source| CatalogError::Io { path: dir.display().to_string(), source };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
        files.sort();
        for path in files {
            let text = std::fs::read_to_string(&path)
                .map_err(|source| CatalogError::Io { path: path.display().to_string(), source })?;
            self.add_source(&path.display().to_string(), &text);
        }
        Ok(self)
    }

    /// Validates everything added. `builtin_counts` also checks the 55 + 71 split.
    pub fn build(self, builtin_counts: bool) -> Result<Catalog, CatalogError> {
        let CatalogBuilder { categories, operations, mut problems } = self;
        let mut cats: Vec<Category> = Vec::new();
        for (c, place) in &categories {
            if cats.iter().any(|k| k.name == c.name) {
                problems.push(Problem {
                    place: place.clone(),
                    message: format!("category `{}` is declared twice", c.name),
                });
            } else {
                cats.push(c.clone());
            }
        }
        validate::check_unique(&operations, &mut problems);
        for (op, place) in &operations {
            validate::check_operation(op, place, &cats, &mut problems);
        }
        if builtin_counts {
            let triggers = operations.iter().filter(|(o, _)| o.kind == Kind::Trigger).count();
            let actions = operations.len() - triggers;
            if triggers != BUILTIN_TRIGGERS || actions != BUILTIN_ACTIONS {
                problems.push(Problem {
                    place: Place { file: "<builtin>".into(), line: 0, column: 0 },
                    message: format!(
                        "the built-in catalog must hold {BUILTIN_TRIGGERS} triggers and {BUILTIN_ACTIONS} actions; it holds {triggers} and {actions}"
                    ),
                });
            }
        }
        if !problems.is_empty() {
            return Err(CatalogError::Invalid(problems));
        }
        let mut by_key = HashMap::with_capacity(operations.len());
        let mut ops = Vec::with_capacity(operations.len());
        let mut places = Vec::with_capacity(operations.len());
        for (i, (op, place)) in operations.into_iter().enumerate() {
            by_key.insert(op.key.clone(), i);
            ops.push(op);
            places.push(place);
        }
        Ok(Catalog { operations: ops.into(), places, by_key, categories: cats })
    }
}

/// One operation of a catalog, shared with it: cloning the handle copies a pointer, not
/// the operation. Dereferences to [`Operation`].
#[derive(Clone)]
pub struct SharedOperation {
    all: Arc<[Operation]>,
    index: usize,
}

impl SharedOperation {
    /// A handle to an operation that is in no catalog (a stand-in built by the caller).
    pub fn new(op: Operation) -> SharedOperation {
        SharedOperation { all: Arc::new([op]), index: 0 }
    }
}

impl std::ops::Deref for SharedOperation {
    type Target = Operation;
    fn deref(&self) -> &Operation {
        &self.all[self.index]
    }
}

impl std::fmt::Debug for SharedOperation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}
