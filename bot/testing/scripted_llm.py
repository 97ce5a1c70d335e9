"""An OpenAI-compatible inference server scripted over HTTP (httpx's mock transport): the model is an outer
boundary, so tests that must know the model's draft exactly use this with the real retriever, router and guard."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import httpx

from bot.answer import Answerer
from bot.config import Settings
from bot.llm.openai import OpenAIRuntime, ServerOptions

URL = "http://inference.test:8000/v1"


def sse(text: str) -> bytes:
    pieces = re.findall(r"\S+\s*", text)
    chunks = [{"choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in pieces]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    return ("".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n").encode()


def scripted(answerer: Answerer, reply: Callable[[dict], str]) -> tuple[Answerer, list[dict]]:
    """The real answerer's parts with a scripted inference server; `reply(request_body) -> draft text`."""
    seen: list[dict] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":  # the adapter probe: this server serves the base model only
            return httpx.Response(200, json={"object": "list", "data": [{"id": "base", "object": "model"}]})
        body = json.loads(request.content)
        seen.append(body)
        return httpx.Response(200, content=sse(reply(body)), headers={"content-type": "text/event-stream"})

    settings = Settings(llm_backend="openai", llm_base_url=URL, max_tokens=64, seed=7)
    runtime = OpenAIRuntime(settings, options=ServerOptions(base_url=URL, tokenizer="estimate", retries=0),
                            transport=httpx.MockTransport(handle))
    s = answerer.settings.with_(llm_backend="openai", llm_base_url=URL)
    return Answerer(s, answerer.discovery, answerer.retriever, runtime, router=answerer.router), seen


