"""Tool calling and echo through pp-serve on the default model (SmolLM2-135M-Instruct, ChatML:
the Qwen2.5/Hermes <tool_call> convention), driven by the official openai client.

tool_choice "required" and a named function rely on the output grammar (structured output): a
135M model does not write valid calls by itself. Those tests probe the server first (a
response_format json_schema request) and are skipped while the grammar is not in the build."""
import json

import pytest

openai = pytest.importorskip("openai")

from pp_server import openai_client, serve_default_model  # noqa: E402

KEY = "sk-pp-test"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"},
                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time in a time zone.",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}},
                       "required": ["zone"]},
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris, in celsius?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serve_default_model(tmp_path_factory, "serve-tools", "--api-key", KEY)


@pytest.fixture(scope="module")
def client(server):
    return openai_client(server, KEY, timeout=120)


@pytest.fixture(scope="module")
def grammar(client):
    """Skips unless the server constrains output with a JSON schema."""
    try:
        r = client.chat.completions.create(
            model="smol", messages=ASK, max_tokens=24, temperature=0,
            response_format={"type": "json_schema", "json_schema": {
                "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "integer"}},
                                        "required": ["a"]}}})
    except openai.BadRequestError as e:
        pytest.skip(f"no output grammar in this build: {e.body}")
    try:
        json.loads(r.choices[0].message.content)
    except ValueError:
        pytest.skip("response_format is accepted but not enforced")


def check_weather_args(arguments: str):
    args = json.loads(arguments)
    assert isinstance(args, dict)
    assert isinstance(args["city"], str)
    assert args["unit"] in ("celsius", "fahrenheit")


def check_time_args(arguments: str):
    args = json.loads(arguments)
    assert isinstance(args["zone"], str)


def test_required_gives_valid_calls(client, grammar):
    for parallel in (True, False):
        r = client.chat.completions.create(model="smol", messages=ASK, tools=[WEATHER, TIME],
                                           tool_choice="required", temperature=0,
                                           max_tokens=200, parallel_tool_calls=parallel)
        choice = r.choices[0]
        if parallel and choice.finish_reason == "length":
            # The 135M model, greedy, may call the same tool again and again until max_tokens:
            # then every complete item of the (cut) array must still be a valid call.
            text, dec, at, n = choice.message.content, json.JSONDecoder(), 1, 0
            assert text.startswith("[")
            while True:
                try:
                    item, at = dec.raw_decode(text, at)
                except json.JSONDecodeError:
                    break
                {"get_weather": check_weather_args, "get_time": check_time_args}[item["name"]](
                    json.dumps(item["parameters"]))
                n += 1
                if not text.startswith(", ", at):
                    break
                at += 2
            assert n >= 1, text
            continue
        assert choice.finish_reason == "tool_calls", choice
        calls = choice.message.tool_calls
        assert calls and (parallel or len(calls) == 1)
        for c in calls:
            assert c.type == "function" and c.id.startswith("call_")
            {"get_weather": check_weather_args, "get_time": check_time_args}[c.function.name](
                c.function.arguments)


def test_named_function_gives_its_arguments(client, grammar):
    kw = dict(model="smol", messages=ASK, tools=[WEATHER, TIME], temperature=0, max_tokens=200,
              tool_choice={"type": "function", "function": {"name": "get_weather"}})
    r = client.chat.completions.create(**kw)
    calls = r.choices[0].message.tool_calls
    assert len(calls) == 1 and calls[0].function.name == "get_weather"
    check_weather_args(calls[0].function.arguments)
    assert r.choices[0].message.content is None
    # Streamed: the arguments in pieces, the name once; together the same call.
    chunks = list(client.chat.completions.create(stream=True, **kw))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].function.name == "get_weather" and deltas[0].id.startswith("call_")
    assert all(d.index == 0 for d in deltas)
    assert "".join(d.function.arguments or "" for d in deltas) == calls[0].function.arguments
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_auto_stream_matches_whole_and_history_is_accepted(client):
    # With a tool call and its result in the history (no grammar needed): the answer streamed
    # is the answer whole, whether the model calls again or writes text.
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather",
                          "arguments": json.dumps({"city": "Paris", "unit": "celsius"})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temperature\": 21}"},
    ]
    kw = dict(model="smol", messages=history, tools=[WEATHER], temperature=0, max_tokens=48)
    whole = client.chat.completions.create(**kw).choices[0]
    chunks = list(client.chat.completions.create(stream=True, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert text == (whole.message.content or "")
    assert [(c.function.name, c.function.arguments) for c in calls] == [
        (c.function.name, c.function.arguments) for c in (whole.message.tool_calls or [])]
    finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    assert finish == whole.finish_reason
    # tool_choice "none": plain text, no calls.
    r = client.chat.completions.create(tool_choice="none", **kw)
    assert r.choices[0].message.tool_calls is None
    assert isinstance(r.choices[0].message.content, str)


def test_tool_errors(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="smol", messages=ASK, tools=[WEATHER],
                                       tool_choice={"type": "function",
                                                    "function": {"name": "nope"}})
    assert e.value.body["param"] == "tool_choice.function.name"
    bad = {"type": "function", "function": {"name": "has space"}}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="smol", messages=ASK, tools=[WEATHER, bad])
    assert e.value.body["param"] == "tools[1].function.name"


def test_echo(client):
    prompt = "Once upon a time"
    r = client.completions.create(model="smol", prompt=prompt, max_tokens=8, temperature=0,
                                  echo=True, n=2)
    plain = client.completions.create(model="smol", prompt=prompt, max_tokens=8, temperature=0)
    for c in r.choices:
        assert c.text == prompt + plain.choices[0].text
    chunks = list(client.completions.create(model="smol", prompt=prompt, max_tokens=8,
                                            temperature=0, echo=True, stream=True))
    assert chunks[0].choices[0].text == prompt
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="smol", prompt=prompt, echo=True, logprobs=1)
    assert e.value.body["param"] == "echo"
