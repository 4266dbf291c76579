//! Topic names and topic filters: validation and matching.
//!
//! mqttbytes accepts names with wildcards or U+0000 and filters like `a+/b`,
//! so every name and filter a client sends is checked here first.

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("empty")]
    Empty,
    #[error("longer than the configured maximum")]
    TooLong,
    #[error("more levels than the configured maximum")]
    TooManyLevels,
    #[error("contains U+0000")]
    Nul,
    #[error("contains a wildcard")]
    Wildcard,
    #[error("misplaced wildcard")]
    MisplacedWildcard,
    #[error("malformed shared subscription")]
    BadShare,
}

#[derive(Debug, Clone, Copy)]
pub struct TopicLimits {
    pub max_length: usize,
    pub max_levels: usize,
}

fn check_common(text: &str, limits: TopicLimits) -> Result<(), TopicError> {
    if text.is_empty() {
        return Err(TopicError::Empty);
    }
    if text.len() > limits.max_length {
        return Err(TopicError::TooLong);
    }
    if text.contains('\0') {
        return Err(TopicError::Nul);
    }
    if text.split('/').count() > limits.max_levels {
        return Err(TopicError::TooManyLevels);
    }
    Ok(())
}

/// A topic name as used in PUBLISH: no wildcards.
pub fn validate_name(name: &str, limits: TopicLimits) -> Result<(), TopicError> {
    check_common(name, limits)?;
    if name.contains(['+', '#']) {
        return Err(TopicError::Wildcard);
    }
    Ok(())
}

/// A topic filter as used in SUBSCRIBE: `+` fills a whole level, `#` is a
/// whole last level.
pub fn validate_filter(filter: &str, limits: TopicLimits) -> Result<(), TopicError> {
    check_common(filter, limits)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        match level {
            "+" => {}
            "#" if is_last => {}
            _ if level.contains(['+', '#']) => return Err(TopicError::MisplacedWildcard),
            _ => {}
        }
    }
    Ok(())
}

/// A subscription filter split into its share group (for `$share/{group}/{filter}`)
/// and the filter that is matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedFilter<'a> {
    pub share_group: Option<&'a str>,
    pub filter: &'a str,
}

/// Validates a filter as sent in SUBSCRIBE/UNSUBSCRIBE, including the shared
/// subscription form.
pub fn parse_filter(raw: &str, limits: TopicLimits) -> Result<ParsedFilter<'_>, TopicError> {
    if let Some(rest) = raw.strip_prefix("$share/") {
        let (group, filter) = rest.split_once('/').ok_or(TopicError::BadShare)?;
        if group.is_empty() || group.contains(['+', '#']) {
            return Err(TopicError::BadShare);
        }
        validate_filter(filter, limits)?;
        return Ok(ParsedFilter {
            share_group: Some(group),
            filter,
        });
    }
    if raw == "$share" {
        return Err(TopicError::BadShare);
    }
    validate_filter(raw, limits)?;
    Ok(ParsedFilter {
        share_group: None,
        filter: raw,
    })
}

/// Whether `name` matches `filter`. Both must already be valid. A name
/// starting with `$` is never matched by a filter starting with a wildcard.
pub fn matches(filter: &str, name: &str) -> bool {
    if name.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut name_levels = name.split('/');
    loop {
        match (filter_levels.next(), name_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(n)) if f == n => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: TopicLimits = TopicLimits {
        max_length: 64,
        max_levels: 8,
    };

    #[test]
    fn names_with_wildcards_nul_or_nothing_are_refused() {
        assert_eq!(validate_name("a/b", LIMITS), Ok(()));
        assert_eq!(validate_name("/", LIMITS), Ok(()));
        assert_eq!(validate_name("", LIMITS), Err(TopicError::Empty));
        assert_eq!(validate_name("a/+", LIMITS), Err(TopicError::Wildcard));
        assert_eq!(validate_name("a#", LIMITS), Err(TopicError::Wildcard));
        assert_eq!(validate_name("a\0b", LIMITS), Err(TopicError::Nul));
        assert_eq!(
            validate_name(&"x".repeat(65), LIMITS),
            Err(TopicError::TooLong)
        );
        assert_eq!(
            validate_name("a/b/c/d/e/f/g/h/i", LIMITS),
            Err(TopicError::TooManyLevels)
        );
    }

    #[test]
    fn filters_need_whole_level_wildcards_and_hash_last() {
        for good in [
            "#",
            "+",
            "a/#",
            "+/+",
            "a/+/b",
            "/+",
            "sport/tennis/#",
            "+/",
        ] {
            assert_eq!(validate_filter(good, LIMITS), Ok(()), "{good}");
        }
        for bad in ["a/#/b", "a+/b", "a/b#", "##", "a/++", ""] {
            assert!(validate_filter(bad, LIMITS).is_err(), "{bad}");
        }
    }

    #[test]
    fn shared_filters_split_group_and_filter() {
        assert_eq!(
            parse_filter("$share/g1/a/+", LIMITS),
            Ok(ParsedFilter {
                share_group: Some("g1"),
                filter: "a/+"
            })
        );
        assert_eq!(parse_filter("$share/g1", LIMITS), Err(TopicError::BadShare));
        assert_eq!(parse_filter("$share//a", LIMITS), Err(TopicError::BadShare));
        assert_eq!(
            parse_filter("$share/g+/a", LIMITS),
            Err(TopicError::BadShare)
        );
        assert_eq!(parse_filter("$share", LIMITS), Err(TopicError::BadShare));
    }

    #[test]
    fn wildcard_matching_follows_the_spec_examples() {
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/score/wimbledon"
        ));
        assert!(matches("sport/#", "sport"));
        assert!(matches("#", "a/b/c"));
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("sport/+", "sport/"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
    }

    #[test]
    fn dollar_topics_are_not_matched_by_leading_wildcards() {
        assert!(!matches("#", "$SYS/broker"));
        assert!(!matches("+/broker", "$SYS/broker"));
        assert!(matches("$SYS/#", "$SYS/broker"));
        assert!(matches("$SYS/+", "$SYS/broker"));
    }
}
