//! Usage reports: the query of `GET /admin/usage` and `ollama-pool usage` — a date range,
//! optional client / provider / model filters, grouped by any of day, client, provider, model —
//! and its JSON, CSV and table forms. Both callers parse their parameters here, so a bad one
//! gets the same message from either.

use super::UsageRow;
use crate::pool::calendar;
use serde_json::{json, Value};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Field {
    Day,
    Client,
    Provider,
    Model,
}

impl Field {
    pub const ALL: [Field; 4] = [Field::Day, Field::Client, Field::Provider, Field::Model];

    pub fn as_str(self) -> &'static str {
        match self {
            Field::Day => "day",
            Field::Client => "client",
            Field::Provider => "provider",
            Field::Model => "model",
        }
    }
}

/// A bad parameter: which one, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{param}: {message}")]
pub struct BadParam {
    pub param: &'static str,
    pub message: String,
}

fn bad(param: &'static str, message: impl Into<String>) -> BadParam {
    BadParam { param, message: message.into() }
}

/// Days a report covers when `from` is not given: the 30 days up to `to`.
const DEFAULT_DAYS: u32 = 30;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub from: u32,
    pub to: u32,
    pub client: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub group_by: Vec<Field>,
}

impl Query {
    /// From the parameters as given (None = absent); `today` is the default `to`.
    pub fn parse(
        from: Option<&str>,
        to: Option<&str>,
        group_by: Option<&str>,
        filters: [Option<&str>; 3],
        today: u32,
    ) -> Result<Query, BadParam> {
        let date = |name: &'static str, v: &str| {
            calendar::parse_date(v).ok_or_else(|| bad(name, format!("{v:?} is not a date (want YYYY-MM-DD, UTC)")))
        };
        let to = to.map(|v| date("to", v)).transpose()?.unwrap_or(today);
        let from = from.map(|v| date("from", v)).transpose()?.unwrap_or(to.saturating_sub(DEFAULT_DAYS - 1));
        if from > to {
            return Err(bad("from", format!("{} is after to ({})", calendar::date(from), calendar::date(to))));
        }
        let group_by = match group_by.map(str::trim).filter(|g| !g.is_empty()) {
            None => Field::ALL.to_vec(),
            Some(g) => {
                let mut fields = Vec::new();
                for name in g.split(',').map(str::trim) {
                    let f = Field::ALL.into_iter().find(|f| f.as_str() == name).ok_or_else(|| {
                        bad("group_by", format!("unknown field {name:?} (want day, client, provider or model)"))
                    })?;
                    if !fields.contains(&f) {
                        fields.push(f);
                    }
                }
                fields.sort();
                fields
            }
        };
        let [client, provider, model] = filters.map(|f| f.filter(|v| !v.is_empty()).map(str::to_string));
        Ok(Query { from, to, client, provider, model, group_by })
    }

    fn keeps(&self, r: &UsageRow) -> bool {
        (self.from..=self.to).contains(&r.day)
            && self.client.as_deref().is_none_or(|c| r.client == c)
            && self.provider.as_deref().is_none_or(|p| r.provider == p)
            && self.model.as_deref().is_none_or(|m| r.model == m)
    }
}

/// A report: grouped rows (in order of their group values) and their totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub group_by: Vec<Field>,
    pub rows: Vec<(Vec<String>, Counts)>,
    pub totals: Counts,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Counts {
    fn add(&mut self, r: &UsageRow) {
        self.requests += r.requests;
        self.errors += r.errors;
        self.prompt_tokens += r.prompt_tokens;
        self.completion_tokens += r.completion_tokens;
    }

    fn json(&self) -> serde_json::Map<String, Value> {
        let Value::Object(m) = json!({
            "requests": self.requests,
            "errors": self.errors,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }) else {
            unreachable!("an object literal")
        };
        m
    }
}

const COUNT_COLUMNS: [&str; 5] = ["requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens"];

pub fn build(q: &Query, rows: &[UsageRow]) -> Report {
    let mut groups: BTreeMap<Vec<String>, Counts> = BTreeMap::new();
    let mut totals = Counts::default();
    for r in rows.iter().filter(|r| q.keeps(r)) {
        let key = q
            .group_by
            .iter()
            .map(|f| match f {
                Field::Day => calendar::date(r.day),
                Field::Client => r.client.clone(),
                Field::Provider => r.provider.clone(),
                Field::Model => r.model.clone(),
            })
            .collect();
        groups.entry(key).or_default().add(r);
        totals.add(r);
    }
    Report { group_by: q.group_by.clone(), rows: groups.into_iter().collect(), totals }
}

impl Report {
    pub fn to_json(&self, q: &Query) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|(key, counts)| {
                let mut m = serde_json::Map::new();
                for (f, v) in self.group_by.iter().zip(key) {
                    m.insert(f.as_str().into(), Value::String(v.clone()));
                }
                m.extend(counts.json());
                Value::Object(m)
            })
            .collect();
        json!({
            "from": calendar::date(q.from),
            "to": calendar::date(q.to),
            "group_by": self.group_by.iter().map(|f| f.as_str()).collect::<Vec<_>>(),
            "rows": rows,
            "totals": Value::Object(self.totals.json()),
        })
    }

    fn cells(counts: &Counts) -> [String; 5] {
        [
            counts.requests,
            counts.errors,
            counts.prompt_tokens,
            counts.completion_tokens,
            counts.prompt_tokens + counts.completion_tokens,
        ]
        .map(|n| n.to_string())
    }

    fn header(&self) -> Vec<&'static str> {
        self.group_by.iter().map(|f| f.as_str()).chain(COUNT_COLUMNS).collect()
    }

    /// RFC 4180 CSV with a header line; client and model names are quoted when they need it.
    /// A name a spreadsheet would run as a formula (`=`, `+`, `-`, `@` first: model names come
    /// from clients) gets a leading `'`.
    pub fn to_csv(&self) -> String {
        let quote = |s: &str| {
            let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{s}") } else { s.to_string() };
            if s.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s
            }
        };
        let mut out = self.header().join(",");
        out.push_str("\r\n");
        for (key, counts) in &self.rows {
            let line: Vec<String> = key.iter().map(|k| quote(k)).chain(Self::cells(counts)).collect();
            out.push_str(&line.join(","));
            out.push_str("\r\n");
        }
        out
    }

    /// An aligned text table with a totals line, for a terminal.
    pub fn to_table(&self) -> String {
        let mut lines: Vec<Vec<String>> = vec![self.header().iter().map(|s| s.to_string()).collect()];
        for (key, counts) in &self.rows {
            lines.push(key.iter().cloned().chain(Self::cells(counts)).collect());
        }
        let mut total: Vec<String> = vec![String::new(); self.group_by.len()];
        if let Some(first) = total.first_mut() {
            *first = "total".into();
        }
        total.extend(Self::cells(&self.totals));
        lines.push(total);
        let widths: Vec<usize> =
            (0..lines[0].len()).map(|i| lines.iter().map(|l| l[i].chars().count()).max().unwrap_or(0)).collect();
        let keys = self.group_by.len();
        let mut out = String::new();
        for l in &lines {
            let cells: Vec<String> = l
                .iter()
                .enumerate()
                .map(
                    |(i, c)| {
                        if i < keys {
                            format!("{c:<w$}", w = widths[i])
                        } else {
                            format!("{c:>w$}", w = widths[i])
                        }
                    },
                )
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(day: u32, client: &str, model: &str, p: u64, c: u64) -> UsageRow {
        UsageRow {
            day,
            client: client.into(),
            provider: "ollama".into(),
            model: model.into(),
            requests: 1,
            errors: 0,
            prompt_tokens: p,
            completion_tokens: c,
        }
    }

    #[test]
    fn parameters_are_checked_by_name() {
        let today = calendar::parse_date("2026-12-01").unwrap();
        let q = Query::parse(None, None, None, [None; 3], today).unwrap();
        assert_eq!((q.from, q.to, q.group_by.len()), (today - 29, today, 4));
        let e = Query::parse(Some("2026-12-02"), Some("2026-12-01"), None, [None; 3], today).unwrap_err();
        assert_eq!(e.param, "from");
        assert_eq!(Query::parse(Some("yesterday"), None, None, [None; 3], today).unwrap_err().param, "from");
        assert_eq!(Query::parse(None, Some("2026-02-30"), None, [None; 3], today).unwrap_err().param, "to");
        let e = Query::parse(None, None, Some("day,colour"), [None; 3], today).unwrap_err();
        assert_eq!(e.to_string(), "group_by: unknown field \"colour\" (want day, client, provider or model)");
        let q = Query::parse(None, None, Some("model, client,model"), [None; 3], today).unwrap();
        assert_eq!(q.group_by, [Field::Client, Field::Model]);
    }

    #[test]
    fn groups_filters_and_forms() {
        let d = calendar::parse_date("2026-12-01").unwrap();
        let rows = [
            row(d, "a", "m1", 10, 1),
            row(d, "a", "m2", 20, 2),
            row(d, "b,c", "m1", 30, 3),
            row(d - 40, "a", "m1", 99, 9),
        ];
        let q = Query::parse(None, None, Some("client"), [None; 3], d).unwrap();
        let r = build(&q, &rows);
        assert_eq!(r.rows.len(), 2, "the row of 40 days ago is outside the default range");
        assert_eq!(r.rows[0].1, Counts { requests: 2, errors: 0, prompt_tokens: 30, completion_tokens: 3 });
        assert_eq!(r.totals.prompt_tokens, 60);
        assert_eq!(r.to_csv(), "client,requests,errors,prompt_tokens,completion_tokens,total_tokens\r\na,2,0,30,3,33\r\n\"b,c\",1,0,30,3,33\r\n");
        let j = r.to_json(&q);
        assert_eq!(j["rows"][1]["client"], "b,c");
        assert_eq!(j["totals"]["total_tokens"], 66);
        assert!(j["rows"][0].get("model").is_none(), "not grouped by model: no model field");
        let q = Query::parse(None, None, Some("model"), [Some("a"), None, None], d).unwrap();
        let r = build(&q, &rows);
        assert_eq!(
            r.rows.iter().map(|(k, c)| (k[0].as_str(), c.prompt_tokens)).collect::<Vec<_>>(),
            [("m1", 10), ("m2", 20)]
        );
        assert!(r.to_table().lines().last().unwrap().starts_with("total"));
        let q = Query::parse(None, None, Some("model"), [None; 3], d).unwrap();
        let csv = build(&q, &[row(d, "a", "=HYPERLINK(\"x\")", 1, 1)]).to_csv();
        assert!(csv.contains("\r\n\"'=HYPERLINK(\"\"x\"\")\",1,"), "{csv}");
    }
}
