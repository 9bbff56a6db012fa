//! Ruby string behaviour that Kamal's secrets handling depends on, reproduced byte for byte.
//!
//! Kamal shell-escapes fetch results, shell-splits `$(kamal secrets …)` commands, chomps command output and splits
//! secret paths with Ruby's `String#split`; each of those has edge cases (trailing empty fields, `''` for an empty
//! string, one newline only) that decide what a secrets file evaluates to, so they live here in one place.

/// Whitespace as Ruby's `String#strip` sees it: NUL, `\t`, `\n`, `\v`, `\f`, `\r` and space.
fn is_strip_space(byte: u8) -> bool {
    matches!(byte, 0 | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ')
}

/// Whitespace as Ruby's regexps see `\s`: `\t`, `\n`, `\v`, `\f`, `\r` and space.
pub(crate) fn is_regex_space(byte: u8) -> bool {
    matches!(byte, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ')
}

/// `String#strip`.
pub(crate) fn strip(text: &str) -> &str {
    text.trim_matches(|c: char| c.is_ascii() && is_strip_space(c as u8))
}

/// `String#chomp` without arguments: removes one trailing `\r\n`, `\n` or `\r`.
pub(crate) fn chomp(mut text: String) -> String {
    if text.ends_with("\r\n") {
        text.truncate(text.len() - 2);
    } else if text.ends_with('\n') || text.ends_with('\r') {
        text.truncate(text.len() - 1);
    }
    text
}

/// What `Kernel#puts` writes for one string: the string, plus a newline unless it already ends with one.
pub(crate) fn puts(out: &mut dyn std::io::Write, text: &str) -> std::io::Result<()> {
    out.write_all(text.as_bytes())?;
    if !text.ends_with('\n') {
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// `Shellwords.escape`: a backslash before every character outside `[A-Za-z0-9_\-.,:+/@\n]`, newlines quoted as
/// `'\n'`, and `''` for the empty string.
pub(crate) fn shellescape(text: &str) -> String {
    if text.is_empty() {
        return "''".to_string();
    }
    let mut escaped = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if c == '\n' {
            escaped.push_str("'\n'");
        } else if c.is_ascii_alphanumeric() || "_-.,:+/@".contains(c) {
            escaped.push(c);
        } else {
            escaped.push('\\');
            escaped.push(c);
        }
    }
    escaped
}

/// Why `Shellwords.split` refused a line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ShellsplitError {
    UnmatchedQuote,
    NulCharacter,
}

/// `Shellwords.split`: words separated by whitespace, with single quotes (literal), double quotes (backslash escapes
/// only `$`, `` ` ``, `"`, `\` and newline) and backslash escapes outside quotes. Unlike a POSIX shell, `#` starts
/// no comment, which is why this is not the `shell-words` crate.
pub(crate) fn shellsplit(line: &str) -> Result<Vec<String>, ShellsplitError> {
    let chars: Vec<char> = line.chars().collect();
    let is_space = |c: char| c.is_ascii() && is_regex_space(c as u8);
    let mut words = Vec::new();
    let mut field = String::new();
    let mut in_field = false;
    let mut i = 0;
    loop {
        // Whitespace ends the current word; the end of the line ends it too, if one was started.
        if i < chars.len() && is_space(chars[i]) {
            if in_field {
                words.push(std::mem::take(&mut field));
                in_field = false;
            }
            i += 1;
            continue;
        }
        let Some(&c) = chars.get(i) else {
            if in_field {
                words.push(field);
            }
            return Ok(words);
        };
        in_field = true;
        match c {
            '\0' => return Err(ShellsplitError::NulCharacter),
            '\'' => {
                let close = chars[i + 1..].iter().position(|&c| c == '\'').ok_or(ShellsplitError::UnmatchedQuote)?;
                let quoted = &chars[i + 1..i + 1 + close];
                if quoted.contains(&'\0') {
                    return Err(ShellsplitError::NulCharacter);
                }
                field.extend(quoted);
                i += close + 2;
            }
            '"' => {
                let mut j = i + 1;
                loop {
                    match chars.get(j) {
                        None | Some('\0') => return Err(ShellsplitError::UnmatchedQuote),
                        Some('"') => break,
                        Some('\\') => match chars.get(j + 1) {
                            None | Some('\0') => return Err(ShellsplitError::UnmatchedQuote),
                            Some(&next) => {
                                if !matches!(next, '$' | '`' | '"' | '\\' | '\n') {
                                    field.push('\\');
                                }
                                field.push(next);
                                j += 2;
                            }
                        },
                        Some(&other) => {
                            field.push(other);
                            j += 1;
                        }
                    }
                }
                i = j + 1;
            }
            '\\' => {
                // `\x` is `x`, except that a backslash before a newline (or at the end) stays as it is.
                match chars.get(i + 1) {
                    Some('\0') => return Err(ShellsplitError::NulCharacter),
                    Some('\n') => {
                        field.push_str("\\\n");
                        i += 2;
                    }
                    Some(&next) => {
                        field.push(next);
                        i += 2;
                    }
                    None => {
                        field.push('\\');
                        i += 1;
                    }
                }
            }
            _ => {
                field.push(c);
                i += 1;
            }
        }
    }
}

/// `String#split("/")`: fields between slashes, with trailing empty fields dropped (and none at all for "").
pub(crate) fn split_slash(text: &str) -> Vec<&str> {
    let mut parts: Vec<&str> = text.split('/').collect();
    while parts.last().is_some_and(|part| part.is_empty()) {
        parts.pop();
    }
    parts
}

/// `String#inspect` for the strings Kamal's Passbolt adapter quotes into `--filter` expressions.
pub(crate) fn inspect(text: &str) -> String {
    let mut quoted = String::from("\"");
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\t' => quoted.push_str("\\t"),
            '\r' => quoted.push_str("\\r"),
            '\x1b' => quoted.push_str("\\e"),
            '#' if matches!(chars.peek(), Some('{' | '$' | '@')) => quoted.push_str("\\#"),
            c if c.is_control() => quoted.push_str(&format!("\\x{:02X}", c as u32)),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// `Base64.decode64`: standard alphabet, lenient like Ruby's (characters outside the alphabet are skipped, decoding
/// stops at padding).
pub(crate) fn decode64(text: &str) -> Vec<u8> {
    let mut decoded = Vec::with_capacity(text.len() / 4 * 3);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for byte in text.bytes() {
        let sextet = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => continue,
        };
        buffer = (buffer << 6) | u32::from(sextet);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            decoded.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    decoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shellescape_matches_ruby() {
        assert_eq!(shellescape(""), "''");
        assert_eq!(shellescape("abc-1.2,3:4+5/6@7_"), "abc-1.2,3:4+5/6@7_");
        assert_eq!(shellescape(r#"{"A":"b c"}"#), r#"\{\"A\":\"b\ c\"\}"#);
        assert_eq!(shellescape("a\nb"), "a'\n'b");
        assert_eq!(shellescape("é$"), "\\é\\$");
    }

    #[test]
    fn shellsplit_round_trips_shellescape() {
        for text in ["", "plain", r#"{"K":"v a\"l'ue $X (y)"}"#, "multi\nline", "ü#x"] {
            assert_eq!(shellsplit(&shellescape(text)).unwrap(), vec![text.to_string()], "{text:?}");
        }
    }

    #[test]
    fn shellsplit_quotes_and_escapes() {
        let words = shellsplit(r#"a 'b c' "d \"e\" \x" f\ g #h ''"#).unwrap();
        assert_eq!(words, vec!["a", "b c", r#"d "e" \x"#, "f g", "#h", ""]);
        assert_eq!(shellsplit("  \t ").unwrap(), Vec::<String>::new());
        assert_eq!(shellsplit("a 'b"), Err(ShellsplitError::UnmatchedQuote));
        assert_eq!(shellsplit("a \"b"), Err(ShellsplitError::UnmatchedQuote));
    }

    #[test]
    fn chomp_strip_split_inspect_decode() {
        assert_eq!(chomp("a\n\n".into()), "a\n");
        assert_eq!(chomp("a\r\n".into()), "a");
        assert_eq!(chomp("a".into()), "a");
        assert_eq!(strip("\0 \t a b \n"), "a b");
        assert_eq!(split_slash("a/b//"), vec!["a", "b"]);
        assert_eq!(split_slash("/a"), vec!["", "a"]);
        assert!(split_slash("").is_empty());
        assert_eq!(inspect(r#"a"b\c #{x}"#), r#""a\"b\\c \#{x}""#);
        assert_eq!(decode64("aGVsbG8gd29ybGQ="), b"hello world");
        assert_eq!(decode64("aGVs\nbG8="), b"hello");
    }
}
