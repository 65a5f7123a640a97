//! The commands of docs/operations.md the chaos test runs as written.

use std::path::Path;

/// The fenced blocks (```` ```lang ````) of the docs/operations.md section whose heading
/// starts with `heading` (e.g. `## 8. Moving the database`), in order, as non-empty lines.
pub fn operations_blocks(heading: &str, lang: &str) -> Vec<Vec<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md");
    let text = std::fs::read_to_string(&path).expect("docs/operations.md");
    let start = text
        .find(&format!("\n{heading}"))
        .unwrap_or_else(|| panic!("docs/operations.md has no section {heading}"));
    let section = &text[start + 1..];
    let section = match section[3..].find("\n## ") {
        Some(end) => &section[..end + 3],
        None => section,
    };
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in section.lines() {
        match &mut current {
            None if line.trim() == format!("```{lang}") => current = Some(Vec::new()),
            Some(block) if line.trim() == "```" => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            Some(block) if !line.trim().is_empty() => block.push(line.to_string()),
            _ => {}
        }
    }
    blocks
}

/// The documented way to fill a new database from Kafka (section 8.A): its four lines, in
/// order (`db migrate`, `status`, `run --roles sink`, `status --json`).
#[derive(Debug, Clone)]
pub struct DatabaseMove {
    pub migrate: String,
    pub status: String,
    pub run_sink: String,
    pub status_json: String,
}

impl DatabaseMove {
    pub fn from_docs() -> DatabaseMove {
        let blocks = operations_blocks("## 8. Moving the database", "sh");
        let block = blocks
            .iter()
            .find(|b| b.iter().any(|l| l.contains("db migrate")))
            .expect("section 8 has the block that fills a new database");
        let find = |what: &dyn Fn(&str) -> bool, name: &str| {
            block
                .iter()
                .find(|l| what(l))
                .unwrap_or_else(|| panic!("section 8.A has no {name} line: {block:?}"))
                .clone()
        };
        DatabaseMove {
            migrate: find(&|l| l.contains("db migrate"), "db migrate"),
            status: find(&|l| l.trim_end().ends_with("callsync status"), "status"),
            run_sink: find(&|l| l.contains("run --roles sink"), "run --roles sink"),
            status_json: find(&|l| l.contains("status --json"), "status --json"),
        }
    }
}

/// The `run` line of docs/operations.md's Scaling section for `role` (`callsync --config
/// callsync.toml run --roles processor`); for a role the section does not list, the same line
/// with the role's name.
pub fn scaling_run_line(role: &str) -> String {
    let blocks = operations_blocks("## 3. Scaling", "sh");
    let lines: Vec<&String> = blocks
        .iter()
        .flatten()
        .filter(|l| l.contains(" run --roles "))
        .collect();
    let wanted = format!(" run --roles {role}");
    if let Some(line) = lines.iter().find(|l| l.trim_end().ends_with(&wanted)) {
        return line.trim().to_string();
    }
    let any = lines
        .first()
        .expect("the Scaling section has a `run --roles` line");
    let at = any.find(" run --roles ").expect("run --roles");
    format!("{}{wanted}", &any[..at]).trim().to_string()
}
