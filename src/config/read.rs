//! Reading the config file key by key, so that every unknown key and every bad value is
//! found in one pass, at every depth, each with its key path (`models.gpt-4o[1].deploymnet`).
//!
//! serde stops at the first error of a table, and an untagged enum forgets which field was
//! wrong. Here each key of a table is deserialized on its own (a table of that one key), so
//! each failure is that key's; the raw types stay the one list of their fields (serde's
//! `deny_unknown_fields` names the unknown ones). A nested table, list or map is read the
//! same way by the wrappers below, which pass their problems up inside a serde error
//! message (its relative path and message, separated by control characters that neither
//! a TOML key nor a serde message holds); the level above prefixes its own key.
//!
//! A type read with [`table`] must accept any one of its keys alone: every field optional
//! (`Option` or `#[serde(default)]`); required fields are checked by the validators.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

/// Between a problem's path and its message.
const PATH_END: char = '\u{1f}';
/// Between two problems.
const NEXT: char = '\u{1e}';

/// One problem: where (a key path, empty for the table itself) and what.
pub(super) type Problem = (String, String);

/// Reads `table` into `T` key by key: `T` when every key is good, else every problem.
pub(super) fn table<T: DeserializeOwned>(table: toml::Table) -> Result<T, Vec<Problem>> {
    let mut problems = Vec::new();
    for (key, value) in &table {
        let single = toml::Table::from_iter([(key.clone(), value.clone())]);
        if let Err(e) = T::deserialize(single) {
            problems.extend(decode(key, e.message()));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    // Each key was good alone; what is left is what only the whole can tell.
    T::deserialize(table).map_err(|e| vec![(String::new(), e.message().to_owned())])
}

/// `key`'s problems from a serde message: nested ones (from the wrappers below) get `key`
/// in front of their path, a plain message is `key`'s own.
fn decode(key: &str, message: &str) -> Vec<Problem> {
    message
        .split(NEXT)
        .map(|record| match record.split_once(PATH_END) {
            Some((path, message)) => (join(key, path), message.to_owned()),
            None => (key.to_owned(), record.to_owned()),
        })
        .collect()
}

/// `retry` + `attempts` -> `retry.attempts`; `a` + `[1].b` -> `a[1].b`.
fn join(key: &str, path: &str) -> String {
    match path {
        "" => key.to_owned(),
        p if p.starts_with('[') || key.is_empty() => format!("{key}{p}"),
        p => format!("{key}.{p}"),
    }
}

/// Problems as one serde error, for the level above to [`decode`].
fn encode<E: serde::de::Error>(problems: Vec<Problem>) -> E {
    let records: Vec<String> = problems
        .into_iter()
        .map(|(path, message)| format!("{path}{PATH_END}{message}"))
        .collect();
    E::custom(records.join(&NEXT.to_string()))
}

/// Problems with their paths, one line each: "`retry.attempts`: invalid type ...".
pub(super) fn lines(problems: Vec<Problem>) -> Vec<String> {
    problems
        .into_iter()
        .map(|(path, message)| {
            // serde says "unknown field `x`, expected one of ..."; the path already names it.
            let message = match message
                .strip_prefix("unknown field `")
                .and_then(|rest| rest.split_once("`, "))
            {
                Some((_, expected)) => format!("unknown key, {expected}"),
                None => message,
            };
            if path.is_empty() {
                message
            } else {
                format!("`{path}`: {message}")
            }
        })
        .collect()
}

/// A nested table (`[retry]`) read key by key with [`table`].
#[derive(Clone, Debug, Default)]
pub(super) struct Section<S>(pub(super) S);

impl<'de, S: DeserializeOwned> Deserialize<'de> for Section<S> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = toml::Table::deserialize(d)?;
        table(raw).map(Section).map_err(encode)
    }
}

/// A table of named entries (`[models]`, `[limits.deployments]`), each read on its own, in
/// the file's order: a problem names its entry.
#[derive(Clone, Debug)]
pub(super) struct Entries<V>(pub(super) Vec<(String, V)>);

impl<V> Default for Entries<V> {
    fn default() -> Self {
        Entries(Vec::new())
    }
}

impl<'de, V: DeserializeOwned> Deserialize<'de> for Entries<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = toml::Table::deserialize(d)?;
        let mut entries = Vec::with_capacity(raw.len());
        let mut problems = Vec::new();
        for (key, value) in raw {
            match V::deserialize(value) {
                Ok(v) => entries.push((key, v)),
                Err(e) => problems.extend(decode(&key, e.message())),
            }
        }
        if problems.is_empty() {
            Ok(Entries(entries))
        } else {
            Err(encode(problems))
        }
    }
}

/// A list (`[[apps]]`, a model's backends), each item read on its own: a problem names its
/// index.
#[derive(Clone, Debug)]
pub(super) struct List<V>(pub(super) Vec<V>);

impl<V> Default for List<V> {
    fn default() -> Self {
        List(Vec::new())
    }
}

impl<'de, V: DeserializeOwned> Deserialize<'de> for List<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Vec::<toml::Value>::deserialize(d)?;
        let mut items = Vec::with_capacity(raw.len());
        let mut problems = Vec::new();
        for (i, value) in raw.into_iter().enumerate() {
            match V::deserialize(value) {
                Ok(v) => items.push(v),
                Err(e) => problems.extend(decode(&format!("[{i}]"), e.message())),
            }
        }
        if problems.is_empty() {
            Ok(List(items))
        } else {
            Err(encode(problems))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        n: Option<u32>,
        s: Option<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        top: Option<u32>,
        #[serde(default)]
        inner: Section<Inner>,
        #[serde(default)]
        map: Entries<List<Section<Inner>>>,
    }

    fn read(text: &str) -> Result<Outer, Vec<String>> {
        table::<Outer>(toml::from_str(text).unwrap()).map_err(lines)
    }

    #[test]
    fn every_problem_at_every_depth_has_its_path() {
        let problems = read(
            "top = \"x\"\ntpo = 1\n[inner]\nn = \"x\"\nss = 1\ns = 2\n\
             [map]\na = [{ n = 1 }, { m = 1, n = -1 }]\nb = 3\n",
        )
        .unwrap_err();
        let text = problems.join("\n");
        assert_eq!(problems.len(), 8, "{text}");
        for path in [
            "`top`: invalid type",
            "`tpo`: unknown key, expected one of `top`, `inner`, `map`",
            "`inner.n`: invalid type",
            "`inner.ss`: unknown key",
            "`inner.s`: invalid type",
            "`map.a[1].m`: unknown key",
            "`map.a[1].n`: invalid value",
            "`map.b`: invalid type",
        ] {
            assert!(text.contains(path), "{path} in\n{text}");
        }
    }

    #[test]
    fn good_tables_read_whole() {
        let outer = read("top = 1\n[inner]\nn = 2\n[map]\na = [{ s = \"x\" }]\n").unwrap();
        assert_eq!(outer.top, Some(1));
        assert_eq!(outer.inner.0.n, Some(2));
        assert_eq!(outer.map.0[0].0, "a");
        assert_eq!(outer.map.0[0].1.0[0].0.s.as_deref(), Some("x"));
    }
}
