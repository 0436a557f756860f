"""API benchmark: 20 concurrent clients against `tunery api`; prints ONE JSON object.

Usage (from anywhere)::

    python benchmarks/api.py                          # built-in SmolLM2-135M, 20 clients x 2 requests
    python benchmarks/api.py --stream                 # streamed replies (also time to first token)
    python benchmarks/api.py --max-tokens 64 --clients 8 infer_dtype=bfloat16   # key=value go to the server

The server is started as a child process (`python -m tunery api ...`, the CLI's own
entry point) on a free localhost port, so clients and server do not share a Python
interpreter; it is stopped at the end. Each client sends its requests one after the
other with the official `openai` client; every request asks for greedy decoding of
exactly ``--max-tokens`` tokens at most. Reported: requests/s and completion tokens/s
over the whole run (first request sent to last reply received), p50/p95 request
latency, p50/p95 time to the first streamed text (with ``--stream``), the server's
start-up time (model load), and the latency of one request with the server to itself
(after one warm-up request; neither is part of the concurrent run), to compare with.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_NAME = "bench"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model_name_or_path for the server")
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients (default 20)")
    parser.add_argument("--requests", type=int, default=2, help="requests per client (default 2)")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens per request (default 32)")
    parser.add_argument("--stream", action="store_true", help="stream the replies")
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides for the server")
    return parser.parse_args(argv)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "tunery", "api", "--model", args.model, "--port", str(port),
        "--model-name", MODEL_NAME, "do_sample=false", *args.overrides,
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=sys.stderr, stderr=sys.stderr)


def wait_until_healthy(server: subprocess.Popen, port: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the server did not become ready in time")


def one_request(client, prompt: str, max_tokens: int, stream: bool) -> dict:
    """Latency (and time to first text when streaming) and completion tokens of one request."""
    messages = [{"role": "user", "content": prompt}]
    start = time.perf_counter()
    if not stream:
        response = client.chat.completions.create(
            model=MODEL_NAME, messages=messages, max_tokens=max_tokens, temperature=0
        )
        return {"latency": time.perf_counter() - start, "tokens": response.usage.completion_tokens}
    first, tokens = None, 0
    chunks = client.chat.completions.create(
        model=MODEL_NAME, messages=messages, max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in chunks:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return {"latency": time.perf_counter() - start, "first_token": first, "tokens": tokens}


def run_client(base_url: str, index: int, args: argparse.Namespace) -> list[dict]:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=3600)
    numbers = range(index * args.requests, (index + 1) * args.requests)
    prompts = [f"Write one sentence about the number {number}." for number in numbers]
    return [one_request(client, prompt, args.max_tokens, args.stream) for prompt in prompts]


def run_alone(base_url: str, args: argparse.Namespace) -> dict:
    """One warm-up request (first calls pay one-off setup), then one request with the server to itself."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=3600)
    one_request(client, "Hello!", args.max_tokens, args.stream)
    return one_request(client, "Write one sentence about the number 1000.", args.max_tokens, args.stream)


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 3)
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return round(cuts[int(fraction * 100) - 1], 3)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    port = free_port()
    started = time.perf_counter()
    server = start_server(args, port)
    try:
        wait_until_healthy(server, port)
        startup = time.perf_counter() - started
        base_url = f"http://127.0.0.1:{port}/v1"
        alone = run_alone(base_url, args)
        begin = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.clients) as pool:
            per_client = list(pool.map(lambda i: run_client(base_url, i, args), range(args.clients)))
        wall = time.perf_counter() - begin
    finally:
        server.terminate()
        server.wait(timeout=60)
    results = [result for client in per_client for result in client]
    latencies = [result["latency"] for result in results]
    first_tokens = [result["first_token"] for result in results if result.get("first_token") is not None]
    tokens = sum(result["tokens"] for result in results)
    print(json.dumps({
        "model": args.model,
        "clients": args.clients,
        "requests": len(results),
        "max_tokens": args.max_tokens,
        "stream": args.stream,
        "overrides": args.overrides,
        "startup_s": round(startup, 2),
        "single_request_latency_s": round(alone["latency"], 3),
        "wall_time_s": round(wall, 2),
        "requests_per_s": round(len(results) / wall, 3),
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 1),
        "latency_p50_s": percentile(latencies, 0.50),
        "latency_p95_s": percentile(latencies, 0.95),
        "first_token_p50_s": percentile(first_tokens, 0.50),
        "first_token_p95_s": percentile(first_tokens, 0.95),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
