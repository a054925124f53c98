#!/usr/bin/env python3
"""Checks rendered kustomize output: schemas, then the invariants the deployment relies on.

    check-manifests.py [--kube-version V]... --config-out FILE ROLE=RENDERED.yaml...

ROLE is `base` (the base alone: no ServiceMonitor or PrometheusRule allowed), `monitored`
(base plus the servicemonitor and monitoring components: both are required, and the Grafana
dashboard ConfigMap) or `autoscaled` (base plus the autoscaling component: an HPA owns the
replicas, a zone spread replaces the anti-affinity, the PDB allows one eviction at a time). Every object is validated strictly (unknown fields are errors) against
the Kubernetes OpenAPI schemas of each --kube-version, with kubernetes-validate's bundled
schemas (offline); a ServiceMonitor against servicemonitor.schema.json beside this file, a
PrometheusRule against prometheusrule.schema.json; any other kind without a schema fails.
The sniroute config is taken from the ConfigMap the Deployment mounts and written to
--config-out, for `sniroute check`; with --rules-out DIR, each render's PrometheusRule groups
are written to DIR/rules-N-M.yaml for `promtool check rules`. Prints every problem; exits 1 if
there was any.
"""

import argparse
import json
import os
import re
import sys

import jsonschema
import kubernetes_validate
import yaml

NAMESPACE = "hypershift-sharedingress"
# The shutdown settings' defaults in sniroute, used when the config does not set them.
DEFAULT_SHUTDOWN_DELAY = 5.0
DEFAULT_DRAIN_TIMEOUT = 60.0
# The ClusterRole grants exactly this: (apiGroup, resource) -> verbs.
EXPECTED_RULES = {
    ("hypershift.openshift.io", "hostedclusters"): {"get", "list", "watch"},
    ("route.openshift.io", "routes"): {"get", "list", "watch"},
    ("", "services"): {"get", "list", "watch"},
    # The pods behind each Service (kubernetes.backends: endpoints).
    ("discovery.k8s.io", "endpointslices"): {"get", "list", "watch"},
    # The zone of the node this replica runs on (topology.kubernetes.io/zone), one get.
    ("", "nodes"): {"get"},
    # The Gateway API source (kubernetes.gateway_api): its objects, and listener selectors'
    # Namespaces ...
    ("gateway.networking.k8s.io", "gatewayclasses"): {"list", "watch"},
    ("gateway.networking.k8s.io", "gateways"): {"list", "watch"},
    ("gateway.networking.k8s.io", "tlsroutes"): {"list", "watch"},
    ("gateway.networking.k8s.io", "referencegrants"): {"list", "watch"},
    ("", "namespaces"): {"list", "watch"},
    # ... and their status, by server-side apply (a patch), from the Lease holder only.
    ("gateway.networking.k8s.io", "gatewayclasses/status"): {"patch"},
    ("gateway.networking.k8s.io", "gateways/status"): {"patch"},
    ("gateway.networking.k8s.io", "tlsroutes/status"): {"patch"},
}
# The Role in sniroute's namespace grants exactly this: the status writer's Lease, and the
# Gateways' Services it applies and deletes (never across namespaces).
EXPECTED_ROLE_RULES = [
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
     "resourceNames": ["sniroute-gateway-status"], "verbs": ["get", "update"]},
    {"apiGroups": [""], "resources": ["services"], "verbs": ["create", "patch", "delete"]},
]
BASE_KINDS = {
    "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
    "ConfigMap",
    "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy",
}
HERE = os.path.dirname(os.path.abspath(__file__))
RUNBOOKS = os.path.join(HERE, "..", "..", "docs", "runbooks.md")
# The scrape job the rules select: the ServiceMonitor's job is its Service's name.
METRICS_JOB = "sniroute-metrics"
SEVERITIES = {"critical", "warning"}
DASHBOARD_LABEL = ("grafana_dashboard", "1")

problems = []


def fail(where, message):
    problems.append(f"{where}: {message}")


def check(condition, where, message):
    if not condition:
        fail(where, message)
    return condition


def name_of(obj):
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


# === schemas ===


def validate_schemas(objs, versions, where):
    crd_schemas = {}
    for kind, file in (("ServiceMonitor", "servicemonitor.schema.json"),
                       ("PrometheusRule", "prometheusrule.schema.json")):
        with open(os.path.join(HERE, file)) as f:
            crd_schemas[kind] = json.load(f)
    for obj in objs:
        label = f"{where}: {name_of(obj)}"
        if obj.get("kind") in crd_schemas:
            validator = jsonschema.Draft202012Validator(crd_schemas[obj["kind"]])
            for error in validator.iter_errors(obj):
                path = ".".join(str(p) for p in error.absolute_path)
                fail(label, f"{obj['kind']} schema: {path}: {error.message}")
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(p) for p in error.path)
                fail(label, f"Kubernetes {version} schema (strict): {path}: {error.message}")
            except kubernetes_validate.SchemaNotFoundError as error:
                fail(label, f"no schema: {error.message}")


def self_test(version):
    """The validator must reject an unknown field and a wrong type, or it checks nothing."""
    bad = [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
         "spec": {"portz": []}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
         "spec": {"replicas": "two", "selector": {}, "template": {}}},
    ]
    for obj in bad:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError:
            continue
        fail("self-test", f"kubernetes-validate accepted an invalid object: {obj}")


# === invariants ===


def duration_seconds(text):
    """A sniroute (humantime) duration such as 250ms, 5s, 1h30m, in seconds."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
    if str(text).strip() == "0":
        return 0
    parts = re.findall(r"(\d+)\s*([a-z]+)", str(text))
    if not parts or re.sub(r"[\d\sa-z]", "", str(text)):
        raise ValueError(f"not a duration: {text!r}")
    return sum(int(n) * units[u] for n, u in parts)


def port_of(addr):
    return int(str(addr).rsplit(":", 1)[1])


def selects(selector, labels):
    match = (selector or {}).get("matchLabels") or {}
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def admin_peer_is_named(peer):
    """A NetworkPolicy peer that names pods: a podSelector with labels, and a
    namespaceSelector that selects something (an empty one is every namespace)."""
    pods, namespaces = peer.get("podSelector") or {}, peer.get("namespaceSelector") or {}
    return (set(peer) == {"podSelector", "namespaceSelector"}
            and bool(pods.get("matchLabels") or pods.get("matchExpressions"))
            and bool(namespaces.get("matchLabels") or namespaces.get("matchExpressions")))


def check_objects(objs, role, where, config_out):
    by_kind = {}
    for obj in objs:
        by_kind.setdefault(obj["kind"], []).append(obj)
        if obj["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            check(obj["metadata"].get("namespace") == NAMESPACE, f"{where}: {name_of(obj)}",
                  f"namespace must be {NAMESPACE}")
    expected = BASE_KINDS | {
        "monitored": {"ServiceMonitor", "PrometheusRule"},
        "autoscaled": {"HorizontalPodAutoscaler"},
    }.get(role, set())
    check(set(by_kind) == expected, where,
          f"kinds {sorted(by_kind)}, expected {sorted(expected)}")
    if not check(len(by_kind.get("Deployment", [])) == 1, where, "expected one Deployment"):
        return

    # --- RBAC: exactly the grants above ---
    for role_obj in by_kind.get("ClusterRole", []):
        granted = {}
        for rule in role_obj.get("rules", []):
            check(not rule.get("resourceNames") and not rule.get("nonResourceURLs"),
                  f"{where}: {name_of(role_obj)}", "unexpected resourceNames/nonResourceURLs")
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    granted.setdefault((group, resource), set()).update(rule.get("verbs", []))
        check(granted == EXPECTED_RULES, f"{where}: {name_of(role_obj)}",
              f"grants {granted}, expected exactly {EXPECTED_RULES}")
    for role_obj in by_kind.get("Role", []):
        check(role_obj.get("rules") == EXPECTED_ROLE_RULES, f"{where}: {name_of(role_obj)}",
              f"grants {role_obj.get('rules')}, expected exactly {EXPECTED_ROLE_RULES}")

    # --- the Deployment ---
    dep = by_kind["Deployment"][0]
    d = f"{where}: {name_of(dep)}"
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"].get("labels", {})
    check(selects(spec["selector"], pod_labels), d, "selector does not select its pods")
    if role == "autoscaled":
        check_autoscaling(by_kind, dep, where)
    else:
        check(spec.get("replicas", 1) >= 2, d, "replicas must be >= 2")
    rolling = spec.get("strategy", {}).get("rollingUpdate", {})
    check(spec.get("strategy", {}).get("type") == "RollingUpdate"
          and rolling.get("maxUnavailable") == 0 and rolling.get("maxSurge") == 1,
          d, "strategy must be RollingUpdate with maxUnavailable 0, maxSurge 1")
    terms = (pod.get("affinity", {}).get("podAntiAffinity", {})
             .get("requiredDuringSchedulingIgnoredDuringExecution", []))
    zone_terms = [t for t in terms if t.get("topologyKey") == "topology.kubernetes.io/zone"
                  and selects(t.get("labelSelector"), pod_labels)]
    if role == "autoscaled":
        # One pod per zone at most would cap the HPA at the zone count.
        check(not zone_terms, d, "required zone anti-affinity caps the HPA at the zone count")
    else:
        check(zone_terms, d,
              "needs required pod anti-affinity on topology.kubernetes.io/zone against its own pods")
    psc = pod.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True, d, "pod securityContext.runAsNonRoot must be true")
    check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", d,
          "pod seccompProfile must be RuntimeDefault")
    check(len(pod["containers"]) == 1, d, "expected one container")
    c = pod["containers"][0]
    sc = c.get("securityContext", {})
    check(sc.get("runAsNonRoot") is True and sc.get("readOnlyRootFilesystem") is True
          and sc.get("allowPrivilegeEscalation") is False
          and sc.get("capabilities", {}).get("drop") == ["ALL"]
          and not sc.get("capabilities", {}).get("add")
          and sc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
          d, "container securityContext is not restricted (runAsNonRoot, readOnlyRootFilesystem, "
             "allowPrivilegeEscalation false, drop ALL, seccomp RuntimeDefault)")
    res = c.get("resources", {})
    for kind in ("requests", "limits"):
        check({"cpu", "memory"} <= set(res.get(kind, {})), d, f"resources.{kind} needs cpu and memory")
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    check({"sni", "cluster-id", "admin"} <= set(ports), d,
          "container ports sni, cluster-id and admin are required")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c.get(probe, {}).get("httpGet", {})
        check(get.get("path") == path and get.get("port") in ("admin", ports.get("admin")),
              d, f"{probe} must GET {path} on the admin port")

    # The config: mounted as a directory from the ConfigMap, and passed with --config.
    args = c.get("args", [])
    if not check(args[:1] == ["--config"] and len(args) == 2, d, "args must be --config FILE"):
        return
    config_path = args[1]
    mounts = [m for m in c.get("volumeMounts", [])
              if config_path.startswith(m["mountPath"].rstrip("/") + "/")]
    if not check(len(mounts) == 1, d, f"no volume mounted above {config_path}"):
        return
    mount = mounts[0]
    check("subPath" not in mount and "subPathExpr" not in mount, d,
          "the config must be mounted as a directory (a subPath mount never sees updates)")
    check(os.path.dirname(config_path) == mount["mountPath"].rstrip("/"), d,
          "--config must name a file directly in the mounted directory")
    volume = next((v for v in pod.get("volumes", []) if v["name"] == mount["name"]), {})
    cm_name = volume.get("configMap", {}).get("name")
    cms = [o for o in by_kind.get("ConfigMap", []) if o["metadata"]["name"] == cm_name]
    if not check(len(cms) == 1, d, f"the config volume needs the ConfigMap {cm_name!r}"):
        return
    key = os.path.basename(config_path)
    text = cms[0].get("data", {}).get(key)
    if not check(text is not None, d, f"ConfigMap {cm_name} has no key {key}"):
        return
    if config_out:
        with open(config_out, "w") as f:
            f.write(text)
    config = yaml.safe_load(text) or {}

    # Listeners agree with the container ports; the admin server is reachable by the probes.
    listen = config.get("listen")
    listen = listen if isinstance(listen, list) else [listen]
    check(all(port_of(a) == ports.get("sni") for a in listen), d,
          f"config listen {listen} must use the sni container port {ports.get('sni')}")
    admin = str(config.get("admin", "127.0.0.1:9090"))
    check(admin.startswith(("0.0.0.0:", "[::]:")) and port_of(admin) == ports.get("admin"), d,
          f"config admin {admin} must listen on all addresses, port {ports.get('admin')}")
    # The routing table names every customer's hostnames and backends: loopback only.
    debug = str(config.get("debug", "127.0.0.1:9091"))
    check(debug == "off" or debug.startswith(("127.", "[::1]:")), d,
          f"config debug {debug} must stay on loopback (reach it with kubectl port-forward)")
    check("cluster_id_listen" in config
          and port_of(config["cluster_id_listen"]) == ports.get("cluster-id"), d,
          "config cluster_id_listen must be set, on the cluster-id container port (the "
          "Service's 6443 targets it)")

    # Shutdown fits in the grace period: preStop, then shutdown_delay, then drain_timeout.
    pre_stop = c.get("lifecycle", {}).get("preStop", {})
    check(pre_stop, d, "needs a preStop handler so the LB deregisters the pod first")
    sleep = float(pre_stop.get("sleep", {}).get("seconds", 0))
    shutdown = sleep + duration_seconds(config.get("shutdown_delay", "5s")) + duration_seconds(
        config.get("drain_timeout", "60s"))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    check(grace > shutdown, d,
          f"terminationGracePeriodSeconds {grace} must exceed preStop + shutdown_delay + "
          f"drain_timeout = {shutdown:g}s")

    # --- the LoadBalancer Service ---
    services = by_kind.get("Service", [])
    lbs = [s for s in services if s["spec"].get("type") == "LoadBalancer"]
    if check(len(lbs) == 1, where, "expected one LoadBalancer Service"):
        lb = lbs[0]
        s = f"{where}: {name_of(lb)}"
        check(lb["spec"].get("externalTrafficPolicy") == "Local", s,
              "externalTrafficPolicy must be Local (client source IPs)")
        check(lb["spec"].get("selector") and all(
            pod_labels.get(k) == v for k, v in lb["spec"]["selector"].items()), s,
              "selector does not select the Deployment's pods")
        exposed = {p["port"]: ports.get(p.get("targetPort"), p.get("targetPort"))
                   for p in lb["spec"]["ports"]}
        check(exposed == {443: ports.get("sni"), 6443: ports.get("cluster-id")}, s,
              f"must expose exactly 443 -> sni and 6443 -> cluster-id, got {exposed}")

    # --- PodDisruptionBudget and NetworkPolicy ---
    budget = {"maxUnavailable": 1} if role == "autoscaled" else {"minAvailable": 1}
    for pdb in by_kind.get("PodDisruptionBudget", []):
        given = {k: pdb["spec"][k] for k in ("minAvailable", "maxUnavailable") if k in pdb["spec"]}
        check(given == budget and selects(pdb["spec"]["selector"], pod_labels),
              f"{where}: {name_of(pdb)}", f"needs {budget} over the Deployment's pods, has {given}")
    for np in by_kind.get("NetworkPolicy", []):
        n = f"{where}: {name_of(np)}"
        check(selects(np["spec"].get("podSelector"), pod_labels), n, "does not select the pods")
        check("Ingress" in np["spec"].get("policyTypes", []), n, "must restrict Ingress")
        admitted = set()
        for rule in np["spec"].get("ingress", []):
            check(rule.get("ports"), n, "an ingress rule without ports admits every port")
            rule_ports = {ports.get(p.get("port"), p.get("port"))
                          for p in rule.get("ports", []) if "endPort" not in p}
            # A range: the Gateway listeners' pod ports (kubernetes.gateway_api.listener_ports),
            # for every client like the SNI listener.
            for p in rule.get("ports", []):
                if "endPort" in p:
                    check(not rule.get("from"), n,
                          "the Gateway listener ports are for every client: no `from`")
                    check(isinstance(p.get("port"), int) and p["port"] <= p["endPort"], n,
                          f"a port range must be numeric and ordered, got {p}")
            admitted |= rule_ports
            # The admin port is unauthenticated (issue 24.1: any pod could starve the probes):
            # only named peers, each a pod selector with labels in selected namespaces.
            if ports.get("admin") in rule_ports:
                peers = rule.get("from") or []
                check(peers and all(admin_peer_is_named(peer) for peer in peers), n,
                      "the admin port must be admitted only from labelled pods of selected "
                      f"namespaces (Prometheus), not {peers or 'anywhere'}")
            elif rule_ports & {ports.get("sni"), ports.get("cluster-id")}:
                check(not rule.get("from"), n,
                      "the SNI and ClusterID ports are for every client: no `from`")
        expected_ports = {ports.get("sni"), ports.get("cluster-id"), ports.get("admin")}
        check(admitted == expected_ports, n,
              f"admits ports {sorted(admitted)}, expected exactly {sorted(expected_ports)}")

    # --- the ServiceMonitor scrapes /metrics on the admin port ---
    for sm in by_kind.get("ServiceMonitor", []):
        m = f"{where}: {name_of(sm)}"
        targets = [s for s in services if selects(sm["spec"]["selector"], s["metadata"].get("labels", {}))]
        check(targets and all(s["spec"].get("type", "ClusterIP") == "ClusterIP" for s in targets), m,
              "must select the metrics Service only (not the LoadBalancer)")
        for ep in sm["spec"]["endpoints"]:
            check(ep.get("path") == "/metrics", m, "endpoints must scrape /metrics")
            for svc in targets:
                port = next((p for p in svc["spec"]["ports"] if p.get("name") == ep.get("port")), None)
                check(port and ports.get(port.get("targetPort"), port.get("targetPort"))
                      == ports.get("admin"), m,
                      f"endpoint port {ep.get('port')} of {name_of(svc)} must target the admin port")
                if port:
                    check(selects({"matchLabels": svc["spec"].get("selector")}, pod_labels), m,
                          f"{name_of(svc)} does not select the Deployment's pods")
        check(all(s["metadata"]["name"] == METRICS_JOB for s in targets), m,
              f"the rules select job {METRICS_JOB!r}: the scraped Service must have that name")

    check_monitoring(by_kind, role, where)
    return text


def check_autoscaling(by_kind, dep, where):
    """The HPA owns the replicas, on CPU, never below 2; the pods spread over zones."""
    d = f"{where}: {name_of(dep)}"
    check("replicas" not in dep["spec"], d,
          "with an HPA, spec.replicas must not be applied (each apply would reset the HPA's count)")
    hpas = by_kind.get("HorizontalPodAutoscaler", [])
    if not check(len(hpas) == 1, where, "expected one HorizontalPodAutoscaler"):
        return
    hpa = hpas[0]
    h = f"{where}: {name_of(hpa)}"
    spec = hpa["spec"]
    ref = spec["scaleTargetRef"]
    check((ref.get("apiVersion"), ref["kind"], ref["name"])
          == ("apps/v1", "Deployment", dep["metadata"]["name"]), h, f"targets {ref}, not the Deployment")
    check(spec.get("minReplicas", 1) >= 2 and spec["maxReplicas"] > spec.get("minReplicas", 1), h,
          "minReplicas must be >= 2 (one per zone) and below maxReplicas")
    check(any(m["type"] == "Resource" and m["resource"]["name"] == "cpu"
              and m["resource"]["target"]["type"] == "Utilization" for m in spec.get("metrics", [])),
          h, "needs a CPU utilization metric (of the container's request)")
    pod = dep["spec"]["template"]["spec"]
    pod_labels = dep["spec"]["template"]["metadata"].get("labels", {})
    check(any(c["topologyKey"] == "topology.kubernetes.io/zone" and c["maxSkew"] == 1
              and c["whenUnsatisfiable"] == "DoNotSchedule"
              and selects(c.get("labelSelector"), pod_labels)
              for c in pod.get("topologySpreadConstraints", [])), d,
          "needs a DoNotSchedule spread with maxSkew 1 on topology.kubernetes.io/zone over its pods")


def github_anchor(heading):
    """The fragment GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def runbook_anchors():
    with open(RUNBOOKS) as f:
        return {github_anchor(line.lstrip("#")) for line in f if line.startswith("#")}


def check_monitoring(by_kind, role, where):
    """Alerts carry what an on-call needs; thresholds exist; the dashboard loads."""
    rules_objs = by_kind.get("PrometheusRule", [])
    if role == "monitored":
        check(len(rules_objs) == 1, where, "expected one PrometheusRule")
    anchors = runbook_anchors()
    for obj in rules_objs:
        p = f"{where}: {name_of(obj)}"
        rules = [r for g in obj["spec"].get("groups", []) for r in g.get("rules", [])]
        recorded = {r["record"] for r in rules if "record" in r}
        for rule in rules:
            expr = str(rule["expr"])
            for name in re.findall(r"sniroute:[a-z0-9_:]+", expr):
                check(name in recorded, p,
                      f"{rule.get('alert') or rule.get('record')}: {name} is never recorded, so "
                      "the rule never matches")
            for job in re.findall(r'\bjob="([^"]*)"', expr):
                check(job == METRICS_JOB, p, f"selects job {job!r}, not {METRICS_JOB!r}")
            if "alert" not in rule:
                continue
            a = f"{p}: alert {rule['alert']}"
            check(rule.get("labels", {}).get("severity") in SEVERITIES, a,
                  f"labels.severity must be one of {sorted(SEVERITIES)}")
            notes = rule.get("annotations", {})
            for key in ("summary", "description", "runbook_url"):
                check(notes.get(key), a, f"needs annotations.{key}")
            url = notes.get("runbook_url", "")
            check(url == f"docs/runbooks.md#{rule['alert'].lower()}", a,
                  f"runbook_url {url!r} must be docs/runbooks.md#{rule['alert'].lower()}")
            check(url.split("#")[-1] in anchors, a,
                  f"docs/runbooks.md has no heading {rule['alert']} (the runbook {url!r} points to)")

    dashboards = [o for o in by_kind.get("ConfigMap", [])
                  if o["metadata"].get("labels", {}).get(DASHBOARD_LABEL[0]) == DASHBOARD_LABEL[1]]
    if role == "monitored":
        check(len(dashboards) == 1, where,
              f"expected one ConfigMap labelled {DASHBOARD_LABEL[0]}: \"{DASHBOARD_LABEL[1]}\"")
    for cm in dashboards:
        c = f"{where}: {name_of(cm)}"
        files = {k: v for k, v in cm.get("data", {}).items() if k.endswith(".json")}
        if not check(len(files) == 1, c, "expected one .json key"):
            continue
        try:
            dashboard = json.loads(next(iter(files.values())))
        except json.JSONDecodeError as error:
            fail(c, f"dashboard is not JSON: {error}")
            continue
        check(dashboard.get("uid") and dashboard.get("title"), c, "dashboard needs uid and title")
        panels = dashboard.get("panels", [])
        check(panels, c, "dashboard has no panels")
        for panel in panels:
            targets = panel.get("targets", [])
            check(targets and all(t.get("expr") for t in targets), c,
                  f"panel {panel.get('title')!r} needs targets with an expr")
            check(panel.get("datasource", {}).get("uid") == "${datasource}", c,
                  f"panel {panel.get('title')!r} must use the $datasource variable")


def check_dockerfile(path, deployment):
    """The image agrees with the Deployment: ports, non-root numeric user, entrypoint, args."""
    import dockerfile  # the official (Go) Dockerfile parser

    where = path
    try:
        commands = dockerfile.parse_file(path)
    except dockerfile.GoParseError as error:
        fail(where, f"does not parse: {error}")
        return
    stages = []
    for command in commands:
        if command.cmd == "FROM":
            stages.append([])
        elif stages:
            stages[-1].append(command)
    if not check(len(stages) >= 2, where, "expected a multi-stage build (builder + runtime)"):
        return
    final = stages[-1]
    allowed = {"COPY", "USER", "EXPOSE", "ENTRYPOINT", "CMD", "LABEL", "ENV", "WORKDIR"}
    for command in final:
        check(command.cmd in allowed, where,
              f"the runtime stage has no shell: {command.cmd} {' '.join(command.value)} cannot run")
    users = [c.value[0] for c in final if c.cmd == "USER"]
    check(users and re.fullmatch(r"[1-9][0-9]*(:[1-9][0-9]*)?", users[-1]), where,
          "the runtime stage must set a numeric, non-root USER (so runAsNonRoot can be verified)")
    exposed = {int(p.split("/")[0]) for c in final if c.cmd == "EXPOSE" for p in c.value}
    if deployment is None:
        return
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    ports = {p["containerPort"] for p in container.get("ports", [])}
    check(exposed == ports, where, f"EXPOSE {sorted(exposed)} != container ports {sorted(ports)}")
    entry = [c for c in final if c.cmd == "ENTRYPOINT"]
    copied = {c.value[-1] for c in final if c.cmd == "COPY"}
    check(entry and entry[-1].json and entry[-1].value[0] in copied, where,
          "ENTRYPOINT must be the exec form of the copied binary")
    cmd = [c for c in final if c.cmd == "CMD"]
    check(cmd and list(cmd[-1].value) == container.get("args"), where,
          "CMD must equal the Deployment's args")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kube-version", action="append", dest="versions")
    parser.add_argument("--config-out", required=True)
    parser.add_argument("--dockerfile", help="check this Dockerfile against the Deployment")
    parser.add_argument("--rules-out", help="write each PrometheusRule's groups here")
    parser.add_argument("rendered", nargs="+", help="ROLE=FILE, ROLE is base, monitored or autoscaled")
    args = parser.parse_args()
    versions = args.versions or ["1.30.0", kubernetes_validate.utils.latest_version()]

    self_test(versions[0])
    configs = {}
    deployment = None
    for item in args.rendered:
        role, _, path = item.partition("=")
        if role not in ("base", "monitored", "autoscaled"):
            parser.error(f"unknown role in {item!r}")
        with open(path) as f:
            objs = [o for o in yaml.safe_load_all(f) if o]
        before = len(problems)
        validate_schemas(objs, versions, path)
        if len(problems) > before:
            fail(path, "schema errors: the deployment checks were skipped")
            continue
        deployment = deployment or next((o for o in objs if o["kind"] == "Deployment"), None)
        configs[path] = check_objects(
            objs, role, path, args.config_out if not configs else None)
        print(f"{path}: {len(objs)} objects, Kubernetes {', '.join(versions)} schemas (strict)")
        if args.rules_out:
            rules = [o for o in objs if o["kind"] == "PrometheusRule"]
            for i, obj in enumerate(rules):
                with open(os.path.join(args.rules_out, f"rules-{len(configs)}-{i}.yaml"), "w") as f:
                    yaml.safe_dump(obj["spec"], f, sort_keys=False)
    if args.dockerfile:
        check_dockerfile(args.dockerfile, deployment)
    check(len(set(configs.values())) <= 1, "config", "the renders carry different configs")

    if args.dockerfile:
        print(f"{args.dockerfile}: parsed; stages, user, ports, entrypoint and args checked")
    for problem in problems:
        print(f"FAIL {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
