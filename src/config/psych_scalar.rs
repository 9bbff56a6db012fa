//! What a plain (unquoted, untagged) YAML scalar means to Ruby's Psych: its YAML 1.1 resolution rules.
//!
//! Kamal loads `deploy.yml` with `YAML.unsafe_load`, so every plain scalar goes through
//! `Psych::ScalarScanner#tokenize`. That is not YAML 1.2's core schema: `yes`/`no`/`on`/`off` in any case are
//! booleans, `0755` is octal, `1_000` and `1,000` are integers, `1:30` is a (base 60) integer, `1e3` is a
//! string but `1.0e+3` a float, `:name` is a symbol, `2001-12-14` a `Date` and `2001-12-14 21:59:43 Z` a
//! `Time`. This module is that scanner, rule for rule, as Psych 5.x (the version Kamal 2.12 ships with)
//! applies it, including its oddities (see [`resolve`]). Nothing here knows about YAML syntax: the caller
//! decides which scalars are plain.

use std::fmt;

/// The Ruby value Psych makes of a plain scalar.
#[derive(Clone, Debug, PartialEq)]
pub enum Plain {
    Null,
    Bool(bool),
    /// An `Integer`, in decimal; Ruby's integers have no size limit.
    Int(String),
    Float(f64),
    Str(String),
    /// A `Symbol` (`:name`), by its name.
    Symbol(String),
    /// A `Date`, as Psych writes it back (`2001-12-14`).
    Date(String),
    /// A `Time`, as Psych writes it back (`2001-12-14 21:59:43.100000000 -05:00`, or `… Z` in UTC).
    Time(String),
}

/// Psych raises instead of returning a value (Kamal then fails to load the file).
#[derive(Clone, Debug, PartialEq)]
pub struct PsychRaises(pub String);

impl fmt::Display for PsychRaises {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `Psych::ScalarScanner#tokenize` (Psych 5.x, `strict_integer: false`, symbols parsed) on a plain scalar.
///
/// Oddities kept on purpose, because Kamal sees them: `1:30` is 5400 (a two-part base 60 number counts as
/// hours and minutes), `-1:30` is -1800 (the sign belongs to the first part only), `y`/`n` are strings (only
/// the long words are booleans, in any mix of case: `yEs`, `oFF`), an offset `-00:30` is `+00:30`, and
/// `.e+3` is a float Ruby cannot read, so loading fails.
pub fn resolve(text: &str) -> Result<Plain, PsychRaises> {
    let str = || Ok(Plain::Str(text.to_string()));
    if text.is_empty() {
        return Ok(Plain::Null);
    }
    if looks_like_a_word(text) || text.contains('\n') {
        // Only short words can be anything but strings here; `^`/`$` in Psych's patterns match at every line.
        if text.chars().count() > 5 {
            return str();
        }
        let lines = || text.split('\n');
        let lower = |line: &str| line.to_ascii_lowercase();
        if lines().any(|l| l.chars().next().is_some_and(|c| !"ytonf~".contains(c.to_ascii_lowercase()))) {
            return str();
        }
        if text == "~" || lines().any(|l| lower(l) == "null") {
            return Ok(Plain::Null);
        }
        if lines().any(|l| matches!(lower(l).as_str(), "yes" | "true" | "on")) {
            return Ok(Plain::Bool(true));
        }
        if lines().any(|l| matches!(lower(l).as_str(), "no" | "false" | "off")) {
            return Ok(Plain::Bool(false));
        }
        return str();
    }
    if is_time(text) {
        return parse_time(text).map(|time| time.map(Plain::Time).unwrap_or_else(|| Plain::Str(text.into())));
    }
    if let Some((year, month, day)) = date_fields(text) {
        return Ok(match valid_gregorian(year, month, day) {
            true => Plain::Date(format!("{}-{month:02}-{day:02}", four_digit_year(year))),
            false => Plain::Str(text.into()),
        });
    }
    let lower = text.to_ascii_lowercase();
    if lower == ".inf" || lower == "+.inf" {
        return Ok(Plain::Float(f64::INFINITY));
    }
    if lower == "-.inf" {
        return Ok(Plain::Float(f64::NEG_INFINITY));
    }
    if lower == ".nan" {
        return Ok(Plain::Float(f64::NAN));
    }
    if let Some(rest) = text.strip_prefix(':').filter(|rest| !rest.is_empty()) {
        return Ok(Plain::Symbol(symbol_name(rest)));
    }
    if let Some(parts) = sexagesimal(text) {
        return Ok(match parts.fraction {
            None => Plain::Int(base60_int(&parts.parts)),
            Some(_) => Plain::Float(base60_float(&parts.parts)),
        });
    }
    if is_float(text) {
        if matches!(text, "." | "+." | "-.") {
            return str();
        }
        return ruby_float(text).map(Plain::Float);
    }
    if let Some(int) = legacy_integer(text) {
        return Ok(Plain::Int(int));
    }
    str()
}

/// Characters of Psych's "surely a string" class: letters, `_`, whitespace and `!@#$%^&*(){}<>|/\~;=`.
fn wordy(c: char) -> bool {
    c.is_alphabetic() || c == '_' || is_ruby_space(c) || "!@#$%^&*(){}<>|/\\~;=".contains(c)
}

/// Ruby's `\s`: ASCII whitespace only.
fn is_ruby_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// `/^[^\d.:-]?[[:alpha:]_\s!@#$%\^&*(){}<>|\/\\~;=]+/`: a word character first, or second after any one
/// character that cannot start a number, a symbol or a special float.
fn looks_like_a_word(text: &str) -> bool {
    let mut chars = text.chars();
    let (Some(first), second) = (chars.next(), chars.next()) else { return false };
    wordy(first) || (!(first.is_ascii_digit() || ".:-".contains(first)) && second.is_some_and(wordy))
}

/// A scanner over ASCII bytes for the hand-written forms of Psych's regular expressions.
struct Scan<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scan<'a> {
    fn new(text: &'a str) -> Scan<'a> {
        Scan { bytes: text.as_bytes(), at: 0 }
    }
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }
    fn eat(&mut self, wanted: impl Fn(u8) -> bool) -> bool {
        let hit = self.peek().is_some_and(wanted);
        self.at += usize::from(hit);
        hit
    }
    fn eat_byte(&mut self, byte: u8) -> bool {
        self.eat(|b| b == byte)
    }
    /// Eats up to `max` bytes that match; returns how many.
    fn eat_run(&mut self, wanted: impl Fn(u8) -> bool, max: usize) -> usize {
        let start = self.at;
        while self.at - start < max && self.eat(&wanted) {}
        self.at - start
    }
    fn digits(&mut self, max: usize) -> usize {
        self.eat_run(|b| b.is_ascii_digit(), max)
    }
    fn done(&self) -> bool {
        self.at == self.bytes.len()
    }
}

/// `TIME = /^-?\d{4}-\d{1,2}-\d{1,2}(?:[Tt]|\s+)\d{1,2}:\d\d:\d\d(?:\.\d*)?(?:\s*(?:Z|[-+]\d{1,2}:?(?:\d\d)?))?$/`
fn is_time(text: &str) -> bool {
    let mut s = Scan::new(text);
    s.eat_byte(b'-');
    let date = s.digits(4) == 4 && s.eat_byte(b'-') && (1..=2).contains(&s.digits(2)) && s.eat_byte(b'-');
    if !(date && (1..=2).contains(&s.digits(2))) {
        return false;
    }
    let space = |b: u8| is_ruby_space(char::from(b));
    if !(s.eat(|b| b == b'T' || b == b't') || s.eat_run(space, usize::MAX) > 0) {
        return false;
    }
    if !((1..=2).contains(&s.digits(2)) && s.eat_byte(b':') && s.digits(2) == 2 && s.eat_byte(b':')) {
        return false;
    }
    if s.digits(2) != 2 {
        return false;
    }
    if s.eat_byte(b'.') {
        s.digits(usize::MAX);
    }
    if s.done() {
        return true;
    }
    s.eat_run(space, usize::MAX);
    if s.eat_byte(b'Z') {
        return s.done();
    }
    if !s.eat(|b| b == b'-' || b == b'+') {
        return false;
    }
    let hours = s.digits(usize::MAX);
    if s.eat_byte(b':') {
        (1..=2).contains(&hours) && matches!(s.digits(usize::MAX), 0 | 2) && s.done()
    } else {
        (1..=4).contains(&hours) && s.done()
    }
}

/// `ScalarScanner#parse_time`: `Time.utc` (no offset written: Ruby's local time), `Time.utc` for `Z`, or
/// `Time.new` with the offset. `Ok(None)` where Ruby raises `ArgumentError` (Psych then keeps the string).
fn parse_time(text: &str) -> Result<Option<String>, PsychRaises> {
    // `string.split(/[ tT]/, 2)`: a tab alone between date and time leaves no time part, and Psych fails.
    let Some(split) = text.find([' ', 't', 'T']) else {
        return Err(PsychRaises("undefined method `match' for nil:NilClass (Psych cannot read this time)".into()));
    };
    let date = text[..split].trim_end_matches(is_ruby_space);
    let time = text[split + 1..].trim_start_matches(is_ruby_space);
    let negative = date.starts_with('-');
    let mut fields = date.trim_start_matches('-').split('-').map(|n| n.parse::<i64>().unwrap_or(0));
    let (year, month, day) = (fields.next().unwrap_or(0), fields.next().unwrap_or(0), fields.next().unwrap_or(0));
    let year = if negative { -year } else { year };
    let clock_end = time.find(|c: char| !(c.is_ascii_digit() || c == ':')).unwrap_or(time.len());
    let mut clock = time[..clock_end].split(':').map(|n| n.parse::<i64>().unwrap_or(0));
    let (hour, minute, second) = (clock.next().unwrap_or(0), clock.next().unwrap_or(0), clock.next().unwrap_or(0));
    let mut rest = &time[clock_end..];
    let mut nanos = 0;
    if let Some(after_dot) = rest.strip_prefix('.') {
        let digits_end = after_dot.find(|c: char| !c.is_ascii_digit()).unwrap_or(after_dot.len());
        let digits = &after_dot[..digits_end];
        // Ruby keeps the exact fraction; `%9N` prints it truncated to nanoseconds.
        let nine: String = digits.chars().chain(std::iter::repeat('0')).take(9).collect();
        nanos = nine.parse::<i64>().unwrap_or(0);
        rest = &after_dot[digits_end..];
    }
    let zone = rest.trim_start_matches(is_ruby_space);
    let out_of_range = !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || !(0..=24).contains(&hour)
        || (hour == 24 && (minute > 0 || second > 0 || nanos > 0))
        || !(0..=59).contains(&minute)
        || !(0..=60).contains(&second);
    if out_of_range {
        return Ok(None);
    }
    // Days roll over as in Ruby: February 31st is March 3rd, 24:00:00 the next midnight, :60 the next minute.
    let wall = (days_from_civil(year, month, 1) + day - 1) * 86_400 + hour * 3600 + minute * 60 + second;
    let offset = match zone {
        "" => return Ok(Some(format_time(wall, nanos, Some(0)))), // local time; berth has no zone database: UTC
        "Z" => return Ok(Some(format_time(wall, nanos, None))),
        zone => zone_offset(zone),
    };
    if offset.abs() >= 86_400 {
        return Ok(None);
    }
    Ok(Some(format_time(wall, nanos, Some(offset))))
}

/// `/^([+\-]?\d{1,2})\:?(\d{1,2})?$/` on the written offset. The hours carry the sign, so `-00:30` loses it.
fn zone_offset(zone: &str) -> i64 {
    let (sign, digits) = zone.split_at(1);
    let digits: String = digits.chars().filter(char::is_ascii_digit).collect();
    let split = digits.len().min(2);
    let hours = digits[..split].parse::<i64>().unwrap_or(0) * if sign == "-" { -1 } else { 1 };
    let minutes = digits[split..].parse::<i64>().unwrap_or(0);
    let offset = hours * 3600;
    if offset < 0 { offset - minutes * 60 } else { offset + minutes * 60 }
}

/// Psych's own way of writing a `Time`: `%Y-%m-%d %H:%M:%S.%9N %:z`, or `… Z` for UTC (`offset` `None`).
fn format_time(wall: i64, nanos: i64, offset: Option<i64>) -> String {
    let (days, seconds) = (wall.div_euclid(86_400), wall.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    let clock = format!("{:02}:{:02}:{:02}.{nanos:09}", seconds / 3600, seconds / 60 % 60, seconds % 60);
    let zone = match offset {
        None => "Z".to_string(),
        Some(offset) => {
            let sign = if offset < 0 { '-' } else { '+' };
            format!("{sign}{:02}:{:02}", offset.abs() / 3600, offset.abs() / 60 % 60)
        }
    };
    format!("{}-{month:02}-{day:02} {clock} {zone}", four_digit_year(year))
}

/// Ruby's `%Y`: at least four digits, a minus sign before them.
fn four_digit_year(year: i64) -> String {
    if year < 0 { format!("-{:04}", -year) } else { format!("{year:04}") }
}

/// `/^\d{4}-(?:1[012]|0\d|\d)-(?:[12]\d|3[01]|0\d|\d)$/`, as (year, month, day).
fn date_fields(text: &str) -> Option<(i64, i64, i64)> {
    let mut parts = text.split('-');
    let (year, month, day) = (parts.next()?, parts.next()?, parts.next()?);
    let month_ok = match month.as_bytes() {
        [d] => d.is_ascii_digit(),
        [b'1', d] => b"012".contains(d),
        [b'0', d] => d.is_ascii_digit(),
        _ => false,
    };
    let day_ok = match day.as_bytes() {
        [d] => d.is_ascii_digit(),
        [b'1' | b'2' | b'0', d] => d.is_ascii_digit(),
        [b'3', d] => b"01".contains(d),
        _ => false,
    };
    let year_ok = year.len() == 4 && year.bytes().all(|b| b.is_ascii_digit());
    if parts.next().is_some() || !(year_ok && month_ok && day_ok) {
        return None;
    }
    Some((year.parse().ok()?, month.parse().ok()?, day.parse().ok()?))
}

/// `Date.strptime(string, '%F', Date::GREGORIAN)` succeeds: a real day of the proleptic Gregorian calendar.
fn valid_gregorian(year: i64, month: i64, day: i64) -> bool {
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&day)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (year_of_era + era * 400 + i64::from(month <= 2), month, day)
}

/// The name after the leading `:`; `:"name"` and `:'name'` drop their quotes (up to the last matching one:
/// `(.*)\1` is greedy) and then one leading `:` of what they quoted.
fn symbol_name(rest: &str) -> String {
    match rest.chars().next() {
        Some(quote @ ('"' | '\'')) => match rest[1..].rfind(quote) {
            Some(end) => {
                let quoted = &rest[1..1 + end];
                quoted.strip_prefix(':').unwrap_or(quoted).to_string()
            }
            None => rest.to_string(),
        },
        _ => rest.to_string(),
    }
}

struct Sexagesimal<'a> {
    parts: Vec<&'a str>,
    fraction: Option<&'a str>,
}

/// `/^[-+]?[0-9][0-9_]*(:[0-5]?[0-9]){1,2}$/` (an integer) or the same followed by `\.[0-9_]*` (a float).
fn sexagesimal(text: &str) -> Option<Sexagesimal<'_>> {
    let parts: Vec<&str> = text.split(':').collect();
    if !(2..=3).contains(&parts.len()) {
        return None;
    }
    let head = parts[0].strip_prefix(['-', '+']).unwrap_or(parts[0]);
    let head_ok =
        head.starts_with(|c: char| c.is_ascii_digit()) && head.bytes().all(|b| b.is_ascii_digit() || b == b'_');
    let last = parts[parts.len() - 1];
    let (last_digits, fraction) = match last.find('.') {
        Some(dot) => (&last[..dot], Some(&last[dot + 1..])),
        None => (last, None),
    };
    let sixty = |part: &str| match part.as_bytes() {
        [d] => d.is_ascii_digit(),
        [t, d] => (b'0'..=b'5').contains(t) && d.is_ascii_digit(),
        _ => false,
    };
    let middle_ok = parts[1..parts.len() - 1].iter().all(|p| sixty(p));
    let fraction_ok = fraction.is_none_or(|f| f.bytes().all(|b| b.is_ascii_digit() || b == b'_'));
    (head_ok && middle_ok && sixty(last_digits) && fraction_ok).then_some(Sexagesimal { parts, fraction })
}

/// `i += n.to_i * 60 ** (e - 2).abs` over the parts: with two parts the first counts as hours.
fn base60_int(parts: &[&str]) -> String {
    let total: i128 =
        parts.iter().enumerate().map(|(e, n)| ruby_to_i(n) * 60_i128.pow((e as i32 - 2).unsigned_abs())).sum();
    total.to_string()
}

fn base60_float(parts: &[&str]) -> f64 {
    let mut total = 0.0;
    for (e, n) in parts.iter().enumerate() {
        total += ruby_to_f(n) * f64::from(60_i32.pow((e as i32 - 2).unsigned_abs()));
    }
    total
}

/// The leading `[-+]?digits` of Ruby's `String#to_i`/`#to_f`, single underscores between digits allowed.
fn leading_number(text: &str, with_fraction: bool) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    if let Some(&sign @ ('-' | '+')) = chars.peek() {
        out.push(sign);
        chars.next();
    }
    let digits = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>, out: &mut String| {
        let mut any = false;
        while let Some(&c) = chars.peek() {
            if c.is_ascii_digit() {
                out.push(c);
                any = true;
                chars.next();
            } else if c == '_' && any && chars.clone().nth(1).is_some_and(|n| n.is_ascii_digit()) {
                chars.next();
            } else {
                break;
            }
        }
        any
    };
    digits(&mut chars, &mut out);
    if with_fraction && chars.peek() == Some(&'.') {
        let mut fraction = String::from(".");
        chars.next();
        if digits(&mut chars, &mut fraction) {
            out.push_str(&fraction);
        }
    }
    out
}

fn ruby_to_i(text: &str) -> i128 {
    leading_number(text, false).parse().unwrap_or(0)
}

fn ruby_to_f(text: &str) -> f64 {
    leading_number(text, true).parse().unwrap_or(0.0)
}

/// `FLOAT = /^(?:[-+]?([0-9][0-9_,]*)?\.[0-9]*([eE][-+][0-9]+)?)$/`
fn is_float(text: &str) -> bool {
    let mut s = Scan::new(text);
    s.eat(|b| b == b'-' || b == b'+');
    if s.digits(1) == 1 {
        s.eat_run(|b| b.is_ascii_digit() || b == b'_' || b == b',', usize::MAX);
    }
    if !s.eat_byte(b'.') {
        return false;
    }
    s.digits(usize::MAX);
    if s.eat(|b| b == b'e' || b == b'E') {
        return s.eat(|b| b == b'-' || b == b'+') && s.digits(usize::MAX) > 0 && s.done();
    }
    s.done()
}

/// `Float(string.delete(',_').gsub(/\.([Ee]|$)/, '\1'))`; Ruby refuses a number without a digit before its
/// exponent (`.e+3`), and Psych lets that escape.
fn ruby_float(text: &str) -> Result<f64, PsychRaises> {
    let cleaned: String = text.chars().filter(|c| *c != ',' && *c != '_').collect();
    let cleaned = cleaned.replace(".e", "e").replace(".E", "E");
    let cleaned = cleaned.strip_suffix('.').unwrap_or(&cleaned);
    let mantissa = cleaned.split(['e', 'E']).next().unwrap_or("");
    if !mantissa.bytes().any(|b| b.is_ascii_digit()) {
        return Err(PsychRaises(format!("invalid value for Float(): \"{cleaned}\"")));
    }
    cleaned.parse::<f64>().map_err(|_| PsychRaises(format!("invalid value for Float(): \"{cleaned}\"")))
}

/// Psych 5's `INTEGER_LEGACY` (binary, octal with a leading `0`, decimal, hexadecimal; `_` and `,` allowed),
/// then `Integer(string.delete(',_'))`, in decimal.
fn legacy_integer(text: &str) -> Option<String> {
    let (negative, unsigned) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let separators = |b: u8| b == b'_' || b == b',';
    // `0b[_,]*[0-1][0-1_,]*`, `0x[_,]*[0-9a-fA-F][0-9a-fA-F_,]*`, `0[_,]*[0-7][0-7_,]*`: at least one digit.
    let prefixed = |body: &str, digit: fn(u8) -> bool| {
        let body = body.trim_start_matches(['_', ',']);
        body.starts_with(|c: char| c.is_ascii() && digit(c as u8)) && body.bytes().all(|b| digit(b) || separators(b))
    };
    let (radix, digits) = if let Some(body) = unsigned.strip_prefix("0b") {
        (2, prefixed(body, |b| b == b'0' || b == b'1').then_some(body)?)
    } else if let Some(body) = unsigned.strip_prefix("0x") {
        (16, prefixed(body, |b| b.is_ascii_hexdigit()).then_some(body)?)
    } else if unsigned == "0" {
        (10, unsigned)
    } else if let Some(body) = unsigned.strip_prefix('0') {
        (8, prefixed(body, |b| (b'0'..=b'7').contains(&b)).then_some(body)?)
    } else {
        // `[1-9](?:[0-9]|,[0-9]|_[0-9])*`: a separator is always followed by a digit.
        let bytes = unsigned.as_bytes();
        let ok = bytes.first().is_some_and(|b| (b'1'..=b'9').contains(b))
            && bytes.windows(2).all(|w| !separators(w[0]) || w[1].is_ascii_digit())
            && bytes.iter().all(|&b| b.is_ascii_digit() || separators(b))
            && !bytes.last().is_some_and(|&b| separators(b));
        (10, ok.then_some(unsigned)?)
    };
    let magnitude = to_decimal(digits.bytes().filter(|&b| !separators(b)), radix);
    Some(if negative && magnitude != "0" { format!("-{magnitude}") } else { magnitude })
}

/// Digits in `radix` to a decimal string of any length (Ruby integers are unbounded).
fn to_decimal(digits: impl Iterator<Item = u8>, radix: u32) -> String {
    const BASE: u64 = 1_000_000_000;
    let mut limbs: Vec<u64> = vec![0]; // little-endian, base 10^9
    for digit in digits {
        let mut carry = u64::from(char::from(digit).to_digit(radix).unwrap_or(0));
        for limb in &mut limbs {
            let value = *limb * u64::from(radix) + carry;
            *limb = value % BASE;
            carry = value / BASE;
        }
        if carry > 0 {
            limbs.push(carry);
        }
    }
    let mut out = limbs.last().copied().unwrap_or(0).to_string();
    for limb in limbs.iter().rev().skip(1) {
        out.push_str(&format!("{limb:09}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(n: &str) -> Plain {
        Plain::Int(n.to_string())
    }
    fn string(s: &str) -> Plain {
        Plain::Str(s.to_string())
    }

    /// Psych 5.x's answers, checked against Ruby by the corpus test (`tests/corpus/psych-scalars`).
    #[test]
    fn plain_scalars_resolve_as_psych_resolves_them() {
        let cases: &[(&str, Plain)] = &[
            ("", Plain::Null),
            ("~", Plain::Null),
            ("null", Plain::Null),
            ("NuLl", Plain::Null),
            ("yes", Plain::Bool(true)),
            ("yEs", Plain::Bool(true)),
            ("ON", Plain::Bool(true)),
            ("True", Plain::Bool(true)),
            ("no", Plain::Bool(false)),
            ("Off", Plain::Bool(false)),
            ("FALSE", Plain::Bool(false)),
            ("y", string("y")),
            ("n", string("n")),
            ("Y", string("Y")),
            ("yes!", string("yes!")),
            ("0755", int("493")),
            ("08", string("08")),
            ("0o17", string("0o17")),
            ("0x1F", int("31")),
            ("-0x1F", int("-31")),
            ("0b101", int("5")),
            ("1_000", int("1000")),
            ("1,000", int("1000")),
            ("1_000_", string("1_000_")),
            ("+12", int("12")),
            ("-0", int("0")),
            ("0b_", string("0b_")),
            ("12345678901234567890123", int("12345678901234567890123")),
            ("1:30", int("5400")),
            ("-1:30", int("-1800")),
            ("1:30:15", int("5415")),
            ("1:60", string("1:60")),
            ("1:30.5", Plain::Float(5430.0)),
            ("1.5", Plain::Float(1.5)),
            (".5", Plain::Float(0.5)),
            ("+.5", Plain::Float(0.5)),
            ("1.", Plain::Float(1.0)),
            ("1.0e+3", Plain::Float(1000.0)),
            ("1e3", string("1e3")),
            ("1.0e3", string("1.0e3")),
            (".", string(".")),
            (".inf", Plain::Float(f64::INFINITY)),
            ("-.Inf", Plain::Float(f64::NEG_INFINITY)),
            (":foo", Plain::Symbol("foo".into())),
            ("::1", Plain::Symbol(":1".into())),
            (":'a'b'c", Plain::Symbol("a'b".into())),
            ("2001-12-14", Plain::Date("2001-12-14".into())),
            ("2001-1-5", Plain::Date("2001-01-05".into())),
            ("2001-02-30", string("2001-02-30")),
            ("2001-12-14t21:59:43.10-05:00", Plain::Time("2001-12-14 21:59:43.100000000 -05:00".into())),
            ("2001-12-14 21:59:43.10 Z", Plain::Time("2001-12-14 21:59:43.100000000 Z".into())),
            ("2001-02-31 24:00:00", Plain::Time("2001-03-04 00:00:00.000000000 +00:00".into())),
            ("2001-12-14 21:59:43 -00:30", Plain::Time("2001-12-14 21:59:43.000000000 +00:30".into())),
            ("2001-12-14 25:00:00", string("2001-12-14 25:00:00")),
        ];
        for (text, expected) in cases {
            assert_eq!(&resolve(text).unwrap(), expected, "{text:?}");
        }
        assert!(matches!(resolve(".nan"), Ok(Plain::Float(f)) if f.is_nan()));
        assert!(resolve(".e+3").is_err(), "Ruby's Float() refuses e+3");
    }

    #[test]
    fn civil_days_round_trip() {
        for days in [-800_000, -1, 0, 1, 11_304, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
