"""Times the openclimatefix ``metnet`` package (PyPI) for ``bench/model.py``.

Runs in its own venv (``.venv-ocf``) because that package is also imported as
``metnet``. Reads a JSON request from argv[1] and prints a JSON result on the last line
of stdout: seconds per call for forward (one lead time) and forward + backward at each
batch size, and for all lead times of one tile, one call per lead time (its
``forward(imgs, lead_time)`` takes a single lead time). FLOPs are counted on the meta
device when the package allows it (``null`` otherwise).

Request keys: ``threads``, ``repeats``, ``batches``, ``model`` (keyword arguments of
``metnet.MetNet``), ``raw_channels`` and ``raw_size`` (its input before its own
preprocessor), ``frames``, ``tile_leads``.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F
from timing import time_call
from torch.utils.flop_counter import FlopCounterMode


def count_flops(model_kwargs: dict, shape: tuple[int, ...], backward: bool) -> int | None:
    """FLOPs of one call on meta tensors, or None if the package does not run on meta."""
    import metnet

    try:
        with torch.device("meta"):
            model = metnet.MetNet(**model_kwargs)
            x = torch.zeros(shape)  # (B, T, C, H, W)
        with FlopCounterMode(display=False) as counter, torch.set_grad_enabled(backward):
            out = model(x, 0)
            if backward:
                out.sum().backward()
        return int(counter.get_total_flops())
    except Exception:  # noqa: BLE001 - any failure only means "not countable on meta"
        return None


def main() -> None:
    import metnet

    request = json.loads(sys.argv[1])
    torch.set_num_threads(request["threads"])
    torch.manual_seed(0)
    model = metnet.MetNet(**request["model"])
    repeats, frames = request["repeats"], request["frames"]
    channels, size = request["raw_channels"], request["raw_size"]
    result = {
        "torch": torch.__version__,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    for batch in request["batches"]:
        shape = (batch, frames, channels, size, size)
        x = torch.randn(shape)  # (B, T, C, H, W)

        def forward(x=x) -> None:
            with torch.inference_mode():
                model.eval()(x, 7)

        def train_step(x=x) -> None:
            model.train().zero_grad(set_to_none=True)
            logits = model(x, 7)  # (B, bins, h, w)
            target = torch.zeros(logits.shape[0], *logits.shape[2:], dtype=torch.long)
            F.cross_entropy(logits, target).backward()

        result[f"batch{batch}"] = {
            "forward": time_call(forward, repeats),
            "forward_backward": time_call(train_step, repeats),
            "forward_flops": count_flops(request["model"], shape, backward=False),
            "forward_backward_flops": count_flops(request["model"], shape, backward=True),
        }

    x = torch.randn(1, frames, channels, size, size)  # (1, T, C, H, W)

    def predict(lead: int) -> None:
        with torch.inference_mode():
            model.eval()(x, lead)

    def tile() -> None:
        for lead in range(request["tile_leads"]):
            predict(lead)

    result["tile_looped"] = time_call(tile, 1, warmup=lambda: predict(0))
    one_lead = result[f"batch{request['batches'][0]}"]["forward_flops"]
    if one_lead is not None and request["batches"][0] == 1:
        result["tile_looped_flops"] = request["tile_leads"] * one_lead
    print(json.dumps(result))


if __name__ == "__main__":
    main()
