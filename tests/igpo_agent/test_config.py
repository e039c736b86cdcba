"""TrainConfig: YAML + CLI parsing, validation messages, round trip, shipped configs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from igpo_agent.config import (
    TrainConfig,
    build_parser,
    load_config,
    resolve_ig_method,
    resolve_old_logprobs,
    resolve_tis,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_defaults_are_valid_and_cpu_friendly():
    cfg = TrainConfig()
    assert cfg.algo == "igpo" and cfg.group_size >= 2
    assert cfg.rollouts_per_step % cfg.micro_batch_size == 0
    assert cfg.lora_target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_every_field_has_help_and_section():
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("help"), f"{f.name} has no help text"
        assert f.metadata.get("section"), f"{f.name} has no section"
    text = build_parser().format_help()
    assert "--group_size" in text and "advantages normalise per group" in " ".join(text.split())


def test_yaml_then_cli_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-5\ngroup_size: 8\ntensorboard: false\nthreads: 2\n")
    cfg = load_config(["--config", str(path), "--group_size", "6", "--threads", "none"])
    assert cfg.lr == pytest.approx(1e-5)  # YAML 1.1 reads "1e-5" as a string: coerced
    assert cfg.group_size == 6  # CLI beats YAML
    assert cfg.tensorboard is False  # from YAML
    assert cfg.threads is None


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--tensorboard"], True),
        (["--no-tensorboard"], False),
        (["--tensorboard", "false"], False),
        (["--tensorboard=yes"], True),
    ],
)
def test_bool_flags(argv, expected):
    assert load_config(argv).tensorboard is expected


def test_resume_switch_or_path():
    assert load_config([]).resume is False
    assert load_config(["--resume"]).resume is True
    assert load_config(["--resume", "false"]).resume is False
    assert load_config(["--resume", "runs/x/checkpoints/step-4"]).resume == (
        "runs/x/checkpoints/step-4"
    )


def test_round_trip_dict_and_yaml(tmp_path):
    cfg = load_config(["--algo", "grpo", "--dual_clip", "none", "--resume", "a/b", "--lr", "3e-4"])
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    path = cfg.save_yaml(tmp_path / "saved.yaml")
    assert load_config(["--config", str(path)]) == cfg


def test_unknown_yaml_key_names_closest(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("grup_size: 4\n")
    with pytest.raises(ValueError, match="'grup_size'.*did you mean 'group_size'"):
        TrainConfig.from_dict({"grup_size": 4})
    with pytest.raises(SystemExit):
        load_config(["--config", str(path)])


def test_unknown_cli_flag_names_closest(capsys):
    with pytest.raises(SystemExit):
        load_config(["--learning_rat", "1"])
    with pytest.raises(SystemExit):
        load_config(["--kl_cof", "0.1"])
    assert "did you mean --kl_coef" in capsys.readouterr().err


def test_missing_config_file_is_clear(capsys):
    with pytest.raises(SystemExit):
        load_config(["--config", "/nonexistent/x.yaml"])
    assert "config file not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override, message",
    [
        ({"group_size": 1}, "group_size=1: group normalisation needs >= 2"),
        ({"micro_batch_size": 3}, "does not divide the 8 rollouts per step"),
        ({"lr": 0.0}, "positive learning rate"),
        ({"temperature": 0.0}, "temperature > 0"),
        ({"top_p": 1.5}, "top_p=1.5"),
        ({"algo": "ppo"}, "algo='ppo' is not one of ('igpo', 'grpo', 'rft')"),
        ({"ig_mode": "diff"}, "ig_mode='diff'"),
        ({"norm": "batch"}, "norm='batch'"),
        ({"loss_agg": "sum"}, "loss_agg='sum'"),
        ({"lr_schedule": "step"}, "lr_schedule='step'"),
        ({"dual_clip": 1.0}, "dual_clip=1.0: use c > 1"),
        ({"gamma": 1.5}, "gamma=1.5"),
        ({"format_penalty": 1.0}, "format_penalty=1.0"),
        ({"device": "gpu"}, "device='gpu'"),
        ({"max_context": 50, "max_new_tokens": 64}, "max_context=50 must exceed"),
        ({"warmup_steps": 20, "steps": 5}, "warmup_steps=20 exceeds steps=5"),
        ({"lora_targets": " , "}, "lora_targets is empty"),
        ({"seed": "abc"}, "seed='abc' is not a valid int"),
        ({"tensorboard": "maybe"}, "tensorboard='maybe' is not a valid bool"),
        ({"ig_method": "live", "engine": "vllm"}, "ig_method=live scores inside the hf engine"),
        ({"ig_method": "vllm"}, "set engine=vllm too"),
        ({"old_logprobs": "cached"}, "old_logprobs='cached'"),
        ({"tis": "yes"}, "tis='yes'"),
        ({"tis": "on", "old_logprobs": "sampler"}, "use old_logprobs=recompute (or auto) with tis"),
        ({"tis_cap": 0.5}, "tis_cap=0.5: use a cap >= 1"),
    ],
)
def test_validation_messages_name_the_fix(override, message):
    with pytest.raises(ValueError) as err:
        TrainConfig(**override)
    assert message in str(err.value)


def test_cli_invalid_value_exits_with_message(capsys):
    with pytest.raises(SystemExit) as err:
        load_config(["--group_size", "1"])
    assert err.value.code == 2
    assert "group_size=1" in capsys.readouterr().err


def test_several_errors_reported_together():
    with pytest.raises(ValueError) as err:
        TrainConfig(lr=-1.0, algo="x", top_k=0)
    text = str(err.value)
    assert "lr=-1.0" in text and "algo='x'" in text and "top_k=0" in text


@pytest.mark.parametrize("name", ["cpu_demo.yaml", "tiny_test.yaml", "paper_7b_gpu.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(["--config", str(CONFIGS / name)])
    assert cfg.rollouts_per_step % cfg.micro_batch_size == 0


def test_paper_config_matches_spec():
    cfg = load_config(["--config", str(CONFIGS / "paper_7b_gpu.yaml")])
    # LoRA at the spec's LoRA lr (a 7B full fine-tune needs a sharded optimiser)
    assert (cfg.group_size, cfg.lr, cfg.kl_coef, cfg.entropy_coef) == (16, 1e-5, 0.001, 0.001)
    assert (cfg.clip_eps, cfg.dual_clip, cfg.max_grad_norm, cfg.gamma) == (0.2, 3.0, 1.0, 1.0)
    assert (cfg.ig_mode, cfg.norm, cfg.format_penalty) == ("log_prob_diff", "separate", -2.0)
    assert not cfg.full_finetune and cfg.dtype == "bfloat16" and cfg.device == "cuda"
    paper = load_config(
        ["--config", str(CONFIGS / "paper_7b_gpu.yaml"), "--full_finetune", "--lr", "1e-6"]
    )
    assert paper.full_finetune and paper.lr == 1e-6
    assert cfg.model == "Qwen/Qwen2.5-7B-Instruct"


def test_auto_ig_method_is_live_on_hf_and_packed_on_vllm():
    assert resolve_ig_method(TrainConfig()) == "live"
    assert resolve_ig_method(TrainConfig(engine="vllm")) == "packed"
    assert resolve_ig_method(TrainConfig(ig_method="naive")) == "naive"


def test_auto_old_logprobs_and_tis_follow_where_the_numerics_match():
    """auto pi_old = the sampler's records only on the hf engine with fp32 weights and no
    autocast; auto TIS = on with the vLLM engine (docs/ALGORITHM.md "Policy loss")."""
    exact = dict(weights_fp32=True, autocast=False)
    assert resolve_old_logprobs(TrainConfig(), **exact) == "sampler"
    assert resolve_old_logprobs(TrainConfig(), weights_fp32=True, autocast=True) == "recompute"
    assert resolve_old_logprobs(TrainConfig(), weights_fp32=False, autocast=False) == "recompute"
    assert resolve_old_logprobs(TrainConfig(engine="vllm"), **exact) == "recompute"
    assert resolve_old_logprobs(TrainConfig(old_logprobs="recompute"), **exact) == "recompute"
    assert (
        resolve_old_logprobs(TrainConfig(old_logprobs="sampler"), autocast=True, weights_fp32=True)
        == "sampler"
    )
    assert resolve_tis(TrainConfig(), "sampler") is False
    assert resolve_tis(TrainConfig(), "recompute") is False  # hf: off
    assert resolve_tis(TrainConfig(engine="vllm"), "recompute") is True
    assert resolve_tis(TrainConfig(engine="vllm", tis="off"), "recompute") is False
    assert resolve_tis(TrainConfig(engine="vllm"), "sampler") is False  # weights would be 1
    assert resolve_tis(TrainConfig(tis="on"), "recompute") is True


def test_ppo_mini_batch_and_clip_validation():
    ok = TrainConfig(group_size=4, questions_per_step=2, ppo_mini_batch_size=4, micro_batch_size=2)
    assert ok.ppo_mini_batch_size == 4
    with pytest.raises(ValueError, match="ppo_mini_batch_size=3 does not divide the 8"):
        TrainConfig(group_size=4, questions_per_step=2, ppo_mini_batch_size=3, micro_batch_size=2)
    with pytest.raises(ValueError, match="clip_ratio_low=1.5"):
        TrainConfig(clip_ratio_low=1.5)
    with pytest.raises(ValueError, match="kl_reference"):
        TrainConfig(kl_reference="warm")


def test_ig_weight_schedule():
    from igpo_agent.train import ig_weight_at

    cfg = TrainConfig(steps=5, ig_weight=1.0, ig_weight_end=0.0)
    assert [ig_weight_at(cfg, s) for s in range(1, 6)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert ig_weight_at(TrainConfig(steps=5, ig_weight=0.3), 4) == 0.3
