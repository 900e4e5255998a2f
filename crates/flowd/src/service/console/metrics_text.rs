//! Reading the engine's Prometheus text (`Metrics::encode`, what `/metrics` serves) back
//! into samples, so the flows and health pages show the same figures a scraper sees
//! without the engine keeping a second set of counters.

use std::collections::BTreeMap;

pub type Labels = BTreeMap<String, String>;

pub struct Samples(Vec<(String, Labels, f64)>);

/// The samples of an OpenMetrics text; comment lines and lines that do not parse are
/// left out.
pub fn parse(text: &str) -> Samples {
    Samples(text.lines().filter(|l| !l.starts_with('#')).filter_map(sample).collect())
}

fn sample(line: &str) -> Option<(String, Labels, f64)> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let Some((name, rest)) = series.split_once('{') else {
        return Some((series.to_string(), Labels::new(), value));
    };
    let mut labels = Labels::new();
    let mut rest = rest.strip_suffix('}')?;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        // Values escape `"` and `\` with a backslash.
        let mut val = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => val.push(chars.next()?.1),
                (i, '"') => break i,
                (_, c) => val.push(c),
            }
        };
        labels.insert(key.trim_start_matches(',').to_string(), val);
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some((name.to_string(), labels, value))
}

impl Samples {
    pub fn sum(&self, name: &str, keep: impl Fn(&Labels) -> bool) -> f64 {
        self.0.iter().filter(|(n, l, _)| n == name && keep(l)).map(|(_, _, v)| v).sum()
    }

    pub fn first(&self, name: &str, keep: impl Fn(&Labels) -> bool) -> Option<f64> {
        self.0.iter().find(|(n, l, _)| n == name && keep(l)).map(|(_, _, v)| *v)
    }

    /// The values label `label` takes in samples of `name`, each once, sorted.
    pub fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let set: std::collections::BTreeSet<String> =
            self.0.iter().filter(|(n, _, _)| n == name).filter_map(|(_, l, _)| l.get(label).cloned()).collect();
        set.into_iter().collect()
    }

    /// `flow`'s share of the GHL requests sent for the locations it used, since start.
    pub fn request_share(&self, flow: &str) -> Option<f64> {
        const NAME: &str = "flowd_ghl_requests_total";
        let is_flow = |l: &Labels| l.get("flow").map(String::as_str) == Some(flow);
        let locations: Vec<String> = self
            .0
            .iter()
            .filter(|(n, l, _)| n == NAME && is_flow(l))
            .filter_map(|(_, l, _)| l.get("location").cloned())
            .collect();
        let total = self.sum(NAME, |l| l.get("location").is_some_and(|loc| locations.contains(loc)));
        (total > 0.0).then(|| self.sum(NAME, is_flow) / total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_with_and_without_labels() {
        let text = "# HELP x\nflowd_polls_total{flow=\"a\",op=\"o\",result=\"ok\"} 3\nflowd_queue_depth 2\n\
            flowd_ghl_requests_total{location=\"L\",flow=\"a\",purpose=\"poll\"} 3\n\
            flowd_ghl_requests_total{location=\"L\",flow=\"b \\\"q\\\"\",purpose=\"step\"} 1\n# EOF\n";
        let s = parse(text);
        assert_eq!(s.sum("flowd_polls_total", |l| l.get("result").map(String::as_str) == Some("ok")), 3.0);
        assert_eq!(s.first("flowd_queue_depth", |_| true), Some(2.0));
        assert_eq!(s.label_values("flowd_ghl_requests_total", "flow"), vec!["a".to_string(), "b \"q\"".to_string()]);
        assert_eq!(s.request_share("a"), Some(0.75));
        assert_eq!(s.request_share("nope"), None);
    }
}
