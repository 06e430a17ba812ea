"""The sidecar follows its rendered config object through a real API server.

Credentials are those of a pod: a ServiceAccount token limited by RBAC to the
one ConfigMap, and the cluster CA; the watcher code is the one the sidecar
runs (in-process here, and as `powgate sidecar` in the last test).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from _sidecar_process import (
    PodCredentials,
    config_reader,
    free_port_block,
    metric_value,
    powgate,
    ready,
    start_sidecar,
    start_standin,
)
from kubernetes import client as k8s

from powgate import CHALLENGE_PATH, Challenge, Issuer, KeyRing, solve
from powgate.client import PowAuth
from powgate.config import CONFIG_DATA_KEY, RouteConfig, SidecarConfig
from powgate_sidecar import ConfigMapWatcher, KubeClient, Sidecar
from powgate_testbed._process import ManagedProcess, stop_all, wait_until
from powgate_testbed.cluster import ClusterAccess, LocalCluster
from waiting import eventually_async

NAME = "powgate-chat"
GONE = "config watch expired (410 Gone); listing again"
_DEADLINE = 60.0


def config(difficulty: int, version: str) -> SidecarConfig:
    return SidecarConfig(
        policy="team/chat",
        version=version,
        difficulty=difficulty,
        routes=[RouteConfig(name="chat", paths=["/v1/*"])],
    )


@dataclass
class Sink:
    """Records what the watcher delivers, through the same parsing the sidecar uses."""

    applied: list[SidecarConfig] = field(default_factory=list)
    results: list[str] = field(default_factory=list)

    def apply_document(self, text: str | bytes | None, *, source: str) -> bool:
        if text is None:
            self.results.append("missing")
            return False
        try:
            parsed = SidecarConfig.from_json(text)
        except ValueError:
            self.results.append("invalid")
            return False
        self.applied.append(parsed)
        self.results.append("applied")
        return True

    def report_source_error(self, *, source: str, why: str) -> None:
        self.results.append("error")


async def eventually(check: Callable[[], bool], *, what: str) -> None:
    await eventually_async(check, what=what, timeout=_DEADLINE, interval=0.05)


@pytest.fixture
def pod_credentials(
    cluster: ClusterAccess, kube_client: k8s.ApiClient, namespace: str, tmp_path: Path
) -> PodCredentials:
    """A ServiceAccount allowed to get/list/watch the one ConfigMap, as the operator grants it."""
    return config_reader(
        cluster=cluster, kube_client=kube_client, namespace=namespace, name=NAME, root=tmp_path
    )


def put_config(kube_client: k8s.ApiClient, namespace: str, document: str) -> None:
    core = k8s.CoreV1Api(kube_client)
    body = k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name=NAME), data={CONFIG_DATA_KEY: document})
    try:
        core.replace_namespaced_config_map(NAME, namespace, body)
    except k8s.ApiException as exc:
        if exc.status != 404:
            raise
        core.create_namespaced_config_map(namespace, body)


@pytest.fixture
async def kube(pod_credentials: PodCredentials) -> AsyncIterator[KubeClient]:
    async with KubeClient(pod_credentials.endpoint()) as client:
        yield client


async def test_watch_applies_changes_and_keeps_the_last_good_on_bad_input(
    kube: KubeClient, kube_client: k8s.ApiClient, namespace: str
) -> None:
    put_config(kube_client, namespace, config(100, "v1").to_json())
    sink = Sink()
    watcher = ConfigMapWatcher(client=kube, namespace=namespace, name=NAME, sink=sink)
    task = asyncio.create_task(watcher.run())
    try:
        await eventually(lambda: [c.version for c in sink.applied] == ["v1"], what="initial list")
        put_config(kube_client, namespace, config(400, "v2").to_json())
        await eventually(lambda: len(sink.applied) == 2, what="update through the watch")
        assert sink.applied[-1].difficulty == 400
        put_config(kube_client, namespace, '{"difficulty": 0}')
        await eventually(lambda: sink.results[-1] == "invalid", what="invalid document seen")
        k8s.CoreV1Api(kube_client).delete_namespaced_config_map(NAME, namespace)
        await eventually(lambda: sink.results[-1] == "missing", what="deletion seen")
        put_config(kube_client, namespace, config(500, "v3").to_json())
        await eventually(lambda: sink.applied[-1].version == "v3", what="re-creation seen")
        assert "error" not in sink.results
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_rbac_refusal_is_an_error_then_a_rotated_token_is_used(
    pod_credentials: PodCredentials, kube_client: k8s.ApiClient, namespace: str
) -> None:
    put_config(kube_client, namespace, config(100, "v1").to_json())
    good = pod_credentials.token_file.read_text()
    pod_credentials.token_file.write_text("not-a-token")
    sink = Sink()
    async with KubeClient(pod_credentials.endpoint()) as client:
        watcher = ConfigMapWatcher(
            client=client, namespace=namespace, name=NAME, sink=sink, backoff_base=0.05
        )
        task = asyncio.create_task(watcher.run())
        try:
            await eventually(
                lambda: sink.results.count("error") >= 2, what="401 answers counted as errors"
            )
            assert sink.applied == []
            pod_credentials.token_file.write_text(
                good
            )  # the kubelet's rotation: same path, new content
            await eventually(lambda: bool(sink.applied), what="the rotated token accepted")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_many_watchers_share_one_client(
    kube: KubeClient, kube_client: k8s.ApiClient, namespace: str
) -> None:
    put_config(kube_client, namespace, config(100, "v1").to_json())
    sinks = [Sink() for _ in range(50)]
    watchers = [
        ConfigMapWatcher(client=kube, namespace=namespace, name=NAME, sink=s) for s in sinks
    ]
    tasks = [asyncio.create_task(w.run()) for w in watchers]
    try:
        await eventually(lambda: all(s.applied for s in sinks), what="every watcher synced")
        put_config(kube_client, namespace, config(300, "v2").to_json())
        await eventually(
            lambda: all(s.applied[-1].version == "v2" for s in sinks), what="every watcher updated"
        )
    finally:
        for task in tasks:
            task.cancel()
        # Let every watch unwind and hand its connection back before the
        # client closes: a cancelled task that never ran again leaks its socket.
        await asyncio.gather(*tasks, return_exceptions=True)


# Why a restarted API server, and not etcd compaction or a flood of changes:
# watches are served from the API server's watch cache, not from etcd.
# Compacting etcd (its /v3/kv/compaction) leaves a version the cache still
# holds watchable: the cache replays the events, and only drops its list
# snapshots on compaction. The cache's own window keeps every event of at
# least the last 75 s (it grows rather than evict fresher ones), so outrunning
# it means over a minute of waiting. A restarted API server starts its cache
# at etcd's current revision: a version from before the restart is older than
# anything it holds, and a WATCH from it answers 410 at once, every time. It is
# also what sidecars meet on every control-plane upgrade.
async def test_watch_lists_again_after_its_api_server_restarted(
    local_cluster: LocalCluster | None,
    pod_credentials: PodCredentials,
    kube_client: k8s.ApiClient,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if local_cluster is None:
        pytest.skip("needs the local control plane: runs a second API server on its etcd")
    caplog.set_level(logging.INFO, logger="powgate.sidecar")
    put_config(kube_client, namespace, config(100, "v1").to_json())
    sidecar = Sidecar(upstream="http://127.0.0.1:9", keyring=KeyRing.generate(), config=None)

    def version() -> str | None:
        return sidecar.config.version if sidecar.config is not None else None

    with local_cluster.apiserver_replica() as replica:
        endpoint = dataclasses.replace(pod_credentials.endpoint(), api_url=replica.server)
        async with KubeClient(endpoint) as client:
            watcher = ConfigMapWatcher(
                client=client,
                namespace=namespace,
                name=NAME,
                sink=sidecar,
                backoff_base=0.05,
                backoff_cap=0.5,
            )
            task = asyncio.create_task(watcher.run())
            try:
                await eventually(lambda: version() == "v1", what="initial list")
                # Off the event loop, so the watcher lives through the outage
                # as a sidecar does; the change goes through the first API
                # server while the watcher's is down.
                await asyncio.to_thread(replica.stop)
                put_config(kube_client, namespace, config(700, "v2").to_json())
                await asyncio.to_thread(replica.start)
                await eventually(lambda: version() == "v2", what="the change made meanwhile")
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    # The 410 was met, and the change arrived through the LIST that followed it.
    messages = [record.getMessage() for record in caplog.records]
    assert GONE in messages
    after = caplog.records[messages.index(GONE) :]
    applied = [r for r in after if r.getMessage() == "configuration applied"]
    assert [getattr(r, "version", None) for r in applied] == ["v2"]
    labels = {"source": "kubernetes", "result": "applied"}
    assert sidecar.metrics.registry.get_sample_value("powgate_config_reloads_total", labels) == 2
    assert sidecar.config is not None
    assert sidecar.config.difficulty == 700


# -- the sidecar as a process, in front of the stand-in AI service ---------------


@dataclass
class Stack:
    """`powgate standin` behind `powgate sidecar`, both real processes."""

    sidecar_url: str
    metrics_url: str
    standin_url: str
    config_file: Path
    key_file: Path
    processes: list[ManagedProcess]

    def metric(self, url: str, sample: str) -> float:
        """The value of one exposition line (0 if absent)."""
        return metric_value(url, sample)

    def sidecar_metric(self, sample: str) -> float:
        return self.metric(self.metrics_url, sample)

    def upstream_requests(self) -> float:
        text = httpx.get(self.standin_url + "/metrics", timeout=10).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("powgate_standin_requests_total{")
        )

    def challenge(self, path: str = "/v1/chat/completions") -> Challenge:
        response = httpx.get(self.sidecar_url + CHALLENGE_PATH, params={"path": path}, timeout=10)
        assert response.status_code == 200
        return Challenge.from_json(response.content)


@contextlib.contextmanager
def stack(
    tmp_path: Path,
    *,
    config_args: list[str] | None = None,
    extra: Sequence[str] = (),
    workers: int = 1,
) -> Iterator[Stack]:
    config_file, key_file = tmp_path / "config.json", tmp_path / "keyring.json"
    config_file.write_text(config(100, "v1").to_json())
    KeyRing.generate().save(key_file)
    standin, standin_url = start_standin(tmp_path=tmp_path)
    processes = [standin]
    try:
        sidecar, endpoints = start_sidecar(
            tmp_path=tmp_path,
            upstream=standin_url,
            key_file=key_file,
            config_args=(
                config_args if config_args is not None else ["--config-file", str(config_file)]
            ),
            extra=extra,
            workers=workers,
        )
        processes.insert(0, sidecar)
        endpoints.wait_ready(watch=processes)
        yield Stack(
            endpoints.url, endpoints.metrics_url, standin_url, config_file, key_file, processes
        )
    finally:
        stop_all(processes, grace=10)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Stack]:
    with stack(tmp_path) as started:
        yield started


CHAT = {"model": "standin", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}


def test_sdk_client_solves_through_the_sidecar(running: Stack) -> None:
    with httpx.Client(base_url=running.sidecar_url, auth=PowAuth(), timeout=30) as client:
        response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"]
    assert (
        running.sidecar_metric(
            'powgate_requests_total{outcome="admitted",reason="ok",route="chat"}'
        )
        == 1
    )
    assert (
        running.sidecar_metric(
            'powgate_requests_total{outcome="challenged",reason="missing",route="chat"}'
        )
        == 1
    )
    assert running.upstream_requests() == 1


def test_openai_sdk_streams_through_the_sidecar(running: Stack) -> None:
    openai = pytest.importorskip("openai")
    http_client = httpx.Client(auth=PowAuth(), timeout=30)
    client = openai.OpenAI(
        base_url=running.sidecar_url + "/v1", api_key="unused", http_client=http_client
    )
    stream = client.chat.completions.create(
        model="standin", messages=CHAT["messages"], max_tokens=8, stream=True
    )
    first = next(iter(stream))
    # The first event is here while the stand-in is still generating the rest.
    assert running.metric(running.standin_url, "powgate_standin_in_flight_requests") == 1
    assert first.choices is not None
    rest = list(stream)
    assert rest
    http_client.close()


def test_hostile_requests_never_reach_the_upstream(running: Stack, tmp_path: Path) -> None:
    url = running.sidecar_url + "/v1/chat/completions"
    keyring = KeyRing.load(running.key_file)
    binding = "team/chat:chat"
    stale = Issuer(keyring=keyring, clock=lambda: time.time() - 3600).issue(
        difficulty=100, ttl=60, binding=binding
    )
    fresh = running.challenge()
    good = fresh.solution(solve(fresh).number).encode()
    forged = Challenge(fresh.algorithm, fresh.challenge, fresh.maxnumber, fresh.salt, "0" * 64)
    cases = {
        "expired": stale.solution(solve(stale).number).encode(),
        "bad_signature": forged.solution(solve(forged).number).encode(),
        "malformed": "%%%",
        "oversized": "A" * 5000,  # over the payload cap, under the header-size cap
    }
    for reason, payload in cases.items():
        response = httpx.post(url, json=CHAT, headers={"X-Powgate-Solution": payload}, timeout=10)
        assert response.status_code == 428, reason
        assert Challenge.from_json(response.content).maxnumber == 100
        sample = f'powgate_requests_total{{outcome="rejected",reason="{reason}",route="chat"}}'
        assert running.sidecar_metric(sample) == 1, reason
    huge = httpx.post(url, content=b"x" * (40 * 1024 * 1024), timeout=60)
    assert huge.status_code == 428  # no solution: refused before the body matters
    assert (
        httpx.post(url, json=CHAT, headers={"X-Powgate-Solution": good}, timeout=30).status_code
        == 200
    )
    replay = httpx.post(url, json=CHAT, headers={"X-Powgate-Solution": good}, timeout=30)
    assert replay.status_code == 428
    assert (
        running.sidecar_metric(
            'powgate_requests_total{outcome="rejected",reason="replayed",route="chat"}'
        )
        == 1
    )
    # Slowloris: headers never finished; the sidecar hangs up after its header timeout.
    host, port = running.sidecar_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        assert sock.recv(1024) == b""
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"GARBAGE\x00\x01 / HTTP/1.1\r\n\r\n")
        assert sock.recv(1024).split(b"\r\n")[0].endswith(b" 400 Bad Request")
    assert running.sidecar_metric('powgate_client_errors_total{kind="bad_request"}') == 1
    assert running.upstream_requests() == 1  # only the one admitted request


def test_config_file_reload_in_a_running_process(running: Stack) -> None:
    old = running.challenge()
    running.config_file.write_text(config(250, "v2").to_json())
    wait_until(
        lambda: running.challenge().maxnumber == 250,
        what="new difficulty",
        timeout=_DEADLINE,
        watch=running.processes,
    )
    payload = old.solution(solve(old).number).encode()
    with httpx.Client(base_url=running.sidecar_url, timeout=30) as client:
        response = client.post(
            "/v1/chat/completions", json=CHAT, headers={"X-Powgate-Solution": payload}
        )
    assert response.status_code == 200  # issued before the change, still valid
    running.config_file.write_text("{ not json")
    sample = 'powgate_config_reloads_total{result="invalid",source="file"}'
    wait_until(
        lambda: running.sidecar_metric(sample) == 1,
        what="invalid counted",
        timeout=_DEADLINE,
        watch=running.processes,
    )
    assert running.challenge().maxnumber == 250
    assert running.sidecar_metric('powgate_config_info{policy="team/chat",version="v2"}') == 1


def test_workers_share_the_port(tmp_path: Path) -> None:
    with stack(tmp_path, workers=2) as running:
        port = int(running.metrics_url.rsplit(":", 1)[1])
        second = f"http://127.0.0.1:{port + 1}"
        wait_until(
            lambda: ready(second + "/readyz"),
            what="second worker",
            timeout=_DEADLINE,
            watch=running.processes,
        )
        with httpx.Client(base_url=running.sidecar_url, auth=PowAuth(), timeout=30) as client:
            for _ in range(20):
                assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
        admitted = 'powgate_requests_total{outcome="admitted",reason="ok",route="chat"}'
        assert running.sidecar_metric(admitted) + running.metric(second, admitted) == 20


def test_a_worker_that_cannot_start_stops_the_sidecar(tmp_path: Path) -> None:
    """Half a sidecar must not go on serving: a worker that cannot bind its metrics
    port ends the others, and the sidecar exits with the worker's error, so the
    kubelet restarts the container rather than the pod serving on one worker."""
    config_file, key_file = tmp_path / "config.json", tmp_path / "keyring.json"
    config_file.write_text(config(100, "v1").to_json())
    KeyRing.generate().save(key_file)
    metrics = free_port_block(2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", metrics + 1))  # worker 1's metrics port
        taken.listen()
        with subprocess.Popen(
            [
                "env",
                f"POWGATE_LISTEN=127.0.0.1:{free_port_block(1)}",
                "POWGATE_UPSTREAM=http://127.0.0.1:9",
                f"POWGATE_METRICS_LISTEN=127.0.0.1:{metrics}",
                f"POWGATE_KEY_FILE={key_file}",
                *powgate("sidecar", "--config-file", str(config_file), "--workers", "2"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # so a failure of this test leaves no worker behind
        ) as sidecar:
            try:
                _, errors = sidecar.communicate(timeout=_DEADLINE)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(sidecar.pid, signal.SIGKILL)
    assert sidecar.returncode == 2, errors
    assert "address already in use" in errors.lower()


def test_sidecar_process_follows_the_config_object(
    pod_credentials: PodCredentials, kube_client: k8s.ApiClient, namespace: str, tmp_path: Path
) -> None:
    put_config(kube_client, namespace, config(100, "v1").to_json())
    args = pod_credentials.sidecar_args(namespace=namespace, name=NAME)
    with stack(tmp_path, config_args=args) as running:
        assert running.challenge().maxnumber == 100
        put_config(kube_client, namespace, config(700, "v2").to_json())
        wait_until(
            lambda: running.challenge().maxnumber == 700,
            what="watched update",
            timeout=_DEADLINE,
            watch=running.processes,
        )
        assert running.sidecar_metric('powgate_config_info{policy="team/chat",version="v2"}') == 1
        put_config(kube_client, namespace, '{"mode": "sometimes"}')
        sample = 'powgate_config_reloads_total{result="invalid",source="kubernetes"}'
        wait_until(
            lambda: running.sidecar_metric(sample) == 1,
            what="invalid counted",
            timeout=_DEADLINE,
            watch=running.processes,
        )
        assert running.challenge().maxnumber == 700
