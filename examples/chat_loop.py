#!/usr/bin/env python3
"""A script as teams write them: many chat completions from a thread pool, with no idea
of the account's rate limit. Several copies pointed at `volley serve`'s proxy share one
limit, one key pool and one ledger, instead of each tripping 429s on its own:

    OPENAI_BASE_URL=http://127.0.0.1:8080/v1 OPENAI_API_KEY=unused python3 examples/chat_loop.py NAME N
"""

import concurrent.futures
import sys
import time

from openai import OpenAI

name, n = sys.argv[1], int(sys.argv[2])
client = OpenAI()


def ask(i: int) -> str:
    reply = client.chat.completions.create(
        model="openai/gpt-4o-mini",
        max_tokens=40,
        messages=[{"role": "user", "content": f"{name}: give me fact number {i}"}],
    )
    return reply.choices[0].message.content


started = time.monotonic()
with concurrent.futures.ThreadPoolExecutor(16) as pool:
    answers = list(pool.map(ask, range(n)))
print(f"{name}: {len(answers)} answers in {time.monotonic() - started:.1f} s")
