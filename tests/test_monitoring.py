"""The monitoring callbacks' arithmetic, driven hook by hook with a controlled clock: throughput, MFU, step and
data-wait times, padding; learning rates and gradient norm; the ETA; the report picture."""

from __future__ import annotations

import contextlib
import json
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.profilers import PassThroughProfiler
from PIL import Image

from llava_pl.callbacks import throughput
from llava_pl.callbacks.history import LossHistory, read_history
from llava_pl.callbacks.optimization import OptimizationMonitor
from llava_pl.callbacks.progress import LlavaProgressBar, ProgressLines, format_eta, progress_display
from llava_pl.callbacks.summary import format_summary
from llava_pl.callbacks.throughput import ThroughputMonitor
from llava_pl.metrics.data_wait import DataWaitProfiler
from llava_pl.metrics.peak import DatasheetPeak, MeasuredPeak
from llava_pl.demo.report import RunReport
from tests.tiny_llava import freeze_all_but, tiny_llava

FETCH = "[_TrainingEpochLoop].train_dataloader_next"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Module:
    """Stands in for the LightningModule: what the callbacks read and log."""

    def __init__(self, model: torch.nn.Module | None = None) -> None:
        self.model = model
        self.logged: dict[str, tuple[float, bool]] = {}

    def log(self, name: str, value, on_step: bool, on_epoch: bool, prog_bar: bool = False) -> None:
        assert on_step and not on_epoch
        self.logged[name] = (float(value), prog_bar)


def fake_trainer(**values) -> SimpleNamespace:
    defaults = {"global_step": 0, "log_every_n_steps": 2, "world_size": 1}
    return SimpleNamespace(profiler=PassThroughProfiler(), strategy=SimpleNamespace(root_device=torch.device("cpu")),
                           precision_plugin=SimpleNamespace(forward_context=contextlib.nullcontext),
                           is_global_zero=True, **(defaults | values))


def batch(lengths: list[int], images: int) -> dict[str, torch.Tensor]:
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    return {"attention_mask": mask, "pixel_values": torch.zeros(images, 3, 16, 16)}


def test_throughput_window_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(99.0)
    monkeypatch.setattr(throughput.time, "perf_counter", clock)
    trainer, module = fake_trainer(), Module(freeze_all_but(tiny_llava(), ["projector"]))
    monitor = ThroughputMonitor(peak=DatasheetPeak(tflops=1e-6, name="1 MFLOP/s"))  # peak 1e6 FLOP/s
    monitor.setup(trainer, module, "fit")
    assert isinstance(trainer.profiler, DataWaitProfiler)
    monitor.on_train_start(trainer, module)

    trainer.profiler.start(FETCH)  # the first batch is fetched from t=99 to t=100, before the window opens
    clock.now = 100.0
    trainer.profiler.stop(FETCH)
    monitor.on_train_batch_start(trainer, module, batch([10, 6], images=2), 0)  # the window opens at 100
    trainer.global_step = 1
    monitor.on_train_batch_end(trainer, module, None, None, 0)  # step 1: not a logging step (every 2)
    assert module.logged == {}
    clock.now = 101.5
    trainer.profiler.start(FETCH)
    clock.now = 102.0  # 0.5 s waiting for the second batch
    trainer.profiler.stop(FETCH)
    monitor.on_train_batch_start(trainer, module, batch([8, 8], images=1), 1)
    clock.now = 102.5
    monitor.on_validation_start(trainer, module)
    clock.now = 103.5  # 1 s of validation does not count as training
    monitor.on_validation_end(trainer, module)
    clock.now = 104.0
    trainer.global_step = 2
    monitor.on_train_batch_end(trainer, module, None, None, 1)

    # training time: 104 - 100 - 1 (validation) + 1 (the first fetch) = 4 s for 2 optimizer steps
    # tokens 10+6+8+8 = 32 of 20+16 = 36 positions; squared lengths 100+36+64+64 = 264; 3 images of 4 tokens
    # FLOPs (align, by hand as in test_flops.py): vision 3 x 18208 + projector 6·384·12 + LLM 4·3200·32 + 12·16·264
    flops = 3 * 18208 + 6 * 384 * 12 + 4 * 3200 * 32 + 12 * 16 * 264
    assert flops == 542560
    logged = {name: value for name, (value, _) in module.logged.items()}
    expected = {
        "perf/tokens_per_s": 32 / 4, "perf/samples_per_s": 4 / 4, "perf/step_time": 4 / 2,
        "perf/data_wait": (1 + 0.5) / 2, "perf/tflops": flops / 4 / 1e12, "perf/mfu": flops / 4 / 1e6,
        "data/padding_fraction": 1 - 32 / 36, "data/tokens_per_batch": 32 / 2, "data/image_tokens_per_batch": 3 * 4 / 2,
    }
    for name, value in expected.items():
        assert logged[name] == pytest.approx(value, rel=1e-6), name
    assert logged["perf/peak_memory_gib"] > 0  # the process's peak resident memory on a CPU
    assert [name for name, (_, bar) in module.logged.items() if bar] == ["perf/tokens_per_s"]

    monitor.teardown(trainer, module, "fit")
    assert isinstance(trainer.profiler, PassThroughProfiler)  # the trainer's own profiler is back


def test_world_size_scales_rates_not_mfu(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(0.0)
    monkeypatch.setattr(throughput.time, "perf_counter", clock)
    trainer, module = fake_trainer(world_size=4), Module(freeze_all_but(tiny_llava(), ["projector"]))
    trainer.log_every_n_steps = 1
    monitor = ThroughputMonitor(peak=None)
    monitor.setup(trainer, module, "fit")
    monitor.on_train_start(trainer, module)
    monitor.on_train_batch_start(trainer, module, batch([10, 10], images=2), 0)
    clock.now, trainer.global_step = 2.0, 1
    monitor.on_train_batch_end(trainer, module, None, None, 0)
    logged = {name: value for name, (value, _) in module.logged.items()}
    assert logged["perf/tokens_per_s"] == pytest.approx(20 / 2 * 4)  # rank 0's rate x 4 ranks
    assert logged["data/padding_fraction"] == 0
    assert "perf/mfu" not in logged and logged["perf/tflops"] > 0  # no peak: FLOP/s but no MFU


def test_lr_per_group_and_grad_norm_only_on_logging_steps() -> None:
    weight = torch.nn.Parameter(torch.zeros(2))
    bias = torch.nn.Parameter(torch.zeros(1))
    weight.grad, bias.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    optimizer = torch.optim.AdamW([{"name": "projector", "params": [weight], "lr": 1e-3},
                                   {"name": "projector/no_decay", "params": [bias], "lr": 5e-4}])
    monitor, module = OptimizationMonitor(), Module()
    monitor.on_before_optimizer_step(fake_trainer(global_step=0, log_every_n_steps=2), module, optimizer)
    assert module.logged == {}  # step 1 is not logged with log_every_n_steps=2
    monitor.on_before_optimizer_step(fake_trainer(global_step=1, log_every_n_steps=2), module, optimizer)
    assert module.logged["train/lr/projector"][0] == pytest.approx(1e-3)
    assert module.logged["train/lr/projector/no_decay"][0] == pytest.approx(5e-4)
    assert module.logged["train/grad_norm"][0] == pytest.approx(5.0)  # sqrt(3² + 4²)


def test_eta() -> None:
    assert format_eta(elapsed=30.0, steps_done=10, steps_left=100) == "0:05:00"  # 3 s per step x 100
    assert format_eta(elapsed=3.0, steps_done=0, steps_left=100) == "?"


class _Stdout:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_is_a_bar_on_a_terminal_and_lines_in_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdout", _Stdout(tty=True))
    assert isinstance(progress_display(), LlavaProgressBar)
    assert isinstance(progress_display(terminal=False), ProgressLines)
    monkeypatch.setattr("sys.stdout", _Stdout(tty=False))  # redirected: a SLURM job's output file
    assert isinstance(progress_display(), ProgressLines)
    assert isinstance(progress_display(terminal=True), LlavaProgressBar)


def test_module_print_goes_through_the_progress_lines(capsys: pytest.CaptureFixture) -> None:
    """``LightningModule.print`` (the projector-centring line, say) asks the trainer's progress display."""
    from lightning.pytorch import LightningModule

    lines = ProgressLines()
    module = LightningModule()
    module._trainer = SimpleNamespace(progress_bar_callback=lines, is_global_zero=True)
    module.print("centred the projector")
    lines.disable()
    module.print("and again")
    assert capsys.readouterr().out.splitlines() == ["centred the projector", "and again"]


def test_summary_text() -> None:
    facts = {"stage": "align", "parameters": 1000, "trainable_parameters": 10, "train_samples": 4000,
             "val_samples": 200, "batches_per_epoch": 125, "global_batch_size": 256, "micro_batch_size": 32,
             "world_size": 2, "accumulation": 4, "optimizer_steps": 16, "epochs": 1, "max_length": 2048,
             "tokens_per_image": 576, "learning_rates": {"projector": 1e-3, "projector/no_decay": 1e-3},
             "optimizer": "AdamW", "strategy": "DDPStrategy", "precision": "bf16-mixed",
             "accelerator": "CUDAAccelerator", "devices": 2, "nodes": 1}
    text = format_summary(facts, "part table")
    assert "stage align: 10 of 1,000 parameters train\npart table\n" in text
    assert "4,000 train samples (125 micro-batches per epoch per rank), 200 validation samples" in text
    assert "global 256 = micro 32 x 2 process(es) x accumulation 4; 16 optimizer steps (1 epoch(s))" in text
    assert "peak lr projector 0.001\n" in text  # one rate per part: the no_decay twin is not repeated
    assert "DDPStrategy, precision bf16-mixed, CUDAAccelerator x 2 device(s) x 1 node(s)" in text


def test_peaks() -> None:
    assert DatasheetPeak(tflops=989.4, name="H100 SXM bf16")(torch.device("cpu")) == pytest.approx(989.4e12)
    with pytest.raises(ValueError, match="positive"):
        DatasheetPeak(tflops=0, name="x")
    random_state = torch.get_rng_state()
    measured = MeasuredPeak(size=64, seconds=0.01)(torch.device("cpu"))
    assert 1e6 < measured < 1e13  # a CPU core does between a megaflop and ten teraflops per second
    assert torch.equal(torch.get_rng_state(), random_state)  # measuring leaves the training's random draws alone


def test_loss_history_keeps_the_last_line_of_a_step(tmp_path) -> None:
    path = tmp_path / "loss_history.jsonl"
    history, module = LossHistory(path), SimpleNamespace(stage=SimpleNamespace(name="align"))
    trainer = fake_trainer(accumulate_grad_batches=2, global_step=0, log_every_n_steps=1, sanity_checking=False,
                           callback_metrics={"val/loss": torch.tensor(2.5)})
    history.on_train_start(trainer, module)
    trainer.global_step = 1
    history.on_train_batch_end(trainer, module, {"loss": torch.tensor(1.5)}, None, 0)  # 3.0 / accumulation 2
    history.on_validation_end(trainer, module)
    trainer.global_step = 0  # a resume from the checkpoint of step 0 repeats step 1
    history.on_train_start(trainer, module)
    trainer.global_step = 1
    history.on_train_batch_end(trainer, module, {"loss": torch.tensor(1.0)}, None, 0)
    assert read_history(path) == {"align": {"train/loss": {1: 2.0}, "val/loss": {1: 2.5}}}


def test_report_draws_answers_and_curves(tmp_path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    records = []
    for index, (answer, prediction) in enumerate([("red", "red"), ("circle", "square"), ("2", "2."), ("blue", "")]):
        Image.new("RGB", (48, 48), (40 * index, 90, 200)).save(images / f"{index}.png")
        records.append({"question_id": str(index), "image": f"{index}.png", "answer": answer, "type": "color",
                        "text": f"Question {index}?\nAnswer briefly.", "prediction": prediction})
    predictions = tmp_path / "answers.jsonl"
    predictions.write_text("".join(json.dumps(record) + "\n" for record in records))
    history = tmp_path / "loss_history.jsonl"
    history.write_text("".join(json.dumps({"stage": stage, "step": step, "metric": "train/loss", "value": 5.0 / step})
                               + "\n" for stage in ("align", "finetune") for step in (1, 2, 3)))
    scores = tmp_path / "metrics.json"  # what the end-of-run evaluation writes to <run>/eval
    scores.write_text(json.dumps({"shapes": {"color/accuracy": 0.5, "color/blank_accuracy": 0.1, "color/chance": 0.2,
                                             "color/n": 4}, "color_naming/caption": {"accuracy": 0.25, "chance": 0.5}}))
    report = RunReport(str(tmp_path / "report.png"), str(history), str(predictions), str(images), str(scores),
                       num_images=4, columns=2)
    assert [panel.right for panel in report.panels()] == [True, False, True, False]  # "2." normalises to "2"
    assert report._score_line() == "color 50% (chance 20%), caption 25% (chance 50%)"  # question types, probes
    out = report()
    with Image.open(out) as picture:
        # 2 columns of images (2.6 in) + 3 of curves (2.2 in) + margin, 2 rows of 3 in + title, at 100 dpi
        assert picture.format == "PNG"
        assert picture.size == (int((2.6 * 2 + 2.2 * 3 + 0.5) * 100), int((3.0 * 2 + 0.6) * 100))

    curves_only = RunReport(str(tmp_path / "curves.png"), str(history), str(tmp_path / "missing.jsonl"))()
    with Image.open(curves_only) as picture:
        assert picture.size == (int((2.2 * 3 + 0.5) * 100), int((3.0 + 0.6) * 100))
