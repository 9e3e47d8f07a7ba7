#!/usr/bin/env python3
"""Generates deploy/grafana/sipedge.json, the sipedge Grafana dashboard.

Edit the panels here and run: python3 deploy/grafana/generate.py > deploy/grafana/sipedge.json
(tests/deploy_prometheus.rs checks that the committed JSON is this script's output, and that
every metric, label and value the queries use is on a live scrape).
"""
import json
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'instance=~"$instance"'
panels = []
pid = [0]
y = [0]
def nid():
    pid[0] += 1
    return pid[0]
def row(title):
    panels.append({"type": "row", "title": title, "id": nid(), "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y[0]}, "panels": []})
    y[0] += 1
x = [0]
def place(w, h):
    if x[0] + w > 24:
        x[0] = 0
        y[0] += place.h
    pos = {"h": h, "w": w, "x": x[0], "y": y[0]}
    x[0] += w
    place.h = h
    return pos
place.h = 0
def flush():
    if x[0]:
        y[0] += place.h
        x[0] = 0
def ts(title, targets, unit="short", w=12, h=8, desc="", stack=False, minv=None):
    p = {"type": "timeseries", "title": title, "id": nid(), "datasource": DS, "description": desc,
         "gridPos": place(w, h),
         "fieldConfig": {"defaults": {"unit": unit, "custom": {"drawStyle": "line", "lineWidth": 1,
                         "fillOpacity": 10 if stack else 0,
                         "stacking": {"mode": "normal" if stack else "none", "group": "A"}}},
                         "overrides": []},
         "options": {"legend": {"displayMode": "table", "placement": "right", "calcs": ["mean", "max"]},
                     "tooltip": {"mode": "multi", "sort": "desc"}},
         "targets": [{"refId": chr(65 + i), "datasource": DS, "expr": e, "legendFormat": l}
                     for i, (e, l) in enumerate(targets)]}
    if minv is not None:
        p["fieldConfig"]["defaults"]["min"] = minv
    panels.append(p)
def stat(title, expr, unit="short", w=4, h=4, desc="", thresholds=None, legend=""):
    steps = thresholds or [{"color": "green", "value": None}]
    panels.append({"type": "stat", "title": title, "id": nid(), "datasource": DS, "description": desc,
                   "gridPos": place(w, h),
                   "fieldConfig": {"defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}},
                                   "overrides": []},
                   "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                               "colorMode": "background", "graphMode": "none", "textMode": "auto"},
                   "targets": [{"refId": "A", "datasource": DS, "expr": expr, "legendFormat": legend}]})
def table(title, expr, w=24, h=5, desc=""):
    panels.append({"type": "table", "title": title, "id": nid(), "datasource": DS, "description": desc,
                   "gridPos": place(w, h),
                   "fieldConfig": {"defaults": {}, "overrides": []},
                   "options": {"showHeader": True},
                   "transformations": [{"id": "labelsToFields", "options": {}},
                                       {"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True, "__name__": True}}}],
                   "targets": [{"refId": "A", "datasource": DS, "expr": expr, "format": "table", "instant": True}]})
def timeline(title, expr, legend, w=24, h=6, desc=""):
    panels.append({"type": "state-timeline", "title": title, "id": nid(), "datasource": DS, "description": desc,
                   "gridPos": place(w, h),
                   "fieldConfig": {"defaults": {"mappings": [{"type": "value", "options": {
                       "0": {"text": "down", "color": "red"}, "1": {"text": "up", "color": "green"}}}],
                       "thresholds": {"mode": "absolute", "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}]}},
                       "overrides": []},
                   "options": {"showValue": "never", "mergeValues": True, "rowHeight": 0.9},
                   "targets": [{"refId": "A", "datasource": DS, "expr": expr, "legendFormat": legend}]})
R = "[$__rate_interval]"
RED_GREEN = [{"color": "red", "value": None}, {"color": "green", "value": 1}]

row("Fleet")
stat("Nodes ready", f'sum(sipedge_ready{{{SEL}}})', desc="Nodes whose /ready answers 200: listeners bound, a backend up, not draining.", thresholds=RED_GREEN)
stat("Nodes draining", f'sum(sipedge_draining{{{SEL}}})', thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 1}])
stat("Shards (cores)", f'sum(sipedge_shards{{{SEL}}})')
stat("Requests / s", f'sum(rate(sipedge_requests_received_total{{{SEL}}}{R}))', unit="reqps")
stat("5xx/6xx share of responses sent",
     f'sum(rate(sipedge_responses_sent_total{{{SEL},class=~"5xx|6xx"}}{R})) / sum(rate(sipedge_responses_sent_total{{{SEL}}}{R}))',
     unit="percentunit", thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 0.02}, {"color": "red", "value": 0.05}])
stat("Blacklisted destinations", f'sum(sipedge_blacklist_entries{{{SEL}}})',
     thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 1}])
flush()
table("Nodes: version and I/O driver", f'sipedge_build_info{{{SEL}}}', h=5,
      desc="The driver is io_uring, or epoll where io_uring is missing or forbidden (a container's seccomp profile).")
flush()

row("SIP traffic")
ts("Requests received by method", [(f'sum by (method) (rate(sipedge_requests_received_total{{{SEL}}}{R}))', "{{method}}")], unit="reqps", stack=True)
ts("Requests sent by method", [(f'sum by (method) (rate(sipedge_requests_sent_total{{{SEL}}}{R}))', "{{method}}")], unit="reqps", stack=True,
   desc="Forwarded requests plus the OPTIONS health probes sent to backends.")
ts("Responses received by class", [(f'sum by (class) (rate(sipedge_responses_received_total{{{SEL}}}{R}))', "{{class}}")], unit="reqps", stack=True)
ts("Responses sent by class", [(f'sum by (class) (rate(sipedge_responses_sent_total{{{SEL}}}{R}))', "{{class}}")], unit="reqps", stack=True)
ts("Responses generated by sipedge, by status", [(f'sum by (status) (rate(sipedge_local_responses_total{{{SEL}}}{R})) > 0', "{{status}}")], unit="reqps",
   desc="Answers the proxy gives itself: 400/420/483/482/505/513 for broken or looping requests, 503 when draining or no backend is up, 200 to OPTIONS addressed to it.")
ts("Requests received by node", [(f'sum by (instance) (rate(sipedge_requests_received_total{{{SEL}}}{R}))', "{{instance}}")], unit="reqps",
   desc="How evenly the load balancer, DNS SRV or ECMP spreads traffic over the nodes.")
flush()

row("Errors and drops")
ts("Drops by reason", [(f'sum by (reason) (rate(sipedge_drops_total{{{SEL}}}{R})) > 0', "{{reason}}")], unit="pps",
   desc="Messages discarded without an answer. keepalive (RFC 5626 CRLF / STUN) is normal traffic; handoff_queue_full / handoff_pool_empty mean a saturated shard; foreign_via and unanswerable point at broken or hostile peers.")
ts("Socket and connection errors by reason", [(f'sum by (reason) (rate(sipedge_errors_total{{{SEL}}}{R})) > 0', "{{reason}}")], unit="pps")
ts("Error and drop ratios (keep-alives excluded)", [
    (f'sum by (instance) (rate(sipedge_responses_sent_total{{{SEL},class=~"5xx|6xx"}}{R})) / sum by (instance) (rate(sipedge_responses_sent_total{{{SEL}}}{R}))', "5xx/6xx sent {{instance}}"),
    (f'sum by (instance) (rate(sipedge_drops_total{{{SEL},reason!="keepalive"}}{R})) / sum by (instance) (rate(sipedge_shard_messages_total{{{SEL}}}{R}))', "dropped {{instance}}"),
], unit="percentunit", minv=0)
ts("Configuration reloads", [(f'sum by (result) (increase(sipedge_config_reloads_total{{{SEL}}}{R}))', "{{result}}")])
flush()

row("Backends")
timeline("Backend up (per node and backend)", f'sipedge_backend_up{{{SEL}}}', "{{instance}} {{backend}}",
         desc="1 while the backend takes new calls. From OPTIONS probes and the blacklist.")
ts("Requests forwarded per backend", [(f'sum by (backend) (rate(sipedge_backend_requests_total{{{SEL}}}{R}))', "{{backend}}")], unit="reqps")
ts("Backend health state", [(f'sum by (backend, state) (sipedge_backend_state{{{SEL}}}) > 0', "{{backend}} {{state}}")],
   desc="Nodes seeing each backend up, suspect or down.")
ts("Backend latency (OPTIONS probe round trip)", [(f'max by (backend) (sipedge_backend_probe_rtt_seconds{{{SEL}}})', "{{backend}} max over nodes"),
                                                 (f'avg by (backend) (sipedge_backend_probe_rtt_seconds{{{SEL}}})', "{{backend}} mean")], unit="s")
ts("Probe outcomes", [(f'sum by (backend, result) (rate(sipedge_backend_probes_total{{{SEL}}}{R}))', "{{backend}} {{result}}")], unit="reqps")
ts("Failovers (calls moved off an unavailable backend)", [(f'sum by (backend) (rate(sipedge_backend_failovers_total{{{SEL}}}{R}))', "{{backend}}")], unit="reqps")
flush()

row("Shards")
ts("Messages per shard", [(f'sum by (instance, shard) (rate(sipedge_shard_messages_total{{{SEL}}}{R}))', "{{instance}} shard {{shard}}")], unit="pps",
   desc="Each shard is one core. An even spread means the Call-ID hash spreads the calls well.")
ts("Handoffs between shards", [(f'sum by (instance, shard) (rate(sipedge_shard_handoffs_sent_total{{{SEL}}}{R}))', "sent {{instance}} shard {{shard}}"),
                               (f'sum by (instance, shard) (rate(sipedge_shard_handoffs_received_total{{{SEL}}}{R}))', "received {{instance}} shard {{shard}}")], unit="pps",
   desc="Messages that arrived on a shard other than the one owning their Call-ID.")
ts("Handoff queue depth", [(f'max by (instance, shard) (sipedge_shard_queue_depth{{{SEL}}})', "{{instance}} shard {{shard}}")],
   desc="Messages waiting when the shard last drained its queue. A standing value means the shard is near saturation.")
ts("Shard load imbalance (busiest / mean)", [(f'max by (instance) (rate(sipedge_shard_messages_total{{{SEL}}}{R})) / avg by (instance) (rate(sipedge_shard_messages_total{{{SEL}}}{R}))', "{{instance}}")], minv=1)
ts("Open TCP connections", [(f'sum by (instance, direction) (sipedge_shard_tcp_connections{{{SEL}}})', "{{instance}} {{direction}}")])
flush()

row("Blacklist")
ts("Blacklisted destinations by reason", [(f'sum by (reason) (sipedge_blacklist_entries{{{SEL}}})', "{{reason}}")], w=24, stack=True)
flush()

dash = {
    "title": "sipedge",
    "uid": "sipedge-overview",
    "description": "sipedge SIP edge proxy fleet: traffic, errors, backends, shards, blacklist.",
    "tags": ["sipedge", "sip"],
    "timezone": "utc",
    "editable": True,
    "graphTooltip": 1,
    "refresh": "30s",
    "schemaVersion": 39,
    "version": 1,
    "time": {"from": "now-6h", "to": "now"},
    "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
                              "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"}]},
    "templating": {"list": [
        {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus", "current": {}, "hide": 0,
         "refresh": 1, "options": [], "regex": "", "includeAll": False, "multi": False},
        {"name": "instance", "label": "Node", "type": "query", "datasource": DS,
         "definition": "label_values(sipedge_build_info, instance)",
         "query": {"query": "label_values(sipedge_build_info, instance)", "refId": "instance"},
         "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*", "current": {}, "options": [], "sort": 1, "hide": 0, "regex": ""},
    ]},
    "panels": panels,
}
print(json.dumps(dash, indent=2))
