"""`domainbot train` flags -> TrainConfig, and the recorded command that reproduces a run."""

import pytest

from bot.cli import build_parser
from bot.errors import UserFacingError
from training.cli import train_command, train_config


def _args(*flags: str):
    return build_parser().parse_args(["train", "finance", *flags])


def test_flags_become_the_config_and_the_recorded_command():
    args = _args("--extra-file", "train_tfns_full.jsonl", "--balance", "tfns_sentiment", "--epochs", "4", "--lr", "7e-4",
                 "--batch-size", "64", "--micro-tokens", "8192", "--cap", "tatqa_hybrid_qa=300", "--device", "cuda")
    cfg = train_config(args)
    assert (cfg.epochs, cfg.lr, cfg.batch_size, cfg.micro_tokens, cfg.device) == (4.0, 7e-4, 64, 8192, "cuda")
    assert cfg.task_caps == {"tatqa_hybrid_qa": 300} and cfg.task_balance == ("tfns_sentiment",)
    assert cfg.extra_files == ("train_tfns_full.jsonl",)
    command = train_command(args)
    assert command.startswith("domainbot train finance --extra-file train_tfns_full.jsonl --cap tatqa_hybrid_qa=300")
    assert "--balance tfns_sentiment" in command and "--batch-size 64" in command and "--seed 0" in command
    assert "--micro-tokens 8192" in command and "--device cuda" in command
    assert "--device" not in train_command(_args())  # auto is the default


def test_the_micro_batch_cap_does_not_change_which_run_it_is():
    small, large = train_config(_args("--micro-tokens", "2048")), train_config(_args("--micro-tokens", "65536"))
    assert small.micro_tokens != large.micro_tokens and small.key() == large.key()
    assert train_config(_args()).micro_tokens == 4096  # the default


@pytest.mark.parametrize("cap", ["tfns_sentiment", "=300", "tfns_sentiment=lots"])
def test_a_malformed_cap_is_refused_with_an_example(cap):
    with pytest.raises(UserFacingError, match=r"--cap wants TASK=N \(e\.g\. tfns_sentiment=3000\)"):
        train_config(_args("--cap", cap))


def test_promoting_a_missing_version_is_a_message_and_changes_nothing(capsys, domains_copy, monkeypatch):
    from bot.cli import main

    monkeypatch.setenv("DOMAINBOT_DOMAINS_DIR", str(domains_copy))  # a copy: never the shipped adapters
    adapters = domains_copy / "finance" / "adapters"
    before = {p.relative_to(adapters): p.read_bytes() for p in adapters.rglob("*") if p.is_file()}
    assert main(["promote", "finance", "v99"]) == 2
    assert f"domainbot: no adapter v99 in {adapters}" in capsys.readouterr().err
    assert {p.relative_to(adapters): p.read_bytes() for p in adapters.rglob("*") if p.is_file()} == before
