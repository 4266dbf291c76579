//! How MQTT subscriptions name streams: `$stream/{stream}` reads as a
//! group of one, `$share/{group}/$stream/{stream}` joins a consumer group;
//! the v5 SUBSCRIBE user property `stream-offset` moves the group.

use crate::topic::ParsedFilter;

const PREFIX: &str = "$stream/";

/// The SUBSCRIBE user property that moves a group (EMQX's name).
pub const OFFSET_PROPERTY: &str = "stream-offset";

/// A subscription that reads a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSubscription<'a> {
    pub stream: &'a str,
    /// The `$share` group; none for a reader of its own.
    pub group: Option<&'a str>,
}

/// The stream a filter reads, if it names one. `Err` for a filter in the
/// `$stream/` space that is not a stream's name (wildcards, more levels).
pub fn stream_subscription<'a>(
    parsed: &ParsedFilter<'a>,
) -> Result<Option<StreamSubscription<'a>>, String> {
    let Some(stream) = parsed.filter.strip_prefix(PREFIX) else {
        return Ok(None);
    };
    if stream.is_empty() || stream.contains(['/', '+', '#']) {
        return Err(format!("`{}` does not name a stream", parsed.filter));
    }
    Ok(Some(StreamSubscription {
        stream,
        group: parsed.share_group,
    }))
}

/// Where a `stream-offset` moves a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamOffset {
    Earliest,
    Latest,
    /// The first message appended at or after this time (unix ms).
    At(u64),
}

impl StreamOffset {
    /// Reads `earliest`, `latest` or a Unix time in microseconds.
    pub fn parse(text: &str) -> Result<StreamOffset, String> {
        match text {
            "earliest" => Ok(StreamOffset::Earliest),
            "latest" => Ok(StreamOffset::Latest),
            micros => micros
                .parse::<u64>()
                .map(|us| StreamOffset::At(us / 1000))
                .map_err(|_| {
                    format!(
                        "stream-offset `{text}` is not \"earliest\", \"latest\" or a Unix time in microseconds"
                    )
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::{TopicLimits, parse_filter};

    fn read(raw: &str) -> Result<Option<StreamSubscription<'_>>, String> {
        let limits = TopicLimits {
            max_length: 4096,
            max_levels: 128,
        };
        stream_subscription(&parse_filter(raw, limits).unwrap())
    }

    #[test]
    fn stream_filters_name_a_stream_and_maybe_a_group() {
        assert_eq!(
            read("$stream/orders"),
            Ok(Some(StreamSubscription {
                stream: "orders",
                group: None
            }))
        );
        assert_eq!(
            read("$share/billing/$stream/orders"),
            Ok(Some(StreamSubscription {
                stream: "orders",
                group: Some("billing")
            }))
        );
        assert_eq!(read("orders/#"), Ok(None));
        assert_eq!(read("$share/g/orders/#"), Ok(None));
        assert!(read("$stream/orders/#").is_err());
        assert!(read("$stream/+").is_err());
    }

    #[test]
    fn stream_offsets_read_as_emqx_writes_them() {
        assert_eq!(StreamOffset::parse("earliest"), Ok(StreamOffset::Earliest));
        assert_eq!(StreamOffset::parse("latest"), Ok(StreamOffset::Latest));
        assert_eq!(
            StreamOffset::parse("1764547200000000"),
            Ok(StreamOffset::At(1_764_547_200_000))
        );
        assert!(StreamOffset::parse("yesterday").is_err());
    }
}
