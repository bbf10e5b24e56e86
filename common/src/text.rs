//! Text that came from an agent (or anyone else outside the hub), made inert for people to read.
//!
//! Architecture invariant: every agent-supplied text is inert on every operator surface. A hostile agent can
//! put terminal escapes (`ESC[2J`, `ESC]0;title BEL`), C1 controls, bidi overrides and isolates (which
//! reorder what an operator reads) and zero-width characters (which make two names look alike or confuse a
//! terminal's width arithmetic) into any string it sends. [`inert`] is the one sanitiser: the console's
//! TUI, its table and streamed output, the audit listing and the hub's logs all print through it. JSON
//! output stays faithful (serde escapes control characters; a program reads it, not a terminal).
//!
//! Dangerous characters are shown, not deleted: `ESC` becomes `\u{1b}`, so an operator sees that something
//! odd was sent and what it was.

use std::borrow::Cow;
use std::fmt::Write;

/// Whether `c` must never reach a terminal raw: C0 and C1 controls (and DEL), bidi embeddings, overrides,
/// isolates and marks, zero-width and other invisible format characters, line/paragraph separators,
/// interlinear annotations and the byte-order mark.
pub fn is_unsafe(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}'
        | '\u{ad}'                      // soft hyphen (invisible)
        | '\u{61c}'                     // Arabic letter mark
        | '\u{180e}'                    // Mongolian vowel separator
        | '\u{200b}'..='\u{200f}'       // zero-width space/joiners, LRM, RLM
        | '\u{2028}'..='\u{202e}'       // line/paragraph separators, bidi embeddings and overrides
        | '\u{2060}'..='\u{206f}'       // word joiner, invisible operators, bidi isolates, deprecated formats
        | '\u{feff}'                    // zero-width no-break space / BOM
        | '\u{fff9}'..='\u{fffb}'       // interlinear annotations
        | '\u{e0000}'..='\u{e007f}'     // tag characters
    )
}

/// `s` with every unsafe character (see [`is_unsafe`]) shown as a `\u{..}` escape. Borrows when nothing
/// needed escaping (the common case costs one scan).
pub fn inert(s: &str) -> Cow<'_, str> {
    escape(s, |_| false)
}

/// Like [`inert`], but keeps line feeds and tabs: for multi-line output (a command's stdout) printed as
/// lines. A carriage return is escaped too (it would let a line overwrite what was printed before it),
/// except in a `\r\n` pair, where it is dropped.
pub fn inert_lines(s: &str) -> Cow<'_, str> {
    escape(s, |c| c == '\n' || c == '\t')
}

fn escape(s: &str, keep: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !s.chars().any(|c| is_unsafe(c) && !keep(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\r' && keep('\n') && chars.peek() == Some(&'\n') {
            continue;
        }
        if is_unsafe(c) && !keep(c) {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// JSON text with every unsafe character (other than line feeds and tabs between tokens) written as a
/// `\uXXXX` escape: still the same JSON to a parser, inert to a terminal. serde escapes only C0 controls.
pub fn json_inert(json: &str) -> Cow<'_, str> {
    if !json.chars().any(|c| is_unsafe(c) && c != '\n' && c != '\t') {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if is_unsafe(c) && c != '\n' && c != '\t' {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{:04x}", u);
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Whether `s` is fit to store as a one-line text field: no unsafe character at all.
pub fn is_printable(s: &str) -> bool {
    !s.chars().any(is_unsafe)
}

/// A display wrapper: `format!("{}", Inert(s))` prints `inert(s)`. For `tracing` fields
/// (`server = %Inert(&name)`).
pub struct Inert<'a>(pub &'a str);

impl std::fmt::Display for Inert<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&inert(self.0))
    }
}

/// `s` cut to at most `max` bytes on a character boundary (limits are in bytes on both sides of the wire).
pub fn truncate_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `s` cut to `max` bytes for an error message that quotes it, with how long it really was.
pub fn excerpt(s: &str, max: usize) -> String {
    if s.len() <= max {
        return format!("{:?}", inert(s));
    }
    format!("{:?}… ({} bytes)", inert(truncate_bytes(s, max)), s.len())
}

/// Agent-supplied text on its way to a notifier (a webhook, Alertmanager, a chat): inert (see [`inert`]),
/// on one line, and cut to `max` bytes with how long it was. What goes to people outside the operator
/// surfaces is bounded like what is stored.
pub fn for_notifier(s: &str, max: usize) -> String {
    let one_line = inert(s);
    if one_line.len() <= max {
        return one_line.into_owned();
    }
    format!("{}… ({} bytes)", truncate_bytes(&one_line, max), s.len())
}

/// Text for Slack's `text` field (mrkdwn) from outside the hub: Slack's own escaping of `&`, `<` and `>` (so
/// `<!channel>`, `<@U123>` and `<https://evil|click>` are shown, not obeyed), `@` made a full-width `＠` (no
/// `@here` however the workspace parses names), and `://` shown as `[:]//` so no link is made from it: the
/// only links in a notification are the ones the hub builds. Bounded and inert like [`for_notifier`].
pub fn for_slack(s: &str, max: usize) -> String {
    let s = for_notifier(s, max);
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '@' => out.push('＠'),
            c => out.push(c),
        }
    }
    out.replace("://", "[:]//")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_of_dangerous_character_is_escaped() {
        let nasty = "a\u{1b}[2Jb\u{1b}]0;title\u{7}c\u{9b}31md\u{202e}e\u{2066}f\u{2069}g\u{200b}h\u{feff}i\u{0}j\r";
        let safe = inert(nasty);
        assert!(safe.chars().all(|c| !is_unsafe(c)), "{safe}");
        assert!(safe.contains("\\u{1b}[2J"), "the escape is shown, not hidden: {safe}");
        assert!(safe.contains("\\u{202e}"), "{safe}");
        assert_eq!(inert("plain ascii, ünïcödé, 日本語"), "plain ascii, ünïcödé, 日本語");
        assert!(matches!(inert("nothing to do"), Cow::Borrowed(_)));
    }

    #[test]
    fn lines_keep_newlines_and_tabs_but_not_carriage_returns() {
        assert_eq!(inert_lines("a\tb\r\nc\n"), "a\tb\nc\n");
        assert_eq!(inert_lines("progress\rdone"), "progress\\u{d}done");
        assert_eq!(inert_lines("\u{1b}[31mred\u{1b}[0m\n"), "\\u{1b}[31mred\\u{1b}[0m\n");
    }

    #[test]
    fn json_stays_json_and_becomes_inert() {
        let v = serde_json::json!({ "m": "a\u{1b}[2J\u{202e}\u{9b}\u{e0041}" });
        let text = serde_json::to_string(&v).unwrap();
        let safe = json_inert(&text);
        assert!(!safe.chars().any(is_unsafe), "{safe}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&safe).unwrap(), v);
    }

    #[test]
    fn truncation_counts_bytes_and_keeps_characters_whole() {
        let s = "é".repeat(200); // 400 bytes
        let t = truncate_bytes(&s, 255);
        assert_eq!(t.len(), 254);
        assert!(t.chars().all(|c| c == 'é'));
        assert_eq!(truncate_bytes("abc", 10), "abc");
        let e = excerpt(&"x".repeat(900_000), 40);
        assert!(e.len() < 80 && e.contains("900000 bytes"), "{e}");
    }

    #[test]
    fn text_for_notifiers_is_bounded_and_slack_obeys_none_of_it() {
        let hostile = "<!channel> <@U123ABC> <!here> @here <https://evil.example/login|click to re-auth> https://evil.example \u{1b}[2J &amp;";
        let s = for_slack(hostile, 4096);
        assert!(!s.contains('<') && !s.contains('>') && !s.contains('@') && !s.contains("://"), "{s}");
        assert!(s.contains("&lt;!channel&gt;") && s.contains("&amp;amp;") && s.contains("\\u{1b}"), "{s}");
        let long = for_notifier(&"x".repeat(100_000), 300);
        assert!(long.len() < 330 && long.ends_with("(100000 bytes)"), "{long}");
        assert_eq!(for_notifier("disk full on web-1", 300), "disk full on web-1");
        assert!(!for_notifier("a\nb", 300).contains('\n'));
    }
}
