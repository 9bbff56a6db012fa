//! Stage one of loading: files on disk -> one merged YAML tree, exactly as Kamal builds it.
//!
//! Each file is rendered with ERB, parsed as YAML the way Ruby's Psych parses it (anchors, aliases and `<<`
//! merge keys allowed, plain scalars typed by YAML 1.1's rules: `yes` is true, `0755` is 493), and the
//! destination file is deep-merged over the base file: maps merge key by key, everything else (arrays,
//! scalars) is replaced, and no key is ever removed (ActiveSupport's `deep_merge!`).

use std::path::{Path, PathBuf};

use yaml_serde::value::{Tag, TaggedValue};
use yaml_serde::{Mapping, Value};

use crate::config::ConfigError;
use crate::config::erb;
use crate::config::psych_scalar::{self, Plain};
use crate::environment::Environment;

/// Where the configuration comes from: the base file and, with `-d DEST`, its destination file.
#[derive(Clone, Debug)]
pub struct SourceFiles {
    pub base: PathBuf,
    pub destination: Option<PathBuf>,
}

impl SourceFiles {
    /// The files Kamal reads for `-c config_file [-d destination]`: `deploy.yml` and `deploy.DEST.yml` beside it.
    pub fn new(config_file: &Path, destination: Option<&str>) -> SourceFiles {
        let destination = destination.map(|dest| destination_file(config_file, dest));
        SourceFiles { base: config_file.to_path_buf(), destination }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Path> {
        std::iter::once(self.base.as_path()).chain(self.destination.as_deref())
    }
}

/// `config/deploy.yml` + `staging` -> `config/deploy.staging.yml` (Ruby's `Pathname#sub_ext`).
fn destination_file(config_file: &Path, destination: &str) -> PathBuf {
    let stem = config_file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    config_file.with_file_name(format!("{stem}.{destination}.yml"))
}

/// Reads, renders and merges the files into one YAML mapping.
///
/// ERB may change `ENV`; as in Kamal's single Ruby process, those changes are seen by the files after it.
pub fn load_merged(files: &SourceFiles, env: &Environment) -> Result<Mapping, ConfigError> {
    let mut merged = Mapping::new();
    let mut env = env.clone();
    for file in files.iter() {
        let (tree, env_after) = load_file(file, &env)?;
        env = env_after;
        deep_merge(&mut merged, tree);
    }
    Ok(merged)
}

fn load_file(file: &Path, env: &Environment) -> Result<(Mapping, Environment), ConfigError> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(ConfigError::FileNotFound { path: file.to_path_buf() });
        }
        Err(source) => return Err(ConfigError::Read { path: file.to_path_buf(), source }),
    };
    let rendered = erb::render_keeping_env(&text, file, env)?;
    Ok((parse_yaml(&rendered.text, file)?, rendered.env))
}

/// Parses one rendered file. An empty file is an empty mapping; anything but a mapping at the top is an error.
pub fn parse_yaml(text: &str, file: &Path) -> Result<Mapping, ConfigError> {
    let mut value = parse_psych(text).map_err(|err| yaml_error(file, &err))?;
    value.apply_merge().map_err(|err| yaml_error(file, &err))?;
    match value {
        Value::Mapping(mapping) => Ok(mapping),
        Value::Null => Ok(Mapping::new()),
        other => Err(ConfigError::NotAMapping { path: file.to_path_buf(), found: describe(&other).to_string() }),
    }
}

/// One YAML document as Psych loads it (before `<<` merges): plain scalars resolved by YAML 1.1 rules.
///
/// `yaml_serde` resolves plain scalars by YAML 1.2's core schema and does not say which scalars were plain, so
/// the text is read twice with the same parser (libyaml, as Psych's): first for the shape of the tree, then,
/// guided by that shape, for every scalar's text as written. A scalar whose text is borrowed from the input
/// tells its style by the byte before it (a quote or not); a plain scalar is then resolved like Psych
/// ([`psych_scalar::resolve`]). Quoted and block (`|`, `>`) scalars stay strings; a scalar under a local tag
/// (`!foo yes`) is resolved as Psych does (`TaggedScalar`); one under a `!!` tag keeps `yaml_serde`'s reading,
/// which refuses what YAML 1.2 cannot type (`!!int 0755`, `!!bool yes`, where Psych reads 493 and true).
pub fn parse_psych(text: &str) -> Result<Value, yaml_serde::Error> {
    let Shape(shape) = yaml_serde::from_str(text)?;
    if matches!(shape, Node::Tagged(_) | Node::Scalar(Value::Null)) {
        // An empty document (or a top-level tagged node) has no scalars to read again.
        return Ok(shape.into_value());
    }
    serde::de::DeserializeSeed::deserialize(
        Guided { node: &shape, input: text },
        yaml_serde::Deserializer::from_str(text),
    )
}

fn yaml_error(file: &Path, err: &yaml_serde::Error) -> ConfigError {
    let location = err.location();
    ConfigError::Yaml {
        path: file.to_path_buf(),
        line: location.as_ref().map(|l| l.line()),
        column: location.as_ref().map(|l| l.column()),
        message: strip_location(&err.to_string()),
    }
}

/// libyaml appends " at line L column C" to its messages; berth prints the location itself, once.
fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(idx) => message[..idx].to_string(),
        None => message.to_string(),
    }
}

/// The first reading of a document: its shape, every node in order (a repeated key is kept here, so the
/// second reading walks the same events), scalars as `yaml_serde` resolved them.
enum Node {
    Scalar(Value),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
    /// A scalar under a local tag (`!ruby/symbol x`): the tag is dropped and the value kept as first read.
    Tagged(Value),
}

impl Node {
    /// The first reading alone, for nodes the second reading skips.
    fn into_value(self) -> Value {
        match self {
            Node::Scalar(value) | Node::Tagged(value) => value,
            Node::Seq(items) => Value::Sequence(items.into_iter().map(Node::into_value).collect()),
            Node::Map(entries) => {
                let mut mapping = Mapping::new();
                for (key, value) in entries {
                    mapping.insert(key.into_value(), value.into_value());
                }
                Value::Mapping(mapping)
            }
        }
    }
}

struct Shape(Node);

impl<'de> serde::Deserialize<'de> for Shape {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Shape, D::Error> {
        deserializer.deserialize_any(ShapeVisitor).map(Shape)
    }
}

struct ShapeVisitor;

impl<'de> serde::de::Visitor<'de> for ShapeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Number(v.into())))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Number(v.into())))
    }

    fn visit_i128<E>(self, v: i128) -> Result<Node, E> {
        Ok(Node::Scalar(Value::String(v.to_string())))
    }

    fn visit_u128<E>(self, v: u128) -> Result<Node, E> {
        Ok(Node::Scalar(Value::String(v.to_string())))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Number(v.into())))
    }

    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Scalar(Value::String(v.to_string())))
    }

    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Null))
    }

    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Null))
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(ShapeVisitor)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(Shape(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some((Shape(key), Shape(value))) = map.next_entry()? {
            entries.push((key, value));
        }
        Ok(Node::Map(entries))
    }

    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<Node, A::Error> {
        // A `!tag value` (e.g. `!ruby/symbol`): keep the value, drop the tag, as Kamal sees plain data.
        use serde::de::VariantAccess;
        // A tagged hash or array is read again like any other (Psych drops an unknown tag there too).
        let (_tag, variant): (String, A::Variant) = data.variant()?;
        variant.newtype_variant::<Shape>().map(|Shape(node)| match node {
            node @ (Node::Map(_) | Node::Seq(_)) => node,
            node => Node::Tagged(node.into_value()),
        })
    }
}

/// The second reading of a node, guided by its first: containers by their children, scalars by their text.
#[derive(Clone, Copy)]
struct Guided<'a, 'de> {
    node: &'a Node,
    input: &'de str,
}

impl<'de> serde::de::DeserializeSeed<'de> for Guided<'_, 'de> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        match self.node {
            Node::Scalar(first) => deserializer.deserialize_str(ScalarText { first, input: self.input }),
            Node::Seq(items) => deserializer.deserialize_seq(GuidedSeq { items, input: self.input }),
            Node::Map(entries) => deserializer.deserialize_map(GuidedMap { entries, input: self.input }),
            Node::Tagged(first) => deserializer.deserialize_any(TaggedScalar { first }),
        }
    }
}

struct GuidedSeq<'a, 'de> {
    items: &'a [Node],
    input: &'de str,
}

impl<'de> serde::de::Visitor<'de> for GuidedSeq<'_, 'de> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the sequence read before")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(self.items.len());
        for node in self.items {
            match seq.next_element_seed(Guided { node, input: self.input })? {
                Some(item) => items.push(item),
                None => return Err(serde::de::Error::custom("the YAML changed between two readings")),
            }
        }
        Ok(Value::Sequence(items))
    }
}

struct GuidedMap<'a, 'de> {
    entries: &'a [(Node, Node)],
    input: &'de str,
}

impl<'de> serde::de::Visitor<'de> for GuidedMap<'_, 'de> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the mapping read before")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut mapping = Mapping::new();
        for (key, value) in self.entries {
            let Some(key) = map.next_key_seed(Guided { node: key, input: self.input })? else {
                return Err(serde::de::Error::custom("the YAML changed between two readings"));
            };
            let value = map.next_value_seed(Guided { node: value, input: self.input })?;
            // As in Ruby: a repeated key (`on:` and `true:` are one key to Psych) keeps its first place and
            // takes the later value.
            mapping.insert(key, value);
        }
        Ok(Value::Mapping(mapping))
    }
}

/// A scalar's text as written, and what the first reading made of it.
struct ScalarText<'a, 'de> {
    first: &'a Value,
    input: &'de str,
}

impl<'de> ScalarText<'_, 'de> {
    fn plain<E: serde::de::Error>(&self, text: &str) -> Result<Value, E> {
        psych_scalar::resolve(text)
            .map(psych_value)
            .map_err(|raised| E::custom(format!("Psych cannot load {text:?}: {raised}")))
    }
}

impl<'de> serde::de::Visitor<'de> for ScalarText<'_, 'de> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the scalar read before")
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, text: &'de str) -> Result<Value, E> {
        if text.is_empty() {
            // `key:` is an empty plain scalar (null, as the first reading says); `key: ""` a quoted one.
            return Ok(self.first.clone());
        }
        let at = (text.as_ptr() as usize).checked_sub(self.input.as_ptr() as usize);
        let Some(at) = at.filter(|at| at + text.len() <= self.input.len()) else {
            return self.visit_str(text);
        };
        let before = self.input.as_bytes()[..at].last().copied();
        let quoted = matches!(before, Some(b'"' | b'\''));
        let start = if quoted { at - 1 } else { at };
        if tagged(&self.input[..start]) {
            Ok(self.first.clone())
        } else if quoted {
            Ok(Value::String(text.to_string()))
        } else {
            self.plain(text)
        }
    }

    /// A scalar whose value is not its text as written: quoted with escapes or line breaks, a block scalar,
    /// or a plain scalar folded over lines (kept a string: Psych would read a folded `2001-12-14\n 10:00:00`
    /// as a time, which no configuration writes).
    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Value, E> {
        match self.first {
            Value::String(_) => Ok(Value::String(text.to_string())),
            _ => self.plain(text),
        }
    }
}

/// A scalar under a local tag, read as Psych's `ToRuby#deserialize` reads it: quoted or not, its text is
/// resolved like a plain scalar's, except under `!str`/`!ruby/string` (a string), `!ruby/symbol` (a symbol,
/// its text unresolved), `!float` (a float) and Ruby's other object tags (kept as first read).
struct TaggedScalar<'a> {
    first: &'a Value,
}

impl<'de> serde::de::Visitor<'de> for TaggedScalar<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the tagged scalar read before")
    }

    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        use serde::de::VariantAccess;
        let (tag, variant): (String, A::Variant) = data.variant()?;
        let text: String = variant.newtype_variant()?;
        let name = |prefix: &str| tag == prefix || tag.starts_with(&format!("{prefix}:"));
        let raised = |raised: psych_scalar::PsychRaises| {
            serde::de::Error::custom(format!("Psych cannot load !{tag} {text:?}: {raised}"))
        };
        if name("str") || name("ruby/string") || tag.starts_with("ruby/sym") {
            return Ok(Value::String(text));
        }
        if tag == "float" {
            return match psych_scalar::resolve(&text).map_err(raised)? {
                Plain::Int(digits) => Ok(Value::Number(digits.parse::<f64>().unwrap_or(f64::NAN).into())),
                Plain::Float(f) => Ok(Value::Number(f.into())),
                _ => Ok(self.first.clone()),
            };
        }
        if tag == "binary" || tag.starts_with("ruby/") {
            return Ok(self.first.clone());
        }
        psych_scalar::resolve(&text).map(psych_value).map_err(raised)
    }
}

/// Whether the node that ends `before` carries an explicit tag (`!!str yes`, `&anchor !!str yes`): Psych does
/// not resolve a tagged scalar by its text.
fn tagged(before: &str) -> bool {
    let mut rest = before.trim_end();
    for _ in 0..2 {
        let token_start = rest.rfind(char::is_whitespace).map_or(0, |i| i + 1);
        let token = rest[token_start..].trim_start_matches(['[', '{', ',']);
        let line = &rest[rest[..token_start].rfind('\n').map_or(0, |i| i + 1)..token_start];
        let in_comment = line.trim_start().starts_with('#') || line.contains(" #") || line.contains("\t#");
        if token.starts_with('!') {
            return !in_comment;
        }
        if !token.starts_with('&') {
            return false;
        }
        rest = rest[..token_start].trim_end();
    }
    false
}

/// How berth holds the Ruby values of plain scalars: `Symbol`s as their names (Kamal treats them as strings),
/// integers beyond 64 bits as their digits, `Date` and `Time` as tagged values, which no key accepts where a
/// string is expected (as Kamal's validator accepts neither).
pub fn psych_value(plain: Plain) -> Value {
    match plain {
        Plain::Null => Value::Null,
        Plain::Bool(b) => Value::Bool(b),
        Plain::Int(digits) => match (digits.parse::<i64>(), digits.parse::<u64>()) {
            (Ok(n), _) => Value::Number(n.into()),
            (_, Ok(n)) => Value::Number(n.into()),
            _ => Value::String(digits),
        },
        Plain::Float(f) => Value::Number(f.into()),
        Plain::Str(s) | Plain::Symbol(s) => Value::String(s),
        Plain::Date(text) => tagged_value(DATE_TAG, text),
        Plain::Time(text) => tagged_value(TIME_TAG, text),
    }
}

/// The tags berth gives Psych's `Date` and `Time` values; the value is Psych's own YAML text for them.
pub const DATE_TAG: &str = "!ruby/object:Date";
pub const TIME_TAG: &str = "!ruby/object:Time";

/// Ruby's `to_s` of a `Date` or `Time` berth holds (`2001-12-14`, `2001-12-14 21:59:43 -0500`, `… UTC`): what
/// Kamal interpolates where one ends up in a string. `None` for any other value.
pub fn date_or_time_to_s(value: &Value) -> Option<String> {
    let Value::Tagged(tagged) = value else { return None };
    let text = tagged.value.as_str()?;
    if tagged.tag == Tag::new(DATE_TAG) {
        return Some(text.to_string());
    }
    if tagged.tag != Tag::new(TIME_TAG) {
        return None;
    }
    let mut parts = text.split(' ');
    let (date, clock, zone) = (parts.next()?, parts.next()?, parts.next()?);
    let seconds = clock.split('.').next()?;
    let zone = if zone == "Z" { "UTC".to_string() } else { zone.replace(':', "") };
    Some(format!("{date} {seconds} {zone}"))
}

fn tagged_value(tag: &str, text: String) -> Value {
    Value::Tagged(Box::new(TaggedValue { tag: Tag::new(tag), value: Value::String(text) }))
}

/// ActiveSupport's `Hash#deep_merge!`: nested mappings merge recursively; any other value replaces.
pub fn deep_merge(base: &mut Mapping, overlay: Mapping) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(Value::Mapping(existing)), Value::Mapping(incoming)) => deep_merge(existing, incoming),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// A short description of a YAML value's kind, as used in error messages.
pub fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a float",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Sequence(_) => "an array",
        Value::Mapping(_) => "a hash",
        Value::Tagged(tagged) if tagged.tag == Tag::new(DATE_TAG) => "a date",
        Value::Tagged(tagged) if tagged.tag == Tag::new(TIME_TAG) => "a time",
        Value::Tagged(_) => "a tagged value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Mapping {
        parse_yaml(text, Path::new("test.yml")).unwrap()
    }

    #[test]
    fn destination_file_sits_beside_the_base_file() {
        let files = SourceFiles::new(Path::new("config/deploy.yml"), Some("staging"));
        assert_eq!(files.destination.unwrap(), PathBuf::from("config/deploy.staging.yml"));
        let files = SourceFiles::new(Path::new("config/deploy_for_dest.yml"), Some("world"));
        assert_eq!(files.destination.unwrap(), PathBuf::from("config/deploy_for_dest.world.yml"));
    }

    #[test]
    fn deep_merge_merges_maps_and_replaces_arrays_and_scalars() {
        let mut base = yaml("servers: {web: [a, b]}\nproxy: {host: x, app_port: 3000}\nenv: {clear: {A: 1}}");
        deep_merge(&mut base, yaml("servers: {web: [c]}\nproxy: {hosts: [y]}\nenv: {clear: {B: 2}}"));
        assert_eq!(
            base,
            yaml("servers: {web: [c]}\nproxy: {host: x, app_port: 3000, hosts: [y]}\nenv: {clear: {A: 1, B: 2}}")
        );
    }

    #[test]
    fn merge_keys_and_aliases_are_resolved() {
        let tree = yaml("x-base: &base {user: app, port: 22}\nssh:\n  <<: *base\n  port: 2222\n");
        assert_eq!(tree["ssh"], Value::Mapping(yaml("user: app\nport: 2222")));
    }

    #[test]
    fn a_repeated_key_takes_the_later_value_as_ruby_does() {
        assert_eq!(yaml("a: 1\nb: 2\na: 3\n"), yaml("a: 3\nb: 2\n"));
    }

    #[test]
    fn malformed_yaml_names_file_and_line() {
        let err = parse_yaml("service: app\nimage: [unclosed\n", Path::new("config/deploy.yml")).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("config/deploy.yml"), "{message}");
        assert!(message.contains("line 3") || message.contains("line 2"), "{message}");
    }
}

/// berth's reading of YAML scalars against Ruby's own Psych, case by case (`tests/corpus/psych-scalars`).
#[cfg(test)]
mod psych_corpus {
    use super::*;

    /// One loaded value, described the same way on both sides: (kind, text).
    type Described = (String, String);

    const RUBY: &str = r##"
require "yaml"
require "json"
require "date"
def describe(v)
  case v
  when nil then ["null", ""]
  when true, false then ["bool", v.to_s]
  when Integer then ["int", v.to_s]
  when Float then ["float", v.nan? ? "nan" : [v].pack("G").unpack1("H*")]
  when String then ["string", v]
  when Symbol then ["symbol", v.to_s]
  when Date then ["date", v.strftime("%Y-%m-%d")]
  when Time then ["time", v.strftime(v.utc? ? "%Y-%m-%d %H:%M:%S.%9N Z" : "%Y-%m-%d %H:%M:%S.%9N %:z")]
  else ["other", v.inspect]
  end
end
def load(document)
  yield YAML.unsafe_load(document)
rescue Exception
  ["error", ""]
end
puts Psych::VERSION
STDIN.read.split("\n", -1).each do |text|
  value = load("k: #{text}\n") { |doc| describe(doc["k"]) }
  key = load("#{text}: k\n") { |doc| describe(doc.keys.first) }
  puts JSON.generate([value, key])
end
"##;

    struct Case {
        text: String,
        /// Where Psych 4 and 5 differ: (psych 4's answer, psych 5's answer).
        by_version: Option<(Described, Described)>,
    }

    fn cases() -> Vec<Case> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/psych-scalars/cases.txt");
        let mut cases = vec![Case { text: String::new(), by_version: None }];
        for line in std::fs::read_to_string(path).unwrap().lines() {
            if line.is_empty() || line.starts_with("# ") {
                continue;
            }
            let (text, note) = line.split_once('\t').unwrap_or((line, ""));
            let by_version = note.split_once(" | ").map(|(four, five)| {
                let answer = |s: &str, prefix: &str| -> Described {
                    let s = s.strip_prefix(prefix).unwrap_or_else(|| panic!("{line:?}: expected {prefix}"));
                    let (kind, text) = s.split_once(' ').unwrap_or((s, ""));
                    (kind.to_string(), text.to_string())
                };
                (answer(four, "psych4: "), answer(five, "psych5: "))
            });
            cases.push(Case { text: text.to_string(), by_version });
        }
        cases
    }

    fn described(kind: &str, text: impl Into<String>) -> Described {
        (kind.to_string(), text.into())
    }

    fn float_bits(f: f64) -> String {
        if f.is_nan() { "nan".into() } else { format!("{:016x}", f.to_bits()) }
    }

    fn describe_value(value: &Value) -> Described {
        match value {
            Value::Null => described("null", ""),
            Value::Bool(b) => described("bool", b.to_string()),
            Value::Number(n) => match n.as_f64() {
                Some(f) if n.is_f64() => described("float", float_bits(f)),
                _ => described("int", n.to_string()),
            },
            Value::String(s) => described("string", s.clone()),
            Value::Tagged(tagged) => {
                let kind = if tagged.tag == Tag::new(DATE_TAG) { "date" } else { "time" };
                described(kind, tagged.value.as_str().unwrap_or_default())
            }
            other => described("other", format!("{other:?}")),
        }
    }

    fn describe_plain(plain: Result<Plain, psych_scalar::PsychRaises>) -> Described {
        match plain {
            Err(_) => described("error", ""),
            Ok(Plain::Null) => described("null", ""),
            Ok(Plain::Bool(b)) => described("bool", b.to_string()),
            Ok(Plain::Int(digits)) => described("int", digits),
            Ok(Plain::Float(f)) => described("float", float_bits(f)),
            Ok(Plain::Str(s)) => described("string", s),
            Ok(Plain::Symbol(s)) => described("symbol", s),
            Ok(Plain::Date(s)) => described("date", s),
            Ok(Plain::Time(s)) => described("time", s),
        }
    }

    /// What berth's tree holds for a Ruby value: symbols by name, integers beyond 64 bits by their digits.
    fn as_berth_holds_it((kind, text): Described) -> Described {
        let wide = kind == "int" && text.parse::<i64>().is_err() && text.parse::<u64>().is_err();
        if kind == "symbol" || wide { described("string", text) } else { (kind, text) }
    }

    fn berth(document: &str, key: bool) -> Described {
        match parse_psych(document) {
            Ok(Value::Mapping(mapping)) => match mapping.iter().next() {
                Some((k, v)) => describe_value(if key { k } else { v }),
                None => described("other", "{}"),
            },
            Ok(other) => described("other", format!("{other:?}")),
            Err(_) => described("error", ""),
        }
    }

    fn ruby(cases: &[Case]) -> (String, Vec<(Described, Described)>) {
        use std::io::Write;
        let mut child = std::process::Command::new("ruby")
            .args(["-e", RUBY])
            .env("TZ", "UTC")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| {
                panic!("this test needs `ruby` on PATH (it checks berth against Ruby's Psych): {err}; install it, e.g. `apt-get install -y ruby`")
            });
        let input: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
        child.stdin.take().unwrap().write_all(input.join("\n").as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "ruby failed");
        let stdout = String::from_utf8(output.stdout).unwrap();
        let mut lines = stdout.lines();
        let version = lines.next().unwrap().to_string();
        let answers: Vec<(Described, Described)> = lines.map(|line| serde_json::from_str(line).unwrap()).collect();
        assert_eq!(answers.len(), cases.len(), "one answer per case");
        (version, answers)
    }

    #[test]
    fn berth_reads_every_scalar_as_ruby_psych_does() {
        let cases = cases();
        let (version, answers) = ruby(&cases);
        let psych5 = !version.starts_with('4');
        let mut failures = Vec::new();
        for (case, (ruby_value, ruby_key)) in cases.iter().zip(answers) {
            let text = &case.text;
            // A plain scalar: no quote or property first, and YAML syntax at all (`@x` is not).
            let syntax = yaml_serde::from_str::<Value>(&format!("k: {text}\n")).is_ok();
            let plain = syntax && !text.starts_with(['\'', '"', '!', '&']);
            // What Psych 5 answers for a plain scalar, and whether this Ruby answered it.
            let (expected, ruby_agrees) = match &case.by_version {
                Some((four, five)) => (five.clone(), ruby_value == if psych5 { five.clone() } else { four.clone() }),
                None => (ruby_value.clone(), true),
            };
            if !ruby_agrees {
                failures.push(format!("{text:?}: Ruby's Psych {version} answered {ruby_value:?}, not as noted"));
            }
            if plain {
                let resolved = describe_plain(psych_scalar::resolve(text));
                if resolved != expected {
                    failures.push(format!("{text:?} resolved: berth {resolved:?}, Psych {expected:?}"));
                }
            }
            let in_tree = as_berth_holds_it(expected);
            let value = berth(&format!("k: {text}\n"), false);
            if value != in_tree {
                failures.push(format!("k: {text}\n  berth {value:?}\n  Psych {in_tree:?}"));
            }
            if case.by_version.is_none() {
                let key = berth(&format!("{text}: k\n"), true);
                if key != as_berth_holds_it(ruby_key.clone()) {
                    failures.push(format!("{text}: k\n  berth {key:?}\n  Psych {ruby_key:?}"));
                }
            }
        }
        assert!(cases.len() > 150, "the corpus has only {} cases", cases.len());
        assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
    }
}

#[cfg(test)]
mod psych_reading {
    use super::*;

    fn read(text: &str) -> Value {
        parse_psych(text).unwrap()
    }

    #[test]
    fn plain_scalars_are_read_by_yaml_1_1_quoted_ones_stay_strings() {
        let tree = read(
            "proxy: {ssl: yes}\na: 'yes'\nb: \"on\"\nc: |-\n  0755\nd: >-\n  no\ne: !!str off\nf: 0755\ng: [on, 'off', 1:30]\n",
        );
        assert_eq!(tree["proxy"]["ssl"], Value::Bool(true));
        assert_eq!(tree["a"], Value::String("yes".into()));
        assert_eq!(tree["b"], Value::String("on".into()));
        assert_eq!(tree["c"], Value::String("0755".into()));
        assert_eq!(tree["d"], Value::String("no".into()));
        assert_eq!(tree["e"], Value::String("off".into()));
        assert_eq!(tree["f"], Value::Number(493.into()));
        assert_eq!(tree["g"], read("[true, 'off', 5400]"));
    }

    #[test]
    fn keys_are_scalars_too_and_psych_s_equal_keys_collide() {
        let tree = read("on: 1\nyes: 2\n'on': 3\n");
        assert_eq!(tree.as_mapping().unwrap().len(), 2);
        assert_eq!(tree[&Value::Bool(true)], Value::Number(2.into()));
        assert_eq!(tree["on"], Value::Number(3.into()));
    }

    #[test]
    fn text_before_a_scalar_does_not_change_its_reading() {
        // Multi-byte characters and CRLF line ends shift byte offsets.
        let tree = read("a: yes\r\n# café ☕\r\nb: 'é' # ü\r\nc: on\r\nd: [ö, off]\r\n");
        assert_eq!(tree, read("a: true\nb: é\nc: true\nd: [ö, false]\n"));
    }

    #[test]
    fn anchors_aliases_and_merges_keep_the_reading() {
        let tree = read("x: &flag yes\ny: *flag\nbase: &base {ssl: on}\nproxy:\n  <<: *base\n  host: a\n");
        let mut tree = tree;
        tree.apply_merge().unwrap();
        assert_eq!(tree["y"], Value::Bool(true));
        assert_eq!(tree["proxy"]["ssl"], Value::Bool(true));
    }

    #[test]
    fn tagged_hashes_and_arrays_are_read_like_untagged_ones() {
        let tree = read("a: !foo {x: on}\nb: !foo [on, 0755]\nc: !ruby/symbol foo\nd: yes\n");
        assert_eq!(tree, read("a: {x: true}\nb: [true, 493]\nc: foo\nd: true\n"));
    }

    #[test]
    fn a_tag_in_a_comment_is_no_tag() {
        assert_eq!(read("# see !important\non: x\n")[&Value::Bool(true)], Value::String("x".into()));
    }
}
