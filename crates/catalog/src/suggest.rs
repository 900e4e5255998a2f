//! "Did you mean" for keys, categories and field names.

/// Candidates closest to `wanted`, best first: those within a small edit distance, plus
/// those that share its last dotted segment (so `get_contact` finds `contacts.get_contact`).
pub fn nearest<'a, I>(wanted: &str, candidates: I, max: usize) -> Vec<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let wanted_lc = wanted.to_ascii_lowercase();
    let wanted_tail = wanted_lc.rsplit('.').next().unwrap_or(&wanted_lc).to_string();
    let mut scored: Vec<(f64, &'a str)> = candidates
        .into_iter()
        .filter_map(|c| {
            let lc = c.to_ascii_lowercase();
            let tail = lc.rsplit('.').next().unwrap_or(&lc);
            let whole = strsim::jaro_winkler(&wanted_lc, &lc);
            let tail_score = strsim::jaro_winkler(&wanted_tail, tail);
            let contains = lc.contains(&wanted_lc) || (wanted_tail.len() > 3 && tail.contains(&wanted_tail));
            let score = whole.max(tail_score * 0.98) + if contains { 0.1 } else { 0.0 };
            (score >= 0.8).then_some((score, c))
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(max).map(|(_, c)| c).collect()
}

/// ", did you mean `a`, `b`?" or nothing.
pub fn did_you_mean(suggestions: &[&str]) -> String {
    if suggestions.is_empty() {
        return String::new();
    }
    let list: Vec<String> = suggestions.iter().map(|s| format!("`{s}`")).collect();
    format!("; did you mean {}?", list.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_typos_and_bare_names() {
        let keys = ["contacts.get_contact", "contacts.create_task", "contacts.get_contact_task"];
        assert_eq!(nearest("contacts.get_contcat", keys, 1), vec!["contacts.get_contact"]);
        assert_eq!(nearest("create_task", keys, 1), vec!["contacts.create_task"]);
        assert!(nearest("zzzz", keys, 3).is_empty());
    }

    #[test]
    fn formats_suggestions() {
        assert_eq!(did_you_mean(&[]), "");
        assert_eq!(did_you_mean(&["a", "b"]), "; did you mean `a`, `b`?");
    }
}
