"""The optional LLM generator: caching, validation, retries and key handling.

A scripted OpenAI-compatible stub on 127.0.0.1 tests retries and validation exactly; a real
llama-cpp-python server serving the embedded SmolLM2 GGUF tests the plumbing end to end.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from workflow_scripts.facts.llm import LLMSettings, generate_llm_novel
from workflow_scripts.facts.schema import normalise_records

from conftest import REPO

SECRET = "sk-test-DO-NOT-LEAK-7731"
PROMPT = str(REPO / "workflow_scripts" / "facts" / "prompts" / "novel_facts_v1.txt")


def completion(content: str) -> dict:
    return {
        "id": "stub", "object": "chat.completion", "created": 0, "model": "stub",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
    }


class StubServer:
    """Answers /v1/chat/completions with a scripted list of (status, content) replies."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.requests = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({"auth": self.headers.get("Authorization"), "body": body})
                status, content = stub.replies.pop(0) if stub.replies else (500, None)
                payload = json.dumps(completion(content) if status == 200 else {"error": {"message": "busy"}})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(payload.encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.fixture
def stub():
    servers = []

    def make(replies):
        servers.append(StubServer(replies))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def settings(url, tmp_path, **kw):
    base = dict(base_url=url, model="stub", api_key_env="STUBBORN_TEST_KEY", prompt_file=PROMPT,
                facts_per_request=4, max_retries=3, backoff_s=0.01, timeout_s=10,
                cache_dir=str(tmp_path / "cache"))
    base.update(kw)
    return LLMSettings(**base)


GOOD = json.dumps({"facts": [
    {"id": 0, "subject": "Velmaria", "target_true": "Quorth", "target_new": "Tessaly"},
    {"id": 1, "subject": "Odile Marrak", "target_true": "Brannic", "target_new": "Zuvi"},
    {"id": 1, "subject": "Odile Marrak", "target_true": "Brannic", "target_new": "Zuvi"},  # duplicate
    {"id": 2, "subject": "Kestrel Vane", "target_true": "Ommo", "target_new": "Ommo"},  # invalid: equal targets
    {"id": 3, "subject": "France", "target_true": "Quorth", "target_new": "Zuvi"},  # invalid: a real name
    {"id": 3, "subject": "Drovia", "target_true": "Tessaly", "target_new": "Quorth"},
]})


def test_retries_validation_and_cache(stub, tmp_path, starter, monkeypatch, caplog):
    monkeypatch.setenv("STUBBORN_TEST_KEY", SECRET)
    server = stub([(429, None), (503, None), (200, GOOD)])
    cfg = settings(server.url, tmp_path)
    records, stats = generate_llm_novel(starter, 3, 0, cfg)
    assert (stats.requests, stats.retries, stats.accepted) == (3, 2, 3)
    assert (stats.rejected_duplicate, stats.rejected_invalid) == (1, 2)
    assert stats.reasons == {"duplicate subject or id": 1, "subject and targets not all different": 1, "reuses a real name": 1}
    assert [r["requested_rewrite"]["subject"] for r in records] == ["Velmaria", "Odile Marrak", "Drovia"]
    assert normalise_records(records, "llm") == records
    assert all(r["source"] == "llm" for r in records)
    # the schema went to the server, and the key only in the Authorization header
    body = server.requests[-1]["body"]
    assert body["response_format"]["type"] == "json_schema"
    assert server.requests[-1]["auth"] == f"Bearer {SECRET}"
    cached = list((tmp_path / "cache").iterdir())
    assert len(cached) == 1
    assert SECRET not in cached[0].read_text() and SECRET not in caplog.text

    # a rerun is served from the cache: nothing is sent
    silent = stub([])
    again, stats2 = generate_llm_novel(starter, 3, 0, settings(silent.url, tmp_path, base_url=server.url))
    assert stats2.requests == 0 and stats2.cache_hits == 1
    assert again == records


def test_unparsable_response_is_counted(stub, tmp_path, starter, monkeypatch):
    monkeypatch.setenv("STUBBORN_TEST_KEY", SECRET)
    server = stub([(200, "not json at all")] + [(200, json.dumps({"facts": []}))] * 10)
    records, stats = generate_llm_novel(starter, 2, 0, settings(server.url, tmp_path, facts_per_request=2))
    assert records == [] and stats.unparsable_responses == 1
    assert stats.requests == 3  # 3 x n source facts, 2 per request


def test_gives_up_after_max_retries(stub, tmp_path, starter, monkeypatch):
    monkeypatch.setenv("STUBBORN_TEST_KEY", SECRET)
    server = stub([(500, None)] * 10)
    with pytest.raises(RuntimeError, match="failed after 3 attempts: InternalServerError"):
        generate_llm_novel(starter, 2, 0, settings(server.url, tmp_path, max_retries=2))
    assert len(server.requests) == 3
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_missing_key_variable_is_named(tmp_path, starter, monkeypatch):
    monkeypatch.delenv("STUBBORN_TEST_KEY", raising=False)
    with pytest.raises(RuntimeError, match="'STUBBORN_TEST_KEY' .*is not set"):
        generate_llm_novel(starter, 2, 0, settings("http://127.0.0.1:9/v1", tmp_path))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server():
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is installed by make test")
    from workflow_scripts.models.loading import locate_embedded_gguf

    gguf = locate_embedded_gguf("smollm2")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
         "--port", str(port), "--n_threads", "2", "--n_ctx", "2048", "--model_alias", "smollm2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/models", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail("llama-cpp-python server exited at start")
                time.sleep(0.5)
        else:
            pytest.fail("llama-cpp-python server did not answer within 60 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_real_local_server_plumbing(llama_server, tmp_path, starter):
    cfg = settings(llama_server, tmp_path, model="smollm2", api_key_env=None, response_format="json_object",
                   facts_per_request=3, max_tokens=200, temperature=0.7, timeout_s=120)
    records, stats = generate_llm_novel(starter[:40], 2, 0, cfg)
    # a 135M model writes poor facts: what is tested is that every response was parsed, validated,
    # counted and cached, and that what was accepted is a valid record
    answered = stats.requests - stats.retries  # a busy machine may time out and retry
    assert 1 <= answered <= 2 and stats.cache_hits == 0
    assert len(list((tmp_path / "cache").iterdir())) == answered
    assert stats.accepted == len(records) <= 2
    assert stats.unparsable_responses + stats.rejected_invalid + stats.rejected_duplicate + stats.accepted > 0
    if records:
        assert normalise_records(records, "llm") == records
    again, stats2 = generate_llm_novel(starter[:40], 2, 0, cfg)
    assert stats2.requests == 0 and stats2.cache_hits == answered and again == records
