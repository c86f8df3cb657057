#!/usr/bin/env python3
"""An ordinary OpenAI Batch API script, as teams already have them: write a JSONL of
requests, upload it, create a batch, poll until it ends, download the results.

Nothing in it knows about volley. Pointed at `volley serve` by the SDK's own environment
variables (OPENAI_BASE_URL, OPENAI_API_KEY), it runs unchanged against any
OpenAI-compatible upstream, OpenRouter included:

    OPENAI_BASE_URL=http://127.0.0.1:8080/v1 OPENAI_API_KEY=unused python3 examples/openai_batch.py
"""

import io
import json
import time

from openai import OpenAI

client = OpenAI()

questions = [f"In one sentence, what is {topic}?" for topic in
             ["a prime number", "entropy", "a hash table", "photosynthesis", "inflation"] * 10]
lines = [
    {
        "custom_id": f"q-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "openai/gpt-4o-mini", "max_tokens": 60,
                 "messages": [{"role": "user", "content": q}]},
    }
    for i, q in enumerate(questions)
]
jsonl = "".join(json.dumps(line) + "\n" for line in lines).encode()

batch_input = client.files.create(file=("questions.jsonl", io.BytesIO(jsonl)), purpose="batch")
batch = client.batches.create(
    input_file_id=batch_input.id,
    endpoint="/v1/chat/completions",
    completion_window="24h",
)
print(f"created {batch.id} ({batch.request_counts.total} requests)")

while batch.status not in ("completed", "failed", "expired", "cancelled"):
    time.sleep(1)
    batch = client.batches.retrieve(batch.id)
    counts = batch.request_counts
    print(f"  {batch.status}: {counts.completed} completed, {counts.failed} failed of {counts.total}")

if batch.output_file_id:
    answers = [json.loads(l) for l in client.files.content(batch.output_file_id).text.splitlines()]
    first = answers[0]
    print(f"{len(answers)} answers; {first['custom_id']}: "
          f"{first['response']['body']['choices'][0]['message']['content']}")
print(f"tokens: {batch.usage.input_tokens} in, {batch.usage.output_tokens} out")
