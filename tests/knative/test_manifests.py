"""The Knative objects fnpack writes, without a server: the spec's scaling, resources and GPU settings in the
revision template, traffic for aliases and versions, what Knative's webhook would refuse, the history
annotation. What the real API server makes of them is in test_knative.py."""

from __future__ import annotations

import pytest

from fnpack.errors import UsageError
from fnpack.targets.knative import manifests as m
from fnpack.targets.knative.settings import KnativeSettings
from fnpack.versions import AliasMove, AliasState, rollback_step

SHA = "ab" * 32


def template(spec: dict | None = None, settings: KnativeSettings | None = None,
             storage: m.PodStorage | None = None) -> dict:
    return m.revision_template(function="iris", number=3, sha256=SHA, archive_uri=f"s3://models/archives/{SHA}.zip",
                               spec=spec or {}, runtime="python3.11", settings=settings or KnativeSettings(),
                               storage=storage or m.PodStorage(), created_at="2026-12-01T00:00:00+00:00",
                               actor="me@here")


def test_the_template_runs_the_worker_on_the_archive_with_the_spec_scaling_and_resources() -> None:
    made = template({"scaling": {"min": 0, "max": 7, "target_concurrency": 5, "idle_timeout": 90.5},
                     "resources": {"memory": 2048, "cpu": 1.5, "timeout": 12.2}})
    assert made["metadata"]["name"] == "iris-v3"
    assert made["metadata"]["labels"] == {m.MANAGED_BY: "fnpack", m.FUNCTION: "iris", m.VERSION: "3"}
    notes = made["metadata"]["annotations"]
    assert notes[m.SHA256] == SHA and notes[m.NO_GC] == "true"
    assert (notes["autoscaling.knative.dev/min-scale"], notes["autoscaling.knative.dev/max-scale"],
            notes["autoscaling.knative.dev/target"]) == ("0", "7", "5")
    assert notes["autoscaling.knative.dev/scale-to-zero-pod-retention-period"] == "91s"
    assert notes["serving.knative.dev/progress-deadline"] == "600s"
    pod = made["spec"]
    assert pod["containerConcurrency"] == 5 and pod["timeoutSeconds"] == 13
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/fnpack/runtime:python3.11-cpu"
    assert container["command"] == ["python", "-m", "fnpack.worker"]
    assert container["args"] == ["--archive", f"s3://models/archives/{SHA}.zip", "--sha256", SHA]
    assert container["resources"] == {"requests": {"memory": "2048Mi", "cpu": "1500m"},
                                      "limits": {"memory": "2048Mi", "cpu": "1500m"}}
    assert container["readinessProbe"]["httpGet"]["path"] == m.READY_PATH
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["FNPACK_FUNCTION"] == "iris" and env["FNPACK_MODEL_VERSION"] == "3"
    assert "nodeSelector" not in pod and "tolerations" not in pod and "volumes" not in pod


def test_a_gpu_function_gets_gpu_limits_node_selector_tolerations_the_cuda_image_and_a_long_deadline() -> None:
    made = template({"resources": {"gpu": 2, "node_selector": {"nvidia.com/gpu.product": "H100"},
                                   "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                    "effect": "NoSchedule", "tolerationSeconds": 30}]}})
    pod = made["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["requests"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule",
                                   "tolerationSeconds": 30}]
    assert pod["containers"][0]["image"] == "ghcr.io/fnpack/runtime:python3.11-cuda13"
    assert made["metadata"]["annotations"]["serving.knative.dev/progress-deadline"] == "1800s"
    own = template({"resources": {"gpu": 1}}, KnativeSettings(image="registry.local/rt:1", progress_deadline=900))
    assert own["spec"]["containers"][0]["image"] == "registry.local/rt:1"
    assert own["metadata"]["annotations"]["serving.knative.dev/progress-deadline"] == "900s"


def test_storage_adds_its_environment_secret_and_volume_and_settings_their_own() -> None:
    storage = m.PodStorage(env={"AWS_ENDPOINT_URL": "http://minio:9000"}, secret="minio-creds",
                           volumes=({"name": "fnpack-models", "persistentVolumeClaim": {"claimName": "models"}},),
                           mounts=({"name": "fnpack-models", "mountPath": "/mnt/fnpack-models"},))
    made = template(settings=KnativeSettings(environment={"LOG_LEVEL": "debug"}, service_account="runner"),
                    storage=storage)
    pod = made["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000" and env["LOG_LEVEL"] == "debug"
    assert container["envFrom"] == [{"secretRef": {"name": "minio-creds"}}]
    assert container["volumeMounts"][0]["mountPath"] == "/mnt/fnpack-models"
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "models"
    assert pod["serviceAccountName"] == "runner"


@pytest.mark.parametrize("bad", [{"environment": {"PORT": "1"}}, {"environment": {"FNPACK_CACHE_DIR": "/x"}},
                                 {"namespace": "Not_A_Name"}, {"storage": "ftp://x"}, {"storage": "s3://"},
                                 {"ingress": "host:80"}, {"image": "has space"}, {"progress_deadline": 5}])
def test_settings_refuse_what_knative_or_kubernetes_would(bad: dict) -> None:
    with pytest.raises(UsageError) as caught:
        KnativeSettings.layer(bad, "the command line")
    assert "knative settings from the command line" in caught.value.message


def test_traffic_for_live_and_version_tags_reads_back_as_the_same_alias() -> None:
    live = AliasState(2, 3, 0.1)
    traffic = m.service_traffic("iris", live, 3, [1, 2, 3])
    assert traffic == [{"revisionName": "iris-v2", "percent": 90}, {"revisionName": "iris-v3", "percent": 10},
                       {"revisionName": "iris-v1", "percent": 0, "tag": "v1"},
                       {"revisionName": "iris-v2", "percent": 0, "tag": "v2"},
                       {"revisionName": "iris-v3", "percent": 0, "tag": "v3"}]
    assert m.state_of("iris", traffic) == live and m.tagged_versions("iris", traffic) == [1, 2, 3]
    m.check(m.service_manifest("iris", "ns", {"metadata": {"name": "iris-v3"}}, traffic, {}))
    # until live is set, Knative still routes the Service: all of it to the newest version
    assert m.service_traffic("iris", None, 4, [4])[0] == {"revisionName": "iris-v4", "percent": 100}
    assert m.state_of("iris", m.alias_traffic("iris", AliasState(1, 2, 1.0))) == AliasState(1, 2, 1.0)


def test_traffic_another_tool_wrote_is_no_alias_fnpack_can_name() -> None:
    assert m.state_of("iris", [{"latestRevision": True, "percent": 100}]) is None
    assert m.state_of("iris", [{"revisionName": "other-v1", "percent": 100}]) is None
    assert m.state_of("iris", [{"revisionName": f"iris-v{n}", "percent": p} for n, p in ((1, 50), (2, 30), (3, 20))]) \
        is None
    assert m.version_of("iris", "iris-canary-v2") is None and m.version_of("iris-canary", "iris-canary-v2") == 2


def test_a_canary_weight_between_whole_percents_is_refused() -> None:
    assert m.percent(0.07) == 7 and m.percent(0.0) == 0 and m.percent(1.0) == 100
    with pytest.raises(UsageError) as caught:
        m.percent(0.125)
    assert "whole percents" in caught.value.message and "0.12 or 0.13" in (caught.value.hint or "")


def test_what_the_webhook_would_refuse_is_refused_before_sending() -> None:
    def service(revision: str, traffic: list[dict]) -> dict:
        return m.service_manifest("iris", "ns", {"metadata": {"name": revision}}, traffic, {})

    cases = {
        "does not start with 'iris-'": service("other-v1", [{"revisionName": "other-v1", "percent": 100}]),
        "sum to 90": service("iris-v1", [{"revisionName": "iris-v1", "percent": 90}]),
        "not unique": service("iris-v1", [{"revisionName": "iris-v1", "percent": 100, "tag": "v1"},
                                           {"revisionName": "iris-v2", "percent": 0, "tag": "v1"}]),
        "over 63": service("iris-v1", [{"revisionName": "iris-v1", "percent": 100, "tag": "t" * 60}]),
    }
    for expected, manifest in cases.items():
        with pytest.raises(UsageError) as caught:
            m.check(manifest)
        assert expected in caught.value.message, (expected, caught.value.message)
    with pytest.raises(UsageError, match="at most 63"):
        m.route_name("f" * 40, "a" * 30)


def test_the_history_annotation_keeps_the_newest_moves_and_rollbacks_still_skip_what_they_undid() -> None:
    moves = [AliasMove(AliasState(n) if n else None, AliasState(n + 1), "me", f"t{n}") for n in range(m.MAX_MOVES + 5)]
    moves.append(AliasMove(AliasState(m.MAX_MOVES + 5), AliasState(m.MAX_MOVES + 4), "me", "t", undoes=len(moves) - 1))
    obj = {"metadata": {"name": "iris", "annotations": {m.HISTORY: m.history_text(moves)}}}
    kept = m.history_of(obj)
    assert len(kept) == m.MAX_MOVES and kept[-1].undoes == m.MAX_MOVES - 2
    assert kept[-2] == moves[-2]
    index, state = rollback_step(kept)  # the undone move is skipped, as before trimming
    assert (index, state) == (m.MAX_MOVES - 3, moves[-3].before)
    assert m.history_of({"metadata": {"annotations": {}}}) == []
