"""Export to and import from native Hugging Face Llava folders; prediction from checkpoints and exports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoProcessor, LlavaForConditionalGeneration

from llava_pl.checkpoint.load import load_for_inference
from llava_pl.constants import IMAGE_TOKEN_ID
from llava_pl.export import ExportError, export, to_hf_llava
from llava_pl.generate import prompt_ids
from llava_pl.lora import apply_lora
from llava_pl.model.build import build_model
from llava_pl.predict import predict
from tests.conftest import CONF_DIR


def _demo_model(compose_config, *overrides: str):
    cfg = compose_config(*overrides)
    tokenizer = instantiate(cfg.model.llm.tokenizer)
    torch.manual_seed(0)
    model = build_model(cfg.model, tokenizer).eval()
    return cfg, model, tokenizer


def _hf_inputs(ids: torch.Tensor, image_token_id: int) -> torch.Tensor:
    return torch.where(ids == IMAGE_TOKEN_ID, torch.full_like(ids, image_token_id), ids)


def _image(data_dir: Path) -> Image.Image:
    return Image.open(next((data_dir / "shapes" / "images" / "test").glob("*.png"))).convert("RGB")


@pytest.mark.parametrize("lora", [False, True], ids=["plain", "lora-merged"])
def test_exported_model_matches_logits_and_generation(compose_config, data_dir, tmp_path, lora) -> None:
    cfg, model, tokenizer = _demo_model(compose_config)
    if lora:
        apply_lora(model, {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"})
        with torch.no_grad():  # non-zero adapters, so merging changes the weights
            for name, parameter in model.llm.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0, 0.02)
    with torch.no_grad():  # a centred projector (model.center_projector): export folds its centre into linear_1
        model.projector.input_center.normal_(0, 1)
    export(model, tokenizer, tmp_path / "hf")
    hf = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "hf")

    template = instantiate(cfg.model.llm.template)
    ids = prompt_ids("What color is the circle?", template, tokenizer, model.tokens_per_image).unsqueeze(0)
    pixels = processor.image_processor(images=_image(data_dir), return_tensors="pt")["pixel_values"]
    hf_ids = _hf_inputs(ids, hf.config.image_token_id)
    with torch.no_grad():
        ours = model(ids, torch.ones_like(ids), pixels, torch.tensor([1]))["logits"]
        theirs = hf(input_ids=hf_ids, attention_mask=torch.ones_like(ids), pixel_values=pixels).logits
    torch.testing.assert_close(theirs[..., : ours.shape[-1]], ours, rtol=1e-5, atol=1e-5)

    generated_ours = model.generate(ids, torch.ones_like(ids), pixels, torch.tensor([1]), max_new_tokens=6, do_sample=False)
    generated_hf = hf.generate(input_ids=hf_ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
                               max_new_tokens=6, do_sample=False)[:, ids.shape[1]:]
    assert generated_ours.tolist() == generated_hf.tolist()

    # the processor expands <image> to the right number of tokens by itself
    expanded = processor(text="<image>", images=_image(data_dir), return_tensors="pt")["input_ids"]
    assert int((expanded == hf.config.image_token_id).sum()) == model.tokens_per_image


def test_linear_projector_is_refused(compose_config) -> None:
    _, model, tokenizer = _demo_model(compose_config, "model/projector=linear")
    with pytest.raises(ExportError, match="cannot be held by LlavaForConditionalGeneration.*mlp2x_gelu"):
        to_hf_llava(model, tokenizer)


def test_import_then_export_gives_identical_tensors(compose_config, saved_llava, tmp_path) -> None:
    cfg = compose_config("model=llava_hf", f"model.name_or_path={saved_llava}")
    imported_tokenizer = instantiate(cfg.model.llm.tokenizer)
    model = build_model(cfg.model, imported_tokenizer)
    assert model.tokens_per_image == 16 and model.vision.select_layer == -2
    export(model, imported_tokenizer, tmp_path / "exported")

    def tensors(folder: Path) -> dict[str, torch.Tensor]:
        state = {}
        for file in sorted(folder.glob("*.safetensors")):
            state |= load_file(str(file))
        return state

    before, after = tensors(saved_llava), tensors(tmp_path / "exported")
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key


@pytest.mark.slow
def test_predict_from_checkpoint_and_export(compose_config, data_dir, tmp_path) -> None:
    from llava_pl.train import run

    cfg = compose_config("stage=finetune", "tasks=[]", "stage.finetune.max_steps=2",
                         "stage.finetune.micro_batch_size=8", "stage.finetune.global_batch_size=8")
    run(cfg)
    checkpoint = Path(cfg.run_dir) / "finetune" / "checkpoints" / "last.ckpt"
    loaded = load_for_inference(checkpoint)
    tower = cfg.model.vision.config
    assert loaded.model.tokens_per_image == (tower.image_size // tower.patch_size) ** 2

    exported = tmp_path / "exported"
    result = subprocess.run([sys.executable, "-m", "llava_pl.export", f"ckpt={checkpoint}", f"out={exported}"],
                            cwd=CONF_DIR.parents[1], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (exported / "config.json").is_file()

    image = next((data_dir / "shapes" / "images" / "test").glob("*.png"))
    questions = tmp_path / "questions.json"
    questions.write_text(json.dumps([{"question_id": "q1", "image": image.name, "text": "What color is it?"},
                                     {"question_id": "q2", "image": image.name, "text": "How many shapes?"}]))
    for model_path in (checkpoint, exported):
        single_args = {"model": str(model_path), "image": str(image), "prompt": "What color is the circle?",
                       "max_new_tokens": 4}
        single = subprocess.run(
            [sys.executable, "-m", "llava_pl.predict", *(f"{key}={value}" for key, value in single_args.items())],
            cwd=CONF_DIR.parents[1], capture_output=True, text=True, timeout=300,
        )
        assert single.returncode == 0, single.stderr[-2000:]
        # exactly the model's own greedy answer, on one line (a barely trained model may answer with "")
        assert single.stdout == predict(single_args)[0]["answer"] + "\n", single.stdout
        out = tmp_path / f"answers_{model_path.name}.json"
        batch = subprocess.run(
            [sys.executable, "-m", "llava_pl.predict", f"model={model_path}", f"questions={questions}",
             f"image_folder={image.parent}", f"out={out}", "max_new_tokens=4"],
            cwd=CONF_DIR.parents[1], capture_output=True, text=True, timeout=300,
        )
        assert batch.returncode == 0, batch.stderr[-2000:]
        answers = json.loads(out.read_text())
        assert [a["question_id"] for a in answers] == ["q1", "q2"] and all("answer" in a for a in answers)
