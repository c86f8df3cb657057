#!/usr/bin/env python3
"""One client process of the proxy test: the official `openai` SDK pointed at `volley serve`
sends N chat completions from T threads (no SDK retries, so every failure is seen), and
first one streamed completion. Prints a JSON summary on stdout.

Usage: proxy_client.py BASE_URL N THREADS NAME
"""

import concurrent.futures
import json
import sys
import time

import openai


def main() -> None:
    base_url, n, threads, name = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    client = openai.OpenAI(base_url=base_url, api_key="gateway-needs-no-key", max_retries=0, timeout=120)

    # A streamed completion arrives as server-sent events, chunk by chunk.
    chunks, text, usage = 0, "", None
    stream = client.chat.completions.create(
        model="m",
        stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": f"stream for {name} please"}],
    )
    for chunk in stream:
        chunks += 1
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage is not None:
            usage = chunk.usage.total_tokens

    def one(i: int):
        started = time.monotonic()
        reply = client.chat.completions.create(
            model="m",
            max_tokens=20,
            messages=[{"role": "user", "content": f"{name} question {i}"}],
        )
        assert reply.choices[0].message.content, reply
        return time.monotonic() - started

    ok, failed, errors = 0, 0, []
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for future in concurrent.futures.as_completed([pool.submit(one, i) for i in range(n)]):
            try:
                future.result()
                ok += 1
            except Exception as e:  # every failure is counted and shown
                failed += 1
                if len(errors) < 5:
                    errors.append(f"{type(e).__name__}: {e}")
    print(json.dumps({
        "ok": ok,
        "failed": failed,
        "errors": errors,
        "stream": {"chunks": chunks, "text": text, "usage": usage},
    }))


if __name__ == "__main__":
    main()
