//! `labelSelector` and `fieldSelector` query parameters: parsed once per request into
//! requirements, then matched against stored JSON objects.

use serde_json::Value;

use crate::error::ApiError;
use crate::resource::Kind;

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
    GreaterThan(String, i64),
    LessThan(String, i64),
}

/// A parsed `labelSelector`: every requirement must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LabelSelector {
    requirements: Vec<LabelRequirement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Ident(String),
    Not,
    Equals,
    DoubleEquals,
    NotEquals,
    Greater,
    Less,
    Open,
    Close,
    Comma,
}

fn lex(input: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = input.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '!' => {
                chars.next();
                if chars.peek() == Some(&'=') {
                    chars.next();
                    tokens.push(Token::NotEquals);
                } else {
                    tokens.push(Token::Not);
                }
            }
            '=' => {
                chars.next();
                if chars.peek() == Some(&'=') {
                    chars.next();
                    tokens.push(Token::DoubleEquals);
                } else {
                    tokens.push(Token::Equals);
                }
            }
            '>' => {
                chars.next();
                tokens.push(Token::Greater);
            }
            '<' => {
                chars.next();
                tokens.push(Token::Less);
            }
            '(' => {
                chars.next();
                tokens.push(Token::Open);
            }
            ')' => {
                chars.next();
                tokens.push(Token::Close);
            }
            ',' => {
                chars.next();
                tokens.push(Token::Comma);
            }
            _ => {
                let mut ident = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || "!=<>(),".contains(c) {
                        break;
                    }
                    ident.push(c);
                    chars.next();
                }
                tokens.push(Token::Ident(ident));
            }
        }
    }
    Ok(tokens)
}

fn valid_key(key: &str) -> bool {
    // A qualified name with an optional DNS-subdomain prefix: `app`, `skein.dev/role`.
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.".contains(c))
    });
    name_ok && prefix_ok
}

fn valid_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= 63
            && value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        token
    }

    fn key(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Ident(key)) if valid_key(&key) => Ok(key),
            Some(Token::Ident(key)) => Err(format!("invalid label key {key:?}")),
            other => Err(format!("expected a label key, found {other:?}")),
        }
    }

    fn value(&mut self) -> Result<String, String> {
        match self.peek() {
            Some(Token::Ident(_)) => match self.next() {
                Some(Token::Ident(value)) if valid_value(&value) => Ok(value),
                Some(Token::Ident(value)) => Err(format!("invalid label value {value:?}")),
                _ => Err("expected a label value".into()),
            },
            // `a=` selects an empty value.
            _ => Ok(String::new()),
        }
    }

    fn value_set(&mut self) -> Result<Vec<String>, String> {
        if self.next() != Some(Token::Open) {
            return Err("expected '(' after in/notin".into());
        }
        let mut values = Vec::new();
        loop {
            match self.peek() {
                Some(Token::Close) => {
                    self.next();
                    return Ok(values);
                }
                Some(Token::Comma) => {
                    self.next();
                    // `(a,,b)` or a leading comma means an empty value, as in Kubernetes.
                    if matches!(self.peek(), Some(Token::Comma) | Some(Token::Close)) {
                        values.push(String::new());
                    }
                }
                Some(Token::Ident(_)) => values.push(self.value()?),
                other => return Err(format!("unexpected {other:?} in value set")),
            }
        }
    }

    fn requirement(&mut self) -> Result<LabelRequirement, String> {
        if self.peek() == Some(&Token::Not) {
            self.next();
            return Ok(LabelRequirement::NotExists(self.key()?));
        }
        let key = self.key()?;
        match self.peek() {
            None | Some(Token::Comma) => Ok(LabelRequirement::Exists(key)),
            Some(Token::Equals) | Some(Token::DoubleEquals) => {
                self.next();
                Ok(LabelRequirement::Equals(key, self.value()?))
            }
            Some(Token::NotEquals) => {
                self.next();
                Ok(LabelRequirement::NotEquals(key, self.value()?))
            }
            Some(Token::Greater) | Some(Token::Less) => {
                let greater = self.next() == Some(Token::Greater);
                let raw = self.value()?;
                let number: i64 =
                    raw.parse().map_err(|_| format!("value {raw:?} for {key} must be an integer for > and <"))?;
                Ok(if greater {
                    LabelRequirement::GreaterThan(key, number)
                } else {
                    LabelRequirement::LessThan(key, number)
                })
            }
            Some(Token::Ident(op)) if op == "in" => {
                self.next();
                Ok(LabelRequirement::In(key, self.value_set()?))
            }
            Some(Token::Ident(op)) if op == "notin" => {
                self.next();
                Ok(LabelRequirement::NotIn(key, self.value_set()?))
            }
            Some(other) => Err(format!("unexpected {other:?} after key {key}")),
        }
    }
}

impl LabelSelector {
    /// Parses the Kubernetes label selector syntax: `a=b`, `a==b`, `a!=b`, `a in (x,y)`,
    /// `a notin (x)`, `a`, `!a`, `a>1`, `a<1`, joined by commas.
    pub(crate) fn parse(input: &str) -> Result<LabelSelector, ApiError> {
        let fail = |why: String| ApiError::bad_request(format!("unable to parse labelSelector {input:?}: {why}"));
        let tokens = lex(input).map_err(fail)?;
        let mut parser = Parser { tokens, pos: 0 };
        let mut requirements = Vec::new();
        if parser.peek().is_none() {
            return Ok(LabelSelector::default());
        }
        loop {
            requirements.push(parser.requirement().map_err(fail)?);
            match parser.next() {
                None => break,
                Some(Token::Comma) => continue,
                Some(other) => return Err(fail(format!("unexpected {other:?}"))),
            }
        }
        Ok(LabelSelector { requirements })
    }

    /// Whether the object's `metadata.labels` satisfy every requirement.
    pub(crate) fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels").and_then(Value::as_object);
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.requirements.iter().all(|req| match req {
            LabelRequirement::Equals(k, v) => label(k) == Some(v.as_str()),
            LabelRequirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            LabelRequirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelRequirement::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            LabelRequirement::Exists(k) => label(k).is_some(),
            LabelRequirement::NotExists(k) => label(k).is_none(),
            LabelRequirement::GreaterThan(k, n) => label(k).and_then(|l| l.parse::<i64>().ok()).is_some_and(|l| l > *n),
            LabelRequirement::LessThan(k, n) => label(k).and_then(|l| l.parse::<i64>().ok()).is_some_and(|l| l < *n),
        })
    }
}

/// One `fieldSelector` term.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FieldRequirement {
    field: String,
    value: String,
    equal: bool,
}

/// A parsed `fieldSelector`: every term must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    /// Parses `field=value`, `field==value`, `field!=value` terms joined by commas, accepting
    /// only fields the kind supports (as the API server does), else 400 BadRequest.
    pub(crate) fn parse(input: &str, kind: Kind) -> Result<FieldSelector, ApiError> {
        let mut requirements = Vec::new();
        for term in input.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, value, equal) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, v, true)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, v, true)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid fieldSelector {input:?}: term {term:?} is not field=value or field!=value"
                )));
            };
            let field = field.trim();
            if field != "metadata.name" && field != "metadata.namespace" && !kind.selectable_fields().contains(&field) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field} (fieldSelector {input:?} on {})",
                    kind.plural()
                )));
            }
            requirements.push(FieldRequirement { field: field.to_owned(), value: value.trim().to_owned(), equal });
        }
        Ok(FieldSelector { requirements })
    }

    /// Whether the object's fields satisfy every term. A missing field reads as `""`.
    pub(crate) fn matches(&self, object: &Value) -> bool {
        self.requirements.iter().all(|req| (field_value(object, &req.field) == req.value) == req.equal)
    }
}

fn field_value(object: &Value, field: &str) -> String {
    let path = if field == "source" { "source.component" } else { field };
    let mut current = object;
    for part in path.split('.') {
        match current.get(part) {
            Some(next) => current = next,
            None => return String::new(),
        }
    }
    match current {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "default", "labels": labels}, "spec": {"nodeName": "n1"}})
    }

    #[test]
    fn label_selector_forms() {
        let obj = pod(json!({"app": "web", "tier": "front", "n": "5"}));
        for (sel, want) in [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app in (web,db)", true),
            ("app in(db)", false),
            ("app notin (db)", true),
            ("app notin (web, db)", false),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("missing!=x", true),
            ("app=web,tier=front", true),
            ("app=web,tier=back", false),
            ("n>4", true),
            ("n<4", false),
            ("", true),
        ] {
            assert_eq!(LabelSelector::parse(sel).unwrap().matches(&obj), want, "{sel}");
        }
    }

    #[test]
    fn bad_label_selectors_are_errors() {
        for sel in ["app in web", "=x", "app=(", "a b", "app in (x", "n>x", "bad key=1", "app=web,"] {
            let err = LabelSelector::parse(sel).unwrap_err();
            assert_eq!(err.code, 400, "{sel}");
        }
    }

    #[test]
    fn field_selectors() {
        let obj = pod(json!({}));
        let sel = FieldSelector::parse("spec.nodeName=n1,metadata.namespace=default", Kind::Pod).unwrap();
        assert!(sel.matches(&obj));
        assert!(!FieldSelector::parse("spec.nodeName!=n1", Kind::Pod).unwrap().matches(&obj));
        assert!(FieldSelector::parse("metadata.name==p", Kind::Pod).unwrap().matches(&obj));
        assert_eq!(FieldSelector::parse("spec.nodeName=n1", Kind::Service).unwrap_err().code, 400);
        assert_eq!(FieldSelector::parse("spec.nodeName", Kind::Pod).unwrap_err().code, 400);
    }
}
