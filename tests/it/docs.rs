//! The configuration reference is checked against the code: every key the config structs accept
//! (read from them by `config::accepted_keys`, not listed by hand) must be documented both in the
//! commented example `config/oneroster-sync.toml` and in `docs/configuration.md`.

use std::path::Path;

use oneroster_sync::config::{ConfigTable, accepted_keys};
use oneroster_sync::domain::Entity;

const EXAMPLE: &str = "config/oneroster-sync.toml";
const REFERENCE: &str = "docs/configuration.md";

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The keys of `tables` that `toml` (the commented example) or `markdown` (the reference) does
/// not document, as `"<file>: [table] key"`.
fn undocumented(tables: &[ConfigTable], toml: &str, markdown: &str) -> Vec<String> {
    let mut missing = Vec::new();
    for t in tables {
        let shown = if t.table.is_empty() {
            "top level".to_owned()
        } else {
            format!("[{}]", t.table)
        };
        for key in t.keys {
            if !in_example(toml, t.table, key) {
                missing.push(format!("{EXAMPLE}: {shown} {key}"));
            }
            if !in_reference(markdown, t.table, key) {
                missing.push(format!("{REFERENCE}: {shown} {key}"));
            }
        }
    }
    missing
}

/// A TOML line with its comment marks removed: commented-out keys (`# scope = "..."`) document a
/// key as well as set ones.
fn uncommented(line: &str) -> &str {
    line.trim_start().trim_start_matches('#').trim()
}

/// `[a.b]` or `[[a]]` (possibly commented out) -> `a.b` / `a`.
fn header(line: &str) -> Option<&str> {
    let line = uncommented(line);
    let inner = line.strip_prefix('[')?.split(']').next()?;
    let inner = inner.trim_start_matches('[').trim();
    let valid = !inner.is_empty()
        && inner
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    valid.then_some(inner)
}

/// Whether the example documents `key` of `table`: as a (possibly commented) assignment in the
/// table's section or in a section nested under its first component (the limits sub-tables live
/// inside the district's section), as a component of a (possibly commented) header there
/// (`[districts.limits.enrollments]` shows `limits`), or, for a top-level key, as a header.
fn in_example(toml: &str, table: &str, key: &str) -> bool {
    let root = table.split('.').next().unwrap_or_default();
    let mut section = "";
    for line in toml.lines() {
        let heading = header(line);
        if table.is_empty() && heading == Some(key) {
            return true;
        }
        // Only real (uncommented) headers start sections; commented ones are examples within one.
        if let Some(h) = heading
            && !line.trim_start().starts_with('#')
        {
            section = h;
            continue;
        }
        let ours = if table.is_empty() {
            section.is_empty()
        } else {
            section == root || section.starts_with(&format!("{root}."))
        };
        if !ours {
            continue;
        }
        let assigned = uncommented(line)
            .split_once('=')
            .is_some_and(|(lhs, _)| lhs.trim() == key);
        let in_header = heading.is_some_and(|h| h.split('.').any(|part| part == key));
        if assigned || in_header {
            return true;
        }
    }
    false
}

/// Whether the reference documents `key` of `table`: a table row starting with `` `key` `` under
/// the heading that names the table (`` `[table]` `` or `` `[[table]]` ``; "Top level" for the
/// top level).
fn in_reference(markdown: &str, table: &str, key: &str) -> bool {
    let names_table = |heading: &str| {
        if table.is_empty() {
            heading.contains("Top level")
        } else {
            heading.contains(&format!("`[{table}]`")) || heading.contains(&format!("`[[{table}]]`"))
        }
    };
    let row = format!("| `{key}` |");
    let mut inside = false;
    for line in markdown.lines() {
        if line.starts_with('#') {
            inside = names_table(line);
        } else if inside && line.starts_with(&row) {
            return true;
        }
    }
    false
}

#[test]
fn the_introspected_keys_are_the_config_structs_fields() {
    let tables = accepted_keys();
    let keys = |table: &str| {
        tables
            .iter()
            .find(|t| t.table == table)
            .map(|t| t.keys.to_vec())
            .unwrap_or_default()
    };
    // A few known keys per table: an introspection that found nothing would pass every check.
    for (table, expected) in [
        ("", &["database", "districts_dir", "districts"][..]),
        ("database", &["url"][..]),
        ("store", &["url"][..]),
        ("log", &["format", "level"][..]),
        (
            "districts",
            &[
                "id",
                "base_url",
                "client_secret_env",
                "max_delete_count",
                "limits",
            ][..],
        ),
        (
            "districts.limits.<entity>",
            &["max_delete_count", "min_population"][..],
        ),
    ] {
        let found = keys(table);
        for key in expected {
            assert!(found.contains(key), "[{table}] lacks {key}: {found:?}");
        }
    }
    // Every top-level key but `districts_dir` is a table, whose keys must be listed too.
    for key in keys("") {
        if key != "districts_dir" {
            assert!(
                tables.iter().any(|t| t.table == key),
                "top-level table {key} has no entry in accepted_keys()"
            );
        }
    }
}

#[test]
fn every_accepted_key_is_documented_in_the_example_and_the_reference() {
    let missing = undocumented(&accepted_keys(), &read(EXAMPLE), &read(REFERENCE));
    assert!(
        missing.is_empty(),
        "keys accepted by the configuration but not documented:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn an_undocumented_key_fails_the_check() {
    let mut tables = accepted_keys();
    for t in &mut tables {
        if t.table == "districts" {
            let mut keys = t.keys.to_vec();
            keys.push("frobnicate_interval");
            t.keys = Vec::leak(keys);
        }
    }
    let missing = undocumented(&tables, &read(EXAMPLE), &read(REFERENCE));
    assert_eq!(
        missing,
        [
            format!("{EXAMPLE}: [districts] frobnicate_interval"),
            format!("{REFERENCE}: [districts] frobnicate_interval"),
        ]
    );
}

#[test]
fn a_key_documented_in_the_wrong_section_or_only_in_prose_does_not_count() {
    let tables = [ConfigTable {
        table: "log",
        keys: &["level"],
    }];
    // `level` set under [database], mentioned in the [log] prose only.
    let toml = "[log]\n# the level of detail\nformat = \"json\"\n[database]\nlevel = 1\n";
    let markdown = "## `[log]`\n\nthe `level` of detail\n\n## `[database]`\n\n| `level` | x |\n";
    assert_eq!(
        undocumented(&tables, toml, markdown),
        [
            format!("{EXAMPLE}: [log] level"),
            format!("{REFERENCE}: [log] level"),
        ]
    );
    let toml = "[log]\n# level = \"info\"\n";
    let markdown = "## `[log]`\n\n| `level` | string | `\"info\"` | filter |\n";
    assert!(undocumented(&tables, toml, markdown).is_empty());
}

#[test]
fn the_reference_names_every_entity_type_of_the_limits() {
    let reference = read(REFERENCE);
    for entity in Entity::ALL {
        assert!(
            reference.contains(&format!("`{}`", entity.as_str())),
            "{REFERENCE} does not name the entity type {}",
            entity.as_str()
        );
    }
}

const GUIDE: &str = "docs/operator-guide.md";

/// The operator guide's table of finding codes has a row for every code, with its severity.
#[test]
fn the_operator_guide_lists_every_finding_code_with_its_severity() {
    use oneroster_sync::domain::Code;
    let guide = read(GUIDE);
    for code in Code::ALL {
        let row = format!("| `{}` | {} |", code.as_str(), code.severity().as_str());
        assert!(
            guide.lines().any(|l| l.starts_with(&row)),
            "{GUIDE} has no row `{row}`"
        );
    }
}
