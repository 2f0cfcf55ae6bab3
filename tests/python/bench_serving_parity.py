#!/usr/bin/env python3
"""SGLang's own benchmark client (bench_serving.py of the sglang 0.5.9 wheel, run as a plain
script, unpatched) against pp-serve, and `pp-bench serve` with the same flags against the same
server: both must finish every request without an error, count the same input and output
tokens, and agree on throughput and latency within --tolerance (5 %).

The server runs the default model (SmolLM2-135M-Instruct GGUF) on the CPU with one stage of one
thread. The workload is SGLang's `random` dataset cut from a small ShareGPT-format file the test
writes (plain English; see write_sharegpt), 6 prompts of 128 tokens, 32 new tokens each,
--random-range-ratio 1 (exact lengths, so the totals are equal, not just alike), one request at
a time, sent as text as both clients do by default. Per backend, `sglang` (/generate) and
`sglang-oai` (/v1/completions), each tool runs --repeat times (default 3), alternating, each run
with its own seed, the server without prefix cache, and the medians over the runs are compared.
SGLang's client gets the tokenizer pp-partition exports (--tokenizer) and HF_HUB_OFFLINE=1 (it
would look the served model's name up on the Hub); pp-bench takes the server's own
(/get_model_info), as it does without --tokenizer. About 35 s per repeat; one alone is not
enough on a shared 2-core machine. Why this workload: docs/perf.md (issue 20).

  tests/python/bench_serving_parity.py [--build DIR] [--model GGUF] [--repeat N] [--json FILE]

scripts/setup-sglang-bench.sh fetches the wheel and makes the Python environment for SGLang's
script (first run: a few minutes). Exit 77 (skipped) when PyPI cannot be reached or the model
is missing; 1 when a check fails, printing both result tables.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pp_server  # noqa: E402
from pp_server import BUILD_DIR, SOURCE_DIR, ServeProcess, default_model_path  # noqa: E402

SKIP = 77
# (SGLang's result key, what it is): compared within the tolerance.
TIMED = [("request_throughput", "req/s"), ("output_throughput", "output tok/s"),
         ("median_ttft_ms", "median TTFT"), ("median_itl_ms", "median ITL"),
         ("median_tpot_ms", "median TPOT"), ("median_e2e_latency_ms", "median E2E")]


def setup_sglang():
    r = subprocess.run(["bash", str(SOURCE_DIR / "scripts" / "setup-sglang-bench.sh")],
                       stdout=subprocess.PIPE, text=True)
    if r.returncode == SKIP:
        print("skipped: PyPI unreachable (scripts/setup-sglang-bench.sh)")
        sys.exit(SKIP)
    if r.returncode != 0:
        sys.exit("scripts/setup-sglang-bench.sh failed")
    python, script = r.stdout.split()
    return python, script


# Plain sentences: their ids decode and tokenize back to the same ids.
SENTENCES = [
    "The river runs past the old mill and under the stone bridge.",
    "Every morning the baker opens the shop before the sun is up.",
    "A pipeline splits the layers of a model across several machines.",
    "She wrote the numbers down twice to be sure they were right.",
    "The train to the coast leaves at nine and arrives by noon.",
    "Small tests that fail loudly are better than large ones that pass quietly.",
    "The garden needs water when the weather stays dry for a week.",
    "He asked why the answer changed when nothing else had changed.",
]


def write_sharegpt(path: Path, n: int = 24):
    """A ShareGPT-format file of plain English conversations: the text that SGLang's `random`
    dataset cuts its prompts from. Ordinary words tokenize back to the same ids after decoding,
    so the server sees the drawn prompt lengths (random-ids' runs of consecutive ids do not:
    their text tokenizes to 25 to 45 tokens for 32 ids, and with a few prompts the two tools'
    totals then differ by up to 10 %, and their TTFTs with them)."""
    convs = []
    for i in range(n):
        words = " ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(3 + i % 5))
        convs.append({"conversations": [{"from": "human", "value": words},
                                        {"from": "gpt", "value": SENTENCES[i % len(SENTENCES)]}]})
    path.write_text(json.dumps(convs))


def last_json_line(path: Path) -> dict:
    return json.loads(path.read_text().strip().splitlines()[-1])


def run_sglang(python, script, flags, backend, tokenizer, out: Path, log: Path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=str(Path(script).parents[1]))
    cmd = [python, script, "--backend", backend, *flags, "--tokenizer", str(tokenizer),
           "--disable-tqdm", "--output-file", str(out), "--output-details"]
    with open(log, "w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"bench_serving.py failed ({r.returncode}):\n{log.read_text()}")
    res = last_json_line(out)
    res["table"] = log.read_text()
    return res


def run_pp_bench(build: Path, flags, backend, out: Path, db: Path):
    cmd = [str(build / "tools" / "pp-bench"), "serve", "--backend", backend, *flags,
           "--disable-progress", "--db", str(db), "--output-file", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"pp-bench failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    res = last_json_line(out)
    res["table"] = r.stdout
    return res


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def spread(xs):
    """(max - min) / median: how much one tool's own runs differ."""
    m = median(xs)
    return (max(xs) - min(xs)) / m if m else 0.0


def compare(backend, sgls, pps, n, tolerance):
    """The failed checks, as lines. sgls, pps: the runs of each tool (the same flags)."""
    bad = []
    for sgl in sgls:
        errors = [e for e in sgl.get("errors") or [] if e]
        if sgl["completed"] != n or errors:
            bad.append(f"{backend}: bench_serving finished {sgl['completed']} of {n}: {errors[:2]}")
    for pp in pps:
        if pp["completed"] != n or pp.get("failed", 0) != 0:
            bad.append(f"{backend}: pp-bench finished {pp['completed']} of {n}, "
                       f"{pp.get('failed')} failed")
    for key in ("total_input_tokens", "total_output_tokens"):
        values = {int(r[key]) for r in sgls + pps}
        if len(values) != 1:
            bad.append(f"{backend}: {key} differ: bench_serving {[r[key] for r in sgls]}, "
                       f"pp-bench {[r[key] for r in pps]}")
    for key, what in TIMED:
        a, b = median([r[key] for r in sgls]), median([r[key] for r in pps])
        rel = abs(b - a) / a if a else float("inf")
        own = max(spread([r[key] for r in sgls]), spread([r[key] for r in pps]))
        line = (f"{backend}: {what:>14}: bench_serving {a:9.2f}  pp-bench {b:9.2f}  "
                f"({(b - a) / a:+6.1%}; each tool's own spread up to {own:.1%})")
        print(line)
        if rel > tolerance:
            bad.append(line)
    return bad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=str(BUILD_DIR))
    ap.add_argument("--model", default=str(default_model_path()))
    ap.add_argument("--num-prompts", type=int, default=6)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=32)
    # One request at a time: every request meets the same server state. With all of them at once
    # the server prefills whichever have arrived by its next step, and the median TTFT jumps
    # between the first and the second batch's (measured: 40 % apart from run to run).
    ap.add_argument("--max-concurrency", type=int, default=1,
                    help="0: not set (SGLang's default: every request at once)")
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of each tool per backend, alternating; medians are compared")
    ap.add_argument("--backends", default="sglang,sglang-oai")
    ap.add_argument("--json", help="write both tools' results here")
    args = ap.parse_args()
    model = Path(args.model)
    if not model.exists():
        print(f"skipped: the default model is missing: {model} (scripts/fetch-model.sh)")
        return SKIP
    python, script = setup_sglang()
    build = Path(args.build)
    pp_server.SERVE = build / "tools" / "pp-serve"
    with tempfile.TemporaryDirectory(prefix="pp-bench-parity-") as tmp:
        tmp = Path(tmp)
        tok = tmp / "tokenizer"
        subprocess.run([str(build / "tools" / "pp-partition"), "inspect", str(model),
                        "--export-tokenizer", str(tok), "--db", str(tmp / "runs.db")],
                       check=True, capture_output=True)
        sharegpt = tmp / "sharegpt.json"
        write_sharegpt(sharegpt)
        # No prefix cache: the file's conversations come back in later runs, and a cached
        # prompt would make that run's TTFT a tenth of the others'.
        srv = ServeProcess(["--model", model, "--pp", "1", "--threads-per-stage", "1",
                            "--disable-prefix-cache", "--db", tmp / "runs.db"], tmp / "serve.log")
        results, bad = {}, []
        try:
            for k, backend in enumerate(args.backends.split(",")):
                def flags(i):
                    # A seed per run: other prompts each time.
                    f = ["--base-url", srv.url, "--dataset-name", "random",
                         "--dataset-path", str(sharegpt),
                         "--num-prompts", str(args.num_prompts),
                         "--random-input-len", str(args.input_len),
                         "--random-output-len", str(args.output_len),
                         "--random-range-ratio", "1", "--seed", str(100 * k + i + 1)]
                    if args.max_concurrency > 0:
                        f += ["--max-concurrency", str(args.max_concurrency)]
                    return f
                sgls, pps = [], []

                def one_sgl(i):
                    sgls.append(run_sglang(python, script, flags(i), backend, tok,
                                           tmp / f"sgl-{backend}-{i}.jsonl",
                                           tmp / f"sgl-{backend}-{i}.log"))

                def one_pp(i):
                    pps.append(run_pp_bench(build, flags(i), backend,
                                            tmp / f"pp-{backend}-{i}.jsonl", tmp / "bench.db"))
                # Alternating (AB, BA, AB, ...), so that a drift of the machine's load between
                # runs falls on both tools alike.
                for i in range(args.repeat):
                    for f in ((one_sgl, one_pp) if i % 2 == 0 else (one_pp, one_sgl)):
                        f(i)
                bad += compare(backend, sgls, pps, args.num_prompts, args.tolerance)
                results[backend] = {"bench_serving": sgls, "pp_bench": pps}
        finally:
            rc = srv.terminate()
        if rc != 0:
            bad.append(f"pp-serve exited {rc}:\n{(tmp / 'serve.log').read_text()[-2000:]}")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))
        if bad:
            for backend, r in results.items():
                print(f"--- {backend}: bench_serving\n{r['bench_serving'][-1]['table']}")
                print(f"--- {backend}: pp-bench\n{r['pp_bench'][-1]['table']}")
            print("FAILED:\n  " + "\n  ".join(bad))
            return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
