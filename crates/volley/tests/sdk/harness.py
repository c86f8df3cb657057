"""Harness for end-to-end tests of `volley serve` driven by the official `openai` SDK.

Stdlib only (plus `openai` and the HTTP client it ships with, for the recording transport).

- `Harness` starts `volley mock` and `volley serve` as subprocesses (binary from $VOLLEY_BIN,
  default: this repository's target/debug/volley), reads the base URL each prints as its first stdout
  line (30 s, failing with the process's stderr if it dies or stays silent), sends stdout and
  stderr to files in a temporary directory so no pipe ever blocks, and stops every process at
  the end (SIGTERM, then SIGKILL after 10 s). On failure it prints every process's stderr and
  keeps the directory; on success it removes it (unless VOLLEY_SDK_KEEP=1).
- `Checks` records named checks, prints PASS/FAIL lines and the closing "N passed, N failed".
- `assert_no_key` / `find_key` look for the upstream key in any text.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

# The debug binary of the repository this file is in, unless VOLLEY_BIN names another.
VOLLEY_BIN = os.environ.get(
    "VOLLEY_BIN",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "target", "debug", "volley"),
)
TEST_KEY_ENV = "VOLLEY_TEST_KEY"
TEST_KEY = "sk-test-0000000000001234"
GW_TOKEN_ENV = "GW_TOKEN"
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
LOG_TAIL_CHARS = 20_000

BASE_URL_RE = re.compile(r"^http://127\.0\.0\.1:\d+/v1$")


class TestFailure(AssertionError):
    """A check failed; the message says which and what was seen."""


# ---------------------------------------------------------------- secrets


def _as_text(data: Any) -> str:
    if data is None:
        return ""
    if isinstance(data, (bytes, bytearray)):
        return bytes(data).decode("utf-8", errors="replace")
    return str(data)


def find_key(data: Any, key: str = TEST_KEY) -> bool:
    """Whether the key (or the key without its `sk-` prefix) appears in data."""
    text = _as_text(data)
    return key in text or (key.startswith("sk-") and key[3:] in text)


def assert_no_key(data: Any, where: str = "text", key: str = TEST_KEY) -> None:
    """Fails if the upstream API key appears in data (str or bytes)."""
    if find_key(data, key):
        text = _as_text(data)
        i = text.find(key[3:] if key.startswith("sk-") else key)
        excerpt = text[max(0, i - 120) : i + 120]
        raise TestFailure(f"the upstream API key appears in {where}: ...{excerpt!r}...")


# ---------------------------------------------------------------- raw HTTP


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)

    def short(self, limit: int = 600) -> str:
        t = self.text
        return f"HTTP {self.status}: {t[:limit]}{'...' if len(t) > limit else ''}"


# Every body a test read over HTTP (raw or through the SDK's recording transport) is passed
# here, so the key check sees all of them.
RESPONSE_LOG: list[tuple[str, bytes]] = []


def http(
    method: str,
    url: str,
    *,
    body: bytes | str | None = None,
    headers: Mapping[str, str] | None = None,
    token: str | None = None,
    timeout: float = 30.0,
) -> Reply:
    """One raw HTTP request (no retries); any status comes back as a Reply."""
    if isinstance(body, str):
        body = body.encode()
    req = urllib.request.Request(url, data=body, method=method)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            reply = Reply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
    except urllib.error.HTTPError as e:
        reply = Reply(e.code, {k.lower(): v for k, v in e.headers.items()} if e.headers else {}, e.read() or b"")
    RESPONSE_LOG.append((f"{method} {url}", reply.body))
    return reply


def recording_http_client() -> Any:
    """An http client for openai.OpenAI(http_client=...) that logs every response body."""
    import openai

    try:
        import httpx2 as _httpx  # openai >= 3 ships httpx2
    except ImportError:  # older SDKs use httpx
        import httpx as _httpx  # type: ignore[no-redef]

    class RecordingTransport(_httpx.HTTPTransport):
        def handle_request(self, request):  # type: ignore[override]
            response = super().handle_request(request)
            response.read()
            RESPONSE_LOG.append((f"{request.method} {request.url}", response.content))
            return response

    return openai.DefaultHttpxClient(transport=RecordingTransport())


def describe_error(e: BaseException) -> str:
    """A one-paragraph account of an exception, with the server's reply for SDK errors."""
    try:
        import openai
    except ImportError:  # pragma: no cover
        openai = None  # type: ignore[assignment]
    if openai is not None and isinstance(e, openai.APIStatusError):
        req = e.response.request
        body = e.response.text
        return (
            f"{type(e).__name__}: {req.method} {req.url} -> HTTP {e.status_code}: "
            f"{body[:800]}{'...' if len(body) > 800 else ''}"
        )
    if openai is not None and isinstance(e, openai.APIConnectionError):
        req = getattr(e, "request", None)
        where = f"{req.method} {req.url}" if req is not None else "?"
        return f"{type(e).__name__} on {where}: {e} (cause: {e.__cause__!r})"
    if isinstance(e, TestFailure):
        return str(e)
    return f"{type(e).__name__}: {e}\n{traceback.format_exc()}"


# ---------------------------------------------------------------- processes


class Proc:
    """A subprocess whose stdout and stderr go to files (so pipes never block)."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], workdir: str):
        self.name = name
        self.args = args
        self.stdout_path = os.path.join(workdir, f"{name}.stdout")
        self.stderr_path = os.path.join(workdir, f"{name}.stderr")
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        self.returncode: int | None = None
        self.killed = False
        self.popen = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err, env=dict(env)
        )

    def stdout_text(self) -> str:
        with open(self.stdout_path, "rb") as f:
            return f.read().decode("utf-8", errors="replace")

    def stderr_text(self) -> str:
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", errors="replace")

    def _died(self, what: str) -> TestFailure:
        return TestFailure(
            f"{self.name} ({' '.join(self.args)}) {what}\n"
            f"--- {self.name} stdout ---\n{self.stdout_text()[-LOG_TAIL_CHARS:]}\n"
            f"--- {self.name} stderr ---\n{self.stderr_text()[-LOG_TAIL_CHARS:]}"
        )

    def first_line(self, timeout: float = STARTUP_TIMEOUT) -> str:
        """The first stdout line, waiting up to timeout; fails if the process dies first."""
        deadline = time.monotonic() + timeout
        while True:
            with open(self.stdout_path, "rb") as f:
                data = f.read()
            if b"\n" in data:
                return data.split(b"\n", 1)[0].decode("utf-8", errors="replace").strip()
            rc = self.popen.poll()
            if rc is not None:
                raise self._died(f"exited with status {rc} before printing its first line")
            if time.monotonic() > deadline:
                raise self._died(f"printed no line within {timeout:.0f} s")
            time.sleep(0.02)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then SIGKILL after timeout; returns the exit status."""
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGTERM)
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.popen.kill()
                self.popen.wait()
        self.returncode = self.popen.returncode
        for f in (self._out, self._err):
            if not f.closed:
                f.close()
        return self.returncode


class Mock(Proc):
    base_url: str  # http://127.0.0.1:PORT/v1

    @property
    def root(self) -> str:
        return self.base_url[: -len("/v1")]

    def stats(self) -> dict:
        r = http("GET", f"{self.root}/mock/stats")
        if r.status != 200:
            raise TestFailure(f"GET {self.root}/mock/stats -> {r.short()}")
        return r.json()


class Serve(Proc):
    base_url: str  # http://127.0.0.1:PORT/v1
    data_dir: str
    token: str | None

    @property
    def root(self) -> str:
        return self.base_url[: -len("/v1")]


def _child_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    # Nothing from the caller's OpenAI setup may reach the processes under test.
    for k in list(env):
        if k.startswith("OPENAI_"):
            del env[k]
    env.setdefault("RUST_BACKTRACE", "1")
    env.update(extra)
    return env


class Harness:
    """Temp dir + mock/serve processes; use as a context manager."""

    def __init__(self, prefix: str = "volley-sdk-"):
        self.dir = tempfile.mkdtemp(prefix=prefix)
        self.procs: list[Proc] = []
        self.failed = False

    # -- starting

    def _start(self, cls: type, name: str, args: list[str], env: Mapping[str, str], **attrs: Any) -> Any:
        if not os.path.exists(args[0]):
            raise TestFailure(f"volley binary not found at {args[0]} (set VOLLEY_BIN)")
        proc = cls(name, args, _child_env(env), self.dir)
        for k, v in attrs.items():
            setattr(proc, k, v)
        self.procs.append(proc)
        line = proc.first_line()
        if not BASE_URL_RE.match(line):
            raise proc._died(f"printed {line!r} as its first line, not http://127.0.0.1:PORT/v1")
        proc.base_url = line
        return proc

    def start_mock(
        self,
        name: str = "mock",
        *,
        latency_ms: int = 0,
        jitter_ms: int = 0,
        rpm: int | None = None,
        window: float | None = None,
        seed: int | None = None,
        extra: Iterable[str] = (),
    ) -> Mock:
        args = [VOLLEY_BIN, "mock", "--addr", "127.0.0.1:0"]
        if latency_ms:
            args += ["--latency-ms", str(latency_ms)]
        if jitter_ms:
            args += ["--jitter-ms", str(jitter_ms)]
        if rpm is not None:
            args += ["--rpm", str(rpm)]
        if window is not None:
            args += ["--window", str(window)]
        if seed is not None:
            args += ["--seed", str(seed)]
        args += list(extra)
        return self._start(Mock, name, args, {})

    def start_serve(
        self,
        upstream: Mock | str,
        name: str = "serve",
        *,
        auth_token: str | None = None,
        tokens: Mapping[str, str] | None = None,
        concurrency: int | None = None,
        rpm: int | None = None,
        data_dir: str | None = None,
        extra: Iterable[str] = (),
    ) -> Serve:
        """`auth_token`: gateway token passed via --auth-token-env GW_TOKEN;
        `tokens`: {tenant: token} written to a --tokens-file."""
        base = upstream if isinstance(upstream, str) else upstream.base_url
        data_dir = data_dir or os.path.join(self.dir, f"{name}-data")
        os.makedirs(data_dir, exist_ok=True)
        args = [VOLLEY_BIN, "serve", "--addr", "127.0.0.1:0", "--data-dir", data_dir]
        args += ["--base-url", base, "--api-key-env", TEST_KEY_ENV]
        env = {TEST_KEY_ENV: TEST_KEY}
        if auth_token is not None:
            env[GW_TOKEN_ENV] = auth_token
            args += ["--auth-token-env", GW_TOKEN_ENV]
        if tokens is not None:
            path = os.path.join(self.dir, f"{name}-tokens.txt")
            with open(path, "w") as f:
                for tenant, tok in tokens.items():
                    f.write(f"{tenant} {tok}\n")
            args += ["--tokens-file", path]
        if concurrency is not None:
            args += ["--concurrency", str(concurrency)]
        if rpm is not None:
            args += ["--rpm", str(rpm)]
        args += list(extra)
        return self._start(Serve, name, args, env, data_dir=data_dir, token=auth_token)

    # -- stopping and logs

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            p.stop()

    def dump_logs(self, out: Any = None) -> None:
        out = out or sys.stderr
        for p in self.procs:
            for what, text in (("stdout", p.stdout_text()), ("stderr", p.stderr_text())):
                tail = text[-LOG_TAIL_CHARS:]
                cut = " (tail)" if len(text) > len(tail) else ""
                print(f"----- {p.name} {what}{cut}: {' '.join(p.args)}", file=out)
                print(tail if tail.strip() else "(empty)", file=out)
        print(f"----- logs and data kept in {self.dir}", file=out)

    def __enter__(self) -> "Harness":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop_all()
        if exc is not None and not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            self.failed = True
            print(f"FAIL (aborted): {describe_error(exc)}", file=sys.stderr)
        if self.failed:
            self.dump_logs()
        elif os.environ.get("VOLLEY_SDK_KEEP") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------- checks


class Checks:
    """Named checks: failures are recorded (not raised) so one run reports all of them."""

    def __init__(self) -> None:
        self.passed = 0
        self.failures: list[str] = []

    def check(self, cond: Any, name: str, detail: Any = "") -> bool:
        if cond:
            self.passed += 1
            print(f"PASS {name}", flush=True)
            return True
        msg = f"{name}" + (f": {detail}" if detail != "" else "")
        self.failures.append(msg)
        print(f"FAIL {msg}", flush=True)
        return False

    def fail(self, name: str, detail: Any = "") -> None:
        self.check(False, name, detail)

    def info(self, text: str) -> None:
        print(f"INFO {text}", flush=True)

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        """Runs a block; an exception in it fails the section (with the server's reply)."""
        print(f"== {name}", flush=True)
        try:
            yield
        except TestFailure as e:
            self.fail(f"[{name}] aborted", str(e))
        except Exception as e:  # noqa: BLE001 - any error is a test failure, reported
            self.fail(f"[{name}] aborted", describe_error(e))

    def summary(self) -> int:
        if self.failures:
            print("\nFailed checks:", flush=True)
            for f in self.failures:
                print(f"  - {f.splitlines()[0][:300]}", flush=True)
        print(f"\n{self.passed} passed, {len(self.failures)} failed", flush=True)
        return 1 if self.failures else 0


def expect_status_error(fn, status: int | tuple[int, ...], cls_name: str | None = None) -> tuple[bool, str]:
    """Calls fn(); expects an openai.APIStatusError with the given status (and class name).
    Returns (ok, what happened)."""
    import openai

    statuses = (status,) if isinstance(status, int) else status
    try:
        got = fn()
    except openai.APIStatusError as e:
        ok = e.status_code in statuses and (cls_name is None or type(e).__name__ == cls_name)
        return ok, describe_error(e)
    except Exception as e:  # noqa: BLE001
        return False, describe_error(e)
    shown = getattr(got, "model_dump_json", None)
    return False, f"no error; got {shown()[:400] if shown else repr(got)[:400]}"
