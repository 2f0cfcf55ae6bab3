"""Structured output and logit_bias through pp-serve (default model, 2 stages), driven by the
official openai client and plain HTTP for SGLang's /generate: every constrained answer parses
and matches its schema, regular expression or choice, greedy and sampled, streaming or not;
bad grammars are a 400 that names them."""
import json
import re
import urllib.request

import pytest

openai = pytest.importorskip("openai")

from pp_server import openai_client, serve_default_model  # noqa: E402

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "city": {"enum": ["Paris", "Rome", "Oslo"]},
        "pets": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3},
    },
    "required": ["name", "age", "city", "pets"],
    "additionalProperties": False,
}


def check_person(text):
    obj = json.loads(text)  # strict: control characters in strings would fail here
    assert list(obj) == ["name", "age", "city", "pets"], text  # the schema's order
    assert isinstance(obj["name"], str) and len(obj["name"]) <= 20
    assert isinstance(obj["age"], int) and 0 <= obj["age"] <= 150
    assert obj["city"] in ("Paris", "Rome", "Oslo")
    assert isinstance(obj["pets"], list) and len(obj["pets"]) <= 3
    assert all(isinstance(p, str) and len(p) <= 10 for p in obj["pets"])
    return obj


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serve_default_model(tmp_path_factory, "serve")


@pytest.fixture(scope="module")
def client(server):
    return openai_client(server, "none", timeout=120)


def post(server, path, body):
    req = urllib.request.Request(server.url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def chat(content):
    return [{"role": "user", "content": content}]


@pytest.mark.parametrize("temperature", [0, 0.9])
def test_json_schema_answers_parse_and_match(client, temperature):
    r = client.chat.completions.create(
        model="smol", temperature=temperature, max_tokens=120, n=2, seed=7,
        messages=chat("Describe a person who likes animals, as JSON."),
        response_format={"type": "json_schema",
                         "json_schema": {"name": "person", "schema": PERSON, "strict": True}})
    for c in r.choices:
        assert c.finish_reason == "stop", c.message.content
        check_person(c.message.content)


def test_the_clients_own_parse_helper(client):
    pydantic = pytest.importorskip("pydantic")

    from typing import Annotated

    Short = Annotated[str, pydantic.Field(max_length=40)]

    class Step(pydantic.BaseModel):
        explanation: Short
        output: Short

    class Answer(pydantic.BaseModel):
        steps: Annotated[list[Step], pydantic.Field(max_length=3)]
        final_answer: Short

    parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
    r = parse(model="smol", temperature=0, max_tokens=400, response_format=Answer,
              messages=chat("Solve 8x + 7 = -23 step by step."))
    c = r.choices[0]
    assert c.finish_reason == "stop"
    assert isinstance(c.message.parsed, Answer)
    assert len(c.message.parsed.steps) <= 3


def test_streamed_json_parses(client):
    chunks = client.chat.completions.create(
        model="smol", temperature=0.7, max_tokens=120, stream=True, seed=3,
        messages=chat("A person as JSON, please."),
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}})
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    check_person(text)


def test_json_object(client):
    r = client.chat.completions.create(
        model="smol", temperature=0, max_tokens=200,
        messages=chat("Give a JSON object with a key 'color' and a colour."),
        response_format={"type": "json_object"})
    c = r.choices[0]
    if c.finish_reason == "stop":
        assert isinstance(json.loads(c.message.content), dict)
    else:  # cut by max_tokens: still the start of an object
        assert c.message.content.lstrip().startswith("{")


def test_vllm_guided_fields(client):
    for temperature in (0, 1.0):
        r = client.completions.create(
            model="smol", prompt="Is the sky blue? Answer:", max_tokens=10,
            temperature=temperature, extra_body={"guided_choice": ["yes", "no", "it depends"]})
        assert r.choices[0].text in ("yes", "no", "it depends")
        r = client.completions.create(
            model="smol", prompt="The date of the moon landing:", max_tokens=20,
            temperature=temperature, extra_body={"guided_regex": r"[0-9]{4}-[0-9]{2}-[0-9]{2}"})
        assert re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", r.choices[0].text), r.choices[0].text
    r = client.chat.completions.create(
        model="smol", temperature=0, max_tokens=120, messages=chat("A person as JSON."),
        extra_body={"guided_json": PERSON})
    check_person(r.choices[0].message.content)


def test_sglang_generate_constraints(server):
    status, out = post(server, "/generate", {
        "text": "Give a person as JSON:",
        "sampling_params": {"max_new_tokens": 120, "temperature": 0.5,
                            "json_schema": json.dumps(PERSON)}})
    assert status == 200, out
    check_person(out["text"])
    status, out = post(server, "/generate", {
        "text": "A phone number:",
        "sampling_params": {"max_new_tokens": 20, "regex": r"\+[0-9]{2} [0-9]{6}"}})
    assert status == 200, out
    assert re.fullmatch(r"\+[0-9]{2} [0-9]{6}", out["text"]), out["text"]
    status, out = post(server, "/generate", {
        "text": "Pick:", "sampling_params": {"max_new_tokens": 8,
                                              "ebnf": 'root ::= "red" | "green"'}})
    assert status == 200 and out["text"] in ("red", "green"), out


def test_bad_grammars_are_400s_that_name_them(client, server):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="smol", messages=chat("x"), max_tokens=5,
            response_format={"type": "json_schema",
                             "json_schema": {"name": "bad", "schema": {"type": "no-such"}}})
    assert "json_schema" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="smol", prompt="x", max_tokens=5,
                                  extra_body={"guided_regex": "([a-"})
    assert "regex" in str(e.value)
    status, out = post(server, "/generate", {"text": "x", "sampling_params": {"regex": "(["}})
    assert status == 400 and "regex" in out["error"]["message"], out
    status, out = post(server, "/generate",
                       {"text": "x", "sampling_params": {"max_new_tokens": 3, "bogus": 1}})
    assert status == 400 and out["error"]["param"] == "sampling_params.bogus", out


def test_logit_bias_forces_and_bans(client, server):
    status, tok = post(server, "/tokenize", {"prompt": " banana"})
    assert status == 200, tok
    ids = tok["tokens"]
    target = ids[-1]
    r = client.completions.create(model="smol", prompt="My favourite fruit is", max_tokens=4,
                                  temperature=0, logit_bias={str(target): 100}, logprobs=0)
    status, detok = post(server, "/detokenize", {"tokens": [target]})
    assert r.choices[0].text == detok["text"] * 4, (r, tok, detok)
    # Banned: the greedy answer's first token never appears once its bias is -100.
    free = client.completions.create(model="smol", prompt="The capital of France is",
                                     max_tokens=3, temperature=0, logprobs=0)
    first = free.choices[0].logprobs.tokens[0]
    status, first_ids = post(server, "/tokenize", {"prompt": first, "add_special_tokens": False})
    banned = first_ids["tokens"][0]
    r = client.completions.create(model="smol", prompt="The capital of France is", max_tokens=3,
                                  temperature=0, logit_bias={str(banned): -100})
    status, again = post(server, "/tokenize",
                         {"prompt": r.choices[0].text, "add_special_tokens": False})
    assert banned not in again["tokens"], (r.choices[0].text, banned)
