"""Search backend outages against real loopback servers: the trainer and evaluator notice.

Unit tests of the accounting, then the front doors end to end with a tiny model
warm-started to search on every first turn (a random one never does), served by the real
``/retrieve`` server (:class:`igpo_env.serve.RetrievalServer`) over a BM25 index whose
backend can be told to fail some calls or to die for good:

- a backend down at the start: the trainer (the issue's command, as a subprocess) and the
  evaluator stop before anything is trained or scored, naming the retriever and the fix;
- a backend killed after step 1: the run stops at step 2 with a checkpoint of step 1 and
  exit status 3; after a restart ``--resume`` finishes it, bit for bit as if no outage had
  happened;
- a backend failing one search, under the threshold: the run goes on, the failure is in
  metrics.jsonl and the rollout dumps, and that rollout gets no advantage;
- the evaluator refuses to score past the threshold and reports failures below it; the
  trainer's final evaluation is refused after the trained policy is saved.

The HTTP client gets no retries and a short backoff (``IGPO_HTTP_*``), so one failed
request is one failed search and the tests stay fast.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from safetensors.torch import load_file

import igpo_env  # noqa: F401  (registers the ids)
from igpo_agent import evaluate
from igpo_agent.config import TrainConfig
from igpo_agent.model.policy import Policy
from igpo_agent.model.prompts import policy_prompt_fn
from igpo_agent.rollout.trajectory import Span, Trajectory
from igpo_agent.run import logging_utils as K
from igpo_agent.run import search_health as SH
from igpo_agent.sft import train_step
from igpo_agent.train import main as train_main
from igpo_env.data import load_corpus
from igpo_env.retrievers.base import SearchError
from igpo_env.retrievers.bm25 import BM25sRetriever
from igpo_env.serve import RetrievalServer
from tests.fixtures import write_corpus, write_qa

ROOT = Path(__file__).resolve().parents[3]
DOCS = [
    ("d1", "Paris", "Paris is the capital and largest city of France, on the Seine."),
    ("d2", "Berlin", "Berlin is the capital of Germany and its largest city."),
    ("d3", "Jupiter", "Jupiter is the largest planet in the Solar System."),
]
QA = [
    ("q1", "What is the capital of France?", ["Paris"]),
    ("q2", "What is the capital of Germany?", ["Berlin"]),
    ("q3", "Which planet is the largest?", ["Jupiter"]),
]
WRONG = ["Berlin", "Jupiter", "Paris"]


def traj(kinds: list[str], failures: int = 0, error: str = "") -> Trajectory:
    t = Trajectory(question="q", answers=["a"], turn_kinds=kinds)
    t.search_failures, t.search_error = failures, error
    return t


# --- accounting ----------------------------------------------------------------------------


def test_failures_are_counted_per_search_and_per_rollout() -> None:
    trajs = [
        traj(["search", "answer"]),
        traj(["search", "search", "answer"], 2, "POST x failed"),
        traj(["invalid"]),
        traj(["search"], 1, "last"),
    ]
    f = SH.SearchFailures.of(trajs)
    assert (f.searches, f.failures, f.rollouts, f.last_error) == (4, 3, 2, "last")
    assert f.rate == 0.75 and f.describe() == "3 of 4 searches failed (75.0%)"
    assert f.over(0.5) and not f.over(0.75) and not f.over(1.0)
    assert SH.excluded(trajs) == [False, True, False, True]
    assert f.train_metrics() == {
        K.SEARCH_FAILURES: 3.0,
        K.SEARCH_FAILURE_RATE: 0.75,
        K.SEARCH_FAILED_ROLLOUTS: 2.0,
    }
    assert f.eval_metrics() == {K.EVAL_SEARCH_FAILURES: 3.0, K.EVAL_SEARCH_FAILURE_RATE: 0.75}
    for key in (*f.train_metrics(), *f.eval_metrics()):
        assert key in K.METRICS
    healthy = SH.SearchFailures.of([traj(["answer"])])
    assert healthy.rate == 0.0 and not healthy.over(0.0)  # no search: nothing failed
    assert SH.SearchFailures.of([traj(["search"], 1)]).over(0.0)  # 0: any failure stops


def test_check_eval_refuses_past_the_threshold() -> None:
    trajs = [traj(["search", "answer"], 1, "connection error"), traj(["search", "answer"])]
    f = SH.check_eval(trajs, 0.5, "dev", "http://127.0.0.1:9")  # 50%: not over 0.5
    assert f.failures == 1
    note = SH.failure_notes({"dev": f, "ok": SH.SearchFailures(3)}, 0.5)
    assert note.startswith("WARNING [dev]: 1 of 2 searches failed") and note.count("\n") == 1
    with pytest.raises(SH.EvalRefused, match=r"refused: 1 of 2 searches failed") as exc:
        SH.check_eval(trajs, 0.25, "dev", "http://127.0.0.1:9")
    assert "--port 9" in str(exc.value) and exc.value.metrics[K.EVAL_SEARCH_FAILURES] == 1


def test_exit_on_outage_prints_and_returns_the_exit_code(capsys) -> None:
    @SH.exit_on_outage
    def main() -> int:
        raise SH.TrainingOutage("the backend died")

    assert main() == SH.EXIT_CODE == 3
    assert "error: the backend died" in capsys.readouterr().err


def test_the_threshold_is_validated() -> None:
    with pytest.raises(ValueError, match=r"max_search_failure_rate=1.5: use a share in \[0, 1\]"):
        TrainConfig(max_search_failure_rate=1.5)
    assert TrainConfig().max_search_failure_rate == 0.25
    assert evaluate.EvalConfig(max_search_failure_rate=0.0).max_search_failure_rate == 0.0


def test_what_to_do_names_the_server_or_the_settings() -> None:
    assert "python -m igpo_env.serve" in SH.what_to_do("http://127.0.0.1:8000/retrieve")
    assert "--port 8000" in SH.what_to_do("http://127.0.0.1:8000/retrieve")
    assert "'dense' backend's settings" in SH.what_to_do("dense")


# --- loopback servers --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Backend:
    """BM25 over the fixture corpus that can fail chosen calls or die for good.

    ``fail_calls``: 0-based call numbers that raise (the server answers 500); ``kill_when``:
    checked before every call; once true the server is stopped (from another thread: a
    request cannot wait for its own server's shutdown) and this and every later call fail.
    """

    name = "faulty-bm25"

    def __init__(self, inner, fail_calls=(), kill_when=None) -> None:
        self.inner, self.fail_calls, self.kill_when = inner, set(fail_calls), kill_when
        self.calls, self.dead, self.server = 0, False, None
        self.lock = threading.Lock()

    def search(self, queries, k):
        with self.lock:
            if not self.dead and self.kill_when is not None and self.kill_when():
                self.dead = True
                threading.Thread(target=self.server.stop, daemon=True).start()
            n, self.calls = self.calls, self.calls + 1
        if self.dead or n in self.fail_calls:
            raise SearchError("injected backend failure")
        return self.inner.search(queries, k)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("outage")
    return {
        "corpus": write_corpus(d / "corpus.jsonl", DOCS),
        "qa": write_qa(d / "qa.jsonl", QA, dataset="fixture"),
        "dir": str(d),
    }


@pytest.fixture(scope="module")
def bm25(data):
    return BM25sRetriever(load_corpus(data["corpus"]), Path(data["dir"]) / "srv-index")


@pytest.fixture
def serve(bm25):
    """``serve(port, **Backend kwargs) -> (url, backend)``: a real /retrieve server; all
    servers a test started are stopped at its end."""
    started = []

    def start(port: int = 0, **kw):
        backend = Backend(bm25, **kw)
        if port:  # a restart: the killed server on this port stops from its own thread
            for bound, srv in started:
                if bound == port:
                    srv.stop()  # joins it
        deadline = time.monotonic() + 20.0
        while True:  # ... and the OS may hold the port a moment longer on a loaded machine
            try:
                backend.server = RetrievalServer(backend, port=port).start()
                break
            except RuntimeError:
                if not port or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        url = backend.server.url
        started.append((int(url.rsplit(":", 1)[1]), backend.server))
        return url, backend

    yield start
    for _, srv in started:
        srv.stop()


@pytest.fixture(autouse=True)
def _fast_client(monkeypatch) -> None:
    """One attempt per search, short waits: a failed request is a failed search."""
    monkeypatch.setenv("IGPO_HTTP_MAX_RETRIES", "0")
    monkeypatch.setenv("IGPO_HTTP_BACKOFF_S", "0.01")
    monkeypatch.setenv("IGPO_HTTP_TIMEOUT_S", "10")


@pytest.fixture(scope="module")
def searcher(tiny_smol_model_path, data, tmp_path_factory) -> str:
    """A tiny model fitted to search for the question, read, then answer it (half of the
    time with a wrong answer, so that groups have outcome signal): a model folder."""
    policy = Policy.load(str(tiny_smol_model_path), device="cpu", dtype="float32", seed=0)
    kw = dict(qa=data["qa"], corpus=data["corpus"], top_k=2, doc_max_words=24)
    env = gym.make("igpo_env:SearchQA-v0", **kw)  # the trainer's settings below
    prompt_fn = policy_prompt_fn(policy, "tags")
    tok = policy.tokenizer

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    demos = []
    for i, (_, question, (gold,)) in enumerate(QA):
        obs, _ = env.reset(options={"index": i})
        prompt = prompt_fn(obs)
        search = ids(f"<search>{question}</search>")
        seen = ids(env.step(f"<search>{question}</search>")[0])
        for answer in (gold, WRONG[i]):
            final = ids(f"<answer>{answer}</answer>") + [tok.eos_token_id]
            a, b, c = len(prompt), len(prompt) + len(search), len(prompt + search + seen)
            spans = [Span("prompt", 0, a, -1), Span("action", a, b, 0)]
            spans += [Span("observation", b, c, 0), Span("action", c, c + len(final), 1)]
            demos.append(Trajectory(question, [gold], prompt + search + seen + final, spans))
    env.close()
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=3e-3)
    for _ in range(60):
        train_step(policy, opt, demos, micro_batch=len(demos), max_grad_norm=1.0)
    return str(policy.save(tmp_path_factory.mktemp("searcher") / "model"))


def argv(model: str, run: Path, data: dict, url: str, **over) -> list[str]:
    """The trainer's command line: tiny settings, the given /retrieve server."""
    opts = dict(
        config=str(ROOT / "configs" / "tiny_test.yaml"),
        model=model,
        run_dir=str(run),
        train_qa=data["qa"],
        eval_qa=data["qa"],
        retriever=url,
        top_k=2,
        group_size=2,
        questions_per_step=2,
        max_new_tokens=24,
        steps=3,
        eval_questions=0,
        probe_every=0,  # the probe's own rows are tested in test_probe.py
        save_every=1,
        keep_checkpoints=5,
    )
    opts.update(over)
    return [x for k, v in opts.items() for x in (f"--{k}", str(v))]


def records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def latest(run: Path) -> str:
    return (run / "checkpoints" / "latest").read_text().strip()


# --- a backend down at the start ---------------------------------------------------------------


def test_dead_backend_stops_the_trainer_before_anything_is_trained(
    tiny_smol_model_path: Path, tmp_path: Path
) -> None:
    """The issue's command against a port where nothing listens (default client budget)."""
    port, run = free_port(), tmp_path / "run"
    url = f"http://127.0.0.1:{port}/retrieve"
    cmd = [sys.executable, "-m", "igpo_agent.train", "--config", "configs/tiny_test.yaml"]
    cmd += ["--model", str(tiny_smol_model_path), "--run_dir", str(run), "--steps", "1"]
    cmd += ["--eval_questions", "0", "--retriever", url]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IGPO_HTTP_")}
    env["IGPO_CACHE"] = str(tmp_path / "cache")
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == SH.EXIT_CODE, res.stderr[-3000:]
    err = res.stderr
    assert f"the search backend {url!r} did not answer a test query" in err
    assert "failed after 4 attempt(s): connection error" in err
    assert f"python -m igpo_env.serve --retriever bm25 --corpus default --port {port}" in err
    assert "check the URL given to --retriever" in err and "Traceback" not in err
    assert not (run / "checkpoints").exists() and not (run / "final").exists()
    assert "saved the trained policy" not in res.stdout


# --- a backend killed mid-run, then restarted ---------------------------------------------------


def test_killed_backend_stops_at_the_threshold_and_resume_finishes(
    searcher: str, data: dict, serve, tmp_path: Path, capsys
) -> None:
    straight = tmp_path / "straight"
    url, _ = serve()
    assert train_main(argv(searcher, straight, data, url)) == 0

    run = tmp_path / "run"
    port = free_port()
    url, backend = serve(port, kill_when=lambda: (run / "checkpoints" / "step-1").exists())
    assert train_main(argv(searcher, run, data, url)) == SH.EXIT_CODE
    err = capsys.readouterr().err
    assert "search backend outage at step 2" in err and "over --max_search_failure_rate" in err
    assert "injected backend failure" in err or "connection error" in err  # 500, or gone
    assert f"--config {run}/config.yaml --resume true" in err
    assert backend.dead and latest(run) == "step-1" and not (run / "final").exists()
    rows = records(run)
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0][K.SEARCH_FAILURES] == 0 and K.POLICY_LOSS in rows[0]
    assert rows[1][K.SEARCH_FAILURE_RATE] == 1.0 and K.POLICY_LOSS not in rows[1]

    url, _ = serve(port)  # the backend is back, on the same port
    assert train_main(argv(searcher, run, data, url, resume="true")) == 0
    assert latest(run) == "step-3" and (run / "final").is_dir()
    rows = records(run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r[K.SEARCH_FAILURES] == 0 and r[K.SEARCHES_PER_EPISODE] > 0 for r in rows)
    a = load_file(str(straight / "final" / "adapter_model.safetensors"))
    b = load_file(str(run / "final" / "adapter_model.safetensors"))
    for k in a:  # the outage left no trace: step 2 was redone from the same state
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


# --- a few failures under the threshold --------------------------------------------------------


def test_failures_under_the_threshold_are_logged_and_not_trained_on(
    searcher: str, data: dict, serve, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    url, backend = serve(fail_calls={1})  # call 0 is the preflight; call 1 a rollout's search
    over = dict(steps=1, group_size=4, questions_per_step=1, max_search_failure_rate=0.5)
    assert train_main(argv(searcher, run, data, url, export_batches_every=1, **over)) == 0
    (row,) = records(run)
    assert row[K.SEARCH_FAILURES] == 1 and row[K.SEARCH_FAILED_ROLLOUTS] == 1
    assert row[K.SEARCH_FAILURE_RATE] == pytest.approx(1 / (backend.calls - 1))
    dumped = [json.loads(x) for x in (run / "rollouts" / "step-1.jsonl").read_text().splitlines()]
    failed = [r for r in dumped if r["search_failures"]]
    assert len(failed) == 1 and len(dumped) == 4
    assert "search failed: " in failed[0]["turns"][0]["observation"]
    assert all(t["advantage"] == 0.0 for t in failed[0]["turns"])
    others = [t["advantage"] for r in dumped if not r["search_failures"] for t in r["turns"]]
    assert any(a != 0.0 for a in others)  # the healthy rollouts still carry signal
    exported = [json.loads(x) for x in (run / "batches" / "step-1.jsonl").read_text().splitlines()]
    (bad,) = [r for r in exported if r["search_failures"]]
    assert not any(bad["advantages"])
    assert (run / "final").is_dir()


# --- the evaluator ------------------------------------------------------------------------------


def eval_argv(model: str, data: dict, url: str, out: Path, **over) -> list[str]:
    opts = dict(
        model=model,
        device="cpu",
        dtype="float32",
        threads=1,
        qa=data["qa"],
        questions=3,
        retriever=url,
        top_k=2,
        doc_max_words=24,
        max_turns=2,
        max_new_tokens=24,
        eval_batch_size=3,
        out=str(out),
    )
    opts.update(over)
    return [x for k, v in opts.items() for x in (f"--{k}", str(v))]


def test_evaluator_refuses_or_reports_failed_searches(
    searcher: str, data: dict, serve, tmp_path: Path, capsys
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    assert evaluate.main(eval_argv(searcher, data, dead, tmp_path / "a")) == SH.EXIT_CODE
    err = capsys.readouterr().err
    assert "so evaluation did not start" in err and "python -m igpo_env.serve" in err
    assert not (tmp_path / "a").exists()

    url, backend = serve(kill_when=lambda: backend.calls > 0)  # up for the preflight only
    assert evaluate.main(eval_argv(searcher, data, url, tmp_path / "b")) == SH.EXIT_CODE
    err = capsys.readouterr().err
    assert re.search(r"evaluation \[qa\] refused: (\d+) of \1 searches failed \(100.0%\)", err)
    assert not (tmp_path / "b").exists()  # no score written

    url, _ = serve(fail_calls={1})
    out = tmp_path / "c"
    over = dict(max_search_failure_rate=0.5)
    assert evaluate.main(eval_argv(searcher, data, url, out, **over)) == 0
    assert "WARNING [qa]: 1 of " in capsys.readouterr().out
    (result,) = json.loads((out / "results.json").read_text())
    assert result["search_failures"] == 1 and result["searches_attempted"] >= 3
    assert "WARNING [qa]" in (out / "results.md").read_text()
    episodes = [json.loads(x) for x in (out / "episodes.jsonl").read_text().splitlines()]
    assert sorted(e["search_failures"] for e in episodes) == [0, 0, 1]


def test_trainer_final_evaluation_is_refused_after_saving_the_policy(
    searcher: str, data: dict, serve, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    url, _ = serve(kill_when=lambda: (run / "checkpoints" / "step-1").exists())
    over = dict(steps=1, eval_questions=3, eval_batch_size=3)
    assert train_main(argv(searcher, run, data, url, **over)) == SH.EXIT_CODE
    out = capsys.readouterr()
    assert "[before training]" in out.out  # the first evaluation ran while the backend was up
    assert "evaluation [after training] refused" in out.err
    assert f"the trained policy is saved to {run}/final" in out.err
    assert "python -m igpo_agent.evaluate --model" in out.err
    assert (run / "final" / "adapter_model.safetensors").is_file() and latest(run) == "step-1"
    assert not (run / "eval" / "step-1.jsonl").exists()  # no score for the refused evaluation
    rows = records(run)
    assert rows[-1][K.EVAL_SEARCH_FAILURE_RATE] == 1.0 and K.EVAL_F1 not in rows[-1]


def test_refused_in_run_evaluation_checkpoints_the_step_and_resume_goes_on(
    searcher: str, data: dict, serve, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    port = free_port()  # the backend dies at the step-1 evaluation (after step 1's dump)
    url, _ = serve(port, kill_when=lambda: (run / "rollouts" / "step-1.jsonl").exists())
    over = dict(steps=2, eval_every=1, eval_questions=3, eval_batch_size=3, save_every=0)
    assert train_main(argv(searcher, run, data, url, **over)) == SH.EXIT_CODE
    err = capsys.readouterr().err
    assert "evaluation [step 1] refused" in err and "--resume true" in err
    assert latest(run) == "step-1" and not (run / "final").exists()
    rows = records(run)
    assert [r["step"] for r in rows] == [0, 1]  # before training, then step 1 + its refusal
    assert K.POLICY_LOSS in rows[1] and rows[1][K.EVAL_SEARCH_FAILURE_RATE] == 1.0
    url, _ = serve(port)
    assert train_main(argv(searcher, run, data, url, resume="true", **over)) == 0
    assert (run / "final").is_dir() and (run / "eval" / "step-2.jsonl").is_file()
    assert [r["step"] for r in records(run) if K.POLICY_LOSS in r] == [1, 2]
