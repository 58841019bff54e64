"""How easily a query finds the shape a question names among the demo tower's patch features, by kind and by
colour, with and without a dark rim round every shape.

No LLM is involved. The demo's random vision tower (``conf/model/vision/tiny_clip.yaml``, seed 42) encodes
drawn scenes; its patch features are centred (as ``model.center_projector`` does) and divided by their RMS (as
the LLM's RMSNorm does). For every shape on a two- or three-shape held-out image, a query vector per kind (or
per colour) scores the nine patch tokens, and the lookup is right when the shape's own token scores highest.
Two kinds of query: the centroid (the mean feature of the training shapes of that kind, less the mean token:
what the first gradient steps point to) and a query learnt alone with Adam (a softmax over the nine tokens,
64 shapes per step). docs/demo_findings.md quotes it.

    OMP_NUM_THREADS=2 nice python bench/feature_lookup.py             # rims 0, 1 and 2 px: about 2 min
    OMP_NUM_THREADS=2 nice python bench/feature_lookup.py --outlines 0 --steps 10 25 50
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # before bench/, whose data.py would hide the data package

import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from data.shapes import COLORS, KINDS, POSITIONS, render_scene, sample_scene  # noqa: E402
from llava_pl.model.vision import VisionEncoder  # noqa: E402

IMAGE_SIZE = 96  # the demo's
ATTRIBUTES = {"kind": KINDS, "colour": tuple(COLORS)}


def demo_tower(seed: int) -> VisionEncoder:
    """The demo's vision tower, random from its config."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("train", overrides=["run_dir=.", "paths.data_dir=."])
    L.seed_everything(seed, verbose=False)
    return instantiate(cfg.model.vision).eval()


def scenes(count: int, seed: int, outline: int) -> tuple[list, list[list[tuple[int, int, int]]]]:
    """Rendered images, and per image its shapes as (token index, kind index, colour index)."""
    rng = random.Random(seed)
    images, shapes = [], []
    for _ in range(count):
        scene = sample_scene(rng, IMAGE_SIZE)
        images.append(render_scene(scene, IMAGE_SIZE, outline))
        shapes.append([(POSITIONS.index(s.position), KINDS.index(s.kind), list(COLORS).index(s.color))
                       for s in scene.shapes])
    return images, shapes


@torch.no_grad()
def normalised_features(tower: VisionEncoder, images: list, train_count: int) -> torch.Tensor:
    """``(images, 9, width)`` patch features, less the training tokens' mean, divided by each token's RMS."""
    pixels = tower.image_processor(images, return_tensors="pt")["pixel_values"]
    features = torch.cat([tower(batch) for batch in pixels.split(256)])
    features = features - features[:train_count].flatten(0, 1).mean(0)
    return features / features.pow(2).mean(-1, keepdim=True).sqrt()


def lookup_accuracies(features: torch.Tensor, shapes: list[list[tuple[int, int, int]]], train_count: int,
                      attribute: int, classes: int, steps: list[int], seed: int) -> dict[str, float]:
    """Held-out accuracy of the centroid query and of the learnt query after each of ``steps``, on two- and
    three-shape images; ``attribute`` 1 looks up by kind, 2 by colour."""
    rows = [(image, shape[0], shape[attribute]) for image, found in enumerate(shapes) if len(found) >= 2
            for shape in found]
    train = torch.tensor([row for row in rows if row[0] < train_count])
    test = torch.tensor([row for row in rows if row[0] >= train_count])

    def accuracy(queries: torch.Tensor) -> float:
        scores = torch.einsum("btd,bd->bt", features[test[:, 0]], queries[test[:, 2]])
        return (scores.argmax(-1) == test[:, 1]).float().mean().item()

    mean_token = features[:train_count].flatten(0, 1).mean(0)
    centroids = torch.stack([features[train[train[:, 2] == c, 0], train[train[:, 2] == c, 1]].mean(0) - mean_token
                             for c in range(classes)])
    results = {"centroid": accuracy(centroids)}
    queries = torch.zeros(classes, features.shape[-1], requires_grad=True)
    optimizer = torch.optim.Adam([queries], lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for step in range(1, max(steps) + 1):
        batch = train[torch.randint(0, len(train), (64,), generator=generator)]
        scores = torch.einsum("btd,bd->bt", features[batch[:, 0]], queries[batch[:, 2]])
        loss = F.cross_entropy(scores, batch[:, 1])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in steps:
            results[f"step {step}"] = accuracy(queries.detach())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outlines", type=int, nargs="+", default=[0, 1, 2], help="rim widths in pixels")
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--held-out", type=int, default=500)
    parser.add_argument("--steps", type=int, nargs="+", default=[25, 50, 100, 200])
    parser.add_argument("--seed", type=int, default=42, help="the tower's (the demo's seed)")
    args = parser.parse_args()
    tower = demo_tower(args.seed)
    train_count = args.images - args.held_out
    print("finding the named shape on two- and three-shape held-out images (a random shape present: ~41%)")
    for outline in args.outlines:
        images, shapes = scenes(args.images, seed=0, outline=outline)
        features = normalised_features(tower, images, train_count)
        for attribute, (name, classes) in enumerate(ATTRIBUTES.items(), start=1):
            results = lookup_accuracies(features, shapes, train_count, attribute, len(classes), args.steps,
                                        args.seed)
            cells = "  ".join(f"{label} {value:6.1%}" for label, value in results.items())
            print(f"rim {outline} px, by {name:6s}  {cells}", flush=True)


if __name__ == "__main__":
    main()
