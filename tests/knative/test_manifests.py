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
    service = None
    for number in (1, 2, 3):
        service = m.service_update("iris", "ns", service, template={"metadata": {"name": f"iris-v{number}"}},
                                   tag=number)
    service = m.service_update("iris", "ns", service, live=live)
    traffic = service["spec"]["traffic"]
    assert traffic == [{"revisionName": "iris-v2", "percent": 90}, {"revisionName": "iris-v3", "percent": 10},
                       {"revisionName": "iris-v1", "percent": 0, "tag": "v1"},
                       {"revisionName": "iris-v2", "percent": 0, "tag": "v2"},
                       {"revisionName": "iris-v3", "percent": 0, "tag": "v3"}]
    assert m.state_of("iris", traffic) == live and m.tagged_versions("iris", traffic) == [1, 2, 3]
    m.check(service)
    # a new Service routes everything to its first version; later templates leave the traffic as it was
    first = m.service_update("iris", "ns", None, template={"metadata": {"name": "iris-v4"}})
    assert first["spec"]["traffic"] == [{"revisionName": "iris-v4", "percent": 100}]
    later = m.service_update("iris", "ns", first, template={"metadata": {"name": "iris-v5"}})
    assert later["spec"]["traffic"] == first["spec"]["traffic"]
    assert m.state_of("iris", m.alias_traffic("iris", AliasState(1, 2, 1.0))) == AliasState(1, 2, 1.0)
    untagged = m.service_update("iris", "ns", service, untag=2)["spec"]["traffic"]
    assert [e.get("tag") for e in untagged] == [None, None, "v1", "v3"]
    assert m.referenced("iris", [service]) == {2, 3}


def test_what_another_tool_routed_is_kept_by_every_write_but_a_move() -> None:
    """kn's own split and tags (a preview tag, three revisions) survive fnpack's deploys and deletes."""
    theirs = [{"revisionName": "iris-v1", "percent": 50}, {"revisionName": "iris-v2", "percent": 30},
              {"revisionName": "iris-v3", "percent": 20}, {"revisionName": "iris-v3", "percent": 0, "tag": "preview"}]
    service = {"metadata": {"name": "iris", "annotations": {"fnpack.dev/last-version": "3", "other/x": "y"}},
               "spec": {"template": {"metadata": {"name": "iris-v3"}}, "traffic": theirs}}
    deployed = m.service_update("iris", "ns", service, template={"metadata": {"name": "iris-v4"}},
                                annotations={m.LAST_VERSION: "4"})
    assert deployed["spec"]["traffic"] == theirs
    assert deployed["metadata"]["annotations"] == {"fnpack.dev/last-version": "4"}  # others' stay theirs
    tagged = m.service_update("iris", "ns", deployed, tag=4)["spec"]["traffic"]
    assert tagged[:4] == theirs and tagged[4] == {"revisionName": "iris-v4", "percent": 0, "tag": "v4"}
    moved = m.service_update("iris", "ns", service, live=AliasState(4))["spec"]["traffic"]
    assert moved[0] == {"revisionName": "iris-v4", "percent": 100} and moved[1]["tag"] == "preview"
    assert m.last_version(service) == 3 and m.last_version({"metadata": {"annotations": {m.LAST_VERSION: "x"}}}) == 0


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


@pytest.mark.parametrize("text", ['{"a": 1}', '["x"]', "[1]", '[{"after": {"primary": 0}}]', "not json",
                                  '[{"after": {"primary": 1}, "at": 5}]', '[{"after": {"primary": 1}, "undoes": "x"}]'])
def test_a_hand_edited_history_is_a_clear_error_naming_the_object(text: str) -> None:
    from fnpack.errors import FnpackError

    with pytest.raises(FnpackError) as caught:
        m.history_of({"metadata": {"name": "iris", "annotations": {m.HISTORY: text}}})
    assert "fnpack.dev/history annotation of iris is not an fnpack alias history" in caught.value.message


def test_the_history_annotation_stays_under_its_byte_budget() -> None:
    moves = [AliasMove(AliasState(1), AliasState(2), "me", "t", "x" * 5000) for _ in range(100)]
    text = m.history_text(moves)
    assert len(text) <= m.MAX_HISTORY_BYTES and len(m.history_of({"metadata": {"annotations": {m.HISTORY: text}}})) > 10


@pytest.mark.parametrize("uri, expected", [
    ("pvc://models/../etc", "no '..'"), ("pvc://Models/x", "PersistentVolumeClaim"),
    ("https://user:hunter2@store.local/fnpack", "no credentials"), ("s3://bucket//x", "empty parts")])
def test_storage_uris_that_escape_or_carry_secrets_are_refused(uri: str, expected: str) -> None:
    with pytest.raises(UsageError) as caught:
        KnativeSettings.layer({"storage": uri}, "the command line")
    assert expected in caught.value.message
    assert "hunter2" not in caught.value.message  # the password is not repeated


def test_where_the_cluster_is_never_comes_from_a_spec() -> None:
    """A cloned repository's fnpack.yaml, or an archive, must not pick this machine's cluster or run a
    kubeconfig's exec plugin."""
    for key in ("kubeconfig", "kube_context", "storage_path"):
        with pytest.raises(UsageError) as caught:
            KnativeSettings.from_spec({"knative": {key: "x"}})
        assert f"knative.{key}" in caught.value.message and "machine" in caught.value.message
