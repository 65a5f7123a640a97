//! Code blocks of the project's Markdown docs, so tests run the docs as written.

/// Every fenced code block of `language` (e.g. `json`) in `markdown`, with the text of the
/// nearest heading above it (without the `#`s).
pub fn code_blocks(markdown: &str, language: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut heading = String::new();
    let mut block: Option<String> = None;
    for line in markdown.lines() {
        if let Some(body) = block.as_mut() {
            if line.trim_start().starts_with("```") {
                out.push((heading.clone(), std::mem::take(body)));
                block = None;
            } else {
                body.push_str(line);
                body.push('\n');
            }
            continue;
        }
        let trimmed = line.trim_start();
        if trimmed.starts_with('#') {
            heading = trimmed.trim_start_matches('#').trim().to_string();
        } else if let Some(lang) = trimmed.strip_prefix("```") {
            if lang.trim() == language {
                block = Some(String::new());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_come_with_their_heading() {
        let doc = "# A\n\n### Ringba (pixels)\n\n```json\n{\"a\": 1}\n```\n\n```sh\nls\n```\n";
        assert_eq!(
            code_blocks(doc, "json"),
            vec![("Ringba (pixels)".to_string(), "{\"a\": 1}\n".to_string())]
        );
        assert_eq!(code_blocks(doc, "sh").len(), 1);
    }
}
