//! The route table: method + path template → catalog operation, built once at start.
//!
//! Templates are split into segments; a request is matched only against the templates of
//! its method with the same number of segments, preferring literal segments over
//! placeholders (`/contacts/search` beats `/contacts/{contactId}`).

use std::collections::HashMap;

use catalog::{Catalog, Method, Operation};

use crate::error::SandboxError;

#[derive(Debug, Clone)]
enum Segment {
    Literal(String),
    Param(String),
}

#[derive(Debug)]
pub struct Route {
    /// Index into [`RouteTable::operations`] of the operation that serves the route.
    pub op: usize,
    segments: Vec<Segment>,
    literals: usize,
}

/// Matched path parameters, in template order.
pub type PathParams = Vec<(String, String)>;

impl Route {
    /// Literal segments equal, placeholders non-empty (`parts` has as many segments).
    fn matches(&self, parts: &[&str]) -> bool {
        self.segments.iter().zip(parts).all(|(seg, part)| match seg {
            Segment::Literal(l) => l == part,
            Segment::Param(_) => !part.is_empty(),
        })
    }
}

#[derive(Debug)]
pub struct RouteTable {
    pub operations: Vec<Operation>,
    routes: Vec<Route>,
    by_shape: HashMap<(Method, usize), Vec<usize>>,
    /// Other operations that share a route with the one serving it (same method and path).
    pub aliases: Vec<(String, String)>,
}

impl RouteTable {
    pub fn build(catalog: &Catalog) -> Result<RouteTable, SandboxError> {
        let operations: Vec<Operation> = catalog.operations().to_vec();
        let mut routes: Vec<Route> = Vec::new();
        let mut seen: HashMap<(Method, String), usize> = HashMap::new();
        let mut aliases = Vec::new();
        for (i, op) in operations.iter().enumerate() {
            if let Some(&first) = seen.get(&(op.method, op.path.clone())) {
                aliases.push((op.key.clone(), operations[first].key.clone()));
                continue;
            }
            seen.insert((op.method, op.path.clone()), i);
            let segments: Vec<Segment> = split(&op.path)
                .map(|s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(name) => Segment::Param(name.to_string()),
                    None => Segment::Literal(s.to_string()),
                })
                .collect();
            let literals = segments.iter().filter(|s| matches!(s, Segment::Literal(_))).count();
            routes.push(Route { op: i, segments, literals });
        }
        let mut by_shape: HashMap<(Method, usize), Vec<usize>> = HashMap::new();
        for (ri, r) in routes.iter().enumerate() {
            by_shape.entry((operations[r.op].method, r.segments.len())).or_default().push(ri);
        }
        for list in by_shape.values_mut() {
            list.sort_by_key(|&ri| std::cmp::Reverse(routes[ri].literals));
        }
        if routes.is_empty() {
            return Err(SandboxError::Routes("the catalog has no operations".into()));
        }
        Ok(RouteTable { operations, routes, by_shape, aliases })
    }

    /// The operation serving `method path`, with its path parameters. A missing or extra
    /// trailing slash is forgiven when the exact path matches nothing.
    pub fn find(&self, method: Method, path: &str) -> Option<(usize, PathParams)> {
        self.find_exact(method, path).or_else(|| {
            let alt = match path.strip_suffix('/') {
                Some(p) if !p.is_empty() => p.to_string(),
                _ => format!("{path}/"),
            };
            self.find_exact(method, &alt)
        })
    }

    fn find_exact(&self, method: Method, path: &str) -> Option<(usize, PathParams)> {
        let parts: Vec<&str> = split(path).collect();
        let candidates = self.by_shape.get(&(method, parts.len()))?;
        // Only the winner's parameters are decoded and copied.
        let route = candidates.iter().map(|&ri| &self.routes[ri]).find(|r| r.matches(&parts))?;
        let params = route
            .segments
            .iter()
            .zip(&parts)
            .filter_map(|(seg, part)| match seg {
                Segment::Param(name) => {
                    Some((name.clone(), percent_encoding::percent_decode_str(part).decode_utf8_lossy().into_owned()))
                }
                Segment::Literal(_) => None,
            })
            .collect();
        Some((route.op, params))
    }

    /// Number of distinct routes (operations sharing a method and path count once).
    pub fn len(&self) -> usize {
        self.routes.len()
    }
}

fn split(path: &str) -> impl Iterator<Item = &str> {
    path.strip_prefix('/').unwrap_or(path).split('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let cat = Catalog::builtin().expect("builtin catalog");
        RouteTable::build(&cat).expect("routes")
    }

    #[test]
    fn literal_beats_placeholder() {
        let t = table();
        let (op, params) = t.find(Method::Post, "/contacts/search").expect("match");
        assert_eq!(t.operations[op].key, "contacts.search_contacts");
        assert!(params.is_empty());
        let (op, params) = t.find(Method::Get, "/contacts/abc").expect("match");
        assert_eq!(t.operations[op].key, "contacts.get_contact");
        assert_eq!(params, vec![("contactId".to_string(), "abc".to_string())]);
        let (op, _) = t.find(Method::Delete, "/contacts/abc/campaigns/removeAll").expect("match");
        assert_eq!(t.operations[op].key, "contacts.remove_from_all_campaigns");
    }

    #[test]
    fn every_operation_is_reachable_or_aliased() {
        let t = table();
        let served = t.len() + t.aliases.len();
        assert_eq!(served, t.operations.len());
        assert!(t.find(Method::Get, "/contacts").is_some(), "trailing slash forgiven");
        assert!(t.find(Method::Get, "/nope/x").is_none());
    }
}
