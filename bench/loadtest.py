"""Load test on loopback: C clients share N ``/predict`` requests; errors and memory growth.

Bounded in count (``--requests``) and time (``--max-seconds``: clients stop taking new
requests after it). Passes when no request failed and the server's resident memory grew
less than 10 % between request 100 and the last request (``--mark``, default 100).

    python -m bench.loadtest [--clients 8] [--requests 500] [--max-seconds 1200]
                             [--image PATH] [--model PATH] [--json FILE]

Every request uploads a film of its own, made before the clients start: lung5 test films in
turn, padded to 512×512 (``--side``) PNG, each with a random patch (``bench.films.Films``; the
serving benchmark uses 2048×2048), so none is answered from the per-session case cache.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gradio_client import Client

from bench.films import Films
from bench.server import ask, model_for_bench, serve

GROWTH_LIMIT = 0.10


class Counter:
    """Hands out request numbers and records the server's RSS as it passes ``marks``."""

    def __init__(self, total: int, deadline: float) -> None:
        self.total = total
        self.deadline = deadline
        self.issued = 0
        self.done = 0
        self.errors: list[str] = []
        self.rss_at: dict[int, int] = {}
        self._lock = threading.Lock()

    def take(self) -> int | None:
        """The next request's number (from 0), or None when the count or the time is up."""
        with self._lock:
            if self.issued >= self.total or time.monotonic() > self.deadline:
                return None
            self.issued += 1
            return self.issued - 1

    def finish(self, error: str | None, rss: int) -> None:
        with self._lock:
            self.done += 1
            if error:
                self.errors.append(error)
            self.rss_at[self.done] = rss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=500, help="total, shared by clients")
    parser.add_argument("--max-seconds", type=float, default=1200)
    parser.add_argument("--mark", type=int, default=100, help="request to measure growth from")
    parser.add_argument("--side", type=int, default=512, help="upload size in pixels")
    parser.add_argument("--model", help="checkpoint (default: bundled, else random 224 px)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.requests <= args.mark:
        parser.error(f"--requests ({args.requests}) must be more than --mark ({args.mark})")
    with tempfile.TemporaryDirectory(prefix="lungcam-load-") as tmp:
        folder = Path(tmp)
        films = Films(folder, args.side)
        first, *uploads = films.take(args.requests + 1)
        model = model_for_bench(args.model, folder)
        with serve(model, folder, first, "--device", "cpu") as (server, _):
            counter = Counter(args.requests, time.monotonic() + args.max_seconds)

            def client_loop(_: int) -> None:
                client = Client(server.url, verbose=False)
                while (request := counter.take()) is not None:
                    error = None
                    try:
                        ask(client, uploads[request])
                    except Exception as err:  # counted, and the run goes on
                        error = f"{type(err).__name__}: {err}"
                    counter.finish(error, server.rss())

            start = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(client_loop, range(args.clients)))
            elapsed = time.perf_counter() - start
            peak = max(server.rss_samples)
    last = counter.done
    at_mark = counter.rss_at.get(args.mark)
    growth = (counter.rss_at[last] - at_mark) / at_mark if at_mark else None
    result = {
        "clients": args.clients,
        "requests_done": last,
        "requests_asked": args.requests,
        "upload_px": args.side,
        "distinct_uploads": films.made,
        "seconds": round(elapsed, 1),
        "requests_per_s": round(last / elapsed, 3),
        "errors": len(counter.errors),
        "first_errors": counter.errors[:5],
        f"rss_mb_at_{args.mark}": round(at_mark / 2**20, 1) if at_mark else None,
        f"rss_mb_at_{last}": round(counter.rss_at[last] / 2**20, 1),
        "rss_growth": round(growth, 4) if growth is not None else None,
        "peak_rss_mb": round(peak / 2**20, 1),
    }
    passed = (
        not counter.errors
        and last == args.requests
        and growth is not None
        and growth < GROWTH_LIMIT
    )
    result["passed"] = passed
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
