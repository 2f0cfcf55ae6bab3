"""Soak run: pp-serve on a tiny model (the byte-level tiny-llama, CPU backend, 2 stages, a small KV
pool and a small queue) under mixed load for MINUTES: streaming and whole completions, chat and
SGLang generate, n > 1, clients that close mid-stream, bad requests (malformed JSON, bad
parameters, unknown model, a body over the limit), requests that can never fit the KV pool, and
bursts far beyond the queue. Every so often the load pauses; once the server is idle it must hold
no KV block and no request, and the resident memory of pp-serve and of each pp-stage is
recorded. It fails (exit 1) when the server or a stage dies or is replaced, a request goes
unanswered or gets an answer outside its class's expected ones, the server's finished-request
count differs from the generations it accepted, a KV block or request is left when idle, or the
memory when idle at the end has grown past the tolerance over the first idle point after
warm-up. Plain asyncio sockets (standard library only); prints a one-screen summary.

  python3 tests/python/soak.py --minutes 10        (scripts/soak.sh wraps it)
"""
import argparse
import asyncio
import json
import os
import random
import re
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pp_server import SERVE, ServeProcess, make_tiny_chat_model  # noqa: E402

KV_BLOCKS, BLOCK = 16, 16
POOL = KV_BLOCKS * BLOCK  # tokens of KV; the model's context is 512
MAX_RUNNING, MAX_QUEUED = 8, 16
MAX_REQUEST_BYTES = 65536
ANSWER_TIMEOUT = 180.0  # seconds for any request to be answered completely
MiB = 2 ** 20

LETTERS = "abcdefghijklmnopqrstuvwxyz "


def text(rng, n):
    """n tokens with the byte-level tokenizer (one per ASCII byte)."""
    return "".join(rng.choice(LETTERS) for _ in range(n))


class Tally:
    """Requests per class and outcome; failures keep their first few descriptions."""

    def __init__(self):
        self.sent = Counter()
        self.outcomes = defaultdict(Counter)
        self.failures = []
        self.n_failures = 0
        self.accepted = 0  # engine generations the server accepted (200s, times n)
        self.in_flight = 0  # requests the clients have not finished with

    def ok(self, cls, outcome, generations=0):
        self.outcomes[cls][outcome] += 1
        self.accepted += generations

    def fail(self, cls, what):
        self.outcomes[cls]["FAILED"] += 1
        self.n_failures += 1
        if len(self.failures) < 12:
            self.failures.append(f"{cls}: {what}"[:300])


async def send(port, method, path, body: bytes = b"", extra=b""):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n").encode()
    writer.write(head + extra + b"\r\n" + body)
    try:
        await writer.drain()
    except (ConnectionResetError, BrokenPipeError):
        pass  # the server may answer (413) before reading a large body
    return reader, writer


async def read_head(reader):
    raw = await reader.readuntil(b"\r\n\r\n")
    status = int(raw.split(b" ", 2)[1])
    return status, raw.decode(errors="replace")


async def call(port, method, path, body=b""):
    """A whole exchange: (status, head, body text)."""
    reader, writer = await send(port, method, path, body)
    try:
        raw = await reader.read(-1)
    finally:
        writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, head.decode(errors="replace"), rest.decode(errors="replace")


def metric(text_, name):
    m = re.search(r"^" + re.escape(name) + r" (\S+)$", text_, re.M)
    return float(m.group(1)) if m else -1.0


async def metrics(port):
    return (await call(port, "GET", "/metrics"))[2]


def check_error(cls, tally, status, head, body, want_status, want_param=None, want_code=None):
    if status != want_status:
        return tally.fail(cls, f"status {status}, expected {want_status}: {body[:200]}")
    try:
        e = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return tally.fail(cls, f"no error envelope: {body[:200]}")
    if want_param is not None and e.get("param") != want_param:
        return tally.fail(cls, f"param {e.get('param')!r}, expected {want_param!r}: {body[:200]}")
    if want_code is not None and e.get("code") != want_code:
        return tally.fail(cls, f"code {e.get('code')!r}, expected {want_code!r}: {body[:200]}")
    if want_status == 503 and "Retry-After" not in head:
        return tally.fail(cls, "503 without Retry-After")
    tally.ok(cls, str(status))


def generation_request(rng, stream):
    """A request that fits the pool alone: (path, body, n)."""
    kind = rng.choices(["completion", "chat", "generate"], [5, 4, 1])[0]
    n_prompt = rng.randint(1, 60)
    max_tokens = rng.randint(1, 64)
    n = 2 if (not stream and rng.random() < 0.15) else 1
    sampling = {"temperature": rng.choice([0.0, 0.7, 1.0]), "seed": rng.randint(0, 1 << 30)}
    if rng.random() < 0.5:
        sampling["ignore_eos"] = True
    if kind == "generate":
        sp = dict(sampling, max_new_tokens=max_tokens, n=n)
        return "/generate", {"text": text(rng, n_prompt), "sampling_params": sp,
                             "stream": stream}, n
    body = dict(sampling, stream=stream, n=n)
    if rng.random() < 0.05 and kind == "chat":
        pass  # no max_tokens: until the pool is full (a long request)
    else:
        body["max_tokens"] = max_tokens
    if kind == "chat":
        body["messages"] = [{"role": "user", "content": text(rng, n_prompt)}]
        return "/v1/chat/completions", body, n
    body["prompt"] = text(rng, n_prompt)
    return "/v1/completions", body, n


async def do_generation(port, rng, tally, cls, stream):
    path, body, n = generation_request(rng, stream)
    status, head, out = await call(port, "POST", path, json.dumps(body).encode())
    if status == 503:
        return check_error(cls, tally, status, head, out, 503)
    if status != 200:
        return tally.fail(cls, f"status {status}: {out[:200]}")
    if stream:
        frames = [f[6:] for f in out.split("\n") if f.startswith("data: ")]
        if not frames or frames[-1] != "[DONE]":
            return tally.fail(cls, f"stream without [DONE]: {out[-200:]}")
        if any('"error"' in f for f in frames):
            return tally.fail(cls, f"error frame: {out[-300:]}")
        if path != "/generate" and '"finish_reason":"' not in out:
            return tally.fail(cls, f"stream without finish_reason: {out[-300:]}")
    else:
        try:
            j = json.loads(out)
        except ValueError:
            return tally.fail(cls, f"bad json: {out[:200]}")
        choices = j if path == "/generate" else j.get("choices")
        if path == "/generate" and n == 1:
            choices = [j]
        if not isinstance(choices, list) or len(choices) != n:
            return tally.fail(cls, f"expected {n} choices: {out[:300]}")
    tally.ok(cls, "200", n)


async def do_cancel(port, rng, tally):
    """A long streaming request whose client goes away after a few frames."""
    body = {"prompt": text(rng, rng.randint(1, 30)), "max_tokens": rng.randint(100, 200),
            "ignore_eos": True, "stream": True}
    reader, writer = await send(port, "POST", "/v1/completions", json.dumps(body).encode())
    try:
        status, head = await read_head(reader)
        if status != 200:
            rest = await reader.read(-1)
            return check_error("cancel", tally, status, head, rest.decode(errors="replace"), 503)
        want = rng.randint(1, 4)
        got = b""
        while got.count(b"data: ") < want and b"[DONE]" not in got:
            chunk = await reader.read(4096)
            if not chunk:
                break
            got += chunk
        tally.ok("cancel", "closed mid-stream" if b"[DONE]" not in got else "finished first", 1)
    finally:
        writer.transport.abort()  # RST: the client is gone


BAD_CASES = [
    (b'{"prompt": "hi", ', 400, None),  # malformed JSON
    (b'[1, 2]', 400, None),
    (b'{"prompt": "hi", "temperature": "hot"}', 400, "temperature"),
    (b'{"prompt": "hi", "max_tokens": -3}', 400, "max_tokens"),
    (b'{"prompt": "hi", "n": 0}', 400, "n"),
    (b'{"prompt": "hi", "top_p": 0}', 400, "top_p"),
    (b'{"prompt": [5, 256]}', 400, "prompt"),
    (b'{"prompt": ""}', 400, "prompt"),
    (b'{"prompt": "hi", "max_tokens": 600}', 400, "max_tokens"),  # beyond the context
    (b'{"prompt": "\xff\xfe"}', 400, None),  # invalid UTF-8
    (b'{"prompt": "hi", "model": "gpt-4"}', 404, "model"),
    (b'{"prompt": "' + b"b" * (MAX_REQUEST_BYTES + 100) + b'"}', 413, None),
]


async def do_bad(port, rng, tally):
    body, want_status, want_param = rng.choice(BAD_CASES)
    status, head, out = await call(port, "POST", "/v1/completions", body)
    check_error("bad", tally, status, head, out, want_status, want_param)


async def do_never_fit(port, rng, tally):
    if rng.random() < 0.5:  # prompt + max_tokens beyond the pool, within the context
        n = rng.randint(1, 100)
        body = {"prompt": text(rng, n), "max_tokens": POOL - n + 2 + rng.randint(0, 100)}
        param = "max_tokens"
    else:  # the prompt alone beyond the pool
        body = {"messages": [{"role": "user", "content": text(rng, POOL + rng.randint(0, 150))}],
                "stream": rng.random() < 0.5}
        param = "messages"
    path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
    status, head, out = await call(port, "POST", path, json.dumps(body).encode())
    check_error("never_fit", tally, status, head, out, 400, param, "context_length_exceeded")


async def answered(coro, tally, cls):
    tally.in_flight += 1
    try:
        await asyncio.wait_for(coro, ANSWER_TIMEOUT)
    except asyncio.TimeoutError:
        tally.fail(cls, f"no complete answer within {ANSWER_TIMEOUT:.0f} s")
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
        tally.fail(cls, f"{type(e).__name__}: {e}")
    finally:
        tally.in_flight -= 1


async def worker(port, rng, tally, gate, stop_at):
    weights = {"stream": 35, "whole": 25, "cancel": 15, "bad": 15, "never_fit": 10}
    classes, w = list(weights), list(weights.values())
    while time.time() < stop_at:
        await gate.wait()
        cls = rng.choices(classes, w)[0]
        tally.sent[cls] += 1
        if cls in ("stream", "whole"):
            coro = do_generation(port, rng, tally, cls, cls == "stream")
        elif cls == "cancel":
            coro = do_cancel(port, rng, tally)
        elif cls == "bad":
            coro = do_bad(port, rng, tally)
        else:
            coro = do_never_fit(port, rng, tally)
        await answered(coro, tally, cls)
        await asyncio.sleep(rng.random() * 0.05)


async def bursts(port, rng, tally, gate, stop_at, size):
    """Every 10-20 s, `size` requests at once: several times running + queued."""
    while True:
        await asyncio.sleep(rng.uniform(10, 20))
        if time.time() >= stop_at:
            return
        await gate.wait()
        tally.sent["burst"] += size
        await asyncio.gather(*(answered(do_generation(port, random.Random(rng.random()), tally,
                                                      "burst", rng.random() < 0.5),
                                        tally, "burst") for _ in range(size)))


def rss_of(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def stage_pids(server_pid):
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == server_pid:
            out.append(int(d.name))
    return sorted(out)


async def idle_point(srv, tally, label):
    """Waits for the server to be idle; returns a record of its state and memory."""
    port = srv.port
    await asyncio.sleep(0.1)  # requests just started (a burst's tasks) count themselves in
    while tally.in_flight > 0:  # the clients finish what they have in hand (bounded)
        await asyncio.sleep(0.05)
    deadline = time.time() + 60
    m = ""
    while time.time() < deadline:
        m = await metrics(port)
        if all(metric(m, k) == 0 for k in ("pp_kv_blocks_used", "pp_requests_live",
                                           "pp_requests_running", "pp_requests_waiting")):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)  # let freed memory settle
    m = await metrics(port)
    rec = {"label": label, "t": time.time(),
           "kv_used": metric(m, "pp_kv_blocks_used"), "live": metric(m, "pp_requests_live"),
           "running": metric(m, "pp_requests_running"), "waiting": metric(m, "pp_requests_waiting"),
           "healthy": metric(m, "pp_engine_healthy"),
           "finished": sum(metric(m, f'pp_requests_finished_total{{reason="{r}"}}')
                           for r in ("stop", "length", "abort")),
           "aborted": metric(m, 'pp_requests_finished_total{reason="abort"}'),
           "preemptions": metric(m, "pp_preemptions_total"),
           "rejected_full": metric(m, 'pp_requests_rejected_total{reason="queue_full"}'),
           "never_fits": metric(m, 'pp_requests_rejected_total{reason="never_fits"}'),
           "rss_serve": rss_of(srv.proc.pid),
           "stages": {pid: rss_of(pid) for pid in stage_pids(srv.proc.pid)}}
    for k in ("kv_used", "live", "running", "waiting"):
        if rec[k] != 0:
            tally.fail("idle", f"{label}: {k} = {rec[k]} when idle")
    if rec["healthy"] != 1:
        tally.fail("idle", f"{label}: engine not healthy")
    return rec


async def soak(srv, args, tally):
    rng = random.Random(args.seed)
    port = srv.port
    t0 = time.time()
    end = t0 + args.minutes * 60
    warmup = min(60.0, 0.2 * args.minutes * 60)
    # Idle points: after warm-up (the baseline), every --checkpoint-minutes, and at the end.
    marks = [t0 + warmup]
    step = args.checkpoint_minutes * 60
    while marks[-1] + step < end - 5:
        marks.append(marks[-1] + step)
    gate = asyncio.Event()
    gate.set()
    points = []
    stop_at = end
    tasks = [asyncio.create_task(worker(port, random.Random(rng.random()), tally, gate, stop_at))
             for _ in range(args.workers)]
    tasks.append(asyncio.create_task(bursts(port, random.Random(rng.random()), tally, gate,
                                            stop_at, args.burst)))
    stages0 = stage_pids(srv.proc.pid)
    for i, mark in enumerate(marks):
        await asyncio.sleep(max(0.0, mark - time.time()))
        gate.clear()  # workers finish what they have in hand, then wait
        points.append(await idle_point(srv, tally, "baseline" if i == 0 else f"t+{(mark - t0) / 60:.1f}m"))
        gate.set()
        print(f"  [{time.time() - t0:6.0f} s] idle point {points[-1]['label']}: serve "
              f"{points[-1]['rss_serve'] / MiB:.1f} MiB, stages "
              f"{[round(v / MiB, 1) for v in points[-1]['stages'].values()]} MiB, "
              f"{sum(sum(c.values()) for c in tally.outcomes.values())} answered",
              flush=True)
    await asyncio.gather(*tasks)
    points.append(await idle_point(srv, tally, "end"))
    if srv.proc.poll() is not None:
        tally.fail("server", f"pp-serve exited with {srv.proc.returncode}")
    if stage_pids(srv.proc.pid) != stages0:
        tally.fail("server", f"stage processes changed: {stages0} -> {stage_pids(srv.proc.pid)}")
    return points, time.time() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=12, help="concurrent client loops")
    ap.add_argument("--burst", type=int, default=48, help="requests per burst")
    ap.add_argument("--checkpoint-minutes", type=float, default=5.0)
    ap.add_argument("--rss-tolerance", type=float, default=0.10,
                    help="allowed growth of idle RSS over the baseline, as a fraction")
    ap.add_argument("--rss-slack-mib", type=float, default=16.0,
                    help="allowed growth of idle RSS in MiB, on top of the fraction")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--json", type=Path, help="write the numbers here")
    args = ap.parse_args()
    if args.seed is None:
        args.seed = random.SystemRandom().randint(0, 1 << 30)
    if not SERVE.exists():
        print(f"soak: no pp-serve at '{SERVE}' (build first, or set PP_BUILD_DIR)", file=sys.stderr)
        return 2

    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="pp-soak-") as tmp:
        tmp = Path(tmp)
        model = make_tiny_chat_model(tmp / "tiny-chat")
        log = tmp / "serve.log"
        srv = ServeProcess(["--model", model, "--pp", "2", "--threads-per-stage", "1",
                            "--kv-blocks", KV_BLOCKS, "--max-running-requests", MAX_RUNNING,
                            "--max-queued-requests", MAX_QUEUED, "--max-request-bytes",
                            MAX_REQUEST_BYTES, "--max-concurrent-connections", 256,
                            "--db", tmp / "runs.db"], log)
        print(f"soak: {args.minutes:g} min, seed {args.seed}, pp-serve pid {srv.proc.pid} on port "
              f"{srv.port}, stages {stage_pids(srv.proc.pid)}; pool {KV_BLOCKS} x {BLOCK} tokens, "
              f"{MAX_RUNNING} running + {MAX_QUEUED} queued", flush=True)
        try:
            points, elapsed = asyncio.run(soak(srv, args, tally))
            rc = srv.terminate()
            if rc != 0:
                tally.fail("server", f"SIGTERM exit status {rc}")
        except BaseException:
            srv.kill()
            print(log.read_text()[-3000:], file=sys.stderr)
            raise
        log_text = log.read_text()
    for line in log_text.splitlines():
        if re.search(r"\b(error|critical)\b", line, re.I) and "pp_" not in line:
            tally.fail("server-log", line)

    # Memory: the last idle point against the baseline.
    base, last = points[0], points[-1]
    tol = lambda b: b * (1 + args.rss_tolerance) + args.rss_slack_mib * MiB  # noqa: E731
    mem_rows = [("pp-serve", base["rss_serve"], last["rss_serve"])]
    for k, (pid, rss) in enumerate(sorted(base["stages"].items())):
        mem_rows.append((f"pp-stage {k}", rss, last["stages"].get(pid, 0)))
    for name, b, e in mem_rows:
        if e > tol(b):
            tally.fail("memory", f"{name}: idle RSS {b / MiB:.1f} -> {e / MiB:.1f} MiB")
    server_finished = last["finished"]
    if server_finished != tally.accepted:
        tally.fail("accounting", f"server finished {server_finished:.0f} generations, clients "
                                 f"had {tally.accepted} accepted")

    # The summary.
    print(f"\nsoak summary: {elapsed / 60:.1f} min, seed {args.seed}")
    print(f"{'class':<10} {'sent':>7}  outcomes")
    for cls in ("stream", "whole", "cancel", "bad", "never_fit", "burst"):
        outs = ", ".join(f"{k}: {v}" for k, v in sorted(tally.outcomes[cls].items()))
        print(f"{cls:<10} {tally.sent[cls]:>7}  {outs}")
    total = sum(tally.sent.values())
    print(f"{'total':<10} {total:>7}  generations accepted {tally.accepted}, server finished "
          f"{server_finished:.0f} (aborted {last['aborted']:.0f}), preemptions "
          f"{last['preemptions']:.0f}, 503 queue full {last['rejected_full']:.0f}, never-fit "
          f"400 {last['never_fits']:.0f}")
    print("idle points (KV blocks used, live requests, RSS MiB: serve / stages):")
    for p in points:
        print(f"  {p['label']:<9} kv {p['kv_used']:.0f}, live {p['live']:.0f}, "
              f"{p['rss_serve'] / MiB:6.1f} / "
              + " ".join(f"{v / MiB:6.1f}" for _, v in sorted(p["stages"].items())))
    print("memory, baseline -> end: " + "; ".join(
        f"{n} {b / MiB:.1f} -> {e / MiB:.1f} MiB ({(e - b) / MiB:+.1f})" for n, b, e in mem_rows)
        + f" (tolerance +{args.rss_tolerance:.0%} + {args.rss_slack_mib:g} MiB)")
    if args.json:
        args.json.write_text(json.dumps({
            "minutes": elapsed / 60, "seed": args.seed, "sent": tally.sent,
            "outcomes": tally.outcomes, "accepted": tally.accepted,
            "server_finished": server_finished, "points": points,
            "failures": tally.failures}, indent=2, default=str))
    if tally.n_failures:
        print(f"\nFAILED: {tally.n_failures} failures; first ones:")
        for f in tally.failures:
            print(f"  {f}")
        return 1
    print("\nok: no crash, every request answered as expected, KV and memory back to baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
