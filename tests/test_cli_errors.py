"""User mistakes end a command with one line, ``error: <message>``, and a non-zero exit status, before anything is
loaded; program bugs keep their tracebacks; every command answers ``--help``."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import InstantiationException
from torch.utils.data import DataLoader, Dataset

from llava_pl.data.conversation import SampleError
from llava_pl.errors import ConfigError, UsageError, reports_user_errors, user_error
from tests.conftest import CONF_DIR, small_overrides
from tests.data_helpers import mixed_records, write_dataset

KEY_VALUE_COMMANDS = {  # module: (the usage's start, arguments ending in a misspelt key)
    "llava_pl.predict": ("python -m llava_pl.predict model=PATH", ["model=m.ckpt", "imag=cat.png"]),
    "llava_pl.export": ("python -m llava_pl.export ckpt=PATH", ["ckpt=m.ckpt", "outt=folder"]),
    "llava_pl.to_wds": ("python -m llava_pl.to_wds in=FILE.json", ["in=x.json", "out=o", "image=folder"]),
}
HYDRA_COMMANDS = {  # module: the usage's start (the config's hydra.help.header)
    "llava_pl.evaluate": "python -m llava_pl.evaluate model=PATH tasks=[pope,mme]",
    "llava_pl.chat": "python -m llava_pl.chat model=PATH",
    "llava_pl.serve": "python -m llava_pl.serve model=PATH",
    "llava_pl.make_instruct": "python -m llava_pl.make_instruct in=FILE.jsonl",
}


class _BadSample(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> None:
        try:
            raise OSError("image file is truncated")
        except OSError as error:
            raise SampleError("/data/x.json", "x-408", "image does not decode: /data/img/408.jpg", "corrupt_image") \
                from error


def test_a_sample_error_raised_in_a_loader_worker_keeps_its_message() -> None:
    with pytest.raises(RuntimeError, match="Caught SampleError in DataLoader worker process 0") as raised:
        list(DataLoader(_BadSample(), num_workers=1))
    assert user_error(raised.value) == ("/data/x.json: sample x-408: image does not decode: /data/img/408.jpg", 1)


def test_which_errors_are_the_users() -> None:
    assert user_error(ConfigError("stage.align.lr must be positive")) == ("stage.align.lr must be positive", 1)
    assert user_error(UsageError("unknown key 'imag'")) == ("unknown key 'imag'", 2)
    assert user_error(FileNotFoundError("data file not found: x.json")) == ("data file not found: x.json", 1)
    wrapped = InstantiationException("Error in call to target 'x'")
    wrapped.__cause__ = FileNotFoundError("tokenizer folder not found: y")
    assert user_error(wrapped) == ("tokenizer folder not found: y", 1)
    for bug in (ValueError("shapes do not match"), KeyError("input_ids"), TypeError("bad call"),
                RuntimeError("Caught ValueError in DataLoader worker process 0.\nOriginal Traceback ...\nValueError: x")):
        assert user_error(bug) is None, bug


def test_entry_points_print_the_message_alone_and_keep_tracebacks_for_bugs(monkeypatch, capsys) -> None:
    @reports_user_errors
    def command(error: Exception) -> None:
        raise error

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as stopped:
        command(ConfigError("invalid config:\n  - trainer.devices=9"))
    assert stopped.value.code == 1 and capsys.readouterr().err == "error: invalid config:\n  - trainer.devices=9\n"
    with pytest.raises(SystemExit) as stopped:
        command(UsageError("missing model="))
    assert stopped.value.code == 2
    with pytest.raises(ValueError, match="a bug"):  # not the user's: the traceback stays
        command(ValueError("a bug"))
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigError):  # the full traceback on request
        command(ConfigError("x"))


@pytest.mark.parametrize("module", sorted(KEY_VALUE_COMMANDS))
def test_key_value_commands_answer_help_and_refuse_unknown_keys_before_loading(module, monkeypatch, capsys) -> None:
    usage, argv = KEY_VALUE_COMMANDS[module]
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as stopped:
        main(["--help"])
    assert stopped.value.code == 0 and usage in capsys.readouterr().out
    monkeypatch.setattr("llava_pl.checkpoint.load.load_for_inference", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    err = capsys.readouterr().err
    key = argv[-1].split("=")[0]
    assert stopped.value.code == 2 and err.startswith(f"error: unknown key '{key}' (known: "), err
    assert f"usage: {usage}" in err


def test_inspector_answers_help_and_refuses_unknown_keys_before_building(monkeypatch, capsys) -> None:
    from llava_pl import inspect

    with pytest.raises(SystemExit) as stopped:
        inspect.main(["--help"])
    assert stopped.value.code == 0 and "decode=true|false" in capsys.readouterr().out
    monkeypatch.setattr(inspect, "build_empty_model", lambda *a, **k: pytest.fail("model built"))
    for argv, code, message in ((["color=grey"], 2, "error: color: expected one of auto, always, never, got 'grey'"),
                                (["colour=never"], 1, "error: Could not override 'colour'")):
        with pytest.raises(SystemExit) as stopped:
            inspect.main(argv)
        assert stopped.value.code == code and capsys.readouterr().err.startswith(message), argv


def test_predict_refuses_values_and_missing_inputs_before_loading(monkeypatch, capsys, tmp_path) -> None:
    from llava_pl import predict

    monkeypatch.setattr("llava_pl.checkpoint.load.load_for_inference", lambda *a, **k: pytest.fail("model loaded"))
    cases = {
        ("model=m", "image=a.png", "prompt=hi", "max_new_tokens=many"): (2, "error: max_new_tokens: invalid literal"),
        ("model=m", "prompt=hi"): (2, "error: give questions=FILE, or image=IMG and prompt=TEXT"),
        ("image=a.png", "prompt=hi"): (2, "error: missing model="),
        ("model=m", f"image={tmp_path / 'a.png'}", "prompt=hi"): (1, f"error: image file not found: {tmp_path}/a.png"),
        ("model=m", f"questions={tmp_path / 'q.json'}"): (1, f"error: data file not found: {tmp_path / 'q.json'}"),
    }
    for argv, (code, message) in cases.items():
        with pytest.raises(SystemExit) as stopped:
            predict.main(list(argv))
        assert stopped.value.code == code and capsys.readouterr().err.startswith(message), argv


@pytest.fixture
def hydra_main(monkeypatch, tmp_path):
    """Runs a ``@hydra.main`` command in this process with the given arguments; returns its exit status."""
    monkeypatch.chdir(tmp_path)  # whatever a run would write lands here
    monkeypatch.setenv("HYDRA_MAIN_MODULE", "__main__")  # the config path from the module's file, as under -m

    def call(module: str, *argv: str) -> int:
        monkeypatch.setattr(sys, "argv", [module, *argv])
        GlobalHydra.instance().clear()
        try:
            with pytest.raises(SystemExit) as stopped:
                importlib.import_module(module).main()
        finally:
            GlobalHydra.instance().clear()
        return stopped.value.code

    return call


@pytest.mark.parametrize("module", sorted(HYDRA_COMMANDS))
def test_hydra_commands_answer_help_and_refuse_unknown_keys(module, hydra_main, monkeypatch, capsys) -> None:
    assert hydra_main(module, "--help") == 0
    assert HYDRA_COMMANDS[module] in capsys.readouterr().out
    monkeypatch.setattr("llava_pl.checkpoint.load.load_for_inference", lambda *a, **k: pytest.fail("model loaded"))
    assert hydra_main(module, "imag=cat.png") == 1
    assert "Could not override 'imag'" in capsys.readouterr().err


def test_hydra_commands_name_a_missing_mandatory_key(hydra_main, capsys) -> None:
    assert hydra_main("llava_pl.chat") == 2
    assert capsys.readouterr().err.startswith("error: missing model=\nusage: python -m llava_pl.chat model=PATH")
    assert hydra_main("llava_pl.make_instruct", "out=x.json", "hydra/job_logging=none",
                      "hydra/hydra_logging=none") == 2
    assert capsys.readouterr().err.startswith("error: missing in=\n")


def test_train_py_reports_a_bad_sample_from_a_loader_worker_in_one_line(data_dir, tmp_path) -> None:
    folder = tmp_path / "data"
    records = mixed_records(4)
    path = write_dataset(folder, records)
    (folder / records[0]["image"]).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))  # found only when decoded
    run_dir = tmp_path / "run"
    overrides = [o for o in small_overrides(data_dir, run_dir, shapes=False) if not o.startswith("run_dir=")]
    command = [sys.executable, "train.py", *overrides, f"hydra.run.dir={run_dir}", "stage=finetune", "data=llava",
               "experiment=none", f"data.image_folder={folder}", f"data.sets.finetune.train={path}", "data.on_bad_sample=error",
               "data.num_workers=1", "tasks=[]", "report=none", "monitor=none", "stage.finetune.micro_batch_size=4",
               "stage.finetune.global_batch_size=4", "stage.finetune.max_steps=1"]
    result = subprocess.run(command, cwd=CONF_DIR.parents[1], capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]
    expected = f"error: {path}: sample {records[0]['id']}: image does not decode: {folder / records[0]['image']}"
    assert result.stderr.strip().splitlines()[-1].startswith(expected), result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "DataLoader worker" not in result.stderr
    assert not (run_dir / "finetune" / "projector.safetensors").exists()
