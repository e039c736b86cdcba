"""The shared option groups: one type and default per field across the three front doors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import gymnasium as gym
import pytest

from igpo_agent import choices
from igpo_agent.algo import advantages, loss, rewards
from igpo_agent.config import TrainConfig
from igpo_agent.evaluate import EvalConfig
from igpo_agent.evaluate import parse_config as parse_eval
from igpo_agent.options import EnvOptions, GenerationOptions, LoraOptions, ModelOptions
from igpo_agent.run.envs import env_kwargs, env_kwargs_from
from igpo_agent.sft import SFTConfig
from igpo_agent.sft import parse_config as parse_sft
from igpo_env.env import DEFAULT_FORMAT_PENALTY as ENV_FORMAT_PENALTY

FRONT_DOORS = (TrainConfig, SFTConfig, EvalConfig)
# Same name, different knob on purpose: SFT's adapter learning rate vs RL's; the SFT run
# folder vs the evaluator's optional output folder.
DIFFERENT_KNOBS = {"lr", "out"}


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def test_a_field_shared_by_front_doors_has_one_type_default_and_help() -> None:
    seen: dict[str, tuple[type, dataclasses.Field]] = {}
    shared = 0
    for cls in FRONT_DOORS:
        for name, f in _fields(cls).items():
            if name in seen and name not in DIFFERENT_KNOBS:
                other_cls, other = seen[name]
                shared += 1
                where = f"{name}: {other_cls.__name__} vs {cls.__name__}"
                assert f.type == other.type, where
                assert f.default == other.default, where
                assert f.metadata["help"] == other.metadata["help"], where
            seen.setdefault(name, (cls, f))
    assert shared >= 30  # the groups are really shared, not re-declared


@pytest.mark.parametrize("group", [ModelOptions, EnvOptions, GenerationOptions, LoraOptions])
def test_groups_are_part_of_the_front_doors_that_use_them(group: type) -> None:
    users = [cls for cls in FRONT_DOORS if issubclass(cls, group)]
    assert len(users) >= 2
    for cls in users:
        assert set(_fields(group)) <= set(_fields(cls))


def test_drifted_defaults_are_gone() -> None:
    # max_turns was 4/3/4 and max_new_tokens 96/64/96 in train/sft/evaluate
    for cls in FRONT_DOORS:
        c = cls()
        assert (c.max_turns, c.max_new_tokens) == (4, 96), cls.__name__
        assert c.format_penalty == choices.DEFAULT_FORMAT_PENALTY == ENV_FORMAT_PENALTY
    assert SFTConfig().eval_questions == TrainConfig().eval_questions


def test_choice_tuples_come_from_the_literals() -> None:
    assert rewards.ALGOS == choices.choices(choices.Algo) == ("igpo", "grpo")
    assert rewards.IG_MODES == ("log_prob_diff", "prob_diff")
    assert advantages.NORM_MODES == choices.choices(choices.NormMode)
    assert loss.LOSS_AGG_MODES == choices.choices(choices.LossAgg)
    with pytest.raises(TypeError, match="not a Literal"):
        choices.choices(str)


@pytest.mark.parametrize(
    "cls, field, bad",
    [(TrainConfig, "algo", "ppo"), (SFTConfig, "engine", "tgi"), (EvalConfig, "dtype", "int8")],
)
def test_literal_fields_refuse_other_values(cls: type, field: str, bad: str) -> None:
    with pytest.raises(ValueError, match=f"{field}='{bad}' is not one of"):
        cls(**{field: bad})


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ValueError) as err:
        SFTConfig(engine="tgi", top_k=0, batch=3, micro_batch=2, protocol="tool_call")
    text = str(err.value)
    assert text.startswith("invalid SFT config")
    for part in ("engine='tgi'", "top_k=0", "micro_batch=2", "'tags' only"):
        assert part in text


def test_sft_reads_yaml_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "sft.yaml"
    path.write_text("max_turns: 3\nmax_new_tokens: 64\nlora_r: 8\nexamples: 5\n")
    cfg = parse_sft(["--config", str(path), "--examples", "7", "--eval-before", "--threads", "2"])
    assert (cfg.max_turns, cfg.max_new_tokens, cfg.lora_r) == (3, 64, 8)
    assert cfg.examples == 7 and cfg.eval_before is True and cfg.threads == 2
    assert SFTConfig.from_dict(cfg.to_dict()) == cfg


def test_sft_unknown_yaml_key_names_the_closest(tmp_path: Path, capsys) -> None:
    path = tmp_path / "sft.yaml"
    path.write_text("exampels: 5\n")
    with pytest.raises(SystemExit):
        parse_sft(["--config", str(path)])
    assert "did you mean 'examples'" in capsys.readouterr().err


def test_evaluate_qa_is_a_repeatable_list(tmp_path: Path) -> None:
    assert parse_eval([]).qa == ["default:dev"]
    assert parse_eval(["--qa", "nq=a.jsonl", "--qa", "default:test"]).qa == [
        "nq=a.jsonl",
        "default:test",
    ]
    path = tmp_path / "eval.yaml"
    path.write_text("qa: [x=1.jsonl, y=2.jsonl]\nquestions: 0\n")
    assert parse_eval(["--config", str(path)]).qa == ["x=1.jsonl", "y=2.jsonl"]
    assert parse_eval(["--config", str(path), "--qa", "z=3.jsonl"]).qa == ["z=3.jsonl"]
    with pytest.raises(SystemExit):
        parse_eval(["--eval-batch-size", "0"])


def test_env_kwargs_pass_a_corpus_only_when_one_is_chosen() -> None:
    common = dict(qa="default:dev", top_k=3, doc_max_words=64, protocol="tags")
    common |= dict(format_penalty=-2.0, on_invalid="continue")
    assert "corpus" not in env_kwargs(corpus="default", retriever="bm25", **common)
    kw = env_kwargs(corpus="my.jsonl", retriever="bm25", **common)
    assert kw["corpus"] == "my.jsonl"
    kw = env_kwargs(corpus="default", retriever="http://127.0.0.1:1/retrieve", **common)
    assert kw["retriever"] == "http" and kw["url"].endswith("/retrieve") and "corpus" not in kw
    assert env_kwargs_from(EvalConfig(top_k=2), "default:dev")["top_k"] == 2


def test_the_trainer_reaches_a_backend_that_reads_no_corpus(monkeypatch) -> None:
    # searxng holds its own documents: with the default corpus setting, the trainer's env
    # kwargs must not hand it one (it used to, and the env refused)
    monkeypatch.setenv("SEARXNG_URL", "http://127.0.0.1:9")
    cfg = TrainConfig(retriever="searxng")
    env = gym.make(cfg.env_id, **env_kwargs_from(cfg, cfg.train_qa))
    assert type(env.unwrapped.retriever).__name__.lower().startswith("searx")
    env.close()
    with pytest.raises(Exception, match="corpus"):
        gym.make(
            cfg.env_id,
            **env_kwargs_from(TrainConfig(retriever="searxng", corpus="x.jsonl"), "default:dev"),
        )
