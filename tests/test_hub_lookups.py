"""Hub look-ups for random-weight variants: one connection attempt per source, none when offline.

A loopback server stands in for a hub on a network that drops packets: it accepts connections,
reads the request, and never answers. It stops by itself after SERVER_LIFETIME_S.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from conftest import ROOT

SERVER_LIFETIME_S = 120.0
SOURCES = ("adept/fuyu-8b", "example-org/fuyu-copy")

# Loads every source as several random-weight variants would, through load_model; the full-size
# model itself is replaced by a one-layer stand-in, so nothing of 9 billion parameters is built.
LOADS = """
import json, sys, time
import torch, transformers
transformers.FuyuForCausalLM._from_config = classmethod(lambda cls, config, **kw: torch.nn.Linear(1, 1))
from fuyu_ray.job.cells import Variant
from fuyu_ray.bench.models import load_model
started = time.monotonic()
notes = []
for source in %r:
    for preset in ("fp32", "fp16", "bf16", "eager", "compile"):
        loaded = load_model(Variant(source, "random", "cpu", preset))
        notes.append(loaded.tokenizer_note)
print(json.dumps({"seconds": time.monotonic() - started, "notes": notes}))
""" % (SOURCES,)


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never answers; counts them, with the request line of each."""

    def __init__(self, lifetime_s: float = SERVER_LIFETIME_S):
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.socket.settimeout(0.1)
        self.port = self.socket.getsockname()[1]
        self.requests: list[str] = []
        self._connections: list[socket.socket] = []
        self._deadline = time.monotonic() + lifetime_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> "SilentServer":
        self._thread.start()
        return self

    def _serve(self) -> None:
        try:
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                self._accept_one()
                self._read_request_lines()
        finally:
            for connection in self._connections:
                connection.close()
            self.socket.close()

    def _accept_one(self) -> None:
        try:
            connection, _ = self.socket.accept()
        except (socket.timeout, OSError):
            return
        connection.settimeout(0.05)
        self._connections.append(connection)
        self.requests.append("")

    def _read_request_lines(self) -> None:
        for index, connection in enumerate(self._connections):
            if "\n" in self.requests[index]:
                continue
            try:
                self.requests[index] += connection.recv(4096).decode("latin-1")
            except (socket.timeout, OSError):
                pass

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def request_lines(self) -> list[str]:
        return [request.split("\r\n", 1)[0] for request in self.requests]

    def per_source(self) -> dict[str, int]:
        return {source: sum(f"/{source}/" in line for line in self.request_lines()) for source in SOURCES}


def run_loads(server: SilentServer, tmp_path, **env) -> tuple[subprocess.CompletedProcess, float]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    environ.update(
        HF_ENDPOINT=f"http://127.0.0.1:{server.port}",
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_ETAG_TIMEOUT="1",
        HF_HUB_DOWNLOAD_TIMEOUT="1",
        **env,
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", LOADS], cwd=ROOT, capture_output=True, text=True, timeout=180, env=environ
    )
    return result, time.monotonic() - started


def test_a_hub_that_never_answers_costs_one_attempt_per_source(tmp_path):
    with SilentServer() as server:
        result, seconds = run_loads(server, tmp_path)
        time.sleep(0.3)  # let the server read the last request line
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(report["notes"]) == 5 * len(SOURCES)
    assert all(note and "built-in tiny tokenizer used" in note for note in report["notes"])
    lines = server.request_lines()
    # Besides the sources, huggingface_hub itself asks once per process for its agent registry (3 s timeout).
    looked_up = [line for line in lines if "/api/agent-harnesses" not in line]
    assert len(looked_up) <= len(SOURCES) and len(lines) - len(looked_up) <= 1, lines
    assert all(count <= 1 for count in server.per_source().values()), lines
    assert seconds < 180, seconds  # a second of timeout per source, not a timeout and retries per file and variant


def test_with_hf_hub_offline_nothing_tries_the_network(tmp_path):
    with SilentServer() as server:
        result, _ = run_loads(server, tmp_path, HF_HUB_OFFLINE="1")
        time.sleep(0.3)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert server.requests == []


@pytest.mark.parametrize("value, expected", [(None, "1"), ("0", "0"), ("1", "1")])
def test_the_gpu_check_runs_offline_unless_the_environment_says_otherwise(value, expected):
    from fuyu_ray.driver.gpu_check import hub_environment

    environ = {} if value is None else {"HF_HUB_OFFLINE": value}
    hub_environment(environ)
    assert environ["HF_HUB_OFFLINE"] == expected


def test_hub_access_is_decided_once_per_source(monkeypatch, tmp_path):
    from fuyu_ray.bench import models

    probes = []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(models, "_hub_access", {})
    monkeypatch.setattr(
        models, "_probe_hub", lambda source: probes.append(source) or "the hub did not answer (ConnectTimeout)"
    )
    for _ in range(3):
        assert models.hub_access("org/a") == (True, "the hub did not answer (ConnectTimeout)")
        assert models.hub_access("org/b")[0] is True
    assert probes == ["org/a", "org/b"]
    assert models.hub_access(str(tmp_path)) == (False, None)  # a local directory: no network at all
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models.hub_access("org/c") == (True, "HF_HUB_OFFLINE is set") and probes == ["org/a", "org/b"]
