//! Reading the Prometheus text format back: what `meshctl stat` and the tests do with a
//! `/metrics` scrape. Only samples are read (`name{label="value",...} number`); comments, type
//! lines and timestamps are skipped.

use std::collections::BTreeMap;

/// One sample of a scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series name (`rpc_server_call_duration_seconds_count`).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

impl Sample {
    /// A label's value, or "" when it has none.
    pub fn label(&self, key: &str) -> &str {
        self.labels.get(key).map_or("", String::as_str)
    }
}

/// Every sample of a scrape.
#[derive(Debug, Clone, Default)]
pub struct Samples(pub Vec<Sample>);

impl Samples {
    /// Parses a scrape; lines that are not samples are skipped.
    pub fn parse(text: &str) -> Self {
        Self(text.lines().filter_map(parse_line).collect())
    }

    /// The samples of `name` whose labels include every pair of `matching`.
    pub fn select<'a>(
        &'a self,
        name: &'a str,
        matching: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.0.iter().filter(move |sample| {
            sample.name == name
                && matching
                    .iter()
                    .all(|(key, value)| sample.label(key) == *value)
        })
    }

    /// The sum of the samples [`Samples::select`] picks (0 when there are none).
    pub fn sum(&self, name: &str, matching: &[(&str, &str)]) -> f64 {
        self.select(name, matching).map(|s| s.value).sum()
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let (labels, rest) = parse_labels(&line[open + 1..])?;
            (&line[..open], labels, rest)
        }
        None => {
            let space = line.find(' ')?;
            (&line[..space], BTreeMap::new(), &line[space..])
        }
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `key="value",...}` → the labels and what follows the `}`.
fn parse_labels(text: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_owned();
        let mut chars = rest[eq + 1..].char_indices();
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        let mut escaped = false;
        let mut end = None;
        for (i, c) in chars {
            match (escaped, c) {
                (true, 'n') => {
                    value.push('\n');
                    escaped = false;
                }
                (true, c) => {
                    value.push(c);
                    escaped = false;
                }
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(eq + 1 + i + 1);
                    break;
                }
                (false, c) => value.push(c),
            }
        }
        labels.insert(key, value);
        rest = &rest[end?..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_with_their_labels_and_comments_are_skipped() {
        let text = "# HELP x a counter\n# TYPE x counter\n\
            x_total{a=\"1\",b=\"two, \\\"quoted\\\"\"} 3\n\
            y 4.5\n\
            h_bucket{le=\"+Inf\"} 7 1700000000\n\
            garbage{\n";
        let samples = Samples::parse(text);
        assert_eq!(samples.0.len(), 3);
        assert_eq!(samples.0[0].label("b"), "two, \"quoted\"");
        assert_eq!(samples.sum("x_total", &[("a", "1")]), 3.0);
        assert_eq!(samples.sum("x_total", &[("a", "2")]), 0.0);
        assert_eq!(samples.sum("y", &[]), 4.5);
        assert_eq!(samples.0[2].label("le"), "+Inf");
    }
}
