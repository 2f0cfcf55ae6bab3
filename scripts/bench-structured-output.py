#!/usr/bin/env python3
"""What structured output costs, against a running pp-serve: the same batch of /generate
requests (N at once, each exactly T new tokens) without and with a constraint, alternating, R
rounds; prints output tokens per second of each and the ratio. The constraints: a regular
expression of words, and a JSON schema of an array of at least 1000 strings; neither ends soon, and the
end-of-sequence ids get a logit bias of -100 (--eos), so every request runs T tokens.

  python3 scripts/bench-structured-output.py --url http://127.0.0.1:30000 -n 16 -t 64 -r 3
"""
import argparse
import concurrent.futures
import json
import time
import urllib.request

GRAMMARS = {
    "none": {},
    "regex": {"regex": "[a-z]+( [a-z]+)*"},
    "json_schema": {"json_schema": json.dumps(
        {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 1000})},
}


def one(url, prompt, tokens, extra, eos):
    body = {"text": prompt, "sampling_params": dict(
        max_new_tokens=tokens, ignore_eos=True, temperature=0.8,
        logit_bias={str(e): -100 for e in eos}, **extra)}
    req = urllib.request.Request(url + "/generate", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        out = json.loads(r.read())
    return out["meta_info"]["completion_tokens"]


def batch(url, n, tokens, extra, eos):
    prompts = [f"Write about topic number {i} in a few words:" for i in range(n)]
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(n) as ex:
        done = list(ex.map(lambda p: one(url, p, tokens, extra, eos), prompts))
    return sum(done), time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:30000")
    ap.add_argument("-n", type=int, default=16, help="requests at once")
    ap.add_argument("-t", type=int, default=64, help="new tokens per request")
    ap.add_argument("-r", type=int, default=3, help="rounds")
    ap.add_argument("--eos", type=int, nargs="+", default=[0, 2],
                    help="end-of-sequence ids to ban (SmolLM2: 0 and 2)")
    a = ap.parse_args()
    batch(a.url, a.n, 8, {}, a.eos)  # warm up
    best = {k: 0.0 for k in GRAMMARS}
    for _ in range(a.r):
        for name, extra in GRAMMARS.items():
            tokens, secs = batch(a.url, a.n, a.t, extra, a.eos)
            assert tokens == a.n * a.t, (name, tokens)
            best[name] = max(best[name], tokens / secs)
    for name in GRAMMARS:
        print(f"{name:12s} {best[name]:8.1f} output tok/s (best of {a.r}), "
              f"{best[name] / best['none']:.3f} of unconstrained")


if __name__ == "__main__":
    main()
