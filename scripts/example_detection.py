#!/usr/bin/env python
"""Worked example: train torchvision's Mask R-CNN with a multi-task aggregator.

    python scripts/example_detection.py --aggregator pivrg --steps 20
    python scripts/example_detection.py --aggregator nash_mtl --shared backbone
    python scripts/example_detection.py --aggregator avgnorm --low-memory
    python scripts/example_detection.py --aggregator pcgrad --features
    python scripts/example_detection.py --aggregator fairgrad --weights maskrcnn_coco.pth --device cuda

Needs torchvision (``pip install torchvision``; it is not a dependency of the package).

The model is ``torchvision.models.detection.maskrcnn_resnet50_fpn``, randomly initialised
(``--weights PATH`` loads a local ``state_dict`` instead, e.g. the COCO checkpoint saved
with ``torch.save(model.state_dict(), PATH)``; nothing is downloaded).  It trains on a
few synthetic images generated here: rectangles (class 1) and ellipses (class 2) on
noise, with boxes and masks derived from the visible pixels of each object.

Each of the five losses Mask R-CNN returns in train mode is a task::

    loss_classifier, loss_box_reg    box head (RoI features of the FPN levels 0-3)
    loss_mask                        mask head (RoI features of the FPN levels 0-3)
    loss_objectness, loss_rpn_box_reg  region-proposal head (every FPN level)

Shared parameters (``--shared``): the ResNet-50 body and the FPN are the only parameters
all five losses reach, so ``backbone+fpn`` (the default) is exactly the set on which
the tasks compete; the method's direction is applied there.  ``backbone`` aggregates on
the ResNet body only (23.5 M of the 26.9 M parameters); the FPN then gets, like every head,
its ordinary gradient of the weighted sum of losses.  The heads are reached by subsets
of the losses (the RPN head by the two RPN losses, the box head by two, the mask head by
one; the proposals are detached, so the RoI losses do not reach the RPN head), and
``aggregators.backward`` gives each the gradient one backward of ``sum_i w_i l_i``
would.

``--features``: feature-level ("-UB"/rep) mode on the FPN outputs "0"-"3".  Every
path from a loss to the backbone passes through them.  The fifth level ("pool", read by
the RPN only) is a max-pool of level "3": passing it too would count the gradient that
reaches "3" through it twice, so it is left out.

Each step prints every loss with its weight ``w`` (``d = sum_i w_i g_i``; ``-`` for
methods without weights, e.g. GradDrop) and ``||d||``, the norm of the aggregated
direction (of the FPN-output gradients with ``--features``).  From a random start the
first gradients reach norms of 1e3 (the mask head's logits are large), so the model's
whole gradient is then rescaled to norm ``--clip-norm`` (1; its direction is kept).

One aggregator instance serves the whole loop (Nash-MTL, FAMO, DWA and others carry
state between steps).  Every step trains on the same batch, so the losses of step t+1
are those of the updated model on step t's batch: they go to ``agg.after_step`` (FAMO's
hook) before the next backward.  No validation metric is measured here, so PIVRG's
performance priorities stay at omega = 1.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import aggregators  # noqa: E402

CLASSES = ("background", "rectangle", "ellipse")
CLASS_WEIGHT = "roi_heads.box_predictor.cls_score.weight"  # (classes, 1024): the class count of a checkpoint
FPN_LEVELS = ("0", "1", "2", "3")  # the RoI heads read these; "pool" is max-pooled from "3"
# Few objects per image: fewer proposals and sampled RoIs than torchvision's COCO defaults.
SMALL_SCENE = dict(rpn_pre_nms_top_n_train=500, rpn_post_nms_top_n_train=200,
                   rpn_batch_size_per_image=128, box_batch_size_per_image=64)


def synthetic_batch(num_images: int, size: int, seed: int = 0):
    """``(images, targets)`` in torchvision's detection format.

    Each image holds 1-3 objects (a rectangle or an ellipse of a random colour) on weak
    noise; later objects occlude earlier ones.  An object's mask is its visible pixels,
    its box the extent of that mask (x1, y1, x2, y2, pixel edges); fully occluded
    objects are dropped."""
    from torchvision.ops import masks_to_boxes

    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    images, targets = [], []
    for _ in range(num_images):
        image = 0.1 * torch.rand(3, size, size, generator=g)
        owner = torch.full((size, size), -1)  # index of the object seen at each pixel
        labels = []
        for j in range(int(torch.randint(1, 4, (), generator=g))):
            label = int(torch.randint(1, len(CLASSES), (), generator=g))
            cy, cx = ((0.2 + 0.6 * torch.rand(2, generator=g)) * size).tolist()
            hy, hx = ((0.08 + 0.15 * torch.rand(2, generator=g)) * size).tolist()  # half extents
            if CLASSES[label] == "rectangle":
                inside = ((yy - cy).abs() <= hy) & ((xx - cx).abs() <= hx)
            else:
                inside = ((yy - cy) / hy) ** 2 + ((xx - cx) / hx) ** 2 <= 1
            image[:, inside] = 0.3 + 0.7 * torch.rand(3, 1, generator=g)
            owner[inside] = j
            labels.append(label)
        masks = torch.stack([owner == j for j in range(len(labels))])
        visible = masks.flatten(1).any(dim=1)
        masks = masks[visible]
        boxes = masks_to_boxes(masks)
        boxes[:, 2:] += 1  # last pixel index -> right/bottom edge
        images.append(image)
        targets.append({"boxes": boxes, "labels": torch.tensor(labels)[visible], "masks": masks.to(torch.uint8)})
    return images, targets


def build_model(image_size: int, weights: str | None = None):
    """Mask R-CNN ResNet-50-FPN at ``image_size`` px (no resizing), in train mode.

    Random initialisation, or the ``state_dict`` saved at ``weights`` (its class count is
    taken from the file).  With loaded weights the BatchNorm layers keep their stored
    statistics (eval mode; a few images are too few to re-estimate them) and train only
    their affine parameters."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    state = load_state_dict(weights) if weights is not None else None
    num_classes = len(CLASSES) if state is None else state[CLASS_WEIGHT].shape[0]
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes,
                                  min_size=image_size, max_size=image_size, **SMALL_SCENE)
    model.train()
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
            raise ValueError(f"{weights} does not fit maskrcnn_resnet50_fpn ({first})") from None
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()
    return model


def load_state_dict(path: str) -> dict:
    """The tensors saved at ``path`` (``torch.save(model.state_dict(), path)``)."""
    if not os.path.isfile(path):
        raise ValueError(f"--weights {path}: no such file; save one with torch.save(model.state_dict(), PATH)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise ValueError(f"--weights {path}: torch.load failed ({type(exc).__name__}); pass a file written by "
                         "torch.save(model.state_dict(), PATH)") from None
    if not isinstance(state, dict) or CLASS_WEIGHT not in state:
        raise ValueError(f"--weights {path} is not a Mask R-CNN state_dict (it has no {CLASS_WEIGHT})")
    return state


def shared_module(model, which: str) -> torch.nn.Module:
    """The parameters the aggregated direction is applied to (see the module docstring)."""
    if which == "backbone":
        return model.backbone.body
    if which == "backbone+fpn":
        return model.backbone
    raise ValueError(f"--shared must be 'backbone' or 'backbone+fpn', got {which!r}")


def record_fpn_levels(model) -> dict:
    """A dict holding the FPN outputs of the model's latest forward (a forward hook)."""
    levels = {}
    model.backbone.register_forward_hook(lambda _module, _inputs, output: levels.update(output))
    return levels


def train_step(model, images, targets, agg, optimizer, shared, *, levels=None, low_memory=False,
               after_step=False, clip_norm=0.0) -> aggregators.BackwardResult:
    """Forward, ``aggregators.backward`` on the loss dict, optimiser step.

    ``levels`` (from :func:`record_fpn_levels`): feature-level mode on the FPN outputs.
    ``after_step``: first hand these losses (the previous step's model updated, same
    batch) to ``agg.after_step``.  ``clip_norm`` > 0: rescale the model's whole gradient
    to at most that norm (its direction is kept)."""
    optimizer.zero_grad(set_to_none=True)
    losses = model(images, targets)
    if after_step:
        agg.after_step(torch.stack(list(losses.values())).detach())
    features = [levels[name] for name in FPN_LEVELS] if levels is not None else None
    info = aggregators.backward(losses, shared, agg, features=features, low_memory=low_memory)
    if clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    optimizer.step()
    return info


def format_row(step: int, info: aggregators.BackwardResult) -> str:
    """``step | loss (w weight) per task | ||d||``; ``w -`` for methods without weights."""
    weights = [None] * len(info.task_names) if info.weights is None else info.weights.tolist()
    cells = [f"{l:8.4f} (w {'-' if w is None else f'{w:.3g}'})" for l, w in zip(info.losses.tolist(), weights)]
    return f"{step:>4} | " + " | ".join(f"{c:<22}" for c in cells) + f" | {float(info.direction_norm):.3g}"


def format_header(task_names) -> str:
    names = [n.removeprefix("loss_") for n in task_names]
    return "step | " + " | ".join(f"{n:<22}" for n in names) + " | ||d||"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--aggregator", default="pivrg", help="a registry name: " + ", ".join(aggregators.available()))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--clip-norm", type=float, default=1.0,
                    help="rescale the model's gradient to at most this norm, keeping its direction (0: off)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--images", type=int, default=2, help="synthetic images, all in every step's batch")
    ap.add_argument("--shared", default="backbone+fpn", choices=["backbone", "backbone+fpn"])
    ap.add_argument("--low-memory", action="store_true", help="Gram-matrix methods: never hold the k x n matrix")
    ap.add_argument("--features", action="store_true", help="feature-level mode on the FPN outputs 0-3")
    ap.add_argument("--weights", default=None, metavar="PATH", help="a local state_dict to start from")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.aggregator not in aggregators.available():
        print(f"error: unknown aggregator {args.aggregator!r}; choose one of {', '.join(aggregators.available())}",
              file=sys.stderr)
        return 2
    if args.steps < 1 or args.images < 1 or args.image_size < 64:
        print("error: --steps and --images must be >= 1 and --image-size >= 64 (the last ResNet stage "
              "needs 2 x 2 cells for its batch norm)", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    try:
        model = build_model(args.image_size, args.weights).to(device)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    images, targets = synthetic_batch(args.images, args.image_size, seed=args.seed)
    images = [im.to(device) for im in images]
    targets = [{key: v.to(device) for key, v in t.items()} for t in targets]

    agg = aggregators.make(args.aggregator, num_tasks=5).to(device)  # one instance: stateful methods
    params = list(model.parameters()) + [p for p in agg.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=args.momentum)
    shared = shared_module(model, args.shared)
    levels = record_fpn_levels(model) if args.features else None

    print(f"Mask R-CNN, {args.images} synthetic images of {args.image_size} px, aggregator={args.aggregator}, "
          f"shared={args.shared}" + (", feature level (FPN 0-3)" if args.features else "")
          + (", low memory" if args.low_memory else ""))
    for step in range(args.steps):
        try:
            info = train_step(model, images, targets, agg, optimizer, shared, levels=levels,
                              low_memory=args.low_memory, after_step=step > 0, clip_norm=args.clip_norm)
        except ValueError as exc:
            print(f"error: step {step}: {exc}", file=sys.stderr)
            return 1
        if step == 0:
            print(format_header(info.task_names))
        print(format_row(step, info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
