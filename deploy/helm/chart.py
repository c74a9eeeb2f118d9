#!/usr/bin/env python3
"""Lints and renders the crius chart with Helm's own engine, validates what
it renders against the Kubernetes schemas, and keeps the plain manifests in
deploy/manifests/ equal to the chart's output.

    deploy/helm/chart.py check             lint; render (defaults, kvm on, handlers); validate; compare manifests
    deploy/helm/chart.py render [--set K=V ...]   print the rendered manifests
    deploy/helm/chart.py update            rewrite deploy/manifests/crius.yaml

Helm's CLI is not used: the PyPI wheel helm-sdkpy carries Helm v4's Go
library. Its Lint action renders every template. It has no `template` or
dry-run action, so rendering runs its Install action against a throwaway
fake Kubernetes API server on 127.0.0.1 (the class FakeApiServer below): it
answers discovery, reports the Kubernetes version, and stores what Helm
creates (Helm keeps its release record in memory: HELM_DRIVER=memory). The release's `manifest` (every non-hook object, as `helm template`
prints them) and its hooks are what Helm rendered, unchanged. Validation uses
the PyPI package kubernetes-validate in strict mode (unknown fields fail).

Needs a Python (3.11 on Debian 12) with helm-sdkpy, kubernetes-validate and
PyYAML: .ci/setup-host makes that venv (CHART_PYTHON names its python).
"""

import argparse
import asyncio
import json
import os
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

REPO = Path(__file__).resolve().parents[2]
CHART = Path(os.environ.get("CRIUS_CHART", REPO / "deploy/helm/crius"))
MANIFESTS = REPO / "deploy/manifests/crius.yaml"
# What the plain manifests are rendered as: a release named crius in
# crius-system, with its Namespace object.
PLAIN_RELEASE = "crius"
PLAIN_NAMESPACE = "crius-system"
PLAIN_VALUES = {"createNamespace": True}
# The Kubernetes versions the rendered objects must validate against: the
# chart's minimum and the newest kubernetes-validate knows.
KUBE_VERSION = "1.31.0"

# Discovery: the API groups and resources the chart uses (name, kind, namespaced).
RESOURCES = {
    "v1": [
        ("namespaces", "Namespace", False),
        ("nodes", "Node", False),
        ("configmaps", "ConfigMap", True),
        ("secrets", "Secret", True),
        ("serviceaccounts", "ServiceAccount", True),
        ("pods", "Pod", True),
    ],
    "apps/v1": [("daemonsets", "DaemonSet", True), ("controllerrevisions", "ControllerRevision", True)],
    "batch/v1": [("jobs", "Job", True)],
    "rbac.authorization.k8s.io/v1": [
        ("clusterroles", "ClusterRole", False),
        ("clusterrolebindings", "ClusterRoleBinding", False),
        ("roles", "Role", True),
        ("rolebindings", "RoleBinding", True),
    ],
    "node.k8s.io/v1": [("runtimeclasses", "RuntimeClass", False)],
}
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


class FakeApiServer:
    """Just enough of a Kubernetes API server for `helm install` without
    --wait: discovery, /version, and create/get/list/update of any object,
    kept in memory. It runs nothing: it is a recorder for what Helm sends."""

    def __init__(self, kube_version):
        self.objects = {}
        self.kube_version = kube_version
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.get(self)

            def do_POST(self):
                server.write(self, create=True)

            def do_PUT(self):
                server.write(self, create=False)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def kubeconfig(self):
        # helm-sdkpy takes a kubeconfig path or YAML text (it looks for "apiVersion:").
        return (
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n"
            f"clusters:\n- name: fake\n  cluster:\n    server: {self.url}\n"
            "users:\n- name: fake\n  user:\n    token: fake\n"
            "contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n"
        )

    @staticmethod
    def reply(handler, code, body):
        data = json.dumps(body).encode()
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def discovery(self, path):
        major, minor, _ = self.kube_version.split(".")
        if path == "/version":
            return {"major": major, "minor": minor, "gitVersion": f"v{self.kube_version}", "platform": "linux/amd64"}
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        groups = {gv.split("/")[0]: gv for gv in RESOURCES if "/" in gv}
        if path == "/apis":
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [
                    {
                        "name": name,
                        "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}],
                        "preferredVersion": {"groupVersion": gv, "version": gv.split("/")[1]},
                    }
                    for name, gv in sorted(groups.items())
                ],
            }
        gv = path.removeprefix("/api/").removeprefix("/apis/")
        if path in ("/api/v1", f"/apis/{gv}") and gv in RESOURCES:
            return {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": gv,
                "resources": [
                    {"name": name, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": VERBS}
                    for name, kind, namespaced in RESOURCES[gv]
                ],
            }
        return None

    def get(self, handler):
        url = urlparse(handler.path)
        doc = self.discovery(url.path.rstrip("/"))
        if doc is not None:
            return self.reply(handler, 200, doc)
        if url.path in self.objects:
            return self.reply(handler, 200, self.objects[url.path])
        prefix = url.path.rstrip("/") + "/"
        items = [obj for path, obj in sorted(self.objects.items()) if path.rsplit("/", 1)[0] + "/" == prefix]
        if items or self.is_collection(url.path):
            selector = parse_qs(url.query).get("labelSelector", [""])[0]
            wanted = dict(kv.split("=", 1) for kv in selector.split(",") if "=" in kv)
            items = [o for o in items if wanted.items() <= o["metadata"].get("labels", {}).items()]
            return self.reply(handler, 200, {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": items})
        self.reply(handler, 404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})

    @staticmethod
    def is_collection(path):
        last = path.rstrip("/").rsplit("/", 1)[-1]
        return any(last == name for resources in RESOURCES.values() for name, _, _ in resources)

    def write(self, handler, create):
        length = int(handler.headers.get("Content-Length", "0"))
        obj = json.loads(handler.rfile.read(length) or b"{}")
        path = urlparse(handler.path).path.rstrip("/")
        if create:
            path = f"{path}/{obj['metadata']['name']}"
            if path in self.objects:
                return self.reply(handler, 409, {"kind": "Status", "reason": "AlreadyExists", "code": 409})
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", "2024-01-01T00:00:00Z")
        meta["resourceVersion"] = str(len(self.objects) + 1)
        self.objects[path] = obj
        self.reply(handler, 201 if create else 200, obj)


def render(values, release=PLAIN_RELEASE, namespace=PLAIN_NAMESPACE):
    """(manifest, hooks, notes) of the chart with `values`, rendered by Helm."""
    import helm_sdkpy

    with FakeApiServer(KUBE_VERSION) as api:
        config = helm_sdkpy.Configuration(namespace=namespace, kubeconfig=api.kubeconfig())
        install = helm_sdkpy.Install(config)
        result = asyncio.run(install.run(release, str(CHART), values=values, wait=False, timeout=60))
    hooks = "".join(f"---\n# Source: {h['path']}\n{h['manifest'].strip()}\n" for h in result.get("hooks") or [])
    return result["manifest"], hooks, result.get("info", {}).get("notes", "")


def lint():
    import helm_sdkpy

    with FakeApiServer(KUBE_VERSION) as api:
        config = helm_sdkpy.Configuration(kubeconfig=api.kubeconfig())
        return asyncio.run(helm_sdkpy.Lint(config).run(str(CHART)))


def objects(manifest):
    import yaml

    return [doc for doc in yaml.safe_load_all(manifest) if doc]


def validate(docs, label):
    """Errors of every object against the schemas of KUBE_VERSION and the newest."""
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    errors = []
    for version in (KUBE_VERSION, latest_version()):
        failed = 0
        for doc in docs:
            name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except Exception as e:  # the library's ValidationError and schema lookups
                failed += 1
                errors.append(f"{label}: {name} (Kubernetes {version}): {getattr(e, 'message', e)}")
        print(f"chart.py: {label}: {len(docs) - failed} of {len(docs)} objects valid for Kubernetes {version} (strict)")
    return errors


def plain_manifests():
    manifest, _, _ = render(PLAIN_VALUES)
    header = (
        "# crius: plain manifests for `kubectl apply -f`, rendered from deploy/helm/crius with its\n"
        f"# default values (release {PLAIN_RELEASE}, namespace {PLAIN_NAMESPACE}, createNamespace=true) by\n"
        "# deploy/helm/chart.py update. Do not edit: change the chart and re-render; test.sh checks\n"
        "# that this file equals the chart's output. The Helm uninstall hook is not here: see the\n"
        "# README for uninstalling with kubectl.\n"
    )
    return header + manifest.lstrip("-\n").rstrip() + "\n"


def check():
    failures = []
    result = lint()
    severities = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}
    messages = result.get("Messages") or []
    for message in messages:
        print(f"chart.py: helm lint: {severities.get(message['Severity'])} {message['Path']}")
    # helm-sdkpy passes the errors' text as {}: rendering below shows it.
    if result.get("Errors") or any(m["Severity"] >= 2 for m in messages) or result.get("TotalChartsLinted") != 1:
        failures.append(f"helm lint failed: {json.dumps(result)} (chart.py render shows a template's error)")
    else:
        print(f"chart.py: helm lint: passed, {len(messages)} informational message(s)")
    handlers = {"kvm": {"enabled": True}, "config": {"runtime": {"handlers": {"runc": {"type": "namespaces"}}}}}
    cases = (("defaults", {}), ("kvm on", {"kvm": {"enabled": True}}), ("handlers", handlers), ("plain", PLAIN_VALUES))
    for label, values in cases:
        try:
            manifest, hooks, _ = render(values)
        except Exception as e:  # helm_sdkpy's InstallError carries Helm's message
            failures.append(f"{label}: Helm cannot render the chart: {e}")
            continue
        docs = objects(manifest + hooks)
        kinds = sorted({d["kind"] for d in docs})
        print(f"chart.py: {label}: rendered {len(docs)} objects: {', '.join(kinds)}")
        classes = sorted(d["metadata"]["name"] for d in docs if d["kind"] == "RuntimeClass")
        wanted = {"kvm on": ["crius-kvm"], "handlers": ["crius-kvm", "crius-runc"]}.get(label, [])
        if classes != wanted:
            failures.append(f"{label}: RuntimeClasses {classes}, expected {wanted}")
        failures += validate(docs, label)
    try:
        render({"installer": {"start": "sytemd"}})
        failures.append("values.schema.json let installer.start=sytemd through")
    except Exception as e:  # Helm refuses the values: what should happen
        print(f"chart.py: a bad value is refused: {str(e).splitlines()[-1].strip()}")
    expected = plain_manifests()
    if MANIFESTS.read_text() != expected:
        failures.append(f"{MANIFESTS.relative_to(REPO)} differs from the chart's output: run deploy/helm/chart.py update")
    else:
        print(f"chart.py: {MANIFESTS.relative_to(REPO)} equals the chart's output")
    for failure in failures:
        print(f"chart.py: FAIL {failure}", file=sys.stderr)
    return not failures


def parse_sets(sets):
    values = {}
    for item in sets:
        key, _, raw = item.partition("=")
        target = values
        *parents, last = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[last] = {"true": True, "false": False}.get(raw, int(raw) if raw.isdigit() else raw)
    return values


def main():
    # The release record stays in memory, so that the fake server need not
    # speak protobuf, which Helm's Secret storage driver sends. Helm's Go
    # runtime reads the environment the process started with: re-exec.
    if os.environ.get("HELM_DRIVER") != "memory":
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "HELM_DRIVER": "memory"})
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check")
    sub.add_parser("update")
    render_cmd = sub.add_parser("render")
    render_cmd.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    render_cmd.add_argument("--notes", action="store_true", help="print NOTES.txt as rendered instead")
    args = parser.parse_args()
    if args.command == "check":
        sys.exit(0 if check() else 1)
    if args.command == "update":
        MANIFESTS.parent.mkdir(parents=True, exist_ok=True)
        MANIFESTS.write_text(plain_manifests())
        print(f"chart.py: wrote {MANIFESTS.relative_to(REPO)}")
    if args.command == "render":
        manifest, hooks, notes = render(parse_sets(args.set))
        print(notes if args.notes else manifest.rstrip() + "\n" + hooks, end="")


if __name__ == "__main__":
    main()
