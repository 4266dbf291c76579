//! The conformance catalogue: every normative statement `[MQTT-x.x.x-y]` of
//! MQTT 3.1.1 and MQTT 5.0, one row each in `conformance/mqtt-3.1.1.tsv` and
//! `conformance/mqtt-5.0.tsv`, with the tests that prove it or the reason it
//! does not apply (see `conformance/README.md`).
//!
//! These tests keep the catalogue honest: rows are well formed, ids are
//! unique, and every cited test exists and is a test. The coverage report is
//! printed by `cargo test --test conformance -- --nocapture`, and
//! `every_server_statement_is_tested_or_justified` fails as soon as a
//! statement binding the server has neither a test nor a reason. The cited
//! tests themselves run in the same `cargo test`, so one failing fails CI.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;

/// The catalogues: a name for the report and the file, relative to the
/// crate root.
const CATALOGUES: [(&str, &str); 2] = [
    ("MQTT 3.1.1", "conformance/mqtt-3.1.1.tsv"),
    ("MQTT 5.0", "conformance/mqtt-5.0.tsv"),
];

const HEADER: &str = "id\tsection\tbinds\tstatement\ttests\tnote";

/// Whom a statement binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Binds {
    Server,
    Client,
    Both,
}

impl Binds {
    fn parse(text: &str) -> Option<Binds> {
        match text {
            "S" => Some(Binds::Server),
            "C" => Some(Binds::Client),
            "S+C" => Some(Binds::Both),
            _ => None,
        }
    }

    fn binds_server(self) -> bool {
        self != Binds::Client
    }
}

/// What the `tests` column says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tests {
    /// Nothing yet: a gap.
    None,
    /// `n/a`: the note says why.
    NotApplicable,
    /// One or more test references.
    Cited(Vec<TestRef>),
}

/// `tests/file.rs::name` or `src/file.rs::tests::name`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TestRef {
    text: String,
    file: String,
    modules: Vec<String>,
    name: String,
}

impl TestRef {
    fn parse(text: &str) -> Result<TestRef, String> {
        let mut parts = text.split("::");
        let file = parts.next().unwrap_or_default();
        let mut path: Vec<&str> = parts.collect();
        let Some(name) = path.pop() else {
            return Err(format!("`{text}` is not `file::test_name`"));
        };
        if !(file.starts_with("tests/") || file.starts_with("src/"))
            || !file.ends_with(".rs")
            || file.contains("..")
        {
            return Err(format!(
                "`{text}`: the file must be a .rs file under tests/ or src/"
            ));
        }
        if let Some(bad) = path.iter().chain([&name]).find(|part| !is_identifier(part)) {
            return Err(format!("`{text}`: `{bad}` is not a Rust identifier"));
        }
        Ok(TestRef {
            text: text.to_string(),
            file: file.to_string(),
            modules: path.iter().map(|m| m.to_string()).collect(),
            name: name.to_string(),
        })
    }
}

fn is_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// One catalogue row.
#[derive(Debug, Clone)]
struct Row {
    line: usize,
    id: String,
    section: String,
    binds: Binds,
    tests: Tests,
    note: String,
}

impl Row {
    fn coverage(&self) -> Coverage {
        match (&self.tests, self.binds) {
            (_, Binds::Client) => Coverage::Client,
            (Tests::Cited(_), _) => Coverage::Tested,
            (Tests::NotApplicable, _) if !self.note.trim().is_empty() => Coverage::NotApplicable,
            _ => Coverage::Missing,
        }
    }
}

/// Where a statement stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coverage {
    /// Binds the client only: not applicable, "binds the Client".
    Client,
    Tested,
    /// Binds the server, not applicable for the reason in the note.
    NotApplicable,
    /// Binds the server and has neither tests nor a reason.
    Missing,
}

/// A loaded catalogue and the problems found while reading it.
struct Catalogue {
    name: &'static str,
    path: &'static str,
    rows: Vec<Row>,
    problems: Vec<String>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The section an id names (`MQTT-3.1.2-4` -> `3.1.2`), if it is well
/// formed: `MQTT-`, a section of two or three dot-separated numbers, `-`,
/// and a statement number, with no leading zeros.
fn section_of(id: &str) -> Option<&str> {
    let rest = id.strip_prefix("MQTT-")?;
    let (section, counter) = rest.rsplit_once('-')?;
    let number = |text: &str| {
        !text.is_empty()
            && text.chars().all(|c| c.is_ascii_digit())
            && (text == "0" || !text.starts_with('0'))
    };
    let parts: Vec<&str> = section.split('.').collect();
    let well_formed = (2..=3).contains(&parts.len())
        && parts.iter().all(|part| number(part))
        && number(counter)
        && counter != "0";
    well_formed.then_some(section)
}

fn load(name: &'static str, path: &'static str) -> Catalogue {
    let mut catalogue = Catalogue {
        name,
        path,
        rows: Vec::new(),
        problems: Vec::new(),
    };
    let text = match fs::read_to_string(root().join(path)) {
        Ok(text) => text,
        Err(error) => {
            catalogue.problems.push(format!("{path}: {error}"));
            return catalogue;
        }
    };
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, header)) if header == HEADER => {}
        other => catalogue.problems.push(format!(
            "{path}:1: the header must be `{}`, found {:?}",
            HEADER.replace('\t', "<TAB>"),
            other.map(|(_, line)| line)
        )),
    }
    let mut first_line: HashMap<String, usize> = HashMap::new();
    for (index, line) in lines {
        let number = index + 1;
        let problem = |what: String| format!("{path}:{number}: {what}");
        if line.trim().is_empty() {
            catalogue
                .problems
                .push(problem("empty line inside the table".into()));
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let [id, section, binds, statement, tests, note] = fields[..] else {
            catalogue.problems.push(problem(format!(
                "{} tab-separated fields, expected 6",
                fields.len()
            )));
            continue;
        };
        match section_of(id) {
            None => catalogue
                .problems
                .push(problem(format!("`{id}` is not a well-formed statement id"))),
            Some(from_id) if from_id != section => catalogue.problems.push(problem(format!(
                "{id}: section `{section}` differs from the id's `{from_id}`"
            ))),
            Some(_) => {}
        }
        if let Some(first) = first_line.insert(id.to_string(), number) {
            catalogue.problems.push(problem(format!(
                "{id} appears again (first on line {first})"
            )));
        }
        let Some(binds) = Binds::parse(binds) else {
            catalogue.problems.push(problem(format!(
                "{id}: binds is `{binds}`, expected S, C or S+C"
            )));
            continue;
        };
        if statement.trim().is_empty() {
            catalogue
                .problems
                .push(problem(format!("{id}: the statement is empty")));
        }
        let tests = match tests {
            "" => Tests::None,
            "n/a" => {
                if note.trim().is_empty() && binds.binds_server() {
                    catalogue
                        .problems
                        .push(problem(format!("{id}: `n/a` needs a reason in the note")));
                }
                Tests::NotApplicable
            }
            list => {
                let mut refs = Vec::new();
                for text in list.split(',') {
                    match TestRef::parse(text) {
                        Ok(test) => refs.push(test),
                        Err(error) => catalogue.problems.push(problem(format!("{id}: {error}"))),
                    }
                }
                Tests::Cited(refs)
            }
        };
        catalogue.rows.push(Row {
            line: number,
            id: id.to_string(),
            section: section.to_string(),
            binds,
            tests,
            note: note.to_string(),
        });
    }
    if catalogue.rows.is_empty() {
        catalogue.problems.push(format!("{path}: no statements"));
    }
    catalogue
}

fn catalogues() -> Vec<Catalogue> {
    CATALOGUES
        .iter()
        .map(|&(name, path)| load(name, path))
        .collect()
}

/// Why `test` cannot be found, if it cannot: the file must exist, declare
/// every module on the path, and hold `fn name(` under a test attribute.
fn missing_test(test: &TestRef, sources: &mut HashMap<String, Option<String>>) -> Option<String> {
    let source = sources
        .entry(test.file.clone())
        .or_insert_with(|| fs::read_to_string(root().join(&test.file)).ok());
    let Some(source) = source.as_deref() else {
        return Some(format!("{} does not exist", test.file));
    };
    if let Some(module) = test
        .modules
        .iter()
        .find(|module| !source.contains(&format!("mod {module} ")))
    {
        return Some(format!("{} has no `mod {module}`", test.file));
    }
    let signature = format!("fn {}(", test.name);
    let lines: Vec<&str> = source.lines().collect();
    let Some(at) = lines.iter().position(|line| line.contains(&signature)) else {
        return Some(format!("{} has no `{signature}`", test.file));
    };
    let is_test = lines[..at]
        .iter()
        .rev()
        .map(|line| line.trim())
        .take_while(|line| line.starts_with("#[") || line.starts_with("//"))
        .any(|line| line.starts_with("#[test]") || line.starts_with("#[tokio::test"));
    if !is_test {
        return Some(format!(
            "{}: `{}` is not marked #[test] or #[tokio::test]",
            test.file, test.name
        ));
    }
    None
}

/// Orders sections numerically: 3.10.1 after 3.9.3.
fn section_key(section: &str) -> Vec<u32> {
    section
        .split('.')
        .map(|part| part.parse().unwrap_or(u32::MAX))
        .collect()
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    statements: usize,
    server: usize,
    tested: usize,
    not_applicable: usize,
    missing: usize,
}

impl Counts {
    fn add(&mut self, coverage: Coverage) {
        self.statements += 1;
        match coverage {
            Coverage::Client => {}
            Coverage::Tested => self.tested += 1,
            Coverage::NotApplicable => self.not_applicable += 1,
            Coverage::Missing => self.missing += 1,
        }
        if coverage != Coverage::Client {
            self.server += 1;
        }
    }
}

fn report(catalogue: &Catalogue) -> String {
    let mut total = Counts::default();
    let mut sections: BTreeMap<Vec<u32>, (String, Counts, Vec<&str>)> = BTreeMap::new();
    for row in &catalogue.rows {
        let coverage = row.coverage();
        total.add(coverage);
        let entry = sections
            .entry(section_key(&row.section))
            .or_insert_with(|| (row.section.clone(), Counts::default(), Vec::new()));
        entry.1.add(coverage);
        if coverage == Coverage::Missing {
            entry.2.push(&row.id);
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} ({}): {} statements, {} bind the server: {} tested, {} n/a, {} missing",
        catalogue.name,
        catalogue.path,
        total.statements,
        total.server,
        total.tested,
        total.not_applicable,
        total.missing
    );
    let _ = writeln!(
        out,
        "  {:<9} {:>6} {:>6} {:>6} {:>4} {:>7}  missing ids",
        "section", "total", "server", "tested", "n/a", "missing"
    );
    for (section, counts, missing) in sections.values() {
        let _ = writeln!(
            out,
            "  {:<9} {:>6} {:>6} {:>6} {:>4} {:>7}  {}",
            section,
            counts.statements,
            counts.server,
            counts.tested,
            counts.not_applicable,
            counts.missing,
            missing.join(" ")
        );
    }
    out
}

#[test]
fn catalogue_rows_are_well_formed_and_ids_unique() {
    let problems: Vec<String> = catalogues()
        .into_iter()
        .flat_map(|catalogue| catalogue.problems)
        .collect();
    assert!(
        problems.is_empty(),
        "{} problem(s) in the conformance catalogue:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn every_referenced_test_exists() {
    let mut sources = HashMap::new();
    let mut problems = Vec::new();
    for catalogue in catalogues() {
        for row in &catalogue.rows {
            let Tests::Cited(tests) = &row.tests else {
                continue;
            };
            for test in tests {
                if let Some(why) = missing_test(test, &mut sources) {
                    problems.push(format!(
                        "{}:{}: {} cites `{}`: {why}",
                        catalogue.path, row.line, row.id, test.text
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} cited test(s) not found:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Prints the coverage per specification and per section; see it with
/// `cargo test --test conformance -- --nocapture`.
#[test]
fn coverage_report() {
    for catalogue in catalogues() {
        println!("{}", report(&catalogue));
    }
}

#[test]
fn every_server_statement_is_tested_or_justified() {
    let mut gaps = Vec::new();
    for catalogue in catalogues() {
        for row in &catalogue.rows {
            if row.coverage() == Coverage::Missing {
                gaps.push(format!("{}:{}: {}", catalogue.path, row.line, row.id));
            }
        }
    }
    assert!(
        gaps.is_empty(),
        "{} statement(s) binding the server have neither a test nor an n/a reason:\n{}",
        gaps.len(),
        gaps.join("\n")
    );
}

#[test]
fn ids_and_references_are_checked_as_documented() {
    assert_eq!(section_of("MQTT-3.1.2-4"), Some("3.1.2"));
    assert_eq!(section_of("MQTT-3.10.4-6"), Some("3.10.4"));
    assert_eq!(section_of("MQTT-4.2-1"), Some("4.2"));
    for bad in [
        "MQTT-3.1.2.7",
        "MQTT-3-8.3-4",
        "MQTT-3.1.2-0",
        "MQTT-03.1.2-1",
        "MQTT-1-1",
        "mqtt-3.1.2-1",
    ] {
        assert_eq!(section_of(bad), None, "{bad}");
    }
    let unit = TestRef::parse("src/topic.rs::tests::plus_matches_one_level").unwrap();
    assert_eq!(
        (
            unit.file.as_str(),
            unit.modules.as_slice(),
            unit.name.as_str()
        ),
        (
            "src/topic.rs",
            &["tests".to_string()][..],
            "plus_matches_one_level"
        )
    );
    assert!(TestRef::parse("tests/malformed.rs").is_err());
    assert!(TestRef::parse("../x.rs::y").is_err());
    assert!(TestRef::parse("tests/a.rs::not a name").is_err());
    let mut sources = HashMap::new();
    let this_file = |name: &str| TestRef::parse(&format!("tests/conformance.rs::{name}")).unwrap();
    assert_eq!(
        missing_test(&this_file("coverage_report"), &mut sources),
        None
    );
    assert!(missing_test(&this_file("section_key"), &mut sources).is_some());
    assert!(missing_test(&this_file("no_such_test"), &mut sources).is_some());
    let coverage = |binds, tests, note: &str| {
        Row {
            line: 2,
            id: "MQTT-1.5.4-1".into(),
            section: "1.5.4".into(),
            binds,
            tests,
            note: note.into(),
        }
        .coverage()
    };
    assert_eq!(coverage(Binds::Client, Tests::None, ""), Coverage::Client);
    assert_eq!(coverage(Binds::Server, Tests::None, ""), Coverage::Missing);
    assert_eq!(
        coverage(Binds::Both, Tests::NotApplicable, ""),
        Coverage::Missing
    );
    assert_eq!(
        coverage(Binds::Server, Tests::NotApplicable, "why"),
        Coverage::NotApplicable
    );
    assert_eq!(
        coverage(Binds::Both, Tests::Cited(Vec::new()), ""),
        Coverage::Tested
    );
}
