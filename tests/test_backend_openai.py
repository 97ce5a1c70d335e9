"""The OpenAI-compatible backend.

Unit tests speak to a scripted HTTP transport (the inference server is an outer boundary); the integration
tests start a real `python -m llama_cpp.server` with one alias per domain and compare its answers with the
embedded runtime's, then take the server away and check what a CLI and a Slack user see.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from bot import adapters as adapter_store
from bot.answer import Question
from bot.config import ConfigError, Settings
from bot.errors import BackendUnavailable, UserFacingError
from bot.llm.backends import BACKENDS, make_runtime
from bot.llm.llama import AdapterMismatch
from bot.llm.openai import (
    SAMPLING,
    BackendError,
    OpenAIRuntime,
    ServerOptions,
    alias_for,
    backoff_delay,
    lora_id_for,
    normalise_base_url,
    sse_data,
)
from bot.testing.net import free_port

URL = "http://inference.test:8000/v1"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is EBITDA?"}]


# ---------------------------------------------------------------------------------------------------------
# A scripted server: each request pops the next reply


def sse(*pieces: str, usage: dict | None = None, finish: str = "stop") -> bytes:
    chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}]
    chunks += [{"choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in pieces]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    if usage:
        chunks.append({"choices": [], "usage": usage})
    body = ": ping\n\n" + "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    return body.encode()


class _Broken(httpx.SyncByteStream):
    """A stream that delivers its first bytes and then loses the connection."""

    def __init__(self, first: bytes):
        self.first = first

    def __iter__(self) -> Iterator[bytes]:
        yield self.first
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


Reply = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


class Script:
    def __init__(self, *replies: Reply):
        self.replies = list(replies)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if isinstance(reply, Exception):
            raise reply
        return reply(request) if callable(reply) else reply

    def bodies(self) -> list[dict]:
        return [json.loads(r.content) for r in self.requests if r.method == "POST"]


def ok(*pieces: str, **kw) -> httpx.Response:
    return httpx.Response(200, content=sse(*pieces, **kw), headers={"content-type": "text/event-stream"})


def runtime_for(script: Script, sleeps: list[float] | None = None, **options) -> OpenAIRuntime:
    settings = Settings(llm_backend="openai", llm_base_url=URL, max_tokens=16, seed=7)
    opts = ServerOptions(base_url=URL, tokenizer="estimate", retries=options.pop("retries", 2), backoff_s=0.1,
                         **options)
    sleeps = sleeps if sleeps is not None else []
    return OpenAIRuntime(settings, options=opts, transport=httpx.MockTransport(script), sleep=sleeps.append)


# ---------------------------------------------------------------------------------------------------------
# Settings and choosing the backend


@pytest.mark.parametrize("given", ["http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/"])
def test_base_url_is_normalised_to_v1(given):
    assert normalise_base_url(given) == "http://h:8000/v1"


def test_options_explain_what_is_missing_or_wrong(monkeypatch):
    with pytest.raises(ConfigError, match="needs DOMAINBOT_LLM_BASE_URL"):
        ServerOptions.from_settings(Settings(llm_backend="openai"))
    with pytest.raises(ConfigError, match="must start with http"):
        ServerOptions.from_settings(Settings(llm_backend="openai", llm_base_url="localhost:8000"))
    monkeypatch.setenv("DOMAINBOT_LLM_ADAPTER_FIELD", "header")
    with pytest.raises(ConfigError, match="DOMAINBOT_LLM_ADAPTER_FIELD must be one of model, lora"):
        ServerOptions.from_settings(Settings(llm_backend="openai", llm_base_url=URL))
    monkeypatch.setenv("DOMAINBOT_LLM_ADAPTER_FIELD", "lora")
    monkeypatch.setenv("DOMAINBOT_LLM_RETRIES", "many")
    with pytest.raises(ConfigError, match="DOMAINBOT_LLM_RETRIES must be a number"):
        ServerOptions.from_settings(Settings(llm_backend="openai", llm_base_url=URL))
    monkeypatch.setenv("DOMAINBOT_LLM_RETRIES", "5")
    opts = ServerOptions.from_settings(Settings(llm_backend="openai", llm_base_url="https://gpu.internal"))
    assert (opts.adapter_field, opts.retries, opts.base_url) == ("lora", 5, "https://gpu.internal/v1")


def test_settings_extra_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("DOMAINBOT_LLM_ALIAS", "{domain}")
    s = Settings(llm_backend="openai", llm_base_url=URL, extra={"DOMAINBOT_LLM_ALIAS": "{domain}-{version}"})
    assert ServerOptions.from_settings(s).alias_template == "{domain}-{version}"


def test_make_runtime_picks_by_name_and_rejects_unknown_backends():
    assert set(BACKENDS) == {"embedded", "openai"}
    with pytest.raises(ConfigError, match="'tgi' is not a backend; use one of: embedded, openai"):
        make_runtime(Settings(llm_backend="tgi"))
    with pytest.raises(ConfigError, match="needs DOMAINBOT_LLM_BASE_URL"):
        make_runtime(Settings(llm_backend="openai"))
    rt = make_runtime(Settings(llm_backend="openai", llm_base_url=URL))
    try:
        assert isinstance(rt, OpenAIRuntime) and rt.options.base_url == URL
    finally:
        rt.close()


# ---------------------------------------------------------------------------------------------------------
# Pure helpers


def test_adapter_keys_map_to_server_aliases():
    assert alias_for("finance:v2") == "finance"
    assert alias_for(None) == "base"
    assert alias_for(None, base_alias="smollm2") == "smollm2"
    assert alias_for("legal:v3", "{domain}-{version}") == "legal-v3"


def test_sse_lines():
    assert sse_data('data: {"a": 1}') == '{"a": 1}'
    assert sse_data("data: [DONE]") == "[DONE]"
    assert sse_data(": ping") is None and sse_data("") is None and sse_data("event: x") is None


def test_backoff_doubles_and_honours_retry_after():
    assert [backoff_delay(n, 0.5, rand=lambda: 1.0) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert backoff_delay(1, 0.5, rand=lambda: 0.0) == 0.25  # jitter: between half and all of it
    assert backoff_delay(3, 0.5, retry_after=1.5) == 1.5
    assert backoff_delay(1, 0.5, retry_after=3600) == 10.0  # capped: never park a Slack answer for an hour


def test_lora_ids_are_found_by_adapter_file(tmp_path):
    served = [{"id": 0, "path": "/srv/domains/finance/adapters/v1/adapter.gguf", "scale": 0.0},
              {"id": 1, "path": "/srv/domains/legal/adapters/v4/adapter.gguf", "scale": 0.0}]
    assert lora_id_for(tmp_path / "domains/legal/adapters/v4/adapter.gguf", served) == 1
    assert lora_id_for(Path("/srv/domains/finance/adapters/v1/adapter.gguf"), served) == 0
    assert lora_id_for(tmp_path / "domains/finance/adapters/v2/adapter.gguf", served) is None  # stale server


# ---------------------------------------------------------------------------------------------------------
# Generation over the wire


def test_streams_tokens_in_order_and_reports_usage():
    script = Script(ok("EBITDA", " is", " earnings", usage={"prompt_tokens": 31, "completion_tokens": 3}))
    rt = runtime_for(script)
    seen: list[str] = []
    gen = rt.generate(MESSAGES, max_tokens=5, temperature=0.0, on_token=seen.append)
    assert seen == ["EBITDA", " is", " earnings"] and gen.text == "EBITDA is earnings"
    assert (gen.prompt_tokens, gen.completion_tokens, gen.finish_reason) == (31, 3, "stop")
    assert 0 <= gen.first_token_s <= gen.total_s
    [body] = script.bodies()
    assert body["model"] == "base" and body["messages"] == MESSAGES and body["stream"] is True
    assert (body["max_tokens"], body["temperature"], body["seed"]) == (5, 0.0, 7)
    assert {k: body[k] for k in SAMPLING} == SAMPLING  # the embedded runtime's sampling, not the server's defaults
    assert "lora" not in body


def test_without_usage_the_counts_come_from_the_tokenizer():
    rt = runtime_for(Script(ok("Yes", ".", finish="length")))
    gen = rt.generate(MESSAGES, max_tokens=2)
    assert gen.completion_tokens == rt.count_tokens("Yes.") and gen.prompt_tokens > 0
    assert gen.finish_reason == "length"


def test_retries_with_backoff_before_the_first_token():
    script = Script(httpx.Response(503, json={"error": {"message": "loading model"}}),
                    httpx.ConnectError("connection refused"), ok("fine"))
    sleeps: list[float] = []
    gen = runtime_for(script, sleeps).generate(MESSAGES)
    assert gen.text == "fine" and len(script.requests) == 3
    assert len(sleeps) == 2 and 0.05 <= sleeps[0] <= 0.1 and 0.1 <= sleeps[1] <= 0.2  # 0.1 then 0.2, with jitter


def test_a_read_timeout_before_the_first_token_is_retried_and_retry_after_honoured():
    script = Script(httpx.ReadTimeout("slow"), httpx.Response(429, headers={"Retry-After": "2"}, text="busy"),
                    ok("ok"))
    sleeps: list[float] = []
    assert runtime_for(script, sleeps).generate(MESSAGES).text == "ok"
    assert sleeps[1] == 2.0


def test_gives_up_with_a_clear_message_when_the_server_stays_down():
    sleeps: list[float] = []
    rt = runtime_for(Script(httpx.ConnectError("[Errno 111] Connection refused")), sleeps, retries=3)
    with pytest.raises(BackendUnavailable) as err:
        rt.generate(MESSAGES)
    msg = str(err.value)
    assert msg.startswith("the inference server at http://inference.test:8000 is not reachable (connection refused")
    assert "tried 4 times" in msg and "DOMAINBOT_LLM_BACKEND=embedded" in msg
    assert len(sleeps) == 3 and sleeps == sorted(sleeps)


def test_a_stream_cut_after_the_first_token_is_not_retried():
    first = b"\n\n".join(sse("Par", "tial").split(b"\n\n")[:3]) + b"\n\n"  # ping, role, "Par"
    script = Script(httpx.Response(200, stream=_Broken(first), headers={"content-type": "text/event-stream"}),
                    ok("should not be asked"))
    seen: list[str] = []
    with pytest.raises(BackendUnavailable, match="stopped in the middle of the answer"):
        runtime_for(script).generate(MESSAGES, on_token=seen.append)
    assert seen == ["Par"] and len(script.requests) == 1


@pytest.mark.parametrize(("status", "body", "error", "match"), [
    (400, {"error": {"message": "Requested tokens (2100) exceed context window of 2048"}}, UserFacingError,
     "too long for the model"),
    (401, {"error": "bad key"}, BackendError, "refused the API key"),
    (404, {"error": {"message": "The model `finance` does not exist."}}, AdapterMismatch, "does not serve model"),
    (422, {"detail": "messages: field required"}, BackendError, r"rejected the request \(HTTP 422"),
])
def test_client_errors_are_not_retried_and_say_what_the_server_said(status, body, error, match):
    script = Script(httpx.Response(status, json=body))
    sleeps: list[float] = []
    with pytest.raises(error, match=match):
        runtime_for(script, sleeps).generate(MESSAGES)
    assert len(script.requests) == 1 and sleeps == []


# ---------------------------------------------------------------------------------------------------------
# Adapters: which ones the server serves


def models(*ids: str) -> httpx.Response:
    return httpx.Response(200, json={"object": "list", "data": [{"id": i, "object": "model"} for i in ids]})


def test_an_adapter_is_used_once_the_server_lists_its_alias(tmp_path):
    script = Script(models("base", "finance", "legal"), ok("up"))
    rt = runtime_for(script)
    assert not rt.has_adapter("finance:v2")
    rt.ensure_adapter("finance:v2", tmp_path / "finance/adapters/v2/adapter.gguf")
    assert rt.has_adapter("finance:v2")
    rt.ensure_adapter("finance:v2", tmp_path / "finance/adapters/v2/adapter.gguf")  # cached: no second GET
    rt.generate(MESSAGES, adapter="finance:v2")
    assert [r.url.path for r in script.requests] == ["/v1/models", "/v1/chat/completions"]
    assert script.bodies()[0]["model"] == "finance"


def test_an_adapter_the_server_does_not_serve_is_refused(tmp_path):
    rt = runtime_for(Script(models("base", "legal")))
    with pytest.raises(AdapterMismatch, match=r"no model 'finance' \(it serves: base, legal\).*adapters export finance"):
        rt.ensure_adapter("finance:v2", tmp_path / "adapter.gguf")
    with pytest.raises(AdapterMismatch, match="not loaded"):
        rt.generate(MESSAGES, adapter="finance:v2")


def test_the_version_can_be_part_of_the_alias(tmp_path):
    rt = runtime_for(Script(models("base", "finance-v1")), alias_template="{domain}-{version}")
    with pytest.raises(AdapterMismatch, match="no model 'finance-v2'"):  # the server still runs v1
        rt.ensure_adapter("finance:v2", tmp_path / "adapter.gguf")


def test_llama_server_adapters_are_addressed_by_id(tmp_path):
    served = [{"id": 0, "path": str(tmp_path / "finance/adapters/v1/adapter.gguf"), "scale": 0.0},
              {"id": 1, "path": str(tmp_path / "legal/adapters/v3/adapter.gguf"), "scale": 0.0}]
    script = Script(httpx.Response(200, json=served), ok("a"), ok("b"), httpx.Response(200, json=served))
    rt = runtime_for(script, adapter_field="lora")
    rt.ensure_adapter("legal:v3", tmp_path / "legal/adapters/v3/adapter.gguf")
    rt.generate(MESSAGES, adapter="legal:v3")
    rt.generate(MESSAGES)  # the base model: every adapter at scale 0
    assert script.requests[0].url == httpx.URL("http://inference.test:8000/lora-adapters")
    legal, base = script.bodies()
    assert legal["lora"] == [{"id": 1, "scale": 1.0}] and base["lora"] == []
    with pytest.raises(AdapterMismatch, match="no --lora adapter with file adapter.gguf of finance/adapters/v2"):
        rt.ensure_adapter("finance:v2", tmp_path / "finance/adapters/v2/adapter.gguf")


def test_a_listing_that_is_not_json_is_a_clear_error(tmp_path):
    rt = runtime_for(Script(httpx.Response(200, text="<html>proxy login</html>")))
    with pytest.raises(BackendError, match="not JSON; is DOMAINBOT_LLM_BASE_URL the server's address"):
        rt.ensure_adapter("finance:v1", tmp_path / "adapter.gguf")


def test_checking_an_adapter_on_a_down_server_says_the_server_is_down(tmp_path):
    rt = runtime_for(Script(httpx.ConnectError("Connection refused")), retries=1)
    with pytest.raises(BackendUnavailable, match="not reachable"):
        rt.ensure_adapter("finance:v1", tmp_path / "adapter.gguf")


def test_a_real_refused_connection_is_reported_with_the_url():
    port = free_port()  # nothing listens there any more
    settings = Settings(llm_backend="openai", llm_base_url=f"http://127.0.0.1:{port}")
    opts = ServerOptions(base_url=f"http://127.0.0.1:{port}/v1", tokenizer="estimate", retries=1, backoff_s=0.01)
    rt = OpenAIRuntime(settings, options=opts)
    try:
        with pytest.raises(BackendUnavailable, match=rf"at http://127.0.0.1:{port} is not reachable \(connection refused"):
            rt.generate(MESSAGES)
    finally:
        rt.close()


def test_counts_tokens_with_the_local_gguf_vocabulary():
    """The vocab-only tokenizer of the same GGUF counts like the embedded runtime (no weights loaded)."""
    from bot.llm.llama import embedded_model_path

    rt = OpenAIRuntime(Settings(llm_backend="openai", llm_base_url=URL))
    try:
        assert rt.model_path == embedded_model_path()
        import llama_cpp

        ref = llama_cpp.Llama(model_path=str(rt.model_path), vocab_only=True, verbose=False)
        for text in ("What was the effective tax rate in 2019?", "héllo wörld ✓ <|im_start|> [1]", ""):
            assert rt.count_tokens(text) == len(ref.tokenize(text.encode(), add_bos=False, special=False))
        assert rt.count_tokens("x " * 300) > 200
        ref.close()
    finally:
        rt.close()


# ---------------------------------------------------------------------------------------------------------
# Integration: a real llama_cpp.server, one alias per domain

DOMAINS = ("finance", "legal", "medical")
QUESTIONS = {
    "finance": "What was the company's total revenue in 2019?",
    "legal": "Does the agreement renew automatically?",
    "medical": "What are the early symptoms of type 2 diabetes?",
}


@pytest.fixture(scope="module")
def adapter_domains(tmp_path_factory) -> Path:
    """The real domains with a live adapter each: the shipped one, or a small generated LoRA."""
    import shutil

    from bot.config import ROOT
    from bot.testing.lora import write_lora

    dst = tmp_path_factory.mktemp("served") / "domains"
    shutil.copytree(ROOT / "domains", dst, ignore=shutil.ignore_patterns("checkpoints", "runs", "peft"))
    for seed, name in enumerate(DOMAINS, 1):
        adir = dst / name / "adapters"
        if adapter_store.current(adir) is None:
            (adir / "v1").mkdir(parents=True, exist_ok=True)
            write_lora(adir / "v1" / "adapter.gguf", scale=0.05, seed=seed)
            adapter_store.set_current(adir, "v1")
    return dst


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"the server did not come up in {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def llama_server(adapter_domains, base_settings, tmp_path_factory) -> Iterator[str]:
    """`python -m llama_cpp.server --config_file ...` written by `domainbot adapters export`."""
    from training.serve_export import llama_cpp_python_config, make_plan

    port = free_port()
    plan = make_plan(base_settings.with_(domains_dir=adapter_domains), "all", port=port)
    config = tmp_path_factory.mktemp("llama_server") / "config.json"
    config.write_text(json.dumps(llama_cpp_python_config(plan)))
    log = config.with_name("server.log")
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--config_file", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/v1/models", proc, log)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def _answerer(settings: Settings, domains: Path, runtime, embedder):
    from bot.answer import Answerer
    from bot.domains import discover
    from bot.retrieval.index import Retriever

    s = settings.with_(domains_dir=domains)
    return Answerer(s, discover(domains), Retriever(s, embedder), runtime)


@pytest.mark.slow
def test_the_server_module_has_its_dependencies():
    out = subprocess.run([sys.executable, "-m", "llama_cpp.server", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "--config_file" in out.stdout


@pytest.mark.slow
def test_each_domain_answers_from_its_adapter_exactly_as_embedded(llama_server, adapter_domains, settings,
                                                                   runtime, embedder):
    s = settings.with_(max_tokens=12, temperature=0.0, seed=0)
    served = make_runtime(s.with_(llm_backend="openai", llm_base_url=llama_server))
    embedded = _answerer(s, adapter_domains, runtime, embedder)
    remote = _answerer(s.with_(llm_backend="openai", llm_base_url=llama_server), adapter_domains, served, embedder)
    try:
        seen = {}
        for name in DOMAINS:
            q = QUESTIONS[name]
            local, over_http = embedded.answer(Question(q, domain=name)), remote.answer(Question(q, domain=name))
            base = embedded.answer(Question(q, domain=name, adapter="base"))
            assert over_http.adapter == local.adapter == adapter_store.current(adapter_domains / name / "adapters").version
            assert over_http.text == local.text, name
            assert [c.chunk_id for c in over_http.citations] == [c.chunk_id for c in local.citations]
            assert over_http.tokens["completion"] > 0
            seen[name] = (local.text, base.text)
        # the adapters matter: answered on the base model, at least one domain says something else
        assert any(adapted != base for adapted, base in seen.values())
        assert remote.answer(Question(QUESTIONS["finance"], domain="finance", adapter="base")).text == seen["finance"][1]
    finally:
        served.close()


# ---------------------------------------------------------------------------------------------------------
# Server down: the CLI and Slack


@pytest.fixture
def down_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"


@pytest.mark.slow
def test_cli_ask_with_the_server_down_exits_2_with_a_clear_message(down_url, settings, monkeypatch, capsys,
                                                                   tmp_path):
    from bot.cli import main

    monkeypatch.setenv("DOMAINBOT_LLM_BACKEND", "openai")
    monkeypatch.setenv("DOMAINBOT_LLM_BASE_URL", down_url)
    monkeypatch.setenv("DOMAINBOT_LLM_RETRIES", "1")
    monkeypatch.setenv("DOMAINBOT_LLM_BACKOFF_S", "0.01")
    monkeypatch.setenv("DOMAINBOT_DB", str(tmp_path / "cli.db"))
    monkeypatch.setenv("DOMAINBOT_ERROR_LOG", str(tmp_path / "errors.log"))
    rc = main(["ask", "--domain", "finance", "What was the effective tax rate?"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"the inference server at {down_url.removesuffix('/v1')} is not reachable" in err
    assert "DOMAINBOT_LLM_BACKEND=embedded" in err and "Traceback" not in err
    assert not (tmp_path / "errors.log").exists()  # a known failure, not an internal error


@pytest.mark.slow
def test_slack_user_gets_a_short_notice_and_the_question_is_kept(down_url, settings, answerer, tmp_path):
    from bot.answer import Answerer
    from bot.slack.app import build
    from bot.slack.ingress import start_http
    from bot.store.store import Store
    from bot.testing.slack_kit import BOT_TOKEN, CHANNEL, SIGNING_SECRET, FakeSlack, app_mention, post_event

    s = settings.with_(llm_backend="openai", llm_base_url=down_url, db_path=tmp_path / "slack.db",
                       extra={"DOMAINBOT_LLM_RETRIES": "1", "DOMAINBOT_LLM_BACKOFF_S": "0.01"})
    down = make_runtime(s)
    remote = Answerer(s, answerer.discovery, answerer.retriever, down, router=answerer.router)
    question = "What are the early symptoms of type 2 diabetes?"
    with FakeSlack() as slack:
        s = s.with_(slack_api_url=slack.api_url, slack_bot_token=BOT_TOKEN, slack_signing_secret=SIGNING_SECRET)
        store = Store.from_settings(s)
        app, ctx = build(s, remote, store)
        server = start_http(app, SIGNING_SECRET, host="127.0.0.1", port=0)
        try:
            ts = slack.add_message(CHANNEL, f"<@UBOT> {question}")
            status, _ = post_event(server.url, app_mention(f"<@UBOT> {question}", ts=ts))
            assert status == 200

            def notice() -> dict | None:
                mine = [m for m in slack.messages(CHANNEL) if m.get("thread_ts") == ts and m.get("bot_id")]
                return next((m for m in mine if "not reachable" in json.dumps(m)), None)

            shown = json.dumps(slack.wait_for(notice, what="the server-down notice"))
            assert "Sorry" in shown and "Traceback" not in shown and len(shown) < 1500  # a short apology
            ctx.close()  # drains the answer workers: everything they were going to write is written
            kept = [e for e in store.exchanges() if "type 2 diabetes" in (e["question"] or "")]
            assert len(kept) == 1, "the question was lost: it is not in the store"
            assert kept[0]["kind"] == "error" and kept[0]["thread_ts"] == ts  # kept, and never training data
        finally:
            server.shutdown()
            server.server_close()
            ctx.close()
            store.close()
            down.close()
