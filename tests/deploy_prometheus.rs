//! The monitoring deliverables against the real tools and a real sipedge:
//! `promtool check rules` / `test rules` / `check config` on deploy/prometheus, the Grafana
//! dashboard's queries parsed by promtool, and every metric name and label value that the
//! dashboard, the alerts, the recording rules, the rule tests and the prometheus-adapter rule
//! use present on a live scrape of a running sipedge.

mod deploy_support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use deploy_support::{
    Sipedge, TempDir, free_ports, need, parse_exposition, repo_path, run_with_timeout,
};

const PROMTOOL_INSTALL: &str = "apt-get install prometheus (it ships promtool)";

/// Labels whose values depend on the deployment (backend URIs, shard numbers): only their
/// presence is checked.
const DEPLOYMENT_LABELS: [&str; 2] = ["backend", "shard"];

/// Labels that Prometheus or its service discovery attach, not sipedge.
const TARGET_LABELS: [&str; 5] = ["instance", "job", "namespace", "pod", "node"];

fn promtool(args: &[&str], cwd: &Path) -> (bool, String) {
    let promtool = need("promtool", PROMTOOL_INSTALL);
    let out = run_with_timeout(
        Command::new(promtool).args(args).current_dir(cwd),
        Duration::from_secs(60),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn promtool_checks_rules_and_alerts() {
    let dir = repo_path("deploy/prometheus");
    let (ok, text) = promtool(&["check", "rules", "rules.yml", "alerts.yml"], &dir);
    assert!(ok, "promtool check rules failed:\n{text}");
    // Both files hold rules (an empty group list would pass the check).
    assert!(text.contains("SUCCESS: 7 rules found"), "{text}");
    assert!(text.contains("SUCCESS: 12 rules found"), "{text}");
}

#[test]
fn promtool_unit_tests_of_the_alerts_pass() {
    let dir = repo_path("deploy/prometheus");
    let (ok, text) = promtool(&["test", "rules", "alerts_test.yml"], &dir);
    assert!(ok, "promtool test rules failed:\n{text}");
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn promtool_checks_the_scrape_config() {
    let dir = repo_path("deploy/prometheus");
    let (ok, text) = promtool(&["check", "config", "prometheus.yml"], &dir);
    assert!(ok, "promtool check config failed:\n{text}");
}

#[test]
fn dashboard_json_is_the_generator_output() {
    let python = need("python3", "apt-get install python3");
    let out = run_with_timeout(
        Command::new(python).arg(repo_path("deploy/grafana/generate.py")),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = String::from_utf8_lossy(&out.stdout);
    assert!(
        generated.trim_end() == read("deploy/grafana/sipedge.json").trim_end(),
        "deploy/grafana/sipedge.json was edited by hand: change generate.py and run \
         python3 deploy/grafana/generate.py > deploy/grafana/sipedge.json"
    );
}

#[test]
fn dashboard_queries_parse_as_promql() {
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 30, "only {} dashboard queries", exprs.len());
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (panel, expr)) in exprs.iter().enumerate() {
        let expr = grafana_to_promql(expr);
        rules.push_str(&format!(
            "      # {panel}\n      - record: dashboard:query_{i}\n        expr: '{}'\n",
            expr.replace('\'', "''")
        ));
    }
    let tmp = TempDir::new("dashboard-rules");
    tmp.write("dashboard.yml", &rules);
    let (ok, text) = promtool(&["check", "rules", "dashboard.yml"], tmp.path());
    assert!(
        ok,
        "a dashboard query is not valid PromQL:\n{text}\n{rules}"
    );
}

#[test]
fn every_referenced_metric_exists_on_a_live_scrape() {
    // A live sipedge on free loopback ports. Its backend port has no listener: the scrape
    // must carry every series (zeros included) whatever the backends do.
    let [sip, admin, backend] = free_ports(3)[..] else {
        unreachable!()
    };
    let tmp = TempDir::new("live-scrape");
    let config = tmp.write(
        "sipedge.toml",
        &format!(
            "listen = [\"udp:127.0.0.1:{sip}\", \"tcp:127.0.0.1:{sip}\"]\n\
             metrics = \"127.0.0.1:{admin}\"\n\
             shards = 2\n\
             backends = [\"sip:127.0.0.1:{backend}\"]\n"
        ),
    );
    let admin_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, admin));
    let mut node = Sipedge::start(&config, admin_addr, &[], tmp.path().join("sipedge.log"));
    node.wait_admin("/metrics", Duration::from_secs(20));
    let scrape = node.scrape();
    check_references_against(&scrape);
}

#[test]
fn every_referenced_metric_exists_in_the_library_exposition() {
    // The same comparison against the exposition the metrics module encodes (no process):
    // catches a renamed metric even where the binary cannot run.
    let metrics = Arc::new(sipedge::metrics::Metrics::new(
        2,
        &["sip:127.0.0.1:5070".to_owned()],
    ));
    check_references_against(&metrics.encode_prometheus());
}

/// Fails the test unless every metric, label and literal label value that the deliverables'
/// PromQL references is on `scrape`.
fn check_references_against(scrape: &str) {
    // Every PromQL expression the deliverables contain, with where it comes from.
    let mut exprs: Vec<(String, String)> = dashboard_exprs()
        .into_iter()
        .map(|(panel, e)| (format!("dashboard panel {panel:?}"), grafana_to_promql(&e)))
        .collect();
    let rules_yml = read("deploy/prometheus/rules.yml");
    let alerts_yml = read("deploy/prometheus/alerts.yml");
    for (file, text) in [("rules.yml", &rules_yml), ("alerts.yml", &alerts_yml)] {
        for expr in yaml_values(text, "expr") {
            exprs.push((format!("{file} expr"), expr));
        }
    }
    for series in yaml_values(&read("deploy/prometheus/alerts_test.yml"), "series") {
        exprs.push(("alerts_test.yml input series".into(), series));
    }
    let adapter = read("deploy/kubernetes/prometheus-adapter-config.yaml");
    for series in yaml_values(&adapter, "seriesQuery") {
        exprs.push(("prometheus-adapter seriesQuery".into(), series));
    }
    assert!(exprs.len() > 50, "found only {} expressions", exprs.len());
    let recorded: BTreeSet<String> = yaml_values(&rules_yml, "record").into_iter().collect();
    assert_eq!(recorded.len(), 7, "recording rules: {recorded:?}");

    // name -> label -> values seen.
    let mut live: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for sample in parse_exposition(scrape) {
        let entry = live.entry(sample.name).or_default();
        for (k, v) in sample.labels {
            entry.entry(k).or_default().insert(v);
        }
    }
    assert!(
        live.len() > 20,
        "scrape has only {} metric names:\n{scrape}",
        live.len()
    );

    let mut problems = Vec::new();
    let mut checked = BTreeSet::new();
    for (origin, expr) in &exprs {
        let parsed = scan_promql(expr);
        let mut expr_labels: BTreeSet<String> = BTreeSet::new();
        for selector in &parsed.selectors {
            if selector.name == "up" || recorded.contains(&selector.name) {
                continue;
            }
            let Some(labels) = live.get(&selector.name) else {
                problems.push(format!(
                    "{origin}: metric {} is not on the scrape",
                    selector.name
                ));
                continue;
            };
            checked.insert(selector.name.clone());
            expr_labels.extend(labels.keys().cloned());
            for m in &selector.matchers {
                if TARGET_LABELS.contains(&m.label.as_str()) {
                    continue;
                }
                let Some(values) = labels.get(&m.label) else {
                    problems.push(format!(
                        "{origin}: {} has no label {:?} (labels: {:?})",
                        selector.name,
                        m.label,
                        labels.keys().collect::<Vec<_>>()
                    ));
                    continue;
                };
                if DEPLOYMENT_LABELS.contains(&m.label.as_str()) {
                    continue;
                }
                for wanted in m.literal_values() {
                    if !values.contains(&wanted) {
                        problems.push(format!(
                            "{origin}: {}{{{}}} never has the value {wanted:?} (values: {values:?})",
                            selector.name, m.label
                        ));
                    }
                }
            }
        }
        let uses_recorded = parsed.selectors.iter().any(|s| recorded.contains(&s.name));
        for label in &parsed.grouping_labels {
            if !TARGET_LABELS.contains(&label.as_str())
                && !expr_labels.contains(label)
                && !uses_recorded
            {
                problems.push(format!(
                    "{origin}: groups by {label:?}, which no metric of {expr:?} has"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}\n\nscrape:\n{scrape}",
        problems.len(),
        problems.join("\n")
    );
    // The comparison covered the families the dashboard is about.
    for family in [
        "sipedge_requests_received_total",
        "sipedge_responses_sent_total",
        "sipedge_drops_total",
        "sipedge_errors_total",
        "sipedge_backend_up",
        "sipedge_backend_probe_rtt_seconds",
        "sipedge_shard_messages_total",
        "sipedge_shard_handoffs_sent_total",
        "sipedge_shard_queue_depth",
        "sipedge_blacklist_entries",
        "sipedge_ready",
        "sipedge_draining",
    ] {
        assert!(checked.contains(family), "{family} is referenced nowhere");
    }
}

#[test]
fn promql_scanner_finds_names_matchers_and_grouping() {
    let p = scan_promql(
        r#"sum by (method) (rate(sipedge_requests_received_total{instance=~".*",method="INVITE"}[5m])) / on (instance) group_left max without (shard) (x:y:rate1m) > 1e-9 unless up offset 5m"#,
    );
    let names: Vec<&str> = p.selectors.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["sipedge_requests_received_total", "x:y:rate1m", "up"]
    );
    let m = &p.selectors[0].matchers;
    assert_eq!(m.len(), 2);
    assert_eq!(
        (m[1].label.as_str(), m[1].op.as_str(), m[1].value.as_str()),
        ("method", "=", "INVITE")
    );
    assert_eq!(p.grouping_labels, ["method", "instance", "shard"]);
    let alt = Matcher {
        label: "class".into(),
        op: "=~".into(),
        value: "5xx|6xx".into(),
    };
    assert_eq!(alt.literal_values(), ["5xx", "6xx"]);
    let wild = Matcher {
        label: "instance".into(),
        op: "=~".into(),
        value: ".*".into(),
    };
    assert!(wild.literal_values().is_empty());
}

fn read(relative: &str) -> String {
    let path = repo_path(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// (panel title, expr) of every query of the Grafana dashboard, panels in rows included.
fn dashboard_exprs() -> Vec<(String, String)> {
    let json: serde_json::Value = serde_json::from_str(&read("deploy/grafana/sipedge.json"))
        .unwrap_or_else(|e| panic!("deploy/grafana/sipedge.json is not JSON: {e}"));
    let mut out = Vec::new();
    fn walk(panels: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((title.clone(), expr.to_owned()));
                }
            }
            walk(&panel["panels"], out);
        }
    }
    walk(&json["panels"], &mut out);
    for var in json["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(q) = var["query"]["query"].as_str() {
            // label_values(metric, label) names a metric too.
            if let Some(inner) = q
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
            {
                if let Some((metric, label)) = inner.split_once(',') {
                    out.push((
                        format!("variable {}", var["name"]),
                        format!("count by ({}) ({metric})", label.trim()),
                    ));
                }
            }
        }
    }
    out
}

/// Grafana's variables replaced by values Prometheus accepts.
fn grafana_to_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$instance", ".*")
}

/// The values of every `key:` in a YAML file: plain scalars, quoted scalars and `|` blocks.
/// (The deploy files are plain YAML; promtool and kubernetes-validate check their structure.)
fn yaml_values(text: &str, key: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start().trim_start_matches("- ");
        let indent = line.len() - line.trim_start().len();
        if let Some(rest) = trimmed.strip_prefix(key).and_then(|r| r.strip_prefix(':')) {
            let rest = rest.trim();
            if rest == "|" || rest == ">" || rest == "|-" || rest == ">-" {
                let mut block = Vec::new();
                i += 1;
                while i < lines.len() {
                    let l = lines[i];
                    let li = l.len() - l.trim_start().len();
                    if !l.trim().is_empty() && li <= indent {
                        break;
                    }
                    block.push(l.trim());
                    i += 1;
                }
                out.push(block.join("\n"));
                continue;
            }
            let unquoted = if (rest.starts_with('\'') && rest.ends_with('\''))
                || (rest.starts_with('"') && rest.ends_with('"'))
            {
                rest[1..rest.len() - 1].replace("''", "'")
            } else {
                rest.to_owned()
            };
            out.push(unquoted);
        }
        i += 1;
    }
    out
}

/// A label matcher of a selector.
#[derive(Debug)]
struct Matcher {
    label: String,
    op: String,
    value: String,
}

impl Matcher {
    /// The label values the matcher names literally: the value of `=`/`!=`, the alternatives
    /// of a regex made only of `a|b|c` words; none for other regexes.
    fn literal_values(&self) -> Vec<String> {
        let plain =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        match self.op.as_str() {
            "=" | "!=" if !self.value.is_empty() => vec![self.value.clone()],
            "=~" | "!~" if self.value.split('|').all(plain) => {
                self.value.split('|').map(str::to_owned).collect()
            }
            _ => Vec::new(),
        }
    }
}

/// A metric selector.
#[derive(Debug)]
struct Selector {
    name: String,
    matchers: Vec<Matcher>,
}

/// What an expression references.
#[derive(Debug, Default)]
struct Scanned {
    selectors: Vec<Selector>,
    grouping_labels: Vec<String>,
}

const KEYWORDS: [&str; 9] = [
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "group_left",
    "group_right",
    "atan2",
    "inf",
];
/// Aggregation operators, which may be followed by `by (...)` before their `(`.
const AGGREGATIONS: [&str; 12] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// A small PromQL scanner: metric names (identifiers that are not functions, keywords or
/// label lists), their matchers, and the labels of `by`/`without`/`on`/`ignoring` lists.
fn scan_promql(expr: &str) -> Scanned {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Scanned::default();
    let mut i = 0;
    let mut after_offset = false;
    let is_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let is_part = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let skip_ws = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric()
                    || chars[i] == '.'
                    || ((chars[i] == '-' || chars[i] == '+') && matches!(chars[i - 1], 'e' | 'E')))
            {
                i += 1;
            }
            after_offset = false;
        } else if c == '{' {
            // A selector with no name in front: {__name__=...}; not used in the deploy files.
            let (_, end) = parse_matchers(&chars, i);
            i = end;
        } else if is_start(c) {
            let start = i;
            while i < chars.len() && is_part(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = skip_ws(i);
            let lower = word.to_ascii_lowercase();
            if after_offset {
                after_offset = false;
                continue;
            }
            if LABEL_LISTS.contains(&lower.as_str()) && chars.get(next) == Some(&'(') {
                let close = chars[next..]
                    .iter()
                    .position(|&c| c == ')')
                    .map_or(chars.len(), |p| next + p);
                let list: String = chars[next + 1..close].iter().collect();
                out.grouping_labels.extend(
                    list.split(',')
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_owned),
                );
                i = close + 1;
            } else if lower == "offset" {
                after_offset = true;
            } else if KEYWORDS.contains(&lower.as_str())
                || LABEL_LISTS.contains(&lower.as_str())
                || AGGREGATIONS.contains(&lower.as_str())
            {
            } else if chars.get(next) == Some(&'(') {
                // A function or aggregation.
            } else {
                let mut selector = Selector {
                    name: word,
                    matchers: Vec::new(),
                };
                if chars.get(next) == Some(&'{') {
                    let (matchers, end) = parse_matchers(&chars, next);
                    selector.matchers = matchers;
                    i = end;
                }
                out.selectors.push(selector);
            }
        } else {
            i += 1;
        }
    }
    out
}

fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// Parses `{a="x", b=~"y"}` starting at the `{`; returns the matchers and the index after `}`.
fn parse_matchers(chars: &[char], open: usize) -> (Vec<Matcher>, usize) {
    let mut matchers = Vec::new();
    let mut i = open + 1;
    loop {
        while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ',') {
            i += 1;
        }
        if i >= chars.len() || chars[i] == '}' {
            return (matchers, i + 1);
        }
        let start = i;
        while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
            i += 1;
        }
        let label: String = chars[start..i].iter().collect();
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let op_start = i;
        while i < chars.len() && matches!(chars[i], '=' | '!' | '~') {
            i += 1;
        }
        let op: String = chars[op_start..i].iter().collect();
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let end = skip_string(chars, i);
        let value: String = chars[(i + 1).min(end)..end.saturating_sub(1).max(i + 1)]
            .iter()
            .collect();
        i = end;
        if label.is_empty() || op.is_empty() {
            return (matchers, i);
        }
        matchers.push(Matcher { label, op, value });
    }
}
