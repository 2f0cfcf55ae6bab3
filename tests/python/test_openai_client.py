"""pp-serve on the default model (SmolLM2-135M-Instruct) with 2 pipeline stages, driven by the
official openai client: completions and chat, streaming and not, usage, logprobs, stop, n, seed
reproducibility, and errors."""
import pytest

openai = pytest.importorskip("openai")

from pp_server import openai_client, serve_default_model  # noqa: E402

KEY = "sk-pp-test"
QUESTION = "What is the capital of France? Answer in one sentence."


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serve_default_model(tmp_path_factory, "serve", "--api-key", KEY)


@pytest.fixture(scope="module")
def client(server):
    return openai_client(server, KEY, timeout=60)


def test_models(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["smol"]


def test_chat_answers_the_question(client):
    r = client.chat.completions.create(model="smol", temperature=0, max_tokens=32,
                                       messages=[{"role": "user", "content": QUESTION}])
    assert "Paris" in r.choices[0].message.content
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 10
    assert r.usage.completion_tokens >= 1
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_matches_the_whole_answer(client):
    kw = dict(model="smol", temperature=0, max_tokens=24,
              messages=[{"role": "user", "content": QUESTION}])
    whole = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True,
                                                 stream_options={"include_usage": True}, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1


def test_completion_and_stream(client):
    r = client.completions.create(model="smol", prompt="The capital of France is",
                                  max_tokens=8, temperature=0)
    assert r.object == "text_completion"
    assert r.usage.completion_tokens == 8 or r.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="smol", prompt="The capital of France is", max_tokens=8, temperature=0,
        stream=True) if c.choices)
    assert streamed == r.choices[0].text


def test_logprobs_both_shapes(client):
    r = client.completions.create(model="smol", prompt="One, two, three,", max_tokens=4,
                                  temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert "".join(lp.tokens) == r.choices[0].text
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert chosen <= 0 and len(top) == 3
        assert abs(max(top.values()) - chosen) < 1e-4  # greedy: the chosen one is the best
    c = client.chat.completions.create(model="smol", temperature=0, max_tokens=4, logprobs=True,
                                       top_logprobs=2,
                                       messages=[{"role": "user", "content": QUESTION}])
    content = c.choices[0].logprobs.content
    assert len(content) == c.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 2
        assert bytes(entry.bytes).decode("utf-8", "replace") == entry.token


def test_stop_string(client):
    r = client.chat.completions.create(model="smol", temperature=0, max_tokens=32, stop=["Paris"],
                                       messages=[{"role": "user", "content": QUESTION}])
    assert r.choices[0].finish_reason == "stop"
    assert "Paris" not in r.choices[0].message.content


def test_n_and_seed_reproducibility(client):
    kw = dict(model="smol", prompt="Once upon a time", max_tokens=12, temperature=1.0, n=3,
              seed=1234)
    a = client.completions.create(**kw)
    b = client.completions.create(**kw)
    assert sorted(c.index for c in a.choices) == [0, 1, 2]
    assert [c.text for c in sorted(a.choices, key=lambda c: c.index)] == \
           [c.text for c in sorted(b.choices, key=lambda c: c.index)]
    assert a.usage.completion_tokens == sum(12 if c.finish_reason == "length" else 0
                                            for c in a.choices) or \
        all(c.finish_reason in ("stop", "length") for c in a.choices)
    # Choices get seeds seed, seed+1, ...: the same as single requests with those seeds.
    one = client.completions.create(model="smol", prompt="Once upon a time", max_tokens=12,
                                    temperature=1.0, seed=1235)
    assert one.choices[0].text == sorted(a.choices, key=lambda c: c.index)[1].text


def test_errors(client, server):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="smol", prompt="x", temperature=-1)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="smol", prompt="x", max_tokens=10**6)
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="smol", messages=[])
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt="x")
    assert e.value.body["code"] == "model_not_found"
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
