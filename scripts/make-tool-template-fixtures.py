#!/usr/bin/env python3
"""Writes tests/fixtures/tokenizers/tool-templates.json: conversations with tools, tool calls and
tool results rendered by transformers' own chat-template renderer (its `tojson` filter, as
apply_chat_template uses) from Qwen2.5-Instruct's and Llama-3.2-Instruct's published chat
templates, so that the C++ test compares pp's ChatML and Llama 3.1 rendering with the real thing,
without Python at test time.

  pip install 'transformers>=4.45' jinja2
  scripts/make-tool-template-fixtures.py

Tools are given as vLLM hands them to the template (type, then function: name, description,
parameters) and assistant tool-call arguments as dicts (vLLM json.loads them first); the fixture
keeps both as JSON text, key order included, since the prompt shows that order.
"""
import json
import os

from transformers.utils.chat_template_utils import render_jinja_template

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizers", "tool-templates.json")

# Qwen2.5-7B-Instruct's tokenizer_config.json chat_template.
QWEN25_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

# Llama-3.2-1B-Instruct's chat template (Llama 3.1's, with strftime_now for the date).
LLAMA32_TEMPLATE = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""
LLAMA_DATE = "09 Mar 2025"

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city (°C or °F).",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "e.g. \"Paris\" or 東京"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"]}}}
SEARCH = {"type": "function", "function": {
    "name": "search", "description": "Search the web.\nReturns snippets.",
    "parameters": {"type": "object", "properties": {
        "query": {"type": "string"}, "limit": {"type": "integer", "minimum": 1, "default": 5},
        "filters": {"type": "object", "properties": {}}}, "required": ["query"]}}}
NOPARAMS = {"type": "function", "function": {"name": "now"}}


def call(cid, name, args):
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}


CASES = [
    ([WEATHER], [{"role": "user", "content": "Weather in Paris?"}], True),
    ([WEATHER, SEARCH, NOPARAMS],
     [{"role": "system", "content": "You are terse."},
      {"role": "user", "content": "Weather in Paris and Tōkyō, and news?"},
      {"role": "assistant", "content": None, "tool_calls": [
          call("call_1", "get_weather", {"city": "Paris", "unit": "celsius"}),
          call("call_2", "get_weather", {"city": "東京"}),
          call("call_3", "search", {"query": "news \"today\"", "limit": 3, "filters": {}})]},
      {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"},
      {"role": "tool", "tool_call_id": "call_2", "content": "18 degrees"},
      {"role": "tool", "tool_call_id": "call_3", "content": "nothing new"}], True),
    ([SEARCH],
     [{"role": "user", "content": "Find pp."},
      {"role": "assistant", "content": "Let me search.",
       "tool_calls": [call("c9", "search", {"query": "pp serving", "nested": [1, {"a": None}]})]},
      {"role": "tool", "tool_call_id": "c9", "content": "found it"},
      {"role": "assistant", "content": "Here it is."},
      {"role": "user", "content": "Thanks"}], False),
    (None,
     [{"role": "user", "content": "hi"},
      {"role": "assistant", "content": "", "tool_calls": [call("c1", "now", {})]},
      {"role": "tool", "tool_call_id": "c1", "content": "12:00"}], True),
]


LLAMA_CASES = [
    ([WEATHER],
     [{"role": "system", "content": " You are terse. "},
      {"role": "user", "content": "Weather in Paris? "},
      {"role": "assistant", "content": None, "tool_calls": [
          call("call_1", "get_weather", {"city": "Paris", "unit": "celsius"})]},
      {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"}], True),
    ([WEATHER, SEARCH, NOPARAMS], [{"role": "user", "content": "News about 東京?"}], True),
    (None,
     [{"role": "system", "content": "Be nice."}, {"role": "user", "content": " a "},
      {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}], True),
    (None, [{"role": "user", "content": "hi"}], False),
]


def render_cases(template, cases, **kwargs):
    out = []
    for tools, messages, agp in cases:
        text = render_jinja_template([messages], tools=tools, chat_template=template,
                                     add_generation_prompt=agp, **kwargs)
        while isinstance(text, (list, tuple)):  # rendered conversations (and masks)
            text = text[0]
        msgs = []
        for m in messages:
            e = {"role": m["role"], "content": m["content"] or ""}
            if "tool_calls" in m:
                e["tool_calls"] = [{"id": c["id"], "name": c["function"]["name"],
                                    "arguments": json.dumps(c["function"]["arguments"])}
                                   for c in m["tool_calls"]]
            if "tool_call_id" in m:
                e["tool_call_id"] = m["tool_call_id"]
            msgs.append(e)
        out.append({"tools": [json.dumps(t, ensure_ascii=False) for t in (tools or [])],
                    "messages": msgs, "add_generation_prompt": agp, "output": text})
    return out


def main():
    qwen = render_cases(QWEN25_TEMPLATE, CASES)
    llama = render_cases(LLAMA32_TEMPLATE, LLAMA_CASES, bos_token="<|begin_of_text|>",
                         date_string=LLAMA_DATE)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump({"template": QWEN25_TEMPLATE, "cases": qwen,
                   "llama": {"template": LLAMA32_TEMPLATE, "bos_token": "<|begin_of_text|>",
                             "eos_token": "<|eot_id|>", "date": LLAMA_DATE, "cases": llama}},
                  f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
