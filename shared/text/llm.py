"""Optional LLM abstraction backend: an OpenAI-compatible `/v1/chat/completions` endpoint.

The model is asked for one JSON object in the Findings schema (`findings_json_schema()`); the
answer is parsed with `Findings.from_dict`. On timeout, HTTP/network error, invalid JSON or a
schema violation the backend logs a warning and falls back to the deterministic lexicon, so a
flaky server never stops a batch. Bad text (empty, binary, too long) is rejected before any
request, with the same ReportError as the lexicon. Standard library only (urllib).

Configuration: arguments, else the env vars GUIDEGEN_LLM_URL (base URL, e.g.
http://localhost:8000 or http://localhost:8000/v1), GUIDEGEN_LLM_MODEL, GUIDEGEN_LLM_API_KEY.
"""

from __future__ import annotations

import json
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from shared.findings import Findings, FindingsError, findings_json_schema
from shared.text.lexicon import abstract_report, validate_report

log = logging.getLogger(__name__)

Abstractor = Callable[[str], Findings]

SYSTEM_PROMPT = (
    "You abstract abdominal CT radiology reports (any language) into structured findings. "
    "Answer with ONE JSON object and nothing else, valid under this JSON schema:\n{schema}\n"
    "Rules: colorectal tumours only, one entry per distinct tumour; site is one of ascending "
    "(cecum, ileocecal valve, hepatic flexure, right colon), transverse, descending (splenic "
    "flexure, left colon), sigmoid (rectosigmoid), rectum, or null if the segment is not stated; "
    "size_mm is the largest dimension in millimetres or null. Negated findings are absent. "
    "Spleen longer than 13 cm is enlarged. A nephrectomy or a solitary contralateral kidney "
    "means that kidney is absent. phase: portal_venous for contrast-enhanced, non_contrast for "
    "unenhanced, unknown if not stated. Put sentences you could not map into 'other'."
)


class LLMError(RuntimeError):
    """The endpoint did not give a usable answer (the caller falls back to the lexicon)."""


class LLMAbstractor:
    """Callable report -> Findings through a chat endpoint, with lexicon fallback."""

    def __init__(
        self,
        url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        fallback: Abstractor | None = abstract_report,
    ) -> None:
        url = url or os.environ.get("GUIDEGEN_LLM_URL")
        if not url:
            raise ValueError("LLM backend: no URL (argument `url` or env GUIDEGEN_LLM_URL)")
        base = url.rstrip("/")
        base = base.removesuffix("/chat/completions")
        self.endpoint = (base if base.endswith("/v1") else base + "/v1") + "/chat/completions"
        self.model = model or os.environ.get("GUIDEGEN_LLM_MODEL") or "default"
        self.api_key = api_key or os.environ.get("GUIDEGEN_LLM_API_KEY")
        self.timeout = float(timeout)
        self.fallback = fallback

    def request(self, text: str) -> dict[str, Any]:
        """One chat-completion call; returns the parsed JSON object or raises LLMError."""
        body = {
            "model": self.model,
            "temperature": 0,
            "response_format": {"type": "json_object"},
            "messages": [
                {"role": "system",
                 "content": SYSTEM_PROMPT.format(schema=json.dumps(findings_json_schema()))},
                {"role": "user", "content": text},
            ],
        }
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.endpoint, data=json.dumps(body).encode(), headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                payload = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            raise LLMError(f"HTTP {e.code} from {self.endpoint}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise LLMError(f"no answer from {self.endpoint} ({e})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LLMError(f"response is not JSON ({e})") from None
        try:
            content = payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise LLMError("response has no choices[0].message.content") from None
        return _json_object(content)

    def __call__(self, text: str | bytes) -> Findings:
        text = validate_report(text)
        try:
            answer = self.request(text)
            if not isinstance(answer.get("other", ""), str):
                raise LLMError("schema violation: 'other' is not a string")
            return Findings.from_dict(answer)
        except (LLMError, FindingsError, ValueError, TypeError) as e:
            if self.fallback is None:
                raise
            log.warning("LLM abstraction failed (%s); falling back to the lexicon", e)
            return self.fallback(text)


def _json_object(content: Any) -> dict[str, Any]:
    """The JSON object in a model answer (tolerates a ```json fence around it)."""
    if not isinstance(content, str):
        raise LLMError("message content is not text")
    fenced = re.search(r"```(?:json)?\s*(.*?)```", content, re.S)
    raw = fenced.group(1) if fenced else content
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        raise LLMError(f"answer is not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise LLMError("answer is not a JSON object")
    return obj


def get_abstractor(backend: str = "lexicon", **kw: Any) -> Abstractor:
    """'lexicon' (deterministic, default) or 'llm' (LLMAbstractor(**kw), lexicon fallback)."""
    if backend == "lexicon":
        if kw:
            raise ValueError(f"lexicon backend takes no options, got {sorted(kw)}")
        return abstract_report
    if backend == "llm":
        return LLMAbstractor(**kw)
    raise ValueError(f"backend: {backend!r} not in ('lexicon', 'llm')")
