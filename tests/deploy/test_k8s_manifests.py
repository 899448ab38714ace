"""deploy/k8s (issue 10, part 2): schema-valid manifests with the promised properties.

Every manifest is validated against the Kubernetes OpenAPI schemas shipped inside the PyPI
package ``kubernetes-validate`` (strict: unknown fields are errors); no cluster and no network
are needed (one test proves it in a network namespace without interfaces when run as root).
The rest asserts the security and availability properties, and that the ConfigMaps hold a
configuration and policies the gateway itself accepts, mounted as the kubelet mounts them.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.config import ServerConfig, parse_config
from gateway.policy import load_policy_set
from tests.deploy.support import K8S_DIR, REPO

KUSTOMIZATION = K8S_DIR / "kustomization.yaml"
GATEWAY_PORT = 8080
ADMIN_PORT = 9090


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")


def documents() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                out.append((path, doc))
    return out


def one(kind: str) -> dict[str, Any]:
    found = [doc for _, doc in documents() if doc["kind"] == kind]
    assert len(found) == 1, f"{kind}: {len(found)} manifests"
    return found[0]


def kustomization() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(KUSTOMIZATION.read_text(encoding="utf-8"))
    return data


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = one("Deployment")["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    [c] = pod_spec()["containers"]
    return dict(c)


def gateway_config_text() -> str:
    return str(config_map("fhir-gateway-config")["data"]["config.yaml"])


def config_map(name: str) -> dict[str, Any]:
    [cm] = [d for _, d in documents() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name]
    return cm


def gateway_config_data() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(gateway_config_text())
    return data


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_manifest_is_valid_against_the_kubernetes_schemas(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    assert docs
    version = kubernetes_validate.latest_version()
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_rejects_an_invalid_manifest() -> None:
    deployment = one("Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replicas": "three"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)
    unknown = {**deployment, "spec": {**deployment["spec"], "replica": 3}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown, kubernetes_validate.latest_version(), strict=True)


def test_validation_needs_no_network() -> None:
    """The command line validator, in a network namespace with no interface up (root only:
    elsewhere the same validator runs without network access by construction)."""
    cli = Path(sys.executable).parent / "kubernetes-validate"
    argv = [str(cli), "--strict", "--quiet", *map(str, manifest_files())]
    if os.geteuid() == 0 and shutil.which("unshare"):
        argv = ["unshare", "--net", "--", *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    k = kustomization()
    assert k["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and k["kind"] == "Kustomization"
    names = {p.name for p in manifest_files()}
    assert set(k["resources"]) == names - {"secret.example.yaml"}
    assert len(k["resources"]) == len(set(k["resources"]))
    assert k["namespace"] == one("Namespace")["metadata"]["name"]
    [image] = k["images"]
    assert container()["image"].partition(":")[0] == image["name"]


# --------------------------------------------------------------------------- the Deployment


def test_three_replicas_with_probes_on_readyz_and_healthz() -> None:
    deployment = one("Deployment")
    assert deployment["spec"]["replicas"] == 3
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0
    c = container()
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == GATEWAY_PORT == gateway_config_data()["server"]["port"]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] in ("http", GATEWAY_PORT)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_grace_period_covers_prestop_drain_and_shutdown_timeout() -> None:
    command = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "/bin/sleep"
    pre_stop = int(command[1])
    server = gateway_config_data()["server"]
    assert pre_stop >= 5, "long enough for endpoints and load balancers to drop the pod"
    total = pre_stop + server.get("drain_delay_s", 0) + server["shutdown_timeout_s"]
    assert pod_spec()["terminationGracePeriodSeconds"] > total


def test_security_context_non_root_no_escalation_no_capabilities_read_only_root() -> None:
    pod, c = pod_spec(), container()
    sc = c["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True and sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == pod["securityContext"]["runAsUser"] == 10001  # the image's USER
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    assert one("ServiceAccount")["automountServiceAccountToken"] is False
    assert one("Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == (
        "restricted"
    )


def test_writable_only_where_declared_and_config_mounted_as_a_directory() -> None:
    c, pod = container(), pod_spec()
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert set(mounts) == {"/etc/fhir-gateway", "/var/lib/fhir-gateway"}
    assert mounts["/etc/fhir-gateway"]["readOnly"] is True
    assert not mounts["/var/lib/fhir-gateway"].get("readOnly", False)
    for m in c["volumeMounts"]:
        assert "subPath" not in m, "subPath mounts never see ConfigMap updates"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/var/lib/fhir-gateway"]["name"]]
    assert "projected" in volumes[mounts["/etc/fhir-gateway"]["name"]]
    assert c["args"] == ["serve", "--config", "/etc/fhir-gateway/config.yaml"]


def test_secrets_come_from_the_secret_and_the_template_holds_only_placeholders() -> None:
    secret = one("Secret")
    assert "data" not in secret  # no base64 blobs that could hide a real value
    values = secret["stringData"]
    assert all(v.startswith("CHANGE-ME") for v in values.values()), values
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container()["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert {r["name"] for r in refs.values()} == {secret["metadata"]["name"]}
    assert {r["key"] for r in refs.values()} == set(values)
    # every ${NAME} in the configuration is one of these, and nothing else is in `env`
    names = set(re.findall(r"\$\{(\w+)\}", gateway_config_text()))
    assert names == set(refs) == {e["name"] for e in container()["env"]}
    # the placeholder cursor key is refused by the gateway: a forgotten Secret fails closed
    env = {name: values[refs[name]["key"]] for name in names}
    with pytest.raises(Exception, match="cursor_keys"):
        parse_config(gateway_config_data(), base_dir=REPO, env=env)


# --------------------------------------------------------------------------- ConfigMaps


def materialise_volume(root: Path) -> Path:
    """The projected volume as the kubelet writes it: files in ``..<timestamp>``, ``..data``
    pointing there, and a symlink per top-level entry through ``..data``."""
    version = root / "..2026_01_01_00_00_00.000000001"
    [volume] = [v for v in pod_spec()["volumes"] if "projected" in v]
    for source in volume["projected"]["sources"]:
        cm = config_map(source["configMap"]["name"])
        items = source["configMap"]["items"]
        assert {i["key"] for i in items} == set(cm["data"]), "every key is mounted"
        for item in items:
            target = version / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(cm["data"][item["key"]], encoding="utf-8")
    (root / "..data").symlink_to(version.name)
    for entry in version.iterdir():
        (root / entry.name).symlink_to(f"..data/{entry.name}")
    return root / "config.yaml"


def test_the_config_map_is_a_configuration_the_gateway_accepts(tmp_path: Path) -> None:
    config_file = materialise_volume(tmp_path)
    key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    env = {"GATEWAY_CURSOR_KEY": key, "GATEWAY_INTROSPECTION_SECRET": "s3cret"}
    data = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    cfg = parse_config(data, base_dir=config_file.parent, env=env)
    assert cfg.server.port == GATEWAY_PORT
    assert cfg.policies.paths == [tmp_path / "policies"]
    assert cfg.server.trusted_proxies, "TLS ends at the ingress: its proxies must be trusted"
    assert cfg.phi.cursor_keys == [key]
    # the policies, read through the ConfigMap symlinks, compile
    policy_set = load_policy_set(cfg.policies.paths)
    ids = {p.id for p in policy_set.policies}
    assert {"sensitive-conditions", "unreleased-labs"} <= ids


def test_the_policies_config_map_is_the_shipped_policies_verbatim() -> None:
    data = config_map("fhir-gateway-policies")["data"]
    [volume] = [v for v in pod_spec()["volumes"] if "projected" in v]
    paths = {
        i["key"]: i["path"]
        for s in volume["projected"]["sources"]
        if s["configMap"]["name"] == "fhir-gateway-policies"
        for i in s["configMap"]["items"]
    }
    shipped = {
        str(p.relative_to(REPO)): p.read_text(encoding="utf-8")
        for p in (REPO / "policies").rglob("*.yaml")
    }
    mounted = {paths[k]: v for k, v in data.items()}
    assert mounted == shipped


# --------------------------------------------------------------------------- availability


def test_service_pdb_and_hpa_target_the_gateway() -> None:
    selector = one("Deployment")["spec"]["selector"]["matchLabels"]
    service = one("Service")
    assert service["spec"]["selector"] == selector
    [port] = service["spec"]["ports"]
    assert port["targetPort"] == "http"
    pdb = one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    assert 1 <= pdb["spec"]["minAvailable"] < one("Deployment")["spec"]["replicas"]
    hpa = one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": one("Deployment")["metadata"]["name"],
    }
    assert hpa["spec"]["minReplicas"] == 3 <= hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]
    assert container()["resources"]["requests"]["cpu"], "CPU utilisation needs a request"


# --------------------------------------------------------------------------- NetworkPolicy


def test_network_policy_ingress_only_to_the_gateway_port() -> None:
    policy = one("NetworkPolicy")["spec"]
    assert (
        policy["podSelector"]["matchLabels"] == one("Deployment")["spec"]["selector"]["matchLabels"]
    )
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    for rule in policy["ingress"]:
        assert rule.get("from"), "an ingress rule without `from` admits everyone"
    gateway, admin = policy["ingress"]
    assert gateway["ports"] == [{"protocol": "TCP", "port": GATEWAY_PORT}]
    # the admin port (metrics), and only from the monitoring namespace
    assert admin["ports"] == [{"protocol": "TCP", "port": ADMIN_PORT}]
    [peer] = admin["from"]
    assert set(peer) == {"namespaceSelector"}
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert ports == {"http": GATEWAY_PORT, "admin": ADMIN_PORT}
    server_fields = ServerConfig.model_fields
    if "admin_port" in server_fields:  # the admin listener (issue 8) is on by default there
        configured = gateway_config_data()["server"].get("admin_port")
        assert (configured or server_fields["admin_port"].default) == ADMIN_PORT


def test_network_policy_egress_only_to_dns_upstream_and_authorization_server() -> None:
    egress = one("NetworkPolicy")["spec"]["egress"]
    assert len(egress) == 3
    for rule in egress:
        assert rule.get("to") and rule.get("ports"), "no rule may allow any peer or any port"
        for peer in rule["to"]:
            if "ipBlock" in peer:
                assert peer["ipBlock"]["cidr"] != "0.0.0.0/0"
    dns, upstream, auth = egress
    assert {(p["protocol"], p["port"]) for p in dns["ports"]} == {("UDP", 53), ("TCP", 53)}
    assert dns["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    cfg = gateway_config_data()
    upstream_port = int(re.search(r":(\d+)/", cfg["upstream"]["url"]).group(1))  # type: ignore[union-attr]
    assert [p["port"] for p in upstream["ports"]] == [upstream_port]
    assert cfg["auth"]["introspection"]["endpoint"].startswith("https://")
    assert [p["port"] for p in auth["ports"]] == [443]
