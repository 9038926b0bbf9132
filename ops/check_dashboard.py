#!/usr/bin/env python3
"""Checks the Grafana dashboard and the alert rules against the metric contract.

    python3 ops/check_dashboard.py [dashboard.json ...] [--rules alerts.yml ...]

Defaults: ops/dashboards/*.json and ops/prometheus/alerts.yml, contract ops/METRICS.md.
For every PromQL expression (panel targets, template variables, annotations, alert rules):
  - every metric name is in the contract (histograms: their _bucket, _sum and _count
    series; the alert rules may also use Prometheus's own `up`);
  - every label in a selector or in by/without/on/ignoring is one the metrics of that
    expression carry (the contract's labels, `node` everywhere, `le` for histograms);
  - rate/irate/increase only on counters and histogram series, histogram_quantile only
    over _bucket series;
  - every other identifier is a PromQL function, aggregation or keyword.
For the dashboard also: it parses, schemaVersion >= 36, the ${DS_PROMETHEUS} input is
used by every panel and target, a `node` variable from label_values(softswitch_up, node),
unique panel ids. Exit code 0 when all is well, 1 with one line per problem otherwise.
"""

import glob
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg_over_time", "ceil", "changes", "clamp",
    "clamp_max", "clamp_min", "count_over_time", "day_of_month", "day_of_week",
    "day_of_year", "days_in_month", "delta", "deriv", "exp", "floor", "histogram_count",
    "histogram_fraction", "histogram_quantile", "histogram_sum", "holt_winters", "hour",
    "idelta", "increase", "irate", "label_join", "label_replace", "last_over_time", "ln",
    "log10", "log2", "max_over_time", "min_over_time", "minute", "month",
    "predict_linear", "present_over_time", "quantile_over_time", "rate", "resets",
    "round", "scalar", "sgn", "sort", "sort_desc", "sqrt", "stddev_over_time",
    "stdvar_over_time", "sum_over_time", "time", "timestamp", "vector", "year",
}
AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile",
}
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
            "group_right", "offset", "bool", "inf", "nan", "atan2"}
# Prometheus's own series, allowed in the alert rules only (scrape health).
PROMETHEUS_SERIES = {"up": {"job", "instance"}}


def load_contract(path):
    """name -> (type, set of labels) from the markdown table."""
    contract = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) < 4 or not cells[0].startswith("softswitch_"):
                continue
            name, kind, labels = cells[0], cells[1], cells[2]
            labs = {l.strip() for l in labels.split(",") if l.strip()}
            labs.add("node")
            if name == "softswitch_up":
                labs.add("version")
            contract[name] = (kind, labs)
    if not contract:
        raise SystemExit(f"{path}: no metric found in the table")
    return contract


def series_of(contract, extra):
    """Every series name a query may select -> (type of the metric, labels)."""
    out = {}
    for name, (kind, labs) in contract.items():
        if kind == "histogram":
            out[name + "_bucket"] = ("histogram_bucket", labs | {"le"})
            out[name + "_sum"] = ("counter", set(labs))
            out[name + "_count"] = ("counter", set(labs))
        else:
            out[name] = (kind, labs)
    for name, labs in extra.items():
        out[name] = ("gauge", set(labs))
    return out


IDENT = re.compile(r"(?<![\w.:$])([A-Za-z_:][\w:]*)")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
RANGE = re.compile(r"\[[^\]]*\]")
MATCHERS = re.compile(r"\{([^}]*)\}")
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
COUNTER_FN = re.compile(r"\b(rate|irate|increase)\s*\(\s*([A-Za-z_:][\w:]*)")
QUANTILE_FN = re.compile(r"\bhistogram_quantile\s*\(")


def check_expr(expr, known, where):
    problems = []
    text = STRING.sub('""', expr)
    text = RANGE.sub("", text)
    names = []
    # Metric names with their selectors.
    for m in re.finditer(r"([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}", text):
        name, body = m.group(1), m.group(2)
        labels = re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", body)
        if name and name not in FUNCTIONS | AGGREGATIONS | KEYWORDS:
            names.append(name)
            if name in known:
                for label in labels:
                    if label != "__name__" and label not in known[name][1]:
                        problems.append(f"{where}: label `{label}` is not a label of {name}: {expr}")
        else:
            for label in labels:
                if label == "__name__":
                    problems.append(f"{where}: selection by __name__ escapes the check: {expr}")
    text = MATCHERS.sub("", text)
    grouping = []
    for m in GROUPING.finditer(text):
        grouping += [g.strip() for g in m.group(2).split(",") if g.strip()]
    text = GROUPING.sub(lambda m: m.group(1), text)
    for m in IDENT.finditer(text):
        ident = m.group(1)
        after = text[m.end():].lstrip()
        if ident in FUNCTIONS | AGGREGATIONS | KEYWORDS:
            continue
        if after.startswith("("):
            problems.append(f"{where}: unknown function `{ident}`: {expr}")
            continue
        names.append(ident)
    used_labels = set()
    for name in dict.fromkeys(names):
        if name not in known:
            problems.append(f"{where}: `{name}` is not in the metric contract: {expr}")
        else:
            used_labels |= known[name][1]
    for label in grouping:
        if used_labels and label not in used_labels:
            problems.append(f"{where}: grouping label `{label}` is on none of the expression's metrics: {expr}")
    for m in COUNTER_FN.finditer(text):
        fn, name = m.group(1), m.group(2)
        if name in known and known[name][0] not in ("counter", "histogram_bucket"):
            problems.append(f"{where}: {fn}() over {name}, a {known[name][0]}: {expr}")
    if QUANTILE_FN.search(text):
        buckets = [n for n in names if n in known and known[n][0] == "histogram_bucket"]
        if not buckets:
            problems.append(f"{where}: histogram_quantile() without a _bucket series: {expr}")
        if "le" not in grouping:
            problems.append(f"{where}: histogram_quantile() must keep `le` in its aggregation: {expr}")
    return problems


def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def check_dashboard(path, known):
    problems = []
    try:
        with open(path, encoding="utf-8") as f:
            dash = json.load(f)
    except (OSError, ValueError) as e:
        return [f"{path}: does not parse: {e}"], 0
    ds = "${DS_PROMETHEUS}"
    if dash.get("schemaVersion", 0) < 36:
        problems.append(f"{path}: schemaVersion {dash.get('schemaVersion')} < 36")
    if not dash.get("uid"):
        problems.append(f"{path}: no uid")
    if not any(i.get("name") == "DS_PROMETHEUS" and i.get("pluginId") == "prometheus"
               for i in dash.get("__inputs", [])):
        problems.append(f"{path}: no DS_PROMETHEUS datasource input")
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    node = variables.get("node")
    if not node:
        problems.append(f"{path}: no `node` template variable")
    else:
        q = node.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if re.sub(r"\s", "", q or "") != "label_values(softswitch_up,node)":
            problems.append(f"{path}: `node` variable query is {q!r}")
    exprs = []
    ids = set()
    for p in walk_panels(dash.get("panels", [])):
        where = f"{path}: panel {p.get('id')} {p.get('title')!r}"
        if p.get("id") in ids:
            problems.append(f"{where}: duplicate id")
        ids.add(p.get("id"))
        if "gridPos" not in p:
            problems.append(f"{where}: no gridPos")
        if p.get("type") == "row":
            continue
        if (p.get("datasource") or {}).get("uid") != ds:
            problems.append(f"{where}: datasource is not {ds}")
        targets = p.get("targets", [])
        if not targets:
            problems.append(f"{where}: no query")
        for t in targets:
            if (t.get("datasource") or {}).get("uid") != ds:
                problems.append(f"{where}: target {t.get('refId')} datasource is not {ds}")
            if not t.get("expr"):
                problems.append(f"{where}: target {t.get('refId')} has no expr")
            else:
                exprs.append((where, t["expr"]))
    for a in dash.get("annotations", {}).get("list", []):
        if a.get("expr"):
            exprs.append((f"{path}: annotation {a.get('name')!r}", a["expr"]))
    for name, v in variables.items():
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if v.get("type") != "query" or not q:
            continue
        m = re.fullmatch(r"\s*label_values\(\s*(.*?)\s*,\s*(\w+)\s*\)\s*", q)
        if m:
            exprs.append((f"{path}: variable {name}", m.group(1)))
            metric = re.match(r"[A-Za-z_:][\w:]*", m.group(1))
            if metric and metric.group(0) in known and m.group(2) not in known[metric.group(0)][1]:
                problems.append(f"{path}: variable {name}: {metric.group(0)} has no label {m.group(2)}")
        else:
            exprs.append((f"{path}: variable {name}", q))
    if not exprs:
        problems.append(f"{path}: no expression at all")
    for where, e in exprs:
        problems += check_expr(e, known, where)
    return problems, len(exprs)


def check_rules(path, known):
    try:
        import yaml
    except ImportError:
        print(f"{path}: python3-yaml missing, rule expressions not checked (promtool still checks them)")
        return [], 0
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    problems, n = [], 0
    for g in doc.get("groups", []):
        for r in g.get("rules", []):
            name = r.get("alert") or r.get("record")
            where = f"{path}: {name}"
            problems += check_expr(r["expr"], known, where)
            n += 1
            if r.get("alert"):
                if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                    problems.append(f"{where}: no severity label (critical, warning, info)")
                ann = r.get("annotations", {})
                if not ann.get("summary") or not ann.get("description"):
                    problems.append(f"{where}: summary and description annotations wanted")
    return problems, n


def main(argv):
    dashboards, rules, contract = [], [], os.path.join(HERE, "METRICS.md")
    it = iter(argv)
    for a in it:
        if a == "--rules":
            rules.append(next(it))
        elif a == "--contract":
            contract = next(it)
        else:
            dashboards.append(a)
    if not dashboards and not rules:
        dashboards = sorted(glob.glob(os.path.join(HERE, "dashboards", "*.json")))
        rules = [os.path.join(HERE, "prometheus", "alerts.yml")]
    c = load_contract(contract)
    problems = []
    for d in dashboards:
        p, n = check_dashboard(d, series_of(c, {}))
        problems += p
        print(f"{d}: {n} expressions")
    for r in rules:
        p, n = check_rules(r, series_of(c, PROMETHEUS_SERIES))
        problems += p
        print(f"{r}: {n} rules")
    for p in problems:
        print(p)
    print(f"dashboard/rules check: FAILED ({len(problems)} problems)" if problems
          else "dashboard/rules check: OK")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
