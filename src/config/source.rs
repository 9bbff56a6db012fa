//! Stage one of loading: files on disk -> one merged YAML tree, exactly as Kamal builds it.
//!
//! Each file is rendered with ERB, parsed as YAML (anchors, aliases and `<<` merge keys allowed), and the
//! destination file is deep-merged over the base file: maps merge key by key, everything else (arrays,
//! scalars) is replaced, and no key is ever removed (ActiveSupport's `deep_merge!`).

use std::path::{Path, PathBuf};

use yaml_serde::{Mapping, Value};

use crate::config::ConfigError;
use crate::config::erb;
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
    let LenientValue(mut value) = yaml_serde::from_str(text).map_err(|err| yaml_error(file, &err))?;
    value.apply_merge().map_err(|err| yaml_error(file, &err))?;
    match value {
        Value::Mapping(mapping) => Ok(mapping),
        Value::Null => Ok(Mapping::new()),
        other => Err(ConfigError::NotAMapping { path: file.to_path_buf(), found: describe(&other).to_string() }),
    }
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

/// A YAML value parsed the way Ruby's Psych parses it: a key repeated in one mapping is not an error, the
/// later value replaces the earlier one in the earlier one's place (real configs do repeat keys).
struct LenientValue(Value);

impl<'de> serde::Deserialize<'de> for LenientValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<LenientValue, D::Error> {
        deserializer.deserialize_any(LenientVisitor).map(LenientValue)
    }
}

struct LenientVisitor;

impl<'de> serde::de::Visitor<'de> for LenientVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(LenientVisitor)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(LenientValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Sequence(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut mapping = Mapping::new();
        while let Some((LenientValue(key), LenientValue(value))) = map.next_entry()? {
            mapping.insert(key, value);
        }
        Ok(Value::Mapping(mapping))
    }

    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        // A `!tag value` (e.g. `!ruby/symbol`): keep the value, drop the tag, as Kamal sees plain data.
        use serde::de::VariantAccess;
        let (_tag, variant): (String, A::Variant) = data.variant()?;
        variant.newtype_variant::<LenientValue>().map(|LenientValue(v)| v)
    }
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
