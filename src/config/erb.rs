//! ERB templates in configuration files, evaluated natively for the subset real configs use.
//!
//! Kamal renders each configuration file with `ERB.new(text, trim_mode: "-").result` before parsing it as YAML.
//! berth takes the same two steps Ruby does. [`compile`] turns the template into a script exactly as ERB's
//! compiler does, so ERB's quirks carry over (trim markers, `<%%`, a `#` comment in a tag swallowing the rest of
//! its line); then a small lexer, parser and tree-walking interpreter run that script for the part of Ruby real
//! configs use: `ENV`, string and array methods, `if`/`unless`, `each`, backticks. Anything beyond that subset
//! is an [`ErbError::Unsupported`], never a guess, and [`render`] then hands the file to a real `ruby` if one is
//! on `PATH`.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::environment::Environment;

/// Why a template could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum ErbError {
    /// The template uses Ruby beyond what berth evaluates itself (and, from [`render`], no `ruby` was on PATH).
    #[error(
        "{}:{line}: berth cannot evaluate `{construct}` in ERB without Ruby\n  install ruby (berth then renders the file with it), or rewrite the tag with what berth evaluates itself: ENV.fetch(\"KEY\", default), ENV[\"KEY\"], if/unless, each, string methods, backticks",
        file.display()
    )]
    Unsupported { file: PathBuf, line: usize, construct: String },

    /// The template ran and failed, as it would in Kamal: a missing `ENV.fetch` key, `raise`, a method on nil.
    #[error("{}:{line}: {message}", file.display())]
    Evaluation { file: PathBuf, line: usize, message: String },

    /// The template is not valid ERB or Ruby.
    #[error("{}:{line}: ERB syntax error: {message}", file.display())]
    Syntax { file: PathBuf, line: usize, message: String },

    /// A backtick command could not be started. Like Ruby, berth does not fail on a command that runs and exits
    /// non-zero: its output (often empty) is the value. `status` is the shell's exit status when there was one.
    #[error(
        "{}:{line}: could not run `{command}` from ERB: {stderr}\n  install the command or put it on PATH (Kamal fails here too), or remove the backticks",
        file.display()
    )]
    Command { file: PathBuf, line: usize, command: String, status: Option<i32>, stderr: String },

    /// The fallback to a real `ruby` failed.
    #[error(
        "{}: ruby could not render this ERB: {message}\n  fix the template; `ruby -rerb -e 'print ERB.new(STDIN.read, trim_mode: \"-\").result' < FILE` shows the same",
        file.display()
    )]
    Ruby { file: PathBuf, message: String },
}

/// A rendered template, and the environment as the template left it.
#[derive(Debug)]
pub struct Rendered {
    pub text: String,
    /// ERB can change `ENV` (`ENV["K"] = ...`, `Dotenv.load`). In Kamal those changes outlive the file: the
    /// destination file rendered next and the secrets see them. A caller that wants the same passes this on.
    pub env: Environment,
}

/// Renders an ERB template: natively when it only uses the supported subset, else with `ruby` if found on PATH.
#[cfg(test)]
pub fn render(source: &str, file: &Path, env: &Environment) -> Result<String, ErbError> {
    match find_ruby(source, env) {
        // Without a ruby to fall back to, rendering is the native evaluator alone.
        None => render_native(source, file, env),
        Some(ruby) => render_with_fallback(source, file, env, &ruby).map(|rendered| rendered.text),
    }
}

/// Like [`render`], and also returns the environment with the template's changes to `ENV` applied.
pub fn render_keeping_env(source: &str, file: &Path, env: &Environment) -> Result<Rendered, ErbError> {
    match find_ruby(source, env) {
        None => native(source, env, false).map_err(|fail| fail.into_error(file)),
        Some(ruby) => render_with_fallback(source, file, env, &ruby),
    }
}

/// The ruby to fall back to, looked for only when the text has ERB tags at all.
fn find_ruby(source: &str, env: &Environment) -> Option<PathBuf> {
    if source.contains("<%") { env.find_program("ruby") } else { None }
}

/// The native evaluator alone (no ruby fallback) — used by tests and by `render`.
#[cfg(test)]
pub fn render_native(source: &str, file: &Path, env: &Environment) -> Result<String, ErbError> {
    native(source, env, false).map(|rendered| rendered.text).map_err(|fail| fail.into_error(file))
}

fn render_with_fallback(source: &str, file: &Path, env: &Environment, ruby: &Path) -> Result<Rendered, ErbError> {
    // With a ruby to hand the template to, anything unknown anywhere in it sends it there before any of its
    // backticks run, so none runs twice. (Without one, evaluation is lazy like Ruby's: an unknown construct in
    // a branch not taken, as in `ENV["A"] || RUBY_ENGINE_VERSION`, is no obstacle.)
    match native(source, env, true) {
        Err(Fail::Unsupported { .. }) => render_with_ruby(ruby, source, file, env),
        other => other.map_err(|fail| fail.into_error(file)),
    }
}

/// Compiles, parses and runs a template; with `refuse_unknown`, refuses unknown methods and constants up front.
fn native(source: &str, env: &Environment, refuse_unknown: bool) -> Result<Rendered, Fail> {
    // Without a start tag ERB copies the text unchanged; most files take this path.
    if !source.contains("<%") {
        return Ok(Rendered { text: source.to_string(), env: env.clone() });
    }
    let script = compile(source)?;
    let tokens = Lexer::new(&script).tokens()?;
    let program = Parser::new(tokens).program()?;
    if refuse_unknown {
        check_supported(&program)?;
    }
    let mut interp = Interp::new(env, &script.texts);
    interp.run(&program)?;
    Ok(Rendered { text: interp.out, env: Environment::from_vars(interp.vars, env.cwd()) })
}

/// A failure without the file name, which only the public entry points know.
#[derive(Debug)]
enum Fail {
    Unsupported { line: usize, construct: String },
    Syntax { line: usize, message: String },
    Eval { line: usize, message: String },
    Command { line: usize, command: String, status: Option<i32>, stderr: String },
}

impl Fail {
    fn into_error(self, file: &Path) -> ErbError {
        let file = file.to_path_buf();
        match self {
            Fail::Unsupported { line, construct } => ErbError::Unsupported { file, line, construct },
            Fail::Syntax { line, message } => ErbError::Syntax { file, line, message },
            Fail::Eval { line, message } => ErbError::Evaluation { file, line, message },
            Fail::Command { line, command, status, stderr } => {
                ErbError::Command { file, line, command, status, stderr }
            }
        }
    }
}

fn unsupported(line: usize, construct: impl Into<String>) -> Fail {
    Fail::Unsupported { line, construct: construct.into() }
}

fn syntax(line: usize, message: impl Into<String>) -> Fail {
    Fail::Syntax { line, message: message.into() }
}

fn eval_error(line: usize, message: impl Into<String>) -> Fail {
    Fail::Eval { line, message: message.into() }
}

// ---------------------------------------------------------------------------------------------------------------
// Compiling: template -> script, the way Ruby's ERB::Compiler does with trim_mode "-"
// ---------------------------------------------------------------------------------------------------------------

// Where ERB's script says `_erbout.<< "text".freeze` or `_erbout.<<((code).to_s)`, berth's says
// TEXT_MARK index TEXT_MARK_END, or INSERT_OPEN code INSERT_CLOSE. These private-use characters never reach
// Ruby code in real templates (code holding them is refused), and keeping the script's shape otherwise
// identical is what makes ERB's line-based quirks come out the same.
const TEXT_MARK: char = '\u{E000}';
const TEXT_MARK_END: char = '\u{E001}';
const INSERT_OPEN: char = '\u{E002}';
const INSERT_CLOSE: char = '\u{E003}';

fn is_marker(c: char) -> bool {
    matches!(c, TEXT_MARK | TEXT_MARK_END | INSERT_OPEN | INSERT_CLOSE)
}

/// The compiled template: Ruby code with markers, the literal texts they refer to, and a line map.
struct Script {
    code: String,
    texts: Vec<String>,
    /// `(character offset in the script, lines to add)`: ERB drops `<%# %>` comments whole, so a multi-line
    /// comment shifts everything after it; errors should name the template's line, not the script's.
    line_shifts: Vec<(usize, usize)>,
}

impl Script {
    fn template_line(&self, script_line: usize, offset: usize) -> usize {
        script_line + self.line_shifts.iter().filter(|(from, _)| offset >= *from).map(|(_, add)| add).sum::<usize>()
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum TagKind {
    Code,
    Insert,
    Comment,
}

/// ERB::Compiler::Buffer: commands pushed on one script line are joined with "; ".
#[derive(Default)]
struct ScriptBuffer {
    code: String,
    line: Vec<String>,
    texts: Vec<String>,
    line_shifts: Vec<(usize, usize)>,
}

impl ScriptBuffer {
    fn push(&mut self, command: String) {
        self.line.push(command);
    }

    fn cr(&mut self) {
        self.code.push_str(&self.line.join("; "));
        self.line.clear();
        self.code.push('\n');
    }

    fn put_text(&mut self, text: String) {
        // ERB follows the literal with as many newlines as it holds, so script lines stay template lines.
        let newlines = "\n".repeat(text.matches('\n').count());
        self.push(format!("{TEXT_MARK}{}{TEXT_MARK_END}{newlines}", self.texts.len()));
        self.texts.push(text);
    }

    /// Where, in characters, the next command will start in the finished script.
    fn next_offset(&self) -> usize {
        self.code.chars().count() + self.line.iter().map(|command| command.chars().count() + "; ".len()).sum::<usize>()
    }

    fn finish(mut self) -> Script {
        self.code.push_str(&self.line.join("; "));
        Script { code: self.code, texts: self.texts, line_shifts: self.line_shifts }
    }
}

enum StartTag {
    Open(TagKind),
    /// `<%%`: a literal `<%`.
    Escape,
}

enum EndTag {
    Close,
    /// `-%>`: also swallows the newline after it.
    TrimClose,
    /// `%%>` inside a tag: a literal `%>` in the code.
    Escape,
}

/// ERB's ExplicitScanner (trim_mode "-") and Compiler, producing berth's marked-up script.
fn compile(source: &str) -> Result<Script, Fail> {
    let mut buffer = ScriptBuffer::default();
    let mut content = String::new();
    let mut open_tag: Option<(TagKind, usize)> = None;
    let mut pos = 0;
    while pos < source.len() {
        match open_tag {
            None => {
                let (start, found) = find_start_tag(source, pos);
                content.push_str(&source[pos..start]);
                let Some((tag, end)) = found else {
                    pos = source.len();
                    continue;
                };
                match tag {
                    StartTag::Escape => content.push_str("<%"),
                    StartTag::Open(kind) => {
                        if !content.is_empty() {
                            buffer.put_text(std::mem::take(&mut content));
                        }
                        open_tag = Some((kind, line_at(source, start)));
                    }
                }
                pos = end;
            }
            Some((kind, _)) => {
                let (start, found) = find_end_tag(source, pos);
                content.push_str(&source[pos..start]);
                let Some((tag, end)) = found else {
                    pos = source.len();
                    continue;
                };
                pos = end;
                if let EndTag::Escape = tag {
                    content.push_str("%>");
                    continue;
                }
                finish_tag(&mut buffer, kind, std::mem::take(&mut content), source, start)?;
                open_tag = None;
                if let EndTag::TrimClose = tag {
                    // ExplicitScanner: `-%>` followed by a line break or the end of the text ends the script line.
                    let rest = &source[pos..];
                    if rest.starts_with("\r\n") {
                        pos += 2;
                        buffer.cr();
                    } else if rest.starts_with('\n') {
                        pos += 1;
                        buffer.cr();
                    } else if rest.is_empty() {
                        buffer.cr();
                    }
                }
            }
        }
    }
    if let Some((_, line)) = open_tag {
        // Ruby's ERB quietly prints an unclosed tag's code as text; a config is better served by an error.
        return Err(syntax(line, "this `<%` tag is never closed: add `%>`"));
    }
    if !content.is_empty() {
        buffer.put_text(content);
    }
    Ok(buffer.finish())
}

fn line_at(source: &str, byte: usize) -> usize {
    source[..byte].matches('\n').count() + 1
}

fn finish_tag(
    buffer: &mut ScriptBuffer,
    kind: TagKind,
    mut content: String,
    source: &str,
    at: usize,
) -> Result<(), Fail> {
    if kind != TagKind::Comment && content.chars().any(is_marker) {
        return Err(unsupported(line_at(source, at), "a private-use character (U+E000..U+E003) in Ruby code"));
    }
    match kind {
        TagKind::Code => {
            if content.ends_with('\n') {
                content.pop();
                buffer.push(content);
                buffer.cr();
            } else {
                buffer.push(content);
            }
        }
        TagKind::Insert => buffer.push(format!("{INSERT_OPEN}{content}{INSERT_CLOSE}")),
        TagKind::Comment => {
            let newlines = content.matches('\n').count();
            if newlines > 0 {
                let offset = buffer.next_offset();
                buffer.line_shifts.push((offset, newlines));
            }
        }
    }
    Ok(())
}

/// The next start tag from `pos`: `(where its token starts, Some((tag, where it ends)))`, or `(len, None)`.
fn find_start_tag(source: &str, pos: usize) -> (usize, Option<(StartTag, usize)>) {
    let bytes = source.as_bytes();
    let mut i = pos;
    while i < bytes.len() {
        // `^[ \t]*<%-`: the indentation goes with the tag. Ruby's StringScanner treats the scan position as a
        // line start too, so blanks right after a previous tag are also dropped before `<%-`.
        if i == pos || bytes[i - 1] == b'\n' {
            let mut j = i;
            while j < bytes.len() && (bytes[j] == b' ' || bytes[j] == b'\t') {
                j += 1;
            }
            if bytes[j..].starts_with(b"<%-") {
                return (i, Some((StartTag::Open(TagKind::Code), j + 3)));
            }
        }
        if bytes[i..].starts_with(b"<%") {
            let tag = match bytes.get(i + 2) {
                Some(b'-') => (StartTag::Open(TagKind::Code), i + 3),
                Some(b'%') => (StartTag::Escape, i + 3),
                Some(b'=') => (StartTag::Open(TagKind::Insert), i + 3),
                Some(b'#') => (StartTag::Open(TagKind::Comment), i + 3),
                _ => (StartTag::Open(TagKind::Code), i + 2),
            };
            return (i, Some(tag));
        }
        i += 1;
    }
    (bytes.len(), None)
}

fn find_end_tag(source: &str, pos: usize) -> (usize, Option<(EndTag, usize)>) {
    let bytes = source.as_bytes();
    for i in pos..bytes.len() {
        let rest = &bytes[i..];
        if rest.starts_with(b"-%>") {
            return (i, Some((EndTag::TrimClose, i + 3)));
        }
        if rest.starts_with(b"%%>") {
            return (i, Some((EndTag::Escape, i + 3)));
        }
        if rest.starts_with(b"%>") {
            return (i, Some((EndTag::Close, i + 2)));
        }
    }
    (bytes.len(), None)
}

// ---------------------------------------------------------------------------------------------------------------
// Lexing
// ---------------------------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
struct Token {
    tok: Tok,
    line: usize,
    /// Whitespace before the token: Ruby's grammar depends on it (`foo [1]` vs `foo[1]`, `a ? b :c`).
    space_before: bool,
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Int(i64),
    Str(Vec<StrPiece>),
    /// Backticks or `%x()`: a local command.
    XStr(Vec<StrPiece>),
    Words(Vec<String>),
    Symbols(Vec<String>),
    Sym(String),
    /// Names starting lowercase or `_`, keywords included.
    Ident(String),
    Const(String),
    Punct(&'static str),
    Text(usize),
    InsertOpen,
    InsertClose,
    Newline,
    Eof,
}

#[derive(Clone, Debug, PartialEq)]
enum StrPiece {
    Lit(String),
    /// `#{...}`: its tokens, parsed later in the enclosing scope.
    Code(Vec<Token>, usize),
}

const PUNCTUATION: &[&str] = &[
    "**", "...", "..", "&&=", "||=", "<=>", "===", "==", "!=", "=~", "!~", "<=", ">=", "&&", "||", "&.", "=>", "->",
    "+=", "-=", "*=", "/=", "<<", ">>", "(", ")", "[", "]", "{", "}", ",", ".", ";", "?", "=", "!", "<", ">", "+", "-",
    "*", "/", "%", "|", "&", "^", "~",
];

/// Keywords after which an expression is expected, so `-1`, `:sym` and `%w[]` are literals there.
fn keyword_expects_value(name: &str) -> bool {
    matches!(
        name,
        "if" | "unless"
            | "elsif"
            | "else"
            | "then"
            | "do"
            | "and"
            | "or"
            | "not"
            | "while"
            | "until"
            | "when"
            | "in"
            | "return"
            | "next"
            | "break"
            | "case"
            | "begin"
            | "rescue"
            | "ensure"
            | "yield"
    )
}

fn ends_value(tok: &Tok) -> bool {
    match tok {
        Tok::Int(_)
        | Tok::Str(_)
        | Tok::XStr(_)
        | Tok::Words(_)
        | Tok::Symbols(_)
        | Tok::Sym(_)
        | Tok::Const(_)
        | Tok::Text(_)
        | Tok::InsertClose => true,
        Tok::Ident(name) => !keyword_expects_value(name),
        Tok::Punct(p) => matches!(*p, ")" | "]" | "}"),
        Tok::InsertOpen | Tok::Newline | Tok::Eof => false,
    }
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

struct Lexer<'s> {
    chars: Vec<char>,
    pos: usize,
    script_line: usize,
    script: &'s Script,
}

impl<'s> Lexer<'s> {
    fn new(script: &'s Script) -> Lexer<'s> {
        Lexer { chars: script.code.chars().collect(), pos: 0, script_line: 1, script }
    }

    fn tokens(mut self) -> Result<Vec<Token>, Fail> {
        let mut tokens = self.lex(false)?;
        tokens.push(Token { tok: Tok::Eof, line: self.line(), space_before: true });
        Ok(tokens)
    }

    fn line(&self) -> usize {
        self.script.template_line(self.script_line, self.pos)
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<char> {
        self.chars.get(self.pos + offset).copied()
    }

    fn rest_starts_with(&self, text: &str) -> bool {
        text.chars().enumerate().all(|(i, c)| self.chars.get(self.pos + i) == Some(&c))
    }

    fn at_line_start(&self) -> bool {
        self.pos == 0 || self.chars[self.pos - 1] == '\n'
    }

    /// Skips blanks, comments and backslash-newlines; says whether there were any.
    fn skip_space(&mut self) -> bool {
        let start = self.pos;
        loop {
            match self.peek() {
                Some(' ' | '\t' | '\r' | '\x0b' | '\x0c') => self.pos += 1,
                Some('\\') if self.peek_at(1) == Some('\n') => {
                    self.pos += 2;
                    self.script_line += 1;
                }
                // A comment runs to the end of the script line, over any markers: that is how `<% # x %>`
                // hides the text after it on the same line in Ruby too.
                Some('#') => {
                    while self.peek().is_some_and(|c| c != '\n') {
                        self.pos += 1;
                    }
                }
                _ => break,
            }
        }
        self.pos > start
    }

    /// After a newline: does the next code line continue the expression with `.method` or `&.method`?
    fn next_line_continues(&self) -> bool {
        let mut i = self.pos;
        loop {
            match self.chars.get(i) {
                Some(' ' | '\t' | '\r' | '\n') => i += 1,
                Some('#') => {
                    while self.chars.get(i).is_some_and(|c| *c != '\n') {
                        i += 1;
                    }
                }
                Some('.') => return self.chars.get(i + 1) != Some(&'.'),
                Some('&') => return self.chars.get(i + 1) == Some(&'.'),
                _ => return false,
            }
        }
    }

    /// Tokens up to the end of the script, or (inside `#{`) up to the matching `}`, which is consumed.
    fn lex(&mut self, in_interpolation: bool) -> Result<Vec<Token>, Fail> {
        let mut out: Vec<Token> = Vec::new();
        let mut brace_depth = 0usize;
        loop {
            let space_before = self.skip_space();
            let line = self.line();
            let Some(c) = self.peek() else {
                if in_interpolation {
                    return Err(syntax(line, "`#{` in a string is never closed with `}`"));
                }
                return Ok(out);
            };
            let prev_value = out.last().is_some_and(|t| ends_value(&t.tok));
            let prev_is_method_name =
                matches!(out.last(), Some(Token { tok: Tok::Ident(name), .. }) if !keyword_expects_value(name));
            let tok = match c {
                '\n' => {
                    self.pos += 1;
                    self.script_line += 1;
                    if self.at_line_start() && self.rest_starts_with("=begin") {
                        return Err(unsupported(self.line(), "=begin/=end comment"));
                    }
                    if self.next_line_continues() {
                        continue;
                    }
                    Tok::Newline
                }
                TEXT_MARK => self.text_mark()?,
                INSERT_OPEN => {
                    self.pos += 1;
                    Tok::InsertOpen
                }
                INSERT_CLOSE => {
                    self.pos += 1;
                    Tok::InsertClose
                }
                '0'..='9' => self.number(false)?,
                '-' if !prev_value && self.peek_at(1).is_some_and(|d| d.is_ascii_digit()) => {
                    self.pos += 1;
                    self.number(true)?
                }
                c if is_ident_start(c) => self.identifier(),
                '\'' => {
                    self.pos += 1;
                    Tok::Str(vec![StrPiece::Lit(self.raw_string('\'', None)?)])
                }
                '"' => {
                    self.pos += 1;
                    Tok::Str(self.interpolated_string('"', None)?)
                }
                '`' => {
                    self.pos += 1;
                    Tok::XStr(self.interpolated_string('`', None)?)
                }
                ':' => self.colon(prev_value, prev_is_method_name && space_before)?,
                '%' => self.percent(prev_value, prev_is_method_name && space_before)?,
                '@' | '$' => return Err(unsupported(line, format!("{c}variables"))),
                '?' if !prev_value && self.peek_at(1).is_some_and(|n| !n.is_whitespace()) => {
                    return Err(unsupported(line, "character literal (?x)"));
                }
                '/' if !prev_value || (prev_is_method_name && space_before && self.peek_at(1) != Some(' ')) => {
                    return Err(unsupported(line, "regular expression"));
                }
                '<' if self.peek_at(1) == Some('<')
                    && (!prev_value || (prev_is_method_name && space_before))
                    && self.peek_at(2).is_some_and(|n| matches!(n, '~' | '-' | '"' | '\'') || is_ident_start(n)) =>
                {
                    return Err(unsupported(line, "heredoc"));
                }
                '{' => {
                    self.pos += 1;
                    brace_depth += 1;
                    Tok::Punct("{")
                }
                '}' => {
                    self.pos += 1;
                    if brace_depth == 0 && in_interpolation {
                        return Ok(out);
                    }
                    brace_depth = brace_depth.saturating_sub(1);
                    Tok::Punct("}")
                }
                c if !c.is_ascii() => return Err(unsupported(line, format!("non-ASCII character `{c}` in Ruby code"))),
                _ => match PUNCTUATION.iter().find(|p| self.rest_starts_with(p)) {
                    Some(p) => {
                        self.pos += p.chars().count();
                        Tok::Punct(p)
                    }
                    None => return Err(unsupported(line, format!("`{c}`"))),
                },
            };
            out.push(Token { tok, line, space_before });
        }
    }

    fn text_mark(&mut self) -> Result<Tok, Fail> {
        self.pos += 1;
        let mut index = 0usize;
        while let Some(digit) = self.peek().and_then(|c| c.to_digit(10)) {
            index = index * 10 + digit as usize;
            self.pos += 1;
        }
        if self.peek() != Some(TEXT_MARK_END) {
            return Err(unsupported(self.line(), "a private-use character (U+E000..U+E003) in Ruby code"));
        }
        self.pos += 1;
        Ok(Tok::Text(index))
    }

    fn identifier(&mut self) -> Tok {
        let start = self.pos;
        while self.peek().is_some_and(is_ident_char) {
            self.pos += 1;
        }
        let first = self.chars[start];
        // `empty?`, `strip!`: but `a!=b` and `a?b:c`-style code keep the `!`/`?` as operators.
        if !first.is_ascii_uppercase()
            && matches!(self.peek(), Some('?' | '!'))
            && self.peek_at(1) != Some('=')
            && !(self.peek() == Some('?') && self.peek_at(1).is_some_and(|c| c == ':'))
        {
            self.pos += 1;
        }
        let name: String = self.chars[start..self.pos].iter().collect();
        if first.is_ascii_uppercase() { Tok::Const(name) } else { Tok::Ident(name) }
    }

    fn number(&mut self, negative: bool) -> Result<Tok, Fail> {
        let line = self.line();
        let start = self.pos;
        if self.peek() == Some('0') && self.peek_at(1).is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(unsupported(line, "0-prefixed integer literal (octal, hex or binary)"));
        }
        while self.peek().is_some_and(|c| c.is_ascii_digit() || c == '_') {
            self.pos += 1;
        }
        let text: String = self.chars[start..self.pos].iter().collect();
        if text.ends_with('_') || text.contains("__") {
            return Err(syntax(line, format!("`{text}` is not a valid number (misplaced `_`)")));
        }
        if self.peek() == Some('.') && self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) {
            return Err(unsupported(line, "floating-point number"));
        }
        if self.peek().is_some_and(is_ident_char) {
            return Err(unsupported(line, format!("number literal `{text}{}`", self.peek().unwrap_or(' '))));
        }
        let digits = text.replace('_', "");
        let signed = if negative { format!("-{digits}") } else { digits };
        signed.parse::<i64>().map(Tok::Int).map_err(|_| unsupported(line, "integer beyond 64 bits"))
    }

    fn colon(&mut self, prev_value: bool, after_spaced_method: bool) -> Result<Tok, Fail> {
        let line = self.line();
        if self.peek_at(1) == Some(':') {
            self.pos += 2;
            return Ok(Tok::Punct("::"));
        }
        let next = self.peek_at(1);
        let symbol_position = !prev_value || after_spaced_method;
        if symbol_position && next.is_some_and(is_ident_start) {
            self.pos += 1;
            let start = self.pos;
            while self.peek().is_some_and(is_ident_char) {
                self.pos += 1;
            }
            if matches!(self.peek(), Some('?' | '!' | '=')) && self.peek_at(1) != Some('=') {
                self.pos += 1;
            }
            return Ok(Tok::Sym(self.chars[start..self.pos].iter().collect()));
        }
        if symbol_position && matches!(next, Some('"' | '\'')) {
            return Err(unsupported(line, "quoted symbol (:\"...\")"));
        }
        self.pos += 1;
        Ok(Tok::Punct(":"))
    }

    fn percent(&mut self, prev_value: bool, after_spaced_method: bool) -> Result<Tok, Fail> {
        let line = self.line();
        let next = self.peek_at(1);
        let literal_position = !prev_value || (after_spaced_method && next.is_some_and(|c| c != ' ' && c != '='));
        let is_delimiter = |c: Option<char>| c.is_some_and(|c| !c.is_ascii_alphanumeric() && !c.is_whitespace());
        if !literal_position {
            self.pos += 1;
            return Ok(Tok::Punct("%"));
        }
        let (kind, open) = match next {
            Some(kind @ ('w' | 'W' | 'i' | 'I' | 'q' | 'Q' | 'x' | 'r' | 's')) if is_delimiter(self.peek_at(2)) => {
                self.pos += 2;
                (kind, self.peek().unwrap_or(' '))
            }
            Some(open) if is_delimiter(Some(open)) && open != '=' => {
                self.pos += 1;
                ('Q', open)
            }
            _ => {
                self.pos += 1;
                return Ok(Tok::Punct("%"));
            }
        };
        self.pos += 1;
        let (close, nest) = match open {
            '(' => (')', Some('(')),
            '[' => (']', Some('[')),
            '{' => ('}', Some('{')),
            '<' => ('>', Some('<')),
            other => (other, None),
        };
        match kind {
            'w' => Ok(Tok::Words(self.words(close, nest)?)),
            'i' => Ok(Tok::Symbols(self.words(close, nest)?)),
            'q' => Ok(Tok::Str(vec![StrPiece::Lit(self.raw_string(close, nest)?)])),
            'Q' => Ok(Tok::Str(self.interpolated_string(close, nest)?)),
            'x' => Ok(Tok::XStr(self.interpolated_string(close, nest)?)),
            other => Err(unsupported(line, format!("%{other} literal"))),
        }
    }

    fn next_char_in_literal(&mut self, start_line: usize) -> Result<char, Fail> {
        let Some(c) = self.peek() else {
            return Err(syntax(start_line, "a string literal is never closed"));
        };
        if is_marker(c) {
            // The literal runs past the end of its ERB tag into template text.
            return Err(syntax(start_line, "a string literal is not closed before the end of its ERB tag"));
        }
        self.pos += 1;
        if c == '\n' {
            self.script_line += 1;
        }
        Ok(c)
    }

    /// Single-quote rules: only `\\` and an escaped delimiter are escapes.
    fn raw_string(&mut self, close: char, nest: Option<char>) -> Result<String, Fail> {
        let start_line = self.line();
        let mut text = String::new();
        let mut depth = 0;
        loop {
            let c = self.next_char_in_literal(start_line)?;
            if c == '\\' {
                let escaped = self.next_char_in_literal(start_line)?;
                if escaped == '\\' || escaped == close || Some(escaped) == nest {
                    text.push(escaped);
                } else {
                    text.push('\\');
                    text.push(escaped);
                }
            } else if Some(c) == nest {
                depth += 1;
                text.push(c);
            } else if c == close {
                if depth == 0 {
                    return Ok(text);
                }
                depth -= 1;
                text.push(c);
            } else {
                text.push(c);
            }
        }
    }

    /// Double-quote rules: escapes and `#{...}`.
    fn interpolated_string(&mut self, close: char, nest: Option<char>) -> Result<Vec<StrPiece>, Fail> {
        let start_line = self.line();
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut depth = 0;
        loop {
            let c = self.next_char_in_literal(start_line)?;
            match c {
                '\\' => self.escape(&mut text, start_line)?,
                '#' if self.peek() == Some('{') => {
                    self.pos += 1;
                    if !text.is_empty() {
                        pieces.push(StrPiece::Lit(std::mem::take(&mut text)));
                    }
                    let line = self.line();
                    pieces.push(StrPiece::Code(self.lex(true)?, line));
                }
                '#' if matches!(self.peek(), Some('@' | '$')) => {
                    return Err(unsupported(self.line(), "#@/#$ interpolation"));
                }
                c if Some(c) == nest => {
                    depth += 1;
                    text.push(c);
                }
                c if c == close => {
                    if depth == 0 {
                        break;
                    }
                    depth -= 1;
                    text.push(c);
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() || pieces.is_empty() {
            pieces.push(StrPiece::Lit(text));
        }
        Ok(pieces)
    }

    fn escape(&mut self, text: &mut String, start_line: usize) -> Result<(), Fail> {
        let line = self.line();
        let c = self.next_char_in_literal(start_line)?;
        let simple = match c {
            'n' => Some('\n'),
            't' => Some('\t'),
            's' => Some(' '),
            'r' => Some('\r'),
            'e' => Some('\x1b'),
            'a' => Some('\x07'),
            'b' => Some('\x08'),
            'f' => Some('\x0c'),
            'v' => Some('\x0b'),
            _ => None,
        };
        if let Some(simple) = simple {
            text.push(simple);
            return Ok(());
        }
        match c {
            '\n' => {}
            '0'..='7' => {
                let mut value = c.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    match self.peek().and_then(|d| d.to_digit(8)) {
                        Some(d) => {
                            value = value * 8 + d;
                            self.pos += 1;
                        }
                        None => break,
                    }
                }
                text.push(ascii_escape(value, line)?);
            }
            'x' => {
                let mut value = 0;
                let mut digits = 0;
                while digits < 2 {
                    match self.peek().and_then(|d| d.to_digit(16)) {
                        Some(d) => {
                            value = value * 16 + d;
                            self.pos += 1;
                            digits += 1;
                        }
                        None => break,
                    }
                }
                if digits == 0 {
                    return Err(syntax(line, "invalid hex escape `\\x`"));
                }
                text.push(ascii_escape(value, line)?);
            }
            'u' => self.unicode_escape(text, line)?,
            'c' | 'C' | 'M' => return Err(unsupported(line, format!("\\{c} escape"))),
            other => text.push(other),
        }
        Ok(())
    }

    fn unicode_escape(&mut self, text: &mut String, line: usize) -> Result<(), Fail> {
        let invalid = || syntax(line, "invalid Unicode escape");
        let push_code = |hex: &str, text: &mut String| -> Result<(), Fail> {
            let code = u32::from_str_radix(hex, 16).map_err(|_| invalid())?;
            text.push(char::from_u32(code).ok_or_else(invalid)?);
            Ok(())
        };
        if self.peek() == Some('{') {
            self.pos += 1;
            let mut hex = String::new();
            loop {
                match self.peek() {
                    Some('}') => {
                        self.pos += 1;
                        break;
                    }
                    Some(' ') => {
                        self.pos += 1;
                        if !hex.is_empty() {
                            push_code(&std::mem::take(&mut hex), text)?;
                        }
                    }
                    Some(d) if d.is_ascii_hexdigit() => {
                        self.pos += 1;
                        hex.push(d);
                    }
                    _ => return Err(invalid()),
                }
            }
            if !hex.is_empty() {
                push_code(&hex, text)?;
            }
        } else {
            let hex: String = (0..4).filter_map(|i| self.peek_at(i)).take_while(char::is_ascii_hexdigit).collect();
            if hex.len() != 4 {
                return Err(invalid());
            }
            self.pos += 4;
            push_code(&hex, text)?;
        }
        Ok(())
    }

    /// `%w[...]`: words split on whitespace; a backslash makes whitespace or a delimiter part of a word.
    fn words(&mut self, close: char, nest: Option<char>) -> Result<Vec<String>, Fail> {
        let start_line = self.line();
        let mut words = Vec::new();
        let mut word = String::new();
        let mut in_word = false;
        let mut depth = 0;
        loop {
            let c = self.next_char_in_literal(start_line)?;
            match c {
                '\\' => {
                    let escaped = self.next_char_in_literal(start_line)?;
                    if escaped.is_whitespace() || escaped == '\\' || escaped == close || Some(escaped) == nest {
                        word.push(escaped);
                    } else {
                        word.push('\\');
                        word.push(escaped);
                    }
                    in_word = true;
                }
                c if c.is_whitespace() => {
                    if in_word {
                        words.push(std::mem::take(&mut word));
                        in_word = false;
                    }
                }
                c if c == close && depth == 0 => {
                    if in_word {
                        words.push(word);
                    }
                    return Ok(words);
                }
                c => {
                    if Some(c) == nest {
                        depth += 1;
                    } else if c == close {
                        depth -= 1;
                    }
                    word.push(c);
                    in_word = true;
                }
            }
        }
    }
}

fn ascii_escape(value: u32, line: usize) -> Result<char, Fail> {
    match char::from_u32(value) {
        Some(c) if c.is_ascii() => Ok(c),
        // A lone byte above 0x7F is not a character on its own; the string would not be valid UTF-8.
        _ => Err(unsupported(line, "byte escape above \\x7F")),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Node {
    line: usize,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Nil,
    Bool(bool),
    Int(i64),
    Str(Vec<Piece>),
    XStr(Vec<Piece>),
    Sym(String),
    Array(Vec<Node>),
    Text(usize),
    Insert(Box<Node>),
    Seq(Vec<Node>),
    Local(String),
    Assign(String, Box<Node>),
    /// `x ||= v`, `ENV["K"] += v`: the target is a `Local` or an `Index`.
    OpAssign {
        target: Box<Node>,
        op: &'static str,
        value: Box<Node>,
    },
    IndexAssign {
        receiver: Box<Node>,
        args: Vec<Node>,
        value: Box<Node>,
    },
    Const(Vec<String>),
    Call {
        receiver: Option<Box<Node>>,
        name: String,
        args: Vec<Node>,
        block: Option<Box<Block>>,
        safe_nav: bool,
    },
    Index {
        receiver: Box<Node>,
        args: Vec<Node>,
    },
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Binary(BinOp, Box<Node>, Box<Node>),
    Neg(Box<Node>),
    Range {
        low: Box<Node>,
        high: Option<Box<Node>>,
        exclusive: bool,
    },
    If {
        cond: Box<Node>,
        then: Box<Node>,
        otherwise: Option<Box<Node>>,
    },
    Next(Option<Box<Node>>),
    Break(Option<Box<Node>>),
}

#[derive(Debug)]
enum Piece {
    Lit(String),
    Code(Node),
}

#[derive(Debug)]
struct Block {
    params: Vec<String>,
    body: Node,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum BinOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
}

impl BinOp {
    fn symbol(self) -> &'static str {
        match self {
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
        }
    }
}

/// Keywords (and keyword-like methods) berth does not run: seeing one is Unsupported, not a syntax error.
const UNSUPPORTED_KEYWORDS: &[&str] = &[
    "while",
    "until",
    "case",
    "for",
    "begin",
    "def",
    "class",
    "module",
    "yield",
    "return",
    "super",
    "redo",
    "retry",
    "defined?",
    "alias",
    "undef",
    "__FILE__",
    "__LINE__",
    "__dir__",
    "__method__",
    "__END__",
    "self",
    "lambda",
    "proc",
    "loop",
    "binding",
    "rescue",
    "ensure",
];

fn is_keyword(name: &str) -> bool {
    keyword_expects_value(name) || matches!(name, "end" | "nil" | "true" | "false" | "self" | "defined?")
}

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Int(n) => n.to_string(),
        Tok::Str(_) => "string".into(),
        Tok::XStr(_) => "backticks".into(),
        Tok::Words(_) => "%w[]".into(),
        Tok::Symbols(_) => "%i[]".into(),
        Tok::Sym(name) => format!(":{name}"),
        Tok::Ident(name) | Tok::Const(name) => name.clone(),
        Tok::Punct(p) => (*p).to_string(),
        Tok::Text(_) => "template text".into(),
        Tok::InsertOpen => "<%=".into(),
        Tok::InsertClose => "%>".into(),
        Tok::Newline => "end of line".into(),
        Tok::Eof => "end of template".into(),
    }
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    /// Local variables by block scope, as Ruby decides at parse time whether `name` is a variable or a call.
    scopes: Vec<Vec<String>>,
    block_depth: usize,
    /// While parsing a command's arguments (`foo a do ... end`), `do` belongs to the command, not to `a`.
    no_do: bool,
}

impl Parser {
    fn new(tokens: Vec<Token>) -> Parser {
        Parser { tokens, pos: 0, scopes: vec![Vec::new()], block_depth: 0, no_do: false }
    }

    fn peek(&self) -> &Token {
        &self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn peek_at(&self, offset: usize) -> &Token {
        &self.tokens[(self.pos + offset).min(self.tokens.len() - 1)]
    }

    fn bump(&mut self) -> Token {
        let token = self.peek().clone();
        if self.pos < self.tokens.len() - 1 {
            self.pos += 1;
        }
        token
    }

    fn at_punct(&self, p: &str) -> bool {
        matches!(&self.peek().tok, Tok::Punct(q) if *q == p)
    }

    fn at_keyword(&self, keyword: &str) -> bool {
        matches!(&self.peek().tok, Tok::Ident(name) if name == keyword)
    }

    fn at_term(&self) -> bool {
        matches!(self.peek().tok, Tok::Newline) || self.at_punct(";")
    }

    fn skip_terms(&mut self) {
        while self.at_term() {
            self.bump();
        }
    }

    fn skip_newlines(&mut self) {
        while matches!(self.peek().tok, Tok::Newline) {
            self.bump();
        }
    }

    fn unexpected(&self) -> Fail {
        let token = self.peek();
        match &token.tok {
            Tok::Eof => syntax(token.line, "the template ends in the middle of a Ruby expression"),
            Tok::InsertClose => syntax(token.line, "the Ruby in this `<%= %>` tag is incomplete"),
            Tok::Ident(name) if matches!(name.as_str(), "end" | "else" | "elsif" | "then" | "when") => {
                syntax(token.line, format!("unexpected `{name}`"))
            }
            tok => unsupported(token.line, describe(tok)),
        }
    }

    fn expect_punct(&mut self, p: &str) -> Result<(), Fail> {
        if self.at_punct(p) {
            self.bump();
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    fn is_local(&self, name: &str) -> bool {
        self.scopes.iter().any(|scope| scope.iter().any(|local| local == name))
    }

    fn declare(&mut self, name: &str) {
        if !self.is_local(name)
            && let Some(scope) = self.scopes.last_mut()
        {
            scope.push(name.to_string());
        }
    }

    fn program(&mut self) -> Result<Node, Fail> {
        let body = self.statements()?;
        match &self.peek().tok {
            Tok::Eof => Ok(body),
            Tok::Ident(name) if matches!(name.as_str(), "end" | "else" | "elsif") => Err(syntax(
                self.peek().line,
                format!("`{name}` without a matching `if`, `unless` or `do` (is a `<% if ... %>` missing?)"),
            )),
            Tok::Punct("}") => Err(syntax(self.peek().line, "`}` without a matching `{`")),
            Tok::Punct(")") => Err(syntax(self.peek().line, "`)` without a matching `(`")),
            Tok::InsertClose => Err(syntax(self.peek().line, "the Ruby in this `<%= %>` tag is incomplete")),
            _ => Err(self.unexpected()),
        }
    }

    fn at_statements_end(&self) -> bool {
        match &self.peek().tok {
            Tok::Eof | Tok::InsertClose | Tok::Punct(")") | Tok::Punct("}") => true,
            Tok::Ident(name) => matches!(name.as_str(), "end" | "else" | "elsif" | "when" | "rescue" | "ensure"),
            _ => false,
        }
    }

    fn statements(&mut self) -> Result<Node, Fail> {
        let line = self.peek().line;
        let mut list = Vec::new();
        loop {
            self.skip_terms();
            if self.at_statements_end() {
                break;
            }
            list.push(self.statement()?);
            if !self.at_term() && !self.at_statements_end() {
                return Err(self.unexpected());
            }
        }
        Ok(Node { line, kind: Kind::Seq(list) })
    }

    fn statement(&mut self) -> Result<Node, Fail> {
        let mut node = self.expression_statement()?;
        loop {
            let line = self.peek().line;
            if self.at_keyword("if") || self.at_keyword("unless") {
                let negate = self.at_keyword("unless");
                self.bump();
                let mut cond = self.expression_statement()?;
                if negate {
                    cond = Node { line, kind: Kind::Not(Box::new(cond)) };
                }
                node = Node { line, kind: Kind::If { cond: Box::new(cond), then: Box::new(node), otherwise: None } };
            } else if self.at_keyword("while") || self.at_keyword("until") || self.at_keyword("rescue") {
                return Err(unsupported(line, format!("`{}` modifier", describe(&self.peek().tok))));
            } else {
                return Ok(node);
            }
        }
    }

    /// `not`, `and`, `or`: the loosest operators.
    fn expression_statement(&mut self) -> Result<Node, Fail> {
        let mut left = self.not_expression()?;
        loop {
            let line = self.peek().line;
            let is_and = self.at_keyword("and");
            if !is_and && !self.at_keyword("or") {
                return Ok(left);
            }
            self.bump();
            self.skip_newlines();
            let right = Box::new(self.not_expression()?);
            let kind = if is_and { Kind::And(Box::new(left), right) } else { Kind::Or(Box::new(left), right) };
            left = Node { line, kind };
        }
    }

    fn not_expression(&mut self) -> Result<Node, Fail> {
        if self.at_keyword("not") {
            let line = self.bump().line;
            let operand = self.not_expression()?;
            return Ok(Node { line, kind: Kind::Not(Box::new(operand)) });
        }
        self.arg()
    }

    /// Assignment level (`x = ...`, `ENV["K"] = ...`, `x ||= ...`), right-associative.
    fn arg(&mut self) -> Result<Node, Fail> {
        let line = self.peek().line;
        if let Tok::Ident(name) = &self.peek().tok
            && !is_keyword(name)
            && !name.ends_with(['?', '!'])
            && let Tok::Punct(op @ ("=" | "||=" | "&&=" | "+=" | "-=" | "*=")) = self.peek_at(1).tok
        {
            let name = name.clone();
            self.bump();
            self.bump();
            self.skip_newlines();
            // Ruby knows the variable from its assignment on, even inside the value (`x = x` is nil).
            self.declare(&name);
            let value = Box::new(self.arg()?);
            let kind = if op == "=" {
                Kind::Assign(name, value)
            } else {
                Kind::OpAssign { target: Box::new(Node { line, kind: Kind::Local(name) }), op, value }
            };
            return Ok(Node { line, kind });
        }
        let target = self.ternary()?;
        let Tok::Punct(op @ ("=" | "||=" | "&&=" | "+=" | "-=" | "*=")) = self.peek().tok else {
            return Ok(target);
        };
        let Kind::Index { receiver, args } = target.kind else {
            return Err(unsupported(self.peek().line, format!("assignment `{op}` to this target")));
        };
        self.bump();
        self.skip_newlines();
        let value = Box::new(self.arg()?);
        if op == "=" {
            return Ok(Node { line, kind: Kind::IndexAssign { receiver, args, value } });
        }
        let target = Box::new(Node { line: target.line, kind: Kind::Index { receiver, args } });
        Ok(Node { line, kind: Kind::OpAssign { target, op, value } })
    }

    fn ternary(&mut self) -> Result<Node, Fail> {
        let cond = self.range()?;
        if !self.at_punct("?") {
            return Ok(cond);
        }
        let line = self.bump().line;
        self.skip_newlines();
        let then = self.arg()?;
        self.skip_newlines();
        self.expect_punct(":")?;
        self.skip_newlines();
        let otherwise = self.arg()?;
        Ok(Node {
            line,
            kind: Kind::If { cond: Box::new(cond), then: Box::new(then), otherwise: Some(Box::new(otherwise)) },
        })
    }

    fn range(&mut self) -> Result<Node, Fail> {
        let low = self.or_expression()?;
        let exclusive = self.at_punct("...");
        if !exclusive && !self.at_punct("..") {
            return Ok(low);
        }
        let line = self.bump().line;
        let endless = matches!(self.peek().tok, Tok::Punct("]" | ")") | Tok::Newline | Tok::Eof | Tok::InsertClose)
            || self.at_punct(";")
            || self.at_keyword("then");
        let high = if endless { None } else { Some(Box::new(self.or_expression()?)) };
        Ok(Node { line, kind: Kind::Range { low: Box::new(low), high, exclusive } })
    }

    fn or_expression(&mut self) -> Result<Node, Fail> {
        let mut left = self.and_expression()?;
        while self.at_punct("||") {
            let line = self.bump().line;
            self.skip_newlines();
            let right = self.and_expression()?;
            left = Node { line, kind: Kind::Or(Box::new(left), Box::new(right)) };
        }
        Ok(left)
    }

    fn and_expression(&mut self) -> Result<Node, Fail> {
        let mut left = self.equality()?;
        while self.at_punct("&&") {
            let line = self.bump().line;
            self.skip_newlines();
            let right = self.equality()?;
            left = Node { line, kind: Kind::And(Box::new(left), Box::new(right)) };
        }
        Ok(left)
    }

    fn binary(
        &mut self,
        op: BinOp,
        left: Node,
        right_side: fn(&mut Parser) -> Result<Node, Fail>,
    ) -> Result<Node, Fail> {
        let line = self.bump().line;
        self.skip_newlines();
        let right = right_side(self)?;
        Ok(Node { line, kind: Kind::Binary(op, Box::new(left), Box::new(right)) })
    }

    fn equality(&mut self) -> Result<Node, Fail> {
        let left = self.comparison()?;
        match self.peek().tok {
            Tok::Punct("==") => self.binary(BinOp::Eq, left, Parser::comparison),
            Tok::Punct("!=") => self.binary(BinOp::Ne, left, Parser::comparison),
            Tok::Punct(op @ ("=~" | "!~" | "===" | "<=>")) => Err(unsupported(self.peek().line, op)),
            _ => Ok(left),
        }
    }

    fn comparison(&mut self) -> Result<Node, Fail> {
        let mut left = self.bitwise()?;
        loop {
            let op = match self.peek().tok {
                Tok::Punct("<") => BinOp::Lt,
                Tok::Punct("<=") => BinOp::Le,
                Tok::Punct(">") => BinOp::Gt,
                Tok::Punct(">=") => BinOp::Ge,
                _ => return Ok(left),
            };
            left = self.binary(op, left, Parser::bitwise)?;
        }
    }

    fn bitwise(&mut self) -> Result<Node, Fail> {
        let left = self.additive()?;
        match self.peek().tok {
            Tok::Punct(op @ ("|" | "&" | "^" | "<<" | ">>")) => Err(unsupported(self.peek().line, op)),
            _ => Ok(left),
        }
    }

    fn additive(&mut self) -> Result<Node, Fail> {
        let mut left = self.multiplicative()?;
        loop {
            let op = match self.peek().tok {
                Tok::Punct("+") => BinOp::Add,
                Tok::Punct("-") => BinOp::Sub,
                _ => return Ok(left),
            };
            left = self.binary(op, left, Parser::multiplicative)?;
        }
    }

    fn multiplicative(&mut self) -> Result<Node, Fail> {
        let mut left = self.unary()?;
        loop {
            match self.peek().tok {
                Tok::Punct("*") => left = self.binary(BinOp::Mul, left, Parser::unary)?,
                Tok::Punct(op @ ("/" | "%" | "**")) => return Err(unsupported(self.peek().line, op)),
                _ => return Ok(left),
            }
        }
    }

    fn unary(&mut self) -> Result<Node, Fail> {
        let line = self.peek().line;
        match self.peek().tok {
            Tok::Punct("!") => {
                self.bump();
                let operand = self.unary()?;
                Ok(Node { line, kind: Kind::Not(Box::new(operand)) })
            }
            Tok::Punct("-") => {
                self.bump();
                let operand = self.unary()?;
                Ok(Node { line, kind: Kind::Neg(Box::new(operand)) })
            }
            Tok::Punct(op @ ("&" | "*" | "**" | "~" | "+" | "->" | "::")) => Err(unsupported(line, op)),
            _ => self.postfix(),
        }
    }

    fn postfix(&mut self) -> Result<Node, Fail> {
        let mut node = self.primary()?;
        loop {
            let token = self.peek().clone();
            match token.tok {
                Tok::Punct(dot @ ("." | "&.")) => {
                    self.bump();
                    self.skip_newlines();
                    let name_token = self.bump();
                    let name = match name_token.tok {
                        Tok::Ident(name) | Tok::Const(name) => name,
                        Tok::Punct("(") => return Err(unsupported(name_token.line, ".() call")),
                        _ => return Err(syntax(name_token.line, format!("a method name must follow `{dot}`"))),
                    };
                    node = self.call(Some(node), name, name_token.line, dot == "&.")?;
                }
                Tok::Punct("::") => {
                    self.bump();
                    let name_token = self.bump();
                    node = match (name_token.tok, node.kind) {
                        (Tok::Const(name), Kind::Const(mut path)) if !self.at_punct("(") => {
                            path.push(name);
                            Node { line: node.line, kind: Kind::Const(path) }
                        }
                        (Tok::Ident(name) | Tok::Const(name), kind) => {
                            self.call(Some(Node { line: node.line, kind }), name, name_token.line, false)?
                        }
                        _ => return Err(syntax(name_token.line, "a name must follow `::`")),
                    };
                }
                // `foo[1]` indexes; `foo [1]` passes an array to the method foo (or Foo), but indexes a variable.
                Tok::Punct("[") if !token.space_before || !is_command_name(&node) => {
                    self.bump();
                    let args = self.list_until("]")?;
                    node = Node { line: token.line, kind: Kind::Index { receiver: Box::new(node), args } };
                }
                _ => return Ok(node),
            }
        }
    }

    /// A method call's arguments and block, after its name.
    fn call(&mut self, receiver: Option<Node>, name: String, line: usize, safe_nav: bool) -> Result<Node, Fail> {
        let mut block_pass = None;
        let args = if self.at_punct("(") && !self.peek().space_before {
            self.bump();
            block_pass = self.block_pass_before(")")?;
            self.list_until(")")?
        } else if self.can_start_command_arg() {
            self.command_args()?
        } else {
            Vec::new()
        };
        let block = match (self.block()?, block_pass) {
            (Some(_), Some(_)) => return Err(syntax(line, "both a block argument (&) and a block are given")),
            (block, block_pass) => block.or(block_pass),
        };
        let receiver = receiver.map(Box::new);
        Ok(Node { line, kind: Kind::Call { receiver, name, args, block: block.map(Box::new), safe_nav } })
    }

    /// Whether the next token starts an argument of a call without parentheses (`require "json"`).
    fn can_start_command_arg(&self) -> bool {
        let token = self.peek();
        if !token.space_before {
            return false;
        }
        match &token.tok {
            Tok::Int(_)
            | Tok::Str(_)
            | Tok::XStr(_)
            | Tok::Words(_)
            | Tok::Symbols(_)
            | Tok::Sym(_)
            | Tok::Const(_) => true,
            Tok::Ident(name) => !is_keyword(name) || matches!(name.as_str(), "nil" | "true" | "false"),
            Tok::Punct("[" | "(") => true,
            // `first -1` is `first(-1)` to Ruby, not a subtraction (likewise `!x`, `*x`, `&x`, `::X`).
            Tok::Punct("-" | "!" | "*" | "&" | "::") => !self.peek_at(1).space_before,
            _ => false,
        }
    }

    fn command_args(&mut self) -> Result<Vec<Node>, Fail> {
        let saved = std::mem::replace(&mut self.no_do, true);
        let mut args = vec![self.arg()?];
        while self.at_punct(",") {
            self.bump();
            self.skip_newlines();
            args.push(self.arg()?);
        }
        self.no_do = saved;
        Ok(args)
    }

    /// `(&:name)` as a call's only argument: the block `{ |x| x.name }`.
    fn block_pass_before(&mut self, close: &str) -> Result<Option<Block>, Fail> {
        let (Tok::Punct("&"), Tok::Sym(name), Tok::Punct(after)) =
            (&self.peek().tok, &self.peek_at(1).tok, &self.peek_at(2).tok)
        else {
            return Ok(None);
        };
        if *after != close {
            return Ok(None);
        }
        let (line, name) = (self.peek().line, name.clone());
        self.bump();
        self.bump();
        // A name no Ruby code can spell, so it cannot clash with the template's variables.
        let param = "&item".to_string();
        let item = Node { line, kind: Kind::Local(param.clone()) };
        let call = Kind::Call { receiver: Some(Box::new(item)), name, args: Vec::new(), block: None, safe_nav: false };
        Ok(Some(Block { params: vec![param], body: Node { line, kind: call } }))
    }

    /// Comma-separated expressions up to `close` (call arguments, array elements, index arguments).
    fn list_until(&mut self, close: &str) -> Result<Vec<Node>, Fail> {
        let saved = std::mem::replace(&mut self.no_do, false);
        let mut items = Vec::new();
        loop {
            self.skip_newlines();
            if self.at_punct(close) {
                break;
            }
            if matches!(self.peek().tok, Tok::Punct("*" | "**" | "&")) {
                return Err(unsupported(self.peek().line, "splat or block-pass argument"));
            }
            items.push(self.arg()?);
            self.skip_newlines();
            if matches!(self.peek().tok, Tok::Punct("=>" | ":")) {
                return Err(unsupported(self.peek().line, "hash or keyword argument"));
            }
            if !self.at_punct(",") {
                break;
            }
            self.bump();
        }
        self.skip_newlines();
        self.expect_punct(close)?;
        self.no_do = saved;
        Ok(items)
    }

    fn block(&mut self) -> Result<Option<Block>, Fail> {
        let (close, line) = if self.at_punct("{") {
            ("}", self.bump().line)
        } else if self.at_keyword("do") && !self.no_do {
            ("end", self.bump().line)
        } else {
            return Ok(None);
        };
        let params = self.block_params()?;
        self.scopes.push(params.clone());
        self.block_depth += 1;
        let saved = std::mem::replace(&mut self.no_do, false);
        let body = self.statements();
        self.no_do = saved;
        self.block_depth -= 1;
        self.scopes.pop();
        let body = body?;
        let closed = if close == "}" { self.at_punct("}") } else { self.at_keyword("end") };
        if !closed {
            return Err(match self.peek().tok {
                Tok::Eof => syntax(line, format!("this block is never closed: add `{close}`")),
                Tok::InsertClose => {
                    syntax(line, format!("this block is not closed with `{close}` inside its `<%= %>` tag"))
                }
                _ => self.unexpected(),
            });
        }
        self.bump();
        Ok(Some(Block { params, body }))
    }

    fn block_params(&mut self) -> Result<Vec<String>, Fail> {
        if self.at_punct("||") {
            self.bump();
            return Ok(Vec::new());
        }
        if !self.at_punct("|") {
            return Ok(Vec::new());
        }
        self.bump();
        let mut params = Vec::new();
        loop {
            let token = self.bump();
            match token.tok {
                Tok::Ident(name) if !is_keyword(&name) => params.push(name),
                tok => return Err(unsupported(token.line, format!("block parameter `{}`", describe(&tok)))),
            }
            match self.bump().tok {
                Tok::Punct(",") => continue,
                Tok::Punct("|") => return Ok(params),
                tok => return Err(unsupported(token.line, format!("block parameter list with `{}`", describe(&tok)))),
            }
        }
    }

    fn primary(&mut self) -> Result<Node, Fail> {
        let token = self.peek().clone();
        let line = token.line;
        let kind = match token.tok {
            Tok::Int(n) => {
                self.bump();
                Kind::Int(n)
            }
            Tok::Str(pieces) => {
                self.bump();
                Kind::Str(self.pieces(pieces)?)
            }
            Tok::XStr(pieces) => {
                self.bump();
                Kind::XStr(self.pieces(pieces)?)
            }
            Tok::Words(words) => {
                self.bump();
                Kind::Array(words.into_iter().map(|w| Node { line, kind: Kind::Str(vec![Piece::Lit(w)]) }).collect())
            }
            Tok::Symbols(words) => {
                self.bump();
                Kind::Array(words.into_iter().map(|w| Node { line, kind: Kind::Sym(w) }).collect())
            }
            Tok::Sym(name) => {
                self.bump();
                Kind::Sym(name)
            }
            Tok::Text(index) => {
                self.bump();
                Kind::Text(index)
            }
            Tok::InsertOpen => {
                self.bump();
                let saved = std::mem::replace(&mut self.no_do, false);
                let body = self.statements()?;
                self.no_do = saved;
                if !matches!(self.peek().tok, Tok::InsertClose) {
                    return Err(match self.peek().tok {
                        Tok::Eof => syntax(
                            line,
                            "the Ruby in this `<%= %>` tag is incomplete (a `#` comment in it hides the rest of its line)",
                        ),
                        Tok::Ident(ref name) if matches!(name.as_str(), "end" | "else" | "elsif") => {
                            syntax(self.peek().line, format!("unexpected `{name}` inside `<%= %>`"))
                        }
                        _ => self.unexpected(),
                    });
                }
                self.bump();
                Kind::Insert(Box::new(body))
            }
            Tok::Punct("(") => {
                self.bump();
                let saved = std::mem::replace(&mut self.no_do, false);
                let body = self.statements()?;
                self.no_do = saved;
                self.expect_punct(")")?;
                return Ok(body);
            }
            Tok::Punct("[") => {
                self.bump();
                Kind::Array(self.list_until("]")?)
            }
            Tok::Punct("{") => return Err(unsupported(line, "hash literal")),
            Tok::Const(name) => {
                self.bump();
                if self.at_punct("(") && !self.peek().space_before {
                    return self.call(None, name, line, false);
                }
                Kind::Const(vec![name])
            }
            Tok::Ident(name) => return self.identifier(name, line),
            _ => return Err(self.unexpected()),
        };
        Ok(Node { line, kind })
    }

    fn identifier(&mut self, name: String, line: usize) -> Result<Node, Fail> {
        let kind = match name.as_str() {
            "nil" => Kind::Nil,
            "true" => Kind::Bool(true),
            "false" => Kind::Bool(false),
            "if" | "unless" => {
                self.bump();
                let node = self.if_chain(line, name == "unless")?;
                self.expect_end(line, &name)?;
                return Ok(node);
            }
            "next" | "break" => {
                self.bump();
                if self.block_depth == 0 {
                    return Err(syntax(line, format!("`{name}` outside a block (`each do ... end`)")));
                }
                let ends =
                    self.at_term() || self.at_statements_end() || self.at_keyword("if") || self.at_keyword("unless");
                let value = if ends { None } else { Some(Box::new(self.arg()?)) };
                let kind = if name == "next" { Kind::Next(value) } else { Kind::Break(value) };
                return Ok(Node { line, kind });
            }
            name if UNSUPPORTED_KEYWORDS.contains(&name) => return Err(unsupported(line, format!("`{name}`"))),
            "end" | "else" | "elsif" | "then" | "do" | "when" | "and" | "or" | "not" | "in" => {
                return Err(self.unexpected());
            }
            name if self.is_local(name) && !(self.at_punct_after_ident("(")) => Kind::Local(name.to_string()),
            _ => {
                self.bump();
                return self.call(None, name, line, false);
            }
        };
        self.bump();
        Ok(Node { line, kind })
    }

    fn at_punct_after_ident(&self, p: &str) -> bool {
        let next = self.peek_at(1);
        matches!(&next.tok, Tok::Punct(q) if *q == p) && !next.space_before
    }

    /// After `if`/`unless`/`elsif`: condition, body, and any `elsif`/`else` — but not the `end`.
    fn if_chain(&mut self, line: usize, negate: bool) -> Result<Node, Fail> {
        let mut cond = self.expression_statement()?;
        if negate {
            cond = Node { line, kind: Kind::Not(Box::new(cond)) };
        }
        if self.at_keyword("then") {
            self.bump();
        } else if self.at_term() {
            self.skip_terms();
            if self.at_keyword("then") {
                self.bump();
            }
        } else {
            return Err(self.unexpected());
        }
        let then = self.statements()?;
        let otherwise = if self.at_keyword("elsif") {
            if negate {
                return Err(syntax(self.peek().line, "`unless` cannot have `elsif`"));
            }
            let elsif_line = self.bump().line;
            Some(Box::new(self.if_chain(elsif_line, false)?))
        } else if self.at_keyword("else") {
            self.bump();
            Some(Box::new(self.statements()?))
        } else {
            None
        };
        Ok(Node { line, kind: Kind::If { cond: Box::new(cond), then: Box::new(then), otherwise } })
    }

    fn expect_end(&mut self, line: usize, opener: &str) -> Result<(), Fail> {
        if self.at_keyword("end") {
            self.bump();
            return Ok(());
        }
        Err(match self.peek().tok {
            Tok::Eof => syntax(line, format!("this `{opener}` is never closed: add `<% end %>`")),
            Tok::InsertClose => syntax(line, format!("this `{opener}` is not closed inside its `<%= %>` tag")),
            Tok::Punct(")" | "}") => syntax(line, format!("this `{opener}` is not closed with `end`")),
            _ => self.unexpected(),
        })
    }

    /// Parses the code inside `#{...}` in the scope around the string.
    fn pieces(&mut self, pieces: Vec<StrPiece>) -> Result<Vec<Piece>, Fail> {
        let mut out = Vec::new();
        for piece in pieces {
            match piece {
                StrPiece::Lit(text) => out.push(Piece::Lit(text)),
                StrPiece::Code(mut tokens, line) => {
                    tokens.push(Token { tok: Tok::Eof, line, space_before: true });
                    let saved_tokens = std::mem::replace(&mut self.tokens, tokens);
                    let saved_pos = std::mem::replace(&mut self.pos, 0);
                    let saved_no_do = std::mem::replace(&mut self.no_do, false);
                    let parsed = self.statements().and_then(|body| match self.peek().tok {
                        Tok::Eof => Ok(body),
                        _ => Err(self.unexpected()),
                    });
                    self.tokens = saved_tokens;
                    self.pos = saved_pos;
                    self.no_do = saved_no_do;
                    out.push(Piece::Code(parsed?));
                }
            }
        }
        Ok(out)
    }
}

fn is_command_name(node: &Node) -> bool {
    match &node.kind {
        Kind::Call { receiver: None, args, block: None, .. } => args.is_empty(),
        Kind::Const(_) => true,
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// What the interpreter knows: checked over the whole template before anything runs
// ---------------------------------------------------------------------------------------------------------------

/// Methods berth implements for at least one kind of value (see `Interp::call_method`).
const METHODS: &[&str] = &[
    // any value
    "to_s",
    "inspect",
    "nil?",
    "is_a?",
    "kind_of?",
    "instance_of?",
    "present?",
    "blank?",
    "presence",
    "to_json",
    "freeze",
    "dup",
    "itself",
    "then",
    // String
    "strip",
    "lstrip",
    "rstrip",
    "chomp",
    "upcase",
    "downcase",
    "capitalize",
    "length",
    "size",
    "empty?",
    "start_with?",
    "end_with?",
    "include?",
    "split",
    "tr",
    "sub",
    "gsub",
    "to_i",
    "to_sym",
    "intern",
    "to_str",
    "squish",
    "delete_prefix",
    "delete_suffix",
    "reverse",
    "chars",
    // Integer
    "zero?",
    "positive?",
    "negative?",
    "even?",
    "odd?",
    "abs",
    "succ",
    "pred",
    "times",
    // Array and Range
    "join",
    "first",
    "last",
    "count",
    "each",
    "each_with_index",
    "map",
    "collect",
    "select",
    "filter",
    "reject",
    "compact",
    "uniq",
    "sort",
    "flatten",
    "any?",
    "all?",
    "none?",
    "to_a",
    // ENV
    "fetch",
    "key?",
    "has_key?",
    "member?",
    "each_pair",
    "delete",
    // Symbol and Class
    "name",
    "id2name",
    // File, Dir, Dotenv, Kamal::Utils
    "read",
    "exist?",
    "file?",
    "directory?",
    "pwd",
    "load",
    "load!",
    "overload",
    "docker_arch",
];

/// Methods called without a receiver.
const FUNCTIONS: &[&str] = &["require", "raise", "fail"];

const CONSTANTS: &[&str] = &[
    "ENV",
    "File",
    "Dir",
    "Dotenv",
    "Kamal::Utils",
    "RUBY_ENGINE",
    "String",
    "Integer",
    "Numeric",
    "Array",
    "Hash",
    "Symbol",
    "NilClass",
    "TrueClass",
    "FalseClass",
    "Range",
    "Object",
    "StandardError",
    "RuntimeError",
    "ArgumentError",
    "KeyError",
];

fn check_supported(node: &Node) -> Result<(), Fail> {
    let line = node.line;
    match &node.kind {
        Kind::Nil | Kind::Bool(_) | Kind::Int(_) | Kind::Sym(_) | Kind::Text(_) | Kind::Local(_) => Ok(()),
        Kind::Str(pieces) | Kind::XStr(pieces) => pieces.iter().try_for_each(|piece| match piece {
            Piece::Lit(_) => Ok(()),
            Piece::Code(code) => check_supported(code),
        }),
        Kind::Array(items) | Kind::Seq(items) => items.iter().try_for_each(check_supported),
        Kind::Insert(inner) | Kind::Assign(_, inner) | Kind::Not(inner) | Kind::Neg(inner) => check_supported(inner),
        Kind::Next(value) | Kind::Break(value) => value.as_deref().map_or(Ok(()), check_supported),
        Kind::OpAssign { target, value, .. } => {
            check_supported(target)?;
            check_supported(value)
        }
        Kind::IndexAssign { receiver, args, value } => {
            check_supported(receiver)?;
            args.iter().try_for_each(check_supported)?;
            check_supported(value)
        }
        Kind::Const(path) => {
            let name = path.join("::");
            if CONSTANTS.contains(&name.as_str()) { Ok(()) } else { Err(unsupported(line, name)) }
        }
        Kind::Call { receiver, name, args, block, .. } => {
            match receiver {
                Some(receiver) if METHODS.contains(&name.as_str()) => check_supported(receiver)?,
                Some(receiver) => return Err(unsupported(line, format!("{}.{name}", receiver_label(receiver)))),
                None if FUNCTIONS.contains(&name.as_str()) => {}
                None => return Err(unsupported(line, name.clone())),
            }
            args.iter().try_for_each(check_supported)?;
            block.as_deref().map_or(Ok(()), |block| check_supported(&block.body))
        }
        Kind::Index { receiver, args } => {
            check_supported(receiver)?;
            args.iter().try_for_each(check_supported)
        }
        Kind::And(left, right) | Kind::Or(left, right) | Kind::Binary(_, left, right) => {
            check_supported(left)?;
            check_supported(right)
        }
        Kind::Range { low, high, .. } => {
            check_supported(low)?;
            high.as_deref().map_or(Ok(()), check_supported)
        }
        Kind::If { cond, then, otherwise } => {
            check_supported(cond)?;
            check_supported(then)?;
            otherwise.as_deref().map_or(Ok(()), check_supported)
        }
    }
}

/// A short name for a call's receiver in messages: `Rails.application`, `value.encode`.
fn receiver_label(node: &Node) -> String {
    match &node.kind {
        Kind::Const(path) => path.join("::"),
        Kind::Local(name) => name.clone(),
        Kind::Call { receiver, name, .. } => match receiver {
            Some(inner) => format!("{}.{name}", receiver_label(inner)),
            None => name.clone(),
        },
        Kind::Str(_) => "\"...\"".into(),
        Kind::Index { receiver, .. } => format!("{}[...]", receiver_label(receiver)),
        _ => "(...)".into(),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Value {
    Nil,
    Bool(bool),
    Int(i64),
    Str(String),
    Sym(String),
    Array(Vec<Value>),
    Range { low: i64, high: Option<i64>, exclusive: bool },
    Object(Builtin),
}

#[derive(Clone, Debug, PartialEq)]
enum Builtin {
    Env,
    File,
    Dir,
    Dotenv,
    KamalUtils,
    Class(&'static str),
    /// A Ruby value berth does not model (the ERB output buffer, a Hash from `Dotenv.load`): using it is
    /// Unsupported, discarding it is fine.
    Opaque(&'static str),
}

impl Value {
    fn truthy(&self) -> bool {
        !matches!(self, Value::Nil | Value::Bool(false))
    }

    fn class_name(&self) -> &'static str {
        match self {
            Value::Nil => "nil",
            Value::Bool(true) => "true",
            Value::Bool(false) => "false",
            Value::Int(_) => "Integer",
            Value::Str(_) => "String",
            Value::Sym(_) => "Symbol",
            Value::Array(_) => "Array",
            Value::Range { .. } => "Range",
            Value::Object(Builtin::Env) => "ENV",
            Value::Object(Builtin::Class(_)) => "Class",
            Value::Object(Builtin::Opaque(what)) => what,
            Value::Object(_) => "Module",
        }
    }
}

enum Flow {
    Next(Value),
    Break(Value),
    Fail(Fail),
}

impl From<Fail> for Flow {
    fn from(fail: Fail) -> Flow {
        Flow::Fail(fail)
    }
}

type Eval<T = Value> = Result<T, Flow>;

/// What Ruby's `isspace` accepts: `to_i` skips these, `split` without a separator splits on them.
const ASCII_SPACE: [char; 6] = [' ', '\t', '\n', '\x0b', '\x0c', '\r'];

/// Ruby's `String#strip` set: ASCII whitespace and NUL (not Unicode spaces such as U+00A0).
fn is_ruby_strip_char(c: char) -> bool {
    matches!(c, '\0' | '\t' | '\n' | '\x0b' | '\x0c' | '\r' | ' ')
}

/// `String#to_i`: leading blanks, a sign, digits with single underscores; anything after is ignored.
fn ruby_to_i(text: &str, line: usize) -> Result<i64, Fail> {
    let trimmed = text.trim_start_matches(ASCII_SPACE);
    let (negative, rest) = match trimmed.as_bytes().first() {
        Some(b'-') => (true, &trimmed[1..]),
        Some(b'+') => (false, &trimmed[1..]),
        _ => (false, trimmed),
    };
    let mut digits = String::new();
    let mut previous_underscore = false;
    for c in rest.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            previous_underscore = false;
        } else if c == '_' && !digits.is_empty() && !previous_underscore {
            previous_underscore = true;
        } else {
            break;
        }
    }
    if digits.is_empty() {
        return Ok(0);
    }
    let signed = if negative { format!("-{digits}") } else { digits };
    signed.parse().map_err(|_| unsupported(line, "integer beyond 64 bits (String#to_i)"))
}

/// `String#chomp`: one trailing `\r\n`, `\n` or `\r`.
fn chomp_line_break(text: &str) -> String {
    let trimmed = text.strip_suffix("\r\n").or_else(|| text.strip_suffix('\n')).or_else(|| text.strip_suffix('\r'));
    trimmed.unwrap_or(text).to_string()
}

/// `String#split` with a string separator or none (awk-style whitespace splitting).
fn ruby_split(text: &str, separator: Option<&str>) -> Vec<String> {
    let mut parts: Vec<String> = match separator {
        None | Some(" ") => text.split(ASCII_SPACE).filter(|part| !part.is_empty()).map(str::to_string).collect(),
        Some("") => text.chars().map(String::from).collect(),
        Some(separator) => text.split(separator).map(str::to_string).collect(),
    };
    while parts.last().is_some_and(String::is_empty) {
        parts.pop();
    }
    parts
}

/// The characters of a `String#tr` set: ranges `a-z`, backslash escapes; `^` is handled by the caller.
fn tr_set(spec: &str, line: usize) -> Result<Vec<char>, Fail> {
    let mut chars = Vec::new();
    let mut escaped = Vec::new();
    let mut iter = spec.chars().peekable();
    while let Some(c) = iter.next() {
        if c == '\\'
            && let Some(next) = iter.next()
        {
            chars.push(next);
            escaped.push(true);
        } else {
            chars.push(c);
            escaped.push(false);
        }
    }
    let mut set = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if i + 2 < chars.len() && chars[i + 1] == '-' && !escaped[i + 1] {
            let (low, high) = (chars[i], chars[i + 2]);
            if low > high {
                return Err(eval_error(line, format!("invalid range \"{low}-{high}\" in String#tr (ArgumentError)")));
            }
            set.extend(low..=high);
            i += 3;
        } else {
            set.push(chars[i]);
            i += 1;
        }
    }
    Ok(set)
}

fn ruby_tr(text: &str, from: &str, to: &str, line: usize) -> Result<String, Fail> {
    let negate = from.len() > 1 && from.starts_with('^');
    let from_set = tr_set(if negate { &from[1..] } else { from }, line)?;
    let to_set = tr_set(to, line)?;
    let mut out = String::new();
    for c in text.chars() {
        if negate {
            // Everything outside the set becomes the last character of `to` (or is deleted if `to` is empty).
            if from_set.contains(&c) {
                out.push(c);
            } else if let Some(last) = to_set.last() {
                out.push(*last);
            }
            continue;
        }
        // Later occurrences of a character in the set win, as in Ruby's translation table; a short `to`
        // repeats its last character, an empty one deletes.
        match from_set.iter().rposition(|f| *f == c) {
            None => out.push(c),
            Some(index) => {
                if let Some(replacement) = to_set.get(index).or(to_set.last()) {
                    out.push(*replacement);
                }
            }
        }
    }
    Ok(out)
}

/// `String#[]` with a start and length, or a range already resolved to start and end (exclusive).
fn char_slice(chars: &[char], start: i64, length: i64) -> Option<String> {
    let len = chars.len() as i64;
    let start = if start < 0 { start + len } else { start };
    if start < 0 || start > len || length < 0 {
        return None;
    }
    let end = (start + length).min(len);
    Some(chars[start as usize..end as usize].iter().collect())
}

/// Resolves `low..high` against a length: `(start, count)` or None when Ruby returns nil.
fn range_bounds(low: i64, high: Option<i64>, exclusive: bool, len: i64) -> Option<(i64, i64)> {
    let start = if low < 0 { low + len } else { low };
    if start < 0 || start > len {
        return None;
    }
    let end = match high {
        None => len,
        Some(high) => {
            let high = if high < 0 { high + len } else { high };
            if exclusive { high } else { high + 1 }
        }
    };
    Some((start, (end.min(len) - start).max(0)))
}

/// `String#inspect`, for the strings berth can render exactly: whether Ruby shows a non-ASCII character or
/// escapes it depends on the locale Kamal runs in, so non-ASCII characters are refused.
fn inspect_str(text: &str, line: usize) -> Result<String, Fail> {
    let mut out = String::from("\"");
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\x0c' => out.push_str("\\f"),
            '\x0b' => out.push_str("\\v"),
            '\x08' => out.push_str("\\b"),
            '\x07' => out.push_str("\\a"),
            '\x1b' => out.push_str("\\e"),
            '#' if matches!(chars.peek(), Some('{' | '$' | '@')) => out.push_str("\\#"),
            c if c.is_ascii_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c if c.is_ascii() => out.push(c),
            c => return Err(unsupported(line, format!("inspect of a string holding `{}`", c.escape_unicode()))),
        }
    }
    out.push('"');
    Ok(out)
}

/// `to_json` for a string, where the json gem and every ActiveSupport version Kamal may load agree: they
/// differ on `<`, `>`, `&`, `/`, U+2028/9 and rare control characters, so those are refused.
fn json_str(text: &str, line: usize) -> Result<String, Fail> {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '<' | '>' | '&' | '/' | '\u{2028}' | '\u{2029}' => {
                return Err(unsupported(line, format!("to_json of a string holding `{c}`")));
            }
            c if c.is_control() => return Err(unsupported(line, "to_json of a string holding a control character")),
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(out)
}

fn is_plain_symbol(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(is_ident_start) && {
        let rest: Vec<char> = chars.collect();
        let body = match rest.last() {
            Some('?' | '!' | '=') => &rest[..rest.len() - 1],
            _ => &rest[..],
        };
        body.iter().all(|c| is_ident_char(*c))
    }
}

/// Libraries a template may `require`: part of Ruby or of Kamal, and without effect on what berth evaluates.
/// (`dotenv/load` is missing on purpose: it loads `.env` as a side effect.)
const REQUIRABLE: &[&str] = &[
    "json",
    "yaml",
    "psych",
    "erb",
    "dotenv",
    "pathname",
    "time",
    "date",
    "securerandom",
    "shellwords",
    "uri",
    "set",
    "fileutils",
    "open3",
    "socket",
    "etc",
    "base64",
    "digest",
    "active_support",
];

/// Ruby's list of words that make `` `cmd` `` go through the shell even without metacharacters.
const POSIX_SH_WORDS: &[&str] = &[
    "!", ".", ":", "break", "case", "continue", "do", "done", "elif", "else", "esac", "eval", "exec", "exit", "export",
    "fi", "for", "if", "in", "readonly", "return", "set", "shift", "then", "times", "trap", "unset", "until", "while",
];

/// Whether Ruby runs a backtick command without a shell (it then raises if the program does not exist).
fn ruby_execs_directly(command: &str) -> bool {
    if command.chars().any(|c| "*?{}[]<>()~&|\\$;'`\"\n#".contains(c)) {
        return false;
    }
    match command.split([' ', '\t']).find(|word| !word.is_empty()) {
        None => true,
        Some(first) => !first.contains('=') && (first.contains('/') || !POSIX_SH_WORDS.contains(&first)),
    }
}

/// `.env` files: only plain `KEY=value` lines (quoted or not) are read natively; dotenv's substitutions
/// (`$VAR`, `$(cmd)`), escapes and multi-line values are left to Ruby. None means "outside that subset".
fn parse_dotenv(text: &str) -> Option<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let (key, rest) = line.split_once('=')?;
        let key = key.trim_end();
        if !key.chars().next().is_some_and(is_ident_start) || !key.chars().all(is_ident_char) {
            return None;
        }
        let rest = rest.trim_start();
        let value = match rest.chars().next() {
            Some(quote @ ('\'' | '"')) => {
                let inner = &rest[1..];
                let end = inner.find(quote)?;
                let (value, after) = (&inner[..end], inner[end + 1..].trim());
                if value.contains(['\\', '$', '\'', '"']) || !(after.is_empty() || after.starts_with('#')) {
                    return None;
                }
                value.to_string()
            }
            _ => {
                if rest.contains(['#', '$', '\\', '\'', '"', '`']) {
                    return None;
                }
                rest.trim_end().to_string()
            }
        };
        pairs.push((key.to_string(), value));
    }
    Some(pairs)
}

// ---------------------------------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------------------------------

struct Interp<'a> {
    cwd: &'a Path,
    /// `ENV` as the template sees and changes it.
    vars: BTreeMap<String, String>,
    texts: &'a [String],
    out: String,
    /// Local variables: the template's top level, then one frame per running block.
    frames: Vec<HashMap<String, Value>>,
}

impl<'a> Interp<'a> {
    fn new(env: &'a Environment, texts: &'a [String]) -> Interp<'a> {
        Interp { cwd: env.cwd(), vars: env.vars().clone(), texts, out: String::new(), frames: vec![HashMap::new()] }
    }

    fn run(&mut self, program: &Node) -> Result<(), Fail> {
        match self.eval(program) {
            Ok(_) => Ok(()),
            Err(Flow::Fail(fail)) => Err(fail),
            // The parser refuses `next`/`break` outside blocks, so these cannot escape; stay safe anyway.
            Err(Flow::Next(_) | Flow::Break(_)) => Err(syntax(program.line, "`next` or `break` outside a block")),
        }
    }

    fn lookup(&self, name: &str) -> Value {
        self.frames.iter().rev().find_map(|frame| frame.get(name)).cloned().unwrap_or(Value::Nil)
    }

    fn assign(&mut self, name: &str, value: Value) {
        for frame in self.frames.iter_mut().rev() {
            if let Some(slot) = frame.get_mut(name) {
                *slot = value;
                return;
            }
        }
        if let Some(frame) = self.frames.last_mut() {
            frame.insert(name.to_string(), value);
        }
    }

    fn eval(&mut self, node: &Node) -> Eval {
        let line = node.line;
        Ok(match &node.kind {
            Kind::Nil => Value::Nil,
            Kind::Bool(b) => Value::Bool(*b),
            Kind::Int(n) => Value::Int(*n),
            Kind::Str(pieces) => Value::Str(self.interpolate(pieces)?),
            Kind::XStr(pieces) => {
                let command = self.interpolate(pieces)?;
                Value::Str(self.run_command(&command, line)?)
            }
            Kind::Sym(name) => Value::Sym(name.clone()),
            Kind::Array(items) => Value::Array(items.iter().map(|item| self.eval(item)).collect::<Eval<Vec<_>>>()?),
            Kind::Text(index) => {
                let text = self.texts.get(*index).map_or("", String::as_str);
                self.out.push_str(text);
                Value::Object(Builtin::Opaque("the ERB output buffer"))
            }
            Kind::Insert(body) => {
                let value = self.eval(body)?;
                let text = self.to_s(&value, line)?;
                self.out.push_str(&text);
                Value::Object(Builtin::Opaque("the ERB output buffer"))
            }
            Kind::Seq(list) => {
                let mut last = Value::Nil;
                for statement in list {
                    last = self.eval(statement)?;
                }
                last
            }
            Kind::Local(name) => self.lookup(name),
            Kind::Assign(name, value) => {
                let value = self.eval(value)?;
                self.assign(name, value.clone());
                value
            }
            Kind::OpAssign { target, op, value } => self.op_assign(target, op, value, line)?,
            Kind::IndexAssign { receiver, args, value } => {
                let receiver = self.eval(receiver)?;
                let args = self.eval_all(args)?;
                let value = self.eval(value)?;
                self.index_assign(receiver, args, value.clone(), line)?;
                value
            }
            Kind::Const(path) => self.constant(path, line)?,
            Kind::Call { receiver, name, args, block, safe_nav } => {
                let block = block.as_deref();
                match receiver {
                    None => {
                        let args = self.eval_all(args)?;
                        self.call_function(name, args, line)?
                    }
                    Some(receiver) => {
                        let receiver = self.eval(receiver)?;
                        if *safe_nav && receiver == Value::Nil {
                            return Ok(Value::Nil);
                        }
                        let args = self.eval_all(args)?;
                        self.call_method(receiver, name, args, block, line)?
                    }
                }
            }
            Kind::Index { receiver, args } => {
                let receiver = self.eval(receiver)?;
                let args = self.eval_all(args)?;
                self.index(receiver, args, line)?
            }
            Kind::Not(operand) => Value::Bool(!self.eval(operand)?.truthy()),
            Kind::And(left, right) => {
                let left = self.eval(left)?;
                if left.truthy() { self.eval(right)? } else { left }
            }
            Kind::Or(left, right) => {
                let left = self.eval(left)?;
                if left.truthy() { left } else { self.eval(right)? }
            }
            Kind::Binary(op, left, right) => {
                let left = self.eval(left)?;
                let right = self.eval(right)?;
                self.binary(*op, left, right, line)?
            }
            Kind::Neg(operand) => match self.eval(operand)? {
                Value::Int(n) => {
                    Value::Int(n.checked_neg().ok_or_else(|| unsupported(line, "integer beyond 64 bits"))?)
                }
                Value::Nil => return Err(eval_error(line, "undefined method '-@' for nil (NoMethodError)").into()),
                other => return Err(unsupported(line, format!("unary minus on {}", other.class_name())).into()),
            },
            Kind::Range { low, high, exclusive } => {
                let low = self.eval(low)?;
                let high = match high {
                    Some(high) => Some(self.eval(high)?),
                    None => None,
                };
                match (low, high) {
                    (Value::Int(low), None | Some(Value::Nil)) => {
                        Value::Range { low, high: None, exclusive: *exclusive }
                    }
                    (Value::Int(low), Some(Value::Int(high))) => {
                        Value::Range { low, high: Some(high), exclusive: *exclusive }
                    }
                    _ => return Err(unsupported(line, "range of anything but integers").into()),
                }
            }
            Kind::If { cond, then, otherwise } => {
                if self.eval(cond)?.truthy() {
                    self.eval(then)?
                } else {
                    match otherwise {
                        Some(otherwise) => self.eval(otherwise)?,
                        None => Value::Nil,
                    }
                }
            }
            Kind::Next(value) => {
                let value = match value {
                    Some(value) => self.eval(value)?,
                    None => Value::Nil,
                };
                return Err(Flow::Next(value));
            }
            Kind::Break(value) => {
                let value = match value {
                    Some(value) => self.eval(value)?,
                    None => Value::Nil,
                };
                return Err(Flow::Break(value));
            }
        })
    }

    fn eval_all(&mut self, nodes: &[Node]) -> Eval<Vec<Value>> {
        nodes.iter().map(|node| self.eval(node)).collect()
    }

    fn interpolate(&mut self, pieces: &[Piece]) -> Eval<String> {
        let mut text = String::new();
        for piece in pieces {
            match piece {
                Piece::Lit(literal) => text.push_str(literal),
                Piece::Code(code) => {
                    let value = self.eval(code)?;
                    text.push_str(&self.to_s(&value, code.line)?);
                }
            }
        }
        Ok(text)
    }

    fn op_assign(&mut self, target: &Node, op: &str, value: &Node, line: usize) -> Eval {
        let (current, index_target) = match &target.kind {
            Kind::Local(name) => (self.lookup(name), None),
            Kind::Index { receiver, args } => {
                let receiver = self.eval(receiver)?;
                let args = self.eval_all(args)?;
                (self.index(receiver.clone(), args.clone(), line)?, Some((receiver, args)))
            }
            _ => return Err(unsupported(line, format!("`{op}` on this target")).into()),
        };
        let new = match op {
            "||=" if current.truthy() => return Ok(current),
            "&&=" if !current.truthy() => return Ok(current),
            "||=" | "&&=" => self.eval(value)?,
            "+=" | "-=" | "*=" => {
                let operand = self.eval(value)?;
                let op = match op {
                    "+=" => BinOp::Add,
                    "-=" => BinOp::Sub,
                    _ => BinOp::Mul,
                };
                self.binary(op, current, operand, line)?
            }
            _ => return Err(unsupported(line, op.to_string()).into()),
        };
        match (&target.kind, index_target) {
            (Kind::Local(name), _) => self.assign(name, new.clone()),
            (_, Some((receiver, args))) => self.index_assign(receiver, args, new.clone(), line)?,
            _ => return Err(unsupported(line, format!("`{op}` on this target")).into()),
        }
        Ok(new)
    }

    fn constant(&self, path: &[String], line: usize) -> Result<Value, Fail> {
        let name = path.join("::");
        Ok(match name.as_str() {
            "ENV" => Value::Object(Builtin::Env),
            "File" => Value::Object(Builtin::File),
            "Dir" => Value::Object(Builtin::Dir),
            "Dotenv" => Value::Object(Builtin::Dotenv),
            "Kamal::Utils" => Value::Object(Builtin::KamalUtils),
            // berth stands in for Kamal, which runs on CRuby.
            "RUBY_ENGINE" => Value::Str("ruby".into()),
            _ => match CONSTANTS.iter().find(|known| **known == name) {
                Some(class) => Value::Object(Builtin::Class(class)),
                None => return Err(unsupported(line, name)),
            },
        })
    }

    fn to_s(&self, value: &Value, line: usize) -> Result<String, Fail> {
        Ok(match value {
            Value::Nil => String::new(),
            Value::Bool(b) => b.to_string(),
            Value::Int(n) => n.to_string(),
            Value::Str(text) | Value::Sym(text) => text.clone(),
            Value::Array(_) | Value::Range { .. } => self.inspect(value, line)?,
            Value::Object(Builtin::Env) => "ENV".into(),
            Value::Object(Builtin::File) => "File".into(),
            Value::Object(Builtin::Dir) => "Dir".into(),
            Value::Object(Builtin::Dotenv) => "Dotenv".into(),
            Value::Object(Builtin::KamalUtils) => "Kamal::Utils".into(),
            Value::Object(Builtin::Class(name)) => (*name).to_string(),
            Value::Object(Builtin::Opaque(what)) => return Err(unsupported(line, format!("using {what} as a value"))),
        })
    }

    fn inspect(&self, value: &Value, line: usize) -> Result<String, Fail> {
        Ok(match value {
            Value::Nil => "nil".into(),
            Value::Str(text) => inspect_str(text, line)?,
            Value::Sym(name) if is_plain_symbol(name) => format!(":{name}"),
            Value::Sym(_) => return Err(unsupported(line, "inspect of an unusual symbol")),
            Value::Array(items) => {
                let items = items.iter().map(|item| self.inspect(item, line)).collect::<Result<Vec<_>, _>>()?;
                format!("[{}]", items.join(", "))
            }
            Value::Range { low, high, exclusive } => {
                let dots = if *exclusive { "..." } else { ".." };
                format!("{low}{dots}{}", high.map(|h| h.to_string()).unwrap_or_default())
            }
            // ENV.inspect is a Hash's inspect, whose format changed in Ruby 3.4.
            Value::Object(Builtin::Env) => return Err(unsupported(line, "ENV.inspect")),
            other => self.to_s(other, line)?,
        })
    }

    fn to_json(&self, value: &Value, line: usize) -> Result<String, Fail> {
        Ok(match value {
            Value::Nil => "null".into(),
            Value::Bool(b) => b.to_string(),
            Value::Int(n) => n.to_string(),
            Value::Str(text) | Value::Sym(text) => json_str(text, line)?,
            Value::Array(items) => {
                let items = items.iter().map(|item| self.to_json(item, line)).collect::<Result<Vec<_>, _>>()?;
                format!("[{}]", items.join(","))
            }
            other => return Err(unsupported(line, format!("to_json of {}", other.class_name()))),
        })
    }

    /// ActiveSupport's `blank?`, which Kamal has loaded.
    fn blank(&self, value: &Value, line: usize) -> Result<bool, Fail> {
        Ok(match value {
            Value::Nil | Value::Bool(false) => true,
            Value::Bool(true) | Value::Int(_) | Value::Range { .. } => false,
            Value::Str(text) => text.chars().all(char::is_whitespace),
            Value::Sym(name) => name.is_empty(),
            Value::Array(items) => items.is_empty(),
            Value::Object(Builtin::Env) => self.vars.is_empty(),
            Value::Object(Builtin::Opaque(what)) => return Err(unsupported(line, format!("blank? on {what}"))),
            Value::Object(_) => false,
        })
    }

    fn binary(&self, op: BinOp, left: Value, right: Value, line: usize) -> Result<Value, Fail> {
        use std::cmp::Ordering;
        let symbol = op.symbol();
        if matches!(left, Value::Object(Builtin::Opaque(_))) || matches!(right, Value::Object(Builtin::Opaque(_))) {
            return Err(unsupported(line, format!("`{symbol}` on a value berth does not model")));
        }
        let too_big = || unsupported(line, "integer beyond 64 bits");
        let compare = |ordering: Ordering| -> bool {
            match op {
                BinOp::Lt => ordering == Ordering::Less,
                BinOp::Le => ordering != Ordering::Greater,
                BinOp::Gt => ordering == Ordering::Greater,
                _ => ordering != Ordering::Less,
            }
        };
        Ok(match (op, left, right) {
            (BinOp::Eq, left, right) => Value::Bool(left == right),
            (BinOp::Ne, left, right) => Value::Bool(left != right),
            (BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge, Value::Int(a), Value::Int(b)) => {
                Value::Bool(compare(a.cmp(&b)))
            }
            (BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge, Value::Str(a), Value::Str(b)) => {
                Value::Bool(compare(a.cmp(&b)))
            }
            (BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge, Value::Int(_) | Value::Str(_), other) => {
                let shown = self.inspect(&other, line).unwrap_or_else(|_| other.class_name().to_string());
                return Err(eval_error(line, format!("comparison with {shown} failed (ArgumentError)")));
            }
            (BinOp::Add, Value::Int(a), Value::Int(b)) => Value::Int(a.checked_add(b).ok_or_else(too_big)?),
            (BinOp::Sub, Value::Int(a), Value::Int(b)) => Value::Int(a.checked_sub(b).ok_or_else(too_big)?),
            (BinOp::Mul, Value::Int(a), Value::Int(b)) => Value::Int(a.checked_mul(b).ok_or_else(too_big)?),
            (BinOp::Add, Value::Str(a), Value::Str(b)) => Value::Str(a + &b),
            (BinOp::Add, Value::Str(_), other) => {
                let message = format!("no implicit conversion of {} into String (TypeError)", other.class_name());
                return Err(eval_error(line, format!("{message}\n  convert it first, e.g. value.to_s")));
            }
            (BinOp::Add | BinOp::Sub | BinOp::Mul, Value::Int(_), other @ (Value::Str(_) | Value::Nil)) => {
                let class = if other == Value::Nil { "nil" } else { "String" };
                return Err(eval_error(
                    line,
                    format!("{class} can't be coerced into Integer (TypeError)\n  convert it first, e.g. value.to_i"),
                ));
            }
            (BinOp::Mul, Value::Str(text), Value::Int(count)) => {
                let count = usize::try_from(count)
                    .map_err(|_| eval_error(line, "negative argument to String#* (ArgumentError)"))?;
                if text.len().saturating_mul(count) > 1 << 24 {
                    return Err(unsupported(line, "a string of more than 16 MiB"));
                }
                Value::Str(text.repeat(count))
            }
            (BinOp::Add, Value::Array(mut a), Value::Array(b)) => {
                a.extend(b);
                Value::Array(a)
            }
            (_, Value::Nil, _) => {
                return Err(eval_error(
                    line,
                    format!(
                        "undefined method '{symbol}' for nil (NoMethodError)\n  a missing ENV[\"...\"] is nil: use ENV.fetch(\"KEY\", default)"
                    ),
                ));
            }
            (_, left, right) => {
                return Err(unsupported(line, format!("{} {symbol} {}", left.class_name(), right.class_name())));
            }
        })
    }

    fn env_key(&self, key: &Value, line: usize) -> Result<String, Fail> {
        match key {
            Value::Str(key) => Ok(key.clone()),
            other => Err(eval_error(
                line,
                format!(
                    "no implicit conversion of {} into String (TypeError): ENV keys are strings",
                    other.class_name()
                ),
            )),
        }
    }

    fn index(&self, receiver: Value, args: Vec<Value>, line: usize) -> Result<Value, Fail> {
        match (receiver, args.as_slice()) {
            (Value::Object(Builtin::Env), [key]) => {
                let key = self.env_key(key, line)?;
                Ok(self.vars.get(&key).map_or(Value::Nil, |value| Value::Str(value.clone())))
            }
            (Value::Str(text), args) => {
                let chars: Vec<char> = text.chars().collect();
                let len = chars.len() as i64;
                Ok(match args {
                    [Value::Int(i)] => {
                        char_slice(&chars, *i, 1).filter(|s| !s.is_empty()).map_or(Value::Nil, Value::Str)
                    }
                    [Value::Int(start), Value::Int(count)] => {
                        char_slice(&chars, *start, *count).map_or(Value::Nil, Value::Str)
                    }
                    [Value::Range { low, high, exclusive }] => match range_bounds(*low, *high, *exclusive, len) {
                        Some((start, count)) => char_slice(&chars, start, count).map_or(Value::Nil, Value::Str),
                        None => Value::Nil,
                    },
                    [Value::Str(needle)] => {
                        if text.contains(needle.as_str()) {
                            Value::Str(needle.clone())
                        } else {
                            Value::Nil
                        }
                    }
                    _ => return Err(unsupported(line, "String#[] with these arguments")),
                })
            }
            (Value::Array(items), args) => {
                let len = items.len() as i64;
                let at = |i: i64| {
                    let i = if i < 0 { i + len } else { i };
                    usize::try_from(i).ok().and_then(|i| items.get(i)).cloned().unwrap_or(Value::Nil)
                };
                let slice = |start: i64, count: i64| {
                    let start = if start < 0 { start + len } else { start };
                    if start < 0 || start > len || count < 0 {
                        return Value::Nil;
                    }
                    let end = (start + count).min(len);
                    Value::Array(items[start as usize..end as usize].to_vec())
                };
                Ok(match args {
                    [Value::Int(i)] => at(*i),
                    [Value::Int(start), Value::Int(count)] => slice(*start, *count),
                    [Value::Range { low, high, exclusive }] => match range_bounds(*low, *high, *exclusive, len) {
                        Some((start, count)) => slice(start, count),
                        None => Value::Nil,
                    },
                    _ => return Err(unsupported(line, "Array#[] with these arguments")),
                })
            }
            (Value::Nil, _) => Err(eval_error(
                line,
                "undefined method '[]' for nil (NoMethodError)\n  a missing ENV[\"...\"] is nil: use ENV.fetch(\"KEY\", default)",
            )),
            (other, _) => Err(unsupported(line, format!("{}#[]", other.class_name()))),
        }
    }

    fn index_assign(&mut self, receiver: Value, args: Vec<Value>, value: Value, line: usize) -> Result<(), Fail> {
        let (Value::Object(Builtin::Env), [key]) = (&receiver, args.as_slice()) else {
            return Err(unsupported(line, format!("{}#[]=", receiver.class_name())));
        };
        let key = self.env_key(key, line)?;
        match value {
            Value::Str(value) => {
                self.vars.insert(key, value);
            }
            Value::Nil => {
                self.vars.remove(&key);
            }
            other => {
                return Err(eval_error(
                    line,
                    format!(
                        "no implicit conversion of {} into String (TypeError)\n  ENV values are strings: assign value.to_s",
                        other.class_name()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn call_function(&mut self, name: &str, args: Vec<Value>, line: usize) -> Result<Value, Fail> {
        match (name, args.as_slice()) {
            ("require", [Value::Str(library)]) => {
                let known = REQUIRABLE.contains(&library.as_str()) || library.starts_with("active_support/");
                if !known {
                    return Err(unsupported(line, format!("require \"{library}\"")));
                }
                Ok(Value::Object(Builtin::Opaque("the result of require")))
            }
            ("raise" | "fail", args) => {
                let (class, message) = match args {
                    [] => ("RuntimeError", "unhandled exception".to_string()),
                    [Value::Str(message)] => ("RuntimeError", message.clone()),
                    [Value::Object(Builtin::Class(class))] => (*class, (*class).to_string()),
                    [Value::Object(Builtin::Class(class)), Value::Str(message)] => (*class, message.clone()),
                    _ => return Err(unsupported(line, "raise with these arguments")),
                };
                Err(eval_error(
                    line,
                    format!(
                        "the template raised {class}: {message}\n  this is a check in the config's own ERB: meet the condition it tests"
                    ),
                ))
            }
            _ => Err(unsupported(line, name.to_string())),
        }
    }

    fn call_method(
        &mut self,
        receiver: Value,
        name: &str,
        args: Vec<Value>,
        block: Option<&Block>,
        line: usize,
    ) -> Eval {
        let arity = |min: usize, max: usize| -> Result<(), Fail> {
            if args.len() < min || args.len() > max {
                let expected = if min == max { min.to_string() } else { format!("{min}..{max}") };
                return Err(eval_error(
                    line,
                    format!(
                        "wrong number of arguments to {name} (given {}, expected {expected}) (ArgumentError)",
                        args.len()
                    ),
                ));
            }
            Ok(())
        };
        // Methods every object has.
        match name {
            "nil?" => {
                arity(0, 0)?;
                return Ok(Value::Bool(receiver == Value::Nil));
            }
            "is_a?" | "kind_of?" | "instance_of?" => {
                arity(1, 1)?;
                let Some(Value::Object(Builtin::Class(class))) = args.first() else {
                    return Err(eval_error(line, "class or module required (TypeError)").into());
                };
                if let Value::Object(Builtin::Opaque(what)) = receiver {
                    return Err(unsupported(line, format!("{name} on {what}")).into());
                }
                let exact = match &receiver {
                    Value::Nil => "NilClass",
                    Value::Bool(true) => "TrueClass",
                    Value::Bool(false) => "FalseClass",
                    Value::Int(_) => "Integer",
                    Value::Str(_) => "String",
                    Value::Sym(_) => "Symbol",
                    Value::Array(_) => "Array",
                    Value::Range { .. } => "Range",
                    _ => "Object",
                };
                let matches = *class == exact
                    || (name != "instance_of?" && (*class == "Object" || (*class == "Numeric" && exact == "Integer")));
                return Ok(Value::Bool(matches));
            }
            "present?" | "blank?" | "presence" => {
                arity(0, 0)?;
                let blank = self.blank(&receiver, line)?;
                return Ok(match name {
                    "blank?" => Value::Bool(blank),
                    "present?" => Value::Bool(!blank),
                    _ if blank => Value::Nil,
                    _ => receiver,
                });
            }
            "inspect" => {
                arity(0, 0)?;
                return Ok(Value::Str(self.inspect(&receiver, line)?));
            }
            "to_json" => {
                arity(0, 1)?;
                return Ok(Value::Str(self.to_json(&receiver, line)?));
            }
            "freeze" | "dup" | "itself" if !matches!(receiver, Value::Object(Builtin::Opaque(_))) => {
                arity(0, 0)?;
                return Ok(receiver);
            }
            "then" => {
                let Some(block) = block else { return Err(unsupported(line, "then without a block").into()) };
                return self.yield_once(block, vec![receiver]);
            }
            _ => {}
        }
        match receiver {
            Value::Object(Builtin::Env) => self.env_method(name, args, block, line),
            Value::Object(Builtin::File) => Ok(self.file_method(name, &args, line)?),
            Value::Object(Builtin::Dir) if name == "pwd" => {
                arity(0, 0)?;
                Ok(Value::Str(self.cwd.to_string_lossy().into_owned()))
            }
            Value::Object(Builtin::Dotenv) => Ok(self.dotenv_method(name, &args, line)?),
            Value::Object(Builtin::KamalUtils) if name == "docker_arch" => {
                arity(0, 0)?;
                // Kamal::Utils.docker_arch, as in Kamal: ask docker, map its names to Docker platform names.
                let arch = self.run_command("docker info --format '{{.Architecture}}'", line)?;
                let arch = arch.trim_matches(is_ruby_strip_char);
                Ok(Value::Str(
                    if arch.contains("aarch64") {
                        "arm64"
                    } else if arch.contains("x86_64") {
                        "amd64"
                    } else {
                        arch
                    }
                    .to_string(),
                ))
            }
            Value::Str(text) => self.string_method(text, name, args, line),
            Value::Int(n) if name == "times" => {
                let Some(block) = block else { return Err(unsupported(line, "times without a block").into()) };
                if n > 1_000_000 {
                    return Err(unsupported(line, "more than a million iterations").into());
                }
                match self.iterate(block, (0..n.max(0)).map(|i| vec![Value::Int(i)]).collect())? {
                    Ok(_) => Ok(Value::Int(n)),
                    Err(broke) => Ok(broke),
                }
            }
            Value::Int(n) => Ok(self.integer_method(n, name, &args, line)?),
            Value::Array(items) => self.array_method(items, name, args, block, line),
            Value::Range { low, high, exclusive } => match name {
                "to_a" | "each" | "map" | "collect" | "select" | "filter" | "reject" | "count" | "size" => {
                    let Some(high) = high else {
                        return Err(eval_error(line, "cannot convert endless range to an array (RangeError)").into());
                    };
                    let end = if exclusive { high } else { high.saturating_add(1) };
                    if end.saturating_sub(low) > 1_000_000 {
                        return Err(unsupported(line, "a range of more than a million integers").into());
                    }
                    let items: Vec<Value> = (low..end.max(low)).map(Value::Int).collect();
                    if name == "each" {
                        self.array_method(items, name, args, block, line)?;
                        return Ok(Value::Range { low, high: Some(high), exclusive });
                    }
                    self.array_method(items, name, args, block, line)
                }
                "to_s" => Ok(Value::Str(self.to_s(&Value::Range { low, high, exclusive }, line)?)),
                _ => Err(unsupported(line, format!("Range#{name}")).into()),
            },
            Value::Sym(symbol) => match name {
                "to_s" | "id2name" | "name" => Ok(Value::Str(symbol)),
                "to_sym" => Ok(Value::Sym(symbol)),
                "length" | "size" => Ok(Value::Int(symbol.chars().count() as i64)),
                "empty?" => Ok(Value::Bool(symbol.is_empty())),
                _ => Err(unsupported(line, format!("Symbol#{name}")).into()),
            },
            Value::Bool(b) => match name {
                "to_s" => Ok(Value::Str(b.to_string())),
                "&" => Ok(Value::Bool(b && args.first().is_some_and(Value::truthy))),
                _ => Err(unsupported(line, format!("{b}.{name}")).into()),
            },
            Value::Nil => match name {
                "to_s" => Ok(Value::Str(String::new())),
                "to_a" => Ok(Value::Array(Vec::new())),
                "to_i" => Ok(Value::Int(0)),
                // A method berth does not know might exist on nil (ActiveSupport adds some).
                _ if !METHODS.contains(&name) => Err(unsupported(line, format!("nil.{name}")).into()),
                // Every other method berth knows is a String, Array or Integer method that nil lacks: the
                // classic failure of `ENV["UNSET"].strip`.
                _ => Err(eval_error(
                    line,
                    format!("undefined method '{name}' for nil (NoMethodError)\n  a missing ENV[\"...\"] is nil: use ENV.fetch(\"KEY\", default) or ENV[\"KEY\"].to_s"),
                )
                .into()),
            },
            Value::Object(Builtin::Class(class)) if name == "to_s" || name == "name" => Ok(Value::Str(class.to_string())),
            other => Err(unsupported(line, format!("{}.{name}", self.to_s(&other, line).unwrap_or_default())).into()),
        }
    }

    fn yield_block(&mut self, block: &Block, args: Vec<Value>) -> Eval {
        // Ruby spreads a single array argument over several block parameters (`|key, value|`).
        let args = match args.as_slice() {
            [Value::Array(items)] if block.params.len() > 1 => items.clone(),
            _ => args,
        };
        let mut frame = HashMap::new();
        for (i, param) in block.params.iter().enumerate() {
            frame.insert(param.clone(), args.get(i).cloned().unwrap_or(Value::Nil));
        }
        self.frames.push(frame);
        let result = self.eval(&block.body);
        self.frames.pop();
        match result {
            Err(Flow::Next(value)) => Ok(value),
            other => other,
        }
    }

    /// Runs a block for a method that calls it once: `break` then makes the method return its value.
    fn yield_once(&mut self, block: &Block, args: Vec<Value>) -> Eval {
        match self.yield_block(block, args) {
            Err(Flow::Break(value)) => Ok(value),
            other => other,
        }
    }

    /// Runs a block over `items`, collecting its values; `break` ends the loop early with its value.
    fn iterate(&mut self, block: &Block, items: Vec<Vec<Value>>) -> Result<Result<Vec<Value>, Value>, Flow> {
        let mut results = Vec::with_capacity(items.len());
        for args in items {
            match self.yield_block(block, args) {
                Ok(value) => results.push(value),
                Err(Flow::Break(value)) => return Ok(Err(value)),
                Err(other) => return Err(other),
            }
        }
        Ok(Ok(results))
    }

    fn env_method(&mut self, name: &str, args: Vec<Value>, block: Option<&Block>, line: usize) -> Eval {
        match (name, args.as_slice()) {
            ("fetch", [key, rest @ ..]) if rest.len() <= 1 => {
                let key_text = self.env_key(key, line)?;
                if let Some(value) = self.vars.get(&key_text) {
                    return Ok(Value::Str(value.clone()));
                }
                if let Some(block) = block {
                    return self.yield_once(block, vec![key.clone()]);
                }
                match rest {
                    [default] => Ok(default.clone()),
                    _ => Err(eval_error(
                        line,
                        format!("ENV.fetch(\"{key_text}\"): key not found: \"{key_text}\" (KeyError)\n  set {key_text} in the environment or use ENV.fetch(\"{key_text}\", default)"),
                    )
                    .into()),
                }
            }
            ("key?" | "has_key?" | "include?" | "member?", [key]) => {
                let key = self.env_key(key, line)?;
                Ok(Value::Bool(self.vars.contains_key(&key)))
            }
            ("delete", [key]) => {
                let key = self.env_key(key, line)?;
                Ok(self.vars.remove(&key).map_or(Value::Nil, Value::Str))
            }
            ("each" | "each_pair", []) => {
                let Some(block) = block else { return Err(unsupported(line, "ENV.each without a block").into()) };
                // Ruby iterates over a snapshot, so the block may change ENV. The order is the process
                // environment's, which Kamal does not define either; berth's is by name.
                let pairs: Vec<Vec<Value>> = self
                    .vars
                    .iter()
                    .map(|(k, v)| vec![Value::Array(vec![Value::Str(k.clone()), Value::Str(v.clone())])])
                    .collect();
                match self.iterate(block, pairs)? {
                    Ok(_) => Ok(Value::Object(Builtin::Env)),
                    Err(broke) => Ok(broke),
                }
            }
            ("to_s", []) => Ok(Value::Str("ENV".into())),
            _ => Err(unsupported(line, format!("ENV.{name} with {} argument(s)", args.len())).into()),
        }
    }

    /// A path the template names, relative to the environment's directory. `""` names no file at all (joining
    /// it to the directory would name the directory).
    fn path(&self, value: &Value, line: usize) -> Result<Option<PathBuf>, Fail> {
        match value {
            Value::Str(path) if path.is_empty() => Ok(None),
            Value::Str(path) => Ok(Some(self.cwd.join(path))),
            other => Err(eval_error(
                line,
                format!("no implicit conversion of {} into String (TypeError)", other.class_name()),
            )),
        }
    }

    fn file_method(&self, name: &str, args: &[Value], line: usize) -> Result<Value, Fail> {
        let [path_value] = args else {
            return Err(unsupported(line, format!("File.{name} with {} argument(s)", args.len())));
        };
        let path = self.path(path_value, line)?;
        let exists = |check: fn(&Path) -> bool| Value::Bool(path.as_deref().is_some_and(check));
        match name {
            "read" => match path.map_or_else(|| Err(std::io::ErrorKind::NotFound.into()), std::fs::read) {
                Ok(bytes) => String::from_utf8(bytes)
                    .map(Value::Str)
                    .map_err(|_| unsupported(line, "File.read of a file that is not UTF-8")),
                Err(err) => Err(eval_error(
                    line,
                    format!(
                        "File.read({}): {err} (relative paths start at {})\n  create the file, or guard the read with File.exist?",
                        self.inspect(path_value, line).unwrap_or_default(),
                        self.cwd.display()
                    ),
                )),
            },
            "exist?" => Ok(exists(Path::exists)),
            "file?" => Ok(exists(Path::is_file)),
            "directory?" => Ok(exists(Path::is_dir)),
            _ => Err(unsupported(line, format!("File.{name}"))),
        }
    }

    fn dotenv_method(&mut self, name: &str, args: &[Value], line: usize) -> Result<Value, Fail> {
        if !matches!(name, "load" | "load!" | "overload") {
            return Err(unsupported(line, format!("Dotenv.{name}")));
        }
        let default = [Value::Str(".env".into())];
        let files = if args.is_empty() { &default[..] } else { args };
        for file in files {
            let Some(path) = self.path(file, line)? else { continue };
            let text = match std::fs::read(&path) {
                Ok(bytes) => {
                    String::from_utf8(bytes).map_err(|_| unsupported(line, "a .env file that is not UTF-8"))?
                }
                // Dotenv.load skips files that do not exist; Dotenv.load! does not.
                Err(err) if name != "load!" && err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => {
                    return Err(eval_error(
                        line,
                        format!(
                            "Dotenv.{name}: {}: {err}\n  create the file, or use Dotenv.load, which skips missing files",
                            path.display()
                        ),
                    ));
                }
            };
            let Some(pairs) = parse_dotenv(&text) else {
                return Err(unsupported(
                    line,
                    format!("Dotenv.{name} of {} (only plain KEY=value lines are read without Ruby)", path.display()),
                ));
            };
            // Within one file the last assignment wins; across files and against ENV, `load` keeps what is
            // already set and `overload` replaces it.
            let mut from_file: BTreeMap<String, String> = BTreeMap::new();
            from_file.extend(pairs);
            for (key, value) in from_file {
                if name == "overload" || !self.vars.contains_key(&key) {
                    self.vars.insert(key, value);
                }
            }
        }
        Ok(Value::Object(Builtin::Opaque("the Hash Dotenv returns")))
    }

    fn integer_method(&self, n: i64, name: &str, args: &[Value], line: usize) -> Result<Value, Fail> {
        if !args.is_empty() {
            return Err(unsupported(line, format!("Integer#{name} with arguments")));
        }
        let too_big = || unsupported(line, "integer beyond 64 bits");
        Ok(match name {
            "to_s" => Value::Str(n.to_string()),
            "to_i" => Value::Int(n),
            "zero?" => Value::Bool(n == 0),
            "positive?" => Value::Bool(n > 0),
            "negative?" => Value::Bool(n < 0),
            "even?" => Value::Bool(n % 2 == 0),
            "odd?" => Value::Bool(n % 2 != 0),
            "abs" => Value::Int(n.checked_abs().ok_or_else(too_big)?),
            "succ" => Value::Int(n.checked_add(1).ok_or_else(too_big)?),
            "pred" => Value::Int(n.checked_sub(1).ok_or_else(too_big)?),
            _ => return Err(unsupported(line, format!("Integer#{name}"))),
        })
    }

    fn string_method(&mut self, text: String, name: &str, args: Vec<Value>, line: usize) -> Eval {
        let str_arg = |i: usize| -> Result<&str, Fail> {
            match args.get(i) {
                Some(Value::Str(s)) => Ok(s.as_str()),
                Some(other) => Err(eval_error(
                    line,
                    format!(
                        "no implicit conversion of {} into String in String#{name} (TypeError)",
                        other.class_name()
                    ),
                )),
                None => Err(eval_error(line, format!("wrong number of arguments to String#{name} (ArgumentError)"))),
            }
        };
        let no_args = || -> Result<(), Fail> {
            if args.is_empty() { Ok(()) } else { Err(unsupported(line, format!("String#{name} with arguments"))) }
        };
        let value = match name {
            "to_s" | "to_str" => {
                no_args()?;
                Value::Str(text)
            }
            "strip" => {
                no_args()?;
                Value::Str(text.trim_matches(is_ruby_strip_char).to_string())
            }
            "lstrip" => {
                no_args()?;
                Value::Str(text.trim_start_matches(is_ruby_strip_char).to_string())
            }
            "rstrip" => {
                no_args()?;
                Value::Str(text.trim_end_matches(is_ruby_strip_char).to_string())
            }
            "chomp" => Value::Str(match args.as_slice() {
                [] => chomp_line_break(&text),
                [Value::Str(suffix)] if suffix == "\n" => chomp_line_break(&text),
                [Value::Str(suffix)] if suffix.is_empty() => {
                    let mut trimmed = text.as_str();
                    while let Some(rest) = trimmed.strip_suffix("\r\n").or_else(|| trimmed.strip_suffix('\n')) {
                        trimmed = rest;
                    }
                    trimmed.to_string()
                }
                [Value::Str(suffix)] => text.strip_suffix(suffix.as_str()).unwrap_or(&text).to_string(),
                [Value::Nil] => text,
                _ => return Err(unsupported(line, "String#chomp with these arguments").into()),
            }),
            "upcase" | "downcase" | "capitalize" => {
                no_args()?;
                // Per-character mapping, as Ruby does: no final-sigma rule (Rust's str::to_lowercase has one).
                let lower = |s: &str| s.chars().flat_map(char::to_lowercase).collect::<String>();
                Value::Str(match name {
                    "upcase" => text.chars().flat_map(char::to_uppercase).collect(),
                    "downcase" => lower(&text),
                    _ => {
                        let mut chars = text.chars();
                        match chars.next() {
                            None => String::new(),
                            Some(first) if first.is_ascii() => {
                                format!("{}{}", first.to_ascii_uppercase(), lower(chars.as_str()))
                            }
                            // Ruby title-cases the first letter, which Rust's std has no table for.
                            Some(_) => return Err(unsupported(line, "capitalize of a non-ASCII first letter").into()),
                        }
                    }
                })
            }
            "length" | "size" => {
                no_args()?;
                Value::Int(text.chars().count() as i64)
            }
            "empty?" => {
                no_args()?;
                Value::Bool(text.is_empty())
            }
            "start_with?" | "end_with?" => {
                let mut found = false;
                for i in 0..args.len() {
                    let affix = str_arg(i)?;
                    found |= if name == "start_with?" { text.starts_with(affix) } else { text.ends_with(affix) };
                }
                Value::Bool(found)
            }
            "include?" => {
                if args.len() != 1 {
                    return Err(eval_error(line, "wrong number of arguments to String#include? (ArgumentError)").into());
                }
                Value::Bool(text.contains(str_arg(0)?))
            }
            "delete_prefix" => Value::Str(text.strip_prefix(str_arg(0)?).unwrap_or(&text).to_string()),
            "delete_suffix" => Value::Str(text.strip_suffix(str_arg(0)?).unwrap_or(&text).to_string()),
            "split" => {
                let separator = match args.as_slice() {
                    [] | [Value::Nil] => None,
                    [Value::Str(separator)] => Some(separator.as_str()),
                    _ => return Err(unsupported(line, "String#split with a limit or a non-string separator").into()),
                };
                Value::Array(ruby_split(&text, separator).into_iter().map(Value::Str).collect())
            }
            "tr" => {
                if args.len() != 2 {
                    return Err(eval_error(line, "wrong number of arguments to String#tr (ArgumentError)").into());
                }
                Value::Str(ruby_tr(&text, str_arg(0)?, str_arg(1)?, line)?)
            }
            "sub" | "gsub" => {
                let (pattern, replacement) = match args.as_slice() {
                    [Value::Str(pattern), Value::Str(replacement)] => (pattern, replacement),
                    _ => return Err(unsupported(line, format!("String#{name} with these arguments")).into()),
                };
                // A backslash in the replacement refers to match groups (`\0`, `\&`), even for string patterns.
                if replacement.contains('\\') {
                    return Err(unsupported(line, format!("String#{name} with `\\` in the replacement")).into());
                }
                Value::Str(if name == "sub" {
                    text.replacen(pattern.as_str(), replacement, 1)
                } else {
                    text.replace(pattern.as_str(), replacement)
                })
            }
            "to_i" => {
                if !args.is_empty() {
                    return Err(unsupported(line, "String#to_i with a base").into());
                }
                Value::Int(ruby_to_i(&text, line)?)
            }
            "to_sym" | "intern" => {
                no_args()?;
                Value::Sym(text)
            }
            "squish" => {
                no_args()?;
                let collapsed = text.split(char::is_whitespace).filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ");
                Value::Str(collapsed.trim_matches(is_ruby_strip_char).to_string())
            }
            "reverse" => {
                no_args()?;
                Value::Str(text.chars().rev().collect())
            }
            "chars" => {
                no_args()?;
                Value::Array(text.chars().map(|c| Value::Str(c.to_string())).collect())
            }
            _ => return Err(unsupported(line, format!("String#{name}")).into()),
        };
        Ok(value)
    }

    fn array_method(
        &mut self,
        items: Vec<Value>,
        name: &str,
        args: Vec<Value>,
        block: Option<&Block>,
        line: usize,
    ) -> Eval {
        // Without a block these methods return an Enumerator, which berth does not model.
        let given_block =
            || block.ok_or_else(|| unsupported(line, format!("Array#{name} without a block (an Enumerator)")));
        Ok(match (name, args.as_slice()) {
            ("to_a", []) => Value::Array(items),
            ("to_s", []) => Value::Str(self.inspect(&Value::Array(items), line)?),
            ("length" | "size", []) => Value::Int(items.len() as i64),
            ("empty?", []) => Value::Bool(items.is_empty()),
            ("first", []) => items.first().cloned().unwrap_or(Value::Nil),
            ("last", []) => items.last().cloned().unwrap_or(Value::Nil),
            ("first" | "last", [Value::Int(n)]) => {
                let n = usize::try_from(*n)
                    .map_err(|_| eval_error(line, format!("negative array size in Array#{name} (ArgumentError)")))?;
                let n = n.min(items.len());
                let slice = if name == "first" { &items[..n] } else { &items[items.len() - n..] };
                Value::Array(slice.to_vec())
            }
            ("include?", [needle]) => Value::Bool(items.contains(needle)),
            ("join", []) | ("join", [Value::Str(_) | Value::Nil]) => {
                let separator = match args.first() {
                    Some(Value::Str(separator)) => separator.clone(),
                    _ => String::new(),
                };
                Value::Str(self.join(&items, &separator, line)?)
            }
            ("compact", []) => Value::Array(items.into_iter().filter(|v| *v != Value::Nil).collect()),
            ("uniq", []) => {
                let mut unique: Vec<Value> = Vec::new();
                for item in items {
                    if !unique.contains(&item) {
                        unique.push(item);
                    }
                }
                Value::Array(unique)
            }
            ("reverse", []) => Value::Array(items.into_iter().rev().collect()),
            ("flatten", []) => {
                fn flatten(items: Vec<Value>, out: &mut Vec<Value>) {
                    for item in items {
                        match item {
                            Value::Array(inner) => flatten(inner, out),
                            other => out.push(other),
                        }
                    }
                }
                let mut out = Vec::new();
                flatten(items, &mut out);
                Value::Array(out)
            }
            ("sort", []) => {
                let mut items = items;
                if items.iter().all(|v| matches!(v, Value::Int(_))) || items.iter().all(|v| matches!(v, Value::Str(_)))
                {
                    items.sort_by(|a, b| match (a, b) {
                        (Value::Int(a), Value::Int(b)) => a.cmp(b),
                        (Value::Str(a), Value::Str(b)) => a.cmp(b),
                        _ => std::cmp::Ordering::Equal,
                    });
                    Value::Array(items)
                } else {
                    return Err(eval_error(
                        line,
                        "comparison failed in Array#sort: elements of different kinds (ArgumentError)",
                    )
                    .into());
                }
            }
            ("any?" | "all?" | "none?", []) => {
                let truth: Vec<bool> = match block {
                    Some(block) => match self.iterate(block, items.into_iter().map(|item| vec![item]).collect())? {
                        Ok(results) => results.iter().map(Value::truthy).collect(),
                        Err(broke) => return Ok(broke),
                    },
                    None => items.iter().map(Value::truthy).collect(),
                };
                Value::Bool(match name {
                    "any?" => truth.iter().any(|t| *t),
                    "all?" => truth.iter().all(|t| *t),
                    _ => !truth.iter().any(|t| *t),
                })
            }
            ("each", []) => {
                let block = given_block()?;
                let args = items.iter().map(|item| vec![item.clone()]).collect();
                match self.iterate(block, args)? {
                    Ok(_) => Value::Array(items),
                    Err(broke) => broke,
                }
            }
            ("each_with_index", []) => {
                let block = given_block()?;
                let args = items.iter().enumerate().map(|(i, item)| vec![item.clone(), Value::Int(i as i64)]).collect();
                match self.iterate(block, args)? {
                    Ok(_) => Value::Array(items),
                    Err(broke) => broke,
                }
            }
            ("map" | "collect", []) => {
                let block = given_block()?;
                let args = items.into_iter().map(|item| vec![item]).collect();
                match self.iterate(block, args)? {
                    Ok(results) => Value::Array(results),
                    Err(broke) => broke,
                }
            }
            ("select" | "filter" | "reject", []) => {
                let block = given_block()?;
                let args = items.iter().map(|item| vec![item.clone()]).collect();
                match self.iterate(block, args)? {
                    Ok(results) => {
                        let keep = name != "reject";
                        Value::Array(
                            items
                                .into_iter()
                                .zip(results)
                                .filter(|(_, r)| r.truthy() == keep)
                                .map(|(i, _)| i)
                                .collect(),
                        )
                    }
                    Err(broke) => broke,
                }
            }
            ("count", []) => {
                let Some(block) = block else { return Ok(Value::Int(items.len() as i64)) };
                let args = items.into_iter().map(|item| vec![item]).collect();
                match self.iterate(block, args)? {
                    Ok(results) => Value::Int(results.iter().filter(|r| r.truthy()).count() as i64),
                    Err(broke) => broke,
                }
            }
            _ => return Err(unsupported(line, format!("Array#{name} with {} argument(s)", args.len())).into()),
        })
    }

    fn join(&self, items: &[Value], separator: &str, line: usize) -> Result<String, Fail> {
        let parts = items
            .iter()
            .map(|item| match item {
                Value::Array(inner) => self.join(inner, separator, line),
                other => self.to_s(other, line),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(parts.join(separator))
    }

    /// A backtick command: run like Ruby runs it, with the template's current ENV, output as a string.
    fn run_command(&mut self, command: &str, line: usize) -> Result<String, Fail> {
        if command.trim_matches([' ', '\t']).is_empty() {
            // Ruby finds no program to run in an empty command and raises.
            return Err(Fail::Command {
                line,
                command: command.to_string(),
                status: None,
                stderr: "empty command".into(),
            });
        }
        let env = Environment::from_vars(self.vars.clone(), self.cwd);
        // Ruby lets the command read the terminal and write its errors there; only stdout is captured.
        let output = env.shell(command).stdin(Stdio::inherit()).stderr(Stdio::piped()).output();
        let output = match output {
            Ok(output) => output,
            Err(err) => {
                return Err(Fail::Command {
                    line,
                    command: command.to_string(),
                    status: None,
                    stderr: err.to_string(),
                });
            }
        };
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let code = output.status.code();
        // Without shell metacharacters Ruby execs the program itself and raises when it cannot (ENOENT,
        // EACCES). Through /bin/sh, berth sees that as the shell's 127 or 126.
        if ruby_execs_directly(command) && matches!(code, Some(126 | 127)) {
            return Err(Fail::Command {
                line,
                command: command.to_string(),
                status: code,
                stderr: stderr.trim().to_string(),
            });
        }
        if !stderr.is_empty() {
            eprint!("{stderr}");
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The fallback: a real ruby
// ---------------------------------------------------------------------------------------------------------------

/// Renders like Kamal: with Kamal's libraries when the kamal gem is installed (ActiveSupport's `present?`,
/// `Kamal::Utils`), else with plain Ruby and json. The template's own prints go to stderr so they cannot mix with
/// the result, which is framed as `<byte length>\n<text>` followed by ENV as `key\0value\0` pairs.
const RUBY_RENDER_SCRIPT: &str = r#"
def berth_render(out)
  begin
    require "kamal"
  rescue LoadError, StandardError
    require "json"
  end
  source = STDIN.binmode.read.force_encoding(Encoding::UTF_8)
  erb = ERB.new(source, trim_mode: "-")
  erb.filename = ARGV.fetch(0)
  result = erb.result
  out.binmode
  out.write(result.bytesize.to_s, "\n", result)
  ENV.each_pair { |key, value| out.write(key, "\0", value, "\0") }
  out.flush
rescue ScriptError, StandardError => e
  where = (e.backtrace_locations || []).find { |l| l.path == ARGV[0] }
  STDERR.write("berth-erb-error: ", where ? "line #{where.lineno}: " : "", e.message, " (", e.class.name, ")\n")
  exit 1
end
out = STDOUT.dup
STDOUT.reopen(STDERR)
berth_render(out)
"#;

fn render_with_ruby(ruby: &Path, source: &str, file: &Path, env: &Environment) -> Result<Rendered, ErbError> {
    let ruby_error = |message: String| ErbError::Ruby { file: file.to_path_buf(), message };
    // The template goes through stdin and the environment through env: neither may show up in `ps`.
    let mut child = Command::new(ruby)
        .arg("-rerb")
        .arg("-e")
        .arg(RUBY_RENDER_SCRIPT)
        .arg(file)
        .env_clear()
        .envs(env.vars())
        .current_dir(env.cwd())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| ruby_error(format!("could not start {}: {err}", ruby.display())))?;
    let mut stdin = child.stdin.take().ok_or_else(|| ruby_error("could not write to ruby's stdin".into()))?;
    let output = std::thread::scope(|scope| {
        // Writing from another thread: ruby may fill its output pipes before it has read all of the input.
        let writer = scope.spawn(move || stdin.write_all(source.as_bytes()));
        let output = child.wait_with_output();
        let written = writer.join();
        (output, written)
    });
    let output = output.0.map_err(|err| ruby_error(format!("could not run {}: {err}", ruby.display())))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let reported = stderr.lines().find_map(|line| line.strip_prefix("berth-erb-error: "));
        let message = match reported {
            Some(message) => message.to_string(),
            None => format!("ruby exited with {}: {}", output.status, stderr.trim()),
        };
        return Err(ruby_error(message));
    }
    let other_stderr: String =
        stderr.lines().filter(|line| !line.starts_with("berth-erb-error: ")).map(|line| format!("{line}\n")).collect();
    if !other_stderr.is_empty() {
        eprint!("{other_stderr}");
    }
    let (text, vars) = parse_ruby_output(&output.stdout)
        .ok_or_else(|| ruby_error("ruby's output was cut short or is not UTF-8".into()))?;
    Ok(Rendered { text, env: Environment::from_vars(vars, env.cwd()) })
}

fn parse_ruby_output(stdout: &[u8]) -> Option<(String, BTreeMap<String, String>)> {
    let newline = stdout.iter().position(|b| *b == b'\n')?;
    let length: usize = std::str::from_utf8(&stdout[..newline]).ok()?.parse().ok()?;
    let body_start = newline + 1;
    let body_end = body_start.checked_add(length)?;
    let text = String::from_utf8(stdout.get(body_start..body_end)?.to_vec()).ok()?;
    let mut fields = stdout[body_end..].split(|b| *b == 0);
    let mut vars = BTreeMap::new();
    while let Some(key) = fields.next() {
        if key.is_empty() {
            break;
        }
        let value = fields.next()?;
        vars.insert(String::from_utf8_lossy(key).into_owned(), String::from_utf8_lossy(value).into_owned());
    }
    Some((text, vars))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Vars = &'static [(&'static str, &'static str)];

    /// Templates, the variables they run with (besides PATH), and what Ruby's ERB prints for them. Each
    /// expectation was taken from `ruby -rerb` (trim_mode "-"); `table_agrees_with_ruby` re-checks them all.
    const CASES: &[(&str, Vars, &str)] = &[
        // Tags, trim markers and escapes.
        ("plain text\n", &[], "plain text\n"),
        ("a<%= 1 + 2 %>b", &[], "a3b"),
        ("<%= nil %>|<%= true %>|<%= false %>|<%= 42 %>|<%= -7 %>", &[], "|true|false|42|-7"),
        ("<% if true -%>\nyes\n<% end -%>\nafter\n", &[], "yes\nafter\n"),
        ("a\n  <%- x = 1 -%>\nb<%= x %>\n", &[], "a\nb1\n"),
        ("  <%= 1 -%>\nx", &[], "  1x"),
        ("x <%= 1 %> <%- 2 %>y", &[], "x 1y"),
        ("<%= -%>\nz", &[], "z"),
        ("<%%= literal %>\n", &[], "<%= literal %>\n"),
        ("100%%> %> -%>\nq", &[], "100%%> %> -%>\nq"),
        ("<%= '50%%>' %>", &[], "50%>"),
        ("<%# a comment %>x\n<%# multi\nline -%>\ny", &[], "x\ny"),
        ("<% # a Ruby comment hides the rest of its script line %>hidden\nshown\n<%= 1 %>", &[], "1"),
        ("a\r\n<% if true -%>\r\nb\r\n<% end -%>\r\n", &[], "a\r\nb\r\n"),
        (
            "# ERB in a YAML comment still runs: <%= ENV['H'] %>\n",
            &[("H", "h")],
            "# ERB in a YAML comment still runs: h\n",
        ),
        ("<%\n  host = ENV.fetch('H', 'h') # comment\n  port = 80\n%>\n<%= host %>:<%= port %>\n", &[], "\nh:80\n"),
        // ENV.
        ("<%= ENV.fetch('K', 'd') %>", &[], "d"),
        ("<%= ENV.fetch('K', 'd') %>", &[("K", "v")], "v"),
        ("<%= ENV.fetch(\"T\", 86400) %>", &[], "86400"),
        ("<%= ENV.fetch(\"K\") %>", &[("K", "v")], "v"),
        ("[<%= ENV[\"K\"] %>]", &[], "[]"),
        ("<%= ENV['K'] %>", &[("K", "v")], "v"),
        ("<%= ENV.fetch('A') { ENV.fetch('B') { 'c' } } %>", &[("B", "b")], "b"),
        ("<%= ENV.fetch('A') { ENV.fetch('B') { 'c' } } %>", &[], "c"),
        ("<%= ENV.fetch('A') { |k| k.downcase } %>", &[], "a"),
        ("<%= ENV.fetch('A', ENV.fetch('B', 'x')) %>", &[], "x"),
        ("<%= ENV.fetch(\"NOPE\", nil).inspect %>|<%= ENV.key?(\"K\") %>", &[("K", "")], "nil|true"),
        ("<% ENV[\"X\"] = \"y\" %><%= ENV[\"X\"] %>", &[], "y"),
        ("<% ENV[\"X\"] = nil %>[<%= ENV[\"X\"] %>]", &[("X", "x")], "[]"),
        ("<%= ENV[\"K\"] || \"fallback\" %>", &[], "fallback"),
        ("<%= ENV[\"A\"] && ENV[\"B\"] %>", &[("A", "a"), ("B", "b")], "b"),
        ("<%= ENV.fetch('S', '').strip != '' %>", &[("S", "  ")], "false"),
        ("<%= !ENV[\"X\"] %>", &[], "true"),
        ("[<%= ENV[\"X\"]&.strip %>]", &[], "[]"),
        ("[<%= ENV[\"X\"]&.strip %>]", &[("X", " a ")], "[a]"),
        ("<% ENV[\"Q\"] ||= \"d\" %><%= ENV[\"Q\"] %>", &[], "d"),
        (
            "<%\nENV.each do |key, value|\n  next unless value.is_a?(String) && value.length >= 2\n\n  if (value.start_with?('\"') && value.end_with?('\"')) ||\n     (value.start_with?(\"'\") && value.end_with?(\"'\"))\n    ENV[key] = value[1...-1]\n  end\nend\n%>\n<%= ENV['A'] %> <%= ENV['B'] %> <%= ENV['C'] %>",
            &[("A", "\"quoted\""), ("B", "'single'"), ("C", "\"")],
            "\nquoted single \"",
        ),
        // Literals and strings.
        ("<%= 'a\\'b\\\\c\\n' %>", &[], "a'b\\c\\n"),
        ("<%= \"a\\tb\\u00e9\\x41\\u{62 63}\" %>", &[], "a\tbéAbc"),
        ("<%= \"bike_#{\"a-b\".tr(\"-\", \"_\")}\" %>", &[], "bike_a_b"),
        ("<%= \"x#{ENV['K']}y\" %>", &[], "xy"),
        (
            "<%= %w[a\\ b c].inspect %>|<%= %i[a b].inspect %>|<%= %q(x 'y') %>|<%= %Q(#{1}) %>|<%= %(a(b)c) %>",
            &[],
            "[\"a b\", \"c\"]|[:a, :b]|x 'y'|1|a(b)c",
        ),
        ("<%= %w[a b c].join(\",\") %>", &[], "a,b,c"),
        (
            "<%= :abc %>|<%= RUBY_ENGINE %>|<%= 5.to_s + \"x\" %>|<%= \"x\".is_a?(String) %>|<%= nil.nil? %>",
            &[],
            "abc|ruby|5x|true|true",
        ),
        ("<%= [1, \"a\", nil, :s] %>", &[], "[1, \"a\", nil, :s]"),
        (
            "<%= \" a \\n\".strip %>|<%= \"x\\r\\n\".chomp %>|<%= \"ab\".chomp(\"b\") %>|<%= \"a\\n\\n\".chomp(\"\").inspect %>",
            &[],
            "a|x|a|\"a\"",
        ),
        ("<%= \"Ab\".upcase %><%= \"Ab\".downcase %><%= \"aB\".capitalize %>|<%= \"héllo\".length %>", &[], "ABabAb|5"),
        (
            "<%= \"a,b,,c,,\".split(\",\").inspect %>|<%= \" a  b \".split.inspect %>|<%= \"\".split(\",\").inspect %>",
            &[],
            "[\"a\", \"b\", \"\", \"c\"]|[\"a\", \"b\"]|[]",
        ),
        (
            "<%= \"12abc\".to_i %>|<%= \" -3\".to_i %>|<%= \"1_000\".to_i %>|<%= \"x\".to_i %>|<%= \"5\".to_i + 1 %>",
            &[],
            "12|-3|1000|0|6",
        ),
        (
            "<%= \"abc\".start_with?(\"x\", \"a\") %>|<%= \"abc\".end_with?(\"bc\") %>|<%= \"abc\".include?(\"d\") %>|<%= \"\".empty? %>",
            &[],
            "true|true|false|true",
        ),
        ("<%= \"a.b.c\".sub(\".\", \"-\") %>|<%= \"a.b.c\".gsub(\".\", \"-\") %>", &[], "a-b.c|a-b-c"),
        (
            "<%= \"hello\".tr(\"el\", \"ip\") %>|<%= \"hello\".tr(\"a-y\", \"b-z\") %>|<%= \"hello\".tr(\"^l\", \"*\") %>|<%= \"hello\".tr(\"lo\", \"\") %>",
            &[],
            "hippo|ifmmp|**ll*|he",
        ),
        (
            "<%= '\"abc\"'[1...-1] %>|<%= \"hello\"[1..] %>|<%= \"hello\"[-3, 2] %>|<%= \"abc\"[5].inspect %>|<%= \"abc\"[\"b\"] %>",
            &[],
            "abc|ello|ll|nil|b",
        ),
        (
            "<%= \"say \\\"hi\\\"\".to_json %>|<%= [\"a\", 1].to_json %>|<%= nil.to_json %>",
            &[],
            "\"say \\\"hi\\\"\"|[\"a\",1]|null",
        ),
        (
            "<%= \"ab\" * 2 %>|<%= \"abc\".reverse %>|<%= \"x\".to_sym.inspect %>|<%= \"t\\\"#{1}\".inspect %>",
            &[],
            "abab|cba|:x|\"t\\\"1\"",
        ),
        ("<%= \"abc\"\n  .upcase %>", &[], "ABC"),
        ("<%=\n  ENV.fetch(\"A\",\n            \"multi\")\n%>", &[], "multi"),
        // Numbers, arrays, operators.
        (
            "<%= 10 - 3 * 2 %>|<%= 1 == 1 %>|<%= \"a\" != \"b\" %>|<%= 2 < 3 %>|<%= \"b\" >= \"a\" %>",
            &[],
            "4|true|true|true|true",
        ),
        (
            "<%= (1..3).to_a.join %>|<%= [1, 2, 3].map { |n| n * 2 }.join(\",\") %>|<%= [1, nil, \"a\"].compact.size %>",
            &[],
            "123|2,4,6|2",
        ),
        (
            "<%= [3, 1, 2].sort.first %>|<%= [1, 1, 2].uniq.inspect %>|<%= [1, [2, [nil, 3]]].join(\",\") %>|<%= [1, 2, 3][1..] %>|<%= [1, 2, 3][-1] %>",
            &[],
            "1|[1, 2]|1,2,,3|[2, 3]|3",
        ),
        (
            "<%= [1, 2, 3].select { |n| n > 1 }.inspect %>|<%= [1, 2, 3].reject { |n| n > 1 }.inspect %>|<%= [1, 2].include?(2) %>|<%= [].empty? %>",
            &[],
            "[2, 3]|[1]|true|true",
        ),
        (
            "<%= %w[b a].first %><%= %w[b a].last %>|<%= [nil, 1].any? %>|<%= [1, 2].all? { |n| n > 1 } %>",
            &[],
            "ba|true|false",
        ),
        ("<%= true and false %>|<%= (not nil) %>|<%= nil || false %>", &[], "false|true|false"),
        // Control flow and variables.
        ("<% if ENV['A'] %>a<% elsif ENV['B'] %>b<% else %>c<% end %>", &[("B", "1")], "b"),
        ("<% if ENV['A'] %>a<% elsif ENV['B'] %>b<% else %>c<% end %>", &[], "c"),
        ("<% unless ENV['A'] %>no A<% else %>A<% end %>", &[], "no A"),
        ("<%= ENV['A'] ? 'set' : 'unset' %>|<%= 2 > 1 ? 'big' : 'small' %>", &[], "unset|big"),
        ("<%= 'x' if false %>|<%= 'y' unless false %>|<%= 1 if true if true %>", &[], "|y|1"),
        ("<% [1, 2, 3].each do |n| -%>\n<% next if n == 2 -%>\n- <%= n %>\n<% end -%>\n", &[], "- 1\n- 3\n"),
        ("<% %w[a b].each_with_index do |s, i| %><%= i %>=<%= s %>;<% end %>", &[], "0=a;1=b;"),
        ("<%= [1, 2, 3].each { |x| break x * 10 if x == 2 } %>", &[], "20"),
        ("<% x = 1 %><% [1].each do |i| x = i + 1 end %><%= x %>", &[], "2"),
        ("<% if false %><% z = 1 %><% end %><%= z.inspect %>", &[], "nil"),
        ("<% x = nil %><% x ||= \"d\" %><% x += \"e\" %><%= x %>", &[], "de"),
        ("<% pr = ENV['PR'].to_s %><% pr = nil if pr.empty? %><%= pr ? \"pr-#{pr}\" : \"sandbox\" %>", &[], "sandbox"),
        (
            "<% pr = ENV['PR'].to_s %><% pr = nil if pr.empty? %><%= pr ? \"pr-#{pr}\" : \"sandbox\" %>",
            &[("PR", "7")],
            "pr-7",
        ),
        ("<%= \"1\".then { |v| v + \"2\" } %>", &[], "12"),
        // Local commands: stdout is the value, whatever the exit status; stderr is not captured.
        ("<%= `echo hi`.strip %>|<%= %x(echo a  b) %>", &[], "hi|a b\n"),
        (
            "<%= `echo out; exit 3` %>|<%= `echo err >&2` %>|<%= `definitely-not-a-command-xyz 2>/dev/null` %>",
            &[],
            "out\n||",
        ),
        ("<% ENV[\"Z\"] = \"zz\" %><%= `echo $Z` %>", &[], "zz\n"),
        ("<%= `echo #{ENV.fetch(\"W\", \"w\")}` %>", &[], "w\n"),
        // Files, relative to the environment's directory (here the crate root).
        (
            "<%= File.exist?(\"Cargo.toml\") %>|<%= File.read(\"Cargo.toml\").include?(\"[package]\") %>",
            &[],
            "true|true",
        ),
        ("<% require \"json\" %><%= ENV.fetch(\"T\", \"\").to_json %>", &[], "\"\""),
    ];

    /// Cases that need ActiveSupport, which Kamal loads and a plain `ruby` lacks: not re-checked with ruby.
    const ACTIVE_SUPPORT_CASES: &[(&str, Vars, &str)] = &[
        (
            "<%= ENV['A'].present? %>|<%= ENV['A'].blank? %>|<%= \" \\t\".blank? %>|<%= [].blank? %>",
            &[],
            "false|true|true|true",
        ),
        ("<%= ENV['A'].presence || 'default' %>", &[("A", "")], "default"),
        ("<%= ENV['A'].presence || 'default' %>", &[("A", "a")], "a"),
        ("<%= \" a \\n b \".squish %>", &[], "a b"),
    ];

    #[derive(Debug, PartialEq)]
    enum Expect {
        Unsupported(&'static str),
        Evaluation(&'static str),
        Syntax(&'static str),
        Command(&'static str),
    }

    /// Templates that must fail: the error, its line, what its message says, and whether Ruby fails too.
    const ERROR_CASES: &[(&str, Vars, usize, Expect, bool)] = &[
        (
            "a\n<%= ENV.fetch(\"MISSING\") %>",
            &[],
            2,
            Expect::Evaluation("set MISSING in the environment or use ENV.fetch(\"MISSING\", default)"),
            true,
        ),
        ("a\nb\n<%= ENV[\"MISSING\"].strip %>", &[], 3, Expect::Evaluation("undefined method 'strip' for nil"), true),
        (
            "<% raise \"destination missing\" if ENV[\"KAMAL_DESTINATION\"].to_s.empty? %>",
            &[],
            1,
            Expect::Evaluation("raised RuntimeError: destination missing"),
            true,
        ),
        ("<%= ENV['X'] = 1 %>", &[], 1, Expect::Evaluation("no implicit conversion of Integer into String"), true),
        ("<%= \"a\" + 1 %>", &[], 1, Expect::Evaluation("no implicit conversion of Integer into String"), true),
        ("<%= 1 + nil %>", &[], 1, Expect::Evaluation("nil can't be coerced into Integer"), true),
        ("<%= File.read(\"no-such-file.txt\") %>", &[], 1, Expect::Evaluation("File.read(\"no-such-file.txt\")"), true),
        ("<%# two\nlines %>\n<%= ENV.fetch('MISSING') %>", &[], 3, Expect::Evaluation("key not found"), true),
        ("a\n<% if true %>\nb", &[], 2, Expect::Syntax("never closed: add `<% end %>`"), true),
        ("<% end %>", &[], 1, Expect::Syntax("`end` without a matching"), true),
        ("<% [1].each do |i| %><%= i %>", &[], 1, Expect::Syntax("never closed"), true),
        ("<% next %>", &[], 1, Expect::Syntax("outside a block"), true),
        ("<%= \"unterminated %>", &[], 1, Expect::Syntax("not closed before the end of its ERB tag"), true),
        ("<%= 1 # a comment hides the end of the tag %>", &[], 1, Expect::Syntax("incomplete"), true),
        // Ruby prints an unclosed tag's code as text ("x\n 1 "); berth reports it instead.
        ("x\n<%= 1 ", &[], 2, Expect::Syntax("never closed: add `%>`"), false),
        ("<%= `definitely-not-a-command-xyz` %>", &[], 1, Expect::Command("definitely-not-a-command-xyz"), true),
        ("<%= Rails.env %>", &[], 1, Expect::Unsupported("Rails"), true),
        ("<%= undefined_name %>", &[], 1, Expect::Unsupported("undefined_name"), true),
        ("<% [1].each do |i| y = i end %><%= y %>", &[], 1, Expect::Unsupported("y"), true),
        ("<% require_relative \"config/application\" %>", &[], 1, Expect::Unsupported("require_relative"), true),
        ("<%= [1, 2].sum %>", &[], 1, Expect::Unsupported("Array#sum"), false),
        ("<%= {a: 1} %>", &[], 1, Expect::Unsupported("hash literal"), false),
        ("<%= \"a\" \"b\" %>", &[], 1, Expect::Unsupported("string"), false),
        ("<%= \"x\" =~ /x/ %>", &[], 1, Expect::Unsupported("regular expression"), false),
        ("<%= \"x\" == 'x' ? 1 : 2 %>\n<% a, b = 1, 2 %>", &[], 2, Expect::Unsupported(","), false),
        ("<%= <<~EOS %>", &[], 1, Expect::Unsupported("heredoc"), true),
        ("<% case 1 when 1 then 2 end %>", &[], 1, Expect::Unsupported("case"), false),
        ("<%= 1.5 %>", &[], 1, Expect::Unsupported("floating-point number"), false),
        ("<%= \"<b>\".to_json %>", &[], 1, Expect::Unsupported("to_json of a string holding `<`"), false),
        ("<%= ENV['A'] || RUBY_ENGINE_VERSION %>", &[], 1, Expect::Unsupported("RUBY_ENGINE_VERSION"), false),
    ];

    fn environment(vars: &[(&str, &str)]) -> Environment {
        let path = std::env::var("PATH").unwrap_or_default();
        let mut env = Environment::from_vars(vars.iter().copied(), env!("CARGO_MANIFEST_DIR"));
        env.set("PATH", path);
        env
    }

    fn file() -> PathBuf {
        PathBuf::from("config/deploy.yml")
    }

    fn ruby() -> PathBuf {
        environment(&[]).find_program("ruby").unwrap_or_else(|| {
            panic!("this test needs `ruby` on PATH (it checks berth against Ruby's ERB): install it, e.g. `apt-get install -y ruby`")
        })
    }

    fn check(template: &str, vars: &[(&str, &str)], expected: &str) -> Result<(), String> {
        match render_native(template, &file(), &environment(vars)) {
            Ok(text) if text == expected => Ok(()),
            Ok(text) => Err(format!("{template:?}\n  expected {expected:?}\n  rendered {text:?}")),
            Err(err) => Err(format!("{template:?}\n  expected {expected:?}\n  failed: {err}")),
        }
    }

    fn check_all(cases: &[(&str, Vars, &str)]) {
        let failures: Vec<String> =
            cases.iter().filter_map(|(template, vars, expected)| check(template, vars, expected).err()).collect();
        assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
    }

    fn check_error(template: &str, vars: &[(&str, &str)], line: usize, expect: &Expect) -> Result<(), String> {
        let err = match render_native(template, &file(), &environment(vars)) {
            Ok(text) => return Err(format!("{template:?}: expected {expect:?}, rendered {text:?}")),
            Err(err) => err,
        };
        let message = err.to_string();
        let (found_line, matches) = match (&err, expect) {
            (ErbError::Unsupported { line, construct, .. }, Expect::Unsupported(needle)) => {
                (*line, construct.contains(needle))
            }
            (ErbError::Evaluation { line, .. }, Expect::Evaluation(needle))
            | (ErbError::Syntax { line, .. }, Expect::Syntax(needle))
            | (ErbError::Command { line, .. }, Expect::Command(needle)) => (*line, message.contains(needle)),
            _ => (0, false),
        };
        if found_line != line || !matches || !message.starts_with("config/deploy.yml:") {
            return Err(format!("{template:?}: expected {expect:?} at line {line}, got: {message}"));
        }
        Ok(())
    }

    #[test]
    fn renders_the_supported_subset_as_ruby_does() {
        check_all(CASES);
    }

    #[test]
    fn renders_active_support_methods_as_kamal_does() {
        check_all(ACTIVE_SUPPORT_CASES);
    }

    #[test]
    fn fails_with_the_expected_errors() {
        let failures: Vec<String> = ERROR_CASES
            .iter()
            .filter_map(|(template, vars, line, expect, _)| check_error(template, vars, *line, expect).err())
            .collect();
        assert!(failures.is_empty(), "{} error cases failed:\n{}", failures.len(), failures.join("\n"));
    }

    #[test]
    fn error_messages_say_where_and_how_to_fix() {
        let env = environment(&[]);
        let missing = render_native("\n<%= ENV.fetch(\"DB_HOST\") %>", &file(), &env).unwrap_err().to_string();
        assert_eq!(
            missing,
            "config/deploy.yml:2: ENV.fetch(\"DB_HOST\"): key not found: \"DB_HOST\" (KeyError)\n  set DB_HOST in the environment or use ENV.fetch(\"DB_HOST\", default)"
        );
        let unsupported = render_native("<%= Rails.env %>", &file(), &env).unwrap_err().to_string();
        assert!(
            unsupported
                .starts_with("config/deploy.yml:1: berth cannot evaluate `Rails` in ERB without Ruby\n  install ruby"),
            "{unsupported}"
        );
        for (template, vars, _, _, _) in ERROR_CASES {
            let message = render_native(template, &file(), &environment(vars)).unwrap_err().to_string();
            assert!(message.lines().count() <= 2, "more than two lines: {message}");
        }
    }

    /// Renders many templates in one ruby process (one process per template would take seconds): each with
    /// its own variables and a fresh binding, as `ERB.new(template, trim_mode: "-").result` in Kamal.
    fn render_all_with_ruby(cases: &[(&str, &[(&str, &str)])]) -> Vec<Result<String, String>> {
        const BATCH_SCRIPT: &str = r##"
            require "erb"
            require "json"
            out = STDOUT.dup
            STDOUT.reopen(STDERR)
            base = ENV.to_h
            results = JSON.parse(STDIN.read).map do |c|
              ENV.replace(base.merge(c["env"]))
              begin
                { "ok" => ERB.new(c["template"], trim_mode: "-").result }
              rescue ScriptError, StandardError => e
                where = (e.backtrace_locations || []).find { |l| l.path == "(erb)" }
                { "error" => "#{e.message.lines.first.chomp} (#{e.class})#{where ? " at line #{where.lineno}" : ""}" }
              end
            end
            out.write(JSON.generate(results))
        "##;
        let input: Vec<serde_json::Value> = cases
            .iter()
            .map(|(template, vars)| {
                let vars: serde_json::Map<String, serde_json::Value> =
                    vars.iter().map(|(k, v)| ((*k).to_string(), serde_json::Value::from(*v))).collect();
                serde_json::json!({ "template": template, "env": vars })
            })
            .collect();
        let env = environment(&[]);
        let mut child = Command::new(ruby())
            .args(["-e", BATCH_SCRIPT])
            .env_clear()
            .envs(env.vars())
            .current_dir(env.cwd())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(serde_json::to_string(&input).unwrap().as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "the ruby batch failed");
        let results: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
        results
            .into_iter()
            .map(|result| match result["ok"].as_str() {
                Some(text) => Ok(text.to_string()),
                None => Err(result["error"].as_str().unwrap_or_default().to_string()),
            })
            .collect()
    }

    #[test]
    fn table_agrees_with_ruby() {
        let mut failures = Vec::new();
        let cases: Vec<(&str, &[(&str, &str)])> = CASES.iter().map(|(template, vars, _)| (*template, *vars)).collect();
        for ((template, _, expected), result) in CASES.iter().zip(render_all_with_ruby(&cases)) {
            if result.as_deref() != Ok(*expected) {
                failures.push(format!("{template:?}: table says {expected:?}, ruby gives {result:?}"));
            }
        }
        let cases: Vec<(&str, &[(&str, &str)])> =
            ERROR_CASES.iter().map(|(template, vars, ..)| (*template, *vars)).collect();
        for ((template, _, _, _, ruby_fails), result) in ERROR_CASES.iter().zip(render_all_with_ruby(&cases)) {
            if result.is_err() != *ruby_fails {
                failures.push(format!("{template:?}: table says ruby fails: {ruby_fails}, ruby gives {result:?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn falls_back_to_ruby_for_what_berth_does_not_evaluate() {
        let env = environment(&[]);
        ruby();
        assert_eq!(render("a<%= [1, 2].sum %>b", &file(), &env).unwrap(), "a3b");
        // ENV changes made in ruby come back, as they would stay in Kamal's process.
        let rendered = render_keeping_env("<% ENV['SUM'] = [1, 2].sum.to_s %>x", &file(), &env).unwrap();
        assert_eq!((rendered.text.as_str(), rendered.env.get("SUM")), ("x", Some("3")));
        let err = render("<%= [].sum + nil %>", &file(), &env).unwrap_err();
        assert!(matches!(&err, ErbError::Ruby { message, .. } if message.contains("nil can't be coerced")), "{err}");
        // A template berth evaluates itself does not need ruby, and one it does not is not run twice.
        assert_eq!(render("<%= ENV.fetch('K', 'd') %>", &file(), &env).unwrap(), "d");
    }

    #[test]
    fn without_ruby_unsupported_constructs_are_errors() {
        let mut env = environment(&[]);
        env.set("PATH", "/nonexistent");
        let err = render("<%= [1, 2].sum %>", &file(), &env).unwrap_err();
        assert!(matches!(&err, ErbError::Unsupported { line: 1, construct, .. } if construct.contains("sum")), "{err}");
        // A construct in a branch that is not taken does not matter, as in Ruby.
        env.set("A", "a");
        assert_eq!(render("<%= ENV['A'] || RUBY_ENGINE_VERSION %>", &file(), &env).unwrap(), "a");
    }

    #[test]
    fn keeps_env_changes_for_the_caller() {
        let env = environment(&[("QUOTED", "\"v\"")]);
        let rendered = render_keeping_env("<% ENV['NEW'] = 'n' %><% ENV.delete('QUOTED') %>", &file(), &env).unwrap();
        assert_eq!((rendered.env.get("NEW"), rendered.env.get("QUOTED")), (Some("n"), None));
    }

    #[test]
    fn dotenv_load_reads_plain_files_and_skips_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".env.staging"), "# comment\nexport A=from-file\nB='quoted value'\n").unwrap();
        let env = Environment::from_vars([("A", "from-env")], dir.path());
        let template = "<% require \"dotenv\" %><% Dotenv.load(\".env.staging\", \".env.missing\") %><%= ENV['A'] %>|<%= ENV['B'] %>";
        assert_eq!(render_native(template, &file(), &env).unwrap(), "from-env|quoted value");
        let overload = "<% Dotenv.overload(\".env.staging\") %><%= ENV['A'] %>";
        assert_eq!(render_native(overload, &file(), &env).unwrap(), "from-file");
        // Anything beyond KEY=value (here a `# comment` after an unquoted value) is left to Ruby.
        std::fs::write(dir.path().join(".env.staging"), "C=kept # no\n").unwrap();
        let err = render_native("<% Dotenv.load(\".env.staging\") %>", &file(), &env).unwrap_err();
        assert!(matches!(err, ErbError::Unsupported { .. }), "{err}");
    }

    #[test]
    fn reads_files_and_dir_relative_to_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".ruby-version"), "3.3.0\n").unwrap();
        let env = Environment::from_vars([("PATH", "/usr/bin:/bin")], dir.path());
        let template =
            "<%= File.read('.ruby-version').strip %>|<%= Dir.pwd == `pwd`.chomp %>|<%= `cat .ruby-version` %>";
        assert_eq!(render_native(template, &file(), &env).unwrap(), "3.3.0|true|3.3.0\n");
    }

    #[test]
    fn kamal_utils_docker_arch_asks_docker_like_kamal() {
        let dir = tempfile::tempdir().unwrap();
        let template = "<%= Kamal::Utils.docker_arch == \"arm64\" ? \"amd64\" : \"arm64\" %>";
        // Kamal's own fixtures: with docker missing the answer is "", so the fixture picks arm64.
        let env = Environment::from_vars([("PATH", dir.path().to_string_lossy().into_owned())], dir.path());
        assert_eq!(render_native(template, &file(), &env).unwrap(), "arm64");
        write_stub(dir.path(), "docker", "echo aarch64");
        assert_eq!(render_native(template, &file(), &env).unwrap(), "amd64");
    }

    fn write_stub(dir: &Path, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    // ---------------------------------------------------------------------------------------------------------
    // The corpus: every real configuration and Kamal fixture
    // ---------------------------------------------------------------------------------------------------------

    fn corpus() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
    }

    /// Files whose ERB fails natively, the error, and the Kamal run that failed on it too.
    const EXPECTED_CORPUS_FAILURES: &[(&str, usize, Expect, &str)] = &[
        // `require_relative "config/application"` loads the Rails app, which is not in the corpus: Kamal
        // failed with LoadError.
        (
            "real-configs/hackclub__hackathons-backend/deploy.yml",
            2,
            Expect::Unsupported("require_relative"),
            "real-configs-kamal-output/hackclub__hackathons-backend/base.rc",
        ),
    ];

    /// Files a plain `ruby` cannot render although Kamal can, because they use Kamal's own libraries.
    const NEEDS_KAMAL_LIBRARIES: &[&str] = &["Kamal::Utils", "require \"dotenv\""];

    /// Every real configuration file and Kamal fixture, each with the environment Kamal ran it with: the
    /// dummy values from its env.json, and vendor CLIs (git, docker, date) replaced by stubs printing nothing.
    fn corpus_files(stubs: &Path, cwd: &Path) -> Vec<(PathBuf, String, Environment)> {
        let corpus = corpus();
        let mut files = Vec::new();
        let mut add_dir = |dir: PathBuf, is_config: &dyn Fn(&str) -> bool, env_json: &dyn Fn(&str) -> PathBuf| {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
                .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
                .map(|entry| entry.unwrap().path())
                .filter(|path| path.file_name().and_then(|n| n.to_str()).is_some_and(is_config))
                .collect();
            entries.sort();
            for path in entries {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                let env_json = env_json(&name);
                let json =
                    std::fs::read_to_string(&env_json).unwrap_or_else(|err| panic!("{}: {err}", env_json.display()));
                let json: serde_json::Value = serde_json::from_str(&json).unwrap();
                let mut env = Environment::from_vars([("PATH", stubs.to_string_lossy().into_owned())], cwd);
                for section in ["base_env", "dummy_env"] {
                    for (key, value) in json[section].as_object().into_iter().flatten() {
                        if key != "PATH" {
                            env.set(key.clone(), value.as_str().unwrap_or_default());
                        }
                    }
                }
                let relative = path.strip_prefix(&corpus).unwrap().to_string_lossy().into_owned();
                files.push((path, relative, env));
            }
        };
        let mut cases: Vec<PathBuf> =
            std::fs::read_dir(corpus.join("real-configs")).unwrap().map(|e| e.unwrap().path()).collect();
        cases.sort();
        for case in cases {
            let case_name = case.file_name().unwrap().to_string_lossy().into_owned();
            let output = corpus.join("real-configs-kamal-output").join(&case_name);
            add_dir(case, &|name| name.starts_with("deploy") && name.ends_with(".yml"), &|_| output.join("env.json"));
        }
        let fixture_output = corpus.join("kamal-fixtures-kamal-output");
        add_dir(corpus.join("kamal-fixtures"), &|name| name.ends_with(".yml"), &|name| {
            let stem = name.split('.').next().unwrap_or(name);
            fixture_output.join(stem).join("env.json")
        });
        files
    }

    fn corpus_environment() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let stubs = dir.path().join("bin");
        let cwd = dir.path().join("app");
        std::fs::create_dir_all(&stubs).unwrap();
        std::fs::create_dir_all(&cwd).unwrap();
        std::fs::write(cwd.join(".ruby-version"), "3.3.0\n").unwrap();
        for program in ["git", "docker", "date"] {
            write_stub(&stubs, program, "exit 0");
        }
        (dir, stubs, cwd)
    }

    #[test]
    fn renders_every_corpus_config_natively() {
        let (_dir, stubs, cwd) = corpus_environment();
        let files = corpus_files(&stubs, &cwd);
        assert!(files.len() > 100, "corpus not found at {}: {} files", corpus().display(), files.len());
        let mut failures = Vec::new();
        let mut rendered = HashMap::new();
        for (path, relative, env) in &files {
            let source = std::fs::read_to_string(path).unwrap();
            let expected = EXPECTED_CORPUS_FAILURES.iter().find(|(file, ..)| file == relative);
            match (render_native(&source, Path::new(relative), env), expected) {
                (Ok(text), None) => {
                    rendered.insert(relative.clone(), text);
                }
                (Ok(_), Some(_)) => failures.push(format!("{relative}: rendered, but a failure is expected")),
                (Err(err), None) => failures.push(format!("{relative}: {err}")),
                (Err(_), Some((_, line, expect, kamal_rc))) => {
                    if let Err(problem) = check_error(&source, &[], *line, expect) {
                        failures.push(format!("{relative}: {problem}"));
                    }
                    let rc = std::fs::read_to_string(corpus().join(kamal_rc)).unwrap();
                    assert_ne!(rc.trim(), "0", "{relative} is expected to fail, but Kamal rendered it");
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        // Spot checks against what Kamal printed for these files.
        let spot_checks = [
            (
                "real-configs/bikeindex__bike_index/deploy.review.yml",
                "service: bike-index-pr-dummy-review-app-pr-number\n",
            ),
            (
                "real-configs/bikeindex__bike_index/deploy.review.yml",
                "REVIEW_APP_PR_TITLE: \"dummy-review-app-pr-title\"\n",
            ),
            ("real-configs/sul-dlss__argo-b3/deploy.yml", "stop_timeout: dummy-solid-queue-shutdown-timeout\n"),
            ("real-configs/sul-dlss__argo-b3/deploy.yml", "  keys:\n    - dummy-kamal-ssh-key-path\n\n# Bind"),
            ("real-configs/geobtaa__api/deploy.prd.yml", "APP_REVISION: \"dummy-app-revision\"\n"),
            ("kamal-fixtures/deploy_with_remote_builder.yml", "  arch: arm64\n"),
            ("kamal-fixtures/deploy.erb.yml", "  username: my-user\n"),
        ];
        for (file, needle) in spot_checks {
            let text = rendered.get(file).unwrap_or_else(|| panic!("{file} was not rendered"));
            assert!(text.contains(needle), "{file} lacks {needle:?}:\n{text}");
        }
    }

    #[test]
    fn corpus_renders_the_same_with_ruby() {
        let ruby = ruby();
        let (_dir, stubs, cwd) = corpus_environment();
        let mut failures = Vec::new();
        let mut compared = 0;
        for (path, relative, env) in corpus_files(&stubs, &cwd) {
            let source = std::fs::read_to_string(&path).unwrap();
            if !source.contains("<%")
                || NEEDS_KAMAL_LIBRARIES.iter().any(|needle| source.contains(needle))
                || EXPECTED_CORPUS_FAILURES.iter().any(|(file, ..)| *file == relative)
            {
                continue;
            }
            compared += 1;
            let native = render_native(&source, Path::new(&relative), &env).map_err(|err| err.to_string());
            let with_ruby = render_with_ruby(&ruby, &source, Path::new(&relative), &env)
                .map(|r| r.text)
                .map_err(|err| err.to_string());
            if native != with_ruby {
                failures.push(format!("{relative}:\n  native: {native:?}\n  ruby:   {with_ruby:?}"));
            }
        }
        assert!(compared >= 15, "only {compared} corpus files with ERB were compared");
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn compiles_like_erb() {
        let script = compile("a\n<% x = 1 -%>\nb <%= x %>\n<%# c\nd %>e").unwrap();
        assert_eq!(script.texts, ["a\n", "b ", "\n", "e"]);
        assert_eq!(
            script.code,
            format!(
                "{TEXT_MARK}0{TEXT_MARK_END}\n;  x = 1 \n{TEXT_MARK}1{TEXT_MARK_END}; {INSERT_OPEN} x {INSERT_CLOSE}; {TEXT_MARK}2{TEXT_MARK_END}\n; {TEXT_MARK}3{TEXT_MARK_END}"
            )
        );
        // The comment's line break is gone from the script; what follows it still maps to its template line.
        let last_text = script.code.chars().count() - 3;
        assert_eq!(script.code.chars().nth(last_text), Some(TEXT_MARK));
        assert_eq!((script.template_line(3, 0), script.template_line(4, last_text)), (3, 5));
    }
}
