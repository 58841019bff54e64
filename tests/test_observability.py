"""A real run with every logger at once, wandb offline: the wandb run folder and its history hold the metrics,
the sample table has its rows (wandb, CSV, TensorBoard), the summary and config are recorded, report.png is
drawn, and nothing tries the network."""

from __future__ import annotations

import csv
import ipaddress
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from llava_pl.callbacks.progress import LlavaProgressBar, ProgressLines
from llava_pl.callbacks.samples import COLUMNS
from llava_pl.loggers import ResumableCSVLogger
from llava_pl.model.build import build_model
from llava_pl.train import build_loggers, fit_stage, run, selected_stages
from tests.wandb_records import read_run

STEP_METRICS = [
    "train/loss", "train/lr", "train/lr/projector", "train/lr/projector/no_decay", "train/lr/llm",
    "train/lr/llm/no_decay", "train/grad_norm", "perf/tokens_per_s", "perf/samples_per_s", "perf/mfu", "perf/tflops",
    "perf/step_time", "perf/data_wait", "perf/peak_memory_gib", "data/padding_fraction", "data/tokens_per_batch",
    "data/image_tokens_per_batch",
]
FINETUNE = ["stage=finetune", "stage.finetune.max_steps=4", "stage.finetune.micro_batch_size=4",
            "stage.finetune.global_batch_size=8", "stage.finetune.max_length=256"]  # accumulation 2


def _is_local(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Refuses (and records) every connection of this process that would leave the machine, and points wandb's
    server address at a local listener that records any connection wandb's own service process makes."""
    attempts: list[object] = []
    connect = socket.socket.connect

    def guarded_connect(self: socket.socket, address: object) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
            attempts.append(address)
            raise OSError(f"tests may not reach {address}")
        connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{listener.getsockname()[1]}")
    monkeypatch.setenv("WANDB_MODE", "offline")
    yield attempts
    try:
        attempts.append(("wandb server", listener.accept()[1]))
    except BlockingIOError:
        pass  # nobody called
    listener.close()


def test_logger_group_composes_several_loggers_and_wandb_modes(compose_config) -> None:
    cfg = compose_config("logger=[csv,wandb,tensorboard]", "logger.mode=disabled")
    loggers = build_loggers(cfg.logger, "align")
    assert [type(logger).__name__ for logger in loggers] == ["ResumableCSVLogger", "_StageWandbLogger",
                                                             "TensorBoardLogger"]
    assert cfg.logger.wandb.mode == "disabled" and cfg.logger.wandb.entity is None
    with pytest.raises(InstantiationException, match="online, offline or disabled"):
        build_loggers(compose_config("logger=wandb", "logger.mode=offlin").logger, "align")


def test_wandb_mode_follows_wandb_mode_from_the_environment(compose_config, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert compose_config("logger=wandb").logger.wandb.mode == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert compose_config("logger=wandb").logger.wandb.mode == "offline"
    assert compose_config("logger=wandb", "logger.mode=disabled").logger.wandb.mode == "disabled"  # explicit wins


def test_csv_metrics_survive_a_resumed_launch(tmp_path) -> None:
    first = ResumableCSVLogger(tmp_path, name="logs", version="finetune")
    for step in range(5):
        first.log_metrics({"train/loss": float(step)}, step=step)
    first.finalize("success")  # a launch killed after step 4, whose last checkpoint was at step 3
    with (tmp_path / "logs" / "finetune" / "metrics.csv").open("a") as file:
        file.write("1")  # its last row, cut short by the kill: step 1x..., not step 1
    second = ResumableCSVLogger(tmp_path, name="logs", version="finetune")  # the resumed launch, same folder
    for step in range(3, 6):
        second.log_metrics({"train/loss": 10.0 + step, "perf/mfu": 0.5}, step=step)
    second.finalize("success")
    with (tmp_path / "logs" / "finetune" / "metrics.csv").open() as file:
        rows = [(row["step"], row["train/loss"], row["perf/mfu"]) for row in csv.DictReader(file)]
    # the earlier launch's steps before the resumed one's first stay; the steps it redid are its own
    assert rows == [("0", "0.0", ""), ("1", "1.0", ""), ("2", "2.0", ""),
                    ("3", "13.0", "0.5"), ("4", "14.0", "0.5"), ("5", "15.0", "0.5")]


@pytest.mark.slow
def test_offline_run_records_metrics_samples_config_and_report(compose_config, no_network) -> None:
    # A datasheet peak for MFU: a matmul measured on a busy shared CPU can read below what training reaches.
    cfg = compose_config(*FINETUNE, "logger=[csv,wandb,tensorboard]", "logger.mode=offline",
                         "stage.finetune.val_check_interval=4", "monitor.samples.every_n_steps=2",
                         "monitor.samples.num_samples=3", "peak_flops=a100_bf16", "monitor.samples.max_new_tokens=4",
                         "eval.end_limit=4", "eval.max_new_tokens=4", "report.num_images=4")
    run(cfg)
    run_dir = Path(cfg.run_dir)

    # wandb: one offline run per stage plus the evaluation's, written under the run folder
    folders = (run_dir / "wandb").glob("offline-run-*")
    wandb_runs = {folder: read_run(next(folder.glob("*.wandb"))) for folder in folders}
    assert len(wandb_runs) == 2
    finetune_run, (history, config) = next((folder, records) for folder, records in wandb_runs.items()
                                           if any("train/loss" in row for row in records[0]))
    evaluation_history = next(records[0] for folder, records in wandb_runs.items() if folder != finetune_run)
    assert any(key.startswith("eval/") for row in evaluation_history for key in row)
    logged = {key for row in history for key in row}
    assert set(STEP_METRICS) | {"val/loss"} <= logged, set(STEP_METRICS) - logged
    assert {"samples/_type", "samples/nrows"} <= logged  # the table, as a history entry
    steps = [row for row in history if "perf/tokens_per_s" in row]
    assert [row["trainer/global_step"] for row in steps] == [0, 1, 2, 3]  # every optimizer step (log_every_n_steps=1)
    for row in steps:
        assert row["perf/tokens_per_s"] > 0 and 0 < row["perf/mfu"] < 1 and 0 <= row["data/padding_fraction"] < 1
        assert row["data/image_tokens_per_batch"] == 4 * 9  # 4 samples of one image, 9 tokens each
        assert row["train/grad_norm"] > 0 and row["perf/step_time"] >= row["perf/data_wait"] >= 0
    assert re.fullmatch(r"[0-9a-f]{40}", config["git"]["commit"])
    assert config["config"]["stage"]["finetune"]["global_batch_size"] == 8  # the resolved Hydra config
    assert config["summary"]["accumulation"] == 2 and config["summary"]["train_samples"] > 0
    assert config["summary"]["learning_rates"]["llm"] == pytest.approx(1e-3)  # the demo's finetune rate

    # the sample table: rows at steps 2 and 4 (the end of training adds none at step 4)
    tables = sorted((finetune_run / "files" / "media" / "table").glob("samples_*.table.json"))
    assert len(tables) == 2
    for table in tables:
        content = json.loads(table.read_text())
        assert content["columns"] == COLUMNS and len(content["data"]) == 3
        assert all(row[3] and row[5] for row in content["data"])  # prompt and reference filled in

    # the same rows beside the CSV metrics and in TensorBoard
    with (run_dir / "logs" / "finetune" / "samples.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [row["step"] for row in rows] == ["2"] * 3 + ["4"] * 3 and list(rows[0]) == COLUMNS
    with (run_dir / "logs" / "finetune" / "metrics.csv").open() as file:
        assert set(STEP_METRICS) <= set(next(csv.DictReader(file)))
    hparams = yaml.safe_load((run_dir / "logs" / "finetune" / "hparams.yaml").read_text())
    assert hparams["summary"]["global_batch_size"] == 8 and "commit" in hparams["git"]
    events = EventAccumulator(str(run_dir / "tensorboard" / "finetune"), size_guidance={"tensors": 0}).Reload()
    assert {"perf/mfu", "train/grad_norm", "data/padding_fraction"} <= set(events.Tags()["scalars"])
    assert "samples/text_summary" in events.Tags()["tensors"]

    assert (run_dir / "report.png").stat().st_size > 10_000
    assert no_network == []


def _fit(cfg):
    for step in cfg.data.prepare:
        instantiate(step)
    tokenizer = instantiate(cfg.model.llm.tokenizer)
    stage = selected_stages(cfg)[0]
    return fit_stage(cfg, stage, build_model(cfg.model, tokenizer), tokenizer, Path(cfg.run_dir))


@pytest.mark.slow
def test_progress_bar_shows_step_loss_throughput_and_eta(compose_config) -> None:
    trainer = _fit(compose_config(*FINETUNE, "stage.finetune.max_steps=2", "trainer.enable_progress_bar=true",
                                  "monitor.progress.terminal=true", "monitor.progress.refresh_rate=1",
                                  "monitor.samples.every_n_steps=100"))
    bar = trainer.progress_bar_callback
    assert isinstance(bar, LlavaProgressBar)
    shown = bar.get_metrics(trainer, trainer.lightning_module)
    assert shown["step"] == "2/2" and shown["eta"] == "0:00:00" and shown["loss"] > 0
    assert float(shown["tok/s"].replace(",", "")) > 0


def test_progress_in_a_log_file_is_one_line_per_logging_step(compose_config, capsys) -> None:
    # under capsys standard output is not a terminal, as when a job's output goes to a file
    trainer = _fit(compose_config(*FINETUNE, "stage.finetune.max_steps=5", "trainer.enable_progress_bar=true",
                                  "trainer.log_every_n_steps=2", "monitor.samples.every_n_steps=100"))
    assert isinstance(trainer.progress_bar_callback, ProgressLines)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[finetune]")]
    step = r"\[finetune\] step {}/5  loss \d+\.\d{{4}}  tok/s [\d,]+  eta \d+:\d\d:\d\d"
    assert re.fullmatch(step.format(2), lines[0]) and re.fullmatch(step.format(4), lines[1]), lines
    assert re.fullmatch(step.format(5) + r"  \(done in \d+:\d\d:\d\d\)", lines[2]) and len(lines) == 3, lines
    with (Path(trainer.default_root_dir).parent / "logs" / "finetune" / "metrics.csv").open() as file:
        logged = [row for row in csv.DictReader(file) if row.get("train/loss")]  # Lightning's steps 1 and 3
    assert len(logged) == 2
    for line, row in zip(lines, logged):  # the values logged at that very step
        assert f"loss {float(row['train/loss']):.4f}  tok/s {float(row['perf/tokens_per_s']):,.0f}  " in line
