"""LLM abstraction backend against a local fake OpenAI-compatible server (no network)."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared.findings import Findings, Tumor
from shared.text.lexicon import ReportError, abstract_report
from shared.text.llm import LLMAbstractor, get_abstractor

GOOD = {"tumors": [{"site": "rectum", "size_mm": 31.0}], "spleen": "enlarged", "liver": "normal",
        "kidney_left": "present", "kidney_right": "present", "bladder": "normal",
        "phase": "portal_venous", "other": ""}


class _Handler(BaseHTTPRequestHandler):
    mode = "good"
    requests: list = []

    def do_POST(self):  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, dict(self.headers), body))
        mode = type(self).mode
        if mode == "sleep":
            time.sleep(1.5)
        if mode == "http500":
            self.send_response(500)
            self.end_headers()
            return
        content = {"good": json.dumps(GOOD), "fenced": "```json\n" + json.dumps(GOOD) + "\n```",
                   "invalid": "{not json", "schema": json.dumps({**GOOD, "spleen": "huge"}),
                   "extra": json.dumps({**GOOD, "colour": "red"}), "sleep": json.dumps(GOOD)}[mode]
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        try:
            self.wfile.write(data.encode())
        except OSError:
            pass  # the client gave up (timeout test)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


REPORT = "Sigmoid carcinoma measuring 4 cm. Hepatic steatosis."
LEXICON = abstract_report(REPORT)


def test_good_answer_is_used(server):
    _Handler.mode, _Handler.requests = "good", []
    f = LLMAbstractor(url=server, model="tiny", api_key="k", timeout=5)(REPORT)
    assert f == Findings.from_dict(GOOD)
    path, headers, body = _Handler.requests[0]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer k"
    assert body["model"] == "tiny" and body["messages"][-1]["content"] == REPORT
    assert "spleen" in body["messages"][0]["content"]  # the schema is in the prompt


def test_fenced_json_is_accepted(server):
    _Handler.mode = "fenced"
    assert LLMAbstractor(url=server + "/v1", timeout=5)(REPORT).tumors == (Tumor("rectum", 31.0),)


@pytest.mark.parametrize("mode", ["invalid", "schema", "extra", "http500"])
def test_bad_answer_falls_back_to_lexicon(server, mode, caplog):
    _Handler.mode = mode
    with caplog.at_level(logging.WARNING, logger="shared.text.llm"):
        f = LLMAbstractor(url=server, timeout=5)(REPORT)
    assert f == LEXICON and "falling back" in caplog.text


def test_timeout_falls_back(server, caplog):
    _Handler.mode = "sleep"
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="shared.text.llm"):
        f = LLMAbstractor(url=server, timeout=0.5)(REPORT)
    assert f == LEXICON and "falling back" in caplog.text
    assert time.monotonic() - start < 1.4


def test_unreachable_server_falls_back(caplog):
    with caplog.at_level(logging.WARNING, logger="shared.text.llm"):
        f = LLMAbstractor(url="http://127.0.0.1:9", timeout=0.5)(REPORT)
    assert f == LEXICON


def test_env_configuration_and_factory(server, monkeypatch):
    monkeypatch.setenv("GUIDEGEN_LLM_URL", server)
    monkeypatch.setenv("GUIDEGEN_LLM_MODEL", "env-model")
    _Handler.mode, _Handler.requests = "good", []
    abstractor = get_abstractor("llm", timeout=5)
    assert abstractor(REPORT) == Findings.from_dict(GOOD)
    assert _Handler.requests[0][2]["model"] == "env-model"
    assert get_abstractor() is abstract_report
    with pytest.raises(ValueError, match="backend"):
        get_abstractor("gpt")


def test_bad_text_is_rejected_before_any_request(server):
    _Handler.mode, _Handler.requests = "good", []
    with pytest.raises(ReportError, match="empty"):
        LLMAbstractor(url=server)("   ")
    assert _Handler.requests == []


def test_missing_url_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("GUIDEGEN_LLM_URL", raising=False)
    with pytest.raises(ValueError, match="GUIDEGEN_LLM_URL"):
        LLMAbstractor()
