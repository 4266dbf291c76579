use super::*;

fn acl(text: &str) -> Acl {
    match Acl::parse(text) {
        Ok(acl) => acl,
        Err(error) => panic!("{error}"),
    }
}

fn user<'a>(name: &'a str, client_id: &'a str) -> Who<'a> {
    Who {
        username: Some(name),
        client_id,
    }
}

fn anonymous(client_id: &str) -> Who<'_> {
    Who {
        username: None,
        client_id,
    }
}

fn problem_at(text: &str) -> (usize, LineProblem) {
    match Acl::parse(text) {
        Err(AclError::Line {
            file: None,
            line,
            problem,
        }) => (line, problem),
        other => panic!("expected a line error, got {other:?}"),
    }
}

/// The example file shipped with Mosquitto, comments and all.
const MOSQUITTO_EXAMPLE: &str = "\
# This affects access control for clients with no username.
topic read $SYS/#

# This only affects clients with username \"roger\".
user roger
topic foo/bar

# This affects all clients.
pattern write $SYS/broker/connection/%c/state
";

#[test]
fn mosquitto_example_file_grants_what_its_comments_say() {
    let acl = acl(MOSQUITTO_EXAMPLE);
    let anon = anonymous("a1");
    assert!(acl.may_receive(&anon, "$SYS/broker/uptime"));
    assert!(acl.may_subscribe(&anon, "$SYS/#"));
    assert!(!acl.may_publish(&anon, "$SYS/broker/uptime"));
    assert!(!acl.may_receive(&anon, "foo/bar"));

    let roger = user("roger", "r1");
    assert!(acl.may_publish(&roger, "foo/bar"));
    assert!(acl.may_receive(&roger, "foo/bar"));
    assert!(!acl.may_publish(&roger, "foo/baz"));
    assert!(!acl.may_receive(&roger, "$SYS/broker/uptime"));

    for who in [anonymous("bridge1"), user("roger", "bridge1")] {
        assert!(acl.may_publish(&who, "$SYS/broker/connection/bridge1/state"));
        assert!(!acl.may_publish(&who, "$SYS/broker/connection/bridge2/state"));
    }
    assert!(!acl.may_receive(&roger, "$SYS/broker/connection/r1/state"));
}

#[test]
fn anonymous_entries_are_for_clients_without_a_username_only() {
    let acl = acl("topic public/#\nuser alice\ntopic a/#\n");
    assert!(acl.may_publish(&anonymous("x"), "public/1"));
    assert!(!acl.may_publish(&anonymous("x"), "a/1"));
    assert!(!acl.may_publish(&user("alice", "x"), "public/1"));
    assert!(!acl.may_publish(&user("bob", "x"), "public/1"));
    assert!(!acl.may_publish(&user("", "x"), "public/1"));
}

#[test]
fn access_words_keep_read_and_write_apart() {
    let acl = acl("topic read r\ntopic write w\ntopic readwrite rw\ntopic both\n");
    let who = anonymous("c");
    let answers = |t| (acl.may_receive(&who, t), acl.may_publish(&who, t));
    assert_eq!(answers("r"), (true, false));
    assert_eq!(answers("w"), (false, true));
    assert_eq!(answers("rw"), (true, true));
    assert_eq!(answers("both"), (true, true));
    assert_eq!(answers("other"), (false, false));
    assert!(acl.may_subscribe(&who, "r"));
    assert!(!acl.may_subscribe(&who, "w"));
}

#[test]
fn deny_in_a_section_wins_wherever_it_is_written() {
    let acl = acl("user u\ntopic deny a/secret/#\ntopic a/#\ntopic deny a/late\n");
    let u = user("u", "c");
    assert!(acl.may_publish(&u, "a/open"));
    assert!(!acl.may_publish(&u, "a/secret/x"));
    assert!(!acl.may_receive(&u, "a/secret"));
    assert!(!acl.may_receive(&u, "a/late"));
}

#[test]
fn pattern_deny_wins_over_pattern_grant() {
    let acl = acl("pattern home/%u/#\npattern deny home/%u/locked\n");
    let u = user("u", "c");
    assert!(acl.may_publish(&u, "home/u/door"));
    assert!(!acl.may_publish(&u, "home/u/locked"));
    assert!(!acl.may_publish(&u, "home/v/door"));
}

/// Mosquitto 2.0 stops at a grant in the client's own section, so a deny
/// pattern cannot take back what a `user` section gives (seen with
/// acl_parity.py: PUBACK 0x00 and delivery).
#[test]
fn a_grant_in_the_section_is_final_even_against_a_deny_pattern() {
    let acl = acl("user admin\ntopic #\npattern deny home/%u/locked\n");
    assert!(acl.may_publish(&user("admin", "c"), "home/admin/locked"));
    assert!(!acl.may_publish(&user("other", "c"), "home/other/locked"));
}

#[test]
fn users_without_a_section_get_patterns_only() {
    let acl = acl("user alice\ntopic a/#\npattern read inbox/%u\n");
    let carol = user("carol", "c");
    assert!(acl.may_receive(&carol, "inbox/carol"));
    assert!(!acl.may_receive(&carol, "a/1"));
    assert!(acl.may_receive(&user("alice", "c"), "inbox/alice"));
}

#[test]
fn patterns_substitute_username_and_client_id_as_whole_levels() {
    let acl = acl("pattern readwrite %u/%c/#\n");
    let who = user("ann", "dev7");
    assert!(acl.may_publish(&who, "ann/dev7/temp"));
    assert!(acl.may_publish(&who, "ann/dev7"));
    assert!(!acl.may_publish(&who, "ann/dev8/temp"));
    assert!(!acl.may_publish(&who, "%u/%c/temp"));
}

#[test]
fn username_patterns_skip_anonymous_clients_but_client_id_patterns_apply() {
    let acl = acl("pattern users/%u/#\npattern clients/%c/#\n");
    let anon = anonymous("dev1");
    assert!(acl.may_publish(&anon, "clients/dev1/x"));
    assert!(!acl.may_publish(&anon, "users//x"));
    assert!(!acl.may_publish(&anon, "users/%u/x"));
}

/// CVE-2017-7650: a username of `#` would turn `users/%u/#` into `users/#/#`.
#[test]
fn wildcards_in_username_or_client_id_turn_patterns_off() {
    let acl = acl("user a+b\ntopic mine\npattern users/%u/#\npattern open\n");
    assert!(!acl.may_publish(&user("#", "c"), "users/x/y"));
    assert!(!acl.may_publish(&user("a+b", "c"), "open"));
    assert!(!acl.may_publish(&user("u", "c#"), "open"));
    assert!(acl.may_publish(&user("u", "c"), "open"));
    assert!(acl.may_publish(&user("a+b", "c"), "mine"));
}

/// Mosquitto 2.0 lets `/` through (2.0.11, seen with acl_parity.py).
#[test]
fn slash_in_a_substituted_value_spans_levels() {
    let acl = acl("pattern users/%u/#\npattern read clients/%c\n");
    assert!(acl.may_publish(&user("dave/x", "c"), "users/dave/x/y"));
    assert!(acl.may_receive(&anonymous("c/d"), "clients/c/d"));
    assert!(!acl.may_receive(&anonymous("c/d"), "clients/c"));
}

#[test]
fn dollar_topics_are_reached_only_by_entries_naming_them() {
    let acl = acl("topic #\ntopic +/broker\ntopic read $SYS/broker/#\n");
    let who = anonymous("c");
    assert!(acl.may_publish(&who, "a/b"));
    assert!(!acl.may_publish(&who, "$SYS/broker"));
    assert!(acl.may_receive(&who, "$SYS/broker/load"));
    assert!(!acl.may_receive(&who, "$SYS/other"));
    assert!(!acl.may_subscribe(&who, "$SYS/#"));
    assert!(acl.may_subscribe(&who, "$SYS/broker/+"));
}

#[test]
fn an_acl_without_entries_denies_everything() {
    for text in ["", "# only a comment\n\n", "user alice\n"] {
        let acl = acl(text);
        for who in [anonymous("c"), user("alice", "c")] {
            assert!(!acl.may_publish(&who, "a"), "{text:?}");
            assert!(!acl.may_receive(&who, "a"), "{text:?}");
            assert!(!acl.may_subscribe(&who, "#"), "{text:?}");
        }
    }
}

#[test]
fn layout_spaces_comments_and_repeated_sections_are_tolerated() {
    let text = "  # indented comment\r\n\r\nuser  bob smith  \r\n\
                topic read  room 101/#\r\n\
                user alice\ntopic a\nuser bob smith\ntopic\twrite\tb\n";
    let acl = acl(text);
    let bob = user("bob smith", "c");
    assert!(acl.may_receive(&bob, "room 101/door"));
    assert!(acl.may_publish(&bob, "b"));
    assert!(!acl.may_publish(&user("bob", "c"), "b"));
}

#[test]
fn parse_errors_name_the_line_and_the_problem() {
    use LineProblem::*;
    let bad = |filter: &str, reason| InvalidFilter {
        filter: filter.to_string(),
        reason,
    };
    let cases = [
        ("topic a\ntopic reed a/b\n", 2, UnknownAccess("reed".into())),
        ("topic foo bar\n", 1, UnknownAccess("foo".into())),
        ("# c\n\ntopic\n", 3, MissingTopic),
        ("topic read\n", 1, MissingTopic),
        ("pattern deny   \n", 1, MissingTopic),
        ("user\n", 1, MissingUsername),
        (
            "topic a/#/b\n",
            1,
            bad("a/#/b", TopicError::MisplacedWildcard),
        ),
        (
            "pattern read a+\n",
            1,
            bad("a+", TopicError::MisplacedWildcard),
        ),
        ("topic read a\0b\n", 1, bad("a\0b", TopicError::Nul)),
        ("pattern pre%c\n", 1, PartialSubstitution("pre%c".into())),
        ("user u\nusers v\n", 2, UnknownKeyword("users".into())),
    ];
    for (text, line, problem) in cases {
        assert_eq!(problem_at(text), (line, problem), "{text:?}");
    }
    let message = Acl::parse("x\n").map(|_| ()).unwrap_err().to_string();
    assert_eq!(
        message,
        "line 1: unknown keyword \"x\" (expected topic, pattern or user)"
    );
}

#[test]
fn load_names_the_file_in_its_errors() {
    let dir = std::env::temp_dir().join(format!("petrel-acl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.acl");
    let bad = dir.join("bad.acl");
    std::fs::write(&good, "user u\ntopic a/#\n").unwrap();
    std::fs::write(&bad, "user u\ntopic nope a/#\n").unwrap();

    let loaded = Acl::load(&good).unwrap();
    assert!(loaded.may_publish(&user("u", "c"), "a/b"));
    let message = Acl::load(&bad).unwrap_err().to_string();
    assert!(message.starts_with(&format!("{}: line 2: ", bad.display())));
    assert!(message.contains("\"nope\""), "{message}");
    let missing = dir.join("missing.acl");
    assert!(matches!(Acl::load(&missing), Err(AclError::Read { path, .. }) if path == missing));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn covers_truth_table() {
    let table = [
        ("a/#", "a/b/+", true),
        ("a/#", "a/#", true),
        ("a/#", "a", true),
        ("a/#", "a/b", true),
        ("a/+", "a/#", false),
        ("a/+", "a/b", true),
        ("a/+", "a/+", true),
        ("a/+", "a", false),
        ("+/x", "a/x", true),
        ("+/x", "+/x", true),
        ("+/x", "#", false),
        ("#", "a", true),
        ("#", "#", true),
        ("#", "+/+/#", true),
        ("+/#", "a", true),
        ("+/#", "#", true),
        ("+/+/#", "+/#", false),
        ("a/+/c", "a/b/+", false),
        ("a/b/+", "a/+/c", false),
        ("a/b", "a/b", true),
        ("a/b", "a/+", false),
        ("a/b", "a/b/c", false),
        ("a/b/c", "a/b", false),
        ("a/+/#", "a", false),
        ("#", "$SYS/#", false),
        ("+/broker", "$SYS/broker", false),
        ("$SYS/#", "$SYS/broker/+", true),
    ];
    for (granted, requested, expected) in table {
        assert_eq!(
            covers(granted, requested),
            expected,
            "{granted} covers {requested}"
        );
    }
}

#[test]
fn overlaps_truth_table() {
    let table = [
        ("a/secret/#", "a/#", true),
        ("a/secret/#", "#", true),
        ("a/secret/#", "a/+", true),
        ("a/secret/#", "a/public/#", false),
        ("a/+/c", "a/b/+", true),
        ("a/+", "a/b/c", false),
        ("a/#", "a", true),
        ("a/+", "a", false),
        ("+", "a/b", false),
        ("+/+", "/x", true),
        ("a/b", "a/b", true),
        ("a/b", "a/c", false),
        ("#", "$SYS/x", false),
        ("+/x", "$SYS/x", false),
        ("$SYS/+", "$SYS/#", true),
        ("#", "+", true),
    ];
    for (a, b, expected) in table {
        assert_eq!(overlaps(a, b), expected, "{a} overlaps {b}");
        assert_eq!(overlaps(b, a), expected, "{b} overlaps {a}");
    }
}

/// Every string of at most `depth` levels drawn from `levels`.
fn strings(levels: &[&str], depth: usize) -> Vec<String> {
    let mut all: Vec<String> = Vec::new();
    let mut last: Vec<String> = vec![String::new()];
    for _ in 0..depth {
        let next: Vec<String> = last
            .iter()
            .flat_map(|prefix| {
                levels.iter().map(move |level| match prefix.is_empty() {
                    true => level.to_string(),
                    false => format!("{prefix}/{level}"),
                })
            })
            .collect();
        all.extend(next.iter().cloned());
        last = next;
    }
    all
}

fn filters() -> Vec<String> {
    strings(&["a", "$x", "+", "#"], 3)
        .into_iter()
        .filter(|f| topic::validate_filter(f, ENTRY_LIMITS).is_ok())
        .collect()
}

/// Topics one level deeper than the filters, with a literal (`b`) that no
/// filter names, reach every way two such filters can differ.
fn topics() -> Vec<String> {
    strings(&["a", "b", "$x"], 4)
}

#[test]
fn covers_and_overlaps_agree_with_matching() {
    let (filters, topics) = (filters(), topics());
    for f in &filters {
        let set_f: Vec<bool> = topics.iter().map(|t| topic::matches(f, t)).collect();
        for g in &filters {
            let set_g = topics.iter().map(|t| topic::matches(g, t));
            let (mut subset, mut shared) = (true, false);
            for (in_f, in_g) in set_f.iter().zip(set_g) {
                subset &= !in_f || in_g;
                shared |= *in_f && in_g;
            }
            assert_eq!(covers(g, f), subset, "{g} covers {f}");
            assert_eq!(overlaps(f, g), shared, "{f} overlaps {g}");
        }
    }
}

#[test]
fn subscribe_is_granted_only_within_readable_filters() {
    let acl = acl("user alice\n\
         topic read a/#\ntopic write a/in\ntopic deny a/secret/#\n\
         topic readwrite shared/+/x\n\
         pattern read users/%u/#\n");
    let alice = user("alice", "c");
    assert!(acl.may_subscribe(&alice, "a/public/+"));
    assert!(acl.may_subscribe(&alice, "a"));
    assert!(acl.may_subscribe(&alice, "shared/q/x"));
    assert!(acl.may_subscribe(&alice, "users/alice/#"));
    assert!(!acl.may_subscribe(&alice, "#"));
    assert!(!acl.may_subscribe(&alice, "a/#"));
    assert!(!acl.may_subscribe(&alice, "a/+/y"));
    assert!(!acl.may_subscribe(&alice, "shared/#"));
    assert!(!acl.may_subscribe(&alice, "users/bob/#"));
}

/// The promise behind checking SUBSCRIBE: a granted filter never matches a
/// topic that delivery would then refuse.
#[test]
fn a_granted_subscription_never_reaches_an_unreadable_topic() {
    let acl = acl("topic read a/#\ntopic deny a/$x\n\
         user a\ntopic read +/a/#\ntopic deny +/a/a\ntopic read $x/#\n\
         pattern read %u/#\npattern deny %c/+\npattern read $x/%c\n");
    let (filters, topics) = (filters(), topics());
    let clients = [
        anonymous("a"),
        anonymous("b"),
        user("a", "b"),
        user("b", "a"),
    ];
    let mut granted = 0;
    for who in &clients {
        for filter in filters.iter().filter(|f| acl.may_subscribe(who, f)) {
            granted += 1;
            for t in topics.iter().filter(|t| topic::matches(filter, t)) {
                assert!(acl.may_receive(who, t), "{who} {filter} {t}");
            }
        }
    }
    assert!(granted > 10, "too few grants ({granted}) to mean anything");
}
