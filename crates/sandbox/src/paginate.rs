//! Paging helpers shared by list handlers. Every list is ordered deterministically before
//! it is cut, so a client that follows the catalog's pagination sees each item once.

use serde_json::{Map, Value};

/// A non-negative integer parameter given as number or text.
pub fn uint(v: Option<&Value>) -> Option<usize> {
    match v? {
        Value::Number(n) => {
            n.as_u64().map(|n| n as usize).or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as usize))
        }
        Value::String(s) => s.trim().parse::<usize>().ok(),
        _ => None,
    }
}

/// `items[offset .. offset + limit]`, cloned.
pub fn window<T: Clone>(items: &[T], offset: usize, limit: usize) -> Vec<T> {
    items.iter().skip(offset).take(limit).cloned().collect()
}

/// Reads `offset`/`limit` style parameters from a map (query or body).
pub fn offset_limit(params: &Map<String, Value>, offset: &str, limit: &str, default_limit: usize) -> (usize, usize) {
    let off = uint(params.get(offset)).unwrap_or(0);
    let lim = uint(params.get(limit)).unwrap_or(default_limit);
    (off, lim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_numbers_and_text() {
        assert_eq!(uint(Some(&json!("10"))), Some(10));
        assert_eq!(uint(Some(&json!(3))), Some(3));
        assert_eq!(uint(Some(&json!("x"))), None);
        assert_eq!(window(&[1, 2, 3, 4], 1, 2), vec![2, 3]);
    }
}
