//! Docker repository-name patterns: `team/*`, `shared/**`, `{tenant}/**`, `localhost:5000/a/*`.

use crate::Caller;
use std::fmt;

/// A `{name}` a pattern may use, and the caller field it stands for: the one list of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Placeholder {
    /// `{sub}`: the caller's subject.
    Sub,
    /// `{tenant}`: `stellaops:tenant`.
    Tenant,
    /// `{plan}`: `stellaops:plan`.
    Plan,
    /// `{client_id}`: `client_id`.
    ClientId,
}

impl Placeholder {
    /// Every placeholder, in the order error messages list them.
    pub const ALL: [Placeholder; 4] =
        [Placeholder::Sub, Placeholder::Tenant, Placeholder::Plan, Placeholder::ClientId];

    /// The name written between the braces.
    pub fn name(self) -> &'static str {
        match self {
            Placeholder::Sub => "sub",
            Placeholder::Tenant => "tenant",
            Placeholder::Plan => "plan",
            Placeholder::ClientId => "client_id",
        }
    }

    /// The placeholder written `{name}`.
    pub fn from_name(name: &str) -> Option<Placeholder> {
        Placeholder::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The caller's value it stands for, if the caller has one.
    pub fn value(self, caller: &Caller) -> Option<&str> {
        match self {
            Placeholder::Sub => Some(caller.subject.as_str()),
            Placeholder::Tenant => caller.tenant.as_deref(),
            Placeholder::Plan => caller.plan.as_deref(),
            Placeholder::ClientId => caller.client_id.as_deref(),
        }
    }
}

impl fmt::Display for Placeholder {
    /// `{tenant}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{}}}", self.name())
    }
}

/// A compiled repository-name pattern.
///
/// Names are split on `/` into segments, and so are patterns:
///
/// * a literal segment matches itself (`team`, `localhost:5000`);
/// * `*` inside a segment matches any run of characters within that one segment
///   (`team/*` matches `team/app` but not `team/app/sub`; `app-*` matches `app-web`);
/// * a segment that is exactly `**` matches any depth, as in `.gitignore`: `shared/**` matches
///   `shared/a` and `shared/a/b` but not `shared` itself; `**/cache` matches `cache` and `x/y/cache`;
///   `a/**/b` matches `a/b` and `a/x/y/b`; `**` alone matches every name;
/// * `{sub}`, `{tenant}`, `{plan}` and `{client_id}` stand for the caller's value, matched
///   literally (a `*` in a tenant name is not a wildcard). A placeholder whose value is missing, or
///   is not a valid repository path component (lowercase letters, digits and `.`, `_`, `-`
///   separators), matches nothing: the rule fails closed.
///
/// ```
/// use registry_policy::{Caller, RepoPattern};
///
/// let acme = Caller::new("alice").with_tenant("acme");
/// let pattern = RepoPattern::parse("{tenant}/**").unwrap();
/// assert!(pattern.matches("acme/app", &acme));
/// assert!(pattern.matches("acme/team/app", &acme));
/// assert!(!pattern.matches("other/app", &acme));
/// assert!(!pattern.matches("acme/app", &Caller::new("bob"))); // no tenant: no match
///
/// let one = RepoPattern::parse("team/*").unwrap();
/// assert!(one.matches("team/app", &acme) && !one.matches("team/app/sub", &acme));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct RepoPattern {
    source: String,
    segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    AnyDepth,
    Tokens(Vec<Token>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Literal(String),
    Star,
    Placeholder(Placeholder),
}

/// Why a pattern was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatternError {
    pattern: String,
    problem: String,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "repository pattern {:?}: {}", self.pattern, self.problem)
    }
}

impl std::error::Error for PatternError {}

impl fmt::Debug for RepoPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoPattern({:?})", self.source)
    }
}

impl fmt::Display for RepoPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl RepoPattern {
    /// Compiles a pattern, refusing empty segments, `**` inside a segment, characters that can
    /// never occur in a repository name, and unknown or unclosed placeholders.
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        let error = |problem: String| PatternError { pattern: pattern.to_owned(), problem };
        if pattern.is_empty() {
            return Err(error("is empty".to_owned()));
        }
        let segments = pattern
            .split('/')
            .map(|segment| parse_segment(segment).map_err(&error))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RepoPattern { source: pattern.to_owned(), segments })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `name` matches, with placeholders taken from `caller`.
    pub fn matches(&self, name: &str, caller: &Caller) -> bool {
        if name.is_empty() {
            return false;
        }
        let names: Vec<&str> = name.split('/').collect();
        match_segments(&self.segments, &names, caller)
    }
}

fn parse_segment(segment: &str) -> Result<Segment, String> {
    if segment.is_empty() {
        return Err("has an empty path segment".to_owned());
    }
    if segment == "**" {
        return Ok(Segment::AnyDepth);
    }
    if segment.contains("**") {
        return Err(format!("`**` must be a whole path segment, not part of {segment:?}"));
    }
    let mut tokens = Vec::new();
    let mut rest = segment;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('*') {
            tokens.push(Token::Star);
            rest = after;
        } else if let Some(after) = rest.strip_prefix('{') {
            let Some(end) = after.find('}') else {
                return Err(format!("placeholder in {segment:?} is not closed with `}}`"));
            };
            let name = &after[..end];
            let Some(placeholder) = Placeholder::from_name(name) else {
                return Err(format!(
                    "unknown placeholder {{{name}}}; known: {}",
                    Placeholder::ALL.map(|p| p.to_string()).join(", ")
                ));
            };
            tokens.push(Token::Placeholder(placeholder));
            rest = &after[end + 1..];
        } else {
            let end = rest.find(['*', '{']).unwrap_or(rest.len());
            let literal = &rest[..end];
            if let Some(bad) = literal.chars().find(|c| !is_name_char(*c)) {
                return Err(format!("{bad:?} cannot occur in a repository name"));
            }
            tokens.push(Token::Literal(literal.to_owned()));
            rest = &rest[end..];
        }
    }
    Ok(Segment::Tokens(tokens))
}

/// Characters of a repository name segment: path components and `host:port` prefixes.
fn is_name_char(c: char) -> bool {
    c.is_ascii_lowercase()
        || c.is_ascii_digit()
        || matches!(c, '.' | '_' | '-' | ':')
        || c.is_ascii_uppercase()
}

/// Whether `value` is one repository path component: `[a-z0-9]+` joined by `.`, `_`, `__` or
/// runs of `-`. Placeholder values must be, or they match nothing.
pub fn is_path_component(value: &str) -> bool {
    let bytes = value.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &value[start..i];
        let dashes = separator.bytes().all(|b| b == b'-');
        if !(separator == "." || separator == "_" || separator == "__" || dashes) {
            return false;
        }
    }
    true
}

fn match_segments(pattern: &[Segment], names: &[&str], caller: &Caller) -> bool {
    match pattern.split_first() {
        None => names.is_empty(),
        Some((Segment::AnyDepth, rest)) => {
            // A trailing `**` needs at least one segment (`shared/**` is not `shared`);
            // elsewhere it may match none (`a/**/b` matches `a/b`).
            let min = usize::from(rest.is_empty());
            (min..=names.len()).any(|skip| match_segments(rest, &names[skip..], caller))
        }
        Some((Segment::Tokens(tokens), rest)) => match names.split_first() {
            Some((name, names)) => match_tokens(tokens, name, caller) && match_segments(rest, names, caller),
            None => false,
        },
    }
}

fn match_tokens(tokens: &[Token], text: &str, caller: &Caller) -> bool {
    match tokens.split_first() {
        None => text.is_empty(),
        Some((Token::Literal(literal), rest)) => {
            text.strip_prefix(literal.as_str()).is_some_and(|text| match_tokens(rest, text, caller))
        }
        Some((Token::Placeholder(placeholder), rest)) => match placeholder.value(caller) {
            Some(value) if is_path_component(value) => {
                text.strip_prefix(value).is_some_and(|text| match_tokens(rest, text, caller))
            }
            _ => false,
        },
        Some((Token::Star, rest)) => text
            .char_indices()
            .map(|(i, _)| i)
            .chain(std::iter::once(text.len()))
            .any(|i| match_tokens(rest, &text[i..], caller)),
    }
}
