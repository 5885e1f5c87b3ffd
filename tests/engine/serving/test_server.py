"""The OpenAI-compatible server, driven by the official `openai` client over loopback."""

import json
import urllib.error
import urllib.request

import openai
import pytest

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def client(server_url):
    return openai.OpenAI(base_url=server_url, api_key="unused", max_retries=0, timeout=120)


def _post_raw(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == ["smollm2-135m"]


def test_chat_completion_answers_sensibly(client):
    reply = client.chat.completions.create(
        model="smollm2-135m", messages=QUESTION, max_tokens=24, temperature=0
    )
    choice = reply.choices[0]
    assert "Paris" in choice.message.content
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streamed_chat_completion_matches_the_non_streamed_one(client):
    whole = client.chat.completions.create(
        model="smollm2-135m", messages=QUESTION, max_tokens=16, temperature=0
    )
    stream = client.chat.completions.create(
        model="smollm2-135m",
        messages=QUESTION,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasons = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert text == whole.choices[0].message.content
    assert reasons == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completion_continues_a_prompt(client):
    reply = client.completions.create(
        model="smollm2-135m", prompt="One, two, three,", max_tokens=8, temperature=0
    )
    assert reply.choices[0].text.strip()
    assert reply.usage.completion_tokens <= 8
    streamed = client.completions.create(
        model="smollm2-135m", prompt="One, two, three,", max_tokens=8, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == reply.choices[0].text


def test_program_hints_in_extra_body_are_accepted_and_reuse_the_prefix(client):
    hints = {"program_id": "agent-7", "turn": 0, "tool": "search", "tool_seconds": 0.5}
    first = client.chat.completions.create(
        model="smollm2-135m",
        messages=QUESTION,
        max_tokens=8,
        temperature=0,
        extra_body={"hetagent": hints},
    )
    again = client.chat.completions.create(
        model="smollm2-135m",
        messages=[*QUESTION, {"role": "assistant", "content": first.choices[0].message.content}],
        max_tokens=8,
        temperature=0,
        extra_body={"hetagent": {"program_id": "agent-7", "turn": 1, "last_turn": True}},
    )
    assert again.usage.prompt_tokens_details.cached_tokens >= 16


def test_metrics_use_vllm_names(client, server_url):
    client.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=4)
    with urllib.request.urlopen(server_url.removesuffix("/v1") + "/metrics", timeout=30) as r:
        text = r.read().decode()
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:gpu_cache_usage_perc",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:e2e_request_latency_seconds_count",
        "vllm:prefix_cache_hits_total",
        'hetagent:kv_blocks{state="leased"}',
    ):
        assert name in text, name
    generated = next(
        line for line in text.splitlines() if line.startswith("vllm:generation_tokens_total")
    )
    assert float(generated.split()[-1]) > 0


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"model": "gpt-4o"}, openai.NotFoundError, "is not served here"),
        ({"max_tokens": -1}, openai.BadRequestError, "max_tokens must be at least 1"),
        (
            {"messages": [{"role": "user", "content": "word " * 5000}]},
            openai.BadRequestError,
            "prompt tokens",
        ),
        ({"extra_body": {"hetagent": {"turn": -2}}}, openai.BadRequestError, "hetagent.turn"),
        ({"temperature": -1}, openai.BadRequestError, "temperature"),
    ],
)
def test_bad_request_gets_a_4xx_and_the_server_keeps_serving(client, overrides, error, message):
    body = {"model": "smollm2-135m", "messages": QUESTION, "max_tokens": 4, **overrides}
    with pytest.raises(error) as caught:
        client.chat.completions.create(**body)
    assert message in caught.value.message
    assert (
        client.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=2)
        .choices[0]
        .message.content
    )


def test_malformed_json_gets_a_400_naming_the_problem(client, server_url):
    status, body = _post_raw(server_url + "/chat/completions", b'{"model": "smollm2-135m",')
    assert status == 400
    assert "not valid JSON" in body["error"]["message"]
    status, body = _post_raw(server_url + "/completions", json.dumps({"model": 3}).encode())
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert client.models.list().data
